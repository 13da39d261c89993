//! The worktrees and the merge queue against real git.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use mala_core::{CheckCommand, IssueId, Landing, Workspaces};
use mala_testkit::TempRepo;

use super::*;

fn id(text: &str) -> IssueId {
    IssueId::new(text)
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What an agent does in its tree: writes `file` and commits it.
fn work(tree: &Path, file: &str, contents: &str, issue: &str) -> String {
    std::fs::write(tree.join(file), contents).unwrap();
    git_in(tree, &["add", file]);
    git_in(
        tree,
        &["commit", "-q", "-m", &format!("bd-{issue}: {file}")],
    );
    git_in(tree, &["rev-parse", "HEAD"])
}

fn check(command: &str) -> CheckCommand {
    CheckCommand {
        name: "test".into(),
        command: command.into(),
        timeout: Some(60),
    }
}

struct Fixture {
    repo: TempRepo,
    state: tempfile::TempDir,
    trees: GitWorktrees,
}

async fn fixture() -> Fixture {
    let repo = TempRepo::new();
    let state = tempfile::tempdir().unwrap();
    let trees = GitWorktrees::new(repo.path(), &state.path().join("worktrees"))
        .await
        .unwrap();
    Fixture { repo, state, trees }
}

impl Fixture {
    fn main_head(&self) -> String {
        self.repo
            .git(&["rev-parse", "refs/heads/main"])
            .trim()
            .to_owned()
    }
}

#[tokio::test]
async fn an_issue_gets_its_own_tree_on_its_own_branch_from_the_targets_head() {
    let fix = fixture().await;
    assert_eq!(fix.trees.target(), "main");
    let head = fix.main_head();
    let ws = fix.trees.open(&id("bd-7")).await.unwrap();
    assert_eq!(ws.branch, "mala/bd-7");
    assert!(
        ws.root.starts_with(fix.trees.dir()),
        "{}",
        ws.root.display()
    );
    assert!(!ws.root.starts_with(fix.repo.path()));
    assert_eq!(
        git_in(&ws.root, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "mala/bd-7"
    );
    assert_eq!(git_in(&ws.root, &["rev-parse", "HEAD"]), head);
    assert_eq!(ws.repo.head().await.unwrap(), Some(head));

    // Opened again (a resumed run): the same tree, its work kept.
    std::fs::write(ws.root.join("wip.txt"), "uncommitted\n").unwrap();
    let again = fix.trees.open(&id("bd-7")).await.unwrap();
    assert_eq!(again.root, ws.root);
    assert_eq!(
        std::fs::read_to_string(again.root.join("wip.txt")).unwrap(),
        "uncommitted\n"
    );
    let live = fix.trees.live().await.unwrap();
    assert_eq!(live.len(), 1);
    assert!(live[0].dirty);
    assert_eq!(live[0].branch.as_deref(), Some("mala/bd-7"));
}

#[tokio::test]
async fn a_landed_issue_moves_the_target_and_its_tree_and_branch_go() {
    let fix = fixture().await;
    let ws = fix.trees.open(&id("bd-1")).await.unwrap();
    let commit = work(&ws.root, "one.txt", "1\n", "bd-1");
    let landed = fix
        .trees
        .land(&id("bd-1"), &[check("test -e one.txt")])
        .await
        .unwrap();
    assert_eq!(
        landed,
        Landing::Landed {
            commit: commit.clone(),
            note: None
        }
    );
    assert_eq!(fix.main_head(), commit);
    // The user's clean checkout of the target was brought along.
    assert_eq!(
        std::fs::read_to_string(fix.repo.join("one.txt")).unwrap(),
        "1\n"
    );
    assert_eq!(fix.repo.git(&["status", "--porcelain"]).trim(), "");

    fix.trees.remove(&id("bd-1")).await.unwrap();
    assert!(!ws.root.exists());
    assert!(fix.trees.live().await.unwrap().is_empty());
    let branches = fix.repo.git(&["branch", "--list", "mala/*"]);
    assert_eq!(branches.trim(), "", "the landed branch is deleted");
}

#[tokio::test]
async fn a_branch_that_has_not_landed_is_kept_and_kept_branches_stay() {
    let fix = fixture().await;
    let ws = fix.trees.open(&id("bd-2")).await.unwrap();
    work(&ws.root, "two.txt", "2\n", "bd-2");
    fix.trees.remove(&id("bd-2")).await.unwrap();
    assert!(
        fix.repo
            .git(&["branch", "--list", "mala/bd-2"])
            .contains("mala/bd-2")
    );

    let state = tempfile::tempdir().unwrap();
    let keeping = GitWorktrees::new(fix.repo.path(), state.path())
        .await
        .unwrap()
        .keep_branches(true);
    let ws = keeping.open(&id("bd-3")).await.unwrap();
    work(&ws.root, "three.txt", "3\n", "bd-3");
    assert!(matches!(
        keeping.land(&id("bd-3"), &[]).await.unwrap(),
        Landing::Landed { .. }
    ));
    keeping.remove(&id("bd-3")).await.unwrap();
    assert!(
        fix.repo
            .git(&["branch", "--list", "mala/bd-3"])
            .contains("mala/bd-3")
    );
}

#[tokio::test]
async fn sixteen_branches_land_in_queue_order_each_validated_on_the_head_it_lands_on() {
    let fix = fixture().await;
    let trees = Arc::new(fix.trees);
    let issues: Vec<IssueId> = (0..16).map(|i| id(&format!("bd-{i:02}"))).collect();
    for issue in &issues {
        let ws = trees.open(issue).await.unwrap();
        work(&ws.root, &format!("{issue}.txt"), "done\n", issue.as_str());
    }
    let log = fix.state.path().join("validated.log");
    let gate = fix.state.path().join("go");
    // Each validation records the tree it ran in and the head it ran on;
    // the first waits until all sixteen are queued.
    let validate = format!(
        "if [ \"$(basename \"$PWD\")\" = bd-00 ]; then while [ ! -e {go} ]; do sleep 0.01; done; fi; \
         echo \"$(basename \"$PWD\") $(git rev-parse HEAD^)\" >> {log}",
        go = gate.display(),
        log = log.display()
    );
    let mut landings = Vec::new();
    for (n, issue) in issues.iter().enumerate() {
        let (mine, issue, validate) = (Arc::clone(&trees), issue.clone(), validate.clone());
        landings.push(tokio::spawn(async move {
            mine.land(&issue, &[check(&validate)]).await
        }));
        // The next asks only once this one is in the queue: the queue's order is known.
        while trees.queue_len() < n + 1 {
            tokio::task::yield_now().await;
        }
    }
    std::fs::write(&gate, "").unwrap();
    for landing in landings {
        assert!(matches!(
            landing.await.unwrap().unwrap(),
            Landing::Landed { .. }
        ));
    }
    assert_eq!(trees.queue_len(), 0);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let history: Vec<String> = fix
        .repo
        .git(&["rev-list", "--reverse", "--first-parent", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(history.len(), 17, "one commit per issue on the initial one");
    for (n, issue) in issues.iter().enumerate() {
        let (tree, parent) = lines[n].split_once(' ').unwrap();
        assert_eq!(tree, issue.as_str(), "landed in queue order: {lines:?}");
        assert_eq!(
            parent, history[n],
            "{issue} was validated on the head it landed on"
        );
        let subject = fix.repo.git(&["log", "-1", "--format=%s", &history[n + 1]]);
        assert_eq!(subject.trim(), format!("bd-{issue}: {issue}.txt"));
    }
}

#[tokio::test]
async fn a_conflict_is_handed_back_with_the_branch_as_it_was_and_lands_once_resolved() {
    let fix = fixture().await;
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let b = fix.trees.open(&id("bd-b")).await.unwrap();
    work(&a.root, "README.md", "from a\n", "bd-a");
    let b_commit = work(&b.root, "README.md", "from b\n", "bd-b");
    let Landing::Landed {
        commit: a_landed, ..
    } = fix.trees.land(&id("bd-a"), &[]).await.unwrap()
    else {
        panic!("a lands first")
    };
    let conflict = fix.trees.land(&id("bd-b"), &[]).await.unwrap();
    let Landing::Conflict { onto, files, .. } = conflict else {
        panic!("b conflicts: {conflict:?}")
    };
    assert_eq!(onto, a_landed);
    assert_eq!(files, vec!["README.md".to_owned()]);
    assert_eq!(fix.main_head(), a_landed, "nothing landed");
    assert_eq!(
        git_in(&b.root, &["rev-parse", "HEAD"]),
        b_commit,
        "b's branch is as it was"
    );
    assert_eq!(
        git_in(&b.root, &["status", "--porcelain"]),
        "",
        "no rebase left half done"
    );

    // The agent's follow-up: rebase onto the new head and resolve.
    let _ = Command::new("git")
        .args(["rebase", "main"])
        .current_dir(&b.root)
        .output()
        .unwrap();
    std::fs::write(b.root.join("README.md"), "from a\nfrom b\n").unwrap();
    git_in(&b.root, &["add", "README.md"]);
    git_in(&b.root, &["-c", "core.editor=true", "rebase", "--continue"]);
    let landed = fix.trees.land(&id("bd-b"), &[]).await.unwrap();
    assert!(matches!(landed, Landing::Landed { .. }), "{landed:?}");
    assert_eq!(
        std::fs::read_to_string(fix.repo.join("README.md")).unwrap(),
        "from a\nfrom b\n"
    );
}

#[tokio::test]
async fn branches_that_pass_alone_but_fail_together_are_caught_on_the_merged_result() {
    let fix = fixture().await;
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let b = fix.trees.open(&id("bd-b")).await.unwrap();
    work(&a.root, "a.txt", "1\n", "bd-a");
    work(&b.root, "b.txt", "1\n", "bd-b");
    let both_is_wrong = check("! { [ -e a.txt ] && [ -e b.txt ]; }");
    let Landing::Landed {
        commit: a_landed, ..
    } = fix
        .trees
        .land(&id("bd-a"), std::slice::from_ref(&both_is_wrong))
        .await
        .unwrap()
    else {
        panic!("a passes alone")
    };
    let failed = fix.trees.land(&id("bd-b"), &[both_is_wrong]).await.unwrap();
    let Landing::Failed {
        base,
        onto,
        failure,
    } = failed
    else {
        panic!("b fails on the merged result: {failed:?}")
    };
    assert_eq!((base.as_str(), onto.as_str()), ("main", a_landed.as_str()));
    assert_eq!(failure.name, "test");
    assert_eq!(fix.main_head(), a_landed, "the target did not move");
    assert!(!fix.repo.join("b.txt").exists());
}

#[tokio::test]
async fn a_dirty_user_checkout_is_left_alone_and_the_merges_go_on_mala_merged() {
    let fix = fixture().await;
    let before = fix.main_head();
    fix.repo.write("README.md", "the user's own edit\n");
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let a_commit = work(&a.root, "a.txt", "a\n", "bd-a");
    let landed = fix.trees.land(&id("bd-a"), &[]).await.unwrap();
    let Landing::Landed {
        commit,
        note: Some(note),
    } = landed
    else {
        panic!("landed with a note: {landed:?}")
    };
    assert_eq!(commit, a_commit);
    assert!(
        note.contains("uncommitted changes") && note.contains(MERGED_BRANCH),
        "{note}"
    );
    assert_eq!(fix.main_head(), before, "the user's branch is where it was");
    assert_eq!(
        std::fs::read_to_string(fix.repo.join("README.md")).unwrap(),
        "the user's own edit\n"
    );
    assert!(!fix.repo.join("a.txt").exists());
    assert_eq!(fix.repo.git(&["rev-parse", MERGED_BRANCH]).trim(), a_commit);

    // The next issue builds on what was merged, and lands there too.
    let b = fix.trees.open(&id("bd-b")).await.unwrap();
    assert!(b.root.join("a.txt").exists(), "b starts from mala/merged");
    let b_commit = work(&b.root, "b.txt", "b\n", "bd-b");
    assert!(matches!(
        fix.trees.land(&id("bd-b"), &[]).await.unwrap(),
        Landing::Landed { note: Some(_), .. }
    ));
    assert_eq!(fix.repo.git(&["rev-parse", MERGED_BRANCH]).trim(), b_commit);

    // Once the user's checkout is clean, the target catches up with all of it.
    fix.repo.git(&["checkout", "--", "README.md"]);
    let c = fix.trees.open(&id("bd-c")).await.unwrap();
    let c_commit = work(&c.root, "c.txt", "c\n", "bd-c");
    assert!(matches!(
        fix.trees.land(&id("bd-c"), &[]).await.unwrap(),
        Landing::Landed { note: None, .. }
    ));
    assert_eq!(fix.main_head(), c_commit);
    for file in ["a.txt", "b.txt", "c.txt"] {
        assert!(
            fix.repo.join(file).exists(),
            "{file} is in the user's checkout"
        );
    }
}

#[tokio::test]
async fn a_target_not_checked_out_is_moved_by_ref_alone() {
    let fix = fixture().await;
    fix.repo.git(&["checkout", "-q", "-b", "elsewhere"]);
    fix.repo.write("mine.txt", "user work\n");
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let a_commit = work(&a.root, "a.txt", "a\n", "bd-a");
    assert!(matches!(
        fix.trees.land(&id("bd-a"), &[]).await.unwrap(),
        Landing::Landed { note: None, .. }
    ));
    assert_eq!(fix.main_head(), a_commit);
    assert_eq!(
        fix.repo.git(&["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "elsewhere"
    );
    assert!(
        !fix.repo.join("a.txt").exists(),
        "the user's tree is untouched"
    );
}

#[tokio::test]
async fn after_a_crash_a_half_done_rebase_is_undone_and_nothing_lands_twice() {
    let fix = fixture().await;
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let b = fix.trees.open(&id("bd-b")).await.unwrap();
    work(&a.root, "README.md", "from a\n", "bd-a");
    let b_commit = work(&b.root, "README.md", "from b\n", "bd-b");
    assert!(matches!(
        fix.trees.land(&id("bd-a"), &[]).await.unwrap(),
        Landing::Landed { .. }
    ));
    // A run killed mid-rebase leaves b's tree in the middle of one.
    let _ = Command::new("git")
        .args(["rebase", "main"])
        .current_dir(&b.root)
        .output()
        .unwrap();
    assert!(git_in(&b.root, &["status"]).contains("rebase"));
    let reopened = fix.trees.open(&id("bd-b")).await.unwrap();
    assert_eq!(git_in(&reopened.root, &["rev-parse", "HEAD"]), b_commit);
    assert!(!git_in(&b.root, &["status"]).contains("rebase"));

    // A run killed between the fast-forward and the close lands again as a no-op.
    let head = fix.main_head();
    let again = fix
        .trees
        .land(&id("bd-a"), &[check("false")])
        .await
        .unwrap();
    assert!(
        matches!(again, Landing::Landed { ref commit, .. } if *commit == head),
        "{again:?}"
    );
    assert_eq!(fix.main_head(), head, "nothing merged twice");
}

#[tokio::test]
async fn clean_removes_trees_with_nothing_uncommitted_and_keeps_the_rest() {
    let fix = fixture().await;
    let idle = fix.trees.open(&id("bd-idle")).await.unwrap();
    let busy = fix.trees.open(&id("bd-busy")).await.unwrap();
    work(&idle.root, "i.txt", "i\n", "bd-idle");
    std::fs::write(busy.root.join("draft.txt"), "not committed\n").unwrap();
    let (removed, kept) = fix.trees.clean().await.unwrap();
    assert_eq!(removed, vec![idle.root.clone()]);
    assert_eq!(kept, vec![busy.root.clone()]);
    assert!(busy.root.join("draft.txt").exists());
    assert!(
        fix.repo
            .git(&["branch", "--list", "mala/bd-idle"])
            .contains("mala/bd-idle"),
        "its commits stay on the branch"
    );
}

#[tokio::test]
async fn a_detached_checkout_is_refused_with_the_reason() {
    let repo = TempRepo::new();
    repo.git(&["checkout", "-q", "--detach"]);
    let state = tempfile::tempdir().unwrap();
    let error = GitWorktrees::new(repo.path(), state.path())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("detached HEAD"), "{error}");
}

#[tokio::test]
async fn a_tree_with_files_not_committed_does_not_land_and_says_which() {
    let fix = fixture().await;
    let head = fix.main_head();
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    work(&a.root, "lib.txt", "uses new\n", "bd-a");
    std::fs::write(a.root.join("new.txt"), "needed, never committed\n").unwrap();
    let landing = fix
        .trees
        .land(&id("bd-a"), &[check("test -e new.txt")])
        .await
        .unwrap();
    let Landing::Unready { what } = landing else {
        panic!("{landing:?}")
    };
    assert!(
        what.contains("not committed") && what.contains("new.txt"),
        "{what}"
    );
    assert_eq!(fix.main_head(), head, "nothing landed");
    // And a closed issue's tree with work in it is not removed.
    assert!(fix.trees.remove(&id("bd-a")).await.is_err());
    assert!(a.root.join("new.txt").exists());
}

#[tokio::test]
async fn work_on_mala_merged_survives_the_target_moving_on_its_own() {
    let fix = fixture().await;
    fix.repo.write("README.md", "the user's edit\n");
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let a_commit = work(&a.root, "a.txt", "a\n", "bd-a");
    assert!(matches!(
        fix.trees.land(&id("bd-a"), &[]).await.unwrap(),
        Landing::Landed { note: Some(_), .. }
    ));
    fix.trees.remove(&id("bd-a")).await.unwrap();
    assert!(
        fix.repo
            .git(&["branch", "--list", "mala/bd-a"])
            .contains("mala/bd-a"),
        "kept: only mala/merged has it, not the target"
    );
    // The user commits their own edit: the target now has a commit mala/merged lacks.
    fix.repo.commit_all("the user's own commit");
    fix.repo.write("README.md", "more of the user's work\n");
    let b = fix.trees.open(&id("bd-b")).await.unwrap();
    assert!(
        b.root.join("a.txt").exists(),
        "b builds on what mala/merged holds"
    );
    let b_commit = work(&b.root, "b.txt", "b\n", "bd-b");
    let landed = fix.trees.land(&id("bd-b"), &[]).await.unwrap();
    let Landing::Landed {
        note: Some(note), ..
    } = landed
    else {
        panic!("{landed:?}")
    };
    assert!(
        note.contains("lacks") && note.contains("merge `mala/merged`"),
        "{note}"
    );
    let merged = fix.repo.git(&["rev-parse", MERGED_BRANCH]);
    assert_eq!(merged.trim(), b_commit);
    let on_merged = fix
        .repo
        .git(&["merge-base", "--is-ancestor", &a_commit, MERGED_BRANCH]);
    assert_eq!(on_merged.trim(), "", "a's commit is still on mala/merged");
}

#[tokio::test]
async fn a_target_checked_out_in_another_linked_tree_is_not_moved_under_it() {
    let fix = fixture().await;
    fix.repo.git(&["checkout", "-q", "-b", "elsewhere"]);
    let linked = tempfile::tempdir().unwrap();
    let linked_tree = linked.path().join("main-tree");
    fix.repo.git(&[
        "worktree",
        "add",
        "-q",
        &linked_tree.to_string_lossy(),
        "main",
    ]);
    let before = fix.main_head();
    let a = fix.trees.open(&id("bd-a")).await.unwrap();
    let a_commit = work(&a.root, "a.txt", "a\n", "bd-a");
    let landed = fix.trees.land(&id("bd-a"), &[]).await.unwrap();
    let Landing::Landed {
        note: Some(note), ..
    } = landed
    else {
        panic!("{landed:?}")
    };
    assert!(note.contains("checked out in"), "{note}");
    assert_eq!(
        fix.main_head(),
        before,
        "main did not move under the linked tree"
    );
    assert_eq!(git_in(&linked_tree, &["status", "--porcelain"]), "");
    assert_eq!(fix.repo.git(&["rev-parse", MERGED_BRANCH]).trim(), a_commit);
}
