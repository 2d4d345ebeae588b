//! The QEMU command line: a typed description of one pod VM turned into an
//! argv. The guest kernel command line it carries is built in
//! `kernel_cmdline`, the NICs' arguments in `nic`.
//!
//! Everything here is pure, so the whole matrix (KVM/TCG × vhost/hybrid
//! vsock × virtio-fs/9p) is table-tested without starting anything.

use std::os::fd::RawFd;
use std::path::PathBuf;

use kata_agent_protocol::{guest, shared_fs};

/// Acceleration after `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The guest's vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// Kernel vhost-vsock: the fd of `/dev/vhost-vsock` that holds the CID.
    Vhost { vhostfd: RawFd, cid: u64 },
    /// vhost-user-vsock: the control socket of the per-VM vhost-device-vsock.
    Hybrid { socket: PathBuf },
}

/// The sandbox share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareDevice {
    /// vhost-user-fs: the socket of the per-VM virtiofsd.
    VirtioFs {
        socket: PathBuf,
    },
    /// virtio-9p served by QEMU from a host directory.
    NineP {
        dir: PathBuf,
    },
    None,
}

impl ShareDevice {
    /// The `agent.shared_fs=` value that tells the agent what to mount.
    pub fn agent_value(&self) -> &'static str {
        match self {
            ShareDevice::VirtioFs { .. } => shared_fs::VIRTIOFS,
            ShareDevice::NineP { .. } => shared_fs::NINE_P,
            ShareDevice::None => shared_fs::NONE,
        }
    }
}

/// Everything that shapes one VM's argv.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub sandbox_id: String,
    pub uuid: String,
    pub machine_type: String,
    pub accel: Accel,
    /// TCG translation cache in MiB (`-accel tcg,tb-size=`); 0 leaves
    /// QEMU's default. Not used under KVM.
    pub tcg_tb_size_mib: u32,
    /// vCPUs online at boot.
    pub vcpus: u32,
    /// vCPUs present (`-smp`): the most the VM can grow to.
    pub max_vcpus: u32,
    pub memory_mib: u32,
    /// DIMM slots for hot-added memory; 0 (or `max_memory_mib` not above
    /// `memory_mib`): no memory hotplug.
    pub memory_slots: u32,
    /// The most memory (MiB) the VM can grow to (`maxmem`).
    pub max_memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_cmdline: String,
    pub qmp_socket: PathBuf,
    /// `-sandbox` (QEMU's seccomp filter); empty: none.
    pub seccomp_sandbox: String,
    /// `None` only for the benchmark's raw boot, which has no agent.
    pub vsock: Option<VsockDevice>,
    pub share: ShareDevice,
}

/// Id of the guest memory backend; `-machine memory-backend=` refers to it.
const MEM_ID: &str = "entire-guest-memory";

