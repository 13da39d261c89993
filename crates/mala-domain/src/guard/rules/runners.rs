//! Tools that run another command whose options mala does not list one by
//! one: environment runners (`uv run`, `poetry run`, `npx`, `bundle exec`,
//! `nix develop -c`…), tracers and sandboxes (`strace`, `valgrind`,
//! `bwrap`…), and containers that mount the repository.
//!
//! Where the command starts is found without knowing which options take a
//! value: every word that may start it (a word after an option, up to the
//! first word after a word that is not an option) is checked as a command,
//! so `uv run --with git reset --hard` is refused whichever way it reads.

use super::super::shell::Arg;
use super::{Refusal, Walker, normalize};

/// How a runner's words lead to its command.
enum Start {
    /// After this subcommand (`uv run`): the words that follow it.
    Sub(&'static [&'static str]),
    /// Right after the runner's name.
    Direct,
    /// After these options (`nix develop -c`, `gdb --args`).
    After(&'static [&'static str]),
}

fn start(name: &str) -> Option<(Start, usize)> {
    let start = match name {
        "uv" | "poetry" | "pipenv" | "pdm" | "hatch" | "rye" | "conda" | "mamba" | "micromamba" => {
            Start::Sub(&["run"])
        }
        "pnpm" | "yarn" | "npm" => Start::Sub(&["exec", "dlx", "x"]),
        "bundle" | "bundler" => Start::Sub(&["exec"]),
        "mise" | "rtx" => Start::Sub(&["exec", "x"]),
        "direnv" => return Some((Start::Sub(&["exec"]), 1)),
        "nix" => Start::After(&["-c", "--command"]),
        "gdb" => Start::After(&["--args"]),
        "faketime" => return Some((Start::Direct, 1)),
        "npx" | "bunx" | "pnpx" | "strace" | "ltrace" | "valgrind" | "fakeroot" | "eatmydata"
        | "unbuffer" | "firejail" | "systemd-run" | "proot" => Start::Direct,
        // Its options take one, two or three values: every word may start the command.
        "bwrap" => return Some((Start::Direct, usize::MAX)),
        _ => return None,
    };
    Some((start, 0))
}

pub(super) fn is_runner(name: &str) -> bool {
    start(name).is_some() || matches!(name, "parallel" | "script" | "at" | "batch" | "nsenter")
}

