//! The OCI spec as the client hands it over (`oci`, and the namespace
//! reading of `sandbox::namespaces`): mutated and structurally random
//! `config.json` documents are classified and rewritten for the guest.
//! Refusals must name the offending field; accepted documents must come
//! out with guest paths only, no host-only parts, one guest mount per
//! mount that is not host-only, and everything else untouched.

use std::path::{Component, Path};
use std::time::Duration;

use kata_agent_protocol::guest;
use serde_json::{Value, json};

use super::{JSON_TOKENS, Rng, Tally, mutate_text, run, show};
use crate::error::Error;
use crate::oci::{
    MountClass, OciError, ReadOnly, classify_mounts, guest_process, guest_resources,
    guest_rootfs_path, guest_spec, guest_volume_path, root_path, volume_name,
};
use crate::sandbox::namespaces::{app_joins, of_sandbox};

/// A host spec as containerd or CRI-O writes it, with every kind of mount.
const SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},
"args":["/pause"],"env":["PATH=/bin"],"cwd":"/","selinuxLabel":"system_u:system_r:container_t:s0",
"apparmorProfile":"cri-containerd.apparmor.d","noNewPrivileges":true},
"root":{"path":"rootfs","readonly":true},"hostname":"h",
"hooks":{"prestart":[{"path":"/usr/bin/hook"}]},
"annotations":{"io.kubernetes.cri.container-type":"sandbox","x":"y"},
"mounts":[{"destination":"/proc","type":"proc","source":"proc"},
{"destination":"/dev/shm","type":"bind","source":"/run/containerd/shm","options":["rbind","ro"]},
{"destination":"/etc/hosts","type":"bind","source":"/var/run/containerd/io.containerd/hosts","options":["rbind","rw"]},
{"destination":"/data","type":"none","source":"/var/lib/kubelet/pods/x/volumes/d","options":["rbind","ro","rro"]},
{"destination":"/dev/kmsg","type":"bind","source":"/dev/kmsg","options":["bind"]},
{"destination":"/sys","type":"sysfs","source":"sysfs","options":["ro"]}],
"linux":{"namespaces":[{"type":"pid"},{"type":"ipc","path":"/var/run/ipcns/abc"},{"type":"uts"},
{"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1"}],
"cgroupsPath":"/kubepods/pod1/c1","mountLabel":"system_u:object_r:container_file_t:s0",
"intelRdt":{"closID":"x"},"resources":{"memory":{"limit":1048576}}}}"#;

/// A random mount entry, biased towards the interesting cases.
fn random_mount(rng: &mut Rng) -> Value {
    let dests = [
        "/data",
        "/dev/shm",
        "/etc/hosts",
        "relative",
        "/a/../b",
        "/",
        "",
        "/x/./y",
    ];
    let sources = [
        "/var/run/x",
        "/run/y",
        "/proc/1/ns/net",
        "/sys/fs/cgroup",
        "/dev/null",
        "/devices",
        "/var/lib/a/../../etc",
        "relative",
        "",
        "/a\u{0}b",
        "/",
        "/var/run",
        "/tmp/\u{20ac}\u{20ac}\u{20ac}",
    ];
    let options = ["bind", "rbind", "ro", "rw", "rro", "nosuid", ""];
    let mut m = serde_json::Map::new();
    if !rng.one_in(10) {
        m.insert("destination".into(), json!(rng.pick(&dests)));
    }
    if !rng.one_in(5) {
        m.insert(
            "type".into(),
            json!(rng.pick(&["bind", "none", "tmpfs", "proc"])),
        );
    }
    if !rng.one_in(6) {
        let mut src = rng.pick(&sources).to_string();
        if rng.one_in(8) {
            src.push('/');
            src.push_str(&"\u{e9}".repeat(150));
        }
        m.insert("source".into(), json!(src));
    }
    if !rng.one_in(4) {
        let opts: Vec<&str> = (0..rng.below(4)).map(|_| *rng.pick(&options)).collect();
        m.insert("options".into(), json!(opts));
    }
    if rng.one_in(12) {
        m.insert("options".into(), json!([1, null]));
    }
    Value::Object(m)
}

