//! The run as a library: an [`Orchestrator`] runs the queue with whatever
//! tracker, agent backend, reviewer and repository it is given. `mala run`
//! builds one from the real adapters ([`crate::run`]); other tools and the
//! tests build their own with [`Orchestrator::builder`].
//!
//! The scheduler loop here is the only owner of what is active, done and
//! failed. Workers (one task per issue) report their result when they end;
//! the deadlock monitor reports victims; the shutdown watch says when to
//! drain, stop and kill.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mala_core::{
    AgentBackend, Clock, CommandRunner, Event, EventSink, IssueId, IssueRecord, IssueTracker,
    LockEvent, LockTable, Repository, Reviewer, RunLog, RunStore, RunStoreError, SessionId,
    StopAnswer, TrackerError, Workspaces,
};
use mala_domain::{
    CutShort, DoneReason, EpicDepth, FireOn, IssueGraph, Order, Scope, Settings, final_reason,
};
use mala_infra::{ShellCommands, SystemClock};
use mala_pipeline::Resume;
use mala_pipeline::{EpicVerifier, Metered, RunLedger};
use tokio::sync::{mpsc, watch};

use crate::pauses::PausePolicy;
use crate::scheduler::Scheduler;
use crate::setup::RunContext;
use crate::triggers::{CodeReviewRun, TriggerOutcome, TriggerSite, run_code_review, run_trigger};

/// A person's request to stop one issue while the run goes on, and where
/// the answer goes: [`StopAnswer::Stopped`] once its worker ended skipped,
/// `TooLate` when it was already finishing, `NotWorking` at once when no
/// worker has it. (A run that ends first drops the request unanswered.)
#[derive(Debug)]
pub struct StopRequest {
    /// The issue to stop.
    pub issue: IssueId,
    /// Where its answer goes.
    pub answer: tokio::sync::oneshot::Sender<StopAnswer>,
}

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
    /// How long a usage limit may pause the run (`--max-pause`).
    pub pauses: PausePolicy,
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
            pauses: PausePolicy::default(),
        }
    }
}

/// How the run went.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Issues given back untouched because the environment failed, with why.
    pub released: Vec<(IssueId, String)>,
    /// The environment stopped the run: why, and the fix.
    pub stopped: Option<String>,
    /// The run's budget was reached: what was spent.
    pub budget_reached: Option<String>,
    /// What the run's agents spent, in dollars and tokens.
    pub spent: mala_domain::Spent,
    /// Where this run's session records are.
    pub state_dir: PathBuf,
}

