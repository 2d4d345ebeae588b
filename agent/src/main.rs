//! `kata-agent`: the in-guest agent, PID 1 of the pod VM.
//!
//! As PID 1 it runs the boot sequence and serves the agent API on vsock
//! (`init.rs`); its arguments are ignored (the kernel passes unknown
//! parameters to init). Otherwise it is in dev/test mode: `--version`, or
//! `--listen unix:///path.sock` to serve the same services on a Unix socket
//! without any init duties.

mod auth;
mod config;
mod container;
mod debug_console;
mod details;
mod error;
mod forksafe;
#[cfg(feature = "hostile")]
mod hostile;
mod init;
mod locks;
mod logging;
mod metrics;
mod mountinfo;
mod network;
mod oom;
mod process;
mod reaper;
mod resources;
mod sandbox;
mod server;
mod stdio;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use kata_agent_protocol::AGENT_VERSION;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::LogLevel;
use crate::details::GuestPaths;

const USAGE: &str = "\
usage: kata-agent --version
       kata-agent --listen <ADDR> [--log-level error|warn|info|debug|trace]

As PID 1 (in the guest) kata-agent boots the VM and serves on vsock port 1024.
Otherwise --listen serves the same API on ADDR (e.g. unix:///tmp/agent.sock)
without doing any init duties; DestroySandbox then makes the process exit.";

/// What the command line asks for in dev/test mode.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Version,
    Help,
    Listen { addr: String, level: LogLevel },
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut addr = None;
    let mut level = LogLevel::Info;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" => return Ok(Command::Help),
            "--listen" => addr = Some(value("--listen")?),
            "--log-level" => {
                let v = value("--log-level")?;
                level = config::parse_cmdline(&format!("agent.log={v}"))
                    .map_err(|e| e.to_string())?
                    .log_level;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    match addr {
        Some(addr) => Ok(Command::Listen { addr, level }),
        None => Err("not running as PID 1: --listen <ADDR> is required".into()),
    }
}

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() == 1 {
        init::pid1_main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Version) => {
            println!("kata-agent {AGENT_VERSION}");
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Listen { addr, level }) => match serve_test_mode(&addr, level) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kata-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(msg) => {
            eprintln!("kata-agent: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Dev/test mode: serve on `addr` until DestroySandbox, SIGINT or SIGTERM.
fn serve_test_mode(addr: &str, level: LogLevel) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        logging::init(level, logging::Target::Stderr)?;
        let paths = GuestPaths::default();
        let cmdline = paths.kernel_cmdline().unwrap_or_default();
        init::log_starting(&paths, &cmdline);

        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut running = server::start(addr, paths, server::DestroyAction::Exit).await?;
        tracing::info!(%addr, "serving the agent API (test mode, no init duties)");
        tokio::select! {
            _ = running.wait_destroy() => {
                tracing::info!("DestroySandbox: exiting (test mode)");
                tokio::time::sleep(init::DESTROY_GRACE).await;
            }
            _ = sigterm.recv() => tracing::info!("SIGTERM: exiting"),
            _ = sigint.recv() => tracing::info!("SIGINT: exiting"),
        }
        if let Err(e) = running.shutdown().await {
            tracing::warn!(error = %e, "server shutdown");
        }
        if let Some(path) = addr.strip_prefix("unix://").filter(|p| !p.starts_with('@')) {
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_lines() {
        assert_eq!(parse_args(&args(&["--version"])), Ok(Command::Version));
        assert_eq!(parse_args(&args(&["-h"])), Ok(Command::Help));
        assert_eq!(
            parse_args(&args(&["--listen", "unix:///tmp/a.sock"])),
            Ok(Command::Listen {
                addr: "unix:///tmp/a.sock".into(),
                level: LogLevel::Info
            })
        );
        assert_eq!(
            parse_args(&args(&["--listen=unix:///x", "--log-level=debug"])),
            Ok(Command::Listen {
                addr: "unix:///x".into(),
                level: LogLevel::Debug
            })
        );
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["--listen"])).is_err());
        assert!(parse_args(&args(&["--listen", "x", "--log-level", "loud"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
    }
}
