//! `features`: the OCI runtime features document (runtime-spec
//! `features.md`) for what the guest's container runtime honours.
//!
//! CRI-O 1.32 runs `<runtime_path> features` once per handler at start-up
//! and turns on recursive read-only mounts (CRI `recursiveReadOnly`) only
//! for a handler that lists `rro` among its mount options. Containers run
//! in the guest under youki's libcontainer, so the options are the ones it
//! parses; the shim shares an `rro` volume into the VM read-only with its
//! submounts (`storage::fsops::clone_mount`), and libcontainer applies
//! `rro` again inside the guest. Nothing is listed that either side would
//! not honour (no idmapped mounts: CRI-O reads them as user-namespace
//! support).

use serde_json::{Value, json};

/// The runtime-spec versions the agent's `oci-spec` crate reads.
const OCI_VERSION_MIN: &str = "1.0.0";
const OCI_VERSION_MAX: &str = "1.1.0";

/// The mount options libcontainer 0.7 parses (`syscall/linux.rs`), plain
/// and recursive (`mount_setattr`).
const MOUNT_OPTIONS: [&str; 51] = [
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "bind",
    "rbind",
    "unbindable",
    "runbindable",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The document `features` prints.
pub fn document() -> Value {
    json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "mountOptions": MOUNT_OPTIONS.as_slice(),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "seccomp": {"enabled": true},
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_what_crio_reads() {
        let d = document();
        assert_eq!(d["ociVersionMin"], "1.0.0");
        assert!(!d["ociVersionMax"].as_str().unwrap_or_default().is_empty());
        let opts: Vec<&str> = d["mountOptions"]
            .as_array()
            .expect("mountOptions")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(opts.contains(&"rro"), "{opts:?}");
        let mut unique = opts.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), opts.len(), "duplicates in {opts:?}");
        assert!(d.pointer("/linux/mountExtensions/idmap").is_none());
    }
}
