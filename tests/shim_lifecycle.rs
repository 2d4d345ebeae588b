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

/// The connection keeper of a CRI-O sandbox: exactly one.
fn keeper_pid(sid: &str) -> u32 {
    let keepers: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, argv)| {
            argv.last().is_some_and(|a| a == "keeper")
                && argv.windows(2).any(|w| w[0] == "-id" && w[1] == sid)
        })
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(
        keepers.len(),
        1,
        "one keeper per CRI-O sandbox: {keepers:?}"
    );
    keepers[0]
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

/// Runs a pod with one app container, breaks the VM with `break_vm` (given
/// the sandbox id and QEMU's pid), and checks that both containers exit
/// with 255 within `within`, that the shim still answers, and that
/// removing the pod leaves nothing.
fn containers_exit_255_when(name: &str, within: Duration, break_vm: impl FnOnce(&str, u32)) {
    let mut crio = Crio::new(name);
    let sid = crio.run_pod_sandbox(&PodConfig::new(name));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let began = Instant::now();
    break_vm(&sid, qemu[0]);
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
    containers_exit_255_when("qemu-dies", Duration::from_secs(30), |_, qemu| kill9(qemu));
}

#[test]
fn stalled_vm_makes_every_container_exit_255() {
    // SIGSTOP freezes the whole VM, as QMP `stop` would: the agent stops
    // answering while QEMU lives. (The shim holds QEMU's only QMP
    // connection, so the test cannot send `stop` itself.)
    containers_exit_255_when("vm-stalls", Duration::from_secs(90), |_, pid| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("SIGSTOP QEMU");
    });
}

