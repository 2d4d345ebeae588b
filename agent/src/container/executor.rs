//! The last step in a container's process before `execve`: every signal
//! back to its default disposition and unblocked, as runc and crun leave
//! them, then libcontainer's default exec.
//!
//! Why: the agent is a Rust program, and Rust's runtime sets `SIGPIPE` to
//! `SIG_IGN` before `main`. An ignored signal stays ignored across `fork`
//! and `execve` (only caught ones are reset), so every container process,
//! init and exec alike, started with `SIGPIPE` ignored. `yes | head` then
//! never ended once `head` had exited (`yes` got `EPIPE` and kept going),
//! and a shell cannot trap a signal that was ignored when it started.
//! Kata's agent had the same bug (kata-containers#1887).

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use oci_spec::runtime::Spec;

/// libcontainer's default executor, with the signals reset first.
#[derive(Clone)]
pub struct DefaultSignals;

impl Executor for DefaultSignals {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Highest signal number of the kernel (`_NSIG`).
const NSIG: libc::c_int = 64;

/// Sets every signal but SIGKILL and SIGSTOP to `SIG_DFL` and unblocks them
/// all. Runs in the container's process, single-threaded, right before
/// `execve` (which resets caught signals but keeps ignored ones and the
/// mask).
pub fn reset_signals() {
    // The kernel's `struct sigaction`, all zero: handler SIG_DFL, no flags,
    // no restorer, empty mask. 32 bytes hold it on every architecture we
    // build for.
    let default = [0u64; 4];
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction(2) reads the zeroed struct on this frame
        // (SIG_DFL: no code of ours ever runs in signal context) and
        // writes nothing (null old action); 8 is the kernel's sigset size.
        // The raw call, not glibc's wrapper, because glibc refuses the two
        // signals it keeps for its threads, which may have been ignored by
        // whoever started the agent.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::{SigHandler, Signal, signal};

    use super::*;

    /// The SigIgn and SigBlk masks of this thread.
    fn masks() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex mask"))
                .expect("mask line")
        };
        (mask("SigIgn:"), mask("SigBlk:"))
    }

    #[test]
    fn ignored_and_blocked_signals_are_reset() {
        // On a thread of its own: the mask is per thread, and the test
        // harness's other threads keep theirs.
        std::thread::spawn(|| {
            // SAFETY: SIG_IGN installs no handler.
            unsafe {
                signal(Signal::SIGPIPE, SigHandler::SigIgn).expect("ignore SIGPIPE");
                signal(Signal::SIGUSR1, SigHandler::SigIgn).expect("ignore SIGUSR1");
            }
            let mut blocked = SigSet::empty();
            blocked.add(Signal::SIGUSR2);
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).expect("block");
            let (ign, blk) = masks();
            assert_ne!(ign & (1 << (libc::SIGPIPE - 1)), 0);
            assert_ne!(blk & (1 << (libc::SIGUSR2 - 1)), 0);

            reset_signals();
            assert_eq!(masks(), (0, 0), "(SigIgn, SigBlk) after the reset");
        })
        .join()
        .expect("test thread");
        // Rust's own disposition back for the rest of the test process.
        // SAFETY: SIG_IGN installs no handler.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.expect("ignore SIGPIPE again");
    }
}
