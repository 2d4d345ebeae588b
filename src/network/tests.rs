//! Tests of the pod network plumbing. The namespace tests need root: each
//! makes its own uniquely named namespace (`kn-<hex>`) with veths the way
//! CNI does, and removes it in a drop guard. Without root they fail, saying
//! so.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

// ---- Pure logic --------------------------------------------------------

#[test]
fn network_agent_requests_carry_the_endpoint_routes_and_neighbors() {
    let net = PodNetwork {
        netns: "/run/netns/x".into(),
        endpoints: vec![Endpoint {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1400,
            addresses: vec![
                ("10.1.2.3".parse().expect("ip"), 24),
                ("fd00::3".parse().expect("ip"), 64),
            ],
            tap: "tap0_kata".into(),
        }],
        routes: vec![RouteInfo {
            dest: "::".parse().expect("ip"),
            dest_prefix: 0,
            gateway: Some("fd00::1".parse().expect("ip")),
            device: "eth0".into(),
            source: None,
            scope: 0,
            metric: 1024,
        }],
        neighbors: vec![NeighborInfo {
            ip: "10.1.2.1".parse().expect("ip"),
            device: "eth0".into(),
            lladdr: "02:00:00:00:00:fe".into(),
        }],
    };
    let ifaces = net.interfaces();
    assert_eq!(ifaces.len(), 1);
    assert_eq!(
        (
            ifaces[0].name.as_str(),
            ifaces[0].hw_addr.as_str(),
            ifaces[0].mtu
        ),
        ("eth0", "02:00:00:00:00:01", 1400)
    );
    let addrs: Vec<(String, u32)> = ifaces[0]
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    assert_eq!(
        addrs,
        [("10.1.2.3".to_string(), 24), ("fd00::3".to_string(), 64)]
    );
    let routes = net.routes();
    assert_eq!(
        (
            routes[0].dest.as_str(),
            routes[0].gateway.as_str(),
            routes[0].source.as_str(),
            routes[0].metric
        ),
        ("::/0", "fd00::1", "", 1024)
    );
    let neigh = net.neighbors();
    assert_eq!(
        (
            neigh[0].ip.as_str(),
            neigh[0].device.as_str(),
            neigh[0].lladdr.as_str()
        ),
        ("10.1.2.1", "eth0", "02:00:00:00:00:fe")
    );
    let record = net.record();
    assert_eq!(record.netns, PathBuf::from("/run/netns/x"));
    assert_eq!(
        record.links,
        [LinkRecord {
            veth: "eth0".into(),
            tap: "tap0_kata".into()
        }]
    );
    let json = serde_json::to_string(&record).expect("serialize");
    assert_eq!(
        serde_json::from_str::<NetworkRecord>(&json).expect("parse"),
        record
    );
}

#[test]
fn network_missing_netns_path_is_netns_missing() {
    let path = PathBuf::from(format!("/run/netns/kn-missing-{}", hex()));
    let e = PodNetwork::attach(&path, false, 1).expect_err("no such netns");
    assert!(matches!(e, NetworkError::NetnsMissing { .. }), "{e:?}");
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    assert!(e.is_bad_input());
    let not_ns = tempfile::NamedTempFile::new().expect("temp file");
    let e = PodNetwork::attach(not_ns.path(), false, 1).expect_err("not a netns");
    assert!(matches!(e, NetworkError::NotANetns { .. }), "{e:?}");
    assert!(e.is_bad_input());
}

// ---- Namespace fixtures (root) -----------------------------------------

/// A random 8-digit hex string.
fn hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests create network namespaces and veths: run them as root \
         (sudo cargo test --release --lib network)"
    );
}