impl QemuSpec {
    /// The argv after the binary name.
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::with_capacity(48);
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));

        push(&["-name", &format!("sandbox-{}", self.sandbox_id)]);
        push(&["-uuid", &self.uuid]);
        // QEMU installs the filter after parsing its options and before the
        // guest runs: everything the guest can reach is filtered.
        if !self.seccomp_sandbox.is_empty() {
            push(&["-sandbox", &self.seccomp_sandbox]);
        }
        // tb-size is a property of the TCG accelerator object, which only
        // `-accel` can set; QEMU refuses `-accel` next to `-machine accel=`,
        // so the accelerator is named in exactly one of the two places.
        let tb_size = match self.accel {
            Accel::Tcg if self.tcg_tb_size_mib > 0 => Some(self.tcg_tb_size_mib),
            _ => None,
        };
        let mut machine = self.machine_type.clone();
        match tb_size {
            Some(mib) => push(&["-accel", &format!("tcg,tb-size={mib}")]),
            None => machine.push_str(&format!(",accel={}", self.accel.as_str())),
        }
        if self.accel == Accel::Kvm {
            machine.push_str(",kernel_irqchip=on");
        }
        machine.push_str(&format!(",memory-backend={MEM_ID}"));
        push(&["-machine", &machine]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host,pmu=off"]);
        }
        // All of them present; the guest's `maxcpus=` keeps the extra ones
        // offline (see `kernel_cmdline`).
        push(&["-smp", &self.max_vcpus.max(self.vcpus).to_string()]);
        if self.memory_slots > 0 && self.max_memory_mib > self.memory_mib {
            push(&[
                "-m",
                &format!(
                    "{}M,slots={},maxmem={}M",
                    self.memory_mib, self.memory_slots, self.max_memory_mib
                ),
            ]);
        } else {
            push(&["-m", &format!("{}M", self.memory_mib)]);
        }
        // vhost-user devices (vsock, virtio-fs) need guest memory that other
        // processes can map, hence a shared memfd.
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id={MEM_ID},size={}M,share=on",
                self.memory_mib
            ),
        ]);
        push(&["-kernel", &self.kernel.to_string_lossy()]);
        push(&["-initrd", &self.initrd.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", self.qmp_socket.display()),
        ]);
        push(&["-rtc", "base=utc,clock=host,driftfix=slew"]);
        push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        push(&["-device", "virtio-rng-pci,rng=rng0"]);
        // The console is QEMU's stdout, read by the shim and re-logged with
        // the sandbox id; stdin is /dev/null.
        push(&["-device", "virtio-serial-pci,id=serial0"]);
        push(&["-device", "virtconsole,chardev=charconsole0,id=console0"]);
        push(&["-chardev", "stdio,id=charconsole0,signal=off"]);
        match &self.vsock {
            None => {}
            Some(VsockDevice::Vhost { vhostfd, cid }) => push(&[
                "-device",
                &format!("vhost-vsock-pci,id=vsock-{cid},guest-cid={cid},vhostfd={vhostfd}"),
            ]),
            Some(VsockDevice::Hybrid { socket }) => {
                push(&[
                    "-chardev",
                    &format!("socket,id=charvsock0,path={}", socket.display()),
                ]);
                push(&[
                    "-device",
                    "vhost-user-vsock-pci,chardev=charvsock0,id=vsock0",
                ]);
            }
        }
        match &self.share {
            ShareDevice::VirtioFs { socket } => {
                push(&[
                    "-chardev",
                    &format!("socket,id=charfs0,path={}", socket.display()),
                ]);
                push(&[
                    "-device",
                    &format!(
                        "vhost-user-fs-pci,chardev=charfs0,tag={},queue-size=1024",
                        guest::SHARED_FS_TAG
                    ),
                ]);
            }
            ShareDevice::NineP { dir } => {
                push(&[
                    "-fsdev",
                    &format!(
                        "local,id=fs9p0,path={},security_model=none,multidevs=remap",
                        dir.display()
                    ),
                ]);
                push(&[
                    "-device",
                    &format!(
                        "virtio-9p-pci,fsdev=fs9p0,mount_tag={}",
                        guest::SHARED_FS_TAG
                    ),
                ]);
            }
            ShareDevice::None => {}
        }
        push(&[
            "-vga",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
        ]);
        a
    }
}

