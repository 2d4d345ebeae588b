//! `kata-ctl check`: one pass over the host, one verdict per requirement.
//!
//! `fail` is kept for what stops a pod from running; what only makes pods
//! slower or picks a fallback (TCG, hybrid vsock, userspace virtio-net, 9p,
//! a guest kernel other than the host's) is a `warn` naming the fallback
//! the shim takes, so a working but degraded node exits 0.

use std::path::Path;

use super::host::{CgroupLayout, Host, TUN_DEVICE, VHOST_NET_DEVICE};
use super::image::{self, ImageFacts};
use super::qemu;
use super::{Check, Report, Resolved, load_config, path_list, vsock_name};
use crate::config::{Accel as Wanted, Loaded, Qemu, SEARCH_PATHS, SharedFs, VsockMode};
use crate::host_cgroup::CGROUP_ROOT;
use crate::logging::error_chain;
use crate::vm::accel::{self, HostVirt};
use crate::vm::qemu::cmdline::Accel;
use crate::vm::vsock::{self, VHOST_VSOCK_DEVICE};

/// Runs every check with the configuration from `explicit` (`--config`) or
/// the shim's search. A configuration the shim would refuse is the one
/// failure reported alone: judging the host against anything else would
/// describe pods that can never start.
pub fn run(explicit: Option<&Path>) -> Report {
    let loaded = match load_config(explicit) {
        Ok(l) => l,
        Err(e) => {
            return Report::new(vec![Check::fail(
                "config",
                error_chain(&e),
                "correct the file, or point --config / KATA_CONF_FILE at a valid one",
            )]);
        }
    };
    let host = Host::probe();
    let q = &loaded.config.hypervisor.qemu;
    let resolved = Resolved::new(q, host.virt, host.vhost_vsock);
    let probe = resolved.qemu.as_deref().map(qemu::probe);

    let mut checks = vec![
        config_check(&loaded),
        accel_check(q.accel, host.virt),
        vsock_check(q, &host, &resolved),
        tun_check(host.tun),
        vhost_net_check(host.vhost_net),
        virtiofsd_check(q, resolved.virtiofsd.as_deref()),
        qemu::binary_check(resolved.qemu.as_deref(), &q.path, probe.as_ref()),
    ];
    if let (vsock::Mode::Hybrid, Some(daemon)) = (resolved.vsock, &resolved.vhost_device_vsock) {
        checks.push(vsock_helper_check(daemon, &helper_version(daemon)));
    }
    if let Some(p) = probe.as_ref().filter(|p| p.version.is_ok()) {
        let needs = qemu::needed_devices(resolved.vsock, resolved.share);
        checks.push(qemu::devices_check(p, resolved.accel.accel, &needs));
    }
    checks.push(image::file_check("kernel", "kernel", &q.kernel));
    checks.push(image::file_check("initrd", "initrd", &q.initrd));
    // Without an initrd there is no image to compare: the `initrd` failure
    // above already says what to do.
    if let Some(manifest_path) = image::manifest_path(&q.initrd) {
        checks.push(image::judge(&ImageFacts {
            manifest: image::read_manifest(&manifest_path),
            manifest_path: Some(manifest_path),
            kernel_target: std::fs::canonicalize(&q.kernel).ok(),
            running_release: host.kernel_release.clone(),
            running_on_disk: host.running_kernel_on_disk,
        }));
    }
    checks.push(cgroup_check(host.cgroup, host.systemd_pid1));
    Report::new(checks)
}

fn config_check(loaded: &Loaded) -> Check {
    match &loaded.source {
        Some(_) => Check::ok("config", loaded.describe()),
        None => Check::ok(
            "config",
            format!(
                "built-in defaults (no {} set and none of {} exists)",
                crate::config::CONF_FILE_ENV,
                SEARCH_PATHS.join(", ")
            ),
        ),
    }
}

