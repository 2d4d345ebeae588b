//! VM tests: real QEMU (TCG here), the real guest image built from the
//! installed kernel, the real agent as PID 1, reached over hybrid vsock.
//! They need root and fail, never skip, when a prerequisite is missing.

mod common;

use std::time::Duration;

use common::pod::{Pod, spec};
use common::*;

#[test]
fn vm_boots_virtiofs_answers_and_leaves_nothing() {
    require_vm_host();
    let (_, _, kver) = test_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "shared_fs = \"virtio-fs\"\n", "");
    let id = sandbox_id("virtiofs");
    let run = boot_check(&cfg, &id);
    let r = run.report();
    println!("{}", serde_json::to_string_pretty(&r).expect("json"));
    assert_eq!(r["sandbox_id"], id.as_str());
    assert_eq!(
        r["kernel_release"],
        kver.as_str(),
        "guest runs the kernel the image was built from"
    );
    assert_eq!(r["protocol_version"], kata_agent_protocol::PROTOCOL_VERSION);
    assert_eq!(r["online_cpus"], 1, "default_vcpus = 1");
    assert_eq!(r["shared_fs"], "virtio-fs");
    assert_eq!(r["guest_share_fstype"], "virtiofs");
    assert_eq!(
        r["share_visible"], true,
        "host probe file visible in the guest"
    );
    assert_eq!(r["vsock"], "hybrid");
    assert_eq!(r["accel"], "tcg");
    assert_eq!(
        r["vm_status"], "running",
        "QMP query-status while the guest was up"
    );
    // Issue 14: QEMU ran without a seccomp filter; `-sandbox on` is the
    // default and the guest boots and answers under it.
    assert_eq!(r["qemu_seccomp"], "filter", "QEMU runs under -sandbox on");
    let cmdline = r["kernel_cmdline"].as_str().expect("cmdline");
    for want in [
        "console=hvc0",
        "panic=1",
        "nr_cpus=1",
        "agent.shared_fs=virtiofs",
        "agent.log=info",
    ] {
        assert!(cmdline.contains(want), "{want} missing from {cmdline}");
    }
    assert!(r["uptime_seconds"].as_f64().expect("uptime") > 0.0);
    assert!(
        r["mem_total_kib"].as_u64().expect("mem") > 1024 * 1024,
        "about 2 GiB of guest memory"
    );
    assert_eq!(
        r["stop_how"], "guest power-off",
        "the agent powered the VM off when asked"
    );
    let pid = r["qemu_pid"].as_u64().expect("pid") as u32;
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "qemu {pid} still running"
    );
    assert_no_leaks(&id);
}

#[test]
fn vm_boots_with_9p_share() {
    require_vm_host();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "shared_fs = \"virtio-9p\"\n", "");
    let id = sandbox_id("ninep");
    let r = boot_check(&cfg, &id).report();
    assert_eq!(r["shared_fs"], "virtio-9p");
    assert_eq!(r["guest_share_fstype"], "9p");
    assert_eq!(
        r["qemu_seccomp"], "filter",
        "9p is served under -sandbox on"
    );
    assert_eq!(
        r["share_visible"], true,
        "host probe file visible in the guest over 9p"
    );
    assert!(
        r["kernel_cmdline"]
            .as_str()
            .expect("cmdline")
            .contains("agent.shared_fs=9p")
    );
    assert_no_leaks(&id);
}

#[test]
fn vm_agent_log_line_reaches_the_shim_log_with_the_sandbox_id() {
    require_vm_host();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("kata.test_marker={}", kata_shim::boot_check::nonce());
    let cfg = write_config(dir.path(), &format!("kernel_params = {marker:?}\n"), "");
    let id = sandbox_id("logmarker");
    let run = boot_check(&cfg, &id);
    let _ = run.report();
    let log = run.stderr();
    // The agent logs its command line at start; the shim re-logs each guest
    // console line under the sandbox id.
    let line = log
        .lines()
        .find(|l| l.contains(&marker) && l.contains("kata-agent starting"))
        .unwrap_or_else(|| panic!("marker {marker} not in the shim log:\n{log}"));
    assert!(
        line.contains(&format!("sandbox_id={id}")),
        "no sandbox id on: {line}"
    );
    assert!(
        line.contains("source=\"guest\""),
        "not marked as guest output: {line}"
    );
    assert_no_leaks(&id);
}

