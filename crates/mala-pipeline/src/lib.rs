//! One issue end to end: session runner, gate, review, finalize; and the
//! agent reviewer and epic verifier, which drive an agent backend port.
//!
//! It depends on `mala-core` and `mala-domain` only, and reaches the world
//! through the ports in `mala-core`.

mod deadlock;
mod faults;
mod filing;
mod metered;
mod protected;
mod reviewers;
mod runner;
mod worker;

pub use deadlock::{Resolution, ResolveError, resolve_deadlock};
pub use faults::{FaultDesk, FaultLine, FaultReport, GoOn, RunGate, RunLedger, fault_line};
pub use filing::{file_epic_findings, track_advisory_findings};
pub use metered::Metered;
pub use protected::{CHECKS_CHANGED, required_checks};
pub use reviewers::{AgentReviewer, EpicVerifier, ask_reviewer, ask_twice};
pub use runner::{
    IssueResult, Resume, RunnerConfig, RunnerPorts, SessionEndCheck, run_issue, run_issue_from,
};
pub use worker::{StopReason, StopSignal, WorkerStop, stop_line};
