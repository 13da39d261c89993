//! The run as the page shows it, folded from the run's events (or read
//! from a run's record). Pure: the caller says when each event happened.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use mala_core::{AgentEvent, AgentId, Event, IssueId, IssueStep, LockEvent, RunLog, WaitTarget};
use serde::Serialize;

/// How many history entries an issue keeps (the oldest go first).
const HISTORY_KEPT: usize = 100;
/// How many warnings and broken deadlocks the run keeps.
const RECENT_KEPT: usize = 20;
/// How long a shortened tool call or reason may be, in characters.
const SHORT: usize = 120;
/// How long one history line may be, in characters.
const TEXT_KEPT: usize = 2000;

/// Where an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IssueState {
    Queued,
    Claimed,
    Turn,
    Gate,
    Review,
    Merging,
    Closed,
    Failed,
    Skipped,
    Released,
    /// Gave way in a deadlock; planned again once its blocker closes.
    Deferred,
}

impl IssueState {
    fn in_flight(self) -> bool {
        matches!(
            self,
            Self::Claimed | Self::Turn | Self::Gate | Self::Review | Self::Merging
        )
    }

    /// A run's record says `running`, `closed`, `failed`, `skipped`,
    /// `released` or `deferred` (given way, planned again).
    fn from_record(status: &str) -> Self {
        match status {
            "closed" => Self::Closed,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            "released" => Self::Released,
            "deferred" => Self::Deferred,
            _ => Self::Claimed,
        }
    }
}

/// The last judgement of an issue's attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Verdict {
    /// `gate` or `review`.
    pub(crate) kind: &'static str,
    pub(crate) passed: bool,
    pub(crate) reasons: Vec<String>,
}

/// One line of an issue's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HistoryEntry {
    pub(crate) t: DateTime<Utc>,
    pub(crate) kind: &'static str,
    pub(crate) text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) passed: Option<bool>,
}

/// One issue of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct IssueView {
    pub(crate) id: IssueId,
    pub(crate) title: String,
    pub(crate) state: IssueState,
    pub(crate) agent: Option<AgentId>,
    /// The timeline's row: the agent slot the issue ran in.
    pub(crate) lane: Option<usize>,
    pub(crate) attempts: u32,
    pub(crate) verdict: Option<Verdict>,
    pub(crate) reason: Option<String>,
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// The session record, read for the transcript; never from a request.
    #[serde(skip)]
    pub(crate) log_path: Option<PathBuf>,
    #[serde(skip)]
    history: VecDeque<HistoryEntry>,
}

impl IssueView {
    fn new(id: IssueId, title: String, state: IssueState) -> Self {
        Self {
            id,
            title,
            state,
            agent: None,
            lane: None,
            attempts: 0,
            verdict: None,
            reason: None,
            tokens: 0,
            cost_usd: 0.0,
            started_at: None,
            ended_at: None,
            log_path: None,
            history: VecDeque::new(),
        }
    }

    fn note(&mut self, t: DateTime<Utc>, kind: &'static str, text: String, passed: Option<bool>) {
        if self.history.len() == HISTORY_KEPT {
            self.history.pop_front();
        }
        self.history.push_back(HistoryEntry {
            t,
            kind,
            text: capped(text),
            passed,
        });
    }

    fn end(&mut self, t: DateTime<Utc>, state: IssueState, reason: Option<&str>) {
        self.state = state;
        self.ended_at = Some(t);
        self.reason = reason.map(str::to_owned);
        let text = reason.map_or_else(|| kind_of(state).to_owned(), str::to_owned);
        self.note(t, kind_of(state), text, None);
    }
}

fn kind_of(state: IssueState) -> &'static str {
    match state {
        IssueState::Closed => "closed",
        IssueState::Failed => "failed",
        IssueState::Skipped => "skipped",
        IssueState::Released => "released",
        IssueState::Deferred => "deferred",
        _ => "step",
    }
}

/// One issue with its history, as `GET /api/issues/{id}` serves it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IssueDetail<'a> {
    #[serde(flatten)]
    pub(crate) issue: &'a IssueView,
    pub(crate) history: &'a VecDeque<HistoryEntry>,
}

