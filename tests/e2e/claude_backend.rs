//! The Claude Code backend against the real `claude` binary and the Rust
//! mock of the model API, offline.
#![allow(clippy::unwrap_used)] // the harness panics to fail the test

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mala_core::{
    AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession, LockTable, SessionRequest,
    TurnStatus,
};
use mala_infra::{ClaudeBackend, ClaudeConfig, FileLockTable, LockingGuard};
use mala_testkit::{
    Block, ClaudeHarness, MockAnthropic, Reply, Script, Step, TempRepo, Tool, require_tool,
};
use serde_json::json;

/// Collects events; blocks the first `stop_blocks` attempts to stop.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<AgentEvent>>,
    stop_blocks: Mutex<u32>,
}

impl AgentObserver for Recorder {
    fn on_event(&self, event: &AgentEvent) {
        self.events.lock().unwrap().push(event.clone());
    }

    fn stop_feedback(&self) -> Option<String> {
        let mut left = self.stop_blocks.lock().unwrap();
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some("mala: run the tests before you stop".to_owned())
    }
}

impl Recorder {
    fn events(&self) -> Vec<AgentEvent> {
        self.events.lock().unwrap().clone()
    }
}

struct Setup {
    harness: ClaudeHarness,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(binary: &Path, mock: &MockAnthropic) -> Self {
        Self {
            harness: ClaudeHarness::new(binary, mock),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> ClaudeConfig {
        let mut config = ClaudeConfig::new(self.harness.binary(), self.state.path());
        config.model = Some("claude-sonnet-4-5".into());
        config.clear_env = true;
        config.env = self.harness.env();
        config.turn_timeout = Duration::from_secs(60);
        config
    }
}

fn request(agent: &str, repo: &TempRepo) -> SessionRequest {
    SessionRequest::new(AgentId::new(agent), repo.path())
}

#[tokio::test]
async fn a_bash_call_runs_and_its_evidence_is_recorded() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::bash("echo hello > out.txt"),
        Step::bash("exit 3"),
        Step::Text("all done".into()),
    ]));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let recorder = Arc::new(Recorder::default());
    let backend = ClaudeBackend::new(setup.config());
    let mut session = backend
        .start_session(request("m-1@r", &repo), recorder.clone())
        .await
        .unwrap();
    let outcome = session.turn("do it").await.unwrap();
    assert_eq!(outcome.status, TurnStatus::Completed);
    assert_eq!(outcome.final_text, "all done");
    assert!(outcome.session_id.is_some());
    assert_eq!(session.session_id(), outcome.session_id);
    assert_eq!(
        std::fs::read_to_string(repo.path().join("out.txt")).unwrap(),
        "hello\n"
    );
    let runs: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::CommandRan { run } => Some(run),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].command, "echo hello > out.txt");
    assert_eq!((runs[0].exit_code, runs[0].failed), (Some(0), false));
    assert!(runs[0].started_at.is_some_and(|s| s <= runs[0].ended_at));
    assert_eq!(runs[1].command, "exit 3");
    assert!(runs[1].failed, "{:?}", runs[1]);
    assert_eq!(runs[1].exit_code, Some(3), "{:?}", runs[1]);
    session.close().await.unwrap();
    let record = std::fs::read_to_string(setup.state.path().join("sessions/m-1@r.jsonl")).unwrap();
    assert!(record.contains("\"dir\":\"out\"") && record.contains("\"type\":\"result\""));
    assert!(record.contains("command_ran"));
}

