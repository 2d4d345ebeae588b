//! The guest kernel command line: the kernel's options, the operator's
//! `kernel_params`, then the `agent.*` keys that configure the agent.
//!
//! The order is a security property. The agent takes a key's last value
//! (as the kernel does), so the keys the shim writes (`agent.log`,
//! `agent.shared_fs`, `agent.debug_console`) come after `kernel_params`:
//! an operator's parameters can add kernel options and the agent keys the
//! shim does not write (`agent.device_timeout`), but cannot override what
//! the shim tells the agent. `agent.debug_console` is always written, `=0`
//! unless the configuration enables it, so no earlier part of the line can
//! switch the root shell on. The configuration refuses `--` and quotes in
//! `kernel_params` (`config::validate`): either would make the kernel and
//! the agent stop reading, or read the shim's keys as part of a value.

use kata_agent_protocol::cmdline as keys;

use crate::config::LogLevel;
use crate::vm::qemu::cmdline::{Accel, ShareDevice};

/// Inputs of the guest kernel command line.
#[derive(Debug, Clone)]
pub struct KernelCmdline<'a> {
    /// The guest's clock source depends on it (see `render`).
    pub accel: Accel,
    /// vCPUs online at boot (`maxcpus=`).
    pub vcpus: u32,
    /// vCPUs present in the VM (`nr_cpus=`); those above `vcpus` stay
    /// offline until the agent onlines them (OnlineCPUMem).
    pub max_vcpus: u32,
    pub debug: bool,
    pub agent_log: LogLevel,
    /// `[agent.kata] debug_console_enabled`: `agent.debug_console=1`, else `=0`.
    pub debug_console: bool,
    pub share: &'a ShareDevice,
    /// `kernel_params` from the configuration: after the kernel options,
    /// before the agent keys the shim writes (see the module doc).
    pub extra: &'a str,
}

