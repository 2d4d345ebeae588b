//! A container's cgroup v2 directory: processes, freezing, resources and
//! statistics, read and written directly from the cgroup files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_agent_protocol::agent::{
    CpuStats, HugetlbStats, IoEntry, MemoryStats, PidsStats, StatsContainerResponse,
};
use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};

/// Where cgroup v2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directory of `cgroups_path` (absolute, relative to the cgroup root).
pub fn dir_of(cgroups_path: &Path) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroups_path.strip_prefix("/").unwrap_or(cgroups_path))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| AgentError::io("reading", path, e))
}

/// Pids in `cgroup.procs`.
pub fn pids(dir: &Path) -> Result<Vec<i32>> {
    Ok(read(&dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Freezes or thaws the cgroup and waits (bounded) until the kernel says so.
pub async fn freeze(dir: &Path, frozen: bool) -> Result<()> {
    let f = dir.join("cgroup.freeze");
    std::fs::write(&f, if frozen { "1" } else { "0" })
        .map_err(|e| AgentError::io("writing", &f, e))?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    for _ in 0..100 {
        if read(&dir.join("cgroup.events"))?.lines().any(|l| l == want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(AgentError::Internal(format!(
        "{} did not reach `{want}`",
        dir.display()
    )))
}

/// Applies `resources` through libcgroups' v2 manager.
pub fn update(cgroups_path: &Path, resources: &LinuxResources) -> Result<()> {
    let mgr = libcgroups::v2::manager::Manager::new(
        PathBuf::from(CGROUP_ROOT),
        cgroups_path.to_path_buf(),
    )
    .map_err(|e| AgentError::Internal(format!("cgroup manager: {e}")))?;
    mgr.apply(&ControllerOpt {
        resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    })
    .map_err(|e| AgentError::Internal(format!("applying resources: {e}")))
}

/// `key value` lines into a map.
pub fn flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single value file; `max` and missing files are 0.
fn single(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `io.stat` lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
pub fn parse_io_stat(text: &str) -> Vec<IoEntry> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (maj, min) = it.next()?.split_once(':')?;
            let mut e = IoEntry::new();
            e.major = maj.parse().ok()?;
            e.minor = min.parse().ok()?;
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// Statistics of the cgroup at `dir`.
pub fn stats(dir: &Path) -> Result<StatsContainerResponse> {
    if !dir.is_dir() {
        return Err(AgentError::FailedPrecondition(format!(
            "cgroup {} does not exist",
            dir.display()
        )));
    }
    let mut resp = StatsContainerResponse::new();
    let cpu = flat_keyed(&std::fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default());
    let mut c = CpuStats::new();
    let g = |k: &str| cpu.get(k).copied().unwrap_or(0);
    c.usage_usec = g("usage_usec");
    c.user_usec = g("user_usec");
    c.system_usec = g("system_usec");
    c.nr_periods = g("nr_periods");
    c.nr_throttled = g("nr_throttled");
    c.throttled_usec = g("throttled_usec");
    resp.cpu = Some(c).into();

    let mut m = MemoryStats::new();
    m.usage = single(dir, "memory.current");
    m.limit = single(dir, "memory.max");
    m.swap_usage = single(dir, "memory.swap.current");
    m.swap_limit = single(dir, "memory.swap.max");
    m.stat = flat_keyed(&std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default());
    m.events = flat_keyed(&std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default());
    resp.memory = Some(m).into();

    let mut p = PidsStats::new();
    p.current = single(dir, "pids.current");
    p.limit = single(dir, "pids.max");
    resp.pids = Some(p).into();

    resp.io = parse_io_stat(&std::fs::read_to_string(dir.join("io.stat")).unwrap_or_default());

    // hugetlb.<size>.current / .max / .events (max count).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(size) = name
                .strip_prefix("hugetlb.")
                .and_then(|r| r.strip_suffix(".current"))
            else {
                continue;
            };
            let mut h = HugetlbStats::new();
            h.usage = single(dir, &name);
            h.max = single(dir, &format!("hugetlb.{size}.max"));
            h.failcnt = flat_keyed(
                &std::fs::read_to_string(dir.join(format!("hugetlb.{size}.events")))
                    .unwrap_or_default(),
            )
            .get("max")
            .copied()
            .unwrap_or(0);
            resp.hugetlb.insert(size.to_string(), h);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let m = flat_keyed("usage_usec 10\nuser_usec 7\nbogus\n");
        assert_eq!(m.get("usage_usec"), Some(&10));
        assert_eq!(m.len(), 2);
        let io = parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n");
        assert_eq!(io.len(), 1);
        assert_eq!((io[0].major, io[0].minor, io[0].wios), (8, 0, 4));
        assert_eq!(
            dir_of(Path::new("/kata/sb/c1")),
            Path::new("/sys/fs/cgroup/kata/sb/c1")
        );
    }

    #[test]
    fn stats_from_a_fake_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("cpu.stat"), "usage_usec 5\n").expect("w");
        std::fs::write(d.join("memory.current"), "4096\n").expect("w");
        std::fs::write(d.join("memory.max"), "max\n").expect("w");
        std::fs::write(d.join("memory.events"), "oom 1\noom_kill 2\n").expect("w");
        std::fs::write(d.join("hugetlb.2MB.current"), "0\n").expect("w");
        std::fs::write(d.join("cgroup.procs"), "1\n23\n").expect("w");
        let s = stats(d).expect("stats");
        assert_eq!(s.cpu.usage_usec, 5);
        assert_eq!(s.memory.usage, 4096);
        assert_eq!(s.memory.limit, 0, "max is unlimited");
        assert_eq!(s.memory.events.get("oom_kill"), Some(&2));
        assert!(s.hugetlb.contains_key("2MB"));
        assert_eq!(pids(d).expect("pids"), vec![1, 23]);
    }
}
