//! Breaking a deadlock the detector found, through the ports.
//!
//! The victim gives way without losing work: its locks are released first
//! (so the others move at once), then its issue is made to wait for the
//! blocker's issue, gets a note naming the path and the holder, and is put
//! back to `open`. The caller cancels the victim's session. A victim is not
//! a failure: its issue is ready again once the blocker's issue closes.

use mala_core::{
    AgentId, DependencyKind, IssueId, IssueTracker, LockError, LockTable, TrackerError,
};
use mala_domain::Deadlock;

/// What the resolution did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The session to cancel.
    pub victim: AgentId,
    pub victim_issue: Option<IssueId>,
    pub blocker_issue: Option<IssueId>,
    /// Lock keys the victim held.
    pub released: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error("releasing the victim's locks failed: {0}")]
    Locks(#[from] LockError),
    #[error("recording the deadlock in the tracker failed: {0}")]
    Tracker(#[from] TrackerError),
}

/// Breaks `deadlock`. `issue_of` maps an agent to the issue it works on.
pub async fn resolve_deadlock(
    deadlock: &Deadlock,
    issue_of: impl Fn(&AgentId) -> Option<IssueId>,
    tracker: &dyn IssueTracker,
    locks: &dyn LockTable,
) -> Result<Resolution, ResolveError> {
    let released = locks.release_all(&deadlock.victim).await?;
    let victim_issue = issue_of(&deadlock.victim);
    let blocker_issue = issue_of(&deadlock.holder);
    if let Some(victim) = &victim_issue {
        if let Some(blocker) = blocker_issue.as_ref().filter(|b| *b != victim) {
            tracker
                .add_dependency(victim, blocker, DependencyKind::Blocks)
                .await?;
        }
        let path = deadlock
            .blocked_on
            .split_once(':')
            .map_or(deadlock.blocked_on.as_str(), |(_, path)| path);
        let note = format!(
            "Deadlock victim: waited for {path}, held by {} ({}); released its locks and gave way. \
             It runs again once {} closes.",
            deadlock.holder,
            blocker_issue.as_ref().map_or("no issue", IssueId::as_str),
            blocker_issue
                .as_ref()
                .map_or("the blocker", IssueId::as_str),
        );
        tracker.mark_needs_followup(victim, &note).await?;
        tracker.reopen(victim).await?;
    }
    Ok(Resolution {
        victim: deadlock.victim.clone(),
        victim_issue,
        blocker_issue,
        released,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::{MockIssueTracker, MockLockTable};
    use mockall::Sequence;

    fn deadlock() -> Deadlock {
        Deadlock {
            cycle: vec![AgentId::new("old"), AgentId::new("young")],
            victim: AgentId::new("young"),
            blocked_on: "/repo:/repo/src/a.rs".into(),
            holder: AgentId::new("old"),
        }
    }

    fn issue_of(agent: &AgentId) -> Option<IssueId> {
        match agent.as_str() {
            "old" => Some("m-1".into()),
            "young" => Some("m-2".into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_victim_releases_first_then_waits_for_the_blockers_issue_and_reopens() {
        let mut sequence = Sequence::new();
        let mut locks = MockLockTable::new();
        locks
            .expect_release_all()
            .withf(|agent| agent.as_str() == "young")
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_| Ok(vec!["k1".into()]));
        let mut tracker = MockIssueTracker::new();
        tracker
            .expect_add_dependency()
            .withf(|issue, on, kind| {
                issue.as_str() == "m-2" && on.as_str() == "m-1" && *kind == DependencyKind::Blocks
            })
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_, _, _| Ok(()));
        tracker
            .expect_mark_needs_followup()
            .withf(|issue, note| {
                issue.as_str() == "m-2"
                    && note.contains("/repo/src/a.rs")
                    && note.contains("old")
                    && note.contains("m-1")
            })
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_, _| Ok(()));
        tracker
            .expect_reopen()
            .withf(|issue| issue.as_str() == "m-2")
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_| Ok(()));
        let resolution = resolve_deadlock(&deadlock(), issue_of, &tracker, &locks)
            .await
            .unwrap();
        assert_eq!(resolution.victim.as_str(), "young");
        assert_eq!(resolution.released, vec!["k1"]);
        assert_eq!(resolution.blocker_issue, Some("m-1".into()));
    }

    #[tokio::test]
    async fn a_tracker_failure_is_reported_after_the_locks_are_already_free() {
        let mut locks = MockLockTable::new();
        locks
            .expect_release_all()
            .times(1)
            .returning(|_| Ok(vec![]));
        let mut tracker = MockIssueTracker::new();
        tracker
            .expect_add_dependency()
            .returning(|_, _, _| Err(TrackerError::Unavailable("br vanished".into())));
        let err = resolve_deadlock(&deadlock(), issue_of, &tracker, &locks)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("br vanished"));
    }
}
