//! Host-side stdio of one container process (init or exec): validating the
//! stdin/stdout/stderr strings of Create/Exec, and bridging them to the
//! agent's streams (ReadStdout/ReadStderr/WriteStdin/CloseStdin) once the
//! process exists in the guest.
//!
//! # Use
//!
//! ```ignore
//! let io = ProcessIo::new(cfg, container_id, exec_id, namespace)?; // Create/Exec: never blocks
//! // after the agent's CreateContainer/ExecProcess:
//! io.start(agent);
//! // exit path, before the exit is reported (CRI-O reads exec output right after Wait):
//! io.wait_output(grace).await;
//! // CloseIO{stdin}: io.close_stdin().await?;  Delete or dead sandbox: io.shutdown().await;
//! ```
//!
//! # Tasks
//!
//! [`ProcessIo::start`] spawns one task for the output (it sets up the
//! destinations, then copies stdout and stderr concurrently) and, when
//! stdin is connected, one for stdin. They own every fd they open, so
//! aborting them closes those fds. A `binary://` logger is recorded in the
//! [`ProcessIo`] as soon as it is spawned, so [`ProcessIo::shutdown`] reaps
//! it whatever state the tasks were in.
//!
//! SIGPIPE must be ignored in the process (the daemon does, and so does
//! every Rust binary by default): a FIFO reader that goes away shows up as
//! EPIPE, which discards output instead of killing the shim.

mod copy;
mod logger;
#[cfg(test)]
mod tests;
mod uri;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent_client::{AgentClient, AgentError};
use crate::locks::lock;
use copy::{Dest, Stream};
use logger::Logger;
use uri::{OutputPlan, Plan};

/// The stdio strings of a Create or Exec request, kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Errors of the stdio bridge.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("invalid {stream} {value:?}: {reason}")]
    Invalid {
        stream: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("agent request for container {container_id} exec {exec_id:?}")]
    Agent {
        container_id: String,
        exec_id: String,
        // Boxed: a ttrpc status is large and this error travels in
        // every Result of the module.
        #[source]
        source: Box<AgentError>,
    },
    #[error(
        "the shim has {open} of its {limit} file descriptors open, and a process's output needs up to {FD_HEADROOM} more"
    )]
    NoDescriptors {
        open: u64,
        limit: u64,
        #[source]
        source: std::io::Error,
    },
}

impl StdioError {
    pub fn code(&self) -> ttrpc::Code {
        match self {
            StdioError::Invalid { .. } => ttrpc::Code::INVALID_ARGUMENT,
            StdioError::Agent { source, .. } => source.code(),
            StdioError::NoDescriptors { .. } => ttrpc::Code::RESOURCE_EXHAUSTED,
        }
    }
}

/// File descriptors a new process's output may take in the shim (its
/// FIFOs, a log file, the copies' pipes) with room to spare for the
/// connections the shim must still accept.
pub const FD_HEADROOM: u64 = 16;

/// Refuses a new process while the shim is short of file descriptors: its
/// output FIFOs are opened after the process starts, and one that cannot
/// be opened would lose the output silently.
pub fn ensure_fd_headroom() -> Result<(), StdioError> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) only writes the struct it is given, which lives
    // for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Ok(());
    }
    let limit = rl.rlim_cur;
    // Counting needs one descriptor of its own: a shim without even that
    // is out.
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.count() as u64,
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => limit,
        Err(_) => return Ok(()),
    };
    if open.saturating_add(FD_HEADROOM) > limit {
        return Err(StdioError::NoDescriptors {
            open,
            limit,
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        });
    }
    Ok(())
}

/// The agent's stream calls: the seam between the copies and the guest.
#[async_trait::async_trait]
pub trait AgentStreams: Send + Sync + 'static {
    /// Blocks until at least one byte; empty = EOF.
    async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>, AgentError>;
    /// Like `read_stdout`; EOF at once for a terminal.
    async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>, AgentError>;
    /// Returns how many bytes the process's stdin took (fewer than given
    /// only if it was closed meanwhile).
    async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<u32, AgentError>;
    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError>;
}

#[async_trait::async_trait]
impl AgentStreams for AgentClient {
    async fn read_stdout(&self, cid: &str, eid: &str, len: u32) -> Result<Vec<u8>, AgentError> {
        AgentClient::read_stdout(self, cid, eid, len).await
    }

    async fn read_stderr(&self, cid: &str, eid: &str, len: u32) -> Result<Vec<u8>, AgentError> {
        AgentClient::read_stderr(self, cid, eid, len).await
    }

    async fn write_stdin(&self, cid: &str, eid: &str, data: Vec<u8>) -> Result<u32, AgentError> {
        AgentClient::write_stdin(self, cid, eid, data).await
    }

