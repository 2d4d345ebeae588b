//! Containers: created, started, exec'd into and removed with youki's
//! `libcontainer`.
//!
//! Each container has a directory `/run/kata-containers/<cid>/`: the
//! rewritten spec is the bundle's `config.json` there, and libcontainer's
//! state lives in its `state/<cid>/` subdirectory. libcontainer forks an
//! intermediate process (a child of the agent) which clones the container
//! init with `CLONE_PARENT`, so the init is a child of the agent too and
//! the reaper collects it: exits flow reaper → [`Process`] (see
//! `process.rs`). libcontainer's fork runs on a thread of its own, one
//! at a time (the sandbox serializes them; `forksafe.rs` says why the fork
//! is glibc's). The agent's own [`ContainerState`] is the authority over
//! the lifecycle; libcontainer's status file is only used by libcontainer
//! itself.

pub mod cgroup;
mod console;
mod executor;
mod kernel_fs;
pub mod resources;
pub mod spec;
#[cfg(test)]
mod spec_fuzz;
pub mod state;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcontainer::container::Container as LcContainer;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use tokio::task::JoinHandle;

use crate::error::{AgentError, Result};
use crate::locks::lock;
use crate::process::Process;
use crate::reaper::Reaper;
use crate::stdio::{self, ChildStdio, ProcessIo, StdioConfig};
use console::ConsoleSocket;
use state::ContainerState;

/// Parent of every container directory in the guest.
pub const RUN_DIR: &str = "/run/kata-containers";
/// How long RemoveContainer waits for the processes to die by default.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One container.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    dir: PathBuf,
    /// `linux.cgroupsPath` as applied.
    pub cgroups_path: PathBuf,
    state: Arc<Mutex<ContainerState>>,
    /// The init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Container-level storage mount points, unmounted on removal.
    pub storages: Vec<PathBuf>,
    /// Stops the OOM watcher on drop.
    pub oom_watch: Mutex<Option<JoinHandle<()>>>,
}

/// libcontainer's errors say little at the top ("failed syscall"): report
/// the whole source chain.
fn lc_err(what: &str, e: impl std::error::Error) -> AgentError {
    let mut msg = format!("{what}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    AgentError::Internal(msg)
}

/// A build error: the spec's fault (INVALID_ARGUMENT) when libcontainer's
/// validation refused it, ours otherwise.
fn lc_build_err(what: &str, e: libcontainer::error::LibcontainerError) -> AgentError {
    use libcontainer::error::LibcontainerError as E;
    match e {
        E::InvalidSpec(_) | E::MissingSpec(_) | E::InvalidInput(_) => AgentError::InvalidArgument {
            field: "oci_spec_json",
            reason: format!("{what}: {e}"),
        },
        e => lc_err(what, e),
    }
}

/// libcontainer writes `process.oomScoreAdj` to its caller's
/// /proc/self/oom_score_adj so that the forked process inherits it. In a
/// long-lived agent that would change the agent's own score, and every
/// later container and exec would inherit it: put it back once the child
/// exists (libcontainer forks one at a time, see the module doc).
fn keeping_own_oom_score_adj<T>(f: impl FnOnce() -> T) -> T {
    const PATH: &str = "/proc/self/oom_score_adj";
    let saved = std::fs::read_to_string(PATH).ok();
    let r = f();
    if let Some(v) = saved
        && let Err(e) = std::fs::write(PATH, v.trim())
    {
        tracing::warn!(error = %e, "cannot restore the agent's oom_score_adj");
    }
    r
}

/// The pod's network namespace is the VM's (the spec's is dropped, see
/// spec.rs), so libcontainer would refuse `net.*` sysctls as "host
/// network" ones. They are the pod's: apply them here, in the guest's
/// namespace, and hand libcontainer the rest.
fn apply_net_sysctls(spec: &mut Spec) -> Result<()> {
    let Some(sysctls) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.sysctl_mut().as_mut())
    else {
        return Ok(());
    };
    let net: Vec<String> = sysctls
        .keys()
        .filter(|k| k.replace('/', ".").starts_with("net."))
        .cloned()
        .collect();
    for key in net {
        let value = sysctls.remove(&key).unwrap_or_default();
        let parts: Vec<&str> = key.split(['.', '/']).collect();
        if parts.iter().any(|p| p.is_empty() || *p == "..") {
            return Err(AgentError::InvalidArgument {
                field: "linux.sysctl",
                reason: format!("{key:?} is not a sysctl name"),
            });
        }
        let path = Path::new("/proc/sys").join(parts.join("/"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|e| AgentError::InvalidArgument {
                field: "linux.sysctl",
                reason: format!("setting {key}={value:?}: {e}"),
            })?;
        tracing::info!(sysctl = %key, value = %value, "pod sysctl applied");
    }
    Ok(())
}

/// Container ids become directory names: keep them boring.
pub fn validate_id(id: &str, field: &'static str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "shared"
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument {
            field,
            reason: format!("{id:?} is not a valid id ([A-Za-z0-9_.-], not `shared`)"),
        })
    }
}

