//! One issue end to end with the real br, the real claude binary and the
//! mock model: the honest path closes the issue, the gate-retry path closes
//! it on attempt 2, and committing without running the checks leaves it open
//! with needs-followup and a readable reason. Then three issues at once.
#![allow(clippy::unwrap_used)] // the harness panics to fail the test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mala_core::{AgentId, Event, EventSink, IssueId, IssueStatus, LockTable};
use mala_domain::RequiredCommand;
use mala_infra::{
    BrTracker, ClaudeBackend, ClaudeConfig, FileLockTable, GitRepo, LockingGuard, SystemClock,
    TreeWatch,
};
use mala_pipeline::{IssueResult, RunnerConfig, RunnerPorts, run_issue};
use mala_testkit::{
    Block, Br, ClaudeHarness, Conversation, MockAnthropic, NewIssue, Reply, Script, TempRepo, Tool,
    require_tool,
};
use serde_json::json;

/// How the scripted model behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Agent {
    Honest,
    /// Skips the check, then runs it when the gate asks.
    ChecksOnRequest,
    /// Never runs the check.
    NeverChecks,
}

const CHECK: &str = "grep -q fixed src/app.txt";

/// The issue an agent works on and the file its description names
/// (`FILE=…`), from the first prompt's text.
pub(crate) fn task_of(first_prompt: &str) -> (String, String) {
    let after = |marker: &str, default: &str| {
        first_prompt
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or(default)
            .to_owned()
    };
    (
        after("working on issue ", "x"),
        after("FILE=", "src/app.txt"),
    )
}

/// The model: lock, write, (check), commit; on a gate follow-up, check.
fn script(repo: PathBuf, agent: Agent) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let first = conversation.user_texts().join("\n");
        if first.contains("You review a change") {
            // The reviewer: one blocking finding on the first look, none once a second commit exists.
            let commits = first
                .split("oldest first: ")
                .nth(1)
                .and_then(|r| r.lines().next())
                .unwrap_or_default();
            let answer = if commits.contains(',') {
                r#"{"findings": [{"priority": 3, "title": "Consider a comment", "body": "why fixed", "file": "src/app.txt", "line_start": 1, "line_end": 1}]}"#
            } else {
                r#"{"findings": [{"priority": 1, "title": "Missing newline handling", "body": "handle it", "file": "src/app.txt", "line_start": 1, "line_end": 1}]}"#
            };
            return Reply::Message(vec![Block::Text(answer.to_owned())]);
        }
        let (issue, file) = task_of(&first);
        let followups = conversation
            .user_texts()
            .iter()
            .filter(|t| t.contains("is not done yet"))
            .count();
        let check = format!("grep -q fixed {file}");
        let mut plan = vec![
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            (
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\n"}),
            ),
        ];
        if agent == Agent::Honest {
            plan.push(("Bash", json!({"command": check})));
        }
        plan.push((
            "mcp__mala__commit",
            json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
        ));
        if followups > 0 && agent == Agent::ChecksOnRequest {
            plan.push(("Bash", json!({"command": check})));
        }
        if conversation
            .user_texts()
            .iter()
            .any(|t| t.contains("A reviewer looked at your commits"))
        {
            plan.push((
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\nwith newline handling\n"}),
            ));
            plan.push(("Bash", json!({"command": check})));
            plan.push((
                "mcp__mala__commit",
                json!({"paths": [file], "message": format!("bd-{issue}: address the review")}),
            ));
        }
        let done = conversation.tool_uses_so_far();
        match plan.get(done) {
            Some((name, input)) => Reply::Message(vec![
                Block::Text(format!("step {}", done + 1)),
                Block::ToolUse {
                    name: (*name).to_owned(),
                    input: input.clone(),
                },
            ]),
            None => Reply::Message(vec![Block::Text(format!(
                "Fixed {file}, checked it and committed."
            ))]),
        }
    })
}

#[derive(Default)]
pub(crate) struct Events(pub(crate) Mutex<Vec<Event>>);

