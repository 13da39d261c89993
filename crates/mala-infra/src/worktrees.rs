//! Worktree isolation: each issue's agent in a git worktree of its own, on
//! the branch `mala/<issue id>`, and one merge queue per target branch that
//! lands finished branches on it.
//!
//! The queue is a fair lock: issues land one at a time in the order they
//! asked. Landing puts the branch on the target's latest head (rebase or
//! merge), runs the validation commands on the result in the issue's own
//! working tree, and only then moves the target, by compare-and-swap, so a
//! target that moved meanwhile is never overwritten. The user's checkout is
//! touched only when it has the target checked out and nothing uncommitted
//! (apart from the tracker's `.beads/`); otherwise the merged commits go on
//! `mala/merged`, and later branches build on that.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use mala_core::{CheckCommand, IssueId, Landing, RepoError, Workspace, Workspaces};
use mala_domain::MergeStrategy;
use tokio::sync::Mutex;

use crate::git::text;
use crate::{GitRepo, run_commands};

/// Where merged commits go while the user's checkout of the target has
/// uncommitted work.
pub const MERGED_BRANCH: &str = "mala/merged";

/// How many times a landing starts over when the target moved under it.
const MAX_RACES: u32 = 3;

/// The branch an issue's agent works on.
#[must_use]
pub fn issue_branch(issue: &IssueId) -> String {
    format!("mala/{issue}")
}

/// The issue's working tree under `dir`; the guard judges the agent's
/// writes against it.
#[must_use]
pub fn issue_worktree(dir: &Path, issue: &IssueId) -> PathBuf {
    dir.join(issue.as_str().replace(['/', '\\'], "_"))
}

/// One live worktree of mala's, for `mala status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorktree {
    pub path: PathBuf,
    pub branch: Option<String>,
    /// Uncommitted changes in it.
    pub dirty: bool,
}

/// The `Workspaces` port over git worktrees.
#[derive(Debug)]
pub struct GitWorktrees {
    main: GitRepo,
    dir: PathBuf,
    target: String,
    strategy: MergeStrategy,
    keep_branches: bool,
    /// `git worktree` and branch changes, one at a time.
    admin: Mutex<()>,
    /// The merge queue (tokio's mutex is fair: first come, first landed).
    queue: Mutex<()>,
    /// Issues in the queue, the one landing included.
    queued: AtomicUsize,
}

impl GitWorktrees {
    /// Worktrees of the repository at `main` under `dir`, landing on the
    /// branch `main` has checked out. Refused on a detached HEAD: there
    /// would be no branch to land on.
    pub async fn new(main: &Path, dir: &Path) -> Result<Self, RepoError> {
        let repo = GitRepo::new(main);
        let out = repo
            .git(&["symbolic-ref", "--quiet", "--short", "HEAD"])
            .await?;
        if !out.status.success() {
            return Err(RepoError::Git {
                command: "symbolic-ref HEAD".into(),
                stderr: "the checkout is on a detached HEAD; worktree isolation lands issues on a branch, so check one out first".into(),
            });
        }
        let target = text(&out.stdout);
        Self::on_branch(main, dir, &target)
    }

    /// Worktrees landing on `target`.
    pub fn on_branch(main: &Path, dir: &Path, target: &str) -> Result<Self, RepoError> {
        std::fs::create_dir_all(dir).map_err(|e| RepoError::CouldNotRun(e.into()))?;
        Ok(Self {
            main: GitRepo::new(main),
            dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            target: target.to_owned(),
            strategy: MergeStrategy::Rebase,
            keep_branches: false,
            admin: Mutex::new(()),
            queue: Mutex::new(()),
            queued: AtomicUsize::new(0),
        })
    }