/// pivot_root(2) cannot leave an initramfs (EINVAL): when the guest runs
/// from one, libcontainer must move the rootfs onto / and chroot instead,
/// as runc's --no-pivot does.
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .find(|f| f.get(4) == Some(&"/"))
                .and_then(|f| {
                    let sep = f.iter().position(|x| *x == "-")?;
                    f.get(sep + 1)
                        .map(|t| matches!(*t, "rootfs" | "ramfs" | "tmpfs"))
                })
        })
        .unwrap_or(false)
}

/// Opens /dev/null for a missing stdin: the child must not inherit the
/// agent's (the console).
fn dev_null() -> Result<OwnedFd> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::io("opening", "/dev/null", e))
}

/// Hands the child's stdio to a libcontainer builder.
fn with_stdio(mut b: ContainerBuilder, child: ChildStdio) -> Result<ContainerBuilder> {
    let stdin = match child.stdin {
        Some(fd) => fd,
        None => dev_null()?,
    };
    let stderr = match child.stderr {
        Some(fd) => fd,
        // A terminal: stdout and stderr are the same pty.
        None => child
            .stdout
            .try_clone()
            .map_err(|e| AgentError::io("duplicating", "stdout", e))?,
    };
    b = b
        .with_stdin(stdin)
        .with_stdout(child.stdout)
        .with_stderr(stderr);
    Ok(b)
}

/// A new process's stdio on its way through libcontainer: pipes the agent
/// made, or, with a terminal, a console socket on which libcontainer sends
/// the pty master it opened inside the container.
enum Stdio {
    /// The child's ends go to the builder; the agent keeps `io`.
    Pipes {
        child: Option<ChildStdio>,
        io: ProcessIo,
    },
    Console(ConsoleSocket),
    Master(OwnedFd),
}

impl Stdio {
    fn new(terminal: bool) -> Result<Stdio> {
        if terminal {
            return Ok(Stdio::Console(ConsoleSocket::bind_new()?));
        }
        let (child, io) = stdio::create(StdioConfig {
            terminal: false,
            open_stdin: true,
        })?;
        Ok(Stdio::Pipes {
            child: Some(child),
            io,
        })
    }

    /// Hands the child's side to the builder.
    fn attach(self, b: ContainerBuilder) -> Result<(ContainerBuilder, Stdio)> {
        match self {
            Stdio::Pipes { child, io } => {
                let b = match child {
                    Some(child) => with_stdio(b, child)?,
                    None => b,
                };
                Ok((b, Stdio::Pipes { child: None, io }))
            }
            Stdio::Console(sock) => {
                let b = b.with_console_socket(Some(sock.path()));
                Ok((b, Stdio::Console(sock)))
            }
            Stdio::Master(m) => Ok((b, Stdio::Master(m))),
        }
    }

