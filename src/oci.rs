//! The OCI spec as the guest must see it: pure functions over the bundle's
//! `config.json` (kept as a `serde_json::Value` so that every field this
//! module does not name reaches the agent unchanged).
//!
//! The host-side work (mounting) lives in `storage`; this module decides
//! what each spec mount is ([`classify_mounts`]), and rewrites the spec once
//! the rootfs and volumes sit in the sandbox share ([`guest_spec`]): paths
//! become guest paths under `SHARED_FS_MOUNT`, and host-only parts (hooks,
//! host cgroup path, namespace paths, LSM labels, RDT) are dropped.

use std::path::{Component, Path, PathBuf};

use kata_agent_protocol::guest;
use serde_json::{Map, Value};
use ttrpc::Code;

/// A spec the guest cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
}

impl OciError {
    pub fn code(&self) -> Code {
        match self {
            OciError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OciError {
        OciError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Errors reading a bundle's `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads `<bundle>/config.json`, the one reader of a bundle's spec (the
/// task service and `start`'s grouping both come here).
pub fn read_bundle_spec(bundle: &Path) -> Result<serde_json::Value, BundleError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| BundleError::Parse { path, source })
}

/// Host directories whose binds mean nothing in the guest: the guest has its
/// own kernel filesystems and devices.
const HOST_ONLY: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Longest basename kept in a volume's share name (a name is at most 255 bytes).
const VOLUME_BASENAME_MAX: usize = 200;

/// How much of a volume is read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {
    /// The last `ro`/`rw` option says `rw`.
    No,
    /// `ro`: the bind itself; its submounts stay as they are, as in runc.
    Top,
    /// `ro` with `rro` (CRI's recursiveReadOnly): the submounts too.
    Recursive,
}

/// A bind mount whose host source is shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Position in the spec's `mounts`.
    pub index: usize,
    /// The host source, `/var/run/...` spelled `/run/...`.
    pub source: PathBuf,
    pub readonly: ReadOnly,
    /// `rbind`: submounts of the source come along.
    pub recursive: bool,
    /// Entry name under `<share>/<cid>/volumes/`.
    pub name: String,
}

/// What one spec mount is, from the host's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountClass {
    /// Not a bind (proc, tmpfs, sysfs...): the guest makes it itself.
    Guest,
    /// A bind onto `/dev/shm`: the pod's shm lives in the guest.
    PodShm,
    /// A bind of a host kernel filesystem or device: dropped.
    HostOnly { source: PathBuf },
    /// A host file or directory to bind into the share.
    Volume(Volume),
}

impl MountClass {
    /// The mount's source in the guest spec; `None` drops the mount.
    fn guest_source(&self, container_id: &str) -> Option<Option<String>> {
        match self {
            MountClass::Guest => Some(None),
            MountClass::PodShm => Some(Some(guest::SANDBOX_SHM.to_string())),
            MountClass::HostOnly { .. } => None,
            MountClass::Volume(v) => Some(Some(guest_volume_path(container_id, &v.name))),
        }
    }
}

/// `<SHARED_FS_MOUNT>/<cid>/rootfs`: the container's root in the guest.
pub fn guest_rootfs_path(container_id: &str) -> String {
    format!("{}/{container_id}/rootfs", guest::SHARED_FS_MOUNT)
}

/// `<SHARED_FS_MOUNT>/<cid>/volumes/<name>`: a volume's source in the guest.
pub fn guest_volume_path(container_id: &str, name: &str) -> String {
    format!("{}/{container_id}/volumes/{name}", guest::SHARED_FS_MOUNT)
}

