//! Telling a VMM the host's OOM killer ended from one that died otherwise.
//!
//! The kernel counts every OOM kill of a task against the task's memory
//! cgroup (and its ancestors), whether the pod's limit or the whole host ran
//! out: `oom_kill` in `memory.events` (v2) or `memory.oom_control` (v1).
//! The shim reads that count in the pod's host cgroup before QEMU starts;
//! when QEMU or a helper then dies of SIGKILL and the count has risen, the
//! host killed it for memory, and the pod is reported OOM-killed instead of
//! as a silent 255.

use std::path::{Path, PathBuf};

/// `oom_kill` in the pod's host cgroup, read at boot and at death.
#[derive(Debug, Clone)]
pub struct OomCounter {
    file: PathBuf,
    baseline: u64,
}

impl OomCounter {
    /// The counter in the memory leaf of `dir` (v2: `memory.events`, v1:
    /// `memory.oom_control`), with its current value as the baseline.
    /// `None` when the file cannot be read (no memory controller there).
    pub fn open(dir: &Path, v2: bool) -> Option<OomCounter> {
        let file = dir.join(if v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        });
        let baseline = read_count(&file)?;
        Some(OomCounter { file, baseline })
    }

    /// OOM kills counted since the baseline; `None` when unreadable (the
    /// directory may already be gone).
    pub fn kills_since_baseline(&self) -> Option<u64> {
        read_count(&self.file).map(|now| now.saturating_sub(self.baseline))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

fn read_count(file: &Path) -> Option<u64> {
    parse_oom_kill(&std::fs::read_to_string(file).ok()?)
}

/// The `oom_kill N` line of `memory.events` or `memory.oom_control`.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// Why a VM process's death counts as an OOM kill by the host: it died of
/// SIGKILL (what the OOM killer sends) while the pod's host cgroup counted
/// at least one new OOM kill. Anything else (a clean exit, another signal,
/// a SIGKILL with no OOM kill counted, e.g. an operator's `kill -9`) is
/// not.
pub fn killed_for_memory(signal: Option<i32>, kills_since_boot: Option<u64>) -> Option<u64> {
    match (signal, kills_since_boot) {
        (Some(libc::SIGKILL), Some(n)) if n > 0 => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_either_cgroup_version() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v1), Some(3));
        assert_eq!(parse_oom_kill(v2), Some(2));
        // Older kernels have no counter at all.
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);
    }

    #[test]
    fn only_a_sigkill_with_a_new_oom_kill_is_the_hosts_oom() {
        let cases = [
            (Some(libc::SIGKILL), Some(1), Some(1)),
            (Some(libc::SIGKILL), Some(2), Some(2)),
            // kill -9 by someone: no OOM kill counted.
            (Some(libc::SIGKILL), Some(0), None),
            // The cgroup is gone or has no counter: not claimed.
            (Some(libc::SIGKILL), None, None),
            // A crash or a clean exit while a helper was OOM-killed.
            (Some(libc::SIGSEGV), Some(1), None),
            (None, Some(1), None),
        ];
        for (signal, kills, want) in cases {
            assert_eq!(
                killed_for_memory(signal, kills),
                want,
                "signal {signal:?}, kills {kills:?}"
            );
        }
    }

    #[test]
    fn the_counter_counts_from_its_baseline() {
        let dir = std::env::temp_dir().join(format!("oomc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n").expect("write");
        let c = OomCounter::open(&dir, false).expect("readable");
        assert_eq!(c.kills_since_baseline(), Some(0));
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n").expect("write");
        assert_eq!(c.kills_since_baseline(), Some(1));
        std::fs::remove_dir_all(&dir).expect("rm");
        assert_eq!(c.kills_since_baseline(), None);
        assert!(OomCounter::open(&dir, true).is_none());
    }
}
