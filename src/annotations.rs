//! Which pod a container belongs to, read from the grouping annotations of
//! its bundle's `config.json`: containerd's CRI keys, CRI-O's keys and the
//! old dockershim keys. `start` uses this to route every container of a pod
//! to the one shim (and VM) of its sandbox.

use std::collections::BTreeMap;
use std::path::Path;

use crate::ids::{self, InvalidId};
use crate::oci::{BundleError, read_bundle_spec};

/// One source of grouping annotations: its type key, its sandbox-id key and
/// the type value that names the sandbox (infra) container.
struct KeySet {
    container_type: &'static str,
    sandbox_id: &'static str,
    sandbox_value: &'static str,
}

/// Looked at in this order; the first type key present decides.
const KEY_SETS: [KeySet; 3] = [
    KeySet {
        container_type: "io.kubernetes.cri.container-type",
        sandbox_id: "io.kubernetes.cri.sandbox-id",
        sandbox_value: "sandbox",
    },
    KeySet {
        container_type: "io.kubernetes.cri-o.ContainerType",
        sandbox_id: "io.kubernetes.cri-o.SandboxID",
        sandbox_value: "sandbox",
    },
    KeySet {
        container_type: "io.kubernetes.docker.type",
        sandbox_id: "io.kubernetes.sandbox.id",
        sandbox_value: "podsandbox",
    },
];

const CONTAINER_VALUE: &str = "container";
const CRIO_PREFIX: &str = "io.kubernetes.cri-o.";
const MANAGER_KEY: &str = "io.container.manager";

/// Errors reading a bundle's annotations or deriving its sandbox.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("annotation {key}: unknown container type {value:?}")]
    UnknownType { key: &'static str, value: String },
    #[error("annotation {key} is missing for container {container_id}")]
    MissingSandboxId {
        key: &'static str,
        container_id: String,
    },
    #[error("sandbox id from {key}")]
    InvalidId {
        key: &'static str,
        #[source]
        source: InvalidId,
    },
}

impl AnnotationError {
    /// The gRPC code a caller would see for this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            AnnotationError::Bundle(BundleError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ttrpc::Code::NOT_FOUND
            }
            AnnotationError::Bundle(BundleError::Read { .. }) => ttrpc::Code::INTERNAL,
            AnnotationError::Bundle(BundleError::Parse { .. })
            | AnnotationError::UnknownType { .. }
            | AnnotationError::MissingSandboxId { .. }
            | AnnotationError::InvalidId { .. } => ttrpc::Code::INVALID_ARGUMENT,
        }
    }
}

/// Whether a container is its pod's sandbox (infra) container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Sandbox,
    Container,
}

/// A container's place in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: ContainerKind,
    pub sandbox_id: String,
}

/// Reads only `annotations` of `<bundle>/config.json`, so that a spec the
/// task service would reject later still groups correctly here. A missing
/// or non-object `annotations` field is empty; non-string values are
/// skipped (grouping keys are strings).
pub fn read_bundle_annotations(bundle: &Path) -> Result<BTreeMap<String, String>, AnnotationError> {
    Ok(spec_annotations(&read_bundle_spec(bundle)?))
}

