//! The CRI runtime's own crash (issue 15's fault matrix, RELIABILITY.md):
//! containerd killed with SIGKILL and started again while a kata pod is at
//! each phase of its life (boot, CreateContainer, running, exec in flight,
//! stop, delete), with a call of that phase in flight. Afterwards the
//! client does what kubelet would, stop and remove every pod it lists, and
//! nothing of any victim may be left: no VM, no shim, no state directory,
//! and no sandbox that containerd forgot. A neighbour kata pod keeps its
//! VM processes and answers an exec throughout.

mod common;

use std::time::{Duration, Instant};

use common::containerd::Containerd;
use common::cri::{Cri, KATA, container_config, pod_config};
use common::image::BUSYBOX_REF;
use common::*;
use tonic::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Boot,
    Create,
    Running,
    Exec,
    Stop,
    Delete,
}

/// A container whose PID 1 ignores SIGTERM, so a stop waits out its grace.
const STUBBORN: &str = "trap '' TERM; while :; do sleep 1; done";

fn answer<T>(r: &Result<T, Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => format!(
            "{:?}: {}",
            s.code(),
            s.message().chars().take(100).collect::<String>()
        ),
    }
}

/// Kata sandboxes with a state directory on the host, but `keep`.
fn sandboxes_but(keep: &str) -> Vec<String> {
    std::fs::read_dir(kata_shim::layout::PERSIST_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|id| id != keep)
        .collect()
}

#[test]
fn containerd_killed_at_every_phase_loses_no_pod() {
    require_vm_host();
    let mut c = Containerd::start_cri("crash", false);
    let sock = c.address();
    let nb_cfg = pod_config("neighbour", &c.pod_log_dir("neighbour"));
    let (nb, nb_ctr) = {
        let cri = c.cri();
        let nb = cri.run_pod(&nb_cfg, KATA).expect("RunPodSandbox neighbour");
        let ctr = cri
            .create_container(
                &nb,
                container_config("app", BUSYBOX_REF, &["sleep", "100000"]),
                &nb_cfg,
            )
            .expect("CreateContainer neighbour");
        cri.start_container(&ctr).expect("StartContainer neighbour");
        (nb, ctr)
    };
    let mut nb_vm = vm_processes(&nb);
    nb_vm.sort();
    let mut rows = Vec::new();
    for phase in [
        Phase::Boot,
        Phase::Create,
        Phase::Running,
        Phase::Exec,
        Phase::Stop,
        Phase::Delete,
    ] {
        let began = Instant::now();
        let name = format!("{phase:?}").to_lowercase();
        let cfg = pod_config(&name, &c.pod_log_dir(&name));
        let cri = c.cri();
        let pod = (phase != Phase::Boot).then(|| cri.run_pod(&cfg, KATA).expect("RunPodSandbox"));
        let ctr = match phase {
            Phase::Boot | Phase::Create => None,
            _ => {
                let pod = pod.as_deref().expect("pod");
                let id = cri
                    .create_container(
                        pod,
                        container_config("app", BUSYBOX_REF, &["sh", "-c", STUBBORN]),
                        &cfg,
                    )
                    .expect("CreateContainer");
                cri.start_container(&id).expect("StartContainer");
                Some(id)
            }
        };
        drop(cri);
        let in_flight = {
            let (sock, cfg, pod, ctr) = (sock.clone(), cfg.clone(), pod.clone(), ctr.clone());
            std::thread::spawn(move || {
                let cri = Cri::connect(&sock).expect("CRI client");
                match phase {
                    Phase::Boot => answer(&cri.run_pod(&cfg, KATA)),
                    Phase::Create => answer(&cri.create_container(
                        pod.as_deref().expect("pod"),
                        container_config("late", BUSYBOX_REF, &["sleep", "100000"]),
                        &cfg,
                    )),
                    Phase::Running => "nothing in flight".into(),
                    Phase::Exec => {
                        answer(&cri.exec_sync(ctr.as_deref().expect("ctr"), &["sleep", "5"], 30))
                    }
                    Phase::Stop => answer(&cri.stop_pod(pod.as_deref().expect("pod"))),
                    Phase::Delete => answer(&cri.remove_pod(pod.as_deref().expect("pod"))),
                }
            })
        };
        // Boot: the shim is up and the VM booting; else the call is in the
        // shim or the guest.
        std::thread::sleep(if phase == Phase::Boot {
            Duration::from_millis(1500)
        } else {
            Duration::from_millis(300)
        });
        c.crash_and_restart();
        let saw = in_flight.join().expect("the in-flight call");

        // As kubelet: stop and remove every pod the CRI lists, but the
        // neighbour.
        let cri = c.cri();
        let listed: Vec<String> = cri
            .list_pods()
            .expect("ListPodSandbox after the restart")
            .into_iter()
            .map(|p| p.id)
            .filter(|id| *id != nb)
            .collect();
        for id in &listed {
            cri.stop_pod(id).unwrap_or_else(|e| {
                panic!(
                    "{phase:?}: StopPodSandbox {id} after the restart: {e}\n{}",
                    c.log_tail()
                )
            });
            cri.remove_pod(id).unwrap_or_else(|e| {
                panic!(
                    "{phase:?}: RemovePodSandbox {id} after the restart: {e}\n{}",
                    c.log_tail()
                )
            });
            assert_no_leaks(id);
        }
        // No sandbox the CRI forgot: nothing of ours but the neighbour's.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sandboxes_but(&nb).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let forgotten = sandboxes_but(&nb);
        assert!(
            forgotten.is_empty(),
            "{phase:?}: sandboxes left after every listed pod was removed: {forgotten:?}"
        );
        let mut vm = vm_processes(&nb);
        vm.sort();
        assert_eq!(vm, nb_vm, "{phase:?}: the neighbour's VM processes changed");
        let r = cri
            .exec_sync(&nb_ctr, &["echo", "here"], 60)
            .unwrap_or_else(|e| panic!("{phase:?}: the neighbour's exec: {e}"));
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "here");
        let row = format!(
            "| containerd | {phase:?} | kill -9, then started | in-flight call: {saw}; after the restart {} pod(s) listed, each stopped and removed | nothing; the neighbour answers | {:.0} s |",
            listed.len(),
            began.elapsed().as_secs_f64()
        );
        eprintln!("{row}");
        rows.push(row);
    }
    let cri = c.cri();
    cri.stop_pod(&nb).expect("StopPodSandbox neighbour");
    cri.remove_pod(&nb).expect("RemovePodSandbox neighbour");
    assert_no_leaks(&nb);
    eprintln!("{}", rows.join("\n"));
}
