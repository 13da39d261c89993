use super::*;
use chrono::TimeZone;
use mala_core::{IssueRecord, QueuedIssue, RunOutcome, TokenUsage};

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
}

fn id(s: &str) -> IssueId {
    IssueId::new(s)
}

fn agent(issue: &str) -> AgentId {
    AgentId::new(format!("{issue}@run1"))
}

fn started() -> RunView {
    let mut view = RunView::new("run1", at(0), Some("$5.00".into()));
    view.fold(
        &Event::RunStarted {
            run_id: "run1".into(),
            repo: "/repo".into(),
            max_agents: Some(2),
            sessions: Some("/state/sessions".into()),
        },
        at(0),
    );
    view.fold(
        &Event::QueuePlanned {
            waiting: 1,
            queue: ["a", "b", "c"]
                .map(|i| QueuedIssue {
                    issue: id(i),
                    title: format!("title {i}"),
                })
                .to_vec(),
        },
        at(0),
    );
    view
}

fn claim(view: &mut RunView, issue: &str, second: i64) {
    view.fold(
        &Event::IssueClaimed {
            issue: id(issue),
            agent: agent(issue),
            title: format!("title {issue}"),
        },
        at(second),
    );
}

fn state_of(view: &RunView, issue: &str) -> IssueState {
    view.issue(&id(issue)).unwrap().issue.state
}

#[test]
fn an_issue_moves_from_queued_through_its_steps_to_closed() {
    let mut view = started();
    let snapshot = view.snapshot(at(1));
    let queued: Vec<(&str, IssueState)> = snapshot
        .issues
        .iter()
        .map(|q| (q.id.as_str(), q.state))
        .collect();
    assert_eq!(
        queued,
        [
            ("a", IssueState::Queued),
            ("b", IssueState::Queued),
            ("c", IssueState::Queued)
        ]
    );
    claim(&mut view, "a", 1);
    assert_eq!(state_of(&view, "a"), IssueState::Claimed);
    for (step, state) in [
        (IssueStep::Turn, IssueState::Turn),
        (IssueStep::Gate, IssueState::Gate),
        (IssueStep::Review, IssueState::Review),
        (IssueStep::Merge, IssueState::Merging),
    ] {
        view.fold(
            &Event::StepStarted {
                issue: id("a"),
                step,
            },
            at(2),
        );
        assert_eq!(state_of(&view, "a"), state);
    }
    view.fold(&Event::IssueClosed { issue: id("a") }, at(9));
    let detail = view.issue(&id("a")).unwrap();
    assert_eq!(detail.issue.state, IssueState::Closed);
    assert_eq!(detail.issue.title, "title a");
    assert_eq!(
        (detail.issue.started_at, detail.issue.ended_at),
        (Some(at(1)), Some(at(9)))
    );
    assert_eq!(
        view.record_of(&id("a")),
        Some(PathBuf::from("/state/sessions/a@run1.jsonl"))
    );
    let snapshot = view.snapshot(at(10));
    assert_eq!(snapshot.totals.closed, 1);
    assert_eq!(snapshot.totals.in_flight, 0);
    assert!(snapshot.agents.is_empty(), "its agent is gone");
    let states: Vec<_> = snapshot
        .issues
        .iter()
        .map(|q| (q.id.as_str(), q.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a", IssueState::Closed),
            ("b", IssueState::Queued),
            ("c", IssueState::Queued)
        ],
        "a is no longer queued"
    );
}

