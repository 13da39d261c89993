//! Validation triggers: the project's commands, run by mala itself at set
//! moments (`session_end`, `periodic`, `epic_completion`, `run_end`),
//! sequentially and fail-fast, each with its own timeout, in the repository
//! root. A failure aborts the run, is noted, or is handed to a fixer agent
//! and the commands run again. A trigger's `code_review` then reads the
//! run's recent commits together.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use mala_core::{
    AgentBackend, AgentEvent, AgentId, AgentObserver, CheckCommand, CommandRunner, CommitInfo,
    Event, EventSink, Finding, IssueId, Repository, ReviewRequest, ReviewSubject, Reviewer,
    SessionRequest,
};
use mala_domain::{
    CodeReview, FailureMode, PromptKind, Trigger, TriggerCommand, findings_list, render_prompt,
};
use mala_pipeline::{RunLedger, SessionEndCheck, ask_reviewer};
use tokio::sync::mpsc;

/// How a trigger ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// Every command passed, and the review when there is one (or it could
    /// not run for a fault of the environment, which a warning says: that
    /// is no verdict on the code).
    Passed,
    /// Failed, and `failure_mode: continue` let the run go on.
    FailedContinued {
        /// The command (or review) that failed.
        command: String,
    },
    /// Failed with `failure_mode: abort` (or remediation did not help): the run stops.
    Abort {
        /// The command (or review) that failed.
        command: String,
    },
    /// The environment kept the fixer from working (credentials, a limit,
    /// an API down): the run stops for the environment, not for the code.
    Environment {
        /// What the fixer met, and the fix.
        reason: String,
    },
    /// The run's budget was reached before the fixer or the review could
    /// finish: no verdict on the code. The run is draining for its budget
    /// already, so this stops nothing more.
    BudgetReached {
        /// What the run had spent.
        spent: String,
    },
}

/// How a trigger stops the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TriggerStop {
    /// Its validation failed for good (exit 3).
    Abort { command: String },
    /// The environment stopped its fixer (exit 4).
    Environment { reason: String },
}

impl TriggerOutcome {
    /// Whether the commands' outcome leaves the trigger's review unasked
    /// (and, from the review, beats the commands' outcome).
    pub(crate) fn stops_the_review(&self) -> bool {
        matches!(
            self,
            Self::Abort { .. } | Self::Environment { .. } | Self::BudgetReached { .. }
        )
    }

    /// The stop this outcome means for the run, if any.
    pub(crate) fn stop(self) -> Option<TriggerStop> {
        match self {
            Self::Abort { command } => Some(TriggerStop::Abort { command }),
            Self::Environment { reason } => Some(TriggerStop::Environment { reason }),
            Self::Passed | Self::FailedContinued { .. } | Self::BudgetReached { .. } => None,
        }
    }
}

/// The trigger's commands as mala runs them.
fn check_commands(commands: &[TriggerCommand]) -> Vec<CheckCommand> {
    commands
        .iter()
        .map(|c| CheckCommand {
            name: c.name.clone(),
            command: c.command.clone(),
            timeout: c.timeout,
        })
        .collect()
}

/// Where a trigger runs: the repository and what runs its commands there,
/// the backend its fixers start on (metered), the run's ledger they spend
/// from, and where it says things.
#[derive(Clone)]
pub(crate) struct TriggerSite {
    pub(crate) repo: PathBuf,
    pub(crate) commands: Arc<dyn CommandRunner>,
    pub(crate) fixers: Arc<dyn AgentBackend>,
    pub(crate) ledger: Arc<RunLedger>,
    pub(crate) run_id: String,
    pub(crate) events: Arc<dyn EventSink>,
}

/// The `session_end` trigger as the runner calls it. An `abort` failure
/// sends the failed command to the scheduler, which stops spawning; the
/// run then exits 3.
pub(crate) struct SessionEndTrigger {
    pub(crate) trigger: Trigger,
    pub(crate) site: TriggerSite,
    pub(crate) aborts: mpsc::UnboundedSender<TriggerStop>,
}

