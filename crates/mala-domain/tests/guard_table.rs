//! The tool guard against its table (tests/data/guard-cases.tsv): at least
//! 100 destructive or lock-violating commands refused, and at least 100
//! ordinary development commands allowed. `apps/mala/tests/guard.rs` runs the
//! same table through `mala guard check`.
#![allow(clippy::expect_used)] // a malformed table line fails the test

use std::path::{Path, PathBuf};

use mala_domain::{Decision, GuardContext, ToolCall, check_tool};

const TABLE: &str = include_str!("data/guard-cases.tsv");
const HELD: &[&str] = &[
    "src/lib.rs",
    "src/main.rs",
    "src/a b.rs",
    "README.md",
    "docs/guide.md",
    "notes.txt",
    "out.log",
];

fn cases() -> Vec<(bool, String)> {
    TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (verdict, command) = line.split_once('\t').expect("verdict TAB command");
            (verdict == "allow", command.replace("\\n", "\n"))
        })
        .collect()
}

fn decide(command: &str) -> Decision {
    let root = Path::new("/repo");
    let held: Vec<PathBuf> = HELD.iter().map(|p| root.join(p)).collect();
    let ctx = GuardContext {
        repo_root: root,
        cwd: root,
        held: &held,
        disallowed_tools: &[],
        staged: None,
        require_locks: true,
        commit_prefix: None,
        own_branch: None,
        elsewhere: &[],
    };
    check_tool(
        &ToolCall::Shell {
            tool: "Bash".into(),
            command: command.to_owned(),
        },
        &ctx,
    )
}

#[test]
fn the_table_has_at_least_100_of_each() {
    let cases = cases();
    assert!(cases.iter().filter(|(allow, _)| *allow).count() >= 100);
    assert!(cases.iter().filter(|(allow, _)| !*allow).count() >= 100);
}

#[test]
fn every_case_gets_its_verdict() {
    let mut wrong = Vec::new();
    for (allow, command) in cases() {
        let decision = decide(&command);
        if decision.is_allowed() != allow {
            wrong.push(format!(
                "{command:?}: expected {}, got {decision:?}",
                if allow { "allow" } else { "deny" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn refusals_explain_themselves() {
    for (allow, command) in cases() {
        if let Decision::Deny { reason } = decide(&command) {
            assert!(!allow);
            assert!(reason.starts_with("refused: "), "{command}: {reason}");
            assert!(
                reason.len() > 40,
                "{command}: a reason that says little: {reason}"
            );
        }
    }
}
