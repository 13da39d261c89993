//! The baseline: the required checks, run once before the first claim
//! where the agents will run them (the shared working tree), so a red
//! baseline is said before any agent is blamed for it.
//!
//! Not a clean checkout: projects whose checks need files git does not
//! track (installed dependencies, a local `.env`, an empty directory) would
//! read as red there while every agent's checks pass in the tree.

use mala_core::{CheckFailure, Event, IssueId, NewIssue, Priority};
use mala_domain::BaselinePolicy;
use mala_pipeline::required_checks;

use crate::orchestrator::{Orchestrator, RunError};
use crate::setup::RunContext;

/// The label of the issue a red baseline files.
pub(crate) const BASELINE_LABEL: &str = "mala-baseline";

/// What the baseline check found, for the rest of the run.
#[derive(Debug, Default)]
pub(crate) struct Baseline {
    /// The red check to file an issue for (`file_issue`), once the
    /// preflight has passed: a run that cannot work leaves the tracker be.
    pub(crate) to_file: Option<RedCheck>,
    /// The required checks that already fail (`warn`).
    pub(crate) red: Vec<String>,
}

/// A required check that fails on the run's head.
#[derive(Debug)]
pub(crate) struct RedCheck {
    failure: CheckFailure,
    /// The head's short id.
    commit: String,
    /// What the run says about it.
    said: String,
}

/// Checks the baseline as `baseline:` asks; `Err`: the run stops (`stop`).
pub(crate) async fn check_baseline(
    orchestrator: &Orchestrator,
    ctx: &RunContext,
) -> Result<Baseline, RunError> {
    let policy = orchestrator.settings.baseline;
    let commands = required_checks(&ctx.runner_config);
    if policy == BaselinePolicy::Off || commands.is_empty() {
        return Ok(Baseline::default());
    }
    let repo = &orchestrator.repository;
    let head = repo.head().await.ok().flatten().unwrap_or_default();
    // A clean tree is HEAD itself, and HEAD's content apart from the
    // tracker's files is what the checks see: a run that only committed
    // `.beads/` leaves the verdict standing for the next.
    let content = repo.content_id().await.ok().flatten();
    let clean = repo.is_clean().await.unwrap_or(false);
    let key = content.filter(|_| clean);
    if let Some(key) = &key
        && orchestrator.run_store.baseline_passed(key)
    {
        return Ok(Baseline::default());
    }
    let checked = orchestrator
        .commands
        .run(&orchestrator.repo_root, &commands)
        .await;
    let Err(failure) = checked else {
        if let Some(key) = &key {
            orchestrator.run_store.record_baseline_passed(key);
        }
        return Ok(Baseline::default());
    };
    let short = &head[..head.len().min(12)];
    let said = red_message(&failure, short);
    match policy {
        BaselinePolicy::Warn | BaselinePolicy::Off => {
            ctx.events.emit(&Event::Warning {
                message: format!(
                    "{said}; agents will be asked to make it pass (set `baseline: stop` to stop instead)"
                ),
            });
            Ok(Baseline {
                to_file: None,
                red: vec![failure.name.clone()],
            })
        }
        BaselinePolicy::Stop => Err(RunError::RedBaseline { message: said }),
        BaselinePolicy::FileIssue => Ok(Baseline {
            to_file: Some(RedCheck {
                commit: short.to_owned(),
                failure,
                said,
            }),
            red: Vec::new(),
        }),
    }
}

fn red_message(failure: &CheckFailure, commit: &str) -> String {
    let tail: Vec<&str> = failure
        .output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .rev()
        .take(5)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "the required check `{}` ({}) already fails on {commit}, before any agent worked: {}",
        failure.name,
        failure.command,
        if tail.is_empty() {
            "(no output)".to_owned()
        } else {
            tail.join(" | ")
        }
    )
}

/// Files `red` as the issue to work first. One open `[Baseline]` issue at
/// a time: an earlier run's is worked again.
pub(crate) async fn file_issue(
    orchestrator: &Orchestrator,
    ctx: &RunContext,
    red: &RedCheck,
) -> Result<IssueId, RunError> {
    let RedCheck {
        failure,
        commit,
        said,
    } = red;
    let tracker = &orchestrator.tracker;
    let open = tracker
        .find_by_label(BASELINE_LABEL)
        .await?
        .into_iter()
        .find(|issue| !issue.status.is_terminal());
    let id = if let Some(issue) = open {
        issue.id
    } else {
        let new = NewIssue {
            title: format!("[Baseline] {} fails on {commit}", failure.command),
            description: format!(
                "The required check `{}` (`{}`) fails on {commit} before any agent worked, so \
                 no issue can pass the quality gate until it passes again.\n\nIts output ends:\n\n```\n{}\n```",
                failure.name,
                failure.command,
                output_tail(&failure.output)
            ),
            priority: Some(Priority::P0),
            labels: vec![BASELINE_LABEL.to_owned()],
            ..NewIssue::default()
        };
        tracker.create(new).await?
    };
    ctx.events.emit(&Event::Warning {
        message: format!("{said}; {id} is worked first, the other issues wait behind it"),
    });
    Ok(id)
}

fn output_tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
