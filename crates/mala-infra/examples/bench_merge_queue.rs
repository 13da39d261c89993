//! The merge queue's cost; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_merge_queue [BRANCHES] [VALIDATE_SECONDS]
//! ```
//!
//! Makes a repository of 1,000 files, checked out on `main` (so every
//! landing also brings the user's checkout along), and BRANCHES (default
//! 32) issue worktrees, each with one commit to a file of its own. All of
//! them ask to land at once; each landing rebases, runs a validation that
//! sleeps VALIDATE_SECONDS (default 1) and moves `main`. It prints the
//! merges per minute and what the queue adds over the validations
//! themselves, timed alone the same way (`bash -c`, one after another).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use mala_core::{CheckCommand, IssueId, Landing, Workspaces};
use mala_infra::{GitWorktrees, run_commands};

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@b"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let branches: u32 = args.next().map_or(32, |a| a.parse().unwrap());
    let seconds: f64 = args.next().map_or(1.0, |a| a.parse().unwrap());
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    for n in 0..1_000 {
        let dir = root.join(format!("src/d{}", n / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{n}.rs")), format!("// {n}\n")).unwrap();
    }
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["config", "user.name", "bench"]);
    git(root, &["config", "user.email", "bench@mala.invalid"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "tree"]);
    let state = tempfile::tempdir().unwrap();
    let trees = Arc::new(GitWorktrees::new(root, state.path()).await.unwrap());
    let issues: Vec<IssueId> = (0..branches)
        .map(|n| IssueId::new(format!("b-{n}")))
        .collect();
    for issue in &issues {
        let ws = trees.open(issue).await.unwrap();
        std::fs::write(ws.root.join(format!("{issue}.txt")), "done\n").unwrap();
        git(&ws.root, &["add", "-A"]);
        git(&ws.root, &["commit", "-qm", &format!("bd-{issue}: done")]);
    }
    let validate = vec![CheckCommand {
        name: "test".into(),
        command: format!("sleep {seconds}"),
        timeout: Some(600),
    }];

    let alone = Instant::now();
    for _ in 0..branches {
        run_commands(root, &validate).await.unwrap();
    }
    let alone = alone.elapsed();

    let started = Instant::now();
    let landings: Vec<_> = issues
        .iter()
        .map(|issue| {
            let (trees, issue, validate) = (Arc::clone(&trees), issue.clone(), validate.clone());
            tokio::spawn(async move { trees.land(&issue, &validate).await })
        })
        .collect();
    for landing in landings {
        assert!(matches!(
            landing.await.unwrap().unwrap(),
            Landing::Landed { .. }
        ));
    }
    let queued = started.elapsed();
    let overhead = queued.saturating_sub(alone);
    println!(
        "{branches} branches, validation {seconds} s each: landed in {:.2} s ({:.1} merges/min); \
         the validations alone take {:.2} s; the queue adds {:.0} ms ({:.1} ms per landing, {:.1} %)",
        queued.as_secs_f64(),
        f64::from(branches) * 60.0 / queued.as_secs_f64(),
        alone.as_secs_f64(),
        overhead.as_secs_f64() * 1e3,
        overhead.as_secs_f64() * 1e3 / f64::from(branches),
        overhead.as_secs_f64() / alone.as_secs_f64() * 100.0
    );
}
