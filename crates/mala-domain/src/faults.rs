//! Whose fault an agent's failure is, and what the run does about it.
//!
//! An issue pays only for its own failures (the gate, the review, the agent
//! giving up, a crash in its session). A failure every issue would have hit
//! the same way (the agent cannot start, the credentials are refused, a usage
//! limit, an API that stays down) is the environment's: the issue is given
//! back untouched and the run stops or pauses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mala_core::{AgentErrorKind, EnvFault};

/// Who an agent's failure is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    Issue,
    Environment(EnvFault),
}

/// Whose fault an agent error is, once the runner's own retries in the same
/// session are spent (for the kinds that have them).
pub fn blame(kind: &AgentErrorKind) -> Blame {
    let fault = match kind {
        AgentErrorKind::CouldNotStart => EnvFault::CouldNotStart,
        AgentErrorKind::Authentication => EnvFault::Authentication,
        AgentErrorKind::RateLimited { resets_at } => EnvFault::UsageLimit { until: *resets_at },
        AgentErrorKind::Overloaded { .. } | AgentErrorKind::Network => EnvFault::Unavailable,
        AgentErrorKind::Refused => EnvFault::Refused,
        AgentErrorKind::Unguarded => EnvFault::Unguarded,
        AgentErrorKind::Crashed
        | AgentErrorKind::TimedOut
        | AgentErrorKind::Cancelled
        | AgentErrorKind::Protocol => return Blame::Issue,
    };
    Blame::Environment(fault)
}

/// What the run does about an environment fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Start nothing more; let running turns end; exit with the reason.
    Stop { reason: String },
    /// No new turns and no new claims until `until`; then carry on.
    Pause { until: DateTime<Utc> },
    /// Nothing to do beyond giving the issue back.
    CarryOn,
}

/// What the run knows when it decides about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultContext {
    pub now: DateTime<Utc>,
    /// Agents in a row, this one included, that could not start.
    pub start_failures_in_row: u32,
    /// When the current stretch of pauses began (`None`: the run is not paused).
    pub paused_since: Option<DateTime<Utc>>,
    /// Pauses in a row without a turn succeeding in between, this one excluded.
    pub pauses_in_row: u32,
    /// The longest the run may stay paused in one stretch (`--max-pause`).
    pub max_pause: Duration,
    /// The first pause when the API gives no reset time; it doubles after.
    pub backoff: Duration,
}

/// The longest pause backoff alone may reach.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// The agents in a row that may fail to start before the run stops: one
/// could be a fluke of that session, two are the environment.
pub const START_FAILURES_TO_STOP: u32 = 2;

/// What the run does about `fault`: credentials stop it, a second start
/// failure in a row stops it, a limit or an API that stays down pauses it
/// until the reset (or a doubling backoff), unless that is beyond the
/// longest pause allowed.
pub fn respond(fault: &EnvFault, message: &str, ctx: &FaultContext) -> FaultAction {
    match fault {
        EnvFault::Authentication => FaultAction::Stop {
            reason: format!(
                "the model API refused the agent's credentials ({message}); log in with `claude` \
                 (then /login) or set ANTHROPIC_API_KEY (for a 403, check the key's permissions), \
                 and run again"
            ),
        },
        EnvFault::Refused => FaultAction::Stop {
            reason: format!(
                "the model API refuses every request of this setup ({message}); check the model \
                 (`model:`, --model) and the account's credit, and run again"
            ),
        },
        EnvFault::Unguarded => FaultAction::Stop {
            reason: format!(
                "{message}; no agent may work unguarded: check the Claude Code settings and managed \
                 policies for `disableAllHooks` or hook restrictions, and run again"
            ),
        },
        EnvFault::CouldNotStart if ctx.start_failures_in_row >= START_FAILURES_TO_STOP => {
            FaultAction::Stop {
                reason: format!(
                    "{} agents in a row could not start ({message})",
                    ctx.start_failures_in_row
                ),
            }
        }
        EnvFault::CouldNotStart => FaultAction::CarryOn,
        EnvFault::UsageLimit { until } => pause_until(until.unwrap_or_else(|| backoff(ctx)), ctx),
        EnvFault::Unavailable => pause_until(backoff(ctx), ctx),
    }
}

fn backoff(ctx: &FaultContext) -> DateTime<Utc> {
    let doubled = ctx
        .backoff
        .saturating_mul(2u32.saturating_pow(ctx.pauses_in_row.min(16)))
        .min(MAX_BACKOFF);
    ctx.now + chrono::Duration::from_std(doubled).unwrap_or(chrono::Duration::MAX)
}

