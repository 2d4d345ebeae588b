//! Container tests inside a real VM: the shim library boots the test image,
//! a busybox rootfs is placed in the sandbox share, and the agent API is
//! driven over hybrid vsock exactly as the shim will drive it.

mod common;

use std::time::Duration;

use common::pod::*;
use kata_agent_protocol::agent;
use kata_shim::agent_client::call_context;
use serde_json::json;

#[test]
fn container_output_and_exit_codes() {
    let pod = Pod::boot("exitcodes");
    let root = pod.rootfs("c1");
    pod.run(
        "c1",
        &spec(
            &root,
            &["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"],
        ),
    );
    assert_eq!(pod.read_all("c1", "", false), b"hello\n");
    assert_eq!(pod.read_all("c1", "", true), b"oops\n");
    assert_eq!(pod.wait("c1", ""), 3);
    pod.remove("c1");

    let root = pod.rootfs("c2");
    pod.run("c2", &spec(&root, &["/bin/sleep", "1000"]));
    pod.signal("c2", "", 9);
    assert_eq!(pod.wait("c2", ""), 137, "SIGKILL is 128+9");
    pod.remove("c2");

    let root = pod.rootfs("c3");
    pod.run("c3", &spec(&root, &["/bin/true"]));
    assert_eq!(pod.wait("c3", ""), 0);
    pod.remove("c3");
}

#[test]
fn container_stdin_round_trip_and_exec() {
    let pod = Pod::boot("stdin");
    let root = pod.rootfs("c1");
    pod.run("c1", &spec(&root, &["/bin/cat"]));
    pod.write_stdin("c1", "", b"ping\n");
    pod.close_stdin("c1", "");
    assert_eq!(pod.read_all("c1", "", false), b"ping\n");
    assert_eq!(pod.wait("c1", ""), 0);
    pod.remove("c1");

    let root = pod.rootfs("c2");
    pod.run("c2", &spec(&root, &["/bin/sleep", "1000"]));
    let mut p = process(&["/bin/sh", "-c", "echo $FOO; pwd; id -u"], false);
    p["env"] = json!(["PATH=/bin", "FOO=bar"]);
    p["cwd"] = json!("/tmp");
    p["user"] = json!({"uid": 1000, "gid": 1000});
    pod.exec("c2", "e1", &p);
    assert_eq!(
        String::from_utf8_lossy(&pod.read_all("c2", "e1", false)),
        "bar\n/tmp\n1000\n"
    );
    assert_eq!(pod.wait("c2", "e1"), 0);

    pod.exec("c2", "e2", &process(&["/bin/sleep", "1000"], false));
    pod.signal("c2", "e2", 15);
    assert_eq!(pod.wait("c2", "e2"), 143, "SIGTERM is 128+15");
    pod.signal("c2", "", 9);
    assert_eq!(pod.wait("c2", ""), 137);
    pod.remove("c2");
}

#[test]
fn container_isolation() {
    let pod = Pod::boot("isolation");
    let root = pod.rootfs("c1");
    let mut s = spec(
        &root,
        &[
            "/bin/sh",
            "-c",
            "touch /x && echo WRITABLE; echo KCORE_BYTES $(wc -c </proc/kcore 2>/dev/null); grep -E 'Cap(Eff|Inh|Amb)' /proc/self/status; hostname",
        ],
    );
    s["root"]["readonly"] = json!(true);
    s["process"]["capabilities"] =
        json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
    pod.run("c1", &s);
    let out = String::from_utf8_lossy(&pod.read_all("c1", "", false)).to_string();
    assert_eq!(pod.wait("c1", ""), 0, "{out}");
    assert!(
        !out.contains("WRITABLE"),
        "read-only rootfs was writable: {out}"
    );
    // Masked: /dev/null is bound over it, so it reads as empty (unmasked, the
    // open would fail for lack of CAP_SYS_RAWIO and print no count).
    assert!(
        out.contains("KCORE_BYTES 0\n"),
        "/proc/kcore not masked: {out}"
    );
    // CAP_KILL is bit 5.
    assert!(
        out.contains("CapEff:\t0000000000000020"),
        "capabilities not dropped: {out}"
    );
    // CVE-2022-29162 (and crun's, CRI-O's): a spec without inheritable or
    // ambient capabilities gets none from the runtime.
    for set in ["CapInh", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000000000")),
            "{set} is not empty: {out}"
        );
    }
    assert!(out.contains("kata-pod"), "hostname: {out}");
    pod.remove("c1");
}

