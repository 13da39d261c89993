//! Validation triggers: the project's commands, run by mala itself at set
//! moments (`periodic`, `run_end`), sequentially and fail-fast, each with its
//! own timeout, in the repository root. A failure aborts the run, is noted,
//! or is handed to a fixer agent and the commands run again.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mala_core::{
    AgentBackend, AgentEvent, AgentId, AgentObserver, Event, EventSink, SessionRequest,
};
use mala_domain::{FailureMode, PromptKind, Trigger, TriggerCommand, render_prompt};
use tokio::process::Command;

/// A command without its own timeout gets this long.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const OUTPUT_TAIL: usize = 4000;

/// How a trigger ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    Passed,
    /// Failed, and `failure_mode: continue` let the run go on.
    FailedContinued {
        command: String,
    },
    /// Failed with `failure_mode: abort` (or remediation did not help): the run stops.
    Abort {
        command: String,
    },
}

/// The first command that failed, and the end of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    name: String,
    command: String,
    output: String,
}

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(start);
    text[start..].to_owned()
}

/// Runs the commands in order; stops at the first failure.
async fn run_commands(repo: &Path, commands: &[TriggerCommand]) -> Result<(), Failed> {
    for spec in commands {
        let timeout = spec.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let child = Command::new("bash")
            .args(["-c", &spec.command])
            .current_dir(repo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let failed = |output: String| Failed {
            name: spec.name.clone(),
            command: spec.command.clone(),
            output,
        };
        let child = child.map_err(|e| failed(format!("could not start bash: {e}")))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) if output.status.success() => {}
            Ok(Ok(output)) => {
                let text = format!(
                    "{}{}\n({})",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr),
                    output.status
                );
                return Err(failed(tail(&text)));
            }
            Ok(Err(e)) => return Err(failed(format!("could not run it: {e}"))),
            Err(_) => return Err(failed(format!("timed out after {} s", timeout.as_secs()))),
        }
    }
    Ok(())
}

struct Quiet;

impl AgentObserver for Quiet {
    fn on_event(&self, _: &AgentEvent) {}
}

