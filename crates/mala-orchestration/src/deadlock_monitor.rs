//! The deadlock monitor: one task that follows the lock table's events,
//! keeps the wait-for graph, and breaks each deadlock as it closes.
//!
//! The victim's session is the scheduler's to cancel: the monitor names the
//! victim on `victims` first, then releases its locks and records the
//! deadlock in the tracker.

use std::sync::Arc;

use mala_core::{Event, EventSink, IssueTracker, LockEvent, LockTable};
use mala_domain::{WaitForGraph, parse_agent_name};
use mala_pipeline::{Resolution, resolve_deadlock};
use tokio::sync::mpsc;

/// What the monitor tells the scheduler about a deadlock, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlockNews {
    /// Stop this agent now: it gives way (its locks are released next).
    Stop(Resolution),
    /// The deadlock is recorded in the tracker (the victim's issue depends
    /// on the blocker's and is open again), or recording it failed: plan
    /// again.
    Recorded(Resolution),
}

/// Follows `events` until the lock table is dropped, and passes each one
/// on to the run's `sink` (the dashboard draws the locks from them).
pub async fn run_deadlock_monitor(
    mut events: mpsc::UnboundedReceiver<LockEvent>,
    tracker: Arc<dyn IssueTracker>,
    locks: Arc<dyn LockTable>,
    victims: mpsc::UnboundedSender<DeadlockNews>,
    sink: Arc<dyn EventSink>,
) {
    let mut graph = WaitForGraph::new();
    while let Some(event) = events.recv().await {
        sink.emit(&Event::Lock {
            event: event.clone(),
        });
        let deadlock = match event {
            LockEvent::Acquired { agent, key, .. } => {
                graph.acquired(&agent, &key);
                None
            }
            LockEvent::Released { agent, key, .. } => {
                graph.released(&agent, &key);
                None
            }
            LockEvent::StoppedWaiting { agent } => {
                graph.stopped_waiting(&agent);
                None
            }
            LockEvent::Waiting { agent, on } => {
                let edges: Vec<_> = on.into_iter().map(|t| (t.key, t.holder)).collect();
                graph.waiting(&agent, &edges)
            }
        };
        let Some(deadlock) = deadlock else {
            continue;
        };
        tracing::warn!(
            victim = %deadlock.victim,
            holder = %deadlock.holder,
            cycle = ?deadlock.cycle,
            "deadlock between agents; the youngest gives way"
        );
        sink.emit(&Event::DeadlockBroken {
            victim: deadlock.victim.clone(),
            holder: deadlock.holder.clone(),
            cycle: deadlock.cycle.clone(),
        });
        // The victim is out of the graph at once, so its own events cannot re-report it.
        graph.remove_agent(&deadlock.victim);
        let issue_of = |agent: &mala_core::AgentId| parse_agent_name(agent).map(|(issue, _)| issue);
        // The scheduler stops the victim first: once its locks are released
        // the others move on, and a victim still waiting would take the
        // next lock that frees and work on without the ones it gave up.
        let stop = Resolution {
            victim: deadlock.victim.clone(),
            victim_issue: issue_of(&deadlock.victim),
            blocker_issue: issue_of(&deadlock.holder),
            released: Vec::new(),
        };
        let _ = victims.send(DeadlockNews::Stop(stop.clone()));
        let recorded = match resolve_deadlock(&deadlock, issue_of, tracker.as_ref(), locks.as_ref())
            .await
        {
            Ok(resolution) => resolution,
            Err(error) => {
                tracing::error!(%error, victim = %deadlock.victim, "could not record the deadlock");
                stop
            }
        };
        let _ = victims.send(DeadlockNews::Recorded(recorded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use mala_core::{AgentId, DependencyKind, MockIssueTracker};
    use mala_infra::FileLockTable;

    /// The monitor sees every lock event; the test also learns when a wait
    /// is on record, so a second wait surely comes after the first.
    fn tee_waits(
        mut table_events: mpsc::UnboundedReceiver<LockEvent>,
    ) -> (
        mpsc::UnboundedReceiver<LockEvent>,
        mpsc::UnboundedReceiver<AgentId>,
    ) {
        let (to_monitor, inbox) = mpsc::unbounded_channel();
        let (waits_tx, waits) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = table_events.recv().await {
                if let LockEvent::Waiting { agent, .. } = &event {
                    let _ = waits_tx.send(agent.clone());
                }
                let _ = to_monitor.send(event);
            }
        });
        (inbox, waits)
    }

    #[tokio::test]
    async fn two_agents_waiting_on_each_other_are_untangled() {
        let dir = tempfile::tempdir().unwrap();
        let (events, table_events) = mpsc::unbounded_channel();
        let table = Arc::new(
            FileLockTable::new(dir.path().join("locks"), dir.path())
                .unwrap()
                .with_events(events),
        );
        let (inbox, mut waits) = tee_waits(table_events);
        let mut tracker = MockIssueTracker::new();
        tracker
            .expect_add_dependency()
            .withf(|issue, on, kind| {
                issue.as_str() == "m-2" && on.as_str() == "m-1" && *kind == DependencyKind::Blocks
            })
            .times(1)
            .returning(|_, _, _| Ok(()));
        tracker
            .expect_mark_needs_followup()
            .times(1)
            .returning(|_, _| Ok(()));
        tracker.expect_reopen().times(1).returning(|_| Ok(()));
        let (victims, mut cancelled) = mpsc::unbounded_channel();
        let monitor = tokio::spawn(run_deadlock_monitor(
            inbox,
            Arc::new(tracker),
            Arc::clone(&table) as Arc<dyn LockTable>,
            victims,
            Arc::new(crate::orchestrator::Silent),
        ));

        let (old, young) = (AgentId::new("m-1@run"), AgentId::new("m-2@run"));
        let path = |p: &str| vec![p.to_owned()];
        assert!(
            table
                .acquire(&old, &path("a.rs"), Duration::ZERO)
                .await
                .unwrap()
                .all_acquired
        );
        assert!(
            table
                .acquire(&young, &path("b.rs"), Duration::ZERO)
                .await
                .unwrap()
                .all_acquired
        );
        let old_waits = {
            let table = Arc::clone(&table);
            let old = old.clone();
            tokio::spawn(async move {
                table
                    .acquire(&old, &path("b.rs"), Duration::from_secs(30))
                    .await
            })
        };
        let first = tokio::time::timeout(Duration::from_secs(5), waits.recv()).await;
        assert_eq!(
            first.unwrap(),
            Some(old.clone()),
            "the old agent waits first"
        );
        let young_waits = {
            let table = Arc::clone(&table);
            let young = young.clone();
            tokio::spawn(async move {
                table
                    .acquire(&young, &path("a.rs"), Duration::from_secs(30))
                    .await
            })
        };

        let within = Duration::from_secs(5);
        let Some(DeadlockNews::Stop(stop)) = tokio::time::timeout(within, cancelled.recv())
            .await
            .unwrap()
        else {
            panic!("the victim is stopped first")
        };
        assert_eq!(stop.victim, young);
        assert_eq!(stop.victim_issue, Some("m-2".into()));
        let Some(DeadlockNews::Recorded(recorded)) = tokio::time::timeout(within, cancelled.recv())
            .await
            .unwrap()
        else {
            panic!("then the deadlock is recorded")
        };
        assert_eq!(recorded.victim, young);
        assert_eq!(recorded.released.len(), 1, "{recorded:?}");
        // The old agent gets the lock the victim gave up, without waiting out its timeout.
        let report = tokio::time::timeout(Duration::from_secs(5), old_waits)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(report.all_acquired);
        young_waits.abort();
        drop(table);
        monitor.abort();
    }
}
