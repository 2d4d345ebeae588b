//! One pod VM on the host: QEMU plus its per-VM helpers (virtiofsd,
//! vhost-device-vsock), their sockets and directories.
//!
//! [`Vm::start`] either returns a running VM or leaves nothing behind: every
//! step that fails tears down what the earlier steps created. [`Vm::stop`]
//! ends QEMU (waiting for a guest power-off first when asked), stops the
//! helpers and removes the sandbox's directories.

pub mod accel;
pub mod child;
pub mod qemu;
pub mod rootless;
pub mod token;
pub mod vsock;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Once;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::config::{Config, SharedFs};
use crate::layout::SandboxPaths;
use crate::vm::child::{ChildError, LineKind, Supervised, resolve_binary};
use crate::vm::qemu::cmdline::{self, QemuSpec, ShareDevice, VsockDevice};
use crate::vm::qemu::kernel_cmdline::KernelCmdline;
use crate::vm::qemu::nic;
use crate::vm::qemu::qmp::{Qmp, QmpError};

const QEMU_HINT: &str = "apt-get install -t bookworm-backports qemu-system-x86";
const VSOCK_HINT: &str = "make deps (it builds the patched copy in vendor/vhost-device-vsock)";
const IMAGE_HINT: &str = "build the guest image with: kata-guest-image (or make image)";
/// How long a helper may take to create its socket.
const HELPER_READY: Duration = Duration::from_secs(10);

/// Errors starting or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid sandbox id")]
    InvalidId(#[from] crate::ids::InvalidId),
    #[error("guest {what} {path} does not exist; {hint}")]
    MissingImage {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    #[error("QMP")]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Rootless(#[from] rootless::RootlessError),
    #[error("preparing the share")]
    Share(#[from] crate::storage::StorageError),
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The most a VM can grow to: every vCPU up to `max_vcpus` is present
/// from boot, and DIMM slots reach `max_memory_mib` (`sizing::growth`
/// decides it, `sandbox::resize` uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
}

/// How the shim reaches the agent in this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// Hybrid vsock: the vhost-device-vsock Unix socket.
    Hybrid(PathBuf),
    /// Kernel vsock: the guest CID.
    Vhost(u64),
}

/// What the shared filesystem turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    VirtioFs,
    NineP,
    None,
}

/// The share a VM gets: virtio-fs needs virtiofsd, and falls back to 9p
/// without it. `kata-ctl check` and `env` report the same choice.
pub fn choose_share(wanted: SharedFs, virtiofsd_found: bool) -> ShareKind {
    match wanted {
        SharedFs::None => ShareKind::None,
        SharedFs::Virtio9p => ShareKind::NineP,
        SharedFs::VirtioFs if virtiofsd_found => ShareKind::VirtioFs,
        SharedFs::VirtioFs => ShareKind::NineP,
    }
}

/// Per-sandbox choices on top of the configuration.
#[derive(Debug, Default)]
pub struct VmOptions {
    /// vCPUs and memory; `None` = the configured defaults.
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// What the VM can grow to after boot (vCPUs present but offline,
    /// DIMM slots and `maxmem`); `None`: it keeps its boot size.
    pub growth: Option<Ceiling>,
    /// `cgroup.procs` files of the pod's host cgroup: QEMU and its helpers
    /// join them before exec, so the pod's limits bound them from their
    /// first allocation.
    pub cgroup_procs: Vec<std::fs::File>,
    /// The pod's NICs (taps in its network namespace); QEMU inherits them.
    pub nics: Vec<crate::network::Nic>,
    /// The pod's network namespace: QEMU runs in it, as under Kata, so
    /// `/proc/<task pid>/ns/net` (what containerd gives the pod's other
    /// containers) is the pod's network.
    pub netns: Option<std::fs::File>,
}

