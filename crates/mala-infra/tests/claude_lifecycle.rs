//! The session lifecycle against a fake CLI: a small bash program that
//! speaks just enough of the protocol and then misbehaves on purpose (goes
//! silent, never finishes, crashes, refuses to exit).
#![allow(clippy::unwrap_used, clippy::expect_used)] // the harness panics to fail the test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mala_core::{
    AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession, SessionRequest, TurnStatus,
};
use mala_infra::{ClaudeBackend, ClaudeConfig};

const FAKE: &str = r#"#!/bin/bash
# A stand-in for claude. FAKE_MODE picks how it misbehaves after a user message.
field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }
result() { printf '{"type":"result","subtype":"%s","is_error":%s,"result":"%s","session_id":"fake-1","num_turns":1,"total_cost_usd":0.01,"usage":{"input_tokens":10,"output_tokens":2}}\n' "$1" "$2" "$3"; }
if [ "$FAKE_MODE" = refuse_start ]; then echo "--dangerously-skip-permissions cannot be used with root" >&2; exit 1; fi
echo $$ > "$FAKE_DIR/pid"
while IFS= read -r line; do
  case "$line" in
    *'"subtype":"initialize"'*)
      printf '{"type":"control_response","response":{"subtype":"success","request_id":"%s","response":{}}}\n' "$(field "$line" request_id)" ;;
    *'"subtype":"interrupt"'*)
      printf '{"type":"control_response","response":{"subtype":"success","request_id":"%s","response":{}}}\n' "$(field "$line" request_id)"
      kill "$(cat "$FAKE_DIR/ticker" 2>/dev/null)" 2>/dev/null
      result error_during_execution true "" ;;
    *'"type":"user"'*)
      printf 'not json, a debug line\n'
      printf '{"type":"system","subtype":"init","session_id":"fake-1"}\n'
      case "$FAKE_MODE" in
        ok|stubborn) result success false "fine" ;;
        ignores_denial)
          # Asks mala's hook, is told no, and runs the tool all the same.
          printf '{"type":"control_request","request_id":"h1","request":{"subtype":"hook_callback","callback_id":"pre_tool","input":{"tool_name":"Bash","tool_input":{"command":"git reset --hard"},"tool_use_id":"toolu_2"}}}\n'
          IFS= read -r answer
          printf '%s\n' "$answer" > "$FAKE_DIR/hook_answer"
          printf '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_2","content":"HEAD is now at 1234","is_error":false}]}}\n'
          result success false "done" ;;
        unhooked)
          # A tool runs and answers, and no PreToolUse hook was ever asked.
          printf '{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"rm -rf src"}}]}}\n'
          printf '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"","is_error":false}]}}\n'
          result success false "done" ;;
        silent) ;;
        busy) ( while true; do printf '{"type":"system","subtype":"status","status":"requesting"}\n'; sleep 0.2; done ) & echo $! > "$FAKE_DIR/ticker" ;;
        crash) echo "panic: something broke inside" >&2; exit 3 ;;
      esac ;;
  esac
done
if [ "$FAKE_MODE" = stubborn ]; then
  trap '' TERM
  sleep 1000 &
  echo $! > "$FAKE_DIR/straggler"
  wait
fi
exit 0
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claude");
        std::fs::write(&path, FAKE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn config(&self, mode: &str) -> ClaudeConfig {
        let mut config = ClaudeConfig::new(
            self.dir.path().join("claude"),
            self.dir.path().join("state"),
        );
        config.clear_env = true;
        config.env = vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("FAKE_MODE".into(), mode.into()),
            ("FAKE_DIR".into(), self.dir.path().display().to_string()),
        ];
        config.turn_timeout = Duration::from_secs(30);
        config.shutdown_grace = Duration::from_millis(500);
        config
    }

    fn pid_in(&self, file: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z'))
    })
}

/// Waits until `pid` is gone (a signal's delivery is not instant); false if
/// it is still there after a generous bound.
async fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

fn request(dir: &Path) -> SessionRequest {
    SessionRequest::new(AgentId::new("m-1@fake"), PathBuf::from(dir))
}

#[tokio::test]
async fn a_normal_turn_skips_non_json_lines_and_reads_the_result() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("ok"));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let outcome = session.turn("hi").await.unwrap();
    assert_eq!(outcome.status, TurnStatus::Completed);
    assert_eq!(outcome.final_text, "fine");
    session.close().await.unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fake.dir.path().join("state/sessions/m-1@fake.summary.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["turns"], 1);
    assert_eq!(summary["session_id"], "fake-1");
}

#[tokio::test]
async fn a_tool_that_ran_without_the_hook_fails_the_turn_as_unguarded() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("unhooked"));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let error = session.turn("hi").await.unwrap_err();
    assert_eq!(error.kind, AgentErrorKind::Unguarded, "{error}");
    assert!(error.message.contains("toolu_1"), "{error}");
    session.close().await.unwrap();
}

