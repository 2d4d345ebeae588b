//! `kata-ctl metrics`: reads the management socket of one sandbox's shim,
//! or of every running one, and prints their Prometheus text as one
//! exposition (each family's `# HELP`/`# TYPE` once), every sample
//! labelled with its `sandbox_id` as kata-monitor does.
//!
//! The sockets are root-only (mode 0600 in 0700 directories), so this must
//! run as root. The exchange is the one of [`crate::mgmt`]; plain blocking
//! I/O is enough for a one-shot tool.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::MGMT_ROOT;
use crate::metrics;

/// How long one shim gets to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A shim's answer is a few KiB; more is not a shim speaking.
const MAX_ANSWER: u64 = 4 << 20;

/// Errors of `kata-ctl metrics`.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("kata-ctl metrics must run as root (the management sockets are mode 0600)")]
    NotRoot,
    #[error("invalid sandbox id {id:?}: {reason}")]
    BadId { id: String, reason: String },
    #[error(
        "no sandbox is running: no {MGMT_ROOT}/*/{} found",
        crate::layout::MGMT_SOCKET
    )]
    NoSandbox,
    #[error("cannot list {MGMT_ROOT}")]
    List(#[source] std::io::Error),
    #[error("the shim did not answer on {path} (is sandbox {sandbox_id} running?)")]
    Unreachable {
        sandbox_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim on {path} answered {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// What one run gathered: the merged text of the shims that answered and
/// the errors of those that did not.
#[derive(Debug)]
pub struct Gathered {
    pub text: String,
    pub failures: Vec<MetricsError>,
}

/// Reads the metrics of `sandbox_id`, or of every sandbox with a socket.
/// Fails outright only when there is nothing to ask.
pub fn gather(sandbox_id: Option<&str>) -> Result<Gathered, MetricsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(MetricsError::NotRoot);
    }
    let targets = match sandbox_id {
        Some(id) => {
            crate::ids::validate(id).map_err(|e| MetricsError::BadId {
                id: id.to_string(),
                reason: e.to_string(),
            })?;
            vec![(id.to_string(), crate::layout::mgmt_socket(id))]
        }
        None => running()?,
    };
    if targets.is_empty() {
        return Err(MetricsError::NoSandbox);
    }
    let mut texts = Vec::new();
    let mut failures = Vec::new();
    for (id, path) in targets {
        match scrape(&id, &path) {
            Ok(t) => texts.push(metrics::label_all(&t, "sandbox_id", &id)),
            Err(e) => failures.push(e),
        }
    }
    Ok(Gathered {
        text: metrics::merge(&texts),
        failures,
    })
}

/// Every `(sandbox id, socket)` under the management root, sorted by id:
/// directories named like a sandbox id (Kata's own shims, if any, share
/// the root and answer the same way).
fn running() -> Result<Vec<(String, PathBuf)>, MetricsError> {
    let entries = match std::fs::read_dir(MGMT_ROOT) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MetricsError::List(e)),
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            crate::ids::validate(&id).ok()?;
            let sock = e.path().join(crate::layout::MGMT_SOCKET);
            sock.exists().then_some((id, sock))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// One request on `path`; the body of a `200` answer.
fn scrape(sandbox_id: &str, path: &Path) -> Result<String, MetricsError> {
    let unreachable = |source| MetricsError::Unreachable {
        sandbox_id: sandbox_id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(unreachable)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n")
        .map_err(unreachable)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    parse_answer(&raw).map_err(|reason| MetricsError::BadAnswer {
        path: path.to_path_buf(),
        reason,
    })
}

/// The body of an HTTP/1.x `200` answer, or what is wrong with it.
fn parse_answer(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{} bytes without an HTTP header", raw.len()));
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{status:?} instead of 200 OK"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nup 1\n";
        assert_eq!(parse_answer(ok).expect("ok"), "up 1\n");
        let e = parse_answer(b"HTTP/1.0 405 Method Not Allowed\r\n\r\n").expect_err("405");
        assert!(e.contains("405"), "{e}");
        assert!(parse_answer(b"garbage").is_err());
    }
}
