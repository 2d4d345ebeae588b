//! Host facts `check` and `env` judge: virtualization, vhost devices, the
//! running kernel and the cgroup layout. Reading them is the only impure
//! part; the cgroup layout is parsed from a mountinfo text so it is tested
//! on fixtures.

use std::path::Path;

use crate::host_cgroup::CGROUP_ROOT;
use crate::vm::accel::HostVirt;
use crate::vm::vsock::VHOST_VSOCK_DEVICE;

pub use crate::network::{TUN_DEVICE, VHOST_NET_DEVICE};

/// Everything gathered from the host in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub virt: HostVirt,
    /// `/dev/vhost-vsock` exists (what the vsock chooser looks at).
    pub vhost_vsock: bool,
    /// ... and opens read-write (what reserving a CID needs).
    pub vhost_vsock_opens: bool,
    pub vhost_net: bool,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// `uname -r`.
    pub kernel_release: String,
    /// The running kernel's image is installed where the image builder
    /// looks for it.
    pub running_kernel_on_disk: bool,
    pub cgroup: CgroupLayout,
    /// systemd is PID 1 (sd_booted(3): `/run/systemd/system` exists).
    pub systemd_pid1: bool,
}

impl Host {
    pub fn probe() -> Host {
        let kernel_release = running_release();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // The same test the shim's host cgroup code uses for "unified".
        let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        Host {
            virt: HostVirt::probe(),
            vhost_vsock: Path::new(VHOST_VSOCK_DEVICE).exists(),
            vhost_vsock_opens: opens_rw(VHOST_VSOCK_DEVICE),
            vhost_net: Path::new(VHOST_NET_DEVICE).exists(),
            tun: Path::new(TUN_DEVICE).exists(),
            running_kernel_on_disk: kernel_image_installed(&kernel_release),
            kernel_release,
            cgroup: cgroup_layout(&mountinfo, unified),
            systemd_pid1: Path::new("/run/systemd/system").is_dir(),
        }
    }
}

fn opens_rw(path: &str) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}

/// The running kernel's release, as `uname -r` prints it.
pub fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// True when the image builder would find this release's kernel: the
/// places it looks, in its order.
pub fn kernel_image_installed(release: &str) -> bool {
    [
        format!("/lib/modules/{release}/vmlinuz"),
        format!("/boot/vmlinuz-{release}"),
    ]
    .iter()
    .any(|p| Path::new(p).is_file())
}

/// How cgroups are mounted under `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One v1 hierarchy per controller set.
    V1 { hierarchies: usize },
    /// The unified v2 tree at the root.
    V2,
    /// v1 controllers plus a v2 tree beside them (`.../unified`).
    Hybrid { hierarchies: usize },
    /// Nothing mounted.
    None,
}

/// Classifies the cgroup mounts of a `/proc/self/mountinfo` text;
/// `unified_root` says `/sys/fs/cgroup/cgroup.controllers` exists.
pub fn cgroup_layout(mountinfo: &str, unified_root: bool) -> CgroupLayout {
    if unified_root {
        return CgroupLayout::V2;
    }
    let (mut v1, mut v2) = (0, 0);
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split(' ').nth(4).unwrap_or_default();
        if !Path::new(mountpoint).starts_with(CGROUP_ROOT) {
            continue;
        }
        match right.split(' ').next() {
            Some("cgroup") => v1 += 1,
            Some("cgroup2") => v2 += 1,
            _ => {}
        }
    }
    match (v1, v2) {
        (0, 0) => CgroupLayout::None,
        (0, _) => CgroupLayout::V2,
        (n, 0) => CgroupLayout::V1 { hierarchies: n },
        (n, _) => CgroupLayout::Hybrid { hierarchies: n },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
25 30 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 25 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
50 30 0:40 / /mnt/elsewhere rw - cgroup cgroup rw,pids
";

    #[test]
    fn layouts() {
        assert_eq!(
            cgroup_layout(V1, false),
            CgroupLayout::V1 { hierarchies: 3 },
            "mounts outside /sys/fs/cgroup are not the host's layout"
        );
        let hybrid =
            format!("{V1}41 25 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(
            cgroup_layout(&hybrid, false),
            CgroupLayout::Hybrid { hierarchies: 3 }
        );
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_layout(v2, false), CgroupLayout::V2);
        assert_eq!(cgroup_layout("", true), CgroupLayout::V2);
        assert_eq!(cgroup_layout("garbage\n", false), CgroupLayout::None);
    }
}
