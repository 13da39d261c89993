//! Whether a recorded shell command ran a configured validation command, in
//! a way that its exit status is the configured command's.
//!
//! Accepted: the command line as configured; after `cd <repository root> &&`
//! (or `;`); with its output redirected to files; piped into another command
//! only after `set -o pipefail`. Refused: anything that runs something else,
//! runs elsewhere, or hides the status (`|| true`, `; true`, a pipe without
//! pipefail, a trailing `echo`).

use std::path::{Component, Path, PathBuf};

use brush_parser::ast::{
    self, Command, CommandPrefixOrSuffixItem, CompoundListItem, IoFileRedirectTarget, IoRedirect,
    SeparatorOperator,
};
use brush_parser::{Parser, ParserOptions};

/// A pipeline by its stages' words (quotes removed, redirections dropped).
type Pipe = Vec<Vec<String>>;

/// One `a && b || c` chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    first: Pipe,
    rest: Vec<(bool, Pipe)>, // (is_and, pipeline)
}

fn options() -> ParserOptions {
    ParserOptions {
        enable_extended_globbing: false,
        ..ParserOptions::default()
    }
}

/// The chains of a command line, in order; `None` when it cannot be read or
/// does something this comparison does not follow (background jobs,
/// compound commands, functions).
fn chains(text: &str) -> Option<Vec<Chain>> {
    let program = Parser::new(text.as_bytes(), &options())
        .parse_program()
        .ok()?;
    let mut out = Vec::new();
    for list in &program.complete_commands {
        for CompoundListItem(and_or, separator) in &list.0 {
            if matches!(separator, SeparatorOperator::Async) {
                return None;
            }
            let mut chain = Chain {
                first: pipe(&and_or.first)?,
                rest: Vec::new(),
            };
            for next in &and_or.additional {
                match next {
                    ast::AndOr::And(p) => chain.rest.push((true, pipe(p)?)),
                    ast::AndOr::Or(p) => chain.rest.push((false, pipe(p)?)),
                }
            }
            out.push(chain);
        }
    }
    Some(out)
}

fn pipe(pipeline: &ast::Pipeline) -> Option<Pipe> {
    if pipeline.bang {
        return None;
    }
    pipeline
        .seq
        .iter()
        .map(|command| match command {
            Command::Simple(simple) if !runs_more(simple) => Some(words(simple)),
            _ => None,
        })
        .collect()
}

/// Whether a simple command also runs something its words do not show: a
/// process substitution, or a substitution inside a redirection or a
/// here-string (`cargo test <<< "$(…)"`). Such a line is not a plain run.
fn runs_more(simple: &ast::SimpleCommand) -> bool {
    let items = simple
        .prefix
        .iter()
        .flat_map(|p| p.0.iter())
        .chain(simple.suffix.iter().flat_map(|s| s.0.iter()));
    items.into_iter().any(|item| match item {
        CommandPrefixOrSuffixItem::ProcessSubstitution(..) => true,
        CommandPrefixOrSuffixItem::IoRedirect(redirect) => {
            let substitutes = |w: &ast::Word| w.value.contains("$(") || w.value.contains('`');
            match redirect {
                IoRedirect::File(_, _, IoFileRedirectTarget::Filename(w))
                | IoRedirect::HereString(_, w)
                | IoRedirect::OutputAndError(w, _) => substitutes(w),
                IoRedirect::File(_, _, IoFileRedirectTarget::ProcessSubstitution(..)) => true,
                IoRedirect::File(..) => false,
                IoRedirect::HereDocument(_, doc) => doc.requires_expansion && substitutes(&doc.doc),
            }
        }
        CommandPrefixOrSuffixItem::Word(w) | CommandPrefixOrSuffixItem::AssignmentWord(_, w) => {
            w.value.contains("<(") || w.value.contains(">(")
        }
    })
}

/// What may follow a check in a pipe under pipefail: programs that only
/// pass its output on (and `tee`, which also keeps it in a file).
const OUTPUT_FILTERS: &[&str] = &["tee", "tail", "head", "grep", "cat", "cut", "wc", "ts"];

