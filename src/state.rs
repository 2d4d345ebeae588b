//! The lifecycles of a process (a container's init or an exec) and of the
//! sandbox, as explicit state machines. Every RPC that changes a state goes
//! through one transition method here, so a wrong-state request is refused
//! in one place with FAILED_PRECONDITION.

use std::time::SystemTime;

use containerd_shim_protos::api::Status;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// 0-255; 128+N for signal N; 255 when unknown.
    pub status: u32,
    pub at: SystemTime,
}

/// Exit status when the real one cannot be known (the VM died).
pub const UNKNOWN_EXIT: u32 = 255;

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit {
            status: status.min(UNKNOWN_EXIT),
            at: SystemTime::now(),
        }
    }

    /// From the agent's WaitProcess status (0-255 expected).
    pub fn from_agent(status: i32) -> Exit {
        Exit::now(u32::try_from(status).unwrap_or(UNKNOWN_EXIT))
    }
}

/// A refused transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a process that is {from}")]
pub struct Transition {
    pub action: &'static str,
    pub from: &'static str,
}

/// The lifecycle of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Created,
    Running,
    /// Only a container's init: the container is frozen.
    Paused,
    Stopped(Exit),
}

impl ProcessState {
    pub fn name(&self) -> &'static str {
        match self {
            ProcessState::Created => "created",
            ProcessState::Running => "running",
            ProcessState::Paused => "paused",
            ProcessState::Stopped(_) => "stopped",
        }
    }

    fn refuse(&self, action: &'static str) -> Transition {
        Transition {
            action,
            from: self.name(),
        }
    }

    pub fn start(&mut self) -> Result<(), Transition> {
        match self {
            ProcessState::Created => {
                *self = ProcessState::Running;
                Ok(())
            }
            _ => Err(self.refuse("start")),
        }
    }

    pub fn pause(&mut self) -> Result<(), Transition> {
        match self {
            ProcessState::Running => {
                *self = ProcessState::Paused;
                Ok(())
            }
            _ => Err(self.refuse("pause")),
        }
    }

    pub fn resume(&mut self) -> Result<(), Transition> {
        match self {
            ProcessState::Paused => {
                *self = ProcessState::Running;
                Ok(())
            }
            _ => Err(self.refuse("resume")),
        }
    }

    /// Records the exit; the first one wins. Returns whether this call
    /// stopped the process.
    pub fn exit(&mut self, exit: Exit) -> bool {
        match self {
            ProcessState::Stopped(_) => false,
            _ => {
                *self = ProcessState::Stopped(exit);
                true
            }
        }
    }

    /// Delete is allowed before start (nothing runs) and after the exit.
    pub fn check_delete(&self) -> Result<(), Transition> {
        match self {
            ProcessState::Created | ProcessState::Stopped(_) => Ok(()),
            _ => Err(self.refuse("delete")),
        }
    }

    pub fn exit_info(&self) -> Option<Exit> {
        match self {
            ProcessState::Stopped(e) => Some(*e),
            _ => None,
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self, ProcessState::Stopped(_))
    }

    pub fn status(&self) -> Status {
        match self {
            ProcessState::Created => Status::CREATED,
            ProcessState::Running => Status::RUNNING,
            ProcessState::Paused => Status::PAUSED,
            ProcessState::Stopped(_) => Status::STOPPED,
        }
    }
}

/// The lifecycle of the pod's VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    /// The shim serves, no sandbox container was created yet.
    Empty,
    /// The sandbox container's Create is booting the VM.
    Booting,
    Running,
    /// The VM died or its agent stopped answering; every process was
    /// reported exited with 255 and the VM was torn down.
    Dead {
        reason: String,
    },
    /// Torn down on purpose (sandbox deleted, or its creation failed).
    Stopped,
}

impl SandboxState {
    pub fn name(&self) -> &'static str {
        match self {
            SandboxState::Empty => "not created",
            SandboxState::Booting => "booting",
            SandboxState::Running => "running",
            SandboxState::Dead { .. } => "dead",
            SandboxState::Stopped => "stopped",
        }
    }

    pub fn begin_boot(&mut self) -> Result<(), Transition> {
        match self {
            SandboxState::Empty => {
                *self = SandboxState::Booting;
                Ok(())
            }
            _ => Err(Transition {
                action: "create the sandbox of",
                from: self.name(),
            }),
        }
    }

    pub fn booted(&mut self) -> Result<(), Transition> {
        match self {
            SandboxState::Booting => {
                *self = SandboxState::Running;
                Ok(())
            }
            _ => Err(Transition {
                action: "finish booting",
                from: self.name(),
            }),
        }
    }

    /// Running or booting → dead. Returns whether this call made it dead.
    pub fn die(&mut self, reason: String) -> bool {
        match self {
            SandboxState::Running | SandboxState::Booting => {
                *self = SandboxState::Dead { reason };
                true
            }
            _ => false,
        }
    }

    pub fn stop(&mut self) {
        if !matches!(self, SandboxState::Dead { .. }) {
            *self = SandboxState::Stopped;
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, SandboxState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_transitions() {
        let mut p = ProcessState::Created;
        assert!(p.pause().is_err());
        assert!(p.check_delete().is_ok());
        p.start().expect("start");
        assert_eq!(p.status(), Status::RUNNING);
        assert_eq!(
            p.start().expect_err("twice").to_string(),
            "cannot start a process that is running"
        );
        assert!(p.check_delete().is_err());
        p.pause().expect("pause");
        assert_eq!(p.status(), Status::PAUSED);
        p.resume().expect("resume");
        assert!(p.exit(Exit::now(3)));
        assert!(!p.exit(Exit::now(4)), "the first exit wins");
        assert_eq!(p.exit_info().map(|e| e.status), Some(3));
        assert_eq!(p.status(), Status::STOPPED);
        assert!(p.check_delete().is_ok());
        assert!(p.resume().is_err());
    }

    #[test]
    fn exit_codes_are_bounded() {
        assert_eq!(Exit::from_agent(137).status, 137);
        assert_eq!(Exit::from_agent(-1).status, UNKNOWN_EXIT);
        assert_eq!(Exit::from_agent(70000).status, UNKNOWN_EXIT);
    }

    #[test]
    fn sandbox_transitions() {
        let mut s = SandboxState::Empty;
        assert!(s.booted().is_err());
        s.begin_boot().expect("boot");
        assert!(s.begin_boot().is_err());
        s.booted().expect("booted");
        assert!(s.is_running());
        assert!(s.die("qemu exited".into()));
        assert!(!s.die("again".into()));
        s.stop();
        assert_eq!(s.name(), "dead");
        let mut t = SandboxState::Running;
        t.stop();
        assert_eq!(t, SandboxState::Stopped);
        assert!(!t.die("late".into()));
    }
}
