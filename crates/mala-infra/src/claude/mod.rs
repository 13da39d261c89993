//! The Claude Code backend: the real `claude` binary over its stream-json
//! control protocol, behind the `AgentBackend` port.

mod protocol;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mala_core::{
    AgentBackend, AgentError, AgentErrorKind, AgentObserver, AgentSession, LockTable,
    SessionRequest, ToolGuard,
};

pub use session::{ClaudeSession, Interrupter};

/// How to install the pinned Claude Code.
pub const INSTALL_HINT: &str = "install Claude Code with `npm install -g @anthropic-ai/claude-code` \
     (or scripts/install-claude.sh for the pinned version), or set the path to `claude`";

/// The oldest Claude Code whose protocol this backend speaks.
const MINIMUM_VERSION: (u32, u32, u32) = (2, 1, 0);

/// Everything about running `claude` that does not change between sessions.
#[derive(Debug, Clone)]
pub struct ClaudeConfig {
    pub binary: PathBuf,
    pub model: Option<String>,
    pub effort: Option<String>,
    pub max_turns: Option<u32>,
    /// `--setting-sources`; `None` leaves the flag out.
    pub setting_sources: Option<Vec<String>>,
    pub disallowed_tools: Vec<String>,
    /// No output (and no tool call in flight) for this long ends the turn; `None` disables it.
    pub idle_timeout: Option<Duration>,
    pub turn_timeout: Duration,
    /// How long each step of the shutdown escalation waits (stdin closed,
    /// then SIGTERM, then SIGKILL to the process group).
    pub shutdown_grace: Duration,
    /// Where session records go (`<state dir>/sessions/`).
    pub state_dir: PathBuf,
    /// Start from an empty environment (tests), then add `env`.
    pub clear_env: bool,
    pub env: Vec<(String, String)>,
    /// `setpriv` (util-linux), to start `claude` with a parent-death signal:
    /// when mala dies, even by SIGKILL, its agents die with it instead of
    /// working on unguarded. `None` starts `claude` directly.
    pub parent_death_wrapper: Option<PathBuf>,
}

impl ClaudeConfig {
    pub fn new(binary: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            model: None,
            effort: None,
            max_turns: None,
            setting_sources: None,
            disallowed_tools: Vec::new(),
            idle_timeout: None,
            turn_timeout: Duration::from_secs(30 * 60),
            shutdown_grace: Duration::from_secs(5),
            state_dir: state_dir.into(),
            clear_env: false,
            env: Vec::new(),
            parent_death_wrapper: None,
        }
    }

    /// The backend's part of the resolved settings. `binary` is the `claude`
    /// the caller found (settings name it; the binary crate looks it up on PATH).
    pub fn from_settings(
        settings: &mala_domain::Settings,
        binary: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        let mut config = Self::new(binary, state_dir);
        config.model.clone_from(&settings.model);
        config.effort = settings.effort.map(|e| e.as_str().to_owned());
        config.setting_sources = Some(
            settings
                .claude_settings_sources
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        );
        config
            .disallowed_tools
            .clone_from(&settings.coder_options.claude.disallowed_tools);
        config.turn_timeout = Duration::from_secs(settings.timeout_minutes.max(1) * 60);
        config.idle_timeout = (settings.idle_timeout_seconds > 0.0)
            .then(|| Duration::from_secs_f64(settings.idle_timeout_seconds));
        config
    }

    /// The agent reviewer's sessions: the review block's model and turn
    /// limit (`agent_sdk_model`, `agent_sdk_timeout`) instead of the
    /// implementer's; everything else as the run's.
    #[must_use]
    pub fn for_reviewer(&self, reviewer: &mala_domain::ReviewerChoice) -> Self {
        let mut config = self.clone();
        config.model = Some(reviewer.agent_sdk_model.as_str().to_owned());
        config.turn_timeout = Duration::from_secs(reviewer.agent_sdk_timeout.max(1));
        config
    }

    /// The epic verifier's sessions: its turn limit is
    /// `epic_verification.agent_sdk_timeout`.
    #[must_use]
    pub fn for_epic_verifier(&self, epic: &mala_domain::EpicVerification) -> Self {
        let mut config = self.clone();
        config.turn_timeout = Duration::from_secs(epic.agent_sdk_timeout.max(1));
        config
    }

    /// The command line, as the official SDKs build it.
    fn arguments(&self, request: &SessionRequest) -> Vec<String> {
        let mut args: Vec<String> = [
            "--output-format",
            "stream-json",
            "--verbose",
            "--input-format",
            "stream-json",
            // mala's own PreToolUse hook decides every call.
            "--permission-mode",
            "bypassPermissions",
            "--mcp-config",
            r#"{"mcpServers":{"mala":{"type":"sdk","name":"mala"}}}"#,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(model) = &self.model {
            args.extend(["--model".to_owned(), model.clone()]);
        }
        if let Some(effort) = &self.effort {
            args.extend(["--effort".to_owned(), effort.clone()]);
        }
        if let Some(turns) = self.max_turns {
            args.extend(["--max-turns".to_owned(), turns.to_string()]);
        }
        if let Some(sources) = &self.setting_sources {
            args.push(format!("--setting-sources={}", sources.join(",")));
        }
        // The probe's one tool is Bash, which a project may disallow for
        // its agents: the probe runs nothing (the guard refuses its every
        // call), so the setting has nothing to keep from it.
        if !self.disallowed_tools.is_empty() && !request.probe {
            args.extend([
                "--disallowedTools".to_owned(),
                self.disallowed_tools.join(","),
            ]);
        }
        if request.probe {
            args.extend(
                [
                    "--tools",
                    "Bash",
                    "--system-prompt",
                    "You check a coding agent's setup. Do exactly what the user asks, then stop.",
                ]
                .map(str::to_owned),
            );
        }
        if let Some(append) = &request.system_prompt_append {
            args.extend(["--append-system-prompt".to_owned(), append.clone()]);
        }
        if let Some(dollars) = request.max_cost_usd {
            args.push(format!("--max-budget-usd={dollars}"));
        }
        if let Some(resume) = &request.resume {
            // The equals form keeps an id from ever being read as a flag.
            args.push(format!("--resume={resume}"));
        }
        args
    }
}