#[tokio::test]
async fn the_guard_denies_a_destructive_command_and_the_agent_sees_why() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::bash("git reset --hard"),
        Step::Text("ok".into()),
    ]));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    std::fs::write(repo.path().join("keep.txt"), "uncommitted work\n").unwrap();
    let locks: Arc<dyn LockTable> =
        Arc::new(FileLockTable::new(setup.state.path().join("locks"), repo.path()).unwrap());
    let guard = Arc::new(LockingGuard::new(repo.path(), Arc::clone(&locks), vec![]));
    let backend = ClaudeBackend::new(setup.config())
        .with_guard(guard)
        .with_locks(locks);
    let recorder = Arc::new(Recorder::default());
    let mut session = backend
        .start_session(request("m-2@r", &repo), recorder.clone())
        .await
        .unwrap();
    let outcome = session.turn("clean up").await.unwrap();
    session.close().await.unwrap();
    assert_eq!(outcome.status, TurnStatus::Completed);
    assert!(recorder.events().iter().any(|e| matches!(e, AgentEvent::ToolDenied { tool, reason } if tool == "Bash" && reason.contains("git reset"))));
    // The model was told why.
    let results: Vec<(bool, String)> = mock
        .requests()
        .last()
        .map(|r| mala_testkit::Conversation { body: &r.body }.tool_results())
        .unwrap();
    assert!(
        results
            .iter()
            .any(|(err, text)| *err && text.contains("git reset rewrites")),
        "{results:?}"
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("keep.txt")).unwrap(),
        "uncommitted work\n"
    );
}

#[tokio::test]
async fn a_command_in_the_background_is_refused_so_its_status_and_effects_stay_seen() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::tool(
            "Bash",
            json!({"command": "touch made-in-background", "run_in_background": true}),
        ),
        Step::Text("ok".into()),
    ]));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let locks: Arc<dyn LockTable> =
        Arc::new(FileLockTable::new(setup.state.path().join("locks"), repo.path()).unwrap());
    let guard = Arc::new(
        LockingGuard::new(repo.path(), Arc::clone(&locks), vec![]).without_lock_enforcement(),
    );
    let backend = ClaudeBackend::new(setup.config()).with_guard(guard);
    let recorder = Arc::new(Recorder::default());
    let mut session = backend
        .start_session(request("m-3@r", &repo), recorder.clone())
        .await
        .unwrap();
    session.turn("start it").await.unwrap();
    session.close().await.unwrap();
    let results: Vec<(bool, String)> = mock
        .requests()
        .last()
        .map(|r| mala_testkit::Conversation { body: &r.body }.tool_results())
        .unwrap();
    assert!(
        results
            .iter()
            .any(|(err, text)| *err && text.contains("without run_in_background")),
        "{results:?}"
    );
    assert!(!repo.path().join("made-in-background").exists());
}

#[tokio::test]
async fn locks_round_trip_through_the_in_process_mcp_server() {
    let binary = require_tool!(Tool::Claude);
    // The Write paths must be absolute, so build the script once the repo exists.
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    let target = repo.path().join("src/a.rs").display().to_string();
    let other = repo.path().join("src/b.rs").display().to_string();
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::tool(
            "mcp__mala__lock_acquire",
            json!({"filepaths": ["src/a.rs"]}),
        ),
        Step::tool(
            "Write",
            json!({"file_path": target, "content": "fn a() {}\n"}),
        ),
        Step::tool("Write", json!({"file_path": other, "content": "nope\n"})),
        Step::tool("mcp__mala__lock_release", json!({"all": true})),
        Step::Text("done".into()),
    ]));
    let setup = Setup::new(&binary, &mock);
    let locks: Arc<dyn LockTable> =
        Arc::new(FileLockTable::new(setup.state.path().join("locks"), repo.path()).unwrap());
    let guard = Arc::new(LockingGuard::new(repo.path(), Arc::clone(&locks), vec![]));
    let backend = ClaudeBackend::new(setup.config())
        .with_guard(guard)
        .with_locks(Arc::clone(&locks));
    let recorder = Arc::new(Recorder::default());
    let agent = AgentId::new("m-3@r");
    let mut session = backend
        .start_session(request("m-3@r", &repo), recorder.clone())
        .await
        .unwrap();
    let outcome = session.turn("edit a.rs").await.unwrap();
    session.close().await.unwrap();
    assert_eq!(outcome.status, TurnStatus::Completed);
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/a.rs")).unwrap(),
        "fn a() {}\n"
    );
    assert!(
        !repo.path().join("src/b.rs").exists(),
        "the unlocked write was refused"
    );
    let edits: Vec<String> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::FileEdited { edit } => Some(edit.path),
            _ => None,
        })
        .collect();
    assert_eq!(edits, vec![target]);
    let results = mala_testkit::Conversation {
        body: &mock.requests().last().unwrap().body,
    }
    .tool_results();
    assert!(
        results[0].1.contains("\"all_acquired\":true"),
        "{results:?}"
    );
    assert!(results[3].1.contains("\"count\":1"), "{results:?}");
    assert!(locks.held_by(&agent).is_empty());
}

