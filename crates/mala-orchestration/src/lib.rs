//! The run: scheduler actor, triggers, shutdown stages, resume, and the
//! embedding API. It is the only crate that names `mala-infra` types.
//!
//! [`Orchestrator`] runs a whole run over any implementations of the core
//! ports; [`run`] is `mala run`, the same with the real adapters.

#![warn(missing_docs)]

mod baseline;
mod deadlock_monitor;
mod epics;
mod orchestrator;
mod pauses;
mod preflight;
mod recorder;
mod run;
mod scheduler;
mod setup;
mod triggers;

pub use deadlock_monitor::{DeadlockNews, run_deadlock_monitor};
pub use epics::{EpicBook, EpicCheck, EpicError, Sweep, sweep_epics, verify_epic};
pub use orchestrator::{
    IssueSource, Orchestrator, OrchestratorBuilder, ResumePolicy, RunError, RunPlan, RunSummary,
    SessionPolicy, Stage, StopRequest,
};
pub use pauses::PausePolicy;
pub use preflight::PreflightError;
pub use run::{EpicVerifyRequest, RunRequest, run, verify_one_epic, worktrees_dir};
pub use triggers::TriggerOutcome;
