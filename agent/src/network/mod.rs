//! Guest networking: the pod's interfaces, routes and neighbours, as the
//! shim mirrors them from the pod's network namespace, applied with
//! rtnetlink (`UpdateInterface`, `UpdateRoutes`, `AddArpNeighbors`,
//! `ListInterfaces`, `ListRoutes`).
//!
//! Requests are validated completely ([`parse`]) before anything changes.
//! The loopback interface is never touched or reported. Each call opens its
//! own rtnetlink socket ([`Netlink`]): the calls come a few times per pod
//! lifetime, so a socket per call costs nothing, there is no long-lived
//! connection task whose death would need detecting, and the socket belongs
//! to the network namespace of the thread that opens it (which the root
//! tests rely on to run in a private namespace).

mod link;
mod neighbour;
mod parse;
mod route;

#[cfg(test)]
mod netns_tests;

use std::time::Duration;

use kata_agent_protocol::agent::{
    AddArpNeighborsRequest, Interface, Route, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use nix::errno::Errno;
use rtnetlink::Handle;
use tokio::task::JoinHandle;

use crate::error::{AgentError, Result};

/// How long `UpdateInterface` waits for the NIC with the requested MAC:
/// virtio_net may still be loading in the background when the first
/// request arrives.
pub const NIC_WAIT: Duration = Duration::from_secs(10);

/// Finds the NIC by `interface.hw_addr` (waiting up to `wait` for it to
/// appear), renames it, sets its MTU and exactly the given addresses, brings
/// it up, and returns it as [`list_interfaces`] reports it.
pub async fn update_interface(req: &UpdateInterfaceRequest, wait: Duration) -> Result<Interface> {
    let iface = req
        .interface
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument {
            field: "interface",
            reason: "missing".into(),
        })?;
    let spec = parse::parse_interface(iface)?;
    let nl = Netlink::open()?;
    link::update(&nl, &spec, wait).await
}

/// Makes the main table of the non-loopback interfaces equal `routes`
/// (keeping the routes the kernel made for addresses), and returns the
/// resulting [`list_routes`].
pub async fn update_routes(req: &UpdateRoutesRequest) -> Result<Vec<Route>> {
    let routes = req
        .routes
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument {
            field: "routes",
            reason: "missing (send an empty list to clear the table)".into(),
        })?;
    let specs = parse::parse_routes(&routes.routes)?;
    let nl = Netlink::open()?;
    route::update(&nl, &specs).await
}

/// Adds each neighbour as a permanent entry, replacing any entry for the
/// same address on the same interface.
pub async fn add_arp_neighbors(req: &AddArpNeighborsRequest) -> Result<()> {
    let specs = parse::parse_neighbors(&req.neighbors)?;
    let nl = Netlink::open()?;
    neighbour::add(&nl, &specs).await
}

/// Every interface except loopback, with its addresses (including the
/// kernel's IPv6 link-local ones) and whether it is up.
pub async fn list_interfaces() -> Result<Vec<Interface>> {
    let nl = Netlink::open()?;
    link::list(&nl).await
}

/// The main-table routes of the non-loopback interfaces, including the
/// kernel's, so the caller sees the whole table.
pub async fn list_routes() -> Result<Vec<Route>> {
    let nl = Netlink::open()?;
    route::list(&nl).await
}

/// One rtnetlink connection; its I/O task is stopped when it is dropped.
struct Netlink {
    handle: Handle,
    conn: JoinHandle<()>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace and runs its
    /// connection on the current tokio runtime.
    fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| AgentError::Internal(format!("opening an rtnetlink socket: {e}")))?;
        Ok(Self {
            handle,
            conn: tokio::spawn(conn),
        })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Maps an rtnetlink failure, with what was being done: the kernel's errno
/// when there is one (so the text reads like `ip`'s), else the library's
/// own description. Both are INTERNAL: the request was valid.
fn nl_error(context: impl Into<String>, e: rtnetlink::Error) -> AgentError {
    match errno_of(&e) {
        Some(errno) => AgentError::sys(context, errno),
        None => AgentError::Internal(format!("{}: {e}", context.into())),
    }
}

/// The errno of a kernel refusal, if `e` is one.
fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            Some(Errno::from_raw(m.raw_code().abs()))
        }
        _ => None,
    }
}
