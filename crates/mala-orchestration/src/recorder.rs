//! The run's metadata, kept current from its events: each issue's record is
//! rewritten the moment its claim, baseline, session, gate attempts, review
//! findings, spend or outcome change. A run killed at any point so leaves
//! what `--resume` and `mala logs` need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use mala_core::{AgentEvent, AgentId, Event, EventSink, IssueId};
use mala_infra::{IssueRecord, RunLog};

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Book {
    run: RunLog,
    records: HashMap<IssueId, IssueRecord>,
    agents: HashMap<AgentId, IssueId>,
}

/// Writes `run.json` and `issues/<id>.json` under the runs directory.
pub(crate) struct RunRecorder {
    runs_dir: PathBuf,
    sessions_dir: PathBuf,
    book: Mutex<Book>,
}

impl RunRecorder {
    /// Starts the record of a run (and writes `run.json`).
    pub(crate) fn start(runs_dir: &Path, sessions_dir: &Path, run: RunLog) -> Self {
        let _ = run.write(runs_dir);
        Self {
            runs_dir: runs_dir.to_path_buf(),
            sessions_dir: sessions_dir.to_path_buf(),
            book: Mutex::new(Book {
                run,
                records: HashMap::new(),
                agents: HashMap::new(),
            }),
        }
    }

    /// Ends the record: the outcome, the issues that gave way in a deadlock,
    /// and the full list in `run.json`.
    pub(crate) fn finish(&self, outcome: &str, deferred: &[IssueId]) {
        let mut book = guard(&self.book);
        let book = &mut *book;
        for issue in deferred {
            if let Some(record) = book.records.get_mut(issue) {
                "deferred".clone_into(&mut record.status);
                record.reason = Some("gave way in a deadlock".into());
                let _ = book.run.write_issue(&self.runs_dir, record);
            }
        }
        let mut issues: Vec<IssueRecord> = book.records.values().cloned().collect();
        issues.sort_by(|a, b| a.issue.cmp(&b.issue));
        book.run.issues = issues;
        book.run.finished_at = Some(Utc::now());
        outcome.clone_into(&mut book.run.outcome);
        let _ = book.run.write(&self.runs_dir);
    }
}

impl EventSink for RunRecorder {
    fn emit(&self, event: &Event) {
        let mut book = guard(&self.book);
        let book = &mut *book;
        let issue = match event {
            Event::IssueClaimed { issue, agent } => {
                book.agents.insert(agent.clone(), issue.clone());
                let log_path = self.sessions_dir.join(format!(
                    "{}.jsonl",
                    agent.as_str().replace(['/', '\\'], "_")
                ));
                let fresh = IssueRecord::new(issue.as_str(), agent.as_str(), log_path);
                let record = book.records.entry(issue.clone()).or_insert(fresh);
                "running".clone_into(&mut record.status);
                record.reason = None;
                issue.clone()
            }
            Event::Agent {
                agent,
                event: AgentEvent::SessionStarted { session_id },
            } => {
                let Some(issue) = book.agents.get(agent).cloned() else {
                    return;
                };
                let Some(record) = book.records.get_mut(&issue) else {
                    return;
                };
                if record.session_id.as_deref() == Some(session_id.as_str()) {
                    return;
                }
                record.session_id = Some(session_id.to_string());
                issue
            }
            Event::IssueStarted { issue, baseline } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.baseline = Some(*baseline);
                issue.clone()
            }
            Event::GateChecked { issue, attempt, .. } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.attempts = record.attempts.max(*attempt);
                issue.clone()
            }
            Event::Reviewed {
                issue, findings, ..
            } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.findings.clone_from(findings);
                issue.clone()
            }
            Event::TurnFinished {
                issue,
                session_id,
                usage,
                cost_usd,
            } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                if let Some(id) = session_id {
                    record.session_id = Some(id.to_string());
                }
                record.tokens += usage.input_tokens + usage.output_tokens;
                record.cost_usd += cost_usd;
                issue.clone()
            }
            Event::IssueClosed { issue } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                "closed".clone_into(&mut record.status);
                record.reason = None;
                issue.clone()
            }
            Event::IssueFailed { issue, reason } | Event::IssueSkipped { issue, reason } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                let status = if matches!(event, Event::IssueFailed { .. }) {
                    "failed"
                } else {
                    "skipped"
                };
                status.clone_into(&mut record.status);
                record.reason = Some(reason.clone());
                issue.clone()
            }
            _ => return,
        };
        if let Some(record) = book.records.get(&issue) {
            let _ = book.run.write_issue(&self.runs_dir, record);
        }
    }
}

/// Sends each event to the recorder, then to the caller's sink.
pub(crate) struct Recorded {
    pub(crate) recorder: std::sync::Arc<RunRecorder>,
    pub(crate) events: std::sync::Arc<dyn EventSink>,
}

impl EventSink for Recorded {
    fn emit(&self, event: &Event) {
        self.recorder.emit(event);
        self.events.emit(event);
    }
}
