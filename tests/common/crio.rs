//! A CRI-O protocol driver for the shim binary: it lays bundles out like
//! CRI-O's runroot, starts `containerd-shim-kata-v2 ... start` with CRI-O's
//! exact argv, cwd and environment, keeps one ttrpc connection per container,
//! hands the shim stdio FIFOs opened the way containerd's `cio` opens them,
//! and replays CRI-O 1.32's call sequences (`runtime_vm.go`) over raw
//! `containerd.task.v2.Task` requests. Facts: `reference/cri-o-1.32-observed.md`
//! and `reference/shim-v2-cri-o-containerd.md` section 2.1.

mod cleanup;
mod io;
mod ops;
mod rpc;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::api;
use protobuf::Message;
use serde_json::Value;
use ttrpc::asynchronous::Client;

use super::*;
use cleanup::{make_cgroup_dirs, pod_cgroup_dirs, users_of};
pub use io::{Drain, ExecIo, WaitOutcome, Waiter};
pub use ops::StopReport;
pub use rpc::*;
pub use spec::{PodInfo, container_spec, infra_spec};

/// CRI-O's `container_create_timeout` default: the only deadline it sends.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(240);
/// CRI-O's `killContainerTimeout` after SIGKILL.
pub const KILL_CONTAINER_TIMEOUT: Duration = Duration::from_secs(120);
/// The stop timeout CRI-O uses for StopPodSandbox.
pub const POD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// CRI-O has no other deadline; the driver bounds calls so a hung shim
/// fails the test instead of hanging it.
const CALL_LIMIT: Duration = Duration::from_secs(60);
const START_LIMIT: Duration = Duration::from_secs(120);
const SIGKILL: u32 = 9;
const SIGTERM: u32 = 15;

/// A pod as the test asks for it.
#[derive(Debug, Clone, Default)]
pub struct PodConfig {
    pub name: String,
    /// `io.kubernetes.cri-o.PodLinuxResources`, e.g.
    /// `{"cpu_period":100000,"cpu_quota":200000,"memory_limit_in_bytes":536870912}`.
    pub resources: Option<Value>,
    pub annotations: BTreeMap<String, String>,
    /// What CNI puts into the pod's network namespace before the sandbox
    /// is created.
    pub network: PodNetwork,
    /// CRI's pid NamespaceMode CONTAINER: each container has its own pid
    /// namespace. The default (false) is POD, crictl's default.
    pub private_pid: bool,
}

/// The pod network the driver plays CNI for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodNetwork {
    /// A veth pair: `eth0` in the pod (10.213.0.2/24, default route via
    /// 10.213.0.1), its peer `kv<hex>` on the host, as the bridge plugin
    /// makes it (without the bridge).
    #[default]
    Veth,
    /// Only `lo`: a CNI that configured nothing.
    LoopbackOnly,
    /// The spec names a network namespace that does not exist.
    Missing,
    /// `eth0` as for `Veth`, plus `eth1` (10.214.0.2/24) whose tap cannot
    /// be made: a link named `tap1_kata` is already in the namespace.
    SecondBroken,
    /// `hostNetwork: true`: no network namespace, as CRI-O writes it.
    Host,
}

impl PodConfig {
    pub fn new(name: &str) -> PodConfig {
        PodConfig {
            name: name.to_string(),
            ..PodConfig::default()
        }
    }
}

/// A container bundle ready for Create; tests may edit `spec`, the bundle
/// and `rootfs_mounts` first.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: String,
    pub sandbox_id: String,
    pub bundle: PathBuf,
    /// The mounted root (`spec.root.path` as CRI-O writes it).
    pub rootfs: PathBuf,
    pub spec: Value,
    pub rootfs_mounts: Vec<api::Mount>,
    pub tty: bool,
    pub stdin: bool,
    /// Both output streams to this `file://` or `binary://` URI instead
    /// of FIFOs (containerd's `--log-uri`).
    pub log_uri: Option<String>,
}

impl Prepared {
    /// CRI-O's memory shape for a limit: `swap` equal to the limit (no swap).
    pub fn with_memory_limit(&mut self, bytes: i64) {
        self.spec["linux"]["resources"]["memory"] =
            serde_json::json!({"limit": bytes, "swap": bytes});
    }
}