fn pause_until(until: DateTime<Utc>, ctx: &FaultContext) -> FaultAction {
    let until = until.max(ctx.now);
    let since = ctx.paused_since.unwrap_or(ctx.now);
    let longest = chrono::Duration::from_std(ctx.max_pause).unwrap_or(chrono::Duration::MAX);
    if until - since > longest {
        return FaultAction::Stop {
            reason: format!(
                "the run would stay paused until {} (a usage limit or an unavailable API), longer \
                 than --max-pause allows ({} s); run again after that time, or raise --max-pause",
                until.format("%Y-%m-%d %H:%M:%S UTC"),
                ctx.max_pause.as_secs()
            ),
        };
    }
    FaultAction::Pause { until }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn ctx() -> FaultContext {
        FaultContext {
            now: at(0),
            start_failures_in_row: 1,
            paused_since: None,
            pauses_in_row: 0,
            max_pause: Duration::from_secs(3600),
            backoff: Duration::from_secs(60),
        }
    }

    #[test]
    fn only_the_environment_s_faults_are_not_the_issue_s() {
        let issue = [
            AgentErrorKind::Crashed,
            AgentErrorKind::TimedOut,
            AgentErrorKind::Protocol,
            AgentErrorKind::Cancelled,
        ];
        for kind in issue {
            assert_eq!(blame(&kind), Blame::Issue, "{kind:?}");
        }
        assert_eq!(
            blame(&AgentErrorKind::Authentication),
            Blame::Environment(EnvFault::Authentication)
        );
        assert_eq!(
            blame(&AgentErrorKind::CouldNotStart),
            Blame::Environment(EnvFault::CouldNotStart)
        );
        assert_eq!(
            blame(&AgentErrorKind::RateLimited {
                resets_at: Some(at(5))
            }),
            Blame::Environment(EnvFault::UsageLimit { until: Some(at(5)) })
        );
        for kind in [
            AgentErrorKind::Network,
            AgentErrorKind::Overloaded { retry_after: None },
        ] {
            assert_eq!(blame(&kind), Blame::Environment(EnvFault::Unavailable));
        }
    }

    #[test]
    fn credentials_stop_the_run_with_the_fix() {
        let FaultAction::Stop { reason } = respond(&EnvFault::Authentication, "401", &ctx()) else {
            panic!()
        };
        assert!(
            reason.contains("401") && reason.contains("/login"),
            "{reason}"
        );
    }

    #[test]
    fn unguarded_tools_and_a_refused_setup_stop_the_run_at_once() {
        for (fault, words) in [
            (EnvFault::Unguarded, "disableAllHooks"),
            (EnvFault::Refused, "the account's credit"),
        ] {
            let FaultAction::Stop { reason } = respond(&fault, "why", &ctx()) else {
                panic!("{fault:?}")
            };
            assert!(reason.contains(words) && reason.contains("why"), "{reason}");
        }
        assert_eq!(
            blame(&AgentErrorKind::Unguarded),
            Blame::Environment(EnvFault::Unguarded)
        );
    }

    #[test]
    fn one_start_failure_carries_on_and_the_second_in_a_row_stops() {
        assert_eq!(
            respond(&EnvFault::CouldNotStart, "x", &ctx()),
            FaultAction::CarryOn
        );
        let second = FaultContext {
            start_failures_in_row: 2,
            ..ctx()
        };
        assert!(matches!(
            respond(&EnvFault::CouldNotStart, "refused as root", &second),
            FaultAction::Stop { reason } if reason.contains("2 agents in a row") && reason.contains("refused as root")
        ));
    }

    #[test]
    fn a_limit_pauses_until_its_reset_or_a_doubling_backoff() {
        let limit = EnvFault::UsageLimit {
            until: Some(at(600)),
        };
        assert_eq!(
            respond(&limit, "", &ctx()),
            FaultAction::Pause { until: at(600) }
        );
        let unknown = EnvFault::UsageLimit { until: None };
        assert_eq!(
            respond(&unknown, "", &ctx()),
            FaultAction::Pause { until: at(60) }
        );
        let third = FaultContext {
            pauses_in_row: 2,
            ..ctx()
        };
        assert_eq!(
            respond(&EnvFault::Unavailable, "", &third),
            FaultAction::Pause { until: at(240) }
        );
        let many = FaultContext {
            pauses_in_row: 40,
            max_pause: Duration::from_secs(86_400),
            ..ctx()
        };
        assert_eq!(
            respond(&EnvFault::Unavailable, "", &many),
            FaultAction::Pause { until: at(900) },
            "backoff is capped"
        );
        let past = EnvFault::UsageLimit {
            until: Some(at(-10)),
        };
        assert_eq!(
            respond(&past, "", &ctx()),
            FaultAction::Pause { until: at(0) }
        );
    }

    #[test]
    fn a_pause_beyond_max_pause_stops_counting_from_the_stretch_start() {
        let far = EnvFault::UsageLimit {
            until: Some(at(7200)),
        };
        assert!(matches!(
            respond(&far, "", &ctx()),
            FaultAction::Stop { reason } if reason.contains("--max-pause") && reason.contains("3600 s")
        ));
        let late = FaultContext {
            now: at(3000),
            paused_since: Some(at(0)),
            ..ctx()
        };
        let soon = EnvFault::UsageLimit {
            until: Some(at(3700)),
        };
        assert!(matches!(
            respond(&soon, "", &late),
            FaultAction::Stop { .. }
        ));
    }
}
