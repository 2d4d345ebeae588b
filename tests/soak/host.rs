//! The soak's measurements of the host: what removed pods must not leave,
//! and what long-lived processes hold.

use std::collections::BTreeMap;
use std::path::Path;

use super::Pod;
use crate::common::containerd::Containerd;
use crate::common::cri::Cri;
use crate::common::processes;

/// One measurement of the host.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub after: usize,
    pub kata: usize,
    pub runc: usize,
    /// What a removed pod must not leave: back at the baseline each time.
    pub leaks: BTreeMap<&'static str, i64>,
    /// What long-lived processes hold: may vary, must not grow per pod.
    pub held: BTreeMap<&'static str, i64>,
    /// The long-lived pod's guest processes as `ps` lists them, for the
    /// message when their count differs.
    pub guest_ps: String,
}

pub fn snapshot(c: &Containerd, cri: &Cri, anchor: &Pod, anchor_ctr: &str) -> Snapshot {
    let procs = processes();
    let count = |f: &dyn Fn(&[String]) -> bool| procs.iter().filter(|(_, a)| f(a)).count() as i64;
    let arg0_ends = |a: &[String], tail: &str| a.first().is_some_and(|p| p.ends_with(tail));
    let mut leaks = BTreeMap::new();
    leaks.insert(
        "VM processes",
        count(&|a| {
            ["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock"]
                .iter()
                .any(|t| arg0_ends(a, t))
        }),
    );
    leaks.insert(
        "kata shims",
        count(&|a| arg0_ends(a, "containerd-shim-kata-v2")),
    );
    leaks.insert(
        "runc shims",
        count(&|a| arg0_ends(a, "containerd-shim-runc-v2")),
    );
    leaks.insert(
        "mounts",
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .count() as i64,
    );
    let netns: Vec<String> = command_lines("ip", &["netns", "list"])
        .into_iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    leaks.insert("netns", netns.len() as i64);
    let (mut taps, mut qdiscs) = (0, 0);
    for ns in std::iter::once(None).chain(netns.iter().map(Some)) {
        let ns_args: Vec<&str> = ns.map(|n| vec!["-n", n.as_str()]).unwrap_or_default();
        let links = command_lines("ip", &[&ns_args[..], &["-o", "link", "show"]].concat());
        taps += links.iter().filter(|l| l.contains("_kata")).count() as i64;
        qdiscs += command_lines("tc", &[&ns_args[..], &["qdisc", "show"]].concat()).len() as i64;
    }
    leaks.insert("taps", taps);
    leaks.insert("qdiscs", qdiscs);
    leaks.insert("host cgroups", dirs_under(Path::new("/sys/fs/cgroup")));
    leaks.insert(
        "state entries",
        [
            kata_shim::layout::PERSIST_ROOT,
            kata_shim::layout::RUN_ROOT,
            kata_shim::layout::SHARE_ROOT,
            kata_shim::layout::MGMT_ROOT,
        ]
        .iter()
        .map(|d| entries_under(Path::new(d)))
        .sum(),
    );
    let guest_ps = guest_ps(cri, anchor_ctr);
    leaks.insert("guest processes", lasting_processes(&guest_ps));

    let mut held = BTreeMap::new();
    let pid_of =
        |pred: &dyn Fn(&[String]) -> bool| procs.iter().find(|(_, a)| pred(a)).map(|(p, _)| *p);
    let shim = pid_of(&|a| {
        arg0_ends(a, "containerd-shim-kata-v2")
            && a.windows(2).any(|w| w[0] == "-id" && w[1] == anchor.id)
    });
    for (who, pid) in [("containerd", c.pid()), ("long-lived shim", shim)] {
        let pid = pid.unwrap_or_else(|| panic!("no {who} process"));
        let (fds, threads, rss) = held_by(pid);
        held.insert(
            if who == "containerd" {
                "containerd fds"
            } else {
                "shim fds"
            },
            fds,
        );
        held.insert(
            if who == "containerd" {
                "containerd threads"
            } else {
                "shim threads"
            },
            threads,
        );
        held.insert(
            if who == "containerd" {
                "containerd RSS KiB"
            } else {
                "shim RSS KiB"
            },
            rss,
        );
    }
    let meminfo = cri
        .exec_sync(anchor_ctr, &["grep", "MemAvailable", "/proc/meminfo"], 60)
        .expect("meminfo of the long-lived pod");
    let avail = String::from_utf8_lossy(&meminfo.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    held.insert("guest MemAvailable KiB", avail);
    Snapshot {
        after: 0,
        kata: 0,
        runc: 0,
        leaks,
        held,
        guest_ps,
    }
}

/// The long-lived pod's guest processes (its pid namespace is the pod's),
/// as `ps -o pid,ppid,args` lists them.
pub fn guest_ps(cri: &Cri, anchor_ctr: &str) -> String {
    let ps = cri
        .exec_sync(anchor_ctr, &["ps", "-o", "pid,ppid,args"], 60)
        .expect("ps in the long-lived pod");
    String::from_utf8_lossy(&ps.stdout).into_owned()
}

/// The processes of a [`guest_ps`] listing that outlive a moment: all but
/// the `ps` itself and the `sleep 1` the anchor container's loop forks
/// anew every second (between two of them there is none).
pub fn lasting_processes(listing: &str) -> i64 {
    let rows: Vec<(&str, &str, &str)> = listing
        .lines()
        .skip(1)
        .filter_map(|l| {
            let l = l.trim_start();
            let (pid, rest) = l.split_once(char::is_whitespace)?;
            let (ppid, args) = rest.trim_start().split_once(char::is_whitespace)?;
            Some((pid, ppid, args.trim()))
        })
        .collect();
    let anchor_sh = rows
        .iter()
        .find(|r| r.2.contains("echo hello-from-"))
        .map(|r| r.0);
    rows.iter()
        .filter(|r| !r.2.starts_with("ps "))
        .filter(|r| !(Some(r.1) == anchor_sh && r.2 == "sleep 1"))
        .count() as i64
}

fn command_lines(cmd: &str, args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn dirs_under(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + dirs_under(&e.path()))
        .sum()
}

fn entries_under(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let below = if e.file_type().is_ok_and(|t| t.is_dir()) {
                entries_under(&e.path())
            } else {
                0
            };
            1 + below
        })
        .sum()
}

/// Open fds, threads and resident KiB of `pid`.
fn held_by(pid: u32) -> (i64, i64, i64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(-1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}
