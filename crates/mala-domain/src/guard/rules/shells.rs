//! Shells and interpreters, and the ways they are fed a program: `-c`
//! (after options that take values), stdin from a pipe, a here-string or a
//! here-document, a process substitution, `trap` strings and aliases.

use super::super::programs;
use super::super::shell::Arg;
use super::{Refusal, SHELLS, Walker};

/// Shells whose grammar is bash's or a subset of it: the guard reads their
/// `-c` scripts as it reads bash.
pub(crate) const BASH_FAMILY: &[&str] = &["bash", "sh", "dash", "ash", "rbash"];

/// Where a command reads its stdin from.
#[derive(Debug, Clone)]
pub(super) enum Stdin {
    /// Nothing mala knows of (an agent's shell has no terminal).
    Terminal,
    /// The output of the previous command of a pipeline.
    Pipe,
    /// A here-string or here-document.
    Text(Arg),
}

impl Walker<'_> {
    /// `bash [options] -c LINE`, `bash SCRIPT`, or a program read from stdin.
    pub(super) fn shell(&mut self, name: &str, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        let (mut command, mut from_stdin) = (false, false);
        let mut i = 0;
        while let Some(raw) = args.get(i).map(Arg::raw) {
            if raw == "--" || raw == "-" {
                i += 1;
                break;
            }
            if matches!(raw, "--rcfile" | "--init-file") {
                i += 2;
            } else if raw.starts_with("--") {
                i += 1;
            } else if raw.len() > 1 && raw.starts_with(['-', '+']) {
                let letters = &raw[1..];
                command |= raw.starts_with('-') && letters.contains('c');
                from_stdin |= raw.starts_with('-') && letters.contains('s');
                // `-o errexit`, `-O extglob`: those letters take the next word.
                i += 1 + letters.chars().filter(|c| matches!(c, 'o' | 'O')).count();
            } else {
                break;
            }
        }
        let operand = args.get(i);
        if command && !BASH_FAMILY.contains(&name) && operand.is_some_and(|l| l.raw().contains('('))
        {
            return Err(format!(
                "refused: mala reads shell commands as bash, and under {name} parentheses can run code \
                 bash would not (zsh's `${{(e)…}}`, glob qualifiers `*(e:…:)`, `=(…)`; fish's `(…)`). \
                 Write the command without them, or run it with bash"
            ));
        }
        if command {
            return match operand {
                Some(line) => self.nested(std::slice::from_ref(line), depth, "the shell"),
                None => Ok(()),
            };
        }
        match operand {
            Some(file) if file.raw().starts_with("<(") => Err(format!(
                "refused: {name} runs the output of a process substitution as its program, which mala cannot read. \
                 Run the commands themselves"
            )),
            // A script file: mala checks commands, not programs.
            Some(_) if !from_stdin => Ok(()),
            _ => self.stdin_program(name, depth),
        }
    }

    /// A shell or interpreter that reads its program from stdin: a literal
    /// here-string or here-document is checked like `-c`; anything else is a
    /// program mala cannot read.
    pub(super) fn stdin_program(&mut self, name: &str, depth: usize) -> Result<(), Refusal> {
        let text = match &self.stdin {
            Stdin::Terminal => return Ok(()),
            Stdin::Text(Arg::Literal(text)) => text.clone(),
            Stdin::Pipe | Stdin::Text(Arg::Dynamic(_)) => {
                return Err(format!(
                    "refused: {name} reads its program from stdin here, and mala cannot read what arrives there. \
                     Run the commands themselves, or give the program literally (`{name} -c '…'`, or a quoted here-document)"
                ));
            }
        };
        if SHELLS.contains(&name) {
            self.stdin = Stdin::Terminal;
            return self.nested(&[Arg::Literal(text)], depth, name);
        }
        let lang = programs::language(name);
        match lang.and_then(|lang| programs::writes(lang, &text)) {
            Some(primitive) => Err(format!(
                "refused: the {name} program given on stdin can change files or run commands (it uses `{primitive}`), \
                 and mala cannot read programs to check them against your locks. Make the change with a structured edit of files you hold"
            )),
            None => Ok(()),
        }
    }

    /// `trap 'COMMAND LINE' SIGNALS…`: the line runs later, in this shell.
    pub(super) fn trap(&mut self, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        let args = match args.first().map(Arg::raw) {
            Some("--") => &args[1..],
            Some("-p" | "-l" | "-P") | None => return Ok(()),
            _ => args,
        };
        match args.first() {
            Some(line) if args.len() > 1 && line.raw() != "-" => {
                self.nested(std::slice::from_ref(line), depth, "trap")
            }
            _ => Ok(()),
        }
    }
}

/// `alias NAME=…` (and turning aliases on) changes what later words run;
/// `source <(…)` runs a program mala cannot read.
pub(super) fn definitions(name: &str, args: &[Arg]) -> Result<(), Refusal> {
    match name {
        "alias" if args.iter().any(|a| a.raw().contains('=')) => Err(
            "refused: an alias changes what a later command word runs, which mala cannot follow. Run the command itself".to_owned(),
        ),
        "shopt" if args.iter().any(|a| a.raw() == "expand_aliases") => Err(
            "refused: expand_aliases lets aliases change what later command words run, which mala cannot follow. Run the commands themselves".to_owned(),
        ),
        "source" | "." if args.first().is_some_and(|a| a.raw().starts_with("<(")) => Err(
            "refused: sourcing a process substitution runs a program mala cannot read. Run the commands themselves".to_owned(),
        ),
        _ => Ok(()),
    }
}
