//! Pod network discovery, the pure part (`network::discover`): which of
//! the namespace's links, routes and neighbours reach the guest, from
//! structurally random netlink messages; the agent payloads built from
//! them (`PodNetwork`); and the sandbox spec's network namespace choice
//! (`sandbox::network::pod_netns`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use serde_json::{Value, json};

use super::{JSON_TOKENS, Rng, Tally, mutate_text, run, show};
use crate::error::Error;
use crate::network::discover::{neighbor_info, route_info, select_links};
use crate::network::{NeighborInfo, PodNetwork, RouteInfo};
use crate::sandbox::network::{PodNetns, pod_netns};

fn ip(rng: &mut Rng) -> IpAddr {
    match rng.below(8) {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.below(4) as u8)),
        1 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        2 => IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
        3 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        4 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, rng.below(4) as u16)),
        5 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
        6 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        _ => IpAddr::V6(Ipv6Addr::from(
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
        )),
    }
}

/// A link with the given index (the kernel's indexes are unique).
fn link(rng: &mut Rng, index: u32) -> LinkMessage {
    let mut l = LinkMessage::default();
    l.header.index = index;
    l.header.link_layer_type = *rng.pick(&[
        LinkLayerType::Ether,
        LinkLayerType::Ether,
        LinkLayerType::Loopback,
        LinkLayerType::Ppp,
        LinkLayerType::from(0xfffe_u16),
    ]);
    if rng.one_in(6) {
        l.header.flags = LinkFlags::Loopback;
    }
    if !rng.one_in(4) {
        let name = rng
            .pick(&["eth0", "eth1", "lo", "", "\u{e9}th\u{0}"])
            .to_string();
        l.attributes.push(LinkAttribute::IfName(name));
    }
    for _ in 0..rng.below(3) {
        let mac = if rng.one_in(3) {
            rng.bytes(8)
        } else {
            (0..6).map(|_| rng.next() as u8).collect()
        };
        l.attributes.push(LinkAttribute::Address(mac));
    }
    if rng.one_in(2) {
        l.attributes.push(LinkAttribute::Mtu(*rng.pick(&[
            0,
            68,
            1500,
            9000,
            u32::MAX,
        ])));
    }
    l
}

fn address(rng: &mut Rng) -> AddressMessage {
    let mut a = AddressMessage::default();
    a.header.index = 1 + rng.below(5) as u32;
    a.header.prefix_len = rng.next() as u8;
    for _ in 0..rng.below(3) {
        let attr = if rng.one_in(2) {
            AddressAttribute::Local(ip(rng))
        } else {
            AddressAttribute::Address(ip(rng))
        };
        a.attributes.push(attr);
    }
    a
}

fn route_addr(rng: &mut Rng) -> RouteAddress {
    if rng.one_in(10) {
        RouteAddress::Other(rng.bytes(6))
    } else {
        RouteAddress::from(ip(rng))
    }
}

fn route(rng: &mut Rng) -> RouteMessage {
    let mut r = RouteMessage::default();
    r.header.address_family = AddressFamily::from(*rng.pick(&[2u8, 10, 0, 7]));
    r.header.destination_prefix_length = *rng.pick(&[0, 8, 24, 32, 64, 128, 255]);
    r.header.table = *rng.pick(&[
        RouteHeader::RT_TABLE_MAIN,
        RouteHeader::RT_TABLE_MAIN,
        RouteHeader::RT_TABLE_MAIN,
        255,
        100,
        0,
    ]);
    r.header.protocol = RouteProtocol::from(*rng.pick(&[2u8, 3, 4, 16, 0, 200]));
    r.header.kind = RouteType::from(*rng.pick(&[1u8, 1, 1, 1, 2, 3, 7, 0]));
    r.header.scope = RouteScope::from(*rng.pick(&[0u8, 253, 254, 200]));
    if !rng.one_in(4) {
        r.attributes
            .push(RouteAttribute::Oif(1 + rng.below(5) as u32));
    }
    for _ in 0..rng.below(6) {
        let attr = match rng.below(8) {
            0 => RouteAttribute::Destination(route_addr(rng)),
            1 => RouteAttribute::Gateway(route_addr(rng)),
            2 => RouteAttribute::PrefSource(route_addr(rng)),
            3 | 4 => RouteAttribute::Oif(rng.below(6) as u32),
            5 => RouteAttribute::Priority(rng.next() as u32),
            6 => RouteAttribute::Table(*rng.pick(&[254u32, 255, 0x1_00fe, 100])),
            _ => RouteAttribute::MultiPath(Vec::new()),
        };
        r.attributes.push(attr);
    }
    r
}