/// Runs one trigger, with remediation when configured.
pub async fn run_trigger(
    name: &str,
    trigger: &Trigger,
    repo: &Path,
    backend: &Arc<dyn AgentBackend>,
    run_id: &str,
    events: &Arc<dyn EventSink>,
) -> TriggerOutcome {
    let mut round = 0;
    loop {
        let result = run_commands(repo, &trigger.commands).await;
        let Err(failed) = result else {
            events.emit(&Event::Warning {
                message: format!(
                    "{name} validation passed ({} command(s))",
                    trigger.commands.len()
                ),
            });
            return TriggerOutcome::Passed;
        };
        events.emit(&Event::Warning {
            message: format!(
                "{name} validation failed at `{}` ({}): {}",
                failed.name,
                failed.command,
                failed
                    .output
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
            ),
        });
        match trigger.failure_mode {
            FailureMode::Continue => {
                return TriggerOutcome::FailedContinued {
                    command: failed.command,
                };
            }
            FailureMode::Abort => {
                return TriggerOutcome::Abort {
                    command: failed.command,
                };
            }
            FailureMode::Remediate if round >= trigger.max_retries => {
                return TriggerOutcome::Abort {
                    command: failed.command,
                };
            }
            FailureMode::Remediate => {
                round += 1;
                let listed: Vec<String> = trigger
                    .commands
                    .iter()
                    .map(|c| format!("- `{}`", c.command))
                    .collect();
                let prompt = render_prompt(
                    PromptKind::Fixer,
                    &[
                        ("attempt", round.to_string()),
                        ("max_attempts", trigger.max_retries.to_string()),
                        ("failed_command", failed.command.clone()),
                        ("failure_output", failed.output.clone()),
                        ("validation_commands", listed.join("\n")),
                    ],
                );
                let Ok(prompt) = prompt else {
                    return TriggerOutcome::Abort {
                        command: failed.command,
                    };
                };
                let fixer = AgentId::new(format!("fixer-{name}-{round}@{run_id}"));
                match backend
                    .start(
                        SessionRequest::new(fixer, repo.to_path_buf()),
                        Arc::new(Quiet),
                    )
                    .await
                {
                    Ok(mut session) => {
                        let _ = session.turn(&prompt).await;
                        let _ = session.close().await;
                    }
                    Err(error) => {
                        events.emit(&Event::Warning {
                            message: format!("the fixer could not start: {error}"),
                        });
                        return TriggerOutcome::Abort {
                            command: failed.command,
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::MockAgentBackend;

    fn command(name: &str, command: &str) -> TriggerCommand {
        TriggerCommand {
            name: name.into(),
            command: command.into(),
            timeout: Some(5),
        }
    }

    #[derive(Default)]
    struct Collect(std::sync::Mutex<Vec<String>>);

    impl EventSink for Collect {
        fn emit(&self, event: &Event) {
            if let Event::Warning { message } = event {
                self.0.lock().unwrap().push(message.clone());
            }
        }
    }

    #[tokio::test]
    async fn commands_run_in_order_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let commands = vec![
            command("one", "echo one >> order.txt"),
            command("two", "echo boom >&2; exit 4"),
            command("three", "echo three >> order.txt"),
        ];
        let failed = run_commands(dir.path(), &commands).await.unwrap_err();
        assert_eq!(failed.name, "two");
        assert!(
            failed.output.contains("boom") && failed.output.contains('4'),
            "{}",
            failed.output
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("order.txt")).unwrap(),
            "one\n"
        );
        let slow = vec![TriggerCommand {
            timeout: Some(1),
            ..command("slow", "sleep 5")
        }];
        assert!(
            run_commands(dir.path(), &slow)
                .await
                .unwrap_err()
                .output
                .contains("timed out")
        );
    }

    #[tokio::test]
    async fn failure_modes_continue_abort_and_remediate() {
        let dir = tempfile::tempdir().unwrap();
        let events: Arc<dyn EventSink> = Arc::new(Collect::default());
        let backend: Arc<dyn AgentBackend> = Arc::new(MockAgentBackend::new());
        let failing = |mode| Trigger {
            failure_mode: mode,
            max_retries: 0,
            commands: vec![command("check", "test -f fixed.txt")],
            code_review: None,
        };
        let outcome = run_trigger(
            "run_end",
            &failing(FailureMode::Continue),
            dir.path(),
            &backend,
            "r",
            &events,
        )
        .await;
        assert!(matches!(outcome, TriggerOutcome::FailedContinued { .. }));
        let outcome = run_trigger(
            "run_end",
            &failing(FailureMode::Abort),
            dir.path(),
            &backend,
            "r",
            &events,
        )
        .await;
        assert!(matches!(outcome, TriggerOutcome::Abort { .. }));

        // The fixer "fixes" the tree; the commands then pass.
        let mut fixing = MockAgentBackend::new();
        let root = dir.path().to_path_buf();
        fixing.expect_start().times(1).returning(move |_, _| {
            std::fs::write(root.join("fixed.txt"), "").unwrap();
            let mut session = mala_core::MockAgentSession::new();
            session.expect_turn().returning(|_| {
                Err(mala_core::AgentError::new(
                    mala_core::AgentErrorKind::Cancelled,
                    "done",
                ))
            });
            session.expect_close().returning(|| Ok(()));
            Ok(Box::new(session))
        });
        let fixing: Arc<dyn AgentBackend> = Arc::new(fixing);
        let remediate = Trigger {
            max_retries: 2,
            ..failing(FailureMode::Remediate)
        };
        let outcome = run_trigger("periodic", &remediate, dir.path(), &fixing, "r", &events).await;
        assert_eq!(outcome, TriggerOutcome::Passed);
    }
}
