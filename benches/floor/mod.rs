//! The floor rows of `make bench` (issue 17): the same bytes as the pod
//! rows, moved by a floor VM (the pod VM's kernel, QEMU argv, hybrid vsock
//! helper and tap plumbing, with the tiny `kata-floor` program instead of
//! the agent; see tests/common/floor.rs), so that each kata figure can be
//! read against what the data path itself allows:
//!
//! - vsock guest → host, 64 MiB: the floor of the stdout-to-CRI-log row
//!   (the container's output leaves the guest over the agent's vsock);
//! - vsock round trip of a tiny message on one connection: the floor of an
//!   ExecSync (a few agent calls over vsock);
//! - TCP host → guest and guest → host, and a small echo's round trip,
//!   over the tap: the floor of the pod's TCP rows. The floor's NIC path is
//!   the pod's without the CNI bridge (veth, tc mirred, tap, QEMU's
//!   virtio-net).
//!
//! Then a sweep over the settings the shim could change on that path
//! (virtio-net's receive ring, the vsock helper's TX buffer), one floor VM
//! per setting, recorded as its own table.

use std::time::Duration;

use crate::common::floor::{FloorOptions, FloorVm, TransferError, echo, fetch, push};
use crate::pods;

/// The stdout row's byte count (`pods::THROUGHPUT_BYTES`).
const LOG_BYTES: u64 = 64 << 20;
/// Guest write size of the vsock throughput: the most one vsock packet
/// carries.
const VSOCK_WRITE: usize = 64 << 10;
/// Guest and host write size of the TCP throughput.
const TCP_WRITE: usize = 64 << 10;
/// Bytes of the tiny vsock message.
const VSOCK_RTT_MESSAGE: usize = 64;
/// Bound of each transfer.
const DEADLINE: Duration = Duration::from_secs(300);

/// One floor VM's figures.
#[derive(Default, Clone)]
pub struct Figures {
    /// vsock guest → host, MiB/s.
    pub vsock_down: Vec<f64>,
    /// vsock round trips, ms (every sample).
    pub vsock_rtt: Vec<f64>,
    /// TCP host → guest and guest → host, MiB/s.
    pub tcp_up: Vec<f64>,
    pub tcp_down: Vec<f64>,
    /// TCP round trips, ms (every sample).
    pub tcp_rtt: Vec<f64>,
}

impl Figures {
    fn extend(&mut self, o: Figures) {
        self.vsock_down.extend(o.vsock_down);
        self.vsock_rtt.extend(o.vsock_rtt);
        self.tcp_up.extend(o.tcp_up);
        self.tcp_down.extend(o.tcp_down);
        self.tcp_rtt.extend(o.tcp_rtt);
    }
}

fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / took.as_secs_f64()
}

fn ms(v: Vec<Duration>) -> Vec<f64> {
    v.into_iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

/// Boots one floor VM with `opts` (plus a NIC) and measures every row once.
fn once(name: &str, opts: &FloorOptions) -> Result<Figures, String> {
    let id = format!("bench-floor-{}-{name}", std::process::id());
    let result = (|| {
        let vm = FloorVm::boot(
            &id,
            &FloorOptions {
                nic: true,
                ..opts.clone()
            },
        )?;
        let tcp_bytes = pods::net::BYTES;
        let (rtt_len, rtts) = (pods::net::RTT_MESSAGE, pods::net::ROUND_TRIPS);
        fn err(what: &'static str) -> impl Fn(TransferError) -> String {
            move |e| format!("floor {what}: {e}")
        }
        let down = fetch(&mut vm.dial_vsock()?, LOG_BYTES, VSOCK_WRITE, DEADLINE)
            .map_err(err("vsock guest → host"))?;
        let vsock_rtt = echo(&mut vm.dial_vsock()?, VSOCK_RTT_MESSAGE, rtts)?;
        let up = push(&mut vm.dial_tcp()?, tcp_bytes, TCP_WRITE, false, DEADLINE)
            .map_err(err("TCP host → guest"))?;
        let tcp_down = fetch(&mut vm.dial_tcp()?, tcp_bytes, TCP_WRITE, DEADLINE)
            .map_err(err("TCP guest → host"))?;
        let tcp_rtt = echo(&mut vm.dial_tcp()?, rtt_len, rtts)?;
        Ok(Figures {
            vsock_down: vec![mib_s(LOG_BYTES, down)],
            vsock_rtt: ms(vsock_rtt),
            tcp_up: vec![mib_s(tcp_bytes, up)],
            tcp_down: vec![mib_s(tcp_bytes, tcp_down)],
            tcp_rtt: ms(tcp_rtt),
        })
    })();
    // The VM is gone with `vm`; nothing of it may be left (panics).
    crate::common::assert_no_leaks(&id);
    result
}

/// The floor with the shim's own argv, `iterations` VMs.
pub fn measure(iterations: usize) -> Result<Figures, String> {
    let mut all = Figures::default();
    for i in 0..iterations {
        let f = once(&i.to_string(), &FloorOptions::default())?;
        eprintln!(
            "bench: floor {}/{iterations}: vsock down {:.1} MiB/s, vsock round trip {:.3} ms, \
             TCP up {:.1} MiB/s, down {:.1} MiB/s, round trip {:.3} ms",
            i + 1,
            crate::fmedian(&f.vsock_down),
            crate::fmedian(&f.vsock_rtt),
            crate::fmedian(&f.tcp_up),
            crate::fmedian(&f.tcp_down),
            crate::fmedian(&f.tcp_rtt),
        );
        all.extend(f);
    }
    Ok(all)
}

/// One setting of the sweep.
struct Setting {
    name: &'static str,
    qemu: &'static [&'static str],
    vsock: &'static [&'static str],
}

