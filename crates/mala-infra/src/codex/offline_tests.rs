//! The pinned `codex app-server`, offline against the testkit's Responses
//! mock: what mala will build the backend on, shown with the real binary.

use std::path::Path;
use std::time::Duration;

use mala_testkit::{MockResponses, ResponsesReply, ResponsesScript, Tool};
use serde_json::{Value, json};

use super::rpc::Inbound;
use super::server::{AppServer, AppServerCommand};

/// The app-server, with a private home and the mock as its model provider.
fn offline(binary: &Path, mock: &MockResponses, home: &Path) -> AppServerCommand {
    let mut command = AppServerCommand::new(binary);
    let provider = [
        ("model_provider", "\"mock\"".to_owned()),
        ("model_providers.mock.name", "\"mock\"".to_owned()),
        (
            "model_providers.mock.base_url",
            format!("\"{}/v1\"", mock.url()),
        ),
        ("model_providers.mock.wire_api", "\"responses\"".to_owned()),
        (
            "model_providers.mock.env_key",
            "\"MOCK_API_KEY\"".to_owned(),
        ),
        ("model_providers.mock.request_max_retries", "0".to_owned()),
        ("model_providers.mock.stream_max_retries", "0".to_owned()),
    ];
    command
        .settings
        .extend(provider.map(|(key, value)| (key.to_owned(), value)));
    command.clear_env = true;
    command.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), home.display().to_string()),
        (
            "CODEX_HOME".into(),
            home.join("codex").display().to_string(),
        ),
        ("MOCK_API_KEY".into(), "mock-key".into()),
        // Anything that tries another host meets the mock's refusal.
        ("HTTPS_PROXY".into(), mock.url()),
        ("HTTP_PROXY".into(), mock.url()),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
    ];
    std::fs::create_dir_all(home.join("codex")).unwrap();
    command
}

/// The model the tests name (the mock answers any).
fn gpt() -> super::session::ThreadSettings {
    super::session::ThreadSettings {
        model: Some("gpt-5.5".to_owned()),
        ..super::session::ThreadSettings::default()
    }
}

/// Starts a thread in `repo` whose every command and file change asks
/// first, and a turn on it; returns the server.
async fn asking_turn(command: &AppServerCommand, repo: &Path) -> AppServer {
    let server = AppServer::start(command, repo).unwrap();
    server.initialize(Duration::from_secs(30)).await.unwrap();
    let started = server
        .rpc
        .request(
            "thread/start",
            json!({
                "cwd": repo, "model": "gpt-5.5",
                "approvalPolicy": "untrusted", "sandbox": "danger-full-access",
            }),
        )
        .await
        .unwrap();
    let thread = started["thread"]["id"].as_str().unwrap().to_owned();
    server
        .rpc
        .request(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "make the file"}]}),
        )
        .await
        .unwrap();
    server
}

/// Answers every approval request with `decision` (checking first that the
/// command has not run) until the turn completes; the turn's status and
/// the completed command items.
async fn answer_until_done(
    server: &mut AppServer,
    decision: &str,
    made: &Path,
) -> (String, Vec<Value>) {
    let mut commands = Vec::new();
    let within = Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout(within, server.inbox.recv()).await;
        match next.expect("the turn goes on").expect("the server runs") {
            Inbound::Request { id, method, params } => {
                assert_eq!(method, "item/commandExecution/requestApproval", "{params}");
                assert!(!made.exists(), "nothing ran before mala answered");
                server.rpc.respond(id, json!({"decision": decision}));
            }
            Inbound::Notification { method, params }
                if method == "item/completed" && params["item"]["type"] == "commandExecution" =>
            {
                commands.push(params["item"].clone());
            }
            Inbound::Notification { method, params } if method == "turn/completed" => {
                let status = params["turn"]["status"].as_str().unwrap_or_default();
                let error = &params["turn"]["error"];
                if error.is_null() {
                    return (status.to_owned(), commands);
                }
                return (format!("{status}: {error}"), commands);
            }
            _ => {}
        }
    }
}

async fn run_with(decision: &str) -> Option<(bool, String, Vec<Value>, MockResponses)> {
    let binary = mala_testkit::tool_or_skip(Tool::Codex, module_path!())?;
    let mock = MockResponses::start(ResponsesScript::steps(
        vec![ResponsesReply::shell("touch made-by-codex.txt")],
        "done",
    ));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let made = repo.join("made-by-codex.txt");
    let mut server = asking_turn(&command, &repo).await;
    let (status, commands) = answer_until_done(&mut server, decision, &made).await;
    server.close(Duration::from_secs(20)).await;
    Some((made.exists(), status, commands, mock))
}

#[tokio::test]
async fn a_declined_command_never_runs_and_the_model_is_told() {
    let Some((made, status, commands, mock)) = run_with("decline").await else {
        return;
    };
    assert!(!made, "the declined command did not run");
    assert_eq!(status, "completed");
    assert!(
        commands.iter().all(|c| c["status"] == "declined"),
        "{commands:?}"
    );
    let last = mock.requests().last().cloned().unwrap();
    let outputs = mala_testkit::ResponsesConversation::tool_outputs_of(&last.body);
    assert!(
        outputs.iter().any(|o| o.contains("rejected")),
        "the model hears of the refusal: {outputs:?}"
    );
    assert!(
        mock.requests().iter().all(|r| r.path() == "/v1/responses"),
        "no other traffic: {:?}",
        mock.requests()
    );
}

