//! `kata-ctl boot-check`: boots one VM without containerd, waits for the
//! agent, reads what the guest reports, proves the sandbox share is visible
//! from inside, stops the VM and reports the phase timings.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::guest::{BootError, SandboxVm};
use crate::vm::{AgentAddr, ShareKind};

/// Errors of a boot check.
#[derive(Debug, thiserror::Error)]
pub enum BootCheckError {
    #[error(transparent)]
    Sandbox(#[from] BootError),
    #[error("writing the share probe {path} failed")]
    Probe {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent call failed during the check")]
    Agent(#[from] crate::agent_client::AgentError),
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
}

/// What the guest reported and how long each phase took.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sandbox_id: String,
    pub accel: String,
    pub vsock: String,
    pub shared_fs: String,
    pub qemu_pid: u32,
    /// QEMU's run state over QMP while the guest was up.
    pub vm_status: String,
    /// QEMU's seccomp mode while the guest was up, from `/proc/<pid>/status`:
    /// `filter` under `-sandbox on` (`seccompsandbox`), `disabled` without.
    pub qemu_seccomp: String,
    /// The uid QEMU ran as: 0, or the sandbox's own with `rootless`.
    pub qemu_uid: Option<u32>,
    pub agent_version: String,
    pub protocol_version: u32,
    pub kernel_release: String,
    pub uptime_seconds: f64,
    pub online_cpus: u32,
    pub kernel_cmdline: String,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub guest_share_fstype: String,
    pub guest_share_mount: String,
    /// The probe file written on the host was read back inside the guest.
    pub share_visible: bool,
    pub spawn_ms: u64,
    pub agent_ready_ms: u64,
    pub stop_ms: u64,
    pub stop_how: String,
}

/// Runs the check for `sandbox_id`. SIGINT or SIGTERM during the run stops
/// the VM cleanly before returning.
pub async fn run(config: &Config, sandbox_id: &str) -> Result<Report, BootCheckError> {
    let mut sandbox = tokio::select! {
        r = SandboxVm::boot(config, sandbox_id) => r?,
        s = interrupted() => {
            // The boot future is dropped: its children are killed on drop,
            // and its directories are removed here.
            crate::layout::remove_sandbox_dirs(sandbox_id, &crate::layout::SandboxPaths::new(sandbox_id));
            crate::vm::rootless::release(sandbox_id);
            return Err(BootCheckError::Interrupted(s));
        }
    };
    let probed = tokio::select! {
        r = probe(&sandbox) => r,
        s = interrupted() => Err(BootCheckError::Interrupted(s)),
    };
    let vm_status = match sandbox.vm.status().await {
        Ok(s) => s,
        Err(e) => format!("unknown ({e})"),
    };
    let vm = &sandbox.vm;
    let qemu_status =
        std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap_or_default();
    let qemu_seccomp = seccomp_mode(&qemu_status);
    let qemu_uid = effective_uid(&qemu_status);
    let (accel, qemu_pid, spawn, ready) = (
        vm.accel.as_str().to_string(),
        vm.pid(),
        vm.spawn_duration,
        sandbox.agent_ready,
    );
    let vsock = match vm.agent_addr {
        AgentAddr::Hybrid(_) => "hybrid",
        AgentAddr::Vhost(_) => "vhost",
    };
    let shared_fs = match vm.share {
        ShareKind::VirtioFs => "virtio-fs",
        ShareKind::NineP => "virtio-9p",
        ShareKind::None => "none",
    };
    let stop_began = Instant::now();
    let stop = sandbox.shutdown().await;
    let (d, visible) = probed?;
    let share = d.shared_fs.clone().unwrap_or_default();
    Ok(Report {
        sandbox_id: sandbox_id.to_string(),
        accel,
        vsock: vsock.into(),
        shared_fs: shared_fs.into(),
        qemu_pid,
        vm_status,
        qemu_seccomp,
        qemu_uid,
        agent_version: d.agent_version,
        protocol_version: d.protocol_version,
        kernel_release: d.kernel_release,
        uptime_seconds: d.uptime_seconds,
        online_cpus: d.online_cpus,
        kernel_cmdline: d.kernel_cmdline,
        mem_total_kib: d.mem_total_kib,
        mem_available_kib: d.mem_available_kib,
        guest_share_fstype: share.fstype,
        guest_share_mount: share.mount_point,
        share_visible: visible,
        spawn_ms: ms(spawn),
        agent_ready_ms: ms(ready),
        stop_ms: ms(stop_began.elapsed()),
        stop_how: stop.how.to_string(),
    })
}

/// Writes a probe file with fresh content into the host side of the share
/// and asks the guest for it; removes it again either way.
async fn probe(
    sandbox: &SandboxVm,
) -> Result<(kata_agent_protocol::agent::GuestDetailsResponse, bool), BootCheckError> {
    if sandbox.vm.share == ShareKind::None {
        let d = sandbox.agent.guest_details("").await?;
        return Ok((d, false));
    }
    let name = "boot-check-probe";
    let content = format!("visible {}", nonce());
    let share = &sandbox.vm.paths.share_dir;
    let path = share.join(name);
    let probe_err = |source| BootCheckError::Probe {
        path: path.display().to_string(),
        source,
    };
    // The share root is read-only to the guest, and so outside the shim's
    // own windows.
    crate::storage::with_writable_share(share, || std::fs::write(&path, &content))
        .map_err(|e| probe_err(std::io::Error::other(e)))?
        .map_err(probe_err)?;
    let d = sandbox.agent.guest_details(name).await;
    let _ = crate::storage::with_writable_share(share, || std::fs::remove_file(&path));
    let d = d?;
    let visible = d
        .shared_fs
        .as_ref()
        .is_some_and(|s| s.probe_found && s.probe_content == content);
    Ok((d, visible))
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The effective uid in a process's status.
fn effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// The `Seccomp:` field of a process's status, in words.
fn seccomp_mode(status: &str) -> String {
    let mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    match mode {
        Some("0") => "disabled",
        Some("1") => "strict",
        Some("2") => "filter",
        _ => "unknown",
    }
    .to_string()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// 16 hex digits from the kernel's random source, for ids and probes.
pub fn nonce() -> String {
    format!("{:016x}", crate::vm::vsock::random_u64())
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let share = if self.shared_fs == "none" {
            "none".to_string()
        } else {
            format!(
                "{} ({} at {}): host file {}",
                self.shared_fs,
                if self.guest_share_fstype.is_empty() {
                    "not mounted"
                } else {
                    &self.guest_share_fstype
                },
                self.guest_share_mount,
                if self.share_visible {
                    "visible in the guest"
                } else {
                    "NOT visible in the guest"
                }
            )
        };
        [
            format!("sandbox         {}", self.sandbox_id),
            format!(
                "qemu pid        {} ({}, accel {}, vsock {}, seccomp {})",
                self.qemu_pid, self.vm_status, self.accel, self.vsock, self.qemu_seccomp
            ),
            format!(
                "agent           {} (protocol {})",
                self.agent_version, self.protocol_version
            ),
            format!("kernel release  {}", self.kernel_release),
            format!("uptime          {:.2} s", self.uptime_seconds),
            format!("cpus            {}", self.online_cpus),
            format!(
                "memory          {} MiB total, {} MiB available",
                self.mem_total_kib / 1024,
                self.mem_available_kib / 1024
            ),
            format!("cmdline         {}", self.kernel_cmdline),
            format!("shared fs       {share}"),
            format!(
                "phases          spawn {} ms, agent ready {} ms after spawn, stop {} ms ({})",
                self.spawn_ms, self.agent_ready_ms, self.stop_ms, self.stop_how
            ),
        ]
        .join("\n")
    }
}
