//! One issue end to end, as one state machine: claim → session → turns →
//! gate → (follow-up → gate)* → review → (follow-up → gate → review)* →
//! finalize. It reaches the world only through the ports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession,
    ClaimOutcome, Clock, Event, EventSink, Evidence, Finding, Issue, IssueId, IssueStatus,
    IssueStep, IssueTracker, IssueUpdate, Landing, LockTable, Repository, ReviewError,
    ReviewRequest, ReviewSubject, Reviewer, SessionRequest, Workspace, Workspaces,
};
use mala_domain::{
    AttemptState, Blame, GateInput, GateVerdict, Marker, NEEDS_FOLLOWUP, PromptKind,
    RequiredCommand, blame, check_gate, findings_list, is_issue_commit, no_progress, render_prompt,
};

use crate::faults::{FaultLine, GoOn};
use crate::filing::track_advisory_findings;
use crate::reviewers::ask_reviewer;
use crate::worker::{CatchUnwind, StopSignal, panic_message};

/// What the runner needs to know about the project.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub repo_root: PathBuf,
    /// The actor issues are claimed under (`mala:<run id>`).
    pub actor: String,
    pub required: Vec<RequiredCommand>,
    pub code_patterns: Vec<String>,
    pub config_files: Vec<String>,
    pub setup_files: Vec<String>,
    /// Gate attempts in all (the first included).
    pub max_gate_attempts: u32,
    /// Review rounds in all.
    pub max_review_attempts: u32,
    /// Resumes after an idle timeout, crash or overload.
    pub max_resumes: u32,
    pub resume_backoff: Duration,
    /// How many later runs may retry an issue that failed (`retry_failed`).
    pub retry_failed: u32,
    /// Where session records are, for the failure note.
    pub record_dir: PathBuf,
    /// Review findings at this priority or more urgent block (1: P0 and P1).
    pub blocking_priority: u8,
    /// `gate.rerun`: mala runs the required commands itself on the agent's
    /// commit, in a clean worktree, before the gate can pass.
    pub rerun: bool,
    /// `per_issue_review.track_review_issues`: advisory findings become a
    /// `[Review]` tracking issue; with `false` the review event only counts them.
    pub track_review_issues: bool,
    /// `evidence_check.protected_files`: globs protected besides mala.yaml,
    /// `config_files` and the files the required commands name.
    pub protected_files: Vec<String>,
    /// `budget.issue`: what one issue may spend.
    pub issue_budget: mala_domain::Spend,
    /// Required checks that already failed before any agent worked (a red
    /// baseline the run went on with): a gate failure on them says so.
    pub red_baseline: Vec<String>,
    /// `merge_queue.validate`: the required commands run again on the
    /// merged result before a branch lands (worktree isolation).
    pub merge_validate: bool,
    /// `merge_queue.max_retries`: follow-ups after a branch could not land.
    pub merge_retries: u32,
}

/// The `session_end` trigger: mala runs the project's commands itself once
/// an issue's gate has passed with a commit.
#[async_trait::async_trait]
pub trait SessionEndCheck: Send + Sync {
    /// Runs the trigger for `issue` and says how it went, for the reviewer.
    /// It never blocks the issue; a trigger whose failure mode is `abort`
    /// stops the run instead, which the implementation arranges.
    async fn run(&self, issue: &IssueId) -> String;
}

/// The ports the runner uses.
#[derive(Clone)]
pub struct RunnerPorts {
    pub tracker: Arc<dyn IssueTracker>,
    pub backend: Arc<dyn AgentBackend>,
    pub repo: Arc<dyn Repository>,
    pub reviewer: Option<Arc<dyn Reviewer>>,
    pub locks: Option<Arc<dyn LockTable>>,
    pub events: Arc<dyn EventSink>,
    pub clock: Arc<dyn Clock>,
    pub session_end: Option<Arc<dyn SessionEndCheck>>,
    /// Where environment faults are reported and pauses waited out.
    pub faults: FaultLine,
    /// Worktree isolation: each issue's own tree and branch, and the merge
    /// queue. `None`: every agent works in the shared checkout.
    pub workspaces: Option<Arc<dyn Workspaces>>,
}

impl std::fmt::Debug for RunnerPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerPorts")
            .field("reviewer", &self.reviewer.is_some())
            .finish_non_exhaustive()
    }
}

/// How an issue ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueResult {
    /// Closed: the gate (and the review) passed.
    Closed {
        commit: Option<String>,
        marker: Option<Marker>,
    },
    /// Not closed; the issue carries needs-followup and the reason.
    Failed { reason: String },
    /// Not taken: someone else holds it, or it is blocked.
    Skipped { reason: String },
    /// Given back untouched (open, unassigned, no label, no note): the
    /// environment failed, not the issue.
    Released { reason: String },
}