#[tokio::test]
async fn an_accepted_command_runs_and_its_exit_code_is_reported() {
    let Some((made, status, commands, _mock)) = run_with("accept").await else {
        return;
    };
    assert!(made, "the accepted command ran");
    assert_eq!(status, "completed");
    let ran = commands.first().expect("a completed command item");
    assert_eq!(ran["exitCode"], 0, "{ran}");
    assert!(
        ran["command"]
            .as_str()
            .unwrap_or_default()
            .contains("touch made-by-codex.txt"),
        "{ran}"
    );
}

/// A guard that refuses any call whose input mentions `word`.
struct Refusing(&'static str);

impl mala_core::ToolGuard for Refusing {
    fn check(
        &self,
        _: &mala_core::AgentId,
        _: &str,
        input: &Value,
    ) -> Result<(), mala_core::Refusal> {
        if input.to_string().contains(self.0) {
            return Err(mala_core::Refusal(format!("no {} here", self.0)));
        }
        Ok(())
    }
}

/// Every event the session reports.
#[derive(Default)]
struct Events(std::sync::Mutex<Vec<mala_core::AgentEvent>>);

impl mala_core::AgentObserver for Events {
    fn on_event(&self, event: &mala_core::AgentEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// A session of the pinned binary against `script`, its guard refusing
/// `refused`, in a fresh repository.
struct Fixture {
    session: super::session::CodexSession,
    events: Arc<Events>,
    mock: MockResponses,
    repo: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

use std::sync::Arc;

async fn fixture(script: ResponsesScript, refused: &'static str) -> Option<Fixture> {
    let around = super::session::Surroundings {
        guard: Some(Arc::new(Refusing(refused))),
        ..super::session::Surroundings::default()
    };
    fixture_with(script, |_| around).await
}

/// The same, with what `around` gives the agent (given the repository).
async fn fixture_with(
    script: ResponsesScript,
    around: impl FnOnce(&Path) -> super::session::Surroundings,
) -> Option<Fixture> {
    let binary = mala_testkit::tool_or_skip(Tool::Codex, module_path!())?;
    let mock = MockResponses::start(script);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("keep.txt"), "precious\n").unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let events = Arc::new(Events::default());
    let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
    let session = super::session::CodexSession::start(
        &command,
        &request,
        &gpt(),
        events.clone(),
        around(&repo),
    )
    .await
    .unwrap();
    Some(Fixture {
        session,
        events,
        mock,
        repo,
        _dir: dir,
    })
}

#[tokio::test]
async fn the_guard_declines_a_command_the_file_survives_and_the_model_reads_why() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::steps(vec![ResponsesReply::shell("rm -f keep.txt")], "done");
    let Some(mut f) = fixture(script, "rm -f").await else {
        return;
    };
    let outcome = f.session.turn("clean up").await.unwrap();
    assert_eq!(outcome.status, mala_core::TurnStatus::Completed);
    assert_eq!(outcome.final_text, "done");
    assert_eq!(outcome.permission_denials, ["Bash"]);
    assert_eq!(
        std::fs::read_to_string(f.repo.join("keep.txt")).unwrap(),
        "precious\n"
    );
    let events = f.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(
        e,
        mala_core::AgentEvent::ToolDenied { reason, .. } if reason == "no rm -f here"
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, mala_core::AgentEvent::CommandRan { .. })),
        "nothing ran: {events:?}"
    );
    let told = f.mock.requests().iter().any(|r| {
        mala_testkit::ResponsesConversation::user_texts_of(&r.body)
            .iter()
            .any(|t| t.contains("mala refused that call: no rm -f here"))
    });
    assert!(told, "the reason reached the model");
    f.session.close().await.unwrap();
}

#[tokio::test]
async fn commands_are_recorded_with_their_exit_codes_and_a_follow_up_turn_shares_the_thread() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::from_fn(|conversation| {
        let texts = conversation.user_texts();
        let second = texts.iter().any(|t| t.contains("again"));
        match (second, conversation.calls_so_far()) {
            (false, 0) => ResponsesReply::shell("exit 3"),
            (true, 1) => ResponsesReply::shell("true"),
            _ => ResponsesReply::Message(format!("turn with {} texts", texts.len())),
        }
    });
    let Some(mut f) = fixture(script, "never").await else {
        return;
    };
    let first = f.session.turn("fail once").await.unwrap();
    let second = f.session.turn("again").await.unwrap();
    assert_eq!(first.session_id, second.session_id, "one thread");
    assert_eq!(second.num_turns, 2);
    assert!(second.final_text.starts_with("turn with"), "{second:?}");
    let last = f.mock.requests().last().cloned().unwrap();
    let texts = mala_testkit::ResponsesConversation::user_texts_of(&last.body);
    assert!(
        texts.iter().any(|t| t == "fail once") && texts.iter().any(|t| t == "again"),
        "the follow-up carries the first turn: {texts:?}"
    );
    assert!(
        first.usage.total() > 0 && second.usage.total() > 0,
        "{first:?}"
    );
    let runs: Vec<mala_core::CommandRun> = f
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            mala_core::AgentEvent::CommandRan { run } => Some(run.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].exit_code, runs[0].failed), (Some(3), true));
    assert_eq!((runs[1].exit_code, runs[1].failed), (Some(0), false));
    assert!(runs[0].command.contains("exit 3"), "{:?}", runs[0]);
    assert!(
        runs.iter()
            .all(|r| r.started_at.is_some_and(|s| s <= r.ended_at))
    );
    f.session.close().await.unwrap();
}

