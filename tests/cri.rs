//! Kata pods through CRI, end to end: a private containerd 1.6 with its CRI
//! plugin (runc the default handler, `kata` the shim under test, a CNI
//! bridge network, local pause and busybox images) driven by a CRI client
//! the way kubelet drives it. Every test removes its pods and checks that
//! nothing of their sandboxes is left on the host. The walk-through and the
//! lifecycle checks run again on containerd 1.7 (module `containerd_1_7`,
//! part of `make test`) and, by hand, on a containerd 2.x build
//! (`containerd_2x`, ignored unless asked for; README, "containerd
//! versions").

mod common;
// The bench's pod memory accounting: its unit tests run here, and the
// many-pods test reads a live pod with it.
#[path = "../benches/pods/memory.rs"]
mod memory;
// The bench's network rows: the unit tests of their parsing run here.
#[allow(dead_code)]
#[path = "../benches/pods/net.rs"]
mod net;

use std::time::{Duration, Instant};

use common::containerd::{Containerd, ContainerdBin};
use common::cri::{Cri, KATA, container_config, log_file, log_payload, pod_config};
use common::image::BUSYBOX_REF;
use common::stream::{self, ExecStream};
use common::*;
use k8s_cri::v1::{ContainerState, LinuxContainerResources, PodSandboxConfig};
use tonic::Code;

/// A container whose PID 1 prints `hello`, then sleeps until SIGTERM,
/// which it answers by printing `got-term` and exiting 0.
const POLITE: &str =
    "echo hello-from-$HOSTNAME; trap 'echo got-term; exit 0' TERM; while :; do sleep 1; done";
/// A container that ignores SIGTERM.
const STUBBORN: &str = "trap '' TERM; echo stubborn-up; while :; do sleep 1; done";

/// A running kata pod with its configuration.
struct KataPod {
    id: String,
    config: PodSandboxConfig,
}

fn run_kata_pod(c: &Containerd, cri: &Cri, name: &str) -> KataPod {
    let config = pod_config(name, &c.pod_log_dir(name));
    let id = cri
        .run_pod(&config, KATA)
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", c.log_tail()));
    KataPod { id, config }
}

/// Creates and starts a busybox container running `sh -c script`.
fn start_sh(c: &Containerd, cri: &Cri, pod: &KataPod, name: &str, script: &str) -> String {
    start_with(
        c,
        cri,
        pod,
        container_config(name, BUSYBOX_REF, &["/bin/sh", "-c", script]),
    )
}

fn start_with(
    c: &Containerd,
    cri: &Cri,
    pod: &KataPod,
    config: k8s_cri::v1::ContainerConfig,
) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = cri
        .create_container(&pod.id, config, &pod.config)
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", c.log_tail()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", c.log_tail()));
    id
}

