//! Reading one mala.yaml (or preset) text into a `RawConfig`, keeping positions.
//!
//! The YAML is first loaded as a tree of nodes that know their line and
//! column. That tree gives every key its position (for errors and for
//! `config show`), lets us treat `key: null` as "not set" (and
//! `commands.<name>: null` as "disable the preset's command"), and catches
//! removed keys with a migration hint and keys that are not built yet
//! before serde runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{LoadError, LoaderOptions, Marker, Node};

use super::error::{ConfigError, Location, suggestion};
use super::schema::{NOT_BUILT_KEYS, NotBuiltKey, REMOVED_TOP_LEVEL_KEYS, RawConfig};

/// Line and column (both 1-based) of every key and list element in a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanIndex(BTreeMap<String, (usize, usize)>);

impl SpanIndex {
    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(pos) = self.0.get(path) {
                return Some(*pos);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// Whether the file sets `path` itself.
    pub fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// Every recorded path, in order.
    pub fn paths(&self) -> impl Iterator<Item = (&str, (usize, usize))> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    fn insert(&mut self, path: String, marker: Option<&Marker>) {
        if let Some(m) = marker {
            self.0.insert(path, (m.line(), m.column()));
        }
    }
}

/// A loaded configuration text: typed content plus where each key stood.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub raw: RawConfig,
    pub spans: SpanIndex,
    /// `commands.<name>: null` entries: disable the preset's command.
    pub disabled_commands: Vec<String>,
}

impl ConfigFile {
    /// Where `key` stands in this file (falls back to the nearest parent, then 1:1).
    pub fn location(&self, key: &str) -> Location {
        let (line, column) = self.spans.find(key).unwrap_or((1, 1));
        Location::File {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// An error about `key`, positioned in this file.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(message).at(self.location(key)).key(key)
    }
}

/// Parses configuration text. `path` is only used in messages.
pub fn parse_config(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let at = |line: usize, column: usize| Location::File {
        path: path.to_path_buf(),
        line,
        column,
    };
    if is_blank_document(text) {
        return Ok(ConfigFile {
            path: path.to_path_buf(),
            raw: RawConfig::default(),
            spans: SpanIndex::default(),
            disabled_commands: Vec::new(),
        });
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping();
    let mut root =
        marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| load_error(&e, &at))?;

    let mut spans = SpanIndex::default();
    let mut disabled_commands = Vec::new();
    normalise(&mut root, "", &mut spans, &mut disabled_commands);

    if let Some(top) = root.as_mapping() {
        for (key, _) in top.iter() {
            if let Some((_, instead)) = REMOVED_TOP_LEVEL_KEYS
                .iter()
                .find(|(k, _)| *k == key.as_str())
            {
                let (line, column) = spans.find(key.as_str()).unwrap_or((1, 1));
                return Err(
                    ConfigError::new(format!("`{}` is no longer supported", key.as_str()))
                        .at(at(line, column))
                        .key(key.as_str())
                        .hint(*instead),
                );
            }
        }
    }

    if let Some((path, key)) = first_not_built(&root, "") {
        let (line, column) = spans.find(&path).unwrap_or((1, 1));
        return Err(ConfigError::new(
            "not built yet: mala would accept it and change nothing, so it is refused",
        )
        .at(at(line, column))
        .key(path)
        .hint(key.hint));
    }

    let raw: RawConfig = marked_yaml::from_node(&root).map_err(|e| {
        let key = e.path().map(render_key_path).unwrap_or_default();
        let (line, column) = e
            .start_mark()
            .map(|m| (m.line(), m.column()))
            .or_else(|| spans.find(&key))
            .unwrap_or((1, 1));
        let (message, hint) = describe_serde_error(&e);
        let mut err = ConfigError::new(message).at(at(line, column)).key(key);
        err.hint = hint;
        err
    })?;

    Ok(ConfigFile {
        path: path.to_path_buf(),
        raw,
        spans,
        disabled_commands,
    })
}

/// True when the text holds no YAML content at all (empty, blank or only comments).
fn is_blank_document(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

fn load_error(e: &LoadError, at: &dyn Fn(usize, usize) -> Location) -> ConfigError {
    let pos = |m: &Marker| at(m.line(), m.column());
    match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
            ConfigError::new("the top level of mala.yaml must be a mapping of keys to values")
                .at(pos(m))
                .hint("start with a key such as `preset: rust`")
        }
        LoadError::UnexpectedAnchor(m) => {
            ConfigError::new("YAML anchors and aliases are not supported in mala.yaml")
                .at(pos(m))
                .hint("write the value out in full")
        }
        LoadError::MappingKeyMustBeScalar(m) => {
            ConfigError::new("keys must be plain words, not lists or mappings").at(pos(m))
        }
        LoadError::UnexpectedTag(m) => {
            ConfigError::new("YAML tags (`!name`) are not supported in mala.yaml").at(pos(m))
        }
        LoadError::ScanError(m, scan) => {
            ConfigError::new(format!("invalid YAML: {}", scan_message(scan))).at(pos(m))
        }
        LoadError::DuplicateKey(inner) => {
            let first = inner
                .prev_key
                .span()
                .start()
                .map_or_else(String::new, |m| format!(" (first at line {})", m.line()));
            let mut err =
                ConfigError::new(format!("duplicate key `{}`{first}", inner.key.as_str()));
            if let Some(m) = inner.key.span().start() {
                err = err.at(pos(m));
            }
            err
        }
    }
}

