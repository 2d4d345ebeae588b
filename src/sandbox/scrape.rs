//! What the management socket ([`crate::mgmt`]) reads from a sandbox: the
//! shim's figures, the `/proc` figures of QEMU and its helpers, and the
//! guest's, asked of the agent at scrape time.
//!
//! The host processes are named by the records taken at boot, so a pid
//! reused after a process died is never read as if it were ours. Nothing
//! is read from a sandbox that is not running: the text then holds only
//! the shim's own families.

use async_trait::async_trait;

use super::Sandbox;
use crate::locks::lock;
use crate::metrics::procfs::{self, ProcTexts};
use crate::metrics::{self, Live};
use crate::persist::ProcessRecord;

/// How long the containers' figures may take, all asked at once and beside
/// the guest's own (2 s at most): inside kata-monitor's 3 s.
const CONTAINER_STATS_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// The processes and agent address of the running VM.
#[derive(Debug, Default, Clone)]
pub struct Targets {
    pub processes: Vec<ProcessRecord>,
    pub agent_url: Option<String>,
}

/// The family prefix of a VM process, by the name its record carries.
fn prefix(process: &str) -> Option<&'static str> {
    match process {
        "qemu" => Some("kata_hypervisor"),
        "virtiofsd" => Some("kata_virtiofsd"),
        // Ours: Kata has no hybrid-vsock helper process.
        "vhost-device-vsock" => Some("kata_vsock_helper"),
        _ => None,
    }
}

impl Sandbox {
    /// Records what a scrape reads once the VM booted.
    pub(super) fn set_scrape_targets(&self, targets: Targets) {
        *lock(&self.scrape_targets) = targets;
    }

    /// Each container's guest cgroup figures, at most
    /// [`metrics::guest::MAX_CONTAINERS`], within the scrape's budget; a
    /// container whose figures do not come is left out.
    async fn container_stats(
        &self,
        agent: &crate::agent_client::AgentClient,
    ) -> Vec<(String, kata_agent_protocol::agent::StatsContainerResponse)> {
        let mut ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        ids.sort();
        ids.truncate(metrics::guest::MAX_CONTAINERS);
        let asks = ids.into_iter().map(|id| async move {
            let r = tokio::time::timeout(CONTAINER_STATS_BUDGET, agent.stats_container(&id)).await;
            match r {
                Ok(Ok(s)) => Some((id, s)),
                _ => None,
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn running_targets(&self) -> Option<Targets> {
        self.state()
            .is_running()
            .then(|| lock(&self.scrape_targets).clone())
    }
}

#[async_trait]
impl crate::mgmt::Source for Sandbox {
    async fn metrics(&self) -> String {
        let targets = self.running_targets();
        let pid = self.pid();
        let (qemu_rss, qemu_private) = match &targets {
            Some(_) if pid != 0 => metrics::qemu_memory(pid),
            _ => (None, None),
        };
        let live = Live {
            containers: self.container_count(),
            qemu_rss,
            qemu_private,
        };
        let mut families = metrics::shim_families(&self.metrics, &live);
        families.extend(procfs::process_families(
            "kata_shim",
            &ProcTexts::read_host("self"),
            true,
        ));
        for p in targets.iter().flat_map(|t| &t.processes) {
            let Some(prefix) = prefix(&p.name) else {
                continue;
            };
            if !p.is_alive() {
                continue;
            }
            let pid = p.pid.to_string();
            families.extend(procfs::process_families(
                prefix,
                &ProcTexts::read_host(&pid),
                true,
            ));
            if prefix == "kata_hypervisor" {
                let netdev =
                    std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
                families.push(procfs::netdev_family("kata_hypervisor_netdev", &netdev));
            }
        }
        if targets.is_some() {
            match self.agent() {
                Ok(agent) => {
                    let (guest, containers) =
                        tokio::join!(agent.guest_metrics(), self.container_stats(&agent));
                    match guest {
                        Ok(reply) => families.extend(metrics::guest::families(&reply)),
                        Err(e) => tracing::warn!(sandbox_id = %self.id, error = %e,
                            "the guest's metrics are left out of this scrape"),
                    }
                    families.extend(metrics::guest::containers(&containers));
                }
                Err(e) => tracing::debug!(sandbox_id = %self.id, error = %e, "no agent to scrape"),
            }
        }
        metrics::render(&families)
    }

    fn agent_url(&self) -> Option<String> {
        self.running_targets().and_then(|t| t.agent_url)
    }
}
