//! The sandbox share's root on the host: a small tmpfs of its own, read-only
//! except while the shim itself makes or removes an entry.
//!
//! The guest reaches the share through virtiofsd or QEMU's 9p server, both
//! root on the host, and neither can export a directory read-only. Left a
//! plain directory under the node's `/run`, the share let a guest fill the
//! node's `/run` (containerd, the kubelet and every other pod use it) and
//! leave its files behind after the pod. So the root is a tmpfs:
//!
//! - bounded by [`ROOT_BYTES`] and [`ROOT_INODES`], whatever `/run` is (a
//!   tmpfs on most nodes, the root disk on some), and its pages are charged
//!   to the writer's memory cgroup, the pod's own (virtiofsd and QEMU run
//!   in the pod's host cgroup);
//! - `nosuid,nodev,noexec`: nothing the guest leaves in it can be a setuid
//!   program or a device node on the host;
//! - read-only at the superblock, which binds every mount of it, virtiofsd's
//!   copy in its own mount namespace included: the guest cannot create
//!   anything at the root. The shim opens a short window
//!   ([`with_writable_share`]) to make or remove a container's entries;
//!   a guest that races a file in during the window still meets the size
//!   bound;
//! - unmounted at teardown, which removes whatever the guest wrote in it.
//!
//! Containers' rootfs and volume binds are mounts of their own beneath it:
//! writable or read-only as their specs say.

use std::path::Path;
use std::sync::Mutex;

use nix::mount::MsFlags;

use super::{StorageError, io_err};
use crate::locks::lock;

/// Most bytes the share's root holds: directories and empty mount points,
/// plus the boot check's probe file.
pub const ROOT_BYTES: u64 = 1 << 20;
/// Most inodes in the share's root: a few per container.
pub const ROOT_INODES: u64 = 4096;
/// The tmpfs's source name in mountinfo: how the shim recognises its own
/// share root, and never remounts a filesystem that is not.
const SOURCE: &str = "kata-share";
/// Per-mount flags of the root, kept on every remount.
const FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// One window at a time: a second one closing would make the root
/// read-only under the first.
static WINDOW: Mutex<()> = Mutex::new(());

/// Mounts the share root (see the module doc) with shared propagation, so
/// that binds made under it after virtiofsd started propagate into
/// virtiofsd's (slave) mount namespace. Called once, after the share dir is
/// created and before the share's server starts. Idempotent.
pub fn prepare_share(share_dir: &Path) -> Result<(), StorageError> {
    let canon = std::fs::canonicalize(share_dir).map_err(io_err("resolve", share_dir))?;
    let infos = crate::mounts::read_mountinfo().map_err(io_err("read", "/proc/self/mountinfo"))?;
    let own = match infos.iter().rev().find(|m| m.mount_point == canon) {
        // Re-sharing would cut virtiofsd's copy off from its master.
        Some(m) if m.is_shared() => return Ok(()),
        Some(m) => is_own(m),
        None => {
            let options = format!("size={ROOT_BYTES},nr_inodes={ROOT_INODES},mode=0700");
            nix::mount::mount(
                Some(SOURCE),
                &canon,
                Some("tmpfs"),
                FLAGS,
                Some(options.as_str()),
            )
            .map_err(|e| io_err("mount the share root on", &canon)(e.into()))?;
            // Private first: the mount leaves the parent's peer group, so
            // container binds do not spread to the host's other namespaces.
            if let Err(e) = make(&canon, MsFlags::MS_PRIVATE) {
                let _ = nix::mount::umount2(&canon, nix::mount::MntFlags::MNT_DETACH);
                return Err(e);
            }
            true
        }
    };
    make(&canon, MsFlags::MS_SHARED)?;
    if own {
        remount(&canon, true)?;
    }
    tracing::debug!(path = %canon.display(), "share root is a read-only shared tmpfs");
    Ok(())
}

fn make(path: &Path, propagation: MsFlags) -> Result<(), StorageError> {
    nix::mount::mount(None::<&str>, path, None::<&str>, propagation, None::<&str>)
        .map_err(|e| io_err("set propagation of", path)(e.into()))
}

/// Whether `canon` is the mount point of a share root this module made:
/// only such a tmpfs is ever remounted (a remount without `MS_BIND`
/// changes the whole filesystem, which for anything else could be the
/// node's `/run` or root disk).
fn is_own_root(canon: &Path) -> bool {
    crate::mounts::read_mountinfo().is_ok_and(|infos| {
        infos
            .iter()
            .rev()
            .find(|m| m.mount_point == canon)
            .is_some_and(is_own)
    })
}

fn is_own(m: &crate::mounts::MountInfo) -> bool {
    m.fstype == "tmpfs" && m.source == SOURCE
}

fn remount(canon: &Path, read_only: bool) -> Result<(), StorageError> {
    let ro = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    nix::mount::mount(
        None::<&str>,
        canon,
        None::<&str>,
        MsFlags::MS_REMOUNT | FLAGS | ro,
        None::<&str>,
    )
    .map_err(|e| {
        io_err(
            if read_only {
                "make read-only the share root"
            } else {
                "make writable the share root"
            },
            canon,
        )(e.into())
    })
}

/// Runs `f` with the share root writable, and makes it read-only again.
///
/// A share this module did not mount (a sandbox started by an older shim,
/// or a test's plain directory) is left as it is. Making the root
/// read-only again fails if the guest holds a file in it open for writing;
/// that is logged, and the size bound still holds.
pub fn with_writable_share<T>(share_dir: &Path, f: impl FnOnce() -> T) -> Result<T, StorageError> {
    let _window = lock(&WINDOW);
    let canon = match std::fs::canonicalize(share_dir) {
        Ok(c) if is_own_root(&c) => c,
        _ => return Ok(f()),
    };
    remount(&canon, false)?;
    let out = f();
    if let Err(e) = remount(&canon, true) {
        tracing::warn!(path = %canon.display(), error = %crate::logging::error_chain(&e),
            "the share root stays writable (the guest holds a file open in it); its size bound still holds");
    }
    Ok(out)
}

/// Unmounts everything under the share and the share root itself, which
/// removes whatever the guest wrote at the root. Idempotent, tolerant.
pub fn release_share(share_dir: &Path) {
    match crate::mounts::unmount_under(share_dir) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(path = %share_dir.display(), mounts = n, "share released"),
        Err(e) => tracing::warn!(path = %share_dir.display(), error = %e, "cannot release share"),
    }
}
