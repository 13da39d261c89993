//! mala's own tools for agents, whatever the backend: the lock tools, backed
//! by the lock table, and `commit`. Claude Code reaches them as the
//! in-process MCP server `mala`, answered over its control channel
//! ([`handle`]); Codex as dynamic tools of its thread. Because they run
//! inside mala, every call is known to come from the session's agent.

use std::sync::Arc;
use std::time::Duration;

use mala_core::{AgentId, LockTable};
use serde_json::{Value, json};

use crate::{GitRepo, commit_as_agent};

/// What the server's tools act on, for one session.
pub(crate) struct Tools<'a> {
    pub(crate) agent: &'a AgentId,
    pub(crate) locks: Option<&'a Arc<dyn LockTable>>,
    pub(crate) git: Option<&'a Arc<GitRepo>>,
}

/// The server's name; the model sees its tools as `mcp__mala__<tool>`.
pub(crate) const SERVER: &str = "mala";
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The tools a session has, each with `name`, `description` and
/// `inputSchema`: the lock tools with a lock table, the commit tool with
/// git too (it commits only locked paths).
pub(crate) fn tool_list(locks: bool, git: bool) -> Value {
    let all = every_tool();
    let offered = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|tool| match tool["name"].as_str() {
            Some("commit") => locks && git,
            _ => locks,
        });
    Value::Array(offered.cloned().collect())
}

fn every_tool() -> Value {
    let paths = json!({"type": "array", "items": {"type": "string"}, "minItems": 1,
                       "description": "Repository paths (relative to the repository root, or absolute)"});
    json!([
        {
            "name": "lock_acquire",
            "description": "Lock files before you edit them. Returns as soon as all are yours, or, when some are held by other agents, as soon as any one of those frees (or after timeout_seconds; 0 means do not wait). Edits to files you have not locked are refused.",
            "inputSchema": {"type": "object", "properties": {
                "filepaths": paths,
                "timeout_seconds": {"type": "number", "minimum": 0, "description": "How long to wait for a blocked path (default 30)"}
            }, "required": ["filepaths"]}
        },
        {
            "name": "lock_release",
            "description": "Release locks you hold, by path or all at once, when you are done with the files.",
            "inputSchema": {"type": "object", "properties": {
                "filepaths": paths,
                "all": {"type": "boolean", "description": "Release every lock you hold"}
            }}
        },
        {
            "name": "commit",
            "description": "Commit exactly these files (which you must hold locks on) and nothing else, with a message that starts with `bd-<your issue id>:`. Answers with the new commit id, or why nothing was committed (a path not locked, nothing changed, a repository hook that failed and its output). Use this instead of git add / git commit.",
            "inputSchema": {"type": "object", "properties": {
                "paths": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "The files to commit (relative to the repository root, or absolute)"},
                "message": {"type": "string", "description": "The commit message, starting with `bd-<issue id>: `"}
            }, "required": ["paths", "message"]}
        },
        {
            "name": "lock_wait",
            "description": "Acquire nothing; say which of the paths other agents hold, so you can stop and be resumed when one frees.",
            "inputSchema": {"type": "object", "properties": {"filepaths": paths}, "required": ["filepaths"]}
        }
    ])
}

/// One JSON-RPC message for the server; the answer to put in `mcp_response`.
pub(crate) async fn handle(message: &Value, tools: &Tools<'_>) -> Value {
    let id = message.get("id").cloned();
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reply = |result: Value| match &id {
        Some(id) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        None => json!({"jsonrpc": "2.0", "result": {}}),
    };
    match method {
        "initialize" => reply(json!({
            "protocolVersion": message.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-11-25")),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": SERVER, "version": env!("CARGO_PKG_VERSION")},
        })),
        "tools/list" => {
            reply(json!({"tools": tool_list(tools.locks.is_some(), tools.git.is_some())}))
        }
        "tools/call" => {
            let name = message
                .pointer("/params/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = message
                .pointer("/params/arguments")
                .cloned()
                .unwrap_or(Value::Null);
            let (text, is_error) = call(name, &arguments, tools).await;
            reply(json!({"content": [{"type": "text", "text": text}], "isError": is_error}))
        }
        m if m.starts_with("notifications/") || id.is_none() => {
            json!({"jsonrpc": "2.0", "result": {}})
        }
        _ => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("method not found: {method}")}})
        }
    }
}

fn paths(arguments: &Value) -> Vec<String> {
    match arguments.get("filepaths") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => arguments
            .get("path")
            .and_then(Value::as_str)
            .map(|p| vec![p.to_owned()])
            .unwrap_or_default(),
    }
}

