//! `mala run`: the real adapters wired into an [`Orchestrator`]: the br
//! tracker (or the embedded store), the chosen coder's sessions (Claude
//! Code or Codex) behind the tool guard, the file lock table, git, and the
//! configured reviewer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mala_core::{AgentBackend, EventSink, Fanout, LockTable, Reviewer, RunStore, TrackerError};
use mala_domain::{IssueGraph, ReviewerChoice, Settings};
use mala_pipeline::{AgentReviewer, EpicVerifier};

use crate::epics::{EpicCheck, verify_epic};
use mala_infra::{
    AgentServices, CerberusConfig, CerberusReviewer, CoderConfig, EventLog, FileLockTable,
    FileRunStore, GitRepo, GitWorktrees, LockingGuard, SystemClock, Tracker, TreeWatch, Watching,
    check_cerberus,
};
use tokio::sync::{mpsc, watch};

use crate::orchestrator::{
    IssueSource, Orchestrator, OrchestratorBuilder, RunError, RunPlan, RunSummary, Stage,
};

/// What one `mala run` is asked to do.
#[derive(Debug)]
pub struct RunRequest {
    /// The repository to work in.
    pub repo_root: PathBuf,
    /// The resolved configuration.
    pub settings: Settings,
    /// What to work on, how wide, and what to resume.
    pub plan: RunPlan,
    /// The coder's binary (`claude` or `codex`, as `settings.coder` says;
    /// found by the caller).
    pub coder: PathBuf,
    /// `--fast` (codex only: the fast service tier).
    pub fast: bool,
    /// The `br` binary, when found.
    pub br: Option<PathBuf>,
    /// The `cerberus` binary, when found (needed only for the cerberus reviewer).
    pub cerberus: Option<PathBuf>,
    /// `CERBERUS_ROOT`, when the user set it.
    pub cerberus_root: Option<PathBuf>,
    /// `setpriv`, when found: agents then die with mala, even on SIGKILL.
    pub setpriv: Option<PathBuf>,
    /// Issues to stop while the run goes on (the dashboard's stop button).
    pub issue_stops: Option<tokio::sync::mpsc::UnboundedReceiver<crate::StopRequest>>,
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

/// The run's events also go to its event log, from which `mala dashboard`
/// shows the run in another process. A log that cannot be opened is said,
/// not fatal: the run's own records are kept elsewhere.
fn with_event_log(events: Arc<dyn EventSink>, run_dir: &Path) -> Arc<dyn EventSink> {
    match EventLog::create(run_dir) {
        Ok(log) => Arc::new(Fanout(vec![events, Arc::new(log)])),
        Err(error) => {
            events.emit(&mala_core::Event::Warning {
                message: format!(
                    "cannot keep the run's event log in {}: {error}; `mala dashboard` will show this run from its journal only",
                    run_dir.display()
                ),
            });
            events
        }
    }
}

/// Opens the tracker, checks the coder (and cerberus when configured), and
/// wires every adapter into an orchestrator.
async fn assemble(
    mut request: RunRequest,
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
    let lock_dir = settings.paths.lock_dir.clone();
    let run_store = Arc::new(FileRunStore::new(
        &settings.paths.runs_dir,
        &lock_dir,
        &repo_root,
    ));
    let state_dir = run_store.run_dir(&request.plan.run_id);
    let events = with_event_log(events, &state_dir);

    let coder = coder_config(&request, &state_dir).await?;

    let (lock_events, lock_inbox) = mpsc::unbounded_channel();
    let locks_table = FileLockTable::new(&lock_dir, &repo_root)
        .map_err(RunError::Locks)?
        .with_events(lock_events);
    let locks: Arc<dyn LockTable> = Arc::new(locks_table);
    let git = Arc::new(GitRepo::new(&repo_root));
    let worktrees = worktrees(settings, &repo_root).await?;
    let backend = implementer_backend(
        &request,
        &coder,
        &repo_root,
        &locks,
        &git,
        worktrees.as_ref().map(GitWorktrees::dir),
    );
    let mut builder = Orchestrator::builder(request.settings.clone(), repo_root.clone());
    if let Some(stops) = request.issue_stops.take() {
        builder = builder.issue_stops(stops);
    }
    if let Some(worktrees) = worktrees {
        builder = builder.workspaces(Arc::new(worktrees));
    }
    let builder = builder
        .plan(request.plan.clone())
        .issue_source(Arc::new(tracker))
        .tracker(Arc::clone(&tracker_port))
        .backend(backend)
        .repository(git)
        .locks(Arc::clone(&locks), Some(lock_inbox))
        .events(events)
        .clock(clock)
        .run_store(run_store)
        .commit_tracker_files(true)
        .preflight(true);
    let readers = Readers {
        ledger: builder.run_ledger(),
        request: &request,
        repo_root: &repo_root,
        state_dir: &state_dir,
        coder: &coder,
        locks: &locks,
        tracker: &tracker_port,
    };
    readers.add_to(builder)?.build()
}

/// What the run's read-only sessions (reviewers, the epic verifier) are
/// made from.
struct Readers<'w> {
    /// Their sessions count in the run's budget.
    ledger: Arc<mala_pipeline::RunLedger>,
    request: &'w RunRequest,
    repo_root: &'w std::path::Path,
    state_dir: &'w std::path::Path,
    coder: &'w CoderConfig,
    locks: &'w Arc<dyn LockTable>,
    tracker: &'w Arc<dyn mala_core::IssueTracker>,
}