/// Words without quotes, assignments kept (`RUST_LOG=1 cargo test` differs
/// from `cargo test`), redirections dropped (they do not change the status).
fn words(simple: &ast::SimpleCommand) -> Vec<String> {
    let mut out = Vec::new();
    let unquote = |w: &ast::Word| brush_parser::unquote_str(&w.value);
    for item in simple.prefix.iter().flat_map(|p| p.0.iter()) {
        match item {
            CommandPrefixOrSuffixItem::AssignmentWord(_, w)
            | CommandPrefixOrSuffixItem::Word(w) => out.push(unquote(w)),
            CommandPrefixOrSuffixItem::IoRedirect(_)
            | CommandPrefixOrSuffixItem::ProcessSubstitution(..) => {}
        }
    }
    if let Some(name) = &simple.word_or_name {
        out.push(unquote(name));
    }
    for item in simple.suffix.iter().flat_map(|s| s.0.iter()) {
        match item {
            CommandPrefixOrSuffixItem::Word(w)
            | CommandPrefixOrSuffixItem::AssignmentWord(_, w) => out.push(unquote(w)),
            CommandPrefixOrSuffixItem::IoRedirect(
                IoRedirect::File(..)
                | IoRedirect::OutputAndError(..)
                | IoRedirect::HereDocument(..)
                | IoRedirect::HereString(..),
            )
            | CommandPrefixOrSuffixItem::ProcessSubstitution(..) => {}
        }
    }
    out
}

fn normalize(base: &Path, path: &str) -> PathBuf {
    let joined = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Why a recorded command does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    Unreadable,
    Elsewhere(String),
    HiddenStatus,
    /// The command ran, last and with its status, but after other commands
    /// on the same line, which could change what it runs (a `PATH`, a
    /// function of the same name, an `exit`).
    AfterOthers,
    Different,
}

/// Whether any pipeline of `chains` runs `wanted` (alone, or feeding others).
fn mentions(chains: &[Chain], wanted: &Pipe) -> bool {
    chains
        .iter()
        .flat_map(|c| std::iter::once(&c.first).chain(c.rest.iter().map(|(_, p)| p)))
        .any(|pipe| pipe.len() >= wanted.len() && pipe[..wanted.len()] == wanted[..])
}

/// Whether `recorded`, run in `cwd`, ran `configured` with its status intact.
pub(crate) fn runs_command(
    recorded: &str,
    configured: &str,
    cwd: &Path,
    repo_root: &Path,
) -> Result<(), Mismatch> {
    let expected = chains(configured).ok_or(Mismatch::Unreadable)?;
    let mut actual = chains(recorded).ok_or(Mismatch::Unreadable)?;
    if expected.is_empty() || !mentions(&actual, &expected[0].first) {
        // A line that never runs the command is a different command, however
        // its status is kept: saying it "hides the status" would be untrue.
        return Err(Mismatch::Different);
    }
    let mut pipefail = false;
    let mut dir = cwd.to_path_buf();
    // Leading `cd DIR` and `set -o pipefail`, as separate commands or as the
    // head of an `&&` chain.
    loop {
        let Some(first) = actual.first_mut() else {
            return Err(Mismatch::Different);
        };
        let head = match first.first.as_slice() {
            [stage] => stage.clone(),
            _ => break,
        };
        let is_setup = match head.first().map(String::as_str) {
            Some("cd") if head.len() == 2 => {
                dir = normalize(&dir, &head[1]);
                true
            }
            Some("set")
                if head[1..]
                    .iter()
                    .all(|w| w.starts_with('-') || w == "pipefail") =>
            {
                pipefail |= head.iter().any(|w| w == "pipefail");
                true
            }
            _ => false,
        };
        if !is_setup {
            break;
        }
        if first.rest.is_empty() {
            actual.remove(0);
        } else {
            // `cd x && rest`: the chain continues only if cd succeeded.
            let (is_and, next) = first.rest.remove(0);
            if !is_and {
                return Err(Mismatch::HiddenStatus);
            }
            first.first = next;
        }
    }
    if dir != repo_root {
        return Err(Mismatch::Elsewhere(dir.display().to_string()));
    }
    same_chains(&actual, &expected, pipefail)
}

/// The recorded chains, setup stripped, against the configured ones: the
/// same commands joined the same way, a pipe into output filters allowed
/// only under pipefail.
fn same_chains(actual: &[Chain], expected: &[Chain], pipefail: bool) -> Result<(), Mismatch> {
    if actual.len() > expected.len() {
        let tail = &actual[actual.len() - expected.len()..];
        return Err(if same_chains(tail, expected, pipefail).is_ok() {
            Mismatch::AfterOthers
        } else {
            Mismatch::HiddenStatus
        });
    }
    if actual.len() < expected.len() {
        return Err(Mismatch::Different);
    }
    for (got, want) in actual.iter().zip(expected) {
        if got.rest.len() != want.rest.len() {
            return Err(if got.rest.len() > want.rest.len() {
                Mismatch::HiddenStatus
            } else {
                Mismatch::Different
            });
        }
        let pairs = std::iter::once((true, &got.first, true, &want.first)).chain(
            got.rest
                .iter()
                .zip(&want.rest)
                .map(|((ga, gp), (wa, wp))| (*ga, gp, *wa, wp)),
        );
        for (got_and, got_pipe, want_and, want_pipe) in pairs {
            if got_and != want_and {
                return Err(Mismatch::Different);
            }
            same_pipe(got_pipe, want_pipe, pipefail)?;
        }
    }
    Ok(())
}