/// A live agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct AgentView {
    pub(crate) agent: AgentId,
    pub(crate) issue: IssueId,
    /// The tool call it is in, shortened; `None` between calls.
    pub(crate) doing: Option<String>,
    pub(crate) started_at: DateTime<Utc>,
    #[serde(skip)]
    last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LockView {
    pub(crate) path: String,
    pub(crate) holder: AgentId,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WaitView {
    pub(crate) agent: AgentId,
    pub(crate) on: Vec<LockView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeadlockView {
    pub(crate) at: DateTime<Utc>,
    pub(crate) victim: AgentId,
    pub(crate) holder: AgentId,
    pub(crate) cycle: Vec<AgentId>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Paused {
    pub(crate) reason: String,
    pub(crate) until: DateTime<Utc>,
}

/// The run's counts and spend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Totals {
    pub(crate) closed: usize,
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
    pub(crate) released: usize,
    pub(crate) in_flight: usize,
    /// Ready issues not started yet, as the last plan counted them.
    pub(crate) queued: usize,
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
    /// What the run has spent as its budget counts it (the issues' agents
    /// and every other session: reviewers, the verifier, fixers); `None`
    /// until the run says (a run recorded without an event log: never).
    pub(crate) run_cost_usd: Option<f64>,
    pub(crate) run_tokens: Option<u64>,
    pub(crate) budget: Option<String>,
    pub(crate) elapsed_seconds: i64,
}

/// An agent as `GET /api/run` serves it: with how long it has been quiet.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentNow<'a> {
    #[serde(flatten)]
    pub(crate) agent: &'a AgentView,
    pub(crate) idle_seconds: i64,
}

/// The whole run at one moment, as `GET /api/run` serves it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunSnapshot<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) repo: &'a str,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) outcome: &'a str,
    pub(crate) max_agents: Option<usize>,
    pub(crate) paused: Option<&'a Paused>,
    pub(crate) totals: Totals,
    pub(crate) issues: Vec<&'a IssueView>,
    pub(crate) agents: Vec<AgentNow<'a>>,
    pub(crate) locks: Vec<&'a LockView>,
    pub(crate) waits: Vec<WaitView>,
    pub(crate) deadlocks: &'a VecDeque<DeadlockView>,
    pub(crate) warnings: &'a VecDeque<String>,
}

/// The run's state for the page: one owner, fed event by event.
#[derive(Debug, Clone)]
pub(crate) struct RunView {
    run_id: String,
    repo: String,
    max_agents: Option<usize>,
    sessions: Option<PathBuf>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    budget: Option<String>,
    paused: Option<Paused>,
    issues: Vec<IssueView>,
    index: HashMap<IssueId, usize>,
    /// The last plan's issues not started yet (their titles, in order).
    queue: Vec<IssueView>,
    waiting: usize,
    agents: BTreeMap<AgentId, AgentView>,
    locks: BTreeMap<String, LockView>,
    waits: BTreeMap<AgentId, Vec<WaitTarget>>,
    deadlocks: VecDeque<DeadlockView>,
    warnings: VecDeque<String>,
    /// Agents that gave way in a deadlock and have not ended yet: their
    /// issue's skip is a deferral (it runs again), not an end.
    victims: Vec<AgentId>,
    /// The run's spend as its budget counts it (`Event::RunSpend`).
    run_spent: Option<(f64, u64)>,
}

impl RunView {
    /// An empty view of a run starting at `started_at`; `budget` is the
    /// run's budget as the page says it (`None`: no limit).
    pub(crate) fn new(run_id: &str, started_at: DateTime<Utc>, budget: Option<String>) -> Self {
        Self {
            run_id: run_id.to_owned(),
            repo: String::new(),
            max_agents: None,
            sessions: None,
            started_at,
            finished_at: None,
            outcome: "running".to_owned(),
            budget,
            paused: None,
            issues: Vec::new(),
            index: HashMap::new(),
            queue: Vec::new(),
            waiting: 0,
            agents: BTreeMap::new(),
            locks: BTreeMap::new(),
            waits: BTreeMap::new(),
            deadlocks: VecDeque::new(),
            warnings: VecDeque::new(),
            victims: Vec::new(),
            run_spent: None,
        }
    }

    /// A run as its record has it (a run recorded without an event log):
    /// the issues, their status, reasons, attempts and spend; no agents or
    /// locks.
    pub(crate) fn from_log(log: &RunLog, budget: Option<String>) -> Self {
        let mut view = Self::new(&log.run_id, log.started_at, budget);
        view.reconcile(log);
        view
    }

