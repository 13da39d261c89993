//! `mala guard check` and `mala guard hook`: the tool guard for people and
//! for other agent CLIs.

use std::io::Read;
use std::path::{Path, PathBuf};

use mala_core::AgentId;
use mala_domain::{Decision, GuardContext, Settings, ToolCall, check_tool};
use mala_infra::{canonical_path, paths_held_in};
use serde_json::{Value, json};

use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, HookEnvironment, flag_overrides, load_settings};

fn current_dir() -> Result<PathBuf, Failure> {
    let cwd = std::env::current_dir().map_err(|error| Failure::Io {
        path: ".".into(),
        action: "read the current directory",
        error,
    })?;
    Ok(cwd.canonicalize().unwrap_or(cwd))
}

/// Settings for the repository, with mala.yaml when there is one.
fn settings_for(repo: &Path) -> Result<Settings, Failure> {
    let config = ConfigPath::new(repo, None);
    Ok(load_settings(&config, &flag_overrides(None, None))?.0)
}

/// Quotes a word for a shell only when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn held_paths(
    repo: &Path,
    settings: &Settings,
    agent: Option<&str>,
    locked: &[String],
) -> Vec<PathBuf> {
    let mut held: Vec<PathBuf> = locked.iter().map(|p| canonical_path(repo, p)).collect();
    if let Some(agent) = agent {
        held.extend(paths_held_in(
            &settings.paths.lock_dir,
            &AgentId::new(agent),
        ));
    }
    held
}

pub(crate) fn check(
    agent: Option<&str>,
    locked: &[String],
    json: bool,
    command: &[String],
) -> Result<(), Failure> {
    let repo = current_dir()?;
    let settings = settings_for(&repo)?;
    // One argument is a whole command line; several are its words.
    let line = if command.len() == 1 {
        command[0].clone()
    } else {
        command
            .iter()
            .map(|w| shell_word(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let held = held_paths(&repo, &settings, agent, locked);
    let ctx = GuardContext {
        repo_root: &repo,
        cwd: &repo,
        held: &held,
        disallowed_tools: &settings.coder_options.claude.disallowed_tools,
        staged: None,
        require_locks: true,
        commit_prefix: None,
        own_branch: None,
        elsewhere: &[],
    };
    let decision = check_tool(
        &ToolCall::Shell {
            tool: "Bash".to_owned(),
            command: line,
        },
        &ctx,
    );
    if json {
        let text = serde_json::to_string(&decision).map_err(|e| Failure::Other {
            message: format!("could not print the decision: {e}"),
            hint: None,
        })?;
        output::stdout(&format!("{text}\n"));
    } else {
        match &decision {
            Decision::Allow => output::stdout("allow\n"),
            Decision::Deny { reason } => output::stdout(&format!("deny: {reason}\n")),
        }
    }
    if decision.is_allowed() {
        Ok(())
    } else {
        Err(Failure::Denied)
    }
}

/// The answer to a PreToolUse payload, in Claude Code's hook shape.
fn hook_answer(decision: &Decision) -> Value {
    match decision {
        Decision::Allow => json!({}),
        Decision::Deny { reason } => json!({
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": reason,
            }
        }),
    }
}

pub(crate) fn hook(
    agent: Option<&str>,
    repo: Option<&Path>,
    env: &HookEnvironment,
) -> Result<(), Failure> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|error| Failure::Io {
            path: "<stdin>".into(),
            action: "read the hook payload from",
            error,
        })?;
    let decision = match serde_json::from_str::<Value>(&input) {
        // Fail closed: a payload mala cannot read is not a permission.
        Err(e) => Decision::Deny {
            reason: format!("refused: mala guard could not read the hook payload ({e})"),
        },
        Ok(payload) => {
            let cwd = payload
                .get("cwd")
                .and_then(Value::as_str)
                .map(PathBuf::from);
            let repo = repo
                .map(Path::to_path_buf)
                .or_else(|| env.repo_root.clone())
                .or_else(|| cwd.clone())
                .map_or_else(current_dir, Ok)?;
            let repo = repo.canonicalize().unwrap_or(repo);
            let settings = settings_for(&repo)?;
            let agent = agent.map(str::to_owned).or_else(|| env.agent.clone());
            let held = held_paths(&repo, &settings, agent.as_deref(), &[]);
            let prefix = agent.as_deref().and_then(|a| {
                mala_domain::parse_agent_name(&AgentId::new(a))
                    .map(|(issue, _)| issue.commit_prefix())
            });
            let cwd = cwd.map_or_else(|| repo.clone(), |c| c.canonicalize().unwrap_or(c));
            let ctx = GuardContext {
                repo_root: &repo,
                cwd: &cwd,
                held: &held,
                disallowed_tools: &settings.coder_options.claude.disallowed_tools,
                staged: None,
                // Without an agent there are no locks to check against.
                require_locks: agent.is_some(),
                commit_prefix: prefix.as_deref(),
                own_branch: None,
                elsewhere: &[],
            };
            let tool = payload
                .get("tool_name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let input = payload.get("tool_input").cloned().unwrap_or(Value::Null);
            check_tool(&ToolCall::from_claude(tool, &input), &ctx)
        }
    };
    output::stdout(&format!("{}\n", hook_answer(&decision)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("src/a.rs"), "src/a.rs");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(">"), "'>'");
    }

    #[test]
    fn a_denial_becomes_claudes_hook_shape() {
        let answer = hook_answer(&Decision::Deny {
            reason: "no".into(),
        });
        assert_eq!(answer["hookSpecificOutput"]["permissionDecision"], "deny");
        assert_eq!(
            answer["hookSpecificOutput"]["permissionDecisionReason"],
            "no"
        );
        assert_eq!(hook_answer(&Decision::Allow), json!({}));
    }
}
