//! QEMU specifics: the typed command line, the guest kernel command line,
//! the NICs' arguments, the QMP client and the memory hotplug it drives.
//! The process itself is supervised like any other helper (`vm::child`).

pub mod cmdline;
pub mod hotplug;
pub mod kernel_cmdline;
pub mod nic;
pub mod qmp;
