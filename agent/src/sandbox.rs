//! The pod as the agent sees it: its id, hostname and storages, the
//! containers in it, and the OOM queue. Every container RPC resolves its
//! container here; the domain work is in `container/`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kata_agent_protocol::agent::{StatsContainerResponse, Storage};
use nix::mount::{MsFlags, mount};
use oci_spec::runtime::LinuxNamespaceType;
use tokio::sync::Mutex;

use crate::container::{self, Container, cgroup, spec};
use crate::error::{AgentError, Result};
use crate::oom::OomQueue;
use crate::process::{self, Process};
use crate::reaper::Reaper;
use crate::storage::{self, StorageSpec};

/// The pod's shared `/dev/shm`, bind-mounted by the shim's specs.
pub use kata_agent_protocol::guest::SANDBOX_SHM;

#[derive(Debug, Default)]
struct SandboxInfo {
    id: String,
    sandbox_pidns: bool,
    /// Mount points of the sandbox storages.
    storages: Vec<PathBuf>,
    /// The sandbox container's init: the first container of the pod,
    /// whose namespaces the others join where the pod shares them.
    sandbox_init: Option<SandboxInit>,
}

/// The sandbox container's init and its shareable namespaces, opened while
/// it was alive. Joining by `/proc/<pid>/ns/<type>` would follow the pid:
/// once the init exits, the pid is free, and whichever process takes it
/// next would hand later containers its namespaces (the guest's own, say).
#[derive(Debug)]
struct SandboxInit {
    process: Arc<Process>,
    namespaces: PinnedNamespaces,
}

/// Namespaces of one process, held by the agent's own fds.
#[derive(Debug)]
struct PinnedNamespaces {
    pid: i32,
    fds: Vec<(&'static str, OwnedFd)>,
}

impl PinnedNamespaces {
    /// Opens `/proc/<pid>/ns/<type>` of each shareable type.
    fn open(pid: i32) -> Result<PinnedNamespaces> {
        let fds = SHAREABLE
            .iter()
            .map(|(name, _)| {
                let path = format!("/proc/{pid}/ns/{name}");
                std::fs::File::open(&path)
                    .map(|f| (*name, OwnedFd::from(f)))
                    .map_err(|e| AgentError::io("opening", &path, e))
            })
            .collect::<Result<_>>()?;
        Ok(PinnedNamespaces { pid, fds })
    }

    /// A path to the pinned namespace `name`, as libcontainer's children
    /// (which hold a copy of the agent's fds) open it.
    fn path(&self, name: &str) -> Option<PathBuf> {
        let (_, fd) = self.fds.iter().find(|(n, _)| *n == name)?;
        Some(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        )))
    }
}

/// The namespace types a container may join from the sandbox container,
/// with their names under `/proc/<pid>/ns/`.
const SHAREABLE: [(&str, LinuxNamespaceType); 3] = [
    ("pid", LinuxNamespaceType::Pid),
    ("ipc", LinuxNamespaceType::Ipc),
    ("uts", LinuxNamespaceType::Uts),
];

/// The pinned namespace of the sandbox container's init (`None` until
/// there is one; `exited`: it has exited) for each namespace
/// `container_id` joins (`sandbox_pidns`: the pod asked for one pid
/// namespace for all).
fn sandbox_joins(
    container_id: &str,
    sandbox_init: Option<(&PinnedNamespaces, bool)>,
    requested: &[String],
    sandbox_pidns: bool,
) -> Result<Vec<(LinuxNamespaceType, PathBuf)>> {
    let mut names: Vec<&str> = requested.iter().map(String::as_str).collect();
    if sandbox_pidns && !names.contains(&"pid") {
        names.push("pid");
    }
    names
        .into_iter()
        .filter_map(|name| {
            let Some(&(_, typ)) = SHAREABLE.iter().find(|(n, _)| *n == name) else {
                return Some(Err(AgentError::InvalidArgument {
                    field: "sandbox_namespaces",
                    reason: format!("{name:?} cannot be shared with the sandbox (pid, ipc, uts)"),
                }));
            };
            // The first container is the sandbox's own: there is nothing
            // to join yet, it makes the namespaces the others will join.
            let (pinned, exited) = sandbox_init?;
            Some(match pinned.path(name) {
                Some(path) if !exited => Ok((typ, path)),
                _ => Err(AgentError::FailedPrecondition(format!(
                    "container {container_id:?} joins the pod's {name} namespace, \
                     but the sandbox container's init (pid {}) has exited",
                    pinned.pid
                ))),
            })
        })
        .collect()
}

