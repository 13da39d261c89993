//! A shell command as the guard sees it: every simple command it would run
//! (inside pipelines, lists, subshells, groups, loops, conditionals and
//! command substitutions), with its words resolved where they are literal.
//!
//! Parsing is brush-parser's bash grammar; words are split into pieces by
//! its word parser, so quotes and escapes are removed exactly as bash would,
//! and anything bash would expand at run time is marked dynamic.

use brush_parser::ast::{
    self, Command, CommandPrefixOrSuffixItem, CompoundCommand, CompoundList, IoFileRedirectKind,
    IoFileRedirectTarget, IoRedirect,
};
use brush_parser::word::{self, WordPiece, WordPieceWithSource};
use brush_parser::{Parser, ParserOptions};

/// One word of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    /// Known before the command runs.
    Literal(String),
    /// Depends on the environment or another command (`$X`, `$(…)`, `~`); the raw text.
    Dynamic(String),
}

impl Arg {
    pub(crate) fn literal(&self) -> Option<&str> {
        match self {
            Self::Literal(s) => Some(s),
            Self::Dynamic(_) => None,
        }
    }

    pub(crate) fn raw(&self) -> &str {
        match self {
            Self::Literal(s) | Self::Dynamic(s) => s,
        }
    }
}

/// Where output goes (input redirections are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteRedirect {
    pub(crate) target: Arg,
}

/// One simple command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Invocation {
    pub(crate) words: Vec<Arg>,
    pub(crate) writes: Vec<WriteRedirect>,
}

/// A pipeline: invocations whose output feeds the next one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Pipe {
    pub(crate) stages: Vec<Invocation>,
}

/// Everything a command line would run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Script {
    pub(crate) pipes: Vec<Pipe>,
    /// Shell functions defined on the line; their bodies are in `pipes` too.
    pub(crate) functions: Vec<String>,
}

impl Script {
    pub(crate) fn invocations(&self) -> impl Iterator<Item = &Invocation> {
        self.pipes.iter().flat_map(|p| p.stages.iter())
    }
}

/// Marks where a subshell starts and ends, so a `cd` inside it does not leak.
pub(crate) const ENTER: &str = "\u{0}enter";
pub(crate) const LEAVE: &str = "\u{0}leave";

fn marker(name: &str) -> Pipe {
    Pipe {
        stages: vec![Invocation {
            words: vec![Arg::Literal(name.to_owned())],
            writes: Vec::new(),
        }],
    }
}

/// Why a command could not be read with confidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ParseFailure(pub(crate) String);

fn options() -> ParserOptions {
    ParserOptions {
        // Extended globs change how `!(…)` and friends tokenize; agents rarely use them.
        enable_extended_globbing: false,
        ..ParserOptions::default()
    }
}

/// Parses a command line into the simple commands it would run.
pub(crate) fn parse_script(text: &str) -> Result<Script, ParseFailure> {
    let mut parser = Parser::new(text.as_bytes(), &options());
    let program = parser
        .parse_program()
        .map_err(|e| ParseFailure(format!("the shell parser refused it ({e})")))?;
    let mut script = Script::default();
    for list in &program.complete_commands {
        walk_list(list, &mut script, 0)?;
    }
    Ok(script)
}

/// Substitutions nest; a command nested deeper than this is not worth reading.
const MAX_DEPTH: usize = 16;

fn walk_list(list: &CompoundList, script: &mut Script, depth: usize) -> Result<(), ParseFailure> {
    if depth > MAX_DEPTH {
        return Err(ParseFailure("it nests commands too deeply".to_owned()));
    }
    for item in &list.0 {
        let and_or = &item.0;
        walk_pipeline(&and_or.first, script, depth)?;
        for next in &and_or.additional {
            match next {
                ast::AndOr::And(p) | ast::AndOr::Or(p) => walk_pipeline(p, script, depth)?,
            }
        }
    }
    Ok(())
}

fn walk_pipeline(
    pipeline: &ast::Pipeline,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    let mut pipe = Pipe::default();
    for command in &pipeline.seq {
        walk_command(command, &mut pipe, script, depth)?;
    }
    script.pipes.push(pipe);
    Ok(())
}

fn walk_command(
    command: &Command,
    pipe: &mut Pipe,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    match command {
        Command::Simple(simple) => {
            let invocation = simple_invocation(simple, script, depth)?;
            pipe.stages.push(invocation);
        }
        Command::Compound(compound, redirects) => {
            // The group's redirections apply to everything inside it; record
            // them as a stage of their own so their targets are checked.
            if let Some(redirects) = redirects {
                let mut holder = Invocation::default();
                for redirect in &redirects.0 {
                    add_redirect(redirect, &mut holder, script, depth)?;
                }
                pipe.stages.push(holder);
            }
            walk_compound(compound, script, depth + 1)?;
        }
        Command::Function(function) => {
            script.functions.push(function.fname.value.clone());
            walk_compound(&function.body.0, script, depth + 1)?;
        }
        Command::ExtendedTest(_, redirects) => {
            if let Some(redirects) = redirects {
                let mut holder = Invocation::default();
                for redirect in &redirects.0 {
                    add_redirect(redirect, &mut holder, script, depth)?;
                }
                pipe.stages.push(holder);
            }
        }
    }
    Ok(())
}

