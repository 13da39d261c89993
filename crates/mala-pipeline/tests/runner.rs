//! The issue runner against scripted agents: honest ones, and ones that lie
//! about commits, checks and edits. The tracker is the embedded JSONL store;
//! git and the agent are fakes that follow the script.
#![allow(clippy::unwrap_used, clippy::expect_used)] // the harness panics to fail the test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession,
    CheckCommand, CheckFailure, CommandRun, CommitInfo, Event, EventSink, FileEdit, Finding,
    IssueId, IssueStatus, IssueTracker, Landing, LockTable, NewIssue, RepoError, Repository,
    ReviewError, ReviewRequest, ReviewVerdict, Reviewer, SessionId, SessionRequest, TurnOutcome,
    Workspace, Workspaces,
};
use mala_domain::{Marker, RequiredCommand};
use mala_infra::{FileLockTable, JsonlTracker, SystemClock};
use mala_pipeline::{
    IssueResult, Resume, RunnerConfig, RunnerPorts, SessionEndCheck, StopReason, StopSignal,
    run_issue_from, stop_line,
};

/// What the scripted agent does in one turn, in order: edit, run, commit, say.
#[derive(Debug, Clone, Default)]
struct Turn {
    edits: Vec<&'static str>,
    runs: Vec<(&'static str, i32)>,
    commit: Option<(&'static str, Vec<&'static str>)>,
    text: &'static str,
    fail: Option<AgentErrorKind>,
    /// Dollars the turn costs.
    cost_usd: f64,
    /// Files the working-tree watch saw the agent change without a lock.
    unlocked: Vec<&'static str>,
}

/// The world the fakes share: time moves forward one second per action.
#[derive(Default)]
struct World {
    now: Option<DateTime<Utc>>,
    commits: Vec<CommitInfo>,
    prompts: Vec<String>,
    resumed: Vec<Option<SessionId>>,
    /// The dollar limit each session was started with.
    session_budgets: Vec<Option<f64>>,
    /// Where each session was started.
    cwds: Vec<PathBuf>,
    /// The session's running cost, as a backend reports it.
    session_cost: f64,
    /// Commits mala checked itself (gate.rerun), and subjects whose check fails.
    checked: Vec<String>,
    broken: Vec<&'static str>,
    /// Checks re-run with protected files put back: (baseline, paths); and
    /// whether the agent's code fails them.
    against: Vec<(String, Vec<String>)>,
    fails_as_they_were: bool,
    /// What the next turn does instead of following its script.
    misbehave: Option<Misbehave>,
    /// Sessions closed by the runner, and sessions dropped (killed).
    closed: usize,
    dropped: usize,
    unstaged: Vec<PathBuf>,
    /// Paths git says differ from HEAD.
    differs: Vec<PathBuf>,
    /// The next turn damages `.git` behind git's back.
    damage: bool,
}

/// A turn that never ends (after one edit), or one that panics inside mala.
#[derive(Debug, Clone, Copy)]
enum Misbehave {
    Hang,
    Panic,
    /// Reports this many tokens used so far in the turn, then never ends it.
    SpendAndHang(u64),
}

impl World {
    fn tick(&mut self) -> DateTime<Utc> {
        let next = self.now.map_or_else(
            || Utc::now() + chrono::Duration::seconds(1),
            |t| t + chrono::Duration::seconds(1),
        );
        self.now = Some(next);
        next
    }
}

type Shared = Arc<Mutex<World>>;

struct FakeBackend {
    world: Shared,
    turns: Arc<Mutex<Vec<Turn>>>,
    hanging: Arc<tokio::sync::Notify>,
}

struct FakeSession {
    world: Shared,
    turns: Arc<Mutex<Vec<Turn>>>,
    observer: Arc<dyn AgentObserver>,
    n: usize,
    hanging: Arc<tokio::sync::Notify>,
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        self.world.lock().unwrap().dropped += 1;
    }
}

#[async_trait]
impl AgentBackend for FakeBackend {
    async fn start(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError> {
        let mut world = self.world.lock().unwrap();
        world.resumed.push(request.resume);
        world.session_budgets.push(request.max_cost_usd);
        world.cwds.push(request.cwd);
        world.session_cost = 0.0;
        drop(world);
        Ok(Box::new(FakeSession {
            world: Arc::clone(&self.world),
            turns: Arc::clone(&self.turns),
            observer,
            n: 0,
            hanging: Arc::clone(&self.hanging),
        }))
    }
}

impl FakeSession {
    /// What the turn's hooks would have recorded: damage, edits, unlocked
    /// writes and command runs, in that order.
    fn report(&self, world: &mut World, turn: &Turn) {
        if std::mem::take(&mut world.damage) {
            self.observer.on_event(&AgentEvent::RepositoryDamaged {
                tool_use_id: "shell".into(),
                what: vec!["the ref refs/heads/x was deleted".into()],
            });
        }
        for path in &turn.unlocked {
            let at = world.tick();
            self.observer.on_event(&AgentEvent::UnlockedWrite {
                edit: FileEdit {
                    tool_use_id: "shell".into(),
                    tool: "Bash (seen in the working tree)".into(),
                    path: format!("/repo/{path}"),
                    at,
                },
            });
        }
        for (i, (command, exit)) in turn.runs.iter().enumerate() {
            let started = world.tick();
            let ended = world.tick();
            self.observer.on_event(&AgentEvent::CommandRan {
                run: CommandRun {
                    tool_use_id: format!("r{i}"),
                    command: (*command).to_owned(),
                    exit_code: Some(*exit),
                    failed: *exit != 0,
                    error: (*exit != 0).then(|| format!("Exit code {exit}")),
                    started_at: Some(started),
                    ended_at: ended,
                },
            });
        }
    }
}

#[async_trait]
impl AgentSession for FakeSession {
    fn session_id(&self) -> Option<SessionId> {
        Some(SessionId::new("fake-session"))
    }

    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError> {
        self.n += 1;
        let turn = {
            let mut turns = self.turns.lock().unwrap();
            if turns.is_empty() {
                Turn {
                    text: "I have nothing more to add.",
                    ..Turn::default()
                }
            } else {
                turns.remove(0)
            }
        };
        let misbehave = self.world.lock().unwrap().misbehave.take();
        match misbehave {
            Some(Misbehave::Hang) => {
                let at = self.world.lock().unwrap().tick();
                self.observer.on_event(&AgentEvent::FileEdited {
                    edit: FileEdit {
                        tool_use_id: "hang".into(),
                        tool: "Edit".into(),
                        path: "/repo/src/parser.rs".into(),
                        at,
                    },
                });
                self.hanging.notify_one();
                std::future::pending::<()>().await;
            }
            Some(Misbehave::Panic) => panic!("a bug inside the runner's turn"),
            Some(Misbehave::SpendAndHang(tokens)) => {
                for step in [tokens / 2, tokens] {
                    self.observer.on_event(&AgentEvent::TurnUsage {
                        usage: mala_core::TokenUsage {
                            input_tokens: step,
                            ..mala_core::TokenUsage::default()
                        },
                    });
                }
                std::future::pending::<()>().await;
            }
            None => {}
        }
        let mut world = self.world.lock().unwrap();
        world.prompts.push(prompt.to_owned());
        if let Some(kind) = turn.fail {
            return Err(AgentError::new(kind, "scripted failure"));
        }
        for (i, path) in turn.edits.iter().enumerate() {
            let at = world.tick();
            self.observer.on_event(&AgentEvent::ToolUse {
                id: format!("e{i}"),
                name: "Edit".into(),
                input: serde_json::Value::Null,
            });
            self.observer.on_event(&AgentEvent::FileEdited {
                edit: FileEdit {
                    tool_use_id: format!("e{i}"),
                    tool: "Edit".into(),
                    path: format!("/repo/{path}"),
                    at,
                },
            });
        }
        self.report(&mut world, &turn);
        if let Some((subject, files)) = &turn.commit {
            let time = world.tick();
            let id = format!("c{:04}", world.commits.len() + 1);
            world.commits.insert(
                0,
                CommitInfo {
                    id,
                    subject: (*subject).to_owned(),
                    time,
                    files: files.iter().map(|f| (*f).to_owned()).collect(),
                },
            );
        }
        world.session_cost += turn.cost_usd;
        Ok(TurnOutcome {
            session_id: Some(SessionId::new("fake-session")),
            total_cost_usd: world.session_cost,
            ..TurnOutcome::completed(turn.text)
        })
    }

    async fn interrupt(&mut self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn close(&mut self) -> Result<(), AgentError> {
        self.world.lock().unwrap().closed += 1;
        Ok(())
    }
}

struct FakeRepo {
    world: Shared,
}

#[async_trait]
impl Repository for FakeRepo {
    async fn content_id(&self) -> Result<Option<String>, RepoError> {
        Ok(None)
    }

    async fn commit_tracker_files(&self, _: &str) -> Result<Option<String>, RepoError> {
        // No tracker files live here.
        Ok(None)
    }

