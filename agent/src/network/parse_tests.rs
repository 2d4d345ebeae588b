//! Unit tests of the request validation in `parse.rs`.

use kata_agent_protocol::agent::IpAddress;

use super::*;

/// The field an `InvalidField` error names.
fn field_of(e: AgentError) -> String {
    match e {
        AgentError::InvalidField { field, .. } => field,
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

fn net(s: &str) -> IpNet {
    parse_cidr("t", s).expect("test CIDR")
}

#[test]
fn macs() {
    assert_eq!(
        parse_mac("f", "AA:bb:0c:dd:ee:0F").expect("valid"),
        [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]
    );
    for bad in [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa-bb-cc-dd-ee-ff",
        "a:bb:cc:dd:ee:fff",
        "gg:bb:cc:dd:ee:ff",
        "+a:bb:cc:dd:ee:ff",
    ] {
        assert_eq!(field_of(parse_mac("f", bad).expect_err(bad)), "f", "{bad}");
    }
    assert_eq!(
        format_mac(&[0xaa, 0x0b, 0, 1, 2, 0xff]),
        "aa:0b:00:01:02:ff"
    );
}

#[test]
fn interface_names() {
    for ok in ["eth0", "a", "net1", "abcdefghijklmno"] {
        validate_ifname("n", ok).expect(ok);
    }
    for bad in [
        "",
        "abcdefghijklmnop",
        ".",
        "..",
        "a/b",
        "a b",
        "a\tb",
        "a:1",
        "lo",
    ] {
        assert_eq!(field_of(validate_ifname("n", bad).expect_err(bad)), "n");
    }
}

#[test]
fn cidrs() {
    assert_eq!(net("10.1.2.0/24").to_string(), "10.1.2.0/24");
    assert_eq!(net("fd00::/64").to_string(), "fd00::/64");
    assert_eq!(
        net("0.0.0.0/0"),
        IpNet::default_for("1.2.3.4".parse().expect("ip"))
    );
    assert_eq!(net("::/0"), IpNet::default_for("::1".parse().expect("ip")));
    for bad in [
        "10.1.2.0",
        "10.1.2.0/33",
        "fd00::/129",
        "x/24",
        "10.0.0.0/a",
        "/24",
    ] {
        assert!(parse_cidr("t", bad).is_err(), "{bad}");
    }
    assert!(net("10.1.2.0/24").is_network());
    assert!(!net("10.1.2.3/24").is_network());
    assert!(net("10.1.2.3/32").is_network());
    assert!(net("0.0.0.0/0").is_network());
    assert!(!net("fd00::3/64").is_network());
    assert!(net("fd00::/64").is_network());
    // The IPv6 default route: 128 host bits (a shift that used to overflow).
    assert!(net("::/0").is_network());
    assert!(!net("1::/0").is_network());
    assert!(!net("10.0.0.1/0").is_network());
    assert!(net("fe80::1/64").is_ipv6_link_local());
    assert!(!net("fd00::1/64").is_ipv6_link_local());
    assert!(!net("10.0.0.1/8").is_ipv6_link_local());
}

/// An `Interface` request body (also used by the netns tests).
pub(in crate::network) fn iface(
    name: &str,
    mac: &str,
    mtu: u32,
    addrs: &[(&str, u32)],
) -> Interface {
    let mut i = Interface::new();
    i.name = name.into();
    i.hw_addr = mac.into();
    i.mtu = mtu;
    i.addresses = addrs
        .iter()
        .map(|(a, l)| {
            let mut ip = IpAddress::new();
            ip.address = (*a).into();
            ip.prefix_len = *l;
            ip
        })
        .collect();
    i
}

#[test]
fn interface_requests() {
    let spec = parse_interface(&iface(
        "eth0",
        "02:00:00:00:00:01",
        1400,
        &[("10.1.2.3", 24), ("fd00::3", 64)],
    ))
    .expect("valid");
    assert_eq!(spec.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(spec.mtu, Some(1400));
    assert_eq!(spec.addresses, vec![net("10.1.2.3/24"), net("fd00::3/64")]);
    let no_mtu = parse_interface(&iface("eth0", "02:00:00:00:00:01", 0, &[])).expect("valid");
    assert_eq!(no_mtu.mtu, None);

    let mac = "02:00:00:00:00:01";
    let cases: &[(Interface, &str)] = &[
        (iface("", mac, 0, &[]), "interface.name"),
        (iface("eth0", "zz", 0, &[]), "interface.hw_addr"),
        (
            iface("eth0", "00:00:00:00:00:00", 0, &[]),
            "interface.hw_addr",
        ),
        (iface("eth0", mac, 67, &[]), "interface.mtu"),
        (iface("eth0", mac, 70000, &[]), "interface.mtu"),
        (
            iface("eth0", mac, 0, &[("10.0.0.1", 8), ("nope", 8)]),
            "interface.addresses[1].address",
        ),
        (
            iface("eth0", mac, 0, &[("10.0.0.1", 33)]),
            "interface.addresses[0].prefix_len",
        ),
        (
            iface("eth0", mac, 0, &[("fd00::1", 129)]),
            "interface.addresses[0].prefix_len",
        ),
        (
            iface("eth0", mac, 0, &[("224.0.0.1", 4)]),
            "interface.addresses[0].address",
        ),
        (
            iface("eth0", mac, 0, &[("10.0.0.1", 8), ("10.0.0.1", 8)]),
            "interface.addresses[1]",
        ),
    ];
    for (req, field) in cases {
        let e = parse_interface(req).expect_err(field);
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains(field), "{e}");
        assert_eq!(field_of(e), *field);
    }
}

fn route(dest: &str, gw: &str, dev: &str) -> Route {
    let mut r = Route::new();
    r.dest = dest.into();
    r.gateway = gw.into();
    r.device = dev.into();
    r
}

#[test]
fn route_requests() {
    let mut with_src = route("10.1.2.0/24", "", "eth0");
    with_src.source = "10.1.2.3".into();
    with_src.scope = 253;
    with_src.metric = 7;
    let specs = parse_routes(&[
        route("0.0.0.0/0", "10.1.2.1", "eth0"),
        with_src,
        route("::/0", "fd00::1", "eth0"),
    ])
    .expect("valid");
    assert_eq!(specs[0].dest, net("0.0.0.0/0"));
    assert_eq!(specs[0].gateway, Some("10.1.2.1".parse().expect("ip")));
    assert_eq!(specs[1].gateway, None);
    assert_eq!(specs[1].source, Some("10.1.2.3".parse().expect("ip")));
    assert_eq!((specs[1].scope, specs[1].metric), (253, 7));
    assert_eq!(specs[2].dest, net("::/0"));

    let mut big_scope = route("10.0.0.0/8", "", "eth0");
    big_scope.scope = 256;
    let mut v6_src = route("10.0.0.0/8", "", "eth0");
    v6_src.source = "fd00::1".into();
    let cases: Vec<(Vec<Route>, &str)> = vec![
        (vec![route("10.0.0.0", "", "eth0")], "routes[0].dest"),
        (
            vec![
                route("0.0.0.0/0", "", "eth0"),
                route("10.1.2.3/24", "", "eth0"),
            ],
            "routes[1].dest",
        ),
        (
            vec![route("0.0.0.0/0", "fd00::1", "eth0")],
            "routes[0].gateway",
        ),
        (
            vec![route("0.0.0.0/0", "0.0.0.0", "eth0")],
            "routes[0].gateway",
        ),
        (vec![route("0.0.0.0/0", "10.0.0.1", "")], "routes[0].device"),
        (
            vec![route("0.0.0.0/0", "10.0.0.1", "lo")],
            "routes[0].device",
        ),
        (vec![big_scope], "routes[0].scope"),
        (vec![v6_src], "routes[0].source"),
        (
            vec![
                route("10.0.0.0/8", "", "eth0"),
                route("10.0.0.0/8", "", "eth0"),
            ],
            "routes[1]",
        ),
    ];
    for (req, field) in cases {
        assert_eq!(field_of(parse_routes(&req).expect_err(field)), field);
    }
}

fn neigh(ip: &str, dev: &str, ll: &str) -> ArpNeighbor {
    let mut n = ArpNeighbor::new();
    n.ip = ip.into();
    n.device = dev.into();
    n.lladdr = ll.into();
    n
}

#[test]
fn neighbor_requests() {
    let ll = "02:00:00:00:00:09";
    let specs = parse_neighbors(&[neigh("10.1.2.9", "eth0", ll), neigh("fd00::9", "eth0", ll)])
        .expect("valid");
    assert_eq!(specs[1].ip, "fd00::9".parse::<IpAddr>().expect("ip"));
    assert_eq!(specs[0].lladdr, [2, 0, 0, 0, 0, 9]);
    let cases: Vec<(Vec<ArpNeighbor>, &str)> = vec![
        (vec![neigh("10.1.2", "eth0", ll)], "neighbors[0].ip"),
        (vec![neigh("0.0.0.0", "eth0", ll)], "neighbors[0].ip"),
        (vec![neigh("10.1.2.9", "", ll)], "neighbors[0].device"),
        (
            vec![neigh("10.1.2.9", "eth0", ll), neigh("10.1.2.8", "eth0", "")],
            "neighbors[1].lladdr",
        ),
        (
            vec![neigh("10.1.2.9", "eth0", ll), neigh("10.1.2.9", "eth0", ll)],
            "neighbors[1]",
        ),
    ];
    for (req, field) in cases {
        assert_eq!(field_of(parse_neighbors(&req).expect_err(field)), field);
    }
}
