//! Git beyond the destructive basics: global options that run programs or
//! name the subcommand only at run time, and subcommands that rewrite the
//! shared checkout, write files through output options, run arbitrary
//! commands, install configuration for every agent, or delete recovery data.

use super::super::shell::Arg;
use super::{Refusal, Walker};

/// `-c` keys whose values only change how git prints or who it says commits.
fn harmless_config(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["color.", "user.", "advice.", "i18n."]
        .iter()
        .any(|prefix| key.starts_with(prefix) && !key.ends_with(".command"))
        || matches!(
            key.as_str(),
            "core.quotepath"
                | "core.abbrev"
                | "core.autocrlf"
                | "core.safecrlf"
                | "init.defaultbranch"
                | "commit.gpgsign"
                | "tag.gpgsign"
                | "log.showsignature"
                | "diff.noprefix"
                | "diff.renames"
                | "gc.auto"
                | "maintenance.auto"
                | "safe.directory"
                | "protocol.version"
                | "log.date"
                | "log.decorate"
                | "format.pretty"
                | "diff.algorithm"
                | "diff.colormoved"
                | "status.short"
                | "status.branch"
                | "column.ui"
        )
}

/// The global options of a git command line, up to the subcommand: a
/// subcommand only known at run time, and `-c`/`--config-env` settings that
/// can run programs (aliases, pagers, hooks, editors, helpers), are refused.
pub(super) fn check_globals(words: &[Arg]) -> Result<(), Refusal> {
    let mut i = 1;
    while let Some(word) = words.get(i) {
        let Some(raw) = word.literal() else {
            return Err(format!(
                "refused: the git subcommand or option `{}` is only known when it runs, so mala cannot tell what git will do. \
                 Name the git subcommand literally",
                word.raw()
            ));
        };
        let setting = match raw {
            "-c" | "--config-env" => {
                i += 1;
                Some(words.get(i))
            }
            _ => raw
                .strip_prefix("--config-env=")
                .map(|_| Some(word))
                .or_else(|| {
                    raw.strip_prefix("-c")
                        .filter(|s| !s.is_empty())
                        .map(|_| Some(word))
                }),
        };
        let option = raw.split('=').next().unwrap_or(raw);
        if matches!(option, "--git-dir" | "--work-tree" | "--index-file") {
            return Err(format!(
                "refused: `git {option}` points git at another repository or working tree, which mala cannot check. Run git where you work, as it is"
            ));
        }
        match setting {
            Some(Some(value)) => check_setting(raw, value)?,
            None if matches!(raw, "-C" | "--git-dir" | "--work-tree" | "--namespace") => i += 1,
            None if raw.starts_with('-') => {}
            Some(None) | None => return Ok(()),
        }
        i += 1;
    }
    Ok(())
}

fn check_setting(option: &str, value: &Arg) -> Result<(), Refusal> {
    let text = value.literal().unwrap_or("");
    let text = text
        .strip_prefix("--config-env=")
        .or_else(|| text.strip_prefix("-c"))
        .unwrap_or(text);
    let key = text.split('=').next().unwrap_or("");
    if value.literal().is_some()
        && option != "--config-env"
        && !option.starts_with("--config-env=")
        && harmless_config(key)
    {
        return Ok(());
    }
    Err(format!(
        "refused: `git {option} {}` sets a configuration mala does not know to be harmless (aliases, pagers, hooks, editors, \
         helpers and external diff tools run programs). Run git without it; settings such as color.* and user.* are fine",
        value.raw()
    ))
}

