//! The host end of the guest's vsock: choosing vhost or hybrid, reserving a
//! CID on `/dev/vhost-vsock`, and dialing the agent port through
//! `vhost-device-vsock`'s Unix socket (`CONNECT <port>` / `OK <port>`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::config::VsockMode;

/// Where the kernel's vhost-vsock device lives.
pub const VHOST_VSOCK_DEVICE: &str = "/dev/vhost-vsock";

/// vsock after `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Vhost,
    Hybrid,
}

/// `auto` means vhost where the device exists.
pub fn choose(wanted: VsockMode, vhost_device_exists: bool) -> Mode {
    match wanted {
        VsockMode::Vhost => Mode::Vhost,
        VsockMode::Hybrid => Mode::Hybrid,
        VsockMode::Auto if vhost_device_exists => Mode::Vhost,
        VsockMode::Auto => Mode::Hybrid,
    }
}

/// Errors of the vsock layer.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "cannot open {VHOST_VSOCK_DEVICE} (load the vhost_vsock module, or set vsock = \"hybrid\")"
    )]
    OpenDevice(#[source] io::Error),
    #[error("no free vsock CID after {attempts} attempts")]
    NoFreeCid { attempts: u32 },
    #[error("reserving vsock CID {cid} failed")]
    SetCid {
        cid: u64,
        #[source]
        source: Errno,
    },
    #[error("hybrid vsock {path}: connect failed")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("hybrid vsock {path}: handshake for port {port} failed: {reply}")]
    Handshake {
        path: String,
        port: u32,
        reply: String,
    },
    #[error("hybrid vsock {path}: port {port}: {source}")]
    Auth {
        path: String,
        port: u32,
        #[source]
        source: crate::vm::token::AuthError,
    },
}

/// Lowest CID a guest may use (0-2 are reserved for the hypervisor, local
/// and host).
const FIRST_GUEST_CID: u64 = 3;
/// Highest CID tried; `u32::MAX` is `VMADDR_CID_ANY`.
const LAST_GUEST_CID: u64 = u32::MAX as u64 - 1;
const CID_ATTEMPTS: u32 = 50;

/// Picks CIDs from `random` and offers them to `try_set` until one is free.
/// `EADDRINUSE` means another VM holds it; any other error is final.
pub fn reserve_cid(
    mut random: impl FnMut() -> u64,
    mut try_set: impl FnMut(u64) -> Result<(), Errno>,
) -> Result<u64, VsockError> {
    for _ in 0..CID_ATTEMPTS {
        let cid = FIRST_GUEST_CID + random() % (LAST_GUEST_CID - FIRST_GUEST_CID + 1);
        match try_set(cid) {
            Ok(()) => return Ok(cid),
            Err(Errno::EADDRINUSE) => continue,
            Err(source) => return Err(VsockError::SetCid { cid, source }),
        }
    }
    Err(VsockError::NoFreeCid {
        attempts: CID_ATTEMPTS,
    })
}

nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, 0xAF, 0x60, u64);

/// A CID held on an open `/dev/vhost-vsock`; QEMU inherits the fd as
/// `vhostfd=`, and the reservation ends when the last holder closes it.
#[derive(Debug)]
pub struct VhostCid {
    pub file: File,
    pub cid: u64,
}

/// Opens the vhost-vsock device and reserves a random free CID on it.
pub fn reserve_vhost_cid() -> Result<VhostCid, VsockError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_VSOCK_DEVICE)
        .map_err(VsockError::OpenDevice)?;
    let fd = file.as_raw_fd();
    let cid = reserve_cid(random_u64, |cid| {
        // SAFETY: `fd` is an open vhost-vsock descriptor owned by `file`,
        // which outlives this call, and the ioctl only reads the u64 behind
        // the pointer, which lives on this stack frame.
        unsafe { vhost_vsock_set_guest_cid(fd, &cid) }.map(|_| ())
    })?;
    Ok(VhostCid { file, cid })
}

/// 64 random bits from the kernel; the clock and pid when urandom fails.
pub(crate) fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        // Without urandom, fall back to the clock: the ioctl still rejects
        // CIDs in use and ids are checked for collisions, so this only costs
        // retries, never a clash.
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
                ^ u64::from(std::process::id())
        }
    }
}

