//! Security-relevant OCI spec fields, checked inside a real VM: seccomp,
//! no_new_privileges, rlimits, oomScoreAdj, uid/gid/additional gids,
//! sysctls, devices, masked and read-only paths, and a symlink race on a
//! mount target that must never mount outside the container's rootfs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pod::*;
use kata_agent_protocol::agent;
use kata_shim::agent_client::call_context;
use serde_json::{Value, json};

/// What one container printed and how it exited.
struct Ran {
    code: i32,
    out: String,
    err: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}, stdout {:?}, stderr {:?}",
            self.code, self.out, self.err
        )
    }
}

/// Runs a container to completion and removes it.
fn run_to_end(pod: &Pod, cid: &str, spec: &Value) -> Ran {
    pod.run(cid, spec);
    let out = String::from_utf8_lossy(&pod.read_all(cid, "", false)).to_string();
    let err = String::from_utf8_lossy(&pod.read_all(cid, "", true)).to_string();
    let code = pod.wait(cid, "");
    pod.remove(cid);
    Ran { code, out, err }
}

/// A fresh rootfs for `cid` and a spec running `script` in it.
fn sh(pod: &Pod, cid: &str, script: &str) -> Value {
    let root = pod.rootfs(cid);
    spec(&root, &["/bin/sh", "-c", script])
}

/// The value of `key:` in a /proc/<pid>/status dump.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Issue 14: the guest writes through virtiofsd or QEMU's 9p server, both
/// root on the host, so a setuid-root program or a device node it makes in
/// its rootfs is real on the node. (9p's `mapped-xattr` model would keep
/// them virtual, but it cannot read the symlinks of a rootfs made on the
/// host: busybox's `/bin/sh` is not found.) The host side of every bind in
/// the share is `nosuid,nodev`, so what the guest made is inert there, and
/// the share root itself is read-only to the guest.
#[test]
fn guest_made_setuid_and_device_files_are_inert_on_the_host() {
    use std::os::unix::fs::MetadataExt;
    for (name, fs) in [
        ("virtiofs", kata_shim::config::SharedFs::VirtioFs),
        ("ninep", kata_shim::config::SharedFs::Virtio9p),
    ] {
        let mut config = Pod::test_config();
        config.hypervisor.qemu.shared_fs = fs;
        let pod = Pod::boot_config(&format!("inert-{name}"), &config);
        pod.create_sandbox(false);
        let script = "cp /bin/busybox /suid && chmod 4755 /suid && mknod /hostnull c 1 3 && \
                      stat -c '%a %F' /suid /hostnull";
        let r = run_to_end(&pod, "c1", &sh(&pod, "c1", script));
        assert_eq!(r.code, 0, "{name}: {r}");
        let root = pod.share().join("c1").join("rootfs");
        let suid = std::fs::metadata(root.join("suid")).expect("suid on the host");
        let opened = std::fs::File::open(root.join("hostnull")).map(drop);
        let vfs = nix::sys::statvfs::statvfs(&root).expect("statvfs");
        println!(
            "{name}: guest sees {:?}; host: suid mode {:o}, mount flags {:?}, opening the \
             device node: {:?}",
            r.out.trim(),
            suid.mode() & 0o7777,
            vfs.flags(),
            opened.as_ref().map_err(|e| e.kind())
        );
        assert!(r.out.contains("4755 regular file"), "{name}: {r}");
        assert!(r.out.contains("character special file"), "{name}: {r}");
        use nix::sys::statvfs::FsFlags;
        assert!(
            vfs.flags().contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
            "{name}: the host side of the rootfs bind lacks nosuid,nodev: {:?}",
            vfs.flags()
        );
        assert_eq!(
            opened
                .expect_err("the host's device opened through the share")
                .raw_os_error(),
            Some(nix::libc::EACCES),
            "{name}"
        );
        // Nothing the guest asks can create at the share's root.
        assert_eq!(
            std::fs::write(pod.share().join("guest-file"), "x")
                .expect_err("the share root is read-only")
                .raw_os_error(),
            Some(nix::libc::EROFS),
            "{name}"
        );
    }
}

/// Issue 14: under kernel vhost-vsock any local user could reach the agent
/// (it listened on VMADDR_CID_ANY, the CID is in QEMU's argv, and nothing
/// was checked). Every connection now starts with the sandbox's token; the
/// check is the same whatever the transport, and is shown here over
/// hybrid vsock.
#[test]
fn the_agent_refuses_a_connection_without_the_sandboxs_token() {
    use kata_shim::vm::token::{AgentToken, AuthError};
    use kata_shim::vm::vsock::dial_hybrid;
    let pod = Pod::boot_vm("token");
    let sb = pod.sandbox.as_ref().expect("booted");
    let uds = sb.vm.paths.vsock_uds();
    let token = sb
        .vm
        .agent_token
        .clone()
        .expect("a sandbox with a share has a token");
    let port = kata_agent_protocol::AGENT_VSOCK_PORT;
    let wait = Duration::from_secs(5);
    pod.rt.block_on(async {
        // No token: the agent reads the ttrpc request as the token line,
        // refuses it and closes; the call fails.
        let s = dial_hybrid(&uds, port, wait).await.expect("dial");
        let client = kata_shim::agent_client::AgentClient::from_socket(s.into());
        let e = client
            .check_health(wait)
            .await
            .expect_err("answered without a token");
        println!("without a token: {e}");
        // Someone else's token.
        let mut s = dial_hybrid(&uds, port, wait).await.expect("dial");
        let other = AgentToken::generate().expect("token");
        assert_eq!(
            other.present(&mut s, wait).await,
            Err(AuthError::Refused("DENIED".into()))
        );
        // The sandbox's own token: the agent answers.
        let mut s = dial_hybrid(&uds, port, wait).await.expect("dial");
        token.present(&mut s, wait).await.expect("the right token");
        let client = kata_shim::agent_client::AgentClient::from_socket(s.into());
        client
            .check_health(wait)
            .await
            .expect("health with the token");
    });
    // The token is nowhere in QEMU's argv, which every local user can read.
    let pid = sb.vm.pid();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("argv");
    let secret = std::fs::read_to_string(pod.share().join(kata_agent_protocol::auth::FILE))
        .expect("token file");
    assert!(
        !String::from_utf8_lossy(&argv).contains(secret.trim()),
        "the token is in QEMU's argv"
    );
}

