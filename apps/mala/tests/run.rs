//! `mala run` as a user runs it: the binary, the real br and claude (pointed
//! at the mock model through the environment), two agents, two issues.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic to fail the test

use std::path::Path;
use std::process::Command;

use mala_testkit::{
    Block, Br, ClaudeHarness, Conversation, FakeCerberus, MockAnthropic, NewIssue, Reply, Script,
    TempRepo, Tool, require_tool,
};
use serde_json::json;

#[path = "run/codex.rs"]
mod codex;
#[path = "run/dashboard.rs"]
mod dashboard;
#[path = "run/environment.rs"]
mod environment;
#[path = "run/worktree.rs"]
mod worktree;

/// A directory with `br` and `claude` under those names, for PATH.
fn bin_dir(dir: &Path, br: &Path, claude: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(br, bin.join("br")).unwrap();
    std::os::unix::fs::symlink(claude, bin.join("claude")).unwrap();
    bin
}

/// One run walked through from setup to `mala logs`, in order.
#[allow(clippy::too_many_lines)]
#[test]
fn mala_run_closes_the_ready_issues_and_commits_the_tracker() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::with_check("ls src");
    let br = Br::init(&br_binary, repo.path(), "run");
    let epic = br.create(&NewIssue {
        title: "Both files",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let issues: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            br.create(&NewIssue {
                title: &format!("Fix {name}"),
                priority: 2,
                parent: Some(&epic),
                description: &format!(
                    "Write the word fixed into FILE=src/{name}.txt and commit it."
                ),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);

    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run", "--max-agents", "2"])
        .current_dir(repo.path())
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for issue in &issues {
        assert!(stdout.contains(&format!("✓ {issue}  closed")), "{stdout}");
        assert_eq!(br.json(&["show", issue])[0]["status"], "closed");
    }
    assert!(stdout.contains("2 closed, 0 failed"), "{stdout}");
    assert_eq!(
        br.json(&["show", &epic])[0]["status"],
        "closed",
        "the epic is verified and closed: {stdout}"
    );
    assert!(stdout.contains(&format!("✓ {epic}  closed")), "{stdout}");

    // The run is on record for `mala logs`.
    let logs = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mala"))
            .args(args)
            .current_dir(repo.path())
            .env_clear()
            .envs(env.clone())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = logs(&["logs", "list"]);
    assert!(
        list.contains("finished") && list.contains("2 closed, 0 failed"),
        "{list}"
    );
    let run_id = list.split_whitespace().next().unwrap().to_owned();
    let status = logs(&["status"]);
    assert!(
        status.contains("no mala run")
            && status.contains("recent runs:")
            && status.contains(&run_id),
        "{status}"
    );
    let sessions = logs(&["logs", "sessions", "--issue", &issues[0], "--json"]);
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    assert_eq!(sessions[0]["status"], "closed");
    assert!(
        std::path::Path::new(sessions[0]["log_path"].as_str().unwrap()).exists(),
        "the session record is where the log says"
    );
    let shown = logs(&["logs", "show", &run_id[..6]]);
    assert!(shown.contains(&issues[1]), "{shown}");
    let log = repo.git(&["log", "--format=%s"]);
    assert!(
        log.lines().next().unwrap().contains("sync beads issues"),
        "{log}"
    );
    assert_eq!(
        repo.git(&["status", "--porcelain"]).trim(),
        "",
        "nothing left behind"
    );
    assert!(
        std::fs::read_dir(scratch.path().join("locks"))
            .unwrap()
            .all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".marker")),
        "the run marker is gone"
    );
}

/// The issue the implementer prompt names.
fn issue_of(text: &str) -> String {
    text.split("working on issue ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("x")
        .to_owned()
}

/// The "model's" answer: the next tool call, or `done` when the plan is over.
fn reply(next: Option<&(&str, serde_json::Value)>, done: &str) -> Reply {
    match next {
        Some((name, input)) => Reply::Message(vec![Block::ToolUse {
            name: (*name).to_owned(),
            input: input.clone(),
        }]),
        None => Reply::Message(vec![Block::Text(done.to_owned())]),
    }
}

/// The next step of `plan`. A session a later run resumed starts over after
/// the step `long` (its long command): what it did while mala was gone got
/// no answers.
fn next_step<'p>(
    plan: &'p [(&'p str, serde_json::Value)],
    conversation: Conversation<'_>,
    long: usize,
) -> Option<&'p (&'p str, serde_json::Value)> {
    match conversation.tool_uses_since(RESUMED) {
        Some(done) => plan
            .iter()
            .enumerate()
            .filter(|(step, _)| *step != long)
            .map(|(_, step)| step)
            .nth(done),
        None => plan.get(conversation.tool_uses_so_far()),
    }
}

