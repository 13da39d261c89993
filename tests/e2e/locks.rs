//! Separate processes contend for one file through the lock directory:
//! exactly one holds it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mala_core::{AgentId, LockTable};
use mala_infra::FileLockTable;

const CHILD: &str = "MALA_LOCK_CONTENTION_CHILD";
const CONTENDERS: usize = 12;

/// Run as a child process: wait for the start signal, then try once.
#[tokio::test]
async fn lock_contention_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return; // Only meaningful when spawned by the test below.
    };
    let mut parts = spec.splitn(3, '|');
    let (dir, repo, agent) = (
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().to_owned(),
    );
    while !dir.join("go").exists() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let table = FileLockTable::new(dir.join("locks"), &repo).unwrap();
    let report = table
        .acquire(
            &AgentId::new(agent),
            &["src/shared.rs".to_owned()],
            Duration::ZERO,
        )
        .await
        .unwrap();
    println!(
        "RESULT {}",
        if report.all_acquired {
            "acquired"
        } else {
            "held"
        }
    );
}

#[test]
fn processes_contending_for_one_file_get_exactly_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    let children: Vec<_> = (0..CONTENDERS)
        .map(|n| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "locks::lock_contention_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CHILD,
                    format!("{}|{}|agent-{n}", dir.path().display(), repo.display()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.path().join("go"), "").unwrap();
    let mut acquired = 0;
    let mut held = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("RESULT acquired") {
            acquired += 1;
        } else if text.contains("RESULT held") {
            held += 1;
        } else {
            panic!("a contender printed no result: {text}");
        }
    }
    assert_eq!((acquired, held), (1, CONTENDERS - 1));
    let locks = mala_infra::list_locks(&dir.path().join("locks"));
    assert_eq!(locks.len(), 1);
    assert!(locks[0].holder.as_str().starts_with("agent-"));
}