    async fn head(&self) -> Result<Option<String>, RepoError> {
        Ok(self
            .world
            .lock()
            .unwrap()
            .commits
            .first()
            .map(|c| c.id.clone()))
    }

    async fn issue_commits(&self) -> Result<Vec<CommitInfo>, RepoError> {
        Ok(self.world.lock().unwrap().commits.clone())
    }

    async fn is_clean(&self) -> Result<bool, RepoError> {
        Ok(true)
    }

    async fn unstage(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        self.world.lock().unwrap().unstaged.extend_from_slice(paths);
        Ok(vec![])
    }

    async fn check_commit_against(
        &self,
        _: &str,
        baseline: &str,
        restore: &[String],
        commands: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError> {
        let mut world = self.world.lock().unwrap();
        world.against.push((baseline.to_owned(), restore.to_vec()));
        Ok(world.fails_as_they_were.then(|| CheckFailure {
            name: commands[0].name.clone(),
            command: commands[0].command.clone(),
            output: "1 failed".into(),
        }))
    }

    async fn differs_from_head(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        let world = self.world.lock().unwrap();
        Ok(paths
            .iter()
            .filter(|p| world.differs.contains(p))
            .cloned()
            .collect())
    }

    async fn check_commit(
        &self,
        commit: &str,
        commands: &[CheckCommand],
    ) -> Result<Option<CheckFailure>, RepoError> {
        let mut world = self.world.lock().unwrap();
        world.checked.push(commit.to_owned());
        let subject = world
            .commits
            .iter()
            .find(|c| c.id == commit)
            .map(|c| c.subject.clone())
            .ok_or_else(|| RepoError::Checkout {
                commit: commit.to_owned(),
                stderr: "fatal: invalid reference".into(),
            })?;
        Ok(world
            .broken
            .iter()
            .any(|b| subject.contains(b))
            .then(|| CheckFailure {
                name: commands[0].name.clone(),
                command: commands[0].command.clone(),
                output: "error[E0425]: cannot find value `helper`".into(),
            }))
    }
}

struct ScriptedReviewer {
    answers: Mutex<Vec<Result<ReviewVerdict, ReviewError>>>,
    asked: Mutex<usize>,
}

#[async_trait]
impl Reviewer for ScriptedReviewer {
    async fn review(&self, _: ReviewRequest) -> Result<ReviewVerdict, ReviewError> {
        *self.asked.lock().unwrap() += 1;
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            Ok(ReviewVerdict { findings: vec![] })
        } else {
            answers.remove(0)
        }
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Event>>, tokio::sync::Notify);

impl EventSink for Events {
    fn emit(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
        self.1.notify_waiters();
    }
}

impl Events {
    /// Waits until an event matches (each emit wakes the check).
    async fn until(&self, wanted: impl Fn(&Event) -> bool) -> Event {
        loop {
            let woken = self.1.notified();
            if let Some(event) = self.0.lock().unwrap().iter().find(|e| wanted(e)) {
                return event.clone();
            }
            woken.await;
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    tracker: Arc<JsonlTracker>,
    world: Shared,
    events: Arc<Events>,
    issue: IssueId,
    hanging: Arc<tokio::sync::Notify>,
}

fn finding(priority: u8, title: &str) -> Finding {
    Finding {
        priority,
        title: title.into(),
        body: format!("{title}: details"),
        file: Some("src/parser.rs".into()),
        line_start: Some(3),
        line_end: Some(4),
    }
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        std::fs::write(dir.path().join(".beads/issues.jsonl"), "").unwrap();
        let tracker = Arc::new(JsonlTracker::open(dir.path()).unwrap());
        let issue = tracker
            .create(NewIssue {
                title: "Fix the parser".into(),
                description: "It crashes on empty input.".into(),
                acceptance_criteria: "- no crash".into(),
                ..NewIssue::default()
            })
            .await
            .unwrap();
        Self {
            _dir: dir,
            tracker,
            world: Shared::default(),
            events: Arc::new(Events::default()),
            issue,
            hanging: Arc::default(),
        }
    }

    fn config() -> RunnerConfig {
        RunnerConfig {
            issue_budget: mala_domain::Spend::default(),
            red_baseline: Vec::new(),
            repo_root: PathBuf::from("/repo"),
            actor: "mala:test-run".into(),
            required: vec![RequiredCommand {
                name: "test".into(),
                command: "cargo test".into(),
                allow_fail: false,
            }],
            code_patterns: vec!["**/*.rs".into()],
            config_files: vec!["Cargo.toml".into()],
            setup_files: vec![],
            max_gate_attempts: 3,
            max_review_attempts: 3,
            max_resumes: 2,
            resume_backoff: Duration::from_millis(1),
            retry_failed: 1,
            record_dir: PathBuf::from("/state/sessions"),
            blocking_priority: 1,
            rerun: false,
            track_review_issues: true,
            protected_files: vec![],
            merge_validate: true,
            merge_retries: 1,
        }
    }

    async fn run(&self, turns: Vec<Turn>, reviewer: Option<Arc<ScriptedReviewer>>) -> IssueResult {
        self.run_with(
            turns,
            reviewer.map(|r| r as Arc<dyn Reviewer>),
            None,
            Self::config(),
        )
        .await
    }

    async fn run_with(
        &self,
        turns: Vec<Turn>,
        reviewer: Option<Arc<dyn Reviewer>>,
        session_end: Option<Arc<dyn SessionEndCheck>>,
        config: RunnerConfig,
    ) -> IssueResult {
        self.run_from(turns, reviewer, session_end, config, None)
            .await
    }

    async fn run_from(
        &self,
        turns: Vec<Turn>,
        reviewer: Option<Arc<dyn Reviewer>>,
        session_end: Option<Arc<dyn SessionEndCheck>>,
        config: RunnerConfig,
        resume: Option<Resume>,
    ) -> IssueResult {
        let ports = RunnerPorts {
            reviewer,
            session_end,
            faults: mala_pipeline::FaultLine::detached(),
            ..self.ports(turns, None)
        };
        run_issue_from(
            &self.issue,
            self.agent(),
            &ports,
            &config,
            resume,
            StopSignal::never(),
        )
        .await
    }

    fn agent(&self) -> AgentId {
        AgentId::new(format!("{}@test-run", self.issue))
    }

    fn ports(&self, turns: Vec<Turn>, locks: Option<Arc<dyn LockTable>>) -> RunnerPorts {
        RunnerPorts {
            tracker: self.tracker.clone(),
            backend: Arc::new(FakeBackend {
                world: Arc::clone(&self.world),
                turns: Arc::new(Mutex::new(turns)),
                hanging: Arc::clone(&self.hanging),
            }),
            repo: Arc::new(FakeRepo {
                world: Arc::clone(&self.world),
            }),
            reviewer: None,
            locks,
            events: self.events.clone(),
            clock: Arc::new(SystemClock),
            session_end: None,
            faults: mala_pipeline::FaultLine::detached(),
            workspaces: None,
        }
    }

    fn prefix(&self) -> String {
        self.issue.commit_prefix()
    }

    fn subject(&self, text: &str) -> &'static str {
        Box::leak(format!("{} {text}", self.prefix()).into_boxed_str())
    }

    async fn status(&self) -> (IssueStatus, bool, String) {
        let issue = self.tracker.show(&self.issue).await.unwrap();
        let followup = issue.has_label("needs-followup");
        (issue.status, followup, issue.notes)
    }

    fn prompts(&self) -> Vec<String> {
        self.world.lock().unwrap().prompts.clone()
    }
}

fn honest_turn(h: &Harness) -> Turn {
    Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("handle empty input"), vec!["src/parser.rs"])),
        text: "Fixed the crash; cargo test passes; committed.",
        ..Turn::default()
    }
}

#[tokio::test]
async fn a_file_changed_without_its_lock_fails_the_gate_while_it_stays_changed() {
    let h = Harness::new().await;
    h.world
        .lock()
        .unwrap()
        .differs
        .push(PathBuf::from("/repo/src/theirs.rs"));
    let turn = Turn {
        unlocked: vec!["src/theirs.rs"],
        ..honest_turn(&h)
    };
    expect_failure(
        &h,
        vec![turn],
        "you changed src/theirs.rs without holding the lock",
    )
    .await;
}

#[tokio::test]
async fn a_commit_that_carries_a_file_another_agent_holds_fails_the_issue() {
    let h = Harness::new().await;
    let lock_dir = tempfile::tempdir().unwrap();
    let locks = Arc::new(FileLockTable::new(lock_dir.path(), Path::new("/")).unwrap());
    let other = AgentId::new("bd-other@test-run");
    locks
        .acquire(&other, &["/repo/src/theirs.rs".into()], Duration::ZERO)
        .await
        .unwrap();
    let turn = |h: &Harness| Turn {
        commit: Some((h.subject("fix"), vec!["src/parser.rs", "src/theirs.rs"])),
        ..honest_turn(h)
    };
    let ports = h.ports(vec![turn(&h), turn(&h)], Some(locks.clone()));
    let result = run_issue_from(
        &h.issue,
        h.agent(),
        &ports,
        &Harness::config(),
        None,
        StopSignal::never(),
    )
    .await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("include files another agent holds")
            && reason.contains("src/theirs.rs (held by bd-other@test-run)"),
        "{reason}"
    );
    assert_eq!(h.world.lock().unwrap().prompts.len(), 1, "no second turn");
    // Once no one else holds it, the same commit is the agent's own.
    locks.release_all(&other).await.unwrap();
    let h = Harness::new().await;
    let ports = h.ports(vec![turn(&h)], Some(locks.clone()));
    let result = run_issue_from(
        &h.issue,
        h.agent(),
        &ports,
        &Harness::config(),
        None,
        StopSignal::never(),
    )
    .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
}

