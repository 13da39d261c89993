//! The scheduler's decisions, as functions of what it knows at one moment:
//! how many issues to start, and whether (and why) the run is over.

use mala_core::RunOutcome;
use serde::Serialize;

/// What the scheduler knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerView {
    pub active: usize,
    /// Issues started so far in this run.
    pub started: usize,
    pub max_agents: usize,
    pub max_issues: Option<usize>,
    /// Ctrl-C once: take no new issues.
    pub draining: bool,
    /// A validation trigger waits for the pool to be idle; hold new spawns.
    pub trigger_due: bool,
    /// A usage limit paused the run: no new claims until it ends.
    pub paused: bool,
}

/// How many new issues may start now.
pub fn spawn_capacity(view: &SchedulerView) -> usize {
    if view.draining || view.trigger_due || view.paused {
        return 0;
    }
    let by_agents = view.max_agents.saturating_sub(view.active);
    let by_limit = view
        .max_issues
        .map_or(usize::MAX, |limit| limit.saturating_sub(view.started));
    by_agents.min(by_limit)
}

/// Why a run ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoneReason {
    /// Nothing ready in scope and nothing running.
    NothingLeft,
    /// `--max-issues` reached and the last of them finished.
    IssueLimit,
    /// Drained after a Ctrl-C.
    Drained,
    /// A validation trigger set to `abort` failed: the command that failed.
    Aborted { command: String },
    /// A second or third Ctrl-C stopped the running issues.
    Interrupted,
    /// The environment stopped the run (credentials, agents that cannot
    /// start, a pause longer than allowed): why, and the fix.
    Stopped { reason: String },
    /// The run's budget was reached and the running issues ended.
    BudgetReached { spent: String },
}

impl DoneReason {
    /// The run's outcome, the one `run.json`, the `RunFinished` event and
    /// the exit code all come from.
    pub fn outcome(&self) -> RunOutcome {
        match self {
            Self::NothingLeft | Self::IssueLimit => RunOutcome::Finished,
            Self::Drained => RunOutcome::Drained,
            Self::Aborted { command } => RunOutcome::Aborted {
                reason: format!("validation trigger failed: `{command}`"),
            },
            Self::Interrupted => RunOutcome::Interrupted,
            Self::Stopped { reason } => RunOutcome::Stopped {
                reason: reason.clone(),
            },
            Self::BudgetReached { spent } => RunOutcome::BudgetReached {
                spent: spent.clone(),
            },
        }
    }
}

/// How the run was cut short, besides how its loop ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutShort<'a> {
    /// A second or third Ctrl-C.
    pub interrupted: bool,
    /// The environment stopped it: why.
    pub stopped: Option<&'a str>,
    /// A validation trigger aborted it: the command.
    pub aborted: Option<&'a str>,
    /// The run's budget was reached: what was spent.
    pub budget: Option<&'a str>,
}

/// The run's end once its loop is over: a Ctrl-C stop beats the
/// environment's stop, which beats a trigger's abort, which beats how the
/// loop itself ended (a drain while an abort was pending is that abort).
pub fn final_reason(loop_end: DoneReason, cut: CutShort<'_>) -> DoneReason {
    if cut.interrupted {
        return DoneReason::Interrupted;
    }
    if let Some(reason) = cut.stopped {
        return DoneReason::Stopped {
            reason: reason.to_owned(),
        };
    }
    if let Some(spent) = cut.budget
        && cut.aborted.is_none()
    {
        return DoneReason::BudgetReached {
            spent: spent.to_owned(),
        };
    }
    let aborted = cut.aborted;
    match aborted {
        Some(command) => DoneReason::Aborted {
            command: command.to_owned(),
        },
        None => loop_end,
    }
}

/// Whether the run is over, once nothing could be started: `None` while
/// issues are running (or, in watch mode, while waiting for new ones).
pub fn done(view: &SchedulerView, watching: bool) -> Option<DoneReason> {
    // A pause holds the run open only while it may still start work.
    if view.active > 0 || view.trigger_due || (view.paused && !view.draining) {
        return None;
    }
    if view.draining {
        return Some(DoneReason::Drained);
    }
    if view.max_issues.is_some_and(|limit| view.started >= limit) {
        return Some(DoneReason::IssueLimit);
    }
    if watching {
        return None;
    }
    Some(DoneReason::NothingLeft)
}

