//! A compromised guest, end to end (issue 14): the agent built with the
//! `hostile` feature (`make test` builds it into `target/hostile`)
//! misbehaves on purpose in a real VM under the real shim, driven as
//! CRI-O drives it, next to a well-behaved pod. Each test prints the
//! figures it holds: the shim's peak RSS, what the guest left on the
//! host's `/run`, and the neighbour's answers.

mod common;

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use common::crio::{Crio, PodConfig};
use common::*;
use containerd_shim_protos::api;

/// Highest RSS the shim may reach under any of these guests. An idle
/// shim peaks around 15-20 MiB here.
const SHIM_RSS_MAX_KIB: u64 = 64 << 10;

/// Prints a figure and keeps it in `target/tmp/hostile-figures.txt`, which
/// `make test` shows after the run (nextest hides a passing test's output).
fn figure(line: String) {
    use std::io::Write;
    println!("{line}");
    let path = tmp_dir().join("hostile-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The hostile agent `make test` built, in a guest image of its own.
fn hostile_initrd() -> PathBuf {
    static BUILD: Once = Once::new();
    let agent = bin_dir()
        .parent()
        .expect("target dir")
        .join("hostile/release/kata-agent");
    assert!(
        agent.is_file(),
        "{} is missing: `make test` builds it (cargo build --release --locked -p kata-agent \
         --features hostile --target-dir target/hostile)",
        agent.display()
    );
    let out = tmp_dir().join("hostile-image");
    BUILD.call_once(|| {
        let o = std::process::Command::new(bin("kata-guest-image"))
            .arg("--agent")
            .arg(&agent)
            .arg("--output-dir")
            .arg(&out)
            .output()
            .expect("run kata-guest-image");
        assert!(
            o.status.success(),
            "building the hostile image failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
    out.join("kata.initrd")
}

fn hostile_crio(test: &str, mode: &str) -> Crio {
    let initrd = hostile_initrd();
    Crio::with_config(
        test,
        &format!(
            "initrd = {:?}\nkernel_params = \"agent.hostile={mode}\"\n",
            initrd.display().to_string()
        ),
    )
}

/// Bytes used on the filesystem holding `/run`.
fn run_used_bytes() -> u64 {
    let s = nix::sys::statvfs::statvfs("/run").expect("statvfs /run");
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

fn status(s: &api::StateResponse) -> api::Status {
    s.status.enum_value().expect("known status")
}

/// A well-behaved pod running next to the hostile one.
struct Neighbour {
    crio: Crio,
    sid: String,
    app: String,
}

impl Neighbour {
    fn start(test: &str) -> Neighbour {
        let mut crio = Crio::new(&format!("{test}-nb"));
        let sid = crio.run_pod_sandbox(&PodConfig::new("neighbour"));
        let app = crio.create_container(&sid, "app", &["/bin/sleep", "1000"]);
        crio.start_container(&app);
        Neighbour { crio, sid, app }
    }

    /// The neighbour's container still answers State as RUNNING.
    fn answers(&self) -> bool {
        status(&self.crio.state(&self.app)) == api::Status::RUNNING
    }

    fn stop(mut self) {
        self.crio.remove_pod(&self.sid);
        self.crio.assert_no_leaks(&self.sid);
    }
}

/// Watches the hostile pod's shim for `span`: its peak RSS, and whether
/// the neighbour answered every time it was asked.
fn watch(shim: u32, neighbour: &Neighbour, span: Duration) -> (u64, u32) {
    let began = Instant::now();
    let mut answered = 0;
    while began.elapsed() < span {
        assert!(neighbour.answers(), "the neighbour stopped answering");
        answered += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    (peak_rss_kib(shim), answered)
}

#[test]
fn a_console_flood_leaves_the_shim_bounded_and_the_neighbour_answering() {
    let mut crio = hostile_crio("flood", "console-flood");
    let nb = Neighbour::start("flood");
    let sid = crio.run_pod_sandbox(&PodConfig::new("flood"));
    let shim = crio.shim_pid(&sid);
    let (peak, answered) = watch(shim, &nb, Duration::from_secs(20));
    figure(format!(
        "console flood (64 KiB writes without a newline, 20 s): shim peak RSS {} KiB \
         (bound {SHIM_RSS_MAX_KIB} KiB); the neighbour answered {answered} of {answered} probes",
        peak
    ));
    assert!(peak < SHIM_RSS_MAX_KIB, "shim peak RSS {peak} KiB");
    assert_eq!(
        status(&crio.state(&sid)),
        api::Status::RUNNING,
        "the pod itself still answers"
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    nb.stop();
}

#[test]
fn an_oom_storm_of_unknown_ids_is_paced_and_a_real_exit_still_arrives() {
    let mut crio = hostile_crio("oom", "oom-storm");
    let nb = Neighbour::start("oom");
    let sid = crio.run_pod_sandbox(&PodConfig::new("oom"));
    let app = crio.create_container(&sid, "app", &["/bin/sh", "-c", "sleep 8; exit 3"]);
    crio.start_container(&app);
    let shim = crio.shim_pid(&sid);
    let (peak, answered) = watch(shim, &nb, Duration::from_secs(12));
    let done = crio
        .init_exit(&app, Duration::from_secs(30))
        .expect("the app's exit arrived through the storm");
    let code = done.wait.expect("Wait").exit_status;
    figure(format!(
        "OOM storm (unknown 4 KiB ids, answered at once): shim peak RSS {peak} KiB; the app's \
         exit {code} arrived; the neighbour answered {answered} probes"
    ));
    assert_eq!(code, 3);
    assert!(peak < SHIM_RSS_MAX_KIB, "shim peak RSS {peak} KiB");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    nb.stop();
}

/// Every stream read is answered with twice the bytes asked for, from the
/// pod's first container on. The shim refuses such a reply as output
/// (`AgentError::Protocol`), and may end the pod for it with a clear
/// reason. Either way nothing oversized becomes output, the shim stays up
/// and bounded, the neighbour keeps answering, and removal leaves nothing.
#[test]
fn replies_larger_than_asked_never_become_output_nor_harm_the_shim() {
    let mut crio = hostile_crio("big", "big-replies");
    let nb = Neighbour::start("big");
    let (sid, created) = crio.try_create_pod_sandbox(&PodConfig::new("big"));
    created.expect("the hostile pod's Create");
    let shim = crio.shim_pid(&sid);
    let mut req = api::StartRequest::new();
    req.id = sid.clone();
    let started: ttrpc::Result<api::StartResponse> = crio.call(&sid, "Start", &req);
    let (peak, answered) = watch(shim, &nb, Duration::from_secs(20));
    let st = crio.state(&sid);
    let (out, err) = crio.output(&sid);
    figure(format!(
        "replies twice the size asked: Start {}; the pod is {:?} (exit {}); shim peak RSS {peak} \
         KiB; {} bytes of stdout and {} of stderr reached the log; the neighbour answered \
         {answered} probes",
        if started.is_ok() {
            "answered"
        } else {
            "failed"
        },
        status(&st),
        st.exit_status,
        out.len(),
        err.len()
    ));
    assert!(
        out.is_empty() && err.is_empty(),
        "oversized replies were taken as output"
    );
    assert!(peak < SHIM_RSS_MAX_KIB, "shim peak RSS {peak} KiB");
    if status(&st) == api::Status::STOPPED {
        assert_eq!(st.exit_status, 255, "a pod ended for its guest exits 255");
    }
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
    nb.stop();
}

#[test]
fn a_share_flood_writes_nothing_on_the_hosts_run() {
    let before = run_used_bytes();
    let mut crio = hostile_crio("shareflood", "share-flood");
    let sid = crio.run_pod_sandbox(&PodConfig::new("shareflood"));
    // The guest tries 1 GiB in 1 MiB files at the share's root.
    std::thread::sleep(Duration::from_secs(8));
    let share = kata_shim::layout::SandboxPaths::new(&sid).share_dir;
    let entries: Vec<String> = std::fs::read_dir(&share)
        .expect("share")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let during = run_used_bytes();
    figure(format!(
        "share flood (1 GiB asked): host /run used {} KiB before, {} KiB during; the share's \
         root holds {entries:?}",
        before / 1024,
        during / 1024
    ));
    assert!(
        entries.iter().all(|e| !e.starts_with("flood-")),
        "the guest created files at the share's root: {entries:?}"
    );
    // Other work on the node moves /run too; the guest's part is nothing,
    // so a 16 MiB margin is generous.
    assert!(
        during.saturating_sub(before) < 16 << 20,
        "/run grew by {} KiB",
        during.saturating_sub(before) / 1024
    );
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}

/// Every connection to the agent starts with 4 KiB of garbage where ttrpc
/// frames belong: the shim never gets a sane answer, so the pod's Create
/// fails at the dial deadline with a clear error, the shim does not grow,
/// the neighbour keeps answering, and nothing is left.
#[test]
fn garbage_on_the_agent_connection_fails_the_pod_clearly() {
    let mut crio = hostile_crio("garbage", "garbage");
    let nb = Neighbour::start("garbage");
    let began = Instant::now();
    let (sid, created) = crio.try_create_pod_sandbox(&PodConfig::new("garbage"));
    let e = created.expect_err("a pod whose agent speaks garbage was created");
    let msg = format!("{e:?}");
    figure(format!(
        "garbage on every agent connection: the pod's Create failed after {:?}: {}; the \
         neighbour still answers: {}",
        began.elapsed(),
        msg.chars().take(300).collect::<String>(),
        nb.answers()
    ));
    assert!(msg.contains("agent did not answer"), "{msg}");
    assert!(nb.answers(), "the neighbour stopped answering");
    // CRI-O's own /dev/shm of the pod stays CRI-O's to unmount.
    crio.unmount_own_shm(&sid);
    crio.assert_no_leaks(&sid);
    nb.stop();
}

/// Every connection starts with replies to calls the shim never made
/// (stream ids it never used): the shim's client drops them, and the pod
/// works as if they had not been sent.
#[test]
fn replies_to_calls_never_made_are_ignored() {
    let mut crio = hostile_crio("stray", "stray-replies");
    let sid = crio.run_pod_sandbox(&PodConfig::new("stray"));
    let app = crio.create_container(
        &sid,
        "app",
        &["/bin/sh", "-c", "echo intact-output; exit 7"],
    );
    crio.start_container(&app);
    let shim = crio.shim_pid(&sid);
    let done = crio
        .init_exit(&app, Duration::from_secs(30))
        .expect("the app's exit");
    let code = done.wait.expect("Wait").exit_status;
    let (out, _) = crio.output(&app);
    let out = String::from_utf8_lossy(&out).to_string();
    figure(format!(
        "stray replies on every agent connection: the app exited {code} with {out:?}; shim \
         peak RSS {} KiB",
        peak_rss_kib(shim)
    ));
    assert_eq!(code, 7);
    assert!(out.contains("intact-output"), "{out:?}");
    crio.remove_pod(&sid);
    crio.assert_no_leaks(&sid);
}