/// Connects to `port` in the guest through a hybrid vsock Unix socket.
/// The reply line is awaited for at most `handshake_timeout`: a guest whose
/// vsock driver is not up yet may leave it unanswered.
pub async fn dial_hybrid(
    uds: &Path,
    port: u32,
    handshake_timeout: Duration,
) -> Result<UnixStream, VsockError> {
    let path = uds.display().to_string();
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Connect {
            path: path.clone(),
            source,
        })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| VsockError::Connect {
            path: path.clone(),
            source,
        })?;
    // Read byte by byte so nothing after the reply line is consumed: the rest
    // of the stream belongs to ttrpc.
    let reply = tokio::time::timeout(handshake_timeout, read_reply_line(&mut stream)).await;
    let reply = match reply {
        Err(_) => "no reply".to_string(),
        Ok(Err(e)) => format!("read failed: {e}"),
        Ok(Ok((line, false))) if line.is_empty() => "connection closed".to_string(),
        Ok(Ok((line, _))) => line.trim_end().to_string(),
    };
    if reply.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(VsockError::Handshake { path, port, reply })
    }
}

/// Longest reply line kept (the handshake's and the agent token's): `OK
/// <port>` is a few bytes, and a longer line is only ever quoted in an
/// error.
pub(crate) const REPLY_MAX: usize = 128;

/// A peer's reply line, read byte by byte so that nothing after it is
/// consumed (the rest of the stream belongs to ttrpc or a shell), at most
/// [`REPLY_MAX`] bytes of it: the rest of an over-long line is read and
/// dropped up to its newline (or the caller's timeout), so a peer that
/// never sends one cannot grow the shim's memory. The flag says whether a
/// newline ended it (false: the peer closed first).
pub(crate) async fn read_reply_line<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(String, bool)> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let ended = loop {
        if stream.read(&mut byte).await? == 0 {
            break false;
        }
        if byte[0] == b'\n' {
            break true;
        }
        if line.len() < REPLY_MAX {
            line.push(byte[0]);
        }
    };
    Ok((String::from_utf8_lossy(&line).into_owned(), ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_choice() {
        assert_eq!(choose(VsockMode::Auto, true), Mode::Vhost);
        assert_eq!(choose(VsockMode::Auto, false), Mode::Hybrid);
        assert_eq!(choose(VsockMode::Vhost, false), Mode::Vhost);
        assert_eq!(choose(VsockMode::Hybrid, true), Mode::Hybrid);
    }

    #[test]
    fn cid_retries_on_in_use_and_stays_in_range() {
        let mut draws = [0u64, u64::MAX, 5].into_iter();
        let mut tried = Vec::new();
        let cid = reserve_cid(
            || draws.next().expect("enough draws"),
            |cid| {
                tried.push(cid);
                if tried.len() < 3 {
                    Err(Errno::EADDRINUSE)
                } else {
                    Ok(())
                }
            },
        )
        .expect("third try succeeds");
        assert_eq!(tried.len(), 3);
        assert_eq!(cid, tried[2]);
        for c in tried {
            assert!((FIRST_GUEST_CID..=LAST_GUEST_CID).contains(&c), "{c}");
        }
    }

    #[test]
    fn cid_gives_up_after_bounded_attempts() {
        let mut n = 0;
        let r = reserve_cid(
            || 7,
            |_| {
                n += 1;
                Err(Errno::EADDRINUSE)
            },
        );
        assert!(matches!(r, Err(VsockError::NoFreeCid { attempts: 50 })));
        assert_eq!(n, 50);
    }

    #[test]
    fn cid_other_errors_are_final() {
        let r = reserve_cid(|| 9, |_| Err(Errno::EPERM));
        assert!(matches!(
            r,
            Err(VsockError::SetCid {
                cid: 12,
                source: Errno::EPERM
            })
        ));
    }

    async fn fake_muxer(reply: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hv.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 64];
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .expect("read");
            assert_eq!(&buf[..n], b"CONNECT 1024\n");
            if !reply.is_empty() {
                s.write_all(reply.as_bytes()).await.expect("write");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn hybrid_handshake_ok_keeps_following_bytes() {
        let (_d, path) = fake_muxer("OK 1073741824\npayload").await;
        let mut s = dial_hybrid(&path, 1024, Duration::from_secs(2))
            .await
            .expect("ok");
        let mut rest = [0u8; 7];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut rest)
            .await
            .expect("rest");
        assert_eq!(&rest, b"payload");
    }

    #[tokio::test]
    async fn hybrid_handshake_failures_are_reported() {
        let (_d, path) = fake_muxer("ERR nope\n").await;
        let e = dial_hybrid(&path, 1024, Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("ERR nope"), "{e}");
        let (_d, path) = fake_muxer("").await;
        let e = dial_hybrid(&path, 1024, Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(e.to_string().contains("no reply"), "{e}");
    }
}
