//! Codex backend benchmarks; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_codex -- parse
//! cargo run --release -p mala-infra --example bench_codex -- sessions CODEX [N]
//! ```
//!
//! - parse: a fake app-server answers the handshake, then prints ~200 MB of
//!   the recorded transcript's notifications in one turn; the whole read
//!   path runs (framing, parsing, classifying, routing into events, the
//!   session record on disk) and the throughput is printed.
//! - sessions: N (default 32) real `codex app-server` sessions run against
//!   the Responses mock (in a child process, so its CPU is not counted),
//!   each making six `sleep 1` commands that mala approves; mala's own CPU
//!   time and RSS growth are printed per session.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::cast_precision_loss)] // figures for people: f64 is precise enough

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mala_core::{AgentBackend, AgentEvent, AgentId, AgentObserver, SessionRequest, TurnStatus};
use mala_infra::{CodexBackend, CodexConfig};
use mala_testkit::{CodexHarness, MockResponses, ResponsesReply, ResponsesScript};

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

/// The notifications of the recorded transcript's turn (no requests, no
/// answers, not its end).
fn recorded_notifications() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/codex/guarded-turn.jsonl");
    let mut lines = Vec::new();
    let mut in_turn = false;
    for text in std::fs::read_to_string(path).unwrap().lines() {
        let entry: serde_json::Value = serde_json::from_str(text).unwrap();
        let line = &entry["line"];
        in_turn |= line["method"] == "turn/started";
        let notification = entry["dir"] == "in" && line.get("id").is_none();
        if in_turn && notification && line["method"] != "turn/completed" {
            lines.push(line.to_string());
        }
    }
    lines
}

/// A fake `codex app-server`: answers mala's first four requests (ids 1 to
/// 4: initialize, config/read, thread/start, turn/start; `initialized` gets
/// no answer), then prints `stream` and ends the turn.
fn fake_server(dir: &Path, stream: &Path) -> PathBuf {
    let fake = dir.join("codex");
    let answers = [
        r#"{"id":1,"result":{"userAgent":"fake","codexHome":"/tmp"}}"#,
        "",
        r#"{"id":2,"result":{"config":{"mcp_servers":{}}}}"#,
        r#"{"id":3,"result":{"thread":{"id":"t-1"},"approvalPolicy":"untrusted","model":"m"}}"#,
        r#"{"id":4,"result":{"turn":{"id":"u-1"}}}"#,
    ];
    let mut script = String::from("#!/bin/bash\n");
    for answer in answers {
        script.push_str("IFS= read -r line\n");
        if !answer.is_empty() {
            let _ = writeln!(script, "printf '%s\\n' '{answer}'");
        }
    }
    let end = r#"{"method":"turn/completed","params":{"turn":{"id":"u-1","status":"completed"}}}"#;
    let _ = write!(
        script,
        "cat '{}'\nprintf '%s\\n' '{end}'\nwhile IFS= read -r line; do :; done\n",
        stream.display(),
    );
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake
}

async fn parse() {
    let dir = tempfile::tempdir().unwrap();
    let lines = recorded_notifications();
    let mut body = String::new();
    while body.len() < 200_000_000 {
        for line in &lines {
            body.push_str(line);
            body.push('\n');
        }
    }
    let bytes = body.len();
    let start = Instant::now();
    let mut parsed = 0usize;
    for line in body.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        parsed += usize::from(value.get("method").is_some());
    }
    let alone = start.elapsed();
    println!(
        "JSON-RPC parsing alone: {:.0} MB, {parsed} lines in {:.2} s = {:.0} MB/s",
        bytes as f64 / 1e6,
        alone.as_secs_f64(),
        bytes as f64 / 1e6 / alone.as_secs_f64()
    );
    let stream = dir.path().join("stream.jsonl");
    std::fs::write(&stream, body).unwrap();
    let mut config = CodexConfig::new(fake_server(dir.path(), &stream));
    config.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    config.clear_env = true;
    config.state_dir = Some(dir.path().join("state"));
    let backend = CodexBackend::new(&config);
    let request = SessionRequest::new(AgentId::new("bench@parse"), dir.path());
    let mut session = backend.start(request, Arc::new(Quiet)).await.unwrap();
    let start = Instant::now();
    let outcome = session.turn("go").await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(outcome.status, TurnStatus::Completed);
    session.close().await.unwrap();
    println!(
        "JSON-RPC read path: {:.0} MB in {:.2} s = {:.0} MB/s (framing, parsing, routing, session record)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
}

fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat; here 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn own_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The mock model in a child process: six `sleep 1` commands, then done.
async fn serve_mock() {
    let steps = (0..6)
        .map(|n| ResponsesReply::shell(&format!("sleep 1 && echo step {n}")))
        .collect();
    let mock = MockResponses::start(ResponsesScript::steps(steps, "done"));
    println!("{}", mock.url());
    std::future::pending::<()>().await;
}

/// The mock model in a child process (its CPU is not mala's), and its URL.
fn mock_child() -> (std::process::Child, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("serve-mock")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut url,
    )
    .unwrap();
    (child, url.trim().to_owned())
}

async fn sessions(codex: PathBuf, count: usize) {
    let (mut child, url) = mock_child();
    let harness = CodexHarness::for_url(&url);
    let repo = tempfile::tempdir().unwrap();
    let mut config = CodexConfig::new(codex);
    config.clear_env = true;
    config.env = harness.env();
    config.state_dir = Some(harness.root().join("state"));
    let backend = Arc::new(CodexBackend::new(&config));
    let rss_before = own_rss_kb();
    let cpu_before = own_cpu();
    let start = Instant::now();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let mut tasks = Vec::new();
    for n in 0..count {
        let backend = Arc::clone(&backend);
        let cwd = repo.path().to_path_buf();
        let peak = Arc::clone(&peak);
        tasks.push(tokio::spawn(async move {
            let request = SessionRequest::new(AgentId::new(format!("bench-{n}@sessions")), cwd);
            let mut session = backend.start(request, Arc::new(Quiet)).await.unwrap();
            let outcome = session.turn("count to six, slowly").await.unwrap();
            peak.fetch_max(own_rss_kb(), std::sync::atomic::Ordering::Relaxed);
            session.close().await.unwrap();
            outcome.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), TurnStatus::Completed);
    }
    let wall = start.elapsed();
    let cpu = own_cpu().saturating_sub(cpu_before);
    let grown_kb = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(rss_before);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{count} sessions, {:.1} s wall: mala CPU {:.2} s = {:.3} % of one core per session; RSS grew {:.2} MB = {:.3} MB per session",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0 / count as f64,
        grown_kb as f64 / 1024.0,
        grown_kb as f64 / 1024.0 / count as f64
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("parse") => parse().await,
        Some("serve-mock") => serve_mock().await,
        Some("sessions") => {
            let codex = PathBuf::from(args.get(1).expect("sessions needs the codex binary"));
            let count = args.get(2).map_or(32, |n| n.parse().unwrap());
            sessions(codex, count).await;
        }
        _ => println!("usage: bench_codex parse | sessions CODEX [N]"),
    }
}
