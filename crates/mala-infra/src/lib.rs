//! Adapters with real I/O behind the ports of `mala-core`.
//!
//! So far: the system clock and the reader of br's `issues.jsonl`. The br tracker, git, lock files, the Claude Code
//! transport, the command runner, run metadata and the event sinks arrive
//! with their issues.

mod beads;
mod clock;

pub use beads::{parse_issues_jsonl, read_issues_jsonl};
pub use clock::SystemClock;
