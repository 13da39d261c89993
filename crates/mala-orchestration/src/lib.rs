//! The run: scheduler actor, triggers, shutdown stages, resume, and the
//! embedding API. It is the only crate that names `mala-infra` types.
//!
//! So far: the deadlock monitor.

mod deadlock_monitor;

pub use deadlock_monitor::run_deadlock_monitor;
