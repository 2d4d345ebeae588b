//! The pod's host cgroup: the directory, in every cgroup hierarchy mounted
//! under `/sys/fs/cgroup`, that QEMU, virtiofsd and vhost-device-vsock run
//! in, so the pod's limits and the RuntimeClass overhead bound the VM.
//!
//! The directory comes from the sandbox spec's `linux.cgroupsPath`, in the
//! cgroupfs form (`/kubepods/burstable/pod<uid>/<id>`) or the systemd form
//! (`<slice>:<prefix>:<name>`). Without systemd to ask, the systemd form is
//! expanded the way runc's systemd driver names its scope and the directory
//! is made directly. Only directories this shim made are ever removed: the
//! pod-level parent belongs to the kubelet.

use std::fs;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use layout::{
    Hierarchy, Kind, Target, leaf_dirs, member_of, parse_cgroups_path, parse_mountinfo,
    select_hierarchies,
};

mod layout;
pub mod oom;

/// Where the hierarchies the shim uses are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long [`remove_dirs`] keeps retrying a directory the kernel still
/// reports busy (a process that just exited may linger in `cgroup.procs`):
/// up to 5 s, since a SIGKILLed QEMU with gigabytes of guest memory takes
/// a while to go (200 ms left a pod's blkio cgroup behind after a failed
/// RunPodSandbox).
const BUSY_RETRIES: u32 = 250;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Failures finding, creating or joining the pod's host cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("no cgroup hierarchy is mounted under {CGROUP_ROOT}")]
    NoHierarchy,
    #[error("no entry for the cgroup hierarchy at {mountpoint} in /proc/self/cgroup")]
    OwnCgroup { mountpoint: PathBuf },
    /// `action` says what was attempted: "read", "create cgroup", ...
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move pid {pid} into {file}")]
    AddProcess {
        pid: u32,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    pub fn code(&self) -> ttrpc::Code {
        match self {
            CgroupError::InvalidPath { .. } => ttrpc::Code::INVALID_ARGUMENT,
            CgroupError::NoHierarchy | CgroupError::OwnCgroup { .. } => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            CgroupError::AddProcess { source, .. }
                if source.raw_os_error() == Some(libc::ESRCH) =>
            {
                ttrpc::Code::NOT_FOUND
            }
            CgroupError::Io { .. } | CgroupError::AddProcess { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// The pod's host cgroup, one leaf directory per mounted hierarchy.
#[derive(Debug)]
pub struct HostCgroup {
    sandbox_id: String,
    hierarchies: Vec<Hierarchy>,
    dirs: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl HostCgroup {
    /// Resolves the sandbox spec's `linux.cgroupsPath` in every hierarchy
    /// of this host; nothing is created yet. An empty path means the
    /// manager asked for no cgroup (`Ok(None)`).
    pub fn for_sandbox(
        cgroups_path: &str,
        sandbox_id: &str,
    ) -> Result<Option<HostCgroup>, CgroupError> {
        if cgroups_path.is_empty() {
            return Ok(None);
        }
        let target = parse_cgroups_path(cgroups_path)?;
        let mountinfo = read("/proc/self/mountinfo")?;
        let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        let hierarchies = select_hierarchies(parse_mountinfo(&mountinfo), unified);
        let own = match target {
            Target::Relative(_) => read("/proc/self/cgroup")?,
            Target::Absolute(_) => String::new(),
        };
        let dirs = leaf_dirs(&target, &hierarchies, &own)?;
        tracing::debug!(sandbox_id, cgroups_path, ?dirs, "pod host cgroup resolved");
        Ok(Some(HostCgroup {
            sandbox_id: sandbox_id.to_string(),
            hierarchies,
            dirs,
            created: Vec::new(),
        }))
    }

    /// Makes the leaf directory and any missing parent in every hierarchy,
    /// remembering exactly which it made. On failure what this call made is
    /// removed again.
    pub fn create(&mut self) -> Result<(), CgroupError> {
        let before = self.created.len();
        let result = self.create_all();
        if result.is_err() {
            remove_dirs(&self.created[before..]);
            self.created.truncate(before);
        }
        result
    }

    fn create_all(&mut self) -> Result<(), CgroupError> {
        for (h, leaf) in self.hierarchies.iter().zip(&self.dirs) {
            let rel = leaf
                .strip_prefix(&h.mountpoint)
                .expect("leaf dirs are built under their mountpoint");
            let mut dir = h.mountpoint.clone();
            for part in rel.components() {
                let parent = dir.clone();
                dir.push(part);
                match fs::create_dir(&dir) {
                    Ok(()) => self.created.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(source) => {
                        return Err(CgroupError::Io {
                            action: "create cgroup",
                            path: dir,
                            source,
                        });
                    }
                }
                match h.kind {
                    Kind::V1 if h.has("cpuset") => copy_cpuset(h, &parent, &dir)?,
                    Kind::V1 => {}
                    Kind::V2 => delegate_controllers(&parent, &self.sandbox_id),
                }
            }
        }
        tracing::info!(sandbox_id = %self.sandbox_id, created = ?self.created,
            "pod host cgroup created");
        Ok(())
    }

    /// `cgroup.procs` of every hierarchy, open for writing (close-on-exec),
    /// for a child to join before exec with [`HostCgroup::join_in_child`].
    pub fn procs_files(&self) -> Result<Vec<fs::File>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                let file = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(|source| CgroupError::Io {
                        action: "open",
                        path: file,
                        source,
                    })
            })
            .collect()
    }

    /// Joins the calling process to the cgroups whose `cgroup.procs` are
    /// open as `fds`. Only calls write(2), so it is async-signal-safe and
    /// fit for `Command::pre_exec`.
    pub fn join_in_child(fds: &[RawFd]) -> io::Result<()> {
        for &fd in fds {
            // SAFETY: write(2) of a static one-byte buffer; `fd` is owned by
            // the parent, which keeps it open across the fork.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Moves a running process into every hierarchy's leaf, for processes
    /// not started through [`HostCgroup::join_in_child`].
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let file = d.join("cgroup.procs");
            fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
                .map_err(|source| CgroupError::AddProcess { pid, file, source })?;
        }
        Ok(())
    }

    /// Directories this instance created, shallowest first within each
    /// hierarchy (deepest last), for the persisted state.
    pub fn created_dirs(&self) -> Vec<PathBuf> {
        self.created.clone()
    }

    /// The leaf directory of each hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The OOM-kill counter of the memory controller's leaf, counting from
    /// now; `None` where no hierarchy has the memory controller.
    pub fn oom_counter(&self) -> Option<oom::OomCounter> {
        self.hierarchies
            .iter()
            .zip(&self.dirs)
            .find_map(|(h, dir)| match h.kind {
                Kind::V2 => oom::OomCounter::open(dir, true),
                Kind::V1 if h.has("memory") => oom::OomCounter::open(dir, false),
                Kind::V1 => None,
            })
    }

    /// Removes what [`HostCgroup::create`] made, once its processes are gone.
    pub fn remove(&self) {
        tracing::debug!(sandbox_id = %self.sandbox_id, "removing pod host cgroup");
        remove_dirs(&self.created);
    }
}

/// Removes cgroup directories deepest first, tolerating missing ones and
/// retrying briefly while the kernel reports one busy, killing what is
/// still in a busy leaf ([`kill_members`]). Paths outside
/// [`CGROUP_ROOT`] are refused, so a damaged state file cannot aim it
/// elsewhere.
pub fn remove_dirs(dirs: &[PathBuf]) {
    let mut sorted: Vec<&PathBuf> = dirs.iter().collect();
    sorted.sort_by_key(|d| (std::cmp::Reverse(d.components().count()), *d));
    sorted.dedup();
    for dir in sorted {
        let inside = dir.starts_with(CGROUP_ROOT)
            && dir != Path::new(CGROUP_ROOT)
            && dir
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !inside {
            tracing::warn!(dir = %dir.display(), "not removing a path outside {CGROUP_ROOT}");
            continue;
        }
        for attempt in 1..=BUSY_RETRIES {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // A parent the shim made may hold other pods' cgroups now:
                // busy for good, so it stays. Only a directory without
                // children is waited on (its processes are still leaving).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && has_children(dir) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < BUSY_RETRIES => {
                    if attempt % KILL_EVERY == 1 {
                        kill_members(dir);
                    }
                    std::thread::sleep(BUSY_PAUSE);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove cgroup");
                    break;
                }
            }
        }
    }
}

