//! Commits without collisions: sixteen agents share one checkout and one
//! index, each committing its own file twenty times through the commit tool,
//! while their own `git add`s compete for `index.lock`.

use std::sync::Arc;
use std::time::Duration;

use mala_core::{AgentId, LockTable};
use mala_infra::{FileLockTable, GitRepo, commit_as_agent};
use mala_testkit::TempRepo;

const AGENTS: usize = 16;
const ROUNDS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_agents_commit_twenty_times_each_and_nothing_is_lost_or_mixed() {
    let repo = TempRepo::new();
    let git = Arc::new(GitRepo::new(repo.path()));
    let locks =
        Arc::new(FileLockTable::new(repo.path().join(".git/mala-locks"), repo.path()).unwrap());
    let mut tasks = Vec::new();
    for n in 0..AGENTS {
        let (git, locks) = (Arc::clone(&git), Arc::clone(&locks));
        let root = repo.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let agent = AgentId::new(format!("m-{n}@stress"));
            let file = format!("agent-{n}/work.txt");
            std::fs::create_dir_all(root.join(format!("agent-{n}"))).unwrap();
            assert!(
                locks
                    .acquire(&agent, std::slice::from_ref(&file), Duration::ZERO)
                    .await
                    .unwrap()
                    .all_acquired
            );
            let mut own_git_failures = 0;
            for round in 0..ROUNDS {
                std::fs::write(root.join(&file), format!("agent {n} round {round}\n")).unwrap();
                // What an agent might run itself; it may well meet index.lock.
                let root2 = root.clone();
                let file2 = file.clone();
                let add = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("git")
                        .args(["add", &file2])
                        .current_dir(root2)
                        .output()
                        .unwrap()
                })
                .await
                .unwrap();
                own_git_failures += usize::from(!add.status.success());
                let message = format!("bd-m-{n}: round {round}");
                commit_as_agent(
                    &git,
                    locks.as_ref(),
                    &agent,
                    std::slice::from_ref(&file),
                    &message,
                )
                .await
                .unwrap_or_else(|e| panic!("agent {n} round {round}: {e}"));
            }
            own_git_failures
        }));
    }
    let mut contention = 0;
    for task in tasks {
        contention += task.await.unwrap();
    }
    eprintln!("agents' own `git add`s that met index.lock: {contention}");

    let log = repo.git(&["log", "--name-only", "--format=%x01%s"]);
    let commits: Vec<(String, Vec<String>)> = log
        .split('\u{1}')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let mut lines = c.lines().filter(|l| !l.is_empty());
            let subject = lines.next().unwrap().to_owned();
            (subject, lines.map(str::to_owned).collect())
        })
        .collect();
    let ours: Vec<&(String, Vec<String>)> = commits
        .iter()
        .filter(|(s, _)| s.starts_with("bd-"))
        .collect();
    assert_eq!(ours.len(), AGENTS * ROUNDS, "every commit landed");
    for (subject, files) in ours {
        let n: usize = subject["bd-m-".len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            files,
            &vec![format!("agent-{n}/work.txt")],
            "{subject} carries exactly its own file"
        );
    }
    for n in 0..AGENTS {
        assert_eq!(
            repo.git(&["show", &format!("HEAD:agent-{n}/work.txt")]),
            format!("agent {n} round {}\n", ROUNDS - 1)
        );
    }
    assert_eq!(
        repo.git(&["status", "--porcelain"]).trim(),
        "",
        "nothing left staged or changed"
    );
}