#[tokio::test]
async fn a_stop_hook_block_makes_the_agent_take_another_step() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::directives());
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let recorder = Arc::new(Recorder {
        stop_blocks: Mutex::new(1),
        ..Recorder::default()
    });
    let backend = ClaudeBackend::new(setup.config());
    let mut session = backend
        .start_session(request("m-4@r", &repo), recorder.clone())
        .await
        .unwrap();
    let outcome = session.turn("finish up").await.unwrap();
    session.close().await.unwrap();
    assert_eq!(outcome.status, TurnStatus::Completed);
    assert!(
        outcome.final_text.contains("run the tests before you stop"),
        "{}",
        outcome.final_text
    );
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.path().starts_with("/v1/messages"))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_second_turn_and_a_resumed_process_continue_the_conversation() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::from_fn(|c| {
        Reply::Message(vec![Block::Text(format!(
            "heard {} user messages",
            c.user_texts().len()
        ))])
    }));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let backend = ClaudeBackend::new(setup.config());
    let recorder = Arc::new(Recorder::default());
    let mut session = backend
        .start_session(request("m-5@r", &repo), recorder.clone())
        .await
        .unwrap();
    let first = session.turn("first prompt").await.unwrap();
    let second = session.turn("second prompt").await.unwrap();
    assert_eq!(first.session_id, second.session_id);
    assert!(second.total_cost_usd >= first.total_cost_usd);
    session.close().await.unwrap();

    let mut resumed_request = request("m-5@r2", &repo);
    resumed_request.resume = first.session_id.clone();
    let mut resumed = backend
        .start_session(resumed_request, recorder)
        .await
        .unwrap();
    let third = resumed.turn("third prompt").await.unwrap();
    resumed.close().await.unwrap();
    assert_eq!(third.status, TurnStatus::Completed);
    let last = mock.requests().last().unwrap().body.to_string();
    for prompt in ["first prompt", "second prompt", "third prompt"] {
        assert!(
            last.contains(prompt),
            "the resumed conversation lost {prompt}"
        );
    }
}

