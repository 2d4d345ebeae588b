//! Parsing of the stdio strings of a Create/Exec request into where each
//! stream goes: pure string work, nothing touches the filesystem.
//!
//! The accepted forms follow containerd's shims: `""` (not connected), an
//! absolute path (a FIFO the caller created), `binary:///abs/path?k=v&...`
//! (a logging binary that receives both output streams) and
//! `file:///abs/path` (both output streams appended to one file). As in
//! containerd, stdout decides where output goes; stderr may repeat the same
//! URI or be empty.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::{StdioConfig, StdioError};

/// A logging binary and its arguments (from the URI's query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinaryCmd {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

/// Where the output streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutputPlan {
    /// Each stream to its own FIFO; `None` drains the agent into nothing.
    Fifos {
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
    },
    /// Both streams appended to one file.
    File(PathBuf),
    /// Both streams piped to a logging binary.
    Binary(BinaryCmd),
}

/// The validated form of a [`StdioConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub stdin: Option<PathBuf>,
    pub output: OutputPlan,
}

fn invalid(stream: &'static str, value: &str, reason: &'static str) -> StdioError {
    StdioError::Invalid {
        stream,
        value: value.to_string(),
        reason,
    }
}

/// What one string names, before stdout and stderr are combined.
enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    Binary(BinaryCmd),
}

pub(crate) fn plan(cfg: &StdioConfig) -> Result<Plan, StdioError> {
    let stdin = match target("stdin", &cfg.stdin)? {
        Target::None => None,
        Target::Fifo(p) => Some(p),
        Target::File(_) | Target::Binary(_) => {
            return Err(invalid(
                "stdin",
                &cfg.stdin,
                "must be an absolute fifo path, not a uri",
            ));
        }
    };
    let stdout = target("stdout", &cfg.stdout)?;
    // With a terminal the process has no separate stderr; containerd and
    // CRI-O still send a path, which means nothing.
    let stderr = if cfg.terminal {
        Target::None
    } else {
        target("stderr", &cfg.stderr)?
    };
    let output = match stdout {
        Target::File(p) => {
            stderr_follows_stdout(cfg)?;
            OutputPlan::File(p)
        }
        Target::Binary(b) => {
            stderr_follows_stdout(cfg)?;
            OutputPlan::Binary(b)
        }
        Target::None => fifos(None, stderr, cfg)?,
        Target::Fifo(p) => fifos(Some(p), stderr, cfg)?,
    };
    Ok(Plan { stdin, output })
}

/// A logger or file takes both streams, so stderr can only repeat stdout.
fn stderr_follows_stdout(cfg: &StdioConfig) -> Result<(), StdioError> {
    if !cfg.terminal && !cfg.stderr.is_empty() && cfg.stderr != cfg.stdout {
        return Err(invalid(
            "stderr",
            &cfg.stderr,
            "must be empty or equal to stdout when stdout is a binary:// or file:// uri",
        ));
    }
    Ok(())
}

fn fifos(
    stdout: Option<PathBuf>,
    stderr: Target,
    cfg: &StdioConfig,
) -> Result<OutputPlan, StdioError> {
    let stderr = match stderr {
        Target::None => None,
        Target::Fifo(p) => Some(p),
        Target::File(_) | Target::Binary(_) => {
            return Err(invalid(
                "stderr",
                &cfg.stderr,
                "binary:// and file:// uris are only accepted when stdout is the same uri",
            ));
        }
    };
    Ok(OutputPlan::Fifos { stdout, stderr })
}

fn target(stream: &'static str, value: &str) -> Result<Target, StdioError> {
    if value.is_empty() {
        return Ok(Target::None);
    }
    if value.contains('\0') {
        return Err(invalid(stream, value, "must not contain a nul byte"));
    }
    if value.starts_with('/') {
        return Ok(Target::Fifo(PathBuf::from(value)));
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return Err(invalid(
            stream,
            value,
            "must be an absolute fifo path or a binary:// or file:// uri",
        ));
    };
    let scheme_kind = match scheme {
        "binary" => true,
        "file" => false,
        _ => {
            return Err(invalid(
                stream,
                value,
                "unknown scheme: only binary:// and file:// are supported",
            ));
        }
    };
    // A fragment means nothing here (containerd ignores it too).
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(invalid(
            stream,
            value,
            "the uri must name an absolute path with no host (scheme:///abs/path)",
        ));
    }
    let path = PathBuf::from(OsString::from_vec(
        percent_decode(path, false).ok_or_else(|| invalid(stream, value, "bad %-escape"))?,
    ));
    if path.as_os_str().len() <= 1 {
        return Err(invalid(stream, value, "the uri names no file"));
    }
    if !scheme_kind {
        return Ok(Target::File(path));
    }
    let args = query_args(query).ok_or_else(|| invalid(stream, value, "bad %-escape"))?;
    Ok(Target::Binary(BinaryCmd { path, args }))
}

