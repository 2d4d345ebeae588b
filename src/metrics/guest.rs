//! The guest's figures, from the agent's `GetMetrics` reply, as Kata's
//! `kata_guest_*` and `kata_agent_*` families.
//!
//! Everything here was written by the guest, which may be hostile: only
//! known shapes are read, keys and names are checked before they become
//! label values, every count is bounded, and a line that does not parse is
//! dropped. What comes out is at most a few thousand samples, whatever the
//! guest sends (each text is also cut at 64 KiB by the agent, and the
//! ttrpc reply is bounded by the client).

use kata_agent_protocol::agent::{GuestMetrics, StatsContainerResponse};

use super::procfs::{self, ProcTexts, number, valid_name};
use super::{Family, Kind};

/// Most `/proc/meminfo` and `/proc/vmstat` entries read.
const MAX_KEYS: usize = 256;
/// Most CPUs (the `cpu` total included) and disks reported.
const MAX_CPUS: usize = 257;
const MAX_DISKS: usize = 64;

/// The columns of a `/proc/stat` cpu line, in order.
const CPU_ITEMS: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// The columns of `/proc/diskstats` after major, minor and name.
const DISK_ITEMS: [&str; 17] = [
    "reads",
    "merged",
    "sectors_read",
    "time_reading",
    "writes",
    "writes_merged",
    "sectors_written",
    "time_writing",
    "in_progress",
    "time_in_progress",
    "weighted_time_in_progress",
    "discards",
    "discards_merged",
    "sectors_discarded",
    "time_discarding",
    "flushes",
    "time_flushing",
];

/// A key as a label value: `MemTotal` → `mem_total`, `Active(anon)` →
/// `active_anon`; `None` for anything but a short word.
fn snake_key(key: &str) -> Option<String> {
    if !(1..=40).contains(&key.len())
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'(' | b')'))
    {
        return None;
    }
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c == '(' || c == ')' {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_lowercase());
    }
    Some(out.trim_end_matches('_').to_string())
}

fn meminfo(text: &str) -> Family {
    let mut f = Family::new(
        "kata_guest_meminfo",
        Kind::Gauge,
        "Guest memory (see /proc/meminfo), in bytes where the file says kB.",
    );
    let mut seen: Vec<String> = Vec::new();
    for line in text.lines().take(MAX_KEYS) {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(item), Some(v)) = (snake_key(key), words.next().and_then(number)) else {
            continue;
        };
        if seen.contains(&item) {
            continue;
        }
        let v = if words.next() == Some("kB") {
            v * 1024.0
        } else {
            v
        };
        f.sample("", &[("item", &item)], v);
        seen.push(item);
    }
    f
}

/// `kata_guest_load` and `kata_guest_tasks` from `/proc/loadavg` and
/// `threads-max`.
fn load(loadavg: &str, threads_max: &str) -> [Family; 2] {
    let mut load = Family::new("kata_guest_load", Kind::Gauge, "Guest system load.");
    let mut tasks = Family::new(
        "kata_guest_tasks",
        Kind::Gauge,
        "Guest tasks: cur (threads now), max (threads-max).",
    );
    let fields: Vec<&str> = loadavg.split_whitespace().take(5).collect();
    for (item, i) in [("load1", 0), ("load5", 1), ("load15", 2)] {
        let v = fields.get(i).and_then(|s| s.parse::<f64>().ok());
        if let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) {
            load.sample("", &[("item", item)], v);
        }
    }
    if let Some(cur) = fields
        .get(3)
        .and_then(|s| s.split_once('/'))
        .and_then(|(_, t)| number(t))
    {
        tasks.sample("", &[("item", "cur")], cur);
    }
    if let Some(max) = number(threads_max.trim()) {
        tasks.sample("", &[("item", "max")], max);
    }
    [load, tasks]
}