/// The pod.
#[derive(Debug)]
pub struct Sandbox {
    share: PathBuf,
    reaper: OnceLock<Reaper>,
    info: Mutex<Option<SandboxInfo>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Serializes libcontainer's forks (and the container map's create path).
    create_lock: Mutex<()>,
    oom: OomQueue,
}

fn to_spec(s: &Storage) -> Result<StorageSpec> {
    let mp = PathBuf::from(&s.mount_point);
    if !mp.is_absolute() {
        return Err(AgentError::InvalidArgument {
            field: "storages.mount_point",
            reason: format!("{:?} is not absolute", s.mount_point),
        });
    }
    Ok(StorageSpec {
        driver: s.driver.clone(),
        source: s.source.clone(),
        mount_point: mp,
    })
}

/// A container must have its own mount namespace. Without one,
/// libcontainer prepares the rootfs (its bind, /proc, /dev, ...) in the
/// agent's namespace, where nothing ever unmounts it, and confines the
/// process with a bare chroot(2), which CAP_SYS_CHROOT escapes to the
/// guest's root.
fn require_mount_namespace(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let has = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| {
            nss.iter().any(|ns| {
                ns.typ() == oci_spec::runtime::LinuxNamespaceType::Mount && ns.path().is_none()
            })
        });
    if has {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument {
            field: "linux.namespaces",
            reason: "a container needs a new mount namespace (type `mount`, no path)".into(),
        })
    }
}

impl Sandbox {
    /// A sandbox over the share at `share`; `reaper` is PID 1's (None in
    /// test mode: one is started on first use).
    pub fn new(share: PathBuf, reaper: Option<Reaper>) -> Self {
        let cell = OnceLock::new();
        if let Some(r) = reaper {
            let _ = cell.set(r);
        }
        Self {
            share,
            reaper: cell,
            info: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            create_lock: Mutex::new(()),
            oom: OomQueue::default(),
        }
    }

    fn reaper(&self) -> Result<&Reaper> {
        if let Some(r) = self.reaper.get() {
            return Ok(r);
        }
        let r = Reaper::start()?;
        Ok(self.reaper.get_or_init(|| r))
    }

