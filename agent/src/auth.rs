//! The shim's proof of identity on every connection to the agent's ttrpc
//! port and to the debug console (`kata_agent_protocol::auth`): the token
//! the shim left at the share's root before boot, sent as the first line.
//! A connection without it is answered `DENIED` and closed before any
//! request is read or any shell is started.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use kata_agent_protocol::auth::{DENIED, FILE, LINE_MAX, OK, PREFIX, well_formed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a peer has to send its line: generous, since a busy TCG host
/// can delay a line for seconds; a silent peer holds only its own task or
/// console thread meanwhile.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox's token.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token the shim left at the root of the share mounted at
    /// `share`; `None` when there is none (no share), or it is malformed.
    pub fn load(share: &Path) -> Option<Token> {
        let path = share.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no token from the shim: connections to the agent are not authenticated");
                return None;
            }
        };
        let token = text.trim_end();
        if !well_formed(token) {
            tracing::warn!(path = %path.display(), "the shim's token is malformed: connections to the agent are not authenticated");
            return None;
        }
        Some(Token(token.to_string()))
    }

    #[cfg(test)]
    pub fn from_hex(hex: &str) -> Token {
        assert!(well_formed(hex));
        Token(hex.to_string())
    }

    /// Whether `line` (without its newline) is `AUTH <this token>`, in
    /// time that does not depend on where it differs.
    pub fn accepts(&self, line: &[u8]) -> bool {
        let want = format!("{PREFIX}{}", self.0);
        if line.len() != want.len() {
            return false;
        }
        line.iter()
            .zip(want.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Reads the peer's line (at most [`LINE_MAX`] bytes, within
/// [`HANDSHAKE_TIMEOUT`]) and answers it; true when the peer may go on.
pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, token: &Token) -> bool {
    let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte).await {
                Ok(1) if byte[0] == b'\n' => return Some(line),
                Ok(1) if line.len() < LINE_MAX => line.push(byte[0]),
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let ok = line.is_some_and(|l| token.accepts(&l));
    let answer = if ok { OK } else { DENIED };
    let _ = stream.write_all(format!("{answer}\n").as_bytes()).await;
    ok
}

/// [`check`] for the debug console's blocking sockets.
pub fn check_blocking(conn: &OwnedFd, token: &Token) -> bool {
    let file = match conn.as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => return false,
    };
    let _ = nix::sys::socket::setsockopt(
        conn,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(HANDSHAKE_TIMEOUT.as_secs() as i64, 0),
    );
    let mut reader = &file;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let ok = loop {
        match std::io::Read::read(&mut reader, &mut byte) {
            Ok(1) if byte[0] == b'\n' => break token.accepts(&line),
            Ok(1) if line.len() < LINE_MAX => line.push(byte[0]),
            // PID 1 reaps children: a shell that exits interrupts the read.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => break false,
        }
    };
    let _ = nix::sys::socket::setsockopt(
        conn,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    );
    let answer = if ok { OK } else { DENIED };
    let mut writer = &file;
    let _ = std::io::Write::write_all(&mut writer, format!("{answer}\n").as_bytes());
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_exact_line_is_accepted() {
        let t = Token::from_hex(HEX);
        assert!(t.accepts(format!("AUTH {HEX}").as_bytes()));
        assert!(!t.accepts(format!("AUTH {}", &HEX[..63]).as_bytes()));
        assert!(!t.accepts(format!("AUTH {HEX} ").as_bytes()));
        assert!(!t.accepts(format!("auth {HEX}").as_bytes()));
        assert!(!t.accepts(b""));
        let mut wrong = HEX.to_string();
        wrong.replace_range(63.., "0");
        assert!(!t.accepts(format!("AUTH {wrong}").as_bytes()));
        assert_eq!(format!("{t:?}"), "Token(..)", "never logged");
    }

    #[tokio::test]
    async fn check_answers_ok_denied_and_refuses_silence_and_floods() {
        let t = Token::from_hex(HEX);
        for (send, want_ok) in [
            (format!("AUTH {HEX}\n").into_bytes(), true),
            (b"AUTH nope\n".to_vec(), false),
            (vec![b'A'; 100_000], false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1 << 20);
            let peer = tokio::spawn(async move {
                let _ = b.write_all(&send).await;
                let mut reply = vec![0u8; 16];
                let n = b.read(&mut reply).await.unwrap_or(0);
                String::from_utf8_lossy(&reply[..n]).to_string()
            });
            assert_eq!(check(&mut a, &t).await, want_ok);
            let reply = peer.await.expect("peer");
            assert_eq!(reply, if want_ok { "OK\n" } else { "DENIED\n" });
        }
        // A peer that says nothing is refused at the deadline.
        let (mut a, _b) = tokio::io::duplex(64);
        let began = std::time::Instant::now();
        assert!(!check(&mut a, &t).await);
        assert!(began.elapsed() >= HANDSHAKE_TIMEOUT);
    }
}
