//! Agent replies as the shim decodes them: the ttrpc response envelope
//! (status or payload, as the ttrpc client splits them), then each reply
//! type the shim's calls read, and what the shim does with the fields:
//! the protocol-version check of guest details, the exit status of
//! WaitProcess, the gRPC code of an agent failure, the conversion of
//! guest cgroup statistics into containerd's v2 metrics, and the guest's
//! procfs texts into the management socket's metric families.

use std::time::Duration;

use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use kata_agent_protocol::{PROTOCOL_VERSION, agent, health};
use protobuf::Message;

use super::{Rng, Tally, mutate_bytes, run, show};
use crate::agent_client::{AgentError, check_protocol_version};
use crate::state::{Exit, UNKNOWN_EXIT};
use crate::task::stats::{METRICS_V2_TYPE_URL, metrics, metrics_any};

/// Keys of `memory.stat` and `memory.events` the conversion reads, plus
/// some it ignores.
const MEMORY_KEYS: [&str; 16] = [
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "shmem",
    "pgfault",
    "workingset_refault_anon",
    "workingset_refault_file",
    "workingset_activate_anon",
    "workingset_activate_file",
    "thp_fault_alloc",
    "low",
    "oom",
    "oom_kill",
    "",
    "\u{0}weird\u{7f}",
];

/// The four guest counters the conversion adds in pairs.
const SUMMED: [(&str, &str); 2] = [
    ("workingset_refault_anon", "workingset_refault_file"),
    ("workingset_activate_anon", "workingset_activate_file"),
];

fn random_stats(rng: &mut Rng) -> agent::StatsContainerResponse {
    let mut s = agent::StatsContainerResponse::new();
    if !rng.one_in(4) {
        let mut c = agent::CpuStats::new();
        c.usage_usec = rng.edgy_u64();
        c.user_usec = rng.edgy_u64();
        c.system_usec = rng.edgy_u64();
        c.nr_periods = rng.edgy_u64();
        c.nr_throttled = rng.edgy_u64();
        c.throttled_usec = rng.edgy_u64();
        s.cpu = Some(c).into();
    }
    if !rng.one_in(4) {
        let mut m = agent::MemoryStats::new();
        m.usage = rng.edgy_u64();
        m.limit = rng.edgy_u64();
        m.swap_usage = rng.edgy_u64();
        m.swap_limit = rng.edgy_u64();
        for _ in 0..rng.below(12) {
            m.stat
                .insert(rng.pick(&MEMORY_KEYS).to_string(), rng.edgy_u64());
        }
        for _ in 0..rng.below(6) {
            m.events
                .insert(rng.pick(&MEMORY_KEYS).to_string(), rng.edgy_u64());
        }
        s.memory = Some(m).into();
    }
    if !rng.one_in(4) {
        let mut p = agent::PidsStats::new();
        p.current = rng.edgy_u64();
        p.limit = rng.edgy_u64();
        s.pids = Some(p).into();
    }
    for _ in 0..rng.below(4) {
        let mut e = agent::IoEntry::new();
        e.major = rng.edgy_u64();
        e.minor = rng.edgy_u64();
        e.rbytes = rng.edgy_u64();
        e.wbytes = rng.edgy_u64();
        e.rios = rng.edgy_u64();
        e.wios = rng.edgy_u64();
        s.io.push(e);
    }
    for _ in 0..rng.below(4) {
        let mut h = agent::HugetlbStats::new();
        h.usage = rng.edgy_u64();
        h.max = rng.edgy_u64();
        h.failcnt = rng.edgy_u64();
        let size = rng
            .pick(&["2MB", "1GB", "64KB", "", "\u{fffd}"])
            .to_string();
        s.hugetlb.insert(size, h);
    }
    s
}