    /// After the build: takes the master libcontainer sent, if any.
    fn received(self) -> Result<Stdio> {
        match self {
            Stdio::Console(sock) => Ok(Stdio::Master(sock.receive_master()?)),
            other => Ok(other),
        }
    }

    /// The agent's side (inside the runtime: it registers with the reactor).
    fn into_io(self) -> Result<ProcessIo> {
        match self {
            Stdio::Pipes { io, .. } => Ok(io),
            Stdio::Master(m) => ProcessIo::from_pty_master(m, true),
            Stdio::Console(_) => Err(AgentError::Internal(
                "the pty master was never received".into(),
            )),
        }
    }
}

impl Container {
    fn lc_root(dir: &Path) -> PathBuf {
        dir.join("state")
    }

    /// Creates the container from a rewritten spec: writes the bundle and
    /// lets libcontainer fork the init, which waits for [`Container::start`].
    pub async fn create(
        id: String,
        spec: Spec,
        terminal: bool,
        storages: Vec<PathBuf>,
        reaper: &Reaper,
    ) -> Result<Arc<Container>> {
        let dir = Path::new(RUN_DIR).join(&id);
        if dir.exists() {
            return Err(AgentError::FailedPrecondition(format!(
                "{} exists from an earlier container",
                dir.display()
            )));
        }
        let mut spec = spec;
        apply_net_sysctls(&mut spec)?;
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("creating", &dir, e))?;
        let config = dir.join("config.json");
        spec.save(&config)
            .map_err(|e| lc_err("writing the bundle's config.json", e))?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_default();

        let stdio = Stdio::new(terminal)?;

        // Subscribe before the fork: the init may die before we learn its pid.
        let exits = reaper.subscribe();
        let (lc_id, lc_dir, checked) = (id.clone(), dir.clone(), spec.clone());
        let res =
            crate::forksafe::run("creating the container", move || -> Result<(i32, Stdio)> {
                let b = ContainerBuilder::new(lc_id, SyscallType::default())
                    .with_executor(executor::DefaultSignals)
                    .validate_id()
                    .map_err(|e| AgentError::InvalidArgument {
                        field: "container_id",
                        reason: e.to_string(),
                    })?
                    .with_root_path(Self::lc_root(&lc_dir))
                    .map_err(|e| lc_err("libcontainer root", e))?;
                let (b, stdio) = stdio.attach(b)?;
                let b = b
                    .as_init(&lc_dir)
                    .with_systemd(false)
                    .with_no_pivot(root_is_initramfs())
                    .with_detach(true);
                let mut c = keeping_own_oom_score_adj(|| b.build())
                    .map_err(|e| lc_build_err("creating the container", e))?;
                let pid = c.pid().map(|p| p.as_raw()).ok_or_else(|| {
                    AgentError::Internal("libcontainer reported no init pid".into())
                })?;
                if let Err(e) = kernel_fs::verify_kernel_fs_mounts(&checked, pid) {
                    // Never started: kill the init, let the reaper collect it,
                    // and remove what libcontainer made.
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while proc_dir.exists() && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if let Err(de) = c.delete(true) {
                        tracing::warn!(error = %de, "cannot delete a refused container");
                    }
                    return Err(e);
                }
                let stdio = stdio.received()?;
                Ok((pid, stdio))
            })
            .await;
        let (pid, io) = match res.and_then(|(pid, stdio)| Ok((pid, stdio.into_io()?))) {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        io.child_started();
        let state = Arc::new(Mutex::new(ContainerState::Created));
        let st = Arc::clone(&state);
        let cid = id.clone();
        let init = Process::watch_exit(String::new(), pid, io, exits, move |status| {
            tracing::info!(container_id = %cid, status, "container init exited");
            let _ = lock(&st).transition(ContainerState::Stopped);
        });
        tracing::info!(container_id = %id, pid, "container created");
        Ok(Arc::new(Container {
            id,
            dir,
            cgroups_path,
            state,
            init,
            execs: Mutex::new(HashMap::new()),
            storages,
            oom_watch: Mutex::new(None),
        }))
    }

