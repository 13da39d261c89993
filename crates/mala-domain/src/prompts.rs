//! The prompts mala sends, from `prompts/*.md`, rendered strictly: a
//! template may only use the variables its kind declares, must use every one
//! of them, and rendering needs a value for each.

use std::collections::BTreeMap;

/// Which prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PromptKind {
    Implementer,
    /// The implementer in a worktree of its own (`isolation: worktree`).
    ImplementerWorktree,
    GateFollowup,
    ReviewFollowup,
    IdleResume,
    RunResume,
    Fixer,
    Reviewer,
    EpicVerification,
    /// A landed branch that conflicted or failed on the merged result.
    MergeFollowup,
}

impl PromptKind {
    pub const ALL: [Self; 10] = [
        Self::Implementer,
        Self::ImplementerWorktree,
        Self::MergeFollowup,
        Self::GateFollowup,
        Self::ReviewFollowup,
        Self::IdleResume,
        Self::RunResume,
        Self::Fixer,
        Self::Reviewer,
        Self::EpicVerification,
    ];

    fn source(self) -> (&'static str, &'static str) {
        match self {
            Self::Implementer => (
                "implementer.md",
                include_str!("../../../prompts/implementer.md"),
            ),
            Self::ImplementerWorktree => (
                "implementer_worktree.md",
                include_str!("../../../prompts/implementer_worktree.md"),
            ),
            Self::MergeFollowup => (
                "merge_followup.md",
                include_str!("../../../prompts/merge_followup.md"),
            ),
            Self::GateFollowup => (
                "gate_followup.md",
                include_str!("../../../prompts/gate_followup.md"),
            ),
            Self::ReviewFollowup => (
                "review_followup.md",
                include_str!("../../../prompts/review_followup.md"),
            ),
            Self::IdleResume => (
                "idle_resume.md",
                include_str!("../../../prompts/idle_resume.md"),
            ),
            Self::RunResume => (
                "run_resume.md",
                include_str!("../../../prompts/run_resume.md"),
            ),
            Self::Fixer => ("fixer.md", include_str!("../../../prompts/fixer.md")),
            Self::Reviewer => ("reviewer.md", include_str!("../../../prompts/reviewer.md")),
            Self::EpicVerification => (
                "epic_verification.md",
                include_str!("../../../prompts/epic_verification.md"),
            ),
        }
    }

    /// The variables this kind of prompt takes.
    pub fn variables(self) -> &'static [&'static str] {
        match self {
            Self::Implementer | Self::ImplementerWorktree => &[
                "issue_id",
                "repo_path",
                "title",
                "description",
                "acceptance_criteria",
                "validation_commands",
                "commit_prefix",
            ],
            Self::GateFollowup => &[
                "issue_id",
                "attempt",
                "max_attempts",
                "failure_reasons",
                "commands_to_run",
                "commit_how",
                "commit_prefix",
            ],
            Self::MergeFollowup => &[
                "issue_id",
                "attempt",
                "max_attempts",
                "target",
                "problem",
                "steps",
                "validation_commands",
                "commit_prefix",
            ],
            Self::ReviewFollowup => &[
                "issue_id",
                "attempt",
                "max_attempts",
                "findings",
                "locking",
                "commit_prefix",
            ],
            Self::IdleResume => &["issue_id"],
            Self::RunResume => &["issue_id", "commit_prefix"],
            Self::Fixer => &[
                "attempt",
                "max_attempts",
                "failed_command",
                "failure_output",
                "validation_commands",
            ],
            Self::Reviewer => &[
                "issue_id",
                "title",
                "description",
                "acceptance_criteria",
                "commits",
                "context",
            ],
            Self::EpicVerification => &["epic_id", "title", "acceptance_criteria", "children"],
        }
    }
}

