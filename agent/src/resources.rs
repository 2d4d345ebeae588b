//! OnlineCPUMem: the guest side of VM resizing. The host boots the VM with
//! every vCPU it may ever use present but only the boot count online
//! (`maxcpus=` on the kernel command line), and hot-adds memory as DIMMs;
//! this module brings the online vCPUs to the count the host asks for and
//! onlines any memory block the kernel left offline.
//!
//! Everything is read and written under an injectable sysfs/procfs root
//! ([`GuestPaths`]) so it can be tested against a fake tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kata_agent_protocol::agent::OnlineCPUMemResponse;

use crate::details::{GuestPaths, parse_cpu_list, parse_meminfo};
use crate::error::{AgentError, Result};

/// Most CPU directories looked at: QEMU's q35 limit is far below.
const MAX_CPUS: usize = 1024;
/// Most memory blocks looked at (128 MiB each: 4 TiB).
const MAX_MEMORY_BLOCKS: usize = 32_768;

/// Brings the online vCPUs to `vcpus` (0: unchanged), onlines every offline
/// memory block, and reports the result.
pub fn online_cpu_mem(paths: &GuestPaths, vcpus: u32) -> Result<OnlineCPUMemResponse> {
    let (present, cpus) = cpu_dirs(&paths.sys_root)?;
    if vcpus > present {
        return Err(AgentError::InvalidArgument {
            field: "vcpus",
            reason: format!("{vcpus} asked for, the guest has {present} vCPUs"),
        });
    }
    if vcpus > 0 {
        set_online_count(&cpus, vcpus)?;
    }
    let onlined = online_memory(&paths.sys_root)?;
    let online_text = read(&paths.sys_root.join("devices/system/cpu/online"))?;
    let online = parse_cpu_list(&online_text).map_err(|reason| AgentError::Parse {
        path: paths.sys_root.join("devices/system/cpu/online"),
        reason,
    })?;
    let meminfo_path = paths.proc_root.join("meminfo");
    let mem = parse_meminfo(&read(&meminfo_path)?).map_err(|reason| AgentError::Parse {
        path: meminfo_path,
        reason,
    })?;
    let mut resp = OnlineCPUMemResponse::new();
    resp.online_cpus = online;
    resp.present_cpus = present;
    resp.mem_total_kib = mem.total_kib;
    resp.memory_blocks_onlined = onlined;
    if vcpus > 0 && online != vcpus {
        return Err(AgentError::FailedPrecondition(format!(
            "{online} vCPUs online after asking for {vcpus}"
        )));
    }
    Ok(resp)
}

/// One hot-pluggable CPU: `cpuN` with an `online` file (CPU 0 has none
/// where it cannot be offlined, and is never touched here).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cpu {
    index: u32,
    online_file: PathBuf,
}

/// How many CPUs the guest has, and those other than CPU 0 that have an
/// `online` file, by index.
fn cpu_dirs(sys: &Path) -> Result<(u32, Vec<Cpu>)> {
    let dir = sys.join("devices/system/cpu");
    let entries = fs::read_dir(&dir).map_err(|e| AgentError::io("listing", &dir, e))?;
    let mut cpus = Vec::new();
    let mut present: u32 = 0;
    for entry in entries.take(MAX_CPUS + 64) {
        let entry = entry.map_err(|e| AgentError::io("listing", &dir, e))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        present += 1;
        let online_file = entry.path().join("online");
        if index == 0 || !online_file.exists() {
            continue;
        }
        cpus.push(Cpu { index, online_file });
    }
    cpus.sort_by_key(|c| c.index);
    cpus.truncate(MAX_CPUS);
    Ok((present, cpus))
}

/// Onlines the lowest offline CPUs or offlines the highest online ones
/// until `want` CPUs (counting CPU 0) are online.
fn set_online_count(cpus: &[Cpu], want: u32) -> Result<()> {
    let mut states = Vec::with_capacity(cpus.len());
    for c in cpus {
        states.push(read(&c.online_file)?.trim() == "1");
    }
    let mut online = 1 + u32::try_from(states.iter().filter(|&&s| s).count()).unwrap_or(0);
    if online < want {
        for (c, _) in cpus.iter().zip(&states).filter(|(_, s)| !**s) {
            if online == want {
                break;
            }
            write(&c.online_file, "1")?;
            tracing::info!(cpu = c.index, "vCPU onlined");
            online += 1;
        }
    } else {
        for (c, _) in cpus.iter().zip(&states).rev().filter(|(_, s)| **s) {
            if online == want {
                break;
            }
            write(&c.online_file, "0")?;
            tracing::info!(cpu = c.index, "vCPU offlined");
            online -= 1;
        }
    }
    Ok(())
}

