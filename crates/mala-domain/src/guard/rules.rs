//! What the guard refuses in a shell command: destructive git operations,
//! dangerous shell patterns, and writes to files the agent does not hold.

use std::path::{Component, Path, PathBuf};

mod files;
mod git;
mod runners;
mod scratch;
mod scripts;
mod shells;
mod wrappers;
mod writers;

use shells::Stdin;

use super::GuardContext;
use super::programs;
use super::shell::{Arg, ENTER, Invocation, LEAVE, Link, ParseFailure, Pipe, Script, parse_script};

/// A refusal, worded for the agent: what is wrong and what to do instead.
pub(crate) type Refusal = String;

/// Shells whose `-c` argument is itself a command line.
const SHELLS: &[&str] = &[
    "bash", "sh", "zsh", "dash", "ksh", "ash", "csh", "tcsh", "fish", "rbash", "mksh", "yash",
];
/// Interpreters that run whatever arrives on stdin.
const STDIN_RUNNERS: &[&str] = &[
    "bash", "sh", "zsh", "dash", "ksh", "ash", "python", "python3", "perl", "ruby", "node",
];
/// Programs that only run another command, for spotting `curl … | nice sh`.
const WRAPPERS: &[&str] = &[
    "time", "nice", "nohup", "command", "builtin", "exec", "stdbuf", "ionice", "timeout", "setsid",
    "chrt", "taskset", "unshare", "flock", "doas",
];
/// The coding agents' own project settings (Claude Code's, Codex's).
const AGENT_SETTINGS: &[&str] = &[".claude", ".codex"];
/// Where writes outside the repository are harmless to other agents.
const SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];
const HARMLESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/tty",
    "/dev/zero",
];

/// Variables that point git at another repository, index or tree than the
/// one the agent works in: what git then changes, the guard cannot judge.
const GIT_LOCATIONS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    // Where `cd NAME` goes, which the guard follows by the name alone.
    "CDPATH",
];
/// Variables that make git run a program or read a configuration the guard
/// refuses as `-c` settings (hooks, editors, pagers, helpers, diff tools).
const GIT_PROGRAMS: &[&str] = &[
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_PARAMETERS",
    "GIT_EXTERNAL_DIFF",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_PAGER",
    "GIT_ASKPASS",
    "GIT_EXEC_PATH",
    "GIT_TEMPLATE_DIR",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
];

fn redirects_git(invocation: &Invocation) -> Result<(), Refusal> {
    let exports = invocation
        .words
        .first()
        .is_some_and(|w| matches!(w.raw(), "export" | "declare" | "typeset" | "env"));
    let exported = invocation
        .words
        .iter()
        .skip(1)
        .filter(|_| exports)
        .map(|w| match w.raw().split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (w.raw().to_owned(), None),
        });
    let assigned = invocation
        .assigns
        .iter()
        .map(|(name, value)| (name.clone(), value.literal().map(str::to_owned)));
    for (name, value) in assigned.chain(exported) {
        if GIT_LOCATIONS.contains(&name.as_str()) {
            return Err(format!(
                "refused: {name} points git (or cd) at another repository, index or directory, which mala cannot check. Run git where you work, as it is"
            ));
        }
        // An editor that does nothing is how an agent finishes a rebase.
        let no_op_editor =
            name.ends_with("EDITOR") && matches!(value.as_deref(), Some("true" | ":"));
        let program = GIT_PROGRAMS.contains(&name.as_str())
            || name.starts_with("GIT_CONFIG_KEY_")
            || name.starts_with("GIT_CONFIG_VALUE_");
        if program && !no_op_editor {
            return Err(format!(
                "refused: {name} makes git run a program or read settings mala does not know to be harmless (hooks, editors, pagers, helpers, diff tools). Run git without it"
            ));
        }
    }
    Ok(())
}

/// Decides a shell command.
pub(crate) fn check_command(command: &str, ctx: &GuardContext<'_>) -> Result<(), Refusal> {
    let squeezed: String = command.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed.contains(":(){:|:&};:") {
        return Err(
            "refused: this is a fork bomb; it would exhaust the machine for every agent".to_owned(),
        );
    }
    let script = parse(command)?;
    Walker::new(ctx, None).script(&script, 0)
}

/// The repository files a command writes, as far as its words say (targets
/// only known at run time are not listed). Used to date an agent's last edit.
pub(crate) fn repository_writes(command: &str, ctx: &GuardContext<'_>) -> Vec<PathBuf> {
    let Ok(script) = parse_script(command) else {
        return Vec::new();
    };
    let mut walker = Walker::new(ctx, Some(std::cell::RefCell::new(Vec::new())));
    let _ = walker.script(&script, 0);
    walker
        .collected
        .map(std::cell::RefCell::into_inner)
        .unwrap_or_default()
}

/// Decides a structured edit of one file.
pub(crate) fn check_edit(tool: &str, path: &str, ctx: &GuardContext<'_>) -> Result<(), Refusal> {
    Walker::new(ctx, None).literal_write(path, tool)
}

