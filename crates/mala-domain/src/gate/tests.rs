//! The gate against honest and adversarial agents.

use super::*;
use mala_core::FileEdit;

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
}

fn run(command: &str, exit: i32, minute: i64) -> CommandRun {
    CommandRun {
        tool_use_id: format!("t{minute}"),
        command: command.to_owned(),
        exit_code: Some(exit),
        failed: exit != 0,
        error: (exit != 0).then(|| format!("Exit code {exit}\ntest failed: parser")),
        started_at: Some(at(minute)),
        ended_at: at(minute) + chrono::Duration::seconds(30),
    }
}

fn edit(path: &str, minute: i64) -> FileEdit {
    FileEdit {
        tool_use_id: format!("e{minute}"),
        tool: "Edit".into(),
        path: format!("/repo/{path}"),
        at: at(minute),
    }
}

fn commit(id: &str, subject: &str, minute: i64, files: &[&str]) -> CommitInfo {
    CommitInfo {
        id: id.into(),
        subject: subject.into(),
        time: at(minute),
        files: files.iter().map(|f| (*f).to_owned()).collect(),
    }
}

struct Case {
    commits: Vec<CommitInfo>,
    evidence: Evidence,
    final_text: String,
    unlocked: Vec<String>,
}

impl Case {
    fn new() -> Self {
        Self {
            commits: vec![],
            evidence: Evidence::default(),
            final_text: "Implemented the parser fix.".into(),
            unlocked: vec![],
        }
    }

    fn commit(mut self, c: CommitInfo) -> Self {
        self.commits.push(c);
        self
    }

    fn ran(mut self, r: CommandRun) -> Self {
        self.evidence.commands.push(r);
        self
    }

    fn edited(mut self, e: FileEdit) -> Self {
        self.evidence.edits.push(e);
        self
    }

    fn unlocked(mut self, path: &str) -> Self {
        self.unlocked.push(path.into());
        self
    }

    fn said(mut self, text: &str) -> Self {
        self.final_text = text.into();
        self
    }

    fn judge(&self) -> GateVerdict {
        let issue = IssueId::from("m-1");
        let required = vec![
            RequiredCommand {
                name: "test".into(),
                command: "cargo test".into(),
                allow_fail: false,
            },
            RequiredCommand {
                name: "lint".into(),
                command: "cargo clippy -- -D warnings".into(),
                allow_fail: false,
            },
        ];
        let patterns = vec!["**/*.rs".to_owned()];
        let config = vec!["Cargo.toml".to_owned()];
        check_gate(&GateInput {
            issue: &issue,
            repo_root: Path::new("/repo"),
            baseline: at(0),
            commits: &self.commits,
            evidence: &self.evidence,
            final_text: &self.final_text,
            required: &required,
            code_patterns: &patterns,
            config_files: &config,
            setup_files: &[],
            unlocked: &self.unlocked,
        })
    }
}

/// What an honest agent leaves: edits, then both commands passing, then the commit.
fn honest() -> Case {
    Case::new()
        .edited(edit("src/parser.rs", 1))
        .ran(run("cargo test", 0, 2))
        .ran(run("cargo clippy -- -D warnings", 0, 3))
        .commit(commit(
            "abc123",
            "bd-m-1: fix the parser",
            4,
            &["src/parser.rs"],
        ))
}

fn reasons(verdict: &GateVerdict) -> String {
    verdict.reasons.join(" | ")
}

#[test]
fn an_honest_agent_passes() {
    let verdict = honest().judge();
    assert!(verdict.passed, "{verdict:?}");
    assert_eq!(verdict.commit.as_deref(), Some("abc123"));
}

#[test]
fn saying_done_without_a_commit_fails() {
    let verdict = Case::new()
        .edited(edit("src/parser.rs", 1))
        .ran(run("cargo test", 0, 2))
        .ran(run("cargo clippy -- -D warnings", 0, 3))
        .said("All done, committed and tested!")
        .judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("no commit starting with `bd-m-1:`"),
        "{verdict:?}"
    );
}

#[test]
fn committing_without_running_the_commands_fails() {
    let verdict = Case::new()
        .edited(edit("src/parser.rs", 1))
        .commit(commit("abc", "bd-m-1: fix", 4, &["src/parser.rs"]))
        .said("Ran cargo test: all 42 tests pass. Clippy is clean.")
        .judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("`test` (cargo test) was never run"),
        "{verdict:?}"
    );
    assert_eq!(verdict.missing, vec!["test", "lint"]);
}