/// Polls the container's CRI log until its payload contains `needle`.
fn wait_log(pod: &KataPod, name: &str, needle: &str, within: Duration) -> String {
    let path = log_file(&pod.config, &container_config(name, BUSYBOX_REF, &[]));
    let deadline = Instant::now() + within;
    loop {
        let text = log_payload(&std::fs::read_to_string(&path).unwrap_or_default());
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {} within {within:?}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops and removes the pod as kubelet does, then checks the host.
fn remove_pod(c: &Containerd, cri: &Cri, pod: &KataPod) {
    cri.stop_pod(&pod.id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
    cri.remove_pod(&pod.id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log_tail()));
    assert_no_leaks(&pod.id);
}

/// A private CRI containerd named `name` and one kata pod in it.
fn kata_pod(name: &str) -> (Containerd, Cri, KataPod) {
    kata_pod_on(name, ContainerdBin::system())
}

/// [`kata_pod`] on the containerd build `bin`.
fn kata_pod_on(name: &str, bin: ContainerdBin) -> (Containerd, Cri, KataPod) {
    require_vm_host();
    let c = Containerd::start_cri_on(name, false, bin);
    let cri = c.cri();
    let pod = run_kata_pod(&c, &cri, name);
    (c, cri, pod)
}

/// Polls ContainerStatus until the container has exited.
fn wait_exited(cri: &Cri, id: &str, within: Duration) -> k8s_cri::v1::ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = cri.container_status(id).expect("ContainerStatus");
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {within:?}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exec_ok(cri: &Cri, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .exec_sync(id, cmd, 60)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
    assert_eq!(
        r.exit_code,
        0,
        "ExecSync {cmd:?}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[test]
fn cri_pod_of_two_containers_runs_in_one_vm_and_answers_exec_sync() {
    walk_through(ContainerdBin::system());
}

/// The CRI walk-through: a pod of two containers in one VM, ExecSync,
/// stats, a resource update, the CRI log, stop and removal.
fn walk_through(bin: ContainerdBin) {
    require_vm_host();
    let (_, _, guest_kernel) = test_image();
    let want = bin.version();
    let c = Containerd::start_cri_on("pod", false, bin);
    let cri = c.cri();
    let version = cri.version().expect("CRI Version");
    assert_eq!(version.runtime_name, "containerd");
    // The CRI answers from the build under test, not the node's.
    assert_eq!(
        version.runtime_version.trim_start_matches('v'),
        want.trim_start_matches('v'),
        "{version:?}"
    );
    // containerd 2.x logs when it migrated an older configuration: the
    // harness's version 3 file (2.x) is read as written, a version 2 one
    // (KATA_TEST_CONTAINERD2_CONFIG_VERSION=2) migrated.
    let bin = &c.opts.bin;
    let migrated = std::fs::read_to_string(&c.log)
        .unwrap_or_default()
        .contains("Configuration migrated from version");
    assert_eq!(
        migrated,
        bin.label == "2.x" && bin.config_version() < 3,
        "config version {} on containerd {}\n{}",
        bin.config_version(),
        bin.label,
        c.log_tail()
    );
    assert!(
        cri.has_image(BUSYBOX_REF).expect("ImageStatus"),
        "busybox is not known to CRI"
    );

    let pod = run_kata_pod(&c, &cri, "two");
    let qemu = qemu_pids(&pod.id);
    assert_eq!(qemu.len(), 1, "one QEMU named sandbox-{}: {qemu:?}", pod.id);
    let a = start_sh(&c, &cri, &pod, "a", POLITE);
    let b = start_sh(&c, &cri, &pod, "b", STUBBORN);
    assert_eq!(
        qemu_pids(&pod.id),
        qemu,
        "both containers run in the pod's one VM"
    );

    // The containers run in the guest: its kernel, its CPU count.
    assert_eq!(exec_ok(&cri, &a, &["uname", "-r"]).trim(), guest_kernel);
    assert_eq!(exec_ok(&cri, &b, &["nproc"]).trim(), "1");

    // stdout, stderr and the exit code come back apart.
    let r = cri
        .exec_sync(&a, &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], 60)
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    assert_eq!(r.exit_code, 3);

    // A timeout ends the call and the process; the container still answers.
    let began = Instant::now();
    let r = cri.exec_sync(&a, &["sleep", "300"], 2);
    let took = began.elapsed();
    let e = r.expect_err("ExecSync past its timeout must fail");
    assert!(e.message().contains("timeout"), "{e}");
    assert!(took < Duration::from_secs(60), "the timeout took {took:?}");
    let ps = exec_ok(&cri, &a, &["ps"]);
    assert!(
        !ps.contains("sleep 300"),
        "the timed-out process still runs:\n{ps}"
    );

    // Stats come from the guest's cgroups; an update lands there too.
    let stats = cri.container_stats(&a).expect("ContainerStats");
    let mem = stats.memory.expect("memory stats");
    assert!(
        mem.working_set_bytes.expect("working set").value > 0,
        "{mem:?}"
    );
    assert!(
        stats
            .cpu
            .expect("cpu stats")
            .usage_core_nano_seconds
            .is_some()
    );
    let all = cri
        .list_container_stats(&pod.id)
        .expect("ListContainerStats");
    let mut ids: Vec<_> = all
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want, "ListContainerStats of the pod");
    cri.update_resources(
        &a,
        LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        },
    )
    .expect("UpdateContainerResources");
    assert_eq!(
        exec_ok(&cri, &a, &["cat", "/sys/fs/cgroup/memory.max"]).trim(),
        (100u64 << 20).to_string()
    );
    assert_eq!(
        exec_ok(&cri, &a, &["cat", "/sys/fs/cgroup/cpu.max"]).trim(),
        "50000 100000"
    );

    // The CRI log file has the container's output.
    wait_log(&pod, "a", "hello-from-two", Duration::from_secs(30));
    wait_log(&pod, "b", "stubborn-up", Duration::from_secs(30));

    for id in [&a, &b] {
        cri.stop_container(id, 0).expect("StopContainer");
        cri.remove_container(id).expect("RemoveContainer");
    }
    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_stop_honours_sigterm_then_kills_after_the_grace_period() {
    stop_lifecycle(ContainerdBin::system());
}

/// StopContainer: SIGTERM honoured, SIGKILL after the grace period, the
/// exit codes and reasons, removal.
fn stop_lifecycle(bin: ContainerdBin) {
    let (c, cri, pod) = kata_pod_on("stop", bin);
    let polite = start_sh(&c, &cri, &pod, "polite", POLITE);
    let stubborn = start_sh(&c, &cri, &pod, "stubborn", STUBBORN);
    wait_log(&pod, "polite", "hello", Duration::from_secs(30));
    wait_log(&pod, "stubborn", "stubborn-up", Duration::from_secs(30));

    let began = Instant::now();
    cri.stop_container(&polite, 30)
        .expect("StopContainer polite");
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "SIGTERM was not honoured: {took:?}"
    );
    let st = cri.container_status(&polite).expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(st.reason, "Completed", "{st:?}");
    wait_log(&pod, "polite", "got-term", Duration::from_secs(10));

    let began = Instant::now();
    cri.stop_container(&stubborn, 3)
        .expect("StopContainer stubborn");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "killed before the grace period: {took:?}"
    );
    let st = cri.container_status(&stubborn).expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");

    for id in [&polite, &stubborn] {
        cri.remove_container(id).expect("RemoveContainer");
        let e = cri
            .container_status(id)
            .expect_err("status of a removed container");
        assert_eq!(e.code(), Code::NotFound, "{e}");
    }
    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_streaming_exec_with_a_tty_sees_the_resize() {
    streaming_exec(ContainerdBin::system());
}

/// Exec through the CRI streaming server with a tty and a resize.
fn streaming_exec(bin: ContainerdBin) {
    let (c, cri, pod) = kata_pod_on("stream", bin);
    let id = start_sh(&c, &cri, &pod, "shell", POLITE);

    let url = cri
        .exec(&id, &["/bin/sh"], true, true)
        .expect("Exec returns a streaming URL");
    let mut s = ExecStream::connect(&url).expect("the streaming server accepts v4.channel.k8s.io");
    s.resize(123, 45).expect("resize");
    // The resize and the input travel on different channels and paths
    // (ResizePty against stdin), so ask until the size shows.
    let seen = (0..30).any(|_| {
        s.write_stdin(b"stty size\n").expect("stdin");
        s.read_until("45 123", Duration::from_secs(2)).is_ok()
    });
    assert!(
        seen,
        "stty size never saw the resize: {:?}",
        String::from_utf8_lossy(&s.stdout)
    );
    s.write_stdin(b"tty; exit 7\n").expect("stdin");
    let status = s.finish(Duration::from_secs(60)).expect("the exec ends");
    let out = String::from_utf8_lossy(&s.stdout).into_owned();
    // A terminal of the container's own: named, and with job control.
    assert!(out.contains("/dev/pts/"), "tty in the container: {out:?}");
    assert!(!out.contains("job control turned off"), "{out:?}");
    assert_eq!(stream::exit_code(&status), Some(7), "{status}");

    cri.stop_container(&id, 0).expect("StopContainer");
    cri.remove_container(&id).expect("RemoveContainer");
    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_oom_kill_is_reported_as_oomkilled() {
    oom_kill(ContainerdBin::system());
}

/// The guest's OOM kill reaches the CRI as OOMKilled (the TaskOOM event).
fn oom_kill(bin: ContainerdBin) {
    let (c, cri, pod) = kata_pod_on("oom", bin);
    let mut hog = container_config(
        "hog",
        BUSYBOX_REF,
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    hog.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_with(&c, &cri, &pod, hog);
    let st = wait_exited(&cri, &id, Duration::from_secs(120));
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    cri.remove_container(&id).expect("RemoveContainer");
    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_ten_kata_pods_at_once_all_answer_and_all_go() {
    const PODS: usize = 10;
    require_vm_host();
    let c = Containerd::start_cri("many", false);
    let sock = c.address();
    let pods: Vec<(KataPod, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (c, sock) = (&c, sock.clone());
                scope.spawn(move || {
                    let cri = Cri::connect(&sock).expect("CRI client");
                    let pod = run_kata_pod(c, &cri, &format!("many{i}"));
                    let id = start_sh(c, &cri, &pod, "main", "while :; do sleep 1; done");
                    (pod, id)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a pod thread panicked"))
            .collect()
    });
    let cri = c.cri();
    assert_eq!(cri.list_pods().expect("ListPodSandbox").len(), PODS);
    let mut qemus = Vec::new();
    for (i, (pod, id)) in pods.iter().enumerate() {
        let q = qemu_pids(&pod.id);
        assert_eq!(q.len(), 1, "pod {i} has one QEMU: {q:?}");
        qemus.extend(q);
        assert_eq!(exec_ok(&cri, id, &["hostname"]).trim(), format!("many{i}"));
        // Ten guests booting at once load the host; each still keeps its
        // clock (a TCG guest trusting its calibrated TSC ran 69 s ahead).
        let guest: i64 = exec_ok(&cri, id, &["date", "+%s"])
            .trim()
            .parse()
            .expect("date +%s");
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        assert!(
            (guest - host).abs() <= 5,
            "pod {i}'s clock is {} s off the host's",
            guest - host
        );
    }
    qemus.sort();
    qemus.dedup();
    assert_eq!(qemus.len(), PODS, "each pod has its own VM");
    let m = memory::pod_memory(&pods[0].0.id).expect("memory of a live kata pod");
    assert!(
        m.guest_kib > 0 && m.qemu_private_kib > 0 && m.shim_kib > 0,
        "{m:?}"
    );
    assert!(m.virtiofsd_kib > 0 && m.vsock_kib > 0, "{m:?}");
    assert!(m.ours_kib() < m.qemu_private_kib + m.guest_kib, "{m:?}");
    for (pod, _) in &pods {
        remove_pod(&c, &cri, pod);
    }
    assert!(cri.list_pods().expect("ListPodSandbox").is_empty());
}

#[test]
fn cri_large_stdout_reaches_the_log_whole() {
    const BYTES: u64 = 16 << 20;
    let (c, cri, pod) = kata_pod("stdout");
    let line = "x".repeat(1023);
    let script = format!("yes {line} | head -c {BYTES}; echo; echo END-OF-OUTPUT");
    let id = start_sh(&c, &cri, &pod, "writer", &script);
    let st = wait_exited(&cri, &id, Duration::from_secs(240));
    assert_eq!(st.exit_code, 0, "{st:?}\n{}", c.log_tail());
    let text = wait_log(&pod, "writer", "END-OF-OUTPUT", Duration::from_secs(30));
    let lines = text.lines().filter(|l| *l == line).count() as u64;
    assert_eq!(lines, BYTES / 1024, "every line reached the CRI log");
    cri.remove_container(&id).expect("RemoveContainer");
    remove_pod(&c, &cri, &pod);
}

/// Issue 17's log integrity check: containers that each write 2 MiB of
/// numbered lines and exit, every one's CRI log compared line for line.
/// `make test` runs a few; `KATA_LOG_RUNS=1000` is the long run.
#[test]
fn cri_containers_writing_2_mib_and_exiting_leave_whole_logs() {
    const LINES: usize = 2048; // of 1024 bytes: 2 MiB
    let runs: usize = std::env::var("KATA_LOG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let (c, cri, pod) = kata_pod("logs");
    let pad = "0".repeat(1017);
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {LINES}; i++) printf \"%06d %s\\n\", i, \"{pad}\" }}'"
    );
    let began = Instant::now();
    for run in 0..runs {
        let name = format!("writer-{run}");
        let id = start_sh(&c, &cri, &pod, &name, &script);
        let st = wait_exited(&cri, &id, Duration::from_secs(120));
        assert_eq!(st.exit_code, 0, "run {run}: {st:?}\n{}", c.log_tail());
        let path = log_file(&pod.config, &container_config(&name, BUSYBOX_REF, &[]));
        let text = log_payload(&std::fs::read_to_string(&path).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), LINES, "run {run}: lines in {}", path.display());
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(
                *line,
                format!("{i:06} {pad}"),
                "run {run}: line {i} of {}",
                path.display()
            );
        }
        assert!(text.ends_with('\n'), "run {run}: the last line was cut");
        cri.remove_container(&id).expect("RemoveContainer");
        if (run + 1) % 50 == 0 {
            eprintln!(
                "log runs: {} of {runs} whole, {:.0} s",
                run + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "log runs: {runs} containers of {LINES} lines each, all whole, in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    remove_pod(&c, &cri, &pod);
}

/// The same `/proc/self/status` lines for a process and its confinement.
const CONFINEMENT: &str = "grep -E '^(Seccomp|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status; \
     echo masked=$(head -c 16 /proc/timer_list | wc -c)";

/// `config` with the container's pid namespace in `mode`.
fn with_pid_mode(
    mut config: k8s_cri::v1::ContainerConfig,
    mode: k8s_cri::v1::NamespaceMode,
) -> k8s_cri::v1::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    let ns = sc.namespace_options.get_or_insert_with(Default::default);
    ns.pid = mode as i32;
    config
}

#[test]
fn cri_pod_pid_namespace_is_shared_on_request_and_stop_ends_by_sigterm() {
    use k8s_cri::v1::NamespaceMode;
    let (c, cri, pod) = kata_pod("pidns");
    let pod_cfg = |name: &str, cmd: &[&str], mode| {
        with_pid_mode(container_config(name, BUSYBOX_REF, cmd), mode)
    };
    let a = start_with(
        &c,
        &cri,
        &pod,
        pod_cfg("a", &["sleep", "1001"], NamespaceMode::Pod),
    );
    let b = start_with(
        &c,
        &cri,
        &pod,
        pod_cfg("b", &["sleep", "1002"], NamespaceMode::Pod),
    );
    let own = start_with(
        &c,
        &cri,
        &pod,
        pod_cfg("own", &["sleep", "1003"], NamespaceMode::Container),
    );

    // POD mode (containerd names /proc/<task pid>/ns/pid): b sees a and
    // signals it; a's sleep is not PID 1, so it dies of SIGTERM.
    let a_pid = exec_ok(&cri, &b, &["sh", "-c", &pids_of_script("sleep 1001")]);
    let a_pid = a_pid.trim();
    assert!(a_pid.parse::<u32>().is_ok_and(|p| p > 1), "{a_pid:?}");
    // CONTAINER mode: nothing of the others is visible.
    let r = exec_ok(&cri, &own, &["sh", "-c", &pids_of_script("sleep 1002")]);
    assert_eq!(r, "", "b is visible from another pid namespace");
    exec_ok(&cri, &b, &["kill", "-TERM", a_pid]);
    let st = wait_exited(&cri, &a, Duration::from_secs(60));
    assert_eq!(st.exit_code, 143, "{st:?}");

    // StopContainer with a grace period: b ends by its SIGTERM (143), long
    // before the grace period's SIGKILL; `own` is PID 1 of its namespace
    // without a handler, so the agent sends SIGKILL at once.
    for (id, code) in [(&b, 143), (&own, 137)] {
        let began = Instant::now();
        cri.stop_container(id, 60).expect("StopContainer");
        let took = began.elapsed();
        assert!(took < Duration::from_secs(40), "{id}: stop took {took:?}");
        let st = cri.container_status(id).expect("ContainerStatus");
        assert_eq!(st.exit_code, code, "{st:?}");
    }
    remove_pod(&c, &cri, &pod);
}

#[test]
fn cri_created_container_is_removed_and_exec_keeps_the_confinement() {
    created_and_confined(ContainerdBin::system());
}

/// A container created and never started is stopped and removed; an
/// exec keeps the init's seccomp, capabilities and masked paths.
fn created_and_confined(bin: ContainerdBin) {
    use k8s_cri::v1::{LinuxContainerSecurityContext, SecurityProfile, security_profile};
    let (c, cri, pod) = kata_pod_on("confine", bin);
    // The runtime/default seccomp profile, as kubelet asks for it.
    let mut cfg = container_config(
        "app",
        BUSYBOX_REF,
        &["/bin/sh", "-c", &format!("{CONFINEMENT}; exec sleep 1000")],
    );
    cfg.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            // kubelet sends its default masked paths (containerd masks
            // nothing when the list is empty).
            masked_paths: ["/proc/kcore", "/proc/timer_list", "/proc/sched_debug"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let app = start_with(&c, &cri, &pod, cfg);
    let init = wait_log(&pod, "app", "masked=", Duration::from_secs(60));
    assert!(init.contains("Seccomp:\t2"), "{init}");
    assert!(init.contains("masked=0"), "{init}");
    let exec = exec_ok(&cri, &app, &["/bin/sh", "-c", CONFINEMENT]);
    assert_eq!(exec, init, "the exec's confinement differs from the init's");

    // kubelet's resources for a container with a memory limit and no CPU
    // limit, in a container that is created and never started: it is
    // removed, and the pod with it.
    let mut cfg = container_config("never", BUSYBOX_REF, &["sleep", "1000"]);
    cfg.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 0,
        cpu_shares: 2,
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let never = cri
        .create_container(&pod.id, cfg, &pod.config)
        .unwrap_or_else(|e| panic!("CreateContainer never: {e}\n{}", c.log_tail()));
    cri.stop_container(&never, 10)
        .expect("StopContainer of a created container");
    cri.remove_container(&never)
        .expect("RemoveContainer of a created container");
    remove_pod(&c, &cri, &pod);
}

/// The walk-through and the lifecycle checks on Debian 13's containerd 1.7,
/// which `make deps` unpacks into /opt/containerd-1.7 beside the node's 1.6
/// (a missing one fails with how to install it).
mod containerd_1_7 {
    use super::*;

    #[test]
    fn walk_through() {
        super::walk_through(ContainerdBin::v1_7());
    }

    #[test]
    fn stop_honours_sigterm_then_kills_after_the_grace_period() {
        stop_lifecycle(ContainerdBin::v1_7());
    }

    #[test]
    fn created_container_is_removed_and_exec_keeps_the_confinement() {
        created_and_confined(ContainerdBin::v1_7());
    }

    #[test]
    fn streaming_exec_with_a_tty_sees_the_resize() {
        streaming_exec(ContainerdBin::v1_7());
    }

    #[test]
    fn oom_kill_is_reported_as_oomkilled() {
        oom_kill(ContainerdBin::v1_7());
    }
}

/// The same on a containerd 2.x built by hand (CI has no Go toolchain and
/// no copy of containerd's source): `KATA_TEST_CONTAINERD2_DIR=<dir of
/// containerd and ctr> cargo nextest run --release -j 1 --run-ignored only
/// -E 'binary(cri) & test(containerd_2x::)'` (README, "containerd versions").
mod containerd_2x {
    use super::*;

    #[test]
    #[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
    fn walk_through() {
        super::walk_through(ContainerdBin::v2_from_env());
    }

    #[test]
    #[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
    fn stop_honours_sigterm_then_kills_after_the_grace_period() {
        stop_lifecycle(ContainerdBin::v2_from_env());
    }

    #[test]
    #[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
    fn created_container_is_removed_and_exec_keeps_the_confinement() {
        created_and_confined(ContainerdBin::v2_from_env());
    }

    #[test]
    #[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
    fn streaming_exec_with_a_tty_sees_the_resize() {
        streaming_exec(ContainerdBin::v2_from_env());
    }

    #[test]
    #[ignore = "by hand: needs KATA_TEST_CONTAINERD2_DIR naming a containerd 2.x build"]
    fn oom_kill_is_reported_as_oomkilled() {
        oom_kill(ContainerdBin::v2_from_env());
    }
}
