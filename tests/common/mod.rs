//! Shared fixtures of the root and VM tests: prerequisites that fail loudly,
//! the test guest image, per-test configurations, running `kata-ctl
//! boot-check`, and the per-sandbox leak check.

#![allow(dead_code)]

pub mod pod;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (this test's profile).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kata-ctl"))
        .parent()
        .expect("binary has a parent directory")
        .to_path_buf()
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
            "cargo install --locked vhost-device-vsock (or make deps)",
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
}

/// The test guest image: built from the workspace's agent into
/// target/test-images once per test process (the builder is a no-op when
/// up to date and takes a lock, so parallel test processes are safe).
pub fn test_image() -> (PathBuf, PathBuf, String) {
    static BUILD: Once = Once::new();
    let out = bin_dir().parent().expect("target dir").join("test-images");
    BUILD.call_once(|| {
        let o = Command::new(bin("kata-guest-image"))
            .arg("--agent")
            .arg(bin("kata-agent"))
            .arg("--output-dir")
            .arg(&out)
            .output()
            .expect("run kata-guest-image");
        assert!(
            o.status.success(),
            "building the test image failed (is linux-image-amd64 installed? make deps): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
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

/// Asserts that nothing of `sandbox_id` is left: no process mentions it, no
/// state or share directory, no mount.
pub fn assert_no_leaks(sandbox_id: &str) {
    let mut leaks = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(sandbox_id) {
                leaks.push(format!("process {}: {cmdline}", name.to_string_lossy()));
            }
        }
    }
    for dir in [
        Path::new(kata_shim::vm::RUN_ROOT).join(sandbox_id),
        Path::new(kata_shim::vm::SHARE_ROOT).join(sandbox_id),
    ] {
        if dir.exists() {
            leaks.push(format!("directory {}", dir.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for m in mounts.lines().filter(|l| l.contains(sandbox_id)) {
        leaks.push(format!("mount {m}"));
    }
    assert!(
        leaks.is_empty(),
        "sandbox {sandbox_id} leaked:\n{}",
        leaks.join("\n")
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
