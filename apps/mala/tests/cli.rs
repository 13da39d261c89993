//! The `mala` binary as a user runs it: configuration errors, init round
//! trips, exit codes. Each test gets its own directory and a clean environment.
#![allow(clippy::expect_used)] // helpers outside #[test] fns panic to fail the test

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// One HOME for every run, so default paths (which follow HOME) compare equal.
const HOME: &str = "/tmp/mala-cli-test-home";

fn mala(dir: &Path, args: &[&str]) -> Output {
    mala_with_env(dir, args, &[])
}

/// Runs mala in `dir` with a clean environment plus `env`.
fn mala_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", HOME)
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .output()
        .expect("run mala")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// (name, file content, what the message must contain besides `mala.yaml:L:C`)
const MALFORMED: &[(&str, &str, &str)] = &[
    ("empty file", "", "sets nothing"),
    ("comments only", "# nothing here\n", "sets nothing"),
    (
        "top level is a list",
        "- test\n- lint\n",
        "must be a mapping",
    ),
    ("top level is a scalar", "just words\n", "must be a mapping"),
    (
        "a budget of 0 dollars",
        "preset: rust\nbudget:\n  issue:\n    max_cost_usd: 0\n",
        "budget.issue.max_cost_usd",
    ),
    (
        "a negative run budget",
        "preset: rust\nbudget:\n  run:\n    max_cost_usd: -5\n",
        "must be more than 0 dollars",
    ),
    (
        "a budget of 0 tokens",
        "preset: rust\nbudget:\n  run:\n    max_tokens: 0\n",
        "must be more than 0 tokens",
    ),
    (
        "a misspelt budget key",
        "preset: rust\nbudget:\n  issue:\n    max_cost: 3\n",
        "max_cost_usd",
    ),
    (
        "bad YAML syntax",
        "preset: rust\ncommands:\n  test: [unclosed\n",
        "invalid YAML",
    ),
    (
        "tab indentation",
        "preset: rust\ncommands:\n\ttest: x\n",
        "invalid YAML",
    ),
    (
        "duplicate key",
        "preset: rust\npreset: go\n",
        "duplicate key `preset`",
    ),
    (
        "anchors",
        "preset: rust\ncommands:\n  test: &t cargo test\n  lint: *t\n",
        "anchors",
    ),
    (
        "unknown top-level key",
        "preset: rust\nbanana: 1\n",
        "unknown key `banana`",
    ),
    (
        "typo at top level",
        "preset: rust\ntimout_minutes: 5\n",
        "did you mean `timeout_minutes`",
    ),
    (
        "typo in a command",
        "preset: rust\ncommands:\n  test:\n    comand: cargo test\n",
        "did you mean `command`",
    ),
    (
        "typo in a trigger",
        "preset: rust\nvalidation_triggers:\n  run_end:\n    failure_mode: continue\n    comands: [test]\n",
        "did you mean `commands`",
    ),
    (
        "unknown trigger",
        "preset: rust\nvalidation_triggers:\n  on_push:\n    failure_mode: abort\n",
        "unknown key `on_push`",
    ),
    ("unknown preset", "preset: cobol\n", "unknown value `cobol`"),
    (
        "typo in an enum",
        "preset: rust\ncoder: claud\n",
        "did you mean `claude`",
    ),
    (
        "wrong type: string for int",
        "preset: rust\ntimeout_minutes: soon\n",
        "whole number",
    ),
    (
        "wrong type: bool for int",
        "preset: rust\nmax_idle_retries: true\n",
        "whole number",
    ),
    (
        "wrong type: negative int",
        "preset: rust\nmax_gate_retries: -1\n",
        "whole number",
    ),
    (
        "wrong type: list for string",
        "preset: rust\nmodel: [a, b]\n",
        "wrong type",
    ),
    (
        "wrong type: not a bool",
        "preset: rust\ngate:\n  rerun: maybe\n",
        "true or false",
    ),
    (
        "wrong type: quoted number",
        "preset: rust\ntimeout_minutes: \"30\"\n",
        "whole number",
    ),
    (
        "missing failure_mode",
        "preset: rust\nvalidation_triggers:\n  run_end:\n    commands: [test]\n",
        "missing required key `failure_mode`",
    ),
    (
        "remediate without max_retries",
        "preset: rust\nvalidation_triggers:\n  session_end:\n    failure_mode: remediate\n    commands: [test]\n",
        "needs `max_retries`",
    ),
    (
        "periodic without interval",
        "preset: rust\nvalidation_triggers:\n  periodic:\n    failure_mode: continue\n",
        "missing required key `interval`",
    ),
    (
        "periodic interval zero",
        "preset: rust\nvalidation_triggers:\n  periodic:\n    failure_mode: continue\n    interval: 0\n",
        "at least 1",
    ),
    (
        "epic trigger without fire_on",
        "preset: rust\nvalidation_triggers:\n  epic_completion:\n    failure_mode: continue\n    epic_depth: all\n",
        "missing required key `fire_on`",
    ),
    (
        "trigger references a missing command",
        "preset: rust\nvalidation_triggers:\n  run_end:\n    failure_mode: continue\n    commands: [test, typecheck]\n",
        "unknown command `typecheck`",
    ),
    (
        "evidence references a missing command",
        "preset: rust\nevidence_check:\n  required: [tests]\n",
        "did you mean `test`",
    ),
    (
        "evidence lists a command twice",
        "preset: rust\nevidence_check:\n  required: [test, test]\n",
        "listed twice",
    ),
    (
        "empty command",
        "commands:\n  test: \"\"\n",
        "the command is empty",
    ),
    (
        "invalid command name",
        "commands:\n  \"my check\": make check\n",
        "invalid command name",
    ),
    (
        "timeout-only command without preset",
        "commands:\n  test:\n    timeout: 30\n",
        "has no `command`",
    ),
    (
        "allow_fail on a built-in",
        "preset: rust\ncommands:\n  test:\n    allow_fail: true\n",
        "only allowed on custom commands",
    ),
    (
        "not built: coverage",
        "preset: rust\ncoverage:\n  format: xml\n  file: cov.xml\n  threshold: 80\n",
        "coverage: not built yet",
    ),
    (
        "not built: codex options",
        "preset: rust\ncoder_options:\n  codex:\n    sandbox: read-only\n",
        "coder_options.codex.sandbox: not built yet",
    ),
    (
        "not built: a key inside a trigger's review",
        "preset: rust\nvalidation_triggers:\n  periodic:\n    failure_mode: continue\n    interval: 2\n    code_review:\n      track_review_issues: true\n",
        "validation_triggers.periodic.code_review.track_review_issues: not built yet",
    ),
    (
        "no commands at all",
        "model: sonnet\n",
        "no commands are configured",
    ),
    (
        "every command disabled",
        "preset: rust\ncommands:\n  setup: null\n  test: null\n  lint: null\n  format: null\n",
        "no commands are configured",
    ),
    (
        "removed key",
        "preset: rust\nvalidate_every: 3\n",
        "no longer supported",
    ),
    (
        "dead epic_verification key",
        "preset: rust\nepic_verification:\n  max_retries: 3\n",
        "unknown key `max_retries`",
    ),
    (
        "bad settings source",
        "preset: rust\nclaude_settings_sources: [local, global]\n",
        "unknown value `global`",
    ),
    (
        "epic as an issue type",
        "preset: rust\nissue_types: [task, epic]\n",
        "epics are verified",
    ),
    (
        "bad finding threshold",
        "preset: rust\nper_issue_review:\n  enabled: true\n  finding_threshold: P7\n",
        "unknown value `P7`",
    ),
];

