//! containerd's rootfs mounts (`CreateTaskRequest.rootfs`) applied on
//! `<bundle>/rootfs` the way containerd's own mount package applies them:
//! options split into `MS_*` flags, propagation flags and a data string;
//! propagation set after the mount; a read-only bind remounted read-only.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::StorageError;
use crate::mounts::open_beneath;
use crate::oci::OciError;

/// One rootfs mount's options, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: String,
}

/// Parses mount(8)-style options; `Err` names an unsupported one.
pub(super) fn parse_options(options: &[String]) -> Result<MountOptions, String> {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        // (clears, flag), as containerd's table.
        let known = match o.as_str() {
            "async" => Some((true, MsFlags::MS_SYNCHRONOUS)),
            "atime" => Some((true, MsFlags::MS_NOATIME)),
            "bind" => Some((false, MsFlags::MS_BIND)),
            "defaults" => Some((false, MsFlags::empty())),
            "dev" => Some((true, MsFlags::MS_NODEV)),
            "diratime" => Some((true, MsFlags::MS_NODIRATIME)),
            "dirsync" => Some((false, MsFlags::MS_DIRSYNC)),
            "exec" => Some((true, MsFlags::MS_NOEXEC)),
            "mand" => Some((false, MsFlags::MS_MANDLOCK)),
            "noatime" => Some((false, MsFlags::MS_NOATIME)),
            "nodev" => Some((false, MsFlags::MS_NODEV)),
            "nodiratime" => Some((false, MsFlags::MS_NODIRATIME)),
            "noexec" => Some((false, MsFlags::MS_NOEXEC)),
            "nomand" => Some((true, MsFlags::MS_MANDLOCK)),
            "norelatime" => Some((true, MsFlags::MS_RELATIME)),
            "nostrictatime" => Some((true, MsFlags::MS_STRICTATIME)),
            "nosuid" => Some((false, MsFlags::MS_NOSUID)),
            "rbind" => Some((false, MsFlags::MS_BIND | MsFlags::MS_REC)),
            "relatime" => Some((false, MsFlags::MS_RELATIME)),
            "remount" => Some((false, MsFlags::MS_REMOUNT)),
            "ro" => Some((false, MsFlags::MS_RDONLY)),
            "rw" => Some((true, MsFlags::MS_RDONLY)),
            "strictatime" => Some((false, MsFlags::MS_STRICTATIME)),
            "suid" => Some((true, MsFlags::MS_NOSUID)),
            "sync" => Some((false, MsFlags::MS_SYNCHRONOUS)),
            _ => None,
        };
        let prop = match o.as_str() {
            "private" => Some(MsFlags::MS_PRIVATE),
            "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => Some(MsFlags::MS_SHARED),
            "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => Some(MsFlags::MS_SLAVE),
            "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => Some(MsFlags::MS_UNBINDABLE),
            "runbindable" => Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            _ => None,
        };
        match (known, prop) {
            (Some((true, f)), _) => flags.remove(f),
            (Some((false, f)), _) => flags.insert(f),
            (None, Some(p)) => propagation.insert(p),
            (None, None) if o == "loop" => {
                return Err("loop devices are not supported".to_string());
            }
            (None, None) => data.push(o.as_str()),
        }
    }
    Ok(MountOptions {
        flags,
        propagation,
        data: data.join(","),
    })
}

