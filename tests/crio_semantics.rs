//! Lifecycle semantics the real CRI-O 1.32 showed broken and runc gets
//! right, pinned through the CRI-O driver: the pod's shared pid namespace,
//! stop by the stop signal (and never a lost one), a created container that
//! is stopped and removed without ever starting, an exec confined exactly
//! like the container's init, and the resources CRI-O writes for a
//! container without a CPU limit. Every pod is removed and checked for
//! leaks.

mod common;

use std::time::Duration;

use common::crio::*;
use common::pids_of_script;
use containerd_shim_protos::api;
use serde_json::json;

const EXEC: Duration = Duration::from_secs(60);
/// Stands in for a real grace period: long enough that a stop ended by
/// SIGKILL at its end is told apart from one ended by the stop signal.
const GRACE: Duration = Duration::from_secs(30);

fn status(s: &api::StateResponse) -> api::Status {
    s.status.enum_value().expect("known status")
}

/// The lines of `/proc/self/status` that make up a process's confinement.
const CONFINEMENT: &str = "grep -E '^(Seccomp|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status; \
     echo masked=$(head -c 16 /proc/timer_list | wc -c)";

fn report<'a>(reports: &'a [(String, StopReport)], id: &str) -> &'a StopReport {
    &reports
        .iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("{id} was not stopped by StopPodSandbox: {reports:?}"))
        .1
}

