//! The traits through which the pipeline reaches the outside world.
//!
//! Adapters live in `mala-infra`; fakes in `mala-testkit`; mocks are generated
//! here with the `mocks` feature.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    AcquireReport, AgentError, AgentEvent, AgentId, CheckCommand, CheckFailure, ClaimOutcome,
    CommitInfo, DependencyKind, EpicStatus, Event, Issue, IssueId, IssueUpdate, LockError,
    NewIssue, Refusal, RepoError, ReviewError, SessionId, SessionRequest, TrackerError,
    TurnOutcome, WaitReport,
};

/// The issue tracker (br, or the embedded JSONL store).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait IssueTracker: Send + Sync {
    /// Every issue the tracker holds, with dependencies.
    async fn all_issues(&self) -> Result<Vec<Issue>, TrackerError>;
    /// The tracker's own ready set: open, unblocked, not deferred.
    async fn ready(&self) -> Result<Vec<Issue>, TrackerError>;
    async fn show(&self, id: &IssueId) -> Result<Issue, TrackerError>;
    /// Claims the issue for `actor` so that no other mala takes it.
    async fn claim(&self, id: &IssueId, actor: &str) -> Result<ClaimOutcome, TrackerError>;
    /// Claims an in-progress issue held by `from` (a run that died, or nobody),
    /// only if nothing changed it since this tracker last read it.
    async fn take_over(
        &self,
        id: &IssueId,
        actor: &str,
        from: Option<String>,
    ) -> Result<ClaimOutcome, TrackerError>;
    async fn close(&self, id: &IssueId, reason: &str) -> Result<(), TrackerError>;
    /// Adds the needs-followup label and appends the notes (earlier notes are kept).
    async fn mark_needs_followup(&self, id: &IssueId, notes: &str) -> Result<(), TrackerError>;
    /// Puts the issue back to `open`, without an assignee, so a later run picks it up.
    async fn reopen(&self, id: &IssueId) -> Result<(), TrackerError>;
    async fn add_dependency(
        &self,
        issue: &IssueId,
        depends_on: &IssueId,
        kind: DependencyKind,
    ) -> Result<(), TrackerError>;
    async fn create(&self, issue: NewIssue) -> Result<IssueId, TrackerError>;
    async fn update(&self, id: &IssueId, update: IssueUpdate) -> Result<(), TrackerError>;
    async fn find_by_label(&self, label: &str) -> Result<Vec<Issue>, TrackerError>;
    async fn epic_status(&self) -> Result<Vec<EpicStatus>, TrackerError>;
    /// Closes every epic whose children are all closed; returns the ones it closed.
    async fn close_eligible_epics(&self) -> Result<Vec<IssueId>, TrackerError>;
    /// All descendants of an epic (children, grandchildren, ...).
    async fn descendants(&self, epic: &IssueId) -> Result<Vec<Issue>, TrackerError>;
    /// The nearest ancestor of type epic.
    async fn parent_epic(&self, id: &IssueId) -> Result<Option<IssueId>, TrackerError>;
    /// Writes pending changes to the tracker's files so they can be committed.
    async fn flush(&self) -> Result<(), TrackerError>;
}

/// The file locks agents take before they edit (the `lock_*` tools).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait LockTable: Send + Sync {
    /// Tries every path. With a non-zero timeout, waits until at least one
    /// path it was blocked on is acquired, or the time runs out.
    async fn acquire(
        &self,
        agent: &AgentId,
        paths: &[String],
        timeout: Duration,
    ) -> Result<AcquireReport, LockError>;
    /// Releases the paths this agent holds; returns the ones it released.
    async fn release(&self, agent: &AgentId, paths: &[String]) -> Result<Vec<String>, LockError>;
    /// Releases everything this agent holds; returns the keys released.
    async fn release_all(&self, agent: &AgentId) -> Result<Vec<String>, LockError>;
    /// Acquires nothing: says which of the paths other agents hold, so the
    /// caller can park the agent until they are free.
    async fn wait(&self, agent: &AgentId, paths: &[String]) -> Result<WaitReport, LockError>;
    /// The canonical paths this agent holds.
    fn held_by(&self, agent: &AgentId) -> Vec<PathBuf>;
    /// Who holds the lock of `path` (absolute), in this process or another.
    fn holder(&self, path: &Path) -> Option<AgentId>;
}

