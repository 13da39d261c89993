//! What one `mala run` is asked to do, beyond the project's configuration.

use std::fmt;
use std::str::FromStr;

use mala_core::IssueId;
use serde::Serialize;

/// Which issues a run may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Scope {
    All,
    /// An epic and all its descendants.
    Epic(IssueId),
    /// Issues without a parent epic.
    Orphans,
    /// Exactly these issues (duplicates removed, first occurrence kept).
    Ids(Vec<IssueId>),
}

/// A `--scope` value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope `{0}`: expected all, orphans, epic:<id> or ids:<id>,<id>,...")]
pub struct ParseScopeError(String);

impl FromStr for Scope {
    type Err = ParseScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseScopeError(s.to_owned());
        match s {
            "all" => Ok(Self::All),
            "orphans" => Ok(Self::Orphans),
            _ => {
                if let Some(epic) = s.strip_prefix("epic:") {
                    let epic = epic.trim();
                    if epic.is_empty() || epic.contains(',') {
                        return Err(bad());
                    }
                    Ok(Self::Epic(IssueId::new(epic)))
                } else if let Some(ids) = s.strip_prefix("ids:") {
                    let mut out: Vec<IssueId> = Vec::new();
                    for id in ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
                        let id = IssueId::new(id);
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                    if out.is_empty() {
                        return Err(bad());
                    }
                    Ok(Self::Ids(out))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Orphans => f.write_str("orphans"),
            Self::Epic(id) => write!(f, "epic:{id}"),
            Self::Ids(ids) => {
                f.write_str("ids:")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(id.as_str())?;
                }
                Ok(())
            }
        }
    }
}

/// In which order ready issues are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Group by epic, epics by priority; the default.
    #[default]
    EpicPriority,
    /// By issue priority alone.
    IssuePriority,
    /// Only the first epic group.
    Focus,
    /// The order given in `--scope ids:`.
    Input,
}

impl Order {
    pub const WORDS: &'static [&'static str] =
        &["epic-priority", "issue-priority", "focus", "input"];
}

impl FromStr for Order {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epic-priority" => Ok(Self::EpicPriority),
            "issue-priority" => Ok(Self::IssuePriority),
            "focus" => Ok(Self::Focus),
            "input" => Ok(Self::Input),
            _ => Err(format!(
                "invalid order `{s}`: expected one of {}",
                Self::WORDS.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        for text in ["all", "orphans", "epic:m-1", "ids:a,b,c"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn ids_scope_drops_duplicates_keeping_the_first() {
        let scope: Scope = "ids:b,a,b".parse().unwrap();
        assert_eq!(scope, Scope::Ids(vec!["b".into(), "a".into()]));
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for text in ["", "epic:", "ids:", "ids:,", "everything", "epic:a,b"] {
            assert!(text.parse::<Scope>().is_err(), "{text} should fail");
        }
    }
}