fn proc_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `m.target` as a path relative to the rootfs (containerd 2 may name a
/// subdirectory); empty for the rootfs itself.
fn sub_target(index: usize, target: &str) -> Result<PathBuf, StorageError> {
    let rel: PathBuf = Path::new(target)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.components().any(|c| c == Component::ParentDir) {
        return Err(OciError::invalid(
            format!("rootfs[{index}].target"),
            format!("target {target} has a `..` component"),
        )
        .into());
    }
    Ok(rel)
}

/// Mounts `mounts`, in order, on `<bundle>/<rel>`. Whatever was mounted
/// before a failure stays for the caller's cleanup.
pub(super) fn mount_all(
    mounts: &[Mount],
    bundle_fd: &OwnedFd,
    bundle: &Path,
    rel: &Path,
) -> Result<(), StorageError> {
    let root_path = bundle.join(rel);
    for (index, m) in mounts.iter().enumerate() {
        let opts = parse_options(&m.options)
            .map_err(|r| OciError::invalid(format!("rootfs[{index}].options"), r))?;
        let sub = sub_target(index, &m.target)?;
        let target = root_path.join(&sub);
        let fail = |source: std::io::Error| StorageError::Rootfs {
            index,
            fstype: m.type_.clone(),
            target: target.clone(),
            source,
        };
        // Each step reopens the target: the fd must name the mount on top
        // (the rootfs so far), and nothing under the image is followed.
        let open_target = || -> std::io::Result<OwnedFd> {
            let root = open_beneath(bundle_fd, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            if sub.as_os_str().is_empty() {
                Ok(root)
            } else {
                open_beneath(&root, &sub, OFlag::O_PATH | OFlag::O_DIRECTORY)
            }
        };
        let mut flags = opts.flags;
        if m.type_ == "bind" {
            flags.insert(MsFlags::MS_BIND);
        }
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        if !flags.contains(MsFlags::MS_REMOUNT) || data.is_some() {
            let t = open_target().map_err(fail)?;
            let source = (!m.source.is_empty()).then_some(m.source.as_str());
            nix::mount::mount(source, &proc_fd(&t), Some(m.type_.as_str()), flags, data)
                .map_err(|e| fail(e.into()))?;
        }
        if !opts.propagation.is_empty() {
            let t = open_target().map_err(fail)?;
            nix::mount::mount(
                None::<&str>,
                &proc_fd(&t),
                None::<&str>,
                opts.propagation,
                None::<&str>,
            )
            .map_err(|e| fail(e.into()))?;
        }
        // A bind ignores MS_RDONLY on the first call.
        if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
            let t = open_target().map_err(fail)?;
            nix::mount::mount(
                None::<&str>,
                &proc_fd(&t),
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| fail(e.into()))?;
        }
        tracing::debug!(index, fstype = %m.type_, target = %target.display(), "rootfs mount");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Result<MountOptions, String> {
        parse_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_options_like_containerd() {
        let cases: Vec<(&[&str], MsFlags, MsFlags, &str)> = vec![
            (&[], MsFlags::empty(), MsFlags::empty(), ""),
            (
                &["rbind", "ro"],
                MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY,
                MsFlags::empty(),
                "",
            ),
            (
                &["ro", "rw", "bind"],
                MsFlags::MS_BIND,
                MsFlags::empty(),
                "",
            ),
            (
                &[
                    "index=off",
                    "lowerdir=/a:/b",
                    "upperdir=/u",
                    "workdir=/w",
                    "nosuid",
                    "nodev",
                ],
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                MsFlags::empty(),
                "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w",
            ),
            (
                &["noexec", "exec", "suid", "nosuid", "defaults"],
                MsFlags::MS_NOSUID,
                MsFlags::empty(),
                "",
            ),
            (
                &["rbind", "rprivate"],
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                "",
            ),
            (
                &["remount", "ro", "size=1m"],
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                MsFlags::empty(),
                "size=1m",
            ),
            (&["slave"], MsFlags::empty(), MsFlags::MS_SLAVE, ""),
        ];
        for (o, flags, prop, data) in cases {
            let got = opts(o).expect("parse");
            assert_eq!(
                got,
                MountOptions {
                    flags,
                    propagation: prop,
                    data: data.to_string()
                },
                "{o:?}"
            );
        }
        assert!(opts(&["loop", "ro"]).expect_err("loop").contains("loop"));
    }

    #[test]
    fn sub_targets() {
        assert_eq!(sub_target(0, "").expect("empty"), PathBuf::new());
        assert_eq!(sub_target(0, "/").expect("root"), PathBuf::new());
        assert_eq!(
            sub_target(0, "/var/lib/x").expect("sub"),
            PathBuf::from("var/lib/x")
        );
        let e = sub_target(2, "/a/../../etc").expect_err("dotdot");
        assert!(
            e.to_string().starts_with("invalid rootfs[2].target:"),
            "{e}"
        );
    }
}
