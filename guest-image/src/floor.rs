//! The data-path floor's initrd (`kata-guest-image floor`): the pod image's
//! kernel modules and load list, busybox, and a floor program (`kata-floor`)
//! instead of the agent. Its `/init` loads the modules in list order, brings
//! eth0 up with the address given as [`IP_PARAM`] on the kernel command line
//! and execs the program, so that a VM booted from it has the pod VM's
//! kernel, devices and drivers with nothing of ours between the device and
//! the bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_agent_protocol::guest;

use crate::build::{self, BuildError};
use crate::compress::{self, Compression};
use crate::cpio::Tree;
use crate::elf;
use crate::kernel::Roots;

/// Where the image holds the floor program.
pub const PROGRAM_GUEST: &str = "/sbin/kata-floor";
/// Where the image holds busybox (`/init` is a busybox script).
const BUSYBOX_GUEST: &str = "/bin/busybox";
/// Kernel command line key of eth0's address (`10.254.3.2/30`); without it
/// eth0 stays down. The kernel ignores dotted keys it does not know, and
/// `/init` reads it from `/proc/cmdline`.
pub const IP_PARAM: &str = "kata_floor.ip";

/// Inputs of a floor image.
#[derive(Debug, Clone)]
pub struct FloorOptions {
    /// Kernel roots; the kernel's modules and config.
    pub roots: Roots,
    /// Force this kernel release.
    pub kernel_release: Option<String>,
    /// Override the running release (tests).
    pub running_release: Option<String>,
    /// busybox binary (module loading, eth0).
    pub busybox: PathBuf,
    /// The floor program, exec'd by `/init`.
    pub program: PathBuf,
    /// Where to write the initrd.
    pub output: PathBuf,
}

/// Result of a floor build.
#[derive(Debug, Clone)]
pub struct FloorSummary {
    /// Kernel whose modules were packed.
    pub release: String,
    /// Written file.
    pub output: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modules in the load list.
    pub modules: usize,
    /// Codec used.
    pub compression: Compression,
    /// Wall time.
    pub duration: Duration,
}

impl FloorSummary {
    /// The one-line summary the CLI prints.
    pub fn line(&self) -> String {
        format!(
            "kata-guest-image: built floor initrd for {} at {} ({:.2} MiB, {} modules, {}) in {:.2}s",
            self.release,
            self.output.display(),
            self.size as f64 / (1024.0 * 1024.0),
            self.modules,
            self.compression,
            self.duration.as_secs_f64()
        )
    }
}

/// The floor's `/init`. The console (`hvc0`) comes with the
/// virtio_console module, so output goes there only once it appeared; the
/// program's ready line on it is what the host waits for before it dials.
pub fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
# The data-path floor (kata-guest-image floor): the pod image's modules in
# its load order, eth0 from {ip}=, then the floor program as PID 1.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
while read -r m; do
    $bb insmod "$m" || echo "kata-floor init: insmod $m failed"
done < {list}
i=0
while [ ! -e {console} ] && [ $i -lt 100 ]; do $bb usleep 50000; i=$((i + 1)); done
exec </dev/null >{console} 2>&1
$bb ip link set lo up
addr=
for p in $($bb cat /proc/cmdline); do
    case "$p" in {ip}=*) addr="${{p#{ip}=}}" ;; esac
done
if [ -n "$addr" ]; then
    $bb ip link set eth0 up && $bb ip addr add "$addr" dev eth0 ||
        echo "kata-floor init: eth0 $addr failed"
fi
exec {program}
"#,
        ip = IP_PARAM,
        list = guest::MODULES_LOAD_LIST,
        console = guest::CONSOLE_DEVICE,
        program = PROGRAM_GUEST,
    )
}

/// The image's tree from the files' contents: busybox and the program with
/// their libraries, the modules (guest path, body) in load order, their
/// list and `/init`.
pub fn tree(
    busybox: Vec<u8>,
    program: Vec<u8>,
    libs: &[elf::Lib],
    modules: Vec<(String, Vec<u8>)>,
) -> Result<Tree, BuildError> {
    let mut t = build::base_tree();
    t.file(BUSYBOX_GUEST, 0o755, busybox);
    t.file(PROGRAM_GUEST, 0o755, program);
    build::add_libs(&mut t, libs)?;
    let mut list = String::new();
    for (path, body) in modules {
        list.push_str(&path);
        list.push('\n');
        t.file(&path, 0o644, body);
    }
    t.file(guest::MODULES_LOAD_LIST, 0o644, list.into_bytes());
    t.file("/init", 0o755, init_script().into_bytes());
    Ok(t)
}

