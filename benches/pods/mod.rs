//! The CRI rows of `make bench`: kata pods against runc pods through a
//! private containerd's CRI plugin, in the same run as the raw boot.
//!
//! - pod start: RunPodSandbox sent → first byte of the container's output
//!   in its CRI log (create and start included, as kubelet sees it);
//! - ExecSync round trip of `true`;
//! - host memory of an idle kata pod (see `memory`);
//! - stdout throughput: 64 MiB of 1 KiB lines written to the CRI log by
//!   `yes | head`, StartContainer → the container has exited; and the same
//!   bytes written by `kata-floor lines` in 64 KiB writes (the floor VM's
//!   program, mounted from the host), first byte in the log → exit;
//! - TCP between the host and the pod: throughput both ways and the round
//!   trip of a small echo; a UDP flood host → pod; 1,000 short HTTP
//!   requests, a connection each (see `net`);
//! - a kata pod's ExecSync while a neighbouring kata pod floods its CRI
//!   log, against its idle ExecSync (see `flood`).
//!
//! Kata and runc alternate within each iteration so machine noise hits
//! both alike.

mod flood;
// Its unit tests run from tests/cri.rs, which includes the same file.
#[allow(dead_code, unused_imports)]
mod memory;
pub mod net;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::containerd::Containerd;
use crate::common::cri::{Cri, KATA, RUNC, container_config, log_file, pod_config};
use crate::common::image::BUSYBOX_REF;
use k8s_cri::v1::{ContainerState, PodSandboxConfig};

pub use memory::PodMemory;

const EXECS_PER_POD: usize = 5;
const THROUGHPUT_BYTES: u64 = 64 << 20;
const LINE: usize = 1024;
/// Idle time before the memory of a kata pod is read, so that boot-time
/// transients (page cache of the initrd unpacking, agent start) settle.
const IDLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(300);

/// All samples of one run, per handler where both are measured.
#[derive(Default)]
pub struct Samples {
    pub kata_start: Vec<Duration>,
    pub runc_start: Vec<Duration>,
    /// StopPodSandbox + RemovePodSandbox of a running pod.
    pub kata_stop: Vec<Duration>,
    pub runc_stop: Vec<Duration>,
    pub kata_exec: Vec<Duration>,
    pub runc_exec: Vec<Duration>,
    pub kata_memory: Vec<PodMemory>,
    /// MiB/s.
    pub kata_stdout: Vec<f64>,
    pub runc_stdout: Vec<f64>,
    /// The same bytes from `kata-floor lines`, first byte → exit, MiB/s.
    pub kata_floor_stdout: Vec<f64>,
    pub runc_floor_stdout: Vec<f64>,
    /// TCP host → pod and pod → host, MiB/s.
    pub kata_net_up: Vec<f64>,
    pub runc_net_up: Vec<f64>,
    pub kata_net_down: Vec<f64>,
    pub runc_net_down: Vec<f64>,
    /// TCP round trips, ms (every sample).
    pub kata_rtt: Vec<f64>,
    pub runc_rtt: Vec<f64>,
    /// UDP host → pod: MiB/s that arrived, and the share lost in %.
    pub kata_udp: Vec<f64>,
    pub runc_udp: Vec<f64>,
    pub kata_udp_loss: Vec<f64>,
    pub runc_udp_loss: Vec<f64>,
    /// Many connections: requests/s, and each pod's p50 and p99 in ms.
    pub kata_http: Vec<f64>,
    pub runc_http: Vec<f64>,
    pub kata_http_p50: Vec<f64>,
    pub runc_http_p50: Vec<f64>,
    pub kata_http_p99: Vec<f64>,
    pub runc_http_p99: Vec<f64>,
    /// The TCP rows with `kata-floor tcp` as the pod's server: MiB/s both
    /// ways, round trips in ms (every sample).
    pub kata_floor_up: Vec<f64>,
    pub runc_floor_up: Vec<f64>,
    pub kata_floor_down: Vec<f64>,
    pub runc_floor_down: Vec<f64>,
    pub kata_floor_rtt: Vec<f64>,
    pub runc_floor_rtt: Vec<f64>,
    /// A kata pod's ExecSync before and during a neighbour's stdout flood,
    /// ms (every sample), and the flooding pod's log growth, MiB/s.
    pub flood_idle_ms: Vec<f64>,
    pub flood_ms: Vec<f64>,
    pub flood_mib_s: Vec<f64>,
}

