//! The copy loops between the agent's streams and the host side: output
//! from the agent into a FIFO, a logger pipe or a file, and stdin from a
//! FIFO into the agent.
//!
//! Back-pressure: an output loop asks the agent for more only after the
//! previous chunk was written, and a FIFO write waits while the pipe is
//! full, so at most one chunk per stream sits in the shim and a slow reader
//! slows the process down (through the agent's bounded buffer) instead of
//! growing memory here.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AgentStreams, Ids};
use crate::agent_client::AgentError;

/// Most bytes asked from the agent per read. The agent answers with what
/// it has buffered, up to this much, so under a steady writer one round
/// trip carries everything that arrived during the previous one: the
/// bigger the chunk, the fewer round trips per MiB. With the next read in
/// flight while a chunk is written (see [`copy_output`]) the shim holds at
/// most two chunks per stream, so this also bounds the shim's memory per
/// stream (the agent holds at most 1 MiB more).
pub(crate) const READ_LEN: u32 = 256 * 1024;
/// Most bytes forwarded to the agent per WriteStdin: one FIFO read, which
/// returns at most what the pipe holds (64 KiB unless the writer grew it).
const STDIN_CHUNK: usize = 128 * 1024;
/// After its reader went away, how often a FIFO is tried again (a
/// restarted CRI-O reopens the FIFOs it finds in State).
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);
/// Longest an ended stream waits for its FIFO's reader to take what is
/// left in the pipe ([`wait_until_read`]).
const DRAIN_WAIT: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(2);
/// Longest pause between attempts to open a FIFO that has no reader yet.
const OPEN_RETRY_MAX: Duration = Duration::from_millis(200);
/// When to say that a FIFO still has no reader.
const OPEN_NOTICE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where an output stream goes, before anything is opened.
pub(crate) enum Dest {
    /// Not connected: the agent is still drained so the process never
    /// blocks on a full pipe.
    Discard,
    Fifo(PathBuf),
    /// The write end of a logging binary's pipe.
    Pipe(OwnedFd),
    /// Appended to this file.
    File(PathBuf),
}

/// An opened destination.
enum Sink {
    Discard,
    Fifo(FifoSink),
    Pipe(pipe::Sender),
    File(FileSink),
}

/// A log file: a chunk it cannot take (a full filesystem, a quota) is
/// dropped and the next one tried again, so output resumes once there is
/// room, and the process never stalls on the file.
struct FileSink {
    file: tokio::fs::File,
    path: PathBuf,
    /// Bytes dropped since the last chunk the file took.
    dropped: u64,
}

struct FifoSink {
    path: PathBuf,
    /// `None` while the reader is gone; bytes are dropped then.
    tx: Option<pipe::Sender>,
    next_reopen: Instant,
}

/// Copies one output stream from the agent until EOF. Returns whether the
/// agent reported EOF and every byte was handed to the destination (or
/// deliberately discarded because nobody reads); the destination is closed
/// when this returns, so its reader sees EOF.
pub(crate) async fn copy_output(
    agent: &dyn AgentStreams,
    ids: &Ids,
    stream: Stream,
    dest: Dest,
) -> bool {
    let mut sink = open(dest, ids, stream).await;
    let mut eof = false;
    // The next read is in flight while the last chunk is written, so the
    // agent keeps filling its buffer during the write and a round trip is
    // never waited for on its own. Only one read is outstanding at a time:
    // the agent answers reads of one stream in order, and two at once
    // could come back in either order.
    let mut chunk: Vec<u8> = Vec::new();
    loop {
        let write = async {
            if !chunk.is_empty() {
                sink.write(&chunk, ids, stream).await;
            }
        };
        let (read, ()) = tokio::join!(read_chunk(agent, ids, stream), write);
        match read {
            Ok(data) if data.is_empty() => {
                eof = true;
                break;
            }
            Ok(data) => chunk = data,
            Err(e) => {
                tracing::warn!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    error = %e,
                    "reading output from the agent failed, the copy stops"
                );
                break;
            }
        }
    }
    let flushed = sink.finish(ids, stream).await;
    eof && flushed
}

