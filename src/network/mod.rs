//! Host side of pod networking: the pod's CNI interfaces become guest NICs.
//!
//! CNI (through containerd or CRI-O) has made the pod's network namespace
//! and a veth (usually `eth0`) with addresses and routes in it before the
//! sandbox is created. [`PodNetwork::attach`] enters that namespace,
//! discovers its usable interfaces and, for each one, creates a tap
//! `tap<idx>_kata` and joins it to the veth with tc: an `ingress` qdisc on
//! both, and on each a `u32` match-all filter with `mirred egress redirect`
//! to the other (veth ingress → tap, tap ingress → veth). `matchall` and
//! `flower` are not in every kernel; `u32` and `mirred` are. CNI's own
//! objects (the veth, its addresses and routes) are left untouched.
//!
//! The guest NIC takes the veth's MAC, MTU and addresses; routes (except
//! the kernel's own) and permanent neighbours go to the agent as well
//! ([`PodNetwork::interfaces`], [`PodNetwork::routes`],
//! [`PodNetwork::neighbors`]). QEMU gets the tap fds ([`Nic`]): one per
//! queue pair, one pair per boot vCPU (see `vm::qemu::nic`).
//!
//! The taps are not persistent: each vanishes with the last fd on it
//! (QEMU's), so a dead VM leaves no tap behind. What is left after a shim
//! crash (the ingress qdiscs on the veths, a tap QEMU still holds) is
//! removed by [`detach`] from the persisted [`NetworkRecord`].
//!
//! # Threading
//! The API is synchronous. Each call runs its netlink work on a fresh
//! thread that enters the namespace (only that thread does) and exits after
//! (see `netns.rs`); callers on tokio use `spawn_blocking`.

pub(crate) mod discover;
mod error;
mod netns;
mod tap;
mod tc;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use kata_agent_protocol::agent;
use rtnetlink::Handle;

pub use self::error::NetworkError;
pub use self::tap::{TUN_DEVICE, VHOST_NET_DEVICE};
use crate::logging::error_chain;

/// What the shim persisted about the plumbing it made, for teardown after a
/// crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkRecord {
    /// The pod's network namespace (a bind-mounted nsfs file).
    pub netns: PathBuf,
    /// One entry per plumbed interface.
    pub links: Vec<LinkRecord>,
}

/// One veth/tap pair joined by our tc filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkRecord {
    /// The CNI veth's name in the namespace; it carries our ingress qdisc.
    pub veth: String,
    /// Our tap's name in the namespace.
    pub tap: String,
}

/// One pod interface as the guest must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The veth's name in the namespace (`eth0`): the guest NIC's name.
    pub name: String,
    /// The veth's MAC, lower-case `aa:bb:cc:dd:ee:ff`: the guest NIC's MAC.
    pub mac: String,
    /// The veth's MTU (the tap's too).
    pub mtu: u32,
    /// The veth's addresses with their prefix lengths, IPv4 and IPv6
    /// (without IPv6 link-local ones: the guest makes its own).
    pub addresses: Vec<(IpAddr, u8)>,
    /// The tap joined to the veth (`tap<idx>_kata`).
    pub tap: String,
}

/// A route of the namespace's main table that the guest must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination network; `0.0.0.0`/`::` with prefix 0 for a default route.
    pub dest: IpAddr,
    /// Destination prefix length.
    pub dest_prefix: u8,
    /// Next hop; `None` for a route on the link itself.
    pub gateway: Option<IpAddr>,
    /// The endpoint (guest interface) the route goes through.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*` (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Route priority (metric); 0 when unset.
    pub metric: u32,
}

/// A permanent (`NUD_PERMANENT`) neighbour entry on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborInfo {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// The endpoint it is on.
    pub device: String,
    /// Its link-layer address, lower-case `aa:bb:cc:dd:ee:ff`.
    pub lladdr: String,
}

/// What QEMU gets for one endpoint.
#[derive(Debug)]
pub struct Nic {
    /// The tap's fds (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), one per queue
    /// pair (`IFF_MULTI_QUEUE` when more than one); the tap goes away when
    /// the last fd on it is closed.
    pub taps: Vec<OwnedFd>,
    /// One `/dev/vhost-net` fd per queue pair when vhost-net was asked
    /// for; empty otherwise.
    pub vhosts: Vec<OwnedFd>,
    /// The guest NIC's MAC (the veth's).
    pub mac: String,
}

/// The pod's network as attached: its endpoints and what the guest needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The plumbed interfaces, in the order of their taps (`tap0_kata`, …).
    pub endpoints: Vec<Endpoint>,
    /// Main-table routes on the endpoints, without the kernel's own.
    pub routes: Vec<RouteInfo>,
    /// Permanent neighbours on the endpoints.
    pub neighbors: Vec<NeighborInfo>,
}

