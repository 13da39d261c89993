//! `mala run --dry-run` through the binary, with the real br and without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic to fail the test

use std::path::Path;
use std::process::{Command, Output};

use mala_testkit::{Br, NewIssue, TempRepo, Tool, require_tool};
use serde_json::Value;

/// Runs mala with a PATH of `/usr/bin:/bin`, plus br's directory when given.
fn mala(dir: &Path, br: Option<&Path>, args: &[&str]) -> Output {
    let mut path = String::new();

    if let Some(br) = br {
        // The binary may not be called `br` (MALA_TEST_BR); link it under that name.
        let bin = dir.join(".test-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("br");
        if !link.exists() {
            std::os::unix::fs::symlink(br, &link).unwrap();
        }
        path = format!("{}:", bin.display());
    }
    path.push_str("/usr/bin:/bin");
    Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir.join(".home"))
        .env("PATH", path)
        .env("MALA_LOCK_DIR", dir.join(".locks"))
        .output()
        .expect("run mala")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ids(report: &Value) -> Vec<String> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn reason_of<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in excluded: {report}"))
}

/// The tracker of research/beads.md §8.3, plus a bug, a question and a person's claim.
struct Demo {
    auth: String,
    schema: String,
    login: String,
    readme: String,
    orphan: String,
    bug: String,
    question: String,
    theirs: String,
}

