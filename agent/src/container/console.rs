//! The console socket of a process with a terminal: libcontainer opens the
//! pty inside the container (its own devpts instance), makes it the
//! process's controlling terminal, and sends the master here over a Unix
//! socket, as runc does for containerd. The process then sees a real
//! terminal of its own (`tty` names it, shells get job control), and the
//! agent copies between the master and the shim.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::cmsg_space;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::error::{AgentError, Result};

/// How long the master may take to arrive once libcontainer returned:
/// it is sent before the process reports itself ready, so it is normally
/// there already.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound console socket waiting for one master.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

/// Where console sockets are bound: a Unix socket path must fit in 108
/// bytes, and a container's directory with a 64-character exec id does not.
const SOCKET_DIR: &str = "/run/kata-console";

impl ConsoleSocket {
    /// Binds a fresh socket in [`SOCKET_DIR`].
    pub fn bind_new() -> Result<ConsoleSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new(SOCKET_DIR);
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io("creating", dir, e))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ConsoleSocket::bind(dir.join(format!("{n}.sock")))
    }

    /// Binds `path` (removed again when this is dropped).
    pub fn bind(path: PathBuf) -> Result<ConsoleSocket> {
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| AgentError::io("binding", &path, e))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts libcontainer's connection and takes the master it sent.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        wait_readable(self.listener.as_fd(), "the console socket's connection")?;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| AgentError::io("accepting on", &self.path, e))?;
        wait_readable(conn.as_fd(), "the pty master")?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| AgentError::sys("receiving the pty master", e))?;
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| AgentError::sys("reading the console message", e))?
        {
            if let ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
        let mut owned = fds.into_iter().map(|fd| {
            // SAFETY: SCM_RIGHTS handed us a new descriptor that nothing
            // else owns; wrapping it makes it closed exactly once.
            unsafe { OwnedFd::from_raw_fd(fd) }
        });
        let master = owned
            .next()
            .ok_or_else(|| AgentError::Internal("the console socket sent no descriptor".into()))?;
        // Any extra descriptor is closed as it drops here.
        owned.for_each(drop);
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<()> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(RECEIVE_TIMEOUT).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(0) => Err(AgentError::Internal(format!(
            "{what} did not arrive within {RECEIVE_TIMEOUT:?}"
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(AgentError::sys(format!("waiting for {what}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_sent_descriptor_is_received() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = ConsoleSocket::bind(dir.path().join("console.sock")).expect("bind");
        // As libcontainer: connect, send "/dev/ptmx" with one descriptor.
        let client = UnixStream::connect(sock.path()).expect("connect");
        let file = std::fs::File::open("/dev/null").expect("open");
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        let got = sock.receive_master().expect("receive");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).expect("link");
        assert_eq!(link, Path::new("/dev/null"));
        let path = sock.path().to_path_buf();
        drop(sock);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn a_connection_without_a_descriptor_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = ConsoleSocket::bind(dir.path().join("c.sock")).expect("bind");
        let mut client = UnixStream::connect(sock.path()).expect("connect");
        std::io::Write::write_all(&mut client, b"/dev/ptmx").expect("write");
        let e = sock.receive_master().expect_err("no descriptor");
        assert!(e.to_string().contains("no descriptor"), "{e}");
    }
}
