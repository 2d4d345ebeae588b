//! The ttrpc server and thin adapters from the generated service traits to
//! the domain code (`details.rs`, `sandbox.rs`, `network/`). Errors are mapped with
//! [`AgentError::to_ttrpc`]. `DestroySandbox` only replies and signals the
//! owner of the server ([`Running::wait_destroy`]); powering off or exiting
//! is the owner's decision.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use kata_agent_protocol::agent::{
    AddArpNeighborsRequest, ContainerRequest, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, Empty, ExecProcessRequest, GetMetricsRequest, GuestDetailsRequest,
    GuestDetailsResponse, GuestMetrics, Interface, Interfaces, ListProcessesRequest,
    ListProcessesResponse, OomEvent, ProcessRequest, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, Route, Routes, SetGuestDateTimeRequest, SignalProcessRequest,
    StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest, UpdateInterfaceRequest,
    UpdateRoutesRequest, WaitProcessResponse, WriteStreamRequest, WriteStreamResponse,
};
use kata_agent_protocol::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response::ServingStatus,
};
use kata_agent_protocol::{AGENT_VERSION, PROTOCOL_VERSION, agent_ttrpc, health_ttrpc};
use tokio::sync::mpsc;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Server, TtrpcContext};

use crate::auth::Token;
use crate::details::{self, GuestPaths};
use crate::error::{AgentError, Result};
use crate::metrics;
use crate::network;
use crate::reaper::Reaper;
use crate::sandbox::Sandbox;

/// Logs a failed request with its name and maps the error.
fn reply<T>(rpc: &'static str, res: Result<T>) -> ttrpc::Result<T> {
    res.map_err(|e| {
        tracing::warn!(rpc, error = %e, "request failed");
        e.to_ttrpc()
    })
}

/// Largest read a ReadStdout/ReadStderr returns.
const MAX_READ: usize = 1 << 20;