/// A run that could not start, or whose tracker failed under it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The tracker could not be read or written.
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// The builder was not given a required port.
    #[error("the orchestrator needs {0}")]
    Incomplete(&'static str),
    /// The run's state directory could not be made.
    #[error("{}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why it could not be made.
        #[source]
        source: std::io::Error,
    },
    /// The marker that tells other runs this one is alive could not be written.
    #[error("cannot write the run marker in {}: {source}", lock_dir.display())]
    RunMarker {
        /// Where the marker goes.
        lock_dir: PathBuf,
        /// Why it could not be written.
        #[source]
        source: std::io::Error,
    },
    /// The lock directory cannot serve as the run's lock table.
    #[error(transparent)]
    Locks(#[from] mala_core::LockError),
    /// Worktree isolation could not be set up (a detached HEAD, say).
    #[error("worktree isolation: {0}")]
    Worktrees(#[source] mala_core::RepoError),
    /// `--scope` names issues the tracker does not have.
    #[error("--scope {scope}: {source}")]
    Scope {
        /// The scope as given.
        scope: mala_domain::Scope,
        /// The ids it names that the tracker does not have.
        #[source]
        source: mala_domain::UnknownIds,
    },
    /// Review by cerberus was asked for, and no `cerberus` was found.
    #[error(
        "per_issue_review.reviewer_type is cerberus, but `cerberus` is not on PATH; \
         install it, or set per_issue_review.reviewer_type: agent_sdk"
    )]
    CerberusNotFound,
    /// The cerberus installation found cannot serve the run.
    #[error(transparent)]
    Cerberus(#[from] mala_infra::CerberusSetupError),
    /// The agent backend cannot start (missing binary, wrong version, no login).
    #[error(transparent)]
    Agent(#[from] mala_core::AgentError),
    /// The preflight found the agent unable to work here.
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The required checks fail before any agent worked (`baseline: stop`).
    #[error("{message}")]
    RedBaseline {
        /// The failing command, where, and the end of its output.
        message: String,
    },
    /// The run store could not keep the run's record or its mark.
    #[error(transparent)]
    Store(#[from] RunStoreError),
    /// `mala epic-verify` could not verify the epic (the message says why).
    #[error(transparent)]
    Epic(#[from] crate::epics::EpicError),
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

/// Triggers whose `code_review` is enabled.
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

/// How `issue`'s work picks up: a dead run's claim (`takeover`) always
/// continues its earlier session; with `--resume` any issue with a record
/// does. `--strict` applies to work in progress only: a new issue has no
/// earlier session to miss.
pub(crate) fn resume_for(
    plan: &RunPlan,
    priors: &HashMap<IssueId, IssueRecord>,
    issue: &IssueId,
    takeover: bool,
) -> Option<Resume> {
    let policy = plan.resume;
    let prior = priors.get(issue);
    // Given back by a fault that was not its own: carried on as if the run
    // had crashed, so its session and its commits still count.
    let released = prior.is_some_and(|p| p.status == crate::recorder::RELEASED);
    if !takeover && !policy.take_up && !released {
        return None;
    }
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

/// The stage once it is no longer `Running`; pending for ever when nobody
/// can change it any more.
pub(crate) async fn stopped(stage: &mut watch::Receiver<Stage>) -> Stage {
    let now = stage
        .wait_for(|now| *now != Stage::Running)
        .await
        .map(|now| *now);
    match now {
        Ok(now) => now,
        Err(_) => std::future::pending().await,
    }
}

/// A run that ended before its first claim: how, and the error to return
/// when it was not a Ctrl-C.
struct EndedEarly {
    reason: DoneReason,
    error: Option<RunError>,
}

impl EndedEarly {
    /// A Ctrl-C at stage `now`.
    fn by_stop(now: Stage, scheduler: &mut Scheduler<'_>) -> Self {
        let reason = if now == Stage::Drain {
            DoneReason::Drained
        } else {
            scheduler.summary.interrupted = true;
            DoneReason::Interrupted
        };
        Self {
            reason,
            error: None,
        }
    }

    /// A stop for `error`, which the run returns once it is wound up.
    fn by_error(error: RunError, scheduler: &mut Scheduler<'_>) -> Self {
        let reason = error.to_string();
        scheduler.summary.stopped = Some(reason.clone());
        Self {
            reason: DoneReason::Stopped { reason },
            error: Some(error),
        }
    }
}

/// A run, ready to go. Build one with [`Orchestrator::builder`].
pub struct Orchestrator {
    pub(crate) settings: Settings,
    pub(crate) repo_root: PathBuf,
    pub(crate) plan: RunPlan,
    pub(crate) source: Arc<dyn IssueSource>,
    pub(crate) tracker: Arc<dyn IssueTracker>,
    pub(crate) backend: Arc<dyn AgentBackend>,
    pub(crate) reviewer: Option<Arc<dyn Reviewer>>,
    pub(crate) trigger_reviewer: Option<Arc<dyn Reviewer>>,
    pub(crate) epic_verifier: Option<EpicVerifier>,
    pub(crate) repository: Arc<dyn Repository>,
    pub(crate) locks: Option<Arc<dyn LockTable>>,
    /// Worktree isolation's trees and merge queue.
    pub(crate) workspaces: Option<Arc<dyn Workspaces>>,
    pub(crate) lock_events: Option<mpsc::UnboundedReceiver<LockEvent>>,
    /// Issues the user asked to stop (the dashboard's stop button).
    pub(crate) issue_stops: Option<mpsc::UnboundedReceiver<StopRequest>>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Runs the triggers' and the baseline's commands.
    pub(crate) commands: Arc<dyn CommandRunner>,
    /// Every backend whose sessions a stop must reach.
    pub(crate) stoppable: Vec<Arc<dyn AgentBackend>>,
    pub(crate) commit_tracker: bool,
    pub(crate) run_store: Arc<dyn RunStore>,
    pub(crate) preflight: bool,
    /// What the whole run has spent against its budget.
    pub(crate) ledger: Arc<RunLedger>,
    /// The backend of trigger fixers: the implementers', counted in the
    /// ledger (no runner counts their turns).
    pub(crate) fixers: Arc<dyn AgentBackend>,
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
    workspaces: Option<Arc<dyn Workspaces>>,
    lock_events: Option<mpsc::UnboundedReceiver<LockEvent>>,
    issue_stops: Option<mpsc::UnboundedReceiver<StopRequest>>,
    events: Option<Arc<dyn EventSink>>,
    clock: Option<Arc<dyn Clock>>,
    commands: Option<Arc<dyn CommandRunner>>,
    stoppable: Vec<Arc<dyn AgentBackend>>,
    commit_tracker: bool,
    run_store: Option<Arc<dyn RunStore>>,
    preflight: bool,
    ledger: Arc<RunLedger>,
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
            ledger: Arc::new(RunLedger::new(settings.budget.run)),
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
            workspaces: None,
            lock_events: None,
            issue_stops: None,
            events: None,
            clock: None,
            commands: None,
            stoppable: Vec::new(),
            commit_tracker: false,
            preflight: false,
            run_store: None,
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

    /// Issues to stop, one at a time, while the run goes on: each one's
    /// session ends and it is skipped, its claim kept (as for a Ctrl-C);
    /// each request is answered once its worker has ended.
    #[must_use]
    pub fn issue_stops(mut self, stops: mpsc::UnboundedReceiver<StopRequest>) -> Self {
        self.issue_stops = Some(stops);
        self
    }

    /// Each issue's own worktree and the merge queue; required with
    /// `isolation: worktree`.
    #[must_use]
    pub fn workspaces(mut self, workspaces: Arc<dyn Workspaces>) -> Self {
        self.workspaces = Some(workspaces);
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

    /// What runs the triggers' and the baseline's commands (default: a
    /// shell in the repository, each command in its own process group).
    #[must_use]
    pub fn command_runner(mut self, commands: Arc<dyn CommandRunner>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Another backend whose sessions a Ctrl-C must stop (a reviewer's).
    #[must_use]
    pub fn also_stop(mut self, backend: Arc<dyn AgentBackend>) -> Self {
        self.stoppable.push(backend);
        self
    }

    /// Where the run keeps its record and its mark (default: nowhere; every
    /// other run's claims are then taken for live, so nothing is taken over).
    #[must_use]
    pub fn run_store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.run_store = Some(store);
        self
    }

    /// Commit `.beads/` after a run that closed something (a git checkout
    /// with a br tracker; off by default).
    #[must_use]
    pub fn commit_tracker_files(mut self, commit: bool) -> Self {
        self.commit_tracker = commit;
        self
    }

    /// Prove the backend before the first claim: one short turn whose
    /// canary command the guard must refuse (off by default; `mala run`
    /// turns it on).
    #[must_use]
    pub fn preflight(mut self, preflight: bool) -> Self {
        self.preflight = preflight;
        self
    }

    /// The run's ledger, for the sessions the orchestrator does not start
    /// itself (a reviewer's): wrap their backend in a `Metered` on it.
    pub fn run_ledger(&self) -> Arc<RunLedger> {
        Arc::clone(&self.ledger)
    }

    /// Checks that the required ports are there.
    pub fn build(self) -> Result<Orchestrator, RunError> {
        let missing = RunError::Incomplete;
        let tracker = self.tracker.ok_or_else(|| missing("a tracker"))?;
        let backend = self.backend.ok_or_else(|| missing("an agent backend"))?;
        let repository = self.repository.ok_or_else(|| missing("a repository"))?;
        let isolated = self.settings.isolation.isolation == mala_domain::Isolation::Worktree;
        if isolated && self.workspaces.is_none() {
            return Err(missing("worktrees (isolation: worktree)"));
        }
        let source = self
            .source
            .unwrap_or_else(|| Arc::new(FromTracker(Arc::clone(&tracker))));
        let epic_verifier = self
            .epic_backend
            .filter(|_| self.settings.epic_verification.enabled)
            .map(|backend| {
                let metered = Metered::new(backend, Arc::clone(&self.ledger));
                EpicVerifier::new(Arc::new(metered), &self.repo_root)
            });
        let fixers = Arc::new(Metered::new(Arc::clone(&backend), Arc::clone(&self.ledger)));
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
            workspaces: self.workspaces.filter(|_| isolated),
            lock_events: self.lock_events,
            issue_stops: self.issue_stops,
            events: self.events.unwrap_or_else(|| Arc::new(Silent)),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            commands: self.commands.unwrap_or_else(|| Arc::new(ShellCommands)),
            stoppable,
            commit_tracker: self.commit_tracker,
            run_store: self.run_store.unwrap_or_else(|| Arc::new(Unrecorded)),
            preflight: self.preflight,
            ledger: self.ledger,
            fixers,
        })
    }
}

impl Orchestrator {
    /// The `epic_completion` trigger for the epics a sweep closed (success)
    /// or sent back (failure), as `fire_on` and `epic_depth` say. Returns
    /// the failed command when the trigger stops the run.
    pub(crate) async fn epic_completion(
        &self,
        sweep: &crate::epics::Sweep,
        events: &Arc<dyn EventSink>,
        reviews: &mut Reviews,
    ) -> Option<crate::triggers::TriggerStop> {
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
                    events,
                    reviews,
                )
                .await;
            if let Some(stop) = outcome.stop() {
                return Some(stop);
            }
        }
        None
    }
}

/// When each trigger's code review last ran, for `baseline: since_last_review`.
pub(crate) struct Reviews {
    run_started: DateTime<Utc>,
    last: HashMap<&'static str, DateTime<Utc>>,
}

impl Reviews {
    pub(crate) fn new(run_started: DateTime<Utc>) -> Self {
        Self {
            run_started,
            last: HashMap::new(),
        }
    }
}

impl Orchestrator {
    /// Where the run's triggers run, saying things to `events`.
    pub(crate) fn trigger_site(&self, events: &Arc<dyn EventSink>) -> TriggerSite {
        TriggerSite {
            repo: self.repo_root.clone(),
            commands: Arc::clone(&self.commands),
            fixers: Arc::clone(&self.fixers),
            ledger: Arc::clone(&self.ledger),
            run_id: self.plan.run_id.clone(),
            events: Arc::clone(events),
        }
    }

    /// Runs a trigger's commands, then its code review when it has one and
    /// the commands did not stop the run. `kind` names the trigger in the
    /// settings; `name` in what the run says.
    pub(crate) async fn fire(
        &self,
        (kind, name): (&'static str, &str),
        trigger: &mala_domain::Trigger,
        events: &Arc<dyn EventSink>,
        reviews: &mut Reviews,
    ) -> TriggerOutcome {
        let site = self.trigger_site(events);
        let outcome = run_trigger(name, trigger, &site).await;
        let review = trigger.code_review.as_ref().filter(|r| r.enabled);
        let (Some(review), Some(reviewer)) = (review, &self.trigger_reviewer) else {
            return outcome;
        };
        if outcome.stops_the_review() {
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
        let started = self.clock.now();
        let review_outcome = run_code_review(
            &CodeReviewRun {
                name,
                review,
                commands: &trigger.commands,
                reviewer: reviewer.as_ref(),
                repository: self.repository.as_ref(),
                since,
            },
            &site,
        )
        .await;
        reviews.last.insert(kind, started);
        match (outcome, review_outcome) {
            (_, stop) if stop.stops_the_review() => stop,
            (failed @ TriggerOutcome::FailedContinued { .. }, _) => failed,
            (_, second) => second,
        }
    }
}

/// Says what the run has spent as it grows, at most once a second.
async fn report_spend(
    mut spending: watch::Receiver<mala_domain::Spent>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
) {
    while spending.changed().await.is_ok() {
        let spent = *spending.borrow_and_update();
        events.emit(&spend_event(spent));
        clock.sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn spend_event(spent: mala_domain::Spent) -> Event {
    Event::RunSpend {
        cost_usd: spent.cost_usd,
        tokens: spent.tokens,
    }
}

pub(crate) struct Silent;

impl EventSink for Silent {
    fn emit(&self, _: &Event) {}
}

/// The store of a run that keeps nothing: no record, no mark, no earlier
/// runs. Every other run counts as alive, so none of their work is taken.
struct Unrecorded;

impl RunStore for Unrecorded {
    fn remove_stale(&self) -> usize {
        0
    }
    fn mark_live(&self, _: &RunLog, _: Option<u32>) -> Result<(), RunStoreError> {
        Ok(())
    }
    fn unmark(&self, _: &str) {}
    fn is_alive(&self, _: &str) -> bool {
        true
    }
    fn run_dir(&self, run_id: &str) -> PathBuf {
        PathBuf::from(run_id)
    }
    fn write_run(&self, _: &RunLog) -> Result<(), RunStoreError> {
        Ok(())
    }
    fn record_issue(&self, _: &RunLog, _: &IssueRecord) -> Result<(), RunStoreError> {
        Ok(())
    }
    fn baseline_passed(&self, _: &str) -> bool {
        false
    }
    fn record_baseline_passed(&self, _: &str) {}
    fn runs(&self) -> Vec<RunLog> {
        Vec::new()
    }
}

impl Orchestrator {
    /// Runs the queue until it is empty, the issue limit is reached, or
    /// `stage` says stop.
    pub async fn run(mut self, stage: watch::Receiver<Stage>) -> Result<RunSummary, RunError> {
        let ctx = RunContext::start(&mut self)?;
        self.say_unreviewed_triggers(ctx.events.as_ref());
        ctx.events.emit(&Event::RunStarted {
            run_id: self.plan.run_id.clone(),
            repo: self.repo_root.display().to_string(),
            max_agents: Some(self.plan.max_agents),
            sessions: Some(ctx.state_dir.join("sessions")),
        });
        self.tidy_worktrees(ctx.events.as_ref()).await;
        let mut stopping = stage.clone();
        let mut scheduler = Scheduler::new(&self, ctx, stage);
        if let Err(ended) = self.before_first_claim(&mut scheduler, &mut stopping).await {
            let summary = self.finish(scheduler, ended.reason).await;
            return ended.error.map_or(Ok(summary), Err);
        }
        let reporter = tokio::spawn(report_spend(
            self.ledger.spending(),
            Arc::clone(&scheduler.ctx.events),
            Arc::clone(&self.clock),
        ));
        let ended = scheduler.run().await;
        reporter.abort();
        let loop_end = match ended {
            Ok(reason) => reason,
            Err(error) => {
                // The tracker failed under the run: stop what runs, then take
                // the run down as a stop would, and say why.
                scheduler.ctx.events.emit(&Event::Warning {
                    message: format!("the run stops: {error}"),
                });
                self.finish(scheduler, DoneReason::Interrupted).await;
                return Err(error);
            }
        };
        Ok(self.finish(scheduler, loop_end).await)
    }

    /// Worktrees of issues that closed after an earlier run had landed them
    /// (that run died before it could remove them) are removed.
    async fn tidy_worktrees(&self, events: &dyn EventSink) {
        let Some(workspaces) = &self.workspaces else {
            return;
        };
        for issue in workspaces.issues().await.unwrap_or_default() {
            let closed = self
                .tracker
                .show(&issue)
                .await
                .is_ok_and(|i| i.status == mala_core::IssueStatus::Closed);
            if closed && let Err(error) = workspaces.remove(&issue).await {
                events.emit(&Event::Warning {
                    message: format!(
                        "{issue} is closed, but its worktree could not be removed: {error}"
                    ),
                });
            }
        }
    }

    /// The baseline, then the preflight when there is anything to claim,
    /// then the baseline's issue when it is red and `file_issue` says so:
    /// the tracker is written only once the agent is proven. The baseline
    /// goes first as it costs no tokens: a red one stops before a turn is
    /// paid.
    async fn before_first_claim(
        &self,
        scheduler: &mut Scheduler<'_>,
        stopping: &mut watch::Receiver<Stage>,
    ) -> Result<(), EndedEarly> {
        let baseline = tokio::select! {
            checked = crate::baseline::check_baseline(self, &scheduler.ctx) => checked,
            // A Ctrl-C while the checks run: nothing was claimed, so the run
            // is over; dropping the checks kills their process groups.
            now = stopped(stopping) => return Err(EndedEarly::by_stop(now, scheduler)),
        };
        let baseline = baseline.map_err(|error| EndedEarly::by_error(error, scheduler))?;
        scheduler.ctx.runner_config.red_baseline = baseline.red;
        // A tracker that cannot be read now is met again, and said, by the
        // loop. Without a preflight the tracker is not read here at all.
        if self.preflight
            && (baseline.to_file.is_some() || scheduler.may_claim().await.unwrap_or(true))
        {
            self.preflight_run(scheduler, stopping).await?;
        }
        if let Some(red) = baseline.to_file {
            let filed = crate::baseline::file_issue(self, &scheduler.ctx, &red).await;
            scheduler.first = Some(filed.map_err(|error| EndedEarly::by_error(error, scheduler))?);
        }
        Ok(())
    }

    /// The preflight: its session is metered like any
    /// other, so its spend counts toward the run's budget and its probe
    /// starts with what the budget leaves. A Ctrl-C during it ends the run
    /// with nothing claimed.
    async fn preflight_run(
        &self,
        scheduler: &mut Scheduler<'_>,
        stopping: &mut watch::Receiver<Stage>,
    ) -> Result<(), EndedEarly> {
        let metered = Metered::new(Arc::clone(&self.backend), Arc::clone(&self.ledger));
        let events = Arc::clone(&scheduler.ctx.events);
        let check = crate::preflight::Preflight {
            backend: &metered,
            cwd: &self.repo_root,
            run_id: &self.plan.run_id,
            events: events.as_ref(),
            clock: self.clock.as_ref(),
        };
        match check.run(&mut scheduler.pauses, stopping).await {
            Ok(crate::preflight::Proven::Ready) => Ok(()),
            Ok(crate::preflight::Proven::Stopped(now)) => Err(EndedEarly::by_stop(now, scheduler)),
            Err(error) => Err(EndedEarly::by_error(error, scheduler)),
        }
    }

    /// Everything after the loop: `run_end`, the run's locks, the tracker's
    /// files, the record and the marker; one outcome for all of them.
    async fn finish(&self, mut scheduler: Scheduler<'_>, loop_end: DoneReason) -> RunSummary {
        scheduler.settle_spend();
        if let Some(stop) = scheduler.fire_run_end().await {
            scheduler.trigger_stopped(stop);
        }
        let summary = &scheduler.summary;
        let reason = final_reason(
            loop_end,
            CutShort {
                interrupted: summary.interrupted,
                stopped: summary.stopped.as_deref(),
                budget: summary.budget_reached.as_deref(),
                aborted: summary.aborted.as_deref(),
            },
        );
        // Whatever ends the run, this run's locks go and its marker with them.
        if let Some(locks) = &self.locks {
            for agent in scheduler.leftover_agents() {
                let _ = locks.release_all(&agent).await;
            }
        }
        scheduler.summary.deferred = scheduler.still_deferred();
        let Scheduler {
            mut ctx, summary, ..
        } = scheduler;
        if !summary.closed.is_empty() {
            self.settle_tracker(ctx.events.as_ref()).await;
        }
        ctx.stop(&self.plan.run_id);
        let outcome = reason.outcome();
        ctx.recorder
            .finish(self.clock.now(), outcome.label(), &summary.deferred);
        ctx.events.emit(&spend_event(self.ledger.spent()));
        ctx.events.emit(&Event::RunFinished {
            run_id: self.plan.run_id.clone(),
            outcome,
            succeeded: summary.closed.len(),
            failed: summary.failed.len(),
        });
        summary
    }

    /// Flushes the tracker and, when asked to, commits `.beads/`.
    async fn settle_tracker(&self, events: &dyn EventSink) {
        if let Err(error) = self.tracker.flush().await {
            events.emit(&Event::Warning {
                message: format!("could not flush the tracker: {error}"),
            });
        }
        if self.commit_tracker
            && let Err(error) = self
                .repository
                .commit_tracker_files("mala: sync beads issues")
                .await
        {
            events.emit(&Event::Warning {
                message: format!("could not commit .beads/: {error}"),
            });
        }
    }

    /// A trigger's `code_review` that will not run says so once.
    fn say_unreviewed_triggers(&self, events: &dyn EventSink) {
        for name in triggers_with_code_review(&self.settings) {
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
    }

    /// SIGKILLs every session of every backend of the run.
    pub(crate) fn kill_all(&self) {
        for backend in &self.stoppable {
            backend.kill_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_the_environment_gave_back_carries_its_session_on_in_a_plain_run() {
        let plan = RunPlan::default();
        let id = IssueId::new("m-1");
        let mut record = IssueRecord::new("m-1", "m-1@earlier", PathBuf::from("m-1.jsonl"));
        record.session_id = Some("sess-1".into());
        record.baseline = Some(chrono::DateTime::UNIX_EPOCH);
        record.status = crate::recorder::RELEASED.to_owned();
        let mut priors = HashMap::from([(id.clone(), record.clone())]);
        let resume = resume_for(&plan, &priors, &id, false).expect("carried on");
        assert_eq!(resume.session_id, Some(SessionId::new("sess-1")));
        assert_eq!(resume.baseline, Some(chrono::DateTime::UNIX_EPOCH));
        record.status = "failed".to_owned();
        priors.insert(id.clone(), record);
        assert_eq!(
            resume_for(&plan, &priors, &id, false),
            None,
            "a failure starts over, as before"
        );
    }
}
