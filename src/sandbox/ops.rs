//! The per-process task operations: start, exec, signals, pause/resume,
//! resources, stats, terminal and stdin control, delete of an exec.

use std::sync::Arc;

use containerd_shim_protos::events::task::{
    TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use kata_agent_protocol::agent;
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::events::Event;
use crate::sandbox::process::Process;
use crate::sandbox::{Sandbox, monitor};
use crate::state::{Exit, ProcessState};
use crate::stdio::{ProcessIo, StdioConfig};

/// An exec request, decoded.
pub struct ExecSpec {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: StdioConfig,
    /// The OCI process as JSON (the request's `spec` Any value).
    pub process_json: Vec<u8>,
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
            agent
                .exec_process(&c.id, &p.exec_id, process_json)
                .await
                .map_err(Error::agent(&p.exec_id))?;
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

    pub async fn pause(&self, container_id: &str) -> Result<()> {
        self.freeze(container_id, true).await
    }

    pub async fn resume(&self, container_id: &str) -> Result<()> {
        self.freeze(container_id, false).await
    }

    async fn freeze(&self, container_id: &str, pause: bool) -> Result<()> {
        let c = self.container(container_id)?;
        let check = if pause {
            ProcessState::pause
        } else {
            ProcessState::resume
        };
        // Check first on a copy; apply after the guest did it.
        check(&mut c.init.state())?;
        let agent = self.agent()?;
        let call = if pause {
            agent.pause_container(&c.id).await
        } else {
            agent.resume_container(&c.id).await
        };
        call.map_err(Error::agent(&c.id))?;
        c.init.transition(check)?;
        if pause {
            self.publish(Event::Paused(TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        } else {
            self.publish(Event::Resumed(TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        }
        Ok(())
    }

    /// Update: applies `LinuxResources` (JSON) in the guest.
    pub async fn update(&self, container_id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.container(container_id)?;
        let json = crate::oci::guest_resources(resources_json)?;
        let agent = self.agent()?;
        agent
            .update_container(&c.id, json)
            .await
            .map_err(Error::agent(&c.id))
    }

    /// The guest's cgroup statistics of a container.
    pub async fn stats(&self, container_id: &str) -> Result<agent::StatsContainerResponse> {
        let c = self.container(container_id)?;
        let agent = self.agent()?;
        agent
            .stats_container(&c.id)
            .await
            .map_err(Error::agent(&c.id))
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

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        p.io.close_stdin().await?;
        Ok(())
    }
}
