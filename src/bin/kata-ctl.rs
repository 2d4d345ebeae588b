//! `kata-ctl`: operator tooling for the Kata runtime. Each verb is a thin
//! adapter over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kata_shim::ctl::{check, env::Env, exec, metrics};
use kata_shim::{boot_check, logging};

#[derive(Parser)]
#[command(
    name = "kata-ctl",
    version,
    about = "Operator tooling for containerd-shim-kata-v2"
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Boot one VM without containerd, check its agent and share, stop it.
    BootCheck {
        /// Sandbox id to use (default: boot-check-<random>).
        #[arg(long)]
        id: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that this host can run pods: one ok/warn/fail line per
    /// requirement, with the fix; exits 1 when any check fails.
    Check {
        /// Configuration file (default: KATA_CONF_FILE, then the shim's
        /// search paths, then built-in defaults).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long, conflicts_with = "nfd")]
        json: bool,
        /// Print a Node Feature Discovery feature file instead:
        /// `feature.node.kubernetes.io/runtime.kata=true` when the node
        /// can run pods, nothing when it cannot.
        #[arg(long)]
        nfd: bool,
    },
    /// Print the resolved configuration, the file it came from and the
    /// binaries, image and state directories it resolves to on this host.
    Env {
        /// Configuration file (default: as the shim finds it).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the Prometheus metrics of one running sandbox's shim, or of
    /// every one; exits 1 when none runs or a shim does not answer.
    /// Must run as root.
    Metrics {
        /// Only this sandbox (default: every sandbox with a metrics socket).
        #[arg(long, value_name = "ID")]
        sandbox: Option<String>,
    },
    /// Open a root shell in a running sandbox's guest through the agent's
    /// debug console (vsock port 1026): stdin goes to the shell, its output
    /// to stdout, until the shell exits. Needs `[agent.kata]
    /// debug_console_enabled = true` and an image built with
    /// `kata-guest-image --debug`; exits 1 otherwise. Hybrid vsock only.
    /// Must run as root.
    Exec {
        /// The sandbox id.
        sandbox_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kata-ctl: error: {}", kata_shim::logging::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Verb::BootCheck { id, json } => {
            let loaded = kata_shim::config::Config::load()?;
            logging::init_stderr(loaded.config.runtime.log_level);
            match &loaded.source {
                Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
                None => tracing::info!("no configuration file found, using built-in defaults"),
            }
            let id = id.unwrap_or_else(|| format!("boot-check-{}", boot_check::nonce()));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let report = rt.block_on(boot_check::run(&loaded.config, &id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Check { config, json, nfd } => {
            let report = check::run(config.as_deref());
            if nfd {
                print!("{}", report.nfd_features());
            } else if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.render());
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Verb::Env { config, json } => {
            let env = Env::gather(config.as_deref())?;
            let text = if json { env.to_json()? } else { env.to_toml()? };
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Verb::Metrics { sandbox } => {
            let gathered = metrics::gather(sandbox.as_deref())?;
            print!("{}", gathered.text);
            for e in &gathered.failures {
                eprintln!("kata-ctl: error: {}", kata_shim::logging::error_chain(e));
            }
            Ok(if gathered.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Verb::Exec { sandbox_id } => {
            let mut stdout = std::io::stdout();
            exec::run(&sandbox_id, std::io::stdin(), &mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
