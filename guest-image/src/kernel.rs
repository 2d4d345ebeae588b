//! Kernel discovery: which installed kernel the guest boots (the running one
//! when its image and modules are on disk, else the newest complete one),
//! where its image, modules and `.config` live, and release ordering.

use std::cmp::Ordering;
use std::fs;
use std::path::PathBuf;

use thiserror::Error;

/// The apt command that installs a kernel this builder can use.
pub const INSTALL_HINT: &str = "apt-get install -t bookworm-backports linux-image-amd64";

/// Where installed kernels live. Injectable so tests use temp trees.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Usually `/lib/modules`.
    pub modules_dir: PathBuf,
    /// Usually `/boot`.
    pub boot_dir: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            modules_dir: "/lib/modules".into(),
            boot_dir: "/boot".into(),
        }
    }
}

/// A kernel that has everything the guest needs on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r` style release.
    pub release: String,
    /// The bootable image (`vmlinuz`).
    pub image: PathBuf,
    /// `<modules_dir>/<release>`.
    pub modules_dir: PathBuf,
}

/// The chosen kernel plus, when it is not the running one, why.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The kernel to use.
    pub kernel: Kernel,
    /// Set when falling back from the running kernel.
    pub warning: Option<String>,
}

/// Discovery failures. Every message says what is missing and how to fix it.
#[derive(Debug, Error)]
pub enum KernelError {
    /// Nothing usable at all.
    #[error(
        "no usable kernel: the running kernel {running} {reason}, and no other kernel under {} has modules.dep and an image (in <release>/vmlinuz or {}/vmlinuz-<release>); install one with `{INSTALL_HINT}`",
        .modules_dir.display(), .boot_dir.display()
    )]
    NoneFound {
        /// The running release.
        running: String,
        /// Why the running kernel is unusable.
        reason: String,
        /// The modules root searched.
        modules_dir: PathBuf,
        /// The boot dir searched.
        boot_dir: PathBuf,
    },
    /// `--kernel-release` names a kernel that is incomplete.
    #[error(
        "kernel {release} {reason}; install it (e.g. `{INSTALL_HINT}`) or pick another --kernel-release"
    )]
    Forced {
        /// The requested release.
        release: String,
        /// What is missing.
        reason: String,
    },
    /// No `.config` to decide the initrd codec from.
    #[error("kernel {release} has no config (looked for {} and {}); reinstall the kernel package (`{INSTALL_HINT}`)", .paths[0].display(), .paths[1].display())]
    NoConfig {
        /// The release.
        release: String,
        /// Paths tried, in order.
        paths: [PathBuf; 2],
    },
    /// Reading a file failed.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads the running kernel release like `uname -r`.
pub fn running_release() -> Result<String, KernelError> {
    let path = PathBuf::from("/proc/sys/kernel/osrelease");
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| KernelError::Io { path, source })
}

/// Orders kernel releases: digit runs compare numerically, everything else
/// bytewise, so `6.12.10 > 6.12.9` and `6.12.9-2 > 6.12.9-1`.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// Checks one release; `Err` carries a human reason for what is missing.
fn probe(roots: &Roots, release: &str) -> Result<Kernel, String> {
    let modules_dir = roots.modules_dir.join(release);
    let candidates = [
        modules_dir.join("vmlinuz"),
        roots.boot_dir.join(format!("vmlinuz-{release}")),
    ];
    let image = candidates.iter().find(|p| p.is_file()).cloned();
    let has_dep = modules_dir.join("modules.dep").is_file();
    match (image, has_dep) {
        (Some(image), true) => Ok(Kernel {
            release: release.to_string(),
            image,
            modules_dir,
        }),
        (None, _) => Err(format!(
            "has no kernel image ({} or {})",
            candidates[0].display(),
            candidates[1].display()
        )),
        (Some(_), false) => Err(format!(
            "has no modules ({} missing)",
            modules_dir.join("modules.dep").display()
        )),
    }
}

/// Picks the kernel: `forced` if given, else the running one, else the newest
/// complete installed kernel with a warning naming both releases.
pub fn discover(
    roots: &Roots,
    running: &str,
    forced: Option<&str>,
) -> Result<Discovery, KernelError> {
    if let Some(release) = forced {
        return probe(roots, release)
            .map(|kernel| Discovery {
                kernel,
                warning: None,
            })
            .map_err(|reason| KernelError::Forced {
                release: release.to_string(),
                reason,
            });
    }
    let reason = match probe(roots, running) {
        Ok(kernel) => {
            return Ok(Discovery {
                kernel,
                warning: None,
            });
        }
        Err(reason) => reason,
    };
    let mut best: Option<Kernel> = None;
    if let Ok(dir) = fs::read_dir(&roots.modules_dir) {
        for entry in dir.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name == running {
                continue;
            }
            if let Ok(k) = probe(roots, &name) {
                if best
                    .as_ref()
                    .is_none_or(|b| compare_releases(&k.release, &b.release).is_gt())
                {
                    best = Some(k);
                }
            }
        }
    }
    match best {
        Some(kernel) => {
            let warning = format!(
                "running kernel {running} {reason}; using installed kernel {} instead (the guest will boot {} rather than the host's {running})",
                kernel.release, kernel.release
            );
            Ok(Discovery {
                kernel,
                warning: Some(warning),
            })
        }
        None => Err(KernelError::NoneFound {
            running: running.to_string(),
            reason,
            modules_dir: roots.modules_dir.clone(),
            boot_dir: roots.boot_dir.clone(),
        }),
    }
}

