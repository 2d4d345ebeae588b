//! PID-1 duties: the boot sequence of the guest and powering it off.
//!
//! [`pid1_main`] never returns: it mounts the base filesystems, reads the
//! configuration, starts logging (first line: `kata-agent starting`), loads
//! the kernel modules listed by the image builder, attaches the console,
//! brings up `lo`, starts the zombie reaper, mounts the sandbox share and
//! serves the agent API on vsock until `DestroySandbox`; then it powers the
//! VM off. Any fatal error is logged (console and `/dev/kmsg`) and also ends
//! in a power-off, since PID 1 must never exit.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use kata_agent_protocol::guest::{CONSOLE_DEVICE, MODULES_LOAD_LIST};
use kata_agent_protocol::{AGENT_VERSION, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::config::{self, Config, SharedFsKind};
use crate::details::GuestPaths;
use crate::error::{AgentError, Result};
use crate::logging;
use crate::reaper::Reaper;
use crate::server;
use crate::storage;

/// Delay between `DestroySandbox`'s reply and the power-off, so the reply is flushed.
pub const DESTROY_GRACE: Duration = Duration::from_millis(100);
/// How often to look for the console device.
const CONSOLE_POLL: Duration = Duration::from_millis(50);
/// finit_module flag: the file is compressed (xz/zstd/gzip), kernel ≥ 6.4.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// One filesystem PID 1 mounts before anything else.
struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order: parents before children.
const BASE_MOUNTS: &[BaseMount] = &[
    BaseMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    BaseMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
];

/// The PID-1 entry point. Never returns: ends in a power-off.
pub fn pid1_main() -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kata-agent")
        .enable_all()
        .build();
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => fatal(&AgentError::Internal(format!(
            "building the tokio runtime: {e}"
        ))),
    };
    // Power off while `rt` is alive: dropping a runtime waits for blocking
    // tasks, and one may be stuck on an unresponsive share.
    match rt.block_on(boot_and_serve()) {
        Ok(()) => power_off("sandbox destroyed"),
        Err(e) => fatal(&e),
    }
}

