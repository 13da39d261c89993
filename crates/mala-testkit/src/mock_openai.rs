//! A local stand-in for the OpenAI Responses API (`POST /v1/responses`,
//! streamed as server-sent events), for driving the real Codex CLI with no
//! network: a model provider whose `base_url` is [`MockResponses::url`]
//! plus `/v1` and whose `wire_api` is `responses`.
//!
//! What the "model" answers is a [`ResponsesScript`]: a function of the
//! request's `input` (the whole conversation so far), so one mock serves any
//! number of sessions, resumed ones too. Every request is recorded, and
//! proxy requests are refused, as in the Anthropic mock.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::http::{HttpServer, RecordedRequest, http_response};

/// What the mock model does next.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponsesReply {
    /// Calls a function tool (`exec_command`, `write_stdin`, a dynamic tool).
    Call { name: String, arguments: Value },
    /// Calls the freeform `apply_patch` tool with this patch.
    Patch(String),
    /// Says this and ends its turn.
    Message(String),
    /// Answers with this HTTP status and an error body.
    HttpError(u16),
    /// Says nothing for this long, then this: a model that is slow to answer.
    Stall(std::time::Duration, String),
}

impl ResponsesReply {
    /// A shell command through `exec_command`.
    pub fn shell(command: &str) -> Self {
        Self::Call {
            name: "exec_command".to_owned(),
            arguments: json!({"cmd": command}),
        }
    }
}

/// The request the model answers, with readers for what scripts ask.
#[derive(Debug, Clone, Copy)]
pub struct ResponsesConversation<'a> {
    body: &'a Value,
}

