//! Growing and shrinking the pod's VM with its containers' limits
//! (`static_sandbox_resource_mgmt = false`): on CreateContainer,
//! UpdateContainerResources and container Delete the VM is brought to
//! [`growth::target`] of the limits then known.
//!
//! - vCPUs: every vCPU up to the ceiling is present from boot and offline
//!   (see `vm::qemu::kernel_cmdline`); the agent's OnlineCPUMem onlines or
//!   offlines them.
//! - Memory: DIMMs hot-added over QMP (`vm::qemu::hotplug`), which the guest
//!   onlines as movable memory; a shrink asks the guest to give DIMMs back
//!   and reports the ones it keeps.
//!
//! A failed growth is undone, so the pod keeps running at its old size and
//! the call fails with FAILED_PRECONDITION saying why. Everything the agent
//! reports is bounded before it is believed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kata_agent_protocol::agent::OnlineCPUMemResponse;

use crate::config::{Config, LimitAboveMax, Qemu};
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;
use crate::sizing::growth::{self, Ceiling, Limits, MEMORY_BLOCK_MIB, Target};

/// How long a new DIMM may take to show in the guest's MemTotal.
const MEMORY_ONLINE_WAIT: Duration = Duration::from_secs(15);
/// A reply that is not (yet) what was asked for; retried while a new
/// DIMM may still be on its way into the guest.
struct MemoryNotOnline(String);

/// How long a DIMM removal may take before it is reported as refused.
const DIMM_REMOVAL_WAIT: Duration = Duration::from_secs(10);

/// What the sandbox knows of its VM's size when it grows with its
/// containers; `None` in [`Resources`] under static sizing.
#[derive(Debug)]
pub(super) struct Growth {
    qemu: Qemu,
    policy: LimitAboveMax,
    ceiling: Ceiling,
    /// vCPUs online now.
    vcpus: u32,
    boot_memory_mib: u32,
    /// Hot-added DIMMs, oldest first: id and MiB.
    dimms: Vec<(String, u32)>,
    next_dimm: u32,
    limits: BTreeMap<String, Limits>,
}

impl Growth {
    fn memory_mib(&self) -> u32 {
        self.boot_memory_mib
            .saturating_add(self.dimms.iter().map(|d| d.1).sum::<u32>())
    }
}

/// The VM-size state of a sandbox, behind its own async lock so that
/// resizes never interleave.
#[derive(Debug, Default)]
pub(super) struct Resources {
    growth: Option<Growth>,
}

/// Whether `b` asks for more of anything than `a`.
fn grows(a: Limits, b: Limits) -> bool {
    b.milli_cpus > a.milli_cpus || b.memory_mib > a.memory_mib
}

impl Sandbox {
    /// After boot: the VM grows from here (dynamic sizing only).
    pub(super) async fn start_growth(&self, config: &Config, ceiling: Ceiling) {
        let q = &config.hypervisor.qemu;
        self.resources.lock().await.growth = Some(Growth {
            qemu: q.clone(),
            policy: config.runtime.limit_above_max,
            ceiling,
            vcpus: q.default_vcpus,
            boot_memory_mib: q.default_memory,
            dimms: Vec::new(),
            next_dimm: 0,
            limits: BTreeMap::new(),
        });
    }

    /// The limits a container holds now (none before it was created).
    pub(super) async fn limits_of(&self, container_id: &str) -> Limits {
        let r = self.resources.lock().await;
        r.growth
            .as_ref()
            .and_then(|g| g.limits.get(container_id).copied())
            .unwrap_or_default()
    }

    /// Brings the VM to the size the containers' limits call for, with
    /// `container_id` now holding `limits` (`None`: it is gone). Nothing
    /// under static sizing. On failure the container's previous limits
    /// and the VM's previous size stay.
    pub(super) async fn resize_for(
        &self,
        container_id: &str,
        limits: Option<Limits>,
    ) -> Result<()> {
        let mut r = self.resources.lock().await;
        let Some(g) = r.growth.as_mut() else {
            return Ok(());
        };
        let mut wanted = g.limits.clone();
        match limits {
            Some(l) => wanted.insert(container_id.to_string(), l),
            None => wanted.remove(container_id),
        };
        let target = growth::target(&g.qemu, g.ceiling, &wanted, g.policy).map_err(|e| {
            Error::InvalidArgument {
                field: e.field,
                reason: e.to_string(),
            }
        })?;
        for w in &target.warnings {
            tracing::warn!(sandbox_id = %self.id, container_id, "{w}");
        }
        self.apply(g, &target, container_id).await?;
        g.limits = wanted;
        Ok(())
    }

