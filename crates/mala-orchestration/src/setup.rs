//! What a run sets up before its first plan and takes down after its last:
//! the state directory and the recorder, the run marker, stale locks of
//! runs that are gone, the deadlock monitor, and the ports and settings
//! every issue's runner gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mala_core::{Event, EventSink, IssueId, IssueRecord, RunLog, RunStore};
use mala_domain::{Settings, claim_actor, required_commands};
use mala_pipeline::{FaultDesk, FaultLine, RunnerConfig, RunnerPorts, fault_line};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::DeadlockNews;
use crate::deadlock_monitor::run_deadlock_monitor;
use crate::orchestrator::{Orchestrator, RunError, RunPlan};
use crate::recorder::{Recorded, RunRecorder};
use crate::triggers::SessionEndTrigger;

/// A run's surroundings, from setup to teardown.
pub(crate) struct RunContext {
    pub(crate) state_dir: PathBuf,
    store: Arc<dyn RunStore>,
    /// Every event of the run, through the recorder first.
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) recorder: Arc<RunRecorder>,
    pub(crate) ports: RunnerPorts,
    pub(crate) runner_config: RunnerConfig,
    /// Earlier runs' records: where interrupted work picks up.
    pub(crate) priors: HashMap<IssueId, IssueRecord>,
    monitor: Option<JoinHandle<()>>,
    /// The scheduler's inputs from outside it, taken once by the scheduler.
    pub(crate) victims: Option<mpsc::UnboundedReceiver<DeadlockNews>>,
    pub(crate) issue_stops: Option<mpsc::UnboundedReceiver<crate::StopRequest>>,
    pub(crate) session_end_aborts: Option<mpsc::UnboundedReceiver<crate::triggers::TriggerStop>>,
    pub(crate) fault_desk: Option<FaultDesk>,
}

impl RunContext {
    /// Sets the run up, through the ports alone: its record and its mark
    /// are in the run store before the first issue is planned.
    pub(crate) fn start(orchestrator: &mut Orchestrator) -> Result<Self, RunError> {
        let lock_inbox = orchestrator.lock_events.take();
        let (settings, plan) = (&orchestrator.settings, &orchestrator.plan);
        let repo_root = orchestrator.repo_root.clone();
        let store = Arc::clone(&orchestrator.run_store);
        let state_dir = store.run_dir(&plan.run_id);
        let run = RunLog {
            run_id: plan.run_id.clone(),
            repo_path: repo_root.clone(),
            started_at: orchestrator.clock.now(),
            finished_at: None,
            outcome: "running".into(),
            settings: settings_summary(settings, plan),
            issues: Vec::new(),
        };
        let recorder = Arc::new(RunRecorder::start(
            Arc::clone(&store),
            &state_dir.join("sessions"),
            Arc::clone(&orchestrator.clock),
            run.clone(),
        )?);
        let events: Arc<dyn EventSink> = Arc::new(Recorded {
            recorder: Arc::clone(&recorder),
            events: Arc::clone(&orchestrator.events),
        });
        mark_the_run(store.as_ref(), &run, plan, events.as_ref())?;

        let (victims_tx, victims) = mpsc::unbounded_channel();
        let monitor = match (&orchestrator.locks, lock_inbox) {
            (Some(locks), Some(inbox)) => Some(tokio::spawn(run_deadlock_monitor(
                inbox,
                Arc::clone(&orchestrator.tracker),
                Arc::clone(locks),
                victims_tx,
                Arc::clone(&orchestrator.events),
            ))),
            _ => None,
        };
        let (aborts_tx, aborts) = mpsc::unbounded_channel();
        let (faults, fault_desk) = fault_line(Arc::clone(&orchestrator.ledger));
        let ports = runner_ports(orchestrator, &events, aborts_tx, faults);
        let runner_config = runner_config(settings, plan, &repo_root, &state_dir);
        let priors = prior_records(store.as_ref(), &plan.run_id);
        Ok(Self {
            state_dir,
            store,
            events,
            recorder,
            ports,
            runner_config,
            priors,
            monitor,
            victims: Some(victims),
            issue_stops: orchestrator.issue_stops.take(),
            session_end_aborts: Some(aborts),
            fault_desk: Some(fault_desk),
        })
    }

