//! The scheduler's part in environment faults: the run's pause, and the
//! decision to stop. The scheduler owns this state; runners reach it only
//! through their `FaultLine` (reports in, the run's gate out).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mala_core::{EnvFault, Event, EventSink};
use mala_domain::{FaultAction, FaultContext, respond_to_fault};
use mala_pipeline::{FaultDesk, FaultReport, GoOn, RunGate};
use tokio::sync::oneshot;

/// How long the run may pause, and how it backs off with no reset time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PausePolicy {
    /// The longest one stretch of pauses may last (`--max-pause`).
    pub max_pause: Duration,
    /// The first pause when the API gives no reset time; it doubles after.
    pub backoff: Duration,
}

impl Default for PausePolicy {
    fn default() -> Self {
        Self {
            max_pause: Duration::from_secs(6 * 3600),
            backoff: Duration::from_secs(10),
        }
    }
}

/// A pause in progress.
#[derive(Debug)]
struct Pause {
    until: DateTime<Utc>,
    /// Runners waiting for the pause to end.
    waiting: Vec<oneshot::Sender<GoOn>>,
}

/// The run's fault state.
#[derive(Debug)]
pub(crate) struct Pauses {
    desk: Option<FaultDesk>,
    policy: PausePolicy,
    pause: Option<Pause>,
    start_failures_in_row: u32,
    in_a_row: u32,
    /// When the current stretch of back-to-back pauses began; it ends when
    /// an issue gets somewhere, not when one pause does.
    stretch_since: Option<DateTime<Utc>>,
    /// Why the environment stopped the run.
    pub(crate) stopped: Option<String>,
}

impl Pauses {
    pub(crate) fn new(desk: Option<FaultDesk>, policy: PausePolicy) -> Self {
        Self {
            desk,
            policy,
            pause: None,
            start_failures_in_row: 0,
            in_a_row: 0,
            stretch_since: None,
            stopped: None,
        }
    }

    /// Wakes when the run's budget is reached; pending without a desk.
    pub(crate) fn budget_crossing(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.desk.as_ref().map(|desk| desk.ledger.crossing())
    }

    /// Why the run's budget is reached; `None` while it is not.
    pub(crate) fn budget_reached(&self) -> Option<String> {
        self.desk.as_ref()?.ledger.reached()
    }

    /// Says the run's budget is reached, when it is.
    pub(crate) fn say_budget(&self, events: &dyn EventSink) {
        if let Some(spent) = self.budget_reached() {
            events.emit(&Event::BudgetReached {
                scope: "run".into(),
                issue: None,
                spent,
            });
        }
    }

    /// When the pause ends; `None` when the run is not paused.
    pub(crate) fn until(&self) -> Option<DateTime<Utc>> {
        self.pause.as_ref().map(|p| p.until)
    }

    /// The next report, once one comes; `None` when no runner can report.
    pub(crate) async fn next_report(&mut self) -> Option<FaultReport> {
        match &mut self.desk {
            Some(desk) => desk.reports.recv().await,
            None => std::future::pending().await,
        }
    }

    /// A report already sent, without waiting.
    pub(crate) fn try_report(&mut self) -> Option<FaultReport> {
        self.desk.as_mut()?.reports.try_recv().ok()
    }

    /// An issue made progress (closed or failed on its own): the faults
    /// before it were not in a row.
    pub(crate) fn issue_worked(&mut self) {
        self.start_failures_in_row = 0;
        if self.pause.is_none() {
            self.in_a_row = 0;
            self.stretch_since = None;
        }
    }

    /// Decides about one report: pause, stop, or carry on.
    pub(crate) fn on_report(
        &mut self,
        report: FaultReport,
        now: DateTime<Utc>,
        events: &dyn EventSink,
    ) {
        if matches!(report.fault, EnvFault::CouldNotStart) {
            self.start_failures_in_row += 1;
        }
        if self.stopped.is_some() {
            answer(report.reply, GoOn::GiveBack);
            return;
        }
        match self.respond(&report.fault, &report.message, now) {
            FaultAction::Stop { reason } => {
                answer(report.reply, GoOn::GiveBack);
                self.stop(reason, events);
            }
            FaultAction::Pause { until } => {
                let reason = format!("{}: {}", report.fault.summary(), report.message);
                self.pause_until(until, &reason, report.reply, now, events);
            }
            FaultAction::CarryOn => answer(report.reply, GoOn::GiveBack),
        }
    }

    /// What the run does about `fault` at `now`, by its faults so far.
    pub(crate) fn respond(
        &self,
        fault: &EnvFault,
        message: &str,
        now: DateTime<Utc>,
    ) -> FaultAction {
        let ctx = FaultContext {
            now,
            start_failures_in_row: self.start_failures_in_row,
            paused_since: self.stretch_since,
            pauses_in_row: self.in_a_row,
            max_pause: self.policy.max_pause,
            backoff: self.policy.backoff,
        };
        respond_to_fault(fault, message, &ctx)
    }

    /// Pauses the run until `until` (or keeps a longer pause), for `reason`;
    /// `waiting` carries on when it ends.
    pub(crate) fn pause_until(
        &mut self,
        until: DateTime<Utc>,
        reason: &str,
        waiting: Option<oneshot::Sender<GoOn>>,
        now: DateTime<Utc>,
        events: &dyn EventSink,
    ) {
        let new = self.pause.is_none();
        self.stretch_since.get_or_insert(now);
        let pause = self.pause.get_or_insert_with(|| Pause {
            until,
            waiting: Vec::new(),
        });
        let longer = until > pause.until;
        pause.until = pause.until.max(until);
        pause.waiting.extend(waiting);
        if new || longer {
            let until = pause.until;
            self.set_gate(RunGate::Paused);
            events.emit(&Event::RunPaused {
                reason: reason.to_owned(),
                until,
            });
        }
    }

    /// The pause's time is up: the waiting runners carry on.
    pub(crate) fn pause_over(&mut self, events: &dyn EventSink) {
        let Some(pause) = self.pause.take() else {
            return;
        };
        self.in_a_row += 1;
        for waiting in pause.waiting {
            answer(Some(waiting), GoOn::Resume);
        }
        if self.stopped.is_none() {
            self.set_gate(RunGate::Open);
            events.emit(&Event::RunResumed);
        }
    }

    /// The run stops for the environment: no new turns, waiting runners give
    /// their issues back.
    pub(crate) fn stop(&mut self, reason: String, events: &dyn EventSink) {
        events.emit(&Event::Warning {
            message: format!("the run stops: {reason}"),
        });
        self.stopped.get_or_insert(reason);
        self.give_back_waiting();
        self.set_gate(RunGate::Stopping);
    }

    /// The run drains (Ctrl-C): runners waiting out a pause give their
    /// issues back instead of waiting for it to end.
    pub(crate) fn give_back_waiting(&mut self) {
        if let Some(pause) = self.pause.take() {
            for waiting in pause.waiting {
                answer(Some(waiting), GoOn::GiveBack);
            }
            // The others would meet the same limit at their next turn.
            self.set_gate(RunGate::Stopping);
        }
    }

    fn set_gate(&self, gate: RunGate) {
        if let Some(desk) = &self.desk {
            desk.gate.send_replace(gate);
        }
    }
}

fn answer(reply: Option<oneshot::Sender<GoOn>>, go_on: GoOn) {
    if let Some(reply) = reply {
        let _ = reply.send(go_on);
    }
}