/// A reply as the guest could send it: a valid random one, a mutation of
/// its encoding, or noise. `None` when the bytes do not decode.
fn guest_stats(rng: &mut Rng) -> Option<agent::StatsContainerResponse> {
    let valid = random_stats(rng);
    let bytes = valid.write_to_bytes().expect("encode stats");
    match rng.below(4) {
        0 => Some(valid),
        1 => agent::StatsContainerResponse::parse_from_bytes(&rng.bytes(96)).ok(),
        _ => agent::StatsContainerResponse::parse_from_bytes(&mutate_bytes(rng, &bytes)).ok(),
    }
}

/// Clamps the pairs of counters the conversion sums, so that the main run
/// covers everything else while the overflow stays in its own ignored test.
fn clamp_summed(s: &mut agent::StatsContainerResponse) {
    if let Some(m) = s.memory.as_mut() {
        for (a, b) in SUMMED {
            for k in [a, b] {
                if let Some(v) = m.stat.get_mut(k) {
                    *v = (*v).min(u64::MAX / 2);
                }
            }
        }
    }
}

/// Every field of the metrics mirrors the guest's; nothing is invented.
fn check_metrics(s: &agent::StatsContainerResponse, what: &str) {
    let m = metrics(s);
    assert_eq!(m.pids.is_some(), s.pids.is_some(), "{what}");
    if let Some(p) = s.pids.as_ref() {
        assert_eq!(
            (m.pids.current, m.pids.limit),
            (p.current, p.limit),
            "{what}"
        );
    }
    assert_eq!(m.cpu.is_some(), s.cpu.is_some(), "{what}");
    if let Some(c) = s.cpu.as_ref() {
        assert_eq!(m.cpu.usage_usec, c.usage_usec, "{what}");
        assert_eq!(m.cpu.throttled_usec, c.throttled_usec, "{what}");
    }
    assert_eq!(m.memory.is_some(), s.memory.is_some(), "{what}");
    assert_eq!(m.memory_events.is_some(), s.memory.is_some(), "{what}");
    if let Some(mem) = s.memory.as_ref() {
        let st = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        assert_eq!(m.memory.anon, st("anon"), "{what}");
        assert_eq!(m.memory.pgfault, st("pgfault"), "{what}");
        assert_eq!(m.memory.usage, mem.usage, "{what}");
        assert_eq!(m.memory.usage_limit, mem.limit, "{what}");
        assert_eq!(m.memory.swap_limit, mem.swap_limit, "{what}");
        // A sum of two counters is never below either of them.
        for (sum, (a, b)) in [
            (m.memory.workingset_refault, SUMMED[0]),
            (m.memory.workingset_activate, SUMMED[1]),
        ] {
            assert!(
                sum >= st(a) && sum >= st(b),
                "{what}: {a} {} + {b} {} became {sum}",
                st(a),
                st(b)
            );
        }
        let ev = |k: &str| mem.events.get(k).copied().unwrap_or(0);
        assert_eq!(m.memory_events.oom_kill, ev("oom_kill"), "{what}");
        assert_eq!(m.memory_events.low, ev("low"), "{what}");
    }
    assert_eq!(m.io.is_some(), !s.io.is_empty(), "{what}");
    assert_eq!(m.io.usage.len(), s.io.len(), "{what}");
    for (got, e) in m.io.usage.iter().zip(&s.io) {
        assert_eq!(
            (got.major, got.minor, got.rbytes),
            (e.major, e.minor, e.rbytes),
            "{what}"
        );
    }
    // One entry per page size, in page-size order.
    assert_eq!(m.hugetlb.len(), s.hugetlb.len(), "{what}");
    assert!(
        m.hugetlb.windows(2).all(|w| w[0].pagesize < w[1].pagesize),
        "{what}: hugetlb not sorted"
    );
    for h in &m.hugetlb {
        let g = &s.hugetlb[&h.pagesize];
        assert_eq!(
            (h.current, h.max, h.failcnt),
            (g.usage, g.max, g.failcnt),
            "{what}"
        );
    }
    // The Any containerd gets carries exactly these metrics.
    let any = metrics_any(s).expect("metrics always encode");
    assert_eq!(any.type_url, METRICS_V2_TYPE_URL, "{what}");
    let back = Metrics::parse_from_bytes(&any.value).expect("our own encoding decodes");
    assert_eq!(back, m, "{what}");
}