fn walk_compound(
    compound: &CompoundCommand,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    match compound {
        CompoundCommand::BraceGroup(group) => walk_list(&group.list, script, depth),
        CompoundCommand::Subshell(sub) => {
            script.pipes.push(marker(ENTER));
            walk_list(&sub.list, script, depth)?;
            script.pipes.push(marker(LEAVE));
            Ok(())
        }
        CompoundCommand::ForClause(clause) => walk_list(&clause.body.list, script, depth),
        CompoundCommand::ArithmeticForClause(clause) => walk_list(&clause.body.list, script, depth),
        CompoundCommand::WhileClause(clause) | CompoundCommand::UntilClause(clause) => {
            walk_list(&clause.0, script, depth)?;
            walk_list(&clause.1.list, script, depth)
        }
        CompoundCommand::IfClause(clause) => {
            walk_list(&clause.condition, script, depth)?;
            walk_list(&clause.then, script, depth)?;
            for branch in clause.elses.iter().flatten() {
                if let Some(condition) = &branch.condition {
                    walk_list(condition, script, depth)?;
                }
                walk_list(&branch.body, script, depth)?;
            }
            Ok(())
        }
        CompoundCommand::CaseClause(clause) => {
            for case in &clause.cases {
                if let Some(cmd) = &case.cmd {
                    walk_list(cmd, script, depth)?;
                }
            }
            Ok(())
        }
        CompoundCommand::Coprocess(coprocess) => {
            let mut pipe = Pipe::default();
            walk_command(&coprocess.body, &mut pipe, script, depth)?;
            script.pipes.push(pipe);
            Ok(())
        }
        CompoundCommand::Arithmetic(_) => Ok(()),
    }
}

fn simple_invocation(
    simple: &ast::SimpleCommand,
    script: &mut Script,
    depth: usize,
) -> Result<Invocation, ParseFailure> {
    let mut invocation = Invocation::default();
    let items = simple
        .prefix
        .iter()
        .flat_map(|p| p.0.iter())
        .map(Some)
        .chain(std::iter::once(None))
        .chain(simple.suffix.iter().flat_map(|s| s.0.iter()).map(Some));
    let mut seen_name = false;
    for item in items {
        match item {
            None => {
                seen_name = true;
                if let Some(name) = &simple.word_or_name {
                    invocation
                        .words
                        .push(resolve_word(&name.value, script, depth)?);
                }
            }
            Some(CommandPrefixOrSuffixItem::Word(w)) => {
                invocation
                    .words
                    .push(resolve_word(&w.value, script, depth)?);
            }
            Some(CommandPrefixOrSuffixItem::IoRedirect(redirect)) => {
                add_redirect(redirect, &mut invocation, script, depth)?;
            }
            Some(CommandPrefixOrSuffixItem::AssignmentWord(assignment, word)) => {
                if seen_name {
                    // After the command name, `of=/dev/sda` is an argument.
                    invocation
                        .words
                        .push(resolve_word(&word.value, script, depth)?);
                } else if let ast::AssignmentValue::Scalar(w) = &assignment.value {
                    // `VAR=value cmd`: not an argument, but the value may run a substitution.
                    resolve_word(&w.value, script, depth)?;
                }
            }
            Some(CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub)) => {
                walk_list(&sub.list, script, depth + 1)?;
                invocation.words.push(Arg::Dynamic("<(…)".to_owned()));
            }
        }
    }
    Ok(invocation)
}

fn add_redirect(
    redirect: &IoRedirect,
    invocation: &mut Invocation,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    match redirect {
        IoRedirect::File(_, kind, target) => {
            let writes = matches!(
                kind,
                IoFileRedirectKind::Write
                    | IoFileRedirectKind::Append
                    | IoFileRedirectKind::Clobber
                    | IoFileRedirectKind::ReadAndWrite
            );
            match target {
                IoFileRedirectTarget::Filename(w) => {
                    let target = resolve_word(&w.value, script, depth)?;
                    if writes {
                        invocation.writes.push(WriteRedirect { target });
                    }
                }
                IoFileRedirectTarget::ProcessSubstitution(_, sub) => {
                    walk_list(&sub.list, script, depth + 1)?;
                }
                IoFileRedirectTarget::Fd(_) | IoFileRedirectTarget::Duplicate(_) => {}
            }
        }
        IoRedirect::OutputAndError(w, _) => {
            let target = resolve_word(&w.value, script, depth)?;
            invocation.writes.push(WriteRedirect { target });
        }
        IoRedirect::HereDocument(..) | IoRedirect::HereString(..) => {}
    }
    Ok(())
}

