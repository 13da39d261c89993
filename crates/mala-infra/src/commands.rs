//! Running the project's own commands for mala (triggers, `gate.rerun`):
//! `bash -c`, one after another, fail-fast, each in its own process group
//! with its own timeout, so a hung test suite cannot hang the run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mala_core::{CheckCommand, CheckFailure, CommandRunner};
use tokio::process::Command;

/// The `CommandRunner` of a real run: [`run_commands`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellCommands;

#[async_trait::async_trait]
impl CommandRunner for ShellCommands {
    async fn run(&self, dir: &Path, commands: &[CheckCommand]) -> Result<(), CheckFailure> {
        run_commands(dir, commands).await
    }
}

/// A command without its own timeout gets this long.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a failed command's output is kept.
const OUTPUT_TAIL: usize = 4000;

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(start);
    text[start..].to_owned()
}

/// A command's process group, killed whole unless the command ended by
/// itself: at its timeout, or when it is abandoned (its future dropped at
/// a stop). Whatever the command started goes with it.
struct Running(Option<rustix::process::Pid>);

impl Running {
    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Runs `commands` in `dir` in order; stops at the first failure. Dropped
/// mid-way, it kills the running command's whole process group.
pub async fn run_commands(dir: &Path, commands: &[CheckCommand]) -> Result<(), CheckFailure> {
    for spec in commands {
        let timeout = spec
            .timeout
            .map_or(DEFAULT_COMMAND_TIMEOUT, Duration::from_secs);
        let failed = |output: String| CheckFailure {
            name: spec.name.clone(),
            command: spec.command.clone(),
            output,
        };
        let child = Command::new("bash")
            .args(["-c", &spec.command])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("could not start bash: {e}")))?;
        let group = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw);
        let running = Running(group);
        let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
        if waited.is_ok() {
            running.ended();
        }
        match waited {
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
            // Returning drops `running`, which kills the group.
            Err(_) => return Err(failed(format!("timed out after {} s", timeout.as_secs()))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, command: &str, timeout: Option<u64>) -> CheckCommand {
        CheckCommand {
            name: name.into(),
            command: command.into(),
            timeout,
        }
    }

    #[tokio::test]
    async fn commands_run_in_order_in_the_directory_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let failure = run_commands(
            dir.path(),
            &[
                command("make", "echo one > first", None),
                command("check", "test -e first && echo broken >&2 && exit 4", None),
                command("never", "touch never", None),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(failure.name, "check");
        assert!(
            failure.output.contains("broken") && failure.output.contains('4'),
            "{}",
            failure.output
        );
        assert!(!dir.path().join("never").exists(), "fail-fast");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_fails_and_its_group_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let failure = run_commands(
            dir.path(),
            &[command("hang", "sleep 33 & echo $! > child; wait", Some(1))],
        )
        .await
        .unwrap_err();
        assert!(
            failure.output.contains("timed out after 1 s"),
            "{failure:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let child = std::fs::read_to_string(dir.path().join("child")).unwrap();
        // A signal's delivery is not instant: wait for the child to go.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{}/stat", child.trim())).map_or(true, |s| {
                s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dead() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dead(), "the command's own child was killed too");
        assert!(
            run_commands(dir.path(), &[command("ok", "true", None)])
                .await
                .is_ok()
        );
    }
}
