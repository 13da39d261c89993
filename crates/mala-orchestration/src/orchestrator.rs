//! The run as a library: an [`Orchestrator`] runs the queue with whatever
//! tracker, agent backend, reviewer and repository it is given. `mala run`
//! builds one from the real adapters ([`crate::run`]); other tools and the
//! tests build their own with [`Orchestrator::builder`].
//!
//! The scheduler loop here is the only owner of what is active, done and
//! failed. Workers (one task per issue) report their result when they end;
//! the deadlock monitor reports victims; the shutdown watch says when to
//! drain, stop and kill.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mala_core::{
    AgentBackend, AgentId, Clock, Event, EventSink, IssueId, IssueTracker, LockEvent, LockTable,
    Repository, Reviewer, RunOutcome, SessionId, TrackerError,
};
use mala_domain::{
    EpicDepth, FireOn, IssueGraph, Order, QueueRequest, SchedulerView, Scope, Settings, agent_name,
    claim_actor, done, plan_queue, required_commands, run_end_fires, spawn_capacity,
    takeover_candidates,
};
use mala_infra::{
    EpicVerifier, IssueRecord, RunLog, RunMarker, SystemClock, commit_tracker_files, encode_repo,
    is_run_alive, remove_stale,
};
use mala_pipeline::{IssueResult, Resume, RunnerConfig, RunnerPorts, run_issue_from};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::epics::{EpicBook, sweep_epics};
use crate::recorder::{Recorded, RunRecorder};
use crate::triggers::{
    CodeReviewRun, SessionEndTrigger, TriggerOutcome, run_code_review, run_trigger,
};
use crate::{DeadlockNews, run_deadlock_monitor};

/// The shutdown stages a Ctrl-C steps through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Take issues as they become ready.
    Running,
    /// Take no new issues; let the running ones finish.
    Drain,
    /// Stop the running ones now; their issues are picked up by the next run.
    Abort,
    /// Kill the agents' process groups at once, then end as `Abort` does.
    Kill,
}

/// What a run works on and how wide, apart from the ports it works through.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Which issues (`--scope`).
    pub scope: Scope,
    /// In what order (`--order`).
    pub order: Order,
    /// Agents at once (`--max-agents`).
    pub max_agents: usize,
    /// Issues started in all, at most (`--max-issues`).
    pub max_issues: Option<usize>,
    /// What happens to work in progress and earlier sessions.
    pub resume: ResumePolicy,
    /// Keep polling for new ready issues this often instead of ending when idle.
    pub watch: Option<Duration>,
    /// Names this run in claims, agent names, locks and its state directory.
    pub run_id: String,
}

/// `--resume` and its companions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumePolicy {
    /// `--resume`: take up unassigned work in progress too, and continue any
    /// issue's earlier session. (A dead run's claims are taken up anyway.)
    pub take_up: bool,
    /// What resumed issues do with their earlier sessions.
    pub sessions: SessionPolicy,
    /// `--review-wip`: work in progress is reviewed before any new turn.
    pub review_wip: bool,
}

/// What a resumed issue does with its earlier session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionPolicy {
    /// Continue it; start a new one when there is none.
    #[default]
    Continue,
    /// `--fresh`: start a new one, with the earlier review findings.
    Fresh,
    /// `--strict`: continue it; work in progress without one fails.
    Strict,
}

impl Default for RunPlan {
    fn default() -> Self {
        Self {
            scope: Scope::All,
            order: Order::default(),
            max_agents: 1,
            max_issues: None,
            resume: ResumePolicy::default(),
            watch: None,
            run_id: "run".to_owned(),
        }
    }
}

/// How the run went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Issues closed.
    pub closed: Vec<IssueId>,
    /// Issues that failed, with why (they carry needs-followup).
    pub failed: Vec<(IssueId, String)>,
    /// Issues not worked on to the end, with why (claimed elsewhere,
    /// blocked, stopped); nothing was recorded against them.
    pub skipped: Vec<(IssueId, String)>,
    /// Issues given way in a deadlock; open again for later.
    pub deferred: Vec<IssueId>,
    /// A second or third Ctrl-C stopped the run.
    pub interrupted: bool,
    /// A validation trigger stopped the run (the command that failed).
    pub aborted: Option<String>,
    /// Where this run's session records are.
    pub state_dir: PathBuf,
}

/// A run that could not start, or whose tracker failed under it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The tracker could not be read or written.
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// Something the run needs is missing or unusable (the message says what).
    #[error("{0}")]
    Setup(String),
    /// The agent backend cannot start (missing binary, wrong version, no login).
    #[error(transparent)]
    Agent(#[from] mala_core::AgentError),
}

/// Where the scheduler reads the whole tracker from, once per planning round.
#[async_trait::async_trait]
pub trait IssueSource: Send + Sync {
    /// Every issue, as a graph, as of now.
    async fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError>;
}

