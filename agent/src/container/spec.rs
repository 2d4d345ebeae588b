//! Parsing and rewriting the OCI spec a CreateContainer/ExecProcess carries.
//!
//! Parsing goes through `serde_path_to_error` so that a malformed spec is
//! refused with the JSON path of the offending field. The rewrites adapt a
//! host-side spec to the guest: the rootfs and bind sources must resolve,
//! symlink-safely, inside the share or a storage; the cgroup goes under the
//! pod's cgroup; the network namespace is dropped (the guest has one netns,
//! the pod's); namespaces the pod shares are joined from the sandbox
//! container's init. A
//! terminal stays in the spec: libcontainer opens it inside the container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::de::DeserializeOwned;

use crate::error::{AgentError, Result};
use crate::storage::{self, Resolve};

/// Deserializes JSON, naming the path of the first bad field on error.
fn parse_json<T: DeserializeOwned>(bytes: &[u8], field: &'static str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        AgentError::InvalidArgument {
            field,
            reason: format!("at `{path}`: {}", e.inner()),
        }
    })
}

/// Parses `oci_spec_json`.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec> {
    let spec: Spec = parse_json(bytes, "oci_spec_json")?;
    if spec.process().is_none() {
        return Err(AgentError::InvalidArgument {
            field: "oci_spec_json",
            reason: "at `process`: a container needs a process".into(),
        });
    }
    Ok(spec)
}

/// `noNewPrivileges: false` is the OCI default, the same as leaving it
/// out (CRI-O and containerd omit it). libcontainer 0.7 reads an explicit
/// `false` as "set": it then loads the seccomp filter after dropping
/// capabilities, which fails without CAP_SYS_ADMIN. Spell it the common way.
fn normalize_process(p: &mut Process) {
    if p.no_new_privileges() == Some(false) {
        p.set_no_new_privileges(None);
    }
}

/// Parses `process_json` of ExecProcess.
pub fn parse_process(bytes: &[u8]) -> Result<Process> {
    let mut p: Process = parse_json(bytes, "process_json")?;
    normalize_process(&mut p);
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::InvalidArgument {
            field: "process_json",
            reason: "at `args`: must not be empty".into(),
        });
    }
    Ok(p)
}

/// What the rewrites need to know about the pod.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The sandbox id, for the cgroup path.
    pub sandbox_id: &'a str,
    /// The container id.
    pub container_id: &'a str,
    /// Directories whose content a spec may name: the share, storage mount
    /// points, the pod's shm.
    pub allowed_roots: &'a [PathBuf],
    /// Namespaces joined from the sandbox container's init
    /// (`/proc/<pid>/ns/<type>`) instead of made new.
    pub joins: Vec<(LinuxNamespaceType, PathBuf)>,
}

fn invalid(field: &'static str, reason: String) -> AgentError {
    AgentError::InvalidArgument { field, reason }
}

/// Resolves `path` beneath the allowed root it lexically lies in.
pub fn resolve_allowed(path: &Path, roots: &[PathBuf], field: &'static str) -> Result<PathBuf> {
    for root in roots {
        if let Some(rel) = storage::relative_to(root, path) {
            return storage::resolve(root, &rel, Resolve::Beneath).map_err(|e| {
                invalid(
                    field,
                    format!(
                        "{} does not resolve inside {}: {e}",
                        path.display(),
                        root.display()
                    ),
                )
            });
        }
    }
    Err(invalid(
        field,
        format!(
            "{} is not inside the share or a storage ({})",
            path.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Kernel filesystems a volume must not be redirected into by a symlink.
pub const PROTECTED: [&str; 2] = ["/proc", "/sys"];

/// Applies the guest rewrites; returns whether the process wants a terminal.
pub fn rewrite(spec: &mut Spec, ctx: &PodContext<'_>) -> Result<bool> {
    // Root: symlink-safe, inside an allowed root, then made canonical so
    // libcontainer's own canonicalize() is a no-op.
    let root = spec
        .root_mut()
        .as_mut()
        .ok_or_else(|| invalid("oci_spec_json", "at `root`: missing".into()))?;
    let real_root = resolve_allowed(root.path(), ctx.allowed_roots, "root.path")?;
    if !real_root.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", real_root.display()),
        ));
    }
    root.set_path(real_root.clone());

    if let Some(mounts) = spec.mounts_mut().as_mut() {
        for m in mounts.iter_mut() {
            let dest = m.destination().clone();
            if !dest.is_absolute()
                || dest
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(
                    "mounts.destination",
                    format!("{} must be absolute without `..`", dest.display()),
                ));
            }
            // libcontainer mounts through pathrs, scoped to the rootfs; on
            // top of that, refuse a symlink that redirects a volume into
            // /proc or /sys (the classic mount-over-procfs escape).
            let seen = storage::resolve_in_root_lenient(&real_root, &dest).map_err(|e| {
                invalid(
                    "mounts.destination",
                    format!("{} cannot be resolved in the rootfs: {e}", dest.display()),
                )
            })?;
            let redirected = PROTECTED
                .iter()
                .any(|p| seen.starts_with(p) && !dest.starts_with(p));
            if redirected {
                return Err(invalid(
                    "mounts.destination",
                    format!(
                        "{} resolves through a symlink to {}",
                        dest.display(),
                        seen.display()
                    ),
                ));
            }
            if is_bind(m) {
                let src = m.source().clone().ok_or_else(|| {
                    invalid(
                        "mounts.source",
                        format!("bind mount on {} has no source", dest.display()),
                    )
                })?;
                let real = resolve_allowed(&src, ctx.allowed_roots, "mounts.source")?;
                m.set_source(Some(real));
            }
        }
    }

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "/kata/{}/{}",
            ctx.sandbox_id, ctx.container_id
        ))));
    }
    if let Some(nss) = linux.namespaces_mut().as_mut() {
        // One netns in the guest: the pod's, which is the VM's.
        nss.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
        for (typ, path) in &ctx.joins {
            match nss.iter_mut().find(|ns| ns.typ() == *typ) {
                Some(ns) => {
                    ns.set_path(Some(path.clone()));
                }
                None => nss.push(
                    oci_spec::runtime::LinuxNamespaceBuilder::default()
                        .typ(*typ)
                        .path(path.clone())
                        .build()
                        .map_err(|e| invalid("linux.namespaces", e.to_string()))?,
                ),
            }
        }
    }

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| invalid("oci_spec_json", "at `process`: missing".into()))?;
    normalize_process(process);
    Ok(terminal(process))
}

