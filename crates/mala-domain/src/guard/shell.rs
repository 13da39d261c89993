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
    /// The text a here-string or here-document feeds the command's stdin.
    pub(crate) stdin: Option<Arg>,
    /// `NAME=value` words before the command name (alone, they set shell variables).
    pub(crate) assigns: Vec<(String, Arg)>,
}

/// A pipeline: invocations whose output feeds the next one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Pipe {
    pub(crate) stages: Vec<Invocation>,
    /// How it follows the pipeline before it.
    pub(crate) link: Link,
}

/// How a pipeline follows the one before it: it starts a list item (after
/// `;`, `&`, a newline, or at the start), or runs only after `&&` or `||`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Link {
    #[default]
    Start,
    And,
    Or,
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

/// `word` quoted for the shell, so parsing it again gives back the word.
pub(crate) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Marks where a subshell starts and ends, so a `cd` inside it does not leak.
pub(crate) const ENTER: &str = "\u{0}enter";
pub(crate) const LEAVE: &str = "\u{0}leave";

fn marker(name: &str) -> Pipe {
    Pipe {
        stages: vec![Invocation {
            words: vec![Arg::Literal(name.to_owned())],
            ..Invocation::default()
        }],
        link: Link::Start,
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
        // A list run in the background (`… &`) runs in a subshell: its `cd` stays there.
        let background = matches!(item.1, ast::SeparatorOperator::Async);
        if background {
            script.pipes.push(marker(ENTER));
        }
        walk_pipeline(&and_or.first, Link::Start, script, depth)?;
        for next in &and_or.additional {
            match next {
                ast::AndOr::And(p) => walk_pipeline(p, Link::And, script, depth)?,
                ast::AndOr::Or(p) => walk_pipeline(p, Link::Or, script, depth)?,
            }
        }
        if background {
            script.pipes.push(marker(LEAVE));
        }
    }
    Ok(())
}

fn walk_pipeline(
    pipeline: &ast::Pipeline,
    link: Link,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    let mut pipe = Pipe {
        link,
        ..Pipe::default()
    };
    // Each command of a pipeline of several runs in a subshell; a compound
    // command's contents are pushed before the pipe, so mark them.
    let isolate = pipeline.seq.len() > 1;
    for command in &pipeline.seq {
        let compound = isolate && !matches!(command, Command::Simple(_));
        if compound {
            script.pipes.push(marker(ENTER));
        }
        walk_command(command, &mut pipe, script, depth)?;
        if compound {
            script.pipes.push(marker(LEAVE));
        }
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
        Command::ExtendedTest(test, redirects) => {
            // `[[ … ]]` expands its words: substitutions inside it run.
            walk_test(&test.expr, script, depth)?;
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
        CompoundCommand::ForClause(clause) => {
            // The list is expanded before the loop runs; substitutions in it run.
            for value in clause.values.iter().flatten() {
                resolve_word(&value.value, script, depth)?;
            }
            // The loop variable is assigned a value mala does not follow.
            script.pipes.push(Pipe {
                stages: vec![Invocation {
                    assigns: vec![(clause.variable_name.clone(), Arg::Dynamic("…".to_owned()))],
                    ..Invocation::default()
                }],
                link: Link::Start,
            });
            walk_list(&clause.body.list, script, depth)
        }
        CompoundCommand::ArithmeticForClause(clause) => {
            let parts = [&clause.initializer, &clause.condition, &clause.updater];
            for expr in parts.into_iter().flatten() {
                expand_arithmetic(&expr.value, script, depth)?;
            }
            walk_list(&clause.body.list, script, depth)
        }
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
            resolve_word(&clause.value.value, script, depth)?;
            for case in &clause.cases {
                for pattern in &case.patterns {
                    resolve_word(&pattern.value, script, depth)?;
                }
                if let Some(cmd) = &case.cmd {
                    walk_list(cmd, script, depth)?;
                }
            }
            Ok(())
        }
        CompoundCommand::Coprocess(coprocess) => {
            let mut pipe = Pipe::default();
            script.pipes.push(marker(ENTER));
            walk_command(&coprocess.body, &mut pipe, script, depth)?;
            script.pipes.push(pipe);
            script.pipes.push(marker(LEAVE));
            Ok(())
        }
        CompoundCommand::Arithmetic(arithmetic) => {
            expand_arithmetic(&arithmetic.expr.value, script, depth)
        }
    }
}

