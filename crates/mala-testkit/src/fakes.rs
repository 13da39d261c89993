//! In-memory stand-ins for the core ports, for embedding examples, scheduler
//! tests and benchmarks: a tracker, a scripted agent backend, and a
//! repository whose commits the scripted agents make.
//!
//! They follow the real adapters' rules where the orchestrator can tell the
//! difference (claims, blockers, epics, commit subjects), and nothing more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentEvent, AgentObserver, AgentSession,
    CheckCommand, CheckFailure, ClaimOutcome, CommitInfo, Dependency, DependencyKind, EpicStatus,
    Issue, IssueId, IssueStatus, IssueTracker, IssueType, IssueUpdate, NewIssue, RepoError,
    Repository, SessionId, SessionRequest, TrackerError, TurnOutcome,
};
use mala_domain::{Blocker, IssueGraph};

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Board {
    issues: Vec<Issue>,
    index: HashMap<IssueId, usize>,
    /// Rebuilt only when something that decides blocking changed: a status
    /// reaching or leaving a terminal state, a dependency, a new issue.
    blocking: Option<Arc<IssueGraph>>,
    next_id: u64,
}

impl Board {
    fn get(&self, id: &IssueId) -> Result<&Issue, TrackerError> {
        self.index
            .get(id)
            .map(|&i| &self.issues[i])
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))
    }

    fn get_mut(&mut self, id: &IssueId) -> Result<&mut Issue, TrackerError> {
        let i = *self
            .index
            .get(id)
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))?;
        let issue = &mut self.issues[i];
        issue.updated_at = Utc::now();
        Ok(issue)
    }

    fn graph(&self) -> Arc<IssueGraph> {
        Arc::new(IssueGraph::new(self.issues.clone()))
    }

    fn blocking_graph(&mut self) -> Arc<IssueGraph> {
        let issues = &self.issues;
        Arc::clone(
            self.blocking
                .get_or_insert_with(|| Arc::new(IssueGraph::new(issues.clone()))),
        )
    }

    fn blockers(&mut self, id: &IssueId) -> Vec<IssueId> {
        self.blocking_graph()
            .blockers(id)
            .iter()
            .filter(|b| matches!(b, Blocker::Issue(_) | Blocker::OpenChild(_)))
            .map(|b| b.id().clone())
            .collect()
    }

    fn set_status(&mut self, id: &IssueId, status: IssueStatus) -> Result<(), TrackerError> {
        let issue = self.get_mut(id)?;
        let terminal_changed = issue.status.is_terminal() != status.is_terminal();
        issue.closed_at = (status == IssueStatus::Closed).then(Utc::now);
        issue.status = status;
        if terminal_changed {
            self.blocking = None;
        }
        Ok(())
    }

    fn insert(&mut self, issue: Issue) {
        self.index.insert(issue.id.clone(), self.issues.len());
        self.issues.push(issue);
        self.blocking = None;
    }
}

/// A tracker held in memory, with br's rules for claims, blockers and epics.
#[derive(Clone, Default)]
pub struct MemoryTracker {
    board: Arc<Mutex<Board>>,
    held: Arc<Mutex<Option<HeldCloses>>>,
}

/// Closes held by a test ([`MemoryTracker::hold_closes`]): each close says
/// it has `reached` the tracker, then waits for a `release`.
#[derive(Debug, Clone, Default)]
pub struct HeldCloses {
    pub reached: Arc<tokio::sync::Notify>,
    pub release: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for MemoryTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTracker")
            .field("issues", &guard(&self.board).issues.len())
            .field("closes_held", &guard(&self.held).is_some())
            .finish()
    }
}

impl MemoryTracker {
    /// From now on every close waits for the test's word: an issue held
    /// in its finalize.
    pub fn hold_closes(&self) -> HeldCloses {
        let held = HeldCloses::default();
        *guard(&self.held) = Some(held.clone());
        held
    }

    /// A tracker holding `issues`.
    pub fn with_issues(issues: Vec<Issue>) -> Self {
        let tracker = Self::default();
        {
            let mut board = guard(&tracker.board);
            for issue in issues {
                board.insert(issue);
            }
        }
        tracker
    }

