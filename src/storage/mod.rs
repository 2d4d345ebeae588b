//! Host side of container storage: the sandbox share's mount setup, each
//! container's rootfs and volumes bound into the share, and the spec the
//! guest gets for them.
//!
//! Whatever is at `<share>/X` on the host is `<SHARED_FS_MOUNT>/X` in the
//! guest. A container holds `<share>/<cid>/rootfs` (its root) and
//! `<share>/<cid>/volumes/<i>-<name>` (its bind volumes). The share is
//! guest-writable, so every entry in it is made and opened relative to
//! directory fds without following symlinks (CVE-2020-2026), and binds are
//! attached onto the fd that was checked. Volume sources are opened without
//! following symlinks and bound through that fd, so what was checked is what
//! gets mounted. Read-only binds are made read-only before they are attached,
//! so they are read-only in virtiofsd's mount namespace too (CVE-2020-28914).

mod fsops;
mod rootfs;
mod share;
#[cfg(test)]
mod tests;

pub use share::{ROOT_BYTES, ROOT_INODES, prepare_share, release_share, with_writable_share};

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::fcntl::OFlag;
use serde_json::Value;
use ttrpc::Code;

use crate::mounts::{open_beneath, open_dir};
use crate::oci::{self, MountClass, OciError, ReadOnly, Volume};

/// Errors preparing or releasing container storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Spec(#[from] OciError),
    #[error("share directory {path} is missing")]
    NoShare { path: PathBuf },
    #[error("container {container_id} already has mounts in the share")]
    InUse { container_id: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount rootfs[{index}] ({fstype}) on {target}")]
    Rootfs {
        index: usize,
        fstype: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    pub fn code(&self) -> Code {
        match self {
            StorageError::Spec(e) => e.code(),
            StorageError::NoShare { .. } => Code::FAILED_PRECONDITION,
            StorageError::InUse { .. } => Code::ALREADY_EXISTS,
            StorageError::Io { .. } | StorageError::Rootfs { .. } => Code::INTERNAL,
        }
    }
}

fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { what, path, source }
}

/// A container ready to be created in the guest.
#[derive(Debug)]
pub struct PreparedContainer {
    /// The spec rewritten for the guest, for the agent's CreateContainer.
    pub guest_spec_json: Vec<u8>,
    pub mounts: ContainerMounts,
}

/// The host mounts one container holds.
#[derive(Debug)]
pub struct ContainerMounts {
    share_dir: PathBuf,
    sandbox_id: String,
    container_id: String,
    bundle: PathBuf,
    /// `root.path`, relative to the bundle, while the shim holds
    /// containerd's rootfs mounted there.
    bundle_root: Option<PathBuf>,
}

impl ContainerMounts {
    /// The mounts of a container prepared by an earlier shim process, from
    /// what it persisted; `rootfs_mounted` means `<bundle>/rootfs`.
    pub fn restore(
        share_dir: &Path,
        sandbox_id: &str,
        container_id: &str,
        bundle: &Path,
        rootfs_mounted: bool,
    ) -> ContainerMounts {
        ContainerMounts {
            share_dir: share_dir.to_path_buf(),
            sandbox_id: sandbox_id.to_string(),
            container_id: container_id.to_string(),
            bundle: bundle.to_path_buf(),
            bundle_root: rootfs_mounted.then(|| PathBuf::from("rootfs")),
        }
    }