    /// Memory first (QEMU may refuse a DIMM), then vCPUs; a failure after
    /// a DIMM was added takes it back.
    async fn apply(&self, g: &mut Growth, target: &Target, container_id: &str) -> Result<()> {
        let (old_vcpus, old_mib) = (g.vcpus, g.memory_mib());
        let fail = |why: String| {
            Error::FailedPrecondition(format!(
                "cannot resize the VM of sandbox {} to {} vCPUs and {} MiB for container \
                 {container_id}: {why}; it keeps {old_vcpus} vCPUs and {old_mib} MiB",
                self.id, target.vcpus, target.memory_mib
            ))
        };
        let added = if target.memory_mib > old_mib {
            Some(self.add_memory(g, target.memory_mib).await.map_err(&fail)?)
        } else {
            None
        };
        if added.is_some() || target.vcpus != old_vcpus {
            // The guest learns of a DIMM by an ACPI event it handles in its
            // own time: ask again until the memory shows or time is up.
            let deadline = Instant::now() + MEMORY_ONLINE_WAIT;
            let checked = loop {
                let checked = match self.online(target.vcpus).await {
                    Ok(resp) => self.check_reply(g, &resp, target.vcpus, added.is_some(), old_mib),
                    Err(e) => break Err(e),
                };
                match checked {
                    Err(MemoryNotOnline(why)) if Instant::now() < deadline => {
                        tracing::debug!(sandbox_id = %self.id, "{why}; asking again");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    other => break other.map_err(|MemoryNotOnline(why)| why),
                }
            };
            if let Err(why) = checked {
                self.undo_growth(g, old_vcpus, added).await;
                return Err(fail(why));
            }
            g.vcpus = target.vcpus;
        }
        if target.memory_mib < old_mib {
            self.remove_memory(g, target.memory_mib).await;
        }
        tracing::info!(sandbox_id = %self.id, container_id, vcpus = g.vcpus,
            memory_mib = g.memory_mib(), "VM resized");
        self.metrics.guest_memory_mib(g.memory_mib());
        Ok(())
    }

    /// Adds one DIMM covering `want - current`, in whole memory blocks and
    /// within the ceiling. Returns its id.
    async fn add_memory(&self, g: &mut Growth, want: u32) -> std::result::Result<String, String> {
        let room = g.ceiling.max_memory_mib.saturating_sub(g.memory_mib());
        let need = want - g.memory_mib();
        let size = need
            .div_ceil(MEMORY_BLOCK_MIB)
            .saturating_mul(MEMORY_BLOCK_MIB);
        let size = if size > room {
            room / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
        } else {
            size
        };
        if size == 0 {
            return Err(format!(
                "no whole {MEMORY_BLOCK_MIB} MiB block fits below the maximum"
            ));
        }
        let id = format!("dimm{}", g.next_dimm);
        g.next_dimm += 1;
        let mut lc = self.lifecycle.lock().await;
        let qmp = lc
            .vm
            .as_mut()
            .and_then(|vm| vm.vm.qmp())
            .ok_or_else(|| "the VM has no QMP connection".to_string())?;
        qmp.add_dimm(&id, size)
            .await
            .map_err(|e| format!("QEMU refused {size} MiB of memory: {e}"))?;
        drop(lc);
        tracing::info!(sandbox_id = %self.id, dimm = %id, mib = size, "DIMM added");
        g.dimms.push((id.clone(), size));
        Ok(id)
    }

    async fn online(&self, vcpus: u32) -> std::result::Result<OnlineCPUMemResponse, String> {
        let agent = self.agent().map_err(|e| e.to_string())?;
        agent.online_cpu_mem(vcpus).await.map_err(|e| {
            format!(
                "the guest did not bring its resources online: {}",
                crate::logging::error_chain(&e)
            )
        })
    }

    /// The guest's word, bounded: no more vCPUs or memory than the VM can
    /// have, the count asked for, and memory grown by most of a new DIMM.
    fn check_reply(
        &self,
        g: &Growth,
        r: &OnlineCPUMemResponse,
        vcpus: u32,
        added: bool,
        old_mib: u32,
    ) -> std::result::Result<(), MemoryNotOnline> {
        let max_kib = u64::from(g.ceiling.max_memory_mib) << 10;
        if r.online_cpus > g.ceiling.max_vcpus
            || r.present_cpus > g.ceiling.max_vcpus
            || r.mem_total_kib > max_kib
        {
            return Err(MemoryNotOnline(format!(
                "the guest reported {} of {} vCPUs online and {} KiB, beyond what the VM has",
                r.online_cpus, r.present_cpus, r.mem_total_kib
            )));
        }
        if r.online_cpus != vcpus {
            return Err(MemoryNotOnline(format!(
                "the guest has {} vCPUs online, not {vcpus}",
                r.online_cpus
            )));
        }
        if added {
            // The boot memory's MemTotal is below its size by what the
            // kernel keeps; a new DIMM adds nearly all of itself.
            let grown = u64::from(g.memory_mib().saturating_sub(old_mib)) << 10;
            let floor = (u64::from(old_mib) << 10) * 3 / 4 + grown * 3 / 4;
            if r.mem_total_kib < floor {
                return Err(MemoryNotOnline(format!(
                    "the guest did not online the new memory within {MEMORY_ONLINE_WAIT:?} \
                     (MemTotal {} KiB)",
                    r.mem_total_kib
                )));
            }
        }
        Ok(())
    }

    /// Best effort: vCPUs back to `vcpus`, the DIMM `added` removed.
    async fn undo_growth(&self, g: &mut Growth, vcpus: u32, added: Option<String>) {
        if let Err(e) = self.online(vcpus).await {
            tracing::warn!(sandbox_id = %self.id, error = %e, "cannot take the vCPUs back");
        }
        if let Some(id) = added {
            self.remove_dimms(g, vec![id]).await;
        }
    }

    /// Asks the guest to give back the newest DIMMs as long as the VM stays
    /// at or above `want`; reports the ones it keeps.
    async fn remove_memory(&self, g: &mut Growth, want: u32) {
        let mut left = g.memory_mib();
        let mut ids = Vec::new();
        for (id, mib) in g.dimms.iter().rev() {
            if left - mib < want {
                break;
            }
            left -= mib;
            ids.push(id.clone());
        }
        if !ids.is_empty() {
            self.remove_dimms(g, ids).await;
        }
        if g.memory_mib() > want {
            tracing::warn!(sandbox_id = %self.id, memory_mib = g.memory_mib(), wanted_mib = want,
                "the VM keeps more memory than its containers' limits call for: memory comes back only in whole DIMMs that the guest can offline");
        }
    }

    /// `device_del` of each DIMM, then waits for the guest to release them;
    /// the ones released lose their backend and leave [`Growth::dimms`].
    async fn remove_dimms(&self, g: &mut Growth, ids: Vec<String>) {
        let mut lc = self.lifecycle.lock().await;
        let Some(qmp) = lc.vm.as_mut().and_then(|vm| vm.vm.qmp()) else {
            return;
        };
        for id in &ids {
            if let Err(e) = qmp.request_dimm_removal(id).await {
                tracing::warn!(sandbox_id = %self.id, dimm = %id, error = %e, "DIMM removal refused");
            }
        }
        let deadline = Instant::now() + DIMM_REMOVAL_WAIT;
        let mut present = ids.clone();
        while !present.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match qmp.dimm_ids().await {
                Ok(now) => present.retain(|id| now.contains(id)),
                Err(e) => {
                    tracing::warn!(sandbox_id = %self.id, error = %e, "query-memory-devices failed");
                    break;
                }
            }
        }
        for id in ids.iter().filter(|id| !present.contains(id)) {
            if let Err(e) = qmp.remove_dimm_backend(id).await {
                tracing::warn!(sandbox_id = %self.id, dimm = %id, error = %e, "cannot remove a DIMM's backend");
            }
            g.dimms.retain(|(d, _)| d != id);
            tracing::info!(sandbox_id = %self.id, dimm = %id, "DIMM removed");
        }
        for id in &present {
            tracing::warn!(sandbox_id = %self.id, dimm = %id,
                "the guest did not give the DIMM back within {DIMM_REMOVAL_WAIT:?}; its memory stays in the VM");
        }
    }

