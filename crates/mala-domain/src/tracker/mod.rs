//! The tracker seen from mala: the issue graph of one snapshot, the run's
//! queue, and the names under which issues are claimed.

mod claims;
mod graph;
mod queue;

pub use claims::{agent_name, claim_actor, parse_agent_name, run_of_actor, takeover_candidates};
pub use graph::{Blocker, IssueGraph, Readiness};
pub use queue::{Excluded, Exclusion, QueueEntry, QueuePlan, QueueRequest, UnknownIds, plan_queue};
