//! The quality gate: whether an agent's "done" is true. Pure: the caller
//! gathers the commits and the recorded evidence; this decides.
//!
//! A pass needs a commit for the issue newer than the session's baseline,
//! and, for every command in `evidence_check.required`, a recorded run of
//! that command line (see `matching`) after the last recorded edit, with exit
//! status 0 (unless `allow_fail`). A resolution marker in the agent's final
//! text changes what is needed, as in the original.

mod matching;
mod protected;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
pub use mala_core::CommitInfo;
use mala_core::{CommandRun, Evidence, IssueId};
use serde::Serialize;

use crate::commits::is_issue_commit;
use matching::{Mismatch, runs_command};
pub use protected::{ProtectedChanges, ProtectedFiles, protected_changes};

/// A command the gate requires, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredCommand {
    pub name: String,
    pub command: String,
    pub allow_fail: bool,
}

/// The agent's declared resolution (from its final text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "marker",
    content = "rationale",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum Marker {
    NoChange(String),
    Obsolete(String),
    AlreadyComplete(String),
    DocsOnly(String),
}

/// Finds `ISSUE_<KIND>: <rationale>` in the agent's final text (the last one wins).
pub fn parse_marker(text: &str) -> Option<Marker> {
    text.lines().rev().find_map(|line| {
        let line = line.trim().trim_start_matches(['`', '*', '>', '-', ' ']);
        let (kind, rest) = line.split_once(':')?;
        let rationale = rest.trim().trim_end_matches('`').trim().to_owned();
        match kind.trim() {
            "ISSUE_NO_CHANGE" => Some(Marker::NoChange(rationale)),
            "ISSUE_OBSOLETE" => Some(Marker::Obsolete(rationale)),
            "ISSUE_ALREADY_COMPLETE" => Some(Marker::AlreadyComplete(rationale)),
            "ISSUE_DOCS_ONLY" => Some(Marker::DocsOnly(rationale)),
            _ => None,
        }
    })
}

/// Everything the gate looks at for one attempt.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    pub issue: &'a IssueId,
    pub repo_root: &'a Path,
    /// When the issue's session started (kept across resumes and retries).
    pub baseline: DateTime<Utc>,
    /// Recent commits whose subject starts with `bd-` (newest first).
    pub commits: &'a [CommitInfo],
    /// Everything recorded in the session so far.
    pub evidence: &'a Evidence,
    pub final_text: &'a str,
    pub required: &'a [RequiredCommand],
    pub code_patterns: &'a [String],
    pub config_files: &'a [String],
    pub setup_files: &'a [String],
    /// Files (relative) the agent was seen changing without their lock that
    /// are still changed and still not held by it: the caller checks both.
    pub unlocked: &'a [String],
}

/// How the gate judged one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateVerdict {
    pub passed: bool,
    /// Why it failed, one line each, worded for the agent.
    pub reasons: Vec<String>,
    /// The issue's commit the gate accepted.
    pub commit: Option<String>,
    pub marker: Option<Marker>,
    /// Required commands with no acceptable run on record.
    pub missing: Vec<String>,
}

impl GateVerdict {
    fn pass(commit: Option<String>, marker: Option<Marker>) -> Self {
        Self {
            passed: true,
            reasons: Vec::new(),
            commit,
            marker,
            missing: Vec::new(),
        }
    }

    fn fail(
        reasons: Vec<String>,
        commit: Option<String>,
        marker: Option<Marker>,
        missing: Vec<String>,
    ) -> Self {
        Self {
            passed: false,
            reasons,
            commit,
            marker,
            missing,
        }
    }
}