#[test]
fn malformed_configs_name_the_file_line_and_column_and_exit_1() {
    assert!(MALFORMED.len() >= 25);
    let position = regex_like_position();
    for (name, text, expected) in MALFORMED {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mala.yaml"), text).unwrap();
        let output = mala(dir.path(), &["config", "check"]);
        let message = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}: expected exit 1, got {:?}: {message}",
            output.status
        );
        assert!(
            position(&message),
            "{name}: no mala.yaml:LINE:COLUMN in: {message}"
        );
        assert!(
            message.contains(expected),
            "{name}: expected `{expected}` in: {message}"
        );
        assert!(!message.contains("panicked"), "{name}: panicked: {message}");
    }
}

/// Matches `mala.yaml:<digits>:<digits>:`.
fn regex_like_position() -> impl Fn(&str) -> bool {
    |message: &str| {
        message.match_indices("mala.yaml:").any(|(i, m)| {
            let rest = &message[i + m.len()..];
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap_or_default();
            let column = parts.next().unwrap_or_default();
            !line.is_empty()
                && line.chars().all(|c| c.is_ascii_digit())
                && !column.is_empty()
                && column.chars().all(|c| c.is_ascii_digit())
        })
    }
}

#[test]
fn errors_point_at_the_offending_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mala.yaml"),
        "preset: rust\n\ncommands:\n  test:\n    tiemout: 5\n",
    )
    .unwrap();
    let output = mala(dir.path(), &["config", "check"]);
    assert!(
        stderr(&output).contains("mala.yaml:5:5: commands.test.tiemout: unknown key `tiemout`"),
        "{}",
        stderr(&output)
    );
}

