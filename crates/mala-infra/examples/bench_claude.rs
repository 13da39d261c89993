//! Claude backend benchmarks; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_claude -- parse
//! cargo run --release -p mala-infra --example bench_claude -- sessions CLAUDE [N]
//! cargo run --release -p mala-infra --example bench_claude -- preflight CLAUDE [N]
//! ```
//!
//! - parse: a fake CLI prints ~200 MB of recorded stream-json lines in one
//!   turn; the whole read path runs (framing, parsing, event routing, the
//!   session record on disk) and the throughput is printed.
//! - sessions: N (default 32) real claude sessions stream against the mock
//!   model (run in a child process, so its CPU is not counted); mala's own
//!   CPU time and RSS growth are printed per session.
//! - preflight: N (default 10) times what `mala run` does before its first
//!   claim: one probe session behind mala's guard whose one turn asks for
//!   the canary command, which the guard refuses (two model calls against
//!   the mock), then close. The tokens are the mock's rough count.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::cast_precision_loss)] // figures for people: f64 is precise enough

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mala_core::{AgentEvent, AgentId, AgentObserver, AgentSession, SessionRequest, TurnStatus};
use mala_infra::{ClaudeBackend, ClaudeConfig};
use mala_testkit::{MockAnthropic, Script};

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

/// Lines the CLI printed in the recorded transcripts.
fn recorded_lines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let value = if value.get("dir").is_some() {
                if value["dir"] != "in" {
                    continue;
                }
                value["line"].clone()
            } else {
                value
            };
            // Conversation messages only: the turn must not end early.
            if matches!(
                value["type"].as_str(),
                Some("assistant" | "user" | "system")
            ) {
                lines.push(value.to_string());
            }
        }
    }
    lines
}