#[tokio::test]
async fn a_commit_that_changes_the_checks_is_judged_by_the_checks_as_they_were() {
    let h = Harness::new().await;
    let mut config = Harness::config();
    config.required[0].command = "uv run pytest tests/".into();
    config.config_files = vec!["ruff.toml".into()];
    let weakening = |h: &Harness| Turn {
        runs: vec![("uv run pytest tests/", 0)],
        commit: Some((
            h.subject("fix"),
            vec!["src/parser.rs", "tests/test_parser.py", "ruff.toml"],
        )),
        ..honest_turn(h)
    };
    h.world.lock().unwrap().fails_as_they_were = true;
    let result = h
        .run_with(
            vec![weakening(&h), weakening(&h)],
            None,
            None,
            config.clone(),
        )
        .await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("(ruff.toml, tests/test_parser.py)")
            && reason.contains("`test` (uv run pytest tests/) fails on your code: 1 failed"),
        "{reason}"
    );
    let (baseline, restored) = h.world.lock().unwrap().against[0].clone();
    assert!(
        baseline.ends_with('^'),
        "the parent of the first commit: {baseline}"
    );
    assert_eq!(restored, vec!["ruff.toml", "tests/test_parser.py"]);

    // The same change that passes the checks as they were closes.
    let h = Harness::new().await;
    let result = h.run_with(vec![weakening(&h)], None, None, config).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(h.world.lock().unwrap().against.len(), 1);
}

#[tokio::test]
async fn a_changed_manifest_the_checks_read_is_labelled_and_needs_a_passing_review() {
    let mut config = Harness::config();
    config.config_files = vec!["pyproject.toml".into()];
    config.setup_files = vec!["pyproject.toml".into()];
    let turn = |h: &Harness| Turn {
        commit: Some((h.subject("fix"), vec!["src/parser.rs", "pyproject.toml"])),
        ..honest_turn(h)
    };
    let h = Harness::new().await;
    let result = h.run_with(vec![turn(&h)], None, None, config.clone()).await;
    let IssueResult::Failed { reason } = result else {
        panic!("without a reviewer it cannot close: {result:?}")
    };
    assert!(
        reason.contains("dependency manifests the checks read (pyproject.toml)")
            && reason.contains("no reviewer"),
        "{reason}"
    );
    let issue = h.tracker.show(&h.issue).await.unwrap();
    assert!(
        issue.has_label(mala_pipeline::CHECKS_CHANGED),
        "{:?}",
        issue.labels
    );
    assert!(
        h.world.lock().unwrap().against.is_empty(),
        "nothing to put back"
    );

    // With a reviewer, its passing review closes it.
    let h = Harness::new().await;
    let reviewer: Arc<dyn Reviewer> = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![]),
        asked: Mutex::new(0),
    });
    let result = h
        .run_with(vec![turn(&h)], Some(reviewer), None, config)
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
}

#[tokio::test]
async fn damage_to_the_repository_fails_the_issue_at_once() {
    let h = Harness::new().await;
    h.world.lock().unwrap().damage = true;
    let result = h.run(vec![honest_turn(&h), honest_turn(&h)], None).await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason
            .contains("damaged the repository behind git's back: the ref refs/heads/x was deleted"),
        "{reason}"
    );
    assert_eq!(h.world.lock().unwrap().prompts.len(), 1, "no second turn");
}

#[tokio::test]
async fn a_file_changed_without_its_lock_and_put_back_passes() {
    let h = Harness::new().await;
    let turn = Turn {
        unlocked: vec!["src/theirs.rs"],
        ..honest_turn(&h)
    };
    let result = h.run(vec![turn], None).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
}

#[tokio::test]
async fn an_honest_agent_passes_first_time_and_the_issue_closes() {
    let h = Harness::new().await;
    let result = h.run(vec![honest_turn(&h)], None).await;
    assert!(
        matches!(
            result,
            IssueResult::Closed {
                commit: Some(_),
                marker: None
            }
        ),
        "{result:?}"
    );
    assert_eq!(h.status().await.0, IssueStatus::Closed);
    assert_eq!(h.prompts().len(), 1);
    assert!(
        h.prompts()[0].contains("Fix the parser")
            && h.prompts()[0].contains("- no crash")
            && h.prompts()[0].contains("`cargo test`")
    );
}

#[tokio::test]
async fn an_agent_that_fixes_its_work_after_a_follow_up_passes_on_attempt_two() {
    let h = Harness::new().await;
    let first = Turn {
        runs: vec![("cargo test", 101)],
        text: "All tests pass!",
        ..honest_turn(&h)
    };
    let second = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("fix the failing test"), vec!["src/parser.rs"])),
        text: "Fixed.",
        fail: None,
        unlocked: vec![],
        cost_usd: 0.0,
    };
    let result = h.run(vec![first, second], None).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let prompts = h.prompts();
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[1].contains("attempt 2 of 3") && prompts[1].contains("failed (exit 101)"),
        "{}",
        prompts[1]
    );
}

/// The issue fails, the gate named `expected` on some attempt, and the
/// issue carries needs-followup with the final reason.
async fn expect_failure(h: &Harness, turns: Vec<Turn>, expected: &str) -> String {
    let result = h.run(turns, None).await;
    let IssueResult::Failed { reason } = result else {
        panic!("expected a failure, got {result:?}")
    };
    let caught = h.events.0.lock().unwrap().iter().any(|e| {
        matches!(e, Event::GateChecked { passed: false, reasons, .. } if reasons.iter().any(|r| r.contains(expected)))
    });
    assert!(
        caught,
        "no gate attempt said {expected:?}; final reason: {reason}"
    );
    let (status, followup, notes) = h.status().await;
    assert!(followup, "needs-followup is set");
    assert!(
        notes.contains(&reason) && notes.contains("Session record:"),
        "{notes}"
    );
    assert_eq!(
        status,
        IssueStatus::Open,
        "reopened for one more try in a later run"
    );
    reason
}

#[tokio::test]
async fn saying_done_without_committing_is_caught() {
    let h = Harness::new().await;
    let turn = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        text: "Done and committed.",
        ..Turn::default()
    };
    let reason = expect_failure(&h, vec![turn], "no commit starting with").await;
    assert!(
        reason.contains("changed nothing"),
        "no progress stops the retries early: {reason}"
    );
    // The first follow-up changed nothing, so the third attempt is never paid for.
    assert_eq!(h.prompts().len(), 2);
}

#[tokio::test]
async fn committing_without_running_the_checks_is_caught() {
    let h = Harness::new().await;
    let turn = Turn {
        runs: vec![],
        text: "Tests pass.",
        ..honest_turn(&h)
    };
    expect_failure(&h, vec![turn], "`test` (cargo test) was never run").await;
}

#[tokio::test]
async fn failing_checks_claimed_as_passing_are_caught() {
    let h = Harness::new().await;
    let turns = vec![
        Turn {
            runs: vec![("cargo test", 1)],
            text: "Tests pass.",
            ..honest_turn(&h)
        },
        Turn {
            runs: vec![("cargo test", 1)],
            text: "Really, they pass.",
            ..Turn::default()
        },
        Turn {
            runs: vec![("cargo test", 1)],
            text: "They pass now.",
            ..Turn::default()
        },
    ];
    expect_failure(&h, turns, "failed (exit 1)").await;
}

#[tokio::test]
async fn editing_after_the_checks_without_rerunning_is_caught() {
    let h = Harness::new().await;
    let sneaky = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![],
        commit: Some((h.subject("one more tweak"), vec!["src/parser.rs"])),
        text: "Done.",
        ..Turn::default()
    };
    let turns = vec![
        Turn {
            runs: vec![("cargo test", 0)],
            text: "Tested first.",
            ..Turn::default()
        },
        sneaky.clone(),
        sneaky,
    ];
    expect_failure(&h, turns, "last ran before your last edit").await;
}

#[tokio::test]
async fn a_commit_under_another_issues_id_is_caught() {
    let h = Harness::new().await;
    let turn = Turn {
        commit: Some(("bd-other-9: fix", vec!["src/parser.rs"])),
        ..honest_turn(&h)
    };
    expect_failure(&h, vec![turn], "no commit starting with").await;
}

#[tokio::test]
async fn a_marker_without_a_rationale_is_caught() {
    let h = Harness::new().await;
    let turn = Turn {
        text: "Nothing to do.\nISSUE_NO_CHANGE:",
        ..Turn::default()
    };
    expect_failure(&h, vec![turn], "rationale").await;
}

