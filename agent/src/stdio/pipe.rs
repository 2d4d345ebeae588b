//! Pipe-backed stdio: one pipe per opened stream.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;

use super::{ChildStdio, ProcessIo, async_fd};
use crate::error::{AgentError, Result};

/// A pipe as (read end, write end), both `O_CLOEXEC` so that no other child
/// the agent spawns inherits them (an inherited stdin write end would keep
/// the process from ever seeing EOF).
fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys(format!("creating the {what} pipe"), e))
}

/// Capacity asked for an output pipe (the kernel's default is 64 KiB).
/// A writer then blocks, and the agent wakes, a quarter as often: under
/// TCG each of those switches costs as much as copying the bytes.
const OUTPUT_PIPE_SIZE: libc::c_int = 256 << 10;

/// Grows an output pipe to [`OUTPUT_PIPE_SIZE`]. Best effort: the pipe
/// works at any size, so a refusal (a lowered `pipe-max-size`, a user's
/// pipe quota) leaves it as it is, with a debug line.
fn grow(fd: &OwnedFd, what: &str) {
    if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE)) {
        tracing::debug!(stream = what, error = %e, "the output pipe keeps its default size");
    }
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
    for (fd, what) in [(&out_r, "stdout"), (&err_r, "stderr")] {
        grow(fd, what);
    }
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
