//! One supervised process (a container's init or an exec): its pid, its
//! exit status as reported by the reaper, and its stdio.
//!
//! Exit statuses flow from the reaper: the caller subscribes to
//! [`Reaper::subscribe`] *before* libcontainer forks, and hands the
//! receiver to [`Process::watch_exit`] together with the pid it learned;
//! exits reaped in between are buffered by the broadcast channel, so none
//! is missed. The pid is only signalled while no exit was recorded, which
//! rules out signalling a reused pid.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{broadcast, watch};

use crate::error::{AgentError, Result};
use crate::reaper::ChildExit;
use crate::stdio::ProcessIo;

/// How long WaitProcess waits for the output to be drained after the exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Status reported when the exit was lost (reaper channel overflow).
const LOST_EXIT_STATUS: i32 = 255;

/// A supervised process.
#[derive(Debug)]
pub struct Process {
    /// Empty for a container's init.
    pub exec_id: String,
    /// Its pid in the agent's pid namespace.
    pub pid: i32,
    /// Its stdio, as the agent sees it.
    pub io: ProcessIo,
    exit: watch::Receiver<Option<i32>>,
}

impl Process {
    /// Tracks `pid`, whose exit will arrive on `exits` (subscribed before
    /// the fork). `on_exit` runs once with the status, e.g. to mark the
    /// container stopped.
    pub fn watch_exit(
        exec_id: String,
        pid: i32,
        io: ProcessIo,
        mut exits: broadcast::Receiver<ChildExit>,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let p = Arc::new(Process {
            exec_id,
            pid,
            io,
            exit: rx,
        });
        tokio::spawn(async move {
            let status = loop {
                match exits.recv().await {
                    Ok(e) if e.pid == pid => break e.code(),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Our exit may be among the dropped ones: if the pid
                        // is gone, it was reaped and its status lost.
                        if kill(Pid::from_raw(pid), None).is_err() {
                            tracing::warn!(pid, dropped = n, "exit status lost to reaper lag");
                            break LOST_EXIT_STATUS;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break LOST_EXIT_STATUS,
                }
            };
            tracing::debug!(pid, status, "process exited");
            on_exit(status);
            let _ = tx.send(Some(status));
        });
        p
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// A receiver of the exit status (`None` while running).
    pub fn exit_receiver(&self) -> watch::Receiver<Option<i32>> {
        self.exit.clone()
    }

    /// Waits for the exit, then (bounded) for the output to be drained.
    pub async fn wait(&self) -> Result<i32> {
        let mut rx = self.exit.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Internal("exit watcher ended".into()))?
            .unwrap_or(LOST_EXIT_STATUS);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.io.wait_output_drained())
            .await
            .is_err()
        {
            tracing::warn!(
                exec_id = %self.exec_id,
                pid = self.pid,
                "output not drained in time; returning the exit status anyway"
            );
        }
        Ok(status)
    }

    /// Sends `sig` unless the process is known to have exited; `None` is
    /// signal 0, the liveness probe.
    pub fn signal(&self, sig: Option<Signal>) -> Result<()> {
        if self.exit_status().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "process {} has already exited",
                self.pid
            )));
        }
        match kill(Pid::from_raw(self.pid), sig) {
            // Exited but not reaped yet: nothing to signal.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::sys(format!("kill({}, {sig:?})", self.pid), e)),
        }
    }
}

/// Stop signals that a container init may never receive: as PID 1 of its
/// own pid namespace, the kernel drops a signal it has no handler for.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// What a container's init gets for a stop signal `sig`. An init that is
/// PID 1 of its pid namespace and neither catches nor ignores `sig` would
/// never see it (a shell's `sleep`, a created container's init, a pause
/// process before its handler is in place): under runc the caller waits
/// out its whole grace period and then kills. Such a signal becomes
/// SIGKILL at once, as Kata's agent does; an init with a handler gets the
/// signal itself and runs its handler.
pub fn init_stop_signal(pid: i32, sig: Signal) -> Signal {
    if !STOP_SIGNALS.contains(&sig) {
        return sig;
    }
    let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s,
        // Gone already: the signal finds nothing either way.
        Err(_) => return sig,
    };
    if unreceivable(&status, sig) {
        tracing::info!(pid, signal = ?sig, "the init cannot receive the stop signal (PID 1 of its namespace, no handler): SIGKILL");
        Signal::SIGKILL
    } else {
        sig
    }
}

/// Whether a `/proc/<pid>/status` text shows PID 1 of its innermost pid
/// namespace with no handler for `sig` and `sig` not ignored.
fn unreceivable(status: &str, sig: Signal) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let ns_pid_1 = field("NSpid:")
        .and_then(|v| v.split_whitespace().last())
        .is_some_and(|last| last == "1");
    let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    let bit = 1u64 << (sig as i32 - 1);
    match (mask("SigCgt:"), mask("SigIgn:")) {
        (Some(caught), Some(ignored)) => ns_pid_1 && caught & bit == 0 && ignored & bit == 0,
        // Unreadable masks: leave the signal as asked.
        _ => false,
    }
}

/// Converts a request's signal number; 0 (a liveness probe, which only
/// checks that the process exists) is `None`.
pub fn parse_signal(sig: u32) -> Result<Option<Signal>> {
    if sig == 0 {
        return Ok(None);
    }
    i32::try_from(sig)
        .ok()
        .and_then(|s| Signal::try_from(s).ok())
        .map(Some)
        .ok_or_else(|| AgentError::InvalidArgument {
            field: "signal",
            reason: format!("{sig} is not a signal"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nspid: &str, cgt: &str, ign: &str) -> String {
        format!(
            "Name:\tsleep\nPid:\t42\nNSpid:\t{nspid}\nSigQ:\t0/1\nSigPnd:\t0000000000000000\n\
             SigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n"
        )
    }

    #[test]
    fn stop_signals_an_init_cannot_receive_become_sigkill() {
        let none = "0000000000000000";
        // SIGTERM is bit 14 (1 << 14 = 0x4000); SIGINT bit 1.
        let term = "0000000000004000";
        // PID 1 of its namespace, no handler: unreceivable.
        assert!(unreceivable(&status("42\t1", none, none), Signal::SIGTERM));
        assert!(unreceivable(&status("42\t1", term, none), Signal::SIGINT));
        // A handler, or an explicit ignore, is respected.
        assert!(!unreceivable(&status("42\t1", term, none), Signal::SIGTERM));
        assert!(!unreceivable(&status("42\t1", none, term), Signal::SIGTERM));
        // Not PID 1 (a shared pid namespace): the default action kills it.
        assert!(!unreceivable(&status("42\t7", none, none), Signal::SIGTERM));
        // Malformed masks change nothing.
        assert!(!unreceivable("NSpid:\t1\nSigCgt:\tzz\n", Signal::SIGTERM));
        // Only stop signals are ever turned into SIGKILL.
        assert_eq!(
            init_stop_signal(std::process::id() as i32, Signal::SIGUSR1),
            Signal::SIGUSR1
        );
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal(9).expect("kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal(15).expect("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal(0).expect("probe"), None);
        assert_eq!(
            parse_signal(65).expect_err("not a signal").code(),
            ttrpc::Code::INVALID_ARGUMENT
        );
        assert!(parse_signal(10_000).is_err());
    }
}
