//! The data-path floor's wire protocol and byte pattern, shared by the guest
//! program (`kata-floor`, the payload of the floor initrd's `/init`) and the
//! host side (the vsock floor test and `make bench`).
//!
//! The floor is a VM with the pod VM's kernel, QEMU flags, vsock device and
//! NIC, but with this program instead of the agent: what it moves is the
//! best the data path can do, and a pod's figure divided by it is what our
//! agent and shim cost on top.
//!
//! Each connection (vsock port [`VSOCK_PORT`] or TCP port [`TCP_PORT`])
//! carries one request line, then the request's bytes:
//!
//! - `send <bytes> <write_size>`: the guest writes `bytes` bytes of the
//!   pattern in `write(2)` calls of `write_size` bytes, then waits for the
//!   host to close (so that no byte in flight is lost to a teardown race);
//! - `recv <bytes> <check>`: the guest reads `bytes` bytes (`check`: `1`
//!   compares them with the pattern, `0` only counts) and answers
//!   [`Reply::Ok`], [`Reply::Mismatch`] or [`Reply::Short`];
//! - `echo`: the guest writes back whatever it reads, until EOF.
//!
//! The pattern's byte at stream offset `i` is `i % 251`: a prime period, so
//! a lost or repeated chunk of any power-of-two-ish size shifts it and is
//! found at the first byte after the gap.

use std::fmt;
use std::sync::OnceLock;

/// The agent's vsock port: the floor answers where the agent would.
pub const VSOCK_PORT: u32 = 1024;
/// The floor's TCP port on the guest NIC.
pub const TCP_PORT: u16 = 5001;
/// Printed on the console once both ports listen. It carries the agent's
/// ready marker (`kata_agent_protocol::guest::READY_MARKER`, checked by the
/// floor test) because the host side dials only after that marker, as the
/// shim does: dialing hybrid vsock before the guest's vsock is up can wedge
/// vhost-device-vsock.
pub const READY_LINE: &str = "kata-floor: listening (kata-agent: ready for the shim)";
/// Most bytes one request moves: a test tool, but a bounded one.
pub const MAX_BYTES: u64 = 1 << 30;
/// Largest `write_size` of a `send`; also the largest slice of the pattern.
pub const MAX_WRITE: usize = 1 << 20;
/// Longest request line, newline excluded.
pub const LINE_MAX: usize = 64;
/// The pattern's period (prime).
const PERIOD: usize = 251;

/// One request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The guest sends `bytes` in writes of `write_size`.
    Send { bytes: u64, write_size: usize },
    /// The guest receives `bytes`, comparing them with the pattern if
    /// `check`.
    Recv { bytes: u64, check: bool },
    /// The guest echoes until EOF.
    Echo,
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad request: {}", self.0)
    }
}

impl std::error::Error for BadRequest {}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, BadRequest> {
        let bad = |why: &str| BadRequest(format!("{why}: {line:?}"));
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let bytes = |w: &str| -> Result<u64, BadRequest> {
            let n: u64 = w.parse().map_err(|_| bad("byte count is not a number"))?;
            if n > MAX_BYTES {
                return Err(bad("byte count over the limit"));
            }
            Ok(n)
        };
        match words.as_slice() {
            ["send", n, w] => {
                let write_size: usize = w.parse().map_err(|_| bad("write size is not a number"))?;
                if write_size == 0 || write_size > MAX_WRITE {
                    return Err(bad("write size out of range"));
                }
                Ok(Request::Send {
                    bytes: bytes(n)?,
                    write_size,
                })
            }
            ["recv", n, c] => {
                let check = match *c {
                    "1" => true,
                    "0" => false,
                    _ => return Err(bad("check is neither 0 nor 1")),
                };
                Ok(Request::Recv {
                    bytes: bytes(n)?,
                    check,
                })
            }
            ["echo"] => Ok(Request::Echo),
            _ => Err(bad("unknown request")),
        }
    }
}

impl fmt::Display for Request {
    /// The request line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Send { bytes, write_size } => write!(f, "send {bytes} {write_size}"),
            Request::Recv { bytes, check } => write!(f, "recv {bytes} {}", u8::from(*check)),
            Request::Echo => f.write_str("echo"),
        }
    }
}

