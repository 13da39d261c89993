//! Adapters with real I/O behind the ports of `mala-core`.
//!
//! So far: the system clock. The br tracker, git, lock files, the Claude Code
//! transport, the command runner, run metadata and the event sinks arrive
//! with their issues.

mod clock;

pub use clock::SystemClock;
