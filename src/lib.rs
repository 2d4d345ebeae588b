//! `containerd-shim-kata-v2`: runs each pod in its own QEMU VM, booted from a
//! guest image built on the node from the node's own kernel, and drives the
//! agent that is PID 1 in that VM over ttrpc on vsock.
//!
//! # Architecture
//! - [`config`]: the typed `configuration.toml`.
//! - [`vm`]: QEMU and its per-VM helpers (virtiofsd, vhost-device-vsock):
//!   argv, acceleration and vsock choices, supervision, QMP, teardown.
//! - [`agent_client`]: dialing the agent and the calls the shim makes.
//! - [`sandbox`]: a VM together with its agent, booted and shut down as one.
//! - [`metrics`]: each shim's Prometheus metrics on its `metrics.sock`.
//! - [`boot_check`]: boot a VM without containerd and report what the guest
//!   says (`kata-ctl boot-check`).
//!
//! # Threading
//! One multi-threaded tokio runtime. Every helper process has a watcher task
//! that reaps it and publishes its exit on a `watch` channel, and output
//! pump tasks that re-log its lines under the sandbox id.
//!
//! # Threat model
//! The guest is untrusted: everything it prints is rate-limited and length
//! capped before it reaches the log, agent replies are data only, and host
//! paths are derived from validated sandbox ids, never from guest input.

pub mod agent_client;
pub mod annotations;
pub mod boot_check;
pub mod bootstrap;
pub mod config;
pub mod ctl;
pub mod error;
pub mod events;
pub mod guest;
pub mod host_cgroup;
pub mod ids;
pub mod layout;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod mounts;
pub mod network;
pub mod oci;
pub mod persist;
pub mod sandbox;
pub mod sizing;
pub mod state;
pub mod stdio;
pub mod storage;
pub mod task;
pub mod vm;