    /// Lazily unmounts the container's binds in the share (rootfs and
    /// volumes) and removes `<share>/<cid>`; called when the container's
    /// init exits, before the exit is reported, so CRI-O can unmount the
    /// rootfs right after Wait returns without EBUSY. Idempotent.
    pub fn release_share(&mut self) {
        let (sandbox_id, container_id) = (&self.sandbox_id, &self.container_id);
        match crate::mounts::unmount_beneath(&self.share_dir, Path::new(container_id)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sandbox_id, container_id, mounts = n, "share binds released"),
            Err(e) => tracing::warn!(sandbox_id, container_id, error = %e,
                "cannot release share binds"),
        }
        self.remove_share_entries();
    }

    /// Removes what `prepare_container` made in the share, one entry at a
    /// time and never recursively: an entry still mounted (or holding
    /// guest-written files) stays and is reported, rather than its content
    /// being deleted.
    fn remove_share_entries(&self) {
        if let Err(e) = with_writable_share(&self.share_dir, || self.remove_share_entries_now()) {
            tracing::warn!(sandbox_id = %self.sandbox_id, container_id = %self.container_id,
                error = %crate::logging::error_chain(&e), "cannot remove share entries");
        }
    }

    fn remove_share_entries_now(&self) {
        let (sandbox_id, container_id) = (&self.sandbox_id, &self.container_id);
        let report = |path: &Path, e: io::Error| {
            tracing::warn!(sandbox_id, container_id, path = %path.display(), error = %e,
                "cannot remove share entry");
        };
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let share = match open_dir(&self.share_dir) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) => return report(&self.share_dir, e),
        };
        let cid = Path::new(container_id);
        let cpath = self.share_dir.join(cid);
        let cdir = match open_beneath(&share, cid, dir_flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            // The guest put something else there: remove that, not what it
            // points to.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return fsops::remove_entry(&share, cid).unwrap_or_else(|e| report(&cpath, e));
            }
            Err(e) => return report(&cpath, e),
        };
        let vpath = cpath.join("volumes");
        if let Ok(vdir) = open_beneath(&cdir, Path::new("volumes"), dir_flags) {
            match fsops::list(&vdir) {
                Ok(names) => {
                    for name in names {
                        fsops::remove_entry(&vdir, Path::new(&name))
                            .unwrap_or_else(|e| report(&vpath.join(&name), e));
                    }
                }
                Err(e) => report(&vpath, e),
            }
        }
        for sub in ["volumes", "rootfs"] {
            fsops::remove_entry(&cdir, Path::new(sub))
                .unwrap_or_else(|e| report(&cpath.join(sub), e));
        }
        fsops::remove_entry(&share, cid).unwrap_or_else(|e| report(&cpath, e));
    }

    /// Unmounts containerd's rootfs from `<bundle>/rootfs` if this shim
    /// mounted it. Idempotent.
    pub fn release_bundle_rootfs(&mut self) {
        let Some(rel) = &self.bundle_root else {
            return;
        };
        let (sandbox_id, container_id) = (&self.sandbox_id, &self.container_id);
        match crate::mounts::unmount_beneath(&self.bundle, rel) {
            Ok(n) => {
                tracing::debug!(
                    sandbox_id,
                    container_id,
                    mounts = n,
                    "bundle rootfs released"
                );
                self.bundle_root = None;
            }
            // Kept, so that a later call (or `delete`) tries again.
            Err(e) => tracing::warn!(sandbox_id, container_id, error = %e,
                bundle = %self.bundle.display(), "cannot unmount the bundle rootfs"),
        }
    }

    /// Whether this shim holds containerd's rootfs mounted on
    /// `<bundle>/rootfs` (persisted for crash cleanup).
    pub fn rootfs_mounted(&self) -> bool {
        self.bundle_root.is_some()
    }
}

fn validate_container_id(id: &str) -> Result<(), OciError> {
    crate::ids::validate(id)
        .map_err(|e| OciError::invalid("id", format!("container id {id:?}: {}", e.why)))
}

/// `root.path` relative to the bundle, `.` dropped; `..` refused.
fn bundle_relative(root: &str) -> Result<PathBuf, OciError> {
    let mut rel = PathBuf::new();
    for c in Path::new(root).components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            _ => {
                return Err(OciError::invalid(
                    "root.path",
                    format!("{root} must stay inside the bundle"),
                ));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(OciError::invalid(
            "root.path",
            format!("{root} names the bundle itself"),
        ));
    }
    Ok(rel)
}

/// Mounts the container's rootfs and volumes into the share (and
/// containerd's `rootfs` mounts on `<bundle>/rootfs`), and rewrites the spec
/// for the guest. Anything mounted is undone when it fails.
pub fn prepare_container(
    share_dir: &Path,
    sandbox_id: &str,
    container_id: &str,
    bundle: &Path,
    spec: Value,
    rootfs: &[Mount],
) -> Result<PreparedContainer, StorageError> {
    validate_container_id(container_id)?;
    let root = oci::root_path(&spec)?.to_string();
    let classes = oci::classify_mounts(&spec)?;
    let guest_spec_json = oci::guest_spec(spec, container_id, &classes)?;
    // Lexically: `<share>/<cid>` may be a symlink the guest planted.
    let mine = std::fs::canonicalize(share_dir)
        .unwrap_or_else(|_| share_dir.to_path_buf())
        .join(container_id);
    let infos = crate::mounts::read_mountinfo().map_err(io_err("read", "/proc/self/mountinfo"))?;
    if infos.iter().any(|m| m.mount_point.starts_with(&mine)) {
        return Err(StorageError::InUse {
            container_id: container_id.to_string(),
        });
    }
    let mut mounts = ContainerMounts {
        share_dir: share_dir.to_path_buf(),
        sandbox_id: sandbox_id.to_string(),
        container_id: container_id.to_string(),
        bundle: bundle.to_path_buf(),
        bundle_root: None,
    };
    if let Err(e) = mounts.populate(&root, &classes, rootfs) {
        mounts.release_share();
        mounts.release_bundle_rootfs();
        return Err(e);
    }
    tracing::debug!(
        sandbox_id,
        container_id,
        rootfs_mounted = mounts.rootfs_mounted(),
        "container storage in the share"
    );
    Ok(PreparedContainer {
        guest_spec_json,
        mounts,
    })
}