/// Runs a command, returning its stdout; panics on failure.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; true when it succeeded.
fn succeeds(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A test namespace `kn-<hex>` and the host ends of its veths, removed on
/// drop even when the test fails.
struct TestNs {
    name: String,
    host_veths: Vec<String>,
    hex: String,
}

impl TestNs {
    fn new() -> Self {
        require_root();
        let hex = hex();
        let name = format!("kn-{hex}");
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        TestNs {
            name,
            host_veths: Vec::new(),
            hex,
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `tc -n <ns> <args>`.
    fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["tc", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A CNI-style veth `name` (number `n`): MAC 02:00:00:77:<n>:05, MTU
    /// 1400, 10.77.<n>.5/24 and fd00:77:<n>::5/64, up, its host end up.
    fn add_veth(&mut self, name: &str, n: u8) {
        let host = format!("kv{}{n}", self.hex);
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", name, "netns", &self.name,
        ]);
        self.host_veths.push(host.clone());
        run(&["ip", "link", "set", &host, "up"]);
        let mac = format!("02:00:00:77:{n:02x}:05");
        self.ip(&["link", "set", name, "address", &mac, "mtu", "1400", "up"]);
        self.ip(&["addr", "add", &format!("10.77.{n}.5/24"), "dev", name]);
        self.ip(&[
            "addr",
            "add",
            &format!("fd00:77:{n}::5/64"),
            "dev",
            name,
            "nodad",
        ]);
    }

    /// A link without addresses (`dummy` is not in this kernel: a bridge).
    fn add_stub(&self, name: &str) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        self.ip(&["link", "set", name, "up"]);
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = succeeds(&["ip", "netns", "del", &self.name]);
        for host in &self.host_veths {
            let _ = succeeds(&["ip", "link", "del", host]);
        }
    }
}

/// A pod namespace as CNI leaves it: eth0 with a default route and a
/// permanent neighbour, plus an address-less link.
fn cni_netns() -> TestNs {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    ns.ip(&["route", "add", "default", "via", "10.77.1.1", "dev", "eth0"]);
    ns.ip(&[
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        "10.77.1.1",
        "dev",
        "eth0",
        "metric",
        "7",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "10.77.1.1",
        "lladdr",
        "02:00:00:00:01:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ns.add_stub("stub0");
    ns
}

fn has_ingress_qdisc(ns: &TestNs, dev: &str) -> bool {
    ns.tc(&["qdisc", "show", "dev", dev]).contains("ingress")
}

fn tap_exists(ns: &TestNs, tap: &str) -> bool {
    succeeds(&["ip", "-n", &ns.name, "link", "show", tap])
}

// ---- Namespace tests (root) --------------------------------------------

#[test]
fn network_attach_plumbs_eth0_and_detach_removes_only_ours() {
    let ns = cni_netns();
    let (net, nics) = PodNetwork::attach(&ns.path(), false, 1).expect("attach");

    assert_eq!(net.netns, ns.path());
    assert_eq!(net.endpoints.len(), 1, "{:?}", net.endpoints);
    let ep = &net.endpoints[0];
    assert_eq!(
        (ep.name.as_str(), ep.mac.as_str(), ep.mtu, ep.tap.as_str()),
        ("eth0", "02:00:00:77:01:05", 1400, "tap0_kata")
    );
    let mut addrs: Vec<String> = ep
        .addresses
        .iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.77.1.5/24", "fd00:77:1::5/64"]);

    let dests: Vec<String> = net
        .routes
        .iter()
        .map(|r| format!("{}/{}", r.dest, r.dest_prefix))
        .collect();
    assert!(dests.contains(&"0.0.0.0/0".to_string()), "{:?}", net.routes);
    assert!(
        !dests.contains(&"10.77.1.0/24".to_string()),
        "kernel route kept: {:?}",
        net.routes
    );
    assert!(
        !dests
            .iter()
            .any(|d| d.starts_with("fe80") || d.starts_with("ff")),
        "{:?}",
        net.routes
    );
    let default = net
        .routes
        .iter()
        .find(|r| r.dest_prefix == 0 && r.dest.is_ipv4())
        .expect("default route");
    assert_eq!(default.gateway, Some("10.77.1.1".parse().expect("ip")));
    assert_eq!(default.device, "eth0");
    let extra = net
        .routes
        .iter()
        .find(|r| r.dest_prefix == 16)
        .expect("the 10.99/16 route");
    assert_eq!(extra.metric, 7);
    assert!(net.routes.iter().all(|r| r.device == "eth0"));
    assert_eq!(
        net.neighbors,
        [NeighborInfo {
            ip: "10.77.1.1".parse().expect("ip"),
            device: "eth0".into(),
            lladdr: "02:00:00:00:01:01".into(),
        }]
    );

    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].mac, "02:00:00:77:01:05");
    assert!(nics[0].vhosts.is_empty());
    assert_eq!(nics[0].taps.len(), 1);
    let tap = ns.ip(&["-o", "link", "show", "tap0_kata"]);
    assert!(tap.contains("mtu 1400"), "{tap}");
    let flags = tap.split(['<', '>']).nth(1).unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UP"), "{tap}");

    let veth_filters = ns.tc(&["-s", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(veth_filters.contains("protocol all"), "{veth_filters}");
    assert!(veth_filters.contains("u32"), "{veth_filters}");
    assert!(
        veth_filters.contains("mirred (Egress Redirect to device tap0_kata)"),
        "{veth_filters}"
    );
    let tap_filters = ns.tc(&["-s", "filter", "show", "dev", "tap0_kata", "ingress"]);
    assert!(tap_filters.contains("protocol all"), "{tap_filters}");
    assert!(
        tap_filters.contains("mirred (Egress Redirect to device eth0)"),
        "{tap_filters}"
    );

    // A frame the guest sends (written to the tap, after the 10-byte
    // virtio-net header) is redirected out of eth0.
    let mut frame = vec![0u8; 10];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0, 0, 0x77, 0x01, 0x05, 0x88, 0xb5]);
    frame.resize(10 + 60, 0);
    nix::unistd::write(&nics[0].taps[0], &frame).expect("write a frame to the tap");
    let tap_stats = ns.tc(&["-s", "filter", "show", "dev", "tap0_kata", "ingress"]);
    assert!(tap_stats.contains("1 pkt (dropped 0"), "{tap_stats}");

    let record = net.record();
    assert_eq!(record.netns, ns.path());
    assert_eq!(
        record.links,
        [LinkRecord {
            veth: "eth0".into(),
            tap: "tap0_kata".into()
        }]
    );

    drop(nics);
    detach(&record);
    assert!(!tap_exists(&ns, "tap0_kata"), "the tap outlived detach");
    assert!(
        !has_ingress_qdisc(&ns, "eth0"),
        "eth0 kept an ingress qdisc"
    );
    let addrs = ns.ip(&["addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("10.77.1.5/24") && addrs.contains("fd00:77:1::5/64"),
        "{addrs}"
    );
    let routes = ns.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 10.77.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.99.0.0/16 via 10.77.1.1"), "{routes}");
}

#[test]
fn network_two_interfaces_get_two_taps() {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    ns.add_veth("eth1", 2);
    let (net, nics) = PodNetwork::attach(&ns.path(), false, 1).expect("attach");
    let pairs: Vec<(&str, &str)> = net
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.tap.as_str()))
        .collect();
    assert_eq!(pairs, [("eth0", "tap0_kata"), ("eth1", "tap1_kata")]);
    assert_eq!(nics.len(), 2);
    assert_eq!(nics[1].mac, "02:00:00:77:02:05");
    let filters = ns.tc(&["filter", "show", "dev", "eth1", "ingress"]);
    assert!(
        filters.contains("Egress Redirect to device tap1_kata"),
        "{filters}"
    );
    let record = net.record();
    drop(nics);
    detach(&record);
    assert!(!tap_exists(&ns, "tap0_kata") && !tap_exists(&ns, "tap1_kata"));
    assert!(!has_ingress_qdisc(&ns, "eth0") && !has_ingress_qdisc(&ns, "eth1"));
}

