//! The line between a runner and the run for environment faults. The
//! runner reports a fault and, for a limit, waits for the run's answer; the
//! run (the scheduler, which owns the pause) decides whether to pause, stop
//! or carry on. Before each turn a runner waits out a pause.

use std::sync::{Arc, Mutex};

use mala_core::{AgentEvent, AgentObserver, EnvFault, IssueId};
use mala_domain::{Spend, Spent, budget_reached};
use tokio::sync::{mpsc, oneshot, watch};

/// A fault, as a runner reports it.
#[derive(Debug)]
pub struct FaultReport {
    pub issue: IssueId,
    pub fault: EnvFault,
    /// What the agent's error said.
    pub message: String,
    /// Where the run answers a limit: go on once the pause is over, or give
    /// the issue back. `None` for faults the runner gives its issue back for
    /// at once (credentials, a start that failed).
    pub reply: Option<oneshot::Sender<GoOn>>,
}

/// The run's answer to a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoOn {
    /// The pause is over: carry on in the same session.
    Resume,
    /// The run is stopping: give the issue back untouched.
    GiveBack,
}

/// Whether turns may start, as the run says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunGate {
    Open,
    Paused,
    /// The environment stopped the run: no new turns.
    Stopping,
}

/// What the whole run has spent against its budget. Runners add each
/// turn's spend; the scheduler reads whether the budget is reached.
#[derive(Debug)]
pub struct RunLedger {
    limit: Spend,
    /// What has been spent; whoever follows it (the dashboard) is woken.
    spent: watch::Sender<Spent>,
    /// Becomes true once the budget is reached.
    crossed: watch::Sender<bool>,
}

impl Default for RunLedger {
    fn default() -> Self {
        Self::new(Spend::default())
    }
}

impl RunLedger {
    pub fn new(limit: Spend) -> Self {
        Self {
            limit,
            spent: watch::Sender::new(Spent::default()),
            crossed: watch::Sender::new(false),
        }
    }

    /// Wakes when more was spent, with the run's spend so far.
    pub fn spending(&self) -> watch::Receiver<Spent> {
        self.spent.subscribe()
    }

    /// Wakes when the budget is reached.
    pub fn crossing(&self) -> watch::Receiver<bool> {
        self.crossed.subscribe()
    }

    pub fn limit(&self) -> Spend {
        self.limit
    }

    pub fn spent(&self) -> Spent {
        *self.spent.borrow()
    }

    pub(crate) fn add(&self, cost_usd: f64, tokens: u64) {
        self.spent.send_modify(|spent| spent.add(cost_usd, tokens));
        if self.reached().is_some() {
            self.crossed
                .send_if_modified(|crossed| !std::mem::replace(crossed, true));
        }
    }

    /// Why the run's budget is reached; `None` while it is not.
    pub fn reached(&self) -> Option<String> {
        budget_reached(&self.limit, &self.spent())
    }
}

/// Running turns in the run's ledger: a turn's usage goes in as the
/// backend reports it, so a run budget in tokens cuts running turns where
/// they are; the turn's final figure settles it.
///
/// Reports count only for the turn that is running, in the session that is
/// current: a session's reports carry the ticket it was given at its start
/// ([`TurnMeter::new_session`]), so what a dropped session's reader still
/// had to say, or a report after its turn was settled or cut, counts for
/// nothing.
#[derive(Debug)]
pub(crate) struct TurnMeter {
    ledger: Arc<RunLedger>,
    state: Mutex<Metering>,
    /// The running turn's tokens so far, for an issue's own budget.
    so_far: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Metering {
    /// The current session's ticket.
    session: u64,
    /// Whether a turn is running in it.
    open: bool,
    /// Tokens of the running turn already in the ledger.
    counted: u64,
}

impl TurnMeter {
    pub(crate) fn new(ledger: Arc<RunLedger>) -> Self {
        Self {
            ledger,
            state: Mutex::default(),
            so_far: watch::Sender::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Metering> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session is current: the observer to start it with, which
    /// meters its usage reports (under the session's ticket) and passes
    /// every event on to `inner`.
    pub(crate) fn new_session(
        self: &Arc<Self>,
        inner: Arc<dyn AgentObserver>,
    ) -> Arc<dyn AgentObserver> {
        let mut state = self.state();
        state.session += 1;
        state.open = false;
        Arc::new(MeteringObserver {
            inner,
            meter: Arc::clone(self),
            ticket: state.session,
        })
    }

    /// A turn starts in the current session.
    pub(crate) fn begin(&self) {
        let mut state = self.state();
        state.open = true;
        state.counted = 0;
        self.so_far.send_replace(0);
    }

    /// Session `ticket`'s running turn has used `tokens` so far.
    pub(crate) fn running(&self, ticket: u64, tokens: u64) {
        let mut state = self.state();
        if !state.open || state.session != ticket {
            return;
        }
        let more = tokens.saturating_sub(state.counted);
        state.counted += more;
        self.so_far.send_replace(state.counted);
        if more > 0 {
            self.ledger.add(0.0, more);
        }
    }

    /// Watches the running turn's tokens.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.so_far.subscribe()
    }

    /// The turn ended having spent `cost_usd` and `tokens` by the backend's
    /// final figure; returns the tokens the ledger has of it (the larger of
    /// that and what its reports said), for the issue's own count.
    pub(crate) fn settle(&self, cost_usd: f64, tokens: u64) -> u64 {
        let mut state = self.state();
        state.open = false;
        let counted = std::mem::take(&mut state.counted);
        self.ledger.add(cost_usd, tokens.saturating_sub(counted));
        tokens.max(counted)
    }

    /// The turn was cut, or failed, before its end: what the ledger has of
    /// it, which is all that is known.
    pub(crate) fn cut(&self) -> u64 {
        let mut state = self.state();
        state.open = false;
        std::mem::take(&mut state.counted)
    }
}

/// One session's events on their way: its usage into the meter, under its
/// ticket, then every event to where it was going.
struct MeteringObserver {
    inner: Arc<dyn AgentObserver>,
    meter: Arc<TurnMeter>,
    ticket: u64,
}

impl AgentObserver for MeteringObserver {
    fn on_event(&self, event: &AgentEvent) {
        if let AgentEvent::TurnUsage { usage } = event {
            self.meter.running(self.ticket, usage.total());
        }
        self.inner.on_event(event);
    }
}

#[cfg(test)]
mod meter_tests {
    use super::*;

