//! The shim's layout under `/run`: every host path of a sandbox is derived
//! here from its (validated, see [`crate::ids`]) id, never from guest input.
//!
//! - `RUN_ROOT/<id>`: the VM's sockets (QMP, vsock, virtiofsd);
//! - `SHARE_ROOT/<id>`: the directory shared into the guest;
//! - `PERSIST_ROOT/<id>`: the shim's own directory (task socket, pid file,
//!   persisted state, fallback log);
//! - `MGMT_ROOT/<id>`: Kata's management socket, where kata-monitor looks.

use std::path::{Path, PathBuf};

/// Per-sandbox VM sockets live below this directory.
pub const RUN_ROOT: &str = "/run/kata";
/// Per-sandbox shared directories (what the guest sees) live below this one.
pub const SHARE_ROOT: &str = "/run/kata-containers/shared/sandboxes";
/// Per-sandbox shim directories.
pub const PERSIST_ROOT: &str = "/run/kata-shim";

/// In the shim directory: what `delete` needs after a crash.
pub const STATE_FILE: &str = "state.json";
/// The serving shim's pid, in the bundle (for containerd) and in the
/// shim directory (for the `start` of later containers).
pub const SHIM_PID_FILE: &str = "shim.pid";
/// Kata's sandbox directories: kata-monitor watches this one (Kata's Go
/// runtime's path; kata-monitor looks nowhere else first).
pub const MGMT_ROOT: &str = "/run/vc/sbs";
/// In a sandbox's `MGMT_ROOT` directory: the management socket.
pub const MGMT_SOCKET: &str = "shim-monitor.sock";

/// Where one sandbox's VM keeps its sockets and its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    pub state_dir: PathBuf,
    pub share_dir: PathBuf,
}

impl SandboxPaths {
    pub fn new(sandbox_id: &str) -> SandboxPaths {
        SandboxPaths {
            state_dir: Path::new(RUN_ROOT).join(sandbox_id),
            share_dir: Path::new(SHARE_ROOT).join(sandbox_id),
        }
    }
    pub fn qmp(&self) -> PathBuf {
        self.state_dir.join("qmp.sock")
    }
    pub fn vsock_control(&self) -> PathBuf {
        self.state_dir.join("vhost-vsock.sock")
    }
    pub fn vsock_uds(&self) -> PathBuf {
        self.state_dir.join("kata.hvsock")
    }
    pub fn virtiofsd(&self) -> PathBuf {
        self.state_dir.join("virtiofsd.sock")
    }
}

/// The shim directory of a sandbox.
pub fn shim_dir(sandbox_id: &str) -> PathBuf {
    Path::new(PERSIST_ROOT).join(sandbox_id)
}

/// The Unix socket the sandbox's shim serves the task API on.
pub fn shim_socket(sandbox_id: &str) -> PathBuf {
    shim_dir(sandbox_id).join("shim.sock")
}

/// The directory of the sandbox's management socket.
pub fn mgmt_dir(sandbox_id: &str) -> PathBuf {
    Path::new(MGMT_ROOT).join(sandbox_id)
}

/// The sandbox's management socket (metrics, agent URL).
pub fn mgmt_socket(sandbox_id: &str) -> PathBuf {
    mgmt_dir(sandbox_id).join(MGMT_SOCKET)
}

/// Removes a sandbox's VM state and management directories (only our
/// sockets live there) and its share directory. The share is removed with `rmdir`, never
/// recursively: whatever is still in it may be a mount or data we do not
/// own, and is reported instead.
pub fn remove_sandbox_dirs(sandbox_id: &str, paths: &SandboxPaths) {
    for dir in [&paths.state_dir, &mgmt_dir(sandbox_id)] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(sandbox_id, path = %dir.display(), error = %e,
                "cannot remove state directory"),
        }
    }
    match std::fs::remove_dir(&paths.share_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(sandbox_id, path = %paths.share_dir.display(), error = %e,
            "cannot remove share directory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fit_unix_socket_limits() {
        let id = "a".repeat(76);
        let p = SandboxPaths::new(&id);
        for s in [
            p.qmp(),
            p.vsock_control(),
            p.vsock_uds(),
            p.virtiofsd(),
            shim_socket(&id),
            mgmt_socket(&id),
        ] {
            assert!(s.as_os_str().len() < 108, "{} too long", s.display());
        }
    }
}
