//! Per-sandbox overrides from the sandbox spec's `io.katacontainers.config.*`
//! annotations, as Kata applies them, but closed by default:
//!
//! - only `io.katacontainers.config.hypervisor.<name>` keys exist here, and
//!   only the names in [`SUPPORTED`];
//! - `<name>` must match a glob in `[hypervisor.qemu] enable_annotations`
//!   (default empty: no annotation may override anything);
//! - a path-valued one (`path`, `kernel`, `initrd`, `virtio_fs_daemon`) must
//!   also be an absolute path without `.`/`..` components that matches a
//!   glob of the matching `valid_*_paths` list (default empty: none).
//!
//! Any `io.katacontainers.config.*` annotation that is not enabled, not
//! supported, or malformed refuses the whole sandbox (Kata errors out too):
//! a pod never boots with a configuration other than the one it asked for.
//! The check runs before anything on the host is created.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::{Config, ConfigError, glob};

/// The prefix of every Kata configuration annotation.
pub const CONFIG_PREFIX: &str = "io.katacontainers.config.";
/// The prefix of the hypervisor ones, the only kind this runtime has.
pub const HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";

/// The hypervisor annotation names this runtime applies.
pub const SUPPORTED: [&str; 10] = [
    "path",
    "kernel",
    "initrd",
    "virtio_fs_daemon",
    "kernel_params",
    "default_vcpus",
    "default_maxvcpus",
    "default_memory",
    "virtio_fs_cache",
    "msize_9p",
];

/// Longest annotation value accepted (kernel parameters included).
const VALUE_MAX: usize = 4096;
/// Longest value quoted back in an error.
const QUOTED_MAX: usize = 64;

/// A refused annotation, named in full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {reason}")]
pub struct OverrideError {
    pub key: String,
    pub reason: String,
}

fn quoted(value: &str) -> String {
    if value.chars().count() > QUOTED_MAX {
        let cut: String = value.chars().take(QUOTED_MAX).collect();
        format!("{cut:?}...")
    } else {
        format!("{value:?}")
    }
}

/// `config` with the sandbox's annotations applied, and the annotation
/// keys that were applied (in key order).
pub fn apply(
    config: &Config,
    annotations: &BTreeMap<String, String>,
) -> Result<(Config, Vec<String>), OverrideError> {
    let mut out = config.clone();
    let mut applied = Vec::new();
    // (config key, annotation key) of what was set, to name the annotation
    // when the combination fails validation.
    let mut set_keys: Vec<(&'static str, String)> = Vec::new();
    for (key, value) in annotations.range(CONFIG_PREFIX.to_string()..) {
        if !key.starts_with(CONFIG_PREFIX) {
            break;
        }
        let err = |reason: String| OverrideError {
            key: key.clone(),
            reason,
        };
        let Some(name) = key.strip_prefix(HYPERVISOR_PREFIX) else {
            return Err(err(format!(
                "only {HYPERVISOR_PREFIX}* annotations are supported by this runtime"
            )));
        };
        let q = &config.hypervisor.qemu;
        if !q.enable_annotations.iter().any(|g| glob::matches(g, name)) {
            return Err(err(format!(
                "{name} is not enabled by hypervisor.qemu.enable_annotations in the configuration"
            )));
        }
        if value.len() > VALUE_MAX {
            return Err(err(format!("value is longer than {VALUE_MAX} bytes")));
        }
        let config_key = apply_one(&mut out, name, value).map_err(err)?;
        set_keys.push((config_key, key.clone()));
        applied.push(key.clone());
    }
    if !applied.is_empty() {
        out.validate(Path::new("annotations")).map_err(|e| {
            let (key, reason) = match e {
                ConfigError::Invalid { key, problem, .. } => {
                    let ann = set_keys
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == key)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_else(|| applied.join(", "));
                    (ann, format!("makes `{key}` invalid: {key} {problem}"))
                }
                other => (applied.join(", "), other.to_string()),
            };
            OverrideError { key, reason }
        })?;
    }
    Ok((out, applied))
}

