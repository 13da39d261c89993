//! One `codex app-server` process: started in its own process group, its
//! stdio a [`RpcClient`], killed with its group when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mala_core::{AgentError, AgentErrorKind};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::rpc::{Inbound, RpcClient};

/// What mala turns off in every app-server: features whose start-up talks
/// to the network (plugin and app catalogues on github.com and chatgpt.com),
/// and tools that act outside the commands and file changes mala's guard
/// answers (sub-agents, which mala runs itself; a browser, the desktop,
/// images written to disk).
const DISABLED_FEATURES: [&str; 9] = [
    "plugins",
    "remote_plugin",
    "apps",
    "plugin_sharing",
    "multi_agent",
    "browser_use",
    "in_app_browser",
    "computer_use",
    "image_generation",
];

/// How to start `codex app-server`.
#[derive(Debug, Clone)]
pub(crate) struct AppServerCommand {
    pub(crate) binary: PathBuf,
    /// `-c key=value` settings mala adds; the user's own `CODEX_HOME`,
    /// config.toml, profile and model provider are left as they are.
    pub(crate) settings: Vec<(String, String)>,
    /// Start with an empty environment, then `env` (tests: nothing of the
    /// machine's own setup leaks in).
    pub(crate) clear_env: bool,
    pub(crate) env: Vec<(String, String)>,
    /// `setpriv`: the server dies with mala, even when mala is SIGKILLed.
    pub(crate) parent_death_wrapper: Option<PathBuf>,
}

impl AppServerCommand {
    pub(crate) fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            settings: vec![("analytics.enabled".to_owned(), "false".to_owned())],
            clear_env: false,
            env: Vec::new(),
            parent_death_wrapper: None,
        }
    }

    fn command(&self, cwd: &Path) -> Command {
        let mut command = match &self.parent_death_wrapper {
            // setpriv sets PR_SET_PDEATHSIG, then execs codex in its place.
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command
                    .args(["--pdeathsig", "KILL", "--"])
                    .arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command.arg("app-server");
        for (key, value) in &self.settings {
            command.arg("-c").arg(format!("{key}={value}"));
        }
        for feature in DISABLED_FEATURES {
            command.args(["--disable", feature]);
        }
        command
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C is mala's to handle, and a
            // kill reaches the commands the agent started.
            .process_group(0)
            .kill_on_drop(true);
        if self.clear_env {
            command.env_clear();
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }
}

/// A running app-server.
#[derive(Debug)]
pub(crate) struct AppServer {
    child: Child,
    pub(crate) rpc: RpcClient,
    /// What the server sends that is not an answer to us.
    pub(crate) inbox: mpsc::UnboundedReceiver<Inbound>,
}

/// What `initialize` told mala about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) user_agent: String,
    pub(crate) codex_home: String,
}

impl AppServer {
    /// Starts the server in `cwd`.
    pub(crate) fn start(command: &AppServerCommand, cwd: &Path) -> Result<Self, AgentError> {
        let mut child = command.command(cwd).spawn().map_err(|error| {
            AgentError::new(
                AgentErrorKind::CouldNotStart,
                format!("could not start {}: {error}", command.binary.display()),
            )
        })?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(AgentError::new(
                AgentErrorKind::CouldNotStart,
                "codex app-server started without its pipes",
            ));
        };
        let (rpc, inbox) = RpcClient::start(stdout, stdin);
        Ok(Self { child, rpc, inbox })
    }

    /// The handshake: `initialize` (with the experimental API, which
    /// client-side tools and granular approval need), then `initialized`.
    pub(crate) async fn initialize(&self, within: Duration) -> Result<ServerInfo, AgentError> {
        let params = json!({
            "clientInfo": {"name": "mala", "version": env!("CARGO_PKG_VERSION")},
            "capabilities": {"experimentalApi": true},
        });
        let answered = tokio::time::timeout(within, self.rpc.request("initialize", params)).await;
        let result = match answered {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                return Err(AgentError::new(
                    AgentErrorKind::CouldNotStart,
                    error.to_string(),
                ));
            }
            Err(_) => {
                return Err(AgentError::new(
                    AgentErrorKind::CouldNotStart,
                    format!("codex app-server did not answer `initialize` within {within:?}"),
                ));
            }
        };
        self.rpc.notify("initialized", json!({}));
        let text = |key: &str| {
            result
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(ServerInfo {
            user_agent: text("userAgent"),
            codex_home: text("codexHome"),
        })
    }

    /// Refuses a configuration whose MCP servers the agent would get, as
    /// codex sees it from `cwd`: their calls ask no approval, so mala's
    /// guard could not see them (and codex merges, not replaces, a `-c`
    /// that would switch them all off).
    pub(crate) async fn refuse_mcp_servers(&self, cwd: &Path) -> Result<(), AgentError> {
        let read = self.rpc.request("config/read", json!({"cwd": cwd})).await;
        let config =
            read.map_err(|e| AgentError::new(AgentErrorKind::CouldNotStart, e.to_string()))?;
        let servers = config
            .pointer("/config/mcp_servers")
            .and_then(Value::as_object);
        let enabled: Vec<&str> = servers
            .into_iter()
            .flatten()
            .filter(|(_, server)| server["enabled"] != json!(false))
            .map(|(name, _)| name.as_str())
            .collect();
        if enabled.is_empty() {
            return Ok(());
        }
        Err(AgentError::new(
            AgentErrorKind::CouldNotStart,
            format!(
                "the codex configuration gives the agent MCP servers ({}); calls to them ask no \
                 approval, so mala's guard could not see them. Set `enabled = false` on them \
                 (or run mala with a CODEX_HOME without them)",
                enabled.join(", ")
            ),
        ))
    }

    /// The process's id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to end by itself (its stdin closed), or kills
    /// its group after `grace`.
    pub(crate) async fn close(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        drop(self.rpc);
        if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return Some(status);
        }
        if let Some(pid) = self.child.id() {
            crate::process_tree::kill_tree(pid);
        }
        let _ = self.child.wait().await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_testkit::{Tool, require_tool};

    /// The pinned binary, started as mala starts it, answers the handshake
    /// with the home it was given, and ends when its stdin closes.
    #[tokio::test]
    async fn the_pinned_app_server_answers_the_handshake_and_ends_with_its_input() {
        let binary = require_tool!(Tool::Codex);
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("codex-home");
        std::fs::create_dir_all(&home).unwrap();
        let mut command = AppServerCommand::new(binary);
        command.clear_env = true;
        command.env = vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), dir.path().display().to_string()),
            ("CODEX_HOME".into(), home.display().to_string()),
        ];
        let server = AppServer::start(&command, dir.path()).unwrap();
        let info = server.initialize(Duration::from_secs(30)).await.unwrap();
        assert!(info.user_agent.contains("0.171.0"), "{info:?}");
        assert_eq!(
            std::path::Path::new(&info.codex_home)
                .canonicalize()
                .unwrap(),
            home.canonicalize().unwrap(),
            "the home mala passed through"
        );
        let status = server.close(Duration::from_secs(20)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }

    #[tokio::test]
    async fn a_binary_that_is_not_there_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let error = AppServer::start(&AppServerCommand::new(dir.path().join("codex")), dir.path())
            .expect_err("no binary");
        assert_eq!(error.kind, AgentErrorKind::CouldNotStart);
        assert!(error.message.contains("could not start"), "{error}");
    }
}
