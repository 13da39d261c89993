//! The one event enum. Console output, the JSONL log and summaries are all sinks of it.

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::{AgentEvent, AgentId, EnvFault, Finding, IssueId, TokenUsage};

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Nothing left to do.
    Finished,
    /// Stopped after a Ctrl-C drain.
    Drained,
    /// Aborted, with the reason (a validation trigger that failed).
    Aborted { reason: String },
    /// Stopped by a second or third Ctrl-C.
    Interrupted,
    /// Stopped because the environment cannot work (credentials, the agent
    /// failing to start, a pause longer than allowed): the reason and its fix.
    Stopped { reason: String },
    /// The run's budget was reached: no new claims, the issues left open.
    BudgetReached { spent: String },
}

impl RunOutcome {
    /// The one word `run.json` and `mala logs` say for it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Drained => "drained",
            Self::Aborted { .. } => "aborted",
            Self::Interrupted => "interrupted",
            Self::Stopped { .. } => "stopped",
            Self::BudgetReached { .. } => "budget_reached",
        }
    }
}

/// How many of a plan's issues [`Event::QueuePlanned`] names.
pub const QUEUE_SHOWN: usize = 100;

/// An issue the scheduler would start next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedIssue {
    pub issue: IssueId,
    pub title: String,
}

/// The step of its pipeline an issue is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueStep {
    /// The agent works (a turn of its session).
    Turn,
    /// The quality gate judges the attempt.
    Gate,
    /// A reviewer reads the work.
    Review,
    /// The merge queue lands the branch (worktree isolation).
    Merge,
}

/// One line of a run's event log (`<run dir>/events.jsonl`), as read back:
/// when it happened, the event, and the event's JSON as it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub at: DateTime<Utc>,
    pub event: Event,
    pub json: String,
}

/// Everything that happens in a run, in one enum. It grows with the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        repo: String,
        max_agents: Option<usize>,
        /// Where the agents' session records go.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sessions: Option<std::path::PathBuf>,
    },
    RunFinished {
        run_id: String,
        outcome: RunOutcome,
        succeeded: usize,
        failed: usize,
    },
    IssueClaimed {
        issue: IssueId,
        agent: AgentId,
        /// The issue's title as the tracker has it (tracker text: untrusted).
        #[serde(default)]
        title: String,
    },
    IssueSkipped {
        issue: IssueId,
        reason: String,
    },
    /// The runner set the issue's baseline: its commits must be newer.
    IssueStarted {
        issue: IssueId,
        baseline: DateTime<Utc>,
    },
    Agent {
        agent: AgentId,
        event: AgentEvent,
    },
    /// Worktree isolation: the issue's agent works in `path` on `branch`.
    WorktreeOpened {
        issue: IssueId,
        branch: String,
        path: std::path::PathBuf,
    },
    /// The issue's branch passed its gate and review and waits in the merge queue.
    MergeQueued {
        issue: IssueId,
        branch: String,
    },
    /// The issue's branch landed: `target` contains `commit`. `note` says
    /// what the user should know (their checkout left alone).
    Landed {
        issue: IssueId,
        target: String,
        commit: String,
        note: Option<String>,
    },
    /// The quality gate judged an attempt.
    GateChecked {
        issue: IssueId,
        attempt: u32,
        passed: bool,
        reasons: Vec<String>,
    },
    /// A reviewer answered.
    Reviewed {
        issue: IssueId,
        attempt: u32,
        blocking: usize,
        advisory: usize,
        /// The blocking findings, which go back to the agent.
        #[serde(default)]
        findings: Vec<Finding>,
    },
    /// The agent is given another go (gate or review follow-up, or a resume).
    Retrying {
        issue: IssueId,
        why: String,
    },
    /// An agent's turn ended: what it spent.
    TurnFinished {
        issue: IssueId,
        /// The session the turn ran in, when the backend named it.
        #[serde(default)]
        session_id: Option<crate::SessionId>,
        usage: TokenUsage,
        /// Dollars this turn cost (the backend reports a running total per
        /// session; this is the part this turn added).
        cost_usd: f64,
    },
    /// The scheduler planned: ready issues it has not started yet.
    QueuePlanned {
        waiting: usize,
        /// The plan's first issues in the order they would start, up to
        /// [`QUEUE_SHOWN`] of them (the rest are counted, not named).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        queue: Vec<QueuedIssue>,
    },
    /// What the run has spent so far, as its budget counts it: every
    /// session's turns (the issues' agents, reviewers, the epic verifier,
    /// fixers, the preflight). Said at most once a second, and at the end.
    RunSpend {
        cost_usd: f64,
        tokens: u64,
    },
    /// The runner moved an issue to its next step.
    StepStarted {
        issue: IssueId,
        step: IssueStep,
    },
    /// The lock table changed: a lock taken or released, a wait begun or over.
    Lock {
        event: crate::LockEvent,
    },
    /// A deadlock between agents was broken: `victim` gave way to `holder`.
    DeadlockBroken {
        victim: AgentId,
        holder: AgentId,
        /// The agents on the cycle, oldest first.
        cycle: Vec<AgentId>,
    },
    IssueClosed {
        issue: IssueId,
    },
    IssueFailed {
        issue: IssueId,
        reason: String,
    },
    Warning {
        message: String,
    },
    /// The environment failed an agent; its issue was given back untouched
    /// (open, unassigned, no label, no note).
    EnvironmentFault {
        issue: IssueId,
        fault: EnvFault,
        message: String,
    },
    /// The issue was given back untouched because of the environment.
    IssueReleased {
        issue: IssueId,
        reason: String,
    },
    /// No new turns and no new claims until `until`.
    RunPaused {
        reason: String,
        until: DateTime<Utc>,
    },
    RunResumed,
    /// A budget was reached: `issue` (that issue fails) or `run` (the run
    /// drains; its open issues are left for the next run).
    BudgetReached {
        scope: String,
        /// The issue whose turn crossed it, when one did.
        issue: Option<IssueId>,
        spent: String,
    },
}
