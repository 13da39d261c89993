//! [`IssueTracker`] over the real `br`: reads from `.beads/issues.jsonl` in
//! process, writes through the single writer queue.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mala_core::{
    BrCode, ClaimOutcome, Clock, DependencyKind, EpicStatus, Issue, IssueId, IssueTracker,
    IssueUpdate, NewIssue, TrackerError,
};
use mala_domain::IssueGraph;
use serde_json::Value;

use super::cli::{BrCli, claim_refusal};
use super::freshness::{FileStamp, Proof, Stamps, stamp};
use super::jsonl::read_issues_jsonl;
use super::writer::{WriteQueue, WriteRetry};
use super::{NEEDS_FOLLOWUP, normalize_label};

#[derive(Debug, Default)]
struct Cache {
    snapshot: Option<(FileStamp, Arc<IssueGraph>)>,
    /// Stamps known to match: br wrote the JSONL, or said it was current.
    trusted: Option<Stamps>,
}

/// The tracker backed by the `br` program.
#[derive(Debug)]
pub struct BrTracker {
    cli: Arc<BrCli>,
    writer: WriteQueue,
    jsonl: PathBuf,
    db: PathBuf,
    wal: PathBuf,
    /// What the last process to trust the JSONL left for the next one.
    proof: Proof,
    cache: Mutex<Cache>,
}

impl BrTracker {
    /// A tracker for the repository `repo`, using the br at `binary`.
    /// Must be called inside a tokio runtime (it starts the writer task).
    pub fn new(
        binary: impl Into<PathBuf>,
        repo: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::with_retry(binary, repo, clock, WriteRetry::default())
    }

    pub fn with_retry(
        binary: impl Into<PathBuf>,
        repo: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
        retry: WriteRetry,
    ) -> Self {
        let repo = repo.into();
        // Status changes on a 10k tracker take about a second; br's own lock
        // wait is 30 s. Two minutes is well past both.
        let cli = Arc::new(BrCli::new(binary, repo.clone(), Duration::from_secs(120)));
        Self {
            writer: WriteQueue::start(Arc::clone(&cli), clock, retry),
            jsonl: repo.join(".beads").join("issues.jsonl"),
            db: repo.join(".beads").join("beads.db"),
            wal: repo.join(".beads").join("beads.db-wal"),
            proof: Proof::for_repo(&repo),
            cli,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the cache half-updated
        // (every update is one assignment), so a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stamps(&self) -> Stamps {
        Stamps {
            jsonl: stamp(&self.jsonl),
            db: stamp(&self.db),
            wal: stamp(&self.wal),
        }
    }

    /// The current issue graph, read from the JSONL file when it is up to date.
    pub async fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        let mut stamps = self.stamps();
        let trusted = self.trusted();
        if stamps.jsonl.is_none() || Some(stamps) != trusted {
            self.bring_jsonl_up_to_date().await?;
            stamps = self.stamps();
            self.trust(stamps);
        }
        let Some(current) = stamps.jsonl else {
            return Err(TrackerError::Corrupt(format!(
                "{} is missing even after `br sync --flush-only`; is this a br repository (`br init`)?",
                self.jsonl.display()
            )));
        };
        {
            let cache = self.lock_cache();
            if let Some((seen, graph)) = &cache.snapshot
                && current == *seen
            {
                return Ok(Arc::clone(graph));
            }
        }
        let path = self.jsonl.clone();
        let graph =
            tokio::task::spawn_blocking(move || read_issues_jsonl(&path).map(IssueGraph::new))
                .await
                .map_err(|e| TrackerError::Unavailable(format!("reading issues.jsonl: {e}")))??;
        let graph = Arc::new(graph);
        self.lock_cache().snapshot = Some((current, Arc::clone(&graph)));
        Ok(graph)
    }

    /// Asks br whether its database holds changes the JSONL lacks (someone ran
    /// br with `--no-auto-flush`, or the file is missing); if so, has br export
    /// them, which is what br does after every write anyway.
    async fn bring_jsonl_up_to_date(&self) -> Result<(), TrackerError> {
        let status = self.cli.run(None, &args(["sync", "--status"])).await?;
        let dirty = status
            .get("dirty_count")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let db_newer = status.get("db_newer").and_then(Value::as_bool) == Some(true);
        let exists = status.get("jsonl_exists").and_then(Value::as_bool) != Some(false);
        if dirty > 0 || db_newer || !exists {
            tracing::debug!(
                dirty,
                db_newer,
                exists,
                "issues.jsonl is behind br's database; asking br to export before reading"
            );
            self.writer
                .write(None, args(["sync", "--flush-only"]))
                .await?;
        }
        Ok(())
    }