/// A running pod VM.
#[derive(Debug)]
pub struct Vm {
    pub sandbox_id: String,
    pub paths: SandboxPaths,
    pub accel: cmdline::Accel,
    pub share: ShareKind,
    pub agent_addr: AgentAddr,
    /// What the agent wants on every connection; `None` without a share,
    /// where it cannot be handed over (the agent then asks for none).
    pub agent_token: Option<token::AgentToken>,
    /// When QEMU was spawned; boot phases are measured from here.
    pub spawned_at: Instant,
    /// From the start call until QEMU was spawned (helpers included).
    pub spawn_duration: Duration,
    qemu: Option<Supervised>,
    qmp: Option<Qmp>,
    vsock_daemon: Option<Supervised>,
    fs_daemon: Option<Supervised>,
    vhost: Option<vsock::VhostCid>,
    /// The unprivileged identity of QEMU and vhost-device-vsock, when
    /// `rootless`.
    pub vmm_user: Option<rootless::VmmUser>,
    dirs_created: bool,
}

static TCG_WARNING: Once = Once::new();

/// What [`Vm::start`] resolved from the configuration and the host before
/// it creates anything.
struct Plan {
    qemu_bin: PathBuf,
    accel: cmdline::Accel,
    vsock: vsock::Mode,
    /// vhost-device-vsock, for hybrid vsock.
    vsock_bin: Option<PathBuf>,
    share: ShareKind,
    /// virtiofsd, for virtio-fs.
    fs_bin: Option<PathBuf>,
}

impl Plan {
    fn resolve(config: &Config, sandbox_id: &str) -> Result<Plan, VmError> {
        let q = &config.hypervisor.qemu;
        let qemu_bin = resolve_binary(&q.path, "QEMU", QEMU_HINT)?;
        for (what, path) in [("kernel", &q.kernel), ("initrd", &q.initrd)] {
            if !path.exists() {
                return Err(VmError::MissingImage {
                    what,
                    path: path.clone(),
                    hint: IMAGE_HINT,
                });
            }
        }
        let choice = accel::choose(q.accel, accel::HostVirt::probe());
        if let Some(w) = &choice.warning {
            TCG_WARNING.call_once(|| tracing::warn!(sandbox_id, "{w}"));
        }
        let vsock = vsock::choose(q.vsock, Path::new(vsock::VHOST_VSOCK_DEVICE).exists());
        let vsock_bin = match vsock {
            vsock::Mode::Hybrid => Some(resolve_binary(
                &q.vhost_user_vsock_daemon,
                "vhost-device-vsock",
                VSOCK_HINT,
            )?),
            vsock::Mode::Vhost => None,
        };
        let fs_bin = match q.shared_fs {
            SharedFs::VirtioFs => resolve_binary(&q.virtio_fs_daemon, "virtiofsd", "").ok(),
            SharedFs::Virtio9p | SharedFs::None => None,
        };
        let share = choose_share(q.shared_fs, fs_bin.is_some());
        if q.rootless {
            if share == ShareKind::NineP {
                return Err(rootless::RootlessError::NinePShare.into());
            }
            use rootless::{Access, check_usable_by_others};
            for path in [&q.kernel, &q.initrd] {
                check_usable_by_others(path, Access::Read)?;
            }
            for bin in std::iter::once(&qemu_bin).chain(&vsock_bin) {
                check_usable_by_others(bin, Access::Execute)?;
            }
        }
        if q.shared_fs == SharedFs::VirtioFs && fs_bin.is_none() {
            tracing::warn!(
                sandbox_id,
                tried = ?q.virtio_fs_daemon,
                "virtiofsd not found, sharing with virtio-9p instead"
            );
        }
        Ok(Plan {
            qemu_bin,
            accel: choice.accel,
            vsock,
            vsock_bin,
            share,
            fs_bin,
        })
    }
}

/// Makes `cmd` join the pod's host cgroup before exec, so the pod's limits
/// bound it from its first allocation.
fn join_cgroup(cmd: &mut Command, opts: &VmOptions) {
    let fds: Vec<i32> = opts.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // calls write(2) on descriptors the parent keeps open for the whole
    // spawn (`opts` owns the files), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || crate::host_cgroup::HostCgroup::join_in_child(&fds));
    }
}

