//! What an agent did, recorded by hooks while it happened: the quality gate
//! reads this, never the agent's own account.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One shell command the agent ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRun {
    pub tool_use_id: String,
    pub command: String,
    /// The exit status when the backend reports it; `Some(0)` for a success.
    pub exit_code: Option<i32>,
    /// Whether the tool call failed (non-zero exit, timeout, interruption).
    pub failed: bool,
    /// The failure text the backend reported, if any.
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
}

/// One file the agent changed: with a structured edit, or as seen in the
/// working tree after a tool call (`tool` then says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEdit {
    pub tool_use_id: String,
    pub tool: String,
    pub path: String,
    pub at: DateTime<Utc>,
}

/// Everything recorded for one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub commands: Vec<CommandRun>,
    pub edits: Vec<FileEdit>,
    /// Files changed without their lock, as seen in the working tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlocked: Vec<FileEdit>,
    /// What `.git` lost behind git's back while the agent's programs ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repository_damage: Vec<String>,
}

/// A commit, as the gate and the reviewer see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub id: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    /// Paths the commit changed, relative to the repository root.
    pub files: Vec<String>,
}

/// A command mala runs itself, in a directory of its choosing (triggers,
/// `gate.rerun`), never on an agent's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCommand {
    /// The name in mala.yaml's `commands`.
    pub name: String,
    pub command: String,
    /// Seconds; a default applies when absent.
    pub timeout: Option<u64>,
}

/// The first command that failed, and the end of its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckFailure {
    pub name: String,
    pub command: String,
    pub output: String,
}