    /// The record's word on a run that is over: its outcome and end, and
    /// each issue's status, reason, attempts and spend, which the events
    /// may have left short (a killed run's end has none). An issue the
    /// events never showed is added; nothing is live any more.
    pub(crate) fn reconcile(&mut self, log: &RunLog) {
        if self.repo.is_empty() {
            self.repo = log.repo_path.display().to_string();
        }
        self.finished_at = log.finished_at.or(self.finished_at);
        self.outcome.clone_from(&log.outcome);
        self.agents.clear();
        self.waits.clear();
        self.queue.clear();
        self.locks.clear();
        self.paused = None;
        for record in &log.issues {
            let id = IssueId::new(record.issue.as_str());
            if !self.index.contains_key(&id) {
                self.insert(IssueView::new(
                    id.clone(),
                    String::new(),
                    IssueState::Queued,
                ));
            }
            let Some(issue) = self.issue_mut(&id) else {
                continue;
            };
            issue.state = IssueState::from_record(&record.status);
            issue.agent = Some(AgentId::new(record.agent.as_str()));
            issue.attempts = record.attempts;
            issue.reason.clone_from(&record.reason);
            issue.tokens = record.tokens;
            issue.cost_usd = record.cost_usd;
            issue.started_at = record.started_at.or(record.baseline).or(issue.started_at);
            issue.ended_at = record.ended_at.or(issue.ended_at);
            issue.log_path = Some(record.log_path.clone());
            if issue.verdict.is_none() && !record.findings.is_empty() {
                issue.verdict = Some(Verdict {
                    kind: "review",
                    passed: false,
                    reasons: record.findings.iter().map(|f| f.title.clone()).collect(),
                });
            }
        }
        self.lay_out_lanes();
    }

    /// Gives every started issue a timeline row, in the order they
    /// started, when some have none (a record read without the events
    /// that placed them).
    fn lay_out_lanes(&mut self) {
        if self
            .issues
            .iter()
            .all(|issue| issue.lane.is_some() || issue.started_at.is_none())
        {
            return;
        }
        let mut order: Vec<usize> = (0..self.issues.len())
            .filter(|&slot| self.issues[slot].started_at.is_some())
            .collect();
        order.sort_by_key(|&slot| self.issues[slot].started_at);
        let mut lanes = Vec::new();
        for slot in order {
            let issue = &mut self.issues[slot];
            if let Some(start) = issue.started_at {
                issue.lane = Some(take_lane(&mut lanes, start, issue.ended_at));
            }
        }
    }

    /// Takes one event that happened at `at`.
    pub(crate) fn fold(&mut self, event: &Event, at: DateTime<Utc>) {
        match event {
            Event::RunStarted {
                run_id,
                repo,
                max_agents,
                sessions,
            } => {
                self.run_id.clone_from(run_id);
                self.repo.clone_from(repo);
                self.max_agents = *max_agents;
                self.sessions.clone_from(sessions);
            }
            Event::RunFinished { outcome, .. } => {
                outcome.label().clone_into(&mut self.outcome);
                self.finished_at = Some(at);
                self.agents.clear();
                self.waits.clear();
                self.queue.clear();
            }
            Event::QueuePlanned { waiting, queue } => {
                self.waiting = *waiting;
                self.queue = queue
                    .iter()
                    .filter(|q| !self.index.contains_key(&q.issue))
                    .map(|q| IssueView::new(q.issue.clone(), q.title.clone(), IssueState::Queued))
                    .collect();
            }
            Event::IssueClaimed {
                issue,
                agent,
                title,
            } => self.claimed(issue, agent, title, at),
            Event::Agent { agent, event } => self.agent_did(agent, event, at),
            Event::Lock { event } => self.lock(event),
            Event::DeadlockBroken {
                victim,
                holder,
                cycle,
            } => {
                self.waits.remove(victim);
                self.victims.push(victim.clone());
                push_capped(
                    &mut self.deadlocks,
                    DeadlockView {
                        at,
                        victim: victim.clone(),
                        holder: holder.clone(),
                        cycle: cycle.clone(),
                    },
                );
            }
            Event::Warning { message } => push_capped(&mut self.warnings, message.clone()),
            Event::RunPaused { reason, until } => {
                self.paused = Some(Paused {
                    reason: reason.clone(),
                    until: *until,
                });
            }
            Event::RunResumed => self.paused = None,
            Event::RunSpend { cost_usd, tokens } => self.run_spent = Some((*cost_usd, *tokens)),
            Event::BudgetReached {
                scope,
                issue,
                spent,
            } => {
                let text = format!("the {scope}'s budget was reached ({spent})");
                if let Some(issue) = issue.as_ref().and_then(|id| self.issue_mut(id)) {
                    issue.note(at, "budget", text.clone(), None);
                }
                push_capped(&mut self.warnings, text);
            }
            _ => self.issue_event(event, at),
        }
    }

