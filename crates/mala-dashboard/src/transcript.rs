//! A session record read a page at a time: from a byte offset, a bounded
//! number of lines, each protocol line (Claude Code's stream-json or Codex's
//! JSON-RPC) or evidence line turned into what a person reads.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::view::{shorten, tool_summary};

/// The most entries one page holds, whatever the page asks for.
pub(crate) const MOST_ENTRIES: usize = 500;
/// The most record lines one page reads (most lines show nothing).
const MOST_LINES: usize = 5000;
/// About the most bytes one page reads (it ends after the line that
/// crosses it).
const MOST_BYTES: u64 = 4 << 20;
/// A record line longer than this is named, not shown.
const LONGEST_LINE: usize = 1 << 20;
/// How much of a tool's output or the model's text an entry carries.
const TEXT_KEPT: usize = 4000;

/// One thing that happened in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Entry {
    pub(crate) t: String,
    pub(crate) kind: &'static str,
    pub(crate) text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) is_error: Option<bool>,
}

/// One page of a transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Page {
    pub(crate) entries: Vec<Entry>,
    /// Where the next page starts.
    pub(crate) next_offset: u64,
    /// Whether the page reached the end of what is written so far.
    pub(crate) done: bool,
    pub(crate) size: u64,
}

/// One line of a record as read, without holding more than a bound.
enum Line {
    /// A whole line (`buf` holds it), `n` bytes with its newline.
    Whole(u64),
    /// A whole line longer than the bound, `n` bytes, skipped.
    TooLong(u64),
    /// The end of what is written (a last line still being written stays).
    End,
}

/// Reads the next line into `buf`, keeping at most `bound` bytes of it.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, bound: usize) -> std::io::Result<Line> {
    buf.clear();
    let (mut taken, mut too_long) = (0u64, false);
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(Line::End);
        }
        let (chunk, whole) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        if !too_long && buf.len() + chunk.len() <= bound {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = chunk.len();
        taken += used as u64;
        reader.consume(used);
        if whole {
            return Ok(if too_long {
                Line::TooLong(taken)
            } else {
                Line::Whole(taken)
            });
        }
    }
}

/// Reads up to `limit` entries of the record at `path` from byte `offset`
/// (scanning at most [`MOST_LINES`] lines and about [`MOST_BYTES`]). An
/// offset inside a line starts at the next one; a last line still being
/// written is left for the next page; a line too long to show is named.
pub(crate) fn read_page(path: &Path, offset: u64, limit: usize) -> std::io::Result<Page> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut start = offset.min(size);
    let mut before = [0u8; 1];
    if start > 0 {
        file.seek(SeekFrom::Start(start - 1))?;
        file.read_exact(&mut before)?;
    }
    let mut reader = BufReader::new(file);
    let (mut entries, mut line) = (Vec::new(), Vec::new());
    if start > 0 && before[0] != b'\n' {
        match next_line(&mut reader, &mut line, 0)? {
            Line::Whole(n) | Line::TooLong(n) => start += n,
            Line::End => return Ok(page(entries, start, size)),
        }
    }
    let mut at = start;
    for _ in 0..MOST_LINES {
        if entries.len() >= limit.clamp(1, MOST_ENTRIES) || at - start >= MOST_BYTES {
            break;
        }
        match next_line(&mut reader, &mut line, LONGEST_LINE)? {
            Line::Whole(n) => {
                at += n;
                entries.extend(entries_of(&line));
            }
            Line::TooLong(n) => {
                at += n;
                entries.push(entry(
                    "",
                    "session",
                    format!("a record line of {n} bytes is not shown"),
                ));
            }
            Line::End => break,
        }
    }
    Ok(page(entries, at, size))
}

fn page(entries: Vec<Entry>, next_offset: u64, size: u64) -> Page {
    Page {
        entries,
        next_offset,
        done: next_offset >= size,
        size,
    }
}

fn entry(t: &str, kind: &'static str, text: impl Into<String>) -> Entry {
    Entry {
        t: t.to_owned(),
        kind,
        text: text.into(),
        tool: None,
        exit_code: None,
        is_error: None,
    }
}

fn kept(text: &str) -> String {
    if text.len() <= TEXT_KEPT {
        return text.to_owned();
    }
    let mut cut = TEXT_KEPT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// A record line as written: when, which way, and the protocol line left
/// unparsed until it is known to be one a person reads.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(default, borrow)]
    t: Cow<'a, str>,
    #[serde(default, borrow)]
    dir: Cow<'a, str>,
    #[serde(borrow)]
    line: &'a RawValue,
}

/// What a protocol line is, read without building it.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", default, borrow)]
    of_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    subtype: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
}

