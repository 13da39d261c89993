//! The scheduler: the one owner of a run's state. Everything that reaches
//! it from outside is an [`Input`]; [`Scheduler::on`] is the only code that
//! changes what is active, done, failed or deferred. What to start and
//! whether the run is over are pure functions in `mala_domain::schedule`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mala_core::{AgentId, Event, EventSink, IssueId, StopAnswer};
use mala_domain::{
    DoneReason, QueueRequest, SchedulerView, agent_name, done, plan_queue, run_end_fires,
    spawn_capacity, takeover_candidates,
};
use mala_pipeline::{FaultReport, IssueResult, StopReason, WorkerStop, run_issue_from, stop_line};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinSet};

use crate::epics::{EpicBook, sweep_epics};
use crate::orchestrator::{Orchestrator, Reviews, RunError, RunSummary, Stage, resume_for};
use crate::pauses::Pauses;
use crate::setup::RunContext;
use crate::triggers::TriggerStop;
use crate::{DeadlockNews, StopRequest};

/// Everything that can reach the scheduler while it waits.
#[derive(Debug)]
pub(crate) enum Input {
    /// Workers that ended, together (a wave costs one plan).
    WorkersEnded(Vec<Result<(IssueId, IssueResult), JoinError>>),
    /// The deadlock monitor's news; `None` once the monitor is gone.
    Deadlock(Option<DeadlockNews>),
    /// The shutdown stage changed; `open: false` once nobody can change it.
    StageChanged { open: bool },
    /// A `session_end` trigger set to abort failed: the command; `None`
    /// once no trigger can say so any more.
    SessionEndAbort(Option<crate::triggers::TriggerStop>),
    /// Watch mode's interval passed with nothing ready.
    WatchTick,
    /// A runner met a fault of the environment.
    Fault(FaultReport),
    /// The run's pause is over.
    PauseOver,
    /// The run's budget was reached.
    BudgetReached,
    /// The user asked to stop one issue; `None` once nobody can ask.
    StopIssue(Option<StopRequest>),
}

/// What one pass of the loop decided.
enum Pass {
    Again,
    Over(DoneReason),
}

/// One issue's worker, as the scheduler sees it.
struct Worker {
    agent: AgentId,
    task: tokio::task::Id,
    stop: WorkerStop,
}

/// How long stopped sessions get to end their turns and release their locks
/// before their workers are stopped from outside.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a worker stopped from outside gets to finalize (kill its
/// session, release its locks, undo its staging) before it is cancelled.
const FINALIZE_GRACE: Duration = Duration::from_secs(5);

/// The scheduler's sources of input besides its own workers.
#[allow(clippy::struct_excessive_bools)] // one "still open" flag per channel the loop selects on
struct Inbox {
    /// Wakes when the run's budget is reached (`None`: no budget to watch).
    budget: Option<watch::Receiver<bool>>,
    stage: watch::Receiver<Stage>,
    stage_open: bool,
    victims: mpsc::UnboundedReceiver<DeadlockNews>,
    victims_open: bool,
    session_end: mpsc::UnboundedReceiver<TriggerStop>,
    session_end_open: bool,
    stops: mpsc::UnboundedReceiver<StopRequest>,
    stops_open: bool,
}

/// A run's state, and the only code that changes it.
pub(crate) struct Scheduler<'o> {
    orchestrator: &'o Orchestrator,
    pub(crate) ctx: RunContext,
    inbox: Inbox,
    pub(crate) summary: RunSummary,
    /// Issues planned in this run (not planned again unless deferred).
    attempted: HashSet<IssueId>,
    active: HashMap<IssueId, Worker>,
    workers: JoinSet<(IssueId, IssueResult)>,
    /// Issues that gave way in a deadlock; open again for later.
    deferred: HashSet<IssueId>,
    /// Victims stopped whose worker has not reported yet.
    giving_way: HashSet<IssueId>,
    /// Deadlocks whose victim is stopped but not yet recorded.
    unrecorded: usize,
    started: usize,
    idle_said: bool,
    closed_since_periodic: u32,
    periodic_due: bool,
    sweep_pending: bool,
    epic_book: EpicBook,
    /// Epics whose `epic_completion` waits out a pause a verifier met.
    completion_due: crate::epics::Sweep,
    pub(crate) reviews: Reviews,
    /// The run's pause and the environment's stop.
    pub(crate) pauses: Pauses,
    /// An issue that runs alone before any other (a red baseline's).
    pub(crate) first: Option<IssueId>,
    /// Stops asked for issues whose workers have not ended yet: answered
    /// with how each ended.
    stop_answers: HashMap<IssueId, Vec<oneshot::Sender<StopAnswer>>>,
}

