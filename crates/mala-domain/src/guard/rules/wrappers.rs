//! Programs that run another command after their own options (`nice`,
//! `timeout`, `env`, `xargs`, `flock`…). Each one's options are listed, so
//! the guard knows which take a value and finds the command they run; an
//! option it does not know could take a value, so the command is refused.

use super::super::options::{self, Spec};
use super::super::shell::{Arg, quote};
use super::{Refusal, Walker, normalize};

/// One wrapper: its options, the words between them and the command, and
/// the options after which no command follows (`chrt -p PID` only reports).
struct Wrapper {
    spec: Spec,
    positionals: usize,
    no_command: &'static [&'static str],
}

const fn wrapper(
    short_values: &'static str,
    short_flags: &'static str,
    long_values: &'static [&'static str],
    long_flags: &'static [&'static str],
) -> Wrapper {
    Wrapper {
        spec: Spec {
            short_values,
            short_flags,
            short_optional: "",
            long_values,
            long_flags,
            stop_at_operand: true,
            ends_options: &[],
        },
        positionals: 0,
        no_command: &[],
    }
}

/// The wrappers the guard reads, by program name.
fn lookup(name: &str) -> Option<Wrapper> {
    let w = match name {
        "nice" => wrapper("n", "0123456789", &["adjustment"], &[]),
        "nohup" | "builtin" => wrapper("", "", &[], &[]),
        "exec" => wrapper("a", "cl", &[], &[]),
        "setsid" => wrapper("", "cfw", &[], &["ctty", "fork", "wait"]),
        "stdbuf" => wrapper("ioe", "", &["input", "output", "error"], &[]),
        "command" => Wrapper {
            no_command: &["-v", "-V"],
            ..wrapper("", "pvV", &[], &[])
        },
        "time" => wrapper(
            "of",
            "apvq",
            &["output", "format"],
            &["append", "portability", "verbose", "quiet"],
        ),
        "timeout" => Wrapper {
            positionals: 1,
            ..wrapper(
                "sk",
                "v",
                &["signal", "kill-after"],
                &["preserve-status", "foreground", "verbose"],
            )
        },
        "env" => Wrapper {
            spec: Spec {
                // The split words come first, then every word after `-S`.
                ends_options: &["-S", "--split-string"],
                ..wrapper(
                    "uCS",
                    "i0v",
                    &["unset", "chdir", "split-string"],
                    &[
                        "ignore-environment",
                        "null",
                        "debug",
                        "ignore-signal",
                        "default-signal",
                        "block-signal",
                        "list-signal-handling",
                    ],
                )
                .spec
            },
            ..wrapper("", "", &[], &[])
        },
        "flock" => Wrapper {
            positionals: 1,
            ..wrapper(
                "wE",
                "sxunoF",
                &["timeout", "wait", "conflict-exit-code"],
                &[
                    "shared",
                    "exclusive",
                    "unlock",
                    "nonblock",
                    "nb",
                    "close",
                    "no-fork",
                    "verbose",
                ],
            )
        },
        _ => return repeaters(name),
    };
    Some(w)
}

/// Wrappers that run the command again and again: per line of input
/// (`xargs`) or on a timer (`watch`).
fn repeaters(name: &str) -> Option<Wrapper> {
    let w = match name {
        "watch" => Wrapper {
            spec: Spec {
                short_optional: "d",
                ..wrapper(
                    "nq",
                    "bcCegprtwx",
                    &["interval", "equexit"],
                    &[
                        "beep",
                        "color",
                        "no-color",
                        "differences",
                        "errexit",
                        "chgexit",
                        "precise",
                        "no-rerun",
                        "no-title",
                        "no-wrap",
                        "exec",
                    ],
                )
                .spec
            },
            ..wrapper("", "", &[], &[])
        },
        "xargs" => Wrapper {
            spec: Spec {
                short_optional: "iel",
                ..wrapper(
                    "IdaELnPs",
                    "0rtpxo",
                    &[
                        "delimiter",
                        "arg-file",
                        "max-args",
                        "max-procs",
                        "max-chars",
                        "process-slot-var",
                    ],
                    &[
                        "null",
                        "replace",
                        "eof",
                        "max-lines",
                        "no-run-if-empty",
                        "verbose",
                        "interactive",
                        "exit",
                        "open-tty",
                        "show-limits",
                    ],
                )
                .spec
            },
            ..wrapper("", "", &[], &[])
        },
        _ => return scheduler(name),
    };
    Some(w)
}

