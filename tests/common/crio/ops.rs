//! CRI-O's calls on a created container: Kill (and its liveness probe),
//! Stats, Update, Exec/ExecSync and StopContainer with the rootfs unmount
//! that follows it.

use std::time::Duration;

use containerd_shim_protos::api;
use protobuf::well_known_types::any::Any;
use serde_json::{Value, json};

use super::*;

/// How a StopContainer went.
#[derive(Debug, Clone, Copy)]
pub struct StopReport {
    /// The stop signal did not end it within the timeout: SIGKILL did.
    pub sigkill: bool,
    /// Wait's exit status (None when Wait failed with NotFound).
    pub exit_status: Option<u32>,
    pub elapsed: Duration,
}

impl Crio {
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> ttrpc::Result<()> {
        let mut req = api::KillRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.call::<_, api::Empty>(id, "Kill", &req).map(|_| ())
    }

    /// CRI-O's liveness probe (ReopenContainerLog): Kill with signal 0.
    pub fn kill0(&self, id: &str) -> ttrpc::Result<()> {
        self.kill(id, "", 0, false)
    }

    /// ContainerStats: the metrics Any as the shim sent it.
    pub fn stats(&self, id: &str) -> Any {
        let mut req = api::StatsRequest::new();
        req.id = id.to_string();
        let resp: api::StatsResponse = self
            .call(id, "Stats", &req)
            .unwrap_or_else(|e| panic!("Stats {id}: {e:?}"));
        resp.stats
            .into_option()
            .unwrap_or_else(|| panic!("Stats {id} carried no metrics"))
    }

    /// UpdateContainerResources: `resources` is OCI LinuxResources JSON.
    pub fn update(&self, id: &str, resources: &Value) -> ttrpc::Result<()> {
        let mut req = api::UpdateTaskRequest::new();
        req.id = id.to_string();
        let mut any = Any::new();
        any.type_url = RESOURCES_TYPE_URL.into();
        any.value = serde_json::to_vec(resources).expect("resources json");
        req.resources = Some(any).into();
        self.call::<_, api::Empty>(id, "Update", &req).map(|_| ())
    }

    /// Exec with the container's process and `argv`; returns the exec FIFOs.
    pub fn exec(&self, id: &str, exec_id: &str, argv: &[&str]) -> Result<ExecIo, CrioError> {
        let c = self.ctr(id);
        let io = ExecIo::new(&self.runtime_root(), id, false, c.tty);
        let mut process = c.process.clone();
        process["args"] = json!(argv);
        let mut spec = Any::new();
        spec.type_url = PROCESS_TYPE_URL.into();
        spec.value = serde_json::to_vec(&process).expect("process json");
        let mut req = api::ExecProcessRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.terminal = c.tty;
        (req.stdin, req.stdout, req.stderr) = io.paths();
        req.spec = Some(spec).into();
        self.call::<_, api::Empty>(id, "Exec", &req)
            .map(|_| io)
            .map_err(CrioError::Rpc)
    }