impl Readers<'_> {
    /// A backend whose guard holds no locks, so it refuses every write.
    fn read_only(&self, config: &CoderConfig) -> Arc<dyn AgentBackend> {
        let guard = LockingGuard::new(
            self.repo_root,
            Arc::clone(self.locks),
            disallowed_tools(&self.request.settings),
        );
        config.backend(AgentServices {
            guard: Some(Arc::new(guard)),
            ..AgentServices::default()
        })
    }

    fn reviewer(&self, review: &ReviewerChoice) -> Result<Reviewing, RunError> {
        Ok(match review.reviewer_type {
            mala_domain::ReviewerType::Cerberus => Reviewing {
                reviewer: Arc::new(cerberus_reviewer(
                    self.request,
                    review,
                    self.state_dir,
                    self.repo_root,
                )?),
                backend: None,
            },
            mala_domain::ReviewerType::AgentSdk => {
                let backend = self.read_only(&self.coder.for_reviewer(review));
                let metered =
                    mala_pipeline::Metered::new(Arc::clone(&backend), Arc::clone(&self.ledger));
                Reviewing {
                    reviewer: Arc::new(AgentReviewer::new(
                        Arc::new(metered),
                        Arc::clone(self.tracker),
                        self.repo_root,
                    )),
                    backend: Some(backend),
                }
            }
        })
    }

    /// The per-issue reviewer, the triggers' reviewer and the epic
    /// verifier the settings ask for; every backend among them is one a
    /// stop must reach.
    fn add_to(&self, mut builder: OrchestratorBuilder) -> Result<OrchestratorBuilder, RunError> {
        let settings = &self.request.settings;
        if settings.per_issue_review.enabled {
            let Reviewing { reviewer, backend } =
                self.reviewer(&settings.per_issue_review.reviewer)?;
            builder = builder.reviewer(reviewer);
            if let Some(backend) = backend {
                builder = builder.also_stop(backend);
            }
        }
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
        .find(|r| r.enabled);
        if let Some(review) = for_triggers {
            let Reviewing { reviewer, backend } = self.reviewer(&review.reviewer)?;
            builder = builder.trigger_reviewer(reviewer);
            if let Some(backend) = backend {
                builder = builder.also_stop(backend);
            }
        }
        if settings.epic_verification.enabled {
            let backend =
                self.read_only(&self.coder.for_epic_verifier(&settings.epic_verification));
            builder = builder
                .epic_backend(Arc::clone(&backend))
                .also_stop(backend);
        }
        Ok(builder)
    }
}

/// How every session of the run starts the coder, once it is known to work.
async fn coder_config(
    request: &RunRequest,
    state_dir: &std::path::Path,
) -> Result<CoderConfig, RunError> {
    let mut config = CoderConfig::from_settings(
        &request.settings,
        request.coder.clone(),
        state_dir.to_path_buf(),
        request.fast,
    )?;
    config.set_parent_death_wrapper(request.setpriv.clone());
    config.check().await?;
    Ok(config)
}

/// Where a repository's issue worktrees live: beside the runs, by repository.
pub fn worktrees_dir(settings: &Settings, repo_root: &std::path::Path) -> PathBuf {
    let runs = &settings.paths.runs_dir;
    runs.parent()
        .unwrap_or(runs)
        .join("worktrees")
        .join(mala_infra::encode_repo(repo_root))
}

/// Worktree isolation's trees and merge queue, when the settings ask for it.
async fn worktrees(
    settings: &Settings,
    repo_root: &std::path::Path,
) -> Result<Option<GitWorktrees>, RunError> {
    if settings.isolation.isolation != mala_domain::Isolation::Worktree {
        return Ok(None);
    }
    let trees = GitWorktrees::new(repo_root, &worktrees_dir(settings, repo_root))
        .await
        .map_err(RunError::Worktrees)?
        .strategy(settings.isolation.merge_strategy)
        .keep_branches(settings.isolation.keep_branches);
    Ok(Some(trees))
}

