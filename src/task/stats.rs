//! The guest's cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`.
//!
//! The type URL is the bare proto name: CRI-O resolves it through the gogo
//! registry by full name and rejects a `type.googleapis.com/` prefix.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use kata_agent_protocol::agent::StatsContainerResponse;

pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Builds the Metrics message from what the agent read in the guest.
pub fn metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(p) = s.pids.as_ref() {
        m.pids = Some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        })
        .into();
    }
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = Some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = s.memory.as_ref() {
        let st = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        m.memory = Some(MemoryStat {
            anon: st("anon"),
            file: st("file"),
            kernel_stack: st("kernel_stack"),
            slab: st("slab"),
            sock: st("sock"),
            shmem: st("shmem"),
            file_mapped: st("file_mapped"),
            file_dirty: st("file_dirty"),
            file_writeback: st("file_writeback"),
            anon_thp: st("anon_thp"),
            inactive_anon: st("inactive_anon"),
            active_anon: st("active_anon"),
            inactive_file: st("inactive_file"),
            active_file: st("active_file"),
            unevictable: st("unevictable"),
            slab_reclaimable: st("slab_reclaimable"),
            slab_unreclaimable: st("slab_unreclaimable"),
            pgfault: st("pgfault"),
            pgmajfault: st("pgmajfault"),
            // Guest-reported: summed without overflow.
            workingset_refault: st("workingset_refault_anon")
                .saturating_add(st("workingset_refault_file")),
            workingset_activate: st("workingset_activate_anon")
                .saturating_add(st("workingset_activate_file")),
            workingset_nodereclaim: st("workingset_nodereclaim"),
            pgrefill: st("pgrefill"),
            pgscan: st("pgscan"),
            pgsteal: st("pgsteal"),
            pgactivate: st("pgactivate"),
            pgdeactivate: st("pgdeactivate"),
            pglazyfree: st("pglazyfree"),
            pglazyfreed: st("pglazyfreed"),
            thp_fault_alloc: st("thp_fault_alloc"),
            thp_collapse_alloc: st("thp_collapse_alloc"),
            usage: mem.usage,
            usage_limit: mem.limit,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            ..Default::default()
        })
        .into();
        let ev = |k: &str| mem.events.get(k).copied().unwrap_or(0);
        m.memory_events = Some(MemoryEvents {
            low: ev("low"),
            high: ev("high"),
            max: ev("max"),
            oom: ev("oom"),
            oom_kill: ev("oom_kill"),
            oom_group_kill: ev("oom_group_kill"),
            ..Default::default()
        })
        .into();
    }
    if !s.io.is_empty() {
        m.io = Some(IOStat {
            usage: s
                .io
                .iter()
                .map(|e| IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into();
    }
    let mut pages: Vec<_> = s.hugetlb.iter().collect();
    pages.sort_by(|a, b| a.0.cmp(b.0));
    m.hugetlb = pages
        .into_iter()
        .map(|(size, h)| HugeTlbStat {
            current: h.usage,
            max: h.max,
            pagesize: size.clone(),
            failcnt: h.failcnt,
            ..Default::default()
        })
        .collect();
    m
}

/// The Any for a Stats response.
pub fn metrics_any(s: &StatsContainerResponse) -> Result<Any, protobuf::Error> {
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE_URL.to_string();
    any.value = metrics(s).write_to_bytes()?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_agent_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn guest_stats_become_v2_metrics_with_the_bare_type_url() {
        let mut s = StatsContainerResponse::new();
        let mut mem = MemoryStats::new();
        mem.usage = 4096;
        mem.limit = 1 << 20;
        mem.stat.insert("anon".into(), 1000);
        mem.events.insert("oom_kill".into(), 1);
        s.memory = Some(mem).into();
        let mut cpu = CpuStats::new();
        cpu.usage_usec = 77;
        s.cpu = Some(cpu).into();
        let mut pids = PidsStats::new();
        pids.current = 3;
        pids.limit = 50;
        s.pids = Some(pids).into();
        let any = metrics_any(&s).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(back.memory.usage, 4096);
        assert_eq!(back.memory.usage_limit, 1 << 20);
        assert_eq!(back.memory.anon, 1000);
        assert_eq!(back.memory_events.oom_kill, 1);
        assert_eq!(back.cpu.usage_usec, 77);
        assert_eq!(back.pids.current, 3);
        assert_eq!(back.pids.limit, 50);
    }
}
