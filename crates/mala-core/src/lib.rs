//! The vocabulary every mala crate speaks, and the ports adapters implement.
//!
//! This crate performs no I/O. It names things (issues, agents, events) and
//! declares the traits through which the pipeline reaches the outside world:
//! the issue tracker, the lock table, the agent backend, the reviewer, the
//! event sink, the clock and the run store. With the `mocks` feature every trait also gets a mockall mock.

mod agent;
mod control;
mod error;
mod event;
mod evidence;
mod issue;
mod locks;
mod ports;
mod run_record;

pub use agent::{
    AgentEvent, AgentId, SessionId, SessionRequest, TokenUsage, TurnOutcome, TurnStatus,
};
pub use control::StopAnswer;
pub use error::{
    AgentError, AgentErrorKind, BrCode, EnvFault, Refusal, RepoError, ReviewError, SharedIoError,
    TrackerError,
};
pub use event::{Event, IssueStep, LoggedEvent, QUEUE_SHOWN, QueuedIssue, RunOutcome};
pub use evidence::{CheckCommand, CheckFailure, CommandRun, CommitInfo, Evidence, FileEdit};
pub use issue::{
    ClaimOutcome, Dependency, DependencyKind, EpicStatus, Issue, IssueId, IssueStatus, IssueType,
    IssueUpdate, NewIssue, ParsePriorityError, Priority,
};
pub use locks::{AcquireReport, LockError, LockEvent, LockInfo, PathLock, WaitReport, WaitTarget};
pub use ports::{
    AgentBackend, AgentObserver, AgentSession, Clock, CommandRunner, EventSink, Fanout, Finding,
    IssueTracker, Landing, LockTable, Repository, ReviewRequest, ReviewSubject, ReviewVerdict,
    Reviewer, ToolGuard, Workspace, Workspaces,
};
pub use run_record::{IssueRecord, RunLog, RunStore, RunStoreError, STILL_RUNNING, run_is_over};

#[cfg(feature = "mocks")]
pub use ports::{
    MockAgentBackend, MockAgentObserver, MockAgentSession, MockClock, MockCommandRunner,
    MockEventSink, MockIssueTracker, MockLockTable, MockRepository, MockReviewer, MockToolGuard,
    MockWorkspaces,
};
