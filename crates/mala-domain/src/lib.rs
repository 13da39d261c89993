//! Pure rules of mala: no I/O beyond what the caller hands in.
//!
//! The configuration (the mala.yaml schema, the shipped presets, and the
//! layering of defaults, preset, file, environment and flags into one
//! immutable [`Settings`]); the tracker's issue graph with the run's queue;
//! the tool guard; the quality gate; reviewers' answers; the deadlock graph;
//! and the scheduler's decisions.

mod answers;
mod budget;
mod commits;
mod config;
mod deadlock;
mod faults;
mod findings;
mod gate;
mod guard;
mod preflight;
mod prompts;
mod run_options;
mod schedule;
mod tracker;

pub use answers::{EpicVerdict, parse_epic_answer, parse_review_answer};
pub use budget::{Spent, TokenPrice, budget_reached, dollars_left};
pub use commits::{check_commit_message, is_issue_commit};
pub use config::{
    AgentSdkModel, AmpMode, BUILTIN_COMMANDS, BaselinePolicy, Budget, Cerberus, ClaudeOptions,
    CodeReview, Coder, CoderOptions, CodexApprovalPolicy, CodexSandbox, CommandSpec, ConfigError,
    ConfigFile, ConfigSources, Effort, EpicCompletionTrigger, EpicDepth, EpicVerification,
    EvidenceCheck, FailureMode, FindingThreshold, FireOn, FlagOverrides, Gate, Isolation,
    IsolationSettings, IssueReview, Location, MergeQueue, MergeStrategy, NOT_BUILT_KEYS,
    NotBuiltKey, OriginDisplay, Paths, PeriodicTrigger, PresetName, RawCodeReview, RawCommand,
    RawCommandDetail, RawCommandRef, RawCommandRefDetail, RawConfig, RawEvidenceCheck,
    RawRunEndTrigger, RawTriggers, ReviewBaseline, ReviewerChoice, ReviewerType, RunEndTrigger,
    Settings, SettingsSource, SpanIndex, Spend, TrackerKind, Trigger, TriggerCommand, Triggers,
    UnknownWord, dotted_leaves, is_valid_command_name, load_preset, parse_config, preset_text,
    resolve,
};
pub use deadlock::{Deadlock, WaitForGraph};
pub use faults::{
    Blame, FaultAction, FaultContext, START_FAILURES_TO_STOP, blame, respond as respond_to_fault,
};
pub use findings::{finding_detail, finding_line, finding_place, findings_list};
pub use gate::{
    AttemptState, CommitInfo, GateInput, GateVerdict, Marker, ProtectedChanges, ProtectedFiles,
    RequiredCommand, check_gate, glob_matches, is_validation_run, no_progress, parse_marker,
    protected_changes, required_commands,
};
pub use guard::{
    Decision, GuardContext, ToolCall, check_tool, command_paths, effects_are_known,
    is_read_only_tool, launched_script, shell_writes,
};
pub use preflight::{
    CANARY_REFUSAL, PREFLIGHT_CANARY, PreflightFailure, check_probe_tool, is_preflight_agent,
    judge_preflight, preflight_agent, preflight_prompt,
};
pub use prompts::{PromptError, PromptKind, Template, render_prompt};
pub use run_options::{Order, ParseScopeError, Scope};
pub use schedule::{
    CutShort, DoneReason, SchedulerView, done, final_reason, run_end_fires, spawn_capacity,
};
pub use tracker::{
    Blocker, Excluded, Exclusion, IssueGraph, NEEDS_FOLLOWUP, QueueEntry, QueuePlan, QueueRequest,
    Readiness, UnknownIds, agent_name, claim_actor, normalize_label, parse_agent_name, plan_queue,
    run_of_actor, takeover_candidates,
};
