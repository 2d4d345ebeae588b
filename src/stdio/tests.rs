//! ProcessIo against a fake agent and real FIFOs, files and a shell logger.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

use super::*;

const CID: &str = "c1";
const EID: &str = "e1";

/// One agent-side output stream: bytes to hand out, then EOF.
#[derive(Default)]
struct FakeStream {
    state: Mutex<(VecDeque<u8>, bool)>,
    /// Bytes handed to the shim so far.
    taken: AtomicUsize,
    /// Largest single reply, to vary chunk sizes.
    max_reply: AtomicUsize,
}

impl FakeStream {
    fn push(&self, data: &[u8]) {
        lock(&self.state).0.extend(data);
    }

    fn eof(&self) {
        lock(&self.state).1 = true;
    }

    async fn read(&self, len: u32) -> Vec<u8> {
        loop {
            {
                let mut s = lock(&self.state);
                if !s.0.is_empty() {
                    let cap = match self.max_reply.load(Ordering::Relaxed) {
                        0 => usize::MAX,
                        m => m,
                    };
                    let n = s.0.len().min(len as usize).min(cap);
                    let out: Vec<u8> = s.0.drain(..n).collect();
                    self.taken.fetch_add(n, Ordering::SeqCst);
                    return out;
                }
                if s.1 {
                    return Vec::new();
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[derive(Default)]
struct FakeAgent {
    stdout: FakeStream,
    stderr: FakeStream,
    stdin: Mutex<Vec<u8>>,
    /// Call names in order: "WriteStdin", "CloseStdin".
    calls: Mutex<Vec<&'static str>>,
    stdin_closed: Mutex<bool>,
}

impl FakeAgent {
    fn new() -> Arc<FakeAgent> {
        Arc::new(FakeAgent::default())
    }

    fn calls(&self) -> Vec<&'static str> {
        lock(&self.calls).clone()
    }

    fn stdin(&self) -> Vec<u8> {
        lock(&self.stdin).clone()
    }

    fn closes(&self) -> usize {
        self.calls().iter().filter(|c| **c == "CloseStdin").count()
    }
}

#[async_trait::async_trait]
impl AgentStreams for FakeAgent {
    async fn read_stdout(&self, c: &str, e: &str, len: u32) -> Result<Vec<u8>, AgentError> {
        assert_eq!((c, e), (CID, EID));
        Ok(self.stdout.read(len).await)
    }

    async fn read_stderr(&self, c: &str, e: &str, len: u32) -> Result<Vec<u8>, AgentError> {
        assert_eq!((c, e), (CID, EID));
        Ok(self.stderr.read(len).await)
    }

    async fn write_stdin(&self, c: &str, e: &str, data: Vec<u8>) -> Result<u32, AgentError> {
        assert_eq!((c, e), (CID, EID));
        lock(&self.calls).push("WriteStdin");
        if *lock(&self.stdin_closed) {
            return Ok(0);
        }
        lock(&self.stdin).extend_from_slice(&data);
        Ok(u32::try_from(data.len()).expect("small chunk"))
    }

    async fn close_stdin(&self, c: &str, e: &str) -> Result<(), AgentError> {
        assert_eq!((c, e), (CID, EID));
        lock(&self.calls).push("CloseStdin");
        *lock(&self.stdin_closed) = true;
        Ok(())
    }
}

fn cfg(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioConfig {
    StdioConfig {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    mkfifo(&p, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A reader of an output FIFO, like CRI-O's: a blocking open (which lets
/// the shim's non-blocking open succeed) and reads until EOF.
fn spawn_reader(
    path: PathBuf,
    chunk: usize,
    pause: Duration,
    progress: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut f = File::open(&path).expect("open fifo for reading");
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = f.read(&mut buf).expect("read fifo");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
            progress.fetch_add(n, Ordering::SeqCst);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    })
}

async fn join_reader(h: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || h.join().expect("reader thread")),
    )
    .await
    .expect("reader saw EOF in time")
    .expect("join")
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect()
}

/// Opens a FIFO for writing once the shim holds its read end (a blocking
/// open would stall the test's runtime thread).
async fn open_writer(path: &Path) -> File {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => return f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                assert!(Instant::now() < deadline, "the shim never opened {path:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("open {path:?} for writing: {e}"),
        }
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_round_trip_reader_sees_eof_after_wait_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (fifo(dir.path(), "out"), fifo(dir.path(), "err"));
    let agent = FakeAgent::new();
    let io =
        ProcessIo::new(cfg("", s(&out), s(&err), false), CID, EID, "default").expect("valid stdio");
    let none = Arc::new(AtomicUsize::new(0));
    let r_out = spawn_reader(out, 4096, Duration::ZERO, none.clone());
    let r_err = spawn_reader(err, 4096, Duration::ZERO, none);
    io.start(agent.clone());
    agent.stdout.push(b"hello ");
    agent.stderr.push(b"oops\n");
    agent.stdout.push(b"world\n");
    assert!(
        !io.wait_output(Duration::from_millis(100)).await,
        "no EOF yet"
    );
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    assert_eq!(join_reader(r_out).await, b"hello world\n");
    assert_eq!(join_reader(r_err).await, b"oops\n");
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_through_a_slow_reader_arrive_intact_with_bounded_buffering() {
    const TOTAL: usize = 8 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fifo(dir.path(), "out");
    let agent = FakeAgent::new();
    // Odd reply sizes, so chunk boundaries never line up with the pipe's.
    agent.stdout.max_reply.store(100_003, Ordering::Relaxed);
    let data = pattern(TOTAL, 7);
    agent.stdout.push(&data);
    agent.stdout.eof();
    agent.stderr.eof();
    let io = ProcessIo::new(cfg("", s(&out), "", false), CID, EID, "default").expect("valid stdio");
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = spawn_reader(out, 16 * 1024, Duration::from_micros(500), progress.clone());
    io.start(agent.clone());
    // While the reader lags, the shim must not pull much more than two
    // chunks plus what the pipe holds.
    let mut max_ahead = 0;
    while !io.wait_output(Duration::from_millis(2)).await {
        let ahead = agent
            .stdout
            .taken
            .load(Ordering::SeqCst)
            .saturating_sub(progress.load(Ordering::SeqCst));
        max_ahead = max_ahead.max(ahead);
    }
    let got = join_reader(reader).await;
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "bytes differ");
    // One chunk being written, the next one read meanwhile, and what the
    // pipe and the reader's slack hold.
    let bound = 2 * copy::READ_LEN as usize + (1 << 20);
    assert!(
        max_ahead <= bound,
        "shim ran {max_ahead} bytes ahead of the reader"
    );
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_going_away_does_not_stall_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fifo(dir.path(), "out");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", s(&out), "", false), CID, EID, "default").expect("valid stdio");
    let path = out.clone();
    let reader = std::thread::spawn(move || {
        let mut f = File::open(&path).expect("open");
        let mut buf = [0u8; 5];
        f.read_exact(&mut buf).expect("first bytes");
        buf
    });
    io.start(agent.clone());
    agent.stdout.push(b"first");
    let first = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    assert_eq!(&first, b"first");
    // Nobody reads any more: 4 MiB more output is drained and dropped.
    agent.stdout.push(&pattern(4 << 20, 3));
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(20)).await);
    assert_eq!(agent.stdout.taken.load(Ordering::SeqCst), 5 + (4 << 20));
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_resumes_when_a_new_reader_opens_the_fifo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fifo(dir.path(), "out");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", s(&out), "", false), CID, EID, "default").expect("valid stdio");
    let first = open_reader(&out);
    io.start(agent.clone());
    agent.stdout.push(b"a");
    eventually("first byte taken", || {
        agent.stdout.taken.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(first.await.expect("reader opened"));
    // The first write after the reader left fails with EPIPE and is dropped.
    agent.stdout.push(b"lost");
    eventually("lost bytes drained", || {
        agent.stdout.taken.load(Ordering::SeqCst) == 5
    })
    .await;
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = spawn_reader(out, 64, Duration::ZERO, progress.clone());
    // Keep producing until the reopened FIFO gets bytes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "output never resumed");
        agent.stdout.push(b"x");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    let got = join_reader(reader).await;
    assert!(!got.is_empty() && got.iter().all(|b| *b == b'x'), "{got:?}");
    io.shutdown().await;
}

/// Opens a FIFO for reading in a blocking thread (the open returns once
/// the shim opened its end).
fn open_reader(path: &Path) -> tokio::task::JoinHandle<File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || File::open(path).expect("open fifo"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_waits_for_a_writer_then_forwards_and_closes_on_eof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inp = fifo(dir.path(), "in");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg(s(&inp), "", "", false), CID, EID, "default").expect("valid");
    io.start(agent.clone());
    // No writer yet: that is not EOF.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.calls().is_empty(), "{:?}", agent.calls());
    let mut w = open_writer(&inp).await;
    w.write_all(b"line one\nline two\n").expect("write");
    drop(w);
    eventually("stdin closed in the agent", || agent.closes() == 1).await;
    assert_eq!(agent.stdin(), b"line one\nline two\n");
    assert_eq!(agent.calls().last(), Some(&"CloseStdin"));
    // CloseIO afterwards is a no-op that succeeds.
    io.close_stdin().await.expect("close again");
    assert_eq!(agent.closes(), 1);
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(5)).await);
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_io_forwards_pending_input_then_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inp = fifo(dir.path(), "in");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg(s(&inp), "", "", false), CID, EID, "default").expect("valid");
    io.start(agent.clone());
    // The writer stays open: only CloseIO can end stdin.
    let mut writer = open_writer(&inp).await;
    writer.write_all(b"abc").expect("write");
    io.close_stdin().await.expect("CloseIO");
    assert_eq!(agent.stdin(), b"abc");
    assert_eq!(agent.closes(), 1);
    io.close_stdin().await.expect("idempotent");
    assert_eq!(agent.closes(), 1);
    drop(writer);
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_io_before_start_closes_right_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inp = fifo(dir.path(), "in");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg(s(&inp), "", "", false), CID, EID, "default").expect("valid");
    io.close_stdin().await.expect("before start");
    assert!(agent.calls().is_empty());
    io.start(agent.clone());
    eventually("stdin closed after start", || agent.closes() == 1).await;
    io.close_stdin().await.expect("after start");
    assert_eq!(agent.closes(), 1);
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_ignores_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fifo(dir.path(), "out");
    // A stderr FIFO nobody reads: if the shim tried to use it, output
    // would wait for a reader forever.
    let err = fifo(dir.path(), "err");
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", s(&out), s(&err), true), CID, EID, "default").expect("valid");
    assert_eq!(io.config().stderr, s(&err), "config keeps the original");
    let reader = spawn_reader(out, 1024, Duration::ZERO, Arc::new(AtomicUsize::new(0)));
    io.start(agent.clone());
    agent.stdout.push(b"tty output\r\n");
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    assert_eq!(join_reader(reader).await, b"tty output\r\n");
    // Garbage in stderr is fine with a terminal.
    ProcessIo::new(cfg("", s(dir.path()), "relative", true), CID, EID, "ns").expect("ignored");
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_uri_appends_both_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("new/dirs/c1.log");
    std::fs::create_dir_all(log.parent().expect("parent")).expect("mkdir");
    std::fs::write(&log, b"before\n").expect("seed");
    let uri = format!("file://{}", s(&log));
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", &uri, &uri, false), CID, EID, "default").expect("valid");
    io.start(agent.clone());
    agent.stdout.push(b"to stdout\n");
    agent.stdout.eof();
    eventually("stdout taken", || {
        agent.stdout.taken.load(Ordering::SeqCst) == 10
    })
    .await;
    agent.stderr.push(b"to stderr\n");
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    let got = std::fs::read(&log).expect("read log");
    let text = String::from_utf8(got).expect("utf-8");
    assert!(text.starts_with("before\n"), "{text:?}");
    assert_eq!(
        text.len(),
        "before\nto stdout\nto stderr\n".len(),
        "{text:?}"
    );
    assert!(
        text.contains("to stdout\n") && text.contains("to stderr\n"),
        "{text:?}"
    );
    io.shutdown().await;

    // Parent directories are created.
    let deep = dir.path().join("a/b/c.log");
    let uri = format!("file://{}", s(&deep));
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", &uri, "", false), CID, EID, "default").expect("valid");
    io.start(agent.clone());
    agent.stdout.push(b"x");
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    assert_eq!(std::fs::read(&deep).expect("read"), b"x");
    io.shutdown().await;
}

