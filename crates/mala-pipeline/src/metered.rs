//! Sessions no runner counts (reviewers, the epic verifier, fixers) still
//! spend the run's money: `Metered` puts a backend's every turn in the
//! run's ledger and starts each session with what the run has left.

use std::sync::Arc;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentObserver, AgentSession, SessionId,
    SessionRequest, TurnOutcome,
};
use mala_domain::dollars_left;

use crate::RunLedger;
use crate::faults::TurnMeter;

/// A backend whose sessions count in the run's budget.
pub struct Metered {
    inner: Arc<dyn AgentBackend>,
    ledger: Arc<RunLedger>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Metered {
    pub fn new(inner: Arc<dyn AgentBackend>, ledger: Arc<RunLedger>) -> Self {
        Self { inner, ledger }
    }
}

#[async_trait]
impl AgentBackend for Metered {
    async fn start(
        &self,
        mut request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError> {
        if let Some(spent) = self.ledger.reached() {
            // Not the session's fault, and not a verdict: a stop.
            return Err(AgentError::new(
                AgentErrorKind::Cancelled,
                format!("the run's budget was reached ({spent})"),
            ));
        }
        let left = dollars_left(&[(&self.ledger.limit(), &self.ledger.spent())]);
        request.max_cost_usd = match (request.max_cost_usd, left) {
            (Some(asked), Some(left)) => Some(asked.min(left)),
            (asked, left) => asked.or(left),
        };
        let meter = Arc::new(TurnMeter::new(Arc::clone(&self.ledger)));
        let observer = meter.new_session(observer);
        let inner = self.inner.start(request, observer).await?;
        Ok(Box::new(MeteredSession {
            inner,
            meter,
            counted_usd: 0.0,
        }))
    }

    async fn stop_all(&self) {
        self.inner.stop_all().await;
    }

    fn kill_all(&self) {
        self.inner.kill_all();
    }
}

struct MeteredSession {
    inner: Box<dyn AgentSession>,
    meter: Arc<TurnMeter>,
    /// The session's running total already in the ledger.
    counted_usd: f64,
}

#[async_trait]
impl AgentSession for MeteredSession {
    fn session_id(&self) -> Option<SessionId> {
        self.inner.session_id()
    }

    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError> {
        self.meter.begin();
        let outcome = match self.inner.turn(prompt).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // What the turn used before it failed stays counted.
                self.meter.cut();
                return Err(error);
            }
        };
        // The backend reports the session's running total.
        let cost = (outcome.total_cost_usd - self.counted_usd).max(0.0);
        self.counted_usd = self.counted_usd.max(outcome.total_cost_usd);
        self.meter.settle(cost, outcome.usage.total());
        Ok(outcome)
    }

    async fn interrupt(&mut self) -> Result<(), AgentError> {
        self.inner.interrupt().await
    }

    async fn close(&mut self) -> Result<(), AgentError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::{AgentId, MockAgentBackend, MockAgentSession, TokenUsage};
    use mala_domain::Spend;

    fn outcome(total_cost_usd: f64, tokens: u64) -> TurnOutcome {
        TurnOutcome {
            usage: TokenUsage {
                input_tokens: tokens,
                ..TokenUsage::default()
            },
            total_cost_usd,
            ..TurnOutcome::completed("")
        }
    }

    struct Quiet;
    impl AgentObserver for Quiet {
        fn on_event(&self, _: &mala_core::AgentEvent) {}
    }

    fn request() -> SessionRequest {
        SessionRequest::new(AgentId::new("review-x"), "/repo")
    }

    #[tokio::test]
    async fn each_turn_adds_what_it_spent_and_a_session_starts_with_what_is_left() {
        let ledger = Arc::new(RunLedger::new(Spend {
            max_cost_usd: Some(1.0),
            max_tokens: None,
        }));
        ledger.add(0.25, 0);
        let mut backend = MockAgentBackend::new();
        backend
            .expect_start()
            .withf(|request, _| request.max_cost_usd == Some(0.75))
            .returning(|_, _| {
                let mut session = MockAgentSession::new();
                let mut totals = vec![outcome(0.5, 200), outcome(0.2, 100)];
                session
                    .expect_turn()
                    .returning(move |_| Ok(totals.remove(0)));
                Ok(Box::new(session))
            });
        let metered = Metered::new(Arc::new(backend), Arc::clone(&ledger));
        let mut session = metered.start(request(), Arc::new(Quiet)).await.unwrap();
        session.turn("one").await.unwrap();
        session.turn("two").await.unwrap();
        // $0.25 before, then the first turn's $0.50; a running total lower
        // than one already counted adds nothing.
        let spent = ledger.spent();
        assert!((spent.cost_usd - 0.75).abs() < 1e-9, "{spent:?}");
        assert_eq!(spent.tokens, 300);
    }

    #[tokio::test]
    async fn no_session_starts_once_the_run_budget_is_reached() {
        let ledger = Arc::new(RunLedger::new(Spend {
            max_cost_usd: Some(1.0),
            max_tokens: None,
        }));
        ledger.add(1.0, 0);
        let metered = Metered::new(Arc::new(MockAgentBackend::new()), ledger);
        let error = metered
            .start(request(), Arc::new(Quiet))
            .await
            .err()
            .expect("refused");
        assert_eq!(error.kind, AgentErrorKind::Cancelled);
        assert!(error.message.contains("budget"), "{error}");
    }
}