#[tokio::test]
async fn docs_only_with_a_code_change_is_caught() {
    let h = Harness::new().await;
    let turn = Turn {
        edits: vec!["docs/parser.md", "src/parser.rs"],
        runs: vec![],
        commit: Some((
            h.subject("document the parser"),
            vec!["docs/parser.md", "src/parser.rs"],
        )),
        text: "ISSUE_DOCS_ONLY: documentation only",
        fail: None,
        unlocked: vec![],
        cost_usd: 0.0,
    };
    expect_failure(
        &h,
        vec![turn],
        "changes code or configuration: src/parser.rs",
    )
    .await;
}

#[tokio::test]
async fn a_justified_marker_closes_the_issue_without_review() {
    let h = Harness::new().await;
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![]),
        asked: Mutex::new(0),
    });
    let turn = Turn {
        text: "Checked: the parser was deleted in m-7.\nISSUE_OBSOLETE: the parser no longer exists",
        ..Turn::default()
    };
    let result = h.run(vec![turn], Some(reviewer.clone())).await;
    assert!(
        matches!(
            result,
            IssueResult::Closed {
                marker: Some(Marker::Obsolete(_)),
                ..
            }
        ),
        "{result:?}"
    );
    assert_eq!(*reviewer.asked.lock().unwrap(), 0);
}

#[tokio::test]
async fn a_blocking_review_goes_back_to_the_agent_then_passes() {
    let h = Harness::new().await;
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![
            Ok(ReviewVerdict {
                findings: vec![finding(1, "Off-by-one in the loop")],
            }),
            Ok(ReviewVerdict { findings: vec![] }),
        ]),
        asked: Mutex::new(0),
    });
    let fix = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("fix the off-by-one"), vec!["src/parser.rs"])),
        text: "Fixed the review finding.",
        fail: None,
        unlocked: vec![],
        cost_usd: 0.0,
    };
    let result = h
        .run(vec![honest_turn(&h), fix], Some(reviewer.clone()))
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(*reviewer.asked.lock().unwrap(), 2);
    let prompts = h.prompts();
    assert!(
        prompts[1].contains("Off-by-one in the loop") && prompts[1].contains("src/parser.rs:3"),
        "{}",
        prompts[1]
    );
    assert_eq!(h.status().await.0, IssueStatus::Closed);
}

#[tokio::test]
async fn advisory_findings_close_the_issue_and_land_in_one_tracking_issue() {
    let h = Harness::new().await;
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![Ok(ReviewVerdict {
            findings: vec![
                finding(2, "Name the constant"),
                finding(3, "Typo in a comment"),
            ],
        })]),
        asked: Mutex::new(0),
    });
    let result = h.run(vec![honest_turn(&h)], Some(reviewer)).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let label = format!("source:{}", h.issue);
    let tracking = h.tracker.find_by_label(&label).await.unwrap();
    assert_eq!(tracking.len(), 1);
    assert!(
        tracking[0]
            .title
            .starts_with("[Review] 2 non-blocking finding(s)"),
        "{}",
        tracking[0].title
    );
    // A second review with one old and one new finding appends only the new one.
    let source = h.tracker.show(&h.issue).await.unwrap();
    mala_pipeline::track_advisory_findings(
        h.tracker.as_ref(),
        &source,
        &[
            finding(2, "Name the constant"),
            finding(3, "Split the function"),
        ],
    )
    .await
    .unwrap();
    let tracking = h.tracker.find_by_label(&label).await.unwrap();
    assert_eq!(tracking.len(), 1, "no duplicate tracking issue");
    assert!(
        tracking[0].title.starts_with("[Review] 3 non-blocking"),
        "{}",
        tracking[0].title
    );
    assert_eq!(
        tracking[0]
            .description
            .matches(":Name the constant -->")
            .count(),
        1,
        "{}",
        tracking[0].description
    );
    // Findings on the tracking issue's own work do not start a chain.
    let again = mala_pipeline::track_advisory_findings(
        h.tracker.as_ref(),
        &tracking[0],
        &[finding(3, "Another nit")],
    )
    .await
    .unwrap();
    assert_eq!(again, None);
    let chained = format!("source:{}", tracking[0].id);
    assert!(h.tracker.find_by_label(&chained).await.unwrap().is_empty());
}

#[tokio::test]
async fn with_track_review_issues_off_advisory_findings_file_no_tracking_issue() {
    let h = Harness::new().await;
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![Ok(ReviewVerdict {
            findings: vec![finding(2, "Name the constant")],
        })]),
        asked: Mutex::new(0),
    });
    let config = RunnerConfig {
        track_review_issues: false,
        ..Harness::config()
    };
    let result = h
        .run_with(
            vec![honest_turn(&h)],
            Some(reviewer.clone() as Arc<dyn Reviewer>),
            None,
            config,
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(*reviewer.asked.lock().unwrap(), 1, "the review ran");
    let label = format!("source:{}", h.issue);
    assert!(
        h.tracker.find_by_label(&label).await.unwrap().is_empty(),
        "no tracking issue with track_review_issues: false"
    );
}