/// Parses `2.1.197 (Claude Code)`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Checks that the binary runs and speaks a protocol this backend knows.
/// Returns its version line.
pub async fn check_claude(config: &ClaudeConfig) -> Result<String, AgentError> {
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
        Some(version) if version >= MINIMUM_VERSION => Ok(text),
        _ => Err(AgentError::new(
            AgentErrorKind::CouldNotStart,
            format!(
                "{} reports version `{text}`; mala needs Claude Code {}.{}.{} or newer. {INSTALL_HINT}",
                config.binary.display(),
                MINIMUM_VERSION.0,
                MINIMUM_VERSION.1,
                MINIMUM_VERSION.2
            ),
        )),
    }
}

/// What sessions reach besides the model: the guard, the lock table, git,
/// and the backend's stop switch.
#[derive(Clone, Default)]
pub(crate) struct Services {
    pub(crate) guard: Option<Arc<dyn ToolGuard>>,
    pub(crate) locks: Option<Arc<dyn LockTable>>,
    pub(crate) git: Option<Arc<crate::GitRepo>>,
    pub(crate) watch: crate::Watching,
    pub(crate) stop: Arc<StopSwitch>,
}

/// Lets a run stop every live session of a backend at once (Ctrl-C).
#[derive(Default)]
pub(crate) struct StopSwitch {
    stopping: std::sync::atomic::AtomicBool,
    live: std::sync::Mutex<Vec<(u64, session::Interrupter)>>,
    next: std::sync::atomic::AtomicU64,
}

impl StopSwitch {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn register(&self, interrupter: session::Interrupter) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((id, interrupter));
        id
    }

    fn live(&self) -> Vec<session::Interrupter> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(_, i)| i.clone())
            .collect()
    }

    pub(crate) fn forget(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(other, _)| *other != id);
    }
}

/// The backend: starts one `claude` process per session.
#[derive(Clone)]
pub struct ClaudeBackend {
    config: ClaudeConfig,
    services: Services,
}