#[test]
fn crio_pod_shared_pid_namespace_and_sigterm_stop() {
    let mut crio = Crio::new("pidpod");
    let sid = crio.run_pod_sandbox(&PodConfig::new("shared"));
    let a = crio.create_container(&sid, "a", &["/bin/sleep", "1001"]);
    let b = crio.create_container(&sid, "b", &["/bin/sleep", "1002"]);
    let c = crio.create_container(&sid, "c", &["/bin/sleep", "1003"]);
    for id in [&a, &b, &c] {
        crio.start_container(id);
    }

    // b sees a's process, and the pod's PID 1 is the infra container's.
    let r = crio.exec_sync(&b, &["sh", "-c", &pids_of_script("/bin/sleep 1001")], EXEC);
    let a_pid = r.stdout().trim().to_string();
    assert!(a_pid.parse::<u32>().is_ok_and(|p| p > 1), "{r:?}");
    let r = crio.exec_sync(&b, &["cat", "/proc/1/cmdline"], EXEC);
    assert!(
        r.stdout().contains("trap"),
        "PID 1 is not the infra's: {r:?}"
    );

    // b signals a: a's sleep is not PID 1, so SIGTERM's default action
    // ends it (143), and b runs on.
    let r = crio.exec_sync(&b, &["kill", "-TERM", &a_pid], EXEC);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let done = crio
        .init_exit(&a, Duration::from_secs(60))
        .expect("a ends by b's SIGTERM");
    assert_eq!(done.wait.expect("Wait a").exit_status, 143);
    assert_eq!(status(&crio.state(&b)), api::Status::RUNNING);

    // Stopping c alone leaves b running.
    let (st, rep) = crio.stop_container_report(&c, GRACE);
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 143));
    assert!(!rep.sigkill, "c needed SIGKILL: {rep:?}");
    assert_eq!(status(&crio.state(&b)), api::Status::RUNNING);

    // StopPodSandbox: b ends by its SIGTERM, not by the SIGKILL at the
    // deadline, and the infra by its handler.
    let reports = crio.stop_pod(&sid, GRACE);
    let rb = report(&reports, &b);
    assert_eq!((rb.sigkill, rb.exit_status), (false, Some(143)), "{rb:?}");
    let rs = report(&reports, &sid);
    assert!(!rs.sigkill, "the infra needed SIGKILL: {rs:?}");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_private_pid_namespaces_and_unreceivable_stop_signals() {
    let mut crio = Crio::new("pidctr");
    let cfg = PodConfig {
        private_pid: true,
        ..PodConfig::new("private")
    };
    let sid = crio.run_pod_sandbox(&cfg);
    let a = crio.create_container(&sid, "a", &["/bin/sleep", "1001"]);
    let polite = crio.create_container(
        &sid,
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 3' TERM; while :; do sleep 1; done",
        ],
    );
    let never = crio.create_container(&sid, "never", &["/bin/sleep", "1004"]);
    crio.start_container(&a);
    crio.start_container(&polite);

    // CONTAINER mode: polite sees nothing of a, and is its own PID 1.
    let r = crio.exec_sync(
        &polite,
        &["sh", "-c", &pids_of_script("/bin/sleep 1001")],
        EXEC,
    );
    assert_eq!(
        r.stdout(),
        "",
        "a is visible from another pid namespace: {r:?}"
    );
    let r = crio.exec_sync(&polite, &["cat", "/proc/1/cmdline"], EXEC);
    assert!(r.stdout().contains("exit 3"), "{r:?}");

    // a's sleep is PID 1 of its namespace and has no SIGTERM handler: the
    // kernel would drop SIGTERM and runc waits out the grace period. The
    // agent sends SIGKILL at once instead.
    let (st, rep) = crio.stop_container_report(&a, GRACE);
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 137));
    assert!(!rep.sigkill && rep.elapsed < GRACE, "{rep:?}");
    // An init with a handler gets SIGTERM and runs it.
    let (st, rep) = crio.stop_container_report(&polite, GRACE);
    assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 3));
    assert!(!rep.sigkill, "{rep:?}");

    // A created, never started container: its stop reports an exit, so
    // StopPodSandbox and RemovePodSandbox complete.
    assert_eq!(status(&crio.state(&never)), api::Status::CREATED);
    let reports = crio.stop_pod(&sid, GRACE);
    let rn = report(&reports, &never);
    assert!(!rn.sigkill && rn.exit_status.is_some(), "{rn:?}");
    assert_eq!(status(&crio.state(&never)), api::Status::STOPPED);
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_stop_right_after_run_and_created_container_removal() {
    let mut crio = Crio::new("stopearly");
    // The pod is stopped the moment RunPodSandbox returns: the infra may
    // not have its SIGTERM handler yet, and the stop must not be lost.
    let sid = crio.run_pod_sandbox(&PodConfig::new("early"));
    let never = crio.create_container(&sid, "never", &["/bin/sleep", "1005"]);
    let reports = crio.stop_pod(&sid, GRACE);
    for (id, rep) in &reports {
        assert!(!rep.sigkill, "{id} needed SIGKILL: {rep:?}");
    }
    assert_eq!(status(&crio.state(&never)), api::Status::STOPPED);
    // RemovePodSandbox: Delete + Shutdown of the never started container,
    // then of the infra; the shim exits and nothing is left.
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_exec_is_confined_like_the_init() {
    let mut crio = Crio::new("execconf");
    let sid = crio.run_pod_sandbox(&PodConfig::new("confined"));
    let mut p = crio.prepare_container(
        &sid,
        "app",
        &["/bin/sh", "-c", &format!("{CONFINEMENT}; exec sleep 1000")],
    );
    // A seccomp profile in CRI-O's shape (it inlines the profile in the
    // spec): everything allowed but sethostname.
    p.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let id = crio.create_prepared(p).expect("create");
    crio.start_container(&id);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let init = loop {
        let out = String::from_utf8_lossy(&crio.output(&id).0).into_owned();
        if out.contains("masked=") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "init output: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(init.contains("Seccomp:\t2"), "{init}");
    assert!(init.contains("masked=0"), "{init}");
    let r = crio.exec_sync(&id, &["/bin/sh", "-c", CONFINEMENT], EXEC);
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        r.stdout(),
        init,
        "the exec's confinement differs from the init's"
    );

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_resources_shape_and_bad_values() {
    let mut crio = Crio::new("resources");
    let sid = crio.run_pod_sandbox(&PodConfig::new("res"));
    // The driver's default app spec is CRI-O's no-limit shape (shares 2,
    // quota 0, period 0, empty cpusets): it must run.
    let plain = crio.create_container(&sid, "plain", &["/bin/sleep", "1000"]);
    crio.start_container(&plain);
    let r = crio.exec_sync(
        &plain,
        &["cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu.weight"],
        EXEC,
    );
    assert_eq!(r.stdout(), "max 100000\n1\n", "{r:?}");

    // kubelet's shape for a container with a memory limit and no CPU
    // limit: period 100000, quota 0, swap equal to memory.
    let mut p = crio.prepare_container(&sid, "mem", &["/bin/sleep", "1000"]);
    p.spec["linux"]["resources"]["cpu"] =
        json!({"shares": 102, "quota": 0, "period": 100000, "cpus": "", "mems": ""});
    p.with_memory_limit(128 << 20);
    let mem = crio.create_prepared(p).expect("create with a memory limit");
    crio.start_container(&mem);
    let r = crio.exec_sync(
        &mem,
        &["cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/memory.max"],
        EXEC,
    );
    assert_eq!(r.stdout(), format!("max 100000\n{}\n", 128 << 20), "{r:?}");
    // UpdateContainerResources in the same shape, with a CPU limit and -1
    // (unlimited) memory.
    crio.update(
        &mem,
        &json!({"cpu": {"shares": 102, "quota": 50000, "period": 100000, "cpus": "", "mems": ""},
                "memory": {"limit": -1, "swap": -1}}),
    )
    .expect("Update");
    let r = crio.exec_sync(
        &mem,
        &["cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/memory.max"],
        EXEC,
    );
    assert_eq!(r.stdout(), "50000 100000\nmax\n", "{r:?}");

    // Values the OCI spec forbids: refused, naming the field; the pod's
    // containers run on.
    let e = crio
        .update(&mem, &json!({"cpu": {"quota": -5, "period": 100000}}))
        .expect_err("quota -5");
    assert_rpc_error(&e, ttrpc::Code::INVALID_ARGUMENT, "cpu.quota");
    let mut p = crio.prepare_container(&sid, "bad", &["/bin/sleep", "1000"]);
    p.spec["linux"]["resources"]["memory"] = json!({"limit": 64 << 20, "swap": 1 << 20});
    let e = crio.create_prepared(p).expect_err("swap below memory");
    assert_crio_error(&e, ttrpc::Code::INVALID_ARGUMENT, "memory.swap");
    // A pid namespace path that names nothing of this pod.
    let mut p = crio.prepare_container(&sid, "foreign", &["/bin/sleep", "1000"]);
    p.spec["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/1/ns/pid"});
    let e = crio
        .create_prepared(p)
        .expect_err("the node's pid namespace");
    assert_crio_error(&e, ttrpc::Code::INVALID_ARGUMENT, "linux.namespaces");
    for id in [&plain, &mem] {
        assert_eq!(status(&crio.state(id)), api::Status::RUNNING, "{id}");
    }

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

fn assert_rpc_error(e: &ttrpc::Error, code: ttrpc::Code, needle: &str) {
    assert_eq!(rpc_code(e), Some(code), "{e:?}");
    assert!(format!("{e:?}").contains(needle), "{needle}: {e:?}");
}

fn assert_crio_error(e: &CrioError, code: ttrpc::Code, needle: &str) {
    match e {
        CrioError::Rpc(e) => assert_rpc_error(e, code, needle),
        other => panic!("expected an RPC error naming {needle}: {other:?}"),
    }
}

/// Issue 15, bad input: a client that calls in the wrong order or twice
/// gets a clear error with a deliberate code, never a hang, and the pod is
/// still removed with nothing left. runc's shim answers the same cases
/// with errors too (a second Start, Kill or Exec of what is gone).
#[test]
fn calls_out_of_order_or_twice_answer_clearly_and_leave_nothing() {
    let mut crio = Crio::new("order");
    let sid = crio.run_pod_sandbox(&PodConfig::new("order"));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);

    let mut start = api::StartRequest::new();
    start.id = app.clone();
    let twice = crio
        .call::<_, api::StartResponse>(&app, "Start", &start)
        .expect_err("a second Start of a running container");
    eprintln!("Start twice: {twice:?}");
    assert_rpc_error(&twice, ttrpc::Code::FAILED_PRECONDITION, "running");

    let st = crio.stop_container(&app, Duration::from_secs(10));
    assert_eq!(status(&st), api::Status::STOPPED);
    let late = crio
        .exec(&app, "late", &["/bin/true"])
        .err()
        .expect("an exec into a stopped container fails");
    eprintln!("Exec into a stopped container: {late:?}");
    assert_crio_error(&late, ttrpc::Code::FAILED_PRECONDITION, "stopped");

    // Delete before Start: a created container goes, as with runc.
    let never = crio.create_container(&sid, "never", &["/bin/sleep", "1005"]);
    let deleted = crio.remove_container(&never);
    eprintln!("Delete before Start: exit {}", deleted.exit_status);
    let mut kill = api::KillRequest::new();
    kill.id = never.clone();
    kill.signal = 9;
    let gone = crio
        .call::<_, api::Empty>(&sid, "Kill", &kill)
        .expect_err("Kill after Delete");
    eprintln!("Kill after Delete: {gone:?}");
    assert_rpc_error(&gone, ttrpc::Code::NOT_FOUND, &never);
    let mut again = api::DeleteRequest::new();
    again.id = never.clone();
    let twice = crio
        .call::<_, api::DeleteResponse>(&sid, "Delete", &again)
        .expect_err("Delete twice");
    eprintln!("Delete twice: {twice:?}");
    assert_rpc_error(&twice, ttrpc::Code::NOT_FOUND, &never);

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}
