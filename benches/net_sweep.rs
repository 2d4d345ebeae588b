//! `cargo bench --bench net_sweep`: the network sweep of issue 17 (see
//! NETWORK.md). It measures the network rows of `make bench` (`pods::net`) for
//! a kata pod under each of a list of NIC configurations, with a runc pod
//! in every round as the baseline of the same run.
//!
//! A configuration is applied without rebuilding the shim: the kata
//! configuration's `path` names a small wrapper script that appends the
//! configuration's properties to the `-netdev tap,…` and
//! `-device virtio-net-pci,…` arguments the shim built, sets the tap's
//! txqueuelen (the wrapper runs in the pod's network namespace, after the
//! shim made the tap), and execs QEMU. So the sweep measures exactly the
//! pod path of `make bench`, with only the NIC's options changed.
//!
//! `NET_SWEEP_ONLY=a,b` limits the run to the named configurations;
//! `NET_SWEEP_LOCK=<file>` is flock(2)ed for each round, so VM work of
//! others sharing the machine runs between rounds, not within one;
//! `BENCH_ITERATIONS` (default 3) sets the rounds; the table goes to
//! `target/net-sweep.md` and stdout.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "pods/net.rs"]
mod net;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::containerd::Containerd;
use common::cri::{Cri, KATA, RUNC, pod_config};

/// One NIC configuration of the sweep.
struct Variant {
    name: &'static str,
    /// Appended to `-device virtio-net-pci,…`.
    device: &'static str,
    /// Appended to `-netdev tap,…`.
    netdev: &'static str,
    /// The tap's txqueuelen; `None` leaves the kernel's 1000.
    txqueuelen: Option<u32>,
    /// `default_vcpus`; `None` leaves the default (1).
    vcpus: Option<u32>,
}

const fn v(name: &'static str, device: &'static str) -> Variant {
    Variant {
        name,
        device,
        netdev: "",
        txqueuelen: None,
        vcpus: None,
    }
}

fn variants() -> Vec<Variant> {
    vec![
        v("default", ""),
        v("rx512", ",rx_queue_size=512"),
        v("rx1024", ",rx_queue_size=1024"),
        // No tx_queue_size above 256: QEMU refuses it on a tap backend
        // ("must be a power of 2 between 256 and 256"); only vhost-user
        // and vDPA backends take more.
        v(
            "no-offloads",
            ",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off,host_ufo=off,guest_ufo=off,host_ecn=off,guest_ecn=off",
        ),
        v(
            "no-guest-tso",
            ",guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off",
        ),
        v(
            "no-host-tso",
            ",host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off",
        ),
        v("no-mrg-rxbuf", ",mrg_rxbuf=off"),
        v("packed", ",packed=on"),
        // QEMU's default is a bottom half per kick; a timer batches.
        v("tx-timer", ",tx=timer"),
        Variant {
            txqueuelen: Some(5000),
            ..v("txqueuelen-5000", "")
        },
        Variant {
            vcpus: Some(2),
            ..v("2-vcpus", "")
        },
    ]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("net_sweep: error: {e}");
        std::process::exit(1);
    }
}

/// The first QEMU of the default search list that exists.
fn qemu_binary() -> Result<PathBuf, String> {
    kata_shim::config::Config::default()
        .hypervisor
        .qemu
        .path
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| "no QEMU binary".to_string())
}

/// Writes the wrapper for `var` at `path`.
fn write_wrapper(path: &Path, qemu: &Path, var: &Variant) -> Result<(), String> {
    let mut s =
        String::from("#!/bin/bash\nset -e\nargs=()\nfor a in \"$@\"; do\n  case \"$a\" in\n");
    let _ = writeln!(s, "    virtio-net-pci,*) a=\"$a{}\" ;;", var.device);
    let _ = writeln!(s, "    tap,id=*) a=\"$a{}\" ;;", var.netdev);
    s.push_str("  esac\n  args+=(\"$a\")\ndone\n");
    if let Some(q) = var.txqueuelen {
        let _ = writeln!(s, "ip link set tap0_kata txqueuelen {q}");
    }
    let _ = writeln!(s, "exec {} \"${{args[@]}}\"", qemu.display());
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One pod of `handler`: start it, measure, remove it.
fn one(c: &Containerd, cri: &Cri, name: &str, handler: &str) -> Result<net::NetSample, String> {
    let config = pod_config(name, &c.pod_log_dir(name));
    let pod = cri
        .run_pod(&config, handler)
        .map_err(|e| format!("RunPodSandbox {name}: {e}"))?;
    let r = net::measure(cri, &pod, &config);
    let removed = cri
        .stop_pod(&pod)
        .and_then(|()| cri.remove_pod(&pod))
        .map_err(|e| format!("removing {name}: {e}"));
    let r = r.map_err(|e| format!("{name}: {e}"))?;
    removed?;
    Ok(r)
}

/// Holds an exclusive flock(2) on `path` until dropped.
fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("flock {}: {e}", path.display()))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Figures {
    up: Vec<f64>,
    down: Vec<f64>,
    rtt: Vec<f64>,
    udp: Vec<f64>,
    http: Vec<f64>,
}

