//! The `config.json` CRI-O 1.32 writes for a pod's infra container and for
//! its app containers, field by field as observed (see
//! `reference/cri-o-1.32-observed.md`): an absolute, already mounted
//! `root.path`, pinned namespaces, the bundle's resolv.conf/shm/hostname
//! binds and the `io.kubernetes.cri-o.*` annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The pause-like infra process: PID 1 of its namespace, exits on SIGTERM
/// the way `/pause` does (busybox has no pause applet).
pub const INFRA_ARGS: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 1; done",
];
/// CRI-O's default capability set.
const CAPS: [&str; 9] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CREATED: &str = "2025-01-01T00:00:00.000000000Z";

/// What the specs of one pod have in common.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub id: String,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The infra container's bundle (holds hostname, resolv.conf, shm/).
    pub bundle: PathBuf,
    /// `None`: hostNetwork (no network namespace in the specs).
    pub netns: Option<PathBuf>,
    pub ipcns: PathBuf,
    pub utsns: PathBuf,
    pub cgroup_parent: String,
    pub log_dir: PathBuf,
    /// `io.kubernetes.cri-o.PodLinuxResources` (CRI snake_case JSON).
    pub resources: Option<Value>,
    /// Pod annotations, copied verbatim into the infra spec.
    pub annotations: BTreeMap<String, String>,
    /// CRI's pid NamespaceMode POD (crictl's default; Kubernetes
    /// `shareProcessNamespace: true`): app containers name the infra's
    /// pid namespace. false: CONTAINER, each has its own.
    pub share_pid: bool,
    /// The infra container's pid as the shim reported it at Create: CRI-O
    /// names `/proc/<it>/ns/pid` in app specs (`nsPathGivenInfraPid`).
    pub infra_pid: Option<u32>,
}

impl PodInfo {
    pub fn shm(&self) -> PathBuf {
        self.bundle.join("shm")
    }
    pub fn hostname_file(&self) -> PathBuf {
        self.bundle.join("hostname")
    }
    pub fn resolv_file(&self) -> PathBuf {
        self.bundle.join("resolv.conf")
    }
    fn sandbox_name(&self) -> String {
        format!("k8s_{}_{}_{}_0", self.name, self.namespace, self.uid)
    }
}

fn process(args: &[&str], env: Value, tty: bool) -> Value {
    json!({
        "terminal": tty,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": env,
        "cwd": "/",
        "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS}
    })
}

fn bind(destination: &str, source: &Path, ro: bool) -> Value {
    let mut options = vec!["bind", "nodev", "nosuid", "noexec"];
    options.insert(0, if ro { "ro" } else { "rw" });
    json!({
        "destination": destination,
        "type": "bind",
        "source": source.display().to_string(),
        "options": options
    })
}

fn base_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ]
}

fn masked_and_readonly() -> (Value, Value) {
    (
        json!([
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/dev/block"
        ]),
        json!([
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]),
    )
}

fn namespaces(pod: &PodInfo, app: bool) -> Value {
    let pid = match pod.infra_pid {
        Some(p) if app && pod.share_pid => {
            json!({"type": "pid", "path": format!("/proc/{p}/ns/pid")})
        }
        _ => json!({"type": "pid"}),
    };
    let mut ns = vec![pid];
    if let Some(netns) = &pod.netns {
        ns.push(json!({"type": "network", "path": netns.display().to_string()}));
    }
    ns.extend([
        json!({"type": "ipc", "path": pod.ipcns.display().to_string()}),
        json!({"type": "uts", "path": pod.utsns.display().to_string()}),
        json!({"type": "mount"}),
    ]);
    Value::Array(ns)
}

/// The infra (pause) container's spec; `rootfs` is its mounted root.
pub fn infra_spec(pod: &PodInfo, rootfs: &Path) -> Value {
    let mut mounts = base_mounts();
    mounts.push(bind("/etc/resolv.conf", &pod.resolv_file(), true));
    mounts.push(bind("/dev/shm", &pod.shm(), false));
    mounts.push(bind("/etc/hostname", &pod.hostname_file(), true));
    let mut proc = process(
        &INFRA_ARGS,
        json!([PATH_ENV, format!("HOSTNAME={}", pod.name)]),
        false,
    );
    proc["oomScoreAdj"] = json!(-998);
    proc.as_object_mut().expect("object").remove("terminal");
    let root = rootfs.display().to_string();
    let labels = json!({
        "io.kubernetes.container.name": "POD",
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
    });
    let mut ann: BTreeMap<String, String> = pod.annotations.clone();
    let crio = |k: &str| format!("io.kubernetes.cri-o.{k}");
    for (k, v) in [
        (crio("ContainerType"), "sandbox".to_string()),
        (crio("SandboxID"), pod.id.clone()),
        (crio("ContainerID"), pod.id.clone()),
        (crio("SandboxName"), pod.sandbox_name()),
        (crio("Name"), pod.sandbox_name()),
        (
            crio("ContainerName"),
            format!("k8s_POD_{}_{}_{}_0", pod.name, pod.namespace, pod.uid),
        ),
        (crio("KubeName"), pod.name.clone()),
        (crio("Namespace"), pod.namespace.clone()),
        ("io.kubernetes.pod.name".into(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".into(), pod.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), pod.uid.clone()),
        ("io.kubernetes.container.name".into(), "POD".into()),
        (crio("RuntimeHandler"), "kata".into()),
        (crio("PodLinuxOverhead"), "null".into()),
        (crio("HostNetwork"), pod.netns.is_none().to_string()),
        (crio("NamespaceOptions"), "{}".into()),
        (crio("SeccompProfilePath"), "RuntimeDefault".into()),
        (crio("ShmPath"), pod.shm().display().to_string()),
        (
            crio("HostnamePath"),
            pod.hostname_file().display().to_string(),
        ),
        (crio("ResolvPath"), pod.resolv_file().display().to_string()),
        (crio("MountPoint"), root.clone()),
        (
            crio("LogPath"),
            pod.log_dir
                .join(format!("{}.log", pod.id))
                .display()
                .to_string(),
        ),
        (crio("CgroupParent"), pod.cgroup_parent.clone()),
        (crio("PrivilegedRuntime"), "false".into()),
        (crio("PortMappings"), "[]".into()),
        (crio("Labels"), labels.to_string()),
        (crio("Annotations"), "{}".into()),
        (
            crio("Metadata"),
            json!({"name": pod.name, "uid": pod.uid, "namespace": pod.namespace, "attempt": 0})
                .to_string(),
        ),
        (crio("Created"), CREATED.into()),
        (crio("HostName"), pod.name.clone()),
        (crio("Image"), super::super::image::BUSYBOX_REF.into()),
        (crio("ImageName"), super::super::image::BUSYBOX_REF.into()),
        ("io.container.manager".into(), "cri-o".into()),
    ] {
        ann.insert(k, v);
    }
    if let Some(r) = &pod.resources {
        ann.insert(crio("PodLinuxResources"), r.to_string());
    }
    let (masked, readonly) = masked_and_readonly();
    json!({
        "ociVersion": "1.0.2-dev",
        "process": proc,
        "root": {"path": root, "readonly": true},
        "hostname": pod.name,
        "mounts": mounts,
        "annotations": ann,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}},
            "cgroupsPath": format!("{}/crio-{}", pod.cgroup_parent, pod.id),
            "namespaces": namespaces(pod, false),
            "maskedPaths": masked,
            "readonlyPaths": readonly
        }
    })
}

