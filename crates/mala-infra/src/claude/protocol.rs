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
    let status = match (is_error, subtype) {
        (false, _) => TurnStatus::Completed,
        (true, "error_during_execution") => TurnStatus::Interrupted,
        (true, "error_max_turns") => TurnStatus::MaxTurns,
        (true, _) => TurnStatus::Failed {
            reason: failure_text(result),
        },
    };
    let usage = result.get("usage").cloned().unwrap_or(Value::Null);
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
        usage: TokenUsage {
            input_tokens: number(&usage, "input_tokens"),
            output_tokens: number(&usage, "output_tokens"),
            cache_read_input_tokens: number(&usage, "cache_read_input_tokens"),
            cache_creation_input_tokens: number(&usage, "cache_creation_input_tokens"),
        },
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

/// An HTTP status from the model API, classified.
pub(crate) fn api_error(status: u64, text: &str) -> AgentError {
    let kind = match status {
        401 | 403 => AgentErrorKind::Authentication,
        408 | 429 | 500..=599 => AgentErrorKind::Overloaded {
            retry_after: Some(Duration::from_secs(if status == 429 { 30 } else { 10 })),
        },
        _ => AgentErrorKind::Protocol,
    };
    AgentError::new(kind, format!("model API error {status}: {text}"))
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
        let denied = json!({"type":"result","subtype":"success","is_error":false,"permission_denials":[{"tool_name":"Bash"}]});
        assert_eq!(
            turn_outcome(&denied).unwrap().permission_denials,
            vec!["Bash"]
        );
    }
}