/// Wrappers that set how the command is scheduled (priority, CPUs,
/// namespaces).
fn scheduler(name: &str) -> Option<Wrapper> {
    let w = match name {
        "chrt" => Wrapper {
            positionals: 1,
            no_command: &["-p", "--pid", "-m", "--max"],
            ..wrapper(
                "TPD",
                "abdefiorRpmv",
                &["sched-runtime", "sched-period", "sched-deadline"],
                &[
                    "all-tasks",
                    "batch",
                    "deadline",
                    "ext",
                    "fifo",
                    "idle",
                    "other",
                    "rr",
                    "reset-on-fork",
                    "pid",
                    "max",
                    "verbose",
                ],
            )
        },
        "taskset" => Wrapper {
            positionals: 1,
            no_command: &["-p", "--pid"],
            ..wrapper("", "acp", &[], &["all-tasks", "cpu-list", "pid"])
        },
        "ionice" => Wrapper {
            no_command: &["-p", "-P", "-u", "--pid", "--pgid", "--uid"],
            ..wrapper(
                "cnpPu",
                "t",
                &["class", "classdata", "pid", "pgid", "uid"],
                &["ignore"],
            )
        },
        "unshare" => wrapper(
            "SGRw",
            "muinpUCTfrc",
            &[
                "setuid",
                "setgid",
                "root",
                "wd",
                "propagation",
                "setgroups",
                "map-user",
                "map-group",
                "map-users",
                "map-groups",
                "monotonic",
                "boottime",
            ],
            &[
                "mount",
                "uts",
                "ipc",
                "net",
                "pid",
                "user",
                "cgroup",
                "time",
                "fork",
                "map-root-user",
                "map-current-user",
                "map-auto",
                "kill-child",
                "mount-proc",
                "mount-binfmt",
                "keep-caps",
            ],
        ),
        _ => return None,
    };
    Some(w)
}

/// Whether `name` is a program that runs another command.
pub(super) fn is_wrapper(name: &str) -> bool {
    lookup(name).is_some()
}

