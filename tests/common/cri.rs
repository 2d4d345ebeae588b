//! A CRI client, as kubelet uses containerd: the CRI v1 runtime and image
//! services over containerd's Unix socket (k8s-cri's generated client on
//! tonic), with blocking calls bounded by a deadline, plus the pod and
//! container configurations kubelet would send. The streaming side of
//! `Exec` is in `stream`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use tonic::Status;

/// Long enough for RunPodSandbox of a kata pod, which boots a VM under TCG
/// (several boot at once in the many-pods test).
pub const CRI_TIMEOUT: Duration = Duration::from_secs(240);

/// The runtime handlers of the private containerd's CRI configuration.
pub const KATA: &str = "kata";
pub const RUNC: &str = "runc";

/// A blocking CRI client.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI services at `socket` (containerd's gRPC socket).
    pub fn connect(socket: &Path) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The authority is unused: every connection goes to the socket.
                Endpoint::try_from("http://localhost")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            tokio::net::UnixStream::connect(path)
                                .await
                                .map(TokioIo::new)
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        self.rt
            .block_on(async { tokio::time::timeout(CRI_TIMEOUT, fut).await })
            .map_err(|_| {
                Status::deadline_exceeded(format!("{what} did not answer within {CRI_TIMEOUT:?}"))
            })?
            .map(tonic::Response::into_inner)
    }

    pub fn version(&self) -> Result<VersionResponse, Status> {
        let mut c = self.runtime.clone();
        self.call("Version", c.version(VersionRequest::default()))
    }

    /// Whether the CRI plugin knows `image` (imported with `ctr -n k8s.io`).
    pub fn has_image(&self, image: &str) -> Result<bool, Status> {
        let mut c = self.images.clone();
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", c.image_status(req))?
            .image
            .is_some())
    }

    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", c.run_pod_sandbox(req))?
            .pod_sandbox_id)
    }

    pub fn pod_status(&self, pod: &str) -> Result<PodSandboxStatus, Status> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", c.pod_sandbox_status(req))?
            .status
            .ok_or_else(|| Status::internal("PodSandboxStatus without a status"))
    }

    /// PodSandboxStatus with `verbose`: the status and containerd's
    /// `info` JSON (the sandbox's runtime spec, CNI result and more).
    pub fn pod_status_verbose(
        &self,
        pod: &str,
    ) -> Result<(PodSandboxStatus, serde_json::Value), Status> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        };
        let r = self.call("PodSandboxStatus", c.pod_sandbox_status(req))?;
        let status = r
            .status
            .ok_or_else(|| Status::internal("PodSandboxStatus without a status"))?;
        let info = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok((status, info))
    }

    /// The pod's IP as CRI reports it (PodSandboxStatus network.ip).
    pub fn pod_ip(&self, pod: &str) -> Result<String, Status> {
        let ip = self
            .pod_status(pod)?
            .network
            .map(|n| n.ip)
            .unwrap_or_default();
        if ip.is_empty() {
            return Err(Status::internal(format!("pod {pod} has no IP")));
        }
        Ok(ip)
    }

    /// The host path of the pod's network namespace (containerd's
    /// `/var/run/netns/cni-<uuid>`), from the sandbox's runtime spec.
    pub fn pod_netns(&self, pod: &str) -> Result<PathBuf, Status> {
        let (_, info) = self.pod_status_verbose(pod)?;
        info.pointer("/runtimeSpec/linux/namespaces")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
            .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
            .and_then(|n| n.get("path").and_then(|p| p.as_str()))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                Status::internal(format!(
                    "pod {pod}: no network namespace path in the verbose status: {info}"
                ))
            })
    }

    pub fn stop_pod(&self, pod: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("StopPodSandbox", c.stop_pod_sandbox(req))
            .map(drop)
    }

    pub fn remove_pod(&self, pod: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("RemovePodSandbox", c.remove_pod_sandbox(req))
            .map(drop)
    }

    pub fn list_pods(&self) -> Result<Vec<PodSandbox>, Status> {
        let mut c = self.runtime.clone();
        Ok(self
            .call(
                "ListPodSandbox",
                c.list_pod_sandbox(ListPodSandboxRequest::default()),
            )?
            .items)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .call("CreateContainer", c.create_container(req))?
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", c.start_container(req))
            .map(drop)
    }

    /// StopContainer with a grace period of `timeout` seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call("StopContainer", c.stop_container(req)).map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", c.remove_container(req))
            .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, Status> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", c.container_status(req))?
            .status
            .ok_or_else(|| Status::internal("ContainerStatus without a status"))
    }

    pub fn list_containers(&self, pod: &str) -> Result<Vec<Container>, Status> {
        let mut c = self.runtime.clone();
        let req = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .call("ListContainers", c.list_containers(req))?
            .containers)
    }

    /// ExecSync of `cmd` with a timeout in seconds (0: none).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, Status> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.call("ExecSync", c.exec_sync(req))
    }

    /// Exec: the streaming server's URL for `cmd`.
    pub fn exec(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        let req = ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        Ok(self.call("Exec", c.exec(req))?.url)
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, Status> {
        let mut c = self.runtime.clone();
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", c.container_stats(req))?
            .stats
            .ok_or_else(|| Status::internal("ContainerStats without stats"))
    }

    pub fn list_container_stats(&self, pod: &str) -> Result<Vec<ContainerStats>, Status> {
        let mut c = self.runtime.clone();
        let req = ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .call("ListContainerStats", c.list_container_stats(req))?
            .stats)
    }

    pub fn update_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.call(
            "UpdateContainerResources",
            c.update_container_resources(req),
        )
        .map(drop)
    }
}

pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// The pod configuration kubelet sends for a plain pod named `name`, with
/// its container logs under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    let uid = super::hex_id();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container `name` of `image` running `cmd`, logging to `<name>.log` in
/// the pod's log directory.
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The CRI log file of a container of `pod_config`.
pub fn log_file(pod_config: &PodSandboxConfig, container: &ContainerConfig) -> PathBuf {
    Path::new(&pod_config.log_directory).join(&container.log_path)
}

/// The payload of each line of a CRI log file (`<time> <stream> <tag>
/// <payload>`), joined with newlines where a line is full (`F`).
pub fn log_payload(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, _stream, tag, payload) =
            (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(payload.unwrap_or(""));
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}