fn demo(br: &Br) -> Demo {
    let auth = br.create(&NewIssue {
        title: "Auth epic",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let docs = br.create(&NewIssue {
        title: "Docs epic",
        issue_type: "epic",
        priority: 3,
        ..NewIssue::default()
    });
    let schema = br.create(&NewIssue {
        title: "Schema",
        priority: 2,
        parent: Some(&auth),
        ..NewIssue::default()
    });
    let login = br.create(&NewIssue {
        title: "Login",
        priority: 0,
        parent: Some(&auth),
        ..NewIssue::default()
    });
    br.block(&login, &schema);
    let readme = br.create(&NewIssue {
        title: "Readme",
        priority: 1,
        parent: Some(&docs),
        ..NewIssue::default()
    });
    let orphan = br.create(&NewIssue {
        title: "Orphan",
        priority: 2,
        ..NewIssue::default()
    });
    let bug = br.create(&NewIssue {
        title: "Crash",
        issue_type: "bug",
        priority: 0,
        ..NewIssue::default()
    });
    let question = br.create(&NewIssue {
        title: "A question",
        issue_type: "question",
        priority: 0,
        ..NewIssue::default()
    });
    let theirs = br.create(&NewIssue {
        title: "Someone else's",
        priority: 0,
        ..NewIssue::default()
    });
    br.run(&["--actor", "alice", "update", &theirs, "--claim"]);
    Demo {
        auth,
        schema,
        login,
        readme,
        orphan,
        bug,
        question,
        theirs,
    }
}

#[test]
fn dry_run_shows_the_queue_a_run_would_take_with_real_br() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "m");
    let Demo {
        auth,
        schema,
        login,
        readme,
        orphan,
        bug,
        question,
        theirs,
    } = demo(&br);
    let before = std::fs::read(repo.path().join(".beads/issues.jsonl")).unwrap();

    let out = mala(repo.path(), Some(&binary), &["run", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tracker"], "br");
    // Orphans first (their best priority is the P0 bug), then epics by priority.
    assert_eq!(
        ids(&report),
        vec![bug.clone(), orphan.clone(), schema.clone(), readme.clone()]
    );
    assert_eq!(report["entries"][2]["epic"], auth.as_str());
    assert_eq!(reason_of(&report, &login)["reason"], "blocked");
    assert_eq!(reason_of(&report, &auth)["reason"], "epic");
    assert_eq!(reason_of(&report, &question)["reason"], "type");
    assert_eq!(reason_of(&report, &theirs)["by"], "alice");

    let out = mala(
        repo.path(),
        Some(&binary),
        &[
            "run",
            "--dry-run",
            "--order",
            "issue-priority",
            "--max-issues",
            "2",
            "--verbose",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("1. {bug} [P0] bug")), "{shown}");
    assert!(shown.contains(&format!("2. {readme} [P1] task")), "{shown}");
    assert!(
        shown.contains(&format!("{login}  Login  (blocked by {schema})")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{schema}  Schema  (beyond --max-issues)")),
        "{shown}"
    );

    let scope = format!("ids:{orphan},{bug}");
    let out = mala(
        repo.path(),
        Some(&binary),
        &[
            "run",
            "--dry-run",
            "--json",
            "--scope",
            &scope,
            "--order",
            "input",
        ],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&report), vec![orphan.clone(), bug.clone()]);

    let out = mala(
        repo.path(),
        Some(&binary),
        &["run", "--dry-run", "--scope", "ids:m-nope,m-zzz"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown issue ids: m-nope, m-zzz"),
        "{}",
        text(&out.stderr)
    );

    let after = std::fs::read(repo.path().join(".beads/issues.jsonl")).unwrap();
    assert_eq!(before, after, "a dry run changes nothing");
}

/// br's JSONL, written by hand, served by the embedded store.
const HAND_WRITTEN: &str = concat!(
    r#"{"id":"h-1","title":"First","status":"open","priority":1,"issue_type":"task","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#,
    "\n",
    r#"{"id":"h-2","title":"Second","status":"open","priority":0,"issue_type":"task","created_at":"2026-01-01T00:00:01Z","updated_at":"2026-01-01T00:00:01Z","dependencies":[{"issue_id":"h-2","depends_on_id":"h-1","type":"blocks","created_at":"2026-01-01T00:00:01Z"}]}"#,
    "\n",
);

#[test]
fn without_br_the_embedded_store_serves_a_hand_written_tracker() {
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join(".beads")).unwrap();
    std::fs::write(repo.path().join(".beads/issues.jsonl"), HAND_WRITTEN).unwrap();
    let out = mala(repo.path(), None, &["run", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tracker"], "jsonl");
    assert_eq!(ids(&report), vec!["h-1"]);

    std::fs::write(repo.path().join("mala.yaml"), "preset: rust\ntracker: br\n").unwrap();
    let out = mala(repo.path(), None, &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let message = text(&out.stderr);
    assert!(message.contains("br is not installed"), "{message}");
    assert!(
        message.contains("cargo +nightly install beads_rust --locked"),
        "{message}"
    );
}

#[test]
fn a_malformed_jsonl_line_is_named_and_nothing_is_rewritten() {
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join(".beads")).unwrap();
    let broken = format!("{HAND_WRITTEN}{{\"id\":\"h-3\",\"title\":\n");
    std::fs::write(repo.path().join(".beads/issues.jsonl"), &broken).unwrap();
    let out = mala(repo.path(), None, &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(".beads/issues.jsonl:3: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join(".beads/issues.jsonl")).unwrap(),
        broken
    );
}

#[test]
fn no_tracker_at_all_is_an_error_not_an_empty_queue() {
    let repo = TempRepo::new();
    let out = mala(repo.path(), None, &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("br init"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_dead_runs_claims_are_taken_over_and_a_live_runs_are_not() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "r");
    let make = |title: &str| {
        br.create(&NewIssue {
            title,
            priority: 2,
            ..NewIssue::default()
        })
    };
    let (dead, live, unassigned) = (make("dead"), make("live"), make("unassigned"));
    br.run(&["--actor", "mala:run-dead", "update", &dead, "--claim"]);
    br.run(&["--actor", "mala:run-live", "update", &live, "--claim"]);
    br.run(&["update", &unassigned, "--status", "in_progress"]);
    // The live run's marker names a running process: this test.
    let locks = repo.path().join(".locks");
    std::fs::create_dir_all(&locks).unwrap();
    let marker = serde_json::json!({
        "run_id": "run-live",
        "repo_path": repo.path(),
        "started_at": "2026-11-24T00:00:00Z",
        "pid": std::process::id(),
        "max_agents": null,
    });
    std::fs::write(locks.join("run-run-live.marker"), marker.to_string()).unwrap();

    let out = mala(repo.path(), Some(&binary), &["run", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&report), vec![dead.clone()]);
    assert_eq!(report["entries"][0]["takeover"], true);
    assert_eq!(reason_of(&report, &live)["by"], "mala:run-live");
    assert_eq!(reason_of(&report, &unassigned)["reason"], "claimed");

    let out = mala(
        repo.path(),
        Some(&binary),
        &["run", "--dry-run", "--json", "--resume"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut taken = ids(&report);
    taken.sort();
    let mut expected = vec![dead, unassigned];
    expected.sort();
    assert_eq!(
        taken, expected,
        "--resume also takes unassigned work in progress"
    );
}
