//! Coordination benchmarks; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_coordination [LOCK_DIR]
//! ```
//!
//! - lock: one uncontended acquire + release on the file lock table
//!   (in LOCK_DIR, default a temporary directory under /tmp, like mala's /tmp/mala-locks);
//! - deadlock: the check on a new wait edge that closes a 256-agent cycle,
//!   with 10,000 locks held;
//! - guard: the tool guard deciding typical commands.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mala_core::{AgentId, LockTable};
use mala_domain::{GuardContext, ToolCall, WaitForGraph, check_tool};
use mala_infra::FileLockTable;

fn figures(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100];
    format!(
        "median {:.1} µs, p95 {:.1} µs, max {:.1} µs ({} runs)",
        at(50).as_secs_f64() * 1e6,
        at(95).as_secs_f64() * 1e6,
        at(100).as_secs_f64() * 1e6,
        samples.len()
    )
}

async fn locks(dir: Option<PathBuf>) {
    let scratch = tempfile::tempdir().unwrap();
    let lock_dir = dir.unwrap_or_else(|| scratch.path().join("locks"));
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("a.rs"), "").unwrap();
    let table = FileLockTable::new(&lock_dir, repo.path()).unwrap();
    let agent = AgentId::new("bench@run");
    let path = vec!["a.rs".to_owned()];
    let mut samples = Vec::new();
    for round in 0..5_100 {
        let start = Instant::now();
        let report = table.acquire(&agent, &path, Duration::ZERO).await.unwrap();
        table.release(&agent, &path).await.unwrap();
        if round >= 100 {
            samples.push(start.elapsed());
        }
        assert!(report.all_acquired);
    }
    println!(
        "lock acquire + release (uncontended, {}): {}",
        lock_dir.display(),
        figures(samples)
    );
}

fn deadlock() {
    let agents: Vec<AgentId> = (0..256)
        .map(|n| AgentId::new(format!("agent-{n:03}")))
        .collect();
    let mut graph = WaitForGraph::new();
    // 10,000 locks spread over the agents; key k-<n> is held by agent n % 256.
    for n in 0..10_000 {
        graph.acquired(&agents[n % 256], &format!("k-{n}"));
    }
    // A chain: agent i waits for a key of agent i + 1 ...
    for i in 0..255 {
        let key = format!("k-{}", i + 1);
        assert!(
            graph
                .waiting(&agents[i], &[(key, agents[i + 1].clone())])
                .is_none()
        );
    }
    let mut samples = Vec::new();
    for _ in 0..500 {
        let mut copy = graph.clone();
        // ... and the last one waits for agent 0: the edge closes a 256-agent cycle.
        let start = Instant::now();
        let found = copy.waiting(&agents[255], &[("k-0".to_owned(), agents[0].clone())]);
        samples.push(start.elapsed());
        assert_eq!(found.unwrap().cycle.len(), 256);
    }
    println!(
        "deadlock check, new wait edge closing a 256-agent cycle, 10,000 locks held: {}",
        figures(samples)
    );
}

fn guard() {
    let root = PathBuf::from("/repo");
    let held = vec![root.join("src/lib.rs"), root.join("out.log")];
    let ctx = GuardContext {
        repo_root: &root,
        cwd: &root,
        held: &held,
        disallowed_tools: &[],
        staged: None,
        require_locks: true,
        commit_prefix: None,
        own_branch: None,
        elsewhere: &[],
    };
    // `{n}` makes every command new, so no parser cache answers for us.
    for command in [
        "cargo test case_{n}",
        "cargo test case_{n} 2>&1 | tee out.log",
        "git add src/lib.rs && git commit -m \"bd-m-1: fix {n}\" -- src/lib.rs",
        "rg -n 'fn main_{n}' src/ | head -20",
        "git reset --hard HEAD~{n}",
    ] {
        let mut samples = Vec::new();
        for round in 0..10_100 {
            let call = ToolCall::Shell {
                tool: "Bash".into(),
                command: command.replace("{n}", &round.to_string()),
            };
            let start = Instant::now();
            let decision = check_tool(&call, &ctx);
            if round >= 100 {
                samples.push(start.elapsed());
            }
            std::hint::black_box(decision);
        }
        println!("guard `{command}`: {}", figures(samples));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from);
    locks(dir).await;
    deadlock();
    guard();
}