/// Issue 15: a dead helper used to leave the pod "running" with QEMU up:
/// without virtiofsd the guest's share hangs (the agent still answers its
/// health checks), without vhost-device-vsock the agent is cut off. Either
/// exit now ends the sandbox at once, as QEMU's does.
#[test]
fn a_killed_virtiofsd_or_vhost_device_vsock_makes_every_container_exit_255() {
    for helper in ["virtiofsd", "vhost-device-vsock"] {
        containers_exit_255_when(
            &format!("{helper}-dies"),
            Duration::from_secs(30),
            |sid, _| {
                // Every process of the helper: virtiofsd is a launcher and
                // its sandboxed child, the one that serves.
                let pids: Vec<u32> = vm_processes(sid)
                    .into_iter()
                    .filter(|(n, _)| n == helper)
                    .map(|(_, p)| p)
                    .collect();
                assert!(!pids.is_empty(), "no {helper} for {sid}");
                for pid in pids.into_iter().rev() {
                    kill9(pid);
                }
            },
        );
    }
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

/// Issue 15: a `kill -9` of the shim under CRI-O. CRI-O runs no `delete`
/// for a VM runtime and never re-dials a shim, so the shim's VM used to run
/// on for good while the pod reported "running" and could never be stopped
/// or removed (`ttrpc: closed`). Now the VM dies with its shim (the
/// parent-death signal), and the connection keeper answers on CRI-O's
/// connections as a stopped sandbox: the pending Waits return 255, State
/// says STOPPED, and the pod stops and is removed the normal way, leaving
/// nothing.
#[test]
fn a_killed_shim_takes_its_vm_along_and_the_pod_can_be_removed() {
    let mut crio = Crio::new("shim-kill9");
    let sid = crio.run_pod_sandbox(&PodConfig::new("shim-kill9"));
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);
    let shim = crio.shim_pid(&sid);
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
    // Real CRI-O keeps its clients after RemovePodSandbox; this one stands
    // for them, so that the keeper has to end by itself.
    let lingering = std::os::unix::net::UnixStream::connect(kata_shim::layout::shim_socket(&sid))
        .expect("connect to the shim");
    let keeper = keeper_pid(&sid);
    std::thread::sleep(Duration::from_millis(300));
    kill9(shim);
    let began = Instant::now();
    for (name, pid) in &vm {
        assert!(
            wait_gone(*pid, Duration::from_secs(10)),
            "{name} {pid} outlived its shim by 10 s"
        );
    }
    let vm_gone = began.elapsed();
    // What CRI-O's Wait goroutines see: the exits, on the connections they
    // already had.
    for id in [&app, &sid] {
        let done = crio
            .init_exit(id, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{id}: its pending Wait was never answered"));
        assert_eq!(done.wait.expect("Wait").exit_status, 255, "{id}");
        let state = crio.state(id);
        assert_eq!(status(&state), api::Status::STOPPED, "{id}: {state:?}");
        assert_eq!(state.exit_status, 255, "{id}");
    }
    let exits_seen = began.elapsed();
    // A CRI-O that restarted dials the address in the bundle again.
    let redialled = crio.state_after_restart(&app).expect("State on a re-dial");
    assert_eq!(status(&redialled), api::Status::STOPPED);
    assert_eq!(redialled.exit_status, 255);
    // New work is refused clearly, not hung.
    let refused = crio
        .exec(&app, "late", &["/bin/true"])
        .err()
        .expect("an exec into a dead sandbox");
    assert_eq!(
        refused.code(),
        Some(ttrpc::Code::UNAVAILABLE),
        "{refused:?}"
    );
    crio.remove_pod(&sid);
    assert!(
        wait_gone(keeper, Duration::from_secs(5)),
        "the keeper outlived the sandbox's Shutdown"
    );
    drop(lingering);
    eprintln!(
        "after the shim's kill -9: {} VM processes gone in {vm_gone:?}, both exits (255) seen \
         in {exits_seen:?}, the pod removed in {:?}",
        vm.len(),
        began.elapsed()
    );
    crio.assert_no_leaks(&sid);
}

/// Issue 15: what nothing cleaned is swept at the next pod's start. A shim
/// killed together with its keeper leaves the VM's directories, share
/// mounts and host cgroup (CRI-O runs no `delete`); the next sandbox's
/// shim tears them down from the persisted state.
#[test]
fn the_next_pod_sweeps_a_sandbox_whose_shim_and_keeper_were_killed() {
    let mut crio = Crio::new("sweep");
    let dead = crio.run_pod_sandbox(&PodConfig::new("sweep-dead"));
    let shim = crio.shim_pid(&dead);
    let keeper = keeper_pid(&dead);
    let vm = vm_processes(&dead);
    kill9(keeper);
    assert!(wait_gone(keeper, Duration::from_secs(5)));
    kill9(shim);
    for (name, pid) in &vm {
        assert!(
            wait_gone(*pid, Duration::from_secs(10)),
            "{name} {pid} outlived its shim"
        );
    }
    let left = || {
        [
            kata_shim::layout::shim_dir(&dead),
            std::path::Path::new(kata_shim::layout::RUN_ROOT).join(&dead),
            std::path::Path::new(kata_shim::layout::SHARE_ROOT).join(&dead),
        ]
        .into_iter()
        .filter(|d| d.exists())
        .collect::<Vec<_>>()
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !left().is_empty(),
        "nothing was left to sweep: the test shows nothing"
    );
    let began = Instant::now();
    let next = crio.run_pod_sandbox(&PodConfig::new("sweep-next"));
    while !left().is_empty() && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left().is_empty(), "not swept within 20 s: {:?}", left());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    // CRI-O's own pins of the pod (shm, namespaces) are the driver's to
    // remove; the shim's are under its /run directories.
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(dead.as_str()))
        .filter(|l| {
            [
                kata_shim::layout::RUN_ROOT,
                kata_shim::layout::SHARE_ROOT,
                kata_shim::layout::PERSIST_ROOT,
            ]
            .iter()
            .any(|root| l.contains(&format!(" {root}/")))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "mounts of the dead sandbox are left: {ours:?}"
    );
    eprintln!(
        "the next pod's shim swept the dead sandbox within {:?}",
        began.elapsed()
    );
    crio.remove_pod(&next);
    crio.assert_no_leaks(&next);
}

/// Issue 15, found by hand with the real CRI-O 1.32 killed during
/// RunPodSandbox: at its restart CRI-O removes the half-made pod's storage,
/// bundle included, and never calls the shim again, which served the VM
/// for good. A shim whose sandbox bundle is gone now tears the sandbox
/// down by itself.
#[test]
fn a_sandbox_whose_bundle_the_client_removed_is_torn_down() {
    let mut crio = Crio::new("forgotten");
    let sid = crio.run_pod_sandbox(&PodConfig::new("forgotten"));
    let shim = crio.shim_pid(&sid);
    let keeper = keeper_pid(&sid);
    let vm = vm_processes(&sid);
    assert!(!vm.is_empty());
    crio.forget_pod(&sid);
    let began = Instant::now();
    for (name, pid) in vm
        .iter()
        .chain([("shim".to_string(), shim), ("keeper".to_string(), keeper)].iter())
    {
        assert!(
            wait_gone(*pid, Duration::from_secs(60)),
            "{name} {pid} still runs 60 s after the bundle went"
        );
    }
    eprintln!(
        "the forgotten sandbox was torn down {:?} after its bundle went",
        began.elapsed()
    );
    assert_no_leaks(&sid);
}
