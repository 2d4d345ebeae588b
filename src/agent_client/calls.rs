//! The calls the shim makes to a connected agent, one typed method each.
//!
//! Every call goes through one private `call` helper: it gets its deadline
//! here (or none, for the calls that block by design), its latency lands
//! in the sandbox's metrics, and a failure becomes an [`AgentError::Rpc`]
//! naming the call, whose [`AgentError::code`] is the one mapping of agent
//! failures to gRPC codes.

use std::future::Future;
use std::time::{Duration, Instant};

use kata_agent_protocol::agent;
use kata_agent_protocol::agent_ttrpc::AgentServiceClient;
use ttrpc::context::Context;

use super::{AgentClient, AgentError, call_context};

/// Deadline of short calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// OnlineCPUMem: a vCPU takes about 3 s to come up under TCG on a busy host.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline of container creation, start and exec: libcontainer under TCG
/// takes seconds, more on a loaded node.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of GetMetrics: the guest's part of a scrape that kata-monitor
/// bounds at 3 s in all.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

fn process_request(container_id: &str, exec_id: &str) -> agent::ProcessRequest {
    let mut req = agent::ProcessRequest::new();
    req.container_id = container_id.to_string();
    req.exec_id = exec_id.to_string();
    req
}

fn container_request(container_id: &str) -> agent::ContainerRequest {
    let mut req = agent::ContainerRequest::new();
    req.container_id = container_id.to_string();
    req
}

fn stream_request(container_id: &str, exec_id: &str, len: u32) -> agent::ReadStreamRequest {
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = container_id.to_string();
    req.exec_id = exec_id.to_string();
    req.len = len;
    req
}

impl AgentClient {
    /// Makes one call: `timeout` `None` for the calls that block until the
    /// guest has something (WaitProcess, GetOOMEvent, stream reads), whose
    /// latency says nothing and is not recorded.
    async fn call<T, F, Fut>(
        &self,
        name: &'static str,
        timeout: Option<Duration>,
        f: F,
    ) -> Result<T, AgentError>
    where
        F: FnOnce(AgentServiceClient, Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let began = Instant::now();
        let r = f(self.agent.clone(), call_context(timeout)).await;
        if let (Some(m), Some(_)) = (&self.metrics, timeout) {
            m.rpc(name, r.as_ref().map(|_| began.elapsed()).map_err(|_| ()));
        }
        r.map_err(|source| AgentError::Rpc { call: name, source })
    }

