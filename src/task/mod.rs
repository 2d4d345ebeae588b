//! The containerd shim v2 Task service of one pod: its ttrpc adapter, the
//! task and process state machines, and the events it publishes.

pub mod events;
