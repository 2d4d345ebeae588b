//! `keeper`: the process that holds a CRI-O sandbox's connections for its
//! shim (see `crate::keeper`). While the shim lives it only collects; when
//! the shim dies without a goodbye it cleans up as `delete` would, from the
//! persisted state, then answers on the held connections, and on the old
//! socket path for a CRI-O that restarted, until the sandbox container is
//! shut down.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::SystemTime;

use super::args::Flags;
use super::start::bundle_dir;
use crate::keeper::{self, Ending, KEEPER_FD, KEEPER_FD_ENV};
use crate::logging::{self, error_chain};

/// The shim's socket path, bound again: a CRI-O that restarts reads the
/// address from the bundle and dials it to learn the containers' state.
fn listen_on_the_old_address(sandbox_id: &str) -> Option<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = crate::layout::shim_dir(sandbox_id);
    let socket = crate::layout::shim_socket(sandbox_id);
    let bound = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => UnixListener::bind(&socket),
        });
    match bound {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(sandbox_id, socket = %socket.display(), error = %e,
                "cannot listen on the dead shim's address; a restarted CRI-O will not reach it");
            None
        }
    }
}

/// Runs the keeper until the shim says goodbye, or, once it died, until
/// its connections close or the sandbox's Shutdown.
pub fn run(flags: &Flags) -> ExitCode {
    let sandbox_id = flags.id.as_str();
    if let Err(e) = crate::ids::validate(sandbox_id) {
        eprintln!(
            "containerd-shim-kata-v2: keeper: invalid -id: {}",
            error_chain(&e)
        );
        return ExitCode::FAILURE;
    }
    if std::env::var(KEEPER_FD_ENV).ok().as_deref() != Some(&KEEPER_FD.to_string()) {
        eprintln!(
            "containerd-shim-kata-v2: keeper: {KEEPER_FD_ENV} is not set: only `serve` starts a keeper"
        );
        return ExitCode::FAILURE;
    }
    // SAFETY: `serve` left our end of the control socket on KEEPER_FD and
    // said so in the environment, checked above; nothing else owns it.
    let ctl = unsafe { OwnedFd::from_raw_fd(KEEPER_FD) };
    // SAFETY: single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { std::env::remove_var(KEEPER_FD_ENV) };
    let bundle = bundle_dir(&flags.bundle).ok();
    if let Some(b) = &bundle {
        logging::init_daemon(b, sandbox_id, flags.debug);
    }
    let held = match keeper::hold(&ctl) {
        Ending::Released => return ExitCode::SUCCESS,
        Ending::ShimDied(held) => held,
    };
    let died_at = SystemTime::now();
    tracing::warn!(
        sandbox_id,
        connections = held.conns.len(),
        calls_in_flight = held.pending.values().map(|w| w.len()).sum::<usize>(),
        "the shim died: cleaning up and answering its connections as a stopped sandbox (exit status {})",
        keeper::DEAD_EXIT_STATUS
    );
    // The exits are reported once the clean-up is done: the VM is gone
    // by then, and the clean-up's removal of the shim's directory cannot
    // take the socket made below with it. Calls wait in their sockets.
    super::delete::cleanup(sandbox_id, bundle.as_deref());
    if held.ever_connected {
        let listener = listen_on_the_old_address(sandbox_id);
        keeper::answer_all(held, sandbox_id, died_at, listener);
    } else {
        tracing::info!(
            sandbox_id,
            "no client ever reached the shim: nothing to answer"
        );
    }
    let socket = crate::layout::shim_socket(sandbox_id);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir(crate::layout::shim_dir(sandbox_id));
    tracing::info!(
        sandbox_id,
        "every connection of the dead shim closed; keeper exiting"
    );
    ExitCode::SUCCESS
}
