//! The run's metadata, kept current from its events: each issue's record is
//! rewritten as soon as its claim, baseline, session, gate attempts, review
//! findings, spend or outcome change. A run killed at any point so leaves
//! what `--resume` and `mala logs` need.
//!
//! The journal is written by one thread of its own: events only update the
//! book and hand the record over, so no agent's task waits on the disk, and
//! changes to one issue that pile up are written once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use mala_core::{AgentEvent, AgentId, Event, EventSink, IssueId, IssueRecord, RunLog, RunStore};

/// The record status of an issue the environment (or the budget) gave
/// back: the next run carries its session on, as after a crash.
pub(crate) const RELEASED: &str = "released";

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

/// What the writer thread is handed.
enum Write {
    Issue(Box<IssueRecord>),
    /// Everything handed over before this is on disk; say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Keeps the run's record in its [`RunStore`].
pub(crate) struct RunRecorder {
    store: Arc<dyn RunStore>,
    sessions_dir: PathBuf,
    clock: Arc<dyn mala_core::Clock>,
    book: Mutex<Book>,
    writer: Mutex<std::sync::mpsc::Sender<Write>>,
}

/// The writer: takes whatever has piled up, keeps the newest record of each
/// issue, appends them to the journal, and goes back to waiting.
fn write_records(run: &RunLog, store: &dyn RunStore, inbox: &std::sync::mpsc::Receiver<Write>) {
    while let Ok(first) = inbox.recv() {
        let mut newest: HashMap<String, IssueRecord> = HashMap::new();
        let mut flushed = Vec::new();
        for write in std::iter::once(first).chain(inbox.try_iter()) {
            match write {
                Write::Issue(record) => {
                    newest.insert(record.issue.clone(), *record);
                }
                Write::Flush(done) => flushed.push(done),
            }
        }
        for record in newest.values() {
            // A record the store cannot keep is lost to --resume only; the
            // run itself goes on.
            let _ = store.record_issue(run, record);
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

impl RunRecorder {
    /// Starts the record of a run (and writes `run.json`).
    pub(crate) fn start(
        store: Arc<dyn RunStore>,
        sessions_dir: &Path,
        clock: Arc<dyn mala_core::Clock>,
        run: RunLog,
    ) -> Result<Self, mala_core::RunStoreError> {
        store.write_run(&run)?;
        let (writer, inbox) = std::sync::mpsc::channel();
        let (for_writer, writer_store) = (run.clone(), Arc::clone(&store));
        std::thread::spawn(move || write_records(&for_writer, writer_store.as_ref(), &inbox));
        Ok(Self {
            store,
            sessions_dir: sessions_dir.to_path_buf(),
            clock,
            book: Mutex::new(Book {
                run,
                records: HashMap::new(),
                agents: HashMap::new(),
            }),
            writer: Mutex::new(writer),
        })
    }

    fn hand_over(&self, write: Write) {
        // The writer lives as long as the recorder; a send cannot fail before.
        let _ = guard(&self.writer).send(write);
    }

    /// Waits until every record handed over so far is on disk.
    fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        self.hand_over(Write::Flush(done));
        let _ = wait.recv();
    }

    /// Ends the record: the outcome, the issues that gave way in a deadlock,
    /// and the full list in `run.json`.
    pub(crate) fn finish(&self, now: DateTime<Utc>, outcome: &str, deferred: &[IssueId]) {
        let mut book = guard(&self.book);
        let book = &mut *book;
        for issue in deferred {
            if let Some(record) = book.records.get_mut(issue) {
                "deferred".clone_into(&mut record.status);
                record.reason = Some("gave way in a deadlock".into());
                self.hand_over(Write::Issue(Box::new(record.clone())));
            }
        }
        self.flush();
        let mut issues: Vec<IssueRecord> = book.records.values().cloned().collect();
        issues.sort_by(|a, b| a.issue.cmp(&b.issue));
        book.run.issues = issues;
        book.run.finished_at = Some(now);
        outcome.clone_into(&mut book.run.outcome);
        let _ = self.store.write_run(&book.run);
    }
}

impl RunRecorder {
    /// A claim opens the issue's record (or reopens an earlier one) as running.
    fn claimed(&self, book: &mut Book, issue: &IssueId, agent: &mala_core::AgentId) {
        book.agents.insert(agent.clone(), issue.clone());
        let log_path = self.sessions_dir.join(agent.record_file_name());
        let fresh = IssueRecord::new(issue.as_str(), agent.as_str(), log_path);
        let record = book.records.entry(issue.clone()).or_insert(fresh);
        "running".clone_into(&mut record.status);
        record.started_at = Some(self.clock.now());
        record.ended_at = None;
        record.reason = None;
    }
}

impl EventSink for RunRecorder {
    fn emit(&self, event: &Event) {
        let mut book = guard(&self.book);
        let book = &mut *book;
        let (issue, now) = match event {
            Event::IssueClaimed { issue, agent, .. } => {
                self.claimed(book, issue, agent);
                (issue.clone(), true)
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
                (issue, true)
            }
            Event::IssueStarted { issue, baseline } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.baseline = Some(*baseline);
                (issue.clone(), true)
            }
            Event::GateChecked { issue, attempt, .. } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.attempts = record.attempts.max(*attempt);
                // Written with the next change that matters for a resume.
                (issue.clone(), false)
            }
            Event::Reviewed {
                issue, findings, ..
            } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                record.findings.clone_from(findings);
                (issue.clone(), true)
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
                let known = record.session_id.clone();
                if let Some(id) = session_id {
                    record.session_id = Some(id.to_string());
                }
                record.tokens += usage.total();
                record.cost_usd += cost_usd;
                // Spend alone waits for the next change; a new session does not.
                (issue.clone(), record.session_id != known)
            }
            Event::WorktreeOpened { issue, .. }
            | Event::MergeQueued { issue, .. }
            | Event::Landed { issue, .. }
            | Event::Retrying { issue, .. } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                note_worktree(record, event);
                (issue.clone(), true)
            }
            Event::IssueClosed { issue }
            | Event::IssueFailed { issue, .. }
            | Event::IssueSkipped { issue, .. }
            | Event::IssueReleased { issue, .. } => {
                let Some(record) = book.records.get_mut(issue) else {
                    return;
                };
                let (status, reason) = how_it_ended(event);
                status.clone_into(&mut record.status);
                record.reason = reason;
                record.ended_at = Some(self.clock.now());
                (issue.clone(), true)
            }
            _ => return,
        };
        if now && let Some(record) = book.records.get(&issue) {
            self.hand_over(Write::Issue(Box::new(record.clone())));
        }
    }
}

