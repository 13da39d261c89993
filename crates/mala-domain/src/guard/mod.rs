//! The tool guard: one pure function decides every tool call an agent makes,
//! for every backend.
//!
//! It refuses destructive git operations and dangerous shell patterns (each
//! refusal names a safe alternative), tools the configuration disallows, and
//! writes to repository files the agent does not hold the lock of: structured
//! edits (`Write`, `Edit`, `MultiEdit`, `NotebookEdit`) and shell commands that
//! write (redirections, `tee`, `sed -i`, `mv`/`cp`/`rm`/`touch`, git's own
//! path commands), however they are nested (`bash -c`, `env`, subshells, `&&`,
//! `;`, `|`, command substitutions). A command it cannot read with
//! confidence is refused with the reason.
//!
//! Scope: the guard reads commands, not programs. Inline programs
//! (`python -c`, `perl -e`, `node -e`…) are read conservatively for their
//! language's write and command primitives (`programs.rs`); a script file can
//! still write anything, and the working-tree observer, the quality gate and
//! the commit rules catch what such programs leave behind. A tool the guard
//! does not know is judged as a shell when it carries a command, and refused
//! when it names a path.

mod options;
mod patch;
mod programs;
mod rules;
mod shell;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// What the guard knows about the calling agent.
#[derive(Debug, Clone, Copy)]
pub struct GuardContext<'a> {
    /// The repository root (absolute).
    pub repo_root: &'a Path,
    /// Where the agent's commands run (absolute; normally the repository root).
    pub cwd: &'a Path,
    /// Absolute paths this agent holds the locks of.
    pub held: &'a [PathBuf],
    /// Tool names that are refused outright.
    pub disallowed_tools: &'a [String],
    /// Absolute paths currently staged in git, when the caller knows them;
    /// a plain `git commit` is refused while someone else's file is staged.
    pub staged: Option<&'a [PathBuf]>,
    /// Whether edits need locks (off when a run has no other agents to protect).
    pub require_locks: bool,
    /// The prefix this agent's commits must carry (`bd-<id>:`) when it works
    /// on an issue: a commit under another subject would hide from the gate.
    pub commit_prefix: Option<&'a str>,
    /// Worktree isolation: the agent's own branch (`mala/<issue>`), checked
    /// out in `repo_root`, its worktree. It may rebase and merge that
    /// branch; it may move no other ref.
    pub own_branch: Option<&'a str>,
    /// Other working trees (the user's checkout, other agents' worktrees):
    /// writes there are refused, wherever they are (even under /tmp).
    pub elsewhere: &'a [PathBuf],
}

impl GuardContext<'_> {
    fn holds(&self, path: &Path) -> bool {
        !self.require_locks || self.held.iter().any(|held| held == path)
    }
}

/// One tool call, in the terms the guard needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCall {
    /// A shell command (Claude's `Bash`, Codex's `shell`).
    Shell { tool: String, command: String },
    /// A structured edit of one file.
    Edit { tool: String, path: String },
    /// Anything else the guard lets through (reads, searches, mala's tools).
    Other { tool: String },
    /// A tool the guard does not know that names a path (`key`): it may write.
    Unknown { tool: String, key: String },
    /// A patch (Codex's `apply_patch`): it adds, updates, deletes or moves these paths.
    Patch { tool: String, paths: Vec<String> },
    /// A tool whose input the guard cannot read (a shell without a command).
    Unreadable { tool: String, why: String },
    /// A call asked to run in the background: it returns before it ends,
    /// so neither its status nor its effects would be seen.
    Background { tool: String },
}

/// Claude Code's tools that only read, plan or report.
const READ_ONLY_TOOLS: &[&str] = &[
    "Read",
    "Glob",
    "Grep",
    "LS",
    "WebFetch",
    "WebSearch",
    "TodoWrite",
    "Task",
    "TaskOutput",
    "ExitPlanMode",
    "BashOutput",
    "KillShell",
    "KillBash",
    "NotebookRead",
    "ListMcpResourcesTool",
    "ReadMcpResourceTool",
];
/// Shell tools of other backends, judged as shell commands by name.
const SHELL_TOOLS: &[&str] = &[
    "Bash",
    "bash",
    "shell",
    "local_shell",
    "exec_command",
    "container.exec",
    "run_shell_command",
    "shell_command",
];
/// Input fields that name a file a tool may write.
const PATH_KEYS: &[&str] = &[
    "file_path",
    "path",
    "notebook_path",
    "filename",
    "target_file",
    "file",
    "paths",
    "target",
    "destination",
    "source",
    "old_path",
    "new_path",
    "directory",
    "dir",
    "file_paths",
    "filePath",
    "filepath",
    "uri",
    "to",
    "output",
    "output_path",
    "dest",
];
/// Input fields that hold a shell's command line.
const COMMAND_KEYS: &[&str] = &["command", "cmd", "command_line", "commandLine"];
/// Input fields that set the directory a shell command runs in.
const DIR_KEYS: &[&str] = &["workdir", "cwd", "directory", "dir", "working_directory"];
/// Input fields that hold a patch.
const PATCH_KEYS: &[&str] = &["input", "patch"];

