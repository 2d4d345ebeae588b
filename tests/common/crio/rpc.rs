//! Raw `containerd.task.v2.Task` requests (the generated client speaks v3)
//! and the errors the driver reports.

use std::time::Duration;

use protobuf::Message;
use ttrpc::asynchronous::Client;

/// The Task service name CRI-O and containerd 1.6 put on the wire.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
pub const METRICS_V1: &str = "io.containerd.cgroups.v1.Metrics";
pub const METRICS_V2: &str = "io.containerd.cgroups.v2.Metrics";
/// A failed step, as CRI-O would see it.
#[derive(Debug, Clone)]
pub enum CrioError {
    /// The `start` command failed (status and output in the text).
    Start(String),
    Rpc(ttrpc::Error),
}

impl CrioError {
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            CrioError::Rpc(e) => rpc_code(e),
            CrioError::Start(_) => None,
        }
    }

    /// What CRI-O would log: the status message, or the failure's text.
    pub fn message(&self) -> String {
        match self {
            CrioError::Rpc(ttrpc::Error::RpcStatus(s)) => s.message().to_string(),
            CrioError::Rpc(e) => format!("{e:?}"),
            CrioError::Start(text) => text.clone(),
        }
    }
}

/// The gRPC code of a status error.
pub fn rpc_code(e: &ttrpc::Error) -> Option<ttrpc::Code> {
    match e {
        ttrpc::Error::RpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

/// Asserts that `r` failed with status `code` and returns its message.
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, CrioError>, code: ttrpc::Code) -> String {
    match r {
        Err(CrioError::Rpc(ttrpc::Error::RpcStatus(s))) => {
            assert_ne!(
                s.code(),
                ttrpc::Code::UNKNOWN,
                "code UNKNOWN: {}",
                s.message()
            );
            assert_eq!(s.code(), code, "wrong code; message: {}", s.message());
            s.message().to_string()
        }
        other => panic!("expected status {code:?}, got {other:?}"),
    }
}

/// One raw unary Task request: `wire_timeout` is sent as the request's
/// deadline (CRI-O does so only for Create).
pub async fn call<Req: Message, Resp: Message>(
    client: &Client,
    method: &str,
    req: &Req,
    wire_timeout: Option<Duration>,
) -> ttrpc::Result<Resp> {
    let mut r = ttrpc::Request::new();
    r.service = TASK_SERVICE.to_string();
    r.method = method.to_string();
    r.payload = req
        .write_to_bytes()
        .map_err(|e| ttrpc::Error::Others(format!("encode {method}: {e}")))?;
    r.timeout_nano = wire_timeout.map_or(0, |t| t.as_nanos() as i64);
    // What containerd's namespaces package adds for CRI-O's context.
    let mut ns = ttrpc::proto::KeyValue::new();
    ns.key = "containerd-namespace-ttrpc".into();
    ns.value = "default".into();
    r.metadata.push(ns);
    let resp = client.request(r).await?;
    Resp::parse_from_bytes(&resp.payload)
        .map_err(|e| ttrpc::Error::Others(format!("decode {method} response: {e}")))
}
