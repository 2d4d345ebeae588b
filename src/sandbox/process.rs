//! One process of a container as the host sees it (its state machine, its
//! stdio bridge, the channel its waiters watch) and the Task RPCs on a
//! process: Start, Exec, Kill, State, Wait, ResizePty, CloseIO and Delete
//! of an exec.
//!
//! The exit is published in one step that first stops the state machine and
//! then wakes the waiters, so whoever returns from Wait finds State already
//! STOPPED with the exit status and time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted, TaskStart};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::events::Event;
use crate::locks::lock;
use crate::sandbox::{Sandbox, monitor};
use crate::state::{Exit, ProcessState, Transition};
use crate::stdio::{ProcessIo, StdioConfig};

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
        lock(&self.state)
    }

    /// Applies a transition atomically.
    pub fn transition(
        &self,
        f: impl FnOnce(&mut ProcessState) -> std::result::Result<(), Transition>,
    ) -> std::result::Result<(), Transition> {
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

/// An exec request, decoded.
pub struct ExecSpec {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: StdioConfig,
    /// The OCI process as JSON (the request's `spec` Any value).
    pub process_json: Vec<u8>,
}

/// What State reports of a process.
#[derive(Debug)]
pub struct ProcessStatus {
    pub bundle: PathBuf,
    pub state: ProcessState,
    pub stdio: StdioConfig,
    pub terminal: bool,
}

fn is_term_or_kill(signal: u32) -> bool {
    signal == Signal::SIGKILL as u32 || signal == Signal::SIGTERM as u32
}

impl Sandbox {
    /// Start of an init or an exec. Returns the task pid.
    pub async fn start(self: &Arc<Self>, container_id: &str, exec_id: &str) -> Result<u32> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        let agent = self.agent()?;
        p.transition(|s| match s {
            ProcessState::Created => Ok(()),
            other => Err(crate::state::Transition {
                action: "start",
                from: other.name(),
            }),
        })?;
        if p.is_init() {
            agent
                .start_container(&c.id)
                .await
                .map_err(Error::agent(&c.id))?;
        } else {
            let process_json = p.exec_spec.clone().unwrap_or_default();
            let began = std::time::Instant::now();
            agent
                .exec_process(&c.id, &p.exec_id, process_json)
                .await
                .map_err(Error::agent(&p.exec_id))?;
            // The agent logs its own share (`exec started`, build_us).
            tracing::debug!(
                sandbox_id = %self.id,
                container_id,
                exec_id,
                exec_process_us = began.elapsed().as_micros() as u64,
                "ExecProcess answered"
            );
            p.io.start(Arc::new(agent.clone()));
        }
        match p.transition(ProcessState::start) {
            // A signal sent while it was created already ended it, and its
            // watcher reported the exit: the start itself succeeded.
            Err(_) if p.state().is_stopped() => {}
            r => r?,
        }
        monitor::watch_exit(self.clone(), c.clone(), p.clone(), agent);
        tracing::info!(sandbox_id = %self.id, container_id, exec_id, "process started");
        if p.is_init() {
            self.publish(Event::Start(TaskStart {
                container_id: c.id.clone(),
                pid: self.pid(),
                ..Default::default()
            }));
        } else {
            self.publish(Event::ExecStarted(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: p.exec_id.clone(),
                pid: self.pid(),
                ..Default::default()
            }));
        }
        Ok(self.pid())
    }

    /// Exec: records the process; it runs at Start.
    pub fn exec(&self, spec: ExecSpec) -> Result<()> {
        if spec.exec_id.is_empty() {
            return Err(Error::InvalidArgument {
                field: "exec_id",
                reason: "must not be empty".into(),
            });
        }
        crate::ids::validate(&spec.exec_id).map_err(|e| Error::InvalidArgument {
            field: "exec_id",
            reason: e.to_string(),
        })?;
        let c = self.container(&spec.container_id)?;
        crate::stdio::ensure_fd_headroom()?;
        if c.process(&spec.exec_id).is_ok() {
            return Err(Error::AlreadyExists {
                what: "exec",
                id: spec.exec_id,
            });
        }
        match c.init.state() {
            ProcessState::Running => {}
            other => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot exec in container {} that is {}",
                    c.id,
                    other.name()
                )));
            }
        }
        self.agent()?;
        let terminal = spec.stdio.terminal;
        let guest = crate::oci::guest_process(&spec.process_json, terminal)?;
        let io = ProcessIo::new(spec.stdio, &c.id, &spec.exec_id, &self.namespace)?;
        let p = Arc::new(Process::new(
            &c.id,
            &spec.exec_id,
            io,
            terminal,
            Some(guest),
        ));
        c.add_exec(p)?;
        self.publish(Event::ExecAdded(TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: spec.exec_id,
            ..Default::default()
        }));
        Ok(())
    }

    /// Kill. SIGTERM and SIGKILL to a stopped process succeed; signal 0
    /// probes liveness.
    pub async fn kill(
        self: &Arc<Self>,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        if signal > 64 {
            return Err(Error::InvalidArgument {
                field: "signal",
                reason: format!("{signal} is not a signal number"),
            });
        }
        match p.state() {
            ProcessState::Stopped(_) => {
                if is_term_or_kill(signal) {
                    return Ok(());
                }
                return Err(Error::NotFound {
                    what: "running process",
                    id: p.event_id().to_string(),
                });
            }
            ProcessState::Created if !p.is_init() => {
                // Not running in the guest yet: there is nothing to signal.
                if is_term_or_kill(signal) {
                    p.record_exit(Exit::now(128 + signal));
                    return Ok(());
                }
                return Err(Error::FailedPrecondition(format!(
                    "exec {} has not started",
                    p.exec_id
                )));
            }
            _ => {}
        }
        let agent = match self.agent() {
            Ok(a) => a,
            // The VM is gone: so is every process in it.
            Err(_) if is_term_or_kill(signal) => return Ok(()),
            Err(e) => return Err(e),
        };
        if p.is_init() && signal != 0 && matches!(p.state(), ProcessState::Created) {
            // A created, never started init has no watcher yet (Start
            // begins it). CRI-O stops and removes such a container with
            // Kill then Wait: its exit must be reported, or the stop waits
            // out its deadline and the pod can never be removed.
            monitor::watch_exit(self.clone(), c.clone(), p.clone(), agent.clone());
        }
        match agent.signal_process(&c.id, &p.exec_id, signal, all).await {
            Ok(()) => Ok(()),
            Err(e)
                if is_term_or_kill(signal)
                    && matches!(
                        e.status(),
                        Some(ttrpc::Code::NOT_FOUND | ttrpc::Code::FAILED_PRECONDITION)
                    ) =>
            {
                // It exited while the signal was on its way.
                Ok(())
            }
            Err(e) => Err(Error::agent(p.event_id())(e)),
        }
    }

    /// State of an init or an exec.
    pub fn process_status(&self, container_id: &str, exec_id: &str) -> Result<ProcessStatus> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        Ok(ProcessStatus {
            bundle: c.bundle.clone(),
            state: p.state(),
            stdio: p.io.config().clone(),
            terminal: p.terminal,
        })
    }

    /// Wait: resolves with the exit, at once when it already happened.
    pub async fn wait(&self, container_id: &str, exec_id: &str) -> Result<Exit> {
        let p = self.container(container_id)?.process(exec_id)?;
        Ok(p.wait().await)
    }

    pub async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        if !p.terminal {
            return Err(Error::FailedPrecondition(format!(
                "process {} has no terminal",
                p.event_id()
            )));
        }
        match p.state() {
            ProcessState::Running | ProcessState::Paused => {}
            other => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot resize the terminal of a process that is {}",
                    other.name()
                )));
            }
        }
        let agent = self.agent()?;
        agent
            .tty_win_resize(&c.id, &p.exec_id, height, width)
            .await
            .map_err(Error::agent(p.event_id()))
    }

    /// CloseIO: closes the process's stdin once what was written reached
    /// it; without `stdin` it only checks that the process exists.
    pub async fn close_io(&self, container_id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let p = self.container(container_id)?.process(exec_id)?;
        if stdin {
            p.io.close_stdin().await?;
        }
        Ok(())
    }

    /// Delete of an exec: only before it started or after it exited.
    pub async fn delete_exec(&self, container_id: &str, exec_id: &str) -> Result<Exit> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        p.state().check_delete()?;
        let exit = p.state().exit_info().unwrap_or_else(|| Exit::now(137));
        if !p.state().is_stopped() {
            p.record_exit(exit);
        }
        p.io.shutdown().await;
        c.remove_exec(exec_id);
        Ok(exit)
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
