//! A local stand-in for the Anthropic Messages API, for driving the real
//! Claude Code binary with no network.
//!
//! Listens on 127.0.0.1 with an OS-chosen port. What the "model" answers is a
//! [`Script`]: a function of the conversation so far. Because the state lives
//! in the conversation itself, one mock serves any number of parallel agents.
//! Every request is recorded. It also answers proxy requests (CONNECT and
//! absolute URIs) with 403 and records them, so pointing `HTTPS_PROXY` at it
//! catches any attempt to reach another host.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::http::{HttpServer, RecordedRequest, http_response};

/// One content block the mock model produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    ToolUse { name: String, input: Value },
}

/// The mock's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A normal assistant message. `stop_reason` is "tool_use" when a block calls a tool.
    Message(Vec<Block>),
    /// An HTTP error with an Anthropic-style error body.
    HttpError(u16),
}

/// One step of a per-test script: call a tool, or end with text.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Tool { name: String, input: Value },
    Text(String),
}

impl Step {
    pub fn tool(name: &str, input: Value) -> Self {
        Self::Tool {
            name: name.to_owned(),
            input,
        }
    }

    pub fn bash(command: &str) -> Self {
        Self::tool(
            "Bash",
            json!({"command": command, "description": "scripted command"}),
        )
    }
}

type ScriptFn = dyn Fn(&Conversation<'_>) -> Reply + Send + Sync;

/// What the model does, as a function of the conversation.
#[derive(Clone)]
pub struct Script(Arc<ScriptFn>);

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script(..)")
    }
}

impl Script {
    pub fn from_fn(f: impl Fn(&Conversation<'_>) -> Reply + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// What this script answers to `conversation`, for a script that wraps another.
    pub fn reply(&self, conversation: &Conversation<'_>) -> Reply {
        (self.0)(conversation)
    }

    /// Tool calls in order, one per model call, then the final text (the
    /// last `Step::Text`, or "done"). The step to take is the number of tool
    /// calls already in the conversation.
    pub fn steps(steps: Vec<Step>) -> Self {
        Self::from_fn(move |conversation| {
            let tools: Vec<&Step> = steps
                .iter()
                .filter(|s| matches!(s, Step::Tool { .. }))
                .collect();
            let done = conversation.tool_uses_so_far();
            if let Some(Step::Tool { name, input }) = tools.get(done) {
                return Reply::Message(vec![
                    Block::Text(format!("step {}: calling {name}", done + 1)),
                    Block::ToolUse {
                        name: name.clone(),
                        input: input.clone(),
                    },
                ]);
            }
            let text = steps
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::Text(t) => Some(t.clone()),
                    Step::Tool { .. } => None,
                })
                .unwrap_or_else(|| "done".to_owned());
            Reply::Message(vec![Block::Text(text)])
        })
    }

    /// The prompt convention of the reference mock: each `MOCK_TOOL <Name>
    /// <json>` line in the user's text is one tool call, in order; then
    /// `MOCK_DONE after N tool call(s): <results>`. `MOCK_HTTP_ERROR <status>`
    /// fails every call of that conversation.
    pub fn directives() -> Self {
        Self::from_fn(|conversation| {
            if let Some(status) = conversation.directive_http_error() {
                return Reply::HttpError(status);
            }
            let directives = conversation.directives();
            let done = conversation.tool_uses_so_far();
            if let Some((name, input)) = directives.get(done) {
                return Reply::Message(vec![
                    Block::Text(format!("MOCK step {}: calling {name}", done + 1)),
                    Block::ToolUse {
                        name: name.clone(),
                        input: input.clone(),
                    },
                ]);
            }
            let summary: Vec<String> = conversation
                .tool_results()
                .iter()
                .map(|(is_error, text)| {
                    let text: String = text.replace('\n', " ").chars().take(120).collect();
                    if *is_error {
                        format!("ERROR: {text}")
                    } else {
                        text
                    }
                })
                .collect();
            Reply::Message(vec![Block::Text(if directives.is_empty() {
                format!(
                    "MOCK_DONE no tools requested; you said: {}",
                    conversation.last_user_text()
                )
            } else {
                format!(
                    "MOCK_DONE after {done} tool call(s): {}",
                    summary.join(" | ")
                )
            })])
        })
    }
}

