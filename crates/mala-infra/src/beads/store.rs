//! The embedded store: [`IssueTracker`] served straight from
//! `.beads/issues.jsonl`, in br's own format, for repositories without br.
//!
//! Every change is a read-modify-write of the whole file under br's workspace
//! lock (`.beads/.write.lock`, an advisory `flock` that br takes too), written
//! to a temporary file and renamed into place. Rows that did not change are
//! written back byte for byte; a changed row keeps br's key order and gets a
//! newer `updated_at`, so br imports it when it is installed later.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use mala_core::BrCode;
use mala_core::{
    ClaimOutcome, DependencyKind, EpicStatus, Issue, IssueId, IssueStatus, IssueTracker,
    IssueUpdate, NewIssue, TrackerError,
};
use mala_domain::{Blocker, IssueGraph};
use serde_json::{Map, Value, json};

use super::jsonl::parse_issue_line;
use super::{NEEDS_FOLLOWUP, normalize_label};

/// The order of keys in br's JSONL rows (its `Issue` struct).
const KEY_ORDER: &[&str] = &[
    "id",
    "title",
    "description",
    "design",
    "acceptance_criteria",
    "prerequisites",
    "notes",
    "status",
    "priority",
    "issue_type",
    "assignee",
    "owner",
    "estimated_minutes",
    "created_at",
    "created_by",
    "updated_at",
    "closed_at",
    "close_reason",
    "closed_by_session",
    "bypassed_policy",
    "bypass_reason",
    "policy_gates_fired",
    "due_at",
    "defer_until",
    "external_ref",
    "source_system",
    "source_repo",
    "source_repo_path",
    "agent_context",
    "deleted_at",
    "deleted_by",
    "delete_reason",
    "original_type",
    "compaction_level",
    "compacted_at",
    "compacted_at_commit",
    "original_size",
    "sender",
    "ephemeral",
    "pinned",
    "is_template",
    "labels",
    "dependencies",
    "comments",
];

/// Who the store writes as in `created_by`.
const WRITER: &str = "mala";

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn io_error(path: &Path, error: std::io::Error) -> TrackerError {
    TrackerError::io(path.display().to_string(), error)
}

/// One line of the file as read; `row` is filled in when the line is edited.
#[derive(Debug)]
struct Line {
    raw: String,
    id: Option<IssueId>,
    row: Option<Map<String, Value>>,
}

/// The file, line by line, with the issues it holds.
#[derive(Debug)]
struct Document {
    name: String,
    lines: Vec<Line>,
    graph: IssueGraph,
    changed: bool,
    now: DateTime<Utc>,
}

impl Document {
    fn parse(text: &str, name: &str, now: DateTime<Utc>) -> Result<Self, TrackerError> {
        let mut lines = Vec::new();
        let mut issues = Vec::new();
        for (index, raw) in text.split_inclusive('\n').enumerate() {
            let content = raw.trim_end_matches(['\n', '\r']);
            let id = if content.trim().is_empty() {
                None
            } else {
                let issue = parse_issue_line(content, name, index + 1)?;
                let id = issue.id.clone();
                issues.push(issue);
                Some(id)
            };
            lines.push(Line {
                raw: raw.to_owned(),
                id,
                row: None,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            lines,
            graph: IssueGraph::new(issues),
            changed: false,
            now,
        })
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            if let Some(row) = &line.row {
                out.push_str(&canonical(row).to_string());
                out.push('\n');
            } else {
                out.push_str(&line.raw);
                if !line.raw.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }

    fn issue(&self, id: &IssueId) -> Result<&Issue, TrackerError> {
        self.graph
            .get(id)
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))
    }

