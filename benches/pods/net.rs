//! The pod network rows of `make bench`: TCP between the host and a pod,
//! kata against runc, each pod reached at the IP CRI reports for it over
//! the CNI bridge (the kata pod's traffic crosses the veth, the tc mirred
//! redirect, the tap and QEMU's virtio-net; the runc pod's only the veth).
//!
//! The servers are busybox `nc` in a container of the pod, each a
//! persistent listener (`-ll`) that runs a program per connection with the
//! socket as its stdin and stdout (`-e`):
//!
//! - host → pod: `wc -c` reads the connection to EOF and answers with the
//!   byte count; the figure runs from connect to that answer, so it covers
//!   every byte arriving in the container, not just the host's send buffer;
//! - pod → host: `head -c N /dev/zero` writes N bytes and exits; the figure
//!   runs from connect to EOF with all N bytes read;
//! - round trip: `cat` echoes; the host sends [`RTT_MESSAGE`] bytes and
//!   reads them back, [`ROUND_TRIPS`] times on one connection (Nagle off on
//!   the host's side; `cat` writes what it reads at once). `cat` keeps the
//!   echo path a plain read/write loop in one process, unlike a shell loop
//!   (a fork per line) or `httpd` (HTTP parsing and a CGI or file per
//!   request), so the figure is the network path's;
//! - UDP host → pod: [`UDP_BYTES`] in datagrams of [`UDP_DATAGRAM`] bytes,
//!   sent as fast as the host can (no pacing, like `iperf -u -b 0`), to a
//!   port nothing in the pod listens on, counted by the pod's kernel: its
//!   `/proc/net/snmp` `Udp` counters (`InDatagrams + NoPorts`, read through
//!   `nc -e cat`) before and after. This busybox has no UDP server applet
//!   (`nc` without `-u`, no `udpsvd`), and the pod's own UDP layer is
//!   where a datagram has crossed the whole path. The figure is what got
//!   through per second, from the first send to the count settling, and
//!   the share lost on the way;
//! - many connections: [`HTTP_REQUESTS`] sequential `GET`s of a
//!   [`HTTP_FILE`]-byte file from busybox `httpd`, one TCP connection each
//!   (HTTP/1.0), connect → EOF per request: requests per second and the
//!   latency percentiles.
//!
//! Then the TCP rows once more with the floor VM's own program: `kata-floor
//! tcp` in a second container (the host's binary and C libraries mounted
//! read-only), moving the same bytes in the same writes as in the floor VM
//! (`floor`), so that kata / floor compares the paths and not busybox `nc`
//! with a 64 KiB read loop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::cri::{Cri, container_config};
use crate::common::floor::{dial_tcp_retrying, echo, fetch, push};
use crate::common::image::BUSYBOX_REF;
use k8s_cri::v1::{Mount, PodSandboxConfig};

/// Bytes of each throughput transfer: big enough to dwarf connection set-up,
/// small enough for a TCG guest to move in seconds.
pub const BYTES: u64 = 16 << 20;
/// Round trips per pod; their every sample goes to the median.
pub const ROUND_TRIPS: usize = 200;
/// Bytes of each round trip's message.
pub const RTT_MESSAGE: usize = 64;
const SINK_PORT: u16 = 5001;
const SOURCE_PORT: u16 = 5002;
const ECHO_PORT: u16 = 5003;
/// `nc -e cat /proc/net/snmp`: the pod's UDP counters.
const SNMP_PORT: u16 = 5004;
/// Where the datagrams go: nothing listens (see the module docs).
const UDP_PORT: u16 = 5005;
const HTTP_PORT: u16 = 5006;
/// `kata-floor tcp`'s port.
const FLOOR_PORT: u16 = 5007;
/// Write size of the floor program's transfers (as the floor VM's).
pub const FLOOR_WRITE: usize = 64 << 10;
/// Bytes of the UDP flood.
pub const UDP_BYTES: u64 = 16 << 20;
/// Bytes of each datagram's payload.
pub const UDP_DATAGRAM: usize = 1024;
/// How long the pod's count must stay still to be final.
const UDP_SETTLE: Duration = Duration::from_millis(500);
/// Requests of the many-connections row, each on its own connection.
pub const HTTP_REQUESTS: usize = 1000;
/// Bytes of the file `httpd` serves.
pub const HTTP_FILE: usize = 1024;
/// Bound of every connect, read and write, and of waiting for the servers.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One pod's figures.
pub struct NetSample {
    /// host → pod, MiB/s.
    pub up_mib_s: f64,
    /// pod → host, MiB/s.
    pub down_mib_s: f64,
    /// Every round trip, in ms.
    pub rtt_ms: Vec<f64>,
    pub udp: UdpSample,
    pub http: HttpSample,
    /// The same three TCP figures with `kata-floor tcp` as the server.
    pub floor: FloorProgram,
}