/// ExecSync's answer.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exec_id: String,
    /// -1 on a timeout, as CRI-O reports it.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl ExecResult {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

struct Ctr {
    sandbox_id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    rootfs_mounted: bool,
    client: Client,
    process: Value,
    tty: bool,
    io: Option<ExecIo>,
    init_wait: Option<Waiter>,
    create_pid: u32,
}

struct Pod {
    info: PodInfo,
    netns_name: String,
    /// The host sides of the pod's veths.
    host_veths: Vec<String>,
    apps: Vec<String>,
    /// Every rootfs handed to the shim for this pod, for the leak check.
    rootfs: Vec<PathBuf>,
    stopped: bool,
}

/// One CRI-O instance: its runroot, graphroot and runtime_root live in a
/// private directory; it tears everything down on drop.
pub struct Crio {
    pub rt: tokio::runtime::Runtime,
    pub dir: PathBuf,
    pub kata_config: PathBuf,
    /// This driver's top-level host cgroup, holding its pods' cgroups.
    cgroup_root: String,
    pods: BTreeMap<String, Pod>,
    ctrs: BTreeMap<String, Ctr>,
    /// The bundles' `log` FIFO readers; CRI-O keeps them for good.
    logs: Vec<Drain>,
    /// The Create `options` of every Create, as CRI-O sends its
    /// `runtime_config_path` (`Any(runtimeoptions.v1.Options)`).
    pub create_options: Option<protobuf::well_known_types::any::Any>,
}

impl Crio {
    pub fn new(test: &str) -> Crio {
        Crio::with_config(test, "")
    }

    /// A driver whose shim configuration has `qemu_extra` lines in
    /// `[hypervisor.qemu]`.
    pub fn with_config(test: &str, qemu_extra: &str) -> Crio {
        Crio::with_configs(test, qemu_extra, "")
    }

    /// [`Crio::with_config`], also with `agent_extra` lines in
    /// `[agent.kata]`.
    pub fn with_configs(test: &str, qemu_extra: &str, agent_extra: &str) -> Crio {
        require_vm_host();
        let tag = kata_shim::boot_check::nonce()[..8].to_string();
        let dir =
            Path::new("/run/kata-test").join(format!("crio-{test}-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir crio dir");
        let kata_config = write_config(&dir, qemu_extra, agent_extra);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Crio {
            rt,
            dir,
            kata_config,
            cgroup_root: format!("kata-test-crio-{tag}"),
            pods: BTreeMap::new(),
            ctrs: BTreeMap::new(),
            logs: Vec::new(),
            create_options: None,
        }
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.dir
            .join("runroot/overlay-containers")
            .join(id)
            .join("userdata")
    }

    fn runtime_root(&self) -> PathBuf {
        self.dir.join("runtime_root")
    }

    /// A busybox layer bind-mounted on `<graphroot>/overlay/<layer>/merged`,
    /// standing in for CRI-O's mounted overlay.
    fn mount_rootfs(&self) -> PathBuf {
        let layer = self.dir.join("graphroot/overlay").join(hex_id());
        let diff = layer.join("diff");
        let merged = layer.join("merged");
        super::image::busybox_rootfs(&diff);
        std::fs::create_dir_all(&merged).expect("mkdir merged");
        nix::mount::mount(
            Some(&diff),
            &merged,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mount the rootfs");
        merged
    }

    fn ctr(&self, id: &str) -> &Ctr {
        self.ctrs
            .get(id)
            .unwrap_or_else(|| panic!("the driver has no container {id}"))
    }

    fn pod(&self, sandbox_id: &str) -> &Pod {
        self.pods
            .get(sandbox_id)
            .unwrap_or_else(|| panic!("the driver has no pod {sandbox_id}"))
    }

    pub fn pod_info(&self, sandbox_id: &str) -> &PodInfo {
        &self.pod(sandbox_id).info
    }

    /// What the driver itself set up for a pod whose sandbox Create failed
    /// and CRI-O then takes down: the pod's shm tmpfs in the bundle.
    /// Asserts that it is the only mount below the bundle (the shim made
    /// none).
    pub fn unmount_own_shm(&self, sid: &str) {
        let bundle = self.bundle(sid);
        let unmounted = unmount_under(&bundle);
        assert_eq!(
            unmounted,
            vec![bundle.join("shm")],
            "mounts below the bundle other than CRI-O's shm"
        );
    }

    /// Everything the shims wrote to the bundles' `log` FIFOs so far.
    pub fn shim_logs(&self) -> String {
        self.logs
            .iter()
            .map(|d| String::from_utf8_lossy(&d.snapshot()).into_owned())
            .collect()
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundle_dir(id)
    }

    /// The serving shim of a sandbox, from the `shim.pid` its `start` wrote.
    pub fn shim_pid(&self, sandbox_id: &str) -> u32 {
        let path = self.bundle_dir(sandbox_id).join("shim.pid");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("shim.pid {text:?}: {e}"))
    }

    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.ctr(id).rootfs.clone()
    }

