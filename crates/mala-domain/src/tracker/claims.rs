//! Who holds an issue: mala claims under `mala:<run id>`, so a later run can
//! tell its own dead claims from a live run's or a person's.

use std::collections::HashSet;

use mala_core::{AgentId, Issue, IssueId, IssueStatus};

const PREFIX: &str = "mala:";

/// The actor name a run claims issues under.
pub fn claim_actor(run_id: &str) -> String {
    format!("{PREFIX}{run_id}")
}

/// The run id inside an actor name written by [`claim_actor`].
pub fn run_of_actor(actor: &str) -> Option<&str> {
    actor.strip_prefix(PREFIX).filter(|run| !run.is_empty())
}

/// The name of the agent working on `issue` in run `run_id`: `<issue>@<run id>`.
/// Lock files carry it, so a lock can be traced to its issue and its run.
pub fn agent_name(issue: &IssueId, run_id: &str) -> AgentId {
    AgentId::new(format!("{issue}@{run_id}"))
}

/// The issue and run inside an agent name written by [`agent_name`].
pub fn parse_agent_name(agent: &AgentId) -> Option<(IssueId, &str)> {
    let (issue, run) = agent.as_str().rsplit_once('@')?;
    (!issue.is_empty() && !run.is_empty()).then(|| (IssueId::from(issue), run))
}

/// In-progress issues a new run may take over: those claimed by a mala run
/// that is no longer alive, and with `resume` also unassigned work in
/// progress. A person's claim and a live run's claim are never taken.
pub fn takeover_candidates(
    issues: &[Issue],
    resume: bool,
    is_run_alive: impl Fn(&str) -> bool,
) -> HashSet<IssueId> {
    issues
        .iter()
        .filter(|issue| issue.status == IssueStatus::InProgress)
        .filter(|issue| match issue.assignee.as_deref() {
            None | Some("") => resume,
            Some(actor) => run_of_actor(actor).is_some_and(|run| !is_run_alive(run)),
        })
        .map(|issue| issue.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn wip(id: &str, assignee: Option<&str>) -> Issue {
        Issue {
            status: IssueStatus::InProgress,
            assignee: assignee.map(str::to_owned),
            ..Issue::new(id, id, Utc::now())
        }
    }

    #[test]
    fn only_dead_runs_claims_and_on_resume_unassigned_work_are_taken_over() {
        let issues = vec![
            wip("dead", Some(&claim_actor("r1"))),
            wip("live", Some(&claim_actor("r2"))),
            wip("person", Some("alice")),
            wip("nobody", None),
            Issue::new("open", "open", Utc::now()),
        ];
        let alive = |run: &str| run == "r2";
        let taken = takeover_candidates(&issues, false, alive);
        assert_eq!(taken, HashSet::from(["dead".into()]));
        let taken = takeover_candidates(&issues, true, alive);
        assert_eq!(taken, HashSet::from(["dead".into(), "nobody".into()]));
        assert_eq!(run_of_actor("mala:"), None);
        assert_eq!(run_of_actor("malaise"), None);
    }

    #[test]
    fn agent_names_carry_issue_and_run() {
        let agent = agent_name(&"m-1.2".into(), "r-9");
        assert_eq!(agent.as_str(), "m-1.2@r-9");
        assert_eq!(parse_agent_name(&agent), Some(("m-1.2".into(), "r-9")));
        assert_eq!(parse_agent_name(&AgentId::new("py-agent")), None);
    }
}
