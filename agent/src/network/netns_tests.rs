//! Tests of the network calls against the real kernel. The `root_*` ones
//! each run in a private network namespace of their own thread, and fail
//! (never skip) without root. veth pairs stand in for the virtio NICs: this
//! kernel has no `dummy` driver.

use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use kata_agent_protocol::agent::{
    AddArpNeighborsRequest, ArpNeighbor, Interface, Route, Routes, UpdateInterfaceRequest,
    UpdateRoutesRequest,
};
use nix::sched::CloneFlags;
use protobuf::MessageField;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{LinkUnspec, LinkVeth};
use ttrpc::Code;

use super::*;
use crate::error::AgentError;

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";

/// Runs `test` on a current-thread runtime in a thread that has its own,
/// empty network namespace (`unshare` only affects the calling thread).
fn in_netns<F, Fut>(name: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "{name} is a root test: it creates a network namespace and links; \
         run `cargo test --release -p kata-agent network` as root"
    );
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn mac(s: &str) -> Vec<u8> {
    parse::parse_mac("test", s).expect("test MAC").to_vec()
}

/// Adds a veth pair whose end `name` has `mac_addr` and is down.
async fn add_veth(name: &str, peer: &str, mac_addr: &str) {
    let nl = Netlink::open().expect("netlink");
    let msg = LinkVeth::new(name, peer).address(mac(mac_addr)).build();
    nl.handle
        .link()
        .add(msg)
        .execute()
        .await
        .expect("adding veth");
}

async fn set_up(name: &str) {
    let nl = Netlink::open().expect("netlink");
    let index = link::links(&nl)
        .await
        .expect("links")
        .into_iter()
        .find(|l| l.name == name)
        .expect("link exists")
        .index;
    let msg = LinkUnspec::new_with_index(index).up().build();
    nl.handle.link().set(msg).execute().await.expect("link up");
}

fn iface_req(name: &str, hw: &str, mtu: u32, addrs: &[(&str, u32)]) -> UpdateInterfaceRequest {
    let mut req = UpdateInterfaceRequest::new();
    req.interface = MessageField::some(super::parse::tests::iface(name, hw, mtu, addrs));
    req
}

fn addrs_of(i: &Interface) -> Vec<String> {
    i.addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect()
}

fn routes_req(routes: &[(&str, &str, &str, u32)]) -> UpdateRoutesRequest {
    let mut list = Routes::new();
    list.routes = routes
        .iter()
        .map(|(dest, gw, dev, scope)| {
            let mut r = Route::new();
            r.dest = (*dest).into();
            r.gateway = (*gw).into();
            r.device = (*dev).into();
            r.scope = *scope;
            r
        })
        .collect();
    let mut req = UpdateRoutesRequest::new();
    req.routes = MessageField::some(list);
    req
}

fn has_route(routes: &[Route], dest: &str, gw: &str, dev: &str) -> bool {
    routes
        .iter()
        .any(|r| r.dest == dest && r.gateway == gw && r.device == dev)
}

