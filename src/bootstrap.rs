//! The containerd shim v2 process contract, as both containerd and CRI-O
//! (`runtime_type = "vm"`) drive it: the Go-style command line, `start`
//! (one serving shim per sandbox, a plain `unix://` address on stdout),
//! `delete` (post-mortem clean-up, a bare `DeleteResponse` on stdout),
//! `-v`, `-info` (a bare `RuntimeInfo`), `features` (the OCI features
//! document of the guest's runtime) and the
//! internal `serve` that runs the task service.

pub mod args;
pub mod delete;
pub mod features;
pub mod keeper;
pub mod serve;
pub mod start;
pub mod sweep;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

pub use args::{Action, ArgsError, Flags};

use crate::config::LogLevel;
use crate::logging;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.kata.v2";
const BIN: &str = "containerd-shim-kata-v2";
/// Exit status for a command line we do not understand, as Go's `flag`.
const USAGE_EXIT: u8 = 2;

const USAGE: &str = "usage: containerd-shim-kata-v2 [-namespace ns] [-address addr] \
[-publish-binary path] [-id id] [-bundle dir] [-debug] start|delete|features
       containerd-shim-kata-v2 -v | -info";

/// Runs the binary on `args` (without the program name) and returns its
/// exit status.
pub fn run<I>(args: I) -> ExitCode
where
    I: IntoIterator<Item = String>,
{
    ensure_std_fds();
    let flags = match args::parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{BIN}: {e}\n{USAGE}");
            return ExitCode::from(USAGE_EXIT);
        }
    };
    if flags.help {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if flags.version {
        println!("{}", version_line());
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return info();
    }
    match flags.action {
        None => {
            eprintln!("{BIN}: no action given\n{USAGE}");
            ExitCode::from(USAGE_EXIT)
        }
        Some(Action::Features) => print_stdout(format!("{:#}\n", features::document()).as_bytes()),
        Some(Action::Start) => match start::run(&flags) {
            Ok(address) => print_stdout(address.as_bytes()),
            Err(e) => {
                eprintln!("{BIN}: start {}: {}", flags.id, logging::error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Some(Action::Delete) => {
            // stderr only, and only what went wrong: containerd logs it.
            logging::init_stderr(if flags.debug {
                LogLevel::Debug
            } else {
                LogLevel::Warn
            });
            print_stdout(&delete::run(&flags))
        }
        Some(Action::Serve) => serve::run(&flags),
        Some(Action::Keeper) => keeper::run(&flags),
    }
}

/// `containerd-shim-kata-v2 <version> (agent protocol <n>)`.
pub fn version_line() -> String {
    format!(
        "{BIN} {} (agent protocol {})",
        env!("CARGO_PKG_VERSION"),
        kata_agent_protocol::PROTOCOL_VERSION
    )
}

/// What `-info` reports: name and version only. No OCI features: those
/// describe a runtime on the host, and ours runs in the guest.
pub fn runtime_info() -> RuntimeInfo {
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_string();
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.to_string();
    info.version = Some(version).into();
    info
}

/// containerd writes the runtime options on stdin and expects a bare
/// `containerd.types.RuntimeInfo` on stdout.
fn info() -> ExitCode {
    let _ = start::read_bounded(libc::STDIN_FILENO, Duration::from_secs(1), 1 << 20);
    let bytes = runtime_info()
        .write_to_bytes()
        .expect("encoding a RuntimeInfo into memory cannot fail");
    print_stdout(&bytes)
}

fn print_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{BIN}: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens /dev/null on any of fds 0-2 that is closed, so that no file this
/// process opens later (the listener, std's internal pipes) lands there and
/// is mistaken for stdio by a child.
fn ensure_std_fds() {
    for fd in 0..=2 {
        let closed =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF);
        if closed {
            // The lowest free descriptor is `fd` itself; keep it open for
            // the life of the process.
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_info_decodes_back() {
        let bytes = runtime_info().write_to_bytes().expect("encode");
        let back = RuntimeInfo::parse_from_bytes(&bytes).expect("decode");
        assert_eq!(back.name, "io.containerd.kata.v2");
        assert_eq!(back.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(back.version.revision, "");
        assert!(back.options.is_none());
        assert!(back.features.is_none());
        assert!(back.annotations.is_empty());
        // Field 1 (name) comes first, as a length-delimited string.
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(usize::from(bytes[1]), RUNTIME_NAME.len());
    }

    #[test]
    fn version_line_names_binary_and_protocol() {
        let v = version_line();
        assert!(v.starts_with("containerd-shim-kata-v2 "), "{v}");
        assert!(
            v.ends_with(&format!(
                "(agent protocol {})",
                kata_agent_protocol::PROTOCOL_VERSION
            )),
            "{v}"
        );
    }
}
