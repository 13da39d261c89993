//! Layering: built-in defaults < preset < mala.yaml < `MALA_*` environment < flags.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;

use super::error::{ConfigError, Location, suggestion};
use super::load::ConfigFile;
use super::names::{
    AgentSdkModel, AmpMode, BUILTIN_COMMANDS, BaselinePolicy, Coder, CodexApprovalPolicy,
    CodexSandbox, Effort, FailureMode, FindingThreshold, FireOn, ReviewerType, SettingsSource,
    TrackerKind, is_valid_command_name,
};
use super::presets::load_preset;
use super::schema::{
    RawBudget, RawCerberus, RawCodeReview, RawCommand, RawCommandRef, RawConfig, RawTriggerCommon,
    RawTriggers,
};
use super::settings::{
    Cerberus, ClaudeOptions, CodeReview, CoderOptions, CodexOptions, CommandSpec,
    EpicCompletionTrigger, EpicVerification, EvidenceCheck, Gate, IssueReview, Origins, Paths,
    PeriodicTrigger, ReviewerChoice, RunEndTrigger, Settings, Trigger, TriggerCommand, Triggers,
};

/// Default seconds for a custom command.
const CUSTOM_COMMAND_TIMEOUT: u64 = 120;
const DEFAULT_TIMEOUT_MINUTES: u64 = 30;

/// Overrides given as command-line flags. `None` leaves lower layers alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagOverrides {
    pub coder: Option<Coder>,
    /// Refused: Amp is not built (kept so the flag is refused, not unknown).
    pub amp_mode: Option<AmpMode>,
    pub model: Option<String>,
    pub effort: Option<Effort>,
    pub claude_settings_sources: Option<Vec<SettingsSource>>,
    /// Refused: mala's guard answers codex's every approval.
    pub codex_approval_policy: Option<CodexApprovalPolicy>,
    /// Refused: choosing codex's sandbox is not built.
    pub codex_sandbox: Option<CodexSandbox>,
    pub timeout_minutes: Option<u64>,
    /// `--isolation`.
    pub isolation: Option<super::Isolation>,
    /// `--max-cost`: dollars the whole run may spend.
    pub max_cost_usd: Option<f64>,
    /// `--max-tokens`: tokens the whole run may spend.
    pub max_tokens: Option<u64>,
}

/// Everything resolution reads. Libraries never read the process environment,
/// so the caller passes the variables in.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSources<'a> {
    pub file: Option<&'a ConfigFile>,
    pub env: &'a BTreeMap<String, String>,
    pub flags: &'a FlagOverrides,
}

/// `MALA_*` variables that are read no more, with what to do instead.
const DEPRECATED_ENV: &[(&str, &str)] = &[
    (
        "MALA_REVIEW_TIMEOUT",
        "set per_issue_review.agent_sdk_timeout in mala.yaml",
    ),
    (
        "MALA_CERBERUS_SPAWN_ARGS",
        "set per_issue_review.cerberus.spawn_args in mala.yaml",
    ),
    (
        "MALA_CERBERUS_WAIT_ARGS",
        "set per_issue_review.cerberus.wait_args in mala.yaml",
    ),
    (
        "MALA_CERBERUS_ENV",
        "set per_issue_review.cerberus.env in mala.yaml",
    ),
    (
        "MALA_MAX_EPIC_VERIFICATION_RETRIES",
        "set validation_triggers.epic_completion.max_epic_verification_retries in mala.yaml",
    ),
    (
        "MALA_MAX_DIFF_SIZE_KB",
        "epic verification has no diff size limit (max_diff_size_kb is not built)",
    ),
];

/// `MALA_*` variables of features that are not built yet: setting one is an
/// error, so nobody believes it took effect. With what to do instead.
const NOT_BUILT_ENV: &[(&str, &str)] = &[
    ("MALA_AMP_MODE", "the Amp backend is not built; unset it"),
    ("MALA_CODEX_APPROVAL_POLICY", CODEX_APPROVAL_HINT),
    ("MALA_CODEX_SANDBOX", CODEX_SANDBOX_HINT),
    (
        "MALA_VALIDATION_LOG_DIR",
        "mala writes no validation logs; unset it",
    ),
    (
        "MALA_DISABLE_DEBUG_LOG",
        "mala writes no debug log (the session records are under the run's directory); unset it",
    ),
];

/// Why codex's approval policy is mala's alone.
const CODEX_APPROVAL_HINT: &str = "mala has codex ask before every command and answers from its guard; \
     a policy that asks less would let commands run unguarded; leave it out";
const CODEX_SANDBOX_HINT: &str = "codex runs with full access inside mala's guard; choosing its sandbox is not built; leave it out";

/// Resolves every layer into one `Settings`.
pub fn resolve(sources: ConfigSources<'_>) -> Result<Settings, ConfigError> {
    let mut settings = defaults(sources.env);
    if let Some(file) = sources.file {
        if file.raw == RawConfig::default() && file.disabled_commands.is_empty() {
            return Err(file
                .error("", "the file sets nothing")
                .hint("add `preset: <name>` (python-uv, node-npm, go, rust, gleam) or a `commands:` block, or run `mala init`"));
        }
        if let Some(name) = file.raw.preset {
            let preset = load_preset(name)?;
            settings.preset = Some(name);
            let origin = Location::Preset {
                name: name.to_string(),
            };
            apply_commands_and_lists(&mut settings, &preset, Some(&origin))?;
            settings.origins.record("preset", file.location("preset"));
        }
        apply_file(&mut settings, file)?;
        if settings.commands.is_empty() {
            return Err(file
                .error(
                    if file.spans.find("commands").is_some() { "commands" } else { "" },
                    "no commands are configured, so no issue could pass the gate",
                )
                .hint("add `preset: <name>` (python-uv, node-npm, go, rust, gleam) or define a command under `commands:`, or run `mala init`"));
        }
    }
    apply_env(&mut settings, sources.env)?;
    apply_flags(&mut settings, sources.flags)?;
    derive_backend_defaults(&mut settings);
    check_coder_settings(&mut settings, sources.file)?;
    check_isolation(&settings)?;
    Ok(settings)
}

