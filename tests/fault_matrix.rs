//! The fault matrix (issue 15, RELIABILITY.md): each VM-side component
//! (QEMU, the shim, virtiofsd, vhost-device-vsock) fails at each phase of
//! a pod's life (boot, CreateContainer, running, exec in flight, stop,
//! delete), by kill -9 or by SIGSTOP held for [`STOP_FOR`], under the
//! CRI-O driver (the shim binary driven as CRI-O 1.32 drives it).
//!
//! A cell records what the client saw, and every cell must keep the same
//! promises: every call answers; each container ends either running with
//! a working exec (the pod survived) or stopped with its exit status; the
//! pod is then stopped and removed the normal way and nothing of it is
//! left; a neighbour pod keeps its VM processes and answers an exec.
//!
//! `FAULT_CELLS=all` (`make soak`) runs all 48 cells and writes their table
//! to `FAULT_REPORT`; `make test` runs one cell per component that the
//! single-fault tests of `shim_lifecycle` do not already cover.
//! `FAULT_ONLY=virtiofsd/Delete` keeps the cells that match every name.

mod common;
#[path = "fault_matrix/panic.rs"]
mod panic;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::crio::{Crio, CrioError, ExecIo, PodConfig, Waiter};
use common::*;
use containerd_shim_protos::api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a SIGSTOP holds (the 30 s).
const STOP_FOR: Duration = Duration::from_secs(30);
/// How long a container of a dead sandbox may take to report its exit.
const EXIT_WITHIN: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Qemu,
    Shim,
    Virtiofsd,
    Vsock,
}

impl Component {
    const ALL: [Component; 4] = [
        Component::Qemu,
        Component::Shim,
        Component::Virtiofsd,
        Component::Vsock,
    ];

    fn name(self) -> &'static str {
        match self {
            Component::Qemu => "QEMU",
            Component::Shim => "shim",
            Component::Virtiofsd => "virtiofsd",
            Component::Vsock => "vhost-device-vsock",
        }
    }

    /// Whether `argv` is a process of this component (of any sandbox).
    fn matches(self, argv: &[String]) -> bool {
        let prog = argv
            .first()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or("");
        match self {
            Component::Qemu => prog == "qemu-system-x86_64",
            Component::Virtiofsd => prog == "virtiofsd",
            Component::Vsock => prog == "vhost-device-vsock",
            Component::Shim => {
                prog == "containerd-shim-kata-v2" && argv.last().is_some_and(|a| a == "serve")
            }
        }
    }

    /// This component's processes for sandbox `sid`.
    fn pids(self, sid: &str) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|(_, argv)| self.matches(argv) && argv.iter().any(|a| a.contains(sid)))
            .map(|(pid, _)| pid)
            .collect()
    }

    fn all_pids(self) -> HashSet<u32> {
        processes()
            .into_iter()
            .filter(|(_, argv)| self.matches(argv))
            .map(|(pid, _)| pid)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Boot,
    Create,
    Running,
    Exec,
    Stop,
    Delete,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Boot,
        Phase::Create,
        Phase::Running,
        Phase::Exec,
        Phase::Stop,
        Phase::Delete,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Kill => "kill -9".into(),
            Fault::Stop => format!("SIGSTOP {} s", STOP_FOR.as_secs()),
        }
    }
}

/// When the injector strikes.
enum Trigger {
    /// As soon as a process of the component appears that is not in the
    /// set (a booting sandbox's, whose id the driver picks).
    NewProcess(HashSet<u32>),
    /// After a delay, on these processes.
    After(Duration, Vec<u32>),
}

/// Applies `fault` in a thread; joins to the pids struck.
fn inject(
    component: Component,
    fault: Fault,
    trigger: Trigger,
) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let pids = match trigger {
            Trigger::After(delay, pids) => {
                std::thread::sleep(delay);
                pids
            }
            Trigger::NewProcess(before) => {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let new: Vec<u32> = component
                        .all_pids()
                        .into_iter()
                        .filter(|p| !before.contains(p))
                        .collect();
                    if !new.is_empty() || Instant::now() > deadline {
                        break new;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        let signal = |sig, pids: &[u32]| {
            for p in pids.iter().rev() {
                let _ = kill(Pid::from_raw(*p as i32), sig);
            }
        };
        match fault {
            Fault::Kill => signal(Signal::SIGKILL, &pids),
            Fault::Stop => {
                signal(Signal::SIGSTOP, &pids);
                std::thread::sleep(STOP_FOR);
                signal(Signal::SIGCONT, &pids);
            }
        }
        pids
    })
}