#[async_trait::async_trait]
impl SessionEndCheck for SessionEndTrigger {
    async fn run(&self, issue: &IssueId) -> String {
        let name = format!("session_end ({issue})");
        let outcome = run_trigger(&name, &self.trigger, &self.site).await;
        match outcome {
            TriggerOutcome::Passed => "passed".to_owned(),
            TriggerOutcome::FailedContinued { command } => {
                format!("`{command}` failed (failure_mode continue)")
            }
            TriggerOutcome::Abort { command } => {
                let said = format!("`{command}` failed; the run stops after the running issues");
                // The scheduler is gone only once the run is over.
                let _ = self.aborts.send(TriggerStop::Abort { command });
                said
            }
            TriggerOutcome::Environment { reason } => {
                let said = format!("{reason}; the run stops after the running issues");
                let _ = self.aborts.send(TriggerStop::Environment { reason });
                said
            }
            TriggerOutcome::BudgetReached { spent } => {
                format!("not finished: the run's budget was reached ({spent})")
            }
        }
    }
}

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

/// Runs one trigger, with remediation when configured.
pub(crate) async fn run_trigger(
    name: &str,
    trigger: &Trigger,
    site: &TriggerSite,
) -> TriggerOutcome {
    let events = &site.events;
    let commands = check_commands(&trigger.commands);
    let mut round = 0;
    loop {
        let result = site.commands.run(&site.repo, &commands).await;
        let Err(failed) = result else {
            events.emit(&Event::Warning {
                message: format!(
                    "{name} validation passed ({} command(s))",
                    trigger.commands.len()
                ),
            });
            return TriggerOutcome::Passed;
        };
        events.emit(&Event::Warning {
            message: format!(
                "{name} validation failed at `{}` ({}): {}",
                failed.name,
                failed.command,
                failed
                    .output
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
            ),
        });
        match trigger.failure_mode {
            FailureMode::Continue => {
                return TriggerOutcome::FailedContinued {
                    command: failed.command,
                };
            }
            FailureMode::Abort => {
                return TriggerOutcome::Abort {
                    command: failed.command,
                };
            }
            FailureMode::Remediate if round >= trigger.max_retries => {
                // The last fixer may have been cut at the budget.
                if round > 0
                    && let Some(spent) = site.ledger.reached()
                {
                    let stop = TriggerOutcome::BudgetReached { spent };
                    return unremedied(name, &failed.command, stop, events);
                }
                return TriggerOutcome::Abort {
                    command: failed.command,
                };
            }
            FailureMode::Remediate => {
                round += 1;
                let fixed = run_fixer(
                    &Fix {
                        name,
                        round,
                        max_rounds: trigger.max_retries,
                        failed: &failed.command,
                        output: &failed.output,
                    },
                    &trigger.commands,
                    site,
                )
                .await;
                match fixed {
                    Fixer::Worked => {}
                    Fixer::CouldNotRun => {
                        return TriggerOutcome::Abort {
                            command: failed.command,
                        };
                    }
                    Fixer::Stopped(outcome) => {
                        return unremedied(name, &failed.command, outcome, events);
                    }
                }
            }
        }
    }
}

/// How a trigger ends when its remediation stopped; a stop at the budget is
/// no verdict, so what still fails is said here, or nowhere.
fn unremedied(
    name: &str,
    failed: &str,
    outcome: TriggerOutcome,
    events: &Arc<dyn EventSink>,
) -> TriggerOutcome {
    if let TriggerOutcome::BudgetReached { spent } = &outcome {
        events.emit(&Event::Warning {
            message: format!(
                "{name}: `{failed}` still fails; its remediation stopped at the run's budget ({spent})"
            ),
        });
    }
    outcome
}

/// What a fixer agent is asked to repair.
struct Fix<'a> {
    name: &'a str,
    round: u32,
    max_rounds: u32,
    failed: &'a str,
    output: &'a str,
}

/// How one fixer session went.
enum Fixer {
    /// It worked (whether it fixed anything, the commands say next).
    Worked,
    /// No fixer could run, for a reason of its own.
    CouldNotRun,
    /// The environment or the run's budget kept it from working: how the
    /// trigger ends.
    Stopped(TriggerOutcome),
}