/// Receives what an agent does while a turn runs.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait AgentObserver: Send + Sync {
    fn on_event(&self, event: &AgentEvent);
    /// Asked when the agent wants to end its turn; a reason keeps it working
    /// (the agent gets the reason as feedback). `None` lets it stop.
    fn stop_feedback(&self) -> Option<String> {
        None
    }
}

/// The repository, as the pipeline needs it.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Repository: Send + Sync {
    /// The current HEAD commit, if the repository has one.
    async fn head(&self) -> Result<Option<String>, RepoError>;
    /// An id of HEAD's content apart from the tracker's files (`.beads/`):
    /// equal for two commits that differ only in issues. `None` without HEAD.
    async fn content_id(&self) -> Result<Option<String>, RepoError>;
    /// Recent commits whose subject starts with `bd-`, newest first.
    async fn issue_commits(&self) -> Result<Vec<CommitInfo>, RepoError>;
    /// Whether the working tree and the index match HEAD.
    async fn is_clean(&self) -> Result<bool, RepoError>;
    /// Those of `paths` (absolute) whose working-tree state differs from
    /// HEAD: changed, removed, or new and not ignored.
    async fn differs_from_head(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError>;
    /// Unstages those of `paths` that are staged; returns the ones it unstaged.
    async fn unstage(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError>;
    /// Runs `commands` in order in a clean checkout of `commit`, apart from
    /// the shared working tree, and stops at the first failure. `Err` means
    /// the checkout itself could not be made.
    async fn check_commit(
        &self,
        commit: &str,
        commands: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError>;
    /// Like `check_commit`, with `restore` (relative paths) put back first
    /// as they were at `baseline` (and removed where it lacks them): the
    /// agent's code against the checks as they were before it changed them.
    async fn check_commit_against(
        &self,
        commit: &str,
        baseline: &str,
        restore: &[String],
        commands: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError>;
    /// Commits the tracker's files (`.beads/`) alone, whatever else is
    /// staged, so the issues' new states travel with the code. Returns the
    /// new commit, or `None` when they did not change (or there are none).
    async fn commit_tracker_files(&self, message: &str) -> Result<Option<String>, RepoError>;
}

/// Where each issue's agent works when agents are isolated
/// (`isolation: worktree`): a working tree and branch of its own, and the
/// one queue per target branch that lands finished branches.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Workspaces: Send + Sync {
    /// The issue's workspace: made from the target's head, or the one an
    /// earlier run left for it, its work kept (a rebase or merge that run
    /// left half done is aborted first).
    async fn open(&self, issue: &IssueId) -> Result<Workspace, RepoError>;
    /// Puts the issue's branch on the target's latest head, runs `validate`
    /// on the result in the issue's working tree, then fast-forwards the
    /// target, one issue at a time in the order they ask. A branch the
    /// target already contains is landed, without a second merge.
    async fn land(&self, issue: &IssueId, validate: &[CheckCommand]) -> Result<Landing, RepoError>;
    /// Removes the issue's working tree once it is closed; its branch too,
    /// unless branches are kept.
    async fn remove(&self, issue: &IssueId) -> Result<(), RepoError>;
    /// The issues that have a working tree now.
    async fn issues(&self) -> Result<Vec<IssueId>, RepoError>;
}

/// One issue's working tree, its branch, and git in it.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // a trait object
pub struct Workspace {
    pub root: std::path::PathBuf,
    pub branch: String,
    /// The branch it lands on.
    pub target: String,
    pub repo: Arc<dyn Repository>,
}

/// How an issue's branch went through the merge queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// The target now contains the branch at `commit`. `note` says what the
    /// user should know (their checkout left alone, say).
    Landed {
        commit: String,
        note: Option<String>,
    },
    /// The branch does not apply on `onto`, the head of `base` (the target,
    /// or `mala/merged`): `files` conflict.
    Conflict {
        base: String,
        onto: String,
        files: Vec<String>,
        detail: String,
    },
    /// The branch applies on `onto`, but validation failed on the result.
    Failed {
        base: String,
        onto: String,
        failure: CheckFailure,
    },
    /// The tree cannot land as it is (`what` says why: files not
    /// committed, a rebase in progress); nothing was tried.
    Unready { what: String },
}

/// Decides every tool call an agent makes (the coordination rules).
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait ToolGuard: Send + Sync {
    /// `Err(refusal)` refuses the call; the agent sees the refusal's text.
    fn check(&self, agent: &AgentId, tool: &str, input: &serde_json::Value) -> Result<(), Refusal>;
}

/// Starts agent sessions (Claude Code, later Codex).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait AgentBackend: Send + Sync {
    async fn start(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError>;

    /// Stops every live session: running turns are interrupted, no new turn
    /// starts, and their turns end `Cancelled`. The default does nothing.
    async fn stop_all(&self) {}

    /// Kills every live session's processes at once. The default does nothing.
    fn kill_all(&self) {}
}

/// One live conversation with an agent; several turns may run in it.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait AgentSession: Send + Sync {
    fn session_id(&self) -> Option<SessionId>;
    /// Sends a prompt and waits for the turn to end.
    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError>;
    /// Asks the agent to stop the current turn.
    async fn interrupt(&mut self) -> Result<(), AgentError>;
    /// Ends the session and its process.
    async fn close(&mut self) -> Result<(), AgentError>;
}

