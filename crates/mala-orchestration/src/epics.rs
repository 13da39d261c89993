//! Epics close when their children are done and their acceptance criteria
//! hold. With epic verification on, a read-only agent checks the criteria:
//! a pass closes the epic; blocking findings become `[Remediation]` issues
//! under the epic (so it cannot close before they do), chained one after
//! another; advisory ones become `[Advisory]` issues. Without it, an epic
//! closes once all its children are closed.

use std::collections::{HashMap, HashSet};

use mala_core::{Event, EventSink, Finding, IssueId, IssueTracker, ReviewError, TrackerError};
use mala_domain::{IssueGraph, Scope};
use mala_pipeline::{EpicVerifier, file_epic_findings};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Epics closed this sweep (verified, or with verification off).
    pub closed: Vec<IssueId>,
    /// Epics whose verification found unmet criteria this sweep.
    pub failed: Vec<IssueId>,
    /// Issues created from blocking or advisory findings.
    pub created: Vec<IssueId>,
    /// A fault of the environment that kept the verifier from working: the
    /// sweep ends there (every other epic would meet it too), and the epic
    /// is tried again by a later sweep.
    pub fault: Option<(IssueId, mala_core::EnvFault, String)>,
}

/// Per-run memory of the sweeps: rounds per epic, epics given up on.
#[derive(Debug, Default)]
pub struct EpicBook {
    rounds: HashMap<IssueId, u32>,
    given_up: HashSet<IssueId>,
}

fn in_scope(graph: &IssueGraph, epic: &IssueId, scope: &Scope) -> bool {
    match scope {
        Scope::All => true,
        Scope::Epic(root) => root == epic || graph.descendants(root).iter().any(|i| &i.id == epic),
        Scope::Ids(ids) => ids.contains(epic),
        Scope::Orphans => false,
    }
}

/// How `mala epic-verify` went for one epic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpicCheck {
    /// Verified (and closed when asked to).
    Passed {
        /// Whether the epic was closed.
        closed: bool,
        /// Advisory (P2/P3) findings filed as `[Advisory]` issues.
        advisories: usize,
    },
    /// Not verified; remediation issues were filed (when closing was asked for).
    Failed {
        /// What the verifier found.
        findings: Vec<Finding>,
        /// The issues filed for them.
        filed: Vec<IssueId>,
    },
    /// Closed on a person's word, unverified (`--human-override`).
    Overridden,
    /// Children are still open (use `--force` to verify anyway).
    NotEligible {
        /// How many.
        open_children: usize,
    },
}

/// Why an epic could not be verified on request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EpicError {
    /// The tracker has no issue with this id.
    #[error("no issue {0} in the tracker")]
    NoSuchIssue(IssueId),
    /// The issue is not an epic.
    #[error("{id} is a {kind}, not an epic")]
    NotAnEpic {
        /// The issue asked for.
        id: IssueId,
        /// Its type.
        kind: mala_core::IssueType,
    },
    /// Reading the epic, filing findings or closing it failed.
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// The verifier could not give a verdict.
    #[error(transparent)]
    Verifier(#[from] ReviewError),
}

/// Verifies one epic on request.
pub async fn verify_epic(
    tracker: &dyn IssueTracker,
    verifier: &EpicVerifier,
    epic_id: &IssueId,
    close: bool,
    force: bool,
) -> Result<EpicCheck, EpicError> {
    let graph = IssueGraph::new(tracker.all_issues().await?);
    let epic = graph
        .get(epic_id)
        .ok_or_else(|| EpicError::NoSuchIssue(epic_id.clone()))?;
    if epic.issue_type != mala_core::IssueType::Epic {
        return Err(EpicError::NotAnEpic {
            id: epic_id.clone(),
            kind: epic.issue_type.clone(),
        });
    }
    let children: Vec<_> = graph.descendants(epic_id).into_iter().cloned().collect();
    let open = children.iter().filter(|c| !c.status.is_terminal()).count();
    if open > 0 && !force {
        return Ok(EpicCheck::NotEligible {
            open_children: open,
        });
    }
    let verdict = verifier.verify(epic, &children).await?;
    if verdict.passed {
        let advisories: Vec<Finding> = verdict
            .findings
            .iter()
            .filter(|f| !f.blocks())
            .cloned()
            .collect();
        if close {
            file_epic_findings(tracker, epic_id, &advisories).await?;
            tracker
                .close(epic_id, "mala: verified against its acceptance criteria")
                .await?;
        }
        return Ok(EpicCheck::Passed {
            closed: close,
            advisories: advisories.len(),
        });
    }
    let filed = if close {
        file_epic_findings(tracker, epic_id, &verdict.findings).await?
    } else {
        Vec::new()
    };
    Ok(EpicCheck::Failed {
        findings: verdict.findings,
        filed,
    })
}

