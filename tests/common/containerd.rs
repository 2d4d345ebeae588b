//! A private containerd per test: its own root, state, sockets, config
//! and log, with the workspace's binaries first on its PATH so that runtime
//! `io.containerd.kata.v2` resolves to the shim under test. It runs the
//! node's containerd 1.6 unless the options name another build
//! ([`ContainerdBin`]: 1.7, or a 2.x by hand). Dropping it
//! removes its tasks, stops it, kills shims it left behind, unmounts and
//! removes its directories, and prints its log when the test failed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use super::containerd_bin::ContainerdBin;
use super::*;

/// Long enough for `ctr run` of a kata task, which boots a VM under TCG.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(240);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 300;

/// How the private containerd is configured.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Enable the CRI plugin: runc as the default runtime, a `kata`
    /// runtime, `restrict_oom_score_adj` (the host lacks CAP_SYS_RESOURCE)
    /// and a private CNI bridge network.
    pub cri: bool,
    /// The containerd namespace `ctr` uses; empty: one of this instance's
    /// own (it also names the tasks' host cgroup parent, which concurrent
    /// tests must not share).
    pub namespace: String,
    /// The CRI plugin's pause image (only with `cri`).
    pub sandbox_image: String,
    /// Run the installed shim with its installed configuration (`make
    /// demo`) instead of the workspace's build and the test image.
    pub installed: bool,
    /// The containerd build to run.
    pub bin: ContainerdBin,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            cri: false,
            namespace: String::new(),
            sandbox_image: super::image::BUSYBOX_REF.into(),
            installed: false,
            bin: ContainerdBin::system(),
        }
    }
}

/// A running private containerd.
pub struct Containerd {
    pub name: String,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    /// The shim configuration (`KATA_CONF_FILE`) for the test guest image.
    pub kata_config: PathBuf,
    pub log: PathBuf,
    pub opts: ContainerdOptions,
    child: Option<Child>,
}

impl Containerd {
    pub fn start(name: &str) -> Containerd {
        Containerd::start_with(name, ContainerdOptions::default())
    }

    /// A containerd with its CRI plugin, in the `k8s.io` namespace as
    /// kubelet's, with the busybox and pause images imported.
    pub fn start_cri(name: &str, installed: bool) -> Containerd {
        Containerd::start_cri_on(name, installed, ContainerdBin::system())
    }

    /// [`Containerd::start_cri`] on the containerd build `bin`.
    pub fn start_cri_on(name: &str, installed: bool, bin: ContainerdBin) -> Containerd {
        let c = Containerd::start_with(
            name,
            ContainerdOptions {
                cri: true,
                namespace: "k8s.io".into(),
                sandbox_image: super::image::PAUSE_REF.into(),
                installed,
                bin,
            },
        );
        super::image::import_pause(&c);
        super::image::import_busybox(&c);
        c
    }

    /// A CRI client of this containerd.
    pub fn cri(&self) -> super::cri::Cri {
        super::cri::Cri::connect(&self.address())
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    /// The log directory for a pod named `name` (kubelet's
    /// `/var/log/pods/<ns>_<name>_<uid>`).
    pub fn pod_log_dir(&self, name: &str) -> PathBuf {
        let dir = self.state.join("pods").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir pod log dir");
        dir
    }

    /// A private containerd; its binary's presence was checked when
    /// `opts.bin` was made.
    pub fn start_with(name: &str, mut opts: ContainerdOptions) -> Containerd {
        let tag = format!("containerd-{name}-{}", std::process::id());
        if opts.namespace.is_empty() {
            opts.namespace = format!("kata-test-{name}");
        }
        let root = Path::new("/var/lib/kata-test").join(&tag);
        let state = Path::new("/run/kata-test").join(&tag);
        for d in [&root, &state] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let kata_config = write_config(&state, "", "");
        let mut c = Containerd {
            name: name.to_string(),
            config: state.join("config.toml"),
            log: state.join("containerd.log"),
            root,
            state,
            kata_config,
            opts,
            child: None,
        };
        c.write_config_file();
        c.spawn();
        c
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Empties containerd's log (a long run's would grow without bound).
    pub fn truncate_log(&self) {
        let _ = OpenOptions::new()
            .write(true)
            .open(&self.log)
            .and_then(|f| f.set_len(0));
    }

    /// The gRPC socket `ctr` talks to.
    pub fn address(&self) -> PathBuf {
        self.state.join("containerd.sock")
    }

    /// The ttrpc socket shims publish events to (`TTRPC_ADDRESS`).
    pub fn ttrpc_address(&self) -> PathBuf {
        self.state.join("containerd.sock.ttrpc")
    }

    /// The bundle containerd makes for task `id` in our namespace.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(&self.opts.namespace)
            .join(id)
    }