    /// Whether the run named in a claim or a lock still runs.
    pub(crate) fn is_alive(&self, run_id: &str) -> bool {
        self.store.is_alive(run_id)
    }

    /// Takes the run down: the monitor stops, the mark goes. Locks and
    /// the tracker are the scheduler's to settle before this.
    pub(crate) fn stop(&mut self, run_id: &str) {
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        self.store.unmark(run_id);
    }
}

/// Removes what runs that are gone left behind, then marks this run live,
/// which tells the next run that this one's locks are live.
fn mark_the_run(
    store: &dyn RunStore,
    run: &RunLog,
    plan: &RunPlan,
    events: &dyn EventSink,
) -> Result<(), RunError> {
    let removed = store.remove_stale();
    if removed > 0 {
        events.emit(&Event::Warning {
            message: format!("removed {removed} stale lock(s) of runs that are gone"),
        });
    }
    store.mark_live(run, u32::try_from(plan.max_agents).ok())?;
    Ok(())
}

fn runner_ports(
    orchestrator: &Orchestrator,
    events: &Arc<dyn EventSink>,
    session_end_aborts: mpsc::UnboundedSender<crate::triggers::TriggerStop>,
    faults: FaultLine,
) -> RunnerPorts {
    let settings = &orchestrator.settings;
    RunnerPorts {
        tracker: Arc::clone(&orchestrator.tracker),
        backend: Arc::clone(&orchestrator.backend),
        repo: Arc::clone(&orchestrator.repository),
        reviewer: orchestrator.reviewer.clone(),
        locks: orchestrator.locks.clone(),
        workspaces: orchestrator.workspaces.clone(),
        events: Arc::clone(events),
        clock: Arc::clone(&orchestrator.clock),
        session_end: settings
            .validation_triggers
            .session_end
            .as_ref()
            .map(|trigger| {
                Arc::new(SessionEndTrigger {
                    trigger: trigger.clone(),
                    site: orchestrator.trigger_site(events),
                    aborts: session_end_aborts,
                }) as Arc<dyn mala_pipeline::SessionEndCheck>
            }),
        faults,
    }
}

fn runner_config(
    settings: &Settings,
    plan: &RunPlan,
    repo_root: &Path,
    state_dir: &Path,
) -> RunnerConfig {
    RunnerConfig {
        issue_budget: settings.budget.issue,
        red_baseline: Vec::new(),
        repo_root: repo_root.to_path_buf(),
        actor: claim_actor(&plan.run_id),
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
        track_review_issues: settings.per_issue_review.track_review_issues,
        protected_files: settings.evidence_check.protected_files.clone(),
        merge_validate: settings.isolation.merge_queue.validate,
        merge_retries: settings.isolation.merge_queue.max_retries,
    }
}

/// What `run.json` says the run was set up to do.
fn settings_summary(settings: &Settings, plan: &RunPlan) -> serde_json::Value {
    let t = &settings.validation_triggers;
    let triggers: Vec<&str> = [
        ("session_end", t.session_end.is_some()),
        ("periodic", t.periodic.is_some()),
        ("epic_completion", t.epic_completion.is_some()),
        ("run_end", t.run_end.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    serde_json::json!({
        "scope": plan.scope.to_string(),
        "order": format!("{:?}", plan.order),
        "max_agents": plan.max_agents,
        "max_issues": plan.max_issues,
        "resume": plan.resume.take_up,
        "model": settings.model,
        "required_checks": settings.evidence_check.required,
        "gate_rerun": settings.gate.rerun,
        "per_issue_review": settings.per_issue_review.enabled.then(|| settings.per_issue_review.reviewer.reviewer_type.to_string()),
        "epic_verification": settings.epic_verification.enabled,
        "triggers": triggers,
        "budget": settings.budget,
        "baseline": settings.baseline.to_string(),
    })
}

/// The newest record of each issue in this repository's earlier runs.
fn prior_records(store: &dyn RunStore, this_run: &str) -> HashMap<IssueId, IssueRecord> {
    let mut priors = HashMap::new();
    // Newest run first: the first record of an issue wins.
    for run in store.runs() {
        if run.run_id == this_run {
            continue;
        }
        for record in run.issues {
            priors
                .entry(IssueId::new(record.issue.clone()))
                .or_insert(record);
        }
    }
    priors
}