    /// The pid Create returned (CRI-O records it with its start time).
    pub fn create_pid(&self, id: &str) -> u32 {
        self.ctr(id).create_pid
    }

    /// What the container wrote to its stdout and stderr FIFOs so far.
    pub fn output(&self, id: &str) -> (Vec<u8>, Vec<u8>) {
        self.ctr(id)
            .io
            .as_ref()
            .map(|io| io.snapshot())
            .unwrap_or_default()
    }

    /// A raw request on the connection of container `via`.
    pub fn call<Req: Message, Resp: Message>(
        &self,
        via: &str,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        self.rpc(&self.ctr(via).client, method, req)
    }

    fn rpc<Req: Message, Resp: Message>(
        &self,
        client: &Client,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let (wire, limit) = if method == "Create" {
            (
                Some(CREATE_TIMEOUT),
                CREATE_TIMEOUT + Duration::from_secs(10),
            )
        } else {
            (None, CALL_LIMIT)
        };
        self.rt.block_on(async {
            tokio::time::timeout(limit, call(client, method, req, wire))
                .await
                .unwrap_or_else(|_| {
                    Err(ttrpc::Error::Others(format!(
                        "{method} did not answer within {limit:?}"
                    )))
                })
        })
    }

    pub fn spawn_wait(&self, id: &str, exec_id: &str, then_state: bool) -> Waiter {
        Waiter::spawn(
            &self.rt,
            self.ctr(id).client.clone(),
            id,
            exec_id,
            then_state,
        )
    }

    /// Runs the binary exactly as CRI-O's `startRuntimeDaemon` does and
    /// returns the address it printed, after checking the bundle files.
    fn start_shim(&self, bundle: &Path, id: &str, sandbox: bool) -> Result<String, CrioError> {
        let mut cmd = Command::new(bin("containerd-shim-kata-v2"));
        cmd.args([
            "-namespace",
            "default",
            "-address",
            "",
            "-publish-binary",
            "/usr/bin/crio",
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle)
        .stdin(Stdio::null())
        .env("TTRPC_ADDRESS", "")
        .env("GRPC_ADDRESS", "")
        .env("GOMAXPROCS", "2")
        .env("MAX_SHIM_VERSION", "2")
        .env("NAMESPACE", "default")
        .env("KATA_CONF_FILE", &self.kata_config);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let out = output_within(&mut cmd, START_LIMIT).unwrap_or_else(|| {
            panic!(
                "`start` for {id} did not finish within {START_LIMIT:?} \
                 (does the daemon hold the start process's stdout or stderr?)"
            )
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(CrioError::Start(format!(
                "start {id}: {}; stdout {stdout:?}; stderr {stderr:?}",
                out.status
            )));
        }
        // Released CRI-O reads stdout and stderr combined: any stderr byte
        // would corrupt the address.
        assert!(stderr.is_empty(), "start {id} wrote to stderr: {stderr:?}");
        assert!(
            stdout.starts_with("unix:///") && !stdout.contains(char::is_whitespace),
            "start {id} printed {stdout:?}, not a plain unix:// address"
        );
        let address = std::fs::read_to_string(bundle.join("address"))
            .unwrap_or_else(|e| panic!("{}/address: {e}", bundle.display()));
        assert_eq!(address, stdout, "the address file differs from stdout");
        if sandbox {
            let pid = std::fs::read_to_string(bundle.join("shim.pid"))
                .unwrap_or_else(|e| panic!("{}/shim.pid: {e}", bundle.display()));
            let pid: u32 = pid
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("shim.pid {pid:?}: {e}"));
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "shim.pid names {pid}, which is not running"
            );
        }
        Ok(stdout)
    }

