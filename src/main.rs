//! `containerd-shim-kata-v2`: the binary containerd and CRI-O start for each
//! kata pod. Dispatch only; the logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "containerd-shim-kata-v2 {} (agent protocol {})",
            env!("CARGO_PKG_VERSION"),
            kata_agent_protocol::PROTOCOL_VERSION
        );
        return ExitCode::SUCCESS;
    }
    // The shim v2 task service (start, delete, serve) is not built yet; say
    // so plainly rather than pretend to serve containerd.
    eprintln!(
        "containerd-shim-kata-v2: the shim v2 task service is not available in this build; \
         use `kata-ctl boot-check` to boot a VM"
    );
    ExitCode::from(2)
}
