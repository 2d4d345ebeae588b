//! `kata-ctl check` and `kata-ctl env`: what this host and configuration
//! give a pod, answered by the same configuration loader, probes and
//! choosers the shim uses when it starts a VM, so the report cannot drift
//! from what the shim actually does.
//!
//! Gathering facts (devices, files, running QEMU) is kept apart from judging
//! them: each verdict is a pure function of the facts, so every line of
//! output is unit-tested on fixtures while the binary reports this host.
//!
//! - [`check`]: one line per host requirement, `ok`, `warn` or `fail`.
//! - [`env`]: the resolved configuration and paths, as TOML or JSON.
//! - [`metrics`]: the running shims' Prometheus metrics.
//! - [`exec`]: a shell in a sandbox's guest through the agent's debug console.

pub mod check;
pub mod env;
pub mod exec;
mod host;
mod image;
pub mod metrics;
mod qemu;
mod toml_out;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, ConfigError, Loaded, Qemu};
use crate::vm::accel::{self, HostVirt};
use crate::vm::child::resolve_binary;
use crate::vm::{ShareKind, vsock};

/// Errors of `kata-ctl env` (`check` reports problems as lines instead).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("rendering the report as JSON")]
    Json(#[from] serde_json::Error),
    #[error("rendering the report as TOML: {0}")]
    Toml(String),
}

/// Loads the configuration the shim would load: `explicit` (`--config`)
/// when given, else `KATA_CONF_FILE`, else the first search path that
/// exists, else the built-in defaults.
pub fn load_config(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    match explicit {
        Some(p) => Config::load_from(Some(p.to_path_buf()), &[]),
        None => Config::load(),
    }
}

/// What the shim will pick on this host for this configuration: the same
/// choosers `Vm::start_with` calls, fed the same host facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub accel: accel::Choice,
    pub vsock: vsock::Mode,
    pub share: ShareKind,
    /// First existing entry of `hypervisor.qemu.path`.
    pub qemu: Option<PathBuf>,
    /// First existing `virtio_fs_daemon`, looked up whatever `shared_fs` says.
    pub virtiofsd: Option<PathBuf>,
    /// First existing `vhost_user_vsock_daemon`, looked up in every mode.
    pub vhost_device_vsock: Option<PathBuf>,
}

impl Resolved {
    /// Resolves `q` against the host facts.
    pub fn new(q: &Qemu, virt: HostVirt, vhost_vsock_exists: bool) -> Resolved {
        let found = |list: &[PathBuf]| resolve_binary(list, "binary", "").ok();
        let virtiofsd = found(&q.virtio_fs_daemon);
        let share = crate::vm::choose_share(q.shared_fs, virtiofsd.is_some());
        Resolved {
            accel: accel::choose(q.accel, virt),
            vsock: vsock::choose(q.vsock, vhost_vsock_exists),
            share,
            qemu: found(&q.path),
            virtiofsd,
            vhost_device_vsock: found(&q.vhost_user_vsock_daemon),
        }
    }
}

/// Spelling of a resolved vsock mode in reports.
fn vsock_name(m: vsock::Mode) -> &'static str {
    match m {
        vsock::Mode::Vhost => "vhost",
        vsock::Mode::Hybrid => "hybrid",
    }
}

/// Spelling of a resolved share in reports (the configuration's spelling).
fn share_name(s: ShareKind) -> &'static str {
    match s {
        ShareKind::VirtioFs => "virtio-fs",
        ShareKind::NineP => "virtio-9p",
        ShareKind::None => "none",
    }
}

/// `a, b, c` for a list of paths.
fn path_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as the shim prefers.
    Ok,
    /// Pods run, but slower or in a fallback mode.
    Warn,
    /// Pods cannot run.
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of `kata-ctl check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// Short topic (`accel`, `vsock`, ...).
    pub name: &'static str,
    /// What was found and what the shim will do about it.
    pub message: String,
    /// How to get to `ok`; present on every `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, message: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            name,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Warn,
            name,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Fail,
            name,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// `warn  accel        <message> (fix: <fix>)`: fixed columns so the
    /// verdicts line up and `grep '^fail'` finds what blocks pods.
    pub fn render(&self) -> String {
        let mut line = format!(
            "{:<6}{:<12} {}",
            self.status.as_str(),
            self.name,
            self.message
        );
        if let Some(fix) = &self.fix {
            line.push_str(&format!(" (fix: {fix})"));
        }
        line
    }
}