impl Figures {
    fn add(&mut self, s: net::NetSample) {
        self.up.push(s.up_mib_s);
        self.down.push(s.down_mib_s);
        self.rtt.extend(s.rtt_ms);
        self.udp.push(s.udp.mib_s);
        self.http.push(s.http.per_s);
    }
}

fn run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the sweep starts VMs and must run as root".into());
    }
    let rounds: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let only: Option<Vec<String>> = std::env::var("NET_SWEEP_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let all: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| only.as_ref().is_none_or(|o| o.iter().any(|n| n == v.name)))
        .collect();
    let qemu = qemu_binary()?;
    let c = Containerd::start_cri("netsweep", false);
    let cri = c.cri();
    let base_config = std::fs::read_to_string(&c.kata_config).map_err(|e| e.to_string())?;
    let wrapper = c.state.join("qemu-net-sweep");
    let mut runc = Figures::default();
    let mut kata: Vec<Figures> = all.iter().map(|_| Figures::default()).collect();
    let lock = std::env::var_os("NET_SWEEP_LOCK").map(PathBuf::from);
    for round in 0..rounds {
        let _held = match &lock {
            Some(p) => Some(lock_file(p)?),
            None => None,
        };
        let s = one(&c, &cri, &format!("sweep-runc-{round}"), RUNC)?;
        eprintln!(
            "net_sweep: round {}/{rounds} runc: up {:.1} down {:.1} MiB/s rtt {:.3} ms",
            round + 1,
            s.up_mib_s,
            s.down_mib_s,
            median(&s.rtt_ms)
        );
        runc.add(s);
        for (i, var) in all.iter().enumerate() {
            write_wrapper(&wrapper, &qemu, var)?;
            let mut extra = format!("path = [{:?}]\n", wrapper.display().to_string());
            if let Some(n) = var.vcpus {
                let _ = writeln!(extra, "default_vcpus = {n}");
            }
            let config = base_config.replacen(
                "[hypervisor.qemu]\n",
                &format!("[hypervisor.qemu]\n{extra}"),
                1,
            );
            std::fs::write(&c.kata_config, config).map_err(|e| e.to_string())?;
            let s = one(&c, &cri, &format!("sweep-{}-{round}", var.name), KATA)?;
            eprintln!(
                "net_sweep: round {}/{rounds} {}: up {:.1} down {:.1} MiB/s rtt {:.3} ms",
                round + 1,
                var.name,
                s.up_mib_s,
                s.down_mib_s,
                median(&s.rtt_ms)
            );
            kata[i].add(s);
        }
    }
    std::fs::write(&c.kata_config, &base_config).map_err(|e| e.to_string())?;
    let mut t = format!(
        "Net sweep: {rounds} round(s), {} MiB each way, median of rounds (round trip: median of every sample).\n\n\
         | configuration | host → pod MiB/s | pod → host MiB/s | round trip ms | up vs default | down vs default | UDP host → pod MiB/s | HTTP requests/s |\n|---|---|---|---|---|---|---|---|\n",
        net::BYTES >> 20
    );
    let (du, dd) = all
        .iter()
        .position(|v| v.name == "default")
        .map(|i| (median(&kata[i].up), median(&kata[i].down)))
        .unwrap_or((f64::NAN, f64::NAN));
    let _ = writeln!(
        t,
        "| runc (baseline) | {:.1} | {:.1} | {:.3} | | | {:.1} | {:.0} |",
        median(&runc.up),
        median(&runc.down),
        median(&runc.rtt),
        median(&runc.udp),
        median(&runc.http)
    );
    for (var, f) in all.iter().zip(&kata) {
        let all_up: Vec<String> = f.up.iter().map(|x| format!("{x:.1}")).collect();
        let all_down: Vec<String> = f.down.iter().map(|x| format!("{x:.1}")).collect();
        let _ = writeln!(
            t,
            "| kata {} | {:.1} ({}) | {:.1} ({}) | {:.3} | {:.2} | {:.2} | {:.1} | {:.0} |",
            var.name,
            median(&f.up),
            all_up.join(", "),
            median(&f.down),
            all_down.join(", "),
            median(&f.rtt),
            median(&f.up) / du,
            median(&f.down) / dd,
            median(&f.udp),
            median(&f.http)
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/net-sweep.md");
    std::fs::write(&out, &t).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{t}");
    Ok(())
}
