//! `kata-ctl check` and `kata-ctl env` run as an operator runs them, on this
//! host, with a configuration pointing at the test image. Every expectation
//! is computed from the host at test time (the running kernel, the image's
//! manifest, the devices present), so the tests state the truth here and
//! stay true on a host where, say, KVM works or the kernels match. No VM is
//! booted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use kata_shim::vm::accel::{self, HostVirt};
use kata_shim::vm::qemu::cmdline::Accel;

/// One parsed `check` line.
#[derive(Debug)]
struct Line {
    status: String,
    name: String,
    text: String,
}

struct Checked {
    output: Output,
    lines: Vec<Line>,
    stdout: String,
}

impl Checked {
    fn line(&self, name: &str) -> &Line {
        self.lines
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{}", self.stdout))
    }
}

fn kata_ctl(args: &[&str]) -> Command {
    let mut c = Command::new(bin("kata-ctl"));
    c.args(args).env_remove("KATA_CONF_FILE");
    c
}

fn check(config: &Path) -> Checked {
    let output = kata_ctl(&["check", "--config"])
        .arg(config)
        .output()
        .expect("run kata-ctl check");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    // `<status:6><name:12> <text>`, then the summary line.
    let lines = stdout
        .lines()
        .filter(|l| !l.starts_with("check: "))
        .map(|l| {
            assert!(l.len() > 19, "short line {l:?}");
            Line {
                status: l[..6].trim().to_string(),
                name: l[6..18].trim().to_string(),
                text: l[19..].to_string(),
            }
        })
        .collect();
    Checked {
        output,
        lines,
        stdout,
    }
}

fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read osrelease")
        .trim()
        .to_string()
}

/// The kernel release the test image's manifest records.
fn image_release() -> String {
    let (_, initrd, kver) = test_image();
    let dir = std::fs::canonicalize(&initrd)
        .expect("initrd resolves")
        .parent()
        .expect("initrd has a directory")
        .to_path_buf();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("read manifest"),
    )
    .expect("manifest is JSON");
    let release = manifest["kernel_release"]
        .as_str()
        .expect("kernel_release")
        .to_string();
    assert_eq!(release, kver, "the image directory is named by its release");
    release
}

/// The QEMU the default path list resolves to here, and its version line.
fn default_qemu() -> (PathBuf, String) {
    let q = kata_shim::config::Qemu::default();
    let bin = q
        .path
        .iter()
        .find(|p| p.is_file())
        .expect("a QEMU from the default path list is installed (make deps)")
        .clone();
    let out = run_ok(Command::new(&bin).arg("--version"));
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .expect("a version line")
        .trim()
        .to_string();
    (bin, version)
}

#[test]
fn check_tells_the_truth_about_this_host() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let config = write_config(dir.path(), "", "");
    let c = check(&config);
    assert!(
        c.output.status.success(),
        "check exits 0 where pods can run: {}\n{}",
        c.output.status,
        c.stdout
    );
    for l in &c.lines {
        assert!(["ok", "warn", "fail"].contains(&l.status.as_str()), "{l:?}");
        if l.status != "ok" {
            assert!(l.text.contains(" (fix: "), "warn/fail carry a fix: {l:?}");
        }
    }
    assert_eq!(c.line("config").text, config.display().to_string());

    // What the shim's own probe decides here.
    match accel::choose(kata_shim::config::Accel::Auto, HostVirt::probe()).accel {
        Accel::Tcg => {
            let l = c.line("accel");
            assert_eq!(l.status, "warn", "{l:?}");
            assert!(l.text.starts_with("TCG: "), "{l:?}");
        }
        Accel::Kvm => assert_eq!(c.line("accel").status, "ok"),
    }
    let vsock = c.line("vsock");
    if Path::new("/dev/vhost-vsock").exists() {
        assert_eq!(vsock.status, "ok", "{vsock:?}");
    } else {
        assert_eq!(vsock.status, "warn", "{vsock:?}");
        assert!(vsock.text.starts_with("hybrid: "), "{vsock:?}");
        assert!(vsock.text.contains("vhost-device-vsock"), "{vsock:?}");
    }

    let (qemu, version) = default_qemu();
    let l = c.line("qemu");
    assert_eq!(l.status, "ok", "{l:?}");
    assert_eq!(l.text, format!("{}: {version}", qemu.display()));
    assert_eq!(c.line("qemu-devices").status, "ok");
    assert_eq!(c.line("kernel").status, "ok");
    assert_eq!(c.line("initrd").status, "ok");

    let (built, running) = (image_release(), running_release());
    let image = c.line("image");
    if built == running {
        assert_eq!(image.status, "ok", "{image:?}");
        assert!(image.text.contains(&built), "{image:?}");
    } else {
        assert_eq!(image.status, "warn", "{image:?}");
        assert!(
            image.text.contains(&format!("built for {built}")),
            "{image:?}"
        );
        assert!(
            image.text.contains(&format!("host runs {running}")),
            "{image:?}"
        );
        assert!(image.text.contains("kata-guest-image"), "{image:?}");
    }
    assert_eq!(c.line("cgroup").status, "ok");

    let count = |s: &str| c.lines.iter().filter(|l| l.status == s).count();
    let summary = format!("check: {} ok, {} warn, 0 fail", count("ok"), count("warn"));
    assert_eq!(c.stdout.lines().last(), Some(summary.as_str()));
}

