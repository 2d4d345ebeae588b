//! What the serving shim records about its sandbox under `/run`, so that
//! `containerd-shim-kata-v2 delete` can clean up after the shim was killed:
//! the processes it started (with their start times, so a recycled pid is
//! never signalled), the host cgroups it created and the bundles whose
//! `rootfs` it mounted. The share, VM state and socket paths are derived
//! from the sandbox id and need no record.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{STATE_FILE, shim_dir};

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A process the shim started on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` when it was recorded.
    pub start_time: u64,
}

impl ProcessRecord {
    /// Records `pid` as it is now; `None` when it already exited.
    pub fn capture(name: &str, pid: u32) -> Option<ProcessRecord> {
        proc_start_time(pid).map(|start_time| ProcessRecord {
            name: name.to_string(),
            pid,
            start_time,
        })
    }

    /// Whether the recorded process still runs (and is not a recycled pid).
    pub fn is_alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.start_time)
    }
}

/// One container of the sandbox, as far as the host is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub bundle: PathBuf,
    /// The shim mounted containerd's rootfs mounts on `<bundle>/rootfs`.
    pub rootfs_mounted: bool,
}

/// Everything `delete` needs to undo a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    /// The serving shim.
    pub shim: Option<ProcessRecord>,
    /// QEMU and its helpers.
    pub processes: Vec<ProcessRecord>,
    /// Host cgroup directories the shim created, deepest last.
    pub host_cgroups: Vec<PathBuf>,
    pub containers: BTreeMap<String, ContainerRecord>,
    /// The tc plumbing and taps made in the pod's network namespace.
    #[serde(default)]
    pub network: Option<crate::network::NetworkRecord>,
}

impl SandboxRecord {
    pub fn new(sandbox_id: &str) -> SandboxRecord {
        SandboxRecord {
            sandbox_id: sandbox_id.to_string(),
            ..SandboxRecord::default()
        }
    }

    /// Reads the state of `sandbox_id`; `None` when there is none.
    pub fn load(sandbox_id: &str) -> Result<Option<SandboxRecord>, PersistError> {
        Self::load_from(&shim_dir(sandbox_id).join(STATE_FILE))
    }

    fn load_from(path: &Path) -> Result<Option<SandboxRecord>, PersistError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    what: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| PersistError::Corrupt {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes the state atomically (temporary file, fsync, rename), so a
    /// crash mid-write leaves the previous state readable.
    pub fn save(&self) -> Result<(), PersistError> {
        self.save_in(&shim_dir(&self.sandbox_id))
    }

    fn save_in(&self, dir: &Path) -> Result<(), PersistError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| PersistError::Io { what, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|source| PersistError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))
    }
}

/// Removes the shim directory of a sandbox (state file and socket).
pub fn remove(sandbox_id: &str) {
    match std::fs::remove_dir_all(shim_dir(sandbox_id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(sandbox_id, error = %e, "cannot remove the shim state directory"),
    }
}

/// The start time (clock ticks since boot) of a live process.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. Field 22 (starttime) is the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); a zombie has exited already.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = SandboxRecord::new("sb1");
        s.shim = ProcessRecord::capture("shim", std::process::id());
        s.containers.insert(
            "c1".into(),
            ContainerRecord {
                bundle: "/b/c1".into(),
                rootfs_mounted: true,
            },
        );
        s.host_cgroups
            .push("/sys/fs/cgroup/memory/kubepods/x".into());
        s.save_in(dir.path()).expect("save");
        let back = SandboxRecord::load_from(&dir.path().join(STATE_FILE))
            .expect("load")
            .expect("present");
        assert_eq!(back, s);
        assert!(!dir.path().join(".state.json.tmp").exists());
        assert!(
            SandboxRecord::load_from(&dir.path().join("missing"))
                .expect("missing is fine")
                .is_none()
        );
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
        assert!(matches!(
            SandboxRecord::load_from(&dir.path().join(STATE_FILE)),
            Err(PersistError::Corrupt { .. })
        ));
    }

    #[test]
    fn process_records_detect_exit_and_reuse() {
        let me = ProcessRecord::capture("me", std::process::id()).expect("self");
        assert!(me.is_alive());
        let recycled = ProcessRecord {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!recycled.is_alive());
        assert!(ProcessRecord::capture("none", 0).is_none());
        assert!(proc_start_time(u32::MAX).is_none());
    }
}
