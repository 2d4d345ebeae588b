//! The runtime configuration: `configuration.toml` in Kata's shape
//! (`[hypervisor.qemu]`, `[agent.kata]`, `[runtime]`), typed, closed and
//! validated.
//!
//! Every key has a default in code, so an empty file is a valid
//! configuration. Unknown keys are rejected with their full key path, because
//! a misspelt key that is silently ignored is worse than a refusal to start.
//!
//! Which file a sandbox uses, first match wins: the `config_path` of its
//! Create options ([`options`], chosen at the sandbox's Create), then
//! `KATA_CONF_FILE`, then [`SEARCH_PATHS`], then the built-in defaults. The
//! chosen file is followed by the `config.d/*.toml` drop-ins next to it
//! ([`dropin`]), and the sandbox's `io.katacontainers.config.*` annotations
//! may override what `enable_annotations` allows ([`overrides`]).

pub mod dropin;
pub mod glob;
pub mod options;
pub mod overrides;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the configuration is looked for, in order, when `KATA_CONF_FILE`
/// is not set.
pub const SEARCH_PATHS: [&str; 2] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// Environment variable that names the configuration file to use.
pub const CONF_FILE_ENV: &str = "KATA_CONF_FILE";

/// Errors while finding, reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path} is not valid TOML for this runtime: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration {path}: unknown key `{key}`")]
    UnknownKey { path: PathBuf, key: String },
    #[error("configuration {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// Hardware acceleration choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it can run a stock guest, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// How the host reaches the guest's vsock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VsockMode {
    /// `vhost` where `/dev/vhost-vsock` exists, `hybrid` otherwise.
    Auto,
    /// Kernel vhost-vsock with a reserved CID.
    Vhost,
    /// `vhost-user-vsock-pci` served by a per-VM `vhost-device-vsock`.
    Hybrid,
}

/// How the sandbox directory is shared into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SharedFs {
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[serde(rename = "virtio-9p")]
    Virtio9p,
    #[serde(rename = "none")]
    None,
}

/// Log levels accepted for the shim and the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The spelling used on the kernel command line and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub hypervisor: Hypervisors,
    pub agent: Agents,
    pub runtime: Runtime,
}

/// `[hypervisor.*]` tables; only QEMU exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hypervisors {
    pub qemu: Qemu,
}

