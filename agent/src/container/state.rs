//! The lifecycle of one container as the agent tracks it.
//!
//! libcontainer keeps its own status file, but it derives "stopped" from
//! `/proc/<pid>`, which is racy once the reaper has collected the pid (the
//! number can be reused). The agent's own state machine is the authority:
//! it only moves to `Stopped` when the reaper reported the init's exit.
//!
//! ```text
//! Created --start--> Running --exit--> Stopped
//!    |                 |  ^
//!    |               pause resume
//!    |                 v  |
//!    +---exit-----> Paused --exit--> Stopped
//! ```

use crate::error::{AgentError, Result};

/// Where a container is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Init process exists and waits for StartContainer.
    Created,
    /// StartContainer let the init exec the user's program.
    Running,
    /// The cgroup is frozen.
    Paused,
    /// The init process was reaped.
    Stopped,
}

impl ContainerState {
    fn refuse(self, what: &str) -> AgentError {
        AgentError::FailedPrecondition(format!("cannot {what} a container that is {self}"))
    }

    /// StartContainer is only valid once, right after creation.
    pub fn can_start(self) -> Result<()> {
        match self {
            Self::Created => Ok(()),
            s => Err(s.refuse("start")),
        }
    }

    /// Pausing freezes a running container.
    pub fn can_pause(self) -> Result<()> {
        match self {
            Self::Running => Ok(()),
            s => Err(s.refuse("pause")),
        }
    }

    /// Resuming thaws a paused container.
    pub fn can_resume(self) -> Result<()> {
        match self {
            Self::Paused => Ok(()),
            s => Err(s.refuse("resume")),
        }
    }

    /// Exec joins the namespaces of a live init, which only a running
    /// container has (a created one has not exec'd its program yet).
    pub fn can_exec(self) -> Result<()> {
        match self {
            Self::Running => Ok(()),
            s => Err(s.refuse("exec in")),
        }
    }

    /// Signals go to live processes; a created init can be killed too.
    pub fn can_signal(self) -> Result<()> {
        match self {
            Self::Created | Self::Running | Self::Paused => Ok(()),
            s => Err(s.refuse("signal")),
        }
    }

    /// Resources can change whenever the cgroup exists.
    pub fn can_update(self) -> Result<()> {
        match self {
            Self::Created | Self::Running | Self::Paused => Ok(()),
            s => Err(s.refuse("update")),
        }
    }

    /// Moves to `to`, refusing transitions the diagram does not have.
    pub fn transition(&mut self, to: ContainerState) -> Result<()> {
        let ok = matches!(
            (*self, to),
            (Self::Created, Self::Running)
                | (Self::Running, Self::Paused)
                | (Self::Paused, Self::Running)
                | (_, Self::Stopped)
        );
        if ok {
            *self = to;
            Ok(())
        } else {
            Err(AgentError::FailedPrecondition(format!(
                "container cannot go from {self} to {to}"
            )))
        }
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerState::*;
    use ttrpc::Code;

    #[test]
    fn guards_follow_the_diagram() {
        assert!(Created.can_start().is_ok());
        for s in [Running, Paused, Stopped] {
            let e = s.can_start().expect_err("only created starts");
            assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        }
        assert!(Running.can_pause().is_ok());
        assert!(Created.can_pause().is_err());
        assert!(Paused.can_resume().is_ok());
        assert!(Running.can_resume().is_err());
        assert!(Running.can_exec().is_ok());
        assert!(Created.can_exec().is_err());
        assert!(Stopped.can_exec().is_err());
        assert!(Stopped.can_signal().is_err());
        assert!(Created.can_signal().is_ok());
        assert!(Stopped.can_update().is_err());
    }

    #[test]
    fn transitions() {
        let mut s = Created;
        s.transition(Running).expect("start");
        s.transition(Paused).expect("pause");
        s.transition(Running).expect("resume");
        s.transition(Stopped).expect("exit");
        let e = s.transition(Running).expect_err("no restart");
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        let mut c = Created;
        assert!(c.transition(Paused).is_err());
        c.transition(Stopped).expect("a created init can die");
    }
}
