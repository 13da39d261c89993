//! Scratch paths only known at run time: a variable assigned from `mktemp`
//! on the same line (`tmp=$(mktemp); git diff > "$tmp"`), and `$TMPDIR`.
//! Writing under them is writing under /tmp.

use super::super::shell::{Arg, Invocation};
use super::Walker;

/// Builtins that may assign any variable: after them, no variable is trusted.
const ASSIGNERS: &[&str] = &[
    "read",
    "declare",
    "typeset",
    "export",
    "local",
    "readonly",
    "mapfile",
    "readarray",
    "getopts",
    "unset",
    "printf",
    "let",
    "eval",
    "source",
    ".",
];

impl Walker<'_> {
    /// `NAME=$(mktemp …)` alone makes NAME a scratch path; any other
    /// assignment of NAME, or a builtin that may assign it, forgets it.
    pub(super) fn learn_variables(&mut self, invocation: &Invocation) {
        // `${NAME=…}` and `${NAME:=…}` assign NAME wherever they stand.
        let words = invocation
            .words
            .iter()
            .chain(invocation.assigns.iter().map(|(_, v)| v));
        let assigned_inside: Vec<String> = words
            .flat_map(|word| expansion_assignments(word.raw()))
            .collect();
        self.scratch.retain(|name| !assigned_inside.contains(name));
        match invocation.words.first() {
            None => {
                for (name, value) in &invocation.assigns {
                    self.scratch.retain(|n| n != name);
                    if is_mktemp(value) {
                        self.scratch.push(name.clone());
                    }
                }
            }
            Some(first) if ASSIGNERS.contains(&first.raw()) => self.scratch.clear(),
            Some(_) => {}
        }
    }

    /// Whether a dynamic word is `$NAME…` / `${NAME}…` (quotes aside) for a
    /// scratch variable (TMPDIR among them, until the line assigns it),
    /// followed by nothing or a plain `/path`.
    pub(super) fn is_scratch(&self, raw: &str) -> bool {
        let text: String = raw.chars().filter(|c| *c != '"').collect();
        let Some(rest) = text.strip_prefix('$') else {
            return false;
        };
        let (name, tail) = if let Some(braced) = rest.strip_prefix('{') {
            let Some(parts) = braced.split_once('}') else {
                return false;
            };
            parts
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            rest.split_at(end)
        };
        let known = self.scratch.iter().any(|n| n == name);
        let plain_tail = tail.is_empty()
            || (tail.starts_with('/')
                && !tail.contains(['$', '`', '*', '?', '[', '{', '\''])
                && !tail.split('/').any(|part| part == ".."));
        known && plain_tail
    }
}

/// The names a word assigns through `${NAME=…}` or `${NAME:=…}`.
fn expansion_assignments(raw: &str) -> Vec<String> {
    raw.match_indices("${")
        .filter_map(|(at, _)| {
            let rest = &raw[at + 2..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            let (name, after) = rest.split_at(end);
            (after.starts_with('=') || after.starts_with(":=")).then(|| name.to_owned())
        })
        .collect()
}

/// `$(mktemp)`, `$(mktemp -d)`, `` `mktemp -t x.XXXX` ``: a new path under
/// the temporary directory (a template without -t or -p is made here, so it is not).
fn is_mktemp(value: &Arg) -> bool {
    let Arg::Dynamic(raw) = value else {
        return false;
    };
    let text = raw.trim_matches('"');
    let Some(inner) = text
        .strip_prefix("$(")
        .and_then(|t| t.strip_suffix(')'))
        .or_else(|| text.strip_prefix('`').and_then(|t| t.strip_suffix('`')))
    else {
        return false;
    };
    if inner.contains(['$', '`', ';', '|', '&', '>', '<', '(', ')', '"', '\'']) {
        return false;
    }
    let mut words = inner.split_whitespace();
    if words.next() != Some("mktemp") {
        return false;
    }
    // `-t`/`--tmpdir` put a template under the temporary directory; `-p DIR` under DIR.
    let (mut in_tmp, mut dir_ok, mut template) = (false, true, None);
    let mut words = words.peekable();
    while let Some(word) = words.next() {
        match word {
            "-d" | "--directory" | "-u" | "--dry-run" | "-q" | "--quiet" => {}
            "-t" | "--tmpdir" => in_tmp = true,
            "-p" => {
                in_tmp = true;
                dir_ok = words.next().is_some_and(under_tmp);
            }
            w if w.starts_with("--tmpdir=") => {
                in_tmp = true;
                dir_ok = under_tmp(&w["--tmpdir=".len()..]);
            }
            w if w.starts_with("--suffix=") => {}
            w if w.starts_with('-') => return false,
            w => template = Some(w),
        }
    }
    dir_ok
        && match template {
            None => true,
            Some(t) if t.contains('/') => under_tmp(t),
            Some(_) => in_tmp,
        }
}

fn under_tmp(path: &str) -> bool {
    ["/tmp", "/var/tmp", "/dev/shm"].iter().any(|dir| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || (rest.starts_with('/') && !rest.contains("..")))
    })
}
