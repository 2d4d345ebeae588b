//! The stdio of one container process (container init or exec): pipes or a
//! pty, the agent-side buffers behind ReadStdout/ReadStderr, WriteStdin,
//! CloseStdin and TtyWinResize.
//!
//! This module owns the agent's ends of a process's stdio and nothing else:
//! it does not spawn, wait for or signal processes.
//!
//! # Use
//!
//! ```ignore
//! let (child, io) = stdio::create(StdioConfig { terminal: false, open_stdin: true })?;
//! // Hand the child ends to the process (libcontainer `with_stdin/with_stdout/
//! // with_stderr`; `/dev/null` for a `None` stdin, a dup of stdout for a
//! // `None` stderr), spawn it, and make sure *every* copy of `child` held by
//! // the agent is dropped (including any inside the libcontainer builder).
//! spawn(child)?;
//! io.child_started();
//! // RPC adapters: io.read_stdout(len), io.read_stderr(len), io.write_stdin(data),
//! // io.close_stdin(), io.resize(row, column).
//! // WaitProcess: after the exit is reaped,
//! io.wait_output_drained_timeout(grace).await;
//! ```
//!
//! * [`create`] must be called inside the tokio runtime (it registers fds and
//!   spawns one small task per output stream).
//! * With `terminal`, [`ChildStdio`] holds the pty slave (stdin, stdout;
//!   stderr `None` = use stdout). The slave does not become the child's
//!   controlling terminal unless the child calls `setsid()` + `TIOCSCTTY`
//!   (job control, `^C` → SIGINT need that). When libcontainer creates the
//!   pty inside the container instead (console socket), pass the master it
//!   sends to [`ProcessIo::from_pty_master`].
//! * [`ProcessIo::child_started`] drops the agent's retained copies of the
//!   child ends. Until it is called (or the [`ProcessIo`] is dropped) stdout
//!   and stderr cannot reach EOF: the retained copies keep a pty master from
//!   reporting a hang-up before the child attached, and keep a pipe from
//!   hitting EOF if the caller closes its [`ChildStdio`] before the spawn.
//! * Dropping the [`ProcessIo`] stops its tasks and closes the agent's ends.
//!
//! # Back-pressure
//!
//! Each output stream has one task that reads the pipe/pty master into a
//! buffer of at most [`STREAM_BUFFER_CAP`] bytes. When the buffer is full the
//! task stops reading, so the kernel pipe (or pty) fills up and the process
//! blocks in `write(2)`; a read RPC that drains the buffer wakes the task.
//! Nothing is ever dropped. Stdin is not buffered: `write_stdin` writes
//! straight into the pipe/pty and waits while it is full.

#![cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "used by the container lifecycle, which is wired up separately"
    )
)]

mod pipe;
mod pty;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{AgentError, Result};
use crate::locks::lock;

/// Most bytes buffered on the agent side per output stream (1 MiB).
pub const STREAM_BUFFER_CAP: usize = 1 << 20;

/// Most bytes one read returns; larger requests are capped, not refused.
pub const MAX_READ: usize = 1 << 20;

/// Most bytes one `read(2)` from a pipe/pty takes: what an output pipe
/// holds (`pipe::OUTPUT_PIPE_SIZE`), and what the shim asks for per read,
/// so that a full pipe becomes one chunk and one reply.
const READ_CHUNK: usize = 256 * 1024;

/// What kind of stdio a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioConfig {
    /// A pty instead of pipes (OCI `process.terminal`).
    pub terminal: bool,
    /// Whether the caller will write to stdin. Without it there is no stdin
    /// pipe (a terminal's stdin is still the pty slave) and WriteStdin is
    /// refused.
    pub open_stdin: bool,
}

