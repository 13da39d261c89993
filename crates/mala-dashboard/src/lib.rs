//! The run's live view in the browser (`mala run --serve`, `mala dashboard`).
//!
//! [`Hub`] is the one owner of what the page shows: an [`EventSink`] that
//! folds the run's events into the view the page shows and keeps the recent ones for
//! pages that reconnect, or a run's record read again while it changes.
//! [`Dashboard`] serves it over HTTP on loopback, behind a per-run token;
//! the page is plain files compiled in. See docs/dashboard.md.
//!
//! [`EventSink`]: mala_core::EventSink

mod auth;
mod hub;
mod page;
mod server;
mod sse;
mod transcript;
mod view;

pub use hub::{Hub, LoadRecord, ReadEvents};
pub use server::{Controls, Dashboard, DashboardError, ServeOptions, StopReply};