impl ToolCall {
    /// A Claude Code tool call (`tool_name`, `tool_input`).
    pub fn from_claude(tool: &str, input: &Value) -> Self {
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        let owned = tool.to_owned();
        if input.get("run_in_background").and_then(Value::as_bool) == Some(true) {
            return Self::Background { tool: owned };
        }
        match tool {
            "Write" | "Edit" | "MultiEdit" => {
                return Self::Edit {
                    tool: owned,
                    path: text("file_path").unwrap_or_default(),
                };
            }
            "NotebookEdit" => {
                return Self::Edit {
                    tool: owned,
                    path: text("notebook_path").unwrap_or_default(),
                };
            }
            _ if is_read_only_tool(tool) => {
                return Self::Other { tool: owned };
            }
            _ => {}
        }
        if let Some(text) = patch_text(tool, input) {
            return Self::Patch {
                tool: owned,
                paths: patch::paths(&text),
            };
        }
        // A shell under any name: its command is what runs.
        if let Some(command) = shell_command(input) {
            return Self::Shell {
                tool: owned,
                command,
            };
        }
        let has_command = COMMAND_KEYS.iter().any(|key| input.get(*key).is_some());
        if SHELL_TOOLS.contains(&tool) || has_command {
            return Self::Unreadable {
                tool: owned,
                why: "its input has no command line (a string `command` or `cmd`, or an argument array) that mala can read".to_owned(),
            };
        }
        match path_key(input, 0) {
            Some(key) => Self::Unknown { tool: owned, key },
            None => Self::Other { tool: owned },
        }
    }

    pub fn tool(&self) -> &str {
        match self {
            Self::Shell { tool, .. }
            | Self::Edit { tool, .. }
            | Self::Other { tool }
            | Self::Unknown { tool, .. }
            | Self::Patch { tool, .. }
            | Self::Unreadable { tool, .. }
            | Self::Background { tool } => tool,
        }
    }
}

/// The command line of a shell-like input: a string `command` or `cmd`, or
/// an argument vector (`["bash", "-lc", "…"]`), quoted back into a line. A
/// `workdir` becomes a `cd` first, so relative paths resolve from it.
/// The first key, at any depth of the input, that names a path.
fn path_key(value: &Value, depth: usize) -> Option<String> {
    if depth > 8 {
        return None;
    }
    match value {
        Value::Object(map) => map.iter().find_map(|(key, v)| {
            let names = PATH_KEYS.contains(&key.as_str())
                && (v.is_string() || v.as_array().is_some_and(|a| a.iter().any(Value::is_string)));
            if names {
                Some(key.clone())
            } else {
                path_key(v, depth + 1)
            }
        }),
        Value::Array(items) => items.iter().find_map(|v| path_key(v, depth + 1)),
        _ => None,
    }
}

/// The text of a patch tool's input: Codex's `apply_patch` (a string input,
/// or `input`/`patch`), or any input field holding a `*** Begin Patch`.
fn patch_text(tool: &str, input: &Value) -> Option<String> {
    if let Some(text) = input.as_str() {
        return (tool == "apply_patch" || text.trim_start().starts_with(patch::BEGIN))
            .then(|| text.to_owned());
    }
    PATCH_KEYS.iter().find_map(|key| {
        let text = input.get(*key)?.as_str()?;
        (tool == "apply_patch" || text.trim_start().starts_with(patch::BEGIN))
            .then(|| text.to_owned())
    })
}

fn shell_command(input: &Value) -> Option<String> {
    let field = COMMAND_KEYS.iter().find_map(|key| input.get(*key))?;
    let line = match field {
        Value::String(line) => line.clone(),
        Value::Array(words) => words
            .iter()
            .map(|w| w.as_str().map(shell::quote))
            .collect::<Option<Vec<_>>>()?
            .join(" "),
        _ => return None,
    };
    match DIR_KEYS
        .iter()
        .find_map(|key| input.get(*key).and_then(Value::as_str))
    {
        Some(dir) => Some(format!("cd {} && {line}", shell::quote(dir))),
        None => Some(line),
    }
}

/// The guard's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// The repository files a shell command changes the content of (literal
/// targets only), for dating an agent's last edit. `git add` and `git commit`
/// need the locks of their paths but change no content, so they are not here.
pub fn shell_writes(command: &str, repo_root: &Path) -> Vec<PathBuf> {
    let ctx = GuardContext {
        repo_root,
        cwd: repo_root,
        held: &[],
        disallowed_tools: &[],
        staged: None,
        require_locks: true,
        commit_prefix: None,
        own_branch: None,
        elsewhere: &[],
    };
    rules::repository_writes(command, &ctx)
}

