//! Validation of the network requests: MACs, interface names, addresses,
//! CIDRs, routes and neighbours are turned into typed values before anything
//! is changed, so a bad entry never leaves the guest half configured. Pure;
//! every refusal is an `INVALID_ARGUMENT` naming the request field.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use kata_agent_protocol::agent::{ArpNeighbor, Interface, Route};

use crate::error::{AgentError, Result};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Kernel limit for interface names, without the NUL (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

/// Range the agent accepts for an MTU: 68 is the IPv4 minimum, and
/// virtio-net cannot go beyond 65535.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// Builds the `INVALID_ARGUMENT` error for `field`.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AgentError {
    AgentError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An address with its prefix length: an interface address or a route
/// destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, at most 32 or 128 depending on the family.
    pub prefix_len: u8,
}

impl IpNet {
    /// The default route's destination of the family of `addr`.
    pub fn default_for(addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::from([0u8; 4]),
            IpAddr::V6(_) => IpAddr::from([0u8; 16]),
        };
        Self {
            addr,
            prefix_len: 0,
        }
    }

    /// Whether the bits after the prefix are all zero, as the kernel
    /// requires of a route destination.
    pub fn is_network(&self) -> bool {
        let (bits, width) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = width - u32::from(self.prefix_len);
        // `::/0` has 128 host bits: a plain shift would overflow.
        let host_mask = match host_bits {
            0 => 0,
            128.. => u128::MAX,
            n => (1u128 << n) - 1,
        };
        bits & host_mask == 0
    }

    /// IPv6 link-local addresses belong to the kernel (NDP needs them), not
    /// to the pod's configuration.
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(field: &str, s: &str) -> Result<Mac> {
    let bad = || {
        invalid(
            field,
            format!("{s:?} is not a MAC address like aa:bb:cc:dd:ee:ff"),
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // from_str_radix alone would take a sign ("+a").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a link-layer address the way the protocol carries it:
/// lowercase hex bytes joined by `:`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks a name the kernel would accept for an interface
/// (`dev_valid_name`), and keeps `lo` out of reach.
pub fn validate_ifname(field: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > IFNAME_MAX {
        format!("{name:?} must be 1 to {IFNAME_MAX} bytes long")
    } else if name == "." || name == ".." {
        format!("{name:?} is not a valid interface name")
    } else if name.contains(['/', ':', '\0']) || name.chars().any(char::is_whitespace) {
        format!("{name:?} must not contain '/', ':', NUL or whitespace")
    } else if name == "lo" {
        "the loopback interface is not managed by the agent".to_string()
    } else {
        return Ok(());
    };
    Err(invalid(field, reason))
}

/// Parses an IP address in text form.
pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

/// Parses an optional address: empty means none.
fn parse_opt_ip(field: &str, s: &str, family_of: IpAddr) -> Result<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    let ip = parse_ip(field, s)?;
    if ip.is_ipv4() != family_of.is_ipv4() {
        return Err(invalid(
            field,
            format!("{ip} is not of the same family as {family_of}"),
        ));
    }
    if ip.is_unspecified() {
        return Err(invalid(
            field,
            format!("{ip} is unspecified; leave it empty"),
        ));
    }
    Ok(Some(ip))
}

/// Checks a prefix length against the family of `addr`.
pub fn parse_prefix(field: &str, addr: IpAddr, len: u32) -> Result<u8> {
    let max = max_prefix(addr);
    match u8::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(invalid(
            field,
            format!("{len} is more than {max} for {addr}"),
        )),
    }
}

/// Parses `addr/len`; the prefix length is mandatory.
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| invalid(field, format!("{s:?} is not in CIDR form (addr/len)")))?;
    let addr = parse_ip(field, addr)?;
    let len: u32 = len
        .parse()
        .map_err(|_| invalid(field, format!("{s:?} has no numeric prefix length")))?;
    let prefix_len = parse_prefix(field, addr, len)?;
    Ok(IpNet { addr, prefix_len })
}

/// A validated `UpdateInterface` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The name the NIC must end up with.
    pub name: String,
    /// The MAC the NIC is found by.
    pub mac: Mac,
    /// The MTU to set; `None` keeps the current one.
    pub mtu: Option<u32>,
    /// Exactly the addresses the NIC must carry (besides IPv6 link-local).
    pub addresses: Vec<IpNet>,
}

