//! A sandbox's VM together with its agent: boot (VM, dial, first-contact
//! checks) and shutdown (agent-driven power-off, then teardown).
//!
//! Either step leaves nothing running behind it when it fails.

use std::time::{Duration, Instant};

use kata_agent_protocol::agent::GuestDetailsResponse;

use crate::agent_client::{AgentClient, AgentError};
use crate::config::Config;
use crate::vm::{StopReport, Vm, VmError, VmOptions};

/// Errors booting a sandbox VM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("starting the VM failed")]
    Vm(#[from] VmError),
    #[error("the agent of sandbox {sandbox_id} is not usable")]
    Agent {
        sandbox_id: String,
        #[source]
        source: AgentError,
    },
}

/// How long the guest gets to power itself off after DestroySandbox.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);

/// A booted VM whose agent answered and speaks our protocol.
#[derive(Debug)]
pub struct SandboxVm {
    pub vm: Vm,
    pub agent: AgentClient,
    /// Guest details read at first contact.
    pub details: GuestDetailsResponse,
    /// From QEMU's spawn until the agent passed its health check.
    pub agent_ready: Duration,
}

impl SandboxVm {
    /// Starts a VM of the configured size and waits for its agent (tests
    /// and `kata-ctl boot-check`; a pod's boot runs the two steps itself).
    pub async fn boot(config: &Config, sandbox_id: &str) -> Result<SandboxVm, BootError> {
        let vm = Vm::start(config, sandbox_id, &VmOptions::default()).await?;
        Self::attach(vm, config.agent.kata.dial_timeout()).await
    }

    /// Dials the agent of a started VM within `timeout` and checks it
    /// (health, protocol version); stops the VM when the agent is not
    /// usable.
    pub async fn attach(vm: Vm, timeout: Duration) -> Result<SandboxVm, BootError> {
        let sandbox_id = vm.sandbox_id.clone();
        let sandbox_id = sandbox_id.as_str();
        let connected = async {
            let agent = AgentClient::connect(
                &vm.agent_addr,
                vm.agent_token.as_ref(),
                timeout,
                vm.exit_watch(),
                || vm.recent_output(),
                vm.agent_ready_watch(),
            )
            .await?;
            let ready = vm.spawned_at.elapsed();
            let details = agent.handshake().await?;
            Ok::<_, AgentError>((agent, ready, details))
        }
        .await;
        match connected {
            Ok((agent, agent_ready, details)) => {
                tracing::info!(sandbox_id, qemu_pid = vm.pid(), agent_ready_ms = agent_ready.as_millis() as u64,
                    guest_kernel = %details.kernel_release, agent_version = %details.agent_version, "agent ready");
                Ok(SandboxVm {
                    vm,
                    agent,
                    details,
                    agent_ready,
                })
            }
            Err(source) => {
                tracing::error!(sandbox_id, error = %source, "agent unusable, stopping the VM");
                let report = vm.stop(Duration::ZERO).await;
                tracing::info!(sandbox_id, how = report.how, "VM stopped");
                Err(BootError::Agent {
                    sandbox_id: sandbox_id.to_string(),
                    source,
                })
            }
        }
    }

    /// Asks the agent to power the guest off, then stops whatever is left.
    pub async fn shutdown(self) -> StopReport {
        let began = Instant::now();
        let grace = match self.agent.destroy_sandbox().await {
            Ok(()) => POWER_OFF_GRACE,
            Err(e) => {
                tracing::warn!(sandbox_id = %self.vm.sandbox_id, error = %e, "DestroySandbox failed, stopping QEMU directly");
                Duration::ZERO
            }
        };
        let mut report = self.vm.stop(grace).await;
        report.duration = began.elapsed();
        report
    }
}
