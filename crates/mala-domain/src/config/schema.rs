//! The mala.yaml document as written: every key optional, unknown keys refused.
//!
//! These types mirror the file one to one. Defaults, presets and the other
//! layers are applied later, in `resolve`, which produces `Settings`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::names::{
    AgentSdkModel, BaselinePolicy, Coder, Effort, EpicDepth, FailureMode, FindingThreshold, FireOn,
    PresetName, ReviewBaseline, ReviewerType, SettingsSource, TrackerKind,
};

/// Top-level keys that existed in older versions, with what to write instead.
pub(crate) const REMOVED_TOP_LEVEL_KEYS: &[(&str, &str)] = &[
    (
        "global_validation_commands",
        "list the commands under `commands` and run them from `validation_triggers.run_end`",
    ),
    (
        "custom_commands",
        "put custom commands under `commands` next to the built-in ones",
    ),
    (
        "validate_every",
        "use `validation_triggers.periodic.interval`",
    ),
    (
        "reviewer_type",
        "set `per_issue_review.reviewer_type` (or a trigger's `code_review.reviewer_type`)",
    ),
    (
        "agent_sdk_review_timeout",
        "set `per_issue_review.agent_sdk_timeout`",
    ),
    (
        "agent_sdk_reviewer_model",
        "set `per_issue_review.agent_sdk_model`",
    ),
];

/// A documented key whose feature is not built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBuiltKey {
    /// Dotted path; `*` stands for any one key (a trigger's name).
    pub path: &'static str,
    /// What to do instead, for the error's hint.
    pub hint: &'static str,
}

/// Keys the original documents whose effect mala does not have yet. Setting
/// one (to any value, even its old default) is an error at load time rather
/// than a setting that silently does nothing. They have no field in
/// `RawConfig` or `Settings`; this list is all mala knows of them.
pub const NOT_BUILT_KEYS: &[NotBuiltKey] = &[
    NotBuiltKey {
        path: "amp_mode",
        hint: "the Amp backend is not built; remove `amp_mode`",
    },
    NotBuiltKey {
        path: "coder_options.codex.approval_policy",
        hint: "mala has codex ask before every command and file change and answers from its guard; a policy that asks less would let commands run unguarded, so it cannot be set",
    },
    NotBuiltKey {
        path: "coder_options.codex.sandbox",
        hint: "codex runs with full access inside mala's guard; choosing its sandbox is not built, remove the key",
    },
    NotBuiltKey {
        path: "coder_options.codex.mcp_servers",
        hint: "a codex agent gets mala's tools only: calls to other MCP servers ask no approval, so mala's guard could not see them",
    },
    NotBuiltKey {
        path: "coverage",
        hint: "the gate does not check coverage; run a coverage command as a custom `commands` entry and list it in `evidence_check.required`",
    },
    NotBuiltKey {
        path: "max_diff_size_kb",
        hint: "epic verification has no diff size limit; remove the key",
    },
    NotBuiltKey {
        path: "long_running",
        hint: "waiting for an agent's background task is not built; a turn is bounded by `timeout_minutes` and `idle_timeout_seconds`",
    },
    NotBuiltKey {
        path: "lock_wait",
        hint: "parking an agent that waits for a lock is not built; an agent waits inside `lock_acquire`, within its turn (docs/coordination.md)",
    },
    NotBuiltKey {
        path: "epic_verification.reviewer_type",
        hint: "epics are verified by an agent (agent_sdk) only; remove the key",
    },
    NotBuiltKey {
        path: "epic_verification.cerberus",
        hint: "epics are verified by an agent (agent_sdk) only; remove the key",
    },
    NotBuiltKey {
        path: "epic_verification.timeout",
        hint: "the agent verifier's limit is `epic_verification.agent_sdk_timeout`",
    },
    NotBuiltKey {
        path: "epic_verification.retry_policy",
        hint: "the verifier asks once more after an unreadable answer; other retries are not built",
    },
    NotBuiltKey {
        path: "per_issue_review.failure_mode",
        hint: "a per-issue review that keeps failing leaves the issue open with needs-followup; `failure_mode` applies to a trigger's `code_review`",
    },
    NotBuiltKey {
        path: "per_issue_review.baseline",
        hint: "a per-issue review reads that issue's commits; `baseline` applies to a trigger's `code_review`",
    },
    NotBuiltKey {
        path: "validation_triggers.*.code_review.track_review_issues",
        hint: "a trigger's review files no tracking issues; `track_review_issues` applies to `per_issue_review`",
    },
    NotBuiltKey {
        path: "validation_triggers.session_end.code_review",
        hint: "`per_issue_review` reviews each issue at its session's end",
    },
    NotBuiltKey {
        path: "validation_triggers.epic_completion.epic_verify_lock_timeout_seconds",
        hint: "epic verification takes no lock; remove the key",
    },
];

