//! Container cleanup and lifecycle edge cases inside a real VM: what a
//! removed container leaves in the guest (mounts, cgroups, processes, state
//! directories), orphans and zombies, SignalProcess with `all`, sandbox
//! storages, the pod's /dev/shm, and RemoveContainer's codes.
//!
//! The guest is observed from the inside by an "inspector" container that
//! has no pid namespace of its own: its /proc is the guest's, so /proc/1 is
//! the agent. With CAP_SYS_PTRACE it may follow /proc/1/root to the agent's
//! view of the guest filesystem (cgroups under /sys/fs/cgroup, state under
//! /run/kata-containers) and read /proc/1/mountinfo, the agent's mount
//! table. It keeps its own mount namespace: a container without one would
//! have libcontainer perform its rootfs mounts in the agent's namespace,
//! and the agent only lets a spec bind paths inside the share, a storage or
//! the pod's shm, so binding the guest's /sys/fs/cgroup is refused.

mod common;

use std::cell::Cell;
use std::time::{Duration, Instant};

use common::pod::*;
use kata_agent_protocol::agent;
use kata_shim::agent_client::call_context;
use serde_json::{Value, json};

const INSPECTOR: &str = "inspector";
/// The pod's shared /dev/shm in the guest (agent/src/sandbox.rs).
const SANDBOX_SHM: &str = "/run/kata-containers/sandbox/shm";
/// WaitProcess's bound on waiting for the output after the exit
/// (agent/src/process.rs).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn create_sandbox(pod: &Pod, storages: Vec<agent::Storage>) -> ttrpc::Result<()> {
    let mut req = agent::CreateSandboxRequest::new();
    req.sandbox_id = pod.id.clone();
    req.hostname = "kata-pod".into();
    req.storages = storages;
    pod.try_call(|a| async move {
        a.raw()
            .create_sandbox(call_context(CALL), &req)
            .await
            .map(|_| ())
    })
}

fn storage(driver: &str, mount_point: &str) -> agent::Storage {
    let mut st = agent::Storage::new();
    st.driver = driver.into();
    st.source = "tmpfs".into();
    st.fstype = "tmpfs".into();
    st.mount_point = mount_point.into();
    st
}

/// Mounts of the agent's table at `mount_point`.
fn mounts_at<'m>(mounts: &'m [String], mount_point: &str) -> Vec<&'m String> {
    mounts
        .iter()
        .filter(|l| l.split(' ').nth(4) == Some(mount_point))
        .collect()
}

/// `process` with CAP_SYS_PTRACE added (needed for /proc/1/root).
fn ptrace_process(args: &[&str]) -> Value {
    let mut p = process(args, false);
    let mut caps = DEFAULT_CAPS.to_vec();
    caps.push("CAP_SYS_PTRACE");
    p["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    p
}

/// `spec` without a pid namespace: the container's processes live in the
/// guest's (the agent's) pid namespace.
fn spec_no_pidns(root: &str, args: &[&str]) -> Value {
    let mut s = spec(root, args);
    s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    s
}

/// One guest process as /proc/<pid>/stat and /proc/<pid>/cgroup show it.
#[derive(Debug, Clone)]
struct GuestProc {
    pid: u32,
    ppid: u32,
    comm: String,
    state: char,
    cgroup: String,
}

impl GuestProc {
    fn is_kernel_thread(&self) -> bool {
        self.pid == 2 || self.ppid == 2
    }
}

/// Runs shell scripts in the inspector container.
struct Inspector<'a> {
    pod: &'a Pod,
    n: Cell<u32>,
}

impl<'a> Inspector<'a> {
    fn start(pod: &'a Pod) -> Self {
        let root = pod.rootfs(INSPECTOR);
        let mut s = spec_no_pidns(&root, &["/bin/sleep", "100000"]);
        s["process"] = ptrace_process(&["/bin/sleep", "100000"]);
        pod.run(INSPECTOR, &s);
        Inspector {
            pod,
            n: Cell::new(0),
        }
    }

