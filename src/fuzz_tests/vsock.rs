//! The hybrid-vsock handshake (`vm::vsock::dial_hybrid`): after
//! `CONNECT <port>\n` the muxer answers one line, `OK <port>` on success.
//! Whatever the line is, the dial succeeds exactly when the trimmed line
//! starts with `OK `, a refusal quotes the line, and not one byte after
//! the line is consumed: the rest of the stream belongs to ttrpc.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::{Rng, Tally, mutate_bytes, run, runtime, show};
use crate::vm::vsock::{VsockError, dial_hybrid};

/// How the dial should end for `reply` (all the muxer sends).
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Connected; the stream then yields these bytes.
    Ok(Vec<u8>),
    /// Refused, quoting this reply.
    Refused(String),
}

fn expected(reply: &[u8]) -> Expect {
    if reply.is_empty() {
        return Expect::Refused("connection closed".into());
    }
    let nl = reply.iter().position(|&b| b == b'\n');
    let end = nl.unwrap_or(reply.len());
    // At most 128 bytes of the line are kept, decoded lossily.
    let kept = &reply[..end.min(128)];
    let line = String::from_utf8_lossy(kept).trim_end().to_string();
    let rest = nl.map_or(&[][..], |i| &reply[i + 1..]);
    if line.starts_with("OK ") {
        Expect::Ok(rest.to_vec())
    } else {
        Expect::Refused(line)
    }
}

/// Whether the reply line is valid UTF-8 (decoded lossily either way).
fn utf8_line(reply: &[u8]) -> bool {
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    std::str::from_utf8(&reply[..end]).is_ok()
}

const REPLIES: [&[u8]; 12] = [
    b"OK 1073741824\n",
    b"OK 1024\n",
    b"OK \n",
    b"OK\n",
    b"ok 1024\n",
    b" OK 1024\n",
    b"OK 1024\r\n",
    b"OK 1024",
    b"ERR connection refused\n",
    b"\n",
    b"OK \xff\xfe\n",
    b"OK 1024\nOK 1025\n",
];

fn reply(rng: &mut Rng) -> Vec<u8> {
    let mut r = match rng.below(4) {
        0 => rng.bytes(32),
        1 => {
            let seed = rng.pick(&REPLIES).to_vec();
            mutate_bytes(rng, &seed)
        }
        _ => rng.pick(&REPLIES).to_vec(),
    };
    if rng.one_in(2) {
        // What ttrpc would send next.
        let payload = rng.bytes(40);
        r.extend(payload);
    }
    r
}

/// A fake muxer on `listener` for one connection: reads the CONNECT line,
/// checks it, sends `reply` and hangs up.
async fn muxer(listener: &UnixListener, reply: &[u8]) {
    let (s, _) = listener.accept().await.expect("accept");
    let mut s = BufReader::new(s);
    let mut line = String::new();
    s.read_line(&mut line).await.expect("read CONNECT");
    assert_eq!(line, "CONNECT 1024\n");
    let _ = s.get_mut().write_all(reply).await;
}

#[test]
fn hybrid_vsock_handshake_accepts_only_ok_and_keeps_the_stream() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hv.sock");
    let listener = rt
        .block_on(async { UnixListener::bind(&path) })
        .expect("bind");
    let name = "hybrid_vsock_handshake_accepts_only_ok_and_keeps_the_stream";
    let mut tally = Tally::default();
    run(
        name,
        0x0b50_c000_0000_0007,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let reply = reply(rng);
            let want = expected(&reply);
            let client = async {
                match dial_hybrid(&path, 1024, Duration::from_secs(2)).await {
                    Ok(mut s) => {
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest).await.expect("read the rest");
                        Ok(rest)
                    }
                    Err(e @ VsockError::Handshake { .. }) => {
                        let msg = e.to_string();
                        let VsockError::Handshake {
                            port,
                            reply,
                            path: p,
                        } = e
                        else {
                            unreachable!("matched above")
                        };
                        assert_eq!(port, 1024);
                        assert_eq!(p, path.display().to_string());
                        assert!(msg.contains(&reply), "{msg}");
                        Err(reply)
                    }
                    Err(e) => panic!("unexpected dial error: {e}"),
                }
            };
            let got = rt.block_on(async {
                let (_, got) = tokio::join!(muxer(&listener, &reply), client);
                got
            });
            let ok = match (&want, &got) {
                (Expect::Ok(w), Ok(g)) => w == g,
                (Expect::Refused(w), Err(g)) => w == g,
                _ => false,
            };
            assert!(ok, "reply {}: expected {want:?}, got {got:?}", show(&reply));
            tally.add(match want {
                _ if !utf8_line(&reply) => "not UTF-8",
                Expect::Ok(rest) if rest.is_empty() => "connected",
                Expect::Ok(_) => "connected with data",
                Expect::Refused(_) => "refused",
            });
        },
    );
    let all = ["connected", "connected with data", "refused", "not UTF-8"];
    tally.require(name, &all);
}

/// The reply line was read without a length cap (now capped) until its newline, the
/// connection's end or the 2 s handshake timeout, and then kept whole in
/// the error (and so in every dial-attempt log line and the final
/// DialTimeout message): a muxer that streams bytes without a newline
/// grows the shim's memory for the whole timeout.
#[test]
fn hybrid_vsock_reply_line_is_bounded() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hv.sock");
    let listener = rt
        .block_on(async { UnixListener::bind(&path) })
        .expect("bind");
    let reply = vec![b'A'; 256 << 10];
    let got = rt.block_on(async {
        let (_, got) = tokio::join!(
            muxer(&listener, &reply),
            dial_hybrid(&path, 1024, Duration::from_secs(2))
        );
        got
    });
    match got {
        Err(VsockError::Handshake { reply, .. }) => {
            assert!(
                reply.len() <= 4096,
                "kept a {} byte reply line",
                reply.len()
            );
        }
        other => panic!("not refused: {other:?}"),
    }
}