/// The request body of one `/v1/messages` call, with helpers for scripts.
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    pub body: &'a Value,
}

impl<'a> Conversation<'a> {
    pub fn messages(self) -> &'a [Value] {
        self.body["messages"].as_array().map_or(&[], Vec::as_slice)
    }

    /// Whether the request offers tools (side requests such as titles do not).
    pub fn offers_tools(self) -> bool {
        self.body["tools"].as_array().is_some_and(|t| !t.is_empty())
    }

    /// Whether this is mala's preflight turn (its prompt names the canary).
    pub fn is_preflight(self) -> bool {
        self.user_texts()
            .iter()
            .any(|text| text.contains(&mala_domain::preflight_prompt()))
    }

    /// Number of `tool_use` blocks the assistant has already produced.
    pub fn tool_uses_so_far(self) -> usize {
        self.blocks("assistant", "tool_use").count()
    }

    /// Tool uses since the last user text containing `marker`, or `None`
    /// when no user text contains it (a resumed session restarts its plan
    /// at the prompt that resumed it).
    pub fn tool_uses_since(self, marker: &str) -> Option<usize> {
        let messages = self.messages();
        let has_marker = |m: &Value| match &m["content"] {
            Value::String(s) => s.contains(marker),
            Value::Array(blocks) => blocks.iter().any(|b| {
                b["type"] == "text" && b["text"].as_str().is_some_and(|t| t.contains(marker))
            }),
            _ => false,
        };
        let start = messages
            .iter()
            .rposition(|m| m["role"] == "user" && has_marker(m))?;
        Some(
            messages[start..]
                .iter()
                .filter(|m| m["role"] == "assistant")
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|b| b["type"] == "tool_use")
                .count(),
        )
    }

    /// Content blocks of type `kind` in messages of `role`, in order.
    fn blocks(self, role: &'a str, kind: &'a str) -> impl Iterator<Item = &'a Value> {
        self.messages()
            .iter()
            .filter(move |m| m["role"] == role)
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(move |b| b["type"] == kind)
    }

    /// `(is_error, text)` of every tool result so far.
    pub fn tool_results(self) -> Vec<(bool, String)> {
        self.blocks("user", "tool_result")
            .map(|b| {
                (
                    b["is_error"].as_bool().unwrap_or(false),
                    text_of(&b["content"]),
                )
            })
            .collect()
    }

    /// The text blocks of user messages (not tool results), in order.
    pub fn user_texts(self) -> Vec<String> {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "user")
            .flat_map(|m| match &m["content"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(blocks) => blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    pub fn last_user_text(self) -> String {
        let text = self.user_texts().pop().unwrap_or_default();
        text.trim().chars().take(80).collect()
    }

    /// `MOCK_TOOL` directives, deduplicated, in order.
    pub fn directives(self) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        for text in self.user_texts() {
            for line in text.lines().map(str::trim) {
                let Some(rest) = line.strip_prefix("MOCK_TOOL ") else {
                    continue;
                };
                let (name, input) = rest.split_once(' ').unwrap_or((rest, "{}"));
                let input =
                    serde_json::from_str(input).unwrap_or_else(|_| json!({"_unparsed": input}));
                let entry = (name.to_owned(), input);
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
        out
    }

    fn directive_http_error(self) -> Option<u16> {
        self.user_texts()
            .iter()
            .flat_map(|t| t.lines())
            .find_map(|line| {
                let status = line.trim().strip_prefix("MOCK_HTTP_ERROR ")?;
                Some(status.trim().parse().unwrap_or(500))
            })
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl RecordedRequest {
    /// The input tokens the mock reported for this request (its rough count).
    pub fn input_tokens(&self) -> u64 {
        rough_tokens(&self.body)
    }

    /// A call of an agent at work: a model call offering tools that is not
    /// mala's preflight turn.
    pub fn is_agent_call(&self) -> bool {
        let conversation = Conversation { body: &self.body };
        self.path() == "/v1/messages" && conversation.offers_tools() && !conversation.is_preflight()
    }
}

struct Shared {
    script: Script,
    ids: AtomicU64,
}

impl Shared {
    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_mock_{:04}",
            self.ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

/// The running mock. Stops when dropped.
#[derive(Debug)]
pub struct MockAnthropic {
    server: HttpServer,
}

impl MockAnthropic {
    /// Starts the mock on its own thread, so it serves sync and async tests alike.
    pub fn start(script: Script) -> Self {
        let shared = Arc::new(Shared {
            script,
            ids: AtomicU64::new(0),
        });
        let route = move |request: &RecordedRequest| route(request, &shared);
        Self {
            server: HttpServer::start("mock-anthropic", Arc::new(route)),
        }
    }

    /// `http://127.0.0.1:<port>`, for ANTHROPIC_BASE_URL and the proxy trap.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }
}

/// The Messages API's routes.
fn route(request: &RecordedRequest, shared: &Shared) -> String {
    let (method, path) = (request.method.as_str(), request.path());
    if method == "POST" && path == "/v1/messages" {
        messages_response(&request.body, shared)
    } else if method == "POST" && path == "/v1/messages/count_tokens" {
        let tokens = rough_tokens(&request.body);
        http_response(
            200,
            "application/json",
            &json!({"input_tokens": tokens}).to_string(),
            false,
        )
    } else if (method == "HEAD" || method == "GET") && path == "/" {
        http_response(200, "text/plain", "", false)
    } else {
        let target = &request.target;
        let body = json!({"type": "error", "error": {"type": "not_found_error", "message": format!("mock: no route {method} {target}")}});
        http_response(404, "application/json", &body.to_string(), false)
    }
}

fn rough_tokens(body: &Value) -> u64 {
    (body.to_string().len() as u64 / 4).max(1)
}

/// The smallest value that satisfies a simple JSON schema (for structured side requests).
fn sample_for_schema(schema: &Value) -> Value {
    match schema["type"].as_str() {
        Some("object") => {
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            Value::Object(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), sample_for_schema(v)))
                    .collect(),
            )
        }
        Some("array") => json!([]),
        Some("integer" | "number") => json!(0),
        Some("boolean") => json!(false),
        _ => schema["enum"]
            .get(0)
            .cloned()
            .unwrap_or_else(|| json!("Mock title")),
    }
}

/// What the "model" answers: the script for a conversation with tools;
/// for a side request (title, summary), a short text, or JSON when a
/// schema is asked for.
fn reply_to(body: &Value, shared: &Shared) -> Reply {
    let conversation = Conversation { body };
    if conversation.is_preflight() {
        return preflight_reply(conversation, &shared.script);
    }
    if conversation.offers_tools() {
        return (shared.script.0)(&conversation);
    }
    let format = &body["output_config"]["format"];
    let text = if format["type"] == "json_schema" {
        sample_for_schema(&format["schema"]).to_string()
    } else {
        "Mock side reply".to_owned()
    };
    Reply::Message(vec![Block::Text(text)])
}

/// mala's preflight turn, as a model would do it: run the canary once,
/// then say ready. The test's script is asked first, so a script that
/// fails calls (401, 429 for a while) fails the preflight's calls too; any
/// message it answers is put aside, so no script needs to know the
/// preflight.
fn preflight_reply(conversation: Conversation<'_>, script: &Script) -> Reply {
    if let error @ Reply::HttpError(_) = script.reply(&conversation) {
        return error;
    }
    if conversation.tool_uses_so_far() == 0 {
        return Reply::Message(vec![Block::ToolUse {
            name: "Bash".to_owned(),
            input: json!({"command": mala_domain::PREFLIGHT_CANARY, "description": "mala preflight"}),
        }]);
    }
    Reply::Message(vec![Block::Text("ready".to_owned())])
}

/// The API's error envelope for a scripted HTTP status.
fn error_response(status: u16) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let error = json!({"type": "error", "error": {"type": kind, "message": format!("mock: scripted HTTP {status}")}});
    http_response(status, "application/json", &error.to_string(), false)
}

/// One assistant message, as the API would answer it.
struct Answer<'a> {
    id: String,
    model: &'a str,
    content: Vec<Value>,
    stop_reason: &'static str,
    input_tokens: u64,
    output_tokens: u64,
}