/// Validates an `Interface` sent to `UpdateInterface`.
pub fn parse_interface(iface: &Interface) -> Result<InterfaceSpec> {
    validate_ifname("interface.name", &iface.name)?;
    let mac = parse_mac("interface.hw_addr", &iface.hw_addr)?;
    if mac == [0; 6] {
        return Err(invalid(
            "interface.hw_addr",
            "the all-zero MAC names no NIC",
        ));
    }
    let mtu = match iface.mtu {
        0 => None,
        m if MTU_RANGE.contains(&m) => Some(m),
        m => {
            return Err(invalid(
                "interface.mtu",
                format!("{m} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()),
            ));
        }
    };
    let mut addresses = Vec::with_capacity(iface.addresses.len());
    for (i, a) in iface.addresses.iter().enumerate() {
        let field = format!("interface.addresses[{i}].address");
        let addr = parse_ip(&field, &a.address)?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(invalid(field, format!("{addr} is not a unicast address")));
        }
        let prefix_len = parse_prefix(
            &format!("interface.addresses[{i}].prefix_len"),
            addr,
            a.prefix_len,
        )?;
        let net = IpNet { addr, prefix_len };
        if let Some(j) = addresses.iter().position(|n| *n == net) {
            return Err(invalid(
                format!("interface.addresses[{i}]"),
                format!("{net} repeats interface.addresses[{j}]"),
            ));
        }
        addresses.push(net);
    }
    Ok(InterfaceSpec {
        name: iface.name.clone(),
        mac,
        mtu,
        addresses,
    })
}

/// A validated route; the device is still a name, resolved when applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix (length 0 for a default route).
    pub dest: IpNet,
    /// Next hop; `None` for a route on the link itself.
    pub gateway: Option<IpAddr>,
    /// Guest interface name.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    /// Route priority.
    pub metric: u32,
}

/// Validates the routes of an `UpdateRoutes` request, rejecting exact
/// duplicates (the second add would fail with EEXIST anyway).
pub fn parse_routes(routes: &[Route]) -> Result<Vec<RouteSpec>> {
    let mut specs: Vec<RouteSpec> = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let dest_field = format!("routes[{i}].dest");
        let dest = parse_cidr(&dest_field, &r.dest)?;
        if !dest.is_network() {
            return Err(invalid(
                dest_field,
                format!("{dest} has host bits set after the prefix"),
            ));
        }
        let gateway = parse_opt_ip(&format!("routes[{i}].gateway"), &r.gateway, dest.addr)?;
        let source = parse_opt_ip(&format!("routes[{i}].source"), &r.source, dest.addr)?;
        validate_ifname(&format!("routes[{i}].device"), &r.device)?;
        let scope = u8::try_from(r.scope)
            .map_err(|_| invalid(format!("routes[{i}].scope"), format!("{} > 255", r.scope)))?;
        let spec = RouteSpec {
            dest,
            gateway,
            device: r.device.clone(),
            source,
            scope,
            metric: r.metric,
        };
        if let Some(j) = specs.iter().position(|s| *s == spec) {
            return Err(invalid(
                format!("routes[{i}]"),
                format!("repeats routes[{j}]"),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// A validated neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    /// The neighbour's IP (IPv4 for ARP, IPv6 for NDP).
    pub ip: IpAddr,
    /// Guest interface name.
    pub device: String,
    /// The neighbour's MAC.
    pub lladdr: Mac,
}

/// Validates the entries of an `AddArpNeighbors` request.
pub fn parse_neighbors(neighbors: &[ArpNeighbor]) -> Result<Vec<NeighborSpec>> {
    let mut specs = Vec::with_capacity(neighbors.len());
    let mut seen = HashSet::new();
    for (i, n) in neighbors.iter().enumerate() {
        let ip_field = format!("neighbors[{i}].ip");
        let ip = parse_ip(&ip_field, &n.ip)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(ip_field, format!("{ip} is not a unicast address")));
        }
        validate_ifname(&format!("neighbors[{i}].device"), &n.device)?;
        let lladdr = parse_mac(&format!("neighbors[{i}].lladdr"), &n.lladdr)?;
        if !seen.insert((ip, n.device.clone())) {
            return Err(invalid(
                format!("neighbors[{i}]"),
                format!("{ip} on {} is listed twice", n.device),
            ));
        }
        specs.push(NeighborSpec {
            ip,
            device: n.device.clone(),
            lladdr,
        });
    }
    Ok(specs)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
pub(super) mod tests;