#[test]
fn seccomp_profile_blocks_a_syscall() {
    let pod = Pod::boot("seccomp");
    let script = "mkdir /tmp/x && echo MADE; grep Seccomp: /proc/self/status";
    let mut s = sh(&pod, "c1", script);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    });
    let r = run_to_end(&pod, "c1", &s);
    assert!(!r.out.contains("MADE"), "mkdir was not blocked: {r}");
    assert!(
        r.err.contains("Operation not permitted"),
        "mkdir should fail with EPERM: {r}"
    );
    // 2 = SECCOMP_MODE_FILTER.
    assert_eq!(status_field(&r.out, "Seccomp"), Some("2"), "{r}");

    // The same command without the profile succeeds.
    let r = run_to_end(&pod, "c2", &sh(&pod, "c2", script));
    assert!(r.out.contains("MADE"), "mkdir without a profile: {r}");
    assert_eq!(status_field(&r.out, "Seccomp"), Some("0"), "{r}");
    assert_eq!(r.code, 0, "{r}");

    // A profile whose default is to refuse everything with EPERM keeps the
    // container from even exec'ing its process: create or start fails, or
    // the process dies at once; either way nothing runs.
    let mut s = sh(&pod, "c3", "echo RAN");
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1});
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c3".into();
    req.oci_spec_json = serde_json::to_vec(&s).expect("json");
    let created =
        pod.try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await });
    match created {
        Err(e) => {
            let msg = format!("{e:?}");
            assert!(!msg.contains("UNKNOWN"), "unclear error code: {msg}");
        }
        Ok(_) => {
            let mut req = agent::ContainerRequest::new();
            req.container_id = "c3".into();
            let started =
                pod.try_call(
                    |a| async move { a.raw().start_container(call_context(CALL), &req).await },
                );
            if started.is_ok() {
                let out = pod.read_all("c3", "", false);
                assert!(out.is_empty(), "a deny-all profile let the process run");
                assert_ne!(pod.wait("c3", ""), 0);
            }
            pod.remove("c3");
        }
    }
}

#[test]
fn no_new_privileges_is_visible() {
    let pod = Pod::boot("nnp");
    let script = "grep NoNewPrivs: /proc/self/status";
    for (i, nnp) in [true, false, true].into_iter().enumerate() {
        let cid = format!("c{i}");
        let mut s = sh(&pod, &cid, script);
        s["process"]["noNewPrivileges"] = json!(nnp);
        let r = run_to_end(&pod, &cid, &s);
        assert_eq!(r.code, 0, "{r}");
        assert_eq!(
            status_field(&r.out, "NoNewPrivs"),
            Some(if nnp { "1" } else { "0" }),
            "noNewPrivileges={nnp}: {r}"
        );
    }

    // Execs follow their own process spec, not the init's.
    let mut s = sh(&pod, "c9", "sleep 1000");
    s["process"]["noNewPrivileges"] = json!(true);
    pod.run("c9", &s);
    for (eid, nnp) in [("e1", false), ("e2", true)] {
        let mut p = process(&["/bin/sh", "-c", script], false);
        p["noNewPrivileges"] = json!(nnp);
        pod.exec("c9", eid, &p);
        let out = String::from_utf8_lossy(&pod.read_all("c9", eid, false)).to_string();
        assert_eq!(pod.wait("c9", eid), 0, "{out}");
        assert_eq!(
            status_field(&out, "NoNewPrivs"),
            Some(if nnp { "1" } else { "0" }),
            "exec noNewPrivileges={nnp}: {out}"
        );
    }
    pod.signal("c9", "", 9);
    assert_eq!(pod.wait("c9", ""), 137);
    pod.remove("c9");
}

#[test]
fn rlimits_are_applied_including_raised_ones() {
    let pod = Pod::boot("rlimits");
    let script = "ulimit -n; grep -E 'Max (open files|processes|core file size)' /proc/self/limits";
    let mut s = sh(&pod, "c1", script);
    s["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 4096}
    ]);
    let r = run_to_end(&pod, "c1", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.lines().next(), Some("4096"), "ulimit -n: {r}");

    // Above the kernel's default hard limit for PID 1 (4096), which needs
    // CAP_SYS_RESOURCE in the runtime; soft and hard apart; several types.
    let mut s = sh(&pod, "c2", script);
    s["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 65536},
        {"type": "RLIMIT_NPROC", "soft": 333, "hard": 444},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    ]);
    let r = run_to_end(&pod, "c2", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.lines().next(), Some("2048"), "ulimit -n: {r}");
    let limit = |name: &str| -> Vec<String> {
        r.out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {r}"))
            .trim_start_matches(name)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(limit("Max open files")[..2], ["2048", "65536"], "{r}");
    assert_eq!(limit("Max processes")[..2], ["333", "444"], "{r}");
    assert_eq!(limit("Max core file size")[..2], ["0", "0"], "{r}");
}

#[test]
fn oom_score_adj_is_applied_and_does_not_leak() {
    let pod = Pod::boot("oomscore");
    let script = "cat /proc/self/oom_score_adj";
    // Baseline: what a container gets without the field.
    let base = run_to_end(&pod, "c0", &sh(&pod, "c0", script));
    assert_eq!(base.code, 0, "{base}");
    let baseline = base.out.trim().to_string();

    let mut s = sh(&pod, "c1", script);
    s["process"]["oomScoreAdj"] = json!(500);
    let r = run_to_end(&pod, "c1", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.trim(), "500", "{r}");

    // An exec with its own value.
    let mut s = sh(&pod, "c2", "sleep 1000");
    s["process"]["oomScoreAdj"] = json!(-300);
    pod.run("c2", &s);
    let mut p = process(&["/bin/sh", "-c", script], false);
    p["oomScoreAdj"] = json!(200);
    pod.exec("c2", "e1", &p);
    let out = String::from_utf8_lossy(&pod.read_all("c2", "e1", false)).to_string();
    assert_eq!(pod.wait("c2", "e1"), 0);
    assert_eq!(out.trim(), "200", "exec oomScoreAdj");
    pod.signal("c2", "", 9);
    assert_eq!(pod.wait("c2", ""), 137);
    pod.remove("c2");

    // Setting it for one container must not change the agent's own score,
    // which every later container would then inherit.
    let after = run_to_end(&pod, "c3", &sh(&pod, "c3", script));
    assert_eq!(after.code, 0, "{after}");
    assert_eq!(
        after.out.trim(),
        baseline,
        "oomScoreAdj of an earlier container leaked into a later one"
    );
}