    /// The row of `id`, parsed for editing; its `updated_at` moves forward.
    fn edit(&mut self, id: &IssueId) -> Result<&mut Map<String, Value>, TrackerError> {
        let previous = self.issue(id)?.updated_at;
        // br imports a row only when its updated_at is newer than its own copy.
        let stamp = timestamp(self.now.max(previous + chrono::Duration::nanoseconds(1)));
        let name = self.name.clone();
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.id.as_ref() == Some(id))
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))?;
        if line.row.is_none() {
            let parsed: Map<String, Value> =
                serde_json::from_str(line.raw.trim_end_matches(['\n', '\r']))
                    .map_err(|e| TrackerError::Corrupt(format!("{name}: row {id}: {e}")))?;
            line.row = Some(parsed);
        }
        self.changed = true;
        let row = line.row.get_or_insert_with(Map::new);
        row.insert("updated_at".to_owned(), Value::String(stamp));
        Ok(row)
    }

    fn insert(&mut self, id: IssueId, row: Map<String, Value>) {
        // br keeps the file sorted by id.
        let at = self
            .lines
            .iter()
            .position(|l| {
                l.id.as_ref()
                    .is_some_and(|other| other.as_str() > id.as_str())
            })
            .unwrap_or(self.lines.len());
        self.lines.insert(
            at,
            Line {
                raw: String::new(),
                id: Some(id),
                row: Some(row),
            },
        );
        self.changed = true;
    }
}

/// A row with its keys in br's order; keys br does not know keep their place after.
fn canonical(row: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for key in KEY_ORDER {
        if let Some(value) = row.get(*key) {
            out.insert((*key).to_owned(), value.clone());
        }
    }
    for (key, value) in row {
        if !out.contains_key(key) {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

fn set(row: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    row.insert(key.to_owned(), value.into());
}

fn remove_label(row: &mut Map<String, Value>, label: &str) {
    if let Some(Value::Array(labels)) = row.get_mut("labels") {
        labels.retain(|l| l.as_str() != Some(label));
    }
}

fn add_label(row: &mut Map<String, Value>, label: &str) {
    let mut labels: Vec<String> = row
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !labels.iter().any(|l| l == label) {
        labels.push(label.to_owned());
        labels.sort();
    }
    set(row, "labels", labels);
}

fn append_notes(row: &mut Map<String, Value>, notes: &str) {
    let combined = match row.get("notes").and_then(Value::as_str) {
        Some(old) if !old.is_empty() => format!("{old}\n{notes}"),
        _ => notes.to_owned(),
    };
    set(row, "notes", combined);
}

/// A refusal with br's code, so callers treat both trackers alike.
fn rejected(code: BrCode, message: String) -> TrackerError {
    TrackerError::Rejected {
        code: Some(code),
        message,
        hint: None,
        retryable: false,
    }
}

/// The tracker served from `.beads/issues.jsonl` without br.
#[derive(Debug)]
pub(super) struct JsonlStore {
    jsonl: PathBuf,
    lock: PathBuf,
    cache: Mutex<Option<(std::time::SystemTime, u64, Arc<IssueGraph>)>>,
}

impl JsonlStore {
    /// The store of the repository at `repo` (its `.beads/` must exist).
    pub(super) fn open(repo: &Path) -> Result<Self, TrackerError> {
        let beads = repo.join(".beads");
        if !beads.is_dir() {
            return Err(TrackerError::NotFound(format!(
                "{} (no .beads directory: create issues with `br init` and `br create`, \
                 or write .beads/issues.jsonl in br's format)",
                beads.display()
            )));
        }
        Ok(Self {
            jsonl: beads.join("issues.jsonl"),
            lock: beads.join(".write.lock"),
            cache: Mutex::new(None),
        })
    }

    fn read_text(path: &Path) -> Result<String, TrackerError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// The current graph; re-read only when the file changed.
    pub(super) fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        let stamp = std::fs::metadata(&self.jsonl)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some((modified, len)), Some((seen_modified, seen_len, graph))) = (stamp, &*cache)
            && modified == *seen_modified
            && len == *seen_len
        {
            return Ok(Arc::clone(graph));
        }
        let text = Self::read_text(&self.jsonl)?;
        let document = Document::parse(&text, &self.jsonl.display().to_string(), Utc::now())?;
        let graph = Arc::new(document.graph);
        if let Some((modified, len)) = stamp {
            *cache = Some((modified, len, Arc::clone(&graph)));
        }
        Ok(graph)
    }

    /// Read, change and write back the file under the workspace lock.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T, TrackerError>,
    ) -> Result<T, TrackerError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| io_error(&self.lock, e))?;
        lock.lock().map_err(|e| io_error(&self.lock, e))?;
        let text = Self::read_text(&self.jsonl)?;
        let mut document = Document::parse(&text, &self.jsonl.display().to_string(), Utc::now())?;
        let result = change(&mut document)?;
        if document.changed {
            self.replace(&document.render())?;
        }
        // Dropping the file releases the flock.
        drop(lock);
        Ok(result)
    }

    /// Writes `text` to a temporary file next to the JSONL and renames it over.
    fn replace(&self, text: &str) -> Result<(), TrackerError> {
        let dir = self.jsonl.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(".issues.jsonl.mala-{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.jsonl)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io_error(&self.jsonl, e)
        })
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Self) -> Result<T, TrackerError> + Send + 'static,
    ) -> Result<T, TrackerError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| TrackerError::Unavailable(format!("tracker store task failed: {e}")))?
    }
}

