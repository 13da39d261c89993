//! Environment faults are not the issue's fault: `mala run` with the real
//! br and claude against a mock model that refuses credentials, or rate
//! limits for a while, and a claude that will not start.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// The mock model, the claude harness that points at it, a scratch
/// directory and the environment `mala run` gets.
struct Offline {
    mock: MockAnthropic,
    harness: ClaudeHarness,
    scratch: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn offline(script: Script, claude: &Path, br_binary: &Path) -> Offline {
    let mock = MockAnthropic::start(script);
    let harness = ClaudeHarness::new(claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let env = harness.mala_env(&bin_dir(scratch.path(), br_binary, claude), scratch.path());
    Offline {
        mock,
        harness,
        scratch,
        env,
    }
}

/// Two ready issues under no epic, committed.
fn two_issues(br: &Br, repo: &TempRepo) -> Vec<String> {
    let issues = ["a", "b"]
        .iter()
        .map(|name| {
            br.create(&NewIssue {
                title: &format!("Fix {name}"),
                priority: 2,
                description: &format!(
                    "Write the word fixed into FILE=src/{name}.txt and commit it."
                ),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    issues
}

fn setup() -> TempRepo {
    TempRepo::with_check("ls src")
}

/// The issue exactly as it was before the run: open, unassigned, no
/// label, no note.
fn assert_untouched(br: &Br, issue: &str) {
    let shown = &br.json(&["show", issue])[0];
    assert_eq!(shown["status"], "open", "{shown}");
    assert_eq!(
        shown["assignee"].as_str().unwrap_or_default(),
        "",
        "{shown}"
    );
    assert!(
        shown["labels"].as_array().is_none_or(Vec::is_empty),
        "{shown}"
    );
    assert_eq!(shown["notes"].as_str().unwrap_or_default(), "", "{shown}");
}

/// `mala run` with `args`, which must exit with `code`; its stdout and stderr.
fn mala_run_expecting(
    repo: &TempRepo,
    env: &[(String, String)],
    args: &[&str],
    code: i32,
) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .arg("run")
        .args(args)
        .current_dir(repo.path())
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn refused_credentials_stop_the_run_and_charge_no_issue() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let br = Br::init(&br_binary, repo.path(), "auth");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock: _mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(
        // The preflight passes; every agent's call is refused.
        Script::from_fn(|conversation| {
            if conversation.is_preflight() {
                Reply::Message(Vec::new())
            } else {
                Reply::HttpError(401)
            }
        }),
        &claude,
        &br_binary,
    );

    let (stdout, stderr) = mala_run_expecting(&repo, &env, &["--max-agents", "2"], 4);
    assert!(
        stderr.contains("refused the agent's credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("/login"), "{stderr}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    for issue in &issues {
        assert_untouched(&br, issue);
    }
    // The next run may take them: nothing marks them as tried.
    assert_eq!(br.ready_ids().len(), 2);
}

#[test]
fn refused_credentials_at_preflight_stop_the_run_before_any_claim() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let br = Br::init(&br_binary, repo.path(), "key");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(
        Script::from_fn(|_| Reply::HttpError(401)),
        &claude,
        &br_binary,
    );

    let (_, stderr) = mala_run_expecting(&repo, &env, &["--max-agents", "2"], 1);
    assert!(
        stderr.contains("preflight: the model API refused the agent's credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("/login"), "{stderr}");
    for issue in &issues {
        assert_untouched(&br, issue);
    }
    let requests = mock.requests();
    assert!(
        requests.iter().any(|r| r.path() == "/v1/messages"),
        "the preflight asked the model"
    );
    assert!(
        !requests
            .iter()
            .any(mala_testkit::RecordedRequest::is_agent_call),
        "no agent worked"
    );
}

#[test]
fn the_preflight_canary_is_refused_by_the_guard_through_the_real_hooks() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let br = Br::init(&br_binary, repo.path(), "canary");
    two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);

    mala_run_expecting(&repo, &env, &["--max-issues", "1"], 0);
    // The preflight's second call carries the canary's tool result: the
    // guard's refusal, as an error.
    let refusals: Vec<(bool, String)> = mock
        .requests()
        .iter()
        .map(|r| Conversation { body: &r.body })
        .filter(|c| c.is_preflight())
        .flat_map(Conversation::tool_results)
        .collect();
    assert!(
        refusals
            .iter()
            .any(|(is_error, text)| *is_error && text.contains(mala_domain::CANARY_REFUSAL)),
        "{refusals:?}"
    );
}

#[test]
fn a_claude_that_refuses_to_start_stops_the_run_before_any_claim() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if uid != 0 {
        eprintln!(
            "NOTE: not root, so claude has no reason to refuse; this test checks the root case only as root"
        );
        return;
    }
    let br = Br::init(&br_binary, repo.path(), "root");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        mut env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);
    env.retain(|(k, _)| k != "IS_SANDBOX");

    let (_, stderr) = mala_run_expecting(&repo, &env, &["--max-agents", "2"], 1);
    assert!(stderr.contains("root/sudo"), "{stderr}");
    assert!(
        stderr.contains("IS_SANDBOX=1"),
        "the hint names the fix: {stderr}"
    );
    for issue in &issues {
        assert_untouched(&br, issue);
    }
    assert!(
        mock.requests().iter().all(|r| r.path() != "/v1/messages"),
        "no model call"
    );
}

#[test]
fn a_rate_limit_pauses_the_run_which_then_resumes_and_closes_the_issue() {
    // The agent's calls meet the limit: its turn waits out the pause.
    rate_limited_run(|conversation| conversation.offers_tools() && !conversation.is_preflight());
}

#[test]
fn a_rate_limit_at_preflight_pauses_before_any_claim_then_runs() {
    rate_limited_run(|conversation| conversation.is_preflight());
}

/// A run whose first five model calls that `limited` picks answer 429 (the
/// CLI's own retries, then more): it pauses, resumes and closes an issue,
/// and charges none.
fn rate_limited_run(limited: fn(&Conversation<'_>) -> bool) {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let br = Br::init(&br_binary, repo.path(), "limit");
    let issues = two_issues(&br, &repo);
    let honest = script_with_check(repo.path());
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    let script = Script::from_fn(move |conversation: &Conversation<'_>| {
        if limited(conversation) && counter.fetch_add(1, Ordering::SeqCst) < 5 {
            return Reply::HttpError(429);
        }
        honest.reply(conversation)
    });
    let Offline {
        mock: _mock,
        harness: _harness,
        scratch,
        env,
    } = offline(script, &claude, &br_binary);
    let events = scratch.path().join("events.jsonl");

    let (stdout, _) = mala_run_expecting(
        &repo,
        &env,
        &[
            "--max-issues",
            "1",
            "--events-jsonl",
            events.to_str().unwrap(),
        ],
        0,
    );
    assert!(stdout.contains("paused until"), "{stdout}");
    assert!(stdout.contains("resumed"), "{stdout}");
    let closed: Vec<&String> = issues
        .iter()
        .filter(|i| br.json(&["show", i])[0]["status"] == "closed")
        .collect();
    assert_eq!(closed.len(), 1, "{stdout}");
    let log = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let paused = kinds
        .iter()
        .position(|k| k == "run_paused")
        .expect("run_paused");
    let resumed = kinds
        .iter()
        .position(|k| k == "run_resumed")
        .expect("run_resumed");
    assert!(paused < resumed, "{kinds:?}");
    assert!(
        !kinds
            .iter()
            .any(|k| k == "issue_failed" || k == "issue_released"),
        "{kinds:?}"
    );
    assert!(refused.load(Ordering::SeqCst) >= 5);
}

#[test]
fn an_issue_token_budget_cuts_its_agents_turn_mid_way_and_fails_it_saying_so() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    // Each mock call reads about 20,000 input tokens: the agent's plan
    // needs five calls, the budget allows two; only mala can cut the turn,
    // from the usage each response reports.
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\nbudget:\n  issue:\n    max_tokens: 45000\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "tokens");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);

    let (stdout, _) = mala_run_expecting(&repo, &env, &["--max-issues", "1"], 1);
    assert!(
        stdout.contains("the issue's budget was reached"),
        "{stdout}"
    );
    let notes: Vec<String> = issues
        .iter()
        .map(|i| {
            br.json(&["show", i])[0]["notes"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|notes| notes.contains("mala: failed"))
        .collect();
    assert_eq!(notes.len(), 1, "{stdout}");
    assert!(
        notes[0].contains("tokens spent of 45000"),
        "the note says the budget and the spend: {}",
        notes[0]
    );
    let calls = mock.requests().iter().filter(|r| r.is_agent_call()).count();
    assert!(calls < 5, "mala cut the turn at the budget: {calls} calls");
    assert!(
        !repo.git(&["log", "--format=%s"]).contains("bd-"),
        "no commit was made within the budget"
    );
}

#[test]
fn an_issue_budget_stops_its_agent_mid_turn_and_fails_it_saying_so() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    // Each mock call costs about $0.09 at claude-sonnet-4-5's prices: the
    // agent's plan needs five, the budget allows about two.
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\nbudget:\n  issue:\n    max_cost_usd: 0.2\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "budget");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);

