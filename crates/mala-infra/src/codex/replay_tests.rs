//! The session against an app-server transcript recorded from the pinned
//! binary (`tests/data/codex/guarded-turn.jsonl`, made by the ignored
//! `record_the_replay_fixture`): a fake server on in-memory pipes plays the
//! server's lines back and checks that mala sends what it sent then. Cut
//! short or altered, the same transcript is the lifecycle's odd cases: a
//! server that dies mid-turn, refuses the thread, or goes silent.

use std::sync::Arc;
use std::time::Duration;

use mala_core::{AgentEvent, AgentSession as _, SessionRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::server::AppServer;
use super::session::{CodexSession, Surroundings, ThreadSettings, Timeouts};

/// One recorded line: `in` came from the server, `out` went to it.
struct Line {
    from_server: bool,
    line: Value,
}

fn transcript() -> Vec<Line> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/codex/guarded-turn.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|text| {
            let entry: Value = serde_json::from_str(text).unwrap();
            Line {
                from_server: entry["dir"] == "in",
                line: entry["line"].clone(),
            }
        })
        .collect()
}

/// What kind of message a line is: a request or notification by method, an
/// answer by its id.
fn kind(line: &Value) -> String {
    match line["method"].as_str() {
        Some(method) => method.to_owned(),
        None => format!("answer to {}", line["id"]),
    }
}

/// The recorded session's working directory (its thread's cwd).
fn recorded_cwd(lines: &[Line]) -> String {
    let start = lines
        .iter()
        .find(|l| l.line["method"] == "thread/start")
        .unwrap();
    start.line["params"]["cwd"].as_str().unwrap().to_owned()
}

/// How the fake server ends once its lines are played.
#[derive(Clone, Copy)]
enum End {
    /// Closes the connection (the process died).
    Hangs,
    /// Stays, silent, until mala asks to interrupt the turn.
    Silent,
}

