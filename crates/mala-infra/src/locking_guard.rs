//! The coordination rules as a `ToolGuard`, for every backend's agents:
//! the domain's `check_tool` with the locks each agent holds, in the shared
//! checkout or, under worktree isolation, in the agent's own tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mala_core::{AgentId, IssueId, LockTable, Refusal, ToolGuard};
use mala_domain::{GuardContext, ToolCall, check_tool};

/// The coordination rules as a `ToolGuard`: `check_tool` with the locks the
/// agent holds in the lock table.
pub struct LockingGuard {
    repo_root: PathBuf,
    locks: Arc<dyn LockTable>,
    disallowed_tools: Vec<String>,
    require_locks: bool,
    /// Worktree isolation: an issue's agent is judged in its own worktree
    /// under this directory, on its own branch, with no locks.
    worktrees: Option<PathBuf>,
}

impl std::fmt::Debug for LockingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockingGuard")
            .field("repo_root", &self.repo_root)
            .finish_non_exhaustive()
    }
}

impl LockingGuard {
    pub fn new(repo_root: &Path, locks: Arc<dyn LockTable>, disallowed_tools: Vec<String>) -> Self {
        Self {
            repo_root: repo_root
                .canonicalize()
                .unwrap_or_else(|_| repo_root.to_path_buf()),
            locks,
            disallowed_tools,
            require_locks: true,
            worktrees: None,
        }
    }

    /// Issue agents (named `<issue>@<run>`) work in their own worktrees
    /// under `dir` (worktree isolation); any other agent in the shared
    /// checkout, as before.
    #[must_use]
    pub fn in_worktrees(mut self, dir: &Path) -> Self {
        self.worktrees = Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
        self
    }

    /// Edits need no locks (a run with one agent); destructive commands are still refused.
    #[must_use]
    pub fn without_lock_enforcement(mut self) -> Self {
        self.require_locks = false;
        self
    }
}

impl ToolGuard for LockingGuard {
    fn check(&self, agent: &AgentId, tool: &str, input: &serde_json::Value) -> Result<(), Refusal> {
        let call = ToolCall::from_claude(tool, input);
        let decision = if mala_domain::is_preflight_agent(agent) {
            mala_domain::check_probe_tool(&call)
        } else {
            let held = self.locks.held_by(agent);
            let issue = mala_domain::parse_agent_name(agent).map(|(issue, _)| issue);
            let prefix = issue.as_ref().map(IssueId::commit_prefix);
            let own = self
                .worktrees
                .as_ref()
                .zip(issue.as_ref())
                .map(|(dir, issue)| {
                    (
                        crate::issue_worktree(dir, issue),
                        crate::issue_branch(issue),
                    )
                });
            let root = own.as_ref().map_or(&self.repo_root, |(tree, _)| tree);
            // In its own tree, the user's checkout and the other trees are off limits.
            let elsewhere: Vec<PathBuf> = match (&own, &self.worktrees) {
                (Some(_), Some(dir)) => vec![self.repo_root.clone(), dir.clone()],
                _ => Vec::new(),
            };
            let ctx = GuardContext {
                repo_root: root,
                cwd: root,
                held: &held,
                disallowed_tools: &self.disallowed_tools,
                staged: None,
                require_locks: self.require_locks && own.is_none(),
                commit_prefix: prefix.as_deref(),
                own_branch: own.as_ref().map(|(_, branch)| branch.as_str()),
                elsewhere: &elsewhere,
            };
            check_tool(&call, &ctx)
        };
        match decision {
            mala_domain::Decision::Allow => Ok(()),
            mala_domain::Decision::Deny { reason } => Err(Refusal(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_with_the_rules_own_words_and_allows_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let locks: Arc<dyn LockTable> =
            Arc::new(crate::FileLockTable::new(dir.path().join("locks"), dir.path()).unwrap());
        let guard = LockingGuard::new(dir.path(), locks, vec!["WebFetch".into()]);
        let agent = AgentId::new("m-1@run");
        let call = |tool: &str, input: serde_json::Value| guard.check(&agent, tool, &input);
        let edit = serde_json::json!({"file_path": dir.path().join("a.rs"), "content": "x"});
        let expected = match check_tool(
            &ToolCall::from_claude("Write", &edit),
            &GuardContext {
                repo_root: &guard.repo_root,
                cwd: &guard.repo_root,
                held: &[],
                disallowed_tools: &guard.disallowed_tools,
                staged: None,
                require_locks: true,
                commit_prefix: None,
                own_branch: None,
                elsewhere: &[],
            },
        ) {
            mala_domain::Decision::Deny { reason } => reason,
            mala_domain::Decision::Allow => panic!("an unlocked edit is refused"),
        };
        assert_eq!(call("Write", edit), Err(Refusal(expected)));
        assert!(call("WebFetch", serde_json::json!({})).is_err());
        // The preflight probe meets its own rule: everything refused, the
        // canary with the refusal the preflight looks for.
        let probe = mala_domain::preflight_agent("run");
        let canary = serde_json::json!({"command": mala_domain::PREFLIGHT_CANARY});
        assert_eq!(
            guard.check(&probe, "Bash", &canary),
            Err(Refusal(mala_domain::CANARY_REFUSAL.to_owned()))
        );
        assert!(
            guard
                .check(&probe, "Read", &serde_json::json!({"file_path": "a.rs"}))
                .is_err()
        );
        assert_eq!(
            guard.check(&agent, "Bash", &canary),
            Ok(()),
            "only the probe's"
        );
        assert_eq!(
            call("Read", serde_json::json!({"file_path": "a.rs"})),
            Ok(())
        );
    }

    #[test]
    fn in_worktrees_an_issue_agent_is_judged_in_its_own_tree_and_others_in_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, trees) = (dir.path().join("repo"), dir.path().join("trees"));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(trees.join("m-1")).unwrap();
        let locks: Arc<dyn LockTable> =
            Arc::new(crate::FileLockTable::new(dir.path().join("locks"), &repo).unwrap());
        let guard = LockingGuard::new(&repo, locks, Vec::new()).in_worktrees(&trees);
        let (issue_agent, reviewer) = (AgentId::new("m-1@run"), AgentId::new("review-m-1"));
        let write = |path: PathBuf| serde_json::json!({"file_path": path, "content": "x"});
        let own = trees.canonicalize().unwrap().join("m-1/src/a.rs");
        assert_eq!(
            guard.check(&issue_agent, "Write", &write(own)),
            Ok(()),
            "no locks in its own tree"
        );
        let user = repo.canonicalize().unwrap().join("src/a.rs");
        let refused = guard
            .check(&issue_agent, "Write", &write(user.clone()))
            .unwrap_err();
        assert!(refused.0.contains("another working tree"), "{refused}");
        let other = trees.canonicalize().unwrap().join("m-2/src/a.rs");
        assert!(guard.check(&issue_agent, "Write", &write(other)).is_err());
        // An agent not named as an issue's works in the checkout, with its locks.
        let other_says = guard.check(&reviewer, "Write", &write(user)).unwrap_err();
        assert!(other_says.0.contains("lock"), "{other_says}");
    }
}
