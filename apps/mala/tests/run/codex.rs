//! `mala run --coder codex` as a user runs it: the binary, the real br and
//! the real Codex CLI, whose own `CODEX_HOME` (config.toml) makes the
//! Responses mock its model provider; mala passes that setup through.

use mala_testkit::{
    CodexHarness, MockResponses, ResponsesConversation, ResponsesReply, ResponsesScript,
};

use super::*;

/// A repository with one ready issue per name (each asks for `src/<name>.txt`),
/// the mock model, a codex home pointing at it, and `mala run`'s environment.
struct CodexRun {
    repo: TempRepo,
    br: Br,
    issues: Vec<String>,
    mock: MockResponses,
    _harness: CodexHarness,
    scratch: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl CodexRun {
    fn new(names: &[&str], yaml: &str, script: ResponsesScript) -> Option<Self> {
        let codex = mala_testkit::tool_or_skip(Tool::Codex, module_path!())?;
        let br_binary = mala_testkit::tool_or_skip(Tool::Br, module_path!())?;
        let repo = TempRepo::new();
        std::fs::create_dir(repo.path().join("src")).unwrap();
        std::fs::write(repo.path().join("mala.yaml"), yaml).unwrap();
        let br = Br::init(&br_binary, repo.path(), "cx");
        let issues = names
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
        let mock = MockResponses::start(script);
        let harness = CodexHarness::new(&mock);
        let scratch = tempfile::tempdir().unwrap();
        let bin = scratch.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&br_binary, bin.join("br")).unwrap();
        std::os::unix::fs::symlink(&codex, bin.join("codex")).unwrap();
        let mut env: Vec<(String, String)> = harness
            .env()
            .into_iter()
            .filter(|(k, _)| k != "PATH")
            .collect();
        env.extend([
            (
                "PATH".to_owned(),
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            ),
            (
                "MALA_LOCK_DIR".to_owned(),
                scratch.path().join("locks").display().to_string(),
            ),
            (
                "MALA_RUNS_DIR".to_owned(),
                scratch.path().join("runs").display().to_string(),
            ),
        ]);
        Some(Self {
            repo,
            br,
            issues,
            mock,
            _harness: harness,
            scratch,
            env,
        })
    }