/// The words of a `[[ … ]]` test, for the substitutions they run.
fn walk_test(
    expr: &ast::ExtendedTestExpr,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    use ast::ExtendedTestExpr as E;
    match expr {
        E::And(left, right) | E::Or(left, right) => {
            walk_test(left, script, depth)?;
            walk_test(right, script, depth)
        }
        E::Not(inner) | E::Parenthesized(inner) => walk_test(inner, script, depth),
        E::UnaryTest(_, word) => resolve_word(&word.value, script, depth).map(drop),
        E::BinaryTest(_, left, right) => {
            resolve_word(&left.value, script, depth)?;
            resolve_word(&right.value, script, depth).map(drop)
        }
    }
}

/// An arithmetic expression is expanded like a word before it is evaluated,
/// so the command substitutions inside it run.
fn expand_arithmetic(text: &str, script: &mut Script, depth: usize) -> Result<(), ParseFailure> {
    expand_inner(text, script, depth)
}

/// The commands that the text inside `${…}` or `$((…))` runs. Text that the
/// word parser cannot read is only a problem when it may hold a substitution.
fn expand_inner(text: &str, script: &mut Script, depth: usize) -> Result<(), ParseFailure> {
    match word::parse(text, &options()) {
        Ok(pieces) => collect(&pieces, text, &mut Chars::default(), script, depth + 1).map(drop),
        Err(_) if text.contains("$(") || text.contains('`') => Err(ParseFailure(format!(
            "the expansion `{text}` runs a command mala could not read"
        ))),
        Err(_) => Ok(()),
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
                        .extend(resolve_words(&name.value, script, depth)?);
                }
            }
            Some(CommandPrefixOrSuffixItem::Word(w)) => {
                invocation
                    .words
                    .extend(resolve_words(&w.value, script, depth)?);
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
                } else {
                    // `VAR=value cmd`: not an argument, but the value may run a substitution.
                    assignment_value(assignment, &mut invocation, script, depth)?;
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
                IoFileRedirectTarget::Duplicate(w) => {
                    // `>&word` duplicates a descriptor when the word is a
                    // number (or `-`); any other word is a file bash opens for
                    // writing, like `&>`.
                    let target = resolve_word(&w.value, script, depth)?;
                    let descriptor = target.literal().is_some_and(|t| {
                        let t = t.strip_suffix('-').unwrap_or(t);
                        t.chars().all(|c| c.is_ascii_digit())
                    });
                    if matches!(kind, IoFileRedirectKind::DuplicateOutput) && !descriptor {
                        invocation.writes.push(WriteRedirect { target });
                    }
                }
                IoFileRedirectTarget::Fd(_) => {}
            }
        }
        IoRedirect::OutputAndError(w, _) => {
            let target = resolve_word(&w.value, script, depth)?;
            invocation.writes.push(WriteRedirect { target });
        }
        IoRedirect::HereString(_, w) => {
            // `<<< WORD` expands WORD like any other word.
            invocation.stdin = Some(resolve_word(&w.value, script, depth)?);
        }
        IoRedirect::HereDocument(_, doc) => {
            invocation.stdin = Some(here_document(doc, script, depth)?);
        }
    }
    Ok(())
}

