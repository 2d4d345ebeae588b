//! The serving shim's metrics: boot phases, agent RPC latency, QEMU's
//! memory and the container count of one sandbox, in the Prometheus text
//! exposition format (version 0.0.4), every sample labelled with
//! `sandbox_id`.
//!
//! They are served on `/run/kata-shim/<sandbox-id>/metrics.sock` (mode
//! 0600, inside the shim's 0700 directory, so root only). The protocol is
//! a minimal HTTP/1.0 exchange: one request per connection (any `GET`,
//! e.g. `curl --unix-socket ... http://x/metrics`), answered with
//! `HTTP/1.0 200 OK`, a `Content-Length` and the text, then the shim closes
//! the connection. `kata-ctl metrics` is the client. The socket goes with
//! the rest of the shim directory at teardown.
//!
//! The text is rendered by hand (no Prometheus crate): [`Family`] is one
//! metric with its `# HELP` and `# TYPE` lines, and [`merge`] joins the
//! texts of several shims so each family appears once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests are a request line and a few headers; anything longer is cut.
const MAX_REQUEST: usize = 8192;

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Summary => "summary",
        }
    }
}

/// One sample line: name suffix (`""`, `_sum`, `_count`), labels, value.
type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// One metric family: its help text, type and samples.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample named `<name><suffix>` (suffix `""`, `_sum`, `_count`).
    pub fn sample(
        &mut self,
        suffix: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) -> &mut Family {
        let labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.samples.push((suffix, labels, value));
        self
    }

    /// The family's lines; nothing when it has no sample (a family whose
    /// figure is unknown, e.g. QEMU's memory before boot, is left out).
    pub fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for (suffix, labels, value) in &self.samples {
            out.push_str(self.name);
            out.push_str(suffix);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(*value));
        }
    }
}

/// Label values escape `\`, `"` and newlines.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help texts escape `\` and newlines (quotes stay).
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

/// Integers without a fraction; everything else as Rust prints a float,
/// which Prometheus parses (`NaN`, `+Inf` spelled its way).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Latency of one agent RPC: count and sum of successful calls (a
/// Prometheus summary without quantiles), the last one, and failures.
#[derive(Debug, Clone, Copy, Default)]
struct RpcStats {
    count: u64,
    sum: Duration,
    last: Duration,
    errors: u64,
}

#[derive(Debug, Default)]
struct Figures {
    /// Boot phases in the order they were recorded.
    boot: Vec<(&'static str, Duration)>,
    guest_memory_bytes: Option<u64>,
    rpcs: Vec<(&'static str, RpcStats)>,
}

/// What the sandbox records as it goes; read when a client asks.
#[derive(Debug, Default)]
pub struct Metrics {
    figures: Mutex<Figures>,
}

impl Metrics {
    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        crate::locks::lock(&self.figures)
    }

    /// Records how long a boot phase took (a rerun replaces it).
    pub fn boot_phase(&self, phase: &'static str, took: Duration) {
        let mut f = self.figures();
        match f.boot.iter_mut().find(|(p, _)| *p == phase) {
            Some(entry) => entry.1 = took,
            None => f.boot.push((phase, took)),
        }
    }

    /// Records the guest memory size the VM was booted with.
    pub fn guest_memory_mib(&self, mib: u32) {
        self.figures().guest_memory_bytes = Some(u64::from(mib) << 20);
    }

    /// Records one agent RPC: its latency when it succeeded, else a failure.
    pub fn rpc(&self, rpc: &'static str, outcome: Result<Duration, ()>) {
        let mut f = self.figures();
        let idx = match f.rpcs.iter().position(|(r, _)| *r == rpc) {
            Some(i) => i,
            None => {
                f.rpcs.push((rpc, RpcStats::default()));
                f.rpcs.len() - 1
            }
        };
        let s = &mut f.rpcs[idx].1;
        match outcome {
            Ok(took) => {
                s.count += 1;
                s.sum += took;
                s.last = took;
            }
            Err(()) => s.errors += 1,
        }
    }
}

/// What is read from the host at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub containers: usize,
    /// QEMU's resident set (`VmRSS`), when QEMU runs.
    pub qemu_rss: Option<u64>,
    /// QEMU's private memory (`Private_Clean + Private_Dirty`).
    pub qemu_private: Option<u64>,
}