/// Collects what the agent does; forwards it as events.
struct SessionLog {
    agent: AgentId,
    events: Arc<dyn EventSink>,
    evidence: Mutex<Evidence>,
    tool_uses: Mutex<usize>,
    /// The running turn's tokens, into the run's ledger as they come.
    meter: Arc<crate::faults::TurnMeter>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data; a panic elsewhere leaves it usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AgentObserver for SessionLog {
    fn on_event(&self, event: &AgentEvent) {
        match event {
            AgentEvent::CommandRan { run } => lock(&self.evidence).commands.push(run.clone()),
            AgentEvent::FileEdited { edit } => lock(&self.evidence).edits.push(edit.clone()),
            AgentEvent::UnlockedWrite { edit } => lock(&self.evidence).unlocked.push(edit.clone()),
            AgentEvent::RepositoryDamaged { what, .. } => lock(&self.evidence)
                .repository_damage
                .extend(what.iter().cloned()),
            AgentEvent::ToolUse { .. } => *lock(&self.tool_uses) += 1,
            _ => {}
        }
        self.events.emit(&Event::Agent {
            agent: self.agent.clone(),
            event: event.clone(),
        });
    }
}

/// How a result cut short by a stop begins; the claim stays so the next run
/// takes the issue over.
const STOPPED: &str = "stopped before the end";

/// What the runner does next.
#[derive(Debug)]
enum Step {
    Turn(String),
    Gate,
    Review,
    /// Through the merge queue (worktree isolation), then closed.
    Land,
    Finish(IssueResult),
}

impl Step {
    /// What the dashboard calls the step (`Finish` is none: the issue's end
    /// is its own event).
    fn started(&self) -> Option<IssueStep> {
        match self {
            Self::Turn(_) => Some(IssueStep::Turn),
            Self::Gate => Some(IssueStep::Gate),
            Self::Review => Some(IssueStep::Review),
            Self::Land => Some(IssueStep::Merge),
            Self::Finish(_) => None,
        }
    }
}

fn bullet_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("   - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where an issue's work picks up from: an earlier run's session and
/// baseline and the last review's blocking findings (`--resume`), and how to
/// use them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// The earlier session, resumed unless `fresh`.
    pub session_id: Option<mala_core::SessionId>,
    /// The earlier baseline: commits made before the interruption still count.
    pub baseline: Option<DateTime<Utc>>,
    /// Blocking findings of the last review, given back to the agent.
    pub findings: Vec<Finding>,
    /// `--fresh`: a new session, with the findings in its first prompt.
    pub fresh: bool,
    /// `--strict`: fail the issue when there is no earlier session to resume.
    pub strict: bool,
    /// `--review-wip`: review the issue's existing commits before any turn;
    /// a pass closes it without one.
    pub review_first: bool,
}

/// Runs one issue to its end.
pub async fn run_issue(
    issue_id: &IssueId,
    agent: AgentId,
    ports: &RunnerPorts,
    config: &RunnerConfig,
) -> IssueResult {
    run_issue_from(issue_id, agent, ports, config, None, StopSignal::never()).await
}

/// Runs one issue to its end, picking up earlier work as `resume` says,
/// until it ends by itself or `stop` is raised. Once claimed, the issue ends
/// through [`IssueRun::finalize`] whatever happens: a stop, a panic in the
/// runner, or this future being dropped.
pub async fn run_issue_from(
    issue_id: &IssueId,
    agent: AgentId,
    ports: &RunnerPorts,
    config: &RunnerConfig,
    resume: Option<Resume>,
    mut stop: StopSignal,
) -> IssueResult {
    // A plan may race the run's budget: past it nothing more is claimed.
    if let Some(spent) = ports.faults.ledger.reached() {
        return skip(
            ports,
            issue_id,
            format!("the run's budget was reached ({spent}) before it was claimed"),
        );
    }
    let issue = match ports.tracker.show(issue_id).await {
        Ok(issue) => issue,
        Err(error) => {
            return failed_unclaimed(
                ports,
                issue_id,
                format!("could not read the issue: {error}"),
            );
        }
    };
    match ports.tracker.claim(issue_id, &config.actor).await {
        Ok(ClaimOutcome::Claimed) => {}
        Ok(ClaimOutcome::AlreadyClaimed { by }) => {
            return skip(
                ports,
                issue_id,
                format!(
                    "already claimed by {}",
                    by.as_deref().unwrap_or("someone else")
                ),
            );
        }
        Ok(ClaimOutcome::Blocked { by }) => {
            let by: Vec<&str> = by.iter().map(IssueId::as_str).collect();
            return skip(ports, issue_id, format!("blocked by {}", by.join(", ")));
        }
        Err(error) => {
            return failed_unclaimed(
                ports,
                issue_id,
                format!("could not claim the issue: {error}"),
            );
        }
    }
    ports.events.emit(&Event::IssueClaimed {
        issue: issue_id.clone(),
        agent: agent.clone(),
        title: issue.title.clone(),
    });
    let mut armed = Armed(Some(IssueRun::new(
        issue,
        agent,
        ports.clone(),
        config.clone(),
        resume,
    )));
    let result = match armed.0.as_mut() {
        Some(run) => run.drive_until(&mut stop).await,
        None => return skip(ports, issue_id, format!("{STOPPED}: no runner")),
    };
    match armed.0.take() {
        Some(mut run) => run.finalize(result).await,
        None => result,
    }
}

/// Holds a claimed issue's runner until it is finalized. Dropped before
/// that (the worker's task was cancelled), it kills the session at once and
/// finalizes the issue as stopped on a task of its own.
struct Armed(Option<IssueRun>);

impl Drop for Armed {
    fn drop(&mut self) {
        let Some(mut run) = self.0.take() else {
            return;
        };
        // Dropping a session kills its process group and its in-flight requests.
        drop(run.session.take());
        let reason = format!("{STOPPED}: its worker was cancelled");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                run.finalize(IssueResult::Skipped { reason }).await;
            });
        }
    }
}

/// An issue that failed before it was claimed: nothing to finalize, but
/// the failure is said like any other.
fn failed_unclaimed(ports: &RunnerPorts, issue: &IssueId, reason: String) -> IssueResult {
    ports.events.emit(&Event::IssueFailed {
        issue: issue.clone(),
        reason: reason.clone(),
    });
    IssueResult::Failed { reason }
}

fn skip(ports: &RunnerPorts, issue: &IssueId, reason: String) -> IssueResult {
    ports.events.emit(&Event::IssueSkipped {
        issue: issue.clone(),
        reason: reason.clone(),
    });
    IssueResult::Skipped { reason }
}

struct IssueRun {
    issue: Issue,
    agent: AgentId,
    ports: RunnerPorts,
    config: RunnerConfig,
    log: Arc<SessionLog>,
    session: Option<Box<dyn AgentSession>>,
    /// Commits older than this are not this session's work (seconds: git's precision).
    baseline: DateTime<Utc>,
    gate_attempt: u32,
    review_attempt: u32,
    resumes: u32,
    final_text: String,
    previous: Option<AttemptState>,
    verdict: Option<GateVerdict>,
    /// How the last `session_end` trigger went, for the reviewer.
    session_end: Option<String>,
    /// The current session's cost so far, as its backend last reported it.
    session_cost: f64,
    resume: Option<Resume>,
    /// The session is an earlier run's, resumed, and has not answered yet.
    resuming: bool,
    /// What this issue has spent in this run.
    spent: mala_domain::Spent,
    /// Its own worktree and branch, under worktree isolation.
    workspace: Option<Workspace>,
    /// Follow-ups sent after the branch could not land.
    merge_attempt: u32,
}

impl IssueRun {
    fn new(
        issue: Issue,
        agent: AgentId,
        ports: RunnerPorts,
        config: RunnerConfig,
        resume: Option<Resume>,
    ) -> Self {
        let now = ports.clock.now();
        let fresh_baseline = now.with_nanosecond(0).unwrap_or(now);
        let baseline = match &resume {
            Some(Resume {
                baseline: Some(earlier),
                ..
            }) => *earlier,
            // Work in progress from before any record: all its commits count.
            Some(Resume {
                review_first: true, ..
            }) => DateTime::<Utc>::UNIX_EPOCH,
            _ => fresh_baseline,
        };
        let log = Arc::new(SessionLog {
            agent: agent.clone(),
            events: Arc::clone(&ports.events),
            evidence: Mutex::new(Evidence::default()),
            tool_uses: Mutex::new(0),
            meter: Arc::new(crate::faults::TurnMeter::new(Arc::clone(
                &ports.faults.ledger,
            ))),
        });
        Self {
            issue,
            agent,
            ports,
            config,
            log,
            session: None,
            baseline,
            gate_attempt: 1,
            review_attempt: 1,
            resumes: 0,
            final_text: String::new(),
            previous: None,
            verdict: None,
            session_end: None,
            session_cost: 0.0,
            resume,
            resuming: false,
            spent: mala_domain::Spent::default(),
            workspace: None,
            merge_attempt: 0,
        }
    }

