//! Output faster than its reader (issue 17, bad input), under the CRI-O
//! driver with the real shim, QEMU (TCG), guest kernel and agent: a
//! container that writes stdout as fast as it can into a logging binary
//! that reads 64 KiB twice a second. Back-pressure must reach the
//! container (it writes little more than the logger read, the rest waits
//! in bounded buffers), the shim must stay small, and a neighbouring pod
//! must keep answering exec meanwhile.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::crio::*;
use common::*;

/// How long the flood runs.
const FLOOD: Duration = Duration::from_secs(15);
/// Most bytes that may sit between the container and the logger: the
/// guest pipe (256 KiB), the agent's stream buffer (1 MiB), the shim's two
/// chunks in flight (2 × 256 KiB), the logger's pipe (64 KiB) and the
/// block being written (64 KiB), with room to spare.
const IN_FLIGHT_MAX: u64 = 3 << 20;
/// The shim's peak RSS bound (an idle shim peaks around 15-20 MiB).
const SHIM_RSS_MAX_KIB: u64 = 64 << 10;

/// A logger (containerd's binary:// contract) that reads stdout 64 KiB
/// at a time, twice a second, recording the total in the `read` file;
/// stderr is kept whole in the `err` file (the URI's query becomes
/// `read <path> err <path>`).
const SLOW_LOGGER: &str = r#"#!/bin/sh
cat <&4 > "$4" &
exec 5>&-
n=0
while :; do
    got=$(dd bs=65536 count=1 <&3 2>/dev/null | wc -c)
    [ "$got" -eq 0 ] && break
    n=$((n + got))
    echo "$n" > "$2.tmp" && mv "$2.tmp" "$2"
    sleep 0.5
done
wait
"#;

fn read_number(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The last count the flooding container wrote to stderr: 64 KiB blocks
/// it finished writing to stdout.
fn blocks_written(stderr: &Path) -> u64 {
    std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

fn exec_ms(crio: &Crio, id: &str) -> f64 {
    let began = Instant::now();
    let r = crio.exec_sync(id, &["true"], Duration::from_secs(30));
    assert_eq!(r.exit_code, 0, "the neighbour's exec: {r:?}");
    began.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn a_container_flooding_a_slow_log_is_held_back_and_its_neighbour_answers() {
    require_vm_host();
    let dir = tmp_dir().join(format!("backpressure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let logger = dir.join("slow-logger");
    std::fs::write(&logger, SLOW_LOGGER).expect("logger");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (read_file, stderr_file) = (dir.join("read"), dir.join("stderr"));

    let mut nb = Crio::new("backpressure-nb");
    let nb_sid = nb.run_pod_sandbox(&PodConfig::new("neighbour"));
    let nb_app = nb.create_container(&nb_sid, "app", &["/bin/sleep", "1000"]);
    nb.start_container(&nb_app);
    let idle: Vec<f64> = (0..5).map(|_| exec_ms(&nb, &nb_app)).collect();

    let mut crio = Crio::new("backpressure");
    let sid = crio.run_pod_sandbox(&PodConfig::new("flood"));
    let mut p = crio.prepare_container(
        &sid,
        "flood",
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do dd if=/dev/zero bs=65536 count=1 2>/dev/null; \
             i=$((i+1)); echo $i >&2; done",
        ],
    );
    p.log_uri = Some(format!(
        "binary://{}?read={}&err={}",
        logger.display(),
        read_file.display(),
        stderr_file.display()
    ));
    let app = crio
        .create_prepared(p)
        .unwrap_or_else(|e| panic!("CreateContainer flood: {e:?}"));
    crio.start_container(&app);
    let shim = crio.shim_pid(&sid);

    let began = Instant::now();
    let mut during = Vec::new();
    while began.elapsed() < FLOOD {
        during.push(exec_ms(&nb, &nb_app));
        std::thread::sleep(Duration::from_millis(300));
    }
    let read = read_number(&read_file);
    let written = blocks_written(&stderr_file) * 65536;
    let peak = peak_rss_kib(shim);
    println!(
        "flood into a 128 KiB/s logger for {FLOOD:?}: the container wrote {written} bytes, the \
         logger read {read}, {} in between (bound {IN_FLIGHT_MAX}); shim peak RSS {peak} KiB; \
         neighbour exec median {:.1} ms idle, {:.1} ms during the flood ({} execs, all answered)",
        written.saturating_sub(read),
        median(idle.clone()),
        median(during.clone()),
        during.len()
    );
    assert!(read > 0, "the logger read nothing");
    assert!(
        written <= read + IN_FLIGHT_MAX,
        "the container wrote {written} bytes while the logger read {read}: no back-pressure"
    );
    assert!(peak < SHIM_RSS_MAX_KIB, "shim peak RSS {peak} KiB");

    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    nb.remove_pod(&nb_sid);
    nb.assert_no_leaks(&nb_sid);
    let _ = std::fs::remove_dir_all(&dir);
}