/// Applies one enabled annotation; returns the configuration key it set.
fn apply_one(c: &mut Config, name: &str, value: &str) -> Result<&'static str, String> {
    let q = &mut c.hypervisor.qemu;
    let number = |lo: u32, hi: u32| -> Result<u32, String> {
        value
            .parse::<u32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| {
                format!(
                    "value {} is not an integer between {lo} and {hi}",
                    quoted(value)
                )
            })
    };
    match name {
        "path" => {
            q.path = vec![allowed_path(
                value,
                &q.valid_hypervisor_paths,
                "valid_hypervisor_paths",
            )?];
            Ok("hypervisor.qemu.path")
        }
        "kernel" => {
            q.kernel = allowed_path(value, &q.valid_kernel_paths, "valid_kernel_paths")?;
            Ok("hypervisor.qemu.kernel")
        }
        "initrd" => {
            q.initrd = allowed_path(value, &q.valid_initrd_paths, "valid_initrd_paths")?;
            Ok("hypervisor.qemu.initrd")
        }
        "virtio_fs_daemon" => {
            q.virtio_fs_daemon = vec![allowed_path(
                value,
                &q.valid_virtio_fs_daemon_paths,
                "valid_virtio_fs_daemon_paths",
            )?];
            Ok("hypervisor.qemu.virtio_fs_daemon")
        }
        "kernel_params" => {
            if value.contains(['\n', '\r', '\0']) {
                return Err("value must be one line without NUL bytes".into());
            }
            // Appended, as Kata does: the configured parameters stay. A pod
            // spec may add kernel options only: the agent's keys and what
            // runs as PID 1 are the shim's and the operator's.
            if let Some(problem) = super::kernel_params_problem(value) {
                return Err(problem);
            }
            if let Some(p) = value.split_whitespace().find(|p| {
                p.starts_with("agent.")
                    || ["init", "rdinit"].contains(&p.split('=').next().unwrap_or(p))
            }) {
                return Err(format!(
                    "must not set {}: a pod may add kernel options, not agent keys or init",
                    quoted(p.split('=').next().unwrap_or(p))
                ));
            }
            let extra = value.split_whitespace().collect::<Vec<_>>().join(" ");
            if !extra.is_empty() {
                if !q.kernel_params.is_empty() {
                    q.kernel_params.push(' ');
                }
                q.kernel_params.push_str(&extra);
            }
            Ok("hypervisor.qemu.kernel_params")
        }
        "default_vcpus" => {
            q.default_vcpus = number(1, 240)?;
            Ok("hypervisor.qemu.default_vcpus")
        }
        "default_maxvcpus" => {
            q.default_maxvcpus = number(0, 240)?;
            Ok("hypervisor.qemu.default_maxvcpus")
        }
        "default_memory" => {
            q.default_memory = number(128, 1_048_576)?;
            Ok("hypervisor.qemu.default_memory")
        }
        "virtio_fs_cache" => {
            if !["never", "metadata", "auto", "always"].contains(&value) {
                return Err(format!(
                    "value {} is not never, metadata, auto or always",
                    quoted(value)
                ));
            }
            q.virtio_fs_cache = value.to_string();
            Ok("hypervisor.qemu.virtio_fs_cache")
        }
        "msize_9p" => {
            q.msize_9p = number(4096, 64 << 20)?;
            Ok("hypervisor.qemu.msize_9p")
        }
        _ => Err(format!(
            "{name} is not supported by this runtime (supported: {})",
            SUPPORTED.join(", ")
        )),
    }
}

