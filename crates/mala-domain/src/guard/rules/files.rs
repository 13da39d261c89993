//! Commands whose operands are the files they change: copies and moves,
//! mode and owner changes, and in-place editors. Their options are parsed
//! (values attached or separate, long forms with `=`), so an operand is never
//! mistaken for an option value or the other way round.

use super::super::options::{self, Parsed, Spec};
use super::super::shell::Arg;
use super::{Refusal, Walker, basename, scripts};

const fn spec(
    short_values: &'static str,
    short_flags: &'static str,
    long_values: &'static [&'static str],
    long_flags: &'static [&'static str],
) -> Spec {
    Spec {
        short_values,
        short_flags,
        short_optional: "",
        long_values,
        long_flags,
        stop_at_operand: false,
        ends_options: &[],
    }
}

const CP: Spec = spec(
    "tS",
    "abdfHilLnPprRsTuvxZ",
    &["target-directory", "suffix", "sparse", "no-preserve"],
    &[
        "archive",
        "backup",
        "attributes-only",
        "copy-contents",
        "dereference",
        "force",
        "interactive",
        "link",
        "no-dereference",
        "no-clobber",
        "preserve",
        "parents",
        "recursive",
        "reflink",
        "remove-destination",
        "strip-trailing-slashes",
        "symbolic-link",
        "no-target-directory",
        "update",
        "verbose",
        "one-file-system",
        "context",
        "debug",
        "keep-directory-symlink",
    ],
);
const MV: Spec = spec(
    "tS",
    "bfinTuvZ",
    &["target-directory", "suffix"],
    &[
        "backup",
        "force",
        "interactive",
        "no-clobber",
        "no-target-directory",
        "update",
        "verbose",
        "strip-trailing-slashes",
        "context",
        "exchange",
        "no-copy",
        "debug",
    ],
);
const INSTALL: Spec = spec(
    "gmoSt",
    "bcCdDpsTvZ",
    &[
        "group",
        "mode",
        "owner",
        "suffix",
        "target-directory",
        "strip-program",
    ],
    &[
        "backup",
        "compare",
        "directory",
        "preserve-timestamps",
        "strip",
        "no-target-directory",
        "verbose",
        "context",
        "preserve-context",
        "debug",
    ],
);
const LN: Spec = spec(
    "tS",
    "bdFfinLPrsTv",
    &["target-directory", "suffix"],
    &[
        "backup",
        "directory",
        "force",
        "interactive",
        "logical",
        "no-dereference",
        "physical",
        "relative",
        "symbolic",
        "no-target-directory",
        "verbose",
    ],
);
const CHMOD: Spec = spec(
    "",
    "cfvR",
    &["reference"],
    &[
        "changes",
        "silent",
        "quiet",
        "verbose",
        "recursive",
        "preserve-root",
        "no-preserve-root",
    ],
);
const CHOWN: Spec = spec(
    "",
    "cfvRhHLP",
    &["reference", "from"],
    &[
        "changes",
        "silent",
        "quiet",
        "verbose",
        "recursive",
        "dereference",
        "no-dereference",
        "preserve-root",
        "no-preserve-root",
    ],
);
const SED: Spec = Spec {
    short_optional: "i",
    ..spec(
        "efl",
        "nrEsuzb",
        &["expression", "file", "line-length"],
        &[
            "in-place",
            "quiet",
            "silent",
            "regexp-extended",
            "separate",
            "unbuffered",
            "null-data",
            "zero-terminated",
            "posix",
            "debug",
            "sandbox",
            "follow-symlinks",
            "binary",
        ],
    )
};
const AWK: Spec = Spec {
    short_optional: "dDLop",
    stop_at_operand: true,
    ..spec(
        "fFveEil",
        "bcCghMnNOPrsStV",
        &[
            "file",
            "field-separator",
            "assign",
            "source",
            "exec",
            "include",
            "load",
        ],
        &[
            "characters-as-bytes",
            "traditional",
            "copyright",
            "dump-variables",
            "debug",
            "gen-pot",
            "lint",
            "bignum",
            "use-lc-numeric",
            "non-decimal-data",
            "pretty-print",
            "optimize",
            "no-optimize",
            "posix",
            "re-interval",
            "sandbox",
            "lint-old",
            "csv",
            "profile",
        ],
    )
};

fn unknown<'a>(name: &'a str, what: &'a str) -> impl Fn(options::UnknownOption) -> Refusal + 'a {
    move |options::UnknownOption(o)| {
        format!(
            "refused: mala does not know the option `{o}` of {name}, so it cannot tell which files {what}. \
             Spell the command with {name}'s usual options"
        )
    }
}

