//! The pod network through the shim as CRI-O drives it: the CNI veth in
//! the pod's netns is mirrored into the guest (address, MAC, route,
//! neighbour), QEMU runs in the pod's netns, CRI-O's teardown order (the
//! network goes before StopContainer) leaves nothing, the shim removes its
//! taps and tc plumbing when the network outlives the pod, and bad network
//! input is refused with nothing left behind. Taps are looked for in each
//! pod's own netns (other tests run pods meanwhile); the suite's global
//! leak check looks in every netns at the end.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::crio::*;
use common::*;
use ttrpc::Code;

const EXEC: Duration = Duration::from_secs(60);

/// `ip` in the pod's netns on the host.
fn ip_in(netns: &str, args: &[&str]) -> String {
    let out = run_ok(Command::new("ip").args(["-n", netns]).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tc` in the pod's netns on the host.
fn tc_in(netns: &str, args: &[&str]) -> String {
    let out = run_ok(Command::new("tc").args(["-n", netns]).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysfs_in(netns: &str, path: &str) -> String {
    let out = run_ok(Command::new("ip").args(["netns", "exec", netns, "cat", path]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn crio_pod_network_is_mirrored_into_the_guest() {
    let mut crio = Crio::new("net");
    let sid = crio.run_pod_sandbox(&PodConfig::new("net"));
    let netns = crio.netns_name(&sid);
    let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);

    // The guest's eth0 is CNI's: same MAC, MTU and address.
    let mac = sysfs_in(&netns, "/sys/class/net/eth0/address");
    let mtu = sysfs_in(&netns, "/sys/class/net/eth0/mtu");
    let r = crio.exec_sync(
        &app,
        &[
            "cat",
            "/sys/class/net/eth0/address",
            "/sys/class/net/eth0/mtu",
        ],
        EXEC,
    );
    assert_eq!(r.exit_code, 0, "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!("{mac}\n{mtu}\n"),
        "guest eth0 MAC and MTU"
    );
    let r = crio.exec_sync(&app, &["ip", "-4", "-o", "addr", "show", "eth0"], EXEC);
    assert!(
        r.stdout().contains("inet 10.213.0.2/24"),
        "guest addresses: {}",
        r.stdout()
    );
    let r = crio.exec_sync(&app, &["ip", "route"], EXEC);
    assert!(
        r.stdout().contains("default via 10.213.0.1 dev eth0"),
        "guest routes: {}",
        r.stdout()
    );
    let r = crio.exec_sync(&app, &["ip", "neigh", "show", "10.213.0.1"], EXEC);
    assert!(
        r.stdout().contains(CNI_GATEWAY_MAC) && r.stdout().contains("PERMANENT"),
        "guest neighbours: {}",
        r.stdout()
    );

    // On the host: one tap, the veth and the tap redirected to each other
    // with u32 match-all filters, QEMU inside the pod's netns.
    let links = ip_in(&netns, &["-o", "link"]);
    assert!(
        links.contains("tap0_kata"),
        "links of the pod netns: {links}"
    );
    for (dev, to) in [("eth0", "tap0_kata"), ("tap0_kata", "eth0")] {
        let filters = tc_in(&netns, &["filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains("u32") && filters.contains(&format!("Egress Redirect to device {to}")),
            "filters on {dev}: {filters}"
        );
    }
    let qemu = qemu_pids(&sid);
    assert_eq!(qemu.len(), 1, "QEMU of {sid}: {qemu:?}");
    let pod_ns = std::fs::metadata(format!("/var/run/netns/{netns}"))
        .expect("netns")
        .ino();
    let qemu_ns = std::fs::metadata(format!("/proc/{}/ns/net", qemu[0]))
        .expect("qemu ns")
        .ino();
    assert_eq!(qemu_ns, pod_ns, "QEMU runs in the pod's network namespace");

    // CRI-O's order: CNI DEL and the netns go first, then StopContainer.
    crio.stop_pod(&sid, POD_STOP_TIMEOUT);
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

#[test]
fn crio_pods_leave_no_tap_qdisc_or_filter_in_a_netns_that_outlives_them() {
    let mut crio = Crio::new("netcycle");
    let cycles = 20;
    for i in 0..cycles {
        let began = Instant::now();
        let sid = crio.run_pod_sandbox(&PodConfig::new(&format!("cycle{i}")));
        let netns = crio.netns_name(&sid);
        assert!(
            ip_in(&netns, &["-o", "link"]).contains("tap0_kata"),
            "cycle {i}: no tap"
        );
        crio.stop_pod_network_last(&sid, POD_STOP_TIMEOUT);
        crio.remove_pod(&sid);
        // The netns and CNI's veth are still there: the shim took back
        // exactly what it made.
        let links = ip_in(&netns, &["-o", "link"]);
        assert!(!links.contains("_kata"), "cycle {i}: links left: {links}");
        assert!(
            links.contains("eth0"),
            "cycle {i}: CNI's veth is gone: {links}"
        );
        let qdiscs = tc_in(&netns, &["qdisc", "show", "dev", "eth0"]);
        assert!(
            !qdiscs.contains("ingress"),
            "cycle {i}: qdiscs left on eth0: {qdiscs}"
        );
        let filters = tc_in(&netns, &["filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            filters.trim().is_empty(),
            "cycle {i}: filters left on eth0: {filters}"
        );
        let addrs = ip_in(&netns, &["-4", "-o", "addr", "show", "eth0"]);
        assert!(
            addrs.contains("10.213.0.2/24"),
            "cycle {i}: CNI's address is gone: {addrs}"
        );
        crio.cni_del(&sid);
        crio.assert_no_leaks(&sid);
        eprintln!("cycle {i}: {:.1} s", began.elapsed().as_secs_f64());
    }
}

#[test]
fn bad_pod_networks_are_refused_and_leave_nothing() {
    let mut crio = Crio::new("netbad");
    // A good pod runs throughout and must not notice.
    let good = crio.run_pod_sandbox(&PodConfig::new("good"));
    let app = crio.create_container(&good, "app", &["/bin/sleep", "1000"]);
    crio.start_container(&app);

    let cases = [
        (
            "host network",
            PodConfig {
                network: PodNetwork::Host,
                ..PodConfig::new("hostnet")
            },
            Code::INVALID_ARGUMENT,
            vec!["linux.namespaces", "hostNetwork"],
        ),
        (
            "missing netns",
            PodConfig {
                network: PodNetwork::Missing,
                ..PodConfig::new("missing")
            },
            Code::INVALID_ARGUMENT,
            vec!["/var/run/netns/kata-test-", "does not exist"],
        ),
        (
            "loopback only",
            PodConfig {
                network: PodNetwork::LoopbackOnly,
                ..PodConfig::new("loonly")
            },
            Code::FAILED_PRECONDITION,
            vec!["no usable interface", "lo"],
        ),
        (
            "second interface broken",
            PodConfig {
                network: PodNetwork::SecondBroken,
                ..PodConfig::new("broken")
            },
            Code::FAILED_PRECONDITION,
            vec!["tap1_kata", "eth1"],
        ),
    ];
    for (name, cfg, code, wants) in cases {
        let (sid, created) = crio.try_create_pod_sandbox(&cfg);
        let msg = expect_code(created, code);
        for want in wants {
            assert!(msg.contains(want), "{name}: {msg:?} should say {want:?}");
        }
        assert!(qemu_pids(&sid).is_empty(), "{name}: a QEMU was started");
        if cfg.network == PodNetwork::SecondBroken {
            // Endpoint 0 was plumbed before endpoint 1 failed: undone.
            let netns = crio.netns_name(&sid);
            let links = ip_in(&netns, &["-o", "link"]);
            assert!(!links.contains("tap0_kata"), "{name}: links left: {links}");
            let qdiscs = tc_in(&netns, &["qdisc", "show", "dev", "eth0"]);
            assert!(!qdiscs.contains("ingress"), "{name}: qdiscs left: {qdiscs}");
        }
        crio.cni_del(&sid);
        crio.unmount_own_shm(&sid);
        crio.assert_no_leaks(&sid);
    }

    let r = crio.exec_sync(&app, &["cat", "/sys/class/net/eth0/address"], EXEC);
    assert_eq!(r.exit_code, 0, "the good pod: {}", r.stderr());
    crio.stop_pod(&good, POD_STOP_TIMEOUT);
    crio.remove_pod(&good);
    crio.assert_no_leaks(&good);
}
