//! Run metadata: `<runs dir>/<encoded repo>/<run id>/run.json`, written when
//! a run starts and rewritten when it ends, and `issues.jsonl`, a journal
//! with a line per change of an issue's record (the newest line of an issue
//! wins). A run killed at any point so leaves each issue's session id,
//! baseline and last findings for `--resume`; `mala logs` reads both.
//!
//! A journal, not a file per issue rewritten by rename: appending costs a
//! write, where creating a file each time cost ext4 a third of the
//! scheduler's CPU in the benchmark. A line cut short by a crash is skipped.

use std::path::{Path, PathBuf};

use mala_core::{IssueRecord, RunLog};
use serde::Serialize;

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

/// The journal's name in a run's directory.
const JOURNAL: &str = "issues.jsonl";

/// A run's issue journal, open for appending.
#[derive(Debug)]
pub(crate) struct IssueJournal {
    file: std::fs::File,
}

impl IssueJournal {
    /// Appends `record` as one line, in one write.
    pub(crate) fn append(&mut self, record: &IssueRecord) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// `/a/b_c` → `-a-b_c`: one directory per repository under the runs directory.
pub fn encode_repo(path: &Path) -> String {
    path.to_string_lossy().replace(['/', '\\'], "-")
}

/// `<runs dir>/<encoded repo>/<run id>`: where a run's records are.
pub(crate) fn run_dir(runs_dir: &Path, repo: &Path, run_id: &str) -> PathBuf {
    runs_dir.join(encode_repo(repo)).join(run_id)
}

/// `<runs dir>/<encoded repo>/<run id>/run.json`.
pub(crate) fn run_json_path(runs_dir: &Path, repo: &Path, run_id: &str) -> PathBuf {
    run_dir(runs_dir, repo, run_id).join("run.json")
}

/// Writes `run.json` atomically (temporary file, then rename).
pub(crate) fn write_run_json(runs_dir: &Path, run: &RunLog) -> std::io::Result<()> {
    write_atomically(&run_json_path(runs_dir, &run.repo_path, &run.run_id), run)
}

/// Opens a run's issue journal for appending.
pub(crate) fn open_journal(runs_dir: &Path, run: &RunLog) -> std::io::Result<IssueJournal> {
    let path = run_json_path(runs_dir, &run.repo_path, &run.run_id).with_file_name(JOURNAL);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(IssueJournal { file })
}

/// The run in `dir`, with the issue records journaled since `run.json`.
fn read_run(dir: &Path) -> Option<RunLog> {
    let mut run: RunLog =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).ok()?).ok()?;
    let journal = std::fs::read_to_string(dir.join(JOURNAL)).unwrap_or_default();
    let mut newest: Vec<IssueRecord> = Vec::new();
    for record in journal
        .lines()
        .filter_map(|line| serde_json::from_str::<IssueRecord>(line).ok())
    {
        match newest.iter_mut().find(|r| r.issue == record.issue) {
            Some(older) => *older = record,
            None => newest.push(record),
        }
    }
    newest.sort_by(|a, b| a.issue.cmp(&b.issue));
    for record in newest {
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

/// One run of `repo`, read again (`mala dashboard` follows a run this way).
pub fn read_run_of(runs_dir: &Path, repo: &Path, run_id: &str) -> Option<RunLog> {
    read_run(&run_dir(runs_dir, repo, run_id))
}

/// Runs of one repository (or of all with `repo: None`), newest first.
pub fn list_runs(runs_dir: &Path, repo: Option<&Path>) -> Vec<RunLog> {
    let repo_dirs: Vec<PathBuf> = match repo {
        Some(repo) => vec![runs_dir.join(encode_repo(repo))],
        None => std::fs::read_dir(runs_dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut runs: Vec<RunLog> = repo_dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.filter_map(Result::ok))
        .filter_map(|entry| read_run(&entry.path()))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn runs_are_written_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new("/work/repo");
        for (id, minute) in [("old", 1), ("new", 2)] {
            let run = RunLog {
                run_id: id.into(),
                repo_path: repo.into(),
                started_at: DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap(),
                finished_at: None,
                outcome: "finished".into(),
                settings: serde_json::Value::Null,
                issues: vec![],
            };
            write_run_json(dir.path(), &run).unwrap();
        }
        let runs = list_runs(dir.path(), Some(repo));
        assert_eq!(
            runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            vec!["new", "old"]
        );
        assert_eq!(list_runs(dir.path(), None).len(), 2);
        assert!(list_runs(dir.path(), Some(Path::new("/other"))).is_empty());
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
        write_run_json(dir.path(), &run).unwrap();
        let mut journal = open_journal(dir.path(), &run).unwrap();
        let mut record = IssueRecord::new("m-1", "m-1@r1", "/s/m-1@r1.jsonl".into());
        journal.append(&record).unwrap();
        record.session_id = Some("sess-1".into());
        journal.append(&record).unwrap();
        // A line a crash cut short is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("-work-repo/r1/issues.jsonl"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"issue\":\"m-2\",\"ag"))
            .unwrap();
        // A killed run never rewrote run.json; its issue is still found.
        let runs = list_runs(dir.path(), Some(Path::new("/work/repo")));
        assert_eq!(runs[0].issues.len(), 1);
        assert_eq!(runs[0].issues[0].session_id.as_deref(), Some("sess-1"));
        assert_eq!(runs[0].issues[0].status, "running");
    }
}
