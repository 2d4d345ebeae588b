//! The data-path floor VM from the host (tests/vsock_floor.rs and `make
//! bench`): the pod VM's kernel, QEMU argv, hybrid vsock helper and NIC
//! plumbing, started by the shim's own `Vm::start` and
//! `PodNetwork::attach`, with the floor initrd (`kata-guest-image floor`)
//! instead of the agent's; and the host side of the floor's line protocol
//! (`kata_floor`), checking every byte against the pattern.
//!
//! The NIC's path is the kata pod's without the CNI bridge: a veth pair
//! whose inner end (with the guest's address, as CNI leaves it) sits in a
//! private network namespace `kata-test-floor-*`, joined to the tap by the
//! shim's tc mirred redirects; QEMU runs in that namespace, as the shim
//! runs it in the pod's.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use kata_floor::{MAX_WRITE, Reply, Request, first_mismatch, pattern};
use kata_shim::config::{Config, SharedFs, VsockMode};
use kata_shim::network::{NetworkRecord, PodNetwork};
use kata_shim::vm::{AgentAddr, Vm, VmOptions};

/// How long the floor may take from QEMU spawn to its ready line (TCG,
/// sixteen modules loaded one by one, a loaded machine).
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// The floor initrd, built from the workspace's `kata-floor` into
/// target/test-images once per process; with the test image's kernel.
pub fn floor_image() -> (PathBuf, PathBuf) {
    static BUILD: Once = Once::new();
    let (kernel, _, _) = super::test_image();
    let initrd = kernel.with_file_name("floor.initrd");
    BUILD.call_once(|| {
        let o = Command::new(super::bin("kata-guest-image"))
            .arg("floor")
            .arg("--init-program")
            .arg(super::bin("kata-floor"))
            .arg("--output")
            .arg(&initrd)
            .output()
            .expect("run kata-guest-image floor");
        assert!(
            o.status.success(),
            "building the floor initrd failed (busybox: apt-get install busybox-static; kata-floor: cargo build --release --workspace): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
    (kernel, initrd)
}

/// What a floor VM gets beyond the pod VM's defaults.
#[derive(Debug, Clone, Default)]
pub struct FloorOptions {
    /// A NIC on a tap, reached from the host at [`FloorVm::guest_ip`].
    pub nic: bool,
    /// Extra QEMU arguments, put first (`-global virtio-net-pci.…`), for
    /// a sweep; empty: the shim's argv exactly.
    pub qemu_extra: Vec<String>,
    /// Extra vhost-device-vsock arguments (`--tx-buffer-size=…`).
    pub vsock_extra: Vec<String>,
    /// This vhost-device-vsock instead of the configuration's (a stock
    /// build, to reproduce its bugs); `None`: the one the shim would use.
    pub vsock_helper: Option<PathBuf>,
}

/// A running floor VM; dropping it kills QEMU and removes its helper,
/// directories, network namespace and veth.
pub struct FloorVm {
    pub id: String,
    rt: tokio::runtime::Runtime,
    vm: Option<Vm>,
    uds: PathBuf,
    net: Option<FloorNet>,
    /// Wrapper scripts of a sweep.
    _scratch: tempfile::TempDir,
}

/// The host end of the floor's NIC.
struct FloorNet {
    netns: String,
    record: Option<NetworkRecord>,
    guest: Ipv4Addr,
}

impl FloorVm {
    /// Boots a floor VM and waits for its ready line.
    pub fn boot(id: &str, opts: &FloorOptions) -> Result<FloorVm, String> {
        let (kernel, initrd) = floor_image();
        let scratch = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut config = Config::default();
        let q = &mut config.hypervisor.qemu;
        q.kernel = kernel;
        q.initrd = initrd;
        q.shared_fs = SharedFs::None;
        q.vsock = VsockMode::Hybrid;
        if !opts.qemu_extra.is_empty() {
            let qemu = q
                .path
                .iter()
                .find(|p| p.is_file())
                .ok_or("no QEMU binary")?;
            q.path = vec![wrapper(scratch.path(), "qemu", qemu, &opts.qemu_extra)?];
        }
        if let Some(helper) = &opts.vsock_helper {
            q.vhost_user_vsock_daemon = vec![helper.clone()];
        }
        if !opts.vsock_extra.is_empty() {
            let helper = q
                .vhost_user_vsock_daemon
                .iter()
                .find(|p| p.is_file())
                .ok_or("no vhost-device-vsock")?;
            q.vhost_user_vsock_daemon = vec![wrapper(
                scratch.path(),
                "vhost-device-vsock",
                helper,
                &opts.vsock_extra,
            )?];
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let mut floor = FloorVm {
            id: id.to_string(),
            rt,
            vm: None,
            uds: PathBuf::new(),
            net: None,
            _scratch: scratch,
        };
        let mut vm_opts = VmOptions::default();
        if opts.nic {
            let net = floor.net.insert(FloorNet::create(id)?);
            let ns = format!("/run/netns/{}", net.netns);
            // The shim's own plumbing: a tap joined to the veth by tc.
            let queues =
                kata_shim::vm::qemu::nic::queue_pairs(config.hypervisor.qemu.default_vcpus);
            let (pod, nics) = PodNetwork::attach(Path::new(&ns), false, queues)
                .map_err(|e| format!("attaching {ns}: {}", kata_shim::logging::error_chain(&e)))?;
            net.record = Some(pod.record());
            vm_opts.nics = nics;
            vm_opts.netns = Some(std::fs::File::open(&ns).map_err(|e| format!("{ns}: {e}"))?);
            config.hypervisor.qemu.kernel_params = format!(
                "{}={}/{}",
                kata_guest_image::floor::IP_PARAM,
                net.guest,
                FloorNet::PREFIX
            );
        }
        let vm = floor
            .rt
            .block_on(Vm::start(&config, id, &vm_opts))
            .map_err(|e| {
                format!(
                    "starting the floor VM: {}",
                    kata_shim::logging::error_chain(&e)
                )
            })?;
        let ready = vm.agent_ready_watch();
        if let AgentAddr::Hybrid(uds) = &vm.agent_addr {
            floor.uds = uds.clone();
        }
        floor.vm = Some(vm);
        let mut ready = ready.ok_or("the floor VM has no console")?;
        let up = floor.rt.block_on(async {
            tokio::time::timeout(BOOT_DEADLINE, ready.wait_for(|up| *up))
                .await
                .is_ok_and(|r| r.is_ok())
        });
        if !up {
            let out = floor.vm.as_ref().map(Vm::recent_output).unwrap_or_default();
            return Err(format!(
                "the floor VM printed no ready line within {BOOT_DEADLINE:?}; console:\n{out}"
            ));
        }
        Ok(floor)
    }

    /// A connection to the floor's vsock port through the helper's Unix
    /// socket, as the shim dials the agent.
    pub fn dial_vsock(&self) -> Result<UnixStream, String> {
        let uds = self.uds.clone();
        self.rt
            .block_on(async move {
                let s = kata_shim::vm::vsock::dial_hybrid(
                    &uds,
                    kata_floor::VSOCK_PORT,
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| kata_shim::logging::error_chain(&e))?;
                s.into_std().map_err(|e| e.to_string())
            })
            .and_then(|s| {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                Ok(s)
            })
            .map_err(|e| format!("dialing the floor over vsock: {e}"))
    }

    /// A TCP connection to the floor over its NIC.
    pub fn dial_tcp(&self) -> Result<TcpStream, String> {
        let ip = self.guest_ip().ok_or("the floor VM has no NIC")?;
        // The guest reports ready on vsock, which can be a moment before its
        // NIC answers ARP or its listener is up.
        dial_tcp_retrying((ip, kata_floor::TCP_PORT).into(), Duration::from_secs(30))
    }

    /// The guest's address on its NIC.
    pub fn guest_ip(&self) -> Option<Ipv4Addr> {
        self.net.as_ref().map(|n| n.guest)
    }

    /// QEMU's last console lines.
    pub fn console(&self) -> String {
        self.vm.as_ref().map(Vm::recent_output).unwrap_or_default()
    }
}

impl Drop for FloorVm {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            self.rt.block_on(vm.kill());
        }
        if let Some(net) = self.net.take() {
            net.remove();
        }
    }
}

impl FloorNet {
    const PREFIX: u8 = 30;

    /// A namespace with the inner veth end (`eth0`, the guest's address)
    /// and the outer end on the host with the host's address.
    fn create(id: &str) -> Result<FloorNet, String> {
        let nonce = kata_shim::boot_check::nonce();
        let tag: String = nonce
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        let netns = format!("kata-test-floor-{tag}");
        let veth = format!("kf{}", &tag[..tag.len().min(8)]);
        let used = cmd_output(&["ip", "-4", "-o", "addr", "show"])?;
        let subnet = (0..=255u8)
            .map(|i| {
                i.wrapping_add(id.len() as u8)
                    .wrapping_add(std::process::id() as u8)
            })
            .find(|n| !used.contains(&format!("10.254.{n}.")))
            .ok_or("no free 10.254.x.0/30 subnet for the floor NIC")?;
        let (host, guest) = (
            Ipv4Addr::new(10, 254, subnet, 1),
            Ipv4Addr::new(10, 254, subnet, 2),
        );
        let net = FloorNet {
            netns: netns.clone(),
            record: None,
            guest,
        };
        let p = Self::PREFIX;
        for argv in [
            vec!["ip", "netns", "add", &netns],
            vec![
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
            vec!["ip", "addr", "add", &format!("{host}/{p}"), "dev", &veth],
            vec!["ip", "link", "set", &veth, "up"],
            vec![
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{guest}/{p}"),
                "dev",
                "eth0",
            ],
            vec!["ip", "-n", &netns, "link", "set", "eth0", "up"],
            vec!["ip", "-n", &netns, "link", "set", "lo", "up"],
        ] {
            if let Err(e) = cmd_output(&argv) {
                net.remove();
                return Err(e);
            }
        }
        Ok(net)
    }

    /// Our tc plumbing, then the namespace (its veth end takes the host's
    /// with it).
    fn remove(self) {
        if let Some(r) = &self.record {
            kata_shim::network::detach(r);
        }
        let _ = cmd_output(&["ip", "netns", "del", &self.netns]);
    }
}

fn cmd_output(argv: &[&str]) -> Result<String, String> {
    let o = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A shell script that runs `real` with `extra` arguments first.
fn wrapper(dir: &Path, name: &str, real: &Path, extra: &[String]) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let quoted: Vec<String> = extra.iter().map(|a| format!("'{a}'")).collect();
    let text = format!(
        "#!/bin/sh\nexec '{}' {} \"$@\"\n",
        real.display(),
        quoted.join(" ")
    );
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A stream the protocol runs over: the vsock helper's Unix socket or TCP.
pub trait Stream: Read + Write {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Stream for TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// How a transfer ended short.
#[derive(Debug)]
pub enum TransferError {
    /// No byte moved for the rest of the deadline.
    Stalled { moved: u64, of: u64 },
    /// The byte at this offset differs from the pattern.
    Mismatch { at: u64 },
    /// The peer closed early.
    Short { moved: u64, of: u64 },
    /// Anything else.
    Io(String),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Stalled { moved, of } => {
                write!(f, "stalled after {moved} of {of} bytes")
            }
            TransferError::Mismatch { at } => {
                write!(
                    f,
                    "byte {at} differs from the pattern (bytes lost or reordered)"
                )
            }
            TransferError::Short { moved, of } => write!(f, "closed after {moved} of {of} bytes"),
            TransferError::Io(e) => f.write_str(e),
        }
    }
}

fn stalled(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A TCP connection (Nagle off) to a `kata-floor` that may still be
/// starting: "No route to host" (its NIC does not answer ARP yet) and
/// "Connection refused" (nothing listens yet) are retried for `within`, as
/// a client of a starting pod would.
pub fn dial_tcp_retrying(
    addr: std::net::SocketAddr,
    within: Duration,
) -> Result<TcpStream, String> {
    let deadline = std::time::Instant::now() + within;
    let s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("connecting to {addr}: {e}")),
        }
    };
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Guest → host: asks for `bytes` in guest writes of `write_size`, reads
/// and checks every byte; returns the time from the request to the last
/// byte. `deadline` bounds the whole transfer.
pub fn fetch(
    s: &mut impl Stream,
    bytes: u64,
    write_size: usize,
    deadline: Duration,
) -> Result<Duration, TransferError> {
    let io = |e: io::Error| TransferError::Io(e.to_string());
    let began = Instant::now();
    s.set_timeouts(deadline).map_err(io)?;
    let req = Request::Send { bytes, write_size };
    s.write_all(format!("{req}\n").as_bytes()).map_err(io)?;
    let mut buf = vec![0u8; MAX_WRITE];
    let mut got = 0u64;
    while got < bytes {
        let left = deadline.saturating_sub(began.elapsed());
        if left.is_zero() {
            return Err(TransferError::Stalled {
                moved: got,
                of: bytes,
            });
        }
        s.set_timeouts(left).map_err(io)?;
        let want = (bytes - got).min(buf.len() as u64) as usize;
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(TransferError::Short {
                    moved: got,
                    of: bytes,
                });
            }
            Ok(n) => n,
            Err(e) if stalled(&e) => {
                return Err(TransferError::Stalled {
                    moved: got,
                    of: bytes,
                });
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(at) = first_mismatch(got, &buf[..n]) {
            return Err(TransferError::Mismatch { at });
        }
        got += n as u64;
    }
    Ok(began.elapsed())
}

/// Host → guest: sends `bytes` of the pattern in writes of `write_size`,
/// the guest checking them if `check`; returns the time from the request
/// to the guest's answer.
pub fn push(
    s: &mut impl Stream,
    bytes: u64,
    write_size: usize,
    check: bool,
    deadline: Duration,
) -> Result<Duration, TransferError> {
    let io = |e: io::Error| TransferError::Io(e.to_string());
    let began = Instant::now();
    s.set_timeouts(deadline).map_err(io)?;
    let req = Request::Recv { bytes, check };
    s.write_all(format!("{req}\n").as_bytes()).map_err(io)?;
    let mut sent = 0u64;
    while sent < bytes {
        let left = deadline.saturating_sub(began.elapsed());
        if left.is_zero() {
            return Err(TransferError::Stalled {
                moved: sent,
                of: bytes,
            });
        }
        s.set_timeouts(left).map_err(io)?;
        let n = (bytes - sent).min(write_size.min(MAX_WRITE) as u64) as usize;
        match s.write(pattern(sent, n)) {
            Ok(0) => {
                return Err(TransferError::Short {
                    moved: sent,
                    of: bytes,
                });
            }
            Ok(w) => sent += w as u64,
            Err(e) if stalled(&e) => {
                return Err(TransferError::Stalled {
                    moved: sent,
                    of: bytes,
                });
            }
            Err(e) => return Err(io(e)),
        }
    }
    s.set_timeouts(
        deadline
            .saturating_sub(began.elapsed())
            .max(Duration::from_secs(1)),
    )
    .map_err(io)?;
    let line = read_line(s).map_err(|e| {
        if stalled(&e) {
            TransferError::Io(format!(
                "all {bytes} bytes written, but the guest never answered"
            ))
        } else {
            io(e)
        }
    })?;
    match Reply::parse(&line) {
        Some(Reply::Ok(n)) if n == bytes => Ok(began.elapsed()),
        Some(Reply::Mismatch(at)) => Err(TransferError::Mismatch { at }),
        Some(Reply::Short(n)) => Err(TransferError::Short {
            moved: n,
            of: bytes,
        }),
        _ => Err(TransferError::Io(format!("guest answered {line:?}"))),
    }
}

/// `count` round trips of a `len`-byte message through the guest's echo on
/// one connection; each one's time.
pub fn echo(s: &mut impl Stream, len: usize, count: usize) -> Result<Vec<Duration>, String> {
    s.set_timeouts(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{}\n", Request::Echo).as_bytes())
        .map_err(|e| format!("echo request: {e}"))?;
    let msg = pattern(0, len);
    let mut back = vec![0u8; len];
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        s.write_all(msg).map_err(|e| format!("echo {i}: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("echo {i}: {e}"))?;
        times.push(t.elapsed());
        if back != msg {
            return Err(format!("echo {i} came back changed"));
        }
    }
    Ok(times)
}

/// One line, byte by byte (the protocol's replies are a few bytes).
fn read_line(s: &mut impl Stream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 128 {
        if s.read(&mut b)? == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}