#[test]
fn network_netns_without_usable_interface_is_no_interface() {
    let ns = TestNs::new();
    ns.add_stub("stub0");
    let e = PodNetwork::attach(&ns.path(), false, 1).expect_err("nothing usable");
    assert!(matches!(e, NetworkError::NoInterface { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&ns.name), "{msg}");
    assert!(msg.contains("lo (loopback)"), "{msg}");
    assert!(msg.contains("stub0 (no IP address)"), "{msg}");
    assert!(e.is_bad_input());
}

#[test]
fn network_failure_on_the_second_endpoint_rolls_everything_back() {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    ns.add_veth("eth1", 2);
    // A tap left behind by someone else takes endpoint 1's name.
    ns.ip(&["tuntap", "add", "mode", "tap", "name", "tap1_kata"]);
    let e = PodNetwork::attach(&ns.path(), false, 1).expect_err("tap1_kata is taken");
    let NetworkError::Plumb {
        endpoint, source, ..
    } = &e
    else {
        panic!("expected a plumbing error, got {e:?}");
    };
    assert_eq!(endpoint, "eth1");
    assert!(matches!(**source, NetworkError::TapExists { .. }), "{e:?}");
    assert!(crate::logging::error_chain(&e).contains("tap1_kata"), "{e}");
    assert!(e.is_bad_input());
    assert!(
        !tap_exists(&ns, "tap0_kata"),
        "tap0_kata outlived the rollback"
    );
    assert!(
        !has_ingress_qdisc(&ns, "eth0"),
        "eth0 kept its ingress qdisc"
    );
    assert!(
        !has_ingress_qdisc(&ns, "eth1"),
        "eth1 kept its ingress qdisc"
    );
    // The other tap is not ours: left alone.
    assert!(tap_exists(&ns, "tap1_kata"));
}

/// A VM with more vCPUs gets a multiqueue tap: one fd per queue pair on
/// the same tap, all of them gone with the fds.
#[test]
fn network_queues_make_a_multiqueue_tap_with_an_fd_each() {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    let (net, nics) = PodNetwork::attach(&ns.path(), false, 3).expect("attach");
    assert_eq!(nics[0].taps.len(), 3);
    assert!(nics[0].vhosts.is_empty());
    let link = run(&["ip", "-d", "-n", &ns.name, "link", "show", "tap0_kata"]);
    assert!(link.contains("multi_queue"), "{link}");
    let record = net.record();
    drop(nics);
    detach(&record);
    assert!(!tap_exists(&ns, "tap0_kata"));
    assert!(!has_ingress_qdisc(&ns, "eth0"));

    // One queue: a plain tap, as before.
    let (net, nics) = PodNetwork::attach(&ns.path(), false, 1).expect("attach");
    assert_eq!(nics[0].taps.len(), 1);
    let link = run(&["ip", "-d", "-n", &ns.name, "link", "show", "tap0_kata"]);
    assert!(!link.contains("multi_queue"), "{link}");
    let record = net.record();
    drop(nics);
    detach(&record);
}

#[test]
fn network_vhost_net_follows_the_device() {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    let result = PodNetwork::attach(&ns.path(), true, 1);
    if Path::new("/dev/vhost-net").exists() {
        let (net, nics) = result.expect("attach with vhost-net");
        assert_eq!(nics[0].vhosts.len(), 1);
        let record = net.record();
        drop(nics);
        detach(&record);
    } else {
        let e = result.expect_err("no /dev/vhost-net on this host");
        let NetworkError::Plumb { source, .. } = &e else {
            panic!("expected a plumbing error, got {e:?}");
        };
        assert!(matches!(**source, NetworkError::VhostNet { .. }), "{e:?}");
        assert!(!e.is_bad_input());
        assert!(
            !tap_exists(&ns, "tap0_kata"),
            "tap0_kata outlived the rollback"
        );
        assert!(!has_ingress_qdisc(&ns, "eth0"));
    }
}

#[test]
fn network_detach_after_the_netns_is_gone_returns() {
    let mut ns = TestNs::new();
    ns.add_veth("eth0", 1);
    let (net, nics) = PodNetwork::attach(&ns.path(), false, 1).expect("attach");
    let record = net.record();
    run(&["ip", "netns", "del", &ns.name]);
    detach(&record);
    drop(nics);
    // A record of links that no longer exist, in a namespace that does.
    let ns2 = TestNs::new();
    detach(&NetworkRecord {
        netns: ns2.path(),
        links: vec![LinkRecord {
            veth: "eth9".into(),
            tap: "tap9_kata".into(),
        }],
    });
}