    /// `mala run --coder codex ARGS`, to be started.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mala"));
        command
            .args(["run", "--coder", "codex"])
            .args(args)
            .current_dir(self.repo.path())
            .env_clear()
            .envs(self.env.clone());
        command
    }

    /// `mala run --coder codex ARGS`: its exit code and stdout.
    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = self.command(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        (
            output.status.code(),
            format!("{stdout}\n--- stderr\n{stderr}"),
        )
    }

    fn status(&self, issue: &str) -> String {
        self.br.json(&["show", issue])[0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

const CHECKED: &str = "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\n";

/// The issue and file the implementer prompt names.
fn issue_and_file(conversation: ResponsesConversation<'_>) -> (String, String) {
    let text = conversation.user_texts().join("\n");
    let file = text
        .split("FILE=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("src/x.txt")
        .to_owned();
    (issue_of(&text), file)
}

fn patch_adding(file: &str) -> ResponsesReply {
    ResponsesReply::Patch(format!(
        "*** Begin Patch\n*** Add File: {file}\n+fixed\n*** End Patch\n"
    ))
}

fn tool(name: &str, arguments: serde_json::Value) -> ResponsesReply {
    ResponsesReply::Call {
        name: name.to_owned(),
        arguments,
    }
}

/// An honest codex agent's plan: lock its file, write it with a patch,
/// run the check, commit through mala's tool.
fn honest_plan(conversation: ResponsesConversation<'_>) -> Vec<ResponsesReply> {
    let (issue, file) = issue_and_file(conversation);
    vec![
        tool("lock_acquire", json!({"filepaths": [file]})),
        patch_adding(&file),
        ResponsesReply::shell("ls src"),
        tool(
            "commit",
            json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
        ),
    ]
}

/// The plan's next call, or its report once the plan is done.
fn following(plan: &[ResponsesReply], conversation: ResponsesConversation<'_>) -> ResponsesReply {
    plan.get(conversation.calls_so_far())
        .cloned()
        .unwrap_or_else(|| {
            ResponsesReply::Message("Fixed it; `ls src` passed; committed.".to_owned())
        })
}

fn honest() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| following(&honest_plan(*conversation), *conversation))
}

/// The honest agent, whose first command waits (up to 30 s) until `count`
/// agents have arrived in `dir`, then writes how many it saw to `dir/seen`.
fn meeting(dir: &Path, count: usize) -> ResponsesScript {
    let here = dir.join("here");
    let seen = dir.join("seen");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    ResponsesScript::from_fn(move |conversation| {
        let (issue, _) = issue_and_file(*conversation);
        let (here, seen) = (here.display(), seen.display());
        let mut plan = vec![ResponsesReply::shell(&format!(
            "touch {here}/{issue}; for i in $(seq 300); do [ \"$(ls {here} | wc -l)\" -ge {count} ] && break; sleep 0.1; done; ls {here} | wc -l > {seen}/{issue}"
        ))];
        plan.extend(honest_plan(*conversation));
        following(&plan, *conversation)
    })
}

#[test]
fn eight_codex_agents_at_once_close_their_issues_each_committed_and_checked() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let meet = tempfile::tempdir().unwrap();
    let Some(run) = CodexRun::new(&names, CHECKED, meeting(meet.path(), names.len())) else {
        return;
    };
    let (code, out) = run.run(&["--max-agents", "8"]);
    assert_eq!(code, Some(0), "{out}");
    // All eight were at work together: each saw the seven others arrive.
    let seen: Vec<String> = std::fs::read_dir(meet.path().join("seen"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(seen, vec!["8"; 8], "{out}");
    for issue in &run.issues {
        assert_eq!(run.status(issue), "closed", "{issue}: {out}");
    }
    let log = run.repo.git(&["log", "--format=%s", "--name-only"]);
    for name in names {
        assert!(log.contains(&format!("src/{name}.txt")), "{log}");
    }
    assert_eq!(
        std::fs::read_to_string(run.repo.join("src/a.txt")).unwrap(),
        "fixed\n"
    );
    // Every model request went to the mock; none tried another host.
    assert!(
        run.mock
            .requests()
            .iter()
            .all(|r| r.path() == "/v1/responses")
    );
}

/// The first attempt edits and commits but runs no check; told so by the
/// gate in the same thread, the agent runs it and the issue closes on the
/// second attempt.
fn checks_only_when_told() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| {
        let (issue, file) = issue_and_file(*conversation);
        let first = [
            tool("lock_acquire", json!({"filepaths": [file]})),
            patch_adding(&file),
            tool(
                "commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        let next = match conversation.calls_since("it is not done yet") {
            Some(0) => Some(ResponsesReply::shell("ls src")),
            Some(_) => None,
            None => first.get(conversation.calls_so_far()).cloned(),
        };
        next.unwrap_or_else(|| ResponsesReply::Message("Done: fixed and committed.".to_owned()))
    })
}

#[test]
fn a_codex_agent_told_by_the_gate_runs_the_check_in_the_same_thread_and_closes() {
    let Some(run) = CodexRun::new(&["a"], CHECKED, checks_only_when_told()) else {
        return;
    };
    let (code, out) = run.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("gate failed (attempt 1)"), "{out}");
    assert!(out.contains("gate passed (attempt 2)"), "{out}");
    assert_eq!(run.status(&run.issues[0]), "closed", "{out}");
    // The follow-up was a turn of the same thread: its request carries the
    // first attempt's calls.
    let followed = run.mock.requests().iter().any(|r| {
        let texts = ResponsesConversation::user_texts_of(&r.body);
        texts.iter().any(|t| t.contains("it is not done yet"))
            && ResponsesConversation::tool_outputs_of(&r.body).len() >= 2
    });
    assert!(followed, "the gate's follow-up continued the thread");
    // The session's record holds both turns' protocol lines.
    let records: Vec<String> = walk(&run.scratch.path().join("runs"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("sessions")))
        .filter(|p| p.display().to_string().contains(&run.issues[0]))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "one record for the issue's agent");
    assert_eq!(
        records[0].matches("\"turn/start\"").count(),
        2,
        "both turns recorded"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// An agent that says it committed, and ran the check, and did neither;
/// and that tries to push over the remote's history first.
fn liar() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| {
        if conversation.calls_so_far() == 0 {
            return ResponsesReply::shell("git push --force origin main");
        }
        ResponsesReply::Message("All done: fixed, `ls src` passed, committed.".to_owned())
    })
}

