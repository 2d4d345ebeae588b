//! Resource exhaustion (issue 15, item 3), under the CRI-O driver with the
//! real shim, QEMU (TCG), guest kernel and agent:
//! - a full filesystem (ENOSPC) where the shim keeps its directories, where
//!   the share lives, and where a container's log file is;
//! - the host's OOM killer ending QEMU at the pod's host cgroup limit;
//! - the shim out of file descriptors (EMFILE).
//!
//! Each must give a clear error, keep the shim serving, and leave nothing
//! of the pod behind. `/run` is on the root disk on these machines, so a
//! test mounts a small tmpfs of its own over one of the shim's roots: it
//! first takes a private mount namespace (for its thread, which starts the
//! shims, so they inherit it), and nobody else on the node sees the mount.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::crio::*;
use common::*;
use containerd_shim_protos::api;
use nix::mount::{MsFlags, mount};

/// How long a container of a dead sandbox may take to report its exit.
const EXIT_WITHIN: Duration = Duration::from_secs(90);

/// Gives this thread (and every process it starts from now on) a mount
/// namespace of its own, with `/` private so that nothing mounted here
/// propagates to the node.
fn private_mount_namespace() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .expect("unshare(CLONE_NEWNS): the test must run as root");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / recursively private");
}

/// A small tmpfs mounted over `dir` in this test's namespace, which the
/// test can fill to the last block and inode and free again.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).expect("mkdir the mount point");
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},nr_inodes=512,mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
        SmallFs {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills every block and then every inode: on tmpfs a full data area
    /// still lets mkdir and bind(2) through, a node out of both does not.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).expect("create the filler");
        let chunk = vec![0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                break;
            }
        }
        for i in 0.. {
            if let Err(e) = std::fs::File::create(self.dir.join(format!("filler-{i}"))) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling inodes: {e}");
                break;
            }
        }
        let probe = std::fs::create_dir(self.dir.join("probe"));
        assert_eq!(
            probe.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC),
            "{} is not full",
            self.dir.display()
        );
    }

    fn free(&self) {
        for e in std::fs::read_dir(&self.dir)
            .expect("read the small fs")
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("filler") {
                std::fs::remove_file(e.path()).expect("remove a filler");
            }
        }
    }
}