/// The boot sequence; returns once `DestroySandbox` was answered.
async fn boot_and_serve() -> Result<()> {
    // Logging needs /proc (config) and /dev (kmsg): mount first, report later.
    let mounted: Vec<(&BaseMount, Result<bool>)> =
        BASE_MOUNTS.iter().map(|m| (m, mount_base(m))).collect();
    // Userspace writes to /dev/kmsg are rate-limited by default; lift that
    // so the early log is complete. Best effort.
    let devkmsg = fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");

    let paths = GuestPaths::default();
    let cmdline = paths.kernel_cmdline();
    #[cfg(feature = "hostile")]
    crate::hostile::init(cmdline.as_deref().unwrap_or(""));
    let cfg = match &cmdline {
        Ok(c) => config::parse_cmdline(c),
        Err(_) => Ok(Config::default()),
    };
    let level = cfg.as_ref().map(|c| c.log_level).unwrap_or_default();
    if let Err(e) = logging::init(level, logging::Target::Boot) {
        logging::kmsg_critical(&format!("{e:#}"));
    }
    log_starting(&paths, cmdline.as_deref().unwrap_or(""));

    for (m, res) in &mounted {
        match res {
            Ok(true) => tracing::debug!(path = m.target, fstype = m.fstype, "mounted"),
            Ok(false) => tracing::debug!(path = m.target, "already mounted"),
            Err(e) => tracing::error!(path = m.target, error = %e, "mount failed"),
        }
    }
    if let Err(e) = devkmsg {
        tracing::debug!(error = %e, "cannot lift the /dev/kmsg rate limit");
    }
    if let Err(e) = &cmdline {
        tracing::error!(error = %e, "cannot read the kernel command line; using defaults");
    }
    // An invalid configuration is fatal, but only once the console is up,
    // so that the error reaches the host's console log.
    let device_timeout = cfg
        .as_ref()
        .map_or(Config::default().device_timeout, |c| c.device_timeout);

    // Only what the agent needs to answer is loaded before it serves; the
    // rest loads right after, off the boot's critical path (under TCG each
    // module costs tens of milliseconds).
    let wants_9p = cfg
        .as_ref()
        .is_ok_and(|c| c.shared_fs == SharedFsKind::NineP);
    let modules = ModulePlan::read(Path::new(MODULES_LOAD_LIST), wants_9p);
    modules.load_boot();

    match wait_for_console(Path::new(CONSOLE_DEVICE), device_timeout).await {
        Ok(()) => tracing::info!(device = CONSOLE_DEVICE, "console attached"),
        Err(e) => tracing::warn!(error = %e, "no console; logging to /dev/kmsg"),
    }

    let cfg = cfg?;
    for key in &cfg.unknown_keys {
        tracing::warn!(param = %key, "ignoring unknown agent.* kernel parameter");
    }
    tracing::info!(?cfg, "configuration");

    if let Err(e) = loopback_up() {
        tracing::error!(error = %e, "cannot bring up lo");
    }

    // Kept alive for the life of PID 1; container processes hook their exits here.
    let reaper = Reaper::start()?;

    mount_share(&cfg, &paths).await;
    // The shim's token, left at the share's root before boot: every
    // connection to the agent and the debug console must present it.
    let token = crate::auth::Token::load(&paths.share_mount);
    #[cfg(feature = "hostile")]
    let share_mount = paths.share_mount.clone();

    let addr = format!("vsock://-1:{AGENT_VSOCK_PORT}");
    let mut running = server::start_with_reaper(
        &addr,
        paths,
        server::DestroyAction::PowerOff,
        Some(reaper),
        token.clone(),
    )
    .await?;
    tracing::info!(%addr, authenticated = token.is_some(), "serving the agent API");
    if cfg.debug_console {
        if let Err(e) = crate::debug_console::start(token) {
            tracing::error!(error = %e, "cannot start the debug console");
        }
    }
    // Log-level independent: the shim waits for this line before dialing.
    println!("{}", kata_agent_protocol::guest::READY_MARKER);
    #[cfg(feature = "hostile")]
    crate::hostile::start(&share_mount);
    // At normal priority: a lowered one (SCHED_IDLE, then nice 19) left
    // the thread preempted while it held the log writer, and container
    // creations stalled for 30-120 s (libcontainer forks while another
    // thread may hold that lock).
    tokio::task::spawn_blocking(move || modules.load_rest());
    running.wait_destroy().await;
    tracing::info!("DestroySandbox: powering off");
    tokio::time::sleep(DESTROY_GRACE).await;
    Ok(())
}

/// The first info line of the log; operators (and tests) grep it.
pub fn log_starting(paths: &GuestPaths, cmdline: &str) {
    let kernel_release = paths
        .kernel_release()
        .unwrap_or_else(|e| format!("unknown ({e})"));
    tracing::info!(
        version = AGENT_VERSION,
        protocol_version = PROTOCOL_VERSION,
        %kernel_release,
        cmdline = %cmdline.trim(),
        "kata-agent starting"
    );
}

/// Mounts one base filesystem; `Ok(false)` if something is already mounted there.
fn mount_base(m: &BaseMount) -> Result<bool> {
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(m.target)
    {
        return Err(AgentError::io("creating", m.target, e));
    }
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        Ok(()) => Ok(true),
        Err(Errno::EBUSY) => Ok(false),
        Err(e) => Err(AgentError::sys(
            format!("mount -t {} {} {}", m.fstype, m.source, m.target),
            e,
        )),
    }
}

/// Module names the agent needs before it can answer the shim: the vsock
/// transport, and the 9p client when the share is 9p. Listed with their
/// dependencies; anything missing here is retried by the second pass.
const VSOCK_MODULES: [&str; 3] = [
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];
const NINE_P_MODULES: [&str; 4] = ["netfs", "9pnet", "9p", "9pnet_virtio"];

/// The image's module list split into a boot pass and a background pass.
#[derive(Debug, Default)]
struct ModulePlan {
    paths: Vec<String>,
    boot: Vec<bool>,
}

/// The module name of a path: file name without `.ko` and compression suffixes.
pub fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