/// An assignment's value (and an array element's subscript, which bash
/// evaluates arithmetically): the substitutions in them run.
fn assignment_value(
    assignment: &ast::Assignment,
    invocation: &mut Invocation,
    script: &mut Script,
    depth: usize,
) -> Result<(), ParseFailure> {
    let name = match &assignment.name {
        ast::AssignmentName::VariableName(name) => name.clone(),
        ast::AssignmentName::ArrayElementName(name, index) => {
            expand_arithmetic(index, script, depth)?;
            format!("{name}[{index}]")
        }
    };
    match &assignment.value {
        ast::AssignmentValue::Scalar(w) => {
            let value = resolve_word(&w.value, script, depth)?;
            invocation.assigns.push((name, value));
        }
        ast::AssignmentValue::Array(items) => {
            for (index, value) in items {
                if let Some(index) = index {
                    expand_arithmetic(&index.value, script, depth)?;
                }
                resolve_words(&value.value, script, depth)?;
            }
            invocation
                .assigns
                .push((name, Arg::Dynamic("(…)".to_owned())));
        }
    }
    Ok(())
}

/// A here-document's body. With an unquoted delimiter, bash expands `$…`
/// and backquotes in it (quotes are plain characters there), so its
/// substitutions run; with a quoted one the body is literal text.
fn here_document(
    doc: &ast::IoHereDocument,
    script: &mut Script,
    depth: usize,
) -> Result<Arg, ParseFailure> {
    let body = &doc.doc.value;
    if !doc.requires_expansion || !body.contains(['$', '`']) {
        return Ok(Arg::Literal(body.clone()));
    }
    // Quotes are not special in the body: escape them so the word parser
    // reads them as characters and finds every substitution.
    let escaped = body
        .replace('\\', "\\\\")
        .replace('\'', "\\'")
        .replace('"', "\\\"");
    match word::parse(&escaped, &options()) {
        Ok(pieces) => {
            collect(&pieces, &escaped, &mut Chars::default(), script, depth)?;
            Ok(Arg::Dynamic(body.clone()))
        }
        Err(_) => Err(ParseFailure(
            "a here-document in it expands text mala could not read".to_owned(),
        )),
    }
}

/// A word's value when it is literal; command substitutions inside it are
/// parsed and their commands added to the script.
fn resolve_word(raw: &str, script: &mut Script, depth: usize) -> Result<Arg, ParseFailure> {
    let (arg, _) = resolve_chars(raw, script, depth)?;
    Ok(arg)
}

/// The words a command word becomes: brace expansion (`src/{a,b}.rs`,
/// `{touch,f}`) turns one literal word into several before anything runs.
fn resolve_words(raw: &str, script: &mut Script, depth: usize) -> Result<Vec<Arg>, ParseFailure> {
    let (arg, chars) = resolve_chars(raw, script, depth)?;
    if matches!(arg, Arg::Dynamic(_)) {
        return Ok(vec![arg]);
    }
    let mut out = Vec::new();
    expand_braces(&chars.of_word(), &mut out)?;
    Ok(out
        .into_iter()
        .map(|word| Arg::Literal(word.into_iter().map(|(c, _)| c).collect()))
        .collect())
}

fn resolve_chars(
    raw: &str,
    script: &mut Script,
    depth: usize,
) -> Result<(Arg, Chars), ParseFailure> {
    let pieces = word::parse(raw, &options())
        .map_err(|e| ParseFailure(format!("the word `{raw}` could not be read ({e})")))?;
    let mut chars = Chars::default();
    let dynamic = collect(&pieces, raw, &mut chars, script, depth)?;
    Ok(if dynamic {
        (Arg::Dynamic(raw.to_owned()), chars)
    } else {
        (Arg::Literal(chars.text.clone()), chars)
    })
}

/// A word's literal text, and which of its characters were unquoted (only
/// those can be brace-expansion syntax).
#[derive(Default)]
struct Chars {
    text: String,
    unquoted: Vec<bool>,
}

impl Chars {
    fn push(&mut self, s: &str, unquoted: bool) {
        self.text.push_str(s);
        self.unquoted.extend(s.chars().map(|_| unquoted));
    }