/// `[hypervisor.qemu]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Qemu {
    /// Candidate QEMU binaries; the first that exists is used.
    pub path: Vec<PathBuf>,
    /// Guest kernel (the image builder's stable symlink by default).
    pub kernel: PathBuf,
    /// Guest initrd holding the agent as `/init`.
    pub initrd: PathBuf,
    pub machine_type: String,
    pub accel: Accel,
    /// Size of TCG's translation-block cache in MiB; 0 leaves QEMU's own
    /// default (an eighth of host RAM, at most 1 GiB). Ignored under KVM.
    pub tcg_tb_size: u32,
    pub default_vcpus: u32,
    /// Most vCPUs a VM can grow to when container limits add to
    /// `default_vcpus`; 0 means the host's CPU count plus `default_vcpus`
    /// (a limit of the whole host on top of the guest's own headroom).
    /// Every one of them is present in the VM from boot, offline until used.
    pub default_maxvcpus: u32,
    /// Guest memory in MiB.
    pub default_memory: u32,
    /// Most memory (MiB) a VM can grow to by hot-added DIMMs; 0 means the
    /// host's RAM.
    pub default_maxmemory: u32,
    /// DIMM slots for hot-added memory: each growth of a VM's memory takes
    /// one; 0 turns memory hotplug off.
    pub memory_slots: u32,
    /// Extra kernel parameters, appended after the built-in ones.
    pub kernel_params: String,
    /// QEMU's `-sandbox` (its seccomp filter), as Kata's key of the same
    /// name; empty: no filter.
    pub seccompsandbox: String,
    /// Run QEMU and vhost-device-vsock as an unprivileged uid and gid of
    /// their own, one per sandbox, as Kata's key of the same name
    /// (`vm::rootless`).
    pub rootless: bool,
    /// First uid (and gid) of the range rootless VMs take theirs from.
    pub rootless_first_uid: u32,
    /// How many uids that range holds: at most this many rootless VMs run
    /// at once.
    pub rootless_uids: u32,
    pub vsock: VsockMode,
    /// Candidate `vhost-device-vsock` binaries for hybrid vsock.
    pub vhost_user_vsock_daemon: Vec<PathBuf>,
    pub shared_fs: SharedFs,
    /// Candidate `virtiofsd` binaries.
    pub virtio_fs_daemon: Vec<PathBuf>,
    /// virtiofsd `--cache` mode: never, metadata, auto or always.
    pub virtio_fs_cache: String,
    pub virtio_fs_extra_args: Vec<String>,
    /// 9p `msize` in bytes.
    pub msize_9p: u32,
    /// Annotations a pod may use to override this table, as globs over the
    /// name after `io.katacontainers.config.hypervisor.`; empty: none.
    pub enable_annotations: Vec<String>,
    /// Globs a `path` annotation must match.
    pub valid_hypervisor_paths: Vec<String>,
    /// Globs a `kernel` annotation must match.
    pub valid_kernel_paths: Vec<String>,
    /// Globs an `initrd` annotation must match.
    pub valid_initrd_paths: Vec<String>,
    /// Globs a `virtio_fs_daemon` annotation must match.
    pub valid_virtio_fs_daemon_paths: Vec<String>,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            path: vec![
                "/usr/libexec/qemu-kiwi".into(),
                "/usr/libexec/qemu-kvm".into(),
                "/usr/bin/qemu-system-x86_64".into(),
            ],
            kernel: "/var/cache/kata-containers/osbuilder-images/kata.kernel".into(),
            initrd: "/var/cache/kata-containers/osbuilder-images/kata.initrd".into(),
            machine_type: "q35".into(),
            accel: Accel::Auto,
            // The translation cache is QEMU's largest private allocation
            // under TCG and grows until it is full, so QEMU's default
            // (1 GiB on most hosts) can become 1 GiB per pod. Booting the
            // guest and the agent fills about 57 MiB here: 64 MiB costs no
            // boot time and caps the growth, smaller sizes cost boot time.
            tcg_tb_size: 64,
            default_vcpus: 1,
            default_maxvcpus: 0,
            default_memory: 2048,
            default_maxmemory: 0,
            memory_slots: 10,
            kernel_params: String::new(),
            seccompsandbox: DEFAULT_SECCOMP_SANDBOX.into(),
            rootless: false,
            rootless_first_uid: DEFAULT_ROOTLESS_FIRST_UID,
            rootless_uids: 65_536,
            vsock: VsockMode::Auto,
            vhost_user_vsock_daemon: vec![
                "/usr/libexec/vhost-device-vsock".into(),
                "/usr/local/bin/vhost-device-vsock".into(),
                "/usr/bin/vhost-device-vsock".into(),
            ],
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: vec![
                "/usr/libexec/virtiofsd".into(),
                "/usr/local/bin/virtiofsd".into(),
                "/usr/bin/virtiofsd".into(),
            ],
            virtio_fs_cache: "auto".into(),
            virtio_fs_extra_args: vec![
                "--thread-pool-size=1".into(),
                "--announce-submounts".into(),
            ],
            msize_9p: 262_144,
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_kernel_paths: Vec::new(),
            valid_initrd_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
        }
    }
}

/// `[agent.*]` tables; only the kata agent exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agents {
    pub kata: Agent,
}

/// `[agent.kata]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    /// Seconds to wait for the agent to answer after QEMU starts.
    pub dial_timeout: u32,
    /// Agent log level (`agent.log=` on the kernel command line).
    pub log_level: LogLevel,
    /// Debug console: the agent serves a root shell on vsock port 1026
    /// (`agent.debug_console` on the kernel command line), reached with
    /// `kata-ctl exec <sandbox-id>`. Needs an image built with
    /// `kata-guest-image --debug` (the default image has no shell).
    pub debug_console_enabled: bool,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            dial_timeout: 30,
            log_level: LogLevel::Info,
            debug_console_enabled: false,
        }
    }
}

impl Agent {
    /// The dial deadline as a duration.
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.dial_timeout))
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Runtime {
    /// Shim log level.
    pub log_level: LogLevel,
    /// Debug mode: verbose guest kernel and agent logs.
    pub enable_debug: bool,
    /// Size the VM once at boot from the pod's annotations (Kata's key of
    /// the same name) instead of growing it on CreateContainer and
    /// UpdateContainerResources.
    pub static_sandbox_resource_mgmt: bool,
    /// What a container limit that would take the VM past
    /// `default_maxvcpus`/`default_maxmemory` gets.
    pub limit_above_max: LimitAboveMax,
}