#[tokio::test]
async fn a_patch_is_decided_by_its_paths_and_recorded_as_edits() {
    use mala_core::AgentSession as _;
    let patch =
        |name: &str| format!("*** Begin Patch\n*** Add File: {name}\n+hello\n*** End Patch\n");
    let script = ResponsesScript::steps(
        vec![
            ResponsesReply::Patch(patch("secret.txt")),
            ResponsesReply::Patch(patch("notes.txt")),
        ],
        "done",
    );
    let Some(mut f) = fixture(script, "secret.txt").await else {
        return;
    };
    let outcome = f.session.turn("write").await.unwrap();
    assert_eq!(outcome.permission_denials, ["apply_patch"]);
    assert!(
        !f.repo.join("secret.txt").exists(),
        "the refused patch was not applied"
    );
    assert_eq!(
        std::fs::read_to_string(f.repo.join("notes.txt")).unwrap(),
        "hello\n"
    );
    let edited: Vec<String> = f
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            mala_core::AgentEvent::FileEdited { edit } => Some(edit.path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(edited.len(), 1, "{edited:?}");
    assert!(edited[0].ends_with("notes.txt"), "{edited:?}");
    f.session.close().await.unwrap();
}

/// `write_stdin` into an approved interactive shell asks no approval: the
/// typed command would pass no guard. mala stops the turn when it sees it.
#[tokio::test]
async fn input_typed_into_a_running_shell_stops_the_turn_and_fails_it_saying_so() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::from_fn(|conversation| {
        let outputs = conversation.tool_outputs();
        match conversation.calls_so_far() {
            0 => ResponsesReply::Call {
                name: "exec_command".into(),
                arguments: json!({"cmd": "bash", "tty": true, "yield_time_ms": 500}),
            },
            1 => {
                let session = outputs
                    .first()
                    .and_then(|o| o.split("session ID ").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                ResponsesReply::Call {
                    name: "write_stdin".into(),
                    arguments: json!({"session_id": session, "chars": "touch typed.txt; exit\n"}),
                }
            }
            _ => ResponsesReply::Message("done".into()),
        }
    });
    let Some(mut f) = fixture(script, "never-refused").await else {
        return;
    };
    let outcome = f.session.turn("open a shell").await.unwrap();
    assert!(
        matches!(&outcome.status, mala_core::TurnStatus::Failed { reason } if reason.contains("write_stdin")),
        "{outcome:?}"
    );
    let events = f.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(
        e,
        mala_core::AgentEvent::ToolDenied { tool, .. } if tool == "write_stdin"
    )));
    f.session.close().await.unwrap();
}

#[tokio::test]
async fn the_lock_tools_are_the_threads_own_and_take_the_lock_table() {
    use mala_core::{AgentSession as _, LockTable as _};
    let script = ResponsesScript::steps(
        vec![ResponsesReply::Call {
            name: "lock_acquire".into(),
            arguments: json!({"filepaths": ["src/a.txt"]}),
        }],
        "locked",
    );
    let table: std::sync::OnceLock<Arc<crate::FileLockTable>> = std::sync::OnceLock::new();
    let Some(mut f) = fixture_with(script, |repo| {
        let locks = Arc::new(crate::FileLockTable::new(repo.join(".locks"), repo).unwrap());
        let _ = table.set(Arc::clone(&locks));
        super::session::Surroundings {
            locks: Some(locks),
            ..super::session::Surroundings::default()
        }
    })
    .await
    else {
        return;
    };
    let outcome = f.session.turn("lock it").await.unwrap();
    let offered = f.mock.requests()[0].body["tools"].to_string();
    assert!(offered.contains("lock_acquire"), "{offered}");
    assert_eq!(outcome.final_text, "locked");
    let held = table
        .get()
        .unwrap()
        .held_by(&mala_core::AgentId::new("m-1@r"));
    let expected = crate::canonical_path(&f.repo, "src/a.txt");
    assert_eq!(
        held,
        vec![expected],
        "the agent holds the lock it asked for"
    );
    let last = f.mock.requests().last().cloned().unwrap();
    let outputs = mala_testkit::ResponsesConversation::tool_outputs_of(&last.body);
    assert_eq!(
        outputs.len(),
        1,
        "the model got the tool's answer: {outputs:?}"
    );
    f.session.close().await.unwrap();
}