async fn read_chunk(
    agent: &dyn AgentStreams,
    ids: &Ids,
    stream: Stream,
) -> Result<Vec<u8>, AgentError> {
    match stream {
        Stream::Stdout => {
            agent
                .read_stdout(&ids.container_id, &ids.exec_id, READ_LEN)
                .await
        }
        Stream::Stderr => {
            agent
                .read_stderr(&ids.container_id, &ids.exec_id, READ_LEN)
                .await
        }
    }
}

async fn open(dest: Dest, ids: &Ids, stream: Stream) -> Sink {
    match dest {
        Dest::Discard => Sink::Discard,
        Dest::Fifo(path) => open_fifo(path, ids, stream).await,
        Dest::Pipe(fd) => match pipe::Sender::from_owned_fd(fd) {
            Ok(tx) => Sink::Pipe(tx),
            Err(e) => {
                tracing::error!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    error = %e,
                    "cannot use the logging binary's pipe, output is discarded"
                );
                Sink::Discard
            }
        },
        Dest::File(path) => match open_file(&path).await {
            Ok(file) => Sink::File(FileSink {
                file,
                path,
                dropped: 0,
            }),
            Err(e) => {
                tracing::error!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %path.display(),
                    error = %e,
                    "cannot open the log file, output is discarded"
                );
                Sink::Discard
            }
        },
    }
}

async fn open_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .await
}

/// Opens a FIFO for writing without ever blocking a thread: the peer
/// normally opened its read end before the request, but if it has not,
/// retry until it does (output waits meanwhile, like containerd's shims).
async fn open_fifo(path: PathBuf, ids: &Ids, stream: Stream) -> Sink {
    let started = Instant::now();
    let mut delay = Duration::from_millis(5);
    let mut noticed = false;
    loop {
        match pipe::OpenOptions::new().open_sender(&path) {
            Ok(tx) => {
                return Sink::Fifo(FifoSink {
                    path,
                    tx: Some(tx),
                    next_reopen: Instant::now(),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if !noticed && started.elapsed() >= OPEN_NOTICE_AFTER {
                    noticed = true;
                    tracing::info!(
                        container_id = %ids.container_id,
                        exec_id = %ids.exec_id,
                        stream = stream.name(),
                        path = %path.display(),
                        "fifo still has no reader, output waits for one"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(OPEN_RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %path.display(),
                    error = %e,
                    "cannot open the fifo, output is discarded"
                );
                return Sink::Discard;
            }
        }
    }
}

impl Sink {
    async fn write(&mut self, data: &[u8], ids: &Ids, stream: Stream) {
        let result = match self {
            Sink::Discard => return,
            Sink::Fifo(f) => return f.write(data, ids, stream).await,
            Sink::Pipe(tx) => tx.write_all(data).await,
            Sink::File(f) => return f.write(data, ids, stream).await,
        };
        if let Err(e) = result {
            // A logger that died, or a file that cannot take more: the
            // process must not stall because of it.
            tracing::warn!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                stream = stream.name(),
                error = %e,
                "writing output failed, the rest is discarded"
            );
            *self = Sink::Discard;
        }
    }

    /// Makes every byte reach the file and closes the destination.
    async fn finish(self, ids: &Ids, stream: Stream) -> bool {
        if let Sink::Fifo(FifoSink { tx: Some(tx), .. }) = &self {
            wait_until_read(tx, ids, stream).await;
        }
        let Sink::File(mut f) = self else {
            return true;
        };
        if f.dropped > 0 {
            // Deliberately dropped, like output nobody reads: the exit is
            // not held up for it.
            tracing::warn!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                stream = stream.name(),
                path = %f.path.display(),
                dropped_bytes = f.dropped,
                "the stream ended while the log file had no room"
            );
            return true;
        }
        match f.file.flush().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    error = %e,
                    "flushing the log file failed"
                );
                false
            }
        }
    }
}

