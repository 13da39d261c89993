//! The run's preflight: before anything is claimed, one short turn asks the
//! agent to run a canary command that mala's guard always refuses. The turn
//! proves that the model answers (credentials, network, limits) and that
//! the guard sees the agent's commands and its refusal reaches the agent.

use mala_core::AgentEvent;

/// The command the preflight asks for; the guard refuses it, always.
pub const PREFLIGHT_CANARY: &str = "mala-preflight-canary";

/// What the guard answers the canary.
pub const CANARY_REFUSAL: &str = "refused: this is mala's preflight canary, and mala's guard refuses it \
     to prove it sees your commands. Do not run it again; reply with the word ready";

/// The preflight turn's prompt.
pub fn preflight_prompt() -> String {
    format!(
        "This is mala's preflight check, not a task. Call the Bash tool exactly once with the \
         command `{PREFLIGHT_CANARY}` (it will be refused, which is expected), then reply with \
         the word ready. Do nothing else."
    )
}

/// Why the preflight turn did not prove the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightFailure {
    /// The agent never asked to run the canary.
    #[error(
        "the agent answered but never ran mala's preflight canary command, so mala cannot show \
         that its guard sees the agent's commands"
    )]
    NoCanary,
    /// The canary ran: the guard's hook was not asked.
    #[error(
        "the preflight canary command ran without mala's guard refusing it: the agent's hooks \
         are not active"
    )]
    NotRefused,
    /// The guard refused it, and the agent's tool result did not say so.
    #[error(
        "mala's guard refused the preflight canary, but the agent's tool result did not come \
         back as that refusal"
    )]
    RefusalLost,
}

/// Whether the preflight turn's events prove the guard: the canary was
/// asked for, refused by mala, and came back to the agent as an error
/// carrying the refusal.
pub fn judge_preflight(events: &[AgentEvent]) -> Result<(), PreflightFailure> {
    let canary_calls: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            AgentEvent::ToolUse { id, input, .. } if mentions_canary(input) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    if canary_calls.is_empty() {
        return Err(PreflightFailure::NoCanary);
    }
    let refused = events.iter().any(
        |event| matches!(event, AgentEvent::ToolDenied { reason, .. } if reason == CANARY_REFUSAL),
    );
    let results = events.iter().filter_map(|event| match event {
        AgentEvent::ToolResult {
            id,
            is_error,
            content,
        } if canary_calls.contains(&id.as_str()) => Some((*is_error, content.as_str())),
        _ => None,
    });
    let mut came_back = false;
    for (is_error, content) in results {
        if !is_error || !refused {
            return Err(PreflightFailure::NotRefused);
        }
        came_back |= content.contains(CANARY_REFUSAL);
    }
    if came_back {
        Ok(())
    } else if refused {
        Err(PreflightFailure::RefusalLost)
    } else {
        Err(PreflightFailure::NotRefused)
    }
}

/// Whether a shell command runs the canary (it is one of its words).
pub(crate) fn is_canary(command: &str) -> bool {
    command
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
        .any(|word| word == PREFLIGHT_CANARY)
}

fn mentions_canary(input: &serde_json::Value) -> bool {
    input
        .get("command")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|command| command.contains(PREFLIGHT_CANARY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary_use(id: &str) -> AgentEvent {
        AgentEvent::ToolUse {
            id: id.to_owned(),
            name: "Bash".to_owned(),
            input: json!({"command": PREFLIGHT_CANARY}),
        }
    }

    fn refusal() -> AgentEvent {
        AgentEvent::ToolDenied {
            tool: "Bash".to_owned(),
            reason: CANARY_REFUSAL.to_owned(),
        }
    }

    fn result(id: &str, is_error: bool, content: &str) -> AgentEvent {
        AgentEvent::ToolResult {
            id: id.to_owned(),
            is_error,
            content: content.to_owned(),
        }
    }

    #[test]
    fn a_refusal_that_comes_back_proves_the_guard() {
        let events = [
            canary_use("t1"),
            refusal(),
            result("t1", true, CANARY_REFUSAL),
        ];
        assert_eq!(judge_preflight(&events), Ok(()));
    }

    #[test]
    fn an_agent_that_never_ran_the_canary_proves_nothing() {
        let events = [AgentEvent::Text {
            text: "ready".to_owned(),
        }];
        assert_eq!(judge_preflight(&events), Err(PreflightFailure::NoCanary));
    }

    #[test]
    fn a_canary_that_ran_means_the_hooks_are_off() {
        let events = [canary_use("t1"), result("t1", false, "command not found")];
        assert_eq!(judge_preflight(&events), Err(PreflightFailure::NotRefused));
        // Failing by itself, unrefused, is not a refusal either.
        let events = [canary_use("t1"), result("t1", true, "command not found")];
        assert_eq!(judge_preflight(&events), Err(PreflightFailure::NotRefused));
    }

    #[test]
    fn a_refusal_the_agent_never_saw_is_lost() {
        let events = [
            canary_use("t1"),
            refusal(),
            result("t1", true, "something else"),
        ];
        assert_eq!(judge_preflight(&events), Err(PreflightFailure::RefusalLost));
    }

    #[test]
    fn a_second_canary_that_ran_fails_even_after_one_was_refused() {
        let events = [
            canary_use("t1"),
            refusal(),
            result("t1", true, CANARY_REFUSAL),
            canary_use("t2"),
            result("t2", false, ""),
        ];
        assert_eq!(judge_preflight(&events), Err(PreflightFailure::NotRefused));
    }

    #[test]
    fn the_guard_refuses_the_canary_in_any_position() {
        let root = std::path::Path::new("/repo");
        let ctx = crate::GuardContext {
            repo_root: root,
            cwd: root,
            held: &[],
            disallowed_tools: &[],
            staged: None,
            require_locks: false,
            commit_prefix: None,
        };
        for command in [
            PREFLIGHT_CANARY.to_owned(),
            format!("true; {PREFLIGHT_CANARY} --now"),
            format!("echo x | {PREFLIGHT_CANARY}"),
        ] {
            let call = crate::ToolCall::Shell {
                tool: "Bash".to_owned(),
                command: command.clone(),
            };
            assert_eq!(
                crate::check_tool(&call, &ctx),
                crate::Decision::Deny {
                    reason: CANARY_REFUSAL.to_owned()
                },
                "{command}"
            );
        }
    }
}
