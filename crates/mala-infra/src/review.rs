//! The agent reviewer: a Claude Code session with the reviewer prompt that
//! may read but not write (the tool guard refuses every write: it holds no
//! locks), answering JSON findings that are checked before they count.

use std::sync::Arc;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentEvent, AgentId, AgentObserver, Finding, IssueTracker, ReviewError,
    ReviewRequest, ReviewVerdict, Reviewer, SessionRequest, TurnStatus,
};
use mala_domain::{PromptKind, render_prompt};
use serde::Deserialize;

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

/// Reviews through an agent backend (normally a `ClaudeBackend` whose guard
/// holds no locks for the reviewer, so it can only read).
pub struct AgentReviewer {
    backend: Arc<dyn AgentBackend>,
    tracker: Arc<dyn IssueTracker>,
    repo_root: std::path::PathBuf,
}

impl std::fmt::Debug for AgentReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentReviewer")
            .field("repo_root", &self.repo_root)
            .finish_non_exhaustive()
    }
}

impl AgentReviewer {
    pub fn new(
        backend: Arc<dyn AgentBackend>,
        tracker: Arc<dyn IssueTracker>,
        repo_root: &std::path::Path,
    ) -> Self {
        Self {
            backend,
            tracker,
            repo_root: repo_root.to_path_buf(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    findings: Vec<RawFinding>,
}

#[derive(Debug, Deserialize)]
struct RawFinding {
    priority: u8,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line_start: Option<u32>,
    #[serde(default)]
    line_end: Option<u32>,
}

/// Reads the reviewer's answer: one JSON object `{"findings": [...]}`, maybe
/// inside a code fence. Priorities are 0–3 and every finding has a title.
pub fn parse_review_answer(text: &str) -> Result<ReviewVerdict, ReviewError> {
    let start = text.find('{');
    let end = text.rfind('}');
    let (Some(start), Some(end)) = (start, end) else {
        return Err(ReviewError::InvalidAnswer(format!(
            "no JSON object in the answer: {}",
            text.chars().take(200).collect::<String>()
        )));
    };
    let answer: Answer = serde_json::from_str(&text[start..=end]).map_err(|e| {
        ReviewError::InvalidAnswer(format!("the answer is not the expected JSON: {e}"))
    })?;
    let mut findings = Vec::new();
    for raw in answer.findings {
        if raw.priority > 3 {
            return Err(ReviewError::InvalidAnswer(format!(
                "priority {} is not 0-3",
                raw.priority
            )));
        }
        if raw.title.trim().is_empty() {
            return Err(ReviewError::InvalidAnswer(
                "a finding has no title".to_owned(),
            ));
        }
        findings.push(Finding {
            priority: raw.priority,
            title: raw.title,
            body: raw.body,
            file: raw.file.filter(|f| !f.is_empty()),
            line_start: raw.line_start,
            line_end: raw.line_end,
        });
    }
    Ok(ReviewVerdict { findings })
}

#[async_trait]
impl Reviewer for AgentReviewer {
    async fn review(&self, request: ReviewRequest) -> Result<ReviewVerdict, ReviewError> {
        let issue = self
            .tracker
            .show(&request.issue)
            .await
            .map_err(|e| ReviewError::Unavailable(format!("cannot read the issue: {e}")))?;
        let prompt = render_prompt(
            PromptKind::Reviewer,
            &[
                ("issue_id", issue.id.to_string()),
                ("title", issue.title.clone()),
                ("description", issue.description.clone()),
                ("acceptance_criteria", issue.acceptance_criteria.clone()),
                ("commits", request.commits.join(", ")),
                ("context", request.context.clone()),
            ],
        )
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let reviewer = AgentId::new(format!("review-{}", request.issue));
        let session_request = SessionRequest::new(reviewer, self.repo_root.clone());
        let mut session = self
            .backend
            .start(session_request, Arc::new(Quiet))
            .await
            .map_err(|e| ReviewError::Unavailable(format!("the reviewer could not start: {e}")))?;
        let outcome = session.turn(&prompt).await;
        let _ = session.close().await;
        let outcome = outcome.map_err(|e| ReviewError::Failed(e.to_string()))?;
        if outcome.status != TurnStatus::Completed {
            return Err(ReviewError::Failed(format!(
                "the reviewer's turn ended as {:?}",
                outcome.status
            )));
        }
        parse_review_answer(&outcome.final_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_before_they_count() {
        let verdict = parse_review_answer(
            "Here is my review:\n```json\n{\"findings\": [{\"priority\": 1, \"title\": \"Off by one\", \"body\": \"loop\", \"file\": \"src/a.rs\", \"line_start\": 3, \"line_end\": 4}]}\n```",
        )
        .unwrap();
        assert_eq!(verdict.findings.len(), 1);
        assert_eq!(verdict.findings[0].file.as_deref(), Some("src/a.rs"));
        assert!(
            parse_review_answer("{\"findings\": []}")
                .unwrap()
                .findings
                .is_empty()
        );
        for bad in [
            "looks good to me",
            "{\"findings\": [{\"priority\": 7, \"title\": \"x\"}]}",
            "{\"findings\": [{\"priority\": 1, \"title\": \"  \"}]}",
            "{\"verdict\": \"pass\"}",
        ] {
            assert!(
                matches!(parse_review_answer(bad), Err(ReviewError::InvalidAnswer(_))),
                "{bad}"
            );
        }
    }
}
