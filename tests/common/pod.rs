//! The in-VM container test harness: a booted sandbox (`Pod`) with
//! helpers that drive the agent API over hybrid vsock exactly as the shim
//! will, a busybox rootfs writer, and a runc-like spec builder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use kata_agent_protocol::agent;
use kata_shim::agent_client::{AgentClient, call_context};
use kata_shim::config::Config;
use kata_shim::guest::SandboxVm;
use serde_json::{Value, json};

pub const GUEST_SHARE: &str = kata_agent_protocol::guest::SHARED_FS_MOUNT;
pub const CALL: Option<Duration> = Some(Duration::from_secs(30));

/// A booted sandbox with its runtime; shuts the VM down and checks for
/// leaks on drop, also when the test fails.
pub struct Pod {
    pub rt: tokio::runtime::Runtime,
    pub sandbox: Option<SandboxVm>,
    pub id: String,
}

impl Pod {
    pub fn boot(test: &str) -> Pod {
        Pod::boot_with(test, false)
    }

    /// Boots the VM and waits for the agent, without CreateSandbox (for
    /// tests that send their own).
    pub fn boot_vm(test: &str) -> Pod {
        Pod::boot_config(test, &Pod::test_config())
    }

    /// The default configuration with the test image.
    pub fn test_config() -> Config {
        let (kernel, initrd, _) = test_image();
        let mut config = Config::default();
        config.hypervisor.qemu.kernel = kernel;
        config.hypervisor.qemu.initrd = initrd;
        config.agent.kata.dial_timeout = 60;
        config
    }

    /// Boots the VM of `config` and waits for the agent, without
    /// CreateSandbox.
    pub fn boot_config(test: &str, config: &Config) -> Pod {
        require_vm_host();
        // Shim and guest log lines go to the test's captured output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        let id = sandbox_id(test);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let sandbox = rt
            .block_on(SandboxVm::boot(config, &id))
            .expect("boot sandbox");
        Pod {
            rt,
            sandbox: Some(sandbox),
            id,
        }
    }

    /// Boots and creates the sandbox, sharing one pid namespace across the
    /// pod's containers when `sandbox_pidns`.
    pub fn boot_with(test: &str, sandbox_pidns: bool) -> Pod {
        let pod = Pod::boot_vm(test);
        pod.create_sandbox(sandbox_pidns);
        pod
    }

    /// The guest's CreateSandbox, as the shim sends it.
    pub fn create_sandbox(&self, sandbox_pidns: bool) {
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = self.id.clone();
        req.hostname = "kata-pod".into();
        req.sandbox_pidns = sandbox_pidns;
        self.call("CreateSandbox", |a| async move {
            a.raw().create_sandbox(call_context(CALL), &req).await
        });
    }

    pub fn agent(&self) -> AgentClient {
        self.sandbox.as_ref().expect("booted").agent.clone()
    }

    pub fn share(&self) -> PathBuf {
        self.sandbox
            .as_ref()
            .expect("booted")
            .vm
            .paths
            .share_dir
            .clone()
    }