#[test]
fn stats_replies_become_faithful_metrics() {
    let name = "stats_replies_become_faithful_metrics";
    let mut tally = Tally::default();
    run(
        name,
        0x57a7_5c0d_e000_0001,
        20_000,
        Duration::from_secs(2),
        |rng| match guest_stats(rng) {
            Some(mut s) => {
                tally.add(if s.memory.is_some() {
                    "memory"
                } else {
                    "no memory"
                });
                clamp_summed(&mut s);
                check_metrics(&s, &format!("{s:?}"));
            }
            None => tally.add("undecodable"),
        },
    );
    tally.require(name, &["memory", "no memory", "undecodable"]);
}

/// `task::stats::metrics` added two guest counters with `+` (now saturating): a guest that
/// reports `workingset_refault_anon` and `workingset_refault_file` (or the
/// `workingset_activate_*` pair) summing past `u64::MAX` panics the shim
/// in a build with overflow checks and wraps to a small number otherwise.
#[test]
fn stats_conversion_of_summed_counters() {
    run(
        "stats_conversion_of_summed_counters",
        0x57a7_5c0d_e000_0002,
        20_000,
        Duration::from_secs(2),
        |rng| {
            if let Some(s) = guest_stats(rng) {
                check_metrics(&s, &format!("{s:?}"));
            }
        },
    );
}

/// Valid encodings of the reply types the shim reads, as mutation seeds.
fn reply_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut d = agent::GuestDetailsResponse::new();
    d.agent_version = "0.1.0".into();
    d.protocol_version = PROTOCOL_VERSION;
    d.kernel_release = "6.8.0".into();
    d.uptime_seconds = 1.5;
    d.online_cpus = 2;
    d.kernel_cmdline = "console=hvc0 agent.log=info".into();
    d.mem_total_kib = 2 << 20;
    let mut sh = agent::SharedFsStatus::new();
    sh.fstype = "virtiofs".into();
    sh.mount_point = "/run/kata-containers/shared/containers".into();
    sh.probe_found = true;
    sh.probe_content = "visible 0123".into();
    d.shared_fs = Some(sh).into();
    let mut w = agent::WaitProcessResponse::new();
    w.status = 137;
    let mut ws = agent::WriteStreamResponse::new();
    ws.len = 4096;
    let mut rs = agent::ReadStreamResponse::new();
    rs.data = b"hello\n".to_vec();
    let mut oom = agent::OomEvent::new();
    oom.container_id = "c1".into();
    let mut i = agent::Interface::new();
    i.name = "eth0".into();
    i.hw_addr = "02:00:00:00:00:01".into();
    i.mtu = 1500;
    let mut a = agent::IpAddress::new();
    a.address = "10.0.0.2".into();
    a.prefix_len = 24;
    i.addresses.push(a);
    let mut r = agent::Route::new();
    r.dest = "0.0.0.0/0".into();
    r.gateway = "10.0.0.1".into();
    r.device = "eth0".into();
    let mut routes = agent::Routes::new();
    routes.routes.push(r);
    let mut h = health::HealthCheckResponse::new();
    h.status = health::health_check_response::ServingStatus::SERVING.into();
    let mut gm = agent::GuestMetrics::new();
    gm.meminfo = "MemTotal: 2000 kB\nActive(anon): 5 kB\n".into();
    gm.loadavg = "0.10 0.20 0.30 1/50 99\n".into();
    gm.stat = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n".into();
    gm.netdev = "h\nh\n eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n".into();
    gm.diskstats = " 7 0 loop0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n".into();
    gm.agent_status = "Threads:\t3\nVmRSS:\t 100 kB\n".into();
    gm.agent_stat = "1 (kata-agent) S 0 1 1 0 -1 0 0 0 0 0 3 2 0 0".into();
    gm.scrapes = 7;
    let enc = |m: &dyn protobuf::MessageDyn| m.write_to_bytes_dyn().expect("encode");
    vec![
        ("GuestDetailsResponse", enc(&d)),
        ("WaitProcessResponse", enc(&w)),
        ("WriteStreamResponse", enc(&ws)),
        ("ReadStreamResponse", enc(&rs)),
        ("OomEvent", enc(&oom)),
        ("Interface", enc(&i)),
        ("Routes", enc(&routes)),
        ("HealthCheckResponse", enc(&h)),
        (
            "StatsContainerResponse",
            enc(&random_stats(&mut Rng::new(1))),
        ),
        ("GuestMetrics", enc(&gm)),
    ]
}