impl<'a> ResponsesConversation<'a> {
    fn items(self) -> impl Iterator<Item = &'a Value> {
        self.body
            .get("input")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// The texts of the user's messages, oldest first.
    pub fn user_texts(self) -> Vec<String> {
        self.items()
            .filter(|item| item.get("role").and_then(Value::as_str) == Some("user"))
            .flat_map(|item| {
                item.get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Tool calls made since the last user message that contains `marker`
    /// (a follow-up's words); `None` when no message does.
    pub fn calls_since(self, marker: &str) -> Option<usize> {
        let items: Vec<&Value> = self.items().collect();
        let from = items.iter().rposition(|item| {
            item.get("role").and_then(Value::as_str) == Some("user")
                && item.to_string().contains(marker)
        })?;
        Some(
            items[from..]
                .iter()
                .filter(|item| {
                    matches!(
                        item.get("type").and_then(Value::as_str),
                        Some("function_call" | "custom_tool_call")
                    )
                })
                .count(),
        )
    }

    /// Whether this is mala's preflight turn (its prompt names the canary).
    pub fn is_preflight(self) -> bool {
        let prompt = mala_domain::preflight_prompt();
        self.user_texts().iter().any(|text| text.contains(&prompt))
    }

    /// Tool calls the model has made so far in the conversation.
    pub fn calls_so_far(self) -> usize {
        self.items()
            .filter(|item| {
                matches!(
                    item.get("type").and_then(Value::as_str),
                    Some("function_call" | "custom_tool_call")
                )
            })
            .count()
    }

    /// The texts of the user's messages in a request's `body`, oldest first.
    pub fn user_texts_of(body: &Value) -> Vec<String> {
        ResponsesConversation { body }.user_texts()
    }

    /// The names of the tools a request's `body` offers.
    pub fn tool_names_of(body: &Value) -> Vec<String> {
        ResponsesConversation { body }.tool_names()
    }

    /// The outputs the tools gave back in a request's `body`, oldest first.
    pub fn tool_outputs_of(body: &Value) -> Vec<String> {
        ResponsesConversation { body }.tool_outputs()
    }

    /// The outputs the tools gave back, oldest first.
    pub fn tool_outputs(self) -> Vec<String> {
        self.items()
            .filter(|item| {
                matches!(
                    item.get("type").and_then(Value::as_str),
                    Some("function_call_output" | "custom_tool_call_output")
                )
            })
            .map(|item| match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect()
    }

    /// The names of the tools the request offers.
    pub fn tool_names(self) -> Vec<String> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|tool| tool.get("name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }
}

type ScriptFn = dyn Fn(&ResponsesConversation<'_>) -> ResponsesReply + Send + Sync;

/// The mock model: what it answers each request.
#[derive(Clone)]
pub struct ResponsesScript(Arc<ScriptFn>);

impl std::fmt::Debug for ResponsesScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponsesScript")
    }
}

impl ResponsesScript {
    pub fn from_fn(
        f: impl Fn(&ResponsesConversation<'_>) -> ResponsesReply + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    /// What the script answers `conversation` (for scripts made of scripts).
    pub fn reply(&self, conversation: &ResponsesConversation<'_>) -> ResponsesReply {
        (self.0)(conversation)
    }

    /// The replies in order, one per tool call made so far, then `done`.
    pub fn steps(steps: Vec<ResponsesReply>, done: &str) -> Self {
        let done = done.to_owned();
        Self::from_fn(move |conversation| {
            steps
                .get(conversation.calls_so_far())
                .cloned()
                .unwrap_or_else(|| ResponsesReply::Message(done.clone()))
        })
    }
}

/// The running mock. Stops when dropped.
#[derive(Debug)]
pub struct MockResponses {
    server: HttpServer,
}

impl MockResponses {
    pub fn start(script: ResponsesScript) -> Self {
        let ids = Arc::new(AtomicU64::new(0));
        let route = move |request: &RecordedRequest| route(request, &script, &ids);
        Self {
            server: HttpServer::start("mock-responses", Arc::new(route)),
        }
    }

    /// `http://127.0.0.1:<port>`; the provider's `base_url` is this plus `/v1`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }
}

fn route(request: &RecordedRequest, script: &ResponsesScript, ids: &AtomicU64) -> String {
    if request.method != "POST" || request.path() != "/v1/responses" {
        let message = format!("mock: no route {} {}", request.method, request.target);
        let body = json!({"error": {"message": message, "type": "not_found", "code": null}});
        return http_response(404, "application/json", &body.to_string(), false);
    }
    let conversation = ResponsesConversation {
        body: &request.body,
    };
    let n = ids.fetch_add(1, Ordering::Relaxed) + 1;
    let mut reply = if conversation.is_preflight() {
        preflight_reply(conversation, script)
    } else {
        (script.0)(&conversation)
    };
    if let ResponsesReply::Stall(silence, text) = reply {
        // Holds one of the mock's threads: fine for the one request a test stalls.
        std::thread::sleep(silence);
        reply = ResponsesReply::Message(text);
    }
    let item = match reply {
        ResponsesReply::HttpError(status) => {
            let body = json!({"error": {"message": format!("mock: status {status}"), "type": "mock_error", "code": status}});
            return http_response(status, "application/json", &body.to_string(), false);
        }
        ResponsesReply::Call { name, arguments } => json!({
            "type": "function_call", "id": format!("fc_mock_{n}"), "call_id": format!("call_mock_{n}"),
            "name": name, "arguments": arguments.to_string(), "status": "completed",
        }),
        ResponsesReply::Patch(patch) => json!({
            "type": "custom_tool_call", "id": format!("ctc_mock_{n}"), "call_id": format!("call_mock_{n}"),
            "name": "apply_patch", "input": patch, "status": "completed",
        }),
        ResponsesReply::Message(text) | ResponsesReply::Stall(_, text) => json!({
            "type": "message", "id": format!("msg_mock_{n}"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }),
    };
    let input_tokens = u64::try_from(request.body.to_string().len() / 4).unwrap_or(u64::MAX);
    http_response(
        200,
        "text/event-stream",
        &sse(n, &item, input_tokens),
        false,
    )
}

/// mala's preflight turn, as a model would do it: run the canary once, then
/// say ready. The test's script is asked first, so a script that fails
/// calls fails the preflight's too; any other answer is put aside, so no
/// script needs to know the preflight.
fn preflight_reply(
    conversation: ResponsesConversation<'_>,
    script: &ResponsesScript,
) -> ResponsesReply {
    if let error @ ResponsesReply::HttpError(_) = (script.0)(&conversation) {
        return error;
    }
    if conversation.calls_so_far() == 0 {
        return ResponsesReply::shell(mala_domain::PREFLIGHT_CANARY);
    }
    ResponsesReply::Message("ready".to_owned())
}

/// The event stream of one response holding `item`.
fn sse(n: u64, item: &Value, input_tokens: u64) -> String {
    let id = format!("resp_mock_{n}");
    let output_tokens = 20;
    let events = [
        (
            "response.created",
            json!({"response": {"id": id, "status": "in_progress"}}),
        ),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.completed",
            json!({"response": {
                "id": id, "status": "completed", "output": [item],
                "usage": {
                    "input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                },
            }}),
        ),
    ];
    let mut stream = String::new();
    for (kind, data) in &events {
        let mut data = data.clone();
        data["type"] = json!(kind);
        let _ = write!(stream, "event: {kind}\ndata: {data}\n\n");
    }
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_calls_made_so_far() {
        let script = ResponsesScript::steps(vec![ResponsesReply::shell("ls")], "done");
        let first = json!({"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}]});
        let conversation = ResponsesConversation { body: &first };
        assert_eq!(conversation.user_texts(), vec!["go"]);
        assert_eq!((script.0)(&conversation), ResponsesReply::shell("ls"));
        let second = json!({"input": [
            {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rejected by user"},
        ]});
        let conversation = ResponsesConversation { body: &second };
        assert_eq!(conversation.tool_outputs(), vec!["rejected by user"]);
        assert_eq!(
            (script.0)(&conversation),
            ResponsesReply::Message("done".into())
        );
    }

    #[test]
    fn a_response_streams_its_item_and_ends_completed_with_usage() {
        let stream = sse(1, &json!({"type": "message"}), 100);
        let kinds: Vec<&str> = stream
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert!(stream.contains(r#""total_tokens":120"#), "{stream}");
    }
}