impl Walker<'_> {
    /// Subcommands beyond reset/checkout/push…: `Ok(())` when harmless.
    pub(super) fn git_more(
        &self,
        sub: &str,
        rest: &[&str],
        base: &std::path::Path,
    ) -> Result<(), Refusal> {
        let has = |flags: &[&str]| {
            rest.iter().any(|a| {
                flags.iter().any(|f| {
                    a == f
                        || (f.starts_with("--") && a.starts_with(&format!("{f}=")))
                        || (!f.starts_with("--")
                            && a.starts_with('-')
                            && !a.starts_with("--")
                            && a.contains(&f[1..]))
                })
            })
        };
        let first = rest.iter().find(|a| !a.starts_with('-')).copied();
        match sub {
            "pull" | "merge" | "cherry-pick" | "revert" | "read-tree" | "checkout-index" => Err(format!(
                "refused: git {sub} rewrites files or the index of the shared checkout, including files other agents hold \
                 (a revert with --no-commit too). Make the change by editing the files you hold, and commit them"
            )),
            "submodule" if first == Some("foreach") => Err(
                "refused: git submodule foreach runs a command mala cannot check in every submodule. Run the command in the submodule you need".to_owned(),
            ),
            "difftool" if has(&["-x", "--extcmd"]) => Err(
                "refused: git difftool --extcmd runs a program mala cannot check. Use git diff".to_owned(),
            ),
            "bisect" if !matches!(first, Some("log" | "view" | "visualize")) => Err(
                "refused: git bisect checks out other commits in the shared checkout (and `bisect run` runs a command). \
                 Use git log and git show to study history"
                    .to_owned(),
            ),
            "config" => git_config(rest),
            "repack" if has(&["-d"]) && (has(&["-a"]) || has(&["--prune"])) => Err(
                "refused: `git repack -a -d` drops unreachable objects, the data that recovers lost commits. Run `git repack` without -d, or leave it to git".to_owned(),
            ),
            "worktree" if first == Some("prune") && !has(&["-n", "--dry-run"]) => Err(
                "refused: git worktree prune deletes the records of other working trees. Preview with `git worktree prune -n`".to_owned(),
            ),
            "fetch" => git_fetch(rest, &has),
            "remote" if matches!(first, Some("remove" | "rm" | "set-url" | "rename")) => Err(
                "refused: changing or removing a remote changes it for every agent. Leave the remotes as they are".to_owned(),
            ),
            "diff" | "log" | "show" | "archive" | "format-patch" | "whatchanged" => {
                self.git_output(sub, rest, base)
            }
            _ => Ok(()),
        }
    }

    /// `--output=F`, `-o F` (archive, format-patch): files git writes.
    fn git_output(&self, sub: &str, rest: &[&str], base: &std::path::Path) -> Result<(), Refusal> {
        let what = format!("git {sub}");
        let mut wrote = false;
        let mut i = 0;
        while i < rest.len() {
            let arg = rest[i];
            let short = matches!(sub, "archive" | "format-patch") && arg == "-o";
            let value = if arg == "--output" || arg == "--output-directory" || short {
                i += 1;
                rest.get(i).copied()
            } else {
                arg.strip_prefix("--output=")
                    .or_else(|| arg.strip_prefix("--output-directory="))
                    .or_else(|| {
                        (matches!(sub, "archive" | "format-patch"))
                            .then(|| arg.strip_prefix("-o"))
                            .flatten()
                            .filter(|v| !v.is_empty())
                    })
            };
            if let Some(value) = value {
                self.git_path(value, base, &what)?;
                wrote = true;
            }
            i += 1;
        }
        if sub == "format-patch" && !wrote && !rest.contains(&"--stdout") {
            return Err(
                "refused: git format-patch writes its patch files into the current directory of the shared checkout. \
                 Use `git format-patch -o /tmp/patches …` or `--stdout`"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// `git config`: reading passes, anything that sets, unsets or edits is a
/// setting for every agent.
fn git_config(rest: &[&str]) -> Result<(), Refusal> {
    const READS: &[&str] = &[
        "--get",
        "--get-all",
        "--get-regexp",
        "--get-urlmatch",
        "-l",
        "--list",
        "--get-color",
        "--get-colorbool",
    ];
    const VALUED: &[&str] = &["-f", "--file", "--blob", "--type", "--default", "--comment"];
    const WRITES: &[&str] = &[
        "--unset",
        "--unset-all",
        "--add",
        "--replace-all",
        "-e",
        "--edit",
        "--rename-section",
        "--remove-section",
    ];
    let mut positional = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i];
        if READS.contains(&arg) {
            return Ok(());
        }
        if WRITES.contains(&arg) {
            positional.push("set");
        } else if VALUED.contains(&arg) {
            i += 1;
        } else if !arg.starts_with('-') {
            positional.push(arg);
        }
        i += 1;
    }
    let reading = match positional.first().copied() {
        Some("get" | "list") | None => true,
        Some("set" | "unset" | "edit" | "rename-section" | "remove-section") => false,
        Some(_) => positional.len() == 1,
    };
    if reading {
        return Ok(());
    }
    Err(
        "refused: `git config` that sets, unsets or edits a value changes git for every agent sharing this repository. \
         Read settings with `git config --get KEY` or `git config --list`; pass a one-off setting with `git -c color.ui=never …`"
            .to_owned(),
    )
}

/// `git fetch`: fetching into remote-tracking refs passes; a refspec that
/// writes a local branch, or a forced update, moves refs other agents build on.
fn git_fetch(rest: &[&str], has: &dyn Fn(&[&str]) -> bool) -> Result<(), Refusal> {
    let moves_local = rest.iter().filter(|a| !a.starts_with('-')).any(|spec| {
        spec.starts_with('+')
            || spec.split_once(':').is_some_and(|(_, dst)| {
                !dst.is_empty()
                    && !dst.starts_with("refs/remotes/")
                    && !dst.starts_with("refs/tags/")
            })
    });
    if moves_local || has(&["-f", "--force", "--update-head-ok"]) {
        return Err(
            "refused: this fetch updates local branches (a `SRC:DST` refspec into refs/heads, `+`, or --force), which moves refs other agents build on. \
             Fetch into remote-tracking refs: `git fetch origin`"
                .to_owned(),
        );
    }
    Ok(())
}

/// `-h`/`--help` and the dry runs of add, clean, prune and push only print.
pub(super) fn only_prints(sub: &str, rest: &[&str]) -> bool {
    let dry_short = matches!(sub, "add" | "clean" | "prune" | "push")
        && rest
            .iter()
            .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('n'));
    let dry_long =
        matches!(sub, "add" | "commit" | "clean" | "prune" | "push") && rest.contains(&"--dry-run");
    matches!(rest.first().copied(), Some("-h" | "--help")) || dry_short || dry_long
}

