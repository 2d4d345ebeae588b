//! The serving shim's metrics socket, read by `kata-ctl metrics` while a
//! pod driven as CRI-O drives it runs: boot phases, QEMU memory, the
//! agent's health-check latency, the root-only socket mode, and the socket
//! gone (and `kata-ctl` failing, naming it) once the pod is removed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::crio::*;

fn kata_ctl_metrics(sid: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-ctl"))
        .args(["metrics", "--sandbox", sid])
        .output()
        .expect("run kata-ctl")
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn kata_ctl_reads_the_shims_metrics_socket() {
    let mut crio = Crio::new("metrics");
    let sid = crio.run_pod_sandbox(&PodConfig::new("metrics"));
    let sock = kata_shim::layout::metrics_socket(&sid);
    let mode = std::fs::metadata(&sock)
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode of {}", sock.display());

    // The liveness monitor checks the agent every 5 s: wait for one.
    let label = format!("{{sandbox_id=\"{sid}\"");
    let health = format!("kata_shim_agent_rpc_seconds_count{label},rpc=\"Health.Check\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = kata_ctl_metrics(&sid);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kata-ctl metrics: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if sample(&text, &health).is_some_and(|n| n >= 1.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("kata-ctl metrics --sandbox {sid}:\n{text}");

    assert!(
        text.lines()
            .any(|l| l == format!("kata_shim_up{label}}} 1")),
        "{text}"
    );
    for phase in ["vm_spawn", "agent_ready", "create_sandbox"] {
        let v = sample(
            &text,
            &format!("kata_shim_boot_seconds{label},phase=\"{phase}\"}}"),
        );
        assert!(v.is_some_and(|v| v > 0.0), "boot phase {phase}: {text}");
    }
    let rss = sample(
        &text,
        &format!("kata_shim_vm_memory_bytes{label},kind=\"rss\"}}"),
    );
    assert!(rss.is_some_and(|v| v > 0.0), "QEMU RSS: {text}");
    let guest = sample(&text, &format!("kata_shim_vm_guest_memory_bytes{label}}}"));
    assert!(guest.is_some_and(|v| v > 0.0), "guest memory: {text}");
    assert_eq!(
        sample(&text, &format!("kata_shim_containers{label}}}")),
        Some(1.0)
    );
    assert!(
        sample(&text, &health).is_some_and(|n| n >= 1.0),
        "no health check recorded: {text}"
    );
    for family in [
        "kata_shim_up",
        "kata_shim_boot_seconds",
        "kata_shim_agent_rpc_seconds",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{text}"
        );
        assert!(text.contains(&format!("# HELP {family} ")), "{text}");
    }

    crio.remove_pod(&sid);
    // The shim tears the pod down after the last Shutdown.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sock.exists(), "{} left after the pod", sock.display());
    let out = kata_ctl_metrics(&sid);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kata-ctl metrics after removal: {err}"
    );
    assert!(
        err.contains(&sock.display().to_string()),
        "the error does not name {}: {err}",
        sock.display()
    );
    crio.assert_no_leaks(&sid);
}
