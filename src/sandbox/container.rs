//! One container of the pod as the host sees it (its bundle, the host
//! mounts it holds: rootfs and volumes in the share, containerd's rootfs on
//! the bundle; its init process and its execs) and the Task RPCs on a
//! container: Delete of its init, Pause, Resume, Update, Stats, Pids.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::events::task::{TaskDelete, TaskPaused, TaskResumed};

use crate::error::{Error, Result};
use crate::events::{Event, timestamp};
use crate::locks::lock;
use crate::sandbox::Sandbox;
use crate::sandbox::process::Process;
use crate::state::{Exit, ProcessState};
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

impl Sandbox {
    /// Delete of a container's init: releases everything of the container;
    /// deleting the sandbox container ends the VM.
    pub async fn delete_container(&self, container_id: &str) -> Result<Exit> {
        let c = self.container(container_id)?;
        c.init.state().check_delete()?;
        let exit = c.init.state().exit_info().unwrap_or_else(|| Exit::now(137));
        if let Ok(agent) = self.agent() {
            match agent.remove_container(&c.id).await {
                Ok(()) => {}
                Err(e) if e.status() == Some(ttrpc::Code::NOT_FOUND) => {}
                // The VM died under the call (the fault matrix's QEMU kill
                // at delete): its guest state went with it, and the host's
                // part is still ours to release.
                Err(e) if e.lost_transport() && self.dies_after_losing_the_agent().await => {
                    tracing::info!(sandbox_id = %self.id, container_id = %c.id, error = %e,
                        "the VM died during RemoveContainer; deleting the host side");
                }
                Err(e) => return Err(Error::agent(&c.id)(e)),
            }
        }
        // An init deleted before it started never exited: it is now.
        if !c.init.state().is_stopped() {
            c.init.record_exit(exit);
        }
        for p in c.processes() {
            p.io.shutdown().await;
        }
        c.release_all();
        if !c.is_sandbox {
            self.shrink_after(&c.id).await;
        }
        let mut lc = self.lifecycle.lock().await;
        lock(&self.containers).remove(&c.id);
        if c.is_sandbox {
            lock(&self.state).stop();
            self.dead_tx.send_replace(true);
            self.exit_all(crate::state::UNKNOWN_EXIT).await;
            self.teardown_vm(&mut lc).await;
        }
        self.persist(&lc);
        drop(lc);
        tracing::info!(sandbox_id = %self.id, container_id = %c.id, "container deleted");
        self.publish(Event::Delete(TaskDelete {
            container_id: c.id.clone(),
            pid: self.pid(),
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            id: c.id.clone(),
            ..Default::default()
        }));
        Ok(exit)
    }

    pub async fn pause(&self, container_id: &str) -> Result<()> {
        self.freeze(container_id, true).await
    }

    pub async fn resume(&self, container_id: &str) -> Result<()> {
        self.freeze(container_id, false).await
    }

    async fn freeze(&self, container_id: &str, pause: bool) -> Result<()> {
        let c = self.container(container_id)?;
        let check = if pause {
            ProcessState::pause
        } else {
            ProcessState::resume
        };
        // Check first on a copy; apply after the guest did it.
        check(&mut c.init.state())?;
        let agent = self.agent()?;
        let call = if pause {
            agent.pause_container(&c.id).await
        } else {
            agent.resume_container(&c.id).await
        };
        call.map_err(Error::agent(&c.id))?;
        c.init.transition(check)?;
        if pause {
            self.publish(Event::Paused(TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        } else {
            self.publish(Event::Resumed(TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            }));
        }
        Ok(())
    }

    /// Update: applies `LinuxResources` (JSON) in the guest, growing or
    /// shrinking the VM with it (`resize`).
    pub async fn update(&self, container_id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.container(container_id)?;
        let json = crate::oci::guest_resources(resources_json)?;
        let agent = self.agent()?;
        let resources: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| Error::InvalidArgument {
                field: "resources",
                reason: e.to_string(),
            })?;
        let cgroup = async {
            agent
                .update_container(&c.id, json)
                .await
                .map_err(Error::agent(&c.id))
        };
        if c.is_sandbox {
            return cgroup.await;
        }
        self.update_with_resize(&c.id, &resources, cgroup).await
    }

    /// The guest's cgroup statistics of a container.
    pub async fn stats(
        &self,
        container_id: &str,
    ) -> Result<kata_agent_protocol::agent::StatsContainerResponse> {
        let c = self.container(container_id)?;
        let agent = self.agent()?;
        agent
            .stats_container(&c.id)
            .await
            .map_err(Error::agent(&c.id))
    }

    /// Pids: the task pid (QEMU's), as Kata reports; the guest's own pids
    /// mean nothing on the host.
    pub fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        self.container(container_id)?;
        Ok(vec![self.pid()])
    }
}
