//! Log output of the agent: a `tracing` subscriber and where its lines go.
//!
//! As PID 1 the console (`/dev/hvc0`) only appears once `virtio_console` is
//! loaded, but logging starts before that. Until [`attach_console`] is
//! called, every line is written to `/dev/kmsg` (one record per line, with a
//! syslog priority from the event level) *and* kept in a bounded in-memory
//! buffer; attaching the console replays that buffer, so the console log is
//! complete from the first line (`kata-agent starting`). Should the console
//! never appear, `/dev/kmsg` remains the sink. In test mode (not PID 1) lines
//! go to stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogLevel;

/// Largest amount of early output kept for replay onto the console.
const EARLY_BUFFER_MAX: usize = 256 * 1024;
/// The kernel rejects `/dev/kmsg` writes longer than about 1 KiB; stay well below.
const KMSG_RECORD_MAX: usize = 900;
/// Prefix of every `/dev/kmsg` record, after the priority.
const KMSG_TAG: &str = "kata-agent: ";
/// Path of the kernel log device.
pub const KMSG_PATH: &str = "/dev/kmsg";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Test/dev mode: standard error.
    Stderr,
    /// PID 1: `/dev/kmsg` plus replay buffer until the console is attached.
    Boot,
}

struct Sink {
    target: Target,
    console: Option<File>,
    kmsg: Option<File>,
    early: Vec<u8>,
    early_dropped: usize,
}

/// The console's fd once attached, -1 before. Writes to it take no lock:
/// libcontainer forks from this multi-threaded process, and a child that
/// logs while another thread held a userspace lock at fork time would wait
/// for it forever, hanging CreateContainer. A single `write(2)` per event
/// needs no lock; the kernel keeps each write whole.
static CONSOLE_FD: AtomicI32 = AtomicI32::new(-1);

static SINK: Mutex<Sink> = Mutex::new(Sink {
    target: Target::Stderr,
    console: None,
    kmsg: None,
    early: Vec::new(),
    early_dropped: 0,
});

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    crate::locks::lock(&SINK)
}

/// Installs the global subscriber writing to `target` at `level`.
pub fn init(level: LogLevel, target: Target) -> anyhow::Result<()> {
    {
        let mut s = sink();
        s.target = target;
        if target == Target::Boot && s.kmsg.is_none() {
            // Missing /dev/kmsg only means the early log lives in the buffer.
            s.kmsg = OpenOptions::new().write(true).open(KMSG_PATH).ok();
        }
    }
    tracing_subscriber::fmt()
        .with_max_level(level.as_tracing())
        .with_ansi(false)
        .with_writer(SinkMaker)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Makes `console` the log sink and replays the early log onto it.
pub fn attach_console(console: File) -> io::Result<()> {
    let mut s = sink();
    let mut console = console;
    let early = std::mem::take(&mut s.early);
    console.write_all(&early)?;
    if s.early_dropped > 0 {
        let note = format!(
            "(kata-agent: {} bytes of early log not replayed; see the kernel log)\n",
            s.early_dropped
        );
        console.write_all(note.as_bytes())?;
    }
    s.early_dropped = 0;
    s.early.shrink_to_fit();
    // The Sink keeps the File, so the fd stays open for the agent's life.
    CONSOLE_FD.store(console.as_raw_fd(), Ordering::Release);
    s.console = Some(console);
    Ok(())
}

/// Writes `msg` straight to `/dev/kmsg` at critical priority, bypassing the
/// subscriber. Used for fatal errors so they reach the kernel log even when
/// the console works (the kernel log also ends on the console).
pub fn kmsg_critical(msg: &str) {
    let mut s = sink();
    if s.kmsg.is_none() {
        s.kmsg = OpenOptions::new().write(true).open(KMSG_PATH).ok();
    }
    if let Some(k) = s.kmsg.as_mut() {
        write_kmsg(k, 2, msg.as_bytes());
    }
}

fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes `text` as one kmsg record per line, each cut into pieces the
/// kernel accepts. Errors are ignored: kmsg is the sink of last resort.
fn write_kmsg(kmsg: &mut File, priority: u8, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for line in text.lines().filter(|l| !l.is_empty()) {
        for piece in chunk_str(line, KMSG_RECORD_MAX) {
            let record = format!("<{priority}>{KMSG_TAG}{piece}\n");
            let _ = kmsg.write_all(record.as_bytes());
        }
    }
}

/// Cuts `s` into pieces of at most `max` bytes on char boundaries.
fn chunk_str(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// `MakeWriter` handing out [`SinkWriter`]s that know the event's level.
struct SinkMaker;

impl<'a> MakeWriter<'a> for SinkMaker {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter { level: Level::INFO }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SinkWriter {
        SinkWriter {
            level: *meta.level(),
        }
    }
}

/// Writes one formatted event (the fmt layer calls `write_all` once per event).
struct SinkWriter {
    level: Level,
}

/// Writes all of `buf` to `fd` with `write(2)`, retrying on EINTR.
fn write_fd(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `fd` is the console descriptor, kept open by the Sink for
        // the process's life; `buf` is a valid slice for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fd = CONSOLE_FD.load(Ordering::Acquire);
        if fd >= 0 && write_fd(fd, buf).is_ok() {
            return Ok(buf.len());
        }
        let mut s = sink();
        match s.target {
            Target::Stderr => {
                drop(s);
                io::stderr().write_all(buf)?;
            }
            Target::Boot => {
                if let Some(console) = s.console.as_mut() {
                    if console.write_all(buf).is_ok() {
                        return Ok(buf.len());
                    }
                }
                let Sink {
                    kmsg,
                    early,
                    early_dropped,
                    console,
                    ..
                } = &mut *s;
                if let Some(k) = kmsg.as_mut() {
                    write_kmsg(k, kmsg_priority(self.level), buf);
                }
                if console.is_none() {
                    if early.len() + buf.len() <= EARLY_BUFFER_MAX {
                        early.extend_from_slice(buf);
                    } else {
                        *early_dropped += buf.len();
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_limit_and_char_boundaries() {
        assert_eq!(chunk_str("abc", 10), ["abc"]);
        assert_eq!(chunk_str("", 10), [""]);
        assert_eq!(chunk_str("abcdef", 4), ["abcd", "ef"]);
        let s = "é".repeat(10); // 2 bytes each
        let pieces = chunk_str(&s, 5);
        assert!(pieces.iter().all(|p| p.len() <= 5));
        assert_eq!(pieces.concat(), s);
    }

    #[test]
    fn priorities_follow_levels() {
        assert_eq!(kmsg_priority(Level::ERROR), 3);
        assert_eq!(kmsg_priority(Level::WARN), 4);
        assert_eq!(kmsg_priority(Level::INFO), 6);
        assert_eq!(kmsg_priority(Level::TRACE), 7);
    }
}