#[test]
fn failing_commands_claimed_as_passing_fail() {
    let verdict = honest()
        .ran(run("cargo test", 101, 3))
        .said("Tests pass.")
        .judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("`test` failed (exit 101)"),
        "{verdict:?}"
    );
}

#[test]
fn editing_after_the_last_run_needs_a_new_run() {
    let verdict = honest().edited(edit("src/parser.rs", 5)).judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("last ran before your last edit"),
        "{verdict:?}"
    );
    // A shell write counts as an edit too; the validation runs' own output files do not.
    let verdict = honest().ran(run("echo fix >> src/parser.rs", 0, 5)).judge();
    assert!(!verdict.passed, "{verdict:?}");
    let verdict = honest()
        .ran(run("cargo test > test.log 2>&1", 0, 5))
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    // Staging and committing after the checks change no file: not an edit.
    let verdict = honest()
        .ran(run(
            "git add src/parser.rs && git commit -m 'bd-m-1: fix' -- src/parser.rs",
            0,
            5,
        ))
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    // And running them again after the edit passes.
    let verdict = honest()
        .edited(edit("src/parser.rs", 5))
        .ran(run("cargo test", 0, 6))
        .ran(run("cargo clippy -- -D warnings", 0, 7))
        .judge();
    assert!(verdict.passed, "{verdict:?}");
}

#[test]
fn a_commit_under_another_issues_id_does_not_count() {
    let verdict = Case::new()
        .edited(edit("src/parser.rs", 1))
        .ran(run("cargo test", 0, 2))
        .ran(run("cargo clippy -- -D warnings", 0, 3))
        .commit(commit("abc", "bd-m-10: fix", 4, &["src/parser.rs"]))
        .commit(commit("def", "bd-m-2: fix", 4, &["src/parser.rs"]))
        .judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("no commit starting with `bd-m-1:`"),
        "{verdict:?}"
    );
}

#[test]
fn an_old_commit_of_the_issue_is_not_this_sessions_work() {
    let verdict = Case::new()
        .ran(run("cargo test", 0, 2))
        .ran(run("cargo clippy -- -D warnings", 0, 3))
        .commit(commit(
            "0ld",
            "bd-m-1: earlier attempt",
            -30,
            &["src/parser.rs"],
        ))
        .judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("older than this session"),
        "{verdict:?}"
    );
}

#[test]
fn each_reason_says_what_really_happened() {
    let commit_line = "git add src/parser.rs && git commit -m 'bd-m-1: fix' -- src/parser.rs";
    let judged = |case: Case| reasons(&case.judge());
    // Never ran, though other commands did: not "a form that hides its status".
    let never = judged(
        Case::new()
            .edited(edit("src/parser.rs", 1))
            .ran(run("cargo clippy -- -D warnings", 0, 2))
            .ran(run(commit_line, 0, 3))
            .commit(commit("abc", "bd-m-1: fix", 4, &["src/parser.rs"])),
    );
    assert!(
        never.contains("`test` (cargo test) was never run"),
        "{never}"
    );
    assert!(!never.contains("hides"), "{never}");
    // Ran and failed.
    let failed = judged(honest().ran(run("cargo test", 101, 5)));
    assert!(failed.contains("`test` failed (exit 101)"), "{failed}");
    // Ran before the last edit, which is named.
    let stale = judged(honest().edited(edit("src/lexer.rs", 5)));
    assert!(
        stale.contains("before your last edit (Edit of src/lexer.rs)"),
        "{stale}"
    );
    let stale = judged(honest().ran(run("echo x >> src/lexer.rs", 0, 5)));
    assert!(
        stale.contains("`echo x >> src/lexer.rs`, which writes src/lexer.rs"),
        "{stale}"
    );
    // Hid its status: only when it did run that way.
    let hidden = judged(
        Case::new()
            .edited(edit("src/parser.rs", 1))
            .ran(run("cargo test || true", 0, 2))
            .ran(run("cargo clippy -- -D warnings", 0, 3))
            .commit(commit("abc", "bd-m-1: fix", 4, &["src/parser.rs"])),
    );
    assert!(
        hidden.contains("`cargo test || true`") && hidden.contains("hides its exit status"),
        "{hidden}"
    );
}