/// The TCP figures of `kata-floor tcp` in the pod.
#[derive(Debug, Clone, Default)]
pub struct FloorProgram {
    pub up_mib_s: f64,
    pub down_mib_s: f64,
    pub rtt_ms: Vec<f64>,
}

/// The UDP flood's figures.
#[derive(Debug, Clone, Copy)]
pub struct UdpSample {
    /// Datagram payload that reached the pod's UDP layer, MiB/s.
    pub mib_s: f64,
    /// Share of the datagrams lost on the way, 0 to 1.
    pub loss: f64,
}

/// The many-connections row's figures.
#[derive(Debug, Clone)]
pub struct HttpSample {
    /// Requests per second: the count over the requests' summed time.
    pub per_s: f64,
    /// Every request's latency, connect → EOF, in ms.
    pub latency_ms: Vec<f64>,
}

/// Starts the servers in a container of `pod`, measures and removes the
/// container again.
pub fn measure(cri: &Cri, pod: &str, config: &PodSandboxConfig) -> Result<NetSample, String> {
    let ip: Ipv4Addr = cri
        .pod_ip(pod)
        .map_err(|e| format!("pod IP: {e}"))?
        .parse()
        .map_err(|e| format!("pod IP: {e}"))?;
    // The file is made before anything starts in the background: httpd
    // changes into its home at start and exits if it is not there yet.
    let script = format!(
        "mkdir -p /tmp/www && head -c {HTTP_FILE} /dev/zero > /tmp/www/f || exit 1; \
         nc -ll -p {SINK_PORT} -e wc -c & \
         nc -ll -p {SOURCE_PORT} -e head -c {BYTES} /dev/zero & \
         nc -ll -p {ECHO_PORT} -e cat & \
         nc -ll -p {SNMP_PORT} -e cat /proc/net/snmp & \
         httpd -f -p {HTTP_PORT} -h /tmp/www & \
         wait"
    );
    let spec = container_config("net", BUSYBOX_REF, &["/bin/sh", "-c", &script]);
    let id = cri
        .create_container(pod, spec, config)
        .map_err(|e| format!("CreateContainer net: {e}"))?;
    cri.start_container(&id)
        .map_err(|e| format!("StartContainer net: {e}"))?;
    let result = (|| -> Result<NetSample, String> {
        let up_mib_s = upload(ip)?;
        let down_mib_s = download(ip)?;
        let rtt_ms = round_trips(ip)?;
        let udp = udp_flood(ip)?;
        let http = http_requests(ip)?;
        Ok(NetSample {
            up_mib_s,
            down_mib_s,
            rtt_ms,
            udp,
            http,
            floor: FloorProgram::default(),
        })
    })();
    let removed = cri
        .stop_container(&id, 0)
        .and_then(|()| cri.remove_container(&id))
        .map_err(|e| format!("removing the net container: {e}"));
    let mut sample = result?;
    removed?;
    sample.floor = floor_program(cri, pod, config, ip)?;
    Ok(sample)
}

/// A container `name` running `kata-floor <args>` from the host's build,
/// with the host's C libraries it links (this busybox image has none).
pub fn floor_container(name: &str, args: &[&str]) -> k8s_cri::v1::ContainerConfig {
    let program = crate::common::bin("kata-floor");
    let mut cmd = vec!["/kata-floor"];
    cmd.extend_from_slice(args);
    let mut spec = container_config(name, BUSYBOX_REF, &cmd);
    // The shim refuses a mount source that passes through a symlink, and
    // /lib and /lib64 are symlinks into /usr on a merged-/usr host.
    let ro = |host: &str, guest: &str| Mount {
        container_path: guest.into(),
        host_path: std::fs::canonicalize(host)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| host.into()),
        readonly: true,
        ..Default::default()
    };
    spec.mounts = vec![
        ro(&program.to_string_lossy(), "/kata-floor"),
        ro("/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"),
        ro("/lib64", "/lib64"),
    ];
    spec
}

