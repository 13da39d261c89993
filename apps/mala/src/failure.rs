//! Everything a command can fail with, mapped to an exit code and a hint.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use mala_core::{AgentError, AgentErrorKind, TrackerError};
use mala_domain::ConfigError;

/// Exit codes mala promises (docs/cli.md).
pub(crate) mod exit {
    pub(crate) const FAILURE: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const ABORTED: u8 = 3;
    pub(crate) const ENVIRONMENT: u8 = 4;
    pub(crate) const INTERRUPTED: u8 = 130;
}

#[derive(Debug)]
pub(crate) enum Failure {
    /// mala.yaml, a `MALA_*` variable or a flag value is wrong.
    Config(ConfigError),
    /// The command line is inconsistent in a way clap cannot express.
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A command this build does not have yet. Never pretends to succeed.
    NotBuilt {
        command: &'static str,
        needs: &'static str,
    },
    /// A file could not be read or written.
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    /// `mala guard check` refused the command; the reason is already printed.
    Denied,
    /// A run ended with issues that did not close; they are listed already.
    IssuesFailed(usize),
    /// The run was stopped with Ctrl-C.
    Interrupted,
    /// A validation trigger with `failure_mode: abort` failed; the command.
    Aborted(String),
    /// The environment stopped the run (credentials, agents that cannot
    /// start, a pause past --max-pause): why, with the fix.
    Environment(String),
    /// The issue tracker failed or refused; its message and hint are passed on.
    Tracker(TrackerError),
    /// Anything else that went wrong, with a hint when there is one.
    Other {
        message: String,
        hint: Option<String>,
    },
}