impl std::fmt::Debug for ClaudeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaudeBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClaudeBackend {
    pub fn new(config: ClaudeConfig) -> Self {
        Self {
            config,
            services: Services::default(),
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
        self.services.guard = guard;
        self.services.locks = locks;
        self.services.git = git;
        self.services.watch = watch;
        self
    }

    /// Every tool call goes through `guard` (PreToolUse and `can_use_tool`).
    #[must_use]
    pub fn with_guard(mut self, guard: Arc<dyn ToolGuard>) -> Self {
        self.services.guard = Some(guard);
        self
    }

    /// The `mala` MCP server's lock tools use `locks`.
    #[must_use]
    pub fn with_locks(mut self, locks: Arc<dyn LockTable>) -> Self {
        self.services.locks = Some(locks);
        self
    }

    /// Every tool call that may write is watched in the working tree: what
    /// it changed is evidence, and a change without a lock is reported.
    #[must_use]
    pub fn with_tree_watch(mut self, watch: Arc<crate::TreeWatch>) -> Self {
        self.services.watch = crate::Watching::Shared(watch);
        self
    }

    /// The `mala` MCP server's `commit` tool commits through `git`'s queue.
    #[must_use]
    pub fn with_git(mut self, git: Arc<crate::GitRepo>) -> Self {
        self.services.git = Some(git);
        self
    }

    /// Stops every live session: no new turns, and a running turn is
    /// interrupted. Their turns end with a `Cancelled` error.
    pub async fn stop_all(&self) {
        self.services
            .stop
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for interrupter in self.services.stop.live() {
            let _ = interrupter.interrupt().await;
        }
    }

    /// SIGKILLs the process group of every live session at once (the third
    /// Ctrl-C). Their turns end as stopped too.
    pub fn kill_all(&self) {
        self.services
            .stop
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for interrupter in self.services.stop.live() {
            interrupter.kill();
        }
    }

    /// Starts a session and returns the concrete type (tests and the pipeline's own uses).
    pub async fn start_session(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<ClaudeSession, AgentError> {
        ClaudeSession::start(&self.config, request, observer, self.services.clone()).await
    }
}

#[async_trait]
impl AgentBackend for ClaudeBackend {
    async fn start(
        &self,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
    ) -> Result<Box<dyn AgentSession>, AgentError> {
        Ok(Box::new(self.start_session(request, observer).await?))
    }

    async fn stop_all(&self) {
        ClaudeBackend::stop_all(self).await;
    }

    fn kill_all(&self) {
        ClaudeBackend::kill_all(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::AgentId;
    use std::path::Path;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("2.1.197 (Claude Code)"), Some((2, 1, 197)));
        assert!(parse_version("2.1.197 (Claude Code)").unwrap() >= MINIMUM_VERSION);
        assert!(parse_version("1.0.3").unwrap() < MINIMUM_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }

    fn settings(text: &str) -> mala_domain::Settings {
        let file = mala_domain::parse_config(Path::new("mala.yaml"), text).unwrap();
        mala_domain::resolve(mala_domain::ConfigSources {
            file: Some(&file),
            env: &std::collections::BTreeMap::new(),
            flags: &mala_domain::FlagOverrides::default(),
        })
        .unwrap()
    }

    #[test]
    fn reviewer_sessions_take_the_review_blocks_model_and_turn_limit() {
        let settings = settings(
            "preset: rust\nper_issue_review:\n  enabled: true\n  \
             agent_sdk_model: haiku\n  agent_sdk_timeout: 90\n",
        );
        let run = ClaudeConfig::from_settings(&settings, "claude".into(), "/state".into());
        let reviewer = run.for_reviewer(&settings.per_issue_review.reviewer);
        assert_eq!(reviewer.model.as_deref(), Some("haiku"));
        assert_eq!(reviewer.turn_timeout, Duration::from_secs(90));
        let args = reviewer.arguments(&SessionRequest::new(AgentId::new("r@x"), "/repo"));
        assert!(args.join(" ").contains("--model haiku"), "{args:?}");
        // The implementer keeps the run's own.
        assert_eq!(run.model.as_deref(), Some("opus[1m]"));
        assert_eq!(run.turn_timeout, Duration::from_secs(30 * 60));
    }

    #[test]
    fn epic_verifier_sessions_take_epic_verifications_turn_limit() {
        let settings = settings("preset: rust\nepic_verification:\n  agent_sdk_timeout: 45\n");
        let run = ClaudeConfig::from_settings(&settings, "claude".into(), "/state".into());
        let verifier = run.for_epic_verifier(&settings.epic_verification);
        assert_eq!(verifier.turn_timeout, Duration::from_secs(45));
        assert_eq!(verifier.model, run.model);
    }

    #[test]
    fn the_command_line_is_the_sdks_plus_mala_server() {
        let mut config = ClaudeConfig::new("claude", "/state");
        config.model = Some("opus".into());
        config.disallowed_tools = vec!["TodoWrite".into(), "Monitor".into()];
        let mut request = SessionRequest::new(AgentId::new("a@r"), "/repo");
        request.resume = Some(mala_core::SessionId::new("s-1"));
        let args = config.arguments(&request);
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--output-format stream-json --verbose --input-format stream-json")
        );
        assert!(joined.contains("--model opus"));
        assert!(joined.contains("--disallowedTools TodoWrite,Monitor"));
        assert!(args.contains(&"--resume=s-1".to_owned()));
        assert!(joined.contains(r#""mala":{"type":"sdk""#));
        assert!(!joined.contains("--tools"), "work sessions keep every tool");
    }

    #[test]
    fn a_probe_session_offers_the_shell_alone_with_a_short_system_prompt() {
        let mut config = ClaudeConfig::new("claude", "/state");
        // A project that keeps Bash from its agents still gets a probe with
        // a shell (the guard refuses its every call).
        config.disallowed_tools = vec!["Bash".into()];
        let mut request = SessionRequest::new(AgentId::new("preflight@r"), "/repo");
        request.probe = true;
        let args = config.arguments(&request);
        let tools = args.iter().position(|a| a == "--tools").expect("--tools");
        assert_eq!(args[tools + 1], "Bash");
        let prompt = args
            .iter()
            .position(|a| a == "--system-prompt")
            .expect("--system-prompt");
        assert!(args[prompt + 1].len() < 200, "{args:?}");
        assert!(!args.contains(&"--disallowedTools".to_owned()), "{args:?}");
        // The hooks' permission mode and mala's tools are as for any session.
        assert!(
            args.join(" ")
                .contains("--permission-mode bypassPermissions --mcp-config")
        );
    }
}