fn messages_response(body: &Value, shared: &Shared) -> String {
    let blocks = match reply_to(body, shared) {
        Reply::HttpError(status) => return error_response(status),
        Reply::Message(blocks) => blocks,
    };
    let stop_reason = if blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })) {
        "tool_use"
    } else {
        "end_turn"
    };
    let content: Vec<Value> = blocks
        .iter()
        .map(|b| match b {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::ToolUse { name, input } => json!({"type": "tool_use", "id": shared.next_id("toolu"), "name": name, "input": input}),
        })
        .collect();
    let output_tokens = content
        .iter()
        .map(|c| c.to_string().len() as u64 / 4)
        .sum::<u64>()
        + 1;
    let answer = Answer {
        id: shared.next_id("msg"),
        model: body["model"].as_str().unwrap_or("mock-model"),
        content,
        stop_reason,
        input_tokens: rough_tokens(body),
        output_tokens,
    };
    if body["stream"] != true {
        let message = json!({
            "id": answer.id, "type": "message", "role": "assistant", "model": answer.model,
            "content": answer.content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": answer.input_tokens, "output_tokens": output_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        return http_response(200, "application/json", &message.to_string(), false);
    }
    http_response(
        200,
        "text/event-stream; charset=utf-8",
        &sse_events(&answer),
        false,
    )
}

/// The answer as the API streams it: message start, each block's start,
/// delta and stop, then the message's delta and stop.
fn sse_events(answer: &Answer<'_>) -> String {
    let mut sse = String::new();
    let mut event = |name: &str, payload: Value| {
        let _ = write!(sse, "event: {name}\ndata: {payload}\n\n");
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": answer.id, "type": "message", "role": "assistant", "model": answer.model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    );
    event("ping", json!({"type": "ping"}));
    for (index, block) in answer.content.iter().enumerate() {
        let (start, delta) = if block["type"] == "text" {
            (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": block["text"]}),
            )
        } else {
            (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
            )
        };
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        );
    }
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": answer.stop_reason, "stop_sequence": null}, "usage": {"output_tokens": answer.output_tokens}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    sse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_call_tools_in_order_then_answer() {
        let script = Script::steps(vec![Step::bash("true"), Step::Text("all done".into())]);
        let first =
            json!({"messages": [{"role": "user", "content": "go"}], "tools": [{"name": "Bash"}]});
        let reply = (script.0)(&Conversation { body: &first });
        assert!(
            matches!(&reply, Reply::Message(b) if matches!(&b[1], Block::ToolUse { name, .. } if name == "Bash"))
        );
        let second = json!({"messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
            "tools": [{"name": "Bash"}]});
        assert_eq!(
            (script.0)(&Conversation { body: &second }),
            Reply::Message(vec![Block::Text("all done".into())])
        );
    }

    #[test]
    fn directives_come_from_user_text_only() {
        let body = json!({"messages": [
            {"role": "user", "content": "x\nMOCK_TOOL Bash {\"command\": \"ls\"}\nMOCK_TOOL Bash {\"command\": \"ls\"}"},
            {"role": "user", "content": [{"type": "tool_result", "content": "MOCK_TOOL Write {}"}]}]});
        let directives = Conversation { body: &body }.directives();
        assert_eq!(
            directives,
            vec![("Bash".to_owned(), json!({"command": "ls"}))]
        );
    }

    #[test]
    fn the_server_streams_sse_and_records_requests() {
        use std::io::{Read, Write};

        let mock = MockAnthropic::start(Script::steps(vec![Step::Text("hello".into())]));
        let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "Bash"}]}).to_string();
        let mut stream =
            std::net::TcpStream::connect(mock.url().trim_start_matches("http://")).unwrap();
        write!(stream, "POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut response = String::new();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while !response.contains("message_stop") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early: {response}");
            response.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(response.starts_with("HTTP/1.1 200"));
        assert!(response.contains("\"text\":\"hello\""));
        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path(), "/v1/messages");
        assert_eq!(requests[0].body["model"], "m");
    }
}
