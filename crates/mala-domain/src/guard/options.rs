//! GNU-style option parsing, as far as the guard needs it: which words are
//! options, which are their values, and which are operands. A tool's options
//! must be known for this: an option the spec does not list could take a
//! value, so it is reported instead of guessed.

use super::shell::Arg;

/// The options of one program.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spec {
    /// Short options that take a value, attached (`-n10`) or as the next word.
    pub(crate) short_values: &'static str,
    /// Short options without a value (digits too, for `nice -10`).
    pub(crate) short_flags: &'static str,
    /// Short options whose value can only be attached (`xargs -i{}`, `sed -i.bak`).
    pub(crate) short_optional: &'static str,
    /// Long options that take a value (`--name=V` or `--name V`).
    pub(crate) long_values: &'static [&'static str],
    /// Long options without a value, or with an optional `=V`.
    pub(crate) long_flags: &'static [&'static str],
    /// Options stop at the first operand (wrappers: the rest is the command).
    pub(crate) stop_at_operand: bool,
    /// Options after which every word is an operand (`env -S 'CMD' ARGS`).
    pub(crate) ends_options: &'static [&'static str],
}

/// One option as given: its name (`-n`, `--output`) and value, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opt {
    pub(crate) name: String,
    pub(crate) value: Option<Arg>,
}

/// A command's words, sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parsed {
    pub(crate) options: Vec<Opt>,
    pub(crate) operands: Vec<Arg>,
}

impl Parsed {
    /// Whether any of `names` was given.
    pub(crate) fn has(&self, names: &[&str]) -> bool {
        self.options
            .iter()
            .any(|o| names.contains(&o.name.as_str()))
    }

    /// The values given to any of `names`, in order.
    pub(crate) fn values<'a>(&'a self, names: &'a [&str]) -> impl Iterator<Item = &'a Arg> + 'a {
        self.options
            .iter()
            .filter(|o| names.contains(&o.name.as_str()))
            .filter_map(|o| o.value.as_ref())
    }
}

/// Why a command's options could not be read: the option mala does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownOption(pub(crate) String);

/// The part of `arg` after `skip` bytes, dynamic when the word is.
fn tail(arg: &Arg, skip: usize) -> Arg {
    let rest = arg.raw().get(skip..).unwrap_or("").to_owned();
    match arg {
        Arg::Literal(_) => Arg::Literal(rest),
        Arg::Dynamic(_) => Arg::Dynamic(rest),
    }
}

/// Sorts `args` into options and operands by `spec`.
pub(crate) fn parse(args: &[Arg], spec: &Spec) -> Result<Parsed, UnknownOption> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let raw = args[i].raw();
        let operand = !raw.starts_with('-') || raw == "-";
        if raw == "--" || (operand && spec.stop_at_operand) {
            let from = if raw == "--" { i + 1 } else { i };
            parsed.operands.extend_from_slice(&args[from..]);
            return Ok(parsed);
        }
        if operand {
            parsed.operands.push(args[i].clone());
        } else if raw.starts_with("--") {
            i = long_option(args, i, spec, &mut parsed)?;
        } else {
            i = short_cluster(args, i, spec, &mut parsed)?;
        }
        i += 1;
        let last = parsed.options.last().map(|o| o.name.as_str());
        if last.is_some_and(|name| spec.ends_options.contains(&name)) {
            parsed
                .operands
                .extend_from_slice(args.get(i..).unwrap_or(&[]));
            return Ok(parsed);
        }
    }
    Ok(parsed)
}

/// `--name`, `--name=V` or `--name V`; returns the index of the last word used.
fn long_option(
    args: &[Arg],
    i: usize,
    spec: &Spec,
    parsed: &mut Parsed,
) -> Result<usize, UnknownOption> {
    let raw = args[i].raw();
    let (name, attached) = match raw.split_once('=') {
        Some((name, _)) => (name, Some(tail(&args[i], raw.find('=').unwrap_or(0) + 1))),
        None => (raw, None),
    };
    let known = |list: &[&str]| list.iter().any(|l| name.strip_prefix("--") == Some(*l));
    let mut last = i;
    let value = if known(spec.long_values) {
        attached.or_else(|| {
            last = i + 1;
            args.get(i + 1).cloned()
        })
    } else if known(spec.long_flags) {
        attached
    } else {
        return Err(UnknownOption(name.to_owned()));
    };
    parsed.options.push(Opt {
        name: name.to_owned(),
        value,
    });
    Ok(last)
}

/// `-abc`, `-n10`, `-n 10`; returns the index of the last word used.
fn short_cluster(
    args: &[Arg],
    i: usize,
    spec: &Spec,
    parsed: &mut Parsed,
) -> Result<usize, UnknownOption> {
    let raw = args[i].raw();
    for (at, c) in raw.char_indices().skip(1) {
        let name = format!("-{c}");
        let rest = at + c.len_utf8();
        if spec.short_values.contains(c) {
            let (value, last) = if rest < raw.len() {
                (Some(tail(&args[i], rest)), i)
            } else {
                (args.get(i + 1).cloned(), i + 1)
            };
            parsed.options.push(Opt { name, value });
            return Ok(last);
        }
        if spec.short_optional.contains(c) {
            let value = (rest < raw.len()).then(|| tail(&args[i], rest));
            parsed.options.push(Opt { name, value });
            return Ok(i);
        }
        if !spec.short_flags.contains(c) {
            return Err(UnknownOption(name));
        }
        parsed.options.push(Opt { name, value: None });
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Arg> {
        words
            .iter()
            .map(|w| Arg::Literal((*w).to_owned()))
            .collect()
    }

    const CP: Spec = Spec {
        short_values: "tS",
        short_flags: "rfv",
        short_optional: "",
        long_values: &["target-directory"],
        long_flags: &["backup"],
        stop_at_operand: false,
        ends_options: &[],
    };

    #[test]
    fn values_attached_or_separate_and_operands_anywhere() {
        let parsed = parse(&args(&["-rt", "dir", "a", "--backup=t", "b", "-Sx"]), &CP).unwrap();
        assert_eq!(
            parsed.values(&["-t"]).next(),
            Some(&Arg::Literal("dir".into()))
        );
        assert_eq!(parsed.operands, args(&["a", "b"]));
        assert!(parsed.has(&["-r", "--backup", "-S"]));
        let parsed = parse(&args(&["--target-directory=d", "--", "-x"]), &CP).unwrap();
        assert_eq!(
            parsed.values(&["--target-directory"]).next(),
            Some(&Arg::Literal("d".into()))
        );
        assert_eq!(parsed.operands, args(&["-x"]));
    }

    #[test]
    fn unknown_options_are_reported_and_wrappers_stop_at_the_command() {
        assert_eq!(
            parse(&args(&["-q", "a"]), &CP).unwrap_err(),
            UnknownOption("-q".into())
        );
        let wrapper = Spec {
            stop_at_operand: true,
            ..CP
        };
        let parsed = parse(&args(&["-r", "rm", "-f", "x"]), &wrapper).unwrap();
        assert_eq!(parsed.operands, args(&["rm", "-f", "x"]));
    }
}
