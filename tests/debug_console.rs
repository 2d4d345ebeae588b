//! The agent's debug console and `kata-ctl exec`, on real VMs with the test
//! image: refused when the configuration leaves it off, a working shell
//! with `debug_console_enabled = true` and an image built with
//! `kata-guest-image --debug`. Also the image contents: only the debug
//! image has a shell.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Once;

use common::pod::Pod;
use common::*;
use kata_guest_image::cpio::{self, Kind};
use kata_shim::config::Config;

/// The debug image: the workspace's agent plus busybox, built once per test
/// process into its own directory (the default test image stays shell-free).
fn debug_image() -> (PathBuf, PathBuf) {
    static BUILD: Once = Once::new();
    let out = tmp_dir().join("debug-console-image");
    BUILD.call_once(|| build_guest_image(&out, &["--debug"]));
    (out.join("kata.kernel"), out.join("kata.initrd"))
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn exec_is_refused_when_the_console_is_disabled() {
    let (kernel, initrd, _) = test_image();
    let mut config = Config::default();
    config.hypervisor.qemu.kernel = kernel;
    config.hypervisor.qemu.initrd = initrd;
    config.agent.kata.dial_timeout = 60;
    assert!(!config.agent.kata.debug_console_enabled);
    let pod = Pod::boot_config("dbgcons-off", &config);
    let o = kata_ctl_exec(&pod.id, b"echo DEBUG_MARKER_$((6*7))\nexit\n");
    println!("{}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "the debug console is not enabled for sandbox {}",
            pod.id
        )),
        "{err}"
    );
    assert!(
        err.contains("debug_console_enabled = true") && err.contains("kata-guest-image --debug"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("DEBUG_MARKER_42"));
    drop(pod);
}

#[test]
fn exec_runs_a_shell_with_a_debug_image() {
    let _ = test_image();
    let (kernel, initrd) = debug_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!(
            "kernel = {:?}\ninitrd = {:?}\n",
            kernel.display().to_string(),
            initrd.display().to_string()
        ),
        "debug_console_enabled = true\n",
    );
    let config = Config::load_from(Some(path), &[])
        .expect("load the test configuration")
        .config;
    assert!(config.agent.kata.debug_console_enabled);
    let pod = Pod::boot_config("dbgcons-on", &config);
    let o = kata_ctl_exec(&pod.id, b"echo DEBUG_MARKER_$((6*7))\nid -u\nexit\n");
    println!("{}", show(&o));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("DEBUG_MARKER_42"), "{}", show(&o));
    assert!(
        out.lines().any(|l| l.trim() == "0"),
        "root in the guest: {}",
        show(&o)
    );
    // The console serves every connection, and the pod is still healthy.
    let o = kata_ctl_exec(&pod.id, b"echo again_$((1+1))\n");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("again_2"),
        "{}",
        show(&o)
    );
    // A root shell is served only to a peer with the sandbox's token
    // (issue 14): without it, the console answers DENIED and runs nothing.
    let uds = pod.sandbox.as_ref().expect("booted").vm.paths.vsock_uds();
    let refused = pod.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = kata_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT;
        let wait = std::time::Duration::from_secs(5);
        let mut s = kata_shim::vm::vsock::dial_hybrid(&uds, port, wait)
            .await
            .expect("dial");
        s.write_all(b"echo NO_TOKEN_SHELL\n").await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    });
    println!("without the token the debug console said {refused:?}");
    assert_eq!(refused, "DENIED\n");
    drop(pod);
}

fn initrd_entries(initrd: &Path) -> Vec<cpio::Entry> {
    let raw = std::fs::read(initrd).expect("read initrd");
    let archive = kata_guest_image::compress::decompress_initrd(&raw).expect("decompress initrd");
    cpio::read_archive(&archive).expect("parse initrd")
}

#[test]
fn only_the_debug_image_has_a_shell() {
    let (_, initrd, _) = test_image();
    let plain = initrd_entries(&initrd);
    for p in ["bin/sh", "bin/busybox"] {
        assert!(
            !plain.iter().any(|e| e.path == p),
            "default image must not have /{p}"
        );
    }
    let (_, debug_initrd) = debug_image();
    let debug = initrd_entries(&debug_initrd);
    let sh = debug
        .iter()
        .find(|e| e.path == "bin/sh")
        .expect("debug image has /bin/sh");
    assert_eq!(sh.kind, Kind::Symlink("busybox".into()));
    let bb = debug
        .iter()
        .find(|e| e.path == "bin/busybox")
        .expect("debug image has /bin/busybox");
    assert!(matches!(&bb.kind, Kind::File(d) if d.starts_with(b"\x7fELF")));
    // The manifests say the same.
    let manifest = |initrd: &Path| {
        let dir = std::fs::canonicalize(initrd)
            .expect("resolve initrd")
            .parent()
            .expect("kver dir")
            .join("manifest.json");
        kata_guest_image::manifest::read(&dir)
            .expect("read manifest")
            .expect("manifest exists")
    };
    assert!(manifest(&initrd).debug_shell.is_none());
    let m = manifest(&debug_initrd);
    let shell = m.debug_shell.expect("debug manifest records busybox");
    assert_eq!(shell.guest_path, "/bin/busybox");
}
