//! The shim driven exactly as CRI-O 1.32 drives a `runtime_type = "vm"`
//! handler: pods of several containers sharing one QEMU, ExecSync (output
//! complete when Wait returns, exit codes, the timeout path), liveness,
//! StopContainer with SIGTERM then SIGKILL and the rootfs unmounted right
//! after, stats, update, the `oom` file, Delete + Shutdown per container and
//! the shim daemon exiting after the last one.

mod common;

use std::time::{Duration, Instant};

use common::crio::*;
use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics::Metrics as MetricsV1;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as MetricsV2;
use protobuf::Message;
use protobuf::well_known_types::any::Any;
use serde_json::json;

const EXEC: Duration = Duration::from_secs(60);

fn status(s: &api::StateResponse) -> api::Status {
    s.status.enum_value().expect("known status")
}

/// The memory limit the metrics report, whichever cgroup version.
fn memory_limit(any: &Any) -> u64 {
    match any.type_url.as_str() {
        METRICS_V1 => {
            let m = MetricsV1::parse_from_bytes(&any.value).expect("v1 metrics");
            m.memory.usage.limit
        }
        METRICS_V2 => {
            let m = MetricsV2::parse_from_bytes(&any.value).expect("v2 metrics");
            m.memory.usage_limit
        }
        other => panic!("stats type URL {other:?} is neither cgroups v1 nor v2 Metrics"),
    }
}

