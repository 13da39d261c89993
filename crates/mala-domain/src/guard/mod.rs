//! The tool guard: one pure function decides every tool call an agent makes,
//! for every backend.
//!
//! It refuses destructive git operations and dangerous shell patterns (each
//! refusal names a safe alternative), tools the configuration disallows, and
//! writes to repository files the agent does not hold the lock of: structured
//! edits (`Write`, `Edit`, `MultiEdit`, `NotebookEdit`) and shell commands that
//! write (redirections, `tee`, `sed -i`, `mv`/`cp`/`rm`/`touch`, git's own
//! path commands), however they are nested (`bash -c`, `env`, subshells, `&&`,
//! `;`, `|`, command substitutions). A command it cannot read with
//! confidence is refused with the reason.
//!
//! Scope: the guard reads commands, not programs. A script file or a
//! `python -c` program can still write anything; the quality gate and the
//! commit rules catch what such programs leave behind.

mod options;
mod programs;
mod rules;
mod shell;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// What the guard knows about the calling agent.
#[derive(Debug, Clone, Copy)]
pub struct GuardContext<'a> {
    /// The repository root (absolute).
    pub repo_root: &'a Path,
    /// Where the agent's commands run (absolute; normally the repository root).
    pub cwd: &'a Path,
    /// Absolute paths this agent holds the locks of.
    pub held: &'a [PathBuf],
    /// Tool names that are refused outright.
    pub disallowed_tools: &'a [String],
    /// Absolute paths currently staged in git, when the caller knows them;
    /// a plain `git commit` is refused while someone else's file is staged.
    pub staged: Option<&'a [PathBuf]>,
    /// Whether edits need locks (off when a run has no other agents to protect).
    pub require_locks: bool,
}

impl GuardContext<'_> {
    fn holds(&self, path: &Path) -> bool {
        !self.require_locks || self.held.iter().any(|held| held == path)
    }
}

/// One tool call, in the terms the guard needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCall {
    /// A shell command (Claude's `Bash`, Codex's `shell`).
    Shell { tool: String, command: String },
    /// A structured edit of one file.
    Edit { tool: String, path: String },
    /// Anything else (reads, searches, MCP tools).
    Other { tool: String },
}

impl ToolCall {
    /// A Claude Code tool call (`tool_name`, `tool_input`).
    pub fn from_claude(tool: &str, input: &Value) -> Self {
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        match tool {
            "Bash" => Self::Shell {
                tool: tool.to_owned(),
                command: text("command").unwrap_or_default(),
            },
            "Write" | "Edit" | "MultiEdit" => Self::Edit {
                tool: tool.to_owned(),
                path: text("file_path").unwrap_or_default(),
            },
            "NotebookEdit" => Self::Edit {
                tool: tool.to_owned(),
                path: text("notebook_path").unwrap_or_default(),
            },
            _ => Self::Other {
                tool: tool.to_owned(),
            },
        }
    }

    pub fn tool(&self) -> &str {
        match self {
            Self::Shell { tool, .. } | Self::Edit { tool, .. } | Self::Other { tool } => tool,
        }
    }
}

/// The guard's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// The repository files a shell command changes the content of (literal
/// targets only), for dating an agent's last edit. `git add` and `git commit`
/// need the locks of their paths but change no content, so they are not here.
pub fn shell_writes(command: &str, repo_root: &Path) -> Vec<PathBuf> {
    let ctx = GuardContext {
        repo_root,
        cwd: repo_root,
        held: &[],
        disallowed_tools: &[],
        staged: None,
        require_locks: true,
    };
    rules::repository_writes(command, &ctx)
}

/// Decides one tool call.
pub fn check_tool(call: &ToolCall, ctx: &GuardContext<'_>) -> Decision {
    let result = decide(call, ctx);
    match result {
        Ok(()) => Decision::Allow,
        Err(reason) => Decision::Deny { reason },
    }
}

