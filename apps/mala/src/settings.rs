//! From the command line and the environment to validated `Settings`.
//!
//! This is the only place that reads the process environment; libraries get
//! the values passed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mala_domain::{
    ConfigError, ConfigFile, ConfigSources, FlagOverrides, Settings, parse_config, resolve,
};

use crate::cli::CoderArgs;
use crate::failure::Failure;

/// The variables resolution may read: `MALA_*`, plus HOME and XDG_CONFIG_HOME for default paths.
pub(crate) fn environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("MALA_") || k == "HOME" || k == "XDG_CONFIG_HOME")
        .collect()
}

/// What `mala guard hook` takes from its environment, set by whoever
/// installed the hook for an agent.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookEnvironment {
    pub(crate) agent: Option<String>,
    pub(crate) repo_root: Option<PathBuf>,
}

pub(crate) fn hook_environment() -> HookEnvironment {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    HookEnvironment {
        agent: var("MALA_AGENT_ID"),
        repo_root: var("MALA_REPO_ROOT").map(PathBuf::from),
    }
}

/// The first executable file called `name` on PATH.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Which configuration file applies, and whether the user named it.
#[derive(Debug, Clone)]
pub(crate) struct ConfigPath {
    pub(crate) path: PathBuf,
    pub(crate) explicit: bool,
}

impl ConfigPath {
    pub(crate) fn new(repo: &Path, config: Option<&Path>) -> Self {
        match config {
            Some(path) => Self {
                path: path.to_path_buf(),
                explicit: true,
            },
            None => Self {
                path: display_path(&repo.join("mala.yaml")),
                explicit: false,
            },
        }
    }
}

/// `./mala.yaml` reads better as `mala.yaml`.
fn display_path(path: &Path) -> PathBuf {
    path.strip_prefix(".")
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

/// Reads and parses the configuration file. `Ok(None)`: the default file does not exist.
pub(crate) fn read_config(config: &ConfigPath) -> Result<Option<ConfigFile>, Failure> {
    match std::fs::read_to_string(&config.path) {
        Ok(text) => Ok(Some(parse_config(&config.path, &text)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !config.explicit => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure::Config(
            ConfigError::new(format!(
                "configuration file {} not found",
                config.path.display()
            ))
            .hint("check the --config path (it is relative to the current directory)"),
        )),
        Err(error) => Err(Failure::Io {
            path: config.path.clone(),
            action: "read",
            error,
        }),
    }
}

pub(crate) fn flag_overrides(coder: Option<&CoderArgs>, timeout: Option<u64>) -> FlagOverrides {
    let mut flags = FlagOverrides {
        timeout_minutes: timeout,
        ..FlagOverrides::default()
    };
    if let Some(c) = coder {
        flags.coder = c.coder;
        flags.amp_mode = c.amp_mode;
        flags.model.clone_from(&c.model);
        flags.effort = c.effort;
        flags.claude_settings_sources = c.claude_settings_sources.clone().map(|s| s.0);
        flags.codex_approval_policy = c.codex_approval_policy;
        flags.codex_sandbox = c.codex_sandbox;
    }
    flags
}

/// Loads, layers and validates everything into `Settings`.
pub(crate) fn load_settings(
    config: &ConfigPath,
    flags: &FlagOverrides,
) -> Result<(Settings, Option<ConfigFile>), Failure> {
    let file = read_config(config)?;
    let env = environment();
    let settings = resolve(ConfigSources {
        file: file.as_ref(),
        env: &env,
        flags,
    })?;
    Ok((settings, file))
}
