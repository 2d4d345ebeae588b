//! Tearing down what a test left and the pod-level leak checks: processes
//! still holding a path, host cgroups of a pod, and the driver's Drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::api;

use super::*;

/// Processes whose cwd, root or open files lie under `path`.
pub(super) fn users_of(path: &Path) -> Vec<String> {
    let mut users = Vec::new();
    for (pid, argv) in processes() {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let mut links: Vec<PathBuf> = vec![proc.join("cwd"), proc.join("root")];
        if let Ok(fds) = std::fs::read_dir(proc.join("fd")) {
            links.extend(fds.flatten().map(|e| e.path()));
        }
        if links
            .iter()
            .any(|l| std::fs::read_link(l).is_ok_and(|t| t.starts_with(path)))
        {
            users.push(format!("{pid}: {}", argv.join(" ")));
        }
    }
    users
}

/// Container cgroup directories under the pod's parent in every host
/// hierarchy.
pub(super) fn pod_cgroup_dirs(pod: &PodInfo) -> Vec<PathBuf> {
    let parent = pod.cgroup_parent.trim_start_matches('/');
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|h| {
            std::fs::read_dir(h.path().join(parent))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Makes `parent` in every host hierarchy as the kubelet would, cpusets
/// filled in from the level above (an empty cpuset admits no process).
pub(super) fn make_cgroup_dirs(parent: &str) {
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut dir = h.path();
        for part in parent.trim_start_matches('/').split('/') {
            let next = dir.join(part);
            if std::fs::create_dir(&next).is_ok() {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let above = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                    if !above.trim().is_empty() {
                        std::fs::write(next.join(f), above.trim())
                            .unwrap_or_else(|e| panic!("{}: {e}", next.join(f).display()));
                    }
                }
            }
            dir = next;
        }
    }
}

impl Drop for Crio {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut forced = Vec::new();
        // What the test left: best effort, apps before their sandboxes.
        let mut left: Vec<(String, bool)> = self
            .ctrs
            .iter()
            .map(|(id, c)| (id.clone(), *id == c.sandbox_id))
            .collect();
        left.sort_by_key(|(_, sandbox)| *sandbox);
        for (id, _) in &left {
            let Some(c) = self.ctrs.remove(id) else {
                continue;
            };
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), async {
                    let mut kill = api::KillRequest::new();
                    kill.id = id.clone();
                    kill.signal = SIGKILL;
                    kill.all = true;
                    let _ = call::<_, api::Empty>(&c.client, "Kill", &kill, None).await;
                    let mut del = api::DeleteRequest::new();
                    del.id = id.clone();
                    let _ = call::<_, api::DeleteResponse>(&c.client, "Delete", &del, None).await;
                    let mut shut = api::ShutdownRequest::new();
                    shut.id = id.clone();
                    let _ = call::<_, api::Empty>(&c.client, "Shutdown", &shut, None).await;
                })
                .await
            });
        }
        for (sid, pod) in &self.pods {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mentioning = || -> Vec<(u32, Vec<String>)> {
                processes()
                    .into_iter()
                    .filter(|(_, argv)| argv.iter().any(|a| a.contains(sid.as_str())))
                    .collect()
            };
            while !mentioning().is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let persisted = kata_shim::layout::shim_dir(sid).exists();
            if (persisted || !mentioning().is_empty()) && pod.info.bundle.exists() {
                // The binary's own cleanup from its persisted state.
                let mut cmd = Command::new(bin_dir().join("containerd-shim-kata-v2"));
                cmd.args([
                    "-namespace",
                    "default",
                    "-address",
                    "",
                    "-id",
                    sid,
                    "-bundle",
                ])
                .arg(&pod.info.bundle)
                .arg("delete")
                .current_dir(&pod.info.bundle)
                .stdin(Stdio::null());
                let _ = output_within(&mut cmd, Duration::from_secs(30));
            }
            for (pid, argv) in mentioning() {
                kill9(pid);
                wait_gone(pid, Duration::from_secs(5));
                forced.push(format!("{pid}: {}", argv.join(" ")));
            }
            if panicking {
                remove_sandbox_dirs(sid);
            }
        }
        self.logs.clear();
        for id in self.pods.keys() {
            self.release_pod_resources(id);
        }
        unmount_under(&self.dir);
        for pod in self.pods.values() {
            for d in pod_cgroup_dirs(&pod.info) {
                forced.push(format!("host cgroup {}", d.display()));
                let _ = std::fs::remove_dir(d);
            }
            let parent = pod.info.cgroup_parent.trim_start_matches('/');
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(h.path().join(parent));
            }
        }
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.cgroup_root));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !panicking {
            assert!(
                forced.is_empty(),
                "cleanup had to kill or remove what the pods left:\n{}",
                forced.join("\n")
            );
            for sid in self.pods.keys() {
                self.assert_no_leaks(sid);
            }
        }
    }
}