#[tokio::test]
async fn an_overloaded_model_is_a_retryable_error() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::from_fn(|_| Reply::HttpError(529)));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let backend = ClaudeBackend::new(setup.config());
    let mut session = backend
        .start_session(request("m-6@r", &repo), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let err = session.turn("hello").await.unwrap_err();
    session.close().await.unwrap();
    assert!(
        matches!(err.kind, AgentErrorKind::Overloaded { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_interrupt_ends_the_turn_and_the_idle_timer_waits_for_running_tools() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::bash("sleep 4 && echo slept"),
        Step::bash("sleep 60"),
    ]));
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let mut config = setup.config();
    // Shorter than the first command: it must not fire while the command runs.
    config.idle_timeout = Some(Duration::from_secs(2));
    let backend = ClaudeBackend::new(config);
    let recorder = Arc::new(Recorder::default());
    let mut session = backend
        .start_session(request("m-7@r", &repo), recorder.clone())
        .await
        .unwrap();
    let interrupter = session.interrupter();
    let events = recorder.clone();
    tokio::spawn(async move {
        // Interrupt once the second (long) command is running.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = events
                .events()
                .iter()
                .filter(|e| matches!(e, AgentEvent::ToolUse { .. }))
                .count();
            if started >= 2 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = interrupter.interrupt().await;
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(40), session.turn("sleep"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, TurnStatus::Interrupted);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(recorder.events().iter().any(|e| matches!(e, AgentEvent::CommandRan { run } if run.command.starts_with("sleep 4") && !run.failed)));
    session.close().await.unwrap();
}

#[tokio::test]
async fn eight_sessions_run_in_parallel() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::directives());
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    let backend = ClaudeBackend::new(setup.config());
    let mut tasks = Vec::new();
    for n in 0..8 {
        let backend = backend.clone();
        let request = request(&format!("m-{n}@par"), &repo);
        tasks.push(tokio::spawn(async move {
            let recorder = Arc::new(Recorder::default());
            let mut session = backend.start_session(request, recorder).await.unwrap();
            let prompt = format!("MOCK_TOOL Bash {{\"command\": \"echo {n} > file-{n}.txt\"}}");
            let outcome = session.turn(&prompt).await.unwrap();
            session.close().await.unwrap();
            outcome
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, TurnStatus::Completed);
    }
    for n in 0..8 {
        assert_eq!(
            std::fs::read_to_string(repo.path().join(format!("file-{n}.txt"))).unwrap(),
            format!("{n}\n")
        );
    }
}

#[tokio::test]
async fn a_missing_binary_cannot_start_and_says_how_to_install() {
    let state = tempfile::tempdir().unwrap();
    let config = ClaudeConfig::new("/nonexistent/claude", state.path());
    let err = mala_infra::check_claude(&config).await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::CouldNotStart);
    assert!(err.message.contains("npm install"), "{err}");
    let repo = TempRepo::new();
    let err = ClaudeBackend::new(config)
        .start_session(request("m-9@r", &repo), Arc::new(Recorder::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::CouldNotStart);
}

#[tokio::test]
async fn three_agents_commit_at_the_same_time_through_the_commit_tool() {
    let binary = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::directives());
    let setup = Setup::new(&binary, &mock);
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    let locks: Arc<dyn LockTable> =
        Arc::new(FileLockTable::new(setup.state.path().join("locks"), repo.path()).unwrap());
    let guard = Arc::new(LockingGuard::new(repo.path(), Arc::clone(&locks), vec![]));
    let git = Arc::new(mala_infra::GitRepo::new(repo.path()));
    let backend = ClaudeBackend::new(setup.config())
        .with_guard(guard)
        .with_locks(locks)
        .with_git(git);
    let mut tasks = Vec::new();
    for n in 1..=3 {
        let backend = backend.clone();
        let file = repo.path().join(format!("src/f{n}.rs"));
        let request = request(&format!("m-{n}@three"), &repo);
        tasks.push(tokio::spawn(async move {
            let prompt = [
                format!("MOCK_TOOL mcp__mala__lock_acquire {}", json!({"filepaths": [format!("src/f{n}.rs")]})),
                format!("MOCK_TOOL Write {}", json!({"file_path": file, "content": format!("pub fn f{n}() {{}}\n")})),
                format!(
                    "MOCK_TOOL mcp__mala__commit {}",
                    json!({"paths": [format!("src/f{n}.rs")], "message": format!("bd-m-{n}: add f{n}")})
                ),
            ]
            .join("\n");
            let recorder = Arc::new(Recorder::default());
            let mut session = backend.start_session(request, recorder.clone()).await.unwrap();
            let outcome = session.turn(&prompt).await.unwrap();
            session.close().await.unwrap();
            let committed = recorder.events().into_iter().any(|e| {
                matches!(e, AgentEvent::ToolResult { is_error: false, content, .. } if content.contains("commit") && content.contains("paths"))
            });
            (outcome.status, committed)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), (TurnStatus::Completed, true));
    }
    for n in 1..=3 {
        let files = repo.git(&[
            "log",
            "--format=",
            "--name-only",
            "--grep",
            &format!("^bd-m-{n}: "),
        ]);
        assert_eq!(
            files.trim(),
            format!("src/f{n}.rs"),
            "agent {n}'s commit holds its own file only"
        );
    }
    assert_eq!(repo.git(&["status", "--porcelain"]).trim(), "");
}
