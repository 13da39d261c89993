//! Checks that cannot be weakened to get green.
//!
//! A passing run proves nothing when the agent changed what the checks run
//! or read: the test script, the lint configuration, mala.yaml. Such files
//! are *protected*: `mala.yaml`, the preset's `config_files`, the files the
//! required commands name, and `evidence_check.protected_files`. A commit
//! that changes one does not close its issue on the agent's evidence alone:
//! mala runs the required commands again on the agent's code with the
//! protected files as they were before the agent's first commit. A protected
//! file that is also a dependency manifest (`setup_files`: putting it back
//! would undo a dependency the code needs) cannot be checked that way; the
//! issue is then labelled for a person.

use crate::glob_matches;

/// What a commit's protected files call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedChanges {
    /// Protected files that can be put back for the re-run (relative paths).
    pub restorable: Vec<String>,
    /// Protected files that are also dependency manifests.
    pub unverifiable: Vec<String>,
}

impl ProtectedChanges {
    pub fn is_empty(&self) -> bool {
        self.restorable.is_empty() && self.unverifiable.is_empty()
    }
}

/// What counts as protected in a project.
#[derive(Debug, Clone, Copy)]
pub struct ProtectedFiles<'a> {
    /// The preset's `config_files` and `evidence_check.protected_files` (globs).
    pub globs: &'a [String],
    /// Paths the required commands name (`command_paths`).
    pub named: &'a [String],
    /// Dependency manifests (`setup_files`, globs).
    pub setup_files: &'a [String],
}

/// Sorts the files an issue's commits changed by what protecting them needs.
pub fn protected_changes(changed: &[String], protected: ProtectedFiles<'_>) -> ProtectedChanges {
    let mut out = ProtectedChanges::default();
    for file in changed {
        let named = protected.named.iter().any(|path| {
            let dir = path.trim_end_matches('/');
            file == dir
                || file
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        let globbed = file == "mala.yaml" || protected.globs.iter().any(|g| glob_matches(g, file));
        if !(named || globbed) {
            continue;
        }
        if protected.setup_files.iter().any(|g| glob_matches(g, file)) {
            out.unverifiable.push(file.clone());
        } else {
            out.restorable.push(file.clone());
        }
    }
    out.restorable.sort();
    out.restorable.dedup();
    out.unverifiable.sort();
    out.unverifiable.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command_paths;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_files_the_checks_run_or_read_are_protected() {
        let named: Vec<String> = [
            "bash scripts/check.sh --all",
            "uv run pytest tests/ -q",
            "cargo test",
            "grep -q fixed src/app.txt",
            "./ci/lint.sh src/",
        ]
        .iter()
        .flat_map(|c| command_paths(c))
        .collect();
        assert_eq!(
            named,
            strings(&["scripts/check.sh", "tests/", "ci/lint.sh"])
        );
        let globs = strings(&["clippy.toml", "pyproject.toml", "custom/*.cfg"]);
        let setup = strings(&["Cargo.toml", "pyproject.toml"]);
        let protected = ProtectedFiles {
            globs: &globs,
            named: &named,
            setup_files: &setup,
        };
        let changed = strings(&[
            "src/lib.rs",
            "scripts/check.sh",
            "tests/test_parser.py",
            "tests_extra.py",
            "mala.yaml",
            "clippy.toml",
            "custom/a.cfg",
            "pyproject.toml",
            "Cargo.toml",
        ]);
        let sorted = protected_changes(&changed, protected);
        assert_eq!(
            sorted.restorable,
            strings(&[
                "clippy.toml",
                "custom/a.cfg",
                "mala.yaml",
                "scripts/check.sh",
                "tests/test_parser.py"
            ])
        );
        assert_eq!(sorted.unverifiable, strings(&["pyproject.toml"]));
        assert!(protected_changes(&strings(&["src/lib.rs", "Cargo.toml"]), protected).is_empty());
    }
}
