//! `kata-floor`: the floor VM's payload, exec'd by its `/init` once the
//! modules are loaded and eth0 is up. It listens on vsock port
//! [`VSOCK_PORT`] and TCP port [`TCP_PORT`] and serves the line protocol of
//! the `kata_floor` library, one thread per connection, at most
//! [`MAX_CONNECTIONS`] at once. std and libc only: no runtime between the
//! socket and the bytes, which is the point of a floor.
//!
//! As an ordinary program, in a container of a kata pod and of a runc pod,
//! it lets `make bench` move the pods' bytes with the floor VM's own code:
//!
//! - `kata-floor tcp <port>` serves the same protocol on TCP only;
//! - `kata-floor lines <bytes> <write_size>` writes `bytes` bytes of
//!   [`LINE`]-byte lines to stdout in `write(2)` calls of `write_size`
//!   bytes (rounded down to whole lines), as the floor VM's `send` does to
//!   vsock: the cheapest writer a container can have, so that the stdout
//!   row measures the runtime's output path and not the writer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kata_floor::{
    LINE_MAX, MAX_WRITE, READY_LINE, Reply, Request, TCP_PORT, VSOCK_PORT, first_mismatch, pattern,
};

/// Connections served at once; more are refused with a line.
const MAX_CONNECTIONS: usize = 16;
/// Bound of every blocking read and write: a host that went away frees its
/// thread.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Receive buffer of `recv` and `echo`.
const READ_BUF: usize = 256 << 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--version"] => {
            println!("kata-floor {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        [] => serve(),
        ["lines", bytes, write_size] => match (bytes.parse(), write_size.parse()) {
            (Ok(bytes), Ok(write_size)) => write_lines(bytes, write_size),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lines: {bytes:?} and {write_size:?} must be byte counts"),
            )),
        },
        ["tcp", port] => match port.parse::<u16>() {
            Ok(port) => serve_tcp_only(port),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tcp: {port:?} is not a port number"),
            )),
        },
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: kata-floor [--version | tcp <port> | lines <bytes> <write_size>]",
        )),
    };
    if let Err(e) = result {
        // As PID 1 an exit panics the guest kernel, and `panic=1` with
        // QEMU's -no-reboot ends the VM: the host sees the VM go.
        eprintln!("kata-floor: {e}");
        std::process::exit(1);
    }
}

/// Bytes of each line `lines` writes, newline included (the bench's 1 KiB
/// lines).
const LINE: usize = 1024;