/// The child's ends, to be installed as its fds 0, 1 and 2.
///
/// They are `O_CLOEXEC` in the agent (so no other child inherits them);
/// `dup2` onto 0/1/2 in the child clears that.
#[derive(Debug)]
pub struct ChildStdio {
    /// Read end of the stdin pipe, or the pty slave. `None` for pipes without
    /// `open_stdin`: give the child `/dev/null` (never the agent's own stdin,
    /// which is the console for PID 1).
    pub stdin: Option<OwnedFd>,
    /// Write end of the stdout pipe, or the pty slave.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe. `None` for a terminal: give the child a
    /// dup of `stdout` (the pty slave) as stderr.
    pub stderr: Option<OwnedFd>,
}

/// Creates the stdio of one process: the child's ends and the agent's handle.
///
/// Must be called inside the tokio runtime.
pub fn create(cfg: StdioConfig) -> Result<(ChildStdio, ProcessIo)> {
    if cfg.terminal {
        pty::create(cfg.open_stdin)
    } else {
        pipe::create(cfg.open_stdin)
    }
}

/// The agent's side of one process's stdio; the RPC adapters call it.
///
/// Not `Clone`: keep it in the process table (in an `Arc` if it must be used
/// outside the table lock). Dropping it stops the reader tasks and closes the
/// agent's ends (a process still writing then gets `EPIPE`/`SIGPIPE`).
#[derive(Debug)]
pub struct ProcessIo {
    stdout: Arc<OutputStream>,
    stderr: Arc<OutputStream>,
    stdin: StdinSink,
    /// The pty master, for TIOCSWINSZ; `None` for pipes.
    pty_master: Option<Arc<AsyncFd<OwnedFd>>>,
    /// The agent's copies of the child ends, dropped by `child_started`.
    retained: Mutex<Vec<OwnedFd>>,
    /// The reader tasks, aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl ProcessIo {
    /// Builds the handle and starts one reader task per output stream that
    /// has an fd (`stderr: None` = the stream is at EOF from the start, as
    /// for a terminal, where stderr goes to the pty too).
    fn start(
        stdout: Arc<AsyncFd<OwnedFd>>,
        stderr: Option<Arc<AsyncFd<OwnedFd>>>,
        stdin: Option<Arc<AsyncFd<OwnedFd>>>,
        pty_master: Option<Arc<AsyncFd<OwnedFd>>>,
        retained: Vec<OwnedFd>,
    ) -> Self {
        let is_pty = pty_master.is_some();
        let out = Arc::new(OutputStream::new("stdout"));
        let err = Arc::new(OutputStream::new("stderr"));
        let mut tasks = vec![tokio::spawn(pump(stdout, Arc::clone(&out), is_pty))];
        match stderr {
            Some(fd) => tasks.push(tokio::spawn(pump(fd, Arc::clone(&err), is_pty))),
            None => err.finish(),
        }
        Self {
            stdout: out,
            stderr: err,
            stdin: StdinSink::new(stdin, is_pty),
            pty_master,
            retained: Mutex::new(retained),
            tasks,
        }
    }

    /// Wraps a pty master created elsewhere, e.g. the one libcontainer sends
    /// over a console socket when it sets up the terminal inside the
    /// container. The agent holds no slave, so [`Self::child_started`] is a
    /// no-op. Must be called inside the tokio runtime.
    pub fn from_pty_master(master: OwnedFd, open_stdin: bool) -> Result<Self> {
        let master = Arc::new(async_fd(master, "the pty master")?);
        let stdin = open_stdin.then(|| Arc::clone(&master));
        Ok(Self::start(
            Arc::clone(&master),
            None,
            stdin,
            Some(master),
            Vec::new(),
        ))
    }

    /// Reads at most `max` (capped at [`MAX_READ`]) bytes of stdout. Waits
    /// until at least one byte is buffered; an empty `Vec` means EOF.
    /// Concurrent reads are served one after the other. Cancel-safe.
    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>> {
        self.stdout.read(max).await
    }

    /// Like [`Self::read_stdout`] for stderr. With a terminal stderr is part
    /// of stdout, so this returns EOF at once.
    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>> {
        self.stderr.read(max).await
    }