/// An honest agent: lock its file, write it, run the configured check, commit.
/// Epic verifiers pass every epic.
fn script_with_check(repo: &Path) -> Script {
    honest_script(repo, |_| r#"{"passed": true, "findings": []}"#.to_owned())
}

/// An honest agent, and epic verifiers that answer `verdict(repo)`.
fn honest_script(repo: &Path, verdict: impl Fn(&Path) -> String + Send + Sync + 'static) -> Script {
    let repo = repo.canonicalize().unwrap();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        if text.contains("All the issues under epic") {
            return Reply::Message(vec![Block::Text(verdict(&repo))]);
        }
        let issue = issue_of(&text);
        let file = text
            .split("FILE=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("src/x.txt")
            .to_owned();
        let plan = [
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            (
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": "ls src"})),
            (
                "mcp__mala__commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        reply(
            plan.get(conversation.tool_uses_so_far()),
            &format!("Fixed {file}; `ls src` passed; committed."),
        )
    })
}

#[test]
fn watch_mode_waits_for_work_and_a_ctrl_c_ends_it_cleanly() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"true\"\n",
    )
    .unwrap();
    Br::init(&br_binary, repo.path(), "watch");
    let mock = MockAnthropic::start(Script::directives());
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run", "--watch"])
        .current_dir(repo.path())
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let markers = || {
        std::fs::read_dir(scratch.path().join("locks")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".marker")
            })
            .count()
        })
    };
    // Idle and watching (and, since the marker is written after mala
    // listens for Ctrl-C, ready for one).
    let stdout = Lines::stdout(&mut child);
    stdout.wait_for("watching: nothing ready");
    assert_eq!(markers(), 1, "the run is marked live while it watches");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{}",
        stdout.text(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(markers(), 0, "the run marker is removed");
}

#[test]
fn a_failing_run_end_validation_aborts_the_run_with_exit_3() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\n  integration: \"echo integration broke >&2; exit 7\"\nevidence_check:\n  required: [check]\nvalidation_triggers:\n  run_end:\n    failure_mode: abort\n    fire_on: both\n    commands: [check, integration]\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "end");
    let issue = br.create(&NewIssue {
        title: "Fix a",
        priority: 2,
        description: "FILE=src/a.txt",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run"])
        .current_dir(repo.path())
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("✓ {issue}  closed")),
        "the issue itself still closed: {stdout}"
    );
    assert!(
        stdout.contains("run_end validation failed at `integration`"),
        "{stdout}"
    );
    assert!(
        stderr.contains("validation failed at `echo integration broke >&2; exit 7`"),
        "{stderr}"
    );
}

#[test]
fn a_failing_session_end_validation_set_to_abort_stops_the_run_after_that_issue() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\n  lint: \"test ! -e src/a.txt\"\nevidence_check:\n  required: [check]\nvalidation_triggers:\n  session_end:\n    failure_mode: abort\n    commands: [lint]\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "send");
    let first = br.create(&NewIssue {
        title: "Fix a",
        priority: 1,
        description: "FILE=src/a.txt",
        ..NewIssue::default()
    });
    let second = br.create(&NewIssue {
        title: "Fix b",
        priority: 2,
        description: "FILE=src/b.txt",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run"])
        .current_dir(repo.path())
        .env_clear()
        .envs(harness.mala_env(&bin, scratch.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "session_end ({first}) validation failed at `lint`"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("✓ {first}  closed")),
        "a session_end result never blocks its issue: {stdout}"
    );
    assert_eq!(
        br.json(&["show", &second])[0]["status"],
        "open",
        "nothing new starts after the abort: {stdout}"
    );
}

#[test]
fn epic_verify_checks_one_epic_and_closes_it_or_lets_a_person_override() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"true\"\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "ev");
    let epic = br.create(&NewIssue {
        title: "Auth",
        issue_type: "epic",
        priority: 1,
        acceptance: "login works",
        ..NewIssue::default()
    });
    let child = br.create(&NewIssue {
        title: "Login",
        priority: 2,
        parent: Some(&epic),
        ..NewIssue::default()
    });
    let other = br.create(&NewIssue {
        title: "Other",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let mala = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mala"))
            .args(args)
            .current_dir(repo.path())
            .env_clear()
            .envs(env.clone())
            .output()
            .unwrap()
    };
    let early = mala(&["epic-verify", &epic]);
    assert_eq!(early.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("1 open issue"),
        "{early:?}"
    );
    br.close(&child);
    let verified = mala(&["epic-verify", &epic]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("meets its acceptance criteria; closed")
    );
    assert_eq!(br.json(&["show", &epic])[0]["status"], "closed");
    let overridden = mala(&["epic-verify", &other, "--human-override"]);
    assert_eq!(overridden.status.code(), Some(0), "{overridden:?}");
    assert_eq!(br.json(&["show", &other])[0]["status"], "closed");
    let not_epic = mala(&["epic-verify", &child, "--force"]);
    assert_eq!(not_epic.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&not_epic.stderr).contains("not an epic"),
        "{not_epic:?}"
    );
}

