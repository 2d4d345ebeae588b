//! The flood row of `make bench` (issue 17, bad input): a kata pod's
//! ExecSync latency while a neighbouring kata pod writes stdout into its
//! CRI log as fast as its guest can, as a ratio to the same pod's idle
//! latency measured just before. On this 2-core machine the flooding VM's
//! vCPU, its shim and containerd's log writer compete with the neighbour
//! for the host's cores; what the figure shows is how much of that reaches
//! a pod that does nothing but answer.

use std::time::{Duration, Instant};

use crate::common::containerd::Containerd;
use crate::common::cri::{Cri, KATA, container_config, log_file, pod_config};
use crate::common::image::BUSYBOX_REF;

/// Execs before the flood and during it.
const IDLE_EXECS: usize = 5;
const FLOOD_EXECS: usize = 10;
/// Pause between two execs during the flood, so that they sample it
/// rather than queue behind each other.
const BETWEEN: Duration = Duration::from_millis(300);

/// One iteration's figures.
pub struct FloodSample {
    /// The neighbour's ExecSync round trips before the flood, ms.
    pub idle_ms: Vec<f64>,
    /// The same during the flood, ms.
    pub flood_ms: Vec<f64>,
    /// What the flooding pod's CRI log grew by per second meanwhile, MiB/s.
    pub flood_mib_s: f64,
}

/// The neighbour's ExecSync round trip, in ms.
fn exec_ms(cri: &Cri, id: &str) -> Result<f64, String> {
    super::exec_true(cri, id, "the neighbour").map(|d| d.as_secs_f64() * 1000.0)
}

/// Starts a pod with one container running `cmd`; returns (pod, container).
fn pod_with(
    c: &Containerd,
    cri: &Cri,
    name: &str,
    cmd: &[&str],
) -> Result<(String, String, std::path::PathBuf), String> {
    let config = pod_config(name, &c.pod_log_dir(name));
    let spec = container_config("main", BUSYBOX_REF, cmd);
    let log = log_file(&config, &spec);
    let pod = cri
        .run_pod(&config, KATA)
        .map_err(|e| format!("RunPodSandbox {name}: {e}"))?;
    let id = cri
        .create_container(&pod, spec, &config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .map_err(|e| format!("starting the container of {name}: {e}"));
    match id {
        Ok(id) => Ok((pod, id, log)),
        Err(e) => {
            remove(cri, &pod);
            Err(e)
        }
    }
}

fn remove(cri: &Cri, pod: &str) {
    let _ = cri.stop_pod(pod).and_then(|()| cri.remove_pod(pod));
    // Nothing of the sandbox outlives its removal (panics otherwise).
    crate::common::assert_no_leaks(pod);
}

fn log_len(log: &std::path::Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Measures one neighbour through one flood; both pods are removed after.
pub fn measure(c: &Containerd, cri: &Cri, iteration: usize) -> Result<FloodSample, String> {
    let (nb_pod, nb, _) = pod_with(
        c,
        cri,
        &format!("bench-flood-nb-{iteration}"),
        &["/bin/sleep", "100000"],
    )?;
    let result = (|| {
        let idle_ms = (0..IDLE_EXECS)
            .map(|_| exec_ms(cri, &nb))
            .collect::<Result<Vec<_>, _>>()?;
        let line = "x".repeat(1023);
        let script = format!("yes {line}");
        let (flood_pod, _, log) = pod_with(
            c,
            cri,
            &format!("bench-flood-{iteration}"),
            &["/bin/sh", "-c", &script],
        )?;
        let flooded = (|| -> Result<(Vec<f64>, f64), String> {
            super::wait_for(|| log_len(&log) > 0, &log)?;
            let (began, before) = (Instant::now(), log_len(&log));
            let mut flood_ms = Vec::with_capacity(FLOOD_EXECS);
            for _ in 0..FLOOD_EXECS {
                flood_ms.push(exec_ms(cri, &nb)?);
                std::thread::sleep(BETWEEN);
            }
            let grew = log_len(&log).saturating_sub(before);
            let flood_mib_s = grew as f64 / f64::from(1 << 20) / began.elapsed().as_secs_f64();
            Ok((flood_ms, flood_mib_s))
        })();
        remove(cri, &flood_pod);
        let (flood_ms, flood_mib_s) = flooded?;
        Ok(FloodSample {
            idle_ms,
            flood_ms,
            flood_mib_s,
        })
    })();
    remove(cri, &nb_pod);
    result
}