    /// Runs a write and marks the JSONL br leaves behind as current.
    async fn write(&self, actor: Option<&str>, argv: Vec<String>) -> Result<Value, TrackerError> {
        let result = self.writer.write(actor, argv).await;
        // br flushes the JSONL after every successful write (auto-flush).
        if result.is_ok() {
            self.trust(self.stamps());
        }
        result
    }

    /// The stamps known to match: this process's, or the proof an earlier
    /// process left.
    fn trusted(&self) -> Option<Stamps> {
        let known = self.lock_cache().trusted;
        known.or_else(|| {
            let kept = self.proof.load()?;
            self.lock_cache().trusted = Some(kept);
            Some(kept)
        })
    }

    fn trust(&self, stamps: Stamps) {
        self.lock_cache().trusted = Some(stamps);
        self.proof.save(&stamps);
    }

    async fn issue(&self, id: &IssueId) -> Result<Issue, TrackerError> {
        self.snapshot()
            .await?
            .get(id)
            .cloned()
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))
    }
}

fn args<const N: usize>(parts: [&str; N]) -> Vec<String> {
    parts.iter().map(|&p| p.to_owned()).collect()
}

/// `already assigned to X` → X.
fn holder_from_refusal(reason: &str) -> Option<String> {
    reason
        .split_once("already assigned to ")
        .map(|(_, who)| who.trim().to_owned())
}

#[async_trait]
impl IssueTracker for BrTracker {
    async fn all_issues(&self) -> Result<Vec<Issue>, TrackerError> {
        Ok(self.snapshot().await?.issues().to_vec())
    }

    async fn ready(&self) -> Result<Vec<Issue>, TrackerError> {
        let graph = self.snapshot().await?;
        Ok(graph
            .ready(chrono::Utc::now())
            .into_iter()
            .cloned()
            .collect())
    }

    async fn show(&self, id: &IssueId) -> Result<Issue, TrackerError> {
        self.issue(id).await
    }

    async fn claim(&self, id: &IssueId, actor: &str) -> Result<ClaimOutcome, TrackerError> {
        let argv = vec!["update".to_owned(), id.to_string(), "--claim".to_owned()];
        match self.write(Some(actor), argv).await {
            Ok(_) => Ok(ClaimOutcome::Claimed),
            Err(error) => {
                let Some(reason) = claim_refusal(&error) else {
                    return Err(error);
                };
                if let Some(by) = holder_from_refusal(reason) {
                    return Ok(ClaimOutcome::AlreadyClaimed { by: Some(by) });
                }
                if reason.starts_with("cannot claim blocked issue") {
                    let graph = self.snapshot().await?;
                    let by = graph.blockers(id).iter().map(|b| b.id().clone()).collect();
                    return Ok(ClaimOutcome::Blocked { by });
                }
                Err(error)
            }
        }
    }

    async fn take_over(
        &self,
        id: &IssueId,
        actor: &str,
        from: Option<String>,
    ) -> Result<ClaimOutcome, TrackerError> {
        let issue = self.issue(id).await?;
        if issue.assignee != from {
            return Ok(ClaimOutcome::AlreadyClaimed { by: issue.assignee });
        }
        let stamp = issue
            .updated_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let argv = vec![
            "update".to_owned(),
            id.to_string(),
            "--assignee".to_owned(),
            actor.to_owned(),
            "--status".to_owned(),
            "in_progress".to_owned(),
            "--if-unchanged".to_owned(),
            stamp,
        ];
        match self.write(Some(actor), argv).await {
            Ok(_) => Ok(ClaimOutcome::Claimed),
            // Someone touched it since we read it: another run got there first.
            Err(error) if error.code() == Some(&BrCode::UpdatePreconditionFailed) => {
                let by = self.issue(id).await.ok().and_then(|i| i.assignee);
                Ok(ClaimOutcome::AlreadyClaimed { by })
            }
            Err(error) => Err(error),
        }
    }

