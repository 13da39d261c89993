//! `mala status` and `mala clean` over a lock directory with live and dead runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic to fail the test

use std::path::Path;
use std::process::{Command, Output};

fn mala(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir.join(".home"))
        .env("PATH", "/usr/bin:/bin")
        .env("MALA_LOCK_DIR", dir.join(".locks"))
        .output()
        .expect("run mala")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn marker(dir: &Path, run: &str, pid: u32) {
    let body = serde_json::json!({
        "run_id": run,
        "repo_path": dir.canonicalize().unwrap(),
        "started_at": "2026-11-24T00:00:00Z",
        "pid": pid,
        "max_agents": 2,
    });
    std::fs::create_dir_all(dir.join(".locks")).unwrap();
    std::fs::write(
        dir.join(".locks").join(format!("run-{run}.marker")),
        body.to_string(),
    )
    .unwrap();
}

fn lock(dir: &Path, agent: &str, relative: &str) {
    let repo = dir.canonicalize().unwrap();
    let canonical = repo.join(relative);
    let stem = mala_infra::lock_file_stem(&format!("{}:{}", repo.display(), canonical.display()));
    let locks = dir.join(".locks");
    std::fs::write(locks.join(format!("{stem}.lock")), format!("{agent}\n")).unwrap();
    std::fs::write(
        locks.join(format!("{stem}.meta")),
        canonical.to_string_lossy().as_bytes(),
    )
    .unwrap();
}

fn lock_holders(dir: &Path) -> Vec<String> {
    let mut holders: Vec<String> = mala_infra::list_locks(&dir.join(".locks"))
        .into_iter()
        .map(|l| l.holder.to_string())
        .collect();
    holders.sort();
    holders
}

#[test]
fn status_shows_runs_and_locks_and_clean_removes_only_what_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    marker(repo, "live-run", std::process::id());
    marker(repo, "dead-run", 4_000_000_000);
    lock(repo, "m-1@live-run", "src/a.rs");
    lock(repo, "m-2@dead-run", "src/b.rs");
    lock(repo, "py-agent-7", "src/c.rs");

    let out = mala(repo, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("run live-run") && shown.contains("running"),
        "{shown}"
    );
    assert!(
        shown.contains("run dead-run") && shown.contains("gone (stale)"),
        "{shown}"
    );
    assert!(shown.contains("3 locks"), "{shown}");
    assert!(
        shown.contains("src/a.rs  held by m-1@live-run  issue m-1"),
        "{shown}"
    );
    assert!(
        shown.contains("src/b.rs  held by m-2@dead-run  issue m-2"),
        "{shown}"
    );
    assert!(shown.contains("its run is gone"), "{shown}");

    let out = mala(repo, &["clean"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("live-run"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        lock_holders(repo).len(),
        3,
        "nothing removed without --force"
    );

    let out = mala(repo, &["clean", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lock_holders(repo), vec!["m-1@live-run", "py-agent-7"]);
    assert!(!repo.join(".locks/run-dead-run.marker").exists());
    assert!(repo.join(".locks/run-live-run.marker").exists());

    // The live run ends (its marker goes); now everything left is stale.
    std::fs::remove_file(repo.join(".locks/run-live-run.marker")).unwrap();
    let out = mala(repo, &["clean"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(lock_holders(repo).is_empty());
    assert!(text(&mala(repo, &["status"]).stdout).contains("no mala run"));
}