/// Where a system shell can be: a launcher elsewhere (a `bash` the agent
/// copied `true` to, say) is not unwrapped, so what it ran is recorded as it is.
const SYSTEM_SHELLS: &[&str] = &[
    "/bin/bash",
    "/usr/bin/bash",
    "/bin/sh",
    "/usr/bin/sh",
    "/bin/dash",
    "/usr/bin/dash",
    "/bin/zsh",
    "/usr/bin/zsh",
];

/// The script of a command that is only a system shell launching it
/// (`/bin/bash -lc 'ls src'` is `ls src`): how an agent backend that wraps
/// every command in the user's shell reports it. `None` for anything else,
/// and for a zsh script with parentheses, which bash would read otherwise.
pub fn launched_script(command: &str) -> Option<String> {
    let script = shell::parse_script(command).ok()?;
    let [pipe] = script.pipes.as_slice() else {
        return None;
    };
    let [invocation] = pipe.stages.as_slice() else {
        return None;
    };
    if !invocation.writes.is_empty() || invocation.stdin.is_some() || !invocation.assigns.is_empty()
    {
        return None;
    }
    let words: Vec<&str> = invocation
        .words
        .iter()
        .map(shell::Arg::literal)
        .collect::<Option<_>>()?;
    let [program, flag, text] = words.as_slice() else {
        return None;
    };
    let bash_like = !program.ends_with("zsh") || !text.contains('(');
    (SYSTEM_SHELLS.contains(program) && bash_like && matches!(*flag, "-c" | "-lc"))
        .then(|| (*text).to_owned())
}

/// Programs whose every write the guard reads from their words. Anything
/// else (an interpreter, a build tool, a script, a wrapper) may write files
/// no word names.
const WORD_EFFECTS: &[&str] = &[
    "cat", "ls", "echo", "printf", "grep", "egrep", "fgrep", "rg", "head", "tail", "wc", "sort",
    "uniq", "cut", "tr", "diff", "cmp", "true", "false", "test", "[", "pwd", "cd", "which", "stat",
    "file", "sed", "cp", "mv", "rm", "rmdir", "mkdir", "touch", "ln", "chmod", "tee", "git",
    "sleep", "date", "basename", "dirname", "realpath", "readlink",
];

/// Whether everything a shell command runs is a program whose writes are
/// all named by its words (so `shell_writes` lists them). Used to tell,
/// among agents whose commands ran at the same moment, which could have
/// written a file none of their words names.
pub fn effects_are_known(command: &str) -> bool {
    let Ok(script) = shell::parse_script(command) else {
        return false;
    };
    script.functions.is_empty()
        && script.invocations().all(|invocation| {
            let Some(first) = invocation.words.first() else {
                return true;
            };
            let name = first.literal().map(|n| n.rsplit('/').next().unwrap_or(n));
            let words: Vec<&str> = invocation.words.iter().map(shell::Arg::raw).collect();
            match name {
                Some(shell::ENTER | shell::LEAVE) => true,
                Some("find") => !words
                    .iter()
                    .any(|w| w.starts_with("-exec") || w.starts_with("-ok")),
                // A script read from a file may write anything (`w FILE`).
                Some("sed") => !sed_reads_a_script_file(&words[1..]),
                Some(name) => WORD_EFFECTS.contains(&name),
                None => false,
            }
        })
}

/// Whether sed's options name a script file (`-f F`, `-nf F`, `--file=F`).
/// In a cluster, `-e`, `-i` and `-l` take the rest as their value.
fn sed_reads_a_script_file(args: &[&str]) -> bool {
    args.iter().take_while(|a| **a != "--").any(|arg| {
        if arg.starts_with("--") {
            return *arg == "--file" || arg.starts_with("--file=");
        }
        let Some(cluster) = arg.strip_prefix('-') else {
            return false;
        };
        for letter in cluster.chars() {
            match letter {
                'f' => return true,
                'e' | 'i' | 'l' => return false,
                _ => {}
            }
        }
        false
    })
}

/// Programs whose path operands are the check itself: the script an
/// interpreter runs, the tests a test runner runs.
const CHECK_RUNNERS: &[&str] = &[
    "bash", "sh", "zsh", "dash", "python", "python3", "node", "ruby", "perl", "php", "deno", "bun",
    "pytest", "py.test", "jest", "vitest", "mocha", "rspec", "tox", "nox", "phpunit", "bats",
];

