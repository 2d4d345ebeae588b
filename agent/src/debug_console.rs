//! The debug console: with `agent.debug_console` on the kernel command line
//! the agent listens on vsock port [`DEBUG_CONSOLE_VSOCK_PORT`] and gives
//! every connection a root shell ([`DEBUG_SHELL`]) in the guest's own
//! namespaces, whose stdin, stdout and stderr are the connection itself (no
//! relay, no tty: the host side, `kata-ctl exec`, relays raw bytes).
//!
//! Only images built with `kata-guest-image --debug` have a shell; on the
//! default image each connection gets a one-line explanation and is closed.
//! Without the key nothing listens on the port.
//!
//! The shells are children of PID 1, so the reaper collects them; nothing
//! here waits for them.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kata_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT;
use kata_agent_protocol::guest::{DEBUG_CONSOLE_ERROR_PREFIX, DEBUG_SHELL};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept4, bind, listen, socket,
};

use crate::auth::Token;
use crate::error::{AgentError, Result};

/// What a peer reads when the image has no shell.
pub fn no_shell_message(shell: &Path) -> String {
    format!(
        "{DEBUG_CONSOLE_ERROR_PREFIX}{} does not exist in this guest image; \
         build the image with `kata-guest-image --debug`\n",
        shell.display()
    )
}

/// Binds the vsock port and serves it on its own thread for the life of
/// PID 1. Errors binding are returned; errors per connection are logged.
/// With `token`, a connection gets a shell only after it sent the shim's
/// token (`crate::auth`).
pub fn start(token: Option<Token>) -> Result<()> {
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| internal("socket", e))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &VsockAddr::new(libc::VMADDR_CID_ANY, DEBUG_CONSOLE_VSOCK_PORT),
    )
    .map_err(|e| internal("bind", e))?;
    let backlog = Backlog::new(8).map_err(|e| internal("backlog", e))?;
    listen(&listener, backlog).map_err(|e| internal("listen", e))?;
    std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || accept_loop(listener, token))
        .map_err(|e| AgentError::Internal(format!("debug console thread: {e}")))?;
    tracing::warn!(
        port = DEBUG_CONSOLE_VSOCK_PORT,
        "debug console enabled: a root shell is served on this vsock port"
    );
    Ok(())
}

fn internal(what: &str, e: nix::Error) -> AgentError {
    AgentError::Internal(format!(
        "debug console on vsock port {DEBUG_CONSOLE_VSOCK_PORT}: {what}: {e}"
    ))
}

fn accept_loop(listener: OwnedFd, token: Option<Token>) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    loop {
        match accept4(fd, SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this descriptor; nothing
                // else owns it.
                let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                let token = token.clone();
                // A thread per connection: a peer that is slow to send its
                // token delays nobody else.
                let spawned = std::thread::Builder::new()
                    .name("debug-console-conn".into())
                    .spawn(move || serve_checked(conn, token.as_ref()));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "debug console: cannot start a connection thread");
                }
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {}
            Err(e) => {
                tracing::error!(error = %e, "debug console: accept failed; no longer serving");
                // Avoid a hot loop on a persistent error.
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Checks the peer's token, if there is one, then gives it a shell.
fn serve_checked(conn: OwnedFd, token: Option<&Token>) {
    if let Some(t) = token {
        if !crate::auth::check_blocking(&conn, t) {
            tracing::warn!("debug console: a connection without the shim's token was refused");
            return;
        }
    }
    match serve(conn, Path::new(DEBUG_SHELL)) {
        Ok(Some(child)) => tracing::info!(pid = child.id(), "debug console: shell started"),
        Ok(None) => tracing::warn!(shell = DEBUG_SHELL, "debug console: no shell in this image"),
        Err(e) => tracing::error!(error = %e, "debug console: cannot start a shell"),
    }
}

/// Gives `conn` a shell: `shell` with the connection as stdin, stdout and
/// stderr. Without the shell the peer gets [`no_shell_message`] and
/// `Ok(None)`. The caller does not have to wait for the child (PID 1's
/// reaper does).
pub fn serve(conn: OwnedFd, shell: &Path) -> std::io::Result<Option<Child>> {
    if !shell.exists() {
        let mut f = std::fs::File::from(conn);
        let _ = f.write_all(no_shell_message(shell).as_bytes());
        return Ok(None);
    }
    let out = conn.try_clone()?;
    let err = conn.try_clone()?;
    let child = Command::new(shell)
        .env_clear()
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .env("HOME", "/")
        .env("TERM", "dumb")
        .current_dir("/")
        .stdin(Stdio::from(conn))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?;
    Ok(Some(child))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn missing_shell_explains_and_closes() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let r = serve(OwnedFd::from(theirs), Path::new("/nonexistent/sh")).expect("serve");
        assert!(r.is_none());
        let mut text = String::new();
        (&ours).read_to_string(&mut text).expect("read to EOF");
        assert!(text.contains("/nonexistent/sh does not exist"), "{text}");
        assert!(text.contains("kata-guest-image --debug"), "{text}");
    }

    #[test]
    fn shell_runs_on_the_connection() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let mut child = serve(OwnedFd::from(theirs), Path::new("/bin/sh"))
            .expect("serve")
            .expect("host has /bin/sh");
        (&ours)
            .write_all(b"echo MARK_$((6*7)); echo err >&2\nexit 3\n")
            .expect("write");
        let mut text = String::new();
        (&ours).read_to_string(&mut text).expect("read to EOF");
        assert!(text.contains("MARK_42") && text.contains("err"), "{text}");
        assert_eq!(child.wait().expect("wait").code(), Some(3));
    }
}