/// RunPodSandbox with `root` (one of the shim's directory roots) on a full
/// filesystem: the call fails with a message naming the full filesystem,
/// nothing of the pod is left, and with room again the same node runs a
/// pod.
fn runpodsandbox_on_a_full(root: &str, name: &str) {
    private_mount_namespace();
    let mut crio = Crio::new(name);
    let fs = SmallFs::mount(Path::new(root), "256k");
    fs.fill();
    let began = Instant::now();
    let (sid, created) = crio.try_create_pod_sandbox(&PodConfig::new(name));
    let took = began.elapsed();
    let err = created.expect_err("RunPodSandbox succeeded on a full filesystem");
    println!(
        "{root} full: RunPodSandbox failed after {took:?} with code {:?}: {}",
        err.code(),
        err.message()
    );
    assert!(
        err.message().contains("No space left on device"),
        "the error does not say the filesystem is full: {}",
        err.message()
    );
    // `start` has no status code; a failed Create must say the node ran
    // out of something.
    if let Some(code) = err.code() {
        assert_eq!(code, ttrpc::Code::RESOURCE_EXHAUSTED, "{err:?}");
    }
    assert!(qemu_pids(&sid).is_empty(), "a QEMU was left running");
    crio.unmount_own_shm(&sid);
    crio.assert_no_leaks(&sid);

    fs.free();
    let sid = crio.run_pod_sandbox(&PodConfig::new(name));
    let out = crio.exec_sync(&sid, &["/bin/echo", "room again"], EXIT_WITHIN);
    assert_eq!(out.stdout(), "room again\n");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// The shim's own directories (`/run/kata-shim`: task socket, pid file,
/// persisted state).
#[test]
fn a_full_shim_directory_root_fails_runpodsandbox_clearly() {
    runpodsandbox_on_a_full(kata_shim::layout::PERSIST_ROOT, "fullshim");
}

/// The VM's sockets (`/run/kata`: QMP, vsock, virtiofsd).
#[test]
fn a_full_vm_state_root_fails_runpodsandbox_clearly() {
    runpodsandbox_on_a_full(kata_shim::layout::RUN_ROOT, "fullstate");
}

/// The share (`/run/kata-containers/shared/sandboxes`).
#[test]
fn a_full_share_root_fails_runpodsandbox_clearly() {
    runpodsandbox_on_a_full(kata_shim::layout::SHARE_ROOT, "fullshare");
}

/// The line numbers a `line-<n>` writer left in a log.
fn numbers(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("line-")?.split(' ').next()?.parse().ok())
        .collect()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A container logging to a file (`file://`, containerd's `--log-uri`) on
/// a filesystem that fills up: the container keeps running and answering
/// execs, the shim says the log file has no room, and once there is room
/// again the log resumes (with a gap, never a stalled container).
#[test]
fn a_full_log_filesystem_drops_output_and_the_log_resumes() {
    private_mount_namespace();
    let mut crio = Crio::new("fulllog");
    let logs = SmallFs::mount(&crio.dir.join("logs"), "64k");
    let log = logs.dir.join("writer.log");
    let sid = crio.run_pod_sandbox(&PodConfig::new("fulllog"));
    let mut p = crio.prepare_container(
        &sid,
        "writer",
        &[
            "/bin/sh",
            "-c",
            // 1 KiB lines: a full tmpfs still takes bytes into the log's
            // last page, so each line must need a new one soon.
            "p=$(head -c 1000 /dev/zero | tr '\\0' x); i=0; \
             while true; do echo line-$i $p; i=$((i+1)); sleep 0.1; done",
        ],
    );
    p.log_uri = Some(format!("file://{}", log.display()));
    let id = crio.create_prepared(p).expect("create the writer");
    crio.start_container(&id);
    wait_for("the first lines in the log", EXIT_WITHIN, || {
        numbers(&log).len() >= 5
    });

    logs.fill();
    let full_at = *numbers(&log).last().expect("lines");
    std::thread::sleep(Duration::from_secs(3));
    let state = crio.state(&id);
    assert_eq!(
        state.status.enum_value(),
        Ok(api::Status::RUNNING),
        "the writer with a full log: {state:?}"
    );
    let out = crio.exec_sync(&id, &["/bin/echo", "alive"], EXIT_WITHIN);
    assert_eq!(out.stdout(), "alive\n", "an exec with the log full");

    logs.free();
    wait_for("the log to resume", EXIT_WITHIN, || {
        numbers(&log).iter().any(|n| *n > full_at + 20)
    });
    let got = numbers(&log);
    let resumed = got.iter().find(|n| **n > full_at + 1).copied();
    println!(
        "log full after line-{full_at}; it resumed at line-{resumed:?}; {} lines kept",
        got.len()
    );
    let shim_log = crio.shim_logs();
    for l in shim_log.lines().filter(|l| l.contains("log file")) {
        println!("shim log: {l}");
    }
    assert!(
        shim_log.contains("cannot write the log file") && shim_log.contains("No space left"),
        "the shim's log does not say the log file was full"
    );
    assert!(
        shim_log.contains("the log file takes output again"),
        "the shim's log does not say the log resumed"
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// The memory cgroup directory a process is in (cgroup v1 or v2).
fn memory_cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/<pid>/cgroup");
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == "memory") {
            return Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        }
    }
    let unified = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a memory cgroup");
    Path::new("/sys/fs/cgroup").join(unified.trim_start_matches('/'))
}

/// `oom_kill` of a memory cgroup directory, either version.
fn oom_kills(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("memory.oom_control"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.events")))
        .unwrap_or_else(|e| panic!("{}: no OOM counter: {e}", dir.display()));
    kata_shim::host_cgroup::oom::parse_oom_kill(&text).expect("an oom_kill line")
}

/// The host's OOM killer ends QEMU: the pod's cgroup (the kubelet's pod
/// level, above the shim's own) is limited to a little more than the VM
/// uses, and a container then touches more guest memory than that. Every
/// container is reported OOM-killed (`<bundle>/oom`, exit 137), the shim's
/// log says the VMM was OOM-killed by the host, and nothing is left.
#[test]
fn a_vmm_oom_killed_by_the_host_is_reported_as_an_oom() {
    let mut crio = Crio::new("vmmoom");
    let sid = crio.run_pod_sandbox(&PodConfig::new("vmmoom"));
    let idle = crio.create_container(&sid, "idle", &["/bin/sleep", "3600"]);
    crio.start_container(&idle);
    let qemu = *qemu_pids(&sid).first().expect("the pod's QEMU");
    let leaf = memory_cgroup_of(qemu);
    let pod_level = leaf.parent().expect("the pod's cgroup").to_path_buf();
    let usage: u64 = std::fs::read_to_string(leaf.join("memory.usage_in_bytes"))
        .or_else(|_| std::fs::read_to_string(leaf.join("memory.current")))
        .expect("memory usage")
        .trim()
        .parse()
        .expect("a number");
    let limit = usage + (128 << 20);
    let limit_file = if pod_level.join("memory.limit_in_bytes").exists() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(pod_level.join(limit_file), limit.to_string()).expect("limit the pod");
    // The victim's own cgroup counts the kill (v1 does not add it to the
    // ancestors' `memory.oom_control`); the shim removes it only at the
    // pod's last Shutdown.
    let before = oom_kills(&leaf);
    println!(
        "QEMU {qemu} in {}: {} MiB used, pod limited to {} MiB, oom_kill {before}",
        leaf.display(),
        usage >> 20,
        limit >> 20
    );

    // 900 MiB of the guest's 2 GiB, touched: far past the limit.
    let hog = crio.create_container(
        &sid,
        "hog",
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=900M",
            "count=1",
        ],
    );
    crio.start_container(&hog);
    for id in [&hog, &idle, &sid] {
        let done = crio
            .init_exit(id, EXIT_WITHIN)
            .unwrap_or_else(|| panic!("{id} did not exit after its VM was OOM-killed"));
        let status = done.wait.expect("Wait").exit_status;
        let oom = crio.bundle(id).join("oom");
        println!(
            "{id}: exit {status}, oom file {}",
            if oom.exists() { "written" } else { "missing" }
        );
        assert_eq!(status, 137, "{id} exits as an OOM-killed container does");
        assert!(
            oom.exists(),
            "{}: missing, CRI-O would not report OOMKilled",
            oom.display()
        );
    }
    let after = oom_kills(&leaf);
    assert!(
        after > before,
        "the kernel counted no OOM kill ({before} -> {after})"
    );
    assert!(
        !Path::new(&format!("/proc/{qemu}")).exists(),
        "QEMU is still there"
    );
    let shim_log = crio.shim_logs();
    let line = shim_log
        .lines()
        .find(|l| l.contains("OOM-killed by the host"))
        .unwrap_or_else(|| {
            panic!("the shim's log does not say the VMM was OOM-killed:\n{shim_log}")
        });
    println!("shim log: {line}");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// File descriptors the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

/// The soft RLIMIT_NOFILE of `pid`.
fn nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a Max open files line")
        .to_string()
}

fn set_nofile(pid: u32, limit: &str) {
    run_ok(
        std::process::Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={limit}")),
    );
}

/// The shim out of file descriptors: its RLIMIT_NOFILE is lowered to a few
/// above what it has open, then execs that keep running are started until
/// a call fails. The failing call must say so (RESOURCE_EXHAUSTED or
/// UNAVAILABLE with a message, never UNKNOWN nor a hang), the shim must
/// serve again once descriptors are free, and removal leaves nothing.
#[test]
fn a_shim_out_of_file_descriptors_fails_calls_clearly_and_recovers() {
    let mut crio = Crio::new("fds");
    let sid = crio.run_pod_sandbox(&PodConfig::new("fds"));
    let ctr = crio.create_container(&sid, "idle", &["/bin/sleep", "3600"]);
    crio.start_container(&ctr);
    let shim = crio.shim_pid(&sid);
    let open = open_fds(shim);
    let normal = nofile(shim);
    // Room for a few execs past the shim's headroom, then none.
    let low = open + kata_shim::stdio::FD_HEADROOM as usize + 8;
    set_nofile(shim, &format!("{low}:"));
    println!("shim {shim}: {open} fds open, RLIMIT_NOFILE lowered to {low}");

    let mut held = Vec::new();
    let mut failure = None;
    for _ in 0..32 {
        let exec_id = hex_id();
        let io = match crio.exec(&ctr, &exec_id, &["/bin/sleep", "3600"]) {
            Ok(io) => io,
            Err(e) => {
                failure = Some(("Exec", e));
                break;
            }
        };
        let mut req = api::StartRequest::new();
        req.id = ctr.clone();
        req.exec_id = exec_id.clone();
        match crio.call::<_, api::StartResponse>(&ctr, "Start", &req) {
            Ok(_) => held.push((exec_id, io)),
            Err(e) => {
                failure = Some(("Start", CrioError::Rpc(e)));
                break;
            }
        }
    }
    let (call, err) = failure.expect("32 execs started under a limit of a few fds");
    assert!(
        !held.is_empty(),
        "not one exec started with {} spare descriptors",
        low - open
    );
    println!(
        "after {} execs, {call} failed with {:?}: {} (shim has {} fds open)",
        held.len(),
        err.code(),
        err.message(),
        open_fds(shim)
    );
    assert!(
        matches!(
            err.code(),
            Some(ttrpc::Code::RESOURCE_EXHAUSTED | ttrpc::Code::UNAVAILABLE)
        ),
        "{call} under EMFILE: {err:?}"
    );
    assert!(
        err.message().contains("Too many open files"),
        "the error does not say the shim ran out of file descriptors: {}",
        err.message()
    );

    // Descriptors free again: the shim serves as before.
    set_nofile(shim, &format!("{normal}:"));
    for (exec_id, _) in &held {
        crio.kill(&ctr, exec_id, 9, false)
            .expect("kill a held exec");
    }
    let out = crio.exec_sync(&ctr, &["/bin/echo", "fds again"], EXIT_WITHIN);
    assert_eq!(out.stdout(), "fds again\n");
    let more = crio.create_container(&sid, "more", &["/bin/sleep", "3600"]);
    crio.start_container(&more);
    drop(held);
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}