    /// Creates the sandbox in the guest (hostname, shared namespaces).
    pub async fn create_sandbox(&self, sandbox_id: &str, hostname: &str) -> Result<(), AgentError> {
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.to_string();
        req.hostname = hostname.to_string();
        self.call("CreateSandbox", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.create_sandbox(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Creates a container from its guest spec; `sandbox_namespaces` are the
    /// sandbox container's namespaces it joins.
    pub async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        sandbox_namespaces: Vec<String>,
    ) -> Result<(), AgentError> {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.oci_spec_json = oci_spec_json;
        req.sandbox_namespaces = sandbox_namespaces;
        self.call(
            "CreateContainer",
            Some(CREATE_TIMEOUT),
            |a, ctx| async move { a.create_container(ctx, &req).await.map(drop) },
        )
        .await
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = container_request(container_id);
        self.call(
            "StartContainer",
            Some(CREATE_TIMEOUT),
            |a, ctx| async move { a.start_container(ctx, &req).await.map(drop) },
        )
        .await
    }

    /// Starts an exec; `process_json` is its guest OCI process.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
    ) -> Result<(), AgentError> {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = process_json;
        self.call("ExecProcess", Some(CREATE_TIMEOUT), |a, ctx| async move {
            a.exec_process(ctx, &req).await.map(drop)
        })
        .await
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), AgentError> {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = container_id.to_string();
        self.call("RemoveContainer", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.remove_container(ctx, &req).await.map(drop)
        })
        .await
    }

    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.call("SignalProcess", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.signal_process(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Blocks until the process exits; returns its wait status.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let req = process_request(container_id, exec_id);
        self.call("WaitProcess", None, |a, ctx| async move {
            a.wait_process(ctx, &req).await.map(|r| r.status)
        })
        .await
    }

    pub async fn pause_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = container_request(container_id);
        self.call("PauseContainer", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.pause_container(ctx, &req).await.map(drop)
        })
        .await
    }

    pub async fn resume_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = container_request(container_id);
        self.call("ResumeContainer", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.resume_container(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Applies `LinuxResources` (guest JSON) to a container's cgroup.
    pub async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), AgentError> {
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = container_id.to_string();
        req.resources_json = resources_json;
        self.call("UpdateContainer", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.update_container(ctx, &req).await.map(drop)
        })
        .await
    }

    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<agent::StatsContainerResponse, AgentError> {
        let req = container_request(container_id);
        self.call("StatsContainer", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.stats_container(ctx, &req).await
        })
        .await
    }

    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        row: u32,
        column: u32,
    ) -> Result<(), AgentError> {
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.row = row;
        req.column = column;
        self.call("TtyWinResize", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.tty_win_resize(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Blocks until a container hits its memory limit; returns its id.
    pub async fn get_oom_event(&self) -> Result<String, AgentError> {
        self.call("GetOOMEvent", None, |a, ctx| async move {
            a.get_oom_event(ctx, &agent::Empty::new())
                .await
                .map(|e| e.container_id)
        })
        .await
    }

    /// Blocks until at least one byte of stdout; empty = EOF.
    pub async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>, AgentError> {
        self.read_stream(false, container_id, exec_id, len).await
    }

    /// Like [`AgentClient::read_stdout`]; EOF at once for a terminal.
    pub async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>, AgentError> {
        self.read_stream(true, container_id, exec_id, len).await
    }

    /// A stream read, which also proves the agent alive to the health
    /// monitor (a check may queue behind a busy guest's output).
    async fn read_stream(
        &self,
        stderr: bool,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>, AgentError> {
        let req = stream_request(container_id, exec_id, len);
        let name = if stderr { "ReadStderr" } else { "ReadStdout" };
        let data = self
            .call(name, None, |a, ctx| async move {
                let r = if stderr {
                    a.read_stderr(ctx, &req).await
                } else {
                    a.read_stdout(ctx, &req).await
                };
                r.map(|r| r.data)
            })
            .await?;
        self.answered();
        // ttrpc bounds a reply at 4 MiB; the read asked for `len`.
        if data.len() > len as usize {
            return Err(AgentError::Protocol {
                call: name,
                problem: format!("{} bytes in reply to a read of {len}", data.len()),
            });
        }
        Ok(data)
    }

    /// Returns how many bytes the process's stdin took.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<u32, AgentError> {
        let mut req = agent::WriteStreamRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.data = data;
        self.call("WriteStdin", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.write_stdin(ctx, &req).await.map(|r| r.len)
        })
        .await
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = process_request(container_id, exec_id);
        self.call("CloseStdin", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.close_stdin(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Configures one guest interface; returns it as the guest has it.
    pub async fn update_interface(
        &self,
        interface: agent::Interface,
    ) -> Result<agent::Interface, AgentError> {
        let mut req = agent::UpdateInterfaceRequest::new();
        req.interface = Some(interface).into();
        self.call("UpdateInterface", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.update_interface(ctx, &req).await
        })
        .await
    }

    pub async fn add_arp_neighbors(
        &self,
        neighbors: Vec<agent::ArpNeighbor>,
    ) -> Result<(), AgentError> {
        let mut req = agent::AddArpNeighborsRequest::new();
        req.neighbors = neighbors;
        self.call("AddArpNeighbors", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.add_arp_neighbors(ctx, &req).await.map(drop)
        })
        .await
    }

    /// Replaces the guest's routes; returns them as the guest has them.
    pub async fn update_routes(
        &self,
        routes: Vec<agent::Route>,
    ) -> Result<Vec<agent::Route>, AgentError> {
        let mut list = agent::Routes::new();
        list.routes = routes;
        let mut req = agent::UpdateRoutesRequest::new();
        req.routes = Some(list).into();
        self.call("UpdateRoutes", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.update_routes(ctx, &req).await.map(|r| r.routes)
        })
        .await
    }

    /// Guest details, optionally probing a file name at the share's root.
    pub async fn guest_details(
        &self,
        shared_fs_probe: &str,
    ) -> Result<agent::GuestDetailsResponse, AgentError> {
        let mut req = agent::GuestDetailsRequest::new();
        req.shared_fs_probe = shared_fs_probe.to_string();
        self.call("GetGuestDetails", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.get_guest_details(ctx, &req).await
        })
        .await
    }

    /// The guest's procfs texts for the management socket's metrics. Its
    /// deadline is short: kata-monitor gives a whole scrape 3 s.
    pub async fn guest_metrics(&self) -> Result<agent::GuestMetrics, AgentError> {
        self.call("GetMetrics", Some(METRICS_TIMEOUT), |a, ctx| async move {
            a.get_metrics(ctx, &agent::GetMetricsRequest::new()).await
        })
        .await
    }

    /// Brings the guest's online vCPUs to `vcpus` (0: unchanged) and onlines
    /// hot-added memory. The reply is the guest's word: the caller bounds it.
    pub async fn online_cpu_mem(
        &self,
        vcpus: u32,
    ) -> Result<agent::OnlineCPUMemResponse, AgentError> {
        let mut req = agent::OnlineCPUMemRequest::new();
        req.vcpus = vcpus;
        // Bringing a vCPU up takes seconds under TCG.
        self.call("OnlineCPUMem", Some(ONLINE_TIMEOUT), |a, ctx| async move {
            a.online_cpu_mem(ctx, &req).await
        })
        .await
    }

    /// Asks the agent to tear the sandbox down and power the VM off.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.call("DestroySandbox", Some(CALL_TIMEOUT), |a, ctx| async move {
            a.destroy_sandbox(ctx, &agent::DestroySandboxRequest::new())
                .await
                .map(drop)
        })
        .await
    }
}