/// The backend over the pinned binary, its every command allowed, against
/// a model that runs `sleep 30`; the session and whether its first command
/// has started (for a stop to land in a running turn).
async fn sleeping_session(
    mock: &MockResponses,
    dir: &Path,
) -> Option<(
    Arc<super::CodexBackend>,
    Box<dyn mala_core::AgentSession>,
    Arc<Events>,
)> {
    let binary = mala_testkit::tool_or_skip(Tool::Codex, module_path!())?;
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let around = super::session::Surroundings {
        guard: Some(Arc::new(Refusing("never-refused"))),
        ..super::session::Surroundings::default()
    };
    let backend = Arc::new(super::CodexBackend::with_command(
        offline(&binary, mock, &dir.join("home")),
        gpt(),
        around,
    ));
    let events = Arc::new(Events::default());
    let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
    let session = mala_core::AgentBackend::start(backend.as_ref(), request, events.clone())
        .await
        .unwrap();
    Some((backend, session, events))
}

async fn stopped_by(kill: bool) {
    let mock = MockResponses::start(ResponsesScript::steps(
        vec![ResponsesReply::shell("sleep 30")],
        "done",
    ));
    let dir = tempfile::tempdir().unwrap();
    let Some((backend, mut session, _events)) = sleeping_session(&mock, dir.path()).await else {
        return;
    };
    let stopper = Arc::clone(&backend);
    let requests = Arc::new(mock);
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        // Once the model has asked for the command, it is approved and runs.
        while seen.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if kill {
            mala_core::AgentBackend::kill_all(stopper.as_ref());
        } else {
            mala_core::AgentBackend::stop_all(stopper.as_ref()).await;
        }
    });
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(20), session.turn("sleep"))
        .await
        .expect("the stop ended the turn, not the 30 s command")
        .unwrap_err();
    assert_eq!(error.kind, mala_core::AgentErrorKind::Cancelled, "{error}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let again = session.turn("more").await.unwrap_err();
    assert_eq!(
        again.kind,
        mala_core::AgentErrorKind::Cancelled,
        "no turn after a stop"
    );
    session.close().await.unwrap();
    assert!(
        backend.live.lock().unwrap().is_empty(),
        "nothing left to kill"
    );
}

#[tokio::test]
async fn stop_all_ends_a_running_turn_as_cancelled_and_starts_no_more() {
    stopped_by(false).await;
}

#[tokio::test]
async fn kill_all_takes_the_app_servers_down_and_their_turns_end_cancelled() {
    stopped_by(true).await;
}

#[tokio::test]
async fn the_working_tree_watch_sees_a_write_no_lock_covers_and_the_agent_is_told() {
    use mala_core::AgentSession as _;
    let script =
        ResponsesScript::steps(vec![ResponsesReply::shell("echo x > unlocked.txt")], "done");
    let Some(mut f) = fixture_with(script, |repo| {
        let locks: Arc<dyn mala_core::LockTable> =
            Arc::new(crate::FileLockTable::new(repo.join(".locks"), repo).unwrap());
        super::session::Surroundings {
            // The guard lets it pass, as a parser that missed the write would.
            guard: Some(Arc::new(Refusing("never-refused"))),
            watch: Some(Arc::new(crate::TreeWatch::new(
                repo,
                Some(Arc::clone(&locks)),
            ))),
            locks: Some(locks),
            ..super::session::Surroundings::default()
        }
    })
    .await
    else {
        return;
    };
    f.session.turn("write it").await.unwrap();
    assert!(f.repo.join("unlocked.txt").exists());
    let events = f.events.0.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(
            e,
            mala_core::AgentEvent::UnlockedWrite { edit } if edit.path.ends_with("unlocked.txt")
        )),
        "{events:?}"
    );
    let told = f.mock.requests().iter().any(|r| {
        mala_testkit::ResponsesConversation::user_texts_of(&r.body)
            .iter()
            .any(|t| t.contains("which you do not hold the lock of"))
    });
    assert!(told, "the agent is told in its turn");
    f.session.close().await.unwrap();
}

#[tokio::test]
async fn what_a_command_leaves_running_is_stopped_when_it_completes_and_the_agent_told() {
    use mala_core::AgentSession as _;
    let pids = tempfile::tempdir().unwrap();
    let pidfile = pids.path().join("left.pid");
    // codex ends a command's process group with it; a session of its own
    // outlives that.
    let command = format!(
        "setsid sleep 39 > /dev/null 2>&1 & echo $! > {}",
        pidfile.display()
    );
    let script = ResponsesScript::steps(vec![ResponsesReply::shell(&command)], "done");
    let Some(mut f) = fixture_with(script, |repo| super::session::Surroundings {
        guard: Some(Arc::new(Refusing("never-refused"))),
        watch: Some(Arc::new(crate::TreeWatch::new(repo, None))),
        ..super::session::Surroundings::default()
    })
    .await
    else {
        return;
    };
    f.session.turn("start it").await.unwrap();
    let pid = std::fs::read_to_string(&pidfile).expect("the command ran");
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    assert!(!alive, "the sleep left running was stopped");
    let told = f.mock.requests().iter().any(|r| {
        mala_testkit::ResponsesConversation::user_texts_of(&r.body)
            .iter()
            .any(|t| t.contains("left running after they returned") && t.contains("sleep 39"))
    });
    assert!(told, "the agent is told in its turn");
    f.session.close().await.unwrap();
}