    /// git where the agent works: its worktree, or the shared checkout.
    fn repo(&self) -> &dyn Repository {
        self.workspace
            .as_ref()
            .map_or(self.ports.repo.as_ref(), |w| w.repo.as_ref())
    }

    /// Where the agent works.
    fn root(&self) -> &std::path::Path {
        self.workspace
            .as_ref()
            .map_or(self.config.repo_root.as_path(), |w| w.root.as_path())
    }

    /// Under worktree isolation, the issue's own tree (made, or found again
    /// after a crash). Not being able to make one is the environment's fault.
    async fn open_workspace(&mut self) -> Result<(), IssueResult> {
        let Some(workspaces) = self.ports.workspaces.clone() else {
            return Ok(());
        };
        match workspaces.open(&self.issue.id).await {
            Ok(workspace) => {
                self.ports.events.emit(&Event::WorktreeOpened {
                    issue: self.issue.id.clone(),
                    branch: workspace.branch.clone(),
                    path: workspace.root.clone(),
                });
                self.workspace = Some(workspace);
                Ok(())
            }
            Err(error) => Err(self.failed_for(
                &AgentError::new(AgentErrorKind::CouldNotStart, error.to_string()),
                "could not make the issue's worktree",
            )),
        }
    }

    fn commit_prefix(&self) -> String {
        self.issue.id.commit_prefix()
    }

    fn implementer_prompt(&self) -> Result<String, String> {
        let kind = if self.workspace.is_some() {
            PromptKind::ImplementerWorktree
        } else {
            PromptKind::Implementer
        };
        render_prompt(
            kind,
            &[
                ("issue_id", self.issue.id.to_string()),
                ("repo_path", self.root().display().to_string()),
                ("title", self.issue.title.clone()),
                ("description", self.issue.description.clone()),
                (
                    "acceptance_criteria",
                    if self.issue.acceptance_criteria.is_empty() {
                        "(none given: meet the description)".to_owned()
                    } else {
                        self.issue.acceptance_criteria.clone()
                    },
                ),
                ("validation_commands", self.validation_list()),
                ("commit_prefix", self.commit_prefix()),
            ],
        )
        .map_err(|e| e.to_string())
    }

    /// The required commands as the prompts list them.
    fn validation_list(&self) -> String {
        let commands: Vec<String> = self
            .config
            .required
            .iter()
            .map(|r| {
                format!(
                    "`{}`{}",
                    r.command,
                    if r.allow_fail { " (may fail)" } else { "" }
                )
            })
            .collect();
        if commands.is_empty() {
            "   (none configured)".to_owned()
        } else {
            bullet_list(&commands)
        }
    }

    async fn start_session(
        &mut self,
        resume: Option<mala_core::SessionId>,
    ) -> Result<(), IssueResult> {
        let mut request = SessionRequest::new(self.agent.clone(), self.root().to_path_buf());
        request.issue_id = Some(self.issue.id.clone());
        request.resume = resume;
        // No session starts past a budget (and the backend takes no limit of 0).
        if let Some(over) = self.over_budget() {
            return Err(over);
        }
        let ledger = &self.ports.faults.ledger;
        let (run_limit, run_spent) = (ledger.limit(), ledger.spent());
        request.max_cost_usd = mala_domain::dollars_left(&[
            (&self.config.issue_budget, &self.spent),
            (&run_limit, &run_spent),
        ]);
        let observer = self.log.meter.new_session(self.log.clone());
        match self.ports.backend.start(request, observer).await {
            Ok(session) => {
                self.session = Some(session);
                self.session_cost = 0.0;
                Ok(())
            }
            Err(error) => Err(self.failed_for(&error, "could not start the agent")),
        }
    }

    /// An agent error nothing more will be tried for: the issue's failure,
    /// or, when the environment is to blame, the issue given back and the
    /// run told.
    fn failed_for(&self, error: &AgentError, what: &str) -> IssueResult {
        match blame(&error.kind) {
            Blame::Issue => IssueResult::Failed {
                reason: format!("{what}: {error}"),
            },
            Blame::Environment(fault) => {
                self.fault_seen(&fault, &error.message);
                self.ports
                    .faults
                    .report(&self.issue.id, fault.clone(), &error.message);
                IssueResult::Released {
                    reason: format!("{}: {what}: {error}", fault.summary()),
                }
            }
        }
    }

    fn fault_seen(&self, fault: &mala_core::EnvFault, message: &str) {
        self.ports.events.emit(&Event::EnvironmentFault {
            issue: self.issue.id.clone(),
            fault: fault.clone(),
            message: message.to_owned(),
        });
    }

    /// Drives the issue until it ends by itself, panics, or `stop` is
    /// raised. A stopped or panicked session is killed here, before
    /// finalize: such an agent must not act on.
    async fn drive_until(&mut self, stop: &mut StopSignal) -> IssueResult {
        let ended = tokio::select! {
            caught = CatchUnwind::new(self.drive()) => caught.map_err(|payload| panic_message(payload.as_ref())),
            reason = stop.stopped() => {
                drop(self.session.take());
                return IssueResult::Skipped { reason: reason.reason().to_owned() };
            }
        };
        ended.unwrap_or_else(|panic| {
            drop(self.session.take());
            IssueResult::Failed {
                reason: format!(
                    "mala's runner panicked while working on this issue (a bug in mala, not in the work): {panic}"
                ),
            }
        })
    }

    async fn drive(&mut self) -> IssueResult {
        self.ports.events.emit(&Event::IssueStarted {
            issue: self.issue.id.clone(),
            baseline: self.baseline,
        });
        if let Err(result) = self.open_workspace().await {
            return result;
        }
        let mut step = self.opening().await.unwrap_or_else(Step::Finish);
        loop {
            if let Some(started) = step.started() {
                self.ports.events.emit(&Event::StepStarted {
                    issue: self.issue.id.clone(),
                    step: started,
                });
            }
            step = match step {
                Step::Turn(prompt) => self.turn(prompt).await,
                Step::Gate => self.gate().await,
                Step::Review => self.review().await,
                Step::Land => self.land().await,
                Step::Finish(result) => return result,
            };
        }
    }

    /// The first step: a review of existing work (`--review-wip`), a
    /// resumed session told to carry on, or a new session with the
    /// implementer prompt (and any earlier findings).
    async fn opening(&mut self) -> Result<Step, IssueResult> {
        let resume = self.resume.clone().unwrap_or_default();
        let failed = |reason| IssueResult::Failed { reason };
        if resume.strict && resume.session_id.is_none() {
            return Err(failed(format!(
                "no earlier session of {} to resume (--strict)",
                self.issue.id
            )));
        }
        if resume.review_first
            && self.ports.reviewer.is_some()
            && self.has_commits().await.map_err(failed)?
        {
            return Ok(Step::Review);
        }
        self.open_session().await?;
        self.first_prompt().map_err(failed)
    }

