//! Claude Code's stream-json protocol: the lines it prints, the lines we
//! write, and what a `result` line means.

use std::time::Duration;

use mala_core::{AgentError, AgentErrorKind, SessionId, TokenUsage, TurnOutcome, TurnStatus};
use serde_json::{Value, json};

/// One line from the CLI's stdout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// The CLI asks us something (hook, permission, MCP message).
    ControlRequest { request_id: String, request: Value },
    /// The CLI answers one of our requests.
    ControlResponse {
        request_id: String,
        outcome: Result<Value, String>,
    },
    /// The CLI withdraws one of its requests: stop handling it, answer nothing.
    ControlCancel { request_id: String },
    /// The end of a turn.
    Result(Value),
    /// Anything else (`system`, `assistant`, `user`, `stream_event`, and types
    /// this build does not know): kept for the record, never fatal.
    Message(Value),
}

/// Reads one stdout line. `Ok(None)`: not JSON at all (some builds print
/// debug lines), skipped. A line that starts like JSON but does not parse is
/// an error.
pub(crate) fn parse_line(line: &[u8]) -> Result<Option<Inbound>, String> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() || trimmed[0] != b'{' {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(trimmed).map_err(|e| {
        let head: String = String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)]).into_owned();
        format!("unreadable line from claude ({e}): {head}")
    })?;
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Some(match value.get("type").and_then(Value::as_str) {
        Some("control_request") => Inbound::ControlRequest {
            request_id: text(&value, "request_id"),
            request: value.get("request").cloned().unwrap_or(Value::Null),
        },
        Some("control_response") => {
            let response = value.get("response").cloned().unwrap_or(Value::Null);
            let request_id = text(&response, "request_id");
            let outcome = if response.get("subtype").and_then(Value::as_str) == Some("error") {
                Err(text(&response, "error"))
            } else {
                Ok(response.get("response").cloned().unwrap_or(Value::Null))
            };
            Inbound::ControlResponse {
                request_id,
                outcome,
            }
        }
        Some("control_cancel_request") => Inbound::ControlCancel {
            request_id: text(&value, "request_id"),
        },
        Some("result") => Inbound::Result(value),
        _ => Inbound::Message(value),
    }))
}

/// A user turn.
pub(crate) fn user_message(prompt: &str) -> Value {
    json!({
        "type": "user",
        "session_id": "",
        "parent_tool_use_id": null,
        "message": {"role": "user", "content": prompt},
    })
}

pub(crate) fn control_request(request_id: &str, request: &Value) -> Value {
    json!({"type": "control_request", "request_id": request_id, "request": request})
}

pub(crate) fn control_success(request_id: &str, response: &Value) -> Value {
    json!({"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": response}})
}

pub(crate) fn control_error(request_id: &str, error: &str) -> Value {
    json!({"type": "control_response", "response": {"subtype": "error", "request_id": request_id, "error": error}})
}

fn number(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Why a turn failed, in the result's own words: `errors[]`, else `result`, else the subtype.
fn failure_text(result: &Value) -> String {
    if let Some(errors) = result.get("errors").and_then(Value::as_array)
        && !errors.is_empty()
    {
        return errors
            .iter()
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; ");
    }
    result
        .get("result")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| result.get("subtype").and_then(Value::as_str))
        .unwrap_or("the turn failed")
        .to_owned()
}

/// What a `result` line says about the turn. An API error (the model could
/// not be reached) is an error for the caller to retry or give up on; every
/// other result is an outcome, judged by `is_error`, never by `subtype`.
/// A `usage` object as the API and the CLI write it.
fn usage_of(usage: &Value) -> TokenUsage {
    TokenUsage {
        input_tokens: number(usage, "input_tokens"),
        output_tokens: number(usage, "output_tokens"),
        cache_read_input_tokens: number(usage, "cache_read_input_tokens"),
        cache_creation_input_tokens: number(usage, "cache_creation_input_tokens"),
    }
}