/// An agent that takes a lock, then runs a long command (once per checkout),
/// then finishes the work.
fn lock_then_wait_script(repo: &Path, once: &Path) -> Script {
    let repo = repo.canonicalize().unwrap();
    let once = once.to_path_buf();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let wait = format!(
            "if [ ! -e {0} ]; then touch {0}; sleep 41; fi",
            once.display()
        );
        let plan = [
            (
                "mcp__mala__lock_acquire",
                json!({"filepaths": ["src/a.txt"]}),
            ),
            ("Bash", json!({"command": wait})),
            (
                "Write",
                json!({"file_path": repo.join("src/a.txt"), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": "ls src"})),
            // Again: a run that resumes this session holds no locks yet.
            (
                "mcp__mala__lock_acquire",
                json!({"filepaths": ["src/a.txt"]}),
            ),
            (
                "mcp__mala__commit",
                json!({"paths": ["src/a.txt"], "message": format!("bd-{issue}: fix a")}),
            ),
        ];
        reply(next_step(&plan, *conversation, 1), "Done; committed.")
    })
}

#[test]
fn a_second_ctrl_c_stops_the_agents_keeps_the_claim_and_leaves_no_locks() {
    stop_with_ctrl_c(2);
}

#[test]
fn a_third_ctrl_c_kills_the_agents_and_still_cleans_up() {
    stop_with_ctrl_c(3);
}

/// Presses Ctrl-C `presses` times while an agent holds a lock in a long
/// command; checks the run ends at once and leaves nothing behind, and that
/// the next run finishes the issue once.
#[allow(clippy::too_many_lines)]
fn stop_with_ctrl_c(presses: usize) {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let fix = OneIssue::new(&claude, &br_binary, "stop", |repo, scratch| {
        lock_then_wait_script(repo, &scratch.join("slept-once"))
    });
    let once = fix.scratch.path().join("slept-once");
    let OneIssue {
        repo,
        br,
        issue,
        mock,
        scratch,
        ..
    } = &fix;
    let locks = scratch.path().join("locks");
    let mala = |args: &[&str]| fix.mala(args);
    let files_ending = |suffix: &str| {
        std::fs::read_dir(&locks).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(suffix)
            })
            .count()
        })
    };

    // Two agents so that locks are enforced; the agent takes its lock and starts the long command.
    let child = mala(&["run", "--max-agents", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(once.exists() && files_ending(".lock") == 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never got to its long command"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let started = std::time::Instant::now();
    let mut child = child;
    let stderr = Lines::stderr(&mut child);
    let said = ["draining:", "stopping the agents", "killing the agents"];
    for acknowledged in &said[..presses] {
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // Two signals before the handler looks again would count as one.
        stderr.wait_for(acknowledged);
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{stdout}\n{}",
        stderr.text()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the stop waited for the agent's 41 s command: {:?}",
        started.elapsed()
    );
    if presses == 2 {
        assert!(
            stdout.contains("stopped before the end"),
            "the runner recorded the stop: {stdout}"
        );
    }
    assert!(stdout.contains("■ stopped: interrupted"), "{stdout}");
    assert_eq!(files_ending(".lock"), 0, "the agent's lock was released");
    assert_eq!(files_ending(".marker"), 0, "the run marker was removed");
    let shown = &br.json(&["show", issue])[0];
    assert_eq!(shown["status"], "in_progress", "the claim is kept: {shown}");
    assert!(
        !shown["notes"]
            .as_str()
            .unwrap_or("")
            .contains("mala: failed"),
        "a stop is not recorded as a failure: {shown}"
    );
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 41"])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&leftover.stdout).replace('\n', ",");
    assert!(
        leftover.stdout.is_empty(),
        "the agent's command was left running:\n{}",
        String::from_utf8_lossy(
            &Command::new("ps")
                .args([
                    "-o",
                    "pid,ppid,pgid,sid,stat,cmd",
                    "-p",
                    pids.trim_end_matches(',')
                ])
                .output()
                .unwrap()
                .stdout
        )
    );

    // The next run takes the stopped claim over and finishes the issue once.
    let output = mala(&["run"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(br.json(&["show", issue])[0]["status"], "closed");
    let commits = repo.git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")]);
    assert_eq!(commits.lines().count(), 1, "done once: {commits}");
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.body.to_string().contains("picking your session up")),
        "the next run resumed the earlier session rather than starting over"
    );
}

/// A child's output, read line by line as it comes, so a test can wait for
/// what mala says (each Ctrl-C is acknowledged on stderr, watch mode says it
/// is watching on stdout) instead of sleeping.
struct Lines {
    lines: std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>,
}

impl Lines {
    fn stderr(child: &mut std::process::Child) -> Self {
        Self::follow(child.stderr.take().expect("stderr is piped"))
    }

    fn stdout(child: &mut std::process::Child) -> Self {
        Self::follow(child.stdout.take().expect("stdout is piped"))
    }

    fn follow(stream: impl std::io::Read + Send + 'static) -> Self {
        use std::io::BufRead;
        let lines: std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)> =
            std::sync::Arc::default();
        let shared = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                shared.0.lock().unwrap().push(line);
                shared.1.notify_all();
            }
        });
        Self { lines }
    }

    /// Waits until a line contains `text`.
    fn wait_for(&self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let (lines, said) = &*self.lines;
        let mut seen = lines.lock().unwrap();
        while !seen.iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "mala never said {text:?}: {seen:?}");
            seen = said.wait_timeout(seen, left).unwrap().0;
        }
    }

    fn text(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }
}

