//! (being rewritten: the pod orchestration lands here)

mod boot;

pub use boot::{SandboxError, SandboxVm};