    #[must_use]
    pub fn strategy(mut self, strategy: MergeStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Keep an issue's branch after it landed.
    #[must_use]
    pub fn keep_branches(mut self, keep: bool) -> Self {
        self.keep_branches = keep;
        self
    }

    /// The branch issues land on.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How many issues are in the merge queue, the one landing included.
    pub fn queue_len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Where the issues' working trees are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// mala's worktrees of this repository that git knows.
    pub async fn live(&self) -> Result<Vec<LiveWorktree>, RepoError> {
        let mut live = Vec::new();
        for Listed { path, branch } in self.ours().await? {
            let dirty = path.is_dir() && Status::read(&GitRepo::new(&path), true).await?.dirty();
            live.push(LiveWorktree {
                path,
                branch,
                dirty,
            });
        }
        Ok(live)
    }

    /// The worktrees git lists under mala's directory.
    async fn ours(&self) -> Result<Vec<Listed>, RepoError> {
        let mut trees = Listed::all(&self.main).await?;
        trees.retain(|t| t.path.starts_with(&self.dir));
        Ok(trees)
    }

    /// Removes the worktrees no run is using that hold nothing uncommitted
    /// (their branches stay), and git's records of ones whose directory is
    /// gone. Returns the removed and the kept (with uncommitted work).
    pub async fn clean(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>), RepoError> {
        let _admin = self.admin.lock().await;
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for tree in self.live().await? {
            if !tree.path.is_dir() {
                let path = tree.path.to_string_lossy().into_owned();
                checked(&self.main, &["worktree", "remove", "--force", &path]).await?;
                removed.push(tree.path);
            } else if tree.dirty {
                kept.push(tree.path);
            } else {
                let path = tree.path.to_string_lossy().into_owned();
                checked(&self.main, &["worktree", "remove", &path]).await?;
                removed.push(tree.path);
            }
        }
        Ok((removed, kept))
    }

    /// The ref new branches start from and land on, and its commit: the
    /// target, or `mala/merged` while it holds work the target lacks.
    async fn base(&self) -> Result<(String, String), RepoError> {
        let target = format!("refs/heads/{}", self.target);
        let merged = format!("refs/heads/{MERGED_BRANCH}");
        let refs = checked(
            &self.main,
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                &target,
                &merged,
            ],
        )
        .await?;
        let head_of = |name: &str| {
            refs.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
        };
        let target_head = head_of(&target).ok_or_else(|| RepoError::Git {
            command: format!("for-each-ref {target}"),
            stderr: format!("the branch `{}` is gone", self.target),
        })?;
        // `mala/merged` holds landed work the target lacks until the target
        // has all of it; till then it is the base, so nothing on it is lost.
        if let Some(merged_head) = head_of(&merged)
            && !is_ancestor(&self.main, &merged_head, &target_head).await?
        {
            return Ok((merged, merged_head));
        }
        Ok((target, target_head))
    }

    /// Where the target is checked out besides the user's checkout (a linked
    /// worktree of the user's): moving it there would change that tree's files.
    async fn target_elsewhere(&self) -> Result<Option<PathBuf>, RepoError> {
        let trees = Listed::all(&self.main).await?;
        Ok(trees
            .into_iter()
            .find(|t| {
                t.branch.as_deref() == Some(self.target.as_str()) && t.path != self.main.root()
            })
            .map(|t| t.path))
    }

    /// Why the tree cannot land as it is: a rebase or merge still in
    /// progress, or files not committed (what lands must be what was
    /// checked). Ignored files do not count.
    async fn unready(tree: &GitRepo) -> Result<Option<String>, RepoError> {
        // A rebase or merge stopped part way leaves files changed or
        // unmerged, so a clean status is enough on the way that lands.
        let changed = Status::read(tree, true).await?.changes;
        if changed.is_empty() {
            return Ok(None);
        }
        if Self::half_done(tree).await?.is_some() {
            return Ok(Some(
                "a rebase or merge is still in progress in your worktree: finish it (`GIT_EDITOR=true git rebase --continue`, or commit the merge) or abort it".to_owned(),
            ));
        }
        let shown: Vec<&str> = changed.iter().take(10).map(String::as_str).collect();
        Ok(Some(format!(
            "files in your worktree are not committed ({}{}): commit what belongs to the work and remove the rest, so that what lands is what was checked",
            shown.join(", "),
            if changed.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )))
    }

    /// A rebase or merge an earlier run left half done in `tree` is undone:
    /// the branch is as it was before it, and landing redoes it.
    async fn abort_half_done(tree: &GitRepo) -> Result<(), RepoError> {
        match Self::half_done(tree).await? {
            Some(operation) => checked(tree, &[operation, "--abort"]).await.map(drop),
            None => Ok(()),
        }
    }

