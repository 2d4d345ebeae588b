//! Log set-up for the shim's binaries: `tracing` to stderr, level from the
//! configuration unless `KATA_LOG` gives a filter.

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Environment variable holding a `tracing` filter that overrides the level.
pub const LOG_ENV: &str = "KATA_LOG";

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
