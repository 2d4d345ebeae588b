//! The containerd shim v2 Task service of one pod: its ttrpc adapter, the
//! task and process state machines, the events it publishes, and the
//! serving loop that runs until the last Shutdown.

pub mod service;
pub mod stats;

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;

use crate::config::Config;
use crate::events::Publisher;
use crate::keeper::Keeper;
use crate::sandbox::Sandbox;
use crate::task::service::TaskService;

/// The service name containerd 1.6/1.7 and CRI-O call.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
/// The name the generated code registers (containerd 2's renamed copy).
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

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
    /// The sandbox's bundle, for the keeper's clean-up.
    pub bundle: PathBuf,
    pub debug: bool,
}

/// Errors of the serving shim as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("ttrpc server")]
    Server(#[source] ttrpc::Error),
}

/// Serves the task API until a Shutdown finds no container left, then
/// tears the sandbox down.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    // The default configuration of this shim's sandbox. Its Create may name
    // another file in its options; the choice is made there. A broken
    // default only fails a Create that relies on it, while the shim still
    // answers (so containerd can clean up).
    let base_config = Config::load().map_err(|e| {
        let msg = crate::logging::error_chain(&e);
        tracing::error!(sandbox_id = %opts.sandbox_id, error = %msg, "configuration unusable");
        msg
    });
    if let Ok(loaded) = &base_config {
        tracing::info!(sandbox_id = %opts.sandbox_id, config = %loaded.describe(),
            "configuration loaded");
    }
    let events = Arc::new(Publisher::new(
        opts.events_address.clone(),
        opts.namespace.clone(),
    ));
    let sandbox = Sandbox::new(&opts.sandbox_id, &opts.namespace, base_config, events);
    // Without an events address the client is CRI-O, which never re-dials
    // a shim whose connection closed (see `keeper`).
    let keeper = match opts.events_address {
        Some(_) => None,
        None => match Keeper::spawn(&opts.sandbox_id, &opts.namespace, &opts.bundle, opts.debug) {
            Ok(k) => {
                tracing::info!(sandbox_id = %opts.sandbox_id, pid = k.pid(), "connection keeper started");
                Some(Arc::new(k))
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %opts.sandbox_id, error = %e,
                    "cannot start the connection keeper; a crash of this shim would leave the pod stuck in CRI-O");
                None
            }
        },
    };
    let service = Arc::new(TaskService {
        sandbox: sandbox.clone(),
        keeper: keeper.clone(),
    });
    let mut services = create_task(service.clone());
    if let Some(v3) = create_task(service).remove(TASK_SERVICE_V3) {
        services.insert(TASK_SERVICE_V2.to_string(), v3);
    }
    let fd = opts.listener.into_raw_fd();
    // SAFETY: `fd` is a listening Unix socket that `into_raw_fd` just
    // released; ownership passes to the server, nothing else uses it.
    let mut server = unsafe { ttrpc::r#async::Server::new().add_unix_listener(fd) }
        .map_err(ServeError::Server)?;
    if let Some(k) = &keeper {
        server = server.set_accept_hook(crate::keeper::AcceptHook(k.clone()));
    }
    let mut server = server.register_service(services);
    server.start().await.map_err(ServeError::Server)?;
    tracing::info!(sandbox_id = %opts.sandbox_id, socket = %opts.socket_path.display(), "serving the task API");
    let mgmt = crate::mgmt::serve(&opts.sandbox_id, sandbox.clone());

    let mut shutdown = sandbox.shutdown_watch();
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => {
            tracing::info!(sandbox_id = %opts.sandbox_id, "last container gone; shutting down");
        }
        _ = abandoned(&opts.bundle) => {
            tracing::warn!(sandbox_id = %opts.sandbox_id, bundle = %opts.bundle.display(),
                "the client removed the sandbox's bundle while the shim served it; tearing the forgotten sandbox down");
        }
    }
    sandbox.teardown().await;
    if let Some(k) = &keeper {
        k.release();
    }
    // Teardown removed the sandbox's directories, the management socket's
    // with them; this only stops answering.
    if let Some(m) = mgmt {
        m.remove();
    }
    if let Err(e) = server.shutdown().await {
        tracing::warn!(sandbox_id = %opts.sandbox_id, error = %e, "ttrpc server shutdown");
    }
    let _ = std::fs::remove_file(&opts.socket_path);
    Ok(())
}

/// How often the sandbox's bundle is checked for, and how long a missing
/// one is given to come back before the sandbox counts as forgotten.
const BUNDLE_CHECK: Duration = Duration::from_secs(10);
const BUNDLE_GRACE: Duration = Duration::from_secs(2);

/// Resolves when the sandbox's bundle (`config.json` in it) is gone: the
/// client forgot the sandbox without a Shutdown. CRI-O killed during
/// RunPodSandbox does that: at its restart it removes the half-made pod's
/// storage, bundle included, and never calls the shim again, which would
/// otherwise serve its VM for good. Clients remove a bundle only after
/// the sandbox's Shutdown, when this shim is already gone.
async fn abandoned(bundle: &Path) {
    let config = bundle.join("config.json");
    loop {
        tokio::time::sleep(BUNDLE_CHECK).await;
        if config.exists() {
            continue;
        }
        tokio::time::sleep(BUNDLE_GRACE).await;
        if !config.exists() {
            return;
        }
    }
}