#[test]
fn a_lying_codex_agent_is_caught_and_its_destructive_command_refused() {
    let yaml = format!("{CHECKED}max_gate_retries: 1\n");
    let Some(run) = CodexRun::new(&["a"], &yaml, liar()) else {
        return;
    };
    let head = run.repo.git(&["rev-parse", "HEAD"]);
    let (code, out) = run.run(&[]);
    assert_eq!(code, Some(1), "the issue failed: {out}");
    assert_ne!(run.status(&run.issues[0]), "closed", "{out}");
    assert!(out.contains("gate failed"), "{out}");
    assert!(
        out.contains("commit"),
        "the reason names the missing commit: {out}"
    );
    let refused = run.mock.requests().iter().any(|r| {
        ResponsesConversation::user_texts_of(&r.body)
            .iter()
            .any(|t| t.contains("mala refused that call"))
    });
    assert!(refused, "the refusal reached the model");
    let log = run.repo.git(&["log", "--format=%H %s"]);
    assert!(
        log.lines()
            .all(|l| !l.contains(&format!("bd-{}", run.issues[0]))),
        "nothing was committed for it: {log} (setup was {head})"
    );
}

/// An agent that pauses before and after its work, so mala can be killed
/// there, and that acts sensibly when a later run resumes its thread: if its
/// commit went through it only runs the check again, else it redoes its steps.
fn resumable() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| {
        let (issue, file) = issue_and_file(*conversation);
        let work = [
            tool("lock_acquire", json!({"filepaths": [file]})),
            patch_adding(&file),
            ResponsesReply::shell("ls src"),
            tool(
                "commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        let committed = conversation
            .tool_outputs()
            .iter()
            .any(|text| text.contains("\"commit\""));
        let next = match conversation.calls_since(RESUMED) {
            Some(0) if committed => Some(ResponsesReply::shell("ls src")),
            Some(_) if committed => None,
            Some(done) => work.get(done).cloned(),
            None => {
                let mut plan = vec![ResponsesReply::shell("sleep 2")];
                plan.extend(work.iter().cloned());
                plan.push(ResponsesReply::shell("sleep 3"));
                plan.get(conversation.calls_so_far()).cloned()
            }
        };
        next.unwrap_or_else(|| {
            ResponsesReply::Message("Done; fixed, checked and committed.".to_owned())
        })
    })
}

/// `codex app-server` processes working in `repo`.
fn app_servers_in(repo: &Path) -> Vec<u32> {
    let repo = repo.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("app-server"))
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == repo)
        })
        .collect()
}