    async fn close_stdin(&self, cid: &str, eid: &str) -> Result<(), AgentError> {
        AgentClient::close_stdin(self, cid, eid).await
    }
}

/// Which process the streams belong to.
#[derive(Debug)]
pub(crate) struct Ids {
    pub container_id: String,
    pub exec_id: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputState {
    Pending,
    /// Both copies ended; `complete` = EOF from the agent on both and every
    /// byte written.
    Done {
        complete: bool,
    },
    /// Stopped by shutdown.
    Aborted,
}

#[derive(Debug, Clone)]
enum StdinState {
    Pending,
    /// The copy ended and the agent was asked to close stdin.
    Closed(Result<(), AgentError>),
    Aborted,
}

/// What the copy tasks share with the [`ProcessIo`].
#[derive(Debug)]
struct Shared {
    ids: Ids,
    output: watch::Sender<OutputState>,
    stdin: watch::Sender<StdinState>,
    close_requested: watch::Sender<bool>,
    logger: Mutex<Option<Logger>>,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Started(Vec<JoinHandle<()>>),
    ShutDown,
}

/// The host side of one process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    cfg: StdioConfig,
    plan: Plan,
    shared: Arc<Shared>,
    phase: Mutex<Phase>,
}

impl ProcessIo {
    /// Validates the three strings; never blocks and touches nothing on
    /// disk. `""` = not connected. A plain path = FIFO (must be absolute).
    /// `binary:///abs/path?k=v&...` = containerd's binary logger;
    /// `file:///abs/path` = append both output streams to a file. Errors
    /// are INVALID_ARGUMENT naming stdin/stdout/stderr. With a terminal
    /// the stderr value is ignored (containerd and CRI-O pass one anyway).
    pub fn new(
        cfg: StdioConfig,
        container_id: &str,
        exec_id: &str,
        namespace: &str,
    ) -> Result<ProcessIo, StdioError> {
        let plan = uri::plan(&cfg)?;
        Ok(ProcessIo {
            cfg,
            plan,
            shared: Arc::new(Shared {
                ids: Ids {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                    namespace: namespace.to_string(),
                },
                output: watch::channel(OutputState::Pending).0,
                stdin: watch::channel(StdinState::Pending).0,
                close_requested: watch::channel(false).0,
                logger: Mutex::new(None),
            }),
            phase: Mutex::new(Phase::Idle),
        })
    }