#[test]
fn user_and_additional_gids() {
    let pod = Pod::boot("ids");
    let script = "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups):' /proc/self/status";
    let mut s = sh(&pod, "c1", script);
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
    let r = run_to_end(&pod, "c1", &s);
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.first(), Some(&"1000"), "id -u: {r}");
    assert_eq!(lines.get(1), Some(&"1000"), "id -g: {r}");
    let mut groups: Vec<&str> = lines.get(2).copied().unwrap_or("").split(' ').collect();
    groups.sort_unstable();
    assert_eq!(groups, ["1000", "2000", "3000"], "id -G: {r}");
    let uids: Vec<&str> = status_field(&r.out, "Uid")
        .expect("Uid")
        .split_whitespace()
        .collect();
    assert_eq!(uids, ["1000"; 4], "real, effective, saved, fs uid: {r}");
    let gids: Vec<&str> = status_field(&r.out, "Gid")
        .expect("Gid")
        .split_whitespace()
        .collect();
    assert_eq!(gids, ["1000"; 4], "{r}");
    assert_eq!(status_field(&r.out, "Groups"), Some("2000 3000"), "{r}");

    // Root without additional gids has no supplementary groups (the
    // agent's are not inherited).
    let r = run_to_end(&pod, "c2", &sh(&pod, "c2", script));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(status_field(&r.out, "Groups"), Some(""), "{r}");

    // An exec with its own user.
    let mut s = sh(&pod, "c3", "sleep 1000");
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    pod.run("c3", &s);
    let mut p = process(&["/bin/sh", "-c", script], false);
    p["user"] = json!({"uid": 1001, "gid": 1002, "additionalGids": [4000]});
    pod.exec("c3", "e1", &p);
    let out = String::from_utf8_lossy(&pod.read_all("c3", "e1", false)).to_string();
    assert_eq!(pod.wait("c3", "e1"), 0, "{out}");
    assert_eq!(status_field(&out, "Groups"), Some("4000"), "{out}");
    assert!(out.starts_with("1001\n1002\n"), "{out}");
    pod.signal("c3", "", 9);
    assert_eq!(pod.wait("c3", ""), 137);
    pod.remove("c3");
}

#[test]
fn sysctls_are_applied_in_the_container_namespaces() {
    let pod = Pod::boot("sysctl");
    let script = "cat /proc/sys/kernel/shmmax /proc/sys/kernel/msgmax";
    let mut s = sh(&pod, "c1", script);
    s["linux"]["sysctl"] = json!({"kernel.shmmax": "123456789", "kernel.msgmax": "4321"});
    let r = run_to_end(&pod, "c1", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out, "123456789\n4321\n", "{r}");

    // Another container's ipc namespace keeps the kernel defaults.
    let r = run_to_end(&pod, "c2", &sh(&pod, "c2", script));
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.out.contains("123456789"), "ipc sysctl leaked: {r}");
    assert!(!r.out.contains("4321"), "ipc sysctl leaked: {r}");

    // A sysctl that is not namespaced would change the whole guest: refused.
    for (i, key) in ["kernel.core_pattern", "vm.overcommit_memory"]
        .into_iter()
        .enumerate()
    {
        let cid = format!("bad{i}");
        let mut s = sh(&pod, &cid, "true");
        s["linux"]["sysctl"] = json!({key: "1"});
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.clone();
        req.oci_spec_json = serde_json::to_vec(&s).expect("json");
        let e = pod
            .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
            .expect_err(&format!("host sysctl {key} refused"));
        let msg = assert_code(e, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains(key), "{msg}");
    }
    // ... and did not reach the guest.
    let r = run_to_end(
        &pod,
        "c3",
        &sh(&pod, "c3", "cat /proc/sys/kernel/core_pattern"),
    );
    assert_ne!(r.out.trim(), "1", "{r}");

    // The pod's network namespace is the VM's: a Kubernetes "safe" net
    // sysctl of the pod is applied there.
    let mut s = sh(
        &pod,
        "c4",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
    );
    s["linux"]["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "80"});
    let r = run_to_end(&pod, "c4", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.trim(), "80", "{r}");
}

#[test]
fn devices_are_created() {
    let pod = Pod::boot("devices");
    let script = "test -c /dev/mynull && echo CHAR; stat -c '%t %T %a %u %g' /dev/mynull; \
                  echo data > /dev/mynull && echo WROTE; wc -c </dev/mynull";
    let mut s = sh(&pod, "c1", script);
    s["linux"]["devices"] = json!([
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let r = run_to_end(&pod, "c1", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out, "CHAR\n1 3 666 0 0\nWROTE\n0\n", "{r}");

    // Without it, there is no such node.
    let r = run_to_end(&pod, "c2", &sh(&pod, "c2", "test -e /dev/mynull"));
    assert_eq!(r.code, 1, "{r}");

    // A device may not be placed outside /dev.
    let mut s = sh(&pod, "c3", "true");
    s["linux"]["devices"] = json!([
        {"path": "/../../../dev/evil", "type": "c", "major": 1, "minor": 3, "fileMode": 438}
    ]);
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c3".into();
    req.oci_spec_json = serde_json::to_vec(&s).expect("json");
    let created =
        pod.try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await });
    if created.is_ok() {
        pod.remove("c3");
    }
    assert!(
        !std::path::Path::new("/run/kata-containers/shared/evil").exists(),
        "a device escaped"
    );
    let r = run_to_end(&pod, "c4", &sh(&pod, "c4", "echo ok"));
    assert_eq!(r.out, "ok\n", "{r}");
}