/// A repository with one issue, "Fix a" (the agent writes `src/a.txt`; the
/// required check is `ls src`), the mock model playing `script`, and how to
/// run mala there.
struct OneIssue {
    repo: TempRepo,
    br: Br,
    issue: String,
    mock: MockAnthropic,
    _harness: ClaudeHarness,
    scratch: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl OneIssue {
    /// `script` gets the repository and the scratch directory.
    fn new(
        claude: &Path,
        br_binary: &Path,
        prefix: &str,
        script: impl FnOnce(&Path, &Path) -> Script,
    ) -> Self {
        let repo = TempRepo::with_check("ls src");
        let br = Br::init(br_binary, repo.path(), prefix);
        let issue = br.create(&NewIssue {
            title: "Fix a",
            priority: 2,
            ..NewIssue::default()
        });
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "setup"]);
        let scratch = tempfile::tempdir().unwrap();
        let mock = MockAnthropic::start(script(repo.path(), scratch.path()));
        let harness = ClaudeHarness::new(claude, &mock);
        let bin = bin_dir(scratch.path(), br_binary, claude);
        let env = harness.mala_env(&bin, scratch.path());
        Self {
            repo,
            br,
            issue,
            mock,
            _harness: harness,
            scratch,
            env,
        }
    }

    /// `mala <args>` in the repository, with the test environment only.
    fn mala(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mala"));
        command
            .args(args)
            .current_dir(self.repo.path())
            .env_clear()
            .envs(self.env.clone());
        command
    }
}

/// The environment a test run of `mala` gets: the harness's (pointing claude
/// at the mock), PATH with `bin` first, and lock and run directories under
/// `scratch`.

