//! The sweep each new sandbox's shim runs once, beside its serving: the
//! sandboxes whose shim died and that nothing cleaned are torn down as
//! `delete` would, from their persisted state. containerd runs `delete`
//! after a shim dies and under CRI-O the keeper does the same, but a keeper
//! killed with its shim, or a containerd that was down, leaves the VM's
//! directories, mounts, taps and host cgroup behind; the next pod's start
//! is the defined moment they go.
//!
//! A sandbox is swept only when its start lock is free (no `start` is
//! making it), its shim is known and dead (its pid and start time, from
//! `state.json` or `shim.pid`) and no keeper of it runs.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::delete;
use crate::layout::{PERSIST_ROOT, SHIM_PID_FILE};

/// What is known of a sandbox's shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShimSeen {
    /// Its recorded process runs.
    Alive,
    /// Its recorded process is gone (or the pid is another process's).
    Dead,
    /// No record and no pid: a start that failed before it spawned one.
    NeverStarted,
}

/// Whether a sandbox is swept.
pub(crate) fn verdict(shim: ShimSeen, keeper_running: bool) -> bool {
    !keeper_running && matches!(shim, ShimSeen::Dead | ShimSeen::NeverStarted)
}

/// Sweeps every dead sandbox but `own`; returns how many were swept.
pub fn sweep(own: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(PERSIST_ROOT) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let Some(sid) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if sid == own || crate::ids::validate(&sid).is_err() || !entry.path().is_dir() {
            continue;
        }
        // Held for the whole sweep of `sid`: a `start` of it waits. Made if
        // missing: a directory a killed keeper left with nothing but its
        // socket has none, and a `start` that made the directory a moment
        // ago takes the lock again once this sweep removed it.
        let lock_path = entry.path().join(super::start::START_LOCK);
        let Ok(lock_file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        let Ok(_lock) = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let shim = shim_seen(&sid, &entry.path());
        // The process scan only for the few whose shim is gone.
        if shim == ShimSeen::Alive || !verdict(shim, crate::keeper::is_running(&sid)) {
            continue;
        }
        tracing::warn!(sandbox_id = own, swept = %sid, ?shim,
            "sweeping a sandbox whose shim is gone and that nothing cleaned");
        delete::cleanup(&sid, None);
        swept += 1;
    }
    swept
}

fn shim_seen(sid: &str, dir: &Path) -> ShimSeen {
    let alive = |yes: bool| if yes { ShimSeen::Alive } else { ShimSeen::Dead };
    match delete::load_state(sid).and_then(|s| s.shim) {
        Some(rec) => alive(rec.is_alive()),
        None if dir.join(SHIM_PID_FILE).exists() => {
            alive(delete::shim_from_pid_file(sid).is_some())
        }
        None => ShimSeen::NeverStarted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_shim_without_a_keeper_is_swept() {
        for (shim, keeper, swept) in [
            (ShimSeen::Alive, false, false),
            (ShimSeen::Alive, true, false),
            (ShimSeen::Dead, true, false),
            (ShimSeen::Dead, false, true),
            (ShimSeen::NeverStarted, false, true),
            (ShimSeen::NeverStarted, true, false),
        ] {
            assert_eq!(verdict(shim, keeper), swept, "{shim:?}, keeper {keeper}");
        }
    }
}
