//! The run's preflight, before anything is claimed: one short session whose
//! one turn asks the agent to run a canary command that mala's guard always
//! refuses. It proves, at the cost of one short turn, what no issue should
//! pay to find out: the agent starts here, the model answers (credentials,
//! network, limits), and the guard sees the agent's commands and its
//! refusal reaches the agent. A limit met here pauses before the run as it
//! would during it; anything else stops the run with the tracker untouched.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentEvent, AgentObserver, Clock, EventSink,
    SessionRequest, TurnStatus,
};
use mala_domain::{Blame, FaultAction, PreflightFailure, blame, judge_preflight, preflight_prompt};
use tokio::sync::watch;

use crate::orchestrator::{RunError, Stage, stopped};
use crate::pauses::Pauses;

/// Why the preflight stopped the run.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The agent could not start, or its turn failed (the kind says why).
    #[error("preflight: {0}")]
    Agent(AgentError),
    /// The turn ended, and did not prove the guard.
    #[error("preflight: {0}")]
    Unproven(PreflightFailure),
    /// A limit outlasts `--max-pause`, or credentials or the account were
    /// refused: the reason, with the fix.
    #[error("preflight: {0}")]
    Environment(String),
}

/// How a preflight that stopped no run ended.
pub(crate) enum Proven {
    /// The agent works.
    Ready,
    /// A Ctrl-C came first, at this stage.
    Stopped(Stage),
}

/// What the preflight needs around it.
pub(crate) struct Preflight<'a> {
    pub(crate) backend: &'a dyn AgentBackend,
    pub(crate) cwd: &'a Path,
    pub(crate) run_id: &'a str,
    pub(crate) events: &'a dyn EventSink,
    pub(crate) clock: &'a dyn Clock,
}

impl Preflight<'_> {
    /// Runs the preflight, waiting out limits within `--max-pause`. Its
    /// pauses are the run's: a limit met later carries on the same stretch.
    pub(crate) async fn run(
        &self,
        pauses: &mut Pauses,
        stage: &mut watch::Receiver<Stage>,
    ) -> Result<Proven, RunError> {
        loop {
            let tried = tokio::select! {
                tried = self.try_once() => tried,
                now = stopped(stage) => return Ok(Proven::Stopped(now)),
            };
            let Err(error) = tried else {
                // The API answered: the pauses before were not in a row with any to come.
                pauses.issue_worked();
                return Ok(Proven::Ready);
            };
            let PreflightError::Agent(agent_error) = &error else {
                return Err(error.into());
            };
            let Blame::Environment(fault) = blame(&agent_error.kind) else {
                return Err(error.into());
            };
            // An agent that cannot start, or an API unreachable at the
            // start (after the CLI's own retries), is a setup to fix, not a
            // moment to wait out, unlike a limit or an overload.
            if matches!(
                agent_error.kind,
                AgentErrorKind::Network | AgentErrorKind::CouldNotStart
            ) {
                return Err(error.into());
            }
            let now = self.clock.now();
            let until = match pauses.respond(&fault, &agent_error.message, now) {
                FaultAction::Pause { until } => until,
                FaultAction::Stop { reason } => {
                    return Err(PreflightError::Environment(reason).into());
                }
                FaultAction::CarryOn => return Err(error.into()),
            };
            let reason = format!("{}: {}", fault.summary(), agent_error.message);
            pauses.pause_until(until, &reason, None, now, self.events);
            let wait = (until - self.clock.now()).to_std().unwrap_or_default();
            tokio::select! {
                () = self.clock.sleep(wait) => pauses.pause_over(self.events),
                now = stopped(stage) => return Ok(Proven::Stopped(now)),
            }
        }
    }

    /// One session, one canary turn, then close.
    async fn try_once(&self) -> Result<(), PreflightError> {
        let seen = Arc::new(Seen::default());
        let agent = mala_domain::preflight_agent(self.run_id);
        let mut request = SessionRequest::new(agent, self.cwd.to_path_buf());
        request.probe = true;
        let observer: Arc<dyn AgentObserver> = seen.clone();
        let mut session = self
            .backend
            .start(request, observer)
            .await
            .map_err(PreflightError::Agent)?;
        let turn = session.turn(&preflight_prompt()).await;
        // The session's process goes whatever the turn did.
        let _ = session.close().await;
        let outcome = turn.map_err(PreflightError::Agent)?;
        let ended = match &outcome.status {
            TurnStatus::Completed => {
                return judge_preflight(&seen.take()).map_err(PreflightError::Unproven);
            }
            TurnStatus::BudgetReached => {
                return Err(PreflightError::Environment(
                    "the run's budget left too little for the preflight's one short turn; raise \
                     --max-cost (budget.run.max_cost_usd)"
                        .to_owned(),
                ));
            }
            TurnStatus::Failed { reason } => format!("failed: {reason}"),
            TurnStatus::Interrupted => "was interrupted".to_owned(),
            TurnStatus::MaxTurns => "ran out of turns (max_turns)".to_owned(),
        };
        Err(PreflightError::Agent(AgentError::new(
            AgentErrorKind::Crashed,
            format!("the probe's turn {ended}"),
        )))
    }
}

/// The preflight turn's events, kept for judging.
#[derive(Default)]
struct Seen(Mutex<Vec<AgentEvent>>);

impl Seen {
    fn take(&self) -> Vec<AgentEvent> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl AgentObserver for Seen {
    fn on_event(&self, event: &AgentEvent) {
        if matches!(
            event,
            AgentEvent::ToolUse { .. }
                | AgentEvent::ToolResult { .. }
                | AgentEvent::ToolDenied { .. }
        ) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
        }
    }
}