fn neighbour(rng: &mut Rng) -> NeighbourMessage {
    let mut n = NeighbourMessage::default();
    n.header.ifindex = rng.below(6) as u32;
    n.header.state = *rng.pick(&[
        NeighbourState::Permanent,
        NeighbourState::Permanent,
        NeighbourState::Reachable,
        NeighbourState::Stale,
    ]);
    if !rng.one_in(3) {
        n.header.ifindex = 1 + rng.below(5) as u32;
        let ip = NeighbourAddress::Inet6(Ipv6Addr::from(u128::from(rng.next())));
        n.attributes.push(NeighbourAttribute::Destination(ip));
        n.attributes.push(NeighbourAttribute::LinkLayerAddress(
            (0..6).map(|_| rng.next() as u8).collect(),
        ));
    }
    for _ in 0..rng.below(4) {
        let attr = match rng.below(4) {
            0 => NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::from(
                rng.next() as u32,
            ))),
            1 => NeighbourAttribute::Destination(NeighbourAddress::Other(rng.bytes(4))),
            _ => NeighbourAttribute::LinkLayerAddress(rng.bytes(8)),
        };
        n.attributes.push(attr);
    }
    n
}

fn is_mac(s: &str, len: usize) -> bool {
    s.len() == 3 * len - 1
        && s.split(':').count() == len
        && s.split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

#[test]
fn discovery_selects_only_usable_links_routes_and_neighbours() {
    let name = "discovery_selects_only_usable_links_routes_and_neighbours";
    let mut tally = Tally::default();
    run(
        name,
        0x0e70_0000_0000_0013,
        20_000,
        Duration::from_secs(2),
        |rng| {
            // Unique indexes in random order, some without a link.
            let mut indexes: Vec<u32> = (1..=5).collect();
            for i in (1..indexes.len()).rev() {
                indexes.swap(i, rng.below(i + 1));
            }
            indexes.truncate(rng.below(6));
            let links: Vec<LinkMessage> = indexes.iter().map(|&i| link(rng, i)).collect();
            // Addresses mostly on the links, some on no link at all.
            let mut addrs: Vec<AddressMessage> = (0..rng.below(3)).map(|_| address(rng)).collect();
            for &i in &indexes {
                if !rng.one_in(4) {
                    let mut a = address(rng);
                    a.header.index = i;
                    addrs.push(a);
                }
            }
            let (usable, skipped) = select_links(&links, &addrs);
            assert_eq!(usable.len() + skipped.len(), links.len());
            for (_, why) in &skipped {
                tally.add(why);
            }
            for (name, why) in &skipped {
                assert!(
                    [
                        "loopback",
                        "no IP address",
                        "not an Ethernet link",
                        "no MAC address"
                    ]
                    .contains(why),
                    "{name}: {why}"
                );
            }
            for (i, l) in usable.iter().enumerate() {
                tally.add("usable");
                let e = &l.endpoint;
                assert_eq!(e.tap, format!("tap{i}_kata"));
                assert!(is_mac(&e.mac, 6), "{:?}", e.mac);
                assert!(!e.addresses.is_empty());
                let msg = links
                    .iter()
                    .find(|m| m.header.index == l.index)
                    .expect("a source link");
                assert_eq!(msg.header.link_layer_type, LinkLayerType::Ether);
                assert!(!msg.header.flags.contains(LinkFlags::Loopback));
                for (a, _) in &e.addresses {
                    assert!(
                        !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80),
                        "{a}"
                    );
                }
            }
            assert!(
                usable.windows(2).all(|w| w[0].index <= w[1].index),
                "not in index order"
            );
            let names: HashMap<u32, &str> = usable
                .iter()
                .map(|l| (l.index, l.endpoint.name.as_str()))
                .collect();
            let routes: Vec<RouteInfo> = (0..rng.below(6))
                .map(|_| route(rng))
                .filter_map(|r| {
                    let got = route_info(&r, &names);
                    if let Some(info) = &got {
                        tally.add("route");
                        assert_ne!(r.header.protocol, RouteProtocol::Kernel, "{r:?}");
                        assert_eq!(r.header.kind, RouteType::Unicast, "{r:?}");
                        assert!(!info.dest.is_multicast(), "{info:?}");
                        assert!(names.values().any(|n| *n == info.device), "{info:?}");
                        assert!(
                            !r.attributes.iter().any(|a| matches!(
                                a,
                                RouteAttribute::MultiPath(_) | RouteAttribute::Via(_)
                            )),
                            "{r:?}"
                        );
                    }
                    got
                })
                .collect();
            let neighbors: Vec<NeighborInfo> = (0..rng.below(4))
                .map(|_| neighbour(rng))
                .filter_map(|n| {
                    let got = neighbor_info(&n, &names);
                    if let Some(info) = &got {
                        tally.add("neighbour");
                        assert_eq!(n.header.state, NeighbourState::Permanent);
                        assert_eq!(names.get(&n.header.ifindex), Some(&info.device.as_str()));
                        let len = info.lladdr.len().div_ceil(3);
                        assert!(len > 0 && is_mac(&info.lladdr, len), "{:?}", info.lladdr);
                    }
                    got
                })
                .collect();
            // The agent's payloads: parseable addresses, the same counts.
            let net = PodNetwork {
                netns: PathBuf::from("/run/netns/fuzz"),
                endpoints: usable.iter().map(|l| l.endpoint.clone()).collect(),
                routes,
                neighbors,
            };
            for (iface, e) in net.interfaces().iter().zip(&net.endpoints) {
                assert_eq!((iface.name.as_str(), iface.mtu), (e.name.as_str(), e.mtu));
                for a in &iface.addresses {
                    assert!(
                        a.address.parse::<IpAddr>().is_ok() && a.prefix_len <= 255,
                        "{a:?}"
                    );
                }
            }
            for r in net.routes() {
                let (dest, prefix) = r.dest.split_once('/').expect("dest/prefix");
                assert!(
                    dest.parse::<IpAddr>().is_ok() && prefix.parse::<u8>().is_ok(),
                    "{r:?}"
                );
                assert!(
                    r.gateway.is_empty() || r.gateway.parse::<IpAddr>().is_ok(),
                    "{r:?}"
                );
            }
            assert_eq!(net.neighbors().len(), net.neighbors.len());
            assert_eq!(net.record().links.len(), net.endpoints.len());
        },
    );
    let all = [
        "usable",
        "route",
        "neighbour",
        "loopback",
        "no IP address",
        "not an Ethernet link",
        "no MAC address",
    ];
    tally.require(name, &all);
}