/// Tools the guard refuses by name: Claude Code's names, so only for Claude.
fn disallowed_tools(settings: &Settings) -> Vec<String> {
    match settings.coder {
        mala_domain::Coder::Claude => settings.coder_options.claude.disallowed_tools.clone(),
        mala_domain::Coder::Codex | mala_domain::Coder::Amp => Vec::new(),
    }
}

/// The backend of implementer and fixer sessions: the tool guard with the
/// lock table (one agent alone needs no locks; destructive commands are
/// refused all the same), the lock tools and the commit tool.
fn implementer_backend(
    request: &RunRequest,
    config: &CoderConfig,
    repo_root: &std::path::Path,
    locks: &Arc<dyn LockTable>,
    git: &Arc<GitRepo>,
    worktrees: Option<&std::path::Path>,
) -> Arc<dyn AgentBackend> {
    let guard = LockingGuard::new(
        repo_root,
        Arc::clone(locks),
        disallowed_tools(&request.settings),
    );
    let settings = &request.settings;
    let validation: Vec<String> =
        mala_domain::required_commands(&settings.evidence_check.required, &settings.commands)
            .into_iter()
            .map(|r| r.command)
            .collect();
    if let Some(dir) = worktrees {
        // Each agent alone in its tree: no locks to take, no commit tool
        // (it commits on its branch), and a watch of its own tree.
        return config.backend(AgentServices {
            guard: Some(Arc::new(guard.in_worktrees(dir))),
            watch: Watching::EachTree { validation },
            ..AgentServices::default()
        });
    }
    let alone = request.plan.max_agents <= 1;
    let guard = if alone {
        guard.without_lock_enforcement()
    } else {
        guard
    };
    // The second line: what each tool call changed in the tree. Alone, every
    // change is the agent's edit; with others, a change nobody holds is an
    // unlocked write.
    let watch =
        TreeWatch::new(repo_root, (!alone).then(|| Arc::clone(locks))).with_validation(validation);
    config.backend(AgentServices {
        guard: Some(Arc::new(guard)),
        locks: Some(Arc::clone(locks)),
        git: Some(Arc::clone(git)),
        watch: Watching::Shared(Arc::new(watch)),
    })
}

/// A reviewer, and the backend of its sessions when it has one (a Ctrl-C
/// must reach them too).
struct Reviewing {
    reviewer: Arc<dyn Reviewer>,
    backend: Option<Arc<dyn AgentBackend>>,
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

/// What one `mala epic-verify` is asked to do.
#[derive(Debug, Clone)]
pub struct EpicVerifyRequest {
    /// The repository the epic's work is in.
    pub repo_root: PathBuf,
    /// The resolved configuration.
    pub settings: Settings,
    /// The coder's binary (found by the caller).
    pub coder: PathBuf,
    /// The `br` binary, when found.
    pub br: Option<PathBuf>,
    /// `setpriv`, when found: the verifier then dies with mala.
    pub setpriv: Option<PathBuf>,
    /// The epic.
    pub epic: mala_core::IssueId,
    /// Close it when it passes (not `--no-close`).
    pub close: bool,
    /// Verify even with children still open (`--force`).
    pub force: bool,
    /// Close it on a person's word, without a verifier (`--human-override`).
    pub human_override: bool,
}

/// `mala epic-verify`: one epic, verified by a read-only agent with the
/// real adapters (the same wiring as a run's epic verifier).
pub async fn verify_one_epic(request: &EpicVerifyRequest) -> Result<EpicCheck, RunError> {
    let settings = &request.settings;
    let repo = &request.repo_root;
    let clock: Arc<dyn mala_core::Clock> = Arc::new(SystemClock);
    let tracker = Tracker::open(settings.tracker, repo, request.br.clone(), clock)?;
    let port = tracker.as_port();
    if request.human_override {
        port.close(
            &request.epic,
            "closed by a person's override (mala epic-verify --human-override)",
        )
        .await?;
        return Ok(EpicCheck::Overridden);
    }
    let state = settings.paths.runs_dir.join("epic-verify");
    let mut config = CoderConfig::from_settings(settings, request.coder.clone(), state, false)?
        .for_epic_verifier(&settings.epic_verification);
    config.set_parent_death_wrapper(request.setpriv.clone());
    let locks: Arc<dyn LockTable> = Arc::new(FileLockTable::new(&settings.paths.lock_dir, repo)?);
    // Holding no locks, the verifier can only read.
    let guard = LockingGuard::new(repo, locks, disallowed_tools(settings));
    let backend = config.backend(AgentServices {
        guard: Some(Arc::new(guard)),
        ..AgentServices::default()
    });
    let verifier = EpicVerifier::new(backend, repo);
    verify_epic(
        port.as_ref(),
        &verifier,
        &request.epic,
        request.close,
        request.force,
    )
    .await
    .map_err(RunError::from)
}
