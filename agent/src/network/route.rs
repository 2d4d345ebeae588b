//! The main routing table of the managed (non-loopback) interfaces: reading
//! it in the protocol's `Route` shape, and making it equal a requested list
//! (delete what is not listed, then add what is missing, link routes before
//! routes through a gateway). Routes the kernel made for an address, the
//! local table and loopback are never touched.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::pin::pin;

use futures_util::TryStreamExt;
use kata_agent_protocol::agent::Route;
use nix::errno::Errno;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};

use super::link::{self, Link};
use super::parse::{IpNet, RouteSpec};
use super::{Netlink, errno_of, nl_error};
use crate::error::{AgentError, Result};

/// The metric the kernel gives an IPv6 route added without one
/// (`IP6_RT_PRIO_USER`).
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// What identifies a route for the comparison of the table with the
/// request, normalized the way the kernel reports routes back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    dest: IpNet,
    gateway: Option<IpAddr>,
    oif: u32,
    source: Option<IpAddr>,
    scope: u8,
    metric: u32,
}

impl RouteKey {
    fn from_spec(spec: &RouteSpec, oif: u32) -> Self {
        Self {
            dest: spec.dest,
            gateway: spec.gateway,
            oif,
            source: spec.source,
            scope: spec.scope,
            metric: spec.metric,
        }
        .normalized()
    }

    /// IPv6 has no route scopes (the kernel reports universe whatever was
    /// asked) and turns metric 0 into 1024; comparing the raw request with
    /// the table would otherwise replace such routes on every call.
    fn normalized(mut self) -> Self {
        if self.dest.addr.is_ipv6() {
            self.scope = 0;
            if self.metric == 0 {
                self.metric = IPV6_DEFAULT_METRIC;
            }
        }
        self
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dest)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " ifindex {}", self.oif)?;
        if let Some(src) = self.source {
            write!(f, " src {src}")?;
        }
        write!(f, " scope {} metric {}", self.scope, self.metric)
    }
}

/// A route of the table as the agent manages it.
struct Entry {
    key: RouteKey,
    /// Made by the kernel for an address (`RTPROT_KERNEL`): kept always.
    kernel: bool,
    msg: RouteMessage,
}

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The managed part of a dumped route: unicast, main table, leaving through
/// one of `managed` (non-loopback link indexes). Anything else is ignored,
/// neither reported nor deleted.
fn entry_from_msg(msg: RouteMessage, managed: &[u32]) -> Option<Entry> {
    let h = &msg.header;
    if table_of(&msg) != u32::from(RouteHeader::RT_TABLE_MAIN) || h.kind != RouteType::Unicast {
        return None;
    }
    let default_dest = match h.address_family {
        AddressFamily::Inet => IpNet::default_for(IpAddr::from([0u8; 4])),
        AddressFamily::Inet6 => IpNet::default_for(IpAddr::from([0u8; 16])),
        _ => return None,
    };
    let mut key = RouteKey {
        dest: default_dest,
        gateway: None,
        oif: 0,
        source: None,
        scope: u8::from(h.scope),
        metric: 0,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                key.dest = IpNet {
                    addr: route_ip(a)?,
                    prefix_len: h.destination_prefix_length,
                };
            }
            RouteAttribute::Gateway(a) => key.gateway = Some(route_ip(a)?),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => key.gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Via(RouteVia::Inet(v4)) => key.gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::PrefSource(a) => key.source = Some(route_ip(a)?),
            RouteAttribute::Oif(i) => key.oif = *i,
            RouteAttribute::Priority(p) => key.metric = *p,
            _ => {}
        }
    }
    if !managed.contains(&key.oif) {
        return None;
    }
    let kernel = h.protocol == RouteProtocol::Kernel;
    Some(Entry {
        key: key.normalized(),
        kernel,
        msg,
    })
}

async fn entries(nl: &Netlink, links: &[Link]) -> Result<Vec<Entry>> {
    let managed: Vec<u32> = links
        .iter()
        .filter(|l| !l.loopback)
        .map(|l| l.index)
        .collect();
    let mut out = Vec::new();
    // AF_UNSPEC dumps every family; `entry_from_msg` keeps IPv4 and IPv6.
    let mut stream = pin!(nl.handle.route().get(RouteMessage::default()).execute());
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| nl_error("listing routes", e))?
    {
        out.extend(entry_from_msg(msg, &managed));
    }
    Ok(out)
}

fn to_route(key: &RouteKey, links: &[Link]) -> Route {
    let mut r = Route::new();
    r.dest = key.dest.to_string();
    r.gateway = key.gateway.map(|g| g.to_string()).unwrap_or_default();
    r.device = links
        .iter()
        .find(|l| l.index == key.oif)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    r.source = key.source.map(|s| s.to_string()).unwrap_or_default();
    r.scope = u32::from(key.scope);
    r.metric = key.metric;
    r
}

