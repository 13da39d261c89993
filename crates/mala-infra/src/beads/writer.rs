//! The single writer: every br write of this process goes through one task.
//!
//! br serialises writers on `.beads/.write.lock` and gives up after 30 s; on a
//! large tracker each status change holds it for about a second, so parallel
//! writes from one mala would time out each other. One queue removes that
//! contention; what remains (another process holding the lock) is retried
//! with backoff a bounded number of times.
//!
//! A job that was handed to the writer runs to its end even if the caller
//! stops waiting, so an interrupted run never leaves a write half issued.

use std::sync::Arc;
use std::time::Duration;

use mala_core::{BrCode, Clock, TrackerError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::cli::BrCli;

/// How often and how patiently a refused write is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRetry {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for WriteRetry {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
        }
    }
}

#[derive(Debug)]
struct Job {
    actor: Option<String>,
    args: Vec<String>,
    reply: oneshot::Sender<Result<Value, TrackerError>>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct WriteQueue {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Only a lock that br never got is safe to retry: nothing was written.
fn worth_retrying(error: &TrackerError) -> bool {
    matches!(
        error,
        TrackerError::Rejected {
            code: Some(BrCode::DatabaseLocked),
            retryable: true,
            ..
        }
    )
}

impl WriteQueue {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(cli: Arc<BrCli>, clock: Arc<dyn Clock>, retry: WriteRetry) -> Self {
        let (jobs, mut inbox) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = inbox.recv().await {
                let result = run_with_retry(&cli, clock.as_ref(), retry, &job).await;
                // The caller may have stopped waiting; the write still happened.
                let _ = job.reply.send(result);
            }
        });
        Self { jobs }
    }

    /// Queues `br [--actor A] ARGS --json` and waits for its result.
    pub(crate) async fn write(
        &self,
        actor: Option<&str>,
        args: Vec<String>,
    ) -> Result<Value, TrackerError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                actor: actor.map(str::to_owned),
                args,
                reply,
            })
            .map_err(|_| TrackerError::Unavailable("the tracker writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| TrackerError::Unavailable("the tracker writer has stopped".to_owned()))?
    }
}

async fn run_with_retry(
    cli: &BrCli,
    clock: &dyn Clock,
    retry: WriteRetry,
    job: &Job,
) -> Result<Value, TrackerError> {
    let mut delay = retry.first_delay;
    let mut attempt = 1;
    loop {
        match cli.run(job.actor.as_deref(), &job.args).await {
            Err(error) if worth_retrying(&error) && attempt < retry.attempts => {
                tracing::debug!(attempt, %error, "br write lock busy; retrying");
                clock.sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(error) if worth_retrying(&error) => {
                return Err(TrackerError::Rejected {
                    code: Some(BrCode::DatabaseLocked),
                    message: format!(
                        "br {} could not get the tracker's write lock after {attempt} attempts: {error}",
                        job.args.join(" ")
                    ),
                    hint: Some(
                        "another process keeps .beads/.write.lock busy; let it finish and run mala again \
                         (do not delete the lock file)"
                            .to_owned(),
                    ),
                    retryable: false,
                });
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::SystemClock;

    /// A stand-in for br that reports a busy write lock `busy` times, then succeeds.
    fn flaky_br(dir: &Path, busy: u32) -> std::path::PathBuf {
        let script = dir.join("br");
        let counter = dir.join("calls");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho x >> '{c}'\nn=$(wc -l < '{c}')\nif [ \"$n\" -le {busy} ]; then\n  echo '{{\"error\":{{\"code\":\"DATABASE_LOCKED\",\"message\":\"Timed out after 30000ms waiting for write lock\",\"hint\":\"Retry\",\"retryable\":true}}}}'\n  exit 2\nfi\necho \"{{\\\"args\\\":\\\"$*\\\"}}\"\n",
                c = counter.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn calls(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("calls"))
            .unwrap()
            .lines()
            .count()
    }

    fn queue(br: std::path::PathBuf, dir: &Path) -> WriteQueue {
        let cli = Arc::new(BrCli::new(br, dir, Duration::from_secs(10)));
        let retry = WriteRetry {
            attempts: 3,
            first_delay: Duration::from_millis(1),
        };
        WriteQueue::start(cli, Arc::new(SystemClock), retry)
    }

    #[tokio::test]
    async fn a_busy_lock_is_retried_until_the_write_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let writes = queue(flaky_br(dir.path(), 2), dir.path());
        let value = writes
            .write(Some("mala:r1"), vec!["update".into(), "a-1".into()])
            .await
            .unwrap();
        assert_eq!(value["args"], "--actor mala:r1 update a-1 --json");
        assert_eq!(calls(dir.path()), 3);
    }

    #[tokio::test]
    async fn exhausted_retries_say_so_and_are_not_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let writes = queue(flaky_br(dir.path(), 10), dir.path());
        let err = writes
            .write(None, vec!["close".into(), "a-1".into()])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("after 3 attempts"), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(calls(dir.path()), 3);
    }

    #[tokio::test]
    async fn other_refusals_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("br");
        std::fs::write(
            &script,
            "#!/bin/sh\necho x >> \"$(dirname \"$0\")/calls\"\necho '{\"error\":{\"code\":\"UPDATE_PRECONDITION_FAILED\",\"message\":\"changed\",\"retryable\":true}}'\nexit 6\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let writes = queue(script, dir.path());
        let err = writes.write(None, vec!["update".into()]).await.unwrap_err();
        assert!(
            err.code() == Some(&BrCode::UpdatePreconditionFailed),
            "{err:?}"
        );
        assert_eq!(calls(dir.path()), 1);
    }
}