/// Whether a line shows in the transcript. Most of a record is the hooks'
/// and the model's streaming traffic, which is skipped unparsed.
fn shown(dir: &str, line: &RawValue) -> bool {
    let Ok(kind) = serde_json::from_str::<Kind<'_>>(line.get()) else {
        return matches!(dir, "stderr");
    };
    let (kind, subtype, method) = (
        kind.of_type.as_deref(),
        kind.subtype.as_deref(),
        kind.method.as_deref(),
    );
    match dir {
        "event" | "stderr" | "cmd" => true,
        "out" => kind == Some("user") || matches!(method, Some("turn/start" | "turn/steer")),
        "in" => {
            matches!(kind, Some("assistant" | "user" | "result"))
                || (kind == Some("system") && subtype == Some("init"))
                || matches!(
                    method,
                    Some("item/started" | "item/completed" | "turn/completed")
                )
        }
        _ => false,
    }
}

/// What one record line says, for a person.
fn entries_of(text: &[u8]) -> Vec<Entry> {
    let Ok(record) = serde_json::from_slice::<Record<'_>>(text) else {
        return Vec::new();
    };
    if !shown(&record.dir, record.line) {
        return Vec::new();
    }
    let Ok(line) = serde_json::from_str::<Value>(record.line.get()) else {
        return Vec::new();
    };
    let (t, line) = (record.t.as_ref(), &line);
    match record.dir.as_ref() {
        "event" => evidence(t, line).into_iter().collect(),
        "stderr" => vec![entry(t, "stderr", kept(line.as_str().unwrap_or_default()))],
        "cmd" => vec![entry(t, "session", "the agent's process started")],
        "out" => sent(t, line).into_iter().collect(),
        "in" if line.get("type").is_some() => claude_line(t, line),
        "in" => codex_line(t, line).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// What mala recorded of its own: commands with their status, refusals,
/// edits seen.
fn evidence(t: &str, event: &Value) -> Option<Entry> {
    let kind = str_at(event, "/type")?;
    Some(match kind {
        "command_ran" => Entry {
            exit_code: event
                .pointer("/run/exit_code")
                .and_then(Value::as_i64)
                .and_then(|code| i32::try_from(code).ok()),
            is_error: event.pointer("/run/failed").and_then(Value::as_bool),
            ..entry(
                t,
                "command",
                str_at(event, "/run/command").unwrap_or_default(),
            )
        },
        "tool_denied" => Entry {
            tool: str_at(event, "/tool").map(str::to_owned),
            ..entry(t, "denied", str_at(event, "/reason").unwrap_or_default())
        },
        "file_edited" => entry(t, "edit", str_at(event, "/edit/path").unwrap_or_default()),
        "unlocked_write" => entry(
            t,
            "unlocked_write",
            str_at(event, "/edit/path").unwrap_or_default(),
        ),
        "repository_damaged" => entry(t, "damage", event["what"].to_string()),
        _ => return None,
    })
}

/// A prompt mala sent (Claude Code's user message, Codex's `turn/start`
/// or `turn/steer`).
fn sent(t: &str, line: &Value) -> Option<Entry> {
    if str_at(line, "/type") == Some("user") {
        return Some(entry(
            t,
            "prompt",
            kept(&content_text(&line["message"]["content"])),
        ));
    }
    match str_at(line, "/method")? {
        "turn/start" | "turn/steer" => Some(entry(
            t,
            "prompt",
            kept(&content_text(&line["params"]["input"])),
        )),
        _ => None,
    }
}

/// The text of a message's content: a string, or its text blocks.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn claude_line(t: &str, line: &Value) -> Vec<Entry> {
    match str_at(line, "/type").unwrap_or_default() {
        "assistant" => blocks(line)
            .iter()
            .filter_map(|b| assistant_block(t, b))
            .collect(),
        "user" => blocks(line)
            .iter()
            .filter_map(|b| tool_result(t, b))
            .collect(),
        "result" => vec![Entry {
            is_error: line.get("is_error").and_then(Value::as_bool),
            ..entry(
                t,
                "turn_end",
                format!(
                    "turn ended: {}, {} model turns, ${:.4} so far",
                    str_at(line, "/subtype").unwrap_or("?"),
                    line["num_turns"].as_u64().unwrap_or_default(),
                    line["total_cost_usd"].as_f64().unwrap_or_default()
                ),
            )
        }],
        "system" if str_at(line, "/subtype") == Some("init") => vec![entry(
            t,
            "session",
            format!(
                "session {} on {}",
                str_at(line, "/session_id").unwrap_or("?"),
                str_at(line, "/model").unwrap_or("?")
            ),
        )],
        _ => Vec::new(),
    }
}