impl ModulePlan {
    fn read(list: &Path, wants_9p: bool) -> ModulePlan {
        let text = match fs::read_to_string(list) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(list = %list.display(), error = %e, "no module list; loading no modules");
                return ModulePlan::default();
            }
        };
        let paths: Vec<String> = module_paths(&text).map(str::to_string).collect();
        // The 9p stack serves only a 9p share: with virtio-fs it is never
        // used, and loading it costs the guest CPU time.
        let paths: Vec<String> = paths
            .into_iter()
            .filter(|p| wants_9p || !NINE_P_MODULES.contains(&module_name(p)))
            .collect();
        let boot = paths
            .iter()
            .map(|p| {
                let n = module_name(p);
                VSOCK_MODULES.contains(&n) || (wants_9p && NINE_P_MODULES.contains(&n))
            })
            .collect();
        ModulePlan { paths, boot }
    }

    /// Loads the modules the agent needs to serve, in list order. A failure
    /// here is retried by [`ModulePlan::load_rest`].
    fn load_boot(&self) {
        let picked = self
            .paths
            .iter()
            .zip(&self.boot)
            .filter(|(_, b)| **b)
            .map(|(p, _)| p);
        let (loaded, present, failed) = load_all(picked, tracing::Level::DEBUG);
        tracing::info!(
            loaded,
            already_loaded = present,
            failed,
            "boot kernel modules"
        );
    }

    /// Loads everything in list order; the boot pass's modules are already
    /// in and count as present.
    fn load_rest(self) {
        let (loaded, present, failed) = load_all(self.paths.iter(), tracing::Level::ERROR);
        tracing::info!(loaded, already_loaded = present, failed, "kernel modules");
    }
}

fn load_all<'a>(
    paths: impl Iterator<Item = &'a String>,
    fail_level: tracing::Level,
) -> (u32, u32, u32) {
    let (mut loaded, mut present, mut failed) = (0u32, 0u32, 0u32);
    for path in paths {
        match load_module(Path::new(path)) {
            Ok(true) => {
                loaded += 1;
                tracing::debug!(module = %path, "loaded");
            }
            Ok(false) => present += 1,
            Err(e) => {
                failed += 1;
                if fail_level == tracing::Level::ERROR {
                    tracing::error!(module = %path, error = %e, "cannot load module");
                } else {
                    tracing::debug!(module = %path, error = %e, "cannot load module yet");
                }
            }
        }
    }
    (loaded, present, failed)
}

/// The module paths of a module list: one per line; blanks and `#` comments skipped.
pub fn module_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Loads one module; `Ok(false)` if it was already loaded.
fn load_module(path: &Path) -> Result<bool> {
    let file = File::open(path).map_err(|e| AgentError::io("opening module", path, e))?;
    let compressed = path
        .extension()
        .is_some_and(|ext| ext == "xz" || ext == "zst" || ext == "gz");
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    const NO_PARAMS: &CStr = c"";
    match finit_module(&file, NO_PARAMS, flags) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(AgentError::sys(
            format!("finit_module {}", path.display()),
            e,
        )),
    }
}

/// Waits for the console device, then makes it stdout/stderr and the log sink.
async fn wait_for_console(dev: &Path, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let console = loop {
        let res = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(dev);
        match res {
            Ok(f) => break f,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(AgentError::io("opening console", dev, e));
            }
            Err(_) => tokio::time::sleep(CONSOLE_POLL).await,
        }
    };
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 only manipulates the descriptor table; `console` is an
        // open descriptor owned by this function, and fds 1 and 2 are the
        // process's standard streams, which nothing in Rust owns exclusively.
        let rc = unsafe { libc::dup2(console.as_raw_fd(), fd) };
        if rc < 0 {
            return Err(AgentError::io("dup2 of", dev, io::Error::last_os_error()));
        }
    }
    logging::attach_console(console).map_err(|e| AgentError::io("writing to", dev, e))
}

/// Sets IFF_UP on `lo` with SIOCGIFFLAGS/SIOCSIFFLAGS.
fn loopback_up() -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| AgentError::sys("socket(AF_INET, SOCK_DGRAM)", e))?;

    // SAFETY: ifreq is a plain C struct (name array + union of integers and
    // sockaddrs) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes the
    // flags member of `req`, a live, properly sized ifreq; `sock` is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    if rc < 0 {
        return Err(AgentError::sys("SIOCGIFFLAGS lo", Errno::last()));
    }
    // SAFETY: the kernel just filled `ifru_flags`, the active union member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        tracing::debug!("lo already up");
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS only reads `req` (name and flags), which is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
    if rc < 0 {
        return Err(AgentError::sys("SIOCSIFFLAGS lo", Errno::last()));
    }
    tracing::info!("lo is up");
    Ok(())
}