#[tokio::test]
async fn an_unreadable_reviewer_is_asked_again_then_the_issue_fails_with_the_reason() {
    let h = Harness::new().await;
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![
            Err(ReviewError::InvalidAnswer("not JSON".into())),
            Err(ReviewError::InvalidAnswer("still not JSON".into())),
        ]),
        asked: Mutex::new(0),
    });
    let result = h.run(vec![honest_turn(&h)], Some(reviewer.clone())).await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("review could not be completed") && reason.contains("still not JSON"),
        "{reason}"
    );
    assert_eq!(*reviewer.asked.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_crashed_session_is_resumed_by_id_not_replayed() {
    let h = Harness::new().await;
    let crash = Turn {
        fail: Some(AgentErrorKind::Crashed),
        ..Turn::default()
    };
    let result = h.run(vec![crash, honest_turn(&h)], None).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let world = h.world.lock().unwrap();
    assert_eq!(
        world.resumed,
        vec![None, Some(SessionId::new("fake-session"))]
    );
    assert!(
        world.prompts[1].contains("interrupted"),
        "the resume prompt, not the original: {}",
        world.prompts[1]
    );
}

#[tokio::test]
async fn a_second_failure_blocks_the_issue_for_a_person() {
    let h = Harness::new().await;
    let lazy = || Turn {
        text: "Done.",
        ..Turn::default()
    };
    let _ = h.run(vec![lazy()], None).await;
    assert_eq!(h.status().await.0, IssueStatus::Open);
    let _ = h.run(vec![lazy()], None).await;
    let (status, followup, notes) = h.status().await;
    assert_eq!(
        status,
        IssueStatus::Blocked,
        "retry_failed is 1: the second failure waits for a person"
    );
    assert!(followup && notes.contains("attempt 2"), "{notes}");
}

#[tokio::test]
async fn a_stopped_session_keeps_its_claim_and_is_not_a_failure() {
    let h = Harness::new().await;
    let stopped = Turn {
        fail: Some(AgentErrorKind::Cancelled),
        ..Turn::default()
    };
    let result = h.run(vec![stopped], None).await;
    let IssueResult::Skipped { reason } = result else {
        panic!("{result:?}")
    };
    assert!(reason.contains("stopped"), "{reason}");
    let (status, followup, notes) = h.status().await;
    assert_eq!(
        status,
        IssueStatus::InProgress,
        "the claim stays for the next run to take over"
    );
    assert!(!followup && !notes.contains("mala: failed"), "{notes}");
    assert_eq!(
        h.world.lock().unwrap().resumed,
        vec![None],
        "a stop is not resumed"
    );
}

/// A reviewer that keeps what it was asked and answers from a script.
#[derive(Default)]
struct RecordingReviewer {
    answers: Mutex<Vec<ReviewVerdict>>,
    requests: Mutex<Vec<ReviewRequest>>,
}

#[async_trait]
impl Reviewer for RecordingReviewer {
    async fn review(&self, request: ReviewRequest) -> Result<ReviewVerdict, ReviewError> {
        self.requests.lock().unwrap().push(request);
        let mut answers = self.answers.lock().unwrap();
        Ok(if answers.is_empty() {
            ReviewVerdict { findings: vec![] }
        } else {
            answers.remove(0)
        })
    }
}

#[tokio::test]
async fn a_finding_threshold_of_p2_sends_a_p2_finding_back_to_the_agent() {
    let h = Harness::new().await;
    let reviewer = Arc::new(RecordingReviewer {
        answers: Mutex::new(vec![ReviewVerdict {
            findings: vec![finding(2, "Unclear name")],
        }]),
        ..RecordingReviewer::default()
    });
    let fix = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("rename"), vec!["src/parser.rs"])),
        text: "Renamed.",
        fail: None,
        unlocked: vec![],
        cost_usd: 0.0,
    };
    let config = RunnerConfig {
        blocking_priority: 2,
        ..Harness::config()
    };
    let result = h
        .run_with(
            vec![honest_turn(&h), fix],
            Some(reviewer.clone()),
            None,
            config,
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(reviewer.requests.lock().unwrap().len(), 2);
    assert!(
        h.prompts()[1].contains("Unclear name"),
        "{}",
        h.prompts()[1]
    );

    // With the default line (P0/P1) the same finding is advisory.
    let h = Harness::new().await;
    let reviewer = Arc::new(RecordingReviewer {
        answers: Mutex::new(vec![ReviewVerdict {
            findings: vec![finding(2, "Unclear name")],
        }]),
        ..RecordingReviewer::default()
    });
    let result = h
        .run_with(
            vec![honest_turn(&h)],
            Some(reviewer.clone()),
            None,
            Harness::config(),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(h.prompts().len(), 1, "no follow-up for an advisory finding");
}

#[tokio::test]
async fn with_gate_rerun_a_commit_that_fails_when_mala_runs_the_checks_goes_back() {
    let h = Harness::new().await;
    h.world.lock().unwrap().broken.push("forgot a file");
    let incomplete = Turn {
        commit: Some((h.subject("forgot a file"), vec!["src/parser.rs"])),
        ..honest_turn(&h)
    };
    let complete = Turn {
        edits: vec!["src/helper.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("add the helper"), vec!["src/helper.rs"])),
        text: "Committed the missing file.",
        fail: None,
        unlocked: vec![],
        cost_usd: 0.0,
    };
    let config = RunnerConfig {
        rerun: true,
        ..Harness::config()
    };
    let result = h
        .run_with(vec![incomplete, complete], None, None, config)
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let prompts = h.prompts();
    assert!(
        prompts[1].contains("clean checkout") && prompts[1].contains("cannot find value"),
        "the follow-up says what mala saw: {}",
        prompts[1]
    );
    assert_eq!(h.world.lock().unwrap().checked, vec!["c0001", "c0002"]);
}

#[tokio::test]
async fn without_gate_rerun_mala_does_not_run_the_checks_itself() {
    let h = Harness::new().await;
    h.world.lock().unwrap().broken.push("handle empty input");
    let result = h.run(vec![honest_turn(&h)], None).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert!(h.world.lock().unwrap().checked.is_empty());
}

/// A session_end trigger that says what it was told to say.
struct ScriptedSessionEnd {
    says: &'static str,
    ran_for: Mutex<Vec<IssueId>>,
}

#[async_trait]
impl SessionEndCheck for ScriptedSessionEnd {
    async fn run(&self, issue: &IssueId) -> String {
        self.ran_for.lock().unwrap().push(issue.clone());
        self.says.to_owned()
    }
}

#[tokio::test]
async fn session_end_runs_after_the_gate_and_its_result_reaches_the_reviewer() {
    let h = Harness::new().await;
    let session_end = Arc::new(ScriptedSessionEnd {
        says: "`cargo clippy` failed (failure_mode continue)",
        ran_for: Mutex::new(vec![]),
    });
    let reviewer = Arc::new(RecordingReviewer::default());
    let result = h
        .run_with(
            vec![honest_turn(&h)],
            Some(reviewer.clone()),
            Some(session_end.clone()),
            Harness::config(),
        )
        .await;
    assert!(
        matches!(result, IssueResult::Closed { .. }),
        "a session_end result never blocks: {result:?}"
    );
    assert_eq!(*session_end.ran_for.lock().unwrap(), vec![h.issue.clone()]);
    let requests = reviewer.requests.lock().unwrap();
    assert!(
        requests[0].context.contains("cargo clippy` failed"),
        "{}",
        requests[0].context
    );
}

#[tokio::test]
async fn session_end_is_skipped_for_a_no_work_marker_and_a_failed_gate() {
    let h = Harness::new().await;
    let session_end = Arc::new(ScriptedSessionEnd {
        says: "passed",
        ran_for: Mutex::new(vec![]),
    });
    let marker = Turn {
        text: "ISSUE_NO_CHANGE: the parser already handles empty input; see the existing test",
        ..Turn::default()
    };
    let result = h
        .run_with(
            vec![marker],
            None,
            Some(session_end.clone()),
            Harness::config(),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let lazy = Turn {
        text: "Done.",
        ..Turn::default()
    };
    let h2 = Harness::new().await;
    let config = RunnerConfig {
        max_gate_attempts: 1,
        ..Harness::config()
    };
    let result = h2
        .run_with(vec![lazy], None, Some(session_end.clone()), config)
        .await;
    assert!(matches!(result, IssueResult::Failed { .. }), "{result:?}");
    assert!(session_end.ran_for.lock().unwrap().is_empty());
}

fn earlier_session() -> Resume {
    Resume {
        session_id: Some(SessionId::new("earlier-session")),
        ..Resume::default()
    }
}

#[tokio::test]
async fn a_resumed_session_is_told_to_carry_on_and_its_earlier_commit_counts() {
    let h = Harness::new().await;
    // The earlier run's agent committed, then mala was killed.
    let baseline = Utc::now() - chrono::Duration::minutes(10);
    h.world.lock().unwrap().commits.push(CommitInfo {
        id: "c0009".into(),
        subject: h.subject("handle empty input").to_owned(),
        time: baseline + chrono::Duration::minutes(5),
        files: vec!["src/parser.rs".into()],
    });
    let carry_on = Turn {
        runs: vec![("cargo test", 0)],
        text: "The fix was committed before; cargo test passes.",
        ..Turn::default()
    };
    let resume = Resume {
        baseline: Some(baseline),
        ..earlier_session()
    };
    let result = h
        .run_from(vec![carry_on], None, None, Harness::config(), Some(resume))
        .await;
    let IssueResult::Closed { commit, .. } = result else {
        panic!("{result:?}")
    };
    assert_eq!(
        commit.as_deref(),
        Some("c0009"),
        "the earlier commit counts"
    );
    let world = h.world.lock().unwrap();
    assert_eq!(world.resumed, vec![Some(SessionId::new("earlier-session"))]);
    assert!(
        world.prompts[0].contains("picking your session up")
            && world.prompts[0].contains("lock_acquire"),
        "{}",
        world.prompts[0]
    );
}

#[tokio::test]
async fn strict_resume_without_an_earlier_session_fails_the_issue() {
    let h = Harness::new().await;
    let strict = Resume {
        strict: true,
        ..Resume::default()
    };
    let result = h
        .run_from(
            vec![honest_turn(&h)],
            None,
            None,
            Harness::config(),
            Some(strict),
        )
        .await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(reason.contains("no earlier session"), "{reason}");
    assert!(h.prompts().is_empty(), "no agent was started");
}

#[tokio::test]
async fn a_fresh_resume_starts_a_new_session_with_the_earlier_findings() {
    let h = Harness::new().await;
    let fresh = Resume {
        fresh: true,
        findings: vec![finding(1, "Off-by-one in the loop")],
        ..earlier_session()
    };
    let result = h
        .run_from(
            vec![honest_turn(&h)],
            None,
            None,
            Harness::config(),
            Some(fresh),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(h.world.lock().unwrap().resumed, vec![None], "a new session");
    let first = &h.prompts()[0];
    assert!(
        first.contains("Fix the parser") && first.contains("Off-by-one in the loop"),
        "the task and the findings: {first}"
    );
}

#[tokio::test]
async fn review_wip_closes_finished_work_without_a_turn() {
    let h = Harness::new().await;
    h.world.lock().unwrap().commits.push(CommitInfo {
        id: "c0009".into(),
        subject: h.subject("earlier work").to_owned(),
        time: Utc::now() - chrono::Duration::days(1),
        files: vec!["src/parser.rs".into()],
    });
    let reviewer = Arc::new(RecordingReviewer::default());
    let wip = Resume {
        review_first: true,
        ..Resume::default()
    };
    let result = h
        .run_from(
            vec![],
            Some(reviewer.clone()),
            None,
            Harness::config(),
            Some(wip),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert!(h.prompts().is_empty(), "no turn was needed");
    assert_eq!(reviewer.requests.lock().unwrap()[0].commits, vec!["c0009"]);
}

#[tokio::test]
async fn review_wip_with_blocking_findings_starts_the_agent_on_them() {
    let h = Harness::new().await;
    h.world.lock().unwrap().commits.push(CommitInfo {
        id: "c0009".into(),
        subject: h.subject("earlier work").to_owned(),
        time: Utc::now() - chrono::Duration::days(1),
        files: vec!["src/parser.rs".into()],
    });
    let reviewer = Arc::new(RecordingReviewer {
        answers: Mutex::new(vec![ReviewVerdict {
            findings: vec![finding(1, "Off-by-one in the loop")],
        }]),
        ..RecordingReviewer::default()
    });
    let wip = Resume {
        review_first: true,
        ..Resume::default()
    };
    let result = h
        .run_from(
            vec![honest_turn(&h)],
            Some(reviewer.clone()),
            None,
            Harness::config(),
            Some(wip),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let prompts = h.prompts();
    assert!(
        prompts[0].contains("Off-by-one in the loop"),
        "{}",
        prompts[0]
    );
    assert_eq!(reviewer.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_earlier_session_that_cannot_be_resumed_is_replaced_by_a_new_one() {
    let h = Harness::new().await;
    let gone = Turn {
        fail: Some(AgentErrorKind::Crashed),
        ..Turn::default()
    };
    let result = h
        .run_from(
            vec![gone, honest_turn(&h)],
            None,
            None,
            Harness::config(),
            Some(earlier_session()),
        )
        .await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let world = h.world.lock().unwrap();
    assert_eq!(
        world.resumed,
        vec![Some(SessionId::new("earlier-session")), None]
    );
    assert!(
        world.prompts[1].contains("Fix the parser"),
        "the new session gets the whole task: {}",
        world.prompts[1]
    );
}

#[tokio::test]
async fn an_issue_that_closes_after_a_failure_loses_its_needs_followup_label() {
    let h = Harness::new().await;
    let lazy = Turn {
        text: "Done.",
        ..Turn::default()
    };
    let _ = h.run(vec![lazy], None).await;
    let (status, followup, _) = h.status().await;
    assert_eq!(status, IssueStatus::Open);
    assert!(followup, "the failure is marked");
    let result = h.run(vec![honest_turn(&h)], None).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let (status, followup, notes) = h.status().await;
    assert_eq!(status, IssueStatus::Closed);
    assert!(!followup, "closed work needs no follow-up");
    assert!(notes.contains("mala: failed"), "the history stays: {notes}");
}

/// The worker boundary: a claimed issue ends through finalize whatever
/// stops it. Each case holds a lock and has edited a file when it is
/// stopped; afterwards the lock is free, the edit is unstaged, the session
/// is killed, and an outcome event says what happened.
mod boundary {
    use super::*;

    struct Stoppable {
        h: Harness,
        locks: Arc<FileLockTable>,
        _lock_dir: tempfile::TempDir,
    }

    impl Stoppable {
        async fn new(misbehave: Misbehave) -> Self {
            let h = Harness::new().await;
            h.world.lock().unwrap().misbehave = Some(misbehave);
            let lock_dir = tempfile::tempdir().unwrap();
            let locks = Arc::new(FileLockTable::new(lock_dir.path(), Path::new("/")).unwrap());
            let held = locks
                .acquire(&h.agent(), &["/repo/src/parser.rs".into()], Duration::ZERO)
                .await
                .unwrap();
            assert!(!locks.held_by(&h.agent()).is_empty(), "{held:?}");
            Self {
                h,
                locks,
                _lock_dir: lock_dir,
            }
        }

        fn spawn(
            &self,
        ) -> (
            tokio::task::JoinHandle<IssueResult>,
            mala_pipeline::WorkerStop,
        ) {
            let (stop, signal) = stop_line();
            let ports = self
                .h
                .ports(vec![honest_turn(&self.h)], Some(self.locks.clone()));
            let (issue, agent) = (self.h.issue.clone(), self.h.agent());
            let handle = tokio::spawn(async move {
                run_issue_from(&issue, agent, &ports, &Harness::config(), None, signal).await
            });
            (handle, stop)
        }

        fn assert_cleaned_up(&self) {
            assert!(
                self.locks.held_by(&self.h.agent()).is_empty(),
                "the agent's locks are released"
            );
            let world = self.h.world.lock().unwrap();
            assert_eq!(world.dropped, 1, "the session is killed (dropped)");
            assert_eq!(world.closed, 0, "a stopped agent gets no graceful close");
            assert!(
                world
                    .unstaged
                    .contains(&PathBuf::from("/repo/src/parser.rs")),
                "what it edited is unstaged: {:?}",
                world.unstaged
            );
        }
    }

    async fn stopped_for(reason: StopReason) -> (Stoppable, IssueResult) {
        let s = Stoppable::new(Misbehave::Hang).await;
        let (handle, stop) = s.spawn();
        s.h.hanging.notified().await;
        stop.stop(reason);
        let result = handle.await.unwrap();
        (s, result)
    }

    #[tokio::test]
    async fn a_deadlock_stop_kills_the_session_and_finalizes_as_giving_way() {
        let (s, result) = stopped_for(StopReason::Deadlock).await;
        let IssueResult::Skipped { reason } = &result else {
            panic!("{result:?}")
        };
        assert!(reason.contains("gave way in a deadlock"), "{reason}");
        s.assert_cleaned_up();
        let said = s.h.events.0.lock().unwrap().clone();
        assert!(
            said.iter()
                .any(|e| matches!(e, Event::IssueSkipped { reason: r, .. } if r == reason)),
            "{said:?}"
        );
        let (status, followup, _) = s.h.status().await;
        assert_eq!(
            (status, followup),
            (IssueStatus::InProgress, false),
            "nothing is charged to the issue; the deadlock's resolution reopens it"
        );
    }

    #[tokio::test]
    async fn a_ctrl_c_stop_kills_the_session_and_keeps_the_claim() {
        let (s, result) = stopped_for(StopReason::Interrupted).await;
        assert!(
            matches!(&result, IssueResult::Skipped { reason } if reason.starts_with("stopped before the end")),
            "{result:?}"
        );
        s.assert_cleaned_up();
        let (status, followup, _) = s.h.status().await;
        assert_eq!((status, followup), (IssueStatus::InProgress, false));
    }

    #[tokio::test]
    async fn a_panic_in_the_runner_fails_the_issue_through_finalize() {
        let s = Stoppable::new(Misbehave::Panic).await;
        let (handle, _stop) = s.spawn();
        let result = handle.await.expect("the boundary catches the panic");
        let IssueResult::Failed { reason } = &result else {
            panic!("{result:?}")
        };
        assert!(
            reason.contains("panicked") && reason.contains("a bug inside the runner's turn"),
            "{reason}"
        );
        assert!(s.locks.held_by(&s.h.agent()).is_empty());
        assert_eq!(s.h.world.lock().unwrap().dropped, 1);
        let (_, followup, notes) = s.h.status().await;
        assert!(followup && notes.contains("panicked"), "{notes}");
    }

    #[tokio::test]
    async fn an_aborted_worker_is_still_finalized() {
        let s = Stoppable::new(Misbehave::Hang).await;
        let (handle, _stop) = s.spawn();
        s.h.hanging.notified().await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        let skipped =
            s.h.events
                .until(|e| matches!(e, Event::IssueSkipped { .. }))
                .await;
        assert!(
            matches!(&skipped, Event::IssueSkipped { reason, .. } if reason.contains("its worker was cancelled")),
            "{skipped:?}"
        );
        s.assert_cleaned_up();
    }
}

/// Runs the issue with these ports and settings, from the start.
async fn run_ports(h: &Harness, ports: &RunnerPorts, config: &RunnerConfig) -> IssueResult {
    run_issue_from(
        &h.issue,
        h.agent(),
        ports,
        config,
        None,
        StopSignal::never(),
    )
    .await
}

/// Runs the issue with `faults` as its line to the run.
async fn run_on_line(
    h: &Harness,
    turns: Vec<Turn>,
    faults: mala_pipeline::FaultLine,
) -> IssueResult {
    let ports = RunnerPorts {
        faults,
        ..h.ports(turns, None)
    };
    run_ports(h, &ports, &Harness::config()).await
}

#[tokio::test]
async fn refused_credentials_give_the_issue_back_untouched_and_tell_the_run() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let refused = Turn {
        fail: Some(AgentErrorKind::Authentication),
        ..Turn::default()
    };
    let result = run_on_line(&h, vec![refused], line).await;
    assert!(
        matches!(&result, IssueResult::Released { reason } if reason.contains("credentials")),
        "{result:?}"
    );
    let issue = h.tracker.show(&h.issue).await.unwrap();
    assert_eq!(issue.status, IssueStatus::Open);
    assert_eq!(issue.assignee.as_deref().unwrap_or_default(), "");
    assert!(issue.labels.is_empty(), "{:?}", issue.labels);
    assert_eq!(issue.notes, "");
    let report = desk.reports.try_recv().unwrap();
    assert_eq!(report.fault, mala_core::EnvFault::Authentication);
    assert!(report.reply.is_none(), "nothing to wait for");
}

#[tokio::test]
async fn a_session_error_of_its_own_is_still_the_issue_s_failure() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let crashed = Turn {
        fail: Some(AgentErrorKind::Protocol),
        ..Turn::default()
    };
    let result = run_on_line(&h, vec![crashed], line).await;
    assert!(matches!(result, IssueResult::Failed { .. }), "{result:?}");
    let (_, followup, notes) = h.status().await;
    assert!(followup && notes.contains("mala: failed"), "{notes}");
    assert!(desk.reports.try_recv().is_err(), "the run is not told");
}

#[tokio::test]
async fn a_limit_waits_for_the_run_then_resumes_the_same_session_and_closes() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let limited = Turn {
        fail: Some(AgentErrorKind::RateLimited { resets_at: None }),
        ..Turn::default()
    };
    let answered = tokio::spawn(async move {
        let report = desk.reports.recv().await.unwrap();
        let fault = report.fault.clone();
        report
            .reply
            .unwrap()
            .send(mala_pipeline::GoOn::Resume)
            .unwrap();
        fault
    });
    let result = run_on_line(&h, vec![limited, honest_turn(&h)], line).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(
        answered.await.unwrap(),
        mala_core::EnvFault::UsageLimit { until: None }
    );
    let resumed = h.world.lock().unwrap().resumed.clone();
    assert_eq!(
        resumed.last().unwrap().as_ref().map(SessionId::as_str),
        Some("fake-session")
    );
}

#[tokio::test]
async fn a_limit_the_run_stops_on_gives_the_issue_back() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let limited = Turn {
        fail: Some(AgentErrorKind::Network),
        ..Turn::default()
    };
    tokio::spawn(async move {
        while let Some(report) = desk.reports.recv().await {
            if let Some(reply) = report.reply {
                reply.send(mala_pipeline::GoOn::GiveBack).unwrap();
            }
        }
    });
    let config = RunnerConfig {
        max_resumes: 0,
        ..Harness::config()
    };
    let ports = RunnerPorts {
        faults: line,
        ..h.ports(vec![limited], None)
    };
    let result = run_ports(&h, &ports, &config).await;
    assert!(
        matches!(&result, IssueResult::Released { reason } if reason.contains("unreachable")),
        "{result:?}"
    );
    let (status, followup, notes) = h.status().await;
    assert_eq!(
        (status, followup, notes.as_str()),
        (IssueStatus::Open, false, "")
    );
}

#[tokio::test]
async fn an_issue_token_budget_cuts_its_turn_mid_way_and_fails_it_saying_so() {
    let h = Harness::new().await;
    let config = RunnerConfig {
        issue_budget: mala_domain::Spend {
            max_cost_usd: None,
            max_tokens: Some(10_000),
        },
        ..Harness::config()
    };
    h.world.lock().unwrap().misbehave = Some(Misbehave::SpendAndHang(12_000));
    let ports = h.ports(vec![honest_turn(&h)], None);
    // The turn never ends by itself: only the budget can end it.
    let result = tokio::time::timeout(Duration::from_secs(20), run_ports(&h, &ports, &config))
        .await
        .expect("the budget cut the turn");
    let IssueResult::Failed { reason } = &result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("this issue's budget was reached"),
        "{reason}"
    );
    assert!(
        reason.contains("12000") || reason.contains("12,000"),
        "{reason}"
    );
    assert_eq!(
        ports.faults.spent().tokens,
        12_000,
        "the run counts what the cut turn used"
    );
}

#[tokio::test]
async fn a_run_token_budget_cuts_a_running_turn_and_gives_the_issue_back() {
    let h = Harness::new().await;
    let (faults, _desk) = mala_pipeline::fault_line(Arc::new(mala_pipeline::RunLedger::new(
        mala_domain::Spend {
            max_cost_usd: None,
            max_tokens: Some(10_000),
        },
    )));
    h.world.lock().unwrap().misbehave = Some(Misbehave::SpendAndHang(12_000));
    let ports = RunnerPorts {
        faults,
        ..h.ports(vec![honest_turn(&h)], None)
    };
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        run_ports(&h, &ports, &Harness::config()),
    )
    .await
    .expect("the run's budget cut the turn");
    assert!(
        matches!(&result, IssueResult::Released { reason } if reason.contains("run's budget")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_issue_over_its_budget_gets_no_more_turns_and_fails_saying_so() {
    let h = Harness::new().await;
    let config = RunnerConfig {
        issue_budget: mala_domain::Spend {
            max_cost_usd: Some(1.0),
            max_tokens: None,
        },
        ..Harness::config()
    };
    // The first turn commits nothing and costs 1.25: no follow-up follows.
    let costly = Turn {
        text: "Still thinking.",
        cost_usd: 1.25,
        ..Turn::default()
    };
    let ports = h.ports(vec![costly, honest_turn(&h)], None);
    let result = run_ports(&h, &ports, &config).await;
    let IssueResult::Failed { reason } = &result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("this issue's budget was reached ($1.25 spent of $1.00)"),
        "{reason}"
    );
    assert_eq!(h.prompts().len(), 1, "no turn after the budget");
    let budgets = h.world.lock().unwrap().session_budgets.clone();
    assert_eq!(
        budgets,
        vec![Some(1.0)],
        "the backend is given what is left"
    );
    assert!(h.events.0.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::BudgetReached { scope, .. } if scope == "issue"
    )));
}

#[tokio::test]
async fn a_reviewer_refused_credentials_gives_the_issue_back_not_a_failure() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let reviewer: Arc<dyn Reviewer> = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![Err(ReviewError::Environment {
            fault: mala_core::EnvFault::Authentication,
            message: "model API error 401: bad key".into(),
        })]),
        asked: Mutex::new(0),
    });
    let ports = RunnerPorts {
        reviewer: Some(reviewer),
        faults: line,
        ..h.ports(vec![honest_turn(&h)], None)
    };
    let result = run_ports(&h, &ports, &Harness::config()).await;
    assert!(
        matches!(&result, IssueResult::Released { reason } if reason.contains("during the review")),
        "{result:?}"
    );
    let (status, followup, notes) = h.status().await;
    assert_eq!(
        (status, followup, notes.as_str()),
        (IssueStatus::Open, false, "")
    );
    assert_eq!(
        desk.reports.try_recv().unwrap().fault,
        mala_core::EnvFault::Authentication
    );
}