    #[test]
    fn reports_count_once_and_only_for_the_running_turn_of_the_current_session() {
        struct Nowhere;
        impl AgentObserver for Nowhere {
            fn on_event(&self, _: &AgentEvent) {}
        }
        let used = |tokens| AgentEvent::TurnUsage {
            usage: mala_core::TokenUsage {
                input_tokens: tokens,
                ..mala_core::TokenUsage::default()
            },
        };
        let ledger = Arc::new(RunLedger::default());
        let meter = Arc::new(TurnMeter::new(Arc::clone(&ledger)));
        let first = meter.new_session(Arc::new(Nowhere));
        first.on_event(&used(500));
        assert_eq!(ledger.spent().tokens, 0, "no turn is running");
        meter.begin();
        first.on_event(&used(100));
        first.on_event(&used(100));
        first.on_event(&used(150));
        assert_eq!(*meter.watch().borrow(), 150);
        assert_eq!(ledger.spent().tokens, 150);
        // The turn is cut; its session's reader still has a line to give.
        assert_eq!(meter.cut(), 150);
        first.on_event(&used(180));
        assert_eq!(
            ledger.spent().tokens,
            150,
            "a report after the cut counts for nothing"
        );
        let second = meter.new_session(Arc::new(Nowhere));
        meter.begin();
        assert_eq!(
            *meter.watch().borrow(),
            0,
            "the next turn starts from nothing"
        );
        first.on_event(&used(400));
        assert_eq!(
            ledger.spent().tokens,
            150,
            "the dropped session's report does not count"
        );
        second.on_event(&used(40));
        // The backend's final figure settles the turn, whichever is larger.
        assert_eq!(meter.settle(0.5, 60), 60);
        assert_eq!(ledger.spent().tokens, 210);
        meter.begin();
        second.on_event(&used(90));
        assert_eq!(
            meter.settle(0.0, 70),
            90,
            "reports past the final figure stay counted"
        );
        assert_eq!(ledger.spent().tokens, 300);
    }
}

/// A runner's end of the line.
#[derive(Debug, Clone)]
pub struct FaultLine {
    reports: Option<mpsc::UnboundedSender<FaultReport>>,
    gate: watch::Receiver<RunGate>,
    pub(crate) ledger: Arc<RunLedger>,
}

/// The run's end of the line.
#[derive(Debug)]
pub struct FaultDesk {
    pub reports: mpsc::UnboundedReceiver<FaultReport>,
    pub gate: watch::Sender<RunGate>,
    pub ledger: Arc<RunLedger>,
}

/// A line and its desk, for a run that spends through `ledger`.
pub fn fault_line(ledger: Arc<RunLedger>) -> (FaultLine, FaultDesk) {
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(RunGate::Open);
    (
        FaultLine {
            reports: Some(reports_tx),
            gate: gate_rx,
            ledger: Arc::clone(&ledger),
        },
        FaultDesk {
            reports,
            gate,
            ledger,
        },
    )
}

impl FaultLine {
    /// A line with no run behind it (a runner on its own): the gate stays
    /// open and every limit gives the issue back.
    pub fn detached() -> Self {
        let (_, gate) = watch::channel(RunGate::Open);
        Self {
            reports: None,
            gate,
            ledger: Arc::default(),
        }
    }

    /// What the run has spent so far.
    pub fn spent(&self) -> Spent {
        self.ledger.spent()
    }

    /// Tells the run; the issue is given back whatever it answers.
    pub(crate) fn report(&self, issue: &IssueId, fault: EnvFault, message: &str) {
        if let Some(reports) = &self.reports {
            let _ = reports.send(FaultReport {
                issue: issue.clone(),
                fault,
                message: message.to_owned(),
                reply: None,
            });
        }
    }

    /// Tells the run about a limit and waits for its answer. A run that is
    /// gone answers `GiveBack`.
    pub(crate) async fn wait_out(&self, issue: &IssueId, fault: EnvFault, message: &str) -> GoOn {
        let Some(reports) = &self.reports else {
            return GoOn::GiveBack;
        };
        let (reply, answer) = oneshot::channel();
        let report = FaultReport {
            issue: issue.clone(),
            fault,
            message: message.to_owned(),
            reply: Some(reply),
        };
        if reports.send(report).is_err() {
            return GoOn::GiveBack;
        }
        answer.await.unwrap_or(GoOn::GiveBack)
    }

    /// Waits while the run is paused; `false` when it is stopping.
    pub(crate) async fn turn_may_start(&self) -> bool {
        let mut gate = self.gate.clone();
        match gate.wait_for(|g| *g != RunGate::Paused).await {
            Ok(open) => *open == RunGate::Open,
            // The run is gone: nothing holds turns back any more.
            Err(_) => true,
        }
    }
}