    let (stdout, _) = mala_run_expecting(&repo, &env, &["--max-issues", "1", "--max-cost", "5"], 1);
    assert!(
        stdout.contains("the issue's budget was reached"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(run budget: $5.00); per issue at most $0.20"),
        "the summary says spend against budget: {stdout}"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_mala"))
        .arg("status")
        .current_dir(repo.path())
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("of a $5.00 budget"), "{status}");
    let failed: Vec<serde_json::Value> = issues
        .iter()
        .map(|i| br.json(&["show", i])[0].clone())
        .filter(|shown| {
            shown["notes"]
                .as_str()
                .unwrap_or_default()
                .contains("mala: failed")
        })
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    let note = failed[0]["notes"].as_str().unwrap();
    assert!(
        note.contains("this issue's budget was reached") && note.contains("of $0.20"),
        "{note}"
    );
    let calls = mock.requests().iter().filter(|r| r.is_agent_call()).count();
    assert!(
        calls < 5,
        "claude stopped the turn at the budget: {calls} calls"
    );
    assert!(
        !repo.git(&["log", "--format=%s"]).contains("bd-"),
        "no commit was made within the budget"
    );
}

/// mala.yaml whose one required check passes once `ok.txt` exists.
fn baseline_config(repo: &TempRepo, policy: &str) {
    std::fs::write(
        repo.path().join("mala.yaml"),
        format!("commands:\n  check: \"test -f ok.txt\"\nevidence_check:\n  required: [check]\nbaseline: {policy}\n"),
    )
    .unwrap();
}

#[test]
fn a_red_baseline_with_stop_stops_the_run_before_any_claim() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    baseline_config(&repo, "stop");
    let br = Br::init(&br_binary, repo.path(), "red");
    let issues = two_issues(&br, &repo);
    let Offline {
        mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);

