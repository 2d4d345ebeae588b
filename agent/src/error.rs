//! The agent's error type and its single mapping to ttrpc status codes.
//!
//! Every fallible domain function returns [`AgentError`]; the ttrpc adapters
//! in `server.rs` convert it with [`AgentError::to_ttrpc`], which is the only
//! place that decides which status code a failure gets. No error is ever
//! reported as `UNKNOWN`.

use std::io;
use std::path::PathBuf;

use ttrpc::Code;

/// Anything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field carries a value the agent refuses.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// Name of the offending request field.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },

    /// Like [`Self::InvalidArgument`], for a field whose name is only known
    /// at run time because it sits in a repeated element
    /// (`routes[2].device`), so the caller can tell which entry is wrong.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidField {
        /// Path of the offending request field, with element indexes.
        field: String,
        /// Why the value is refused.
        reason: String,
    },

    /// A known `agent.*` kernel-command-line key has a value the agent cannot use.
    #[error("invalid value {value:?} for kernel command-line key `{key}`: expected {expected}")]
    InvalidConfig {
        /// The command-line key, e.g. `agent.log`.
        key: &'static str,
        /// The value as written on the command line.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// Something the request refers to does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// Something the request creates already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// The agent does not implement this request (yet).
    #[error("not implemented: {0}")]
    Unimplemented(&'static str),

    /// The guest is not in a state where the request can be served.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    /// An I/O operation on a guest file or device failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What the agent was doing, e.g. "reading".
        context: &'static str,
        /// The file or device involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A guest file did not have the expected format.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file that failed to parse.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What the agent was doing.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// The ttrpc server could not be set up or run.
    #[error("ttrpc server: {0}")]
    Server(String),

    /// An internal invariant failed (e.g. a worker task died).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand result type of the agent.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// Wraps an I/O error with what the agent was doing and on which path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Wraps a failed system call with a description of what was attempted.
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            context: context.into(),
            source,
        }
    }

    /// Builds a parse error for `path`.
    pub fn parse(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Parse {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The ttrpc status code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. }
            | Self::InvalidField { .. }
            | Self::InvalidConfig { .. } => Code::INVALID_ARGUMENT,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Io { .. }
            | Self::Parse { .. }
            | Self::Sys { .. }
            | Self::Server(_)
            | Self::Internal(_) => Code::INTERNAL,
        }
    }

    /// Converts the error into the ttrpc error a handler returns.
    pub fn to_ttrpc(&self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), self.to_string()))
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        e.to_ttrpc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_a_specific_code() {
        let cases: Vec<(AgentError, Code)> = vec![
            (
                AgentError::InvalidArgument {
                    field: "shared_fs_probe",
                    reason: "contains '/'".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::InvalidField {
                    field: "routes[2].device".into(),
                    reason: "no interface named eth9".into(),
                },
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::InvalidConfig {
                    key: "agent.log",
                    value: "loud".into(),
                    expected: "error|warn|info|debug|trace",
                },
                Code::INVALID_ARGUMENT,
            ),
            (AgentError::NotFound("x".into()), Code::NOT_FOUND),
            (AgentError::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (AgentError::Unimplemented("x"), Code::UNIMPLEMENTED),
            (
                AgentError::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                // A missing guest file is the agent's problem, not the caller's.
                AgentError::io("reading", "/nope", io::Error::from(io::ErrorKind::NotFound)),
                Code::INTERNAL,
            ),
            (
                AgentError::io(
                    "reading",
                    "/proc/meminfo",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ),
                Code::INTERNAL,
            ),
            (AgentError::parse("/proc/uptime", "empty"), Code::INTERNAL),
            (
                AgentError::sys("mount /proc", nix::Error::EPERM),
                Code::INTERNAL,
            ),
            (AgentError::Server("bind".into()), Code::INTERNAL),
            (AgentError::Internal("x".into()), Code::INTERNAL),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_ne!(err.code(), Code::UNKNOWN);
            match err.to_ttrpc() {
                ttrpc::Error::RpcStatus(st) => {
                    assert_eq!(st.code(), code);
                    assert_eq!(st.message(), err.to_string());
                }
                other => panic!("unexpected ttrpc error {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_argument_message_names_the_field() {
        let e = AgentError::InvalidArgument {
            field: "shared_fs_probe",
            reason: "must not contain '/'".into(),
        };
        assert!(e.to_string().contains("shared_fs_probe"));
    }
}
