//! The pod as one shim serves it: the VM and its agent, the host cgroup,
//! the containers, and the lifecycle that ties them together.
//!
//! - The sandbox container's Create boots the VM (sized from the pod's
//!   annotations, placed in the pod's host cgroup) and calls CreateSandbox;
//!   every Create then shares the container's rootfs and volumes into the
//!   sandbox share and asks the agent to create it.
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

pub mod container;
mod monitor;
pub mod namespaces;
pub mod network;
pub mod ops;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM};
use tokio::sync::watch;

use crate::agent_client::AgentClient;
use crate::annotations::{self, ContainerKind};
use crate::config::{Config, Loaded, options, overrides};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink, timestamp};
use crate::guest::SandboxVm;
use crate::host_cgroup::HostCgroup;
use crate::persist::{self, ContainerRecord, ProcessRecord};
use crate::sandbox::container::Container;
use crate::sandbox::process::Process;
use crate::sizing::{self, HostSize};
use crate::state::{Exit, SandboxState};
use crate::stdio::{ProcessIo, StdioConfig};
use crate::vm::VmOptions;

/// How long an exiting process's output may take to drain into the FIFOs
/// before the exit is reported anyway.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// The same once the VM is gone (nothing more can come).
const DEAD_DRAIN: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each guarded value is replaced whole, so a poisoned lock still holds
    // a consistent value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    /// The sandbox container's namespace paths, which app containers name
    /// to share them.
    pod_namespaces: Mutex<namespaces::PodNamespaces>,
    /// Boot phases and agent RPC latencies, served by [`crate::metrics`].
    pub metrics: Arc<crate::metrics::Metrics>,
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
            pod_namespaces: Mutex::default(),
            metrics: Arc::default(),
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

    /// The Prometheus text of this sandbox, read now.
    pub fn metrics_text(&self) -> String {
        let pid = self.pid();
        let (qemu_rss, qemu_private) = if pid != 0 && self.state().is_running() {
            crate::metrics::qemu_memory(pid)
        } else {
            (None, None)
        };
        let live = crate::metrics::Live {
            containers: self.container_count(),
            qemu_rss,
            qemu_private,
        };
        crate::metrics::render(&self.id, &self.metrics, &live)
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

    /// Shutdown: exits the shim only when no container is left.
    pub fn request_shutdown(&self) -> bool {
        let empty = self.container_count() == 0;
        if empty {
            self.shutdown_tx.send_replace(true);
        }
        empty
    }

    /// Create: boots the VM for the sandbox container, then creates the
    /// container in the guest. Returns the task pid.
    pub async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<u32> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument {
                field: "bundle",
                reason: format!("{} is not an absolute path", req.bundle),
            });
        }
        crate::ids::validate(&req.id).map_err(|e| Error::InvalidArgument {
            field: "id",
            reason: e.to_string(),
        })?;
        let spec = read_spec(&bundle)?;
        let annotations = annotations::spec_annotations(&spec);
        let identity = annotations::identity(&req.id, &annotations)?;
        if identity.sandbox_id != self.id {
            return Err(Error::InvalidArgument {
                field: "id",
                reason: format!(
                    "container {} belongs to sandbox {}, this shim serves sandbox {}",
                    req.id, identity.sandbox_id, self.id
                ),
            });
        }
        if lock(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists {
                what: "container",
                id: req.id.clone(),
            });
        }
        let is_sandbox = matches!(identity.kind, ContainerKind::Sandbox);
        // Chosen before anything is created, so a refusal changes nothing.
        let config = if is_sandbox {
            let netns = network::pod_netns(&spec, &annotations)?;
            *lock(&self.pod_namespaces) = namespaces::of_sandbox(&spec)?;
            Some((self.sandbox_config(req, &annotations)?, netns))
        } else {
            None
        };
        let sandbox_namespaces = if is_sandbox {
            Vec::new()
        } else {
            namespaces::app_joins(&spec, &lock(&self.pod_namespaces), self.pid())?
        };

        let io = ProcessIo::new(
            StdioConfig {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            &req.id,
            "",
            &self.namespace,
        )?;
        let mut lc = self.lifecycle.lock().await;
        if let Some((config, netns)) = &config {
            self.boot(&mut lc, &spec, &annotations, config, netns)
                .await?;
        }
        let agent = self.agent()?;
        let share_dir = crate::layout::SandboxPaths::new(&self.id).share_dir;
        let prepared = crate::storage::prepare_container(
            &share_dir,
            &self.id,
            &req.id,
            &bundle,
            spec,
            &req.rootfs,
        )?;
        let mut mounts = prepared.mounts;
        if let Err(e) = agent
            .create_container(&req.id, prepared.guest_spec_json, sandbox_namespaces)
            .await
        {
            mounts.release_share();
            mounts.release_bundle_rootfs();
            return Err(Error::agent(&req.id)(e));
        }
        let terminal = req.terminal;
        let init = Arc::new(Process::new(&req.id, "", io, terminal, None));
        init.io.start(Arc::new(agent));
        let c = Arc::new(Container::new(
            &req.id,
            bundle,
            is_sandbox,
            annotations::is_crio(&annotations),
            init,
            mounts,
        ));
        lock(&self.containers).insert(req.id.clone(), c);
        self.persist(&lc);
        drop(lc);
        tracing::info!(sandbox_id = %self.id, container_id = %req.id, "container created");
        self.publish(Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.to_vec(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: self.pid(),
            ..Default::default()
        }));
        Ok(self.pid())
    }

    /// The sandbox's configuration: the file its Create options name
    /// (`runtimeoptions.v1.Options.config_path`, with that file's drop-ins),
    /// else the serving shim's, then its `io.katacontainers.config.*`
    /// annotations as far as the configuration allows them.
    fn sandbox_config(
        &self,
        req: &CreateTaskRequest,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Config> {
        let named = match req.options.as_ref() {
            Some(any) => {
                options::decode(&any.type_url, &any.value).map_err(|e| Error::InvalidArgument {
                    field: "options",
                    reason: format!("cannot decode {}: {e}", any.type_url),
                })?
            }
            None => None,
        };
        if let Some(o) = named.as_ref().filter(|o| o.config_path.is_empty()) {
            if !o.config_body.is_empty() {
                tracing::warn!(sandbox_id = %self.id,
                    "options.config_body is not supported; using the default configuration");
            }
        }
        let loaded = match named.and_then(|o| o.config_path()) {
            Some(path) => {
                if !path.is_absolute() {
                    return Err(Error::InvalidArgument {
                        field: "options.config_path",
                        reason: format!("{} is not an absolute path", path.display()),
                    });
                }
                Config::load_file(&path).map_err(|e| Error::InvalidArgument {
                    field: "options.config_path",
                    reason: crate::logging::error_chain(&e),
                })?
            }
            None => match &self.base_config {
                Ok(loaded) => loaded.clone(),
                Err(e) => {
                    return Err(Error::FailedPrecondition(format!(
                        "the kata configuration cannot be used: {e}"
                    )));
                }
            },
        };
        let (config, applied) =
            overrides::apply(&loaded.config, annotations).map_err(|e| Error::InvalidArgument {
                field: "annotations",
                reason: e.to_string(),
            })?;
        tracing::info!(sandbox_id = %self.id, config = %loaded.describe(),
            annotations = ?applied, "sandbox configuration chosen");
        Ok(config)
    }

    /// Boots the VM and creates the sandbox in the guest.
    async fn boot(
        self: &Arc<Self>,
        lc: &mut Lifecycle,
        spec: &serde_json::Value,
        annotations: &BTreeMap<String, String>,
        config: &Config,
        netns: &network::PodNetns,
    ) -> Result<()> {
        lock(&self.state).begin_boot()?;
        match self.boot_inner(lc, spec, annotations, config, netns).await {
            Ok(()) => {
                lock(&self.state).booted()?;
                monitor::spawn(self.clone(), lc);
                Ok(())
            }
            Err(e) => {
                tracing::error!(sandbox_id = %self.id, error = %crate::logging::error_chain(&e), "sandbox creation failed");
                self.teardown_vm(lc).await;
                lock(&self.state).stop();
                Err(e)
            }
        }
    }

    async fn boot_inner(
        self: &Arc<Self>,
        lc: &mut Lifecycle,
        spec: &serde_json::Value,
        annotations: &BTreeMap<String, String>,
        config: &Config,
        netns: &network::PodNetns,
    ) -> Result<()> {
        let (size, warnings) =
            sizing::vm_size(annotations, &config.hypervisor.qemu, &HostSize::probe())?;
        for w in warnings {
            tracing::warn!(sandbox_id = %self.id, "{w}");
        }
        let cgroups_path = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let mut opts = VmOptions {
            vcpus: Some(size.vcpus),
            memory_mib: Some(size.memory_mib),
            ..VmOptions::default()
        };
        if let Some(mut cg) = HostCgroup::for_sandbox(cgroups_path, &self.id)? {
            let created = cg.create();
            // Record before checking, so a partial create is undone too.
            lc.host_cgroup = Some(cg);
            created?;
            if let Some(cg) = &lc.host_cgroup {
                opts.cgroup_procs = cg.procs_files()?;
            }
        }
        let pod_network = match netns {
            network::PodNetns::Path(path) => {
                // QEMU joins the netns through this fd (setns before exec);
                // a path that is not there is the spec's error, named so.
                let file = std::fs::File::open(path).map_err(|e| Error::InvalidArgument {
                    field: "linux.namespaces",
                    reason: match e.kind() {
                        std::io::ErrorKind::NotFound => {
                            format!("the network namespace {} does not exist", path.display())
                        }
                        _ => format!("cannot open the network namespace {}: {e}", path.display()),
                    },
                })?;
                let (net, nics) = network::attach(&self.id, path).await?;
                lc.network = Some(net.record());
                opts.nics = nics;
                opts.netns = Some(file);
                Some(net)
            }
            network::PodNetns::Private => {
                tracing::info!(sandbox_id = %self.id, "the pod has a network namespace of its own without interfaces; the guest gets only lo");
                None
            }
        };
        self.persist(lc);
        tracing::info!(sandbox_id = %self.id, vcpus = size.vcpus, memory_mib = size.memory_mib,
            cgroup = cgroups_path, "booting the sandbox VM");
        let began = std::time::Instant::now();
        let vm = SandboxVm::boot_with(config, &self.id, &opts).await?;
        self.metrics.guest_memory_mib(size.memory_mib);
        self.metrics.boot_phase("vm_spawn", vm.vm.spawn_duration);
        self.metrics.boot_phase("agent_ready", vm.agent_ready);
        self.qemu_pid.store(vm.vm.pid(), Ordering::Relaxed);
        lc.processes = vm
            .vm
            .process_pids()
            .into_iter()
            .filter_map(|(name, pid)| ProcessRecord::capture(name, pid))
            .collect();
        let agent = vm.agent.clone().with_metrics(self.metrics.clone());
        lc.vm = Some(vm);
        *lock(&self.agent) = Some(agent.clone());
        self.persist(lc);
        // The VM holds the taps now; the shim's copies are closed so that
        // each tap goes away with QEMU.
        drop(opts);
        if let Some(net) = &pod_network {
            let began = std::time::Instant::now();
            network::configure_guest(&self.id, &agent, net).await?;
            self.metrics.boot_phase("network", began.elapsed());
        }

        let hostname = spec
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default();
        let created = std::time::Instant::now();
        agent
            .create_sandbox(&self.id, hostname)
            .await
            .map_err(Error::agent(&self.id))?;
        self.metrics.boot_phase("create_sandbox", created.elapsed());
        self.metrics.boot_phase("total", began.elapsed());
        Ok(())
    }

    /// Stops the VM and its helpers (the share's mounts go with it).
    async fn teardown_vm(&self, lc: &mut Lifecycle) {
        *lock(&self.agent) = None;
        if let Some(vm) = lc.vm.take() {
            let alive = vm.vm.exit_status().is_none() && !*self.dead_tx.borrow();
            let report = if alive {
                vm.shutdown().await
            } else {
                vm.vm.kill().await
            };
            tracing::info!(sandbox_id = %self.id, how = report.how, ms = report.duration.as_millis() as u64, "VM stopped");
        }
        lc.processes.clear();
        if let Some(record) = lc.network.take() {
            let sid = self.id.clone();
            // The taps went with QEMU; what is left is the tc plumbing on
            // CNI's veths (or nothing, if CNI already removed them).
            if let Err(e) =
                tokio::task::spawn_blocking(move || crate::network::detach(&record)).await
            {
                tracing::warn!(sandbox_id = %sid, error = %e, "the network detach thread failed");
            }
        }
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
        if oom_kills == 0 {
            return;
        }
        if c.crio {
            monitor::write_oom_file(&self.id, c);
        } else {
            self.publish(Event::Oom(TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        }
    }

    /// The VM died or its agent stalled: every process exits with 255 and
    /// the VM is torn down; the shim keeps serving.
    pub async fn die(&self, reason: String) {
        if !lock(&self.state).die(reason.clone()) {
            return;
        }
        tracing::error!(sandbox_id = %self.id, reason = %reason, "sandbox is dead; every container exits with 255");
        self.dead_tx.send_replace(true);
        // The VM goes first, so that when CRI-O or containerd see the
        // exits nothing of the VM is left on the host; the share's mounts
        // go before it, so that its directory can be removed with it.
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        for c in containers {
            c.release_share();
        }
        let mut lc = self.lifecycle.lock().await;
        self.teardown_vm(&mut lc).await;
        self.persist(&lc);
        drop(lc);
        self.exit_all().await;
    }

    async fn exit_all(&self) {
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        for c in containers {
            for p in c.processes() {
                if !p.state().is_stopped() {
                    self.finish(&c, &p, Exit::now(crate::state::UNKNOWN_EXIT))
                        .await;
                }
            }
        }
    }

    /// Delete of a container's init: releases everything of the container;
    /// deleting the sandbox container ends the VM.
    pub async fn delete_container(&self, c: &Arc<Container>) -> Result<Exit> {
        c.init.state().check_delete()?;
        let exit = c.init.state().exit_info().unwrap_or_else(|| Exit::now(137));
        if let Ok(agent) = self.agent() {
            match agent.remove_container(&c.id).await {
                Ok(()) => {}
                Err(e) if e.status() == Some(ttrpc::Code::NOT_FOUND) => {}
                Err(e) => return Err(Error::agent(&c.id)(e)),
            }
        }
        // An init deleted before it started never exited: it is now.
        if !c.init.state().is_stopped() {
            c.init.record_exit(exit);
        }
        for p in c.processes() {
            p.io.shutdown().await;
        }
        c.release_all();
        let mut lc = self.lifecycle.lock().await;
        lock(&self.containers).remove(&c.id);
        if c.is_sandbox {
            lock(&self.state).stop();
            self.dead_tx.send_replace(true);
            self.exit_all().await;
            self.teardown_vm(&mut lc).await;
        }
        self.persist(&lc);
        drop(lc);
        tracing::info!(sandbox_id = %self.id, container_id = %c.id, "container deleted");
        self.publish(Event::Delete(TaskDelete {
            container_id: c.id.clone(),
            pid: self.pid(),
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            id: c.id.clone(),
            ..Default::default()
        }));
        Ok(exit)
    }

    /// The last step before the shim exits: nothing of the pod is left.
    pub async fn teardown(&self) {
        lock(&self.state).stop();
        self.dead_tx.send_replace(true);
        self.exit_all().await;
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
            cg.remove();
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
        if let Err(e) = s.save() {
            tracing::warn!(sandbox_id = %self.id, error = %crate::logging::error_chain(&e), "cannot persist the sandbox state");
        }
    }
}

/// Reads `<bundle>/config.json`.
fn read_spec(bundle: &std::path::Path) -> Result<serde_json::Value> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::InvalidArgument {
        field: "bundle",
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Error::InvalidArgument {
            field: "config.json",
            reason: format!("{} is not valid JSON: {e}", path.display()),
        })?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument {
            field: "config.json",
            reason: format!("{} is not a JSON object", path.display()),
        });
    }
    Ok(spec)
}