    let (_, stderr) = mala_run_expecting(&repo, &env, &["--max-agents", "2"], 4);
    assert!(
        stderr.contains("`check` (test -f ok.txt) already fails on"),
        "{stderr}"
    );
    assert!(
        stderr.contains("baseline: file_issue"),
        "the hint: {stderr}"
    );
    for issue in &issues {
        assert_untouched(&br, issue);
    }
    assert!(
        mock.requests().iter().all(|r| r.path() != "/v1/messages"),
        "no agent was started"
    );
}

/// The baseline's agent makes the check pass; the others do their work
/// and run the same check.
fn baseline_fixing_script(repo: &Path) -> Script {
    let root = repo.canonicalize().unwrap();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let file = if text.contains("[Baseline]") {
            "ok.txt".to_owned()
        } else {
            text.split("FILE=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("src/x.txt")
                .to_owned()
        };
        let plan = [
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            (
                "Write",
                json!({"file_path": root.join(&file), "content": "ok\n"}),
            ),
            ("Bash", json!({"command": "test -f ok.txt"})),
            (
                "mcp__mala__commit",
                json!({"paths": [file], "message": format!("bd-{issue}: {file}")}),
            ),
        ];
        reply(
            plan.get(conversation.tool_uses_so_far()),
            "Done; the check passes; committed.",
        )
    })
}

