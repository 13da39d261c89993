//! One `br` invocation: spawn, wait, and turn its JSON (or its JSON error
//! envelope) into a value or a [`TrackerError`].

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mala_core::{BrCode, TrackerError};
use serde_json::Value;
use tokio::process::Command;

/// How to install br, for the error a user sees when it is missing.
pub const BR_INSTALL_HINT: &str = "install br with `cargo +nightly install beads_rust --locked` \
     (or run scripts/install-br.sh), or set `tracker: jsonl` in mala.yaml to use mala's built-in store";

/// The `br` binary bound to one repository.
#[derive(Debug, Clone)]
pub struct BrCli {
    binary: PathBuf,
    repo: PathBuf,
    timeout: Duration,
}

impl BrCli {
    /// `timeout` bounds one invocation; br's own write-lock wait is 30 s.
    pub fn new(binary: impl Into<PathBuf>, repo: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            binary: binary.into(),
            repo: repo.into(),
            timeout,
        }
    }

    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Runs `br [--actor ACTOR] ARGS... --json` in the repository.
    ///
    /// br runs in its own process group, so a Ctrl-C meant for mala does not
    /// interrupt a write half way; mala decides when to stop.
    pub async fn run(&self, actor: Option<&str>, args: &[String]) -> Result<Value, TrackerError> {
        let mut command = Command::new(&self.binary);
        if let Some(actor) = actor {
            command.args(["--actor", actor]);
        }
        command
            .args(args)
            .arg("--json")
            .current_dir(&self.repo)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                TrackerError::NotInstalled {
                    program: self.binary.display().to_string(),
                    hint: BR_INSTALL_HINT.to_owned(),
                }
            } else {
                TrackerError::io(format!("could not start {}", self.binary.display()), e)
            }
        })?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                TrackerError::Unavailable(format!(
                    "br {} did not finish within {} s",
                    args.join(" "),
                    self.timeout.as_secs()
                ))
            })?
            .map_err(|e| TrackerError::io(format!("br {}", args.join(" ")), e))?;
        interpret(
            output.status.success(),
            output.status.code(),
            &output.stdout,
            &output.stderr,
            args,
        )
    }
}

/// Reads br's stdout: one or more JSON documents. An `{"error": {...}}`
/// document anywhere wins (br prints a result and then an error when all items
/// of a batch were skipped).
fn interpret(
    success: bool,
    code: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
    args: &[String],
) -> Result<Value, TrackerError> {
    let mut last = Value::Null;
    for value in serde_json::Deserializer::from_slice(stdout).into_iter::<Value>() {
        let Ok(value) = value else {
            break;
        };
        if let Some(error) = value.get("error").filter(|e| e.is_object()) {
            return Err(rejection(error));
        }
        last = value;
    }
    if success {
        return Ok(last);
    }
    let stderr = String::from_utf8_lossy(stderr);
    let message = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .map_or_else(|| stderr.trim().to_owned(), str::to_owned);
    Err(TrackerError::Rejected {
        code: None,
        message: format!(
            "br {} failed (exit {}): {message}",
            args.join(" "),
            code.map_or_else(|| "by signal".to_owned(), |c| c.to_string())
        ),
        hint: None,
        retryable: false,
    })
}

fn rejection(error: &Value) -> TrackerError {
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    let code = text("code").map(|code| BrCode::parse(&code));
    let message = text("message").unwrap_or_else(|| error.to_string());
    if code == Some(BrCode::IssueNotFound) {
        let id = error
            .pointer("/context/searched_id")
            .and_then(Value::as_str)
            .map_or(message, str::to_owned);
        return TrackerError::NotFound(id);
    }
    TrackerError::Rejected {
        retryable: error.get("retryable").and_then(Value::as_bool) == Some(true),
        hint: text("hint"),
        code,
        message,
    }
}

/// br's reason for a refused claim, from its `VALIDATION_FAILED` context.
pub(crate) fn claim_refusal(error: &TrackerError) -> Option<&str> {
    match error {
        TrackerError::Rejected {
            code: Some(BrCode::ValidationFailed),
            message,
            ..
        } => message.strip_prefix("Validation failed: claim: "),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(success: bool, stdout: &str, stderr: &str) -> Result<Value, TrackerError> {
        interpret(
            success,
            Some(i32::from(!success)),
            stdout.as_bytes(),
            stderr.as_bytes(),
            &["x".to_owned()],
        )
    }

    #[test]
    fn the_error_envelope_becomes_a_typed_error() {
        let err = run(
            false,
            r#"{"error":{"code":"DATABASE_LOCKED","message":"Timed out","hint":"Retry","retryable":true,"context":{}}}"#,
            "",
        )
        .unwrap_err();
        assert_eq!(
            err,
            TrackerError::Rejected {
                code: Some(BrCode::DatabaseLocked),
                message: "Timed out".into(),
                hint: Some("Retry".into()),
                retryable: true
            }
        );
        let err = run(
            false,
            r#"{"error":{"code":"ISSUE_NOT_FOUND","message":"Issue not found: n-1","hint":null,"retryable":false,"context":{"searched_id":"n-1"}}}"#,
            "",
        )
        .unwrap_err();
        assert_eq!(err, TrackerError::NotFound("n-1".into()));
    }

    #[test]
    fn an_error_after_a_result_still_counts() {
        let out = "{\"closed\":[],\"skipped\":[{\"id\":\"a\"}]}\n{\"error\":{\"code\":\"NOTHING_TO_DO\",\"message\":\"Nothing to do\",\"retryable\":false}}";
        let err = run(false, out, "").unwrap_err();
        assert_eq!(err.code(), Some(&BrCode::NothingToDo), "{err:?}");
    }

    #[test]
    fn plain_failures_keep_the_stderr_message() {
        let err = run(false, "", "Warning: x\nError: something broke\n").unwrap_err();
        assert!(err.to_string().contains("something broke"), "{err}");
        assert_eq!(err.code(), None, "no envelope, no code");
        assert_eq!(run(true, "[1]\n", "").unwrap(), serde_json::json!([1]));
        assert_eq!(run(true, "", "").unwrap(), Value::Null);
    }

    #[test]
    fn claim_refusals_are_recognised() {
        let err = TrackerError::Rejected {
            code: Some(BrCode::ValidationFailed),
            message: "Validation failed: claim: issue a-1 already assigned to bob".into(),
            hint: None,
            retryable: true,
        };
        assert_eq!(
            claim_refusal(&err),
            Some("issue a-1 already assigned to bob")
        );
        let other = TrackerError::Rejected {
            code: Some(BrCode::Other("CLAIM_FAILED".into())),
            message: "Validation failed: claim: issue a-1 already assigned to bob".into(),
            hint: None,
            retryable: true,
        };
        assert_eq!(
            claim_refusal(&other),
            None,
            "only VALIDATION_FAILED is a claim refusal"
        );
    }

    #[tokio::test]
    async fn a_missing_binary_says_how_to_install_br() {
        let cli = BrCli::new("/nonexistent/br", ".", Duration::from_secs(5));
        let err = cli.run(None, &["ready".into()]).await.unwrap_err();
        assert!(
            matches!(&err, TrackerError::NotInstalled { hint, .. } if hint.contains("cargo +nightly install beads_rust"))
        );
    }
}