/// What worktree isolation cannot honour yet, refused rather than run in the
/// wrong tree: `session_end` runs its commands in the user's checkout, where
/// an issue's work is not until it lands (the merge queue's validation is
/// its check), and a trigger's fixer would edit the user's checkout with no
/// locks to take.
fn check_isolation(settings: &Settings) -> Result<(), ConfigError> {
    if settings.isolation.isolation != super::Isolation::Worktree {
        return Ok(());
    }
    let at = |key: &str| {
        settings
            .origin(key)
            .or_else(|| settings.origin("validation_triggers"))
            .or_else(|| settings.origin("isolation"))
            .cloned()
    };
    let with_at = |error: ConfigError, key: &str| match at(key) {
        Some(origin) => error.at(origin).key(key),
        None => error.key(key),
    };
    let triggers = &settings.validation_triggers;
    if triggers.session_end.is_some() {
        return Err(with_at(
            ConfigError::new("is not built yet with `isolation: worktree`: it would run in your checkout, where an issue's work is not until it lands")
                .hint("remove it: the merge queue runs the required checks on each branch merged onto the new head (merge_queue.validate)"),
            "validation_triggers.session_end",
        ));
    }
    let remediating = [
        (
            "validation_triggers.periodic",
            triggers.periodic.as_ref().map(|t| &t.trigger),
        ),
        (
            "validation_triggers.epic_completion",
            triggers.epic_completion.as_ref().map(|t| &t.trigger),
        ),
        (
            "validation_triggers.run_end",
            triggers.run_end.as_ref().map(|t| &t.trigger),
        ),
    ]
    .into_iter()
    .find(|(_, t)| t.is_some_and(|t| t.failure_mode == super::FailureMode::Remediate));
    if let Some((key, _)) = remediating {
        let key = format!("{key}.failure_mode");
        return Err(with_at(
            ConfigError::new("`remediate` is not built yet with `isolation: worktree`: its fixer would edit your checkout outside any worktree")
                .hint("use `abort` or `continue` with worktree isolation"),
            &key,
        ));
    }
    Ok(())
}

/// Settings that the chosen coder cannot honour, refused rather than ignored.
fn check_coder_settings(
    settings: &mut Settings,
    file: Option<&ConfigFile>,
) -> Result<(), ConfigError> {
    if settings.coder != Coder::Codex {
        return Ok(());
    }
    if let Some(origin @ Location::Flag { .. }) = settings.origin("claude_settings_sources") {
        return Err(
            ConfigError::new("applies to Claude Code, and `--coder codex` starts none")
                .at(origin.clone())
                .hint("leave it out with --coder codex"),
        );
    }
    if settings.effort == Some(Effort::Max)
        && let Some(origin) = settings.origin("effort")
    {
        return Err(ConfigError::new("codex has no `max` reasoning effort")
            .at(origin.clone())
            .key("effort")
            .hint("use `xhigh`, codex's highest"));
    }
    // Claude's own keys, in a file shared by both coders, do nothing here: said, not refused.
    for key in [
        "claude_settings_sources",
        "coder_options.claude.binary",
        "coder_options.claude.disallowed_tools",
    ] {
        if let Some(origin) = settings.origin(key) {
            let warning =
                format!("{origin}: `{key}` applies to Claude Code; a codex run ignores it");
            settings.warnings.push(warning);
        }
    }
    // A codex agent reviews with the run's model: a Claude model is for Claude.
    let reviewers = ["per_issue_review"].into_iter().map(str::to_owned).chain(
        ["periodic", "epic_completion", "run_end"]
            .map(|t| format!("validation_triggers.{t}.code_review")),
    );
    for reviewer in reviewers {
        let key = format!("{reviewer}.agent_sdk_model");
        if let Some(file) = file.filter(|f| f.spans.contains(&key)) {
            return Err(file
                .error(&key, "names a Claude model, and with `coder: codex` the agent reviewer runs on codex")
                .hint("remove it: the reviewer uses `model` (or `--model`) like the implementer"));
        }
    }
    if !settings.coder_options.codex.prices.is_empty() {
        return Ok(());
    }
    for key in ["budget.run.max_cost_usd", "budget.issue.max_cost_usd"] {
        if let Some(origin) = settings.origin(key) {
            return Err(ConfigError::new(
                "codex reports tokens, not dollars, and no prices are set: a dollar budget would never be reached",
            )
            .at(origin.clone())
            .key(key)
            .hint("set `coder_options.codex.prices.<model>: {input, cached_input, output}` (dollars per million tokens), or budget in tokens (`max_tokens`, `--max-tokens`)"));
        }
    }
    Ok(())
}