#[test]
fn a_red_baseline_with_file_issue_is_filed_and_worked_before_the_rest() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    baseline_config(&repo, "file_issue");
    let br = Br::init(&br_binary, repo.path(), "fix");
    let issues = two_issues(&br, &repo);
    let script = baseline_fixing_script(repo.path());
    let Offline {
        mock: _mock,
        harness: _harness,
        scratch,
        env,
    } = offline(script, &claude, &br_binary);
    let events = scratch.path().join("events.jsonl");

    let (stdout, stderr) = mala_run_expecting(
        &repo,
        &env,
        &[
            "--max-agents",
            "2",
            "--events-jsonl",
            events.to_str().unwrap(),
        ],
        0,
    );
    let baseline: Vec<serde_json::Value> = br.json(&["list", "--all", "--label", "mala-baseline"])
        ["issues"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(baseline.len(), 1, "{baseline:?}\n{stdout}\n{stderr}");
    let baseline_id = baseline[0]["id"].as_str().unwrap().to_owned();
    assert!(
        baseline[0]["title"]
            .as_str()
            .unwrap()
            .starts_with("[Baseline] test -f ok.txt fails on "),
        "{baseline:?}"
    );
    assert_eq!(baseline[0]["priority"], 0);
    for issue in issues.iter().chain([&baseline_id]) {
        assert_eq!(
            br.json(&["show", issue])[0]["status"],
            "closed",
            "{issue}: {stdout}"
        );
    }
    let log = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let claimed: Vec<&str> = lines
        .iter()
        .filter(|e| e["kind"] == "issue_claimed")
        .map(|e| e["issue"].as_str().unwrap())
        .collect();
    assert_eq!(
        claimed.first().copied(),
        Some(baseline_id.as_str()),
        "{claimed:?}"
    );
    let closed_at = lines
        .iter()
        .position(|e| e["kind"] == "issue_closed" && e["issue"] == baseline_id.as_str())
        .unwrap();
    let second_claim = lines
        .iter()
        .position(|e| e["kind"] == "issue_claimed" && e["issue"] != baseline_id.as_str())
        .unwrap();
    assert!(closed_at < second_claim, "the others waited behind it");
}

#[test]
fn a_green_baseline_on_a_clean_head_is_not_paid_for_twice() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let scratch = tempfile::tempdir().unwrap();
    let counter = scratch.path().join("baseline-runs");
    std::fs::write(
        repo.path().join("mala.yaml"),
        format!(
            "commands:\n  check: \"echo ran >> {}\"\nevidence_check:\n  required: [check]\n",
            counter.display()
        ),
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "green");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let env = harness.mala_env(
        &bin_dir(scratch.path(), &br_binary, &claude),
        scratch.path(),
    );
    for run in 0..2 {
        if run == 1 {
            // Only the tracker changes between the runs, as when a run
            // closes issues and commits `.beads/`.
            br.create(&NewIssue {
                title: "Later",
                priority: 4,
                issue_type: "chore",
                ..NewIssue::default()
            });
            br.run(&["update", &br.ready_ids()[0], "--status", "deferred"]);
            repo.git(&["add", ".beads"]);
            repo.git(&["commit", "-q", "-m", "beads"]);
        }
        mala_run_expecting(&repo, &env, &[], 0);
    }
    let runs = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(runs.lines().count(), 1, "remembered by content: {runs}");
}

