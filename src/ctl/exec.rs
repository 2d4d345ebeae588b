//! `kata-ctl exec <sandbox-id>`: a root shell in the sandbox's guest
//! through the agent's debug console (vsock port
//! [`DEBUG_CONSOLE_VSOCK_PORT`]), reached the way the shim reaches the
//! agent: the sandbox's hybrid vsock Unix socket and `CONNECT <port>`.
//!
//! Bytes are relayed as they are, both ways, until the guest closes the
//! connection. The guest shell has no tty, so a local terminal is left in
//! its normal (cooked) mode: it echoes and edits lines itself, and Enter
//! sends the newline the shell expects.
//!
//! Only hybrid vsock is supported; a sandbox on kernel vhost-vsock (a CID)
//! gets a clear error.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use kata_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT;
use kata_agent_protocol::guest::DEBUG_CONSOLE_ERROR_PREFIX;

use crate::ids;
use crate::layout::SandboxPaths;
use crate::vm::token::AgentToken;
use crate::vm::vsock::{VsockError, dial_hybrid};

/// How long the guest gets to answer `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait for the console's answer to the token: one attempt only, on a
/// host that may be busy.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Sent when stdin ends. Hybrid vsock cannot half-close: when the Unix
/// socket's write side is shut down, vhost-device-vsock closes the whole
/// guest connection and the shell's pending output is lost. So the shell is
/// told to exit instead; it runs whatever it received first, and its exit
/// closes the connection. (The newline ends an unterminated last line.)
const EXIT_AT_EOF: &[u8] = b"\nexit\n";

/// How to turn the console on; part of every "not enabled" error.
pub const ENABLE_HINT: &str = "set [agent.kata] debug_console_enabled = true in the \
     configuration and use a guest image built with `kata-guest-image --debug`, \
     then start the sandbox again";

/// Errors of `kata-ctl exec`.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid sandbox id {id:?}: {reason}")]
    BadId { id: String, reason: String },
    #[error("sandbox {id} is not running on this host (no {})", .dir.display())]
    NotRunning { id: String, dir: PathBuf },
    #[error(
        "sandbox {id} does not use hybrid vsock (no {}); kata-ctl exec supports only hybrid vsock (set [hypervisor.qemu] vsock = \"hybrid\")",
        .socket.display()
    )]
    NotHybrid { id: String, socket: PathBuf },
    #[error("cannot reach sandbox {id}'s vsock socket (is it running?)")]
    Unreachable {
        id: String,
        #[source]
        source: VsockError,
    },
    #[error(
        "the debug console is not enabled for sandbox {id} (the guest refused vsock port {port}: {reply}); to enable it, {ENABLE_HINT}"
    )]
    NotEnabled {
        id: String,
        port: u32,
        reply: String,
    },
    #[error("the debug console of sandbox {id} refused: {message}; to enable it, {ENABLE_HINT}")]
    Refused { id: String, message: String },
    #[error("relaying the debug console")]
    Io(#[from] std::io::Error),
}