    /// CRI-O's ExecSync: Exec, Start, Wait, Delete; on `timeout`,
    /// Kill(SIGKILL), wait for Wait, no Delete, exit code -1.
    pub fn exec_sync(&self, id: &str, argv: &[&str], timeout: Duration) -> ExecResult {
        let exec_id = hex_id();
        let io = self
            .exec(id, &exec_id, argv)
            .unwrap_or_else(|e| panic!("Exec {argv:?} in {id}: {e:?}"));
        let mut req = api::StartRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.clone();
        self.call::<_, api::StartResponse>(id, "Start", &req)
            .unwrap_or_else(|e| panic!("Start exec {argv:?} in {id}: {e:?}"));
        let waiter = self.spawn_wait(id, &exec_id, false);
        let (exit_code, timed_out) = match waiter.wait(&self.rt, timeout) {
            Some(outcome) => {
                let w = outcome
                    .wait
                    .unwrap_or_else(|e| panic!("Wait exec {argv:?} in {id}: {e:?}"));
                let mut del = api::DeleteRequest::new();
                del.id = id.to_string();
                del.exec_id = exec_id.clone();
                self.call::<_, api::DeleteResponse>(id, "Delete", &del)
                    .unwrap_or_else(|e| panic!("Delete exec {argv:?} in {id}: {e:?}"));
                (w.exit_status as i32, false)
            }
            None => {
                self.kill(id, &exec_id, SIGKILL, false)
                    .unwrap_or_else(|e| panic!("Kill timed-out exec in {id}: {e:?}"));
                waiter
                    .wait(&self.rt, KILL_CONTAINER_TIMEOUT)
                    .unwrap_or_else(|| panic!("exec {argv:?} in {id} survived SIGKILL"));
                (-1, true)
            }
        };
        // CRI-O closes its FIFO ends right after Wait; what is not in the
        // pipes by now is lost.
        let (stdout, stderr) = io.finish();
        ExecResult {
            exec_id,
            exit_code,
            stdout,
            stderr,
            timed_out,
        }
    }

    /// CRI-O's StopContainer: a Wait, Kill(SIGTERM), up to `timeout`,
    /// Kill(SIGKILL), up to 2 min, then the rootfs is unmounted at once
    /// (postStopCleanup), then State.
    pub fn stop_container(&mut self, id: &str, timeout: Duration) -> api::StateResponse {
        self.stop_container_report(id, timeout).0
    }

    /// [`Crio::stop_container`], also telling how the stop went: CRI-O's
    /// `runtimeVM.StopContainer` sends the stop signal, waits for Wait up to
    /// the timeout, and only then sends SIGKILL.
    pub fn stop_container_report(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> (api::StateResponse, StopReport) {
        let began = std::time::Instant::now();
        let waiter = self.spawn_wait(id, "", false);
        let mut done = None;
        if !timeout.is_zero() {
            self.kill(id, "", SIGTERM, false)
                .unwrap_or_else(|e| panic!("Kill(SIGTERM) {id}: {e:?}"));
            done = waiter.wait(&self.rt, timeout);
        }
        let sigkill = done.is_none();
        let outcome = match done {
            Some(o) => o,
            None => {
                self.kill(id, "", SIGKILL, false)
                    .unwrap_or_else(|e| panic!("Kill(SIGKILL) {id}: {e:?}"));
                waiter
                    .wait(&self.rt, KILL_CONTAINER_TIMEOUT)
                    .unwrap_or_else(|| panic!("{id} did not stop within 2 min of SIGKILL"))
            }
        };
        let report = StopReport {
            sigkill,
            exit_status: outcome.wait.as_ref().ok().map(|w| w.exit_status),
            elapsed: began.elapsed(),
        };
        if let Err(e) = &outcome.wait {
            // CRI-O counts NotFound from Wait as stopped.
            assert_eq!(
                rpc_code(e),
                Some(ttrpc::Code::NOT_FOUND),
                "Wait {id}: {e:?}"
            );
        }
        self.unmount_rootfs(id);
        (self.state(id), report)
    }

    /// postStopCleanup: CRI-O's storage unmounts the rootfs right after the
    /// container stopped; the shim must not hold it any more.
    pub fn unmount_rootfs(&mut self, id: &str) {
        let c = self.ctrs.get_mut(id).expect("container");
        if !std::mem::take(&mut c.rootfs_mounted) {
            return;
        }
        let rootfs = c.rootfs.clone();
        if let Err(e) = nix::mount::umount(&rootfs) {
            let below: Vec<_> = mount_points()
                .into_iter()
                .filter(|p| p.starts_with(&rootfs) && p != &rootfs)
                .collect();
            panic!(
                "unmounting {} right after {id} stopped: {e} (mounts below it: {below:?}; users: {:?})",
                rootfs.display(),
                users_of(&rootfs)
            );
        }
    }
}