/// A log file that cannot take output (`/dev/full` fails every write with
/// ENOSPC) neither stalls the process nor ends the copy: every chunk is
/// still taken from the agent and the stream ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_file_drops_output_without_stalling_the_process() {
    let uri = "file:///dev/full";
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", uri, uri, false), CID, EID, "default").expect("valid");
    io.start(agent.clone());
    for _ in 0..3 {
        agent.stdout.push(b"line that has no room\n");
    }
    agent.stdout.eof();
    agent.stderr.push(b"err\n");
    agent.stderr.eof();
    eventually("every chunk taken from the agent", || {
        agent.stdout.taken.load(Ordering::SeqCst) == 3 * 22
    })
    .await;
    assert!(
        io.wait_output(Duration::from_secs(10)).await,
        "the copies end at EOF even though the file took nothing"
    );
    io.shutdown().await;
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The inodes of the pipes a process has as fds 3 and 4.
fn pipe_inodes(pid: u32) -> Vec<String> {
    [3, 4]
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .expect("logger fd")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn own_fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("proc")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logger_receives_both_streams_and_is_reaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = s(dir.path());
    // Readiness comes late on purpose: start must not wait for it.
    let script = format!(
        "/usr/bin/env > {d}/env; echo \"$@\" > {d}/args; \
         /bin/sleep 0.2; printf r >&5; exec 5>&-; \
         /bin/cat <&3 > {d}/out & /bin/cat <&4 > {d}/err; wait; \
         echo done > {d}/done"
    );
    // `sh -c script $0 $1`: the query's second pair becomes $0 and $1.
    let uri = format!(
        "binary:///bin/sh?-c={}&logger=--flag+value",
        query_escape(&script)
    );
    let agent = FakeAgent::new();
    let io = ProcessIo::new(cfg("", &uri, &uri, false), CID, EID, "k8s.io").expect("valid");
    let t0 = Instant::now();
    io.start(agent.clone());
    assert!(t0.elapsed() < Duration::from_millis(100), "start blocked");
    agent.stdout.push(b"out 1\n");
    agent.stderr.push(b"err 1\n");
    agent.stdout.push(b"out 2\n");
    agent.stdout.eof();
    agent.stderr.eof();
    assert!(io.wait_output(Duration::from_secs(10)).await);
    let done = dir.path().join("done");
    eventually("logger finished", || done.exists()).await;
    assert_eq!(
        std::fs::read(dir.path().join("out")).expect("out"),
        b"out 1\nout 2\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("err")).expect("err"),
        b"err 1\n"
    );
    let env = std::fs::read_to_string(dir.path().join("env")).expect("env");
    let mut env: Vec<&str> = env.lines().filter(|l| !l.starts_with("PWD=")).collect();
    env.sort_unstable();
    assert_eq!(env, ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=k8s.io"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args")).expect("args"),
        "--flag value\n"
    );
    let pid = io.logger_pid().expect("logger recorded");
    io.shutdown().await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "logger not reaped"
    );
    io.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_idempotent_and_leaves_no_fd_or_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = format!("{}/", s(dir.path()));
    let d = d.as_str();
    let (inp, out) = (fifo(dir.path(), "in"), fifo(dir.path(), "out"));
    let script = "exec 5>&-; /bin/cat <&3 >/dev/null & /bin/cat <&4 >/dev/null; wait";
    let uri = format!("binary:///bin/sh?-c={}", query_escape(script));
    let agent = FakeAgent::new();
    // Never started: shutdown is fine too.
    let idle = ProcessIo::new(cfg("", "", "", false), CID, EID, "default").expect("valid");
    idle.shutdown().await;
    idle.shutdown().await;
    assert!(!idle.wait_output(Duration::from_secs(5)).await);

    let logged = ProcessIo::new(cfg("", &uri, "", false), CID, EID, "default").expect("valid");
    logged.start(agent.clone());
    eventually("logger spawned", || logged.logger_pid().is_some()).await;
    let pid = logged.logger_pid().expect("pid");
    eventually("logger fds installed", || {
        std::fs::read_link(format!("/proc/{pid}/fd/4")).is_ok()
    })
    .await;
    let pipes = pipe_inodes(pid);

    // A FIFO copy that is stuck: the reader holds the FIFO but never reads,
    // and stdin has a writer that never closes.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&out)
        .expect("reader");
    let fifos =
        ProcessIo::new(cfg(s(&inp), s(&out), "", false), CID, EID, "default").expect("valid");
    let agent2 = FakeAgent::new();
    agent2.stdout.push(&pattern(1 << 20, 1));
    fifos.start(agent2.clone());
    let _writer = open_writer(&inp).await;
    eventually("shim opened both fifos", || {
        own_fd_targets().iter().filter(|t| t.starts_with(d)).count() >= 4
    })
    .await;

    logged.shutdown().await;
    fifos.shutdown().await;
    fifos.shutdown().await;
    logged.shutdown().await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "logger not reaped"
    );
    let targets = own_fd_targets();
    let ours: Vec<_> = targets
        .iter()
        .filter(|t| t.starts_with(d) || pipes.contains(t))
        .collect();
    // Only the test's own reader and writer remain.
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(!fifos.wait_output(Duration::from_secs(5)).await);
    fifos.close_stdin().await.expect("close after shutdown");
}

