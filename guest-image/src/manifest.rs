//! The image manifest: what went into an initrd, the combined inputs hash
//! that decides whether a rebuild is needed, and the up-to-date check.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::compress::Compression;

/// Bump when the manifest layout or the initrd layout changes meaning, so
/// images written by an older builder are rebuilt.
pub const FORMAT_VERSION: u32 = 1;

/// This builder's version; part of the inputs hash.
pub const BUILDER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Manifest I/O failures.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Reading or hashing a file failed.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON for this schema.
    #[error("parsing manifest {}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// Serializing failed (should not happen for this plain data).
    #[error("serializing manifest: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One packed module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    /// Canonical module name.
    pub name: String,
    /// Absolute path of the plain `.ko` in the guest.
    pub guest_path: String,
    /// Host file it came from (possibly compressed).
    pub source_path: PathBuf,
    /// sha256 of the host file.
    pub source_sha256: String,
}

/// One packed shared library (or the dynamic loader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibEntry {
    /// Absolute path in the guest.
    pub guest_path: String,
    /// Host file it came from, symlinks resolved.
    pub source_path: PathBuf,
    /// sha256 of the host file.
    pub sha256: String,
}

/// Facts about the finished initrd. Absent from the copy embedded in the
/// initrd itself, which cannot contain its own hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdInfo {
    /// Where it was installed.
    pub path: PathBuf,
    /// sha256 of the compressed file.
    pub sha256: String,
    /// Size of the compressed file in bytes.
    pub size: u64,
    /// Wall time of the build in milliseconds.
    pub build_duration_ms: u64,
    /// Build time, RFC 3339 UTC.
    pub build_timestamp: String,
}

/// Everything recorded about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Kernel release the image was built for.
    pub kernel_release: String,
    /// Kernel image path on the host.
    pub kernel_path: PathBuf,
    /// sha256 of the kernel image.
    pub kernel_sha256: String,
    /// Agent binary path on the host.
    pub agent_path: PathBuf,
    /// sha256 of the agent binary.
    pub agent_sha256: String,
    /// `kata-agent --version`, or `unknown`.
    pub agent_version: String,
    /// [`BUILDER_VERSION`] of the writer.
    pub builder_version: String,
    /// Initrd codec.
    pub compression: Compression,
    /// Modules the builder asked for.
    pub required_modules: Vec<String>,
    /// Optional modules the builder asked for.
    pub optional_modules: Vec<String>,
    /// Requested modules satisfied by the kernel itself.
    pub builtin_modules: Vec<String>,
    /// Packed modules in load order.
    pub modules: Vec<ModuleEntry>,
    /// Packed libraries.
    pub libs: Vec<LibEntry>,
    /// `--debug` images only: the busybox packed as `/bin/busybox` (with
    /// `/bin/sh` linked to it) for the agent's debug console. Absent in
    /// the default, shell-free image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_shell: Option<LibEntry>,
    /// sha256 over every input, see [`inputs_hash`].
    pub inputs_hash: String,
    /// The built initrd; `None` in the embedded copy.
    pub initrd: Option<InitrdInfo>,
}

/// Lower-case hex sha256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams a file through sha256 (kernels and agents can be large).
pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The combined hash over every input of a build, computed from a manifest
/// whose `inputs_hash` and `initrd` are ignored. Paths and digests of the
/// kernel, agent, each module source and each library, the module request
/// lists, the codec, and the builder and format versions all feed it, each
/// field length-prefixed so no two different input sets collide by
/// concatenation.
pub fn inputs_hash(m: &Manifest) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put("kata-guest-image inputs");
    put(&m.format_version.to_string());
    put(&m.builder_version);
    put(&m.kernel_release);
    put(&m.kernel_path.to_string_lossy());
    put(&m.kernel_sha256);
    put(&m.agent_sha256);
    put(&m.agent_version);
    put(&m.compression.to_string());
    for list in [&m.required_modules, &m.optional_modules, &m.builtin_modules] {
        put(&list.len().to_string());
        for n in list {
            put(n);
        }
    }
    put(&m.modules.len().to_string());
    for e in &m.modules {
        put(&e.name);
        put(&e.guest_path);
        put(&e.source_sha256);
    }
    put(&m.libs.len().to_string());
    for l in &m.libs {
        put(&l.guest_path);
        put(&l.sha256);
    }
    // Only when present, so default images keep their hash.
    if let Some(b) = &m.debug_shell {
        put("debug shell");
        put(&b.guest_path);
        put(&b.sha256);
    }
    hex(&h.finalize())
}

/// Reads a manifest; `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<Manifest>, ManifestError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ManifestError::Parse {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ManifestError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_json(m: &Manifest) -> Result<Vec<u8>, ManifestError> {
    let mut v = serde_json::to_vec_pretty(m)?;
    v.push(b'\n');
    Ok(v)
}

/// Why an installed image is stale, or `None` when it can be reused.
/// `symlinks_ok` is checked by the caller, who knows the output layout.
pub fn staleness(
    existing: Option<&Manifest>,
    wanted_inputs_hash: &str,
    initrd_path: &Path,
    symlinks_ok: bool,
) -> Option<String> {
    let Some(m) = existing else {
        return Some("no manifest".into());
    };
    if m.inputs_hash != wanted_inputs_hash {
        return Some("inputs changed (kernel, agent, modules, libraries or builder)".into());
    }
    let Some(info) = &m.initrd else {
        return Some("manifest records no initrd".into());
    };
    match fs::metadata(initrd_path) {
        Ok(md) if md.len() == info.size => {}
        Ok(_) => return Some("initrd size differs from manifest".into()),
        Err(_) => return Some(format!("{} missing", initrd_path.display())),
    }
    match sha256_file(initrd_path) {
        Ok(sum) if sum == info.sha256 => {}
        _ => return Some("initrd sha256 differs from manifest".into()),
    }
    if !symlinks_ok {
        return Some("symlinks do not point at this image".into());
    }
    None
}

