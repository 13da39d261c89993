//! The Codex CLI over `codex app-server` (JSON-RPC on stdio), the second
//! agent backend. The thread asks before every command and file change and
//! mala's guard answers; mala's lock and commit tools are the thread's
//! dynamic tools; the user's own `CODEX_HOME`, config.toml, profile and
//! model provider are left as they are.

mod rpc;
mod server;
mod session;

#[cfg(test)]
mod offline_tests;
#[cfg(test)]
mod replay_tests;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentObserver, AgentSession, SessionRequest,
};
use tokio::sync::watch;

use server::AppServerCommand;
use session::{CodexSession, Surroundings, ThreadSettings, Timeouts};

/// How to install the pinned Codex CLI.
pub const INSTALL_HINT: &str = "install the Codex CLI with `npm install -g @openai/codex` \
     (or scripts/install-codex.sh for the pinned version), or set `coder_options.codex.binary`";

/// The oldest Codex CLI whose app-server protocol this backend speaks.
const MINIMUM_VERSION: (u32, u32, u32) = (0, 171, 0);

/// Everything about running `codex` that does not change between sessions.
#[derive(Debug, Clone)]
pub struct CodexConfig {
    pub binary: PathBuf,
    /// `None` leaves the model to the user's codex configuration.
    pub model: Option<String>,
    /// `None` leaves the reasoning effort to the user's codex configuration.
    pub effort: Option<String>,
    /// `--fast`: the fast service tier.
    pub fast: bool,
    /// What each model's tokens cost (`coder_options.codex.prices`).
    pub prices: std::collections::BTreeMap<String, mala_domain::TokenPrice>,
    /// No message (and nothing running) for this long ends the turn; `None` disables it.
    pub idle_timeout: Option<Duration>,
    pub turn_timeout: Duration,
    /// Start from an empty environment (tests), then add `env`.
    pub clear_env: bool,
    pub env: Vec<(String, String)>,
    /// `setpriv`, to start `codex` with a parent-death signal (as for claude).
    pub parent_death_wrapper: Option<PathBuf>,
    /// Where session records go (`<state dir>/sessions/`); `None` keeps none.
    pub state_dir: Option<PathBuf>,
}

impl CodexConfig {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            model: None,
            effort: None,
            fast: false,
            prices: std::collections::BTreeMap::new(),
            idle_timeout: None,
            turn_timeout: Duration::from_secs(30 * 60),
            clear_env: false,
            env: Vec::new(),
            parent_death_wrapper: None,
            state_dir: None,
        }
    }

    /// The backend's part of the resolved settings; `binary` is the `codex`
    /// the caller found.
    pub fn from_settings(
        settings: &mala_domain::Settings,
        binary: PathBuf,
        state_dir: PathBuf,
        fast: bool,
    ) -> Self {
        let mut config = Self::new(binary);
        config.state_dir = Some(state_dir);
        config.model.clone_from(&settings.model);
        config.effort = settings.effort.map(|e| e.as_str().to_owned());
        config.fast = fast;
        config
            .prices
            .clone_from(&settings.coder_options.codex.prices);
        config.turn_timeout = Duration::from_secs(settings.timeout_minutes.max(1) * 60);
        config.idle_timeout = (settings.idle_timeout_seconds > 0.0)
            .then(|| Duration::from_secs_f64(settings.idle_timeout_seconds));
        config
    }

    /// The agent reviewer's sessions: the review's turn limit
    /// (`agent_sdk_timeout`); the model is the run's.
    #[must_use]
    pub fn for_reviewer(&self, reviewer: &mala_domain::ReviewerChoice) -> Self {
        let mut config = self.clone();
        config.turn_timeout = Duration::from_secs(reviewer.agent_sdk_timeout.max(1));
        config
    }

    /// The epic verifier's sessions: `epic_verification.agent_sdk_timeout`.
    #[must_use]
    pub fn for_epic_verifier(&self, epic: &mala_domain::EpicVerification) -> Self {
        let mut config = self.clone();
        config.turn_timeout = Duration::from_secs(epic.agent_sdk_timeout.max(1));
        config
    }

    fn command(&self) -> AppServerCommand {
        let mut command = AppServerCommand::new(&self.binary);
        command.clear_env = self.clear_env;
        command.env.clone_from(&self.env);
        command
            .parent_death_wrapper
            .clone_from(&self.parent_death_wrapper);
        command.state_dir.clone_from(&self.state_dir);
        if self.fast {
            command
                .settings
                .push(("features.fast_mode".to_owned(), "true".to_owned()));
        }
        command
    }

    fn thread(&self) -> ThreadSettings {
        ThreadSettings {
            model: self.model.clone(),
            effort: self.effort.clone(),
            service_tier: self.fast.then(|| "fast".to_owned()),
            prices: self.prices.clone(),
        }
    }
}

