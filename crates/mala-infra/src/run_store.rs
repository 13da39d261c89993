//! `FileRunStore`: the `RunStore` port over mala's files. Marks are run
//! markers in the lock directory (where the original keeps them, so both
//! see each other's runs); records are `run.json` and the `issues.jsonl`
//! journal under the runs directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use mala_core::{IssueRecord, RunLog, RunStore, RunStoreError};

use crate::run_log::{IssueJournal, encode_repo, list_runs, open_journal, write_run_json};
use crate::run_marker::{RunMarker, is_run_alive, remove_stale};

/// Runs of one repository, kept in files.
#[derive(Debug)]
pub struct FileRunStore {
    runs_dir: PathBuf,
    lock_dir: PathBuf,
    repo_root: PathBuf,
    /// The journal of the run being recorded, opened on its first record.
    journal: Mutex<Option<(String, IssueJournal)>>,
}

impl FileRunStore {
    pub fn new(runs_dir: &Path, lock_dir: &Path, repo_root: &Path) -> Self {
        Self {
            runs_dir: runs_dir.to_path_buf(),
            lock_dir: lock_dir.to_path_buf(),
            repo_root: repo_root.to_path_buf(),
            journal: Mutex::new(None),
        }
    }
}

fn failed(what: String) -> impl FnOnce(std::io::Error) -> RunStoreError {
    move |source| RunStoreError { what, source }
}

impl FileRunStore {
    /// The content keys whose baseline passed, one per line.
    fn baseline_file(&self) -> PathBuf {
        self.runs_dir
            .join(encode_repo(&self.repo_root))
            .join("baseline-passed")
    }
}

impl RunStore for FileRunStore {
    fn remove_stale(&self) -> usize {
        remove_stale(&self.lock_dir).locks_removed
    }

    fn mark_live(&self, run: &RunLog, max_agents: Option<u32>) -> Result<(), RunStoreError> {
        let marker = RunMarker {
            run_id: run.run_id.clone(),
            repo_path: run.repo_path.clone(),
            started_at: Utc::now(),
            pid: std::process::id(),
            max_agents,
        };
        marker
            .write(&self.lock_dir)
            .map(|_| ())
            .map_err(failed(format!(
                "cannot write the run marker in {}",
                self.lock_dir.display()
            )))
    }

    fn unmark(&self, run_id: &str) {
        let _ = std::fs::remove_file(RunMarker::path(&self.lock_dir, run_id));
    }

    fn is_alive(&self, run_id: &str) -> bool {
        is_run_alive(&self.lock_dir, run_id)
    }

    fn baseline_passed(&self, key: &str) -> bool {
        std::fs::read_to_string(self.baseline_file())
            .is_ok_and(|text| text.lines().any(|line| line == key))
    }

    fn record_baseline_passed(&self, key: &str) {
        use std::io::Write as _;
        let file = self.baseline_file();
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // One line per key, appended whole: a cut line names no key.
        if let Ok(mut out) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
        {
            let _ = out.write_all(format!("{key}\n").as_bytes());
        }
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        crate::run_log::run_dir(&self.runs_dir, &self.repo_root, run_id)
    }

    fn write_run(&self, run: &RunLog) -> Result<(), RunStoreError> {
        let dir = self.run_dir(&run.run_id);
        std::fs::create_dir_all(&dir)
            .and_then(|()| write_run_json(&self.runs_dir, run))
            .map_err(failed(dir.display().to_string()))
    }

    fn record_issue(&self, run: &RunLog, record: &IssueRecord) -> Result<(), RunStoreError> {
        let mut journal = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if journal.as_ref().is_none_or(|(id, _)| *id != run.run_id) {
            let opened = open_journal(&self.runs_dir, run)
                .map_err(failed(self.run_dir(&run.run_id).display().to_string()))?;
            *journal = Some((run.run_id.clone(), opened));
        }
        match journal.as_mut() {
            Some((_, open)) => open
                .append(record)
                .map_err(failed(format!("the issue journal of run {}", run.run_id))),
            None => Ok(()),
        }
    }

    fn runs(&self) -> Vec<RunLog> {
        list_runs(&self.runs_dir, Some(&self.repo_root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, repo: &Path) -> RunLog {
        RunLog {
            run_id: id.into(),
            repo_path: repo.into(),
            started_at: Utc::now(),
            finished_at: None,
            outcome: "running".into(),
            settings: serde_json::Value::Null,
            issues: vec![],
        }
    }

    #[test]
    fn a_run_is_marked_recorded_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new("/work/repo");
        let store = FileRunStore::new(&dir.path().join("runs"), &dir.path().join("locks"), repo);
        let this = run("r1", repo);
        store.mark_live(&this, Some(2)).unwrap();
        assert!(store.is_alive("r1"), "this process runs it");
        assert!(!store.is_alive("r0"));
        store.write_run(&this).unwrap();
        let mut record = IssueRecord::new("m-1", "m-1@r1", "/s".into());
        store.record_issue(&this, &record).unwrap();
        record.session_id = Some("sess".into());
        store.record_issue(&this, &record).unwrap();
        let runs = store.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].issues[0].session_id.as_deref(), Some("sess"));
        assert!(store.run_dir("r1").join("run.json").exists());
        store.unmark("r1");
        assert!(!store.is_alive("r1"));
    }
}
