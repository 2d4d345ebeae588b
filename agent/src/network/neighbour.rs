//! Static neighbour entries (ARP for IPv4, NDP for IPv6) the shim copies
//! from the pod's namespace, so the guest does not have to resolve them.

use rtnetlink::packet_route::neighbour::NeighbourState;

use super::link;
use super::parse::{self, NeighborSpec};
use super::{Netlink, nl_error};
use crate::error::Result;

/// Adds every entry as permanent, replacing any entry for the same address
/// on the same interface. All devices are resolved before the first change.
pub(super) async fn add(nl: &Netlink, specs: &[NeighborSpec]) -> Result<()> {
    let links = link::links(nl).await?;
    let indexes = specs
        .iter()
        .enumerate()
        .map(|(i, n)| link::device_index(&links, &n.device, &format!("neighbors[{i}].device")))
        .collect::<Result<Vec<_>>>()?;
    for (n, index) in specs.iter().zip(indexes) {
        nl.handle
            .neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.lladdr)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                nl_error(
                    format!(
                        "adding neighbour {} lladdr {} on {}",
                        n.ip,
                        parse::format_mac(&n.lladdr),
                        n.device
                    ),
                    e,
                )
            })?;
    }
    Ok(())
}