    /// Runs one agent call to completion, panicking with its name on error.
    pub fn call<T, F, Fut>(&self, name: &str, f: F) -> T
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let agent = self.agent();
        self.rt
            .block_on(f(agent))
            .unwrap_or_else(|e| panic!("{name} failed: {e:?}"))
    }

    pub fn try_call<T, F, Fut>(&self, f: F) -> ttrpc::Result<T>
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let agent = self.agent();
        self.rt.block_on(f(agent))
    }

    /// Runs `f` with the share's root writable, as the shim makes its own
    /// entries (the root is read-only to the guest otherwise).
    pub fn share_write<T>(&self, f: impl FnOnce() -> T) -> T {
        kata_shim::storage::with_writable_share(&self.share(), f).expect("share window")
    }

    /// Writes a busybox rootfs for `cid` into a bundle outside the share
    /// and binds it to `<share>/<cid>/rootfs` the way the shim binds a
    /// container's rootfs (`storage::prepare_container`), and returns its
    /// guest path.
    pub fn rootfs(&self, cid: &str) -> String {
        let bundle = self.staging().join(cid);
        write_busybox_rootfs(&bundle.join("rootfs"));
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/bin/true"], "cwd": "/"},
            "linux": {"namespaces": [{"type": "mount"}]},
        });
        // A test that reuses an id gets a fresh bind, as the shim releases
        // a container's binds when it exits.
        kata_shim::mounts::unmount_beneath(&self.share(), Path::new(cid)).expect("release");
        kata_shim::storage::prepare_container(&self.share(), &self.id, cid, &bundle, spec, &[])
            .expect("bind the rootfs into the share");
        format!("{GUEST_SHARE}/{cid}/rootfs")
    }

    /// Where this pod's test rootfs trees are written: on the host, out of
    /// the share, removed with the pod.
    fn staging(&self) -> PathBuf {
        std::env::temp_dir().join(format!("kata-test-rootfs-{}", self.id))
    }

    pub fn create(&self, cid: &str, spec: &Value) {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.oci_spec_json = serde_json::to_vec(spec).expect("spec json");
        self.call("CreateContainer", |a| async move {
            a.raw().create_container(call_context(CALL), &req).await
        });
    }

    pub fn start(&self, cid: &str) {
        let mut req = agent::ContainerRequest::new();
        req.container_id = cid.into();
        self.call("StartContainer", |a| async move {
            a.raw().start_container(call_context(CALL), &req).await
        });
    }

    pub fn run(&self, cid: &str, spec: &Value) {
        self.create(cid, spec);
        self.start(cid);
    }

    /// Reads one stream of a process to EOF.
    pub fn read_all(&self, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut req = agent::ReadStreamRequest::new();
            req.container_id = cid.into();
            req.exec_id = exec_id.into();
            req.len = 64 * 1024;
            let chunk = self.call("Read", |a| async move {
                if stderr {
                    a.raw().read_stderr(call_context(None), &req).await
                } else {
                    a.raw().read_stdout(call_context(None), &req).await
                }
            });
            if chunk.data.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk.data);
        }
    }

    pub fn wait(&self, cid: &str, exec_id: &str) -> i32 {
        let mut req = agent::ProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.call("WaitProcess", |a| async move {
            a.raw().wait_process(call_context(None), &req).await
        })
        .status
    }

    pub fn signal(&self, cid: &str, exec_id: &str, signal: u32) {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        self.call("SignalProcess", |a| async move {
            a.raw().signal_process(call_context(CALL), &req).await
        });
    }

    pub fn write_stdin(&self, cid: &str, exec_id: &str, data: &[u8]) {
        let mut req = agent::WriteStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.data = data.to_vec();
        let n = self.call("WriteStdin", |a| async move {
            a.raw().write_stdin(call_context(CALL), &req).await
        });
        assert_eq!(n.len as usize, data.len());
    }

    pub fn close_stdin(&self, cid: &str, exec_id: &str) {
        let mut req = agent::ProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.call("CloseStdin", |a| async move {
            a.raw().close_stdin(call_context(CALL), &req).await
        });
    }

    pub fn exec(&self, cid: &str, exec_id: &str, process: &Value) {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process_json = serde_json::to_vec(process).expect("process json");
        self.call("ExecProcess", |a| async move {
            a.raw().exec_process(call_context(CALL), &req).await
        });
    }

    pub fn remove(&self, cid: &str) {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        self.call("RemoveContainer", |a| async move {
            a.raw().remove_container(call_context(CALL), &req).await
        });
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(sb) = self.sandbox.take() {
            let share = sb.vm.paths.share_dir.clone();
            let report = self.rt.block_on(sb.shutdown());
            // Shutdown unmounted the share and its binds; the rootfs trees
            // written by the test are ours to remove.
            let _ = std::fs::remove_dir_all(self.staging());
            let _ = std::fs::remove_dir(&share);
            eprintln!("pod {} stopped: {}", self.id, report.how);
        }
        if !std::thread::panicking() {
            assert_no_leaks(&self.id);
        }
    }
}

/// A busybox root filesystem: the static binary plus one link per applet.
pub fn write_busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir rootfs/bin");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs dir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
}

pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub fn process(args: &[&str], terminal: bool) -> Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
    })
}

/// A runc-like spec for a busybox container.
pub fn spec(root: &str, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args, false),
        "root": {"path": root, "readonly": false},
        "hostname": "kata-pod",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

impl Pod {
    pub fn container_call(&self, name: &str, cid: &str) -> ttrpc::Result<()> {
        let mut req = agent::ContainerRequest::new();
        req.container_id = cid.into();
        let name = name.to_string();
        self.try_call(|a| async move {
            let ctx = call_context(CALL);
            match name.as_str() {
                "pause" => a.raw().pause_container(ctx, &req).await.map(|_| ()),
                "resume" => a.raw().resume_container(ctx, &req).await.map(|_| ()),
                other => panic!("no call {other}"),
            }
        })
    }

    pub fn stats(&self, cid: &str) -> agent::StatsContainerResponse {
        let mut req = agent::ContainerRequest::new();
        req.container_id = cid.into();
        self.call("StatsContainer", |a| async move {
            a.raw().stats_container(call_context(CALL), &req).await
        })
    }

    /// One read with a deadline: `None` when nothing came in time.
    pub fn read_within(&self, cid: &str, within: Duration) -> Option<Vec<u8>> {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = cid.into();
        req.len = 64 * 1024;
        self.try_call(
            |a| async move { a.raw().read_stdout(call_context(Some(within)), &req).await },
        )
        .ok()
        .map(|r| r.data)
    }
}

pub fn assert_code(e: ttrpc::Error, code: ttrpc::Code) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            s.message().to_string()
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