    /// The events that concern one issue's progress.
    fn issue_event(&mut self, event: &Event, at: DateTime<Utc>) {
        let id = match event {
            Event::IssueSkipped { issue, .. } | Event::IssueFailed { issue, .. }
                if !self.index.contains_key(issue) =>
            {
                let title = self.queued_title(issue);
                self.queue.retain(|queued| &queued.id != issue);
                self.insert(IssueView::new(issue.clone(), title, IssueState::Queued));
                issue
            }
            Event::IssueStarted { issue, .. }
            | Event::StepStarted { issue, .. }
            | Event::GateChecked { issue, .. }
            | Event::Reviewed { issue, .. }
            | Event::Retrying { issue, .. }
            | Event::TurnFinished { issue, .. }
            | Event::IssueClosed { issue }
            | Event::IssueFailed { issue, .. }
            | Event::IssueSkipped { issue, .. }
            | Event::IssueReleased { issue, .. }
            | Event::EnvironmentFault { issue, .. }
            | Event::WorktreeOpened { issue, .. }
            | Event::MergeQueued { issue, .. }
            | Event::Landed { issue, .. } => issue,
            _ => return,
        };
        let Some(&slot) = self.index.get(id) else {
            return;
        };
        let issue = &mut self.issues[slot];
        let gave_way = matches!(event, Event::IssueSkipped { .. })
            && issue
                .agent
                .as_ref()
                .is_some_and(|agent| self.victims.contains(agent));
        progress(issue, event, at);
        if gave_way {
            issue.state = IssueState::Deferred;
            if let Some(last) = issue.history.back_mut() {
                last.kind = "deferred";
            }
            let agent = issue.agent.clone();
            self.victims.retain(|victim| Some(victim) != agent.as_ref());
        }
        if !issue.state.in_flight()
            && let Some(agent) = issue.agent.clone()
        {
            self.agents.remove(&agent);
            self.waits.remove(&agent);
        }
    }

    fn claimed(&mut self, id: &IssueId, agent: &AgentId, title: &str, at: DateTime<Utc>) {
        if !self.index.contains_key(id) {
            self.insert(IssueView::new(
                id.clone(),
                String::new(),
                IssueState::Claimed,
            ));
        }
        self.queue.retain(|queued| &queued.id != id);
        let lane = self.free_lane();
        let log_path = self
            .sessions
            .as_ref()
            .map(|dir| dir.join(agent.record_file_name()));
        let Some(issue) = self.issue_mut(id) else {
            return;
        };
        if !title.is_empty() {
            title.clone_into(&mut issue.title);
        }
        issue.state = IssueState::Claimed;
        issue.agent = Some(agent.clone());
        issue.lane = Some(lane);
        issue.started_at = Some(at);
        issue.ended_at = None;
        issue.reason = None;
        issue.log_path = log_path;
        issue.note(at, "claimed", format!("claimed by {agent}"), None);
        self.agents.insert(
            agent.clone(),
            AgentView {
                agent: agent.clone(),
                issue: id.clone(),
                doing: None,
                started_at: at,
                last_seen: at,
            },
        );
    }

    fn agent_did(&mut self, agent: &AgentId, event: &AgentEvent, at: DateTime<Utc>) {
        let Some(view) = self.agents.get_mut(agent) else {
            return;
        };
        view.last_seen = at;
        match event {
            AgentEvent::ToolUse { name, input, .. } => {
                view.doing = Some(shorten(&format!("{name}: {}", tool_summary(input))));
            }
            AgentEvent::ToolResult { .. } | AgentEvent::ToolDenied { .. } => view.doing = None,
            _ => {}
        }
    }

    fn lock(&mut self, event: &LockEvent) {
        match event {
            LockEvent::Acquired { agent, key, path } => {
                // `lock_wait` says when a wait begins, not when it ends: the
                // lock taken ends it.
                if let Some(on) = self.waits.get_mut(agent) {
                    on.retain(|target| &target.key != key);
                    if on.is_empty() {
                        self.waits.remove(agent);
                    }
                }
                self.locks.insert(
                    key.clone(),
                    LockView {
                        path: path.display().to_string(),
                        holder: agent.clone(),
                    },
                );
            }
            LockEvent::Released { agent, key, .. } => {
                if self
                    .locks
                    .get(key)
                    .is_some_and(|lock| &lock.holder == agent)
                {
                    self.locks.remove(key);
                }
            }
            LockEvent::Waiting { agent, on } => {
                self.waits.insert(agent.clone(), on.clone());
            }
            LockEvent::StoppedWaiting { agent } => {
                self.waits.remove(agent);
            }
        }
    }

