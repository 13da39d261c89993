//! The `IssueTracker` adapters against the real br: every operation the
//! pipeline uses, claims between two mala processes, the stale-JSONL fallback,
//! and the embedded store writing files br accepts.

use std::sync::Arc;

use mala_core::{
    ClaimOutcome, DependencyKind, IssueId, IssueStatus, IssueTracker, IssueType, IssueUpdate,
    NewIssue as TrackerIssue, Priority, TrackerError,
};
use mala_domain::TrackerKind;
use mala_infra::{BrTracker, JsonlTracker, SystemClock, Tracker};
use mala_testkit::{Br, NewIssue, TempRepo, Tool, require_tool};

fn tracker(binary: &std::path::Path, repo: &TempRepo) -> BrTracker {
    BrTracker::new(binary, repo.path(), Arc::new(SystemClock))
}

fn new_issue(title: &str) -> TrackerIssue {
    TrackerIssue {
        title: title.to_owned(),
        ..TrackerIssue::default()
    }
}

/// One tracker walked through its life, in the order a run uses it.
#[allow(clippy::too_many_lines)]
#[tokio::test]
async fn every_tracker_operation_works_against_real_br() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "op");
    let tracker = tracker(&binary, &repo);

    let epic = tracker
        .create(TrackerIssue {
            title: "Epic".into(),
            issue_type: Some(IssueType::Epic),
            priority: Some(Priority::P1),
            ..TrackerIssue::default()
        })
        .await
        .unwrap();
    let child = tracker
        .create(TrackerIssue {
            title: "Child".into(),
            description: "Do the thing".into(),
            acceptance_criteria: "- it works\n- tests pass".into(),
            issue_type: Some(IssueType::Bug),
            priority: Some(Priority::P0),
            labels: vec!["area:core".into(), "needs review".into()],
            parent: Some(epic.clone()),
        })
        .await
        .unwrap();
    let grandchild = tracker
        .create(TrackerIssue {
            parent: Some(child.clone()),
            ..new_issue("Grandchild")
        })
        .await
        .unwrap();
    let blocker = tracker.create(new_issue("Blocker")).await.unwrap();
    assert_eq!(
        child.as_str(),
        format!("{epic}.1"),
        "br gives children hierarchical ids"
    );

    // Reads come from issues.jsonl and carry what the original lost.
    let shown = tracker.show(&child).await.unwrap();
    assert_eq!(shown.acceptance_criteria, "- it works\n- tests pass");
    assert_eq!(shown.description, "Do the thing");
    assert_eq!(shown.issue_type, IssueType::Bug);
    assert_eq!(shown.labels, vec!["area:core", "needs-review"]);
    assert_eq!(shown.parent, Some(epic.clone()));
    assert!(matches!(
        tracker.show(&"op-nope".into()).await,
        Err(TrackerError::NotFound(_))
    ));

    // Structure: descendants are nested, parents resolve through non-epics.
    let descendants: Vec<IssueId> = tracker
        .descendants(&epic)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(descendants, vec![child.clone(), grandchild.clone()]);
    assert_eq!(
        tracker.parent_epic(&grandchild).await.unwrap(),
        Some(epic.clone())
    );
    assert_eq!(tracker.parent_epic(&blocker).await.unwrap(), None);
    assert_eq!(
        tracker.find_by_label("needs review").await.unwrap()[0].id,
        child
    );

    // Dependencies, both kinds.
    tracker
        .add_dependency(&grandchild, &blocker, DependencyKind::Blocks)
        .await
        .unwrap();
    let other = tracker.create(new_issue("Adopted")).await.unwrap();
    tracker
        .add_dependency(&other, &epic, DependencyKind::ParentChild)
        .await
        .unwrap();
    assert_eq!(
        tracker.parent_epic(&other).await.unwrap(),
        Some(epic.clone())
    );
    let cycle = tracker
        .add_dependency(&blocker, &grandchild, DependencyKind::Blocks)
        .await
        .unwrap_err();
    assert!(
        cycle.code() == Some(&mala_core::BrCode::CycleDetected),
        "{cycle:?}"
    );

    // The in-process ready set is br's.
    let mut ready: Vec<String> = tracker
        .ready()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    ready.sort();
    assert_eq!(ready, br.ready_ids());
    assert!(!ready.contains(&grandchild.to_string()));

    // Claims are exclusive between actors; blocked issues are refused.
    assert_eq!(
        tracker.claim(&child, "mala:run-a").await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        tracker.claim(&child, "mala:run-a").await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        tracker.claim(&child, "mala:run-b").await.unwrap(),
        ClaimOutcome::AlreadyClaimed {
            by: Some("mala:run-a".into())
        }
    );
    assert_eq!(
        tracker.claim(&grandchild, "mala:run-a").await.unwrap(),
        ClaimOutcome::Blocked {
            by: vec![blocker.clone()]
        }
    );
    let claimed = tracker.show(&child).await.unwrap();
    assert_eq!(claimed.status, IssueStatus::InProgress);
    assert_eq!(claimed.assignee.as_deref(), Some("mala:run-a"));

    // A dead run's claim can be taken over once, by whoever comes first.
    assert_eq!(
        tracker
            .take_over(&child, "mala:run-c", Some("mala:run-a".into()))
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        tracker
            .take_over(&child, "mala:run-d", Some("mala:run-a".into()))
            .await
            .unwrap(),
        ClaimOutcome::AlreadyClaimed {
            by: Some("mala:run-c".into())
        }
    );

    // Failure marking keeps earlier notes; reopen clears the claim.
    tracker
        .mark_needs_followup(&child, "gate: no commit")
        .await
        .unwrap();
    tracker
        .mark_needs_followup(&child, "gate: tests failed")
        .await
        .unwrap();
    let marked = tracker.show(&child).await.unwrap();
    assert!(marked.has_label("needs-followup"));
    assert_eq!(marked.notes, "gate: no commit\ngate: tests failed");
    tracker.reopen(&child).await.unwrap();
    let reopened = tracker.show(&child).await.unwrap();
    assert_eq!(
        (reopened.status, reopened.assignee),
        (IssueStatus::Open, None)
    );
    let cleared = IssueUpdate {
        remove_labels: vec!["needs-followup".into()],
        ..IssueUpdate::default()
    };
    tracker.update(&child, cleared).await.unwrap();
    let cleared = tracker.show(&child).await.unwrap();
    assert!(!cleared.has_label("needs-followup"), "{:?}", cleared.labels);
    assert!(cleared.notes.contains("tests failed"), "the notes stay");

    tracker
        .update(
            &other,
            IssueUpdate {
                title: Some("Adopted (renamed)".into()),
                description: Some("new text".into()),
                priority: Some(Priority::P3),
                ..IssueUpdate::default()
            },
        )
        .await
        .unwrap();
    let updated = tracker.show(&other).await.unwrap();
    assert_eq!(
        (
            updated.title.as_str(),
            updated.description.as_str(),
            updated.priority
        ),
        ("Adopted (renamed)", "new text", Priority::P3)
    );

    // Closing: twice is fine; epics close when all children are closed.
    for id in [&blocker, &grandchild, &child, &other] {
        tracker.close(id, "done").await.unwrap();
    }
    tracker.close(&child, "done").await.unwrap();
    let status = tracker.epic_status().await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].total_children, status[0].closed_children),
        (2, 2)
    );
    assert!(status[0].eligible_for_close);
    assert_eq!(
        tracker.close_eligible_epics().await.unwrap(),
        vec![epic.clone()]
    );
    assert!(tracker.close_eligible_epics().await.unwrap().is_empty());
    assert_eq!(
        tracker.show(&epic).await.unwrap().status,
        IssueStatus::Closed
    );
    tracker.flush().await.unwrap();
}

