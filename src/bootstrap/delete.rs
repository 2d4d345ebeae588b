//! `delete`: containerd's clean-up after a shim connection closed, run after
//! a crash and after every normal task removal alike. It works from the
//! sandbox's persisted state only, is idempotent, and answers within
//! containerd's 5 s budget whatever the clean-up does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use super::args::Flags;
use super::start::bundle_dir;
use crate::layout::{SHIM_PID_FILE, SandboxPaths};
use crate::persist::{self, ProcessRecord, SandboxRecord};
use crate::{annotations, host_cgroup, mounts};

/// Exit status reported for a task whose shim is gone: SIGKILL, as runc
/// and Kata report it.
pub const DELETED_EXIT_STATUS: u32 = 137;
/// How long the sandbox's shim gets to exit on its own after its last
/// Shutdown before it is killed.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long killed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_millis(1500);
/// containerd gives `delete` 5 s; answer before that whatever happens.
const DEADLINE: Duration = Duration::from_millis(4500);
const POLL: Duration = Duration::from_millis(20);
/// `<share>/<cid>/volumes/<volume>` and a little slack.
const SHARE_DEPTH: usize = 4;

/// Runs the clean-up (bounded by [`DEADLINE`]) and returns the serialized
/// `DeleteResponse` to print. Failures are logged, never returned:
/// containerd only needs the response.
pub fn run(flags: &Flags) -> Vec<u8> {
    let id = flags.id.clone();
    let bundle = bundle_dir(&flags.bundle).ok();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("delete".into())
        .spawn(move || {
            cleanup(&id, bundle.as_deref());
            let _ = done_tx.send(());
        });
    match worker {
        Ok(_) => {
            if done_rx.recv_timeout(DEADLINE).is_err() {
                tracing::warn!(container_id = %flags.id, "clean-up still running at the deadline; answering anyway");
            }
        }
        Err(e) => {
            tracing::error!(container_id = %flags.id, error = %e, "cannot start the clean-up")
        }
    }
    response()
}

/// The `DeleteResponse` containerd expects from a shim that is gone.
pub fn response() -> Vec<u8> {
    let resp = DeleteResponse {
        pid: 0,
        exit_status: DELETED_EXIT_STATUS,
        exited_at: Some(Timestamp::now()).into(),
        ..Default::default()
    };
    resp.write_to_bytes()
        .expect("encoding a DeleteResponse into memory cannot fail")
}

/// What to do for one `delete`, from whether the sandbox's shim is alive
/// and whether it still tracks the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The live shim still owns the container: touch nothing.
    LeaveToShim,
    /// A container of a live sandbox the shim no longer tracks: only its
    /// own rootfs mount.
    ContainerRootfs,
    /// The sandbox's own delete while its shim runs: let it exit, then
    /// tear down what is left.
    StopShimThenTeardown,
    /// The sandbox is dead: tear everything down.
    Teardown,
}

pub(crate) fn plan(id: &str, sandbox_id: &str, shim_alive: bool, listed: bool) -> Plan {
    match (shim_alive, id == sandbox_id) {
        (false, _) => Plan::Teardown,
        (true, true) => Plan::StopShimThenTeardown,
        (true, false) if listed => Plan::LeaveToShim,
        (true, false) => Plan::ContainerRootfs,
    }
}

