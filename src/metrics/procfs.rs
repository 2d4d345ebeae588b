//! One process's figures from its `/proc/<pid>` texts, as Kata's families
//! `<prefix>_fds`, `_threads`, `_proc_status`, `_proc_stat` and `_io_stat`
//! (`kata_shim`, `kata_hypervisor`, `kata_virtiofsd`, and `kata_agent` for
//! the agent, whose texts come from the guest), and `/proc/net/dev` as
//! `<prefix>_netdev`.
//!
//! The parsers take only the keys they know, bound every count, and drop a
//! line they cannot read: the agent's texts are written by the guest.

use super::{Family, Kind};

/// The `/proc/<pid>/status` keys reported, as `item` labels: memory in
/// bytes (the file says kB), context switches as counts.
const STATUS_KEYS: [&str; 19] = [
    "VmPeak",
    "VmSize",
    "VmLck",
    "VmPin",
    "VmHWM",
    "VmRSS",
    "RssAnon",
    "RssFile",
    "RssShmem",
    "VmData",
    "VmStk",
    "VmExe",
    "VmLib",
    "VmPTE",
    "VmPMD",
    "VmSwap",
    "HugetlbPages",
    "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches",
];

/// The fields of `/proc/<pid>/stat` reported (clock ticks), by their index
/// counted from the field after the command's closing parenthesis (field 3).
const STAT_FIELDS: [(&str, usize); 4] =
    [("utime", 11), ("stime", 12), ("cutime", 13), ("cstime", 14)];

/// The keys of `/proc/<pid>/io`, with the item label Kata's host families
/// use for each.
const IO_KEYS: [(&str, &str); 7] = [
    ("rchar", "rchar"),
    ("wchar", "wchar"),
    ("syscr", "syscr"),
    ("syscw", "syscw"),
    ("read_bytes", "readbytes"),
    ("write_bytes", "writebytes"),
    ("cancelled_write_bytes", "cancelledwritebytes"),
];

/// The 16 columns of `/proc/net/dev`, in order.
const NETDEV_ITEMS: [&str; 16] = [
    "recv_bytes",
    "recv_packets",
    "recv_errs",
    "recv_drop",
    "recv_fifo",
    "recv_frame",
    "recv_compressed",
    "recv_multicast",
    "sent_bytes",
    "sent_packets",
    "sent_errs",
    "sent_drop",
    "sent_fifo",
    "sent_colls",
    "sent_carrier",
    "sent_compressed",
];

/// Most interfaces reported from one `/proc/net/dev`.
pub const MAX_INTERFACES: usize = 64;

/// A label value taken from a `/proc` text (an interface or disk name):
/// short, and only characters that need no escaping and cannot be read
/// as something else.
pub fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

/// A non-negative integer as `/proc` writes it.
pub(super) fn number(s: &str) -> Option<f64> {
    s.parse::<u64>().ok().map(|v| v as f64)
}

/// `(key, value)` of the `status` keys found, memory in bytes.
pub fn status_items(status: &str) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for line in status.lines().take(256) {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(&known) = STATUS_KEYS.iter().find(|k| **k == key) else {
            continue;
        };
        if out.iter().any(|(k, _)| *k == known) {
            continue;
        }
        let mut words = rest.split_whitespace();
        let Some(v) = words.next().and_then(number) else {
            continue;
        };
        let v = if words.next() == Some("kB") {
            v * 1024.0
        } else {
            v
        };
        out.push((known, v));
    }
    out
}

/// The `Threads:` line of a status text.
pub fn threads(status: &str) -> Option<f64> {
    status
        .lines()
        .take(256)
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| number(v.trim()))
}

/// `utime`, `stime`, `cutime`, `cstime` of a stat line. The command name
/// may hold spaces and parentheses, so fields are counted after the last
/// `)`.
pub fn stat_items(stat: &str) -> Vec<(&'static str, f64)> {
    let Some(end) = stat.rfind(')') else {
        return Vec::new();
    };
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().take(64).collect();
    STAT_FIELDS
        .iter()
        .filter_map(|(name, i)| fields.get(*i).and_then(|f| number(f)).map(|v| (*name, v)))
        .collect()
}

/// The keys of an io text, with Kata's host label (`host_labels`) or the
/// file's own key (the agent's families).
pub fn io_items(io: &str, host_labels: bool) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for line in io.lines().take(64) {
        let Some((key, v)) = line.split_once(':') else {
            continue;
        };
        let Some((file_key, host_key)) = IO_KEYS.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        let label = if host_labels { *host_key } else { *file_key };
        if let (Some(v), false) = (number(v.trim()), out.iter().any(|(k, _)| *k == label)) {
            out.push((label, v));
        }
    }
    out
}

/// `(interface, item, value)` of a `/proc/net/dev` text.
pub fn netdev_items(netdev: &str) -> Vec<(String, &'static str, f64)> {
    let mut out = Vec::new();
    let mut seen = 0;
    for line in netdev.lines().take(MAX_INTERFACES + 2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let values: Vec<f64> = rest.split_whitespace().map_while(number).collect();
        if !valid_name(name) || values.len() != NETDEV_ITEMS.len() || seen == MAX_INTERFACES {
            continue;
        }
        seen += 1;
        for (item, v) in NETDEV_ITEMS.iter().zip(values) {
            out.push((name.to_string(), *item, v));
        }
    }
    out
}

