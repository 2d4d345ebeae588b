//! The pod's network as the sandbox sees it: which network namespace the
//! sandbox spec asks for (refusing the node's own), attaching its CNI
//! interfaces to the VM, and mirroring them into the guest before any
//! container starts. The plumbing itself is `crate::network`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::agent_client::AgentClient;
use crate::error::{Error, Result};
use crate::network::{Nic, PodNetwork};

/// CRI-O's record of `hostNetwork: true`.
const CRIO_HOST_NETWORK: &str = "io.kubernetes.cri-o.HostNetwork";

/// What a sandbox spec asks for its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetns {
    /// A namespace CNI prepared (containerd and CRI-O): its interfaces go
    /// into the VM.
    Path(PathBuf),
    /// A new, empty namespace (`ctr run` without a CNI): the guest has
    /// only `lo`, as runc's container would.
    Private,
}

/// The sandbox spec's network choice. The node's own network (no network
/// namespace, or CRI-O's HostNetwork annotation) is refused: the pod's
/// processes run in a VM, which cannot share the host's interfaces.
pub fn pod_netns(
    spec: &serde_json::Value,
    annotations: &BTreeMap<String, String>,
) -> Result<PodNetns> {
    let host_network = || Error::InvalidArgument {
        field: "linux.namespaces",
        reason: "the pod asks for the node's network (hostNetwork); a kata pod runs in \
                 its own VM and cannot share the node's interfaces: run hostNetwork pods \
                 with a runtime class other than kata"
            .to_string(),
    };
    if annotations
        .get(CRIO_HOST_NETWORK)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(host_network());
    }
    let namespaces = spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(net) = namespaces
        .iter()
        .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
    else {
        return Err(host_network());
    };
    match net.get("path").and_then(|p| p.as_str()) {
        None | Some("") => Ok(PodNetns::Private),
        Some(p) if !Path::new(p).is_absolute() => Err(Error::InvalidArgument {
            field: "linux.namespaces",
            reason: format!("the network namespace path {p:?} is not absolute"),
        }),
        Some(p) => Ok(PodNetns::Path(PathBuf::from(p))),
    }
}

/// Attaches the interfaces of `netns` to new taps (off the async runtime:
/// it enters the namespace on a thread of its own).
pub async fn attach(sandbox_id: &str, netns: &Path) -> Result<(PodNetwork, Vec<Nic>)> {
    let path = netns.to_path_buf();
    let vhost_net = Path::new(crate::network::VHOST_NET_DEVICE).exists();
    let (net, nics) = tokio::task::spawn_blocking(move || PodNetwork::attach(&path, vhost_net))
        .await
        .map_err(|e| Error::Internal(format!("the network attach thread failed: {e}")))??;
    for e in &net.endpoints {
        tracing::info!(sandbox_id, netns = %netns.display(), interface = %e.name, mac = %e.mac,
            mtu = e.mtu, tap = %e.tap, addresses = ?e.addresses, vhost_net, "pod interface attached");
    }
    Ok((net, nics))
}

/// Sends the guest its interfaces, static neighbours and routes, in that
/// order (a route needs its interface, a gateway its neighbour entry).
pub async fn configure_guest(
    sandbox_id: &str,
    agent: &AgentClient,
    net: &PodNetwork,
) -> Result<()> {
    for iface in net.interfaces() {
        let name = iface.name.clone();
        let got = agent
            .update_interface(iface)
            .await
            .map_err(Error::agent(&name))?;
        tracing::info!(sandbox_id, interface = %got.name, mac = %got.hw_addr, mtu = got.mtu,
            addresses = ?got.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect::<Vec<_>>(),
            "guest interface configured");
    }
    let neighbors = net.neighbors();
    if !neighbors.is_empty() {
        agent
            .add_arp_neighbors(neighbors)
            .await
            .map_err(Error::agent(sandbox_id))?;
    }
    let got = agent
        .update_routes(net.routes())
        .await
        .map_err(Error::agent(sandbox_id))?;
    tracing::info!(sandbox_id, routes = got.len(), "guest routes configured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn choice(spec: serde_json::Value, annotations: &[(&str, &str)]) -> Result<PodNetns> {
        let a = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod_netns(&spec, &a)
    }

    fn field_of(r: Result<PodNetns>) -> (&'static str, String) {
        match r {
            Err(Error::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn the_spec_chooses_cni_netns_private_or_is_refused_for_host_network() {
        let cni = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}});
        assert_eq!(
            choice(cni.clone(), &[]).expect("cni"),
            PodNetns::Path("/var/run/netns/cni-1".into())
        );
        let private = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(choice(private, &[]).expect("private"), PodNetns::Private);
        let empty_path = json!({"linux": {"namespaces": [{"type": "network", "path": ""}]}});
        assert_eq!(choice(empty_path, &[]).expect("empty"), PodNetns::Private);

        let host = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}});
        let (field, reason) = field_of(choice(host, &[]));
        assert_eq!(field, "linux.namespaces");
        assert!(reason.contains("hostNetwork"), "{reason}");
        let (_, reason) = field_of(choice(json!({}), &[]));
        assert!(reason.contains("node's network"), "{reason}");
        let (_, reason) = field_of(choice(cni, &[(CRIO_HOST_NETWORK, "true")]));
        assert!(reason.contains("hostNetwork"), "{reason}");

        let relative = json!({"linux": {"namespaces": [{"type": "network", "path": "netns/x"}]}});
        let (field, reason) = field_of(choice(relative, &[]));
        assert_eq!(field, "linux.namespaces");
        assert!(reason.contains("not absolute"), "{reason}");
    }

    #[test]
    fn crio_host_network_false_is_not_a_refusal() {
        let cni = json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}});
        assert!(choice(cni, &[(CRIO_HOST_NETWORK, "false")]).is_ok());
    }
}