    /// `count` open tasks with no dependencies: `m-1` … `m-<count>`.
    pub fn with_tasks(count: usize) -> Self {
        let now = Utc::now();
        Self::with_issues(
            (1..=count)
                .map(|n| Issue::new(format!("m-{n}"), format!("Task {n}"), now))
                .collect(),
        )
    }

    /// The whole tracker, as the scheduler reads it.
    pub fn snapshot(&self) -> Arc<IssueGraph> {
        guard(&self.board).graph()
    }

    /// How many issues have this status.
    pub fn count(&self, status: &IssueStatus) -> usize {
        guard(&self.board)
            .issues
            .iter()
            .filter(|i| &i.status == status)
            .count()
    }
}

#[async_trait]
impl IssueTracker for MemoryTracker {
    async fn all_issues(&self) -> Result<Vec<Issue>, TrackerError> {
        Ok(guard(&self.board).issues.clone())
    }

    async fn ready(&self) -> Result<Vec<Issue>, TrackerError> {
        let graph = self.snapshot();
        Ok(graph.ready(Utc::now()).into_iter().cloned().collect())
    }

    async fn show(&self, id: &IssueId) -> Result<Issue, TrackerError> {
        guard(&self.board).get(id).cloned()
    }

    async fn claim(&self, id: &IssueId, actor: &str) -> Result<ClaimOutcome, TrackerError> {
        let mut board = guard(&self.board);
        let issue = board.get(id)?;
        match issue.assignee.as_deref() {
            Some(holder) if holder == actor && issue.status == IssueStatus::InProgress => {
                return Ok(ClaimOutcome::Claimed);
            }
            Some(holder) if holder != actor => {
                return Ok(ClaimOutcome::AlreadyClaimed {
                    by: Some(holder.to_owned()),
                });
            }
            _ => {}
        }
        if issue.status.is_terminal() {
            return Err(TrackerError::Rejected {
                code: Some(mala_core::BrCode::ValidationFailed),
                message: format!("cannot claim {id}: it is {}", issue.status),
                hint: None,
                retryable: false,
            });
        }
        let by = board.blockers(id);
        if !by.is_empty() {
            return Ok(ClaimOutcome::Blocked { by });
        }
        let issue = board.get_mut(id)?;
        issue.status = IssueStatus::InProgress;
        issue.assignee = Some(actor.to_owned());
        Ok(ClaimOutcome::Claimed)
    }

    async fn take_over(
        &self,
        id: &IssueId,
        actor: &str,
        from: Option<String>,
    ) -> Result<ClaimOutcome, TrackerError> {
        let mut board = guard(&self.board);
        let issue = board.get_mut(id)?;
        if issue.assignee != from || issue.status != IssueStatus::InProgress {
            return Ok(ClaimOutcome::AlreadyClaimed {
                by: issue.assignee.clone(),
            });
        }
        issue.assignee = Some(actor.to_owned());
        Ok(ClaimOutcome::Claimed)
    }

    async fn close(&self, id: &IssueId, reason: &str) -> Result<(), TrackerError> {
        let held = guard(&self.held).clone();
        if let Some(held) = held {
            held.reached.notify_one();
            held.release.notified().await;
        }
        let mut board = guard(&self.board);
        if board.get(id)?.status == IssueStatus::Closed {
            return Ok(());
        }
        board.set_status(id, IssueStatus::Closed)?;
        let issue = board.get_mut(id)?;
        if !reason.is_empty() {
            if !issue.notes.is_empty() {
                issue.notes.push('\n');
            }
            issue.notes.push_str("closed: ");
            issue.notes.push_str(reason);
        }
        Ok(())
    }

    async fn mark_needs_followup(&self, id: &IssueId, notes: &str) -> Result<(), TrackerError> {
        self.update(
            id,
            IssueUpdate {
                add_labels: vec!["needs-followup".into()],
                notes: Some(notes.to_owned()),
                ..IssueUpdate::default()
            },
        )
        .await
    }

    async fn reopen(&self, id: &IssueId) -> Result<(), TrackerError> {
        let mut board = guard(&self.board);
        board.set_status(id, IssueStatus::Open)?;
        board.get_mut(id)?.assignee = None;
        Ok(())
    }

