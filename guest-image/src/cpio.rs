//! The initramfs container format: a newc (`070701`) cpio writer, an
//! in-memory tree that orders entries the way the kernel's unpacker needs,
//! and a strict reader used to verify what was written.
//!
//! The kernel unpacker (`init/initramfs.c`) never creates missing parent
//! directories, so [`Tree`] adds every parent explicitly and emits paths in
//! sorted order (a parent sorts before anything below it). All metadata that
//! would make the archive depend on the build host (mtimes, owners, inode
//! numbers) is fixed, so the same inputs give byte-identical archives.

use std::collections::BTreeMap;
use std::io::{self, Write};

use thiserror::Error;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its full contents.
    File(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One archive member. `path` is relative (no leading `/`), as the kernel
/// expects; `mode` holds permission bits only (the type comes from `kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading slash.
    pub path: String,
    /// Permission bits (e.g. `0o755`).
    pub mode: u32,
    /// Type and payload.
    pub kind: Kind,
}

/// Errors from reading a newc archive.
#[derive(Debug, Error)]
pub enum CpioError {
    /// The archive ended in the middle of a header, name or body.
    #[error("cpio archive truncated at offset {0}")]
    Truncated(usize),
    /// A header did not start with the newc magic.
    #[error("bad cpio magic at offset {0}")]
    BadMagic(usize),
    /// A header field was not 8 hex digits.
    #[error("bad cpio header field at offset {0}")]
    BadField(usize),
    /// A name was not NUL-terminated UTF-8.
    #[error("bad cpio entry name at offset {0}")]
    BadName(usize),
    /// A file type this crate never writes.
    #[error("unsupported cpio file type {mode:o} for {path}")]
    UnsupportedType {
        /// The entry path.
        path: String,
        /// The full mode field.
        mode: u32,
    },
    /// No `TRAILER!!!` entry before the data ran out.
    #[error("cpio archive has no TRAILER!!! entry")]
    NoTrailer,
    /// Writing the archive failed.
    #[error("writing cpio archive: {0}")]
    Io(#[from] io::Error),
    /// A member exceeds the 4 GiB newc limit.
    #[error("cpio member {0} is too large for the newc format")]
    TooLarge(String),
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Streams newc records to a writer.
pub struct Writer<W: Write> {
    out: W,
    offset: usize,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = pad4(self.offset);
        self.put(&[0u8; 3][..n])
    }

    fn record(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        body: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(body.len()).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        let namesize =
            u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check. uid/gid/mtime are zero so the
        // archive is reproducible and owned by root in the guest.
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(body)?;
        self.pad()?;
        Ok(())
    }

    /// Appends one entry.
    pub fn write_entry(&mut self, entry: &Entry) -> Result<(), CpioError> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let perm = entry.mode & 0o7777;
        match &entry.kind {
            Kind::Dir => self.record(&entry.path, ino, S_IFDIR | perm, 2, (0, 0), &[]),
            Kind::File(data) => self.record(&entry.path, ino, S_IFREG | perm, 1, (0, 0), data),
            Kind::Symlink(target) => self.record(
                &entry.path,
                ino,
                S_IFLNK | perm,
                1,
                (0, 0),
                target.as_bytes(),
            ),
            Kind::CharDev { major, minor } => {
                self.record(&entry.path, ino, S_IFCHR | perm, 1, (*major, *minor), &[])
            }
        }
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.record(TRAILER, 0, 0, 1, (0, 0), &[])?;
        // The kernel accepts any length, but padding the archive to 512 bytes
        // matches what cpio(1) produces and keeps concatenation safe.
        let n = (512 - self.offset % 512) % 512;
        let zeros = vec![0u8; n];
        self.put(&zeros)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A set of archive members keyed by path, with implicit parent directories.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut acc = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            self.entries.entry(acc.clone()).or_insert_with(|| Entry {
                path: acc.clone(),
                mode: 0o755,
                kind: Kind::Dir,
            });
        }
    }

    /// Adds (or replaces) an entry at an absolute or relative guest path.
    pub fn insert(&mut self, path: &str, mode: u32, kind: Kind) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        self.add_parents(&path);
        self.entries
            .insert(path.clone(), Entry { path, mode, kind });
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, mode, Kind::Dir);
    }

    /// Adds a regular file (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, mode, Kind::File(data));
    }

    /// Whether a path is already present.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    /// Entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Serializes the tree as a complete newc archive.
    pub fn to_archive(&self) -> Result<Vec<u8>, CpioError> {
        let size: usize = self
            .entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(d) => d.len() + e.path.len() + HEADER_LEN + 8,
                _ => e.path.len() + HEADER_LEN + 8,
            })
            .sum();
        let mut w = Writer::new(Vec::with_capacity(size + 1024));
        for e in self.entries.values() {
            w.write_entry(e)?;
        }
        w.finish()
    }
}