    /// CreateSandbox: hostname, storages, the pod's /dev/shm.
    pub async fn create(
        &self,
        id: String,
        hostname: String,
        storages: &[Storage],
        sandbox_pidns: bool,
    ) -> Result<()> {
        container::validate_id(&id, "sandbox_id")?;
        let mut info = self.info.lock().await;
        if info.is_some() {
            return Err(AgentError::AlreadyExists(
                "the sandbox was already created".into(),
            ));
        }
        self.reaper()?;
        if !hostname.is_empty() {
            nix::unistd::sethostname(&hostname)
                .map_err(|e| AgentError::sys(format!("sethostname {hostname:?}"), e))?;
        }
        let shm_dir = storage::mkdir_all_no_symlinks(Path::new(SANDBOX_SHM))
            .map_err(|e| AgentError::io("creating", SANDBOX_SHM, e))?;
        let target = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&shm_dir)
        );
        mount(
            Some("shm"),
            target.as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=67108864"),
        )
        .map_err(|e| AgentError::sys(format!("mount tmpfs on {SANDBOX_SHM}"), e))?;
        let mut mounted = Vec::new();
        let storages_mounted = storages.iter().try_for_each(|s| {
            let spec = to_spec(s)?;
            storage::mount_storage(&spec, &self.share)?;
            mounted.push(spec.mount_point);
            Ok(())
        });
        if let Err(e) = storages_mounted {
            // Nothing of a failed CreateSandbox stays mounted: a retry
            // would stack the shm and the storages on the old mounts.
            mounted.insert(0, PathBuf::from(SANDBOX_SHM));
            storage::unmount_all(&mounted);
            return Err(e);
        }
        tracing::info!(sandbox_id = %id, %hostname, storages = mounted.len(), sandbox_pidns, "sandbox created");
        *info = Some(SandboxInfo {
            id,
            sandbox_pidns,
            storages: mounted,
            sandbox_init: None,
        });
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("container {id:?}")))
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        id: String,
        spec_json: &[u8],
        storages: &[Storage],
        sandbox_namespaces: &[String],
    ) -> Result<()> {
        container::validate_id(&id, "container_id")?;
        let mut spec = spec::parse_spec(spec_json)?;
        require_mount_namespace(&spec)?;
        if let Some(r) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.resources_mut().as_mut())
        {
            container::resources::normalize(r, "oci_spec_json")?;
        }
        let _serial = self.create_lock.lock().await;
        if self.containers.lock().await.contains_key(&id) {
            return Err(AgentError::AlreadyExists(format!("container {id:?}")));
        }
        let (sandbox_id, mut roots, shared_pidns) = {
            let info = self.info.lock().await;
            let info = info.as_ref().ok_or_else(|| {
                AgentError::FailedPrecondition("CreateSandbox must come first".into())
            })?;
            let mut roots = vec![self.share.clone(), PathBuf::from(SANDBOX_SHM)];
            roots.extend(info.storages.iter().cloned());
            (info.id.clone(), roots, info.sandbox_pidns)
        };
        // The container's storages are its own: when the create fails they
        // must not stay mounted (a retry would stack another mount on them).
        let mut mounted = Vec::new();
        let created = async {
            for s in storages {
                let st = to_spec(s)?;
                storage::mount_storage(&st, &self.share)?;
                roots.push(st.mount_point.clone());
                mounted.push(st.mount_point);
            }
            let joins = {
                let info = self.info.lock().await;
                let init = info.as_ref().and_then(|i| i.sandbox_init.as_ref());
                sandbox_joins(
                    &id,
                    init.map(|i| (&i.namespaces, i.process.exit_status().is_some())),
                    sandbox_namespaces,
                    shared_pidns,
                )?
            };
            let terminal = spec::rewrite(
                &mut spec,
                &spec::PodContext {
                    sandbox_id: &sandbox_id,
                    container_id: &id,
                    allowed_roots: &roots,
                    joins,
                },
            )?;
            Container::create(id.clone(), spec, terminal, mounted.clone(), self.reaper()?).await
        }
        .await;
        let c = match created {
            Ok(c) => c,
            Err(e) => {
                storage::unmount_all(&mounted);
                crate::container::release_share_submounts(&id);
                return Err(e);
            }
        };
        let first = (self.info.lock().await)
            .as_ref()
            .is_some_and(|i| i.sandbox_init.is_none());
        if first {
            // The init waits for StartContainer: alive, and its pid ours.
            let namespaces = match PinnedNamespaces::open(c.init.pid) {
                Ok(n) => n,
                Err(e) => {
                    if let Err(re) = c.remove(0).await {
                        tracing::warn!(container_id = %id, error = %re, "cannot remove a sandbox container whose namespaces cannot be held");
                    }
                    return Err(e);
                }
            };
            if let Some(info) = self.info.lock().await.as_mut() {
                info.sandbox_init = Some(SandboxInit {
                    process: Arc::clone(&c.init),
                    namespaces,
                });
            }
        }
        *crate::locks::lock(&c.oom_watch) = Some(self.oom.watch(id.clone(), c.cgroup_dir()));
        self.containers.lock().await.insert(id, c);
        Ok(())
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.get(id).await?.start().await
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str, timeout: u32) -> Result<()> {
        let c = self.get(id).await?;
        c.remove(timeout).await?;
        self.containers.lock().await.remove(id);
        Ok(())
    }

    /// PauseContainer.
    pub async fn pause_container(&self, id: &str) -> Result<()> {
        self.get(id).await?.pause().await
    }

    /// ResumeContainer.
    pub async fn resume_container(&self, id: &str) -> Result<()> {
        self.get(id).await?.resume().await
    }

    /// UpdateContainer.
    pub async fn update_container(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.get(id).await?;
        let mut de = serde_json::Deserializer::from_slice(resources_json);
        let mut res: oci_spec::runtime::LinuxResources = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| AgentError::InvalidArgument {
                field: "resources_json",
                reason: format!("at `{}`: {}", e.path(), e.inner()),
            })?;
        container::resources::normalize(&mut res, "resources_json")?;
        tokio::task::spawn_blocking(move || c.update(&res))
            .await
            .map_err(|e| AgentError::Internal(format!("update task: {e}")))?
    }

    /// StatsContainer.
    pub async fn stats_container(&self, id: &str) -> Result<StatsContainerResponse> {
        let dir = self.get(id).await?.cgroup_dir();
        tokio::task::spawn_blocking(move || cgroup::stats(&dir))
            .await
            .map_err(|e| AgentError::Internal(format!("stats task: {e}")))?
    }

    /// ListProcesses: only the `json` format.
    pub async fn list_processes(&self, id: &str, format: &str) -> Result<Vec<u8>> {
        let c = self.get(id).await?;
        if format != "json" {
            return Err(AgentError::InvalidArgument {
                field: "format",
                reason: format!("{format:?} is not supported (json)"),
            });
        }
        let pids = cgroup::pids(&c.cgroup_dir())?;
        serde_json::to_vec(&pids).map_err(|e| AgentError::Internal(format!("pids json: {e}")))
    }

    /// ExecProcess.
    pub async fn exec_process(&self, id: &str, exec_id: String, process_json: &[u8]) -> Result<()> {
        if exec_id.is_empty() {
            return Err(AgentError::InvalidArgument {
                field: "exec_id",
                reason: "must not be empty".into(),
            });
        }
        container::validate_id(&exec_id, "exec_id")?;
        let c = self.get(id).await?;
        let p = spec::parse_process(process_json)?;
        let _serial = self.create_lock.lock().await;
        c.exec(exec_id, p, self.reaper()?).await
    }

    /// The named process of a container.
    pub async fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.get(id).await?.process(exec_id)
    }

    /// SignalProcess.
    pub async fn signal_process(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> Result<()> {
        let sig = process::parse_signal(sig)?;
        self.get(id).await?.signal(exec_id, sig, all)
    }

    /// GetOOMEvent.
    pub async fn next_oom(&self) -> Result<String> {
        self.oom.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_name_the_sandbox_inits_namespaces() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The sandbox container itself joins nothing.
        let j = sandbox_joins("sb", None, &names(&["pid", "ipc"]), true).expect("first");
        assert!(j.is_empty());
        let me = i32::try_from(std::process::id()).expect("pid");
        let pinned = PinnedNamespaces::open(me).expect("pin");
        let j =
            sandbox_joins("c", Some((&pinned, false)), &names(&["ipc", "uts"]), true).expect("app");
        // Each path is an fd of ours, naming the namespace the pid had.
        for (typ, path) in &j {
            assert!(
                path.starts_with(format!("/proc/{me}/fd/")),
                "{}",
                path.display()
            );
            let name = SHAREABLE.iter().find(|(_, t)| t == typ).expect("type").0;
            assert_eq!(
                std::fs::read_link(path).expect("fd"),
                std::fs::read_link(format!("/proc/{me}/ns/{name}")).expect("ns")
            );
        }
        let types: Vec<_> = j.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Pid
            ]
        );
        // Once the init has exited, nothing is joined, whoever has its pid.
        let e =
            sandbox_joins("c", Some((&pinned, true)), &names(&["ipc"]), false).expect_err("exited");
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert!(
            e.to_string().contains(&format!("(pid {me}) has exited")),
            "{e}"
        );
        let e =
            sandbox_joins("c", Some((&pinned, false)), &names(&["mnt"]), false).expect_err("mnt");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("sandbox_namespaces"), "{e}");
    }
}