    /// The current lifecycle state.
    pub fn state(&self) -> ContainerState {
        *lock(&self.state)
    }

    /// The container's cgroup directory.
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup::dir_of(&self.cgroups_path)
    }

    fn load_lc(&self) -> Result<LcContainer> {
        LcContainer::load(Self::lc_root(&self.dir).join(&self.id))
            .map_err(|e| lc_err("loading the container state", e))
    }

    /// Lets the init exec the user's program.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        self.state().can_start()?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || -> Result<()> {
            me.load_lc()?
                .start()
                .map_err(|e| lc_err("starting the container", e))
        })
        .await
        .map_err(|e| AgentError::Internal(format!("start task: {e}")))??;
        // The init may already have exited; Stopped then stays.
        let mut st = lock(&self.state);
        if *st == ContainerState::Created {
            st.transition(ContainerState::Running)?;
        }
        tracing::info!(container_id = %self.id, "container started");
        Ok(())
    }

    /// The init (empty `exec_id`) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!("exec {exec_id:?} in container {:?}", self.id))
        })
    }

    /// Signals one process, or with `all` every process in the cgroup.
    /// A stop signal sent to the init alone that it cannot receive becomes
    /// SIGKILL (see [`crate::process::init_stop_signal`]). With `all`
    /// every process gets the signal as asked: the others die of it, and
    /// an init waiting on them exits by itself.
    pub fn signal(&self, exec_id: &str, sig: Option<Signal>, all: bool) -> Result<()> {
        let p = self.process(exec_id)?;
        if !all {
            let sig = match sig {
                Some(s) if exec_id.is_empty() && p.exit_status().is_none() => {
                    Some(crate::process::init_stop_signal(p.pid, s))
                }
                other => other,
            };
            return p.signal(sig);
        }
        self.state().can_signal()?;
        for pid in cgroup::pids(&self.cgroup_dir())? {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(AgentError::sys(format!("kill({pid}, {sig:?})"), e)),
            }
        }
        Ok(())
    }

    /// Runs `process` in the container's namespaces and cgroup.
    pub async fn exec(
        self: &Arc<Self>,
        exec_id: String,
        process: oci_spec::runtime::Process,
        reaper: &Reaper,
    ) -> Result<()> {
        self.state().can_exec()?;
        if lock(&self.execs).contains_key(&exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} in container {:?}",
                self.id
            )));
        }
        let began = std::time::Instant::now();
        let terminal = spec::terminal(&process);
        let pfile = self.dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process)
            .map_err(|e| AgentError::Internal(format!("serializing the process: {e}")))?;
        std::fs::write(&pfile, json).map_err(|e| AgentError::io("writing", &pfile, e))?;
        let stdio = Stdio::new(terminal)?;

        let exits = reaper.subscribe();
        let prepared = began.elapsed();
        let (id, root, pf) = (self.id.clone(), Self::lc_root(&self.dir), pfile.clone());
        let res = crate::forksafe::run("exec", move || -> Result<(i32, Stdio)> {
            let b = ContainerBuilder::new(id, SyscallType::default())
                .with_executor(executor::DefaultSignals)
                .with_root_path(root)
                .map_err(|e| lc_err("libcontainer root", e))?;
            let (b, stdio) = stdio.attach(b)?;
            let b = b.as_tenant().with_detach(true).with_process(Some(pf));
            let pid =
                keeping_own_oom_score_adj(|| b.build()).map_err(|e| lc_build_err("exec", e))?;
            Ok((pid.as_raw(), stdio.received()?))
        })
        .await;
        let built = began.elapsed();
        let _ = std::fs::remove_file(&pfile);
        let (pid, stdio) = res?;
        let io = stdio.into_io()?;
        io.child_started();
        let (cid, eid) = (self.id.clone(), exec_id.clone());
        let p = Process::watch_exit(exec_id.clone(), pid, io, exits, move |status| {
            tracing::info!(container_id = %cid, exec_id = %eid, status, "exec exited");
        });
        lock(&self.execs).insert(exec_id.clone(), p);
        // Where an exec's time goes (issue: exec at the floor): the spec
        // and stdio set-up, then libcontainer's tenant build (its fork,
        // namespace joins, confinement and execve), then the rest.
        tracing::info!(
            container_id = %self.id,
            exec_id = %exec_id,
            pid,
            prepare_us = prepared.as_micros() as u64,
            build_us = (built - prepared).as_micros() as u64,
            total_us = began.elapsed().as_micros() as u64,
            "exec started"
        );
        Ok(())
    }

    /// Freezes the cgroup.
    pub async fn pause(&self) -> Result<()> {
        self.state().can_pause()?;
        cgroup::freeze(&self.cgroup_dir(), true).await?;
        lock(&self.state).transition(ContainerState::Paused)
    }

    /// Thaws the cgroup.
    pub async fn resume(&self) -> Result<()> {
        self.state().can_resume()?;
        cgroup::freeze(&self.cgroup_dir(), false).await?;
        lock(&self.state).transition(ContainerState::Running)
    }

    /// Applies new resources.
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.state().can_update()?;
        cgroup::update(&self.cgroups_path, resources)
    }

    /// Kills everything, waits for the init, and lets libcontainer remove
    /// the cgroup and its state; then removes the container directory.
    pub async fn remove(self: &Arc<Self>, timeout_secs: u32) -> Result<()> {
        if self.state() != ContainerState::Stopped {
            if self.state() == ContainerState::Paused {
                // A frozen process cannot die of SIGKILL until thawed.
                let _ = cgroup::freeze(&self.cgroup_dir(), false).await;
            }
            self.signal("", Some(Signal::SIGKILL), true)?;
            let timeout = if timeout_secs == 0 {
                DEFAULT_REMOVE_TIMEOUT
            } else {
                Duration::from_secs(u64::from(timeout_secs))
            };
            let mut rx = self.init_exit_rx();
            if tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
                .await
                .is_err()
            {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {:?} did not die within {timeout:?} of SIGKILL",
                    self.id
                )));
            }
        }
        if let Some(h) = lock(&self.oom_watch).take() {
            h.abort();
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || -> Result<()> {
            match me.load_lc() {
                Ok(mut c) => c
                    .delete(true)
                    .map_err(|e| lc_err("deleting the container", e)),
                Err(e) => {
                    tracing::warn!(container_id = %me.id, error = %e, "no libcontainer state");
                    Ok(())
                }
            }
        })
        .await
        .map_err(|e| AgentError::Internal(format!("delete task: {e}")))??;
        for mp in &self.storages {
            if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(container_id = %self.id, mount_point = %mp.display(), error = %e, "cannot unmount storage");
            }
        }
        release_share_submounts(&self.id);
        std::fs::remove_dir_all(&self.dir).map_err(|e| AgentError::io("removing", &self.dir, e))?;
        tracing::info!(container_id = %self.id, "container removed");
        Ok(())
    }

    fn init_exit_rx(&self) -> tokio::sync::watch::Receiver<Option<i32>> {
        self.init.exit_receiver()
    }
}

/// The host binds the container's rootfs and volumes into the share as
/// mounts of their own, which virtio-fs (`--announce-submounts`) shows
/// the guest as submounts under `<share>/<id>`, mounted on first use.
/// Nothing else unmounts them in the guest: without this, every
/// container left one in the guest's mount table. Called when a container
/// is removed and when its create fails.
pub fn release_share_submounts(container_id: &str) {
    let entry = Path::new(kata_agent_protocol::guest::SHARED_FS_MOUNT).join(container_id);
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for mp in crate::mountinfo::mount_points_under(&text, &entry) {
        if let Err(e) = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(container_id, mount_point = %mp.display(), error = %e, "cannot unmount a share submount");
        }
    }
}