#[test]
fn vm_fatal_agent_error_ends_qemu_and_leaves_nothing() {
    require_vm_host();
    let dir = tempfile::tempdir().expect("tempdir");
    // An invalid value for a key the agent owns is fatal: it logs why and
    // powers the VM off.
    let cfg = write_config(
        dir.path(),
        "kernel_params = \"agent.device_timeout=0\"\n",
        "dial_timeout = 120\n",
    );
    let id = sandbox_id("fatal");
    let run = boot_check(&cfg, &id);
    assert!(!run.output.status.success(), "boot-check should fail");
    let err = run.stderr();
    assert!(
        err.contains("VM exited"),
        "error should say the VM exited:\n{err}"
    );
    assert!(
        err.contains("agent.device_timeout"),
        "the agent's fatal error should be in the log:\n{err}"
    );
    assert!(
        run.elapsed < Duration::from_secs(90),
        "failure must come from QEMU's exit, not the 120 s dial deadline ({:?})",
        run.elapsed
    );
    assert_no_leaks(&id);
}

#[test]
fn vm_silent_guest_is_stopped_at_the_dial_deadline() {
    require_vm_host();
    let dir = tempfile::tempdir().expect("tempdir");
    // A guest whose init never starts an agent: busybox sleeping.
    let initrd = dir.path().join("silent.initrd");
    write_silent_initrd(&initrd);
    let cfg = write_config(
        dir.path(),
        &format!("initrd = {:?}\n", initrd.display().to_string()),
        "dial_timeout = 8\n",
    );
    let id = sandbox_id("silent");
    let run = boot_check(&cfg, &id);
    assert!(!run.output.status.success(), "boot-check should fail");
    let err = run.stderr();
    assert!(err.contains("did not answer within 8s"), "{err}");
    assert!(
        err.contains("how=\"QMP quit\""),
        "a guest that does not answer is stopped over QMP:\n{err}"
    );
    assert!(
        run.elapsed >= Duration::from_secs(8),
        "gave up early: {:?}",
        run.elapsed
    );
    assert!(
        run.elapsed < Duration::from_secs(40),
        "overran the deadline: {:?}",
        run.elapsed
    );
    assert_no_leaks(&id);
}

fn write_silent_initrd(path: &std::path::Path) {
    use kata_guest_image::compress::{Compression, compress};
    use kata_guest_image::cpio::{Kind, Tree};
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut t = Tree::new();
    t.file("bin/busybox", 0o755, busybox);
    t.file(
        "init",
        0o755,
        b"#!/bin/busybox sh\nexec /bin/busybox sleep 3600\n".to_vec(),
    );
    t.insert("dev", 0o755, Kind::Dir);
    let archive = t.to_archive().expect("cpio");
    std::fs::write(path, compress(Compression::Gzip, &archive).expect("gzip"))
        .expect("write initrd");
}

#[test]
fn missing_qemu_is_named_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "path = [\"/nonexistent/qemu-system-x86_64\"]\n",
        "",
    );
    let id = sandbox_id("noqemu");
    let run = boot_check(&cfg, &id);
    assert!(!run.output.status.success());
    let err = run.stderr();
    assert!(
        err.contains("QEMU not found (tried /nonexistent/qemu-system-x86_64)"),
        "{err}"
    );
    assert!(
        err.contains("apt-get install -t bookworm-backports qemu-system-x86"),
        "{err}"
    );
    assert_no_leaks(&id);
}

#[test]
fn missing_vhost_device_vsock_is_named_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "vsock = \"hybrid\"\nvhost_user_vsock_daemon = [\"/nonexistent/vhost-device-vsock\"]\n",
        "",
    );
    let id = sandbox_id("novsock");
    let run = boot_check(&cfg, &id);
    assert!(!run.output.status.success());
    let err = run.stderr();
    assert!(err.contains("vhost-device-vsock not found"), "{err}");
    assert!(err.contains("vendor/vhost-device-vsock"), "{err}");
    assert_no_leaks(&id);
}

#[test]
fn missing_kernel_is_named_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "kernel = \"/nonexistent/vmlinuz\"\n", "");
    let id = sandbox_id("nokernel");
    let run = boot_check(&cfg, &id);
    assert!(!run.output.status.success());
    let err = run.stderr();
    assert!(
        err.contains("guest kernel /nonexistent/vmlinuz does not exist"),
        "{err}"
    );
    assert!(err.contains("kata-guest-image"), "{err}");
    assert_no_leaks(&id);
}