/// The texts of one process.
#[derive(Debug, Default, Clone)]
pub struct ProcTexts {
    pub status: String,
    pub stat: String,
    pub io: String,
    /// Open descriptors, when they could be counted.
    pub fds: Option<u64>,
}

impl ProcTexts {
    /// Reads `/proc/<pid>` on the host (`self` for the shim). A process
    /// that is gone gives empty texts, and its families are left out.
    pub fn read_host(pid: &str) -> ProcTexts {
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        ProcTexts {
            status: read("status"),
            stat: read("stat"),
            // Another user's io is root-only; the shim runs as root.
            io: read("io"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(|d| d.count() as u64),
        }
    }
}

/// Kata's five families of one process under `prefix`; `host_io_labels`
/// chooses the io item spelling (host processes, or the agent's own).
pub fn process_families(prefix: &str, t: &ProcTexts, host_io_labels: bool) -> Vec<Family> {
    let mut fds = Family::new(
        &format!("{prefix}_fds"),
        Kind::Gauge,
        "Open file descriptors.",
    );
    if let Some(n) = t.fds {
        fds.sample("", &[], n as f64);
    }
    let mut threads_f = Family::new(&format!("{prefix}_threads"), Kind::Gauge, "Threads.");
    if let Some(n) = threads(&t.status) {
        threads_f.sample("", &[], n);
    }
    let mut status = Family::new(
        &format!("{prefix}_proc_status"),
        Kind::Gauge,
        "Process status (see /proc/<pid>/status): memory in bytes, context switches.",
    );
    for (item, v) in status_items(&t.status) {
        status.sample("", &[("item", &item.to_ascii_lowercase())], v);
    }
    let mut stat = Family::new(
        &format!("{prefix}_proc_stat"),
        Kind::Gauge,
        "Process CPU time in clock ticks (see /proc/<pid>/stat).",
    );
    for (item, v) in stat_items(&t.stat) {
        stat.sample("", &[("item", item)], v);
    }
    let mut io = Family::new(
        &format!("{prefix}_io_stat"),
        Kind::Gauge,
        "Process I/O statistics (see /proc/<pid>/io).",
    );
    for (item, v) in io_items(&t.io, host_io_labels) {
        io.sample("", &[("item", item)], v);
    }
    vec![fds, threads_f, status, stat, io]
}

/// `<prefix>_netdev` of a `/proc/net/dev` text.
pub fn netdev_family(name: &str, netdev: &str) -> Family {
    let mut f = Family::new(
        name,
        Kind::Gauge,
        "Network device statistics (see /proc/net/dev).",
    );
    for (iface, item, v) in netdev_items(netdev) {
        f.sample("", &[("interface", &iface), ("item", item)], v);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tqemu\nThreads:\t7\nVmPeak:\t  200 kB\nVmRSS:\t  100 kB\n\
        VmRSS:\t 999 kB\nBogus:\t5 kB\nvoluntary_ctxt_switches:\t42\nVmSwap:\tx kB\n";

    #[test]
    fn status_takes_known_keys_once_in_bytes() {
        assert_eq!(
            status_items(STATUS),
            vec![
                ("VmPeak", 204800.0),
                ("VmRSS", 102400.0),
                ("voluntary_ctxt_switches", 42.0)
            ]
        );
        assert_eq!(threads(STATUS), Some(7.0));
        assert_eq!(threads("Threads:\t-1\n"), None);
    }

    #[test]
    fn stat_fields_count_after_the_last_parenthesis() {
        let stat = "123 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16";
        assert_eq!(
            stat_items(stat),
            vec![
                ("utime", 11.0),
                ("stime", 12.0),
                ("cutime", 13.0),
                ("cstime", 14.0)
            ]
        );
        assert!(stat_items("no parenthesis 1 2 3").is_empty());
        assert!(
            stat_items("1 (x) S 1").is_empty(),
            "short lines give nothing"
        );
    }

    #[test]
    fn io_uses_either_spelling() {
        let io = "rchar: 10\nread_bytes: 20\nwrite_bytes: -3\nrchar: 99\nevil{x}: 1\n";
        assert_eq!(
            io_items(io, true),
            vec![("rchar", 10.0), ("readbytes", 20.0)]
        );
        assert_eq!(
            io_items(io, false),
            vec![("rchar", 10.0), ("read_bytes", 20.0)]
        );
    }

    #[test]
    fn netdev_checks_names_and_columns() {
        let text = "Inter-|   Receive\n face |bytes\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n\
            bad\"name: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n  lo: 1 2 3\n";
        let items = netdev_items(text);
        assert_eq!(items.len(), 16);
        assert!(items.iter().all(|(i, _, _)| i == "eth0"));
        assert_eq!(items[8], ("eth0".to_string(), "sent_bytes", 9.0));
        let many: String = (0..200)
            .map(|i| format!("e{i}: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"))
            .collect();
        assert!(netdev_items(&many).len() <= MAX_INTERFACES * 16);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("eth0"));
        assert!(valid_name("vda1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\"b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(33)));
    }

    #[test]
    fn this_process_has_every_family() {
        let t = ProcTexts::read_host("self");
        let fams = process_families("kata_shim", &t, true);
        let text = super::super::render(&fams);
        for want in [
            "kata_shim_fds ",
            "kata_shim_threads ",
            "kata_shim_proc_status{item=\"vmrss\"} ",
            "kata_shim_proc_stat{item=\"utime\"} ",
            "kata_shim_io_stat{item=\"rchar\"} ",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
