//! One issue end to end: session runner, gate, review, finalize.
//!
//! It depends on `mala-core` and `mala-domain` only, and reaches the world
//! through the ports in `mala-core`. So far: breaking a deadlock.

mod deadlock;

pub use deadlock::{Resolution, ResolveError, resolve_deadlock};
