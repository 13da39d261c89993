//! What a run answers when a person asks it to stop one issue (the
//! dashboard's stop), once the answer is known.

/// How a stop asked for one issue came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopAnswer {
    /// Its session was stopped: the issue is skipped, its claim kept.
    Stopped,
    /// It was already finishing and ended as it would have: `outcome` is
    /// `closed`, `failed` or `released`.
    TooLate { outcome: &'static str },
    /// It had already given way in a deadlock: it runs again in this run.
    Deferred,
    /// No worker of the run has the issue.
    NotWorking,
}