/// A review finding. Priority 0 and 1 block; 2 and 3 are advisory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub priority: u8,
    pub title: String,
    pub body: String,
    pub file: Option<String>,
    pub line_start: Option<u32>,
    pub line_end: Option<u32>,
}

impl Finding {
    /// The least urgent priority that blocks by default: P0 and P1 block.
    pub const BLOCKING_PRIORITY: u8 = 1;

    /// Whether it blocks where findings at `threshold` or more urgent do
    /// (0 is the most urgent).
    pub fn is_blocking(&self, threshold: u8) -> bool {
        self.priority <= threshold
    }

    /// Whether it blocks by the default rule (P0 and P1).
    pub fn blocks(&self) -> bool {
        self.is_blocking(Self::BLOCKING_PRIORITY)
    }
}

/// What is under review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewSubject {
    /// One issue's commits.
    Issue(IssueId),
    /// The run's commits since a point (a trigger's cumulative review),
    /// named for the trigger.
    Range(String),
}

impl ReviewSubject {
    /// A name fit for files, run keys and agent ids.
    pub fn name(&self) -> String {
        match self {
            Self::Issue(issue) => issue.to_string(),
            Self::Range(name) => format!("run-{name}"),
        }
    }
}

/// What a reviewer is asked to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRequest {
    pub subject: ReviewSubject,
    /// What the change is meant to do (an issue's title, description and
    /// acceptance criteria, or what a range of commits is).
    pub description: String,
    /// Commit ids to review, oldest first.
    pub commits: Vec<String>,
    pub context: String,
    /// The author's session, for reviewers that key their state on it.
    pub session_id: Option<SessionId>,
}

/// A reviewer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewVerdict {
    pub findings: Vec<Finding>,
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Reviewer: Send + Sync {
    async fn review(&self, request: ReviewRequest) -> Result<ReviewVerdict, ReviewError>;
}

/// Where events go: console, JSONL file, summaries.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Sends each event to every sink, in order.
pub struct Fanout(pub Vec<std::sync::Arc<dyn EventSink>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fanout({} sinks)", self.0.len())
    }
}

impl EventSink for Fanout {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// Runs the project's commands where mala itself runs them, in the shared
/// working tree: validation triggers and the baseline.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `commands` in order in `dir`, and stops at the first failure.
    /// Dropped mid-way, it stops the running command and its children.
    async fn run(&self, dir: &Path, commands: &[CheckCommand]) -> Result<(), CheckFailure>;
}

/// Time, injected so that backoff and timeouts can be tested without waiting.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    async fn sleep(&self, duration: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(id: &str) -> Issue {
        Issue::new(id, "t", Utc::now())
    }

    #[tokio::test]
    async fn tracker_mock_is_usable_behind_a_trait_object() {
        let mut mock = MockIssueTracker::new();
        mock.expect_ready()
            .times(1)
            .returning(|| Ok(vec![issue("a-1")]));
        let tracker: Box<dyn IssueTracker> = Box::new(mock);
        let ready = tracker.ready().await.unwrap();
        assert_eq!(ready[0].id.as_str(), "a-1");
    }

    #[test]
    fn event_sink_mock_sees_events() {
        let mut sink = MockEventSink::new();
        sink.expect_emit()
            .withf(|e| matches!(e, Event::Warning { message } if message == "hi"))
            .times(1)
            .return_const(());
        sink.emit(&Event::Warning {
            message: "hi".into(),
        });
    }
}