/// `VmRSS` from `/proc/<pid>/status` and the private bytes from
/// `/proc/<pid>/smaps_rollup`, in bytes.
pub fn qemu_memory(pid: u32) -> (Option<u64>, Option<u64>) {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    let rss = read("status").and_then(|s| kib_field(&s, "VmRSS:"));
    let private = read("smaps_rollup").and_then(|s| {
        let clean = kib_field(&s, "Private_Clean:")?;
        let dirty = kib_field(&s, "Private_Dirty:")?;
        Some(clean + dirty)
    });
    (rss, private)
}

/// The `<key> <n> kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The whole text of one sandbox.
pub fn render(sandbox_id: &str, m: &Metrics, live: &Live) -> String {
    let f = m.figures();
    let sid = ("sandbox_id", sandbox_id);
    let mut families = Vec::new();

    let mut up = Family::new("kata_shim_up", Kind::Gauge, "1 while the shim serves.");
    up.sample("", &[sid], 1.0);
    families.push(up);

    let mut boot = Family::new(
        "kata_shim_boot_seconds",
        Kind::Gauge,
        "Duration of each sandbox boot phase: vm_spawn (start call until QEMU \
         was spawned, helpers included), agent_ready (QEMU spawned until the \
         agent passed its health check), create_sandbox (the agent's \
         CreateSandbox), total (the whole boot).",
    );
    for (phase, took) in &f.boot {
        boot.sample("", &[sid, ("phase", phase)], took.as_secs_f64());
    }
    families.push(boot);

    let mut rpc = Family::new(
        "kata_shim_agent_rpc_seconds",
        Kind::Summary,
        "Latency of successful agent RPCs.",
    );
    let mut last = Family::new(
        "kata_shim_agent_rpc_last_seconds",
        Kind::Gauge,
        "Latency of the last successful agent RPC.",
    );
    let mut errors = Family::new(
        "kata_shim_agent_rpc_errors_total",
        Kind::Counter,
        "Agent RPCs that failed or timed out.",
    );
    for (name, s) in &f.rpcs {
        let labels = [sid, ("rpc", name)];
        rpc.sample("_sum", &labels, s.sum.as_secs_f64());
        rpc.sample("_count", &labels, s.count as f64);
        if s.count > 0 {
            last.sample("", &labels, s.last.as_secs_f64());
        }
        errors.sample("", &labels, s.errors as f64);
    }
    families.extend([rpc, last, errors]);

    let mut mem = Family::new(
        "kata_shim_vm_memory_bytes",
        Kind::Gauge,
        "Host memory of the VM's QEMU process: rss (VmRSS), private \
         (Private_Clean + Private_Dirty of smaps_rollup).",
    );
    if let Some(v) = live.qemu_rss {
        mem.sample("", &[sid, ("kind", "rss")], v as f64);
    }
    if let Some(v) = live.qemu_private {
        mem.sample("", &[sid, ("kind", "private")], v as f64);
    }
    families.push(mem);

    let mut guest = Family::new(
        "kata_shim_vm_guest_memory_bytes",
        Kind::Gauge,
        "Guest memory size the VM was booted with.",
    );
    if let Some(v) = f.guest_memory_bytes {
        guest.sample("", &[sid], v as f64);
    }
    families.push(guest);

    let mut ctrs = Family::new(
        "kata_shim_containers",
        Kind::Gauge,
        "Containers of the sandbox, its sandbox (pause) container included.",
    );
    ctrs.sample("", &[sid], live.containers as f64);
    families.push(ctrs);

    let mut out = String::new();
    for fam in &families {
        fam.render(&mut out);
    }
    out
}

