//! The beads tracker: the real `br`, or mala's embedded store of br's JSONL.

mod br_tracker;
mod cli;
mod freshness;
mod jsonl;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mala_core::{Clock, IssueTracker, TrackerError};
use mala_domain::{IssueGraph, TrackerKind};

pub use br_tracker::BrTracker;
pub use cli::{BR_INSTALL_HINT, BrCli};
pub use jsonl::{parse_issues_jsonl, read_issues_jsonl};
pub use store::JsonlTracker;
pub use writer::WriteRetry;

pub use mala_domain::{NEEDS_FOLLOWUP, normalize_label};

/// The tracker a run uses, with its in-memory snapshot.
#[derive(Clone)]
pub enum Tracker {
    Br(Arc<BrTracker>),
    Jsonl(JsonlTracker),
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Tracker {
    /// Picks the tracker: `br` needs the binary; `auto` uses br when it was
    /// found, else the embedded store. `br` is the binary the caller found
    /// (on PATH or configured). Must be called inside a tokio runtime.
    pub fn open(
        kind: TrackerKind,
        repo: &Path,
        br: Option<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TrackerError> {
        if !repo.join(".beads").is_dir() {
            return Err(TrackerError::NotFound(format!(
                "{}/.beads (this repository has no beads tracker: run `br init` and create issues)",
                repo.display()
            )));
        }
        match (kind, br) {
            (TrackerKind::Br | TrackerKind::Auto, Some(binary)) => {
                Ok(Self::Br(Arc::new(BrTracker::new(binary, repo, clock))))
            }
            (TrackerKind::Br, None) => Err(TrackerError::NotInstalled {
                program: "br".to_owned(),
                hint: BR_INSTALL_HINT.to_owned(),
            }),
            (TrackerKind::Jsonl | TrackerKind::Auto, _) => {
                JsonlTracker::open(repo).map(Self::Jsonl)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Br(_) => "br",
            Self::Jsonl(_) => "jsonl",
        }
    }

    pub async fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        match self {
            Self::Br(br) => br.snapshot().await,
            Self::Jsonl(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.snapshot())
                    .await
                    .map_err(|e| TrackerError::Unavailable(format!("reading issues.jsonl: {e}")))?
            }
        }
    }

    pub fn as_port(&self) -> Arc<dyn IssueTracker> {
        match self {
            Self::Br(br) => Arc::clone(br) as Arc<dyn IssueTracker>,
            Self::Jsonl(store) => Arc::new(store.clone()),
        }
    }
}