#[tokio::test]
async fn two_mala_processes_never_claim_the_same_issue() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "cl");
    let ids: Vec<IssueId> = (0..4)
        .map(|n| {
            IssueId::new(br.create(&NewIssue {
                title: &format!("issue {n}"),
                priority: 2,
                ..NewIssue::default()
            }))
        })
        .collect();
    // Two trackers, as two mala runs would have, each with its own writer.
    let first = tracker(&binary, &repo);
    let second = tracker(&binary, &repo);
    let mut winners = Vec::new();
    for id in &ids {
        let (a, b) = tokio::join!(first.claim(id, "mala:one"), second.claim(id, "mala:two"));
        let outcomes = [a.unwrap(), b.unwrap()];
        let claimed = outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Claimed)
            .count();
        assert_eq!(claimed, 1, "{id}: {outcomes:?}");
        winners.push(br.json(&["show", id.as_str()])[0]["assignee"].clone());
    }
    assert!(winners.iter().all(|w| w == "mala:one" || w == "mala:two"));
}

#[tokio::test]
async fn a_database_ahead_of_the_jsonl_is_exported_before_reading() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "st");
    let id = br.create(&NewIssue {
        title: "t",
        priority: 2,
        ..NewIssue::default()
    });
    let tracker = tracker(&binary, &repo);
    assert_eq!(tracker.show(&id.as_str().into()).await.unwrap().notes, "");
    // A person changes the database without letting br write the JSONL.
    br.run(&[
        "update",
        &id,
        "--notes",
        "written behind our back",
        "--no-auto-flush",
    ]);
    let issue = tracker.show(&id.as_str().into()).await.unwrap();
    assert_eq!(issue.notes, "written behind our back");
}

