//! The run's coding agent, whichever backend the settings chose: how its
//! sessions start, and a backend of it with what mala gives every agent.

use std::path::PathBuf;
use std::sync::Arc;

use mala_core::{AgentBackend, AgentError, AgentErrorKind, LockTable, ToolGuard};
use mala_domain::{Coder, Settings};

use crate::{ClaudeBackend, ClaudeConfig, CodexBackend, CodexConfig, GitRepo, Watching};

/// How the chosen backend's sessions start.
#[derive(Debug, Clone)]
pub enum CoderConfig {
    Claude(ClaudeConfig),
    Codex(CodexConfig),
}

/// What mala gives a backend's agents: the guard on every action, and what
/// mala's own tools act on. A backend with no locks offers no lock tools;
/// with no git, no commit tool.
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)] // trait objects
pub struct AgentServices {
    pub guard: Option<Arc<dyn ToolGuard>>,
    pub locks: Option<Arc<dyn LockTable>>,
    pub git: Option<Arc<GitRepo>>,
    pub watch: Watching,
}

impl CoderConfig {
    /// The settings' coder, run as `binary` (found by the caller); session
    /// records go under `state_dir`. `fast` is `--fast` (codex only).
    pub fn from_settings(
        settings: &Settings,
        binary: PathBuf,
        state_dir: PathBuf,
        fast: bool,
    ) -> Result<Self, AgentError> {
        match settings.coder {
            Coder::Claude => Ok(Self::Claude(ClaudeConfig::from_settings(
                settings, binary, state_dir,
            ))),
            Coder::Codex => Ok(Self::Codex(CodexConfig::from_settings(
                settings, binary, state_dir, fast,
            ))),
            Coder::Amp => Err(AgentError::new(
                AgentErrorKind::CouldNotStart,
                "the Amp backend is not built",
            )),
        }
    }

    /// Starts every session under `setpriv` (util-linux) when given: the
    /// agents die with mala, even on SIGKILL.
    pub fn set_parent_death_wrapper(&mut self, setpriv: Option<PathBuf>) {
        match self {
            Self::Claude(config) => config.parent_death_wrapper = setpriv,
            Self::Codex(config) => config.parent_death_wrapper = setpriv,
        }
    }

    /// Checks that the binary runs and speaks a protocol mala knows; its
    /// version line.
    pub async fn check(&self) -> Result<String, AgentError> {
        match self {
            Self::Claude(config) => crate::check_claude(config).await,
            Self::Codex(config) => crate::check_codex(config).await,
        }
    }

    /// The reviewer's sessions (the review block's limits).
    #[must_use]
    pub fn for_reviewer(&self, reviewer: &mala_domain::ReviewerChoice) -> Self {
        match self {
            Self::Claude(config) => Self::Claude(config.for_reviewer(reviewer)),
            Self::Codex(config) => Self::Codex(config.for_reviewer(reviewer)),
        }
    }

    /// The epic verifier's sessions.
    #[must_use]
    pub fn for_epic_verifier(&self, epic: &mala_domain::EpicVerification) -> Self {
        match self {
            Self::Claude(config) => Self::Claude(config.for_epic_verifier(epic)),
            Self::Codex(config) => Self::Codex(config.for_epic_verifier(epic)),
        }
    }

    /// A backend of these sessions with `services`.
    pub fn backend(&self, services: AgentServices) -> Arc<dyn AgentBackend> {
        match self {
            Self::Claude(config) => {
                Arc::new(ClaudeBackend::new(config.clone()).with_services(services))
            }
            Self::Codex(config) => Arc::new(CodexBackend::new(config).with_services(services)),
        }
    }
}