#[test]
fn a_cerberus_review_gates_the_issue_and_its_advisories_are_tracked() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    let yaml = "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\n\
                per_issue_review:\n  enabled: true\n  reviewer_type: cerberus\n  \
                cerberus:\n    env:\n      FAKE_VERDICT: needs_work\n";
    std::fs::write(repo.path().join("mala.yaml"), yaml).unwrap();
    let br = Br::init(&br_binary, repo.path(), "cerb");
    let issue = br.create(&NewIssue {
        title: "Fix a",
        priority: 2,
        description: "Write the word fixed into FILE=src/a.txt and commit it.",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let mala = |env: &[(String, String)]| {
        Command::new(env!("CARGO_BIN_EXE_mala"))
            .arg("run")
            .current_dir(repo.path())
            .env_clear()
            .envs(env.iter().cloned())
            .output()
            .unwrap()
    };

    // Configured but not installed: a clear refusal before any agent starts.
    let output = mala(&env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`cerberus` is not on PATH") && stderr.contains("agent_sdk"),
        "{stderr}"
    );
    assert_eq!(br.json(&["show", &issue])[0]["status"], "open");

    let cerberus = FakeCerberus::install(scratch.path());
    std::os::unix::fs::symlink(&cerberus.binary, bin.join("cerberus")).unwrap();
    let mut env = env;
    env.push(("CERBERUS_ROOT".into(), cerberus.home.display().to_string()));
    let output = mala(&env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("review: 0 blocking, 2 advisory"),
        "cerberus's findings were read: {stdout}"
    );
    assert_eq!(br.json(&["show", &issue])[0]["status"], "closed");
    // The tracking issue is ordinary work, so the run took it too; its own
    // advisories were not tracked again.
    let tracking = br.json(&["list", "--all", "--label", "review_finding"]);
    let tracking = tracking["issues"].as_array().unwrap();
    assert_eq!(tracking.len(), 1, "{tracking:?}");
    assert!(
        tracking[0]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("Name is unclear"),
        "{}",
        tracking[0]
    );
}

/// Six issues, two of them under an epic and one waiting for another, three
/// agents at once: everything closes, in dependency order, the epic too.
#[allow(clippy::too_many_lines)]
#[test]
fn six_issues_with_an_epic_and_a_dependency_close_in_order_with_three_agents() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::with_check("ls src");
    let br = Br::init(&br_binary, repo.path(), "six");
    let epic = br.create(&NewIssue {
        title: "Both parts",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let names = ["a", "b", "c", "d", "e", "f"];
    let descriptions: Vec<String> = names
        .iter()
        .map(|n| format!("Write the word fixed into FILE=src/{n}.txt and commit it."))
        .collect();
    let issues: Vec<String> = names
        .iter()
        .zip(&descriptions)
        .enumerate()
        .map(|(i, (name, description))| {
            br.create(&NewIssue {
                title: &format!("Fix {name}"),
                priority: 2,
                parent: (i < 2).then_some(epic.as_str()),
                description,
                ..NewIssue::default()
            })
        })
        .collect();
    // f waits for e.
    br.block(&issues[5], &issues[4]);
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(script_with_check(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let events = scratch.path().join("events.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run", "--max-agents", "3", "--events-jsonl"])
        .arg(&events)
        .current_dir(repo.path())
        .env_clear()
        .envs(harness.mala_env(&bin, scratch.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for issue in issues.iter().chain([&epic]) {
        assert_eq!(
            br.json(&["show", issue])[0]["status"],
            "closed",
            "{issue}: {stdout}"
        );
    }
    assert!(stdout.contains("6 closed, 0 failed, 0 skipped"), "{stdout}");
    for (issue, name) in issues.iter().zip(names) {
        let commits = repo.git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")]);
        assert_eq!(commits.lines().count(), 1, "{issue}: {commits}");
        assert_eq!(
            std::fs::read_to_string(repo.path().join(format!("src/{name}.txt"))).unwrap(),
            "fixed\n"
        );
    }
    // The summary table has a row per issue and the total.
    for issue in &issues {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(issue.as_str()) && l.contains("closed")),
            "{issue} in the table: {stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("total") && l.contains("6 closed"))
    );
    // Order, from the event log: f was claimed only after e closed, and at
    // most three agents ever ran at once.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let position = |kind: &str, issue: &str| {
        events
            .iter()
            .position(|e| e["kind"] == kind && e["issue"] == issue)
            .unwrap_or_else(|| panic!("no {kind} for {issue}"))
    };
    assert!(position("issue_closed", &issues[4]) < position("issue_claimed", &issues[5]));
    let mut running = 0i32;
    let mut most = 0;
    for event in &events {
        match event["kind"].as_str() {
            Some("issue_claimed") => running += 1,
            Some("issue_closed" | "issue_failed") if event["issue"] != epic.as_str() => {
                running -= 1;
            }
            _ => {}
        }
        most = most.max(running);
    }
    assert_eq!(most, 3, "three agents at once, never more");
}

/// The prompt a later run's resumed session gets (`prompts/run_resume.md`).
const RESUMED: &str = "picking your session up";

/// An agent that pauses before and after its work, so mala can be killed
/// there, and that acts sensibly when a later run resumes it: if its commit
/// went through it only runs the check again, else it redoes its steps.
fn resumable_script(repo: &Path) -> Script {
    let repo = repo.canonicalize().unwrap();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let work = [
            (
                "mcp__mala__lock_acquire",
                json!({"filepaths": ["src/a.txt"]}),
            ),
            (
                "Write",
                json!({"file_path": repo.join("src/a.txt"), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": "ls src"})),
            (
                "mcp__mala__commit",
                json!({"paths": ["src/a.txt"], "message": format!("bd-{issue}: fix a")}),
            ),
        ];
        let pause = |seconds: u32| ("Bash", json!({"command": format!("sleep {seconds}")}));
        let committed = conversation
            .tool_results()
            .iter()
            .any(|(error, text)| !error && text.contains("\"commit\""));
        let next = match conversation.tool_uses_since(RESUMED) {
            Some(0) if committed => Some(("Bash", json!({"command": "ls src"}))),
            Some(_) if committed => None,
            Some(done) => work.get(done).cloned(),
            None => {
                let mut plan = vec![pause(2)];
                plan.extend(work.iter().cloned());
                plan.push(pause(3));
                plan.get(conversation.tool_uses_so_far()).cloned()
            }
        };
        reply(
            next.as_ref(),
            "Done; src/a.txt is fixed, `ls src` passes, and the fix is committed.",
        )
    })
}

/// What `kill_then_resume` waits for before the SIGKILL.
type Ready<'a> = &'a dyn Fn(&Br, &TempRepo, &MockAnthropic, &str) -> bool;

/// Kills `mala run` with SIGKILL once `ready` says so, then runs mala with
/// `next` and checks nothing was lost or done twice (and, when `resumed`,
/// that the agent's session was continued, not started over).
fn kill_then_resume(point: &str, next: &[&str], resumed: bool, ready: Ready<'_>) {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let fix = OneIssue::new(&claude, &br_binary, "kill", |repo, _| {
        resumable_script(repo)
    });
    let OneIssue {
        repo,
        br,
        issue,
        mock,
        scratch,
        ..
    } = &fix;
    let mala = |args: &[&str]| fix.mala(args);
    let mut first = mala(&["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !ready(br, repo, mock, issue) {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: never got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The agents die with mala: none works on, unguarded, after it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !agents_of(issue).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: an agent outlived mala: {:?}",
            agents_of(issue)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        br.json(&["show", issue])[0]["status"],
        "in_progress",
        "{point}: the dead run's claim is still there"
    );

    let output = mala(next).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{point}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if resumed {
        assert!(
            mock.requests()
                .iter()
                .any(|r| r.body.to_string().contains(RESUMED)),
            "{point}: the next run continued the earlier session"
        );
    }
    assert_eq!(br.json(&["show", issue])[0]["status"], "closed", "{point}");
    let commits = repo.git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")]);
    assert_eq!(commits.lines().count(), 1, "{point}: done once: {commits}");
    let locks: Vec<String> = std::fs::read_dir(scratch.path().join("locks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|x| x == "lock" || x == "marker")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        locks.is_empty(),
        "{point}: nothing stale is left: {locks:?}"
    );
}

#[test]
fn a_run_killed_right_after_its_claim_is_finished_by_the_next() {
    kill_then_resume(
        "after the claim",
        &["run", "--resume"],
        false,
        &|br, _, _, issue| br.json(&["show", issue])[0]["status"] == "in_progress",
    );
}

#[test]
fn a_run_killed_mid_turn_is_taken_over_by_a_plain_run_that_continues_the_session() {
    kill_then_resume("mid-turn", &["run"], true, &|_, _, mock, _| {
        mock.requests()
            .iter()
            .any(|r| r.body.to_string().contains("sleep 2"))
    });
}

#[test]
fn a_run_killed_after_the_commit_but_before_the_close_is_not_done_twice() {
    kill_then_resume(
        "after the commit",
        &["run", "--resume"],
        true,
        &|_, repo, _, issue| {
            !repo
                .git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")])
                .trim()
                .is_empty()
        },
    );
}

/// `claude` processes started for an agent on `issue` (their environment
/// names it).
fn agents_of(issue: &str) -> Vec<u32> {
    let needle = format!("MALA_AGENT_ID={issue}@");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(&needle))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("stream-json"))
        })
        .collect()
}

