//! A run's event log: `<run dir>/events.jsonl`, every event the run emits
//! with the time it happened, one JSON line each. `mala dashboard` folds it
//! into the same view `mala run --serve` shows, for a run in another
//! process or one that has ended.
//!
//! One write per line, with no buffer in between: a reader in another
//! process sees each event as soon as it happens, and a run killed at any
//! point loses none it emitted. A line cut short by a crash is skipped.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use mala_core::{Event, EventSink, LoggedEvent};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The log's name in a run's directory.
pub(crate) const EVENTS: &str = "events.jsonl";

/// How much of the log one read takes at most, so following a long run
/// never holds all of it at once.
const CHUNK: usize = 4 << 20;

#[derive(Serialize)]
struct Written<'a> {
    at: DateTime<Utc>,
    event: &'a Event,
}

#[derive(Deserialize)]
struct Read<'a> {
    at: DateTime<Utc>,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// Appends the run's events to its log.
#[derive(Debug)]
pub struct EventLog {
    /// The file, and the line being written (kept to reuse its memory).
    out: Mutex<(std::fs::File, Vec<u8>)>,
    /// A write failed and was said: the next failures are not said again.
    failed: std::sync::atomic::AtomicBool,
}

impl EventLog {
    /// Opens (or creates) the log in the run's directory for appending.
    pub fn create(run_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join(EVENTS))?;
        Ok(Self {
            out: Mutex::new((file, Vec::new())),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// How much of one text an agent's tool moved the log keeps: the view
/// shows which tool runs, not what it read or wrote, and the session record
/// keeps every byte. Without it, one `cat` of a large file or one `Write`
/// of a large one is a line of that size in a log a page folds.
const KEPT_TEXT: usize = 4 << 10;

/// `text` cut to [`KEPT_TEXT`] (at a character boundary), saying how much
/// was left out.
fn cut(text: &str) -> String {
    let mut end = KEPT_TEXT.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes in the session record)",
        &text[..end],
        text.len() - end
    )
}

/// Every string in `value` longer than [`KEPT_TEXT`], cut; whether any was.
fn cut_strings(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) if text.len() > KEPT_TEXT => {
            *text = cut(text);
            true
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().fold(false, |cut, v| cut_strings(v) | cut)
        }
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .fold(false, |cut, v| cut_strings(v) | cut),
        _ => false,
    }
}

/// The event as the log keeps it, when that is not the event itself: a
/// tool's output and a tool call's input with their long texts cut.
fn as_logged(event: &Event) -> Option<Event> {
    let Event::Agent { agent, event } = event else {
        return None;
    };
    let kept = match event {
        mala_core::AgentEvent::ToolResult {
            id,
            is_error,
            content,
        } if content.len() > KEPT_TEXT => mala_core::AgentEvent::ToolResult {
            id: id.clone(),
            is_error: *is_error,
            content: cut(content),
        },
        mala_core::AgentEvent::ToolUse { id, name, input } => {
            let mut input = input.clone();
            if !cut_strings(&mut input) {
                return None;
            }
            mala_core::AgentEvent::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input,
            }
        }
        _ => return None,
    };
    Some(Event::Agent {
        agent: agent.clone(),
        event: kept,
    })
}

impl EventSink for EventLog {
    fn emit(&self, event: &Event) {
        let at = Utc::now();
        let kept = as_logged(event);
        let event = kept.as_ref().unwrap_or(event);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let (file, line) = &mut *out;
        line.clear();
        if serde_json::to_writer(&mut *line, &Written { at, event }).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(error) = file.write_all(line)
            && !self.failed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // The run goes on without a full log; `mala dashboard` on it
            // shows what was written, and the record has the outcome.
            tracing::warn!(%error, "could not append to the run's event log; later failures are not said");
        }
    }
}

/// Reads a run's event log from where the last read ended.
#[derive(Debug)]
pub struct EventTail {
    path: PathBuf,
    offset: u64,
    /// Inside a line longer than [`CHUNK`]: it is skipped to its end.
    skipping: bool,
}

impl EventTail {
    /// The log of run `run_id` of `repo` under `runs_dir`, if it has one
    /// (runs recorded before mala kept one have none).
    pub fn of_run(runs_dir: &Path, repo: &Path, run_id: &str) -> Option<Self> {
        let path = crate::run_log::run_dir(runs_dir, repo, run_id).join(EVENTS);
        path.is_file().then(|| Self::at(path))
    }

    /// The log at `path`, read from its start.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            skipping: false,
        }
    }

    /// The whole lines written since the last read (at most a chunk of
    /// them: read again until it is empty to catch up). A line not ended
    /// yet waits for the next read; a line that is not an event this mala
    /// knows is left out.
    pub fn read_new(&mut self) -> std::io::Result<Vec<LoggedEvent>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(CHUNK as u64).read_to_end(&mut bytes)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            if bytes.len() == CHUNK {
                // One line larger than a chunk: not an event worth holding.
                self.offset += bytes.len() as u64;
                self.skipping = true;
            }
            return Ok(Vec::new());
        };
        self.offset += end as u64 + 1;
        let mut lines = bytes[..end].split(|&b| b == b'\n');
        if std::mem::take(&mut self.skipping) {
            lines.next();
        }
        Ok(lines.filter_map(parse).collect())
    }
}

