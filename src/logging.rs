//! Log set-up for the shim's binaries: `tracing` to stderr for the tools,
//! and for the serving shim plain logfmt lines into the bundle's `log` FIFO
//! (which containerd and CRI-O copy into their own logs), with a file under
//! the sandbox's shim directory when nobody reads that FIFO. Where the node
//! has a system log (`/dev/log`), the serving shim's lines also go there
//! under the identifier `kata`, as Kata's shim does ([`Syslog`]), so that
//! `journalctl -t kata` finds them.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogLevel;

/// The system log socket (journald's, or a syslog daemon's).
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// The identifier of the shim's lines in the system log (Kata's).
pub const SYSLOG_IDENT: &str = "kata";
/// Longest line sent to the system log; journald's datagram limit is far
/// above, but a guest console line has no business being longer.
const SYSLOG_LINE_MAX: usize = 8192;

/// Environment variable holding a `tracing` filter that overrides the level.
pub const LOG_ENV: &str = "KATA_LOG";

/// The serving shim's log file when the bundle's FIFO has no reader.
pub const FALLBACK_LOG: &str = "shim.log";

/// Most bytes `shim.log` holds: it lives on the node's `/run`, and guest
/// console lines reach it. Past the cap it is truncated and starts again,
/// so the newest lines are kept.
pub const FALLBACK_LOG_MAX: u64 = 16 << 20;

/// A pipe write of at most this many bytes is atomic: a line either goes
/// in whole or not at all, never interleaved or cut by a full pipe.
const PIPE_BUF: usize = libc::PIPE_BUF;

/// Installs the stderr subscriber; a second call is a no-op.
pub fn init_stderr(level: LogLevel) {
    let filter = std::env::var(LOG_ENV)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level.as_str()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// An error and all its sources on one line, outermost first: how the
/// binaries print a failure once, at the top.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Installs the serving shim's subscriber (a second call is a no-op):
/// logfmt lines to `<bundle>/log` when that FIFO has a reader (containerd
/// holds it open read-write, CRI-O read-only, both before `start`), else
/// appended to `shim.log` in the sandbox's shim directory. Level `debug`
/// with `-debug`, else the `KATA_LOG` filter, else `info`.
pub fn init_daemon(bundle: &Path, sandbox_id: &str, debug: bool) {
    let fallback_dir = crate::ids::validate(sandbox_id)
        .ok()
        .map(|()| crate::layout::shim_dir(sandbox_id));
    let sink = LogSink::open(bundle, fallback_dir.as_deref());
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        std::env::var(LOG_ENV)
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("info"))
    };
    let target = sink.describe();
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .fmt_fields(LogfmtFields)
        .event_format(LogfmtEvent::new(sandbox_id))
        .with_writer(sink.and(Syslog::connect(Path::new(SYSLOG_SOCKET))))
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(sandbox_id, log = %target, pid = std::process::id(), "shim logging started");
    }
}

/// Where the serving shim's lines go. Cloned per event; every write is one
/// `write(2)` that never blocks and never fails the caller.
#[derive(Clone, Debug)]
pub struct LogSink {
    file: Option<Arc<File>>,
    /// Writes go to a pipe: cap lines at `PIPE_BUF` so each is atomic.
    fifo: bool,
    path: String,
    /// Bytes in the fallback file, against [`FALLBACK_LOG_MAX`].
    size: Arc<std::sync::atomic::AtomicU64>,
    /// The cap, [`FALLBACK_LOG_MAX`] outside tests.
    max: u64,
}

impl LogSink {
    /// The bundle's `log` FIFO if it opens for writing without blocking
    /// (it has a reader), else `<fallback_dir>/shim.log`, else nothing.
    pub fn open(bundle: &Path, fallback_dir: Option<&Path>) -> LogSink {
        let fifo_path = bundle.join("log");
        if let Some(file) = open_fifo(&fifo_path) {
            return LogSink {
                file: Some(Arc::new(file)),
                fifo: true,
                path: fifo_path.display().to_string(),
                size: Arc::default(),
                max: u64::MAX,
            };
        }
        if let Some(dir) = fallback_dir {
            let path = dir.join(FALLBACK_LOG);
            if let Some(file) = open_fallback(dir, &path) {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                return LogSink {
                    file: Some(Arc::new(file)),
                    fifo: false,
                    path: path.display().to_string(),
                    size: Arc::new(std::sync::atomic::AtomicU64::new(len)),
                    max: FALLBACK_LOG_MAX,
                };
            }
        }
        LogSink {
            file: None,
            fifo: false,
            path: String::new(),
            size: Arc::default(),
            max: u64::MAX,
        }
    }

    /// Truncates the fallback file when `more` bytes would take it past
    /// its cap (the file is opened for appending: the next line starts it).
    fn make_room(&self, file: &File, more: usize) {
        use std::sync::atomic::Ordering;
        if self.fifo {
            return;
        }
        let more = more as u64;
        let after = self.size.fetch_add(more, Ordering::Relaxed) + more;
        if after > self.max && file.set_len(0).is_ok() {
            self.size.store(more, Ordering::Relaxed);
        }
    }

