//! Which of the pod's namespaces a container shares, read from the host
//! spec's namespace paths.
//!
//! CRI-O and containerd express "this container shares the pod's pid, ipc
//! or uts namespace" (CRI's NamespaceMode POD; Kubernetes
//! `shareProcessNamespace`) as a path in the app container's spec: the
//! infra container's pinned namespace file (CRI-O's `/var/run/ipcns/<id>`)
//! or `/proc/<task pid>/ns/<type>` of the sandbox task. Those are host
//! files and mean nothing in the guest; what they mean is "join the
//! sandbox container's", which the agent does from its init. A path that
//! names neither this pod's namespaces nor its task is refused: it would be
//! another pod's, or the node's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::oci::without_var_run;

/// Namespace types a container can share with the sandbox container.
const SHAREABLE: [&str; 3] = ["pid", "ipc", "uts"];
/// What the spec spells `network` is `net` under `/proc/<pid>/ns/`.
fn proc_name(typ: &str) -> &str {
    if typ == "network" { "net" } else { typ }
}

/// The namespace paths of the pod's sandbox (infra) container's spec, by
/// type, as the app containers' specs repeat them.
#[derive(Debug, Default, Clone)]
pub struct PodNamespaces {
    paths: BTreeMap<String, PathBuf>,
}

fn entries(spec: &Value) -> Result<Vec<(String, Option<PathBuf>)>> {
    let Some(nss) = spec.pointer("/linux/namespaces") else {
        return Ok(Vec::new());
    };
    let nss = nss.as_array().ok_or_else(|| Error::InvalidArgument {
        field: "linux.namespaces",
        reason: "must be an array".into(),
    })?;
    nss.iter()
        .enumerate()
        .map(|(i, ns)| {
            let typ =
                ns.get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::InvalidArgument {
                        field: "linux.namespaces",
                        reason: format!("entry {i} has no type"),
                    })?;
            let path = match ns.get("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.is_empty() => None,
                Some(Value::String(p)) if Path::new(p).is_absolute() => Some(PathBuf::from(p)),
                Some(other) => {
                    return Err(Error::InvalidArgument {
                        field: "linux.namespaces",
                        reason: format!("the {typ} namespace path {other} is not an absolute path"),
                    });
                }
            };
            Ok((typ.to_string(), path))
        })
        .collect()
}

/// The pod asks for a namespace of the node: a VM pod cannot have it.
fn host_namespace(typ: &str, what: &str) -> Error {
    Error::InvalidArgument {
        field: "linux.namespaces",
        reason: format!(
            "the spec has no {typ} namespace, which shares the node's ({what}); a kata pod \
             runs in its own VM and cannot share the node's namespaces: run such pods with \
             a runtime class other than kata"
        ),
    }
}

/// The sandbox container's namespaces: its paths are remembered for the
/// app containers; a pod without its own pid or ipc namespace (hostPID,
/// hostIPC) is refused.
pub fn of_sandbox(spec: &Value) -> Result<PodNamespaces> {
    let entries = entries(spec)?;
    let has = |t: &str| entries.iter().any(|(typ, _)| typ == t);
    if !has("pid") {
        return Err(host_namespace("pid", "hostPID"));
    }
    if !has("ipc") {
        return Err(host_namespace("ipc", "hostIPC"));
    }
    let paths = entries
        .into_iter()
        .filter_map(|(t, p)| p.map(|p| (t, without_var_run(&p))))
        .collect();
    Ok(PodNamespaces { paths })
}

