//! The sandbox share: mounting `kataShared` at the share mount point at boot.
//!
//! `agent.shared_fs=virtiofs` mounts the virtio-fs tag, `9p` the virtio-9p
//! tag, `none` nothing. The device may still be probing when the agent gets
//! here, so the mount is retried until `agent.device_timeout`. Failure is
//! not fatal: the caller logs it and guest details report no share.

use std::path::Path;
use std::time::Duration;

use kata_agent_protocol::guest::SHARED_FS_TAG;
use nix::mount::{MsFlags, mount};

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
}