impl Failure {
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Config(_)
            | Self::Io { .. }
            | Self::Tracker(_)
            | Self::Other { .. }
            | Self::Denied
            | Self::IssuesFailed(_) => exit::FAILURE,
            Self::Interrupted => exit::INTERRUPTED,
            Self::Aborted(_) => exit::ABORTED,
            Self::Environment(_) => exit::ENVIRONMENT,
            Self::Usage { .. } | Self::NotBuilt { .. } => exit::USAGE,
        })
    }

    pub(crate) fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        Self::Usage {
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

impl From<TrackerError> for Failure {
    fn from(error: TrackerError) -> Self {
        Self::Tracker(error)
    }
}

/// How to get past an agent backend that cannot start, when mala knows.
const LOGIN_HINT: &str = "log in with `claude` or set ANTHROPIC_API_KEY";

/// The model API could not be reached.
const NETWORK_HINT: &str =
    "check the network, and ANTHROPIC_BASE_URL and the proxy variables (HTTPS_PROXY) if set";

/// Claude Code refuses to skip permission prompts as root.
const ROOT_HINT: &str = "Claude Code will not run agents with permissions bypassed as root: run mala as \
     an ordinary user, or, inside a container or sandbox you trust, set IS_SANDBOX=1";

impl From<AgentError> for Failure {
    fn from(error: AgentError) -> Self {
        match error.kind {
            AgentErrorKind::Authentication => Self::Other {
                message: error.message,
                hint: Some(LOGIN_HINT.to_owned()),
            },
            AgentErrorKind::CouldNotStart if error.message.contains("root/sudo") => Self::Other {
                message: error.message,
                hint: Some(ROOT_HINT.to_owned()),
            },
            // A missing or too old `claude`: the backend ends its message
            // with the install hint, which belongs on the hint line here.
            AgentErrorKind::CouldNotStart => Self::Other {
                message: error
                    .message
                    .strip_suffix(mala_infra::CLAUDE_INSTALL_HINT)
                    .map_or(error.message.as_str(), |m| m.trim_end_matches([' ', '.']))
                    .to_owned(),
                hint: Some(mala_infra::CLAUDE_INSTALL_HINT.to_owned()),
            },
            AgentErrorKind::Network => Self::Other {
                message: error.message,
                hint: Some(NETWORK_HINT.to_owned()),
            },
            _ => Self::Other {
                message: error.message,
                hint: None,
            },
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => write!(f, "invalid configuration: {error}"),
            Self::Usage { message, hint } | Self::Other { message, hint } => {
                f.write_str(message)?;
                if let Some(hint) = hint {
                    write!(f, "\n  hint: {hint}")?;
                }
                Ok(())
            }
            Self::NotBuilt { command, needs } => write!(
                f,
                "`mala {command}` is not available in this build yet: it needs {needs}.\n  \
                 hint: `mala config check` validates your configuration today"
            ),
            Self::Io {
                path,
                action,
                error,
            } => {
                write!(f, "could not {action} {}: {error}", path.display())
            }
            Self::Denied => f.write_str("the guard refused the command"),
            Self::IssuesFailed(n) => write!(
                f,
                "{n} issue(s) did not close; each carries needs-followup and the reason"
            ),
            Self::Interrupted => {
                f.write_str("interrupted; claimed issues are taken over by the next run")
            }
            Self::Aborted(command) => write!(
                f,
                "the run was aborted: validation failed at `{command}`\n  hint: fix it, or set the trigger's failure_mode to continue or remediate"
            ),
            Self::Environment(reason) => write!(
                f,
                "the run stopped: {reason}\n  hint: fix what it names and run again; the issues the stop kept from working were given back open and unassigned, with nothing recorded against them"
            ),
            Self::Tracker(error) => match error {
                TrackerError::NotInstalled { program, hint } => {
                    write!(f, "{program} is not installed\n  hint: {hint}")
                }
                TrackerError::Rejected {
                    message,
                    hint: Some(hint),
                    ..
                } => write!(f, "tracker: {message}\n  hint: {hint}"),
                TrackerError::NotFound(what) => write!(f, "tracker: not found: {what}"),
                other => write!(f, "tracker: {other}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_say_how_to_log_in() {
        let failure = Failure::from(AgentError::new(
            AgentErrorKind::Authentication,
            "claude exited: Invalid API key",
        ));
        assert_eq!(
            failure.to_string(),
            format!("claude exited: Invalid API key\n  hint: {LOGIN_HINT}")
        );
        assert_eq!(failure.exit_code(), ExitCode::from(exit::FAILURE));
    }

    #[test]
    fn a_claude_that_cannot_start_says_how_to_install_it_once() {
        let install = mala_infra::CLAUDE_INSTALL_HINT;
        let failure = Failure::from(AgentError::new(
            AgentErrorKind::CouldNotStart,
            format!("cannot run /opt/claude: No such file or directory (os error 2). {install}"),
        ));
        assert_eq!(
            failure.to_string(),
            format!(
                "cannot run /opt/claude: No such file or directory (os error 2)\n  hint: {install}"
            )
        );
        let bare = Failure::from(AgentError::new(AgentErrorKind::CouldNotStart, "refused"));
        assert_eq!(bare.to_string(), format!("refused\n  hint: {install}"));
    }

    #[test]
    fn other_agent_failures_have_no_hint() {
        let failure = Failure::from(AgentError::new(AgentErrorKind::Protocol, "garbled"));
        assert_eq!(failure.to_string(), "garbled");
    }

    #[test]
    fn tracker_failures_pass_on_the_message_and_hint_and_exit_1() {
        let failure = Failure::from(TrackerError::Rejected {
            code: Some(mala_core::BrCode::DatabaseLocked),
            message: "Timed out after 30000ms waiting for write lock".into(),
            hint: Some("Retry after the active writer finishes".into()),
            retryable: false,
        });
        assert_eq!(
            failure.to_string(),
            "tracker: Timed out after 30000ms waiting for write lock\n  hint: Retry after the active writer finishes"
        );
        assert_eq!(failure.exit_code(), ExitCode::from(exit::FAILURE));
        let missing = Failure::from(TrackerError::NotInstalled {
            program: "br".into(),
            hint: "install it".into(),
        });
        assert_eq!(
            missing.to_string(),
            "br is not installed\n  hint: install it"
        );
    }
}