impl KernelCmdline<'_> {
    /// The `-append` string.
    pub fn render(&self) -> String {
        // Under KVM the guest keeps time with kvm-clock and the TSC is
        // trustworthy. Under TCG the kernel calibrates the emulated TSC at
        // boot, and on a loaded host that calibration goes wrong: with ten
        // pods booting on two cores one guest ran 69 s ahead within a
        // minute, and its ttrpc deadlines expired early. The emulated HPET
        // keeps host time (every guest within 1 s in the same test), so it
        // keeps the wall clock. `tsc=reliable` stays in both cases: without
        // it an SMP guest's TSC sync check marks the TSC unstable, and the
        // kernel's live code patching that follows oopsed (int3 in
        // sched_clock_cpu) under TCG with 2 vCPUs.
        let clock: &[&str] = match self.accel {
            Accel::Kvm => &["tsc=reliable"],
            Accel::Tcg => &["tsc=reliable", "clocksource=hpet"],
        };
        let mut p: Vec<String> = clock.iter().map(|s| s.to_string()).collect();
        p.extend(
            [
                "no_timer_check",
                "rcupdate.rcu_expedited=1",
                "i8042.direct=1",
                "i8042.dumbkbd=1",
                "i8042.nopnp=1",
                "i8042.noaux=1",
                "noreplace-smp",
                "reboot=k",
                "console=hvc0",
                "cryptomgr.notests",
                "net.ifnames=0",
                "pci=lastbus=0",
                "panic=1",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // Every vCPU the VM may grow to is present from boot, and only the
        // boot count is brought up. QEMU's ACPI CPU hotplug cannot be used
        // instead: Linux 6.12 counts MADT entries of absent CPUs as
        // hot-pluggable only on a hypervisor it recognises, and under TCG
        // it recognises none, so a hot-added CPU is refused ("Unable to map
        // lapic to logical cpu number"). A present, offline vCPU costs a
        // halted thread and its per-CPU areas, and is onlined in seconds.
        p.push(format!("nr_cpus={}", self.max_vcpus.max(self.vcpus)));
        if self.max_vcpus > self.vcpus {
            p.push(format!("maxcpus={}", self.vcpus));
        }
        // Hot-added DIMMs come up movable, so their memory can be offlined
        // and the DIMM unplugged when the VM shrinks again.
        p.push("memhp_default_state=online_movable".to_string());
        // The kernel's own chatter slows a TCG boot and floods the log; keep
        // it for debugging only.
        p.push(if self.debug { "debug" } else { "quiet" }.to_string());
        let extra = self.extra.split_whitespace().map(str::to_string);
        p.extend(extra);
        p.push(format!("{}={}", keys::LOG_LEVEL, self.agent_log.as_str()));
        p.push(format!("{}={}", keys::SHARED_FS, self.share.agent_value()));
        p.push(format!(
            "{}={}",
            keys::DEBUG_CONSOLE,
            if self.debug_console { 1 } else { 0 }
        ));
        p.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value the agent reads for `key`: its last occurrence.
    fn last<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        cmdline
            .split_whitespace()
            .filter_map(|p| p.split_once('=').filter(|(k, _)| *k == key))
            .map(|(_, v)| v)
            .next_back()
    }

    #[test]
    fn kernel_params_cannot_override_the_agent_keys() {
        let share = ShareDevice::VirtioFs {
            socket: "/s".into(),
        };
        let c = KernelCmdline {
            accel: Accel::Kvm,
            vcpus: 1,
            max_vcpus: 1,
            debug: false,
            agent_log: LogLevel::Warn,
            debug_console: false,
            share: &share,
            extra: "agent.debug_console agent.log=trace agent.shared_fs=none \
                    agent.device_timeout=9 console=ttyS0",
        }
        .render();
        assert_eq!(last(&c, keys::LOG_LEVEL), Some("warn"), "{c}");
        assert_eq!(last(&c, keys::DEBUG_CONSOLE), Some("0"), "{c}");
        assert_eq!(last(&c, keys::SHARED_FS), Some(share.agent_value()), "{c}");
        // A key the shim does not write stays the operator's.
        assert_eq!(last(&c, "agent.device_timeout"), Some("9"), "{c}");
        // Every agent key the shim writes comes after the operator's part.
        let extra_end = c.find("console=ttyS0").expect("extra kept") + "console=ttyS0".len();
        for key in [keys::LOG_LEVEL, keys::SHARED_FS, keys::DEBUG_CONSOLE] {
            let shim = c.rfind(&format!("{key}=")).expect("key written");
            assert!(shim > extra_end, "{key} before kernel_params: {c}");
        }
    }

    #[test]
    fn kernel_cmdline_shape() {
        let share = ShareDevice::VirtioFs {
            socket: "/s".into(),
        };
        let c = KernelCmdline {
            accel: Accel::Kvm,
            vcpus: 2,
            max_vcpus: 2,
            debug: false,
            agent_log: LogLevel::Debug,
            debug_console: false,
            share: &share,
            extra: " foo=1  bar ",
        }
        .render();
        assert_eq!(
            c,
            "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 \
             i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=hvc0 cryptomgr.notests \
             net.ifnames=0 pci=lastbus=0 panic=1 nr_cpus=2 memhp_default_state=online_movable quiet foo=1 bar agent.log=debug \
             agent.shared_fs=virtiofs agent.debug_console=0"
        );
        let d = KernelCmdline {
            accel: Accel::Tcg,
            vcpus: 1,
            max_vcpus: 1,
            debug: true,
            agent_log: LogLevel::Info,
            debug_console: false,
            share: &ShareDevice::None,
            extra: "",
        }
        .render();
        assert!(d.contains(" debug ") && !d.contains("quiet"));
        assert!(
            d.ends_with("agent.shared_fs=none agent.debug_console=0"),
            "{d}"
        );
        // TCG's calibrated TSC drifts on a loaded host: the HPET keeps the
        // wall clock, and the TSC stays reliable for the scheduler clock.
        assert!(d.starts_with("tsc=reliable clocksource=hpet "), "{d}");
    }

    #[test]
    fn debug_console_key_is_always_explicit_and_last() {
        let render = |debug_console| {
            KernelCmdline {
                accel: Accel::Tcg,
                vcpus: 1,
                max_vcpus: 1,
                debug: false,
                agent_log: LogLevel::Info,
                debug_console,
                share: &ShareDevice::None,
                extra: "",
            }
            .render()
        };
        // Written either way: a bare `agent.debug_console` earlier on the
        // line (the agent reads the last value) cannot switch it on.
        let off = render(false);
        assert!(off.ends_with(" agent.debug_console=0"), "{off}");
        let on = render(true);
        assert!(on.ends_with(" agent.debug_console=1"), "{on}");
        assert_eq!(keys::DEBUG_CONSOLE, "agent.debug_console");
    }
}