    fn sh(&self, script: &str) -> String {
        let n = self.n.get() + 1;
        self.n.set(n);
        let exec_id = format!("i{n}");
        self.pod.exec(
            INSPECTOR,
            &exec_id,
            &ptrace_process(&["/bin/sh", "-c", script]),
        );
        let out = self.pod.read_all(INSPECTOR, &exec_id, false);
        let err = self.pod.read_all(INSPECTOR, &exec_id, true);
        let code = self.pod.wait(INSPECTOR, &exec_id);
        assert_eq!(
            code,
            0,
            "inspector script {script:?} failed: {}",
            String::from_utf8_lossy(&err)
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The agent's mount table.
    fn mountinfo(&self) -> Vec<String> {
        self.sh("cat /proc/1/mountinfo")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every process of the guest (one `grep` over /proc: a shell loop
    /// forking per process takes seconds under TCG).
    fn processes(&self) -> Vec<GuestProc> {
        let out = self.sh("grep -H '' /proc/[0-9]*/stat /proc/[0-9]*/cgroup 2>/dev/null; true");
        let mut cgroups = std::collections::HashMap::new();
        let mut stats = Vec::new();
        for l in out.lines() {
            let Some(rest) = l.strip_prefix("/proc/") else {
                continue;
            };
            let Some((pid, rest)) = rest.split_once('/') else {
                continue;
            };
            if let Some(cg) = rest.strip_prefix("cgroup:") {
                cgroups.insert(pid.to_string(), cg.trim_start_matches("0::").to_string());
            } else if let Some(stat) = rest.strip_prefix("stat:") {
                stats.push(stat.to_string());
            }
        }
        stats
            .iter()
            .filter_map(|stat| {
                let (pid, rest) = stat.split_once(" (")?;
                let close = rest.rfind(')')?;
                let comm = rest[..close].to_string();
                let mut f = rest[close + 1..].split_whitespace();
                let state = f.next()?.chars().next()?;
                let ppid = f.next()?.parse().ok()?;
                Some(GuestProc {
                    pid: pid.trim().parse().ok()?,
                    ppid,
                    comm,
                    state,
                    cgroup: cgroups.get(pid.trim()).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Processes in the cgroup of container `cid` of this pod.
    fn processes_of(&self, cid: &str) -> Vec<GuestProc> {
        let cg = format!("/kata/{}/{cid}", self.pod.id);
        self.processes()
            .into_iter()
            .filter(|p| p.cgroup == cg)
            .collect()
    }

    /// Directories under the pod's cgroup, relative to it.
    fn pod_cgroups(&self) -> Vec<String> {
        let base = format!("/proc/1/root/sys/fs/cgroup/kata/{}", self.pod.id);
        self.sh(&format!("cd {base} && find . -mindepth 1 -type d"))
            .lines()
            .map(|l| l.trim_start_matches("./").to_string())
            .collect()
    }

    /// Entries of the guest's /run/kata-containers.
    fn run_dirs(&self) -> Vec<String> {
        self.sh("ls -1 /proc/1/root/run/kata-containers")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until container `cid` has `n` processes.
    fn wait_for_processes(&self, cid: &str, n: usize) -> Vec<GuestProc> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ps = self.processes_of(cid);
            if ps.len() == n {
                return ps;
            }
            assert!(
                Instant::now() < deadline,
                "{cid} has {} processes, expected {n}: {ps:?}",
                ps.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn zombies(ps: &[GuestProc]) -> Vec<&GuestProc> {
    ps.iter().filter(|p| p.state == 'Z').collect()
}

fn signal_all(pod: &Pod, cid: &str, signal: u32) {
    let mut req = agent::SignalProcessRequest::new();
    req.container_id = cid.into();
    req.signal = signal;
    req.all = true;
    pod.call("SignalProcess", |a| async move {
        a.raw().signal_process(call_context(CALL), &req).await
    });
}

fn container_call(pod: &Pod, call: &str, cid: &str) -> ttrpc::Result<()> {
    let cid = cid.to_string();
    let call = call.to_string();
    pod.try_call(|a| async move {
        let ctx = call_context(CALL);
        match call.as_str() {
            "start" => {
                let mut req = agent::ContainerRequest::new();
                req.container_id = cid;
                a.raw().start_container(ctx, &req).await.map(|_| ())
            }
            "remove" => {
                let mut req = agent::RemoveContainerRequest::new();
                req.container_id = cid;
                a.raw().remove_container(ctx, &req).await.map(|_| ())
            }
            "wait" => {
                let mut req = agent::ProcessRequest::new();
                req.container_id = cid;
                a.raw().wait_process(ctx, &req).await.map(|_| ())
            }
            other => panic!("no call {other}"),
        }
    })
}

/// Asserts that nothing of container `cid` is left in the guest.
fn assert_container_gone(insp: &Inspector<'_>, cid: &str) {
    let procs = insp.processes_of(cid);
    assert!(procs.is_empty(), "{cid} left processes: {procs:?}");
    let cgs = insp.pod_cgroups();
    assert!(
        !cgs.iter().any(|c| c == cid),
        "{cid} left its cgroup: {cgs:?}"
    );
    let dirs = insp.run_dirs();
    assert!(
        !dirs.iter().any(|d| d == cid),
        "{cid} left /run/kata-containers/{cid}: {dirs:?}"
    );
    let mounts = insp.mountinfo();
    let needle = format!("/{cid}/");
    let left: Vec<_> = mounts.iter().filter(|m| m.contains(&needle)).collect();
    assert!(left.is_empty(), "{cid} left mounts: {left:?}");
}

#[test]
fn fifty_containers_leave_no_mounts_cgroups_processes_or_state() {
    const N: usize = 50;
    let pod = Pod::boot("cleanup");
    let insp = Inspector::start(&pod);
    let mounts_before = insp.mountinfo();
    let began = Instant::now();
    let (mut create, mut wait, mut remove) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..N {
        let cid = format!("cl-{i:02}");
        let root = pod.rootfs(&cid);
        let t = Instant::now();
        pod.run(&cid, &spec(&root, &["/bin/sh", "-c", &format!("echo {i}")]));
        create += t.elapsed();
        let t = Instant::now();
        assert_eq!(
            String::from_utf8_lossy(&pod.read_all(&cid, "", false)),
            format!("{i}\n")
        );
        assert_eq!(pod.wait(&cid, ""), 0);
        wait += t.elapsed();
        let t = Instant::now();
        pod.remove(&cid);
        remove += t.elapsed();
    }
    let total = began.elapsed();
    let per = |d: Duration| d / N as u32;
    eprintln!(
        "{N} containers in {total:?}: per container create+start {:?}, output+wait {:?}, remove {:?}",
        per(create),
        per(wait),
        per(remove)
    );

    let mounts_after = insp.mountinfo();
    let mentioning: Vec<_> = mounts_after.iter().filter(|m| m.contains("/cl-")).collect();
    assert!(
        mentioning.is_empty(),
        "mounts of removed containers: {mentioning:#?}"
    );
    let added: Vec<_> = mounts_after
        .iter()
        .filter(|m| !mounts_before.contains(m))
        .collect();
    let gone: Vec<_> = mounts_before
        .iter()
        .filter(|m| !mounts_after.contains(m))
        .collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "the guest mount table changed: added {added:#?}, gone {gone:#?}"
    );

    let cgroups = insp.pod_cgroups();
    assert_eq!(
        cgroups,
        vec![INSPECTOR.to_string()],
        "only the inspector's cgroup remains under the pod's"
    );

    let inspector_cg = format!("/kata/{}/{INSPECTOR}", pod.id);
    let procs = insp.processes();
    let strangers: Vec<_> = procs
        .iter()
        .filter(|p| !p.is_kernel_thread() && p.pid != 1 && p.cgroup != inspector_cg)
        .collect();
    assert!(
        strangers.is_empty(),
        "processes other than the agent and the inspector: {strangers:#?}"
    );
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));

    let dirs = insp.run_dirs();
    let left: Vec<_> = dirs.iter().filter(|d| d.starts_with("cl-")).collect();
    assert!(left.is_empty(), "state directories left: {left:?}");
    assert!(
        total < Duration::from_secs(60),
        "{N} containers took {total:?}"
    );
    pod.remove(INSPECTOR);
}

#[test]
fn orphans_are_reaped_and_do_not_hold_up_wait() {
    let pod = Pod::boot("orphans");
    let insp = Inspector::start(&pod);

    // In its own pid namespace the grandchild dies with the init.
    let root = pod.rootfs("o1");
    pod.run("o1", &spec(&root, &["/bin/sh", "-c", "sleep 1 & exit 0"]));
    let t = Instant::now();
    assert_eq!(pod.wait("o1", ""), 0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "o1: {:?}",
        t.elapsed()
    );

    // In the guest's pid namespace it is reparented to the agent (PID 1)
    // and keeps stdout open for a second after the init exited.
    let root = pod.rootfs("o2");
    pod.run(
        "o2",
        &spec_no_pidns(&root, &["/bin/sh", "-c", "sleep 1 & exit 0"]),
    );
    let t = Instant::now();
    assert_eq!(pod.wait("o2", ""), 0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "o2: {:?}",
        t.elapsed()
    );

    // A grandchild that holds stdout far longer: WaitProcess returns after
    // the drain timeout, not when the grandchild exits.
    let root = pod.rootfs("o3");
    pod.run(
        "o3",
        &spec_no_pidns(&root, &["/bin/sh", "-c", "sleep 60 & echo started; exit 0"]),
    );
    let t = Instant::now();
    assert_eq!(pod.wait("o3", ""), 0);
    let waited = t.elapsed();
    assert!(
        waited < DRAIN_TIMEOUT + Duration::from_secs(3),
        "o3 WaitProcess took {waited:?}"
    );
    eprintln!("WaitProcess with a grandchild holding stdout: {waited:?}");

    // The short grandchildren have exited by now: nothing is a zombie.
    std::thread::sleep(Duration::from_secs(1));
    let procs = insp.processes();
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));
    for cid in ["o1", "o2"] {
        assert!(
            insp.processes_of(cid).is_empty(),
            "{cid}: {:?}",
            insp.processes_of(cid)
        );
    }
    let o3 = insp.processes_of("o3");
    assert!(
        o3.len() == 1 && o3[0].comm == "sleep" && o3[0].ppid == 1,
        "o3's orphan is the agent's child: {o3:?}"
    );

    // Removing the stopped container kills what is left in its cgroup, and
    // the agent reaps it.
    let t = Instant::now();
    pod.remove("o3");
    eprintln!(
        "remove of a stopped container with an orphan: {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let procs = insp.processes();
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));
    pod.remove("o1");
    pod.remove("o2");
    for cid in ["o1", "o2", "o3"] {
        assert_container_gone(&insp, cid);
    }
    pod.remove(INSPECTOR);
}

#[test]
fn signal_all_reaches_every_process_of_the_container() {
    let pod = Pod::boot("sigall");
    let insp = Inspector::start(&pod);
    let script = "sleep 1000 & sleep 1000 & wait";

    // Own pid namespace: the init is the namespace's init, which ignores
    // SIGTERM from outside without a handler; the sleeps die, `wait`
    // returns and the init exits.
    let root = pod.rootfs("s1");
    pod.run("s1", &spec(&root, &["/bin/sh", "-c", script]));
    insp.wait_for_processes("s1", 3);
    signal_all(&pod, "s1", 15);
    let status = pod.wait("s1", "");
    assert!(matches!(status, 0 | 143), "s1 exited {status}");
    insp.wait_for_processes("s1", 0);

    // The guest's pid namespace: the sleeps are not killed with the init,
    // only `all` reaches them.
    let root = pod.rootfs("s2");
    pod.run("s2", &spec_no_pidns(&root, &["/bin/sh", "-c", script]));
    insp.wait_for_processes("s2", 3);
    signal_all(&pod, "s2", 9);
    assert_eq!(pod.wait("s2", ""), 137);
    insp.wait_for_processes("s2", 0);
    let procs = insp.processes();
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));

    // Signalling a stopped container's processes is refused.
    let mut req = agent::SignalProcessRequest::new();
    req.container_id = "s2".into();
    req.signal = 9;
    req.all = true;
    let e = pod
        .try_call(|a| async move { a.raw().signal_process(call_context(CALL), &req).await })
        .expect_err("stopped");
    assert_code(e, ttrpc::Code::FAILED_PRECONDITION);

    pod.remove("s1");
    pod.remove("s2");
    assert_container_gone(&insp, "s1");
    assert_container_gone(&insp, "s2");
    pod.remove(INSPECTOR);
}

#[test]
fn ephemeral_storage_and_read_only_share_volumes() {
    let mp = "/run/kata-containers/sandbox/ephemeral/cache";
    let pod = Pod::boot_vm("storage");
    // A CreateSandbox that fails on its second storage undoes the first
    // and the shm, so that the retry does not stack mounts on them.
    let e = create_sandbox(
        &pod,
        vec![
            storage("ephemeral", mp),
            storage("nfs", "/run/kata-containers/sandbox/bad"),
        ],
    )
    .expect_err("unknown driver");
    assert_code(e, ttrpc::Code::INVALID_ARGUMENT);
    create_sandbox(&pod, vec![storage("ephemeral", mp)]).expect("CreateSandbox");
    let insp = Inspector::start(&pod);

    let mounts = insp.mountinfo();
    let at = mounts_at(&mounts, mp);
    assert_eq!(at.len(), 1, "one mount at {mp}: {mounts:#?}");
    let fstype = at[0].split(" - ").nth(1).and_then(|r| r.split(' ').next());
    assert_eq!(fstype, Some("tmpfs"), "{}", at[0]);
    assert_eq!(
        mounts_at(&mounts, SANDBOX_SHM).len(),
        1,
        "one shm mount: {mounts:#?}"
    );

    let with_volume = |root: &str, args: &[&str], m: Value| {
        let mut s = spec(root, args);
        s["mounts"].as_array_mut().expect("mounts").push(m);
        s
    };
    let data =
        json!({"destination": "/data", "type": "bind", "source": mp, "options": ["rbind", "rw"]});
    let root = pod.rootfs("w");
    pod.run(
        "w",
        &with_volume(
            &root,
            &["/bin/sh", "-c", "echo hello >/data/f"],
            data.clone(),
        ),
    );
    assert_eq!(pod.wait("w", ""), 0);
    let root = pod.rootfs("r");
    pod.run("r", &with_volume(&root, &["/bin/cat", "/data/f"], data));
    assert_eq!(pod.read_all("r", "", false), b"hello\n");
    assert_eq!(pod.wait("r", ""), 0);
    // The file lives in the guest tmpfs, not in the share.
    assert!(!pod.share().join("w/rootfs/data/f").exists());

    // A volume from the share, bound read-only.
    let vol = pod.share().join("vol1");
    pod.share_write(|| {
        std::fs::create_dir_all(&vol).expect("mkdir volume");
        std::fs::write(vol.join("x"), "from host\n").expect("write volume file");
    });
    let root = pod.rootfs("v");
    pod.run(
        "v",
        &with_volume(
            &root,
            &[
                "/bin/sh",
                "-c",
                "cat /vol/x; if touch /vol/y 2>/dev/null; then echo WRITABLE; else echo READONLY; fi",
            ],
            json!({"destination": "/vol", "type": "bind", "source": format!("{GUEST_SHARE}/vol1"), "options": ["rbind", "ro"]}),
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&pod.read_all("v", "", false)),
        "from host\nREADONLY\n"
    );
    assert_eq!(pod.wait("v", ""), 0);
    assert!(!vol.join("y").exists());

    for cid in ["w", "r", "v"] {
        pod.remove(cid);
        assert_container_gone(&insp, cid);
    }
    // The sandbox storage outlives the containers.
    assert_eq!(mounts_at(&insp.mountinfo(), mp).len(), 1);
    pod.remove(INSPECTOR);
}

#[test]
fn containers_of_a_pod_share_its_dev_shm() {
    let pod = Pod::boot("shm");
    let pod_shm = |root: &str, args: &[&str]| {
        let mut s = spec(root, args);
        let mounts = s["mounts"].as_array_mut().expect("mounts");
        mounts.retain(|m| m["destination"] != "/dev/shm");
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": SANDBOX_SHM, "options": ["rbind", "rw"]}));
        s
    };
    let root = pod.rootfs("a");
    pod.run(
        "a",
        &pod_shm(&root, &["/bin/sh", "-c", "echo shared >/dev/shm/f"]),
    );
    assert_eq!(pod.wait("a", ""), 0);
    let root = pod.rootfs("b");
    pod.run("b", &pod_shm(&root, &["/bin/cat", "/dev/shm/f"]));
    assert_eq!(pod.read_all("b", "", false), b"shared\n");
    assert_eq!(pod.wait("b", ""), 0);
    // A container with its own shm tmpfs does not see it.
    let root = pod.rootfs("c");
    pod.run(
        "c",
        &spec(
            &root,
            &[
                "/bin/sh",
                "-c",
                "test -e /dev/shm/f && echo SEEN || echo PRIVATE",
            ],
        ),
    );
    assert_eq!(pod.read_all("c", "", false), b"PRIVATE\n");
    assert_eq!(pod.wait("c", ""), 0);
    for cid in ["a", "b", "c"] {
        pod.remove(cid);
    }
}

#[test]
fn remove_kills_and_cleans_up_and_codes_are_precise() {
    let pod = Pod::boot("remove");
    let insp = Inspector::start(&pod);

    let root = pod.rootfs("c1");
    pod.run("c1", &spec(&root, &["/bin/sleep", "1000"]));
    let e = container_call(&pod, "start", "c1").expect_err("already running");
    assert_code(e, ttrpc::Code::FAILED_PRECONDITION);
    insp.wait_for_processes("c1", 1);
    let t = Instant::now();
    pod.remove("c1");
    eprintln!("remove of a running container: {:?}", t.elapsed());
    assert_container_gone(&insp, "c1");

    for call in ["remove", "start", "wait"] {
        let e = container_call(&pod, call, "c1").expect_err("removed");
        assert_code(e, ttrpc::Code::NOT_FOUND);
    }
    let e = container_call(&pod, "remove", "never-created").expect_err("unknown");
    assert_code(e, ttrpc::Code::NOT_FOUND);

    // A created (never started) container and a paused one are removed too.
    let root = pod.rootfs("c2");
    pod.create("c2", &spec(&root, &["/bin/sleep", "1000"]));
    let root = pod.rootfs("c3");
    pod.run("c3", &spec(&root, &["/bin/sleep", "1000"]));
    pod.container_call("pause", "c3").expect("pause");
    pod.remove("c2");
    pod.remove("c3");
    assert_container_gone(&insp, "c2");
    assert_container_gone(&insp, "c3");

    // The id can be used again.
    pod.run(
        "c1",
        &spec(&pod.rootfs("c1"), &["/bin/sh", "-c", "echo again"]),
    );
    assert_eq!(pod.read_all("c1", "", false), b"again\n");
    assert_eq!(pod.wait("c1", ""), 0);
    pod.remove("c1");
    assert_container_gone(&insp, "c1");
    let procs = insp.processes();
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));
    pod.remove(INSPECTOR);
}

#[test]
fn failed_creates_leave_nothing_behind() {
    let pod = Pod::boot("failedcreate");
    let insp = Inspector::start(&pod);
    let mounts_before = insp.mountinfo();
    let create = |cid: &str, spec: &Value, storages: Vec<agent::Storage>| {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.oci_spec_json = serde_json::to_vec(spec).expect("spec json");
        req.storages = storages;
        pod.try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
    };
    let ephemeral = |mp: &str| storage("ephemeral", mp);
    let mp = "/run/kata-containers/sandbox/ephemeral/f1";

    // Refused by the spec checks after the container's storage was mounted.
    let root = pod.rootfs("f1");
    let mut s = spec(&root, &["/bin/true"]);
    s["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind"]}),
    );
    let e = create("f1", &s, vec![ephemeral(mp)]).expect_err("bind outside the share");
    assert_code(e, ttrpc::Code::INVALID_ARGUMENT);

    // Failing inside libcontainer: a program that does not exist.
    let e = create(
        "f1",
        &spec(&root, &["/bin/no-such-program"]),
        vec![ephemeral(mp)],
    )
    .expect_err("no program");
    eprintln!("create with a missing program: {e:?}");

    // Failing inside libcontainer: an unknown filesystem type.
    let mut s = spec(&root, &["/bin/true"]);
    s["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"destination": "/x", "type": "no-such-fs", "source": "none"}));
    let e = create("f1", &s, vec![ephemeral(mp)]).expect_err("bad fs type");
    eprintln!("create with an unknown fs type: {e:?}");

    assert_container_gone(&insp, "f1");
    let mounts_after = insp.mountinfo();
    let added: Vec<_> = mounts_after
        .iter()
        .filter(|m| !mounts_before.contains(m))
        .collect();
    assert!(added.is_empty(), "failed creates left mounts: {added:#?}");
    let procs = insp.processes();
    assert!(zombies(&procs).is_empty(), "zombies: {:?}", zombies(&procs));

    // The id is free again, and the storage works.
    let mut s = spec(&root, &["/bin/sh", "-c", "echo ok >/data/f && cat /data/f"]);
    s["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": "/data", "type": "bind", "source": mp, "options": ["rbind", "rw"]}),
    );
    create("f1", &s, vec![ephemeral(mp)]).expect("create after failures");
    pod.start("f1");
    assert_eq!(pod.read_all("f1", "", false), b"ok\n");
    assert_eq!(pod.wait("f1", ""), 0);
    pod.remove("f1");
    assert_container_gone(&insp, "f1");
    let added: Vec<_> = insp
        .mountinfo()
        .into_iter()
        .filter(|m| !mounts_before.contains(m))
        .collect();
    assert!(
        added.is_empty(),
        "the container storage stayed mounted: {added:#?}"
    );
    pod.remove(INSPECTOR);
}

