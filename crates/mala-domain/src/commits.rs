//! What makes a commit an issue's commit. The commit tool and the quality
//! gate use these same rules.

use mala_core::{IssueId, Refusal};

/// Whether a commit subject belongs to `issue`: it starts with `bd-<id>:`.
/// (`bd-m-1:` is not a commit of `m-10`, and `bd-m-10:` is not one of `m-1`.)
pub fn is_issue_commit(subject: &str, issue: &IssueId) -> bool {
    subject.trim_start().starts_with(&issue.commit_prefix())
}

/// Why `message` cannot be `issue`'s commit message, if it cannot; worded
/// for the agent who wrote it.
pub fn check_commit_message(message: &str, issue: &IssueId) -> Result<(), Refusal> {
    let subject = message.lines().next().unwrap_or_default();
    let prefix = issue.commit_prefix();
    if !is_issue_commit(subject, issue) {
        return Err(Refusal(format!(
            "the commit message must start with `{prefix}` followed by a summary, e.g. `{prefix} fix the parser`"
        )));
    }
    if subject.trim_start()[prefix.len()..].trim().is_empty() {
        return Err(Refusal(format!(
            "the commit message needs a summary after `{prefix}`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_names_exactly_one_issue() {
        let issue = IssueId::from("m-1");
        assert!(is_issue_commit("bd-m-1: fix", &issue));
        assert!(!is_issue_commit("bd-m-10: fix", &issue));
        assert!(!is_issue_commit("bd-m-1 fix", &issue));
        assert!(!is_issue_commit("fix bd-m-1: later", &issue));
        assert!(!is_issue_commit("bd-m-1: x", &IssueId::from("m-10")));
    }

    #[test]
    fn messages_need_the_prefix_and_a_summary() {
        let issue = IssueId::from("m-1");
        assert!(check_commit_message("bd-m-1: fix the parser\n\nbody", &issue).is_ok());
        assert!(
            check_commit_message("bd-m-1:   ", &issue)
                .unwrap_err()
                .0
                .contains("summary")
        );
        assert!(
            check_commit_message("fix the parser", &issue)
                .unwrap_err()
                .0
                .contains("bd-m-1:")
        );
    }
}
