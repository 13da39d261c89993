//! mala.yaml: schema, presets, loading with positions, and layering into `Settings`.

mod error;
mod load;
mod names;
mod presets;
mod resolve;
mod schema;
mod settings;

pub use error::{ConfigError, Location};
pub use load::{ConfigFile, SpanIndex, parse_config};
pub use names::{
    AgentSdkModel, AmpMode, BUILTIN_COMMANDS, BaselinePolicy, Coder, CodexApprovalPolicy,
    CodexSandbox, Effort, EpicDepth, FailureMode, FindingThreshold, FireOn, Isolation,
    MergeStrategy, PresetName, ReviewBaseline, ReviewerType, SettingsSource, TrackerKind,
    UnknownWord, is_valid_command_name,
};
pub use presets::{load_preset, preset_text};
pub use resolve::{ConfigSources, FlagOverrides, resolve};
pub use schema::{
    NOT_BUILT_KEYS, NotBuiltKey, RawCodeReview, RawCommand, RawCommandDetail, RawCommandRef,
    RawCommandRefDetail, RawConfig, RawEvidenceCheck, RawRunEndTrigger, RawTriggers,
};
pub use settings::{
    Budget, Cerberus, ClaudeOptions, CodeReview, CoderOptions, CommandSpec, EpicCompletionTrigger,
    EpicVerification, EvidenceCheck, Gate, IsolationSettings, IssueReview, MergeQueue,
    OriginDisplay, Paths, PeriodicTrigger, ReviewerChoice, RunEndTrigger, Settings, Spend, Trigger,
    TriggerCommand, Triggers, dotted_leaves,
};