/// A neighbour pod that every cell must leave alone.
struct Neighbour {
    sid: String,
    app: String,
    vm: Vec<(String, u32)>,
}

impl Neighbour {
    fn new(crio: &mut Crio) -> Neighbour {
        let sid = crio.run_pod_sandbox(&PodConfig::new("neighbour"));
        let app = crio.create_container(&sid, "app", &["/bin/sleep", "100000"]);
        crio.start_container(&app);
        let mut vm = vm_processes(&sid);
        vm.sort();
        Neighbour { sid, app, vm }
    }

    fn check(&self, crio: &Crio, cell: &str) {
        let mut vm = vm_processes(&self.sid);
        vm.sort();
        assert_eq!(vm, self.vm, "{cell}: the neighbour's VM processes changed");
        let r = crio.exec_sync(&self.app, &["/bin/echo", "here"], Duration::from_secs(60));
        assert_eq!(
            (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
            (0, "here"),
            "{cell}: the neighbour's exec"
        );
    }
}

/// Waits up to 5 s for `sid` to leave nothing; if something is left, the
/// next pod's shim must sweep it (`bootstrap/sweep.rs`, the defined moment
/// for what no keeper and no `delete` cleaned). Says which happened.
fn left_nothing(crio: &mut Crio, sid: &str, label: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = find_leaks(sid, &[]);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = find_leaks(sid, &[]);
    }
    if left.is_empty() {
        return None;
    }
    let began = Instant::now();
    let next = crio.run_pod_sandbox(&PodConfig::new("sweeper"));
    while !find_leaks(sid, &[]).is_empty() && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = find_leaks(sid, &[]);
    assert!(
        still.is_empty(),
        "{label}: left behind, and not swept by the next pod within 20 s:\n{}",
        still.join("\n")
    );
    let took = began.elapsed();
    crio.remove_pod(&next);
    crio.assert_no_leaks(&next);
    Some(format!(
        "left {} ({}), swept by the next pod's shim in {:.1} s",
        left.len(),
        left.join(", ").replace(sid, "<id>"),
        took.as_secs_f64()
    ))
}

/// An exec `inflight` of a long sleep in `id`, started, with CRI-O's Wait
/// on it pending.
fn exec_in_flight(crio: &Crio, id: &str) -> (Waiter, ExecIo) {
    let io = crio
        .exec(id, "inflight", &["/bin/sleep", "100000"])
        .expect("Exec");
    let mut req = api::StartRequest::new();
    req.id = id.to_string();
    req.exec_id = "inflight".into();
    crio.call::<_, api::StartResponse>(id, "Start", &req)
        .expect("Start of the exec");
    (crio.spawn_wait(id, "inflight", false), io)
}

/// "`what` failed (CODE): message", with the id `hide` shown as `alias`.
fn failed(what: &str, e: &CrioError, hide: &str, alias: &str) -> String {
    let message: String = e.message().replace(hide, alias).chars().take(160).collect();
    let code = e.code().map_or("no code".into(), |c| format!("{c:?}"));
    format!("{what} failed ({code}): {message}")
}

/// What one cell showed.
struct Outcome {
    component: Component,
    phase: Phase,
    fault: Fault,
    saw: String,
    took: Duration,
}

fn status(s: &api::StateResponse) -> api::Status {
    s.status.enum_value().expect("known status")
}

/// The app's container: answers SIGTERM by exiting 0 after 3 s, once it
/// has said `ready`.
const APP: &str = "trap 'sleep 3; exit 0' TERM; echo ready; while :; do sleep 1; done";