/// `ListRoutes`.
pub(super) async fn list(nl: &Netlink) -> Result<Vec<Route>> {
    let links = link::links(nl).await?;
    Ok(entries(nl, &links)
        .await?
        .iter()
        .map(|e| to_route(&e.key, &links))
        .collect())
}

/// Indexes of the routes to delete: not requested and not the kernel's.
fn stale(existing: &[(RouteKey, bool)], wanted: &[RouteKey]) -> Vec<usize> {
    existing
        .iter()
        .enumerate()
        .filter(|(_, (key, kernel))| !kernel && !wanted.contains(key))
        .map(|(i, _)| i)
        .collect()
}

/// A kernel route already serves a requested link route that differs from
/// it only in source or scope (e.g. the request mirrors the host's table
/// without `src`). Adding it would fail with EEXIST, and the kernel route
/// cannot be deleted, so it counts as present.
fn served_by_kernel(want: &RouteKey, existing: &[(RouteKey, bool)]) -> bool {
    want.gateway.is_none()
        && existing.iter().any(|(k, kernel)| {
            *kernel
                && k.gateway.is_none()
                && k.dest == want.dest
                && k.oif == want.oif
                && k.metric == want.metric
        })
}

/// The requested routes missing from the table, in the order to add them:
/// routes without a gateway first (a gateway must be reachable through a
/// link route when its route is added), then the rest, each group in
/// request order.
fn missing(existing: &[(RouteKey, bool)], wanted: &[RouteKey]) -> Vec<RouteKey> {
    let absent =
        |k: &&RouteKey| !existing.iter().any(|(e, _)| e == *k) && !served_by_kernel(k, existing);
    let (link_routes, via_gateway): (Vec<&RouteKey>, Vec<&RouteKey>) = wanted
        .iter()
        .filter(absent)
        .partition(|k| k.gateway.is_none());
    let mut out: Vec<RouteKey> = Vec::new();
    // Requested routes that differ only where IPv6 ignores it are one route.
    for k in link_routes.into_iter().chain(via_gateway) {
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

fn build(key: &RouteKey) -> Result<RouteMessage> {
    let bug = |e| AgentError::Internal(format!("building route {key}: {e}"));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(key.dest.addr, key.dest.prefix_len)
        .map_err(bug)?
        .output_interface(key.oif)
        .scope(RouteScope::from(key.scope));
    if let Some(gw) = key.gateway {
        b = b.gateway(gw).map_err(bug)?;
    }
    if let Some(src) = key.source {
        b = b.pref_source(src).map_err(bug)?;
    }
    if key.metric != 0 {
        b = b.priority(key.metric);
    }
    Ok(b.build())
}

fn keyed(entries: &[Entry]) -> Vec<(RouteKey, bool)> {
    entries.iter().map(|e| (e.key.clone(), e.kernel)).collect()
}

/// `UpdateRoutes` on validated routes.
pub(super) async fn update(nl: &Netlink, specs: &[RouteSpec]) -> Result<Vec<Route>> {
    let links = link::links(nl).await?;
    let wanted = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let oif = link::device_index(&links, &s.device, &format!("routes[{i}].device"))?;
            Ok(RouteKey::from_spec(s, oif))
        })
        .collect::<Result<Vec<_>>>()?;
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let describe = |k: &RouteKey| format!("{k} ({})", names.get(&k.oif).unwrap_or(&"?"));

    let current = entries(nl, &links).await?;
    for i in stale(&keyed(&current), &wanted) {
        let e = &current[i];
        tracing::debug!(route = %describe(&e.key), "deleting a route not requested");
        match nl.handle.route().del(e.msg.clone()).execute().await {
            // Already gone with an earlier deletion.
            Err(err) if errno_of(&err) == Some(Errno::ESRCH) => {}
            r => r.map_err(|err| nl_error(format!("deleting route {}", describe(&e.key)), err))?,
        }
    }
    // Read the table again rather than predict what the deletions did.
    let current = entries(nl, &links).await?;
    for key in missing(&keyed(&current), &wanted) {
        tracing::debug!(route = %describe(&key), "adding a route");
        nl.handle
            .route()
            .add(build(&key)?)
            .execute()
            .await
            .map_err(|e| nl_error(format!("adding route {}", describe(&key)), e))?;
    }
    Ok(entries(nl, &links)
        .await?
        .iter()
        .map(|e| to_route(&e.key, &links))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_cidr;
    use super::*;

    fn key(dest: &str, gw: &str, oif: u32) -> RouteKey {
        RouteKey {
            dest: parse_cidr("t", dest).expect("test CIDR"),
            gateway: (!gw.is_empty()).then(|| gw.parse().expect("test IP")),
            oif,
            source: None,
            scope: 0,
            metric: 0,
        }
        .normalized()
    }

    #[test]
    fn ipv6_keys_are_normalized_like_the_kernel_reports_them() {
        let mut k = key("::/0", "fd00::1", 2);
        assert_eq!(k.metric, IPV6_DEFAULT_METRIC);
        k.scope = 253;
        k.metric = 5;
        let k = k.normalized();
        assert_eq!((k.scope, k.metric), (0, 5));
        let mut v4 = key("0.0.0.0/0", "10.0.0.1", 2);
        v4.scope = 253;
        let v4 = v4.normalized();
        assert_eq!((v4.scope, v4.metric), (253, 0));
    }

    #[test]
    fn stale_routes_exclude_kernel_and_requested_ones() {
        let existing = vec![
            (key("10.1.2.0/24", "", 2), true),
            (key("0.0.0.0/0", "10.1.2.1", 2), false),
            (key("172.16.0.0/12", "10.1.2.9", 2), false),
            (key("fd00::/64", "", 2), true),
        ];
        let wanted = vec![key("0.0.0.0/0", "10.1.2.1", 2)];
        assert_eq!(stale(&existing, &wanted), vec![2]);
        assert_eq!(stale(&existing, &[]), vec![1, 2]);
    }

    #[test]
    fn missing_routes_come_link_routes_first_in_request_order() {
        let existing = vec![
            (key("10.1.2.0/24", "", 2), true),
            (key("0.0.0.0/0", "10.1.2.1", 2), false),
        ];
        let wanted = vec![
            key("192.168.7.0/24", "10.1.2.254", 2),
            key("0.0.0.0/0", "10.1.2.1", 2),
            key("169.254.1.1/32", "", 3),
            key("::/0", "fd00::1", 2),
            key("fd00::/64", "", 3),
            key("fd00::/64", "", 3),
        ];
        assert_eq!(
            missing(&existing, &wanted),
            vec![
                key("169.254.1.1/32", "", 3),
                key("fd00::/64", "", 3),
                key("192.168.7.0/24", "10.1.2.254", 2),
                key("::/0", "fd00::1", 2),
            ]
        );
    }

    #[test]
    fn a_kernel_route_serves_the_same_link_route_without_src() {
        let mut kernel = key("10.1.2.0/24", "", 2);
        kernel.source = Some("10.1.2.3".parse().expect("ip"));
        kernel.scope = 253;
        let existing = vec![(kernel, true)];
        let mut wanted = key("10.1.2.0/24", "", 2);
        wanted.scope = 253;
        assert!(missing(&existing, &[wanted]).is_empty());
        // Not on another link, with another metric, or if only a static
        // route matches (that one is deleted as stale first).
        assert_eq!(missing(&existing, &[key("10.1.2.0/24", "", 3)]).len(), 1);
        let mut other_metric = key("10.1.2.0/24", "", 2);
        other_metric.metric = 100;
        assert_eq!(missing(&existing, &[other_metric]).len(), 1);
        let not_kernel = vec![(existing[0].0.clone(), false)];
        assert_eq!(missing(&not_kernel, &[key("10.1.2.0/24", "", 2)]).len(), 1);
    }

    #[test]
    fn default_and_cidr_routes_render_in_cidr_form() {
        let links = [Link {
            index: 2,
            name: "eth0".into(),
            mac: vec![],
            mtu: 1500,
            up: true,
            loopback: false,
        }];
        let r = to_route(&key("0.0.0.0/0", "10.1.2.1", 2), &links);
        assert_eq!(
            (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()),
            ("0.0.0.0/0", "10.1.2.1", "eth0")
        );
        let r = to_route(&key("::/0", "", 2), &links);
        assert_eq!((r.dest.as_str(), r.gateway.as_str()), ("::/0", ""));
        assert_eq!(r.metric, IPV6_DEFAULT_METRIC);
    }

    #[test]
    fn built_messages_carry_the_key() {
        let mut k = key("192.168.7.0/24", "10.1.2.254", 4);
        k.metric = 10;
        k.source = Some("10.1.2.3".parse().expect("ip"));
        let msg = build(&k).expect("valid key");
        assert_eq!(msg.header.destination_prefix_length, 24);
        let back = entry_from_msg(msg, &[4]).expect("managed unicast main-table route");
        assert_eq!(back.key, k);
        assert!(!back.kernel);
        let msg = build(&key("0.0.0.0/0", "10.1.2.1", 4)).expect("valid key");
        assert!(entry_from_msg(msg, &[5]).is_none(), "unmanaged link");
    }
}
