//! The run's preflight: before anything is claimed, one short turn asks the
//! agent to run a canary command that mala's guard always refuses. The turn
//! proves that the model answers (credentials, network, limits) and that
//! the guard sees the agent's commands and its refusal reaches the agent.

use mala_core::{AgentEvent, AgentId};

use crate::{Decision, ToolCall};

/// The command the preflight asks for; the guard refuses it, always.
pub const PREFLIGHT_CANARY: &str = "mala-preflight-canary";

/// What the guard answers the canary.
pub const CANARY_REFUSAL: &str = "refused: this is mala's preflight canary, and mala's guard refuses it \
     to prove it sees your commands. Do not run it again; reply with the word ready";

/// What the guard answers any other call of the preflight's probe.
const PROBE_REFUSAL: &str = "refused: mala's preflight runs nothing but its canary command";

/// The preflight probe's agent name in run `run_id`.
pub fn preflight_agent(run_id: &str) -> AgentId {
    AgentId::new(format!("preflight@{run_id}"))
}

/// Whether `agent` is a run's preflight probe, whose tool calls
/// [`check_probe_tool`] decides instead of the coordination rules.
pub fn is_preflight_agent(agent: &AgentId) -> bool {
    agent.as_str().starts_with("preflight@")
}

/// The guard's answer to the preflight probe: the canary is refused with
/// [`CANARY_REFUSAL`], which is what the probe is for, and every other call
/// is refused too (the probe has nothing to do). Other agents never meet
/// the canary rule: an agent that greps for the word is not refused.
pub fn check_probe_tool(call: &ToolCall) -> Decision {
    let reason = match call {
        ToolCall::Shell { command, .. } if runs_canary(command) => CANARY_REFUSAL,
        _ => PROBE_REFUSAL,
    };
    Decision::Deny {
        reason: reason.to_owned(),
    }
}

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
            AgentEvent::ToolUse { id, input, .. }
                if input
                    .get("command")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(runs_canary) =>
            {
                Some(id.as_str())
            }
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

/// Whether a probe's shell command is its canary: the guard and the judge
/// ask this one question, so however the model quotes, redirects or wraps
/// the command, both see the same call.
fn runs_canary(command: &str) -> bool {
    command.contains(PREFLIGHT_CANARY)
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
    fn the_probe_is_refused_the_canary_however_written_and_everything_else() {
        for command in [
            PREFLIGHT_CANARY.to_owned(),
            format!("true; {PREFLIGHT_CANARY} --now"),
            format!("'{PREFLIGHT_CANARY}'"),
            format!("{PREFLIGHT_CANARY} 2>&1"),
        ] {
            let call = ToolCall::Shell {
                tool: "Bash".to_owned(),
                command: command.clone(),
            };
            assert_eq!(
                check_probe_tool(&call),
                Decision::Deny {
                    reason: CANARY_REFUSAL.to_owned()
                },
                "{command}"
            );
            // The judge counts the same call as the canary.
            let events = [
                AgentEvent::ToolUse {
                    id: "t1".to_owned(),
                    name: "Bash".to_owned(),
                    input: json!({ "command": command }),
                },
                refusal(),
                result("t1", true, CANARY_REFUSAL),
            ];
            assert_eq!(judge_preflight(&events), Ok(()), "{command}");
        }
        let other = ToolCall::Shell {
            tool: "Bash".to_owned(),
            command: "ls".to_owned(),
        };
        assert_eq!(
            check_probe_tool(&other),
            Decision::Deny {
                reason: PROBE_REFUSAL.to_owned()
            }
        );
    }

    #[test]
    fn only_the_probe_is_a_preflight_agent() {
        assert!(is_preflight_agent(&preflight_agent("r-1")));
        assert!(!is_preflight_agent(&AgentId::new("m-1@r-1")));
    }

    #[test]
    fn an_issue_agent_that_names_the_canary_is_not_refused_for_it() {
        let root = std::path::Path::new("/repo");
        let ctx = crate::GuardContext {
            repo_root: root,
            cwd: root,
            held: &[],
            disallowed_tools: &[],
            staged: None,
            require_locks: false,
            commit_prefix: None,
            own_branch: None,
            elsewhere: &[],
        };
        let call = ToolCall::Shell {
            tool: "Bash".to_owned(),
            command: format!("grep -r {PREFLIGHT_CANARY} docs"),
        };
        assert_eq!(crate::check_tool(&call, &ctx), Decision::Allow);
    }
}