async fn timed_out(
    script: ResponsesScript,
    timeouts: super::session::Timeouts,
) -> Option<mala_core::AgentError> {
    use mala_core::AgentSession as _;
    let mut f = fixture_with(script, |_| super::session::Surroundings {
        guard: Some(Arc::new(Refusing("never-refused"))),
        timeouts,
        ..super::session::Surroundings::default()
    })
    .await?;
    let error = tokio::time::timeout(Duration::from_secs(20), f.session.turn("go"))
        .await
        .expect("the timeout ended the turn")
        .unwrap_err();
    f.session.close().await.unwrap();
    Some(error)
}

#[tokio::test]
async fn a_turn_past_its_limit_is_interrupted_and_times_out() {
    let script = ResponsesScript::steps(vec![ResponsesReply::shell("sleep 30")], "done");
    let timeouts = super::session::Timeouts {
        idle: Some(Duration::from_secs(1)),
        turn: Duration::from_secs(3),
    };
    let Some(error) = timed_out(script, timeouts).await else {
        return;
    };
    // The command runs silently for longer than the idle limit: only the
    // turn's limit ends it.
    assert_eq!(error.kind, mala_core::AgentErrorKind::TimedOut, "{error}");
    assert!(error.message.contains("ran past its limit"), "{error}");
}

#[tokio::test]
async fn a_silent_model_with_nothing_running_times_out_idle() {
    let script =
        ResponsesScript::from_fn(|_| ResponsesReply::Stall(Duration::from_secs(5), "late".into()));
    let timeouts = super::session::Timeouts {
        idle: Some(Duration::from_secs(1)),
        turn: Duration::from_secs(60),
    };
    let Some(error) = timed_out(script, timeouts).await else {
        return;
    };
    assert_eq!(error.kind, mala_core::AgentErrorKind::TimedOut, "{error}");
    assert!(error.message.contains("said nothing"), "{error}");
}

/// mala's preflight, through Codex: the canary is asked for, mala's real
/// guard refuses it to the probe, and the refusal reaches the model; the
/// same judge as for Claude finds the guard proven.
#[tokio::test]
async fn the_preflight_canary_is_refused_through_codex_and_the_judge_is_satisfied() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::steps(
        vec![ResponsesReply::shell(mala_domain::PREFLIGHT_CANARY)],
        "ready",
    );
    let Some(binary) = mala_testkit::tool_or_skip(Tool::Codex, module_path!()) else {
        return;
    };
    let mock = MockResponses::start(script);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let locks: Arc<dyn mala_core::LockTable> =
        Arc::new(crate::FileLockTable::new(dir.path().join("locks"), &repo).unwrap());
    let around = super::session::Surroundings {
        guard: Some(Arc::new(crate::LockingGuard::new(&repo, locks, Vec::new()))),
        ..super::session::Surroundings::default()
    };
    let events = Arc::new(Events::default());
    let request = mala_core::SessionRequest::new(mala_domain::preflight_agent("r"), &repo);
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let mut session =
        super::session::CodexSession::start(&command, &request, &gpt(), events.clone(), around)
            .await
            .unwrap();
    session
        .turn(&mala_domain::preflight_prompt())
        .await
        .unwrap();
    session.close().await.unwrap();
    let seen = events.0.lock().unwrap().clone();
    assert_eq!(mala_domain::judge_preflight(&seen), Ok(()), "{seen:?}");
}

/// The commands the model ran, and the commands mala judged, from `events`.
fn ran_and_judged(events: &[mala_core::AgentEvent]) -> (Vec<String>, Vec<String>) {
    let mut ran = Vec::new();
    let mut judged = Vec::new();
    for event in events {
        match event {
            mala_core::AgentEvent::CommandRan { run } => ran.push(run.command.clone()),
            mala_core::AgentEvent::ToolUse { input, .. } => {
                judged.extend(input["command"].as_str().map(str::to_owned));
            }
            _ => {}
        }
    }
    (ran, judged)
}

/// Read-only commands too come to mala before they run: with the pinned
/// binary no command runs unasked.
#[tokio::test]
async fn read_only_commands_ask_first_too() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::steps(
        vec![
            ResponsesReply::shell("ls"),
            ResponsesReply::shell("cat keep.txt"),
        ],
        "done",
    );
    let Some(mut f) = fixture(script, "keep.txt").await else {
        return;
    };
    let outcome = f.session.turn("look around").await.unwrap();
    assert_eq!(outcome.status, mala_core::TurnStatus::Completed);
    let events = f.events.0.lock().unwrap().clone();
    let (ran, judged) = ran_and_judged(&events);
    assert_eq!(ran, ["ls"], "{events:?}");
    assert_eq!(
        judged,
        ["ls", "cat keep.txt"],
        "each asked once: {events:?}"
    );
    assert_eq!(outcome.permission_denials, ["Bash"], "{events:?}");
    f.session.close().await.unwrap();
}