/// Under worktree isolation, the decision on the subcommands that move or
/// fetch refs; `None` leaves the rest to the shared checkout's rules.
pub(crate) fn in_own_worktree(
    ctx: &crate::GuardContext<'_>,
    sub: &str,
    rest: &[&str],
    base: &std::path::Path,
) -> Option<Result<(), Refusal>> {
    let own = ctx.own_branch?;
    if !base.starts_with(ctx.repo_root) {
        return Some(Err(format!(
            "refused: git {sub} in {}, outside your worktree ({}); your branch is the only one you work on",
            base.display(),
            ctx.repo_root.display()
        )));
    }
    let own = Some(own);
    let moves_refs = matches!(
        sub,
        "rebase"
            | "merge"
            | "pull"
            | "push"
            | "fetch"
            | "checkout"
            | "switch"
            | "reset"
            | "worktree"
            | "branch"
            | "replace"
            | "notes"
            | "update-index"
            | "clone"
            | "init"
            | "bundle"
            | "stash"
            | "tag"
    );
    own.filter(|_| moves_refs)
        .map(|own| own_branch(sub, rest, own))
}

/// Worktree isolation: what an agent may do to refs from its own worktree.
/// It may put its own branch on the target again (`git rebase <upstream>`,
/// `git merge <branch>`, and end or abort either); mala lands the branch,
/// so nothing else moves refs, and nothing reaches a remote.
fn own_branch(sub: &str, rest: &[&str], own: &str) -> Result<(), Refusal> {
    let steps = ["--continue", "--abort", "--skip", "--quit"];
    let quiet = [
        "-q",
        "--quiet",
        "--no-edit",
        "--no-ff",
        "--ff",
        "--ff-only",
        "--stat",
        "-n",
    ];
    let positional: Vec<&str> = rest
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-'))
        .collect();
    let unknown = rest
        .iter()
        .find(|a| a.starts_with('-') && !steps.contains(a) && !quiet.contains(a));
    match sub {
        "rebase" | "merge" if rest.len() == 1 && steps.contains(&rest[0]) => Ok(()),
        "rebase" | "merge" if unknown.is_some() => Err(format!(
            "refused: `git {sub} {}` is not a form mala can check in your worktree. Use `git {sub} <branch>` (and `git {sub} --continue` or `--abort`)",
            unknown.map_or("", |a| *a)
        )),
        "rebase" | "merge" if positional.len() == 1 => Ok(()),
        "rebase" => Err(format!(
            "refused: git rebase with {} branches would check out or move a branch other than yours ({own}). Use `git rebase <upstream>` in your worktree",
            positional.len()
        )),
        "merge" => Err(format!(
            "refused: merge one branch into yours ({own}) at a time: `git merge <branch>`"
        )),
        "checkout" | "switch" => Err(format!(
            "refused: your worktree stays on your branch ({own}), which mala lands; git {sub} would leave it. To restore a file, `git show HEAD:<path> > <path>`"
        )),
        "reset" => Err(format!(
            "refused: git reset moves your branch ({own}) or discards work in your worktree. Undo a change by editing the file back and committing"
        )),
        "worktree" if rest.first() == Some(&"list") => Ok(()),
        "branch" if lists_branches(rest) => Ok(()),
        "worktree" | "branch" | "tag" | "replace" | "notes" | "stash" => Err(format!(
            "refused: git {sub} changes refs or trees every worktree shares (other agents' branches, the user's, the stash); only your branch ({own}) is yours to move, by committing"
        )),
        "update-index" => Err(format!(
            "refused: git update-index can hide changes from git status, which decides what lands. Stage with git add in your worktree ({own})"
        )),
        "clone" | "init" | "bundle" => Err(format!(
            "refused: git {sub} makes a repository or file where mala cannot check it. Work in your worktree ({own})"
        )),
        _ => Err(format!(
            "refused: git {sub} reaches another repository or moves refs other than your branch ({own}); mala lands your branch itself once the gate and review pass"
        )),
    }
}

