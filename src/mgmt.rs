//! Kata's shim management socket: HTTP over the Unix socket
//! `/run/vc/sbs/<sandbox-id>/shim-monitor.sock`, where kata-monitor (and
//! `kata-ctl metrics`) find every shim of the node.
//!
//! kata-monitor watches `/run/vc/sbs` for sandbox directories, then asks
//! each shim `GET /metrics` (and `GET /agent-url` for its own
//! `/agent-url`) with Go's HTTP/1.1 client, keep-alive off, within 3 s.
//! Served here:
//! - `GET /metrics`: the Prometheus text of [`Source::metrics`];
//! - `GET /agent-url`: where the agent is reached, Kata's URL form;
//! - any other path: 404; another method on these paths: 405; a request
//!   that is not HTTP: 400.
//!
//! One request per connection, answered with `Connection: close`. Each
//! connection is its own task with deadlines for reading the request and
//! writing the answer, and at most [`MAX_CLIENTS`] are served at once, so a
//! slow or stuck client holds only its own connection, never the shim. The
//! socket is mode 0600 in a 0700 directory (root only), and the directory
//! goes with the sandbox ([`crate::layout::remove_sandbox_dirs`]).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client may take to send its request: Go's client sends it
/// at once, and kata-monitor gives up after 3 s anyway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request is a request line and a few headers; a longer one is refused.
const MAX_REQUEST: usize = 8192;
/// Connections served at once; more wait in the listen queue until one of
/// these answers or times out.
pub const MAX_CLIENTS: usize = 32;

/// What the socket serves; the sandbox in the shim, a fixture in tests.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The whole Prometheus text, read now.
    async fn metrics(&self) -> String;
    /// The agent's address in Kata's form (`hvsock://<uds>:<port>`,
    /// `vsock://<cid>:<port>`); `None` before the VM booted.
    fn agent_url(&self) -> Option<String>;
}

/// The serving endpoint; dropping it stops serving (the directory goes
/// with the sandbox's, or with [`Endpoint::remove`]).
#[derive(Debug)]
pub struct Endpoint {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Stops serving and removes the socket and its directory.
    pub fn remove(self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the management socket of `sandbox_id` and serves `source`. A
/// failure is logged, not fatal: the pod works without it.
pub fn serve(sandbox_id: &str, source: Arc<dyn Source>) -> Option<Endpoint> {
    serve_in(crate::layout::mgmt_dir(sandbox_id), sandbox_id, source)
}

/// [`serve`] in `dir` (a temporary directory in tests).
fn serve_in(dir: PathBuf, sandbox_id: &str, source: Arc<dyn Source>) -> Option<Endpoint> {
    match bind(&dir) {
        Ok(listener) => {
            tracing::info!(sandbox_id, dir = %dir.display(), "serving the management socket");
            let task = tokio::spawn(accept_loop(sandbox_id.to_string(), source, listener));
            Some(Endpoint { dir, task })
        }
        Err(e) => {
            tracing::warn!(sandbox_id, dir = %dir.display(), error = %e,
                "cannot serve the management socket");
            None
        }
    }
}

fn bind(dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(parent) = dir.parent() {
        // /run/vc/sbs is shared with Kata's own shim if both are installed;
        // it is made when missing and never changed.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    // A directory left by an earlier shim of this id holds only its socket.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let path = dir.join(crate::layout::MGMT_SOCKET);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn accept_loop(
    sandbox_id: String,
    source: Arc<dyn Source>,
    listener: tokio::net::UnixListener,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let source = source.clone();
                let sandbox_id = sandbox_id.clone();
                tokio::spawn(async move {
                    answer(&sandbox_id, source.as_ref(), stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(sandbox_id, error = %e, "management socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The parts of a request that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
}

/// The request line of a request head; `None` when it is not HTTP/1.x.
fn parse_request(head: &[u8]) -> Option<Request> {
    let line_end = head.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    // Go's client sends the path (`/metrics`); a proxy form names a host.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// Status, content type and body of the answer to `req`.
async fn route(source: &dyn Source, req: Option<Request>) -> (&'static str, String) {
    let Some(req) = req else {
        return ("400 Bad Request", "not an HTTP/1.x request\n".to_string());
    };
    let known = matches!(req.path.as_str(), "/metrics" | "/agent-url");
    if !known {
        return ("404 Not Found", "404 page not found\n".to_string());
    }
    if req.method != "GET" && req.method != "HEAD" {
        return (
            "405 Method Not Allowed",
            format!("{} takes GET only\n", req.path),
        );
    }
    match req.path.as_str() {
        "/metrics" => ("200 OK", source.metrics().await),
        _ => match source.agent_url() {
            Some(url) => ("200 OK", url),
            None => (
                "500 Internal Server Error",
                "the sandbox's VM is not running\n".to_string(),
            ),
        },
    }
}

/// Reads one request head and answers it.
async fn answer(sandbox_id: &str, source: &dyn Source, mut stream: tokio::net::UnixStream) {
    let mut head = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let req = match read {
        Ok(Ok(())) => parse_request(&head),
        Ok(Err(_)) if !head.is_empty() => None,
        _ => return,
    };
    let head_only = req.as_ref().is_some_and(|r| r.method == "HEAD");
    let (status, body) = route(source, req).await;
    let content_type = if status == "200 OK" && body.starts_with("# ") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    let written = tokio::time::timeout(ANSWER_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // What the client sent beyond the head (a refused request's rest)
        // is read and dropped before closing: closing with unread bytes
        // resets the connection, and the client would lose the answer.
        let mut sink = [0u8; 4096];
        let mut left = 16 * MAX_REQUEST;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!(sandbox_id, "management client went away or was too slow");
    }
}

/// Kata's agent URL of a VM's agent address.
pub fn agent_url(addr: &crate::vm::AgentAddr) -> String {
    let port = kata_agent_protocol::AGENT_VSOCK_PORT;
    match addr {
        crate::vm::AgentAddr::Hybrid(uds) => format!("hvsock://{}:{port}", uds.display()),
        crate::vm::AgentAddr::Vhost(cid) => format!("vsock://{cid}:{port}"),
    }
}

#[cfg(test)]
#[path = "mgmt_tests.rs"]
mod tests;