    /// `rebase` or `merge` when one is in progress in `tree`.
    async fn half_done(tree: &GitRepo) -> Result<Option<&'static str>, RepoError> {
        let markers = checked(
            tree,
            &[
                "rev-parse",
                "--git-path",
                "rebase-merge",
                "--git-path",
                "rebase-apply",
                "--git-path",
                "MERGE_HEAD",
            ],
        )
        .await?;
        let found: Vec<bool> = markers
            .lines()
            .map(|path| tree.root().join(path.trim()).exists())
            .collect();
        Ok(if found.iter().take(2).any(|f| *f) {
            Some("rebase")
        } else if found.get(2) == Some(&true) {
            Some("merge")
        } else {
            None
        })
    }

    /// Puts the tree's branch on `onto`; the conflicting files when it does
    /// not apply (the branch is then as it was).
    async fn put_on(
        &self,
        tree: &GitRepo,
        base: &str,
        onto: &str,
    ) -> Result<Option<Landing>, RepoError> {
        // Whatever the user's git configuration says: nothing stashed,
        // no other branch moved along.
        let mut args = vec![
            "-c",
            "rebase.autoStash=false",
            "-c",
            "merge.autoStash=false",
            "-c",
            "rebase.updateRefs=false",
        ];
        args.extend(match self.strategy {
            MergeStrategy::Rebase => ["rebase", "--quiet", onto, ""],
            MergeStrategy::Merge => ["merge", "--quiet", "--no-edit", onto],
        });
        args.retain(|a| !a.is_empty());
        let out = tree.git(&args).await?;
        if out.status.success() {
            return Ok(None);
        }
        let conflicted = tree
            .git(&["diff", "--name-only", "--diff-filter=U"])
            .await?;
        let files: Vec<String> = text(&conflicted.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let detail = format!("{}{}", text(&out.stdout), text(&out.stderr));
        Self::abort_half_done(tree).await?;
        Ok(Some(Landing::Conflict {
            base: short_ref(base).to_owned(),
            onto: onto.to_owned(),
            files,
            detail,
        }))
    }

    /// Moves the landing ref from `old` to `new`. `Ok(None)`: it moved
    /// meanwhile, nothing was changed. `Ok(Some(note))`: landed, with what
    /// the user should know.
    async fn advance(
        &self,
        base_ref: &str,
        old: &str,
        new: &str,
    ) -> Result<Option<Option<String>>, RepoError> {
        let target_ref = format!("refs/heads/{}", self.target);
        let user = Status::read(&self.main, false).await?;
        let on_target = user.branch.as_deref() == Some(self.target.as_str());
        // git checks a branch out in one tree at a time: on the user's, it is
        // in no other.
        let elsewhere = if on_target {
            None
        } else {
            self.target_elsewhere().await?
        };
        let target_head = match (&user.head, on_target) {
            (Some(head), true) => head.clone(),
            _ => rev(&self.main, &target_ref).await?,
        };
        if base_ref == target_ref && target_head != old {
            return Ok(None); // the target moved since the rebase: again
        }
        let behind = base_ref == target_ref || is_ancestor(&self.main, &target_head, new).await?;
        let why = if !behind {
            format!(
                "`{}` has commits that `{MERGED_BRANCH}` lacks (yours, or mala's `.beads/` commit); merge `{MERGED_BRANCH}` into it",
                self.target
            )
        } else if let Some(tree) = &elsewhere {
            format!(
                "`{}` is checked out in {}, whose files mala does not change",
                self.target,
                tree.display()
            )
        } else if !on_target {
            // Nobody's files follow the target: its ref alone moves.
            return Ok(cas(&self.main, &target_ref, new, &target_head)
                .await?
                .then_some(None));
        } else if user.changes.iter().any(|p| !p.starts_with(".beads/")) {
            format!("your checkout of `{}` has uncommitted changes", self.target)
        } else {
            let ff = self
                .main
                .git(&["merge", "--ff-only", "--quiet", new])
                .await?;
            if ff.status.success() {
                return Ok(Some(None));
            }
            format!(
                "git refused to fast-forward your checkout of `{}` ({})",
                self.target,
                text(&ff.stderr)
            )
        };
        // The user's own work comes first: their branch and files stay, and
        // `mala/merged` only ever moves forward.
        let merged = format!("refs/heads/{MERGED_BRANCH}");
        let moved = match rev(&self.main, &merged).await.ok() {
            Some(previous) if is_ancestor(&self.main, &previous, new).await? => {
                cas(&self.main, &merged, new, &previous).await?
            }
            Some(_) => return Ok(None),
            None => cas(&self.main, &merged, new, ZERO).await?,
        };
        Ok(moved.then(|| {
            Some(format!(
                "{why}, so mala left it alone and put the merged commits on `{MERGED_BRANCH}`"
            ))
        }))
    }
}