impl NotBuiltKey {
    /// Whether `path` (a key as written, dotted) is this key.
    pub fn matches(&self, path: &str) -> bool {
        let mut want = self.path.split('.');
        let mut got = path.split('.');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == "*" || w == g => {}
                _ => return false,
            }
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetName>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub commands: BTreeMap<String, RawCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_patterns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_check: Option<RawEvidenceCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude_settings_sources: Option<Vec<SettingsSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coder: Option<Coder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coder_options: Option<RawCoderOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gate_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<RawGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epic_verification: Option<RawEpicVerification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_issue_review: Option<RawCodeReview>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_triggers: Option<RawTriggers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<TrackerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_failed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselinePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<super::Isolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<super::MergeStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_queue: Option<RawMergeQueue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_branches: Option<bool>,
}

/// `merge_queue:` (worktree isolation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMergeQueue {
    /// Re-run the required commands on the merged result before landing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<bool>,
    /// Follow-ups after a conflict or a failed validation, before the issue fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// A command: a shell string, or an object with overrides.
#[derive(Debug, Clone, PartialEq)]
pub enum RawCommand {
    Shell(String),
    Detailed(RawCommandDetail),
}

/// The object form of a command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fail: Option<bool>,
}

impl Serialize for RawCommand {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Shell(command) => serializer.serialize_str(command),
            Self::Detailed(detail) => detail.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shell command or {command, timeout, allow_fail}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
                Ok(RawCommand::Shell(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCommand, A::Error> {
                RawCommandDetail::deserialize(MapAccessDeserializer::new(map))
                    .map(RawCommand::Detailed)
            }
        }
        deserializer.deserialize_any(CommandVisitor)
    }
}

/// A reference to a command from a trigger: its name, or `{ref, command, timeout}`.
#[derive(Debug, Clone, PartialEq)]
pub enum RawCommandRef {
    Name(String),
    Detailed(RawCommandRefDetail),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandRefDetail {
    #[serde(rename = "ref")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

impl RawCommandRef {
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Detailed(detail) => &detail.name,
        }
    }
}

impl Serialize for RawCommandRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Name(name) => serializer.serialize_str(name),
            Self::Detailed(detail) => detail.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RawCommandRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl<'de> Visitor<'de> for RefVisitor {
            type Value = RawCommandRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command name or {ref, command, timeout}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommandRef, E> {
                Ok(RawCommandRef::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCommandRef, A::Error> {
                RawCommandRefDetail::deserialize(MapAccessDeserializer::new(map))
                    .map(RawCommandRef::Detailed)
            }
        }
        deserializer.deserialize_any(RefVisitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidenceCheck {
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_files: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoderOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude: Option<RawClaudeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codex: Option<RawCodexOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCodexOptions {
    /// Path or name of the `codex` executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Dollars per million tokens, by model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<BTreeMap<String, RawTokenPrice>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenPrice {
    pub input: f64,
    /// Defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    pub output: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaudeOptions {
    /// Path or name of the `claude` executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disallowed_tools: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Re-run the required commands on the agent's commit in a clean worktree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<bool>,
}

/// `budget:`: what an issue, and the whole run, may spend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<RawSpend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RawSpend>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpend {
    /// Dollars, as the backend reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Input and output tokens, cache reads and writes included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCerberus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCodeReview {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer_type: Option<ReviewerType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_threshold: Option<FindingThreshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ReviewBaseline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cerberus: Option<RawCerberus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_sdk_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_sdk_model: Option<AgentSdkModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_review_issues: Option<bool>,
}

/// `epic_verification`, without the original's three dead keys
/// (`max_retries`, `failure_mode`, `agent_sdk_model`) and the ones in
/// `NOT_BUILT_KEYS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEpicVerification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_sdk_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTriggers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epic_completion: Option<RawEpicCompletionTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_end: Option<RawSessionEndTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic: Option<RawPeriodicTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_end: Option<RawRunEndTrigger>,
}

/// Fields every trigger has. Repeated per trigger because serde cannot
/// combine `flatten` with `deny_unknown_fields`.
pub(crate) trait RawTriggerCommon {
    fn failure_mode(&self) -> FailureMode;
    fn max_retries(&self) -> Option<u32>;
    fn commands(&self) -> &[RawCommandRef];
    fn code_review(&self) -> Option<&RawCodeReview>;
}

macro_rules! trigger_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub failure_mode: FailureMode,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_retries: Option<u32>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub commands: Vec<RawCommandRef>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub code_review: Option<RawCodeReview>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl RawTriggerCommon for $name {
            fn failure_mode(&self) -> FailureMode { self.failure_mode }
            fn max_retries(&self) -> Option<u32> { self.max_retries }
            fn commands(&self) -> &[RawCommandRef] { &self.commands }
            fn code_review(&self) -> Option<&RawCodeReview> { self.code_review.as_ref() }
        }
    };
}

trigger_struct!(
    /// Runs after each issue whose gate passed with a commit.
    RawSessionEndTrigger {}
);

trigger_struct!(
    /// Runs every `interval` completed non-epic issues.
    RawPeriodicTrigger { interval: u32 }
);

trigger_struct!(
    /// Runs when an epic is verified (or fails verification).
    RawEpicCompletionTrigger {
        epic_depth: EpicDepth,
        fire_on: FireOn,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_epic_verification_retries: Option<u32>,
    }
);

trigger_struct!(
    /// Runs once at the end of the run.
    RawRunEndTrigger {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fire_on: Option<FireOn>,
    }
);
