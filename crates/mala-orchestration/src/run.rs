//! `mala run`: the real adapters wired into an [`Orchestrator`]: the br
//! tracker (or the embedded store), Claude Code sessions behind the tool
//! guard, the file lock table, git, and the configured reviewer.

use std::path::PathBuf;
use std::sync::Arc;

use mala_core::{EventSink, LockTable, Reviewer, TrackerError};
use mala_domain::{IssueGraph, ReviewerChoice, Settings};
use mala_infra::{
    AgentReviewer, CerberusConfig, CerberusReviewer, ClaudeBackend, ClaudeConfig, FileLockTable,
    GitRepo, LockingGuard, SystemClock, Tracker, check_cerberus,
};
use tokio::sync::{mpsc, watch};

use crate::orchestrator::{
    IssueSource, Orchestrator, RunError, RunPlan, RunSummary, Stage, state_dir,
};

/// What one `mala run` is asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The repository to work in.
    pub repo_root: PathBuf,
    /// The resolved configuration.
    pub settings: Settings,
    /// What to work on, how wide, and what to resume.
    pub plan: RunPlan,
    /// The `claude` binary (found by the caller).
    pub claude: PathBuf,
    /// The `br` binary, when found.
    pub br: Option<PathBuf>,
    /// The `cerberus` binary, when found (needed only for the cerberus reviewer).
    pub cerberus: Option<PathBuf>,
    /// `CERBERUS_ROOT`, when the user set it.
    pub cerberus_root: Option<PathBuf>,
    /// `setpriv`, when found: agents then die with mala, even on SIGKILL.
    pub setpriv: Option<PathBuf>,
}

/// The real tracker reads its snapshot in process, cached between changes.
#[async_trait::async_trait]
impl IssueSource for Tracker {
    async fn snapshot(&self) -> Result<Arc<IssueGraph>, TrackerError> {
        Tracker::snapshot(self).await
    }
}

/// Runs the queue with the real adapters until it is empty, the issue limit
/// is reached, or a stop.
pub async fn run(
    request: RunRequest,
    events: Arc<dyn EventSink>,
    stage: watch::Receiver<Stage>,
) -> Result<RunSummary, RunError> {
    assemble(request, events).await?.run(stage).await
}

/// Opens the tracker, checks claude (and cerberus when configured), and
/// wires every adapter into an orchestrator.
async fn assemble(
    request: RunRequest,
    events: Arc<dyn EventSink>,
) -> Result<Orchestrator, RunError> {
    let settings = &request.settings;
    let repo_root = request
        .repo_root
        .canonicalize()
        .unwrap_or_else(|_| request.repo_root.clone());
    let clock = Arc::new(SystemClock);
    let tracker = Tracker::open(
        settings.tracker,
        &repo_root,
        request.br.clone(),
        clock.clone(),
    )?;
    let tracker_port = tracker.as_port();
    let state_dir = state_dir(settings, &repo_root, &request.plan.run_id);

    let claude_config = claude_config(&request, &state_dir).await?;

    let lock_dir = settings.paths.lock_dir.clone();
    let (lock_events, lock_inbox) = mpsc::unbounded_channel();
    let locks_table = FileLockTable::new(&lock_dir, &repo_root)
        .map_err(RunError::Locks)?
        .with_events(lock_events);
    let locks: Arc<dyn LockTable> = Arc::new(locks_table);
    let git = Arc::new(GitRepo::new(&repo_root));
    let backend = implementer_backend(&request, &claude_config, &repo_root, &locks, &git);
    // Reviewers and epic verifiers read; a guard holding no locks refuses every write.
    let read_only = |config: ClaudeConfig| {
        let guard = LockingGuard::new(
            &repo_root,
            Arc::clone(&locks),
            settings.coder_options.claude.disallowed_tools.clone(),
        );
        Arc::new(ClaudeBackend::new(config).with_guard(Arc::new(guard)))
    };
    let make_reviewer = |review: &ReviewerChoice| -> Result<Reviewing, RunError> {
        Ok(match review.reviewer_type {
            mala_domain::ReviewerType::Cerberus => Reviewing {
                reviewer: Arc::new(cerberus_reviewer(&request, review, &state_dir, &repo_root)?),
                backend: None,
            },
            mala_domain::ReviewerType::AgentSdk => {
                let backend = read_only(claude_config.for_reviewer(review));
                Reviewing {
                    reviewer: Arc::new(AgentReviewer::new(
                        Arc::clone(&backend) as Arc<dyn mala_core::AgentBackend>,
                        Arc::clone(&tracker_port),
                        &repo_root,
                    )),
                    backend: Some(backend),
                }
            }
        })
    };
    let per_issue = Some(&settings.per_issue_review)
        .filter(|r| r.enabled)
        .map(|r| make_reviewer(&r.reviewer))
        .transpose()?;
    // The triggers' code reviews read the run's commits together.
    let triggers = &settings.validation_triggers;
    let for_triggers = [
        triggers.periodic.as_ref().map(|t| &t.trigger),
        triggers.epic_completion.as_ref().map(|t| &t.trigger),
        triggers.run_end.as_ref().map(|t| &t.trigger),
    ]
    .into_iter()
    .flatten()
    .filter_map(|t| t.code_review.as_ref())
    .find(|r| r.enabled)
    .map(|r| make_reviewer(&r.reviewer))
    .transpose()?;
    let epic_backend = settings
        .epic_verification
        .enabled
        .then(|| read_only(claude_config.for_epic_verifier(&settings.epic_verification)));
    let mut builder = Orchestrator::builder(request.settings.clone(), repo_root)
        .plan(request.plan.clone())
        .issue_source(Arc::new(tracker))
        .tracker(tracker_port)
        .backend(backend)
        .repository(git)
        .locks(locks, Some(lock_inbox))
        .events(events)
        .clock(clock)
        .commit_tracker_files(true);
    if let Some(Reviewing { reviewer, backend }) = per_issue {
        builder = builder.reviewer(reviewer);
        if let Some(backend) = backend {
            builder = builder.also_stop(backend);
        }
    }
    if let Some(Reviewing { reviewer, backend }) = for_triggers {
        builder = builder.trigger_reviewer(reviewer);
        if let Some(backend) = backend {
            builder = builder.also_stop(backend);
        }
    }
    if let Some(backend) = epic_backend {
        builder = builder
            .epic_backend(Arc::clone(&backend) as Arc<dyn mala_core::AgentBackend>)
            .also_stop(backend);
    }
    builder.build()
}

