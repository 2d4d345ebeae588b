//! The wire contract between the shim (host) and the agent (guest).
//!
//! This crate is the single source of truth for the agent API (`protos/`,
//! compiled to async ttrpc stubs at build time), the vsock port the agent
//! listens on, the kernel-command-line keys the shim writes and the agent
//! reads, the protocol version both sides must agree on, and the guest paths
//! that the image builder, the agent and the shim share.
#![deny(unsafe_code)]

#[allow(
    warnings,
    clippy::all,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub use generated::{agent, agent_ttrpc, health, health_ttrpc};

/// Wire-protocol version. Bump it on any change that an older peer would
/// misread; the shim refuses an agent that reports another number.
pub const PROTOCOL_VERSION: u32 = 3;

/// Version of the agent crate, reported by `Health.Version` and guest details.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// vsock port of the agent's ttrpc server.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// vsock port of the agent's debug console (a root shell per connection),
/// served only when the kernel command line has [`cmdline::DEBUG_CONSOLE`].
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1026;

/// Kernel-command-line keys the shim sets and the agent parses.
pub mod cmdline {
    /// Agent log level: `error`, `warn`, `info`, `debug` or `trace`.
    pub const LOG_LEVEL: &str = "agent.log";
    /// Which shared filesystem to mount at boot: `virtiofs`, `9p` or `none`.
    pub const SHARED_FS: &str = "agent.shared_fs";
    /// Seconds the agent waits for a device (console, share) to appear.
    pub const DEVICE_TIMEOUT: &str = "agent.device_timeout";
    /// Flag (no value): serve the debug console on
    /// [`super::DEBUG_CONSOLE_VSOCK_PORT`]. Set only when the configuration
    /// has `[agent.kata] debug_console_enabled = true`.
    pub const DEBUG_CONSOLE: &str = "agent.debug_console";
}

/// Guest-side paths shared by the image builder, the agent and the shim.
pub mod guest {
    /// Module list written by the image builder: one absolute `.ko` path per
    /// line, dependencies first, so the agent loads them in order.
    pub const MODULES_LOAD_LIST: &str = "/etc/kata/modules.load";
    /// Image manifest copied into the initrd, for diagnostics.
    pub const IMAGE_MANIFEST: &str = "/etc/kata/manifest.json";
    /// Console device the agent logs to (`console=hvc0`).
    pub const CONSOLE_DEVICE: &str = "/dev/hvc0";
    /// Where the sandbox share is mounted in the guest.
    pub const SHARED_FS_MOUNT: &str = "/run/kata-containers/shared/containers";
    /// Mount tag of the sandbox share (virtio-fs tag or 9p mount tag).
    pub const SHARED_FS_TAG: &str = "kataShared";
    /// The pod's shared `/dev/shm` (a guest tmpfs made at CreateSandbox);
    /// the shim points every container's `/dev/shm` bind here.
    pub const SANDBOX_SHM: &str = "/run/kata-containers/sandbox/shm";
    /// Largest probe file content returned by guest details.
    pub const SHARED_FS_PROBE_MAX: usize = 256;
    /// Printed on the console, whatever the log level, once the agent
    /// listens on vsock. The shim dials only after it has seen this line:
    /// connecting through hybrid vsock while the guest is still bringing
    /// its vsock device up can wedge vhost-device-vsock for good. The line
    /// is a hint, not a credential: the dial itself still has to succeed.
    pub const READY_MARKER: &str = "kata-agent: ready for the shim";
    /// The shell the debug console runs; only images built with
    /// `kata-guest-image --debug` have it (a symlink to `/bin/busybox`).
    pub const DEBUG_SHELL: &str = "/bin/sh";
    /// How the agent's one-line refusal on the debug console port starts
    /// (for instance when the image has no shell), so that `kata-ctl exec`
    /// can tell it from shell output.
    pub const DEBUG_CONSOLE_ERROR_PREFIX: &str = "kata-agent: debug console: ";
}

/// How the shim proves itself to the agent and to the debug console.
///
/// Before QEMU starts, the shim writes a fresh random token to
/// [`FILE`] at the root of the sandbox share (read-only to the guest, 0700
/// on the host, so readable only by the shim's side and this guest). The
/// first line on every connection to either port is [`PREFIX`] and the
/// token; the agent answers [`OK`] and then speaks ttrpc (or starts the
/// shell), or answers [`DENIED`] and closes. Under kernel vhost-vsock any
/// local user can connect to the guest's ports: the token is what keeps
/// them out. Hybrid vsock is also guarded by its 0700 socket directory.
pub mod auth {
    /// The token file at the root of the share.
    pub const FILE: &str = ".kata-agent-token";
    /// The token: 32 random bytes as 64 lowercase hex digits.
    pub const TOKEN_HEX_LEN: usize = 64;
    /// First bytes of the client's line: `AUTH <token>\n`.
    pub const PREFIX: &str = "AUTH ";
    /// The agent's answers, each followed by a newline.
    pub const OK: &str = "OK";
    pub const DENIED: &str = "DENIED";
    /// Longest line either side reads; anything longer is refused.
    pub const LINE_MAX: usize = 128;

    /// Whether `token` has the token's shape.
    pub fn well_formed(token: &str) -> bool {
        token.len() == TOKEN_HEX_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// How the agent and shim name the shared filesystem kinds on the command line.
pub mod shared_fs {
    /// virtio-fs through virtiofsd.
    pub const VIRTIOFS: &str = "virtiofs";
    /// virtio-9p served by QEMU itself.
    pub const NINE_P: &str = "9p";
    /// No share.
    pub const NONE: &str = "none";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_details_round_trip() {
        use protobuf::Message;
        let mut d = agent::GuestDetailsResponse::new();
        d.agent_version = AGENT_VERSION.to_string();
        d.protocol_version = PROTOCOL_VERSION;
        d.online_cpus = 2;
        d.shared_fs.mut_or_insert_default().probe_found = true;
        let bytes = d.write_to_bytes().expect("encode");
        let back = agent::GuestDetailsResponse::parse_from_bytes(&bytes).expect("decode");
        assert_eq!(back, d);
        assert!(back.shared_fs.probe_found);
    }

    #[test]
    fn cmdline_keys_are_agent_scoped() {
        for k in [
            cmdline::LOG_LEVEL,
            cmdline::SHARED_FS,
            cmdline::DEVICE_TIMEOUT,
        ] {
            assert!(k.starts_with("agent."), "{k}");
        }
    }
}
