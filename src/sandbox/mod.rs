//! The pod as one shim serves it: the VM and its agent, the host cgroup,
//! the containers, and the lifecycle that ties them together. Every Task
//! RPC has its logic in the module of the object it acts on (the map is in
//! ARCHITECTURE.md):
//! - `create`: Create;
//! - `container`: Delete of an init, Pause, Resume, Update, Stats, Pids;
//! - `process`: Start, Exec, Kill, State, Wait, ResizePty, CloseIO and
//!   Delete of an exec;
//! - this module: Connect and Shutdown, and the pod's own lifecycle.
//!
//! - The sandbox container's Create boots the VM (`boot`: sized from the
//!   pod's annotations, placed in the pod's host cgroup) and calls
//!   CreateSandbox; every Create then shares the container's rootfs and
//!   volumes into the sandbox share and asks the agent to create it.
//! - Every process has a watcher that waits for its exit in the guest,
//!   drains its output, releases the init's share mounts, and only then
//!   reports the exit.
//! - A monitor watches QEMU and the agent's health. When either fails the
//!   sandbox is dead: every process exits with 255, the VM is torn down, and
//!   the shim keeps serving until containerd or CRI-O deletes everything and
//!   sends the last Shutdown.
//! - What `delete` needs after a crash is persisted under `/run`.
//!
//! Lock order: `lifecycle` (async, held across VM boot and teardown) before
//! any of the short synchronous locks.

mod boot;
pub mod container;
mod create;
mod monitor;
pub mod namespaces;
pub mod network;
pub mod oom;
pub mod process;
mod resize;
mod scrape;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use tokio::sync::watch;

use crate::agent_client::AgentClient;
use crate::config::Loaded;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink, timestamp};
use crate::guest::SandboxVm;
use crate::host_cgroup::HostCgroup;
use crate::host_cgroup::oom::OomCounter;
use crate::locks::lock;
use crate::persist::{self, ContainerRecord, ProcessRecord};
use crate::sandbox::container::Container;
use crate::sandbox::process::Process;
use crate::state::{Exit, SandboxState};

/// How long an exiting process's output may take to drain into the FIFOs
/// before the exit is reported anyway.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// The same once the VM is gone (nothing more can come).
const DEAD_DRAIN: Duration = Duration::from_secs(1);
/// Exit status of every process of a pod whose VM the host OOM-killed.
const OOM_KILLED_EXIT: u32 = 137;

/// What only VM boot and teardown touch.
#[derive(Default)]
struct Lifecycle {
    vm: Option<SandboxVm>,
    host_cgroup: Option<HostCgroup>,
    processes: Vec<ProcessRecord>,
    /// The taps and tc plumbing made in the pod's network namespace.
    network: Option<crate::network::NetworkRecord>,
}

/// The configuration the serving shim found at start (`KATA_CONF_FILE` or
/// the search paths, with drop-ins), or why it cannot be used.
pub type BaseConfig = std::result::Result<Loaded, String>;

/// One pod.
pub struct Sandbox {
    pub id: String,
    pub namespace: String,
    /// The default for the sandbox's Create; its options may name another.
    base_config: BaseConfig,
    events: Arc<dyn EventSink>,
    lifecycle: tokio::sync::Mutex<Lifecycle>,
    state: Mutex<SandboxState>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    agent: Mutex<Option<AgentClient>>,
    qemu_pid: AtomicU32,
    /// The pod's host cgroup's OOM-kill count from before QEMU started:
    /// how the death of a VM process is told to be the host's OOM kill.
    oom_counter: Mutex<Option<OomCounter>>,
    /// The sandbox container's namespace paths, which app containers name
    /// to share them.
    pod_namespaces: Mutex<namespaces::PodNamespaces>,
    /// Boot phases and agent RPC latencies, served by [`crate::metrics`].
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the management socket reads on a scrape ([`scrape`]).
    scrape_targets: Mutex<scrape::Targets>,
    /// The VM's size as it grows with the containers (`resize`).
    resources: tokio::sync::Mutex<resize::Resources>,
    dead_tx: watch::Sender<bool>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn new(
        id: &str,
        namespace: &str,
        base_config: BaseConfig,
        events: Arc<dyn EventSink>,
    ) -> Arc<Sandbox> {
        Arc::new(Sandbox {
            id: id.to_string(),
            namespace: namespace.to_string(),
            base_config,
            events,
            lifecycle: tokio::sync::Mutex::new(Lifecycle::default()),
            state: Mutex::new(SandboxState::Empty),
            containers: Mutex::new(HashMap::new()),
            agent: Mutex::new(None),
            qemu_pid: AtomicU32::new(0),
            oom_counter: Mutex::new(None),
            pod_namespaces: Mutex::default(),
            metrics: Arc::default(),
            scrape_targets: Mutex::default(),
            resources: tokio::sync::Mutex::default(),
            dead_tx: watch::channel(false).0,
            shutdown_tx: watch::channel(false).0,
        })
    }