    /// A container is gone: the VM shrinks to the others' limits. Best
    /// effort, as the container's own call has succeeded or failed by now.
    pub(super) async fn shrink_after(&self, container_id: &str) {
        if self.agent().is_err() {
            return;
        }
        if let Err(e) = self.resize_for(container_id, None).await {
            tracing::warn!(sandbox_id = %self.id, container_id, error = %e,
                "the VM did not shrink after the container went");
        }
    }

    /// Update: the VM grows before the container's cgroup does and
    /// shrinks after it, so the container never holds a limit the VM
    /// lacks longer than the call.
    pub(super) async fn update_with_resize(
        &self,
        container_id: &str,
        resources: &serde_json::Value,
        apply_cgroup: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let old = self.limits_of(container_id).await;
        let new = Limits::updated(old, resources);
        if grows(old, new) {
            self.resize_for(container_id, Some(new)).await?;
            apply_cgroup.await
        } else {
            apply_cgroup.await?;
            self.resize_for(container_id, Some(new)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_any_dimension_up() {
        let l = |c, m| Limits {
            milli_cpus: c,
            memory_mib: m,
        };
        assert!(grows(l(0, 0), l(1, 0)));
        assert!(grows(l(2000, 10), l(1000, 20)));
        assert!(!grows(l(2000, 10), l(2000, 10)));
        assert!(!grows(l(2000, 10), l(1000, 5)));
    }
}