/// Whether the process asked for a terminal. libcontainer opens it inside
/// the container and sends the agent its master (see `console`).
pub fn terminal(p: &Process) -> bool {
    p.terminal().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ttrpc::Code;

    fn spec_json(root: &Path, mounts: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": true, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/", "noNewPrivileges": false},
            "root": {"path": root},
            "mounts": mounts,
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "mount"}]}
        }))
        .expect("json")
    }

    fn ctx<'a>(roots: &'a [PathBuf], pidns: Option<PathBuf>) -> PodContext<'a> {
        PodContext {
            sandbox_id: "sb",
            container_id: "c1",
            allowed_roots: roots,
            joins: pidns
                .map(|p| vec![(LinuxNamespaceType::Pid, p)])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn malformed_spec_names_the_field() {
        let e = parse_spec(br#"{"ociVersion": "1.0.2", "process": {"args": 5}}"#)
            .expect_err("bad type");
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("process.args"), "{e}");
        let e = parse_process(br#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
            .expect_err("empty args");
        assert!(e.to_string().contains("args"), "{e}");
    }

    #[test]
    fn rewrites_for_the_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir_all(share.join("c1/rootfs/etc")).expect("mkdir");
        std::fs::create_dir_all(share.join("vol")).expect("mkdir");
        let share = std::fs::canonicalize(&share).expect("canon");
        let roots = vec![share.clone()];
        let mut spec = parse_spec(&spec_json(
            &share.join("c1/rootfs"),
            json!([{"destination": "/data", "type": "bind", "source": share.join("vol"), "options": ["rbind"]}]),
        ))
        .expect("parse");
        let terminal =
            rewrite(&mut spec, &ctx(&roots, Some("/proc/42/ns/pid".into()))).expect("rewrite");
        assert!(terminal);
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.terminal(), Some(true), "libcontainer opens the terminal");
        assert_eq!(
            p.no_new_privileges(),
            None,
            "an explicit false is the default"
        );
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kata/sb/c1"))
        );
        let nss = linux.namespaces().as_ref().expect("namespaces");
        assert!(nss.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        let pid = nss
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .expect("pid ns");
        assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/42/ns/pid")));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir_all(share.join("c1/rootfs/proc")).expect("mkdir");
        std::fs::create_dir_all(share.join("c2")).expect("mkdir");
        std::os::unix::fs::symlink("/", share.join("c2/rootfs")).expect("symlink");
        std::os::unix::fs::symlink("/proc", share.join("c1/rootfs/etc")).expect("symlink");
        let share = std::fs::canonicalize(&share).expect("canon");
        let roots = vec![share.clone()];
        let c = ctx(&roots, None);

        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A rootfs that is a symlink to the guest's /.
            (spec_json(&share.join("c2/rootfs"), json!([])), "root.path"),
            // A rootfs outside the share.
            (spec_json(Path::new("/"), json!([])), "root.path"),
            // `..` out of the share.
            (
                spec_json(&share.join("c1/../../../"), json!([])),
                "root.path",
            ),
            // A volume destination through /etc -> /proc.
            (
                spec_json(
                    &share.join("c1/rootfs"),
                    json!([{"destination": "/etc/sys", "type": "tmpfs", "source": "tmpfs"}]),
                ),
                "mounts.destination",
            ),
            // `..` in a destination.
            (
                spec_json(
                    &share.join("c1/rootfs"),
                    json!([{"destination": "/a/../../proc", "type": "tmpfs", "source": "tmpfs"}]),
                ),
                "mounts.destination",
            ),
            // A bind source outside the share.
            (
                spec_json(
                    &share.join("c1/rootfs"),
                    json!([{"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind"]}]),
                ),
                "mounts.source",
            ),
        ];
        for (json, field) in cases {
            let mut spec = parse_spec(&json).expect("parse");
            let e = rewrite(&mut spec, &c).expect_err(field);
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }
}
