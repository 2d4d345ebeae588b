//! One process of a container as the host sees it: its state machine, its
//! stdio bridge, and the channel its waiters watch.
//!
//! The exit is published in one step that first stops the state machine and
//! then wakes the waiters, so whoever returns from Wait finds State already
//! STOPPED with the exit status and time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::state::{Exit, ProcessState, Transition};
use crate::stdio::ProcessIo;

/// A container's init (empty `exec_id`) or one of its execs.
#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    pub exec_id: String,
    pub io: ProcessIo,
    pub terminal: bool,
    /// The guest process JSON of an exec (sent at Start); none for init.
    pub exec_spec: Option<Vec<u8>>,
    state: Mutex<ProcessState>,
    exit_tx: watch::Sender<Option<Exit>>,
    /// An exit watcher (WaitProcess on the agent) was started: at Start, or
    /// earlier when a created, never started init is signalled.
    watched: AtomicBool,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        io: ProcessIo,
        terminal: bool,
        exec_spec: Option<Vec<u8>>,
    ) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            io,
            terminal,
            exec_spec,
            state: Mutex::new(ProcessState::Created),
            exit_tx: watch::channel(None).0,
            watched: AtomicBool::new(false),
        }
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    /// The id containerd's events use: the exec id, or the container id.
    pub fn event_id(&self) -> &str {
        if self.is_init() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    /// Claims the one exit watcher of this process: true for the first
    /// caller only.
    pub fn claim_watch(&self) -> bool {
        !self.watched.swap(true, Ordering::AcqRel)
    }

    pub fn state(&self) -> ProcessState {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcessState> {
        // A panic while holding this lock cannot leave the enum half
        // written, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a transition atomically.
    pub fn transition(
        &self,
        f: impl FnOnce(&mut ProcessState) -> Result<(), Transition>,
    ) -> Result<(), Transition> {
        f(&mut self.lock())
    }

    /// Stops the state machine, then wakes the waiters. Returns whether
    /// this call recorded the exit (the first one wins).
    pub fn record_exit(&self, exit: Exit) -> bool {
        let first = self.lock().exit(exit);
        if first {
            self.exit_tx.send_replace(Some(exit));
        }
        first
    }

    /// Resolves with the exit, at once when the process already ended.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; keep the contract
                // anyway should that ever change.
                return self.state().exit_info().unwrap_or(Exit::now(255));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::StdioConfig;
    use std::sync::Arc;

    fn process() -> Arc<Process> {
        let io = ProcessIo::new(
            StdioConfig {
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
            },
            "c1",
            "e1",
            "default",
        )
        .expect("null stdio");
        Arc::new(Process::new("c1", "e1", io, false, None))
    }

    #[tokio::test]
    async fn wait_before_and_after_exit_sees_stopped_state() {
        let p = process();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                let e = p.wait().await;
                // State is already stopped when Wait returns.
                (e, p.state())
            })
        };
        p.transition(ProcessState::start).expect("start");
        tokio::task::yield_now().await;
        assert!(p.record_exit(Exit::now(3)));
        let (e, state) = waiter.await.expect("join");
        assert_eq!(e.status, 3);
        assert_eq!(state, ProcessState::Stopped(e));
        // After the exit, Wait returns at once with the same exit.
        assert_eq!(p.wait().await, e);
        assert!(!p.record_exit(Exit::now(9)));
        assert_eq!(p.wait().await.status, 3);
        assert_eq!(p.event_id(), "e1");
    }
}