fn defaults(env: &BTreeMap<String, String>) -> Settings {
    let config_home = env
        .get("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    let timeout_minutes = DEFAULT_TIMEOUT_MINUTES;
    Settings {
        preset: None,
        commands: BTreeMap::new(),
        code_patterns: Vec::new(),
        config_files: Vec::new(),
        setup_files: Vec::new(),
        evidence_check: EvidenceCheck::default(),
        claude_settings_sources: vec![SettingsSource::Local, SettingsSource::Project],
        coder: Coder::Claude,
        model: None,
        effort: None,
        coder_options: CoderOptions {
            claude: ClaudeOptions {
                binary: "claude".to_owned(),
                disallowed_tools: vec!["TodoWrite".to_owned(), "Monitor".to_owned()],
            },
            codex: CodexOptions {
                binary: "codex".to_owned(),
                prices: BTreeMap::new(),
            },
        },
        timeout_minutes,
        max_idle_retries: 2,
        idle_timeout_seconds: derived_idle_timeout(timeout_minutes),
        max_gate_retries: 3,
        gate: Gate::default(),
        budget: super::settings::Budget::default(),
        epic_verification: EpicVerification {
            enabled: true,
            agent_sdk_timeout: 300,
        },
        per_issue_review: default_issue_review(),
        validation_triggers: Triggers::default(),
        tracker: TrackerKind::Auto,
        issue_types: ["task", "bug", "feature", "chore"]
            .map(str::to_owned)
            .to_vec(),
        retry_failed: 1,
        baseline: BaselinePolicy::Warn,
        isolation: super::IsolationSettings::default(),
        paths: Paths {
            runs_dir: config_home.join("mala").join("runs"),
            lock_dir: PathBuf::from("/tmp/mala-locks"),
        },
        origins: Origins::default(),
        warnings: Vec::new(),
    }
}

/// clamp(0.2 × turn timeout, 5 min, 15 min), in seconds.
fn derived_idle_timeout(timeout_minutes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // minutes are far below 2^52
    let turn_seconds = timeout_minutes as f64 * 60.0;
    (turn_seconds * 0.2).clamp(300.0, 900.0)
}

fn default_cerberus() -> Cerberus {
    Cerberus {
        timeout: 600,
        spawn_args: Vec::new(),
        wait_args: Vec::new(),
        env: BTreeMap::new(),
    }
}

/// Reviewer defaults. We default to the agent reviewer (the original defaults
/// to cerberus), because it needs nothing beyond the coder that is already there.
fn default_reviewer() -> ReviewerChoice {
    ReviewerChoice {
        reviewer_type: ReviewerType::AgentSdk,
        cerberus: default_cerberus(),
        agent_sdk_timeout: 300,
        agent_sdk_model: AgentSdkModel::Opus,
    }
}

fn default_issue_review() -> IssueReview {
    IssueReview {
        enabled: false,
        reviewer: default_reviewer(),
        max_retries: 3,
        finding_threshold: FindingThreshold::None,
        track_review_issues: true,
    }
}

fn default_code_review() -> CodeReview {
    CodeReview {
        enabled: false,
        reviewer: default_reviewer(),
        failure_mode: FailureMode::Continue,
        max_retries: 3,
        finding_threshold: FindingThreshold::None,
        baseline: None,
    }
}

/// Commands merge per name; the three file lists are replaced whole.
/// Values are recorded as coming from `origin` (a preset), or, when it is
/// `None`, from their own positions in `file`.
fn apply_commands_and_lists(
    settings: &mut Settings,
    file: &ConfigFile,
    origin: Option<&Location>,
) -> Result<(), ConfigError> {
    let at = |key: &str| origin.cloned().unwrap_or_else(|| file.location(key));
    for name in &file.disabled_commands {
        let key = format!("commands.{name}");
        check_command_name(file, &key, name)?;
        settings.commands.remove(name);
        settings.origins.record(&key, at(&key));
    }
    for (name, command) in &file.raw.commands {
        let key = format!("commands.{name}");
        check_command_name(file, &key, name)?;
        let builtin = BUILTIN_COMMANDS.contains(&name.as_str());
        let default_timeout = (!builtin).then_some(CUSTOM_COMMAND_TIMEOUT);
        match command {
            RawCommand::Shell(text) => {
                check_command_text(file, &key, text)?;
                settings.commands.insert(
                    name.clone(),
                    CommandSpec {
                        command: text.clone(),
                        timeout: default_timeout,
                        allow_fail: false,
                    },
                );
                settings.origins.record(&key, at(&key));
            }
            RawCommand::Detailed(detail) => {
                if detail.allow_fail.is_some() && builtin {
                    return Err(file
                        .error(&format!("{key}.allow_fail"), "allow_fail is only allowed on custom commands")
                        .hint(format!("built-in command `{name}` must pass; define a custom command for checks that may fail")));
                }
                if let Some(text) = &detail.command {
                    check_command_text(file, &format!("{key}.command"), text)?;
                    settings.commands.insert(
                        name.clone(),
                        CommandSpec {
                            command: text.clone(),
                            timeout: detail.timeout.or(default_timeout),
                            allow_fail: detail.allow_fail.unwrap_or(false),
                        },
                    );
                    settings.origins.record(&key, at(&key));
                } else {
                    let Some(existing) = settings.commands.get_mut(name) else {
                        return Err(file
                            .error(&key, format!("`{name}` has no `command`, and no preset defines `{name}`"))
                            .hint("an object without `command` only overrides a preset's command; add `command: ...`"));
                    };
                    if let Some(timeout) = detail.timeout {
                        existing.timeout = Some(timeout);
                        settings
                            .origins
                            .record(&format!("{key}.timeout"), at(&format!("{key}.timeout")));
                    }
                    if let Some(allow_fail) = detail.allow_fail {
                        existing.allow_fail = allow_fail;
                        settings.origins.record(
                            &format!("{key}.allow_fail"),
                            at(&format!("{key}.allow_fail")),
                        );
                    }
                }
            }
        }
    }
    for (key, list, target) in [
        (
            "code_patterns",
            &file.raw.code_patterns,
            &mut settings.code_patterns,
        ),
        (
            "config_files",
            &file.raw.config_files,
            &mut settings.config_files,
        ),
        (
            "setup_files",
            &file.raw.setup_files,
            &mut settings.setup_files,
        ),
    ] {
        if let Some(list) = list {
            target.clone_from(list);
            settings.origins.record(key, at(key));
        }
    }
    Ok(())
}

fn check_command_name(file: &ConfigFile, key: &str, name: &str) -> Result<(), ConfigError> {
    if is_valid_command_name(name) {
        Ok(())
    } else {
        Err(file
            .error(key, format!("invalid command name `{name}`"))
            .hint("names start with a letter or `_` and use letters, digits, `_` and `-`"))
    }
}

fn check_command_text(file: &ConfigFile, key: &str, text: &str) -> Result<(), ConfigError> {
    if text.trim().is_empty() {
        Err(file
            .error(key, "the command is empty")
            .hint("write the shell command, or `null` to disable a preset's command"))
    } else {
        Ok(())
    }
}

fn apply_file(settings: &mut Settings, file: &ConfigFile) -> Result<(), ConfigError> {
    let raw = &file.raw;
    if raw.preset.is_none()
        && let Some((name, _)) = raw
            .commands
            .iter()
            .find(|(_, c)| matches!(c, RawCommand::Detailed(d) if d.command.is_none()))
    {
        {
            return Err(file
                .error(&format!("commands.{name}"), format!("`{name}` has no `command`"))
                .hint("an object without `command` only overrides a preset's command; add `command: ...` or a `preset:`"));
        }
    }
    apply_commands_and_lists(settings, file, None)?;

    macro_rules! set {
        ($key:literal, $value:expr => $target:expr) => {
            if let Some(value) = $value {
                $target = value;
                settings.origins.record($key, file.location($key));
            }
        };
    }
    set!("claude_settings_sources", raw.claude_settings_sources.clone() => settings.claude_settings_sources);
    set!("coder", raw.coder => settings.coder);
    set!("model", raw.model.clone().map(Some) => settings.model);
    set!("effort", raw.effort.map(Some) => settings.effort);
    set!("timeout_minutes", raw.timeout_minutes => settings.timeout_minutes);
    set!("max_idle_retries", raw.max_idle_retries => settings.max_idle_retries);
    set!("max_gate_retries", raw.max_gate_retries => settings.max_gate_retries);
    set!("tracker", raw.tracker => settings.tracker);
    set!("retry_failed", raw.retry_failed => settings.retry_failed);
    set!("baseline", raw.baseline => settings.baseline);
    set!("isolation", raw.isolation => settings.isolation.isolation);
    set!("merge_strategy", raw.merge_strategy => settings.isolation.merge_strategy);
    set!("keep_branches", raw.keep_branches => settings.isolation.keep_branches);
    if let Some(queue) = &raw.merge_queue {
        set!("merge_queue.validate", queue.validate => settings.isolation.merge_queue.validate);
        set!("merge_queue.max_retries", queue.max_retries => settings.isolation.merge_queue.max_retries);
    }
    if let Some(seconds) = raw.idle_timeout_seconds {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(file.error(
                "idle_timeout_seconds",
                "must be 0 (disabled) or a positive number of seconds",
            ));
        }
        settings.idle_timeout_seconds = seconds;
        settings.origins.record(
            "idle_timeout_seconds",
            file.location("idle_timeout_seconds"),
        );
    }
    if let Some(types) = &raw.issue_types {
        apply_issue_types(settings, file, types)?;
    }
    if let Some(options) = &raw.coder_options {
        apply_coder_options(settings, file, options)?;
    }
    if let Some(gate) = &raw.gate {
        set!("gate.rerun", gate.rerun => settings.gate.rerun);
    }
    if let Some(budget) = &raw.budget {
        apply_budget(settings, file, budget)?;
    }
    if let Some(epic) = &raw.epic_verification {
        let target = &mut settings.epic_verification;
        overlay(&mut target.enabled, epic.enabled);
        overlay(&mut target.agent_sdk_timeout, epic.agent_sdk_timeout);
    }
    if let Some(review) = &raw.per_issue_review {
        settings.per_issue_review = issue_review(review);
    }
    if let Some(evidence) = &raw.evidence_check {
        apply_evidence_check(settings, file, &evidence.required)?;
        if let Some(globs) = &evidence.protected_files {
            settings.evidence_check.protected_files.clone_from(globs);
            settings.origins.record(
                "evidence_check.protected_files",
                file.location("evidence_check.protected_files"),
            );
        }
    }
    if let Some(triggers) = &raw.validation_triggers {
        apply_triggers(settings, file, triggers)?;
    }

    record_file_origins(settings, file);
    Ok(())
}

