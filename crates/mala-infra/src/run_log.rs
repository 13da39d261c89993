//! Run metadata: `<runs dir>/<encoded repo>/<run id>/run.json`, written when
//! a run starts and rewritten when it ends, and one `issues/<id>.json` per
//! issue, rewritten (atomically) whenever something about it changes. A run
//! killed at any point so leaves each issue's session id, baseline and last
//! findings for `--resume`; `mala logs` reads both.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One issue in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRecord {
    pub issue: String,
    pub agent: String,
    /// `running`, `closed`, `failed`, `skipped`, `deferred`.
    pub status: String,
    pub reason: Option<String>,
    /// The session record (`sessions/<agent>.jsonl`).
    pub log_path: PathBuf,
    /// The agent's session, for resuming it.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Commits older than this were not this issue's work.
    #[serde(default)]
    pub baseline: Option<DateTime<Utc>>,
    /// Gate attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last review's blocking findings, fed back on a resume.
    #[serde(default)]
    pub findings: Vec<mala_core::Finding>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
}

impl IssueRecord {
    /// A record of `issue` just claimed by `agent`.
    pub fn new(issue: &str, agent: &str, log_path: PathBuf) -> Self {
        Self {
            issue: issue.to_owned(),
            agent: agent.to_owned(),
            status: "running".to_owned(),
            reason: None,
            log_path,
            session_id: None,
            baseline: None,
            attempts: 0,
            findings: Vec::new(),
            tokens: 0,
            cost_usd: 0.0,
        }
    }
}

/// Writes `value` as JSON to `path` by way of a temporary file and a rename,
/// so a reader (or a crash) never sees half of it.
fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("json.tmp");
    std::fs::write(
        &temp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(temp, path)
}

/// A run as `mala logs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLog {
    pub run_id: String,
    pub repo_path: PathBuf,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `finished`, `drained`, `interrupted`, `aborted`.
    pub outcome: String,
    /// What the run was set up to do (scope, width, checks, review, triggers).
    #[serde(default)]
    pub settings: serde_json::Value,
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
        write_atomically(&Self::path(runs_dir, &self.repo_path, &self.run_id), self)
    }

    /// Writes one issue's record of this run, atomically.
    pub fn write_issue(&self, runs_dir: &Path, record: &IssueRecord) -> std::io::Result<()> {
        let path = Self::path(runs_dir, &self.repo_path, &self.run_id).with_file_name("issues");
        let name = record.issue.replace(['/', '\\'], "_");
        write_atomically(&path.join(format!("{name}.json")), record)
    }

    /// The run in `dir`, with the issue records written since `run.json`.
    fn read(dir: &Path) -> Option<Self> {
        let mut run: Self =
            serde_json::from_slice(&std::fs::read(dir.join("run.json")).ok()?).ok()?;
        let mut records: Vec<IssueRecord> = std::fs::read_dir(dir.join("issues"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
                    .collect()
            })
            .unwrap_or_default();
        records.sort_by(|a, b| a.issue.cmp(&b.issue));
        for record in records {
            match run.issues.iter_mut().find(|r| r.issue == record.issue) {
                // The end of the run knows the outcome; the record knows the rest.
                Some(known) => {
                    let (status, reason) = (known.status.clone(), known.reason.clone());
                    *known = IssueRecord {
                        status,
                        reason,
                        ..record
                    };
                }
                None => run.issues.push(record),
            }
        }
        Some(run)
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
            .filter_map(|entry| Self::read(&entry.path()))
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
                settings: serde_json::Value::Null,
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

    #[test]
    fn issue_records_written_mid_run_are_read_with_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunLog {
            run_id: "r1".into(),
            repo_path: "/work/repo".into(),
            started_at: Utc::now(),
            finished_at: None,
            outcome: "running".into(),
            settings: serde_json::Value::Null,
            issues: vec![],
        };
        run.write(dir.path()).unwrap();
        let mut record = IssueRecord::new("m-1", "m-1@r1", "/s/m-1@r1.jsonl".into());
        record.session_id = Some("sess-1".into());
        run.write_issue(dir.path(), &record).unwrap();
        // A killed run never rewrote run.json; its issue is still found.
        let runs = RunLog::list(dir.path(), Some(Path::new("/work/repo")));
        assert_eq!(runs[0].issues.len(), 1);
        assert_eq!(runs[0].issues[0].session_id.as_deref(), Some("sess-1"));
        assert_eq!(runs[0].issues[0].status, "running");
    }
}