/// `lines`: `bytes` bytes (rounded down to whole lines) of `x` lines to
/// stdout, `write_size` bytes (rounded down to whole lines, at least one,
/// at most [`MAX_WRITE`]) per `write(2)`.
fn write_lines(bytes: u64, write_size: usize) -> io::Result<()> {
    let per_write = (write_size.min(MAX_WRITE) / LINE).max(1) * LINE;
    let mut line = vec![b'x'; LINE];
    line[LINE - 1] = b'\n';
    let block = line.repeat(per_write / LINE);
    let mut out = io::stdout().lock();
    let mut left = bytes / LINE as u64 * LINE as u64;
    while left > 0 {
        let n = left.min(per_write as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Serves every connection of a TCP listener.
fn serve_tcp(tcp: TcpListener, live: &Arc<AtomicUsize>) {
    for conn in tcp.incoming() {
        match conn {
            Ok(s) => {
                // Nagle off: the echo's round trips are the figure.
                let _ = s.set_nodelay(true);
                spawn_conn(OwnedFd::from(s), live);
            }
            Err(e) => eprintln!("kata-floor: tcp accept: {e}"),
        }
    }
}

fn serve_tcp_only(port: u16) -> io::Result<()> {
    let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    println!("kata-floor: listening on TCP port {port}");
    io::stdout().flush()?;
    serve_tcp(tcp, &Arc::new(AtomicUsize::new(0)));
    Ok(())
}

fn serve() -> io::Result<()> {
    let vsock = vsock_listener(VSOCK_PORT)?;
    let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT))?;
    println!("{READY_LINE}");
    io::stdout().flush()?;
    let live = Arc::new(AtomicUsize::new(0));
    let tcp_live = Arc::clone(&live);
    std::thread::spawn(move || serve_tcp(tcp, &tcp_live));
    loop {
        match accept(&vsock) {
            Ok(fd) => spawn_conn(fd, &live),
            Err(e) => {
                eprintln!("kata-floor: vsock accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves `fd` on a thread of its own, or refuses it when
/// [`MAX_CONNECTIONS`] are being served.
fn spawn_conn(fd: OwnedFd, live: &Arc<AtomicUsize>) {
    let mut conn = File::from(fd);
    if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        live.fetch_sub(1, Ordering::SeqCst);
        let _ = conn.write_all(b"busy\n");
        return;
    }
    let live = Arc::clone(live);
    std::thread::spawn(move || {
        if let Err(e) = handle(&mut conn) {
            eprintln!("kata-floor: connection: {e}");
        }
        live.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One connection: a request line, then its bytes.
fn handle(conn: &mut File) -> io::Result<()> {
    set_timeouts(conn.as_raw_fd(), IO_TIMEOUT)?;
    let line = read_line(conn)?;
    let request = match Request::parse(&line) {
        Ok(r) => r,
        Err(e) => return conn.write_all(format!("{e}\n").as_bytes()),
    };
    match request {
        Request::Send { bytes, write_size } => {
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(write_size as u64) as usize;
                conn.write_all(pattern(sent, n))?;
                sent += n as u64;
            }
            // Close only after the host did: it reads every byte first, so
            // no byte in flight meets a teardown.
            drain(conn)
        }
        Request::Recv { bytes, check } => {
            let reply = receive(conn, bytes, check)?;
            conn.write_all(format!("{reply}\n").as_bytes())
        }
        Request::Echo => {
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n])?;
            }
        }
    }
}

/// Reads `bytes` bytes (comparing them with the pattern if `check`).
fn receive(conn: &mut File, bytes: u64, check: bool) -> io::Result<Reply> {
    let mut buf = vec![0u8; READ_BUF.min(MAX_WRITE)];
    let mut got = 0u64;
    while got < bytes {
        let want = (bytes - got).min(buf.len() as u64) as usize;
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(Reply::Short(got));
        }
        if check {
            if let Some(at) = first_mismatch(got, &buf[..n]) {
                return Ok(Reply::Mismatch(at));
            }
        }
        got += n as u64;
    }
    Ok(Reply::Ok(got))
}

/// Reads and drops until EOF.
fn drain(conn: &mut File) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    while conn.read(&mut buf)? > 0 {}
    Ok(())
}

/// The request line, read byte by byte so that none of the request's bytes
/// is consumed with it.
fn read_line(conn: &mut File) -> io::Result<String> {
    let mut line = Vec::with_capacity(LINE_MAX);
    let mut byte = [0u8; 1];
    loop {
        if conn.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a request line",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() == LINE_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request line too long",
            ));
        }
        line.push(byte[0]);
    }
}

/// A listening `AF_VSOCK` stream socket on `port`, any CID.
fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before it
    // is owned.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: `addr` is a valid sockaddr_vm on this frame and the length
    // passed is its size; bind(2) only reads it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a descriptor `fd` owns; no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), MAX_CONNECTIONS as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The next connection on a vsock listener.
fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers ask accept4(2) for no peer address; the
    // result is checked before it is owned.
    let raw = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `SO_RCVTIMEO` and `SO_SNDTIMEO` on a socket (vsock honours both, as TCP
/// does).
fn set_timeouts(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a valid timeval on this frame and the length
        // passed is its size; setsockopt(2) only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast::<libc::c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
