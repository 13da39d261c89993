//! Configuration errors that point at the offending place.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value (or error) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    Env {
        var: String,
    },
    Flag {
        flag: String,
    },
    Preset {
        name: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Self::Env { var } => write!(f, "environment variable {var}"),
            Self::Flag { flag } => write!(f, "flag {flag}"),
            Self::Preset { name } => write!(f, "preset {name}"),
        }
    }
}

/// A configuration problem, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub location: Option<Location>,
    /// Dotted key path, e.g. `validation_triggers.run_end.failure_mode`.
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            location: None,
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.key = (!key.is_empty()).then_some(key);
        self
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `did you mean `x`?`, or `expected one of ...` when nothing is close.
pub(crate) fn suggestion(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("expected one of {}", candidates.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_location_key_message_and_hint_in_order() {
        let err = ConfigError::new("unknown key `tset`")
            .at(Location::File {
                path: "mala.yaml".into(),
                line: 3,
                column: 5,
            })
            .key("commands.tset")
            .hint("did you mean `test`?");
        assert_eq!(
            err.to_string(),
            "mala.yaml:3:5: commands.tset: unknown key `tset`\n  hint: did you mean `test`?"
        );
    }

    #[test]
    fn typos_find_their_word_and_strangers_get_the_list() {
        assert_eq!(closest("tiemout", ["timeout", "command"]), Some("timeout"));
        assert_eq!(suggestion("zzz", &["a", "b"]), "expected one of a, b");
    }
}