#[test]
fn check_fails_on_a_missing_qemu_with_the_path_and_the_fix() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let missing = dir.path().join("no-such-qemu");
    let config = write_config(dir.path(), &format!("path = [{:?}]", missing), "");
    let c = check(&config);
    assert_eq!(c.output.status.code(), Some(1), "{}", c.stdout);
    let l = c.line("qemu");
    assert_eq!(l.status, "fail", "{l:?}");
    assert!(l.text.contains(&missing.display().to_string()), "{l:?}");
    assert!(l.text.contains("(fix: apt-get install"), "{l:?}");
    assert!(
        c.stdout.ends_with(" 1 fail\n"),
        "summary counts it:\n{}",
        c.stdout
    );
}

#[test]
fn check_fails_on_a_missing_initrd_with_the_path_and_the_fix() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let missing = dir.path().join("kata.initrd");
    let config = write_config(dir.path(), &format!("initrd = {:?}", missing), "");
    let c = check(&config);
    assert_eq!(c.output.status.code(), Some(1), "{}", c.stdout);
    let l = c.line("initrd");
    assert_eq!(l.status, "fail", "{l:?}");
    assert!(l.text.contains(&missing.display().to_string()), "{l:?}");
    assert!(
        l.text
            .contains("(fix: build the guest image with kata-guest-image"),
        "{l:?}"
    );
}

#[test]
fn check_json_and_an_invalid_configuration() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let config = write_config(dir.path(), "", "");
    let out = kata_ctl(&["check", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["summary"]["fail"], 0);
    let checks = v["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "qemu" && c["status"] == "ok")
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hypervisor.qemu]\ndefault_vcpu = 1\n").expect("write");
    let c = check(&bad);
    assert_eq!(c.output.status.code(), Some(1));
    let l = c.line("config");
    assert_eq!(l.status, "fail");
    assert!(l.text.contains("hypervisor.qemu.default_vcpu"), "{l:?}");
}

#[test]
fn env_json_names_the_loaded_file_and_the_resolved_paths() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let config = write_config(dir.path(), "", "");
    let (_, initrd, _) = test_image();
    let out = run_ok(kata_ctl(&["env", "--json", "--config"]).arg(&config));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("env --json is JSON");
    assert_eq!(v["config_file"], config.display().to_string());
    let (qemu, _) = default_qemu();
    assert_eq!(v["resolved"]["qemu"], qemu.display().to_string());
    assert_eq!(
        v["config"]["hypervisor"]["qemu"]["initrd"],
        initrd.display().to_string()
    );
    assert_eq!(v["resolved"]["image_kernel_release"], image_release());
    assert_eq!(v["resolved"]["host_kernel_release"], running_release());
    assert_eq!(v["resolved"]["run_root"], kata_shim::layout::RUN_ROOT);
    assert_eq!(v["resolved"]["share_root"], kata_shim::layout::SHARE_ROOT);
    assert_eq!(
        v["resolved"]["persist_root"],
        kata_shim::layout::PERSIST_ROOT
    );
}

#[test]
fn env_toml_follows_kata_conf_file_like_the_shim() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let config = write_config(dir.path(), "default_vcpus = 2", "");
    let out = run_ok(
        Command::new(bin("kata-ctl"))
            .arg("env")
            .env("KATA_CONF_FILE", &config),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let t: toml::Table = toml::from_str(&text).expect("env prints TOML");
    assert_eq!(
        t["config_file"].as_str(),
        Some(config.display().to_string().as_str())
    );
    assert_eq!(
        t["config"]["hypervisor"]["qemu"]["default_vcpus"].as_integer(),
        Some(2)
    );
    assert!(t["resolved"]["qemu"].is_str(), "{text}");

    // An explicit --config wins over the environment.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "").expect("write");
    let out = run_ok(
        Command::new(bin("kata-ctl"))
            .args(["env", "--json", "--config"])
            .arg(&other)
            .env("KATA_CONF_FILE", &config),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["config_file"], other.display().to_string());
    assert_eq!(v["config"]["hypervisor"]["qemu"]["default_vcpus"], 1);
}

/// Issue 16: `check --nfd` is a Node Feature Discovery feature file: the
/// `runtime.kata` label where pods can run, nothing (NFD then drops the
/// label) where they cannot, with `check`'s exit status.
#[test]
fn check_nfd_prints_the_runtime_label_only_where_pods_can_run() {
    let dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let good = write_config(dir.path(), "", "");
    let out = kata_ctl(&["check", "--nfd", "--config"])
        .arg(&good)
        .output()
        .expect("run kata-ctl check --nfd");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "feature.node.kubernetes.io/runtime.kata=true\n"
    );
    let bad_dir = tempfile::tempdir_in(tmp_dir()).expect("tempdir");
    let missing = bad_dir.path().join("no-such-qemu");
    let bad = write_config(bad_dir.path(), &format!("path = [{missing:?}]"), "");
    let out = kata_ctl(&["check", "--nfd", "--config"])
        .arg(&bad)
        .output()
        .expect("run kata-ctl check --nfd");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