/// Parses `codex-cli 0.171.0`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().last()?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Checks that the binary runs and is a Codex CLI whose app-server this
/// backend speaks. Returns its version line.
pub async fn check_codex(config: &CodexConfig) -> Result<String, AgentError> {
    let mut command = tokio::process::Command::new(&config.binary);
    if config.clear_env {
        command.env_clear();
    }
    let output = command
        .arg("--version")
        .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .map_err(|e| {
            AgentError::new(
                AgentErrorKind::CouldNotStart,
                format!(
                    "cannot run {}: {e}. {INSTALL_HINT}",
                    config.binary.display()
                ),
            )
        })?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match parse_version(&text) {
        Some(version) if text.starts_with("codex") && version >= MINIMUM_VERSION => Ok(text),
        _ => Err(AgentError::new(
            AgentErrorKind::CouldNotStart,
            format!(
                "{} reports version `{text}`; mala needs the Codex CLI {}.{}.{} or newer. {INSTALL_HINT}",
                config.binary.display(),
                MINIMUM_VERSION.0,
                MINIMUM_VERSION.1,
                MINIMUM_VERSION.2
            ),
        )),
    }
}

/// The Codex backend: each session an app-server process and its thread.
pub struct CodexBackend {
    command: AppServerCommand,
    thread: ThreadSettings,
    around: Surroundings,
    /// Each session's tree watch comes from this, given its directory.
    watching: crate::Watching,
    stop: watch::Sender<bool>,
    live: Arc<Mutex<HashSet<u32>>>,
}

impl std::fmt::Debug for CodexBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodexBackend")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl CodexBackend {
    pub fn new(config: &CodexConfig) -> Self {
        let around = Surroundings {
            timeouts: Timeouts {
                idle: config.idle_timeout,
                turn: config.turn_timeout,
            },
            ..Surroundings::default()
        };
        Self::with_command(config.command(), config.thread(), around)
    }

    pub(crate) fn with_command(
        command: AppServerCommand,
        thread: ThreadSettings,
        around: Surroundings,
    ) -> Self {
        Self {
            command,
            thread,
            around,
            watching: crate::Watching::Off,
            stop: watch::Sender::new(false),
            live: Arc::default(),
        }
    }

    /// Everything of `services` its agents get.
    #[must_use]
    pub fn with_services(mut self, services: crate::AgentServices) -> Self {
        let crate::AgentServices {
            guard,
            locks,
            git,
            watch,
        } = services;
        self.around.guard = guard;
        self.around.locks = locks;
        self.around.git = git;
        self.watching = watch;
        self
    }
}

#[async_trait]
impl AgentBackend for CodexBackend {
    async fn start(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError> {
        let around = Surroundings {
            stop: Some(self.stop.subscribe()),
            live: Some(Arc::clone(&self.live)),
            watch: self.watching.for_session(&request.cwd),
            ..self.around.clone()
        };
        let session =
            CodexSession::start(&self.command, &request, &self.thread, observer, around).await?;
        Ok(Box::new(session))
    }

    async fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    fn kill_all(&self) {
        self.stop.send_replace(true);
        let live: Vec<u32> = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        for pid in live {
            crate::process_tree::kill_tree(pid);
        }
    }
}