    fn describe(&self) -> String {
        if self.file.is_some() {
            self.path.clone()
        } else {
            "nowhere".to_string()
        }
    }
}

fn open_fifo(path: &Path) -> Option<File> {
    // No O_CREAT: a FIFO is the caller's to make; a regular file named
    // `log` is not ours to grow. O_NONBLOCK makes the open fail (ENXIO)
    // instead of waiting for a reader, and writes fail instead of blocking.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let is_fifo = file.metadata().ok()?.file_type().is_fifo();
    is_fifo.then_some(file)
}

fn open_fallback(dir: &Path, path: &Path) -> Option<File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ok()?;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .ok()
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = &self.file else {
            return Ok(buf.len());
        };
        let mut capped;
        let line = if self.fifo && buf.len() > PIPE_BUF {
            capped = buf[..PIPE_BUF - 1].to_vec();
            capped.push(b'\n');
            &capped[..]
        } else {
            buf
        };
        self.make_room(file, line.len());
        let mut rest = line;
        while !rest.is_empty() {
            match (&**file).write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EAGAIN: the reader is behind, drop the line rather than
                // stall an RPC. EPIPE: no reader right now (containerd
                // restarting); SIGPIPE is ignored, so this is all we see.
                // Anything else: logging must not fail the shim.
                Err(_) => break,
            }
            if self.fifo {
                // A FIFO write of <= PIPE_BUF bytes is all or nothing.
                break;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The serving shim's lines in the system log, as `<pri>kata[<pid>]: <line>`
/// datagrams (RFC 3164's form, which journald and syslog daemons take),
/// the priority from the line's `level=`. Sends never block: a full or
/// missing log drops the line.
#[derive(Clone, Debug)]
pub struct Syslog {
    sock: Option<Arc<std::os::unix::net::UnixDatagram>>,
    pid: u32,
}

impl Syslog {
    /// Connects to the log socket at `path`; without one, writes go nowhere.
    pub fn connect(path: &Path) -> Syslog {
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(path).map(|()| s))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok();
        Syslog {
            sock: sock.map(Arc::new),
            pid: std::process::id(),
        }
    }

    /// Facility user (1), severity from the logfmt `level=`.
    fn priority(line: &str) -> u8 {
        let severity = match line.split_once("level=").map(|(_, r)| r) {
            Some(r) if r.starts_with("error") => 3,
            Some(r) if r.starts_with("warn") => 4,
            Some(r) if r.starts_with("info") => 6,
            _ => 7,
        };
        8 + severity
    }
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(sock) = &self.sock {
            let line = String::from_utf8_lossy(&buf[..buf.len().min(SYSLOG_LINE_MAX)]);
            let line = line.trim_end_matches('\n');
            let msg = format!(
                "<{}>{SYSLOG_IDENT}[{}]: {line}",
                Self::priority(line),
                self.pid
            );
            let _ = sock.send(msg.as_bytes());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Syslog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Fields as ` key=value` pairs, values quoted and escaped when they hold
/// anything but plain printable text, so one event stays one line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogfmtFields;

impl<'w> FormatFields<'w> for LogfmtFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = LogfmtVisitor {
            writer,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Every pair carries its own leading space: no separator needed.
        self.format_fields(current.as_writer(), fields)
    }
}

struct LogfmtVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
}

impl LogfmtVisitor<'_> {
    fn pair(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let key = match field.name() {
            "message" => "msg",
            name => name.strip_prefix("r#").unwrap_or(name),
        };
        self.result =
            write!(self.writer, " {key}=").and_then(|()| write_value(&mut self.writer, value));
    }
}

impl Visit for LogfmtVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.pair(field, &error_chain(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, &format!("{value:?}"));
    }
}

fn write_value(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        w.write_str(value)
    } else {
        // Rust's string escaping matches logfmt's: quotes, backslashes and
        // control characters escaped inside double quotes.
        write!(w, "{value:?}")
    }
}

/// `time=… level=… msg=… fields… span fields… sandbox=… target=…`, one per
/// line. The sandbox is on every line because containerd mixes the logs of
/// all its shims into one stream.
#[derive(Debug, Clone)]
pub struct LogfmtEvent {
    sandbox: String,
}