    async fn add_dependency(
        &self,
        issue: &IssueId,
        depends_on: &IssueId,
        kind: DependencyKind,
    ) -> Result<(), TrackerError> {
        let mut board = guard(&self.board);
        board.get(depends_on)?;
        let dependent = board.get_mut(issue)?;
        if kind == DependencyKind::ParentChild {
            dependent.parent = Some(depends_on.clone());
        }
        if !dependent
            .dependencies
            .iter()
            .any(|d| &d.depends_on == depends_on && d.kind == kind)
        {
            dependent.dependencies.push(Dependency {
                depends_on: depends_on.clone(),
                kind,
            });
        }
        board.blocking = None;
        Ok(())
    }

    async fn create(&self, new: NewIssue) -> Result<IssueId, TrackerError> {
        let mut board = guard(&self.board);
        board.next_id += 1;
        let id = format!("new-{}", board.next_id);
        let mut issue = Issue::new(id, new.title, Utc::now());
        issue.description = new.description;
        issue.acceptance_criteria = new.acceptance_criteria;
        issue.issue_type = new.issue_type.unwrap_or(IssueType::Task);
        if let Some(priority) = new.priority {
            issue.priority = priority;
        }
        issue.labels = new.labels;
        if let Some(parent) = new.parent {
            board.get(&parent)?;
            issue.dependencies.push(Dependency {
                depends_on: parent.clone(),
                kind: DependencyKind::ParentChild,
            });
            issue.parent = Some(parent);
        }
        let id = issue.id.clone();
        board.insert(issue);
        Ok(id)
    }

    async fn update(&self, id: &IssueId, update: IssueUpdate) -> Result<(), TrackerError> {
        let mut board = guard(&self.board);
        if let Some(status) = update.status {
            board.set_status(id, status)?;
        }
        let issue = board.get_mut(id)?;
        if let Some(title) = update.title {
            issue.title = title;
        }
        if let Some(description) = update.description {
            issue.description = description;
        }
        if let Some(priority) = update.priority {
            issue.priority = priority;
        }
        for label in update.add_labels {
            if !issue.labels.contains(&label) {
                issue.labels.push(label);
            }
        }
        issue.labels.retain(|l| !update.remove_labels.contains(l));
        if let Some(notes) = update.notes {
            issue.notes = if issue.notes.is_empty() {
                notes
            } else {
                format!("{}\n{notes}", issue.notes)
            };
        }
        Ok(())
    }

    async fn find_by_label(&self, label: &str) -> Result<Vec<Issue>, TrackerError> {
        Ok(guard(&self.board)
            .issues
            .iter()
            .filter(|i| i.has_label(label))
            .cloned()
            .collect())
    }

    async fn epic_status(&self) -> Result<Vec<EpicStatus>, TrackerError> {
        Ok(self.snapshot().epic_status())
    }

    async fn close_eligible_epics(&self) -> Result<Vec<IssueId>, TrackerError> {
        let eligible: Vec<IssueId> = self
            .snapshot()
            .epic_status()
            .into_iter()
            .filter(|s| s.eligible_for_close)
            .map(|s| s.epic)
            .collect();
        for epic in &eligible {
            self.close(epic, "all children closed").await?;
        }
        Ok(eligible)
    }

    async fn descendants(&self, epic: &IssueId) -> Result<Vec<Issue>, TrackerError> {
        Ok(self
            .snapshot()
            .descendants(epic)
            .into_iter()
            .cloned()
            .collect())
    }

    async fn parent_epic(&self, id: &IssueId) -> Result<Option<IssueId>, TrackerError> {
        Ok(self.snapshot().parent_epic(id).map(|e| e.id.clone()))
    }

    async fn flush(&self) -> Result<(), TrackerError> {
        Ok(())
    }
}

/// A repository that only knows the commits the scripted agents made.
#[derive(Debug, Clone, Default)]
pub struct MemoryRepository {
    commits: Arc<Mutex<Vec<CommitInfo>>>,
}

impl MemoryRepository {
    /// Records a commit, as an agent's commit tool would.
    pub fn commit(&self, subject: &str, files: &[&str]) {
        let mut commits = guard(&self.commits);
        let id = format!("{:040x}", commits.len() + 1);
        commits.insert(
            0,
            CommitInfo {
                id,
                subject: subject.to_owned(),
                time: Utc::now(),
                files: files.iter().map(|f| (*f).to_owned()).collect(),
            },
        );
    }

    /// Every commit so far, newest first.
    pub fn commits(&self) -> Vec<CommitInfo> {
        guard(&self.commits).clone()
    }
}