    /// The CNI bridge of the CRI network (only with `cri`).
    pub fn cni_bridge(&self) -> String {
        format!("kt{:08x}", std::process::id())
    }

    /// The CNI network's IPv4 subnet (only with `cri`): one /24 per
    /// containerd instance, derived from the pid so that concurrent test
    /// processes do not share a subnet.
    pub fn cni_subnet(&self) -> String {
        let pid = std::process::id();
        format!("10.{}.{}.0/24", 200 + (pid >> 8) % 50, pid % 256)
    }

    /// The CNI bridge's own address (only with `cri`): host-local's
    /// gateway, the subnet's first address, which the bridge plugin
    /// (`isGateway`) puts on the bridge and the pods route through.
    pub fn cni_gateway(&self) -> std::net::Ipv4Addr {
        let subnet = self.cni_subnet();
        let net: std::net::Ipv4Addr = subnet
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("cni_subnet is an IPv4 prefix");
        std::net::Ipv4Addr::from(u32::from(net) + 1)
    }

    /// The CRI plugin's directory of a pod sandbox (only with `cri`):
    /// containerd keeps the pod's `hosts`, `hostname` and `resolv.conf`
    /// there and bind-mounts them into the pod's containers.
    pub fn cri_sandbox_dir(&self, pod: &str) -> PathBuf {
        self.root
            .join("io.containerd.grpc.v1.cri")
            .join("sandboxes")
            .join(pod)
    }