impl LogfmtEvent {
    pub fn new(sandbox_id: &str) -> LogfmtEvent {
        LogfmtEvent {
            sandbox: sandbox_id.to_string(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LogfmtEvent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("time=")?;
        SystemTime.format_time(&mut w)?;
        write!(w, " level={}", meta.level().as_str().to_ascii_lowercase())?;
        ctx.format_fields(w.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    w.write_str(fields)?;
                }
            }
        }
        w.write_str(" sandbox=")?;
        write_value(&mut w, &self.sandbox)?;
        writeln!(w, " target={}", meta.target())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Mutex;

    use super::*;

    /// Collects formatted lines in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    }

    #[test]
    fn lines_are_logfmt_with_span_fields() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug"))
            .with_ansi(false)
            .fmt_fields(LogfmtFields)
            .event_format(LogfmtEvent::new("sb1"))
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", container_id = "c1").entered();
            let err = io::Error::other("boom");
            tracing::warn!(
                exec_id = "e 1",
                error = &err as &dyn std::error::Error,
                n = 3,
                "line\nbreak"
            );
            drop(span);
            tracing::trace!("filtered out");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        assert!(line.starts_with("time="), "{line}");
        assert!(
            line.contains(" level=warn msg=\"line\\nbreak\" exec_id=\"e 1\" error=boom n=3"),
            "{line}"
        );
        assert!(
            line.contains(" container_id=c1 sandbox=sb1 target="),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "{line}");
    }

    #[test]
    fn no_reader_falls_back_to_the_shim_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle");
        let shim_dir = dir.path().join("shim");

        // Missing FIFO.
        let mut sink = LogSink::open(&bundle, Some(&shim_dir));
        assert!(!sink.fifo);
        sink.write_all(b"one\n").expect("write");
        // FIFO nobody reads.
        mkfifo(&bundle.join("log"));
        let mut sink = LogSink::open(&bundle, Some(&shim_dir));
        assert!(!sink.fifo);
        sink.write_all(b"two\n").expect("write");
        let text = std::fs::read_to_string(shim_dir.join(FALLBACK_LOG)).expect("read");
        assert_eq!(text, "one\ntwo\n");

        // Nowhere at all still accepts writes.
        let mut none = LogSink::open(&bundle, None);
        assert!(none.file.is_none());
        assert_eq!(none.write(b"lost\n").expect("write"), 5);
    }

    /// Issue 14: the fallback `shim.log` under `/run` had no size limit,
    /// and guest console lines reach it.
    #[test]
    fn the_fallback_log_stays_under_its_cap_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle");
        let shim_dir = dir.path().join("shim");
        let mut sink = LogSink::open(&bundle, Some(&shim_dir));
        sink.max = 64 << 10;
        let path = shim_dir.join(FALLBACK_LOG);
        let mut peak = 0;
        for i in 0..10_000 {
            writeln!(sink, "guest console line {i:05} {}", "x".repeat(100)).expect("write");
            peak = peak.max(std::fs::metadata(&path).expect("stat").len());
        }
        println!("10,000 lines of 126 bytes: the log peaked at {peak} bytes");
        assert!(peak <= 64 << 10, "{peak}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with(&format!("line 09999 {}\n", "x".repeat(100))));
        assert!(text.starts_with("guest console line "), "whole lines only");
        // The real cap.
        assert_eq!(FALLBACK_LOG_MAX, 16 << 20);
    }

    #[test]
    fn fifo_writes_never_block_or_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("log");
        mkfifo(&fifo);
        // As CRI-O does: a read-only, non-blocking reader before `start`.
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("reader");
        let mut sink = LogSink::open(dir.path(), None);
        assert!(sink.fifo);
        sink.write_all(b"hello\n").expect("write");
        let mut buf = [0u8; 64];
        let n = reader.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"hello\n");

        // A long line arrives capped and whole.
        let long = vec![b'x'; 3 * PIPE_BUF];
        sink.write_all(&long).expect("write");
        let mut got = vec![0u8; 4 * PIPE_BUF];
        let n = reader.read(&mut got).expect("read");
        assert_eq!(n, PIPE_BUF);
        assert_eq!(got[n - 1], b'\n');

        // Fill the pipe (64 KiB by default): excess lines are dropped.
        let line = [b'y'; 1000];
        for _ in 0..200 {
            assert_eq!(sink.write(&line).expect("full pipe"), line.len());
        }
        // Reader gone: EPIPE is swallowed (SIGPIPE is ignored by the
        // Rust runtime in tests, by the shim explicitly).
        drop(reader);
        assert_eq!(sink.write(b"gone\n").expect("epipe"), 5);
    }

    #[test]
    fn lines_reach_the_system_log_as_kata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let journal = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let mut log = Syslog::connect(&path);
        log.write_all(b"time=1 level=warn msg=\"slow\" sandbox_id=a\n")
            .expect("write");
        log.write_all(b"time=2 level=info msg=x\n").expect("write");
        let mut buf = [0u8; 256];
        let n = journal.recv(&mut buf).expect("recv");
        let want = format!(
            "<12>kata[{}]: time=1 level=warn msg=\"slow\" sandbox_id=a",
            std::process::id()
        );
        assert_eq!(std::str::from_utf8(&buf[..n]).expect("utf8"), want);
        let n = journal.recv(&mut buf).expect("recv");
        assert!(
            std::str::from_utf8(&buf[..n])
                .expect("utf8")
                .starts_with("<14>kata[")
        );
        // No log socket: lines go nowhere, and nothing fails.
        let mut none = Syslog::connect(&dir.path().join("missing"));
        assert_eq!(none.write(b"level=error msg=x\n").expect("write"), 18);
    }
}
