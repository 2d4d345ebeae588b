//! Asking the configured QEMU what it is and what it has: `--version`,
//! `-device help` and `-accel help`, and judging that against the devices
//! the resolved modes put on a pod VM's command line.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Check, path_list};
use crate::vm::qemu::cmdline::Accel;
use crate::vm::{ShareKind, vsock};

/// A QEMU that does not answer `help` in this long is broken for our needs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const QEMU_HINT: &str = "apt-get install -t bookworm-backports qemu-system-x86";

/// What the binary said; each error is a sentence for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub version: Result<String, String>,
    pub devices: Result<BTreeSet<String>, String>,
    pub accels: Result<Vec<String>, String>,
}

/// Runs the three queries against `bin`.
pub fn probe(bin: &Path) -> Probe {
    Probe {
        version: run(bin, &["--version"]).and_then(|out| {
            parse_version(&out).ok_or_else(|| "`--version` printed nothing".to_string())
        }),
        devices: run(bin, &["-device", "help"]).map(|out| parse_devices(&out)),
        accels: run(bin, &["-accel", "help"]).map(|out| parse_accels(&out)),
    }
}

/// Stdout of `bin args`, bounded by [`PROBE_TIMEOUT`]. Output is drained on
/// threads so a chatty binary cannot block on a full pipe while we wait.
fn run(bin: &Path, args: &[&str]) -> Result<String, String> {
    let shown = format!("{} {}", bin.display(), args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not finish within {}s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for `{shown}`: {e}")),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("`{shown}` failed ({status}): {}", stderr.trim()))
    }
}

/// First line of `--version` (`QEMU emulator version 10.0.2 (...)`).
pub fn parse_version(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Device names from `-device help` lines such as
/// `name "virtio-net-pci", bus PCI, alias "virtio-net"`.
pub fn parse_devices(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("name \""))
        .filter_map(|rest| rest.split_once('"'))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Accelerator names from `-accel help` (a header line, then one per line).
pub fn parse_accels(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .map(str::to_string)
        .collect()
}

/// One device the VM's argv will name, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub device: &'static str,
    pub why: &'static str,
}

/// The devices a pod VM gets in the resolved modes (see
/// `vm::qemu::cmdline`); only these can fail the check.
pub fn needed_devices(vsock: vsock::Mode, share: ShareKind) -> Vec<Need> {
    let need = |device, why| Need { device, why };
    let mut v = vec![
        need("virtio-serial-pci", "console"),
        need("virtconsole", "console"),
        need("virtio-rng-pci", "guest entropy"),
        need("virtio-net-pci", "pod network"),
    ];
    v.push(match vsock {
        vsock::Mode::Vhost => need("vhost-vsock-pci", "vhost vsock"),
        vsock::Mode::Hybrid => need("vhost-user-vsock-pci", "hybrid vsock"),
    });
    match share {
        ShareKind::VirtioFs => v.push(need("vhost-user-fs-pci", "virtio-fs share")),
        ShareKind::NineP => v.push(need("virtio-9p-pci", "9p share")),
        ShareKind::None => {}
    }
    v
}

/// The `qemu` line: which binary, and its version.
pub fn binary_check(found: Option<&Path>, tried: &[PathBuf], probe: Option<&Probe>) -> Check {
    let Some(bin) = found else {
        return Check::fail(
            "qemu",
            format!(
                "no QEMU binary at any of hypervisor.qemu.path ({})",
                path_list(tried)
            ),
            format!("{QEMU_HINT}, or list your QEMU binary in hypervisor.qemu.path"),
        );
    };
    match probe.map(|p| &p.version) {
        Some(Ok(v)) => Check::ok("qemu", format!("{}: {v}", bin.display())),
        Some(Err(e)) => Check::fail(
            "qemu",
            e.clone(),
            format!("{QEMU_HINT}, or list a working QEMU in hypervisor.qemu.path"),
        ),
        None => Check::fail("qemu", format!("{} was not run", bin.display()), QEMU_HINT),
    }
}