/// How often (in [`BUSY_PAUSE`]s) [`remove_dirs`] kills what is left in a
/// busy leaf: at once, then about every second.
const KILL_EVERY: u32 = 50;

/// SIGKILLs every process left in the pod's leaf cgroup `dir`, but the
/// shim itself, so the directory can go. The VM's teardown ends QEMU and
/// the helpers it started, but not a helper's own child: virtiofsd's
/// sandboxed child, when stopped (SIGSTOP), ignores its parent-death
/// SIGTERM until continued and held the directory busy for good (the fault
/// matrix's "virtiofsd, boot, SIGSTOP"). SIGKILL is the one signal a
/// stopped process acts on. Only leaves the shim made or its record names
/// come here: the pod's own processes are all that is in them.
fn kill_members(dir: &Path) {
    let me = std::process::id();
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if pid == me || pid <= 1 {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::SIGKILL) {
            Ok(()) => tracing::info!(
                dir = %dir.display(), pid,
                "killed a process left in the pod's host cgroup"
            ),
            Err(e) => tracing::debug!(dir = %dir.display(), pid, error = %e, "cannot kill"),
        }
    }
}

/// Whether a cgroup directory has child cgroups.
fn has_children(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false)
}

/// Whether `pid` is a member of the cgroup directory `dir`, in whichever
/// hierarchy `dir` lies.
pub fn pid_in(pid: u32, dir: &Path) -> bool {
    let (Ok(mountinfo), Ok(proc_cgroup)) = (
        fs::read_to_string("/proc/self/mountinfo"),
        fs::read_to_string(format!("/proc/{pid}/cgroup")),
    ) else {
        return false;
    };
    member_of(&parse_mountinfo(&mountinfo), &proc_cgroup, dir)
}