    /// Writes `data` to the process's stdin, waiting while the pipe/pty is
    /// full. Returns how many bytes were written: all of them, unless stdin
    /// was closed while waiting (then the bytes written so far).
    ///
    /// `FailedPrecondition` if stdin was not opened, or was closed (by
    /// [`Self::close_stdin`], or by the process exiting) before any byte
    /// went through.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        self.stdin.write(data).await
    }

    /// Closes stdin so the process sees EOF; idempotent. Pending and later
    /// writes fail with `FailedPrecondition`.
    ///
    /// A pty cannot be half-closed (the master also carries the output), so
    /// for a terminal this writes the terminal's EOF character (VEOF, `^D`)
    /// instead, which a process reading in canonical mode sees as EOF at the
    /// start of a line.
    pub async fn close_stdin(&self) {
        self.stdin.close().await;
    }

    /// Sets the terminal's window size (TIOCSWINSZ on the master); the kernel
    /// sends SIGWINCH to the terminal's foreground process group.
    /// `FailedPrecondition` if the process has no terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let Some(master) = &self.pty_master else {
            return Err(AgentError::FailedPrecondition(
                "the process has no terminal to resize".into(),
            ));
        };
        pty::set_window_size(master.get_ref(), rows, cols)
    }

    /// Tells the stdio that the process holds its ends: drops the agent's
    /// retained copies, so that stdout/stderr reach EOF once the process and
    /// every descendant that inherited them have closed them. Idempotent.
    pub fn child_started(&self) {
        lock(&self.retained).clear();
    }

    /// Resolves once stdout and stderr have reached EOF on the agent side
    /// *and* every byte has been returned by a read, so WaitProcess can
    /// return only after all output is readable. Never resolves while a
    /// descendant (e.g. a daemon) keeps the output open: prefer
    /// [`Self::wait_output_drained_timeout`]. Cancel-safe.
    pub async fn wait_output_drained(&self) {
        self.stdout.wait_drained().await;
        self.stderr.wait_drained().await;
    }

    /// [`Self::wait_output_drained`] bounded by `timeout`; `true` if drained.
    pub async fn wait_output_drained_timeout(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait_output_drained())
            .await
            .is_ok()
    }

    /// Bytes currently buffered on the agent side for (stdout, stderr).
    #[cfg(test)]
    fn buffered(&self) -> (usize, usize) {
        (lock(&self.stdout.state).len, lock(&self.stderr.state).len)
    }

    /// Most bytes ever buffered at once for (stdout, stderr).
    #[cfg(test)]
    fn buffered_peak(&self) -> (usize, usize) {
        (lock(&self.stdout.state).peak, lock(&self.stderr.state).peak)
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        // A reader task blocked on a full buffer (or on a pipe a daemon keeps
        // open) would otherwise live, and hold the fd, forever.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Makes `fd` non-blocking and registers it with the tokio reactor.
fn async_fd(fd: OwnedFd, what: &str) -> Result<AsyncFd<OwnedFd>> {
    let raw = fd.as_raw_fd();
    let flags = fcntl(raw, FcntlArg::F_GETFL)
        .map_err(|e| AgentError::sys(format!("F_GETFL on {what}"), e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(raw, FcntlArg::F_SETFL(flags))
        .map_err(|e| AgentError::sys(format!("setting O_NONBLOCK on {what}"), e))?;
    // SAFETY: an `OwnedFd` is a valid open fd, and the AsyncFd owns it (it is
    // never swapped out or closed elsewhere), so it stays open and refers to
    // the same file description for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register(fd) }.map_err(|e| {
        let (_fd, cause) = e.into_parts();
        AgentError::sys(format!("registering {what}"), errno_of(&cause))
    })
}

/// The errno behind an I/O error from a raw fd operation.
fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// One output stream: the bounded buffer between its reader task and the
/// read RPCs.
#[derive(Debug)]
struct OutputStream {
    name: &'static str,
    state: Mutex<OutputState>,
    /// Notified (all waiters) whenever `state` changes: data added or taken,
    /// or EOF. Waiters re-check the state, so spurious wake-ups are harmless.
    changed: Notify,
    /// Serializes readers, so concurrent reads never interleave chunks.
    read_lock: tokio::sync::Mutex<()>,
}

/// The buffer is a queue of the chunks the pipe reads returned, each
/// handed on as it is: a reply made of one chunk is moved, not copied.
/// Under TCG every copy of the output costs guest CPU that the writer and
/// the transport need, so the agent copies each byte only where it must
/// (out of the pipe, into the ttrpc message, into the socket).
#[derive(Debug, Default)]
struct OutputState {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes in `chunks`.
    len: usize,
    /// The reader task has seen EOF (or a fatal error); nothing more comes.
    eof: bool,
    /// High-water mark of `len`, for tests.
    peak: usize,
}

impl OutputState {
    /// Takes up to `max` (> 0) of the oldest bytes. A first chunk that fits
    /// is moved out whole; later ones are appended while they fit, and a
    /// chunk larger than what is left is split (which copies its rest: the
    /// shim asks for READ_CHUNK bytes, so with it a chunk always fits).
    fn take(&mut self, max: usize) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        while let Some(front) = self.chunks.front_mut() {
            let room = max - out.len();
            if room == 0 {
                break;
            }
            if front.len() <= room {
                let chunk = self.chunks.pop_front().unwrap_or_default();
                if out.is_empty() {
                    out = chunk;
                } else {
                    out.extend_from_slice(&chunk);
                }
            } else {
                let rest = front.split_off(room);
                let head = std::mem::replace(front, rest);
                if out.is_empty() {
                    out = head;
                } else {
                    out.extend_from_slice(&head);
                }
            }
        }
        self.len -= out.len();
        out
    }
}