#[test]
fn a_failed_gate_and_a_failure_say_their_reasons() {
    let mut view = started();
    claim(&mut view, "b", 1);
    view.fold(
        &Event::GateChecked {
            issue: id("b"),
            attempt: 2,
            passed: false,
            reasons: vec!["`test` ran and failed (exit 1)".into()],
        },
        at(3),
    );
    let verdict = view.issue(&id("b")).unwrap().issue.verdict.clone().unwrap();
    assert_eq!((verdict.kind, verdict.passed), ("gate", false));
    assert_eq!(verdict.reasons, ["`test` ran and failed (exit 1)"]);
    view.fold(
        &Event::IssueFailed {
            issue: id("b"),
            reason: "the gate failed 2 times".into(),
        },
        at(4),
    );
    let detail = view.issue(&id("b")).unwrap();
    assert_eq!(detail.issue.attempts, 2);
    assert_eq!(
        detail.issue.reason.as_deref(),
        Some("the gate failed 2 times")
    );
    let kinds: Vec<&str> = detail.history.iter().map(|h| h.kind).collect();
    assert_eq!(kinds, ["claimed", "gate", "failed"]);
    assert_eq!(view.snapshot(at(5)).totals.failed, 1);
}

#[test]
fn spend_adds_up_per_issue_and_for_the_run() {
    let mut view = started();
    claim(&mut view, "a", 1);
    claim(&mut view, "b", 1);
    for (issue, tokens, cost) in [("a", 100, 0.25), ("a", 50, 0.5), ("b", 10, 0.125)] {
        view.fold(
            &Event::TurnFinished {
                issue: id(issue),
                session_id: None,
                usage: TokenUsage {
                    input_tokens: tokens,
                    ..TokenUsage::default()
                },
                cost_usd: cost,
            },
            at(2),
        );
    }
    let a = view.issue(&id("a")).unwrap().issue.clone();
    assert_eq!((a.tokens, a.cost_usd), (150, 0.75));
    let totals = view.snapshot(at(3)).totals;
    assert_eq!((totals.tokens, totals.cost_usd), (160, 0.875));
    assert_eq!(totals.run_cost_usd, None, "not said yet");
    // The run's own figure counts its reviewers and fixers too.
    view.fold(
        &Event::RunSpend {
            cost_usd: 1.5,
            tokens: 300,
        },
        at(3),
    );
    let totals = view.snapshot(at(3)).totals;
    assert_eq!(
        (totals.run_cost_usd, totals.run_tokens),
        (Some(1.5), Some(300))
    );
    assert_eq!(totals.budget.as_deref(), Some("$5.00"));
    assert_eq!(totals.elapsed_seconds, 3);
}

#[test]
fn agents_say_what_tool_they_are_in_and_how_long_they_have_been_quiet() {
    let mut view = started();
    claim(&mut view, "a", 1);
    let tool = |name: &str, input| AgentEvent::ToolUse {
        id: "t1".into(),
        name: name.into(),
        input,
    };
    let command = serde_json::json!({"command": "cargo test --workspace\n  --all-features"});
    view.fold(
        &Event::Agent {
            agent: agent("a"),
            event: tool("Bash", command),
        },
        at(4),
    );
    let snapshot = view.snapshot(at(10));
    let now = &snapshot.agents[0];
    assert_eq!(
        now.agent.doing.as_deref(),
        Some("Bash: cargo test --workspace --all-features")
    );
    assert_eq!(now.idle_seconds, 6);
    view.fold(
        &Event::Agent {
            agent: agent("a"),
            event: AgentEvent::ToolResult {
                id: "t1".into(),
                is_error: false,
                content: "ok".into(),
            },
        },
        at(11),
    );
    assert_eq!(view.snapshot(at(11)).agents[0].agent.doing, None);
    // A long input is cut to one short line.
    let long = serde_json::json!({"command": "x".repeat(500)});
    view.fold(
        &Event::Agent {
            agent: agent("a"),
            event: tool("Bash", long),
        },
        at(12),
    );
    let doing = view.snapshot(at(12)).agents[0].agent.doing.clone().unwrap();
    assert_eq!(doing.chars().count(), SHORT);
}

