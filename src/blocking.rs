//! Blocking work called from async code: fsync, cgroup removal that
//! waits for processes to leave, mount syscalls, opening volume sources
//! (an NFS or FUSE source can hang). On the shim's multi-thread runtime it
//! runs with `block_in_place`, which hands the worker's other tasks to
//! another thread first, so one slow disk or mount does not stall the
//! pod's RPCs; elsewhere (a current-thread test runtime, no runtime) it
//! simply runs.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, off the async workers where the runtime allows.
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// With both workers of a two-worker runtime inside blocking work,
    /// another task still runs: its ticks advance while they block.
    /// (Blocking directly on both workers, it would not tick at all.)
    #[test]
    fn blocking_work_does_not_stall_the_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ticks = Arc::new(AtomicU32::new(0));
        let seen = rt.block_on(async {
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            let blockers: Vec<_> = (0..2)
                .map(|_| {
                    let t = ticks.clone();
                    tokio::spawn(async move {
                        run(|| {
                            let before = t.load(Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(300));
                            t.load(Ordering::Relaxed) - before
                        })
                    })
                })
                .collect();
            let mut seen = 0;
            for b in blockers {
                seen = seen.max(b.await.expect("blocker"));
            }
            ticker.abort();
            seen
        });
        println!("ticks while both workers ran blocking work: {seen}");
        assert!(seen > 0, "the other task never ran");
        // Outside a runtime it just runs.
        assert_eq!(run(|| 7), 7);
    }
}