impl OutputStream {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Mutex::new(OutputState::default()),
            changed: Notify::new(),
            read_lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn read(&self, max: usize) -> Result<Vec<u8>> {
        if max == 0 {
            return Err(AgentError::InvalidArgument {
                field: "len",
                reason: "must be at least 1".into(),
            });
        }
        let max = max.min(MAX_READ);
        let _serial = self.read_lock.lock().await;
        loop {
            // Register interest before looking, so a change between the look
            // and the await is not missed.
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if st.len > 0 {
                    let out = st.take(max);
                    drop(st);
                    // Wakes the reader task if it waits for room, and
                    // `wait_drained` if this was the last byte.
                    self.changed.notify_waiters();
                    return Ok(out);
                }
                if st.eof {
                    return Ok(Vec::new());
                }
            }
            changed.await;
        }
    }

    /// Waits until the buffer has room; returns how much.
    async fn wait_for_room(&self) -> usize {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let room = STREAM_BUFFER_CAP.saturating_sub(lock(&self.state).len);
            if room > 0 {
                return room;
            }
            changed.await;
        }
    }

    fn push(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        st.len += data.len();
        st.chunks.push_back(data);
        st.peak = st.peak.max(st.len);
        drop(st);
        self.changed.notify_waiters();
    }

    fn finish(&self) {
        lock(&self.state).eof = true;
        self.changed.notify_waiters();
    }

    async fn wait_drained(&self) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            {
                let st = lock(&self.state);
                if st.eof && st.len == 0 {
                    return;
                }
            }
            changed.await;
        }
    }
}

/// The reader task of one output stream: pipe/pty → buffer, pausing while
/// the buffer is full, until EOF.
async fn pump(fd: Arc<AsyncFd<OwnedFd>>, stream: Arc<OutputStream>, is_pty: bool) {
    loop {
        // Never read more than fits, so the buffer never exceeds its cap and
        // the excess stays in the kernel, blocking the writer.
        let want = stream.wait_for_room().await.min(READ_CHUNK);
        let mut chunk = Vec::with_capacity(want);
        match read_into(&fd, &mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                // A short read keeps no idle capacity in the buffer (a
                // process printing a byte at a time must not cost a
                // READ_CHUNK per byte); shrinking in place copies nothing.
                if n < want / 2 {
                    chunk.shrink_to_fit();
                }
                stream.push(chunk);
            }
            // A pty master reports EIO once every holder closed the slave:
            // that is the terminal's EOF.
            Err(e) if is_pty && e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!(stream = stream.name, error = %e, "reading process output; treating as EOF");
                break;
            }
        }
    }
    stream.finish();
}