/// Kills `mala run --coder codex` with SIGKILL once `ready` says so, then
/// runs it with `next`: the issue closes, once, the killed run's thread
/// continued (not started over), and nothing stale is left.
fn kill_then_resume(point: &str, next: &[&str], ready: &dyn Fn(&CodexRun) -> bool) {
    let Some(run) = CodexRun::new(&["a"], CHECKED, resumable()) else {
        return;
    };
    let issue = &run.issues[0];
    let mut first = run
        .command(&[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !ready(&run) {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: never got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app_servers_in(run.repo.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: codex outlived mala: {:?}",
            app_servers_in(run.repo.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        run.status(issue),
        "in_progress",
        "{point}: the claim is kept"
    );
    let threads_before = run.mock.requests().len();
    let (code, out) = run.run(next);
    assert_eq!(code, Some(0), "{point}: {out}");
    assert_eq!(run.status(issue), "closed", "{point}: {out}");
    let resumed = run.mock.requests()[threads_before..].iter().any(|r| {
        let body = r.body.to_string();
        body.contains(RESUMED) && body.contains("sleep 2")
    });
    assert!(
        resumed,
        "{point}: the next run continued the killed run's thread"
    );
    let commits = run
        .repo
        .git(&["log", "--format=%s", "--grep", &format!("^bd-{issue}:")]);
    assert_eq!(commits.lines().count(), 1, "{point}: done once: {commits}");
    let stale: Vec<_> = std::fs::read_dir(run.scratch.path().join("locks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "lock" || x == "marker"))
        .collect();
    assert!(
        stale.is_empty(),
        "{point}: nothing stale is left: {stale:?}"
    );
}

#[test]
fn a_codex_run_killed_mid_turn_is_taken_over_by_a_plain_run_that_continues_the_thread() {
    kill_then_resume("mid-turn", &[], &|run| {
        run.mock
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("sleep 2"))
    });
}

#[test]
fn a_codex_run_killed_after_the_commit_is_resumed_and_not_done_twice() {
    kill_then_resume("after the commit", &["--resume"], &|run| {
        !run.repo
            .git(&[
                "log",
                "--format=%s",
                "--grep",
                &format!("^bd-{}:", run.issues[0]),
            ])
            .trim()
            .is_empty()
    });
}

/// The honest agent, a reviewer that reads the commit and tries one write
/// (which its read-only guard refuses) before passing it, and an epic
/// verifier that passes the epic.
fn reviewed() -> ResponsesScript {
    let implementer = honest();
    ResponsesScript::from_fn(move |conversation| {
        let text = conversation.user_texts().join("\n");
        if text.contains("All the issues under epic") {
            return ResponsesReply::Message(r#"{"passed": true, "findings": []}"#.to_owned());
        }
        if text.contains("You review a change") {
            let plan = [
                ResponsesReply::shell("git show --stat HEAD"),
                ResponsesReply::shell("touch reviewed.txt"),
            ];
            return plan
                .get(conversation.calls_so_far())
                .cloned()
                .unwrap_or_else(|| ResponsesReply::Message(r#"{"findings": []}"#.to_owned()));
        }
        implementer.reply(conversation)
    })
}

#[test]
fn codex_reviews_the_issue_read_only_and_verifies_its_epic() {
    let yaml = format!("{CHECKED}per_issue_review:\n  enabled: true\n");
    let Some(run) = CodexRun::new(&[], &yaml, reviewed()) else {
        return;
    };
    let epic = run.br.create(&NewIssue {
        title: "Everything fixed",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let issue = run.br.create(&NewIssue {
        title: "Fix a",
        priority: 2,
        parent: Some(&epic),
        description: "Write the word fixed into FILE=src/a.txt and commit it.",
        ..NewIssue::default()
    });
    run.repo.git(&["add", "-A"]);
    run.repo.git(&["commit", "-q", "-m", "the epic"]);
    let (code, out) = run.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(run.status(&issue), "closed", "{out}");
    assert_eq!(run.status(&epic), "closed", "the verifier passed it: {out}");
    assert!(
        !run.repo.join("reviewed.txt").exists(),
        "the reviewer's write was refused"
    );
    let reviewer_told = run.mock.requests().iter().any(|r| {
        let texts = ResponsesConversation::user_texts_of(&r.body);
        texts.iter().any(|t| t.contains("You review a change"))
            && texts.iter().any(|t| t.contains("mala refused that call"))
    });
    assert!(reviewer_told, "the review ran on codex, and read only");
}

/// An agent that writes and commits its file but never runs the check.
fn commits_unchecked() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| {
        let (issue, file) = issue_and_file(*conversation);
        let plan = [
            tool("lock_acquire", json!({"filepaths": [file]})),
            patch_adding(&file),
            tool(
                "commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        following(&plan, *conversation)
    })
}

#[test]
fn a_codex_agent_that_commits_without_running_the_check_stays_open() {
    let yaml = format!("{CHECKED}max_gate_retries: 2\n");
    let Some(run) = CodexRun::new(&["a"], &yaml, commits_unchecked()) else {
        return;
    };
    let (code, out) = run.run(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_ne!(run.status(&run.issues[0]), "closed", "{out}");
    assert!(
        out.contains("`check` (ls src) was never run"),
        "the reason says what is missing: {out}"
    );
    let log = run.repo.git(&["log", "--format=%s"]);
    assert!(
        log.contains(&format!("bd-{}:", run.issues[0])),
        "its commit is there: {log}"
    );
}

/// An agent that tries to fake its check: it copies `true` to a `bash` of
/// its own and asks `exec_command` to run the check through it, so the
/// command would "pass" without running; it commits a file the check does
/// not look at.
fn fakes_its_check(scratch: &Path) -> ResponsesScript {
    let fake = scratch.join("fake");
    ResponsesScript::from_fn(move |conversation| {
        let (issue, _) = issue_and_file(*conversation);
        let bash = fake.join("bash");
        let plan = [
            ResponsesReply::shell(&format!(
                "mkdir -p {0} && cp /bin/true {0}/bash",
                fake.display()
            )),
            tool("lock_acquire", json!({"filepaths": ["src/other.txt"]})),
            patch_adding("src/other.txt"),
            tool(
                "exec_command",
                json!({"cmd": "test -f src/a.txt", "shell": bash.display().to_string()}),
            ),
            tool(
                "commit",
                json!({"paths": ["src/other.txt"], "message": format!("bd-{issue}: fix")}),
            ),
        ];
        following(&plan, *conversation)
    })
}

#[test]
fn a_codex_agent_that_fakes_its_check_with_a_shell_of_its_own_stays_open() {
    let yaml = "commands:\n  check: \"test -f src/a.txt\"\nevidence_check:\n  required: [check]\nmax_gate_retries: 1\n";
    let fake = tempfile::tempdir().unwrap();
    let Some(run) = CodexRun::new(&["a"], yaml, fakes_its_check(fake.path())) else {
        return;
    };
    let (code, out) = run.run(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_ne!(run.status(&run.issues[0]), "closed", "{out}");
    // Whether codex runs it through the fake shell (then it is recorded as
    // that shell's command, not the check) or ignores the argument (then the
    // check really runs, and fails), no pass is on record.
    assert!(out.contains("gate failed (attempt 1): `check`"), "{out}");
    assert!(!run.repo.join("src/a.txt").exists());
}

/// In worktree isolation a codex agent works in its own tree: no lock or
/// commit tools, a patch and git there; a write into the user's checkout is
/// refused; both issues land on main.
#[test]
fn codex_agents_in_their_own_worktrees_land_through_the_queue() {
    let user_file = std::sync::Arc::new(std::sync::Mutex::new(std::path::PathBuf::new()));
    let target = std::sync::Arc::clone(&user_file);
    let script = ResponsesScript::from_fn(move |conversation| {
        let (issue, file) = issue_and_file(*conversation);
        let escape = format!("echo hacked > {}", target.lock().unwrap().display());
        let plan = vec![
            ResponsesReply::shell(&escape),
            patch_adding(&file),
            ResponsesReply::shell("ls src"),
            ResponsesReply::shell(&format!(
                "git add {file} && git commit -q -m 'bd-{issue}: fix {file}'"
            )),
        ];
        following(&plan, *conversation)
    });
    let yaml = format!("isolation: worktree\n{CHECKED}");
    let Some(run) = CodexRun::new(&["a", "b"], &yaml, script) else {
        return;
    };
    std::fs::write(run.repo.join("src/keep.txt"), "kept\n").unwrap();
    run.repo.git(&["add", "src/keep.txt"]);
    run.repo.git(&["commit", "-q", "-m", "keep"]);
    *user_file.lock().unwrap() = run.repo.path().canonicalize().unwrap().join("src/keep.txt");
    let (code, out) = run.run(&["--max-agents", "2"]);
    assert_eq!(code, Some(0), "{out}");
    for (issue, name) in run.issues.iter().zip(["a", "b"]) {
        assert_eq!(run.status(issue), "closed", "{issue}: {out}");
        let landed = run.repo.git(&[
            "log",
            "main",
            "--format=%s",
            "--grep",
            &format!("^bd-{issue}:"),
        ]);
        assert_eq!(landed.lines().count(), 1, "{issue}: {landed}");
        assert_eq!(
            std::fs::read_to_string(run.repo.join(&format!("src/{name}.txt"))).unwrap(),
            "fixed\n"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run.repo.join("src/keep.txt")).unwrap(),
        "kept\n",
        "{out}"
    );
    assert!(
        out.contains("in another working tree"),
        "the escape was refused: {out}"
    );
    let bodies: String = run
        .mock
        .requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(
        !bodies.contains("\"lock_acquire\""),
        "no lock tools in worktree mode"
    );
    assert_eq!(run.repo.git(&["worktree", "list"]).lines().count(), 1);
}