    async fn close(&self, id: &IssueId, reason: &str) -> Result<(), TrackerError> {
        let argv = vec![
            "close".to_owned(),
            id.to_string(),
            "--reason".to_owned(),
            reason.to_owned(),
        ];
        match self.write(None, argv).await {
            Ok(_) => Ok(()),
            // Closing twice (a resumed run finishing what a killed one closed) is fine.
            Err(TrackerError::Rejected {
                code: Some(BrCode::NothingToDo),
                message,
                ..
            }) if message.contains("already closed") => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn mark_needs_followup(&self, id: &IssueId, notes: &str) -> Result<(), TrackerError> {
        let argv = vec![
            "update".to_owned(),
            id.to_string(),
            "--add-label".to_owned(),
            NEEDS_FOLLOWUP.to_owned(),
            "--append-notes".to_owned(),
            notes.to_owned(),
        ];
        self.write(None, argv).await.map(drop)
    }

    async fn reopen(&self, id: &IssueId) -> Result<(), TrackerError> {
        let argv = vec![
            "update".to_owned(),
            id.to_string(),
            "--status".to_owned(),
            "open".to_owned(),
            "--assignee".to_owned(),
            String::new(),
        ];
        self.write(None, argv).await.map(drop)
    }

    async fn add_dependency(
        &self,
        issue: &IssueId,
        depends_on: &IssueId,
        kind: DependencyKind,
    ) -> Result<(), TrackerError> {
        let argv = vec![
            "dep".to_owned(),
            "add".to_owned(),
            issue.to_string(),
            depends_on.to_string(),
            "--type".to_owned(),
            kind.as_str().to_owned(),
        ];
        self.write(None, argv).await.map(drop)
    }

    async fn create(&self, issue: NewIssue) -> Result<IssueId, TrackerError> {
        let mut argv = vec![
            "create".to_owned(),
            issue.title,
            "--type".to_owned(),
            issue
                .issue_type
                .map_or_else(|| "task".to_owned(), |t| t.as_str().to_owned()),
        ];
        if let Some(priority) = issue.priority {
            argv.extend(["--priority".to_owned(), priority.level().to_string()]);
        }
        if !issue.description.is_empty() {
            argv.extend(["--description".to_owned(), issue.description]);
        }
        if !issue.acceptance_criteria.is_empty() {
            argv.extend([
                "--acceptance-criteria".to_owned(),
                issue.acceptance_criteria,
            ]);
        }
        if let Some(parent) = issue.parent {
            argv.extend(["--parent".to_owned(), parent.to_string()]);
        }
        if !issue.labels.is_empty() {
            let labels: Vec<String> = issue.labels.iter().map(|l| normalize_label(l)).collect();
            argv.extend(["--labels".to_owned(), labels.join(",")]);
        }
        let created = self.write(None, argv).await?;
        created
            .get("id")
            .and_then(Value::as_str)
            .map(IssueId::from)
            .ok_or_else(|| TrackerError::Corrupt(format!("br create printed no id: {created}")))
    }

    async fn update(&self, id: &IssueId, update: IssueUpdate) -> Result<(), TrackerError> {
        let mut argv = vec!["update".to_owned(), id.to_string()];
        if let Some(title) = update.title {
            argv.extend(["--title".to_owned(), title]);
        }
        if let Some(description) = update.description {
            argv.extend(["--description".to_owned(), description]);
        }
        if let Some(priority) = update.priority {
            argv.extend(["--priority".to_owned(), priority.level().to_string()]);
        }
        if let Some(status) = update.status {
            argv.extend(["--status".to_owned(), status.as_str().to_owned()]);
        }
        for label in &update.add_labels {
            argv.extend(["--add-label".to_owned(), normalize_label(label)]);
        }
        for label in &update.remove_labels {
            argv.extend(["--remove-label".to_owned(), normalize_label(label)]);
        }
        if let Some(notes) = update.notes {
            argv.extend(["--append-notes".to_owned(), notes]);
        }
        if argv.len() == 2 {
            return Ok(());
        }
        self.write(None, argv).await.map(drop)
    }

    async fn find_by_label(&self, label: &str) -> Result<Vec<Issue>, TrackerError> {
        let label = normalize_label(label);
        let graph = self.snapshot().await?;
        Ok(graph
            .issues()
            .iter()
            .filter(|i| i.has_label(&label))
            .cloned()
            .collect())
    }

    async fn epic_status(&self) -> Result<Vec<EpicStatus>, TrackerError> {
        Ok(self.snapshot().await?.epic_status())
    }

    async fn close_eligible_epics(&self) -> Result<Vec<IssueId>, TrackerError> {
        let result = self.write(None, args(["epic", "close-eligible"])).await?;
        Ok(result
            .get("closed")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(IssueId::from)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn descendants(&self, epic: &IssueId) -> Result<Vec<Issue>, TrackerError> {
        let graph = self.snapshot().await?;
        if !graph.contains(epic) {
            return Err(TrackerError::NotFound(epic.to_string()));
        }
        Ok(graph.descendants(epic).into_iter().cloned().collect())
    }

    async fn parent_epic(&self, id: &IssueId) -> Result<Option<IssueId>, TrackerError> {
        let graph = self.snapshot().await?;
        if !graph.contains(id) {
            return Err(TrackerError::NotFound(id.to_string()));
        }
        Ok(graph.parent_epic(id).map(|e| e.id.clone()))
    }

    async fn flush(&self) -> Result<(), TrackerError> {
        self.write(None, args(["sync", "--flush-only"]))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_the_refusal() {
        assert_eq!(
            holder_from_refusal("issue a-1 already assigned to mala:r1"),
            Some("mala:r1".to_owned())
        );
        assert_eq!(holder_from_refusal("cannot claim blocked issue: a-1"), None);
    }
}
