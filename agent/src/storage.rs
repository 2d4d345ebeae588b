//! The sandbox share and storages: mounting `kataShared` at the share mount
//! point at boot, the sandbox/container storages (`ephemeral`, `local`,
//! `bind`) on request, and symlink-safe path resolution (`openat2`) for
//! everything a request names inside the share, a storage or a rootfs.
//!
//! `agent.shared_fs=virtiofs` mounts the virtio-fs tag, `9p` the virtio-9p
//! tag, `none` nothing. The device may still be probing when the agent gets
//! here, so the mount is retried until `agent.device_timeout`. Failure is
//! not fatal: the caller logs it and guest details report no share.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kata_agent_protocol::guest::SHARED_FS_TAG;
use nix::mount::{MsFlags, mount};
use std::os::unix::fs::OpenOptionsExt;

use crate::config::SharedFsKind;
use crate::error::{AgentError, Result};

/// Mount options of the 9p share (besides `nodev`).
pub const NINE_P_OPTIONS: &str = "trans=virtio,version=9p2000.L,cache=mmap,msize=262144";
/// Pause between mount attempts while the device is not ready.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// What `mount(2)` is called with for a share kind; `None` for no share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: Option<&'static str>,
}

/// The mount to perform for `kind`.
pub fn share_mount_spec(kind: SharedFsKind) -> Option<ShareMount> {
    match kind {
        SharedFsKind::VirtioFs => Some(ShareMount {
            fstype: "virtiofs",
            flags: MsFlags::MS_NODEV,
            data: None,
        }),
        SharedFsKind::NineP => Some(ShareMount {
            fstype: "9p",
            flags: MsFlags::MS_NODEV,
            data: Some(NINE_P_OPTIONS),
        }),
        SharedFsKind::None => None,
    }
}

/// Mounts the share of `kind` at `mount_point`, creating it, retrying until
/// `timeout`. Returns `Ok(false)` for `none`, `Ok(true)` once mounted.
pub async fn mount_share(
    kind: SharedFsKind,
    mount_point: &Path,
    timeout: Duration,
) -> Result<bool> {
    let Some(spec) = share_mount_spec(kind) else {
        return Ok(false);
    };
    std::fs::create_dir_all(mount_point)
        .map_err(|e| AgentError::io("creating share mount point", mount_point, e))?;

    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let res = mount(
            Some(SHARED_FS_TAG),
            mount_point,
            Some(spec.fstype),
            spec.flags,
            spec.data,
        );
        match res {
            Ok(()) => {
                tracing::info!(
                    fstype = spec.fstype,
                    tag = SHARED_FS_TAG,
                    mount_point = %mount_point.display(),
                    attempts,
                    "mounted the sandbox share"
                );
                return Ok(true);
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, attempts, "share mount failed; retrying");
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(e) => {
                return Err(AgentError::sys(
                    format!(
                        "mount -t {} {SHARED_FS_TAG} {} ({} attempts)",
                        spec.fstype,
                        mount_point.display(),
                        attempts
                    ),
                    e,
                ));
            }
        }
    }
}

/// `openat2` resolve flags.
#[derive(Debug, Clone, Copy)]
pub enum Resolve {
    /// Fail if resolution would leave the root (absolute symlinks, `..`).
    Beneath,
    /// Treat the root as `/`: absolute symlinks and `..` stay inside it,
    /// exactly as the container will see the path.
    InRoot,
    /// Follow no symlink at all.
    NoSymlinks,
}

impl Resolve {
    fn flags(self) -> u64 {
        let base = libc::RESOLVE_NO_MAGICLINKS;
        base | match self {
            Self::Beneath => libc::RESOLVE_BENEATH,
            Self::InRoot => libc::RESOLVE_IN_ROOT,
            Self::NoSymlinks => libc::RESOLVE_NO_SYMLINKS,
        }
    }
}