/// `value` as a path, when it is absolute, lexically normal and matches one
/// of `globs` (`list` names the configuration key in the message).
fn allowed_path(value: &str, globs: &[String], list: &str) -> Result<PathBuf, String> {
    let path = Path::new(value);
    let normal = value.starts_with('/')
        && !value.contains("//")
        && !value.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && (value == "/" || !value.ends_with('/'));
    if !normal {
        return Err(format!(
            "value {} is not an absolute path without `.` or `..` components",
            quoted(value)
        ));
    }
    if !globs.iter().any(|g| glob::matches(g, value)) {
        return Err(format!(
            "path {} does not match any glob of hypervisor.qemu.{list} ({})",
            quoted(value),
            if globs.is_empty() {
                "the list is empty".to_string()
            } else {
                globs.join(", ")
            }
        ));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{HYPERVISOR_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn config(enable: &[&str]) -> Config {
        let mut c = Config::default();
        let q = &mut c.hypervisor.qemu;
        q.enable_annotations = enable.iter().map(|s| s.to_string()).collect();
        q.valid_hypervisor_paths = vec!["/opt/qemu/bin/qemu-*".into()];
        q.valid_kernel_paths = vec!["/opt/kata/*.kernel".into()];
        q.valid_initrd_paths = vec!["/opt/kata/*.initrd".into()];
        q.valid_virtio_fs_daemon_paths = vec!["/usr/libexec/virtiofsd".into()];
        q.kernel_params = "quiet".into();
        c
    }

    #[test]
    fn nothing_is_enabled_by_default() {
        let c = Config::default();
        let (same, applied) = apply(&c, &BTreeMap::new()).expect("no annotations");
        assert_eq!(same, c);
        assert!(applied.is_empty());
        let other: BTreeMap<String, String> =
            [("io.kubernetes.cri-o.SandboxID".to_string(), "x".to_string())].into();
        assert!(apply(&c, &other).is_ok(), "other annotations are ignored");
        for name in SUPPORTED {
            let e = apply(&c, &ann(&[(name, "1")])).expect_err(name);
            assert_eq!(e.key, format!("{HYPERVISOR_PREFIX}{name}"));
            assert!(e.reason.contains("not enabled"), "{e}");
        }
    }

    #[test]
    fn enabled_annotations_apply() {
        let c = config(&[
            "default_*",
            "kernel_params",
            "path",
            "kernel",
            "initrd",
            "virtio_fs_daemon",
            "virtio_fs_cache",
            "msize_9p",
        ]);
        let (o, applied) = apply(
            &c,
            &ann(&[
                ("default_vcpus", "2"),
                ("default_maxvcpus", "4"),
                ("default_memory", "512"),
                ("kernel_params", " debug  loglevel=7 "),
                ("path", "/opt/qemu/bin/qemu-system-x86_64"),
                ("kernel", "/opt/kata/6.12.kernel"),
                ("initrd", "/opt/kata/6.12.initrd"),
                ("virtio_fs_daemon", "/usr/libexec/virtiofsd"),
                ("virtio_fs_cache", "never"),
                ("msize_9p", "8192"),
            ]),
        )
        .expect("all allowed");
        assert_eq!(applied.len(), 10);
        let q = &o.hypervisor.qemu;
        assert_eq!(
            (q.default_vcpus, q.default_maxvcpus, q.default_memory),
            (2, 4, 512)
        );
        assert_eq!(q.kernel_params, "quiet debug loglevel=7");
        assert_eq!(
            q.path,
            vec![PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")]
        );
        assert_eq!(q.kernel, PathBuf::from("/opt/kata/6.12.kernel"));
        assert_eq!(q.initrd, PathBuf::from("/opt/kata/6.12.initrd"));
        assert_eq!(
            q.virtio_fs_daemon,
            vec![PathBuf::from("/usr/libexec/virtiofsd")]
        );
        assert_eq!((q.virtio_fs_cache.as_str(), q.msize_9p), ("never", 8192));
    }

    #[test]
    fn refusals_name_the_annotation() {
        let all = config(&["*"]);
        let cases: &[(&Config, &str, &str, &str)] = &[
            (
                &config(&["default_vcpus"]),
                "default_memory",
                "1024",
                "not enabled",
            ),
            (&all, "default_vcpus", "two", "not an integer"),
            (&all, "default_vcpus", "0", "between 1 and 240"),
            (&all, "default_memory", "64", "between 128"),
            (&all, "kernel_params", "a\nb", "one line"),
            // The guest command line's agent keys and init are the shim's:
            // issue 14's finding that an annotation could switch the debug
            // console on, or hide the shim's keys behind `--` or a quote.
            (
                &all,
                "kernel_params",
                "agent.debug_console",
                "debug_console",
            ),
            (
                &all,
                "kernel_params",
                "quiet agent.log=trace",
                "\"agent.log\"",
            ),
            (
                &all,
                "kernel_params",
                "agent.device_timeout=9",
                "agent keys or init",
            ),
            (&all, "kernel_params", "init=/bin/sh", "\"init\""),
            (&all, "kernel_params", "rdinit=/bin/sh", "\"rdinit\""),
            (&all, "kernel_params", "quiet --", "`--`"),
            (&all, "kernel_params", "a=\"b", "double quote"),
            (&all, "kernel_params", "a=\"b c\"", "double quote"),
            (&all, "virtio_fs_cache", "fast", "never, metadata"),
            (&all, "path", "/usr/bin/evil", "valid_hypervisor_paths"),
            (&all, "path", "/opt/qemu/bin/../../../tmp/qemu-x", "`..`"),
            (&all, "path", "/opt/qemu/bin/qemu-x/", "`..`"),
            (&all, "path", "qemu-x", "absolute"),
            (&all, "kernel", "/opt/kata/x.initrd", "valid_kernel_paths"),
            (
                &all,
                "kernel",
                "/opt/kata/sub/x.kernel",
                "valid_kernel_paths",
            ),
            (&all, "initrd", "/tmp/x.initrd", "valid_initrd_paths"),
            (
                &all,
                "virtio_fs_daemon",
                "/tmp/virtiofsd",
                "valid_virtio_fs_daemon_paths",
            ),
            (&all, "image", "/opt/kata/x.img", "not supported"),
            (
                &Config::default(),
                "path",
                "/usr/bin/qemu-system-x86_64",
                "not enabled",
            ),
        ];
        for (c, name, value, want) in cases {
            let e = apply(c, &ann(&[(name, value)])).expect_err(name);
            assert_eq!(e.key, format!("{HYPERVISOR_PREFIX}{name}"), "{e}");
            assert!(e.to_string().contains(want), "{name}={value:?}: {e}");
        }
        let mut no_paths = config(&["path"]);
        no_paths.hypervisor.qemu.valid_hypervisor_paths.clear();
        let e =
            apply(&no_paths, &ann(&[("path", "/opt/qemu/bin/qemu-x")])).expect_err("empty list");
        assert!(e.reason.contains("the list is empty"), "{e}");
    }

    #[test]
    fn other_namespaces_and_combinations_are_refused() {
        let c = config(&["*"]);
        let agent: BTreeMap<String, String> = [(
            "io.katacontainers.config.agent.kernel_modules".to_string(),
            "x".to_string(),
        )]
        .into();
        let e = apply(&c, &agent).expect_err("agent keys");
        assert!(
            e.reason
                .contains("only io.katacontainers.config.hypervisor."),
            "{e}"
        );

        // vcpus above the configured maximum: the vcpus annotation is named.
        let mut capped = c.clone();
        capped.hypervisor.qemu.default_maxvcpus = 2;
        let e = apply(&capped, &ann(&[("default_vcpus", "4")])).expect_err("above max");
        assert!(
            e.key.ends_with("default_maxvcpus") || e.key.ends_with("default_vcpus"),
            "{e}"
        );
        assert!(e.reason.contains("default_maxvcpus"), "{e}");

        let long = "x".repeat(VALUE_MAX + 1);
        let e = apply(&c, &ann(&[("kernel_params", &long)])).expect_err("long");
        assert!(e.reason.contains("longer than"), "{e}");
    }
}
