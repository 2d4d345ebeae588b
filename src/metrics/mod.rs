//! The serving shim's metrics in the Prometheus text exposition format
//! (version 0.0.4), under Kata's family names: the shim's own figures
//! (boot phases, agent RPC latency, QEMU's memory, the container count)
//! here, every process's `/proc` figures in [`procfs`], and the guest's in
//! [`guest`].
//!
//! They are served by [`crate::mgmt`] on Kata's management socket. As with
//! Kata's shim, no sample carries `sandbox_id`: kata-monitor adds it (with
//! the CRI labels) when it aggregates, and a duplicate label would make
//! the whole scrape invalid. `kata-ctl metrics` adds it the same way
//! ([`label_all`]).
//!
//! The text is rendered by hand (no Prometheus crate): [`Family`] is one
//! metric with its `# HELP` and `# TYPE` lines, and [`merge`] joins the
//! texts of several shims so each family appears once.

pub mod guest;
pub mod procfs;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (ms) of the agent RPC latency histogram: Kata's buckets
/// (1 ms doubling to 512 ms).
const RPC_BUCKETS_MS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Summary,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Summary => "summary",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample line: name suffix (`""`, `_sum`, `_count`, `_bucket`),
/// labels, value.
type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// One metric family: its help text, type and samples.
#[derive(Debug, Clone)]
pub struct Family {
    name: String,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &str, kind: Kind, help: &'static str) -> Family {
        Family {
            name: name.to_string(),
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// The family's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a sample named `<name><suffix>` (suffix `""`, `_sum`, `_count`,
    /// `_bucket`).
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
            out.push_str(&self.name);
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

/// Latency of one agent RPC: count and sum of successful calls, how many
/// fell in each of [`RPC_BUCKETS_MS`] (not cumulative), the last one, and
/// failures.
#[derive(Debug, Clone, Copy, Default)]
struct RpcStats {
    count: u64,
    sum: Duration,
    last: Duration,
    errors: u64,
    buckets: [u64; RPC_BUCKETS_MS.len()],
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
                let ms = took.as_secs_f64() * 1000.0;
                if let Some(i) = RPC_BUCKETS_MS.iter().position(|le| ms <= *le) {
                    s.buckets[i] += 1;
                }
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

/// The shim's own families of one sandbox.
pub fn shim_families(m: &Metrics, live: &Live) -> Vec<Family> {
    let f = m.figures();
    let mut families = Vec::new();

    let mut up = Family::new("kata_shim_up", Kind::Gauge, "1 while the shim serves.");
    up.sample("", &[], 1.0);
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
        boot.sample("", &[("phase", phase)], took.as_secs_f64());
    }
    families.push(boot);

    let mut histogram = Family::new(
        "kata_shim_agent_rpc_durations_histogram_milliseconds",
        Kind::Histogram,
        "RPC latency distributions.",
    );
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
        let mut cumulative = 0;
        for (le, n) in RPC_BUCKETS_MS.iter().zip(s.buckets) {
            cumulative += n;
            let le = format_value(*le);
            histogram.sample(
                "_bucket",
                &[("action", name), ("le", &le)],
                cumulative as f64,
            );
        }
        histogram.sample(
            "_bucket",
            &[("action", name), ("le", "+Inf")],
            s.count as f64,
        );
        histogram.sample("_sum", &[("action", name)], s.sum.as_secs_f64() * 1000.0);
        histogram.sample("_count", &[("action", name)], s.count as f64);
        let labels = [("rpc", *name)];
        rpc.sample("_sum", &labels, s.sum.as_secs_f64());
        rpc.sample("_count", &labels, s.count as f64);
        if s.count > 0 {
            last.sample("", &labels, s.last.as_secs_f64());
        }
        errors.sample("", &labels, s.errors as f64);
    }
    families.extend([histogram, rpc, last, errors]);

    let mut mem = Family::new(
        "kata_shim_vm_memory_bytes",
        Kind::Gauge,
        "Host memory of the VM's QEMU process: rss (VmRSS), private \
         (Private_Clean + Private_Dirty of smaps_rollup).",
    );
    if let Some(v) = live.qemu_rss {
        mem.sample("", &[("kind", "rss")], v as f64);
    }
    if let Some(v) = live.qemu_private {
        mem.sample("", &[("kind", "private")], v as f64);
    }
    families.push(mem);

    let mut guest = Family::new(
        "kata_shim_vm_guest_memory_bytes",
        Kind::Gauge,
        "Guest memory size the VM was booted with.",
    );
    if let Some(v) = f.guest_memory_bytes {
        guest.sample("", &[], v as f64);
    }
    families.push(guest);

    let mut ctrs = Family::new(
        "kata_shim_containers",
        Kind::Gauge,
        "Containers of the sandbox, its sandbox (pause) container included.",
    );
    ctrs.sample("", &[], live.containers as f64);
    families.push(ctrs);
    families
}

/// The text of a list of families.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for fam in families {
        fam.render(&mut out);
    }
    out
}