/// The TCP rows with `kata-floor tcp` as the server.
fn floor_program(
    cri: &Cri,
    pod: &str,
    config: &PodSandboxConfig,
    ip: Ipv4Addr,
) -> Result<FloorProgram, String> {
    let id = cri
        .create_container(
            pod,
            floor_container("floor", &["tcp", &FLOOR_PORT.to_string()]),
            config,
        )
        .map_err(|e| format!("CreateContainer floor: {e}"))?;
    let result = (|| -> Result<FloorProgram, String> {
        cri.start_container(&id)
            .map_err(|e| format!("StartContainer floor: {e}"))?;
        let addr = SocketAddr::from((ip, FLOOR_PORT));
        let dial = || dial_tcp_retrying(addr, IO_TIMEOUT);
        let deadline = Duration::from_secs(300);
        let up = push(&mut dial()?, BYTES, FLOOR_WRITE, false, deadline)
            .map_err(|e| format!("kata-floor host → pod: {e}"))?;
        let down = fetch(&mut dial()?, BYTES, FLOOR_WRITE, deadline)
            .map_err(|e| format!("kata-floor pod → host: {e}"))?;
        let rtt = echo(&mut dial()?, RTT_MESSAGE, ROUND_TRIPS)?;
        Ok(FloorProgram {
            up_mib_s: mib_s(BYTES, up),
            down_mib_s: mib_s(BYTES, down),
            rtt_ms: rtt.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        })
    })();
    let removed = cri
        .stop_container(&id, 0)
        .and_then(|()| cri.remove_container(&id))
        .map_err(|e| format!("removing the floor container: {e}"));
    let sample = result?;
    removed?;
    Ok(sample)
}

/// Connects to `ip:port`, retrying while nothing listens yet (the servers
/// start with the container), within [`IO_TIMEOUT`].
fn connect(ip: Ipv4Addr, port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((ip, port));
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| s.set_nodelay(true))
                    .map_err(|e| format!("{addr}: {e}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                if Instant::now() > deadline {
                    return Err(format!("{addr}: nothing listens after {IO_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    }
}

fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// host → pod: [`BYTES`] to `wc -c`, connect → its count.
fn upload(ip: Ipv4Addr) -> Result<f64, String> {
    // Readiness first: an empty connection gets "0".
    let mut probe = connect(ip, SINK_PORT)?;
    probe.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let _ = probe.read_to_end(&mut Vec::new());

    let buf = vec![0u8; 256 << 10];
    let began = Instant::now();
    let mut s = connect(ip, SINK_PORT)?;
    let mut left = BYTES;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])
            .map_err(|e| format!("host → pod after {} bytes: {e}", BYTES - left))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("the sink's count: {e}"))?;
    let took = began.elapsed();
    let count: u64 = answer
        .trim()
        .parse()
        .map_err(|_| format!("the sink answered {answer:?}, not a byte count"))?;
    if count != BYTES {
        return Err(format!("the sink counted {count} bytes of {BYTES}"));
    }
    Ok(mib_s(BYTES, took))
}

