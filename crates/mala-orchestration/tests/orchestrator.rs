//! The orchestrator with in-memory ports: a tracker, scripted agents that
//! commit (or lie), and a repository of their commits. No processes, no
//! files beyond a temporary state directory, so every scheduling rule can be
//! checked quickly and exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // the harness panics to fail the test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use mala_core::{
    Dependency, DependencyKind, Event, EventSink, Issue, IssueId, IssueStatus, IssueTracker,
    IssueType, StopAnswer,
};
use mala_domain::{ConfigSources, FlagOverrides, Settings, resolve};
use mala_orchestration::{Orchestrator, RunError, RunPlan, RunSummary, Stage, StopRequest};
use mala_testkit::{MemoryRepository, MemoryTracker, ScriptedBackend};
use tokio::sync::watch;

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>, tokio::sync::Notify);

impl EventSink for Recorder {
    fn emit(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
        self.1.notify_waiters();
    }
}

impl Recorder {
    /// Waits until `count` events match: every emit wakes the check, so a
    /// test acts on what the run did, never on how long it took.
    async fn until(&self, count: usize, wanted: impl Fn(&Event) -> bool) {
        let seen = async {
            loop {
                let woken = self.1.notified();
                if self.0.lock().unwrap().iter().filter(|e| wanted(e)).count() >= count {
                    return;
                }
                woken.await;
            }
        };
        // A bound on a broken run, not a synchronisation.
        tokio::time::timeout(Duration::from_secs(60), seen)
            .await
            .expect("the run never got there");
    }

    async fn until_started(&self, count: usize) {
        self.until(count, |e| matches!(e, Event::IssueStarted { .. }))
            .await;
    }

    fn claimed(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::IssueClaimed { issue, .. } => Some(issue.to_string()),
                _ => None,
            })
            .collect()
    }
}

struct World {
    dir: tempfile::TempDir,
    tracker: MemoryTracker,
    repository: MemoryRepository,
    backend: ScriptedBackend,
    events: Arc<Recorder>,
}

fn settings(dir: &std::path::Path) -> Settings {
    let mut settings = resolve(ConfigSources {
        file: None,
        env: &BTreeMap::new(),
        flags: &FlagOverrides::default(),
    })
    .unwrap();
    settings.paths.runs_dir = dir.join("runs");
    settings.paths.lock_dir = dir.join("locks");
    settings.epic_verification.enabled = false;
    settings
}

impl World {
    fn new(issues: Vec<Issue>, work: Duration) -> Self {
        let repository = MemoryRepository::default();
        Self {
            dir: tempfile::tempdir().unwrap(),
            tracker: MemoryTracker::with_issues(issues),
            backend: ScriptedBackend::honest(repository.clone(), work),
            repository,
            events: Arc::new(Recorder::default()),
        }
    }

    fn orchestrator(&self, plan: RunPlan) -> Orchestrator {
        self.builder(settings(self.dir.path()), plan)
            .build()
            .unwrap()
    }

    /// An orchestrator on this world's ports and events, with `settings`.
    fn builder(
        &self,
        settings: Settings,
        plan: RunPlan,
    ) -> mala_orchestration::OrchestratorBuilder {
        Orchestrator::builder(settings, self.dir.path())
            .plan(plan)
            .tracker(Arc::new(self.tracker.clone()))
            .backend(Arc::new(self.backend.clone()))
            .repository(Arc::new(self.repository.clone()))
            .run_store(self.run_store())
            .events(self.events.clone())
    }

    async fn run(&self, plan: RunPlan) -> RunSummary {
        let (_stage, stages) = watch::channel(Stage::Running);
        self.orchestrator(plan).run(stages).await.unwrap()
    }

    /// The run's record and marks in files under the world's directory.
    fn run_store(&self) -> Arc<dyn mala_core::RunStore> {
        let dir = self.dir.path();
        Arc::new(mala_infra::FileRunStore::new(
            &dir.join("runs"),
            &dir.join("locks"),
            dir,
        ))
    }

    /// Issues m-1 to m-`count` are as before the run: open, unassigned,
    /// no label, no note.
    async fn assert_untouched(&self, count: usize) {
        for n in 1..=count {
            let issue = self
                .tracker
                .show(&IssueId::new(format!("m-{n}")))
                .await
                .unwrap();
            assert_eq!(issue.status, IssueStatus::Open, "m-{n}");
            assert!(issue.assignee.is_none_or(|a| a.is_empty()), "m-{n}");
            assert!(issue.labels.is_empty() && issue.notes.is_empty(), "m-{n}");
        }
    }

    async fn status(&self, id: &str) -> IssueStatus {
        self.tracker.show(&IssueId::new(id)).await.unwrap().status
    }
}

fn task(id: &str) -> Issue {
    Issue::new(id, format!("Task {id}"), Utc::now())
}

fn plan(max_agents: usize) -> RunPlan {
    RunPlan {
        max_agents,
        run_id: "test-run".into(),
        ..RunPlan::default()
    }
}

