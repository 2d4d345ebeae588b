//! The per-process task operations: start, exec, signals, pause/resume,
//! resources, stats, terminal and stdin control, delete of an exec.

use std::sync::Arc;

use containerd_shim_protos::events::task::{
    TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use kata_agent_protocol::agent;
use nix::sys::signal::Signal;

use crate::agent_client::call_context;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::sandbox::process::Process;
use crate::sandbox::{CALL_TIMEOUT, CREATE_TIMEOUT, Sandbox, monitor};
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
            let mut req = agent::ContainerRequest::new();
            req.container_id = c.id.clone();
            agent
                .service()
                .start_container(call_context(Some(CREATE_TIMEOUT)), &req)
                .await
                .map_err(Error::agent("StartContainer", &c.id))?;
        } else {
            let mut req = agent::ExecProcessRequest::new();
            req.container_id = c.id.clone();
            req.exec_id = p.exec_id.clone();
            req.process_json = p.exec_spec.clone().unwrap_or_default();
            agent
                .service()
                .exec_process(call_context(Some(CREATE_TIMEOUT)), &req)
                .await
                .map_err(Error::agent("ExecProcess", &p.exec_id))?;
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
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = c.id.clone();
        req.exec_id = p.exec_id.clone();
        req.signal = signal;
        req.all = all;
        match agent
            .service()
            .signal_process(call_context(Some(CALL_TIMEOUT)), &req)
            .await
        {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s))
                if is_term_or_kill(signal)
                    && matches!(
                        s.code(),
                        ttrpc::Code::NOT_FOUND | ttrpc::Code::FAILED_PRECONDITION
                    ) =>
            {
                // It exited while the signal was on its way.
                Ok(())
            }
            Err(e) => Err(Error::agent("SignalProcess", p.event_id())(e)),
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
        let mut req = agent::ContainerRequest::new();
        req.container_id = c.id.clone();
        let call = if pause {
            agent
                .service()
                .pause_container(call_context(Some(CALL_TIMEOUT)), &req)
                .await
        } else {
            agent
                .service()
                .resume_container(call_context(Some(CALL_TIMEOUT)), &req)
                .await
        };
        call.map_err(Error::agent(
            if pause {
                "PauseContainer"
            } else {
                "ResumeContainer"
            },
            &c.id,
        ))?;
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
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = c.id.clone();
        req.resources_json = json;
        agent
            .service()
            .update_container(call_context(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(Error::agent("UpdateContainer", &c.id))?;
        Ok(())
    }

    /// The guest's cgroup statistics of a container.
    pub async fn stats(&self, container_id: &str) -> Result<agent::StatsContainerResponse> {
        let c = self.container(container_id)?;
        let agent = self.agent()?;
        let mut req = agent::ContainerRequest::new();
        req.container_id = c.id.clone();
        agent
            .service()
            .stats_container(call_context(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(Error::agent("StatsContainer", &c.id))
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
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = c.id.clone();
        req.exec_id = p.exec_id.clone();
        req.row = height;
        req.column = width;
        agent
            .service()
            .tty_win_resize(call_context(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(Error::agent("TtyWinResize", p.event_id()))?;
        Ok(())
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let c = self.container(container_id)?;
        let p = c.process(exec_id)?;
        p.io.close_stdin().await?;
        Ok(())
    }
}