impl ContainerMounts {
    fn populate(
        &mut self,
        root: &str,
        classes: &[MountClass],
        rootfs: &[Mount],
    ) -> Result<(), StorageError> {
        let share = open_dir(&self.share_dir).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => StorageError::NoShare {
                path: self.share_dir.clone(),
            },
            _ => io_err("open", &self.share_dir)(e),
        })?;
        // Every source is checked before anything is mounted.
        let mut volumes = Vec::new();
        for class in classes {
            match class {
                MountClass::Volume(v) => volumes.push((v, open_source(v)?)),
                MountClass::HostOnly { source } => tracing::info!(
                    sandbox_id = %self.sandbox_id, container_id = %self.container_id,
                    source = %source.display(), "host-only bind left out of the guest spec"),
                MountClass::Guest | MountClass::PodShm => {}
            }
        }
        let root_fd = self.open_root(root, rootfs)?;
        with_writable_share(&self.share_dir, || {
            self.bind_into_share(&share, root_fd, volumes)
        })?
    }

    /// Makes `<share>/<cid>/{rootfs,volumes/*}` and binds the container's
    /// root and volumes onto them.
    fn bind_into_share(
        &self,
        share: &OwnedFd,
        root_fd: OwnedFd,
        volumes: Vec<(&Volume, (OwnedFd, bool))>,
    ) -> Result<(), StorageError> {
        let cpath = self.share_dir.join(&self.container_id);
        let cdir =
            fsops::ensure_dir(share, &self.container_id).map_err(io_err("create", &cpath))?;
        let target_path = cpath.join("rootfs");
        let target = fsops::ensure_dir(&cdir, "rootfs").map_err(io_err("create", &target_path))?;
        fsops::clone_mount(&root_fd, &target, true, ReadOnly::No)
            .map_err(io_err("bind the rootfs onto", &target_path))?;
        drop(root_fd);

        if volumes.is_empty() {
            return Ok(());
        }
        let vpath = cpath.join("volumes");
        let vdir = fsops::ensure_dir(&cdir, "volumes").map_err(io_err("create", &vpath))?;
        for (v, (src, is_dir)) in volumes {
            let tpath = vpath.join(&v.name);
            let target = if is_dir {
                fsops::ensure_dir(&vdir, &v.name)
            } else {
                fsops::ensure_file(&vdir, &v.name)
            }
            .map_err(io_err("create", &tpath))?;
            fsops::clone_mount(&src, &target, v.recursive, v.readonly)
                .map_err(io_err("bind a volume onto", &tpath))?;
        }
        Ok(())
    }

    /// The container's root, opened; containerd's rootfs mounts are mounted
    /// first when given.
    fn open_root(&mut self, root: &str, rootfs: &[Mount]) -> Result<OwnedFd, StorageError> {
        let invalid = |reason: String| StorageError::from(OciError::invalid("root.path", reason));
        let explain = |e: io::Error, what: &'static str, path: &Path| match e.raw_os_error() {
            Some(libc::ENOENT) => invalid(format!("{root} does not exist")),
            Some(libc::ENOTDIR) => invalid(format!("{root} is not a directory")),
            Some(libc::ELOOP) => invalid(format!("{root} passes through a symlink in the bundle")),
            Some(libc::EXDEV) => invalid(format!("{root} leaves the bundle")),
            _ => io_err(what, path)(e),
        };
        if Path::new(root).is_absolute() {
            if !rootfs.is_empty() {
                return Err(invalid(format!(
                    "{root} is absolute, but rootfs mounts go on a path in the bundle"
                )));
            }
            // CRI-O's storage root is host configuration, not workload
            // input: its symlinks (a graphroot on another disk) are followed.
            return open_dir(Path::new(root)).map_err(|e| explain(e, "open", Path::new(root)));
        }
        let rel = bundle_relative(root)?;
        let bundle_fd = open_dir(&self.bundle).map_err(io_err("open bundle", &self.bundle))?;
        let path = self.bundle.join(&rel);
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        drop(open_beneath(&bundle_fd, &rel, dir_flags).map_err(|e| explain(e, "open", &path))?);
        if !rootfs.is_empty() {
            self.bundle_root = Some(rel.clone());
            rootfs::mount_all(rootfs, &bundle_fd, &self.bundle, &rel)?;
        }
        // Opened again: the fd must name the mounted rootfs, not the
        // directory under it.
        open_beneath(&bundle_fd, &rel, dir_flags).map_err(|e| explain(e, "open", &path))
    }
}

/// A volume's host source, opened without following any symlink.
fn open_source(v: &Volume) -> Result<(OwnedFd, bool), StorageError> {
    let field = format!("mounts[{}].source", v.index);
    let src = v.source.display();
    let fd = fsops::open_no_symlinks(&v.source).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => {
            OciError::invalid(field, format!("source {src} passes through a symlink")).into()
        }
        Some(libc::ENOENT) => {
            OciError::invalid(field, format!("source {src} does not exist")).into()
        }
        Some(libc::ENOTDIR) => {
            OciError::invalid(field, format!("source {src} has a non-directory component")).into()
        }
        _ => io_err("open", &v.source)(e),
    })?;
    let is_dir = fsops::is_dir(&fd).map_err(io_err("stat", &v.source))?;
    Ok((fd, is_dir))
}