/// pod → host: [`BYTES`] from `head -c`, connect → EOF.
fn download(ip: Ipv4Addr) -> Result<f64, String> {
    let mut buf = vec![0u8; 256 << 10];
    let began = Instant::now();
    let mut s = connect(ip, SOURCE_PORT)?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("pod → host after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = began.elapsed();
    if got != BYTES {
        return Err(format!("the source sent {got} bytes of {BYTES}"));
    }
    Ok(mib_s(BYTES, took))
}

/// [`ROUND_TRIPS`] echoes of [`RTT_MESSAGE`] bytes on one connection.
fn round_trips(ip: Ipv4Addr) -> Result<Vec<f64>, String> {
    let mut s = connect(ip, ECHO_PORT)?;
    let mut back = vec![0u8; RTT_MESSAGE];
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let msg = vec![b'a' + (i % 26) as u8; RTT_MESSAGE];
        let t = Instant::now();
        s.write_all(&msg)
            .map_err(|e| format!("round trip {i}: send: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("round trip {i}: echo: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        if back != msg {
            return Err(format!("round trip {i}: the echo differs"));
        }
    }
    Ok(out)
}

/// The pod's datagrams that reached its UDP layer so far
/// (`InDatagrams + NoPorts` of `/proc/net/snmp`).
fn udp_count(ip: Ipv4Addr) -> Result<u64, String> {
    let mut s = connect(ip, SNMP_PORT)?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("the pod's /proc/net/snmp: {e}"))?;
    parse_udp_count(&text).ok_or_else(|| format!("no Udp counters in {text:?}"))
}

/// `InDatagrams + NoPorts` from the text of `/proc/net/snmp`: a `Udp:`
/// line of names, then one of values.
pub fn parse_udp_count(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(get("InDatagrams")? + get("NoPorts")?)
}

/// host → pod: [`UDP_BYTES`] in [`UDP_DATAGRAM`]-byte datagrams, unpaced;
/// counted by the pod's kernel until the count stays still for
/// [`UDP_SETTLE`].
fn udp_flood(ip: Ipv4Addr) -> Result<UdpSample, String> {
    let before = udp_count(ip)?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("UDP: {e}"))?;
    sock.connect((ip, UDP_PORT))
        .map_err(|e| format!("UDP connect: {e}"))?;
    let datagrams = UDP_BYTES / UDP_DATAGRAM as u64;
    let payload = vec![0x55u8; UDP_DATAGRAM];
    let began = Instant::now();
    for i in 0..datagrams {
        // ICMP port unreachable from the pod shows up as ECONNREFUSED on
        // a later send of a connected socket: not a failure here.
        match sock.send(&payload) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(format!("UDP datagram {i}: {e}")),
        }
    }
    // The time the count last grew, observed by polling: an upper bound of
    // the last datagram's arrival, by at most one poll.
    let (mut count, mut grew_at) = (udp_count(ip)?, Instant::now());
    let deadline = Instant::now() + IO_TIMEOUT;
    while grew_at.elapsed() < UDP_SETTLE && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = udp_count(ip)?;
        if now != count {
            (count, grew_at) = (now, Instant::now());
        }
    }
    let got = count.saturating_sub(before).min(datagrams);
    let took = grew_at.duration_since(began);
    Ok(UdpSample {
        mib_s: mib_s(got * UDP_DATAGRAM as u64, took),
        loss: 1.0 - got as f64 / datagrams as f64,
    })
}

/// [`HTTP_REQUESTS`] sequential HTTP/1.0 `GET`s, a connection each.
fn http_requests(ip: Ipv4Addr) -> Result<HttpSample, String> {
    let request = b"GET /f HTTP/1.0\r\nHost: pod\r\n\r\n";
    let mut latency_ms = Vec::with_capacity(HTTP_REQUESTS);
    let mut reply = Vec::with_capacity(HTTP_FILE + 512);
    // The first request also waits for httpd to listen: not timed.
    for i in 0..=HTTP_REQUESTS {
        reply.clear();
        let t = Instant::now();
        let mut s = connect(ip, HTTP_PORT)?;
        s.write_all(request)
            .map_err(|e| format!("HTTP request {i}: {e}"))?;
        s.read_to_end(&mut reply)
            .map_err(|e| format!("HTTP reply {i}: {e}"))?;
        let took = t.elapsed();
        let head_end = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("HTTP reply {i}: no header end in {} bytes", reply.len()))?;
        if !reply.starts_with(b"HTTP/1.0 200") && !reply.starts_with(b"HTTP/1.1 200") {
            let line = String::from_utf8_lossy(&reply[..head_end.min(80)]).to_string();
            return Err(format!("HTTP reply {i}: {line}"));
        }
        if reply.len() - head_end - 4 != HTTP_FILE {
            return Err(format!(
                "HTTP reply {i}: a body of {} bytes, not {HTTP_FILE}",
                reply.len() - head_end - 4
            ));
        }
        if i > 0 {
            latency_ms.push(took.as_secs_f64() * 1000.0);
        }
    }
    let total: f64 = latency_ms.iter().sum::<f64>() / 1000.0;
    Ok(HttpSample {
        per_s: HTTP_REQUESTS as f64 / total,
        latency_ms,
    })
}

/// The `p`-th percentile (0 to 100) of `v`, nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    // The bench targets compile this module without a test harness, so
    // nothing uses the import there; the tests run from tests/cri.rs.
    #[allow(unused_imports)]
    use super::{parse_udp_count, percentile};

    #[test]
    fn udp_count_is_in_datagrams_plus_no_ports() {
        let snmp = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 99
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 7 16000 3 2 3 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";
        assert_eq!(parse_udp_count(snmp), Some(16_007));
        assert_eq!(parse_udp_count("Udp: InDatagrams NoPorts\n"), None);
        assert_eq!(parse_udp_count("Udp: InDatagrams\nUdp: 5\n"), None);
        assert_eq!(parse_udp_count(""), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