/// One non-blocking `read(2)` into `buf`'s spare capacity (which the
/// caller sized), waiting for readiness; retries EINTR. The bytes read are
/// appended to `buf`. Reading into uninitialized memory spares a pass that
/// zeroes the buffer first.
async fn read_into(fd: &AsyncFd<OwnedFd>, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        let spare = buf.spare_capacity_mut();
        match guard.try_io(|inner| {
            // SAFETY: read(2) writes at most `spare.len()` bytes into the
            // spare capacity, which `buf` owns and nothing else refers to
            // while this runs; the fd is open for the AsyncFd's lifetime.
            let n = unsafe {
                libc::read(
                    inner.get_ref().as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        }) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Ok(n)) => {
                // SAFETY: read(2) initialized the first `n` bytes of the
                // spare capacity, and `n` is at most its length.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Ok(Err(e)) => return Err(e),
            // WouldBlock: readiness was cleared, wait again.
            Err(_would_block) => continue,
        }
    }
}

/// One non-blocking `write(2)`, waiting for readiness; retries EINTR.
async fn write_some(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(res) => return res,
            Err(_would_block) => continue,
        }
    }
}

/// The agent's side of stdin.
#[derive(Debug)]
struct StdinSink {
    /// The pipe's write end or the pty master; `None` once closed or if
    /// stdin was not opened. The async lock serializes writers.
    fd: tokio::sync::Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    /// Set first by `close`, so writers blocked on a full pipe give up
    /// instead of keeping `close` waiting for the lock.
    closed: AtomicBool,
    closed_notify: Notify,
    is_pty: bool,
}

impl StdinSink {
    fn new(fd: Option<Arc<AsyncFd<OwnedFd>>>, is_pty: bool) -> Self {
        Self {
            closed: AtomicBool::new(fd.is_none()),
            fd: tokio::sync::Mutex::new(fd),
            closed_notify: Notify::new(),
            is_pty,
        }
    }

    fn closed_error() -> AgentError {
        AgentError::FailedPrecondition("stdin is closed or was not opened".into())
    }

    async fn write(&self, data: &[u8]) -> Result<usize> {
        let mut closed = pin!(self.closed_notify.notified());
        closed.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        let guard = tokio::select! {
            biased;
            () = closed.as_mut() => return Err(Self::closed_error()),
            guard = self.fd.lock() => guard,
        };
        let Some(fd) = guard.as_ref() else {
            return Err(Self::closed_error());
        };
        let mut written = 0;
        while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
            // Cancelling `write_some` only ever happens while it waits for
            // readiness, never after a byte was written.
            let res = tokio::select! {
                biased;
                () = closed.as_mut() => break,
                res = write_some(fd, rest) => res,
            };
            match res {
                Ok(n) => written += n,
                // The reader is gone (EPIPE), or every holder of the pty
                // slave closed it (EIO): the process no longer has stdin.
                Err(e)
                    if e.raw_os_error() == Some(libc::EPIPE)
                        || (self.is_pty && e.raw_os_error() == Some(libc::EIO)) =>
                {
                    if written > 0 {
                        return Ok(written);
                    }
                    return Err(AgentError::FailedPrecondition(
                        "the process no longer reads its stdin".into(),
                    ));
                }
                Err(e) => return Err(AgentError::sys("writing to stdin", errno_of(&e))),
            }
        }
        if written == 0 && !data.is_empty() {
            return Err(Self::closed_error());
        }
        Ok(written)
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Makes a writer waiting on a full pipe give up the lock.
        self.closed_notify.notify_waiters();
        let Some(fd) = self.fd.lock().await.take() else {
            return;
        };
        if self.is_pty {
            pty::send_eof(fd.get_ref());
        }
        // For a pipe this was the only reference: dropping it closes the
        // write end and the process reads EOF.
    }
}