fn parse(line: &[u8]) -> Option<LoggedEvent> {
    let read: Read<'_> = serde_json::from_slice(line).ok()?;
    let json = read.event.get();
    Some(LoggedEvent {
        at: read.at,
        event: serde_json::from_str(json).ok()?,
        json: json.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::IssueId;

    fn closed(id: &str) -> Event {
        Event::IssueClosed {
            issue: IssueId::new(id),
        }
    }

    #[test]
    fn a_tools_long_output_and_input_are_cut_and_the_rest_kept_whole() {
        use mala_core::{AgentEvent, AgentId};
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::create(dir.path()).unwrap();
        let mut tail = EventTail::at(dir.path().join(EVENTS));
        let agent = |event| Event::Agent {
            agent: AgentId::new("a@r"),
            event,
        };
        let big_text = "é".repeat(50_000);
        log.emit(&agent(AgentEvent::ToolResult {
            id: "t1".into(),
            is_error: false,
            content: big_text.clone(),
        }));
        let write = serde_json::json!({"file_path": "src/big.rs", "content": big_text});
        log.emit(&agent(AgentEvent::ToolUse {
            id: "t2".into(),
            name: "Write".into(),
            input: write,
        }));
        let short = agent(AgentEvent::ToolResult {
            id: "t3".into(),
            is_error: false,
            content: "ok".into(),
        });
        log.emit(&short);
        let read = tail.read_new().unwrap();
        assert!(
            read.iter().all(|e| e.json.len() < 2 * KEPT_TEXT),
            "lines stay small"
        );
        let Event::Agent {
            event: AgentEvent::ToolResult { content, .. },
            ..
        } = &read[0].event
        else {
            panic!("{:?}", read[0].event)
        };
        assert!(content.starts_with("éé"));
        assert!(
            content.ends_with("more bytes in the session record)"),
            "{content:.40}"
        );
        let Event::Agent {
            event: AgentEvent::ToolUse { input, .. },
            ..
        } = &read[1].event
        else {
            panic!("{:?}", read[1].event)
        };
        assert_eq!(input["file_path"], "src/big.rs", "short fields stay whole");
        assert!(input["content"].as_str().unwrap().len() < 2 * KEPT_TEXT);
        assert_eq!(read[2].event, short);
    }

    #[test]
    fn what_the_run_writes_is_read_back_in_order_with_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let log = EventLog::create(&run_dir).unwrap();
        let path = run_dir.join(EVENTS);
        let mut tail = EventTail::at(path);
        let before = Utc::now();
        log.emit(&closed("a"));
        log.emit(&closed("b"));
        let read = tail.read_new().unwrap();
        assert_eq!(
            read.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
            [closed("a"), closed("b")]
        );
        assert!(read.iter().all(|e| e.at >= before && e.at <= Utc::now()));
        assert_eq!(read[0].json, serde_json::to_string(&closed("a")).unwrap());
        assert!(tail.read_new().unwrap().is_empty(), "read once only");
        log.emit(&closed("c"));
        assert_eq!(tail.read_new().unwrap()[0].event, closed("c"));
    }

    #[test]
    fn a_line_not_ended_yet_waits_and_one_cut_by_a_crash_or_unknown_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS);
        let mut tail = EventTail::at(path.clone());
        let line = |event: &Event| {
            let mut text = serde_json::to_string(&Written {
                at: Utc::now(),
                event,
            })
            .unwrap();
            text.push('\n');
            text
        };
        let whole = line(&closed("a"));
        let (head, rest) = whole.split_at(10);
        std::fs::write(&path, head).unwrap();
        assert!(tail.read_new().unwrap().is_empty());
        let unknown = r#"{"at":"2026-12-04T00:00:00Z","event":{"kind":"from_the_future"}}"#;
        let text = format!("{head}{rest}{{\"at\":\n{unknown}\n{}", line(&closed("b")));
        std::fs::write(&path, text).unwrap();
        let read: Vec<Event> = tail
            .read_new()
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(read, [closed("a"), closed("b")]);
    }

    #[test]
    fn a_line_larger_than_a_chunk_is_skipped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS);
        let huge = format!(
            r#"{{"at":"2026-12-04T00:00:00Z","event":{{"kind":"warning","message":"{}"}}}}"#,
            "x".repeat(CHUNK + 10)
        );
        let after = serde_json::to_string(&Written {
            at: Utc::now(),
            event: &closed("a"),
        })
        .unwrap();
        std::fs::write(&path, format!("{huge}\n{after}\n")).unwrap();
        let mut tail = EventTail::at(path);
        let mut read = Vec::new();
        for _ in 0..3 {
            read.extend(tail.read_new().unwrap().into_iter().map(|e| e.event));
        }
        assert_eq!(read, [closed("a")]);
    }
}