/// A template that cannot be loaded or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("prompts/{file}: unknown variable {{{{{name}}}}} (known: {known})")]
    Unknown {
        file: String,
        name: String,
        known: String,
    },
    #[error("prompts/{file}: declares {{{{{name}}}}} but never uses it")]
    Unused { file: String, name: String },
    #[error("prompts/{file}: unclosed {{{{ at byte {at}")]
    Unclosed { file: String, at: usize },
    #[error("prompts/{file}: rendering without a value for {{{{{name}}}}}")]
    Missing { file: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    file: &'static str,
    pieces: Vec<Piece>,
}

impl Template {
    /// Loads and checks one template.
    pub fn load(kind: PromptKind) -> Result<Self, PromptError> {
        let (file, text) = kind.source();
        Self::parse(file, text, kind.variables())
    }

    fn parse(file: &'static str, text: &str, variables: &[&str]) -> Result<Self, PromptError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            pieces.push(Piece::Text(rest[..start].to_owned()));
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(PromptError::Unclosed {
                file: file.to_owned(),
                at: offset + start,
            })?;
            let name = after[..end].trim().to_owned();
            if !variables.contains(&name.as_str()) {
                return Err(PromptError::Unknown {
                    file: file.to_owned(),
                    name,
                    known: variables.join(", "),
                });
            }
            pieces.push(Piece::Var(name));
            offset += start + 2 + end + 2;
            rest = &after[end + 2..];
        }
        pieces.push(Piece::Text(rest.to_owned()));
        for name in variables {
            if !pieces
                .iter()
                .any(|p| matches!(p, Piece::Var(v) if v == name))
            {
                return Err(PromptError::Unused {
                    file: file.to_owned(),
                    name: (*name).to_owned(),
                });
            }
        }
        Ok(Self { file, pieces })
    }

    /// Fills in every variable; a missing value is an error.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> Result<String, PromptError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(name) => {
                    let value = values
                        .get(name.as_str())
                        .ok_or_else(|| PromptError::Missing {
                            file: self.file.to_owned(),
                            name: name.clone(),
                        })?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

/// Renders one prompt.
pub fn render_prompt(kind: PromptKind, values: &[(&str, String)]) -> Result<String, PromptError> {
    let values: BTreeMap<&str, String> = values.iter().cloned().collect();
    Template::load(kind)?.render(&values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_prompt_loads() {
        for kind in PromptKind::ALL {
            Template::load(kind).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn unknown_unused_unclosed_and_missing_variables_are_errors() {
        let err = Template::parse("t.md", "Hi {{name}} {{nope}}", &["name"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prompts/t.md: unknown variable {{nope}} (known: name)"
        );
        let err = Template::parse("t.md", "Hi", &["name"]).unwrap_err();
        assert!(matches!(err, PromptError::Unused { .. }));
        let err = Template::parse("t.md", "Hi {{name", &["name"]).unwrap_err();
        assert!(matches!(err, PromptError::Unclosed { at: 3, .. }));
        let template = Template::parse("t.md", "Hi {{ name }}!", &["name"]).unwrap();
        assert!(matches!(
            template.render(&BTreeMap::new()),
            Err(PromptError::Missing { .. })
        ));
        let values = BTreeMap::from([("name", "Ada".to_owned())]);
        assert_eq!(template.render(&values).unwrap(), "Hi Ada!");
    }

    #[test]
    fn the_implementer_prompt_carries_the_contract() {
        let text = render_prompt(
            PromptKind::Implementer,
            &[
                ("issue_id", "m-1".into()),
                ("repo_path", "/repo".into()),
                ("title", "Fix the parser".into()),
                ("description", "It crashes.".into()),
                ("acceptance_criteria", "- no crash".into()),
                ("validation_commands", "   - `cargo test`".into()),
                ("commit_prefix", "bd-m-1:".into()),
            ],
        )
        .unwrap();
        for needle in [
            "Fix the parser",
            "- no crash",
            "lock_acquire",
            "`cargo test`",
            "bd-m-1: fix the parser",
            "ISSUE_DOCS_ONLY",
            "mcp__mala__commit",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }
}