#[test]
fn locks_and_waits_follow_the_lock_table_and_a_broken_deadlock_is_kept() {
    let mut view = started();
    claim(&mut view, "a", 1);
    claim(&mut view, "b", 1);
    let acquired = |who: &str, key: &str| Event::Lock {
        event: LockEvent::Acquired {
            agent: agent(who),
            key: key.into(),
            path: PathBuf::from(format!("src/{key}.rs")),
        },
    };
    view.fold(&acquired("a", "x"), at(2));
    view.fold(&acquired("b", "y"), at(2));
    view.fold(
        &Event::Lock {
            event: LockEvent::Waiting {
                agent: agent("b"),
                on: vec![WaitTarget {
                    key: "x".into(),
                    path: "src/x.rs".into(),
                    holder: agent("a"),
                }],
            },
        },
        at(3),
    );
    let snapshot = view.snapshot(at(3));
    assert_eq!(snapshot.locks.len(), 2);
    assert_eq!(snapshot.waits[0].agent, agent("b"));
    assert_eq!(snapshot.waits[0].on[0].holder, agent("a"));
    view.fold(
        &Event::DeadlockBroken {
            victim: agent("b"),
            holder: agent("a"),
            cycle: vec![agent("a"), agent("b")],
        },
        at(4),
    );
    // A release by someone who does not hold the lock changes nothing.
    view.fold(
        &Event::Lock {
            event: LockEvent::Released {
                agent: agent("b"),
                key: "x".into(),
                path: "src/x.rs".into(),
            },
        },
        at(5),
    );
    let snapshot = view.snapshot(at(5));
    assert!(snapshot.waits.is_empty());
    assert_eq!(snapshot.deadlocks.len(), 1);
    assert_eq!(snapshot.deadlocks[0].victim, agent("b"));
    let held: Vec<&str> = snapshot.locks.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(held, ["src/x.rs", "src/y.rs"]);
}

#[test]
fn lanes_are_reused_once_their_issue_ended() {
    let mut view = started();
    claim(&mut view, "a", 1);
    claim(&mut view, "b", 1);
    let lane = |view: &RunView, issue| view.issue(&id(issue)).unwrap().issue.lane;
    assert_eq!((lane(&view, "a"), lane(&view, "b")), (Some(0), Some(1)));
    view.fold(&Event::IssueClosed { issue: id("a") }, at(2));
    claim(&mut view, "c", 3);
    assert_eq!(lane(&view, "c"), Some(0));
}

#[test]
fn a_skip_before_a_claim_names_the_issue_with_its_queued_title() {
    let mut view = started();
    view.fold(
        &Event::IssueSkipped {
            issue: id("c"),
            reason: "blocked by a".into(),
        },
        at(1),
    );
    let detail = view.issue(&id("c")).unwrap();
    assert_eq!(detail.issue.state, IssueState::Skipped);
    assert_eq!(detail.issue.title, "title c");
    assert_eq!(detail.issue.reason.as_deref(), Some("blocked by a"));
}

#[test]
fn a_finished_run_has_no_agents_and_says_its_outcome() {
    let mut view = started();
    claim(&mut view, "a", 1);
    view.fold(
        &Event::RunFinished {
            run_id: "run1".into(),
            outcome: RunOutcome::Drained,
            succeeded: 0,
            failed: 0,
        },
        at(7),
    );
    let snapshot = view.snapshot(at(60));
    assert_eq!(snapshot.outcome, "drained");
    assert!(snapshot.agents.is_empty());
    assert_eq!(
        snapshot.totals.elapsed_seconds, 7,
        "the clock stops at the end"
    );
    assert_eq!(snapshot.totals.queued, 0);
    assert!(view.is_finished());
}