fn parse(command: &str) -> Result<Script, Refusal> {
    parse_script(command).map_err(|ParseFailure(why)| {
        format!(
            "refused: mala could not read this command with confidence: {why}. \
             Run it as simpler commands, one at a time"
        )
    })
}

/// `git [global options] SUB ARGS` → (SUB, ARGS).
fn git_subcommand<'w>(words: &'w [&'w str]) -> Option<(&'w str, &'w [&'w str])> {
    if words.first().map(|w| basename(w)) != Some("git") {
        return None;
    }
    let mut i = 1;
    while i < words.len() {
        let word = words[i];
        if matches!(
            word,
            "-C" | "-c" | "--git-dir" | "--work-tree" | "--namespace"
        ) {
            i += 2;
        } else if word.starts_with('-') {
            i += 1;
        } else {
            return Some((word, &words[i + 1..]));
        }
    }
    None
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Lexical normalisation: `.` and `..` resolved without touching the disk.
pub(crate) fn normalize(base: &Path, path: &str) -> PathBuf {
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

fn has_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

struct Walker<'c> {
    ctx: &'c GuardContext<'c>,
    /// When set, writes inside the repository are collected instead of checked.
    collected: Option<std::cell::RefCell<Vec<PathBuf>>>,
    /// The working directory, innermost subshell last.
    cwd: Vec<PathBuf>,
    /// Whether a `git add` has run before the command being checked (a
    /// commit after it is then of added paths); only adds that come first count.
    added: std::cell::Cell<bool>,
    /// Where the command being checked reads its stdin from.
    stdin: Stdin,
    /// Shell variables that hold a path `mktemp` made under /tmp, and TMPDIR.
    scratch: Vec<String>,
    /// Directories the shell may also be in, because a `cd` may have failed
    /// (`cd X; …`), each with the subshell depth it was learnt at.
    maybe: Vec<(usize, PathBuf)>,
    /// The directories before the `cd`s of the current `&&` chain: the
    /// shell is in one of them if the chain stopped early.
    pending: Vec<(usize, PathBuf)>,
}

/// A pipeline that is only `exit`, in the shell itself (not `return`,
/// which outside a function only complains and goes on; not an `exit` the
/// line redefined as a function).
fn ends_the_shell(pipe: &Pipe, functions: &[String]) -> bool {
    let [only] = pipe.stages.as_slice() else {
        return false;
    };
    only.words.len() <= 2
        && !functions.iter().any(|f| f == "exit")
        && only.words.first().and_then(Arg::literal) == Some("exit")
}

impl<'c> Walker<'c> {
    fn new(ctx: &'c GuardContext<'c>, collected: Option<std::cell::RefCell<Vec<PathBuf>>>) -> Self {
        Walker {
            ctx,
            collected,
            cwd: vec![ctx.cwd.to_path_buf()],
            added: std::cell::Cell::new(false),
            stdin: Stdin::Terminal,
            // `$TMPDIR` is scratch until the line itself may change it.
            scratch: vec!["TMPDIR".to_owned()],
            maybe: Vec::new(),
            pending: Vec::new(),
        }
    }
}

impl Walker<'_> {
    fn cwd(&self) -> &Path {
        self.cwd.last().map_or(self.ctx.cwd, PathBuf::as_path)
    }

    /// Before a pipeline: one that does not follow `&&` may run after a
    /// `cd` that failed, so the directories before it stay possible.
    fn follow(&mut self, pipe: &Pipe, functions: &[String]) {
        if pipe.link == Link::Or && ends_the_shell(pipe, functions) {
            // `cd X || exit`: where the `cd` failed, nothing after runs.
            self.pending.clear();
            return;
        }
        let marker = pipe
            .stages
            .first()
            .and_then(|s| s.words.first())
            .is_some_and(|w| matches!(w.raw(), ENTER | LEAVE));
        if pipe.link != Link::And && !marker {
            let pending = std::mem::take(&mut self.pending);
            for entry in pending {
                if !self.maybe.contains(&entry) {
                    self.maybe.push(entry);
                }
            }
        }
    }

    /// Every directory a relative path may be resolved from.
    fn possible_dirs(&self) -> Vec<PathBuf> {
        let level = self.cwd.len();
        let mut dirs = vec![self.cwd().to_path_buf()];
        for (at, dir) in &self.maybe {
            if *at <= level && !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        dirs
    }

    fn script(&mut self, script: &Script, depth: usize) -> Result<(), Refusal> {
        let outer = self.stdin.clone();
        for pipe in &script.pipes {
            check_download_to_shell(pipe)?;
            self.follow(pipe, &script.functions);
            // Each command of a pipeline of several runs in a subshell.
            let isolate = pipe.stages.len() > 1;
            for (i, stage) in pipe.stages.iter().enumerate() {
                if isolate {
                    let current = self.cwd().to_path_buf();
                    self.cwd.push(current);
                }
                self.stdin = match &stage.stdin {
                    Some(text) => Stdin::Text(text.clone()),
                    None if i > 0 => Stdin::Pipe,
                    None => outer.clone(),
                };
                let result = self.invocation(stage, depth);
                self.stdin = outer.clone();
                if isolate {
                    self.leave();
                }
                // When collecting writes, a refused command does not hide
                // the writes of the commands after it.
                if self.collected.is_none() {
                    result?;
                }
            }
        }
        Ok(())
    }

    fn invocation(&mut self, invocation: &Invocation, depth: usize) -> Result<(), Refusal> {
        self.learn_variables(invocation);
        redirects_git(invocation)?;
        for redirect in &invocation.writes {
            self.write_target(&redirect.target, "this redirection")?;
        }
        self.words(&invocation.words, depth)
    }

    /// A path the command writes: it must be literal, and inside the
    /// repository it must be locked by this agent.
    fn write_target(&self, target: &Arg, what: &str) -> Result<(), Refusal> {
        let Arg::Literal(path) = target else {
            if self.collected.is_some() || self.is_scratch(target.raw()) {
                return Ok(());
            }
            return Err(format!(
                "refused: mala cannot tell which file `{}` is, so it cannot check that you hold its lock. \
                 Write to a literal path you have locked",
                target.raw()
            ));
        };
        self.literal_write(path, what)
    }

    fn literal_write(&self, path: &str, what: &str) -> Result<(), Refusal> {
        if Path::new(path).is_absolute() {
            return self.write_from(self.cwd(), path, what);
        }
        self.possible_dirs()
            .iter()
            .try_for_each(|dir| self.write_from(dir, path, what))
    }

    fn write_from(&self, base: &Path, path: &str, what: &str) -> Result<(), Refusal> {
        if HARMLESS_DEVICES.contains(&path)
            || path.starts_with("/dev/fd/")
            || path.starts_with("/proc/self/fd/")
        {
            return Ok(());
        }
        if path.starts_with("/dev/") {
            return Err(format!(
                "refused: {what} writes to the device {path}, which can destroy the machine's disks"
            ));
        }
        if has_glob(path) {
            return Err(format!(
                "refused: `{path}` is a pattern and may match files other agents hold. Name each file, and lock it first"
            ));
        }
        let absolute = normalize(base, path);
        let root = self.ctx.repo_root;
        if !absolute.starts_with(root) {
            if root.starts_with(&absolute) {
                return Err(format!(
                    "refused: {what} would change {}, which contains the whole repository",
                    absolute.display()
                ));
            }
            if self
                .ctx
                .elsewhere
                .iter()
                .any(|tree| absolute.starts_with(tree))
            {
                return Err(format!(
                    "refused: {what} writes {}, in another working tree (the user's checkout or another agent's). Work in your own worktree, {}",
                    absolute.display(),
                    root.display()
                ));
            }
            if SCRATCH.iter().any(|dir| absolute.starts_with(dir)) {
                return Ok(());
            }
            return Err(format!(
                "refused: {what} writes {} outside the repository. Write scratch files under /tmp instead",
                absolute.display()
            ));
        }
        let relative = absolute.strip_prefix(root).unwrap_or(&absolute);
        if relative.starts_with(".git") {
            return Err(format!(
                "refused: {what} writes inside .git ({}); git's own commands (and mala's commit tool) keep it consistent",
                relative.display()
            ));
        }
        if relative.as_os_str().is_empty() {
            return Err(format!(
                "refused: {what} would change the repository root itself"
            ));
        }
        if let Some(dir) = AGENT_SETTINGS.iter().find(|dir| relative.starts_with(dir)) {
            return Err(format!(
                "refused: {what} writes {}: the project's {dir} settings decide what every later \
                 agent may do (its hooks, permissions, approvals), so only a person changes them",
                relative.display()
            ));
        }
        if let Some(collected) = &self.collected {
            collected.borrow_mut().push(absolute);
            return Ok(());
        }
        if self.ctx.holds(&absolute) {
            return Ok(());
        }
        Err(format!(
            "refused: {what} writes {}, which you have not locked. Call lock_acquire with that path first \
             (another agent may be editing it)",
            relative.display()
        ))
    }

    fn words(&mut self, words: &[Arg], depth: usize) -> Result<(), Refusal> {
        let Some(first) = words.first() else {
            return Ok(());
        };
        let Some(name) = first.literal() else {
            return Err(format!(
                "refused: the command name `{}` is only known when it runs, so mala cannot check it. Name the program literally",
                first.raw()
            ));
        };
        let args = &words[1..];
        match basename(name) {
            "cd" | "pushd" => {
                self.change_dir(args);
                Ok(())
            }
            ENTER => {
                let current = self.cwd().to_path_buf();
                self.cwd.push(current);
                Ok(())
            }
            LEAVE | "popd" => {
                self.leave();
                Ok(())
            }
            "sudo" | "doas" | "su" | "runuser" | "pkexec" => Err(
                "refused: agents do not run commands as another user. Run the command itself, as you".to_owned(),
            ),
            "chroot" => Err(
                "refused: chroot runs the command under another root, where mala cannot tell which files its paths name. Run the command itself".to_owned(),
            ),
            wrapper if wrappers::is_wrapper(wrapper) => self.wrapper(wrapper, args, depth),
            runner if runners::is_runner(runner) => self.runner(runner, args, depth),
            "docker" | "podman" | "nerdctl" => self.container(basename(name), args),
            shell if SHELLS.contains(&shell) => self.shell(shell, args, depth),
            "busybox" => self.words(args, depth + 1),
            "trap" => self.trap(args, depth),
            "alias" | "shopt" | "source" | "." => shells::definitions(basename(name), args),
            "eval" => self.nested(args, depth, "eval"),
            "git" => self.git(words),
            "rm" | "rmdir" | "unlink" | "shred" => self.remove(name, args),
            "touch" | "truncate" => self.each_operand(args, &["-d", "-r", "-t", "-s", "--reference", "--size"], name),
            "chmod" | "chown" | "chgrp" => self.permissions(basename(name), args),
            "cp" | "install" | "ln" | "mv" => self.copy(basename(name), args),
            "tee" => self.each_operand(args, &[], "tee"),
            "sed" | "gsed" => self.sed(args),
            "awk" | "gawk" => self.awk(basename(name), args),
            interpreter if programs::language(interpreter).is_some() => self.interpreter(interpreter, args),
            "dd" => self.dd(args),
            "apply_patch" | "applypatch" => self.apply_patch(args),
            writer if writers::is_writer(writer) => self.writer(writer, args),
            "find" => self.find(args, depth),
            "patch" => refuse_unless(args, &["--dry-run", "-C", "--check"], "patch changes files named inside the patch"),
            "curl" | "wget" => self.download(name, args),
            "kill" if args.iter().any(|a| a.raw() == "-1") => {
                Err("refused: `kill -1` signals every process you own, including other agents. Kill the pid you started".to_owned())
            }
            "killall" | "pkill" => Err(format!(
                "refused: {name} matches processes by name and can stop other agents' work. Kill the pid of the process you started"
            )),
            "shutdown" | "reboot" | "halt" | "poweroff" | "init" => {
                Err(format!("refused: {name} would stop the machine every agent runs on"))
            }
            mkfs if mkfs.starts_with("mkfs") => Err(format!(
                "refused: {mkfs} formats a disk and destroys everything on it; agents never need it"
            )),
            _ => Ok(()),
        }
    }

    /// Leaves a subshell: what was learnt about directories inside it is forgotten.
    fn leave(&mut self) {
        if self.cwd.len() > 1 {
            self.cwd.pop();
        }
        let level = self.cwd.len();
        self.maybe.retain(|(at, _)| *at <= level);
        self.pending.retain(|(at, _)| *at <= level);
    }

    fn change_dir(&mut self, args: &[Arg]) {
        let entry = (self.cwd.len(), self.cwd().to_path_buf());
        self.pending.push(entry);
        let target = args.iter().find(|a| !a.raw().starts_with('-'));
        let next = match target.and_then(Arg::literal) {
            Some(dir) => normalize(self.cwd(), dir),
            // `cd` alone or to a computed place: somewhere mala cannot see.
            None => PathBuf::from("/nonexistent/unknown-directory"),
        };
        if let Some(last) = self.cwd.last_mut() {
            *last = next;
        }
    }

    fn nested(&mut self, args: &[Arg], depth: usize, via: &str) -> Result<(), Refusal> {
        if depth > 8 {
            return Err(format!("refused: {via} nests commands too deeply to check"));
        }
        let mut text = String::new();
        for arg in args {
            let Some(part) = arg.literal() else {
                return Err(format!(
                    "refused: the command given to {via} is only known when it runs (`{}`), so mala cannot check it",
                    arg.raw()
                ));
            };
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(part);
        }
        let script = parse(&text)?;
        let current = self.cwd().to_path_buf();
        self.cwd.push(current);
        let result = self.script(&script, depth + 1);
        self.cwd.pop();
        result
    }

    fn remove(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        let recursive = args.iter().any(|a| {
            let raw = a.raw();
            raw == "--recursive"
                || (raw.starts_with('-') && !raw.starts_with("--") && raw.contains(['r', 'R']))
        });
        for arg in operands(args, &[]) {
            let raw = arg.raw();
            let home = raw == "~"
                || raw.starts_with("~/")
                || raw.contains("$HOME")
                || raw.contains("${HOME}");
            if raw == "/" || raw == "/*" || home {
                return Err(format!(
                    "refused: `{name} {raw}` would delete {} for every agent and user on this machine",
                    if home {
                        "your home directory"
                    } else {
                        "the whole filesystem"
                    }
                ));
            }
            if recursive && raw == "*" {
                return Err(
                    "refused: a recursive delete of `*` removes everything here, including other agents' files. Delete the files you hold, by name"
                        .to_owned(),
                );
            }
            self.write_target(arg, name)?;
        }
        Ok(())
    }

    fn each_operand(&self, args: &[Arg], with_values: &[&str], name: &str) -> Result<(), Refusal> {
        let mut target_dir = None;
        let mut i = 0;
        while i < args.len() {
            let raw = args[i].raw();
            if matches!(raw, "-t" | "--target-directory") {
                target_dir = args.get(i + 1);
            }
            i += 1;
        }
        if let Some(dir) = target_dir {
            self.write_target(dir, name)?;
        }
        for arg in operands(args, with_values) {
            self.write_target(arg, name)?;
        }
        Ok(())
    }

    /// An interpreter: `perl -i`/`ruby -i` edit their file operands, and an
    /// inline program is read for the primitives that change files.
    fn interpreter(&mut self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        if programs::reads_program_from_stdin(name, args) {
            return self.stdin_program(name, 0);
        }
        let call = programs::inline(name, args);
        if call.in_place {
            self.edit_files(&call.files, &format!("{name} -i"))?;
        }
        let Some(lang) = programs::language(name) else {
            return Ok(());
        };
        for code in &call.code {
            let Some(text) = code.literal() else {
                return Err(format!(
                    "refused: the {name} program `{}` is only known when it runs, so mala cannot check what it writes. \
                     Give the program literally, or make the change with a structured edit",
                    code.raw()
                ));
            };
            if let Some(primitive) = programs::writes(lang, text) {
                return Err(format!(
                    "refused: this inline {name} program can change files or run commands (it uses `{primitive}`), \
                     and mala cannot read programs to check them against your locks. Make the change with a structured edit \
                     (Edit/Write) of files you hold, or with shell commands mala can check, or write the program to a script file you can show"
                ));
            }
        }
        Ok(())
    }

    /// Codex's `apply_patch 'PATCH'` or `apply_patch <<'EOF'`: every path
    /// the patch names is written.
    fn apply_patch(&self, args: &[Arg]) -> Result<(), Refusal> {
        let text = match (args.first(), &self.stdin) {
            (Some(arg), _) => arg.clone(),
            (None, Stdin::Text(text)) => text.clone(),
            (None, _) => Arg::Dynamic("<stdin>".to_owned()),
        };
        let Arg::Literal(text) = text else {
            return Err(
                "refused: the patch given to apply_patch is only known when it runs, so mala cannot check which files it changes. \
                 Give the patch literally (a quoted here-document)"
                    .to_owned(),
            );
        };
        let paths = super::patch::paths(&text);
        if paths.is_empty() {
            return Err(
                "refused: mala found no `*** Add File:`, `*** Update File:` or `*** Delete File:` line in this patch, so it cannot check which files it changes"
                    .to_owned(),
            );
        }
        paths
            .iter()
            .try_for_each(|path| self.literal_write(path, "apply_patch"))
    }

    fn dd(&self, args: &[Arg]) -> Result<(), Refusal> {
        for arg in args {
            if let Some(path) = arg.raw().strip_prefix("of=") {
                match arg.literal() {
                    Some(_) => self.literal_write(path, "dd")?,
                    None => return self.write_target(arg, "dd"),
                }
            }
        }
        Ok(())
    }

    fn find(&mut self, args: &[Arg], depth: usize) -> Result<(), Refusal> {
        let mut i = 0;
        while i < args.len() {
            let raw = args[i].raw();
            if raw == "-delete" {
                return Err(
                    "refused: `find -delete` removes files mala cannot name in advance. Find them first, then `rm` the ones you hold"
                        .to_owned(),
                );
            }
            if matches!(raw, "-exec" | "-execdir" | "-ok" | "-okdir") {
                let end = args[i + 1..]
                    .iter()
                    .position(|a| matches!(a.raw(), ";" | "+"))
                    .map_or(args.len(), |p| i + 1 + p);
                let command: Vec<Arg> = args[i + 1..end]
                    .iter()
                    .map(|a| {
                        if a.raw() == "{}" {
                            Arg::Dynamic("{}".to_owned())
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                self.words(&command, depth + 1)?;
                i = end;
            }
            if matches!(raw, "-fprint" | "-fprint0" | "-fprintf" | "-fls")
                && let Some(target) = args.get(i + 1)
            {
                self.write_target(target, "find")?;
            }
            i += 1;
        }
        Ok(())
    }

    fn download(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        for (i, arg) in args.iter().enumerate() {
            let raw = arg.raw();
            if matches!(raw, "-o" | "--output" | "-O" | "--output-document")
                && !(name == "curl" && raw == "-O")
                && let Some(target) = args.get(i + 1)
            {
                self.write_target(target, name)?;
            }
        }
        Ok(())
    }

    fn git(&self, words: &[Arg]) -> Result<(), Refusal> {
        git::check_globals(words)?;
        let literal: Vec<&str> = words.iter().map(Arg::raw).collect();
        let Some((sub, rest)) = git_subcommand(&literal) else {
            return Ok(());
        };
        if git::only_prints(sub, rest) {
            return Ok(());
        }
        // `git -C dir …` resolves its paths from dir.
        let base = literal
            .windows(2)
            .take_while(|w| w[0] != sub)
            .find(|w| w[0] == "-C")
            .map_or_else(|| self.cwd().to_path_buf(), |w| normalize(self.cwd(), w[1]));
        let short = |flag: char| {
            rest.iter()
                .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains(flag))
        };
        let long = |flag: &str| {
            rest.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        git::keeps_recovery_data(&literal[1..literal.len() - rest.len() - 1])?;
        if let Some(decided) = git::in_own_worktree(self.ctx, sub, rest, &base) {
            return decided;
        }
        match sub {
            "reset" => Err(
                "refused: git reset rewrites the index or working tree that every agent shares. \
                 To undo a change of yours, edit the file back; to leave a file out of your commit, \
                 name only your paths: git commit -m '…' -- <paths>"
                    .to_owned(),
            ),
            "checkout" | "switch" => Err(
                "refused: git checkout/switch changes the files of the shared checkout under other agents' feet. \
                 Stay on the current branch; to restore a file you hold, edit it back \
                 (or `git show HEAD:<path> > <path>` with the path locked)"
                    .to_owned(),
            ),
            "restore" => Err(
                "refused: git restore overwrites files or the index that other agents share. \
                 To undo your own change, edit the file back (with its lock held)"
                    .to_owned(),
            ),
            "clean" if short('f') || long("--force") => Err(
                "refused: git clean deletes untracked files, including other agents' new files. \
                 Remove files you created with `rm <path>` (locked), or preview with `git clean -n`"
                    .to_owned(),
            ),
            "stash" if !matches!(rest.first().copied(), Some("list" | "show")) => Err(
                "refused: git stash takes every agent's uncommitted changes away. Commit your own paths instead"
                    .to_owned(),
            ),
            "rebase" | "filter-branch" | "filter-repo" => Err(format!(
                "refused: git {sub} rewrites history other agents build on. Make a new commit instead"
            )),
            "merge" | "cherry-pick" | "revert" if long("--abort") => Err(format!(
                "refused: git {sub} --abort resets files other agents may be editing. Resolve the conflict in the files you hold, or stop and report it"
            )),
            "branch" if short('D') || (short('d') && (short('f') || long("--force"))) || long("--delete") && long("--force") => Err(
                "refused: force-deleting a branch loses its commits. Leave branches alone; mala does not need them removed".to_owned(),
            ),
            "worktree" if rest.first() == Some(&"remove") => Err(
                "refused: git worktree remove deletes a working tree that may hold uncommitted work".to_owned(),
            ),
            "submodule" if rest.first() == Some(&"deinit") && (short('f') || long("--force")) => Err(
                "refused: git submodule deinit --force discards submodule changes".to_owned(),
            ),
            "push" => git_push(rest, &short, &long),
            "gc" | "prune" | "reflog" | "update-ref" | "symbolic-ref" | "tag" => {
                git_refs(sub, rest, &short, &long)
            }
            "branch" if short('f') || long("--force") || short('m') || short('M') || long("--move") || short('C') => Err(
                "refused: moving, renaming or overwriting a branch changes refs other agents build on; mala agents move refs only by committing".to_owned(),
            ),
            "apply" | "am" if !(long("--check") || long("--stat") || long("--numstat")) => Err(format!(
                "refused: git {sub} changes files named inside the patch, which mala cannot check against your locks. Edit the files you hold instead"
            )),
            // Staging and committing need the paths' locks, but they change no
            // file's content: they are not edits, so they are not collected.
            "add" | "commit" if self.collected.is_some() => Ok(()),
            "add" => self.git_add(rest, &base),
            "commit" => self.git_commit(rest, &base),
            "rm" | "mv" => {
                for path in git_paths(rest, &[]) {
                    self.git_path(path, &base, &format!("git {sub}"))?;
                }
                Ok(())
            }
            _ => self.git_more(sub, rest, &base),
        }
    }

    fn git_path(&self, path: &str, base: &Path, what: &str) -> Result<(), Refusal> {
        let absolute = normalize(base, path);
        self.literal_write(&absolute.to_string_lossy(), what)
    }

    fn git_add(&self, rest: &[&str], base: &Path) -> Result<(), Refusal> {
        const HINT: &str = "Commit with mala's commit tool (mcp__mala__commit, paths and message), or stage only the files you hold, by name: `git add <path> && git commit -m 'bd-<id>: …' -- <path>`";
        // In its own worktree every change is the agent's.
        let alone = self.ctx.own_branch.is_some();
        for arg in rest {
            if !alone
                && matches!(
                    *arg,
                    "-A" | "--all" | "-u" | "--update" | "--no-ignore-removal"
                )
            {
                return Err(format!(
                    "refused: `git add {arg}` stages other agents' changes too. {HINT}"
                ));
            }
            if matches!(
                *arg,
                "-p" | "--patch" | "-i" | "--interactive" | "-e" | "--edit"
            ) {
                return Err(format!(
                    "refused: `git add {arg}` waits for keyboard input that never comes. {HINT}"
                ));
            }
        }
        let paths = git_paths(rest, &["--chmod", "--pathspec-from-file"]);
        if rest.iter().any(|a| a.starts_with("--pathspec-from-file")) {
            return Err(format!(
                "refused: mala cannot check paths read from a file. {HINT}"
            ));
        }
        if paths.is_empty() {
            return Ok(());
        }
        for path in paths {
            if alone {
                self.git_path(path, base, "git add")
                    .or_else(|e| matches!(path, "." | ":/" | "*").then_some(()).ok_or(e))?;
                continue;
            }
            if matches!(path, "." | ".." | ":/" | "*")
                || path.ends_with('/')
                || has_glob(path)
                || path.starts_with(':')
            {
                return Err(format!(
                    "refused: `git add {path}` stages a whole directory or pattern, including other agents' files. {HINT}"
                ));
            }
            self.git_path(path, base, "git add")?;
        }
        self.added.set(true);
        Ok(())
    }

    fn git_commit(&self, rest: &[&str], base: &Path) -> Result<(), Refusal> {
        const HINT: &str = "Commit with mala's commit tool (mcp__mala__commit, paths and message), or name only the files you hold: `git commit -m 'bd-<id>: …' -- <paths>`";
        for arg in rest {
            let bundled_all = arg.starts_with('-')
                && !arg.starts_with("--")
                && arg[1..].chars().take_while(|c| *c != 'm').any(|c| c == 'a');
            if (*arg == "--all" || *arg == "-a" || bundled_all) && self.ctx.own_branch.is_none() {
                return Err(format!(
                    "refused: `git commit -a` commits other agents' changes too. {HINT}"
                ));
            }
            if *arg == "--amend" {
                return Err("refused: git commit --amend rewrites a commit other agents may build on. Make a new commit".to_owned());
            }
            if matches!(*arg, "--interactive" | "-p" | "--patch") {
                return Err(format!(
                    "refused: an interactive commit waits for keyboard input. {HINT}"
                ));
            }
        }
        let with_values = [
            "-m",
            "--message",
            "-F",
            "--file",
            "-C",
            "-c",
            "--author",
            "--date",
            "-t",
            "--template",
            "--fixup",
            "--squash",
            "--cleanup",
            "-S",
        ];
        let paths = git_paths(rest, &with_values);
        for path in &paths {
            if matches!(*path, "." | ":/" | "*") || path.ends_with('/') || has_glob(path) {
                return Err(format!(
                    "refused: `git commit {path}` commits a whole directory or pattern. {HINT}"
                ));
            }
            self.git_path(path, base, "git commit")?;
        }
        if paths.is_empty() && !self.added.get() && self.ctx.own_branch.is_none() {
            return Err(format!(
                "refused: a bare `git commit` commits whatever is staged, which may include other agents' files. {HINT}"
            ));
        }
        self.commit_subject(rest)?;
        if let Some(staged) = self.ctx.staged {
            let foreign: Vec<String> = staged
                .iter()
                .filter(|p| !self.ctx.holds(p))
                .map(|p| {
                    p.strip_prefix(self.ctx.repo_root)
                        .unwrap_or(p)
                        .display()
                        .to_string()
                })
                .collect();
            if paths.is_empty() && !foreign.is_empty() {
                return Err(format!(
                    "refused: files you do not hold are staged ({}); a plain commit would take them. {HINT}",
                    foreign.join(", ")
                ));
            }
        }
        Ok(())
    }
}

impl Walker<'_> {
    /// An agent's commit names its issue: the gate and the checks' re-run
    /// look at the issue's commits, so a commit under another subject
    /// (`chore: …`) would slip past both.
    fn commit_subject(&self, rest: &[&str]) -> Result<(), Refusal> {
        let Some(prefix) = self.ctx.commit_prefix else {
            return Ok(());
        };
        if rest
            .iter()
            .any(|a| matches!(*a, "--dry-run" | "-h" | "--help"))
        {
            return Ok(());
        }
        let message = rest.iter().enumerate().find_map(|(i, arg)| match *arg {
            "-m" | "--message" => rest.get(i + 1).copied(),
            _ => arg
                .strip_prefix("--message=")
                .or_else(|| arg.strip_prefix("-m").filter(|m| !m.is_empty())),
        });
        match message {
            Some(message) if message.trim_start().starts_with(prefix) => Ok(()),
            Some(_) => Err(format!(
                "refused: your commit message must start with `{prefix}` (your issue's prefix), so the gate sees the commit as yours"
            )),
            None => Err(format!(
                "refused: give the commit message with -m, starting with `{prefix}`, so mala can see it names your issue"
            )),
        }
    }
}

/// Git commands that delete recovery data or move refs other than by
/// committing; their read-only forms pass.
fn git_refs(
    sub: &str,
    rest: &[&str],
    short: &dyn Fn(char) -> bool,
    long: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    match sub {
            // Unreachable objects and reflogs are how a lost commit is found
            // again; pruning them now takes that away from every agent.
            "gc" if rest.iter().any(|a| matches!(*a, "--prune=now" | "--prune=all"))
                || rest.windows(2).any(|w| w[0] == "--prune" && matches!(w[1], "now" | "all")) => Err(
                "refused: `git gc --prune=now` deletes unreachable objects at once, the data that recovers lost commits. Run `git gc` without --prune=now, or leave it to git".to_owned(),
            ),
            "prune" => Err(
                "refused: git prune deletes unreachable objects, the data that recovers lost commits. Leave it to git's own gc".to_owned(),
            ),
            "reflog" if matches!(rest.first().copied(), Some("expire" | "delete")) => Err(
                "refused: expiring or deleting reflog entries loses the record that recovers commits. `git reflog` (show) is fine".to_owned(),
            ),
            "update-ref" => Err(
                "refused: git update-ref moves or deletes a ref directly; mala agents move refs only by committing. Make a commit instead".to_owned(),
            ),
            "symbolic-ref" if short('d') || long("--delete") || git_paths(rest, &["-m"]).len() > 1 => Err(
                "refused: changing a symbolic ref (HEAD) switches the shared checkout's branch under other agents. Reading it (`git symbolic-ref HEAD`) is fine".to_owned(),
            ),
            // A tag has no reflog: deleting or moving one cannot be undone
            // from the repository itself. Creating and listing tags is fine.
            "tag" if short('d') || long("--delete") || short('f') || long("--force") => Err(
                "refused: deleting or moving a tag cannot be undone (tags keep no reflog), and other agents may rely on it. Leave existing tags alone".to_owned(),
            ),
        _ => Ok(()),
    }
}

/// `git push`: ordinary pushes pass; anything that rewrites or deletes what
/// the remote has is refused, `--force-with-lease` too (mala agents never
/// need to rewrite the remote).
fn git_push(
    rest: &[&str],
    short: &dyn Fn(char) -> bool,
    long: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let forced = short('f')
        || ["--force", "--force-with-lease", "--force-if-includes"]
            .iter()
            .any(|flag| long(flag))
        || rest.iter().any(|a| a.starts_with('+'));
    if forced {
        return Err(
            "refused: a force push (also --force-with-lease) overwrites history on the remote. Do not push with force: mala does not need it"
                .to_owned(),
        );
    }
    if long("--mirror") || long("--prune") {
        return Err(
            "refused: `git push --mirror`/`--prune` deletes remote branches that have no local counterpart. Push only your branch: `git push origin HEAD`"
                .to_owned(),
        );
    }
    let deletes =
        short('d') || long("--delete") || rest.iter().any(|a| a.starts_with(':') && a.len() > 1);
    if deletes {
        return Err(
            "refused: deleting a remote branch loses work other people may need. Leave remote branches alone; mala does not need them removed"
                .to_owned(),
        );
    }
    Ok(())
}

/// The non-option arguments of a git subcommand (everything after `--` counts).
fn git_paths<'a>(rest: &[&'a str], with_values: &[&str]) -> Vec<&'a str> {
    let mut paths = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i];
        if arg == "--" {
            paths.extend_from_slice(&rest[i + 1..]);
            break;
        }
        if with_values.contains(&arg) {
            i += 2;
            continue;
        }
        if !arg.starts_with('-') {
            paths.push(arg);
        }
        i += 1;
    }
    paths
}