impl<'o> Scheduler<'o> {
    pub(crate) fn new(
        orchestrator: &'o Orchestrator,
        mut ctx: RunContext,
        stage: watch::Receiver<Stage>,
    ) -> Self {
        let (victims, session_end, stops) = (
            ctx.victims.take().unwrap_or_else(closed_channel),
            ctx.session_end_aborts.take().unwrap_or_else(closed_channel),
            ctx.issue_stops.take().unwrap_or_else(closed_channel),
        );
        let pauses = Pauses::new(ctx.fault_desk.take(), orchestrator.plan.pauses);
        let summary = RunSummary {
            state_dir: ctx.state_dir.clone(),
            ..RunSummary::default()
        };
        Self {
            reviews: Reviews::new(orchestrator.clock.now()),
            orchestrator,
            ctx,
            inbox: Inbox {
                budget: pauses.budget_crossing(),
                stage,
                stage_open: true,
                victims,
                victims_open: true,
                session_end,
                session_end_open: true,
                stops,
                stops_open: true,
            },
            summary,
            attempted: HashSet::new(),
            active: HashMap::new(),
            workers: JoinSet::new(),
            deferred: HashSet::new(),
            giving_way: HashSet::new(),
            unrecorded: 0,
            started: 0,
            idle_said: false,
            closed_since_periodic: 0,
            periodic_due: false,
            sweep_pending: true,
            epic_book: EpicBook::default(),
            completion_due: crate::epics::Sweep::default(),
            pauses,
            first: None,
            stop_answers: HashMap::new(),
        }
    }

