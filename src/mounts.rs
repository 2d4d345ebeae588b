//! Host mount bookkeeping: reading `/proc/self/mountinfo`, finding the
//! mounts at or below a directory, and detaching them deepest first.
//!
//! The sandbox share is guest-writable, so a path under it may have been
//! swapped for a symlink by the guest (CVE-2020-2024). Unmounting therefore
//! never resolves a symlink below a trusted root: [`unmount_beneath`] walks
//! from an fd of the root with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and
//! detaches with `UMOUNT_NOFOLLOW`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::MntFlags;
use nix::sys::stat::Mode;

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The directory of the mounted filesystem that is the mount's root.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, ...).
    pub options: String,
    /// Propagation tags: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

impl MountInfo {
    /// Whether the mount is in a shared peer group.
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|t| t.starts_with("shared:"))
    }

    /// Whether the mount itself is read-only.
    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Decodes the octal escapes (`\040`, `\011`, `\012`, `\134`) the kernel
/// writes for space, tab, newline and backslash.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// A path field of mountinfo, decoded (the one decoder: the host cgroup
/// scan reads its mount points through it too).
pub fn path_field(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn text_field(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn bad_line(n: usize, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("mountinfo line {}: {why}", n + 1),
    )
}

/// Parses the content of a mountinfo file; errors name the line.
pub fn parse_mountinfo(text: &[u8]) -> io::Result<Vec<MountInfo>> {
    let mut out = Vec::new();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == b"-")
            .ok_or_else(|| bad_line(n, "no `-` separator"))?;
        if sep < 6 || fields.len() < sep + 4 {
            return Err(bad_line(n, "too few fields"));
        }
        let num = |f: &[u8]| -> io::Result<u32> {
            std::str::from_utf8(f)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad_line(n, "bad mount id"))
        };
        out.push(MountInfo {
            mount_id: num(fields[0])?,
            parent_id: num(fields[1])?,
            root: path_field(fields[3]),
            mount_point: path_field(fields[4]),
            options: text_field(fields[5]),
            optional: fields[6..sep].iter().map(|f| text_field(f)).collect(),
            fstype: text_field(fields[sep + 1]),
            source: text_field(fields[sep + 2]),
            super_options: text_field(fields[sep + 3]),
        });
    }
    Ok(out)
}

/// The mounts of this process's mount namespace, in the kernel's order.
pub fn read_mountinfo() -> io::Result<Vec<MountInfo>> {
    parse_mountinfo(&std::fs::read("/proc/self/mountinfo")?)
}

/// `dir` made absolute and free of symlinks when it exists, so it compares
/// equal to the kernel's spelling; kept as given otherwise.
fn kernel_spelling(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Orders mount points deepest first; among equals, the most recent mount
/// (the top of a stack) first.
fn deepest_first(infos: &[MountInfo], dir: &Path) -> Vec<PathBuf> {
    let mut hits: Vec<PathBuf> = infos
        .iter()
        .rev()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| m.mount_point.clone())
        .collect();
    hits.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    hits
}

/// Mount points at or below `dir`, deepest first (a path appears once per
/// stacked mount). `dir` is trusted: symlinks in it are resolved.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(deepest_first(&read_mountinfo()?, &kernel_spelling(dir)))
}

/// Detaches (`MNT_DETACH`) every mount at or below `dir`, deepest first;
/// mounts already gone (`EINVAL`, `ENOENT`) are tolerated. Returns how many
/// were detached. `dir` itself is trusted; for a directory inside a
/// guest-writable tree use [`unmount_beneath`].
pub fn unmount_under(dir: &Path) -> io::Result<usize> {
    unmount_beneath(dir, Path::new(""))
}

