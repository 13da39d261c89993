//! Errors the ports can return. Each says whether retrying can help.

use std::time::Duration;

/// A tracker operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrackerError {
    /// The tracker program is not installed. Not retryable.
    #[error("{program} not found: {hint}")]
    NotInstalled { program: String, hint: String },
    /// The tracker refused the operation. Retryable when it says so (e.g. a write-lock timeout).
    #[error("{message}")]
    Rejected {
        /// The tracker's error code (br's `error.code`, e.g. `DATABASE_LOCKED`).
        code: String,
        message: String,
        hint: Option<String>,
        retryable: bool,
    },
    /// No issue with this id. Not retryable.
    #[error("issue {0} not found")]
    NotFound(String),
    /// The tracker's data could not be read. Not retryable.
    #[error("{0}")]
    Corrupt(String),
    /// An I/O failure talking to the tracker. Retryable.
    #[error("{0}")]
    Io(String),
}

impl TrackerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rejected { retryable, .. } => *retryable,
            Self::Io(_) => true,
            Self::NotInstalled { .. } | Self::NotFound(_) | Self::Corrupt(_) => false,
        }
    }
}

/// Why an agent session or turn failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentErrorKind {
    /// The backend binary is missing or the wrong version. Not retryable.
    CouldNotStart,
    /// Credentials were refused. Not retryable.
    Authentication,
    /// Rate limited or overloaded. Retryable after the delay, if given.
    Overloaded { retry_after: Option<Duration> },
    /// The process died. Retryable by resuming the session.
    Crashed,
    /// No output for the idle timeout, or the turn ran past its hard limit. Retryable by resuming.
    TimedOut,
    /// The session was cancelled by mala. Not retryable.
    Cancelled,
    /// The backend spoke something mala could not understand. Not retryable.
    Protocol,
}

/// An agent session or turn failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            AgentErrorKind::Overloaded { .. } | AgentErrorKind::Crashed | AgentErrorKind::TimedOut
        )
    }
}

/// A review could not be produced (as opposed to a review that found problems).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The reviewer answered something that is not a valid verdict. Retryable.
    #[error("reviewer answer is invalid: {0}")]
    InvalidAnswer(String),
    /// The reviewer could not run at all. Not retryable.
    #[error("reviewer unavailable: {0}")]
    Unavailable(String),
    /// The reviewer ran and failed. Retryable.
    #[error("review failed: {0}")]
    Failed(String),
    /// mala is stopping; the review was cut short. Not a verdict on the work.
    #[error("the review was stopped")]
    Cancelled,
}

impl ReviewError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Unavailable(_) | Self::Cancelled)
    }
}
