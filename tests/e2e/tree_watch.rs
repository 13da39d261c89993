//! The working tree as the second line, with the real br and claude and the
//! mock model: an honest agent that stages and commits in one shell call
//! closes on its first attempt, and an agent that writes a file nobody holds
//! through a program the guard cannot read is told, and its issue does not
//! close, while the honest agent beside it closes.
#![allow(clippy::unwrap_used)] // the harness panics to fail the test

use std::path::PathBuf;
use std::sync::Arc;

use mala_core::{AgentId, Event, IssueStatus};
use mala_pipeline::{IssueResult, run_issue};
use mala_testkit::{Block, Conversation, Reply, Script, Tool, require_tool};
use serde_json::{Value, json};

use crate::pipeline::{Setup, create_issue, setup_scripted, status, task_of};

/// What the agent's first prompt says: its issue, its file, and whether it
/// is the one told to touch the victim.
fn task(conversation: Conversation<'_>) -> (String, String, bool) {
    let first = conversation.user_texts().join("\n");
    let (issue, file) = task_of(&first);
    (issue, file, first.contains("ALSO-TOUCH-VICTIM"))
}

/// A program (written to /tmp, run by path) that deletes the branch `keep`
/// behind git's back.
fn ref_deleting_script(repo: PathBuf) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let (issue, _, _) = task(*conversation);
        let program = std::env::temp_dir().join(format!("mala-e2e-{issue}-ref.py"));
        let keep = repo.join(".git/refs/heads/keep");
        let plan = vec![
            (
                "Write",
                json!({"file_path": program, "content": format!("import os\nos.remove({:?})\n", keep.display().to_string())}),
            ),
            (
                "Bash",
                json!({"command": format!("python3 {}", program.display())}),
            ),
            ("Bash", json!({"command": "echo still acting"})),
        ];
        step(*conversation, &plan)
    })
}

fn step(conversation: Conversation<'_>, plan: &[(&str, Value)]) -> Reply {
    let done = conversation.tool_uses_so_far();
    match plan.get(done) {
        Some((name, input)) => Reply::Message(vec![
            Block::Text(format!("step {}", done + 1)),
            Block::ToolUse {
                name: (*name).to_owned(),
                input: input.clone(),
            },
        ]),
        None => Reply::Message(vec![Block::Text("Done: fixed, checked, committed.".into())]),
    }
}

/// Honest agents lock, write, check, then stage and commit in one shell
/// call. The one told to also touch the victim first runs a Python script
/// (written to /tmp, run by path: a program, which the guard does not read)
/// that writes `src/victim.txt`, which nobody holds.
fn script(repo: PathBuf) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let (issue, file, touches_victim) = task(*conversation);
        let mut plan = vec![
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            (
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\n"}),
            ),
        ];
        if touches_victim {
            let program = std::env::temp_dir().join(format!("mala-e2e-{issue}.py"));
            let victim = repo.join("src/victim.txt");
            plan.push((
                "Write",
                json!({"file_path": program, "content": format!("import time\ntime.sleep(1)\nopen({:?}, 'w').write('mine')\n", victim.display().to_string())}),
            ));
            plan.push((
                "Bash",
                json!({"command": format!("python3 {}", program.display())}),
            ));
        }
        plan.push(("Bash", json!({"command": format!("grep -q fixed {file}")})));
        plan.push((
            "Bash",
            json!({"command": format!("git add {file} && git commit -q -m 'bd-{issue}: fix {file}' -- {file}")}),
        ));
        step(*conversation, &plan)
    })
}

fn gates(setup: &Setup, issue: &mala_core::IssueId) -> Vec<(u32, bool)> {
    setup
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::GateChecked {
                issue: of,
                attempt,
                passed,
                ..
            } if of == issue => Some((*attempt, *passed)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_agent_that_stages_and_commits_in_one_shell_call_closes_on_its_first_attempt() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup_scripted(&claude, &br, script, "grep -q fixed src/app.txt");
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    assert_eq!(gates(&setup, &issue), vec![(1, true)], "no second turn");
    let log = setup.repo.git(&["log", "--format=%s", "-n", "1"]);
    assert_eq!(log.trim(), format!("bd-{issue}: fix src/app.txt"));
}

#[tokio::test]
async fn a_write_nobody_holds_through_a_program_is_caught_and_the_honest_neighbour_closes() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = Arc::new(setup_scripted(
        &claude,
        &br,
        script,
        "grep -q fixed src/one.txt",
    ));
    std::fs::write(setup.repo.path().join("src/victim.txt"), "theirs\n").unwrap();
    setup.repo.git(&["add", "src/victim.txt"]);
    setup.repo.git(&["commit", "-q", "-m", "victim"]);
    let honest = create_issue(&setup.br, "Fix one", "src/one.txt");
    let liar = create_issue(&setup.br, "Fix two ALSO-TOUCH-VICTIM", "src/two.txt");
    let mut tasks = Vec::new();
    for (issue, file) in [
        (honest.clone(), "src/one.txt"),
        (liar.clone(), "src/two.txt"),
    ] {
        let mut config = setup.config.clone();
        config.required[0].command = format!("grep -q fixed {file}");
        config.max_gate_attempts = 2;
        let setup = Arc::clone(&setup);
        tasks.push(tokio::spawn(async move {
            run_issue(
                &issue,
                AgentId::new(format!("{issue}@e2e-run")),
                &setup.ports,
                &config,
            )
            .await
        }));
    }
    let honest_result = tasks.remove(0).await.unwrap();
    let liar_result = tasks.remove(0).await.unwrap();
    assert!(
        matches!(honest_result, IssueResult::Closed { .. }),
        "the honest agent is not blamed: {honest_result:?}"
    );
    assert_eq!(status(&setup, &honest).await.0, IssueStatus::Closed);
    let IssueResult::Failed { reason } = liar_result else {
        panic!("the liar's issue must not close: {liar_result:?}")
    };
    assert!(
        reason.contains("you changed src/victim.txt without holding the lock"),
        "{reason}"
    );
    assert_ne!(status(&setup, &liar).await.0, IssueStatus::Closed);
    // The agent was told in the tool's result, not only at the gate.
    let told = setup.mock.requests().iter().any(|r| {
        r.body.to_string().contains(
            "mala saw this Bash call change src/victim.txt, which you do not hold the lock of",
        )
    });
    assert!(told, "the tool result names the file");
}