/// Whether `path` (relative, `/`-separated) matches a glob: `*` within one
/// segment, `**` across segments, `?` one character.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    fn segment(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => segment(&p[1..], s) || (!s.is_empty() && segment(p, &s[1..])),
            (Some(b'?'), Some(_)) => segment(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => segment(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn parts(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
            (Some(pat), Some(seg)) => {
                segment(pat.as_bytes(), seg.as_bytes()) && parts(&p[1..], &s[1..])
            }
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    // A pattern without a slash matches the file name anywhere (`*.rs`, `Cargo.toml`).
    if pattern.len() == 1 {
        return path
            .last()
            .is_some_and(|name| segment(pattern[0].as_bytes(), name.as_bytes()));
    }
    parts(&pattern, &path)
}

fn is_code_or_config(file: &str, input: &GateInput<'_>) -> bool {
    if file == "mala.yaml" || input.code_patterns.is_empty() {
        return true;
    }
    input
        .code_patterns
        .iter()
        .chain(input.config_files)
        .chain(input.setup_files)
        .any(|pattern| glob_matches(pattern, file))
}

/// The newest commit of the issue, and whether it is newer than the baseline.
/// The issue's newest commit. The commits come newest first, as git lists
/// them, so the first match is it: git's times have one-second precision,
/// and two commits made in the same second must not be told apart by time.
fn issue_commit<'c>(input: &GateInput<'c>) -> Option<&'c CommitInfo> {
    input
        .commits
        .iter()
        .find(|c| is_issue_commit(&c.subject, input.issue))
}

fn describe(mismatch: &Mismatch) -> &'static str {
    match mismatch {
        Mismatch::Unreadable => "a form mala cannot check",
        Mismatch::Elsewhere(_) => "another directory",
        Mismatch::HiddenStatus => "a form that hides its exit status",
        Mismatch::AfterOthers => {
            "a line where other commands ran before it (they could change what it runs)"
        }
        Mismatch::Different => "a different command line",
    }
}

/// The agent's last change to a file, and how the gate names it.
struct LastEdit {
    at: DateTime<Utc>,
    what: String,
}

/// When the agent last changed a file: a recorded edit (structured, or seen
/// in the working tree), or a shell command that writes inside the
/// repository (other than a run of a required command, whose own output
/// files do not count).
fn last_edit(input: &GateInput<'_>) -> Option<LastEdit> {
    let edits = input.evidence.edits.iter().map(|e| LastEdit {
        at: e.at,
        what: format!("{} of {}", e.tool, shown_path(&e.path, input.repo_root)),
    });
    let shell = input.evidence.commands.iter().filter_map(|run| {
        if input.required.iter().any(|r| {
            runs_command(&run.command, &r.command, input.repo_root, input.repo_root).is_ok()
        }) {
            return None;
        }
        let writes = crate::shell_writes(&run.command, input.repo_root);
        let first = writes.first()?;
        Some(LastEdit {
            at: run.ended_at,
            what: format!(
                "`{}`, which writes {}",
                run.command.lines().next().unwrap_or_default(),
                shown_path(&first.to_string_lossy(), input.repo_root)
            ),
        })
    });
    edits.chain(shell).max_by_key(|e| e.at)
}

