//! The working-tree observer's cost; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p mala-infra --example bench_tree_watch [FILES] [RUNS]
//! ```
//!
//! Makes a git repository of FILES files (default 10,000) in 100 directories,
//! with a `.gitignore` and an ignored `target/` of 2,000 more files, then
//! times RUNS (default 50) observations: one window opened and closed around
//! a write of one file (after the first, which scans the whole tree and
//! sets up the kernel's watches, a scan of what the kernel says changed).
//! The budget is 20 ms per observation at 10,000 files.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use mala_core::AgentId;
use mala_infra::{Snapshot, TreeWatch};

fn figures(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100];
    format!(
        "median {:.2} ms, p95 {:.2} ms, max {:.2} ms ({} runs)",
        at(50).as_secs_f64() * 1e3,
        at(95).as_secs_f64() * 1e3,
        at(100).as_secs_f64() * 1e3,
        samples.len()
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().map_or(10_000, |a| a.parse().unwrap());
    let runs: usize = args.next().map_or(50, |a| a.parse().unwrap());
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    let per_dir = files.div_ceil(100);
    for n in 0..files {
        let dir = root.join(format!("src/d{}", n / per_dir));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{n}.rs")), format!("// {n}\n")).unwrap();
    }
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    for n in 0..2_000 {
        std::fs::write(root.join(format!("target/o{n}")), "x").unwrap();
    }
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(["-c", "user.name=b", "-c", "user.email=b@b"])
            .args(args)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "tree"]);
    let scanned = Snapshot::scan(root).len();
    println!("tree: {scanned} files seen (of {files} + .gitignore; target/ ignored)");

    let mut scans = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let snapshot = Snapshot::scan(root);
        scans.push(start.elapsed());
        assert_eq!(snapshot.len(), scanned);
    }
    println!("one scan: {}", figures(scans));

    let watch = TreeWatch::new(root, None);
    let agent = AgentId::new("bench@run");
    let target = root.join("src/d0/f0.rs");
    let start = Instant::now();
    let _ = watch.close(watch.open(&agent, &mala_infra::Call::Other));
    println!(
        "first observation (full scans, and a kernel watch on each directory and file): {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut observations = Vec::with_capacity(runs);
    for n in 0..runs {
        let start = Instant::now();
        let window = watch.open(&agent, &mala_infra::Call::Other);
        std::fs::write(&target, format!("// {n}\n")).unwrap();
        let seen = watch.close(window);
        observations.push(start.elapsed());
        assert_eq!(seen.edits.len(), 1);
    }
    println!(
        "one observation (open + write + close): {}",
        figures(observations)
    );
}