const SPEC: &str = r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},
{"type":"network","path":"/var/run/netns/cni-1234"},{"type":"mount"}]}}"#;

#[test]
fn pod_network_namespace_choice_from_random_specs() {
    let name = "pod_network_namespace_choice_from_random_specs";
    let mut tally = Tally::default();
    run(
        name,
        0x0e70_0000_0000_0014,
        20_000,
        Duration::from_secs(1),
        |rng| {
            let input = mutate_text(rng, SPEC.as_bytes(), &JSON_TOKENS);
            let Ok(spec) = serde_json::from_slice::<Value>(&input) else {
                return;
            };
            let mut ann = BTreeMap::new();
            if rng.one_in(4) {
                let v = rng.pick(&["true", "TRUE", "false", "", "1"]).to_string();
                ann.insert("io.kubernetes.cri-o.HostNetwork".to_string(), v);
            }
            let host_ann = ann.values().any(|v| v.eq_ignore_ascii_case("true"));
            let net = spec
                .pointer("/linux/namespaces")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|n| n["type"] == "network"))
                .cloned();
            match pod_netns(&spec, &ann) {
                Ok(PodNetns::Path(p)) => {
                    tally.add("path");
                    assert!(!host_ann && p.is_absolute(), "{p:?}");
                    assert_eq!(
                        net.as_ref().map(|n| &n["path"]),
                        Some(&json!(p.to_str())),
                        "{}",
                        show(&input)
                    );
                }
                Ok(PodNetns::Private) => {
                    tally.add("private");
                    assert!(!host_ann, "{}", show(&input));
                    let path = net.as_ref().expect("a network namespace").get("path");
                    assert!(
                        path.and_then(Value::as_str).is_none_or(str::is_empty),
                        "{}",
                        show(&input)
                    );
                }
                Err(Error::InvalidArgument { field, .. }) => {
                    tally.add(if host_ann { "host network" } else { "refused" });
                    assert_eq!(field, "linux.namespaces");
                }
                Err(e) => panic!("unexpected {e}"),
            }
            if host_ann {
                assert!(pod_netns(&spec, &ann).is_err(), "hostNetwork accepted");
            }
        },
    );
    tally.require(name, &["path", "private", "host network", "refused"]);
}
