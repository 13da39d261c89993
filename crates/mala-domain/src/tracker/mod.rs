//! The tracker seen from mala: the issue graph of one snapshot, the run's
//! queue, and the names under which issues are claimed.

mod claims;
mod graph;
mod labels;
mod queue;

pub use claims::{agent_name, claim_actor, parse_agent_name, run_of_actor, takeover_candidates};
pub use graph::{Blocker, IssueGraph, Readiness};
pub use labels::{NEEDS_FOLLOWUP, normalize_label};
pub use queue::{Excluded, Exclusion, QueueEntry, QueuePlan, QueueRequest, UnknownIds, plan_queue};