impl EventSink for Events {
    fn emit(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

pub(crate) struct Setup {
    pub(crate) events: Arc<Events>,
    pub(crate) repo: TempRepo,
    pub(crate) br: Br,
    pub(crate) ports: RunnerPorts,
    pub(crate) config: RunnerConfig,
    pub(crate) mock: MockAnthropic,
    harness: ClaudeHarness,
    state: tempfile::TempDir,
}

fn setup(claude: &Path, br_binary: &Path, agent: Agent, check: &str) -> Setup {
    setup_scripted(claude, br_binary, |repo| script(repo, agent), check)
}

/// The runner's real ports (br, claude with the guard, the lock table, git
/// and the working-tree watch) around a model that follows `script`.
pub(crate) fn setup_scripted(
    claude: &Path,
    br_binary: &Path,
    script: impl FnOnce(PathBuf) -> Script,
    check: &str,
) -> Setup {
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    let br = Br::init(br_binary, repo.path(), "pl");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "beads"]);
    let mock = MockAnthropic::start(script(repo.path().canonicalize().unwrap()));
    let harness = ClaudeHarness::new(claude, &mock);
    let state = tempfile::tempdir().unwrap();
    let mut claude_config = ClaudeConfig::new(claude, state.path());
    claude_config.model = Some("claude-sonnet-4-5".into());
    claude_config.clear_env = true;
    claude_config.env = harness.env();
    claude_config.turn_timeout = Duration::from_secs(120);
    let locks: Arc<dyn LockTable> =
        Arc::new(FileLockTable::new(state.path().join("locks"), repo.path()).unwrap());
    let git = Arc::new(GitRepo::new(repo.path()));
    let backend = ClaudeBackend::new(claude_config)
        .with_guard(Arc::new(LockingGuard::new(
            repo.path(),
            Arc::clone(&locks),
            vec![],
        )))
        .with_locks(Arc::clone(&locks))
        .with_git(Arc::clone(&git))
        .with_tree_watch(Arc::new(
            TreeWatch::new(repo.path(), Some(Arc::clone(&locks)))
                .with_validation(vec![check.to_owned()]),
        ));
    let tracker = Arc::new(BrTracker::new(
        br_binary,
        repo.path(),
        Arc::new(SystemClock),
    ));
    let events = Arc::new(Events::default());
    let ports = RunnerPorts {
        tracker,
        backend: Arc::new(backend),
        repo: git,
        reviewer: None,
        locks: Some(locks),
        events: events.clone(),
        clock: Arc::new(SystemClock),
        session_end: None,
        faults: mala_pipeline::FaultLine::detached(),
        workspaces: None,
    };
    let config = RunnerConfig {
        issue_budget: mala_domain::Spend::default(),
        red_baseline: Vec::new(),
        repo_root: repo.path().canonicalize().unwrap(),
        actor: "mala:e2e-run".into(),
        required: vec![RequiredCommand {
            name: "check".into(),
            command: check.into(),
            allow_fail: false,
        }],
        code_patterns: vec!["**/*.txt".into()],
        config_files: vec![],
        setup_files: vec![],
        max_gate_attempts: 3,
        max_review_attempts: 2,
        max_resumes: 1,
        resume_backoff: Duration::from_millis(100),
        retry_failed: 1,
        record_dir: state.path().join("sessions"),
        blocking_priority: 1,
        rerun: false,
        track_review_issues: true,
        protected_files: vec![],
        merge_validate: true,
        merge_retries: 2,
    };
    Setup {
        events,
        repo,
        br,
        ports,
        config,
        mock,
        harness,
        state,
    }
}

impl Setup {
    /// Runs one issue end to end under the run's usual agent name.
    pub(crate) async fn run(&self, issue: &IssueId) -> IssueResult {
        run_issue(
            issue,
            AgentId::new(format!("{issue}@e2e-run")),
            &self.ports,
            &self.config,
        )
        .await
    }
}

pub(crate) fn create_issue(br: &Br, title: &str, file: &str) -> IssueId {
    IssueId::new(br.create(&NewIssue {
        title,
        priority: 2,
        description: &format!("Write the word fixed into FILE={file} and commit it."),
        ..NewIssue::default()
    }))
}

pub(crate) async fn status(setup: &Setup, issue: &IssueId) -> (IssueStatus, bool, String) {
    let shown = setup.ports.tracker.show(issue).await.unwrap();
    let followup = shown.has_label("needs-followup");
    (shown.status, followup, shown.notes)
}

