//! `mala config show` and `mala config check`.

use std::fmt::Write as _;
use std::path::Path;

use mala_domain::{FlagOverrides, OriginDisplay, Settings, dotted_leaves};
use serde_json::{Map, Value, json};

use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, load_settings};

pub(crate) fn show(repo: &Path, config: Option<&Path>, as_json: bool) -> Result<(), Failure> {
    let config = ConfigPath::new(repo, config);
    let (settings, file) = load_settings(&config, &FlagOverrides::default())?;
    let source = file.as_ref().map(|f| f.path.display().to_string());
    let values = serde_json::to_value(&settings).map_err(|e| Failure::Other {
        message: format!("could not serialise the settings: {e}"),
        hint: None,
    })?;
    let leaves = dotted_leaves(&values);

    if as_json {
        let origins: Map<String, Value> = leaves
            .iter()
            .map(|(path, _)| (path.clone(), Value::String(origin(&settings, path))))
            .collect();
        let document = json!({
            "config_file": source,
            "settings": values,
            "origins": origins,
            "warnings": settings.warnings(),
        });
        output::stdout(&format!("{document:#}\n"));
        return Ok(());
    }

    let mut text = String::new();
    match &source {
        Some(path) => {
            let _ = writeln!(text, "# configuration: {path}");
        }
        None => {
            let _ = writeln!(
                text,
                "# no {} found: built-in defaults (run `mala init` to write one)",
                config.path.display()
            );
        }
    }
    // Align the origins, but let a long value push its own origin out rather than every line.
    let width = leaves
        .iter()
        .map(|(p, v)| p.len() + v.to_string().len() + 3)
        .filter(|w| *w <= 64)
        .max()
        .unwrap_or(0);
    for (path, value) in &leaves {
        let line = format!("{path} = {value}");
        let _ = writeln!(text, "{line:<width$}  # {}", origin(&settings, path));
    }
    for warning in settings.warnings() {
        output::note(&format!("warning: {warning}"));
    }
    output::stdout(&text);
    Ok(())
}

pub(crate) fn check(repo: &Path, config: Option<&Path>) -> Result<(), Failure> {
    let config = ConfigPath::new(repo, config);
    let (settings, file) = load_settings(&config, &FlagOverrides::default())?;
    let Some(file) = file else {
        return Err(Failure::Other {
            message: format!(
                "no configuration file: {} does not exist",
                config.path.display()
            ),
            hint: Some("run `mala init` to write one".to_owned()),
        });
    };
    for warning in settings.warnings() {
        output::note(&format!("warning: {warning}"));
    }
    let preset = settings
        .preset
        .map_or_else(String::new, |p| format!(", preset {p}"));
    output::stdout(&format!(
        "{} is valid ({} commands{preset})\n",
        file.path.display(),
        settings.commands.len(),
    ));
    Ok(())
}

fn origin(settings: &Settings, path: &str) -> String {
    OriginDisplay(settings.origin(path)).to_string()
}
