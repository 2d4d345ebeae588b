//! Links and their addresses: finding the NIC by MAC (waiting for it to
//! appear), renaming it, MTU, the address set, up/down, and reporting
//! interfaces in the protocol's `Interface` shape.

use std::pin::pin;
use std::time::Duration;

use futures_util::TryStreamExt;
use kata_agent_protocol::agent::{Interface, IpAddress};
use nix::errno::Errno;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tokio::time::Instant;

use super::parse::{self, InterfaceSpec, IpNet, Mac};
use super::{Netlink, errno_of, nl_error};
use crate::error::{AgentError, Result};

/// Pause between two looks for a NIC that has not appeared yet.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What the agent needs to know of a link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
}

impl Link {
    fn from_msg(msg: &LinkMessage) -> Self {
        let mut link = Self {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(a) => link.mac.clone_from(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        link
    }
}

/// All links, loopback included (callers decide what to skip).
pub(super) async fn links(nl: &Netlink) -> Result<Vec<Link>> {
    let mut stream = pin!(nl.handle.link().get().execute());
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| nl_error("listing links", e))?
    {
        out.push(Link::from_msg(&msg));
    }
    Ok(out)
}

/// Resolves a guest interface name for a request field; loopback is
/// refused like an unknown name, since the agent never manages it.
pub(super) fn device_index(links: &[Link], name: &str, field: &str) -> Result<u32> {
    match links.iter().find(|l| l.name == name) {
        Some(l) if !l.loopback => Ok(l.index),
        Some(_) => Err(parse::invalid(
            field,
            format!("{name} is the loopback interface, which the agent does not manage"),
        )),
        None => Err(parse::invalid(field, format!("no interface named {name}"))),
    }
}

/// One address of a link, with the message the kernel reported it in
/// (which is what deleting it takes).
struct Addr {
    index: u32,
    net: IpNet,
    msg: AddressMessage,
}

fn addr_from_msg(msg: AddressMessage) -> Option<Addr> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is
    // the peer on point-to-point links); IPv6 only has IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let addr = match msg.header.family {
        AddressFamily::Inet => local.or(address)?,
        AddressFamily::Inet6 => address?,
        _ => return None,
    };
    Some(Addr {
        index: msg.header.index,
        net: IpNet {
            addr,
            prefix_len: msg.header.prefix_len,
        },
        msg,
    })
}

async fn addresses(nl: &Netlink) -> Result<Vec<Addr>> {
    let mut stream = pin!(nl.handle.address().get().execute());
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| nl_error("listing addresses", e))?
    {
        out.extend(addr_from_msg(msg));
    }
    Ok(out)
}

/// The addresses to remove so that only `wanted` remain. IPv6 link-local
/// addresses stay unless listed: the kernel made them and NDP needs them.
fn addresses_to_delete(existing: &[IpNet], wanted: &[IpNet]) -> Vec<IpNet> {
    existing
        .iter()
        .filter(|n| !wanted.contains(n) && !n.is_ipv6_link_local())
        .copied()
        .collect()
}

/// The wanted addresses not there yet, in request order.
fn addresses_to_add(existing: &[IpNet], wanted: &[IpNet]) -> Vec<IpNet> {
    wanted
        .iter()
        .filter(|n| !existing.contains(n))
        .copied()
        .collect()
}

fn to_interface(link: &Link, addrs: &[Addr]) -> Interface {
    let mut iface = Interface::new();
    iface.name.clone_from(&link.name);
    iface.hw_addr = parse::format_mac(&link.mac);
    iface.mtu = link.mtu;
    iface.up = link.up;
    iface.addresses = addrs
        .iter()
        .filter(|a| a.index == link.index)
        .map(|a| {
            let mut ip = IpAddress::new();
            ip.address = a.net.addr.to_string();
            ip.prefix_len = u32::from(a.net.prefix_len);
            ip
        })
        .collect();
    iface
}

/// `ListInterfaces`: every link but loopback, in index order.
pub(super) async fn list(nl: &Netlink) -> Result<Vec<Interface>> {
    let mut links = links(nl).await?;
    links.sort_by_key(|l| l.index);
    let addrs = addresses(nl).await?;
    Ok(links
        .iter()
        .filter(|l| !l.loopback)
        .map(|l| to_interface(l, &addrs))
        .collect())
}