#[test]
fn masked_and_read_only_paths() {
    let pod = Pod::boot("masked");
    let script = "echo x > /proc/sys/kernel/domainname && echo SYS_WRITABLE; \
                  echo h > /proc/sysrq-trigger && echo SYSRQ_WRITABLE; \
                  mount -o remount,rw /proc/sys && echo REMOUNTED; \
                  echo KEYS $(wc -c </proc/keys); \
                  echo TIMER $(wc -c </proc/timer_list); \
                  echo FIRMWARE $(ls -A /sys/firmware | wc -l); \
                  echo SCSI $(ls -A /proc/scsi 2>/dev/null | wc -l); \
                  grep -E ' /proc/sys | /proc/sysrq-trigger ' /proc/self/mountinfo";
    let r = run_to_end(&pod, "c1", &sh(&pod, "c1", script));
    for bad in ["SYS_WRITABLE", "SYSRQ_WRITABLE", "REMOUNTED"] {
        assert!(!r.out.contains(bad), "{bad}: {r}");
    }
    for masked in ["KEYS 0", "TIMER 0", "FIRMWARE 0", "SCSI 0"] {
        assert!(r.out.contains(&format!("{masked}\n")), "{masked}: {r}");
    }
    let ro_mounts: Vec<&str> = r.out.lines().filter(|l| l.contains(" - ")).collect();
    assert_eq!(ro_mounts.len(), 2, "{r}");
    for m in ro_mounts {
        let opts = m.split(' ').nth(5).unwrap_or("");
        assert!(opts.split(',').any(|o| o == "ro"), "not read-only: {m}");
    }

    // Control: without readonlyPaths the write succeeds (the uts namespace
    // keeps it to the container), so the check above is not vacuous.
    let mut s = sh(
        &pod,
        "c2",
        "echo x > /proc/sys/kernel/domainname && echo SYS_WRITABLE; cat /proc/sys/kernel/domainname",
    );
    s["linux"]["readonlyPaths"] = json!([]);
    s["process"]["capabilities"]["bounding"]
        .as_array_mut()
        .expect("caps")
        .push(json!("CAP_SYS_ADMIN"));
    for set in ["effective", "permitted"] {
        s["process"]["capabilities"][set]
            .as_array_mut()
            .expect("caps")
            .push(json!("CAP_SYS_ADMIN"));
    }
    let r = run_to_end(&pod, "c2", &s);
    assert!(r.out.contains("SYS_WRITABLE\nx\n"), "{r}");

    // ... and the guest's own domainname is untouched.
    let r = run_to_end(
        &pod,
        "c3",
        &sh(&pod, "c3", "cat /proc/sys/kernel/domainname"),
    );
    assert_ne!(r.out.trim(), "x", "{r}");

    // Masked and read-only paths also hold for an exec.
    let root = pod.rootfs("c4");
    pod.run("c4", &spec(&root, &["/bin/sleep", "1000"]));
    pod.exec(
        "c4",
        "e1",
        &process(
            &[
                "/bin/sh",
                "-c",
                "echo x > /proc/sys/kernel/domainname && echo SYS_WRITABLE; echo KEYS $(wc -c </proc/keys)",
            ],
            false,
        ),
    );
    let out = String::from_utf8_lossy(&pod.read_all("c4", "e1", false)).to_string();
    pod.wait("c4", "e1");
    assert!(!out.contains("SYS_WRITABLE"), "{out}");
    assert!(out.contains("KEYS 0\n"), "{out}");
    pod.signal("c4", "", 9);
    assert_eq!(pod.wait("c4", ""), 137);
    pod.remove("c4");
}

/// The guest's mount table (mount point and type of each mount), read as
/// PID 1's from a container that shares the guest's pid namespace.
fn guest_mounts(pod: &Pod, cid: &str) -> Vec<String> {
    let mut s = sh(
        pod,
        cid,
        "cat /proc/1/mountinfo; test -r /proc/1/root/proc/1/status && echo GUEST_PROC_OK",
    );
    s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    // Reading through /proc/1/root needs ptrace access to the agent.
    for set in ["bounding", "effective", "permitted"] {
        s["process"]["capabilities"][set]
            .as_array_mut()
            .expect("caps")
            .push(json!("CAP_SYS_PTRACE"));
    }
    let r = run_to_end(pod, cid, &s);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.out.contains("GUEST_PROC_OK"),
        "the guest's /proc no longer works: {r}"
    );
    let mut mounts: Vec<String> = r
        .out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(format!("{} {}", f.get(4)?, f.get(sep + 1)?))
        })
        // Rootfs binds in the share are virtio-fs submounts while the test
        // holds them (the probe's own, and `race`, which several container
        // ids use in turn); the agent releases them by container id.
        .filter(|m| !m.starts_with(&format!("{GUEST_SHARE}/")))
        .collect();
    assert!(
        mounts.iter().any(|m| m == "/proc proc"),
        "no /proc in the guest's mount table: {r}"
    );
    mounts.sort();
    mounts
}

/// A container that reports whether its /proc is real and how many mounts
/// are at /target, where the spec puts a tmpfs.
fn race_spec(root: &str) -> Value {
    let mut s = spec(
        root,
        &[
            "/bin/sh",
            "-c",
            "test -r /proc/self/status && echo PROC_OK; grep -c ' /target ' /proc/self/mountinfo",
        ],
    );
    s["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": "/target", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}),
    );
    s
}