#[test]
fn a_record_reads_as_the_same_issues_statuses_and_reasons() {
    let mut closed = IssueRecord::new("a", "a@run1", "/s/a@run1.jsonl".into());
    "closed".clone_into(&mut closed.status);
    closed.started_at = Some(at(0));
    closed.ended_at = Some(at(5));
    closed.tokens = 10;
    let mut failed = IssueRecord::new("b", "b@run1", "/s/b@run1.jsonl".into());
    "failed".clone_into(&mut failed.status);
    failed.reason = Some("no commit".into());
    failed.started_at = Some(at(6));
    let log = RunLog {
        run_id: "run1".into(),
        repo_path: "/repo".into(),
        started_at: at(0),
        finished_at: Some(at(9)),
        outcome: "finished".into(),
        settings: serde_json::Value::Null,
        issues: vec![closed, failed],
    };
    let view = RunView::from_log(&log, None);
    assert!(view.is_finished());
    let snapshot = view.snapshot(at(100));
    let states: Vec<_> = snapshot
        .issues
        .iter()
        .map(|i| (i.id.as_str(), i.state))
        .collect();
    assert_eq!(
        states,
        [("a", IssueState::Closed), ("b", IssueState::Failed)]
    );
    assert_eq!(snapshot.issues[1].reason.as_deref(), Some("no commit"));
    // b started after a ended: the same row of the timeline.
    assert_eq!(snapshot.issues[1].lane, Some(0));
    assert_eq!(
        view.record_of(&id("b")),
        Some(PathBuf::from("/s/b@run1.jsonl"))
    );
    assert_eq!(snapshot.totals.elapsed_seconds, 9);
}

#[test]
fn a_wait_ends_when_the_lock_is_taken_even_unsaid() {
    let mut view = started();
    claim(&mut view, "a", 1);
    let target = WaitTarget {
        key: "x".into(),
        path: "src/x.rs".into(),
        holder: agent("b"),
    };
    view.fold(
        &Event::Lock {
            event: LockEvent::Waiting {
                agent: agent("a"),
                on: vec![target],
            },
        },
        at(2),
    );
    assert_eq!(view.snapshot(at(2)).waits.len(), 1);
    // `lock_wait` never says StoppedWaiting: the lock taken ends the wait.
    view.fold(
        &Event::Lock {
            event: LockEvent::Acquired {
                agent: agent("a"),
                key: "x".into(),
                path: "src/x.rs".into(),
            },
        },
        at(3),
    );
    let snapshot = view.snapshot(at(3));
    assert!(snapshot.waits.is_empty());
    assert_eq!(snapshot.locks[0].holder, agent("a"));
}

#[test]
fn an_issue_skipped_before_its_claim_is_listed_once_and_a_finished_run_queues_nothing() {
    let mut view = started();
    view.fold(
        &Event::IssueSkipped {
            issue: id("a"),
            reason: "the run's budget was reached before it was claimed".into(),
        },
        at(1),
    );
    let listed: Vec<&str> = view
        .snapshot(at(1))
        .issues
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(listed, ["a", "b", "c"], "a once, as skipped");
    view.fold(
        &Event::RunFinished {
            run_id: "run1".into(),
            outcome: RunOutcome::BudgetReached { spent: "$5".into() },
            succeeded: 0,
            failed: 0,
        },
        at(2),
    );
    let snapshot = view.snapshot(at(2));
    assert!(
        snapshot
            .issues
            .iter()
            .all(|i| i.state != IssueState::Queued)
    );
    // A queued issue's own page is there while it is queued, and not after.
    assert!(view.issue(&id("b")).is_none());
}

#[test]
fn a_deadlock_victim_is_deferred_not_skipped_and_runs_again() {
    let mut view = started();
    claim(&mut view, "a", 1);
    assert!(
        view.issue(&id("b")).is_some(),
        "a queued issue can be opened"
    );
    view.fold(
        &Event::DeadlockBroken {
            victim: agent("a"),
            holder: agent("b"),
            cycle: vec![agent("b"), agent("a")],
        },
        at(2),
    );
    view.fold(
        &Event::IssueSkipped {
            issue: id("a"),
            reason: "gave way in a deadlock; it runs again once its blocker closes".into(),
        },
        at(2),
    );
    assert_eq!(state_of(&view, "a"), IssueState::Deferred);
    assert_eq!(view.snapshot(at(2)).totals.skipped, 0);
    claim(&mut view, "a", 5);
    assert_eq!(state_of(&view, "a"), IssueState::Claimed);
    view.fold(
        &Event::IssueSkipped {
            issue: id("a"),
            reason: "stopped by the user from the dashboard".into(),
        },
        at(6),
    );
    assert_eq!(
        state_of(&view, "a"),
        IssueState::Skipped,
        "its second end is a real skip"
    );
}
