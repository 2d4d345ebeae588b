//! The shim's client of the in-guest agent, and the only way the shim
//! talks to it: dialing over hybrid or kernel vsock with retries until a
//! deadline, the first-contact checks (health and protocol version), and
//! one typed method per call ([`calls`]), each with its deadline, its
//! metrics and its error mapping.

pub mod calls;

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kata_agent_protocol::{
    AGENT_VSOCK_PORT, PROTOCOL_VERSION, agent, agent_ttrpc, health, health_ttrpc,
};
use tokio::sync::watch;
use ttrpc::r#async::transport::Socket;
use ttrpc::context;

use crate::metrics::Metrics;
use crate::vm::AgentAddr;
use crate::vm::token::AgentToken;

/// Errors reaching or talking to the agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not answer within {timeout:?} (last error: {last})")]
    DialTimeout { timeout: Duration, last: String },
    #[error("VM exited ({status}) before the agent answered{detail}")]
    VmExited { status: String, detail: String },
    #[error(
        "agent speaks protocol version {agent}, this shim speaks {shim}: rebuild the guest image (kata-guest-image --force) so the agent matches the shim"
    )]
    VersionMismatch { agent: u32, shim: u32 },
    #[error("agent reports it is not serving ({0:?})")]
    NotServing(health::health_check_response::ServingStatus),
    #[error("agent call {call} failed")]
    Rpc {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    /// The guest answered something the protocol does not allow (more
    /// bytes than were asked for, for instance).
    #[error("agent call {call} broke the protocol: {problem}")]
    Protocol { call: &'static str, problem: String },
}

impl AgentError {
    /// The gRPC code an agent failure is reported with, everywhere: the
    /// agent's own codes are deliberate and pass through (an unknown one is
    /// an internal error); a broken transport or a guest that never answered
    /// means the VM is unreachable.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => match s.code() {
                ttrpc::Code::OK | ttrpc::Code::UNKNOWN => ttrpc::Code::INTERNAL,
                c => c,
            },
            // What the guest sent cannot be trusted for this stream.
            AgentError::Protocol { .. } => ttrpc::Code::DATA_LOSS,
            _ => ttrpc::Code::UNAVAILABLE,
        }
    }

    /// Whether the connection to the agent broke under the call (the VM or
    /// its vsock path died), as opposed to an answer or a deadline.
    pub fn lost_transport(&self) -> bool {
        matches!(
            self,
            AgentError::Rpc {
                source: ttrpc::Error::Socket(_)
                    | ttrpc::Error::LocalClosed
                    | ttrpc::Error::RemoteClosed
                    | ttrpc::Error::Eof,
                ..
            }
        )
    }

    /// The status code the agent answered with, if it answered at all.
    pub fn status(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => Some(s.code()),
            _ => None,
        }
    }
}

/// Per-attempt bound on the hybrid vsock handshake: the guest answers
/// within milliseconds once its agent listens.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one whole dial attempt (connect, handshake, health check).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected agent.
#[derive(Clone)]
pub struct AgentClient {
    health: health_ttrpc::HealthClient,
    agent: agent_ttrpc::AgentServiceClient,
    /// When the agent last answered a health check or a stream read, in
    /// milliseconds since `epoch`: proof of life while a health check waits
    /// behind a busy guest's output.
    last_answer_ms: Arc<AtomicU64>,
    epoch: Instant,
    /// Where call latencies go, once the sandbox attached its metrics.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentClient")
    }
}

/// A call context: with a deadline, or none for the calls that block by
/// design (WaitProcess, ReadStdout/ReadStderr, GetOOMEvent).
pub fn call_context(timeout: Option<Duration>) -> context::Context {
    match timeout {
        Some(t) => context::with_timeout(t.as_nanos() as i64),
        None => context::with_timeout(0),
    }
}

async fn dial_once(addr: &AgentAddr, token: Option<&AgentToken>) -> Result<Socket, String> {
    match addr {
        AgentAddr::Hybrid(uds) => {
            let s = crate::vm::vsock::dial_hybrid(uds, AGENT_VSOCK_PORT, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Socket::from(authenticated(s, token).await?))
        }
        AgentAddr::Vhost(cid) => {
            let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(
                *cid as u32,
                AGENT_VSOCK_PORT,
            ))
            .await
            .map_err(|e| format!("vsock connect to cid {cid}: {e}"))?;
            Ok(Socket::from(authenticated(s, token).await?))
        }
    }
}

