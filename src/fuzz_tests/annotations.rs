//! Annotations, the client's free-form strings: pod grouping
//! (`annotations`), VM sizing (`sizing`) and the configuration overrides
//! (`config::overrides::apply`). Random key sets and hostile values must
//! give a grouping whose sandbox id is a valid id, a VM size within its
//! bounds, and overrides that either refuse with the annotation named
//! (and the value quoted short) or yield a configuration that validates.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::config::to_toml;
use super::{Rng, Tally, run};
use crate::annotations::{AnnotationError, ContainerKind, identity, is_crio, spec_annotations};
use crate::config::Config;
use crate::config::overrides::{CONFIG_PREFIX, HYPERVISOR_PREFIX, SUPPORTED, apply};
use crate::ids;
use crate::sizing::{
    CRI_CPU_PERIOD, CRI_CPU_QUOTA, CRI_MEMORY, CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_V1, HostSize,
    vm_size,
};

const TYPE_KEYS: [&str; 3] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
    "io.kubernetes.docker.type",
];
const ID_KEYS: [&str; 3] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
    "io.kubernetes.sandbox.id",
];

/// Ids: valid ones, and each way of breaking containerd's rules.
const IDS: [&str; 9] = [
    "5f0c9a1e2b3d",
    "pod-1.a_b",
    "",
    "../etc",
    "a..b",
    "-lead",
    "trail-",
    "a b",
    "x0123456789x0123456789x0123456789x0123456789x0123456789x0123456789x0123456789",
];

fn grouping(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    for _ in 0..rng.below(5) {
        let (k, v) = match rng.below(4) {
            0 => (
                *rng.pick(&TYPE_KEYS),
                *rng.pick(&["sandbox", "container", "podsandbox", "Sandbox", ""]),
            ),
            1 | 2 => (*rng.pick(&ID_KEYS), *rng.pick(&IDS)),
            _ => (
                *rng.pick(&["io.container.manager", "io.kubernetes.cri-o.Foo", "other"]),
                *rng.pick(&["cri-o", "containerd", ""]),
            ),
        };
        a.insert(k.to_string(), v.to_string());
    }
    a
}

#[test]
fn pod_grouping_from_random_annotations() {
    let name = "pod_grouping_from_random_annotations";
    let mut tally = Tally::default();
    run(
        name,
        0xa770_0000_0000_000c,
        20_000,
        Duration::from_secs(1),
        |rng| {
            let a = grouping(rng);
            let cid = *rng.pick(&IDS);
            // Through a spec: only string values count.
            let mut spec_ann: serde_json::Map<String, Value> =
                a.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            spec_ann.insert("n".into(), json!(1));
            spec_ann.insert("o".into(), json!({"k": "v"}));
            let spec = json!({"annotations": spec_ann});
            assert_eq!(spec_annotations(&spec), a);
            assert!(spec_annotations(&json!({"annotations": [1]})).is_empty());
            assert_eq!(
                is_crio(&a),
                a.get("io.container.manager").is_some_and(|m| m == "cri-o")
                    || a.keys().any(|k| k.starts_with("io.kubernetes.cri-o."))
            );
            match identity(cid, &a) {
                Ok(id) => {
                    tally.add(match id.kind {
                        ContainerKind::Sandbox => "sandbox",
                        ContainerKind::Container => "container",
                    });
                    assert!(ids::validate(&id.sandbox_id).is_ok(), "{id:?} from {a:?}");
                    if id.kind == ContainerKind::Sandbox {
                        assert_eq!(id.sandbox_id, cid);
                    } else {
                        assert!(ID_KEYS.iter().any(|k| a.get(*k) == Some(&id.sandbox_id)));
                    }
                }
                Err(AnnotationError::UnknownType { key, value }) => {
                    tally.add("unknown type");
                    assert!(
                        TYPE_KEYS.contains(&key) && a.get(key) == Some(&value),
                        "{a:?}"
                    );
                }
                Err(AnnotationError::MissingSandboxId { key, container_id }) => {
                    tally.add("missing id");
                    assert!(ID_KEYS.contains(&key) && container_id == cid);
                    assert!(ID_KEYS.iter().all(|k| !a.contains_key(*k)), "{a:?}");
                }
                Err(AnnotationError::InvalidId { key, source }) => {
                    tally.add("invalid id");
                    assert!(key == "-id" || ID_KEYS.contains(&key), "{key}");
                    assert!(ids::validate(&source.id).is_err());
                }
                Err(e) => panic!("unexpected {e}"),
            }
            // Keys of no grouping set change nothing.
            let mut more = a.clone();
            more.insert("zz.unrelated".into(), "sandbox".into());
            assert_eq!(
                format!("{:?}", identity(cid, &a)),
                format!("{:?}", identity(cid, &more))
            );
        },
    );
    let all = [
        "sandbox",
        "container",
        "unknown type",
        "missing id",
        "invalid id",
    ];
    tally.require(name, &all);
}