/// The accelerator the shim will use, decided by the shim's own chooser
/// from the shim's own probe.
pub fn accel_check(wanted: Wanted, host: HostVirt) -> Check {
    let choice = accel::choose(wanted, host);
    let kvm_ok = host.cpu_flag && host.kvm_usable;
    let hw_fix = match (host.cpu_flag, host.kvm_usable) {
        (true, false) => {
            "load kvm_intel or kvm_amd and let the shim (root) open /dev/kvm read-write"
        }
        (false, true) => {
            "run on a host with hardware virtualization, or enable nested VMX/SVM for this VM"
        }
        _ => "run on a host with hardware virtualization (vmx/svm) and /dev/kvm",
    };
    match (wanted, choice.accel) {
        (_, Accel::Kvm) if kvm_ok => Check::ok("accel", "KVM: vmx/svm present and /dev/kvm usable"),
        (_, Accel::Kvm) => Check::fail(
            "accel",
            format!(
                "accel = \"kvm\" is configured but this host cannot run a stock guest on KVM: {}",
                tcg_reason(host)
            ),
            format!("set accel = \"auto\" to fall back to TCG, or {hw_fix}"),
        ),
        (Wanted::Tcg, Accel::Tcg) if kvm_ok => Check::warn(
            "accel",
            "TCG: accel = \"tcg\" is configured although KVM is usable; pods boot several \
             times slower",
            "set accel = \"auto\"",
        ),
        (Wanted::Tcg, Accel::Tcg) => Check::warn(
            "accel",
            format!(
                "TCG: accel = \"tcg\" is configured and {}; pods boot several times slower",
                tcg_reason(host)
            ),
            hw_fix,
        ),
        (_, Accel::Tcg) => Check::warn(
            "accel",
            format!("TCG: {}; pods boot several times slower", tcg_reason(host)),
            hw_fix,
        ),
    }
}

fn tcg_reason(host: HostVirt) -> &'static str {
    match (host.cpu_flag, host.kvm_usable) {
        (false, true) => {
            "/dev/kvm is present but the CPU exposes no vmx/svm flag (nested KVM without \
             hardware virtualization cannot run a stock guest kernel)"
        }
        (true, false) => "the CPU has vmx/svm but /dev/kvm is missing or not usable",
        (false, false) => "the CPU exposes no vmx/svm flag and /dev/kvm is not usable",
        (true, true) => "KVM is usable",
    }
}

/// vhost-vsock where the device exists, else hybrid with a per-VM daemon,
/// which must then be installed.
pub fn vsock_check(q: &Qemu, host: &Host, r: &Resolved) -> Check {
    const DAEMON_FIX: &str = "make deps (the patched copy in vendor/vhost-device-vsock), then put \
                              it at one of those paths or list it in hypervisor.qemu.vhost_user_vsock_daemon";
    match r.vsock {
        vsock::Mode::Vhost if host.vhost_vsock_opens => Check::ok(
            "vsock",
            format!("vhost: {VHOST_VSOCK_DEVICE}, one CID reserved per VM"),
        ),
        vsock::Mode::Vhost => Check::fail(
            "vsock",
            format!("vhost vsock needs {VHOST_VSOCK_DEVICE}, which is missing or does not open"),
            "modprobe vhost_vsock, or set vsock = \"hybrid\" (needs vhost-device-vsock)",
        ),
        vsock::Mode::Hybrid => {
            let Some(daemon) = &r.vhost_device_vsock else {
                return Check::fail(
                    "vsock",
                    format!(
                        "hybrid vsock needs vhost-device-vsock, found at none of {}",
                        path_list(&q.vhost_user_vsock_daemon)
                    ),
                    DAEMON_FIX,
                );
            };
            let how = format!(
                "vhost-user-vsock-pci with one {} process per VM",
                daemon.display()
            );
            if q.vsock == VsockMode::Hybrid {
                Check::ok(
                    "vsock",
                    format!("{} (configured): {how}", vsock_name(r.vsock)),
                )
            } else {
                Check::warn(
                    "vsock",
                    format!("hybrid: no {VHOST_VSOCK_DEVICE}, so {how}"),
                    "modprobe vhost_vsock to use the kernel's vhost-vsock instead",
                )
            }
        }
    }
}

/// `<helper> --version`'s output, or why there is none.
fn helper_version(daemon: &Path) -> String {
    match std::process::Command::new(daemon).arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("cannot run: {e}"),
    }
}

/// The release of vhost-device-vsock on crates.io (0.3.0) drops a packet a
/// 6.12 guest spreads over several descriptors (any above 32 KiB): a pod's
/// output and exec replies stall. The patched copy in `vendor/` says
/// `+kata` in its version.
pub fn vsock_helper_check(daemon: &Path, version: &str) -> Check {
    if version.contains("+kata") {
        return Check::ok("vsock-helper", format!("{}: {version}", daemon.display()));
    }
    Check::fail(
        "vsock-helper",
        format!(
            "{} is `{version}`, which loses guest vsock packets above 32 KiB (a pod's output and \
             exec stall)",
            daemon.display()
        ),
        "make deps: it builds and installs the patched copy from vendor/vhost-device-vsock",
    )
}