/// The guest's answer to a `recv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Every byte arrived (and matched, if checked).
    Ok(u64),
    /// The byte at this offset differs from the pattern.
    Mismatch(u64),
    /// EOF after this many bytes.
    Short(u64),
}

impl Reply {
    /// Parses a reply line (without its newline).
    pub fn parse(line: &str) -> Option<Reply> {
        let (word, n) = line.trim().split_once(' ')?;
        let n = n.parse().ok()?;
        match word {
            "ok" => Some(Reply::Ok(n)),
            "mismatch" => Some(Reply::Mismatch(n)),
            "short" => Some(Reply::Short(n)),
            _ => None,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok(n) => write!(f, "ok {n}"),
            Reply::Mismatch(n) => write!(f, "mismatch {n}"),
            Reply::Short(n) => write!(f, "short {n}"),
        }
    }
}

/// The pattern, long enough that any slice of up to [`MAX_WRITE`] bytes at
/// any offset is one borrow: sending is a `write(2)` of it, checking a
/// `memcmp` against it (cheap even under TCG).
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PERIOD + MAX_WRITE)
            .map(|i| (i % PERIOD) as u8)
            .collect()
    })
}

/// The pattern bytes at stream offset `offset`, `len` of them (at most
/// [`MAX_WRITE`]).
pub fn pattern(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_WRITE, "pattern slice of {len} bytes");
    let start = (offset % PERIOD as u64) as usize;
    &table()[start..start + len]
}

/// The stream offset of the first byte of `data` (which starts at `offset`)
/// that differs from the pattern, if any. `data` may be of any length.
pub fn first_mismatch(offset: u64, data: &[u8]) -> Option<u64> {
    let mut at = 0;
    for chunk in data.chunks(MAX_WRITE) {
        let here = offset + at as u64;
        let want = pattern(here, chunk.len());
        if chunk != want {
            let i = chunk
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .expect("unequal slices of equal length differ somewhere");
            return Some(here + i as u64);
        }
        at += chunk.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_are_bounded() {
        for r in [
            Request::Send {
                bytes: 4 << 20,
                write_size: 40 << 10,
            },
            Request::Recv {
                bytes: 1,
                check: true,
            },
            Request::Recv {
                bytes: 0,
                check: false,
            },
            Request::Echo,
        ] {
            assert_eq!(Request::parse(&r.to_string()), Ok(r));
        }
        for bad in [
            "",
            "send 10",
            "send 10 0",
            "send 10 1048577",
            "send 1073741825 4096",
            "recv -1 1",
            "recv 10 2",
            "echo 1",
            "SEND 1 1",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [Reply::Ok(7), Reply::Mismatch(0), Reply::Short(1 << 40)] {
            assert_eq!(Reply::parse(&r.to_string()), Some(r));
        }
        assert_eq!(Reply::parse("ok"), None);
        assert_eq!(Reply::parse("fine 3"), None);
    }

    #[test]
    fn the_pattern_continues_across_slices_and_finds_a_gap() {
        let whole: Vec<u8> = (0..3000u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(pattern(0, 3000), &whole[..]);
        assert_eq!(pattern(1234, 100), &whole[1234..1334]);
        assert_eq!(first_mismatch(1234, &whole[1234..2000]), None);
        // A lost 40 KiB chunk: the bytes after it carry later offsets.
        let lost = 40 << 10;
        let mut stream = pattern(0, 1000).to_vec();
        stream.extend_from_slice(pattern(1000 + lost, 1000));
        assert_eq!(first_mismatch(0, &stream), Some(1000));
        // Longer than one pattern slice.
        let mut big = pattern(5, MAX_WRITE).to_vec();
        big.extend_from_slice(pattern(5 + MAX_WRITE as u64, 10));
        assert_eq!(first_mismatch(5, &big), None);
        big[MAX_WRITE + 3] ^= 1;
        assert_eq!(first_mismatch(5, &big), Some(5 + MAX_WRITE as u64 + 3));
    }
}