fn show_json(dir: &Path) -> Value {
    let output = mala(dir, &["config", "show", "--json"]);
    assert!(
        output.status.success(),
        "config show failed: {}",
        stderr(&output)
    );
    serde_json::from_str(&stdout(&output)).expect("config show --json prints JSON")
}

#[test]
fn init_round_trips_every_preset() {
    for preset in ["python-uv", "node-npm", "go", "rust", "gleam"] {
        // What init writes with no extras must equal the bare preset.
        let bare = tempfile::tempdir().unwrap();
        std::fs::write(bare.path().join("mala.yaml"), format!("preset: {preset}\n")).unwrap();
        let expected = show_json(bare.path());

        let dir = tempfile::tempdir().unwrap();
        let output = mala(
            dir.path(),
            &[
                "init",
                "--preset",
                preset,
                "--yes",
                "--skip-evidence",
                "--skip-triggers",
            ],
        );
        assert!(
            output.status.success(),
            "init --preset {preset}: {}",
            stderr(&output)
        );
        let written = show_json(dir.path());
        assert_eq!(written["settings"], expected["settings"], "preset {preset}");

        // With the defaults, evidence and the run_end trigger come on top of the same preset.
        let full = tempfile::tempdir().unwrap();
        let output = mala(full.path(), &["init", "--preset", preset, "--yes"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let settings = &show_json(full.path())["settings"];
        assert_eq!(
            settings["commands"], expected["settings"]["commands"],
            "preset {preset}"
        );
        let required = settings["evidence_check"]["required"].as_array().unwrap();
        assert!(required.iter().all(|c| {
            expected["settings"]["commands"]
                .get(c.as_str().unwrap())
                .is_some()
        }));
        if expected["settings"]["commands"].get("test").is_some() {
            assert!(
                required.contains(&Value::from("test")),
                "preset {preset}: {required:?}"
            );
        }
        assert_eq!(
            settings["validation_triggers"]["run_end"]["failure_mode"],
            "continue"
        );
    }
}

#[test]
fn init_rust_yes_equals_the_preset_plus_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        mala(dir.path(), &["init", "--preset", "rust", "--yes"])
            .status
            .success()
    );
    let by_hand = tempfile::tempdir().unwrap();
    std::fs::write(
        by_hand.path().join("mala.yaml"),
        "preset: rust\nevidence_check:\n  required: [test, lint]\nvalidation_triggers:\n  run_end:\n    failure_mode: continue\n    commands: [test, lint, format]\n",
    )
    .unwrap();
    assert_eq!(
        show_json(dir.path())["settings"],
        show_json(by_hand.path())["settings"]
    );
}

#[test]
fn init_backs_up_an_existing_file_and_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mala.yaml"), "preset: go\n").unwrap();
    let dry = mala(
        dir.path(),
        &["init", "--preset", "rust", "--yes", "--dry-run"],
    );
    assert!(dry.status.success());
    assert!(stdout(&dry).contains("preset: rust"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mala.yaml")).unwrap(),
        "preset: go\n"
    );
    assert!(!dir.path().join("mala.yaml.bak").exists());

    assert!(
        mala(dir.path(), &["init", "--preset", "rust", "--yes"])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mala.yaml.bak")).unwrap(),
        "preset: go\n"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("mala.yaml"))
            .unwrap()
            .contains("preset: rust")
    );
}

