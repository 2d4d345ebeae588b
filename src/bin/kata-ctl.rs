//! `kata-ctl`: operator tooling for the Kata runtime. Each verb is a thin
//! adapter over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-ctl: error: {}", kata_shim::logging::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
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
            Ok(())
        }
    }
}