/// Worktree isolation in the journal: where the issue works, and where its
/// branch is in the merge queue.
fn note_worktree(record: &mut IssueRecord, event: &Event) {
    match event {
        Event::WorktreeOpened { branch, path, .. } => {
            record.branch = Some(branch.clone());
            record.worktree = Some(path.clone());
        }
        Event::MergeQueued { .. } => record.merge = Some("queued".to_owned()),
        // Sent back to its agent: out of the queue until it asks again.
        Event::Retrying { .. } => record.merge = None,
        Event::Landed { commit, .. } => record.merge = Some(format!("landed {commit}")),
        _ => {}
    }
}

/// An issue's outcome as its record says it: the status, and why.
fn how_it_ended(event: &Event) -> (&'static str, Option<String>) {
    match event {
        Event::IssueFailed { reason, .. } => ("failed", Some(reason.clone())),
        Event::IssueSkipped { reason, .. } => ("skipped", Some(reason.clone())),
        Event::IssueReleased { reason, .. } => (RELEASED, Some(reason.clone())),
        _ => ("closed", None),
    }
}

/// Sends each event to the recorder, then to the caller's sink.
pub(crate) struct Recorded {
    pub(crate) recorder: Arc<RunRecorder>,
    pub(crate) events: Arc<dyn EventSink>,
}

impl EventSink for Recorded {
    fn emit(&self, event: &Event) {
        self.recorder.emit(event);
        self.events.emit(event);
    }
}
