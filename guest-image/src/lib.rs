//! Builds the pod VM's initrd on the node from the node's own kernel: the
//! kernel's virtio/vsock/fs modules (decompressed, in load order), the agent
//! as `/init` with its shared libraries, and a manifest, packed as a newc
//! cpio compressed with a codec the kernel can unpack, installed atomically.
//!
//! The binary `kata-guest-image` is a thin CLI over [`build::run`],
//! [`build::raw_boot`] and [`floor::floor`] (the data-path floor's image:
//! the same modules, a tiny program instead of the agent); the modules are
//! public so tests and tools can parse and verify images.

pub mod build;
pub mod compress;
pub mod cpio;
pub mod elf;
pub mod floor;
pub mod install;
pub mod kernel;
pub mod manifest;
pub mod modules;
