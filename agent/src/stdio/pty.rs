//! Pty-backed stdio: the child gets the slave as fds 0, 1 and 2; the agent
//! reads output from and writes input to the master.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{SpecialCharacterIndices, tcgetattr};

use super::{ChildStdio, ProcessIo, async_fd, errno_of};
use crate::error::{AgentError, Result};

/// The EOF character when the terminal's settings cannot be read (`^D`).
const DEFAULT_VEOF: u8 = 0x04;

pub(super) fn create(open_stdin: bool) -> Result<(ChildStdio, ProcessIo)> {
    // O_NOCTTY: the agent (PID 1 in the guest) must not acquire the
    // container's terminal as its controlling terminal. O_CLOEXEC: no other
    // child may inherit the master.
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::sys("opening /dev/ptmx", e))?;
    grantpt(&master).map_err(|e| AgentError::sys("grantpt", e))?;
    unlockpt(&master).map_err(|e| AgentError::sys("unlockpt", e))?;
    let slave_path = ptsname_r(&master).map_err(|e| AgentError::sys("ptsname", e))?;
    let slave: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .map_err(|e| AgentError::io("opening", &slave_path, e))?
        .into();
    // SAFETY: `into_raw_fd` hands over sole ownership of an open fd, which
    // the new OwnedFd takes; nothing else closes it.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };

    let dup = |what| {
        slave.try_clone().map_err(|e| {
            AgentError::sys(
                format!("duplicating the pty slave for {what}"),
                errno_of(&e),
            )
        })
    };
    let child = ChildStdio {
        stdin: Some(dup("stdin")?),
        stdout: dup("stdout")?,
        stderr: None,
    };
    let master = Arc::new(async_fd(master, "the pty master")?);
    let stdin = open_stdin.then(|| Arc::clone(&master));
    // The agent keeps `slave` until the child started: with no slave open,
    // the master reports EIO (= EOF) right away.
    let io = ProcessIo::start(Arc::clone(&master), None, stdin, Some(master), vec![slave]);
    Ok((child, io))
}

/// TIOCSWINSZ on the master.
pub(super) fn set_window_size(master: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the fd is open for the duration of the call (borrowed from an
    // OwnedFd), and TIOCSWINSZ only reads a `winsize` from the pointer, which
    // points to a live local of that type.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(AgentError::sys("TIOCSWINSZ", Errno::last()));
    }
    Ok(())
}

/// Best effort: writes the terminal's EOF character to the master, which a
/// process reading in canonical mode sees as EOF. Dropped if the terminal's
/// input queue is full (the process is not reading anyway).
pub(super) fn send_eof(master: &OwnedFd) {
    let veof = tcgetattr(master.as_fd())
        .ok()
        .and_then(|t| {
            t.control_chars
                .get(SpecialCharacterIndices::VEOF as usize)
                .copied()
        })
        .filter(|&c| c != 0)
        .unwrap_or(DEFAULT_VEOF);
    if let Err(e) = nix::unistd::write(master, &[veof]) {
        tracing::debug!(error = %e, "writing EOF to the terminal");
    }
}