/// A br that logs each command line to `log` before running the real one.
#[allow(clippy::unwrap_used)] // a test's helper: a failure fails the test
fn logging_br(
    real: &std::path::Path,
    dir: &std::path::Path,
    log: &std::path::Path,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let wrapper = dir.join("br");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[tokio::test]
async fn a_later_process_trusts_the_jsonl_only_while_br_s_files_are_as_br_left_them() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "fr");
    let id = br.create(&NewIssue {
        title: "t",
        priority: 2,
        ..NewIssue::default()
    });
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("calls");
    let wrapper = logging_br(&binary, scratch.path(), &log);
    let asked = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("sync --status"))
            .count()
    };
    // Each tracker is what a new mala process opens.
    let fresh = || BrTracker::new(&wrapper, repo.path(), Arc::new(SystemClock));

    fresh().snapshot().await.unwrap();
    assert_eq!(asked(), 1, "the first process asks br");
    fresh().snapshot().await.unwrap();
    assert_eq!(
        asked(),
        1,
        "the next one has br's word from the first, and nothing changed"
    );

    // A write br does not export: the database moves, the proof no longer holds.
    br.run(&[
        "update",
        &id,
        "--notes",
        "behind our back",
        "--no-auto-flush",
    ]);
    let issue = fresh().show(&id.as_str().into()).await.unwrap();
    assert_eq!(issue.notes, "behind our back");
    assert_eq!(asked(), 2, "a changed database sends mala back to br");

    // The JSONL edited by hand is a change too.
    let jsonl = repo.path().join(".beads/issues.jsonl");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    std::fs::write(&jsonl, text.replace("behind our back", "by hand")).unwrap();
    fresh().snapshot().await.unwrap();
    assert_eq!(asked(), 3);
}