impl Walker<'_> {
    /// A wrapper: its own effects (a log file, a directory, a split string),
    /// then the command it runs, checked like any other.
    pub(super) fn wrapper(
        &mut self,
        name: &str,
        args: &[Arg],
        depth: usize,
    ) -> Result<(), Refusal> {
        let Some(wrapper) = lookup(name) else {
            return Ok(());
        };
        let parsed = options::parse(args, &wrapper.spec).map_err(|options::UnknownOption(o)| {
            format!(
                "refused: mala does not know the option `{o}` of {name}, so it cannot tell which command {name} runs. \
                 Run the command without {name}, or with {name}'s usual options"
            )
        })?;
        if parsed.has(wrapper.no_command) || parsed.operands.len() < wrapper.positionals {
            return Ok(());
        }
        let (before, command) = parsed.operands.split_at(wrapper.positionals);
        for log in parsed
            .values(&["-o", "--output"])
            .filter(|_| name == "time")
        {
            self.write_target(log, "time -o")?;
        }
        match name {
            "env" => self.env(&parsed, command, depth),
            "unshare" if parsed.has(&["-R", "--root"]) => Err(
                "refused: `unshare --root` runs the command under another root, where mala cannot tell which files its paths name. Run the command itself"
                    .to_owned(),
            ),
            "unshare" => {
                let dir = parsed.values(&["-w", "--wd"]).last().cloned();
                self.in_dir(dir.as_ref(), command, depth, name)
            }
            "flock" => self.flock(&before[0], command, depth),
            // Without -x, watch joins its words and runs them with `sh -c`.
            "watch" if !parsed.has(&["-x", "--exec"]) => self.nested(command, depth, name),
            "xargs" => self.xargs(&parsed, command, depth),
            _ => self.words(command, depth),
        }
    }

    /// `env [-C DIR] [-S STRING] [NAME=value]… COMMAND…`
    fn env(
        &mut self,
        parsed: &options::Parsed,
        command: &[Arg],
        depth: usize,
    ) -> Result<(), Refusal> {
        let start = command
            .iter()
            .position(|a| a.raw() != "-" && !is_assignment(a.raw()))
            .unwrap_or(command.len());
        let command = &command[start..];
        let dir = parsed.values(&["-C", "--chdir"]).last().cloned();
        let Some(split) = parsed.values(&["-S", "--split-string"]).last() else {
            return self.in_dir(dir.as_ref(), command, depth, "env");
        };
        // `-S 'CMD ARGS'` is split into words that come before the others.
        let Some(text) = split.literal() else {
            return Err(format!(
                "refused: the command given to env -S is only known when it runs (`{}`), so mala cannot check it",
                split.raw()
            ));
        };
        let mut line = text.to_owned();
        for arg in command {
            let Some(word) = arg.literal() else {
                return Err(format!(
                    "refused: the command given to env is only known when it runs (`{}`), so mala cannot check it",
                    arg.raw()
                ));
            };
            line.push(' ');
            line.push_str(&quote(word));
        }
        self.with_dir(dir.as_ref(), "env", |walker| {
            walker.nested(&[Arg::Literal(line)], depth, "env -S")
        })
    }

    /// Runs `command` from `dir` (when given), as `env -C` and `unshare -w` do.
    fn in_dir(
        &mut self,
        dir: Option<&Arg>,
        command: &[Arg],
        depth: usize,
        name: &str,
    ) -> Result<(), Refusal> {
        self.with_dir(dir, name, |walker| walker.words(command, depth))
    }

    fn with_dir(
        &mut self,
        dir: Option<&Arg>,
        name: &str,
        check: impl FnOnce(&mut Self) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let Some(dir) = dir else {
            return check(self);
        };
        let Some(path) = dir.literal() else {
            return Err(format!(
                "refused: {name} runs the command in `{}`, which is only known when it runs, so mala cannot tell which files its paths name. \
                 Name the directory literally",
                dir.raw()
            ));
        };
        let next = normalize(self.cwd(), path);
        self.cwd.push(next);
        let result = check(self);
        self.cwd.pop();
        result
    }

    /// `flock FILE COMMAND…`, `flock FILE -c 'COMMAND LINE'`, `flock FD`.
    fn flock(&mut self, file: &Arg, command: &[Arg], depth: usize) -> Result<(), Refusal> {
        let descriptor = file.raw().chars().all(|c| c.is_ascii_digit());
        if descriptor && command.is_empty() {
            return Ok(());
        }
        // flock creates its lock file when it is missing.
        self.write_target(file, "flock")?;
        match command.first().map(Arg::raw) {
            Some("-c" | "--command") => {
                self.nested(command.get(1..2).unwrap_or(&[]), depth, "flock -c")
            }
            _ => self.words(command, depth),
        }
    }

    /// `xargs [-I R] COMMAND…`: the arguments come from input.
    fn xargs(
        &mut self,
        parsed: &options::Parsed,
        command: &[Arg],
        depth: usize,
    ) -> Result<(), Refusal> {
        if command.is_empty() {
            return Ok(());
        }
        let replace = parsed
            .options
            .iter()
            .find(|o| matches!(o.name.as_str(), "-I" | "-i" | "--replace"))
            .map(|o| o.value.as_ref().map_or("{}", Arg::raw).to_owned());
        let mut command = command.to_vec();
        match replace {
            Some(token) if !token.is_empty() => {
                for word in &mut command {
                    if word.raw().contains(&token) {
                        *word = Arg::Dynamic(word.raw().to_owned());
                    }
                }
            }
            _ => command.push(Arg::Dynamic("<input of xargs>".to_owned())),
        }
        self.words(&command, depth)
    }
}

/// `NAME=value`, as env reads it.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}