/// `coder_options`: each backend's own keys.
fn apply_coder_options(
    settings: &mut Settings,
    file: &ConfigFile,
    options: &super::schema::RawCoderOptions,
) -> Result<(), ConfigError> {
    macro_rules! set {
        ($key:literal, $value:expr => $target:expr) => {
            if let Some(value) = $value {
                $target = value;
                settings.origins.record($key, file.location($key));
            }
        };
    }
    if let Some(claude) = &options.claude {
        set!("coder_options.claude.binary", claude.binary.clone() => settings.coder_options.claude.binary);
        set!("coder_options.claude.disallowed_tools", claude.disallowed_tools.clone() => settings.coder_options.claude.disallowed_tools);
    }
    let Some(codex) = &options.codex else {
        return Ok(());
    };
    set!("coder_options.codex.binary", codex.binary.clone() => settings.coder_options.codex.binary);
    for (model, raw_price) in codex.prices.iter().flatten() {
        let key = format!("coder_options.codex.prices.{model}");
        let price = crate::TokenPrice {
            input: raw_price.input,
            cached_input: raw_price.cached_input.unwrap_or(raw_price.input),
            output: raw_price.output,
        };
        if ![price.input, price.cached_input, price.output]
            .iter()
            .all(|p| p.is_finite() && *p >= 0.0)
        {
            return Err(file
                .error(&key, "prices must be 0 or more dollars per million tokens")
                .hint("write e.g. `{input: 1.25, cached_input: 0.125, output: 10}`"));
        }
        settings
            .coder_options
            .codex
            .prices
            .insert(model.clone(), price);
        settings.origins.record(&key, file.location(&key));
    }
    Ok(())
}

/// `issue_types`: at least one, and never `epic`.
fn apply_issue_types(
    settings: &mut Settings,
    file: &ConfigFile,
    types: &[String],
) -> Result<(), ConfigError> {
    if types.is_empty() {
        return Err(file
            .error("issue_types", "needs at least one issue type")
            .hint("for example [task, bug, feature, chore]"));
    }
    if let Some(i) = types.iter().position(|t| t == "epic") {
        return Err(file
            .error(
                &format!("issue_types[{i}]"),
                "epics are verified, not implemented, and cannot be an issue type to run",
            )
            .hint("remove `epic`; epics close through epic verification"));
    }
    settings.issue_types = types.to_vec();
    settings
        .origins
        .record("issue_types", file.location("issue_types"));
    Ok(())
}

/// `evidence_check.required`: each a configured command, none twice.
fn apply_evidence_check(
    settings: &mut Settings,
    file: &ConfigFile,
    required: &[String],
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in required.iter().enumerate() {
        let key = format!("evidence_check.required[{i}]");
        if !seen.insert(name) {
            return Err(file.error(&key, format!("`{name}` is listed twice")));
        }
        require_command(settings, file, &key, name)?;
    }
    settings.evidence_check.required = required.to_vec();
    Ok(())
}

/// The four validation triggers, each checked against the commands.
fn apply_triggers(
    settings: &mut Settings,
    file: &ConfigFile,
    triggers: &RawTriggers,
) -> Result<(), ConfigError> {
    let t = &mut settings.validation_triggers;
    let pool = &settings.commands;
    if let Some(raw) = &triggers.session_end {
        t.session_end = Some(trigger(file, "validation_triggers.session_end", raw, pool)?);
    }
    if let Some(raw) = &triggers.periodic {
        if raw.interval == 0 {
            return Err(file.error(
                "validation_triggers.periodic.interval",
                "must be at least 1 (issues between runs)",
            ));
        }
        t.periodic = Some(PeriodicTrigger {
            trigger: trigger(file, "validation_triggers.periodic", raw, pool)?,
            interval: raw.interval,
        });
    }
    if let Some(raw) = &triggers.epic_completion {
        t.epic_completion = Some(EpicCompletionTrigger {
            trigger: trigger(file, "validation_triggers.epic_completion", raw, pool)?,
            epic_depth: raw.epic_depth,
            fire_on: raw.fire_on,
            max_epic_verification_retries: raw.max_epic_verification_retries.unwrap_or(3),
        });
    }
    if let Some(raw) = &triggers.run_end {
        t.run_end = Some(RunEndTrigger {
            trigger: trigger(file, "validation_triggers.run_end", raw, pool)?,
            fire_on: raw.fire_on.unwrap_or(FireOn::Success),
        });
    }
    Ok(())
}

/// Everything the file set, at the position it was set, for `config show`.
fn record_file_origins(settings: &mut Settings, file: &ConfigFile) {
    for (path, (line, column)) in file.spans.paths() {
        if path.contains('[')
            || path == "commands"
            || path.starts_with("commands.")
            || path == "preset"
        {
            continue; // list items belong to their list; commands were recorded while merging
        }
        settings.origins.record(
            path,
            Location::File {
                path: file.path.clone(),
                line,
                column,
            },
        );
    }
}

