//! Host memory of one idle kata pod, read from `/proc`: the guest's RAM
//! once, QEMU's own private memory, and the private memory of what we run
//! beside it (the shim, virtiofsd, vhost-device-vsock).
//!
//! Guest RAM is one shared memfd that QEMU and the vhost-user helpers all
//! map. A page of it that only one process has touched shows as that
//! process's Private memory, so every memfd mapping is left out of the
//! private figures and the guest is counted once, as the Rss of QEMU's
//! guest-RAM mapping.

use std::path::Path;

/// The memfd name QEMU's `memory-backend-memfd` gives guest RAM (the
/// object type, not its id); `/proc/<pid>/smaps` shows it as
/// `/memfd:memory-backend-memfd (deleted)`.
const GUEST_RAM_MEMFD: &str = "/memfd:memory-backend-memfd";
/// Any memfd: shared by design with a peer process (guest RAM, vhost-user
/// rings), so it belongs to no single process's private memory.
const MEMFD_PREFIX: &str = "/memfd:";
/// Per-sandbox sockets live below this directory (`kata_shim::layout::RUN_ROOT`);
/// the helpers get paths in `<RUN_ROOT>/<sandbox id>/` on their argv.
const RUN_ROOT: &str = "/run/kata";
const SHIM_NAME: &str = "containerd-shim-kata-v2";

/// Host memory of one pod, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodMemory {
    /// Guest RAM the guest has touched (resident in the memfd backend).
    pub guest_kib: u64,
    /// QEMU's private memory without guest RAM; under TCG this includes the
    /// translation cache.
    pub qemu_private_kib: u64,
    pub shim_kib: u64,
    /// 0 when the pod shares with 9p (no virtiofsd).
    pub virtiofsd_kib: u64,
    /// 0 with kernel vhost-vsock (no vhost-device-vsock).
    pub vsock_kib: u64,
}

impl PodMemory {
    /// What our own processes add beside QEMU: shim, virtiofsd, vsock.
    pub fn ours_kib(&self) -> u64 {
        self.shim_kib + self.virtiofsd_kib + self.vsock_kib
    }
}

/// Totals of one process's smaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Smaps {
    /// Rss of guest-RAM memfd mappings.
    guest_rss_kib: u64,
    /// Private_Clean + Private_Dirty of all mappings except memfds.
    private_kib: u64,
}

/// Parses the text of `/proc/<pid>/smaps`. Lines it does not understand are
/// skipped, so new kernel fields cannot break it.
fn parse_smaps(text: &str) -> Smaps {
    let mut total = Smaps::default();
    // Which kind of mapping the field lines that follow belong to.
    let (mut guest, mut memfd) = (false, false);
    for line in text.lines() {
        let line = line.trim_start();
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(key) = first.strip_suffix(':') {
            let kib = line[first.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok());
            match (key, kib) {
                ("Rss", Some(k)) if guest => total.guest_rss_kib += k,
                ("Private_Clean" | "Private_Dirty", Some(k)) if !memfd => total.private_kib += k,
                _ => {}
            }
        } else if let Some(path) = mapping_path(line) {
            guest = path.starts_with(GUEST_RAM_MEMFD);
            memfd = path.starts_with(MEMFD_PREFIX);
        }
    }
    total
}

/// The pathname of a mapping's header line, `start-end perms offset dev
/// inode [path]` (a path may contain spaces: `/memfd:x (deleted)`); `None`
/// when the line is no header.
fn mapping_path(line: &str) -> Option<&str> {
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    if !(hex(start) && hex(end)) {
        return None;
    }
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
    }
    Some(rest.trim())
}

fn read_smaps(pid: u32, what: &str) -> Result<Smaps, String> {
    let path = format!("/proc/{pid}/smaps");
    std::fs::read_to_string(&path)
        .map(|t| parse_smaps(&t))
        .map_err(|e| format!("{what} (pid {pid}): cannot read {path}: {e}"))
}

/// Every process with a command line (kernel threads have none).
fn processes() -> Result<Vec<(u32, Vec<String>)>, String> {
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process that ended since the listing is simply not there.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !argv.is_empty() {
            out.push((pid, argv));
        }
    }
    Ok(out)
}

fn file_name(p: &str) -> &str {
    Path::new(p)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
}

/// QEMU: `-name sandbox-<id>`, possibly followed by `,option=...`.
fn is_qemu(argv: &[String], name: &str) -> bool {
    argv.windows(2).any(|w| {
        w[0] == "-name"
            && w[1]
                .strip_prefix(name)
                .is_some_and(|r| r.is_empty() || r.starts_with(','))
    })
}

/// The shim daemon: `start` re-executes the binary as
/// `<argv0> -namespace <ns> -id <id> -address <addr> [-debug] serve`.
/// `start` and `delete` invocations carry `-id` too but never `serve`.
fn is_shim(pid: u32, argv: &[String], id: &str) -> bool {
    let serves = argv.iter().skip(1).any(|a| a == "serve")
        && argv.windows(2).any(|w| w[0] == "-id" && w[1] == id);
    if !serves {
        return false;
    }
    // argv0 is whatever the caller used; the exe link names the binary.
    let named = |n: &str| n.starts_with(SHIM_NAME);
    argv.first().is_some_and(|a| named(file_name(a)))
        || std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| named(file_name(&e.to_string_lossy())))
}

