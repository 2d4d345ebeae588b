//! Guest details: what `GetGuestDetails` reports about the running guest.
//!
//! Everything is read from procfs/sysfs under injectable roots
//! ([`GuestPaths`]) so the collection can be tested against fake trees. The
//! parsers (CPU list, meminfo, mountinfo, uptime) are pure functions, and the
//! share probe is validated and looked up here without following symlinks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kata_agent_protocol::agent::{GuestDetailsResponse, SharedFsStatus};
use kata_agent_protocol::guest::{SHARED_FS_MOUNT, SHARED_FS_PROBE_MAX};
use kata_agent_protocol::{AGENT_VERSION, PROTOCOL_VERSION};

use crate::error::{AgentError, Result};

/// Longest file name the probe may have (NAME_MAX).
const PROBE_NAME_MAX: usize = 255;
/// Request field validated by [`validate_probe_name`].
const PROBE_FIELD: &str = "shared_fs_probe";

/// Where the guest's procfs, sysfs and share are; real paths by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPaths {
    /// procfs root, normally `/proc`.
    pub proc_root: PathBuf,
    /// sysfs root, normally `/sys`.
    pub sys_root: PathBuf,
    /// Mount point of the sandbox share.
    pub share_mount: PathBuf,
}

impl Default for GuestPaths {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            share_mount: PathBuf::from(SHARED_FS_MOUNT),
        }
    }
}

impl GuestPaths {
    fn proc(&self, rel: &str) -> PathBuf {
        self.proc_root.join(rel)
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.sys_root.join(rel)
    }

    /// The kernel release (as `uname -r`), from `<proc>/sys/kernel/osrelease`.
    pub fn kernel_release(&self) -> Result<String> {
        Ok(read_text(&self.proc("sys/kernel/osrelease"))?
            .trim()
            .to_string())
    }

    /// The kernel command line, trimmed.
    pub fn kernel_cmdline(&self) -> Result<String> {
        Ok(read_text(&self.proc("cmdline"))?.trim().to_string())
    }

    /// The mount at the share mount point, if any (the topmost one).
    pub fn share_mount_entry(&self) -> Result<Option<MountEntry>> {
        let path = self.proc("self/mountinfo");
        let text = read_text(&path)?;
        let entries = parse_mountinfo(&text).map_err(|r| AgentError::parse(&path, r))?;
        let want = self.share_mount.to_string_lossy();
        Ok(entries.into_iter().rev().find(|m| m.mount_point == want))
    }
}

/// One line of `/proc/self/mountinfo`, the fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point, unescaped.
    pub mount_point: String,
    /// Filesystem type, e.g. `virtiofs`.
    pub fstype: String,
    /// Mount source, e.g. the virtio-fs tag.
    pub source: String,
}

/// Collects the details of the running guest; `probe` is the request's
/// `shared_fs_probe` (empty = no probe). Blocking: run it off the runtime.
pub fn collect(paths: &GuestPaths, probe: &str) -> Result<GuestDetailsResponse> {
    validate_probe_name(probe)?;

    let mut d = GuestDetailsResponse::new();
    d.agent_version = AGENT_VERSION.to_string();
    d.protocol_version = PROTOCOL_VERSION;
    d.kernel_release = paths.kernel_release()?;
    d.kernel_cmdline = paths.kernel_cmdline()?;

    let uptime_path = paths.proc("uptime");
    d.uptime_seconds =
        parse_uptime(&read_text(&uptime_path)?).map_err(|r| AgentError::parse(&uptime_path, r))?;

    let cpu_path = paths.sys("devices/system/cpu/online");
    d.online_cpus =
        parse_cpu_list(&read_text(&cpu_path)?).map_err(|r| AgentError::parse(&cpu_path, r))?;

    let mem_path = paths.proc("meminfo");
    let mem = parse_meminfo(&read_text(&mem_path)?).map_err(|r| AgentError::parse(&mem_path, r))?;
    d.mem_total_kib = mem.total_kib;
    d.mem_available_kib = mem.available_kib;

    let mut fs = SharedFsStatus::new();
    if let Some(m) = paths.share_mount_entry()? {
        fs.fstype = m.fstype;
        fs.mount_point = m.mount_point;
        if !probe.is_empty() {
            if let Some(content) = read_probe(&paths.share_mount, probe)? {
                fs.probe_found = true;
                fs.probe_content = content;
            }
        }
    }
    d.shared_fs = Some(fs).into();
    Ok(d)
}

/// Checks that `name` is empty or a plain file name: no `/`, not `.` or
/// `..`, no NUL, at most 255 bytes.
pub fn validate_probe_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        return Ok(());
    } else if name.len() > PROBE_NAME_MAX {
        format!("longer than {PROBE_NAME_MAX} bytes")
    } else if name.contains('/') {
        "must be a plain file name without '/'".to_string()
    } else if name == "." || name == ".." {
        format!("{name:?} is not a file name")
    } else if name.contains('\0') {
        "contains a NUL byte".to_string()
    } else {
        return Ok(());
    };
    Err(AgentError::InvalidArgument {
        field: PROBE_FIELD,
        reason,
    })
}