#[test]
fn vm_sizes_from_random_pod_limits_stay_in_bounds() {
    let numbers = [
        "0",
        "1",
        "-1",
        "100000",
        "250000",
        " 42 ",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "1e3",
        "",
        "0x10",
        "536870912",
    ];
    let json_docs = [
        r#"{"cpu_period":100000,"cpu_quota":250000,"memory_limit_in_bytes":1073741824}"#,
        r#"{"cpu_quota":-1}"#,
        "null",
        "{}",
        r#"{"cpu_period":"1"}"#,
        r#"{"cpu_period":9223372036854775808}"#,
        "[",
        r#"{"cpu_period":1,"cpu_quota":9223372036854775807}"#,
    ];
    let name = "vm_sizes_from_random_pod_limits_stay_in_bounds";
    let mut tally = Tally::default();
    run(
        name,
        0xa770_0000_0000_000d,
        20_000,
        Duration::from_secs(1),
        |rng| {
            let mut a = BTreeMap::new();
            for _ in 0..rng.below(4) {
                match rng.below(3) {
                    0 => a.insert(
                        rng.pick(&[CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_V1])
                            .to_string(),
                        rng.pick(&json_docs).to_string(),
                    ),
                    _ => a.insert(
                        rng.pick(&[CRI_CPU_QUOTA, CRI_CPU_PERIOD, CRI_MEMORY])
                            .to_string(),
                        rng.pick(&numbers).to_string(),
                    ),
                };
            }
            let mut q = Config::default().hypervisor.qemu;
            q.default_vcpus = 1 + rng.below(240) as u32;
            q.default_maxvcpus = *rng.pick(&[0, q.default_vcpus, 240]);
            q.default_memory = *rng.pick(&[128, 2048, 1_048_576]);
            let host = HostSize {
                cpus: *rng.pick(&[0, 1, 2, 512]),
                memory_mib: *rng.pick(&[0, 512, 16_384, u64::MAX]),
            };
            match vm_size(&a, &q, &host) {
                Ok((size, warnings)) => {
                    // The ceiling: default_maxvcpus (0: the host's CPUs plus
                    // the default, at most QEMU's 240), default_maxmemory
                    // (0: the host's RAM), never below the defaults, which
                    // the VM always gets.
                    let max_vcpus = match q.default_maxvcpus {
                        0 => (host.cpus.max(1) + q.default_vcpus).min(240),
                        n => n,
                    }
                    .max(q.default_vcpus);
                    let max_mib = host
                        .memory_mib
                        .min(u64::from(u32::MAX))
                        .max(u64::from(q.default_memory));
                    assert!(size.vcpus >= q.default_vcpus, "{size:?} {q:?}");
                    assert!(size.vcpus <= max_vcpus, "{size:?} {host:?} {q:?}");
                    assert!(
                        u64::from(size.memory_mib) >= u64::from(q.default_memory),
                        "{size:?}"
                    );
                    assert!(u64::from(size.memory_mib) <= max_mib, "{size:?} {host:?}");
                    // A warning names a figure that was cut to the ceiling.
                    for w in &warnings {
                        assert!(w.contains("clamped to"), "{w}");
                    }
                    tally.add(if warnings.is_empty() {
                        "sized"
                    } else {
                        "clamped"
                    });
                    assert!(warnings.iter().all(|w| w.len() < 400), "{warnings:?}");
                }
                Err(e) => {
                    tally.add("refused");
                    let msg = e.to_string();
                    assert!(msg.starts_with("annotation "), "{msg}");
                    assert!(a.keys().any(|k| msg.contains(k.as_str())), "{msg}");
                }
            }
        },
    );
    tally.require(name, &["sized", "clamped", "refused"]);
}

/// Values worth trying for each supported name, hostile ones included.
const VALUES: [&str; 24] = [
    "1",
    "0",
    "240",
    "241",
    "4096",
    "67108864",
    "67108865",
    "2048",
    "127",
    "-1",
    "4294967296",
    "never",
    "always",
    "/usr/bin/qemu-system-x86_64",
    "/opt/kata/kernel",
    "/opt/kata/../etc/shadow",
    "/opt//kata",
    "relative/path",
    "quiet loglevel=3",
    "agent.log=debug",
    "init=/bin/sh",
    "a -- b",
    "x \"y",
    "line\nbreak",
];

fn random_config(rng: &mut Rng) -> Config {
    let mut c = Config::default();
    let q = &mut c.hypervisor.qemu;
    let globs: [&[&str]; 7] = [
        &[],
        &["*"],
        &["*"],
        &["default_*", "kernel_params"],
        &["[dk]*", "msize_9p"],
        &["path", "kernel", "initrd", "virtio_fs_daemon"],
        &["\\*", "virtio_fs_cache"],
    ];
    q.enable_annotations = rng.pick(&globs).iter().map(|g| g.to_string()).collect();
    let paths: [&[&str]; 3] = [
        &[],
        &["/opt/kata/*"],
        &["/usr/bin/*", "/opt/*/kernel", "/opt/kata/kernel"],
    ];
    q.valid_hypervisor_paths = rng.pick(&paths).iter().map(|g| g.to_string()).collect();
    q.valid_kernel_paths = rng.pick(&paths).iter().map(|g| g.to_string()).collect();
    q.valid_initrd_paths = rng.pick(&paths).iter().map(|g| g.to_string()).collect();
    q.valid_virtio_fs_daemon_paths = rng.pick(&paths).iter().map(|g| g.to_string()).collect();
    if rng.one_in(3) {
        q.kernel_params = "console=hvc0".into();
    }
    c
}