/// One family while merging: name, `# HELP` line, `# TYPE` line, samples.
type Merged = (String, Option<String>, Option<String>, Vec<String>);

/// The index of family `name`, appended when new.
fn family_index(families: &mut Vec<Merged>, name: &str) -> usize {
    match families.iter().position(|f| f.0 == name) {
        Some(i) => i,
        None => {
            families.push((name.to_string(), None, None, Vec::new()));
            families.len() - 1
        }
    }
}

/// Joins the texts of several shims: each family's `# HELP` and `# TYPE`
/// once, followed by all its samples, families in order of appearance
/// (the text format wants a family's lines together).
pub fn merge<S: AsRef<str>>(texts: &[S]) -> String {
    let mut families: Vec<Merged> = Vec::new();
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.as_ref().lines() {
            let meta = line
                .strip_prefix("# HELP ")
                .map(|r| (true, r))
                .or_else(|| line.strip_prefix("# TYPE ").map(|r| (false, r)));
            if let Some((is_help, rest)) = meta {
                let name = rest.split_whitespace().next().unwrap_or_default();
                let i = family_index(&mut families, name);
                let slot = if is_help {
                    &mut families[i].1
                } else {
                    &mut families[i].2
                };
                slot.get_or_insert_with(|| line.to_string());
                current = Some(i);
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                // A sample without a preceding TYPE forms its own family.
                let name = line
                    .split(|c: char| c == '{' || c.is_whitespace())
                    .next()
                    .unwrap_or_default();
                let i = match current {
                    Some(i) if name.starts_with(families[i].0.as_str()) => i,
                    _ => family_index(&mut families, name),
                };
                families[i].3.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (_, help, ty, samples) in families {
        for line in help.iter().chain(ty.iter()).chain(samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The endpoint of a serving shim; dropping it stops serving (the socket
/// file goes with the shim directory, or with [`Endpoint::remove`]).
#[derive(Debug)]
pub struct Endpoint {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Stops serving and removes the socket.
    pub fn remove(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renders the whole text of one sandbox at scrape time.
pub type Renderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `metrics.sock` in the shim directory of `sandbox_id` (which
/// `start` created, mode 0700) and serves what `render` returns. A failure
/// is logged, not fatal: the pod works without metrics.
pub fn serve(sandbox_id: &str, render: Renderer) -> Option<Endpoint> {
    let path = crate::layout::metrics_socket(sandbox_id);
    let sb = Scraped {
        id: sandbox_id.to_string(),
        render,
    };
    match bind(&path) {
        Ok(listener) => {
            tracing::info!(sandbox_id = %sb.id, socket = %path.display(), "serving metrics");
            let task = tokio::spawn(accept_loop(Arc::new(sb), listener));
            Some(Endpoint { path, task })
        }
        Err(e) => {
            tracing::warn!(sandbox_id = %sb.id, socket = %path.display(), error = %e,
                "cannot serve metrics");
            None
        }
    }
}

fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A stale socket of a previous shim of this id.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    // The directory is 0700 already; the mode says root-only on its own.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What the endpoint serves.
struct Scraped {
    id: String,
    render: Renderer,
}

async fn accept_loop(sb: Arc<Scraped>, listener: tokio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(sb.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %sb.id, error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request (up to the blank line ending its headers) and
/// answers it.
async fn answer(sb: Arc<Scraped>, mut stream: tokio::net::UnixStream) {
    let mut req = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            if req.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let response = if req.starts_with(b"GET ") {
        let body = (sb.render)();
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n".to_string()
    };
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        tracing::debug!(sandbox_id = %sb.id, error = %e, "metrics client went away");
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_escaped_labels() {
        let mut f = Family::new("m_seconds", Kind::Gauge, "Back\\slash\nnewline \"q\".");
        f.sample("", &[("sandbox_id", "a\"b\\c\nd"), ("phase", "x")], 1.5);
        f.sample("", &[], 3.0);
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP m_seconds Back\\\\slash\\nnewline \"q\".\n\
             # TYPE m_seconds gauge\n\
             m_seconds{sandbox_id=\"a\\\"b\\\\c\\nd\",phase=\"x\"} 1.5\n\
             m_seconds 3\n"
        );
        let mut empty = String::new();
        Family::new("none", Kind::Counter, "h").render(&mut empty);
        assert_eq!(empty, "", "a family without samples is left out");
    }

    #[test]
    fn values_use_prometheus_spelling() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(4096.0), "4096");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn sandbox_text_has_every_family() {
        let m = Metrics::default();
        m.boot_phase("vm_spawn", Duration::from_millis(250));
        m.boot_phase("vm_spawn", Duration::from_millis(500));
        m.guest_memory_mib(2048);
        m.rpc("Health.Check", Ok(Duration::from_millis(10)));
        m.rpc("Health.Check", Ok(Duration::from_millis(30)));
        m.rpc("Health.Check", Err(()));
        let live = Live {
            containers: 2,
            qemu_rss: Some(1 << 20),
            qemu_private: None,
        };
        let text = render("sb1", &m, &live);
        for want in [
            "# TYPE kata_shim_up gauge\nkata_shim_up{sandbox_id=\"sb1\"} 1\n",
            "kata_shim_boot_seconds{sandbox_id=\"sb1\",phase=\"vm_spawn\"} 0.5\n",
            "# TYPE kata_shim_agent_rpc_seconds summary\n",
            "kata_shim_agent_rpc_seconds_sum{sandbox_id=\"sb1\",rpc=\"Health.Check\"} 0.04\n",
            "kata_shim_agent_rpc_seconds_count{sandbox_id=\"sb1\",rpc=\"Health.Check\"} 2\n",
            "kata_shim_agent_rpc_last_seconds{sandbox_id=\"sb1\",rpc=\"Health.Check\"} 0.03\n",
            "kata_shim_agent_rpc_errors_total{sandbox_id=\"sb1\",rpc=\"Health.Check\"} 1\n",
            "kata_shim_vm_memory_bytes{sandbox_id=\"sb1\",kind=\"rss\"} 1048576\n",
            "kata_shim_vm_guest_memory_bytes{sandbox_id=\"sb1\"} 2147483648\n",
            "kata_shim_containers{sandbox_id=\"sb1\"} 2\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(text.matches("phase=\"vm_spawn\"").count(), 1, "{text}");
        assert!(!text.contains("kind=\"private\""));
        // Every sample line belongs to the family TYPE'd last.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().expect("name");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
    }

    #[test]
    fn merge_keeps_one_header_per_family_and_groups_samples() {
        let m = Metrics::default();
        let live = Live::default();
        let a = render("a", &m, &live);
        let b = render("b", &m, &live);
        let merged = merge(&[a, b]);
        assert_eq!(merged.matches("# HELP kata_shim_up ").count(), 1);
        assert_eq!(merged.matches("# TYPE kata_shim_up ").count(), 1);
        assert!(merged.contains(
            "# TYPE kata_shim_up gauge\n\
             kata_shim_up{sandbox_id=\"a\"} 1\n\
             kata_shim_up{sandbox_id=\"b\"} 1\n"
        ));
        assert!(merged.contains(
            "kata_shim_containers{sandbox_id=\"a\"} 0\n\
             kata_shim_containers{sandbox_id=\"b\"} 0\n"
        ));
    }

    #[test]
    fn proc_fields_are_read_in_bytes() {
        let status = "Name:\tqemu\nVmRSS:\t  123456 kB\nVmSwap:\t0 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(123456 * 1024));
        assert_eq!(kib_field(status, "VmHWM:"), None);
        let (rss, private) = qemu_memory(std::process::id());
        assert!(rss.is_some_and(|v| v > 0));
        assert!(private.is_some_and(|v| v > 0));
    }
}