/// Operands of a command: words that are not options (and not option values).
fn operands<'a>(args: &'a [Arg], with_values: &[&str]) -> Vec<&'a Arg> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut only_operands = false;
    while i < args.len() {
        let raw = args[i].raw();
        if !only_operands && raw == "--" {
            only_operands = true;
        } else if !only_operands && with_values.contains(&raw) {
            i += 1;
        } else if only_operands || !raw.starts_with('-') || raw == "-" {
            out.push(&args[i]);
        }
        i += 1;
    }
    out
}

fn refuse_unless(args: &[Arg], safe: &[&str], why: &str) -> Result<(), Refusal> {
    if args.iter().any(|a| safe.contains(&a.raw())) {
        return Ok(());
    }
    Err(format!(
        "refused: {why}, which mala cannot check against your locks. Edit the files you hold instead"
    ))
}

/// `curl … | sh` and friends.
fn check_download_to_shell(pipe: &Pipe) -> Result<(), Refusal> {
    let name = |stage: &Invocation| {
        let words: Vec<&str> = stage.words.iter().map(Arg::raw).collect();
        let mut rest: &[&str] = &words;
        while let Some(first) = rest.first() {
            let base = basename(first);
            if base == "sudo" || base == "env" || WRAPPERS.contains(&base) {
                rest = &rest[1..];
                while rest
                    .first()
                    .is_some_and(|w| w.starts_with('-') || w.contains('='))
                {
                    rest = &rest[1..];
                }
            } else {
                return (base.to_owned(), rest.len() > 1 && !rest[1].starts_with('-'));
            }
        }
        (String::new(), false)
    };
    let mut downloaded = false;
    for stage in &pipe.stages {
        let (program, has_script_file) = name(stage);
        if matches!(program.as_str(), "curl" | "wget") {
            downloaded = true;
        } else if downloaded && STDIN_RUNNERS.contains(&program.as_str()) && !has_script_file {
            return Err(format!(
                "refused: piping a download into {program} runs code nobody has read. Download it to a file, read it, then run it"
            ));
        }
    }
    Ok(())
}
