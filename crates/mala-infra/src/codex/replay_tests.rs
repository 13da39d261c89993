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
/// sends must be of the kind recorded at that point; what it sent, in order.
async fn play(
    lines: Vec<Line>,
    end: End,
    to_mala: tokio::io::DuplexStream,
    from_mala: tokio::io::DuplexStream,
) -> Result<Vec<String>, String> {
    let (mut to_mala, mut from_mala) = (to_mala, BufReader::new(from_mala).lines());
    let mut sent = Vec::new();
    let mut next_from_mala = async |sent: &mut Vec<String>| {
        let line = tokio::time::timeout(Duration::from_secs(10), from_mala.next_line())
            .await
            .map_err(|_| format!("mala sent nothing more after {sent:?}"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("mala closed the connection after {sent:?}"))?;
        let message: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        sent.push(kind(&message));
        Ok::<_, String>(message)
    };
    for Line { from_server, line } in lines {
        if from_server {
            let text = format!("{line}\n");
            to_mala
                .write_all(text.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        let message = next_from_mala(&mut sent).await?;
        if kind(&message) != kind(&line) {
            return Err(format!(
                "mala sent {} where {} was recorded",
                kind(&message),
                kind(&line)
            ));
        }
    }
    if let End::Silent = end {
        while next_from_mala(&mut sent).await?["method"] != "turn/interrupt" {}
    }
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

/// A guard that refuses any call whose input mentions `rm -f`, as the
/// recording's did.
struct RefusingRm;

impl mala_core::ToolGuard for RefusingRm {
    fn check(
        &self,
        _: &mala_core::AgentId,
        _: &str,
        input: &Value,
    ) -> Result<(), mala_core::Refusal> {
        if input.to_string().contains("rm -f") {
            return Err(mala_core::Refusal("no rm -f here".to_owned()));
        }
        Ok(())
    }
}

/// A session over a fake server playing `lines`, started as the recording's was.
async fn session_over(
    lines: Vec<Line>,
    end: End,
    timeouts: Timeouts,
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
        guard: Some(Arc::new(RefusingRm)),
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
        session_over(transcript(), End::Hangs, Timeouts::default()).await;
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
    let (session, player, _) = session_over(lines, End::Hangs, Timeouts::default()).await;
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
    let (session, _, _) = session_over(lines, End::Hangs, Timeouts::default()).await;
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
    let (session, player, _) = session_over(lines, End::Silent, timeouts).await;
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