    /// CRI-O's RunPodSandbox: namespaces, bundle files, `start`, Create,
    /// Start, a background Wait, State. Returns the sandbox id.
    pub fn run_pod_sandbox(&mut self, cfg: &PodConfig) -> String {
        let (id, created) = self.try_create_pod_sandbox(cfg);
        created.unwrap_or_else(|e| panic!("RunPodSandbox {id}: create failed: {e:?}"));
        let state = self.start_container(&id);
        assert_eq!(
            state.status.enum_value(),
            Ok(api::Status::RUNNING),
            "sandbox {id} after Start: {state:?}"
        );
        id
    }

    /// RunPodSandbox up to the sandbox's Create: the sandbox id and how
    /// Create went (a failed one is cleaned up as CRI-O does).
    pub fn try_create_pod_sandbox(&mut self, cfg: &PodConfig) -> (String, Result<(), CrioError>) {
        let id = hex_id();
        let bundle = self.bundle_dir(&id);
        std::fs::create_dir_all(&bundle).expect("mkdir sandbox bundle");
        let netns_name = format!("kata-test-{}", &hex_id()[..16]);
        let host_veths: Vec<String> = match cfg.network {
            PodNetwork::Veth => vec![format!("kv{}", &hex_id()[..13])],
            PodNetwork::SecondBroken => (0..2).map(|_| format!("kv{}", &hex_id()[..13])).collect(),
            PodNetwork::LoopbackOnly | PodNetwork::Missing | PodNetwork::Host => Vec::new(),
        };
        let ns_uuid = hex_id()[..32].to_string();
        let (ipcns, utsns) = (
            self.dir.join("ns/ipcns").join(&ns_uuid),
            self.dir.join("ns/utsns").join(&ns_uuid),
        );
        for f in [&ipcns, &utsns] {
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir ns dir");
            std::fs::write(f, "").expect("ns pin file");
        }
        let uid = hex_id()[..32].to_string();
        let info = PodInfo {
            id: id.clone(),
            uid: uid.clone(),
            name: cfg.name.clone(),
            namespace: "default".into(),
            bundle: bundle.clone(),
            netns: (cfg.network != PodNetwork::Host)
                .then(|| Path::new("/var/run/netns").join(&netns_name)),
            ipcns: ipcns.clone(),
            utsns: utsns.clone(),
            cgroup_parent: format!("/{}/pod{uid}", self.cgroup_root),
            log_dir: Path::new("/var/log/pods").join(format!("default_{}_{uid}", cfg.name)),
            resources: cfg.resources.clone(),
            annotations: cfg.annotations.clone(),
            share_pid: !cfg.private_pid,
            infra_pid: None,
        };
        let rootfs = self.mount_rootfs();
        self.pods.insert(
            id.clone(),
            Pod {
                info: info.clone(),
                netns_name: netns_name.clone(),
                host_veths: host_veths.clone(),
                apps: Vec::new(),
                rootfs: vec![rootfs.clone()],
                stopped: false,
            },
        );
        // The kubelet makes the pod's cgroup; the shim only adds its own.
        make_cgroup_dirs(&info.cgroup_parent);
        // Pinned namespaces, as CRI-O (and CNI) set them up before `start`.
        if !matches!(cfg.network, PodNetwork::Missing | PodNetwork::Host) {
            run_ok(Command::new("ip").args(["netns", "add", &netns_name]));
        }
        if let Some(veth) = host_veths.first() {
            cni_add(&netns_name, veth);
        }
        if cfg.network == PodNetwork::SecondBroken {
            cni_add_broken_second(&netns_name, &host_veths[1]);
        }
        run_ok(
            Command::new("unshare")
                .arg(format!("--ipc={}", ipcns.display()))
                .arg(format!("--uts={}", utsns.display()))
                .arg("true"),
        );
        std::fs::write(info.hostname_file(), format!("{}\n", cfg.name)).expect("hostname");
        std::fs::write(
            info.resolv_file(),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5\n",
        )
        .expect("resolv.conf");
        std::fs::create_dir_all(info.shm()).expect("mkdir shm");
        nix::mount::mount(
            Some("shm"),
            &info.shm(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .expect("mount the pod's shm tmpfs");
        let prepared = Prepared {
            id: id.clone(),
            sandbox_id: id.clone(),
            spec: infra_spec(&info, &rootfs),
            bundle,
            rootfs,
            rootfs_mounts: Vec::new(),
            tty: false,
            stdin: false,
            log_uri: None,
        };
        let created = self.create_prepared(prepared).map(|_| ());
        (id, created)
    }

    /// A container bundle in pod `sandbox_id` with a mounted busybox rootfs
    /// and CRI-O's spec, not yet created.
    pub fn prepare_container(&mut self, sandbox_id: &str, name: &str, args: &[&str]) -> Prepared {
        let id = hex_id();
        let bundle = self.bundle_dir(&id);
        std::fs::create_dir_all(&bundle).expect("mkdir container bundle");
        let rootfs = self.mount_rootfs();
        let pod = self
            .pods
            .get_mut(sandbox_id)
            .unwrap_or_else(|| panic!("no pod {sandbox_id}"));
        pod.rootfs.push(rootfs.clone());
        Prepared {
            spec: container_spec(&pod.info, &id, name, args, &rootfs, false, false),
            id,
            sandbox_id: sandbox_id.to_string(),
            bundle,
            rootfs,
            rootfs_mounts: Vec::new(),
            tty: false,
            stdin: false,
            log_uri: None,
        }
    }

    /// CRI-O's CreateContainer: `start` in the bundle, Create, State.
    pub fn create_container(&mut self, sandbox_id: &str, name: &str, args: &[&str]) -> String {
        let p = self.prepare_container(sandbox_id, name, args);
        self.create_prepared(p)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"))
    }

    /// `start` + Create (+ State) for a prepared bundle. On a failed Create
    /// the driver cleans up like CRI-O (Delete, Shutdown, close).
    pub fn create_prepared(&mut self, p: Prepared) -> Result<String, CrioError> {
        let sandbox = p.id == p.sandbox_id;
        std::fs::write(
            p.bundle.join("config.json"),
            serde_json::to_vec(&p.spec).expect("spec json"),
        )
        .expect("write config.json");
        let log = p.bundle.join("log");
        nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo log");
        self.logs
            .push(Drain::open(&log, Some(format!("shim log {}", &p.id[..12]))));
        let address = match self.start_shim(&p.bundle, &p.id, sandbox) {
            Ok(a) => a,
            Err(e) => {
                unmount_under(&p.rootfs);
                return Err(e);
            }
        };
        let expected = format!(
            "unix://{}",
            kata_shim::layout::shim_socket(&p.sandbox_id).display()
        );
        assert_eq!(
            address, expected,
            "start of {} returned another socket",
            p.id
        );
        // A shim that died after `start` leaves nothing listening: CRI-O's
        // RunPodSandbox or CreateContainer fails.
        let connected = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(100), Client::connect(&address)).await
        });
        let client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                unmount_under(&p.rootfs);
                return Err(CrioError::Rpc(e));
            }
            Err(_) => panic!("connect {address}: timed out"),
        };
        let io = ExecIo::new(&self.runtime_root(), &p.id, p.stdin, p.tty);
        let mut req = api::CreateTaskRequest::new();
        req.id = p.id.clone();
        req.bundle = p.bundle.display().to_string();
        req.rootfs = p.rootfs_mounts.clone();
        req.terminal = p.tty;
        (req.stdin, req.stdout, req.stderr) = io.paths();
        if let Some(uri) = &p.log_uri {
            req.stdout = uri.clone();
            req.stderr = uri.clone();
        }
        req.options = self.create_options.clone().into();
        match self.rpc::<_, api::CreateTaskResponse>(&client, "Create", &req) {
            Ok(resp) => {
                assert!(
                    kata_shim::persist::proc_start_time(resp.pid).is_some(),
                    "Create of {} returned pid {}, which is not a running host process",
                    p.id,
                    resp.pid
                );
                self.ctrs.insert(
                    p.id.clone(),
                    Ctr {
                        sandbox_id: p.sandbox_id.clone(),
                        bundle: p.bundle.clone(),
                        rootfs: p.rootfs.clone(),
                        rootfs_mounted: true,
                        client,
                        process: p.spec["process"].clone(),
                        tty: p.tty,
                        io: Some(io),
                        init_wait: None,
                        create_pid: resp.pid,
                    },
                );
                if let Some(pod) = self.pods.get_mut(&p.sandbox_id) {
                    if sandbox {
                        pod.info.infra_pid = Some(resp.pid);
                    } else {
                        pod.apps.push(p.id.clone());
                    }
                }
                let state = self.state(&p.id);
                assert_eq!(
                    state.status.enum_value(),
                    Ok(api::Status::CREATED),
                    "{} after Create: {state:?}",
                    p.id
                );
                Ok(p.id)
            }
            Err(e) => {
                let mut del = api::DeleteRequest::new();
                del.id = p.id.clone();
                let deleted = self.rpc::<_, api::DeleteResponse>(&client, "Delete", &del);
                let mut shut = api::ShutdownRequest::new();
                shut.id = p.id.clone();
                let shutdown = self.rpc::<_, api::Empty>(&client, "Shutdown", &shut);
                for r in [deleted.err(), shutdown.err()].into_iter().flatten() {
                    assert_ne!(
                        rpc_code(&r),
                        Some(ttrpc::Code::UNKNOWN),
                        "cleanup after a failed Create: {r:?}"
                    );
                }
                drop(io);
                unmount_under(&p.rootfs);
                Err(CrioError::Rpc(e))
            }
        }
    }

    /// CRI-O's StartContainer: Start, a background Wait (then State), State.
    pub fn start_container(&mut self, id: &str) -> api::StateResponse {
        let mut req = api::StartRequest::new();
        req.id = id.to_string();
        let resp: api::StartResponse = self
            .call(id, "Start", &req)
            .unwrap_or_else(|e| panic!("Start {id}: {e:?}"));
        assert!(resp.pid > 0, "Start {id} returned pid 0");
        let waiter = self.spawn_wait(id, "", true);
        self.ctrs.get_mut(id).expect("container").init_wait = Some(waiter);
        self.state(id)
    }

    pub fn state(&self, id: &str) -> api::StateResponse {
        self.try_state(id, "")
            .unwrap_or_else(|e| panic!("State {id}: {e:?}"))
    }

    /// State of `id` as a restarted CRI-O learns it: the address read from
    /// the bundle, dialled anew (`UpdateContainerStatus` with no client).
    pub fn state_after_restart(&self, id: &str) -> ttrpc::Result<api::StateResponse> {
        let address = std::fs::read_to_string(self.ctr(id).bundle.join("address"))
            .unwrap_or_else(|e| panic!("{id}/address: {e}"));
        let mut req = api::StateRequest::new();
        req.id = id.to_string();
        self.rt.block_on(async {
            let client = tokio::time::timeout(CALL_LIMIT, Client::connect(&address))
                .await
                .map_err(|_| ttrpc::Error::Others(format!("connect {address}: timed out")))??;
            call(&client, "State", &req, None).await
        })
    }

    pub fn try_state(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::StateResponse> {
        let mut req = api::StateRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call(id, "State", &req)
    }

    /// Writes to the container's stdin FIFO (created with `stdin`).
    pub fn write_stdin(&mut self, id: &str, data: &[u8]) {
        let c = self.ctrs.get_mut(id).expect("container");
        c.io.as_mut().expect("container IO").write_stdin(data);
    }

    /// CRI-O closes its stdin end when the client's stdin ends.
    pub fn close_stdin(&mut self, id: &str) {
        let c = self.ctrs.get_mut(id).expect("container");
        c.io.as_mut().expect("container IO").close_stdin();
    }

    /// Whether StartContainer began a background Wait for `id`.
    pub fn has_init_wait(&self, id: &str) -> bool {
        self.ctr(id).init_wait.is_some()
    }

    /// The background Wait StartContainer began: `None` while running.
    pub fn init_exit(&self, id: &str, within: Duration) -> Option<WaitOutcome> {
        self.ctr(id)
            .init_wait
            .as_ref()
            .and_then(|w| w.wait(&self.rt, within))
    }

    /// CRI-O's RemoveContainer: close its IO side, Delete, Shutdown
    /// (a closed connection is fine), forget the connection.
    pub fn remove_container(&mut self, id: &str) -> api::DeleteResponse {
        self.try_remove_container(id)
            .unwrap_or_else(|e| panic!("Delete {id}: {e:?}"))
    }

    /// [`Crio::remove_container`], where a failed Delete is the answer:
    /// the container stays known, as to CRI-O, for kubelet's retry.
    pub fn try_remove_container(&mut self, id: &str) -> Result<api::DeleteResponse, CrioError> {
        let mut c = self
            .ctrs
            .remove(id)
            .unwrap_or_else(|| panic!("the driver has no container {id}"));
        drop(c.io.take());
        let mut del = api::DeleteRequest::new();
        del.id = id.to_string();
        let resp: api::DeleteResponse = match self.rpc(&c.client, "Delete", &del) {
            Ok(resp) => resp,
            Err(e) => {
                self.ctrs.insert(id.to_string(), c);
                return Err(CrioError::Rpc(e));
            }
        };
        let mut shut = api::ShutdownRequest::new();
        shut.id = id.to_string();
        match self.rpc::<_, api::Empty>(&c.client, "Shutdown", &shut) {
            Ok(_) => {}
            Err(e @ ttrpc::Error::RpcStatus(_)) => panic!("Shutdown {id}: {e:?}"),
            Err(e @ ttrpc::Error::Others(_)) => panic!("Shutdown {id}: {e:?}"),
            Err(_closed) => {}
        }
        if c.rootfs_mounted {
            unmount_under(&c.rootfs);
        }
        if let Some(pod) = self.pods.get_mut(&c.sandbox_id) {
            pod.apps.retain(|a| a != id);
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        Ok(resp)
    }

    /// CRI-O's StopPodSandbox: (network first; none here) app containers,
    /// then the infra container, then the shm and namespaces.
    /// Returns how each container that was still running stopped.
    pub fn stop_pod(&mut self, sandbox_id: &str, timeout: Duration) -> Vec<(String, StopReport)> {
        // CRI-O tears the network down before it stops any container
        // (`server/sandbox_stop_linux.go`): CNI DEL, then the netns goes.
        self.cni_del(sandbox_id);
        self.stop_pod_containers(sandbox_id, timeout)
    }

    /// StopPodSandbox in containerd's order instead: the containers stop
    /// while the pod's network is still there (the test removes it), so
    /// what the shim leaves in the netns can be looked at.
    pub fn stop_pod_network_last(&mut self, sandbox_id: &str, timeout: Duration) {
        self.stop_pod_containers(sandbox_id, timeout);
    }

    fn stop_pod_containers(
        &mut self,
        sandbox_id: &str,
        timeout: Duration,
    ) -> Vec<(String, StopReport)> {
        let apps = self.pod(sandbox_id).apps.clone();
        let mut reports = Vec::new();
        for id in apps.iter().chain(std::iter::once(&sandbox_id.to_string())) {
            if self.init_exit(id, Duration::ZERO).is_some() {
                self.unmount_rootfs(id);
            } else {
                let (state, report) = self.stop_container_report(id, timeout);
                assert_eq!(
                    state.status.enum_value(),
                    Ok(api::Status::STOPPED),
                    "{id} after StopContainer: {state:?}"
                );
                reports.push((id.clone(), report));
            }
        }
        self.release_pod_namespaces(sandbox_id);
        self.pods.get_mut(sandbox_id).expect("pod").stopped = true;
        reports
    }

    /// CNI DEL and the netns unpinned, as CRI-O does at StopPodSandbox.
    pub fn cni_del(&self, sandbox_id: &str) {
        let pod = self.pod(sandbox_id);
        for veth in &pod.host_veths {
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &pod.netns_name])
            .output();
    }

    /// The name CNI gave the pod's network namespace (`ip netns` name).
    pub fn netns_name(&self, sandbox_id: &str) -> String {
        self.pod(sandbox_id).netns_name.clone()
    }

    fn release_pod_resources(&self, sandbox_id: &str) {
        self.cni_del(sandbox_id);
        self.release_pod_namespaces(sandbox_id);
    }

    /// The pod's shm, ipc and uts pins (the network is CNI's).
    fn release_pod_namespaces(&self, sandbox_id: &str) {
        let pod = self.pod(sandbox_id);
        unmount_under(&pod.info.shm());
        unmount_under(&pod.info.ipcns);
        unmount_under(&pod.info.utsns);
    }

    /// What a restarted CRI-O does to a pod whose RunPodSandbox it never
    /// finished: the pod's storage goes (mounts, bundles) and its shim is
    /// never called again. The pod stays known to this driver only for
    /// the network and cgroup clean-up of its Drop.
    pub fn forget_pod(&mut self, sandbox_id: &str) {
        let ids: Vec<String> = self
            .ctrs
            .iter()
            .filter(|(_, c)| c.sandbox_id == sandbox_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let c = self.ctrs.remove(&id).expect("listed");
            if c.rootfs_mounted {
                unmount_under(&c.rootfs);
            }
            unmount_under(&c.bundle);
            let _ = std::fs::remove_dir_all(&c.bundle);
        }
        if let Some(pod) = self.pods.get_mut(sandbox_id) {
            pod.apps.clear();
        }
    }

    /// CRI-O's RemovePodSandbox: stop if needed, RemoveContainer for each app
    /// container, then for the infra container.
    pub fn remove_pod(&mut self, sandbox_id: &str) {
        if !self.pod(sandbox_id).stopped {
            self.stop_pod(sandbox_id, POD_STOP_TIMEOUT);
        }
        for id in self.pod(sandbox_id).apps.clone() {
            self.remove_container(&id);
        }
        self.remove_container(sandbox_id);
        let _ = std::fs::remove_dir_all(self.bundle_dir(sandbox_id));
    }

    /// The pod left nothing behind (processes, directories, mounts on or
    /// below its rootfs paths, host cgroups of its containers).
    pub fn assert_no_leaks(&self, sandbox_id: &str) {
        let pod = self.pod(sandbox_id);
        assert_no_leaks_under(sandbox_id, &pod.rootfs);
        let cgroups = pod_cgroup_dirs(&pod.info);
        assert!(cgroups.is_empty(), "host cgroups left: {cgroups:?}");
    }
}