fn require_command(
    settings: &Settings,
    file: &ConfigFile,
    key: &str,
    name: &str,
) -> Result<(), ConfigError> {
    if settings.commands.contains_key(name) {
        return Ok(());
    }
    let known: Vec<&str> = settings.commands.keys().map(String::as_str).collect();
    let hint = if known.is_empty() {
        "no commands are defined; add a `commands:` block or a `preset:`".to_owned()
    } else {
        suggestion(name, &known)
    };
    Err(file
        .error(key, format!("unknown command `{name}`"))
        .hint(hint))
}

fn trigger(
    file: &ConfigFile,
    key: &str,
    raw: &dyn RawTriggerCommon,
    pool: &BTreeMap<String, CommandSpec>,
) -> Result<Trigger, ConfigError> {
    let max_retries = match (raw.failure_mode(), raw.max_retries()) {
        (FailureMode::Remediate, None) => {
            return Err(file
                .error(
                    &format!("{key}.max_retries"),
                    "`failure_mode: remediate` needs `max_retries`",
                )
                .hint("the number of fixer attempts, e.g. `max_retries: 2` (0 aborts at once)"));
        }
        (_, retries) => retries.unwrap_or(0),
    };
    let mut commands = Vec::new();
    for (i, reference) in raw.commands().iter().enumerate() {
        let item = format!("{key}.commands[{i}]");
        let name = reference.name();
        let Some(base) = pool.get(name) else {
            let known: Vec<&str> = pool.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no commands are defined".to_owned()
            } else {
                suggestion(name, &known)
            };
            return Err(file
                .error(&item, format!("unknown command `{name}`"))
                .hint(hint));
        };
        let (command, timeout) = match reference {
            RawCommandRef::Name(_) => (base.command.clone(), base.timeout),
            RawCommandRef::Detailed(d) => {
                if let Some(text) = &d.command {
                    check_command_text(file, &format!("{item}.command"), text)?;
                }
                (
                    d.command.clone().unwrap_or_else(|| base.command.clone()),
                    d.timeout.or(base.timeout),
                )
            }
        };
        commands.push(TriggerCommand {
            name: name.to_owned(),
            command,
            timeout,
        });
    }
    Ok(Trigger {
        failure_mode: raw.failure_mode(),
        max_retries,
        commands,
        code_review: raw.code_review().map(code_review),
    })
}

/// A trigger's review block. (`track_review_issues` was refused at load.)
fn code_review(raw: &RawCodeReview) -> CodeReview {
    let mut review = default_code_review();
    overlay(&mut review.enabled, raw.enabled);
    overlay(&mut review.failure_mode, raw.failure_mode);
    overlay(&mut review.max_retries, raw.max_retries);
    overlay(&mut review.finding_threshold, raw.finding_threshold);
    if let Some(v) = raw.baseline {
        review.baseline = Some(v);
    }
    reviewer_choice(raw, &mut review.reviewer);
    review
}

/// `per_issue_review`. (`failure_mode` and `baseline` were refused at load.)
fn issue_review(raw: &RawCodeReview) -> IssueReview {
    let mut review = default_issue_review();
    overlay(&mut review.enabled, raw.enabled);
    overlay(&mut review.max_retries, raw.max_retries);
    overlay(&mut review.finding_threshold, raw.finding_threshold);
    overlay(&mut review.track_review_issues, raw.track_review_issues);
    reviewer_choice(raw, &mut review.reviewer);
    review
}

fn reviewer_choice(raw: &RawCodeReview, target: &mut ReviewerChoice) {
    overlay(&mut target.reviewer_type, raw.reviewer_type);
    overlay(&mut target.agent_sdk_timeout, raw.agent_sdk_timeout);
    overlay(&mut target.agent_sdk_model, raw.agent_sdk_model);
    if let Some(c) = &raw.cerberus {
        merge_cerberus(&mut target.cerberus, c);
    }
}

/// Replaces `target` with `value` when the file set it.
fn overlay<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn merge_cerberus(target: &mut Cerberus, raw: &RawCerberus) {
    overlay(&mut target.timeout, raw.timeout);
    if let Some(v) = &raw.spawn_args {
        target.spawn_args.clone_from(v);
    }
    if let Some(v) = &raw.wait_args {
        target.wait_args.clone_from(v);
    }
    if let Some(v) = &raw.env {
        target.env.clone_from(v);
    }
}

fn parse_env<T: FromStr>(var: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| {
        ConfigError::new(format!("`{value}`: {e}")).at(Location::Env {
            var: var.to_owned(),
        })
    })
}

fn parse_env_bool(var: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::new(format!("`{value}` is not a yes/no value"))
            .at(Location::Env {
                var: var.to_owned(),
            })
            .hint("use 1/0, true/false, yes/no or on/off")),
    }
}

fn apply_env(settings: &mut Settings, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let at = |var: &str| Location::Env {
        var: var.to_owned(),
    };
    let get = |var: &str| env.get(var).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(v) = get("MALA_CODER") {
        settings.coder = parse_env("MALA_CODER", v)?;
        settings.origins.record("coder", at("MALA_CODER"));
    }
    if let Some(v) = get("MALA_MODEL") {
        settings.model = Some(v.to_owned());
        settings.origins.record("model", at("MALA_MODEL"));
    }
    if let Some(v) = get("MALA_EFFORT") {
        settings.effort = Some(parse_env("MALA_EFFORT", v)?);
        settings.origins.record("effort", at("MALA_EFFORT"));
    }
    if let Some(v) = get("MALA_CLAUDE_SETTINGS_SOURCES") {
        settings.claude_settings_sources = v
            .split(',')
            .map(|s| parse_env("MALA_CLAUDE_SETTINGS_SOURCES", s.trim()))
            .collect::<Result<_, _>>()?;
        settings.origins.record(
            "claude_settings_sources",
            at("MALA_CLAUDE_SETTINGS_SOURCES"),
        );
    }
    if let Some(v) = get("MALA_CLAUDE_BINARY") {
        v.clone_into(&mut settings.coder_options.claude.binary);
        settings
            .origins
            .record("coder_options.claude.binary", at("MALA_CLAUDE_BINARY"));
    }
    if let Some(v) = get("MALA_CODEX_BINARY") {
        v.clone_into(&mut settings.coder_options.codex.binary);
        settings
            .origins
            .record("coder_options.codex.binary", at("MALA_CODEX_BINARY"));
    }
    if let Some(v) = get("MALA_TRACKER") {
        settings.tracker = parse_env("MALA_TRACKER", v)?;
        settings.origins.record("tracker", at("MALA_TRACKER"));
    }
    if let Some(v) = env.get("MALA_TRACK_REVIEW_ISSUES") {
        settings.per_issue_review.track_review_issues =
            parse_env_bool("MALA_TRACK_REVIEW_ISSUES", v)?;
        settings.origins.record(
            "per_issue_review.track_review_issues",
            at("MALA_TRACK_REVIEW_ISSUES"),
        );
    }
    if let Some(v) = get("MALA_RUNS_DIR") {
        settings.paths.runs_dir = PathBuf::from(v);
        settings
            .origins
            .record("paths.runs_dir", at("MALA_RUNS_DIR"));
    }
    if let Some(v) = get("MALA_LOCK_DIR") {
        settings.paths.lock_dir = PathBuf::from(v);
        settings
            .origins
            .record("paths.lock_dir", at("MALA_LOCK_DIR"));
    }
    if let Some((var, hint)) = NOT_BUILT_ENV.iter().find(|(var, _)| get(var).is_some()) {
        return Err(
            ConfigError::new("not built yet: setting it would change nothing")
                .at(at(var))
                .hint(*hint),
        );
    }
    for (var, instead) in DEPRECATED_ENV {
        if env.contains_key(*var) {
            settings
                .warnings
                .push(format!("{var} is no longer read; {instead}"));
        }
    }
    Ok(())
}