impl FileSink {
    async fn write(&mut self, data: &[u8], ids: &Ids, stream: Stream) {
        // The flush waits for the write to reach the file, so a full
        // filesystem is seen at this chunk, not at a later one.
        let written = match self.file.write_all(data).await {
            Ok(()) => self.file.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) if self.dropped > 0 => {
                tracing::warn!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %self.path.display(),
                    dropped_bytes = self.dropped,
                    "the log file takes output again"
                );
                self.dropped = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if self.dropped == 0 {
                    tracing::warn!(
                        container_id = %ids.container_id,
                        exec_id = %ids.exec_id,
                        stream = stream.name(),
                        path = %self.path.display(),
                        error = %e,
                        "cannot write the log file; output is dropped until it has room"
                    );
                }
                self.dropped += data.len() as u64;
            }
        }
    }
}

/// Waits until the FIFO's reader has taken every byte left in the pipe.
///
/// The exit is reported once the copy returns, and containerd 1.6 answers
/// a TaskExit by closing its read end of the FIFO *before* it waits for its
/// copy (`task.Delete` in its client): whatever was still in the pipe then
/// is lost ("Failed to pipe stdout ... file already closed"). That cut the
/// last 46 KiB off one log in a hundred containers writing 2 MiB each. A
/// reader that went away, or one that stalls past [`DRAIN_WAIT`], does not
/// hold the exit up any longer.
async fn wait_until_read(tx: &pipe::Sender, ids: &Ids, stream: Stream) {
    let fd = tx.as_raw_fd();
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which
        // points at `queued`; `fd` is the open write end `tx` owns (a
        // pipe's FIONREAD counts the bytes in it from either end).
        let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if r != 0 || queued <= 0 || reader_gone(tx) {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                stream = stream.name(),
                unread_bytes = queued,
                "the FIFO's reader left bytes unread; reporting the exit anyway"
            );
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// A pipe's write end polls POLLERR once it has no reader.
fn reader_gone(tx: &pipe::Sender) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(tx.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

impl FifoSink {
    async fn write(&mut self, data: &[u8], ids: &Ids, stream: Stream) {
        if self.tx.is_none() && Instant::now() >= self.next_reopen {
            self.next_reopen = Instant::now() + REOPEN_INTERVAL;
            if let Ok(tx) = pipe::OpenOptions::new().open_sender(&self.path) {
                tracing::info!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %self.path.display(),
                    "fifo has a reader again, output resumes"
                );
                self.tx = Some(tx);
            }
        }
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        if let Err(e) = tx.write_all(data).await {
            // EPIPE (SIGPIPE is ignored): the reader left. Keep draining the
            // agent so the process does not block, and look for a new
            // reader from time to time.
            if e.kind() == ErrorKind::BrokenPipe {
                tracing::info!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %self.path.display(),
                    "fifo reader went away, output is discarded until one returns"
                );
            } else {
                tracing::warn!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    stream = stream.name(),
                    path = %self.path.display(),
                    error = %e,
                    "writing to the fifo failed, output is discarded until it reopens"
                );
            }
            self.tx = None;
            self.next_reopen = Instant::now() + REOPEN_INTERVAL;
        }
    }
}

/// Copies stdin from its FIFO to the agent until the writer closes it or
/// CloseIO asks for it, then closes the process's stdin in the agent.
/// Returns the result of that close.
pub(crate) async fn copy_stdin(
    agent: &dyn AgentStreams,
    ids: &Ids,
    path: &Path,
    mut close_rx: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    // O_RDONLY|O_NONBLOCK never blocks, and epoll reports neither data nor
    // hang-up on a FIFO whose writer has not opened it yet, so a late
    // writer is not mistaken for EOF.
    match pipe::OpenOptions::new().open_receiver(path) {
        Ok(rx) => pump_stdin(agent, ids, rx, &mut close_rx).await,
        Err(e) => tracing::error!(
            container_id = %ids.container_id,
            exec_id = %ids.exec_id,
            path = %path.display(),
            error = %e,
            "cannot open the stdin fifo, closing the process's stdin"
        ),
    }
    match agent.close_stdin(&ids.container_id, &ids.exec_id).await {
        Ok(()) => Ok(()),
        Err(e) if e.status() == Some(ttrpc::Code::NOT_FOUND) => {
            // The process is gone, and its stdin with it.
            tracing::debug!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                "process already gone when closing its stdin"
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(
                container_id = %ids.container_id,
                exec_id = %ids.exec_id,
                error = %e,
                "closing the process's stdin in the agent failed"
            );
            Err(e)
        }
    }
}