#[async_trait]
impl Repository for MemoryRepository {
    async fn content_id(&self) -> Result<Option<String>, RepoError> {
        Ok(self.head().await?.map(|head| format!("content-of-{head}")))
    }

    async fn commit_tracker_files(&self, _: &str) -> Result<Option<String>, RepoError> {
        // No tracker files live here.
        Ok(None)
    }

    async fn head(&self) -> Result<Option<String>, RepoError> {
        Ok(guard(&self.commits).first().map(|c| c.id.clone()))
    }

    async fn issue_commits(&self) -> Result<Vec<CommitInfo>, RepoError> {
        Ok(self.commits())
    }

    async fn is_clean(&self) -> Result<bool, RepoError> {
        Ok(true)
    }

    async fn unstage(&self, _: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        Ok(Vec::new())
    }

    async fn check_commit_against(
        &self,
        _: &str,
        _: &str,
        _: &[String],
        _: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError> {
        Ok(None)
    }

    async fn differs_from_head(&self, _: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        // Its agents change no file outside their commits.
        Ok(Vec::new())
    }

    async fn check_commit(
        &self,
        _: &str,
        _: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError> {
        Ok(None)
    }
}

/// An agent that works for a set time and then commits its issue's work
/// (`bd-<id>: done`), or, for the issues it is told to, says it is done
/// without committing anything.
#[derive(Clone)]
pub struct ScriptedBackend {
    repository: MemoryRepository,
    work: Duration,
    lazy: Arc<Vec<IssueId>>,
    /// What each started session was asked, in order.
    started: Arc<Mutex<Vec<SessionRequest>>>,
    stopped: Arc<tokio::sync::watch::Sender<bool>>,
    /// Turns of any session still to fail, and how.
    failing: Arc<Mutex<Option<(usize, AgentErrorKind)>>>,
    /// Dollars each turn costs.
    turn_cost: f64,
    /// Sessions still to refuse to start.
    refusing: Arc<Mutex<usize>>,
    /// Its tools run with no guard: the preflight canary runs.
    unguarded: bool,
    /// How the turns of sessions on no issue (trigger fixers) fail.
    fixers_fail: Option<AgentErrorKind>,
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBackend")
            .field("work", &self.work)
            .field("lazy", &self.lazy)
            .finish_non_exhaustive()
    }
}

impl ScriptedBackend {
    /// Honest agents that each take `work` per turn and commit to `repository`.
    pub fn honest(repository: MemoryRepository, work: Duration) -> Self {
        Self {
            repository,
            work,
            lazy: Arc::new(Vec::new()),
            started: Arc::default(),
            stopped: Arc::new(tokio::sync::watch::Sender::new(false)),
            failing: Arc::default(),
            turn_cost: 0.0,
            refusing: Arc::default(),
            unguarded: false,
            fixers_fail: None,
        }
    }

    /// The turns of sessions on no issue (a trigger's fixers) fail with
    /// `kind`, as the model API would refuse them.
    #[must_use]
    pub fn failing_fixers(mut self, kind: AgentErrorKind) -> Self {
        self.fixers_fail = Some(kind);
        self
    }

    /// Its tools run with no guard (hooks switched off): the preflight's
    /// canary command runs instead of being refused.
    #[must_use]
    pub fn unguarded(mut self) -> Self {
        self.unguarded = true;
        self
    }

    /// The next `sessions` sessions refuse to start, as a CLI that cannot run would.
    #[must_use]
    pub fn refusing_to_start(self, sessions: usize) -> Self {
        *guard(&self.refusing) = sessions;
        self
    }

    /// Each turn costs `dollars`, reported as the session's running total.
    #[must_use]
    pub fn costing(mut self, dollars: f64) -> Self {
        self.turn_cost = dollars;
        self
    }

    /// The next `turns` turns, of whichever sessions come first, fail with
    /// `kind` (as an environment fault would: the model API refused).
    #[must_use]
    pub fn failing_first(self, turns: usize, kind: AgentErrorKind) -> Self {
        *guard(&self.failing) = Some((turns, kind));
        self
    }

    /// The agents on these issues claim to be done but commit nothing.
    #[must_use]
    pub fn lazy_on(mut self, issues: &[&str]) -> Self {
        self.lazy = Arc::new(issues.iter().map(|i| IssueId::new(*i)).collect());
        self
    }

