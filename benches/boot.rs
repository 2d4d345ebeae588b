//! `make bench`: boot timings of a pod VM against the raw boot baseline
//! (DESIGN decision 10), then kata pods against runc pods through CRI
//! (`pods`), all measured in the same run, written as a table to
//! BENCHMARKS.md (or `$BENCH_OUTPUT`).
//!
//! - raw boot: QEMU with the pod VM's machine, acceleration, memory, kernel
//!   and kernel command line, and an initrd whose `/init` powers off at
//!   once; QEMU spawn to QEMU exit.
//! - boot to agent ready: QEMU spawn to the agent's first health answer.
//!
//! The pod rows are then read against the data path's floor (`floor`): a
//! VM with the tiny `kata-floor` program instead of the agent moving the
//! same bytes.
//!
//! Raw and agent boots alternate so machine noise hits both alike.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "floor/mod.rs"]
mod floor;
#[path = "pods/mod.rs"]
mod pods;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_shim::config::Config;
use kata_shim::guest::SandboxVm;
use kata_shim::vm::qemu::cmdline::{QemuSpec, ShareDevice, sandbox_uuid};
use kata_shim::vm::qemu::kernel_cmdline::KernelCmdline;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: error: {e}");
        std::process::exit(1);
    }
}

fn checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let o = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("benchmarks start VMs and must run as root".into());
    }
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::env::var_os("BENCH_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    let bins = common::bin_dir();
    let images = bins.parent().expect("target dir").join("test-images");
    let agent = bins.join("kata-agent");
    let builder = bins.join("kata-guest-image");
    for b in [&agent, &builder] {
        if !b.is_file() {
            return Err(format!("{} missing: run make build first", b.display()));
        }
    }
    checked(
        Command::new(&builder)
            .arg("--agent")
            .arg(&agent)
            .arg("--output-dir")
            .arg(&images),
        "building the guest image",
    )?;
    let raw_initrd = images.join("raw-boot.initrd");
    checked(
        Command::new(&builder)
            .arg("raw-boot")
            .arg("--output")
            .arg(&raw_initrd),
        "building the raw-boot initrd",
    )?;

    let mut config = Config::default();
    config.hypervisor.qemu.kernel = images.join("kata.kernel");
    config.hypervisor.qemu.initrd = images.join("kata.initrd");
    let kver = std::fs::read_link(images.join("kata.initrd"))
        .ok()
        .and_then(|p| {
            p.components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
        })
        .unwrap_or_default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (mut raw, mut ready, mut start, mut stop) = (vec![], vec![], vec![], vec![]);
    let mut accel = String::new();
    for i in 0..iterations {
        raw.push(raw_boot(&config, &raw_initrd)?);
        let id = format!("bench-{}-{i}", std::process::id());
        let began = Instant::now();
        let sb = rt
            .block_on(SandboxVm::boot(&config, &id))
            .map_err(|e| format!("boot {id}: {}", kata_shim::logging::error_chain(&e)))?;
        start.push(began.elapsed());
        ready.push(sb.agent_ready);
        accel = sb.vm.accel.as_str().to_string();
        let r = rt.block_on(sb.shutdown());
        stop.push(r.duration);
        eprintln!(
            "bench: iteration {}/{iterations}: raw {:.2} s, agent ready {:.2} s",
            i + 1,
            secs(raw[i]),
            secs(ready[i])
        );
    }
    eprintln!("bench: CRI pods (kata and runc) through a private containerd");
    let p = pods::measure(iterations)?;
    eprintln!("bench: the floor VM (kata-floor instead of the agent)");
    let fl = floor::measure(iterations)?;
    // The sweep boots a VM per setting: `make bench` only, not the smoke.
    let sweep = if iterations > 1 {
        Some(floor::sweep())
    } else {
        None
    };
    let base = median(&raw);
    let ratio = secs(median(&ready)) / secs(base);
    let pod_ratio = secs(median(&p.kata_start)) / secs(base);
    let row = |name: &str, v: &[Duration], goal: &str| {
        format!(
            "| {name} | {:.2} s | {:.2} s | {:.2} s | {:.2} | {goal} |",
            secs(median(v)),
            secs(*v.iter().min().expect("non-empty")),
            secs(*v.iter().max().expect("non-empty")),
            secs(median(v)) / secs(base)
        )
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let table = [
        "# Benchmarks".to_string(),
        String::new(),
        "Regenerated by `make bench`; every figure below comes from one run on one machine.".into(),
        "Ratios divide by the raw boot measured in the same run (DESIGN.md decision 10), so".into(),
        "they survive a noisy, shared machine better than the absolute times.".into(),
        String::new(),
        format!(
            "Run: {iterations} iteration(s), {} CPUs ({cpu}), accel {accel}, guest kernel {kver}, {} vCPU, {} MiB, hybrid vsock, virtio-fs.",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            config.hypervisor.qemu.default_vcpus,
            config.hypervisor.qemu.default_memory
        ),
        String::new(),
        "| measurement | median | min | max | ratio to raw boot | goal |".into(),
        "|---|---|---|---|---|---|".into(),
        row("raw boot: QEMU spawn → exit, `/init` powers off at once", &raw, "baseline"),
        row("boot to agent ready: QEMU spawn → first Health answer", &ready, "≤ 1.2"),
        row("sandbox start: start call (helpers + QEMU) → agent ready", &start, ""),
        row("sandbox stop: DestroySandbox → QEMU and helpers gone", &stop, ""),
        row("kata pod start: RunPodSandbox → first byte of container output", &p.kata_start, "≤ 1.4"),
        row("runc pod start: RunPodSandbox → first byte of container output", &p.runc_start, ""),
        String::new(),
        format!(
            "Boot-to-agent-ready ratio: **{ratio:.2}** (goal ≤ 1.2: {}). Kata pod start ratio: **{pod_ratio:.2}** (goal ≤ 1.4: {}).",
            if ratio <= 1.2 { "met" } else { "not met" },
            if pod_ratio <= 1.4 { "met" } else { "not met" }
        ),
        String::new(),
        pods_table(&p, config.hypervisor.qemu.tcg_tb_size),
        floor::table(&fl, &p, sweep.as_deref()),
    ]
    .join("\n");
    std::fs::write(&output, &table).map_err(|e| format!("writing {}: {e}", output.display()))?;
    println!("{table}");
    eprintln!("bench: wrote {}", output.display());
    Ok(())
}

/// One raw boot: spawn to exit of a QEMU whose guest powers off at once.
fn raw_boot(config: &Config, initrd: &Path) -> Result<Duration, String> {
    let q = &config.hypervisor.qemu;
    let choice = kata_shim::vm::accel::choose(q.accel, kata_shim::vm::accel::HostVirt::probe());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let share = ShareDevice::None;
    let spec = QemuSpec {
        sandbox_id: "raw-boot".into(),
        uuid: sandbox_uuid("raw-boot"),
        machine_type: q.machine_type.clone(),
        accel: choice.accel,
        tcg_tb_size_mib: q.tcg_tb_size,
        vcpus: q.default_vcpus,
        max_vcpus: q.default_vcpus,
        memory_slots: 0,
        max_memory_mib: 0,
        memory_mib: q.default_memory,
        kernel: q.kernel.clone(),
        initrd: initrd.to_path_buf(),
        kernel_cmdline: KernelCmdline {
            accel: choice.accel,
            vcpus: q.default_vcpus,
            max_vcpus: q.default_vcpus,
            debug: false,
            agent_log: config.agent.kata.log_level,
            debug_console: false,
            share: &share,
            extra: &q.kernel_params,
        }
        .render(),
        qmp_socket: dir.path().join("qmp.sock"),
        seccomp_sandbox: q.seccompsandbox.clone(),
        vsock: None,
        share,
    };
    let qemu = q
        .path
        .iter()
        .find(|p| p.is_file())
        .ok_or("no QEMU binary")?;
    let began = Instant::now();
    let status = Command::new(qemu)
        .args(spec.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("raw boot: {e}"))?;
    let took = began.elapsed();
    if !status.success() {
        return Err(format!("raw boot QEMU exited with {status}"));
    }
    Ok(took)
}

/// The kata-against-runc rows: ExecSync, memory, stdout throughput, TCP
/// between the host and the pod.
fn pods_table(p: &pods::Samples, tb_size: u32) -> String {
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1000.0).collect() };
    let kib_to_mib = |f: fn(&pods::PodMemory) -> u64| -> Vec<f64> {
        p.kata_memory.iter().map(|m| f(m) as f64 / 1024.0).collect()
    };
    let row_with = |digits: usize,
                    name: &str,
                    unit: &str,
                    v: &[f64],
                    vs: Option<&[f64]>,
                    goal: &str| {
        let versus = vs
            .map(|b| format!("{:.2}", fmedian(v) / fmedian(b)))
            .unwrap_or_default();
        format!(
            "| {name} | {:.digits$} {unit} | {:.digits$} {unit} | {:.digits$} {unit} | {versus} | {goal} |",
            fmedian(v),
            fmin(v),
            fmax(v)
        )
    };
    let row = |name: &str, unit: &str, v: &[f64], vs: Option<&[f64]>, goal: &str| {
        row_with(1, name, unit, v, vs, goal)
    };
    let (ke, re) = (ms(&p.kata_exec), ms(&p.runc_exec));
    let ours = kib_to_mib(pods::PodMemory::ours_kib);
    let ours_ok = fmedian(&ours) <= 20.0;
    let net_mib = pods::net::BYTES >> 20;
    let (rtt_bytes, rtts) = (pods::net::RTT_MESSAGE, pods::net::ROUND_TRIPS);
    let (udp_mib, dgram) = (pods::net::UDP_BYTES >> 20, pods::net::UDP_DATAGRAM);
    let (reqs, file) = (pods::net::HTTP_REQUESTS, pods::net::HTTP_FILE);
    [
        "| kata pod against runc pod (same run) | median | min | max | kata / runc | goal |".to_string(),
        "|---|---|---|---|---|---|".into(),
        // What `crictl stopp` + `crictl rmp` ask of a runtime; containerd's
        // StopPodSandbox gives the containers no grace period.
        row("pod stop + remove (StopPodSandbox + RemovePodSandbox of a running pod), kata", "ms", &ms(&p.kata_stop), Some(&ms(&p.runc_stop)), ""),
        row("pod stop + remove (StopPodSandbox + RemovePodSandbox of a running pod), runc", "ms", &ms(&p.runc_stop), None, ""),
        row("ExecSync `true` round trip, kata", "ms", &ke, Some(&re), ""),
        row("ExecSync `true` round trip, runc", "ms", &re, None, ""),
        row("stdout to the CRI log (64 MiB of 1 KiB lines), kata", "MiB/s", &p.kata_stdout, Some(&p.runc_stdout), ""),
        row("stdout to the CRI log (64 MiB of 1 KiB lines), runc", "MiB/s", &p.runc_stdout, None, ""),
        row("stdout to the CRI log (the same bytes from `kata-floor lines` in 64 KiB writes, first byte → exit), kata", "MiB/s", &p.kata_floor_stdout, Some(&p.runc_floor_stdout), "≥ 0.25× runc"),
        row("stdout to the CRI log (the same bytes from `kata-floor lines` in 64 KiB writes, first byte → exit), runc", "MiB/s", &p.runc_floor_stdout, None, ""),
        row("ExecSync `true` of an idle kata pod, before a neighbour's flood", "ms", &p.flood_idle_ms, None, ""),
        row("ExecSync `true` of the same pod while a neighbouring kata pod writes `yes` into its CRI log", "ms", &p.flood_ms, None, ""),
        row("the flooding pod's CRI log growth meanwhile", "MiB/s", &p.flood_mib_s, None, ""),
        row(&format!("TCP host → pod ({net_mib} MiB, connect → the pod's byte count), kata"), "MiB/s", &p.kata_net_up, Some(&p.runc_net_up), ""),
        row(&format!("TCP host → pod ({net_mib} MiB, connect → the pod's byte count), runc"), "MiB/s", &p.runc_net_up, None, ""),
        row(&format!("TCP pod → host ({net_mib} MiB, connect → EOF), kata"), "MiB/s", &p.kata_net_down, Some(&p.runc_net_down), ""),
        row(&format!("TCP pod → host ({net_mib} MiB, connect → EOF), runc"), "MiB/s", &p.runc_net_down, None, ""),
        // A runc round trip is tens of microseconds: three decimals.
        row_with(3, &format!("TCP round trip host ↔ pod ({rtt_bytes} B echo, {rtts} per pod on one connection), kata"), "ms", &p.kata_rtt, Some(&p.runc_rtt), ""),
        row_with(3, &format!("TCP round trip host ↔ pod ({rtt_bytes} B echo, {rtts} per pod on one connection), runc"), "ms", &p.runc_rtt, None, ""),
        row(&format!("UDP host → pod ({udp_mib} MiB in {dgram} B datagrams, unpaced; arrived in the pod's UDP layer), kata"), "MiB/s", &p.kata_udp, Some(&p.runc_udp), ""),
        row(&format!("UDP host → pod ({udp_mib} MiB in {dgram} B datagrams, unpaced; arrived in the pod's UDP layer), runc"), "MiB/s", &p.runc_udp, None, ""),
        row("UDP host → pod: datagrams lost, kata", "%", &p.kata_udp_loss, None, ""),
        row("UDP host → pod: datagrams lost, runc", "%", &p.runc_udp_loss, None, ""),
        row(&format!("many connections: {reqs} HTTP/1.0 GETs of {file} B from busybox httpd, a connection each, kata"), "requests/s", &p.kata_http, Some(&p.runc_http), ""),
        row(&format!("many connections: {reqs} HTTP/1.0 GETs of {file} B from busybox httpd, a connection each, runc"), "requests/s", &p.runc_http, None, ""),
        row_with(2, "many connections: request latency p50 (connect → EOF; per pod), kata", "ms", &p.kata_http_p50, Some(&p.runc_http_p50), ""),
        row_with(2, "many connections: request latency p50 (connect → EOF; per pod), runc", "ms", &p.runc_http_p50, None, ""),
        row_with(2, "many connections: request latency p99 (connect → EOF; per pod), kata", "ms", &p.kata_http_p99, Some(&p.runc_http_p99), ""),
        row_with(2, "many connections: request latency p99 (connect → EOF; per pod), runc", "ms", &p.runc_http_p99, None, ""),
        row("idle kata pod: guest memory (shared memfd, counted once)", "MiB", &kib_to_mib(|m| m.guest_kib), None, ""),
        row(
            &format!("idle kata pod: QEMU private memory (TCG translation cache tb-size {tb_size} MiB included)"),
            "MiB",
            &kib_to_mib(|m| m.qemu_private_kib),
            None,
            "",
        ),
        row("idle kata pod: shim private memory", "MiB", &kib_to_mib(|m| m.shim_kib), None, ""),
        row("idle kata pod: virtiofsd private memory", "MiB", &kib_to_mib(|m| m.virtiofsd_kib), None, ""),
        row("idle kata pod: vhost-device-vsock private memory", "MiB", &kib_to_mib(|m| m.vsock_kib), None, ""),
        row("idle kata pod: our processes (shim + virtiofsd + vhost-device-vsock)", "MiB", &ours, None, "≤ 20 MiB"),
        String::new(),
        format!(
            "Our processes per idle kata pod: **{:.1} MiB** (goal ≤ 20 MiB: {}). Memory is private (Private_Clean + Private_Dirty from smaps, the guest's memfd excluded and counted once under guest memory).",
            fmedian(&ours),
            if ours_ok { "met" } else { "not met" }
        ),
        String::new(),
        format!(
            "Neighbour during a flood: ExecSync median {:.1} ms against {:.1} ms idle, **{:.2}×** (the two pods share the machine's cores).",
            fmedian(&p.flood_ms),
            fmedian(&p.flood_idle_ms),
            fmedian(&p.flood_ms) / fmedian(&p.flood_idle_ms)
        ),
        String::new(),
        "TCP rows: the host reaches each pod at the IP CRI reports over the CNI bridge (a kata pod through the veth, tc mirred, the tap and QEMU's virtio-net); busybox `nc` servers in the pod count the bytes (`wc -c`), send them (`head -c`) or echo them (`cat`).".into(),
        String::new(),
        "UDP rows: the host sends as fast as it can to a port nothing in the pod listens on (this busybox has no UDP server); the pod's kernel counts what reached its UDP layer (`InDatagrams + NoPorts` of `/proc/net/snmp`). MiB/s runs from the first send to the count settling. Many connections: one TCP connection per request, sequential, busybox `httpd` forking per connection in the pod.".into(),
        String::new(),
        "The NIC options (queue sizes, offloads, multiqueue, vhost-net) and the sweep that chose them: [NETWORK.md](NETWORK.md).".into(),
        String::new(),
    ]
    .join("\n")
}

fn fmedian(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn fmin(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn fmax(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
