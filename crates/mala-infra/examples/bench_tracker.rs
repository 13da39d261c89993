//! Tracker benchmarks; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_tracker -- ready [ISSUES]
//! cargo run --release -p mala-infra --example bench_tracker -- claims BR [ISSUES] [PAIRS]
//! cargo build --release -p mala && cargo run --release -p mala-infra --example bench_tracker -- dry-run BR target/release/mala [ISSUES] [RUNS]
//! ```
//!
//! `ready`: the run's queue from a synthetic `issues.jsonl` (read, graph, plan).
//! `claims`: PAIRS concurrent claim + close pairs through one `BrTracker` on a
//! br repository of ISSUES issues; counts write-lock failures.
//! `dry-run`: `mala run --dry-run` through the binary on a git checkout with a
//! br repository of ISSUES issues, RUNS times after one warm-up, beside
//! `br ready --json` on the same repository.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mala_core::{ClaimOutcome, IssueTracker};
use mala_domain::{IssueGraph, Order, QueueRequest, Scope, plan_queue, takeover_candidates};
use mala_infra::{BrTracker, SystemClock, read_issues_jsonl};
use mala_testkit::synthetic_tracker;

fn figures(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100];
    format!(
        "min {:.2} ms, median {:.2} ms, p95 {:.2} ms, max {:.2} ms ({} runs)",
        at(0).as_secs_f64() * 1e3,
        at(50).as_secs_f64() * 1e3,
        at(95).as_secs_f64() * 1e3,
        at(100).as_secs_f64() * 1e3,
        samples.len()
    )
}

fn ready(issues: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issues.jsonl");
    std::fs::write(&path, synthetic_tracker("bench", issues, 42)).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let types: Vec<String> = ["task", "bug", "feature", "chore"]
        .map(String::from)
        .to_vec();
    let mut samples = Vec::new();
    let mut queued = 0;
    for _ in 0..31 {
        let start = Instant::now();
        let graph = IssueGraph::new(read_issues_jsonl(&path).unwrap());
        let takeover = takeover_candidates(graph.issues(), false, |_| true);
        let plan = plan_queue(
            &graph,
            &QueueRequest {
                scope: &Scope::All,
                order: Order::EpicPriority,
                issue_types: &types,
                skip: &HashSet::new(),
                takeover: &takeover,
                limit: None,
                now: chrono::Utc::now(),
            },
        )
        .unwrap();
        samples.push(start.elapsed());
        queued = plan.entries.len();
    }
    samples.remove(0); // warm-up
    println!(
        "ready queue: {issues} issues ({}.{} MB issues.jsonl), {queued} queued: {}",
        size / 1_000_000,
        size / 100_000 % 10,
        figures(samples)
    );
}

fn br(binary: &Path, repo: &Path, args: &[&str]) {
    let status = Command::new(binary)
        .args(args)
        .current_dir(repo)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "br {args:?} failed");
}

async fn claims(binary: &Path, issues: usize, pairs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    br(binary, repo, &["init", "--prefix", "bench"]);
    std::fs::write(
        repo.join(".beads/issues.jsonl"),
        synthetic_tracker("bench", issues, 42),
    )
    .unwrap();
    let start = Instant::now();
    br(binary, repo, &["sync", "--import-only"]);
    println!(
        "imported {issues} issues into br in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let tracker = Arc::new(BrTracker::new(binary, repo, Arc::new(SystemClock)));
    let ready: Vec<_> = tracker
        .ready()
        .await
        .unwrap()
        .into_iter()
        .take(pairs)
        .collect();
    assert_eq!(ready.len(), pairs, "not enough ready issues");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, issue) in ready.into_iter().enumerate() {
        let tracker = Arc::clone(&tracker);
        tasks.push(tokio::spawn(async move {
            let actor = format!("mala:bench-{n}");
            let claimed = tracker.claim(&issue.id, &actor).await;
            let closed = tracker.close(&issue.id, "done").await;
            (issue.id, claimed, closed)
        }));
    }
    let mut failures = 0;
    for task in tasks {
        let (id, claimed, closed) = task.await.unwrap();
        if !matches!(claimed, Ok(ClaimOutcome::Claimed)) || closed.is_err() {
            failures += 1;
            println!("  {id}: claim {claimed:?}, close {closed:?}");
        }
    }
    let elapsed = start.elapsed();
    let graph = tracker.snapshot().await.unwrap();
    let closed = graph
        .issues()
        .iter()
        .filter(|i| {
            i.assignee
                .as_deref()
                .is_some_and(|a| a.starts_with("mala:bench-"))
        })
        .count();
    println!(
        "{pairs} concurrent claim+close pairs on {issues} issues: {:.1} s wall, {failures} failures, {closed} issues claimed and closed",
        elapsed.as_secs_f64()
    );
}

/// Times `program args` in `repo` with `PATH` set to `path`, `runs` times
/// after one warm-up.
fn timed(program: &Path, args: &[&str], repo: &Path, path: &str, runs: usize) -> Vec<Duration> {
    let once = || {
        let start = Instant::now();
        let out = Command::new(program)
            .args(args)
            .current_dir(repo)
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };
    once();
    (0..runs).map(|_| once()).collect()
}

fn dry_run(br_binary: &Path, mala: &Path, issues: usize, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let git = |args: &[&str]| {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(repo)
                .status()
                .unwrap()
                .success()
        );
    };
    git(&["init", "-q"]);
    br(br_binary, repo, &["init", "--prefix", "bench"]);
    std::fs::write(
        repo.join(".beads/issues.jsonl"),
        synthetic_tracker("bench", issues, 42),
    )
    .unwrap();
    br(br_binary, repo, &["sync", "--import-only"]);
    std::fs::write(repo.join("mala.yaml"), "preset: rust\n").unwrap();
    // The binary finds br on PATH, as a user's shell would.
    let path = format!(
        "{}:{}",
        br_binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mala_times = timed(mala, &["run", "--dry-run"], repo, &path, runs);
    println!(
        "mala run --dry-run on {issues} issues (br installed): {}",
        figures(mala_times)
    );
    let br_times = timed(
        br_binary,
        &["ready", "--json", "--limit", "0"],
        repo,
        &path,
        runs,
    );
    println!(
        "br ready --json --limit 0 on the same repository: {}",
        figures(br_times)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().unwrap());
    match args.first().map(String::as_str) {
        Some("ready") => ready(number(1, 10_000)),
        Some("claims") => {
            let binary = args.get(1).expect("claims needs the br binary");
            claims(Path::new(binary), number(2, 10_000), number(3, 32)).await;
        }
        Some("dry-run") => {
            let binary = args.get(1).expect("dry-run needs the br binary");
            let mala = args.get(2).expect("dry-run needs the mala binary");
            dry_run(
                Path::new(binary),
                Path::new(mala),
                number(3, 10_000),
                number(4, 30),
            );
        }
        _ => println!(
            "usage: bench_tracker ready [ISSUES] | claims BR [ISSUES] [PAIRS] | dry-run BR MALA [ISSUES] [RUNS]"
        ),
    }
}