/// Runs tool `name` for the agent: its answer, and whether it is an error.
pub(crate) async fn call(name: &str, arguments: &Value, tools: &Tools<'_>) -> (String, bool) {
    let agent = tools.agent;
    let Some(locks) = tools.locks.map(AsRef::as_ref) else {
        return (
            "the lock table is not available in this session".to_owned(),
            true,
        );
    };
    if name == "commit" {
        let Some(git) = tools.git else {
            return (
                "commits through mala are not available in this session".to_owned(),
                true,
            );
        };
        let paths: Vec<String> = arguments
            .get("paths")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let message = arguments
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return match commit_as_agent(git, locks, agent, &paths, message).await {
            Ok(id) => (json!({"commit": id, "paths": paths}).to_string(), false),
            Err(refusal) => (refusal.to_string(), true),
        };
    }
    let to_text = |v: Result<Value, mala_core::LockError>| match v {
        Ok(value) => (value.to_string(), false),
        Err(error) => (error.to_string(), true),
    };
    match name {
        "lock_acquire" => {
            let wait = arguments
                .get("timeout_seconds")
                .and_then(Value::as_f64)
                .map_or(DEFAULT_WAIT, |s| {
                    Duration::from_secs_f64(s.max(0.0)).min(MAX_WAIT)
                });
            to_text(
                locks
                    .acquire(agent, &paths(arguments), wait)
                    .await
                    .map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
            )
        }
        "lock_release" => {
            let all = arguments.get("all").and_then(Value::as_bool) == Some(true);
            let requested = paths(arguments);
            if all && !requested.is_empty() {
                return ("give either filepaths or all, not both".to_owned(), true);
            }
            let released = if all {
                locks.release_all(agent).await
            } else {
                locks.release(agent, &requested).await
            };
            to_text(released.map(|r| json!({"released": r, "count": r.len()})))
        }
        "lock_wait" => to_text(
            locks
                .wait(agent, &paths(arguments))
                .await
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
        ),
        other => (format!("unknown tool {other}"), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileLockTable;

    fn t<'a>(agent: &'a AgentId, locks: Option<&'a Arc<dyn LockTable>>) -> Tools<'a> {
        Tools {
            agent,
            locks,
            git: None,
        }
    }

    fn call_message(id: u64, name: &str, arguments: &Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
    }

    fn text(answer: &Value) -> (String, bool) {
        (
            answer
                .pointer("/result/content/0/text")
                .and_then(Value::as_str)
                .unwrap()
                .to_owned(),
            answer
                .pointer("/result/isError")
                .and_then(Value::as_bool)
                .unwrap(),
        )
    }

    /// The whole conversation of one agent with the server, in order.
    #[allow(clippy::too_many_lines)]
    #[tokio::test]
    async fn the_server_speaks_mcp_and_serves_the_lock_tools() {
        let dir = tempfile::tempdir().unwrap();
        let locks: Arc<dyn LockTable> =
            Arc::new(FileLockTable::new(dir.path().join("locks"), dir.path()).unwrap());
        let (a, b) = (AgentId::new("a@r"), AgentId::new("b@r"));
        let init = handle(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}), &t(&a, Some(&locks))).await;
        assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
        assert!(init["result"]["capabilities"]["tools"].is_object());
        let note = handle(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            &t(&a, Some(&locks)),
        )
        .await;
        assert_eq!(note, json!({"jsonrpc": "2.0", "result": {}}));
        let list = handle(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            &t(&a, Some(&locks)),
        )
        .await;
        let names: Vec<&str> = list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        // No git here, so no commit tool; no lock table, no tools at all.
        assert_eq!(names, vec!["lock_acquire", "lock_release", "lock_wait"]);
        let names_of = |list: Value| {
            list.as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert!(names_of(tool_list(true, true)).contains(&"commit".to_owned()));
        assert!(names_of(tool_list(false, true)).is_empty());

        let (got, err) = text(
            &handle(
                &call_message(2, "lock_acquire", &json!({"filepaths": ["x.rs"]})),
                &t(&a, Some(&locks)),
            )
            .await,
        );
        assert!(!err && got.contains("\"all_acquired\":true"), "{got}");
        let (got, _) = text(
            &handle(
                &call_message(
                    3,
                    "lock_acquire",
                    &json!({"filepaths": ["x.rs"], "timeout_seconds": 0}),
                ),
                &t(&b, Some(&locks)),
            )
            .await,
        );
        assert!(
            got.contains("\"all_acquired\":false") && got.contains("a@r"),
            "{got}"
        );
        let (got, _) = text(
            &handle(
                &call_message(4, "lock_wait", &json!({"filepaths": ["x.rs"]})),
                &t(&b, Some(&locks)),
            )
            .await,
        );
        assert!(got.contains("\"parked\":true"), "{got}");
        let (got, err) = text(
            &handle(
                &call_message(
                    5,
                    "lock_release",
                    &json!({"filepaths": ["x.rs"], "all": true}),
                ),
                &t(&a, Some(&locks)),
            )
            .await,
        );
        assert!(err && got.contains("not both"), "{got}");
        let (got, err) = text(
            &handle(
                &call_message(6, "lock_release", &json!({"all": true})),
                &t(&a, Some(&locks)),
            )
            .await,
        );
        assert!(!err && got.contains("\"count\":1"), "{got}");
        let (got, err) = text(
            &handle(
                &call_message(7, "lock_acquire", &json!({"filepaths": []})),
                &t(&a, Some(&locks)),
            )
            .await,
        );
        assert!(err && got.contains("at least one"), "{got}");
        let (_, err) = text(
            &handle(
                &call_message(8, "lock_acquire", &json!({"filepaths": ["y"]})),
                &t(&a, None),
            )
            .await,
        );
        assert!(err);
        let unknown = handle(
            &json!({"jsonrpc": "2.0", "id": 9, "method": "resources/list"}),
            &t(&a, Some(&locks)),
        )
        .await;
        assert_eq!(unknown["error"]["code"], -32601);
    }
}
