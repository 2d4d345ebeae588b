//! The ttrpc server and thin adapters from the generated service traits to
//! the domain code (`details.rs`). Errors are mapped with
//! [`AgentError::to_ttrpc`]. `DestroySandbox` only replies and signals the
//! owner of the server ([`Running::wait_destroy`]); powering off or exiting
//! is the owner's decision.

use std::sync::Arc;

use async_trait::async_trait;
use kata_agent_protocol::agent::{
    DestroySandboxRequest, Empty, GuestDetailsRequest, GuestDetailsResponse,
};
use kata_agent_protocol::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response::ServingStatus,
};
use kata_agent_protocol::{AGENT_VERSION, PROTOCOL_VERSION, agent_ttrpc, health_ttrpc};
use tokio::sync::mpsc;
use ttrpc::r#async::{Server, TtrpcContext};

use crate::details::{self, GuestPaths};
use crate::error::{AgentError, Result};

/// What the owner does once `DestroySandbox` was answered (for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyAction {
    /// PID 1: power the VM off.
    PowerOff,
    /// Test mode: stop serving and exit the process.
    Exit,
}

/// `grpc.Health`.
struct HealthService;

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        tracing::debug!(service = %req.service, "Health.Check");
        let mut resp = HealthCheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        tracing::debug!(service = %req.service, "Health.Version");
        let mut resp = VersionCheckResponse::new();
        resp.agent_version = AGENT_VERSION.to_string();
        resp.grpc_version = PROTOCOL_VERSION.to_string();
        Ok(resp)
    }
}

/// `grpc.AgentService`.
struct AgentService {
    paths: Arc<GuestPaths>,
    destroy_tx: mpsc::Sender<()>,
    on_destroy: DestroyAction,
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentService {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        tracing::debug!(probe = %req.shared_fs_probe, "GetGuestDetails");
        let paths = Arc::clone(&self.paths);
        // procfs and the share are read with blocking I/O; keep it off the workers.
        let res =
            tokio::task::spawn_blocking(move || details::collect(&paths, &req.shared_fs_probe))
                .await
                .unwrap_or_else(|e| Err(AgentError::Internal(format!("guest details task: {e}"))));
        res.map_err(|e| {
            tracing::warn!(error = %e, "GetGuestDetails failed");
            e.to_ttrpc()
        })
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(then = ?self.on_destroy, "DestroySandbox");
        // A full channel means a destroy is already pending: fine.
        let _ = self.destroy_tx.try_send(());
        Ok(Empty::new())
    }
}

/// A started server; dropping it closes all connections.
pub struct Running {
    server: Server,
    destroy_rx: mpsc::Receiver<()>,
}

impl Running {
    /// Resolves once `DestroySandbox` was answered (its reply may still be in flight).
    pub async fn wait_destroy(&mut self) {
        // The sender lives in the registered service, which the server keeps
        // for as long as `self` exists, so `None` cannot happen; treat it as
        // a destroy anyway rather than serving forever without one.
        let _ = self.destroy_rx.recv().await;
    }

    /// Stops listening and closes the connections.
    pub async fn shutdown(mut self) -> Result<()> {
        self.server
            .shutdown()
            .await
            .map_err(|e| AgentError::Server(format!("shutdown: {e}")))
    }
}

/// Binds `addr` (a ttrpc address: `vsock://-1:1024`, `unix:///path`),
/// registers both services and starts accepting.
pub async fn start(addr: &str, paths: GuestPaths, on_destroy: DestroyAction) -> Result<Running> {
    let (destroy_tx, destroy_rx) = mpsc::channel(1);
    let agent = Arc::new(AgentService {
        paths: Arc::new(paths),
        destroy_tx,
        on_destroy,
    });
    let mut server = Server::new()
        .bind(addr)
        .map_err(|e| AgentError::Server(format!("binding {addr}: {e}")))?
        .register_service(health_ttrpc::create_health(Arc::new(HealthService)))
        .register_service(agent_ttrpc::create_agent_service(agent));
    server
        .start()
        .await
        .map_err(|e| AgentError::Server(format!("starting on {addr}: {e}")))?;
    Ok(Running { server, destroy_rx })
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