/// An agent that commits only half its work: the check passes in the shared
/// tree (the other half is there, uncommitted), so only mala's own run of
/// the check on the commit can tell. Told so, it commits the rest.
fn half_committed_script(repo: &Path) -> Script {
    let repo = repo.canonicalize().unwrap();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let both = json!({"filepaths": ["src/a.txt", "src/b.txt"]});
        let write = |name: &str| json!({"file_path": repo.join(format!("src/{name}.txt")), "content": "fixed\n"});
        let commit = |paths: &[&str], what: &str| json!({"paths": paths, "message": format!("bd-{issue}: {what}")});
        let first = [
            ("mcp__mala__lock_acquire", both.clone()),
            ("Write", write("a")),
            ("Write", write("b")),
            (
                "Bash",
                json!({"command": "test -f src/a.txt && test -f src/b.txt"}),
            ),
            ("mcp__mala__commit", commit(&["src/a.txt"], "fix a")),
        ];
        let second = [
            ("mcp__mala__commit", commit(&["src/b.txt"], "add b too")),
            (
                "Bash",
                json!({"command": "test -f src/a.txt && test -f src/b.txt"}),
            ),
        ];
        let next = match conversation.tool_uses_since("clean checkout") {
            Some(done) => second.get(done),
            None => first.get(conversation.tool_uses_so_far()),
        };
        reply(next, "Done; the check passes and the work is committed.")
    })
}

