//! Shared fixtures of the root and VM tests: prerequisites that fail loudly,
//! the test guest image, per-test configurations, running `kata-ctl
//! boot-check`, the per-sandbox leak check, and the host-side helpers the
//! shim tests share (process and mount scans, bounded command runs).
//! Submodules: `pod` (the agent driven directly), `floor` (the data-path
//! floor VM), `containerd` (a private containerd), `image` (the local
//! busybox and pause images), `crio` (a CRI-O protocol driver for the shim
//! binary), `cri` and `stream` (a CRI client of containerd, as kubelet is).

#![allow(dead_code)]

pub mod containerd;
pub mod containerd_bin;
pub mod cri;
pub mod crio;
pub mod floor;
pub mod image;
pub mod pod;
pub mod stream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (this test's profile).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kata-ctl"))
        .parent()
        .expect("binary has a parent directory")
        .to_path_buf()
}

/// Scratch space under the target directory (tests and benches alike).
pub fn tmp_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).expect("mkdir the target's tmp dir");
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the whole workspace first (make build, or cargo build --release --workspace)",
        p.display()
    );
    p
}

/// Fails (never skips) when the host lacks what VM tests need.
pub fn require_vm_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "VM tests must run as root (they start QEMU, virtiofsd and vhost-device-vsock): run `make test` as root"
    );
    for (tool, hint) in [
        (
            "/usr/bin/qemu-system-x86_64",
            "apt-get install -t bookworm-backports qemu-system-x86 (or make deps)",
        ),
        (
            "/usr/local/bin/vhost-device-vsock",
            "make deps (it builds the patched copy in vendor/vhost-device-vsock)",
        ),
        (
            "/usr/local/bin/virtiofsd",
            "cargo install --locked virtiofsd (or make deps)",
        ),
        (
            "/bin/busybox",
            "apt-get install busybox-static (or make deps)",
        ),
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing; install it with: {hint}"
        );
    }
    // The release on crates.io loses guest packets above 32 KiB, which the
    // shim's reads now produce: a test against it would wedge, not fail.
    let version = Command::new("/usr/local/bin/vhost-device-vsock")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        version.contains("+kata"),
        "/usr/local/bin/vhost-device-vsock is `{version}`, not the patched copy in \
         vendor/vhost-device-vsock (the release drops guest packets above 32 KiB): run make deps"
    );
}

/// Runs the workspace's `kata-guest-image` with its agent into `out`, plus
/// `extra` arguments (e.g. `--debug`); panics with its stderr on failure.
pub fn build_guest_image(out: &Path, extra: &[&str]) {
    let o = Command::new(bin("kata-guest-image"))
        .args(extra)
        .arg("--agent")
        .arg(bin("kata-agent"))
        .arg("--output-dir")
        .arg(out)
        .output()
        .expect("run kata-guest-image");
    assert!(
        o.status.success(),
        "building the guest image {extra:?} failed (is linux-image-amd64 installed? make deps): {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The test guest image: built from the workspace's agent into
/// target/test-images once per test process (the builder is a no-op when
/// up to date and takes a lock, so parallel test processes are safe).
pub fn test_image() -> (PathBuf, PathBuf, String) {
    static BUILD: Once = Once::new();
    let out = bin_dir().parent().expect("target dir").join("test-images");
    BUILD.call_once(|| build_guest_image(&out, &[]));
    let initrd = out.join("kata.initrd");
    let kernel = out.join("kata.kernel");
    let kver_dir = std::fs::read_link(&initrd).expect("kata.initrd is a symlink");
    let kver = kver_dir
        .components()
        .next()
        .expect("symlink names <kver>/kata.initrd")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    (kernel, initrd, kver)
}

/// Writes a configuration for the test image plus `extra` TOML lines in the
/// `[hypervisor.qemu]` table and `agent` lines in `[agent.kata]`.
pub fn write_config(dir: &Path, qemu_extra: &str, agent_extra: &str) -> PathBuf {
    let (kernel, initrd, _) = test_image();
    let has = |k: &str| {
        qemu_extra
            .lines()
            .any(|l| l.split('=').next().is_some_and(|key| key.trim() == k))
    };
    let mut text = String::from("[hypervisor.qemu]\n");
    if !has("kernel") {
        text.push_str(&format!("kernel = {:?}\n", kernel.display().to_string()));
    }
    if !has("initrd") {
        text.push_str(&format!("initrd = {:?}\n", initrd.display().to_string()));
    }
    text.push_str(qemu_extra);
    text.push_str("\n[agent.kata]\n");
    if !agent_extra.contains("dial_timeout") {
        text.push_str("dial_timeout = 60\n");
    }
    text.push_str(agent_extra);
    let path = dir.join("configuration.toml");
    std::fs::write(&path, text).expect("write test configuration");
    path
}

/// A unique sandbox id for one test.
pub fn sandbox_id(test: &str) -> String {
    format!(
        "t-{test}-{}-{}",
        std::process::id(),
        kata_shim::boot_check::nonce()
    )
}

/// Result of one `kata-ctl boot-check` run.
pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).to_string()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).to_string()
    }
    pub fn report(&self) -> serde_json::Value {
        assert!(
            self.output.status.success(),
            "boot-check failed: {}\n{}",
            self.output.status,
            self.stderr()
        );
        serde_json::from_str(&self.stdout()).expect("boot-check --json prints JSON")
    }
}

