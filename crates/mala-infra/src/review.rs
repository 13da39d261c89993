//! The agent reviewer: a Claude Code session with the reviewer prompt that
//! may read but not write (the tool guard refuses every write: it holds no
//! locks), answering JSON findings that are checked before they count.

use std::sync::Arc;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentEvent, AgentId, AgentObserver, Finding, IssueTracker, ReviewError,
    ReviewRequest, ReviewSubject, ReviewVerdict, Reviewer, SessionRequest, TurnStatus,
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
        let (subject, title, description, criteria) = match &request.subject {
            ReviewSubject::Issue(id) => {
                let issue =
                    self.tracker.show(id).await.map_err(|e| {
                        ReviewError::Unavailable(format!("cannot read the issue: {e}"))
                    })?;
                (
                    issue.id.to_string(),
                    issue.title,
                    issue.description,
                    issue.acceptance_criteria,
                )
            }
            ReviewSubject::Range(name) => (
                format!("the {name} review"),
                "the run's recent work, taken together".to_owned(),
                request.description.clone(),
                "(those of the issues the commits name; read them with `br show <id>`)".to_owned(),
            ),
        };
        let prompt = render_prompt(
            PromptKind::Reviewer,
            &[
                ("issue_id", subject),
                ("title", title),
                ("description", description),
                ("acceptance_criteria", criteria),
                ("commits", request.commits.join(", ")),
                ("context", request.context.clone()),
            ],
        )
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let reviewer = AgentId::new(format!("review-{}", request.subject.name()));
        let session_request = SessionRequest::new(reviewer, self.repo_root.clone());
        let mut session = self
            .backend
            .start(session_request, Arc::new(Quiet))
            .await
            .map_err(|e| ReviewError::Unavailable(format!("the reviewer could not start: {e}")))?;
        let outcome = session.turn(&prompt).await;
        let _ = session.close().await;
        let outcome = outcome.map_err(|e| {
            if e.kind == mala_core::AgentErrorKind::Cancelled {
                ReviewError::Cancelled
            } else {
                ReviewError::Failed(e.to_string())
            }
        })?;
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
    fn epic_answers_fail_with_a_reason() {
        let verdict = parse_epic_answer(
            "{\"passed\": true, \"findings\": [{\"priority\": 3, \"title\": \"docs\"}]}",
        )
        .unwrap();
        assert!(verdict.passed);
        let verdict = parse_epic_answer("{\"passed\": false, \"findings\": []}").unwrap();
        assert!(!verdict.passed && verdict.findings[0].priority == 1);
        let verdict = parse_epic_answer(
            "{\"passed\": true, \"findings\": [{\"priority\": 0, \"title\": \"missing\"}]}",
        )
        .unwrap();
        assert!(
            !verdict.passed,
            "a blocking finding fails the epic whatever the flag says"
        );
        assert!(parse_epic_answer("yes it is fine").is_err());
    }

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

/// An epic verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpicVerdict {
    pub passed: bool,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Deserialize)]
struct EpicAnswer {
    passed: bool,
    #[serde(default)]
    findings: Vec<RawFinding>,
}

/// Reads `{"passed": bool, "findings": [...]}`; a failed verdict without a
/// blocking finding gets one, so the failure has a reason to act on.
pub fn parse_epic_answer(text: &str) -> Result<EpicVerdict, ReviewError> {
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        return Err(ReviewError::InvalidAnswer(
            "no JSON object in the answer".to_owned(),
        ));
    };
    let answer: EpicAnswer = serde_json::from_str(&text[start..=end]).map_err(|e| {
        ReviewError::InvalidAnswer(format!("the answer is not the expected JSON: {e}"))
    })?;
    let mut findings = Vec::new();
    for raw in answer.findings {
        if raw.priority > 3 || raw.title.trim().is_empty() {
            return Err(ReviewError::InvalidAnswer(
                "a finding needs a title and a priority 0-3".to_owned(),
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
    if !answer.passed && !findings.iter().any(|f| f.priority <= 1) {
        findings.push(Finding {
            priority: 1,
            title: "The epic's acceptance criteria are not met".to_owned(),
            body: "The verifier failed the epic without naming a blocking finding; look at its acceptance criteria again.".to_owned(),
            file: None,
            line_start: None,
            line_end: None,
        });
    }
    Ok(EpicVerdict {
        passed: answer.passed && !findings.iter().any(|f| f.priority <= 1),
        findings,
    })
}

/// Checks an epic's acceptance criteria against the code with a read-only agent.
pub struct EpicVerifier {
    backend: Arc<dyn AgentBackend>,
    repo_root: std::path::PathBuf,
}

impl std::fmt::Debug for EpicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpicVerifier")
            .field("repo_root", &self.repo_root)
            .finish_non_exhaustive()
    }
}

impl EpicVerifier {
    pub fn new(backend: Arc<dyn AgentBackend>, repo_root: &std::path::Path) -> Self {
        Self {
            backend,
            repo_root: repo_root.to_path_buf(),
        }
    }

    pub async fn verify(
        &self,
        epic: &mala_core::Issue,
        children: &[mala_core::Issue],
    ) -> Result<EpicVerdict, ReviewError> {
        let listed: Vec<String> = children
            .iter()
            .map(|c| format!("- {} {} ({})", c.id, c.title, c.status))
            .collect();
        let prompt = render_prompt(
            PromptKind::EpicVerification,
            &[
                ("epic_id", epic.id.to_string()),
                ("title", epic.title.clone()),
                (
                    "acceptance_criteria",
                    if epic.acceptance_criteria.is_empty() {
                        epic.description.clone()
                    } else {
                        epic.acceptance_criteria.clone()
                    },
                ),
                ("children", listed.join("\n")),
            ],
        )
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let mut last = ReviewError::Failed("not run".to_owned());
        // An unreadable answer is asked for again once.
        for _ in 0..2 {
            let request = SessionRequest::new(
                AgentId::new(format!("verify-{}", epic.id)),
                self.repo_root.clone(),
            );
            let mut session = self
                .backend
                .start(request, Arc::new(Quiet))
                .await
                .map_err(|e| {
                    ReviewError::Unavailable(format!("the verifier could not start: {e}"))
                })?;
            let outcome = session.turn(&prompt).await;
            let _ = session.close().await;
            match outcome {
                Ok(outcome) => match parse_epic_answer(&outcome.final_text) {
                    Ok(verdict) => return Ok(verdict),
                    Err(error) => last = error,
                },
                Err(error) => last = ReviewError::Failed(error.to_string()),
            }
        }
        Err(last)
    }
}