#[tokio::test]
async fn a_reviewer_rate_limited_waits_for_the_run_and_is_asked_again() {
    let h = Harness::new().await;
    let (line, mut desk) = mala_pipeline::fault_line(Arc::default());
    let reviewer = Arc::new(ScriptedReviewer {
        answers: Mutex::new(vec![Err(ReviewError::Environment {
            fault: mala_core::EnvFault::UsageLimit { until: None },
            message: "model API error 429".into(),
        })]),
        asked: Mutex::new(0),
    });
    tokio::spawn(async move {
        let report = desk.reports.recv().await.unwrap();
        report
            .reply
            .unwrap()
            .send(mala_pipeline::GoOn::Resume)
            .unwrap();
    });
    let ports = RunnerPorts {
        reviewer: Some(reviewer.clone()),
        faults: line,
        ..h.ports(vec![honest_turn(&h)], None)
    };
    let result = run_ports(&h, &ports, &Harness::config()).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(*reviewer.asked.lock().unwrap(), 2);
}

/// A reviewer whose session, metered in the run's ledger, spends past the
/// run's budget and is cut there.
struct CostlyReviewer(mala_pipeline::Metered);

#[async_trait::async_trait]
impl Reviewer for CostlyReviewer {
    async fn review(
        &self,
        _: mala_core::ReviewRequest,
    ) -> Result<mala_core::ReviewVerdict, ReviewError> {
        struct Quiet;
        impl AgentObserver for Quiet {
            fn on_event(&self, _: &AgentEvent) {}
        }
        let request = SessionRequest::new(mala_core::AgentId::new("review-x"), "/repo");
        // Asked again, it cannot start: the budget is spent.
        let mut session = self
            .0
            .start(request, Arc::new(Quiet))
            .await
            .map_err(|error| ReviewError::Unavailable(error.to_string()))?;
        let outcome = session.turn("review").await.unwrap();
        Err(ReviewError::Failed(format!(
            "the reviewer's turn ended as {:?}",
            outcome.status
        )))
    }
}

