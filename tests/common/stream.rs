//! The client side of containerd's CRI streaming server for `Exec`, as
//! `kubectl exec` reaches it through the API server: a WebSocket on the URL
//! that the Exec RPC returned, subprotocol `v4.channel.k8s.io`. Every binary
//! frame starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final
//! status (a JSON `metav1.Status`), 4 terminal resize (JSON width/height).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// One streaming exec session.
pub struct ExecStream {
    ws: WebSocket<TcpStream>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status document of channel 3, once the process ended.
    pub status: Option<serde_json::Value>,
}

impl ExecStream {
    /// Opens the WebSocket on `url` (`http://host:port/exec/<token>`).
    pub fn connect(url: &str) -> Result<ExecStream, String> {
        let ws_url = url.replacen("http://", "ws://", 1);
        let authority = ws_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("exec URL {url}: {e}"))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            PROTOCOL.parse().expect("a valid header value"),
        );
        let tcp =
            TcpStream::connect(&authority).map_err(|e| format!("connect {authority}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let (ws, resp) = tungstenite::client(req, tcp)
            .map_err(|e| format!("WebSocket handshake on {url}: {e}"))?;
        let agreed = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if agreed != PROTOCOL {
            return Err(format!(
                "the streaming server agreed to {agreed:?}, not {PROTOCOL}"
            ));
        }
        Ok(ExecStream {
            ws,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
        })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::Binary(frame.into()))
            .map_err(|e| format!("sending on channel {channel}: {e}"))
    }

    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        self.send(STDIN, data)
    }

    /// Tells the terminal its new size, as kubectl does on SIGWINCH.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        let doc = serde_json::json!({"Width": width, "Height": height});
        self.send(RESIZE, doc.to_string().as_bytes())
    }

    /// Reads frames until stdout contains `needle` or `within` passes.
    pub fn read_until(&mut self, needle: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while !String::from_utf8_lossy(&self.stdout).contains(needle) {
            if Instant::now() > deadline || !self.read_frame()? {
                return Err(format!(
                    "no {needle:?} on stdout within {within:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.stdout)
                ));
            }
        }
        Ok(())
    }

    /// Reads until the server closes the stream; returns the status.
    pub fn finish(&mut self, within: Duration) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + within;
        while self.read_frame()? {
            if Instant::now() > deadline {
                return Err(format!("the exec stream was still open after {within:?}"));
            }
        }
        self.status
            .clone()
            .ok_or_else(|| "the stream closed without a status on channel 3".into())
    }

    /// One frame; false once the stream is closed.
    fn read_frame(&mut self) -> Result<bool, String> {
        let msg = match self.ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(true);
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(false);
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return Ok(false),
            Err(e) => return Err(format!("reading the exec stream: {e}")),
        };
        match msg {
            Message::Binary(b) if !b.is_empty() => {
                let (channel, data) = (b[0], &b[1..]);
                match channel {
                    STDOUT => self.stdout.extend_from_slice(data),
                    STDERR => self.stderr.extend_from_slice(data),
                    STATUS if !data.is_empty() => {
                        self.status = Some(
                            serde_json::from_slice(data)
                                .map_err(|e| format!("status on channel 3: {e}"))?,
                        );
                    }
                    _ => {}
                }
                Ok(true)
            }
            Message::Close(_) => Ok(false),
            _ => Ok(true),
        }
    }
}

/// The exit code a v4 status document reports: 0 for `Success`, the
/// `ExitCode` cause otherwise.
pub fn exit_code(status: &serde_json::Value) -> Option<i32> {
    if status["status"] == "Success" {
        return Some(0);
    }
    status["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")?["message"]
        .as_str()?
        .parse()
        .ok()
}
