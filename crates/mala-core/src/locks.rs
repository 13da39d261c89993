//! File locks between agents: the vocabulary and the errors. The table itself
//! is a port (`LockTable` in `ports.rs`); the file-backed one is in mala-infra.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::AgentId;

/// The outcome for one requested path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathLock {
    /// The path as the agent named it.
    pub filepath: String,
    pub acquired: bool,
    /// Who holds it now (the caller when `acquired`).
    pub holder: Option<AgentId>,
}

/// What `lock_acquire` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireReport {
    pub results: Vec<PathLock>,
    pub all_acquired: bool,
}

/// What `lock_wait` answers: whether the agent should park, and on what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReport {
    pub parked: bool,
    /// Paths held by other agents.
    pub wait_paths: Vec<String>,
}

/// Something that happened in the lock table; the deadlock monitor and the
/// console listen to these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LockEvent {
    Acquired {
        agent: AgentId,
        key: String,
        path: PathBuf,
    },
    /// `agent` waits for any one of `on` (all of them held by others).
    Waiting { agent: AgentId, on: Vec<WaitTarget> },
    /// The agent stopped waiting (it got a lock, timed out or gave up).
    StoppedWaiting { agent: AgentId },
    Released {
        agent: AgentId,
        key: String,
        path: PathBuf,
    },
}

/// A lock an agent waits for, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitTarget {
    pub key: String,
    pub path: PathBuf,
    pub holder: AgentId,
}

/// One lock as `mala status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub key: String,
    /// The canonical path, when the lock file's companion records it.
    pub path: Option<PathBuf>,
    pub holder: AgentId,
    pub since: Option<DateTime<Utc>>,
}

/// A lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The request itself is wrong (no paths, paths and `all` together).
    #[error("{0}")]
    Invalid(String),
    /// The lock directory could not be used.
    #[error("{0}")]
    Io(String),
}