fn ids(list: &[IssueId]) -> Vec<String> {
    let mut ids: Vec<String> = list.iter().map(ToString::to_string).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn honest_agents_close_their_issues_in_dependency_order_and_liars_do_not() {
    let mut second = task("m-2");
    second.dependencies.push(Dependency {
        depends_on: IssueId::new("m-1"),
        kind: DependencyKind::Blocks,
    });
    let mut world = World::new(
        vec![task("m-1"), second, task("m-3"), task("m-4")],
        Duration::from_millis(20),
    );
    world.backend = world.backend.clone().lazy_on(&["m-4"]);
    let summary = world.run(plan(3)).await;
    assert_eq!(ids(&summary.closed), vec!["m-1", "m-2", "m-3"]);
    assert_eq!(
        ids(&summary
            .failed
            .iter()
            .map(|(i, _)| i.clone())
            .collect::<Vec<_>>()),
        vec!["m-4"]
    );
    assert!(
        summary.failed[0].1.contains("no commit"),
        "{:?}",
        summary.failed
    );
    let claimed = world.events.claimed();
    let position = |id: &str| claimed.iter().position(|c| c == id).unwrap();
    assert!(
        position("m-1") < position("m-2"),
        "m-2 waited for m-1: {claimed:?}"
    );
    assert_eq!(
        world.status("m-4").await,
        IssueStatus::Open,
        "reopened for a later run"
    );
    assert_eq!(world.repository.commits().len(), 3);
}

#[tokio::test]
async fn no_more_than_max_agents_run_at_once_and_max_issues_is_a_limit() {
    let world = World::new(
        (1..=7).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(30),
    );
    let summary = world
        .run(RunPlan {
            max_issues: Some(5),
            ..plan(2)
        })
        .await;
    assert_eq!(summary.closed.len(), 5);
    assert_eq!(world.tracker.count(&IssueStatus::Open), 2);
    // At most two sessions were ever live at once: claims come in pairs.
    let events = world.events.0.lock().unwrap();
    let mut live = 0i32;
    let mut most = 0;
    for event in events.iter() {
        match event {
            Event::IssueClaimed { .. } => live += 1,
            Event::IssueClosed { .. } | Event::IssueFailed { .. } => live -= 1,
            _ => {}
        }
        most = most.max(live);
    }
    assert_eq!(most, 2);
}

#[tokio::test]
async fn an_epic_closes_with_its_last_child_when_verification_is_off() {
    let world = World::new(epic_with_child(), Duration::from_millis(5));
    let summary = world.run(plan(1)).await;
    assert_eq!(ids(&summary.closed), vec!["m-c"]);
    assert_eq!(world.status("m-e").await, IssueStatus::Closed);
}

#[tokio::test]
async fn a_drain_lets_running_issues_finish_and_starts_no_more() {
    let world = World::new(
        (1..=6).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(300),
    );
    let (stage, stages) = watch::channel(Stage::Running);
    let run = tokio::spawn(world.orchestrator(plan(2)).run(stages));
    world.events.until_started(2).await;
    stage.send(Stage::Drain).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.closed.len(), 2, "the two running issues finished");
    assert!(!summary.interrupted);
    assert_eq!(world.tracker.count(&IssueStatus::Open), 4);
}

#[tokio::test]
async fn a_stop_ends_running_turns_and_keeps_their_claims() {
    let world = World::new(
        (1..=3).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_secs(30),
    );
    let (stage, stages) = watch::channel(Stage::Running);
    let run = tokio::spawn(world.orchestrator(plan(3)).run(stages));
    world.events.until_started(3).await;
    let started = std::time::Instant::now();
    stage.send(Stage::Abort).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no 30 s turn was waited for"
    );
    assert!(summary.interrupted);
    assert_eq!(summary.skipped.len(), 3, "{summary:?}");
    assert!(summary.failed.is_empty());
    assert_eq!(
        world.tracker.count(&IssueStatus::InProgress),
        3,
        "claims stay for the next run to take over"
    );
}

/// Asks the run to stop `id`; its answer comes on the receiver.
fn ask(
    stop: &tokio::sync::mpsc::UnboundedSender<StopRequest>,
    id: &str,
) -> tokio::sync::oneshot::Receiver<StopAnswer> {
    let (answer, reply) = tokio::sync::oneshot::channel();
    stop.send(StopRequest {
        issue: IssueId::new(id),
        answer,
    })
    .unwrap();
    reply
}

#[tokio::test]
async fn one_issue_stopped_mid_run_is_skipped_with_its_claim_kept_and_the_others_close() {
    let world = World::new(vec![task("m-1"), task("m-2")], Duration::from_secs(3));
    let (stop, stops) = tokio::sync::mpsc::unbounded_channel();
    let (_stage, stages) = watch::channel(Stage::Running);
    let orchestrator = world
        .builder(settings(world.dir.path()), plan(2))
        .issue_stops(stops)
        .build()
        .unwrap();
    let run = tokio::spawn(orchestrator.run(stages));
    world.events.until_started(2).await;
    let stopped = ask(&stop, "m-1");
    // An issue that is not running is no one's to stop.
    assert_eq!(ask(&stop, "m-9").await.unwrap(), StopAnswer::NotWorking);
    assert_eq!(
        stopped.await.unwrap(),
        StopAnswer::Stopped,
        "said once it ended"
    );
    let summary = run.await.unwrap().unwrap();
    assert_eq!(ids(&summary.closed), ["m-2"]);
    let skipped: Vec<&str> = summary.skipped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(skipped, ["m-1"]);
    assert!(!summary.interrupted, "the run itself went on");
    assert_eq!(
        world.status("m-1").await,
        IssueStatus::InProgress,
        "the claim is kept"
    );
    let events = world.events.0.lock().unwrap().clone();
    let reason = events.into_iter().find_map(|e| match e {
        Event::IssueSkipped { issue, reason } if issue.as_str() == "m-1" => Some(reason),
        _ => None,
    });
    assert!(reason.unwrap().contains("stopped by the user"));
}

#[tokio::test]
async fn a_stop_that_comes_as_the_issue_closes_is_answered_too_late_not_stopped() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let held = world.tracker.hold_closes();
    let (stop, stops) = tokio::sync::mpsc::unbounded_channel();
    let (_stage, stages) = watch::channel(Stage::Running);
    let orchestrator = world
        .builder(settings(world.dir.path()), plan(1))
        .issue_stops(stops)
        .build()
        .unwrap();
    let run = tokio::spawn(orchestrator.run(stages));
    // The gate and the review passed; the worker is closing the issue.
    held.reached.notified().await;
    let late = ask(&stop, "m-1");
    // Requests are read in order: once this one is answered, m-1's is in.
    assert_eq!(ask(&stop, "m-9").await.unwrap(), StopAnswer::NotWorking);
    held.release.notify_one();
    assert_eq!(
        late.await.unwrap(),
        StopAnswer::TooLate { outcome: "closed" }
    );
    let summary = run.await.unwrap().unwrap();
    assert_eq!(ids(&summary.closed), ["m-1"]);
}