#[test]
fn a_container_without_its_own_mount_namespace_is_refused() {
    // libcontainer would prepare its rootfs in the agent's namespace (and
    // nothing unmounts that) and confine it with a bare chroot.
    let pod = Pod::boot("nomountns");
    let insp = Inspector::start(&pod);
    let before = insp.mountinfo();
    let root = pod.rootfs("n1");
    let mut no_mountns = spec(&root, &["/bin/true"]);
    no_mountns["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}]);
    // Without these libcontainer itself refuses the spec.
    no_mountns["linux"]["maskedPaths"] = json!([]);
    no_mountns["linux"]["readonlyPaths"] = json!([]);
    no_mountns["mounts"]
        .as_array_mut()
        .expect("mounts")
        .retain(|m| m["type"] != "sysfs");
    let mut agents_mountns = no_mountns.clone();
    agents_mountns["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "mount", "path": "/proc/1/ns/mnt"}]);
    for s in [no_mountns, agents_mountns] {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "n1".into();
        req.oci_spec_json = serde_json::to_vec(&s).expect("spec json");
        let e = pod
            .try_call(|a| async move { a.raw().create_container(call_context(CALL), &req).await })
            .expect_err("no private mount namespace");
        let msg = assert_code(e, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains("linux.namespaces"), "{msg}");
    }
    assert_container_gone(&insp, "n1");
    let added: Vec<_> = insp
        .mountinfo()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    assert!(
        added.is_empty(),
        "mounts in the agent's namespace: {added:#?}"
    );
    pod.remove(INSPECTOR);
}