fn blocks(line: &Value) -> &[Value] {
    line.pointer("/message/content")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn assistant_block(t: &str, block: &Value) -> Option<Entry> {
    match str_at(block, "/type")? {
        "text" => Some(entry(t, "text", kept(str_at(block, "/text")?))),
        "tool_use" => Some(Entry {
            tool: str_at(block, "/name").map(str::to_owned),
            ..entry(t, "tool_call", shorten(&tool_summary(&block["input"])))
        }),
        _ => None,
    }
}

fn tool_result(t: &str, block: &Value) -> Option<Entry> {
    if str_at(block, "/type")? != "tool_result" {
        return None;
    }
    Some(Entry {
        is_error: Some(block["is_error"].as_bool().unwrap_or(false)),
        ..entry(t, "tool_result", kept(&content_text(&block["content"])))
    })
}

/// Codex's notifications: items begun and done, turns ended.
fn codex_line(t: &str, line: &Value) -> Option<Entry> {
    let method = str_at(line, "/method")?;
    let item = &line["params"]["item"];
    match (method, str_at(item, "/type").unwrap_or_default()) {
        ("item/started", "commandExecution") => Some(Entry {
            tool: Some("shell".into()),
            ..entry(
                t,
                "tool_call",
                shorten(str_at(item, "/command").unwrap_or_default()),
            )
        }),
        ("item/started", "fileChange") => {
            let paths: Vec<&str> = item["changes"]
                .as_array()
                .map(|changes| changes.iter().filter_map(|c| str_at(c, "/path")).collect())
                .unwrap_or_default();
            Some(Entry {
                tool: Some("apply_patch".into()),
                ..entry(t, "tool_call", paths.join(", "))
            })
        }
        ("item/completed", "commandExecution") => Some(Entry {
            exit_code: item["exitCode"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok()),
            is_error: Some(item["exitCode"].as_i64().is_some_and(|c| c != 0)),
            ..entry(
                t,
                "tool_result",
                kept(str_at(item, "/aggregatedOutput").unwrap_or_default()),
            )
        }),
        ("item/completed", "agentMessage") => Some(entry(
            t,
            "text",
            kept(str_at(item, "/text").unwrap_or_default()),
        )),
        ("turn/completed", _) => Some(entry(
            t,
            "turn_end",
            format!(
                "turn ended: {}",
                str_at(line, "/params/turn/status").unwrap_or("?")
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn record(lines: &[Value]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    fn claude_session() -> Vec<Value> {
        let t = "2026-12-04T10:00:00Z";
        vec![
            serde_json::json!({"t": t, "dir": "cmd", "line": {"argv": ["claude"], "cwd": "/r"}}),
            serde_json::json!({"t": t, "dir": "out", "line": {"type": "user", "message": {"role": "user", "content": "Fix bd-1"}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"type": "assistant", "message": {"content": [
                {"type": "text", "text": "<script>alert(2)</script>"},
                {"type": "tool_use", "id": "tu1", "name": "Bash", "input": {"command": "cargo test"}}]}}}),
            serde_json::json!({"t": t, "dir": "event", "line": {"type": "command_ran", "run": {"tool_use_id": "tu1", "command": "cargo test", "exit_code": 101, "failed": true, "error": null, "started_at": null, "ended_at": t}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"type": "user", "message": {"content": [
                {"type": "tool_result", "tool_use_id": "tu1", "is_error": true, "content": "test failed"}]}}}),
            serde_json::json!({"t": t, "dir": "event", "line": {"type": "tool_denied", "tool": "Bash", "reason": "no git reset --hard"}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"type": "control_request", "request_id": "1", "request": {}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"type": "result", "subtype": "success", "num_turns": 2, "total_cost_usd": 0.5, "is_error": false}}),
        ]
    }

    #[test]
    fn a_claude_record_reads_as_prompts_calls_results_commands_and_refusals() {
        let file = record(&claude_session());
        let page = read_page(file.path(), 0, 100).unwrap();
        let kinds: Vec<&str> = page.entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "session",
                "prompt",
                "text",
                "tool_call",
                "command",
                "tool_result",
                "denied",
                "turn_end"
            ]
        );
        assert!(page.done);
        assert_eq!(page.next_offset, page.size);
        // Agent text is carried as it is; the page shows it as text.
        assert_eq!(page.entries[2].text, "<script>alert(2)</script>");
        assert_eq!(page.entries[3].tool.as_deref(), Some("Bash"));
        assert_eq!(page.entries[3].text, "cargo test");
        assert_eq!(page.entries[4].exit_code, Some(101));
        assert_eq!(page.entries[5].is_error, Some(true));
        assert_eq!(page.entries[6].text, "no git reset --hard");
    }

    #[test]
    fn pages_follow_each_other_without_a_gap_or_a_repeat() {
        let file = record(&claude_session());
        let whole = read_page(file.path(), 0, 100).unwrap().entries;
        let (mut offset, mut paged) = (0, Vec::new());
        loop {
            let page = read_page(file.path(), offset, 2).unwrap();
            paged.extend(page.entries);
            offset = page.next_offset;
            if page.done {
                break;
            }
        }
        assert_eq!(paged, whole);
        // An offset inside a line starts at the next one.
        let first_line = serde_json::to_string(&claude_session()[0]).unwrap().len() as u64;
        let from_middle = read_page(file.path(), 3, 1).unwrap();
        assert_eq!(from_middle.entries[0].kind, "prompt");
        assert_eq!(
            from_middle.next_offset,
            first_line + 1 + serde_json::to_string(&claude_session()[1]).unwrap().len() as u64 + 1
        );
    }

    #[test]
    fn a_line_still_being_written_waits_for_the_next_page() {
        let mut file = record(&claude_session()[..2]);
        write!(file, "{{\"t\":\"x\",\"dir\":\"in\",\"li").unwrap();
        let page = read_page(file.path(), 0, 100).unwrap();
        assert_eq!(page.entries.len(), 2);
        assert!(!page.done, "the half line is not read yet");
        assert!(page.next_offset < page.size);
    }

    #[test]
    fn a_codex_record_reads_as_calls_results_and_messages() {
        let t = "2026-12-04T10:00:00Z";
        let file = record(&[
            serde_json::json!({"t": t, "dir": "out", "line": {"id": 4, "method": "turn/start", "params": {"input": [{"type": "text", "text": "do bd-2"}]}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"method": "item/started", "params": {"item": {"type": "commandExecution", "command": "ls"}}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"method": "item/completed", "params": {"item": {"type": "commandExecution", "command": "ls", "exitCode": 2, "aggregatedOutput": "no such file"}}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"method": "item/completed", "params": {"item": {"type": "agentMessage", "text": "done"}}}}),
            serde_json::json!({"t": t, "dir": "in", "line": {"method": "turn/completed", "params": {"turn": {"status": "completed"}}}}),
        ]);
        let page = read_page(file.path(), 0, 100).unwrap();
        let kinds: Vec<&str> = page.entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["prompt", "tool_call", "tool_result", "text", "turn_end"]
        );
        assert_eq!(page.entries[0].text, "do bd-2");
        assert_eq!(page.entries[2].exit_code, Some(2));
        assert_eq!(page.entries[2].is_error, Some(true));
    }

    #[test]
    fn a_line_too_long_to_show_is_named_and_the_rest_still_read() {
        let t = "2026-12-04T10:00:00Z";
        let huge = "x".repeat(LONGEST_LINE + 10);
        let file = record(&[
            serde_json::json!({"t": t, "dir": "stderr", "line": "before"}),
            serde_json::json!({"t": t, "dir": "stderr", "line": huge}),
            serde_json::json!({"t": t, "dir": "stderr", "line": "after"}),
        ]);
        let page = read_page(file.path(), 0, 100).unwrap();
        let texts: Vec<&str> = page.entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts.len(), 3);
        assert_eq!((texts[0], texts[2]), ("before", "after"));
        assert!(texts[1].starts_with("a record line of"), "{}", texts[1]);
        assert!(page.done);
        // Starting inside the long line skips it without holding it.
        let inside = read_page(file.path(), 100, 100).unwrap();
        assert_eq!(inside.entries.len(), 1);
        assert_eq!(inside.entries[0].text, "after");
    }

    #[test]
    fn a_page_counts_what_it_shows_not_the_lines_it_skips() {
        let t = "2026-12-04T10:00:00Z";
        let mut lines: Vec<Value> = (0..50)
            .map(|n| serde_json::json!({"t": t, "dir": "in", "line": {"type": "control_request", "request_id": n.to_string()}}))
            .collect();
        lines.push(serde_json::json!({"t": t, "dir": "stderr", "line": "shown"}));
        let file = record(&lines);
        let page = read_page(file.path(), 0, 1).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].text, "shown");
    }

    #[test]
    fn long_output_is_cut_at_a_character_boundary() {
        let long = "é".repeat(TEXT_KEPT);
        let cut = kept(&long);
        assert!(cut.len() < long.len());
        assert!(cut.ends_with(&format!("({} bytes in all)", long.len())));
    }
}