/// A document to classify: the spec mutated as text, or with random mounts.
fn document(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(2) {
        return mutate_text(rng, SPEC.as_bytes(), &JSON_TOKENS);
    }
    let mut v: Value = serde_json::from_str(SPEC).expect("the seed spec is JSON");
    let mounts: Vec<Value> = (0..rng.below(6)).map(|_| random_mount(rng)).collect();
    v["mounts"] = Value::Array(mounts);
    if rng.one_in(6) {
        v["mounts"] = rng.pick(&[json!(null), json!({}), json!("x")]).clone();
    }
    if rng.one_in(8) {
        v["root"] = rng
            .pick(&[
                json!(null),
                json!({"path": ""}),
                json!({"path": 1}),
                json!([]),
            ])
            .clone();
    }
    serde_json::to_vec(&v).expect("serialize")
}

fn field(e: &OciError) -> &str {
    let OciError::InvalidArgument { field, .. } = e;
    field
}

fn is_clean(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

fn check_classes(spec: &Value, classes: &[MountClass], what: &str) {
    let mounts = spec
        .get("mounts")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(classes.len(), mounts, "{what}");
    for (i, c) in classes.iter().enumerate() {
        let m = &spec["mounts"][i];
        match c {
            MountClass::Guest => {}
            MountClass::PodShm => {
                let dest = m["destination"].as_str().map(Path::new);
                assert_eq!(dest, Some(Path::new("/dev/shm")), "{what}");
            }
            MountClass::HostOnly { source } => {
                assert!(
                    ["/proc", "/sys", "/dev"]
                        .iter()
                        .any(|h| source.starts_with(h)),
                    "{what}: {source:?}"
                );
            }
            MountClass::Volume(v) => {
                assert_eq!(v.index, i, "{what}");
                assert!(is_clean(&v.source), "{what}: {:?}", v.source);
                assert!(!v.source.starts_with("/var/run"), "{what}: {:?}", v.source);
                assert!(
                    !["/proc", "/sys", "/dev"]
                        .iter()
                        .any(|h| v.source.starts_with(h)),
                    "{what}: {:?}",
                    v.source
                );
                let prefix = format!("{i}-");
                assert!(v.name.starts_with(&prefix), "{what}: {}", v.name);
                assert!(v.name.len() <= prefix.len() + 200, "{what}: {}", v.name);
                assert!(!v.name.contains('/'), "{what}: {}", v.name);
                let opts: Vec<&str> = m["options"]
                    .as_array()
                    .map(|o| o.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let last = opts.iter().rev().find(|o| **o == "ro" || **o == "rw");
                match v.readonly {
                    ReadOnly::No => assert_ne!(last, Some(&"ro"), "{what}"),
                    ReadOnly::Top => assert!(last == Some(&"ro") && !opts.contains(&"rro")),
                    ReadOnly::Recursive => assert!(last == Some(&"ro") && opts.contains(&"rro")),
                }
                assert_eq!(v.recursive, opts.contains(&"rbind"), "{what}");
            }
        }
    }
}

fn check_guest_spec(spec: &Value, classes: &[MountClass], out: &[u8], what: &str) {
    let g: Value = serde_json::from_slice(out).expect("guest spec is JSON");
    assert_eq!(
        g["root"]["path"],
        guest_rootfs_path("c1").as_str(),
        "{what}"
    );
    assert!(g.get("hooks").is_none(), "{what}");
    if let Some(p) = g.get("process").and_then(Value::as_object) {
        assert!(!p.contains_key("selinuxLabel") && !p.contains_key("apparmorProfile"));
    }
    if let Some(l) = g.get("linux").and_then(Value::as_object) {
        for k in ["cgroupsPath", "mountLabel", "intelRdt"] {
            assert!(!l.contains_key(k), "{what}: {k} kept");
        }
        if let Some(nss) = l.get("namespaces").and_then(Value::as_array) {
            assert!(nss.iter().all(|ns| ns.get("path").is_none()), "{what}");
            let has = |t: &str| nss.iter().any(|ns| ns["type"] == t);
            assert!(!has("mount") || has("cgroup"), "{what}");
        }
    }
    // Untouched: what the rewrite does not name.
    for k in ["annotations", "hostname", "ociVersion"] {
        assert_eq!(g.get(k), spec.get(k), "{what}: {k}");
    }
    let kept: Vec<&MountClass> = classes
        .iter()
        .filter(|c| !matches!(c, MountClass::HostOnly { .. }))
        .collect();
    let mounts = g["mounts"].as_array().map_or(0, Vec::len);
    assert_eq!(mounts, kept.len(), "{what}");
    for (i, c) in kept.iter().enumerate() {
        let src = &g["mounts"][i]["source"];
        match c {
            MountClass::PodShm => assert_eq!(src, guest::SANDBOX_SHM, "{what}"),
            MountClass::Volume(v) => {
                assert_eq!(src, guest_volume_path("c1", &v.name).as_str(), "{what}")
            }
            _ => {}
        }
        if let Some(s) = src.as_str().filter(|_| !matches!(c, MountClass::Guest)) {
            assert!(s.starts_with("/run/kata-containers/"), "{what}: {s}");
        }
    }
}

#[test]
fn oci_specs_are_classified_and_rewritten_safely() {
    let name = "oci_specs_are_classified_and_rewritten_safely";
    let mut tally = Tally::default();
    run(
        name,
        0x0c15_9ec0_0000_0008,
        20_000,
        Duration::from_secs(3),
        |rng| {
            let input = document(rng);
            let what = show(&input);
            let Ok(spec) = serde_json::from_slice::<Value>(&input) else {
                tally.add("not JSON");
                return;
            };
            match root_path(&spec) {
                Ok(p) => assert!(!p.is_empty(), "{what}"),
                Err(e) => assert!(["spec", "root", "root.path"].contains(&field(&e)), "{e}"),
            }
            let classes = match classify_mounts(&spec) {
                Ok(c) => c,
                Err(e) => {
                    tally.add("mounts refused");
                    let f = field(&e);
                    assert!(f == "spec" || f.starts_with("mounts"), "{what}: {e}");
                    if let Some(i) = f.strip_prefix("mounts[") {
                        let i: usize = i
                            .split(']')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .expect("an index");
                        assert!(i < spec["mounts"].as_array().map_or(0, Vec::len), "{e}");
                    }
                    return;
                }
            };
            check_classes(&spec, &classes, &what);
            for c in &classes {
                tally.add(match c {
                    MountClass::Guest => "guest mount",
                    MountClass::PodShm => "pod shm",
                    MountClass::HostOnly { .. } => "host-only mount",
                    MountClass::Volume(_) => "volume",
                });
            }
            let mut wrong = classes.clone();
            if rng.one_in(10) {
                wrong.push(MountClass::Guest);
                let e = guest_spec(spec.clone(), "c1", &wrong).expect_err("a class too many");
                let want = if spec["root"].is_object() {
                    "mounts"
                } else {
                    "root"
                };
                assert_eq!(field(&e), want, "{e}");
            }
            match guest_spec(spec.clone(), "c1", &classes) {
                Ok(out) => {
                    tally.add("rewritten");
                    check_guest_spec(&spec, &classes, &out, &what);
                }
                Err(e) => {
                    tally.add("root refused");
                    assert!(!spec["root"].is_object(), "{what}: {e}");
                    assert!(["spec", "root"].contains(&field(&e)), "{e}");
                }
            }
        },
    );
    let all = [
        "not JSON",
        "mounts refused",
        "guest mount",
        "pod shm",
        "host-only mount",
        "volume",
        "rewritten",
        "root refused",
    ];
    tally.require(name, &all);
}

#[test]
fn exec_processes_and_resources_are_checked_and_idempotent() {
    let process = r#"{"terminal":false,"args":["sh","-c","echo hi"],"env":["A=1"],"cwd":"/",
"selinuxLabel":"x","apparmorProfile":"y","user":{"uid":0,"gid":0},"capabilities":{"bounding":[]}}"#;
    let resources = r#"{"memory":{"limit":1048576,"swap":-1},"cpu":{"shares":1024,"quota":-1}}"#;
    let name = "exec_processes_and_resources_are_checked_and_idempotent";
    let mut tally = Tally::default();
    run(
        name,
        0x0c15_9ec0_0000_0009,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let terminal = rng.one_in(2);
            let input = mutate_text(rng, process.as_bytes(), &JSON_TOKENS);
            match guest_process(&input, terminal) {
                Ok(out) => {
                    tally.add("process");
                    let v: Value = serde_json::from_slice(&out).expect("JSON out");
                    assert_eq!(v["terminal"], terminal, "{}", show(&input));
                    let args = v["args"].as_array().expect("args");
                    assert!(!args.is_empty() && args.iter().all(Value::is_string));
                    assert!(v.get("selinuxLabel").is_none() && v.get("apparmorProfile").is_none());
                    let again = guest_process(&out, terminal).expect("its own output passes");
                    let back: Value = serde_json::from_slice(&again).expect("JSON");
                    assert_eq!(back, v, "not idempotent: {}", show(&input));
                }
                Err(e) => {
                    tally.add("process refused");
                    assert!(["spec", "spec.args"].contains(&field(&e)), "{e}");
                }
            }
            let input = mutate_text(rng, resources.as_bytes(), &JSON_TOKENS);
            let is_object = serde_json::from_slice::<Value>(&input).is_ok_and(|v| v.is_object());
            match guest_resources(&input) {
                Ok(out) => {
                    tally.add("resources");
                    assert!(is_object, "{}", show(&input));
                    assert_eq!(out, input, "resources pass through unchanged");
                }
                Err(e) => {
                    tally.add("resources refused");
                    assert!(!is_object, "{}", show(&input));
                    assert_eq!(field(&e), "resources", "{e}");
                }
            }
        },
    );
    let all = [
        "process",
        "process refused",
        "resources",
        "resources refused",
    ];
    tally.require(name, &all);
}

