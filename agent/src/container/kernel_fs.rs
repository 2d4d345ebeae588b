//! The check that a created container's /proc and /sys hold only the mounts
//! its spec puts there (a symlink swapped into the rootfs after the spec
//! check could otherwise redirect a mount onto them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::spec;
use crate::error::{AgentError, Result};

/// spec.rs refuses a mount destination that a symlink redirects into /proc
/// or /sys, but the rootfs may change between that check and
/// libcontainer's mounts (a concurrent writer flipping a directory into a
/// symlink). libcontainer resolves in the root, so such a mount can only
/// land on the container's own /proc or /sys, covering them (and the masked
/// and read-only paths with them). Check the outcome, race-free, on the
/// created init's mount table: under /proc and /sys there may be no more
/// mounts at a point than the spec's mounts, masked and read-only paths
/// put there.
pub(super) fn verify_kernel_fs_mounts(spec: &Spec, pid: i32) -> Result<()> {
    let path = format!("/proc/{pid}/mountinfo");
    let info = std::fs::read_to_string(&path).map_err(|e| AgentError::io("reading", &path, e))?;
    check_kernel_fs_mounts(spec, &info)
}

/// [`verify_kernel_fs_mounts`] on a mountinfo text.
fn check_kernel_fs_mounts(spec: &Spec, info: &str) -> Result<()> {
    let under = |p: &Path| spec::PROTECTED.iter().any(|k| p.starts_with(k));
    let mut allowed: HashMap<PathBuf, usize> = HashMap::new();
    for m in spec.mounts().iter().flatten() {
        if under(m.destination()) {
            *allowed.entry(m.destination().clone()).or_default() += 1;
        }
    }
    if let Some(l) = spec.linux() {
        for p in l
            .masked_paths()
            .iter()
            .flatten()
            .chain(l.readonly_paths().iter().flatten())
        {
            let p = Path::new(p);
            if under(p) {
                *allowed.entry(p.to_path_buf()).or_default() += 1;
            }
        }
    }
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    for mp in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        let mp = crate::mountinfo::path(mp);
        if under(&mp) {
            *seen.entry(mp).or_default() += 1;
        }
    }
    for (mp, n) in seen {
        let ok = allowed.get(&mp).copied().unwrap_or(0);
        if n > ok {
            return Err(AgentError::InvalidArgument {
                field: "mounts.destination",
                reason: format!(
                    "{n} mount(s) landed on {} in the rootfs where the spec puts {ok}: \
                     a destination was redirected there by a symlink",
                    mp.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/"},
            "root": {"path": "/rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
                {"destination": "/target", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {"maskedPaths": ["/proc/kcore", "/sys/firmware"], "readonlyPaths": ["/proc/sys"]}
        }))
        .expect("spec")
    }

    fn line(mp: &str, typ: &str) -> String {
        format!("1 2 0:1 / {mp} rw - {typ} {typ} rw\n")
    }

    #[test]
    fn kernel_fs_mounts_match_the_spec() {
        let ok: String = [
            ("/", "virtiofs"),
            ("/proc", "proc"),
            ("/sys", "sysfs"),
            ("/target", "tmpfs"),
            ("/proc/kcore", "tmpfs"),
            ("/proc/sys", "proc"),
            ("/sys/firmware", "tmpfs"),
        ]
        .iter()
        .map(|(m, t)| line(m, t))
        .collect();
        check_kernel_fs_mounts(&spec(), &ok).expect("as the spec says");

        // /target redirected after the check: its tmpfs covers /proc, or
        // something below /proc or /sys.
        for (mp, typ) in [
            ("/proc", "tmpfs"),
            ("/proc/sys/kernel", "tmpfs"),
            ("/sys", "tmpfs"),
        ] {
            let bad = format!("{ok}{}", line(mp, typ));
            let e = check_kernel_fs_mounts(&spec(), &bad).expect_err(mp);
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(e.to_string().contains(mp), "{e}");
        }
    }
}