#[tokio::test]
async fn the_honest_path_closes_the_issue() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup(&claude, &br, Agent::Honest, CHECK);
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    assert!(
        matches!(
            result,
            IssueResult::Closed {
                commit: Some(_),
                ..
            }
        ),
        "{result:?}"
    );
    assert_eq!(status(&setup, &issue).await.0, IssueStatus::Closed);
    let log = setup.repo.git(&["log", "--format=%s", "-n", "1"]);
    assert_eq!(log.trim(), format!("bd-{issue}: fix src/app.txt"));
}

#[tokio::test]
async fn the_gate_retry_path_closes_the_issue_on_attempt_two() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup(&claude, &br, Agent::ChecksOnRequest, CHECK);
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(status(&setup, &issue).await.0, IssueStatus::Closed);
    let gates: Vec<(u32, bool)> = setup
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::GateChecked {
                attempt, passed, ..
            } => Some((*attempt, *passed)),
            _ => None,
        })
        .collect();
    assert_eq!(gates, vec![(1, false), (2, true)]);
}

#[tokio::test]
async fn committing_without_the_checks_leaves_the_issue_open_with_a_reason() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup(&claude, &br, Agent::NeverChecks, CHECK);
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains("`check` (grep -q fixed src/app.txt) was never run"),
        "{reason}"
    );
    let (issue_status, followup, notes) = status(&setup, &issue).await;
    assert!(followup, "needs-followup is set");
    assert!(
        notes.contains("was never run") && notes.contains("Session record:"),
        "{notes}"
    );
    assert_eq!(
        issue_status,
        IssueStatus::Open,
        "open again, for one more try in a later run"
    );
}

#[tokio::test]
async fn three_issues_at_once_all_close_with_their_own_commits() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = Arc::new(setup(&claude, &br, Agent::Honest, CHECK));
    let mut tasks = Vec::new();
    for n in 1..=3 {
        let file = format!("src/f{n}.txt");
        let issue = create_issue(&setup.br, &format!("Fix f{n}"), &file);
        let mut config = setup.config.clone();
        config.required[0].command = format!("grep -q fixed {file}");
        let setup = Arc::clone(&setup);
        tasks.push(tokio::spawn(async move {
            let result = run_issue(
                &issue,
                AgentId::new(format!("{issue}@e2e-run")),
                &setup.ports,
                &config,
            )
            .await;
            (issue, file, result)
        }));
    }
    for task in tasks {
        let (issue, file, result) = task.await.unwrap();
        assert!(
            matches!(result, IssueResult::Closed { .. }),
            "{issue}: {result:?}"
        );
        assert_eq!(status(&setup, &issue).await.0, IssueStatus::Closed);
        let files = setup.repo.git(&[
            "log",
            "--format=",
            "--name-only",
            "--grep",
            &format!("^bd-{issue}: "),
        ]);
        assert_eq!(
            files.trim(),
            file,
            "{issue}'s commit holds its own file only"
        );
    }
}

#[tokio::test]
async fn a_blocking_review_sends_the_agent_back_and_advisories_become_a_tracking_issue() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let mut setup = setup(&claude, &br, Agent::Honest, CHECK);
    let reviewer_backend = ClaudeBackend::new({
        let mut config = ClaudeConfig::new(&claude, setup.state.path().join("reviewer"));
        config.model = Some("claude-sonnet-4-5".into());
        config.clear_env = true;
        config.env = setup.harness.env();
        config
    });
    setup.ports.reviewer = Some(Arc::new(mala_pipeline::AgentReviewer::new(
        Arc::new(reviewer_backend),
        Arc::clone(&setup.ports.tracker),
        &setup.config.repo_root,
    )));
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let reviews: Vec<(u32, usize, usize)> = setup
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Reviewed {
                attempt,
                blocking,
                advisory,
                ..
            } => Some((*attempt, *blocking, *advisory)),
            _ => None,
        })
        .collect();
    assert_eq!(reviews, vec![(1, 1, 0), (2, 0, 1)]);
    let tracking = setup
        .ports
        .tracker
        .find_by_label(&format!("source:{issue}"))
        .await
        .unwrap();
    assert_eq!(tracking.len(), 1);
    assert!(
        tracking[0].title.contains("1 non-blocking finding"),
        "{}",
        tracking[0].title
    );
    assert_eq!(status(&setup, &issue).await.0, IssueStatus::Closed);
}