/// Writes the floor initrd `opts` describe.
pub fn floor(opts: &FloorOptions, warn: &mut dyn FnMut(&str)) -> Result<FloorSummary, BuildError> {
    let start = Instant::now();
    if !opts.busybox.is_file() {
        return Err(BuildError::BusyboxMissing(opts.busybox.clone()));
    }
    if !opts.program.is_file() {
        return Err(BuildError::FloorProgramMissing(opts.program.clone()));
    }
    let (kernel, compression) = build::discover_kernel(
        &opts.roots,
        opts.kernel_release.as_deref(),
        opts.running_release.as_deref(),
        warn,
    )?;
    let (modules, _builtin) = build::module_entries(&kernel)?;
    let bodies = build::load_modules(&modules)?;
    // Either binary may be dynamically linked: both get their libraries.
    let mut libs = elf::closure(&opts.program, Path::new("/"))?;
    for l in elf::closure(&opts.busybox, Path::new("/"))? {
        if !libs.iter().any(|have| have.guest == l.guest) {
            libs.push(l);
        }
    }
    let count = modules.len();
    let t = tree(
        build::read(&opts.busybox)?,
        build::read(&opts.program)?,
        &libs,
        modules
            .into_iter()
            .map(|(_, e)| e.guest_path)
            .zip(bodies)
            .collect(),
    )?;
    let image = compress::compress(compression, &t.to_archive()?)?;
    let output = build::write_output(&opts.output, &image)?;
    Ok(FloorSummary {
        release: kernel.release,
        output,
        size: image.len() as u64,
        modules: count,
        compression,
        duration: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{Kind, read_archive};

    fn data<'a>(entries: &'a [crate::cpio::Entry], path: &str) -> &'a [u8] {
        let rel = path.trim_start_matches('/');
        match entries.iter().find(|e| e.path == rel).map(|e| &e.kind) {
            Some(Kind::File(d)) => d,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn init_loads_the_list_in_order_then_brings_eth0_up_and_execs_the_program() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/busybox sh\n"), "{s}");
        let at = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing from:\n{s}"))
        };
        // Modules first (from the list, in its order), then the console
        // they bring, then the network, then the program as PID 1.
        assert!(at("mount -t devtmpfs") < at("insmod \"$m\""));
        assert!(at("done < /etc/kata/modules.load") < at("-e /dev/hvc0"));
        assert!(at(">/dev/hvc0 2>&1") < at("ip link set eth0 up"));
        assert!(at("kata_floor.ip=*) addr=\"${p#kata_floor.ip=}\"") < at("ip addr add"));
        assert!(s.trim_end().ends_with("exec /sbin/kata-floor"), "{s}");
        // No eth0 without an address: the vsock-only floor has no NIC.
        assert!(s.contains("if [ -n \"$addr\" ]"), "{s}");
    }

    #[test]
    fn tree_holds_busybox_the_program_the_modules_and_their_list() {
        let modules = vec![
            ("/lib/modules/k/vsock.ko".to_string(), b"one".to_vec()),
            ("/lib/modules/k/virtio_net.ko".to_string(), b"two".to_vec()),
        ];
        let t = tree(b"bb".to_vec(), b"floor".to_vec(), &[], modules).expect("tree");
        let entries = read_archive(&t.to_archive().expect("archive")).expect("parse");
        assert_eq!(data(&entries, "/bin/busybox"), b"bb");
        assert_eq!(data(&entries, PROGRAM_GUEST), b"floor");
        assert_eq!(data(&entries, "/lib/modules/k/virtio_net.ko"), b"two");
        assert_eq!(
            data(&entries, guest::MODULES_LOAD_LIST),
            b"/lib/modules/k/vsock.ko\n/lib/modules/k/virtio_net.ko\n"
        );
        assert_eq!(data(&entries, "/init"), init_script().as_bytes());
        for (path, mode) in [
            ("/init", 0o755),
            (PROGRAM_GUEST, 0o755),
            ("/bin/busybox", 0o755),
        ] {
            let rel = path.trim_start_matches('/');
            let e = entries.iter().find(|e| e.path == rel).expect(path);
            assert_eq!(e.mode, mode, "{path}");
        }
        // The agent is not there, nor its manifest.
        let has = |p: &str| entries.iter().any(|e| e.path == p.trim_start_matches('/'));
        assert!(!has(guest::IMAGE_MANIFEST));
        assert!(has("/dev/console"));
    }
}
