//! `mala guard check` and `mala guard hook` through the binary: the guard's
//! whole table (crates/mala-domain/tests/data/guard-cases.tsv), locks read
//! from the lock directory, and the hook's answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic to fail the test

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const TABLE: &str = include_str!("../../../crates/mala-domain/tests/data/guard-cases.tsv");
const HELD: &[&str] = &[
    "src/lib.rs",
    "src/main.rs",
    "src/a b.rs",
    "README.md",
    "docs/guide.md",
    "notes.txt",
    "out.log",
];

fn mala(dir: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir.join(".home"))
        .env("PATH", "/usr/bin:/bin")
        .env("MALA_LOCK_DIR", dir.join(".locks"))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mala");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_whole_table_through_mala_guard_check() {
    // Outside /tmp, where writes beside the repository are scratch space.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = dir.path();
    let mut wrong = Vec::new();
    let mut cases = 0;
    for line in TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (verdict, command) = line.split_once('\t').unwrap();
        // The table's repository root is /repo; here it is the temp repository.
        let command = command
            .replace("\\n", "\n")
            .replace("/repo", &repo.to_string_lossy());
        let mut args = vec!["guard", "check"];
        for path in HELD {
            args.extend(["--locked", path]);
        }
        args.extend(["--", command.as_str()]);
        let out = mala(repo, &args, None, &[]);
        let printed = text(&out.stdout);
        let allowed = out.status.code() == Some(0) && printed == "allow\n";
        let denied = out.status.code() == Some(1) && printed.starts_with("deny: refused: ");
        assert!(
            allowed || denied,
            "{command:?}: neither allow nor deny: {out:?}"
        );
        if allowed != (verdict == "allow") {
            wrong.push(format!(
                "{command:?}: expected {verdict}, printed {printed}"
            ));
        }
        cases += 1;
    }
    assert!(cases >= 200);
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn words_after_the_double_dash_form_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = mala(
        dir.path(),
        &["guard", "check", "--json", "--", "git", "clean", "-fd"],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["decision"], "deny");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("git clean -n")
    );
}

/// A lock file as the lock table (or the Python original) writes it.
fn write_lock(dir: &Path, agent: &str, relative: &str) {
    let repo = dir.canonicalize().unwrap();
    let canonical = repo.join(relative);
    let key = format!("{}:{}", repo.display(), canonical.display());
    let locks = dir.join(".locks");
    std::fs::create_dir_all(&locks).unwrap();
    let stem = mala_infra::lock_file_stem(&key);
    std::fs::write(locks.join(format!("{stem}.lock")), format!("{agent}\n")).unwrap();
    std::fs::write(
        locks.join(format!("{stem}.meta")),
        canonical.to_string_lossy().as_bytes(),
    )
    .unwrap();
}

#[test]
fn an_agents_locks_come_from_the_lock_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_lock(dir.path(), "m-1@run-a", "src/held.rs");
    let check = |agent: &str| {
        mala(
            dir.path(),
            &[
                "guard",
                "check",
                "--agent",
                agent,
                "--",
                "echo x > src/held.rs",
            ],
            None,
            &[],
        )
    };
    assert_eq!(check("m-1@run-a").status.code(), Some(0));
    let other = check("m-2@run-a");
    assert_eq!(other.status.code(), Some(1));
    assert!(text(&other.stdout).contains("src/held.rs"));
}

#[test]
fn the_hook_answers_claude_code_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().canonicalize().unwrap();
    write_lock(dir.path(), "m-1@run-a", "src/held.rs");
    let payload = |tool: &str, input: serde_json::Value| {
        serde_json::json!({
            "hook_event_name": "PreToolUse",
            "session_id": "s",
            "cwd": repo,
            "tool_name": tool,
            "tool_input": input,
        })
        .to_string()
    };
    let agent = [("MALA_AGENT_ID", "m-1@run-a")];
    let ask = |body: String| {
        let out = mala(dir.path(), &["guard", "hook"], Some(&body), &agent);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let held = repo.join("src/held.rs").display().to_string();
    let free = repo.join("src/free.rs").display().to_string();
    assert_eq!(
        ask(payload("Edit", serde_json::json!({"file_path": held}))),
        serde_json::json!({})
    );
    let denied = ask(payload("Write", serde_json::json!({"file_path": free})));
    assert_eq!(denied["hookSpecificOutput"]["permissionDecision"], "deny");
    assert!(
        denied["hookSpecificOutput"]["permissionDecisionReason"]
            .as_str()
            .unwrap()
            .contains("src/free.rs")
    );
    let denied = ask(payload("Bash", serde_json::json!({"command": "git stash"})));
    assert_eq!(denied["hookSpecificOutput"]["permissionDecision"], "deny");
    let denied = ask(payload("TodoWrite", serde_json::json!({})));
    assert!(
        denied["hookSpecificOutput"]["permissionDecisionReason"]
            .as_str()
            .unwrap()
            .contains("TodoWrite")
    );
    let denied = ask("not json".to_owned());
    assert_eq!(denied["hookSpecificOutput"]["permissionDecision"], "deny");
}
