//! Finding the external binaries tests run: `br`, `claude` and `codex`.

use std::path::{Path, PathBuf};

/// The pinned Claude Code version; `scripts/install-claude.sh` installs it.
const CLAUDE_PIN: &str = "2.1.197";
/// The pinned Codex CLI version; `scripts/install-codex.sh` installs it.
const CODEX_PIN: &str = "0.171.0";

/// An external program some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Br,
    Claude,
    Codex,
    /// Debian's Chromium, for the dashboard's browser tests.
    Chromium,
    /// Debian's ChromeDriver, which drives it.
    Chromedriver,
}

impl Tool {
    fn env_var(self) -> &'static str {
        match self {
            Self::Br => "MALA_TEST_BR",
            Self::Claude => "MALA_TEST_CLAUDE",
            Self::Codex => "MALA_TEST_CODEX",
            Self::Chromium => "MALA_TEST_CHROMIUM",
            Self::Chromedriver => "MALA_TEST_CHROMEDRIVER",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Self::Br => {
                "scripts/install-br.sh (cargo +nightly install beads_rust --locked --version 0.7.6)"
            }
            Self::Claude => {
                "scripts/install-claude.sh (npm package @anthropic-ai/claude-code 2.1.197)"
            }
            Self::Codex => "scripts/install-codex.sh (npm package @openai/codex 0.171.0)",
            Self::Chromium | Self::Chromedriver => {
                "scripts/install-chromium.sh (Debian packages chromium and chromium-driver)"
            }
        }
    }
}

/// Where the tool is: `$MALA_TEST_BR` / `$MALA_TEST_CLAUDE` /
/// `$MALA_TEST_CODEX`, then the install scripts' locations, then PATH.
pub fn find_tool(tool: Tool) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(tool.env_var()).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let tools_dir = std::env::var_os("MALA_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cache/mala-tools")));
    let candidates: Vec<PathBuf> = match tool {
        Tool::Br => home.iter().map(|h| h.join(".cargo/bin/br")).collect(),
        Tool::Claude => tools_dir
            .iter()
            .map(|d| {
                d.join(format!("claude-{CLAUDE_PIN}"))
                    .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude")
            })
            .collect(),
        Tool::Codex => tools_dir
            .iter()
            .map(|d| {
                d.join(format!("codex-{CODEX_PIN}")).join(
                    "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
                )
            })
            .collect(),
        Tool::Chromium => vec![PathBuf::from("/usr/bin/chromium")],
        Tool::Chromedriver => vec![PathBuf::from("/usr/bin/chromedriver")],
    };
    let name = match tool {
        Tool::Br => "br",
        Tool::Claude => "claude",
        Tool::Codex => "codex",
        Tool::Chromium => "chromium",
        Tool::Chromedriver => "chromedriver",
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| on_path(name))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tool, or `None` after a loud skip message. In CI (`CI` set) a missing
/// tool fails the test instead: CI must never skip these.
pub fn tool_or_skip(tool: Tool, test: &str) -> Option<PathBuf> {
    if let Some(path) = find_tool(tool) {
        return Some(path);
    }
    let message = format!(
        "{tool:?} is not installed: set {} or install it with {}",
        tool.env_var(),
        tool.install_hint()
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {message} (CI must not skip this test)"
    );
    eprintln!("\n*** SKIPPED {test}: {message} ***\n");
    None
}

/// Returns the tool's path, or returns from the calling test after a loud skip.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        match $crate::tool_or_skip($tool, module_path!()) {
            Some(path) => path,
            None => return,
        }
    };
}