    /// Starts the copies once the process exists in the guest (after the
    /// agent's CreateContainer/ExecProcess, before start). Never blocks:
    /// FIFOs are opened in the background, and output waits for a reader
    /// that has not opened its end yet. Only the first call does anything,
    /// and none after [`ProcessIo::shutdown`]. Must run inside the tokio
    /// runtime.
    pub fn start(&self, agent: Arc<dyn AgentStreams>) {
        let ids = &self.shared.ids;
        let mut phase = lock(&self.phase);
        if !matches!(*phase, Phase::Idle) {
            tracing::debug!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                "stdio already started or shut down"
            );
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                "stdio started outside the tokio runtime, nothing is copied"
            );
            return;
        };
        let mut tasks = vec![rt.spawn(run_output(
            self.shared.clone(),
            agent.clone(),
            self.plan.output.clone(),
            self.cfg.terminal,
        ))];
        if let Some(path) = self.plan.stdin.clone() {
            let shared = self.shared.clone();
            tasks.push(rt.spawn(async move {
                let close_rx = shared.close_requested.subscribe();
                let result = copy::copy_stdin(&*agent, &shared.ids, &path, close_rx).await;
                shared.stdin.send_replace(StdinState::Closed(result));
            }));
        } else {
            // No stdin: the guest process must see EOF at once, as with
            // /dev/null under runc (the agent always gives it a pipe).
            let shared = self.shared.clone();
            tasks.push(rt.spawn(async move {
                let (cid, eid) = (&shared.ids.container_id, &shared.ids.exec_id);
                let result = agent.close_stdin(cid, eid).await;
                if let Err(e) = &result {
                    tracing::warn!(container_id = %cid, exec_id = %eid, error = %e, "closing the unused stdin failed");
                }
                shared.stdin.send_replace(StdinState::Closed(result));
            }));
        }
        *phase = Phase::Started(tasks);
    }

    /// True once the stdout and stderr copies reached EOF from the agent,
    /// every byte went into the FIFO/file/logger and the write ends were
    /// closed (so readers see EOF). False if `timeout` passed first, or at
    /// once if the copies already ended otherwise (agent error, shutdown).
    /// The exit path awaits this before it reports the exit: CRI-O reads
    /// exec output right after Wait.
    pub async fn wait_output(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.output.subscribe();
        let state = match tokio::time::timeout(timeout, rx.wait_for(|s| *s != OutputState::Pending))
            .await
        {
            Ok(Ok(s)) => *s,
            Ok(Err(_)) | Err(_) => OutputState::Pending,
        };
        state == OutputState::Done { complete: true }
    }

    /// CloseIO{stdin}: forwards what was already written to the stdin
    /// FIFO, then closes the process's stdin in the agent. Idempotent; a
    /// no-op without stdin; before [`ProcessIo::start`] the close happens
    /// right after the copy starts.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        if self.plan.stdin.is_none() {
            return Ok(());
        }
        self.shared.close_requested.send_replace(true);
        if !matches!(*lock(&self.phase), Phase::Started(_)) {
            return Ok(());
        }
        let mut rx = self.shared.stdin.subscribe();
        let state = match rx.wait_for(|s| !matches!(s, StdinState::Pending)).await {
            Ok(s) => s.clone(),
            Err(_) => StdinState::Aborted,
        };
        match state {
            StdinState::Closed(Err(source)) => Err(StdioError::Agent {
                container_id: self.shared.ids.container_id.clone(),
                exec_id: self.shared.ids.exec_id.clone(),
                source: Box::new(source),
            }),
            StdinState::Closed(Ok(())) | StdinState::Aborted | StdinState::Pending => Ok(()),
        }
    }

    /// Stops every copy, closes every fd, stops and reaps a binary logger.
    /// Idempotent. Used at Delete and when the sandbox died.
    pub async fn shutdown(&self) {
        let previous = std::mem::replace(&mut *lock(&self.phase), Phase::ShutDown);
        let tasks = match previous {
            Phase::Started(tasks) => tasks,
            Phase::Idle | Phase::ShutDown => Vec::new(),
        };
        for t in &tasks {
            t.abort();
        }
        // A task's fds are closed once its future is dropped, which the
        // join observes.
        for t in tasks {
            let _ = t.await;
        }
        self.shared.output.send_if_modified(|s| {
            let pending = *s == OutputState::Pending;
            if pending {
                *s = OutputState::Aborted;
            }
            pending
        });
        self.shared.stdin.send_if_modified(|s| {
            let pending = matches!(s, StdinState::Pending);
            if pending {
                *s = StdinState::Aborted;
            }
            pending
        });
        let logger = lock(&self.shared.logger).take();
        if let Some(logger) = logger {
            logger.stop().await;
        }
    }

    /// The original strings, for State (CRI-O re-creates its IO from them
    /// after a restart).
    pub fn config(&self) -> &StdioConfig {
        &self.cfg
    }

    #[cfg(test)]
    fn logger_pid(&self) -> Option<u32> {
        lock(&self.shared.logger).as_ref().and_then(Logger::pid)
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        // Without a shutdown the tasks would outlive their owner; the
        // logger is killed when the last reference to it goes.
        if let Phase::Started(tasks) = &*lock(&self.phase) {
            for t in tasks {
                t.abort();
            }
        }
    }
}

async fn run_output(
    shared: Arc<Shared>,
    agent: Arc<dyn AgentStreams>,
    output: OutputPlan,
    terminal: bool,
) {
    let ids = &shared.ids;
    let (out, err) = match output {
        OutputPlan::Fifos { stdout, stderr } => (
            stdout.map_or(Dest::Discard, Dest::Fifo),
            stderr.map_or(Dest::Discard, Dest::Fifo),
        ),
        OutputPlan::File(path) if terminal => (Dest::File(path), Dest::Discard),
        OutputPlan::File(path) => (Dest::File(path.clone()), Dest::File(path)),
        OutputPlan::Binary(cmd) => match Logger::spawn(&cmd, &ids.container_id, &ids.namespace) {
            Ok((child, pipes)) => {
                tracing::debug!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    pid = child.pid(),
                    path = %cmd.path.display(),
                    "logging binary started"
                );
                *lock(&shared.logger) = Some(child);
                if !logger::wait_ready(pipes.ready).await {
                    tracing::warn!(
                        container_id = %ids.container_id,
                        exec_id = %ids.exec_id,
                        path = %cmd.path.display(),
                        "logging binary did not report ready, writing to it anyway"
                    );
                }
                (Dest::Pipe(pipes.stdout), Dest::Pipe(pipes.stderr))
            }
            Err(e) => {
                tracing::error!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    path = %cmd.path.display(),
                    error = %e,
                    "starting the logging binary failed, output is discarded"
                );
                (Dest::Discard, Dest::Discard)
            }
        },
    };
    let (stdout_done, stderr_done) = tokio::join!(
        copy::copy_output(&*agent, ids, Stream::Stdout, out),
        copy::copy_output(&*agent, ids, Stream::Stderr, err),
    );
    shared.output.send_replace(OutputState::Done {
        complete: stdout_done && stderr_done,
    });
}