fn read(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Io {
        action: "read",
        path: path.into(),
        source,
    })
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and
/// joining it fails with ENOSPC until they are copied from the parent.
fn copy_cpuset(h: &Hierarchy, parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    let names: [&'static str; 2] = if h.has("noprefix") {
        ["cpus", "mems"]
    } else {
        ["cpuset.cpus", "cpuset.mems"]
    };
    for file in names {
        fs::read(parent.join(file))
            .and_then(|value| fs::write(dir.join(file), value))
            .map_err(|source| CgroupError::Io {
                action: "copy the parent's cpuset into",
                path: dir.join(file),
                source,
            })?;
    }
    Ok(())
}

/// cgroup v2: enables in `parent` the controllers it has but does not yet
/// pass down, so a new child gets them. Best effort: a kubelet-managed
/// parent already delegates all of them, and the pod's limits bind its
/// descendants either way.
fn delegate_controllers(parent: &Path, sandbox_id: &str) {
    let read = |name: &str| fs::read_to_string(parent.join(name)).unwrap_or_default();
    let (available, enabled) = (read("cgroup.controllers"), read("cgroup.subtree_control"));
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let missing: Vec<String> = available
        .split_whitespace()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    if let Err(e) = fs::write(parent.join("cgroup.subtree_control"), missing.join(" ")) {
        tracing::warn!(sandbox_id, parent = %parent.display(), error = %e,
            "cannot enable cgroup controllers for the pod's host cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    #[test]
    fn error_codes() {
        let esrch = CgroupError::AddProcess {
            pid: 1,
            file: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ESRCH),
        };
        assert_eq!(esrch.code(), ttrpc::Code::NOT_FOUND);
        let eacces = CgroupError::Io {
            action: "create cgroup",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(eacces.code(), ttrpc::Code::INTERNAL);
        assert_eq!(eacces.to_string(), "cannot create cgroup /x");
    }

    #[test]
    fn remove_dirs_stays_inside_the_cgroup_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("kubepods");
        fs::create_dir(&outside).expect("mkdir");
        let missing = PathBuf::from("/sys/fs/cgroup/kata-shim-test-never-created/x");
        remove_dirs(&[
            outside.clone(),
            PathBuf::from("/sys/fs/cgroup/memory/../../../tmp"),
            missing.clone(),
        ]);
        assert!(
            outside.is_dir(),
            "a path outside the cgroup root was removed"
        );
        assert!(!missing.exists());
    }

    /// Kills the test's children and removes its cgroups even when an
    /// assertion fails half-way.
    #[derive(Default)]
    struct Cleanup {
        children: Vec<Child>,
        dirs: Vec<PathBuf>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            remove_dirs(&self.dirs);
        }
    }

    fn sleep_in(fds: Vec<RawFd>) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        // SAFETY: join_in_child only calls write(2) on fds the parent keeps
        // open until spawn returns.
        unsafe {
            cmd.pre_exec(move || HostCgroup::join_in_child(&fds));
        }
        cmd.spawn().expect("spawn sleep")
    }

    #[test]
    fn processes_join_the_pod_cgroup_and_only_new_dirs_are_removed() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: creating cgroups needs root");
            return;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let unique = format!("kata-shim-test-{}-{nanos}", std::process::id());
        let mut cleanup = Cleanup::default();

        // The kubelet's pod-level cgroup, made beforehand.
        let mut parent = HostCgroup::for_sandbox(&format!("/{unique}"), "sb-parent")
            .expect("valid")
            .expect("non-empty");
        parent.create().expect("create parent");
        cleanup.dirs.extend(parent.created_dirs());
        assert_eq!(parent.created_dirs(), parent.dirs());

        let mut pod = HostCgroup::for_sandbox(&format!("/{unique}/pod/leaf"), "sb")
            .expect("valid")
            .expect("non-empty");
        pod.create().expect("create");
        cleanup.dirs.extend(pod.created_dirs());
        let created = pod.created_dirs();
        assert_eq!(created.len(), 2 * pod.dirs().len(), "{created:?}");
        for (leaf, top) in pod.dirs().iter().zip(parent.dirs()) {
            assert!(created.contains(leaf) && created.contains(&top.join("pod")));
            assert!(!created.contains(top));
        }
        let mounted = parse_mountinfo(&read("/proc/self/mountinfo").expect("mountinfo"));
        if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            assert_eq!(pod.dirs().len(), mounted.len());
            for controller in ["memory", "cpu"] {
                let h = mounted
                    .iter()
                    .find(|h| h.has(controller))
                    .unwrap_or_else(|| panic!("no {controller} hierarchy"));
                assert!(pod.dirs().iter().any(|d| d.starts_with(&h.mountpoint)));
            }
        }

        let files = pod.procs_files().expect("open cgroup.procs");
        let joined = sleep_in(files.iter().map(|f| f.as_raw_fd()).collect());
        drop(files);
        let joined_pid = joined.id();
        cleanup.children.push(joined);
        let moved = Command::new("sleep").arg("60").spawn().expect("spawn");
        let moved_pid = moved.id();
        cleanup.children.push(moved);
        pod.add_process(moved_pid).expect("add_process");
        for dir in pod.dirs() {
            assert!(
                pid_in(joined_pid, dir),
                "{joined_pid} not in {}",
                dir.display()
            );
            assert!(
                pid_in(moved_pid, dir),
                "{moved_pid} not in {}",
                dir.display()
            );
            assert!(!pid_in(std::process::id(), dir));
        }

        for mut c in cleanup.children.drain(..) {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
        pod.remove();
        for dir in &created {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        for dir in parent.dirs() {
            assert!(dir.is_dir(), "pre-existing {} was removed", dir.display());
        }
        parent.remove();
        for dir in parent.dirs() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    /// A stopped process left in the pod's cgroup (a helper's child that
    /// outlived it under SIGSTOP) is killed, and the directories go.
    #[test]
    fn a_stopped_process_left_in_the_pod_cgroup_does_not_keep_it() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: creating cgroups needs root");
            return;
        }
        let unique = format!("kata-shim-test-stopped-{}", std::process::id());
        let mut cleanup = Cleanup::default();
        let mut pod = HostCgroup::for_sandbox(&format!("/{unique}"), "sb")
            .expect("valid")
            .expect("non-empty");
        pod.create().expect("create");
        cleanup.dirs.extend(pod.created_dirs());
        let files = pod.procs_files().expect("open cgroup.procs");
        let mut left = sleep_in(files.iter().map(|f| f.as_raw_fd()).collect());
        drop(files);
        let pid = nix::unistd::Pid::from_raw(left.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).expect("SIGSTOP");

        pod.remove();
        let status = left.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{status:?}"
        );
        for dir in pod.created_dirs() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}