/// Reads at most [`SHARED_FS_PROBE_MAX`] bytes of the regular file `name` in
/// `dir`, without following a symlink. `None` if there is no such regular file.
pub fn read_probe(dir: &Path, name: &str) -> Result<Option<String>> {
    validate_probe_name(name)?;
    let path = dir.join(name);
    // O_NOFOLLOW: a symlink fails with ELOOP; O_NONBLOCK: a FIFO does not hang.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if is_absent(&e) => {
            tracing::debug!(path = %path.display(), error = %e, "probe not found");
            return Ok(None);
        }
        Err(e) => return Err(AgentError::io("opening probe", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| AgentError::io("inspecting probe", &path, e))?;
    if !meta.is_file() {
        tracing::debug!(path = %path.display(), "probe is not a regular file");
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(SHARED_FS_PROBE_MAX);
    file.take(SHARED_FS_PROBE_MAX as u64)
        .read_to_end(&mut buf)
        .map_err(|e| AgentError::io("reading probe", &path, e))?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::ENXIO)
    )
}

fn read_text(path: &Path) -> Result<String> {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| AgentError::io("reading", path, e))?;
    Ok(s)
}

/// Counts the CPUs in a kernel CPU list such as `0-1,3` (→ 3).
pub fn parse_cpu_list(text: &str) -> std::result::Result<u32, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty CPU list".into());
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let part = part.trim();
        let n = match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a
                    .parse()
                    .map_err(|_| format!("bad CPU number in {part:?}"))?;
                let b: u32 = b
                    .parse()
                    .map_err(|_| format!("bad CPU number in {part:?}"))?;
                if b < a {
                    return Err(format!("descending CPU range {part:?}"));
                }
                b - a + 1
            }
            None => {
                part.parse::<u32>()
                    .map_err(|_| format!("bad CPU number {part:?}"))?;
                1
            }
        };
        count = count
            .checked_add(n)
            .ok_or_else(|| "CPU count overflows".to_string())?;
    }
    Ok(count)
}

/// Memory figures from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_kib: u64,
    /// `MemAvailable`.
    pub available_kib: u64,
}

/// Extracts `MemTotal` and `MemAvailable` from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> std::result::Result<MemInfo, String> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value: u64 = words
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad value in {line:?}"))?;
        match words.next() {
            Some("kB") | None => {}
            Some(unit) => return Err(format!("unexpected unit {unit:?} in {line:?}")),
        }
        *slot = Some(value);
    }
    Ok(MemInfo {
        total_kib: total.ok_or("no MemTotal line")?,
        available_kib: available.ok_or("no MemAvailable line")?,
    })
}

/// The first field of `/proc/uptime`: seconds since boot.
pub fn parse_uptime(text: &str) -> std::result::Result<f64, String> {
    let first = text.split_whitespace().next().ok_or("empty")?;
    let v: f64 = first.parse().map_err(|_| format!("bad uptime {first:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad uptime {first:?}"));
    }
    Ok(v)
}