/// The `qemu-devices` line: the accelerator and every needed device.
pub fn devices_check(probe: &Probe, accel: Accel, needs: &[Need]) -> Check {
    let (devices, accels) = match (&probe.devices, &probe.accels) {
        (Ok(d), Ok(a)) => (d, a),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                "qemu-devices",
                e.clone(),
                format!("{QEMU_HINT}, or list a working QEMU in hypervisor.qemu.path"),
            );
        }
    };
    let mut missing: Vec<String> = Vec::new();
    if !accels.iter().any(|a| a == accel.as_str()) {
        missing.push(format!("accelerator {} (the chosen accel)", accel.as_str()));
    }
    for n in needs {
        if !devices.contains(n.device) {
            missing.push(format!("{} ({})", n.device, n.why));
        }
    }
    if !missing.is_empty() {
        return Check::fail(
            "qemu-devices",
            format!("this QEMU lacks {}", missing.join(", ")),
            format!("{QEMU_HINT} (a full system emulator build)"),
        );
    }
    let names: Vec<&str> = needs.iter().map(|n| n.device).collect();
    Check::ok(
        "qemu-devices",
        format!("accel {}; {}", accel.as_str(), names.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::Status;

    /// Excerpt of QEMU 10.0's `-device help` on Debian.
    const DEVICE_HELP: &str = r#"Controller/Bridge/Hub devices:
name "pcie-root-port", bus PCI, desc "PCI Express Root Port"

Storage devices:
name "vhost-user-fs-pci", bus PCI
name "virtio-9p-pci", bus PCI, alias "virtio-9p"

Network devices:
name "virtio-net-pci", bus PCI, alias "virtio-net"

Input devices:
name "virtconsole", bus virtio-serial-bus
name "virtio-serial-pci", bus PCI, alias "virtio-serial"

Misc devices:
name "vhost-user-vsock-pci", bus PCI
name "vhost-vsock-pci", bus PCI
name "virtio-rng-pci", bus PCI, alias "virtio-rng"
"#;
    const ACCEL_HELP: &str = "Accelerators supported in QEMU binary:\ntcg\nkvm\n";

    fn probe_of(devices: &str, accels: &str) -> Probe {
        Probe {
            version: Ok("QEMU emulator version 10.0.2".into()),
            devices: Ok(parse_devices(devices)),
            accels: Ok(parse_accels(accels)),
        }
    }

    #[test]
    fn parses_help_output() {
        let d = parse_devices(DEVICE_HELP);
        assert!(d.contains("virtio-net-pci") && d.contains("virtconsole"));
        assert!(d.contains("pcie-root-port"));
        assert!(!d.iter().any(|n| n.contains(' ') || n.contains('"')));
        assert_eq!(parse_accels(ACCEL_HELP), vec!["tcg", "kvm"]);
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian)\nCopyright\n").as_deref(),
            Some("QEMU emulator version 10.0.2 (Debian)")
        );
        assert_eq!(parse_version("\n"), None);
    }

    #[test]
    fn needs_follow_the_modes() {
        let names = |v: vsock::Mode, s| {
            needed_devices(v, s)
                .iter()
                .map(|n| n.device)
                .collect::<Vec<_>>()
        };
        let hybrid_fs = names(vsock::Mode::Hybrid, ShareKind::VirtioFs);
        assert!(hybrid_fs.contains(&"vhost-user-vsock-pci"));
        assert!(hybrid_fs.contains(&"vhost-user-fs-pci"));
        assert!(!hybrid_fs.contains(&"vhost-vsock-pci"));
        let vhost_9p = names(vsock::Mode::Vhost, ShareKind::NineP);
        assert!(vhost_9p.contains(&"vhost-vsock-pci"));
        assert!(vhost_9p.contains(&"virtio-9p-pci"));
        assert!(!vhost_9p.contains(&"vhost-user-fs-pci"));
        let none = names(vsock::Mode::Vhost, ShareKind::None);
        assert!(!none.iter().any(|d| d.contains("9p") || d.contains("fs")));
    }

    #[test]
    fn devices_fail_only_for_what_is_needed() {
        // No 9p device: fine while virtio-fs is used.
        let no_9p = DEVICE_HELP.replace("name \"virtio-9p-pci\", bus PCI, alias \"virtio-9p\"", "");
        let p = probe_of(&no_9p, ACCEL_HELP);
        let fs = needed_devices(vsock::Mode::Hybrid, ShareKind::VirtioFs);
        let c = devices_check(&p, Accel::Tcg, &fs);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.message.starts_with("accel tcg; "), "{c:?}");

        let p9 = needed_devices(vsock::Mode::Hybrid, ShareKind::NineP);
        let c = devices_check(&p, Accel::Tcg, &p9);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("virtio-9p-pci (9p share)"), "{c:?}");

        let tcg_only = probe_of(DEVICE_HELP, "Accelerators supported in QEMU binary:\ntcg\n");
        let c = devices_check(&tcg_only, Accel::Kvm, &fs);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("accelerator kvm"), "{c:?}");
    }

    #[test]
    fn binary_line() {
        let tried = [PathBuf::from("/a/qemu"), PathBuf::from("/b/qemu")];
        let c = binary_check(None, &tried, None);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("/a/qemu, /b/qemu"), "{c:?}");
        assert!(c.fix.expect("fix").contains("qemu-system-x86"));

        let p = probe_of(DEVICE_HELP, ACCEL_HELP);
        let c = binary_check(Some(Path::new("/b/qemu")), &tried, Some(&p));
        assert_eq!(
            c.render(),
            "ok    qemu         /b/qemu: QEMU emulator version 10.0.2"
        );
    }

    #[test]
    fn running_a_missing_or_failing_binary_is_an_error_sentence() {
        let e = run(Path::new("/nonexistent/qemu"), &["--version"]).expect_err("missing");
        assert!(
            e.contains("cannot run `/nonexistent/qemu --version`"),
            "{e}"
        );
        let e = run(Path::new("/bin/false"), &[]).expect_err("fails");
        assert!(e.contains("failed"), "{e}");
        assert_eq!(run(Path::new("/bin/echo"), &["hi"]).as_deref(), Ok("hi\n"));
    }
}