impl Vm {
    /// Starts the VM for `sandbox_id`, sized and placed as `opts` say: the
    /// directories, the vsock and share helpers, QEMU, then QMP. It either
    /// returns a running VM or leaves nothing behind.
    pub async fn start(config: &Config, sandbox_id: &str, opts: &VmOptions) -> Result<Vm, VmError> {
        let began = Instant::now();
        crate::ids::validate(sandbox_id)?;
        let plan = Plan::resolve(config, sandbox_id)?;
        let mut vm = Vm {
            sandbox_id: sandbox_id.to_string(),
            paths: SandboxPaths::new(sandbox_id),
            accel: plan.accel,
            share: plan.share,
            agent_addr: AgentAddr::Vhost(0),
            agent_token: None,
            spawned_at: Instant::now(),
            spawn_duration: Duration::ZERO,
            qemu: None,
            qmp: None,
            vsock_daemon: None,
            fs_daemon: None,
            vhost: None,
            vmm_user: None,
            dirs_created: false,
        };
        let started = async {
            vm.create_dirs()?;
            vm.claim_user(config)?;
            let vsock = vm.start_vsock(&plan, opts).await?;
            let share = vm.start_share(config, &plan, opts).await?;
            vm.hand_over_token()?;
            vm.spawn_qemu(config, &plan, opts, vsock, share)?;
            vm.spawn_duration = vm.spawned_at - began;
            vm.connect_qmp().await
        }
        .await;
        match started {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.teardown().await;
                Err(e)
            }
        }
    }

    /// The guest's vsock: vhost-device-vsock for hybrid vsock, else a
    /// reserved kernel CID.
    async fn start_vsock(&mut self, plan: &Plan, opts: &VmOptions) -> Result<VsockDevice, VmError> {
        match plan.vsock {
            vsock::Mode::Hybrid => {
                let bin = plan
                    .vsock_bin
                    .as_ref()
                    .expect("hybrid mode resolved the daemon binary");
                let (ctl, uds) = (self.paths.vsock_control(), self.paths.vsock_uds());
                let mut cmd = Command::new(bin);
                cmd.arg("--guest-cid=3")
                    .arg(format!("--socket={}", ctl.display()))
                    .arg(format!("--uds-path={}", uds.display()));
                join_cgroup(&mut cmd, opts);
                if let Some(user) = &self.vmm_user {
                    user.apply(&mut cmd);
                }
                let d = Supervised::spawn(
                    "vhost-device-vsock",
                    cmd,
                    &self.sandbox_id,
                    LineKind::Diagnostic,
                )?;
                let ready = d.wait_for_socket(&ctl, HELPER_READY).await;
                self.vsock_daemon = Some(d);
                ready?;
                self.agent_addr = AgentAddr::Hybrid(uds);
                Ok(VsockDevice::Hybrid { socket: ctl })
            }
            vsock::Mode::Vhost => {
                let held = vsock::reserve_vhost_cid()?;
                let dev = VsockDevice::Vhost {
                    vhostfd: held.file.as_raw_fd(),
                    cid: held.cid,
                };
                self.agent_addr = AgentAddr::Vhost(held.cid);
                self.vhost = Some(held);
                Ok(dev)
            }
        }
    }

    /// Leaves a fresh agent token at the root of the share, before the
    /// guest can run (see `token`).
    fn hand_over_token(&mut self) -> Result<(), VmError> {
        if self.share == ShareKind::None {
            return Ok(());
        }
        let share = &self.paths.share_dir;
        let err = |source: std::io::Error| VmError::Dir {
            path: share.join(kata_agent_protocol::auth::FILE),
            source,
        };
        let token = token::AgentToken::generate().map_err(err)?;
        crate::storage::with_writable_share(share, || token.write(share))?.map_err(err)?;
        self.agent_token = Some(token);
        Ok(())
    }

    /// The shared directory's device: virtiofsd for virtio-fs.
    async fn start_share(
        &mut self,
        config: &Config,
        plan: &Plan,
        opts: &VmOptions,
    ) -> Result<ShareDevice, VmError> {
        let q = &config.hypervisor.qemu;
        match self.share {
            ShareKind::VirtioFs => {
                let bin = plan
                    .fs_bin
                    .as_ref()
                    .expect("virtio-fs resolved the daemon binary");
                // Binds made under the share later (container rootfs and
                // volumes) must reach virtiofsd's own mount namespace; the
                // root is a bounded, read-only tmpfs (storage::share).
                crate::storage::prepare_share(&self.paths.share_dir)?;
                let sock = self.paths.virtiofsd();
                let mut cmd = Command::new(bin);
                cmd.arg(format!("--socket-path={}", sock.display()))
                    .arg(format!("--shared-dir={}", self.paths.share_dir.display()))
                    .arg(format!("--cache={}", q.virtio_fs_cache))
                    .args(&q.virtio_fs_extra_args);
                join_cgroup(&mut cmd, opts);
                let d =
                    Supervised::spawn("virtiofsd", cmd, &self.sandbox_id, LineKind::Diagnostic)?;
                let ready = d.wait_for_socket(&sock, HELPER_READY).await;
                self.fs_daemon = Some(d);
                ready?;
                if let Some(user) = &self.vmm_user {
                    // virtiofsd keeps root and makes its socket root's; the
                    // VM's own user is the one client it should have.
                    std::os::unix::fs::chown(&sock, Some(user.uid), Some(user.gid)).map_err(
                        |source| VmError::Dir {
                            path: sock.clone(),
                            source,
                        },
                    )?;
                }
                Ok(ShareDevice::VirtioFs { socket: sock })
            }
            ShareKind::NineP => {
                // QEMU serves 9p from the node's mount namespace; the root
                // is bounded and read-only all the same.
                crate::storage::prepare_share(&self.paths.share_dir)?;
                Ok(ShareDevice::NineP {
                    dir: self.paths.share_dir.clone(),
                })
            }
            ShareKind::None => Ok(ShareDevice::None),
        }
    }

    /// Spawns QEMU in the pod's network namespace and host cgroup, with
    /// the NICs' and vhost-vsock's descriptors inherited.
    fn spawn_qemu(
        &mut self,
        config: &Config,
        plan: &Plan,
        opts: &VmOptions,
        vsock: VsockDevice,
        share: ShareDevice,
    ) -> Result<(), VmError> {
        let q = &config.hypervisor.qemu;
        let sid = self.sandbox_id.clone();
        let debug = config.runtime.enable_debug;
        let agent_log = if debug {
            crate::config::LogLevel::Debug
        } else {
            config.agent.kata.log_level
        };
        let vcpus = opts.vcpus.unwrap_or(q.default_vcpus);
        let max_vcpus = opts.growth.map_or(vcpus, |c| c.max_vcpus.max(vcpus));
        let (memory_slots, max_memory_mib) = match opts.growth {
            Some(c) => (q.memory_slots, c.max_memory_mib),
            None => (0, 0),
        };
        let kernel_cmdline = KernelCmdline {
            accel: self.accel,
            vcpus,
            max_vcpus,
            debug,
            agent_log,
            debug_console: config.agent.kata.debug_console_enabled,
            share: &share,
            extra: &q.kernel_params,
        }
        .render();
        let spec = QemuSpec {
            sandbox_id: sid.clone(),
            uuid: cmdline::sandbox_uuid(&sid),
            machine_type: q.machine_type.clone(),
            accel: self.accel,
            tcg_tb_size_mib: q.tcg_tb_size,
            vcpus,
            max_vcpus,
            memory_slots,
            max_memory_mib,
            memory_mib: opts.memory_mib.unwrap_or(q.default_memory),
            kernel: q.kernel.clone(),
            initrd: q.initrd.clone(),
            kernel_cmdline,
            qmp_socket: self.paths.qmp(),
            seccomp_sandbox: q.seccompsandbox.clone(),
            vsock: Some(vsock),
            share,
        };
        let nics: Vec<nic::NicDevice> = opts
            .nics
            .iter()
            .map(|n| nic::NicDevice {
                tap_fds: n.taps.iter().map(|f| f.as_raw_fd()).collect(),
                vhost_fds: n.vhosts.iter().map(|f| f.as_raw_fd()).collect(),
                mac: n.mac.clone(),
            })
            .collect();
        let mut cmd = Command::new(&plan.qemu_bin);
        cmd.args(spec.to_args());
        cmd.args(nic::nic_args(&nics));
        join_cgroup(&mut cmd, opts);
        let mut inherited: Vec<i32> = nics
            .iter()
            .flat_map(|n| n.tap_fds.iter().chain(&n.vhost_fds).copied())
            .collect();
        if let Some(held) = &self.vhost {
            inherited.push(held.file.as_raw_fd());
        }
        let netns = opts.netns.as_ref().map(|f| f.as_raw_fd());
        if !inherited.is_empty() || netns.is_some() {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls fcntl(2) and setns(2), which are async-signal-safe;
            // every fd is open for the parent's whole spawn call because
            // `opts` and `self.vhost` own them.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &inherited {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if let Some(fd) = netns {
                        if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if let Some(user) = &self.vmm_user {
            user.apply(&mut cmd);
        }
        tracing::info!(sandbox_id = %sid, uid = self.vmm_user.as_ref().map(|u| u.uid), accel = self.accel.as_str(), share = ?self.share,
            vsock = ?plan.vsock, qemu = %plan.qemu_bin.display(), "starting VM");
        tracing::debug!(sandbox_id = %sid, argv = ?spec.to_args(), "qemu argv");
        let qemu = Supervised::spawn("qemu", cmd, &sid, LineKind::GuestConsole)?;
        self.spawned_at = Instant::now();
        self.qemu = Some(qemu);
        Ok(())
    }

    /// QMP, once QEMU created its socket; a QEMU that died instead is
    /// reported with its own last words.
    async fn connect_qmp(&mut self) -> Result<(), VmError> {
        match Qmp::connect(&self.paths.qmp(), HELPER_READY).await {
            Ok(qmp) => {
                self.qmp = Some(qmp);
                Ok(())
            }
            Err(e) => match (self.exit_status(), self.qemu.as_ref()) {
                (Some(status), Some(q)) => Err(q.exited_early(status).into()),
                _ => Err(e.into()),
            },
        }
    }

    /// With `rootless`, a uid of the sandbox's own, which then owns the
    /// state directory where QEMU and vhost-device-vsock make their sockets
    /// (it stays 0700: root and that uid only).
    fn claim_user(&mut self, config: &Config) -> Result<(), VmError> {
        let q = &config.hypervisor.qemu;
        if !q.rootless {
            return Ok(());
        }
        let kvm = match self.accel {
            cmdline::Accel::Kvm => rootless::kvm_group(),
            cmdline::Accel::Tcg => None,
        };
        let user =
            rootless::VmmUser::claim(&self.sandbox_id, q.rootless_first_uid, q.rootless_uids, kvm)?;
        let (uid, gid) = (user.uid, user.gid);
        self.vmm_user = Some(user);
        let dir = &self.paths.state_dir;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|source| VmError::Dir {
            path: dir.clone(),
            source,
        })
    }

    fn create_dirs(&mut self) -> Result<(), VmError> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [&self.paths.state_dir, &self.paths.share_dir] {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|source| VmError::Dir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            // A leftover directory means a sandbox with this id is live or
            // was not cleaned up; refusing protects the other sandbox.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|source| VmError::Dir {
                    path: dir.clone(),
                    source,
                })?;
            self.dirs_created = true;
        }
        Ok(())
    }

    /// QEMU's pid: what containerd sees as the task pid.
    pub fn pid(&self) -> u32 {
        self.qemu.as_ref().map(Supervised::pid).unwrap_or(0)
    }

    /// QEMU and its helpers with their pids, for the persisted state.
    pub fn process_pids(&self) -> Vec<(&'static str, u32)> {
        [
            ("qemu", &self.qemu),
            ("virtiofsd", &self.fs_daemon),
            ("vhost-device-vsock", &self.vsock_daemon),
        ]
        .into_iter()
        .filter_map(|(name, c)| c.as_ref().map(|c| (name, c.pid())))
        .collect()
    }

    /// QEMU's exit status once it has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.qemu.as_ref().and_then(Supervised::exit_status)
    }

    /// A receiver that sees QEMU's exit.
    pub fn exit_watch(&self) -> Option<tokio::sync::watch::Receiver<Option<ExitStatus>>> {
        self.qemu.as_ref().map(Supervised::exit_watch)
    }

    /// Receivers that see the helpers' exits, by name: without virtiofsd
    /// the guest's share hangs, without vhost-device-vsock the agent is
    /// cut off, while QEMU runs on.
    pub fn helper_exit_watches(
        &self,
    ) -> Vec<(
        &'static str,
        tokio::sync::watch::Receiver<Option<ExitStatus>>,
    )> {
        [&self.fs_daemon, &self.vsock_daemon]
            .into_iter()
            .flatten()
            .map(|d| (d.what, d.exit_watch()))
            .collect()
    }

    /// Sees `true` once the agent announced on the console that it listens.
    pub fn agent_ready_watch(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.qemu.as_ref().map(Supervised::ready_watch)
    }

    /// QEMU's last lines (console and errors), as they come.
    pub fn console_tail(&self) -> Option<child::Tail> {
        self.qemu.as_ref().map(Supervised::tail)
    }

    /// The last lines QEMU printed (console and errors).
    pub fn recent_output(&self) -> String {
        self.qemu
            .as_ref()
            .map(Supervised::recent_output)
            .unwrap_or_default()
    }

    /// The QMP session, once QEMU runs.
    pub fn qmp(&mut self) -> Option<&mut Qmp> {
        self.qmp.as_mut()
    }

    /// The run state reported over QMP.
    pub async fn status(&mut self) -> Result<String, VmError> {
        match self.qmp.as_mut() {
            Some(q) => Ok(q.status().await?),
            None => Ok("not started".into()),
        }
    }

    /// Stops the VM and removes everything it created. With `guest_grace`,
    /// first waits that long for the guest to power off by itself (after the
    /// agent was asked to), then asks QEMU to quit over QMP, then kills it.
    pub async fn stop(mut self, guest_grace: Duration) -> StopReport {
        let began = Instant::now();
        let mut how = "already exited";
        if let Some(q) = &self.qemu {
            if q.exit_status().is_none() {
                how = "guest power-off";
                if q.wait_exit(guest_grace).await.is_none() {
                    how = "QMP quit";
                    if let Some(qmp) = self.qmp.as_mut() {
                        if let Err(e) = qmp.quit().await {
                            tracing::warn!(sandbox_id = %self.sandbox_id, error = %e, "QMP quit failed");
                        }
                    }
                    if q.wait_exit(Duration::from_secs(3)).await.is_none() {
                        how = "SIGKILL";
                        q.kill().await;
                    }
                }
            }
        }
        let qemu_status = self.exit_status();
        self.teardown().await;
        StopReport {
            how,
            qemu_status,
            duration: began.elapsed(),
        }
    }

    /// Kills QEMU at once (a dead or stalled guest has nothing to flush)
    /// and removes everything else, as [`Vm::stop`] does.
    pub async fn kill(mut self) -> StopReport {
        let began = Instant::now();
        let how = if self.exit_status().is_some() {
            "already exited"
        } else {
            "SIGKILL"
        };
        let exit = self.exit_watch();
        self.teardown().await;
        StopReport {
            how,
            qemu_status: exit.and_then(|rx| *rx.borrow()),
            duration: began.elapsed(),
        }
    }

    /// Kills whatever runs and removes the directories. Idempotent.
    async fn teardown(&mut self) {
        self.qmp = None;
        if let Some(q) = self.qemu.take() {
            q.kill().await;
        }
        // With QEMU gone the helpers lose their peer and exit by themselves;
        // the signal covers one that did not.
        for d in [self.fs_daemon.take(), self.vsock_daemon.take()]
            .into_iter()
            .flatten()
        {
            d.stop(Duration::from_secs(1)).await;
        }
        self.vhost = None;
        if self.dirs_created {
            crate::storage::release_share(&self.paths.share_dir);
            crate::layout::remove_sandbox_dirs(&self.sandbox_id, &self.paths);
            self.dirs_created = false;
        }
        if self.vmm_user.take().is_some() {
            rootless::release(&self.sandbox_id);
        }
    }
}

/// How a stop went.
#[derive(Debug, Clone)]
pub struct StopReport {
    pub how: &'static str,
    pub qemu_status: Option<ExitStatus>,
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_fs_falls_back_to_9p_without_virtiofsd() {
        for (wanted, found, share) in [
            (SharedFs::VirtioFs, true, ShareKind::VirtioFs),
            (SharedFs::VirtioFs, false, ShareKind::NineP),
            (SharedFs::Virtio9p, true, ShareKind::NineP),
            (SharedFs::None, true, ShareKind::None),
        ] {
            assert_eq!(
                choose_share(wanted, found),
                share,
                "{wanted:?}, found {found}"
            );
        }
    }
}
