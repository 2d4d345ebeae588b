//! The pod's NICs on the QEMU command line: one `-netdev tap` on the fds of
//! a tap the shim made in the pod's network namespace, and one
//! `virtio-net-pci` with the CNI veth's MAC, per endpoint.
//!
//! - vhost-net where `/dev/vhost-net` exists (`vhost=on,vhostfd(s)=`): the
//!   host kernel moves the packets instead of QEMU's main loop;
//! - multiqueue when the VM boots with more than one vCPU: one tap queue
//!   (and vhost fd) per vCPU up to [`MAX_QUEUE_PAIRS`], `mq=on` and
//!   `vectors=2*queues+2` (a vector per rx and tx queue, one for the
//!   control queue, one for configuration changes), as Kata does; the guest
//!   driver uses one pair per online CPU by itself;
//! - an rx ring of [`RX_QUEUE_SIZE`] descriptors instead of 256: the only
//!   option of the sweep that was at least as fast in every round; the tx
//!   ring stays 256, the most QEMU takes on a tap backend;
//! - offloads: QEMU's virtio-net defaults are kept (checksum, TSO4/6 and
//!   mergeable rx buffers both ways): the taps are made with `IFF_VNET_HDR`,
//!   so QEMU sees a vnet header on the fd and sets the tap's offloads
//!   (`TUNSETOFFLOAD`) to what the guest negotiates. Turning them off cost
//!   up to 40 % host → pod. NETWORK.md has the sweep.
//!
//! Pure, like `cmdline`: the whole matrix is argv-tested.

use std::os::fd::RawFd;

/// Descriptors of each rx ring (QEMU's default is 256; 1024 is its most).
pub const RX_QUEUE_SIZE: u16 = 1024;

/// The most queue pairs a NIC gets, whatever the vCPU count: each costs a
/// tap fd (and a vhost fd and worker thread) and two MSI-X vectors.
pub const MAX_QUEUE_PAIRS: u32 = 8;

/// The queue pairs of a NIC in a VM booting with `vcpus` vCPUs.
pub fn queue_pairs(vcpus: u32) -> u32 {
    vcpus.clamp(1, MAX_QUEUE_PAIRS)
}

/// One guest NIC: virtio-net on a tap the shim opened in the pod's network
/// namespace (QEMU only inherits the fds, so it needs no privilege on the
/// netns), with the MAC of the CNI veth it stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    /// The tap's fds, one per queue pair (at least one).
    pub tap_fds: Vec<RawFd>,
    /// `/dev/vhost-net` fds, one per tap fd, where the host has the device;
    /// empty for QEMU's userspace virtio-net.
    pub vhost_fds: Vec<RawFd>,
    pub mac: String,
}