/// The namespace types an app container joins from the sandbox container,
/// after checking that each of its namespace paths names this pod (its
/// sandbox container's pinned file, or `/proc/<task_pid>/ns/<type>`).
pub fn app_joins(spec: &Value, pod: &PodNamespaces, task_pid: u32) -> Result<Vec<String>> {
    let entries = entries(spec)?;
    let has = |t: &str| entries.iter().any(|(typ, _)| typ == t);
    if !has("pid") {
        return Err(host_namespace("pid", "hostPID"));
    }
    if !has("ipc") {
        return Err(host_namespace("ipc", "hostIPC"));
    }
    let mut joins = Vec::new();
    for (typ, path) in entries {
        let Some(path) = path else { continue };
        let path = without_var_run(&path);
        let of_task = PathBuf::from(format!("/proc/{task_pid}/ns/{}", proc_name(&typ)));
        let pods = pod.paths.get(&typ);
        if path != of_task && pods != Some(&path) {
            return Err(Error::InvalidArgument {
                field: "linux.namespaces",
                reason: format!(
                    "the {typ} namespace path {} is not this pod's ({}): a container can only \
                     join the namespaces of its own pod",
                    path.display(),
                    pods.map(|p| p.display().to_string())
                        .unwrap_or_else(|| of_task.display().to_string())
                ),
            });
        }
        match typ.as_str() {
            t if SHAREABLE.contains(&t) => joins.push(typ),
            // The guest has one network namespace, the pod's.
            "network" => {}
            other => {
                return Err(Error::InvalidArgument {
                    field: "linux.namespaces",
                    reason: format!(
                        "a {other} namespace cannot be shared between the containers of a kata pod"
                    ),
                });
            }
        }
    }
    Ok(joins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(nss: Value) -> Value {
        json!({"linux": {"namespaces": nss}})
    }

    fn crio_infra() -> Value {
        spec(json!([
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/abc"},
            {"type": "ipc", "path": "/var/run/ipcns/abc"},
            {"type": "uts", "path": "/var/run/utsns/abc"},
            {"type": "mount"}
        ]))
    }

    #[test]
    fn crio_pod_mode_joins_pid_ipc_uts() {
        let pod = of_sandbox(&crio_infra()).expect("infra");
        let app = spec(json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "network", "path": "/var/run/netns/abc"},
            {"type": "ipc", "path": "/var/run/ipcns/abc"},
            {"type": "uts", "path": "/run/utsns/abc"},
            {"type": "mount"}
        ]));
        assert_eq!(
            app_joins(&app, &pod, 4242).expect("app"),
            ["pid", "ipc", "uts"]
        );
        // CONTAINER mode: its own pid namespace.
        let app = spec(json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/var/run/ipcns/abc"},
            {"type": "mount"}
        ]));
        assert_eq!(app_joins(&app, &pod, 4242).expect("app"), ["ipc"]);
    }

    #[test]
    fn containerd_pod_mode_names_the_task() {
        let pod = of_sandbox(&spec(json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "mount"}
        ])))
        .expect("sandbox");
        let app = spec(json!([
            {"type": "pid", "path": "/proc/77/ns/pid"},
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "network", "path": "/proc/77/ns/net"},
            {"type": "mount"}
        ]));
        assert_eq!(
            app_joins(&app, &pod, 77).expect("app"),
            ["pid", "ipc", "uts"]
        );
    }

    #[test]
    fn foreign_and_host_namespaces_are_refused() {
        let pod = of_sandbox(&crio_infra()).expect("infra");
        for (app, what) in [
            // Another process's pid namespace (another pod's task, the node's init).
            (
                spec(json!([{"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "ipc"}])),
                "/proc/1/ns/pid",
            ),
            // Another pod's pinned ipc namespace.
            (
                spec(json!([{"type": "pid"}, {"type": "ipc", "path": "/var/run/ipcns/other"}])),
                "ipcns/other",
            ),
            // A mount namespace path is never shared.
            (
                spec(
                    json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount", "path": "/proc/4242/ns/mnt"}]),
                ),
                "mount",
            ),
            // hostPID and hostIPC.
            (spec(json!([{"type": "ipc"}])), "hostPID"),
            (spec(json!([{"type": "pid"}])), "hostIPC"),
            (
                spec(json!([{"type": "pid", "path": "relative"}, {"type": "ipc"}])),
                "absolute",
            ),
        ] {
            let e = app_joins(&app, &pod, 4242).expect_err(what);
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        field: "linux.namespaces",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        let e =
            of_sandbox(&spec(json!([{"type": "ipc"}, {"type": "network"}]))).expect_err("hostPID");
        assert!(e.to_string().contains("hostPID"), "{e}");
    }
}