#[test]
fn container_output_integrity_with_a_slow_reader() {
    let pod = Pod::boot("integrity");
    let root = pod.rootfs("c1");
    // 8 MiB of numbered lines: every chunk is distinct, so a lost, doubled
    // or reordered chunk cannot go unnoticed.
    let script = "seq 1 2000000 | head -c 8388608";
    pod.run("c1", &spec(&root, &["/bin/sh", "-c", script]));
    let mut expected = Vec::new();
    let mut i = 1u64;
    while expected.len() < 8 << 20 {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
        i += 1;
    }
    expected.truncate(8 << 20);
    let mut got = Vec::new();
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = "c1".into();
        req.len = 32 * 1024;
        let chunk = pod.call("ReadStdout", |a| async move {
            a.raw().read_stdout(call_context(None), &req).await
        });
        if chunk.data.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk.data);
        // A slow reader: the writer must block, not lose data.
        if got.len() % (1 << 20) < 32 * 1024 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "output differs from what was written");
    assert_eq!(pod.wait("c1", ""), 0);
    pod.remove("c1");
}

#[test]
fn container_unknown_ids_and_bad_specs_get_precise_codes() {
    let pod = Pod::boot("badinput");
    let mut req = agent::ContainerRequest::new();
    req.container_id = "nope".into();
    let e = pod
        .try_call(|a| async move { a.raw().start_container(call_context(CALL), &req).await })
        .expect_err("unknown id");
    assert_code(e, ttrpc::Code::NOT_FOUND);

    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "bad".into();
    req.oci_spec_json = br#"{"ociVersion": "1.0.2", "process": {"args": 5}}"#.to_vec();
    let e = pod
        .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
        .expect_err("malformed spec");
    let msg = assert_code(e, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("process.args"), "the field is named: {msg}");

    let root = pod.rootfs("c1");
    pod.create("c1", &spec(&root, &["/bin/true"]));
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.oci_spec_json = serde_json::to_vec(&spec(&root, &["/bin/true"])).expect("json");
    let e = pod
        .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
        .expect_err("duplicate id");
    assert_code(e, ttrpc::Code::ALREADY_EXISTS);
    pod.remove("c1");
}

#[test]
fn container_pause_resume_stats_update_and_list() {
    let pod = Pod::boot("resources");
    let root = pod.rootfs("c1");
    pod.run(
        "c1",
        &spec(
            &root,
            &["/bin/sh", "-c", "while true; do echo tick; sleep 0.2; done"],
        ),
    );
    assert!(
        pod.read_within("c1", Duration::from_secs(10))
            .is_some_and(|d| !d.is_empty())
    );

    let s = pod.stats("c1");
    assert!(s.memory.usage > 0, "memory usage: {s:?}");
    assert!(s.pids.current >= 1, "pids: {s:?}");
    assert!(s.cpu.usage_usec > 0, "cpu usage: {s:?}");

    pod.container_call("pause", "c1").expect("pause");
    // Drain what was produced before the freeze, then expect silence.
    while pod.read_within("c1", Duration::from_millis(700)).is_some() {}
    assert!(
        pod.read_within("c1", Duration::from_secs(2)).is_none(),
        "a paused container produced output"
    );
    pod.container_call("resume", "c1").expect("resume");
    assert!(
        pod.read_within("c1", Duration::from_secs(10)).is_some(),
        "no output after resume"
    );

    let mut req = agent::UpdateContainerRequest::new();
    req.container_id = "c1".into();
    req.resources_json = serde_json::to_vec(&json!({"pids": {"limit": 50}})).expect("json");
    pod.call("UpdateContainer", |a| async move {
        a.raw().update_container(call_context(CALL), &req).await
    });
    assert_eq!(
        pod.stats("c1").pids.limit,
        50,
        "pids.max applied in the guest"
    );

    let mut req = agent::ListProcessesRequest::new();
    req.container_id = "c1".into();
    req.format = "json".into();
    let list = pod.call("ListProcesses", |a| async move {
        a.raw().list_processes(call_context(CALL), &req).await
    });
    let pids: Vec<u64> = serde_json::from_slice(&list.process_list).expect("json pid list");
    assert!(!pids.is_empty());

    pod.signal("c1", "", 9);
    assert_eq!(pod.wait("c1", ""), 137);
    pod.remove("c1");
}

#[test]
fn container_oom_is_reported() {
    let pod = Pod::boot("oom");
    let root = pod.rootfs("c1");
    let mut s = spec(
        &root,
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=128M",
            "count=1",
        ],
    );
    s["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    pod.run("c1", &s);
    let ev = pod.call("GetOOMEvent", |a| async move {
        a.raw()
            .get_oom_event(
                call_context(Some(Duration::from_secs(60))),
                &agent::Empty::new(),
            )
            .await
    });
    assert_eq!(ev.container_id, "c1");
    assert_eq!(pod.wait("c1", ""), 137, "the OOM killer's SIGKILL");
    pod.remove("c1");
}

