//! Reading `.beads/issues.jsonl`, which br rewrites after every change.
//!
//! Reading it ourselves gives the ready queue, dependencies, parents and
//! epics without one br process per question. Unknown fields are ignored, so
//! a newer br does not break us; a line that does not parse is reported with
//! its file and line number and nothing is guessed.

use std::io::BufRead;
use std::path::Path;

use chrono::{DateTime, Utc};
use mala_core::{
    Dependency, DependencyKind, Issue, IssueId, IssueStatus, IssueType, Priority, TrackerError,
};
use serde::Deserialize;

/// One line of issues.jsonl, with the fields mala reads.
#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    acceptance_criteria: String,
    status: IssueStatus,
    priority: Priority,
    issue_type: IssueType,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    assignee: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default)]
    closed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    defer_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    is_template: bool,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    dependencies: Vec<DependencyRow>,
}

#[derive(Debug, Deserialize)]
struct DependencyRow {
    depends_on_id: String,
    #[serde(rename = "type")]
    kind: DependencyKind,
}

impl From<Row> for Issue {
    fn from(row: Row) -> Self {
        let dependencies: Vec<Dependency> = row
            .dependencies
            .into_iter()
            .map(|d| Dependency {
                depends_on: IssueId::new(d.depends_on_id),
                kind: d.kind,
            })
            .collect();
        let parent = dependencies
            .iter()
            .find(|d| d.kind == DependencyKind::ParentChild)
            .map(|d| d.depends_on.clone());
        Self {
            id: IssueId::new(row.id),
            title: row.title,
            description: row.description,
            acceptance_criteria: row.acceptance_criteria,
            status: row.status,
            priority: row.priority,
            issue_type: row.issue_type,
            labels: row.labels,
            parent,
            dependencies,
            assignee: row.assignee.filter(|a| !a.is_empty()),
            notes: row.notes,
            created_at: row.created_at,
            updated_at: row.updated_at,
            closed_at: row.closed_at,
            defer_until: row.defer_until,
            pinned: row.pinned,
            is_template: row.is_template,
        }
    }
}

/// Parses one line of issues.jsonl; `name` and `number` go into the error.
pub(crate) fn parse_issue_line(
    line: &str,
    name: &str,
    number: usize,
) -> Result<Issue, TrackerError> {
    let row: Row = serde_json::from_str(line)
        .map_err(|e| TrackerError::Corrupt(format!("{name}:{number}: not a valid issue: {e}")))?;
    Ok(row.into())
}

/// Parses issues.jsonl from a reader. `name` is used in error messages.
pub fn parse_issues_jsonl(reader: impl BufRead, name: &str) -> Result<Vec<Issue>, TrackerError> {
    let mut issues = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| TrackerError::io(name, e))?;
        if line.trim().is_empty() {
            continue;
        }
        issues.push(parse_issue_line(&line, name, index + 1)?);
    }
    Ok(issues)
}

/// Reads issues.jsonl from disk: the whole file at once, its lines parsed
/// on two threads when there are enough of them to be worth it (a
/// 10,000-issue file is 5 MB; parsing is most of what a snapshot costs).
pub fn read_issues_jsonl(path: &Path) -> Result<Vec<Issue>, TrackerError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TrackerError::io(name.clone(), e))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    let parse = |part: &[(usize, &str)]| -> Result<Vec<Issue>, TrackerError> {
        part.iter()
            .map(|(index, line)| parse_issue_line(line, &name, index + 1))
            .collect()
    };
    if lines.len() < PARALLEL_FROM {
        return parse(&lines);
    }
    let (first, second) = lines.split_at(lines.len() / 2);
    std::thread::scope(|scope| {
        let later = scope.spawn(|| parse(second));
        let mut issues = parse(first)?;
        let rest = later
            .join()
            .map_err(|_| TrackerError::Corrupt(format!("{name}: the reader crashed")))??;
        issues.extend(rest);
        Ok(issues)
    })
}

/// Below this many lines a second thread costs more than it saves.
const PARALLEL_FROM: usize = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id":"d-by1","title":"Login","description":"POST /login","acceptance_criteria":"Returns JWT","status":"closed","priority":0,"issue_type":"task","created_at":"2026-11-24T05:24:06.933417744Z","created_by":"unknown","updated_at":"2026-11-24T05:24:22.264618308Z","closed_at":"2026-11-24T05:24:22.263784350Z","close_reason":"done","source_repo":"d","compaction_level":0,"original_size":0,"labels":["api"],"dependencies":[{"issue_id":"d-by1","depends_on_id":"d-dbr","type":"parent-child","created_at":"2026-11-24T05:24:07.322695767Z","created_by":"unknown","metadata":"{}","thread_id":""},{"issue_id":"d-by1","depends_on_id":"d-kyq","type":"blocks","created_at":"2026-11-24T05:24:07.3Z"}]}"#;

    #[test]
    fn a_br_line_becomes_an_issue_with_parent_and_blockers() {
        let issues = parse_issues_jsonl(LINE.as_bytes(), "issues.jsonl").unwrap();
        let issue = &issues[0];
        assert_eq!(issue.id.as_str(), "d-by1");
        assert_eq!(issue.acceptance_criteria, "Returns JWT");
        assert_eq!(issue.status, IssueStatus::Closed);
        assert_eq!(issue.priority, Priority::P0);
        assert_eq!(issue.parent, Some(IssueId::from("d-dbr")));
        assert_eq!(
            issue.blockers().map(IssueId::as_str).collect::<Vec<_>>(),
            vec!["d-kyq"]
        );
        assert_eq!(issue.labels, vec!["api"]);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let text = format!("{LINE}\n\n{{\"id\": 3}}\n");
        let err = parse_issues_jsonl(text.as_bytes(), ".beads/issues.jsonl").unwrap_err();
        assert!(
            matches!(&err, TrackerError::Corrupt(m) if m.starts_with(".beads/issues.jsonl:3: ")),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let line = r#"{"id":"d-1","title":"t","status":"open","priority":2,"issue_type":"bug","created_at":"2026-11-24T05:24:06Z","updated_at":"2026-11-24T05:24:06Z","future_field":{"x":1}}"#;
        let issues = parse_issues_jsonl(line.as_bytes(), "x").unwrap();
        assert_eq!(issues[0].issue_type, IssueType::Bug);
        assert!(issues[0].dependencies.is_empty() && issues[0].parent.is_none());
    }
}