/// `git branch` that only lists: no name to create, no flag that changes one.
fn lists_branches(rest: &[&str]) -> bool {
    let listing = [
        "-a",
        "--all",
        "-r",
        "--remotes",
        "-v",
        "-vv",
        "--verbose",
        "--show-current",
        "-l",
        "--list",
        "--no-color",
        "--color",
    ];
    let filters = [
        "--contains",
        "--no-contains",
        "--merged",
        "--no-merged",
        "--points-at",
    ];
    let mut words = rest.iter();
    let mut pattern_ok = false;
    while let Some(word) = words.next() {
        if filters.contains(word) {
            words.next();
        } else if filters.iter().any(|f| word.starts_with(&format!("{f}=")))
            || word.starts_with("--format")
            || word.starts_with("--sort")
        {
        } else if listing.contains(word) {
            pattern_ok |= matches!(*word, "-l" | "--list");
        } else if word.starts_with('-') || !pattern_ok {
            return false;
        }
    }
    true
}

/// Global options that shorten how long git keeps unreachable objects or
/// reflogs (`-c gc.reflogExpire=now`…) are refused.
pub(crate) fn keeps_recovery_data(global: &[&str]) -> Result<(), Refusal> {
    if global
        .iter()
        .any(|w| w.to_ascii_lowercase().contains("expire"))
    {
        return Err(
            "refused: this git command changes how long git keeps unreachable objects or reflogs, the data that recovers lost commits. Run it without that setting".to_owned(),
        );
    }
    Ok(())
}