    /// How many sessions were started.
    pub fn sessions(&self) -> usize {
        guard(&self.started).len()
    }

    /// What each started session was asked, in order.
    pub fn requests(&self) -> Vec<SessionRequest> {
        guard(&self.started).clone()
    }
}

struct ScriptedSession {
    backend: ScriptedBackend,
    issue: Option<IssueId>,
    turns: u32,
    observer: Arc<dyn AgentObserver>,
}

#[async_trait]
impl AgentBackend for ScriptedBackend {
    async fn start(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError> {
        {
            let mut refusing = guard(&self.refusing);
            if *refusing > 0 {
                *refusing -= 1;
                return Err(AgentError::new(
                    AgentErrorKind::CouldNotStart,
                    "scripted: the agent refused to start",
                ));
            }
        }
        guard(&self.started).push(request.clone());
        Ok(Box::new(ScriptedSession {
            backend: self.clone(),
            issue: request.issue_id,
            turns: 0,
            observer,
        }))
    }

    async fn stop_all(&self) {
        self.stopped.send_replace(true);
    }

    fn kill_all(&self) {
        self.stopped.send_replace(true);
    }
}

impl ScriptedSession {
    /// The preflight turn, as an agent does it: it runs the canary, which
    /// the guard refuses (or, unguarded, which runs), then says ready.
    fn canary(&self) -> TurnOutcome {
        let id = "scripted-canary".to_owned();
        let emit = |event: AgentEvent| self.observer.on_event(&event);
        emit(AgentEvent::ToolUse {
            id: id.clone(),
            name: "Bash".to_owned(),
            input: serde_json::json!({"command": mala_domain::PREFLIGHT_CANARY}),
        });
        if self.backend.unguarded {
            emit(AgentEvent::ToolResult {
                id,
                is_error: true,
                content: "command not found".to_owned(),
            });
        } else {
            emit(AgentEvent::ToolDenied {
                tool: "Bash".to_owned(),
                reason: mala_domain::CANARY_REFUSAL.to_owned(),
            });
            emit(AgentEvent::ToolResult {
                id,
                is_error: true,
                content: mala_domain::CANARY_REFUSAL.to_owned(),
            });
        }
        TurnOutcome {
            total_cost_usd: self.backend.turn_cost,
            ..TurnOutcome::completed("ready")
        }
    }
}

#[async_trait]
impl AgentSession for ScriptedSession {
    fn session_id(&self) -> Option<SessionId> {
        self.issue
            .as_ref()
            .map(|issue| SessionId::new(format!("scripted-{issue}")))
    }

    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError> {
        let mut stopped = self.backend.stopped.subscribe();
        let cancelled = || AgentError::new(AgentErrorKind::Cancelled, "stopped");
        tokio::select! {
            () = tokio::time::sleep(self.backend.work) => {}
            _ = stopped.wait_for(|stop| *stop) => return Err(cancelled()),
        }
        {
            let mut failing = guard(&self.backend.failing);
            if let Some((left @ 1.., kind)) = failing.as_mut() {
                *left -= 1;
                return Err(AgentError::new(
                    kind.clone(),
                    "scripted: the model API refused",
                ));
            }
        }
        self.turns += 1;
        if prompt == mala_domain::preflight_prompt() {
            return Ok(self.canary());
        }
        let Some(issue) = &self.issue else {
            return Err(AgentError::new(
                self.backend
                    .fixers_fail
                    .clone()
                    .unwrap_or(AgentErrorKind::Protocol),
                "the scripted agent works on issues only",
            ));
        };
        let lazy = self.backend.lazy.contains(issue);
        if !lazy && self.turns == 1 {
            self.backend
                .repository
                .commit(&format!("bd-{issue}: done"), &["src/lib.rs"]);
        }
        let said = if lazy {
            "Done.".to_owned()
        } else {
            format!("Committed the work for {issue}.")
        };
        Ok(TurnOutcome {
            session_id: self.session_id(),
            total_cost_usd: self.backend.turn_cost * f64::from(self.turns),
            num_turns: self.turns,
            ..TurnOutcome::completed(said)
        })
    }

    async fn interrupt(&mut self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn close(&mut self) -> Result<(), AgentError> {
        Ok(())
    }
}
