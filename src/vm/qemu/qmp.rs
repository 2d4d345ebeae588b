//! A minimal QMP client: the capabilities handshake, `query-status` and
//! `quit`. Replies are matched by `id`; asynchronous events in between are
//! skipped.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path} within {timeout:?}")]
    Connect { path: String, timeout: Duration },
    #[error("QMP i/o failed")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP sent malformed JSON: {0}")]
    Json(String),
    #[error("QMP command {command} failed: {message}")]
    Command { command: String, message: String },
    #[error("QMP command {command} got no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest QMP line accepted; QEMU's replies here are tiny.
const MAX_LINE: usize = 1 << 20;

impl Qmp {
    /// Connects (retrying until `timeout`, as QEMU creates the socket
    /// shortly after it starts) and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(_) => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        timeout,
                    });
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        };
        let greeting = tokio::time::timeout(REPLY_TIMEOUT, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                timeout: REPLY_TIMEOUT,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Json(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let wait = async {
            loop {
                let m = self.read_message().await?;
                if m.get("id").and_then(Value::as_u64) != Some(id) {
                    continue; // an event
                }
                if let Some(r) = m.get("return") {
                    return Ok(r.clone());
                }
                let message = m
                    .pointer("/error/desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    message,
                });
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.into(),
                timeout: REPLY_TIMEOUT,
            })?
    }

    /// The VM's run state, e.g. `running` or `paused`.
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Asks QEMU to exit. The connection may close before a reply arrives,
    /// which counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) | Err(QmpError::Io(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line).map_err(|e| QmpError::Json(e.to_string()));
        }
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP server: greeting, then for each request the reply
    /// from `script` (with an event injected before each reply).
    async fn server(script: Vec<Value>) -> (tempfile::TempDir, std::path::PathBuf) {
        let (d, p, _) = recording_server(script).await;
        (d, p)
    }

    /// [`server`], also keeping every request it received.
    pub(crate) async fn recording_server(
        script: Vec<Value>,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("greet");
            for reply in script {
                let mut line = String::new();
                if r.read_line(&mut line).await.expect("read") == 0 {
                    return;
                }
                let req: Value = serde_json::from_str(&line).expect("json");
                record.lock().expect("lock").push(req.clone());
                let mut reply = reply;
                reply["id"] = req["id"].clone();
                w.write_all(b"{\"event\": \"RTC_CHANGE\", \"data\": {}}\n")
                    .await
                    .expect("event");
                w.write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("reply");
            }
        });
        (dir, path, seen)
    }

    #[tokio::test]
    async fn handshake_status_and_errors() {
        let (_d, path) = server(vec![
            json!({"return": {}}),
            json!({"return": {"status": "running", "running": true}}),
            json!({"error": {"class": "GenericError", "desc": "nope"}}),
        ])
        .await;
        let mut q = Qmp::connect(&path, Duration::from_secs(2))
            .await
            .expect("connect");
        assert_eq!(q.status().await.expect("status"), "running");
        let e = q.execute("stop", None).await.expect_err("fails");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[tokio::test]
    async fn quit_tolerates_closed_connection() {
        let (_d, path) = server(vec![json!({"return": {}})]).await;
        let mut q = Qmp::connect(&path, Duration::from_secs(2))
            .await
            .expect("connect");
        q.quit().await.expect("closed counts as quit");
    }

    #[tokio::test]
    async fn connect_times_out() {
        let e = Qmp::connect(
            Path::new("/nonexistent/qmp.sock"),
            Duration::from_millis(50),
        )
        .await
        .expect_err("no socket");
        assert!(matches!(e, QmpError::Connect { .. }));
    }
}