fn field_of(e: &AgentError) -> &str {
    match e {
        AgentError::InvalidField { field, .. } => field,
        AgentError::InvalidArgument { field, .. } => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

/// The table without `fe80::/64` routes. The kernel adds one per link when
/// IPv6 autoconfiguration finishes on it, which is asynchronous: on a loaded
/// machine the one for the peer `p0` can appear between two listings.
fn without_link_local(mut routes: Vec<Route>) -> Vec<Route> {
    routes.retain(|r| r.dest != "fe80::/64");
    routes
}

/// `eth0` (MAC A, peer `p0` up) with 10.1.2.3/24 and fd00::3/64.
async fn configured_eth0() -> Interface {
    add_veth("v0", "p0", MAC_A).await;
    set_up("p0").await;
    let req = iface_req("eth0", MAC_A, 1400, &[("10.1.2.3", 24), ("fd00::3", 64)]);
    update_interface(&req, Duration::from_secs(1))
        .await
        .expect("UpdateInterface")
}

#[test]
fn root_update_interface_renames_and_configures_the_nic() {
    in_netns(
        "root_update_interface_renames_and_configures_the_nic",
        || async {
            add_veth("v0", "p0", MAC_A).await;
            // A stale address, and the link up: the rename must take it down.
            let nl = Netlink::open().expect("netlink");
            let v0 = link::links(&nl).await.expect("links");
            let v0 = v0.iter().find(|l| l.name == "v0").expect("v0").index;
            nl.handle
                .address()
                .add(v0, "10.9.9.9".parse().expect("ip"), 8)
                .execute()
                .await
                .expect("stale address");
            set_up("v0").await;

            let req = iface_req(
                "eth0",
                &MAC_A.to_uppercase(),
                1400,
                &[("10.1.2.3", 24), ("fd00::3", 64)],
            );
            let got = update_interface(&req, Duration::from_secs(1))
                .await
                .expect("UpdateInterface");
            assert_eq!(got.name, "eth0");
            assert_eq!(got.hw_addr, MAC_A);
            assert_eq!(got.mtu, 1400);
            assert!(got.up);
            let addrs = addrs_of(&got);
            assert!(addrs.contains(&"10.1.2.3/24".to_string()), "{addrs:?}");
            assert!(addrs.contains(&"fd00::3/64".to_string()), "{addrs:?}");
            assert!(!addrs.contains(&"10.9.9.9/8".to_string()), "{addrs:?}");

            // Idempotent, and reported the same way by ListInterfaces.
            let again = update_interface(&req, Duration::from_secs(1))
                .await
                .expect("UpdateInterface again");
            assert_eq!(again.name, "eth0");
            let listed = list_interfaces().await.expect("ListInterfaces");
            let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
            assert!(!names.contains(&"lo"), "{names:?}");
            assert!(names.contains(&"p0"), "{names:?}");
            let eth0 = listed
                .iter()
                .find(|i| i.name == "eth0")
                .expect("eth0 listed");
            assert_eq!((eth0.mtu, eth0.up), (1400, true));
            let mut listed_addrs = addrs_of(eth0);
            let mut got_addrs = addrs_of(&again);
            listed_addrs.sort();
            got_addrs.sort();
            assert_eq!(listed_addrs, got_addrs);
        },
    );
}

#[test]
fn root_update_routes_makes_the_table_equal_the_request() {
    in_netns(
        "root_update_routes_makes_the_table_equal_the_request",
        || async {
            configured_eth0().await;
            let stale = routes_req(&[("172.16.0.0/12", "10.1.2.9", "eth0", 0)]);
            let before = update_routes(&stale).await.expect("stale route");
            assert!(
                has_route(&before, "172.16.0.0/12", "10.1.2.9", "eth0"),
                "{before:?}"
            );

            // The gateway route comes before its link route in the request.
            let req = routes_req(&[
                ("0.0.0.0/0", "10.1.2.1", "eth0", 0),
                ("192.168.7.0/24", "10.1.2.254", "eth0", 0),
                ("10.50.0.0/16", "10.200.0.1", "eth0", 0),
                ("10.200.0.1/32", "", "eth0", 253),
                ("::/0", "fd00::1", "eth0", 0),
            ]);
            let got = update_routes(&req).await.expect("UpdateRoutes");
            for (dest, gw) in [
                ("0.0.0.0/0", "10.1.2.1"),
                ("192.168.7.0/24", "10.1.2.254"),
                ("10.50.0.0/16", "10.200.0.1"),
                ("10.200.0.1/32", ""),
                ("::/0", "fd00::1"),
                // The kernel's, for the addresses: kept.
                ("10.1.2.0/24", ""),
                ("fd00::/64", ""),
            ] {
                assert!(
                    has_route(&got, dest, gw, "eth0"),
                    "{dest} via {gw:?}: {got:?}"
                );
            }
            assert!(
                !has_route(&got, "172.16.0.0/12", "10.1.2.9", "eth0"),
                "{got:?}"
            );
            let v6_default = got.iter().find(|r| r.dest == "::/0").expect("::/0");
            assert_eq!(v6_default.metric, 1024);
            assert!(got.iter().all(|r| r.device != "lo"), "{got:?}");
            assert_eq!(
                without_link_local(list_routes().await.expect("ListRoutes")),
                without_link_local(got.clone())
            );

            // Same request again: nothing to do, same table.
            assert_eq!(
                without_link_local(update_routes(&req).await.expect("UpdateRoutes again")),
                without_link_local(got.clone())
            );

            // An unknown device is refused before anything changes.
            let bad = routes_req(&[
                ("0.0.0.0/0", "10.1.2.1", "eth0", 0),
                ("10.60.0.0/16", "", "eth7", 253),
            ]);
            let e = update_routes(&bad).await.expect_err("unknown device");
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            assert_eq!(field_of(&e), "routes[1].device");
            assert_eq!(
                without_link_local(list_routes().await.expect("ListRoutes")),
                without_link_local(got)
            );
        },
    );
}

/// Permanent neighbours: (ip, ifindex, lladdr).
async fn permanent_neighbours() -> Vec<(IpAddr, u32, Vec<u8>)> {
    let nl = Netlink::open().expect("netlink");
    let mut stream = pin!(nl.handle.neighbours().get().execute());
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.expect("neighbour dump") {
        if msg.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut ll = Vec::new();
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a));
                }
                NeighbourAttribute::LinkLayerAddress(l) => ll.clone_from(l),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            out.push((ip, msg.header.ifindex, ll));
        }
    }
    out
}