/// The string annotations of a parsed spec (see [`read_bundle_annotations`]).
pub fn spec_annotations(spec: &serde_json::Value) -> BTreeMap<String, String> {
    spec.get("annotations")
        .and_then(|a| a.as_object())
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The kind and sandbox of `container_id`. Without any type annotation the
/// container is a pod of its own (plain `ctr run`), so it is its own sandbox.
pub fn identity(
    container_id: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Identity, AnnotationError> {
    let Some((keys, value)) = KEY_SETS
        .iter()
        .find_map(|k| annotations.get(k.container_type).map(|v| (k, v.as_str())))
    else {
        return sandbox_identity(container_id, "-id");
    };
    if value == keys.sandbox_value {
        return sandbox_identity(container_id, "-id");
    }
    if value != CONTAINER_VALUE {
        return Err(AnnotationError::UnknownType {
            key: keys.container_type,
            value: value.to_string(),
        });
    }
    // The id key of the same runtime first, then any other: a spec may be
    // edited by tooling that only knows one set of keys.
    let id_key = std::iter::once(keys)
        .chain(KEY_SETS.iter())
        .find(|k| annotations.contains_key(k.sandbox_id))
        .map(|k| k.sandbox_id);
    let Some(key) = id_key else {
        return Err(AnnotationError::MissingSandboxId {
            key: keys.sandbox_id,
            container_id: container_id.to_string(),
        });
    };
    let sandbox_id = annotations[key].clone();
    ids::validate(&sandbox_id).map_err(|source| AnnotationError::InvalidId { key, source })?;
    Ok(Identity {
        kind: ContainerKind::Container,
        sandbox_id,
    })
}

fn sandbox_identity(container_id: &str, key: &'static str) -> Result<Identity, AnnotationError> {
    ids::validate(container_id).map_err(|source| AnnotationError::InvalidId { key, source })?;
    Ok(Identity {
        kind: ContainerKind::Sandbox,
        sandbox_id: container_id.to_string(),
    })
}

/// Whether CRI-O manages the container (it wants an `oom` file in the
/// bundle instead of events, for one).
pub fn is_crio(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(MANAGER_KEY).map(String::as_str) == Some("cri-o")
        || annotations.keys().any(|k| k.starts_with(CRIO_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SB: &str = "5f0c9a1e2b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const CTR: &str = "9e8d7c6b5a49382716051f2e3d4c5b6a79881726354453627180f9e8d7c6b5a4";

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn containerd_sandbox_and_container() {
        let sandbox = ann(&[
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-id", SB),
            ("io.kubernetes.cri.sandbox-name", "web"),
        ]);
        let id = identity(SB, &sandbox).expect("sandbox");
        assert_eq!(id.kind, ContainerKind::Sandbox);
        assert_eq!(id.sandbox_id, SB);
        assert!(!is_crio(&sandbox));

        let container = ann(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", SB),
            ("io.kubernetes.cri.container-name", "app"),
        ]);
        let id = identity(CTR, &container).expect("container");
        assert_eq!(
            id,
            Identity {
                kind: ContainerKind::Container,
                sandbox_id: SB.into()
            }
        );
    }

    #[test]
    fn crio_sandbox_and_container() {
        let sandbox = ann(&[
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
            ("io.kubernetes.cri-o.SandboxID", SB),
            ("io.kubernetes.cri-o.ContainerID", SB),
            ("io.container.manager", "cri-o"),
        ]);
        let id = identity(SB, &sandbox).expect("sandbox");
        assert_eq!(id.kind, ContainerKind::Sandbox);
        assert_eq!(id.sandbox_id, SB);
        assert!(is_crio(&sandbox));

        let container = ann(&[
            ("io.kubernetes.cri-o.ContainerType", "container"),
            ("io.kubernetes.cri-o.SandboxID", SB),
        ]);
        let id = identity(CTR, &container).expect("container");
        assert_eq!(id.kind, ContainerKind::Container);
        assert_eq!(id.sandbox_id, SB);
        assert!(is_crio(&container));
        assert!(is_crio(&ann(&[("io.container.manager", "cri-o")])));
    }

    #[test]
    fn dockershim_podsandbox_is_a_sandbox() {
        let a = ann(&[("io.kubernetes.docker.type", "podsandbox")]);
        assert_eq!(
            identity(SB, &a).expect("sandbox").kind,
            ContainerKind::Sandbox
        );
        let a = ann(&[
            ("io.kubernetes.docker.type", "container"),
            ("io.kubernetes.sandbox.id", SB),
        ]);
        assert_eq!(identity(CTR, &a).expect("container").sandbox_id, SB);
    }

    #[test]
    fn untyped_is_its_own_sandbox() {
        let a = ann(&[("org.opencontainers.image.ref.name", "busybox")]);
        let id = identity("plain-ctr", &a).expect("untyped");
        assert_eq!(id.kind, ContainerKind::Sandbox);
        assert_eq!(id.sandbox_id, "plain-ctr");
        assert!(!is_crio(&a));
    }

    #[test]
    fn bad_annotations_name_the_key() {
        let e = identity(
            CTR,
            &ann(&[("io.kubernetes.cri-o.ContainerType", "container")]),
        )
        .expect_err("no sandbox id");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            e.to_string().contains("io.kubernetes.cri-o.SandboxID"),
            "{e}"
        );

        let e = identity(CTR, &ann(&[("io.kubernetes.cri.container-type", "pod")]))
            .expect_err("unknown type");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            e.to_string().contains("io.kubernetes.cri.container-type"),
            "{e}"
        );

        let e = identity(
            CTR,
            &ann(&[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.sandbox-id", "../../etc"),
            ]),
        )
        .expect_err("path in id");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            e.to_string().contains("io.kubernetes.cri.sandbox-id"),
            "{e}"
        );

        let e = identity("a/b", &BTreeMap::new()).expect_err("bad own id");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn containerd_keys_win_over_crio_keys() {
        let a = ann(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", SB),
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
            ("io.kubernetes.cri-o.SandboxID", CTR),
        ]);
        let id = identity(CTR, &a).expect("container");
        assert_eq!(id.kind, ContainerKind::Container);
        assert_eq!(id.sandbox_id, SB);
    }

    #[test]
    fn reads_only_annotations_from_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.json");

        std::fs::write(
            &cfg,
            format!(
                r#"{{"ociVersion":"1.0.2","process":{{"args":["/pause"],"unknown":1}},
                   "annotations":{{"io.kubernetes.cri-o.ContainerType":"container",
                   "io.kubernetes.cri-o.SandboxID":"{SB}","odd":7}}}}"#
            ),
        )
        .expect("write");
        let a = read_bundle_annotations(dir.path()).expect("read");
        assert_eq!(a.len(), 2);
        assert_eq!(a["io.kubernetes.cri-o.SandboxID"], SB);

        std::fs::write(&cfg, r#"{"ociVersion":"1.0.2"}"#).expect("write");
        assert!(
            read_bundle_annotations(dir.path())
                .expect("none")
                .is_empty()
        );
        std::fs::write(&cfg, r#"{"annotations":null}"#).expect("write");
        assert!(
            read_bundle_annotations(dir.path())
                .expect("null")
                .is_empty()
        );

        std::fs::write(&cfg, "{not json").expect("write");
        let e = read_bundle_annotations(dir.path()).expect_err("garbage");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("config.json"), "{e}");

        std::fs::remove_file(&cfg).expect("rm");
        let e = read_bundle_annotations(dir.path()).expect_err("missing");
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        assert!(e.to_string().contains(&cfg.display().to_string()), "{e}");
    }
}