/// The MAC of the gateway's permanent neighbour entry in a driver pod.
pub const CNI_GATEWAY_MAC: &str = "02:00:0a:d5:00:01";

/// What the bridge plugin would do for the pod, minus the bridge: a veth
/// with `eth0` in the pod's netns, an address, a default route and a
/// permanent neighbour for the gateway.
fn cni_add(netns: &str, host_veth: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ]));
    run_ok(Command::new("ip").args(["link", "set", host_veth, "up"]));
    for args in [
        &["addr", "add", "10.213.0.2/24", "dev", "eth0"][..],
        &["link", "set", "eth0", "up"],
        &[
            "route",
            "add",
            "default",
            "via",
            "10.213.0.1",
            "dev",
            "eth0",
        ],
        &[
            "neigh",
            "add",
            "10.213.0.1",
            "lladdr",
            CNI_GATEWAY_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        run_ok(Command::new("ip").args(["-n", netns]).args(args));
    }
}

/// A second interface whose tap name is taken.
fn cni_add_broken_second(netns: &str, host_veth: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", host_veth, "type", "veth", "peer", "name", "eth1", "netns", netns,
    ]));
    for args in [
        &["addr", "add", "10.214.0.2/24", "dev", "eth1"][..],
        &["link", "set", "eth1", "up"],
        // No `dummy` driver in this kernel: a veth pair inside the netns,
        // without addresses, takes the name.
        &[
            "link",
            "add",
            "tap1_kata",
            "type",
            "veth",
            "peer",
            "name",
            "kx1",
        ],
    ] {
        run_ok(Command::new("ip").args(["-n", netns]).args(args));
    }
}