/// git's id for "no such ref", for a compare-and-swap that creates one.
const ZERO: &str = "0000000000000000000000000000000000000000";

/// `refs/heads/x` as people say it.
fn short_ref(name: &str) -> &str {
    name.strip_prefix("refs/heads/").unwrap_or(name)
}

/// A worktree as `git worktree list --porcelain` names it.
struct Listed {
    path: PathBuf,
    branch: Option<String>,
}

impl Listed {
    /// Every worktree of the repository, the main one first.
    async fn all(repo: &GitRepo) -> Result<Vec<Self>, RepoError> {
        let out = checked(repo, &["worktree", "list", "--porcelain"]).await?;
        Ok(out
            .split("\n\n")
            .filter_map(|block| {
                let path = block.lines().find_map(|l| l.strip_prefix("worktree "))?;
                let branch = block
                    .lines()
                    .find_map(|l| l.strip_prefix("branch refs/heads/"));
                Some(Self {
                    path: PathBuf::from(path),
                    branch: branch.map(str::to_owned),
                })
            })
            .collect())
    }
}

/// A checkout as `git status` sees it: the branch checked out, its commit,
/// and the paths with uncommitted changes (untracked ones too, when asked).
struct Status {
    branch: Option<String>,
    head: Option<String>,
    changes: Vec<String>,
}

impl Status {
    async fn read(repo: &GitRepo, untracked: bool) -> Result<Self, RepoError> {
        let untracked = if untracked {
            "--untracked-files=all"
        } else {
            "--untracked-files=no"
        };
        let out = checked(
            repo,
            &["status", "--porcelain=v2", "-z", "--branch", untracked],
        )
        .await?;
        let mut status = Self {
            branch: None,
            head: None,
            changes: Vec::new(),
        };
        let mut entries = out.split('\0').filter(|e| !e.is_empty());
        while let Some(entry) = entries.next() {
            if let Some(branch) = entry.strip_prefix("# branch.head ") {
                status.branch = (branch != "(detached)").then(|| branch.to_owned());
            } else if let Some(oid) = entry.strip_prefix("# branch.oid ") {
                status.head = Some(oid.to_owned());
            } else if !entry.starts_with('#') {
                // The path is the last field: after 8 fields for a change,
                // 9 for a rename (whose source follows), 10 for a conflict,
                // 1 for an untracked file.
                let fields = match entry.as_bytes().first() {
                    Some(b'2') => 10,
                    Some(b'u') => 11,
                    Some(b'?') => 2,
                    _ => 9,
                };
                if let Some(path) = entry.splitn(fields, ' ').nth(fields - 1) {
                    status.changes.push(path.to_owned());
                }
                if entry.starts_with('2') {
                    entries.next();
                }
            }
        }
        Ok(status)
    }

    fn dirty(&self) -> bool {
        !self.changes.is_empty()
    }
}

#[async_trait]
impl Workspaces for GitWorktrees {
    async fn open(&self, issue: &IssueId) -> Result<Workspace, RepoError> {
        let _admin = self.admin.lock().await;
        let path = issue_worktree(&self.dir, issue);
        let branch = issue_branch(issue);
        let path_arg = path.to_string_lossy().into_owned();
        let registered = self.ours().await?.iter().any(|t| t.path == path);
        if registered && path.is_dir() {
            Self::abort_half_done(&GitRepo::new(&path)).await?;
        } else {
            // `-f` only for a tree whose directory went away: never to check
            // out a branch twice.
            let mut args = vec!["worktree", "add", "--quiet"];
            if registered {
                args.push("-f");
            }
            let branch_ref = format!("refs/heads/{branch}");
            let (_, base) = self.base().await?;
            let tip = rev(&self.main, &branch_ref).await.ok();
            let landed = match &tip {
                Some(tip) => is_ancestor(&self.main, tip, &base).await?,
                None => true,
            };
            if landed {
                // New, or kept after it landed: from the base's head, as a new issue.
                args.extend(["-B", &branch, &path_arg, &base]);
            } else {
                args.extend([path_arg.as_str(), &branch]);
            }
            checked(&self.main, &args).await?;
        }
        Ok(Workspace {
            root: path.clone(),
            branch,
            target: self.target.clone(),
            repo: Arc::new(GitRepo::new(&path)),
        })
    }