#[test]
fn container_tty_resize_is_seen_by_stty() {
    let pod = Pod::boot("tty");
    let root = pod.rootfs("c1");
    let mut s = spec(&root, &["/bin/sh", "-c", "sleep 2; stty size; tty"]);
    s["process"]["terminal"] = json!(true);
    pod.run("c1", &s);
    let mut req = agent::TtyWinResizeRequest::new();
    req.container_id = "c1".into();
    req.row = 40;
    req.column = 100;
    pod.call("TtyWinResize", |a| async move {
        a.raw().tty_win_resize(call_context(CALL), &req).await
    });
    let out = String::from_utf8_lossy(&pod.read_all("c1", "", false)).to_string();
    assert!(out.contains("40 100"), "stty size saw: {out:?}");
    // The terminal is the container's own: its first pty, in its devpts.
    assert!(out.contains("/dev/pts/0"), "tty saw: {out:?}");
    assert_eq!(pod.wait("c1", ""), 0);
    pod.remove("c1");
}

#[test]
fn container_pid_namespace_shared_only_when_asked() {
    for shared in [true, false] {
        let pod = Pod::boot_with(if shared { "pidns-shared" } else { "pidns-own" }, shared);
        let mut again = agent::CreateSandboxRequest::new();
        again.sandbox_id = pod.id.clone();
        let e = pod
            .try_call(|a| async move { a.raw().create_sandbox(call_context(CALL), &again).await });
        assert!(e.is_err(), "a second CreateSandbox must be refused");

        let root = pod.rootfs("c1");
        pod.run("c1", &spec(&root, &["/bin/sleep", "777"]));
        let root = pod.rootfs("c2");
        pod.run("c2", &spec(&root, &["/bin/ps"]));
        let out = String::from_utf8_lossy(&pod.read_all("c2", "", false)).to_string();
        assert_eq!(pod.wait("c2", ""), 0, "{out}");
        assert_eq!(
            out.contains("sleep 777"),
            shared,
            "sandbox_pidns={shared}, yet c2 {} c1's process:\n{out}",
            if shared { "does not see" } else { "sees" }
        );
        pod.signal("c1", "", 9);
        assert_eq!(pod.wait("c1", ""), 137);
        pod.remove("c2");
        pod.remove("c1");
    }
}

#[test]
fn container_path_escapes_are_rejected() {
    let pod = Pod::boot("escapes");
    // A rootfs that is a symlink to the guest's /.
    let link_root = pod.share().join("evil1");
    pod.share_write(|| {
        std::fs::create_dir_all(&link_root).expect("mkdir");
        std::os::unix::fs::symlink("/", link_root.join("rootfs")).expect("symlink");
    });
    let s = spec(&format!("{GUEST_SHARE}/evil1/rootfs"), &["/bin/true"]);
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "evil1".into();
    req.oci_spec_json = serde_json::to_vec(&s).expect("json");
    let e =
        pod.try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await });
    assert_code(
        e.expect_err("rootfs symlink to / refused"),
        ttrpc::Code::INVALID_ARGUMENT,
    );

    // A bind source outside the share, a destination with "..", and a
    // destination through an image symlink /etc -> /proc.
    let root = pod.rootfs("c1");
    std::fs::remove_dir_all(pod.share().join("c1/rootfs/etc")).expect("rm etc");
    std::os::unix::fs::symlink("/proc", pod.share().join("c1/rootfs/etc")).expect("etc -> /proc");
    for (i, mount) in [
        json!({"destination": "/mnt", "type": "bind", "source": "/etc", "options": ["rbind"]}),
        json!({"destination": "/../../x", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/etc/hosts", "type": "tmpfs", "source": "tmpfs"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = spec(&root, &["/bin/true"]);
        s["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(mount.clone());
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = format!("esc{i}");
        req.oci_spec_json = serde_json::to_vec(&s).expect("json");
        let e = pod
            .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await });
        let msg = assert_code(
            e.expect_err(&format!("mount {mount} refused")),
            ttrpc::Code::INVALID_ARGUMENT,
        );
        println!("refused {mount}: {msg}");
    }
    // The guest is untouched: a fresh container still runs and /proc of the
    // guest was not overmounted.
    let root2 = pod.rootfs("c2");
    pod.run(
        "c2",
        &spec(
            &root2,
            &["/bin/sh", "-c", "test -e /proc/self/status && echo ok"],
        ),
    );
    assert_eq!(pod.read_all("c2", "", false), b"ok\n");
    assert_eq!(pod.wait("c2", ""), 0);
    pod.remove("c2");
}

