//! What a run keeps of itself, and the port it keeps it through: the mark
//! that says a run is live (so its locks and claims are not taken), its
//! record as it goes, and earlier runs' records for `--resume`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Finding;

/// One issue in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRecord {
    pub issue: String,
    pub agent: String,
    /// `running`, `closed`, `failed`, `skipped`, `deferred`.
    pub status: String,
    pub reason: Option<String>,
    /// The session record (`sessions/<agent>.jsonl`).
    pub log_path: PathBuf,
    /// The agent's session, for resuming it.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Commits older than this were not this issue's work.
    #[serde(default)]
    pub baseline: Option<DateTime<Utc>>,
    /// Gate attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last review's blocking findings, fed back on a resume.
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    /// Worktree isolation: the issue's branch and its worktree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<PathBuf>,
    /// Where its branch is in the merge queue: `queued`, or `landed <commit>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,
    /// When this run claimed it, and when it ended (the dashboard's timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

impl IssueRecord {
    /// A record of `issue` just claimed by `agent`.
    pub fn new(issue: &str, agent: &str, log_path: PathBuf) -> Self {
        Self {
            issue: issue.to_owned(),
            agent: agent.to_owned(),
            status: "running".to_owned(),
            reason: None,
            log_path,
            session_id: None,
            baseline: None,
            attempts: 0,
            findings: Vec::new(),
            tokens: 0,
            cost_usd: 0.0,
            branch: None,
            worktree: None,
            merge: None,
            started_at: None,
            ended_at: None,
        }
    }
}

/// A run as `mala logs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLog {
    pub run_id: String,
    pub repo_path: PathBuf,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `finished`, `drained`, `interrupted`, `aborted`.
    pub outcome: String,
    /// What the run was set up to do (scope, width, checks, review, triggers).
    #[serde(default)]
    pub settings: serde_json::Value,
    pub issues: Vec<IssueRecord>,
}

/// What a run's `outcome` says while the run goes on.
pub const STILL_RUNNING: &str = "running";

/// Whether a run is over, as its record (or a view of it) says: it has
/// finished, or its outcome is anything but running (a run seen `gone`).
pub fn run_is_over(finished_at: Option<DateTime<Utc>>, outcome: &str) -> bool {
    finished_at.is_some() || outcome != STILL_RUNNING
}

impl RunLog {
    /// See [`run_is_over`].
    pub fn is_over(&self) -> bool {
        run_is_over(self.finished_at, &self.outcome)
    }
}

/// A run store that could not keep what it was given.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct RunStoreError {
    /// What it was doing, and where.
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// Where runs keep themselves. Every run of a repository that can see the
/// same locks must use the same store, or it cannot tell which runs live.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait RunStore: Send + Sync {
    /// Removes what runs that are gone left behind (their locks and marks);
    /// returns how many locks went.
    fn remove_stale(&self) -> usize;
    /// Marks `run` live until [`RunStore::unmark`]; the run does not start
    /// without it.
    fn mark_live(&self, run: &RunLog, max_agents: Option<u32>) -> Result<(), RunStoreError>;
    /// The run is over: its mark goes.
    fn unmark(&self, run_id: &str);
    /// Whether the run named in a claim or a lock is still running.
    fn is_alive(&self, run_id: &str) -> bool;
    /// Where the run's own files are (session records under `sessions/`).
    fn run_dir(&self, run_id: &str) -> PathBuf;
    /// Writes the run's record, at its start and its end.
    fn write_run(&self, run: &RunLog) -> Result<(), RunStoreError>;
    /// Keeps an issue's record; of several for one issue, the newest counts.
    fn record_issue(&self, run: &RunLog, record: &IssueRecord) -> Result<(), RunStoreError>;
    /// Earlier runs of the repository, newest first, with their issues.
    fn runs(&self) -> Vec<RunLog>;
    /// Whether the required checks passed before on the content `key`
    /// (`Repository::content_id` of a clean tree).
    fn baseline_passed(&self, key: &str) -> bool;
    /// Remembers that the required checks pass on the content `key`.
    fn record_baseline_passed(&self, key: &str);
}
