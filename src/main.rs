//! `containerd-shim-kata-v2`: the binary containerd and CRI-O start for each
//! kata container. Dispatch only; the shim v2 process contract lives in
//! `kata_shim::bootstrap`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Lossy: a non-UTF-8 argument is not a valid id or path for us anyway,
    // and must not panic before the usage error is printed.
    let args = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    kata_shim::bootstrap::run(args)
}