/// Looks for the non-loopback link with `mac` until `wait` has passed.
async fn wait_for_mac(nl: &Netlink, mac: &Mac, wait: Duration) -> Result<Link> {
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        if let Some(link) = links(nl)
            .await?
            .into_iter()
            .find(|l| !l.loopback && l.mac == mac)
        {
            return Ok(link);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(AgentError::NotFound(format!(
                "no network interface with MAC {} appeared within {wait:?}",
                parse::format_mac(mac)
            )));
        }
        if !logged {
            tracing::info!(mac = %parse::format_mac(mac), "waiting for the NIC to appear");
            logged = true;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

async fn set_link(nl: &Netlink, msg: LinkMessage, what: String) -> Result<()> {
    nl.handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_error(what, e))
}

/// Renames a link, which the kernel only allows while it is down; it is
/// brought back up afterwards if `up_after`.
async fn rename(nl: &Netlink, link: &Link, to: &str, up_after: bool) -> Result<()> {
    if link.up {
        let msg = LinkUnspec::new_with_index(link.index).down().build();
        set_link(nl, msg, format!("setting {} down", link.name)).await?;
    }
    let msg = LinkUnspec::new_with_index(link.index)
        .name(to.to_string())
        .build();
    set_link(nl, msg, format!("renaming {} to {to}", link.name)).await?;
    if up_after {
        let msg = LinkUnspec::new_with_index(link.index).up().build();
        set_link(nl, msg, format!("setting {to} up")).await?;
    }
    Ok(())
}

/// The kernel names virtio NICs in probe order, which need not match the
/// pod's names: if another link holds the wanted name, it is moved to a
/// temporary one (its own `UpdateInterface` renames it later).
async fn free_name(nl: &Netlink, name: &str, keep: u32) -> Result<()> {
    let holder = links(nl)
        .await?
        .into_iter()
        .find(|l| l.name == name && l.index != keep && !l.loopback);
    if let Some(holder) = holder {
        let tmp = format!("ktmp{}", holder.index);
        tracing::info!(name, moved_to = %tmp, "moving another link out of the way");
        rename(nl, &holder, &tmp, holder.up).await?;
    }
    Ok(())
}

/// Makes the link's addresses exactly `wanted` (besides IPv6 link-local).
async fn sync_addresses(nl: &Netlink, index: u32, name: &str, wanted: &[IpNet]) -> Result<()> {
    let current: Vec<Addr> = addresses(nl)
        .await?
        .into_iter()
        .filter(|a| a.index == index)
        .collect();
    let nets: Vec<IpNet> = current.iter().map(|a| a.net).collect();
    for stale in addresses_to_delete(&nets, wanted) {
        let Some(a) = current.iter().find(|a| a.net == stale) else {
            continue;
        };
        match nl.handle.address().del(a.msg.clone()).execute().await {
            // Deleting an IPv4 primary also drops its secondaries.
            Err(e) if errno_of(&e) == Some(Errno::EADDRNOTAVAIL) => {}
            r => r.map_err(|e| nl_error(format!("deleting {stale} from {name}"), e))?,
        }
    }
    // Look again: a deleted primary may have taken wanted secondaries along.
    let nets: Vec<IpNet> = addresses(nl)
        .await?
        .into_iter()
        .filter(|a| a.index == index)
        .map(|a| a.net)
        .collect();
    for net in addresses_to_add(&nets, wanted) {
        let mut req = nl.handle.address().add(index, net.addr, net.prefix_len);
        if net.addr.is_ipv6() {
            // No duplicate address detection: the address is the pod's and
            // must be usable at once, not tentative for a second or more.
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| nl_error(format!("adding {net} to {name}"), e))?;
    }
    Ok(())
}

/// `UpdateInterface` on a validated request.
pub(super) async fn update(
    nl: &Netlink,
    spec: &InterfaceSpec,
    wait: Duration,
) -> Result<Interface> {
    let link = wait_for_mac(nl, &spec.mac, wait).await?;
    if link.name != spec.name {
        free_name(nl, &spec.name, link.index).await?;
        rename(nl, &link, &spec.name, false).await?;
    }
    if let Some(mtu) = spec.mtu.filter(|m| *m != link.mtu) {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        set_link(
            nl,
            msg,
            format!("setting the MTU of {} to {mtu}", spec.name),
        )
        .await?;
    }
    sync_addresses(nl, link.index, &spec.name, &spec.addresses).await?;
    let msg = LinkUnspec::new_with_index(link.index).up().build();
    set_link(nl, msg, format!("setting {} up", spec.name)).await?;

    let link = links(nl)
        .await?
        .into_iter()
        .find(|l| l.index == link.index)
        .ok_or_else(|| AgentError::NotFound(format!("{} vanished while configured", spec.name)))?;
    Ok(to_interface(&link, &addresses(nl).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter()
            .map(|c| parse::parse_cidr("t", c).expect("test CIDR"))
            .collect()
    }

    #[test]
    fn address_diff() {
        let existing = nets(&["10.1.2.3/16", "10.9.9.9/8", "fe80::1/64", "fd00::3/64"]);
        let wanted = nets(&["10.1.2.3/24", "fd00::3/64"]);
        assert_eq!(
            addresses_to_delete(&existing, &wanted),
            nets(&["10.1.2.3/16", "10.9.9.9/8"])
        );
        assert_eq!(addresses_to_add(&existing, &wanted), nets(&["10.1.2.3/24"]));
        // A listed link-local address is kept and added like any other.
        let wanted = nets(&["fe80::2/64"]);
        assert_eq!(
            addresses_to_delete(&existing, &wanted),
            nets(&["10.1.2.3/16", "10.9.9.9/8", "fd00::3/64"])
        );
        assert_eq!(addresses_to_add(&existing, &wanted), wanted);
        assert!(addresses_to_add(&wanted, &wanted).is_empty());
    }

    #[test]
    fn device_names_resolve_to_managed_links() {
        let link = |index, name: &str, loopback| Link {
            index,
            name: name.into(),
            mac: vec![],
            mtu: 1500,
            up: true,
            loopback,
        };
        let links = [link(1, "lo", true), link(2, "eth0", false)];
        assert_eq!(device_index(&links, "eth0", "f").expect("found"), 2);
        for name in ["lo", "eth9"] {
            let e = device_index(&links, name, "routes[3].device").expect_err(name);
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(e.to_string().contains("routes[3].device"), "{e}");
        }
    }
}
