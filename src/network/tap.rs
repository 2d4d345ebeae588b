//! The taps QEMU's NICs use: creation through `/dev/net/tun` in the current
//! thread's namespace (not persistent: a tap vanishes with its last fd),
//! its MTU and link state over netlink, deletion for the crash clean-up,
//! and the optional `/dev/vhost-net` fd.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rtnetlink::{Handle, LinkUnspec};

use super::NetworkError;

/// The tun/tap clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// The vhost-net device.
pub const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

nix::ioctl_readwrite_bad!(
    /// `TUNSETIFF`: attach the fd to a new tun/tap named in the `ifreq`; the
    /// kernel writes the final name back.
    tun_set_iff,
    libc::TUNSETIFF,
    libc::ifreq
);

/// Opens a character device read-write (std sets `O_CLOEXEC`).
fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Creates the tap `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) in the
/// current thread's network namespace with `queues` queues, and returns one
/// fd per queue. Fails with [`NetworkError::TapExists`] if any link has that
/// name: `IFF_TUN_EXCL` on the first queue keeps us from attaching to a
/// persistent tap someone left behind. No `TUNSETPERSIST`: the tap goes
/// away with the last fd on it. More than one queue makes an
/// `IFF_MULTI_QUEUE` tap, each further fd attached to it by name (QEMU's
/// virtio-net multiqueue: one queue pair per fd, see `vm::qemu::nic`).
pub(super) fn create(name: &str, queues: u32) -> Result<Vec<OwnedFd>, NetworkError> {
    let queues = queues.max(1);
    let mut fds = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // Only the first queue creates the tap; the others join it.
        if q == 0 {
            flags |= libc::IFF_TUN_EXCL;
        }
        fds.push(open_queue(name, flags)?);
    }
    Ok(fds)
}

/// One `TUNSETIFF` on a new `/dev/net/tun` fd with `flags`.
fn open_queue(name: &str, flags: libc::c_int) -> Result<OwnedFd, NetworkError> {
    let err = |step: &'static str| {
        move |source: io::Error| NetworkError::Tap {
            name: name.to_string(),
            step,
            source,
        }
    };
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of
    // integers, addresses and pointers); all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.as_bytes().contains(&0) {
        return Err(err("name it")(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an interface name has 1 to 15 bytes and no NUL",
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // ifr_flags is a C short holding bits: IFF_TUN_EXCL is its sign bit.
    let flags = u16::try_from(flags).expect("the tap flags fit in the 16-bit ifr_flags");
    req.ifr_ifru.ifru_flags = libc::c_short::from_ne_bytes(flags.to_ne_bytes());

    let file = open_rw(Path::new(TUN_DEVICE)).map_err(err("open /dev/net/tun"))?;
    // SAFETY: the fd is an open `/dev/net/tun` for the whole call; `req` is
    // a valid, NUL-terminated `ifreq` that the kernel reads and writes back
    // within the call and that outlives it; no other reference to it exists.
    match unsafe { tun_set_iff(file.as_raw_fd(), &mut req) } {
        Ok(_) => Ok(OwnedFd::from(file)),
        Err(nix::errno::Errno::EBUSY) => Err(NetworkError::TapExists {
            name: name.to_string(),
        }),
        Err(e) => Err(err("TUNSETIFF")(e.into())),
    }
}

/// The index of the link `name` in the handle's namespace.
pub(super) async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    match super::discover::find(handle, name).await? {
        Some(link) => Ok(link.index),
        None => Err(NetworkError::Tap {
            name: name.to_string(),
            step: "find it after creation",
            source: io::Error::from(io::ErrorKind::NotFound),
        }),
    }
}

/// Sets the tap's MTU and brings it up.
pub(super) async fn set_mtu_up(
    handle: &Handle,
    name: &str,
    index: u32,
    mtu: u32,
) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(NetworkError::netlink(format!(
            "set MTU {mtu} and up on {name}"
        )))
}

/// Deletes the tap (for a tap QEMU still holds after a shim crash).
pub(super) async fn delete(handle: &Handle, name: &str, index: u32) -> Result<(), NetworkError> {
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(NetworkError::netlink(format!("delete link {name}")))
}

/// Opens `/dev/vhost-net` for one queue pair of a NIC.
pub(super) fn open_vhost_net() -> Result<OwnedFd, NetworkError> {
    open_vhost_net_at(Path::new(VHOST_NET_DEVICE))
}

/// Opens the vhost-net device at `path`.
pub(super) fn open_vhost_net_at(path: &Path) -> Result<OwnedFd, NetworkError> {
    open_rw(path)
        .map(OwnedFd::from)
        .map_err(|source| NetworkError::VhostNet {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_vhost_net_absent_device_is_a_host_error_naming_it() {
        let e = open_vhost_net_at(Path::new("/nonexistent/vhost-net")).expect_err("absent");
        assert!(matches!(e, NetworkError::VhostNet { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/vhost-net"), "{e}");
        assert!(!e.is_bad_input());
    }
}