/// `budget:`: each limit more than 0, where it stands in the file.
fn apply_budget(
    settings: &mut Settings,
    file: &ConfigFile,
    budget: &RawBudget,
) -> Result<(), ConfigError> {
    let scopes = [
        ("issue", budget.issue.as_ref(), &mut settings.budget.issue),
        ("run", budget.run.as_ref(), &mut settings.budget.run),
    ];
    for (scope, raw, spend) in scopes {
        let Some(raw) = raw else { continue };
        if let Some(cost) = raw.max_cost_usd {
            let key = format!("budget.{scope}.max_cost_usd");
            if !(cost.is_finite() && cost > 0.0) {
                return Err(file.error(
                    &key,
                    "must be more than 0 dollars (leave it out for no limit)",
                ));
            }
            spend.max_cost_usd = Some(cost);
            settings.origins.record(&key, file.location(&key));
        }
        if let Some(tokens) = raw.max_tokens {
            let key = format!("budget.{scope}.max_tokens");
            if tokens == 0 {
                return Err(file.error(
                    &key,
                    "must be more than 0 tokens (leave it out for no limit)",
                ));
            }
            spend.max_tokens = Some(tokens);
            settings.origins.record(&key, file.location(&key));
        }
    }
    Ok(())
}

fn apply_flags(settings: &mut Settings, flags: &FlagOverrides) -> Result<(), ConfigError> {
    let at = |flag: &str| Location::Flag {
        flag: flag.to_owned(),
    };
    for (set, flag, hint) in [
        (
            flags.amp_mode.is_some(),
            "--amp-mode",
            "the Amp backend is not built; leave the flag out",
        ),
        (
            flags.codex_approval_policy.is_some(),
            "--codex-approval-policy",
            CODEX_APPROVAL_HINT,
        ),
        (
            flags.codex_sandbox.is_some(),
            "--codex-sandbox",
            CODEX_SANDBOX_HINT,
        ),
    ] {
        if set {
            return Err(
                ConfigError::new("not built yet: setting it would change nothing")
                    .at(at(flag))
                    .hint(hint),
            );
        }
    }
    if let Some(v) = flags.isolation {
        settings.isolation.isolation = v;
        settings.origins.record("isolation", at("--isolation"));
    }
    if let Some(v) = flags.coder {
        settings.coder = v;
        settings.origins.record("coder", at("--coder"));
    }
    if let Some(v) = &flags.model {
        settings.model = Some(v.clone());
        settings.origins.record("model", at("--model"));
    }
    if let Some(v) = flags.effort {
        settings.effort = Some(v);
        settings.origins.record("effort", at("--effort"));
    }
    if let Some(v) = &flags.claude_settings_sources {
        settings.claude_settings_sources.clone_from(v);
        settings
            .origins
            .record("claude_settings_sources", at("--claude-settings-sources"));
    }
    if let Some(v) = flags.timeout_minutes {
        settings.timeout_minutes = v;
        settings.origins.record("timeout_minutes", at("--timeout"));
    }
    if let Some(v) = flags.max_cost_usd {
        if !(v.is_finite() && v > 0.0) {
            return Err(ConfigError::new("must be more than 0 dollars").at(at("--max-cost")));
        }
        settings.budget.run.max_cost_usd = Some(v);
        settings
            .origins
            .record("budget.run.max_cost_usd", at("--max-cost"));
    }
    if let Some(v) = flags.max_tokens {
        if v == 0 {
            return Err(ConfigError::new("must be more than 0 tokens").at(at("--max-tokens")));
        }
        settings.budget.run.max_tokens = Some(v);
        settings
            .origins
            .record("budget.run.max_tokens", at("--max-tokens"));
    }
    Ok(())
}