/// The tap name for endpoint `idx`.
fn tap_name(idx: usize) -> String {
    format!("tap{idx}_kata")
}

impl PodNetwork {
    /// Discovers the interfaces of the network namespace at `netns` and
    /// plumbs each to a new tap of `queues` queue pairs (with as many
    /// `/dev/vhost-net` fds when `vhost_net`). On any error, removes what it
    /// made and returns the error: nothing is left behind.
    pub fn attach(
        netns: &Path,
        vhost_net: bool,
        queues: u32,
    ) -> Result<(PodNetwork, Vec<Nic>), NetworkError> {
        let path = netns.to_path_buf();
        netns::run_in(netns, move |handle| async move {
            let found = discover::discover(&handle, &path).await?;
            let mut made = Vec::with_capacity(found.links.len());
            for link in &found.links {
                if let Err(e) = plumb(&handle, link, vhost_net, queues, &mut made).await {
                    rollback(&handle, made).await;
                    return Err(e);
                }
            }
            let nics = made
                .into_iter()
                .zip(&found.links)
                .map(|(m, link)| Nic {
                    taps: m.tap_fds,
                    vhosts: m.vhosts,
                    mac: link.endpoint.mac.clone(),
                })
                .collect();
            let net = PodNetwork {
                netns: path,
                endpoints: found.links.into_iter().map(|l| l.endpoint).collect(),
                routes: found.routes,
                neighbors: found.neighbors,
            };
            Ok((net, nics))
        })
    }

    /// What [`detach`] needs to undo this attachment, even from another
    /// process.
    pub fn record(&self) -> NetworkRecord {
        NetworkRecord {
            netns: self.netns.clone(),
            links: self
                .endpoints
                .iter()
                .map(|e| LinkRecord {
                    veth: e.name.clone(),
                    tap: e.tap.clone(),
                })
                .collect(),
        }
    }

    /// The agent's `UpdateInterface` payloads, one per endpoint.
    pub fn interfaces(&self) -> Vec<agent::Interface> {
        self.endpoints
            .iter()
            .map(|e| {
                let mut iface = agent::Interface::new();
                iface.name = e.name.clone();
                iface.hw_addr = e.mac.clone();
                iface.mtu = e.mtu;
                iface.addresses = e
                    .addresses
                    .iter()
                    .map(|(ip, prefix)| {
                        let mut a = agent::IpAddress::new();
                        a.address = ip.to_string();
                        a.prefix_len = u32::from(*prefix);
                        a
                    })
                    .collect();
                iface
            })
            .collect()
    }

    /// The agent's `UpdateRoutes` table.
    pub fn routes(&self) -> Vec<agent::Route> {
        let text = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        self.routes
            .iter()
            .map(|r| {
                let mut route = agent::Route::new();
                route.dest = format!("{}/{}", r.dest, r.dest_prefix);
                route.gateway = text(r.gateway);
                route.device = r.device.clone();
                route.source = text(r.source);
                route.scope = u32::from(r.scope);
                route.metric = r.metric;
                route
            })
            .collect()
    }

    /// The agent's `AddArpNeighbors` entries.
    pub fn neighbors(&self) -> Vec<agent::ArpNeighbor> {
        self.neighbors
            .iter()
            .map(|n| {
                let mut neigh = agent::ArpNeighbor::new();
                neigh.ip = n.ip.to_string();
                neigh.device = n.device.clone();
                neigh.lladdr = n.lladdr.clone();
                neigh
            })
            .collect()
    }
}

/// What `attach` made for one endpoint so far, for the rollback.
#[derive(Debug, Default)]
struct Made {
    veth_index: u32,
    veth_qdisc: bool,
    tap: String,
    tap_index: Option<u32>,
    tap_fds: Vec<OwnedFd>,
    vhosts: Vec<OwnedFd>,
}