/// A path as the agent knows it: relative to the repository when inside it.
fn shown_path(path: &str, repo_root: &Path) -> String {
    Path::new(path)
        .strip_prefix(repo_root)
        .map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

/// Checks the required commands; returns the reasons and the names missing.
fn check_evidence(input: &GateInput<'_>) -> (Vec<String>, Vec<String>) {
    let since = last_edit(input);
    let mut reasons = Vec::new();
    let mut missing = Vec::new();
    for required in input.required {
        let runs: Vec<(&CommandRun, Result<(), Mismatch>)> = input
            .evidence
            .commands
            .iter()
            .map(|run| {
                (
                    run,
                    runs_command(
                        &run.command,
                        &required.command,
                        input.repo_root,
                        input.repo_root,
                    ),
                )
            })
            .collect();
        let valid: Vec<&CommandRun> = runs
            .iter()
            .filter(|(_, m)| m.is_ok())
            .map(|(r, _)| *r)
            .collect();
        let Some(last) = valid.iter().max_by_key(|r| r.ended_at) else {
            let near = runs.iter().find_map(|(run, m)| match m {
                Err(
                    mismatch @ (Mismatch::Elsewhere(_)
                    | Mismatch::HiddenStatus
                    | Mismatch::AfterOthers),
                ) => Some((run, mismatch)),
                _ => None,
            });
            reasons.push(match near {
                Some((run, mismatch)) => format!(
                    "`{}` ({}) ran only in {}: `{}`; run it as configured",
                    required.name,
                    required.command,
                    describe(mismatch),
                    run.command.lines().next().unwrap_or_default(),
                ),
                None => format!("`{}` ({}) was never run", required.name, required.command),
            });
            missing.push(required.name.clone());
            continue;
        };
        let started = last.started_at.unwrap_or(last.ended_at);
        if let Some(edit) = since.as_ref().filter(|edit| edit.at > started) {
            reasons.push(format!(
                "`{}` last ran before your last edit ({}); run `{}` again",
                required.name, edit.what, required.command
            ));
            missing.push(required.name.clone());
            continue;
        }
        if (last.failed || last.exit_code != Some(0)) && !required.allow_fail {
            reasons.push(format!(
                "`{}` failed (exit {}){}",
                required.name,
                last.exit_code
                    .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                last.error.as_deref().map_or_else(String::new, |e| {
                    format!(": {}", e.lines().take(3).collect::<Vec<_>>().join(" / "))
                })
            ));
            missing.push(required.name.clone());
        }
    }
    (reasons, missing)
}

/// Whether a shell command, run at the repository root, is a run of the
/// configured validation command (its own output files are then not edits).
pub fn is_validation_run(recorded: &str, configured: &str, repo_root: &Path) -> bool {
    runs_command(recorded, configured, repo_root, repo_root).is_ok()
}

/// Judges one attempt.
pub fn check_gate(input: &GateInput<'_>) -> GateVerdict {
    let mut verdict = judge_resolution(input);
    if !input.unlocked.is_empty() {
        verdict.passed = false;
        verdict.reasons.push(format!(
            "you changed {} without holding the lock (mala saw it in the working tree); another agent may be \
             editing it. Call lock_acquire with the path, then restore it or commit the change as yours",
            input.unlocked.join(", ")
        ));
    }
    verdict
}

fn judge_resolution(input: &GateInput<'_>) -> GateVerdict {
    let marker = parse_marker(input.final_text);
    match &marker {
        Some(Marker::NoChange(why) | Marker::Obsolete(why)) => {
            judge_no_work(input, why, marker.clone())
        }
        Some(Marker::AlreadyComplete(why)) => judge_already_complete(input, why, marker.clone()),
        Some(Marker::DocsOnly(why)) => judge_docs_only(input, why, marker.clone()),
        None => judge_work(input),
    }
}

fn no_rationale(marker: Option<Marker>) -> GateVerdict {
    GateVerdict::fail(
        vec!["a resolution marker needs a rationale after the colon".into()],
        None,
        marker,
        vec![],
    )
}

/// `ISSUE_NO_CHANGE` / `ISSUE_OBSOLETE`: nothing to commit, nothing to run.
fn judge_no_work(input: &GateInput<'_>, why: &str, marker: Option<Marker>) -> GateVerdict {
    if why.is_empty() {
        return no_rationale(marker);
    }
    let fresh = issue_commit(input).is_some_and(|c| c.time >= input.baseline);
    if !input.evidence.edits.is_empty() && !fresh {
        return GateVerdict::fail(
            vec!["you changed files but declared that no change is needed; commit the change or undo it".into()],
            None,
            marker,
            vec![],
        );
    }
    GateVerdict::pass(None, marker)
}

/// `ISSUE_ALREADY_COMPLETE`: an older commit of the issue counts, and so does
/// the commit of another issue named in the rationale (a duplicate).
fn judge_already_complete(input: &GateInput<'_>, why: &str, marker: Option<Marker>) -> GateVerdict {
    if why.is_empty() {
        return no_rationale(marker);
    }
    let named = input.commits.iter().find(|c| {
        c.subject
            .split(':')
            .next()
            .and_then(|head| head.trim().strip_prefix("bd-"))
            .is_some_and(|id| names_id(why, id))
    });
    match issue_commit(input).or(named) {
        Some(c) => GateVerdict::pass(Some(c.id.clone()), marker),
        None => GateVerdict::fail(
            vec![format!(
                "ISSUE_ALREADY_COMPLETE needs an existing commit starting with `{}` (or the issue it duplicates named in the rationale)",
                input.issue.commit_prefix()
            )],
            None,
            marker,
            vec![],
        ),
    }
}

/// Whether `text` names the issue `id` as a whole token (`m-9` or `bd-m-9`):
/// `m-1` is not named by `m-10`, nor `a` by "already".
fn names_id(text: &str, id: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .map(|token| token.trim_end_matches('.'))
        .any(|token| token == id || token.strip_prefix("bd-") == Some(id))
}

/// `ISSUE_DOCS_ONLY`: a fresh commit that touches no code or configuration.
fn judge_docs_only(input: &GateInput<'_>, why: &str, marker: Option<Marker>) -> GateVerdict {
    if why.is_empty() {
        return no_rationale(marker);
    }
    let Some(c) = issue_commit(input).filter(|c| c.time >= input.baseline) else {
        return GateVerdict::fail(
            vec![format!(
                "no commit starting with `{}` since this session started",
                input.issue.commit_prefix()
            )],
            None,
            marker,
            vec![],
        );
    };
    let code: Vec<&str> = c
        .files
        .iter()
        .filter(|f| is_code_or_config(f, input))
        .map(String::as_str)
        .collect();
    if code.is_empty() {
        return GateVerdict::pass(Some(c.id.clone()), marker);
    }
    GateVerdict::fail(
        vec![format!(
            "ISSUE_DOCS_ONLY, but the commit changes code or configuration: {}; run the validation commands instead",
            code.join(", ")
        )],
        Some(c.id.clone()),
        marker,
        vec![],
    )
}

/// No marker: a fresh commit and every required command on record.
fn judge_work(input: &GateInput<'_>) -> GateVerdict {
    let prefix = input.issue.commit_prefix();
    let mut reasons = Vec::new();
    let accepted = match issue_commit(input) {
        Some(c) if c.time >= input.baseline => Some(c.id.clone()),
        Some(c) => {
            reasons.push(format!(
                "the newest commit starting with `{prefix}` ({}) is older than this session; commit your work",
                &c.id[..c.id.len().min(10)]
            ));
            None
        }
        None => {
            reasons.push(format!(
                "no commit starting with `{prefix}`; commit your work with that prefix"
            ));
            None
        }
    };
    let (evidence_reasons, missing) = check_evidence(input);
    reasons.extend(evidence_reasons);
    if reasons.is_empty() {
        GateVerdict::pass(accepted, None)
    } else {
        GateVerdict::fail(reasons, accepted, None, missing)
    }
}

/// What one attempt left behind, to tell progress from none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptState {
    pub head: Option<String>,
    pub clean_tree: bool,
    pub evidence_runs: usize,
}

/// No progress: the same commit, a clean tree and no new evidence since the
/// last attempt. Retrying then only burns money.
pub fn no_progress(previous: &AttemptState, now: &AttemptState) -> bool {
    previous.head == now.head && now.clean_tree && now.evidence_runs == previous.evidence_runs
}

/// Required commands from the settings, in the configured order.
pub fn required_commands(
    required: &[String],
    commands: &BTreeMap<String, crate::CommandSpec>,
) -> Vec<RequiredCommand> {
    required
        .iter()
        .filter_map(|name| {
            commands.get(name).map(|spec| RequiredCommand {
                name: name.clone(),
                command: spec.command.clone(),
                allow_fail: spec.allow_fail,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