#[test]
fn volume_names_are_bounded_single_components() {
    run(
        "volume_names_are_bounded_single_components",
        0x0c15_9ec0_0000_000a,
        20_000,
        Duration::from_secs(1),
        |rng| {
            let pieces = [
                "a",
                "\u{e9}",
                "\u{20ac}",
                "\u{1f600}",
                "/",
                ".",
                "..",
                " ",
                "x\u{0}",
            ];
            let mut path = String::new();
            for _ in 0..rng.below(300) {
                path.push_str(pieces[rng.below(pieces.len())]);
            }
            let index = rng.below(1 << 20);
            let name = volume_name(index, Path::new(&path));
            let prefix = format!("{index}-");
            assert!(name.starts_with(&prefix), "{name}");
            assert!(
                name.len() <= prefix.len() + 200,
                "{} bytes for {path:?}",
                name.len()
            );
            assert!(!name[prefix.len()..].contains('/'), "{name}");
        },
    );
}

fn error_field(e: &Error) -> &'static str {
    match *e {
        Error::InvalidArgument { field, .. } => field,
        ref other => panic!("not an invalid argument: {other}"),
    }
}

#[test]
fn namespace_paths_are_read_safely() {
    let name = "namespace_paths_are_read_safely";
    let mut tally = Tally::default();
    run(
        name,
        0x0c15_9ec0_0000_000b,
        20_000,
        Duration::from_secs(2),
        |rng| {
            let input = mutate_text(rng, SPEC.as_bytes(), &JSON_TOKENS);
            let Ok(spec) = serde_json::from_slice::<Value>(&input) else {
                return;
            };
            let pod = match of_sandbox(&spec) {
                Ok(pod) => pod,
                Err(e) => {
                    tally.add("sandbox refused");
                    assert_eq!(error_field(&e), "linux.namespaces", "{e}");
                    return;
                }
            };
            match app_joins(&spec, &pod, 4242) {
                Ok(joins) => {
                    tally.add(if joins.is_empty() {
                        "no joins"
                    } else {
                        "joins"
                    });
                    for j in &joins {
                        assert!(["pid", "ipc", "uts"].contains(&j.as_str()), "{j}");
                        let has_path = spec["linux"]["namespaces"].as_array().is_some_and(|a| {
                            a.iter()
                                .any(|n| n["type"] == j.as_str() && n["path"].is_string())
                        });
                        assert!(has_path, "joined {j} without a path: {}", show(&input));
                    }
                }
                Err(e) => {
                    tally.add("container refused");
                    assert_eq!(error_field(&e), "linux.namespaces", "{e}");
                }
            }
        },
    );
    let all = ["joins", "no joins", "sandbox refused", "container refused"];
    tally.require(name, &all);
}