/// Refuses every tool call.
struct DenyAll;

impl mala_core::ToolGuard for DenyAll {
    fn check(&self, _: &AgentId, _: &str, _: &serde_json::Value) -> Result<(), mala_core::Refusal> {
        Err(mala_core::Refusal("refused: no".into()))
    }
}

#[tokio::test]
async fn a_tool_run_after_its_denial_fails_the_turn_as_unguarded() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("ignores_denial")).with_guard(Arc::new(DenyAll));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let error = session.turn("hi").await.unwrap_err();
    assert_eq!(error.kind, AgentErrorKind::Unguarded, "{error}");
    assert!(error.message.contains("toolu_2, denied but run"), "{error}");
    let answer = std::fs::read_to_string(fake.dir.path().join("hook_answer")).unwrap();
    assert!(
        answer.contains(r#""permissionDecision":"deny""#),
        "{answer}"
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn silence_ends_the_turn_at_the_idle_timeout() {
    let fake = Fake::new();
    let mut config = fake.config("silent");
    config.idle_timeout = Some(Duration::from_millis(800));
    let backend = ClaudeBackend::new(config);
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let started = Instant::now();
    let err = session.turn("hi").await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::TimedOut, "{err}");
    assert!(err.message.contains("idle"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.is_retryable());
    session.close().await.unwrap();
}

#[tokio::test]
async fn output_without_a_result_hits_the_hard_turn_limit() {
    let fake = Fake::new();
    let mut config = fake.config("busy");
    config.idle_timeout = Some(Duration::from_millis(800));
    config.turn_timeout = Duration::from_secs(2);
    let backend = ClaudeBackend::new(config);
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let started = Instant::now();
    let err = session.turn("hi").await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::TimedOut, "{err}");
    assert!(err.message.contains("limit"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_crash_is_reported_with_the_tail_of_stderr() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("crash"));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let err = session.turn("hi").await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::Crashed, "{err}");
    assert!(err.message.contains("something broke inside"), "{err}");
    assert!(err.message.contains('3'), "the exit status is named: {err}");
    assert!(
        session.turn("again").await.is_err(),
        "a dead session takes no turns"
    );
}

#[tokio::test]
async fn a_cli_that_refuses_to_start_cannot_start_and_says_why() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("refuse_start"));
    let err = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::CouldNotStart, "{err}");
    assert!(err.message.contains("cannot be used with root"), "{err}");
}

#[tokio::test]
async fn a_cli_that_will_not_exit_is_killed_with_its_whole_group() {
    let fake = Fake::new();
    let backend = ClaudeBackend::new(fake.config("stubborn"));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    assert_eq!(
        session.turn("hi").await.unwrap().status,
        TurnStatus::Completed
    );
    let leader = fake.pid_in("pid").unwrap();
    let started = Instant::now();
    session.close().await.unwrap();
    // stdin closed (ignored), SIGTERM (trapped), then SIGKILL to the group.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!alive(leader), "the CLI itself is gone");
    let straggler = fake.pid_in("straggler").unwrap();
    assert!(gone(straggler).await, "its background child went with it");
}

#[tokio::test]
async fn stop_all_interrupts_a_running_turn_and_refuses_new_ones() {
    let fake = Fake::new();
    let backend = Arc::new(ClaudeBackend::new(fake.config("busy")));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let stopper = Arc::clone(&backend);
    let stop = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopper.stop_all().await;
    });
    let started = Instant::now();
    let err = session.turn("hi").await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::Cancelled, "{err}");
    assert!(!err.is_retryable(), "a stop is not retried");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the interrupt ended the turn, not the 30 s limit"
    );
    stop.await.unwrap();
    let again = session.turn("more").await.unwrap_err();
    assert_eq!(again.kind, AgentErrorKind::Cancelled, "{again}");
    session.close().await.unwrap();
    let pid = fake.pid_in("pid").unwrap();
    assert!(!alive(pid), "the fake claude is gone after close");
}

#[tokio::test]
async fn kill_all_takes_the_whole_group_down_at_once() {
    let fake = Fake::new();
    let backend = Arc::new(ClaudeBackend::new(fake.config("busy")));
    let mut session = backend
        .start_session(request(fake.dir.path()), Arc::new(Quiet))
        .await
        .unwrap();
    let killer = Arc::clone(&backend);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        killer.kill_all();
    });
    let started = Instant::now();
    let err = session.turn("hi").await.unwrap_err();
    assert_eq!(err.kind, AgentErrorKind::Cancelled, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (pid, ticker) = (fake.pid_in("pid").unwrap(), fake.pid_in("ticker").unwrap());
    assert!(gone(pid).await, "the fake claude was killed");
    assert!(gone(ticker).await, "and the process it started");
    session.close().await.unwrap();
}
