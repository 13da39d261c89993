//! mala as a library: a whole run over in-memory ports. An epic with two
//! tasks (one waiting for the other) and a loose task; the agents are
//! scripted, and the one on `demo-3` says it is done without committing.
//!
//! `cargo run -p mala-orchestration --example embedded`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // an example

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mala_core::{Dependency, DependencyKind, Issue, IssueId, IssueType};
use mala_domain::{ConfigSources, FlagOverrides, Settings, resolve};
use mala_orchestration::{Orchestrator, RunPlan, RunSummary, Stage};
use mala_testkit::{MemoryRepository, MemoryTracker, ScriptedBackend};

fn issues() -> Vec<Issue> {
    let now = Utc::now();
    let mut epic = Issue::new("demo-1", "Parser rewrite", now);
    epic.issue_type = IssueType::Epic;
    let child = |id: &str, title: &str| {
        let mut issue = Issue::new(id, title, now);
        issue.parent = Some(IssueId::new("demo-1"));
        issue.dependencies.push(Dependency {
            depends_on: IssueId::new("demo-1"),
            kind: DependencyKind::ParentChild,
        });
        issue
    };
    let lexer = child("demo-1.1", "New lexer");
    let mut parser = child("demo-1.2", "New parser on the new lexer");
    parser.dependencies.push(Dependency {
        depends_on: IssueId::new("demo-1.1"),
        kind: DependencyKind::Blocks,
    });
    let docs = Issue::new("demo-3", "Document the grammar", now);
    vec![epic, lexer, parser, docs]
}

/// Runs the demo under `settings` and returns what the run reports, with
/// the tracker after it. Nothing is written anywhere: every port is in
/// memory, and without a run store the run keeps no record of itself.
async fn run_demo_with(
    settings: Settings,
    repo: &Path,
) -> (RunSummary, MemoryTracker, MemoryRepository) {
    let tracker = MemoryTracker::with_issues(issues());
    let repository = MemoryRepository::default();
    let backend =
        ScriptedBackend::honest(repository.clone(), Duration::from_millis(20)).lazy_on(&["demo-3"]);
    let orchestrator = Orchestrator::builder(settings, repo)
        .plan(RunPlan {
            max_agents: 2,
            run_id: "demo".into(),
            ..RunPlan::default()
        })
        .tracker(Arc::new(tracker.clone()))
        .backend(Arc::new(backend))
        .repository(Arc::new(repository.clone()))
        .build()
        .unwrap();
    // Send Stage::Drain (or Abort, Kill) on the other end to stop the run.
    let (_stop, stages) = tokio::sync::watch::channel(Stage::Running);
    let summary = orchestrator.run(stages).await.unwrap();
    (summary, tracker, repository)
}

/// The defaults, as `mala.yaml` would refine them.
fn demo_settings() -> Settings {
    let mut settings = resolve(ConfigSources {
        file: None,
        env: &BTreeMap::new(),
        flags: &FlagOverrides::default(),
    })
    .unwrap();
    settings.epic_verification.enabled = false;
    settings
}

async fn run_demo() -> (RunSummary, MemoryTracker, MemoryRepository) {
    run_demo_with(demo_settings(), Path::new("/demo/repo")).await
}

#[tokio::main]
async fn main() {
    let (summary, tracker, repository) = run_demo().await;
    println!("closed: {:?}", summary.closed);
    for (issue, reason) in &summary.failed {
        println!("failed: {issue}: {reason}");
    }
    println!("commits:");
    for commit in repository.commits().iter().rev() {
        println!("  {}", commit.subject);
    }
    println!(
        "closed in the tracker (the epic with its last child): {}",
        tracker.count(&mala_core::IssueStatus::Closed)
    );
}

#[tokio::test]
async fn the_demo_closes_the_honest_work_and_the_epic_and_catches_the_lie() {
    let (summary, tracker, repository) = run_demo().await;
    let closed: Vec<&str> = summary.closed.iter().map(IssueId::as_str).collect();
    assert_eq!(closed, vec!["demo-1.1", "demo-1.2"], "in dependency order");
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].0.as_str(), "demo-3");
    assert_eq!(
        tracker.count(&mala_core::IssueStatus::Closed),
        3,
        "the epic too"
    );
    assert_eq!(repository.commits().len(), 2);
}

#[tokio::test]
async fn the_demo_touches_no_file_of_its_own() {
    // Every path mala would write to points into an empty directory; after
    // the run it is still empty, and the repository path was never made.
    let watched = tempfile::tempdir().unwrap();
    let mut settings = demo_settings();
    settings.paths.runs_dir = watched.path().join("runs");
    settings.paths.lock_dir = watched.path().join("locks");
    let repo = watched.path().join("repo");
    let (summary, _, _) = run_demo_with(settings, &repo).await;
    assert_eq!(summary.closed.len(), 2);
    let left: Vec<_> = std::fs::read_dir(watched.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the run wrote {left:?}");
}