/// One fixer session on `fix`. Past the run's budget none starts, and one
/// whose session the budget cut ends the remediation: the budget, not the
/// code, decided.
async fn run_fixer(fix: &Fix<'_>, commands: &[TriggerCommand], site: &TriggerSite) -> Fixer {
    if let Some(spent) = site.ledger.reached() {
        return Fixer::Stopped(TriggerOutcome::BudgetReached { spent });
    }
    let listed: Vec<String> = commands
        .iter()
        .map(|c| format!("- `{}`", c.command))
        .collect();
    let prompt = render_prompt(
        PromptKind::Fixer,
        &[
            ("attempt", fix.round.to_string()),
            ("max_attempts", fix.max_rounds.to_string()),
            ("failed_command", fix.failed.to_owned()),
            ("failure_output", fix.output.to_owned()),
            (
                "validation_commands",
                if listed.is_empty() {
                    "- (the project's own checks)".to_owned()
                } else {
                    listed.join("\n")
                },
            ),
        ],
    );
    let Ok(prompt) = prompt else {
        return Fixer::CouldNotRun;
    };
    let fixer = AgentId::new(format!("fixer-{}-{}@{}", fix.name, fix.round, site.run_id));
    let request = SessionRequest::new(fixer, site.repo.clone());
    let mut started = site.fixers.start(request.clone(), Arc::new(Quiet)).await;
    // As for issue agents, start failures are the environment's only when
    // they come `START_FAILURES_TO_STOP` in a row.
    for _ in 1..mala_domain::START_FAILURES_TO_STOP {
        match &started {
            Err(error) if error.kind == mala_core::AgentErrorKind::CouldNotStart => {
                started = site.fixers.start(request.clone(), Arc::new(Quiet)).await;
            }
            _ => break,
        }
    }
    let ended = match started {
        Ok(mut session) => {
            let turn = session.turn(&prompt).await;
            let _ = session.close().await;
            turn.map(|_| ()).map_err(|error| (error, Fixer::Worked))
        }
        Err(error) => Err((error, Fixer::CouldNotRun)),
    };
    match ended {
        Ok(()) => Fixer::Worked,
        Err(_) if let Some(spent) = site.ledger.reached() => {
            Fixer::Stopped(TriggerOutcome::BudgetReached { spent })
        }
        Err((error, otherwise)) => fixer_failed(fix, &error, &site.events, otherwise),
    }
}

/// A fixer's error: the environment's stops the run (another round would
/// meet the same fault); any other is the fixer's own, `otherwise`.
fn fixer_failed(
    fix: &Fix<'_>,
    error: &mala_core::AgentError,
    events: &Arc<dyn EventSink>,
    otherwise: Fixer,
) -> Fixer {
    match mala_domain::blame(&error.kind) {
        mala_domain::Blame::Environment(fault) => {
            let reason = format!(
                "the {} trigger's fixer could not work: {} ({error}); its remediation stops",
                fix.name,
                fault.summary()
            );
            events.emit(&Event::Warning {
                message: reason.clone(),
            });
            Fixer::Stopped(TriggerOutcome::Environment { reason })
        }
        mala_domain::Blame::Issue => {
            events.emit(&Event::Warning {
                message: format!("the {} trigger's fixer failed: {error}", fix.name),
            });
            otherwise
        }
    }
}

/// A trigger's cumulative review and what it needs.
pub(crate) struct CodeReviewRun<'a> {
    pub(crate) name: &'a str,
    pub(crate) review: &'a CodeReview,
    pub(crate) commands: &'a [TriggerCommand],
    pub(crate) reviewer: &'a dyn Reviewer,
    pub(crate) repository: &'a dyn Repository,
    /// Issue commits from this time on are reviewed.
    pub(crate) since: DateTime<Utc>,
}

