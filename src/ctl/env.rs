//! `kata-ctl env`: the configuration after defaults, which file it came
//! from, and what the shim resolves it to on this host (binaries, image
//! files, modes, state directories), as TOML or JSON.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::host::{Host, running_release};
use super::image::{manifest_path, read_manifest};
use super::{CtlError, Resolved, load_config, share_name, toml_out, vsock_name};
use crate::config::Config;

/// Everything `env` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Env {
    /// The file loaded; `None` means the built-in defaults.
    pub config_file: Option<PathBuf>,
    /// The `config.d/*.toml` drop-ins merged on top of it, in order.
    pub config_file_drop_ins: Vec<PathBuf>,
    pub resolved: ResolvedEnv,
    /// The whole configuration with every default filled in.
    pub config: Config,
}

/// What the configuration resolves to on this host.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedEnv {
    /// The QEMU binary the shim would start (first existing `path`).
    pub qemu: Option<PathBuf>,
    /// `kvm` or `tcg`, as `accel` resolves on this host.
    pub accel: &'static str,
    /// `vhost` or `hybrid`.
    pub vsock: &'static str,
    /// `virtio-fs`, `virtio-9p` or `none`, after the virtiofsd fallback.
    pub shared_fs: &'static str,
    pub kernel: PathBuf,
    /// `kernel` with symlinks resolved; `None` when it does not exist.
    pub kernel_target: Option<PathBuf>,
    pub initrd: PathBuf,
    pub initrd_target: Option<PathBuf>,
    /// Kernel release recorded in the image's manifest.
    pub image_kernel_release: Option<String>,
    /// `uname -r`.
    pub host_kernel_release: String,
    pub virtiofsd: Option<PathBuf>,
    pub vhost_device_vsock: Option<PathBuf>,
    /// Per-sandbox sockets ([`crate::layout::RUN_ROOT`]).
    pub run_root: &'static str,
    /// Per-sandbox shared directories ([`crate::layout::SHARE_ROOT`]).
    pub share_root: &'static str,
    /// Per-sandbox state for `delete` after a crash
    /// ([`crate::layout::PERSIST_ROOT`]).
    pub persist_root: &'static str,
}

impl Env {
    /// Loads the configuration as the shim would (see
    /// [`super::load_config`]) and resolves it on this host.
    pub fn gather(explicit: Option<&Path>) -> Result<Env, CtlError> {
        let loaded = load_config(explicit)?;
        let host = Host::probe();
        let r = Resolved::new(&loaded.config.hypervisor.qemu, host.virt, host.vhost_vsock);
        let mut env = Env::resolve(loaded.source, loaded.config, &r);
        env.config_file_drop_ins = loaded.drop_ins;
        Ok(env)
    }

    fn resolve(config_file: Option<PathBuf>, config: Config, r: &Resolved) -> Env {
        Env {
            config_file,
            config_file_drop_ins: Vec::new(),
            resolved: resolved_env(&config, r),
            config,
        }
    }

    pub fn to_json(&self) -> Result<String, CtlError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// TOML: the file and resolved values first, then the configuration
    /// under `[config.*]`, so the document mirrors the JSON.
    pub fn to_toml(&self) -> Result<String, CtlError> {
        let head = serde_json::json!({
            "config_file": self.config_file,
            "config_file_drop_ins": self.config_file_drop_ins,
            "resolved": self.resolved,
        });
        let tail = serde_json::json!({ "config": self.config });
        let mut out = toml_out::render(&head).map_err(CtlError::Toml)?;
        out.push('\n');
        out.push_str(&toml_out::render(&tail).map_err(CtlError::Toml)?);
        Ok(out)
    }
}

fn resolved_env(config: &Config, r: &Resolved) -> ResolvedEnv {
    let q = &config.hypervisor.qemu;
    let image_kernel_release = manifest_path(&q.initrd)
        .and_then(|p| read_manifest(&p).ok())
        .map(|m| m.kernel_release);
    ResolvedEnv {
        qemu: r.qemu.clone(),
        accel: r.accel.accel.as_str(),
        vsock: vsock_name(r.vsock),
        shared_fs: share_name(r.share),
        kernel: q.kernel.clone(),
        kernel_target: std::fs::canonicalize(&q.kernel).ok(),
        initrd: q.initrd.clone(),
        initrd_target: std::fs::canonicalize(&q.initrd).ok(),
        image_kernel_release,
        host_kernel_release: running_release(),
        virtiofsd: r.virtiofsd.clone(),
        vhost_device_vsock: r.vhost_device_vsock.clone(),
        run_root: crate::layout::RUN_ROOT,
        share_root: crate::layout::SHARE_ROOT,
        persist_root: crate::layout::PERSIST_ROOT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::accel::HostVirt;

    fn env() -> Env {
        let config = Config::default();
        let virt = HostVirt {
            cpu_flag: false,
            kvm_usable: true,
        };
        let r = Resolved::new(&config.hypervisor.qemu, virt, false);
        Env::resolve(Some("/etc/k.toml".into()), config, &r)
    }

    #[test]
    fn json_names_the_file_the_modes_and_the_roots() {
        let v: serde_json::Value =
            serde_json::from_str(&env().to_json().expect("json")).expect("parses");
        assert_eq!(v["config_file"], "/etc/k.toml");
        assert_eq!(v["config_file_drop_ins"], serde_json::json!([]));
        assert_eq!(v["resolved"]["accel"], "tcg");
        assert_eq!(v["resolved"]["vsock"], "hybrid");
        assert_eq!(v["resolved"]["run_root"], crate::layout::RUN_ROOT);
        assert_eq!(v["resolved"]["persist_root"], crate::layout::PERSIST_ROOT);
        assert_eq!(v["config"]["hypervisor"]["qemu"]["machine_type"], "q35");
    }

    #[test]
    fn toml_holds_the_same_data() {
        let text = env().to_toml().expect("toml");
        assert!(
            text.starts_with("config_file = \"/etc/k.toml\"\n"),
            "{text}"
        );
        let t: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(t["resolved"]["accel"].as_str(), Some("tcg"));
        assert!(t["config"]["hypervisor"]["qemu"].is_table());
        // The [config.*] sections are the configuration file's sections.
        let at = text.find("[config.").expect("config sections");
        let config = text[at..].replace("[config.", "[");
        let back = Config::from_toml(&config, Path::new("env")).expect("config parses back");
        assert_eq!(back, Config::default());
    }
}