pub fn measure(iterations: usize) -> Result<Samples, String> {
    let c = Containerd::start_cri("bench", false);
    let cri = c.cri();
    let mut s = Samples::default();
    for i in 0..iterations {
        for handler in [KATA, RUNC] {
            let name = format!("bench-{handler}-{i}");
            let one = pod_once(&c, &cri, &name, handler)?;
            let (start, exec, stdout) = match handler {
                KATA => (&mut s.kata_start, &mut s.kata_exec, &mut s.kata_stdout),
                _ => (&mut s.runc_start, &mut s.runc_exec, &mut s.runc_stdout),
            };
            start.push(one.start);
            match handler {
                KATA => s.kata_stop.push(one.stop),
                _ => s.runc_stop.push(one.stop),
            }
            exec.extend(one.execs.iter().copied());
            stdout.push(one.stdout_mib_s);
            match handler {
                KATA => s.kata_floor_stdout.push(one.floor_stdout_mib_s),
                _ => s.runc_floor_stdout.push(one.floor_stdout_mib_s),
            }
            let (up, down, rtt) = match handler {
                KATA => (&mut s.kata_net_up, &mut s.kata_net_down, &mut s.kata_rtt),
                _ => (&mut s.runc_net_up, &mut s.runc_net_down, &mut s.runc_rtt),
            };
            up.push(one.net.up_mib_s);
            down.push(one.net.down_mib_s);
            rtt.extend(one.net.rtt_ms.iter().copied());
            let (udp, loss, http, p50, p99) = match handler {
                KATA => (
                    &mut s.kata_udp,
                    &mut s.kata_udp_loss,
                    &mut s.kata_http,
                    &mut s.kata_http_p50,
                    &mut s.kata_http_p99,
                ),
                _ => (
                    &mut s.runc_udp,
                    &mut s.runc_udp_loss,
                    &mut s.runc_http,
                    &mut s.runc_http_p50,
                    &mut s.runc_http_p99,
                ),
            };
            let (fup, fdown, frtt) = match handler {
                KATA => (
                    &mut s.kata_floor_up,
                    &mut s.kata_floor_down,
                    &mut s.kata_floor_rtt,
                ),
                _ => (
                    &mut s.runc_floor_up,
                    &mut s.runc_floor_down,
                    &mut s.runc_floor_rtt,
                ),
            };
            fup.push(one.net.floor.up_mib_s);
            fdown.push(one.net.floor.down_mib_s);
            frtt.extend(one.net.floor.rtt_ms.iter().copied());
            udp.push(one.net.udp.mib_s);
            loss.push(one.net.udp.loss * 100.0);
            http.push(one.net.http.per_s);
            p50.push(net::percentile(&one.net.http.latency_ms, 50.0));
            p99.push(net::percentile(&one.net.http.latency_ms, 99.0));
            if let Some(m) = one.memory {
                s.kata_memory.push(m);
            }
            eprintln!(
                "bench: iteration {}/{iterations} {handler}: pod start {:.2} s, stop+remove {:.2} s, exec {:.0} ms, stdout {:.1} MiB/s ({:.1} from kata-floor lines), \
                 TCP up {:.1} MiB/s, down {:.1} MiB/s, round trip {:.3} ms, UDP {:.1} MiB/s ({:.1} % lost), \
                 HTTP {:.0} requests/s (p99 {:.2} ms); kata-floor tcp: up {:.1} MiB/s, down {:.1} MiB/s, \
                 round trip {:.3} ms",
                i + 1,
                one.start.as_secs_f64(),
                one.stop.as_secs_f64(),
                one.execs[0].as_secs_f64() * 1000.0,
                one.stdout_mib_s,
                one.floor_stdout_mib_s,
                one.net.up_mib_s,
                one.net.down_mib_s,
                net_median(&one.net.rtt_ms),
                one.net.udp.mib_s,
                one.net.udp.loss * 100.0,
                one.net.http.per_s,
                net::percentile(&one.net.http.latency_ms, 99.0),
                one.net.floor.up_mib_s,
                one.net.floor.down_mib_s,
                net_median(&one.net.floor.rtt_ms)
            );
        }
        let f = flood::measure(&c, &cri, i)?;
        eprintln!(
            "bench: iteration {}/{iterations} flood: neighbour exec {:.0} ms idle, {:.0} ms \
             during the flood ({:.1} MiB/s into its log)",
            i + 1,
            net_median(&f.idle_ms),
            net_median(&f.flood_ms),
            f.flood_mib_s
        );
        s.flood_idle_ms.extend(f.idle_ms);
        s.flood_ms.extend(f.flood_ms);
        s.flood_mib_s.push(f.flood_mib_s);
    }
    Ok(s)
}

struct OnePod {
    start: Duration,
    stop: Duration,
    execs: Vec<Duration>,
    memory: Option<PodMemory>,
    stdout_mib_s: f64,
    floor_stdout_mib_s: f64,
    net: net::NetSample,
}

