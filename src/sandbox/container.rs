//! One container of the pod as the host sees it: its bundle, the host
//! mounts it holds (rootfs and volumes in the share, containerd's rootfs on
//! the bundle), its init process and its execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::sandbox::process::Process;
use crate::storage::ContainerMounts;

#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// The pod's sandbox (pause) container; deleting it ends the VM.
    pub is_sandbox: bool,
    /// Managed by CRI-O: an OOM is also reported as `<bundle>/oom`.
    pub crio: bool,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    mounts: Mutex<ContainerMounts>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps and mount lists stay consistent across a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Container {
    pub fn new(
        id: &str,
        bundle: PathBuf,
        is_sandbox: bool,
        crio: bool,
        init: Arc<Process>,
        mounts: ContainerMounts,
    ) -> Container {
        Container {
            id: id.to_string(),
            bundle,
            is_sandbox,
            crio,
            init,
            execs: Mutex::new(HashMap::new()),
            mounts: Mutex::new(mounts),
        }
    }

    /// The init process, or the exec named by `exec_id`.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::not_found("exec", exec_id))
    }

    pub fn add_exec(&self, p: Arc<Process>) -> Result<()> {
        let mut execs = lock(&self.execs);
        if execs.contains_key(&p.exec_id) {
            return Err(Error::AlreadyExists {
                what: "exec",
                id: p.exec_id.clone(),
            });
        }
        execs.insert(p.exec_id.clone(), p);
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        lock(&self.execs).remove(exec_id)
    }

    /// The init and every exec.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        all.extend(lock(&self.execs).values().cloned());
        all
    }

    /// Drops the host's references to the rootfs and volumes in the share;
    /// done before the init's exit is reported, so CRI-O can unmount the
    /// rootfs right after Wait.
    pub fn release_share(&self) {
        lock(&self.mounts).release_share();
    }

    /// Everything, including containerd's rootfs on the bundle (Delete).
    pub fn release_all(&self) {
        let mut m = lock(&self.mounts);
        m.release_share();
        m.release_bundle_rootfs();
    }

    pub fn rootfs_mounted(&self) -> bool {
        lock(&self.mounts).rootfs_mounted()
    }
}
