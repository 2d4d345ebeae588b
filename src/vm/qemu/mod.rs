//! QEMU specifics: the typed command line, the guest kernel command line
//! and the QMP client. The process itself is supervised like any other
//! helper (`vm::child`).

pub mod cmdline;
pub mod kernel_cmdline;
pub mod qmp;