/// The model response an `assistant` line belongs to, and its usage as
/// far as that line knows (the CLI writes one line per content block, each
/// with the response's usage so far).
pub(crate) fn response_usage(message: &Value) -> Option<(&str, TokenUsage)> {
    let response = message.get("message")?;
    let id = response.get("id")?.as_str()?;
    Some((id, usage_of(response.get("usage")?)))
}

/// The running turn's usage, response by response.
#[derive(Debug, Default)]
pub(crate) struct TurnTally {
    responses: Vec<(String, TokenUsage)>,
}

impl TurnTally {
    /// Adds what a line says of response `id`; the turn's usage so far.
    pub(crate) fn add(&mut self, id: &str, usage: TokenUsage) -> TokenUsage {
        match self.responses.iter_mut().find(|(seen, _)| seen == id) {
            Some((_, known)) => *known = known.max_each(usage),
            None => self.responses.push((id.to_owned(), usage)),
        }
        self.responses
            .iter()
            .fold(TokenUsage::default(), |sum, (_, usage)| sum.plus(*usage))
    }
}

pub(crate) fn turn_outcome(result: &Value) -> Result<TurnOutcome, AgentError> {
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let subtype = result
        .get("subtype")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if is_error && let Some(status) = result.get("api_error_status").and_then(Value::as_u64) {
        return Err(api_error(status, &failure_text(result)));
    }
    if is_error && let Some(error) = unreachable_api(result) {
        return Err(error);
    }
    let status = match (is_error, subtype) {
        (false, _) => TurnStatus::Completed,
        (true, "error_during_execution") => TurnStatus::Interrupted,
        (true, "error_max_turns") => TurnStatus::MaxTurns,
        (true, "error_max_budget_usd") => TurnStatus::BudgetReached,
        (true, _) => TurnStatus::Failed {
            reason: failure_text(result),
        },
    };
    let usage = result.get("usage").unwrap_or(&Value::Null);
    Ok(TurnOutcome {
        status,
        session_id: result
            .get("session_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(SessionId::new),
        final_text: result
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        usage: usage_of(usage),
        total_cost_usd: result
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        num_turns: u32::try_from(number(result, "num_turns")).unwrap_or(u32::MAX),
        permission_denials: result
            .get("permission_denials")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(|x| {
                        x.get("tool_name")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// An HTTP status from the model API, classified. A 429 is a limit to
/// wait out (its reset time, when the stream gave one, is added by the
/// session); a 5xx or 529 is an overload to retry.
pub(crate) fn api_error(status: u64, text: &str) -> AgentError {
    let kind = match status {
        401 | 403 => AgentErrorKind::Authentication,
        429 => AgentErrorKind::RateLimited { resets_at: None },
        // Whatever the request: a model that does not exist, no credit left.
        404 => AgentErrorKind::Refused,
        400 if refuses_the_account(text) => AgentErrorKind::Refused,
        408 | 500..=599 => AgentErrorKind::Overloaded {
            retry_after: Some(Duration::from_secs(10)),
        },
        _ => AgentErrorKind::Protocol,
    };
    AgentError::new(kind, format!("model API error {status}: {text}"))
}

/// A 400 about the account, not the request (which a 400 usually is: a
/// prompt too long is the issue's).
fn refuses_the_account(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("credit balance") || text.contains("billing")
}

/// A failed result with no HTTP status whose text is the CLI's "API Error":
/// the model API was never reached (refused, reset, DNS, TLS).
fn unreachable_api(result: &Value) -> Option<AgentError> {
    let text = result.get("result").and_then(Value::as_str)?;
    text.starts_with("API Error")
        .then(|| AgentError::new(AgentErrorKind::Network, text.to_owned()))
}

/// The reset time a `rate_limit_event` gives when it says calls are
/// refused (`status: rejected`); `None` for any other line.
pub(crate) fn rejected_until(message: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    if message.get("type").and_then(Value::as_str) != Some("rate_limit_event") {
        return None;
    }
    let info = message.get("rate_limit_info")?;
    if info.get("status").and_then(Value::as_str) != Some("rejected") {
        return None;
    }
    let resets = info.get("resetsAt").and_then(Value::as_i64)?;
    chrono::DateTime::from_timestamp(resets, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of every recorded transcript, as the CLI printed it.
    fn fixture_lines() -> Vec<(String, Value)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let value: Value = serde_json::from_str(line).unwrap();
                if name.contains(".transcript.") {
                    // {"t", "dir", "line"}: only what the CLI said.
                    if value["dir"] == "in" {
                        lines.push((name.clone(), value["line"].clone()));
                    }
                } else {
                    lines.push((name.clone(), value));
                }
            }
        }
        lines
    }

    #[test]
    fn every_fixture_line_parses_and_every_result_is_judged() {
        let lines = fixture_lines();
        assert!(lines.len() > 50);
        let mut results = 0;
        for (name, value) in &lines {
            let parsed = parse_line(value.to_string().as_bytes()).unwrap().unwrap();
            if let Inbound::Result(result) = parsed {
                results += 1;
                let judged = turn_outcome(&result);
                if name.contains("529") {
                    let err = judged.unwrap_err();
                    assert!(err.is_retryable(), "{name}: {err:?}");
                } else if name.contains("interrupt") {
                    assert_eq!(judged.unwrap().status, TurnStatus::Interrupted);
                } else {
                    let outcome = judged.unwrap();
                    assert_eq!(outcome.status, TurnStatus::Completed, "{name}");
                    assert!(
                        outcome.session_id.is_some() && outcome.num_turns > 0,
                        "{name}"
                    );
                }
            }
        }
        assert!(results >= 9, "{results}");
    }

    fn error_fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/claude-errors")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Results the real CLI (2.1.197) printed for each failure of the model
    /// API, recorded against a local server answering that status.
    #[test]
    fn recorded_api_failures_are_classified_by_what_waiting_can_do() {
        let kind = |name| turn_outcome(&error_fixture(name)).unwrap_err().kind;
        assert_eq!(kind("http-401.result.json"), AgentErrorKind::Authentication);
        assert_eq!(kind("http-403.result.json"), AgentErrorKind::Authentication);
        assert_eq!(
            kind("http-429.result.json"),
            AgentErrorKind::RateLimited { resets_at: None }
        );
        assert!(matches!(
            kind("http-529.result.json"),
            AgentErrorKind::Overloaded { .. }
        ));
        assert_eq!(
            kind("connection-refused.result.json"),
            AgentErrorKind::Network
        );
        let refused = turn_outcome(&error_fixture("connection-refused.result.json")).unwrap_err();
        assert!(refused.message.contains("ConnectionRefused"), "{refused}");
        let no_model = json!({"type":"result","subtype":"success","is_error":true,"api_error_status":404,"result":"API Error: 404 model: claude-nope"});
        assert_eq!(
            turn_outcome(&no_model).unwrap_err().kind,
            AgentErrorKind::Refused
        );
        let broke = json!({"type":"result","subtype":"success","is_error":true,"api_error_status":400,"result":"API Error: 400 Your credit balance is too low to access the Anthropic API."});
        assert_eq!(
            turn_outcome(&broke).unwrap_err().kind,
            AgentErrorKind::Refused
        );
        let too_long = json!({"type":"result","subtype":"success","is_error":true,"api_error_status":400,"result":"API Error: 400 prompt is too long"});
        assert_eq!(
            turn_outcome(&too_long).unwrap_err().kind,
            AgentErrorKind::Protocol
        );
        let honest = json!({"type":"result","subtype":"success","is_error":true,"result":"I could not finish"});
        assert!(
            turn_outcome(&honest).is_ok(),
            "the agent's own failure is an outcome"
        );
    }

    #[test]
    fn a_rejected_rate_limit_event_gives_its_reset_time() {
        let rejected = json!({"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1_800_000_000,"rateLimitType":"five_hour"}});
        assert_eq!(
            rejected_until(&rejected),
            chrono::DateTime::from_timestamp(1_800_000_000, 0)
        );
        let allowed = json!({"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1_800_000_000}});
        assert_eq!(rejected_until(&allowed), None);
        assert_eq!(rejected_until(&json!({"type":"assistant"})), None);
    }

    #[test]
    fn a_turns_usage_counts_each_response_once_at_its_latest() {
        let usage = |input, output| TokenUsage {
            input_tokens: input,
            output_tokens: output,
            ..TokenUsage::default()
        };
        let mut tally = TurnTally::default();
        assert_eq!(tally.add("m1", usage(100, 1)).total(), 101);
        assert_eq!(
            tally.add("m1", usage(100, 30)).total(),
            130,
            "the same response, further on"
        );
        assert_eq!(tally.add("m2", usage(150, 5)).total(), 285);
        // In every recorded turn the running figure reaches the result's
        // input tokens, and never more than its total (output comes last).
        let mut turns = 0;
        let mut tally = TurnTally::default();
        let mut so_far = TokenUsage::default();
        for (name, line) in fixture_lines() {
            if let Some((id, seen)) = response_usage(&line) {
                so_far = tally.add(id, seen);
            }
            if line["type"] == "result" {
                // A turn the API refused has no usage to compare.
                if let Ok(outcome) = turn_outcome(&line) {
                    assert_eq!(so_far.input_tokens, outcome.usage.input_tokens, "{name}");
                    assert!(so_far.total() <= outcome.usage.total(), "{name}");
                    turns += 1;
                }
                tally = TurnTally::default();
                so_far = TokenUsage::default();
            }
        }
        assert!(turns >= 5, "{turns}");
    }

    #[test]
    fn control_messages_are_recognised() {
        let request = br#"{"type":"control_request","request_id":"r1","request":{"subtype":"hook_callback"}}"#;
        assert!(
            matches!(parse_line(request).unwrap(), Some(Inbound::ControlRequest { request_id, .. }) if request_id == "r1")
        );
        let error = br#"{"type":"control_response","response":{"subtype":"error","request_id":"q","error":"nope"}}"#;
        assert_eq!(
            parse_line(error).unwrap(),
            Some(Inbound::ControlResponse {
                request_id: "q".into(),
                outcome: Err("nope".into())
            })
        );
        let cancel = br#"{"type":"control_cancel_request","request_id":"z"}"#;
        assert!(matches!(
            parse_line(cancel).unwrap(),
            Some(Inbound::ControlCancel { .. })
        ));
        assert_eq!(parse_line(b"debug: hello").unwrap(), None);
        assert!(parse_line(b"{not json").is_err());
        let unknown = br#"{"type":"brand_new_thing","x":1}"#;
        assert!(matches!(
            parse_line(unknown).unwrap(),
            Some(Inbound::Message(_))
        ));
    }

    #[test]
    fn results_are_judged_by_is_error_not_subtype() {
        let max_turns = json!({"type":"result","subtype":"error_max_turns","is_error":true,"errors":["hit 3 turns"]});
        assert_eq!(
            turn_outcome(&max_turns).unwrap().status,
            TurnStatus::MaxTurns
        );
        let odd =
            json!({"type":"result","subtype":"success","is_error":true,"result":"something broke"});
        assert_eq!(
            turn_outcome(&odd).unwrap().status,
            TurnStatus::Failed {
                reason: "something broke".into()
            }
        );
        let auth = json!({"type":"result","subtype":"success","is_error":true,"api_error_status":401,"result":"bad key"});
        assert_eq!(
            turn_outcome(&auth).unwrap_err().kind,
            AgentErrorKind::Authentication
        );
        // As 2.1.197 printed it with --max-budget-usd 0.3 against the mock.
        let budget = json!({"type":"result","subtype":"error_max_budget_usd","is_error":true,"total_cost_usd":0.350_976,"num_turns":4,"errors":["Reached maximum budget ($0.3)"]});
        assert_eq!(
            turn_outcome(&budget).unwrap().status,
            TurnStatus::BudgetReached
        );
        let denied = json!({"type":"result","subtype":"success","is_error":false,"permission_denials":[{"tool_name":"Bash"}]});
        assert_eq!(
            turn_outcome(&denied).unwrap().permission_denials,
            vec!["Bash"]
        );
    }
}