/// `<index>-<basename>`: unique per container, and readable in listings.
pub fn volume_name(index: usize, source: &Path) -> String {
    let base = source
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".to_string());
    let mut cut = base.len().min(VOLUME_BASENAME_MAX);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{index}-{}", &base[..cut])
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, OciError> {
    v.as_object()
        .ok_or_else(|| OciError::invalid(field, "must be a JSON object"))
}

/// `root.path` of the bundle's spec.
pub fn root_path(spec: &Value) -> Result<&str, OciError> {
    let spec = object(spec, "spec")?;
    let root = spec
        .get("root")
        .ok_or_else(|| OciError::invalid("root", "missing"))?;
    match object(root, "root")?.get("path") {
        Some(Value::String(p)) if !p.is_empty() => Ok(p),
        Some(Value::String(_)) => Err(OciError::invalid("root.path", "is empty")),
        Some(_) => Err(OciError::invalid("root.path", "must be a string")),
        None => Err(OciError::invalid("root.path", "missing")),
    }
}

fn has_dotdot(p: &Path) -> bool {
    p.components().any(|c| c == Component::ParentDir)
}

/// `/var/run` is a symlink to `/run` on the distributions CRI-O runs on, and
/// CRI-O spells paths through it; sources are opened without following
/// symlinks, so the link is taken here, lexically.
pub fn without_var_run(p: &Path) -> PathBuf {
    match p.strip_prefix("/var/run") {
        Ok(rest) => Path::new("/run").join(rest),
        Err(_) => p.to_path_buf(),
    }
}

/// Classifies every entry of `mounts`, validating destinations and bind
/// sources; errors name `mounts[<i>]...`.
pub fn classify_mounts(spec: &Value) -> Result<Vec<MountClass>, OciError> {
    let mounts = match object(spec, "spec")?.get("mounts") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(OciError::invalid("mounts", "must be an array")),
    };
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| classify(i, m))
        .collect()
}

fn classify(i: usize, m: &Value) -> Result<MountClass, OciError> {
    let field = |name: &str| format!("mounts[{i}].{name}");
    let m = object(m, &format!("mounts[{i}]"))?;
    let dest = match m.get("destination") {
        Some(Value::String(d)) => Path::new(d),
        Some(_) => return Err(OciError::invalid(field("destination"), "must be a string")),
        None => return Err(OciError::invalid(field("destination"), "missing")),
    };
    if !dest.is_absolute() || has_dotdot(dest) {
        return Err(OciError::invalid(
            field("destination"),
            format!(
                "destination {} must be absolute without `..`",
                dest.display()
            ),
        ));
    }
    let options: Vec<&str> = match m.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(o)) => o
            .iter()
            .map(|o| {
                o.as_str()
                    .ok_or_else(|| OciError::invalid(field("options"), "must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(OciError::invalid(field("options"), "must be an array")),
    };
    let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
        || options.iter().any(|o| *o == "bind" || *o == "rbind");
    if !is_bind {
        return Ok(MountClass::Guest);
    }
    if dest == Path::new("/dev/shm") {
        return Ok(MountClass::PodShm);
    }
    let raw = match m.get("source") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) | None => {
            return Err(OciError::invalid(field("source"), "a bind needs a source"));
        }
        Some(_) => return Err(OciError::invalid(field("source"), "must be a string")),
    };
    let raw_path = Path::new(raw);
    if raw.contains('\0') {
        return Err(OciError::invalid(field("source"), "contains a NUL byte"));
    }
    if !raw_path.is_absolute() {
        return Err(OciError::invalid(
            field("source"),
            format!("source {raw} is not absolute"),
        ));
    }
    if has_dotdot(raw_path) {
        return Err(OciError::invalid(
            field("source"),
            format!("source {raw} has a `..` component"),
        ));
    }
    let source = without_var_run(raw_path);
    if HOST_ONLY.iter().any(|h| source.starts_with(h)) {
        return Ok(MountClass::HostOnly { source });
    }
    let ro = options
        .iter()
        .rev()
        .find(|o| **o == "ro" || **o == "rw")
        .is_some_and(|o| *o == "ro");
    let readonly = match (ro, options.contains(&"rro")) {
        (false, _) => ReadOnly::No,
        (true, false) => ReadOnly::Top,
        (true, true) => ReadOnly::Recursive,
    };
    Ok(MountClass::Volume(Volume {
        index: i,
        name: volume_name(i, &source),
        readonly,
        recursive: options.contains(&"rbind"),
        source,
    }))
}