/// Plumbs one discovered link to its tap, recording each step in a new
/// entry of `made`.
async fn plumb(
    handle: &Handle,
    link: &discover::Link,
    vhost_net: bool,
    queues: u32,
    made: &mut Vec<Made>,
) -> Result<(), NetworkError> {
    let ep = &link.endpoint;
    let fail = |step: &'static str| {
        move |source: NetworkError| NetworkError::Plumb {
            endpoint: ep.name.clone(),
            tap: ep.tap.clone(),
            step,
            source: Box::new(source),
        }
    };
    made.push(Made {
        veth_index: link.index,
        tap: ep.tap.clone(),
        ..Made::default()
    });
    let m = made.last_mut().expect("an entry was just pushed");

    m.tap_fds = tap::create(&ep.tap, queues).map_err(fail("create the tap"))?;
    let tap_index = tap::index_of(handle, &ep.tap)
        .await
        .map_err(fail("look the tap up"))?;
    m.tap_index = Some(tap_index);
    tap::set_mtu_up(handle, &ep.tap, tap_index, ep.mtu)
        .await
        .map_err(fail("set the tap's MTU and bring it up"))?;

    tc::add_ingress(handle, &ep.name, link.index)
        .await
        .map_err(fail("add the veth's ingress qdisc"))?;
    m.veth_qdisc = true;
    tc::add_ingress(handle, &ep.tap, tap_index)
        .await
        .map_err(fail("add the tap's ingress qdisc"))?;
    tc::redirect(handle, (&ep.name, link.index), (&ep.tap, tap_index))
        .await
        .map_err(fail("redirect the veth to the tap"))?;
    tc::redirect(handle, (&ep.tap, tap_index), (&ep.name, link.index))
        .await
        .map_err(fail("redirect the tap to the veth"))?;

    if vhost_net {
        for _ in 0..m.tap_fds.len() {
            m.vhosts
                .push(tap::open_vhost_net().map_err(fail("open vhost-net"))?);
        }
    }
    tracing::debug!(veth = %ep.name, tap = %ep.tap, mtu = ep.mtu, vhost_net, queues = m.tap_fds.len(),
        "interface plumbed");
    Ok(())
}

/// Undoes what `plumb` made: the veths' ingress qdiscs (which takes our
/// filters with them), then the taps. A tap goes away with its last fd, but
/// a process forked meanwhile (until its exec) may hold a copy: the tap is
/// deleted explicitly so that it is gone when the error is returned.
async fn rollback(handle: &Handle, made: Vec<Made>) {
    for m in made {
        if m.veth_qdisc {
            if let Err(e) = tc::del_ingress(handle, m.veth_index).await {
                tracing::warn!(ifindex = m.veth_index, error = %error_chain(&e),
                    "rollback: cannot remove the veth's ingress qdisc");
            }
        }
        if let Some(tap_index) = m.tap_index {
            if let Err(e) = tap::delete(handle, &m.tap, tap_index).await {
                tracing::warn!(tap = %m.tap, error = %error_chain(&e),
                    "rollback: cannot delete the tap (it goes with its last fd)");
            }
        }
        drop(m.vhosts);
        drop(m.tap_fds);
    }
}

/// Removes what [`PodNetwork::attach`] made, from the record alone (works
/// after a shim crash): our ingress qdiscs on the veths (which removes our
/// filters) and our taps. A namespace, veth or tap that is already gone is
/// fine (CRI-O tears the namespace down before stopping the containers).
/// Logs what it removed and what failed; never fails.
pub fn detach(record: &NetworkRecord) {
    if record.links.is_empty() {
        return;
    }
    let rec = record.clone();
    let result = netns::run_in(&record.netns, move |handle| async move {
        for link in &rec.links {
            detach_link(&handle, link).await;
        }
        Ok(())
    });
    let netns = record.netns.display();
    match result {
        Ok(()) => {}
        Err(NetworkError::NetnsMissing { .. } | NetworkError::NotANetns { .. }) => {
            tracing::info!(%netns, "network namespace already gone, and our taps and qdiscs with it");
        }
        Err(e) => {
            tracing::warn!(%netns, error = %error_chain(&e), "cannot clean the pod network up");
        }
    }
}

/// Removes one veth's ingress qdisc and its tap, tolerating their absence.
async fn detach_link(handle: &Handle, link: &LinkRecord) {
    let (veth, tap) = (link.veth.as_str(), link.tap.as_str());
    match discover::find(handle, veth).await {
        Ok(None) => tracing::info!(veth, "veth already gone"),
        Ok(Some(l)) => match tc::del_ingress(handle, l.index).await {
            Ok(()) => tracing::info!(veth, "removed the veth's ingress qdisc"),
            Err(e) if tc::is_absent(&e) => tracing::info!(veth, "the veth has no ingress qdisc"),
            Err(e) => tracing::warn!(veth, error = %error_chain(&e),
                "cannot remove the veth's ingress qdisc"),
        },
        Err(e) => tracing::warn!(veth, error = %error_chain(&e), "cannot look the veth up"),
    }
    match discover::find(handle, tap).await {
        Ok(None) => tracing::info!(tap, "tap already gone"),
        Ok(Some(l)) if !l.is_tun => {
            tracing::warn!(tap, "a link with our tap's name is not a tap; left alone");
        }
        Ok(Some(l)) => match tap::delete(handle, tap, l.index).await {
            Ok(()) => tracing::info!(tap, "removed the tap"),
            Err(e) => tracing::warn!(tap, error = %error_chain(&e), "cannot remove the tap"),
        },
        Err(e) => tracing::warn!(tap, error = %error_chain(&e), "cannot look the tap up"),
    }
}