/// Reads the kernel's `.config`: `<modules>/config`, then `<boot>/config-<release>`.
pub fn read_config(roots: &Roots, kernel: &Kernel) -> Result<String, KernelError> {
    let paths = [
        kernel.modules_dir.join("config"),
        roots.boot_dir.join(format!("config-{}", kernel.release)),
    ];
    for p in &paths {
        match fs::read_to_string(p) {
            Ok(text) => return Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(KernelError::Io {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    Err(KernelError::NoConfig {
        release: kernel.release.clone(),
        paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(roots: &Roots, release: &str, image_in_modules: bool, with_dep: bool) {
        let m = roots.modules_dir.join(release);
        fs::create_dir_all(&m).expect("mkdir modules");
        if with_dep {
            fs::write(m.join("modules.dep"), "").expect("write dep");
        }
        if image_in_modules {
            fs::write(m.join("vmlinuz"), "img").expect("write image");
        } else {
            fs::create_dir_all(&roots.boot_dir).expect("mkdir boot");
            fs::write(roots.boot_dir.join(format!("vmlinuz-{release}")), "img").expect("image");
        }
    }

    fn roots(tmp: &tempfile::TempDir) -> Roots {
        Roots {
            modules_dir: tmp.path().join("lib/modules"),
            boot_dir: tmp.path().join("boot"),
        }
    }

    #[test]
    fn release_ordering_is_numeric() {
        assert_eq!(compare_releases("6.12.10", "6.12.9"), Ordering::Greater);
        assert_eq!(
            compare_releases("6.12.9+deb12-amd64", "6.12.10+deb12-amd64"),
            Ordering::Less
        );
        assert_eq!(
            compare_releases("6.1.0-27-amd64", "6.1.0-3-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_releases("6.12.0", "6.12.0"), Ordering::Equal);
        assert_eq!(compare_releases("6.12", "6.12.1"), Ordering::Less);
        assert_eq!(compare_releases("10.0", "9.99"), Ordering::Greater);
        let mut v = vec!["6.12.10", "6.1.0", "6.12.9", "6.2.0", "5.19.17"];
        v.sort_by(|a, b| compare_releases(a, b));
        assert_eq!(v, ["5.19.17", "6.1.0", "6.2.0", "6.12.9", "6.12.10"]);
    }

    #[test]
    fn running_kernel_wins_when_complete() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        install(&r, "6.1.0", true, true);
        install(&r, "6.12.10", false, true);
        let d = discover(&r, "6.1.0", None).expect("discover");
        assert_eq!(d.kernel.release, "6.1.0");
        assert_eq!(d.kernel.image, r.modules_dir.join("6.1.0/vmlinuz"));
        assert!(d.warning.is_none());
    }

    #[test]
    fn falls_back_to_newest_complete_kernel_with_warning() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        install(&r, "6.12.9", false, true);
        install(&r, "6.12.10", false, true);
        install(&r, "6.13.0", false, false); // image but no modules.dep
        fs::create_dir_all(r.modules_dir.join("7.0.0")).expect("dir without image");
        fs::write(r.modules_dir.join("7.0.0/modules.dep"), "").expect("dep");
        let d = discover(&r, "6.18.44-fc", None).expect("discover");
        assert_eq!(d.kernel.release, "6.12.10");
        assert_eq!(d.kernel.image, r.boot_dir.join("vmlinuz-6.12.10"));
        let w = d.warning.expect("warning");
        assert!(w.contains("6.18.44-fc") && w.contains("6.12.10"), "{w}");
        assert!(w.contains("no kernel image"), "{w}");
    }

    #[test]
    fn running_kernel_without_modules_falls_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        install(&r, "6.18.0", false, false);
        install(&r, "6.12.1", true, true);
        let d = discover(&r, "6.18.0", None).expect("discover");
        assert_eq!(d.kernel.release, "6.12.1");
        assert!(d.warning.expect("warning").contains("no modules"));
    }

    #[test]
    fn no_kernel_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        let err = discover(&r, "6.18.44", None)
            .expect_err("no kernel")
            .to_string();
        assert!(err.contains("6.18.44"), "{err}");
        assert!(err.contains(INSTALL_HINT), "{err}");
        assert!(err.contains("vmlinuz"), "{err}");
    }

    #[test]
    fn forced_release_must_be_complete() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        install(&r, "6.1.0", true, true);
        install(&r, "6.12.10", true, true);
        let d = discover(&r, "6.12.10", Some("6.1.0")).expect("forced");
        assert_eq!(d.kernel.release, "6.1.0");
        let err = discover(&r, "6.12.10", Some("5.0"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("5.0") && err.contains(INSTALL_HINT), "{err}");
    }

    #[test]
    fn config_lookup_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = roots(&tmp);
        install(&r, "6.1.0", false, true);
        let k = discover(&r, "6.1.0", None).expect("discover").kernel;
        let err = read_config(&r, &k).expect_err("no config").to_string();
        assert!(err.contains("config-6.1.0"), "{err}");
        fs::write(r.boot_dir.join("config-6.1.0"), "CONFIG_RD_GZIP=y\n").expect("boot config");
        assert!(read_config(&r, &k).expect("boot").contains("GZIP"));
        fs::write(k.modules_dir.join("config"), "CONFIG_RD_ZSTD=y\n").expect("mod config");
        assert!(read_config(&r, &k).expect("modules").contains("ZSTD"));
    }
}
