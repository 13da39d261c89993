//! Nothing in `Settings` pretends: every value `mala config show` prints is
//! read by code outside the configuration module, and every documented key
//! that is not built yet is refused at load time instead of kept.
//!
//! "Read" is checked by name: some non-test source outside
//! `crates/mala-domain/src/config/` must contain `.<field>` for the path's
//! last segment. That is coarse (two structs may share a field name), but it
//! catches the drift that matters: a key added to the schema and to
//! `Settings` that no consumer ever looks at.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic to fail the test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mala_domain::{
    ConfigSources, FlagOverrides, NOT_BUILT_KEYS, Settings, dotted_leaves, parse_config, resolve,
};

/// A file that sets every optional part of `Settings`, so each leaf shows.
const EVERYTHING: &str = "\
preset: rust
commands:
  check:
    command: ./check.sh
    allow_fail: true
evidence_check:
  required: [test]
per_issue_review:
  enabled: true
validation_triggers:
  session_end:
    failure_mode: continue
    commands: [test]
  periodic:
    failure_mode: continue
    interval: 2
    commands: [test]
    code_review:
      enabled: true
      baseline: since_run_start
  epic_completion:
    failure_mode: continue
    epic_depth: all
    fire_on: both
  run_end:
    failure_mode: continue
";

fn resolve_text(text: &str) -> Result<Settings, mala_domain::ConfigError> {
    let file = parse_config(Path::new("mala.yaml"), text)?;
    resolve(ConfigSources {
        file: Some(&file),
        env: &BTreeMap::new(),
        flags: &FlagOverrides::default(),
    })
}

/// The dotted leaf paths `mala config show` prints.
fn leaves(settings: &Settings) -> Vec<String> {
    dotted_leaves(&serde_json::to_value(settings).unwrap())
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Non-test Rust sources of the production crates, minus the configuration
/// module itself. Inline test modules (from `#[cfg(test)]` on) are cut off.
fn consumer_sources() -> Vec<(PathBuf, String)> {
    let root = workspace_root();
    let mut files = Vec::new();
    for top in ["apps", "crates"] {
        for entry in std::fs::read_dir(root.join(top)).unwrap() {
            let krate = entry.unwrap().path();
            if krate.ends_with("mala-testkit") {
                continue; // dev only: a read there is a test's
            }
            collect_rs(&krate.join("src"), &mut files);
        }
    }
    let config = root.join("crates/mala-domain/src/config");
    files
        .into_iter()
        .filter(|path| !path.starts_with(&config))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_owned();
            (path, code)
        })
        .collect()
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `code` has `.field` not followed by more of an identifier.
fn reads(code: &str, field: &str) -> bool {
    let needle = format!(".{field}");
    code.match_indices(&needle).any(|(i, _)| {
        code[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

#[test]
fn every_settings_value_is_read_outside_the_config_module() {
    let settings = resolve_text(EVERYTHING).unwrap();
    let paths = leaves(&settings);
    assert!(
        paths.len() > 40,
        "the fixture should reach every part: {paths:?}"
    );
    let sources = consumer_sources();
    assert!(
        sources.iter().any(|(p, _)| p.ends_with("orchestrator.rs")),
        "the source walk found the orchestrator"
    );
    let unread: Vec<&String> = paths
        .iter()
        .filter(|path| {
            let field = path.rsplit('.').next().unwrap_or(path);
            !sources.iter().any(|(_, code)| reads(code, field))
        })
        .collect();
    assert!(
        unread.is_empty(),
        "these Settings values are resolved but read nowhere outside \
         crates/mala-domain/src/config/: {unread:?}. Wire each one, or add it to \
         NOT_BUILT_KEYS (refused at load time) and drop its field"
    );
}

#[test]
fn keys_that_are_not_built_have_no_value_in_settings() {
    let settings = resolve_text(EVERYTHING).unwrap();
    let paths = leaves(&settings);
    for path in &paths {
        // A refused block covers its children too: check every prefix.
        let mut prefix = String::new();
        for segment in path.split('.') {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(segment);
            let shown = NOT_BUILT_KEYS.iter().find(|k| k.matches(&prefix));
            assert!(
                shown.is_none(),
                "`{path}` is in config show, but `{}` is refused as not built",
                shown.map_or("", |k| k.path)
            );
        }
    }
}

/// The YAML that sets `path` (any trigger for `*`); the value does not
/// matter, because refusal comes before the schema.
fn yaml_setting(path: &str) -> String {
    let mut text = String::new();
    for (depth, segment) in path.split('.').enumerate() {
        let segment = if segment == "*" { "periodic" } else { segment };
        text.push_str(&"  ".repeat(depth));
        text.push_str(segment);
        text.push(':');
        text.push('\n');
    }
    text.pop();
    format!("preset: rust\n{text} 1\n")
}

#[test]
fn every_key_that_is_not_built_is_refused_where_it_stands() {
    for key in NOT_BUILT_KEYS {
        let text = yaml_setting(key.path);
        let Err(err) = resolve_text(&text) else {
            panic!("`{}` is not built but loads:\n{text}", key.path);
        };
        let expected = key.path.replace('*', "periodic");
        assert_eq!(err.key.as_deref(), Some(expected.as_str()), "{err}");
        assert!(err.message.contains("not built yet"), "{err}");
        assert_eq!(err.hint.as_deref(), Some(key.hint), "{err}");
        let depth = key.path.split('.').count();
        assert!(
            matches!(err.location, Some(mala_domain::Location::File { line, column, .. })
                if line == depth + 1 && column == 2 * depth - 1),
            "{}: {err}",
            key.path
        );
    }
}

#[test]
fn the_reads_check_sees_word_boundaries() {
    assert!(reads(
        "let x = s.track_review_issues;",
        "track_review_issues"
    ));
    assert!(!reads(
        "let x = s.track_review_issues_more;",
        "track_review_issues"
    ));
    assert!(!reads("track_review_issues", "track_review_issues"));
}
