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
        /// br's `error.code`; `None` when br failed without its JSON envelope.
        code: Option<BrCode>,
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
    /// An I/O failure talking to the tracker: `context` says what mala was doing. Retryable.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: SharedIoError,
    },
    /// The tracker did not answer in time, or mala's own tracker machinery
    /// (the writer task, a store task) stopped. Retryable: nothing says the
    /// operation itself was refused.
    #[error("{0}")]
    Unavailable(String),
}

impl TrackerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rejected { retryable, .. } => *retryable,
            Self::Io { .. } | Self::Unavailable(_) => true,
            Self::NotInstalled { .. } | Self::NotFound(_) | Self::Corrupt(_) => false,
        }
    }

    /// An I/O failure while doing `context` (e.g. "reading .beads/issues.jsonl").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// br's code, when the tracker refused with one.
    pub fn code(&self) -> Option<&BrCode> {
        match self {
            Self::Rejected { code, .. } => code.as_ref(),
            _ => None,
        }
    }
}

/// br's error codes (`error.code` of its JSON envelope), the ones mala acts
/// on by name. The embedded store refuses with the same codes, so one match
/// serves both trackers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BrCode {
    /// The write lock was not acquired in time; nothing was written.
    DatabaseLocked,
    /// `--if-unchanged` saw a newer `updated_at`; nothing was written.
    UpdatePreconditionFailed,
    /// Every item of the command was skipped (e.g. the issue is already closed).
    NothingToDo,
    /// The arguments or the issue's state do not allow it (e.g. a refused claim).
    ValidationFailed,
    IssueNotFound,
    /// The dependency would close a cycle.
    CycleDetected,
    /// An issue cannot depend on itself.
    SelfDependency,
    /// The JSONL and the database disagree.
    SyncConflict,
    /// A code mala does not act on; kept as br printed it.
    Other(String),
}

impl BrCode {
    /// The code as br prints it, for the codes mala knows.
    fn known(&self) -> Option<&'static str> {
        Some(match self {
            Self::DatabaseLocked => "DATABASE_LOCKED",
            Self::UpdatePreconditionFailed => "UPDATE_PRECONDITION_FAILED",
            Self::NothingToDo => "NOTHING_TO_DO",
            Self::ValidationFailed => "VALIDATION_FAILED",
            Self::IssueNotFound => "ISSUE_NOT_FOUND",
            Self::CycleDetected => "CYCLE_DETECTED",
            Self::SelfDependency => "SELF_DEPENDENCY",
            Self::SyncConflict => "SYNC_CONFLICT",
            Self::Other(_) => return None,
        })
    }

    /// Reads br's code; an unknown one is kept as it is.
    pub fn parse(code: &str) -> Self {
        const KNOWN: [BrCode; 8] = [
            BrCode::DatabaseLocked,
            BrCode::UpdatePreconditionFailed,
            BrCode::NothingToDo,
            BrCode::ValidationFailed,
            BrCode::IssueNotFound,
            BrCode::CycleDetected,
            BrCode::SelfDependency,
            BrCode::SyncConflict,
        ];
        KNOWN
            .into_iter()
            .find(|known| known.known() == Some(code))
            .unwrap_or_else(|| Self::Other(code.to_owned()))
    }
}

impl std::fmt::Display for BrCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(code) => f.write_str(code),
            known => f.write_str(known.known().unwrap_or_default()),
        }
    }
}

/// An `std::io::Error` that errors holding it can clone and compare (by
/// kind and text), so they stay `Clone` and `PartialEq`; the original is
/// still the error's source.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct SharedIoError(std::sync::Arc<std::io::Error>);

impl SharedIoError {
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
}

impl From<std::io::Error> for SharedIoError {
    fn from(error: std::io::Error) -> Self {
        Self(std::sync::Arc::new(error))
    }
}

impl PartialEq for SharedIoError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SharedIoError {}