/// Logger arguments from the query, the way containerd builds them: each
/// distinct key followed by its first value (empty when absent).
/// containerd iterates a Go map, so its order is unspecified; ours is the
/// order of first appearance.
fn query_args(query: &str) -> Option<Vec<OsString>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true)?;
        let v = percent_decode(v, true)?;
        if keys.contains(&k) {
            continue;
        }
        keys.push(k.clone());
        args.push(OsString::from_vec(k));
        args.push(OsString::from_vec(v));
    }
    Some(args)
}

/// `%XX` decoding; in a query `+` also stands for a space.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioConfig {
        StdioConfig {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
        }
    }

    #[test]
    fn fifos_and_empty_streams() {
        let p = plan(&cfg("/f/in", "/f/out", "/f/err", false)).expect("valid");
        assert_eq!(p.stdin, Some(PathBuf::from("/f/in")));
        assert_eq!(
            p.output,
            OutputPlan::Fifos {
                stdout: Some("/f/out".into()),
                stderr: Some("/f/err".into())
            }
        );
        let p = plan(&cfg("", "", "", false)).expect("valid");
        assert_eq!(p.stdin, None);
        assert_eq!(
            p.output,
            OutputPlan::Fifos {
                stdout: None,
                stderr: None
            }
        );
    }

    #[test]
    fn terminal_ignores_stderr() {
        let p = plan(&cfg("", "/f/out", "not even a path", true)).expect("valid");
        assert_eq!(
            p.output,
            OutputPlan::Fifos {
                stdout: Some("/f/out".into()),
                stderr: None
            }
        );
    }

    #[test]
    fn binary_uri_args_and_decoding() {
        let uri = "binary:///usr/bin/my%20logger?--driver=aws+logs&-v&--driver=x&k=%2Fa";
        let p = plan(&cfg("", uri, uri, false)).expect("valid");
        let OutputPlan::Binary(b) = p.output else {
            panic!("not binary: {:?}", p.output);
        };
        assert_eq!(b.path, PathBuf::from("/usr/bin/my logger"));
        let args: Vec<&str> = b.args.iter().map(|a| a.to_str().expect("utf8")).collect();
        assert_eq!(args, ["--driver", "aws logs", "-v", "", "k", "/a"]);
        // stderr may be empty too.
        let p = plan(&cfg("", "file:///var/log/c.log", "", false)).expect("valid");
        assert_eq!(p.output, OutputPlan::File("/var/log/c.log".into()));
    }

    #[test]
    fn invalid_values_name_the_stream() {
        let cases = [
            (cfg("rel/in", "", "", false), "stdin"),
            (cfg("binary:///x", "", "", false), "stdin"),
            (cfg("", "relative/out", "", false), "stdout"),
            (cfg("", "fifo:///x", "", false), "stdout"),
            (cfg("", "http://h/x", "", false), "stdout"),
            (cfg("", "binary://host/x", "", false), "stdout"),
            (cfg("", "binary://", "", false), "stdout"),
            (cfg("", "file:///", "", false), "stdout"),
            (cfg("", "file:///a%zz", "", false), "stdout"),
            (cfg("", "binary:///a?k=%4", "", false), "stdout"),
            (cfg("", "/a\0b", "", false), "stdout"),
            (cfg("", "/f/out", "err", false), "stderr"),
            (cfg("", "/f/out", "file:///x", false), "stderr"),
            (cfg("", "file:///x", "/f/err", false), "stderr"),
            (cfg("", "binary:///x", "binary:///y", false), "stderr"),
        ];
        for (c, stream) in cases {
            let e = plan(&c).expect_err(&format!("{c:?} must be refused"));
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{c:?}");
            assert!(
                matches!(&e, StdioError::Invalid { stream: s, .. } if *s == stream),
                "{c:?}: {e}"
            );
            assert!(e.to_string().contains(stream), "{e}");
        }
    }
}