/// The spec rewritten for the guest. `classes` is what [`classify_mounts`]
/// returned for this spec.
pub fn guest_spec(
    mut spec: Value,
    container_id: &str,
    classes: &[MountClass],
) -> Result<Vec<u8>, OciError> {
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| OciError::invalid("spec", "must be a JSON object"))?;
    match obj.get_mut("root").and_then(Value::as_object_mut) {
        Some(root) => {
            root.insert(
                "path".into(),
                Value::String(guest_rootfs_path(container_id)),
            );
        }
        None => return Err(OciError::invalid("root", "must be a JSON object")),
    }
    // Hooks are host programs; the host never runs them for a VM pod.
    obj.remove("hooks");
    if let Some(p) = obj.get_mut("process").and_then(Value::as_object_mut) {
        // LSM labels name host policy; the guest has none loaded.
        p.remove("selinuxLabel");
        p.remove("apparmorProfile");
    }
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The agent places the container under the pod's guest cgroup.
        linux.remove("cgroupsPath");
        linux.remove("mountLabel");
        linux.remove("intelRdt");
        if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            // A namespace path is a host file (a netns pinned by CNI, a
            // /proc/<pid>/ns link); the types stay so the guest still
            // isolates.
            for ns in nss.iter_mut().filter_map(Value::as_object_mut) {
                ns.remove("path");
            }
            // The guest runs cgroup v2, where runtimes give each container
            // its own cgroup namespace (as containerd and CRI-O do on v2
            // hosts), so /sys/fs/cgroup shows the container's own limits.
            // A v1 host's runtime leaves it out; the guest adds it.
            let has = |t: &str| nss.iter().any(|ns| ns["type"] == t);
            if has("mount") && !has("cgroup") {
                nss.push(serde_json::json!({"type": "cgroup"}));
            }
        }
    }
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        if mounts.len() != classes.len() {
            return Err(OciError::invalid(
                "mounts",
                format!(
                    "has {} entries but {} were classified",
                    mounts.len(),
                    classes.len()
                ),
            ));
        }
        let old = std::mem::take(mounts);
        for (mut m, class) in old.into_iter().zip(classes) {
            match class.guest_source(container_id) {
                None => continue,
                Some(None) => {}
                Some(Some(src)) => {
                    if let Some(m) = m.as_object_mut() {
                        m.insert("source".into(), Value::String(src));
                    }
                }
            }
            mounts.push(m);
        }
    } else if !classes.is_empty() {
        return Err(OciError::invalid("mounts", "missing but classified"));
    }
    Ok(serde_json::to_vec(&spec).expect("a JSON value always serializes"))
}

fn parse(bytes: &[u8], field: &str) -> Result<Value, OciError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| OciError::invalid(field, format!("not JSON: {e}")))?;
    object(&v, field)?;
    Ok(v)
}

/// The process of an Exec for the guest: `terminal` is the request's (CRI-O
/// copies the container's process, whose flag may disagree), LSM labels go.
pub fn guest_process(process_json: &[u8], terminal: bool) -> Result<Vec<u8>, OciError> {
    let mut v = parse(process_json, "spec")?;
    let p = v
        .as_object_mut()
        .expect("parse checked that the value is an object");
    match p.get("args") {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {}
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(OciError::invalid("spec.args", "must not be empty"));
        }
        Some(_) => return Err(OciError::invalid("spec.args", "must be strings")),
        None => return Err(OciError::invalid("spec.args", "missing")),
    }
    p.remove("selinuxLabel");
    p.remove("apparmorProfile");
    p.insert("terminal".into(), Value::Bool(terminal));
    Ok(serde_json::to_vec(&v).expect("a JSON value always serializes"))
}

