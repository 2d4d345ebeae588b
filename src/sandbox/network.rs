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

/// Opens the pod's network namespace for QEMU to join, refusing the node's
/// own: CNI's interfaces are moved into the VM, so taking the host's netns
/// would redirect the node's NICs into a tap. The path is compared by what
/// it is (device and inode of the namespace), not by how it is spelled:
/// `/proc/1/ns/net`, `/proc/self/ns/net` and a bind mount of either are
/// all the same namespace.
pub fn open_pod_netns(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).map_err(|e| Error::InvalidArgument {
        field: "linux.namespaces",
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("the network namespace {} does not exist", path.display())
            }
            _ => format!("cannot open the network namespace {}: {e}", path.display()),
        },
    })?;
    let meta = file.metadata().map_err(|e| Error::InvalidArgument {
        field: "linux.namespaces",
        reason: format!("cannot stat the network namespace {}: {e}", path.display()),
    })?;
    for host in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        let Ok(h) = std::fs::metadata(host) else {
            continue;
        };
        if (h.dev(), h.ino()) == (meta.dev(), meta.ino()) {
            return Err(Error::InvalidArgument {
                field: "linux.namespaces",
                reason: format!(
                    "the network namespace {} is the node's own ({host}); a kata pod needs \
                     a namespace of its own: run hostNetwork pods with a runtime class \
                     other than kata",
                    path.display()
                ),
            });
        }
    }
    Ok(file)
}

/// Attaches the interfaces of `netns` to new taps (off the async runtime:
/// it enters the namespace on a thread of its own), each with a queue pair
/// per boot vCPU (`vm::qemu::nic::queue_pairs`).
pub async fn attach(sandbox_id: &str, netns: &Path, vcpus: u32) -> Result<(PodNetwork, Vec<Nic>)> {
    let path = netns.to_path_buf();
    let vhost_net = Path::new(crate::network::VHOST_NET_DEVICE).exists();
    let queues = crate::vm::qemu::nic::queue_pairs(vcpus);
    let (net, nics) =
        tokio::task::spawn_blocking(move || PodNetwork::attach(&path, vhost_net, queues))
            .await
            .map_err(|e| Error::Internal(format!("the network attach thread failed: {e}")))??;
    for e in &net.endpoints {
        tracing::info!(sandbox_id, netns = %netns.display(), interface = %e.name, mac = %e.mac,
            mtu = e.mtu, tap = %e.tap, addresses = ?e.addresses, vhost_net, queues, "pod interface attached");
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

    /// Issue 14: `pod_netns` took any absolute path, the host's netns too.
    /// The shim runs in the node's netns, so its own is the host's; a bind
    /// mount of it (how CNI names namespaces) is the same namespace.
    #[test]
    fn the_hosts_network_namespace_is_refused_however_it_is_named() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to bind-mount a namespace: run `make test` as root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let bound = dir.path().join("hostns");
        std::fs::write(&bound, b"").expect("mount point");
        nix::mount::mount(
            Some("/proc/self/ns/net"),
            &bound,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind the host netns");
        let bound_result = open_pod_netns(&bound);
        nix::mount::umount(&bound).expect("umount");
        for (name, result) in [
            (
                "/proc/self/ns/net",
                open_pod_netns(Path::new("/proc/self/ns/net")),
            ),
            (
                "/proc/thread-self/ns/net",
                open_pod_netns(Path::new("/proc/thread-self/ns/net")),
            ),
            ("a bind mount of it", bound_result),
        ] {
            let msg = result.expect_err(name).to_string();
            assert!(msg.contains("the node's own"), "{name}: {msg}");
            assert!(msg.contains("linux.namespaces"), "{name}: {msg}");
        }
        let e = open_pod_netns(Path::new("/nonexistent/netns")).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    /// A namespace of its own (made by a thread that unshares, as CNI's
    /// would be) is accepted. Needs root, which the test suite has.
    #[test]
    fn a_network_namespace_of_its_own_is_accepted() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to make a network namespace: run `make test` as root"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { nix::libc::gettid() };
            tx.send(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
                .expect("send");
            // Keep the thread, and so its namespace, until the check is done.
            let _ = done_rx.recv();
        });
        let path = rx.recv().expect("path");
        let opened = open_pod_netns(Path::new(&path));
        done_tx.send(()).expect("done");
        t.join().expect("thread");
        opened.expect("a namespace of its own");
    }

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
