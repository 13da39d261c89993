//! The resolved, immutable configuration every other crate reads.
//!
//! Field names follow mala.yaml, so a dotted path such as
//! `validation_triggers.run_end.fire_on` means the same in the file, in
//! `mala config show` and in `Settings::origin`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::error::Location;
use super::names::{
    AgentSdkModel, BaselinePolicy, Coder, Effort, EpicDepth, FailureMode, FindingThreshold, FireOn,
    PresetName, ReviewBaseline, ReviewerType, SettingsSource, TrackerKind,
};

/// Everything mala needs to know, from every layer, resolved once.
///
/// Every field here is read by the run (a test in `tests/settings_read.rs`
/// fails otherwise). Documented keys whose feature is not built yet have no
/// field: the loader refuses them (`NOT_BUILT_KEYS`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub preset: Option<PresetName>,
    pub commands: BTreeMap<String, CommandSpec>,
    pub code_patterns: Vec<String>,
    pub config_files: Vec<String>,
    pub setup_files: Vec<String>,
    pub evidence_check: EvidenceCheck,
    pub claude_settings_sources: Vec<SettingsSource>,
    pub coder: Coder,
    /// `None`: the backend's own choice (codex: the user's codex
    /// configuration; Amp has no model choice).
    pub model: Option<String>,
    pub effort: Option<Effort>,
    pub coder_options: CoderOptions,
    /// Hard limit of one agent turn.
    pub timeout_minutes: u64,
    pub max_idle_retries: u32,
    /// `0` disables the idle timeout.
    pub idle_timeout_seconds: f64,
    pub max_gate_retries: u32,
    pub gate: Gate,
    pub budget: Budget,
    pub epic_verification: EpicVerification,
    pub per_issue_review: IssueReview,
    pub validation_triggers: Triggers,
    pub tracker: TrackerKind,
    /// Issue types a run works on.
    pub issue_types: Vec<String>,
    /// How many later runs may retry an issue that failed.
    pub retry_failed: u32,
    /// What a red baseline does to the run (`baseline:`).
    pub baseline: BaselinePolicy,
    /// `isolation`, `merge_strategy`, `merge_queue`, `keep_branches`.
    #[serde(flatten)]
    pub isolation: IsolationSettings,
    pub paths: Paths,
    #[serde(skip)]
    pub(crate) origins: Origins,
    #[serde(skip)]
    pub(crate) warnings: Vec<String>,
}

impl Settings {
    /// Where the value at a dotted path came from; `None` means the built-in default.
    pub fn origin(&self, path: &str) -> Option<&Location> {
        self.origins.find(path)
    }

    /// Non-fatal notes from resolution (deprecated variables and the like).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The command named `name`, if configured.
    pub fn command(&self, name: &str) -> Option<&CommandSpec> {
        self.commands.get(name)
    }
}

/// A validation command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    pub command: String,
    /// Seconds; `None` for built-ins without one (bounded by the caller).
    pub timeout: Option<u64>,
    /// A failure is recorded but does not fail the gate (custom commands only).
    pub allow_fail: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EvidenceCheck {
    /// Commands whose passing run must be on record before an issue closes.
    pub required: Vec<String>,
    /// Globs of files the checks read, protected besides mala.yaml, the
    /// preset's `config_files` and the files the required commands name.
    pub protected_files: Vec<String>,
}

