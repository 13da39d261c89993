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
    _scratch: tempfile::TempDir,
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
            _scratch: scratch,
            env,
        })
    }

    /// `mala run --coder codex ARGS`: its exit code and stdout.
    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_mala"))
            .args(["run", "--coder", "codex"])
            .args(args)
            .current_dir(self.repo.path())
            .env_clear()
            .envs(self.env.clone())
            .output()
            .unwrap();
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

/// An honest codex agent: lock its file, write it with a patch, run the
/// check, commit through mala's tool.
fn honest() -> ResponsesScript {
    ResponsesScript::from_fn(|conversation| {
        let (issue, file) = issue_and_file(*conversation);
        let plan = [
            tool("lock_acquire", json!({"filepaths": [file]})),
            patch_adding(&file),
            ResponsesReply::shell("ls src"),
            tool(
                "commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        plan.get(conversation.calls_so_far())
            .cloned()
            .unwrap_or_else(|| {
                ResponsesReply::Message(format!("Fixed {file}; `ls src` passed; committed."))
            })
    })
}

#[test]
fn three_codex_agents_close_their_issues_each_committed_and_checked() {
    let Some(run) = CodexRun::new(&["a", "b", "c"], CHECKED, honest()) else {
        return;
    };
    let (code, out) = run.run(&["--max-agents", "3"]);
    assert_eq!(code, Some(0), "{out}");
    for issue in &run.issues {
        assert_eq!(run.status(issue), "closed", "{issue}: {out}");
    }
    let log = run.repo.git(&["log", "--format=%s", "--name-only"]);
    for name in ["a", "b", "c"] {
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