/// Like [`unmount_under`] for `root/rel`, where `root` is trusted and `rel`
/// may lie in a guest-writable tree: nothing below `root` is reached through
/// a symlink, so a planted symlink makes the walk skip that mount instead of
/// unmounting a host path it points to.
pub fn unmount_beneath(root: &Path, rel: &Path) -> io::Result<usize> {
    let root = kernel_spelling(root);
    let base = if rel.as_os_str().is_empty() {
        root.clone()
    } else {
        root.join(rel)
    };
    let mut detached = 0;
    let mut first_err = None;
    // A second pass catches mounts that propagated in while the first ran.
    for _ in 0..3 {
        let points = deepest_first(&read_mountinfo()?, &base);
        let mut progressed = false;
        for p in points {
            let Ok(rel_p) = p.strip_prefix(&root) else {
                continue;
            };
            match detach(&root, rel_p) {
                Ok(true) => {
                    detached += 1;
                    progressed = true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot unmount");
                    first_err.get_or_insert(e);
                }
            }
        }
        if !progressed {
            break;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(detached),
    }
}

/// Opens `rel` beneath the directory fd `dirfd` without following any
/// symlink and without leaving it.
pub(crate) fn open_beneath(dirfd: &OwnedFd, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    // openat2 refuses a mode without O_CREAT.
    if flags.contains(OFlag::O_CREAT) {
        how = how.mode(Mode::from_bits_truncate(0o644));
    }
    let fd = nix::fcntl::openat2(dirfd.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the trusted directory `path` as an `O_PATH` fd.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the top mount at `root/rel`. `Ok(false)`: nothing to detach.
fn detach(root: &Path, rel: &Path) -> io::Result<bool> {
    let flags = MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW;
    let result = match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name))
            if rel.components().all(|c| matches!(c, Component::Normal(_))) =>
        {
            let root_fd = match open_dir(root) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
                Err(e) => return Err(e),
            };
            let parent_fd = match open_beneath(&root_fd, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            {
                Ok(fd) => fd,
                Err(e) => {
                    return match e.raw_os_error() {
                        Some(libc::ENOENT) => Ok(false),
                        Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => {
                            tracing::warn!(root = %root.display(), path = %rel.display(),
                                "not unmounting through a symlink planted below the root");
                            Ok(false)
                        }
                        _ => Err(e),
                    };
                }
            };
            let mut via = PathBuf::from(format!("/proc/self/fd/{}", parent_fd.as_raw_fd()));
            via.push(name);
            nix::mount::umount2(&via, flags)
        }
        _ if rel.as_os_str().is_empty() => nix::mount::umount2(root, flags),
        // mountinfo never reports `.` or `..` components; refuse rather
        // than guess.
        _ => return Ok(false),
    };
    match result {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL | Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is the root of a mount (a symlink never is).
pub fn is_mount_point(path: &Path) -> bool {
    if let Some(answer) = statx_mount_root(path) {
        return answer;
    }
    let want = kernel_spelling(path);
    read_mountinfo().is_ok_and(|all| all.iter().any(|m| m.mount_point == want))
}

/// `STATX_ATTR_MOUNT_ROOT`, when the kernel reports it.
fn statx_mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `stx` points to
    // writable memory of the size statx fills.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return if Errno::last() == Errno::ENOENT {
            Some(false)
        } else {
            None
        };
    }
    // SAFETY: statx succeeded, so it initialised the struct.
    let stx = unsafe { stx.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::MsFlags;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(b"/a\\040b\\011c\\134d"), b"/a b\tc\\d");
        assert_eq!(unescape(b"/a\\9xy\\"), b"/a\\9xy\\");
        assert_eq!(unescape(b"\\777"), b"\\777");
        assert_eq!(path_field(b"/x\\040y"), PathBuf::from("/x y"));
    }

    const SAMPLE: &[u8] = b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
