//! The real `codex` binary, offline, against [`MockResponses`]: a private
//! `CODEX_HOME` whose config.toml makes the mock its model provider, as a
//! user's own configuration would (mala passes it through untouched).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::MockResponses;

/// A private home and `CODEX_HOME` for the real codex binary.
#[derive(Debug)]
pub struct CodexHarness {
    base_url: String,
    state: TempDir,
}

impl CodexHarness {
    pub fn new(mock: &MockResponses) -> Self {
        Self::for_url(&mock.url())
    }

    /// The same for a mock served at `url` (one in another process).
    pub fn for_url(url: &str) -> Self {
        let state = tempfile::Builder::new()
            .prefix("mala-codex-")
            .tempdir()
            .expect("create codex state directory");
        let harness = Self {
            base_url: url.to_owned(),
            state,
        };
        std::fs::create_dir_all(harness.state.path().join("home")).expect("create home");
        std::fs::create_dir_all(harness.codex_home()).expect("create CODEX_HOME");
        let config = format!(
            "model_provider = \"mock\"\n\n[model_providers.mock]\nname = \"mock\"\n\
             base_url = \"{}/v1\"\nwire_api = \"responses\"\nenv_key = \"MOCK_API_KEY\"\n\
             request_max_retries = 0\nstream_max_retries = 0\n",
            harness.base_url
        );
        std::fs::write(harness.codex_home().join("config.toml"), config)
            .expect("write config.toml");
        harness
    }

    /// The private `CODEX_HOME` (config.toml, sessions, rules).
    pub fn codex_home(&self) -> PathBuf {
        self.state.path().join("codex")
    }

    /// The offline environment. The proxy variables point at the mock,
    /// which refuses and records any attempt to reach another host.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.state.path().join("home");
        [
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME", home.display().to_string()),
            ("CODEX_HOME", self.codex_home().display().to_string()),
            ("MOCK_API_KEY", "mock-key".to_owned()),
            ("HTTPS_PROXY", self.base_url.clone()),
            ("HTTP_PROXY", self.base_url.clone()),
            ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Where the harness keeps its state.
    pub fn root(&self) -> &Path {
        self.state.path()
    }
}