/// The settings swept. QEMU clamps a tap NIC's `tx_queue_size` to 256
/// (larger ones are for vhost-user backends), and the shim's argv already
/// sets `rx_queue_size=1024` on every NIC (`vm::qemu::nic`, chosen by the
/// pod sweep in NETWORK.md; a `-global` cannot override it), so what is
/// left to sweep here is the credit the vsock helper grants the guest.
const SETTINGS: &[Setting] = &[
    Setting {
        name: "the shim's argv (rx_queue_size 1024, tx-buffer-size 64 KiB)",
        qemu: &[],
        vsock: &[],
    },
    Setting {
        name: "vhost-device-vsock --tx-buffer-size=262144",
        qemu: &[],
        vsock: &["--tx-buffer-size=262144"],
    },
    Setting {
        name: "vhost-device-vsock --tx-buffer-size=1048576",
        qemu: &[],
        vsock: &["--tx-buffer-size=1048576"],
    },
];

/// One floor VM per setting; the table of their figures. A setting that
/// breaks a transfer is a finding of the sweep: its row says how, and the
/// sweep goes on.
pub fn sweep() -> String {
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    for (i, s) in SETTINGS.iter().enumerate() {
        let opts = FloorOptions {
            qemu_extra: s.qemu.iter().map(|a| a.to_string()).collect(),
            vsock_extra: s.vsock.iter().map(|a| a.to_string()).collect(),
            ..FloorOptions::default()
        };
        eprintln!(
            "bench: floor sweep {}/{}: {}",
            i + 1,
            SETTINGS.len(),
            s.name
        );
        match once(&format!("sweep{i}"), &opts) {
            Ok(f) => rows.push((s.name, f)),
            Err(e) => {
                eprintln!("bench: floor sweep: {}: {e}", s.name);
                failed.push(format!("| {} | failed: {e} | | | | |", s.name));
            }
        }
    }
    let best = |get: fn(&Figures) -> f64, higher: bool| -> &'static str {
        let pick = rows.iter().map(|(n, f)| (*n, get(f)));
        let pick = if higher {
            pick.max_by(|a, b| a.1.total_cmp(&b.1))
        } else {
            pick.min_by(|a, b| a.1.total_cmp(&b.1))
        };
        pick.map_or("", |(n, _)| n)
    };
    let mut out = vec![
        "| floor setting (one VM each) | vsock guest → host | vsock round trip | TCP host → guest | TCP guest → host | TCP round trip |".to_string(),
        "|---|---|---|---|---|---|".into(),
    ];
    for (name, f) in &rows {
        out.push(format!(
            "| {name} | {:.1} MiB/s | {:.3} ms | {:.1} MiB/s | {:.1} MiB/s | {:.3} ms |",
            crate::fmedian(&f.vsock_down),
            crate::fmedian(&f.vsock_rtt),
            crate::fmedian(&f.tcp_up),
            crate::fmedian(&f.tcp_down),
            crate::fmedian(&f.tcp_rtt)
        ));
    }
    out.extend(failed);
    out.push(String::new());
    out.push(format!(
        "Best per column (one sample each, so within noise of each other unless far apart): vsock guest → host: {}; vsock round trip: {}; TCP host → guest: {}; TCP guest → host: {}; TCP round trip: {}.",
        best(|f| crate::fmedian(&f.vsock_down), true),
        best(|f| crate::fmedian(&f.vsock_rtt), false),
        best(|f| crate::fmedian(&f.tcp_up), true),
        best(|f| crate::fmedian(&f.tcp_down), true),
        best(|f| crate::fmedian(&f.tcp_rtt), false),
    ));
    out.push(String::new());
    out.join("\n")
}