fn cpu_time(stat: &str) -> Family {
    let mut f = Family::new(
        "kata_guest_cpu_time",
        Kind::Gauge,
        "Guest CPU time in clock ticks (see /proc/stat); cpu is the CPU number or total.",
    );
    let mut cpus = 0;
    for line in stat.lines().take(MAX_CPUS + 16) {
        let mut words = line.split_whitespace();
        let Some(name) = words.next().and_then(|w| w.strip_prefix("cpu")) else {
            continue;
        };
        let cpu = match name {
            "" => "total".to_string(),
            n if n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
            _ => continue,
        };
        if cpus == MAX_CPUS {
            break;
        }
        cpus += 1;
        for (item, v) in CPU_ITEMS.iter().zip(words.map_while(number)) {
            f.sample("", &[("cpu", &cpu), ("item", item)], v);
        }
    }
    f
}

fn vm_stat(text: &str) -> Family {
    let mut f = Family::new(
        "kata_guest_vm_stat",
        Kind::Gauge,
        "Guest virtual memory statistics (see /proc/vmstat).",
    );
    let mut seen: Vec<&str> = Vec::new();
    for line in text.lines().take(MAX_KEYS) {
        let Some((key, v)) = line.split_once(' ') else {
            continue;
        };
        let key_ok = (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if let (true, Some(v), false) = (key_ok, number(v.trim()), seen.contains(&key)) {
            f.sample("", &[("item", key)], v);
            seen.push(key);
        }
    }
    f
}

fn diskstat(text: &str) -> Family {
    let mut f = Family::new(
        "kata_guest_diskstat",
        Kind::Gauge,
        "Guest disk statistics (see /proc/diskstats).",
    );
    let mut disks = 0;
    for line in text.lines().take(4 * MAX_DISKS) {
        let words: Vec<&str> = line.split_whitespace().take(3 + DISK_ITEMS.len()).collect();
        let Some(name) = words.get(2).filter(|n| valid_name(n)) else {
            continue;
        };
        if disks == MAX_DISKS {
            break;
        }
        disks += 1;
        for (item, v) in DISK_ITEMS
            .iter()
            .zip(words[3..].iter().map_while(|w| number(w)))
        {
            f.sample("", &[("disk", name), ("item", item)], v);
        }
    }
    f
}

/// The agent's own families: Kata's five per-process ones, its totals and
/// its scrape count.
fn agent(m: &GuestMetrics) -> Vec<Family> {
    let texts = ProcTexts {
        status: m.agent_status.clone(),
        stat: m.agent_stat.clone(),
        io: m.agent_io.clone(),
        fds: Some(u64::from(m.agent_fds)),
    };
    let mut out = procfs::process_families("kata_agent", &texts, false);
    let status = procfs::status_items(&texts.status);
    let find = |key: &str| status.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut vm = Family::new(
        "kata_agent_total_vm",
        Kind::Gauge,
        "Agent process virtual memory, bytes.",
    );
    if let Some(v) = find("VmSize") {
        vm.sample("", &[], v);
    }
    let mut rss = Family::new(
        "kata_agent_total_rss",
        Kind::Gauge,
        "Agent process resident memory, bytes.",
    );
    if let Some(v) = find("VmRSS") {
        rss.sample("", &[], v);
    }
    let stat = procfs::stat_items(&texts.stat);
    let mut time = Family::new(
        "kata_agent_total_time",
        Kind::Gauge,
        "Agent process CPU time (utime + stime), clock ticks.",
    );
    if let [(_, u), (_, s), ..] = stat.as_slice() {
        time.sample("", &[], u + s);
    }
    let mut scrapes = Family::new(
        "kata_agent_scrape_count",
        Kind::Counter,
        "Metrics scrape count.",
    );
    scrapes.sample("", &[], m.scrapes as f64);
    out.extend([vm, rss, time, scrapes]);
    out
}

/// Most containers reported per scrape (a pod has a handful).
pub const MAX_CONTAINERS: usize = 64;

/// `kata_guest_container_*`: each container's guest cgroup figures (the
/// StatsContainer replies), by `container_id`. The ids are the host's own
/// (validated when the container was created), not the guest's.
pub fn containers(stats: &[(String, StatsContainerResponse)]) -> Vec<Family> {
    let mut cpu = Family::new(
        "kata_guest_container_cpu_usage_seconds_total",
        Kind::Counter,
        "CPU time of the container's guest cgroup.",
    );
    let mut mem = Family::new(
        "kata_guest_container_memory_usage_bytes",
        Kind::Gauge,
        "Memory use of the container's guest cgroup.",
    );
    let mut limit = Family::new(
        "kata_guest_container_memory_limit_bytes",
        Kind::Gauge,
        "Memory limit of the container's guest cgroup (absent when unlimited).",
    );
    let mut pids = Family::new(
        "kata_guest_container_pids",
        Kind::Gauge,
        "Tasks in the container's guest cgroup.",
    );
    for (id, s) in stats.iter().take(MAX_CONTAINERS) {
        let l = [("container_id", id.as_str())];
        if let Some(c) = s.cpu.as_ref() {
            cpu.sample("", &l, c.usage_usec as f64 / 1e6);
        }
        if let Some(m) = s.memory.as_ref() {
            mem.sample("", &l, m.usage as f64);
            // The guest writes u64::MAX (or anything past 2^62) for "max".
            if m.limit > 0 && m.limit < 1 << 62 {
                limit.sample("", &l, m.limit as f64);
            }
        }
        if let Some(p) = s.pids.as_ref() {
            pids.sample("", &l, p.current as f64);
        }
    }
    vec![cpu, mem, limit, pids]
}

/// Every guest and agent family of one reply.
pub fn families(m: &GuestMetrics) -> Vec<Family> {
    let mut out = agent(m);
    out.push(cpu_time(&m.stat));
    out.push(diskstat(&m.diskstats));
    out.extend(load(&m.loadavg, &m.threads_max));
    out.push(meminfo(&m.meminfo));
    out.push(procfs::netdev_family("kata_guest_netdev_stat", &m.netdev));
    out.push(vm_stat(&m.vmstat));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;

    fn reply() -> GuestMetrics {
        let mut m = GuestMetrics::new();
        m.meminfo = "MemTotal:        2030000 kB\nActive(anon):  10 kB\nHugePages_Total: 0\n\
            DirectMap4k: 5 kB\n"
            .into();
        m.loadavg = "0.50 0.25 0.10 2/87 345\n".into();
        m.stat = "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 10 0 5 100 1 0 0 0 0 0\nintr 5\n".into();
        m.vmstat = "nr_free_pages 400000\noom_kill 0\n".into();
        m.netdev = "h\nh\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n".into();
        m.diskstats = "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n".into();
        m.threads_max = "15000\n".into();
        m.agent_status =
            "Name:\tkata-agent\nThreads:\t4\nVmSize:\t 1000 kB\nVmRSS:\t 500 kB\n".into();
        m.agent_stat = "1 (kata-agent) S 0 1 1 0 -1 0 0 0 0 0 30 20 0 0 20 0 4".into();
        m.agent_io = "rchar: 7\nread_bytes: 8\n".into();
        m.agent_fds = 12;
        m.scrapes = 3;
        m
    }

    #[test]
    fn a_reply_gives_kata_families() {
        let text = render(&families(&reply()));
        for want in [
            "kata_guest_meminfo{item=\"mem_total\"} 2078720000\n",
            "kata_guest_meminfo{item=\"active_anon\"} 10240\n",
            "kata_guest_meminfo{item=\"huge_pages_total\"} 0\n",
            "kata_guest_meminfo{item=\"direct_map4k\"} 5120\n",
            "kata_guest_load{item=\"load1\"} 0.5\n",
            "kata_guest_tasks{item=\"cur\"} 87\n",
            "kata_guest_tasks{item=\"max\"} 15000\n",
            "kata_guest_cpu_time{cpu=\"total\",item=\"idle\"} 100\n",
            "kata_guest_cpu_time{cpu=\"0\",item=\"user\"} 10\n",
            "kata_guest_vm_stat{item=\"nr_free_pages\"} 400000\n",
            "kata_guest_netdev_stat{interface=\"eth0\",item=\"recv_bytes\"} 1\n",
            "kata_guest_diskstat{disk=\"loop0\",item=\"sectors_read\"} 2\n",
            "kata_agent_fds 12\n",
            "kata_agent_threads 4\n",
            "kata_agent_proc_status{item=\"vmrss\"} 512000\n",
            "kata_agent_proc_stat{item=\"utime\"} 30\n",
            "kata_agent_io_stat{item=\"read_bytes\"} 8\n",
            "kata_agent_total_vm 1024000\n",
            "kata_agent_total_rss 512000\n",
            "kata_agent_total_time 50\n",
            "kata_agent_scrape_count 3\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("intr"), "{text}");
    }

    #[test]
    fn a_hostile_reply_is_bounded_and_cannot_inject() {
        let mut m = GuestMetrics::new();
        let flood = |line: &dyn Fn(usize) -> String| (0..20_000).map(line).collect::<String>();
        m.meminfo = flood(&|i| format!("Key{i}: {i} kB\n"));
        m.vmstat = flood(&|i| format!("k{i} {i}\n"));
        m.stat = flood(&|i| format!("cpu{i} 1 2 3 4 5 6 7 8 9 10\n"));
        m.netdev = flood(&|i| format!("e{i}: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"));
        m.diskstats = flood(&|i| format!("1 2 d{i} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"));
        m.loadavg = "NaN inf -1 1/x 2".into();
        m.agent_status = "Threads:\t1} evil 1\nVmRSS:\t1e9 kB\n".into();
        m.agent_stat = "garbage".into();
        let injected = "MemTotal\"} 1\nevil_metric 1\n#: 2\n";
        m.meminfo.push_str(injected);
        let text = render(&families(&m));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(samples < 12_000, "{samples} samples");
        assert!(
            !text.contains("evil"),
            "nothing from the guest becomes a name"
        );
        assert!(!text.contains("NaN") && !text.contains("Inf"));
        assert!(!text.contains("kata_guest_load{"));
        // Every sample line is a known family with well-formed labels.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("kata_guest_") || line.starts_with("kata_agent_"),
                "{line}"
            );
            if let Some(labels) = line.split_once('{').map(|(_, r)| r) {
                let (labels, _) = labels.split_once('}').expect("closed");
                assert!(!labels.contains('\\'), "no escapes needed: {line}");
            }
        }
    }

    #[test]
    fn container_stats_are_labelled_by_the_hosts_id() {
        let mut s = StatsContainerResponse::new();
        let mut cpu = kata_agent_protocol::agent::CpuStats::new();
        cpu.usage_usec = 2_500_000;
        s.cpu = Some(cpu).into();
        let mut m = kata_agent_protocol::agent::MemoryStats::new();
        m.usage = 4096;
        m.limit = u64::MAX;
        s.memory = Some(m).into();
        let many: Vec<_> = (0..100).map(|i| (format!("c{i}"), s.clone())).collect();
        let text = render(&containers(&many));
        assert!(
            text.contains(
                "kata_guest_container_cpu_usage_seconds_total{container_id=\"c0\"} 2.5\n"
            )
        );
        assert!(
            text.contains("kata_guest_container_memory_usage_bytes{container_id=\"c1\"} 4096\n")
        );
        assert!(
            !text.contains("kata_guest_container_memory_limit_bytes"),
            "max is no limit"
        );
        assert!(!text.contains("\"c64\""), "bounded: {}", text.len());
    }

    #[test]
    fn keys_become_snake_case_words() {
        assert_eq!(snake_key("MemTotal").as_deref(), Some("mem_total"));
        assert_eq!(
            snake_key("Inactive(file)").as_deref(),
            Some("inactive_file")
        );
        assert_eq!(snake_key("SReclaimable").as_deref(), Some("sreclaimable"));
        assert_eq!(snake_key("Mem Total"), None);
        assert_eq!(snake_key("a\"b"), None);
        assert_eq!(snake_key(""), None);
    }
}