/// Waits until the app has set its SIGTERM handler.
fn wait_ready(crio: &Crio, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&crio.output(id).0).contains("ready") {
        assert!(Instant::now() < deadline, "{id} never said ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cell(
    crio: &mut Crio,
    nb: &Neighbour,
    component: Component,
    phase: Phase,
    fault: Fault,
) -> Outcome {
    let label = format!("{} / {phase:?} / {}", component.name(), fault.name());
    eprintln!("fault matrix: {label}");
    let began = Instant::now();
    let mut saw = Vec::new();
    let cfg = PodConfig::new("victim");

    // Boot: the fault strikes the component's first process of the new
    // sandbox, while RunPodSandbox waits.
    let (sid, injector) = if phase == Phase::Boot {
        let injector = inject(component, fault, Trigger::NewProcess(component.all_pids()));
        let (sid, created) = crio.try_create_pod_sandbox(&cfg);
        match created {
            Ok(()) => {
                crio.start_container(&sid);
                saw.push("RunPodSandbox succeeded".to_string());
            }
            Err(e) => {
                let struck = injector.join().expect("injector");
                assert!(!struck.is_empty(), "{label}: the fault never struck");
                saw.push(failed("RunPodSandbox", &e, &sid, "<id>"));
                crio.unmount_own_shm(&sid);
                if let Some(swept) = left_nothing(crio, &sid, &label) {
                    saw.push(swept);
                }
                crio.assert_no_leaks(&sid);
                nb.check(crio, &label);
                return Outcome {
                    component,
                    phase,
                    fault,
                    saw: saw.join("; "),
                    took: began.elapsed(),
                };
            }
        }
        (sid, Some(injector))
    } else {
        (crio.run_pod_sandbox(&cfg), None)
    };
    let pids = component.pids(&sid);
    assert!(
        !pids.is_empty() || injector.is_some(),
        "{label}: no {} process",
        component.name()
    );
    let strike = |delay| inject(component, fault, Trigger::After(delay, pids.clone()));

    let mut app = None;
    let mut exec = None;
    let mut retry_delete = None;
    let injector = match phase {
        Phase::Boot => injector.expect("boot injector"),
        Phase::Create => {
            let p = crio.prepare_container(&sid, "app", &["/bin/sh", "-c", APP]);
            let injector = strike(Duration::from_millis(100));
            let asked = Instant::now();
            let created = crio.create_prepared(p);
            // CRI-O gives a CreateContainer 4 minutes: a call that only its
            // deadline ends is a shim that left it unanswered (the dead
            // shim's keeper did so before it learnt of calls in flight).
            assert!(
                asked.elapsed() < Duration::from_secs(120),
                "{label}: CreateContainer took {:?}, waiting for the client's deadline",
                asked.elapsed()
            );
            match created {
                Ok(id) => {
                    saw.push("CreateContainer succeeded".into());
                    app = Some(id);
                }
                Err(e) => saw.push(failed("CreateContainer", &e, &sid, "<id>")),
            }
            injector
        }
        Phase::Running | Phase::Exec | Phase::Stop | Phase::Delete => {
            let id = crio.create_container(&sid, "app", &["/bin/sh", "-c", APP]);
            crio.start_container(&id);
            wait_ready(crio, &id);
            let injector = match phase {
                Phase::Exec => {
                    exec = Some(exec_in_flight(crio, &id));
                    strike(Duration::from_millis(200))
                }
                Phase::Stop => {
                    crio.kill(&id, "", 15, false).expect("Kill(SIGTERM)");
                    strike(Duration::from_millis(100))
                }
                Phase::Delete => {
                    crio.kill(&id, "", 9, false).expect("Kill(SIGKILL)");
                    let done = crio
                        .init_exit(&id, EXIT_WITHIN)
                        .expect("the app exits on SIGKILL");
                    assert_eq!(done.wait.expect("Wait").exit_status, 137);
                    let injector = strike(Duration::ZERO);
                    match crio.try_remove_container(&id) {
                        Ok(_) => saw.push("Delete of the exited app succeeded".into()),
                        Err(e) => {
                            // kubelet retries RemoveContainer; so does CRI-O's
                            // client here, once the fault has passed.
                            saw.push(failed("Delete of the exited app", &e, &id, "<app>"));
                            retry_delete = Some(id.clone());
                        }
                    }
                    injector
                }
                _ => strike(Duration::ZERO),
            };
            if phase != Phase::Delete {
                app = Some(id);
            }
            injector
        }
    };
    let struck = injector.join().expect("injector");
    assert!(!struck.is_empty(), "{label}: the fault never struck");
    std::thread::sleep(Duration::from_secs(2));
    if let Some(id) = retry_delete {
        crio.try_remove_container(&id)
            .unwrap_or_else(|e| panic!("{label}: the retried Delete failed too: {e:?}"));
        saw.push("the retry succeeded".into());
    }

    // What each container shows now: running (the pod survived) or its exit.
    let sandbox_state = crio.state(&sid);
    if let Some((waiter, io)) = exec {
        match waiter.wait(&crio.rt, Duration::ZERO) {
            Some(o) => saw.push(format!(
                "the exec in flight ended {}",
                o.wait
                    .map(|w| w.exit_status.to_string())
                    .unwrap_or_else(|e| format!("with {e:?}"))
            )),
            None => {
                saw.push("the exec in flight runs on".into());
                let _ = crio.kill(app.as_deref().expect("app"), "inflight", 9, false);
                waiter
                    .wait(&crio.rt, EXIT_WITHIN)
                    .unwrap_or_else(|| panic!("{label}: the exec survived SIGKILL"));
            }
        }
        drop(io.finish());
    }
    for id in std::iter::once(&sid).chain(app.iter()) {
        let what = if *id == sid { "sandbox" } else { "app" };
        let st = crio.state(id);
        match status(&st) {
            api::Status::RUNNING => {
                let r = crio.exec_sync(id, &["/bin/echo", "alive"], Duration::from_secs(60));
                assert_eq!(r.exit_code, 0, "{label}: the {what} runs but exec fails");
                saw.push(format!("{what} runs on, exec works"));
            }
            api::Status::STOPPED => {
                if crio.has_init_wait(id) {
                    let done = crio
                        .init_exit(id, EXIT_WITHIN)
                        .unwrap_or_else(|| panic!("{label}: the {what}'s Wait never answered"));
                    let w = done.wait.expect("Wait");
                    assert_eq!(
                        w.exit_status, st.exit_status,
                        "{label}: Wait and State differ"
                    );
                }
                saw.push(format!("{what} exited {}", st.exit_status));
            }
            api::Status::CREATED => saw.push(format!("{what} still created")),
            other => panic!("{label}: the {what} is {other:?}: {st:?}"),
        }
    }
    let dead = status(&sandbox_state) == api::Status::STOPPED;
    crio.remove_pod(&sid);
    saw.push(if dead {
        "the pod was removed".into()
    } else {
        "the pod was stopped and removed".into()
    });
    if let Some(swept) = left_nothing(crio, &sid, &label) {
        saw.push(swept);
    }
    crio.assert_no_leaks(&sid);
    nb.check(crio, &label);
    Outcome {
        component,
        phase,
        fault,
        saw: saw.join("; "),
        took: began.elapsed(),
    }
}

/// The cells of `make test`: one per component, none that
/// `shim_lifecycle` already runs (kill -9 of each while running, SIGSTOP
/// of QEMU while running and at CreateContainer).
const QUICK: [(Component, Phase, Fault); 5] = [
    (Component::Qemu, Phase::Exec, Fault::Kill),
    (Component::Shim, Phase::Boot, Fault::Kill),
    (Component::Shim, Phase::Create, Fault::Kill),
    (Component::Virtiofsd, Phase::Stop, Fault::Stop),
    (Component::Vsock, Phase::Create, Fault::Kill),
];

#[test]
fn fault_matrix_every_cell_answers_and_leaves_nothing() {
    let all = std::env::var("FAULT_CELLS").is_ok_and(|v| v == "all");
    let cells: Vec<(Component, Phase, Fault)> = if all {
        Component::ALL
            .iter()
            .flat_map(|c| {
                Phase::ALL
                    .iter()
                    .flat_map(move |p| [Fault::Kill, Fault::Stop].map(|f| (*c, *p, f)))
            })
            .collect()
    } else {
        QUICK.to_vec()
    };
    // `FAULT_ONLY=virtiofsd/Delete` reruns the cells that match every
    // name given (a component, a phase, a fault).
    let only = std::env::var("FAULT_ONLY").unwrap_or_default();
    let cells: Vec<_> = cells
        .into_iter()
        .filter(|(c, p, f)| {
            let names = [c.name().to_string(), format!("{p:?}"), f.name()];
            only.split('/')
                .filter(|w| !w.is_empty())
                .all(|w| names.iter().any(|n| n == w))
        })
        .collect();
    let mut crio = Crio::new("faults");
    let nb = Neighbour::new(&mut crio);
    let began = Instant::now();
    let mut outcomes = Vec::new();
    for (c, p, f) in cells {
        let o = cell(&mut crio, &nb, c, p, f);
        eprintln!("  -> {} ({:.0} s)", o.saw, o.took.as_secs_f64());
        outcomes.push(o);
    }
    crio.remove_pod(&nb.sid);
    crio.assert_no_leaks(&nb.sid);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} cells in {:.0} s, each with a neighbour pod that kept its VM and answered an exec, \
         and each pod removed with nothing left.\n",
        outcomes.len(),
        began.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| component | phase | fault | what the client saw | s |\n|---|---|---|---|---|"
    );
    for o in &outcomes {
        let _ = writeln!(
            out,
            "| {} | {:?} | {} | {} | {:.0} |",
            o.component.name(),
            o.phase,
            o.fault.name(),
            o.saw.replace('|', "\\|"),
            o.took.as_secs_f64()
        );
    }
    let report = std::env::var_os("FAULT_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp_dir().join("fault-matrix.md"));
    std::fs::write(&report, &out).unwrap_or_else(|e| panic!("write {}: {e}", report.display()));
    eprintln!("{out}");
}
