//! The cerberus reviewer: the `cerberus` CLI (v2) runs its own panel of
//! reviewers on an issue's commits; mala reads the gate it resolves and the
//! findings each reviewer wrote.
//!
//! One review is three calls, all with the same environment:
//! 1. `cerberus author-context -- TEXT` (what the author said);
//! 2. `cerberus spawn-code-review --exclude .beads/ --context-file F [spawn_args] --commit SHA…`;
//! 3. `cerberus wait --json --finalize --session-key KEY --timeout T [wait_args]`, whose
//!    stdout is the resolved gate; the findings are under the state root in
//!    `<project>/<run key>/iterations/<n>/round-<m>/reviewers/<name>/output.json`
//!    for the highest `n` and `m`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use mala_core::{Finding, ReviewError, ReviewRequest, ReviewVerdict, Reviewer};
use serde::Deserialize;
use tokio::process::Command;
use tokio::sync::Mutex;

/// Extra time the `wait` process gets beyond its own `--timeout`.
const WAIT_SLACK: Duration = Duration::from_secs(30);
/// The other calls return at once.
const QUICK_CALL: Duration = Duration::from_secs(120);
/// `cerberus wait` exits with this when its own timeout passed.
const WAIT_TIMED_OUT: i32 = 3;

/// Where cerberus is and how mala calls it.
#[derive(Debug, Clone)]
pub struct CerberusConfig {
    pub binary: PathBuf,
    /// `CERBERUS_ROOT`: the installation, with `prompts/reviewers/`.
    pub root: PathBuf,
    /// Where cerberus keeps its gates and reviewer output for this run.
    pub state_root: PathBuf,
    pub repo_root: PathBuf,
    /// Seconds `cerberus wait` may take.
    pub timeout: u64,
    pub spawn_args: Vec<String>,
    pub wait_args: Vec<String>,
    /// `per_issue_review.cerberus.env`; `CERBERUS_PROJECT_KEY` here wins
    /// over the key mala derives from the repository path.
    pub env: BTreeMap<String, String>,
}

impl CerberusConfig {
    /// `CERBERUS_ROOT` when the user set it, else two levels above the binary
    /// (`<root>/bin/cerberus`).
    pub fn default_root(binary: &Path, from_env: Option<PathBuf>) -> PathBuf {
        from_env.unwrap_or_else(|| {
            binary
                .parent()
                .and_then(Path::parent)
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
    }

    fn project_key(&self) -> String {
        // The same 16 hex digits of sha256 the original derives from the path.
        self.env
            .get("CERBERUS_PROJECT_KEY")
            .cloned()
            .unwrap_or_else(|| crate::locks::lock_file_stem(&self.repo_root.to_string_lossy()))
    }
}

/// Why the cerberus installation cannot serve a run; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CerberusSetupError {
    #[error(
        "cerberus is not installed at {}; install it, or set per_issue_review.reviewer_type: agent_sdk",
        .0.display()
    )]
    NotInstalled(PathBuf),
    #[error(
        "CERBERUS_ROOT ({}) has no prompts/reviewers/; set CERBERUS_ROOT to the cerberus installation",
        .0.display()
    )]
    NoPrompts(PathBuf),
}

/// Checks the installation before a run depends on it.
pub fn check_cerberus(config: &CerberusConfig) -> Result<(), CerberusSetupError> {
    if !config.binary.is_file() {
        return Err(CerberusSetupError::NotInstalled(config.binary.clone()));
    }
    let prompts = config.root.join("prompts").join("reviewers");
    if !prompts.is_dir() {
        return Err(CerberusSetupError::NoPrompts(config.root.clone()));
    }
    Ok(())
}

/// Reviews with the cerberus CLI.
#[derive(Debug)]
pub struct CerberusReviewer {
    config: CerberusConfig,
    /// cerberus keeps one gate per project: reviews of one project take turns.
    turn: Mutex<()>,
}

/// The resolved gate `cerberus wait --json` prints.
#[derive(Debug, Deserialize)]
struct Gate {
    status: String,
    verdict: String,
    run_key: String,
    project_key: String,
    current_iteration: u64,
}

#[derive(Debug, Deserialize)]
struct ReviewerOutput {
    #[serde(default)]
    findings: Vec<RawFinding>,
}

#[derive(Debug, Deserialize)]
struct RawFinding {
    #[serde(default)]
    file_path: Option<String>,
    #[serde(default)]
    line_start: Option<u32>,
    #[serde(default)]
    line_end: Option<u32>,
    /// Missing means advisory.
    #[serde(default)]
    priority: Option<u8>,
    title: String,
    #[serde(default)]
    body: String,
}