#[tokio::test]
async fn watch_mode_picks_up_an_issue_added_mid_run() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let (stage, stages) = watch::channel(Stage::Running);
    let run = tokio::spawn(
        world
            .orchestrator(RunPlan {
                watch: Some(Duration::from_millis(50)),
                ..plan(1)
            })
            .run(stages),
    );
    // Idle and watching: the first issue is done and nothing else is ready.
    world
        .events
        .until(
            1,
            |e| matches!(e, Event::Warning { message } if message.starts_with("watching")),
        )
        .await;
    let added = world
        .tracker
        .create(mala_core::NewIssue {
            title: "Added while watching".into(),
            ..mala_core::NewIssue::default()
        })
        .await
        .unwrap();
    world
        .events
        .until(
            1,
            |e| matches!(e, Event::IssueClosed { issue } if *issue == added),
        )
        .await;
    stage.send(Stage::Drain).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        ids(&summary.closed),
        vec!["m-1".to_owned(), added.to_string()]
    );
}

#[tokio::test]
async fn a_builder_without_a_tracker_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let error = Orchestrator::builder(settings(dir.path()), dir.path())
        .build()
        .unwrap_err();
    assert_eq!(error.to_string(), "the orchestrator needs a tracker");
}

#[tokio::test]
async fn a_scope_naming_issues_the_tracker_lacks_says_which() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(1));
    let scope: mala_domain::Scope = "ids:m-1,m-nope".parse().unwrap();
    let (_stage, stages) = watch::channel(Stage::Running);
    let error = world
        .orchestrator(RunPlan { scope, ..plan(1) })
        .run(stages)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RunError::Scope { source, .. } if source.0 == [IssueId::new("m-nope")]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "--scope ids:m-1,m-nope: unknown issue id: m-nope"
    );
}

fn epic_with_child() -> Vec<Issue> {
    let mut epic = task("m-e");
    epic.issue_type = IssueType::Epic;
    let mut child = task("m-c");
    child.parent = Some(IssueId::new("m-e"));
    child.dependencies.push(Dependency {
        depends_on: IssueId::new("m-e"),
        kind: DependencyKind::ParentChild,
    });
    vec![epic, child]
}

fn epic_completion(
    mode: mala_domain::FailureMode,
    command: &str,
) -> mala_domain::EpicCompletionTrigger {
    mala_domain::EpicCompletionTrigger {
        trigger: mala_domain::Trigger {
            failure_mode: mode,
            max_retries: 0,
            commands: vec![mala_domain::TriggerCommand {
                name: "check".into(),
                command: command.into(),
                timeout: None,
            }],
            code_review: None,
        },
        epic_depth: mala_domain::EpicDepth::TopLevel,
        fire_on: mala_domain::FireOn::Success,
        max_epic_verification_retries: 3,
    }
}