/// Per-backend options (Amp's are refused at load time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoderOptions {
    pub claude: ClaudeOptions,
    pub codex: CodexOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodexOptions {
    /// The `codex` executable: a name looked up on PATH, or a path.
    pub binary: String,
    /// What each model's tokens cost (codex reports no dollars).
    pub prices: BTreeMap<String, crate::TokenPrice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaudeOptions {
    /// The `claude` executable: a name looked up on PATH, or a path.
    pub binary: String,
    pub disallowed_tools: Vec<String>,
}

/// Where agents work, and how worktree isolation lands their branches.
/// The keys are top-level in mala.yaml; they live together here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IsolationSettings {
    pub isolation: super::Isolation,
    pub merge_strategy: super::MergeStrategy,
    pub merge_queue: MergeQueue,
    /// Keep an issue's branch after it landed.
    pub keep_branches: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MergeQueue {
    /// Re-run the required commands on the merged result before landing.
    pub validate: bool,
    /// Follow-ups after a conflict or a failed validation, before the issue fails.
    pub max_retries: u32,
}

impl Default for IsolationSettings {
    fn default() -> Self {
        Self {
            isolation: super::Isolation::Shared,
            merge_strategy: super::MergeStrategy::Rebase,
            merge_queue: MergeQueue {
                validate: true,
                max_retries: 2,
            },
            keep_branches: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// Re-run the required commands on the agent's commit in a clean worktree.
    pub rerun: bool,
}

/// What an issue, and the whole run, may spend (`budget:`, `--max-cost`,
/// `--max-tokens`). No limit where `None`. Read back from a run's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Budget {
    pub issue: Spend,
    pub run: Spend,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Spend {
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
}

impl Spend {
    /// Its limits in words (`$5.00`, `1000 tokens`); empty for no limit.
    pub fn limits(&self) -> Vec<String> {
        [
            self.max_cost_usd.map(|d| format!("${d:.2}")),
            self.max_tokens.map(|t| format!("{t} tokens")),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cerberus {
    pub timeout: u64,
    pub spawn_args: Vec<String>,
    pub wait_args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Which reviewer reads the commits, and how it runs. Shared by
/// `per_issue_review` and a trigger's `code_review` (flattened: the keys sit
/// directly in the review block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewerChoice {
    pub reviewer_type: ReviewerType,
    pub cerberus: Cerberus,
    /// Seconds: the agent reviewer's turn limit.
    pub agent_sdk_timeout: u64,
    /// The agent reviewer's model.
    pub agent_sdk_model: AgentSdkModel,
}

/// `per_issue_review`: each issue's commits, reviewed before it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueReview {
    pub enabled: bool,
    #[serde(flatten)]
    pub reviewer: ReviewerChoice,
    pub max_retries: u32,
    pub finding_threshold: FindingThreshold,
    /// Advisory findings become one `[Review]` tracking issue per source issue.
    pub track_review_issues: bool,
}

/// A trigger's `code_review`: the run's issue commits, reviewed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeReview {
    pub enabled: bool,
    #[serde(flatten)]
    pub reviewer: ReviewerChoice,
    pub failure_mode: FailureMode,
    pub max_retries: u32,
    pub finding_threshold: FindingThreshold,
    pub baseline: Option<ReviewBaseline>,
}

/// Epic verification: an agent checks an epic's acceptance criteria.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpicVerification {
    pub enabled: bool,
    /// Seconds: the verifier's turn limit.
    pub agent_sdk_timeout: u64,
}

/// One command a trigger runs, resolved against `commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TriggerCommand {
    pub name: String,
    pub command: String,
    pub timeout: Option<u64>,
}

/// What every trigger has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub failure_mode: FailureMode,
    /// Fixer rounds for `remediate`; 0 otherwise.
    pub max_retries: u32,
    pub commands: Vec<TriggerCommand>,
    /// Left out of `config show` when absent: `session_end` never has one
    /// from mala.yaml (refused; `per_issue_review` reviews each issue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_review: Option<CodeReview>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodicTrigger {
    #[serde(flatten)]
    pub trigger: Trigger,
    pub interval: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpicCompletionTrigger {
    #[serde(flatten)]
    pub trigger: Trigger,
    pub epic_depth: EpicDepth,
    pub fire_on: FireOn,
    pub max_epic_verification_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEndTrigger {
    #[serde(flatten)]
    pub trigger: Trigger,
    pub fire_on: FireOn,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Triggers {
    pub epic_completion: Option<EpicCompletionTrigger>,
    pub session_end: Option<Trigger>,
    pub periodic: Option<PeriodicTrigger>,
    pub run_end: Option<RunEndTrigger>,
}

/// Where mala keeps its own files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paths {
    pub runs_dir: PathBuf,
    pub lock_dir: PathBuf,
}

/// Which layer set each dotted path. Absent paths hold built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Origins(BTreeMap<String, Location>);

impl Origins {
    /// Records that `path` (and everything below it) now comes from `location`.
    pub(crate) fn record(&mut self, path: &str, location: Location) {
        let below = format!("{path}.");
        self.0.retain(|k, _| !k.starts_with(&below));
        self.0.insert(path.to_owned(), location);
    }

    fn find(&self, path: &str) -> Option<&Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.0.get(path) {
                return Some(location);
            }
            path = &path[..path.rfind('.')?];
        }
    }
}

/// `default`, or the location, for display.
#[derive(Debug, Clone, Copy)]
pub struct OriginDisplay<'a>(pub Option<&'a Location>);

impl fmt::Display for OriginDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("default"),
            Some(location) => location.fmt(f),
        }
    }
}

/// A serialised value as dotted paths to its leaves, in order: objects become
/// paths; lists, scalars and empty objects are leaves. These are the paths
/// `mala config show` prints and `Settings::origin` takes.
pub fn dotted_leaves(value: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            _ => out.push((prefix.to_owned(), value.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}
