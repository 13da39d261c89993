//! Proof that the harness is real: the real claude binary, driven by the
//! Rust mock, runs a tool that changes the repository, offline.

use mala_testkit::{
    CLAUDE_VERSION, ClaudeHarness, MockAnthropic, Script, Step, TempRepo, Tool, require_tool,
};

#[test]
fn real_claude_runs_a_scripted_bash_call_against_the_mock() {
    let claude = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::steps(vec![
        Step::bash("echo made-by-claude > created.txt"),
        Step::Text("file written".into()),
    ]));
    let repo = TempRepo::new();
    let harness = ClaudeHarness::new(&claude, &mock);

    let run = harness.print(repo.path(), "Please create the file.");

    assert!(
        run.output.status.success(),
        "claude failed: {}",
        run.stderr()
    );
    let written = std::fs::read_to_string(repo.join("created.txt"))
        .expect("claude's Bash tool created the file");
    assert_eq!(written, "made-by-claude\n");
    let result = run.result().expect("a result line");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "file written");

    let requests = mock.requests();
    assert!(
        requests.len() >= 2,
        "one call for the tool, one for the answer: {requests:?}"
    );
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.path()),
            ("POST", "/v1/messages"),
            "the CLI must reach nothing but the mock's Messages API: {request:?}"
        );
    }
}

#[test]
fn prompt_directives_drive_the_model_too() {
    let claude = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::directives());
    let repo = TempRepo::new();
    let harness = ClaudeHarness::new(&claude, &mock);

    let run = harness.print(
        repo.path(),
        "Create two files.\nMOCK_TOOL Bash {\"command\": \"touch a.txt\", \"description\": \"a\"}\nMOCK_TOOL Bash {\"command\": \"touch b.txt\", \"description\": \"b\"}",
    );

    assert!(
        run.output.status.success(),
        "claude failed: {}",
        run.stderr()
    );
    assert!(repo.join("a.txt").exists() && repo.join("b.txt").exists());
    let text = run.result().unwrap()["result"].as_str().unwrap().to_owned();
    assert!(text.starts_with("MOCK_DONE after 2 tool call(s)"), "{text}");
}

#[test]
fn the_binary_is_the_pinned_version() {
    let claude = require_tool!(Tool::Claude);
    let mock = MockAnthropic::start(Script::directives());
    let version = ClaudeHarness::new(&claude, &mock).version();
    assert!(
        version.starts_with(CLAUDE_VERSION),
        "claude reports `{version}`, the project pins {CLAUDE_VERSION}: bump the pin deliberately"
    );
}
