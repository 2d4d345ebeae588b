//! `GetMetrics`: the guest's procfs texts that the shim turns into Kata's
//! `kata_guest_*` and `kata_agent_*` metric families.
//!
//! The agent only reads and cuts: each file is returned raw, at most
//! [`FILE_MAX`] bytes, and the host parses it with its own bounded parsers
//! (it trusts nothing from the guest). Parsing here as well would only add
//! a second copy of the same code to keep in step.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use kata_agent_protocol::agent::GuestMetrics;

/// Longest text returned for one file: /proc/stat of a 256-vCPU guest is
/// about 30 KiB, everything else is smaller.
pub const FILE_MAX: u64 = 64 << 10;

/// Most entries of /proc/self/fd counted.
const FDS_MAX: usize = 1 << 16;

/// GetMetrics calls answered (the `kata_agent_scrape_count` counter).
static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// At most [`FILE_MAX`] bytes of `path`, lossily decoded; empty when the
/// file cannot be read (a kernel without it, e.g. no block device for
/// diskstats, leaves that family out rather than failing the scrape).
fn read_capped(path: &Path) -> String {
    let mut buf = Vec::new();
    match std::fs::File::open(path).and_then(|f| f.take(FILE_MAX).read_to_end(&mut buf)) {
        Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read for metrics");
            String::new()
        }
    }
}

/// Open descriptors of the agent, counted up to [`FDS_MAX`].
fn count_fds(proc_root: &Path) -> u32 {
    match std::fs::read_dir(proc_root.join("self/fd")) {
        Ok(dir) => dir.take(FDS_MAX).count() as u32,
        Err(_) => 0,
    }
}

/// Reads every file of the reply below `proc_root` (`/proc` in the guest;
/// a fixture directory in tests). Blocking: run it off the async workers.
pub fn collect(proc_root: &Path) -> GuestMetrics {
    let read = |rel: &str| read_capped(&proc_root.join(rel));
    let mut m = GuestMetrics::new();
    m.meminfo = read("meminfo");
    m.loadavg = read("loadavg");
    m.stat = read("stat");
    m.vmstat = read("vmstat");
    m.netdev = read("net/dev");
    m.diskstats = read("diskstats");
    m.threads_max = read("sys/kernel/threads-max");
    m.agent_status = read("self/status");
    m.agent_stat = read("self/stat");
    m.agent_io = read("self/io");
    m.agent_fds = count_fds(proc_root);
    m.scrapes = SCRAPES.fetch_add(1, Ordering::Relaxed) + 1;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_cut_and_missing_ones_left_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("self/fd")).expect("mkdir");
        std::fs::write(root.join("meminfo"), "MemTotal: 2000 kB\n").expect("write");
        std::fs::write(root.join("stat"), "x".repeat(FILE_MAX as usize + 100)).expect("write");
        std::fs::write(root.join("self/fd/0"), "").expect("write");
        std::fs::write(root.join("self/fd/1"), "").expect("write");
        let first = collect(root);
        assert_eq!(first.meminfo, "MemTotal: 2000 kB\n");
        assert_eq!(first.stat.len(), FILE_MAX as usize, "a long file is cut");
        assert_eq!(first.diskstats, "", "a missing file is empty");
        assert_eq!(first.agent_fds, 2);
        let second = collect(root);
        assert!(second.scrapes > first.scrapes, "every call is counted");
    }

    #[test]
    fn the_real_procfs_answers() {
        let m = collect(Path::new("/proc"));
        assert!(m.meminfo.contains("MemTotal:"), "{}", m.meminfo);
        assert!(m.agent_status.contains("Threads:"), "{}", m.agent_status);
        assert!(m.agent_fds > 0);
    }
}
