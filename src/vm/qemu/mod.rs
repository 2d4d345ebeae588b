//! QEMU specifics: the typed command line and the QMP client. The process
//! itself is supervised like any other helper (`vm::child`).

pub mod cmdline;
pub mod qmp;