/// Adds the label `key="value"` first to every sample line of `text` (what
/// kata-monitor does with `sandbox_id` when it aggregates shims).
pub fn label_all(text: &str, key: &str, value: &str) -> String {
    let label = format!("{key}=\"{}\"", escape_label(value));
    let mut out = String::with_capacity(text.len() + text.lines().count() * (label.len() + 3));
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            out.push_str(line);
        } else {
            match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    out.push_str(&line[..=i]);
                    out.push_str(&label);
                    if !line[i + 1..].starts_with('}') {
                        out.push(',');
                    }
                    out.push_str(&line[i + 1..]);
                }
                Some(i) => {
                    out.push_str(&line[..i]);
                    out.push('{');
                    out.push_str(&label);
                    out.push('}');
                    out.push_str(&line[i..]);
                }
                None => out.push_str(line),
            }
        }
        out.push('\n');
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
        let text = render(&shim_families(&m, &live));
        for want in [
            "# TYPE kata_shim_up gauge\nkata_shim_up 1\n",
            "kata_shim_boot_seconds{phase=\"vm_spawn\"} 0.5\n",
            "# TYPE kata_shim_agent_rpc_durations_histogram_milliseconds histogram\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{action=\"Health.Check\",le=\"8\"} 0\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{action=\"Health.Check\",le=\"16\"} 1\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{action=\"Health.Check\",le=\"32\"} 2\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{action=\"Health.Check\",le=\"+Inf\"} 2\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_sum{action=\"Health.Check\"} 40\n",
            "kata_shim_agent_rpc_durations_histogram_milliseconds_count{action=\"Health.Check\"} 2\n",
            "# TYPE kata_shim_agent_rpc_seconds summary\n",
            "kata_shim_agent_rpc_seconds_sum{rpc=\"Health.Check\"} 0.04\n",
            "kata_shim_agent_rpc_seconds_count{rpc=\"Health.Check\"} 2\n",
            "kata_shim_agent_rpc_last_seconds{rpc=\"Health.Check\"} 0.03\n",
            "kata_shim_agent_rpc_errors_total{rpc=\"Health.Check\"} 1\n",
            "kata_shim_vm_memory_bytes{kind=\"rss\"} 1048576\n",
            "kata_shim_vm_guest_memory_bytes 2147483648\n",
            "kata_shim_containers 2\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("sandbox_id"), "kata-monitor adds it: {text}");
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
    fn label_all_puts_the_label_first_on_every_sample() {
        let text = "# HELP a h\n# TYPE a gauge\na 1\na{x=\"y\"} 2\nb{} 3\n";
        assert_eq!(
            label_all(text, "sandbox_id", "s\"1"),
            "# HELP a h\n# TYPE a gauge\na{sandbox_id=\"s\\\"1\"} 1\n\
             a{sandbox_id=\"s\\\"1\",x=\"y\"} 2\nb{sandbox_id=\"s\\\"1\"} 3\n"
        );
    }

    #[test]
    fn merge_keeps_one_header_per_family_and_groups_samples() {
        let m = Metrics::default();
        let live = Live::default();
        let text = render(&shim_families(&m, &live));
        let a = label_all(&text, "sandbox_id", "a");
        let b = label_all(&text, "sandbox_id", "b");
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