/// Fills what depends on other values: a zero timeout means the default, the
/// idle timeout follows the turn timeout unless set, and model and effort
/// default per backend (so switching `--coder` switches the defaults too).
fn derive_backend_defaults(settings: &mut Settings) {
    if settings.timeout_minutes == 0 {
        settings.timeout_minutes = DEFAULT_TIMEOUT_MINUTES;
    }
    if settings.origin("idle_timeout_seconds").is_none() {
        settings.idle_timeout_seconds = derived_idle_timeout(settings.timeout_minutes);
    }
    // Codex's model and effort are the user's codex configuration's (its
    // config.toml or profile, else codex's own defaults) unless mala is told.
    if settings.origin("model").is_none() {
        settings.model = match settings.coder {
            Coder::Claude => Some("opus[1m]".to_owned()),
            Coder::Codex | Coder::Amp => None,
        };
    }
    if settings.origin("effort").is_none() {
        // Amp's effort follows its mode; `amp_mode` is not built, so Amp's default mode (deep).
        settings.effort = match settings.coder {
            Coder::Claude => Some(Effort::Xhigh),
            Coder::Amp => Some(Effort::Medium),
            Coder::Codex => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_config;

    fn resolve_with(
        text: &str,
        env: &[(&str, &str)],
        flags: &FlagOverrides,
    ) -> Result<Settings, ConfigError> {
        let file = parse_config(Path::new("mala.yaml"), text)?;
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(ConfigSources {
            file: Some(&file),
            env: &env,
            flags,
        })
    }

    #[test]
    fn worktree_isolation_refuses_what_would_run_in_the_users_checkout() {
        let flags = FlagOverrides::default();
        let session_end = "preset: rust\nisolation: worktree\nvalidation_triggers:\n  session_end:\n    failure_mode: continue\n    commands: [test]\n";
        let err = resolve_with(session_end, &[], &flags).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("validation_triggers.session_end"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("not built yet with `isolation: worktree`"),
            "{err}"
        );
        assert!(
            matches!(err.location, Some(Location::File { line: 4, .. })),
            "{err}"
        );
        let remediate = "preset: rust\nisolation: worktree\nvalidation_triggers:\n  run_end:\n    failure_mode: remediate\n    max_retries: 2\n    commands: [test]\n";
        let err = resolve_with(remediate, &[], &flags).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("validation_triggers.run_end.failure_mode"),
            "{err}"
        );
        // The flag sets it too, and the shared checkout takes both.
        let flag = FlagOverrides {
            isolation: Some(crate::Isolation::Worktree),
            ..FlagOverrides::default()
        };
        let shared = session_end.replace("isolation: worktree\n", "");
        assert!(resolve_with(&shared, &[], &flags).is_ok());
        assert!(resolve_with(&shared, &[], &flag).is_err());
        let settings = resolve_with("preset: rust\nisolation: worktree\nmerge_strategy: merge\nmerge_queue:\n  validate: false\n  max_retries: 5\nkeep_branches: true\n", &[], &flags).unwrap();
        assert_eq!(
            settings.isolation.merge_strategy,
            crate::MergeStrategy::Merge
        );
        assert_eq!(
            (
                settings.isolation.merge_queue.validate,
                settings.isolation.merge_queue.max_retries
            ),
            (false, 5)
        );
        assert!(settings.isolation.keep_branches);
        let err = resolve_with("preset: rust\nisolation: sideways\n", &[], &flags).unwrap_err();
        assert!(
            err.to_string().contains("shared") && err.to_string().contains("worktree"),
            "{err}"
        );
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let text = "preset: rust\nmodel: from-file\neffort: low\ncoder: codex\n";
        let env = [("MALA_MODEL", "from-env"), ("MALA_EFFORT", "medium")];
        let flags = FlagOverrides {
            model: Some("from-flag".into()),
            ..FlagOverrides::default()
        };
        let settings = resolve_with(text, &env, &flags).unwrap();
        assert_eq!(settings.model.as_deref(), Some("from-flag"));
        assert_eq!(
            settings.origin("model"),
            Some(&Location::Flag {
                flag: "--model".into()
            })
        );
        assert_eq!(settings.effort, Some(Effort::Medium));
        assert_eq!(
            settings.origin("effort"),
            Some(&Location::Env {
                var: "MALA_EFFORT".into()
            })
        );
        assert_eq!(settings.coder, Coder::Codex);
        assert!(matches!(
            settings.origin("coder"),
            Some(Location::File { line: 4, .. })
        ));
        assert!(matches!(
            settings.origin("commands.test"),
            Some(Location::Preset { .. })
        ));
    }

    #[test]
    fn backend_defaults_follow_the_chosen_coder() {
        let claude = resolve_with("preset: rust\n", &[], &FlagOverrides::default()).unwrap();
        assert_eq!(claude.model.as_deref(), Some("opus[1m]"));
        assert_eq!(claude.effort, Some(Effort::Xhigh));
        let flags = FlagOverrides {
            coder: Some(Coder::Codex),
            ..FlagOverrides::default()
        };
        // Codex's own configuration (the user's config.toml) chooses, unless mala is told.
        let codex = resolve_with("preset: rust\n", &[], &flags).unwrap();
        assert_eq!(codex.model, None);
        assert_eq!(codex.effort, None);
        let told = FlagOverrides {
            model: Some("gpt-5.5".into()),
            effort: Some(Effort::High),
            ..flags
        };
        let codex = resolve_with("preset: rust\n", &[], &told).unwrap();
        assert_eq!(codex.model.as_deref(), Some("gpt-5.5"));
        assert_eq!(codex.effort, Some(Effort::High));
    }

    #[test]
    fn a_key_that_is_not_built_is_refused_where_it_stands() {
        let text = "preset: rust\nlock_wait:\n  enabled: false\n";
        let err = resolve_with(text, &[], &FlagOverrides::default()).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("lock_wait"));
        assert!(err.message.contains("not built yet"), "{err}");
        assert!(err.hint.is_some(), "{err}");
        assert!(
            err.to_string().starts_with("mala.yaml:2:1: lock_wait: "),
            "{err}"
        );
        // Its old default is refused too: any setting would pretend.
        let err = resolve_with(
            "preset: rust\nmax_diff_size_kb: 0\n",
            &[],
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("max_diff_size_kb"));
        // `key: null` means "not set", so there is nothing to refuse.
        resolve_with(
            "preset: rust\nlong_running: null\n",
            &[],
            &FlagOverrides::default(),
        )
        .unwrap();
    }

    #[test]
    fn review_keys_are_refused_only_in_the_block_where_they_do_nothing() {
        let flags = FlagOverrides::default();
        let refused = [
            (
                "per_issue_review:\n  failure_mode: abort\n",
                "per_issue_review.failure_mode",
                2,
            ),
            (
                "validation_triggers:\n  run_end:\n    failure_mode: continue\n    code_review:\n      track_review_issues: false\n",
                "validation_triggers.run_end.code_review.track_review_issues",
                5,
            ),
            (
                "validation_triggers:\n  session_end:\n    failure_mode: continue\n    code_review:\n      enabled: true\n",
                "validation_triggers.session_end.code_review",
                4,
            ),
        ];
        for (block, key, line) in refused {
            let err = resolve_with(&format!("preset: rust\n{block}"), &[], &flags).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert!(
                matches!(err.location, Some(Location::File { line: l, .. }) if l == line + 1),
                "{err}"
            );
        }
        let text = "preset: rust\nper_issue_review:\n  track_review_issues: false\n\
                    validation_triggers:\n  run_end:\n    failure_mode: continue\n    \
                    code_review:\n      failure_mode: abort\n      baseline: since_run_start\n";
        let settings = resolve_with(text, &[], &flags).unwrap();
        assert!(!settings.per_issue_review.track_review_issues);
        let review = settings
            .validation_triggers
            .run_end
            .unwrap()
            .trigger
            .code_review
            .unwrap();
        assert_eq!(review.failure_mode, FailureMode::Abort);
    }

    #[test]
    fn not_built_variables_and_flags_are_refused_by_name() {
        let err = resolve_with(
            "preset: rust\n",
            &[("MALA_VALIDATION_LOG_DIR", "/tmp/x")],
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.location,
            Some(Location::Env {
                var: "MALA_VALIDATION_LOG_DIR".into()
            })
        );
        assert!(err.message.contains("not built yet"), "{err}");
        // An empty variable is not set.
        resolve_with(
            "preset: rust\n",
            &[("MALA_DISABLE_DEBUG_LOG", "")],
            &FlagOverrides::default(),
        )
        .unwrap();
        let flags = FlagOverrides {
            codex_sandbox: Some(CodexSandbox::ReadOnly),
            ..FlagOverrides::default()
        };
        let err = resolve_with("preset: rust\n", &[], &flags).unwrap_err();
        assert_eq!(
            err.location,
            Some(Location::Flag {
                flag: "--codex-sandbox".into()
            })
        );
        assert!(err.message.contains("not built yet"), "{err}");
    }

    #[test]
    fn a_file_without_commands_is_an_error() {
        let flags = FlagOverrides::default();
        let err = resolve_with("model: sonnet\n", &[], &flags).unwrap_err();
        assert!(err.message.contains("no commands"), "{err}");
        assert!(
            err.hint.as_deref().is_some_and(|h| h.contains("preset")),
            "{err}"
        );
        let all_disabled = "preset: go\ncommands:\n  setup: null\n  build: null\n  test: null\n  lint: null\n  format: null\n  typecheck: null\n  e2e: null\n";
        let err = resolve_with(all_disabled, &[], &flags).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("commands"), "{err}");
        assert!(err.message.contains("no commands"), "{err}");
        resolve_with("commands:\n  check: ./check.sh\n", &[], &flags).unwrap();
    }

    #[test]
    fn wired_review_and_verifier_limits_resolve_from_the_file() {
        let text = "preset: rust\nper_issue_review:\n  agent_sdk_timeout: 42\n  agent_sdk_model: haiku\n\
                    epic_verification:\n  agent_sdk_timeout: 77\n";
        let settings = resolve_with(text, &[], &FlagOverrides::default()).unwrap();
        assert_eq!(settings.per_issue_review.reviewer.agent_sdk_timeout, 42);
        assert_eq!(
            settings.per_issue_review.reviewer.agent_sdk_model,
            AgentSdkModel::Haiku
        );
        assert_eq!(settings.epic_verification.agent_sdk_timeout, 77);
    }

    #[test]
    fn idle_timeout_follows_the_turn_timeout_unless_set() {
        let flags = FlagOverrides {
            timeout_minutes: Some(60),
            ..FlagOverrides::default()
        };
        let derived = resolve_with("preset: rust\n", &[], &flags).unwrap();
        assert!((derived.idle_timeout_seconds - 720.0).abs() < f64::EPSILON);
        let set = resolve_with("preset: rust\nidle_timeout_seconds: 42\n", &[], &flags).unwrap();
        assert!((set.idle_timeout_seconds - 42.0).abs() < f64::EPSILON);
    }

    #[test]
    fn the_codex_binary_comes_from_the_file_then_the_environment() {
        let flags = FlagOverrides::default();
        let text = "preset: rust\ncoder_options:\n  codex:\n    binary: /opt/codex\n";
        let from_file = resolve_with(text, &[], &flags).unwrap();
        assert_eq!(from_file.coder_options.codex.binary, "/opt/codex");
        let from_env = resolve_with(text, &[("MALA_CODEX_BINARY", "/env/codex")], &flags).unwrap();
        assert_eq!(from_env.coder_options.codex.binary, "/env/codex");
        let default = resolve_with("preset: rust\n", &[], &flags).unwrap();
        assert_eq!(default.coder_options.codex.binary, "codex");
    }

    #[test]
    fn codex_options_mala_cannot_honour_are_refused_with_why() {
        let flags = FlagOverrides::default();
        let text = "preset: rust\ncoder_options:\n  codex:\n    approval_policy: never\n";
        let err = resolve_with(text, &[], &flags).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("coder_options.codex.approval_policy")
        );
        assert!(
            err.hint
                .as_deref()
                .unwrap_or_default()
                .contains("unguarded"),
            "{err}"
        );
        let flags = FlagOverrides {
            codex_approval_policy: Some(CodexApprovalPolicy::Never),
            ..FlagOverrides::default()
        };
        let err = resolve_with("preset: rust\n", &[], &flags).unwrap_err();
        assert!(
            err.hint
                .as_deref()
                .unwrap_or_default()
                .contains("unguarded"),
            "{err}"
        );
    }

    #[test]
    fn with_codex_a_claude_reviewer_model_and_a_dollar_budget_are_refused() {
        let codex = FlagOverrides {
            coder: Some(Coder::Codex),
            ..FlagOverrides::default()
        };
        let text = "preset: rust\nper_issue_review:\n  enabled: true\n  agent_sdk_model: haiku\n";
        let err = resolve_with(text, &[], &codex).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("per_issue_review.agent_sdk_model"));
        assert!(
            matches!(err.location, Some(Location::File { line: 4, .. })),
            "{err}"
        );
        let claude_keys = "preset: rust\nclaude_settings_sources: [local]\n";
        let said = resolve_with(claude_keys, &[], &codex).unwrap();
        assert!(
            said.warnings()
                .iter()
                .any(|w| w.contains("claude_settings_sources") && w.contains("ignores")),
            "{:?}",
            said.warnings()
        );
        let max = FlagOverrides {
            effort: Some(Effort::Max),
            ..codex.clone()
        };
        let err = resolve_with("preset: rust\n", &[], &max).unwrap_err();
        assert!(err.message.contains("no `max`"), "{err}");
        // The same file is fine for Claude, and a review without the key for codex.
        resolve_with(text, &[], &FlagOverrides::default()).unwrap();
        let unset = "preset: rust\nper_issue_review:\n  enabled: true\n";
        resolve_with(unset, &[], &codex).unwrap();

        let dollars = FlagOverrides {
            max_cost_usd: Some(5.0),
            ..codex.clone()
        };
        let err = resolve_with("preset: rust\n", &[], &dollars).unwrap_err();
        assert_eq!(
            err.location,
            Some(Location::Flag {
                flag: "--max-cost".into()
            })
        );
        assert!(err.message.contains("tokens, not dollars"), "{err}");
        let tokens = FlagOverrides {
            max_tokens: Some(1000),
            ..codex.clone()
        };
        resolve_with("preset: rust\n", &[], &tokens).unwrap();
        // With prices, dollars can be counted.
        let priced = "preset: rust\ncoder_options:\n  codex:\n    prices:\n      gpt-5.5: {input: 1.25, output: 10}\n";
        let settings = resolve_with(priced, &[], &dollars).unwrap();
        let price = settings.coder_options.codex.prices["gpt-5.5"];
        assert!(
            (price.cached_input - 1.25).abs() < f64::EPSILON,
            "cached defaults to input"
        );
        let negative = priced.replace("10}", "-1}");
        let err = resolve_with(&negative, &[], &codex).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("coder_options.codex.prices.gpt-5.5")
        );
    }
}