/// A trigger's `code_review`: the issue commits made since `since`, read
/// together by the reviewer. Findings at `finding_threshold` or more urgent
/// fail it (`none`: nothing does); `failure_mode` then applies, and with
/// `remediate` a fixer gets the findings and the review runs again.
pub(crate) async fn run_code_review(run: &CodeReviewRun<'_>, site: &TriggerSite) -> TriggerOutcome {
    let events = &site.events;
    let label = format!("the {} code review", run.name);
    let mut round = 0;
    loop {
        if let Some(spent) = site.ledger.reached() {
            return TriggerOutcome::BudgetReached { spent };
        }
        let mut commits: Vec<CommitInfo> = match run.repository.issue_commits().await {
            Ok(all) => all.into_iter().filter(|c| c.time >= run.since).collect(),
            Err(error) => {
                events.emit(&Event::Warning {
                    message: format!("{label} could not read git: {error}"),
                });
                return outcome_of_failure(run.review.failure_mode, label);
            }
        };
        if commits.is_empty() {
            return TriggerOutcome::Passed;
        }
        // Oldest first (git lists newest first, also within one second).
        commits.reverse();
        let request = ReviewRequest {
            subject: ReviewSubject::Range(run.name.to_owned()),
            description: format!(
                "The issue commits of this run since {}: {}.",
                run.since.format("%Y-%m-%d %H:%M:%S UTC"),
                commits
                    .iter()
                    .map(|c| c.subject.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            commits: commits.iter().map(|c| c.id.clone()).collect(),
            context: "Look at the changes together: how they fit, what they broke between them."
                .into(),
            session_id: None,
        };
        let verdict = match ask_reviewer(run.reviewer, &request).await {
            Ok(verdict) => verdict,
            Err(mala_core::ReviewError::Environment { fault, message }) => {
                events.emit(&Event::Warning {
                    message: format!(
                        "{label} could not run: {} ({message}); it is skipped, not failed",
                        fault.summary()
                    ),
                });
                return TriggerOutcome::Passed;
            }
            // The reviewer's session was cut, or not started, at the budget.
            Err(_) if let Some(spent) = site.ledger.reached() => {
                return TriggerOutcome::BudgetReached { spent };
            }
            Err(error) => {
                events.emit(&Event::Warning {
                    message: format!("{label} could not be completed: {error}"),
                });
                return outcome_of_failure(run.review.failure_mode, label);
            }
        };
        let failing: Vec<&Finding> = verdict
            .findings
            .iter()
            .filter(|f| run.review.finding_threshold.fails(f.priority))
            .collect();
        events.emit(&Event::Warning {
            message: format!(
                "{label}: {} finding(s), {} at the {} threshold or above",
                verdict.findings.len(),
                failing.len(),
                run.review.finding_threshold
            ),
        });
        if failing.is_empty() {
            return TriggerOutcome::Passed;
        }
        if run.review.failure_mode != FailureMode::Remediate || round >= run.review.max_retries {
            return outcome_of_failure(run.review.failure_mode, label);
        }
        round += 1;
        let listed = findings_list(failing.iter().copied());
        let fix = Fix {
            name: run.name,
            round,
            max_rounds: run.review.max_retries,
            failed: &label,
            output: &listed,
        };
        match run_fixer(&fix, run.commands, site).await {
            Fixer::Worked => {}
            Fixer::CouldNotRun => return outcome_of_failure(FailureMode::Abort, label),
            Fixer::Stopped(outcome) => return unremedied(run.name, &label, outcome, events),
        }
    }
}

fn outcome_of_failure(mode: FailureMode, command: String) -> TriggerOutcome {
    match mode {
        FailureMode::Continue => TriggerOutcome::FailedContinued { command },
        FailureMode::Abort | FailureMode::Remediate => TriggerOutcome::Abort { command },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::MockAgentBackend;

    fn command(name: &str, command: &str) -> TriggerCommand {
        TriggerCommand {
            name: name.into(),
            command: command.into(),
            timeout: Some(5),
        }
    }

    #[derive(Default)]
    struct Collect(std::sync::Mutex<Vec<String>>);

    fn site(
        dir: &std::path::Path,
        fixers: Arc<dyn AgentBackend>,
        events: &Arc<dyn EventSink>,
    ) -> TriggerSite {
        TriggerSite {
            repo: dir.to_path_buf(),
            commands: Arc::new(mala_infra::ShellCommands),
            fixers,
            ledger: Arc::new(RunLedger::default()),
            run_id: "r".into(),
            events: Arc::clone(events),
        }
    }

    impl EventSink for Collect {
        fn emit(&self, event: &Event) {
            if let Event::Warning { message } = event {
                self.0.lock().unwrap().push(message.clone());
            }
        }
    }

    #[tokio::test]
    async fn failure_modes_continue_abort_and_remediate() {
        let dir = tempfile::tempdir().unwrap();
        let events: Arc<dyn EventSink> = Arc::new(Collect::default());
        let idle = site(dir.path(), Arc::new(MockAgentBackend::new()), &events);
        let failing = |mode| Trigger {
            failure_mode: mode,
            max_retries: 0,
            commands: vec![command("check", "test -f fixed.txt")],
            code_review: None,
        };
        let outcome = run_trigger("run_end", &failing(FailureMode::Continue), &idle).await;
        assert!(matches!(outcome, TriggerOutcome::FailedContinued { .. }));
        let outcome = run_trigger("run_end", &failing(FailureMode::Abort), &idle).await;
        assert!(matches!(outcome, TriggerOutcome::Abort { .. }));

        // The fixer "fixes" the tree; the commands then pass.
        let mut fixing = MockAgentBackend::new();
        let root = dir.path().to_path_buf();
        fixing.expect_start().times(1).returning(move |_, _| {
            std::fs::write(root.join("fixed.txt"), "").unwrap();
            let mut session = mala_core::MockAgentSession::new();
            session.expect_turn().returning(|_| {
                Err(mala_core::AgentError::new(
                    mala_core::AgentErrorKind::Cancelled,
                    "done",
                ))
            });
            session.expect_close().returning(|| Ok(()));
            Ok(Box::new(session))
        });
        let fixing = site(dir.path(), Arc::new(fixing), &events);
        let remediate = Trigger {
            max_retries: 2,
            ..failing(FailureMode::Remediate)
        };
        let outcome = run_trigger("periodic", &remediate, &fixing).await;
        assert_eq!(outcome, TriggerOutcome::Passed);
    }

    #[tokio::test]
    async fn a_fixer_that_fails_to_start_once_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let events: Arc<dyn EventSink> = Arc::new(Collect::default());
        let mut flaky = MockAgentBackend::new();
        let mut seq = mockall::Sequence::new();
        flaky
            .expect_start()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Err(mala_core::AgentError::new(
                    mala_core::AgentErrorKind::CouldNotStart,
                    "spawn failed",
                ))
            });
        let root = dir.path().to_path_buf();
        flaky
            .expect_start()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _| {
                std::fs::write(root.join("fixed.txt"), "").unwrap();
                let mut session = mala_core::MockAgentSession::new();
                session
                    .expect_turn()
                    .returning(|_| Ok(mala_core::TurnOutcome::completed("fixed")));
                session.expect_close().returning(|| Ok(()));
                Ok(Box::new(session))
            });
        let remediate = Trigger {
            failure_mode: FailureMode::Remediate,
            max_retries: 1,
            commands: vec![command("check", "test -f fixed.txt")],
            code_review: None,
        };
        let outcome = run_trigger(
            "periodic",
            &remediate,
            &site(dir.path(), Arc::new(flaky), &events),
        )
        .await;
        assert_eq!(outcome, TriggerOutcome::Passed);
    }

    #[tokio::test]
    async fn a_fixer_refused_by_the_api_stops_remediating_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let collect = Arc::new(Collect::default());
        let events: Arc<dyn EventSink> = collect.clone();
        let mut refused = MockAgentBackend::new();
        // One fixer only: a second round would meet the same 401.
        refused.expect_start().times(1).returning(|_, _| {
            let mut session = mala_core::MockAgentSession::new();
            session.expect_turn().returning(|_| {
                Err(mala_core::AgentError::new(
                    mala_core::AgentErrorKind::Authentication,
                    "model API error 401: bad key",
                ))
            });
            session.expect_close().returning(|| Ok(()));
            Ok(Box::new(session))
        });
        let remediate = Trigger {
            failure_mode: FailureMode::Remediate,
            max_retries: 3,
            commands: vec![command("check", "exit 1")],
            code_review: None,
        };
        let outcome = run_trigger(
            "run_end",
            &remediate,
            &site(dir.path(), Arc::new(refused), &events),
        )
        .await;
        assert!(
            matches!(&outcome, TriggerOutcome::Environment { reason } if reason.contains("credentials")),
            "{outcome:?}"
        );
        let said = collect.0.lock().unwrap().join("\n");
        assert!(
            said.contains("fixer could not work: the model API refused the credentials"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn a_session_end_abort_is_reported_to_the_run_and_continue_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (aborts, mut said_abort) = mpsc::unbounded_channel();
        let check = |mode| SessionEndTrigger {
            trigger: Trigger {
                failure_mode: mode,
                max_retries: 0,
                commands: vec![command("lint", "exit 1")],
                code_review: None,
            },
            site: site(
                dir.path(),
                Arc::new(MockAgentBackend::new()),
                &(Arc::new(Collect::default()) as Arc<dyn EventSink>),
            ),
            aborts: aborts.clone(),
        };
        let issue = IssueId::new("m-1");
        let said = check(FailureMode::Continue).run(&issue).await;
        assert!(
            said.contains("exit 1") && said.contains("continue"),
            "{said}"
        );
        assert!(
            said_abort.try_recv().is_err(),
            "continue does not stop the run"
        );
        let said = check(FailureMode::Abort).run(&issue).await;
        assert!(said.contains("run stops"), "{said}");
        assert_eq!(
            said_abort.try_recv().ok(),
            Some(TriggerStop::Abort {
                command: "exit 1".into()
            })
        );
    }

    /// A fixer the run's budget cuts (or keeps from starting) is no verdict
    /// on the code: the trigger ends for the budget, not as an abort (which
    /// would turn a budget stop into exit 3).
    #[tokio::test]
    async fn a_fixer_cut_at_the_run_budget_ends_the_trigger_for_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let collect = Arc::new(Collect::default());
        let events: Arc<dyn EventSink> = collect.clone();
        let ledger = Arc::new(RunLedger::new(mala_domain::Spend {
            max_cost_usd: Some(1.0),
            max_tokens: None,
        }));
        let mut cut = MockAgentBackend::new();
        // The first fixer spends the whole budget; the mock allows one start.
        cut.expect_start().times(1).returning(|_, _| {
            let mut session = mala_core::MockAgentSession::new();
            session.expect_turn().returning(|_| {
                Ok(mala_core::TurnOutcome {
                    status: mala_core::TurnStatus::BudgetReached,
                    total_cost_usd: 1.0,
                    ..mala_core::TurnOutcome::completed("")
                })
            });
            session.expect_close().returning(|| Ok(()));
            Ok(Box::new(session))
        });
        let metered = mala_pipeline::Metered::new(Arc::new(cut), Arc::clone(&ledger));
        let site = TriggerSite {
            ledger: Arc::clone(&ledger),
            ..site(dir.path(), Arc::new(metered), &events)
        };
        let remediate = Trigger {
            failure_mode: FailureMode::Remediate,
            max_retries: 3,
            commands: vec![command("check", "exit 1")],
            code_review: None,
        };
        let outcome = run_trigger("periodic", &remediate, &site).await;
        assert!(
            matches!(&outcome, TriggerOutcome::BudgetReached { spent } if spent.contains("$1.00")),
            "{outcome:?}"
        );
        assert_eq!(
            outcome.clone().stop(),
            None,
            "the budget's drain ends the run"
        );
        let said = collect.0.lock().unwrap().join("\n");
        assert!(
            said.contains("`exit 1` still fails; its remediation stopped at the run's budget"),
            "what still fails is said: {said}"
        );
        // Once reached, no fixer starts at all.
        let again = run_trigger("periodic", &remediate, &site).await;
        assert!(
            matches!(again, TriggerOutcome::BudgetReached { .. }),
            "{again:?}"
        );
    }
}