/// One line's fields of a /proc/<pid>/status.
fn status_fields(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("{key} missing from the status of {pid}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Issue 14: `rootless = true` runs QEMU and vhost-device-vsock as a uid
/// of the sandbox's own, without capabilities or groups, and two pods
/// never share one; containers still run from the virtio-fs share, and
/// the uid is free again after the pod.
#[test]
fn rootless_vms_run_as_their_own_unprivileged_uids() {
    let mut config = Pod::test_config();
    let q = &mut config.hypervisor.qemu;
    q.rootless = true;
    // The test image lives in the checkout, which may sit where others
    // cannot look (root's home): the unprivileged QEMU gets copies.
    let images = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        let public = |p: &std::path::Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        public(images.path(), 0o755);
        for (name, path) in [
            ("kata.kernel", &mut q.kernel),
            ("kata.initrd", &mut q.initrd),
        ] {
            let copy = images.path().join(name);
            std::fs::copy(&*path, &copy).expect("copy the test image");
            public(&copy, 0o644);
            *path = copy;
        }
    }
    let first = q.rootless_first_uid;
    let range = first..first + q.rootless_uids;
    let pods = [
        Pod::boot_config("rootless-a", &config),
        Pod::boot_config("rootless-b", &config),
    ];
    let mut uids = Vec::new();
    for pod in &pods {
        let vm = &pod.sandbox.as_ref().expect("booted").vm;
        let uid = vm.vmm_user.as_ref().expect("a rootless VM has a user").uid;
        assert!(
            range.contains(&uid),
            "{uid} is outside the configured range"
        );
        let claim = std::path::Path::new(kata_shim::vm::rootless::CLAIMS).join(uid.to_string());
        assert_eq!(
            std::fs::read_link(&claim).expect("claim"),
            std::path::Path::new(&pod.id)
        );
        for (name, pid) in vm.process_pids() {
            let want_uid = if name == "virtiofsd" { 0 } else { uid };
            let uid_s = want_uid.to_string();
            println!(
                "{}: {name} pid {pid}: Uid {:?} Gid {:?} Groups {:?} CapEff {:?} NoNewPrivs {:?} Seccomp {:?}",
                pod.id,
                status_fields(pid, "Uid"),
                status_fields(pid, "Gid"),
                status_fields(pid, "Groups"),
                status_fields(pid, "CapEff"),
                status_fields(pid, "NoNewPrivs"),
                status_fields(pid, "Seccomp"),
            );
            assert_eq!(status_fields(pid, "Uid"), vec![uid_s.as_str(); 4], "{name}");
            if name == "virtiofsd" {
                // It keeps root in its own sandbox to serve files with
                // their owners.
                continue;
            }
            assert_eq!(status_fields(pid, "Gid"), vec![uid_s.as_str(); 4], "{name}");
            assert!(
                status_fields(pid, "Groups").is_empty(),
                "{name}: no groups under TCG"
            );
            assert_eq!(status_fields(pid, "CapEff"), ["0000000000000000"], "{name}");
            assert_eq!(status_fields(pid, "CapPrm"), ["0000000000000000"], "{name}");
            assert_eq!(status_fields(pid, "NoNewPrivs"), ["1"], "{name}");
        }
        assert_eq!(
            status_fields(vm.pid(), "Seccomp"),
            ["2"],
            "QEMU keeps its -sandbox filter"
        );
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two pods never share a uid");

    // The share still works for containers: files of every owner, written
    // and read back from the guest.
    let pod = &pods[0];
    pod.create_sandbox(false);
    let root = pod.rootfs("c1");
    pod.run(
        "c1",
        &spec(
            &root,
            &[
                "/bin/sh",
                "-c",
                "echo hi > /tmp/f && chown 1234 /tmp/f && stat -c '%u %s' /tmp/f /bin/busybox",
            ],
        ),
    );
    let out = String::from_utf8_lossy(&pod.read_all("c1", "", false)).to_string();
    assert_eq!(pod.wait("c1", ""), 0, "container output: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"1234 3"), "{out}");
    assert!(lines.get(1).is_some_and(|l| l.starts_with("0 ")), "{out}");
    pod.remove("c1");

    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    drop(pods);
    let claims = std::fs::read_dir(kata_shim::vm::rootless::CLAIMS)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for (id, uid) in ids.iter().zip(&uids) {
        assert!(
            !claims
                .iter()
                .any(|c| std::fs::read_link(c).is_ok_and(|o| o == std::path::Path::new(id))),
            "claim of {id} left: {claims:?}"
        );
        let running: Vec<u32> = processes()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    s.lines().any(|l| {
                        l.starts_with("Uid:")
                            && l.split_whitespace().nth(1) == Some(&uid.to_string())
                    })
                })
            })
            .collect();
        assert!(
            running.is_empty(),
            "processes of uid {uid} left: {running:?}"
        );
    }
}
