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