/// Any tracker is a source: the graph is built from all its issues.
struct FromTracker(Arc<dyn IssueTracker>);

#[async_trait::async_trait]
impl IssueSource for FromTracker {
    async fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        Ok(Arc::new(IssueGraph::new(self.0.all_issues().await?)))
    }
}

/// The run's state directory: `<runs dir>/<encoded repo>/<run id>`.
pub fn state_dir(settings: &Settings, repo_root: &Path, run_id: &str) -> PathBuf {
    settings
        .paths
        .runs_dir
        .join(encode_repo(repo_root))
        .join(run_id)
}

/// What `run.json` says the run was set up to do.
fn settings_summary(settings: &Settings, plan: &RunPlan) -> serde_json::Value {
    let t = &settings.validation_triggers;
    let triggers: Vec<&str> = [
        ("session_end", t.session_end.is_some()),
        ("periodic", t.periodic.is_some()),
        ("epic_completion", t.epic_completion.is_some()),
        ("run_end", t.run_end.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    serde_json::json!({
        "scope": plan.scope.to_string(),
        "order": format!("{:?}", plan.order),
        "max_agents": plan.max_agents,
        "max_issues": plan.max_issues,
        "resume": plan.resume.take_up,
        "model": settings.model,
        "required_checks": settings.evidence_check.required,
        "gate_rerun": settings.gate.rerun,
        "per_issue_review": settings.per_issue_review.enabled.then(|| settings.per_issue_review.reviewer.reviewer_type.to_string()),
        "epic_verification": settings.epic_verification.enabled,
        "triggers": triggers,
    })
}

/// Triggers whose `code_review` is enabled (not built yet: said, not hidden).
fn triggers_with_code_review(settings: &Settings) -> Vec<&'static str> {
    let t = &settings.validation_triggers;
    let enabled = |trigger: Option<&mala_domain::Trigger>| {
        trigger
            .and_then(|t| t.code_review.as_ref())
            .is_some_and(|r| r.enabled)
    };
    [
        ("session_end", enabled(t.session_end.as_ref())),
        ("periodic", enabled(t.periodic.as_ref().map(|p| &p.trigger))),
        (
            "epic_completion",
            enabled(t.epic_completion.as_ref().map(|e| &e.trigger)),
        ),
        ("run_end", enabled(t.run_end.as_ref().map(|r| &r.trigger))),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// The newest record of each issue in this repository's earlier runs.
fn prior_records(
    runs_dir: &Path,
    repo_root: &Path,
    this_run: &str,
) -> HashMap<IssueId, IssueRecord> {
    let mut priors = HashMap::new();
    // Newest run first: the first record of an issue wins.
    for run in RunLog::list(runs_dir, Some(repo_root)) {
        if run.run_id == this_run {
            continue;
        }
        for record in run.issues {
            priors
                .entry(IssueId::new(record.issue.clone()))
                .or_insert(record);
        }
    }
    priors
}

/// How `issue`'s work picks up: a dead run's claim (`takeover`) always
/// continues its earlier session; with `--resume` any issue with a record
/// does. `--strict` applies to work in progress only: a new issue has no
/// earlier session to miss.
fn resume_for(
    plan: &RunPlan,
    priors: &HashMap<IssueId, IssueRecord>,
    issue: &IssueId,
    takeover: bool,
) -> Option<Resume> {
    let policy = plan.resume;
    if !takeover && !policy.take_up {
        return None;
    }
    let prior = priors.get(issue);
    if prior.is_none() && !takeover {
        return None;
    }
    Some(Resume {
        session_id: prior.and_then(|p| p.session_id.clone()).map(SessionId::new),
        baseline: prior.and_then(|p| p.baseline),
        findings: prior.map(|p| p.findings.clone()).unwrap_or_default(),
        fresh: policy.sessions == SessionPolicy::Fresh,
        strict: policy.sessions == SessionPolicy::Strict && takeover,
        review_first: policy.review_wip && takeover,
    })
}

struct Worker {
    agent: AgentId,
    abort: tokio::task::AbortHandle,
}

/// Waits for one worker to end and records its result.
async fn wait_for_worker(
    workers: &mut JoinSet<(IssueId, IssueResult)>,
    active: &mut HashMap<IssueId, Worker>,
    summary: &mut RunSummary,
    events: &Arc<dyn EventSink>,
) {
    match workers.join_next().await {
        Some(Ok((issue, result))) => {
            active.remove(&issue);
            record(summary, issue, result);
        }
        Some(Err(error)) => {
            if !error.is_cancelled() {
                events.emit(&Event::Warning {
                    message: format!("an issue worker crashed: {error}"),
                });
            }
            active.retain(|_, w| !w.abort.is_finished());
        }
        None => active.clear(),
    }
}

/// The scheduler's part in a deadlock: stop the victim's worker at once
/// (its issue is deferred), then, once the tracker has the deadlock, let the
/// deferred issues be planned again.
fn on_deadlock_news(
    news: Option<DeadlockNews>,
    active: &mut HashMap<IssueId, Worker>,
    deferred: &mut HashSet<IssueId>,
    attempted: &mut HashSet<IssueId>,
    unrecorded: &mut usize,
    events: &Arc<dyn EventSink>,
) {
    match news {
        Some(DeadlockNews::Stop(stop)) => {
            *unrecorded += 1;
            if let Some((issue, worker)) = active.iter().find(|(_, w)| w.agent == stop.victim) {
                let issue = issue.clone();
                worker.abort.abort();
                deferred.insert(issue.clone());
                events.emit(&Event::IssueSkipped {
                    issue,
                    reason: "gave way in a deadlock; it runs again once its blocker closes".into(),
                });
            }
        }
        Some(DeadlockNews::Recorded(_)) => {
            *unrecorded = unrecorded.saturating_sub(1);
            attempted.retain(|id| !deferred.contains(id));
        }
        None => *unrecorded = 0,
    }
}

/// How long stopped sessions get to end their turns and release their locks
/// before their workers are cancelled outright.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The second Ctrl-C: interrupt every session, give the workers a moment to
/// record themselves as stopped (locks released, claims kept for the next
/// run), then cancel whatever is still running. The third kills at once.
async fn stop_workers(
    backends: &[Arc<dyn AgentBackend>],
    workers: &mut JoinSet<(IssueId, IssueResult)>,
    active: &mut HashMap<IssueId, Worker>,
    summary: &mut RunSummary,
    events: &Arc<dyn EventSink>,
    stage: &mut watch::Receiver<Stage>,
) {
    let kill = |backends: &[Arc<dyn AgentBackend>]| {
        for backend in backends {
            backend.kill_all();
        }
    };
    if *stage.borrow() == Stage::Kill {
        kill(backends);
    } else {
        for backend in backends {
            backend.stop_all().await;
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    let mut stage_open = true;
    while !workers.is_empty() {
        tokio::select! {
            () = wait_for_worker(workers, active, summary, events) => {}
            () = tokio::time::sleep_until(deadline) => break,
            changed = stage.changed(), if stage_open => {
                stage_open = changed.is_ok();
                if *stage.borrow() == Stage::Kill {
                    // The third Ctrl-C: no more grace.
                    kill(backends);
                    break;
                }
            }
        }
    }
    workers.abort_all();
    while workers.join_next().await.is_some() {}
}

fn record(summary: &mut RunSummary, issue: IssueId, result: IssueResult) {
    match result {
        IssueResult::Closed { .. } => summary.closed.push(issue),
        IssueResult::Failed { reason } => summary.failed.push((issue, reason)),
        IssueResult::Skipped { reason } => summary.skipped.push((issue, reason)),
    }
}

/// A run, ready to go. Build one with [`Orchestrator::builder`].
pub struct Orchestrator {
    settings: Settings,
    repo_root: PathBuf,
    plan: RunPlan,
    source: Arc<dyn IssueSource>,
    tracker: Arc<dyn IssueTracker>,
    backend: Arc<dyn AgentBackend>,
    reviewer: Option<Arc<dyn Reviewer>>,
    trigger_reviewer: Option<Arc<dyn Reviewer>>,
    epic_verifier: Option<EpicVerifier>,
    repository: Arc<dyn Repository>,
    locks: Option<Arc<dyn LockTable>>,
    lock_events: Option<mpsc::UnboundedReceiver<LockEvent>>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    /// Every backend whose sessions a stop must reach.
    stoppable: Vec<Arc<dyn AgentBackend>>,
    commit_tracker: bool,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("repo_root", &self.repo_root)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Collects the ports of a run. A tracker, an agent backend and a
/// repository are required; the rest is optional.
pub struct OrchestratorBuilder {
    settings: Settings,
    repo_root: PathBuf,
    plan: RunPlan,
    source: Option<Arc<dyn IssueSource>>,
    tracker: Option<Arc<dyn IssueTracker>>,
    backend: Option<Arc<dyn AgentBackend>>,
    reviewer: Option<Arc<dyn Reviewer>>,
    trigger_reviewer: Option<Arc<dyn Reviewer>>,
    epic_backend: Option<Arc<dyn AgentBackend>>,
    repository: Option<Arc<dyn Repository>>,
    locks: Option<Arc<dyn LockTable>>,
    lock_events: Option<mpsc::UnboundedReceiver<LockEvent>>,
    events: Option<Arc<dyn EventSink>>,
    clock: Option<Arc<dyn Clock>>,
    stoppable: Vec<Arc<dyn AgentBackend>>,
    commit_tracker: bool,
}

impl std::fmt::Debug for OrchestratorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorBuilder")
            .field("repo_root", &self.repo_root)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Orchestrator {
    /// Starts a run of `repo_root` under `settings` (paths, commands, gate,
    /// review, triggers, epics are all read from there).
    pub fn builder(settings: Settings, repo_root: impl Into<PathBuf>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            settings,
            repo_root: repo_root.into(),
            plan: RunPlan::default(),
            source: None,
            tracker: None,
            backend: None,
            reviewer: None,
            trigger_reviewer: None,
            epic_backend: None,
            repository: None,
            locks: None,
            lock_events: None,
            events: None,
            clock: None,
            stoppable: Vec::new(),
            commit_tracker: false,
        }
    }
}

impl OrchestratorBuilder {
    /// Scope, order, width, limits and the run id (default: everything, one agent).
    #[must_use]
    pub fn plan(mut self, plan: RunPlan) -> Self {
        self.plan = plan;
        self
    }

    /// The issue tracker (required).
    #[must_use]
    pub fn tracker(mut self, tracker: Arc<dyn IssueTracker>) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// A faster way to read the whole tracker than `all_issues` (optional).
    #[must_use]
    pub fn issue_source(mut self, source: Arc<dyn IssueSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The backend that runs implementer (and fixer) sessions (required).
    #[must_use]
    pub fn backend(mut self, backend: Arc<dyn AgentBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The per-issue reviewer; without one no issue is reviewed.
    #[must_use]
    pub fn reviewer(mut self, reviewer: Arc<dyn Reviewer>) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    /// The reviewer of the triggers' `code_review`s (the run's commits since
    /// the run started or the trigger's last review); without one they are
    /// skipped, and the run says so.
    #[must_use]
    pub fn trigger_reviewer(mut self, reviewer: Arc<dyn Reviewer>) -> Self {
        self.trigger_reviewer = Some(reviewer);
        self
    }

    /// The backend that verifies epics (read-only sessions). Without one,
    /// or with `epic_verification.enabled: false`, an epic closes with its
    /// last child.
    #[must_use]
    pub fn epic_backend(mut self, backend: Arc<dyn AgentBackend>) -> Self {
        self.epic_backend = Some(backend);
        self
    }

    /// The repository the gate reads commits from (required).
    #[must_use]
    pub fn repository(mut self, repository: Arc<dyn Repository>) -> Self {
        self.repository = Some(repository);
        self
    }

    /// The lock table; with its events, deadlocks are detected and broken.
    #[must_use]
    pub fn locks(
        mut self,
        table: Arc<dyn LockTable>,
        events: Option<mpsc::UnboundedReceiver<LockEvent>>,
    ) -> Self {
        self.locks = Some(table);
        self.lock_events = events;
        self
    }

    /// Where events go (default: nowhere).
    #[must_use]
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// The clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Another backend whose sessions a Ctrl-C must stop (a reviewer's).
    #[must_use]
    pub fn also_stop(mut self, backend: Arc<dyn AgentBackend>) -> Self {
        self.stoppable.push(backend);
        self
    }

    /// Commit `.beads/` after a run that closed something (a git checkout
    /// with a br tracker; off by default).
    #[must_use]
    pub fn commit_tracker_files(mut self, commit: bool) -> Self {
        self.commit_tracker = commit;
        self
    }

    /// Checks that the required ports are there.
    pub fn build(self) -> Result<Orchestrator, RunError> {
        let missing = |what: &str| RunError::Setup(format!("the orchestrator needs {what}"));
        let tracker = self.tracker.ok_or_else(|| missing("a tracker"))?;
        let backend = self.backend.ok_or_else(|| missing("an agent backend"))?;
        let repository = self.repository.ok_or_else(|| missing("a repository"))?;
        let source = self
            .source
            .unwrap_or_else(|| Arc::new(FromTracker(Arc::clone(&tracker))));
        let epic_verifier = self
            .epic_backend
            .filter(|_| self.settings.epic_verification.enabled)
            .map(|backend| EpicVerifier::new(backend, &self.repo_root));
        let mut stoppable = vec![Arc::clone(&backend)];
        stoppable.extend(self.stoppable);
        Ok(Orchestrator {
            settings: self.settings,
            repo_root: self.repo_root,
            plan: self.plan,
            source,
            tracker,
            backend,
            reviewer: self.reviewer,
            trigger_reviewer: self.trigger_reviewer,
            epic_verifier,
            repository,
            locks: self.locks,
            lock_events: self.lock_events,
            events: self.events.unwrap_or_else(|| Arc::new(Silent)),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            stoppable,
            commit_tracker: self.commit_tracker,
        })
    }
}

impl Orchestrator {
    /// The `epic_completion` trigger for the epics a sweep closed (success)
    /// or sent back (failure), as `fire_on` and `epic_depth` say. Returns
    /// the failed command when the trigger stops the run.
    async fn epic_completion(
        &self,
        sweep: &crate::epics::Sweep,
        backend: &Arc<dyn AgentBackend>,
        events: &Arc<dyn EventSink>,
        reviews: &mut Reviews,
    ) -> Option<String> {
        let trigger = self.settings.validation_triggers.epic_completion.as_ref()?;
        let succeeded = sweep.closed.iter().map(|e| (e, true));
        let failed = sweep.failed.iter().map(|e| (e, false));
        for (epic, passed) in succeeded.chain(failed) {
            let fires = match trigger.fire_on {
                FireOn::Success => passed,
                FireOn::Failure => !passed,
                FireOn::Both => true,
            };
            let top_level = matches!(self.tracker.parent_epic(epic).await, Ok(None));
            if !fires || (trigger.epic_depth == EpicDepth::TopLevel && !top_level) {
                continue;
            }
            let outcome = self
                .fire(
                    ("epic_completion", &format!("epic_completion ({epic})")),
                    &trigger.trigger,
                    backend,
                    events,
                    reviews,
                )
                .await;
            if let TriggerOutcome::Abort { command } = outcome {
                return Some(command);
            }
        }
        None
    }
}

/// When each trigger's code review last ran, for `baseline: since_last_review`.
struct Reviews {
    run_started: DateTime<Utc>,
    last: HashMap<&'static str, DateTime<Utc>>,
}

impl Orchestrator {
    /// Runs a trigger's commands, then its code review when it has one and
    /// the commands did not stop the run. `kind` names the trigger in the
    /// settings; `name` in what the run says.
    async fn fire(
        &self,
        (kind, name): (&'static str, &str),
        trigger: &mala_domain::Trigger,
        backend: &Arc<dyn AgentBackend>,
        events: &Arc<dyn EventSink>,
        reviews: &mut Reviews,
    ) -> TriggerOutcome {
        let outcome = run_trigger(
            name,
            trigger,
            &self.repo_root,
            backend,
            &self.plan.run_id,
            events,
        )
        .await;
        let review = trigger.code_review.as_ref().filter(|r| r.enabled);
        let (Some(review), Some(reviewer)) = (review, &self.trigger_reviewer) else {
            return outcome;
        };
        if matches!(outcome, TriggerOutcome::Abort { .. }) {
            return outcome;
        }
        let since = match review.baseline {
            Some(mala_domain::ReviewBaseline::SinceLastReview) => reviews
                .last
                .get(kind)
                .copied()
                .unwrap_or(reviews.run_started),
            _ => reviews.run_started,
        };
        let started = Utc::now();
        let review_outcome = run_code_review(
            &CodeReviewRun {
                name,
                review,
                commands: &trigger.commands,
                reviewer: reviewer.as_ref(),
                repository: self.repository.as_ref(),
                since,
            },
            &self.repo_root,
            backend,
            &self.plan.run_id,
            events,
        )
        .await;
        reviews.last.insert(kind, started);
        match (outcome, review_outcome) {
            (_, abort @ TriggerOutcome::Abort { .. }) => abort,
            (failed @ TriggerOutcome::FailedContinued { .. }, _) => failed,
            (TriggerOutcome::Passed | TriggerOutcome::Abort { .. }, second) => second,
        }
    }
}

struct Silent;

impl EventSink for Silent {
    fn emit(&self, _: &Event) {}
}

impl Orchestrator {
    /// Runs the queue until it is empty, the issue limit is reached, or
    /// `stage` says stop.
    #[allow(clippy::too_many_lines)] // one loop, read top to bottom
    pub async fn run(mut self, mut stage: watch::Receiver<Stage>) -> Result<RunSummary, RunError> {
        let lock_inbox = self.lock_events.take();
        let settings = &self.settings;
        let plan = &self.plan;
        let repo_root = self.repo_root.clone();
        let events = Arc::clone(&self.events);
        let tracker = Arc::clone(&self.tracker);
        let state_dir = state_dir(settings, &repo_root, &plan.run_id);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| RunError::Setup(format!("{}: {e}", state_dir.display())))?;
        let recorder = Arc::new(RunRecorder::start(
            &settings.paths.runs_dir,
            &state_dir.join("sessions"),
            RunLog {
                run_id: plan.run_id.clone(),
                repo_path: repo_root.clone(),
                started_at: Utc::now(),
                finished_at: None,
                outcome: "running".into(),
                settings: settings_summary(settings, plan),
                issues: Vec::new(),
            },
        ));
        let events: Arc<dyn EventSink> = Arc::new(Recorded {
            recorder: Arc::clone(&recorder),
            events,
        });

        // Locks of runs that are gone are stale; ours are marked by our marker.
        let lock_dir = settings.paths.lock_dir.clone();
        let cleaned = remove_stale(&lock_dir);
        if cleaned.locks_removed > 0 {
            events.emit(&Event::Warning {
                message: format!(
                    "removed {} stale lock(s) of runs that are gone",
                    cleaned.locks_removed
                ),
            });
        }
        let marker = RunMarker {
            run_id: plan.run_id.clone(),
            repo_path: repo_root.clone(),
            started_at: Utc::now(),
            pid: std::process::id(),
            max_agents: u32::try_from(plan.max_agents).ok(),
        };
        marker.write(&lock_dir).map_err(|e| {
            RunError::Setup(format!(
                "cannot write the run marker in {}: {e}",
                lock_dir.display()
            ))
        })?;

        let (victims_tx, mut victims) = mpsc::unbounded_channel();
        let mut victims_open = true;
        let monitor = match (&self.locks, lock_inbox) {
            (Some(locks), Some(inbox)) => Some(tokio::spawn(run_deadlock_monitor(
                inbox,
                Arc::clone(&tracker),
                Arc::clone(locks),
                victims_tx,
            ))),
            _ => None,
        };

        let session_end_abort: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let ports = RunnerPorts {
            tracker: Arc::clone(&tracker),
            backend: Arc::clone(&self.backend),
            repo: Arc::clone(&self.repository),
            reviewer: self.reviewer.clone(),
            locks: self.locks.clone(),
            events: Arc::clone(&events),
            clock: Arc::clone(&self.clock),
            session_end: settings
                .validation_triggers
                .session_end
                .as_ref()
                .map(|trigger| {
                    Arc::new(SessionEndTrigger {
                        trigger: trigger.clone(),
                        repo: repo_root.clone(),
                        backend: Arc::clone(&self.backend),
                        run_id: plan.run_id.clone(),
                        events: Arc::clone(&events),
                        abort: Arc::clone(&session_end_abort),
                    }) as Arc<dyn mala_pipeline::SessionEndCheck>
                }),
        };
        let runner_config = RunnerConfig {
            repo_root: repo_root.clone(),
            actor: claim_actor(&plan.run_id),
            required: required_commands(&settings.evidence_check.required, &settings.commands),
            code_patterns: settings.code_patterns.clone(),
            config_files: settings.config_files.clone(),
            setup_files: settings.setup_files.clone(),
            max_gate_attempts: settings.max_gate_retries.max(1),
            max_review_attempts: settings.per_issue_review.max_retries.max(1),
            max_resumes: settings.max_idle_retries,
            resume_backoff: Duration::from_secs(5),
            retry_failed: settings.retry_failed,
            record_dir: state_dir.join("sessions"),
            blocking_priority: settings
                .per_issue_review
                .finding_threshold
                .per_issue_blocking_priority(),
            rerun: settings.gate.rerun,
            track_review_issues: settings.per_issue_review.track_review_issues,
        };

        for name in triggers_with_code_review(settings) {
            let why = if name == "session_end" {
                "session_end reviews each issue already (per_issue_review); its code_review is not run"
            } else if self.trigger_reviewer.is_none() {
                "no reviewer was given for trigger reviews; the trigger runs its commands only"
            } else {
                continue;
            };
            events.emit(&Event::Warning {
                message: format!("validation_triggers.{name}.code_review: {why}"),
            });
        }
        let mut reviews = Reviews {
            run_started: Utc::now(),
            last: HashMap::new(),
        };
        // Earlier runs' records: where interrupted work picks up.
        let priors = prior_records(&settings.paths.runs_dir, &repo_root, &plan.run_id);
        events.emit(&Event::RunStarted {
            run_id: plan.run_id.clone(),
            repo: repo_root.display().to_string(),
            max_agents: Some(plan.max_agents),
        });
        let mut summary = RunSummary {
            state_dir: state_dir.clone(),
            ..RunSummary::default()
        };
        let mut attempted: HashSet<IssueId> = HashSet::new();
        let mut active: HashMap<IssueId, Worker> = HashMap::new();
        let mut workers: JoinSet<(IssueId, IssueResult)> = JoinSet::new();
        let mut deferred: HashSet<IssueId> = HashSet::new();
        // Deadlocks whose victim is stopped but not yet recorded.
        let mut unrecorded = 0usize;
        let mut started = 0usize;
        let mut idle_said = false;
        let mut closed_since_periodic = 0u32;
        let mut sweep_pending = true;
        let mut epic_book = EpicBook::default();
        let max_epic_rounds = settings
            .validation_triggers
            .epic_completion
            .as_ref()
            .map_or(3, |t| t.max_epic_verification_retries.max(1));
        let mut periodic_due = false;
        let mut stage_open = true;
        let issue_types = &settings.issue_types;

        loop {
            let current = *stage.borrow();
            if matches!(current, Stage::Abort | Stage::Kill) {
                stop_workers(
                    &self.stoppable,
                    &mut workers,
                    &mut active,
                    &mut summary,
                    &events,
                    &mut stage,
                )
                .await;
                summary.interrupted = true;
                break;
            }
            if summary.aborted.is_none()
                && let Some(command) = session_end_abort
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            {
                // A session_end trigger set to abort failed: finish what runs, start nothing.
                summary.aborted = Some(command);
            }
            if periodic_due && let Some(periodic) = &settings.validation_triggers.periodic {
                if !active.is_empty() {
                    // Hold new spawns until the pool is idle, then validate.
                    let closed_before = summary.closed.len();
                    wait_for_worker(&mut workers, &mut active, &mut summary, &events).await;
                    // What closes meanwhile counts towards the next interval.
                    let closed = summary.closed.len() - closed_before;
                    closed_since_periodic += u32::try_from(closed).unwrap_or(u32::MAX);
                    sweep_pending |= closed > 0;
                    continue;
                }
                periodic_due = false;
                let outcome = self
                    .fire(
                        ("periodic", "periodic"),
                        &periodic.trigger,
                        &ports.backend,
                        &events,
                        &mut reviews,
                    )
                    .await;
                if let TriggerOutcome::Abort { command } = outcome {
                    summary.aborted = Some(command);
                    break;
                }
            }
            let view = |active: usize, started: usize| SchedulerView {
                active,
                started,
                max_agents: plan.max_agents,
                max_issues: plan.max_issues,
                draining: current != Stage::Running || summary.aborted.is_some(),
                trigger_due: periodic_due,
            };
            if spawn_capacity(&view(active.len(), started)) > 0 {
                let graph = self.source.snapshot().await?;
                let takeover = takeover_candidates(graph.issues(), plan.resume.take_up, |run| {
                    is_run_alive(&lock_dir, run)
                });
                let queue = plan_queue(
                    &graph,
                    &QueueRequest {
                        scope: &plan.scope,
                        order: plan.order,
                        issue_types,
                        skip: &attempted,
                        takeover: &takeover,
                        limit: None,
                        now: Utc::now(),
                    },
                )
                .map_err(|e| RunError::Setup(format!("--scope {}: {e}", plan.scope)))?;
                let capacity = spawn_capacity(&view(active.len(), started));
                events.emit(&Event::QueuePlanned {
                    waiting: queue.entries.len().saturating_sub(capacity),
                });
                for entry in queue.entries {
                    if spawn_capacity(&view(active.len(), started)) == 0 {
                        break;
                    }
                    attempted.insert(entry.id.clone());
                    if entry.takeover {
                        // A dead run's claim (or, with --resume, unassigned work): take it over, once.
                        let holder = graph.get(&entry.id).and_then(|i| i.assignee.clone());
                        let taken = tracker
                            .take_over(&entry.id, &runner_config.actor, holder)
                            .await;
                        if !matches!(taken, Ok(mala_core::ClaimOutcome::Claimed)) {
                            continue;
                        }
                    }
                    let agent = agent_name(&entry.id, &plan.run_id);
                    let resume = resume_for(plan, &priors, &entry.id, entry.takeover);
                    let (ports, config, issue, worker_agent) = (
                        ports.clone(),
                        runner_config.clone(),
                        entry.id.clone(),
                        agent.clone(),
                    );
                    let abort = workers.spawn(async move {
                        let result =
                            run_issue_from(&issue, worker_agent, &ports, &config, resume).await;
                        (issue, result)
                    });
                    active.insert(entry.id.clone(), Worker { agent, abort });
                    started += 1;
                }
            }
            if active.is_empty()
                && sweep_pending
                && current == Stage::Running
                && summary.aborted.is_none()
            {
                sweep_pending = false;
                match sweep_epics(
                    tracker.as_ref(),
                    self.epic_verifier.as_ref(),
                    &plan.scope,
                    &mut epic_book,
                    max_epic_rounds,
                    events.as_ref(),
                )
                .await
                {
                    Ok(sweep) => {
                        if let Some(command) = self
                            .epic_completion(&sweep, &ports.backend, &events, &mut reviews)
                            .await
                        {
                            summary.aborted = Some(command);
                            break;
                        }
                        // A closed epic may complete its parent; new issues may be ready.
                        sweep_pending = !sweep.closed.is_empty();
                        if !sweep.closed.is_empty() || !sweep.created.is_empty() {
                            continue;
                        }
                    }
                    Err(error) => events.emit(&Event::Warning {
                        message: format!("epic sweep failed: {error}"),
                    }),
                }
            }
            if active.is_empty() && unrecorded > 0 && victims_open {
                // A deadlock is still being written down; its victim may be
                // ready to run again when that is done.
                let news = victims.recv().await;
                victims_open = news.is_some();
                on_deadlock_news(
                    news,
                    &mut active,
                    &mut deferred,
                    &mut attempted,
                    &mut unrecorded,
                    &events,
                );
                continue;
            }
            if active.is_empty() {
                if done(&view(0, started), plan.watch.is_some()).is_some() {
                    break;
                }
                let Some(poll) = plan.watch else {
                    break;
                };
                if !idle_said {
                    events.emit(&Event::Warning {
                        message: format!(
                            "watching: nothing ready; looking again every {} s (Ctrl-C to stop)",
                            poll.as_secs()
                        ),
                    });
                    idle_said = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    changed = stage.changed(), if stage_open => stage_open = changed.is_ok(),
                }
                continue;
            }
            idle_said = false;
            tokio::select! {
                finished = workers.join_next() => {
                    let Some(first) = finished else { break };
                    // Workers started together end together: take every one
                    // that is done before planning again, so a wave costs one
                    // plan instead of one per issue.
                    let mut batch = vec![first];
                    while let Some(next) = workers.try_join_next() {
                        batch.push(next);
                    }
                    for finished in batch {
                        match finished {
                            Ok((issue, result)) => {
                                active.remove(&issue);
                                if matches!(result, IssueResult::Closed { .. }) {
                                    sweep_pending = true;
                                    // An issue that gave way in a deadlock may
                                    // wait for this one: plan it again.
                                    attempted.retain(|id| !deferred.contains(id));
                                    closed_since_periodic += 1;
                                    if let Some(periodic) = &settings.validation_triggers.periodic
                                        && periodic.interval > 0
                                        && closed_since_periodic >= periodic.interval
                                    {
                                        closed_since_periodic = 0;
                                        periodic_due = true;
                                    }
                                }
                                record(&mut summary, issue, result);
                            }
                            Err(join_error) if join_error.is_cancelled() => {
                                // A deadlock victim, cancelled on purpose; handled when it was chosen.
                                active.retain(|_, w| !w.abort.is_finished());
                            }
                            Err(join_error) => {
                                events.emit(&Event::Warning { message: format!("an issue worker crashed: {join_error}") });
                                active.retain(|_, w| !w.abort.is_finished());
                            }
                        }
                    }
                }
                news = victims.recv(), if victims_open => {
                    victims_open = news.is_some();
                    on_deadlock_news(news, &mut active, &mut deferred, &mut attempted, &mut unrecorded, &events);
                }
                changed = stage.changed(), if stage_open => {
                    // A closed sender means nobody can ask for a drain any more.
                    stage_open = changed.is_ok();
                }
            }
        }

        if let Some(run_end) = &settings.validation_triggers.run_end
            && !summary.interrupted
            && summary.aborted.is_none()
        {
            let fire = run_end_fires(run_end.fire_on, summary.closed.len(), summary.failed.len());
            if fire
                && let TriggerOutcome::Abort { command } = self
                    .fire(
                        ("run_end", "run_end"),
                        &run_end.trigger,
                        &ports.backend,
                        &events,
                        &mut reviews,
                    )
                    .await
            {
                summary.aborted = Some(command);
            }
        }
        // Whatever ends the run, this run's locks go and its marker with them.
        if let Some(locks) = &self.locks {
            for worker in active.values() {
                let _ = locks.release_all(&worker.agent).await;
            }
        }
        // Deferred issues that ran again later in the run have their outcome.
        let settled: HashSet<&IssueId> = summary
            .closed
            .iter()
            .chain(summary.failed.iter().map(|(i, _)| i))
            .collect();
        summary.deferred = deferred
            .into_iter()
            .filter(|i| !settled.contains(i))
            .collect();
        drop(ports);
        if let Some(monitor) = monitor {
            monitor.abort();
        }
        if !summary.closed.is_empty() {
            if let Err(error) = tracker.flush().await {
                events.emit(&Event::Warning {
                    message: format!("could not flush the tracker: {error}"),
                });
            }
            if self.commit_tracker
                && let Err(error) =
                    commit_tracker_files(&repo_root, "mala: sync beads issues").await
            {
                events.emit(&Event::Warning {
                    message: format!("could not commit .beads/: {error}"),
                });
            }
        }
        let _ = std::fs::remove_file(RunMarker::path(&lock_dir, &plan.run_id));
        let outcome = if summary.interrupted {
            "interrupted"
        } else if summary.aborted.is_some() {
            "aborted"
        } else if *stage.borrow() == Stage::Drain {
            "drained"
        } else {
            "finished"
        };
        recorder.finish(outcome, &summary.deferred);
        events.emit(&Event::RunFinished {
            run_id: plan.run_id.clone(),
            outcome: if summary.interrupted {
                RunOutcome::Aborted {
                    reason: "interrupted".into(),
                }
            } else if *stage.borrow() == Stage::Drain {
                RunOutcome::Drained
            } else {
                RunOutcome::Finished
            },
            succeeded: summary.closed.len(),
            failed: summary.failed.len(),
        });
        Ok(summary)
    }
}
