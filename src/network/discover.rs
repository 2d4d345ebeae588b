//! Discovery: which links of the pod's namespace become guest NICs, and
//! the addresses, routes and permanent neighbours the guest needs, read
//! over rtnetlink. The selection itself is pure (on netlink messages) so
//! that it can be tested without a namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Endpoint, NeighborInfo, NetworkError, RouteInfo, tap_name};

/// A usable link: its index in the namespace and what the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub endpoint: Endpoint,
}

/// Everything discovery found for the guest.
#[derive(Debug)]
pub(super) struct Found {
    pub links: Vec<Link>,
    pub routes: Vec<RouteInfo>,
    pub neighbors: Vec<NeighborInfo>,
}

/// A link looked up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Brief {
    pub index: u32,
    /// It is a tun/tap device.
    pub is_tun: bool,
}

/// Discovers the usable links of the handle's namespace (at `netns`, for
/// the messages) with their routes and permanent neighbours.
pub(super) async fn discover(handle: &Handle, netns: &Path) -> Result<Found, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::netlink("list links"))?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::netlink("list addresses"))?;
    let (links, skipped) = select_links(&links, &addrs);
    for (name, why) in &skipped {
        tracing::debug!(netns = %netns.display(), link = %name, why, "interface skipped");
    }
    if links.is_empty() {
        let found = if skipped.is_empty() {
            "nothing".to_string()
        } else {
            let each: Vec<String> = skipped
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            each.join(", ")
        };
        return Err(NetworkError::NoInterface {
            netns: netns.to_path_buf(),
            found,
        });
    }
    let names: HashMap<u32, &str> = links
        .iter()
        .map(|l| (l.index, l.endpoint.name.as_str()))
        .collect();

    let mut routes = Vec::new();
    for (family, query) in [
        ("IPv4", RouteMessageBuilder::<Ipv4Addr>::new().build()),
        ("IPv6", RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ] {
        let got: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(NetworkError::netlink(format!("list {family} routes")))?;
        routes.extend(got.iter().filter_map(|r| route_info(r, &names)));
    }
    let neighbors: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::netlink("list neighbours"))?;
    let neighbors = neighbors
        .iter()
        .filter_map(|n| neighbor_info(n, &names))
        .collect();
    Ok(Found {
        links,
        routes,
        neighbors,
    })
}

/// Looks a link up by name; `None` when there is none.
pub(super) async fn find(handle: &Handle, name: &str) -> Result<Option<Brief>, NetworkError> {
    let got = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    match got {
        Ok(Some(msg)) => Ok(Some(Brief {
            index: msg.header.index,
            is_tun: link_kind(&msg) == Some(&InfoKind::Tun),
        })),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("look link {name} up"))(e)),
    }
}

/// Splits the links into usable ones (numbered in index order, which names
/// their taps) and skipped ones with the reason.
pub(crate) fn select_links(
    links: &[LinkMessage],
    addrs: &[AddressMessage],
) -> (Vec<Link>, Vec<(String, &'static str)>) {
    let mut sorted: Vec<&LinkMessage> = links.iter().collect();
    sorted.sort_by_key(|l| l.header.index);
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for link in sorted {
        let index = link.header.index;
        let name = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_else(|| format!("link{index}"));
        if link.header.flags.contains(LinkFlags::Loopback)
            || link.header.link_layer_type == LinkLayerType::Loopback
        {
            skipped.push((name, "loopback"));
            continue;
        }
        let addresses: Vec<(IpAddr, u8)> = addrs
            .iter()
            .filter(|a| a.header.index == index)
            .filter_map(address_of)
            .filter(|(ip, _)| !is_ipv6_link_local(ip))
            .collect();
        if addresses.is_empty() {
            skipped.push((name, "no IP address"));
            continue;
        }
        if link.header.link_layer_type != LinkLayerType::Ether {
            skipped.push((name, "not an Ethernet link"));
            continue;
        }
        let Some(mac) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) if mac.len() == 6 => Some(format_mac(mac)),
            _ => None,
        }) else {
            skipped.push((name, "no MAC address"));
            continue;
        };
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        let tap = tap_name(usable.len());
        usable.push(Link {
            index,
            endpoint: Endpoint {
                name,
                mac,
                mtu,
                addresses,
                tap,
            },
        });
    }
    (usable, skipped)
}

/// The link's kind (`veth`, `tun`, …), when it has one.
fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// An address message's local address and prefix length. For IPv4 the
/// local address is `IFA_LOCAL` (`IFA_ADDRESS` is the peer on
/// point-to-point links); IPv6 has only `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<(IpAddr, u8)> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address).map(|ip| (ip, msg.header.prefix_len))
}

/// `fe80::/10`.
fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Link-local or multicast destinations: the guest's kernel makes its own.
fn is_local_junk(ip: &IpAddr) -> bool {
    is_ipv6_link_local(ip) || ip.is_multicast()
}

