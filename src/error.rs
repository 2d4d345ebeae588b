//! The task service's error type and its single mapping to gRPC codes.
//!
//! Every variant has one deliberate code; module errors bring their own
//! `code()`. The message sent to containerd or CRI-O is the whole cause
//! chain, so an operator sees why without reading the shim's log.

use ttrpc::Code;

use crate::agent_client::AgentError;

/// Errors of task RPCs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Transition(#[from] crate::state::Transition),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("{0}")]
    Internal(String),
    #[error("agent request for {id}")]
    Agent {
        id: String,
        #[source]
        source: AgentError,
    },
    #[error("booting the sandbox VM")]
    Boot(#[from] crate::guest::BootError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error(transparent)]
    Stdio(#[from] crate::stdio::StdioError),
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    #[error(transparent)]
    Cgroup(#[from] crate::host_cgroup::CgroupError),
    #[error(transparent)]
    Annotation(#[from] crate::annotations::AnnotationError),
    #[error("persisting the sandbox state")]
    Persist(#[from] crate::persist::PersistError),
    #[error("the pod network")]
    Network(#[from] crate::network::NetworkError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The node ran out of something (disk, inodes, file descriptors,
    /// memory) whatever the step: RESOURCE_EXHAUSTED, so an operator and
    /// the caller's retry logic see a full node, not a broken shim.
    pub fn code(&self) -> Code {
        if exhausted(self) {
            return Code::RESOURCE_EXHAUSTED;
        }
        match self {
            Error::NotFound { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) | Error::Transition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Internal(_) => Code::INTERNAL,
            Error::Agent { source, .. } => source.code(),
            Error::Boot(_) => Code::UNAVAILABLE,
            Error::Storage(e) => e.code(),
            Error::Oci(e) => e.code(),
            Error::Stdio(e) => e.code(),
            Error::Sizing(e) => e.code(),
            Error::Cgroup(e) => e.code(),
            Error::Annotation(e) => e.code(),
            Error::Persist(_) => Code::INTERNAL,
            Error::Network(e) => network_code(e),
        }
    }

    pub fn not_found(what: &'static str, id: &str) -> Error {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Maps a failed agent call made for `id` (a container or exec).
    pub fn agent(id: &str) -> impl FnOnce(AgentError) -> Error {
        let id = id.to_string();
        move |source| Error::Agent { id, source }
    }
}

/// Whether an OS error in `e`'s chain says the node ran out of a resource.
fn exhausted(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let errno = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| err.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32));
        if matches!(
            errno,
            Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
        ) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A network namespace path that is not one is the spec's fault; a
/// namespace CNI left unusable (no interface, a name we need taken) is the
/// node's state; anything else is a host failure.
fn network_code(e: &crate::network::NetworkError) -> Code {
    use crate::network::NetworkError as N;
    match e {
        N::NetnsMissing { .. } | N::NotANetns { .. } => Code::INVALID_ARGUMENT,
        e if e.is_bad_input() => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        let code = e.code();
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, crate::logging::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(call: &'static str, source: ttrpc::Error) -> AgentError {
        AgentError::Rpc { call, source }
    }

    fn code_of(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_are_deliberate_and_never_unknown() {
        assert_eq!(
            code_of(Error::not_found("container", "c1")),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(Error::AlreadyExists {
                what: "exec",
                id: "e1".into()
            }),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(Error::Transition(crate::state::Transition {
                action: "start",
                from: "running"
            })),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code_of(Error::Unimplemented("checkpoint")),
            Code::UNIMPLEMENTED
        );
        let unknown = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::UNKNOWN, "x"));
        assert_eq!(
            code_of(Error::agent("c1")(rpc("WaitProcess", unknown))),
            Code::INTERNAL
        );
        let nf = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "x"));
        assert_eq!(
            code_of(Error::agent("c1")(rpc("WaitProcess", nf))),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(Error::agent("c1")(rpc(
                "WaitProcess",
                ttrpc::Error::LocalClosed
            ))),
            Code::UNAVAILABLE
        );
    }

    #[test]
    fn an_exhausted_node_is_resource_exhausted_at_any_depth() {
        let full = crate::persist::PersistError::Io {
            what: "write",
            path: "/run/kata-shim/x/state.json".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(code_of(Error::Persist(full)), Code::RESOURCE_EXHAUSTED);
        let emfile = crate::host_cgroup::CgroupError::Io {
            action: "open",
            path: "/sys/fs/cgroup/memory/x/cgroup.procs".into(),
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        assert_eq!(code_of(Error::Cgroup(emfile)), Code::RESOURCE_EXHAUSTED);
        let denied = crate::host_cgroup::CgroupError::Io {
            action: "open",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(code_of(Error::Cgroup(denied)), Code::INTERNAL);
    }

    #[test]
    fn message_carries_the_chain() {
        let e = Error::agent("c1")(rpc(
            "CreateContainer",
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                "invalid process.args: must not be empty",
            )),
        ));
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert!(s.message().contains("CreateContainer"), "{}", s.message());
                assert!(s.message().contains("process.args"), "{}", s.message());
            }
            other => panic!("{other:?}"),
        }
    }
}