36 22 0:31 / /tmp/a\\040b rw,nosuid master:3 - tmpfs my\\040fs rw,size=10k\n\
37 36 0:32 /sub\\134dir /tmp/a\\040b/c\\011d ro,relatime - overlay overlay rw,lowerdir=/x\n";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let all = parse_mountinfo(SAMPLE).expect("parse");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].mount_point, Path::new("/"));
        assert!(all[0].is_shared());
        assert_eq!(all[1].mount_point, Path::new("/tmp/a b"));
        assert_eq!(all[1].source, "my fs");
        assert_eq!(all[1].fstype, "tmpfs");
        assert_eq!(all[1].optional, vec!["master:3".to_string()]);
        assert!(!all[1].is_shared());
        assert_eq!(all[2].mount_point, Path::new("/tmp/a b/c\td"));
        assert_eq!(all[2].root, Path::new("/sub\\dir"));
        assert!(all[2].is_read_only());
        assert_eq!(all[2].parent_id, 36);
        assert_eq!(all[2].super_options, "rw,lowerdir=/x");
    }

    #[test]
    fn malformed_mountinfo_names_the_line() {
        let e = parse_mountinfo(b"22 1 254:0 / / rw - ext4 /dev/vda rw\n1 2 3\n").expect_err("bad");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_mountinfo(b"x 1 254:0 / / rw - ext4 /dev/vda rw\n").expect_err("bad id");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn deepest_first_orders_children_and_stacks() {
        let all = parse_mountinfo(
            b"1 0 0:1 / /d rw - tmpfs a rw\n\
2 1 0:2 / /d/x rw - tmpfs b rw\n\
3 2 0:3 / /d/x/y rw - tmpfs c rw\n\
4 1 0:4 / /d/x rw - tmpfs d rw\n\
5 0 0:5 / /dz rw - tmpfs e rw\n",
        )
        .expect("parse");
        let got = deepest_first(&all, Path::new("/d"));
        let want: Vec<PathBuf> = ["/d/x/y", "/d/x", "/d/x", "/d"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    /// A temp dir whose mounts are detached even when the test fails.
    struct Scratch(tempfile::TempDir);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = unmount_under(self.0.path());
        }
    }

    fn tmpfs(at: &Path) {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs");
    }

    #[test]
    fn unmount_under_detaches_deepest_first_and_is_idempotent() {
        let s = Scratch(tempfile::tempdir().expect("tempdir"));
        let d = s.0.path().join("d with space");
        std::fs::create_dir(&d).expect("mkdir");
        tmpfs(&d);
        std::fs::create_dir(d.join("x")).expect("mkdir x");
        tmpfs(&d.join("x"));
        tmpfs(&d.join("x"));
        std::fs::create_dir(d.join("x/y")).expect("mkdir y");
        tmpfs(&d.join("x/y"));
        assert!(is_mount_point(&d));
        assert!(is_mount_point(&d.join("x/y")));
        let found = mounts_under(&d).expect("mounts");
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0], d.join("x/y"));
        assert_eq!(found[3], d);

        assert_eq!(unmount_under(&d).expect("unmount"), 4);
        assert!(mounts_under(&d).expect("mounts").is_empty());
        assert!(!is_mount_point(&d));
        assert_eq!(unmount_under(&d).expect("again"), 0);
        assert_eq!(
            unmount_under(&s.0.path().join("missing")).expect("missing"),
            0
        );
    }

    #[test]
    fn unmount_beneath_does_not_follow_a_planted_symlink() {
        let s = Scratch(tempfile::tempdir().expect("tempdir"));
        let root = s.0.path().join("share");
        let victim = s.0.path().join("victim");
        std::fs::create_dir_all(root.join("c1/rootfs")).expect("mkdir");
        std::fs::create_dir_all(victim.join("rootfs")).expect("mkdir");
        tmpfs(&victim.join("rootfs"));
        tmpfs(&root.join("c1/rootfs"));
        // After mountinfo was read, the guest moves the container dir away
        // and plants a symlink to a host tree with a mount at the same
        // relative place.
        std::fs::rename(root.join("c1"), root.join("c1-old")).expect("rename");
        std::os::unix::fs::symlink(&victim, root.join("c1")).expect("symlink");
        assert!(!detach(&root, Path::new("c1/rootfs")).expect("detach"));
        assert!(is_mount_point(&victim.join("rootfs")), "victim untouched");
        assert_eq!(unmount_beneath(&root, Path::new("c1")).expect("unmount"), 0);
        assert!(
            !is_mount_point(&root.join("c1")),
            "a symlink is no mount point"
        );
        assert_eq!(unmount_under(&root).expect("unmount"), 1);
        assert!(!is_mount_point(&root.join("c1-old/rootfs")));
        assert!(is_mount_point(&victim.join("rootfs")), "victim untouched");
    }
}