/// Cleans up after container `id` whose bundle is `bundle`.
pub fn cleanup(id: &str, bundle: Option<&Path>) {
    if id.is_empty() {
        tracing::warn!("delete without -id: nothing to clean");
        return;
    }
    let sandbox_id = bundle
        .and_then(|b| annotations::read_bundle_annotations(b).ok())
        .and_then(|a| annotations::identity(id, &a).ok())
        .map_or_else(|| id.to_string(), |i| i.sandbox_id);
    if let Err(e) = crate::ids::validate(&sandbox_id) {
        // No path may be derived from it; only the bundle is ours to touch.
        tracing::warn!(container_id = id, error = %e, "no usable sandbox id; cleaning the bundle only");
        unmount_rootfs(id, bundle);
        return;
    }
    let sid = sandbox_id.as_str();
    let state = load_state(sid);
    let shim = state
        .as_ref()
        .and_then(|s| s.shim.clone())
        .or_else(|| shim_from_pid_file(sid));
    let shim_alive = shim.as_ref().is_some_and(ProcessRecord::is_alive);
    let listed = state
        .as_ref()
        .is_some_and(|s| s.containers.contains_key(id));
    let plan = plan(id, sid, shim_alive, listed);
    tracing::debug!(sandbox_id = sid, container_id = id, ?plan, "delete");
    match plan {
        Plan::LeaveToShim => {}
        Plan::ContainerRootfs => unmount_rootfs(id, bundle),
        Plan::StopShimThenTeardown => {
            if let Some(shim) = &shim {
                if !wait_gone(std::slice::from_ref(shim), SHIM_EXIT_WAIT) {
                    tracing::warn!(
                        sandbox_id = sid,
                        pid = shim.pid,
                        "shim did not exit; killing it"
                    );
                    kill_verified(shim);
                }
            }
            // The shim may have cleaned up (or saved more) on its way out.
            teardown(sid, id, load_state(sid), bundle);
        }
        Plan::Teardown => teardown(sid, id, state, bundle),
    }
}

pub(super) fn load_state(sid: &str) -> Option<SandboxRecord> {
    match SandboxRecord::load(sid) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox_id = sid, error = %crate::logging::error_chain(&e),
                "unreadable sandbox state; cleaning what the sandbox id names");
            None
        }
    }
}

/// The serving shim before it saved any state: the pid `start` recorded,
/// trusted only if that process is this sandbox's `serve`.
pub(super) fn shim_from_pid_file(sid: &str) -> Option<ProcessRecord> {
    let path = crate::layout::shim_dir(sid).join(SHIM_PID_FILE);
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let record = ProcessRecord::capture("shim", pid)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let serves_sid = args.last().is_some_and(|a| a.is_empty()) // trailing NUL
        && args.contains(&b"serve".as_slice())
        && args.windows(2).any(|w| w[0] == b"-id" && w[1] == sid.as_bytes());
    serves_sid.then_some(record)
}

/// Everything a dead sandbox leaves on the host, in an order that frees
/// each resource before what contains it.
fn teardown(sid: &str, id: &str, state: Option<SandboxRecord>, bundle: Option<&Path>) {
    if let Some(s) = &state {
        let procs: Vec<&ProcessRecord> = s.shim.iter().chain(&s.processes).collect();
        for p in &procs {
            kill_verified(p);
        }
        let procs: Vec<ProcessRecord> = procs.into_iter().cloned().collect();
        if !wait_gone(&procs, KILL_WAIT) {
            tracing::warn!(
                sandbox_id = sid,
                "some sandbox processes are still alive after SIGKILL"
            );
        }
    }
    if let Some(net) = state.as_ref().and_then(|s| s.network.as_ref()) {
        crate::network::detach(net);
    }
    let paths = SandboxPaths::new(sid);
    let share_clear = unmount_all(sid, &paths.share_dir);
    if share_clear {
        // The mount points the shim made (`<cid>/rootfs`, volumes) stay
        // behind as empty directories and would keep the share from going.
        remove_empty_dirs(&paths.share_dir, SHARE_DEPTH);
    }
    if let Some(s) = &state {
        for (cid, c) in &s.containers {
            if c.rootfs_mounted {
                unmount_rootfs(cid, Some(&c.bundle));
            }
        }
    }
    unmount_rootfs(id, bundle);
    match &state {
        Some(s) => {
            host_cgroup::remove_dirs(&s.host_cgroups);
            crate::layout::remove_sandbox_dirs(sid, &paths);
        }
        // Without a record nothing says what is ours: remove only what the
        // id names, and only when nothing is left mounted in it.
        None => {
            if id == sid {
                remove_spec_cgroup(sid, bundle);
            }
            if share_clear {
                crate::layout::remove_sandbox_dirs(sid, &paths);
            }
        }
    }
    // After the kills above: a rootless VM's uid is free once its
    // processes are gone, and a claim left here would stay until its
    // range ran out.
    crate::vm::rootless::release(sid);
    persist::remove(sid);
}

