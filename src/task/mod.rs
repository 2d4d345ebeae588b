//! The containerd shim v2 Task service of one pod: its ttrpc adapter, the
//! task and process state machines, and the events it publishes.

pub mod events;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// What the serving shim (`containerd-shim-kata-v2 ... serve`, spawned by
/// `start`) needs to run a sandbox's task service.
#[derive(Debug)]
pub struct ServeOptions {
    pub sandbox_id: String,
    /// containerd namespace (`-namespace`); `default` under CRI-O.
    pub namespace: String,
    /// `TTRPC_ADDRESS` when set and non-empty: where events go.
    pub events_address: Option<String>,
    /// The listening socket `start` bound before it printed the address.
    pub listener: UnixListener,
    pub socket_path: PathBuf,
    pub debug: bool,
}

/// Errors of the serving shim as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the task service is not wired up yet")]
    NotReady,
}

/// Serves the task API until a Shutdown finds no container left.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    tracing::error!(sandbox_id = %opts.sandbox_id, "task service not wired up yet");
    Err(ServeError::NotReady)
}