async fn pump_stdin(
    agent: &dyn AgentStreams,
    ids: &Ids,
    mut rx: pipe::Receiver,
    close_rx: &mut watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        tokio::select! {
            biased;
            read = rx.read(&mut buf) => match read {
                Ok(0) => {
                    tracing::debug!(
                        container_id = %ids.container_id,
                        exec_id = %ids.exec_id,
                        "stdin writer closed the fifo"
                    );
                    return;
                }
                Ok(n) => {
                    if !forward(agent, ids, &buf[..n]).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        container_id = %ids.container_id,
                        exec_id = %ids.exec_id,
                        error = %e,
                        "reading the stdin fifo failed"
                    );
                    return;
                }
            },
            // An error means the ProcessIo is gone: close as well.
            () = async {
                let _ = close_rx.wait_for(|closed| *closed).await;
            } => {
                // What the client wrote before CloseIO belongs to the
                // process. Read the fd directly: tokio's readiness cache may
                // not have seen those bytes yet.
                while let Ok(n) = nix::unistd::read(rx.as_raw_fd(), &mut buf) {
                    if n == 0 || !forward(agent, ids, &buf[..n]).await {
                        break;
                    }
                }
                return;
            }
        }
    }
}

/// Hands `data` to the agent; false once the process's stdin no longer
/// takes bytes.
async fn forward(agent: &dyn AgentStreams, ids: &Ids, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match agent
            .write_stdin(&ids.container_id, &ids.exec_id, data.to_vec())
            .await
        {
            Ok(0) => {
                tracing::debug!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    "process stdin is closed, dropping further input"
                );
                return false;
            }
            Ok(n) => data = &data[usize::try_from(n).unwrap_or(data.len()).min(data.len())..],
            Err(e) => {
                tracing::warn!(
                    container_id = %ids.container_id,
                    exec_id = %ids.exec_id,
                    error = %e,
                    "writing stdin to the agent failed, dropping further input"
                );
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use std::io::Read;

    fn ids() -> Ids {
        Ids {
            container_id: "c".into(),
            exec_id: "e".into(),
            namespace: "default".into(),
        }
    }

    #[tokio::test]
    async fn an_ended_stream_waits_until_its_reader_took_the_pipe() {
        let (rx, tx) = nix::unistd::pipe().expect("pipe");
        let mut tx = pipe::Sender::from_owned_fd(tx).expect("sender");
        tx.write_all(&[7u8; 40_000]).await.expect("write");
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut buf = Vec::new();
            std::fs::File::from(rx).read_to_end(&mut buf).expect("read");
            buf.len()
        });
        let began = std::time::Instant::now();
        wait_until_read(&tx, &ids(), Stream::Stdout).await;
        assert!(
            began.elapsed() >= Duration::from_millis(150),
            "did not wait for the reader"
        );
        drop(tx);
        assert_eq!(reader.join().expect("reader"), 40_000);
    }

    #[tokio::test]
    async fn a_reader_that_left_does_not_hold_the_exit() {
        let (rx, tx) = nix::unistd::pipe().expect("pipe");
        let mut tx = pipe::Sender::from_owned_fd(tx).expect("sender");
        tx.write_all(&[7u8; 1000]).await.expect("write");
        drop(rx);
        let began = std::time::Instant::now();
        wait_until_read(&tx, &ids(), Stream::Stdout).await;
        assert!(
            began.elapsed() < DRAIN_WAIT,
            "waited for a reader that is gone"
        );
    }
}