    /// The lowest timeline row no issue in flight is on.
    fn free_lane(&self) -> usize {
        let taken: Vec<usize> = self
            .issues
            .iter()
            .filter(|i| i.state.in_flight())
            .filter_map(|i| i.lane)
            .collect();
        (0..=taken.len())
            .find(|lane| !taken.contains(lane))
            .unwrap_or_default()
    }

    fn queued_title(&self, id: &IssueId) -> String {
        self.queue
            .iter()
            .find(|queued| &queued.id == id)
            .map(|queued| queued.title.clone())
            .unwrap_or_default()
    }

    fn insert(&mut self, issue: IssueView) {
        self.index.insert(issue.id.clone(), self.issues.len());
        self.issues.push(issue);
    }

    fn issue_mut(&mut self, id: &IssueId) -> Option<&mut IssueView> {
        self.index.get(id).map(|&slot| &mut self.issues[slot])
    }

    /// Whether the run's own end (`RunFinished`) has been folded.
    pub(crate) fn saw_its_end(&self) -> bool {
        self.finished_at.is_some()
    }

    pub(crate) fn is_finished(&self) -> bool {
        mala_core::run_is_over(self.finished_at, &self.outcome)
    }

    /// One issue, with its history.
    pub(crate) fn issue(&self, id: &IssueId) -> Option<IssueDetail<'_>> {
        let issue = match self.index.get(id) {
            Some(&slot) => &self.issues[slot],
            None => self.queue.iter().find(|queued| &queued.id == id)?,
        };
        Some(IssueDetail {
            issue,
            history: &issue.history,
        })
    }

    /// Where an issue's session record is, if it has one.
    pub(crate) fn record_of(&self, id: &IssueId) -> Option<PathBuf> {
        self.issues[*self.index.get(id)?].log_path.clone()
    }

    /// Whether the issue is being worked on, as far as the events say.
    pub(crate) fn in_flight(&self, id: &IssueId) -> bool {
        self.index
            .get(id)
            .is_some_and(|&slot| self.issues[slot].state.in_flight())
    }

    /// The run at `now`. The queue's issues come after the ones started.
    pub(crate) fn snapshot(&self, now: DateTime<Utc>) -> RunSnapshot<'_> {
        let count = |state| self.issues.iter().filter(|i| i.state == state).count();
        let totals = Totals {
            closed: count(IssueState::Closed),
            failed: count(IssueState::Failed),
            skipped: count(IssueState::Skipped),
            released: count(IssueState::Released),
            in_flight: self.issues.iter().filter(|i| i.state.in_flight()).count(),
            queued: if self.is_finished() { 0 } else { self.waiting },
            tokens: self.issues.iter().map(|i| i.tokens).sum(),
            cost_usd: self.issues.iter().map(|i| i.cost_usd).sum(),
            run_cost_usd: self.run_spent.map(|(cost, _)| cost),
            run_tokens: self.run_spent.map(|(_, tokens)| tokens),
            budget: self.budget.clone(),
            elapsed_seconds: (self.finished_at.unwrap_or(now) - self.started_at).num_seconds(),
        };
        RunSnapshot {
            run_id: &self.run_id,
            repo: &self.repo,
            started_at: self.started_at,
            finished_at: self.finished_at,
            now,
            outcome: &self.outcome,
            max_agents: self.max_agents,
            paused: self.paused.as_ref(),
            totals,
            issues: self.issues.iter().chain(&self.queue).collect(),
            agents: self
                .agents
                .values()
                .map(|agent| AgentNow {
                    agent,
                    idle_seconds: (now - agent.last_seen).num_seconds().max(0),
                })
                .collect(),
            locks: self.locks.values().collect(),
            waits: self
                .waits
                .iter()
                .map(|(agent, on)| WaitView {
                    agent: agent.clone(),
                    on: on
                        .iter()
                        .map(|t| LockView {
                            path: t.path.display().to_string(),
                            holder: t.holder.clone(),
                        })
                        .collect(),
                })
                .collect(),
            deadlocks: &self.deadlocks,
            warnings: &self.warnings,
        }
    }
}