/// A backend whose one turn costs $2 and ends at its budget.
fn spending_backend() -> Arc<dyn AgentBackend> {
    let mut backend = mala_core::MockAgentBackend::new();
    backend.expect_start().returning(|_, _| {
        let mut session = mala_core::MockAgentSession::new();
        session.expect_turn().returning(|_| {
            Ok(TurnOutcome {
                status: mala_core::TurnStatus::BudgetReached,
                total_cost_usd: 2.0,
                ..TurnOutcome::completed("")
            })
        });
        Ok(Box::new(session))
    });
    Arc::new(backend)
}

#[tokio::test]
async fn a_review_cut_at_the_run_budget_gives_the_issue_back_not_a_failure() {
    let h = Harness::new().await;
    let ledger = Arc::new(mala_pipeline::RunLedger::new(mala_domain::Spend {
        max_cost_usd: Some(1.0),
        max_tokens: None,
    }));
    let (line, _desk) = mala_pipeline::fault_line(Arc::clone(&ledger));
    let metered = mala_pipeline::Metered::new(spending_backend(), ledger);
    let ports = RunnerPorts {
        reviewer: Some(Arc::new(CostlyReviewer(metered))),
        faults: line,
        ..h.ports(vec![honest_turn(&h)], None)
    };
    let result = run_ports(&h, &ports, &Harness::config()).await;
    assert!(
        matches!(&result, IssueResult::Released { reason } if reason.contains("during this issue's review")),
        "{result:?}"
    );
    let (status, followup, notes) = h.status().await;
    assert_eq!(
        (status, followup, notes.as_str()),
        (IssueStatus::Open, false, "")
    );
}

