//! Choosing KVM or TCG.
//!
//! `accel = "auto"` takes KVM only where a stock guest kernel can run on it:
//! the CPU must expose hardware virtualization (`vmx`/`svm`) and `/dev/kvm`
//! must open read-write. Nested set-ups such as PVM expose `/dev/kvm` without
//! `vmx`, and a stock kernel hangs there, so they get TCG with one warning.

use std::path::Path;

use crate::config::Accel as Wanted;
use crate::vm::qemu::cmdline::Accel;

/// What the host offers, gathered once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVirt {
    /// `vmx` or `svm` among the CPU flags.
    pub cpu_flag: bool,
    /// `/dev/kvm` exists and opens read-write.
    pub kvm_usable: bool,
}

impl HostVirt {
    /// Probes `/proc/cpuinfo` and `/dev/kvm`.
    pub fn probe() -> HostVirt {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostVirt {
            cpu_flag: cpu_has_virt_flag(&cpuinfo),
            kvm_usable: kvm_opens(Path::new("/dev/kvm")),
        }
    }
}

/// True when any `flags` line of a cpuinfo text lists `vmx` or `svm`.
pub fn cpu_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn kvm_opens(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}

/// The decision, with the warning to log once when TCG is chosen by `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub warning: Option<String>,
}

/// Resolves the configured acceleration against the host.
pub fn choose(wanted: Wanted, host: HostVirt) -> Choice {
    match wanted {
        Wanted::Kvm => Choice {
            accel: Accel::Kvm,
            warning: None,
        },
        Wanted::Tcg => Choice {
            accel: Accel::Tcg,
            warning: None,
        },
        Wanted::Auto if host.cpu_flag && host.kvm_usable => Choice {
            accel: Accel::Kvm,
            warning: None,
        },
        Wanted::Auto => {
            let why = match (host.cpu_flag, host.kvm_usable) {
                (false, true) => {
                    "/dev/kvm is present but the CPU exposes no vmx/svm flag (nested KVM without hardware virtualization cannot run a stock guest kernel)"
                }
                (true, false) => "the CPU has vmx/svm but /dev/kvm is missing or not usable",
                _ => "the CPU exposes no vmx/svm flag and /dev/kvm is not usable",
            };
            Choice {
                accel: Accel::Tcg,
                warning: Some(format!(
                    "hardware virtualization unavailable: {why}; using TCG software emulation, pods boot several times slower"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_only_in_flags_lines() {
        assert!(cpu_has_virt_flag(
            "processor : 0\nflags : fpu vme vmx sse\n"
        ));
        assert!(cpu_has_virt_flag("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virt_flag(
            "flags : fpu vmxx sse\nmodel name : vmx box\n"
        ));
        assert!(!cpu_has_virt_flag(""));
    }

    #[test]
    fn table() {
        let rows = [
            (Wanted::Auto, true, true, Accel::Kvm, false),
            (Wanted::Auto, false, true, Accel::Tcg, true),
            (Wanted::Auto, true, false, Accel::Tcg, true),
            (Wanted::Auto, false, false, Accel::Tcg, true),
            (Wanted::Kvm, false, false, Accel::Kvm, false),
            (Wanted::Tcg, true, true, Accel::Tcg, false),
        ];
        for (wanted, cpu_flag, kvm_usable, accel, warns) in rows {
            let c = choose(
                wanted,
                HostVirt {
                    cpu_flag,
                    kvm_usable,
                },
            );
            assert_eq!(c.accel, accel, "{wanted:?} {cpu_flag} {kvm_usable}");
            assert_eq!(
                c.warning.is_some(),
                warns,
                "{wanted:?} {cpu_flag} {kvm_usable}"
            );
        }
        let w = choose(
            Wanted::Auto,
            HostVirt {
                cpu_flag: false,
                kvm_usable: true,
            },
        );
        assert!(w.warning.expect("warns").contains("TCG"));
    }
}