/// The resources CRI-O 1.32 writes for a container without limits
/// (`SpecSetLinuxContainerResources`): every CPU field is set, 0 where the
/// CRI request had none (crictl's default; kubelet sends period 100000),
/// cpuset strings empty; memory only with a limit (`Prepared::with_memory_limit`).
fn app_resources() -> Value {
    json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "cpu": {"shares": 2, "quota": 0, "period": 0, "cpus": "", "mems": ""}
    })
}

/// An app container's spec (container `name`, id `id`) in `pod`.
pub fn container_spec(
    pod: &PodInfo,
    id: &str,
    name: &str,
    args: &[&str],
    rootfs: &Path,
    tty: bool,
    stdin: bool,
) -> Value {
    let mut mounts = base_mounts();
    mounts.push(
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    );
    mounts.push(bind("/dev/shm", &pod.shm(), false));
    mounts.push(bind("/etc/resolv.conf", &pod.resolv_file(), true));
    mounts.push(bind("/etc/hostname", &pod.hostname_file(), true));
    let mut env = vec![PATH_ENV.to_string(), format!("HOSTNAME={}", pod.name)];
    if tty {
        env.push("TERM=xterm".into());
    }
    let root = rootfs.display().to_string();
    let crio = |k: &str| format!("io.kubernetes.cri-o.{k}");
    let full_name = format!("k8s_{name}_{}_{}_{}_0", pod.name, pod.namespace, pod.uid);
    let labels = json!({
        "io.kubernetes.container.name": name,
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
    });
    let mut ann = BTreeMap::new();
    for (k, v) in [
        (crio("ContainerType"), "container".to_string()),
        (crio("SandboxID"), pod.id.clone()),
        (crio("ContainerID"), id.to_string()),
        (crio("SandboxName"), pod.sandbox_name()),
        (crio("Name"), full_name.clone()),
        (crio("ContainerName"), full_name),
        ("io.kubernetes.container.name".into(), name.to_string()),
        ("io.kubernetes.pod.name".into(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".into(), pod.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), pod.uid.clone()),
        (crio("MountPoint"), root.clone()),
        (
            crio("LogPath"),
            pod.log_dir
                .join(format!("{name}/0.log"))
                .display()
                .to_string(),
        ),
        (crio("TTY"), tty.to_string()),
        (crio("Stdin"), stdin.to_string()),
        (crio("StdinOnce"), "false".into()),
        (crio("Image"), super::super::image::BUSYBOX_REF.into()),
        (crio("ImageName"), super::super::image::BUSYBOX_REF.into()),
        (crio("ImageRef"), super::super::image::BUSYBOX_REF.into()),
        (crio("ResolvPath"), pod.resolv_file().display().to_string()),
        (crio("SeccompProfilePath"), "".into()),
        (crio("Labels"), labels.to_string()),
        (crio("Annotations"), "{}".into()),
        (
            crio("Metadata"),
            json!({"name": name, "attempt": 0}).to_string(),
        ),
        (crio("Created"), CREATED.into()),
        ("io.container.manager".into(), "cri-o".into()),
    ] {
        ann.insert(k, v);
    }
    let (masked, readonly) = masked_and_readonly();
    json!({
        "ociVersion": "1.0.2-dev",
        "process": process(args, json!(env), tty),
        "root": {"path": root, "readonly": false},
        "hostname": pod.name,
        "mounts": mounts,
        "annotations": ann,
        "linux": {
            "resources": app_resources(),
            "cgroupsPath": format!("{}/crio-{id}", pod.cgroup_parent),
            "namespaces": namespaces(pod, true),
            "maskedPaths": masked,
            "readonlyPaths": readonly
        }
    })
}