fn decide(call: &ToolCall, ctx: &GuardContext<'_>) -> Result<(), String> {
    if ctx.disallowed_tools.iter().any(|t| t == call.tool()) {
        return Err(format!(
            "refused: the {} tool is disabled for mala agents (disallowed_tools in mala.yaml)",
            call.tool()
        ));
    }
    match call {
        ToolCall::Shell { command, .. } => rules::check_command(command, ctx),
        ToolCall::Edit { tool, path } => {
            if path.is_empty() {
                return Err(format!("refused: {tool} without a file path"));
            }
            rules::check_edit(tool, path, ctx)
        }
        ToolCall::Other { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(
        held: &'a [PathBuf],
        staged: Option<&'a [PathBuf]>,
        disallowed: &'a [String],
    ) -> GuardContext<'a> {
        GuardContext {
            repo_root: Path::new("/repo"),
            cwd: Path::new("/repo"),
            held,
            disallowed_tools: disallowed,
            staged,
            require_locks: true,
        }
    }

    fn reason(decision: Decision) -> String {
        match decision {
            Decision::Deny { reason } => reason,
            Decision::Allow => panic!("expected a refusal"),
        }
    }

    #[test]
    fn structured_edits_need_the_lock_inside_the_repository() {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        let ctx = ctx(&held, None, &[]);
        let edit =
            |tool: &str, key: &str, path: &str| ToolCall::from_claude(tool, &json!({ key: path }));
        assert!(check_tool(&edit("Write", "file_path", "/repo/src/lib.rs"), &ctx).is_allowed());
        assert!(check_tool(&edit("Edit", "file_path", "src/lib.rs"), &ctx).is_allowed());
        assert!(check_tool(&edit("Write", "file_path", "/tmp/notes.md"), &ctx).is_allowed());
        let denied = reason(check_tool(
            &edit("MultiEdit", "file_path", "/repo/src/other.rs"),
            &ctx,
        ));
        assert!(
            denied.contains("src/other.rs") && denied.contains("lock_acquire"),
            "{denied}"
        );
        let denied = reason(check_tool(
            &edit("NotebookEdit", "notebook_path", "/repo/nb.ipynb"),
            &ctx,
        ));
        assert!(denied.contains("nb.ipynb"), "{denied}");
        let denied = reason(check_tool(
            &edit("Write", "file_path", "/repo/src/../.git/HEAD"),
            &ctx,
        ));
        assert!(denied.contains(".git"), "{denied}");
        assert!(
            check_tool(
                &ToolCall::from_claude("Read", &json!({"file_path": "/repo/x"})),
                &ctx
            )
            .is_allowed()
        );
    }

    #[test]
    fn without_lock_enforcement_only_danger_is_refused() {
        let ctx = GuardContext {
            require_locks: false,
            ..ctx(&[], None, &[])
        };
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        assert!(check_tool(&shell("echo x > src/any.rs"), &ctx).is_allowed());
        assert!(!check_tool(&shell("git reset --hard"), &ctx).is_allowed());
    }

    #[test]
    fn shell_writes_lists_repository_targets() {
        let root = Path::new("/repo");
        assert_eq!(
            shell_writes("echo x >> src/a.rs && sed -i s/a/b/ src/b.rs", root),
            vec![
                PathBuf::from("/repo/src/a.rs"),
                PathBuf::from("/repo/src/b.rs")
            ]
        );
        assert!(shell_writes("cargo test > /tmp/log 2>&1", root).is_empty());
        assert!(shell_writes("cargo test", root).is_empty());
        assert!(shell_writes("echo x > $OUT", root).is_empty());
        // Staging and committing need locks, but they edit nothing.
        assert!(
            shell_writes(
                "git add src/a.rs && git commit -m 'bd-x-1: y' -- src/a.rs",
                root
            )
            .is_empty()
        );
        assert_eq!(
            shell_writes("git mv src/a.rs src/b.rs && git add src/b.rs", root),
            vec![
                PathBuf::from("/repo/src/a.rs"),
                PathBuf::from("/repo/src/b.rs")
            ]
        );
    }

    #[test]
    fn disallowed_tools_are_refused_by_name() {
        let disallowed = vec!["TodoWrite".to_owned()];
        let ctx = ctx(&[], None, &disallowed);
        let denied = reason(check_tool(
            &ToolCall::from_claude("TodoWrite", &json!({})),
            &ctx,
        ));
        assert!(
            denied.contains("TodoWrite") && denied.contains("disallowed_tools"),
            "{denied}"
        );
    }

    #[test]
    fn a_plain_commit_is_refused_while_someone_elses_file_is_staged() {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        let staged = vec![
            PathBuf::from("/repo/src/lib.rs"),
            PathBuf::from("/repo/theirs.rs"),
        ];
        let ctx = ctx(&held, Some(&staged), &[]);
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        let denied = reason(check_tool(
            &shell("git add src/lib.rs && git commit -m 'bd-a-1: x'"),
            &ctx,
        ));
        assert!(denied.contains("theirs.rs"), "{denied}");
        assert!(check_tool(&shell("git commit -m 'bd-a-1: x' -- src/lib.rs"), &ctx).is_allowed());
    }
}