/// `a:b:c`, QEMU's list of fds.
fn fd_list(fds: &[RawFd]) -> String {
    fds.iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl NicDevice {
    /// The `-netdev` value of NIC `id`.
    fn netdev(&self, id: &str) -> String {
        let mut s = format!("tap,id={id}");
        // `fd=` takes one fd; more queues need `fds=` (QEMU derives the
        // queue count from it).
        if let [fd] = self.tap_fds.as_slice() {
            s.push_str(&format!(",fd={fd}"));
        } else {
            s.push_str(&format!(",fds={}", fd_list(&self.tap_fds)));
        }
        match self.vhost_fds.as_slice() {
            [] => s.push_str(",vhost=off"),
            [fd] => s.push_str(&format!(",vhost=on,vhostfd={fd}")),
            fds => s.push_str(&format!(",vhost=on,vhostfds={}", fd_list(fds))),
        }
        s
    }

    /// The `-device` value of NIC `id`.
    fn device(&self, id: &str) -> String {
        let mut s = format!("virtio-net-pci,netdev={id},mac={}", self.mac);
        let queues = self.tap_fds.len();
        if queues > 1 {
            s.push_str(&format!(",mq=on,vectors={}", 2 * queues + 2));
        }
        s.push_str(&format!(",rx_queue_size={RX_QUEUE_SIZE}"));
        // romfile= (empty): no iPXE option ROM; the guest boots by -kernel,
        // and the ROM would cost boot time and a package on the node.
        s.push_str(",romfile=");
        s
    }
}

/// The argv of the pod's NICs, in the order the guest will enumerate them.
pub fn nic_args(nics: &[NicDevice]) -> Vec<String> {
    let mut a = Vec::with_capacity(nics.len() * 4);
    for (i, nic) in nics.iter().enumerate() {
        let id = format!("net{i}");
        a.push("-netdev".to_string());
        a.push(nic.netdev(&id));
        a.push("-device".to_string());
        a.push(nic.device(&id));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(tap_fds: &[RawFd], vhost_fds: &[RawFd], mac: &str) -> NicDevice {
        NicDevice {
            tap_fds: tap_fds.to_vec(),
            vhost_fds: vhost_fds.to_vec(),
            mac: mac.into(),
        }
    }

    #[test]
    fn nics_get_a_tap_netdev_and_virtio_net_with_the_veth_mac() {
        let nics = [
            nic(&[9], &[], "0a:58:0a:58:00:05"),
            nic(&[11], &[12], "0a:58:0a:59:00:07"),
        ];
        assert_eq!(
            nic_args(&nics),
            [
                "-netdev",
                "tap,id=net0,fd=9,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,rx_queue_size=1024,romfile=",
                "-netdev",
                "tap,id=net1,fd=11,vhost=on,vhostfd=12",
                "-device",
                "virtio-net-pci,netdev=net1,mac=0a:58:0a:59:00:07,rx_queue_size=1024,romfile=",
            ]
        );
        assert!(nic_args(&[]).is_empty());
    }

    /// (tap fds, vhost fds, -netdev, -device): one queue, several, with and
    /// without vhost-net.
    #[test]
    fn multiqueue_and_vhost_matrix() {
        let mac = "0a:58:0a:58:00:05";
        let rows: [(&[RawFd], &[RawFd], &str, &str); 6] = [
            (
                &[3],
                &[],
                "tap,id=net0,fd=3,vhost=off",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,rx_queue_size=1024,romfile=",
            ),
            (
                &[3],
                &[4],
                "tap,id=net0,fd=3,vhost=on,vhostfd=4",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,rx_queue_size=1024,romfile=",
            ),
            (
                &[3, 5],
                &[],
                "tap,id=net0,fds=3:5,vhost=off",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,mq=on,vectors=6,rx_queue_size=1024,romfile=",
            ),
            (
                &[3, 5],
                &[4, 6],
                "tap,id=net0,fds=3:5,vhost=on,vhostfds=4:6",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,mq=on,vectors=6,rx_queue_size=1024,romfile=",
            ),
            (
                &[10, 11, 12, 13],
                &[],
                "tap,id=net0,fds=10:11:12:13,vhost=off",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,mq=on,vectors=10,rx_queue_size=1024,romfile=",
            ),
            (
                &[10, 11, 12, 13],
                &[20, 21, 22, 23],
                "tap,id=net0,fds=10:11:12:13,vhost=on,vhostfds=20:21:22:23",
                "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,mq=on,vectors=10,rx_queue_size=1024,romfile=",
            ),
        ];
        for (taps, vhosts, netdev, device) in rows {
            let args = nic_args(&[nic(taps, vhosts, mac)]);
            assert_eq!(
                args,
                ["-netdev", netdev, "-device", device],
                "{taps:?} {vhosts:?}"
            );
        }
    }

    #[test]
    fn one_queue_pair_per_boot_vcpu_within_bounds() {
        let rows = [(0, 1), (1, 1), (2, 2), (4, 4), (8, 8), (9, 8), (64, 8)];
        for (vcpus, pairs) in rows {
            assert_eq!(queue_pairs(vcpus), pairs, "{vcpus} vCPUs");
        }
    }
}
