//! Programs that write files named by an option or an operand: `sort -o`,
//! `split`/`csplit` (their output prefix), archive extractors (`tar -x`,
//! `unzip`, `cpio -i`: into their directory option only), `rsync` (its
//! destination), and the editors that run without a terminal (`ed`, `ex`,
//! `vim -es`…), which write the files they open.

use super::super::shell::Arg;
use super::{Refusal, Walker};

pub(super) fn is_writer(name: &str) -> bool {
    matches!(
        name,
        "sort"
            | "split"
            | "csplit"
            | "tar"
            | "bsdtar"
            | "unzip"
            | "rsync"
            | "cpio"
            | "ed"
            | "ex"
            | "vim"
            | "vi"
            | "nvim"
            | "view"
    )
}

/// The value of `short` (`-o F`, `-oF`) or `long` (`--output=F`, `--output F`).
fn value(args: &[Arg], short: &str, long: &str) -> Option<Arg> {
    for (i, arg) in args.iter().enumerate() {
        let raw = arg.raw();
        if raw == short || raw == long {
            return args.get(i + 1).cloned();
        }
        let attached = raw.strip_prefix(&format!("{long}=")).or_else(|| {
            raw.strip_prefix(short)
                .filter(|v| !v.is_empty() && !short.is_empty())
        });
        if let Some(v) = attached {
            return Some(match arg {
                Arg::Literal(_) => Arg::Literal(v.to_owned()),
                Arg::Dynamic(_) => Arg::Dynamic(v.to_owned()),
            });
        }
    }
    None
}

fn operands(args: &[Arg]) -> Vec<&Arg> {
    operands_after(args, &[])
}

/// The operands, skipping the values of the `valued` options.
fn operands_after<'a>(args: &'a [Arg], valued: &[&str]) -> Vec<&'a Arg> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let raw = arg.raw();
        if valued.contains(&raw) {
            i += 1;
        } else if !raw.starts_with('-') || raw == "-" {
            out.push(arg);
        }
        i += 1;
    }
    out
}

fn with_suffix(prefix: &Arg, suffix: &str) -> Arg {
    match prefix {
        Arg::Literal(p) => Arg::Literal(format!("{p}{suffix}")),
        Arg::Dynamic(p) => Arg::Dynamic(format!("{p}{suffix}")),
    }
}

impl Walker<'_> {
    pub(super) fn writer(&self, name: &str, args: &[Arg]) -> Result<(), Refusal> {
        match name {
            "sort" => match value(args, "-o", "--output") {
                Some(file) => self.write_target(&file, "sort -o"),
                None => Ok(()),
            },
            "split" => {
                let valued = [
                    "-l",
                    "-b",
                    "-C",
                    "-n",
                    "-a",
                    "-t",
                    "--lines",
                    "--bytes",
                    "--line-bytes",
                    "--number",
                    "--suffix-length",
                    "--separator",
                    "--additional-suffix",
                ];
                if args.iter().any(|a| a.raw().starts_with("--filter")) {
                    return Err(
                        "refused: split --filter runs a command mala cannot check. Split into files under /tmp"
                            .to_owned(),
                    );
                }
                let prefix = operands_after(args, &valued)
                    .get(1)
                    .map_or(Arg::Literal("x".to_owned()), |p| (*p).clone());
                self.write_target(&with_suffix(&prefix, "aa"), "split (its output files)")
            }
            "csplit" => {
                let prefix = value(args, "-f", "--prefix").unwrap_or(Arg::Literal("xx".to_owned()));
                self.write_target(&with_suffix(&prefix, "00"), "csplit (its output files)")
            }
            "tar" | "bsdtar" => self.extract(name, args, tar_extracts(args), ("-C", "--directory")),
            "unzip" => {
                let lists = args
                    .iter()
                    .any(|a| matches!(a.raw(), "-l" | "-t" | "-v" | "-Z" | "-p" | "-z"));
                self.extract(name, args, !lists, ("-d", ""))
            }
            "cpio" => {
                let extracts = args.iter().any(|a| {
                    let raw = a.raw();
                    raw == "--extract"
                        || (raw.starts_with('-') && !raw.starts_with("--") && raw.contains('i'))
                });
                self.extract(name, args, extracts, ("-D", "--directory"))
            }
            "rsync" => match operands(args).last() {
                Some(dest) if operands(args).len() > 1 && !dest.raw().contains(':') => {
                    self.write_target(dest, "rsync")
                }
                _ => Ok(()),
            },
            "view" => Ok(()),
            _ if name.contains("vi") && args.iter().any(|a| a.raw() == "-R") => Ok(()),
            _ => operands(args)
                .into_iter()
                .filter(|a| !a.raw().starts_with('+'))
                .try_for_each(|file| self.write_target(file, name)),
        }
    }

    /// An archive extractor writes into its directory option, or here.
    fn extract(
        &self,
        name: &str,
        args: &[Arg],
        extracts: bool,
        dir: (&str, &str),
    ) -> Result<(), Refusal> {
        if !extracts {
            return Ok(());
        }
        match value(args, dir.0, dir.1) {
            Some(dir) => self.write_target(&dir, name),
            None => Err(format!(
                "refused: {name} extracts files into the current directory of the shared checkout, which may overwrite files other agents hold. \
                 Extract under /tmp (`{name} … {} /tmp/x`)",
                dir.0
            )),
        }
    }
}

/// `tar -x`, `tar xf`, `tar --extract`/`--get`.
fn tar_extracts(args: &[Arg]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        let raw = a.raw();
        matches!(raw, "--extract" | "--get")
            || (raw.starts_with('-') && !raw.starts_with("--") && raw.contains('x'))
            || (i == 0 && !raw.starts_with('-') && raw.contains('x'))
    })
}