    fn of_word(&self) -> Vec<(char, bool)> {
        self.text
            .chars()
            .zip(self.unquoted.iter().copied())
            .collect()
    }
}

/// Appends the literal text of `pieces`; returns whether any piece is dynamic.
fn collect(
    pieces: &[WordPieceWithSource],
    raw: &str,
    chars: &mut Chars,
    script: &mut Script,
    depth: usize,
) -> Result<bool, ParseFailure> {
    if depth > MAX_DEPTH {
        return Err(ParseFailure("it nests commands too deeply".to_owned()));
    }
    let mut dynamic = false;
    for piece in pieces {
        match &piece.piece {
            WordPiece::Text(s) => chars.push(s, true),
            WordPiece::SingleQuotedText(s) | WordPiece::AnsiCQuotedText(s) => chars.push(s, false),
            WordPiece::EscapeSequence(s) => chars.push(s.strip_prefix('\\').unwrap_or(s), false),
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                let mut quoted = Chars::default();
                dynamic |= collect(inner, raw, &mut quoted, script, depth)?;
                chars.push(&quoted.text, false);
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
            WordPiece::ParameterExpansion(_) => {
                // `${X:-$(cmd)}`, `${X:=$(cmd)}`: the operand words are
                // expanded too. The piece's source is `${…}` or `$X`.
                let source = raw.get(piece.start_index..piece.end_index).unwrap_or("");
                if let Some(inner) = source.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
                    expand_inner(inner, script, depth)?;
                }
                dynamic = true;
            }
            WordPiece::ArithmeticExpression(expr) => {
                expand_arithmetic(&expr.value, script, depth)?;
                dynamic = true;
            }
            WordPiece::TildeExpansion(_) => dynamic = true,
        }
    }
    Ok(dynamic)
}

/// More words than this from one brace expansion is not a command to check.
const MAX_BRACE_WORDS: usize = 256;

/// Bash's brace expansion of a literal word: `a{b,c}d` → `abd acd`,
/// `{1..3}` → `1 2 3`; braces that are quoted or hold no list stay as they are.
fn expand_braces(
    word: &[(char, bool)],
    out: &mut Vec<Vec<(char, bool)>>,
) -> Result<(), ParseFailure> {
    if out.len() > MAX_BRACE_WORDS {
        return Err(ParseFailure(
            "a brace expansion in it makes too many words".to_owned(),
        ));
    }
    for open in 0..word.len() {
        if word[open] != ('{', true) {
            continue;
        }
        let Some((close, alternatives)) = brace_list(word, open) else {
            continue;
        };
        for alternative in alternatives {
            let mut next = word[..open].to_vec();
            next.extend(alternative);
            next.extend_from_slice(&word[close + 1..]);
            expand_braces(&next, out)?;
        }
        return Ok(());
    }
    out.push(word.to_vec());
    Ok(())
}

