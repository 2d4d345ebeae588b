//! containerd's binary logging contract (`binary://` stdio): the logger is
//! started with the URI's query as arguments, only `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE` in its environment, the read ends of the stdout and
//! stderr pipes as fds 3 and 4, and the write end of a readiness pipe as
//! fd 5, which it writes to or closes once it is ready.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, pipe2};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use super::uri::BinaryCmd;

/// How long a logger may take to report ready before output is written to
/// its pipes anyway (the pipes buffer until it reads).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// A logger normally exits on its own once both pipes reach EOF.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// After SIGTERM it gets this long to flush, as containerd allows.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// A running logging binary.
#[derive(Debug)]
pub(crate) struct Logger {
    child: Child,
}

/// The shim's ends of the logger's pipes.
pub(crate) struct LoggerPipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Read end of the readiness pipe, for [`wait_ready`].
    pub ready: OwnedFd,
}

impl Logger {
    /// Starts the logger. Returns once it was spawned; readiness is awaited
    /// separately with [`wait_ready`] so the caller can record
    /// the child first (and reap it whatever happens next).
    pub(crate) fn spawn(
        cmd: &BinaryCmd,
        container_id: &str,
        namespace: &str,
    ) -> io::Result<(Logger, LoggerPipes)> {
        // All three pipes are close-on-exec: only the dup2'd copies below
        // reach the logger, and no other child of the shim inherits them.
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC)?;
        let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut command = Command::new(&cmd.path);
        command
            .args(&cmd.args)
            .env_clear()
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls fcntl and dup2, which are async-signal-safe; it allocates
        // nothing and touches no lock. The raw fds it uses are owned by this
        // function and stay open until after `spawn` returns.
        unsafe {
            command.pre_exec(move || install_fds(fds));
        }
        let child = command.spawn()?;
        drop((out_r, err_r, ready_w));
        Ok((
            Logger { child },
            LoggerPipes {
                stdout: out_w,
                stderr: err_w,
                ready: ready_r,
            },
        ))
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the logger to exit after its pipes were closed, then asks
    /// it with SIGTERM, then kills it; always reaps it.
    pub(crate) async fn stop(mut self) {
        if let Ok(Ok(_)) = tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if let Ok(Ok(_)) = tokio::time::timeout(TERM_TIMEOUT, self.child.wait()).await {
            return;
        }
        tracing::warn!(
            pid = self.child.id(),
            "logging binary ignored SIGTERM, killing it"
        );
        let _ = self.child.kill().await;
    }
}

/// Resolves once the logger wrote to or closed its readiness fd (or died),
/// or after [`READY_TIMEOUT`]. Returns whether it reported ready.
pub(crate) async fn wait_ready(ready: OwnedFd) -> bool {
    let mut ready = match pipe::Receiver::from_owned_fd(ready) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the logging binary's readiness pipe");
            return false;
        }
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(READY_TIMEOUT, ready.read(&mut byte)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the logging binary's readiness pipe");
            false
        }
        Err(_) => false,
    }
}

/// In the child: moves the three fds to 3, 4 and 5. They are first copied
/// above 9 so that a source already sitting on 3..5 is not overwritten by
/// an earlier dup2; the copies are close-on-exec, the dup2 targets are not.
fn install_fds(fds: [i32; 3]) -> io::Result<()> {
    let mut high = [0i32; 3];
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl on an fd this process owns; no memory is involved.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        *h = r;
    }
    for (target, h) in (3..).zip(high) {
        // SAFETY: dup2 between fds this process owns; no memory is involved.
        if unsafe { libc::dup2(h, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