/// Every pod with a CNI network needs a tap; without the device no such
/// pod can start.
pub fn tun_check(present: bool) -> Check {
    if present {
        Check::ok(
            "tun",
            format!("{TUN_DEVICE} present: pod interfaces get taps"),
        )
    } else {
        Check::fail(
            "tun",
            format!("no {TUN_DEVICE}: pods with a CNI network cannot start"),
            "modprobe tun (CONFIG_TUN), or create the node: mknod /dev/net/tun c 10 200",
        )
    }
}

pub fn vhost_net_check(present: bool) -> Check {
    if present {
        Check::ok("vhost-net", format!("{VHOST_NET_DEVICE} present"))
    } else {
        Check::warn(
            "vhost-net",
            format!(
                "no {VHOST_NET_DEVICE}: pod networking uses QEMU's userspace virtio-net \
                 (lower throughput, more QEMU CPU)"
            ),
            "modprobe vhost_net",
        )
    }
}

pub fn virtiofsd_check(q: &Qemu, found: Option<&Path>) -> Check {
    match (q.shared_fs, found) {
        (SharedFs::VirtioFs, Some(p)) => {
            Check::ok("virtiofsd", format!("{}: virtio-fs", p.display()))
        }
        (SharedFs::VirtioFs, None) => Check::warn(
            "virtiofsd",
            format!(
                "not found at any of {}: the shim shares with virtio-9p instead (slower, \
                 weaker POSIX semantics)",
                path_list(&q.virtio_fs_daemon)
            ),
            "cargo install --locked virtiofsd, then put it at one of those paths or list it \
             in hypervisor.qemu.virtio_fs_daemon",
        ),
        (SharedFs::Virtio9p, _) => Check::ok(
            "virtiofsd",
            "not used: shared_fs = \"virtio-9p\" is configured",
        ),
        (SharedFs::None, _) => {
            Check::ok("virtiofsd", "not used: shared_fs = \"none\" is configured")
        }
    }
}