/// `stream` once the agent took the sandbox's token (when there is one).
async fn authenticated<S>(mut stream: S, token: Option<&AgentToken>) -> Result<S, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(t) = token {
        t.present(&mut stream, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

impl AgentClient {
    /// Wraps an already connected stream (used by tests with a fake agent).
    pub fn from_socket(socket: Socket) -> AgentClient {
        let client = ttrpc::r#async::Client::new(socket);
        AgentClient {
            health: health_ttrpc::HealthClient::new(client.clone()),
            agent: agent_ttrpc::AgentServiceClient::new(client),
            last_answer_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            metrics: None,
        }
    }

    /// The same connection, recording every bounded call's latency in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> AgentClient {
        self.metrics = Some(metrics);
        self
    }

    /// Records that the agent just answered.
    pub fn answered(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_answer_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the agent answered anything within the last `window`.
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last) <= window
    }

    /// Dials until the agent answers a health check or `timeout` passes.
    /// Stops early when `vm_exit` reports that QEMU has ended: a guest that
    /// died will never answer.
    ///
    /// With `ready`, no dial is made before it turns true (the agent's
    /// console marker): hybrid vsock connections made while the guest is
    /// still bringing its vsock device up can wedge vhost-device-vsock.
    pub async fn connect(
        addr: &AgentAddr,
        token: Option<&AgentToken>,
        timeout: Duration,
        mut vm_exit: Option<watch::Receiver<Option<ExitStatus>>>,
        vm_output: impl Fn() -> String,
        ready: Option<watch::Receiver<bool>>,
    ) -> Result<AgentClient, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        let mut last = String::from("no attempt made");
        if let Some(mut ready) = ready {
            let exited = async {
                match vm_exit.as_mut() {
                    Some(rx) => {
                        let _ = rx.wait_for(|s| s.is_some()).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = tokio::time::timeout(timeout, ready.wait_for(|r| *r)) => {
                    if !matches!(r, Ok(Ok(_))) {
                        last = "the agent never reported ready on the guest console".into();
                    }
                }
                () = exited => {}
            }
        }
        loop {
            if let Some(status) = vm_exit.as_ref().and_then(|rx| *rx.borrow()) {
                let out = vm_output();
                return Err(AgentError::VmExited {
                    status: status.to_string(),
                    detail: if out.is_empty() {
                        String::new()
                    } else {
                        format!("; last output: {out}")
                    },
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::DialTimeout { timeout, last });
            }
            let attempt = async {
                let sock = dial_once(addr, token).await?;
                let client = AgentClient::from_socket(sock);
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(HANDSHAKE_TIMEOUT * 2);
                client
                    .check_health(left.max(Duration::from_millis(100)))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(client)
            };
            // Every attempt has its own bound, not just the overall deadline:
            // a connect can block for good when vhost-device-vsock's accept
            // backlog is full, and one stuck attempt must not eat the rest of
            // the dial window.
            let bound = deadline.saturating_duration_since(now).min(ATTEMPT_TIMEOUT);
            let outcome = tokio::time::timeout(bound, attempt).await;
            match outcome {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("attempt gave no answer within {bound:?}"),
            }
            tracing::debug!(elapsed_ms = now.elapsed().as_millis() as u64, error = %last, "agent dial attempt failed");
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            match vm_exit.as_mut() {
                Some(rx) => {
                    let _ = tokio::time::timeout(pause, rx.changed()).await;
                }
                None => tokio::time::sleep(pause).await,
            }
            // Failed attempts cost almost nothing (the socket is not there
            // yet, or the guest resets at once), and every poll interval is
            // added to the boot time, so poll often.
            backoff = (backoff * 2).min(Duration::from_millis(40));
        }
    }

    /// The generated client, for tests that drive the agent's protocol
    /// directly (malformed, hostile and unsupported requests); pair it with
    /// [`call_context`]. The shim itself makes only the typed calls of
    /// [`calls`], which `tests/structure.rs` checks.
    #[doc(hidden)]
    pub fn raw(&self) -> &agent_ttrpc::AgentServiceClient {
        &self.agent
    }

    /// `Health.Check`, requiring SERVING.
    pub async fn check_health(&self, timeout: Duration) -> Result<(), AgentError> {
        let mut req = health::CheckRequest::new();
        req.service = "kata-shim".into();
        let began = Instant::now();
        let r = self.health.check(call_context(Some(timeout)), &req).await;
        if let Some(m) = &self.metrics {
            m.rpc(
                "Health.Check",
                r.as_ref().map(|_| began.elapsed()).map_err(|_| ()),
            );
        }
        let r = r.map_err(|source| AgentError::Rpc {
            call: "Health.Check",
            source,
        })?;
        match r.status.enum_value_or_default() {
            health::health_check_response::ServingStatus::SERVING => {
                self.answered();
                Ok(())
            }
            other => Err(AgentError::NotServing(other)),
        }
    }

    /// First contact after [`AgentClient::connect`]: fetches the guest
    /// details and refuses an agent of another protocol version.
    pub async fn handshake(&self) -> Result<agent::GuestDetailsResponse, AgentError> {
        let d = self.guest_details("").await?;
        check_protocol_version(d.protocol_version)?;
        Ok(d)
    }
}

/// Refuses any version but ours: the protocol has no negotiation.
pub fn check_protocol_version(agent: u32) -> Result<(), AgentError> {
    if agent == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(AgentError::VersionMismatch {
            agent,
            shim: PROTOCOL_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(source: ttrpc::Error) -> AgentError {
        AgentError::Rpc {
            call: "RemoveContainer",
            source,
        }
    }

    /// Only a broken connection counts as a lost VM: a deadline or an
    /// answer from the agent leaves the sandbox to its health checks.
    #[test]
    fn only_a_broken_connection_is_a_lost_transport() {
        for e in [
            ttrpc::Error::Socket("early eof".into()),
            ttrpc::Error::LocalClosed,
            ttrpc::Error::RemoteClosed,
            ttrpc::Error::Eof,
        ] {
            assert!(rpc(e).lost_transport());
        }
        let answered = ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, "gone"));
        for e in [
            ttrpc::Error::Others("Request deadline elapsed".into()),
            answered,
        ] {
            assert!(!rpc(e).lost_transport());
        }
        assert!(
            !AgentError::Protocol {
                call: "ReadStdout",
                problem: "too long".into()
            }
            .lost_transport()
        );
    }
}