/// Parses `/proc/<pid>/mountinfo`; errors name the offending line.
pub fn parse_mountinfo(text: &str) -> std::result::Result<Vec<MountEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| format!("no separator in mountinfo line {line:?}"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(format!("short mountinfo line {line:?}"));
        }
        out.push(MountEntry {
            mount_point: crate::mountinfo::text(fields[4]),
            fstype: crate::mountinfo::text(fields[sep + 1]),
            source: crate::mountinfo::text(fields[sep + 2]),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn cpu_lists() {
        let ok: &[(&str, u32)] = &[
            ("0\n", 1),
            ("0-1", 2),
            ("0-1,3", 3),
            ("0,2,4-7\n", 6),
            ("5-5", 1),
        ];
        for (s, n) in ok {
            assert_eq!(parse_cpu_list(s), Ok(*n), "{s:?}");
        }
        for bad in ["", "\n", "a", "1-", "-1", "3-1", "0,,1", "0-1-2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:        2030592 kB\nMemFree:         1800000 kB\n\
                    MemAvailable:    1900123 kB\nBuffers:               0 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse_meminfo(text),
            Ok(MemInfo {
                total_kib: 2_030_592,
                available_kib: 1_900_123
            })
        );
        assert!(parse_meminfo("MemTotal: 5 kB\n").is_err());
        assert!(parse_meminfo("MemAvailable: 5 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
        assert!(parse_meminfo("MemTotal: 1 MB\nMemAvailable: 1 kB").is_err());
        assert!(parse_meminfo("").is_err());
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("12.50 3.00\n"), Ok(12.5));
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("abc 1").is_err());
        assert!(parse_uptime("-1 1").is_err());
        assert!(parse_uptime("NaN 1").is_err());
    }

    #[test]
    fn mountinfo() {
        let text = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
30 22 0:25 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
41 30 0:40 / /run/kata-containers/shared/containers rw,nodev,relatime - virtiofs kataShared rw
42 30 0:41 / /mnt/with\\040space rw shared:1 master:2 - 9p kataShared rw,trans=virtio
";
        let m = parse_mountinfo(text).expect("valid mountinfo");
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            MountEntry {
                mount_point: "/run/kata-containers/shared/containers".into(),
                fstype: "virtiofs".into(),
                source: "kataShared".into(),
            }
        );
        assert_eq!(m[3].mount_point, "/mnt/with space");
        assert_eq!(m[3].fstype, "9p");
        assert!(parse_mountinfo("").expect("empty is fine").is_empty());
        assert!(parse_mountinfo("1 2 3 4 5 6").is_err());
        assert!(parse_mountinfo("1 2 0:1 / /x rw - tmpfs").is_err());
    }

    #[test]
    fn probe_names() {
        for ok in [
            "",
            "probe",
            "probe.txt",
            ".hidden",
            "..a",
            "a b",
            &"x".repeat(255),
        ] {
            assert!(validate_probe_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "/",
            "a/b",
            "/etc/passwd",
            ".",
            "..",
            "a\0b",
            &"x".repeat(256),
        ] {
            match validate_probe_name(bad) {
                Err(AgentError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "shared_fs_probe")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn probe_lookup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("small"), "hello").expect("write");
        fs::write(d.join("big"), vec![b'a'; 1000]).expect("write");
        fs::write(d.join("bin"), [0xff, 0xfe, b'o', b'k']).expect("write");
        fs::create_dir(d.join("subdir")).expect("mkdir");
        std::os::unix::fs::symlink(d.join("small"), d.join("link")).expect("symlink");

        assert_eq!(read_probe(d, "small").expect("ok"), Some("hello".into()));
        let big = read_probe(d, "big").expect("ok").expect("found");
        assert_eq!(big.len(), SHARED_FS_PROBE_MAX);
        assert_eq!(
            read_probe(d, "bin").expect("ok"),
            Some("\u{fffd}\u{fffd}ok".into())
        );
        assert_eq!(read_probe(d, "missing").expect("ok"), None);
        assert_eq!(
            read_probe(d, "link").expect("ok"),
            None,
            "symlink not followed"
        );
        assert_eq!(read_probe(d, "subdir").expect("ok"), None, "directory");
        assert!(read_probe(d, "../etc").is_err());
    }

    /// A fake proc/sys tree whose mountinfo mounts a temp dir as the share.
    #[test]
    fn collect_from_fake_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        let proc_root = root.path().join("proc");
        let sys_root = root.path().join("sys");
        let share = root.path().join("share");
        for d in [
            proc_root.join("sys/kernel"),
            proc_root.join("self"),
            sys_root.join("devices/system/cpu"),
            share.clone(),
        ] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let w = |p: PathBuf, s: &str| fs::write(p, s).expect("write");
        w(proc_root.join("sys/kernel/osrelease"), "6.12.0-test\n");
        w(proc_root.join("cmdline"), "console=hvc0 agent.log=debug\n");
        w(proc_root.join("uptime"), "3.25 1.00\n");
        w(
            proc_root.join("meminfo"),
            "MemTotal: 2048 kB\nMemAvailable: 1024 kB\n",
        );
        w(sys_root.join("devices/system/cpu/online"), "0-1,3\n");
        w(
            proc_root.join("self/mountinfo"),
            &format!(
                "1 0 0:1 / / rw - rootfs rootfs rw\n41 1 0:40 / {} rw,nodev - virtiofs kataShared rw\n",
                share.display()
            ),
        );
        w(share.join("probe"), "it works");

        let paths = GuestPaths {
            proc_root,
            sys_root,
            share_mount: share.clone(),
        };
        let d = collect(&paths, "probe").expect("collect");
        assert_eq!(d.agent_version, AGENT_VERSION);
        assert_eq!(d.protocol_version, PROTOCOL_VERSION);
        assert_eq!(d.kernel_release, "6.12.0-test");
        assert_eq!(d.kernel_cmdline, "console=hvc0 agent.log=debug");
        assert_eq!(d.uptime_seconds, 3.25);
        assert_eq!(d.online_cpus, 3);
        assert_eq!((d.mem_total_kib, d.mem_available_kib), (2048, 1024));
        assert_eq!(d.shared_fs.fstype, "virtiofs");
        assert_eq!(d.shared_fs.mount_point, share.to_string_lossy());
        assert!(d.shared_fs.probe_found);
        assert_eq!(d.shared_fs.probe_content, "it works");

        let d = collect(&paths, "absent").expect("collect");
        assert!(!d.shared_fs.probe_found);
        assert_eq!(d.shared_fs.fstype, "virtiofs");

        assert!(matches!(
            collect(&paths, "../x"),
            Err(AgentError::InvalidArgument { .. })
        ));

        // Without the share mount nothing is reported, probe or not.
        let unshared = GuestPaths {
            share_mount: root.path().join("elsewhere"),
            ..paths
        };
        let d = collect(&unshared, "probe").expect("collect");
        assert_eq!(d.shared_fs.fstype, "");
        assert_eq!(d.shared_fs.mount_point, "");
        assert!(!d.shared_fs.probe_found);
    }
}
