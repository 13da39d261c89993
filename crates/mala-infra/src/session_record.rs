//! The session record: every protocol line in both directions (Claude
//! Code's stream-json, Codex's JSON-RPC), plus the evidence mala derived,
//! appended to `<state dir>/sessions/<agent>.jsonl`. Flushed at every turn
//! end, so a crash loses at most the current turn.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use chrono::Utc;
use mala_core::AgentId;

use serde_json::{Value, json};

/// Where session records go, by agent.
pub(crate) fn record_path(state_dir: &Path, agent: &AgentId) -> std::path::PathBuf {
    state_dir.join("sessions").join(agent.record_file_name())
}

#[derive(Debug)]
pub(crate) struct SessionRecord {
    file: Mutex<Option<BufWriter<File>>>,
}

impl SessionRecord {
    /// Opens (appending) the record of `agent`; a record that cannot be
    /// opened is skipped with a warning rather than stopping the session.
    pub(crate) fn open(state_dir: &Path, agent: &AgentId) -> Self {
        let path = record_path(state_dir, agent);
        let file = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            });
        let file = match file {
            Ok(file) => Some(BufWriter::new(file)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "no session record for this session");
                None
            }
        };
        Self {
            file: Mutex::new(file),
        }
    }

    pub(crate) fn write(&self, direction: &str, line: &Value) {
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = guard.as_mut() {
            let entry = json!({"t": Utc::now().to_rfc3339(), "dir": direction, "line": line});
            let _ = writeln!(file, "{entry}");
        }
    }

    /// Records a line exactly as the CLI printed it (it is JSON already), so
    /// the hot path never serialises twice.
    pub(crate) fn write_raw(&self, direction: &str, line: &[u8]) {
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = guard.as_mut() {
            let _ = write!(
                file,
                "{{\"t\":\"{}\",\"dir\":\"{direction}\",\"line\":",
                Utc::now().to_rfc3339()
            );
            let _ = file.write_all(line.trim_ascii());
            let _ = file.write_all(b"}\n");
        }
    }

    pub(crate) fn flush(&self) {
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = guard.as_mut() {
            let _ = file.flush();
        }
    }
}

impl Drop for SessionRecord {
    fn drop(&mut self) {
        self.flush();
    }
}