/// Mounts the share if configured; a failure is logged, not fatal.
async fn mount_share(cfg: &Config, paths: &GuestPaths) {
    match paths.share_mount_entry() {
        Ok(Some(m)) => {
            tracing::info!(fstype = %m.fstype, mount_point = %m.mount_point, "share already mounted");
            return;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read mountinfo"),
    }
    match storage::mount_share(cfg.shared_fs, &paths.share_mount, cfg.device_timeout).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("no shared filesystem configured"),
        Err(e) => tracing::error!(
            error = %e,
            shared_fs = cfg.shared_fs.as_str(),
            "cannot mount the sandbox share; guest details will report none"
        ),
    }
}

/// Logs a fatal error everywhere it can go, then powers off.
pub fn fatal(err: &AgentError) -> ! {
    tracing::error!(error = %err, "fatal error; powering off");
    logging::kmsg_critical(&format!("fatal error; powering off: {err}"));
    power_off("fatal error")
}

/// Syncs and powers the VM off. If even that fails, exit: the kernel panics
/// on PID 1's exit and QEMU (`-no-reboot`, `panic=1`) ends as well.
pub fn power_off(why: &str) -> ! {
    tracing::info!(reason = why, "powering off");
    nix::unistd::sync();
    let err = match reboot(RebootMode::RB_POWER_OFF) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    logging::kmsg_critical(&format!("power off failed: {err}; exiting PID 1"));
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_suffixes() {
        assert_eq!(
            module_name("/lib/modules/6.12/kernel/net/vsock.ko"),
            "vsock"
        );
        assert_eq!(
            module_name("/x/vmw_vsock_virtio_transport.ko.xz"),
            "vmw_vsock_virtio_transport"
        );
        assert_eq!(module_name("9pnet_virtio.ko.zst"), "9pnet_virtio");
    }

    #[test]
    fn boot_pass_holds_vsock_and_9p_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("modules.load");
        fs::write(
            &list,
            "/m/vsock.ko\n/m/vmw_vsock_virtio_transport_common.ko\n/m/vmw_vsock_virtio_transport.ko\n\
             /m/netfs.ko\n/m/9pnet.ko\n/m/9p.ko\n/m/9pnet_virtio.ko\n/m/overlay.ko\n",
        )
        .expect("write");
        let boot = |wants_9p| {
            let p = ModulePlan::read(&list, wants_9p);
            p.paths
                .iter()
                .zip(&p.boot)
                .filter(|(_, b)| **b)
                .map(|(p, _)| module_name(p).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            boot(false),
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        assert_eq!(boot(true).len(), 7);
        assert!(!boot(true).contains(&"overlay".to_string()));
        // Without a 9p share the 9p stack is not loaded at all.
        assert_eq!(ModulePlan::read(&list, true).paths.len(), 8);
        let rest = ModulePlan::read(&list, false).paths;
        assert_eq!(rest.len(), 4, "{rest:?}");
        assert!(
            rest.iter()
                .all(|p| !NINE_P_MODULES.contains(&module_name(p)))
        );
    }

    #[test]
    fn module_list_lines() {
        let text = "\n# deps first\n/lib/modules/6.12/vsock.ko\n  /lib/modules/6.12/vmw_vsock_virtio_transport_common.ko  \n\n/x.ko.xz\n";
        let got: Vec<&str> = module_paths(text).collect();
        assert_eq!(
            got,
            [
                "/lib/modules/6.12/vsock.ko",
                "/lib/modules/6.12/vmw_vsock_virtio_transport_common.ko",
                "/x.ko.xz"
            ]
        );
    }

    #[test]
    fn base_mounts_are_ordered_parent_first() {
        for (i, m) in BASE_MOUNTS.iter().enumerate() {
            for later in &BASE_MOUNTS[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} must come after {}",
                    m.target,
                    later.target
                );
            }
        }
        let targets: Vec<&str> = BASE_MOUNTS.iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/sys/fs/cgroup",
            "/tmp",
        ] {
            assert!(targets.contains(&t), "{t}");
        }
    }

    #[test]
    fn missing_module_is_an_error() {
        assert!(load_module(Path::new("/nonexistent/module.ko")).is_err());
    }
}
