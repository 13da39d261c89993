//! Run metadata: `<runs dir>/<encoded repo>/<run id>/run.json`, written when
//! a run starts and rewritten when it ends, read by `mala logs`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One issue's result in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRecord {
    pub issue: String,
    pub agent: String,
    /// `closed`, `failed`, `skipped`, `deferred`.
    pub status: String,
    pub reason: Option<String>,
    /// The session record (`sessions/<agent>.jsonl`).
    pub log_path: PathBuf,
}

/// A run as `mala logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLog {
    pub run_id: String,
    pub repo_path: PathBuf,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `finished`, `drained`, `interrupted`, `aborted`.
    pub outcome: String,
    pub issues: Vec<IssueRecord>,
}

/// `/a/b_c` → `-a-b_c`: one directory per repository under the runs directory.
pub fn encode_repo(path: &Path) -> String {
    path.to_string_lossy().replace(['/', '\\'], "-")
}

impl RunLog {
    pub fn path(runs_dir: &Path, repo: &Path, run_id: &str) -> PathBuf {
        runs_dir
            .join(encode_repo(repo))
            .join(run_id)
            .join("run.json")
    }

    /// Writes atomically (temporary file, then rename).
    pub fn write(&self, runs_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(runs_dir, &self.repo_path, &self.run_id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension("json.tmp");
        std::fs::write(
            &temp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(temp, path)
    }

    /// Runs of one repository (or of all with `repo: None`), newest first.
    pub fn list(runs_dir: &Path, repo: Option<&Path>) -> Vec<Self> {
        let repo_dirs: Vec<PathBuf> = match repo {
            Some(repo) => vec![runs_dir.join(encode_repo(repo))],
            None => std::fs::read_dir(runs_dir)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default(),
        };
        let mut runs: Vec<Self> = repo_dirs
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.filter_map(Result::ok))
            .filter_map(|entry| std::fs::read(entry.path().join("run.json")).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_written_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new("/work/repo");
        for (id, minute) in [("old", 1), ("new", 2)] {
            RunLog {
                run_id: id.into(),
                repo_path: repo.into(),
                started_at: DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap(),
                finished_at: None,
                outcome: "finished".into(),
                issues: vec![],
            }
            .write(dir.path())
            .unwrap();
        }
        let runs = RunLog::list(dir.path(), Some(repo));
        assert_eq!(
            runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            vec!["new", "old"]
        );
        assert_eq!(RunLog::list(dir.path(), None).len(), 2);
        assert!(RunLog::list(dir.path(), Some(Path::new("/other"))).is_empty());
    }
}