/// Counts per verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

/// The node label that says this node runs kata pods.
pub const NFD_RUNTIME_LABEL: &str = "feature.node.kubernetes.io/runtime.kata";

/// Every line of one `kata-ctl check` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub summary: Summary,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Ok => summary.ok += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
            }
        }
        Report { checks, summary }
    }

    /// True when nothing stops a pod from running.
    pub fn passed(&self) -> bool {
        self.summary.fail == 0
    }

    /// A Node Feature Discovery feature file (the `local` source reads
    /// `/etc/kubernetes/node-feature-discovery/features.d/`): the label a
    /// `kata` RuntimeClass selects nodes by, when nothing stops a pod here,
    /// and nothing otherwise, so that NFD takes the label away.
    pub fn nfd_features(&self) -> String {
        if self.passed() {
            format!("{NFD_RUNTIME_LABEL}=true\n")
        } else {
            String::new()
        }
    }

    /// One line per check, then `check: N ok, N warn, N fail`.
    pub fn render(&self) -> String {
        let mut out: String = self.checks.iter().map(|c| c.render() + "\n").collect();
        let s = self.summary;
        out.push_str(&format!(
            "check: {} ok, {} warn, {} fail",
            s.ok, s.warn, s.fail
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nfd_label_is_there_only_when_nothing_fails() {
        let ok = Report::new(vec![
            Check::ok("qemu", "found"),
            Check::warn("accel", "TCG", "enable VMX"),
        ]);
        assert_eq!(ok.nfd_features(), format!("{NFD_RUNTIME_LABEL}=true\n"));
        let failed = Report::new(vec![Check::fail("qemu", "missing", "install it")]);
        assert_eq!(failed.nfd_features(), "");
    }

    #[test]
    fn lines_have_fixed_columns_and_fixes() {
        let w = Check::warn("accel", "TCG: no vmx", "use a host with VMX");
        assert_eq!(
            w.render(),
            "warn  accel        TCG: no vmx (fix: use a host with VMX)"
        );
        assert_eq!(Check::ok("qemu", "v10").render(), "ok    qemu         v10");
        let long = Check::fail("qemu-devices", "missing x", "install y");
        assert_eq!(
            long.render(),
            "fail  qemu-devices missing x (fix: install y)"
        );
    }

    #[test]
    fn summary_counts_and_exit_verdict() {
        let r = Report::new(vec![
            Check::ok("a", "fine"),
            Check::warn("b", "slow", "f"),
            Check::warn("c", "slow", "f"),
        ]);
        assert!(r.passed());
        assert!(r.render().ends_with("\ncheck: 1 ok, 2 warn, 0 fail"));
        let r = Report::new(vec![Check::fail("a", "gone", "f")]);
        assert!(!r.passed());
        assert_eq!(
            r.render(),
            "fail  a            gone (fix: f)\ncheck: 0 ok, 0 warn, 1 fail"
        );
    }

    #[test]
    fn json_omits_absent_fix() {
        let v = serde_json::to_value(Check::ok("qemu", "v10")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"status": "ok", "name": "qemu", "message": "v10"})
        );
    }

    #[test]
    fn resolution_follows_the_shims_choosers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fsd = dir.path().join("virtiofsd");
        std::fs::write(&fsd, "").expect("write");
        let q = Qemu {
            path: vec![dir.path().join("no-qemu")],
            virtio_fs_daemon: vec![dir.path().join("nope"), fsd.clone()],
            vhost_user_vsock_daemon: vec![dir.path().join("nope")],
            ..Qemu::default()
        };
        let pvm = HostVirt {
            cpu_flag: false,
            kvm_usable: true,
        };
        let r = Resolved::new(&q, pvm, false);
        assert_eq!(r.accel.accel, crate::vm::qemu::cmdline::Accel::Tcg);
        assert_eq!(r.vsock, vsock::Mode::Hybrid);
        assert_eq!(r.share, ShareKind::VirtioFs);
        assert_eq!(r.virtiofsd.as_deref(), Some(fsd.as_path()));
        assert_eq!((r.qemu, r.vhost_device_vsock), (None, None));

        let q = Qemu {
            virtio_fs_daemon: vec![dir.path().join("nope")],
            ..q
        };
        let r = Resolved::new(&q, pvm, true);
        assert_eq!(r.vsock, vsock::Mode::Vhost);
        assert_eq!(r.share, ShareKind::NineP, "no virtiofsd falls back to 9p");
    }
}
