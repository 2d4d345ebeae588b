//! `containerd-shim-kata-v2`: runs each pod in its own QEMU VM, booted from a
//! guest image built on the node from the node's own kernel, and drives the
//! agent that is PID 1 in that VM over ttrpc on vsock.
//!
//! # Architecture
//! ARCHITECTURE.md is the map: the layers and what each module owns, where
//! every Task RPC has its logic, and the path of a Create and of an Exec.
//! In short, from the top: [`task`] adapts the ttrpc Task API to a
//! [`sandbox`] (one pod: every RPC's logic, in the module of its object),
//! which boots a [`vm`] and talks to its agent only through
//! [`agent_client`]; below them sit the host resources ([`storage`],
//! [`network`], [`host_cgroup`], [`persist`]) and the foundations ([`ids`],
//! [`layout`], [`config`], [`state`]). No two top-level modules depend on
//! each other (`tests/structure.rs`).
//!
//! # Threading
//! One multi-threaded tokio runtime. Every helper process has a watcher task
//! that reaps it and publishes its exit on a `watch` channel, and output
//! pump tasks that re-log its lines under the sandbox id.
//!
//! # Threat model
//! The guest is untrusted: every console line it prints is capped in length
//! while it is read and rate-limited before it reaches the log
//! (`vm::child`), agent replies are data only, and host paths are derived
//! from validated ids ([`ids`], [`layout`]), never from guest input.

pub mod agent_client;
pub mod annotations;
pub mod blocking;
pub mod boot_check;
pub mod bootstrap;
pub mod config;
pub mod ctl;
pub mod error;
pub mod events;
#[cfg(test)]
mod fuzz_tests;
pub mod guest;
pub mod host_cgroup;
pub mod ids;
pub mod keeper;
pub mod layout;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod mgmt;
pub mod mounts;
pub mod network;
pub mod oci;
pub mod persist;
pub mod ratelimit;
pub mod sandbox;
pub mod sizing;
pub mod state;
pub mod stdio;
pub mod storage;
pub mod task;
pub mod vm;
