//! Supervised helper processes of a VM (QEMU, virtiofsd,
//! vhost-device-vsock): spawning with piped output re-logged under the
//! sandbox id, readiness by socket, exit watching, and a bounded stop.
//!
//! Output lines come from processes the guest can influence (the console
//! above all), so they are rate-limited before they reach the log.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Errors of helper processes.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{what} not found (tried {tried}); install it with: {hint}")]
    Missing {
        what: &'static str,
        tried: String,
        hint: &'static str,
    },
    #[error("cannot start {what} ({path})")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited before it was ready ({status}){detail}")]
    ExitedEarly {
        what: &'static str,
        status: String,
        detail: String,
    },
    #[error("{what} did not create {socket} within {timeout:?}")]
    NotReady {
        what: &'static str,
        socket: PathBuf,
        timeout: Duration,
    },
}

/// The first existing file among `candidates`.
pub fn resolve_binary(
    candidates: &[PathBuf],
    what: &'static str,
    hint: &'static str,
) -> Result<PathBuf, ChildError> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ChildError::Missing {
            what,
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            hint,
        })
}

/// How a child's output lines are logged.
#[derive(Debug, Clone, Copy)]
pub enum LineKind {
    /// Diagnostics of a host process.
    Diagnostic,
    /// The guest console (kernel and agent lines).
    GuestConsole,
}

/// Most lines per second a child may put into the log; the rest are counted
/// and reported as dropped.
const LINES_PER_SECOND: u32 = 200;
/// Longest line kept; the guest controls the console.
const MAX_LINE: usize = 4096;

