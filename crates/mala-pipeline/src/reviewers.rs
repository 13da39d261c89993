//! The agent reviewer and the epic verifier: agent sessions with the
//! reviewer or verifier prompt that may read but not write (the backend's
//! tool guard holds no locks for them, so it refuses every write),
//! answering JSON that `mala_domain` checks before it counts.

use std::sync::Arc;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentEvent, AgentId, AgentObserver, IssueTracker, ReviewError, ReviewRequest,
    ReviewSubject, ReviewVerdict, Reviewer, SessionRequest, TurnStatus,
};
use mala_domain::{EpicVerdict, PromptKind, parse_epic_answer, parse_review_answer, render_prompt};

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
            .map_err(|e| start_failure(&e, "the reviewer"))?;
        let outcome = session.turn(&prompt).await;
        let _ = session.close().await;
        let outcome = outcome.map_err(|e| turn_failure(&e))?;
        if outcome.status != TurnStatus::Completed {
            return Err(ReviewError::Failed(format!(
                "the reviewer's turn ended as {:?}",
                outcome.status
            )));
        }
        parse_review_answer(&outcome.final_text)
    }
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
        ask_twice(|| self.verify_once(&epic.id, &prompt)).await
    }

    async fn verify_once(
        &self,
        epic: &mala_core::IssueId,
        prompt: &str,
    ) -> Result<EpicVerdict, ReviewError> {
        let request = SessionRequest::new(
            AgentId::new(format!("verify-{epic}")),
            self.repo_root.clone(),
        );
        let mut session = self
            .backend
            .start(request, Arc::new(Quiet))
            .await
            .map_err(|e| start_failure(&e, "the verifier"))?;
        let outcome = session.turn(prompt).await;
        let _ = session.close().await;
        parse_epic_answer(&outcome.map_err(|e| turn_failure(&e))?.final_text)
    }
}

/// A reviewer's session that did not start: the environment's fault when
/// it is to blame, else the reviewer is unavailable.
fn start_failure(error: &mala_core::AgentError, who: &str) -> ReviewError {
    match mala_domain::blame(&error.kind) {
        mala_domain::Blame::Environment(fault) => ReviewError::Environment {
            fault,
            message: format!("{who} could not start: {error}"),
        },
        mala_domain::Blame::Issue => {
            ReviewError::Unavailable(format!("{who} could not start: {error}"))
        }
    }
}

/// A reviewer's turn that did not end with an answer: a stop is not a
/// verdict, and neither is a fault of the environment.
fn turn_failure(error: &mala_core::AgentError) -> ReviewError {
    if error.kind == mala_core::AgentErrorKind::Cancelled {
        return ReviewError::Cancelled;
    }
    match mala_domain::blame(&error.kind) {
        mala_domain::Blame::Environment(fault) => ReviewError::Environment {
            fault,
            message: error.to_string(),
        },
        mala_domain::Blame::Issue => ReviewError::Failed(error.to_string()),
    }
}

/// The one ask-again policy of every review: an unusable answer or a
/// reviewer that failed is asked once more (the reviewer, not the author,
/// gets the second chance); an unavailable reviewer or a stop is not.
pub async fn ask_twice<T, F, Fut>(mut ask: F) -> Result<T, ReviewError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ReviewError>>,
{
    match ask().await {
        Err(error) if error.is_retryable() => ask().await,
        answer => answer,
    }
}

/// Asks `reviewer` for a review under [`ask_twice`].
pub async fn ask_reviewer(
    reviewer: &dyn Reviewer,
    request: &ReviewRequest,
) -> Result<ReviewVerdict, ReviewError> {
    ask_twice(|| reviewer.review(request.clone())).await
}
