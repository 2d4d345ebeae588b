//! Agent configuration from the kernel command line (`agent.*` keys).
//!
//! The shim writes `agent.log`, `agent.shared_fs` and, when the debug console
//! is enabled, `agent.debug_console` onto the guest kernel command line, after
//! the operator's `kernel_params` (a key's last value wins, see
//! [`parse_cmdline`]); `agent.device_timeout` comes only from those
//! parameters. [`parse_cmdline`] is a pure function:
//! unknown `agent.*` keys are collected (the caller warns about them once
//! logging is up) and an invalid value for a known key is an error naming the
//! key and the value — fatal for the agent.

use std::time::Duration;

use kata_agent_protocol::{cmdline, shared_fs};

use crate::error::{AgentError, Result};

/// Default seconds to wait for a device to appear.
pub const DEFAULT_DEVICE_TIMEOUT_SECS: u64 = 5;
/// Accepted range of `agent.device_timeout`, in seconds.
pub const DEVICE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=300;

/// Verbosity of the agent's log (`agent.log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Per-request detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    const EXPECTED: &'static str = "one of error|warn|info|debug|trace";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// The matching `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            Self::Error => tracing::Level::ERROR,
            Self::Warn => tracing::Level::WARN,
            Self::Info => tracing::Level::INFO,
            Self::Debug => tracing::Level::DEBUG,
            Self::Trace => tracing::Level::TRACE,
        }
    }
}

/// Which shared filesystem to mount at boot (`agent.shared_fs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedFsKind {
    /// virtio-fs (tag [`kata_agent_protocol::guest::SHARED_FS_TAG`]).
    VirtioFs,
    /// virtio-9p (same tag).
    NineP,
    /// No share: the default.
    #[default]
    None,
}

impl SharedFsKind {
    const EXPECTED: &'static str = "one of virtiofs|9p|none";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            shared_fs::VIRTIOFS => Self::VirtioFs,
            shared_fs::NINE_P => Self::NineP,
            shared_fs::NONE => Self::None,
            _ => return None,
        })
    }

    /// The name used on the command line and as the mount's fstype.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VirtioFs => shared_fs::VIRTIOFS,
            Self::NineP => shared_fs::NINE_P,
            Self::None => shared_fs::NONE,
        }
    }
}

/// The parsed agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Share to mount at boot.
    pub shared_fs: SharedFsKind,
    /// How long to wait for a device (console, share) to appear.
    pub device_timeout: Duration,
    /// Serve the debug console (`agent.debug_console`).
    pub debug_console: bool,
    /// `agent.*` keys the agent does not know, as written (`key` or `key=value`).
    pub unknown_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: LogLevel::default(),
            shared_fs: SharedFsKind::default(),
            device_timeout: Duration::from_secs(DEFAULT_DEVICE_TIMEOUT_SECS),
            debug_console: false,
            unknown_keys: Vec::new(),
        }
    }
}

/// Splits a kernel command line into parameters the way the kernel does:
/// whitespace-separated, double quotes group (and are removed), and
/// everything after a lone `--` belongs to init, not to the kernel.
pub fn split_params(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    if cur == "--" {
                        return params;
                    }
                    params.push(std::mem::take(&mut cur));
                    has_token = false;
                }
            }
            c => {
                cur.push(c);
                has_token = true;
            }
        }
    }
    if has_token && cur != "--" {
        params.push(cur);
    }
    params
}

/// Parses the `agent.*` keys of a kernel command line.
///
/// A key given several times takes its last value, as the kernel does.
pub fn parse_cmdline(cmdline_text: &str) -> Result<Config> {
    let mut cfg = Config::default();
    for param in split_params(cmdline_text) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        if !key.starts_with("agent.") {
            continue;
        }
        let value_str = value.unwrap_or_default();
        match key {
            cmdline::LOG_LEVEL => {
                cfg.log_level = LogLevel::parse(value_str)
                    .ok_or_else(|| invalid(cmdline::LOG_LEVEL, value_str, LogLevel::EXPECTED))?;
            }
            cmdline::SHARED_FS => {
                cfg.shared_fs = SharedFsKind::parse(value_str).ok_or_else(|| {
                    invalid(cmdline::SHARED_FS, value_str, SharedFsKind::EXPECTED)
                })?;
            }
            cmdline::DEVICE_TIMEOUT => {
                const EXPECTED: &str = "whole seconds in 1..=300";
                let secs: u64 = value_str
                    .parse()
                    .map_err(|_| invalid(cmdline::DEVICE_TIMEOUT, value_str, EXPECTED))?;
                if !DEVICE_TIMEOUT_RANGE.contains(&secs) {
                    return Err(invalid(cmdline::DEVICE_TIMEOUT, value_str, EXPECTED));
                }
                cfg.device_timeout = Duration::from_secs(secs);
            }
            // A flag; `=1`/`=true` are accepted too, `=0`/`=false` turn it off.
            cmdline::DEBUG_CONSOLE => {
                cfg.debug_console = match value {
                    None | Some("1" | "true" | "on" | "yes") => true,
                    Some("0" | "false" | "off" | "no") => false,
                    Some(v) => {
                        return Err(invalid(
                            cmdline::DEBUG_CONSOLE,
                            v,
                            "no value, or one of 1|true|on|yes|0|false|off|no",
                        ));
                    }
                };
            }
            _ => cfg.unknown_keys.push(param.clone()),
        }
    }
    Ok(cfg)
}