struct Called {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CerberusReviewer {
    pub fn new(config: CerberusConfig) -> Self {
        Self {
            config,
            turn: Mutex::new(()),
        }
    }

    async fn call(
        &self,
        args: &[String],
        run_key: &str,
        session: &str,
        limit: Duration,
    ) -> Result<Called, ReviewError> {
        let mut command = Command::new(&self.config.binary);
        command
            .args(args)
            .current_dir(&self.config.repo_root)
            .envs(&self.config.env)
            .env("CERBERUS_HOST", "generic")
            .env("CERBERUS_PROJECT_KEY", self.config.project_key())
            .env("CERBERUS_ROOT", &self.config.root)
            .env("CERBERUS_RUN_KEY", run_key)
            .env("CERBERUS_STATE_ROOT", &self.config.state_root)
            .env("CLAUDE_SESSION_ID", session)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            ReviewError::Unavailable(format!(
                "could not start {}: {e}",
                self.config.binary.display()
            ))
        })?;
        let verb = args.first().map_or("", String::as_str);
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                ReviewError::Failed(format!(
                    "cerberus {verb} did not finish in {} s",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| ReviewError::Failed(format!("cerberus {verb}: {e}")))?;
        Ok(Called {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The findings of every reviewer in the last round of the last iteration.
    fn read_findings(&self, gate: &Gate) -> Result<Vec<Finding>, ReviewError> {
        let run_dir = self
            .config
            .state_root
            .join(&gate.project_key)
            .join(&gate.run_key)
            .join("iterations");
        let iteration = run_dir.join(gate.current_iteration.to_string());
        let Some(round) = highest_numbered(&iteration, "round-") else {
            return Err(ReviewError::InvalidAnswer(format!(
                "cerberus resolved iteration {} but {} has no round",
                gate.current_iteration,
                iteration.display()
            )));
        };
        let reviewers = iteration.join(format!("round-{round}")).join("reviewers");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&reviewers)
            .map_err(|e| {
                ReviewError::InvalidAnswer(format!("cannot read {}: {e}", reviewers.display()))
            })?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("output.json"))
            .filter(|path| path.is_file())
            .collect();
        names.sort();
        let mut findings = Vec::new();
        for path in names {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ReviewError::InvalidAnswer(format!("cannot read {}: {e}", path.display()))
            })?;
            let output: ReviewerOutput = serde_json::from_str(&text).map_err(|e| {
                ReviewError::InvalidAnswer(format!(
                    "{} is not reviewer output: {e}",
                    path.display()
                ))
            })?;
            for raw in output.findings {
                let priority = raw.priority.unwrap_or(3);
                if priority > 3 {
                    return Err(ReviewError::InvalidAnswer(format!(
                        "{}: priority {priority} is not 0-3",
                        path.display()
                    )));
                }
                findings.push(Finding {
                    priority,
                    title: raw.title,
                    body: raw.body,
                    file: raw.file_path.filter(|f| !f.is_empty()),
                    line_start: raw.line_start,
                    line_end: raw.line_end,
                });
            }
        }
        Ok(findings)
    }
}

/// The largest `N` among entries named `<prefix>N` in `dir`.
fn highest_numbered(dir: &Path, prefix: &str) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse::<u64>()
                .ok()
        })
        .max()
}

fn tail(text: &str) -> &str {
    let text = text.trim();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[start..]
}

impl CerberusReviewer {
    /// Step 1: the author's context for the reviewers.
    async fn author_context(
        &self,
        request: &ReviewRequest,
        run_key: &str,
        session: &str,
    ) -> Result<(), ReviewError> {
        let author = self
            .call(
                &[
                    "author-context".into(),
                    "--".into(),
                    request.context.clone(),
                ],
                run_key,
                session,
                QUICK_CALL,
            )
            .await?;
        if author.code != Some(0) {
            return Err(ReviewError::Failed(format!(
                "cerberus author-context failed: {}",
                tail(&author.stderr)
            )));
        }
        Ok(())
    }

    /// Step 2: start the review of the commits; `false` when the diff has
    /// nothing to review.
    async fn spawn_review(
        &self,
        request: &ReviewRequest,
        context_file: &std::path::Path,
        run_key: &str,
        session: &str,
    ) -> Result<bool, ReviewError> {
        let mut spawn: Vec<String> = vec![
            "spawn-code-review".into(),
            "--exclude".into(),
            ".beads/".into(),
            "--context-file".into(),
            context_file.to_string_lossy().into_owned(),
        ];
        spawn.extend(self.config.spawn_args.iter().cloned());
        spawn.push("--commit".into());
        spawn.extend(request.commits.iter().cloned());
        let spawned = self.call(&spawn, run_key, session, QUICK_CALL).await?;
        let said = format!("{}{}", spawned.stdout, spawned.stderr);
        if said.contains("no changes found") {
            return Ok(false);
        }
        let already_running = said.contains("already active") || said.contains("pending");
        if spawned.code != Some(0) && !already_running {
            return Err(ReviewError::Failed(format!(
                "cerberus spawn-code-review failed: {}",
                tail(&said)
            )));
        }
        Ok(true)
    }

