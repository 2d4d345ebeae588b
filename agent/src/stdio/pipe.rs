//! Pipe-backed stdio: one pipe per opened stream.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::{ChildStdio, ProcessIo, async_fd};
use crate::error::{AgentError, Result};

/// A pipe as (read end, write end), both `O_CLOEXEC` so that no other child
/// the agent spawns inherits them (an inherited stdin write end would keep
/// the process from ever seeing EOF).
fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys(format!("creating the {what} pipe"), e))
}

/// Clones an fd (`F_DUPFD_CLOEXEC`), for the copies kept until the child
/// has started.
fn dup(fd: &OwnedFd, what: &str) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(|e| AgentError::sys(format!("duplicating the {what} fd"), super::errno_of(&e)))
}

pub(super) fn create(open_stdin: bool) -> Result<(ChildStdio, ProcessIo)> {
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    let (child_stdin, agent_stdin) = if open_stdin {
        let (r, w) = pipe("stdin")?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    // Only the agent's ends become non-blocking: O_NONBLOCK lives in the open
    // file description, and each pipe end has its own.
    let stdout = Arc::new(async_fd(out_r, "the stdout pipe")?);
    let stderr = Arc::new(async_fd(err_r, "the stderr pipe")?);
    let stdin = agent_stdin
        .map(|w| async_fd(w, "the stdin pipe").map(Arc::new))
        .transpose()?;
    let retained = vec![dup(&out_w, "stdout")?, dup(&err_w, "stderr")?];
    let child = ChildStdio {
        stdin: child_stdin,
        stdout: out_w,
        stderr: Some(err_w),
    };
    let io = ProcessIo::start(stdout, Some(stderr), stdin, None, retained);
    Ok((child, io))
}
