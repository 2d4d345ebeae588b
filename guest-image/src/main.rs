//! CLI of `kata-guest-image`: parses flags, runs a build, a `--check`, a
//! raw-boot or a floor image, and turns the outcome into output lines and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kata_guest_image::build::{self, Outcome};
use kata_guest_image::floor;
use kata_guest_image::kernel::Roots;

#[derive(Parser)]
#[command(
    name = "kata-guest-image",
    version,
    about = "Build the Kata guest initrd from this node's kernel and agent",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the agent initrd (the default when no subcommand is given).
    Build(BuildArgs),
    /// Write a baseline initrd whose /init powers the VM off at once.
    RawBoot(RawBootArgs),
    /// Write the data-path floor's initrd: the pod image's modules,
    /// busybox, and a floor program (kata-floor) instead of the agent.
    Floor(FloorArgs),
}

#[derive(Args, Clone)]
struct KernelArgs {
    /// Use this kernel release instead of the running one.
    #[arg(long, value_name = "KVER")]
    kernel_release: Option<String>,
    /// Root of installed kernel modules.
    #[arg(long, value_name = "DIR", default_value = "/lib/modules")]
    modules_dir: PathBuf,
    /// Directory holding vmlinuz-<release> and config-<release>.
    #[arg(long, value_name = "DIR", default_value = "/boot")]
    boot_dir: PathBuf,
}

impl KernelArgs {
    fn roots(&self) -> Roots {
        Roots {
            modules_dir: self.modules_dir.clone(),
            boot_dir: self.boot_dir.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct BuildArgs {
    /// Rebuild even if the installed image is up to date.
    #[arg(long)]
    force: bool,
    /// Only check: exit 0 if up to date, 1 if a rebuild is needed.
    #[arg(long, conflicts_with = "force")]
    check: bool,
    /// Agent binary packed as /init.
    #[arg(long, value_name = "PATH", default_value = build::DEFAULT_AGENT)]
    agent: PathBuf,
    /// Where images and the kata.kernel/kata.initrd symlinks go.
    #[arg(long, value_name = "DIR", default_value = build::DEFAULT_OUTPUT_DIR)]
    output_dir: PathBuf,
    /// Debug image: also pack busybox as /bin/busybox with /bin/sh linked
    /// to it, for the agent's debug console (`kata-ctl exec`). Use a
    /// separate --output-dir: the default image stays shell-free.
    #[arg(long)]
    debug: bool,
    /// busybox for --debug (Debian busybox-static).
    #[arg(long, value_name = "PATH", default_value = build::DEFAULT_BUSYBOX, requires = "debug")]
    busybox: PathBuf,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(Args)]
struct RawBootArgs {
    /// File to write the initrd to.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// busybox binary (Debian busybox-static).
    #[arg(long, value_name = "PATH", default_value = build::DEFAULT_BUSYBOX)]
    busybox: PathBuf,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(Args)]
struct FloorArgs {
    /// The floor program /init execs (the workspace's kata-floor).
    #[arg(long, value_name = "PATH")]
    init_program: PathBuf,
    /// File to write the initrd to.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// busybox binary (Debian busybox-static).
    #[arg(long, value_name = "PATH", default_value = build::DEFAULT_BUSYBOX)]
    busybox: PathBuf,
    #[command(flatten)]
    kernel: KernelArgs,
}

fn warn(msg: &str) {
    eprintln!("kata-guest-image: warning: {msg}");
}

fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let opts = build::Options {
        roots: args.kernel.roots(),
        kernel_release: args.kernel.kernel_release.clone(),
        running_release: None,
        agent: args.agent,
        output_dir: args.output_dir,
        force: args.force,
        check: args.check,
        debug_busybox: args.debug.then_some(args.busybox),
    };
    match build::run(&opts, &mut |m| warn(m))? {
        Outcome::UpToDate { release, initrd } => {
            println!(
                "kata-guest-image: {release} up to date ({})",
                initrd.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Stale { release, reason } => {
            println!("kata-guest-image: {release} needs a rebuild: {reason}");
            Ok(ExitCode::from(1))
        }
        Outcome::Built(summary) => {
            println!("{}", summary.line());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_raw_boot(args: RawBootArgs) -> anyhow::Result<ExitCode> {
    let opts = build::RawBootOptions {
        roots: args.kernel.roots(),
        kernel_release: args.kernel.kernel_release.clone(),
        running_release: None,
        busybox: args.busybox,
        output: args.output,
    };
    let summary = build::raw_boot(&opts, &mut |m| warn(m))?;
    println!("{}", summary.line());
    Ok(ExitCode::SUCCESS)
}

fn run_floor(args: FloorArgs) -> anyhow::Result<ExitCode> {
    let opts = floor::FloorOptions {
        roots: args.kernel.roots(),
        kernel_release: args.kernel.kernel_release.clone(),
        running_release: None,
        busybox: args.busybox,
        program: args.init_program,
        output: args.output,
    };
    let summary = floor::floor(&opts, &mut |m| warn(m))?;
    println!("{}", summary.line());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Build(args)) => run_build(args),
        Some(Cmd::RawBoot(args)) => run_raw_boot(args),
        Some(Cmd::Floor(args)) => run_floor(args),
        None => run_build(cli.build),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kata-guest-image: error: {e:#}");
            // 2 keeps failures distinct from `--check`'s "rebuild needed" (1).
            ExitCode::from(2)
        }
    }
}