#[test]
fn mount_target_symlink_race_stays_in_the_rootfs() {
    let pod = Pod::boot("mountrace");
    let before = guest_mounts(&pod, "probe0");

    let root = pod.rootfs("race");
    let target = pod.share().join("race/rootfs/target");
    std::fs::create_dir(&target).expect("mkdir target");
    let stop = Arc::new(AtomicBool::new(false));
    // A failed call below must not leave the flipper racing the pod's
    // cleanup of the share for its remaining minute.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let flips = Arc::new(AtomicUsize::new(0));
    let flipper = {
        let (stop, flips, target) = (Arc::clone(&stop), Arc::clone(&flips), target.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Each state is held for a varying 0-3 ms, so that some
            // creates see a directory at the check and a symlink later.
            let hold = |n: usize| Duration::from_micros((n as u64 * 7919) % 3000);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = std::fs::remove_dir(&target);
                let _ = std::os::unix::fs::symlink("/proc", &target);
                std::thread::sleep(hold(n));
                let _ = std::fs::remove_file(&target);
                let _ = std::fs::create_dir(&target);
                std::thread::sleep(hold(n + 1));
                n = flips.fetch_add(1, Ordering::Relaxed) + 2;
            }
        })
    };

    let (mut ran, mut refused, mut proc_overmounted) = (0, 0, 0);
    for i in 0..20 {
        let cid = format!("r{i}");
        let s = race_spec(&root);
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.clone();
        req.oci_spec_json = serde_json::to_vec(&s).expect("json");
        match pod
            .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
        {
            Err(ttrpc::Error::RpcStatus(st)) => {
                assert_ne!(st.code(), ttrpc::Code::UNKNOWN, "{}", st.message());
                assert_ne!(st.code(), ttrpc::Code::OK, "{}", st.message());
                println!("{cid}: refused {:?}: {}", st.code(), st.message());
                refused += 1;
                continue;
            }
            Err(other) => panic!("{cid}: transport error {other:?}"),
            Ok(_) => {}
        }
        pod.start(&cid);
        let out = String::from_utf8_lossy(&pod.read_all(&cid, "", false)).to_string();
        pod.wait(&cid, "");
        pod.remove(&cid);
        println!("{cid}: ran: {out:?}");
        ran += 1;
        if !out.contains("PROC_OK") {
            proc_overmounted += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("flipper");
    println!(
        "{} flips; {ran} ran, {refused} refused, {proc_overmounted} had their own /proc covered",
        flips.load(Ordering::Relaxed)
    );
    assert!(flips.load(Ordering::Relaxed) > 0);

    // Once the rootfs holds still, the same spec runs with its tmpfs at
    // /target and a real /proc (the guest's virtiofs may need a moment to
    // drop the dentries of the flipped path).
    let _ = std::fs::remove_file(&target);
    let _ = std::fs::create_dir(&target);
    let mut last = String::new();
    let settled = (0..15).any(|i| {
        std::thread::sleep(Duration::from_secs(1));
        let cid = format!("settled{i}");
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.clone();
        req.oci_spec_json = serde_json::to_vec(&race_spec(&root)).expect("json");
        if let Err(e) = pod
            .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
        {
            last = format!("{e:?}");
            return false;
        }
        pod.start(&cid);
        last = String::from_utf8_lossy(&pod.read_all(&cid, "", false)).to_string();
        pod.wait(&cid, "");
        pod.remove(&cid);
        true
    });
    assert!(settled, "the settled rootfs does not run: {last}");
    assert_eq!(last, "PROC_OK\n1\n", "settled container");

    // The guest is untouched: same mount table, nothing over its /proc.
    let after = guest_mounts(&pod, "probe1");
    assert!(
        !after
            .iter()
            .any(|m| m.starts_with("/proc ") && m != "/proc proc"),
        "something is mounted over the guest's /proc: {after:#?}"
    );
    assert_eq!(before, after, "the guest's mount table changed");
    // The container's own /proc is not coverable either: the agent refuses
    // the redirect when it sees it and libcontainer resolves in the root.
    assert_eq!(
        proc_overmounted, 0,
        "a tmpfs was mounted over a container's /proc"
    );
}

#[test]
fn device_cgroup_rules_are_enforced() {
    let pod = Pod::boot("devcgroup");
    // 1:11 is /dev/kmsg: not among the devices every container may use, so
    // the device cgroup (an eBPF program on cgroup v2) decides.
    let script =
        "echo devcgroup-test > /dev/mykmsg && echo KMSG_OK; echo x > /dev/null && echo NULL_OK";
    let nodes =
        json!([{"path": "/dev/mykmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 438}]);
    let deny_all = json!({"allow": false, "access": "rwm"});
    let allow_kmsg = json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"});

    let mut s = sh(&pod, "c1", script);
    s["linux"]["devices"] = nodes.clone();
    s["linux"]["resources"] = json!({"devices": [deny_all.clone()]});
    let r = run_to_end(&pod, "c1", &s);
    assert!(
        r.out.contains("NULL_OK"),
        "the default devices stay usable: {r}"
    );
    assert!(
        !r.out.contains("KMSG_OK"),
        "a device outside the rules was writable: {r}"
    );

    // The same node with an allow rule works, so the refusal above came
    // from the rules and not from the node.
    let mut s = sh(&pod, "c2", script);
    s["linux"]["devices"] = nodes;
    s["linux"]["resources"] = json!({"devices": [deny_all, allow_kmsg]});
    let r = run_to_end(&pod, "c2", &s);
    assert_eq!(r.out, "KMSG_OK\nNULL_OK\n", "{r}");
}

/// CreateContainer without the panic of `Pod::create`: the refusal's code
/// and message, which must say what went wrong.
fn try_create(
    pod: &Pod,
    cid: &str,
    spec: &Value,
    sandbox_namespaces: &[&str],
) -> Result<(), String> {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = cid.into();
    req.oci_spec_json = serde_json::to_vec(spec).expect("json");
    req.sandbox_namespaces = sandbox_namespaces.iter().map(|s| s.to_string()).collect();
    refusal(
        pod.try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await }),
    )
}

/// ExecProcess without the panic of `Pod::exec`.
fn try_exec(pod: &Pod, cid: &str, eid: &str, process: &Value) -> Result<(), String> {
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = eid.into();
    req.process_json = serde_json::to_vec(process).expect("json");
    refusal(pod.try_call(|a| async move { a.raw().exec_process(call_context(CALL), &req).await }))
}

fn refusal<T>(r: ttrpc::Result<T>) -> Result<(), String> {
    match r {
        Ok(_) => Ok(()),
        Err(ttrpc::Error::RpcStatus(st)) => {
            assert_ne!(st.code(), ttrpc::Code::UNKNOWN, "{}", st.message());
            assert_ne!(st.code(), ttrpc::Code::OK, "{}", st.message());
            assert!(!st.message().is_empty(), "a refusal without a reason");
            Err(format!("{:?}: {}", st.code(), st.message()))
        }
        Err(other) => panic!("transport error {other:?}"),
    }
}

/// Reads an exec to its end.
fn exec_to_end(pod: &Pod, cid: &str, eid: &str) -> Ran {
    let out = String::from_utf8_lossy(&pod.read_all(cid, eid, false)).to_string();
    let err = String::from_utf8_lossy(&pod.read_all(cid, eid, true)).to_string();
    let code = pod.wait(cid, eid);
    Ran { code, out, err }
}

/// The fd numbers of an `ls -l /proc/<pid>/fd` listing, with their
/// targets (none for the directory fd `ls` closed before reading it).
fn fd_listing(out: &str) -> Vec<(u32, String)> {
    out.lines()
        .filter(|l| l.starts_with('l'))
        .filter_map(|l| {
            let (name, target) = l.split_once(" -> ").unwrap_or((l, ""));
            let fd = name.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .collect()
}

/// The caps a process spec with `DEFAULT_CAPS` must end up with, as
/// /proc/<pid>/status shows them (Docker's default set).
const DEFAULT_CAPS_MASK: &str = "00000000a80425fb";

fn with_caps(p: &mut Value, extra: &[&str]) {
    for set in ["bounding", "effective", "permitted"] {
        let caps = p["capabilities"][set].as_array_mut().expect("caps");
        caps.extend(extra.iter().map(|c| json!(c)));
    }
}

/// CVE-2024-21626: runc leaked a host directory fd into the container's
/// init, and `cwd: /proc/self/fd/N` then put the process's working
/// directory on the host. No host fd can reach the guest (another
/// kernel); in the guest, a container process holds only its stdio, and a
/// cwd through /proc/self/fd either fails or lands inside the rootfs, for
/// the init and for an exec.
#[test]
fn no_fd_leaks_into_a_container_and_a_proc_self_fd_cwd_stays_inside() {
    let pod = Pod::boot("fdleak");
    // No shell between: `ls` itself holds fd 3 on the directory it lists.
    let root = pod.rootfs("c1");
    let r = run_to_end(
        &pod,
        "c1",
        &spec(&root, &["/bin/ls", "-l", "/proc/self/fd"]),
    );
    assert_eq!(r.code, 0, "{r}");
    let fds = fd_listing(&r.out);
    let nums: Vec<u32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(nums, [0, 1, 2, 3], "the init's fds: {r}");
    for (n, target) in &fds[..3] {
        assert!(target.starts_with("pipe:"), "fd {n} is not stdio: {r}");
    }

    // An exec's fds, and the init's as the exec sees them (PID 1 of the
    // container's pid namespace).
    let root = pod.rootfs("c2");
    pod.run("c2", &spec(&root, &["/bin/sleep", "1000"]));
    for (eid, pid, want) in [
        ("e1", "self", &[0, 1, 2, 3][..]),
        ("e2", "1", &[0, 1, 2][..]),
    ] {
        let mut p = process(&["/bin/ls", "-l", &format!("/proc/{pid}/fd")], false);
        with_caps(&mut p, &["CAP_SYS_PTRACE"]);
        pod.exec("c2", eid, &p);
        let r = exec_to_end(&pod, "c2", eid);
        assert_eq!(r.code, 0, "{eid}: {r}");
        let nums: Vec<u32> = fd_listing(&r.out).iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, want, "/proc/{pid}/fd from an exec: {r}");
    }

    // The attack itself: every fd number the runtime could still hold
    // while it sets the cwd.
    let script = "readlink /proc/self/cwd";
    for n in 3..=12 {
        let cid = format!("cwd{n}");
        let mut s = sh(&pod, &cid, script);
        s["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        match try_create(&pod, &cid, &s, &[]) {
            Err(e) => println!("init cwd /proc/self/fd/{n}: refused: {e}"),
            Ok(()) => {
                pod.start(&cid);
                let out = String::from_utf8_lossy(&pod.read_all(&cid, "", false)).to_string();
                pod.wait(&cid, "");
                pod.remove(&cid);
                println!("init cwd /proc/self/fd/{n}: ran: {out:?}");
                let cwd = out.lines().next().unwrap_or("");
                assert!(
                    cwd.starts_with('/') && !cwd.contains("unreachable"),
                    "the init's cwd is outside its root: {out:?}"
                );
            }
        }
        let eid = format!("cwd{n}");
        let mut p = process(&["/bin/sh", "-c", script], false);
        p["cwd"] = json!(format!("/proc/self/fd/{n}"));
        match try_exec(&pod, "c2", &eid, &p) {
            Err(e) => println!("exec cwd /proc/self/fd/{n}: refused: {e}"),
            Ok(()) => {
                let r = exec_to_end(&pod, "c2", &eid);
                println!("exec cwd /proc/self/fd/{n}: ran: {r}");
                let cwd = r.out.lines().next().unwrap_or("");
                assert!(
                    cwd.starts_with('/') && !cwd.contains("unreachable"),
                    "the exec's cwd is outside its root: {r}"
                );
            }
        }
    }

    // A cwd through a /proc magic link that names a directory does work,
    // and resolves in the container's root: the refusals above are about
    // what the fds are, not about /proc paths.
    let mut s = sh(&pod, "ctl", script);
    s["process"]["cwd"] = json!("/proc/self/root/bin");
    let r = run_to_end(&pod, "ctl", &s);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.lines().next(), Some("/bin"), "{r}");
    pod.signal("c2", "", 9);
    assert_eq!(pod.wait("c2", ""), 137);
    pod.remove("c2");
}

/// Kata 4.1.0 (#13615): the agent read /proc/sys/kernel/cap_last_cap after
/// joining the container's mount namespace, where the container may have
/// mounted its own file over it, and dropped capabilities only up to the
/// number it read: an exec kept the rest. libcontainer asks the kernel
/// (PR_CAPBSET_READ for every capability it knows), never that file.
#[test]
fn an_exec_drops_capabilities_whatever_cap_last_cap_says() {
    let pod = Pod::boot("caplast");
    let root = pod.rootfs("c1");
    pod.run("c1", &spec(&root, &["/bin/sleep", "1000"]));
    let last_cap = "/proc/sys/kernel/cap_last_cap";
    let mut p = process(
        &[
            "/bin/sh",
            "-c",
            &format!(
                "cat {last_cap}; echo 0 >/tmp/last && mount --bind /tmp/last {last_cap} && cat {last_cap}"
            ),
        ],
        false,
    );
    with_caps(&mut p, &["CAP_SYS_ADMIN"]);
    pod.exec("c1", "shadow", &p);
    let r = exec_to_end(&pod, "c1", "shadow");
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.out.lines().collect();
    let real = lines.first().copied().unwrap_or("");
    assert!(real.parse::<u32>().is_ok_and(|n| n >= 31), "{r}");
    assert_eq!(lines.get(1), Some(&"0"), "the shadow is not in place: {r}");

    // A later exec joins that mount namespace and sees the shadow, and
    // still has exactly the capabilities its spec names.
    let script = format!("cat {last_cap}; grep ^Cap /proc/self/status");
    pod.exec("c1", "e1", &process(&["/bin/sh", "-c", &script], false));
    let r = exec_to_end(&pod, "c1", "e1");
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.lines().next(), Some("0"), "{r}");
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(
            status_field(&r.out, set),
            Some(DEFAULT_CAPS_MASK),
            "{set}: {r}"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(
            status_field(&r.out, set),
            Some("0000000000000000"),
            "{set}: {r}"
        );
    }
    pod.signal("c1", "", 9);
    assert_eq!(pod.wait("c1", ""), 137);
    pod.remove("c1");

    // The shadow was the container's own: a new container reads the
    // kernel's value.
    let r = run_to_end(&pod, "c2", &sh(&pod, "c2", &format!("cat {last_cap}")));
    assert_eq!(r.out.trim(), real, "{r}");
}

/// Kata 4.1.0: a cwd outside the container's root. `..` and image
/// symlinks resolve in the root (the kernel stops `..` there); a cwd that
/// really is outside, through /proc/1/root of a container in the guest's
/// pid namespace, is refused by libcontainer's getcwd check, for the init
/// and for an exec.
#[test]
fn a_cwd_outside_the_rootfs_is_refused_or_stays_inside() {
    let pod = Pod::boot("cwdescape");
    let script = "readlink /proc/self/cwd; ls -A";
    for (i, cwd) in ["/../../../..", "/escape", "/escape/../..", "/abs"]
        .iter()
        .enumerate()
    {
        let cid = format!("c{i}");
        let s = {
            let mut s = sh(&pod, &cid, script);
            s["process"]["cwd"] = json!(cwd);
            s
        };
        let rootfs = pod.share().join(&cid).join("rootfs");
        std::os::unix::fs::symlink("../../../../../../..", rootfs.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("/run/kata-containers", rootfs.join("abs")).expect("symlink");
        std::fs::create_dir_all(rootfs.join("run/kata-containers")).expect("mkdir");
        std::fs::write(rootfs.join("run/kata-containers/in-the-rootfs"), "").expect("marker");
        std::fs::write(rootfs.join("in-the-rootfs"), "").expect("marker");
        let r = run_to_end(&pod, &cid, &s);
        assert_eq!(r.code, 0, "cwd {cwd}: {r}");
        let want = if *cwd == "/abs" {
            "/run/kata-containers"
        } else {
            "/"
        };
        assert_eq!(r.out.lines().next(), Some(want), "cwd {cwd}: {r}");
        assert!(
            r.out.lines().any(|l| l == "in-the-rootfs"),
            "cwd {cwd}: {r}"
        );
    }

    // In the guest's pid namespace /proc/1 is the agent, whose root is the
    // guest's.
    let guest_pidns = |cid: &str, args: &[&str]| {
        let root = pod.rootfs(cid);
        let mut s = spec(&root, args);
        s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
        s
    };
    let mut s = guest_pidns("out", &["/bin/sh", "-c", script]);
    s["process"]["cwd"] = json!("/proc/1/root");
    let e = try_create(&pod, "out", &s, &[]).expect_err("a cwd in the guest's root was accepted");
    assert!(e.contains("working directory"), "{e}");
    let mut s = guest_pidns("out2", &["/bin/sh", "-c", script]);
    s["process"]["cwd"] = json!("/proc/1/root/run");
    let e = try_create(&pod, "out2", &s, &[]).expect_err("a cwd in the guest's /run was accepted");
    assert!(e.contains("working directory"), "{e}");

    // An exec into such a container meets the same check; `..` from its
    // root stays there.
    let s = guest_pidns("in", &["/bin/sleep", "1000"]);
    pod.run("in", &s);
    for (eid, cwd) in [("e1", "/proc/1/root"), ("e2", "/proc/1/root/run")] {
        let mut p = process(&["/bin/sh", "-c", script], false);
        p["cwd"] = json!(cwd);
        let e = try_exec(&pod, "in", eid, &p).expect_err("an exec's cwd in the guest's root");
        assert!(e.contains("working directory"), "exec cwd {cwd}: {e}");
    }
    let mut p = process(&["/bin/sh", "-c", script], false);
    p["cwd"] = json!("/../..");
    pod.exec("in", "e3", &p);
    let r = exec_to_end(&pod, "in", "e3");
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.out.lines().next(), Some("/"), "{r}");
    assert!(r.out.lines().any(|l| l == "bin"), "{r}");
    pod.signal("in", "", 9);
    assert_eq!(pod.wait("in", ""), 137);
    pod.remove("in");
}

/// Kata 4.1.0 (#13615): namespaces re-resolved by pid. A container joins
/// the pod's namespaces through `/proc/<pid>/ns/*` of the sandbox
/// container's init; once that init has exited its pid is free, and
/// whichever process gets it next would hand the new container its
/// namespaces. Here a privileged helper takes the pid on purpose
/// (`ns_last_pid`) for a process in the guest's own pid namespace.
#[test]
fn a_reused_pid_of_the_sandbox_init_is_not_joined() {
    let pod = Pod::boot("pidreuse");
    let root = pod.rootfs("sb");
    pod.run("sb", &spec(&root, &["/bin/sleep", "4242"]));
    let guest_pidns = |cid: &str, script: &str| {
        let mut s = sh(&pod, cid, script);
        s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
        s
    };
    let find = "for d in /proc/[0-9]*; do \
                [ \"$(tr '\\0' ' ' <$d/cmdline 2>/dev/null)\" = '/bin/sleep 4242 ' ] && p=${d#/proc/}; \
                done; echo $p; readlink /proc/$p/ns/ipc; readlink /proc/$p/ns/uts";
    let r = run_to_end(&pod, "find", &guest_pidns("find", find));
    let lines: Vec<&str> = r.out.lines().collect();
    let pid: i32 = lines[0]
        .parse()
        .unwrap_or_else(|_| panic!("sandbox init pid: {r}"));
    let sandbox_ns = lines[1..].join("\n");
    assert!(sandbox_ns.starts_with("ipc:["), "{r}");

    // A container joining the sandbox's namespaces works while its init
    // lives.
    let script = "cat /proc/1/cmdline | tr '\\0' ' '; echo; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts";
    let app = |cid: &str| guest_pidns(cid, script);
    try_create(&pod, "app0", &app("app0"), &["pid", "ipc", "uts"]).expect("joining a live sandbox");
    pod.start("app0");
    let out = String::from_utf8_lossy(&pod.read_all("app0", "", false)).to_string();
    pod.wait("app0", "");
    pod.remove("app0");
    assert_eq!(
        out,
        format!("/bin/sleep 4242 \n{sandbox_ns}\n"),
        "app0 is not in the sandbox's namespaces"
    );

    pod.signal("sb", "", 9);
    assert_eq!(pod.wait("sb", ""), 137);

    // The helper's child takes the pid, in the guest's pid namespace.
    let mut s = guest_pidns(
        "holder",
        &format!(
            "echo {} >/proc/sys/kernel/ns_last_pid; sleep 1000 & echo HOLDER $!; wait",
            pid - 1
        ),
    );
    s["linux"]["readonlyPaths"] = json!([]);
    with_caps(&mut s["process"], &["CAP_SYS_ADMIN"]);
    pod.run("holder", &s);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains('\n') && Instant::now() < deadline {
        if let Some(chunk) = pod.read_within("holder", Duration::from_secs(5)) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert_eq!(
        seen.trim(),
        format!("HOLDER {pid}"),
        "the pid was not taken over"
    );

    // Neither a new container nor an exec may follow the pid there.
    let e = try_create(&pod, "app1", &app("app1"), &["pid"]);
    if e.is_ok() {
        pod.start("app1");
        let out = String::from_utf8_lossy(&pod.read_all("app1", "", false)).to_string();
        panic!("app1 joined the pid namespace of pid {pid}'s new owner; its pid 1 is {out:?}");
    }
    let e = e.expect_err("checked");
    assert!(e.starts_with("FAILED_PRECONDITION"), "{e}");
    let e = try_exec(
        &pod,
        "sb",
        "e1",
        &process(&["/bin/sh", "-c", script], false),
    )
    .expect_err("an exec into an exited container");
    assert!(e.starts_with("FAILED_PRECONDITION"), "{e}");

    pod.signal("holder", "", 9);
    pod.wait("holder", "");
    pod.remove("holder");
    pod.remove("sb");
}

/// CVE-2025-31133 and its family (CVE-2025-52565, youki CVE-2025-62161):
/// the runtime bind-mounts /dev/null over masked paths and the pty over
/// /dev/console, and opens /dev/pts/ptmx; with one of them a symlink it
/// mounted or opened the target instead (a procfs file, read-write where
/// it should be masked). Here the image, or a volume, plants all three,
/// pointing at /proc/sysrq-trigger, at a file of the image and out of the
/// rootfs: no container runs with one of them followed, and nothing
/// outside the rootfs is made.
#[test]
fn dev_null_console_and_ptmx_symlinks_neither_unmask_nor_escape() {
    let pod = Pod::boot("devlinks");
    let script = "stat -c '%F %t:%T' /dev/null /proc/kcore; wc -c </proc/kcore; \
                  echo x >/proc/sysrq-trigger && echo SYSRQ_WRITABLE; \
                  stat -c 'console %F %t' /dev/console; tty; true";
    let links = [
        ("dev/null", "../../../../../../../../../run/escaped-null"),
        ("dev/console", "/victim"),
        ("dev/ptmx", "/proc/sysrq-trigger"),
        ("ptsvol/ptmx", "/proc/sysrq-trigger"),
    ];
    let plant = |cid: &str| -> std::path::PathBuf {
        let rootfs = pod.share().join(cid).join("rootfs");
        std::fs::create_dir_all(rootfs.join("ptsvol")).expect("mkdir ptsvol");
        std::fs::write(rootfs.join("victim"), "untouched").expect("victim");
        for (link, target) in links {
            std::os::unix::fs::symlink(target, rootfs.join(link)).expect("symlink");
        }
        rootfs
    };
    // A planted symlink stays, or (dev/ptmx, on the image's /dev) is
    // replaced by libcontainer's own; its target is never written.
    let untouched = |cid: &str, rootfs: &std::path::Path| {
        for (link, target) in links {
            let now = std::fs::read_link(rootfs.join(link)).expect("still a symlink");
            assert!(
                now == std::path::Path::new(target)
                    || (link == "dev/ptmx" && now == std::path::Path::new("pts/ptmx")),
                "{cid}: {link} -> {}",
                now.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(rootfs.join("victim")).expect("victim"),
            "untouched",
            "{cid}"
        );
    };

    // The spec's /dev is a tmpfs of the container's own mount namespace:
    // libcontainer makes null and ptmx there, and binds the pty on a
    // console it creates with O_NOFOLLOW.
    for (cid, terminal) in [("img", false), ("imgtty", true)] {
        let mut s = sh(&pod, cid, script);
        s["process"]["terminal"] = json!(terminal);
        let rootfs = plant(cid);
        let r = run_to_end(&pod, cid, &s);
        assert_eq!(r.code, 0, "{cid}: {r}");
        let lines: Vec<&str> = r.out.lines().map(str::trim).collect();
        assert_eq!(
            lines[..3],
            [
                "character special file 1:3",
                "character special file 1:3",
                "0"
            ],
            "{cid}: /dev/null and the masked /proc/kcore: {r}"
        );
        assert!(!r.out.contains("SYSRQ_WRITABLE"), "{cid}: {r}");
        if terminal {
            // 0x88 = 136, the pty slaves' major.
            assert!(
                r.out.contains("console character special file 88"),
                "{cid}: {r}"
            );
            assert!(r.out.contains("/dev/pts/0"), "{cid}: {r}");
        } else {
            assert!(
                !r.out.contains("console"),
                "{cid}: a console without a terminal: {r}"
            );
        }
        untouched(cid, &rootfs);
    }

    // Without the tmpfs /dev is the image's, on the share, which is nodev:
    // libcontainer cannot open the /dev/null it makes there and refuses
    // every such container, with the symlinks or without. Its mknod
    // follows the planted null, resolved in the rootfs: the node lands in
    // the image's /run, not the guest's.
    for (cid, planted) in [("nodev", true), ("nodevctl", false)] {
        let mut s = sh(&pod, cid, script);
        s["process"]["terminal"] = json!(true);
        s["mounts"]
            .as_array_mut()
            .expect("mounts")
            .retain(|m| m["destination"] != "/dev");
        let e = if planted {
            let rootfs = plant(cid);
            let e = try_create(&pod, cid, &s, &[]);
            untouched(cid, &rootfs);
            let made = std::fs::symlink_metadata(rootfs.join("run/escaped-null"));
            assert!(made.is_ok(), "{cid}: the null was not made in the rootfs");
            e
        } else {
            try_create(&pod, cid, &s, &[])
        };
        let e = e.expect_err("a container ran on the image's /dev");
        println!("{cid}: {e}");
    }

    // A volume at /dev or /dev/pts (a directory another container could
    // fill) holding the symlinks is refused too: volumes are nodev like
    // the share, and the pty opened through the planted ptmx
    // (/proc/sysrq-trigger) is no pty.
    for (cid, dest) in [("voldev", "/dev"), ("volpts", "/dev/pts")] {
        let mut s = sh(&pod, cid, script);
        s["process"]["terminal"] = json!(true);
        let rootfs = plant(cid);
        let vol = if dest == "/dev" { "dev" } else { "ptsvol" };
        for m in s["mounts"].as_array_mut().expect("mounts") {
            if m["destination"] == dest {
                *m = json!({
                    "destination": dest, "type": "bind", "options": ["rbind", "rw"],
                    "source": format!("{GUEST_SHARE}/{cid}/rootfs/{vol}"),
                });
            }
        }
        let e = try_create(&pod, cid, &s, &[]).expect_err("a container ran with a /dev volume");
        println!("{cid}: {e}");
        untouched(cid, &rootfs);
    }

    // Nothing was made in the guest's root; a new container is sound.
    let mut s = sh(
        &pod,
        "after",
        "test -d /proc/1/root/run/kata-containers && echo GUEST_ROOT; \
         test -e /proc/1/root/run/escaped-null && echo ESCAPED; \
         echo x >/proc/sysrq-trigger && echo SYSRQ_WRITABLE; echo ok",
    );
    s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    with_caps(&mut s["process"], &["CAP_SYS_PTRACE"]);
    let r = run_to_end(&pod, "after", &s);
    assert_eq!(r.out, "GUEST_ROOT\nok\n", "{r}");
}