#[tokio::test]
async fn a_program_that_deletes_a_ref_stops_the_agent_and_fails_its_issue() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup_scripted(
        &claude,
        &br,
        ref_deleting_script,
        "grep -q fixed src/app.txt",
    );
    setup.repo.git(&["branch", "keep"]);
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    let IssueResult::Failed { reason } = result else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains(
            "damaged the repository behind git's back: the ref refs/heads/keep was deleted"
        ),
        "{reason}"
    );
    // The session ended at that call: the agent's next command never ran.
    let ran_on = setup
        .mock
        .requests()
        .iter()
        .any(|r| r.body.to_string().contains("still acting"));
    assert!(!ran_on, "the agent was stopped");
}

/// An agent that starts a program in the background (`… &`: the call
/// returns at once) that would write `src/victim.txt` later, when no window
/// is open; the shell writes its pid. Its next command says whether the
/// program still runs. Then it does its own work honestly.
fn background_script(repo: PathBuf) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let (issue, file, _) = task(*conversation);
        let scratch = std::env::temp_dir().join(format!("mala-e2e-{}-{issue}", std::process::id()));
        let program = scratch.with_extension("py");
        let pidfile = scratch.with_extension("pid");
        let victim = repo.join("src/victim.txt");
        let text = format!(
            "import time\ntime.sleep(30)\nopen({:?}, 'w').write('late')\n",
            victim.display().to_string()
        );
        let probe = format!(
            "s=$(ps -o stat= -p $(cat {})); case \"$s\" in ''|Z*) echo stray:\"gone\";; *) echo stray:\"runs\";; esac",
            pidfile.display()
        );
        let plan = vec![
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            ("Write", json!({"file_path": program, "content": text})),
            (
                "Bash",
                json!({"command": format!("python3 {} > /dev/null 2>&1 & echo $! > {}", program.display(), pidfile.display())}),
            ),
            ("Bash", json!({"command": probe})),
            (
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": format!("grep -q fixed {file}")})),
            (
                "Bash",
                json!({"command": format!("git add {file} && git commit -q -m 'bd-{issue}: fix {file}' -- {file}")}),
            ),
        ];
        step(*conversation, &plan)
    })
}

#[tokio::test]
async fn what_a_shell_call_leaves_running_is_stopped_when_the_call_returns_and_the_agent_told() {
    let (claude, br) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let setup = setup_scripted(&claude, &br, background_script, "grep -q fixed src/app.txt");
    std::fs::write(setup.repo.path().join("src/victim.txt"), "theirs\n").unwrap();
    setup.repo.git(&["add", "src/victim.txt"]);
    setup.repo.git(&["commit", "-q", "-m", "victim"]);
    let issue = create_issue(&setup.br, "Fix the app", "src/app.txt");
    let result = setup.run(&issue).await;
    let scratch = std::env::temp_dir().join(format!("mala-e2e-{}-{issue}", std::process::id()));
    let _ = std::fs::remove_file(scratch.with_extension("py"));
    let _ = std::fs::remove_file(scratch.with_extension("pid"));
    assert!(matches!(result, IssueResult::Closed { .. }), "{result:?}");
    let bodies: Vec<String> = setup
        .mock
        .requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    // Gone before the agent's next command ran, not only at the session's
    // end (the probe's output, which its command line does not spell).
    assert!(
        bodies.iter().any(|b| b.contains("stray:gone")),
        "the probe ran and saw it gone"
    );
    assert!(
        !bodies.iter().any(|b| b.contains("stray:runs")),
        "it was not left running"
    );
    let told = bodies.iter().any(|body| {
        body.contains("mala stopped what your commands left running after they returned")
            && body.contains(".py")
    });
    assert!(told, "the agent is told what was stopped");
    assert_eq!(
        std::fs::read_to_string(setup.repo.path().join("src/victim.txt")).unwrap(),
        "theirs\n"
    );
}
