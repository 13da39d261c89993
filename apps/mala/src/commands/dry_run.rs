//! `mala run --dry-run`: the queue exactly as a run would take it, without
//! claiming anything.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use mala_core::{IssueId, TrackerError};
use mala_domain::{
    Blocker, Exclusion, IssueGraph, QueuePlan, QueueRequest, Settings, plan_queue,
    takeover_candidates,
};
use mala_infra::{SystemClock, Tracker, is_run_alive};
use serde::Serialize;

use crate::cli::RunArgs;
use crate::failure::Failure;
use crate::output;
use crate::settings::find_program;

/// What `--dry-run --json` prints.
#[derive(Debug, Serialize)]
struct DryRun<'a> {
    tracker: &'static str,
    scope: String,
    order: mala_domain::Order,
    #[serde(flatten)]
    plan: &'a QueuePlan,
}

pub(crate) fn run(args: &RunArgs, settings: &Settings) -> Result<(), Failure> {
    let runtime = crate::runtime::runtime(false)?;
    let (tracker, graph) = runtime.block_on(async {
        let tracker = Tracker::open(
            settings.tracker,
            &args.repo_path,
            find_program("br"),
            Arc::new(SystemClock),
        )?;
        let graph = tracker.snapshot().await?;
        Ok::<_, TrackerError>((tracker, graph))
    })?;

    let lock_dir = settings.paths.lock_dir.clone();
    let takeover = takeover_candidates(graph.issues(), args.resume, |run| {
        is_run_alive(&lock_dir, run)
    });
    let plan = plan_queue(
        &graph,
        &QueueRequest {
            scope: &args.scope,
            order: args.order,
            issue_types: &settings.issue_types,
            skip: &HashSet::new(),
            takeover: &takeover,
            limit: args.max_issues.map(|n| n as usize),
            now: chrono::Utc::now(),
        },
    )
    .map_err(|unknown| Failure::Other {
        message: format!("--scope {}: {unknown}", args.scope),
        hint: Some("`br list --all` shows the ids this tracker has".to_owned()),
    })?;

    if args.json {
        let report = DryRun {
            tracker: tracker.name(),
            scope: args.scope.to_string(),
            order: args.order,
            plan: &plan,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::Other {
            message: format!("could not render the queue as JSON: {e}"),
            hint: None,
        })?;
        output::stdout(&format!("{text}\n"));
    } else {
        output::stdout(&render(
            &graph,
            &plan,
            tracker.name(),
            args,
            &args.repo_path,
        ));
    }
    // The process ends now: freeing a 10,000-issue graph and its queue one
    // allocation at a time would cost more than printing them did.
    std::mem::forget(plan);
    std::mem::forget(graph);
    Ok(())
}

fn render(
    graph: &IssueGraph,
    plan: &QueuePlan,
    tracker: &str,
    args: &RunArgs,
    repo: &Path,
) -> String {
    let mut out = String::new();
    let count = plan.entries.len();
    let _ = writeln!(
        out,
        "Dry run in {}: {count} issue{} would be processed (tracker {tracker}, scope {}, order {})",
        repo.display(),
        if count == 1 { "" } else { "s" },
        args.scope,
        serde_json::to_value(args.order)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    let grouped = matches!(
        args.order,
        mala_domain::Order::EpicPriority | mala_domain::Order::Focus
    );
    let mut current: Option<Option<&IssueId>> = None;
    for (n, entry) in plan.entries.iter().enumerate() {
        if grouped && current != Some(entry.epic.as_ref()) {
            current = Some(entry.epic.as_ref());
            match entry.epic.as_ref().and_then(|id| graph.get(id)) {
                Some(epic) => {
                    let _ = writeln!(out, "  epic {} [{}] {}", epic.id, epic.priority, epic.title);
                }
                None => {
                    let _ = writeln!(out, "  (no epic)");
                }
            }
        }
        let indent = if grouped { "    " } else { "  " };
        let _ = writeln!(
            out,
            "{indent}{:>3}. {} [{}] {}{}  {}",
            n + 1,
            entry.id,
            entry.priority,
            entry.issue_type,
            if entry.takeover {
                " (taking over a dead run's claim)"
            } else {
                ""
            },
            entry.title
        );
    }
    if plan.excluded.is_empty() {
        return out;
    }
    if !args.verbose {
        let _ = writeln!(
            out,
            "{} issue{} in scope left out (--verbose says why)",
            plan.excluded.len(),
            if plan.excluded.len() == 1 { "" } else { "s" }
        );
        return out;
    }
    let _ = writeln!(out, "Left out:");
    for excluded in &plan.excluded {
        let _ = writeln!(
            out,
            "  {}  {}  ({})",
            excluded.id,
            excluded.title,
            reason(&excluded.why)
        );
    }
    out
}

fn reason(why: &Exclusion) -> String {
    match why {
        Exclusion::Epic => "an epic: verified when its children close".to_owned(),
        Exclusion::Type { issue_type } => {
            format!("type {issue_type} is not in issue_types (mala.yaml)")
        }
        Exclusion::Claimed { by: Some(by) } => format!("in progress, held by {by}"),
        Exclusion::Claimed { by: None } => "in progress, unassigned (--resume takes it)".to_owned(),
        Exclusion::Status { status } => format!("status {status}"),
        Exclusion::Held => "pinned or a template".to_owned(),
        Exclusion::Deferred => "deferred until later".to_owned(),
        Exclusion::Blocked { by } => {
            let names: Vec<String> = by
                .iter()
                .map(|b| match b {
                    Blocker::Issue(id) => id.to_string(),
                    Blocker::Ancestor(id) => format!("{id} (a blocked parent)"),
                    Blocker::OpenChild(id) => format!("{id} (an open child)"),
                })
                .collect();
            format!("blocked by {}", names.join(", "))
        }
        Exclusion::EpicDeferred { epic } => format!("its epic {epic} is deferred"),
        Exclusion::Skipped => "already handled in this run".to_owned(),
        Exclusion::OutOfFocus => "outside the focused epic (--order focus)".to_owned(),
        Exclusion::Limit => "beyond --max-issues".to_owned(),
    }
}