/// Decodes `payload` as the shim's call `kind` would and applies what the
/// shim does with the fields; checks the result. Whether it decoded.
fn handle_reply(kind: &str, payload: &[u8]) -> bool {
    let what = || format!("{kind} {}", show(payload));
    match kind {
        "GuestDetailsResponse" => {
            let Ok(d) = agent::GuestDetailsResponse::parse_from_bytes(payload) else {
                return false;
            };
            match check_protocol_version(d.protocol_version) {
                Ok(()) => assert_eq!(d.protocol_version, PROTOCOL_VERSION, "{}", what()),
                Err(e) => {
                    assert_ne!(d.protocol_version, PROTOCOL_VERSION, "{}", what());
                    let msg = e.to_string();
                    assert!(msg.contains(&d.protocol_version.to_string()), "{msg}");
                    assert!(msg.contains("rebuild the guest image"), "{msg}");
                    assert_eq!(e.code(), ttrpc::Code::UNAVAILABLE);
                }
            }
            // Decoding is canonical: what the shim keeps re-encodes to a
            // value that decodes the same.
            let again = d.write_to_bytes().expect("re-encode");
            assert_eq!(
                agent::GuestDetailsResponse::parse_from_bytes(&again).expect("decode"),
                d,
                "{}",
                what()
            );
        }
        "WaitProcessResponse" => {
            let Ok(w) = agent::WaitProcessResponse::parse_from_bytes(payload) else {
                return false;
            };
            let exit = Exit::from_agent(w.status);
            assert!(exit.status <= UNKNOWN_EXIT, "{}", what());
            if (0..=255).contains(&w.status) {
                assert_eq!(i64::from(exit.status), i64::from(w.status), "{}", what());
            } else {
                assert_eq!(exit.status, UNKNOWN_EXIT, "{}", what());
            }
        }
        "StatsContainerResponse" => {
            let Ok(mut s) = agent::StatsContainerResponse::parse_from_bytes(payload) else {
                return false;
            };
            clamp_summed(&mut s);
            check_metrics(&s, &what());
        }
        "ReadStreamResponse" => {
            let Ok(r) = agent::ReadStreamResponse::parse_from_bytes(payload) else {
                return false;
            };
            // The data is a slice of the reply: no decode inflates it.
            assert!(r.data.len() <= payload.len(), "{}", what());
        }
        "OomEvent" => {
            let Ok(o) = agent::OomEvent::parse_from_bytes(payload) else {
                return false;
            };
            assert!(o.container_id.len() <= payload.len(), "{}", what());
        }
        "GuestMetrics" => {
            let Ok(m) = agent::GuestMetrics::parse_from_bytes(payload) else {
                return false;
            };
            let text = crate::metrics::render(&crate::metrics::guest::families(&m));
            // Bounded by the parsers, not by the input; one sample per line,
            // every family a kata one, every label value plain.
            let samples = text.lines().filter(|l| !l.starts_with('#')).count();
            assert!(samples <= 20_000, "{samples} samples from {}", what());
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                assert!(
                    line.starts_with("kata_guest_") || line.starts_with("kata_agent_"),
                    "{line} from {}",
                    what()
                );
                assert!(!line.contains('\\'), "{line} from {}", what());
                let value = line.rsplit(' ').next().unwrap_or_default();
                assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
            }
        }
        "WriteStreamResponse" => {
            return agent::WriteStreamResponse::parse_from_bytes(payload).is_ok();
        }
        "Interface" => return agent::Interface::parse_from_bytes(payload).is_ok(),
        "Routes" => return agent::Routes::parse_from_bytes(payload).is_ok(),
        "HealthCheckResponse" => {
            return health::HealthCheckResponse::parse_from_bytes(payload).is_ok();
        }
        other => panic!("no decoder for {other}"),
    }
    true
}

