//! The ttrpc adapter of `containerd.task.v2.Task` (also served as v3):
//! decodes requests, calls the sandbox, encodes replies, and maps errors
//! through the one `From<Error> for ttrpc::Error`. No lifecycle logic lives
//! here: each RPC is one call into the module of the object it acts on.
//!
//! | RPC | logic |
//! |---|---|
//! | Create | `sandbox::create` ([`Sandbox::create`]) |
//! | Delete of an init, Pause, Resume, Update, Stats, Pids | `sandbox::container` |
//! | Start, Exec, Kill, State, Wait, ResizePty, CloseIO, Delete of an exec | `sandbox::process` |
//! | Connect, Shutdown | `sandbox` ([`Sandbox::connect`], [`Sandbox::request_shutdown`]) |
//! | Checkpoint | refused here: UNIMPLEMENTED |

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use ttrpc::r#async::TtrpcContext;

use crate::error::Error;
use crate::events::timestamp;
use crate::keeper::{Call, Keeper, Pending};
use crate::sandbox::Sandbox;
use crate::sandbox::process::ExecSpec;
use crate::stdio::StdioConfig;
use crate::task::stats;

/// The Task service of one sandbox.
pub struct TaskService {
    /// The pod; its sandbox Create chooses the configuration (the Create
    /// options' `config_path`, else the shim's default, plus annotations).
    pub sandbox: Arc<Sandbox>,
    /// Told about every call in flight that waits on the VM, so that it can
    /// answer them if this shim dies (CRI-O only).
    pub keeper: Option<Arc<Keeper>>,
}

type R<T> = ttrpc::Result<T>;

impl TaskService {
    fn in_flight(&self, ctx: &TtrpcContext, call: Call) -> Option<Pending<'_>> {
        self.keeper.as_deref().and_then(|k| k.pending(ctx, call))
    }
}

fn log_err<T>(call: &'static str, id: &str, r: Result<T, Error>) -> R<T> {
    r.map_err(|e| {
        tracing::warn!(call, id, code = ?e.code(), error = %crate::logging::error_chain(&e), "request failed");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> R<StateResponse> {
        let r = self.sandbox.process_status(&req.id, &req.exec_id);
        log_err("State", &req.id, r).map(|st| {
            let mut resp = StateResponse {
                id: if req.exec_id.is_empty() {
                    req.id.clone()
                } else {
                    req.exec_id.clone()
                },
                bundle: st.bundle.display().to_string(),
                pid: self.sandbox.pid(),
                status: st.state.status().into(),
                stdin: st.stdio.stdin,
                stdout: st.stdio.stdout,
                stderr: st.stdio.stderr,
                terminal: st.terminal,
                exec_id: req.exec_id.clone(),
                ..Default::default()
            };
            if let Some(exit) = st.state.exit_info() {
                resp.exit_status = exit.status;
                resp.exited_at = Some(timestamp(exit.at)).into();
            }
            resp
        })
    }

    async fn create(&self, ctx: &TtrpcContext, req: CreateTaskRequest) -> R<CreateTaskResponse> {
        let _in_flight = self.in_flight(ctx, Call::Create);
        let r = async {
            if req.checkpoint.is_empty() && req.parent_checkpoint.is_empty() {
                let pid = self.sandbox.create(&req).await?;
                Ok(CreateTaskResponse {
                    pid,
                    ..Default::default()
                })
            } else {
                Err(Error::Unimplemented(
                    "restoring from a checkpoint is not supported by this runtime",
                ))
            }
        }
        .await;
        log_err("Create", &req.id, r)
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> R<StartResponse> {
        let _in_flight = self.in_flight(ctx, Call::Start);
        let r = self.sandbox.start(&req.id, &req.exec_id).await;
        log_err("Start", &req.id, r).map(|pid| StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, ctx: &TtrpcContext, req: DeleteRequest) -> R<DeleteResponse> {
        let _in_flight = self.in_flight(ctx, Call::Delete);
        let r = async {
            let exit = if req.exec_id.is_empty() {
                self.sandbox.delete_container(&req.id).await?
            } else {
                self.sandbox.delete_exec(&req.id, &req.exec_id).await?
            };
            Ok(DeleteResponse {
                pid: self.sandbox.pid(),
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            })
        }
        .await;
        log_err("Delete", &req.id, r)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> R<PidsResponse> {
        let r = self.sandbox.pids(&req.id);
        log_err("Pids", &req.id, r).map(|pids| PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, ctx: &TtrpcContext, req: PauseRequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::Pause);
        log_err("Pause", &req.id, self.sandbox.pause(&req.id).await).map(|()| Empty::new())
    }

    async fn resume(&self, ctx: &TtrpcContext, req: ResumeRequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::Resume);
        log_err("Resume", &req.id, self.sandbox.resume(&req.id).await).map(|()| Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> R<Empty> {
        log_err(
            "Checkpoint",
            &req.id,
            Err(Error::Unimplemented(
                "checkpointing a VM-isolated container is not supported",
            )),
        )
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::Kill);
        let r = self
            .sandbox
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await;
        log_err("Kill", &req.id, r).map(|()| Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        let r = (|| {
            let Some(spec) = req.spec.as_ref() else {
                return Err(Error::InvalidArgument {
                    field: "spec",
                    reason: "an exec needs a process spec".into(),
                });
            };
            self.sandbox.exec(ExecSpec {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                stdio: StdioConfig {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                process_json: spec.value.clone(),
            })
        })();
        log_err("Exec", &req.id, r).map(|()| Empty::new())
    }

    async fn resize_pty(&self, ctx: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::ResizePty);
        let r = self
            .sandbox
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await;
        log_err("ResizePty", &req.id, r).map(|()| Empty::new())
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::CloseIO);
        let r = self
            .sandbox
            .close_io(&req.id, &req.exec_id, req.stdin)
            .await;
        log_err("CloseIO", &req.id, r).map(|()| Empty::new())
    }

    async fn update(&self, ctx: &TtrpcContext, req: UpdateTaskRequest) -> R<Empty> {
        let _in_flight = self.in_flight(ctx, Call::Update);
        let r = async {
            let Some(res) = req.resources.as_ref() else {
                return Err(Error::InvalidArgument {
                    field: "resources",
                    reason: "no resources given".into(),
                });
            };
            self.sandbox.update(&req.id, &res.value).await
        }
        .await;
        log_err("Update", &req.id, r).map(|()| Empty::new())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> R<WaitResponse> {
        let _in_flight = self.in_flight(ctx, Call::Wait);
        let r = self.sandbox.wait(&req.id, &req.exec_id).await;
        log_err("Wait", &req.id, r).map(|exit| WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> R<StatsResponse> {
        let _in_flight = self.in_flight(ctx, Call::Stats);
        let r = async {
            let s = self.sandbox.stats(&req.id).await?;
            let any = stats::metrics_any(&s)
                .map_err(|e| Error::Internal(format!("cannot encode the guest's metrics: {e}")))?;
            Ok(StatsResponse {
                stats: Some(any).into(),
                ..Default::default()
            })
        }
        .await;
        log_err("Stats", &req.id, r)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> R<ConnectResponse> {
        let r = self.sandbox.connect(&req.id);
        log_err("Connect", &req.id, r).map(|(shim_pid, task_pid)| ConnectResponse {
            shim_pid,
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> R<Empty> {
        let exiting = self.sandbox.request_shutdown();
        tracing::info!(sandbox_id = %self.sandbox.id, id = %req.id, exiting,
            containers = self.sandbox.container_count(), "shutdown requested");
        Ok(Empty::new())
    }
}
