//! The CRI runtime's own faults (issue 15's fault matrix, RELIABILITY.md):
//! containerd killed with SIGKILL and started again, stopped gracefully
//! and started again, or frozen with SIGSTOP for 30 s, while a kata pod
//! is at each phase of its life (boot, CreateContainer, running, exec in
//! flight, stop, delete), with a call of that phase in flight. Afterwards
//! the client does what kubelet would, stop and remove every pod it lists,
//! and nothing of any victim may be left: no VM, no shim, no state
//! directory, and no sandbox that containerd forgot. A neighbour kata pod
//! keeps its VM processes and answers an exec throughout.
//!
//! `make test` runs the SIGKILL; `FAULT_CELLS=all` (`make soak`) all three,
//! and writes their table to `FAULT_CRI_REPORT`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::containerd::Containerd;
use common::cri::{Cri, KATA, container_config, pod_config};
use common::image::BUSYBOX_REF;
use common::*;
use k8s_cri::v1::PodSandbox;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
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

/// What happens to containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Restart,
    Freeze,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9, then started",
            Fault::Restart => "stopped (SIGTERM), then started",
            Fault::Freeze => "SIGSTOP for 30 s, then SIGCONT",
        }
    }

    fn strike(self, c: &mut Containerd) {
        match self {
            Fault::Kill => c.crash_and_restart(),
            Fault::Restart => c.restart(),
            Fault::Freeze => {
                let pid = Pid::from_raw(c.pid().expect("containerd runs") as i32);
                kill(pid, Signal::SIGSTOP).expect("SIGSTOP containerd");
                std::thread::sleep(FREEZE_FOR);
                kill(pid, Signal::SIGCONT).expect("SIGCONT containerd");
            }
        }
    }
}

/// The 30 s.
const FREEZE_FOR: Duration = Duration::from_secs(30);

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

/// Kata sandboxes with a state directory on the host, but `keep` and those
/// of other clients on this machine: a sandbox is another client's when a
/// shim of it runs with an address other than `ours` (or none, as under
/// CRI-O). One with no shim left at all is a forgotten one of ours.
fn sandboxes_but(keep: &str, ours: &str) -> Vec<String> {
    let shims: Vec<Vec<String>> = processes()
        .into_iter()
        .map(|(_, argv)| argv)
        .filter(|argv| {
            argv.first()
                .is_some_and(|a| a.ends_with("containerd-shim-kata-v2"))
        })
        .collect();
    std::fs::read_dir(kata_shim::layout::PERSIST_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|id| id != keep)
        .filter(|id| {
            let mine: Vec<&Vec<String>> = shims.iter().filter(|a| a.contains(id)).collect();
            mine.is_empty() || mine.iter().any(|a| a.iter().any(|w| w == ours))
        })
        .collect()
}

#[test]
fn containerd_killed_at_every_phase_loses_no_pod() {
    require_vm_host();
    let all = std::env::var("FAULT_CELLS").is_ok_and(|v| v == "all");
    let faults: &[Fault] = if all {
        &[Fault::Kill, Fault::Restart, Fault::Freeze]
    } else {
        &[Fault::Kill]
    };
    let mut c = Containerd::start_cri("crash", false);
    let sock = c.address();
    let ours = sock.display().to_string();
    let (nb, nb_ctr) = sleeping_pod(&c, "neighbour");
    let mut nb_vm = vm_processes(&nb);
    nb_vm.sort();
    let mut rows = Vec::new();
    let cells = faults.iter().flat_map(|&f| {
        [
            Phase::Boot,
            Phase::Create,
            Phase::Running,
            Phase::Exec,
            Phase::Stop,
            Phase::Delete,
        ]
        .map(|p| (f, p))
    });
    for (fault, phase) in cells {
        eprintln!("containerd: {} at {phase:?}", fault.name());
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
        // The victims' ids, for the leak check, even of a pod that
        // containerd forgets in the fault.
        let mut victims = sandboxes_but(&nb, &ours);
        fault.strike(&mut c);
        let saw = in_flight.join().expect("the in-flight call");

        // As kubelet: stop and remove every pod the CRI lists, but the
        // neighbour.
        let cri = c.cri();
        let listed: Vec<String> = list_when_ready(&cri)
            .into_iter()
            .map(|p| p.id)
            .filter(|id| *id != nb)
            .collect();
        for id in &listed {
            cri.stop_pod(id).unwrap_or_else(|e| {
                panic!(
                    "{phase:?} / {fault:?}: StopPodSandbox {id} after the restart: {e}\n{}",
                    c.log_tail()
                )
            });
            cri.remove_pod(id).unwrap_or_else(|e| {
                panic!(
                    "{phase:?} / {fault:?}: RemovePodSandbox {id} after the restart: {e}\n{}",
                    c.log_tail()
                )
            });
            assert_no_leaks(id);
        }
        // No sandbox the CRI forgot: nothing of ours but the neighbour's.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sandboxes_but(&nb, &ours).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let forgotten = sandboxes_but(&nb, &ours);
        assert!(
            forgotten.is_empty(),
            "{phase:?} / {fault:?}: sandboxes left after every listed pod was removed: {forgotten:?}"
        );
        victims.extend(pod);
        for id in &victims {
            assert_no_leaks(id);
        }
        let mut vm = vm_processes(&nb);
        vm.sort();
        assert_eq!(
            vm, nb_vm,
            "{phase:?} / {fault:?}: the neighbour's VM processes changed"
        );
        let r = cri
            .exec_sync(&nb_ctr, &["echo", "here"], 60)
            .unwrap_or_else(|e| panic!("{phase:?} / {fault:?}: the neighbour's exec: {e}"));
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "here");
        let row = format!(
            "| containerd | {phase:?} | {} | in-flight call: {saw}; after it {} pod(s) listed, each stopped and removed | nothing; the neighbour answers | {:.0} s |",
            fault.name(),
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
    let table = format!(
        "| component | phase | fault | what the client saw | left | time |\n|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    eprintln!("{table}");
    if let Some(report) = std::env::var_os("FAULT_CRI_REPORT") {
        std::fs::write(&report, &table).expect("write FAULT_CRI_REPORT");
    }
}

/// The pods containerd lists once it answers: its CRI says "not
/// initialized" while it recovers its sandboxes after a start, and kubelet
/// retries, as this does for up to a minute.
fn list_when_ready(cri: &Cri) -> Vec<PodSandbox> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cri.list_pods() {
            Err(e) if e.message().contains("not initialized") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            r => return r.expect("ListPodSandbox after containerd's start"),
        }
    }
}