/// Onlines every offline memory block as movable, so that it can be
/// offlined again when the host unplugs its DIMM; falls back to the
/// kernel's choice of zone where movable is refused. Returns how many
/// blocks it onlined.
fn online_memory(sys: &Path) -> Result<u32> {
    let dir = sys.join("devices/system/memory");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        // A kernel without memory hotplug has no such directory.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(AgentError::io("listing", &dir, e)),
    };
    let mut onlined = 0;
    for entry in entries.take(MAX_MEMORY_BLOCKS) {
        let entry = entry.map_err(|e| AgentError::io("listing", &dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with("memory") {
            continue;
        }
        let state = entry.path().join("state");
        let Ok(text) = fs::read_to_string(&state) else {
            continue;
        };
        if text.trim() != "offline" {
            continue;
        }
        let wrote = write(&state, "online_movable").or_else(|_| write(&state, "online"));
        if let Err(e) = wrote {
            // The kernel onlines new blocks itself (memhp_default_state), and
            // a write to a block it onlined since the read above fails with
            // EINVAL: only a block that is still offline is a failure.
            match fs::read_to_string(&state) {
                Ok(now) if now.trim() != "offline" => continue,
                _ => return Err(e),
            }
        }
        tracing::info!(block = %entry.file_name().to_string_lossy(), "memory block onlined");
        onlined += 1;
    }
    Ok(onlined)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| AgentError::io("reading", path, e))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| AgentError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tree with `n` CPUs (the first `online` of them online) and
    /// memory blocks in the given states.
    fn tree(n: u32, online: u32, blocks: &[&str]) -> (tempfile::TempDir, GuestPaths) {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = d.path().join("sys");
        let proc = d.path().join("proc");
        for i in 0..n {
            let c = sys.join(format!("devices/system/cpu/cpu{i}"));
            fs::create_dir_all(&c).expect("mkdir");
            if i > 0 {
                let v = if i < online { "1\n" } else { "0\n" };
                fs::write(c.join("online"), v).expect("write");
            }
        }
        fs::create_dir_all(sys.join("devices/system/cpu/cpufreq")).expect("mkdir");
        for (i, s) in blocks.iter().enumerate() {
            let b = sys.join(format!("devices/system/memory/memory{i}"));
            fs::create_dir_all(&b).expect("mkdir");
            fs::write(b.join("state"), format!("{s}\n")).expect("write");
        }
        fs::create_dir_all(&proc).expect("mkdir");
        fs::write(
            proc.join("meminfo"),
            "MemTotal: 3000000 kB\nMemAvailable: 2000000 kB\n",
        )
        .expect("write");
        let paths = GuestPaths {
            proc_root: proc,
            sys_root: sys,
            share_mount: d.path().join("share"),
        };
        (d, paths)
    }

    fn online_flags(paths: &GuestPaths, n: u32) -> Vec<String> {
        (1..n)
            .map(|i| {
                fs::read_to_string(
                    paths
                        .sys_root
                        .join(format!("devices/system/cpu/cpu{i}/online")),
                )
                .expect("read")
                .trim()
                .to_string()
            })
            .collect()
    }

    fn set_online_list(paths: &GuestPaths, list: &str) {
        fs::write(paths.sys_root.join("devices/system/cpu/online"), list).expect("write");
    }

    #[test]
    fn onlines_lowest_and_offlines_highest() {
        let (_d, paths) = tree(4, 1, &[]);
        set_online_list(&paths, "0-2\n");
        let r = online_cpu_mem(&paths, 3).expect("grow");
        assert_eq!(online_flags(&paths, 4), ["1", "1", "0"]);
        assert_eq!((r.online_cpus, r.present_cpus), (3, 4));
        set_online_list(&paths, "0-1\n");
        online_cpu_mem(&paths, 2).expect("shrink");
        assert_eq!(online_flags(&paths, 4), ["1", "0", "0"]);
    }

    #[test]
    fn refuses_more_than_present_and_reports_a_short_count() {
        let (_d, paths) = tree(2, 1, &[]);
        set_online_list(&paths, "0\n");
        let e = online_cpu_mem(&paths, 3).expect_err("only 2 present");
        assert!(e.to_string().contains("vcpus"), "{e}");
        // The fake kernel keeps one CPU online whatever is written.
        let e = online_cpu_mem(&paths, 2).expect_err("count did not change");
        assert!(e.to_string().contains("1 vCPUs online"), "{e}");
    }

    #[test]
    fn onlines_offline_memory_blocks_only() {
        let (_d, paths) = tree(1, 1, &["online", "offline", "offline"]);
        set_online_list(&paths, "0\n");
        let r = online_cpu_mem(&paths, 0).expect("memory only");
        assert_eq!(r.memory_blocks_onlined, 2);
        assert_eq!(r.mem_total_kib, 3_000_000);
        let state = fs::read_to_string(paths.sys_root.join("devices/system/memory/memory1/state"))
            .expect("read");
        assert_eq!(state, "online_movable");
    }
}
