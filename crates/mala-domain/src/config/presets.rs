//! Presets shipped with mala, as YAML data compiled into the binary.

use std::path::Path;

use super::error::ConfigError;
use super::load::{ConfigFile, parse_config};
use super::names::{BUILTIN_COMMANDS, PresetName};
use super::schema::RawConfig;

/// The YAML text of a preset.
pub fn preset_text(name: PresetName) -> &'static str {
    match name {
        PresetName::PythonUv => include_str!("../../presets/python-uv.yaml"),
        PresetName::NodeNpm => include_str!("../../presets/node-npm.yaml"),
        PresetName::Go => include_str!("../../presets/go.yaml"),
        PresetName::Rust => include_str!("../../presets/rust.yaml"),
        PresetName::Gleam => include_str!("../../presets/gleam.yaml"),
    }
}

/// Loads a preset. Presets may only hold built-in commands and the three file lists.
pub fn load_preset(name: PresetName) -> Result<ConfigFile, ConfigError> {
    let path = format!("<preset {name}>");
    let file = parse_config(Path::new(&path), preset_text(name))?;
    let allowed = RawConfig {
        commands: file.raw.commands.clone(),
        code_patterns: file.raw.code_patterns.clone(),
        config_files: file.raw.config_files.clone(),
        setup_files: file.raw.setup_files.clone(),
        ..RawConfig::default()
    };
    if allowed != file.raw {
        return Err(ConfigError::new(format!(
            "preset {name} sets keys other than commands and file lists"
        )));
    }
    if let Some(custom) = file
        .raw
        .commands
        .keys()
        .find(|k| !BUILTIN_COMMANDS.contains(&k.as_str()))
    {
        return Err(file.error(
            &format!("commands.{custom}"),
            "presets may only define built-in commands",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_loads_and_defines_a_test_command() {
        for name in PresetName::ALL {
            let file = load_preset(*name).unwrap();
            assert!(
                file.raw.commands.contains_key("test"),
                "preset {name} has no test command"
            );
            assert!(file.raw.code_patterns.is_some());
        }
    }
}
