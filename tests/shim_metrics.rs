//! The serving shim's management socket (Kata's
//! `/run/vc/sbs/<id>/shim-monitor.sock`) while a pod driven as CRI-O
//! drives it runs:
//! - read by `kata-ctl metrics`: boot phases, QEMU memory, the agent's
//!   health-check latency, the root-only socket mode, and the socket gone
//!   (and `kata-ctl` failing, naming it) once the pod is removed;
//! - asked exactly as kata-monitor asks it: the sandbox found the way
//!   kata-monitor finds it, Go's requests byte for byte within its 3 s, and
//!   an exposition that its text parser takes, with Kata's families.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
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
fn kata_ctl_reads_the_shims_management_socket() {
    let mut crio = Crio::new("metrics");
    let sid = crio.run_pod_sandbox(&PodConfig::new("metrics"));
    let sock = kata_shim::layout::mgmt_socket(&sid);
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

/// kata-monitor's request, byte for byte as Go's `http.Client.Get` with
/// `DisableKeepAlives` sends it (`shimclient.DoGet`, Kata 3.19).
fn go_get(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: shim\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
}

/// One request as kata-monitor makes it; the status line and the body.
/// Its client gives up after 3 s: so does this one.
fn kata_monitor_get(sid: &str, path: &str) -> (String, String) {
    let sock = kata_shim::layout::mgmt_socket(sid);
    let began = Instant::now();
    let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(go_get(path).as_bytes()).expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path} after {:?}: {e}", began.elapsed()));
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "{head}");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// What Prometheus' text parser (kata-monitor's `expfmt.TextParser`)
/// insists on, checked line by line: each family's HELP and TYPE once and
/// before its samples, samples grouped under their family, valid metric
/// and label names, quoted label values, no label twice, float values.
/// Also that no sample carries the labels kata-monitor adds itself.
fn check_exposition(text: &str) -> Vec<String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
            })
    };
    let mut families: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let name = rest.split(' ').next().expect("name");
            assert!(valid_name(name), "bad family name: {line}");
            if line.starts_with("# TYPE ") {
                let kind = rest.split(' ').nth(1).expect("type");
                assert!(
                    ["gauge", "counter", "summary", "histogram", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    !families.contains(&name.to_string()),
                    "family twice: {name}"
                );
                families.push(name.to_string());
            }
            current = name.to_string();
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("a value");
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closed labels")),
            None => (series, ""),
        };
        assert!(valid_name(name), "{line}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| *b == current))
            .unwrap_or(name);
        assert_eq!(base, current, "sample outside its family: {line}");
        let mut seen = Vec::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
            assert!(valid_name(k), "label name in {line}");
            assert!(
                !v.contains('"') || v.ends_with('"'),
                "label value in {line}"
            );
            assert!(!seen.contains(&k), "label {k} twice in {line}");
            assert!(
                !["sandbox_id", "cri_uid", "cri_name", "cri_namespace"].contains(&k),
                "kata-monitor adds {k} itself: {line}"
            );
            seen.push(k);
        }
    }
    families
}

#[test]
fn kata_monitors_requests_get_kata_families_from_a_live_sandbox() {
    let mut crio = Crio::new("monitor");
    let sid = crio.run_pod_sandbox(&PodConfig::new("monitor"));

    // kata-monitor's sandbox cache: the directory names under /run/vc/sbs.
    let listed: Vec<String> = std::fs::read_dir(kata_shim::layout::MGMT_ROOT)
        .expect("/run/vc/sbs")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(listed.contains(&sid), "{sid} not in {listed:?}");

    let (status, url) = kata_monitor_get(&sid, "/agent-url");
    assert_eq!(status, "HTTP/1.1 200 OK");
    println!("/agent-url: {url}");
    let uds = url
        .strip_prefix("hvsock://")
        .and_then(|r| r.strip_suffix(":1024"))
        .unwrap_or_else(|| panic!("not Kata's hybrid vsock URL: {url}"));
    assert!(std::path::Path::new(uds).exists(), "{uds}");

    let (status, text) = kata_monitor_get(&sid, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let families = check_exposition(&text);
    println!(
        "{} families, {} bytes; kata_guest_meminfo:",
        families.len(),
        text.len()
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("kata_guest_meminfo{item=\"mem_"))
    {
        println!("  {line}");
    }
    for family in [
        "kata_shim_fds",
        "kata_shim_threads",
        "kata_shim_proc_status",
        "kata_shim_proc_stat",
        "kata_shim_io_stat",
        "kata_shim_agent_rpc_durations_histogram_milliseconds",
        "kata_hypervisor_fds",
        "kata_hypervisor_threads",
        "kata_hypervisor_proc_status",
        "kata_hypervisor_proc_stat",
        "kata_hypervisor_io_stat",
        "kata_hypervisor_netdev",
        "kata_virtiofsd_threads",
        "kata_vsock_helper_threads",
        "kata_agent_fds",
        "kata_agent_threads",
        "kata_agent_proc_status",
        "kata_agent_total_rss",
        "kata_agent_scrape_count",
        "kata_guest_meminfo",
        "kata_guest_load",
        "kata_guest_tasks",
        "kata_guest_cpu_time",
        "kata_guest_vm_stat",
        "kata_guest_netdev_stat",
        "kata_guest_container_cpu_usage_seconds_total",
        "kata_guest_container_memory_usage_bytes",
        "kata_guest_container_pids",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "no {family} in\n{text}"
        );
    }
    let mem_total = sample(&text, "kata_guest_meminfo{item=\"mem_total\"}").expect("MemTotal");
    assert!(
        mem_total > 256.0 * 1024.0 * 1024.0,
        "guest MemTotal {mem_total}"
    );
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("kata_guest_cpu_time{") && l.contains("item=\"user\""))
        .count();
    assert_eq!(cpus, 2, "total and one vCPU: {text}");
    // The sandbox (pause) container is the pod's one container.
    let usage = sample(
        &text,
        &format!("kata_guest_container_memory_usage_bytes{{container_id=\"{sid}\"}}"),
    );
    assert!(usage.is_some_and(|v| v > 0.0), "container memory: {text}");
    let (status, _) = kata_monitor_get(&sid, "/metrics?sandbox=x");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A second scrape is counted by the agent.
    let (_, again) = kata_monitor_get(&sid, "/metrics");
    let scrapes = sample(&again, "kata_agent_scrape_count").expect("scrapes");
    assert!(scrapes >= 3.0, "{scrapes}");
    let (status, body) = kata_monitor_get(&sid, "/debug/pprof/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status} {body}");

    crio.remove_pod(&sid);
    let dir = kata_shim::layout::mgmt_dir(&sid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.exists(), "{} left after the pod", dir.display());
    crio.assert_no_leaks(&sid);
}