impl Walker<'_> {
    /// `cp`, `mv`, `install`, `ln`: the destination of every source, and for
    /// `mv` the sources too (they are removed).
    pub(super) fn copy(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        let spec = match name {
            "mv" => &MV,
            "install" => &INSTALL,
            "ln" => &LN,
            _ => &CP,
        };
        let parsed = options::parse(args, spec).map_err(unknown(name, "it writes"))?;
        if name == "install" && parsed.has(&["-d", "--directory"]) {
            // `install -d` only makes directories, like `mkdir -p`.
            return Ok(());
        }
        let operands = &parsed.operands;
        if name == "ln" && parsed.has(&["-s", "--symbolic"]) {
            self.symlink_targets(&parsed, operands)?;
        }
        if name == "mv" {
            let sources = operands.len().saturating_sub(1);
            let sources = if target_dir(&parsed).is_some() {
                operands.len()
            } else {
                sources
            };
            for source in &operands[..sources] {
                self.write_target(source, "mv (it removes its source)")?;
            }
        }
        if let Some(dir) = target_dir(&parsed) {
            return operands
                .iter()
                .try_for_each(|source| self.write_into(dir, source, name));
        }
        let Some((dest, sources)) = operands.split_last() else {
            return Ok(());
        };
        if sources.is_empty() && name == "ln" {
            // `ln TARGET` makes ./basename(TARGET) here.
            return self.write_into(&Arg::Literal(".".to_owned()), dest, name);
        }
        let into = !parsed.has(&["-T", "--no-target-directory"])
            && (sources.len() > 1 || dest.raw().ends_with('/'));
        if into {
            return sources
                .iter()
                .try_for_each(|source| self.write_into(dest, source, name));
        }
        self.write_target(dest, name)
    }

    /// Under worktree isolation, a symbolic link may not point into another
    /// working tree: later writes through it would land there.
    fn symlink_targets(&self, parsed: &Parsed, operands: &[Arg]) -> Result<(), Refusal> {
        if self.ctx.elsewhere.is_empty() {
            return Ok(());
        }
        let (targets, link_dir) = match (target_dir(parsed), operands.split_last()) {
            (Some(dir), _) => (operands, dir.literal().map(|d| self.here(d))),
            (None, Some((link, sources))) if !sources.is_empty() => {
                // `ln -s T DIR/` puts the link in DIR; else beside its name.
                let dir = link.literal().map(|l| {
                    let path = self.here(l);
                    match path.parent() {
                        Some(parent) if !l.ends_with('/') => parent.to_path_buf(),
                        _ => path,
                    }
                });
                (sources, dir)
            }
            _ => (operands, None),
        };
        for target in targets {
            let Some(text) = target.literal() else {
                return Err(format!(
                    "refused: ln -s {} points where mala cannot tell until it runs; in your worktree, a link must stay inside it",
                    target.raw()
                ));
            };
            // A relative target is read from the directory the link is in.
            let dir = link_dir.clone().unwrap_or_else(|| self.cwd().to_path_buf());
            let pointed = super::normalize(&dir, text);
            let elsewhere = !pointed.starts_with(self.ctx.repo_root)
                && self
                    .ctx
                    .elsewhere
                    .iter()
                    .any(|tree| pointed.starts_with(tree));
            if elsewhere {
                return Err(format!(
                    "refused: ln -s {text} points into another working tree (the user's checkout or another agent's); writes through it would land there"
                ));
            }
        }
        Ok(())
    }

    fn here(&self, path: &str) -> std::path::PathBuf {
        super::normalize(self.cwd(), path)
    }

    /// The file `source` becomes inside `dir`.
    fn write_into(&self, dir: &Arg, source: &Arg, name: &str) -> Result<(), Refusal> {
        let (Some(dir), Some(source)) = (dir.literal(), source.literal()) else {
            let unknown = if dir.literal().is_none() { dir } else { source };
            return self.write_target(unknown, name);
        };
        let file = basename(source.trim_end_matches('/'));
        self.literal_write(&format!("{}/{file}", dir.trim_end_matches('/')), name)
    }

    /// `chmod MODE FILE…`, `chown OWNER FILE…`, or with `--reference=R` no
    /// mode operand: every file operand is changed; the mode and R are not.
    pub(super) fn permissions(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        let spec = if name == "chmod" { &CHMOD } else { &CHOWN };
        // `chmod -w f`: a mode that starts with `-` is not an option.
        let mode = (name == "chmod")
            .then(|| args.iter().position(|a| is_minus_mode(a.raw())))
            .flatten();
        let rest: Vec<Arg> = args
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mode)
            .map(|(_, a)| a.clone())
            .collect();
        let parsed = options::parse(&rest, spec).map_err(unknown(name, "it changes"))?;
        let skip = usize::from(mode.is_none() && !parsed.has(&["--reference"]));
        for file in parsed.operands.iter().skip(skip) {
            if file.raw() == "/" {
                return Err(format!(
                    "refused: `{name}` on / changes the whole filesystem"
                ));
            }
            self.write_target(file, name)?;
        }
        Ok(())
    }

    /// `sed -i`: every file operand is rewritten. The script is the first
    /// operand unless given with `-e`/`-f`.
    pub(super) fn sed(&self, args: &[Arg]) -> Result<(), Refusal> {
        let parsed = match options::parse(args, &SED) {
            Ok(parsed) => parsed,
            Err(_) if !mentions_in_place(args) => return Ok(()),
            Err(e) => return Err(unknown("sed", "it edits in place")(e)),
        };
        let scripted = parsed.has(&["-e", "-f", "--expression", "--file"]);
        let programs: Vec<&Arg> = if scripted {
            parsed.values(&["-e", "--expression"]).collect()
        } else {
            parsed.operands.first().into_iter().collect()
        };
        self.program_writes(&programs, scripts::sed_writes, "sed's w command")?;
        if !parsed.has(&["-i", "--in-place"]) {
            return Ok(());
        }
        self.edit_files(
            &parsed.operands[usize::from(!scripted).min(parsed.operands.len())..],
            "sed -i",
        )
    }

    /// `awk -i inplace` / `gawk --include=inplace`: every file operand is
    /// rewritten (`var=value` operands are assignments, not files).
    pub(super) fn awk(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        let parsed = match options::parse(args, &AWK) {
            Ok(parsed) => parsed,
            Err(_) if !args.iter().any(|a| a.raw().contains("inplace")) => return Ok(()),
            Err(e) => return Err(unknown(name, "it edits in place")(e)),
        };
        let sources: Vec<&Arg> = parsed.values(&["-e", "--source"]).collect();
        let programs = if !sources.is_empty() || parsed.has(&["-f", "--file", "-E", "--exec"]) {
            sources
        } else {
            parsed.operands.first().into_iter().collect()
        };
        self.program_writes(&programs, scripts::awk_writes, &format!("{name}'s print >"))?;
        let in_place = parsed.values(&["-i", "--include"]).any(|v| {
            let v = v.raw();
            v == "inplace" || basename(v) == "inplace.awk" || v.contains('$')
        });
        if !in_place {
            return Ok(());
        }
        let scripted = parsed.has(&["-f", "-e", "-E", "--file", "--source", "--exec"]);
        let files: Vec<Arg> = parsed
            .operands
            .iter()
            .skip(usize::from(!scripted))
            .filter(|a| !is_awk_assignment(a.raw()))
            .cloned()
            .collect();
        self.edit_files(&files, &format!("{name} -i inplace"))
    }

    /// The files a sed or awk program names for writing.
    fn program_writes(
        &self,
        programs: &[&Arg],
        read: fn(&str) -> Result<Vec<String>, Refusal>,
        what: &str,
    ) -> Result<(), Refusal> {
        for program in programs {
            for file in read(program.raw())? {
                let target = match program {
                    Arg::Literal(_) => Arg::Literal(file),
                    Arg::Dynamic(_) => Arg::Dynamic(file),
                };
                self.write_target(&target, what)?;
            }
        }
        Ok(())
    }

    pub(super) fn edit_files(&self, files: &[Arg], what: &str) -> Result<(), Refusal> {
        files
            .iter()
            .try_for_each(|file| self.write_target(file, what))
    }
}

fn target_dir(parsed: &Parsed) -> Option<&Arg> {
    parsed.values(&["-t", "--target-directory"]).last()
}

/// `-w`, `-x`, `-rwx`, `-w,u+x`: chmod reads these as modes.
fn is_minus_mode(word: &str) -> bool {
    word.strip_prefix('-').is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('-')
            && rest.chars().all(|c| "rwxXstugoa+-=,01234567".contains(c))
    })
}

/// Whether some word may ask sed for an in-place edit.
fn mentions_in_place(args: &[Arg]) -> bool {
    args.iter().any(|a| {
        let raw = a.raw();
        raw.starts_with("--in-place")
            || (raw.starts_with('-') && !raw.starts_with("--") && raw.contains('i'))
    })
}

fn is_awk_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}