/// The repository paths that are a command line's own logic: a script run
/// by path (`./scripts/check.sh`), the script an interpreter runs
/// (`bash check.sh`), the tests a test runner runs (`uv run pytest tests/`).
/// Files a command only reads as data (`grep -q x src/app.txt`) are not:
/// they are what the agent is asked to change.
pub fn command_paths(command: &str) -> Vec<String> {
    let Ok(script) = shell::parse_script(command) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for invocation in script.invocations() {
        let mut runner = false;
        for (i, word) in invocation.words.iter().enumerate() {
            let Some(word) = word.literal() else { continue };
            let name = word.rsplit('/').next().unwrap_or(word);
            let path = word.strip_prefix("./").unwrap_or(word);
            let is_path = path.contains(['/', '.'])
                && !path.starts_with(['-', '/'])
                && !path.contains('=')
                && !matches!(path, "" | "." | "..")
                && !path.starts_with("../")
                && !path.starts_with('\u{0}');
            if is_path && ((i == 0 && word.contains('/')) || (i > 0 && runner)) {
                out.push(path.to_owned());
            }
            runner |= CHECK_RUNNERS.contains(&name);
        }
    }
    out
}

/// Whether a tool only reads, plans or reports (Claude Code's own such
/// tools; a subagent's calls come through the hooks one by one), or is one of
/// mala's own tools (locks, and the commit tool, which commits locked paths).
pub fn is_read_only_tool(tool: &str) -> bool {
    READ_ONLY_TOOLS.contains(&tool) || tool.starts_with("mcp__mala__")
}

/// Decides one tool call.
pub fn check_tool(call: &ToolCall, ctx: &GuardContext<'_>) -> Decision {
    let result = decide(call, ctx);
    match result {
        Ok(()) => Decision::Allow,
        Err(reason) => Decision::Deny { reason },
    }
}