/// `[runtime] limit_above_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitAboveMax {
    /// The VM grows to the maximum and a warning is logged; the container's
    /// cgroup still gets its full limit.
    Cap,
    /// CreateContainer or UpdateContainerResources fails with
    /// INVALID_ARGUMENT naming the limit.
    Refuse,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            log_level: LogLevel::Info,
            enable_debug: false,
            static_sandbox_resource_mgmt: false,
            limit_above_max: LimitAboveMax::Cap,
        }
    }
}

/// A loaded configuration, the file it came from (`None`: built-in
/// defaults) and the `config.d` drop-ins merged on top, in order.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Option<PathBuf>,
    pub drop_ins: Vec<PathBuf>,
}

impl Loaded {
    /// The file and drop-ins, for logs: `built-in defaults` without a file.
    pub fn describe(&self) -> String {
        let Some(source) = &self.source else {
            return "built-in defaults".into();
        };
        let mut s = source.display().to_string();
        for d in &self.drop_ins {
            s.push_str(" + ");
            s.push_str(&d.display().to_string());
        }
        s
    }
}

impl Config {
    /// Parses and validates configuration text; `path` is used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_layer(text, path)?.0;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses one file's text without validating the values together (a
    /// drop-in may set only part of a constraint): types and unknown keys
    /// are checked here, naming `path`. Returns the typed layer and its
    /// table for merging.
    fn parse_layer(text: &str, path: &Path) -> Result<(Config, toml::Table), ConfigError> {
        let parse_error = |e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        };
        let de = toml::Deserializer::new(text);
        let mut unknown = Vec::new();
        let config: Config = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
            .map_err(|e| parse_error(&e))?;
        if let Some(key) = unknown.into_iter().next() {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key,
            });
        }
        let table: toml::Table = text.parse().map_err(|e| parse_error(&e))?;
        Ok((config, table))
    }

    fn read_layer(path: &Path) -> Result<(Config, toml::Table), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_layer(&text, path)
    }

    /// Reads and validates one file, without its drop-ins.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let (config, _) = Config::read_layer(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads `path`, merges its `config.d/*.toml` drop-ins on top in name
    /// order, and validates the result. A value that fails validation is
    /// blamed on the last file that set it.
    pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
        let (mut config, mut merged) = Config::read_layer(path)?;
        let drop_ins = dropin::files_for(path)?;
        let mut layers = Vec::with_capacity(drop_ins.len());
        for d in &drop_ins {
            let (_, table) = Config::read_layer(d)?;
            dropin::merge(&mut merged, table.clone());
            layers.push((d.clone(), table));
        }
        if !layers.is_empty() {
            let mut unknown = Vec::new();
            config = serde_ignored::deserialize(toml::Value::Table(merged), |p| {
                unknown.push(p.to_string())
            })
            .map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("after merging config.d: {}", e.to_string().trim()),
            })?;
            debug_assert!(unknown.is_empty(), "every layer was checked: {unknown:?}");
        }
        if let Err(e) = config.validate(path) {
            return Err(match e {
                ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                    path: layers
                        .iter()
                        .rev()
                        .find(|(_, t)| dropin::sets(t, key))
                        .map(|(p, _)| p.clone())
                        .unwrap_or_else(|| path.to_path_buf()),
                    key,
                    problem,
                },
                other => other,
            });
        }
        Ok(Loaded {
            config,
            source: Some(path.to_path_buf()),
            drop_ins,
        })
    }

    /// Finds and loads the configuration: `KATA_CONF_FILE` when set (it must
    /// exist), else the first of [`SEARCH_PATHS`] that exists, else defaults;
    /// a file comes with its `config.d` drop-ins.
    pub fn load() -> Result<Loaded, ConfigError> {
        let env = std::env::var_os(CONF_FILE_ENV).filter(|v| !v.is_empty());
        Config::load_from(env.map(PathBuf::from), &SEARCH_PATHS.map(PathBuf::from))
    }

    /// [`Config::load`] with the override and the search list given.
    pub fn load_from(explicit: Option<PathBuf>, search: &[PathBuf]) -> Result<Loaded, ConfigError> {
        if let Some(path) = explicit {
            return Config::load_file(&path);
        }
        for path in search {
            if path.exists() {
                return Config::load_file(path);
            }
        }
        Ok(Loaded {
            config: Config::default(),
            source: None,
            drop_ins: Vec::new(),
        })
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let q = &self.hypervisor.qemu;
        if q.path.is_empty() {
            return Err(invalid(
                "hypervisor.qemu.path",
                "must list at least one binary".into(),
            ));
        }
        if !(1..=240).contains(&q.default_vcpus) {
            return Err(invalid(
                "hypervisor.qemu.default_vcpus",
                format!("is {}, must be between 1 and 240", q.default_vcpus),
            ));
        }
        if q.default_maxvcpus != 0 && !(q.default_vcpus..=240).contains(&q.default_maxvcpus) {
            return Err(invalid(
                "hypervisor.qemu.default_maxvcpus",
                format!(
                    "is {}, must be 0 (the host's CPUs) or between default_vcpus ({}) and 240",
                    q.default_maxvcpus, q.default_vcpus
                ),
            ));
        }
        if !(128..=1_048_576).contains(&q.default_memory) {
            return Err(invalid(
                "hypervisor.qemu.default_memory",
                format!(
                    "is {} MiB, must be between 128 and 1048576",
                    q.default_memory
                ),
            ));
        }
        if q.default_maxmemory != 0 && q.default_maxmemory < q.default_memory {
            return Err(invalid(
                "hypervisor.qemu.default_maxmemory",
                format!(
                    "is {} MiB, must be 0 (the host's RAM) or at least default_memory ({})",
                    q.default_maxmemory, q.default_memory
                ),
            ));
        }
        if q.memory_slots > 256 {
            return Err(invalid(
                "hypervisor.qemu.memory_slots",
                format!("is {}, must be at most 256", q.memory_slots),
            ));
        }
        if q.tcg_tb_size > 2048 {
            return Err(invalid(
                "hypervisor.qemu.tcg_tb_size",
                format!(
                    "is {} MiB, must be 0 (QEMU's default) or between 1 and 2048",
                    q.tcg_tb_size
                ),
            ));
        }
        if !["q35", "pc", "microvm"].contains(&q.machine_type.as_str()) {
            return Err(invalid(
                "hypervisor.qemu.machine_type",
                format!("is {:?}, must be q35, pc or microvm", q.machine_type),
            ));
        }
        if !["never", "metadata", "auto", "always"].contains(&q.virtio_fs_cache.as_str()) {
            return Err(invalid(
                "hypervisor.qemu.virtio_fs_cache",
                format!(
                    "is {:?}, must be never, metadata, auto or always",
                    q.virtio_fs_cache
                ),
            ));
        }
        if q.kernel_params.contains(['\n', '\0']) {
            return Err(invalid(
                "hypervisor.qemu.kernel_params",
                "must be one line without NUL bytes".into(),
            ));
        }
        if !seccomp_sandbox_is_valid(&q.seccompsandbox) {
            return Err(invalid(
                "hypervisor.qemu.seccompsandbox",
                format!(
                    "is {:?}, must be empty or QEMU's -sandbox value: on or off, then \
                     comma-separated name=value options such as {DEFAULT_SECCOMP_SANDBOX:?}",
                    q.seccompsandbox
                ),
            ));
        }
        if let Some((key, problem)) = rootless_problem(q) {
            return Err(invalid(key, problem));
        }
        if !(4096..=(64 << 20)).contains(&q.msize_9p) {
            return Err(invalid(
                "hypervisor.qemu.msize_9p",
                format!("is {}, must be between 4096 and 67108864", q.msize_9p),
            ));
        }
        for (key, p) in [
            ("hypervisor.qemu.kernel", &q.kernel),
            ("hypervisor.qemu.initrd", &q.initrd),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        for name in &q.enable_annotations {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(invalid(
                    "hypervisor.qemu.enable_annotations",
                    format!("entry {name:?} must be a non-empty name or glob without spaces"),
                ));
            }
            glob::check(name).map_err(|e| invalid("hypervisor.qemu.enable_annotations", e))?;
        }
        for (key, globs) in [
            (
                "hypervisor.qemu.valid_hypervisor_paths",
                &q.valid_hypervisor_paths,
            ),
            ("hypervisor.qemu.valid_kernel_paths", &q.valid_kernel_paths),
            ("hypervisor.qemu.valid_initrd_paths", &q.valid_initrd_paths),
            (
                "hypervisor.qemu.valid_virtio_fs_daemon_paths",
                &q.valid_virtio_fs_daemon_paths,
            ),
        ] {
            for g in globs {
                if !g.starts_with('/') {
                    return Err(invalid(
                        key,
                        format!("entry {g:?} must be an absolute glob"),
                    ));
                }
                glob::check(g).map_err(|e| invalid(key, e))?;
            }
        }
        if let Some(problem) = kernel_params_problem(&self.hypervisor.qemu.kernel_params) {
            return Err(invalid("hypervisor.qemu.kernel_params", problem));
        }
        if !(1..=600).contains(&self.agent.kata.dial_timeout) {
            return Err(invalid(
                "agent.kata.dial_timeout",
                format!(
                    "is {} s, must be between 1 and 600",
                    self.agent.kata.dial_timeout
                ),
            ));
        }
        Ok(())
    }
}