fn invalid(key: &'static str, value: &str, expected: &'static str) -> AgentError {
    AgentError::InvalidConfig {
        key,
        value: value.to_string(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(log: LogLevel, fs: SharedFsKind, timeout: u64, unknown: &[&str]) -> Config {
        Config {
            log_level: log,
            shared_fs: fs,
            device_timeout: Duration::from_secs(timeout),
            debug_console: false,
            unknown_keys: unknown.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn valid_command_lines() {
        use LogLevel::*;
        use SharedFsKind::*;
        let cases: &[(&str, Config)] = &[
            ("", cfg(Info, None, 5, &[])),
            (
                "tsc=reliable no_timer_check console=hvc0 panic=1 nr_cpus=1",
                cfg(Info, None, 5, &[]),
            ),
            (
                "console=hvc0 panic=1 agent.log=info agent.shared_fs=virtiofs\n",
                cfg(Info, VirtioFs, 5, &[]),
            ),
            (
                "agent.log=debug agent.shared_fs=9p",
                cfg(Debug, NineP, 5, &[]),
            ),
            (
                "agent.log=trace agent.shared_fs=none",
                cfg(Trace, None, 5, &[]),
            ),
            ("agent.log=error", cfg(Error, None, 5, &[])),
            ("agent.log=warn", cfg(Warn, None, 5, &[])),
            ("agent.device_timeout=1", cfg(Info, None, 1, &[])),
            ("agent.device_timeout=300", cfg(Info, None, 300, &[])),
            // Last occurrence wins.
            ("agent.log=debug agent.log=warn", cfg(Warn, None, 5, &[])),
            // Unknown agent.* keys are collected, other keys ignored.
            (
                "agent.foo=bar agent.flag quiet foo.log=nonsense",
                cfg(Info, None, 5, &["agent.foo=bar", "agent.flag"]),
            ),
            // Quotes are removed; `--` ends the kernel's parameters.
            (
                "marker=\"a b\" agent.log=\"debug\" -- agent.log=bogus",
                cfg(Debug, None, 5, &[]),
            ),
            (
                "  \tagent.shared_fs=virtiofs  ",
                cfg(Info, VirtioFs, 5, &[]),
            ),
        ];
        for (line, want) in cases {
            let got = parse_cmdline(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(&got, want, "{line:?}");
        }
    }

    #[test]
    fn debug_console_flag() {
        assert!(!parse_cmdline("quiet").expect("ok").debug_console);
        assert!(
            parse_cmdline("quiet agent.debug_console")
                .expect("ok")
                .debug_console
        );
        assert!(
            parse_cmdline("agent.debug_console=1")
                .expect("ok")
                .debug_console
        );
        assert!(
            !parse_cmdline("agent.debug_console agent.debug_console=0")
                .expect("ok")
                .debug_console
        );
        let e = parse_cmdline("agent.debug_console=maybe").expect_err("bad value");
        assert!(e.to_string().contains("agent.debug_console"), "{e}");
        assert!(
            parse_cmdline("agent.debug_console")
                .expect("ok")
                .unknown_keys
                .is_empty()
        );
    }

    #[test]
    fn invalid_values_are_errors_naming_key_and_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("agent.log=loud", "agent.log", "loud"),
            ("agent.log", "agent.log", ""),
            ("agent.log=INFO", "agent.log", "INFO"),
            ("agent.shared_fs=nfs", "agent.shared_fs", "nfs"),
            ("agent.shared_fs=", "agent.shared_fs", ""),
            ("agent.device_timeout=0", "agent.device_timeout", "0"),
            ("agent.device_timeout=301", "agent.device_timeout", "301"),
            ("agent.device_timeout=-1", "agent.device_timeout", "-1"),
            ("agent.device_timeout=5s", "agent.device_timeout", "5s"),
            (
                "agent.device_timeout=99999999999999999999999",
                "agent.device_timeout",
                "99999999999999999999999",
            ),
        ];
        for (line, key, value) in cases {
            let err = parse_cmdline(line).expect_err(line);
            match &err {
                AgentError::InvalidConfig {
                    key: k, value: v, ..
                } => {
                    assert_eq!(k, key, "{line}");
                    assert_eq!(v, value, "{line}");
                }
                other => panic!("{line}: unexpected error {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains(&format!("{value:?}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn split_params_handles_quotes_and_separator() {
        assert_eq!(split_params("a  b\tc\n"), ["a", "b", "c"]);
        assert_eq!(split_params("x=\"1 2\" y"), ["x=1 2", "y"]);
        assert_eq!(split_params("a -- b"), ["a"]);
        assert_eq!(split_params("\"\""), [""]);
        assert!(split_params("   ").is_empty());
    }
}