#[test]
fn container_exec_joins_namespaces_and_cgroup_and_gets_a_tty() {
    let pod = Pod::boot("exectty");
    let root = pod.rootfs("c1");
    let mut s = spec(&root, &["/bin/sleep", "1000"]);
    s["hostname"] = json!("exec-host");
    pod.run("c1", &s);

    // Same pid namespace (the init is pid 1 there), same cgroup, same UTS.
    pod.exec(
        "c1",
        "e1",
        &process(
            &[
                "/bin/sh",
                "-c",
                "cat /proc/1/cgroup; cat /proc/self/cgroup; hostname; cat /proc/1/cmdline",
            ],
            false,
        ),
    );
    let out = String::from_utf8_lossy(&pod.read_all("c1", "e1", false)).to_string();
    assert_eq!(pod.wait("c1", "e1"), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 4, "{out}");
    assert_eq!(
        lines[0], lines[1],
        "exec is not in the container's cgroup: {out}"
    );
    assert!(
        lines[0].contains(&pod.id),
        "cgroup is not under the pod: {out}"
    );
    assert_eq!(lines[2], "exec-host");
    assert!(
        lines[3].starts_with("/bin/sleep"),
        "pid 1 of the exec's namespace is not the init: {out}"
    );

    // An exec with its own terminal sees its own window size.
    pod.exec(
        "c1",
        "e2",
        &process(&["/bin/sh", "-c", "sleep 2; stty size; tty"], true),
    );
    let mut req = agent::TtyWinResizeRequest::new();
    req.container_id = "c1".into();
    req.exec_id = "e2".into();
    req.row = 33;
    req.column = 77;
    pod.call("TtyWinResize", |a| async move {
        a.raw().tty_win_resize(call_context(CALL), &req).await
    });
    let out = String::from_utf8_lossy(&pod.read_all("c1", "e2", false)).to_string();
    assert!(out.contains("33 77"), "exec tty size: {out:?}");
    assert!(out.contains("/dev/pts/"), "the exec's tty: {out:?}");
    assert_eq!(pod.wait("c1", "e2"), 0);

    pod.signal("c1", "", 9);
    assert_eq!(pod.wait("c1", ""), 137);
    pod.remove("c1");
}

#[test]
fn guest_clock_is_set_by_set_guest_date_time() {
    let pod = Pod::boot("clock");
    // 2030-01-01T00:00:00Z, far from the host's clock.
    let mut req = agent::SetGuestDateTimeRequest::new();
    req.sec = 1_893_456_000;
    req.usec = 0;
    pod.call("SetGuestDateTime", |a| async move {
        a.raw().set_guest_date_time(call_context(CALL), &req).await
    });
    let root = pod.rootfs("c1");
    pod.run("c1", &spec(&root, &["/bin/date", "-u", "+%Y-%m-%d"]));
    let out = String::from_utf8_lossy(&pod.read_all("c1", "", false)).to_string();
    assert_eq!(pod.wait("c1", ""), 0);
    assert_eq!(out, "2030-01-01\n", "guest date after SetGuestDateTime");
    pod.remove("c1");
}

/// A container's processes start with every signal at its default and none
/// blocked, as under runc: the agent is a Rust program, whose runtime
/// ignores SIGPIPE, and an ignored signal survives fork and execve. With
/// SIGPIPE ignored `yes | head` never ended, and a shell could not trap
/// SIGPIPE.
#[test]
fn container_and_exec_start_with_default_signal_dispositions() {
    let pod = Pod::boot("signals");
    let root = pod.rootfs("c1");
    let script = "grep -E '^Sig(Blk|Ign)' /proc/self/status; yes | head -c 5; echo; \
                  trap 'echo trapped' PIPE; kill -PIPE $$; echo done";
    let want = "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\ny\ny\ntrapped\ndone\n";
    pod.run("c1", &spec(&root, &["/bin/sh", "-c", script]));
    let out = String::from_utf8_lossy(&pod.read_all("c1", "", false)).to_string();
    assert_eq!(pod.wait("c1", ""), 0, "{out}");
    assert_eq!(out, want, "the container's init");
    pod.remove("c1");

    let root = pod.rootfs("c2");
    pod.run("c2", &spec(&root, &["/bin/sleep", "1000"]));
    pod.exec("c2", "e1", &process(&["/bin/sh", "-c", script], false));
    let out = String::from_utf8_lossy(&pod.read_all("c2", "e1", false)).to_string();
    assert_eq!(pod.wait("c2", "e1"), 0, "{out}");
    assert_eq!(out, want, "an exec");
    pod.signal("c2", "", 9);
    assert_eq!(pod.wait("c2", ""), 137);
    pod.remove("c2");
}
