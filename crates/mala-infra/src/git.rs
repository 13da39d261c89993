//! Committing in a checkout that many agents share.
//!
//! Agents share one index, so a plain commit can pick up another agent's
//! staged file, and concurrent git commands fail on `index.lock`. Here every
//! commit mala makes goes through one queue per repository, stages exactly
//! the given paths and commits exactly those (`git commit --only`), and every
//! git command mala runs retries while another process holds `index.lock`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use mala_core::{AgentId, LockTable, RepoError};
use mala_domain::{check_commit_message, parse_agent_name};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::canonical_path;

/// How often and how patiently a git command waits out another's `index.lock`.
const LOCK_RETRIES: u32 = 40;
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a commit was not made; worded for the agent, who can act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefusal {
    #[error("not committed: you have not locked {0}. Call lock_acquire with it first")]
    NotLocked(String),
    #[error("not committed: {0}")]
    BadMessage(String),
    #[error("not committed: nothing to commit in {0}; the files are as in HEAD")]
    NothingToCommit(String),
    #[error("not committed: give at least one path")]
    NoPaths,
    #[error("not committed: {0} is outside the repository")]
    OutsideRepository(String),
    #[error("not committed: a repository hook refused the commit:\n{0}")]
    HookFailed(String),
    #[error("not committed: git failed: {0}")]
    Git(String),
    #[error("not committed: {0}")]
    Repository(#[from] RepoError),
}

/// One repository and its commit queue.
#[derive(Debug)]
pub struct GitRepo {
    root: PathBuf,
    queue: Mutex<()>,
}

fn holds_index_lock(output: &Output) -> bool {
    String::from_utf8_lossy(&output.stderr).contains("index.lock")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

impl GitRepo {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
            queue: Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs git in the repository, waiting out another process's `index.lock`.
    pub async fn git(&self, args: &[&str]) -> Result<Output, RepoError> {
        let mut backoff = FIRST_BACKOFF;
        for _ in 0..LOCK_RETRIES {
            let output = Command::new("git")
                .args(args)
                .current_dir(&self.root)
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
                .await
                .map_err(|e| RepoError::CouldNotRun(e.into()))?;
            if output.status.success() || !holds_index_lock(&output) {
                return Ok(output);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Err(RepoError::IndexLocked {
            command: args.join(" "),
        })
    }

    /// `path` relative to the repository root, if it is inside it.
    fn relative(&self, path: &Path) -> Option<String> {
        let canonical = canonical_path(&self.root, &path.to_string_lossy());
        let relative = canonical.strip_prefix(&self.root).ok()?;
        let text = relative.to_string_lossy().into_owned();
        (!text.is_empty() && !text.starts_with(".git")).then_some(text)
    }

    /// Commits exactly `paths` (their current content, including deletions)
    /// with `message`, whatever else is staged. Returns the new commit id.
    pub async fn commit_paths(
        &self,
        paths: &[PathBuf],
        message: &str,
    ) -> Result<String, CommitRefusal> {
        if paths.is_empty() {
            return Err(CommitRefusal::NoPaths);
        }
        let mut relative = Vec::with_capacity(paths.len());
        for path in paths {
            relative.push(
                self.relative(path)
                    .ok_or_else(|| CommitRefusal::OutsideRepository(path.display().to_string()))?,
            );
        }
        relative.sort();
        relative.dedup();
        let _turn = self.queue.lock().await;

        let mut status_args = vec!["status", "--porcelain", "--untracked-files=all", "--"];
        status_args.extend(relative.iter().map(String::as_str));
        let status = self.git(&status_args).await?;
        if text(&status.stdout).is_empty() {
            return Err(CommitRefusal::NothingToCommit(relative.join(", ")));
        }

        let mut add_args = vec!["add", "-A", "--"];
        add_args.extend(relative.iter().map(String::as_str));
        let added = self.git(&add_args).await?;
        if !added.status.success() {
            return Err(CommitRefusal::Git(text(&added.stderr)));
        }

        let mut commit_args = vec!["commit", "--quiet", "--only", "-m", message, "--"];
        commit_args.extend(relative.iter().map(String::as_str));
        let committed = self.git(&commit_args).await?;
        if !committed.status.success() {
            // Leave the index as it was for everyone else.
            let _ = self.unstage(paths).await;
            let output = format!("{}\n{}", text(&committed.stdout), text(&committed.stderr));
            return Err(CommitRefusal::HookFailed(output.trim().to_owned()));
        }
        let head = self.git(&["rev-parse", "HEAD"]).await?;
        Ok(text(&head.stdout))
    }

    /// Paths currently staged (absolute).
    pub async fn staged(&self) -> Result<Vec<PathBuf>, RepoError> {
        let output = self.git(&["diff", "--cached", "--name-only", "-z"]).await?;
        Ok(output
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| self.root.join(String::from_utf8_lossy(p).as_ref()))
            .collect())
    }

    /// Unstages those of `paths` that are staged, and nothing else: what an
    /// agent staged and left behind must not block the next agent.
    pub async fn unstage(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        let staged = self.staged().await?;
        let mine: Vec<String> = paths
            .iter()
            .filter_map(|p| self.relative(p))
            .filter(|rel| {
                staged
                    .iter()
                    .any(|s| s.ends_with(rel) && self.root.join(rel) == *s)
            })
            .collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let has_head = self
            .git(&["rev-parse", "--verify", "-q", "HEAD"])
            .await?
            .status
            .success();
        let mut args = if has_head {
            vec!["reset", "-q", "HEAD", "--"]
        } else {
            vec!["rm", "--cached", "-q", "-r", "--"]
        };
        args.extend(mine.iter().map(String::as_str));
        let output = self.git(&args).await?;
        if !output.status.success() {
            return Err(RepoError::Git {
                command: args.join(" "),
                stderr: text(&output.stderr),
            });
        }
        Ok(mine.iter().map(|rel| self.root.join(rel)).collect())
    }
}

impl GitRepo {
    /// Stages `.beads/` (br's own `.gitignore` keeps the database out) and
    /// commits only those paths, whatever else is staged, in the commit
    /// queue. Repository hooks run, as they would for a person committing.
    async fn commit_beads(&self, message: &str) -> Result<Option<String>, RepoError> {
        let _turn = self.queue.lock().await;
        let refused = |args: &[&str], output: &Output| RepoError::Git {
            command: args.join(" "),
            stderr: text(&output.stderr),
        };
        let run = |args: &'static [&'static str]| async move {
            let output = self.git(args).await?;
            if output.status.success() {
                Ok(output)
            } else {
                Err(refused(args, &output))
            }
        };
        run(&["add", "--", ".beads"]).await?;
        let unchanged = self
            .git(&["diff", "--cached", "--quiet", "--", ".beads"])
            .await?;
        if unchanged.status.success() {
            return Ok(None);
        }
        let commit = ["commit", "--quiet", "-m", message, "--", ".beads"];
        let output = self.git(&commit).await?;
        if !output.status.success() {
            return Err(refused(&commit, &output));
        }
        let head = run(&["rev-parse", "HEAD"]).await?;
        Ok(Some(text(&head.stdout)))
    }
}

#[async_trait::async_trait]
impl mala_core::Repository for GitRepo {
    async fn commit_tracker_files(&self, message: &str) -> Result<Option<String>, RepoError> {
        self.commit_beads(message).await
    }

    async fn head(&self) -> Result<Option<String>, RepoError> {
        let output = self.git(&["rev-parse", "--verify", "-q", "HEAD"]).await?;
        Ok(output.status.success().then(|| text(&output.stdout)))
    }

    async fn content_id(&self) -> Result<Option<String>, RepoError> {
        use sha2::Digest as _;
        let output = self.git(&["ls-tree", "HEAD"]).await?;
        if !output.status.success() {
            return Ok(None);
        }
        // The top-level entries' ids, but the tracker's: what the checks see.
        let listing = String::from_utf8_lossy(&output.stdout);
        let mut hasher = sha2::Sha256::new();
        for line in listing.lines() {
            if line.split('\t').nth(1) != Some(".beads") {
                hasher.update(line.as_bytes());
                hasher.update(b"\n");
            }
        }
        Ok(Some(format!("{:x}", hasher.finalize())))
    }

    async fn issue_commits(&self) -> Result<Vec<mala_core::CommitInfo>, RepoError> {
        let output = self
            .git(&[
                "log",
                "-n",
                "500",
                "--no-merges",
                "--name-only",
                "--format=%x01%H%x1f%ct%x1f%s",
                "--grep=^bd-",
            ])
            .await?;
        if !output.status.success() {
            // A repository without commits has no issue commits.
            return Ok(Vec::new());
        }
        let log = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut commits = Vec::new();
        for entry in log.split('\u{1}').filter(|e| !e.trim().is_empty()) {
            let mut lines = entry.lines();
            let header = lines.next().unwrap_or_default();
            let mut fields = header.splitn(3, '\u{1f}');
            let (Some(id), Some(time), Some(subject)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some(time) = time
                .parse::<i64>()
                .ok()
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            else {
                continue;
            };
            commits.push(mala_core::CommitInfo {
                id: id.to_owned(),
                subject: subject.to_owned(),
                time,
                files: lines
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
            });
        }
        Ok(commits)
    }

    async fn is_clean(&self) -> Result<bool, RepoError> {
        let output = self
            .git(&["status", "--porcelain", "--untracked-files=normal"])
            .await?;
        Ok(output.status.success() && text(&output.stdout).is_empty())
    }

    async fn unstage(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        GitRepo::unstage(self, paths).await
    }

    async fn differs_from_head(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RepoError> {
        let relative: Vec<(String, &PathBuf)> = paths
            .iter()
            .filter_map(|p| self.relative(p).map(|rel| (rel, p)))
            .collect();
        if relative.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["status", "--porcelain", "-z", "--untracked-files=all", "--"];
        args.extend(relative.iter().map(|(rel, _)| rel.as_str()));
        let output = self.git(&args).await?;
        if !output.status.success() {
            return Err(RepoError::Git {
                command: args.join(" "),
                stderr: text(&output.stderr),
            });
        }
        // `XY path\0`, and a rename's old path as an entry of its own.
        let listed = String::from_utf8_lossy(&output.stdout);
        let listed: Vec<&str> = listed
            .split('\0')
            .map(|entry| entry.get(3..).unwrap_or(entry))
            .collect();
        Ok(relative
            .into_iter()
            .filter(|(rel, _)| listed.contains(&rel.as_str()))
            .map(|(_, path)| path.clone())
            .collect())
    }

    async fn check_commit(
        &self,
        commit: &str,
        commands: &[mala_core::CheckCommand],
    ) -> Result<Option<mala_core::CheckFailure>, RepoError> {
        self.check_in_worktree(commit, None, commands).await
    }

    async fn check_commit_against(
        &self,
        commit: &str,
        baseline: &str,
        restore: &[String],
        commands: &[mala_core::CheckCommand],
    ) -> Result<Option<mala_core::CheckFailure>, RepoError> {
        self.check_in_worktree(commit, Some((baseline, restore)), commands)
            .await
    }
}

impl GitRepo {
    /// Runs `commands` in a detached worktree of `commit` of its own: the
    /// commit as committed, without anyone's uncommitted edits, and without
    /// touching the shared index. With `restore`, those paths are first put
    /// back as they were at the baseline (removed where it lacks them).
    async fn check_in_worktree(
        &self,
        commit: &str,
        restore: Option<(&str, &[String])>,
        commands: &[mala_core::CheckCommand],
    ) -> Result<Option<mala_core::CheckFailure>, RepoError> {
        let tree =
            std::env::temp_dir().join(format!("mala-check-{}", uuid::Uuid::new_v4().simple()));
        let tree_arg = tree.to_string_lossy().into_owned();
        let added = self
            .git(&["worktree", "add", "--detach", "--quiet", &tree_arg, commit])
            .await?;
        if !added.status.success() {
            return Err(RepoError::Checkout {
                commit: commit.to_owned(),
                stderr: text(&added.stderr),
            });
        }
        let restored = match restore {
            Some((baseline, paths)) => restore_paths(&tree, baseline, paths).await,
            None => Ok(()),
        };
        let result = match restored {
            Ok(()) => Ok(crate::run_commands(&tree, commands).await.err()),
            Err(error) => Err(error),
        };
        let removed = self
            .git(&["worktree", "remove", "--force", &tree_arg])
            .await;
        if !removed.is_ok_and(|o| o.status.success()) {
            let _ = std::fs::remove_dir_all(&tree);
            let _ = self.git(&["worktree", "prune"]).await;
        }
        result
    }
}

/// Puts `paths` in the worktree `tree` back as they were at `baseline`.
async fn restore_paths(tree: &Path, baseline: &str, paths: &[String]) -> Result<(), RepoError> {
    let at_tree = GitRepo::new(tree);
    for path in paths {
        let spec = format!("{baseline}:{path}");
        let existed = at_tree
            .git(&["cat-file", "-e", &spec])
            .await?
            .status
            .success();
        if existed {
            let output = at_tree.git(&["checkout", baseline, "--", path]).await?;
            if !output.status.success() {
                return Err(RepoError::Git {
                    command: format!("git checkout {baseline} -- {path}"),
                    stderr: text(&output.stderr),
                });
            }
        } else {
            let _ = std::fs::remove_file(tree.join(path));
        }
    }
    Ok(())
}

/// The commit tool: `agent` commits `paths` with `message`. Every path must
/// be locked by the agent, and the message must name the agent's issue.
pub async fn commit_as_agent(
    repo: &GitRepo,
    locks: &dyn LockTable,
    agent: &AgentId,
    paths: &[String],
    message: &str,
) -> Result<String, CommitRefusal> {
    if paths.is_empty() {
        return Err(CommitRefusal::NoPaths);
    }
    let Some((issue, _)) = parse_agent_name(agent) else {
        return Err(CommitRefusal::BadMessage(format!(
            "agent {agent} works on no issue, so it has no commits to make"
        )));
    };
    check_commit_message(message, &issue)
        .map_err(|refusal| CommitRefusal::BadMessage(refusal.0))?;
    let held = locks.held_by(agent);
    let mut absolute = Vec::with_capacity(paths.len());
    for path in paths {
        let canonical = canonical_path(repo.root(), path);
        if !held.contains(&canonical) {
            return Err(CommitRefusal::NotLocked(path.clone()));
        }
        absolute.push(canonical);
    }
    repo.commit_paths(&absolute, message).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileLockTable;
    use std::sync::Arc;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["config", "user.email", "t@example.com"]);
        git(dir.path(), &["config", "user.name", "t"]);
        std::fs::write(dir.path().join("README"), "hi\n").unwrap();
        git(dir.path(), &["add", "README"]);
        git(dir.path(), &["commit", "-q", "-m", "init"]);
        dir
    }

    fn setup() -> (tempfile::TempDir, GitRepo, Arc<FileLockTable>) {
        let dir = repo();
        let repo = GitRepo::new(dir.path());
        let locks =
            Arc::new(FileLockTable::new(dir.path().join(".git/mala-locks"), dir.path()).unwrap());
        (dir, repo, locks)
    }

    #[tokio::test]
    async fn a_commit_takes_exactly_the_agents_paths() {
        let (dir, repo, locks) = setup();
        let agent = AgentId::new("m-1@run");
        std::fs::write(dir.path().join("mine.rs"), "mine\n").unwrap();
        std::fs::write(dir.path().join("theirs.rs"), "theirs\n").unwrap();
        git(dir.path(), &["add", "theirs.rs"]);
        locks
            .acquire(&agent, &["mine.rs".to_owned()], Duration::ZERO)
            .await
            .unwrap();
        let id = commit_as_agent(
            &repo,
            locks.as_ref(),
            &agent,
            &["mine.rs".to_owned()],
            "bd-m-1: add mine",
        )
        .await
        .unwrap();
        assert_eq!(
            git(dir.path(), &["show", "--name-only", "--format=", &id]).trim(),
            "mine.rs"
        );
        assert_eq!(
            git(dir.path(), &["diff", "--cached", "--name-only"]).trim(),
            "theirs.rs",
            "their staging survives"
        );
    }

    #[tokio::test]
    async fn each_refusal_says_what_to_do() {
        let (dir, repo, locks) = setup();
        let agent = AgentId::new("m-1@run");
        std::fs::write(dir.path().join("a.rs"), "a\n").unwrap();
        let paths = vec!["a.rs".to_owned()];
        let err = commit_as_agent(&repo, locks.as_ref(), &agent, &paths, "bd-m-1: a")
            .await
            .unwrap_err();
        assert_eq!(err, CommitRefusal::NotLocked("a.rs".into()));
        locks.acquire(&agent, &paths, Duration::ZERO).await.unwrap();
        let err = commit_as_agent(&repo, locks.as_ref(), &agent, &paths, "bd-m-2: a")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommitRefusal::BadMessage(m) if m.contains("bd-m-1:")),
            "{err}"
        );
        let err = commit_as_agent(&repo, locks.as_ref(), &agent, &[], "bd-m-1: a")
            .await
            .unwrap_err();
        assert_eq!(err, CommitRefusal::NoPaths);
        commit_as_agent(&repo, locks.as_ref(), &agent, &paths, "bd-m-1: a")
            .await
            .unwrap();
        let err = commit_as_agent(&repo, locks.as_ref(), &agent, &paths, "bd-m-1: again")
            .await
            .unwrap_err();
        assert!(matches!(err, CommitRefusal::NothingToCommit(_)), "{err}");
        let stranger = AgentId::new("no-issue");
        let err = commit_as_agent(&repo, locks.as_ref(), &stranger, &paths, "bd-m-1: a")
            .await
            .unwrap_err();
        assert!(matches!(err, CommitRefusal::BadMessage(_)));
    }

    #[tokio::test]
    async fn a_failing_hook_is_reported_and_leaves_nothing_staged() {
        let (dir, repo, locks) = setup();
        let hook = dir.path().join(".git/hooks/pre-commit");
        std::fs::write(
            &hook,
            "#!/bin/sh\necho 'lint: trailing whitespace in a.rs' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let agent = AgentId::new("m-1@run");
        std::fs::write(dir.path().join("a.rs"), "a \n").unwrap();
        locks
            .acquire(&agent, &["a.rs".to_owned()], Duration::ZERO)
            .await
            .unwrap();
        let err = commit_as_agent(
            &repo,
            locks.as_ref(),
            &agent,
            &["a.rs".to_owned()],
            "bd-m-1: a",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, CommitRefusal::HookFailed(out) if out.contains("trailing whitespace")),
            "{err}"
        );
        assert_eq!(
            git(dir.path(), &["diff", "--cached", "--name-only"]).trim(),
            ""
        );
    }

    #[tokio::test]
    async fn issue_commits_come_with_their_files_and_times() {
        use mala_core::Repository;
        let (dir, repo, _locks) = setup();
        std::fs::write(dir.path().join("a.rs"), "a\n").unwrap();
        git(dir.path(), &["add", "a.rs"]);
        git(dir.path(), &["commit", "-q", "-m", "bd-m-1: add a"]);
        std::fs::write(dir.path().join("b.rs"), "b\n").unwrap();
        git(dir.path(), &["add", "b.rs"]);
        git(
            dir.path(),
            &["commit", "-q", "-m", "other: not an issue commit"],
        );
        let commits = repo.issue_commits().await.unwrap();
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].subject, "bd-m-1: add a");
        assert_eq!(commits[0].files, vec!["a.rs"]);
        assert!(repo.is_clean().await.unwrap());
        std::fs::write(dir.path().join("c.rs"), "c\n").unwrap();
        assert!(!repo.is_clean().await.unwrap());
        assert!(repo.head().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_commit_is_checked_as_committed_not_as_the_working_tree_has_it() {
        use mala_core::{CheckCommand, Repository};
        let (dir, repo, _locks) = setup();
        std::fs::write(dir.path().join("value.txt"), "good\n").unwrap();
        git(dir.path(), &["add", "value.txt"]);
        git(dir.path(), &["commit", "-q", "-m", "bd-m-1: good value"]);
        let good = repo.head().await.unwrap().unwrap();
        std::fs::write(dir.path().join("value.txt"), "bad\n").unwrap();
        git(dir.path(), &["commit", "-q", "-am", "bd-m-1: bad value"]);
        let bad = repo.head().await.unwrap().unwrap();
        // Someone's uncommitted edit makes the working tree look good again.
        std::fs::write(dir.path().join("value.txt"), "good\n").unwrap();
        let check = [CheckCommand {
            name: "check".into(),
            command: "grep -q good value.txt".into(),
            timeout: None,
        }];
        assert_eq!(repo.check_commit(&good, &check).await.unwrap(), None);
        let failure = repo.check_commit(&bad, &check).await.unwrap().unwrap();
        assert_eq!(failure.name, "check");
        let worktrees = git(dir.path(), &["worktree", "list"]);
        assert_eq!(
            worktrees.lines().count(),
            1,
            "the checkouts are gone: {worktrees}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("value.txt")).unwrap(),
            "good\n",
            "the shared working tree is untouched"
        );
        let missing = repo.check_commit("0123456789abcdef", &check).await;
        assert!(
            matches!(&missing, Err(RepoError::Checkout { commit, .. }) if commit == "0123456789abcdef"),
            "{missing:?}"
        );
        assert!(missing.is_err_and(|e| e.to_string().contains("worktree")));
    }

    #[tokio::test]
    async fn a_crashed_agents_staged_leftovers_are_unstaged_and_only_those() {
        let (dir, repo, _locks) = setup();
        for name in ["crashed.rs", "alive.rs"] {
            std::fs::write(dir.path().join(name), "x\n").unwrap();
            git(dir.path(), &["add", name]);
        }
        std::fs::write(dir.path().join("README"), "changed\n").unwrap();
        git(dir.path(), &["add", "README"]);
        let crashed = vec![
            dir.path().join("crashed.rs"),
            dir.path().join("README"),
            dir.path().join("never-staged.rs"),
        ];
        let mut unstaged = repo.unstage(&crashed).await.unwrap();
        unstaged.sort();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(unstaged, vec![root.join("README"), root.join("crashed.rs")]);
        assert_eq!(
            git(dir.path(), &["diff", "--cached", "--name-only"]).trim(),
            "alive.rs"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("README")).unwrap(),
            "changed\n",
            "the work stays in the tree"
        );
    }
}