/// Whether the `run_end` trigger fires, by its `fire_on`: `success` when
/// something closed, `failure` when something failed, `both` when anything
/// was worked on. A run that worked on nothing does not fire it.
pub fn run_end_fires(fire_on: crate::FireOn, closed: usize, failed: usize) -> bool {
    match fire_on {
        crate::FireOn::Success => closed > 0,
        crate::FireOn::Failure => failed > 0,
        crate::FireOn::Both => closed + failed > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(active: usize, started: usize) -> SchedulerView {
        SchedulerView {
            active,
            started,
            max_agents: 3,
            max_issues: Some(5),
            ..SchedulerView::default()
        }
    }

    #[test]
    fn capacity_is_bounded_by_free_agents_and_the_issue_limit() {
        assert_eq!(spawn_capacity(&view(0, 0)), 3);
        assert_eq!(spawn_capacity(&view(2, 2)), 1);
        assert_eq!(
            spawn_capacity(&view(1, 4)),
            1,
            "one issue left under --max-issues"
        );
        assert_eq!(spawn_capacity(&view(0, 5)), 0);
        assert_eq!(
            spawn_capacity(&SchedulerView {
                max_issues: None,
                ..view(3, 10)
            }),
            0
        );
        assert_eq!(
            spawn_capacity(&SchedulerView {
                draining: true,
                ..view(0, 0)
            }),
            0
        );
        assert_eq!(
            spawn_capacity(&SchedulerView {
                trigger_due: true,
                ..view(0, 0)
            }),
            0
        );
    }

    #[test]
    fn the_run_ends_only_when_nothing_runs_and_says_why() {
        assert_eq!(done(&view(1, 1), false), None);
        assert_eq!(done(&view(0, 2), false), Some(DoneReason::NothingLeft));
        assert_eq!(done(&view(0, 2), true), None, "watch mode waits");
        assert_eq!(done(&view(0, 5), true), Some(DoneReason::IssueLimit));
        assert_eq!(
            done(
                &SchedulerView {
                    draining: true,
                    ..view(0, 1)
                },
                true
            ),
            Some(DoneReason::Drained)
        );
        assert_eq!(
            done(
                &SchedulerView {
                    draining: true,
                    ..view(2, 1)
                },
                false
            ),
            None,
            "drain waits for the running ones"
        );
        assert_eq!(
            done(
                &SchedulerView {
                    trigger_due: true,
                    ..view(0, 1)
                },
                false
            ),
            None
        );
    }

    #[test]
    fn one_outcome_comes_from_each_way_a_run_ends() {
        let ended = |end, interrupted, aborted| {
            let cut = CutShort {
                interrupted,
                aborted,
                stopped: None,
                budget: None,
            };
            final_reason(end, cut).outcome()
        };
        assert_eq!(
            ended(DoneReason::NothingLeft, false, None),
            RunOutcome::Finished
        );
        assert_eq!(
            ended(DoneReason::IssueLimit, false, None),
            RunOutcome::Finished
        );
        assert_eq!(ended(DoneReason::Drained, false, None), RunOutcome::Drained);
        let aborted = ended(DoneReason::Drained, false, Some("cargo test"));
        assert_eq!(
            aborted,
            RunOutcome::Aborted {
                reason: "validation trigger failed: `cargo test`".into()
            },
            "a session_end abort drains the pool, and the run says it aborted"
        );
        assert_eq!(aborted.label(), "aborted");
        assert_eq!(
            ended(DoneReason::NothingLeft, true, Some("cargo test")),
            RunOutcome::Interrupted,
            "a Ctrl-C stop is what the user did last"
        );
        assert_eq!(RunOutcome::Interrupted.label(), "interrupted");
        let stopped = CutShort {
            stopped: Some("bad key"),
            aborted: Some("cargo test"),
            interrupted: false,
            budget: None,
        };
        let outcome = final_reason(DoneReason::Drained, stopped).outcome();
        assert_eq!(
            outcome,
            RunOutcome::Stopped {
                reason: "bad key".into()
            },
            "the environment's stop explains the rest"
        );
        assert_eq!(outcome.label(), "stopped");
        let both = CutShort {
            interrupted: true,
            ..stopped
        };
        assert_eq!(
            final_reason(DoneReason::Drained, both),
            DoneReason::Interrupted
        );
    }

    #[test]
    fn a_paused_run_claims_nothing_and_is_not_over() {
        let paused = SchedulerView {
            paused: true,
            ..view(0, 1)
        };
        assert_eq!(spawn_capacity(&paused), 0);
        assert_eq!(done(&paused, false), None);
        let draining = SchedulerView {
            draining: true,
            ..paused
        };
        assert_eq!(
            done(&draining, false),
            Some(DoneReason::Drained),
            "a drain does not wait out a pause"
        );
    }

    #[test]
    fn run_end_fires_on_what_the_run_did() {
        use crate::FireOn::{Both, Failure, Success};
        assert!(run_end_fires(Success, 1, 3));
        assert!(!run_end_fires(Success, 0, 3));
        assert!(run_end_fires(Failure, 0, 1));
        assert!(!run_end_fires(Failure, 2, 0));
        assert!(run_end_fires(Both, 0, 1));
        for fire_on in [Success, Failure, Both] {
            assert!(!run_end_fires(fire_on, 0, 0), "nothing was worked on");
        }
    }
}