    fn events(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.ctx.events)
    }

    fn stage(&self) -> Stage {
        *self.inbox.stage.borrow()
    }

    /// Runs passes until the run is over, and says how the loop ended.
    pub(crate) async fn run(&mut self) -> Result<DoneReason, RunError> {
        loop {
            if let Pass::Over(reason) = self.pass().await? {
                return Ok(reason);
            }
        }
    }

    /// One pass: stop, fire a due trigger, plan and spawn, sweep epics, or
    /// wait for the next input.
    async fn pass(&mut self) -> Result<Pass, RunError> {
        if matches!(self.stage(), Stage::Abort | Stage::Kill) {
            self.stop_workers().await;
            self.summary.interrupted = true;
            return Ok(Pass::Over(DoneReason::Interrupted));
        }
        while let Ok(stop) = self.inbox.session_end.try_recv() {
            self.on(Input::SessionEndAbort(Some(stop)));
        }
        if self.periodic_due {
            if !self.active.is_empty() {
                // Hold new spawns until the pool is idle, then validate.
                let input = self.next_input().await;
                self.on(input);
                return Ok(Pass::Again);
            }
            self.periodic_due = false;
            if let Some(stop) = self.fire_periodic().await {
                return Ok(Pass::Over(self.trigger_stopped(stop)));
            }
        }
        if spawn_capacity(&self.view()) > 0 {
            self.plan_and_spawn().await?;
        }
        // A paused run sweeps once the pause is over: a verifier meets limits too.
        if self.active.is_empty()
            && self.sweep_pending
            && self.may_start_work()
            && self.pauses.until().is_none()
        {
            match self.sweep().await {
                Some(Err(stop)) => return Ok(Pass::Over(self.trigger_stopped(stop))),
                Some(Ok(())) => return Ok(Pass::Again),
                None => {}
            }
        }
        if self.active.is_empty() && self.unrecorded > 0 && self.inbox.victims_open {
            // A deadlock is still being written down; its victim may be
            // ready to run again when that is done.
            let news = self.inbox.victims.recv().await;
            self.on(Input::Deadlock(news));
            return Ok(Pass::Again);
        }
        if self.active.is_empty() {
            return Ok(self.idle().await);
        }
        self.idle_said = false;
        if self.workers.is_empty() {
            // Every worker reports through the set; none can be left behind.
            self.active.clear();
            return Ok(Pass::Again);
        }
        let input = self.next_input().await;
        self.on(input);
        Ok(Pass::Again)
    }

    fn may_start_work(&self) -> bool {
        self.stage() == Stage::Running
            && self.summary.aborted.is_none()
            && self.summary.stopped.is_none()
            // The ledger itself: a turn may cross the budget while a plan runs.
            && self.pauses.budget_reached().is_none()
    }

    /// A trigger stops the run: its validation failed for good (exit 3),
    /// or the environment stopped its fixer, as it would stop a runner's
    /// agent (exit 4). The first stop is the one said.
    pub(crate) fn trigger_stopped(&mut self, stop: TriggerStop) -> DoneReason {
        match stop {
            TriggerStop::Abort { command } => {
                let command = self.summary.aborted.get_or_insert(command).clone();
                DoneReason::Aborted { command }
            }
            TriggerStop::Environment { reason } => {
                self.pauses.stop(reason.clone(), self.ctx.events.as_ref());
                let reason = self.summary.stopped.get_or_insert(reason).clone();
                DoneReason::Stopped { reason }
            }
        }
    }

    fn view(&self) -> SchedulerView {
        let plan = &self.orchestrator.plan;
        SchedulerView {
            active: self.active.len(),
            started: self.started,
            max_agents: plan.max_agents,
            max_issues: plan.max_issues,
            draining: !self.may_start_work(),
            trigger_due: self.periodic_due,
            paused: self.pauses.until().is_some(),
        }
    }

    /// Nothing runs: the run is over, or watch mode waits for new issues.
    async fn idle(&mut self) -> Pass {
        let watch = self.orchestrator.plan.watch;
        if let Some(reason) = done(&self.view(), watch.is_some()) {
            return Pass::Over(reason);
        }
        // Nothing runs, yet a pause or watch mode keeps the run waiting.
        let pause = self.pause_left();
        if watch.is_none() && pause.is_none() {
            return Pass::Over(DoneReason::NothingLeft);
        }
        if let Some(poll) = watch
            && !self.idle_said
        {
            self.events().emit(&Event::Warning {
                message: format!(
                    "watching: nothing ready; looking again every {} s (Ctrl-C to stop)",
                    poll.as_secs()
                ),
            });
            self.idle_said = true;
        }
        let clock = Arc::clone(&self.orchestrator.clock);
        let input = tokio::select! {
            () = clock.sleep(watch.unwrap_or_default()), if watch.is_some() => Input::WatchTick,
            () = clock.sleep(pause.unwrap_or_default()), if pause.is_some() => Input::PauseOver,
            changed = self.inbox.stage.changed(), if self.inbox.stage_open => {
                Input::StageChanged { open: changed.is_ok() }
            }
        };
        self.on(input);
        Pass::Again
    }

    /// How long the run's pause has left; `None` when it is not paused.
    fn pause_left(&self) -> Option<Duration> {
        let until = self.pauses.until()?;
        Some(
            (until - self.orchestrator.clock.now())
                .to_std()
                .unwrap_or_default(),
        )
    }

    /// Waits for the next input while workers run.
    async fn next_input(&mut self) -> Input {
        let clock = Arc::clone(&self.orchestrator.clock);
        let pause = self.pause_left();
        let inbox = &mut self.inbox;
        tokio::select! {
            report = self.pauses.next_report() => match report {
                Some(report) => Input::Fault(report),
                None => Input::WorkersEnded(Vec::new()),
            },
            () = clock.sleep(pause.unwrap_or_default()), if pause.is_some() => Input::PauseOver,
            () = budget_crossed(inbox.budget.as_mut()) => Input::BudgetReached,
            first = self.workers.join_next_with_id(), if !self.workers.is_empty() => {
                let mut batch: Vec<_> = first.into_iter().collect();
                while let Some(next) = self.workers.try_join_next_with_id() {
                    batch.push(next);
                }
                Input::WorkersEnded(batch.into_iter().map(|r| r.map(|(_, out)| out)).collect())
            }
            news = inbox.victims.recv(), if inbox.victims_open => Input::Deadlock(news),
            changed = inbox.stage.changed(), if inbox.stage_open => {
                Input::StageChanged { open: changed.is_ok() }
            }
            command = inbox.session_end.recv(), if inbox.session_end_open => {
                Input::SessionEndAbort(command)
            }
            asked = inbox.stops.recv(), if inbox.stops_open => Input::StopIssue(asked),
            // Nothing left to wait for: the caller plans again.
            else => Input::WorkersEnded(Vec::new()),
        }
    }

    /// Applies one input to the run's state.
    pub(crate) fn on(&mut self, input: Input) {
        match input {
            Input::WorkersEnded(results) => {
                // A runner reports its fault before its worker ends: the
                // fault decides first whether anything more may start.
                while let Some(report) = self.pauses.try_report() {
                    self.on(Input::Fault(report));
                }
                for result in results {
                    self.worker_ended(result);
                }
            }
            Input::Deadlock(news) => self.deadlock_news(news),
            Input::StageChanged { open } => self.inbox.stage_open = open,
            Input::SessionEndAbort(Some(stop)) => {
                // Finish what runs, start nothing.
                self.trigger_stopped(stop);
            }
            Input::SessionEndAbort(None) => self.inbox.session_end_open = false,
            Input::WatchTick => {}
            Input::Fault(report) => {
                let now = self.orchestrator.clock.now();
                self.pauses.on_report(report, now, self.ctx.events.as_ref());
                if let Some(reason) = &self.pauses.stopped {
                    self.summary.stopped.get_or_insert_with(|| reason.clone());
                }
            }
            Input::PauseOver => self.pauses.pause_over(self.ctx.events.as_ref()),
            Input::BudgetReached => self.budget_reached(),
            Input::StopIssue(None) => self.inbox.stops_open = false,
            Input::StopIssue(Some(asked)) => match self.active.get(&asked.issue) {
                Some(worker) => {
                    worker.stop.stop(StopReason::Asked);
                    self.stop_answers
                        .entry(asked.issue)
                        .or_default()
                        .push(asked.answer);
                }
                // The asker may have gone; nothing to tell then.
                None => drop(asked.answer.send(StopAnswer::NotWorking)),
            },
        }
        if self.stage() != Stage::Running {
            self.pauses.give_back_waiting();
        }
    }

    /// Tells whoever asked to stop `issue` how its worker ended: a skip is
    /// the stop taking effect; any other end means it came too late.
    fn answer_stops(&mut self, issue: &IssueId, result: &IssueResult) {
        let answer = match result {
            IssueResult::Skipped { .. } if self.giving_way.contains(issue) => StopAnswer::Deferred,
            IssueResult::Skipped { .. } => StopAnswer::Stopped,
            IssueResult::Closed { .. } => StopAnswer::TooLate { outcome: "closed" },
            IssueResult::Failed { .. } => StopAnswer::TooLate { outcome: "failed" },
            IssueResult::Released { .. } => StopAnswer::TooLate {
                outcome: "released",
            },
        };
        for asker in self.stop_answers.remove(issue).unwrap_or_default() {
            let _ = asker.send(answer.clone());
        }
    }

    fn worker_ended(&mut self, result: Result<(IssueId, IssueResult), JoinError>) {
        let (issue, result) = match result {
            Ok(ended) => ended,
            Err(error) => return self.worker_lost(&error),
        };
        self.active.remove(&issue);
        self.answer_stops(&issue, &result);
        if self.giving_way.remove(&issue) && matches!(result, IssueResult::Skipped { .. }) {
            // Counted as deferred, not skipped.
            return;
        }
        if matches!(result, IssueResult::Closed { .. }) {
            self.closed_one();
        }
        if self.first.as_ref() == Some(&issue) {
            self.first_ended(&issue, &result);
        }
        if matches!(
            result,
            IssueResult::Closed { .. } | IssueResult::Failed { .. }
        ) {
            self.pauses.issue_worked();
        }
        match result {
            IssueResult::Closed { .. } => self.summary.closed.push(issue),
            IssueResult::Failed { reason } => self.summary.failed.push((issue, reason)),
            IssueResult::Skipped { reason } => self.summary.skipped.push((issue, reason)),
            IssueResult::Released { reason } => {
                // Given back untouched: planned again only by a later run.
                self.summary.released.push((issue, reason));
            }
        }
    }

    /// A worker's task ended without a result: it was cancelled, or it
    /// panicked before its issue was claimed (after that its boundary
    /// finalizes the issue itself).
    fn worker_lost(&mut self, error: &JoinError) {
        let task = error.id();
        let Some(issue) = self
            .active
            .iter()
            .find(|(_, w)| w.task == task)
            .map(|(issue, _)| issue.clone())
        else {
            return;
        };
        self.active.remove(&issue);
        self.giving_way.remove(&issue);
        // Its askers are not left waiting: the issue was not worked on.
        self.answer_stops(
            &issue,
            &IssueResult::Skipped {
                reason: String::new(),
            },
        );
        if error.is_panic() {
            let reason = format!("mala's worker crashed before it took the issue: {error}");
            self.events().emit(&Event::Warning {
                message: format!("{issue}: {reason}"),
            });
            self.summary.skipped.push((issue, reason));
        }
    }

    /// The issue that ran first ended: the others may go once it closed;
    /// otherwise nothing else can pass, and the run stops.
    fn first_ended(&mut self, issue: &IssueId, result: &IssueResult) {
        self.first = None;
        let why = match result {
            IssueResult::Closed { .. } => return,
            IssueResult::Failed { reason }
            | IssueResult::Skipped { reason }
            | IssueResult::Released { reason } => reason,
        };
        self.summary.stopped.get_or_insert_with(|| {
            format!(
                "the baseline issue {issue} did not close ({why}); no other issue can pass the gate while the required checks fail"
            )
        });
    }

    /// The run's budget is reached: nothing new starts (`may_start_work`
    /// reads the ledger). Running turns stop where they are (each runner
    /// watches the ledger), and their issues are left open for the next
    /// run; gates already under way finish. Said once: the inbox stops
    /// watching.
    fn budget_reached(&mut self) {
        self.inbox.budget = None;
        // Runners waiting out a pause give their issues back now.
        self.pauses.give_back_waiting();
        self.pauses.say_budget(self.ctx.events.as_ref());
    }

    /// What the run spent, for its summary, once its loop is over; a
    /// budget crossed by the last turns is said now if it was not yet.
    pub(crate) fn settle_spend(&mut self) {
        if self.inbox.budget.is_some() && self.pauses.budget_reached().is_some() {
            self.budget_reached();
        }
        self.summary.budget_reached = self.pauses.budget_reached();
        self.summary.spent = self.ctx.ports.faults.spent();
    }

    fn closed_one(&mut self) {
        self.sweep_pending = true;
        // An issue that gave way in a deadlock may wait for this one: plan it again.
        self.attempted.retain(|id| !self.deferred.contains(id));
        self.closed_since_periodic += 1;
        if let Some(periodic) = &self.orchestrator.settings.validation_triggers.periodic
            && !self.periodic_due
            && periodic.interval > 0
            && self.closed_since_periodic >= periodic.interval
        {
            // What closes while the trigger waits counts towards the next interval.
            self.closed_since_periodic = 0;
            self.periodic_due = true;
        }
    }

    /// The scheduler's part in a deadlock: stop the victim's worker at once
    /// (its issue is deferred), then, once the tracker has the deadlock, let
    /// the deferred issues be planned again.
    fn deadlock_news(&mut self, news: Option<DeadlockNews>) {
        match news {
            Some(DeadlockNews::Stop(stop)) => {
                self.unrecorded += 1;
                if let Some((issue, worker)) =
                    self.active.iter().find(|(_, w)| w.agent == stop.victim)
                {
                    worker.stop.stop(StopReason::Deadlock);
                    self.deferred.insert(issue.clone());
                    self.giving_way.insert(issue.clone());
                }
            }
            Some(DeadlockNews::Recorded(_)) => {
                self.unrecorded = self.unrecorded.saturating_sub(1);
                self.attempted.retain(|id| !self.deferred.contains(id));
            }
            None => {
                self.inbox.victims_open = false;
                self.unrecorded = 0;
            }
        }
    }

    /// Whether the run will start an agent: it has anything to claim now,
    /// may have later (watch mode), or has an open epic for its verifier.
    /// A run that will start none pays no preflight.
    pub(crate) async fn may_claim(&self) -> Result<bool, RunError> {
        let orchestrator = self.orchestrator;
        if orchestrator.plan.watch.is_some() {
            return Ok(true);
        }
        let (graph, queue) = self.queue().await?;
        let epic_to_verify = orchestrator.epic_verifier.is_some()
            && graph.issues().iter().any(|issue| {
                issue.issue_type == mala_core::IssueType::Epic && !issue.status.is_terminal()
            });
        Ok(!queue.entries.is_empty() || epic_to_verify)
    }

    /// The tracker's graph, and the issues this run could take now from it,
    /// best first, beside the running and the attempted ones.
    async fn queue(
        &self,
    ) -> Result<(Arc<mala_domain::IssueGraph>, mala_domain::QueuePlan), RunError> {
        let orchestrator = self.orchestrator;
        let plan = &orchestrator.plan;
        let graph = orchestrator.source.snapshot().await?;
        let ctx = &self.ctx;
        let takeover =
            takeover_candidates(graph.issues(), plan.resume.take_up, |run| ctx.is_alive(run));
        // Running issues are never planned twice, whatever the tracker says.
        // They are all attempted but for a deadlock victim still finalizing.
        let with_active: HashSet<IssueId>;
        let skip = if self.active.keys().all(|id| self.attempted.contains(id)) {
            &self.attempted
        } else {
            with_active = self
                .attempted
                .iter()
                .chain(self.active.keys())
                .cloned()
                .collect();
            &with_active
        };
        let queue = plan_queue(
            &graph,
            &QueueRequest {
                scope: &plan.scope,
                order: plan.order,
                issue_types: &orchestrator.settings.issue_types,
                skip,
                takeover: &takeover,
                limit: None,
                now: orchestrator.clock.now(),
            },
        )
        .map_err(|source| RunError::Scope {
            scope: plan.scope.clone(),
            source,
        })?;
        Ok((graph, queue))
    }

    /// Plans from a fresh snapshot and starts workers up to the capacity.
    async fn plan_and_spawn(&mut self) -> Result<(), RunError> {
        let (graph, mut queue) = self.queue().await?;
        if let Some(first) = self.first.clone() {
            // Alone, until it is done.
            queue.entries.retain(|entry| entry.id == first);
            if queue.entries.is_empty() && !self.active.contains_key(&first) {
                self.first = None;
                self.summary.stopped.get_or_insert_with(|| {
                    format!(
                        "the baseline issue {first} cannot be worked in this run (blocked, outside --scope, \
                         or claimed by another run); no other issue can pass the gate while the required checks fail"
                    )
                });
                return Ok(());
            }
        }
        let capacity = spawn_capacity(&self.view());
        self.events().emit(&Event::QueuePlanned {
            waiting: queue.entries.len().saturating_sub(capacity),
            queue: queue
                .entries
                .iter()
                .take(mala_core::QUEUE_SHOWN)
                .map(|entry| mala_core::QueuedIssue {
                    issue: entry.id.clone(),
                    title: entry.title.clone(),
                })
                .collect(),
        });
        for entry in queue.entries {
            if spawn_capacity(&self.view()) == 0 {
                break;
            }
            self.attempted.insert(entry.id.clone());
            if entry.takeover {
                // A dead run's claim (or, with --resume, unassigned work): take it over, once.
                let holder = graph.get(&entry.id).and_then(|i| i.assignee.clone());
                let taken = self
                    .orchestrator
                    .tracker
                    .take_over(&entry.id, &self.ctx.runner_config.actor, holder)
                    .await;
                if !matches!(taken, Ok(mala_core::ClaimOutcome::Claimed)) {
                    continue;
                }
            }
            self.spawn(entry.id, entry.takeover);
        }
        Ok(())
    }

    fn spawn(&mut self, issue: IssueId, takeover: bool) {
        let plan = &self.orchestrator.plan;
        let agent = agent_name(&issue, &plan.run_id);
        let resume = resume_for(plan, &self.ctx.priors, &issue, takeover);
        let (stop, signal) = stop_line();
        let (ports, config, id, worker_agent) = (
            self.ctx.ports.clone(),
            self.ctx.runner_config.clone(),
            issue.clone(),
            agent.clone(),
        );
        let handle = self.workers.spawn(async move {
            let result = run_issue_from(&id, worker_agent, &ports, &config, resume, signal).await;
            (id, result)
        });
        let task = handle.id();
        self.active.insert(issue, Worker { agent, task, stop });
        self.started += 1;
    }

    /// Verifies or closes the eligible epics. `None` when nothing changed,
    /// `Some(Ok)` when the queue may have (plan again), `Some(Err)` with
    /// the failed command when `epic_completion` stops the run.
    async fn sweep(&mut self) -> Option<Result<(), TriggerStop>> {
        self.sweep_pending = false;
        let orchestrator = self.orchestrator;
        let max_rounds = orchestrator
            .settings
            .validation_triggers
            .epic_completion
            .as_ref()
            .map_or(3, |t| t.max_epic_verification_retries.max(1));
        let events = self.events();
        let swept = sweep_epics(
            orchestrator.tracker.as_ref(),
            orchestrator.epic_verifier.as_ref(),
            &orchestrator.plan.scope,
            &mut self.epic_book,
            max_rounds,
            events.as_ref(),
        )
        .await;
        let sweep = match swept {
            Ok(sweep) => sweep,
            Err(error) => {
                events.emit(&Event::Warning {
                    message: format!("epic sweep failed: {error}"),
                });
                return None;
            }
        };
        let mut due = std::mem::take(&mut self.completion_due);
        due.closed.extend(sweep.closed.iter().cloned());
        due.failed.extend(sweep.failed.iter().cloned());
        if let Some((epic, fault, message)) = sweep.fault.clone() {
            // As a runner's agent would: the run pauses or stops; after a
            // pause a later sweep tries the epic again, and fires the
            // completion triggers of the epics this one settled (their
            // fixers would meet the same fault now). A stopped run spends
            // nothing more.
            self.on(Input::Fault(mala_pipeline::FaultReport {
                issue: epic,
                fault,
                message,
                reply: None,
            }));
            self.sweep_pending = self.summary.stopped.is_none();
            if self.sweep_pending {
                self.completion_due = due;
            }
        } else if let Some(stop) = orchestrator
            .epic_completion(&due, &events, &mut self.reviews)
            .await
        {
            return Some(Err(stop));
        }
        // A closed epic may complete its parent; new issues may be ready;
        // an epic a pause kept from its verifier is tried again.
        self.sweep_pending |= !sweep.closed.is_empty();
        (!sweep.closed.is_empty() || !sweep.created.is_empty()).then_some(Ok(()))
    }

    async fn fire_periodic(&mut self) -> Option<TriggerStop> {
        let orchestrator = self.orchestrator;
        let periodic = orchestrator
            .settings
            .validation_triggers
            .periodic
            .as_ref()?;
        self.fire("periodic", &periodic.trigger).await
    }

    /// `run_end`, when the run was not stopped and its `fire_on` says so.
    /// Returns the failed command when it aborts.
    pub(crate) async fn fire_run_end(&mut self) -> Option<TriggerStop> {
        let orchestrator = self.orchestrator;
        let run_end = orchestrator.settings.validation_triggers.run_end.as_ref()?;
        let summary = &self.summary;
        // Nothing more is spent once the environment or the budget stopped the run.
        if summary.interrupted
            || summary.aborted.is_some()
            || summary.stopped.is_some()
            || summary.budget_reached.is_some()
            || !run_end_fires(run_end.fire_on, summary.closed.len(), summary.failed.len())
        {
            return None;
        }
        self.fire("run_end", &run_end.trigger).await
    }

    /// Fires the trigger named `kind`; returns the failed command when it
    /// stops the run.
    async fn fire(
        &mut self,
        kind: &'static str,
        trigger: &mala_domain::Trigger,
    ) -> Option<TriggerStop> {
        let events = self.events();
        let outcome = self
            .orchestrator
            .fire((kind, kind), trigger, &events, &mut self.reviews)
            .await;
        outcome.stop()
    }

    /// The second Ctrl-C: interrupt every session and give the workers a
    /// moment to record themselves as stopped (locks released, claims kept
    /// for the next run). Then stop whatever still runs through its worker
    /// boundary, which kills its session and finalizes it the same way. The
    /// third Ctrl-C kills every session at once.
    async fn stop_workers(&mut self) {
        let orchestrator = self.orchestrator;
        let clock = Arc::clone(&orchestrator.clock);
        if self.stage() == Stage::Kill {
            orchestrator.kill_all();
        } else {
            for backend in &orchestrator.stoppable {
                backend.stop_all().await;
            }
            let grace = clock.sleep(STOP_GRACE);
            tokio::pin!(grace);
            while !self.workers.is_empty() {
                tokio::select! {
                    input = self.next_input() => {
                        let killed = matches!(input, Input::StageChanged { .. }) && self.stage() == Stage::Kill;
                        self.on(input);
                        if killed {
                            // The third Ctrl-C: no more grace.
                            orchestrator.kill_all();
                            break;
                        }
                    }
                    () = &mut grace => break,
                }
            }
        }
        for worker in self.active.values() {
            worker.stop.stop(StopReason::Interrupted);
        }
        let finalize = clock.sleep(FINALIZE_GRACE);
        tokio::pin!(finalize);
        while !self.workers.is_empty() {
            tokio::select! {
                Some(ended) = self.workers.join_next_with_id() => {
                    self.on(Input::WorkersEnded(vec![ended.map(|(_, out)| out)]));
                }
                () = &mut finalize => break,
            }
        }
        self.workers.abort_all();
        while self.workers.join_next().await.is_some() {}
    }

    /// The agents still listed as active when the run ends (their workers
    /// were cancelled): their locks must not outlive the run.
    pub(crate) fn leftover_agents(&self) -> Vec<AgentId> {
        self.active.values().map(|w| w.agent.clone()).collect()
    }

    /// Deferred issues that did not get an outcome later in the run.
    pub(crate) fn still_deferred(&self) -> Vec<IssueId> {
        let summary = &self.summary;
        let settled: HashSet<&IssueId> = summary
            .closed
            .iter()
            .chain(summary.failed.iter().map(|(i, _)| i))
            .collect();
        self.deferred
            .iter()
            .filter(|i| !settled.contains(i))
            .cloned()
            .collect()
    }
}

/// Resolves once the budget is reached; pending without a budget to watch
/// (or once nothing can reach it any more).
async fn budget_crossed(budget: Option<&mut watch::Receiver<bool>>) {
    if let Some(budget) = budget
        && budget.wait_for(|crossed| *crossed).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// A receiver whose sender is gone: for an input nobody will send.
fn closed_channel<T>() -> mpsc::UnboundedReceiver<T> {
    mpsc::unbounded_channel().1
}