/// Spawns `cmd` so that it is killed when the shim dies, however it dies:
/// a VM must not outlive its shim (a `kill -9` of the shim under CRI-O,
/// which runs no `delete`, left QEMU and its helpers running).
///
/// The parent-death signal fires when the *thread* that forked the child
/// ends, and tokio's threads come and go (`block_in_place`, the blocking
/// pool), so every VM process is forked by one thread that lives as long
/// as the shim. The signal is set last before exec, after any change of
/// credentials (`rootless`), which would clear it.
fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (
        Command,
        tokio::runtime::Handle,
        std::sync::mpsc::SyncSender<std::io::Result<Child>>,
    );
    static SPAWNER: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2) and getppid(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The shim died between fork and prctl: nothing would kill us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vm-spawner".into())
            .spawn(move || {
                for (mut cmd, runtime, reply) in rx {
                    // The child is reaped by the caller's runtime.
                    let _entered = runtime.enter();
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the VM spawner thread");
        tx
    });
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let gone = || std::io::Error::other("the VM spawner thread is gone");
    spawner
        .send((cmd, tokio::runtime::Handle::current(), reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// A running helper process.
#[derive(Debug)]
pub struct Supervised {
    pub what: &'static str,
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// The last lines of output, for error messages.
    tail: Tail,
    /// Turns true once the guest console printed the agent's ready marker.
    ready: watch::Receiver<bool>,
}

/// The last lines a child printed, for error messages.
pub type Tail = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// How many lines a [`Tail`] keeps.
const TAIL_LINES: usize = 8;

/// What the guest kernel prints first when it panics: the one line that
/// says why the VM ended, which its call trace must not push out.
const PANIC_MARK: &str = "Kernel panic - not syncing";

/// The guest kernel's panic line in `tail`, if it printed one.
pub fn panic_line(tail: &Tail) -> Option<String> {
    let t = tail.lock().ok()?;
    t.iter().find(|l| l.contains(PANIC_MARK)).cloned()
}

fn push_line(tail: &Tail, line: &str) {
    if let Ok(mut t) = tail.lock() {
        if t.len() >= TAIL_LINES {
            // The oldest line that is not the panic line makes room; a
            // guest printing nothing but panic lines still gets 8.
            let oldest = t.iter().position(|l| !l.contains(PANIC_MARK)).unwrap_or(0);
            t.remove(oldest);
        }
        t.push_back(line.to_string());
    }
}

impl Supervised {
    /// Spawns `cmd` (stdin null, stdout and stderr piped into the log) and
    /// starts watching it.
    pub fn spawn(
        what: &'static str,
        mut cmd: Command,
        sandbox_id: &str,
        stdout_kind: LineKind,
    ) -> Result<Supervised, ChildError> {
        let path = PathBuf::from(cmd.as_std().get_program());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child: Child =
            spawn_tied(cmd).map_err(|source| ChildError::Spawn { what, path, source })?;
        let pid = child.id().unwrap_or(0);
        let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (ready_tx, ready) = watch::channel(false);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(
                out,
                what,
                sandbox_id.to_string(),
                stdout_kind,
                tail.clone(),
                Some(ready_tx),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(
                err,
                what,
                sandbox_id.to_string(),
                LineKind::Diagnostic,
                tail.clone(),
                None,
            ));
        }
        let (tx, exit) = watch::channel(None);
        let sid = sandbox_id.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            match &status {
                Ok(s) => {
                    tracing::debug!(sandbox_id = %sid, what, pid, status = %s, "helper exited")
                }
                Err(e) => {
                    tracing::warn!(sandbox_id = %sid, what, pid, error = %e, "waiting for helper failed")
                }
            }
            let _ = tx.send(Some(status.unwrap_or_else(|_| exit_status_unknown())));
        });
        Ok(Supervised {
            what,
            pid,
            exit,
            tail,
            ready,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the process has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit status when the process ends.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Sees `true` once a guest console line carried the agent's ready
    /// marker (only ever for [`LineKind::GuestConsole`] output).
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// The last lines of output, kept as they come.
    pub fn tail(&self) -> Tail {
        self.tail.clone()
    }

    /// The last output lines, joined, for error messages.
    pub fn recent_output(&self) -> String {
        let tail = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>());
        tail.map(|v| v.join(" | ")).unwrap_or_default()
    }

    /// Waits until `socket` exists, failing early if the process exits.
    pub async fn wait_for_socket(
        &self,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(), ChildError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.exited_early(status));
            }
            if socket.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ChildError::NotReady {
                    what: self.what,
                    socket: socket.to_path_buf(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The error for a process that ended before it should have.
    pub fn exited_early(&self, status: ExitStatus) -> ChildError {
        let out = self.recent_output();
        ChildError::ExitedEarly {
            what: self.what,
            status: status.to_string(),
            detail: if out.is_empty() {
                String::new()
            } else {
                format!(": {out}")
            },
        }
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some())).await;
        match waited {
            Ok(Ok(s)) => *s,
            _ => self.exit_status(),
        }
    }

    /// Ends the process: SIGTERM, then SIGKILL after `grace`, and waits until
    /// it has been reaped.
    pub async fn stop(&self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.exit_status() {
            return s;
        }
        self.signal(Signal::SIGTERM);
        if let Some(s) = self.wait_exit(grace).await {
            return s;
        }
        self.kill().await
    }

    /// SIGKILL and reap.
    pub async fn kill(&self) -> ExitStatus {
        if let Some(s) = self.exit_status() {
            return s;
        }
        self.signal(Signal::SIGKILL);
        // A SIGKILLed child is reaped by the watcher task promptly; the bound
        // only guards against a wedged runtime.
        self.wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(exit_status_unknown)
    }

    fn signal(&self, sig: Signal) {
        if self.pid == 0 || self.exit_status().is_some() {
            return;
        }
        // The pid stays ours until the watcher reaps it, and it only reaps
        // after exit, which we checked just above; a race with the exit only
        // makes kill() fail with ESRCH.
        let _ = kill(Pid::from_raw(self.pid as i32), sig);
    }
}

impl Drop for Supervised {
    /// A helper must never outlive its handle: dropping one that still runs
    /// (an aborted start, a cancelled boot) kills it, and the watcher task
    /// reaps it.
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn exit_status_unknown() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(255 << 8)
}

/// Reads one line into `buf`, keeping at most `max` bytes of it and
/// skipping the rest up to its newline: the guest controls the console, and
/// a line that never ends must not grow the shim's memory. False at the end
/// of the stream (or on an error) with nothing read.
pub(crate) async fn read_line_capped(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> bool {
    let mut read_any = false;
    loop {
        let chunk = match r.fill_buf().await {
            Ok(c) if !c.is_empty() => c,
            _ => return read_any,
        };
        read_any = true;
        let (len, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..len.min(room)]);
        r.consume(len);
        if ended {
            return true;
        }
    }
}

pub(crate) async fn pump(
    stream: impl AsyncRead + Unpin,
    what: &'static str,
    sandbox_id: String,
    kind: LineKind,
    tail: Tail,
    ready: Option<watch::Sender<bool>>,
) {
    let mut lines = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut window = Instant::now();
    let (mut in_window, mut dropped) = (0u32, 0u64);
    loop {
        buf.clear();
        if !read_line_capped(&mut lines, &mut buf, MAX_LINE).await {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        // Checked before rate limiting, so a flood cannot hide the marker.
        if let (LineKind::GuestConsole, Some(tx)) = (kind, &ready) {
            if line.contains(kata_agent_protocol::guest::READY_MARKER) {
                let _ = tx.send(true);
            }
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                tracing::warn!(sandbox_id = %sandbox_id, source = what, dropped, "output rate-limited");
            }
            window = Instant::now();
            in_window = 0;
            dropped = 0;
        }
        in_window += 1;
        if in_window > LINES_PER_SECOND {
            dropped += 1;
            continue;
        }
        push_line(&tail, line);
        match kind {
            LineKind::GuestConsole => {
                tracing::info!(sandbox_id = %sandbox_id, source = "guest", "{line}")
            }
            LineKind::Diagnostic => {
                tracing::info!(sandbox_id = %sandbox_id, source = what, "{line}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_kernels_panic_line_outlasts_its_call_trace() {
        let tail = Tail::default();
        push_line(&tail, "[    1.2] booting");
        push_line(
            &tail,
            "[    1.5] Kernel panic - not syncing: VFS: Unable to mount root fs",
        );
        for i in 0..40 {
            push_line(&tail, &format!("[    1.6]  ? frame {i}"));
        }
        let t = tail.lock().expect("test value").clone();
        assert_eq!(t.len(), TAIL_LINES);
        assert!(t[0].contains("Unable to mount root fs"), "{t:?}");
        assert_eq!(t[TAIL_LINES - 1], "[    1.6]  ? frame 39");
        assert_eq!(
            panic_line(&tail).as_deref(),
            Some("[    1.5] Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
        // A guest that prints nothing but panic lines still keeps 8.
        let flood = Tail::default();
        for i in 0..20 {
            push_line(&flood, &format!("Kernel panic - not syncing: {i}"));
        }
        assert_eq!(flood.lock().expect("test value").len(), TAIL_LINES);
        assert_eq!(panic_line(&Tail::default()), None);
    }

    #[test]
    fn missing_binary_names_it_and_the_fix() {
        let e = resolve_binary(
            &["/nonexistent/a".into(), "/nonexistent/b".into()],
            "QEMU",
            "apt-get install qemu",
        )
        .expect_err("missing");
        let msg = e.to_string();
        assert!(msg.contains("QEMU not found"), "{msg}");
        assert!(msg.contains("/nonexistent/a, /nonexistent/b"), "{msg}");
        assert!(msg.contains("apt-get install qemu"), "{msg}");
        assert_eq!(
            resolve_binary(&["/nonexistent".into(), "/bin/sh".into()], "sh", "").expect("found"),
            PathBuf::from("/bin/sh")
        );
    }

    #[tokio::test]
    async fn a_line_without_end_is_capped_while_it_is_read() {
        // 64 MiB without a newline, then a normal line, through a reader
        // whose buffer is 8 KiB: the kept line never exceeds the cap.
        use tokio::io::AsyncReadExt;
        let input = tokio::io::repeat(b'x')
            .take(64 << 20)
            .chain(&b"\nnext\n"[..]);
        let mut r = BufReader::with_capacity(8192, input);
        let mut buf = Vec::new();
        assert!(read_line_capped(&mut r, &mut buf, MAX_LINE).await);
        assert_eq!(buf.len(), MAX_LINE);
        assert!(buf.capacity() < 2 * MAX_LINE, "grew to {}", buf.capacity());
        buf.clear();
        assert!(read_line_capped(&mut r, &mut buf, MAX_LINE).await);
        assert_eq!(buf, b"next\n");
        buf.clear();
        assert!(!read_line_capped(&mut r, &mut buf, MAX_LINE).await);
    }

    #[tokio::test]
    async fn early_exit_and_stop() {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "echo boom >&2; exit 3"]);
        let s = Supervised::spawn("sh", c, "t", LineKind::Diagnostic).expect("spawn");
        let e = s
            .wait_for_socket(Path::new("/nonexistent/sock"), Duration::from_secs(5))
            .await
            .expect_err("exits");
        let msg = e.to_string();
        assert!(msg.contains("exited before it was ready"), "{msg}");

        let mut c = Command::new("/bin/sleep");
        c.arg("100");
        let s = Supervised::spawn("sleep", c, "t", LineKind::Diagnostic).expect("spawn");
        assert!(s.exit_status().is_none());
        let st = s.stop(Duration::from_millis(500)).await;
        assert!(!st.success());
        assert!(!Path::new(&format!("/proc/{}", s.pid())).exists());
    }
}
