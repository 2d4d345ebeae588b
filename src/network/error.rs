//! The network module's error type and how the caller should map each
//! variant to a gRPC code.

use std::io;
use std::path::PathBuf;

/// Errors attaching the pod network. [`NetworkError::is_bad_input`] tells
/// the caller's faults (INVALID_ARGUMENT or FAILED_PRECONDITION) from host
/// failures (INTERNAL).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace path does not exist. Caller's fault: INVALID_ARGUMENT.
    #[error("network namespace {path} does not exist")]
    NetnsMissing {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path exists but is not a network namespace. Caller's fault:
    /// INVALID_ARGUMENT.
    #[error("{path} is not a network namespace")]
    NotANetns {
        /// The path asked for.
        path: PathBuf,
    },
    /// Opening or entering the namespace failed for another reason
    /// (permissions, …). Host failure: INTERNAL.
    #[error("cannot enter network namespace {path}")]
    EnterNetns {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No interface of the namespace can become a guest NIC. Caller's fault
    /// (the CNI set-up): FAILED_PRECONDITION.
    #[error("no usable interface in network namespace {netns}: found {found}")]
    NoInterface {
        /// The namespace path.
        netns: PathBuf,
        /// What was found and why each was skipped:
        /// `lo (loopback), sit0 (no IP address)`.
        found: String,
    },
    /// A link named like our tap already exists in the namespace (another
    /// sandbox's, or left behind). Caller's fault: FAILED_PRECONDITION.
    #[error("a link named {name} already exists in the network namespace")]
    TapExists {
        /// The tap name.
        name: String,
    },
    /// A netlink request failed. Host failure: INTERNAL.
    #[error("netlink: cannot {what}")]
    Netlink {
        /// What was asked (`list links`, `add ingress qdisc on eth0`, …).
        what: String,
        /// The kernel's or the library's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Creating a tap failed. Host failure: INTERNAL.
    #[error("tap {name}: cannot {step}")]
    Tap {
        /// The tap name.
        name: String,
        /// The failed step (`open /dev/net/tun`, `TUNSETIFF`).
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Opening the vhost-net device failed. Host failure: INTERNAL.
    #[error("cannot open {path}")]
    VhostNet {
        /// The device path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Plumbing one endpoint failed at `step`; what was made for the
    /// endpoints so far has been removed. Fault of the `source`.
    #[error("cannot attach interface {endpoint} to {tap}: {step} failed")]
    Plumb {
        /// The endpoint's (veth's) name.
        endpoint: String,
        /// Its tap's name.
        tap: String,
        /// The step that failed.
        step: &'static str,
        /// Why.
        #[source]
        source: Box<NetworkError>,
    },
    /// The worker machinery failed (thread, runtime, netlink socket). Host
    /// failure: INTERNAL.
    #[error("cannot {what}")]
    Host {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The thread working in the namespace panicked. Host failure:
    /// INTERNAL.
    #[error("the thread working in network namespace {netns} panicked")]
    WorkerPanicked {
        /// The namespace path.
        netns: PathBuf,
    },
}

impl NetworkError {
    /// True when the request or the namespace's state is at fault (map to
    /// INVALID_ARGUMENT for a bad path, FAILED_PRECONDITION otherwise);
    /// false for a host failure (INTERNAL).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::NetnsMissing { .. }
            | Self::NotANetns { .. }
            | Self::NoInterface { .. }
            | Self::TapExists { .. } => true,
            Self::Plumb { source, .. } => source.is_bad_input(),
            Self::EnterNetns { .. }
            | Self::Netlink { .. }
            | Self::Tap { .. }
            | Self::VhostNet { .. }
            | Self::Host { .. }
            | Self::WorkerPanicked { .. } => false,
        }
    }

    /// A `map_err` adapter for a failed netlink request.
    pub(super) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let what = what.into();
        move |source| Self::Netlink { what, source }
    }
}
