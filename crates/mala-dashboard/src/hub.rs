//! The dashboard's one owner of state: the run's view and the recent
//! events the page may still ask for, behind one lock, and the live stream
//! of events to connected pages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::Utc;
use mala_core::{Event, EventSink, LoggedEvent, RunLog};
use tokio::sync::{broadcast, watch};

use crate::view::RunView;

/// How many bytes of recent events are kept for pages that reconnect; an
/// older `Last-Event-ID` gets a `reset` (the page reloads the state).
const RECENT_BYTES: usize = 1 << 20;
/// Events a slow page may fall behind by before it is told to reset.
const LIVE_BACKLOG: usize = 1024;

/// One event as it goes out: its id in this run's stream, and its JSON.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) id: u64,
    pub(crate) json: Arc<str>,
}

/// What a page that (re)connects gets first.
#[derive(Debug)]
pub(crate) enum Replay {
    /// The events after the one it saw last.
    Events(Vec<Sent>),
    /// Some are gone: it must read the state again.
    Reset,
}

#[derive(Debug)]
struct State {
    view: RunView,
    recent: VecDeque<Sent>,
    recent_bytes: usize,
    next_id: u64,
    /// The record the view was read from (a recorded run).
    record: Option<RunLog>,
}

/// Reads a run's record again (`None`: it is gone).
pub type LoadRecord = Box<dyn Fn() -> Option<RunLog> + Send + Sync>;
/// Reads the events a run in another process logged since the last read
/// (empty: none yet).
pub type ReadEvents = Box<dyn FnMut() -> Vec<LoggedEvent> + Send>;

/// Where the view comes from: the run's events as they happen, the event
/// log of a run in another process (and its record, for its end), or a
/// record alone, read again while it changes.
pub(crate) enum Source {
    Live,
    Followed {
        events: Mutex<ReadEvents>,
        load: LoadRecord,
        /// The record said the run is over at the last reload.
        over_once: std::sync::atomic::AtomicBool,
    },
    Recorded(LoadRecord),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "Live",
            Self::Followed { .. } => "Followed",
            Self::Recorded(_) => "Recorded",
        })
    }
}

/// How many reads of a followed log one reload takes at most, so one
/// reload behind a busy run still ends.
const CATCH_UP_READS: usize = 64;

/// The run's state for the server; an [`EventSink`] for the run.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    live: broadcast::Sender<Sent>,
    /// The newest event id a page has read the state after.
    served: watch::Sender<u64>,
    source: Source,
    budget: Option<String>,
}

impl Hub {
    /// A hub fed by the run's events (`mala run --serve`).
    pub fn live(run_id: &str, budget: Option<String>) -> Arc<Self> {
        Arc::new(Self::with(
            RunView::new(run_id, Utc::now(), budget.clone()),
            Source::Live,
            budget,
            None,
        ))
    }

    /// A hub over a run's event log (`mala dashboard`): the same view as
    /// the run's own, folded from what `events` reads, and at the run's end
    /// the record's word on each issue (`load` reads it again).
    pub fn followed(
        log: &RunLog,
        budget: Option<String>,
        events: ReadEvents,
        load: LoadRecord,
    ) -> Arc<Self> {
        let hub = Arc::new(Self::with(
            RunView::new(&log.run_id, log.started_at, budget.clone()),
            Source::Followed {
                events: Mutex::new(events),
                load,
                over_once: std::sync::atomic::AtomicBool::new(false),
            },
            budget,
            None,
        ));
        // What is logged so far, before any page asks.
        hub.reload();
        hub
    }

    /// A hub over a run's record alone (a run recorded without an event
    /// log): `load` reads it again (`None`: it is gone); [`Hub::reload`]
    /// picks up what changed.
    pub fn recorded(log: &RunLog, budget: Option<String>, load: LoadRecord) -> Arc<Self> {
        Arc::new(Self::with(
            RunView::from_log(log, budget.clone()),
            Source::Recorded(load),
            budget,
            Some(log.clone()),
        ))
    }