fn same_pipe(got: &Pipe, want: &Pipe, pipefail: bool) -> Result<(), Mismatch> {
    if got == want {
        return Ok(());
    }
    // `cmd | tee log` keeps cmd's status only under pipefail.
    if got.len() > want.len() && got[..want.len()] == want[..] {
        if !pipefail {
            return Err(Mismatch::HiddenStatus);
        }
        let filters_only = got[want.len()..].iter().all(|stage| {
            stage.first().is_some_and(|name| {
                OUTPUT_FILTERS.contains(&name.rsplit('/').next().unwrap_or(name))
            })
        });
        return if filters_only {
            Ok(())
        } else {
            Err(Mismatch::Different)
        };
    }
    Err(Mismatch::Different)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(recorded: &str, configured: &str) -> Result<(), Mismatch> {
        runs_command(recorded, configured, Path::new("/repo"), Path::new("/repo"))
    }

    #[test]
    fn the_configured_line_counts_however_it_is_quoted_or_redirected() {
        for recorded in [
            "cargo test",
            "cargo  test",
            "'cargo' \"test\"",
            "cargo test > /tmp/test.log 2>&1",
            "cargo test &> test.log",
            "cd /repo && cargo test",
            "cd . && cargo test",
            "cd /repo; cargo test",
            "set -o pipefail; cargo test | tee test.log",
            "set -euo pipefail && cargo test 2>&1 | tail -50",
            "# run the tests\ncargo test",
        ] {
            assert_eq!(check(recorded, "cargo test"), Ok(()), "{recorded}");
        }
        assert_eq!(
            check(
                "uv run pytest && uv run ruff check .",
                "uv run pytest && uv run ruff check ."
            ),
            Ok(())
        );
    }

    #[test]
    fn other_commands_other_places_and_hidden_statuses_do_not() {
        let cases = [
            ("echo cargo test", Mismatch::Different),
            ("cargo build", Mismatch::Different),
            ("cargo test --lib", Mismatch::Different),
            ("RUST_LOG=1 cargo test", Mismatch::Different),
            (
                "cd src && cargo test",
                Mismatch::Elsewhere("/repo/src".into()),
            ),
            (
                "cd /tmp/other && cargo test",
                Mismatch::Elsewhere("/tmp/other".into()),
            ),
            ("cargo test | tee log", Mismatch::HiddenStatus),
            ("cargo test || true", Mismatch::HiddenStatus),
            ("cargo test; true", Mismatch::HiddenStatus),
            ("cargo test; echo done", Mismatch::HiddenStatus),
            ("sleep 1; cargo test", Mismatch::AfterOthers),
            ("cargo() { true; }; cargo test", Mismatch::Unreadable),
            ("PATH=/tmp/fake:$PATH; cargo test", Mismatch::AfterOthers),
            ("! cargo test", Mismatch::Unreadable),
            ("cargo test &", Mismatch::Unreadable),
            ("cd /repo || cargo test", Mismatch::HiddenStatus),
            ("if cargo test; then echo ok; fi", Mismatch::Unreadable),
        ];
        for (recorded, why) in cases {
            assert_eq!(check(recorded, "cargo test"), Err(why), "{recorded}");
        }
        // A check that also feeds or is fed by another program is not a
        // plain run of it.
        for recorded in [
            "set -o pipefail; cargo test | python3 /tmp/evil.py",
            "cargo test > >(python3 /tmp/evil.py)",
            "cargo test < <(python3 /tmp/evil.py)",
            "cargo test <<< \"$(python3 /tmp/evil.py)\"",
        ] {
            assert!(check(recorded, "cargo test").is_err(), "{recorded}");
        }
        assert_eq!(
            check(
                "set -o pipefail; cargo test 2>&1 | tee t.log | tail -5",
                "cargo test"
            ),
            Ok(())
        );
        // Lines that never run the command are different commands, not
        // hidden statuses or other places.
        for recorded in [
            "git add src/a.rs && git commit -m 'bd-m-1: x' -- src/a.rs",
            "cd src && git status",
            "echo a; echo b",
            "cargo build | tee log",
        ] {
            assert_eq!(
                check(recorded, "cargo test"),
                Err(Mismatch::Different),
                "{recorded}"
            );
        }
        assert_eq!(
            check("uv run pytest", "uv run pytest && uv run ruff check ."),
            Err(Mismatch::Different)
        );
        assert_eq!(
            check(
                "uv run pytest || uv run ruff check .",
                "uv run pytest && uv run ruff check ."
            ),
            Err(Mismatch::Different)
        );
    }
}