pub fn cgroup_check(layout: CgroupLayout, systemd_pid1: bool) -> Check {
    let driver = if systemd_pid1 {
        "systemd is PID 1, so kubelet and the CRI runtime may use the systemd cgroup driver \
         (the shim expands slice:prefix:name paths itself)"
    } else {
        "systemd is not PID 1, so the systemd cgroup driver does not apply: use cgroupfs in \
         kubelet and the CRI runtime"
    };
    let what = match layout {
        CgroupLayout::V1 { hierarchies } => format!("v1 ({hierarchies} hierarchies)"),
        CgroupLayout::V2 => "v2 (unified)".to_string(),
        CgroupLayout::Hybrid { hierarchies } => {
            format!("hybrid ({hierarchies} v1 hierarchies plus a v2 tree)")
        }
        CgroupLayout::None => {
            return Check::fail(
                "cgroup",
                format!(
                    "no cgroup hierarchy is mounted under {CGROUP_ROOT}; pods cannot be placed"
                ),
                format!("mount cgroup2 on {CGROUP_ROOT} (or the v1 controllers below it)"),
            );
        }
    };
    Check::ok("cgroup", format!("{what}; {driver}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::ctl::Status;
    use crate::vm::ShareKind;

    const PVM: HostVirt = HostVirt {
        cpu_flag: false,
        kvm_usable: true,
    };
    const KVM: HostVirt = HostVirt {
        cpu_flag: true,
        kvm_usable: true,
    };

    #[test]
    fn accel_verdicts() {
        let c = accel_check(Wanted::Auto, PVM);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.starts_with("TCG: "), "{c:?}");
        assert!(c.message.contains("/dev/kvm is present"), "{c:?}");
        assert!(c.message.contains("no vmx/svm"), "{c:?}");
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("nested VMX")));

        assert_eq!(accel_check(Wanted::Auto, KVM).status, Status::Ok);
        assert_eq!(accel_check(Wanted::Kvm, KVM).status, Status::Ok);
        let c = accel_check(Wanted::Kvm, PVM);
        assert_eq!(
            c.status,
            Status::Fail,
            "forced KVM without vmx hangs the guest"
        );
        assert!(
            c.fix
                .as_deref()
                .is_some_and(|f| f.contains("accel = \"auto\""))
        );
        assert_eq!(accel_check(Wanted::Tcg, KVM).status, Status::Warn);
        assert_eq!(accel_check(Wanted::Tcg, PVM).status, Status::Warn);
    }

    fn host(vhost_vsock: bool) -> Host {
        Host {
            virt: PVM,
            vhost_vsock,
            vhost_vsock_opens: vhost_vsock,
            vhost_net: false,
            tun: true,
            kernel_release: "6.18".into(),
            running_kernel_on_disk: false,
            cgroup: CgroupLayout::V1 { hierarchies: 9 },
            systemd_pid1: false,
        }
    }

    fn resolved(vsock: vsock::Mode, daemon: Option<&str>) -> Resolved {
        Resolved {
            accel: accel::choose(Wanted::Auto, PVM),
            vsock,
            share: ShareKind::VirtioFs,
            qemu: None,
            virtiofsd: None,
            vhost_device_vsock: daemon.map(PathBuf::from),
        }
    }

    #[test]
    fn vsock_verdicts() {
        let q = Qemu::default();
        let c = vsock_check(
            &q,
            &host(false),
            &resolved(vsock::Mode::Hybrid, Some("/x/vdv")),
        );
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.message.starts_with("hybrid: no /dev/vhost-vsock"),
            "{c:?}"
        );
        assert!(c.message.contains("/x/vdv"), "{c:?}");

        let c = vsock_check(&q, &host(false), &resolved(vsock::Mode::Hybrid, None));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.message.contains("/usr/local/bin/vhost-device-vsock"),
            "{c:?}"
        );
        assert!(
            c.fix
                .as_deref()
                .is_some_and(|f| f.contains("vendor/vhost-device-vsock"))
        );
        let daemon = Path::new("/usr/local/bin/vhost-device-vsock");
        let c = vsock_helper_check(daemon, "vhost-device-vsock 0.3.0");
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("above 32 KiB"), "{c:?}");
        let c = vsock_helper_check(daemon, "vhost-device-vsock 0.3.0+kata.1");
        assert_eq!(c.status, Status::Ok, "{c:?}");

        let hybrid = Qemu {
            vsock: VsockMode::Hybrid,
            ..Qemu::default()
        };
        let c = vsock_check(
            &hybrid,
            &host(true),
            &resolved(vsock::Mode::Hybrid, Some("/x")),
        );
        assert_eq!(c.status, Status::Ok, "an explicit choice is not a warning");

        let c = vsock_check(&q, &host(true), &resolved(vsock::Mode::Vhost, None));
        assert_eq!(c.status, Status::Ok);
        let c = vsock_check(&q, &host(false), &resolved(vsock::Mode::Vhost, None));
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn fallbacks_warn_and_explicit_choices_do_not() {
        assert_eq!(tun_check(true).status, Status::Ok);
        let c = tun_check(false);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("/dev/net/tun"), "{c:?}");
        assert_eq!(vhost_net_check(true).status, Status::Ok);
        let c = vhost_net_check(false);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("userspace virtio-net"), "{c:?}");

        let q = Qemu::default();
        let c = virtiofsd_check(&q, None);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("virtio-9p instead"), "{c:?}");
        assert_eq!(
            virtiofsd_check(&q, Some(Path::new("/v"))).render(),
            "ok    virtiofsd    /v: virtio-fs"
        );
        let p9 = Qemu {
            shared_fs: SharedFs::Virtio9p,
            ..Qemu::default()
        };
        assert_eq!(virtiofsd_check(&p9, None).status, Status::Ok);
    }

    #[test]
    fn cgroup_verdicts() {
        let c = cgroup_check(CgroupLayout::V1 { hierarchies: 9 }, false);
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.message
                .starts_with("v1 (9 hierarchies); systemd is not PID 1")
        );
        assert!(
            cgroup_check(CgroupLayout::V2, true)
                .message
                .contains("systemd cgroup driver")
        );
        assert_eq!(cgroup_check(CgroupLayout::None, true).status, Status::Fail);
    }

    #[test]
    fn invalid_configuration_is_the_only_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[hypervisor.qemu]\ndefault_vcpu = 1\n").expect("write");
        let r = run(Some(&path));
        assert_eq!(r.checks.len(), 1);
        assert_eq!(r.checks[0].status, Status::Fail);
        assert!(
            r.checks[0].message.contains("default_vcpu"),
            "{:?}",
            r.checks[0]
        );
        assert!(!r.passed());
    }
}