/// Runs `kata-ctl boot-check --json` with `config` for `sandbox_id`.
pub fn boot_check(config: &Path, sandbox_id: &str) -> Run {
    let began = Instant::now();
    let output = Command::new(bin("kata-ctl"))
        .args(["boot-check", "--json", "--id", sandbox_id])
        .env("KATA_CONF_FILE", config)
        .env_remove("KATA_LOG")
        .output()
        .expect("run kata-ctl");
    Run {
        output,
        elapsed: began.elapsed(),
    }
}

/// Asserts that nothing of `sandbox_id` is left: no process mentions it (the
/// shim daemon included), no state, share or shim directory, no mount.
/// Polls for up to 5 s first, since the shim daemon exits asynchronously
/// after the last Shutdown.
pub fn assert_no_leaks(sandbox_id: &str) {
    assert_no_leaks_under(sandbox_id, &[]);
}

/// [`assert_no_leaks`], also requiring that nothing is mounted on or below
/// any of `rootfs` (the bundle root filesystems the test handed the shim).
pub fn assert_no_leaks_under(sandbox_id: &str, rootfs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leaks = find_leaks(sandbox_id, rootfs);
        if leaks.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox {sandbox_id} leaked:\n{}",
            leaks.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn find_leaks(sandbox_id: &str, rootfs: &[PathBuf]) -> Vec<String> {
    let mut leaks = Vec::new();
    for (pid, argv) in processes() {
        let cmdline = argv.join(" ");
        if !cmdline.contains(sandbox_id) {
            continue;
        }
        let ours = argv.windows(2).any(|w| w[0] == "-id" && w[1] == sandbox_id);
        let what = match argv.last().map(String::as_str) {
            Some("serve") if ours => "shim daemon",
            Some("keeper") if ours => "connection keeper",
            _ => "process",
        };
        leaks.push(format!("{what} {pid}: {cmdline}"));
    }
    for dir in [
        Path::new(kata_shim::layout::RUN_ROOT).join(sandbox_id),
        Path::new(kata_shim::layout::SHARE_ROOT).join(sandbox_id),
        Path::new(kata_shim::layout::PERSIST_ROOT).join(sandbox_id),
        kata_shim::layout::mgmt_dir(sandbox_id),
    ] {
        if dir.exists() {
            leaks.push(format!("directory {}", dir.display()));
        }
    }
    // A rootless VM's uid claim (`vm::rootless`).
    for claim in std::fs::read_dir(kata_shim::vm::rootless::CLAIMS)
        .into_iter()
        .flatten()
        .flatten()
    {
        if std::fs::read_link(claim.path()).is_ok_and(|o| o == Path::new(sandbox_id)) {
            leaks.push(format!("rootless uid claim {}", claim.path().display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    for m in mounts.lines().filter(|l| l.contains(sandbox_id)) {
        leaks.push(format!("mount {m}"));
    }
    for point in mount_points() {
        if let Some(r) = rootfs.iter().find(|r| point.starts_with(r)) {
            leaks.push(format!(
                "mount {} on or below rootfs {}",
                point.display(),
                r.display()
            ));
        }
    }
    for dir in host_cgroups(sandbox_id) {
        leaks.push(format!("host cgroup {}", dir.display()));
    }
    leaks
}

/// Every host cgroup directory whose name carries `sid`, in every
/// hierarchy under /sys/fs/cgroup (v1, the hybrid `unified`, or pure v2),
/// deepest first so they can be removed in order. The shim names a pod's
/// cgroup after the sandbox (`k8s.io/<id>`, `kata-test-<id>`, ...).
pub fn host_cgroups(sid: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, sid: &str, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            walk(&path, depth - 1, sid, out);
            if e.file_name().to_string_lossy().contains(sid) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 7, sid, &mut out);
    out
}

/// Every process on the host with its argv (kernel threads have none).
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let argv = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, argv));
    }
    out
}