    /// Step 3: wait for the reviewers and read their gate.
    async fn wait_for_gate(&self, run_key: &str, session: &str) -> Result<Gate, ReviewError> {
        let mut wait: Vec<String> = vec![
            "wait".into(),
            "--json".into(),
            "--finalize".into(),
            "--session-key".into(),
            run_key.to_owned(),
            "--timeout".into(),
            self.config.timeout.to_string(),
        ];
        wait.extend(self.config.wait_args.iter().cloned());
        let limit = Duration::from_secs(self.config.timeout) + WAIT_SLACK;
        let waited = self.call(&wait, run_key, session, limit).await?;
        match waited.code {
            Some(0) => {}
            Some(WAIT_TIMED_OUT) => {
                return Err(ReviewError::Failed(format!(
                    "the cerberus reviewers did not finish in {} s",
                    self.config.timeout
                )));
            }
            _ => {
                return Err(ReviewError::Failed(format!(
                    "cerberus wait failed: {}",
                    tail(&format!("{}{}", waited.stdout, waited.stderr))
                )));
            }
        }
        let gate: Gate = serde_json::from_str(waited.stdout.trim()).map_err(|e| {
            ReviewError::InvalidAnswer(format!(
                "cerberus wait did not print its gate as JSON ({e}): {}",
                tail(&waited.stdout)
            ))
        })?;
        if gate.status != "resolved" {
            return Err(ReviewError::InvalidAnswer(format!(
                "the cerberus gate is `{}`, not resolved",
                gate.status
            )));
        }
        Ok(gate)
    }
}

#[async_trait]
impl Reviewer for CerberusReviewer {
    async fn review(&self, request: ReviewRequest) -> Result<ReviewVerdict, ReviewError> {
        if request.commits.is_empty() {
            return Ok(ReviewVerdict { findings: vec![] });
        }
        let _turn = self.turn.lock().await;
        let session = request.session_id.as_ref().map_or_else(
            || format!("issue-{}", request.subject.name()),
            ToString::to_string,
        );
        let run_key = format!("mala-{session}");
        std::fs::create_dir_all(&self.config.state_root).map_err(|e| {
            ReviewError::Unavailable(format!("{}: {e}", self.config.state_root.display()))
        })?;
        let context_file = self
            .config
            .state_root
            .join(format!("{}.context.md", request.subject.name()));
        std::fs::write(&context_file, &request.description)
            .map_err(|e| ReviewError::Unavailable(format!("{}: {e}", context_file.display())))?;

        self.author_context(&request, &run_key, &session).await?;
        if !self
            .spawn_review(&request, &context_file, &run_key, &session)
            .await?
        {
            // Nothing to review in the diff: nothing can be wrong with it.
            return Ok(ReviewVerdict { findings: vec![] });
        }
        let gate = self.wait_for_gate(&run_key, &session).await?;
        let findings = self.read_findings(&gate)?;
        with_verdict(&gate.verdict, findings).map(|findings| ReviewVerdict { findings })
    }
}

/// The findings, with what the gate's verdict adds: `pass` and `needs_work`
/// add nothing; no consensus, or a `fail` without a blocking finding, adds a
/// blocking one, so a person or the author looks again.
fn with_verdict(verdict: &str, mut findings: Vec<Finding>) -> Result<Vec<Finding>, ReviewError> {
    let blocking = |title: &str, body: &str| Finding {
        priority: 1,
        title: title.into(),
        body: body.into(),
        file: None,
        line_start: None,
        line_end: None,
    };
    let blocked = findings.iter().any(Finding::blocks);
    let added = match (verdict, blocked) {
        ("pass" | "needs_work", _) | ("fail", true) => None,
        ("fail", false) => Some(blocking(
            "The reviewers failed the change",
            "cerberus returned `fail` without a blocking finding; see its reviewer output.",
        )),
        ("requires_decision", _) => Some(blocking(
            "The reviewers reached no consensus",
            "cerberus could not settle on a verdict; a person has to decide.",
        )),
        (other, _) => {
            return Err(ReviewError::InvalidAnswer(format!(
                "unknown cerberus verdict `{other}`"
            )));
        }
    };
    findings.extend(added);
    Ok(findings)
}