#[tokio::test]
async fn the_embedded_store_writes_what_br_reads_and_keeps_other_rows_intact() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "em");
    let epic = br.create(&NewIssue {
        title: "Épique ✓ \"quoted\"",
        issue_type: "epic",
        priority: 1,
        description: "line one\nline two\ttab",
        ..NewIssue::default()
    });
    let child = br.create(&NewIssue {
        title: "Child",
        priority: 2,
        parent: Some(&epic),
        acceptance: "works",
        labels: &["b-label", "a-label"],
        ..NewIssue::default()
    });
    let other = br.create(&NewIssue {
        title: "Other",
        priority: 3,
        ..NewIssue::default()
    });
    br.block(&other, &child);
    br.run(&["comments", "add", &other, "a comment"]);
    let jsonl = repo.path().join(".beads/issues.jsonl");
    let before = std::fs::read_to_string(&jsonl).unwrap();

    let store = JsonlTracker::open(repo.path()).unwrap();
    store
        .claim(&child.as_str().into(), "mala:embedded")
        .await
        .unwrap();
    store
        .mark_needs_followup(&child.as_str().into(), "note from the store")
        .await
        .unwrap();
    let after = std::fs::read_to_string(&jsonl).unwrap();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 1, "only the edited row changes");
    assert!(changed[0].0.contains(&format!("\"id\":\"{child}\"")));

    let created = store
        .create(TrackerIssue {
            title: "Made without br".into(),
            parent: Some(epic.as_str().into()),
            priority: Some(Priority::P1),
            ..TrackerIssue::default()
        })
        .await
        .unwrap();

    // br imports the store's writes on its next command.
    let shown = br.json(&["show", &child]);
    assert_eq!(shown[0]["status"], "in_progress");
    assert_eq!(shown[0]["assignee"], "mala:embedded");
    assert_eq!(shown[0]["notes"], "note from the store");
    assert_eq!(
        shown[0]["labels"],
        serde_json::json!(["a-label", "b-label", "needs-followup"])
    );
    let made = br.json(&["show", created.as_str()]);
    assert_eq!(made[0]["title"], "Made without br");
    assert_eq!(made[0]["parent"], epic.as_str());
    let mut ours: Vec<String> = store
        .ready()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    ours.sort();
    assert_eq!(ours, br.ready_ids());

    // And once br has written again, the store reads br's file.
    br.close(&created.to_string());
    assert_eq!(
        store.show(&created).await.unwrap().status,
        IssueStatus::Closed
    );
}

#[tokio::test]
async fn the_tracker_kind_picks_br_or_the_store_and_names_what_is_missing() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    Br::init(&binary, repo.path(), "k");
    let clock = Arc::new(SystemClock);
    let auto = Tracker::open(
        TrackerKind::Auto,
        repo.path(),
        Some(binary.clone()),
        clock.clone(),
    );
    assert_eq!(auto.unwrap().name(), "br");
    let auto = Tracker::open(TrackerKind::Auto, repo.path(), None, clock.clone());
    assert_eq!(auto.unwrap().name(), "jsonl");
    let jsonl = Tracker::open(TrackerKind::Jsonl, repo.path(), Some(binary), clock.clone());
    assert_eq!(jsonl.unwrap().name(), "jsonl");
    let missing = Tracker::open(TrackerKind::Br, repo.path(), None, clock.clone()).unwrap_err();
    assert!(
        matches!(&missing, TrackerError::NotInstalled { hint, .. } if hint.contains("cargo +nightly install beads_rust")),
        "{missing:?}"
    );
    let bare = TempRepo::new();
    let err = Tracker::open(TrackerKind::Auto, bare.path(), None, clock).unwrap_err();
    assert!(err.to_string().contains("br init"), "{err}");
}

#[tokio::test]
async fn the_tracker_files_are_committed_alone_at_run_end() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "cm");
    br.create(&NewIssue {
        title: "t",
        priority: 2,
        ..NewIssue::default()
    });
    // Someone else's work is staged; it must not ride along.
    std::fs::write(repo.path().join("other.txt"), "not mine\n").unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(&["add", "other.txt"]);

    let git_repo = mala_infra::GitRepo::new(repo.path());
    let commit = mala_core::Repository::commit_tracker_files(&git_repo, "mala: sync beads issues")
        .await
        .unwrap()
        .expect("a commit");
    let files = git(&["show", "--name-only", "--format=", &commit]);
    let files: Vec<&str> = files.lines().collect();
    assert!(files.contains(&".beads/issues.jsonl"), "{files:?}");
    assert!(files.iter().all(|f| f.starts_with(".beads/")), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("beads.db")), "{files:?}");
    assert_eq!(
        git(&["diff", "--cached", "--name-only"]).trim(),
        "other.txt"
    );
    assert_eq!(
        mala_core::Repository::commit_tracker_files(&git_repo, "again")
            .await
            .unwrap(),
        None,
        "nothing changed, nothing committed"
    );
}