#[tokio::test]
async fn a_gate_failure_on_a_check_red_before_any_agent_says_so() {
    let h = Harness::new().await;
    let config = RunnerConfig {
        red_baseline: vec!["test".into()],
        ..Harness::config()
    };
    // The agent commits, and its `cargo test` fails, as it did before it began.
    let turn = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 101)],
        commit: Some((h.subject("handle empty input"), vec!["src/parser.rs"])),
        text: "Committed; the tests still fail.",
        ..Turn::default()
    };
    let ports = h.ports(vec![turn], None);
    let result = run_ports(&h, &ports, &config).await;
    let IssueResult::Failed { reason } = &result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("`test` already failed before any agent worked"),
        "{reason}"
    );
    // Without a red baseline the same failure says nothing of the kind.
    let h = Harness::new().await;
    let turn = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 101)],
        commit: Some((h.subject("handle empty input"), vec!["src/parser.rs"])),
        text: "Committed; the tests still fail.",
        ..Turn::default()
    };
    let ports = h.ports(vec![turn], None);
    let IssueResult::Failed { reason } = run_ports(&h, &ports, &Harness::config()).await else {
        panic!()
    };
    assert!(!reason.contains("baseline"), "{reason}");
}

/// Worktree isolation's port, scripted: each landing answers the next of
/// `landings` (landed once they run out).
struct FakeWorkspaces {
    world: Shared,
    landings: Mutex<Vec<Landing>>,
    /// The validation commands each landing was given.
    validated: Mutex<Vec<Vec<String>>>,
    removed: Mutex<Vec<IssueId>>,
    broken: bool,
}

impl FakeWorkspaces {
    fn new(world: &Shared, landings: Vec<Landing>) -> Arc<Self> {
        Arc::new(Self {
            world: Arc::clone(world),
            landings: Mutex::new(landings),
            validated: Mutex::default(),
            removed: Mutex::default(),
            broken: false,
        })
    }
}

#[async_trait]
impl Workspaces for FakeWorkspaces {
    async fn open(&self, issue: &IssueId) -> Result<Workspace, RepoError> {
        if self.broken {
            return Err(RepoError::Git {
                command: "worktree add".into(),
                stderr: "No space left on device".into(),
            });
        }
        Ok(Workspace {
            root: PathBuf::from(format!("/state/worktrees/{issue}")),
            branch: format!("mala/{issue}"),
            target: "main".into(),
            repo: Arc::new(FakeRepo {
                world: Arc::clone(&self.world),
            }),
        })
    }

    async fn land(&self, _: &IssueId, validate: &[CheckCommand]) -> Result<Landing, RepoError> {
        self.validated
            .lock()
            .unwrap()
            .push(validate.iter().map(|c| c.command.clone()).collect());
        let mut landings = self.landings.lock().unwrap();
        Ok(if landings.is_empty() {
            Landing::Landed {
                commit: "landed0001".into(),
                note: None,
            }
        } else {
            landings.remove(0)
        })
    }

    async fn remove(&self, issue: &IssueId) -> Result<(), RepoError> {
        self.removed.lock().unwrap().push(issue.clone());
        Ok(())
    }

    async fn issues(&self) -> Result<Vec<IssueId>, RepoError> {
        Ok(Vec::new())
    }
}

async fn run_isolated(
    h: &Harness,
    turns: Vec<Turn>,
    workspaces: &Arc<FakeWorkspaces>,
) -> IssueResult {
    let ports = RunnerPorts {
        workspaces: Some(Arc::clone(workspaces) as Arc<dyn Workspaces>),
        ..h.ports(turns, None)
    };
    run_ports(h, &ports, &Harness::config()).await
}

#[tokio::test]
async fn in_a_worktree_the_agent_works_there_and_the_issue_closes_once_its_branch_landed() {
    let h = Harness::new().await;
    let workspaces = FakeWorkspaces::new(&h.world, vec![]);
    let result = run_isolated(&h, vec![honest_turn(&h)], &workspaces).await;
    assert_eq!(
        result,
        IssueResult::Closed {
            commit: Some("landed0001".into()),
            marker: None
        }
    );
    assert_eq!(h.status().await.0, IssueStatus::Closed);
    let tree = PathBuf::from(format!("/state/worktrees/{}", h.issue));
    assert_eq!(h.world.lock().unwrap().cwds, vec![tree.clone()]);
    let prompt = &h.prompts()[0];
    assert!(
        prompt.contains(&tree.display().to_string()) && prompt.contains("worktree of your own")
    );
    assert!(!prompt.contains("lock_acquire"), "no locks in a worktree");
    assert_eq!(
        *workspaces.validated.lock().unwrap(),
        vec![vec!["cargo test".to_owned()]]
    );
    assert_eq!(*workspaces.removed.lock().unwrap(), vec![h.issue.clone()]);
    let events = h.events.0.lock().unwrap().clone();
    let landed = events
        .iter()
        .position(|e| matches!(e, Event::Landed { commit, .. } if commit == "landed0001"));
    let closed = events
        .iter()
        .position(|e| matches!(e, Event::IssueClosed { .. }));
    assert!(
        landed.is_some() && landed < closed,
        "landed before closed: {events:?}"
    );
}

#[tokio::test]
async fn a_branch_that_conflicts_goes_back_to_the_agent_with_what_conflicted_then_lands() {
    let h = Harness::new().await;
    let conflict = Landing::Conflict {
        base: "main".into(),
        onto: "feedface0123456789".into(),
        files: vec!["src/parser.rs".into()],
        detail: "CONFLICT (content): Merge conflict in src/parser.rs".into(),
    };
    let workspaces = FakeWorkspaces::new(&h.world, vec![conflict]);
    let resolved = Turn {
        edits: vec!["src/parser.rs"],
        runs: vec![("cargo test", 0)],
        commit: Some((h.subject("resolve the conflict"), vec!["src/parser.rs"])),
        text: "Rebased onto feedface, resolved src/parser.rs, cargo test passes.",
        ..Turn::default()
    };
    let result = run_isolated(&h, vec![honest_turn(&h), resolved], &workspaces).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let prompts = h.prompts();
    assert_eq!(prompts.len(), 2);
    for needle in [
        "could not land on `main`",
        "src/parser.rs",
        "git rebase feedface0123456789",
        "`cargo test`",
    ] {
        assert!(
            prompts[1].contains(needle),
            "missing {needle}: {}",
            prompts[1]
        );
    }
    assert_eq!(workspaces.validated.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_branch_that_fails_on_the_merged_result_past_its_retries_fails_with_the_branch_kept() {
    let h = Harness::new().await;
    let failed = || Landing::Failed {
        base: "main".into(),
        onto: "abc123".into(),
        failure: CheckFailure {
            name: "test".into(),
            command: "cargo test".into(),
            output: "test parser::both ... FAILED".into(),
        },
    };
    let workspaces = FakeWorkspaces::new(&h.world, vec![failed(), failed()]);
    let result = run_isolated(&h, vec![honest_turn(&h), honest_turn(&h)], &workspaces).await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    for needle in [
        "after 1 follow-up(s)",
        "`test` (cargo test) failed",
        "put on `main`",
        "parser::both",
        "mala/",
        "kept for a person",
    ] {
        assert!(reason.contains(needle), "missing {needle}: {reason}");
    }
    assert!(
        workspaces.removed.lock().unwrap().is_empty(),
        "the worktree stays"
    );
    assert_ne!(h.status().await.0, IssueStatus::Closed);
}

#[tokio::test]
async fn a_worktree_that_cannot_be_made_gives_the_issue_back_untouched() {
    let h = Harness::new().await;
    let workspaces = Arc::new(FakeWorkspaces {
        broken: true,
        ..Arc::into_inner(FakeWorkspaces::new(&h.world, vec![])).unwrap()
    });
    let result = run_isolated(&h, vec![honest_turn(&h)], &workspaces).await;
    let IssueResult::Released { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("could not make the issue's worktree") && reason.contains("No space left"),
        "{reason}"
    );
    assert!(h.prompts().is_empty(), "no agent started");
    let (status, followup, _) = h.status().await;
    assert_eq!(status, IssueStatus::Open);
    assert!(!followup);
}

#[tokio::test]
async fn a_worktree_with_uncommitted_files_goes_back_to_be_put_right_before_it_lands() {
    let h = Harness::new().await;
    let unready = Landing::Unready {
        what:
            "files in your worktree are not committed (src/new.rs): commit what belongs to the work"
                .into(),
    };
    let workspaces = FakeWorkspaces::new(&h.world, vec![unready]);
    let result = run_isolated(&h, vec![honest_turn(&h), honest_turn(&h)], &workspaces).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let prompts = h.prompts();
    assert!(
        prompts[1].contains("src/new.rs") && prompts[1].contains("put your worktree right"),
        "{}",
        prompts[1]
    );
    assert!(
        !prompts[1].contains("git rebase"),
        "nothing to rebase onto: {}",
        prompts[1]
    );
}