/// The envelope as the ttrpc client splits it: a status other than OK is
/// the call's error, else the payload is the reply. The outcome.
fn handle_response(kind: &str, bytes: &[u8]) -> &'static str {
    let Ok(res) = ttrpc::Response::parse_from_bytes(bytes) else {
        return "undecodable envelope";
    };
    let status = res.status.clone().unwrap_or_default();
    if status.code() == ttrpc::Code::OK {
        return reply_outcome(handle_reply(kind, &res.payload));
    }
    let e = AgentError::Rpc {
        call: "Fuzz",
        source: ttrpc::Error::RpcStatus(status.clone()),
    };
    // The agent's own code passes through; OK and UNKNOWN never reach
    // containerd.
    let code = e.code();
    assert!(
        code != ttrpc::Code::OK && code != ttrpc::Code::UNKNOWN,
        "{kind}: {code:?} from {}",
        show(bytes)
    );
    if status.code() != ttrpc::Code::UNKNOWN {
        assert_eq!(code, status.code(), "{kind}: {}", show(bytes));
    }
    assert_eq!(e.status(), Some(status.code()));
    assert!(e.to_string().contains("Fuzz"), "the error names the call");
    "agent error"
}

fn reply_outcome(decoded: bool) -> &'static str {
    if decoded {
        "reply"
    } else {
        "undecodable reply"
    }
}

fn envelope(rng: &mut Rng, payload: Vec<u8>) -> Vec<u8> {
    let mut res = ttrpc::Response::new();
    res.payload = payload;
    if rng.one_in(3) {
        let code = *rng.pick(&[0, 1, 2, 5, 13, 14, 16, 17, 99, -1]);
        let mut st = ttrpc::Status::new();
        st.code = protobuf::EnumOrUnknown::from_i32(code);
        st.message = String::from_utf8_lossy(&rng.bytes(24)).into_owned();
        res.status = Some(st).into();
    }
    res.write_to_bytes().expect("encode response")
}

#[test]
fn agent_replies_decode_and_are_handled_safely() {
    let name = "agent_replies_decode_and_are_handled_safely";
    let seeds = reply_seeds();
    let mut tally = Tally::default();
    run(
        name,
        0xa6e7_7e91_1e50_0003,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let (kind, seed) = rng.pick(&seeds);
            let payload = match rng.below(5) {
                0 => rng.bytes(64),
                _ => mutate_bytes(rng, seed),
            };
            let outcome = match rng.below(3) {
                // The payload alone, and inside a (possibly mutated) envelope.
                0 => reply_outcome(handle_reply(kind, &payload)),
                1 => handle_response(kind, &envelope(rng, payload)),
                _ => {
                    let env = envelope(rng, payload);
                    handle_response(kind, &mutate_bytes(rng, &env))
                }
            };
            tally.add(outcome);
        },
    );
    let all = [
        "reply",
        "undecodable reply",
        "agent error",
        "undecodable envelope",
    ];
    tally.require(name, &all);
}

#[test]
fn reply_seeds_are_handled_as_sent() {
    for (kind, seed) in reply_seeds() {
        assert!(handle_reply(kind, &seed), "{kind} seed decodes");
    }
    // The valid details pass the version check.
    let (_, details) = &reply_seeds()[0];
    let d = agent::GuestDetailsResponse::parse_from_bytes(details).expect("decode");
    check_protocol_version(d.protocol_version).expect("our version");
}