fn scan_message(scan: &impl std::fmt::Display) -> String {
    // yaml-rust's messages include their own position; ours is already in front.
    let text = scan.to_string();
    match text.find(" at byte ").or_else(|| text.find(" at line ")) {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Records positions, drops `key: null` entries, and notes disabled commands.
fn normalise(node: &mut Node, prefix: &str, spans: &mut SpanIndex, disabled: &mut Vec<String>) {
    match node {
        Node::Mapping(map) => {
            let mut nulls = Vec::new();
            for (key, value) in map.iter_mut() {
                let path = join(prefix, key.as_str());
                spans.insert(path.clone(), key.span().start());
                if value.as_scalar().is_some_and(is_null) {
                    nulls.push(key.clone());
                    if prefix == "commands" {
                        disabled.push(key.as_str().to_owned());
                    }
                } else {
                    normalise(value, &path, spans, disabled);
                }
            }
            for key in nulls {
                map.remove(&key);
            }
        }
        Node::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                let path = format!("{prefix}[{i}]");
                spans.insert(path.clone(), item.span().start());
                normalise(item, &path, spans, disabled);
            }
        }
        Node::Scalar(_) => {}
    }
}

/// The first key, in document order, that `NOT_BUILT_KEYS` names. Runs after
/// `normalise`, so `key: null` ("not set") is not a setting.
fn first_not_built(node: &Node, prefix: &str) -> Option<(String, &'static NotBuiltKey)> {
    let map = node.as_mapping()?;
    for (key, value) in map.iter() {
        let path = join(prefix, key.as_str());
        if let Some(not_built) = NOT_BUILT_KEYS.iter().find(|k| k.matches(&path)) {
            return Some((path, not_built));
        }
        if let Some(found) = first_not_built(value, &path) {
            return Some(found);
        }
    }
    None
}

/// `~`, `null` or nothing, unquoted.
fn is_null(scalar: &MarkedScalarNode) -> bool {
    scalar.may_coerce() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// serde_path_to_error renders `a.b[0].c`; keep it, minus a leading `.`.
fn render_key_path(path: &str) -> String {
    path.trim_start_matches('.').to_owned()
}

/// A plain-language message for a deserialisation failure, with a hint.
fn describe_serde_error(e: &marked_yaml::FromNodeError) -> (String, Option<String>) {
    use marked_yaml::Error;
    match &**e {
        Error::UnknownFieldError(field, expected, _) => (
            format!("unknown key `{field}`"),
            Some(suggestion(field, expected)),
        ),
        Error::NotBoolean(_) => ("expected true or false".to_owned(), None),
        Error::IntegerParseFailure(..) => ("expected a whole number (0 or more)".to_owned(), None),
        Error::FloatParseFailure(..) => ("expected a number".to_owned(), None),
        Error::Other(message, _) => describe_other(message),
    }
}

/// serde's own messages, made friendlier where we recognise them.
fn describe_other(message: &str) -> (String, Option<String>) {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown variant")
        && let Some((got, expected)) = quoted.split_first()
    {
        {
            return (
                format!("unknown value `{got}`"),
                Some(suggestion(got, expected)),
            );
        }
    }
    if message.starts_with("missing field")
        && let Some(field) = quoted.first()
    {
        {
            return (format!("missing required key `{field}`"), None);
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        // Name Rust's types in the file's words.
        let rest = rest
            .replace("expected u64", "expected a whole number (0 or more)")
            .replace("expected u32", "expected a whole number (0 or more)")
            .replace("expected u8", "expected a whole number (0 or more)")
            .replace("expected f64", "expected a number")
            .replace("expected a sequence", "expected a list");
        return (format!("wrong type: got {rest}"), None);
    }
    (message.to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        parse_config(Path::new("mala.yaml"), text)
    }

    #[test]
    fn positions_are_recorded_for_nested_keys_and_list_items() {
        let file =
            parse("preset: rust\nevidence_check:\n  required:\n    - test\n    - lint\n").unwrap();
        assert_eq!(file.spans.find("preset"), Some((1, 1)));
        assert_eq!(file.spans.find("evidence_check.required"), Some((3, 3)));
        assert_eq!(file.spans.find("evidence_check.required[1]"), Some((5, 7)));
        assert_eq!(
            file.spans.find("evidence_check.required[1].x"),
            Some((5, 7))
        );
    }

    #[test]
    fn null_commands_disable_and_null_keys_are_unset() {
        let file = parse("preset: rust\ncommands:\n  lint: null\n  format: ~\nmodel:\n").unwrap();
        assert_eq!(file.disabled_commands, vec!["lint", "format"]);
        assert!(file.raw.commands.is_empty());
        assert_eq!(file.raw.model, None);
    }

    #[test]
    fn quoted_null_is_a_string() {
        let file = parse("model: \"null\"\n").unwrap();
        assert_eq!(file.raw.model.as_deref(), Some("null"));
    }

    #[test]
    fn blank_and_comment_only_files_are_empty_configs() {
        assert_eq!(parse("").unwrap().raw, RawConfig::default());
        assert_eq!(parse("# nothing\n\n").unwrap().raw, RawConfig::default());
    }

    #[test]
    fn aliases_are_an_error_not_a_panic() {
        let err = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert!(err.message.contains("anchors"), "{err}");
        let err = parse("b: *x\n").unwrap_err();
        assert!(err.location.is_some(), "{err}");
    }
}