fn pod_once(c: &Containerd, cri: &Cri, name: &str, handler: &str) -> Result<OnePod, String> {
    let config = pod_config(name, &c.pod_log_dir(name));
    let main = container_config(
        "main",
        BUSYBOX_REF,
        &["/bin/sh", "-c", "echo up; while :; do sleep 1; done"],
    );
    let log = log_file(&config, &main);
    let began = Instant::now();
    let pod = cri
        .run_pod(&config, handler)
        .map_err(|e| format!("RunPodSandbox {name}: {e}"))?;
    let result = (|| -> Result<OnePod, String> {
        let id = cri
            .create_container(&pod, main, &config)
            .map_err(|e| format!("CreateContainer {name}: {e}"))?;
        cri.start_container(&id)
            .map_err(|e| format!("StartContainer {name}: {e}"))?;
        wait_for(|| std::fs::metadata(&log).is_ok_and(|m| m.len() > 0), &log)?;
        let start = began.elapsed();

        let execs = (0..EXECS_PER_POD)
            .map(|_| exec_true(cri, &id, name))
            .collect::<Result<Vec<_>, _>>()?;
        let memory = if handler == KATA {
            std::thread::sleep(IDLE);
            Some(memory::pod_memory(&pod)?)
        } else {
            None
        };
        let stdout_mib_s = throughput(cri, &pod, &config)?;
        let floor_stdout_mib_s = floor_throughput(cri, &pod, &config)?;
        let net = net::measure(cri, &pod, &config).map_err(|e| format!("TCP in {name}: {e}"))?;
        Ok(OnePod {
            start,
            stop: Duration::ZERO,
            execs,
            memory,
            stdout_mib_s,
            floor_stdout_mib_s,
            net,
        })
    })();
    // `crictl stopp` then `rmp`: the pod's containers are stopped, the
    // sandbox stopped and removed.
    let began = Instant::now();
    let stopped = cri
        .stop_pod(&pod)
        .and_then(|()| cri.remove_pod(&pod))
        .map_err(|e| format!("removing {name}: {e}"));
    let stop = began.elapsed();
    let mut one = result?;
    stopped?;
    one.stop = stop;
    if handler == KATA {
        // Nothing of the sandbox outlives its removal (panics otherwise).
        crate::common::assert_no_leaks(&pod);
    }
    Ok(one)
}

/// Runs a container that writes [`THROUGHPUT_BYTES`] of 1 KiB lines and
/// returns MiB/s from StartContainer to its exit.
fn throughput(cri: &Cri, pod: &str, config: &PodSandboxConfig) -> Result<f64, String> {
    let line = "x".repeat(LINE - 1);
    let script = format!("yes {line} | head -c {THROUGHPUT_BYTES}");
    let spec = container_config("stdout", BUSYBOX_REF, &["/bin/sh", "-c", &script]);
    throughput_of(cri, pod, config, spec, false)
}

/// The same bytes written by `kata-floor lines` in 64 KiB writes, from the
/// first byte in the log to the exit: the output path without the cost of
/// a shell pipeline in the guest or of the container's start.
fn floor_throughput(cri: &Cri, pod: &str, config: &PodSandboxConfig) -> Result<f64, String> {
    let (bytes, write) = (THROUGHPUT_BYTES.to_string(), net::FLOOR_WRITE.to_string());
    let spec = net::floor_container("stdout-floor", &["lines", &bytes, &write]);
    throughput_of(cri, pod, config, spec, true)
}

/// Runs `spec`, which writes [`THROUGHPUT_BYTES`] to stdout, and returns
/// MiB/s from StartContainer (or, with `from_first_byte`, from the first
/// byte in its log) to its exit.
fn throughput_of(
    cri: &Cri,
    pod: &str,
    config: &PodSandboxConfig,
    spec: k8s_cri::v1::ContainerConfig,
    from_first_byte: bool,
) -> Result<f64, String> {
    let name = spec
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let log = log_file(config, &spec);
    let id = cri
        .create_container(pod, spec, config)
        .map_err(|e| format!("CreateContainer {name}: {e}"))?;
    let mut began = Instant::now();
    cri.start_container(&id)
        .map_err(|e| format!("StartContainer {name}: {e}"))?;
    let deadline = Instant::now() + WAIT;
    if from_first_byte {
        wait_for(|| std::fs::metadata(&log).is_ok_and(|m| m.len() > 0), &log)?;
        began = Instant::now();
    }
    loop {
        let st = cri
            .container_status(&id)
            .map_err(|e| format!("ContainerStatus {name}: {e}"))?;
        if st.state == ContainerState::ContainerExited as i32 {
            if st.exit_code != 0 {
                return Err(format!("the {name} writer exited {}", st.exit_code));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the {name} writer still runs after {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = began.elapsed();
    // Each CRI log line adds a timestamp, the stream and a tag.
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    if size < THROUGHPUT_BYTES {
        return Err(format!(
            "{} holds {size} bytes, less than the {THROUGHPUT_BYTES} written",
            log.display()
        ));
    }
    cri.remove_container(&id)
        .map_err(|e| format!("RemoveContainer {name}: {e}"))?;
    Ok((THROUGHPUT_BYTES as f64 / (1 << 20) as f64) / took.as_secs_f64())
}

fn net_median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One ExecSync of `true` in container `id` (of pod `pod`, for messages):
/// its round trip.
fn exec_true(cri: &Cri, id: &str, pod: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let r = cri
        .exec_sync(id, &["true"], 60)
        .map_err(|e| format!("ExecSync in {pod}: {e}"))?;
    if r.exit_code != 0 {
        return Err(format!("ExecSync true in {pod} exited {}", r.exit_code));
    }
    Ok(t.elapsed())
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &Path) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("{} stayed empty for {WAIT:?}", what.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