#[test]
fn with_gate_rerun_mala_catches_a_commit_that_passes_only_in_the_shared_tree() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let fix = OneIssue::new(&claude, &br_binary, "rerun", |repo, _| {
        half_committed_script(repo)
    });
    std::fs::write(
        fix.repo.path().join("mala.yaml"),
        "commands:\n  check: \"test -f src/a.txt && test -f src/b.txt\"\n\
         evidence_check:\n  required: [check]\ngate:\n  rerun: true\n",
    )
    .unwrap();
    fix.repo.git(&["commit", "-q", "-am", "rerun the checks"]);
    let output = fix.mala(&["run"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("gate failed (attempt 1)") && stdout.contains("clean checkout"),
        "the half commit was caught: {stdout}"
    );
    assert!(stdout.contains("gate passed (attempt 2)"), "{stdout}");
    assert_eq!(fix.br.json(&["show", &fix.issue])[0]["status"], "closed");
    let files = fix
        .repo
        .git(&["show", "--name-only", "--format=", "HEAD~1", "HEAD~2"]);
    assert!(
        files.contains("src/b.txt"),
        "b was committed in the end: {files}"
    );
    let worktrees = fix.repo.git(&["worktree", "list"]);
    assert_eq!(
        worktrees.lines().count(),
        1,
        "no checkout left: {worktrees}"
    );
}

/// Two agents that each lock one file, pause, then want the other's: a
/// deadlock, unless mala breaks it.
fn crossing_script(repo: &Path) -> Script {
    let repo = repo.canonicalize().unwrap();
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let word = |key: &str| {
            text.split(key)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("src/x.txt")
                .to_owned()
        };
        let (first, second) = (word("FIRST="), word("SECOND="));
        let write =
            |path: &str| json!({"file_path": repo.join(path), "content": format!("{issue}\n")});
        let plan = [
            ("mcp__mala__lock_acquire", json!({"filepaths": [first]})),
            ("Bash", json!({"command": "sleep 2"})),
            (
                "mcp__mala__lock_acquire",
                json!({"filepaths": [second], "timeout_seconds": 60}),
            ),
            // Claude Code writes over a file only after reading it, and the
            // issue that gave way finds the other's files there.
            ("Read", json!({"file_path": repo.join(&first)})),
            ("Write", write(&first)),
            ("Read", json!({"file_path": repo.join(&second)})),
            ("Write", write(&second)),
            ("Bash", json!({"command": "ls src"})),
            (
                "mcp__mala__commit",
                json!({"paths": [first, second], "message": format!("bd-{issue}: both files")}),
            ),
        ];
        reply(
            plan.get(conversation.tool_uses_so_far()),
            "Done; both files are fixed and committed.",
        )
    })
}

