//! Crash-safe installation into the output directory: the builder lock,
//! write-temp-fsync-rename for files, temp-symlink-rename for links, and
//! cleanup of temp files left behind by a killed build.
//!
//! Every replacement is a single `rename(2)` inside one directory, so at any
//! instant readers see either the complete old file or the complete new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Prefix of every temp entry this crate creates next to its outputs.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Name of the lock file in the output directory.
pub const LOCK_FILE: &str = ".lock";

/// An I/O failure with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", .path.display())]
pub struct InstallError {
    /// What was being done.
    pub what: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Holds the output directory's `flock` until dropped.
pub struct Lock {
    _flock: Flock<File>,
}

/// Takes the output directory lock, blocking until other builders finish.
/// Shared for read-only checks, exclusive for builds.
pub fn lock(dir: &Path, exclusive: bool) -> Result<Lock, InstallError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(&path)
        .map_err(err("opening lock", &path))?;
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    let flock = Flock::lock(file, arg).map_err(|(_, errno)| InstallError {
        what: "locking",
        path,
        source: errno.into(),
    })?;
    Ok(Lock { _flock: flock })
}

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{name}-{}", std::process::id()))
}

/// fsyncs a directory so a completed rename survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing directory", dir))
}

/// Atomically replaces `dir/name` with `data`.
pub fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, InstallError> {
    let tmp = temp_path(dir, name);
    // A stale temp with our pid can only come from a killed earlier process.
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(InstallError {
            what: "writing",
            path: tmp,
            source: e,
        });
    }
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(err("renaming into place", &dest))?;
    sync_dir(dir)?;
    Ok(dest)
}

/// Atomically points `dir/name` at `target` (which may be relative).
pub fn replace_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), InstallError> {
    let link = dir.join(name);
    if fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = temp_path(dir, name);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(err("creating symlink", &tmp))?;
    fs::rename(&tmp, &link).map_err(err("renaming symlink into place", &link))?;
    sync_dir(dir)
}

/// Removes temp entries in `dir` whose name starts with `prefix`. Only call
/// while holding the lock: a concurrent builder's temps would vanish.
pub fn remove_temps(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => {
            return Err(InstallError {
                what: "listing",
                path: dir.into(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let p = entry.path();
            fs::remove_file(&p).map_err(err("removing stale temp", &p))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Removes build temps in the output dir and each per-kernel subdirectory.
pub fn clean_output_temps(out: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = remove_temps(out, TEMP_PREFIX)?;
    if let Ok(entries) = fs::read_dir(out) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                removed.extend(remove_temps(&entry.path(), TEMP_PREFIX)?);
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_and_clean() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        write_file(d, "f", b"one", 0o644).expect("write");
        write_file(d, "f", b"two", 0o644).expect("replace");
        assert_eq!(fs::read(d.join("f")).expect("read"), b"two");
        replace_symlink(d, "l", Path::new("f")).expect("link");
        replace_symlink(d, "l", Path::new("g")).expect("relink");
        assert_eq!(
            fs::read_link(d.join("l")).expect("readlink"),
            Path::new("g")
        );

        fs::create_dir(d.join("6.1")).expect("mkdir");
        fs::write(d.join("6.1/.tmp-kata.initrd-123"), b"half").expect("stale");
        fs::write(d.join(".tmp-kata.initrd-9"), b"").expect("stale link tmp");
        let removed = clean_output_temps(d).expect("clean");
        assert_eq!(removed.len(), 2);
        assert!(d.join("f").exists() && d.join("6.1").is_dir());
        let left: Vec<_> = fs::read_dir(d)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.iter()
                .all(|n| !n.to_string_lossy().starts_with(TEMP_PREFIX)),
            "{left:?}"
        );
    }

    #[test]
    fn lock_excludes_a_second_exclusive_holder() {
        let tmp = tempfile::tempdir().expect("tmp");
        let held = lock(tmp.path(), true).expect("lock");
        let f = File::open(tmp.path().join(LOCK_FILE)).expect("open");
        let second = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(
            second.is_err(),
            "second exclusive lock must fail while held"
        );
        drop(held);
        let f = File::open(tmp.path().join(LOCK_FILE)).expect("open");
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
