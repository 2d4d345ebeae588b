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
//!   request), so the figure is the network path's.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::cri::{Cri, container_config};
use crate::common::image::BUSYBOX_REF;
use k8s_cri::v1::PodSandboxConfig;

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
}

/// Starts the servers in a container of `pod`, measures and removes the
/// container again.
pub fn measure(cri: &Cri, pod: &str, config: &PodSandboxConfig) -> Result<NetSample, String> {
    let ip: Ipv4Addr = cri
        .pod_ip(pod)
        .map_err(|e| format!("pod IP: {e}"))?
        .parse()
        .map_err(|e| format!("pod IP: {e}"))?;
    let script = format!(
        "nc -ll -p {SINK_PORT} -e wc -c & \
         nc -ll -p {SOURCE_PORT} -e head -c {BYTES} /dev/zero & \
         nc -ll -p {ECHO_PORT} -e cat & \
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
        Ok(NetSample {
            up_mib_s,
            down_mib_s,
            rtt_ms,
        })
    })();
    let removed = cri
        .stop_container(&id, 0)
        .and_then(|()| cri.remove_container(&id))
        .map_err(|e| format!("removing the net container: {e}"));
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