/// Opens `rel` (relative to the directory `dirfd`) with `openat2`.
fn openat2(dirfd: &OwnedFd, rel: &Path, oflags: i32, resolve: Resolve) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_how is a plain C struct; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (oflags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve.flags();
    loop {
        // SAFETY: `dirfd` is an open descriptor, `c` a NUL-terminated string
        // and `how` a valid open_how of the size passed; the kernel only
        // reads them for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            let fd = i32::try_from(rc)
                .map_err(|_| io::Error::other("openat2 returned an out-of-range fd"))?;
            // SAFETY: the kernel just returned this descriptor; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the resolution; retry.
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return Err(e);
        }
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

/// The path the kernel has for an open descriptor.
pub fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `path` without `root` as a prefix, refusing `..`, relative paths and
/// anything not lexically under `root`.
pub fn relative_to(root: &Path, path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    path.strip_prefix(root).ok().map(Path::to_path_buf)
}

/// Resolves `rel` under the directory `root` with `resolve` semantics and
/// returns the real, symlink-free absolute path of what it names. The
/// path must exist.
pub fn resolve(root: &Path, rel: &Path, resolve: Resolve) -> io::Result<PathBuf> {
    let dir = open_dir(root)?;
    let fd = openat2(&dir, rel, libc::O_PATH, resolve)?;
    fd_path(&fd)
}

/// Like [`resolve`] with [`Resolve::InRoot`], but `rel` may not exist yet:
/// the longest existing prefix is resolved in the root and the rest is
/// appended. Returns the path *as the container sees it* (relative to the
/// root, with a leading `/`).
pub fn resolve_in_root_lenient(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let real_root = std::fs::canonicalize(root)?;
    let comps: Vec<Component<'_>> = rel
        .components()
        .filter(|c| *c != Component::RootDir)
        .collect();
    for split in (0..=comps.len()).rev() {
        let prefix: PathBuf = comps[..split].iter().collect();
        match resolve(&real_root, &prefix, Resolve::InRoot) {
            Ok(real) => {
                let inside = real.strip_prefix(&real_root).map_err(|_| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "resolved outside the root")
                })?;
                let mut out = Path::new("/").join(inside);
                for c in &comps[split..] {
                    out.push(c);
                }
                return Ok(out);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// Creates `path` (absolute) and its parents without following any
/// symlink, and returns an `O_PATH` descriptor of the final directory.
pub fn mkdir_all_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "must be absolute without `..`",
        ));
    }
    let mut dir = open_dir(Path::new("/"))?;
    for comp in path.components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: `dir` is an open directory descriptor and `c` a
        // NUL-terminated name; mkdirat does not follow a final symlink.
        let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        dir = openat2(
            &dir,
            Path::new(name),
            libc::O_PATH | libc::O_DIRECTORY,
            Resolve::NoSymlinks,
        )?;
    }
    Ok(dir)
}

/// A storage of a CreateSandbox or CreateContainer request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSpec {
    /// `ephemeral`, `local` or `bind`.
    pub driver: String,
    /// For `bind`: share-relative source.
    pub source: String,
    /// Absolute guest path.
    pub mount_point: PathBuf,
}

/// Mounts (or creates) one storage; symlinks on the way to the mount point
/// are refused, and the mount goes through the resolved descriptor.
pub fn mount_storage(storage: &StorageSpec, share: &Path) -> crate::error::Result<()> {
    let mp = &storage.mount_point;
    let dir = mkdir_all_no_symlinks(mp).map_err(|e| AgentError::InvalidArgument {
        field: "storages.mount_point",
        reason: format!("{}: {e}", mp.display()),
    })?;
    // Mounting on /proc/self/fd/N mounts on exactly the directory resolved above.
    let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
    match storage.driver.as_str() {
        "ephemeral" => mount(
            Some("tmpfs"),
            target.as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )
        .map_err(|e| AgentError::sys(format!("mount tmpfs on {}", mp.display()), e)),
        "local" => Ok(()),
        "bind" => {
            let rel = Path::new(storage.source.trim_start_matches('/'));
            let rel = relative_to(share, &share.join(rel)).ok_or_else(|| {
                AgentError::InvalidArgument {
                    field: "storages.source",
                    reason: format!("{:?} is not inside the share", storage.source),
                }
            })?;
            let src = resolve(share, &rel, Resolve::Beneath).map_err(|e| {
                AgentError::InvalidArgument {
                    field: "storages.source",
                    reason: format!(
                        "{:?} does not resolve inside the share: {e}",
                        storage.source
                    ),
                }
            })?;
            mount(
                Some(&src),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| AgentError::sys(format!("bind {} on {}", src.display(), mp.display()), e))
        }
        other => Err(AgentError::InvalidArgument {
            field: "storages.driver",
            reason: format!("unsupported driver {other:?} (ephemeral, local, bind)"),
        }),
    }
}

