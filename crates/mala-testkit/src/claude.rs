//! The real `claude` binary, offline, against [`MockAnthropic`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use crate::MockAnthropic;

/// The Claude Code version the project pins; tests assert the binary reports it.
pub const CLAUDE_VERSION: &str = "2.1.197";

/// Runs the real claude binary with a private home and config directory and
/// an environment that keeps it on 127.0.0.1 (`research/claude-offline-howto.md`).
#[derive(Debug)]
pub struct ClaudeHarness {
    binary: PathBuf,
    base_url: String,
    state: TempDir,
}

/// What one print-mode run produced.
#[derive(Debug)]
pub struct ClaudeRun {
    pub output: Output,
    /// stdout parsed as stream-json lines.
    pub lines: Vec<Value>,
}

impl ClaudeRun {
    /// The final `result` line.
    pub fn result(&self) -> Option<&Value> {
        self.lines.iter().rev().find(|l| l["type"] == "result")
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl ClaudeHarness {
    pub fn new(binary: &Path, mock: &MockAnthropic) -> Self {
        Self::with_url(binary, &mock.url())
    }

    /// The same for a mock served by another process, at `base_url`.
    pub fn with_url(binary: &Path, base_url: &str) -> Self {
        let state = tempfile::Builder::new()
            .prefix("mala-claude-")
            .tempdir()
            .expect("create claude state directory");
        std::fs::create_dir_all(state.path().join("home")).expect("create home");
        std::fs::create_dir_all(state.path().join("config")).expect("create config dir");
        Self {
            binary: binary.to_path_buf(),
            base_url: base_url.to_owned(),
            state,
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The private CLAUDE_CONFIG_DIR (sessions and transcripts live here).
    pub fn config_dir(&self) -> PathBuf {
        self.state.path().join("config")
    }

    /// The offline environment. The proxy variables point at the mock, which
    /// refuses and records any attempt to reach another host.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.state.path().join("home");
        [
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME", home.display().to_string()),
            ("CLAUDE_CONFIG_DIR", self.config_dir().display().to_string()),
            ("ANTHROPIC_BASE_URL", self.base_url.clone()),
            ("ANTHROPIC_API_KEY", "sk-ant-offline-test".to_owned()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
            ("DISABLE_AUTOUPDATER", "1".to_owned()),
            ("DISABLE_TELEMETRY", "1".to_owned()),
            ("DISABLE_ERROR_REPORTING", "1".to_owned()),
            ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
            // bypassPermissions is refused for root unless the CLI is told it is sandboxed.
            ("IS_SANDBOX", "1".to_owned()),
            ("HTTPS_PROXY", self.base_url.clone()),
            ("HTTP_PROXY", self.base_url.clone()),
            ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The environment a `mala` under test runs in: the offline one, with
    /// `bin` (where `br` and `claude` are) first on PATH, and mala's lock
    /// and run directories under `scratch`.
    pub fn mala_env(&self, bin: &Path, scratch: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env()
            .into_iter()
            .filter(|(k, _)| k != "PATH")
            .collect();
        for (key, value) in [
            (
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            ),
            ("MALA_LOCK_DIR", scratch.join("locks").display().to_string()),
            ("MALA_RUNS_DIR", scratch.join("runs").display().to_string()),
            ("MALA_MODEL", "claude-sonnet-4-5".to_owned()),
        ] {
            env.push((key.to_owned(), value));
        }
        env
    }

    /// A `claude` command with the offline environment and nothing else.
    pub fn command(&self, cwd: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        command.env_clear().envs(self.env()).current_dir(cwd);
        command
    }

    /// `claude --version`.
    pub fn version(&self) -> String {
        let output = Command::new(&self.binary)
            .arg("--version")
            .env_clear()
            .envs(self.env())
            .output()
            .expect("run claude --version");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs one print-mode turn (`-p`) with stream-json output in `cwd`.
    pub fn print(&self, cwd: &Path, prompt: &str) -> ClaudeRun {
        let output = self
            .command(cwd)
            .args([
                "-p",
                prompt,
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "bypassPermissions",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run claude");
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        ClaudeRun { output, lines }
    }
}