#[test]
fn stdio_errors_name_the_stream_and_are_invalid_argument() {
    for (c, stream) in [
        (cfg("in", "", "", false), "stdin"),
        (cfg("", "out", "", false), "stdout"),
        (cfg("", "syslog:///x", "", false), "stdout"),
        (cfg("", "/o", "e", false), "stderr"),
    ] {
        let e = ProcessIo::new(c, CID, EID, "default").expect_err("invalid");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            e.to_string().starts_with(&format!("invalid {stream} ")),
            "{e}"
        );
    }
    let agent_err = StdioError::Agent {
        container_id: CID.into(),
        exec_id: EID.into(),
        source: Box::new(AgentError::Rpc {
            call: "CloseStdin",
            source: ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, "x")),
        }),
    };
    assert_eq!(agent_err.code(), ttrpc::Code::INTERNAL);
    let closed = StdioError::Agent {
        container_id: CID.into(),
        exec_id: EID.into(),
        source: Box::new(AgentError::Rpc {
            call: "CloseStdin",
            source: ttrpc::Error::LocalClosed,
        }),
    };
    assert_eq!(closed.code(), ttrpc::Code::UNAVAILABLE);
}

#[test]
fn a_shim_short_of_descriptors_refuses_a_new_process() {
    // nextest runs each test in its own process: the limit is ours alone.
    let open = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the structs given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
    }
    assert!(crate::stdio::ensure_fd_headroom().is_ok());
    let low = libc::rlimit {
        rlim_cur: open + FD_HEADROOM / 2,
        rlim_max: saved.rlim_max,
    };
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let refused = crate::stdio::ensure_fd_headroom();
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &saved), 0);
    }
    let e = refused.expect_err("half the headroom is not enough");
    assert_eq!(e.code(), ttrpc::Code::RESOURCE_EXHAUSTED);
    assert!(
        crate::logging::error_chain(&e).contains("Too many open files"),
        "{}",
        crate::logging::error_chain(&e)
    );
}