impl Walker<'_> {
    pub(super) fn runner(&mut self, name: &str, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        match name {
            "at" | "batch" => {
                return Err(format!(
                    "refused: {name} reads the commands it schedules from stdin, and they run later where mala cannot see them. \
                     Run the commands now, yourself"
                ));
            }
            "nsenter" => {
                return Err(
                    "refused: nsenter runs the command in other namespaces, where mala cannot tell which files its paths name. Run the command itself"
                        .to_owned(),
                );
            }
            "parallel" => return self.parallel(args, depth),
            "script" => return self.script_command(args, depth),
            _ => {}
        }
        self.tracer_logs(name, args)?;
        if name == "gdb"
            && args.iter().any(|a| {
                matches!(
                    a.raw(),
                    "-ex" | "-x" | "-iex" | "-ix" | "--eval-command" | "--command"
                )
            })
        {
            return Err(
                "refused: gdb's commands (-ex, -x) can run shell commands mala cannot check. Run the program under gdb without them".to_owned(),
            );
        }
        let Some((start, positionals)) = start(name) else {
            return Ok(());
        };
        let from = match start {
            Start::Direct => Some(0),
            Start::Sub(subs) => args
                .iter()
                .position(|a| !a.raw().starts_with('-'))
                .filter(|&i| subs.contains(&args[i].raw()))
                .map(|i| i + 1),
            Start::After(options) => args
                .iter()
                .position(|a| options.contains(&a.raw()))
                .map(|i| i + 1),
        };
        let Some(from) = from else {
            return Ok(());
        };
        let rest = args.get(from..).unwrap_or(&[]);
        if positionals == usize::MAX {
            return (0..rest.len()).try_for_each(|i| self.isolated(&rest[i..], depth));
        }
        let rest = skip_positionals(rest, positionals);
        self.candidates(rest, depth)
    }

    /// Checks every word that may start the command.
    fn candidates(&mut self, words: &[Arg], depth: usize) -> Result<(), Refusal> {
        for (i, word) in words.iter().enumerate() {
            let raw = word.raw();
            if raw == "--" {
                return self.isolated(&words[i + 1..], depth);
            }
            if raw.starts_with('-') {
                continue;
            }
            self.isolated(&words[i..], depth)?;
            let after_option = i > 0 && {
                let previous = words[i - 1].raw();
                previous.starts_with('-') && !previous.contains('=')
            };
            if !after_option {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A command checked without letting its `cd` change this shell's directory.
    fn isolated(&mut self, words: &[Arg], depth: usize) -> Result<(), Refusal> {
        let current = self.cwd().to_path_buf();
        self.cwd.push(current);
        let result = self.words(words, depth + 1);
        self.cwd.pop();
        result
    }

    /// `strace -o F`, `ltrace -o F`, `valgrind --log-file=F`: log files.
    fn tracer_logs(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        for (i, arg) in args.iter().enumerate() {
            let raw = arg.raw();
            let log = match name {
                "strace" | "ltrace" if raw == "-o" => args.get(i + 1).cloned(),
                "valgrind" => raw
                    .strip_prefix("--log-file=")
                    .or_else(|| raw.strip_prefix("--xml-file="))
                    .map(|v| same_kind(arg, v)),
                _ => None,
            };
            if let Some(log) = log {
                self.write_target(&log, name)?;
            }
        }
        Ok(())
    }

    /// `parallel CMD… ::: ARGS`: the command runs once per argument; without
    /// a command, the commands are the input lines.
    fn parallel(&mut self, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        let end = args
            .iter()
            .position(|a| a.raw().starts_with(":::"))
            .unwrap_or(args.len());
        let command: Vec<Arg> = args[..end]
            .iter()
            .skip_while(|a| a.raw().starts_with('-'))
            .cloned()
            .chain(std::iter::once(Arg::Dynamic(
                "<argument of parallel>".to_owned(),
            )))
            .collect();
        if command.len() == 1 {
            return Err(
                "refused: parallel runs commands read from its input or arguments, which mala cannot check. Run the commands themselves".to_owned(),
            );
        }
        self.candidates(&command, depth)
    }

    /// `script -c 'LINE' [FILE]`: the line runs, and FILE (`typescript`
    /// by default) is written.
    fn script_command(&mut self, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        let mut line = None;
        let mut file = None;
        let mut i = 0;
        while let Some(arg) = args.get(i) {
            let raw = arg.raw();
            if raw == "--command"
                || (raw.starts_with('-') && !raw.starts_with("--") && raw.ends_with('c'))
            {
                i += 1;
                line = args.get(i).cloned();
            } else if let Some(value) = raw.strip_prefix("--command=") {
                line = Some(same_kind(arg, value));
            } else if !raw.starts_with('-') && file.is_none() {
                file = Some(arg.clone());
            }
            i += 1;
        }
        self.write_target(
            &file.unwrap_or(Arg::Literal("typescript".to_owned())),
            "script",
        )?;
        match line {
            Some(line) => self.nested(&[line], depth, "script -c"),
            None => Err(
                "refused: script without -c starts an interactive shell that reads commands mala cannot see. Run the commands themselves".to_owned(),
            ),
        }
    }

    /// `docker run` / `podman run`: a bind mount of the repository (or a
    /// directory holding it) lets the container write any of its files.
    pub(super) fn container(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        for (i, arg) in args.iter().enumerate() {
            let raw = arg.raw();
            if raw == "--volumes-from" || raw.starts_with("--volumes-from=") {
                return Err(format!(
                    "refused: `{name} {raw}` mounts whatever another container mounts, which may be the \
                     repository, so mala cannot tell what the container could write. Name each mount with -v"
                ));
            }
            let spec = match raw {
                "-v" | "--volume" | "--mount" => args.get(i + 1).map(Arg::raw),
                _ => raw
                    .strip_prefix("--volume=")
                    .or_else(|| raw.strip_prefix("--mount="))
                    .or_else(|| raw.strip_prefix("-v").filter(|v| !v.is_empty())),
            };
            let Some(spec) = spec else { continue };
            let source = if spec.contains("source=") || spec.contains("src=") {
                spec.split(',')
                    .find_map(|kv| {
                        kv.strip_prefix("source=")
                            .or_else(|| kv.strip_prefix("src="))
                    })
                    .unwrap_or("")
            } else {
                spec.split(':').next().unwrap_or("")
            };
            // A named volume is not a path.
            let path_like = source.contains(['/', '$', '`', '~']) || source.starts_with('.');
            if !path_like {
                continue;
            }
            let dynamic = source.contains(['$', '`', '~']);
            let absolute = normalize(self.cwd(), source);
            let root = self.ctx.repo_root;
            if dynamic || absolute.starts_with(root) || root.starts_with(&absolute) {
                return Err(format!(
                    "refused: `{name}` mounts `{source}`, which is (or may be) the repository or a directory holding it, \
                     so the container could write any file in it. Mount a copy under /tmp, or no host directory"
                ));
            }
        }
        Ok(())
    }
}

fn skip_positionals(words: &[Arg], count: usize) -> &[Arg] {
    let mut seen = 0;
    for (i, word) in words.iter().enumerate() {
        if seen == count {
            return &words[i..];
        }
        if !word.raw().starts_with('-') {
            seen += 1;
        }
    }
    &[]
}

fn same_kind(arg: &Arg, text: &str) -> Arg {
    match arg {
        Arg::Literal(_) => Arg::Literal(text.to_owned()),
        Arg::Dynamic(_) => Arg::Dynamic(text.to_owned()),
    }
}