    async fn land(&self, issue: &IssueId, validate: &[CheckCommand]) -> Result<Landing, RepoError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let _left = Left(&self.queued);
        let _turn = self.queue.lock().await;
        let tree = GitRepo::new(&issue_worktree(&self.dir, issue));
        if let Some(what) = Self::unready(&tree).await? {
            return Ok(Landing::Unready { what });
        }
        for _ in 0..MAX_RACES {
            let (base_ref, onto) = self.base().await?;
            if is_ancestor(&tree, "HEAD", &onto).await? {
                // Landed before (a run that stopped before the close).
                return Ok(Landing::Landed {
                    commit: rev(&tree, "HEAD").await?,
                    note: None,
                });
            }
            if let Some(conflict) = self.put_on(&tree, &base_ref, &onto).await? {
                return Ok(conflict);
            }
            if let Err(failure) = run_commands(tree.root(), validate).await {
                let base = short_ref(&base_ref).to_owned();
                return Ok(Landing::Failed {
                    base,
                    onto,
                    failure,
                });
            }
            let new = rev(&tree, "HEAD").await?;
            if let Some(note) = self.advance(&base_ref, &onto, &new).await? {
                return Ok(Landing::Landed { commit: new, note });
            }
        }
        Err(RepoError::Git {
            command: format!("update-ref refs/heads/{}", self.target),
            stderr: format!("the branch kept moving while mala landed {issue} ({MAX_RACES} tries)"),
        })
    }

    async fn issues(&self) -> Result<Vec<IssueId>, RepoError> {
        let trees = self.ours().await?;
        Ok(trees
            .iter()
            .filter_map(|t| t.path.file_name()?.to_str().map(IssueId::new))
            .collect())
    }

    async fn remove(&self, issue: &IssueId) -> Result<(), RepoError> {
        let _admin = self.admin.lock().await;
        let path = issue_worktree(&self.dir, issue);
        let path_arg = path.to_string_lossy().into_owned();
        if self.ours().await?.iter().any(|t| t.path == path) {
            if path.is_dir() && Status::read(&GitRepo::new(&path), true).await?.dirty() {
                return Err(RepoError::Git {
                    command: format!("worktree remove {path_arg}"),
                    stderr: "it holds uncommitted changes, so mala keeps it".into(),
                });
            }
            // Not forced: git itself keeps a tree with untracked files.
            checked(&self.main, &["worktree", "remove", &path_arg]).await?;
        }
        let branch = issue_branch(issue);
        let branch_ref = format!("refs/heads/{branch}");
        let target = rev(&self.main, &format!("refs/heads/{}", self.target)).await?;
        // Deleted only once the target itself has it (not `mala/merged`).
        if !self.keep_branches
            && let Ok(tip) = rev(&self.main, &branch_ref).await
            && is_ancestor(&self.main, &tip, &target).await?
        {
            checked(&self.main, &["branch", "-D", "--quiet", &branch]).await?;
        }
        Ok(())
    }
}

/// Leaves the queue's count when the landing ends, however it ends.
struct Left<'a>(&'a AtomicUsize);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs git and fails on a non-zero exit; its stdout.
async fn checked(repo: &GitRepo, args: &[&str]) -> Result<String, RepoError> {
    let out = repo.git(args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(RepoError::Git {
            command: args.join(" "),
            stderr: text(&out.stderr),
        })
    }
}

async fn rev(repo: &GitRepo, name: &str) -> Result<String, RepoError> {
    let spec = format!("{name}^{{commit}}");
    Ok(checked(repo, &["rev-parse", "--verify", "--quiet", &spec])
        .await?
        .trim()
        .to_owned())
}

async fn is_ancestor(repo: &GitRepo, ancestor: &str, of: &str) -> Result<bool, RepoError> {
    let out = repo
        .git(&["merge-base", "--is-ancestor", ancestor, of])
        .await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(RepoError::Git {
            command: "merge-base --is-ancestor".into(),
            stderr: text(&out.stderr),
        }),
    }
}

/// `update-ref name new old`: false when `name` is no longer at `old`.
async fn cas(repo: &GitRepo, name: &str, new: &str, old: &str) -> Result<bool, RepoError> {
    Ok(repo
        .git(&["update-ref", name, new, old])
        .await?
        .status
        .success())
}

#[cfg(test)]
#[path = "worktrees_tests.rs"]
mod tests;