/// The sandbox's own host cgroup, as its spec names it: a shim killed
/// between making it and saving its record leaves it otherwise (the fault
/// matrix's shim kill at boot). Only the leaf, which names the sandbox:
/// what is still in it is the dead shim's VM, and `remove_dirs` kills it.
fn remove_spec_cgroup(sid: &str, bundle: Option<&Path>) {
    let Some(spec) = bundle.and_then(|b| crate::oci::read_bundle_spec(b).ok()) else {
        return;
    };
    let path = spec
        .pointer("/linux/cgroupsPath")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match host_cgroup::HostCgroup::for_sandbox(path, sid) {
        Ok(Some(cg)) => host_cgroup::remove_dirs(cg.dirs()),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(sandbox_id = sid, error = %e, "the spec's cgroup cannot be resolved")
        }
    }
}

/// Lazily unmounts everything at or below `dir`; whether nothing is left.
fn unmount_all(sid: &str, dir: &Path) -> bool {
    if !dir.exists() {
        return true;
    }
    match mounts::unmount_under(dir) {
        Ok(n) => {
            if n > 0 {
                tracing::info!(sandbox_id = sid, path = %dir.display(), mounts = n, "unmounted");
            }
            true
        }
        Err(e) => {
            tracing::error!(sandbox_id = sid, path = %dir.display(), error = %e, "cannot unmount");
            false
        }
    }
}

/// Removes the empty directories below `dir`, at most `depth` levels down,
/// with `rmdir` only: files, symlinks and whatever they point to stay (and
/// keep their parents). Runs after the sandbox's processes are dead, so the
/// guest can no longer swap a directory for a symlink under us.
fn remove_empty_dirs(dir: &Path, depth: usize) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir());
        if is_dir {
            remove_empty_dirs(&path, depth - 1);
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// `<bundle>/rootfs`, if it is a mount point.
fn unmount_rootfs(id: &str, bundle: Option<&Path>) {
    let Some(bundle) = bundle else { return };
    let rootfs: PathBuf = bundle.join("rootfs");
    if !mounts::is_mount_point(&rootfs) {
        return;
    }
    if let Err(e) = mounts::unmount_under(&rootfs) {
        tracing::error!(container_id = id, path = %rootfs.display(), error = %e, "cannot unmount rootfs");
    }
}

/// Polls until none of `procs` is alive; whether they all went in time.
fn wait_gone(procs: &[ProcessRecord], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !procs.iter().any(ProcessRecord::is_alive) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILLs the recorded process if, and only if, it is still the process
/// that was recorded. A pidfd pins the process: once it is open, a start
/// time that still matches proves the pid was not recycled, and the signal
/// goes to that process even if it exits and the pid is reused meanwhile.
fn kill_verified(rec: &ProcessRecord) {
    let Ok(pid) = libc::pid_t::try_from(rec.pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and a flags word, touches no memory of
    // ours, and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(raw) = i32::try_from(raw) else { return };
    if raw < 0 {
        // ESRCH: already gone. Kernels before 5.3 have no pidfd: fall back
        // to the start-time check alone.
        if nix::errno::Errno::last() != nix::errno::Errno::ESRCH && rec.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return;
    }
    // SAFETY: `raw` is a descriptor pidfd_open just returned; nothing else
    // owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    if !rec.is_alive() {
        return;
    }
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a null
    // siginfo (the kernel fills one as for kill(2)) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        tracing::warn!(pid = rec.pid, name = %rec.name, error = %std::io::Error::last_os_error(), "cannot kill");
    } else {
        tracing::info!(pid = rec.pid, name = %rec.name, "killed");
    }
}

#[cfg(test)]
mod tests;