    /// `ctr --address <sock> -n <ns> <args>`, bounded by [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_within(args, CTR_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "ctr {args:?} did not finish within {CTR_TIMEOUT:?}\n{}",
                self.log_tail()
            )
        })
    }

    /// `ctr` with its own bound; `None` on a timeout.
    pub fn ctr_within(&self, args: &[&str], limit: Duration) -> Option<Output> {
        self.ctr_ns_within(&self.opts.namespace, args, limit)
    }

    fn ctr_ns_within(&self, ns: &str, args: &[&str], limit: Duration) -> Option<Output> {
        let mut cmd = Command::new(self.opts.bin.ctr());
        cmd.arg("--address")
            .arg(self.address())
            .args(["-n", ns])
            .args(args)
            .stdin(Stdio::null());
        output_within(&mut cmd, limit)
    }

    /// Runs `ctr`, panics (with containerd's log) unless it succeeds, and
    /// returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills containerd with SIGKILL, as a crash would, and starts it again
    /// on the same directories and configuration (its shims keep running).
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// A node's power cut and boot: containerd dies with SIGKILL, `wipe`
    /// ends what else the boot would (the pods' processes, `/run`),
    /// containerd's state (its `/run` part) goes, and containerd starts
    /// again on its root directory (its `/var` part). The harness's own
    /// files in the state directory stay, as their stand-ins would: the
    /// configurations and the CNI network (`/etc`), the logs (`/var/log`)
    /// and the CNI address leases (`/var/lib/cni`).
    pub fn power_cycle(&mut self, wipe: impl FnOnce()) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wipe();
        let keep = [
            self.config.as_path(),
            self.log.as_path(),
            self.kata_config.as_path(),
        ];
        let kept_dirs = [self.state.join("pods"), self.state.join("cni")];
        for entry in std::fs::read_dir(&self.state)
            .expect("read containerd state")
            .flatten()
        {
            let path = entry.path();
            if keep.contains(&path.as_path()) || kept_dirs.contains(&path) {
                continue;
            }
            super::unmount_under(&path);
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            gone.unwrap_or_else(|e| panic!("wipe {}: {e}", path.display()));
        }
        self.spawn();
    }

    /// Stops containerd gracefully (its shims keep running) and starts it
    /// again on the same directories and configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- containerd {} ({}) log (last {} lines of {}) ---\n{}",
            self.name,
            self.opts.bin.label,
            lines.len() - from,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    fn write_config_file(&self) {
        let mut text = format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = [{disabled}]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
            version = self.opts.bin.config_version(),
            root = self.root.display(),
            state = self.state.display(),
            grpc = self.address().display(),
            ttrpc = self.ttrpc_address().display(),
            disabled = if self.opts.cri {
                ""
            } else {
                r#""io.containerd.grpc.v1.cri""#
            },
        );
        if self.opts.cri {
            text.push_str(&self.cri_config());
        }
        std::fs::write(&self.config, text).expect("write containerd config");
    }

    /// The CRI plugin's table plus a private CNI bridge network.
    fn cri_config(&self) -> String {
        let cni_dir = self.state.join("cni/net.d");
        std::fs::create_dir_all(&cni_dir).expect("mkdir cni conf dir");
        let subnet = self.cni_subnet();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "kata-test",
            "plugins": [{
                "type": "bridge",
                "bridge": self.cni_bridge(),
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.state.join("cni/ipam").display().to_string()
                }
            }]
        });
        std::fs::write(
            cni_dir.join("10-kata-test.conflist"),
            serde_json::to_vec_pretty(&conflist).expect("conflist json"),
        )
        .expect("write CNI conflist");
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        if self.opts.bin.config_version() >= 3 {
            // containerd 2.x's own form: the images, runtime and gRPC parts
            // of the CRI plugin are separate plugins.
            let images = r#"plugins."io.containerd.cri.v1.images""#;
            let rt = r#"plugins."io.containerd.cri.v1.runtime""#;
            return format!(
                r#"
[{images}]
  snapshotter = "overlayfs"
  [{images}.pinned_images]
    sandbox = "{sandbox_image}"
[{rt}]
  restrict_oom_score_adj = true
  disable_apparmor = true
  [{rt}.containerd]
    default_runtime_name = "runc"
{runtimes}
  [{rt}.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni_dir}"
    max_conf_num = 1
[{cri}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
                sandbox_image = self.opts.sandbox_image,
                runtimes = self.cri_runtimes(rt),
                cni_dir = cni_dir.display(),
            );
        }
        format!(
            r#"
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
{runtimes}
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
    max_conf_num = 1
"#,
            sandbox_image = self.opts.sandbox_image,
            runtimes = self.cri_runtimes(cri),
            cni_dir = cni_dir.display(),
        )
    }

    /// The runc and kata runtime tables under the CRI plugin `plugin` (the
    /// same keys in config versions 2 and 3).
    fn cri_runtimes(&self, plugin: &str) -> String {
        let kata_options = if self.opts.installed {
            String::new()
        } else {
            format!(
                "\n      [{plugin}.containerd.runtimes.kata.options]\n        ConfigPath = \"{}\"",
                self.kata_config.display()
            )
        };
        format!(
            r#"    [{plugin}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [{plugin}.containerd.runtimes.kata]
      runtime_type = "io.containerd.kata.v2"
      pod_annotations = ["io.katacontainers.*"]
      privileged_without_host_devices = true{kata_options}"#
        )
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open containerd log");
        let system_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        // The build's own directory comes before the system's, so that
        // containerd 1.7 or 2.x starts its own containerd-shim-runc-v2.
        let build_dir = self.opts.bin.dir.display();
        let mut cmd = Command::new(self.opts.bin.containerd());
        if self.opts.installed {
            cmd.env(
                "PATH",
                format!("/usr/local/bin:{build_dir}:/usr/bin:{system_path}"),
            )
            .env_remove("KATA_CONF_FILE");
        } else {
            cmd.env(
                "PATH",
                format!("{}:{build_dir}:{system_path}", bin_dir().display()),
            )
            .env("KATA_CONF_FILE", &self.kata_config);
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited at start: {status}\n{}", self.log_tail());
            }
            let up = self
                .ctr_within(&["version"], Duration::from_secs(5))
                .is_some_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {READY_TIMEOUT:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Deletes every task and container in every namespace, so that the
    /// shims shut their sandboxes down themselves.
    fn remove_all(&self) {
        if self.opts.cri {
            // As kubelet would: CRI tears down each pod's network too.
            if let Ok(cri) = super::cri::Cri::connect(&self.address()) {
                for pod in cri.list_pods().unwrap_or_default() {
                    let _ = cri.stop_pod(&pod.id);
                    let _ = cri.remove_pod(&pod.id);
                }
            }
        }
        let limit = Duration::from_secs(60);
        let list = |ns: &str, args: &[&str]| -> Vec<String> {
            self.ctr_ns_within(ns, args, limit)
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        for ns in list("default", &["namespaces", "ls", "-q"]) {
            for task in list(&ns, &["tasks", "ls", "-q"]) {
                let _ = self.ctr_ns_within(&ns, &["tasks", "rm", "-f", &task], limit);
            }
            for ctr in list(&ns, &["containers", "ls", "-q"]) {
                let _ = self.ctr_ns_within(&ns, &["containers", "rm", &ctr], limit);
            }
        }
    }

    /// Shims this containerd started and that outlived it: their argv names
    /// our socket or their working directory is one of our bundles.
    fn leftover_shims(&self) -> Vec<(u32, Vec<String>)> {
        let sock = self.address().display().to_string();
        processes()
            .into_iter()
            .filter(|(pid, argv)| {
                argv.iter().any(|a| a == &sock)
                    || std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(&self.state))
            })
            .collect()
    }

    /// Bundles left in the task directory: (namespace, id, path).
    fn leftover_bundles(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                out.push((
                    ns.file_name().to_string_lossy().into_owned(),
                    b.file_name().to_string_lossy().into_owned(),
                    b.path(),
                ));
            }
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all();
        }
        self.stop();
        // Shims exit on their own after the last Shutdown; give them time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.leftover_shims().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let shims = self.leftover_shims();
        for (pid, _) in &shims {
            kill9(*pid);
        }
        for (pid, _) in &shims {
            wait_gone(*pid, Duration::from_secs(5));
        }
        // A killed kata shim leaves its VM: let the binary's own `delete`
        // clean up from the state it persisted, as containerd would.
        for (ns, id, bundle) in self.leftover_bundles() {
            if !kata_shim::layout::shim_dir(&id).exists() {
                continue;
            }
            let mut cmd = Command::new(bin_dir().join("containerd-shim-kata-v2"));
            cmd.args(["-namespace", &ns, "-address"])
                .arg(self.address())
                .arg("-publish-binary")
                .arg(self.opts.bin.containerd())
                .args(["-id", &id, "-bundle"])
                .arg(&bundle)
                .arg("delete")
                .current_dir(&bundle)
                .stdin(Stdio::null());
            let _ = output_within(&mut cmd, Duration::from_secs(30));
            if std::thread::panicking() {
                remove_sandbox_dirs(&id);
            }
        }
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.log_tail());
            for (pid, argv) in &shims {
                eprintln!("killed leftover shim {pid}: {}", argv.join(" "));
            }
        }
        // runc removes a task's cgroup but not the namespace level above.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.opts.namespace));
        }
        unmount_under(&self.state);
        unmount_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.root);
        if self.opts.cri {
            let _ = Command::new("ip")
                .args(["link", "del", &self.cni_bridge()])
                .output();
        }
        if !panicking {
            assert!(
                shims.is_empty(),
                "containerd {} left shims running after its tasks were removed: {:?}",
                self.name,
                shims
            );
        }
    }
}
