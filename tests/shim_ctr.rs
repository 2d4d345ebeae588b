//! The shim under a private containerd 1.6, driven with `ctr`: a kata task
//! prints the guest's kernel and uptime, exit codes reach `ctr`, each task
//! has exactly one QEMU, a running task survives a containerd restart
//! (recovery through the bundle's `address` file), and a task that never
//! reads its stdin holds back only its writer. The first test checks
//! the harness itself with runc: private containerd, local image, restart,
//! cleanup.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::containerd::{Containerd, ContainerdOptions};
use common::image::import_busybox;
use common::*;

const KATA: &str = "io.containerd.kata.v2";
const RUNC: &str = "io.containerd.runc.v2";
/// A kata task boots a VM under TCG before it runs.
const BOOT: Duration = Duration::from_secs(240);

/// (pid, status) of task `id` from `ctr task ls`.
fn task(c: &Containerd, id: &str) -> Option<(u32, String)> {
    let out = c.ctr_ok(&["tasks", "ls"]);
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == id).then(|| (f[1].parse().expect("task pid"), f[2].to_string()))
    })
}

/// Waits until task `id` has `status`; returns its pid.
fn wait_task(c: &Containerd, id: &str, status: &str, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some((pid, s)) = task(c, id) {
            if s == status {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not {status} within {within:?}: {:?}\n{}",
            task(c, id),
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `ctr` running in the background, killed if the test fails first.
struct Background(Child);

impl Background {
    fn exit_code(mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "ctr did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn ctr_background(c: &Containerd, args: &[&str]) -> Background {
    let child = ctr_command(c)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ctr");
    Background(child)
}

/// Starts a detached kata task that sleeps; returns its pid once running.
fn run_sleeping(c: &Containerd, image: &str, id: &str) -> u32 {
    c.ctr_ok(&[
        "run",
        "-d",
        "--null-io",
        "--runtime",
        KATA,
        image,
        id,
        "sleep",
        "1000",
    ]);
    wait_task(c, id, "RUNNING", BOOT)
}

/// `ctr` against `c`, in its namespace.
fn ctr_command(c: &Containerd) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(c.address())
        .args(["-n", &c.opts.namespace]);
    cmd
}

/// The pid of task `id`'s shim, from its bundle.
fn shim_pid(c: &Containerd, id: &str) -> u32 {
    std::fs::read_to_string(c.bundle(id).join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .expect("a pid")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn harness_private_containerd_runs_the_local_image_with_runc() {
    let mut c = Containerd::start("runc");
    let image = import_busybox(&c);
    let id = sandbox_id("runc");
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNC,
        image,
        &id,
        "sh",
        "-c",
        "echo hello; ls /bin | wc -l",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"hello"), "{out}");
    let applets: usize = lines[1].trim().parse().expect("applet count");
    assert!(applets > 100, "only {applets} entries in /bin");

    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNC,
        image,
        &id,
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", c.log_tail());

    // The image and the database survive a restart.
    c.restart();
    assert!(c.ctr_ok(&["images", "ls", "-q"]).contains(image));
    c.ctr_ok(&["run", "--rm", "--runtime", RUNC, image, &id, "true"]);

    let (state, root) = (c.state.clone(), c.root.clone());
    drop(c);
    assert!(!state.exists() && !root.exists(), "containerd dirs left");
    let left: Vec<_> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(&state) || p.starts_with(&root))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

/// The CRI configuration (runc default, `kata` runtime, CNI bridge) is
/// accepted: the CRI plugin loads.
#[test]
fn harness_cri_configuration_loads() {
    let c = Containerd::start_with(
        "cri",
        ContainerdOptions {
            cri: true,
            ..ContainerdOptions::default()
        },
    );
    let plugins = c.ctr_ok(&["plugins", "ls"]);
    let cri = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("no CRI plugin listed:\n{plugins}"));
    assert!(
        cri.trim_end().ends_with("ok"),
        "CRI plugin: {cri}\n{}",
        c.log_tail()
    );
}

#[test]
fn ctr_run_kata_shows_the_guest_and_passes_exit_codes() {
    require_vm_host();
    let (_, _, kver) = test_image();
    let c = Containerd::start("kata-run");
    let image = import_busybox(&c);

    let id = sandbox_id("uname");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        KATA,
        image,
        &id,
        "sh",
        "-c",
        "uname -r; cat /proc/uptime",
    ]);
    assert!(
        out.status.success(),
        "ctr run: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&kver.as_str()), "guest kernel: {text}");
    let uptime: f64 = lines
        .get(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {text:?}"));
    assert!(uptime < 120.0, "uptime {uptime} s: not a freshly booted VM");
    assert_no_leaks(&id);

    let id = sandbox_id("exit3");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        KATA,
        image,
        &id,
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", c.log_tail());
    assert_no_leaks(&id);

    // A sleeping task killed from outside: one QEMU, whose pid is the
    // task's, and 128+9 reaches the `ctr run` that waits for it.
    let id = sandbox_id("kill");
    let run = ctr_background(
        &c,
        &[
            "run",
            "--rm",
            "--runtime",
            KATA,
            image,
            &id,
            "sleep",
            "1000",
        ],
    );
    let pid = wait_task(&c, &id, "RUNNING", BOOT);
    let qemu = qemu_pids(&id);
    assert_eq!(qemu.len(), 1, "QEMU processes of {id}: {qemu:?}");
    assert_eq!(pid, qemu[0], "the task pid is QEMU's pid");
    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(run.exit_code(Duration::from_secs(60)), Some(137));
    assert_no_leaks(&id);
}

#[test]
fn ctr_exec_into_a_kata_task_after_containerd_restart() {
    require_vm_host();
    let mut c = Containerd::start("kata-restart");
    let image = import_busybox(&c);
    let id = sandbox_id("restart");
    let pid = run_sleeping(&c, image, &id);
    assert!(
        c.bundle(&id).join("address").is_file(),
        "the shim wrote no address file"
    );

    c.restart();
    assert_eq!(
        wait_task(&c, &id, "RUNNING", Duration::from_secs(30)),
        pid,
        "the task came back with another pid"
    );
    let out = c.ctr_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "after-restart",
        &id,
        "sh",
        "-c",
        "echo recovered",
    ]);
    assert_eq!(out, "recovered\n");
    assert_eq!(qemu_pids(&id), vec![pid], "still the same single QEMU");

    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    wait_task(&c, &id, "STOPPED", Duration::from_secs(60));
    c.ctr_ok(&["tasks", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_no_leaks(&id);
}

/// `ctr events` in the background, its output in a file.
struct Events {
    child: Child,
    path: std::path::PathBuf,
}

impl Events {
    fn start(c: &Containerd, dir: &std::path::Path) -> Events {
        let path = dir.join("events.txt");
        let file = std::fs::File::create(&path).expect("events file");
        let child = Command::new("ctr")
            .arg("--address")
            .arg(c.address())
            .arg("events")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ctr events");
        // Let the subscription reach containerd before anything happens.
        std::thread::sleep(Duration::from_millis(500));
        Events { child, path }
    }

    /// The task topics seen so far whose payload names `id`, in order.
    fn topics(&self, id: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).expect("events");
        text.lines()
            .filter(|l| l.contains(id) && l.contains("/tasks/"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .map(str::to_string)
            .collect()
    }

    /// Waits until `want` was seen for `id`.
    fn wait_for(&self, id: &str, want: &[&str], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.topics(id);
            if seen == want || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctr_events_in_order_pause_resume_stdin_and_file_logs() {
    require_vm_host();
    let c = Containerd::start("kata-ops");
    let image = import_busybox(&c);
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = Events::start(&c, tmp.path());

    // Events of a task and of an exec, in containerd's required order.
    let id = sandbox_id("events");
    run_sleeping(&c, image, &id);
    let out = c.ctr_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "ex1",
        &id,
        "sh",
        "-c",
        "echo from-exec",
    ]);
    assert_eq!(out, "from-exec\n");

    // Pause freezes the container, resume thaws it.
    c.ctr_ok(&["tasks", "pause", &id]);
    wait_task(&c, &id, "PAUSED", Duration::from_secs(30));
    c.ctr_ok(&["tasks", "resume", &id]);
    wait_task(&c, &id, "RUNNING", Duration::from_secs(30));

    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    wait_task(&c, &id, "STOPPED", Duration::from_secs(60));
    c.ctr_ok(&["tasks", "rm", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let seen = events.wait_for(&id, &want, Duration::from_secs(10));
    assert_eq!(seen, want, "task events of {id}");
    assert_no_leaks(&id);

    // stdin reaches the process and its EOF (CloseIO) ends `cat`.
    let id = sandbox_id("stdin");
    let mut child = ctr_command(&c)
        .args(["run", "--rm", "--runtime", KATA, image, &id])
        .args(["sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"hello through stdin\n")
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("ctr run");
    assert!(
        out.status.success(),
        "ctr run: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    assert_eq!(stdout(&out), "hello through stdin\ndone\n");
    assert_no_leaks(&id);

    // A file:// log URI gets stdout and stderr; a process without stdin
    // sees EOF at once (`cat` ends).
    let id = sandbox_id("filelog");
    let log = tmp.path().join("logs").join("out.log");
    let uri = format!("file://{}", log.display());
    c.ctr_ok(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        KATA,
        image,
        &id,
        "sh",
        "-c",
        "cat; echo to-file; echo err >&2",
    ]);
    let logged = std::fs::read_to_string(&log).expect("file:// log");
    assert!(
        logged.contains("to-file\n") && logged.contains("err\n"),
        "file log: {logged:?}"
    );
    assert_no_leaks(&id);
}

#[test]
fn ctr_shim_killed_then_containerd_delete_leaves_nothing() {
    require_vm_host();
    let c = Containerd::start("kata-crash");
    let image = import_busybox(&c);
    let id = sandbox_id("crash");
    run_sleeping(&c, image, &id);
    let shim = shim_pid(&c, &id);
    assert_eq!(qemu_pids(&id).len(), 1);
    kill9(shim);
    // containerd sees the connection close and runs `<shim> delete`,
    // which cleans up from the persisted state.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemu_pids(&id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        qemu_pids(&id).is_empty(),
        "QEMU outlived its shim: {}",
        c.log_tail()
    );
    let _ = c.ctr(&["tasks", "rm", "-f", &id]);
    c.ctr_ok(&["containers", "rm", &id]);
    assert_no_leaks(&id);
}

/// Bytes that may sit between a host writer and a container that never
/// reads its stdin: the writer's pipe into `ctr` (64 KiB), `ctr`'s copy
/// buffer (32 KiB), the stdin FIFO (64 KiB), the shim's chunk (128 KiB),
/// the agent's pipe into the container (64 KiB), with room to spare.
const STDIN_IN_FLIGHT_MAX: u64 = 2 << 20;

/// A task that never reads its stdin while the host writes to it as fast
/// as it can (issue 17, bad input). The writer must be held back once the
/// bounded buffers on the way are full, the shim must stay small, exec into
/// the same task and into a neighbour must still answer, and a SIGKILL must
/// end the task while a stdin write is blocked in the agent, leaving
/// nothing behind.
#[test]
fn ctr_a_task_that_never_reads_stdin_holds_back_only_its_writer() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    require_vm_host();
    let c = Containerd::start("kata-stdin-full");
    let image = import_busybox(&c);
    let nb = sandbox_id("stdin-nb");
    run_sleeping(&c, image, &nb);

    let id = sandbox_id("stdin-full");
    let mut child = ctr_command(&c)
        .args([
            "run",
            "--rm",
            "--runtime",
            KATA,
            image,
            &id,
            "sleep",
            "1000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ctr run");
    let mut stdin = child.stdin.take().expect("stdin");
    let run = Background(child);
    wait_task(&c, &id, "RUNNING", BOOT);

    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    // Rust ignores SIGPIPE, so the write fails with EPIPE once ctr is gone.
    let writer = std::thread::spawn(move || {
        let block = vec![b'x'; 64 << 10];
        while let Ok(n) = stdin.write(&block) {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
    });
    // The buffers fill within seconds even under TCG; after that the
    // count must stand still.
    std::thread::sleep(Duration::from_secs(10));
    let settled = written.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(5));
    let later = written.load(Ordering::SeqCst);

    let exec_ms = |task: &str, exec_id: &str| {
        let began = Instant::now();
        let out = c
            .ctr_within(
                &["tasks", "exec", "--exec-id", exec_id, task, "echo", "ok"],
                Duration::from_secs(60),
            )
            .unwrap_or_else(|| panic!("exec into {task} hung\n{}", c.log_tail()));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ok\n",
            "exec into {task}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        began.elapsed().as_secs_f64() * 1000.0
    };
    let own = exec_ms(&id, "own");
    let neighbour = exec_ms(&nb, "nb");
    let peak = peak_rss_kib(shim_pid(&c, &id));
    println!(
        "a task that never reads stdin: the host wrote {settled} bytes in 10 s and {later} \
         after 15 s (bound {STDIN_IN_FLIGHT_MAX}); exec into it {own:.0} ms, into a neighbour \
         {neighbour:.0} ms; shim peak RSS {peak} KiB"
    );
    assert!(settled > 0, "no stdin byte was taken at all");
    assert_eq!(settled, later, "the writer was not held back");
    assert!(
        settled <= STDIN_IN_FLIGHT_MAX,
        "{settled} bytes were taken from a writer whose reader never reads"
    );
    assert!(peak < 64 << 10, "shim peak RSS {peak} KiB");

    // A stdin write is blocked in the agent; the kill must still end it.
    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    let code = run.exit_code(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(137),
        "ctr run of the killed task\n{}",
        c.log_tail()
    );
    writer.join().expect("writer thread");
    assert_no_leaks(&id);

    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &nb]);
    wait_task(&c, &nb, "STOPPED", Duration::from_secs(60));
    c.ctr_ok(&["tasks", "rm", &nb]);
    c.ctr_ok(&["containers", "rm", &nb]);
    assert_no_leaks(&nb);
}