/// An `IssueTracker` handle to the embedded store (shared; clones are cheap).
#[derive(Debug, Clone)]
pub struct JsonlTracker(Arc<JsonlStore>);

impl JsonlTracker {
    pub fn open(repo: &Path) -> Result<Self, TrackerError> {
        JsonlStore::open(repo).map(|s| Self(Arc::new(s)))
    }

    pub fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        self.0.snapshot()
    }
}

/// A new id: `<parent>.<n>` for children, else `<prefix>-<3+ base36 chars>`.
fn new_id(document: &Document, parent: Option<&IssueId>, prefix: &str) -> IssueId {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let taken = |id: &str| document.graph.contains(&IssueId::from(id));
    if let Some(parent) = parent {
        let stem = format!("{parent}.");
        let next = document
            .graph
            .issues()
            .iter()
            .filter_map(|i| i.id.as_str().strip_prefix(&stem)?.parse::<u32>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        return IssueId::new(format!("{stem}{next}"));
    }
    let mut length = 3;
    loop {
        for _ in 0..20 {
            let bytes = uuid::Uuid::new_v4().into_bytes();
            let suffix: String = bytes
                .iter()
                .take(length)
                .map(|b| char::from(DIGITS[usize::from(*b) % DIGITS.len()]))
                .collect();
            let id = format!("{prefix}-{suffix}");
            if !taken(&id) {
                return IssueId::new(id);
            }
        }
        length += 1;
    }
}

/// The id prefix: the one most existing top-level ids use, else the directory name.
fn id_prefix(document: &Document, repo_dir: &Path) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for issue in document.graph.issues() {
        if let Some((prefix, _)) = issue.id.as_str().rsplit_once('-')
            && !issue.id.as_str().contains('.')
        {
            *counts.entry(prefix).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map_or_else(
        || {
            repo_dir
                .file_name()
                .map_or_else(|| "mala".to_owned(), |n| n.to_string_lossy().into_owned())
        },
        |(p, _)| p.to_owned(),
    )
}

/// Whether adding `from -> to` would close a cycle (br refuses those).
fn creates_cycle(graph: &IssueGraph, from: &IssueId, to: &IssueId) -> bool {
    let mut stack = vec![to];
    let mut seen = std::collections::HashSet::new();
    while let Some(current) = stack.pop() {
        if current == from {
            return true;
        }
        if !seen.insert(current) {
            continue;
        }
        if let Some(issue) = graph.get(current) {
            stack.extend(issue.dependencies.iter().map(|d| &d.depends_on));
        }
    }
    false
}

fn blocking_ids(graph: &IssueGraph, id: &IssueId) -> Vec<IssueId> {
    graph
        .blockers(id)
        .iter()
        .filter(|b| matches!(b, Blocker::Issue(_) | Blocker::OpenChild(_)))
        .map(|b| b.id().clone())
        .collect()
}

fn close_row(document: &mut Document, id: &IssueId, reason: &str) -> Result<(), TrackerError> {
    let now = timestamp(document.now);
    let row = document.edit(id)?;
    set(row, "status", "closed");
    set(row, "closed_at", now);
    set(row, "close_reason", reason);
    Ok(())
}

#[async_trait]
impl IssueTracker for JsonlTracker {
    async fn all_issues(&self) -> Result<Vec<Issue>, TrackerError> {
        self.0
            .blocking(|s| Ok(s.snapshot()?.issues().to_vec()))
            .await
    }

    async fn ready(&self) -> Result<Vec<Issue>, TrackerError> {
        self.0
            .blocking(|s| {
                Ok(s.snapshot()?
                    .ready(Utc::now())
                    .into_iter()
                    .cloned()
                    .collect())
            })
            .await
    }

    async fn show(&self, id: &IssueId) -> Result<Issue, TrackerError> {
        let id = id.clone();
        self.0
            .blocking(move |s| {
                s.snapshot()?
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| TrackerError::NotFound(id.to_string()))
            })
            .await
    }

    async fn claim(&self, id: &IssueId, actor: &str) -> Result<ClaimOutcome, TrackerError> {
        let (id, actor) = (id.clone(), actor.to_owned());
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    let issue = doc.issue(&id)?;
                    match issue.assignee.as_deref() {
                        Some(holder)
                            if holder == actor && issue.status == IssueStatus::InProgress =>
                        {
                            return Ok(ClaimOutcome::Claimed);
                        }
                        Some(holder) if holder != actor => {
                            return Ok(ClaimOutcome::AlreadyClaimed {
                                by: Some(holder.to_owned()),
                            });
                        }
                        _ => {}
                    }
                    if issue.status.is_terminal() {
                        return Err(rejected(
                            BrCode::ValidationFailed,
                            format!("cannot claim {id}: it is {}", issue.status),
                        ));
                    }
                    let by = blocking_ids(&doc.graph, &id);
                    if !by.is_empty() {
                        return Ok(ClaimOutcome::Blocked { by });
                    }
                    let row = doc.edit(&id)?;
                    set(row, "status", "in_progress");
                    set(row, "assignee", actor);
                    Ok(ClaimOutcome::Claimed)
                })
            })
            .await
    }

    async fn take_over(
        &self,
        id: &IssueId,
        actor: &str,
        from: Option<String>,
    ) -> Result<ClaimOutcome, TrackerError> {
        let (id, actor) = (id.clone(), actor.to_owned());
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    let issue = doc.issue(&id)?;
                    if issue.assignee != from || issue.status != IssueStatus::InProgress {
                        return Ok(ClaimOutcome::AlreadyClaimed {
                            by: issue.assignee.clone(),
                        });
                    }
                    let row = doc.edit(&id)?;
                    set(row, "assignee", actor);
                    Ok(ClaimOutcome::Claimed)
                })
            })
            .await
    }

    async fn close(&self, id: &IssueId, reason: &str) -> Result<(), TrackerError> {
        let (id, reason) = (id.clone(), reason.to_owned());
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    if doc.issue(&id)?.status == IssueStatus::Closed {
                        return Ok(());
                    }
                    let by = blocking_ids(&doc.graph, &id);
                    if !by.is_empty() {
                        let by: Vec<&str> = by.iter().map(IssueId::as_str).collect();
                        return Err(rejected(
                            BrCode::NothingToDo,
                            format!("cannot close {id}: blocked by {}", by.join(", ")),
                        ));
                    }
                    close_row(doc, &id, &reason)
                })
            })
            .await
    }

    async fn mark_needs_followup(&self, id: &IssueId, notes: &str) -> Result<(), TrackerError> {
        let update = IssueUpdate {
            add_labels: vec![NEEDS_FOLLOWUP.to_owned()],
            notes: Some(notes.to_owned()),
            ..IssueUpdate::default()
        };
        self.update(id, update).await
    }

    async fn reopen(&self, id: &IssueId) -> Result<(), TrackerError> {
        let id = id.clone();
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    let row = doc.edit(&id)?;
                    set(row, "status", "open");
                    for key in ["assignee", "closed_at", "close_reason"] {
                        row.shift_remove(key);
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn add_dependency(
        &self,
        issue: &IssueId,
        depends_on: &IssueId,
        kind: DependencyKind,
    ) -> Result<(), TrackerError> {
        let (issue, depends_on) = (issue.clone(), depends_on.clone());
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    if issue == depends_on {
                        return Err(rejected(
                            BrCode::SelfDependency,
                            format!("{issue} cannot depend on itself"),
                        ));
                    }
                    doc.issue(&depends_on)?;
                    let existing = doc.issue(&issue)?;
                    if existing
                        .dependencies
                        .iter()
                        .any(|d| d.depends_on == depends_on && d.kind == kind)
                    {
                        return Ok(());
                    }
                    if creates_cycle(&doc.graph, &issue, &depends_on) {
                        return Err(rejected(
                            BrCode::CycleDetected,
                            format!("{issue} -> {depends_on} would create a dependency cycle"),
                        ));
                    }
                    let now = timestamp(doc.now);
                    let row = doc.edit(&issue)?;
                    let mut deps: Vec<Value> = row
                        .get("dependencies")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    deps.push(json!({
                        "issue_id": issue.as_str(),
                        "depends_on_id": depends_on.as_str(),
                        "type": kind.as_str(),
                        "created_at": now,
                        "created_by": WRITER,
                        "metadata": "{}",
                        "thread_id": "",
                    }));
                    deps.sort_by(|a, b| {
                        let key = |v: &Value| {
                            v.get("depends_on_id")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        };
                        key(a).cmp(&key(b))
                    });
                    set(row, "dependencies", deps);
                    Ok(())
                })
            })
            .await
    }

    async fn create(&self, issue: NewIssue) -> Result<IssueId, TrackerError> {
        self.0
            .blocking(move |s| {
                let repo_dir = s
                    .jsonl
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("."))
                    .to_path_buf();
                s.mutate(|doc| {
                    if let Some(parent) = &issue.parent {
                        doc.issue(parent)?;
                    }
                    let prefix = id_prefix(doc, &repo_dir);
                    let id = new_id(doc, issue.parent.as_ref(), &prefix);
                    let now = timestamp(doc.now);
                    let mut row = Map::new();
                    set(&mut row, "id", id.as_str());
                    set(&mut row, "title", issue.title.as_str());
                    if !issue.description.is_empty() {
                        set(&mut row, "description", issue.description.as_str());
                    }
                    if !issue.acceptance_criteria.is_empty() {
                        set(
                            &mut row,
                            "acceptance_criteria",
                            issue.acceptance_criteria.as_str(),
                        );
                    }
                    set(&mut row, "status", "open");
                    set(
                        &mut row,
                        "priority",
                        issue.priority.map_or(2, mala_core::Priority::level),
                    );
                    set(
                        &mut row,
                        "issue_type",
                        issue.issue_type.as_ref().map_or("task", |t| t.as_str()),
                    );
                    set(&mut row, "created_at", now.as_str());
                    set(&mut row, "created_by", WRITER);
                    set(&mut row, "updated_at", now.as_str());
                    set(&mut row, "compaction_level", 0);
                    set(&mut row, "original_size", 0);
                    let mut labels: Vec<String> =
                        issue.labels.iter().map(|l| normalize_label(l)).collect();
                    labels.sort();
                    labels.dedup();
                    if !labels.is_empty() {
                        set(&mut row, "labels", labels);
                    }
                    if let Some(parent) = &issue.parent {
                        set(
                            &mut row,
                            "dependencies",
                            json!([{
                                "issue_id": id.as_str(),
                                "depends_on_id": parent.as_str(),
                                "type": "parent-child",
                                "created_at": now,
                                "created_by": WRITER,
                                "metadata": "{}",
                                "thread_id": "",
                            }]),
                        );
                    }
                    doc.insert(id.clone(), row);
                    Ok(id)
                })
            })
            .await
    }

    async fn update(&self, id: &IssueId, update: IssueUpdate) -> Result<(), TrackerError> {
        let id = id.clone();
        self.0
            .blocking(move |s| {
                s.mutate(|doc| {
                    let row = doc.edit(&id)?;
                    if let Some(title) = update.title {
                        set(row, "title", title);
                    }
                    if let Some(description) = update.description {
                        set(row, "description", description);
                    }
                    if let Some(priority) = update.priority {
                        set(row, "priority", priority.level());
                    }
                    if let Some(status) = update.status {
                        set(row, "status", status.as_str());
                    }
                    for label in &update.add_labels {
                        add_label(row, &normalize_label(label));
                    }
                    for label in &update.remove_labels {
                        remove_label(row, &normalize_label(label));
                    }
                    if let Some(notes) = update.notes {
                        append_notes(row, &notes);
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn find_by_label(&self, label: &str) -> Result<Vec<Issue>, TrackerError> {
        let label = normalize_label(label);
        self.0
            .blocking(move |s| {
                Ok(s.snapshot()?
                    .issues()
                    .iter()
                    .filter(|i| i.has_label(&label))
                    .cloned()
                    .collect())
            })
            .await
    }

    async fn epic_status(&self) -> Result<Vec<EpicStatus>, TrackerError> {
        self.0.blocking(|s| Ok(s.snapshot()?.epic_status())).await
    }

    async fn close_eligible_epics(&self) -> Result<Vec<IssueId>, TrackerError> {
        self.0
            .blocking(|s| {
                s.mutate(|doc| {
                    let eligible: Vec<IssueId> = doc
                        .graph
                        .epic_status()
                        .into_iter()
                        .filter(|e| e.eligible_for_close)
                        .map(|e| e.epic)
                        .collect();
                    for epic in &eligible {
                        close_row(doc, epic, "All children completed")?;
                    }
                    Ok(eligible)
                })
            })
            .await
    }

    async fn descendants(&self, epic: &IssueId) -> Result<Vec<Issue>, TrackerError> {
        let epic = epic.clone();
        self.0
            .blocking(move |s| {
                let graph = s.snapshot()?;
                if !graph.contains(&epic) {
                    return Err(TrackerError::NotFound(epic.to_string()));
                }
                Ok(graph.descendants(&epic).into_iter().cloned().collect())
            })
            .await
    }

    async fn parent_epic(&self, id: &IssueId) -> Result<Option<IssueId>, TrackerError> {
        let id = id.clone();
        self.0
            .blocking(move |s| {
                let graph = s.snapshot()?;
                if !graph.contains(&id) {
                    return Err(TrackerError::NotFound(id.to_string()));
                }
                Ok(graph.parent_epic(&id).map(|e| e.id.clone()))
            })
            .await
    }

    async fn flush(&self) -> Result<(), TrackerError> {
        // Every change is already on disk.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_ROWS: &str = concat!(
        r#"{"id":"d-a","title":"A","status":"open","priority":1,"issue_type":"task","created_at":"2026-11-24T05:24:06.851654130Z","created_by":"unknown","updated_at":"2026-11-24T05:24:07.264192672Z","source_repo":"d","compaction_level":0,"original_size":0,"labels":["x"]}"#,
        "\n",
        r#"{"id":"d-b","title":"B \u00e9 \"q\"","description":"multi\nline","status":"open","priority":2,"issue_type":"bug","created_at":"2026-11-24T05:24:06Z","updated_at":"2026-11-24T05:24:06Z","compaction_level":0,"future_key":{"z":1,"a":2}}"#,
        "\n",
    );

    fn repo_with(text: &str) -> (tempfile::TempDir, JsonlTracker) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        std::fs::write(dir.path().join(".beads/issues.jsonl"), text).unwrap();
        let tracker = JsonlTracker::open(dir.path()).unwrap();
        (dir, tracker)
    }

    fn file(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join(".beads/issues.jsonl")).unwrap()
    }

    #[test]
    fn an_unchanged_document_renders_byte_for_byte() {
        let doc = Document::parse(TWO_ROWS, "x", Utc::now()).unwrap();
        assert_eq!(doc.render(), TWO_ROWS);
    }

    #[tokio::test]
    async fn an_edit_rewrites_only_its_row_in_br_key_order() {
        let (dir, tracker) = repo_with(TWO_ROWS);
        tracker
            .mark_needs_followup(&"d-b".into(), "gate failed")
            .await
            .unwrap();
        let text = file(&dir);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            TWO_ROWS.lines().next().unwrap(),
            "the other row is untouched"
        );
        let row: Map<String, Value> = serde_json::from_str(lines[1]).unwrap();
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "id",
                "title",
                "description",
                "notes",
                "status",
                "priority",
                "issue_type",
                "created_at",
                "updated_at",
                "compaction_level",
                "labels",
                "future_key"
            ]
        );
        assert_eq!(row["labels"], json!(["needs-followup"]));
        assert!(row["updated_at"].as_str().unwrap() > "2026-11-24T05:24:06Z");
        let issue = tracker.show(&"d-b".into()).await.unwrap();
        assert_eq!(issue.notes, "gate failed");
        assert_eq!(issue.title, "B é \"q\"");
        tracker
            .mark_needs_followup(&"d-b".into(), "second failure")
            .await
            .unwrap();
        let issue = tracker.show(&"d-b".into()).await.unwrap();
        assert_eq!(
            issue.notes, "gate failed\nsecond failure",
            "notes are appended, not replaced"
        );
    }

    #[tokio::test]
    async fn claims_are_exclusive_and_blockers_refuse_them() {
        let (_dir, tracker) = repo_with(TWO_ROWS);
        tracker
            .add_dependency(&"d-a".into(), &"d-b".into(), DependencyKind::Blocks)
            .await
            .unwrap();
        assert_eq!(
            tracker.claim(&"d-a".into(), "mala:r1").await.unwrap(),
            ClaimOutcome::Blocked {
                by: vec!["d-b".into()]
            }
        );
        assert_eq!(
            tracker.claim(&"d-b".into(), "mala:r1").await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            tracker.claim(&"d-b".into(), "mala:r1").await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            tracker.claim(&"d-b".into(), "mala:r2").await.unwrap(),
            ClaimOutcome::AlreadyClaimed {
                by: Some("mala:r1".into())
            }
        );
        assert_eq!(
            tracker
                .take_over(&"d-b".into(), "mala:r3", Some("mala:r9".into()))
                .await
                .unwrap(),
            ClaimOutcome::AlreadyClaimed {
                by: Some("mala:r1".into())
            }
        );
        assert_eq!(
            tracker
                .take_over(&"d-b".into(), "mala:r3", Some("mala:r1".into()))
                .await
                .unwrap(),
            ClaimOutcome::Claimed
        );
        tracker.close(&"d-b".into(), "done").await.unwrap();
        tracker.close(&"d-b".into(), "done").await.unwrap();
        assert_eq!(tracker.ready().await.unwrap()[0].id.as_str(), "d-a");
        let err = tracker
            .add_dependency(&"d-b".into(), &"d-a".into(), DependencyKind::Blocks)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&BrCode::CycleDetected), "{err:?}");
        tracker.reopen(&"d-b".into()).await.unwrap();
        let b = tracker.show(&"d-b".into()).await.unwrap();
        assert_eq!(
            (b.status, b.assignee, b.closed_at),
            (IssueStatus::Open, None, None)
        );
    }

    #[tokio::test]
    async fn created_issues_get_br_shaped_ids_and_sorted_places() {
        let (dir, tracker) = repo_with(TWO_ROWS);
        let epic = tracker
            .create(NewIssue {
                title: "Epic".into(),
                issue_type: Some(mala_core::IssueType::Epic),
                ..NewIssue::default()
            })
            .await
            .unwrap();
        assert!(
            epic.as_str().starts_with("d-") && epic.as_str().len() == 5,
            "{epic}"
        );
        let child = tracker
            .create(NewIssue {
                title: "Child".into(),
                parent: Some(epic.clone()),
                labels: vec!["needs review!".into()],
                ..NewIssue::default()
            })
            .await
            .unwrap();
        assert_eq!(child.as_str(), format!("{epic}.1"));
        let second = tracker
            .create(NewIssue {
                title: "Child 2".into(),
                parent: Some(epic.clone()),
                ..NewIssue::default()
            })
            .await
            .unwrap();
        assert_eq!(second.as_str(), format!("{epic}.2"));
        assert_eq!(
            tracker.parent_epic(&child).await.unwrap(),
            Some(epic.clone())
        );
        assert_eq!(
            tracker.find_by_label("needs review!").await.unwrap()[0].id,
            child
        );
        let ids: Vec<String> = file(&dir)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        tracker.close(&child, "done").await.unwrap();
        assert!(tracker.close_eligible_epics().await.unwrap().is_empty());
        tracker.close(&second, "done").await.unwrap();
        assert_eq!(tracker.close_eligible_epics().await.unwrap(), vec![epic]);
    }

    #[tokio::test]
    async fn a_malformed_line_is_named_and_nothing_is_rewritten() {
        let text = format!("{TWO_ROWS}{{\"id\":\"d-c\"}}\n");
        let (dir, tracker) = repo_with(&text);
        let err = tracker.close(&"d-a".into(), "done").await.unwrap_err();
        assert!(err.to_string().contains("issues.jsonl:3: "), "{err}");
        assert_eq!(file(&dir), text);
    }
}