#[test]
fn a_file_changed_without_its_lock_fails_every_kind_of_attempt() {
    let verdict = honest().unlocked("src/theirs.rs").judge();
    assert!(!verdict.passed);
    assert!(
        reasons(&verdict).contains("you changed src/theirs.rs without holding the lock"),
        "{verdict:?}"
    );
    let verdict = Case::new()
        .said("ISSUE_NO_CHANGE: nothing to do")
        .unlocked("src/theirs.rs")
        .judge();
    assert!(!verdict.passed, "{verdict:?}");
}

#[test]
fn pretend_runs_do_not_count() {
    for (recorded, expected) in [
        ("echo cargo test", "was never run"),
        ("cd crates/x && cargo test", "another directory"),
        ("cargo test || true", "hides its exit status"),
        ("cargo test | tee out.log", "hides its exit status"),
    ] {
        let verdict = Case::new()
            .edited(edit("src/parser.rs", 1))
            .ran(run(recorded, 0, 2))
            .ran(run("cargo clippy -- -D warnings", 0, 3))
            .commit(commit("abc", "bd-m-1: fix", 4, &["src/parser.rs"]))
            .judge();
        assert!(!verdict.passed, "{recorded}");
        assert!(
            reasons(&verdict).contains(expected),
            "{recorded}: {verdict:?}"
        );
    }
    let verdict = Case::new()
        .edited(edit("src/parser.rs", 1))
        .ran(run(
            "set -o pipefail; cargo test 2>&1 | tee /tmp/t.log",
            0,
            2,
        ))
        .ran(run(
            "cd /repo && cargo clippy -- -D warnings > /tmp/lint.log 2>&1",
            0,
            3,
        ))
        .commit(commit("abc", "bd-m-1: fix", 4, &["src/parser.rs"]))
        .judge();
    assert!(verdict.passed, "{verdict:?}");
}

#[test]
fn allow_fail_commands_may_fail() {
    let issue = IssueId::from("m-1");
    let required = vec![RequiredCommand {
        name: "typecheck".into(),
        command: "mypy .".into(),
        allow_fail: true,
    }];
    let evidence = Evidence {
        commands: vec![run("mypy .", 1, 2)],
        ..Evidence::default()
    };
    let commits = vec![commit("abc", "bd-m-1: x", 3, &["a.py"])];
    let verdict = check_gate(&GateInput {
        issue: &issue,
        repo_root: Path::new("/repo"),
        baseline: at(0),
        commits: &commits,
        evidence: &evidence,
        final_text: "",
        required: &required,
        code_patterns: &[],
        config_files: &[],
        setup_files: &[],
        unlocked: &[],
    });
    assert!(verdict.passed, "{verdict:?}");
}

#[test]
fn markers_need_a_rationale_and_follow_the_original_rules() {
    let verdict = Case::new().said("ISSUE_NO_CHANGE:").judge();
    assert!(!verdict.passed);
    assert!(reasons(&verdict).contains("rationale"));
    let verdict = Case::new()
        .said("Looked into it.\nISSUE_OBSOLETE: the parser was removed in m-7")
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    assert_eq!(
        verdict.marker,
        Some(Marker::Obsolete("the parser was removed in m-7".into()))
    );
    // Declaring no change after changing files is not believable.
    let verdict = Case::new()
        .edited(edit("src/parser.rs", 1))
        .said("ISSUE_NO_CHANGE: nothing to do")
        .judge();
    assert!(!verdict.passed, "{verdict:?}");
}

#[test]
fn already_complete_borrows_only_a_commit_whose_id_the_rationale_names_as_a_token() {
    let borrowed = |subject: &str, why: &str| {
        Case::new()
            .commit(commit("c1", subject, -30, &["src/parser.rs"]))
            .said(&format!("ISSUE_ALREADY_COMPLETE: {why}"))
            .judge()
            .passed
    };
    assert!(borrowed("bd-x-1: fix", "duplicate of x-1."));
    assert!(borrowed("bd-x-1: fix", "done by bd-x-1, see c1"));
    assert!(!borrowed("bd-x-1: fix", "duplicate of x-10"));
    assert!(!borrowed("bd-x-10: fix", "duplicate of x-1"));
    assert!(!borrowed("bd-a: fix", "already done upstream"));
    assert!(!borrowed("bd-m-2: fix", "the parser already handles it"));
}