/// `aa:bb:cc:dd:ee:ff`.
pub(super) fn format_mac(bytes: &[u8]) -> String {
    let each: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    each.join(":")
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The route the guest needs, if this is one: a unicast route of the main
/// table through an endpoint, not made by the kernel (the guest's kernel
/// makes those from the addresses), not to link-local or multicast space.
pub(crate) fn route_info(msg: &RouteMessage, names: &HashMap<u32, &str>) -> Option<RouteInfo> {
    let h = &msg.header;
    let mut table = u32::from(h.table);
    let (mut dest, mut gateway, mut source, mut oif, mut metric) = (None, None, None, None, 0);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dest = Some(route_ip(a)?),
            RouteAttribute::Gateway(a) => gateway = Some(route_ip(a)?),
            RouteAttribute::PrefSource(a) => source = Some(route_ip(a)?),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            // A next hop of the other family, or several next hops: not
            // something the guest's route table takes as one entry.
            RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => {
                tracing::debug!(?msg, "route skipped: via or multipath");
                return None;
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.protocol == RouteProtocol::Kernel
        || h.kind != RouteType::Unicast
    {
        return None;
    }
    let device = names.get(&oif?)?.to_string();
    let dest = match dest {
        Some(ip) => ip,
        None if h.address_family == rtnetlink::packet_route::AddressFamily::Inet6 => {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    if is_local_junk(&dest) {
        return None;
    }
    Some(RouteInfo {
        dest,
        dest_prefix: h.destination_prefix_length,
        gateway,
        device,
        source,
        scope: u8::from(h.scope),
        metric,
    })
}

/// The neighbour the guest needs, if this is one: permanent, with an IP
/// and a link-layer address, on an endpoint.
pub(crate) fn neighbor_info(
    msg: &NeighbourMessage,
    names: &HashMap<u32, &str>,
) -> Option<NeighborInfo> {
    if msg.header.state != NeighbourState::Permanent {
        return None;
    }
    let device = names.get(&msg.header.ifindex)?.to_string();
    let ip = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let lladdr = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if !l.is_empty() => Some(format_mac(l)),
        _ => None,
    })?;
    Some(NeighborInfo { ip, device, lladdr })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteScope;

    use super::*;

    fn route(
        dest: Option<(&str, u8)>,
        gateway: Option<&str>,
        protocol: RouteProtocol,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
        m.header.table = 254;
        m.header.protocol = protocol;
        m.header.kind = RouteType::Unicast;
        m.header.scope = RouteScope::Universe;
        if let Some((d, len)) = dest {
            m.header.destination_prefix_length = len;
            let ip: IpAddr = d.parse().expect("test address");
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        }
        if let Some(g) = gateway {
            let ip: IpAddr = g.parse().expect("test address");
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(ip)));
        }
        m.attributes.push(RouteAttribute::Oif(2));
        m
    }

    #[test]
    fn network_routes_keep_defaults_and_drop_kernel_foreign_and_link_local() {
        let names: HashMap<u32, &str> = [(2, "eth0")].into();
        let default = route_info(&route(None, Some("10.0.0.1"), RouteProtocol::Boot), &names)
            .expect("the default route is kept");
        assert_eq!(
            (default.dest, default.dest_prefix),
            ("0.0.0.0".parse().expect("ip"), 0)
        );
        assert_eq!(default.device, "eth0");
        assert!(
            route_info(
                &route(Some(("10.0.0.0", 24)), None, RouteProtocol::Kernel),
                &names
            )
            .is_none()
        );
        let mut foreign = route(
            Some(("10.1.0.0", 16)),
            Some("10.0.0.1"),
            RouteProtocol::Static,
        );
        foreign
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        foreign.attributes.push(RouteAttribute::Oif(3));
        assert!(route_info(&foreign, &names).is_none());
        let mut v6 = route(Some(("fe80::", 64)), None, RouteProtocol::Boot);
        v6.header.address_family = rtnetlink::packet_route::AddressFamily::Inet6;
        assert!(route_info(&v6, &names).is_none());
        let mut other_table = route(None, Some("10.0.0.1"), RouteProtocol::Boot);
        other_table.header.table = 100;
        assert!(route_info(&other_table, &names).is_none());
    }

    #[test]
    fn network_neighbors_keep_only_permanent_entries_on_endpoints() {
        let names: HashMap<u32, &str> = [(2, "eth0")].into();
        let neigh = |state, ifindex| {
            let mut m = NeighbourMessage::default();
            m.header.state = state;
            m.header.ifindex = ifindex;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    "10.0.0.1".parse().expect("ip"),
                )));
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![
                2, 0, 0, 0, 0, 0xab,
            ]));
            m
        };
        let n = neighbor_info(&neigh(NeighbourState::Permanent, 2), &names).expect("kept");
        assert_eq!(
            (n.device.as_str(), n.lladdr.as_str()),
            ("eth0", "02:00:00:00:00:ab")
        );
        assert!(neighbor_info(&neigh(NeighbourState::Reachable, 2), &names).is_none());
        assert!(neighbor_info(&neigh(NeighbourState::Permanent, 3), &names).is_none());
    }
}
