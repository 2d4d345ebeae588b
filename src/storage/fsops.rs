//! fd-based operations on the sandbox share, which the guest can write to:
//! entries are created and opened relative to directory fds without
//! following symlinks, and binds land on the fd that was checked.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::mounts::open_beneath;
use crate::oci::ReadOnly;

const EMPTY: &CStr = c"";

/// Opens the absolute `path` as `O_PATH` when no component is a symlink.
pub(super) fn open_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = nix::fcntl::openat2(libc::AT_FDCWD, path, how)?;
    // SAFETY: openat2 just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the fd is a directory.
pub(super) fn is_dir(fd: &OwnedFd) -> io::Result<bool> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The directory `name` in `parent`, made if missing; a symlink or a
/// non-directory in its place (planted by the guest) is refused.
pub(super) fn ensure_dir(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    match nix::sys::stat::mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o755),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_beneath(parent, Path::new(name), OFlag::O_PATH | OFlag::O_DIRECTORY)
}

/// The regular file `name` in `parent`, made empty if missing; a symlink
/// or a directory in its place is refused.
pub(super) fn ensure_file(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let fd = open_beneath(
        parent,
        Path::new(name),
        OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
    )?;
    if is_dir(&fd)? {
        return Err(Errno::EISDIR.into());
    }
    Ok(fd)
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Binds what `src` refers to onto what `target` refers to, with the new
/// mount API: the copy is made detached, made read-only there when asked,
/// and only then attached. A bind remounted read-only after attaching is
/// not read-only in mount namespaces it already propagated to, and
/// virtiofsd serves the guest from such a namespace.
pub(super) fn clone_mount(
    src: &OwnedFd,
    target: &OwnedFd,
    recursive: bool,
    readonly: ReadOnly,
) -> io::Result<()> {
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint
        | rec;
    // SAFETY: open_tree reads only the NUL-terminated empty path; the fd
    // it returns is owned below.
    let tree = check(unsafe {
        libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), EMPTY.as_ptr(), flags)
    })?;
    let tree_fd = i32::try_from(tree).map_err(|_| io::Error::other("open_tree fd out of range"))?;
    // SAFETY: open_tree just returned this fd; closing it dissolves the
    // detached tree if it is never attached.
    let tree = unsafe { OwnedFd::from_raw_fd(tree_fd) };
    // Whatever the guest makes in a bind (it writes as root on the host,
    // through virtiofsd or QEMU's 9p) is inert on the host side: no setuid
    // program, no device node that opens the host's device. The guest's own
    // kernel still honours both in the guest; only the host-side copy of
    // the mount carries the flags.
    set_attr(&tree, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV, rec)?;
    match readonly {
        ReadOnly::No => {}
        ReadOnly::Recursive => set_attr(&tree, libc::MOUNT_ATTR_RDONLY, rec)?,
        ReadOnly::Top => set_attr(&tree, libc::MOUNT_ATTR_RDONLY, 0)?,
    }
    // SAFETY: both fds are live and both paths are the NUL-terminated empty
    // string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            target.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Sets `attr` on the detached mount tree `tree` (`rec`: on every mount
/// of it).
fn set_attr(tree: &OwnedFd, attr: u64, rec: libc::c_uint) -> io::Result<()> {
    // SAFETY: zeroed is a valid mount_attr (no attribute changes).
    let mut a: libc::mount_attr = unsafe { std::mem::zeroed() };
    a.attr_set = attr;
    // SAFETY: `a` is a live mount_attr of the size passed, and the path is
    // the NUL-terminated empty string.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &a as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    Ok(())
}

/// Removes `name` from `parent` without following it or recursing: an
/// empty directory, a file, or a symlink. Gone already is fine.
pub(super) fn remove_entry(parent: &OwnedFd, name: &Path) -> io::Result<()> {
    let fd = Some(parent.as_raw_fd());
    match nix::unistd::unlinkat(fd, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => match nix::unistd::unlinkat(fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Names in the directory `dir`.
pub(super) fn list(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    // Reopening through the fd's magic link lists exactly the directory
    // that was opened, wherever the guest moved it.
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}