async fn parse() {
    let dir = tempfile::tempdir().unwrap();
    let lines = recorded_lines();
    let mut body = String::new();
    while body.len() < 200_000_000 {
        for line in &lines {
            body.push_str(line);
            body.push('\n');
        }
    }
    body.push_str(r#"{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"b","num_turns":1,"total_cost_usd":0,"usage":{}}"#);
    body.push('\n');
    let bytes = body.len();
    // The parse alone, as `parse_line` does it (one serde_json Value per line).
    let start = Instant::now();
    let mut parsed = 0usize;
    for line in body.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        parsed += usize::from(value.get("type").is_some());
    }
    let alone = start.elapsed();
    println!(
        "stream-json parsing alone: {:.0} MB, {parsed} lines in {:.2} s = {:.0} MB/s",
        bytes as f64 / 1e6,
        alone.as_secs_f64(),
        bytes as f64 / 1e6 / alone.as_secs_f64()
    );
    std::fs::write(dir.path().join("stream.jsonl"), body).unwrap();
    let fake = dir.path().join("claude");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\nwhile IFS= read -r line; do case \"$line\" in\n*'\"subtype\":\"initialize\"'*) id=$(printf '%s' \"$line\" | sed -n 's/.*\"request_id\":\"\\([^\"]*\\)\".*/\\1/p'); printf '{{\"type\":\"control_response\",\"response\":{{\"subtype\":\"success\",\"request_id\":\"%s\",\"response\":{{}}}}}}\\n' \"$id\" ;;\n*'\"type\":\"user\"'*) cat '{}' ;;\nesac; done\n",
            dir.path().join("stream.jsonl").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = ClaudeConfig::new(&fake, dir.path().join("state"));
    config.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    config.clear_env = true;
    let backend = ClaudeBackend::new(config);
    let mut session = backend
        .start_session(
            SessionRequest::new(AgentId::new("bench@parse"), dir.path()),
            Arc::new(Quiet),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let outcome = session.turn("go").await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(outcome.status, TurnStatus::Completed);
    session.close().await.unwrap();
    println!(
        "stream-json read path: {:.0} MB in {:.2} s = {:.0} MB/s (framing, parsing, routing, session record)",
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

/// The mock model in a child process: prints its URL, serves until killed.
async fn serve_mock() {
    let mock = MockAnthropic::start(Script::directives());
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

/// claude kept offline against the mock at `url`.
fn offline_config(claude: &Path, url: &str, state: &Path) -> ClaudeConfig {
    std::fs::create_dir_all(state.join("home")).unwrap();
    let mut config = ClaudeConfig::new(claude, state.join("state"));
    config.model = Some("claude-sonnet-4-5".into());
    config.clear_env = true;
    config.env = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", state.join("home").display().to_string()),
        (
            "CLAUDE_CONFIG_DIR",
            state.join("config").display().to_string(),
        ),
        ("ANTHROPIC_BASE_URL", url.to_owned()),
        ("ANTHROPIC_API_KEY", "sk-ant-offline-bench".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
        ("IS_SANDBOX", "1".to_owned()),
        ("HTTPS_PROXY", url.to_owned()),
        ("HTTP_PROXY", url.to_owned()),
        ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    config
}

/// Keeps a turn's tool events, to judge the preflight as a run does.
#[derive(Default)]
struct Kept(std::sync::Mutex<Vec<AgentEvent>>);

impl AgentObserver for Kept {
    fn on_event(&self, event: &AgentEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// What a run's preflight costs: one probe session behind mala's guard,
/// one canary turn (two model calls), then close; as `mala run` does it.
async fn preflight(claude: PathBuf, count: usize) {
    let (mut child, url) = mock_child();
    let state = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let locks: Arc<dyn mala_core::LockTable> =
        Arc::new(mala_infra::FileLockTable::new(state.path().join("locks"), repo.path()).unwrap());
    let guard = mala_infra::LockingGuard::new(repo.path(), locks, Vec::new());
    let backend =
        ClaudeBackend::new(offline_config(&claude, &url, state.path())).with_guard(Arc::new(guard));
    let (mut times, mut tokens) = (Vec::new(), Vec::new());
    for n in 0..count {
        let start = Instant::now();
        let mut request = SessionRequest::new(
            AgentId::new(format!("preflight@{n}")),
            repo.path().to_path_buf(),
        );
        request.probe = true;
        let kept = Arc::new(Kept::default());
        let mut session = backend.start_session(request, kept.clone()).await.unwrap();
        let outcome = session
            .turn(&mala_domain::preflight_prompt())
            .await
            .unwrap();
        session.close().await.unwrap();
        times.push(start.elapsed());
        mala_domain::judge_preflight(&kept.0.lock().unwrap())
            .expect("the guard refused the canary");
        tokens.push(outcome.usage.total());
    }
    let _ = child.kill();
    let _ = child.wait();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "preflight, {count} runs: median {:.0} ms, p95 {:.0} ms, min {:.0} ms; {} tokens each (mock's count)",
        ms(times[count / 2]),
        ms(times[(count * 95 / 100).min(count - 1)]),
        ms(times[0]),
        tokens[0]
    );
}

async fn sessions(claude: PathBuf, count: usize) {
    let (mut child, url) = mock_child();
    let state = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let config = offline_config(&claude, &url, state.path());
    let backend = ClaudeBackend::new(config);
    let rss_before = own_rss_kb();
    let cpu_before = own_cpu();
    let start = Instant::now();
    // Each session streams a few tool calls with pauses: a live, busy agent.
    let prompt = (0..6)
        .map(|n| format!("MOCK_TOOL Bash {{\"command\": \"sleep 1 && echo step {n}\"}}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut tasks = Vec::new();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    for n in 0..count {
        let backend = backend.clone();
        let cwd = repo.path().to_path_buf();
        let prompt = prompt.clone();
        let peak = Arc::clone(&peak);
        tasks.push(tokio::spawn(async move {
            let mut session = backend
                .start_session(
                    SessionRequest::new(AgentId::new(format!("bench-{n}@sessions")), cwd),
                    Arc::new(Quiet),
                )
                .await
                .unwrap();
            let outcome = session.turn(&prompt).await.unwrap();
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
        Some("preflight") => {
            let claude = PathBuf::from(args.get(1).expect("preflight needs the claude binary"));
            let count = args.get(2).map_or(10, |n| n.parse().unwrap());
            preflight(claude, count).await;
        }
        Some("sessions") => {
            let claude = PathBuf::from(args.get(1).expect("sessions needs the claude binary"));
            let count = args.get(2).map_or(32, |n| n.parse().unwrap());
            sessions(claude, count).await;
        }
        _ => println!("usage: bench_claude parse | sessions CLAUDE [N] | preflight CLAUDE [N]"),
    }
}
