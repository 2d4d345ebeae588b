//! `serve`: the long-lived shim of one sandbox, spawned by `start` with its
//! listening socket on fd 3. Sets up what the process as a whole needs
//! (logging, signals, the runtime) and hands over to the task service.

use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::{SigHandler, Signal};

use super::args::Flags;
use super::start::{LISTEN_FD_ENV, TTRPC_ADDRESS_ENV, bundle_dir};
use crate::ids::InvalidId;
use crate::logging::{self, error_chain};
use crate::task::{ServeError, ServeOptions, serve};

/// What keeps the serving shim from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeSetupError {
    #[error("invalid -id")]
    Id(#[source] InvalidId),
    #[error("cannot determine the bundle directory")]
    Cwd(#[source] std::io::Error),
    #[error("{LISTEN_FD_ENV} is not set: `serve` is only started by `start`")]
    NoListenFd,
    #[error("{LISTEN_FD_ENV}={value:?} is not a descriptor number")]
    BadListenFd { value: String },
    #[error("fd {fd} is not a listening socket")]
    NotListening {
        fd: RawFd,
        #[source]
        source: Option<nix::errno::Errno>,
    },
    #[error("cannot ignore SIGPIPE")]
    Signal(#[source] nix::errno::Errno),
    #[error("cannot build the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the serving shim until the task service returns.
pub fn run(flags: &Flags) -> ExitCode {
    let sandbox_id = flags.id.as_str();
    if let Err(e) = crate::ids::validate(sandbox_id) {
        // Nowhere to log yet (stderr is /dev/null when `start` spawns us).
        eprintln!(
            "containerd-shim-kata-v2: serve: {}",
            error_chain(&ServeSetupError::Id(e))
        );
        return ExitCode::FAILURE;
    }
    let bundle = match bundle_dir(&flags.bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "containerd-shim-kata-v2: serve: {}",
                error_chain(&ServeSetupError::Cwd(e))
            );
            return ExitCode::FAILURE;
        }
    };
    logging::init_daemon(&bundle, sandbox_id, flags.debug);
    install_panic_logger(sandbox_id);
    match setup_and_serve(flags, bundle) {
        Ok(()) => {
            tracing::info!(sandbox_id, "shim exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(sandbox_id, error = %error_chain(&e), "shim failed");
            ExitCode::FAILURE
        }
    }
}

fn setup_and_serve(flags: &Flags, bundle: PathBuf) -> Result<(), ServeSetupError> {
    let sandbox_id = flags.id.clone();
    // SAFETY: SIG_IGN installs no handler code; ignoring SIGPIPE turns a
    // write to the log FIFO or to a closed connection into EPIPE.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map_err(ServeSetupError::Signal)?;
    let listener = take_listener()?;
    // The cwd pins the bundle, which containerd removes after the last
    // task; nothing below uses relative paths.
    if let Err(e) = std::env::set_current_dir("/") {
        tracing::warn!(sandbox_id, error = %e, "cannot leave the bundle directory");
    }
    let events_address = std::env::var(TTRPC_ADDRESS_ENV)
        .ok()
        .filter(|a| !a.is_empty());
    tracing::info!(
        sandbox_id,
        namespace = %flags.namespace,
        bundle = %bundle.display(),
        events = events_address.as_deref().unwrap_or("none"),
        "serving"
    );
    // No SIGCHLD reaper here: QEMU and the helpers are reaped by the tokio
    // child watchers that spawned them; a waitpid(-1) would steal their
    // exit statuses.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("kata-shim")
        .build()
        .map_err(ServeSetupError::Runtime)?;
    // Beside the serving, never in its way: what dead shims left behind.
    let own = sandbox_id.clone();
    let swept = std::thread::Builder::new()
        .name("sweep".into())
        .spawn(move || super::sweep::sweep(&own));
    if let Err(e) = swept {
        tracing::warn!(sandbox_id, error = %e, "cannot start the sweep of dead sandboxes");
    }
    let opts = ServeOptions {
        socket_path: crate::layout::shim_socket(&sandbox_id),
        bundle,
        sandbox_id,
        namespace: flags.namespace.clone(),
        events_address,
        listener,
        debug: flags.debug,
    };
    runtime.block_on(serve(opts))?;
    Ok(())
}

/// The listening socket `start` left on the fd named by the environment,
/// checked to be one, close-on-exec from now on (QEMU must not inherit it),
/// and the variable removed so no child sees it.
fn take_listener() -> Result<UnixListener, ServeSetupError> {
    let value = std::env::var(LISTEN_FD_ENV).map_err(|_| ServeSetupError::NoListenFd)?;
    let fd: RawFd = value
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or(ServeSetupError::BadListenFd { value })?;
    let listener = listener_from_fd(fd)?;
    // SAFETY: still single-threaded: logging set-up starts no threads and
    // the runtime is built after this, so nothing reads the environment
    // concurrently.
    unsafe { std::env::remove_var(LISTEN_FD_ENV) };
    Ok(listener)
}

/// Takes ownership of `fd` if it is a listening socket.
fn listener_from_fd(fd: RawFd) -> Result<UnixListener, ServeSetupError> {
    let not_listening = |source| ServeSetupError::NotListening { fd, source };
    let st = nix::sys::stat::fstat(fd).map_err(|e| not_listening(Some(e)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(not_listening(None));
    }
    // SAFETY: the descriptor is open (fstat succeeded) and the caller hands
    // it over: `start` passed it to this process for exactly this purpose
    // and nothing else here refers to it. If it is rejected below it is
    // released with `into_raw_fd`, never closed.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let accepting = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn);
    match accepting {
        Ok(true) if listener.local_addr().is_ok() => {}
        // Hand the descriptor back unclosed: it is not ours to take.
        Ok(_) => {
            let _ = listener.into_raw_fd();
            return Err(not_listening(None));
        }
        Err(e) => {
            let _ = listener.into_raw_fd();
            return Err(not_listening(Some(e)));
        }
    }
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| not_listening(Some(e)))?;
    Ok(listener)
}

/// stderr is /dev/null: a panic message must reach the log instead.
fn install_panic_logger(sandbox_id: &str) {
    let sandbox_id = sandbox_id.to_string();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(sandbox_id = %sandbox_id, panic = %info, "shim panicked");
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_socket_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let fd = UnixListener::bind(&path).expect("bind").into_raw_fd();
        let listener = listener_from_fd(fd).expect("listener");
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "listener is inherited by children"
        );
        let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        assert!(listener.accept().is_ok());

        let file = std::fs::File::open("/dev/null")
            .expect("null")
            .into_raw_fd();
        assert!(matches!(
            listener_from_fd(file),
            Err(ServeSetupError::NotListening { source: None, .. })
        ));
        nix::unistd::close(file).expect("close");

        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let raw = a.into_raw_fd();
        assert!(matches!(
            listener_from_fd(raw),
            Err(ServeSetupError::NotListening { .. })
        ));
        nix::unistd::close(raw).expect("close");
        drop(b);

        assert!(matches!(
            listener_from_fd(1_000_000),
            Err(ServeSetupError::NotListening {
                source: Some(_),
                ..
            })
        ));
    }
}
