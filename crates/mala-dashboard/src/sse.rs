//! The event stream as Server-Sent Events text. Events that arrive close
//! together go out in one write: a run's agents report in bursts (every
//! model response, tool call and lock), and a write per event would wake
//! the server and the page for each.

use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::hub::{Replay, Sent};

/// How long a burst is gathered before it goes out.
const GATHER: Duration = Duration::from_millis(100);
/// A comment this often keeps an idle connection from being dropped.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RESET: &str = "data: {\"kind\":\"reset\"}\n\n";

fn push(text: &mut String, sent: &Sent) {
    text.push_str("id: ");
    text.push_str(&sent.id.to_string());
    // serde_json writes no raw newline, so one `data:` line carries it.
    text.push_str("\ndata: ");
    text.push_str(&sent.json);
    text.push_str("\n\n");
}

/// The events the page missed (or a reset when some are gone), then the
/// live ones, gathered; a page that falls too far behind is told to reset
/// and carries on.
pub(crate) fn stream(
    replay: Replay,
    live: broadcast::Receiver<Sent>,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let mut first = String::new();
    match replay {
        Replay::Events(events) => events.iter().for_each(|sent| push(&mut first, sent)),
        Replay::Reset => first.push_str(RESET),
    }
    // Something goes out at once, so the page knows it is connected.
    if first.is_empty() {
        first.push_str(": connected\n\n");
    }
    futures_util::stream::unfold((Some(first), live), |(first, mut live)| async move {
        if let Some(first) = first {
            return Some((Ok(Bytes::from(first)), (None, live)));
        }
        let mut text = String::new();
        match tokio::time::timeout(KEEP_ALIVE, live.recv()).await {
            Err(_) => text.push_str(": keep-alive\n\n"),
            Ok(Ok(sent)) => {
                push(&mut text, &sent);
                tokio::time::sleep(GATHER).await;
                loop {
                    match live.try_recv() {
                        Ok(sent) => push(&mut text, &sent),
                        Err(TryRecvError::Lagged(_)) => text.push_str(RESET),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
            }
            Ok(Err(RecvError::Lagged(_))) => text.push_str(RESET),
            Ok(Err(RecvError::Closed)) => return None,
        }
        Some((Ok(Bytes::from(text)), (None, live)))
    })
}
