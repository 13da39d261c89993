//! Adapters with real I/O behind the ports of `mala-core`.
//!
//! The system clock; the beads tracker (the real `br` with in-process reads
//! and one writer, or the embedded JSONL store); git, the lock files and the
//! working-tree watch; the agent backends (Claude Code over stream-json,
//! Codex over `codex app-server`) and mala's tools for their agents; the
//! command runner, the cerberus reviewer, and the run's records.

mod agent_tools;
mod beads;
mod cerberus;
mod claude;
mod clock;
mod coder;
mod codex;
mod commands;
mod event_log;
mod git;
mod locking_guard;
mod locks;
mod process_tree;
mod run_log;
mod run_marker;
mod run_store;
mod session_record;
mod tree_watch;
mod worktrees;

pub use beads::{
    BR_INSTALL_HINT, BrCli, BrTracker, JsonlTracker, NEEDS_FOLLOWUP, Tracker, WriteRetry,
    normalize_label, parse_issues_jsonl, read_issues_jsonl,
};
pub use cerberus::{CerberusConfig, CerberusReviewer, CerberusSetupError, check_cerberus};
pub use claude::{
    ClaudeBackend, ClaudeConfig, ClaudeSession, INSTALL_HINT as CLAUDE_INSTALL_HINT, Interrupter,
    check_claude,
};
pub use clock::SystemClock;
pub use coder::{AgentServices, CoderConfig};
pub use codex::{CodexBackend, CodexConfig, INSTALL_HINT as CODEX_INSTALL_HINT, check_codex};
pub use commands::{DEFAULT_COMMAND_TIMEOUT, ShellCommands, run_commands};
pub use event_log::{EventLog, EventTail};
pub use git::{CommitRefusal, GitRepo, commit_as_agent};
pub use locking_guard::LockingGuard;
pub use locks::{
    FileLockTable, canonical_path, list_locks, lock_file_stem, paths_held_in, remove_lock,
};
pub use run_log::{encode_repo, list_runs, read_run_of};
pub use run_marker::{Cleanup, RunMarker, is_run_alive, remove_stale};
pub use run_store::FileRunStore;
pub use tree_watch::{Call, Change, Observed, Snapshot, TreeWatch, Watching, WindowId};
pub use worktrees::{GitWorktrees, LiveWorktree, MERGED_BRANCH, issue_branch, issue_worktree};
