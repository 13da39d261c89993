//! The beads tracker: the real `br`, or mala's embedded store of br's JSONL.

mod br_tracker;
mod cli;
mod commit;
mod jsonl;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mala_core::{Clock, IssueTracker, TrackerError};
use mala_domain::{IssueGraph, TrackerKind};
use sha2::{Digest, Sha256};

pub use br_tracker::BrTracker;
pub use cli::{BR_INSTALL_HINT, BrCli};
pub use commit::commit_tracker_files;
pub use jsonl::{parse_issues_jsonl, read_issues_jsonl};
pub use store::JsonlTracker;
pub use writer::WriteRetry;

/// The label mala puts on issues that need a person (or a later run).
pub const NEEDS_FOLLOWUP: &str = "needs-followup";

/// Labels br and the original mala agree on: `[A-Za-z0-9_:-]`, at most 50
/// characters (longer ones keep a 41-character prefix and a hash).
pub fn normalize_label(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 50 {
        return clean;
    }
    let digest = Sha256::digest(clean.as_bytes());
    let hash: String = digest.iter().take(4).fold(String::new(), |mut hex, b| {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("{}:{hash}", &clean[..41])
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_normalised_like_the_original() {
        assert_eq!(normalize_label("review:src/a b.rs"), "review:src-a-b-rs");
        let long = "x".repeat(60);
        let label = normalize_label(&long);
        assert_eq!(label.len(), 50);
        assert!(label.starts_with(&"x".repeat(41)));
        assert_eq!(normalize_label(&long), label, "stable");
    }
}