fn field(data: &[u8], at: usize, idx: usize) -> Result<u32, CpioError> {
    let start = at + 6 + idx * 8;
    let raw = data
        .get(start..start + 8)
        .ok_or(CpioError::Truncated(start))?;
    let s = std::str::from_utf8(raw).map_err(|_| CpioError::BadField(start))?;
    u32::from_str_radix(s, 16).map_err(|_| CpioError::BadField(start))
}

/// Parses a complete newc archive, checking magic, alignment and the trailer.
pub fn read_archive(data: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let header = data
            .get(at..at + HEADER_LEN)
            .ok_or(CpioError::Truncated(at))?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadMagic(at));
        }
        let mode = field(data, at, 1)?;
        let filesize = field(data, at, 6)? as usize;
        let rmajor = field(data, at, 9)?;
        let rminor = field(data, at, 10)?;
        let namesize = field(data, at, 11)? as usize;
        let name_at = at + HEADER_LEN;
        let name_raw = data
            .get(name_at..name_at + namesize)
            .ok_or(CpioError::Truncated(name_at))?;
        let (last, name_bytes) = name_raw.split_last().ok_or(CpioError::BadName(name_at))?;
        if *last != 0 {
            return Err(CpioError::BadName(name_at));
        }
        let name = std::str::from_utf8(name_bytes).map_err(|_| CpioError::BadName(name_at))?;
        let mut body_at = name_at + namesize;
        body_at += pad4(body_at);
        if name == TRAILER {
            return Ok(entries);
        }
        let body = data
            .get(body_at..body_at + filesize)
            .ok_or(CpioError::Truncated(body_at))?;
        let kind = match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(body.to_vec()),
            S_IFLNK => Kind::Symlink(
                String::from_utf8(body.to_vec()).map_err(|_| CpioError::BadName(body_at))?,
            ),
            S_IFCHR => Kind::CharDev {
                major: rmajor,
                minor: rminor,
            },
            _ => {
                return Err(CpioError::UnsupportedType {
                    path: name.to_string(),
                    mode,
                });
            }
        };
        entries.push(Entry {
            path: name.to_string(),
            mode: mode & 0o7777,
            kind,
        });
        at = body_at + filesize;
        at += pad4(at);
        if at >= data.len() {
            return Err(CpioError::NoTrailer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_preserves_every_entry() {
        let mut t = Tree::new();
        t.dir("/proc", 0o555);
        t.file("/init", 0o755, b"#!/bin/sh\n".to_vec());
        t.file("/lib/modules/6.1/kernel/a.ko", 0o644, vec![7u8; 1001]);
        t.file("/empty", 0o600, Vec::new());
        t.insert(
            "/lib64",
            0o777,
            Kind::Symlink("lib/x86_64-linux-gnu".into()),
        );
        t.insert("/dev/console", 0o600, Kind::CharDev { major: 5, minor: 1 });
        let bytes = t.to_archive().expect("write");
        assert_eq!(bytes.len() % 512, 0);
        let back = read_archive(&bytes).expect("read");
        let want: Vec<Entry> = t.entries().cloned().collect();
        assert_eq!(back, want);
        // Implicit parents exist and precede their children.
        let paths: Vec<&str> = back.iter().map(|e| e.path.as_str()).collect();
        let lib = paths.iter().position(|p| *p == "lib").expect("lib dir");
        let ko = paths
            .iter()
            .position(|p| p.ends_with("a.ko"))
            .expect("module");
        assert!(lib < ko);
        assert!(paths.contains(&"lib/modules/6.1/kernel"));
        assert!(paths.contains(&"dev"));
    }

    #[test]
    fn records_are_four_byte_aligned_and_end_with_trailer() {
        let mut t = Tree::new();
        t.file("abc", 0o644, b"12345".to_vec());
        let bytes = t.to_archive().expect("write");
        assert_eq!(&bytes[..6], b"070701");
        // header(110) + "abc\0"(4) = 114 -> padded to 116; body 5 -> 121 -> 124.
        assert_eq!(&bytes[124..130], b"070701");
        let trailer_name = &bytes[124 + HEADER_LEN..124 + HEADER_LEN + 10];
        assert_eq!(trailer_name, TRAILER.as_bytes());
    }

    #[test]
    fn identical_trees_give_identical_archives() {
        let build = || {
            let mut t = Tree::new();
            t.file("b/x", 0o644, b"x".to_vec());
            t.file("a/y", 0o644, b"y".to_vec());
            t.to_archive().expect("write")
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn reader_rejects_damage() {
        let mut t = Tree::new();
        t.file("f", 0o644, vec![1u8; 64]);
        let bytes = t.to_archive().expect("write");
        assert!(matches!(
            read_archive(&bytes[..100]),
            Err(CpioError::Truncated(_))
        ));
        assert!(matches!(
            read_archive(&bytes[..150]),
            Err(CpioError::Truncated(_))
        ));
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert!(matches!(read_archive(&bad), Err(CpioError::BadMagic(0))));
        // Cut right before the trailer: structurally fine but incomplete.
        let first_len = HEADER_LEN + 2 + 64;
        assert!(read_archive(&bytes[..first_len]).is_err());
    }
}
