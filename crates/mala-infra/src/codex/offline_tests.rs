//! The pinned `codex app-server`, offline against the testkit's Responses
//! mock: what mala will build the backend on, shown with the real binary.

use std::path::Path;
use std::time::Duration;

use mala_testkit::{MockResponses, ResponsesReply, ResponsesScript, Tool};
use serde_json::{Value, json};

use super::rpc::Inbound;
use super::server::{AppServer, AppServerCommand};

/// The app-server, with a private home and the mock as its model provider.
fn offline(binary: &Path, mock: &MockResponses, home: &Path) -> AppServerCommand {
    let mut command = AppServerCommand::new(binary);
    let provider = [
        ("model_provider", "\"mock\"".to_owned()),
        ("model_providers.mock.name", "\"mock\"".to_owned()),
        (
            "model_providers.mock.base_url",
            format!("\"{}/v1\"", mock.url()),
        ),
        ("model_providers.mock.wire_api", "\"responses\"".to_owned()),
        (
            "model_providers.mock.env_key",
            "\"MOCK_API_KEY\"".to_owned(),
        ),
        ("model_providers.mock.request_max_retries", "0".to_owned()),
        ("model_providers.mock.stream_max_retries", "0".to_owned()),
    ];
    command
        .settings
        .extend(provider.map(|(key, value)| (key.to_owned(), value)));
    command.clear_env = true;
    command.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), home.display().to_string()),
        (
            "CODEX_HOME".into(),
            home.join("codex").display().to_string(),
        ),
        ("MOCK_API_KEY".into(), "mock-key".into()),
        // Anything that tries another host meets the mock's refusal.
        ("HTTPS_PROXY".into(), mock.url()),
        ("HTTP_PROXY".into(), mock.url()),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
    ];
    std::fs::create_dir_all(home.join("codex")).unwrap();
    command
}

/// Starts a thread in `repo` whose every command and file change asks
/// first, and a turn on it; returns the server.
async fn asking_turn(command: &AppServerCommand, repo: &Path) -> AppServer {
    let server = AppServer::start(command, repo).unwrap();
    server.initialize(Duration::from_secs(30)).await.unwrap();
    let started = server
        .rpc
        .request(
            "thread/start",
            json!({
                "cwd": repo, "model": "gpt-5.5",
                "approvalPolicy": "untrusted", "sandbox": "danger-full-access",
            }),
        )
        .await
        .unwrap();
    let thread = started["thread"]["id"].as_str().unwrap().to_owned();
    server
        .rpc
        .request(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "make the file"}]}),
        )
        .await
        .unwrap();
    server
}

/// Answers every approval request with `decision` (checking first that the
/// command has not run) until the turn completes; the turn's status and
/// the completed command items.
async fn answer_until_done(
    server: &mut AppServer,
    decision: &str,
    made: &Path,
) -> (String, Vec<Value>) {
    let mut commands = Vec::new();
    let within = Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout(within, server.inbox.recv()).await;
        match next.expect("the turn goes on").expect("the server runs") {
            Inbound::Request { id, method, params } => {
                assert_eq!(method, "item/commandExecution/requestApproval", "{params}");
                assert!(!made.exists(), "nothing ran before mala answered");
                server.rpc.respond(id, json!({"decision": decision}));
            }
            Inbound::Notification { method, params }
                if method == "item/completed" && params["item"]["type"] == "commandExecution" =>
            {
                commands.push(params["item"].clone());
            }
            Inbound::Notification { method, params } if method == "turn/completed" => {
                let status = params["turn"]["status"].as_str().unwrap_or_default();
                let error = &params["turn"]["error"];
                if error.is_null() {
                    return (status.to_owned(), commands);
                }
                return (format!("{status}: {error}"), commands);
            }
            _ => {}
        }
    }
}

async fn run_with(decision: &str) -> Option<(bool, String, Vec<Value>, MockResponses)> {
    let binary = mala_testkit::tool_or_skip(Tool::Codex, module_path!())?;
    let mock = MockResponses::start(ResponsesScript::steps(
        vec![ResponsesReply::shell("touch made-by-codex.txt")],
        "done",
    ));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let command = offline(&binary, &mock, &dir.path().join("home"));
    let made = repo.join("made-by-codex.txt");
    let mut server = asking_turn(&command, &repo).await;
    let (status, commands) = answer_until_done(&mut server, decision, &made).await;
    server.close(Duration::from_secs(20)).await;
    Some((made.exists(), status, commands, mock))
}

#[tokio::test]
async fn a_declined_command_never_runs_and_the_model_is_told() {
    let Some((made, status, commands, mock)) = run_with("decline").await else {
        return;
    };
    assert!(!made, "the declined command did not run");
    assert_eq!(status, "completed");
    assert!(
        commands.iter().all(|c| c["status"] == "declined"),
        "{commands:?}"
    );
    let last = mock.requests().last().cloned().unwrap();
    let outputs = mala_testkit::ResponsesConversation::tool_outputs_of(&last.body);
    assert!(
        outputs.iter().any(|o| o.contains("rejected")),
        "the model hears of the refusal: {outputs:?}"
    );
    assert!(
        mock.requests().iter().all(|r| r.path() == "/v1/responses"),
        "no other traffic: {:?}",
        mock.requests()
    );
}

#[tokio::test]
async fn an_accepted_command_runs_and_its_exit_code_is_reported() {
    let Some((made, status, commands, _mock)) = run_with("accept").await else {
        return;
    };
    assert!(made, "the accepted command ran");
    assert_eq!(status, "completed");
    let ran = commands.first().expect("a completed command item");
    assert_eq!(ran["exitCode"], 0, "{ran}");
    assert!(
        ran["command"]
            .as_str()
            .unwrap_or_default()
            .contains("touch made-by-codex.txt"),
        "{ran}"
    );
}