fn neigh_req(entries: &[(&str, &str, &str)]) -> AddArpNeighborsRequest {
    let mut req = AddArpNeighborsRequest::new();
    req.neighbors = entries
        .iter()
        .map(|(ip, dev, ll)| {
            let mut n = ArpNeighbor::new();
            n.ip = (*ip).into();
            n.device = (*dev).into();
            n.lladdr = (*ll).into();
            n
        })
        .collect();
    req
}

#[test]
fn root_add_arp_neighbors_adds_permanent_entries_and_replaces() {
    in_netns(
        "root_add_arp_neighbors_adds_permanent_entries_and_replaces",
        || async {
            configured_eth0().await;
            let first = "02:00:00:00:00:91";
            let second = "02:00:00:00:00:92";
            add_arp_neighbors(&neigh_req(&[
                ("10.1.2.9", "eth0", first),
                ("fd00::9", "eth0", first),
            ]))
            .await
            .expect("AddArpNeighbors");
            add_arp_neighbors(&neigh_req(&[("10.1.2.9", "eth0", second)]))
                .await
                .expect("AddArpNeighbors replacing");

            let nl = Netlink::open().expect("netlink");
            let links = link::links(&nl).await.expect("links");
            let eth0 = link::device_index(&links, "eth0", "t").expect("eth0");
            let got = permanent_neighbours().await;
            let v4: IpAddr = "10.1.2.9".parse().expect("ip");
            let v6: IpAddr = "fd00::9".parse().expect("ip");
            assert!(got.contains(&(v4, eth0, mac(second))), "{got:?}");
            assert!(got.contains(&(v6, eth0, mac(first))), "{got:?}");
            assert_eq!(got.iter().filter(|(ip, _, _)| *ip == v4).count(), 1);

            let e = add_arp_neighbors(&neigh_req(&[
                ("10.1.2.7", "eth0", first),
                ("10.1.2.8", "lo", first),
            ]))
            .await
            .expect_err("loopback device");
            assert_eq!(field_of(&e), "neighbors[1].device");
            let e = add_arp_neighbors(&neigh_req(&[("10.1.2.8", "nope0", first)]))
                .await
                .expect_err("unknown device");
            assert_eq!(field_of(&e), "neighbors[0].device");
            assert!(
                !permanent_neighbours()
                    .await
                    .iter()
                    .any(|(ip, _, _)| ip.to_string() == "10.1.2.7"),
                "nothing is added when one entry is refused"
            );
        },
    );
}