#[test]
fn crio_pod_of_two_containers_in_one_vm() {
    let mut crio = Crio::new("pod");
    let sid = crio.run_pod_sandbox(&PodConfig::new("two"));
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "QEMU processes of {sid}: {qemu:?}");
    assert_eq!(crio.create_pid(&sid), qemu[0], "Create returns QEMU's pid");
    assert_eq!(crio.state(&sid).pid, qemu[0]);

    let a = crio.create_container(&sid, "a", &["/bin/sleep", "1000"]);
    let b = crio.create_container(
        &sid,
        "b",
        &[
            "/bin/sh",
            "-c",
            "echo started; echo on-stderr >&2; exec sleep 1000",
        ],
    );
    for id in [&a, &b] {
        let st = crio.start_container(id);
        assert_eq!(status(&st), api::Status::RUNNING, "{id}: {st:?}");
        assert_eq!(st.pid, qemu[0], "State pid of {id} is QEMU's");
        assert!(crio.bundle(id).join("address").is_file());
    }
    assert_eq!(qemu_pids(&sid), qemu, "the containers share the pod's QEMU");
    let pids: api::PidsResponse = crio
        .call(&a, "Pids", &{
            let mut r = api::PidsRequest::new();
            r.id = a.clone();
            r
        })
        .expect("Pids");
    assert!(
        pids.processes.iter().any(|p| p.pid == qemu[0]),
        "Pids does not list QEMU {}: {pids:?}",
        qemu[0]
    );
    crio.kill0(&a).expect("Kill(0) liveness probe");
    crio.kill0(&sid).expect("Kill(0) on the sandbox");

    // Output of the container's own process arrives on its FIFOs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, err) = crio.output(&b);
        if out == b"started\n" && err == b"on-stderr\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container output: {:?} / {:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // All of an exec's output is in the FIFOs when Wait answers.
    let r = crio.exec_sync(&a, &["seq", "1", "20000"], EXEC);
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(r.exit_code, 0, "{}", r.stderr());
    assert!(
        r.stdout() == expected,
        "seq output incomplete: {} of {} bytes",
        r.stdout.len(),
        expected.len()
    );
    let r = crio.exec_sync(&b, &["sh", "-c", "echo out; echo err >&2; exit 7"], EXEC);
    assert_eq!(
        (r.exit_code, r.stdout(), r.stderr()),
        (7, "out\n".into(), "err\n".into())
    );

    // Timeout: Kill(SIGKILL), Wait, no Delete, -1 for CRI-O; the exec stays
    // known to the shim and the container runs on.
    let r = crio.exec_sync(&a, &["sleep", "60"], Duration::from_secs(2));
    assert!(r.timed_out && r.exit_code == -1, "{r:?}");
    let st = crio
        .try_state(&a, &r.exec_id)
        .expect("State of the timed-out exec");
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 137));
    assert_eq!(status(&crio.state(&a)), api::Status::RUNNING);

    let stats = crio.stats(&a);
    assert!(
        stats.type_url == METRICS_V1 || stats.type_url == METRICS_V2,
        "stats type URL {:?}",
        stats.type_url
    );
    crio.update(
        &a,
        &json!({"memory": {"limit": 268435456}, "cpu": {"shares": 512}}),
    )
    .expect("Update");
    assert_eq!(
        memory_limit(&crio.stats(&a)),
        268435456,
        "limit after Update"
    );

    // Removing one container leaves the pod serving the other.
    crio.stop_container(&a, Duration::from_secs(2));
    crio.remove_container(&a);
    assert_eq!(status(&crio.state(&b)), api::Status::RUNNING);
    assert_eq!(
        crio.exec_sync(&b, &["echo", "still"], EXEC).stdout(),
        "still\n"
    );

    crio.stop_pod(&sid, Duration::from_secs(2));
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_stop_container_term_then_kill() {
    let mut crio = Crio::new("stop");
    let sid = crio.run_pod_sandbox(&PodConfig::new("stop"));
    let polite = crio.create_container(
        &sid,
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ],
    );
    let stubborn = crio.create_container(
        &sid,
        "stubborn",
        &["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
    );
    let quick = crio.create_container(&sid, "quick", &["/bin/sh", "-c", "exit 5"]);
    for id in [&polite, &stubborn, &quick] {
        crio.start_container(id);
    }

    // An exit is final when Wait answers: State already says so.
    let done = crio
        .init_exit(&quick, Duration::from_secs(60))
        .expect("quick container exits");
    assert_eq!(done.wait.expect("Wait").exit_status, 5);
    let st = done.state.expect("State after Wait").expect("State");
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 5));
    assert!(st.exited_at.is_some(), "no exit time: {st:?}");

    let began = Instant::now();
    let st = crio.stop_container(&polite, Duration::from_secs(20));
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 0));
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "SIGTERM was not delivered: stop took {:?}",
        began.elapsed()
    );

    let began = Instant::now();
    let st = crio.stop_container(&stubborn, Duration::from_secs(3));
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 137));
    assert!(began.elapsed() >= Duration::from_secs(3), "TERM ended it");

    // Kill of a stopped container succeeds (CRI-O and kubelet retry it).
    crio.kill(&stubborn, "", 9, false)
        .expect("Kill(SIGKILL) of a stopped container");

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_oom_kill_writes_the_oom_file() {
    let mut crio = Crio::new("oom");
    // Only the container is limited: a pod limit would also bound QEMU on
    // the host, which is not what this test is about.
    let sid = crio.run_pod_sandbox(&PodConfig::new("oom"));
    let mut p = crio.prepare_container(
        &sid,
        "hog",
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    p.spec["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    let id = crio.create_prepared(p).expect("create the memory hog");
    crio.start_container(&id);
    let done = crio
        .init_exit(&id, Duration::from_secs(120))
        .expect("the hog is killed");
    assert_eq!(done.wait.expect("Wait").exit_status, 137);
    let oom = crio.bundle(&id).join("oom");
    let meta = std::fs::metadata(&oom)
        .unwrap_or_else(|e| panic!("{}: {e} (CRI-O would not report OOMKilled)", oom.display()));
    assert_eq!(meta.len(), 0, "the oom file is empty");

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// CVE-2024-25621 (world-traversable state directories) and CVE-2020-15257
/// (a shim API on an abstract socket, reachable from any process in the
/// host's network namespace): every directory of a running sandbox is
/// root's alone, and every socket that names it is a path socket in one.
#[test]
fn crio_sandbox_directories_are_private_and_its_sockets_are_paths() {
    use std::os::unix::fs::MetadataExt;
    let mut crio = Crio::new("private");
    let sid = crio.run_pod_sandbox(&PodConfig::new("private"));
    let paths = kata_shim::layout::SandboxPaths::new(&sid);
    for dir in [
        paths.state_dir.clone(),
        paths.share_dir.clone(),
        kata_shim::layout::shim_dir(&sid),
    ] {
        let m = std::fs::metadata(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        println!(
            "{} mode {:o} uid {}",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        );
        assert_eq!(m.mode() & 0o077, 0, "{} is open to others", dir.display());
        assert_eq!(m.uid(), 0, "{} is not root's", dir.display());
    }
    let unix = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let named: Vec<&str> = unix
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.contains(&sid) || p.contains(&sid[..12]) || p.contains("kata"))
        .collect();
    println!("sockets naming the sandbox: {named:?}");
    assert!(
        named.iter().any(|p| p.ends_with("shim.sock")),
        "the shim's socket is not listed: {named:?}"
    );
    let abstract_: Vec<&&str> = named.iter().filter(|p| p.starts_with('@')).collect();
    assert!(abstract_.is_empty(), "abstract sockets: {abstract_:?}");
    // GHSA-2gv2-cffp-j227: virtiofsd keeps its own sandbox and seccomp
    // filter (the shim never passes `--sandbox none` or `--seccomp none`).
    // With its namespace sandbox it forks: the parent only waits, the
    // child serves the guest, confined.
    let fsd: Vec<(u32, Vec<String>)> = processes()
        .into_iter()
        .filter(|(_, argv)| {
            argv.first().is_some_and(|a| a.ends_with("virtiofsd"))
                && argv.iter().any(|a| a.contains(&sid))
        })
        .collect();
    assert!(!fsd.is_empty(), "the pod's virtiofsd is not running");
    let line = fsd[0].1.join(" ");
    for off in [
        "--sandbox none",
        "--sandbox=none",
        "--seccomp none",
        "--seccomp=none",
    ] {
        assert!(!line.contains(off), "virtiofsd runs with {off}: {line}");
    }
    let modes: Vec<(u32, String)> = fsd
        .iter()
        .map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|m| m.trim().to_string())
                .unwrap_or_default();
            (*pid, mode)
        })
        .collect();
    println!("virtiofsd processes (pid, Seccomp): {modes:?}; argv {line}");
    assert!(
        modes.iter().any(|(_, m)| m == "2"),
        "no virtiofsd process of the pod has a seccomp filter: {modes:?}"
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}
