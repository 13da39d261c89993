//! Committing the tracker's files at the end of a run, so the issues' new
//! states travel with the code (br never runs git itself).

use std::path::Path;

use mala_core::TrackerError;
use tokio::process::Command;

async fn git(repo: &Path, args: &[&str]) -> Result<std::process::Output, TrackerError> {
    Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| TrackerError::io(format!("git {}", args.join(" ")), e))
}

fn failed(args: &[&str], output: &std::process::Output) -> TrackerError {
    TrackerError::Unavailable(format!(
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Stages `.beads/` (br's own `.gitignore` keeps the database out) and
/// commits only those paths, whatever else is staged. Returns the new commit
/// id, or `None` when the tracker's files did not change.
pub async fn commit_tracker_files(
    repo: &Path,
    message: &str,
) -> Result<Option<String>, TrackerError> {
    let add = ["add", "--", ".beads"];
    let output = git(repo, &add).await?;
    if !output.status.success() {
        return Err(failed(&add, &output));
    }
    let diff = ["diff", "--cached", "--quiet", "--", ".beads"];
    if git(repo, &diff).await?.status.success() {
        return Ok(None);
    }
    // Repository hooks run, as they would for a person committing.
    let commit = ["commit", "--quiet", "-m", message, "--", ".beads"];
    let output = git(repo, &commit).await?;
    if !output.status.success() {
        return Err(failed(&commit, &output));
    }
    let head = ["rev-parse", "HEAD"];
    let output = git(repo, &head).await?;
    if !output.status.success() {
        return Err(failed(&head, &output));
    }
    Ok(Some(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}
