//! Findings become issues, two ways, as in the original (the behaviour of
//! record):
//! - a review's non-blocking findings (P2/P3) go into one `[Review]`
//!   tracking issue per source issue, later ones appended, never twice;
//! - an epic verifier's findings each become an issue of their own, so
//!   remediation runs through the queue: `[Remediation]` (blocking, under
//!   the epic, chained one after another) or `[Advisory]`, never twice.
//!
//! Both read a finding the same way (`mala_domain::finding_detail`).

use mala_core::{
    DependencyKind, Finding, Issue, IssueId, IssueTracker, IssueUpdate, NewIssue, Priority,
    TrackerError,
};
use mala_domain::{finding_detail, normalize_label};

/// The marker a finding leaves in the tracking issue, to recognise it later.
fn fingerprint(finding: &Finding) -> String {
    format!(
        "<!-- mala-finding: {}:{}:{}:{} -->",
        finding.file.as_deref().unwrap_or("-"),
        finding
            .line_start
            .map_or_else(|| "-".to_owned(), |l| l.to_string()),
        finding
            .line_end
            .map_or_else(|| "-".to_owned(), |l| l.to_string()),
        finding.title.replace("-->", "- ->")
    )
}

fn section(finding: &Finding) -> String {
    format!(
        "{}\n### [P{}] {}\n{}\n",
        fingerprint(finding),
        finding.priority,
        finding.title,
        finding_detail(finding)
    )
}

/// The label every tracking issue carries.
const TRACKING_LABEL: &str = "review_finding";

/// Creates or extends the tracking issue of `source` with `findings`.
/// Returns the tracking issue's id; `None` when `source` is itself a
/// tracking issue, whose advisories are not tracked again (a reviewer that
/// always finds something would otherwise grow an endless chain).
pub async fn track_advisory_findings(
    tracker: &dyn IssueTracker,
    source: &Issue,
    findings: &[Finding],
) -> Result<Option<mala_core::IssueId>, TrackerError> {
    if source.has_label(TRACKING_LABEL) {
        return Ok(None);
    }
    let label = format!("source:{}", source.id);
    let existing = tracker.find_by_label(&label).await?.into_iter().next();
    let known = existing
        .as_ref()
        .map(|i| i.description.clone())
        .unwrap_or_default();
    let fresh: Vec<&Finding> = findings
        .iter()
        .filter(|f| !known.contains(&fingerprint(f)))
        .collect();
    if fresh.is_empty() {
        return Ok(existing.map(|i| i.id));
    }
    let best = findings
        .iter()
        .map(|f| f.priority)
        .min()
        .unwrap_or(3)
        .clamp(2, 3);
    let added: String = fresh
        .iter()
        .map(|f| section(f))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(issue) = existing {
        let description = format!("{}\n{added}", issue.description.trim_end());
        let count = description.matches("<!-- mala-finding:").count();
        tracker
            .update(
                &issue.id,
                IssueUpdate {
                    title: Some(format!(
                        "[Review] {count} non-blocking finding(s) from {}",
                        source.id
                    )),
                    description: Some(description),
                    priority: Some(
                        issue
                            .priority
                            .min(Priority::new(best).unwrap_or(Priority::P3)),
                    ),
                    ..IssueUpdate::default()
                },
            )
            .await?;
        return Ok(Some(issue.id));
    }
    {
        let description = format!(
            "Non-blocking findings from the review of {} ({}). None of them kept it from closing.\n\n{added}",
            source.id, source.title
        );
        let id = tracker
            .create(NewIssue {
                title: format!(
                    "[Review] {} non-blocking finding(s) from {}",
                    fresh.len(),
                    source.id
                ),
                description,
                priority: Priority::new(best),
                labels: vec!["auto_generated".into(), TRACKING_LABEL.into(), label],
                parent: source.parent.clone(),
                ..NewIssue::default()
            })
            .await?;
        Ok(Some(id))
    }
}

/// Files an epic verifier's findings for `epic`, each as an issue of its
/// own; returns the new ones. A finding already filed for the epic (by its
/// label) is not filed again.
pub async fn file_epic_findings(
    tracker: &dyn IssueTracker,
    epic: &IssueId,
    findings: &[Finding],
) -> Result<Vec<IssueId>, TrackerError> {
    let mut created = Vec::new();
    let mut previous: Option<IssueId> = None;
    for finding in findings {
        let blocking = finding.blocks();
        let dedup = normalize_label(&format!("er:{epic}:{}", finding.title));
        if !tracker.find_by_label(&dedup).await?.is_empty() {
            continue;
        }
        let id = tracker
            .create(NewIssue {
                title: format!(
                    "[{}] {}",
                    if blocking { "Remediation" } else { "Advisory" },
                    finding.title.chars().take(80).collect::<String>()
                ),
                description: format!(
                    "Found while verifying epic {epic}.\n\n{}",
                    finding_detail(finding)
                ),
                priority: Priority::new(finding.priority),
                labels: vec![dedup, "auto_generated".into()],
                // Remediation belongs to the epic, so the epic waits for it.
                parent: blocking.then(|| epic.clone()),
                ..NewIssue::default()
            })
            .await?;
        if blocking {
            // One after another, so they do not collide in the same code.
            if let Some(before) = &previous {
                tracker
                    .add_dependency(&id, before, DependencyKind::Blocks)
                    .await?;
            }
            previous = Some(id.clone());
        }
        created.push(id);
    }
    Ok(created)
}
