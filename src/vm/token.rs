//! The sandbox's agent token (`kata_agent_protocol::auth`): made fresh for
//! each VM from the kernel's random source, left at the root of the share
//! for the agent before QEMU starts, and sent as the first line of every
//! connection to the agent and the debug console. The share's root is
//! 0700 on the host and read-only to the guest, so only the shim's side
//! (root) and this guest can read it; QEMU's argv, which every local user
//! can read, never carries it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use kata_agent_protocol::auth::{DENIED, FILE, OK, PREFIX, well_formed};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::vm::vsock::read_reply_line;

/// The token of one sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentToken(String);

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentToken(..)")
    }
}

/// Why the agent did not take a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the agent refused this sandbox's token ({0})")]
    Refused(String),
    #[error("the agent did not answer the token within {0:?}")]
    NoAnswer(Duration),
    #[error("sending the token failed: {0}")]
    Io(String),
}

impl AgentToken {
    /// 32 bytes from the kernel's random source, never from a clock.
    pub fn generate() -> io::Result<AgentToken> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(AgentToken(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// Writes the token for the agent at the root of the share (the caller
    /// holds the share's write window).
    pub fn write(&self, share_dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(share_dir.join(FILE))?;
        f.write_all(self.0.as_bytes())
    }

    /// The token of a running sandbox, for `kata-ctl exec`.
    pub fn read(share_dir: &Path) -> Option<AgentToken> {
        let text = std::fs::read_to_string(share_dir.join(FILE)).ok()?;
        let t = text.trim_end();
        well_formed(t).then(|| AgentToken(t.to_string()))
    }

    /// Sends the token as the first line of `stream` and waits for the
    /// agent's answer.
    pub async fn present<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        timeout: Duration,
    ) -> Result<(), AuthError> {
        let line = format!("{PREFIX}{}\n", self.0);
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| AuthError::Io(e.to_string()))?;
        let answer = match tokio::time::timeout(timeout, read_reply_line(stream)).await {
            Err(_) => return Err(AuthError::NoAnswer(timeout)),
            Ok(Err(e)) => return Err(AuthError::Refused(e.to_string())),
            Ok(Ok((_, false))) => return Err(AuthError::Refused("the connection closed".into())),
            Ok(Ok((line, true))) => line,
        };
        match answer.as_str() {
            OK => Ok(()),
            DENIED => Err(AuthError::Refused(DENIED.into())),
            other => Err(AuthError::Refused(crate::ratelimit::quote_guest(other, 64))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn tokens_are_fresh_well_formed_and_never_printed() {
        let a = AgentToken::generate().expect("urandom");
        let b = AgentToken::generate().expect("urandom");
        assert_ne!(a, b);
        assert!(well_formed(&a.0), "{}", a.0);
        assert_eq!(format!("{a:?}"), "AgentToken(..)");
        let dir = tempfile::tempdir().expect("tempdir");
        a.write(dir.path()).expect("write");
        assert_eq!(AgentToken::read(dir.path()), Some(a.clone()));
        assert!(a.write(dir.path()).is_err(), "never overwritten");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[tokio::test]
    async fn present_reads_only_the_answer_line() {
        let t = AgentToken::generate().expect("urandom");
        for (answer, ok) in [
            ("OK\nttrpc", true),
            ("DENIED\n", false),
            ("garbage\n", false),
            ("", false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let answer = answer.to_string();
            let peer = tokio::spawn(async move {
                let mut line = vec![0u8; 70];
                b.read_exact(&mut line).await.expect("line");
                b.write_all(answer.as_bytes()).await.expect("answer");
                line
            });
            let r = t.present(&mut a, Duration::from_secs(2)).await;
            assert_eq!(r.is_ok(), ok, "{r:?}");
            assert_eq!(
                peer.await.expect("peer"),
                format!("AUTH {}\n", t.0).into_bytes()
            );
            if ok {
                let mut rest = [0u8; 5];
                a.read_exact(&mut rest).await.expect("rest");
                assert_eq!(&rest, b"ttrpc", "what follows the answer is untouched");
            }
        }
    }
}