/// Closes or verifies every eligible epic in scope.
pub async fn sweep_epics(
    tracker: &dyn IssueTracker,
    verifier: Option<&EpicVerifier>,
    scope: &Scope,
    book: &mut EpicBook,
    max_rounds: u32,
    events: &dyn EventSink,
) -> Result<Sweep, mala_core::TrackerError> {
    let graph = IssueGraph::new(tracker.all_issues().await?);
    let mut sweep = Sweep::default();
    for status in graph.epic_status() {
        let epic_id = status.epic.clone();
        if !status.eligible_for_close
            || book.given_up.contains(&epic_id)
            || !in_scope(&graph, &epic_id, scope)
        {
            continue;
        }
        let Some(epic) = graph.get(&epic_id) else {
            continue;
        };
        let Some(verifier) = verifier else {
            tracker.close(&epic_id, "mala: all children closed").await?;
            events.emit(&Event::IssueClosed {
                issue: epic_id.clone(),
            });
            sweep.closed.push(epic_id);
            continue;
        };
        let children: Vec<_> = graph.descendants(&epic_id).into_iter().cloned().collect();
        let verdict = match verifier.verify(epic, &children).await {
            Ok(verdict) => verdict,
            Err(ReviewError::Environment { fault, message }) => {
                events.emit(&Event::Warning {
                    message: format!(
                        "epic {epic_id}: verification could not run: {} ({message}); it stays open",
                        fault.summary()
                    ),
                });
                sweep.fault = Some((epic_id, fault, message));
                break;
            }
            Err(error) => {
                events.emit(&Event::Warning {
                    message: format!("epic {epic_id}: verification could not run: {error}"),
                });
                book.given_up.insert(epic_id);
                continue;
            }
        };
        let round = book.rounds.entry(epic_id.clone()).or_default();
        *round += 1;
        if verdict.passed {
            let advisories: Vec<Finding> = verdict
                .findings
                .iter()
                .filter(|f| !f.blocks())
                .cloned()
                .collect();
            sweep
                .created
                .extend(file_epic_findings(tracker, &epic_id, &advisories).await?);
            tracker
                .close(&epic_id, "mala: verified against its acceptance criteria")
                .await?;
            events.emit(&Event::IssueClosed {
                issue: epic_id.clone(),
            });
            sweep.closed.push(epic_id);
            continue;
        }
        let blocking = verdict.findings.iter().filter(|f| f.blocks()).count();
        events.emit(&Event::IssueFailed {
            issue: epic_id.clone(),
            reason: format!("epic verification found {blocking} unmet criterion(s) (round {round}); remediation issues were filed"),
        });
        if *round >= max_rounds {
            book.given_up.insert(epic_id.clone());
        }
        sweep.failed.push(epic_id.clone());
        sweep
            .created
            .extend(file_epic_findings(tracker, &epic_id, &verdict.findings).await?);
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mala_core::{AgentSession, MockAgentBackend, MockAgentSession, NewIssue, TurnOutcome};
    use mala_infra::JsonlTracker;

    use super::*;

    struct Quiet;

    impl EventSink for Quiet {
        fn emit(&self, _: &Event) {}
    }

    fn verifier_answering(answers: Vec<&'static str>) -> EpicVerifier {
        let answers = Arc::new(std::sync::Mutex::new(answers));
        let mut backend = MockAgentBackend::new();
        backend.expect_start().returning(move |_, _| {
            let answer = answers.lock().unwrap().remove(0);
            let mut session = MockAgentSession::new();
            session
                .expect_turn()
                .returning(move |_| Ok(TurnOutcome::completed(answer)));
            session.expect_close().returning(|| Ok(()));
            Ok(Box::new(session) as Box<dyn AgentSession>)
        });
        EpicVerifier::new(Arc::new(backend), std::path::Path::new("/repo"))
    }

    async fn tracker_with_done_epic() -> (tempfile::TempDir, JsonlTracker, IssueId) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        std::fs::write(dir.path().join(".beads/issues.jsonl"), "").unwrap();
        let tracker = JsonlTracker::open(dir.path()).unwrap();
        let epic = tracker
            .create(NewIssue {
                title: "Auth".into(),
                acceptance_criteria: "login works".into(),
                issue_type: Some(mala_core::IssueType::Epic),
                ..NewIssue::default()
            })
            .await
            .unwrap();
        let child = tracker
            .create(NewIssue {
                title: "Login".into(),
                parent: Some(epic.clone()),
                ..NewIssue::default()
            })
            .await
            .unwrap();
        tracker.close(&child, "done").await.unwrap();
        (dir, tracker, epic)
    }

    #[tokio::test]
    async fn without_a_verifier_an_epic_closes_with_its_last_child() {
        let (_dir, tracker, epic) = tracker_with_done_epic().await;
        let sweep = sweep_epics(
            &tracker,
            None,
            &Scope::All,
            &mut EpicBook::default(),
            3,
            &Quiet,
        )
        .await
        .unwrap();
        assert_eq!(sweep.closed, vec![epic.clone()]);
        assert_eq!(
            tracker.show(&epic).await.unwrap().status,
            mala_core::IssueStatus::Closed
        );
    }

    #[tokio::test]
    async fn a_failed_verification_files_chained_remediation_under_the_epic_then_a_pass_closes_it()
    {
        let (_dir, tracker, epic) = tracker_with_done_epic().await;
        let verifier = verifier_answering(vec![
            r#"{"passed": false, "findings": [{"priority": 1, "title": "No logout", "body": "add it"}, {"priority": 0, "title": "Passwords in plain text", "body": "hash them"}, {"priority": 3, "title": "Docs", "body": "later"}]}"#,
        ]);
        let mut book = EpicBook::default();
        let sweep = sweep_epics(&tracker, Some(&verifier), &Scope::All, &mut book, 3, &Quiet)
            .await
            .unwrap();
        assert!(sweep.closed.is_empty());
        assert_eq!(sweep.created.len(), 3);
        let issues = tracker.all_issues().await.unwrap();
        let remediation: Vec<_> = issues
            .iter()
            .filter(|i| i.title.starts_with("[Remediation]"))
            .collect();
        assert_eq!(remediation.len(), 2);
        assert!(remediation.iter().all(|i| i.parent.as_ref() == Some(&epic)));
        assert!(
            remediation[1].blockers().any(|b| *b == remediation[0].id)
                || remediation[0].blockers().any(|b| *b == remediation[1].id),
            "chained"
        );
        assert!(
            issues
                .iter()
                .any(|i| i.title == "[Advisory] Docs" && i.parent.is_none())
        );
        assert_eq!(
            tracker.show(&epic).await.unwrap().status,
            mala_core::IssueStatus::Open
        );
        // The same findings again are not filed twice.
        let again = file_epic_findings(
            &tracker,
            &epic,
            &[Finding {
                priority: 1,
                title: "No logout".into(),
                body: String::new(),
                file: None,
                line_start: None,
                line_end: None,
            }],
        )
        .await
        .unwrap();
        assert!(again.is_empty());

        // Remediation done: the next sweep verifies again and closes the epic.
        for issue in &remediation {
            tracker.close(&issue.id, "done").await.unwrap();
        }
        let verifier = verifier_answering(vec![r#"{"passed": true, "findings": []}"#]);
        let sweep = sweep_epics(&tracker, Some(&verifier), &Scope::All, &mut book, 3, &Quiet)
            .await
            .unwrap();
        assert_eq!(sweep.closed, vec![epic.clone()]);
    }

    #[tokio::test]
    async fn epics_outside_the_scope_are_left_alone() {
        let (_dir, tracker, epic) = tracker_with_done_epic().await;
        let sweep = sweep_epics(
            &tracker,
            None,
            &Scope::Orphans,
            &mut EpicBook::default(),
            3,
            &Quiet,
        )
        .await
        .unwrap();
        assert!(sweep.closed.is_empty());
        let sweep = sweep_epics(
            &tracker,
            None,
            &Scope::Epic(epic.clone()),
            &mut EpicBook::default(),
            3,
            &Quiet,
        )
        .await
        .unwrap();
        assert_eq!(sweep.closed, vec![epic]);
    }
}