    async fn has_commits(&self) -> Result<bool, String> {
        let commits = self
            .repo()
            .issue_commits()
            .await
            .map_err(|e| format!("could not read git: {e}"))?;
        Ok(commits
            .iter()
            .any(|c| is_issue_commit(&c.subject, &self.issue.id) && c.time >= self.baseline))
    }

    /// Starts the issue's session: the earlier one when there is one to
    /// resume, else a new one.
    async fn open_session(&mut self) -> Result<(), IssueResult> {
        let earlier = self
            .resume
            .as_ref()
            .filter(|r| !r.fresh)
            .and_then(|r| r.session_id.clone());
        if let Some(id) = earlier {
            match self.start_session(Some(id)).await {
                Ok(()) => {
                    self.resuming = true;
                    return Ok(());
                }
                Err(IssueResult::Failed { reason })
                    if self.resume.as_ref().is_some_and(|r| r.strict) =>
                {
                    return Err(IssueResult::Failed {
                        reason: format!("could not resume the earlier session: {reason}"),
                    });
                }
                Err(released @ IssueResult::Released { .. }) => return Err(released),
                Err(_) => {}
            }
        }
        self.start_session(None).await
    }

    /// What the agent hears first: carry on (a resumed session), the review's
    /// findings (a review sent it back), or the whole task.
    fn first_prompt(&self) -> Result<Step, String> {
        let findings = self
            .resume
            .as_ref()
            .map(|r| r.findings.as_slice())
            .unwrap_or_default();
        let prompt = if self.resuming {
            let carry_on = render_prompt(
                PromptKind::RunResume,
                &[
                    ("issue_id", self.issue.id.to_string()),
                    ("commit_prefix", self.commit_prefix()),
                ],
            )
            .map_err(|e| e.to_string())?;
            if findings.is_empty() {
                carry_on
            } else {
                format!("{carry_on}\n\n{}", self.review_followup(findings)?)
            }
        } else if findings.is_empty() {
            self.implementer_prompt()?
        } else {
            format!(
                "{}\n\n{}",
                self.implementer_prompt()?,
                self.review_followup(findings)?
            )
        };
        Ok(Step::Turn(prompt))
    }

    async fn turn(&mut self, prompt: String) -> Step {
        if let Some(over) = self.over_budget() {
            return Step::Finish(over);
        }
        if !self.ports.faults.turn_may_start().await {
            return Step::Finish(IssueResult::Released {
                reason:
                    "the run stopped for a fault of the environment before this issue's next turn"
                        .into(),
            });
        }
        if self.session.is_none() {
            // A review of existing work came first and sent it back.
            if let Err(result) = self.open_session().await {
                return Step::Finish(result);
            }
        }
        let Some(session) = self.session.as_mut() else {
            return Step::Finish(IssueResult::Failed {
                reason: "no agent session".into(),
            });
        };
        // The run's budget, and the issue's in tokens, cut a turn where it
        // is; what is done already (a gate, a close) costs nothing more and
        // goes on. (Claude cuts a turn at the issue's dollars itself.)
        let mut crossing = self.ports.faults.ledger.crossing();
        let issue_tokens = self.config.issue_budget.max_tokens;
        let before = self.spent.tokens;
        self.log.meter.begin();
        let mut so_far = self.log.meter.watch();
        let turned = tokio::select! {
            turned = session.turn(&prompt) => Some(turned),
            _ = crossing.wait_for(|crossed| *crossed) => None,
            _ = so_far.wait_for(|tokens| issue_tokens.is_some_and(|max| before + tokens >= max)) => None,
        };
        let error = match turned {
            Some(Ok(outcome)) => return self.turn_ended(outcome),
            Some(Err(error)) => {
                self.spent.add(0.0, self.log.meter.cut());
                error
            }
            None => {
                // Dropped, not closed: the agent must not act on.
                drop(self.session.take());
                self.spent.add(0.0, self.log.meter.cut());
                return Step::Finish(self.over_budget().unwrap_or(IssueResult::Released {
                    reason: "the run's budget was reached during this issue's turn".into(),
                }));
            }
        };
        if error.kind == AgentErrorKind::Cancelled {
            return Step::Finish(IssueResult::Skipped {
                reason: format!("{STOPPED}: {error}"),
            });
        }
        let blamed = blame(&error.kind);
        if self.resuming && *lock(&self.log.tool_uses) == 0 && blamed == Blame::Issue {
            // The earlier session itself would not carry on; the API's
            // faults are not the session's.
            self.close_session().await;
            return self.replace_unresumable(&error).await;
        }
        if error.is_retryable() && self.resumes < self.config.max_resumes {
            self.resumes += 1;
            self.ports.events.emit(&Event::Retrying {
                issue: self.issue.id.clone(),
                why: format!(
                    "{error}; resuming ({}/{})",
                    self.resumes, self.config.max_resumes
                ),
            });
            let backoff = self.config.resume_backoff * self.resumes;
            self.ports.clock.sleep(backoff).await;
            return self.pick_up(&error, prompt).await;
        }
        match blamed {
            Blame::Environment(
                fault @ (mala_core::EnvFault::UsageLimit { .. } | mala_core::EnvFault::Unavailable),
            ) => {
                self.fault_seen(&fault, &error.message);
                let answer = self
                    .ports
                    .faults
                    .wait_out(&self.issue.id, fault.clone(), &error.message)
                    .await;
                match answer {
                    GoOn::Resume => self.pick_up(&error, prompt).await,
                    GoOn::GiveBack => Step::Finish(IssueResult::Released {
                        reason: format!("{}: {error}", fault.summary()),
                    }),
                }
            }
            _ => Step::Finish(self.failed_for(&error, "the agent failed")),
        }
    }

