// SPDX-License-Identifier: Apache-2.0 or BSD-3-Clause
//
// Added by the kata-rs project (vendor/README.md); not part of the 0.3.0
// release.

//! TX packets whose data the guest spread over several descriptors.
//!
//! virtio-vsock 0.10's `VsockPacket::from_tx_virtq_chain` accepts a header
//! and its data in one descriptor, or a header descriptor followed by one
//! data descriptor. Since Linux's "vsock/virtio: Allocate nonlinear SKBs for
//! handling large transmit buffers" (6.17, backported to stable kernels) a
//! guest sends a packet of more than 32 KiB on x86-64 as the header plus one
//! descriptor per page fragment; the virtio spec allows any layout. Such a
//! chain failed with `DescriptorLengthTooSmall` and was dropped, its bytes
//! lost, so the stream it belonged to stalled. Here the chain is copied
//! into one buffer instead, from which the caller builds the packet.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::PKT_HEADER_SIZE;
use vm_memory::{Address, Bytes, GuestMemory};

/// Offset of the little-endian `len` field in the packet header.
const LEN_OFFSET: usize = 24;

/// Why a chain could not be gathered.
#[derive(Debug, PartialEq, Eq)]
pub enum GatherError {
    /// A device-writable descriptor in a TX chain.
    WriteOnly,
    /// The header's `len` is above the device's TX buffer size.
    TooLong(u32),
    /// The descriptors hold fewer bytes than the header plus `len`.
    Short { have: usize, want: usize },
    /// A descriptor points outside guest memory.
    Memory,
}

/// Copies the header and `len` data bytes of a TX chain, over as many
/// descriptors as the guest used, into one buffer: `PKT_HEADER_SIZE`
/// header bytes, then the data. Reads no more than the packet needs, and
/// never more than `max_data_size` data bytes, whatever the descriptors
/// claim.
pub fn gather<M, T>(
    mem: &M,
    chain: DescriptorChain<T>,
    max_data_size: u32,
) -> Result<Vec<u8>, GatherError>
where
    M: GuestMemory,
    T: std::ops::Deref,
    T::Target: GuestMemory,
{
    let mut buf: Vec<u8> = Vec::with_capacity(PKT_HEADER_SIZE);
    let mut want = PKT_HEADER_SIZE;
    let mut parsed = false;
    for desc in chain {
        if desc.is_write_only() {
            return Err(GatherError::WriteOnly);
        }
        let take = (desc.len() as usize).min(want - buf.len());
        let at = buf.len();
        buf.resize(at + take, 0);
        mem.read_slice(&mut buf[at..], desc.addr())
            .map_err(|_| GatherError::Memory)?;
        if !parsed && buf.len() == PKT_HEADER_SIZE {
            parsed = true;
            let len = u32::from_le_bytes(
                buf[LEN_OFFSET..LEN_OFFSET + 4]
                    .try_into()
                    .expect("four bytes"),
            );
            if len > max_data_size {
                return Err(GatherError::TooLong(len));
            }
            want = PKT_HEADER_SIZE + len as usize;
            buf.reserve_exact(len as usize);
            // The rest of a descriptor that held the header may hold data.
            let more = (desc.len() as usize - take).min(want - buf.len());
            if more > 0 {
                let at = buf.len();
                buf.resize(at + more, 0);
                let addr = desc
                    .addr()
                    .checked_add(take as u64)
                    .ok_or(GatherError::Memory)?;
                mem.read_slice(&mut buf[at..], addr)
                    .map_err(|_| GatherError::Memory)?;
            }
        }
        if parsed && buf.len() == want {
            break;
        }
    }
    if buf.len() < want {
        return Err(GatherError::Short {
            have: buf.len(),
            want,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::{
        desc::{split::Descriptor as SplitDescriptor, RawDescriptor},
        mock::MockSplitQueue,
        Queue, QueueOwnedT,
    };
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn header(len: u32) -> [u8; PKT_HEADER_SIZE] {
        let mut h = [0u8; PKT_HEADER_SIZE];
        h[0] = 3; // src_cid
        h[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
        h
    }

    /// Lays `parts` out as one chain (each part its own descriptor, at
    /// 0x10000 + i * 0x10000) and gathers it.
    fn run(parts: &[Vec<u8>], writable: bool, max: u32) -> Result<Vec<u8>, GatherError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut descs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let addr = 0x10000 + (i as u64) * 0x10000;
            mem.write_slice(part, GuestAddress(addr)).unwrap();
            let mut flags = 0;
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            if writable && i > 0 {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                addr,
                part.len() as u32,
                flags,
                (i + 1) as u16,
            )));
        }
        vq.build_desc_chain(&descs).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        gather(&mem, chain, max)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn header_then_page_fragments_become_one_packet() {
        let body = data(40 * 1024);
        let mut parts = vec![header(body.len() as u32).to_vec()];
        parts.extend(body.chunks(4096).map(<[u8]>::to_vec));
        let got = run(&parts, false, 64 * 1024).unwrap();
        assert_eq!(&got[..PKT_HEADER_SIZE], &header(body.len() as u32)[..]);
        assert_eq!(&got[PKT_HEADER_SIZE..], &body[..]);
    }

    #[test]
    fn header_descriptor_carrying_data_is_read_on() {
        let body = data(10000);
        let mut first = header(body.len() as u32).to_vec();
        first.extend_from_slice(&body[..3000]);
        let parts = vec![first, body[3000..7000].to_vec(), body[7000..].to_vec()];
        let got = run(&parts, false, 64 * 1024).unwrap();
        assert_eq!(&got[PKT_HEADER_SIZE..], &body[..]);
    }

    #[test]
    fn descriptors_longer_than_the_packet_are_read_only_as_far_as_len() {
        let body = data(5000);
        let mut tail = body[4000..].to_vec();
        tail.extend_from_slice(&[0xee; 3000]);
        let parts = vec![header(5000).to_vec(), body[..4000].to_vec(), tail];
        let got = run(&parts, false, 64 * 1024).unwrap();
        assert_eq!(got.len(), PKT_HEADER_SIZE + 5000);
        assert_eq!(&got[PKT_HEADER_SIZE..], &body[..]);
    }

    #[test]
    fn hostile_chains_are_refused() {
        // More data claimed than the chain holds.
        let parts = vec![header(9000).to_vec(), data(4096), data(4096)];
        assert_eq!(
            run(&parts, false, 64 * 1024),
            Err(GatherError::Short {
                have: PKT_HEADER_SIZE + 8192,
                want: PKT_HEADER_SIZE + 9000
            })
        );
        // A length above the TX buffer is never allocated.
        let parts = vec![header(u32::MAX).to_vec(), data(4096)];
        assert_eq!(
            run(&parts, false, 64 * 1024),
            Err(GatherError::TooLong(u32::MAX))
        );
        // A header cut short.
        let parts = vec![header(0)[..20].to_vec()];
        assert!(matches!(
            run(&parts, false, 64 * 1024),
            Err(GatherError::Short { .. })
        ));
        // Device-writable descriptors have no place in TX.
        let parts = vec![header(4096).to_vec(), data(4096)];
        assert_eq!(
            run(&parts, true, 64 * 1024),
            Err(GatherError::WriteOnly)
        );
    }
}
