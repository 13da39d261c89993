//! One `codex app-server` process: started in its own process group, its
//! stdio a [`RpcClient`], killed with its group when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use mala_core::{AgentError, AgentErrorKind, AgentId};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::rpc::{Inbound, RpcClient};
use crate::session_record::SessionRecord;

/// What mala turns off in every app-server: features whose start-up talks
/// to the network (plugin and app catalogues on github.com and chatgpt.com),
/// and tools that act outside the commands and file changes mala's guard
/// answers (sub-agents, which mala runs itself; a browser, the desktop,
/// images written to disk).
const DISABLED_FEATURES: [&str; 11] = [
    "plugins",
    "remote_plugin",
    "apps",
    "plugin_sharing",
    "multi_agent",
    "browser_use",
    "in_app_browser",
    "computer_use",
    "image_generation",
    "code_mode",
    "code_mode_only",
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
    /// Where session records go (`<state dir>`); `None` keeps none.
    pub(crate) state_dir: Option<PathBuf>,
}

impl AppServerCommand {
    pub(crate) fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            settings: vec![("analytics.enabled".to_owned(), "false".to_owned())],
            clear_env: false,
            env: Vec::new(),
            parent_death_wrapper: None,
            state_dir: None,
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
    /// `None` for a test's server on in-memory pipes.
    child: Option<Child>,
    pub(crate) rpc: RpcClient,
    /// What the server sends that is not an answer to us.
    pub(crate) inbox: mpsc::UnboundedReceiver<Inbound>,
    /// Every line of the connection, when kept.
    record: Option<Arc<SessionRecord>>,
    /// The server's process, as what its commands leave running knows it.
    process: Option<crate::process_tree::AgentProcess>,
}

/// What `initialize` told mala about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) user_agent: String,
    pub(crate) codex_home: String,
}

impl AppServer {
    /// A server on the other end of in-memory pipes (tests play it).
    #[cfg(test)]
    pub(crate) fn over(
        input: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        output: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        let (rpc, inbox) = RpcClient::start(input, output);
        Self {
            child: None,
            rpc,
            inbox,
            record: None,
            process: None,
        }
    }

    /// Starts the server in `cwd`.
    #[cfg(test)]
    pub(crate) fn start(command: &AppServerCommand, cwd: &Path) -> Result<Self, AgentError> {
        Self::start_for(command, cwd, None)
    }

    /// Starts the server in `cwd` for `agent`, whose session record (when
    /// the command keeps records) gets every line of the connection.
    pub(crate) fn start_for(
        command: &AppServerCommand,
        cwd: &Path,
        agent: Option<&AgentId>,
    ) -> Result<Self, AgentError> {
        let record = command
            .state_dir
            .as_deref()
            .zip(agent)
            .map(|(dir, agent)| Arc::new(SessionRecord::open(dir, agent)));
        let mut spawn = command.command(cwd);
        // What its commands leave running is known by it (`process_tree`).
        let marked = crate::process_tree::Marked::command(&mut spawn);
        let mut child = spawn.spawn().map_err(|error| {
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
        let (rpc, inbox) = RpcClient::start_recorded(stdout, stdin, record.clone());
        let process = marked.process(child.id());
        Ok(Self {
            child: Some(child),
            rpc,
            inbox,
            record,
            process,
        })
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

    /// Refuses execution-policy rules that allow commands (`decision =
    /// "allow"` in a `rules/*.rules` file of the user's codex home, the
    /// project's `.codex/` or `/etc/codex/`): codex runs what they allow
    /// without asking, so before mala's guard could refuse it.
    pub(crate) fn refuse_allow_rules(codex_home: &Path, cwd: &Path) -> Result<(), AgentError> {
        let dirs = [
            codex_home.join("rules"),
            cwd.join(".codex").join("rules"),
            PathBuf::from("/etc/codex/rules"),
        ];
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.flatten().map(|e| e.path()) {
                let allows = std::fs::read_to_string(&path).is_ok_and(|text| {
                    text.lines()
                        .filter(|line| !line.trim_start().starts_with('#'))
                        .any(|line| line.contains("allow"))
                });
                if allows {
                    return Err(AgentError::new(
                        AgentErrorKind::CouldNotStart,
                        format!(
                            "{} has codex rules that allow commands; codex runs those without \
                             asking, before mala's guard could refuse them. Move the file away \
                             (or run mala with a CODEX_HOME without it)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
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

    /// Writes out what the record holds so far (at every turn's end).
    pub(crate) fn flush_record(&self) {
        if let Some(record) = &self.record {
            record.flush();
        }
    }

    /// The process's id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// The agent's process, when it was started for one.
    pub(crate) fn process(&self) -> Option<&crate::process_tree::AgentProcess> {
        self.process.as_ref()
    }

    /// Waits for the process to end by itself (its stdin closed), or kills
    /// its group after `grace`.
    pub(crate) async fn close(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        drop(self.rpc);
        let mut child = self.child.take()?;
        let mut status = None;
        if let Ok(Ok(exited)) = tokio::time::timeout(grace, child.wait()).await {
            status = Some(exited);
        } else {
            if let Some(pid) = child.id() {
                crate::process_tree::kill_tree(pid);
            }
            let _ = child.wait().await;
        }
        // What its commands left running outlives it unless stopped.
        if let Some(process) = self.process.take() {
            process.stop_strays_blocking().await;
        }
        status
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

    /// A server that ignores its input closing and SIGTERM, with a command
    /// of its own running: after the grace, its whole group is killed.
    #[tokio::test]
    async fn a_server_that_will_not_end_is_killed_with_its_commands_after_the_grace() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("stubborn");
        let child_pid = dir.path().join("child.pid");
        std::fs::write(
            &binary,
            format!(
                // Written whole, then moved in place: the test never reads a half-written pid.
                "#!/bin/sh\ntrap '' TERM HUP\nsleep 600 &\necho $! > {pid}.part && mv {pid}.part {pid}\nexec 0<&-\nwhile :; do sleep 1; done\n",
                pid = child_pid.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = AppServer::start(&AppServerCommand::new(&binary), dir.path()).unwrap();
        let pid = server.pid().unwrap();
        for _ in 0..250 {
            if child_pid.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sleeper: u32 = std::fs::read_to_string(&child_pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let started = std::time::Instant::now();
        let status = server.close(Duration::from_millis(200)).await;
        assert!(status.is_none(), "it did not end by itself: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        assert!(!alive(pid), "the server is gone");
        // The group's kill reaches the command it started, even as an orphan.
        for _ in 0..100 {
            if !alive(sleeper) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(sleeper), "its command is gone too");
    }
}
