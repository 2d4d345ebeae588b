//! The pod's lifecycle beyond the happy path, driven as CRI-O does: QEMU
//! and its helpers run in the pod's host cgroup; a VM that dies or stalls
//! makes every container exit with 255 while the shim keeps serving until
//! the pod is removed, and nothing is left behind.

mod common;

use std::time::{Duration, Instant};

use common::crio::{Crio, PodConfig};
use common::*;
use containerd_shim_protos::api;
use kata_shim::host_cgroup::{HostCgroup, pid_in};

/// A sandbox's helper pids by name (QEMU, virtiofsd, vhost-device-vsock).
fn vm_processes(sid: &str) -> Vec<(String, u32)> {
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

fn status(s: &api::StateResponse) -> api::Status {
    s.status.enum_value().expect("known status")
}

#[test]
fn vm_processes_run_in_the_pod_host_cgroup() {
    let mut crio = Crio::new("cgroup");
    let sid = crio.run_pod_sandbox(&PodConfig::new("cgroup"));
    let parent = crio.pod_info(&sid).cgroup_parent.clone();
    let path = format!("{parent}/crio-{sid}");
    let cg = HostCgroup::for_sandbox(&path, &sid)
        .expect("cgroups path")
        .expect("a cgroup");
    assert!(!cg.dirs().is_empty());
    let procs = vm_processes(&sid);
    let names: Vec<&str> = procs.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock"] {
        assert!(names.contains(&want), "{want} not found: {procs:?}");
    }
    for (name, pid) in &procs {
        for dir in cg.dirs() {
            assert!(
                pid_in(*pid, dir),
                "{name} ({pid}) is not in {} but in:\n{}",
                dir.display(),
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
            );
        }
    }
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// Runs a pod with one app container, breaks the VM with `break_vm`, and
/// checks that both containers exit with 255 within `within`, that the
/// shim still answers, and that removing the pod leaves nothing.
fn containers_exit_255_when(name: &str, within: Duration, break_vm: impl FnOnce(u32)) {
    let mut crio = Crio::new(name);
    let sid = crio.run_pod_sandbox(&PodConfig::new(name));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let began = Instant::now();
    break_vm(qemu[0]);
    for id in [&app, &sid] {
        let done = crio
            .init_exit(id, within)
            .unwrap_or_else(|| panic!("{id} did not exit within {within:?}"));
        assert_eq!(done.wait.expect("Wait").exit_status, 255);
        let st = done.state.expect("State after Wait").expect("State");
        assert_eq!((status(&st), st.exit_status), (api::Status::STOPPED, 255));
        assert!(st.exited_at.is_some());
    }
    eprintln!(
        "{name}: every container exited 255 after {:?}",
        began.elapsed()
    );
    // The shim stays up: probes, kills and state still answer.
    crio.kill(&app, "", 9, false)
        .expect("SIGKILL of a container of a dead VM succeeds");
    assert_eq!(status(&crio.state(&app)), api::Status::STOPPED);
    assert!(
        qemu_pids(&sid).is_empty(),
        "QEMU of the dead sandbox is still there after its containers exited"
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn qemu_killed_makes_every_container_exit_255() {
    containers_exit_255_when("qemu-dies", Duration::from_secs(30), kill9);
}

#[test]
fn stalled_vm_makes_every_container_exit_255() {
    // SIGSTOP freezes the whole VM, as QMP `stop` would: the agent stops
    // answering while QEMU lives. (The shim holds QEMU's only QMP
    // connection, so the test cannot send `stop` itself.)
    containers_exit_255_when("vm-stalls", Duration::from_secs(90), |pid| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("SIGSTOP QEMU");
    });
}

/// Issue 14: the lifecycle lock was held across the guest's
/// CreateContainer, whose deadline is 120 s, and the sandbox's death
/// waits for that lock. A VM that stalls while a Create waits on it is now
/// declared dead at the health checks' pace: the containers exit with 255
/// and the Create fails, well before the Create's own deadline.
#[test]
fn a_create_waiting_on_a_stalled_vm_does_not_hold_up_its_death() {
    let mut crio = Crio::new("create-stall");
    let sid = crio.run_pod_sandbox(&PodConfig::new("create-stall"));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let late = crio.prepare_container(&sid, "late", &["/bin/true"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP QEMU");
    let began = Instant::now();
    // Blocks until the shim answers: the guest never will.
    let created = crio.create_prepared(late);
    let create_took = began.elapsed();
    eprintln!("the Create on the stalled VM failed after {create_took:?}: {created:?}");
    assert!(created.is_err(), "a Create on a stalled VM succeeded");
    // The Create's own deadline is 120 s; death comes after two failed
    // 5 s health checks (each up to 8 s). A wide margin either way.
    assert!(
        create_took < Duration::from_secs(90),
        "the Create held the sandbox up for {create_took:?}"
    );
    for id in [&app, &sid] {
        let done = crio
            .init_exit(id, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{id} did not exit after the Create failed"));
        assert_eq!(done.wait.expect("Wait").exit_status, 255);
    }
    eprintln!("every container exited 255 after {:?}", began.elapsed());
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// Issue 15: CRI-O runs no `delete` for a VM runtime, so nothing but the
/// shim itself ends its VM. A `kill -9` of the shim used to leave QEMU,
/// virtiofsd and vhost-device-vsock running for good; they now die with
/// it (the parent-death signal, set by the one thread that forks them).
/// The driver's drop then runs the binary's own `delete`, which finds the
/// persisted state and leaves nothing.
#[test]
fn a_killed_shim_takes_its_vm_and_helpers_with_it() {
    let mut crio = Crio::new("shim-kill9");
    let sid = crio.run_pod_sandbox(&PodConfig::new("shim-kill9"));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    let shim: u32 = std::fs::read_to_string(crio.bundle(&sid).join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .expect("a pid");
    let vm = vm_processes(&sid);
    let mut names: Vec<&str> = vm.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    // virtiofsd is two: its launcher and its sandboxed child.
    names.dedup();
    assert_eq!(
        names,
        ["qemu-system-x86_64", "vhost-device-vsock", "virtiofsd"],
        "{vm:?}"
    );
    kill9(shim);
    let began = Instant::now();
    for (name, pid) in &vm {
        assert!(
            wait_gone(*pid, Duration::from_secs(10)),
            "{name} {pid} outlived its shim by 10 s"
        );
    }
    eprintln!(
        "{} VM processes were gone {:?} after the shim's kill -9",
        vm.len(),
        began.elapsed()
    );
}
