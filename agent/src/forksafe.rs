//! Where libcontainer forks from this multi-threaded process.
//!
//! A child forked from a multi-threaded process inherits every lock that
//! another thread held at that instant, still held. libcontainer made the
//! intermediate process with a raw `clone3`, which skips glibc's fork
//! bookkeeping, so a malloc arena lock held elsewhere stayed held in the
//! child and its first allocation waited forever: CreateContainer hung
//! until its deadline, rarely (once in a `make test`), after the cgroup
//! setup. Private arenas per thread only made it rarer, since glibc hands a
//! new thread the arena of one that exited, which other threads may still
//! be freeing into. The vendored libcontainer now forks that child with
//! glibc's `fork()`, which takes the malloc and stdio locks across the fork
//! and resets them in the child (vendor/README.md). The log sink takes no
//! lock for the same reason (`logging.rs`).
//!
//! [`run`] keeps the blocking create off the async runtime's workers.

use crate::error::{AgentError, Result};

/// Runs `work` (which makes libcontainer clone) on a thread of its own and
/// awaits its result.
pub async fn run<T, F>(what: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kata-clone".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| AgentError::Internal(format!("{what}: cannot start a thread: {e}")))?;
    rx.await
        .map_err(|_| AgentError::Internal(format!("{what}: the thread ended without a result")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_fresh_thread_and_returns_its_result() {
        let caller = std::thread::current().id();
        let (id, name) = run("test", || {
            let t = std::thread::current();
            Ok((t.id(), t.name().map(str::to_string)))
        })
        .await
        .expect("result");
        assert_ne!(id, caller);
        assert_eq!(name.as_deref(), Some("kata-clone"));
        let e = run::<(), _>("test", || Err(AgentError::Internal("boom".into())))
            .await
            .expect_err("error passes through");
        assert!(e.to_string().contains("boom"), "{e}");
    }

    /// The hang itself: libcontainer's fork of the intermediate process
    /// while other threads free memory that the forking thread allocated,
    /// as the agent's runtime does with what a create hands it. Each child
    /// allocates and exits; one that inherited the forking thread's malloc
    /// arena locked would never exit. With libcontainer's raw `clone3` this
    /// hangs within the first few forks on a multi-core host.
    #[test]
    fn a_child_forked_while_other_threads_free_always_runs() {
        use libcontainer::process::fork::container_clone;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        use std::sync::mpsc;
        use std::time::{Duration, Instant};

        const FORKS: usize = 200;
        // Freed by other threads, so into this thread's arena; above
        // glibc's per-thread cache, so each free takes the arena's lock.
        let freers: Vec<_> = (0..3)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
                (tx, std::thread::spawn(move || while rx.recv().is_ok() {}))
            })
            .collect();
        let mut hung = 0;
        for round in 0..FORKS {
            for (tx, _) in &freers {
                let batch = (0..64).map(|i| vec![0u8; 2048 + (i * 512)]).collect();
                tx.send(batch).expect("a freeing thread");
            }
            let pid = container_clone(Box::new(|| {
                let v: Vec<Vec<u8>> = (0..64).map(|i| vec![1u8; 2048 + i * 256]).collect();
                i32::from(v.len() != 64)
            }))
            .expect("fork");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                    WaitStatus::Exited(_, code) => {
                        assert_eq!(code, 0, "the child's allocations failed");
                        break;
                    }
                    WaitStatus::StillAlive if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    other => {
                        hung += 1;
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
                        let _ = waitpid(pid, None);
                        eprintln!("fork {round}: child {pid} did not end: {other:?}");
                        break;
                    }
                }
            }
            if hung >= 3 {
                break;
            }
        }
        for (tx, t) in freers {
            drop(tx);
            t.join().expect("freeing thread");
        }
        assert_eq!(hung, 0, "{hung} forked children hung (of at most {FORKS})");
    }
}