/// The resources of an Update for the guest: checked, then passed through.
pub fn guest_resources(resources_json: &[u8]) -> Result<Vec<u8>, OciError> {
    parse(resources_json, "resources")?;
    Ok(resources_json.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bind(src: &str, dst: &str, opts: &[&str]) -> Value {
        json!({"destination": dst, "type": "bind", "source": src, "options": opts})
    }

    fn vol(i: usize, src: &str, ro: bool, rec: bool) -> MountClass {
        MountClass::Volume(Volume {
            index: i,
            source: PathBuf::from(src),
            readonly: if ro { ReadOnly::Top } else { ReadOnly::No },
            recursive: rec,
            name: volume_name(i, Path::new(src)),
        })
    }

    #[test]
    fn classifies_mounts() {
        let cases: Vec<(Value, MountClass)> = vec![
            (
                json!({"destination": "/proc", "type": "proc", "source": "proc"}),
                MountClass::Guest,
            ),
            (
                json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}),
                MountClass::Guest,
            ),
            (
                bind("/run/b/shm", "/dev/shm", &["rbind", "rw"]),
                MountClass::PodShm,
            ),
            (
                bind("/run/b/shm", "/dev/shm/", &["rbind"]),
                MountClass::PodShm,
            ),
            (
                bind("/run/b/hostname", "/etc/hostname", &["rbind", "ro"]),
                vol(0, "/run/b/hostname", true, true),
            ),
            (
                json!({"destination": "/data", "source": "/srv/data", "options": ["bind", "ro", "rw"]}),
                vol(0, "/srv/data", false, false),
            ),
            (
                bind("/var/run/secrets/x", "/s", &["rbind", "rw", "ro"]),
                vol(0, "/run/secrets/x", true, true),
            ),
            // CRI-O's recursiveReadOnly.
            (
                bind("/srv/rro", "/r", &["rbind", "ro", "rro"]),
                MountClass::Volume(Volume {
                    index: 0,
                    source: PathBuf::from("/srv/rro"),
                    readonly: ReadOnly::Recursive,
                    recursive: true,
                    name: volume_name(0, Path::new("/srv/rro")),
                }),
            ),
            (
                bind("/proc/sys/kernel", "/k", &["rbind"]),
                MountClass::HostOnly {
                    source: "/proc/sys/kernel".into(),
                },
            ),
            (
                bind("//sys", "/s", &["rbind"]),
                MountClass::HostOnly {
                    source: "/sys".into(),
                },
            ),
            (
                bind("/dev/fuse", "/dev/fuse", &["bind"]),
                MountClass::HostOnly {
                    source: "/dev/fuse".into(),
                },
            ),
            (
                bind("/device", "/d", &["bind"]),
                vol(0, "/device", false, false),
            ),
            (bind("/", "/host", &["rbind"]), vol(0, "/", false, true)),
        ];
        for (m, want) in cases {
            let spec = json!({"root": {"path": "rootfs"}, "mounts": [m]});
            let got = classify_mounts(&spec).expect("classify");
            assert_eq!(got, vec![want], "{m}");
        }
    }

    #[test]
    fn bad_mounts_name_the_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                bind("/a/../etc", "/x", &["rbind"]),
                "mounts[1].source",
                "source /a/../etc has a `..` component",
            ),
            (
                bind("/../proc", "/x", &["rbind"]),
                "mounts[1].source",
                "`..`",
            ),
            (
                bind("rel/path", "/x", &["rbind"]),
                "mounts[1].source",
                "not absolute",
            ),
            (
                json!({"destination": "/x", "type": "bind"}),
                "mounts[1].source",
                "needs a source",
            ),
            (
                bind("/a", "x", &["rbind"]),
                "mounts[1].destination",
                "absolute",
            ),
            (
                bind("/a", "/x/../y", &["rbind"]),
                "mounts[1].destination",
                "`..`",
            ),
            (
                json!({"type": "bind", "source": "/a"}),
                "mounts[1].destination",
                "missing",
            ),
            (
                json!({"destination": "/x", "options": "ro"}),
                "mounts[1].options",
                "array",
            ),
            (json!("x"), "mounts[1]", "object"),
        ];
        for (m, field, reason) in cases {
            let spec = json!({"mounts": [{"destination": "/proc", "type": "proc"}, m]});
            let e = classify_mounts(&spec).expect_err("invalid");
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            let OciError::InvalidArgument {
                field: f,
                reason: r,
            } = &e;
            assert_eq!(f, field, "{e}");
            assert!(r.contains(reason), "{e}");
        }
        let e = classify_mounts(&json!({"mounts": {}})).expect_err("not an array");
        assert!(e.to_string().starts_with("invalid mounts:"), "{e}");
    }

    #[test]
    fn root_path_is_required() {
        let cases = [
            (json!([]), "spec"),
            (json!({}), "root"),
            (json!({"root": "x"}), "root"),
            (json!({"root": {}}), "root.path"),
            (json!({"root": {"path": 5}}), "root.path"),
            (json!({"root": {"path": ""}}), "root.path"),
        ];
        for (spec, field) in cases {
            let e = root_path(&spec).expect_err("invalid");
            assert_eq!(
                e.to_string().split(':').next(),
                Some(format!("invalid {field}").as_str())
            );
        }
        assert_eq!(
            root_path(&json!({"root": {"path": "rootfs"}})).expect("ok"),
            "rootfs"
        );
    }

    #[test]
    fn volume_names() {
        assert_eq!(
            volume_name(3, Path::new("/run/b/resolv.conf")),
            "3-resolv.conf"
        );
        assert_eq!(volume_name(0, Path::new("/")), "0-root");
        assert_eq!(volume_name(1, Path::new("/a b/c d/")), "1-c d");
        let long = format!("/x/{}", "é".repeat(150));
        let n = volume_name(12, Path::new(&long));
        assert!(n.len() <= 3 + VOLUME_BASENAME_MAX, "{}", n.len());
        assert!(n.starts_with("12-é"));
    }

    #[test]
    fn without_var_run_takes_only_the_whole_component() {
        assert_eq!(
            without_var_run(Path::new("/var/run/netns/x")),
            Path::new("/run/netns/x")
        );
        assert_eq!(without_var_run(Path::new("/var/run")), Path::new("/run"));
        assert_eq!(
            without_var_run(Path::new("/var/running/x")),
            Path::new("/var/running/x")
        );
        assert_eq!(
            without_var_run(Path::new("/srv/var/run")),
            Path::new("/srv/var/run")
        );
    }

    fn infra_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "oomScoreAdj": -998, "selinuxLabel": "system_u:system_r:container_kvm_t:s0",
                "apparmorProfile": "crio-default"
            },
            "root": {"path": "/var/lib/containers/storage/overlay/l/merged", "readonly": true},
            "hostname": "pod",
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "annotations": {"io.kubernetes.cri-o.ContainerType": "sandbox"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/b/resolv.conf", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/b/shm", "options": ["rbind", "rw"]},
                {"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["rbind"]}
            ],
            "linux": {
                "cgroupsPath": "/kubepods/pod1/crio-x",
                "mountLabel": "system_u:object_r:container_file_t:s0",
                "intelRdt": {"closID": "x"},
                "resources": {"memory": {"limit": 536870912}},
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "sysctl": {"net.ipv4.ip_forward": "1"},
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/abc"},
                    {"type": "ipc", "path": "/var/run/ipcns/abc"},
                    {"type": "uts", "path": "/var/run/utsns/abc"},
                    {"type": "mount"}
                ]
            }
        })
    }

    #[test]
    fn guest_spec_rewrites_paths_and_drops_host_parts() {
        let spec = infra_spec();
        let classes = classify_mounts(&spec).expect("classify");
        let out: Value =
            serde_json::from_slice(&guest_spec(spec.clone(), "c1", &classes).expect("rewrite"))
                .expect("json");
        let shared = guest::SHARED_FS_MOUNT;
        let cases: Vec<(&str, Value)> = vec![
            ("/root/path", json!(format!("{shared}/c1/rootfs"))),
            ("/root/readonly", json!(true)),
            ("/hooks", Value::Null),
            ("/process/selinuxLabel", Value::Null),
            ("/process/apparmorProfile", Value::Null),
            ("/process/oomScoreAdj", json!(-998)),
            ("/process/args", json!(["/pause"])),
            ("/hostname", json!("pod")),
            ("/annotations", spec["annotations"].clone()),
            ("/linux/cgroupsPath", Value::Null),
            ("/linux/mountLabel", Value::Null),
            ("/linux/intelRdt", Value::Null),
            ("/linux/resources", spec["linux"]["resources"].clone()),
            ("/linux/seccomp", spec["linux"]["seccomp"].clone()),
            ("/linux/sysctl", spec["linux"]["sysctl"].clone()),
            (
                "/linux/namespaces",
                json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
            ),
            ("/mounts/0", spec["mounts"][0].clone()),
            (
                "/mounts/1",
                json!({"destination": "/etc/resolv.conf", "type": "bind",
                       "source": format!("{shared}/c1/volumes/1-resolv.conf"), "options": ["rbind", "ro"]}),
            ),
            (
                "/mounts/2",
                json!({"destination": "/dev/shm", "type": "bind", "source": guest::SANDBOX_SHM, "options": ["rbind", "rw"]}),
            ),
            ("/mounts/3", Value::Null),
        ];
        for (ptr, want) in cases {
            let got = out.pointer(ptr).cloned().unwrap_or(Value::Null);
            assert_eq!(got, want, "{ptr}");
        }
    }

    #[test]
    fn guest_spec_without_mounts_or_linux() {
        let spec = json!({"root": {"path": "rootfs"}, "process": {"args": ["sh"]}});
        let out: Value =
            serde_json::from_slice(&guest_spec(spec, "c2", &[]).expect("rewrite")).expect("json");
        assert_eq!(out["root"]["path"], json!(guest_rootfs_path("c2")));
        assert_eq!(out.get("mounts"), None);
        assert_eq!(out.get("linux"), None);
        let e = guest_spec(
            json!({"root": {"path": "r"}, "mounts": []}),
            "c",
            &[MountClass::Guest],
        )
        .expect_err("mismatch");
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn guest_process_cases() {
        let p = br#"{"args": ["ls", "-l"], "cwd": "/", "terminal": true, "env": ["A=1"],
                     "selinuxLabel": "x", "apparmorProfile": "y", "user": {"uid": 5, "gid": 5}}"#;
        for terminal in [false, true] {
            let out: Value =
                serde_json::from_slice(&guest_process(p, terminal).expect("ok")).expect("json");
            assert_eq!(out["terminal"], json!(terminal));
            assert_eq!(out["args"], json!(["ls", "-l"]));
            assert_eq!(out["env"], json!(["A=1"]));
            assert_eq!(out["user"]["uid"], json!(5));
            assert_eq!(out.get("selinuxLabel"), None);
            assert_eq!(out.get("apparmorProfile"), None);
        }
        let bad: [(&[u8], &str); 5] = [
            (br#"{"args": []}"#, "spec.args"),
            (br#"{"cwd": "/"}"#, "spec.args"),
            (br#"{"args": [1]}"#, "spec.args"),
            (br#"["ls"]"#, "spec"),
            (b"not json", "spec"),
        ];
        for (p, field) in bad {
            let e = guest_process(p, false).expect_err("invalid");
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            assert!(
                e.to_string().starts_with(&format!("invalid {field}:")),
                "{e}"
            );
        }
    }

    #[test]
    fn guest_resources_cases() {
        let r = br#"{"memory": {"limit": 1048576}, "cpu": {"shares": 2}}"#;
        assert_eq!(guest_resources(r).expect("ok"), r.to_vec());
        for bad in [&b"[]"[..], b"7", b"{", b""] {
            let e = guest_resources(bad).expect_err("invalid");
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            assert!(e.to_string().starts_with("invalid resources:"), "{e}");
        }
    }
}
