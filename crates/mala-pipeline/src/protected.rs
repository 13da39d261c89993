//! Checks that cannot be weakened to get green (`mala_domain::protected_changes`
//! says which files are protected). When the issue's commits change a
//! protected file, mala runs the required commands again on the agent's last
//! commit with those files as they were before its first commit; a failure
//! there fails the gate with the files named. A protected file that is also a
//! dependency manifest cannot be put back; the issue is labelled for a person
//! and closes only after a passing review (without a reviewer it fails).

use mala_core::{CheckCommand, CommitInfo, IssueId, IssueUpdate};
use mala_domain::{ProtectedFiles, command_paths, is_issue_commit, protected_changes};

use crate::runner::{RunnerConfig, RunnerPorts};

/// The label on an issue whose commits changed checks mala could not re-run.
pub const CHECKS_CHANGED: &str = "checks-changed";

/// The required commands, as mala runs them itself (those allowed to fail
/// prove nothing either way).
pub fn required_checks(config: &RunnerConfig) -> Vec<CheckCommand> {
    config
        .required
        .iter()
        .filter(|r| !r.allow_fail)
        .map(|r| CheckCommand {
            name: r.name.clone(),
            command: r.command.clone(),
            timeout: None,
        })
        .collect()
}

/// `Ok(Some(reason))` fails the gate: the agent's code fails the checks as
/// they were. `Err` ends the issue: the re-run could not be made, or the
/// checks changed in a way only a review could pass and there is none.
pub(crate) async fn check_protected(
    ports: &RunnerPorts,
    config: &RunnerConfig,
    issue: &IssueId,
    session_commits: &[&CommitInfo],
) -> Result<Option<String>, String> {
    let (Some(newest), Some(oldest)) = (session_commits.first(), session_commits.last()) else {
        return Ok(None);
    };
    let changed: Vec<String> = session_commits
        .iter()
        .flat_map(|c| c.files.iter().cloned())
        .collect();
    let globs: Vec<String> = config
        .config_files
        .iter()
        .chain(&config.protected_files)
        .cloned()
        .collect();
    let named: Vec<String> = config
        .required
        .iter()
        .flat_map(|r| command_paths(&r.command))
        .collect();
    let protected = protected_changes(
        &changed,
        ProtectedFiles {
            globs: &globs,
            named: &named,
            setup_files: &config.setup_files,
        },
    );
    if !protected.unverifiable.is_empty() {
        label_for_a_person(ports, issue).await;
        if ports.reviewer.is_none() {
            // Not the agent's to fix: the issue ends here, for a person.
            return Err(format!(
                "the commits change dependency manifests the checks read ({}); mala cannot re-run the \
                 checks without them, so only a passing review could close the issue, and this run has \
                 no reviewer (per_issue_review). Labelled {CHECKS_CHANGED} for a person",
                protected.unverifiable.join(", ")
            ));
        }
    }
    let commands = required_checks(config);
    if protected.restorable.is_empty() || commands.is_empty() {
        return Ok(None);
    }
    let baseline = format!("{}^", oldest.id);
    let failure = ports
        .repo
        .check_commit_against(&newest.id, &baseline, &protected.restorable, &commands)
        .await
        .map_err(|e| {
            format!(
                "your commits change the checks ({}), and mala could not re-run them as they were: {e}",
                protected.restorable.join(", ")
            )
        })?;
    Ok(failure.map(|f| {
        let last = last_line(&f.output);
        format!(
            "your commits change what the checks run or read ({}); with those files as they were before \
             your first commit, `{}` ({}) fails on your code: {last}. Make the code pass the checks \
             as they are; change a check only when the issue asks for it",
            protected.restorable.join(", "),
            f.name,
            f.command
        )
    }))
}

/// The last line of a check's output that says something.
pub(crate) fn last_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}

/// The issue's commits of this session, newest first.
pub(crate) fn session_commits<'c>(
    commits: &'c [CommitInfo],
    issue: &IssueId,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<&'c CommitInfo> {
    commits
        .iter()
        .filter(|c| is_issue_commit(&c.subject, issue) && c.time >= since)
        .collect()
}

async fn label_for_a_person(ports: &RunnerPorts, issue: &IssueId) {
    let update = IssueUpdate {
        add_labels: vec![CHECKS_CHANGED.to_owned()],
        ..IssueUpdate::default()
    };
    // A label that cannot be set is not worth failing a passing issue for.
    let _ = ports.tracker.update(issue, update).await;
}
