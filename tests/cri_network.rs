//! Kata pod networking through CRI, end to end: a private containerd 1.6
//! whose CRI plugin sets each pod's network up with the real CNI `bridge`
//! and `host-local` plugins (`/usr/lib/cni`), the shim under test as the
//! `kata` handler and runc as the default. The pod's CNI interface is
//! mirrored into the guest (DESIGN decision 8), so a kata pod must look,
//! from the host and from other pods, exactly like a runc pod: the IP CRI
//! reports is the guest's, TCP works in both directions, and tearing the
//! pod down leaves no network object behind. Every test removes its pods
//! through CRI and checks that nothing of a kata sandbox is left.
//!
//! The servers and clients in the pods are busybox's `nc` (the small one:
//! `-l -p PORT`, `-ll -e PROG`, `-w SECS`; on EOF of its stdin it shuts its
//! sending half and keeps reading until the peer closes), so every
//! exchange below is one request and one reply on one connection.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::containerd::Containerd;
use common::cri::{Cri, KATA, RUNC, container_config, pod_config};
use common::image::BUSYBOX_REF;
use common::*;
use k8s_cri::v1::{DnsConfig, ExecSyncResponse, PodSandboxConfig};

/// The main container of every pod: idles until SIGTERM.
const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";
/// Bound of one ExecSync (a server waits this long at most for its peer).
const EXEC_TIMEOUT: i64 = 60;
/// Bound of a host-side connect, read or write, and of waiting for a port.
const NET_TIMEOUT: Duration = Duration::from_secs(30);
const IP: &str = "/usr/sbin/ip";
const NSENTER: &str = "/usr/bin/nsenter";
const NETNS_DIR: &str = "/var/run/netns";

/// Fails (never skips) without what these tests need on the host.
fn require_network_host() {
    require_vm_host();
    for (tool, hint) in [
        (
            "/usr/lib/cni/bridge",
            "apt-get install containernetworking-plugins (or make deps)",
        ),
        (
            "/usr/lib/cni/host-local",
            "apt-get install containernetworking-plugins (or make deps)",
        ),
        (IP, "apt-get install iproute2 (or make deps)"),
        (NSENTER, "apt-get install util-linux (or make deps)"),
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing; install it with: {hint}"
        );
    }
}

/// A running pod (kata or runc) with one idle busybox container.
struct Pod {
    id: String,
    handler: &'static str,
    ctr: String,
    /// PodSandboxStatus's network IP.
    ip: Ipv4Addr,
    /// The pod's network namespace on the host.
    netns: PathBuf,
}

fn run_pod(
    c: &Containerd,
    cri: &Cri,
    name: &str,
    handler: &'static str,
    dns: Option<DnsConfig>,
) -> (Pod, PodSandboxConfig) {
    let mut config = pod_config(name, &c.pod_log_dir(name));
    config.dns_config = dns;
    let id = cri
        .run_pod(&config, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox {name} ({handler}): {e}\n{}", c.log_tail()));
    let ctr = cri
        .create_container(
            &id,
            container_config("main", BUSYBOX_REF, &["/bin/sh", "-c", IDLE]),
            &config,
        )
        .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}\n{}", c.log_tail()));
    cri.start_container(&ctr)
        .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}\n{}", c.log_tail()));
    let ip = cri
        .pod_ip(&id)
        .unwrap_or_else(|e| panic!("pod IP of {name}: {e}"));
    let ip = ip
        .parse()
        .unwrap_or_else(|e| panic!("pod {name}'s IP {ip:?} is not IPv4: {e}"));
    let netns = cri
        .pod_netns(&id)
        .unwrap_or_else(|e| panic!("netns of {name}: {e}"));
    (
        Pod {
            id,
            handler,
            ctr,
            ip,
            netns,
        },
        config,
    )
}

/// Stops and removes the pod as kubelet does; a kata pod must leave
/// nothing of its sandbox behind.
fn remove_pod(c: &Containerd, cri: &Cri, pod: &Pod) {
    cri.stop_pod(&pod.id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
    cri.remove_pod(&pod.id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log_tail()));
    if pod.handler == KATA {
        assert_no_leaks(&pod.id);
    }
}

