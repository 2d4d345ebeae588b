//! Helpers shared by the integration tests: locating the installed Debian
//! kernel (failing loudly, never skipping, when it is absent), a stand-in
//! agent, running the built binary, and parsing an installed initrd.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_guest_image::{compress, cpio, kernel};

pub const BIN: &str = env!("CARGO_BIN_EXE_kata-guest-image");

/// Panics with the install command unless some kernel with modules and an
/// image is installed; returns its release.
pub fn require_kernel() -> String {
    let roots = kernel::Roots::default();
    let running = kernel::running_release().expect("read running release");
    match kernel::discover(&roots, &running, None) {
        Ok(d) => d.kernel.release,
        Err(e) => panic!(
            "these tests need an installed kernel with modules: {e}\n\
             install it with: {}",
            kernel::INSTALL_HINT
        ),
    }
}

/// A dynamically linked executable standing in for the agent (a copy of
/// /bin/true: it exercises library resolution and ignores `--version`).
pub fn standin_agent(dir: &Path) -> PathBuf {
    let p = dir.join("kata-agent");
    fs::copy("/bin/true", &p).expect("copy /bin/true as stand-in agent");
    p
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run kata-guest-image")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds into `out` with `agent`, plus extra flags; asserts success.
pub fn build(out: &Path, agent: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--output-dir",
        out.to_str().expect("utf8 path"),
        "--agent",
        agent.to_str().expect("utf8 path"),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(
        o.status.success(),
        "build failed: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Decompresses and parses an initrd, requiring a complete archive.
pub fn parse_initrd(path: &Path) -> Result<Vec<cpio::Entry>, String> {
    let bytes = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let raw = compress::decompress_initrd(&bytes).map_err(|e| e.to_string())?;
    cpio::read_archive(&raw).map_err(|e| e.to_string())
}

pub fn find<'a>(entries: &'a [cpio::Entry], path: &str) -> Option<&'a cpio::Entry> {
    entries
        .iter()
        .find(|e| e.path == path.trim_start_matches('/'))
}

pub fn file_data<'a>(entries: &'a [cpio::Entry], path: &str) -> &'a [u8] {
    match find(entries, path).map(|e| &e.kind) {
        Some(cpio::Kind::File(d)) => d,
        other => panic!("{path} is not a file in the initrd: {other:?}"),
    }
}

pub fn sha256(path: &Path) -> String {
    kata_guest_image::manifest::sha256_file(path).expect("hash")
}
