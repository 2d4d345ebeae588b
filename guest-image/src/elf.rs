//! Shared-library closure of an ELF executable: its `PT_INTERP` and the
//! transitive `DT_NEEDED` set, found in the standard library directories so
//! each can be packed at the same absolute path in the guest.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;
use thiserror::Error;

/// Where libraries are looked up, in order. The first hit is packed at that
/// path; every entry is also on glibc's built-in search list, so the guest
/// loader finds it without an `ld.so.cache`.
pub const SEARCH_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// ELF inspection failures.
#[derive(Debug, Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a parseable ELF object.
    #[error("{} is not a valid ELF file: {reason}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A `DT_NEEDED` library is in none of the search directories.
    #[error("{lib} (needed by {needed_by}) not found in {}", SEARCH_DIRS.join(", "))]
    NotFound {
        /// The soname.
        lib: String,
        /// Who needs it.
        needed_by: String,
    },
}

/// A file to pack: `guest` is the absolute in-guest path, `source` the host
/// file holding the bytes (after following symlinks on the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lib {
    /// Absolute guest path.
    pub guest: String,
    /// Host file to copy.
    pub source: PathBuf,
}

struct Info {
    interp: Option<String>,
    needed: Vec<String>,
    machine: u16,
    is_64: bool,
}

fn inspect(path: &Path) -> Result<Info, ElfError> {
    let bytes = fs::read(path).map_err(|source| ElfError::Io {
        path: path.into(),
        source,
    })?;
    let elf = Elf::parse(&bytes).map_err(|e| ElfError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(Info {
        interp: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        machine: elf.header.e_machine,
        is_64: elf.is_64,
    })
}

/// Finds a soname for the given ABI in `root`-prefixed search dirs.
fn find(root: &Path, soname: &str, machine: u16, is_64: bool) -> Option<(String, PathBuf)> {
    for dir in SEARCH_DIRS {
        let guest = format!("{dir}/{soname}");
        let host = root.join(guest.trim_start_matches('/'));
        if !host.is_file() {
            continue;
        }
        // Skip a same-named library for another ABI (e.g. a 32-bit one in
        // /usr/lib) so the guest loader is never handed a wrong-class file.
        match inspect(&host) {
            Ok(i) if i.machine == machine && i.is_64 == is_64 => return Some((guest, host)),
            _ => continue,
        }
    }
    None
}

/// Returns the interpreter and every library `binary` needs, transitively,
/// looked up under `root` (normally `/`). A static binary yields nothing.
pub fn closure(binary: &Path, root: &Path) -> Result<Vec<Lib>, ElfError> {
    let top = inspect(binary)?;
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    if let Some(interp) = &top.interp {
        let host = root.join(interp.trim_start_matches('/'));
        let host = fs::canonicalize(&host).map_err(|source| ElfError::Io { path: host, source })?;
        out.insert(interp.clone(), host);
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<(String, String)> = top
        .needed
        .iter()
        .map(|n| (n.clone(), binary.display().to_string()))
        .collect();
    // glibc's libc lists the loader as NEEDED; ld.so satisfies that by its
    // own soname, so packing a second copy under the lib dir is waste.
    if let Some(interp) = &top.interp {
        seen.insert(interp.rsplit('/').next().unwrap_or(interp).to_string());
    }
    while let Some((soname, needed_by)) = queue.pop_front() {
        if !seen.insert(soname.clone()) {
            continue;
        }
        let (guest, host) =
            find(root, &soname, top.machine, top.is_64).ok_or_else(|| ElfError::NotFound {
                lib: soname.clone(),
                needed_by,
            })?;
        let info = inspect(&host)?;
        queue.extend(info.needed.into_iter().map(|n| (n, soname.clone())));
        let real = fs::canonicalize(&host).map_err(|source| ElfError::Io { path: host, source })?;
        out.entry(guest).or_insert(real);
    }
    Ok(out
        .into_iter()
        .map(|(guest, source)| Lib { guest, source })
        .collect())
}

/// Whether the binary needs a dynamic loader.
pub fn is_dynamic(binary: &Path) -> Result<bool, ElfError> {
    Ok(inspect(binary)?.interp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binary_pulls_loader_and_libc() {
        let libs = closure(Path::new("/bin/true"), Path::new("/")).expect("closure");
        assert!(
            libs.iter()
                .any(|l| l.guest == "/lib64/ld-linux-x86-64.so.2"),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|l| l.guest.ends_with("/libc.so.6")),
            "{libs:?}"
        );
        for l in &libs {
            assert!(l.guest.starts_with('/'));
            assert!(l.source.is_file(), "{l:?}");
        }
        assert!(is_dynamic(Path::new("/bin/true")).expect("inspect"));
    }

    #[test]
    fn transitive_needed_is_followed() {
        // `ls` links libselinux, which itself needs libpcre2: a transitive dep.
        let libs = closure(Path::new("/bin/ls"), Path::new("/")).expect("closure");
        assert!(
            libs.iter().any(|l| l.guest.contains("libselinux")),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|l| l.guest.contains("libpcre2-8")),
            "{libs:?}"
        );
    }

    #[test]
    fn static_binary_needs_nothing() {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file() && !is_dynamic(p).expect("inspect busybox"));
        let busybox = busybox.expect("static busybox: apt-get install busybox-static");
        assert!(
            closure(busybox, Path::new("/"))
                .expect("closure")
                .is_empty()
        );
    }

    #[test]
    fn missing_library_and_non_elf_are_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let not_elf = tmp.path().join("script");
        fs::write(&not_elf, "#!/bin/sh\n").expect("write");
        assert!(matches!(
            closure(&not_elf, Path::new("/")),
            Err(ElfError::Parse { .. })
        ));
        // An empty root has no libraries at all, so libc cannot be found.
        let err = closure(Path::new("/bin/true"), tmp.path()).expect_err("no libs");
        assert!(
            matches!(err, ElfError::Io { .. } | ElfError::NotFound { .. }),
            "{err}"
        );
    }
}