fn decide(call: &ToolCall, ctx: &GuardContext<'_>) -> Result<(), String> {
    if ctx.disallowed_tools.iter().any(|t| t == call.tool()) {
        return Err(format!(
            "refused: the {} tool is disabled for mala agents (disallowed_tools in mala.yaml)",
            call.tool()
        ));
    }
    match call {
        ToolCall::Shell { command, .. } => rules::check_command(command, ctx),
        ToolCall::Edit { tool, path } => {
            if path.is_empty() {
                return Err(format!("refused: {tool} without a file path"));
            }
            rules::check_edit(tool, path, ctx)
        }
        ToolCall::Other { .. } => Ok(()),
        ToolCall::Patch { tool, paths } => {
            if paths.is_empty() {
                return Err(format!(
                    "refused: mala found no `*** Add File:`, `*** Update File:` or `*** Delete File:` line in this {tool} patch, \
                     so it cannot check which files it changes. Name each file in the patch, and lock it first"
                ));
            }
            paths
                .iter()
                .try_for_each(|path| rules::check_edit(tool, path, ctx))
        }
        ToolCall::Background { .. } => Err(
            "refused: mala needs each command's own status and effects, so agents run commands \
             in the foreground. Run it again without run_in_background"
                .to_owned(),
        ),
        ToolCall::Unreadable { tool, why } => Err(format!(
            "refused: mala cannot judge this {tool} call: {why}. Run commands with Bash, with the command line as a string"
        )),
        ToolCall::Unknown { tool, key } => Err(format!(
            "refused: mala does not know the tool {tool}, which names a file (`{key}`), so it cannot tell whether the tool writes it. \
             Edit files you hold with Edit/Write, and run commands with Bash"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(
        held: &'a [PathBuf],
        staged: Option<&'a [PathBuf]>,
        disallowed: &'a [String],
    ) -> GuardContext<'a> {
        GuardContext {
            repo_root: Path::new("/repo"),
            cwd: Path::new("/repo"),
            held,
            disallowed_tools: disallowed,
            staged,
            require_locks: true,
            commit_prefix: None,
            own_branch: None,
            elsewhere: &[],
        }
    }

    fn reason(decision: Decision) -> String {
        match decision {
            Decision::Deny { reason } => reason,
            Decision::Allow => panic!("expected a refusal"),
        }
    }

    #[test]
    fn structured_edits_need_the_lock_inside_the_repository() {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        let ctx = ctx(&held, None, &[]);
        let edit =
            |tool: &str, key: &str, path: &str| ToolCall::from_claude(tool, &json!({ key: path }));
        assert!(check_tool(&edit("Write", "file_path", "/repo/src/lib.rs"), &ctx).is_allowed());
        assert!(check_tool(&edit("Edit", "file_path", "src/lib.rs"), &ctx).is_allowed());
        assert!(check_tool(&edit("Write", "file_path", "/tmp/notes.md"), &ctx).is_allowed());
        let denied = reason(check_tool(
            &edit("MultiEdit", "file_path", "/repo/src/other.rs"),
            &ctx,
        ));
        assert!(
            denied.contains("src/other.rs") && denied.contains("lock_acquire"),
            "{denied}"
        );
        let denied = reason(check_tool(
            &edit("NotebookEdit", "notebook_path", "/repo/nb.ipynb"),
            &ctx,
        ));
        assert!(denied.contains("nb.ipynb"), "{denied}");
        let denied = reason(check_tool(
            &edit("Write", "file_path", "/repo/src/../.git/HEAD"),
            &ctx,
        ));
        assert!(denied.contains(".git"), "{denied}");
        assert!(
            check_tool(
                &ToolCall::from_claude("Read", &json!({"file_path": "/repo/x"})),
                &ctx
            )
            .is_allowed()
        );
    }

    #[test]
    fn a_call_in_the_background_is_refused_whatever_it_runs() {
        let ctx = GuardContext {
            require_locks: false,
            commit_prefix: None,
            own_branch: None,
            elsewhere: &[],
            ..ctx(&[], None, &[])
        };
        let background = ToolCall::from_claude(
            "Bash",
            &json!({"command": "echo harmless", "run_in_background": true}),
        );
        assert_eq!(
            background,
            ToolCall::Background {
                tool: "Bash".into()
            }
        );
        assert!(reason(check_tool(&background, &ctx)).contains("without run_in_background"));
        let foreground = ToolCall::from_claude(
            "Bash",
            &json!({"command": "echo harmless", "run_in_background": false}),
        );
        assert!(check_tool(&foreground, &ctx).is_allowed());
    }

    #[test]
    fn in_its_own_worktree_an_agent_may_rebase_its_branch_and_move_nothing_else() {
        let elsewhere = [
            PathBuf::from("/tmp/user-repo"),
            PathBuf::from("/tmp/state/worktrees"),
        ];
        let own = GuardContext {
            repo_root: Path::new("/tmp/state/worktrees/bd-7"),
            cwd: Path::new("/tmp/state/worktrees/bd-7"),
            require_locks: false,
            own_branch: Some("mala/bd-7"),
            elsewhere: &elsewhere,
            ..ctx(&[], None, &[])
        };
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        for allowed in [
            "git rebase main",
            "git rebase --continue",
            "git rebase --abort",
            "git merge --no-edit main",
            "git merge --abort",
            "echo fix > src/lib.rs && git add src/lib.rs && git commit -m 'bd-7: fix'",
            "echo scratch > /tmp/notes",
            // Everything in its own tree is its own.
            "git add -A && git commit -qam 'bd-7: all of it'",
            "git add . && git commit -m 'bd-7: all of it'",
            "GIT_EDITOR=true git rebase --continue",
            "git branch",
            "git branch --list 'mala/*'",
            "git branch -a --contains HEAD",
            "git worktree list",
            "ln -s src/lib.rs lib-link.rs",
            "ln -s ../lib.rs src/bin/lib-link.rs",
        ] {
            assert!(check_tool(&shell(allowed), &own).is_allowed(), "{allowed}");
        }
        for (denied, why) in [
            ("git rebase main other", "other than yours"),
            ("git rebase -i main", "not a form"),
            ("git rebase --exec 'rm -rf .' main", "not a form"),
            ("git push origin HEAD", "mala lands your branch"),
            ("git push . HEAD:main", "mala lands your branch"),
            ("git fetch . HEAD:main", "mala lands your branch"),
            ("git pull", "mala lands your branch"),
            ("git checkout main", "stays on your branch"),
            ("git reset --hard HEAD~1", "moves your branch"),
            ("git branch -f main HEAD", "branch"),
            ("git update-ref refs/heads/main HEAD", "update-ref"),
            ("echo x > /repo/src/lib.rs", "outside the repository"),
            // The user's checkout and the other trees, even under /tmp.
            ("echo x > /tmp/user-repo/src/lib.rs", "another working tree"),
            ("echo x > ../bd-8/src/lib.rs", "another working tree"),
            (
                "cp src/lib.rs /tmp/user-repo/src/lib.rs",
                "another working tree",
            ),
            (
                "git -C /tmp/user-repo commit -am 'bd-7: x'",
                "outside your worktree",
            ),
            (
                "cd /tmp/user-repo && git commit -am 'bd-7: x'",
                "outside your worktree",
            ),
            (
                "GIT_DIR=/tmp/user-repo/.git git commit -am 'bd-7: x'",
                "GIT_DIR",
            ),
            (
                "CDPATH=/tmp/user-repo; cd src && git commit -qam 'bd-7: x'",
                "CDPATH",
            ),
            ("export CDPATH=/tmp; cd user-repo && echo x > a", "CDPATH"),
            (
                "GIT_CONFIG_KEY_0=core.hooksPath GIT_CONFIG_VALUE_0=/tmp/h GIT_CONFIG_COUNT=1 git commit -m 'bd-7: x'",
                "run a program",
            ),
            (
                "GIT_EDITOR='rm -rf ~' git rebase --continue",
                "run a program",
            ),
            (
                "git worktree add -f -B main /tmp/x HEAD",
                "every worktree shares",
            ),
            ("git worktree move ../bd-8 /tmp/y", "every worktree shares"),
            ("git branch mala/merged HEAD", "every worktree shares"),
            ("git branch -d main", "every worktree shares"),
            ("git stash", "every worktree shares"),
            ("git tag -f v1", "every worktree shares"),
            ("git replace HEAD~1 HEAD", "every worktree shares"),
            (
                "git update-index --skip-worktree src/lib.rs",
                "hide changes",
            ),
            ("git clone . /tmp/user-repo/copy", "makes a repository"),
            (
                "ln -s /tmp/user-repo /tmp/alias",
                "points into another working tree",
            ),
            ("ln -s ../bd-8 peer", "points into another working tree"),
            (
                "mkdir -p a/b && ln -s ../../../bd-8 a/b/peer",
                "points into another working tree",
            ),
            (
                "ln -s ../../../../../user-repo -t a/b",
                "points into another working tree",
            ),
            ("ln -s \"$HOME\" home", "cannot tell"),
            (
                "git --git-dir=/tmp/user-repo/.git commit -m 'bd-7: x'",
                "another repository",
            ),
        ] {
            let decision = check_tool(&shell(denied), &own);
            assert!(!decision.is_allowed(), "{denied} must be refused");
            let reason = reason(decision);
            assert!(reason.contains(why), "{denied}: {reason}");
        }
        // In the shared checkout a rebase is refused as before.
        let shared = GuardContext {
            require_locks: false,
            ..ctx(&[], None, &[])
        };
        assert!(
            reason(check_tool(&shell("git rebase main"), &shared)).contains("rewrites history")
        );
    }

    #[test]
    fn without_lock_enforcement_only_danger_is_refused() {
        let ctx = GuardContext {
            require_locks: false,
            commit_prefix: None,
            own_branch: None,
            elsewhere: &[],
            ..ctx(&[], None, &[])
        };
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        assert!(check_tool(&shell("echo x > src/any.rs"), &ctx).is_allowed());
        assert!(!check_tool(&shell("git reset --hard"), &ctx).is_allowed());
    }

    #[test]
    fn shell_writes_lists_repository_targets() {
        let root = Path::new("/repo");
        assert_eq!(
            shell_writes("echo x >> src/a.rs && sed -i s/a/b/ src/b.rs", root),
            vec![
                PathBuf::from("/repo/src/a.rs"),
                PathBuf::from("/repo/src/b.rs")
            ]
        );
        assert!(shell_writes("cargo test > /tmp/log 2>&1", root).is_empty());
        assert!(shell_writes("cargo test", root).is_empty());
        assert!(shell_writes("echo x > $OUT", root).is_empty());
        // Staging and committing need locks, but they edit nothing.
        assert!(
            shell_writes(
                "git add src/a.rs && git commit -m 'bd-x-1: y' -- src/a.rs",
                root
            )
            .is_empty()
        );
        assert_eq!(
            shell_writes("git mv src/a.rs src/b.rs && git add src/b.rs", root),
            vec![
                PathBuf::from("/repo/src/a.rs"),
                PathBuf::from("/repo/src/b.rs")
            ]
        );
    }

    #[test]
    fn effects_are_known_only_when_no_program_could_write_unnamed_files() {
        for known in [
            "grep -q fixed src/a.txt",
            "git add a && git commit -m 'bd-x-1: y' -- a",
            "cd src && ls -la | sort",
            "echo x > a.txt; (cat a.txt)",
            "find . -name '*.rs'",
            "sed -n -e 's/a/b/p' src/a.txt",
            "sed -i.bakf 's/a/b/' src/a.txt",
        ] {
            assert!(effects_are_known(known), "{known}");
        }
        for opaque in [
            "python3 /tmp/w.py",
            "make",
            "./scripts/fix.sh",
            "cargo test",
            "grep x $(python3 -c 'print(1)')",
            "find . -exec rm {} +",
            "f() { echo; }; f",
            "$TOOL run",
            "echo 'unterminated",
            "sed -f edit.sed src/a.txt",
            "sed -nf edit.sed src/a.txt",
            "sed --file=edit.sed -i src/a.txt",
        ] {
            assert!(!effects_are_known(opaque), "{opaque}");
        }
    }

    #[test]
    fn an_agents_commit_must_name_its_issue() {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        let ctx = GuardContext {
            commit_prefix: Some("bd-m-1:"),
            own_branch: None,
            elsewhere: &[],
            ..ctx(&held, None, &[])
        };
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        for allowed in [
            "git commit -m 'bd-m-1: fix' -- src/lib.rs",
            "git commit --message='bd-m-1: fix' -- src/lib.rs",
            "git commit -m'bd-m-1: fix' -- src/lib.rs",
            "git commit --dry-run -- src/lib.rs",
        ] {
            assert!(check_tool(&shell(allowed), &ctx).is_allowed(), "{allowed}");
        }
        for (refused, why) in [
            (
                "git commit -m 'chore: tidy' -- src/lib.rs",
                "must start with `bd-m-1:`",
            ),
            (
                "git commit -m 'bd-m-10: fix' -- src/lib.rs",
                "must start with `bd-m-1:`",
            ),
            (
                "git commit -F /tmp/msg -- src/lib.rs",
                "give the commit message with -m",
            ),
        ] {
            let denied = reason(check_tool(&shell(refused), &ctx));
            assert!(denied.contains(why), "{refused}: {denied}");
        }
    }

    #[test]
    fn disallowed_tools_are_refused_by_name() {
        let disallowed = vec!["TodoWrite".to_owned()];
        let ctx = ctx(&[], None, &disallowed);
        let denied = reason(check_tool(
            &ToolCall::from_claude("TodoWrite", &json!({})),
            &ctx,
        ));
        assert!(
            denied.contains("TodoWrite") && denied.contains("disallowed_tools"),
            "{denied}"
        );
    }

    #[test]
    fn a_plain_commit_is_refused_while_someone_elses_file_is_staged() {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        let staged = vec![
            PathBuf::from("/repo/src/lib.rs"),
            PathBuf::from("/repo/theirs.rs"),
        ];
        let ctx = ctx(&held, Some(&staged), &[]);
        let shell = |c: &str| ToolCall::Shell {
            tool: "Bash".into(),
            command: c.into(),
        };
        let denied = reason(check_tool(
            &shell("git add src/lib.rs && git commit -m 'bd-a-1: x'"),
            &ctx,
        ));
        assert!(denied.contains("theirs.rs"), "{denied}");
        assert!(check_tool(&shell("git commit -m 'bd-a-1: x' -- src/lib.rs"), &ctx).is_allowed());
    }

    #[allow(clippy::needless_pass_by_value)] // callers build the input inline
    fn decide_claude(tool: &str, input: serde_json::Value) -> Decision {
        let held = vec![PathBuf::from("/repo/src/lib.rs")];
        check_tool(&ToolCall::from_claude(tool, &input), &ctx(&held, None, &[]))
    }

    #[test]
    fn shells_under_other_names_are_judged_as_shell_commands() {
        for tool in [
            "bash",
            "shell",
            "local_shell",
            "exec_command",
            "container.exec",
            "run_shell_command",
            "my_runner",
        ] {
            let denied = reason(decide_claude(tool, json!({"command": "rm src/other.rs"})));
            assert!(denied.contains("src/other.rs"), "{tool}: {denied}");
            assert!(
                decide_claude(tool, json!({"command": "cargo test"})).is_allowed(),
                "{tool}"
            );
        }
        let denied = reason(decide_claude("exec", json!({"cmd": "git reset --hard"})));
        assert!(denied.contains("git reset"), "{denied}");
        let codex = json!({"command": ["bash", "-lc", "echo x > src/other.rs"]});
        assert!(!decide_claude("shell", codex).is_allowed());
        let codex = json!({"command": ["bash", "-lc", "echo x > src/lib.rs"]});
        assert!(decide_claude("shell", codex).is_allowed());
        // Relative paths resolve from the shell's workdir.
        let codex = json!({"command": ["touch", "lib.rs"], "workdir": "/repo/src"});
        assert!(decide_claude("shell", codex).is_allowed());
        let codex = json!({"command": ["touch", "lib.rs"], "workdir": "/repo/docs"});
        assert!(!decide_claude("shell", codex).is_allowed());
    }

    #[test]
    fn unknown_tools_that_name_a_path_are_refused() {
        for key in [
            "file_path",
            "path",
            "notebook_path",
            "filename",
            "target_file",
        ] {
            let denied = reason(decide_claude(
                "mcp__fs__write_file",
                json!({key: "/repo/x", "content": "y"}),
            ));
            assert!(
                denied.contains("mcp__fs__write_file") && denied.contains(key),
                "{denied}"
            );
        }
        assert!(decide_claude("SomeTool", json!({"query": "x"})).is_allowed());
    }

    #[test]
    fn known_read_only_tools_and_malas_own_tools_pass() {
        for tool in [
            "Read",
            "Glob",
            "Grep",
            "LS",
            "NotebookRead",
            "BashOutput",
            "KillShell",
            "WebFetch",
        ] {
            let input = json!({"file_path": "/repo/src/other.rs", "path": "/repo", "pattern": "x"});
            assert!(decide_claude(tool, input).is_allowed(), "{tool}");
        }
        let lock = json!({"path": "/repo/src/other.rs"});
        assert!(decide_claude("mcp__mala__lock_acquire", lock).is_allowed());
        assert!(decide_claude("TodoWrite", json!({"todos": []})).is_allowed());
        assert!(decide_claude("Task", json!({"prompt": "x"})).is_allowed());
    }

    #[test]
    fn shell_writes_lists_the_new_write_classes() {
        let root = Path::new("/repo");
        let one = |c: &str| shell_writes(c, root);
        let p = |s: &str| vec![PathBuf::from(s)];
        assert_eq!(one("sed -i -e s/a/b/ src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(
            one("sed --in-place --expression=s/a/b/ src/a.rs"),
            p("/repo/src/a.rs")
        );
        assert_eq!(one("cp -t src README.md"), p("/repo/src/README.md"));
        assert_eq!(one("cp --target-directory=src /tmp/x"), p("/repo/src/x"));
        assert_eq!(one("echo x >& src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("echo x 2>&src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("echo x >| src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("chmod -w src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("chmod --reference R src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("nice -n 10 touch src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("timeout -s KILL 5 tee src/a.rs"), p("/repo/src/a.rs"));
        assert_eq!(one("env -C src touch a.rs"), p("/repo/src/a.rs"));
        assert_eq!(
            one("touch src/{a,b}.rs"),
            vec![
                PathBuf::from("/repo/src/a.rs"),
                PathBuf::from("/repo/src/b.rs")
            ]
        );
        assert_eq!(one("mv src/a.rs /tmp/"), p("/repo/src/a.rs"));
        // A refused command does not hide the writes after it.
        assert_eq!(one("git reset --hard; touch src/a.rs"), p("/repo/src/a.rs"));
    }
    #[test]
    fn patches_are_edits_of_every_path_they_name() {
        let patch = |paths: &str| format!("*** Begin Patch\n{paths}\n*** End Patch");
        let ok = patch("*** Update File: src/lib.rs\n@@\n-a\n+b");
        assert!(decide_claude("apply_patch", json!({"input": ok})).is_allowed());
        let moved = patch("*** Update File: src/lib.rs\n*** Move to: src/other.rs");
        let denied = reason(decide_claude("apply_patch", json!({"input": moved})));
        assert!(denied.contains("src/other.rs"), "{denied}");
        let added = patch("*** Add File: src/new.rs\n+x");
        assert!(!decide_claude("custom", json!({"patch": added})).is_allowed());
        let deleted = patch("*** Delete File: README.md");
        assert!(!decide_claude("apply_patch", json!(deleted)).is_allowed());
        assert!(!decide_claude("apply_patch", json!({"input": "garbage"})).is_allowed());
        // Through the shell, as Codex runs it.
        let line = format!(
            "apply_patch <<'EOF'\n{}\nEOF",
            patch("*** Add File: src/new.rs\n+x")
        );
        assert!(!decide_claude("shell", json!({"command": ["bash", "-lc", line]})).is_allowed());
        let line = format!(
            "apply_patch <<'EOF'\n{}\nEOF",
            patch("*** Update File: src/lib.rs")
        );
        assert!(decide_claude("shell", json!({"command": ["bash", "-lc", line]})).is_allowed());
    }

    #[test]
    fn nested_path_keys_and_shells_without_commands_are_refused() {
        for input in [
            json!({"edits": [{"path": "/repo/x"}]}),
            json!({"args": {"path": "/repo/x"}}),
            json!({"file_paths": ["/repo/x"]}),
            json!({"filePath": "/repo/x"}),
            json!({"uri": "file:///repo/x"}),
            json!({"to": "/repo/x"}),
            json!({"output": "/repo/x"}),
        ] {
            assert!(
                !decide_claude("mcp__fs__edit", input.clone()).is_allowed(),
                "{input}"
            );
        }
        for tool in ["bash", "shell", "exec_command"] {
            let denied = reason(decide_claude(tool, json!({"args": ["rm", "x"]})));
            assert!(denied.contains(tool), "{denied}");
        }
        assert!(!decide_claude("runner", json!({"command": {"argv": "rm x"}})).is_allowed());
        // A directory key sets where the command runs.
        let at = |key: &str, dir: &str| json!({"command": "touch lib.rs", key: dir});
        assert!(decide_claude("shell", at("cwd", "/repo/src")).is_allowed());
        assert!(!decide_claude("shell", at("cwd", "/repo/docs")).is_allowed());
        assert!(decide_claude("shell", at("directory", "/repo/src")).is_allowed());
    }

    #[test]
    fn a_shell_launching_a_script_is_that_script() {
        assert_eq!(
            launched_script("/bin/bash -lc 'ls src'").as_deref(),
            Some("ls src")
        );
        assert_eq!(
            launched_script("/usr/bin/bash -c \"cargo test && git add a\"").as_deref(),
            Some("cargo test && git add a")
        );
        assert_eq!(launched_script("/bin/zsh -lc ls").as_deref(), Some("ls"));
        for other in [
            "ls src",
            "bash -lc ls",
            "/tmp/f/bash -lc 'cargo test'",
            "/bin/zsh -lc 'echo ${(e)x}'",
            "/bin/bash -lc 'ls' > out",
            "bash -lc 'ls' && rm x",
            "bash script.sh",
            "bash -lc \"$X\"",
            "python -c 'print(1)'",
        ] {
            assert_eq!(launched_script(other), None, "{other}");
        }
    }
}