/// SetGuestDateTime: clock_settime(CLOCK_REALTIME).
fn set_time(sec: i64, usec: i64) -> Result<()> {
    if !(0..1_000_000).contains(&usec) {
        return Err(AgentError::InvalidArgument {
            field: "usec",
            reason: format!("{usec} is not in 0..1000000"),
        });
    }
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: usec * 1000,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc != 0 {
        return Err(AgentError::sys("clock_settime", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Wraps a route list into the `Routes` reply.
fn routes(list: Vec<Route>) -> Routes {
    let mut r = Routes::new();
    r.routes = list;
    r
}

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
    sandbox: Arc<Sandbox>,
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

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(sandbox_id = %req.sandbox_id, "CreateSandbox");
        let res = self
            .sandbox
            .create(
                req.sandbox_id,
                req.hostname,
                &req.storages,
                req.sandbox_pidns,
            )
            .await;
        reply("CreateSandbox", res.map(|()| Empty::new()))
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "CreateContainer");
        let res = self
            .sandbox
            .create_container(
                req.container_id,
                &req.oci_spec_json,
                &req.storages,
                &req.sandbox_namespaces,
            )
            .await;
        reply("CreateContainer", res.map(|()| Empty::new()))
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "StartContainer");
        let res = self.sandbox.start_container(&req.container_id).await;
        reply("StartContainer", res.map(|()| Empty::new()))
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "RemoveContainer");
        let res = self
            .sandbox
            .remove_container(&req.container_id, req.timeout)
            .await;
        reply("RemoveContainer", res.map(|()| Empty::new()))
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "PauseContainer");
        let res = self.sandbox.pause_container(&req.container_id).await;
        reply("PauseContainer", res.map(|()| Empty::new()))
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "ResumeContainer");
        let res = self.sandbox.resume_container(&req.container_id).await;
        reply("ResumeContainer", res.map(|()| Empty::new()))
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, "UpdateContainer");
        let res = self
            .sandbox
            .update_container(&req.container_id, &req.resources_json)
            .await;
        reply("UpdateContainer", res.map(|()| Empty::new()))
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        tracing::debug!(container_id = %req.container_id, "StatsContainer");
        reply(
            "StatsContainer",
            self.sandbox.stats_container(&req.container_id).await,
        )
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        tracing::debug!(container_id = %req.container_id, "ListProcesses");
        let res = self
            .sandbox
            .list_processes(&req.container_id, &req.format)
            .await;
        reply(
            "ListProcesses",
            res.map(|list| {
                let mut r = ListProcessesResponse::new();
                r.process_list = list;
                r
            }),
        )
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, exec_id = %req.exec_id, "ExecProcess");
        let res = self
            .sandbox
            .exec_process(&req.container_id, req.exec_id, &req.process_json)
            .await;
        reply("ExecProcess", res.map(|()| Empty::new()))
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(container_id = %req.container_id, exec_id = %req.exec_id, signal = req.signal, all = req.all, "SignalProcess");
        let res = self
            .sandbox
            .signal_process(&req.container_id, &req.exec_id, req.signal, req.all)
            .await;
        reply("SignalProcess", res.map(|()| Empty::new()))
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        tracing::debug!(container_id = %req.container_id, exec_id = %req.exec_id, "WaitProcess");
        let res = async {
            let p = self
                .sandbox
                .process(&req.container_id, &req.exec_id)
                .await?;
            p.wait().await
        }
        .await;
        reply(
            "WaitProcess",
            res.map(|status| {
                let mut r = WaitProcessResponse::new();
                r.status = status;
                r
            }),
        )
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let res = async {
            let p = self
                .sandbox
                .process(&req.container_id, &req.exec_id)
                .await?;
            p.io.write_stdin(&req.data).await
        }
        .await;
        reply(
            "WriteStdin",
            res.and_then(|n| {
                let mut r = WriteStreamResponse::new();
                r.len =
                    u32::try_from(n).map_err(|_| AgentError::Internal("write length".into()))?;
                Ok(r)
            }),
        )
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read_stream(req, false).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read_stream(req, true).await
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        let res = async {
            let p = self
                .sandbox
                .process(&req.container_id, &req.exec_id)
                .await?;
            p.io.close_stdin().await;
            Ok(Empty::new())
        }
        .await;
        reply("CloseStdin", res)
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let res = async {
            let p = self
                .sandbox
                .process(&req.container_id, &req.exec_id)
                .await?;
            let (rows, cols) = (
                u16::try_from(req.row).unwrap_or(u16::MAX),
                u16::try_from(req.column).unwrap_or(u16::MAX),
            );
            p.io.resize(rows, cols)?;
            Ok(Empty::new())
        }
        .await;
        reply("TtyWinResize", res)
    }

    async fn get_oom_event(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OomEvent> {
        #[cfg(feature = "hostile")]
        if crate::hostile::is(crate::hostile::Mode::OomStorm) {
            let mut e = OomEvent::new();
            e.container_id = crate::hostile::unknown_oom_id();
            return Ok(e);
        }
        let res = self.sandbox.next_oom().await.map(|id| {
            let mut e = OomEvent::new();
            e.container_id = id;
            e
        });
        reply("GetOOMEvent", res)
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(sec = req.sec, usec = req.usec, "SetGuestDateTime");
        reply(
            "SetGuestDateTime",
            set_time(req.sec, req.usec).map(|()| Empty::new()),
        )
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        tracing::info!(
            name = %req.interface.name,
            hw_addr = %req.interface.hw_addr,
            "UpdateInterface"
        );
        reply(
            "UpdateInterface",
            network::update_interface(&req, network::NIC_WAIT).await,
        )
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        tracing::info!(count = req.routes.routes.len(), "UpdateRoutes");
        let res = network::update_routes(&req).await;
        reply("UpdateRoutes", res.map(routes))
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: AddArpNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        tracing::info!(count = req.neighbors.len(), "AddArpNeighbors");
        let res = network::add_arp_neighbors(&req).await;
        reply("AddArpNeighbors", res.map(|()| Empty::new()))
    }

    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Interfaces> {
        tracing::debug!("ListInterfaces");
        let res = network::list_interfaces().await.map(|list| {
            let mut r = Interfaces::new();
            r.interfaces = list;
            r
        });
        reply("ListInterfaces", res)
    }

    async fn list_routes(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Routes> {
        tracing::debug!("ListRoutes");
        reply("ListRoutes", network::list_routes().await.map(routes))
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: GetMetricsRequest,
    ) -> ttrpc::Result<GuestMetrics> {
        tracing::debug!("GetMetrics");
        // procfs reads are blocking I/O; keep them off the workers.
        let res = tokio::task::spawn_blocking(|| metrics::collect(std::path::Path::new("/proc")))
            .await
            .map_err(|e| AgentError::Internal(format!("metrics task: {e}")));
        reply("GetMetrics", res)
    }

    // Resources.
    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: kata_agent_protocol::agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<kata_agent_protocol::agent::OnlineCPUMemResponse> {
        tracing::info!(vcpus = req.vcpus, "OnlineCPUMem");
        let paths = Arc::clone(&self.paths);
        // sysfs writes that bring a CPU up block for seconds under TCG.
        let res = tokio::task::spawn_blocking(move || {
            crate::resources::online_cpu_mem(&paths, req.vcpus)
        })
        .await
        .unwrap_or_else(|e| Err(AgentError::Internal(format!("OnlineCPUMem task: {e}"))));
        reply("OnlineCPUMem", res)
    }
}

impl AgentService {
    async fn read_stream(
        &self,
        req: ReadStreamRequest,
        stderr: bool,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let res = async {
            let p = self
                .sandbox
                .process(&req.container_id, &req.exec_id)
                .await?;
            let len = usize::try_from(req.len).unwrap_or(MAX_READ).min(MAX_READ);
            #[cfg(feature = "hostile")]
            if crate::hostile::is(crate::hostile::Mode::BigReplies) {
                return Ok(vec![b'x'; 2 * len]);
            }
            if stderr {
                p.io.read_stderr(len).await
            } else {
                p.io.read_stdout(len).await
            }
        }
        .await;
        reply(
            if stderr { "ReadStderr" } else { "ReadStdout" },
            res.map(|data| {
                let mut r = ReadStreamResponse::new();
                r.data = data;
                r
            }),
        )
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
    start_with_reaper(addr, paths, on_destroy, None, None).await
}

/// [`start`] with PID 1's reaper (test mode starts one on first use) and,
/// with `token`, only connections that present it (`crate::auth`).
pub async fn start_with_reaper(
    addr: &str,
    paths: GuestPaths,
    on_destroy: DestroyAction,
    reaper: Option<Reaper>,
    token: Option<Token>,
) -> Result<Running> {
    let (destroy_tx, destroy_rx) = mpsc::channel(1);
    let sandbox = Arc::new(Sandbox::new(paths.share_mount.clone(), reaper));
    let agent = Arc::new(AgentService {
        sandbox,
        paths: Arc::new(paths),
        destroy_tx,
        on_destroy,
    });
    let listener =
        Listener::bind(addr).map_err(|e| AgentError::Server(format!("binding {addr}: {e}")))?;
    let listener = match token {
        Some(token) => authenticated(listener, token),
        None => listener,
    };
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(health_ttrpc::create_health(Arc::new(HealthService)))
        .register_service(agent_ttrpc::create_agent_service(agent));
    server
        .start()
        .await
        .map_err(|e| AgentError::Server(format!("starting on {addr}: {e}")))?;
    Ok(Running { server, destroy_rx })
}

/// The connections of `listener` that present `token`, each checked on a
/// task of its own so that a silent peer delays nobody else.
fn authenticated(mut listener: Listener, token: Token) -> Listener {
    let (tx, rx) = mpsc::channel::<Socket>(16);
    tokio::spawn(async move {
        while let Some(conn) = listener.next().await {
            match conn {
                Ok(mut sock) => {
                    let (tx, token) = (tx.clone(), token.clone());
                    tokio::spawn(async move {
                        if crate::auth::check(&mut sock, &token).await {
                            #[cfg(feature = "hostile")]
                            crate::hostile::corrupt_connection(&mut sock).await;
                            let _ = tx.send(sock).await;
                        } else {
                            tracing::warn!("a connection without the shim's token was refused");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a connection failed"),
            }
        }
    });
    Listener::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
    }))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
