//! OOM events: a watcher per container polls its cgroup's `memory.events`
//! and queues the container id whenever `oom_kill` grows; GetOOMEvent
//! long-polls the queue.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::container::cgroup::flat_keyed;
use crate::error::{AgentError, Result};

/// Poll period of `memory.events`.
const POLL: Duration = Duration::from_millis(100);

/// The queue of container ids that saw an OOM kill.
#[derive(Debug)]
pub struct OomQueue {
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for OomQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

fn oom_kills(events: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(events).ok()?;
    flat_keyed(&text).get("oom_kill").copied()
}

impl OomQueue {
    /// Starts watching `cgroup_dir` for `container_id`; abort the handle to stop.
    pub fn watch(&self, container_id: String, cgroup_dir: PathBuf) -> JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let events = cgroup_dir.join("memory.events");
            let mut last = oom_kills(&events).unwrap_or(0);
            loop {
                tokio::time::sleep(POLL).await;
                let Some(now) = oom_kills(&events) else {
                    // The cgroup is gone: the container was removed.
                    return;
                };
                if now > last {
                    tracing::info!(container_id = %container_id, oom_kills = now, "OOM kill");
                    if tx.send(container_id.clone()).is_err() {
                        return;
                    }
                }
                last = now;
            }
        })
    }

    /// Waits for the next container id with an OOM kill.
    pub async fn next(&self) -> Result<String> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| AgentError::Internal("OOM queue closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oom_kill_increments_are_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ev = dir.path().join("memory.events");
        std::fs::write(&ev, "oom 0\noom_kill 0\n").expect("write");
        let q = OomQueue::default();
        let h = q.watch("c1".into(), dir.path().to_path_buf());
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(&ev, "oom 1\noom_kill 1\n").expect("write");
        let id = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("event in time")
            .expect("queue open");
        assert_eq!(id, "c1");
        h.abort();
    }
}