    async fn close_session(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.close().await;
        }
    }

    /// Carries on after a failed turn: the same session resumed when it has
    /// an id, a new one with the same prompt when nothing ran yet.
    async fn pick_up(&mut self, error: &AgentError, prompt: String) -> Step {
        let session_id = self.session.as_ref().and_then(|s| s.session_id());
        self.close_session().await;
        let worked = *lock(&self.log.tool_uses) > 0;
        match (session_id, worked) {
            (Some(id), _) => {
                if let Err(result) = self.start_session(Some(id)).await {
                    return Step::Finish(result);
                }
                match render_prompt(
                    PromptKind::IdleResume,
                    &[("issue_id", self.issue.id.to_string())],
                ) {
                    Ok(resume) => Step::Turn(resume),
                    Err(e) => Step::Finish(IssueResult::Failed {
                        reason: e.to_string(),
                    }),
                }
            }
            // Nothing happened yet: starting over repeats no side effect.
            (None, false) => match self.start_session(None).await {
                Ok(()) => Step::Turn(prompt),
                Err(result) => Step::Finish(result),
            },
            (None, true) => Step::Finish(IssueResult::Failed {
                reason: format!(
                    "the agent's session was lost ({error}) after it had started working, and it cannot be resumed; \
                     mala does not replay a prompt after its tools have run"
                ),
            }),
        }
    }

    /// A turn ended: what it spent goes out, what it said is kept.
    fn turn_ended(&mut self, outcome: mala_core::TurnOutcome) -> Step {
        // The backend reports the session's running total.
        let cost_usd = (outcome.total_cost_usd - self.session_cost).max(0.0);
        self.session_cost = outcome.total_cost_usd;
        self.ports.events.emit(&Event::TurnFinished {
            issue: self.issue.id.clone(),
            session_id: outcome.session_id.clone(),
            usage: outcome.usage,
            cost_usd,
        });
        // Said first, then counted: a budget this turn crosses is said after it.
        let tokens = outcome.usage.total();
        let tokens = self.log.meter.settle(cost_usd, tokens);
        self.spent.add(cost_usd, tokens);
        self.final_text = outcome.final_text;
        self.resuming = false;
        Step::Gate
    }

    /// The earlier session could not be picked up, and nothing ran in it: a
    /// new one gets the whole task (with `--strict`, the issue fails).
    async fn replace_unresumable(&mut self, error: &mala_core::AgentError) -> Step {
        self.resuming = false;
        if self.resume.as_ref().is_some_and(|r| r.strict) {
            return Step::Finish(IssueResult::Failed {
                reason: format!("could not resume the earlier session: {error}"),
            });
        }
        self.ports.events.emit(&Event::Retrying {
            issue: self.issue.id.clone(),
            why: format!("the earlier session could not be resumed ({error}); starting a new one"),
        });
        if let Err(result) = self.start_session(None).await {
            return Step::Finish(result);
        }
        self.first_prompt()
            .unwrap_or_else(|reason| Step::Finish(IssueResult::Failed { reason }))
    }

    /// The files this agent was seen changing without their locks that are
    /// still changed and still not its own. When git cannot say, they count:
    /// the gate fails closed.
    async fn still_unlocked(&self, evidence: &mala_core::Evidence) -> Vec<String> {
        let mut paths: Vec<PathBuf> = evidence
            .unlocked
            .iter()
            .map(|e| PathBuf::from(&e.path))
            .collect();
        paths.sort();
        paths.dedup();
        if paths.is_empty() {
            return Vec::new();
        }
        let held = self
            .ports
            .locks
            .as_ref()
            .map(|locks| locks.held_by(&self.agent))
            .unwrap_or_default();
        paths.retain(|p| !held.contains(p));
        let changed = self
            .repo()
            .differs_from_head(&paths)
            .await
            .unwrap_or_else(|_| paths.clone());
        changed
            .iter()
            .map(|p| {
                p.strip_prefix(self.root())
                    .unwrap_or(p)
                    .display()
                    .to_string()
            })
            .collect()
    }

    /// Files of this session's commits that another agent holds now: its
    /// work, committed under this issue (staged behind the guard's back by a
    /// program, say: staging changes no file the tree watch could see).
    fn others_work_in(&self, commits: &[&mala_core::CommitInfo]) -> Option<String> {
        let locks = self.ports.locks.as_ref()?;
        let mut theirs: Vec<String> = Vec::new();
        for file in commits.iter().flat_map(|c| &c.files) {
            if let Some(holder) = locks.holder(&self.root().join(file))
                && holder != self.agent
            {
                let named = format!("{file} (held by {holder})");
                if !theirs.contains(&named) {
                    theirs.push(named);
                }
            }
        }
        (!theirs.is_empty()).then(|| {
            format!(
                "the issue's commits include files another agent holds and is working on: {}; \
                 its work was committed under this issue, so mala does not close it",
                theirs.join(", ")
            )
        })
    }

    /// This attempt's verdict, from the commits, the recorded evidence, the
    /// unlocked writes still standing and (with `gate.rerun`) mala's own run
    /// of the checks. `Err` ends the issue: git could not be read, the
    /// repository was damaged, or the rerun could not be set up.
    async fn judge(&self) -> Result<(GateVerdict, mala_core::Evidence), IssueResult> {
        let commits = self
            .repo()
            .issue_commits()
            .await
            .map_err(|error| IssueResult::Failed {
                reason: format!("could not read git: {error}"),
            })?;
        let evidence = lock(&self.log.evidence).clone();
        if !evidence.repository_damage.is_empty() {
            // Not something another turn can fix: a person must look.
            return Err(IssueResult::Failed {
                reason: format!(
                    "the agent's commands damaged the repository behind git's back: {}",
                    evidence.repository_damage.join("; ")
                ),
            });
        }
        let unlocked = self.still_unlocked(&evidence).await;
        let mut verdict = check_gate(&GateInput {
            issue: &self.issue.id,
            repo_root: self.root(),
            baseline: self.baseline,
            commits: &commits,
            evidence: &evidence,
            final_text: &self.final_text,
            required: &self.config.required,
            code_patterns: &self.config.code_patterns,
            config_files: &self.config.config_files,
            setup_files: &self.config.setup_files,
            unlocked: &unlocked,
        });
        if verdict.passed
            && verdict.marker.is_none()
            && let Some(commit) = verdict.commit.clone()
            && let Some(reason) = self
                .rerun(&commit)
                .await
                .map_err(|reason| IssueResult::Failed { reason })?
        {
            verdict.passed = false;
            verdict.reasons.push(reason);
        }
        if verdict.passed && verdict.marker.is_none() {
            let mine = crate::protected::session_commits(&commits, &self.issue.id, self.baseline);
            if let Some(reason) = self.others_work_in(&mine) {
                // No later turn can take it out of the commit: a person must look.
                return Err(IssueResult::Failed { reason });
            }
            let weakened =
                crate::protected::check_protected(&self.ports, &self.config, &self.issue.id, &mine)
                    .await
                    .map_err(|reason| IssueResult::Failed { reason })?;
            if let Some(reason) = weakened {
                verdict.passed = false;
                verdict.reasons.push(reason);
            }
        }
        Ok((verdict, evidence))
    }

    async fn gate(&mut self) -> Step {
        let (verdict, evidence) = match self.judge().await {
            Ok(judged) => judged,
            Err(result) => return Step::Finish(result),
        };
        self.ports.events.emit(&Event::GateChecked {
            issue: self.issue.id.clone(),
            attempt: self.gate_attempt,
            passed: verdict.passed,
            reasons: verdict.reasons.clone(),
        });
        self.verdict = Some(verdict.clone());
        if verdict.passed {
            let no_work = matches!(
                verdict.marker,
                Some(
                    Marker::NoChange(_)
                        | Marker::Obsolete(_)
                        | Marker::AlreadyComplete(_)
                        | Marker::DocsOnly(_)
                )
            );
            if !no_work && let Some(session_end) = &self.ports.session_end {
                self.session_end = Some(session_end.run(&self.issue.id).await);
            }
            return if self.ports.reviewer.is_some() && !no_work {
                Step::Review
            } else if self.workspace.is_some() {
                Step::Land
            } else {
                Step::Finish(IssueResult::Closed {
                    commit: verdict.commit,
                    marker: verdict.marker,
                })
            };
        }
        let reasons = verdict.reasons.join("; ");
        if self.gate_attempt >= self.config.max_gate_attempts {
            return Step::Finish(IssueResult::Failed {
                reason: format!(
                    "Quality gate failed after {} attempt(s): {reasons}{}",
                    self.gate_attempt,
                    self.red_before(&verdict)
                ),
            });
        }
        let now = AttemptState {
            head: self.repo().head().await.ok().flatten(),
            clean_tree: self.repo().is_clean().await.unwrap_or(false),
            evidence_runs: evidence.commands.len(),
        };
        if self
            .previous
            .as_ref()
            .is_some_and(|before| no_progress(before, &now))
        {
            return Step::Finish(IssueResult::Failed {
                reason: format!(
                    "Quality gate failed and the last follow-up changed nothing: {reasons}{}",
                    self.red_before(&verdict)
                ),
            });
        }
        self.previous = Some(now);
        self.gate_attempt += 1;
        self.ports.events.emit(&Event::Retrying {
            issue: self.issue.id.clone(),
            why: format!("quality gate: {reasons}"),
        });
        self.gate_followup(&verdict)
    }

    /// `gate.rerun`: the required commands, run by mala on the commit in a
    /// clean checkout. `Ok(Some(reason))` fails the gate; `Err` fails the
    /// issue, since mala could not check it.
    async fn rerun(&self, commit: &str) -> Result<Option<String>, String> {
        if !self.config.rerun {
            return Ok(None);
        }
        let commands = crate::protected::required_checks(&self.config);
        if commands.is_empty() {
            return Ok(None);
        }
        let failure = self
            .repo()
            .check_commit(commit, &commands)
            .await
            .map_err(|e| format!("mala could not re-run the checks on {commit}: {e}"))?;
        Ok(failure.map(|f| {
            let last = crate::protected::last_line(&f.output);
            format!(
                "`{}` ({}) failed when mala ran it on commit {} in a clean checkout: {last}. \
                 Commit everything the check needs, then run it again",
                f.name,
                f.command,
                &commit[..commit.len().min(12)]
            )
        }))
    }

    /// What a failure reason adds when a check the gate missed already
    /// failed before any agent worked.
    fn red_before(&self, verdict: &GateVerdict) -> String {
        let red: Vec<&String> = verdict
            .missing
            .iter()
            .filter(|name| self.config.red_baseline.contains(name))
            .collect();
        if red.is_empty() {
            return String::new();
        }
        let names: Vec<String> = red.iter().map(|n| format!("`{n}`")).collect();
        format!(
            " ({} already failed before any agent worked, on the run's baseline: the cause may not be this issue)",
            names.join(", ")
        )
    }

    /// No more turns once a budget is reached: the issue's fails it, the
    /// run's leaves it open for the next run.
    fn over_budget(&self) -> Option<IssueResult> {
        let issue = mala_domain::budget_reached(&self.config.issue_budget, &self.spent);
        if let Some(spent) = issue {
            self.ports.events.emit(&Event::BudgetReached {
                scope: "issue".to_owned(),
                issue: Some(self.issue.id.clone()),
                spent: spent.clone(),
            });
            return Some(IssueResult::Failed {
                reason: format!(
                    "this issue's budget was reached ({spent}); mala gives it no more turns"
                ),
            });
        }
        // The run's budget is said once, by the run.
        let spent = self.ports.faults.ledger.reached()?;
        Some(IssueResult::Released {
            reason: format!(
                "the run's budget was reached ({spent}); the issue is left open for the next run"
            ),
        })
    }

    fn gate_followup(&self, verdict: &GateVerdict) -> Step {
        let commands: Vec<String> = self
            .config
            .required
            .iter()
            .filter(|r| verdict.missing.contains(&r.name))
            .map(|r| format!("`{}`", r.command))
            .collect();
        match render_prompt(
            PromptKind::GateFollowup,
            &[
                ("issue_id", self.issue.id.to_string()),
                ("attempt", self.gate_attempt.to_string()),
                ("max_attempts", self.config.max_gate_attempts.to_string()),
                (
                    "failure_reasons",
                    verdict
                        .reasons
                        .iter()
                        .map(|r| format!("- {r}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                (
                    "commands_to_run",
                    if commands.is_empty() {
                        "   (all of them, as listed before)".to_owned()
                    } else {
                        bullet_list(&commands)
                    },
                ),
                (
                    "commit_how",
                    if self.workspace.is_some() {
                        "on your branch (`git add <files> && git commit`)".to_owned()
                    } else {
                        "with the `commit` tool".to_owned()
                    },
                ),
                ("commit_prefix", self.commit_prefix()),
            ],
        ) {
            Ok(prompt) => Step::Turn(prompt),
            Err(e) => Step::Finish(IssueResult::Failed {
                reason: e.to_string(),
            }),
        }
    }

    /// What the reviewer is asked: this session's commits for the issue,
    /// oldest first, and what the author and session_end said.
    async fn review_request(&self) -> Result<ReviewRequest, String> {
        let all = self
            .repo()
            .issue_commits()
            .await
            .map_err(|error| format!("could not read git: {error}"))?;
        let mut ours: Vec<_> = all
            .into_iter()
            .filter(|c| is_issue_commit(&c.subject, &self.issue.id) && c.time >= self.baseline)
            .collect();
        // Oldest first: git lists newest first, and that order also holds
        // for commits made in the same second.
        ours.reverse();
        let context = match &self.session_end {
            Some(session_end) => format!(
                "The author's final message:\n{}\n\nThe session_end validation mala ran: {session_end}",
                self.final_text
            ),
            None => format!("The author's final message:\n{}", self.final_text),
        };
        Ok(ReviewRequest {
            subject: ReviewSubject::Issue(self.issue.id.clone()),
            description: format!(
                "{}\n\n{}\n\nAcceptance criteria:\n{}",
                self.issue.title, self.issue.description, self.issue.acceptance_criteria
            ),
            commits: ours.into_iter().map(|c| c.id).collect(),
            context,
            session_id: self.session.as_ref().and_then(|s| s.session_id()),
        })
    }

    async fn review(&mut self) -> Step {
        let Some(reviewer) = self.ports.reviewer.clone() else {
            return Step::Finish(self.closed());
        };
        // A review spends too: past the run's budget its commit waits for
        // the next run.
        if let Some(spent) = self.ports.faults.ledger.reached() {
            return Step::Finish(IssueResult::Released {
                reason: format!(
                    "the run's budget was reached ({spent}) before this issue's review; it is left open for the next run"
                ),
            });
        }
        let request = match self.review_request().await {
            Ok(request) => request,
            Err(reason) => return Step::Finish(IssueResult::Failed { reason }),
        };
        let verdict = match ask_reviewer(reviewer.as_ref(), &request).await {
            Ok(verdict) => verdict,
            Err(ReviewError::Cancelled) => {
                return Step::Finish(IssueResult::Skipped {
                    reason: format!("{STOPPED}: during review"),
                });
            }
            Err(ReviewError::Environment { fault, message }) => {
                return self.review_met(fault, &message).await;
            }
            // The reviewer's session was cut, or not started, at the run's
            // budget: not the issue's fault either.
            Err(_) if let Some(spent) = self.ports.faults.ledger.reached() => {
                return Step::Finish(IssueResult::Released {
                    reason: format!(
                        "the run's budget was reached ({spent}) during this issue's review; it is left open for the next run"
                    ),
                });
            }
            Err(error) => {
                return Step::Finish(IssueResult::Failed {
                    reason: format!("the review could not be completed: {error}"),
                });
            }
        };
        let (blocking, advisory): (Vec<Finding>, Vec<Finding>) = verdict
            .findings
            .into_iter()
            .partition(|f| f.is_blocking(self.config.blocking_priority));
        self.ports.events.emit(&Event::Reviewed {
            issue: self.issue.id.clone(),
            attempt: self.review_attempt,
            blocking: blocking.len(),
            advisory: advisory.len(),
            findings: blocking.clone(),
        });
        if !advisory.is_empty()
            && self.config.track_review_issues
            && let Err(error) =
                track_advisory_findings(self.ports.tracker.as_ref(), &self.issue, &advisory).await
        {
            self.ports.events.emit(&Event::Warning {
                message: format!(
                    "could not record review findings for {}: {error}",
                    self.issue.id
                ),
            });
        }
        if blocking.is_empty() {
            return if self.workspace.is_some() {
                Step::Land
            } else {
                Step::Finish(self.closed())
            };
        }
        let listed = findings_list(&blocking);
        if self.review_attempt >= self.config.max_review_attempts {
            return Step::Finish(IssueResult::Failed {
                reason: format!(
                    "the review found blocking problems after {} round(s):\n{listed}",
                    self.review_attempt
                ),
            });
        }
        self.review_attempt += 1;
        self.ports.events.emit(&Event::Retrying {
            issue: self.issue.id.clone(),
            why: format!("review: {} blocking finding(s)", blocking.len()),
        });
        match self.review_followup(&blocking) {
            Ok(prompt) => Step::Turn(prompt),
            Err(reason) => Step::Finish(IssueResult::Failed { reason }),
        }
    }

    /// The reviewer's agent met a fault of the environment: a limit is
    /// waited out and the review asked again; anything else gives the issue
    /// back, as for the implementer.
    async fn review_met(&mut self, fault: mala_core::EnvFault, message: &str) -> Step {
        self.fault_seen(&fault, message);
        let limit = matches!(
            fault,
            mala_core::EnvFault::UsageLimit { .. } | mala_core::EnvFault::Unavailable
        );
        if limit
            && self
                .ports
                .faults
                .wait_out(&self.issue.id, fault.clone(), message)
                .await
                == GoOn::Resume
        {
            return Step::Review;
        }
        if !limit {
            self.ports
                .faults
                .report(&self.issue.id, fault.clone(), message);
        }
        Step::Finish(IssueResult::Released {
            reason: format!("{} during the review: {message}", fault.summary()),
        })
    }

    /// The prompt that sends blocking findings back to the agent.
    fn review_followup(&self, findings: &[Finding]) -> Result<String, String> {
        render_prompt(
            PromptKind::ReviewFollowup,
            &[
                ("issue_id", self.issue.id.to_string()),
                ("attempt", self.review_attempt.to_string()),
                ("max_attempts", self.config.max_review_attempts.to_string()),
                ("findings", findings_list(findings)),
                (
                    "locking",
                    if self.workspace.is_some() {
                        String::new()
                    } else {
                        "Lock the files first. ".to_owned()
                    },
                ),
                ("commit_prefix", self.commit_prefix()),
            ],
        )
        .map_err(|e| e.to_string())
    }

    /// Worktree isolation: the branch through the merge queue. Landed, the
    /// issue closes on the landed commit; a conflict, or validation failing
    /// on the merged result, goes back to the agent while
    /// `merge_queue.max_retries` allows, then fails with the branch kept.
    async fn land(&mut self) -> Step {
        let (Some(workspaces), Some(workspace)) =
            (self.ports.workspaces.clone(), self.workspace.clone())
        else {
            return Step::Finish(self.closed());
        };
        let commands = if self.config.merge_validate {
            crate::protected::required_checks(&self.config)
        } else {
            Vec::new()
        };
        self.ports.events.emit(&Event::MergeQueued {
            issue: self.issue.id.clone(),
            branch: workspace.branch.clone(),
        });
        let (onto, problem) = match workspaces.land(&self.issue.id, &commands).await {
            Ok(Landing::Landed { commit, note }) => {
                self.ports.events.emit(&Event::Landed {
                    issue: self.issue.id.clone(),
                    target: workspace.target.clone(),
                    commit: commit.clone(),
                    note,
                });
                let mut closed = self.closed();
                if let IssueResult::Closed {
                    commit: landed @ Some(_),
                    ..
                } = &mut closed
                {
                    *landed = Some(commit);
                }
                return Step::Finish(closed);
            }
            Ok(Landing::Conflict {
                base,
                onto,
                files,
                detail,
            }) => {
                let problem = format!(
                    "your branch conflicts with `{base}` at {} in {}: {}",
                    short(&onto),
                    if files.is_empty() {
                        "files git did not name".to_owned()
                    } else {
                        files.join(", ")
                    },
                    crate::protected::last_line(&detail)
                );
                (Some(onto), problem)
            }
            Ok(Landing::Failed {
                base,
                onto,
                failure,
            }) => {
                let problem = format!(
                    "with your branch put on `{base}` at {}, `{}` ({}) failed: {}. Each side may pass alone; together they do not",
                    short(&onto),
                    failure.name,
                    failure.command,
                    crate::protected::last_line(&failure.output)
                );
                (Some(onto), problem)
            }
            Ok(Landing::Unready { what }) => (None, what),
            Err(error) => {
                return Step::Finish(IssueResult::Released {
                    reason: format!(
                        "mala could not put {} through the merge queue: {error}; the branch is kept for the next run",
                        workspace.branch
                    ),
                });
            }
        };
        if self.merge_attempt >= self.config.merge_retries {
            return Step::Finish(IssueResult::Failed {
                reason: format!(
                    "could not land on `{}` after {} follow-up(s): {problem}. The branch {} is kept for a person",
                    workspace.target, self.merge_attempt, workspace.branch
                ),
            });
        }
        self.merge_attempt += 1;
        self.ports.events.emit(&Event::Retrying {
            issue: self.issue.id.clone(),
            why: format!("merge queue: {problem}"),
        });
        self.merge_followup(&workspace.target, onto.as_deref(), &problem)
    }

    /// What the agent is told when its branch did not land: with `onto`,
    /// to rebase onto that head and resolve; without, to put its tree right.
    fn merge_followup(&self, target: &str, onto: Option<&str>, problem: &str) -> Step {
        let steps = match onto {
            Some(onto) => format!(
                "- bring your branch onto that head with `git rebase {onto}`, resolve every conflict git names by keeping what both sides meant, `git add` the resolved files and `GIT_EDITOR=true git rebase --continue`;"
            ),
            None => "- put your worktree right as said above;".to_owned(),
        };
        match render_prompt(
            PromptKind::MergeFollowup,
            &[
                ("issue_id", self.issue.id.to_string()),
                ("attempt", self.merge_attempt.to_string()),
                ("max_attempts", self.config.merge_retries.to_string()),
                ("target", target.to_owned()),
                ("problem", problem.to_owned()),
                ("steps", steps),
                ("validation_commands", self.validation_list()),
                ("commit_prefix", self.commit_prefix()),
            ],
        ) {
            Ok(prompt) => Step::Turn(prompt),
            Err(e) => Step::Finish(IssueResult::Failed {
                reason: e.to_string(),
            }),
        }
    }

    fn closed(&self) -> IssueResult {
        let verdict = self.verdict.clone();
        IssueResult::Closed {
            commit: verdict.as_ref().and_then(|v| v.commit.clone()),
            marker: verdict.and_then(|v| v.marker),
        }
    }

    /// Ends the session, cleans up after the agent and records the outcome.
    async fn finalize(&mut self, result: IssueResult) -> IssueResult {
        self.close_session().await;
        // Whatever this agent staged and left behind must not block the next one.
        let mut touched: Vec<PathBuf> = lock(&self.log.evidence)
            .edits
            .iter()
            .map(|e| PathBuf::from(&e.path))
            .collect();
        if let Some(locks) = &self.ports.locks {
            touched.extend(locks.held_by(&self.agent));
            let _ = locks.release_all(&self.agent).await;
        }
        let _ = self.repo().unstage(&touched).await;
        let id = self.issue.id.clone();
        match &result {
            IssueResult::Closed { commit, marker } => {
                let reason = match (marker, commit) {
                    (Some(marker), _) => format!("mala: {}", marker_text(marker)),
                    (None, Some(commit)) => format!("mala: {commit} passed the quality gate"),
                    (None, None) => "mala: passed the quality gate".to_owned(),
                };
                match self.ports.tracker.close(&id, &reason).await {
                    Ok(()) => {
                        self.remove_workspace().await;
                        if self.issue.has_label(NEEDS_FOLLOWUP) {
                            // Done now: an earlier failure's label would say otherwise.
                            let cleared = IssueUpdate {
                                remove_labels: vec![NEEDS_FOLLOWUP.to_owned()],
                                ..IssueUpdate::default()
                            };
                            let _ = self.ports.tracker.update(&id, cleared).await;
                        }
                        self.ports.events.emit(&Event::IssueClosed { issue: id });
                    }
                    Err(error) => {
                        let reason =
                            format!("the work passed, but closing the issue failed: {error}");
                        self.ports.events.emit(&Event::IssueFailed {
                            issue: id,
                            reason: reason.clone(),
                        });
                        return IssueResult::Failed { reason };
                    }
                }
            }
            IssueResult::Failed { reason } => {
                self.record_failure(reason).await;
                self.ports.events.emit(&Event::IssueFailed {
                    issue: id,
                    reason: reason.clone(),
                });
            }
            IssueResult::Skipped { reason } => {
                self.ports.events.emit(&Event::IssueSkipped {
                    issue: id,
                    reason: reason.clone(),
                });
            }
            IssueResult::Released { reason } => {
                // Open and unassigned, as before the claim: nothing is charged to it.
                if let Err(error) = self.ports.tracker.reopen(&id).await {
                    self.ports.events.emit(&Event::Warning {
                        message: format!("{id}: could not give the issue back: {error}"),
                    });
                }
                self.ports.events.emit(&Event::IssueReleased {
                    issue: id,
                    reason: reason.clone(),
                });
            }
        }
        result
    }

    /// A closed issue's worktree goes (its branch landed). Any other end
    /// keeps it, with its work, for the next run or a person.
    async fn remove_workspace(&self) {
        let Some(workspaces) = &self.ports.workspaces else {
            return;
        };
        if self.workspace.is_some()
            && let Err(error) = workspaces.remove(&self.issue.id).await
        {
            self.ports.events.emit(&Event::Warning {
                message: format!("{}: could not remove its worktree: {error}", self.issue.id),
            });
        }
    }

    /// needs-followup with the reason and the record; reopened for a later
    /// run while `retry_failed` allows, else blocked for a person.
    async fn record_failure(&self, reason: &str) {
        let tracker = self.ports.tracker.as_ref();
        let earlier = self.issue.notes.matches("mala: failed").count();
        let record = self.config.record_dir.join(format!(
            "{}.jsonl",
            self.agent.as_str().replace(['/', '\\'], "_")
        ));
        let attempt = u32::try_from(earlier + 1).unwrap_or(u32::MAX);
        let note = format!(
            "mala: failed (attempt {attempt}): {reason}\nSession record: {}",
            record.display()
        );
        let _ = tracker.mark_needs_followup(&self.issue.id, &note).await;
        if attempt <= self.config.retry_failed {
            let _ = tracker.reopen(&self.issue.id).await;
        } else {
            let update = IssueUpdate {
                status: Some(IssueStatus::Blocked),
                ..IssueUpdate::default()
            };
            let _ = tracker.update(&self.issue.id, update).await;
        }
    }
}

/// A commit id as people read it.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn marker_text(marker: &Marker) -> String {
    match marker {
        Marker::NoChange(why) => format!("no change needed: {why}"),
        Marker::Obsolete(why) => format!("obsolete: {why}"),
        Marker::AlreadyComplete(why) => format!("already complete: {why}"),
        Marker::DocsOnly(why) => format!("documentation only: {why}"),
    }
}