/// Where rootless uids start by default: far above the uids of users,
/// system services and the usual subordinate-id ranges (100000 up).
pub const DEFAULT_ROOTLESS_FIRST_UID: u32 = 2_000_000_000;

/// Which rootless setting of `q` cannot work, and why, if one cannot.
fn rootless_problem(q: &Qemu) -> Option<(&'static str, String)> {
    let (first, count) = (q.rootless_first_uid, q.rootless_uids);
    let end = u64::from(first) + u64::from(count);
    if first < 65_536 {
        return Some((
            "hypervisor.qemu.rootless_first_uid",
            format!(
                "is {first}, must be at least 65536: above the uids of users and system \
                 services (65534 is nobody)"
            ),
        ));
    }
    if count == 0 || end > 1 << 31 {
        return Some((
            "hypervisor.qemu.rootless_uids",
            format!(
                "is {count}: the range from rootless_first_uid ({first}) must hold at least \
                 one uid and end at or below 2147483648"
            ),
        ));
    }
    if q.rootless && q.shared_fs == SharedFs::Virtio9p {
        return Some((
            "hypervisor.qemu.rootless",
            "is true with shared_fs = \"virtio-9p\": 9p is served by QEMU itself, and an \
             unprivileged QEMU can neither read the image's root-only files nor keep their \
             owners; use virtio-fs (virtiofsd keeps its privileges in its own sandbox) or none"
                .into(),
        ));
    }
    None
}

