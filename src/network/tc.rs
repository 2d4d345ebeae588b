//! The tc plumbing between a veth and its tap: an `ingress` qdisc
//! (`ffff:`) on each, and on each a `u32` match-all filter (one all-zero
//! key: `match u32 0 0`) for every protocol with
//! `action mirred egress redirect` to the other device. Equivalent to
//!
//! ```text
//! tc qdisc add dev eth0 ingress
//! tc filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 \
//!     action mirred egress redirect dev tap0_kata
//! ```
//!
//! Removing the ingress qdisc removes its filters.

use rtnetlink::Handle;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};

use super::NetworkError;

/// `ETH_P_ALL`, every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle, `ffff:0`, which its filters name as parent.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Adds an ingress qdisc to the link (fails if it has one already).
pub(super) async fn add_ingress(
    handle: &Handle,
    name: &str,
    index: u32,
) -> Result<(), NetworkError> {
    handle
        .qdisc()
        .add(ifindex(index))
        .ingress()
        .execute()
        .await
        .map_err(NetworkError::netlink(format!(
            "add an ingress qdisc on {name}"
        )))
}

/// Redirects everything arriving at `from` to egress of `to`.
pub(super) async fn redirect(
    handle: &Handle,
    (from_name, from): (&str, u32),
    (to_name, to): (&str, u32),
) -> Result<(), NetworkError> {
    let what = || format!("add a filter redirecting {from_name} ingress to {to_name}");
    handle
        .traffic_filter(ifindex(from))
        .add()
        .parent(INGRESS_HANDLE)
        // The kernel compares the filter's protocol, the low 16 bits of
        // tcm_info, with skb->protocol as is: in network byte order (tc's
        // `protocol all` sends htons(ETH_P_ALL)). rtnetlink stores the value
        // unconverted, so it gets the big-endian form.
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(NetworkError::netlink(what()))?
        .execute()
        .await
        .map_err(NetworkError::netlink(what()))
}

/// Deletes the link's ingress qdisc, and with it its filters.
pub(super) async fn del_ingress(handle: &Handle, index: u32) -> Result<(), NetworkError> {
    let mut req = handle.qdisc().del(ifindex(index));
    let msg = req.message_mut();
    msg.header.parent = TcHandle::INGRESS;
    msg.header.handle = TcHandle::from(INGRESS_HANDLE);
    msg.attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    req.execute().await.map_err(NetworkError::netlink(format!(
        "delete the ingress qdisc of link {index}"
    )))
}

/// True when a delete failed only because there was nothing to delete.
pub(super) fn is_absent(e: &NetworkError) -> bool {
    let NetworkError::Netlink {
        source: rtnetlink::Error::NetlinkError(msg),
        ..
    } = e
    else {
        return false;
    };
    let errno = -msg.raw_code();
    // ENOENT: no such qdisc; EINVAL: the ingress slot holds none.
    errno == libc::ENOENT || errno == libc::EINVAL || errno == libc::ENODEV
}

/// Netlink's signed interface index.
fn ifindex(index: u32) -> i32 {
    i32::try_from(index).expect("kernel interface indexes are positive i32")
}