/// A rule in the user's codex configuration would let commands run
/// without asking: the session does not start, and says which file.
#[tokio::test]
async fn a_users_rule_that_allows_commands_is_refused_at_start() {
    let Some(binary) = mala_testkit::tool_or_skip(Tool::Codex, module_path!()) else {
        return;
    };
    let mock = MockResponses::start(ResponsesScript::steps(Vec::new(), "done"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let rules = dir.path().join("home/codex/rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("default.rules"),
        "# written by the TUI\nprefix_rule(pattern = [\"cat\"], decision = \"allow\")\n",
    )
    .unwrap();
    let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
    let error = super::session::CodexSession::start(
        &command,
        &request,
        &gpt(),
        Arc::new(Events::default()),
        super::session::Surroundings::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, mala_core::AgentErrorKind::CouldNotStart);
    assert!(error.message.contains("default.rules"), "{error}");
    assert!(mock.requests().is_empty(), "no model call was made");
}

/// The user's codex configuration is theirs (the thread uses its model
/// provider), but a session whose agent it would give MCP servers does not
/// start: their calls ask no approval, so mala's guard could not see them.
/// Switched off, they are no reason to refuse.
#[tokio::test]
async fn the_users_config_is_kept_but_mcp_servers_it_enables_are_refused() {
    let Some(binary) = mala_testkit::tool_or_skip(Tool::Codex, module_path!()) else {
        return;
    };
    let mock = MockResponses::start(ResponsesScript::steps(Vec::new(), "done"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let mut command = offline(&binary, &mock, &dir.path().join("home"));
    // The provider comes from the user's file, not from mala.
    command.settings.retain(|(key, _)| key != "model_provider");
    let config = dir.path().join("home/codex/config.toml");
    let user = "model_provider = \"mock\"\n[mcp_servers.writer]\ncommand = \"/bin/true\"\n";
    std::fs::write(&config, user).unwrap();
    let start = || {
        let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
        let events = Arc::new(Events::default());
        let command = command.clone();
        async move {
            super::session::CodexSession::start(
                &command,
                &request,
                &gpt(),
                events,
                super::session::Surroundings::default(),
            )
            .await
        }
    };
    let error = start().await.unwrap_err();
    assert_eq!(error.kind, mala_core::AgentErrorKind::CouldNotStart);
    assert!(error.message.contains("MCP servers (writer)"), "{error}");
    std::fs::write(&config, format!("{user}enabled = false\n")).unwrap();
    let server = AppServer::start(&command, &repo).unwrap();
    server.initialize(Duration::from_secs(30)).await.unwrap();
    let started = server
        .rpc
        .request(
            "thread/start",
            json!({"cwd": repo, "approvalPolicy": "untrusted", "sandbox": "danger-full-access"}),
        )
        .await
        .unwrap();
    assert_eq!(started["modelProvider"], "mock", "{started}");
    server.close(Duration::from_secs(20)).await;
    let mut session = start().await.unwrap();
    mala_core::AgentSession::close(&mut session).await.unwrap();
}

/// `model`, `effort` and `--fast` (the tier the model lists, "priority")
/// have their effect: the model's requests name them. Sub-agents and the
/// tools that act outside the guard's reach are not offered.
#[tokio::test]
async fn the_model_its_effort_and_the_fast_tier_reach_the_model() {
    use mala_core::AgentSession as _;
    let Some(binary) = mala_testkit::tool_or_skip(Tool::Codex, module_path!()) else {
        return;
    };
    let mock = MockResponses::start(ResponsesScript::steps(Vec::new(), "done"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let settings = super::session::ThreadSettings {
        model: Some("gpt-5.5".to_owned()),
        effort: Some("high".to_owned()),
        service_tier: Some("fast".to_owned()),
        ..super::session::ThreadSettings::default()
    };
    let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
    let events = Arc::new(Events::default());
    let mut session = super::session::CodexSession::start(
        &command,
        &request,
        &settings,
        events,
        super::session::Surroundings::default(),
    )
    .await
    .unwrap();
    session.turn("hello").await.unwrap();
    session.close().await.unwrap();
    let requests = mock.requests();
    let body = &requests.last().unwrap().body;
    assert_eq!(body["model"], "gpt-5.5", "{body}");
    assert_eq!(body["reasoning"]["effort"], "high", "{body}");
    assert_eq!(body["service_tier"], "priority", "{body}");
    let tools = mala_testkit::ResponsesConversation::tool_names_of(body);
    assert!(tools.iter().any(|t| t == "exec_command"), "{tools:?}");
    for off in ["spawn_agent", "image_gen", "browser", "computer"] {
        assert!(!tools.iter().any(|t| t.contains(off)), "{off}: {tools:?}");
    }
}

/// With a price for the thread's model, a turn's tokens are dollars; a
/// session held to a dollar limit has its turn cut once the limit is
/// spent, and one whose model has no price does not start.
#[tokio::test]
async fn dollars_come_from_the_price_table_and_a_dollar_limit_cuts_the_turn() {
    use mala_core::AgentSession as _;
    let Some(binary) = mala_testkit::tool_or_skip(Tool::Codex, module_path!()) else {
        return;
    };
    let script = ResponsesScript::steps(
        vec![
            ResponsesReply::shell("echo one"),
            ResponsesReply::shell("echo two"),
            ResponsesReply::shell("echo three"),
        ],
        "done",
    );
    let mock = MockResponses::start(script);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    // A dollar per thousand tokens: each of the mock's answers costs about $10.
    let dear = mala_domain::TokenPrice {
        input: 1000.0,
        cached_input: 1000.0,
        output: 1000.0,
    };
    let mut settings = gpt();
    let mut request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-1@r"), &repo);
    request.max_cost_usd = Some(15.0);
    let start = |settings: super::session::ThreadSettings| {
        let (command, request) = (command.clone(), request.clone());
        async move {
            super::session::CodexSession::start(
                &command,
                &request,
                &settings,
                Arc::new(Events::default()),
                super::session::Surroundings::default(),
            )
            .await
        }
    };
    let error = start(settings.clone()).await.unwrap_err();
    assert!(error.message.contains("no price"), "{error}");
    settings.prices.insert("gpt-5.5".to_owned(), dear);
    let mut session = start(settings).await.unwrap();
    let outcome = session.turn("count").await.unwrap();
    assert_eq!(
        outcome.status,
        mala_core::TurnStatus::BudgetReached,
        "{outcome:?}"
    );
    assert!(outcome.total_cost_usd >= 15.0, "{outcome:?}");
    let expected = dear.cost(&outcome.usage);
    assert!(
        (outcome.total_cost_usd - expected).abs() < 1e-9,
        "{outcome:?}"
    );
    let asked_for_three = mock.requests().iter().any(|r| {
        mala_testkit::ResponsesConversation::tool_outputs_of(&r.body)
            .iter()
            .any(|t| t.contains("two"))
    });
    assert!(!asked_for_three, "the turn was cut before its third call");
    session.close().await.unwrap();
}

/// A model that refuses the request: the turn's error says what waiting can
/// do about it (a limit waits, bad credentials stop the run).
#[tokio::test]
async fn a_429_is_a_limit_and_a_401_is_credentials() {
    use mala_core::AgentSession as _;
    for (status, kind) in [
        (
            429,
            mala_core::AgentErrorKind::RateLimited { resets_at: None },
        ),
        (401, mala_core::AgentErrorKind::Authentication),
    ] {
        let script = ResponsesScript::from_fn(move |_| ResponsesReply::HttpError(status));
        let Some(mut f) = fixture(script, "never-refused").await else {
            return;
        };
        let error = f.session.turn("go").await.unwrap_err();
        assert_eq!(error.kind, kind, "{status}: {error}");
        f.session.close().await.unwrap();
    }
}

/// The turn the replay tests play back: a command the guard refuses, a
/// patch, a command that runs. Not a test: it records the fixture from the
/// pinned binary (`cargo test -p mala-infra --lib record_the_replay_fixture
/// -- --ignored`), which the replay tests then read.
#[tokio::test]
#[ignore = "records crates/mala-infra/tests/data/codex/guarded-turn.jsonl"]
async fn record_the_replay_fixture() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::steps(
        vec![
            ResponsesReply::shell("rm -f keep.txt"),
            ResponsesReply::Patch(
                "*** Begin Patch\n*** Add File: notes.txt\n+hello\n*** End Patch\n".to_owned(),
            ),
            ResponsesReply::shell("cat notes.txt"),
        ],
        "done",
    );
    let binary = mala_testkit::tool_or_skip(Tool::Codex, module_path!()).unwrap();
    let mock = MockResponses::start(script);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("keep.txt"), "precious\n").unwrap();
    let mut command = offline(&binary, &mock, &dir.path().join("home"));
    command.state_dir = Some(dir.path().join("state"));
    let agent = mala_core::AgentId::new("m-1@r");
    let request = mala_core::SessionRequest::new(agent.clone(), &repo);
    let around = super::session::Surroundings {
        guard: Some(Arc::new(Refusing("rm -f"))),
        ..super::session::Surroundings::default()
    };
    let events = Arc::new(Events::default());
    let mut session =
        super::session::CodexSession::start(&command, &request, &gpt(), events, around)
            .await
            .unwrap();
    session.turn("tidy up and take notes").await.unwrap();
    session.close().await.unwrap();
    let recorded = crate::session_record::record_path(&dir.path().join("state"), &agent);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/codex/guarded-turn.jsonl");
    std::fs::copy(recorded, fixture).unwrap();
}

/// With mala's real guard and lock table: the lock the agent takes lets its
/// patch through, a patch to a file it holds no lock on is declined, and
/// its release empties its hold.
#[tokio::test]
async fn a_lock_round_trip_lets_the_locked_patch_through_and_declines_the_unlocked_one() {
    use mala_core::{AgentSession as _, LockTable as _};
    let add = |path: &str| {
        ResponsesReply::Patch(format!(
            "*** Begin Patch\n*** Add File: {path}\n+fixed\n*** End Patch\n"
        ))
    };
    let tool = |name: &str, arguments: Value| ResponsesReply::Call {
        name: name.to_owned(),
        arguments,
    };
    let script = ResponsesScript::steps(
        vec![
            tool("lock_acquire", json!({"filepaths": ["a.txt"]})),
            add("a.txt"),
            add("b.txt"),
            tool("lock_release", json!({"all": true})),
        ],
        "done",
    );
    let table: std::sync::OnceLock<Arc<crate::FileLockTable>> = std::sync::OnceLock::new();
    let Some(mut f) = fixture_with(script, |repo| {
        let locks = Arc::new(crate::FileLockTable::new(repo.join(".locks"), repo).unwrap());
        let _ = table.set(Arc::clone(&locks));
        let port: Arc<dyn mala_core::LockTable> = locks;
        super::session::Surroundings {
            guard: Some(Arc::new(crate::LockingGuard::new(
                repo,
                Arc::clone(&port),
                Vec::new(),
            ))),
            locks: Some(port),
            ..super::session::Surroundings::default()
        }
    })
    .await
    else {
        return;
    };
    let outcome = f.session.turn("fix a, and b too").await.unwrap();
    assert_eq!(outcome.permission_denials, ["apply_patch"], "{outcome:?}");
    assert!(
        f.repo.join("a.txt").exists(),
        "the locked patch went through"
    );
    assert!(!f.repo.join("b.txt").exists(), "the unlocked one did not");
    let agent = mala_core::AgentId::new("m-1@r");
    assert!(table.get().unwrap().held_by(&agent).is_empty(), "released");
    let told = f.mock.requests().iter().any(|r| {
        mala_testkit::ResponsesConversation::user_texts_of(&r.body)
            .iter()
            .any(|t| t.contains("mala refused that call") && t.contains("b.txt"))
    });
    assert!(told, "the model read why b.txt was refused");
    f.session.close().await.unwrap();
}

/// A patch that moves a file is judged by where the file goes as well as
/// where it comes from.
#[tokio::test]
async fn a_patch_that_moves_a_file_is_judged_by_its_destination_too() {
    use mala_core::AgentSession as _;
    let patch = "*** Begin Patch\n*** Update File: keep.txt\n*** Move to: moved.txt\n@@\n-precious\n+moved\n*** End Patch\n";
    let script = ResponsesScript::steps(vec![ResponsesReply::Patch(patch.to_owned())], "done");
    let Some(mut f) = fixture(script, "moved.txt").await else {
        return;
    };
    let outcome = f.session.turn("move it").await.unwrap();
    assert_eq!(outcome.permission_denials, ["apply_patch"], "{outcome:?}");
    assert!(f.repo.join("keep.txt").exists(), "not moved");
    assert!(!f.repo.join("moved.txt").exists());
    f.session.close().await.unwrap();
}

/// A session's dollars add up over its turns: each outcome says what the
/// session has cost so far, as the Claude backend's do.
#[tokio::test]
async fn the_sessions_cost_adds_up_over_its_turns() {
    use mala_core::AgentSession as _;
    let price = mala_domain::TokenPrice {
        input: 2.0,
        cached_input: 1.0,
        output: 8.0,
    };
    let Some(mut f) = fixture_with(ResponsesScript::steps(Vec::new(), "done"), |_| {
        super::session::Surroundings::default()
    })
    .await
    else {
        return;
    };
    // The fixture's session has no prices; this one's thread settings do.
    f.session.close().await.unwrap();
    let mut settings = gpt();
    settings.prices.insert("gpt-5.5".to_owned(), price);
    let command = offline(
        &mala_testkit::tool_or_skip(Tool::Codex, module_path!()).unwrap(),
        &f.mock,
        &f.repo.parent().unwrap().join("home"),
    );
    let request = mala_core::SessionRequest::new(mala_core::AgentId::new("m-2@r"), &f.repo);
    let mut session = super::session::CodexSession::start(
        &command,
        &request,
        &settings,
        f.events.clone(),
        super::session::Surroundings::default(),
    )
    .await
    .unwrap();
    let first = session.turn("one").await.unwrap();
    let second = session.turn("two").await.unwrap();
    let expected = price.cost(&first.usage) + price.cost(&second.usage);
    assert!(first.total_cost_usd > 0.0);
    assert!(
        (second.total_cost_usd - expected).abs() < 1e-9,
        "{first:?} {second:?}"
    );
    session.close().await.unwrap();
}

/// Processes whose command line names `marker`.
fn processes_naming(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
        })
        .count()
}

/// Codex lets a command go on after its call returns (`yield_time_ms`): one
/// still running when the turn ends is stopped, and the turn fails saying
/// so; the session goes on.
#[tokio::test]
async fn a_command_still_running_at_the_turns_end_is_stopped_and_the_turn_fails() {
    use mala_core::AgentSession as _;
    let script = ResponsesScript::from_fn(|conversation| {
        let texts = conversation.user_texts();
        if texts.iter().any(|t| t.contains("again")) {
            return match conversation.calls_since("again") {
                Some(0) => ResponsesReply::shell("echo still here"),
                _ => ResponsesReply::Message("fine".to_owned()),
            };
        }
        match conversation.calls_so_far() {
            0 => ResponsesReply::Call {
                name: "exec_command".into(),
                arguments: json!({"cmd": "sleep 7.31; touch late.txt", "yield_time_ms": 250}),
            },
            _ => ResponsesReply::Message("done".to_owned()),
        }
    });
    let Some(mut f) = fixture(script, "never-refused").await else {
        return;
    };
    let outcome = f.session.turn("go").await.unwrap();
    let mala_core::TurnStatus::Failed { reason } = &outcome.status else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains("still running when its turn ended"),
        "{reason}"
    );
    assert!(reason.contains("sleep 7.31"), "{reason}");
    // SIGKILL is sent by the time the turn ends; the kernel takes the
    // process away a moment later, well before the command would end.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while processes_naming("sleep 7.31") > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_naming("sleep 7.31"), 0, "it was stopped");
    let again = f.session.turn("again").await.unwrap();
    assert_eq!(again.status, mala_core::TurnStatus::Completed, "{again:?}");
    assert!(!f.repo.join("late.txt").exists());
    f.session.close().await.unwrap();
}
