//! The worker boundary: whatever stops an issue's work (the scheduler asking,
//! a panic inside the runner, or the worker's task being dropped), the issue
//! still ends through the runner's one `finalize`: the agent's session is
//! killed, its locks released, its staging undone, and an outcome emitted.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// Why the scheduler stops an issue's worker before the issue ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The agent is a deadlock's victim: it gives way, and its issue runs
    /// again once the blocker closes.
    Deadlock,
    /// The run is being stopped (Ctrl-C); the claim stays for the next run.
    Interrupted,
    /// The user stopped this one issue (the dashboard); the claim stays for
    /// the next run, as for a Ctrl-C.
    Asked,
}

impl StopReason {
    /// What the outcome says.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Deadlock => "gave way in a deadlock; it runs again once its blocker closes",
            Self::Interrupted => "stopped before the end: the run was interrupted",
            Self::Asked => {
                "stopped by the user from the dashboard; its claim is kept for the next run"
            }
        }
    }
}

/// The scheduler's end of a worker's stop line.
#[derive(Debug)]
pub struct WorkerStop(watch::Sender<Option<StopReason>>);

impl WorkerStop {
    /// Asks the worker to stop now. The first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }
}

/// The worker's end of its stop line.
#[derive(Debug)]
pub struct StopSignal(Option<watch::Receiver<Option<StopReason>>>);

impl StopSignal {
    /// A signal nobody can raise: the issue runs until it ends by itself.
    pub fn never() -> Self {
        Self(None)
    }

    /// Resolves when the worker is asked to stop; never, once the
    /// scheduler's end is gone without asking.
    pub(crate) async fn stopped(&mut self) -> StopReason {
        let Some(receiver) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        // Copied out at once: the borrow must not live across an await.
        let reason = receiver
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.unwrap_or(StopReason::Interrupted));
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

/// A new stop line for one worker.
pub fn stop_line() -> (WorkerStop, StopSignal) {
    let (sender, receiver) = watch::channel(None);
    (WorkerStop(sender), StopSignal(Some(receiver)))
}

/// A future whose panic becomes an `Err` with the panic's payload, so the
/// code around it can still finalize.
pub(crate) struct CatchUnwind<F>(Pin<Box<F>>);

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        Self(Box::pin(future))
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        // The runner's state is plain data that finalize only reads; nothing
        // it holds is left half-changed in a way finalize could trust wrongly.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_stop_reason_wins_and_wakes_the_worker() {
        let (stop, mut signal) = stop_line();
        stop.stop(StopReason::Deadlock);
        stop.stop(StopReason::Interrupted);
        assert_eq!(signal.stopped().await, StopReason::Deadlock);
    }

    #[tokio::test]
    async fn a_dropped_stop_end_never_stops_the_worker() {
        let (stop, mut signal) = stop_line();
        drop(stop);
        let raced = tokio::select! {
            biased;
            _ = signal.stopped() => "stopped",
            () = std::future::ready(()) => "still running",
        };
        assert_eq!(raced, "still running");
    }

    #[tokio::test]
    async fn a_panic_inside_becomes_an_error_with_its_message() {
        let caught = CatchUnwind::new(async { panic!("the runner's bug: {}", 42) }).await;
        let payload: Result<(), String> = caught.map_err(|p| panic_message(p.as_ref()));
        assert_eq!(payload, Err("the runner's bug: 42".to_owned()));
    }
}