#[test]
fn already_complete_needs_a_commit_of_the_issue_or_the_one_it_duplicates() {
    let verdict = Case::new()
        .commit(commit(
            "0ld",
            "bd-m-1: done long ago",
            -300,
            &["src/parser.rs"],
        ))
        .said("ISSUE_ALREADY_COMPLETE: done in 0ld")
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    assert_eq!(verdict.commit.as_deref(), Some("0ld"));
    let verdict = Case::new()
        .commit(commit("dup", "bd-m-9: same fix", -30, &["src/parser.rs"]))
        .said("ISSUE_ALREADY_COMPLETE: duplicate of m-9, fixed in dup")
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    let verdict = Case::new().said("ISSUE_ALREADY_COMPLETE: trust me").judge();
    assert!(!verdict.passed);
}

#[test]
fn docs_only_may_not_touch_code_or_configuration() {
    let verdict = Case::new()
        .commit(commit(
            "d0c",
            "bd-m-1: document the parser",
            2,
            &["docs/parser.md", "README.md"],
        ))
        .said("ISSUE_DOCS_ONLY: documentation only")
        .judge();
    assert!(verdict.passed, "{verdict:?}");
    for files in [
        &["docs/parser.md", "src/parser.rs"][..],
        &["Cargo.toml"],
        &["mala.yaml"],
    ] {
        let verdict = Case::new()
            .commit(commit("d0c", "bd-m-1: document", 2, files))
            .said("ISSUE_DOCS_ONLY: documentation only")
            .judge();
        assert!(!verdict.passed, "{files:?}");
        assert!(
            reasons(&verdict).contains("changes code or configuration"),
            "{verdict:?}"
        );
    }
    let verdict = Case::new()
        .commit(commit("d0c", "bd-m-1: document", -10, &["docs/x.md"]))
        .said("ISSUE_DOCS_ONLY: docs")
        .judge();
    assert!(!verdict.passed, "a docs commit must be fresh");
}

#[test]
fn globs_match_like_the_presets_expect() {
    assert!(glob_matches("**/*.rs", "src/lib.rs"));
    assert!(glob_matches("**/*.rs", "lib.rs"));
    assert!(glob_matches("*.py", "pkg/mod.py"));
    assert!(glob_matches("Cargo.toml", "crates/x/Cargo.toml"));
    assert!(glob_matches("src/**", "src/a/b.c"));
    assert!(!glob_matches("**/*.rs", "docs/x.md"));
    assert!(!glob_matches("src/*.rs", "src/a/b.rs"));
}

#[test]
fn the_same_commit_a_clean_tree_and_no_new_runs_is_no_progress() {
    let before = AttemptState {
        head: Some("abc".into()),
        clean_tree: true,
        evidence_runs: 2,
    };
    assert!(no_progress(&before, &before.clone()));
    assert!(!no_progress(
        &before,
        &AttemptState {
            evidence_runs: 3,
            ..before.clone()
        }
    ));
    assert!(!no_progress(
        &before,
        &AttemptState {
            head: Some("def".into()),
            ..before.clone()
        }
    ));
    assert!(!no_progress(
        &before,
        &AttemptState {
            clean_tree: false,
            ..before.clone()
        }
    ));
}

#[test]
fn markers_are_found_in_the_final_text() {
    assert_eq!(
        parse_marker("work\n`ISSUE_DOCS_ONLY: readme`"),
        Some(Marker::DocsOnly("readme".into()))
    );
    assert_eq!(parse_marker("no marker here"), None);
    assert_eq!(parse_marker("ISSUE_UNKNOWN: x"), None);
}

#[test]
fn of_two_commits_in_the_same_second_the_newer_one_is_judged() {
    // Newest first, as git lists them; git's times have one-second precision.
    let mut case = honest();
    case.commits = vec![
        commit("second", "bd-m-1: add the rest", 4, &["src/lexer.rs"]),
        commit("first", "bd-m-1: fix the parser", 4, &["src/parser.rs"]),
    ];
    let verdict = case.judge();
    assert!(verdict.passed, "{verdict:?}");
    assert_eq!(verdict.commit.as_deref(), Some("second"));
}
