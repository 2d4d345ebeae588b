//! The agent's crash at each phase of a pod's life: a guest kernel panic.
//!
//! At boot the guest kernel cannot find its init (`rdinit=` names nothing)
//! and panics. At the other phases the debug image's console arms
//! `echo c > /proc/sysrq-trigger` a moment ahead, then the phase's CRI call
//! runs into it. The guest kernel runs with `panic=1` and QEMU with
//! `-no-reboot`, so QEMU ends and the pod dies as with a dead VM. Each cell
//! shows that no call waits for the client's deadline, every container and
//! exec ends 255, the pod is removed with nothing left, and the neighbour
//! pod is untouched. `make test` runs the exec-in-flight cell;
//! `FAULT_CELLS=all` runs every phase and writes `FAULT_PANIC_REPORT`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::common::crio::{Crio, PodConfig};
use super::common::*;
use super::{APP, EXIT_WITHIN, Neighbour, Phase, exec_in_flight, failed, status, wait_ready};
use containerd_shim_protos::api;

/// How far ahead of its phase's call the panic is armed, in seconds.
const ARMED_AHEAD: &str = "0.3";

/// A CRI call that only the client's deadline ends is a shim that left it
/// unanswered; CRI-O's shortest is 2 minutes (RunPodSandbox has 4).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

fn debug_crio(test: &str) -> Crio {
    let image = tmp_dir().join("fault-matrix-debug-image");
    build_guest_image(&image, &["--debug"]);
    Crio::with_configs(
        test,
        &format!(
            "kernel = {:?}\ninitrd = {:?}\n",
            image.join("kata.kernel").display().to_string(),
            image.join("kata.initrd").display().to_string()
        ),
        "debug_console_enabled = true\n",
    )
}