/// Why an agent session or turn failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentErrorKind {
    /// The backend binary is missing or the wrong version. Not retryable.
    CouldNotStart,
    /// Credentials were refused. Not retryable.
    Authentication,
    /// Overloaded or a server error. Retryable after the delay, if given.
    Overloaded { retry_after: Option<Duration> },
    /// A rate or usage limit: no call succeeds before `resets_at` (when
    /// the API said). Waiting helps; resuming at once does not.
    RateLimited {
        resets_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The model API could not be reached (refused, reset, DNS). Retryable.
    Network,
    /// The model API refuses this setup whatever the request (no credit
    /// left, a model that does not exist). Not retryable.
    Refused,
    /// Tools ran that mala's hooks never saw: the guard is not in the loop
    /// (hooks turned off by a setting or a policy). Not retryable.
    Unguarded,
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
            AgentErrorKind::Overloaded { .. }
                | AgentErrorKind::Network
                | AgentErrorKind::Crashed
                | AgentErrorKind::TimedOut
        )
    }
}

/// A failure of the environment the agents run in, not of the issue an
/// agent was given: every issue would have failed the same way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum EnvFault {
    /// The agent could not be started (missing, too old, refused to run).
    CouldNotStart,
    /// The model API refused the credentials.
    Authentication,
    /// A rate or usage limit; `until` is the reset time when the API gave one.
    UsageLimit {
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The model API stayed overloaded or unreachable through every retry.
    Unavailable,
    /// The model API refuses this setup (billing, an unknown model).
    Refused,
    /// The agent's tools ran without mala's hooks: nothing guards them.
    Unguarded,
}

impl EnvFault {
    /// The fault in a few words, for the console and the run log.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::CouldNotStart => "the agent could not start",
            Self::Authentication => "the model API refused the credentials",
            Self::UsageLimit { .. } => "a usage or rate limit was reached",
            Self::Unavailable => "the model API was overloaded or unreachable",
            Self::Refused => "the model API refused the account or the model",
            Self::Unguarded => "the agent's tools ran without mala's hooks",
        }
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
    /// The reviewer's agent met a fault of the environment (credentials, a
    /// limit, an API that stays down): not a verdict, and not the issue's.
    #[error("{message}")]
    Environment { fault: EnvFault, message: String },
}

impl ReviewError {
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Unavailable(_) | Self::Cancelled | Self::Environment { .. }
        )
    }
}

/// A repository operation failed. Not retryable as such: git already waits
/// out another process's `index.lock` before it reports `IndexLocked`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// git itself could not be started (not installed, no permission).
    #[error("could not run git: {0}")]
    CouldNotRun(#[source] SharedIoError),
    /// Another process kept `.git/index.lock` for as long as mala waits.
    #[error("git {command} kept finding .git/index.lock held by another process")]
    IndexLocked { command: String },
    /// git ran and refused; its stderr says why.
    #[error("git {command} failed: {stderr}")]
    Git { command: String, stderr: String },
    /// The commit could not be checked out apart from the shared working tree.
    #[error("could not check out {commit} in a worktree: {stderr}")]
    Checkout { commit: String, stderr: String },
}

/// Why a tool call was refused, worded for the agent: the text is the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn br_codes_read_and_print_as_br_spells_them() {
        for code in [
            "DATABASE_LOCKED",
            "UPDATE_PRECONDITION_FAILED",
            "NOTHING_TO_DO",
            "VALIDATION_FAILED",
            "ISSUE_NOT_FOUND",
            "CYCLE_DETECTED",
            "SELF_DEPENDENCY",
            "SYNC_CONFLICT",
            "SOMETHING_NEW",
        ] {
            assert_eq!(BrCode::parse(code).to_string(), code);
        }
        assert_eq!(BrCode::parse("DATABASE_LOCKED"), BrCode::DatabaseLocked);
        assert_eq!(BrCode::parse("CYCLE_DETECTED"), BrCode::CycleDetected);
        assert_eq!(
            BrCode::parse("database_locked"),
            BrCode::Other("database_locked".into()),
            "br's codes are upper case; another spelling is not guessed at"
        );
    }

    #[test]
    fn an_io_failure_keeps_its_kind_and_source() {
        use std::error::Error as _;
        let error = TrackerError::io(
            "reading .beads/issues.jsonl",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(error.to_string(), "reading .beads/issues.jsonl: denied");
        assert!(error.is_retryable());
        let TrackerError::Io { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(error.source().is_some());
        assert_eq!(error.clone(), error);
    }
}
