//! Containers: created, started, exec'd into and removed with youki's
//! `libcontainer`.
//!
//! Each container has a directory `/run/kata-containers/<cid>/`: the
//! rewritten spec is the bundle's `config.json` there, and libcontainer's
//! state lives in its `state/<cid>/` subdirectory. libcontainer forks an
//! intermediate process (a child of the agent) which clones the container
//! init with `CLONE_PARENT`, so the init is a child of the agent too and
//! the reaper collects it: exits flow reaper → [`Process`] (see
//! `process.rs`). libcontainer's fork runs on a blocking thread, one at a
//! time (the sandbox serializes them). The agent's own [`ContainerState`]
//! is the authority over the lifecycle; libcontainer's status file is only
//! used by libcontainer itself.

pub mod cgroup;
pub mod spec;
pub mod state;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libcontainer::container::Container as LcContainer;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use tokio::task::JoinHandle;

use crate::error::{AgentError, Result};
use crate::process::Process;
use crate::reaper::Reaper;
use crate::stdio::{self, ChildStdio, StdioConfig};
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Panics abort the agent (panic=abort); a poisoned lock is only a test artefact.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("creating", &dir, e))?;
        let config = dir.join("config.json");
        spec.save(&config)
            .map_err(|e| lc_err("writing the bundle's config.json", e))?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_default();

        let (child, io) = stdio::create(StdioConfig {
            terminal,
            open_stdin: true,
        })?;

        // Subscribe before the fork: the init may die before we learn its pid.
        let exits = reaper.subscribe();
        let (lc_id, lc_dir) = (id.clone(), dir.clone());
        let res = tokio::task::spawn_blocking(move || -> Result<i32> {
            let b = ContainerBuilder::new(lc_id, SyscallType::default())
                .validate_id()
                .map_err(|e| AgentError::InvalidArgument {
                    field: "container_id",
                    reason: e.to_string(),
                })?
                .with_root_path(Self::lc_root(&lc_dir))
                .map_err(|e| lc_err("libcontainer root", e))?;
            let c = with_stdio(b, child)?
                .as_init(&lc_dir)
                .with_systemd(false)
                .with_no_pivot(root_is_initramfs())
                .with_detach(true)
                .build()
                .map_err(|e| lc_err("creating the container", e))?;
            c.pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| AgentError::Internal("libcontainer reported no init pid".into()))
        })
        .await
        .map_err(|e| AgentError::Internal(format!("create task: {e}")))?;
        let pid = match res {
            Ok(pid) => pid,
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
    pub fn signal(&self, exec_id: &str, sig: Signal, all: bool) -> Result<()> {
        let p = self.process(exec_id)?;
        if !all {
            return p.signal(sig);
        }
        self.state().can_signal()?;
        for pid in cgroup::pids(&self.cgroup_dir())? {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(AgentError::sys(format!("kill({pid}, {sig})"), e)),
            }
        }
        Ok(())
    }

    /// Runs `process` in the container's namespaces and cgroup.
    pub async fn exec(
        self: &Arc<Self>,
        exec_id: String,
        mut process: oci_spec::runtime::Process,
        reaper: &Reaper,
    ) -> Result<()> {
        self.state().can_exec()?;
        if lock(&self.execs).contains_key(&exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} in container {:?}",
                self.id
            )));
        }
        let terminal = spec::take_terminal(&mut process);
        let pfile = self.dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process)
            .map_err(|e| AgentError::Internal(format!("serializing the process: {e}")))?;
        std::fs::write(&pfile, json).map_err(|e| AgentError::io("writing", &pfile, e))?;
        let (child, io) = stdio::create(StdioConfig {
            terminal,
            open_stdin: true,
        })?;

        let exits = reaper.subscribe();
        let (id, root, pf) = (self.id.clone(), Self::lc_root(&self.dir), pfile.clone());
        let res = tokio::task::spawn_blocking(move || -> Result<i32> {
            let b = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(root)
                .map_err(|e| lc_err("libcontainer root", e))?;
            let pid = with_stdio(b, child)?
                .as_tenant()
                .with_detach(true)
                .with_process(Some(pf))
                .build()
                .map_err(|e| lc_err("exec", e))?;
            Ok(pid.as_raw())
        })
        .await
        .map_err(|e| AgentError::Internal(format!("exec task: {e}")))?;
        let _ = std::fs::remove_file(&pfile);
        let pid = res?;
        io.child_started();
        let (cid, eid) = (self.id.clone(), exec_id.clone());
        let p = Process::watch_exit(exec_id.clone(), pid, io, exits, move |status| {
            tracing::info!(container_id = %cid, exec_id = %eid, status, "exec exited");
        });
        lock(&self.execs).insert(exec_id.clone(), p);
        tracing::info!(container_id = %self.id, exec_id = %exec_id, pid, "exec started");
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
            self.signal("", Signal::SIGKILL, true)?;
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
        std::fs::remove_dir_all(&self.dir).map_err(|e| AgentError::io("removing", &self.dir, e))?;
        tracing::info!(container_id = %self.id, "container removed");
        Ok(())
    }

    fn init_exit_rx(&self) -> tokio::sync::watch::Receiver<Option<i32>> {
        self.init.exit_receiver()
    }
}