/// Arms a panic of `sid`'s guest `ARMED_AHEAD` seconds from now, from a
/// process the debug console leaves running.
fn arm_panic(sid: &str) {
    let o = kata_ctl_exec(
        sid,
        format!(
            "setsid sh -c 'sleep {ARMED_AHEAD}; echo c > /proc/sysrq-trigger' </dev/null >/dev/null 2>&1 &\n"
        )
        .as_bytes(),
    );
    assert!(
        o.status.success(),
        "kata-ctl exec: {:?} {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Times one CRI call against [`ANSWER_WITHIN`].
fn answered<T>(label: &str, what: &str, call: impl FnOnce() -> T) -> T {
    let asked = Instant::now();
    let r = call();
    assert!(
        asked.elapsed() < ANSWER_WITHIN,
        "{label}: {what} took {:?}, waiting for the client's deadline",
        asked.elapsed()
    );
    r
}

/// A panic at boot: RunPodSandbox fails with the guest's last words, and
/// leaves nothing.
fn at_boot(saw: &mut Vec<String>) {
    let mut crio = Crio::with_config("guest-panic-boot", "kernel_params = \"rdinit=/none\"\n");
    let (sid, created) = answered("guest panic / Boot", "RunPodSandbox", || {
        crio.try_create_pod_sandbox(&PodConfig::new("panic"))
    });
    let e = created.expect_err("a guest that panics at boot cannot run a pod");
    saw.push(failed("RunPodSandbox", &e, &sid, "<id>"));
    crio.unmount_own_shm(&sid);
    crio.assert_no_leaks(&sid);
}

/// A panic at `phase` (not boot) of a pod of `crio`.
fn at(crio: &mut Crio, phase: Phase, saw: &mut Vec<String>) {
    let label = format!("guest panic / {phase:?}");
    let sid = crio.run_pod_sandbox(&PodConfig::new("panic"));
    let mut app = None;
    let mut exec = None;
    if phase == Phase::Create {
        let p = crio.prepare_container(&sid, "app", &["/bin/sh", "-c", APP]);
        arm_panic(&sid);
        match answered(&label, "CreateContainer", || crio.create_prepared(p)) {
            Ok(id) => {
                saw.push("CreateContainer succeeded".into());
                app = Some(id);
            }
            Err(e) => saw.push(failed("CreateContainer", &e, &sid, "<id>")),
        }
    } else {
        let id = crio.create_container(&sid, "app", &["/bin/sh", "-c", APP]);
        crio.start_container(&id);
        wait_ready(crio, &id);
        if phase == Phase::Delete {
            crio.kill(&id, "", 9, false).expect("Kill(SIGKILL)");
            let done = crio
                .init_exit(&id, EXIT_WITHIN)
                .expect("the app exits on SIGKILL");
            assert_eq!(done.wait.expect("Wait").exit_status, 137);
        }
        arm_panic(&sid);
        match phase {
            Phase::Exec => exec = Some(exec_in_flight(crio, &id)),
            Phase::Stop => {
                let r = answered(&label, "Kill(SIGTERM)", || crio.kill(&id, "", 15, false));
                saw.push(match r {
                    Ok(()) => "StopContainer's SIGTERM delivered".into(),
                    Err(e) => format!("StopContainer's SIGTERM failed: {e:?}"),
                });
            }
            Phase::Delete => {
                std::thread::sleep(Duration::from_millis(200));
                match answered(&label, "RemoveContainer", || crio.try_remove_container(&id)) {
                    Ok(_) => saw.push("RemoveContainer of the exited app succeeded".into()),
                    Err(e) => {
                        saw.push(failed("RemoveContainer", &e, &id, "<app>"));
                        // kubelet retries a failed RemoveContainer.
                        std::thread::sleep(Duration::from_secs(2));
                        crio.try_remove_container(&id).unwrap_or_else(|e| {
                            panic!("{label}: the retried RemoveContainer failed: {e:?}")
                        });
                        saw.push("the retry succeeded".into());
                    }
                }
            }
            _ => {}
        }
        if phase != Phase::Delete {
            app = Some(id);
        }
    }
    let began = Instant::now();
    let ended = crio
        .init_exit(&sid, EXIT_WITHIN)
        .unwrap_or_else(|| panic!("{label}: the sandbox did not exit after its guest's panic"));
    assert_eq!(ended.wait.expect("Wait").exit_status, 255, "{label}");
    saw.push(format!(
        "sandbox exited 255 {:.1} s after the call",
        began.elapsed().as_secs_f64()
    ));
    assert!(
        qemu_pids(&sid).is_empty(),
        "{label}: QEMU outlived its guest's panic"
    );
    if let Some(id) = &app {
        let st = crio.state(id);
        match status(&st) {
            api::Status::STOPPED => {
                if crio.has_init_wait(id) {
                    let w = crio
                        .init_exit(id, EXIT_WITHIN)
                        .unwrap_or_else(|| panic!("{label}: the app's Wait never answered"));
                    assert_eq!(w.wait.expect("Wait").exit_status, st.exit_status);
                }
                // A panic after the SIGTERM's 3 s of grace would find it
                // exited 0; anything else is the dead VM's 255.
                assert!(
                    st.exit_status == 255 || (phase == Phase::Stop && st.exit_status == 0),
                    "{label}: the app exited {}",
                    st.exit_status
                );
                saw.push(format!("app exited {}", st.exit_status));
            }
            api::Status::CREATED => saw.push("app still created".into()),
            other => panic!("{label}: the app is {other:?} in a dead sandbox"),
        }
    }
    if let Some((waiter, io)) = exec {
        let e = waiter
            .wait(&crio.rt, EXIT_WITHIN)
            .unwrap_or_else(|| panic!("{label}: the exec in flight never ended"));
        let code = e.wait.expect("exec Wait").exit_status;
        assert_eq!(code, 255, "{label}: the exec in flight");
        saw.push(format!("the exec in flight ended {code}"));
        drop(io.finish());
    }
    crio.remove_pod(&sid);
    saw.push("the pod was removed".into());
    crio.assert_no_leaks(&sid);
}

#[test]
fn a_guest_kernel_panic_ends_every_container_with_255() {
    let all = std::env::var("FAULT_CELLS").is_ok_and(|v| v == "all");
    let phases: &[Phase] = if all { &Phase::ALL } else { &[Phase::Exec] };
    let mut crio = debug_crio("guest-panic");
    let nb = Neighbour::new(&mut crio);
    let mut rows = Vec::new();
    for &phase in phases {
        eprintln!("guest panic: {phase:?}");
        let began = Instant::now();
        let mut saw = Vec::new();
        if phase == Phase::Boot {
            at_boot(&mut saw);
        } else {
            at(&mut crio, phase, &mut saw);
        }
        nb.check(&crio, &format!("guest panic / {phase:?}"));
        let saw = saw.join("; ");
        eprintln!("  -> {saw} ({:.0} s)", began.elapsed().as_secs_f64());
        rows.push((phase, saw, began.elapsed()));
    }
    crio.remove_pod(&nb.sid);
    crio.assert_no_leaks(&nb.sid);

    let mut out = format!(
        "{} cells, each with a neighbour pod that kept its VM and answered an exec, and each \
         pod removed with nothing left.\n\n| phase | what the client saw | s |\n|---|---|---|\n",
        rows.len()
    );
    for (phase, saw, took) in &rows {
        let _ = writeln!(
            out,
            "| {phase:?} | {} | {:.0} |",
            saw.replace('|', "\\|"),
            took.as_secs_f64()
        );
    }
    let report = std::env::var_os("FAULT_PANIC_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp_dir().join("guest-panic.md"));
    std::fs::write(&report, &out).unwrap_or_else(|e| panic!("write {}: {e}", report.display()));
    eprintln!("{out}");
}