#[test]
fn a_deadlock_between_two_agents_is_broken_and_both_issues_close() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::with_check("ls src");
    let br = Br::init(&br_binary, repo.path(), "dead");
    let issues: Vec<String> = [("a", "b"), ("b", "a")]
        .iter()
        .map(|(first, second)| {
            br.create(&NewIssue {
                title: &format!("Fix {first} then {second}"),
                priority: 2,
                description: &format!("FIRST=src/{first}.txt SECOND=src/{second}.txt"),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mock = MockAnthropic::start(crossing_script(repo.path()));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run", "--max-agents", "2"])
        .current_dir(repo.path())
        .env_clear()
        .envs(harness.mala_env(&bin, scratch.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("gave way in a deadlock"), "{stdout}");
    assert!(
        !stdout.contains("gate failed"),
        "the victim stopped at once, and its issue ran again cleanly: {stdout}"
    );
    assert!(stdout.contains("2 closed, 0 failed"), "{stdout}");
    for issue in &issues {
        assert_eq!(br.json(&["show", issue])[0]["status"], "closed", "{stdout}");
        let commits = repo.git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")]);
        assert_eq!(commits.lines().count(), 1, "{issue}: {commits}");
    }
}

#[test]
fn an_agent_whose_process_dies_mid_turn_is_resumed_by_its_session_id() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let fix = OneIssue::new(&claude, &br_binary, "crash", |repo, _| {
        resumable_script(repo)
    });
    let run = fix
        .mala(&["run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the agent has started its first command, its claude process dies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let agent = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        let started = fix
            .mock
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("sleep 2"));
        if let (true, Some(pid)) = (started, agents_of(&fix.issue).first().copied()) {
            break pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let status = Command::new("kill")
        .args(["-KILL", &agent.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("resuming (1/"), "{stdout}");
    assert!(
        fix.mock
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("its process ended")),
        "the same conversation went on with the resume prompt"
    );
    assert_eq!(fix.br.json(&["show", &fix.issue])[0]["status"], "closed");
    let commits = fix.repo.git(&[
        "log",
        "--format=%s",
        "--grep",
        &format!("^bd-{}:", fix.issue),
    ]);
    assert_eq!(commits.lines().count(), 1, "{commits}");
}

#[test]
fn an_epic_that_fails_verification_gets_remediation_then_closes() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::with_check("ls src");
    let br = Br::init(&br_binary, repo.path(), "rem");
    let epic = br.create(&NewIssue {
        title: "Parts a and c",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let part = br.create(&NewIssue {
        title: "Fix a",
        priority: 2,
        parent: Some(&epic),
        description: "Write the word fixed into FILE=src/a.txt and commit it.",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    // The verifier finds part c missing until it is there.
    let mock = MockAnthropic::start(honest_script(repo.path(), |repo| {
        if repo.join("src/c.txt").exists() {
            r#"{"passed": true, "findings": []}"#.to_owned()
        } else {
            r#"{"passed": false, "findings": [{"priority": 1, "title": "Part c is missing", "body": "Write the word fixed into FILE=src/c.txt and commit it."}]}"#.to_owned()
        }
    }));
    let harness = ClaudeHarness::new(&claude, &mock);
    let scratch = tempfile::tempdir().unwrap();
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let output = Command::new(env!("CARGO_BIN_EXE_mala"))
        .arg("run")
        .current_dir(repo.path())
        .env_clear()
        .envs(harness.mala_env(&bin, scratch.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "✗ {epic}  epic verification found 1 unmet criterion"
        )),
        "{stdout}"
    );
    let remediation = br.json(&["list", "--all", "--label", "auto_generated"]);
    let remediation = remediation["issues"].as_array().unwrap();
    assert_eq!(remediation.len(), 1, "{remediation:?}");
    assert!(
        remediation[0]["title"]
            .as_str()
            .unwrap()
            .starts_with("[Remediation] Part c is missing")
    );
    let remediation = remediation[0]["id"].as_str().unwrap().to_owned();
    for issue in [&part, &remediation, &epic] {
        assert_eq!(
            br.json(&["show", issue])[0]["status"],
            "closed",
            "{issue}: {stdout}"
        );
    }
    assert!(stdout.contains(&format!("✓ {epic}  closed")), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/c.txt")).unwrap(),
        "fixed\n"
    );
}