/// Unmounts `mount_points` in reverse order (lazily, so a busy one goes
/// once unused), logging failures: used to undo a request that failed.
pub fn unmount_all(mount_points: &[PathBuf]) {
    for mp in mount_points.iter().rev() {
        if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount_point = %mp.display(), error = %e, "cannot unmount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_per_kind() {
        let v = share_mount_spec(SharedFsKind::VirtioFs).expect("virtiofs mounts");
        assert_eq!(v.fstype, "virtiofs");
        assert!(v.flags.contains(MsFlags::MS_NODEV));
        assert_eq!(v.data, None);

        let p = share_mount_spec(SharedFsKind::NineP).expect("9p mounts");
        assert_eq!(p.fstype, "9p");
        assert!(p.flags.contains(MsFlags::MS_NODEV));
        assert_eq!(
            p.data,
            Some("trans=virtio,version=9p2000.L,cache=mmap,msize=262144")
        );

        assert_eq!(share_mount_spec(SharedFsKind::None), None);
    }

    #[tokio::test]
    async fn none_mounts_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp = dir.path().join("never-created");
        let mounted = mount_share(SharedFsKind::None, &mp, Duration::from_secs(1))
            .await
            .expect("none is fine");
        assert!(!mounted);
        assert!(!mp.exists());
    }

    #[test]
    fn rootfs_symlink_to_slash_is_refused_beneath() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path();
        std::fs::create_dir(share.join("c1")).expect("mkdir");
        std::os::unix::fs::symlink("/", share.join("c1/rootfs")).expect("symlink");
        assert!(resolve(share, Path::new("c1/rootfs"), Resolve::Beneath).is_err());
        // `..` out of the share is refused both lexically and by the kernel.
        assert!(relative_to(share, &share.join("c1/../../etc")).is_none());
        assert!(resolve(share, Path::new("c1/../../etc"), Resolve::Beneath).is_err());
        std::fs::create_dir(share.join("c1/real")).expect("mkdir");
        let real = resolve(share, Path::new("c1/real"), Resolve::Beneath).expect("plain dir");
        assert!(real.ends_with("c1/real"));
    }

    #[test]
    fn destinations_resolve_inside_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("proc")).expect("mkdir");
        std::os::unix::fs::symlink("/proc", root.join("etc")).expect("symlink");
        std::os::unix::fs::symlink("../../../../../", root.join("up")).expect("symlink");
        let d = resolve_in_root_lenient(root, Path::new("/etc/volume")).expect("resolves");
        assert_eq!(d, Path::new("/proc/volume"));
        let d = resolve_in_root_lenient(root, Path::new("/up/tmp/x")).expect("resolves");
        assert_eq!(d, Path::new("/tmp/x"), "`..` is clamped at the root");
    }

    #[test]
    fn mkdir_all_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        let fd = mkdir_all_no_symlinks(&base.join("a/b/c")).expect("plain dirs");
        assert!(fd_path(&fd).expect("path").ends_with("a/b/c"));
        std::os::unix::fs::symlink("/tmp", base.join("link")).expect("symlink");
        assert!(mkdir_all_no_symlinks(&base.join("link/x")).is_err());
        assert!(mkdir_all_no_symlinks(&base.join("a/../x")).is_err());
    }

    #[test]
    fn bind_storage_source_must_stay_in_the_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("mkdir");
        std::os::unix::fs::symlink("/etc", share.join("evil")).expect("symlink");
        for source in ["evil", "../outside"] {
            let s = StorageSpec {
                driver: "bind".into(),
                source: source.into(),
                mount_point: dir.path().join("mp"),
            };
            let e = mount_storage(&s, &share).expect_err("refused");
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{source}: {e}");
        }
        let s = StorageSpec {
            driver: "nfs".into(),
            source: String::new(),
            mount_point: dir.path().join("mp2"),
        };
        assert_eq!(
            mount_storage(&s, &share).expect_err("bad driver").code(),
            ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