/// A sandbox's VM processes by name (QEMU, virtiofsd, vhost-device-vsock):
/// those with the sandbox id in their argv.
pub fn vm_processes(sid: &str) -> Vec<(String, u32)> {
    processes()
        .into_iter()
        .filter(|(_, argv)| argv.iter().any(|a| a.contains(sid)))
        .filter_map(|(pid, argv)| {
            let prog = argv.first()?.rsplit('/').next()?.to_string();
            ["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock"]
                .contains(&prog.as_str())
                .then_some((prog, pid))
        })
        .collect()
}

/// The QEMU processes of a sandbox: argv carries `-name sandbox-<id>`
/// (possibly followed by `,option=...`).
pub fn qemu_pids(sandbox_id: &str) -> Vec<u32> {
    let name = format!("sandbox-{sandbox_id}");
    processes()
        .into_iter()
        .filter(|(_, argv)| {
            argv.windows(2).any(|w| {
                w[0] == "-name"
                    && (w[1] == name
                        || w[1].strip_prefix(&name).is_some_and(|r| r.starts_with(',')))
            })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The argv of a running process.
pub fn process_argv(pid: u32) -> Vec<String> {
    processes()
        .into_iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, argv)| argv)
        .unwrap_or_else(|| panic!("process {pid} is not running"))
}

/// The value following `flag` in `argv`.
pub fn arg_after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_str())
}

/// Mount points of this thread's mount namespace (a test may have one of
/// its own, see `tests/exhaustion.rs`), octal escapes decoded.
pub fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| kata_shim::mounts::path_field(p.as_bytes()))
        .collect()
}

/// Unmounts everything on or below `dir`, deepest first (lazily when busy),
/// and returns what it unmounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in &points {
        // A path mounted twice needs one unmount per layer.
        while mount_points().contains(p) {
            if nix::mount::umount(p).is_err()
                && nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_err()
            {
                break;
            }
        }
    }
    points
}

/// A random 64-hex id, the shape CRI-O and containerd use for containers
/// and exec processes.
pub fn hex_id() -> String {
    (0..4).map(|_| kata_shim::boot_check::nonce()).collect()
}

/// Runs `cmd` with piped output, killing it after `limit`; `None` on a
/// timeout. Output is read to EOF, so a child that leaves a descendant
/// holding its stdout or stderr also counts as timed out.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    for (is_err, pipe) in [
        (
            false,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            true,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((is_err, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((false, b)) => stdout = b,
            Ok((true, b)) => stderr = b,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(Output {
                status,
                stdout,
                stderr,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts and removes the shim, VM and share directories of a sandbox:
/// after a failed test only, to keep the host usable for the next one.
pub fn remove_sandbox_dirs(sandbox_id: &str) {
    for dir in [
        Path::new(kata_shim::layout::PERSIST_ROOT).join(sandbox_id),
        Path::new(kata_shim::layout::RUN_ROOT).join(sandbox_id),
        Path::new(kata_shim::layout::SHARE_ROOT).join(sandbox_id),
        kata_shim::layout::mgmt_dir(sandbox_id),
    ] {
        unmount_under(&dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `cmd` to completion and panics with its stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits briefly for a process to be gone (reaped by its parent).
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A shell script printing the pids whose command line is exactly `cmd`
/// (busybox here has no pgrep); the script's own line never matches.
pub fn pids_of_script(cmd: &str) -> String {
    format!(
        "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = '{cmd} ' ] && echo ${{p#/proc/}}; done; true"
    )
}

/// `kata-ctl exec <id>` with `input` on stdin, bounded in time.
pub fn kata_ctl_exec(id: &str, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin("kata-ctl"))
        .args(["exec", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kata-ctl exec");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.expect("kata-ctl exec output"),
        Err(_) => {
            kill9(pid);
            panic!("kata-ctl exec {id} did not finish within 60 s");
        }
    }
}

/// `VmHWM`: the process's peak resident set, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