/// RFC 3339 UTC timestamp for a Unix time (no external time crate needed).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let mut m = Manifest {
            format_version: FORMAT_VERSION,
            kernel_release: "6.12.9".into(),
            kernel_path: "/boot/vmlinuz-6.12.9".into(),
            kernel_sha256: sha256_hex(b"kernel"),
            agent_path: "/usr/libexec/kata-containers/kata-agent".into(),
            agent_sha256: sha256_hex(b"agent"),
            agent_version: "0.1.0".into(),
            builder_version: BUILDER_VERSION.into(),
            compression: Compression::Zstd,
            required_modules: vec!["overlay".into()],
            optional_modules: vec!["virtio_rng".into()],
            builtin_modules: vec![],
            modules: vec![ModuleEntry {
                name: "overlay".into(),
                guest_path: "/lib/modules/6.12.9/kernel/fs/overlayfs/overlay.ko".into(),
                source_path: "/lib/modules/6.12.9/kernel/fs/overlayfs/overlay.ko.xz".into(),
                source_sha256: sha256_hex(b"overlay"),
            }],
            libs: vec![LibEntry {
                guest_path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                source_path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                sha256: sha256_hex(b"libc"),
            }],
            debug_shell: None,
            inputs_hash: String::new(),
            initrd: None,
        };
        m.inputs_hash = inputs_hash(&m);
        m
    }

    #[test]
    fn serde_round_trip() {
        let mut m = sample();
        m.initrd = Some(InitrdInfo {
            path: "/out/6.12.9/kata.initrd".into(),
            sha256: sha256_hex(b"x"),
            size: 1,
            build_duration_ms: 420,
            build_timestamp: rfc3339(0),
        });
        let json = to_json(&m).expect("json");
        let back: Manifest = serde_json::from_slice(&json).expect("parse");
        assert_eq!(back, m);
        let text = String::from_utf8(json).expect("utf8");
        assert!(text.contains("\"compression\": \"zstd\""), "{text}");
    }

    #[test]
    fn inputs_hash_covers_every_input() {
        let base = sample();
        let h = inputs_hash(&base);
        assert_eq!(h.len(), 64);
        let variants: Vec<fn(&mut Manifest)> = vec![
            |m| m.kernel_sha256 = sha256_hex(b"k2"),
            |m| m.agent_sha256 = sha256_hex(b"a2"),
            |m| m.builder_version = "9.9.9".into(),
            |m| m.modules[0].source_sha256 = sha256_hex(b"o2"),
            |m| m.libs[0].sha256 = sha256_hex(b"l2"),
            |m| {
                m.debug_shell = Some(LibEntry {
                    guest_path: "/bin/busybox".into(),
                    source_path: "/bin/busybox".into(),
                    sha256: sha256_hex(b"bb"),
                })
            },
            |m| m.required_modules.push("virtio_blk".into()),
            |m| m.compression = Compression::Gzip,
            |m| m.kernel_release = "6.12.10".into(),
        ];
        for change in variants {
            let mut m = base.clone();
            change(&mut m);
            assert_ne!(inputs_hash(&m), h);
        }
        // Outputs do not feed the inputs hash.
        let mut m = base.clone();
        m.initrd = Some(InitrdInfo {
            path: "/x".into(),
            sha256: String::new(),
            size: 0,
            build_duration_ms: 1,
            build_timestamp: String::new(),
        });
        m.inputs_hash = "zz".into();
        assert_eq!(inputs_hash(&m), h);
    }

    #[test]
    fn up_to_date_decision() {
        let tmp = tempfile::tempdir().expect("tmp");
        let initrd = tmp.path().join("kata.initrd");
        fs::write(&initrd, b"image").expect("write");
        let mut m = sample();
        m.initrd = Some(InitrdInfo {
            path: initrd.clone(),
            sha256: sha256_hex(b"image"),
            size: 5,
            build_duration_ms: 1,
            build_timestamp: rfc3339(1),
        });
        let want = m.inputs_hash.clone();
        assert_eq!(staleness(Some(&m), &want, &initrd, true), None);
        assert!(staleness(None, &want, &initrd, true).is_some());
        assert!(
            staleness(Some(&m), "other", &initrd, true)
                .expect("stale")
                .contains("inputs")
        );
        assert!(
            staleness(Some(&m), &want, &initrd, false)
                .expect("stale")
                .contains("symlinks")
        );
        fs::write(&initrd, b"imagf").expect("same size, other bytes");
        assert!(
            staleness(Some(&m), &want, &initrd, true)
                .expect("stale")
                .contains("sha256")
        );
        fs::write(&initrd, b"img").expect("truncate");
        assert!(
            staleness(Some(&m), &want, &initrd, true)
                .expect("stale")
                .contains("size")
        );
        fs::remove_file(&initrd).expect("rm");
        assert!(
            staleness(Some(&m), &want, &initrd, true)
                .expect("stale")
                .contains("missing")
        );
        let mut no_initrd = m.clone();
        no_initrd.initrd = None;
        assert!(staleness(Some(&no_initrd), &want, &initrd, true).is_some());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn reading_missing_and_corrupt_manifests() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("manifest.json");
        assert!(read(&p).expect("missing is fine").is_none());
        fs::write(&p, "{not json").expect("write");
        assert!(matches!(read(&p), Err(ManifestError::Parse { .. })));
    }
}
