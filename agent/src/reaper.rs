//! Zombie reaping for PID 1, with a hook for whoever owns the children.
//!
//! As PID 1 the agent inherits every orphan in the guest. A task waits for
//! SIGCHLD and then calls `waitpid(-1, WNOHANG)` until nothing is left, and
//! broadcasts every exit as a [`ChildExit`]. Code that spawns processes
//! (container processes, later) must [`Reaper::subscribe`] *before* spawning,
//! then match exits by pid: the reaper collects every child, so
//! `std::process::Child::wait` / `tokio::process` must not be used for them.

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

use crate::error::{AgentError, Result};

/// Capacity of the exit broadcast; slow subscribers see `Lagged`.
const EXIT_CHANNEL_CAPACITY: usize = 256;

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Normal exit with this status code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// Its pid.
    pub pid: i32,
    /// How it ended.
    pub kind: ExitKind,
}

impl ChildExit {
    /// Shell-style exit code: the status, or 128 + signal.
    pub fn code(&self) -> i32 {
        match self.kind {
            ExitKind::Exited(c) => c,
            ExitKind::Signaled(s) => 128 + s,
        }
    }
}

/// Handle to the running reaper; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    tx: broadcast::Sender<ChildExit>,
}

impl Reaper {
    /// Installs the SIGCHLD stream and spawns the reaping task. Must be
    /// called inside the tokio runtime.
    pub fn start() -> Result<Self> {
        let mut sigchld = signal(SignalKind::child())
            .map_err(|e| AgentError::Internal(format!("installing the SIGCHLD handler: {e}")))?;
        let (tx, _) = broadcast::channel(EXIT_CHANNEL_CAPACITY);
        let task_tx = tx.clone();
        tokio::spawn(async move {
            // Children that exited before the handler was installed.
            reap_all(&task_tx);
            while sigchld.recv().await.is_some() {
                reap_all(&task_tx);
            }
            tracing::error!("SIGCHLD stream ended; zombies will no longer be reaped");
        });
        Ok(Self { tx })
    }

    /// Subscribes to child exits (only those reaped after this call).
    pub fn subscribe(&self) -> broadcast::Receiver<ChildExit> {
        self.tx.subscribe()
    }
}

/// Reaps every child that has exited; signals coalesce, so loop until none.
fn reap_all(tx: &broadcast::Sender<ChildExit>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                if let Some(exit) = to_exit(status) {
                    tracing::debug!(pid = exit.pid, code = exit.code(), "reaped child");
                    // No subscriber is fine: nobody owns that child.
                    let _ = tx.send(exit);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

fn to_exit(status: WaitStatus) -> Option<ChildExit> {
    match status {
        WaitStatus::Exited(pid, code) => Some(ChildExit {
            pid: pid.as_raw(),
            kind: ExitKind::Exited(code),
        }),
        WaitStatus::Signaled(pid, sig, _) => Some(ChildExit {
            pid: pid.as_raw(),
            kind: ExitKind::Signaled(sig as i32),
        }),
        // Stops/continues are not reported without WUNTRACED/WCONTINUED.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[tokio::test]
    async fn exits_are_broadcast() {
        let reaper = Reaper::start().expect("start reaper");
        let mut exits = reaper.subscribe();
        #[expect(clippy::zombie_processes, reason = "the reaper under test collects it")]
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let exit = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let e = exits.recv().await.expect("reaper alive");
                if e.pid == pid {
                    return e;
                }
            }
        })
        .await
        .expect("child exit reported");
        assert_eq!(exit.kind, ExitKind::Exited(7));
    }

    #[test]
    fn statuses_convert() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            to_exit(WaitStatus::Exited(pid, 3)),
            Some(ChildExit {
                pid: 42,
                kind: ExitKind::Exited(3)
            })
        );
        let e = to_exit(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).expect("signaled");
        assert_eq!(e.kind, ExitKind::Signaled(9));
        assert_eq!(e.code(), 137);
        assert_eq!(to_exit(WaitStatus::StillAlive), None);
    }
}
