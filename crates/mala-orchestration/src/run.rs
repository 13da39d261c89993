//! `mala run`: one scheduler that owns the run's state, keeps up to
//! `max_agents` issues in flight, and stops cleanly at any stage.
//!
//! The scheduler is the only owner of what is active, done and failed.
//! Workers (one task per issue) report their result when they end; the
//! deadlock monitor reports victims; the shutdown watch says when to drain
//! and when to abort.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mala_core::{AgentId, Event, EventSink, IssueId, LockTable, Reviewer, RunOutcome};
use mala_domain::{
    FireOn, Order, QueueRequest, SchedulerView, Scope, Settings, agent_name, claim_actor, done,
    plan_queue, required_commands, spawn_capacity, takeover_candidates,
};
use mala_infra::{
    AgentReviewer, CerberusConfig, CerberusReviewer, ClaudeBackend, ClaudeConfig, EpicVerifier,
    FileLockTable, GitRepo, IssueRecord, LockingGuard, RunLog, RunMarker, SystemClock, Tracker,
    check_cerberus, commit_tracker_files, encode_repo, is_run_alive, remove_stale,
};
use mala_pipeline::{IssueResult, RunnerConfig, RunnerPorts, run_issue};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::epics::{EpicBook, sweep_epics};
use crate::run_deadlock_monitor;
use crate::triggers::{SessionEndTrigger, TriggerOutcome, run_trigger};

/// Waits for one worker to end and records its result.
async fn wait_for_worker(
    workers: &mut JoinSet<(IssueId, IssueResult)>,
    active: &mut HashMap<IssueId, Worker>,
    summary: &mut RunSummary,
    events: &Arc<dyn EventSink>,
) {
    match workers.join_next().await {
        Some(Ok((issue, result))) => {
            active.remove(&issue);
            record(summary, issue, result);
        }
        Some(Err(error)) => {
            if !error.is_cancelled() {
                events.emit(&Event::Warning {
                    message: format!("an issue worker crashed: {error}"),
                });
            }
            active.retain(|_, w| !w.abort.is_finished());
        }
        None => active.clear(),
    }
}

/// How long stopped sessions get to end their turns and release their locks
/// before their workers are cancelled outright.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The second Ctrl-C: interrupt every session, give the workers a moment to
/// record themselves as stopped (locks released, claims kept for the next
/// run), then cancel whatever is still running.
async fn stop_workers(
    backends: &[Arc<ClaudeBackend>],
    workers: &mut JoinSet<(IssueId, IssueResult)>,
    active: &mut HashMap<IssueId, Worker>,
    summary: &mut RunSummary,
    events: &Arc<dyn EventSink>,
    stage: &mut watch::Receiver<Stage>,
) {
    let kill = |backends: &[Arc<ClaudeBackend>]| {
        for backend in backends {
            backend.kill_all();
        }
    };
    if *stage.borrow() == Stage::Kill {
        kill(backends);
    } else {
        for backend in backends {
            backend.stop_all().await;
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    let mut stage_open = true;
    while !workers.is_empty() {
        tokio::select! {
            () = wait_for_worker(workers, active, summary, events) => {}
            () = tokio::time::sleep_until(deadline) => break,
            changed = stage.changed(), if stage_open => {
                stage_open = changed.is_ok();
                if *stage.borrow() == Stage::Kill {
                    // The third Ctrl-C: no more grace.
                    kill(backends);
                    break;
                }
            }
        }
    }
    workers.abort_all();
    while workers.join_next().await.is_some() {}
}

fn record(summary: &mut RunSummary, issue: IssueId, result: IssueResult) {
    match result {
        IssueResult::Closed { .. } => summary.closed.push(issue),
        IssueResult::Failed { reason } => summary.failed.push((issue, reason)),
        IssueResult::Skipped { reason } => summary.skipped.push((issue, reason)),
    }
}

/// The shutdown stages a Ctrl-C steps through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Running,
    /// Take no new issues; let the running ones finish.
    Drain,
    /// Stop the running ones now; their issues are picked up by the next run.
    Abort,
    /// Kill the agents' process groups at once, then end as `Abort` does.
    Kill,
}

/// What one `mala run` is asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub repo_root: PathBuf,
    pub settings: Settings,
    pub scope: Scope,
    pub order: Order,
    pub max_agents: usize,
    pub max_issues: Option<usize>,
    pub resume: bool,
    /// Keep polling for new ready issues instead of ending when idle.
    pub watch: Option<Duration>,
    /// The `claude` binary (found by the caller).
    pub claude: PathBuf,
    /// The `br` binary, when found.
    pub br: Option<PathBuf>,
    /// The `cerberus` binary, when found (needed only for the cerberus reviewer).
    pub cerberus: Option<PathBuf>,
    /// `CERBERUS_ROOT`, when the user set it.
    pub cerberus_root: Option<PathBuf>,
    pub run_id: String,
}