/// Values that suit each supported name (the rest come from [`VALUES`]).
fn suited(rng: &mut Rng, name: &str) -> String {
    let v = match name {
        "default_vcpus" | "default_maxvcpus" => *rng.pick(&["1", "2", "4", "240", "0"]),
        "default_memory" => *rng.pick(&["128", "4096", "1048576"]),
        "msize_9p" => *rng.pick(&["4096", "8192", "67108864"]),
        "virtio_fs_cache" => *rng.pick(&["never", "metadata", "auto", "always"]),
        "kernel_params" => *rng.pick(&["quiet", "loglevel=3  panic=1", "", " "]),
        _ => *rng.pick(&["/opt/kata/kernel", "/usr/bin/qemu", "/opt/kata/x"]),
    };
    v.to_string()
}

fn random_overrides(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    for _ in 0..rng.below(4) {
        let mut name = rng.pick(&SUPPORTED).to_string();
        let key = match rng.below(10) {
            0 => format!("{CONFIG_PREFIX}runtime.enable_debug"),
            1 => format!("{HYPERVISOR_PREFIX}unknown_name"),
            2 => format!("{HYPERVISOR_PREFIX}{}", "n".repeat(rng.below(300))),
            3 => "io.kubernetes.cri.sandbox-id".to_string(),
            4 => {
                // The pair whose combination validation checks.
                name = "default_maxvcpus".into();
                let vcpus = rng.pick(&["2", "240"]).to_string();
                a.insert(format!("{HYPERVISOR_PREFIX}default_vcpus"), vcpus);
                format!("{HYPERVISOR_PREFIX}default_maxvcpus")
            }
            _ => format!("{HYPERVISOR_PREFIX}{name}"),
        };
        let mut value = if rng.one_in(3) {
            rng.pick(&VALUES).to_string()
        } else {
            suited(rng, &name)
        };
        if rng.one_in(10) {
            value = value.repeat(1 + rng.below(400));
        }
        a.insert(key, value);
    }
    a
}

#[test]
fn config_overrides_refuse_by_name_or_validate() {
    let name = "config_overrides_refuse_by_name_or_validate";
    let mut tally = Tally::default();
    run(
        name,
        0xa770_0000_0000_000e,
        20_000,
        Duration::from_secs(3),
        |rng| {
            let base = random_config(rng);
            let a = random_overrides(rng);
            let ours: Vec<&String> = a.keys().filter(|k| k.starts_with(CONFIG_PREFIX)).collect();
            match apply(&base, &a) {
                Ok((out, applied)) => {
                    tally.add(if applied.is_empty() {
                        "nothing to apply"
                    } else {
                        "applied"
                    });
                    assert_eq!(applied.iter().collect::<Vec<_>>(), ours, "{a:?}");
                    if applied.is_empty() {
                        assert_eq!(out, base, "{a:?}");
                    }
                    // What comes out is a configuration the shim would load.
                    let text = to_toml(&out);
                    let back = Config::from_toml(&text, std::path::Path::new("override.toml"))
                        .unwrap_or_else(|e| panic!("{a:?} gave an invalid configuration: {e}"));
                    assert_eq!(back, out);
                    for (k, v) in &a {
                        let num = v.parse::<u32>().ok();
                        match k.strip_prefix(HYPERVISOR_PREFIX) {
                            Some("default_vcpus") => {
                                assert_eq!(Some(out.hypervisor.qemu.default_vcpus), num)
                            }
                            Some("default_memory") => {
                                assert_eq!(Some(out.hypervisor.qemu.default_memory), num)
                            }
                            Some("msize_9p") => assert_eq!(Some(out.hypervisor.qemu.msize_9p), num),
                            Some("kernel_params") => {
                                let p = &out.hypervisor.qemu.kernel_params;
                                assert!(p.starts_with(&base.hypervisor.qemu.kernel_params), "{p}");
                                assert!(
                                    !p.split_whitespace().any(|w| w.starts_with("agent.")),
                                    "{p}"
                                );
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    tally.add(if e.reason.contains("makes `") {
                        "invalid combination"
                    } else {
                        "refused"
                    });
                    assert!(e.key.starts_with(CONFIG_PREFIX), "{e}");
                    assert!(
                        a.contains_key(&e.key) || e.key.contains(", "),
                        "names no annotation: {e}"
                    );
                    // Long values are quoted short.
                    for v in a.values().filter(|v| v.chars().count() > 80) {
                        assert!(!e.reason.contains(v.as_str()), "quoted {} bytes", v.len());
                    }
                    // Refusal is whole: applying to the same base again refuses alike.
                    assert_eq!(apply(&base, &a).expect_err("deterministic"), e);
                }
            }
        },
    );
    let all = [
        "applied",
        "nothing to apply",
        "refused",
        "invalid combination",
    ];
    tally.require(name, &all);
}