/// The floor table: each floor figure beside the kata and runc figures of
/// the same run.
pub fn table(f: &Figures, p: &pods::Samples, sweep: Option<&str>) -> String {
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1000.0).collect() };
    let (ke, re) = (ms(&p.kata_exec), ms(&p.runc_exec));
    let net_mib = pods::net::BYTES >> 20;
    let rtt = pods::net::RTT_MESSAGE;
    let row = |digits: usize, name: &str, unit: &str, floor: &[f64], kata: &[f64], runc: &[f64]| {
        let (fl, k, r) = (
            crate::fmedian(floor),
            crate::fmedian(kata),
            crate::fmedian(runc),
        );
        format!(
            "| {name} | {fl:.digits$} {unit} | {k:.digits$} {unit} | {r:.digits$} {unit} | {:.2} | {:.2} |",
            k / fl,
            k / r
        )
    };
    let mut out = vec![
        "## The data path at the floor".to_string(),
        String::new(),
        "The floor: a VM with the pod VM's kernel, QEMU argv, hybrid vsock helper and tap plumbing, whose `/init` runs the tiny `kata-floor` program instead of our agent (`kata-guest-image floor`), moving the same bytes as the kata row beside it, measured in the same run. kata / floor is what our agent, shim and their protocol cost on top of the data path; kata / runc is the whole cost of the VM.".into(),
        String::new(),
        "| row: kata measurement (floor measurement) | floor | kata | runc | kata / floor | kata / runc |".into(),
        "|---|---|---|---|---|---|".into(),
        row(1, "stdout to the CRI log, 64 MiB (floor: vsock guest → host, 64 MiB in 64 KiB writes)", "MiB/s", &f.vsock_down, &p.kata_stdout, &p.runc_stdout),
        row(1, "stdout to the CRI log, 64 MiB from `kata-floor lines` in 64 KiB writes (floor: the same writes to vsock)", "MiB/s", &f.vsock_down, &p.kata_floor_stdout, &p.runc_floor_stdout),
        row(3, &format!("ExecSync `true` round trip (floor: a {VSOCK_RTT_MESSAGE} B vsock echo on one connection)"), "ms", &f.vsock_rtt, &ke, &re),
        row(1, &format!("TCP host → pod, {net_mib} MiB (floor: host → guest over the tap)"), "MiB/s", &f.tcp_up, &p.kata_net_up, &p.runc_net_up),
        row(1, &format!("TCP pod → host, {net_mib} MiB (floor: guest → host over the tap)"), "MiB/s", &f.tcp_down, &p.kata_net_down, &p.runc_net_down),
        row(3, &format!("TCP round trip, {rtt} B echo (floor: the same over the tap)"), "ms", &f.tcp_rtt, &p.kata_rtt, &p.runc_rtt),
        row(1, &format!("TCP host → pod, {net_mib} MiB, `kata-floor tcp` in a container (floor: host → guest)"), "MiB/s", &f.tcp_up, &p.kata_floor_up, &p.runc_floor_up),
        row(1, &format!("TCP pod → host, {net_mib} MiB, `kata-floor tcp` in a container (floor: guest → host)"), "MiB/s", &f.tcp_down, &p.kata_floor_down, &p.runc_floor_down),
        row(3, &format!("TCP round trip, {rtt} B echo, `kata-floor tcp` in a container (floor: the same)"), "ms", &f.tcp_rtt, &p.kata_floor_rtt, &p.runc_floor_rtt),
        String::new(),
        "The first three TCP rows use busybox `nc` servers in the pod; the `kata-floor tcp` rows run the floor VM's own program in a container of each pod (the host's build and C libraries mounted read-only), the same bytes in the same 64 KiB writes, so that their kata / floor compares the network paths alone.".into(),
        String::new(),
        "For throughput a kata / floor below 1 is the share of the floor the pod reaches; for round trips a ratio above 1 is the pod's extra latency. The floor's NIC path is the pod's without the CNI bridge (host veth → veth in a private netns → tc mirred → tap → QEMU's virtio-net).".into(),
        String::new(),
    ];
    match sweep {
        Some(s) => {
            out.push("### Floor sweep".into());
            out.push(String::new());
            out.push(s.to_string());
        }
        None => out.push(
            "(The floor sweep runs in `make bench` only, not in the one-iteration smoke run.)\n"
                .into(),
        ),
    }
    out.join("\n")
}