/// How every session of the run starts `claude`, once it is known to work.
async fn claude_config(
    request: &RunRequest,
    state_dir: &std::path::Path,
) -> Result<ClaudeConfig, RunError> {
    let mut config = ClaudeConfig::from_settings(
        &request.settings,
        request.claude.clone(),
        state_dir.to_path_buf(),
    );
    config.parent_death_wrapper.clone_from(&request.setpriv);
    mala_infra::check_claude(&config).await?;
    Ok(config)
}

/// The backend of implementer and fixer sessions: the tool guard with the
/// lock table (one agent alone needs no locks; destructive commands are
/// refused all the same), the lock tools and the commit tool.
fn implementer_backend(
    request: &RunRequest,
    config: &ClaudeConfig,
    repo_root: &std::path::Path,
    locks: &Arc<dyn LockTable>,
    git: &Arc<GitRepo>,
) -> Arc<ClaudeBackend> {
    let guard = LockingGuard::new(
        repo_root,
        Arc::clone(locks),
        request
            .settings
            .coder_options
            .claude
            .disallowed_tools
            .clone(),
    );
    let guard = if request.plan.max_agents <= 1 {
        guard.without_lock_enforcement()
    } else {
        guard
    };
    Arc::new(
        ClaudeBackend::new(config.clone())
            .with_guard(Arc::new(guard))
            .with_locks(Arc::clone(locks))
            .with_git(Arc::clone(git)),
    )
}

/// A reviewer, and the backend of its sessions when it has one (a Ctrl-C
/// must reach them too).
struct Reviewing {
    reviewer: Arc<dyn Reviewer>,
    backend: Option<Arc<ClaudeBackend>>,
}

/// The cerberus reviewer of `review`, once its installation is found and checked.
fn cerberus_reviewer(
    request: &RunRequest,
    review: &ReviewerChoice,
    state_dir: &std::path::Path,
    repo_root: &std::path::Path,
) -> Result<CerberusReviewer, RunError> {
    let binary = request.cerberus.clone().ok_or(RunError::CerberusNotFound)?;
    let config = CerberusConfig {
        root: CerberusConfig::default_root(&binary, request.cerberus_root.clone()),
        binary,
        state_root: state_dir.join("cerberus"),
        repo_root: repo_root.to_path_buf(),
        timeout: review.cerberus.timeout,
        spawn_args: review.cerberus.spawn_args.clone(),
        wait_args: review.cerberus.wait_args.clone(),
        env: review.cerberus.env.clone(),
    };
    check_cerberus(&config)?;
    Ok(CerberusReviewer::new(config))
}