#[test]
fn root_a_nic_appearing_late_is_found() {
    in_netns("root_a_nic_appearing_late_is_found", || async {
        let start = Instant::now();
        let req = iface_req("eth0", MAC_B, 0, &[("10.3.0.2", 16)]);
        let (got, ()) = tokio::join!(update_interface(&req, Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            add_veth("v1", "p1", MAC_B).await;
        });
        let got = got.expect("UpdateInterface finds the late NIC");
        assert_eq!(got.name, "eth0");
        assert!(got.up);
        assert_eq!(addrs_of(&got), vec!["10.3.0.2/16".to_string()]);
        assert!(start.elapsed() >= Duration::from_millis(300));
    });
}

#[test]
fn root_a_nic_that_never_appears_is_not_found() {
    in_netns("root_a_nic_that_never_appears_is_not_found", || async {
        add_veth("v0", "p0", MAC_A).await;
        let start = Instant::now();
        let req = iface_req("eth0", MAC_B, 0, &[]);
        let e = update_interface(&req, Duration::from_millis(200))
            .await
            .expect_err("no NIC with MAC B");
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.to_string().contains(MAC_B), "{e}");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    });
}

#[test]
fn root_a_name_held_by_another_nic_is_moved_aside() {
    in_netns("root_a_name_held_by_another_nic_is_moved_aside", || async {
        // The kernel called MAC A's NIC eth0, but the pod wants that name
        // for MAC B's.
        add_veth("eth0", "p0", MAC_A).await;
        set_up("eth0").await;
        add_veth("v1", "p1", MAC_B).await;
        let b = update_interface(&iface_req("eth0", MAC_B, 0, &[]), Duration::from_secs(1))
            .await
            .expect("UpdateInterface MAC B");
        assert_eq!((b.name.as_str(), b.hw_addr.as_str()), ("eth0", MAC_B));
        let listed = list_interfaces().await.expect("ListInterfaces");
        let a = listed.iter().find(|i| i.hw_addr == MAC_A).expect("MAC A");
        assert!(a.name.starts_with("ktmp"), "{}", a.name);
        assert!(a.up, "moved aside with its up state");
        let a = update_interface(&iface_req("net1", MAC_A, 0, &[]), Duration::from_secs(1))
            .await
            .expect("UpdateInterface MAC A");
        assert_eq!(a.name, "net1");
    });
}

#[test]
fn root_interface_and_route_errors_name_the_field() {
    in_netns("root_interface_and_route_errors_name_the_field", || async {
        configured_eth0().await;
        let cases: Vec<(AgentError, &str)> = vec![
            (
                update_interface(&UpdateInterfaceRequest::new(), NIC_WAIT)
                    .await
                    .expect_err("missing interface"),
                "interface",
            ),
            (
                update_interface(&iface_req("eth0", "02:00", 0, &[]), NIC_WAIT)
                    .await
                    .expect_err("bad MAC"),
                "interface.hw_addr",
            ),
            (
                update_interface(&iface_req("a/b", MAC_A, 0, &[]), NIC_WAIT)
                    .await
                    .expect_err("bad name"),
                "interface.name",
            ),
            (
                update_interface(
                    &iface_req("eth0", MAC_A, 0, &[("10.1.2.3", 24), ("10.1.2.4", 33)]),
                    NIC_WAIT,
                )
                .await
                .expect_err("bad prefix"),
                "interface.addresses[1].prefix_len",
            ),
            (
                update_routes(&UpdateRoutesRequest::new())
                    .await
                    .expect_err("missing routes"),
                "routes",
            ),
            (
                update_routes(&routes_req(&[("0.0.0.0/0", "fd00::1", "eth0", 0)]))
                    .await
                    .expect_err("family mismatch"),
                "routes[0].gateway",
            ),
        ];
        for (e, field) in cases {
            assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{e}");
            assert_eq!(field_of(&e), field, "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    });
}
