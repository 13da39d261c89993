//! Property: mala's in-process ready set equals `br ready` on the same repo.
//!
//! Each case writes a random tracker (types, statuses, priorities, epics,
//! nested parents, blocking dependencies, dangling ones, deferrals, pinned
//! issues and templates) as br's JSONL, lets the real br import it, and
//! compares `br ready --json --limit 0` with `IssueGraph::ready`.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use mala_domain::IssueGraph;
use mala_infra::read_issues_jsonl;
use mala_testkit::{Br, TempRepo, Tool, require_tool};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const TYPES: &[&str] = &["task", "bug", "feature", "epic", "chore", "docs"];
const STATUSES: &[&str] = &[
    "open",
    "open",
    "open",
    "open",
    "in_progress",
    "closed",
    "closed",
    "deferred",
    "blocked",
    "review",
];

#[derive(Debug, Clone)]
struct RandomIssue {
    issue_type: usize,
    status: usize,
    priority: u8,
    /// Index of an earlier issue (edges only point back, so there are no cycles).
    parent: Option<prop::sample::Index>,
    blockers: Vec<prop::sample::Index>,
    dangling_blocker: bool,
    /// None, in the past, or in the future.
    defer: Option<bool>,
    pinned: bool,
    template: bool,
}

fn random_issue() -> impl Strategy<Value = RandomIssue> {
    (
        0..TYPES.len(),
        0..STATUSES.len(),
        0u8..=4,
        prop::option::weighted(0.5, any::<prop::sample::Index>()),
        prop::collection::vec(any::<prop::sample::Index>(), 0..=2),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.15, any::<bool>()),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.03),
    )
        .prop_map(
            |(
                issue_type,
                status,
                priority,
                parent,
                blockers,
                dangling_blocker,
                defer,
                pinned,
                template,
            )| {
                RandomIssue {
                    issue_type,
                    status,
                    priority,
                    parent,
                    blockers,
                    dangling_blocker,
                    defer,
                    pinned,
                    template,
                }
            },
        )
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn id(index: i64) -> String {
    format!("p-{index:03}")
}

/// The tracker as br's issues.jsonl.
fn jsonl(issues: &[RandomIssue], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    for (i, issue) in (0i64..).zip(issues) {
        let created = now - Duration::hours(100) + Duration::seconds(i);
        let status = STATUSES[issue.status];
        let mut row = serde_json::json!({
            "id": id(i),
            "title": format!("issue {i}"),
            "status": status,
            "priority": issue.priority,
            "issue_type": TYPES[issue.issue_type],
            "created_at": stamp(created),
            "updated_at": stamp(created),
            "compaction_level": 0,
        });
        if status == "closed" {
            row["closed_at"] = stamp(created).into();
        }
        match issue.defer {
            Some(true) => row["defer_until"] = stamp(now + Duration::days(30)).into(),
            Some(false) => row["defer_until"] = stamp(now - Duration::days(30)).into(),
            None => {}
        }
        if issue.pinned {
            row["pinned"] = true.into();
        }
        if issue.template {
            row["is_template"] = true.into();
        }
        let mut deps: Vec<(String, &str)> = Vec::new();
        // Edges only point at earlier issues, so the tracker has no cycles.
        let earlier = |index: &prop::sample::Index| {
            usize::try_from(i)
                .ok()
                .map(|n| id(i64::try_from(index.index(n)).unwrap_or(0)))
        };
        if i > 0 {
            if let Some(parent) = issue.parent.as_ref().and_then(earlier) {
                deps.push((parent, "parent-child"));
            }
            for blocker in issue.blockers.iter().filter_map(earlier) {
                deps.push((blocker, "blocks"));
            }
        }
        if issue.dangling_blocker {
            deps.push(("p-zzz".to_owned(), "blocks"));
        }
        deps.sort();
        deps.dedup_by(|a, b| a.0 == b.0);
        if !deps.is_empty() {
            row["dependencies"] = deps
                .iter()
                .map(|(on, kind)| {
                    serde_json::json!({
                        "issue_id": id(i),
                        "depends_on_id": on,
                        "type": kind,
                        "created_at": stamp(created),
                        "metadata": "{}",
                        "thread_id": "",
                    })
                })
                .collect::<Vec<_>>()
                .into();
        }
        let _ = writeln!(out, "{row}");
    }
    out
}

#[test]
fn in_process_ready_set_equals_br_ready_on_200_random_trackers() {
    let binary = require_tool!(Tool::Br);
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(random_issue(), 1..=24);
    let result = runner.run(&strategy, |issues| {
        let repo = TempRepo::new();
        let br = Br::init(&binary, repo.path(), "p");
        let now = Utc::now();
        let path = repo.path().join(".beads/issues.jsonl");
        std::fs::write(&path, jsonl(&issues, now))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let graph = IssueGraph::new(
            read_issues_jsonl(&path).map_err(|e| TestCaseError::fail(e.to_string()))?,
        );
        let mut ours: Vec<String> = graph.ready(now).iter().map(|i| i.id.to_string()).collect();
        ours.sort();
        let theirs = br.ready_ids();
        prop_assert_eq!(
            &ours,
            &theirs,
            "tracker:\n{}",
            std::fs::read_to_string(&path).unwrap_or_default()
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