#[test]
fn a_run_budget_reached_with_three_agents_running_drains_the_run_and_fails_nothing() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    // One agent's whole plan costs about $0.45: the second to end crosses it.
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\nbudget:\n  run:\n    max_cost_usd: 0.5\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "drain");
    let issues: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|name| {
            br.create(&NewIssue {
                title: &format!("Fix {name}"),
                priority: 2,
                description: &format!(
                    "Write the word fixed into FILE=src/{name}.txt and commit it."
                ),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let Offline {
        mock: _mock,
        harness: _harness,
        scratch: _scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);

    let (stdout, _) = mala_run_expecting(&repo, &env, &["--max-agents", "3"], 0);
    assert!(stdout.contains("■ budget reached"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    let shown: Vec<serde_json::Value> = issues
        .iter()
        .map(|i| br.json(&["show", i])[0].clone())
        .collect();
    let closed = shown.iter().filter(|s| s["status"] == "closed").count();
    assert!((1..=3).contains(&closed), "{stdout}");
    for issue in shown.iter().filter(|s| s["status"] != "closed") {
        // Stopped or never started: open for the next run, nothing recorded.
        assert_eq!(issue["status"], "open", "{issue}");
        assert_eq!(
            issue["assignee"].as_str().unwrap_or_default(),
            "",
            "{issue}"
        );
        assert_eq!(issue["notes"].as_str().unwrap_or_default(), "", "{issue}");
    }
    let reached = stdout
        .find("the run's budget was reached")
        .expect("the budget is said");
    // A claim already in flight when the budget is crossed may be said
    // after it; no such issue gets a turn, and each is given back.
    let after = &stdout[reached..];
    assert!(
        !after.contains("  turn: "),
        "no turn ends after the budget: {stdout}"
    );
    for line in after.lines().filter(|l| l.contains("claimed by")) {
        let issue = line.split_whitespace().nth(1).unwrap();
        assert!(
            after.contains(&format!("○ {issue}  given back untouched")),
            "{issue}, claimed as the budget was crossed, is given back: {stdout}"
        );
    }
    assert!(
        stdout.contains("given back untouched: the run's budget was reached"),
        "the running issues were stopped where they were: {stdout}"
    );
    assert!(
        !stdout.contains(" running "),
        "no issue is left shown as running: {stdout}"
    );
}

#[test]
fn the_epic_verifiers_spend_counts_in_the_runs() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = setup();
    let br = Br::init(&br_binary, repo.path(), "meter");
    let epic = br.create(&NewIssue {
        title: "One file",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    br.create(&NewIssue {
        title: "Fix a",
        priority: 2,
        parent: Some(&epic),
        description: "Write the word fixed into FILE=src/a.txt and commit it.",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let Offline {
        mock,
        harness: _harness,
        scratch,
        env,
    } = offline(script_with_check(repo.path()), &claude, &br_binary);
    let events = scratch.path().join("events.jsonl");

    let (stdout, _) = mala_run_expecting(
        &repo,
        &env,
        &[
            "--max-cost",
            "50",
            "--events-jsonl",
            events.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(br.json(&["show", &epic])[0]["status"], "closed", "{stdout}");
    let issue_tokens: u64 = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["kind"] == "turn_finished")
        .map(|event| {
            [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ]
            .iter()
            .map(|key| event["usage"][key].as_u64().unwrap_or(0))
            .sum::<u64>()
        })
        .sum();
    let run_tokens: u64 = stdout
        .split("spent: $")
        .nth(1)
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a spend line: {stdout}"));
    let verifier_input: u64 = mock
        .requests()
        .iter()
        .filter(|r| r.body.to_string().contains("All the issues under epic"))
        .map(mala_testkit::RecordedRequest::input_tokens)
        .sum();
    assert!(verifier_input > 0, "the epic was verified by an agent");
    // Beyond the issue's own turns the run counted at least the verifier's
    // input (and the preflight, which alone is far less).
    assert!(
        run_tokens - issue_tokens >= verifier_input,
        "run {run_tokens}, issue {issue_tokens}, verifier input {verifier_input}"
    );
}