/// How the run went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub closed: Vec<IssueId>,
    pub failed: Vec<(IssueId, String)>,
    pub skipped: Vec<(IssueId, String)>,
    /// Issues given way in a deadlock; open again for later.
    pub deferred: Vec<IssueId>,
    pub interrupted: bool,
    /// A validation trigger stopped the run (the command that failed).
    pub aborted: Option<String>,
    /// Where this run's session records are.
    pub state_dir: PathBuf,
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracker(#[from] mala_core::TrackerError),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Agent(#[from] mala_core::AgentError),
}

struct Worker {
    agent: AgentId,
    abort: tokio::task::AbortHandle,
}

/// Runs the queue until it is empty, the issue limit is reached, or a stop.
#[allow(clippy::too_many_lines)] // one loop, read top to bottom
pub async fn run(
    request: RunRequest,
    events: Arc<dyn EventSink>,
    mut stage: watch::Receiver<Stage>,
) -> Result<RunSummary, RunError> {
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
    let state_dir = settings
        .paths
        .runs_dir
        .join(encode_repo(&repo_root))
        .join(&request.run_id);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| RunError::Setup(format!("{}: {e}", state_dir.display())))?;

    let claude_config =
        ClaudeConfig::from_settings(settings, request.claude.clone(), state_dir.clone());
    mala_infra::check_claude(&claude_config).await?;

    // Locks of runs that are gone are stale; ours are marked by our marker.
    let lock_dir = settings.paths.lock_dir.clone();
    let cleaned = remove_stale(&lock_dir);
    if cleaned.locks_removed > 0 {
        events.emit(&Event::Warning {
            message: format!(
                "removed {} stale lock(s) of runs that are gone",
                cleaned.locks_removed
            ),
        });
    }
    let marker = RunMarker {
        run_id: request.run_id.clone(),
        repo_path: repo_root.clone(),
        started_at: Utc::now(),
        pid: std::process::id(),
        max_agents: u32::try_from(request.max_agents).ok(),
    };
    marker.write(&lock_dir).map_err(|e| {
        RunError::Setup(format!(
            "cannot write the run marker in {}: {e}",
            lock_dir.display()
        ))
    })?;

    let (lock_events, lock_inbox) = mpsc::unbounded_channel();
    let locks_table = FileLockTable::new(&lock_dir, &repo_root)
        .map_err(|e| RunError::Setup(e.to_string()))?
        .with_events(lock_events);
    let locks: Arc<dyn LockTable> = Arc::new(locks_table);
    let git = Arc::new(GitRepo::new(&repo_root));
    let guard = LockingGuard::new(
        &repo_root,
        Arc::clone(&locks),
        settings.coder_options.claude.disallowed_tools.clone(),
    );
    // One agent alone needs no locks; destructive commands are refused all the same.
    let guard = if request.max_agents <= 1 {
        guard.without_lock_enforcement()
    } else {
        guard
    };
    let backend = Arc::new(
        ClaudeBackend::new(claude_config.clone())
            .with_guard(Arc::new(guard))
            .with_locks(Arc::clone(&locks))
            .with_git(Arc::clone(&git)),
    );
    // Every backend of the run, so a second Ctrl-C can stop all their sessions.
    let mut backends: Vec<Arc<ClaudeBackend>> = vec![Arc::clone(&backend)];
    let review = &settings.per_issue_review;
    let reviewer: Option<Arc<dyn Reviewer>> = match (review.enabled, review.reviewer_type) {
        (false, _) => None,
        (true, mala_domain::ReviewerType::Cerberus) => {
            let binary = request.cerberus.clone().ok_or_else(|| {
                RunError::Setup(
                    "per_issue_review.reviewer_type is cerberus, but `cerberus` is not on PATH; \
                     install it, or set per_issue_review.reviewer_type: agent_sdk"
                        .into(),
                )
            })?;
            let config = CerberusConfig {
                root: CerberusConfig::default_root(&binary, request.cerberus_root.clone()),
                binary,
                state_root: state_dir.join("cerberus"),
                repo_root: repo_root.clone(),
                timeout: review.cerberus.timeout,
                spawn_args: review.cerberus.spawn_args.clone(),
                wait_args: review.cerberus.wait_args.clone(),
                env: review.cerberus.env.clone(),
            };
            check_cerberus(&config).map_err(RunError::Setup)?;
            Some(Arc::new(CerberusReviewer::new(config)))
        }
        (true, mala_domain::ReviewerType::AgentSdk) => {
            let read_only = LockingGuard::new(
                &repo_root,
                Arc::clone(&locks),
                settings.coder_options.claude.disallowed_tools.clone(),
            );
            let review_backend =
                Arc::new(ClaudeBackend::new(claude_config.clone()).with_guard(Arc::new(read_only)));
            backends.push(Arc::clone(&review_backend));
            Some(Arc::new(AgentReviewer::new(
                review_backend,
                Arc::clone(&tracker_port),
                &repo_root,
            )))
        }
    };
    let (victims_tx, mut victims) = mpsc::unbounded_channel();
    let monitor = tokio::spawn(run_deadlock_monitor(
        lock_inbox,
        Arc::clone(&tracker_port),
        Arc::clone(&locks),
        victims_tx,
    ));

    let session_end_abort: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let ports = RunnerPorts {
        tracker: Arc::clone(&tracker_port),
        backend: Arc::clone(&backend) as Arc<dyn mala_core::AgentBackend>,
        repo: git.clone(),
        reviewer,
        locks: Some(Arc::clone(&locks)),
        events: Arc::clone(&events),
        clock: clock.clone(),
        session_end: settings
            .validation_triggers
            .session_end
            .as_ref()
            .map(|trigger| {
                Arc::new(SessionEndTrigger {
                    trigger: trigger.clone(),
                    repo: repo_root.clone(),
                    backend: Arc::clone(&backend) as Arc<dyn mala_core::AgentBackend>,
                    run_id: request.run_id.clone(),
                    events: Arc::clone(&events),
                    abort: Arc::clone(&session_end_abort),
                }) as Arc<dyn mala_pipeline::SessionEndCheck>
            }),
    };
    let runner_config = RunnerConfig {
        repo_root: repo_root.clone(),
        actor: claim_actor(&request.run_id),
        required: required_commands(&settings.evidence_check.required, &settings.commands),
        code_patterns: settings.code_patterns.clone(),
        config_files: settings.config_files.clone(),
        setup_files: settings.setup_files.clone(),
        max_gate_attempts: settings.max_gate_retries.max(1),
        max_review_attempts: settings.per_issue_review.max_retries.max(1),
        max_resumes: settings.max_idle_retries,
        resume_backoff: Duration::from_secs(5),
        retry_failed: settings.retry_failed,
        record_dir: state_dir.join("sessions"),
        blocking_priority: settings
            .per_issue_review
            .finding_threshold
            .per_issue_blocking_priority(),
        rerun: settings.gate.rerun,
    };

    let started_at = Utc::now();
    let mut run_log = RunLog {
        run_id: request.run_id.clone(),
        repo_path: repo_root.clone(),
        started_at,
        finished_at: None,
        outcome: "running".into(),
        issues: Vec::new(),
    };
    let _ = run_log.write(&settings.paths.runs_dir);
    events.emit(&Event::RunStarted {
        run_id: request.run_id.clone(),
        repo: repo_root.display().to_string(),
        max_agents: Some(request.max_agents),
    });
    let mut summary = RunSummary {
        state_dir: state_dir.clone(),
        ..RunSummary::default()
    };
    let mut attempted: HashSet<IssueId> = HashSet::new();
    let mut active: HashMap<IssueId, Worker> = HashMap::new();
    let mut workers: JoinSet<(IssueId, IssueResult)> = JoinSet::new();
    let mut deferred: HashSet<IssueId> = HashSet::new();
    let mut started = 0usize;
    let mut idle_said = false;
    let mut closed_since_periodic = 0u32;
    let mut sweep_pending = true;
    let mut epic_book = EpicBook::default();
    let max_epic_rounds = settings
        .validation_triggers
        .epic_completion
        .as_ref()
        .map_or(3, |t| t.max_epic_verification_retries.max(1));
    let epic_verifier = settings.epic_verification.enabled.then(|| {
        let read_only = LockingGuard::new(
            &repo_root,
            Arc::clone(&locks),
            settings.coder_options.claude.disallowed_tools.clone(),
        );
        let backend =
            Arc::new(ClaudeBackend::new(claude_config.clone()).with_guard(Arc::new(read_only)));
        backends.push(Arc::clone(&backend));
        EpicVerifier::new(backend, &repo_root)
    });
    let mut periodic_due = false;
    let mut stage_open = true;
    let issue_types = &settings.issue_types;

    loop {
        let current = *stage.borrow();
        if matches!(current, Stage::Abort | Stage::Kill) {
            stop_workers(
                &backends,
                &mut workers,
                &mut active,
                &mut summary,
                &events,
                &mut stage,
            )
            .await;
            summary.interrupted = true;
            break;
        }
        if summary.aborted.is_none()
            && let Some(command) = session_end_abort
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            // A session_end trigger set to abort failed: finish what runs, start nothing.
            summary.aborted = Some(command);
        }
        if periodic_due && let Some(periodic) = &settings.validation_triggers.periodic {
            if !active.is_empty() {
                // Hold new spawns until the pool is idle, then validate.
                wait_for_worker(&mut workers, &mut active, &mut summary, &events).await;
                continue;
            }
            periodic_due = false;
            let outcome = run_trigger(
                "periodic",
                &periodic.trigger,
                &repo_root,
                &ports.backend,
                &request.run_id,
                &events,
            )
            .await;
            if let TriggerOutcome::Abort { command } = outcome {
                summary.aborted = Some(command);
                break;
            }
        }
        let view = |active: usize, started: usize| SchedulerView {
            active,
            started,
            max_agents: request.max_agents,
            max_issues: request.max_issues,
            draining: current != Stage::Running || summary.aborted.is_some(),
            trigger_due: periodic_due,
        };
        if spawn_capacity(&view(active.len(), started)) > 0 {
            let graph = tracker.snapshot().await?;
            let takeover = takeover_candidates(graph.issues(), request.resume, |run| {
                is_run_alive(&lock_dir, run)
            });
            let plan = plan_queue(
                &graph,
                &QueueRequest {
                    scope: &request.scope,
                    order: request.order,
                    issue_types,
                    skip: &attempted,
                    takeover: &takeover,
                    limit: None,
                    now: Utc::now(),
                },
            )
            .map_err(|e| RunError::Setup(format!("--scope {}: {e}", request.scope)))?;
            for entry in plan.entries {
                if spawn_capacity(&view(active.len(), started)) == 0 {
                    break;
                }
                attempted.insert(entry.id.clone());
                if entry.takeover {
                    // A dead run's claim (or, with --resume, unassigned work): take it over, once.
                    let holder = graph.get(&entry.id).and_then(|i| i.assignee.clone());
                    let taken = tracker_port
                        .take_over(&entry.id, &runner_config.actor, holder)
                        .await;
                    if !matches!(taken, Ok(mala_core::ClaimOutcome::Claimed)) {
                        continue;
                    }
                }
                let agent = agent_name(&entry.id, &request.run_id);
                let (ports, config, issue, worker_agent) = (
                    ports.clone(),
                    runner_config.clone(),
                    entry.id.clone(),
                    agent.clone(),
                );
                let abort = workers.spawn(async move {
                    let result = run_issue(&issue, worker_agent, &ports, &config).await;
                    (issue, result)
                });
                active.insert(entry.id.clone(), Worker { agent, abort });
                started += 1;
            }
        }
        if active.is_empty()
            && sweep_pending
            && current == Stage::Running
            && summary.aborted.is_none()
        {
            sweep_pending = false;
            match sweep_epics(
                tracker_port.as_ref(),
                epic_verifier.as_ref(),
                &request.scope,
                &mut epic_book,
                max_epic_rounds,
                events.as_ref(),
            )
            .await
            {
                Ok(sweep) => {
                    // A closed epic may complete its parent; new issues may be ready.
                    sweep_pending = !sweep.closed.is_empty();
                    if !sweep.closed.is_empty() || !sweep.created.is_empty() {
                        continue;
                    }
                }
                Err(error) => events.emit(&Event::Warning {
                    message: format!("epic sweep failed: {error}"),
                }),
            }
        }
        if active.is_empty() {
            if done(&view(0, started), request.watch.is_some()).is_some() {
                break;
            }
            let Some(poll) = request.watch else {
                break;
            };
            if !idle_said {
                events.emit(&Event::Warning {
                    message: format!(
                        "watching: nothing ready; looking again every {} s (Ctrl-C to stop)",
                        poll.as_secs()
                    ),
                });
                idle_said = true;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                changed = stage.changed(), if stage_open => stage_open = changed.is_ok(),
            }
            continue;
        }
        idle_said = false;
        tokio::select! {
            finished = workers.join_next() => {
                let Some(finished) = finished else { break };
                match finished {
                    Ok((issue, result)) => {
                        active.remove(&issue);
                        match result {
                            IssueResult::Closed { .. } => {
                                summary.closed.push(issue);
                                sweep_pending = true;
                                closed_since_periodic += 1;
                                if let Some(periodic) = &settings.validation_triggers.periodic
                                    && periodic.interval > 0
                                    && closed_since_periodic >= periodic.interval
                                {
                                    closed_since_periodic = 0;
                                    periodic_due = true;
                                }
                            }
                            IssueResult::Failed { reason } => summary.failed.push((issue, reason)),
                            IssueResult::Skipped { reason } => summary.skipped.push((issue, reason)),
                        }
                    }
                    Err(join_error) if join_error.is_cancelled() => {
                        // A deadlock victim, cancelled on purpose; handled when it was chosen.
                        active.retain(|_, w| !w.abort.is_finished());
                    }
                    Err(join_error) => {
                        events.emit(&Event::Warning { message: format!("an issue worker crashed: {join_error}") });
                        active.retain(|_, w| !w.abort.is_finished());
                    }
                }
            }
            victim = victims.recv() => {
                if let Some(resolution) = victim
                    && let Some((issue, worker)) = active.iter().find(|(_, w)| w.agent == resolution.victim)
                {
                    let issue = issue.clone();
                    worker.abort.abort();
                    deferred.insert(issue.clone());
                    events.emit(&Event::IssueSkipped { issue, reason: "gave way in a deadlock; it runs again once its blocker closes".into() });
                }
            }
            changed = stage.changed(), if stage_open => {
                // A closed sender means nobody can ask for a drain any more.
                stage_open = changed.is_ok();
            }
        }
    }

    if let Some(run_end) = &settings.validation_triggers.run_end
        && !summary.interrupted
        && summary.aborted.is_none()
    {
        let fire = match run_end.fire_on {
            FireOn::Success => summary.failed.is_empty(),
            FireOn::Failure => !summary.failed.is_empty(),
            FireOn::Both => true,
        };
        if fire
            && let TriggerOutcome::Abort { command } = run_trigger(
                "run_end",
                &run_end.trigger,
                &repo_root,
                &ports.backend,
                &request.run_id,
                &events,
            )
            .await
        {
            summary.aborted = Some(command);
        }
    }
    // Whatever ends the run, this run's locks go and its marker with them.
    for worker in active.values() {
        let _ = locks.release_all(&worker.agent).await;
    }
    summary.deferred = deferred.into_iter().collect();
    drop(ports);
    monitor.abort();
    if !summary.closed.is_empty() {
        if let Err(error) = tracker_port.flush().await {
            events.emit(&Event::Warning {
                message: format!("could not flush the tracker: {error}"),
            });
        }
        match commit_tracker_files(&repo_root, "mala: sync beads issues").await {
            Ok(_) => {}
            Err(error) => events.emit(&Event::Warning {
                message: format!("could not commit .beads/: {error}"),
            }),
        }
    }
    let _ = std::fs::remove_file(RunMarker::path(&lock_dir, &request.run_id));
    let record = |issue: &IssueId, status: &str, reason: Option<String>| {
        let agent = agent_name(issue, &request.run_id);
        IssueRecord {
            issue: issue.to_string(),
            log_path: state_dir.join("sessions").join(format!(
                "{}.jsonl",
                agent.as_str().replace(['/', '\\'], "_")
            )),
            agent: agent.to_string(),
            status: status.to_owned(),
            reason,
        }
    };
    run_log.issues = summary
        .closed
        .iter()
        .map(|i| record(i, "closed", None))
        .chain(
            summary
                .failed
                .iter()
                .map(|(i, r)| record(i, "failed", Some(r.clone()))),
        )
        .chain(
            summary
                .skipped
                .iter()
                .map(|(i, r)| record(i, "skipped", Some(r.clone()))),
        )
        .chain(
            summary
                .deferred
                .iter()
                .map(|i| record(i, "deferred", Some("gave way in a deadlock".into()))),
        )
        .collect();
    run_log.finished_at = Some(Utc::now());
    let outcome = if summary.interrupted {
        "interrupted"
    } else if summary.aborted.is_some() {
        "aborted"
    } else if *stage.borrow() == Stage::Drain {
        "drained"
    } else {
        "finished"
    };
    outcome.clone_into(&mut run_log.outcome);
    let _ = run_log.write(&settings.paths.runs_dir);
    events.emit(&Event::RunFinished {
        run_id: request.run_id.clone(),
        outcome: if summary.interrupted {
            RunOutcome::Aborted {
                reason: "interrupted".into(),
            }
        } else if *stage.borrow() == Stage::Drain {
            RunOutcome::Drained
        } else {
            RunOutcome::Finished
        },
        succeeded: summary.closed.len(),
        failed: summary.failed.len(),
    });
    Ok(summary)
}