/// A stable RFC 4122-shaped UUID (version 5 layout, SHA-256 based) derived
/// from the sandbox id, so `-uuid` can be traced back to the sandbox.
pub fn sandbox_uuid(sandbox_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("kata-sandbox:{sandbox_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogLevel;
    use crate::vm::qemu::kernel_cmdline::KernelCmdline;

    fn spec(accel: Accel, vsock: VsockDevice, share: ShareDevice) -> QemuSpec {
        let cmdline = KernelCmdline {
            accel,
            vcpus: 1,
            max_vcpus: 1,
            debug: false,
            agent_log: LogLevel::Info,
            debug_console: false,
            share: &share,
            extra: "",
        }
        .render();
        QemuSpec {
            sandbox_id: "abc".into(),
            uuid: sandbox_uuid("abc"),
            machine_type: "q35".into(),
            accel,
            tcg_tb_size_mib: 64,
            vcpus: 1,
            max_vcpus: 1,
            memory_slots: 0,
            max_memory_mib: 0,
            memory_mib: 2048,
            kernel: "/k".into(),
            initrd: "/i".into(),
            kernel_cmdline: cmdline,
            qmp_socket: "/run/kata/abc/qmp.sock".into(),
            seccomp_sandbox: crate::config::DEFAULT_SECCOMP_SANDBOX.into(),
            vsock: Some(vsock),
            share,
        }
    }

    #[test]
    fn growth_makes_every_vcpu_present_and_memory_hotpluggable_on_kvm_and_tcg() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            let mut s = spec(
                accel,
                VsockDevice::Hybrid {
                    socket: "/v".into(),
                },
                ShareDevice::None,
            );
            let boot = s.to_args();
            assert_eq!(values(&boot, "-smp"), ["1"], "{accel:?}");
            assert_eq!(values(&boot, "-m"), ["2048M"], "{accel:?}");
            s.max_vcpus = 4;
            s.memory_slots = 10;
            s.max_memory_mib = 8192;
            s.kernel_cmdline = KernelCmdline {
                accel,
                vcpus: 1,
                max_vcpus: 4,
                debug: false,
                agent_log: LogLevel::Info,
                debug_console: false,
                share: &ShareDevice::None,
                extra: "",
            }
            .render();
            let a = s.to_args();
            assert_eq!(values(&a, "-smp"), ["4"], "{accel:?}");
            assert_eq!(
                values(&a, "-m"),
                ["2048M,slots=10,maxmem=8192M"],
                "{accel:?}"
            );
            // The boot memory stays one shared memfd of the boot size.
            assert!(
                values(&a, "-object")
                    .contains(&"memory-backend-memfd,id=entire-guest-memory,size=2048M,share=on"),
                "{accel:?}: {a:?}"
            );
            let append = values(&a, "-append")[0];
            assert!(append.contains("nr_cpus=4 maxcpus=1 "), "{append}");
            assert!(
                append.contains("memhp_default_state=online_movable"),
                "{append}"
            );
            // No slots: no hotplug, whatever maxmem says.
            s.memory_slots = 0;
            assert_eq!(values(&s.to_args(), "-m"), ["2048M"], "{accel:?}");
        }
    }

    /// The value following `flag` each time it occurs.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn matrix() {
        let vhost = VsockDevice::Vhost {
            vhostfd: 7,
            cid: 42,
        };
        let hybrid = VsockDevice::Hybrid {
            socket: "/run/kata/abc/vhost-vsock.sock".into(),
        };
        let fs = ShareDevice::VirtioFs {
            socket: "/run/kata/abc/virtiofsd.sock".into(),
        };
        let p9 = ShareDevice::NineP {
            dir: "/run/kata-containers/shared/sandboxes/abc".into(),
        };
        struct Row {
            accel: Accel,
            vsock: VsockDevice,
            share: ShareDevice,
            machine: &'static str,
            accel_flag: Option<&'static str>,
            cpu: Option<&'static str>,
            vsock_dev: &'static str,
            share_dev: &'static str,
            agent_fs: &'static str,
        }
        let kvm_m = "q35,accel=kvm,kernel_irqchip=on,memory-backend=entire-guest-memory";
        let tcg_m = "q35,memory-backend=entire-guest-memory";
        let tcg_a = Some("tcg,tb-size=64");
        let vhost_d = "vhost-vsock-pci,id=vsock-42,guest-cid=42,vhostfd=7";
        let hybrid_d = "vhost-user-vsock-pci,chardev=charvsock0,id=vsock0";
        let fs_d = "vhost-user-fs-pci,chardev=charfs0,tag=kataShared,queue-size=1024";
        let p9_d = "virtio-9p-pci,fsdev=fs9p0,mount_tag=kataShared";
        let rows = [
            Row {
                accel: Accel::Kvm,
                vsock: vhost.clone(),
                share: fs.clone(),
                machine: kvm_m,
                accel_flag: None,
                cpu: Some("host,pmu=off"),
                vsock_dev: vhost_d,
                share_dev: fs_d,
                agent_fs: "virtiofs",
            },
            Row {
                accel: Accel::Kvm,
                vsock: vhost.clone(),
                share: p9.clone(),
                machine: kvm_m,
                accel_flag: None,
                cpu: Some("host,pmu=off"),
                vsock_dev: vhost_d,
                share_dev: p9_d,
                agent_fs: "9p",
            },
            Row {
                accel: Accel::Kvm,
                vsock: hybrid.clone(),
                share: fs.clone(),
                machine: kvm_m,
                accel_flag: None,
                cpu: Some("host,pmu=off"),
                vsock_dev: hybrid_d,
                share_dev: fs_d,
                agent_fs: "virtiofs",
            },
            Row {
                accel: Accel::Kvm,
                vsock: hybrid.clone(),
                share: p9.clone(),
                machine: kvm_m,
                accel_flag: None,
                cpu: Some("host,pmu=off"),
                vsock_dev: hybrid_d,
                share_dev: p9_d,
                agent_fs: "9p",
            },
            Row {
                accel: Accel::Tcg,
                vsock: vhost.clone(),
                share: fs.clone(),
                machine: tcg_m,
                accel_flag: tcg_a,
                cpu: None,
                vsock_dev: vhost_d,
                share_dev: fs_d,
                agent_fs: "virtiofs",
            },
            Row {
                accel: Accel::Tcg,
                vsock: vhost,
                share: p9.clone(),
                machine: tcg_m,
                accel_flag: tcg_a,
                cpu: None,
                vsock_dev: vhost_d,
                share_dev: p9_d,
                agent_fs: "9p",
            },
            Row {
                accel: Accel::Tcg,
                vsock: hybrid.clone(),
                share: fs,
                machine: tcg_m,
                accel_flag: tcg_a,
                cpu: None,
                vsock_dev: hybrid_d,
                share_dev: fs_d,
                agent_fs: "virtiofs",
            },
            Row {
                accel: Accel::Tcg,
                vsock: hybrid,
                share: p9,
                machine: tcg_m,
                accel_flag: tcg_a,
                cpu: None,
                vsock_dev: hybrid_d,
                share_dev: p9_d,
                agent_fs: "9p",
            },
        ];
        for (i, r) in rows.into_iter().enumerate() {
            let s = spec(r.accel, r.vsock.clone(), r.share.clone());
            let args = s.to_args();
            assert_eq!(values(&args, "-machine"), vec![r.machine], "row {i}");
            assert_eq!(
                values(&args, "-accel"),
                r.accel_flag.into_iter().collect::<Vec<_>>(),
                "row {i}"
            );
            assert_eq!(
                values(&args, "-cpu"),
                r.cpu.into_iter().collect::<Vec<_>>(),
                "row {i}"
            );
            let devices = values(&args, "-device");
            assert!(devices.contains(&r.vsock_dev), "row {i}: {devices:?}");
            assert!(devices.contains(&r.share_dev), "row {i}: {devices:?}");
            let chardevs = values(&args, "-chardev");
            match &r.vsock {
                VsockDevice::Hybrid { .. } => assert!(
                    chardevs.contains(&"socket,id=charvsock0,path=/run/kata/abc/vhost-vsock.sock"),
                    "row {i}"
                ),
                VsockDevice::Vhost { .. } => assert!(
                    !chardevs.iter().any(|c| c.contains("charvsock0")),
                    "row {i}"
                ),
            }
            match &r.share {
                ShareDevice::VirtioFs { .. } => {
                    assert!(
                        chardevs.contains(&"socket,id=charfs0,path=/run/kata/abc/virtiofsd.sock"),
                        "row {i}"
                    );
                    assert!(values(&args, "-fsdev").is_empty(), "row {i}");
                }
                ShareDevice::NineP { .. } => assert_eq!(
                    values(&args, "-fsdev"),
                    vec![
                        "local,id=fs9p0,path=/run/kata-containers/shared/sandboxes/abc,security_model=none,multidevs=remap"
                    ],
                    "row {i}"
                ),
                ShareDevice::None => unreachable!("not in the table"),
            }
            let append = values(&args, "-append");
            assert_eq!(append.len(), 1);
            assert!(
                append[0].ends_with(&format!(
                    "agent.log=info agent.shared_fs={} agent.debug_console=0",
                    r.agent_fs
                )),
                "row {i}: {}",
                append[0]
            );
        }
    }

    #[test]
    fn fixed_pieces() {
        let share = ShareDevice::None;
        let args = spec(
            Accel::Tcg,
            VsockDevice::Hybrid {
                socket: "/s".into(),
            },
            share,
        )
        .to_args();
        assert_eq!(values(&args, "-name"), vec!["sandbox-abc"]);
        assert_eq!(values(&args, "-accel"), vec!["tcg,tb-size=64"]);
        // Issue 14: QEMU ran with no seccomp filter.
        assert_eq!(
            values(&args, "-sandbox"),
            vec!["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
        let mut unfiltered = spec(
            Accel::Tcg,
            VsockDevice::Hybrid {
                socket: "/s".into(),
            },
            ShareDevice::None,
        );
        unfiltered.seccomp_sandbox.clear();
        assert!(!unfiltered.to_args().iter().any(|a| a == "-sandbox"));
        assert_eq!(
            values(&args, "-machine"),
            vec!["q35,memory-backend=entire-guest-memory"]
        );
        assert_eq!(values(&args, "-uuid"), vec![sandbox_uuid("abc").as_str()]);
        assert_eq!(values(&args, "-smp"), vec!["1"]);
        assert_eq!(values(&args, "-m"), vec!["2048M"]);
        assert!(
            values(&args, "-object")
                .contains(&"memory-backend-memfd,id=entire-guest-memory,size=2048M,share=on")
        );
        assert_eq!(values(&args, "-kernel"), vec!["/k"]);
        assert_eq!(values(&args, "-initrd"), vec!["/i"]);
        assert_eq!(
            values(&args, "-qmp"),
            vec!["unix:/run/kata/abc/qmp.sock,server=on,wait=off"]
        );
        assert!(values(&args, "-chardev").contains(&"stdio,id=charconsole0,signal=off"));
        for flag in ["-no-reboot", "-nodefaults", "-no-user-config", "-nographic"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
        assert!(values(&args, "-fsdev").is_empty());
        assert!(
            !values(&args, "-device")
                .iter()
                .any(|d| d.contains("fs-pci") || d.contains("9p"))
        );
    }

    #[test]
    fn tcg_tb_size_is_rendered_only_for_tcg_and_nonzero() {
        let vsock = VsockDevice::Hybrid {
            socket: "/s".into(),
        };
        // (accel, tb size, -accel values, -machine value)
        let rows: [(Accel, u32, &[&str], &str); 6] = [
            (
                Accel::Tcg,
                0,
                &[],
                "q35,accel=tcg,memory-backend=entire-guest-memory",
            ),
            (
                Accel::Tcg,
                1,
                &["tcg,tb-size=1"],
                "q35,memory-backend=entire-guest-memory",
            ),
            (
                Accel::Tcg,
                256,
                &["tcg,tb-size=256"],
                "q35,memory-backend=entire-guest-memory",
            ),
            (
                Accel::Kvm,
                0,
                &[],
                "q35,accel=kvm,kernel_irqchip=on,memory-backend=entire-guest-memory",
            ),
            (
                Accel::Kvm,
                64,
                &[],
                "q35,accel=kvm,kernel_irqchip=on,memory-backend=entire-guest-memory",
            ),
            (
                Accel::Kvm,
                2048,
                &[],
                "q35,accel=kvm,kernel_irqchip=on,memory-backend=entire-guest-memory",
            ),
        ];
        for (accel, tb, want_accel, want_machine) in rows {
            let mut s = spec(accel, vsock.clone(), ShareDevice::None);
            s.tcg_tb_size_mib = tb;
            let args = s.to_args();
            let what = format!("{accel:?} tb-size {tb}");
            assert_eq!(values(&args, "-accel"), want_accel, "{what}");
            assert_eq!(values(&args, "-machine"), vec![want_machine], "{what}");
            assert!(
                !args.iter().any(|a| a.contains("tb-size")) || accel == Accel::Tcg,
                "{what}: {args:?}"
            );
        }
        // KVM's argv does not depend on the TCG setting at all.
        let kvm = |tb| {
            let mut s = spec(Accel::Kvm, vsock.clone(), ShareDevice::None);
            s.tcg_tb_size_mib = tb;
            s.to_args()
        };
        assert_eq!(kvm(0), kvm(64));
    }

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let u = sandbox_uuid("abc");
        assert_eq!(u, sandbox_uuid("abc"));
        assert_ne!(u, sandbox_uuid("abd"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