/// Connects to the debug console of `sandbox_id` and relays `input` to it
/// and its output to `output` until the guest closes the connection.
/// `input` is read on its own thread; when it ends, the shell is sent
/// `exit` (see [`EXIT_AT_EOF`]).
pub fn run(
    sandbox_id: &str,
    input: impl Read + Send + 'static,
    output: &mut dyn Write,
) -> Result<(), ExecError> {
    ids::validate(sandbox_id).map_err(|e| ExecError::BadId {
        id: sandbox_id.to_string(),
        reason: e.to_string(),
    })?;
    let paths = SandboxPaths::new(sandbox_id);
    if !paths.state_dir.is_dir() {
        return Err(ExecError::NotRunning {
            id: sandbox_id.to_string(),
            dir: paths.state_dir,
        });
    }
    let uds = paths.vsock_uds();
    if !uds.exists() {
        return Err(ExecError::NotHybrid {
            id: sandbox_id.to_string(),
            socket: uds,
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = AgentToken::read(&paths.share_dir);
    let stream = rt
        .block_on(async {
            let mut s = dial_hybrid(&uds, DEBUG_CONSOLE_VSOCK_PORT, HANDSHAKE_TIMEOUT).await?;
            // The agent serves the console only to a peer that presents
            // the sandbox's token (root can read it from the share).
            if let Some(t) = &token {
                t.present(&mut s, TOKEN_TIMEOUT)
                    .await
                    .map_err(|source| VsockError::Auth {
                        path: uds.display().to_string(),
                        port: DEBUG_CONSOLE_VSOCK_PORT,
                        source,
                    })?;
            }
            s.into_std().map_err(|source| VsockError::Connect {
                path: uds.display().to_string(),
                source,
            })
        })
        .map_err(|e| match e {
            VsockError::Handshake { port, reply, .. } => ExecError::NotEnabled {
                id: sandbox_id.to_string(),
                port,
                reply,
            },
            source => ExecError::Unreachable {
                id: sandbox_id.to_string(),
                source,
            },
        })?;
    drop(rt);
    stream.set_nonblocking(false)?;
    relay(sandbox_id, stream, input, output)
}

fn relay(
    sandbox_id: &str,
    stream: std::os::unix::net::UnixStream,
    mut input: impl Read + Send + 'static,
    output: &mut dyn Write,
) -> Result<(), ExecError> {
    let mut to_guest = stream.try_clone()?;
    // Not joined: it may sit in a read of a terminal after the guest has
    // gone, and the process exits right after the relay anyway.
    std::thread::Builder::new()
        .name("exec-stdin".into())
        .spawn(move || {
            if std::io::copy(&mut input, &mut to_guest).is_ok() {
                let _ = to_guest.write_all(EXIT_AT_EOF);
            }
        })?;
    let mut from_guest = stream;
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = true;
    loop {
        let n = match from_guest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if first {
            first = false;
            if let Some(rest) = buf[..n].strip_prefix(DEBUG_CONSOLE_ERROR_PREFIX.as_bytes()) {
                let mut message = rest.to_vec();
                let _ = from_guest.read_to_end(&mut message);
                return Err(ExecError::Refused {
                    id: sandbox_id.to_string(),
                    message: String::from_utf8_lossy(&message).trim_end().to_string(),
                });
            }
        }
        output.write_all(&buf[..n])?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn relays_both_ways_and_sends_exit_at_eof() {
        let (ours, guest) = UnixStream::pair().expect("pair");
        // A fake shell: echoes lines and exits at `exit`.
        let shell = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(&guest)) {
                let line = line.expect("line");
                if line == "exit" {
                    break;
                }
                (&guest)
                    .write_all(format!("{line}\n").as_bytes())
                    .expect("echo");
                got.push(line);
            }
            got
        });
        let mut out = Vec::new();
        relay("sb", ours, &b"echo hi\nno newline"[..], &mut out).expect("relay");
        assert_eq!(out, b"echo hi\nno newline\n");
        assert_eq!(shell.join().expect("join"), ["echo hi", "no newline"]);
    }

    #[test]
    fn agent_refusal_is_an_error_with_the_hint() {
        let (ours, guest) = UnixStream::pair().expect("pair");
        (&guest)
            .write_all(format!("{DEBUG_CONSOLE_ERROR_PREFIX}/bin/sh does not exist\n").as_bytes())
            .expect("write");
        drop(guest);
        let mut out = Vec::new();
        let e = relay("sb", ours, std::io::empty(), &mut out).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("/bin/sh does not exist"), "{msg}");
        assert!(msg.contains("debug_console_enabled = true"), "{msg}");
        assert!(out.is_empty());
    }

    #[test]
    fn missing_sandbox_is_named() {
        let e = run(
            "no-such-sandbox-for-exec",
            std::io::empty(),
            &mut Vec::new(),
        )
        .expect_err("not running");
        assert!(e.to_string().contains("is not running"), "{e}");
        let e = run("../x", std::io::empty(), &mut Vec::new()).expect_err("bad id");
        assert!(e.to_string().contains("invalid sandbox id"), "{e}");
    }
}
