//! The run: scheduler actor, triggers, shutdown stages, resume, and the
//! embedding API. It is the only crate that names `mala-infra` types.
//!
//! So far: the run (`run`: the scheduler loop with drain and abort) and the
//! deadlock monitor.

mod deadlock_monitor;
mod epics;
mod run;
mod triggers;

pub use deadlock_monitor::run_deadlock_monitor;
pub use epics::{EpicBook, EpicCheck, Sweep, sweep_epics, verify_epic};
pub use run::{RunError, RunRequest, RunSummary, Stage, run};
pub use triggers::{TriggerOutcome, run_trigger};