    fn with(view: RunView, source: Source, budget: Option<String>, record: Option<RunLog>) -> Self {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        Self {
            state: Mutex::new(State {
                view,
                recent: VecDeque::new(),
                recent_bytes: 0,
                next_id: 1,
                record,
            }),
            live,
            served: watch::channel(0).0,
            source,
            budget,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the view under the lock, with the id of the last event folded
    /// into it.
    pub(crate) fn read<T>(&self, with: impl FnOnce(&RunView, u64) -> T) -> T {
        let state = self.state();
        with(&state.view, state.next_id - 1)
    }

    /// A page read the state with every event up to `id` in it.
    pub(crate) fn served(&self, id: u64) {
        self.served.send_if_modified(|newest| {
            let newer = id > *newest;
            if newer {
                *newest = id;
            }
            newer
        });
    }

    /// At the run's end: waits (at most `within`) until every connected
    /// page has read the final state, so none is left showing a run that
    /// looks unfinished once the process is gone.
    pub async fn settle(&self, within: std::time::Duration) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let last = self.state().next_id - 1;
        let mut served = self.served.subscribe();
        let _ = tokio::time::timeout(within, served.wait_for(|id| *id >= last)).await;
    }

    pub(crate) fn is_live(&self) -> bool {
        matches!(self.source, Source::Live)
    }

    /// The events after `last` (and a receiver for the ones to come, taken
    /// under the same lock, so none falls between the two).
    pub(crate) fn subscribe(&self, last: Option<u64>) -> (Replay, broadcast::Receiver<Sent>) {
        let state = self.state();
        let receiver = self.live.subscribe();
        let replay = match last {
            None => Replay::Events(Vec::new()),
            Some(last) => {
                let oldest = state.recent.front().map_or(state.next_id, |sent| sent.id);
                if last.saturating_add(1) < oldest {
                    Replay::Reset
                } else {
                    Replay::Events(
                        state
                            .recent
                            .iter()
                            .filter(|sent| sent.id > last)
                            .cloned()
                            .collect(),
                    )
                }
            }
        };
        (replay, receiver)
    }

    /// Picks up what a run in another process did since the last reload.
    /// `Over` once the run is over or its record gone, after which nothing
    /// will change.
    pub(crate) fn reload(&self) -> Reloaded {
        match &self.source {
            Source::Live => Reloaded::Over,
            Source::Followed {
                events,
                load,
                over_once,
            } => self.follow(events, load, over_once),
            Source::Recorded(load) => self.reread(load),
        }
    }

    /// Folds the newly logged events (each goes to the pages as it would
    /// from the run itself); once the record says the run is over, the
    /// last of them and then the record's word on each issue.
    fn follow(
        &self,
        events: &Mutex<ReadEvents>,
        load: &LoadRecord,
        over_once: &std::sync::atomic::AtomicBool,
    ) -> Reloaded {
        use std::sync::atomic::Ordering;
        let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
        self.fold_logged(&mut events, CATCH_UP_READS);
        let log = match load() {
            Some(log) if log.is_over() => log,
            Some(_) => return Reloaded::Going,
            None => return Reloaded::Over,
        };
        // Events logged between the read and the record's end, all of them.
        self.fold_logged(&mut events, usize::MAX);
        // The run writes its record, then its last events: a record that
        // says over (or gone, its marker just removed) without the run's
        // end folded is trusted on the second reload that says so.
        let ended = self.state().view.saw_its_end();
        if !ended && !over_once.swap(true, Ordering::Relaxed) {
            return Reloaded::Going;
        }
        let mut state = self.state();
        state.view.reconcile(&log);
        state.record = Some(log);
        self.push(&mut state, JOURNAL_CHANGED.into());
        Reloaded::Over
    }

    fn fold_logged(&self, events: &mut ReadEvents, most_reads: usize) {
        for _ in 0..most_reads {
            let read = events();
            if read.is_empty() {
                return;
            }
            let mut state = self.state();
            for logged in read {
                state.view.fold(&logged.event, logged.at);
                self.push(&mut state, logged.json.into());
            }
        }
    }

    /// Reads the record again; when it changed, the view is its record
    /// and a `journal_changed` event goes to the pages.
    fn reread(&self, load: &LoadRecord) -> Reloaded {
        let Some(log) = load() else {
            return Reloaded::Over;
        };
        let over = log.is_over();
        let mut state = self.state();
        if state.record.as_ref() != Some(&log) {
            state.view = RunView::from_log(&log, self.budget.clone());
            state.record = Some(log);
            self.push(&mut state, JOURNAL_CHANGED.into());
        }
        if over {
            Reloaded::Over
        } else {
            Reloaded::Going
        }
    }

    fn push(&self, state: &mut State, json: Arc<str>) {
        let sent = Sent {
            id: state.next_id,
            json,
        };
        state.next_id += 1;
        state.recent_bytes += sent.json.len();
        state.recent.push_back(sent.clone());
        while state.recent_bytes > RECENT_BYTES
            && let Some(old) = state.recent.pop_front()
        {
            state.recent_bytes -= old.json.len();
        }
        // No page connected is not an error.
        let _ = self.live.send(sent);
    }
}

/// What the pages are sent when the view changed other than by an event:
/// they read the state again.
const JOURNAL_CHANGED: &str = r#"{"kind":"journal_changed"}"#;

/// A record that will not change any more.
/// Whether a recorded run may still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    Going,
    Over,
}

impl EventSink for Hub {
    fn emit(&self, event: &Event) {
        let json: Arc<str> = match serde_json::to_string(event) {
            Ok(json) => json.into(),
            Err(error) => {
                tracing::warn!(%error, "an event the dashboard could not write");
                return;
            }
        };
        let mut state = self.state();
        state.view.fold(event, Utc::now());
        // Sent under the lock: the order of ids is the order of the fold.
        self.push(&mut state, json);
    }
}
