//! Keeping libcontainer's clone safe in this multi-threaded process.
//!
//! libcontainer creates the intermediate and init processes with a raw
//! `clone3` syscall, so glibc's fork bookkeeping does not run: a malloc
//! arena lock that another thread held at that instant stays locked in the
//! child, and the child's first allocation from that arena waits forever
//! (CreateContainer then hangs until its deadline). Two measures keep the
//! cloning thread's arena private to it:
//!
//! - [`init`] raises `M_ARENA_MAX`, so that every thread gets an arena of
//!   its own instead of sharing one of the default 8 per CPU (a one-vCPU
//!   guest runs more threads than that);
//! - [`run`] makes each clone on a fresh thread, whose arena holds nothing
//!   another thread could be freeing into at the time of the clone.

use crate::error::{AgentError, Result};

/// Arenas glibc may create; above any thread count the agent reaches.
const ARENA_MAX: libc::c_int = 4096;

/// Sets the malloc arena limit; call it first in `main`, before any thread.
pub fn init() {
    // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX takes any
    // positive int. It runs before the process starts other threads.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) };
    if ok != 1 {
        tracing::warn!(
            "mallopt(M_ARENA_MAX) failed; container creation may hang on a shared malloc arena"
        );
    }
}

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
        init();
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
}