/// A kata pod named `name` with one container sleeping: its pod and
/// container ids.
fn sleeping_pod(c: &Containerd, name: &str) -> (String, String) {
    let cfg = pod_config(name, &c.pod_log_dir(name));
    let cri = c.cri();
    let pod = cri
        .run_pod(&cfg, KATA)
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
    let ctr = cri
        .create_container(
            &pod,
            container_config("app", BUSYBOX_REF, &["sleep", "100000"]),
            &cfg,
        )
        .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}"));
    cri.start_container(&ctr)
        .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}"));
    (pod, ctr)
}

/// A node reboot (issue 15, item 4): the power goes with a kata pod
/// running, so `/run` (our directories, containerd's state, the pod's
/// network namespace) and the cgroups are gone at boot, while `/var`
/// (containerd's metadata, the guest image) is kept. After the boot the
/// client stops and removes what containerd still lists, as kubelet does,
/// and a new kata pod must run and leave nothing, as must the old one.
#[test]
fn a_node_reboot_leaves_nothing_that_breaks_the_next_pod() {
    require_vm_host();
    let mut c = Containerd::start_cri("reboot", false);
    let ours = c.address().display().to_string();
    let (old, _) = sleeping_pod(&c, "before");
    // containerd names it under /var/run, a link to /run: the mount table
    // has the real path.
    let netns = c.cri().pod_netns(&old).expect("the pod's netns");
    let netns = std::fs::canonicalize(&netns).unwrap_or(netns);
    let cgroups = host_cgroups(&old);
    assert!(!cgroups.is_empty(), "the pod has no host cgroup");

    c.power_cycle(|| {
        let victims: Vec<u32> = processes()
            .into_iter()
            .filter(|(_, argv)| argv.iter().any(|a| a.contains(&old)))
            .map(|(pid, _)| pid)
            .collect();
        for &pid in &victims {
            kill9(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while victims
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                Instant::now() < deadline,
                "the pod's processes outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for dir in [
            Path::new(kata_shim::layout::RUN_ROOT).join(&old),
            Path::new(kata_shim::layout::SHARE_ROOT).join(&old),
            Path::new(kata_shim::layout::PERSIST_ROOT).join(&old),
            kata_shim::layout::mgmt_dir(&old),
        ] {
            unmount_under(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        unmount_under(&netns);
        std::fs::remove_file(&netns).expect("remove the pod's netns as a boot would");
        for dir in &cgroups {
            let _ = std::fs::remove_dir(dir);
        }
    });

    // As kubelet after the boot: stop and remove every pod listed.
    let cri = c.cri();
    let pods = list_when_ready(&cri);
    eprintln!(
        "after the boot containerd lists {:?}",
        pods.iter().map(|p| (&p.id, p.state)).collect::<Vec<_>>()
    );
    for p in &pods {
        cri.stop_pod(&p.id).unwrap_or_else(|e| {
            panic!(
                "StopPodSandbox {} after the boot: {e}\n{}",
                p.id,
                c.log_tail()
            )
        });
        cri.remove_pod(&p.id).unwrap_or_else(|e| {
            panic!(
                "RemovePodSandbox {} after the boot: {e}\n{}",
                p.id,
                c.log_tail()
            )
        });
    }
    assert_no_leaks(&old);

    let (new, ctr) = sleeping_pod(&c, "after");
    let r = cri
        .exec_sync(&ctr, &["echo", "booted"], 60)
        .expect("ExecSync after the boot");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "booted");
    cri.stop_pod(&new).expect("StopPodSandbox");
    cri.remove_pod(&new).expect("RemovePodSandbox");
    assert_no_leaks(&new);
    let left = sandboxes_but("", &ours);
    assert!(left.is_empty(), "sandboxes left after the boot: {left:?}");
}