/// QEMU's seccomp filter by default: a guest that takes QEMU over cannot use
/// obsolete system calls, gain privileges (setuid and friends), start
/// programs, or change its scheduling and resource limits. Kata's default
/// lacks `elevateprivileges=deny`; QEMU here never needs to change its
/// credentials after start.
pub const DEFAULT_SECCOMP_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// `value` is empty or has the shape of QEMU's `-sandbox` argument, and no
/// character that could end the option or start another one.
fn seccomp_sandbox_is_valid(value: &str) -> bool {
    let mut parts = value.split(',');
    match parts.next() {
        Some("") if value.is_empty() => true,
        Some("on" | "off") => parts.all(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
                word(k) && word(v)
            })
        }),
        _ => false,
    }
}

/// Why `params` cannot go on the guest kernel command line before the
/// shim's own keys (`vm::qemu::kernel_cmdline`), if it cannot.
///
/// - A lone `--` ends what the kernel and the agent read as parameters, and
///   a double quote groups what follows it into one value: either would
///   hide the shim's `agent.*` keys behind it.
/// - The debug console is a root shell: only its own switch turns it on.
pub fn kernel_params_problem(params: &str) -> Option<String> {
    if params.contains('"') {
        return Some("must not contain a double quote: it would swallow the shim's own agent.* keys into one value".into());
    }
    for p in params.split_whitespace() {
        if p == "--" {
            return Some("must not contain `--`: it would end the parameters before the shim's own agent.* keys".into());
        }
        if p.split('=').next() == Some(kata_agent_protocol::cmdline::DEBUG_CONSOLE) {
            return Some(format!(
                "must not contain {}: set [agent.kata] debug_console_enabled = true instead",
                kata_agent_protocol::cmdline::DEBUG_CONSOLE
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