/// What one event does to its issue.
fn progress(issue: &mut IssueView, event: &Event, at: DateTime<Utc>) {
    match event {
        Event::IssueStarted { .. } => issue.note(at, "started", "work started".into(), None),
        Event::StepStarted { step, .. } => {
            issue.state = match step {
                IssueStep::Turn => IssueState::Turn,
                IssueStep::Gate => IssueState::Gate,
                IssueStep::Review => IssueState::Review,
                IssueStep::Merge => IssueState::Merging,
            };
        }
        Event::GateChecked {
            attempt,
            passed,
            reasons,
            ..
        } => {
            issue.attempts = *attempt;
            let text = if *passed {
                format!("gate passed (attempt {attempt})")
            } else {
                format!("gate failed (attempt {attempt}): {}", reasons.join("; "))
            };
            issue.note(at, "gate", text, Some(*passed));
            issue.verdict = Some(Verdict {
                kind: "gate",
                passed: *passed,
                reasons: reasons.clone(),
            });
        }
        Event::Reviewed {
            blocking,
            advisory,
            findings,
            ..
        } => {
            let passed = *blocking == 0;
            let mut reasons: Vec<String> = findings.iter().map(|f| f.title.clone()).collect();
            if *advisory > 0 {
                reasons.push(format!("{advisory} advisory finding(s)"));
            }
            let text = format!("review: {blocking} blocking, {advisory} advisory");
            issue.note(at, "review", text, Some(passed));
            issue.verdict = Some(Verdict {
                kind: "review",
                passed,
                reasons,
            });
        }
        Event::Retrying { why, .. } => issue.note(at, "retry", why.clone(), None),
        Event::TurnFinished {
            usage, cost_usd, ..
        } => {
            issue.tokens = issue.tokens.saturating_add(usage.total());
            issue.cost_usd += cost_usd;
            let text = format!("turn ended: {} tokens, ${cost_usd:.4}", usage.total());
            issue.note(at, "turn", text, None);
        }
        Event::IssueClosed { .. } => issue.end(at, IssueState::Closed, None),
        Event::IssueFailed { reason, .. } => issue.end(at, IssueState::Failed, Some(reason)),
        Event::IssueSkipped { reason, .. } => issue.end(at, IssueState::Skipped, Some(reason)),
        Event::IssueReleased { reason, .. } => issue.end(at, IssueState::Released, Some(reason)),
        Event::EnvironmentFault { message, .. } => issue.note(at, "fault", message.clone(), None),
        Event::WorktreeOpened { branch, .. } => {
            issue.note(at, "step", format!("worktree on {branch}"), None);
        }
        Event::MergeQueued { branch, .. } => {
            issue.state = IssueState::Merging;
            issue.note(at, "merge_queued", format!("{branch} queued to land"), None);
        }
        Event::Landed { target, commit, .. } => {
            issue.note(
                at,
                "landed",
                format!("landed on {target} as {commit}"),
                None,
            );
        }
        _ => {}
    }
}

/// The lowest row free at `start` (a row is free once its last bar ended).
fn take_lane(
    lanes: &mut Vec<Option<DateTime<Utc>>>,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
) -> usize {
    let free = lanes
        .iter()
        .position(|ended| ended.is_some_and(|ended| ended <= start));
    let lane = free.unwrap_or(lanes.len());
    if lane == lanes.len() {
        lanes.push(end);
    } else {
        lanes[lane] = end;
    }
    lane
}

/// A history line at most [`TEXT_KEPT`] characters.
fn capped(text: String) -> String {
    if text.chars().count() <= TEXT_KEPT {
        return text;
    }
    let mut cut: String = text.chars().take(TEXT_KEPT - 1).collect();
    cut.push('…');
    cut
}

fn push_capped<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == RECENT_KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

/// A tool's input in a few words: its command, path or pattern.
pub(crate) fn tool_summary(input: &serde_json::Value) -> String {
    for key in ["command", "file_path", "path", "pattern", "url"] {
        if let Some(text) = input.get(key).and_then(serde_json::Value::as_str) {
            return text.to_owned();
        }
    }
    input.to_string()
}

/// `text` on one line, at most [`SHORT`] characters.
pub(crate) fn shorten(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= SHORT {
        return line;
    }
    let mut cut: String = line.chars().take(SHORT - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