/// A word's value when it is literal; command substitutions inside it are
/// parsed and their commands added to the script.
fn resolve_word(raw: &str, script: &mut Script, depth: usize) -> Result<Arg, ParseFailure> {
    let pieces = word::parse(raw, &options())
        .map_err(|e| ParseFailure(format!("the word `{raw}` could not be read ({e})")))?;
    let mut text = String::new();
    let dynamic = collect(&pieces, &mut text, script, depth)?;
    Ok(if dynamic {
        Arg::Dynamic(raw.to_owned())
    } else {
        Arg::Literal(text)
    })
}

/// Appends the literal text of `pieces`; returns whether any piece is dynamic.
fn collect(
    pieces: &[WordPieceWithSource],
    text: &mut String,
    script: &mut Script,
    depth: usize,
) -> Result<bool, ParseFailure> {
    let mut dynamic = false;
    for piece in pieces {
        match &piece.piece {
            WordPiece::Text(s) | WordPiece::SingleQuotedText(s) | WordPiece::AnsiCQuotedText(s) => {
                text.push_str(s);
            }
            WordPiece::EscapeSequence(s) => text.push_str(s.strip_prefix('\\').unwrap_or(s)),
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                dynamic |= collect(inner, text, script, depth)?;
            }
            WordPiece::CommandSubstitution(inner)
            | WordPiece::BackquotedCommandSubstitution(inner) => {
                if depth >= MAX_DEPTH {
                    return Err(ParseFailure("it nests commands too deeply".to_owned()));
                }
                let nested = parse_script(inner)?;
                // A substitution runs in a subshell: its `cd` stays inside.
                script.pipes.push(marker(ENTER));
                script.pipes.extend(nested.pipes);
                script.pipes.push(marker(LEAVE));
                script.functions.extend(nested.functions);
                dynamic = true;
            }
            WordPiece::TildeExpansion(_)
            | WordPiece::ParameterExpansion(_)
            | WordPiece::ArithmeticExpression(_) => dynamic = true,
        }
    }
    Ok(dynamic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(script: &Script) -> Vec<Vec<String>> {
        script
            .invocations()
            .map(|i| i.words.iter().map(|w| w.raw().to_owned()).collect())
            .collect()
    }

    #[test]
    fn quotes_and_escapes_are_removed_and_operators_split_commands() {
        let script =
            parse_script(r#"cd 'my dir' && echo "a b" \"c\" | tee -a out.log; ls"#).unwrap();
        assert_eq!(
            words(&script),
            vec![
                vec!["cd", "my dir"],
                vec!["echo", "a b", "\"c\""],
                vec!["tee", "-a", "out.log"],
                vec!["ls"]
            ]
        );
        assert_eq!(script.pipes.len(), 3);
    }

    #[test]
    fn substitutions_are_dynamic_and_their_commands_are_seen() {
        let script = parse_script("echo $(rm -rf build) > \"$OUT\"").unwrap();
        let all = words(&script);
        assert!(all.contains(&vec!["rm".to_owned(), "-rf".to_owned(), "build".to_owned()]));
        let echo = script
            .invocations()
            .find(|i| i.words[0].raw() == "echo")
            .unwrap();
        assert_eq!(echo.words[1], Arg::Dynamic("$(rm -rf build)".to_owned()));
        assert_eq!(echo.writes[0].target, Arg::Dynamic("\"$OUT\"".to_owned()));
    }

    #[test]
    fn nested_structures_are_walked() {
        let script = parse_script(
            "(cd a && touch x) ; { echo hi >> log; } 2>err; if true; then rm y; fi; for f in a b; do cp $f z; done",
        )
        .unwrap();
        let names: Vec<String> = script
            .invocations()
            .filter_map(|i| i.words.first().map(|w| w.raw().to_owned()))
            .collect();
        for name in ["cd", "touch", "echo", "rm", "cp", "true"] {
            assert!(
                names.contains(&name.to_owned()),
                "{name} missing from {names:?}"
            );
        }
        let targets: Vec<&str> = script
            .invocations()
            .flat_map(|i| i.writes.iter().map(|w| w.target.raw()))
            .collect();
        assert!(
            targets.contains(&"log") && targets.contains(&"err"),
            "{targets:?}"
        );
    }

    #[test]
    fn unparseable_text_is_refused() {
        assert!(parse_script("echo 'unterminated").is_err());
        assert!(parse_script("if then fi (").is_err());
    }
}