/// Plays `lines` as the server, then ends as `end` says. Each line mala
/// sends must be of the kind recorded at that point, except that a
/// `turn/interrupt` (which no recording has) is answered at once and let
/// by; what mala sent, in order.
async fn play(
    lines: Vec<Line>,
    end: End,
    to_mala: tokio::io::DuplexStream,
    from_mala: tokio::io::DuplexStream,
) -> Result<Vec<String>, String> {
    let (out, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut to_mala = to_mala;
        while let Some(line) = outgoing.recv().await {
            if to_mala.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    // Weak: once the player drops its sender, the connection closes.
    let answers = out.downgrade();
    tokio::spawn(async move {
        let mut from_mala = BufReader::new(from_mala).lines();
        while let Ok(Some(line)) = from_mala.next_line().await {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message["method"] == "turn/interrupt"
                && let Some(answers) = answers.upgrade()
            {
                let _ = answers.send(format!("{}\n", json!({"id": message["id"], "result": {}})));
            }
            let _ = seen_tx.send(message);
        }
    });
    let mut sent = Vec::new();
    let mut next = async |sent: &mut Vec<String>| {
        let message = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .map_err(|_| format!("mala sent nothing more after {sent:?}"))?
            .ok_or_else(|| format!("mala closed the connection after {sent:?}"))?;
        sent.push(kind(&message));
        Ok::<_, String>(message)
    };
    for Line { from_server, line } in lines {
        if from_server {
            let _ = out.send(format!("{line}\n"));
            continue;
        }
        let mut message = next(&mut sent).await?;
        while message["method"] == "turn/interrupt" {
            message = next(&mut sent).await?;
        }
        if kind(&message) != kind(&line) {
            return Err(format!(
                "mala sent {} where {} was recorded",
                kind(&message),
                kind(&line)
            ));
        }
    }
    if let End::Silent = end {
        while next(&mut sent).await?["method"] != "turn/interrupt" {}
    }
    drop(out);
    let _ = writer.await;
    Ok(sent)
}

/// Every event the session reports.
#[derive(Default)]
struct Events(std::sync::Mutex<Vec<AgentEvent>>);

impl mala_core::AgentObserver for Events {
    fn on_event(&self, event: &AgentEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// A guard that refuses any call whose input mentions one of its words
/// (the recording's refused `rm -f`).
struct Refusing(&'static [&'static str]);

impl mala_core::ToolGuard for Refusing {
    fn check(
        &self,
        _: &mala_core::AgentId,
        _: &str,
        input: &Value,
    ) -> Result<(), mala_core::Refusal> {
        match self.0.iter().find(|word| input.to_string().contains(*word)) {
            Some(word) => Err(mala_core::Refusal(format!("no {word} here"))),
            None => Ok(()),
        }
    }
}

const AS_RECORDED: Refusing = Refusing(&["rm -f"]);

/// A session over a fake server playing `lines`, started as the recording's was.
async fn session_over(
    lines: Vec<Line>,
    end: End,
    timeouts: Timeouts,
    guard: Refusing,
) -> (
    Result<CodexSession, mala_core::AgentError>,
    tokio::task::JoinHandle<Result<Vec<String>, String>>,
    Arc<Events>,
) {
    let cwd = recorded_cwd(&lines);
    let (server_out, mala_in) = tokio::io::duplex(1 << 20);
    let (mala_out, server_in) = tokio::io::duplex(1 << 20);
    let player = tokio::spawn(play(lines, end, server_out, server_in));
    let events = Arc::new(Events::default());
    let request = SessionRequest::new(mala_core::AgentId::new("m-1@r"), cwd);
    let settings = ThreadSettings {
        model: Some("gpt-5.5".to_owned()),
        ..ThreadSettings::default()
    };
    let around = Surroundings {
        guard: Some(Arc::new(guard)),
        timeouts,
        ..Surroundings::default()
    };
    let session = CodexSession::open(
        AppServer::over(mala_in, mala_out),
        &request,
        &settings,
        events.clone(),
        around,
    )
    .await;
    (session, player, events)
}

#[tokio::test]
async fn a_recorded_turn_plays_back_to_the_same_requests_decisions_and_evidence() {
    let (session, player, events) =
        session_over(transcript(), End::Hangs, Timeouts::default(), AS_RECORDED).await;
    let mut session = session.unwrap();
    let outcome = session.turn("tidy up and take notes").await.unwrap();
    let sent = player.await.unwrap().unwrap();
    assert!(
        sent.contains(&"turn/steer".to_owned()),
        "the refusal's reason was steered in: {sent:?}"
    );
    assert_eq!(outcome.status, mala_core::TurnStatus::Completed);
    assert_eq!(outcome.final_text, "done");
    assert_eq!(outcome.permission_denials, ["Bash"]);
    assert!(outcome.usage.total() > 0, "{outcome:?}");
    let events = events.0.lock().unwrap().clone();
    let denied: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolDenied { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(denied, ["no rm -f here"]);
    let edited: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::FileEdited { edit } => Some(edit.path.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(edited.as_slice(), [path] if path.ends_with("/notes.txt")),
        "{edited:?}"
    );
    let ran: Vec<(String, Option<i32>)> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::CommandRan { run } => Some((run.command.clone(), run.exit_code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ran,
        [("cat notes.txt".to_owned(), Some(0))],
        "the refused one never ran"
    );
}

#[tokio::test]
async fn a_server_that_dies_mid_turn_ends_the_turn_as_crashed() {
    let mut lines = transcript();
    let approval = lines
        .iter()
        .position(|l| l.line["method"] == "item/fileChange/requestApproval")
        .unwrap();
    lines.truncate(approval);
    let (session, player, _) =
        session_over(lines, End::Hangs, Timeouts::default(), AS_RECORDED).await;
    let error = session.unwrap().turn("tidy up").await.unwrap_err();
    player.await.unwrap().unwrap();
    assert_eq!(error.kind, mala_core::AgentErrorKind::Crashed, "{error}");
    assert!(error.message.contains("ended during the turn"), "{error}");
}

#[tokio::test]
async fn a_thread_the_server_refuses_does_not_start_and_says_why() {
    let mut lines = transcript();
    let start = lines
        .iter()
        .position(|l| l.from_server && l.line["id"] == 3)
        .unwrap();
    lines[start].line = json!({"id": 3, "error": {"code": -32600, "message": "no such model"}});
    lines.truncate(start + 1);
    let (session, _, _) = session_over(lines, End::Hangs, Timeouts::default(), AS_RECORDED).await;
    let error = session.unwrap_err();
    assert_eq!(
        error.kind,
        mala_core::AgentErrorKind::CouldNotStart,
        "{error}"
    );
    assert!(error.message.contains("no such model"), "{error}");
}

/// The transcript up to the turn's start, then silence.
async fn silent_turn(timeouts: Timeouts) -> (mala_core::AgentError, Vec<String>) {
    let mut lines = transcript();
    let started = lines
        .iter()
        .position(|l| l.line["method"] == "turn/started")
        .unwrap();
    lines.truncate(started + 1);
    let (session, player, _) = session_over(lines, End::Silent, timeouts, AS_RECORDED).await;
    let error = session.unwrap().turn("tidy up").await.unwrap_err();
    (error, player.await.unwrap().unwrap())
}

#[tokio::test]
async fn a_silent_server_times_out_idle_and_its_turn_is_interrupted() {
    let (error, sent) = silent_turn(Timeouts {
        idle: Some(Duration::from_millis(100)),
        turn: Duration::from_secs(60),
    })
    .await;
    assert_eq!(error.kind, mala_core::AgentErrorKind::TimedOut, "{error}");
    assert!(error.message.contains("said nothing"), "{error}");
    assert_eq!(sent.last().map(String::as_str), Some("turn/interrupt"));
}

#[tokio::test]
async fn a_turn_past_its_limit_times_out_and_is_interrupted() {
    let (error, sent) = silent_turn(Timeouts {
        idle: None,
        turn: Duration::from_millis(150),
    })
    .await;
    assert_eq!(error.kind, mala_core::AgentErrorKind::TimedOut, "{error}");
    assert!(error.message.contains("past its limit"), "{error}");
    assert_eq!(sent.last().map(String::as_str), Some("turn/interrupt"));
}

/// A command codex ran without asking (here: the recording with the
/// approval of `cat notes.txt` taken out, as a rule of the user's would
/// make it) is judged at its end; one the guard refuses fails the turn.
#[tokio::test]
async fn a_command_that_ran_unasked_is_judged_and_a_refused_one_fails_the_turn() {
    let lines = transcript();
    let asked = lines
        .iter()
        .position(|l| {
            l.line["method"] == "item/commandExecution/requestApproval"
                && l.line["params"]["itemId"] == "call_mock_3"
        })
        .unwrap();
    let request_id = lines[asked].line["id"].clone();
    let unasked: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .filter(|(i, l)| {
            *i != asked
                // mala's answer to it (the server's ids are a space of their own)
                && !(!l.from_server && l.line["id"] == request_id && l.line.get("method").is_none())
                && l.line["params"]["requestId"] != request_id
        })
        .map(|(_, l)| l)
        .collect();
    let guard = Refusing(&["rm -f", "cat notes"]);
    let (session, player, events) =
        session_over(unasked, End::Silent, Timeouts::default(), guard).await;
    let mut session = session.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), session.turn("tidy up"))
        .await
        .expect("the turn ended")
        .unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(20), player)
        .await
        .expect("the player ended")
        .unwrap()
        .unwrap();
    assert_eq!(
        sent.last().map(String::as_str),
        Some("turn/interrupt"),
        "mala stopped the turn"
    );
    let mala_core::TurnStatus::Failed { reason } = &outcome.status else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("without asking mala"), "{reason}");
    assert!(reason.contains("no cat notes here"), "{reason}");
    let judged = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolUse { input, .. } if input["command"] == "cat notes.txt"))
        .count();
    assert_eq!(judged, 1);
}