fn exec_ok(cri: &Cri, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .exec_sync(id, cmd, EXEC_TIMEOUT)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
    assert_ok(&r, cmd);
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn assert_ok(r: &ExecSyncResponse, cmd: &[&str]) {
    assert_eq!(
        r.exit_code,
        0,
        "ExecSync {cmd:?}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The IPv4 address on eth0 as the container sees it.
fn container_ipv4(cri: &Cri, ctr: &str) -> Ipv4Addr {
    let out = exec_ok(cri, ctr, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    // "2: eth0    inet 10.210.3.2/24 brd 10.210.3.255 scope global eth0"
    let addr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0 in the container: {out:?}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("eth0's address {addr:?}: {e}"))
}

/// The MAC of `link` in `ip -o link` output.
fn mac_of(ip_link: &str) -> String {
    ip_link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in {ip_link:?}"))
        .to_ascii_lowercase()
}

/// `ip <args>` on the host, in `netns` when given; panics unless it works.
fn host_ip(netns: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new(NSENTER);
            c.arg(format!("--net={}", ns.display())).arg(IP);
            c
        }
        None => Command::new(IP),
    };
    cmd.args(args);
    let out = output_within(&mut cmd, NET_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {NET_TIMEOUT:?}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Link names of `ip -o link` output ("3: tap0_kata: <...>", "2: eth0@if7: ...").
fn link_names(ip_link: &str) -> Vec<String> {
    ip_link
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn is_kata_tap(name: &str) -> bool {
    name.starts_with("tap") && name.ends_with("_kata")
}

/// Runs `script` in container `ctr` through ExecSync on a thread of its
/// own (with its own CRI connection), so that the test can talk to it.
fn exec_in_background(c: &Containerd, ctr: &str, script: String) -> JoinHandle<ExecSyncResponse> {
    let (sock, ctr) = (c.address(), ctr.to_string());
    std::thread::spawn(move || {
        let cri = Cri::connect(&sock).expect("CRI client");
        cri.exec_sync(&ctr, &["/bin/sh", "-c", &script], EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
    })
}

/// Polls the container's `netstat -ltn` until something listens on `port`.
fn wait_listening(cri: &Cri, ctr: &str, port: u16) {
    let deadline = Instant::now() + NET_TIMEOUT;
    let needle = format!(":{port} ");
    loop {
        let out = exec_ok(cri, ctr, &["netstat", "-ltn"]);
        if out.contains(&needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} within {NET_TIMEOUT:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A one-shot server in `pod`'s container on `port`: it sends `reply` and
/// returns (when joined) what its client sent.
fn serve_once(c: &Containerd, cri: &Cri, pod: &Pod, port: u16, reply: &str) -> JoinHandle<String> {
    let h = exec_in_background(c, &pod.ctr, format!("echo {reply} | nc -l -p {port}"));
    wait_listening(cri, &pod.ctr, port);
    std::thread::spawn(move || {
        let r = h.join().expect("the server thread panicked");
        assert_ok(&r, &["nc", "-l"]);
        String::from_utf8_lossy(&r.stdout).into_owned()
    })
}

/// Pod `from` connects to `to`'s one-shot server and they swap payloads.
fn pod_to_pod(c: &Containerd, cri: &Cri, from: &Pod, to: &Pod, port: u16) {
    let (ping, pong) = (
        format!("ping-from-{}", from.ip),
        format!("pong-from-{}", to.ip),
    );
    let server = serve_once(c, cri, to, port, &pong);
    let got = exec_ok(
        cri,
        &from.ctr,
        &[
            "/bin/sh",
            "-c",
            &format!("echo {ping} | nc -w 10 {} {port}", to.ip),
        ],
    );
    assert_eq!(
        got.trim(),
        pong,
        "{} pod {} → {} pod {}: the client's reply",
        from.handler,
        from.ip,
        to.handler,
        to.ip
    );
    let heard = server.join().expect("the server's result");
    assert_eq!(
        heard.trim(),
        ping,
        "{} pod {} → {} pod {}: what the server heard",
        from.handler,
        from.ip,
        to.handler,
        to.ip
    );
}

/// The host connects to the pod's one-shot server and they swap payloads.
fn host_to_pod(c: &Containerd, cri: &Cri, pod: &Pod, port: u16) {
    let pong = format!("pong-from-{}", pod.ip);
    let server = serve_once(c, cri, pod, port, &pong);
    let addr = SocketAddr::from((pod.ip, port));
    let mut s = TcpStream::connect_timeout(&addr, NET_TIMEOUT)
        .unwrap_or_else(|e| panic!("host → {} pod {addr}: connect: {e}", pod.handler));
    s.set_read_timeout(Some(NET_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(NET_TIMEOUT))
        .expect("write timeout");
    s.write_all(b"ping-from-host\n").expect("send to the pod");
    s.shutdown(Shutdown::Write).expect("shutdown(WR)");
    let mut got = String::new();
    s.read_to_string(&mut got)
        .unwrap_or_else(|e| panic!("host ← {} pod {addr}: {e} (got {got:?})", pod.handler));
    drop(s);
    assert_eq!(got.trim(), pong, "host ← {} pod {addr}", pod.handler);
    let heard = server.join().expect("the server's result");
    assert_eq!(
        heard.trim(),
        "ping-from-host",
        "{} pod {addr} heard",
        pod.handler
    );
}

/// The pod connects to a listener of the host's on the CNI bridge's
/// gateway address and they swap payloads.
fn pod_to_host(c: &Containerd, cri: &Cri, pod: &Pod) {
    let gateway = c.cni_gateway();
    let listener = TcpListener::bind((gateway, 0))
        .unwrap_or_else(|e| panic!("bind the host listener on {gateway}: {e}"));
    let port = listener.local_addr().expect("local addr").port();
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let host = std::thread::spawn(move || -> Result<(SocketAddr, String), String> {
        let deadline = Instant::now() + Duration::from_secs(EXEC_TIMEOUT as u64);
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(a) => break a,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection from the pod".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(NET_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got)
            .map_err(|e| format!("read from {peer}: {e} (got {got:?})"))?;
        s.write_all(b"pong-from-host\n")
            .map_err(|e| format!("reply to {peer}: {e}"))?;
        Ok((peer, got))
    });
    let payload = format!("ping-from-{}", pod.ip);
    let got = exec_ok(
        cri,
        &pod.ctr,
        &[
            "/bin/sh",
            "-c",
            &format!("echo {payload} | nc -w 10 {gateway} {port}"),
        ],
    );
    let (peer, heard) = host
        .join()
        .expect("the host listener panicked")
        .unwrap_or_else(|e| panic!("host listener {gateway}:{port}: {e}"));
    assert_eq!(
        heard.trim(),
        payload,
        "{} pod → host {gateway}:{port}",
        pod.handler
    );
    assert_eq!(got.trim(), "pong-from-host", "{} pod ← host", pod.handler);
    // No NAT on the bridge (ipMasq false): the host sees the pod's own IP.
    assert_eq!(peer.ip(), std::net::IpAddr::V4(pod.ip), "the pod's source");
}

#[test]
fn cri_kata_pod_ip_is_the_guest_ip_and_tcp_works_both_ways() {
    require_network_host();
    let c = Containerd::start_cri("net-ip", false);
    let cri = c.cri();
    let (pod, _) = run_pod(&c, &cri, "netip", KATA, None);

    // The IP CRI reports is the guest's own, in the test's CNI subnet.
    let subnet = c.cni_subnet();
    let prefix = subnet.rsplit_once('.').expect("a.b.c.0/24").0;
    assert!(
        pod.ip.to_string().starts_with(&format!("{prefix}.")),
        "pod IP {} is outside the CNI subnet {subnet}",
        pod.ip
    );
    assert_eq!(
        container_ipv4(&cri, &pod.ctr),
        pod.ip,
        "eth0 in the container against PodSandboxStatus"
    );

    // The guest NIC carries the MAC CNI gave the pod's veth end.
    let host_mac = mac_of(&host_ip(Some(&pod.netns), &["-o", "link", "show", "eth0"]));
    let guest_mac = mac_of(&exec_ok(
        &cri,
        &pod.ctr,
        &["ip", "-o", "link", "show", "eth0"],
    ));
    assert_eq!(
        guest_mac,
        host_mac,
        "guest eth0 against eth0 in the pod netns {}",
        pod.netns.display()
    );
    let (_, info) = cri.pod_status_verbose(&pod.id).expect("verbose status");
    if let Some(cni_mac) = info
        .pointer("/cniResult/Interfaces/eth0/Mac")
        .and_then(|m| m.as_str())
    {
        assert_eq!(guest_mac, cni_mac.to_ascii_lowercase(), "CNI result's MAC");
    }

    // The pod's default route (host-local's `0.0.0.0/0`) leads to the
    // bridge, as in the pod netns.
    let routes = exec_ok(&cri, &pod.ctr, &["ip", "-4", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via {} dev eth0", c.cni_gateway())),
        "the guest's default route: {routes:?}"
    );

    host_to_pod(&c, &cri, &pod, 8080);
    pod_to_host(&c, &cri, &pod);
    // And once more each way: the first exchange was not a lucky one.
    host_to_pod(&c, &cri, &pod, 8081);
    pod_to_host(&c, &cri, &pod);

    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_kata_pods_reach_each_other_and_a_runc_pod() {
    require_network_host();
    let c = Containerd::start_cri("net-pods", false);
    let cri = c.cri();
    let (a, _) = run_pod(&c, &cri, "kata-a", KATA, None);
    let (b, _) = run_pod(&c, &cri, "kata-b", KATA, None);
    let (r, _) = run_pod(&c, &cri, "runc-r", RUNC, None);
    let ips: BTreeSet<_> = [a.ip, b.ip, r.ip].into_iter().collect();
    assert_eq!(ips.len(), 3, "each pod has its own IP: {ips:?}");
    for p in [&a, &b] {
        assert_eq!(container_ipv4(&cri, &p.ctr), p.ip, "guest eth0 of {}", p.id);
    }

    pod_to_pod(&c, &cri, &a, &b, 9001);
    pod_to_pod(&c, &cri, &b, &a, 9002);
    pod_to_pod(&c, &cri, &a, &r, 9003);
    pod_to_pod(&c, &cri, &r, &a, 9004);
    pod_to_pod(&c, &cri, &b, &r, 9005);
    pod_to_pod(&c, &cri, &r, &b, 9006);

    for p in [&a, &b, &r] {
        remove_pod(&c, &cri, p);
    }
}

#[test]
fn cri_dns_settings_are_visible_in_the_container() {
    require_network_host();
    let c = Containerd::start_cri("net-dns", false);
    let cri = c.cri();
    let dns = DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    };
    let (pod, config) = run_pod(&c, &cri, "dnspod", KATA, Some(dns));

    let resolv = exec_ok(&cri, &pod.ctr, &["cat", "/etc/resolv.conf"]);
    let lines: Vec<&str> = resolv.lines().map(str::trim).collect();
    for want in [
        "nameserver 10.96.0.10",
        "search svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            lines.contains(&want),
            "{want:?} missing from the container's /etc/resolv.conf:\n{resolv}"
        );
    }

    // The container's files are the pod's: the ones containerd wrote for
    // this sandbox on the host.
    let dir = c.cri_sandbox_dir(&pod.id);
    for (file, host) in [
        ("/etc/resolv.conf", dir.join("resolv.conf")),
        ("/etc/hosts", dir.join("hosts")),
        ("/etc/hostname", dir.join("hostname")),
    ] {
        let want = std::fs::read_to_string(&host)
            .unwrap_or_else(|e| panic!("the pod's {}: {e}", host.display()));
        assert_eq!(
            exec_ok(&cri, &pod.ctr, &["cat", file]),
            want,
            "{file} in the container against {}",
            host.display()
        );
    }
    let hosts = exec_ok(&cri, &pod.ctr, &["cat", "/etc/hosts"]);
    assert!(hosts.contains("localhost"), "/etc/hosts:\n{hosts}");
    assert_eq!(
        exec_ok(&cri, &pod.ctr, &["cat", "/etc/hostname"]).trim(),
        config.hostname
    );
    assert_eq!(
        exec_ok(&cri, &pod.ctr, &["hostname"]).trim(),
        config.hostname,
        "the container's UTS hostname"
    );

    remove_pod(&c, &cri, &pod);
}

/// Named network namespaces of the machine (`ip netns` / `ip -all netns`).
fn named_netns() -> BTreeSet<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Kata taps (`tap*_kata`) of the root namespace and of each named one.
fn kata_taps() -> BTreeSet<String> {
    let mut out: BTreeSet<String> = link_names(&host_ip(None, &["-o", "link"]))
        .into_iter()
        .filter(|n| is_kata_tap(n))
        .map(|n| format!("root netns: {n}"))
        .collect();
    for ns in named_netns() {
        // A namespace can go between the listing and the look.
        let mut cmd = Command::new(IP);
        cmd.args(["-n", &ns, "-o", "link"]);
        let Some(o) = output_within(&mut cmd, NET_TIMEOUT).filter(|o| o.status.success()) else {
            continue;
        };
        for n in link_names(&String::from_utf8_lossy(&o.stdout)) {
            if is_kata_tap(&n) {
                out.insert(format!("{ns}: {n}"));
            }
        }
    }
    out
}

#[test]
fn cri_twenty_create_remove_cycles_leave_no_network_objects() {
    const CYCLES: usize = 20;
    require_network_host();
    let c = Containerd::start_cri("net-cycles", false);
    let cri = c.cri();
    let bridge = c.cni_bridge();
    // Other VM tests may run beside this one (two at a time machine-wide),
    // with pods of their own: what they create is theirs. This test owns
    // its pods' namespaces (read from CRI), its private bridge, and holds
    // the root namespace to "no new kata tap ever".
    let baseline_netns = named_netns();
    let baseline_taps = kata_taps();
    if !baseline_taps.is_empty() {
        eprintln!("kata taps present before the test (not ours): {baseline_taps:?}");
    }
    let mut ours: Vec<String> = Vec::new();
    let began = Instant::now();
    for i in 0..CYCLES {
        let cycle = Instant::now();
        let name = format!("cycle{i}");
        let (pod, _) = run_pod(&c, &cri, &name, KATA, None);
        let ns_name = pod
            .netns
            .strip_prefix(NETNS_DIR)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                panic!("pod netns {} is not under {NETNS_DIR}", pod.netns.display())
            });
        assert!(
            !baseline_netns.contains(&ns_name),
            "cycle {i}: pod netns {ns_name} existed before the test"
        );
        ours.push(ns_name.clone());
        assert_eq!(
            container_ipv4(&cri, &pod.ctr),
            pod.ip,
            "cycle {i}: the guest has the pod IP"
        );
        // While the pod runs its tap is in its namespace: the scans below
        // see kata taps where they are.
        let taps = kata_taps();
        assert!(
            taps.iter().any(|t| t.starts_with(&format!("{ns_name}: "))),
            "cycle {i}: no tap*_kata in the running pod's netns {ns_name}: {taps:?}"
        );
        let veths = host_ip(None, &["-o", "link", "show", "master", &bridge]);
        assert_eq!(
            link_names(&veths).len(),
            1,
            "cycle {i}: one veth of the pod on {bridge}:\n{veths}"
        );

        remove_pod(&c, &cri, &pod);
        assert_no_network_leftovers(&format!("cycle {i}"), &bridge, &ours, &baseline_taps);
        eprintln!(
            "cycle {}/{CYCLES}: {:.1} s (pod {})",
            i + 1,
            cycle.elapsed().as_secs_f64(),
            pod.id
        );
    }
    assert_no_network_leftovers("after all cycles", &bridge, &ours, &baseline_taps);
    let now = named_netns();
    let foreign: Vec<_> = now.difference(&baseline_netns).collect();
    if !foreign.is_empty() {
        eprintln!("netns created beside this test (other tests' pods): {foreign:?}");
    }
    eprintln!("{CYCLES} cycles in {:.1} s", began.elapsed().as_secs_f64());
}

/// After a pod's removal: none of this test's pod namespaces is left, no
/// kata tap is in the root namespace or in any of them beyond the
/// baseline, and the test's bridge has no port left.
fn assert_no_network_leftovers(
    when: &str,
    bridge: &str,
    ours: &[String],
    baseline: &BTreeSet<String>,
) {
    let netns = named_netns();
    let left: Vec<_> = ours.iter().filter(|n| netns.contains(*n)).collect();
    assert!(
        left.is_empty(),
        "{when}: pod netns left in {NETNS_DIR}: {left:?}"
    );
    for ns in ours {
        assert!(
            !Path::new(NETNS_DIR).join(ns).exists(),
            "{when}: {NETNS_DIR}/{ns} is left"
        );
    }
    let leaked: Vec<_> = kata_taps()
        .into_iter()
        .filter(|t| !baseline.contains(t))
        .filter(|t| {
            t.starts_with("root netns: ") || ours.iter().any(|n| t.starts_with(&format!("{n}: ")))
        })
        .collect();
    assert!(leaked.is_empty(), "{when}: kata taps left: {leaked:?}");
    let veths = host_ip(None, &["-o", "link", "show", "master", bridge]);
    assert!(
        link_names(&veths).is_empty(),
        "{when}: ports left on the CNI bridge {bridge}:\n{veths}"
    );
}