    /// QEMU's host pid: the pid of every task of the pod, as Kata reports.
    pub fn pid(&self) -> u32 {
        self.qemu_pid.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> SandboxState {
        lock(&self.state).clone()
    }

    pub fn publish(&self, event: Event) {
        self.events.publish(event);
    }

    /// The agent of a running sandbox.
    pub fn agent(&self) -> Result<AgentClient> {
        let state = self.state();
        if !state.is_running() {
            let why = match &state {
                SandboxState::Dead { reason } => format!(": {reason}"),
                _ => String::new(),
            };
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} is {}{why}",
                self.id,
                state.name()
            )));
        }
        lock(&self.agent)
            .clone()
            .ok_or_else(|| Error::FailedPrecondition(format!("sandbox {} has no agent", self.id)))
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found("container", id))
    }

    pub fn container_count(&self) -> usize {
        lock(&self.containers).len()
    }

    pub fn dead_watch(&self) -> watch::Receiver<bool> {
        self.dead_tx.subscribe()
    }

    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Connect: the shim's and the task's pids, once `container_id` is
    /// known here.
    pub fn connect(&self, container_id: &str) -> Result<(u32, u32)> {
        self.container(container_id)?;
        Ok((std::process::id(), self.pid()))
    }

    /// Shutdown: exits the shim only when no container is left.
    pub fn request_shutdown(&self) -> bool {
        let empty = self.container_count() == 0;
        if empty {
            self.shutdown_tx.send_replace(true);
        }
        empty
    }

    /// Reports `exit` for `p` once its output is drained and, for an init,
    /// the host's share mounts of its container are released.
    pub async fn finish(&self, c: &Container, p: &Process, exit: Exit) {
        if p.state().is_stopped() {
            return;
        }
        let dead = *self.dead_tx.borrow();
        let drain = if dead { DEAD_DRAIN } else { OUTPUT_DRAIN };
        if !p.io.wait_output(drain).await {
            tracing::warn!(sandbox_id = %self.id, container_id = %p.container_id, exec_id = %p.exec_id,
                "output not drained in time; reporting the exit anyway");
            p.io.shutdown().await;
        }
        if p.is_init() {
            if exit.status == 137 && !dead {
                self.note_oom_before_exit(c).await;
            }
            c.release_share();
        }
        if p.record_exit(exit) {
            tracing::info!(sandbox_id = %self.id, container_id = %p.container_id, exec_id = %p.exec_id,
                exit_status = exit.status, "process exited");
            self.publish(Event::Exit(TaskExit {
                container_id: p.container_id.clone(),
                id: p.event_id().to_string(),
                pid: self.pid(),
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            }));
        }
    }

    /// CRI-O reads `<bundle>/oom` right after Wait returns a non-zero exit,
    /// and containerd marks a container OOMKilled only for a `/tasks/oom`
    /// that comes before its `/tasks/exit`; but the guest's OOM event may
    /// arrive a moment after the exit. So a SIGKILLed init is checked
    /// against its cgroup's `oom_kill` count first, and the file or the
    /// event is there before the exit is reported (a second event from the
    /// OOM watcher changes nothing).
    async fn note_oom_before_exit(&self, c: &Container) {
        let Ok(stats) = self.stats(&c.id).await else {
            return;
        };
        let oom_kills = stats
            .memory
            .as_ref()
            .and_then(|m| m.events.get("oom_kill").copied())
            .unwrap_or(0);
        if oom_kills > 0 {
            self.report_oom(c);
        }
    }

    /// Tells the client that `c` was OOM-killed: `<bundle>/oom` for
    /// CRI-O, a `/tasks/oom` event for containerd.
    fn report_oom(&self, c: &Container) {
        if c.crio {
            monitor::write_oom_file(&self.id, c);
        } else {
            self.publish(Event::Oom(TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        }
    }

    /// OOM kills the pod's host cgroup counted since QEMU started; `None`
    /// without a memory cgroup to ask.
    pub fn oom_kills_since_boot(&self) -> Option<u64> {
        let counter = lock(&self.oom_counter).clone()?;
        crate::blocking::run(|| counter.kills_since_baseline())
    }

    /// The VM died or its agent stalled: every process exits with 255 and
    /// the VM is torn down; the shim keeps serving.
    pub async fn die(&self, reason: String) {
        if !lock(&self.state).die(reason.clone()) {
            return;
        }
        tracing::error!(sandbox_id = %self.id, reason = %reason, "sandbox is dead; every container exits with 255");
        self.end_vm().await;
        self.exit_all(crate::state::UNKNOWN_EXIT).await;
    }

    /// The host's OOM killer ended `victim` (QEMU or a helper), so the pod
    /// lost its memory as a container does at its limit: each container is
    /// reported OOM-killed (`<bundle>/oom` for CRI-O, `/tasks/oom` for
    /// containerd, both before the exit) and every process exits with 137,
    /// the status of a SIGKILL, as under runc.
    pub async fn die_oom_killed(&self, reason: String, victim: &str, kills: u64) {
        let reason = format!("{victim} was OOM-killed by the host ({reason})");
        if !lock(&self.state).die(reason.clone()) {
            return;
        }
        tracing::error!(sandbox_id = %self.id, reason = %reason, oom_kills = kills,
            "the VMM was OOM-killed by the host: the pod's host cgroup counted {kills} OOM kill(s) since boot; every container is reported OOM-killed and exits with 137");
        self.end_vm().await;
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        for c in containers.iter().filter(|c| !c.init.state().is_stopped()) {
            tracing::warn!(sandbox_id = %self.id, container_id = %c.id, "container OOM-killed with its VM");
            self.report_oom(c);
        }
        self.exit_all(OOM_KILLED_EXIT).await;
    }

    /// The VM goes first, so that when CRI-O or containerd see the exits
    /// nothing of the VM is left on the host; the share's mounts go before
    /// it, so that its directory can be removed with it.
    async fn end_vm(&self) {
        self.dead_tx.send_replace(true);
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        for c in containers {
            c.release_share();
        }
        let mut lc = self.lifecycle.lock().await;
        self.teardown_vm(&mut lc).await;
        self.persist(&lc);
    }

    /// Every process still running exits with `status`: the pod's own
    /// container last, so that a client that sees the sandbox exit (CRI-O
    /// then stops the pod) finds its other containers exited too; the
    /// others at once, since each may wait [`DEAD_DRAIN`] for its output.
    async fn exit_all(&self, status: u32) {
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        let (own, others): (Vec<_>, Vec<_>) = containers.into_iter().partition(|c| c.id == self.id);
        let finish_all = |c: Arc<Container>| async move {
            for p in c.processes() {
                if !p.state().is_stopped() {
                    self.finish(&c, &p, Exit::now(status)).await;
                }
            }
        };
        futures_util::future::join_all(others.into_iter().map(finish_all)).await;
        for c in own {
            finish_all(c).await;
        }
    }

    /// The last step before the shim exits: nothing of the pod is left.
    pub async fn teardown(&self) {
        lock(&self.state).stop();
        self.dead_tx.send_replace(true);
        self.exit_all(crate::state::UNKNOWN_EXIT).await;
        let containers: Vec<_> = lock(&self.containers).drain().map(|(_, c)| c).collect();
        for c in containers {
            for p in c.processes() {
                p.io.shutdown().await;
            }
            c.release_all();
        }
        let mut lc = self.lifecycle.lock().await;
        self.teardown_vm(&mut lc).await;
        let paths = crate::layout::SandboxPaths::new(&self.id);
        crate::storage::release_share(&paths.share_dir);
        crate::layout::remove_sandbox_dirs(&self.id, &paths);
        if let Some(cg) = lc.host_cgroup.take() {
            // Waits up to seconds for QEMU's last threads to leave.
            crate::blocking::run(|| cg.remove());
        }
        persist::remove(&self.id);
        tracing::info!(sandbox_id = %self.id, "sandbox torn down");
    }

    /// Writes what `delete` needs after a crash; a failure is logged, not
    /// fatal (the pod keeps working, only crash cleanup would be partial).
    fn persist(&self, lc: &Lifecycle) {
        let mut s = persist::SandboxRecord::new(&self.id);
        s.shim = ProcessRecord::capture("shim", std::process::id());
        s.processes = lc.processes.clone();
        s.network = lc.network.clone();
        s.host_cgroups = lc
            .host_cgroup
            .as_ref()
            .map(HostCgroup::created_dirs)
            .unwrap_or_default();
        s.containers = lock(&self.containers)
            .values()
            .map(|c| {
                (
                    c.id.clone(),
                    ContainerRecord {
                        bundle: c.bundle.clone(),
                        rootfs_mounted: c.rootfs_mounted(),
                    },
                )
            })
            .collect();
        // An fsync: off the async workers.
        if let Err(e) = crate::blocking::run(|| s.save()) {
            tracing::warn!(sandbox_id = %self.id, error = %crate::logging::error_chain(&e), "cannot persist the sandbox state");
        }
    }
}