/// The `}` matching the `{` at `open` and the alternatives between them, when
/// they form a list (`a,b`) or a sequence (`1..5`, `a..e`).
#[allow(clippy::type_complexity)] // a word is a list of (character, unquoted)
fn brace_list(word: &[(char, bool)], open: usize) -> Option<(usize, Vec<Vec<(char, bool)>>)> {
    let mut depth = 0;
    let mut start = open + 1;
    let mut parts = Vec::new();
    for (i, &(c, unquoted)) in word.iter().enumerate().skip(open + 1) {
        match (c, unquoted) {
            ('{', true) => depth += 1,
            ('}', true) if depth > 0 => depth -= 1,
            ('}', true) => {
                if parts.is_empty() {
                    let inner: String = word[start..i].iter().map(|(c, _)| *c).collect();
                    return sequence(&inner).map(|items| (i, items));
                }
                parts.push(word[start..i].to_vec());
                return Some((i, parts));
            }
            (',', true) if depth == 0 => {
                parts.push(word[start..i].to_vec());
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

/// `{1..3}`, `{a..c}`, `{0..10..2}`.
#[allow(clippy::type_complexity)]
fn sequence(inner: &str) -> Option<Vec<Vec<(char, bool)>>> {
    let parts: Vec<&str> = inner.split("..").collect();
    let (from, to, step) = match parts.as_slice() {
        [from, to] => (*from, *to, 1),
        [from, to, step] => (*from, *to, step.parse::<i64>().ok()?.unsigned_abs().max(1)),
        _ => return None,
    };
    let word = |s: String| s.chars().map(|c| (c, false)).collect::<Vec<_>>();
    if let (Ok(a), Ok(b)) = (from.parse::<i64>(), to.parse::<i64>()) {
        let count = a.abs_diff(b) / step + 1;
        if count > MAX_BRACE_WORDS as u64 {
            return None;
        }
        let step = i64::try_from(step).ok()?;
        let items = (0..i64::try_from(count).ok()?)
            .map(|k| if a <= b { a + k * step } else { a - k * step })
            .map(|n| word(n.to_string()))
            .collect();
        return Some(items);
    }
    let (mut a, mut b) = (from.chars(), to.chars());
    let (Some(a), None, Some(b), None) = (a.next(), a.next(), b.next(), b.next()) else {
        return None;
    };
    if !a.is_ascii_alphabetic() || !b.is_ascii_alphabetic() {
        return None;
    }
    let range: Vec<char> = if a <= b {
        (a..=b).step_by(usize::try_from(step).ok()?).collect()
    } else {
        (b..=a).rev().step_by(usize::try_from(step).ok()?).collect()
    };
    Some(range.into_iter().map(|c| word(c.to_string())).collect())
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
    fn duplications_to_a_word_are_file_writes() {
        let targets = |line: &str| -> Vec<String> {
            parse_script(line)
                .unwrap()
                .invocations()
                .flat_map(|i| i.writes.iter().map(|w| w.target.raw().to_owned()))
                .collect()
        };
        assert_eq!(targets("cmd >& f"), vec!["f"]);
        assert_eq!(targets("cmd 2>&g"), vec!["g"]);
        assert_eq!(targets("cmd &>> h <> i >| j"), vec!["h", "i", "j"]);
        assert!(targets("cmd 2>&1 >&2 3>&-").is_empty());
    }

    #[test]
    fn braces_expand_into_words() {
        let all = |line: &str| words(&parse_script(line).unwrap());
        assert_eq!(all("{touch,f}"), vec![vec!["touch", "f"]]);
        assert_eq!(
            all("touch src/{x,y}.rs a{1..3}"),
            vec![vec!["touch", "src/x.rs", "src/y.rs", "a1", "a2", "a3"]]
        );
        assert_eq!(all("echo {a,{b,c}}"), vec![vec!["echo", "a", "b", "c"]]);
        assert_eq!(
            all("find . -exec rm {} ; echo '{a,b}' \\{c,d} {x}"),
            vec![
                vec!["find", ".", "-exec", "rm", "{}"],
                vec!["echo", "{a,b}", "{c,d}", "{x}"]
            ]
        );
    }

    #[test]
    fn substitutions_inside_expansions_and_compounds_are_seen() {
        for line in [
            "echo $(( $(touch f) + 1 ))",
            "echo ${X:-$(touch f)}",
            ": \"${X:=$(touch f)}\"",
            "for i in $(touch f); do :; done",
            "(( $(touch f) ))",
            "for (( i = $(touch f); i < 3; i++ )); do :; done",
            "[[ -n $(touch f) ]]",
            "case $(touch f) in *) ;; esac",
        ] {
            let all = words(&parse_script(line).unwrap());
            assert!(
                all.contains(&vec!["touch".to_owned(), "f".to_owned()]),
                "{line}: {all:?}"
            );
        }
    }

    #[test]
    fn unparseable_text_is_refused() {
        assert!(parse_script("echo 'unterminated").is_err());
        assert!(parse_script("if then fi (").is_err());
    }
}