/// A helper binary whose argv names a path in the sandbox's state dir
/// (virtiofsd `--socket-path=`, vhost-device-vsock `--socket=`).
fn is_helper(argv: &[String], binary: &str, state_dir: &str) -> bool {
    argv.first().is_some_and(|a| file_name(a) == binary)
        && argv.iter().skip(1).any(|a| a.contains(state_dir))
}

/// Measures the pod of `sandbox_id` as it is now. virtiofsd runs as two
/// processes (a waiting parent and the sandboxed server), so every helper
/// and shim process that matches is summed.
pub fn pod_memory(sandbox_id: &str) -> Result<PodMemory, String> {
    let qemu_name = format!("sandbox-{sandbox_id}");
    let state_dir = format!("{RUN_ROOT}/{sandbox_id}/");
    let procs = processes()?;
    let sum = |what: &str, pred: &dyn Fn(u32, &[String]) -> bool| {
        let mut total = Smaps::default();
        let mut found = 0;
        for (pid, argv) in &procs {
            if pred(*pid, argv) {
                let s = read_smaps(*pid, what)?;
                total.guest_rss_kib += s.guest_rss_kib;
                total.private_kib += s.private_kib;
                found += 1;
            }
        }
        Ok::<_, String>((total, found))
    };
    let (qemu, n) = sum("qemu", &|_, a| is_qemu(a, &qemu_name))?;
    if n != 1 {
        return Err(format!("{n} QEMU processes with -name {qemu_name}, want 1"));
    }
    let (shim, n) = sum(SHIM_NAME, &|p, a| is_shim(p, a, sandbox_id))?;
    if n == 0 {
        return Err(format!(
            "no {SHIM_NAME} process serving sandbox {sandbox_id} (argv `-id {sandbox_id} ... serve`)"
        ));
    }
    let (fs, _) = sum("virtiofsd", &|_, a| is_helper(a, "virtiofsd", &state_dir))?;
    let (vsock, _) = sum("vhost-device-vsock", &|_, a| {
        is_helper(a, "vhost-device-vsock", &state_dir)
    })?;
    Ok(PodMemory {
        guest_kib: qemu.guest_rss_kib,
        qemu_private_kib: qemu.private_kib,
        shim_kib: shim.private_kib,
        virtiofsd_kib: fs.private_kib,
        vsock_kib: vsock.private_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00001000 fe:01 1234                       /usr/bin/qemu-system-x86_64
Rss:                 900 kB
Private_Clean:        10 kB
Private_Dirty:         5 kB
VmFlags: rd ex mr mw me dw sd
7f0000000000-7f0080000000 rw-s 00000000 00:01 99                         /memfd:memory-backend-memfd (deleted)
Rss:              300000 kB
Private_Clean:      1000 kB
Private_Dirty:    200000 kB
7f0100000000-7f0100001000 rw-s 00000000 00:01 100                        /memfd:vhost-inflight (deleted)
Rss:                   4 kB
Private_Dirty:         4 kB
7f0200000000-7f0204000000 rwxp 00000000 00:00 0
Rss:               40000 kB
Private_Clean:         0 kB
Private_Dirty:     40000 kB
THPeligible:    0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Private_Dirty:        12 kB
";

    #[test]
    fn memfd_is_guest_and_never_private() {
        let s = parse_smaps(FIXTURE);
        assert_eq!(s.guest_rss_kib, 300_000);
        assert_eq!(s.private_kib, 10 + 5 + 40_000 + 12);
    }

    #[test]
    fn paths_and_garbage() {
        assert_eq!(mapping_path("1-2 r--p 0 0:0 0"), Some(""));
        let memfd = "1-2 rw-s 0 0:1 9   /memfd:a b (deleted)";
        assert_eq!(mapping_path(memfd), Some("/memfd:a b (deleted)"));
        assert_eq!(mapping_path("Rss: 1 kB"), None);
        assert_eq!(mapping_path("x-1 r--p 0 0:0 0"), None);
        assert_eq!(parse_smaps("junk\n\nRss: x kB\n"), Smaps::default());
    }

    #[test]
    fn matchers() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_qemu(&v("qemu -name sandbox-a -uuid u"), "sandbox-a"));
        assert!(is_qemu(
            &v("qemu -name sandbox-a,debug-threads=on"),
            "sandbox-a"
        ));
        assert!(!is_qemu(&v("qemu -name sandbox-ab"), "sandbox-a"));
        let fs = v("/usr/local/bin/virtiofsd --socket-path=/run/kata/a/virtiofsd.sock");
        assert!(is_helper(&fs, "virtiofsd", "/run/kata/a/"));
        assert!(!is_helper(&fs, "virtiofsd", "/run/kata/ab/"));
        assert!(!is_helper(&fs, "vhost-device-vsock", "/run/kata/a/"));
        let shim = v("/usr/bin/containerd-shim-kata-v2 -namespace k8s.io -id a -address /x serve");
        assert!(is_shim(0, &shim, "a") && !is_shim(0, &shim, "b"));
        assert!(!is_shim(
            0,
            &v("/usr/bin/containerd-shim-kata-v2 -id a start"),
            "a"
        ));
    }
}