#[test]
fn init_without_a_terminal_asks_for_flags() {
    let dir = tempfile::tempdir().unwrap();
    let output = mala(dir.path(), &["init"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--preset NAME --yes"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("mala.yaml").exists());
}

#[test]
fn config_show_names_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mala.yaml"),
        "preset: rust\ncommands:\n  lint: null\n  test:\n    timeout: 60\nmodel: sonnet\n",
    )
    .unwrap();
    let output = mala_with_env(
        dir.path(),
        &["config", "show", "--json"],
        &[("MALA_EFFORT", "low")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let origins = &shown["origins"];
    assert_eq!(origins["commands.test.command"], "preset rust");
    assert_eq!(origins["commands.test.timeout"], "mala.yaml:5:5");
    assert_eq!(origins["model"], "mala.yaml:6:1");
    assert_eq!(origins["effort"], "environment variable MALA_EFFORT");
    assert_eq!(origins["coder"], "default");
    assert!(
        shown["settings"]["commands"].get("lint").is_none(),
        "null disables the preset's lint"
    );
    assert_eq!(shown["settings"]["commands"]["test"]["timeout"], 60);
}

#[test]
fn run_checks_its_flags_and_config_then_names_a_missing_claude() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mala.yaml"),
        "preset: rust\nmodel: from-file\n",
    )
    .unwrap();
    let output = mala_with_env(
        dir.path(),
        &["run", "--model", "from-flag", "--effort", "high"],
        &[("MALA_MODEL", "from-env")],
    );
    // Precedence itself is tested in mala-domain (resolve); here: run accepts the
    // layered values, then finds no claude on this PATH and says how to install it.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Claude Code (`claude`) was not found"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("npm install"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_environment_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mala.yaml"), "preset: rust\n").unwrap();
    let output = mala_with_env(dir.path(), &["config", "check"], &[("MALA_CODER", "gpt")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("environment variable MALA_CODER"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn not_built_variables_and_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mala.yaml"), "preset: rust\n").unwrap();
    let output = mala_with_env(
        dir.path(),
        &["config", "check"],
        &[("MALA_DISABLE_DEBUG_LOG", "1")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("environment variable MALA_DISABLE_DEBUG_LOG: not built yet"),
        "{}",
        stderr(&output)
    );
    let output = mala(dir.path(), &["run", "--codex-sandbox", "read-only"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("flag --codex-sandbox: not built yet"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_explicit_config_is_exit_1_and_missing_default_says_init() {
    let dir = tempfile::tempdir().unwrap();
    let output = mala(dir.path(), &["config", "check", "--config", "nope.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("nope.yaml not found"));
    let output = mala(dir.path(), &["config", "check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("mala init"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mala.yaml"), "preset: rust\n").unwrap();
    for args in [
        &["run", "--strict"][..],
        &["run", "--resume", "--strict", "--fresh"],
        &["run", "--order", "input"],
        &["run", "--max-issues", "0"],
        &["run", "--scope", "everything"],
        &["init", "--yes"],
        &["frobnicate"],
    ] {
        let output = mala(dir.path(), args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn version_help_and_completions_work() {
    let dir = tempfile::tempdir().unwrap();
    let version = mala(dir.path(), &["--version"]);
    assert!(version.status.success());
    assert!(stdout(&version).starts_with("mala "));
    let help = mala(dir.path(), &["--help"]);
    assert!(help.status.success());
    for command in [
        "run",
        "init",
        "status",
        "clean",
        "logs",
        "epic-verify",
        "config",
        "completions",
    ] {
        assert!(stdout(&help).contains(command), "--help lists {command}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let output = mala(dir.path(), &["completions", shell]);
        assert!(
            output.status.success() && stdout(&output).contains("mala"),
            "{shell}"
        );
    }
}

#[test]
fn the_dashboard_listens_beyond_loopback_only_when_asked_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mala.yaml"), "preset: rust\n").unwrap();
    let far = mala(dir.path(), &["run", "--serve", "0.0.0.0:0"]);
    assert_eq!(far.status.code(), Some(2), "{}", stderr(&far));
    assert!(stderr(&far).contains("--serve-public"), "{}", stderr(&far));
    let bare = mala(dir.path(), &["run", "--serve", "--serve-public"]);
    assert_eq!(bare.status.code(), Some(2), "{}", stderr(&bare));
    assert!(
        stderr(&bare).contains("needs the address"),
        "{}",
        stderr(&bare)
    );
    let alone = mala(dir.path(), &["run", "--serve-public"]);
    assert_eq!(alone.status.code(), Some(2), "{}", stderr(&alone));
    // A repository after a bare --serve reads as its address: say how to write it.
    let path = mala(dir.path(), &["run", "--serve", "."]);
    assert_eq!(path.status.code(), Some(2), "{}", stderr(&path));
    assert!(stderr(&path).contains("--serve=ADDR"), "{}", stderr(&path));
    let none = mala(dir.path(), &["dashboard", "nosuchrun"]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("no run nosuchrun"),
        "{}",
        stderr(&none)
    );
}
