//! Which containerd a private test instance runs: the node's 1.6
//! (`/usr/bin`), Debian 13's 1.7 that `make deps` unpacks beside it
//! (`/opt/containerd-1.7`), or a containerd 2.x built by hand and named by
//! `KATA_TEST_CONTAINERD2_DIR` (README, "containerd versions"). A missing
//! binary fails the test with how to get it; it never skips. Self-contained
//! (no other harness module), so that `tests/install_tree.rs` shares it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `scripts/deps.sh` unpacks trixie's containerd package.
pub const CONTAINERD_1_7_DIR: &str = "/opt/containerd-1.7/usr/bin";
/// Names the directory of a containerd 2.x build (`containerd`, `ctr` and,
/// optionally, its `containerd-shim-runc-v2`) for the by-hand runs.
pub const CONTAINERD2_ENV: &str = "KATA_TEST_CONTAINERD2_DIR";
/// The configuration version the harness writes for a 2.x build (2 or 3).
pub const CONTAINERD2_CONFIG_ENV: &str = "KATA_TEST_CONTAINERD2_CONFIG_VERSION";

/// A containerd build: the directory of its `containerd` and `ctr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdBin {
    /// Shown in failure messages and logs ("1.6", "1.7", "2.x").
    pub label: &'static str,
    pub dir: PathBuf,
}

impl Default for ContainerdBin {
    fn default() -> Self {
        ContainerdBin::system()
    }
}

impl ContainerdBin {
    /// The node's containerd (Debian 12: 1.6).
    pub fn system() -> ContainerdBin {
        let bin = ContainerdBin {
            label: "1.6",
            dir: PathBuf::from("/usr/bin"),
        };
        bin.require("apt-get install containerd (or make deps)");
        bin
    }

    /// Debian 13's containerd 1.7, unpacked by `make deps`.
    pub fn v1_7() -> ContainerdBin {
        let bin = ContainerdBin {
            label: "1.7",
            dir: PathBuf::from(CONTAINERD_1_7_DIR),
        };
        bin.require(
            "run `make deps` (as root): scripts/deps.sh unpacks Debian 13's containerd 1.7 \
             package there, beside the node's 1.6",
        );
        let v = bin.version();
        assert!(
            v.starts_with("1.7."),
            "{} reports version {v:?}, not 1.7.x: remove /opt/containerd-1.7 and run `make deps`",
            bin.containerd().display()
        );
        bin
    }

    /// The containerd 2.x build named by `KATA_TEST_CONTAINERD2_DIR`; a
    /// test that calls this is ignored (the attribute says why) and run by
    /// hand with it set.
    pub fn v2_from_env() -> ContainerdBin {
        let dir = std::env::var_os(CONTAINERD2_ENV).unwrap_or_else(|| {
            panic!(
                "{CONTAINERD2_ENV} is not set: point it at the directory of a containerd 2.x \
                 build (containerd, ctr; README, \"containerd versions\" says how to build 2.1.4)"
            )
        });
        let bin = ContainerdBin {
            label: "2.x",
            dir: PathBuf::from(dir),
        };
        bin.require("build containerd 2.x as the README's \"containerd versions\" says");
        let v = bin.version();
        assert!(
            v.trim_start_matches('v').starts_with("2."),
            "{} reports version {v:?}, not 2.x",
            bin.containerd().display()
        );
        bin
    }

    pub fn containerd(&self) -> PathBuf {
        self.dir.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.dir.join("ctr")
    }

    /// The version `containerd --version` reports (its third field).
    pub fn version(&self) -> String {
        // It prints one line and exits: no bound needed.
        let out = Command::new(self.containerd())
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{} --version: {e}", self.containerd().display()));
        assert!(
            out.status.success(),
            "{} --version failed: {}",
            self.containerd().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    }

    /// The configuration version the harness writes for this build: 3
    /// (`io.containerd.cri.v1.*`) for containerd 2.x, else 2.
    /// `KATA_TEST_CONTAINERD2_CONFIG_VERSION=2` gives 2.x a version 2 file
    /// instead, which it migrates when it loads it.
    pub fn config_version(&self) -> i64 {
        if self.label != "2.x" {
            return 2;
        }
        match std::env::var(CONTAINERD2_CONFIG_ENV).as_deref() {
            Err(_) | Ok("3") => 3,
            Ok("2") => 2,
            Ok(other) => panic!("{CONTAINERD2_CONFIG_ENV}={other:?}: 2 or 3"),
        }
    }

    fn require(&self, hint: &str) {
        for p in [self.containerd(), self.ctr()] {
            assert!(
                Path::new(&p).is_file(),
                "containerd {} is missing ({}): {hint}",
                self.label,
                p.display()
            );
        }
    }
}