#[tokio::test]
async fn epic_completion_runs_when_an_epic_closes_and_can_stop_the_run() {
    let world = World::new(epic_with_child(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.validation_triggers.epic_completion = Some(epic_completion(
        mala_domain::FailureMode::Abort,
        "echo done >> epic-checked.txt",
    ));
    let orchestrator = world.builder(config, plan(1)).build().unwrap();
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = orchestrator.run(stages).await.unwrap();
    assert_eq!(summary.aborted, None);
    assert_eq!(
        std::fs::read_to_string(world.dir.path().join("epic-checked.txt")).unwrap(),
        "done\n",
        "fired once, for the one epic"
    );

    let world = World::new(epic_with_child(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.validation_triggers.epic_completion =
        Some(epic_completion(mala_domain::FailureMode::Abort, "exit 4"));
    let orchestrator = world.builder(config, plan(1)).build().unwrap();
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = orchestrator.run(stages).await.unwrap();
    assert_eq!(summary.aborted.as_deref(), Some("exit 4"));
    // One outcome, said the same way in run.json and in the event stream.
    let runs = mala_infra::list_runs(&world.dir.path().join("runs"), Some(world.dir.path()));
    assert_eq!(runs[0].outcome, "aborted");
    let finished = world.events.0.lock().unwrap().iter().find_map(|e| match e {
        Event::RunFinished { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    assert_eq!(
        finished,
        Some(mala_core::RunOutcome::Aborted {
            reason: "validation trigger failed: `exit 4`".into()
        })
    );
}

/// A reviewer answering from a script, keeping what it was asked.
#[derive(Default)]
struct ScriptedReviewer {
    answers: Mutex<Vec<Vec<mala_core::Finding>>>,
    asked: Mutex<Vec<mala_core::ReviewRequest>>,
    /// Every answer is this error instead, when set.
    refused: Option<mala_core::ReviewError>,
}

#[async_trait::async_trait]
impl mala_core::Reviewer for ScriptedReviewer {
    async fn review(
        &self,
        request: mala_core::ReviewRequest,
    ) -> Result<mala_core::ReviewVerdict, mala_core::ReviewError> {
        self.asked.lock().unwrap().push(request);
        if let Some(error) = &self.refused {
            return Err(error.clone());
        }
        let mut answers = self.answers.lock().unwrap();
        let findings = if answers.is_empty() {
            Vec::new()
        } else {
            answers.remove(0)
        };
        Ok(mala_core::ReviewVerdict { findings })
    }
}

fn finding(priority: u8) -> mala_core::Finding {
    mala_core::Finding {
        priority,
        title: format!("P{priority} problem"),
        body: "details".into(),
        file: Some("src/lib.rs".into()),
        line_start: None,
        line_end: None,
    }
}

async fn run_end_review(
    mode: mala_domain::FailureMode,
    threshold: mala_domain::FindingThreshold,
    answers: Vec<Vec<mala_core::Finding>>,
) -> (RunSummary, Arc<ScriptedReviewer>) {
    let reviewer = ScriptedReviewer {
        answers: Mutex::new(answers),
        ..ScriptedReviewer::default()
    };
    run_end_review_by(mode, threshold, reviewer).await
}

async fn run_end_review_by(
    mode: mala_domain::FailureMode,
    threshold: mala_domain::FindingThreshold,
    reviewer: ScriptedReviewer,
) -> (RunSummary, Arc<ScriptedReviewer>) {
    let world = World::new(vec![task("m-1"), task("m-2")], Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    let review = mala_domain::CodeReview {
        enabled: true,
        reviewer: config.per_issue_review.reviewer.clone(),
        failure_mode: mode,
        max_retries: 1,
        finding_threshold: threshold,
        baseline: None,
    };
    config.validation_triggers.run_end = Some(mala_domain::RunEndTrigger {
        trigger: mala_domain::Trigger {
            failure_mode: mala_domain::FailureMode::Continue,
            max_retries: 0,
            commands: vec![mala_domain::TriggerCommand {
                name: "check".into(),
                command: "true".into(),
                timeout: None,
            }],
            code_review: Some(review),
        },
        fire_on: mala_domain::FireOn::Success,
    });
    let reviewer = Arc::new(reviewer);
    let orchestrator = world
        .builder(config, plan(2))
        .trigger_reviewer(reviewer.clone())
        .build()
        .unwrap();
    let (_stage, stages) = watch::channel(Stage::Running);
    (orchestrator.run(stages).await.unwrap(), reviewer)
}

#[tokio::test]
async fn a_trigger_code_review_reads_the_runs_commits_together_and_can_stop_the_run() {
    let (summary, reviewer) = run_end_review(
        mala_domain::FailureMode::Abort,
        mala_domain::FindingThreshold::P1,
        vec![vec![finding(1), finding(3)]],
    )
    .await;
    assert_eq!(summary.closed.len(), 2);
    assert_eq!(summary.aborted.as_deref(), Some("the run_end code review"));
    let asked = reviewer.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].subject,
        mala_core::ReviewSubject::Range("run_end".into())
    );
    assert_eq!(asked[0].commits.len(), 2, "both issues' commits, together");

    // Below the threshold, or with none, nothing fails.
    let (summary, _) = run_end_review(
        mala_domain::FailureMode::Abort,
        mala_domain::FindingThreshold::P0,
        vec![vec![finding(1)]],
    )
    .await;
    assert_eq!(summary.aborted, None);
}

#[tokio::test]
async fn a_failed_trigger_review_with_remediate_gets_a_fixer_and_a_second_look() {
    let (summary, reviewer) = run_end_review(
        mala_domain::FailureMode::Remediate,
        mala_domain::FindingThreshold::P1,
        vec![vec![finding(0)], vec![]],
    )
    .await;
    assert_eq!(summary.aborted, None, "the second look found nothing");
    assert_eq!(reviewer.asked.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_trigger_review_the_environment_kept_from_running_is_skipped_not_an_abort() {
    let refused = ScriptedReviewer {
        refused: Some(mala_core::ReviewError::Environment {
            fault: mala_core::EnvFault::Authentication,
            message: "model API error 401".into(),
        }),
        ..ScriptedReviewer::default()
    };
    let (summary, reviewer) = run_end_review_by(
        mala_domain::FailureMode::Abort,
        mala_domain::FindingThreshold::P1,
        refused,
    )
    .await;
    assert_eq!(summary.aborted, None, "no verdict on the code: {summary:?}");
    assert_eq!(
        reviewer.asked.lock().unwrap().len(),
        1,
        "asked once, not twice"
    );
}

#[tokio::test]
async fn the_run_is_on_record_with_its_settings_and_each_issues_session() {
    let mut lazy = World::new(vec![task("m-1"), task("m-2")], Duration::from_millis(5));
    lazy.backend = lazy.backend.clone().lazy_on(&["m-2"]);
    let world = lazy;
    let summary = world.run(plan(2)).await;
    assert_eq!(summary.closed.len(), 1);
    let runs = mala_infra::list_runs(&world.dir.path().join("runs"), Some(world.dir.path()));
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.outcome, "finished");
    assert_eq!(run.settings["max_agents"], 2);
    let record = |id: &str| run.issues.iter().find(|r| r.issue == id).unwrap();
    assert_eq!(record("m-1").status, "closed");
    assert_eq!(record("m-1").session_id.as_deref(), Some("scripted-m-1"));
    assert!(record("m-1").baseline.is_some());
    assert_eq!(record("m-1").attempts, 1);
    assert_eq!(record("m-2").status, "failed");
    assert!(record("m-2").attempts >= 2, "{:?}", record("m-2"));
    assert!(
        record("m-2")
            .reason
            .as_deref()
            .unwrap()
            .contains("no commit")
    );
}

#[tokio::test]
async fn periodic_validation_runs_every_interval_closes_with_the_pool_idle() {
    let world = World::new(
        (1..=5).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(20),
    );
    let mut config = settings(world.dir.path());
    config.validation_triggers.periodic = Some(mala_domain::PeriodicTrigger {
        trigger: mala_domain::Trigger {
            failure_mode: mala_domain::FailureMode::Continue,
            max_retries: 0,
            commands: vec![mala_domain::TriggerCommand {
                name: "check".into(),
                // What was closed when the check ran: the pool is idle then.
                command: "echo ran >> periodic.txt".into(),
                timeout: None,
            }],
            code_review: None,
        },
        interval: 2,
    });
    let orchestrator = world.builder(config, plan(2)).build().unwrap();
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = orchestrator.run(stages).await.unwrap();
    assert_eq!(summary.closed.len(), 5);
    let ran = std::fs::read_to_string(world.dir.path().join("periodic.txt")).unwrap();
    assert_eq!(ran.lines().count(), 2, "after closes 2 and 4: {ran}");
}

fn pausing(max_pause: Duration) -> mala_orchestration::PausePolicy {
    mala_orchestration::PausePolicy {
        max_pause,
        backoff: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn refused_credentials_stop_the_run_and_leave_every_issue_as_it_was() {
    let mut world = World::new(
        (1..=4).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(5),
    );
    world.backend = world
        .backend
        .clone()
        .failing_first(usize::MAX, mala_core::AgentErrorKind::Authentication);
    let summary = world.run(plan(1)).await;
    assert!(
        summary
            .stopped
            .as_deref()
            .is_some_and(|r| r.contains("credentials")),
        "{summary:?}"
    );
    assert_eq!(
        summary.released.len(),
        1,
        "one agent learned it; no other started"
    );
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(world.events.claimed().len(), 1);
    world.assert_untouched(4).await;
}

#[tokio::test]
async fn a_rate_limit_pauses_every_agent_then_the_run_resumes_and_closes_all() {
    let mut world = World::new(
        (1..=3).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(5),
    );
    world.backend = world.backend.clone().failing_first(
        2,
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
    );
    let summary = world
        .run(RunPlan {
            pauses: pausing(Duration::from_secs(60)),
            ..plan(2)
        })
        .await;
    assert_eq!(
        ids(&summary.closed),
        vec!["m-1", "m-2", "m-3"],
        "{summary:?}"
    );
    assert!(summary.released.is_empty() && summary.stopped.is_none());
    let events = world.events.0.lock().unwrap().clone();
    let paused = events
        .iter()
        .position(|e| matches!(e, Event::RunPaused { .. }))
        .expect("the run paused");
    let resumed = events
        .iter()
        .position(|e| matches!(e, Event::RunResumed))
        .expect("the run resumed");
    assert!(paused < resumed);
    let claims_while_paused = events[paused..resumed]
        .iter()
        .filter(|e| matches!(e, Event::IssueClaimed { .. }))
        .count();
    assert_eq!(claims_while_paused, 0, "no claim while paused: {events:?}");
}

#[tokio::test]
async fn a_limit_that_resets_after_max_pause_stops_the_run_and_gives_the_issue_back() {
    let mut world = World::new(vec![task("m-1"), task("m-2")], Duration::from_millis(5));
    let tomorrow = chrono::Utc::now() + chrono::Duration::hours(24);
    world.backend = world.backend.clone().failing_first(
        usize::MAX,
        mala_core::AgentErrorKind::RateLimited {
            resets_at: Some(tomorrow),
        },
    );
    let summary = world
        .run(RunPlan {
            pauses: pausing(Duration::from_secs(3600)),
            ..plan(1)
        })
        .await;
    let reason = summary.stopped.clone().expect("stopped");
    assert!(reason.contains("--max-pause"), "{reason}");
    assert_eq!(summary.released.len(), 1);
    assert_eq!(world.status("m-1").await, IssueStatus::Open);
    assert_eq!(world.status("m-2").await, IssueStatus::Open);
    assert!(summary.failed.is_empty());
}

#[tokio::test]
async fn a_run_budget_drains_the_run_and_leaves_what_it_stopped_open() {
    let mut world = World::new(
        (1..=5).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(20),
    );
    // m-1's agent commits nothing: it would need a second turn.
    world.backend = world.backend.clone().costing(1.0).lazy_on(&["m-1"]);
    let mut settings = settings(world.dir.path());
    settings.budget.run = mala_domain::Spend {
        max_cost_usd: Some(1.5),
        max_tokens: None,
    };
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = world
        .builder(settings, plan(2))
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap();
    let spent = summary
        .budget_reached
        .clone()
        .expect("the budget was reached");
    assert!(spent.contains("of $1.50"), "{spent}");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    let claimed = world.events.claimed();
    assert_eq!(
        claimed.len(),
        2,
        "nothing new after the budget: {claimed:?}"
    );
    assert_eq!(
        world.status("m-1").await,
        IssueStatus::Open,
        "left open, not failed"
    );
    let m1 = world.tracker.show(&IssueId::new("m-1")).await.unwrap();
    assert!(m1.labels.is_empty() && m1.notes.is_empty(), "{m1:?}");
    for n in 3..=5 {
        assert_eq!(world.status(&format!("m-{n}")).await, IssueStatus::Open);
    }
    let outcome = world.events.0.lock().unwrap().iter().find_map(|e| match e {
        Event::RunFinished { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    assert!(
        matches!(outcome, Some(mala_core::RunOutcome::BudgetReached { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn one_agent_that_cannot_start_gives_its_issue_back_and_a_second_in_a_row_stops_the_run() {
    let mut world = World::new(
        (1..=3).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(5),
    );
    world.backend = world.backend.clone().refusing_to_start(2);
    let summary = world.run(plan(1)).await;
    let reason = summary.stopped.clone().expect("stopped");
    assert!(
        reason.contains("2 agents in a row could not start"),
        "{reason}"
    );
    assert_eq!(summary.released.len(), 2, "{summary:?}");
    assert!(summary.failed.is_empty());
    assert_eq!(
        world.events.claimed().len(),
        2,
        "the third was never claimed"
    );
    world.assert_untouched(3).await;
}

#[tokio::test]
async fn a_start_failure_between_good_sessions_is_not_in_a_row() {
    let mut world = World::new(
        (1..=3).map(|n| task(&format!("m-{n}"))).collect(),
        Duration::from_millis(5),
    );
    world.backend = world.backend.clone().refusing_to_start(1);
    let summary = world.run(plan(1)).await;
    assert!(summary.stopped.is_none(), "{summary:?}");
    assert_eq!(summary.released.len(), 1);
    assert_eq!(
        summary.closed.len(),
        2,
        "the others close; the given-back one waits for the next run"
    );
}

#[tokio::test]
async fn back_to_back_pauses_count_together_against_max_pause() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    // Limited with no reset time, for ever: backoffs of 20, 40, 80 ms… each
    // short, together past the 100 ms allowed.
    world.backend = world.backend.clone().failing_first(
        usize::MAX,
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
    );
    let summary = world
        .run(RunPlan {
            pauses: pausing(Duration::from_millis(100)),
            ..plan(1)
        })
        .await;
    let reason = summary.stopped.clone().expect("stopped");
    assert!(reason.contains("--max-pause"), "{reason}");
    assert_eq!(summary.released.len(), 1);
    assert_eq!(world.status("m-1").await, IssueStatus::Open);
    let pauses = world
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::RunPaused { .. }))
        .count();
    assert!(pauses >= 2, "it paused, resumed and paused again: {pauses}");
}

/// Waits for `done` to hold, as a bound on a broken run, not a clock.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let waited = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waited)
        .await
        .unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test]
async fn a_ctrl_c_during_the_baseline_ends_the_run_and_kills_the_checks() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.commands.insert(
        "check".into(),
        mala_domain::CommandSpec {
            // The sleep is the shell's child: only a kill of the whole
            // process group takes it down with the shell.
            command: "sleep 30 & echo $! > check.pid; wait".into(),
            timeout: None,
            allow_fail: false,
        },
    );
    config.evidence_check.required = vec!["check".into()];
    let orchestrator = world.builder(config, plan(1)).build().unwrap();
    let (stage, stages) = watch::channel(Stage::Running);
    let run = tokio::spawn(orchestrator.run(stages));
    let pid_file = world.dir.path().join("check.pid");
    eventually("the baseline check started", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    stage.send(Stage::Drain).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends at the Ctrl-C, not after the checks")
        .unwrap()
        .unwrap();
    assert!(summary.closed.is_empty() && summary.failed.is_empty());
    assert!(world.events.claimed().is_empty(), "nothing was claimed");
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    eventually("the check's own child is gone", || {
        std::fs::read_to_string(proc.join("stat")).map_or(true, |stat| stat.contains(") Z "))
    })
    .await;
}

/// A run with the preflight on, to its end or its error.
async fn run_with_preflight(world: &World, plan: RunPlan) -> Result<RunSummary, RunError> {
    let (_stage, stages) = watch::channel(Stage::Running);
    world
        .builder(settings(world.dir.path()), plan)
        .preflight(true)
        .build()
        .unwrap()
        .run(stages)
        .await
}

#[tokio::test]
async fn a_preflight_that_proves_the_guard_lets_the_run_go_on_and_counts_its_spend() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world.backend.clone().costing(0.25);
    let summary = run_with_preflight(&world, plan(1)).await.unwrap();
    assert_eq!(ids(&summary.closed), vec!["m-1"]);
    assert_eq!(
        world.backend.sessions(),
        2,
        "the preflight's and the issue's"
    );
    assert!(
        (summary.spent.cost_usd - 0.5).abs() < 1e-9,
        "the preflight's turn is spent too: {:?}",
        summary.spent
    );
    // The run says its spend, the preflight's included, before it ends.
    let events = world.events.0.lock().unwrap().clone();
    let last_spend = events.iter().rev().find_map(|e| match e {
        Event::RunSpend { cost_usd, .. } => Some(*cost_usd),
        _ => None,
    });
    assert_eq!(last_spend, Some(summary.spent.cost_usd));
    assert!(matches!(events.last(), Some(Event::RunFinished { .. })));
}

#[tokio::test]
async fn the_preflight_probe_may_spend_no_more_than_the_run_budget() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.budget.run.max_cost_usd = Some(0.75);
    let (_stage, stages) = watch::channel(Stage::Running);
    world
        .builder(config, plan(1))
        .preflight(true)
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap();
    let probe = world.backend.requests().into_iter().find(|r| r.probe);
    assert_eq!(probe.expect("a probe session").max_cost_usd, Some(0.75));
}

#[tokio::test]
async fn refused_credentials_at_preflight_claim_nothing() {
    let mut world = World::new(vec![task("m-1"), task("m-2")], Duration::from_millis(5));
    world.backend = world
        .backend
        .clone()
        .failing_first(usize::MAX, mala_core::AgentErrorKind::Authentication);
    let error = run_with_preflight(&world, plan(2)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            RunError::Preflight(mala_orchestration::PreflightError::Environment(reason))
                if reason.contains("credentials")
        ),
        "{error:?}"
    );
    assert!(world.events.claimed().is_empty());
    world.assert_untouched(2).await;
}

#[tokio::test]
async fn hooks_that_let_the_canary_run_stop_the_run_before_any_claim() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world.backend.clone().unguarded();
    let error = run_with_preflight(&world, plan(1)).await.unwrap_err();
    assert!(
        matches!(
            error,
            RunError::Preflight(mala_orchestration::PreflightError::Unproven(
                mala_domain::PreflightFailure::NotRefused
            ))
        ),
        "{error:?}"
    );
    assert!(world.events.claimed().is_empty());
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn a_run_with_nothing_to_claim_pays_no_preflight() {
    let world = World::new(Vec::new(), Duration::from_millis(5));
    let summary = run_with_preflight(&world, plan(1)).await.unwrap();
    assert!(summary.closed.is_empty());
    assert_eq!(world.backend.sessions(), 0, "no probe session");
}

#[tokio::test]
async fn an_unreachable_api_at_preflight_stops_at_once_without_a_pause() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world
        .backend
        .clone()
        .failing_first(usize::MAX, mala_core::AgentErrorKind::Network);
    let error = run_with_preflight(
        &world,
        RunPlan {
            pauses: pausing(Duration::from_secs(3600)),
            ..plan(1)
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &error,
            RunError::Preflight(mala_orchestration::PreflightError::Agent(e))
                if e.kind == mala_core::AgentErrorKind::Network
        ),
        "{error:?}"
    );
    let paused = world
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::RunPaused { .. }));
    assert!(!paused, "a setup to fix is not waited out");
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn a_red_baseline_to_file_is_not_filed_when_the_preflight_fails() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world
        .backend
        .clone()
        .failing_first(usize::MAX, mala_core::AgentErrorKind::Authentication);
    let mut config = settings(world.dir.path());
    config.commands.insert(
        "check".into(),
        mala_domain::CommandSpec {
            command: "exit 1".into(),
            timeout: None,
            allow_fail: false,
        },
    );
    config.evidence_check.required = vec!["check".into()];
    config.baseline = mala_domain::BaselinePolicy::FileIssue;
    let (_stage, stages) = watch::channel(Stage::Running);
    let error = world
        .builder(config, plan(1))
        .preflight(true)
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap_err();
    assert!(matches!(error, RunError::Preflight(_)), "{error:?}");
    let issues = world.tracker.all_issues().await.unwrap();
    assert_eq!(issues.len(), 1, "no [Baseline] issue: {issues:?}");
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn a_limit_at_preflight_pauses_before_the_first_claim_then_the_run_goes_on() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world.backend.clone().failing_first(
        2,
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
    );
    let summary = run_with_preflight(
        &world,
        RunPlan {
            pauses: pausing(Duration::from_secs(60)),
            ..plan(1)
        },
    )
    .await
    .unwrap();
    assert_eq!(ids(&summary.closed), vec!["m-1"]);
    let events = world.events.0.lock().unwrap().clone();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunPaused { .. } => Some("paused"),
            Event::RunResumed => Some("resumed"),
            Event::IssueClaimed { .. } => Some("claimed"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["paused", "resumed", "paused", "resumed", "claimed"]);
}

#[tokio::test]
async fn a_limit_at_preflight_past_max_pause_stops_with_nothing_claimed() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let tomorrow = chrono::Utc::now() + chrono::Duration::hours(24);
    world.backend = world.backend.clone().failing_first(
        usize::MAX,
        mala_core::AgentErrorKind::RateLimited {
            resets_at: Some(tomorrow),
        },
    );
    let error = run_with_preflight(
        &world,
        RunPlan {
            pauses: pausing(Duration::from_secs(3600)),
            ..plan(1)
        },
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("--max-pause"), "{error}");
    assert!(world.events.claimed().is_empty());
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn ctrl_c_during_a_preflight_pause_ends_the_run_with_nothing_claimed() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world.backend.clone().failing_first(
        usize::MAX,
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
    );
    let (stage, stages) = watch::channel(Stage::Running);
    let events = world.events.clone();
    let orchestrator = world
        .builder(
            settings(world.dir.path()),
            RunPlan {
                pauses: mala_orchestration::PausePolicy {
                    max_pause: Duration::from_secs(3600),
                    backoff: Duration::from_secs(600),
                },
                ..plan(1)
            },
        )
        .preflight(true)
        .build()
        .unwrap();
    let run = tokio::spawn(orchestrator.run(stages));
    // Ctrl-C once the run has said it is paused.
    events
        .until(1, |e| matches!(e, Event::RunPaused { .. }))
        .await;
    stage.send_replace(Stage::Drain);
    let summary = run.await.unwrap().unwrap();
    assert!(summary.closed.is_empty() && summary.released.is_empty());
    assert!(world.events.claimed().is_empty());
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn a_fixer_the_environment_refuses_stops_the_run_for_the_environment_not_as_an_abort() {
    let mut world = World::new(vec![task("m-1")], Duration::from_millis(5));
    world.backend = world
        .backend
        .clone()
        .failing_fixers(mala_core::AgentErrorKind::Authentication);
    let mut config = settings(world.dir.path());
    config.validation_triggers.run_end = Some(mala_domain::RunEndTrigger {
        trigger: mala_domain::Trigger {
            failure_mode: mala_domain::FailureMode::Remediate,
            max_retries: 3,
            commands: vec![mala_domain::TriggerCommand {
                name: "check".into(),
                command: "exit 1".into(),
                timeout: None,
            }],
            code_review: None,
        },
        fire_on: mala_domain::FireOn::Both,
    });
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = world
        .builder(config, plan(1))
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap();
    assert_eq!(ids(&summary.closed), vec!["m-1"]);
    assert_eq!(summary.aborted, None, "{summary:?}");
    let stopped = summary
        .stopped
        .clone()
        .expect("stopped for the environment");
    assert!(
        stopped.contains("fixer could not work") && stopped.contains("credentials"),
        "{stopped}"
    );
    assert_eq!(
        world.backend.sessions(),
        2,
        "the issue's, and one fixer only"
    );
}

/// An epic verifier whose turns numbered in `failing` (from 0) fail with
/// `kind`; the others pass their epic.
fn verifier_meeting(
    kind: mala_core::AgentErrorKind,
    failing: std::ops::Range<usize>,
) -> mala_core::MockAgentBackend {
    let turns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut backend = mala_core::MockAgentBackend::new();
    backend.expect_start().returning(move |_, _| {
        let mut session = mala_core::MockAgentSession::new();
        let (turns, kind, failing) = (Arc::clone(&turns), kind.clone(), failing.clone());
        session.expect_turn().returning(move |_| {
            if failing.contains(&turns.fetch_add(1, std::sync::atomic::Ordering::SeqCst)) {
                return Err(mala_core::AgentError::new(
                    kind.clone(),
                    "scripted: refused",
                ));
            }
            Ok(mala_core::TurnOutcome::completed(
                r#"{"passed": true, "findings": []}"#,
            ))
        });
        session.expect_close().returning(|| Ok(()));
        Ok(Box::new(session))
    });
    backend
}

/// A run of one agent whose epics `verifier` verifies, pausing by `pauses`.
async fn run_verifying(
    world: &World,
    config: Settings,
    verifier: mala_core::MockAgentBackend,
    pauses: mala_orchestration::PausePolicy,
) -> RunSummary {
    let (_stage, stages) = watch::channel(Stage::Running);
    world
        .builder(config, RunPlan { pauses, ..plan(1) })
        .epic_backend(Arc::new(verifier))
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_epic_verifier_meeting_a_limit_pauses_the_run_then_verifies_the_epic() {
    let world = World::new(epic_with_child(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.epic_verification.enabled = true;
    let verifier = verifier_meeting(
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
        0..1,
    );
    let summary = run_verifying(&world, config, verifier, pausing(Duration::from_secs(60))).await;
    assert_eq!(summary.stopped, None, "{summary:?}");
    let events = world.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e, Event::RunPaused { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::RunResumed)));
    assert_eq!(
        world.status("m-e").await,
        IssueStatus::Closed,
        "verified after the pause"
    );
}

#[tokio::test]
async fn an_epic_verifier_refused_credentials_stops_the_run_and_leaves_the_epic_open() {
    let world = World::new(epic_with_child(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.epic_verification.enabled = true;
    let verifier = verifier_meeting(mala_core::AgentErrorKind::Authentication, 0..usize::MAX);
    let summary = run_verifying(&world, config, verifier, plan(1).pauses).await;
    let stopped = summary.stopped.clone().expect("stopped");
    assert!(stopped.contains("credentials"), "{stopped}");
    assert_eq!(world.status("m-e").await, IssueStatus::Open);
    assert_eq!(world.status("m-c").await, IssueStatus::Closed);
}

/// Two epics whose children are already closed: the first sweep verifies
/// both, the first passing and the second meeting whatever its verifier
/// meets.
fn two_settled_epics() -> Vec<Issue> {
    let mut issues = Vec::new();
    for n in 1..=2 {
        let mut epic = task(&format!("m-e{n}"));
        epic.issue_type = IssueType::Epic;
        let mut child = task(&format!("m-c{n}"));
        child.status = IssueStatus::Closed;
        child.parent = Some(epic.id.clone());
        child.dependencies.push(Dependency {
            depends_on: epic.id.clone(),
            kind: DependencyKind::ParentChild,
        });
        issues.extend([epic, child]);
    }
    issues
}

/// Where the `epic_completion` trigger passed, and the pause ended, in the
/// run's events.
fn completions_and_resume(world: &World) -> (Vec<usize>, Option<usize>) {
    let events = world.events.0.lock().unwrap().clone();
    let completions = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Warning { message } if message.starts_with("epic_completion (")))
        .map(|(at, _)| at)
        .collect();
    let resumed = events.iter().position(|e| matches!(e, Event::RunResumed));
    (completions, resumed)
}

#[tokio::test]
async fn an_epics_completion_trigger_waits_out_a_pause_another_epics_verifier_met() {
    let world = World::new(two_settled_epics(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.epic_verification.enabled = true;
    config.validation_triggers.epic_completion = Some(epic_completion(
        mala_domain::FailureMode::Abort,
        "echo done >> epic-checked.txt",
    ));
    let verifier = verifier_meeting(
        mala_core::AgentErrorKind::RateLimited { resets_at: None },
        1..2,
    );
    let summary = run_verifying(&world, config, verifier, pausing(Duration::from_secs(60))).await;
    assert_eq!(summary.stopped, None, "{summary:?}");
    assert_eq!(world.status("m-e1").await, IssueStatus::Closed);
    assert_eq!(world.status("m-e2").await, IssueStatus::Closed);
    let (completions, resumed) = completions_and_resume(&world);
    let resumed = resumed.expect("the run resumed");
    assert_eq!(completions.len(), 2, "once per epic");
    assert!(
        completions.iter().all(|at| *at > resumed),
        "no trigger (nor its fixer) runs into the pause: {completions:?} vs {resumed}"
    );
}

#[tokio::test]
async fn an_epics_completion_trigger_does_not_run_once_a_verifier_stopped_the_run() {
    let world = World::new(two_settled_epics(), Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.epic_verification.enabled = true;
    config.validation_triggers.epic_completion = Some(epic_completion(
        mala_domain::FailureMode::Abort,
        "echo done >> epic-checked.txt",
    ));
    let verifier = verifier_meeting(mala_core::AgentErrorKind::Authentication, 1..usize::MAX);
    let summary = run_verifying(&world, config, verifier, plan(1).pauses).await;
    assert!(summary.stopped.is_some(), "{summary:?}");
    let (completions, _) = completions_and_resume(&world);
    assert!(
        completions.is_empty(),
        "nothing more is spent: {completions:?}"
    );
    assert!(!world.dir.path().join("epic-checked.txt").exists());
}

/// A command runner that runs nothing and keeps what it was asked.
#[derive(Default)]
struct RecordingCommands(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl mala_core::CommandRunner for RecordingCommands {
    async fn run(
        &self,
        _: &std::path::Path,
        commands: &[mala_core::CheckCommand],
    ) -> Result<(), mala_core::CheckFailure> {
        let mut asked = self.0.lock().unwrap();
        asked.extend(commands.iter().map(|c| c.command.clone()));
        Ok(())
    }
}

#[tokio::test]
async fn the_baseline_and_the_triggers_run_their_commands_through_the_injected_runner() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    let shell_ran = world.dir.path().join("ran-by-a-shell");
    let command = format!("touch {}; exit 1", shell_ran.display());
    config.commands.insert(
        "check".into(),
        mala_domain::CommandSpec {
            command: command.clone(),
            timeout: None,
            allow_fail: false,
        },
    );
    config.evidence_check.required = vec!["check".into()];
    config.baseline = mala_domain::BaselinePolicy::Stop;
    config.validation_triggers.run_end = Some(mala_domain::RunEndTrigger {
        trigger: mala_domain::Trigger {
            failure_mode: mala_domain::FailureMode::Abort,
            max_retries: 0,
            commands: vec![mala_domain::TriggerCommand {
                name: "end".into(),
                command: command.clone(),
                timeout: None,
            }],
            code_review: None,
        },
        fire_on: mala_domain::FireOn::Both,
    });
    let runner = Arc::new(RecordingCommands::default());
    let (_stage, stages) = watch::channel(Stage::Running);
    let summary = world
        .builder(config, plan(1))
        .command_runner(runner.clone())
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap();
    assert_eq!(summary.aborted, None, "the runner said the commands pass");
    assert_eq!(
        *runner.0.lock().unwrap(),
        vec![command.clone(), command],
        "the baseline's check, then run_end's"
    );
    assert!(!shell_ran.exists(), "no shell ran them");
}

#[tokio::test]
async fn a_probe_its_budget_cut_says_the_budget_is_too_small_not_that_hooks_are_off() {
    let world = World::new(vec![task("m-1")], Duration::from_millis(5));
    let mut cut = mala_core::MockAgentBackend::new();
    cut.expect_start().returning(|_, _| {
        let mut session = mala_core::MockAgentSession::new();
        session.expect_turn().returning(|_| {
            Ok(mala_core::TurnOutcome {
                status: mala_core::TurnStatus::BudgetReached,
                ..mala_core::TurnOutcome::completed("")
            })
        });
        session.expect_close().returning(|| Ok(()));
        Ok(Box::new(session))
    });
    let (_stage, stages) = watch::channel(Stage::Running);
    let error = world
        .builder(settings(world.dir.path()), plan(1))
        .backend(Arc::new(cut))
        .preflight(true)
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            RunError::Preflight(mala_orchestration::PreflightError::Environment(reason))
                if reason.contains("--max-cost")
        ),
        "{error:?}"
    );
    world.assert_untouched(1).await;
}

#[tokio::test]
async fn an_open_epic_for_the_verifier_is_reason_enough_for_a_preflight() {
    let mut epic = task("m-e");
    epic.issue_type = IssueType::Epic;
    let world = World::new(vec![epic], Duration::from_millis(5));
    let mut config = settings(world.dir.path());
    config.epic_verification.enabled = true;
    let (_stage, stages) = watch::channel(Stage::Running);
    world
        .builder(config, plan(1))
        .epic_backend(Arc::new(verifier_meeting(
            mala_core::AgentErrorKind::Authentication,
            0..0,
        )))
        .preflight(true)
        .build()
        .unwrap()
        .run(stages)
        .await
        .unwrap();
    let probed = world.backend.requests().iter().any(|r| r.probe);
    assert!(probed, "the verifier's agent is proven first");
}
