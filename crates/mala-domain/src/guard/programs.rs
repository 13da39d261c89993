//! Inline programs (`python3 -c`, `perl -e`, `node -e`, `ruby -e`, `php -r`,
//! `deno eval`). The guard cannot parse programs; it reads them
//! conservatively: a program that names one of its language's primitives for
//! writing, removing or renaming files, or for running other commands or
//! code, is refused, and one that only reads and prints is not. A script file
//! (`python3 script.py`) is not read at all; the working-tree observer sees
//! what it changes.

use super::shell::Arg;

/// The languages the guard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Python,
    Perl,
    Ruby,
    Node,
    Php,
}

/// What an interpreter's words say: its inline programs, and for `perl -i` /
/// `ruby -i` the files it edits in place.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inline {
    pub(crate) code: Vec<Arg>,
    pub(crate) in_place: bool,
    pub(crate) files: Vec<Arg>,
}

/// The language of an interpreter, by program name.
pub(crate) fn language(name: &str) -> Option<Lang> {
    Some(match name {
        "perl" => Lang::Perl,
        "ruby" => Lang::Ruby,
        "node" | "nodejs" | "bun" | "deno" => Lang::Node,
        "php" => Lang::Php,
        python if python.starts_with("python") => Lang::Python,
        _ => return None,
    })
}

/// The inline programs an interpreter runs.
pub(crate) fn inline(name: &str, args: &[Arg]) -> Inline {
    match name {
        "perl" => clustered(args, "IMm"),
        "ruby" => clustered(args, "IrCE"),
        "php" => flagged(args, &["-r", "-B", "-R", "-E"], &["-d", "-c", "-z", "-f"]),
        "deno" => deno(args),
        "node" | "nodejs" | "bun" => flagged(
            args,
            &["-e", "--eval", "-p", "--print", "-pe", "-ep"],
            &[
                "-r",
                "--require",
                "--import",
                "--loader",
                "-C",
                "--conditions",
                "--input-type",
            ],
        ),
        _ => python(args),
    }
}

/// `python [-flags] [-W arg] [-X opt] -c CODE`; `-m` and a script file end it.
fn python(args: &[Arg]) -> Inline {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let raw = arg.raw();
        if !raw.starts_with('-') || raw == "-" || raw == "--" {
            break;
        }
        for (at, c) in raw
            .char_indices()
            .skip(1)
            .filter(|_| !raw.starts_with("--"))
        {
            let rest = &raw[at + 1..];
            let value = || {
                if rest.is_empty() {
                    args.get(i + 1).cloned()
                } else {
                    Some(same_kind(arg, rest))
                }
            };
            match c {
                'c' => {
                    return Inline {
                        code: value().into_iter().collect(),
                        ..Inline::default()
                    };
                }
                'm' => return Inline::default(),
                'W' | 'X' => {
                    i += usize::from(rest.is_empty());
                    break;
                }
                _ => {}
            }
        }
        i += 1;
    }
    Inline::default()
}

/// Perl's and Ruby's options: `-i[ext]` takes the rest of its word, `-e`
/// takes the next word (or the rest), `valued` letters take a value, and
/// `-l`, `-0`, `-F`… take the rest of their word.
fn clustered(args: &[Arg], valued: &str) -> Inline {
    let mut call = Inline::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let raw = arg.raw();
        if raw == "--" {
            i += 1;
            break;
        }
        if !raw.starts_with('-') || raw == "-" {
            break;
        }
        let mut skip_digits = false;
        for (at, c) in raw.char_indices().skip(1) {
            // `-0777`, `-0x1ff`, `-l015`: digits of the option before, then more options.
            if skip_digits && (c.is_ascii_digit() || c == 'x') {
                continue;
            }
            skip_digits = matches!(c, '0' | 'l');
            if skip_digits {
                continue;
            }
            let rest = &raw[at + c.len_utf8()..];
            let takes_next = c == 'e' || c == 'E' || valued.contains(c);
            if takes_next {
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i).cloned()
                } else {
                    Some(same_kind(arg, rest))
                };
                if c == 'e' || (c == 'E' && !valued.contains('E')) {
                    call.code.extend(value);
                }
                break;
            }
            if c == 'i' {
                call.in_place = true;
                break;
            }
            if "FCdDxVTWK".contains(c) {
                break;
            }
        }
        i += 1;
    }
    let operands = args.get(i..).unwrap_or(&[]);
    // Without -e the first operand is the script file.
    let skip = usize::from(call.code.is_empty());
    call.files = operands.iter().skip(skip).cloned().collect();
    call
}

/// `node -e CODE`, `php -r CODE`: options given whole, `--eval=CODE` too.
fn flagged(args: &[Arg], code: &[&str], valued: &[&str]) -> Inline {
    let mut call = Inline::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let raw = arg.raw();
        if !raw.starts_with('-') || raw == "--" {
            break;
        }
        let (name, attached) = match raw.split_once('=') {
            Some((name, value)) if raw.starts_with("--") => (name, Some(same_kind(arg, value))),
            _ => (raw, None),
        };
        if code.contains(&name) {
            call.code.extend(attached.or_else(|| {
                i += 1;
                args.get(i).cloned()
            }));
        } else if name == "-f" && valued.contains(&"-f") {
            break;
        } else if valued.contains(&name) && attached.is_none() {
            i += 1;
        }
        i += 1;
    }
    call
}

/// `deno eval [options] CODE`; other subcommands run files.
fn deno(args: &[Arg]) -> Inline {
    let Some(at) = args.iter().position(|a| !a.raw().starts_with('-')) else {
        return Inline::default();
    };
    if args[at].raw() != "eval" {
        return Inline::default();
    }
    let code = args[at + 1..]
        .iter()
        .find(|a| !a.raw().starts_with('-'))
        .cloned();
    Inline {
        code: code.into_iter().collect(),
        ..Inline::default()
    }
}

/// Whether an interpreter reads its program from stdin: no inline program,
/// no module (`-m`), and no script file, or `-` in its place.
pub(crate) fn reads_program_from_stdin(name: &str, args: &[Arg]) -> bool {
    if !inline(name, args).code.is_empty() {
        return false;
    }
    let valued: &[&str] = match language(name) {
        Some(Lang::Python) => &["-W", "-X"],
        Some(Lang::Perl) => &["-I", "-M", "-m"],
        Some(Lang::Ruby) => &["-I", "-r", "-C", "-E"],
        Some(Lang::Node) => &[
            "-r",
            "--require",
            "--import",
            "--loader",
            "-C",
            "--conditions",
            "--input-type",
        ],
        Some(Lang::Php) => &["-d", "-c", "-z"],
        None => &[],
    };
    let mut i = 0;
    while let Some(raw) = args.get(i).map(Arg::raw) {
        if raw == "-" || raw == "--" {
            return raw == "-" || args.get(i + 1).is_none_or(|a| a.raw() == "-");
        }
        if !raw.starts_with('-') {
            return false;
        }
        let python_module = language(name) == Some(Lang::Python)
            && raw.starts_with('-')
            && !raw.starts_with("--")
            && raw.contains('m');
        if python_module || matches!(raw, "-v" | "--version" | "-V" | "-h" | "--help") {
            return false;
        }
        i += 1 + usize::from(valued.contains(&raw));
    }
    true
}

fn same_kind(arg: &Arg, text: &str) -> Arg {
    match arg {
        Arg::Literal(_) => Arg::Literal(text.to_owned()),
        Arg::Dynamic(_) => Arg::Dynamic(text.to_owned()),
    }
}

/// Names matched anywhere (the module or method is enough).
const PYTHON_NEEDLES: &[&str] = &[
    "write_text",
    "write_bytes",
    ".unlink(",
    ".rmdir(",
    ".rename(",
    ".touch(",
    ".chmod(",
    ".symlink_to(",
    ".hardlink_to(",
    "os.remove",
    "os.unlink",
    "os.rmdir",
    "os.removedirs",
    "os.rename",
    "os.replace",
    "os.truncate",
    "os.system",
    "os.popen",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.open",
    "os.link",
    "os.symlink",
    "os.chmod",
    "os.chown",
    "os.utime",
    "subprocess",
    "shutil",
    "fileinput",
    "extractall",
    "urlretrieve",
    "exec(",
    "eval(",
    "compile(",
    "__import__",
    "importlib",
    "getattr(",
    "ctypes",
    "pty.",
];
const PERL_NEEDLES: &[&str] = &[
    "`",
    "qx",
    "File::Copy",
    "File::Path",
    "$^I",
    "rmtree",
    "remove_tree",
];
const RUBY_NEEDLES: &[&str] = &[
    "`",
    "%x",
    "File.write",
    "File.delete",
    "File.unlink",
    "File.rename",
    "File.truncate",
    "File.chmod",
    "File.chown",
    "File.symlink",
    "File.link",
    "File.new",
    "IO.write",
    "IO.popen",
    "FileUtils",
    "Dir.rmdir",
    "Dir.delete",
    "Dir.unlink",
    "Open3",
    "Kernel.",
    "syscall",
    ".send(",
    "instance_eval",
    "class_eval",
    "open(\"|",
    "open('|",
];
const NODE_NEEDLES: &[&str] = &[
    "writeFile",
    "appendFile",
    "createWriteStream",
    "rmSync",
    "rm(",
    "unlink",
    "rmdir",
    "rename",
    "copyFile",
    "cpSync",
    "cp(",
    "truncate",
    "symlink",
    "link(",
    "linkSync",
    "chmod",
    "chown",
    "utimes",
    "child_process",
    "execSync",
    "exec(",
    "execFile",
    "spawn",
    "fork(",
    "eval(",
    "Function(",
    "import(",
    "process.binding",
    "Deno.write",
    "Deno.remove",
    "Deno.rename",
    "Deno.run",
    "Deno.Command",
    "Deno.truncate",
    "Deno.copyFile",
    "Deno.open",
    "Deno.create",
    "Deno.symlink",
    "Deno.link",
    "Deno.chmod",
    "Deno.chown",
    "Bun.write",
    "Bun.spawn",
    "Bun.$",
];
const PHP_NEEDLES: &[&str] = &[
    "`",
    "file_put_contents",
    "unlink",
    "rename",
    "rmdir",
    "copy(",
    "touch(",
    "chmod",
    "chown",
    "system(",
    "exec(",
    "shell_exec",
    "passthru",
    "proc_open",
    "popen",
    "eval(",
    "ftruncate",
    "symlink",
    "link(",
    "move_uploaded_file",
    "pcntl_exec",
];

fn needles(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::Python => PYTHON_NEEDLES,
        Lang::Perl => PERL_NEEDLES,
        Lang::Ruby => RUBY_NEEDLES,
        Lang::Node => NODE_NEEDLES,
        Lang::Php => PHP_NEEDLES,
    }
}

/// Functions that count only when called (`unlink $f`, `system("…")`), so
/// that `/link/` or `print "rename"` are not read as calls.
fn calls(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::Perl => &[
            "unlink", "rename", "rmdir", "truncate", "chmod", "chown", "utime", "link", "symlink",
            "system", "exec", "sysopen", "copy", "move", "eval", "do", "require",
        ],
        Lang::Ruby => &["system", "exec", "spawn", "eval", "fork", "syscall"],
        _ => &[],
    }
}

/// Functions whose mode argument says whether they write.
fn openers(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::Python => &["open("],
        Lang::Ruby => &["File.open(", "open("],
        Lang::Node => &["open(", "openSync("],
        Lang::Php => &["fopen("],
        Lang::Perl => &[],
    }
}

fn ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Where `needle` occurs in `code` as a name (not inside a longer name).
fn occurrences<'a>(code: &'a str, needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(needle)
        .map(|(at, _)| at)
        .filter(move |&at| {
            let before = code[..at].chars().next_back();
            !(needle.starts_with(ident) && before.is_some_and(ident))
        })
}

/// The primitive of `lang` that `code` uses to change files or run
/// commands, if any.
pub(crate) fn writes(lang: Lang, code: &str) -> Option<String> {
    let code = &match lang {
        Lang::Python => python_harmless(code),
        _ => code.to_owned(),
    };
    if let Some(found) = needles(lang)
        .iter()
        .find(|n| occurrences(code, n).next().is_some())
    {
        return Some((*found).to_owned());
    }
    for name in calls(lang) {
        for at in occurrences(code, name) {
            let after = code[at + name.len()..].trim_start();
            let called = after.starts_with(['(', '$', '"', '\'', '@']);
            if called && !code[at + name.len()..].starts_with(ident) {
                return Some((*name).to_owned());
            }
        }
    }
    if lang == Lang::Perl {
        return perl_open(code);
    }
    openers(lang).iter().find_map(|opener| {
        occurrences(code, opener)
            .any(|at| !read_only_mode(&code[at + opener.len()..]))
            .then(|| format!("{opener}…) with a write mode"))
    })
}

/// Python with the uses that neither write nor run blanked out: importing
/// a module alone (`import subprocess`, not `import subprocess as s`),
/// `shutil.which`, `importlib.metadata`.
fn python_harmless(code: &str) -> String {
    let mut text = code.to_owned();
    for harmless in [
        "shutil.which",
        "shutil.get_terminal_size",
        "shutil.disk_usage",
        "importlib.metadata",
        "importlib.util.find_spec",
    ] {
        text = text.replace(harmless, " ");
    }
    for module in ["subprocess", "shutil", "importlib"] {
        let statement = format!("import {module}");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(&statement) {
            let after = &rest[at + statement.len()..];
            let starts = rest[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == ';');
            let ends = after
                .trim_start_matches([' ', '\t'])
                .chars()
                .next()
                .is_none_or(|c| c == ';' || c == '\n');
            out.push_str(&rest[..at]);
            out.push_str(if starts && ends { " " } else { &statement });
            rest = after;
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// Perl's `open`: a mode or path with `>`, `+<` or `|` writes or runs.
fn perl_open(code: &str) -> Option<String> {
    occurrences(code, "open").find_map(|at| {
        let after = &code[at + 4..];
        if after.starts_with(ident) {
            return None;
        }
        let statement = after.split(';').next().unwrap_or("");
        statement
            .contains(['>', '|'])
            .then(|| "open with `>` or `|`".to_owned())
            .or_else(|| {
                statement
                    .contains("+<")
                    .then(|| "open with `+<`".to_owned())
            })
    })
}

/// Whether the arguments of an open call (the text after its `(`) ask only
/// to read: no mode, or a quoted mode of `r`, `b`, `t` alone.
fn read_only_mode(text: &str) -> bool {
    let args = call_arguments(text);
    let mode = args
        .iter()
        .map(|a| a.trim())
        .find_map(|a| {
            a.strip_prefix("mode")
                .map(str::trim_start)
                .and_then(|m| m.strip_prefix('='))
        })
        .or_else(|| {
            args.iter()
                .skip(1)
                .map(|a| a.trim())
                .find(|a| !is_keyword_argument(a))
        });
    let Some(mode) = mode.map(str::trim) else {
        return true;
    };
    let unquoted = mode
        .strip_prefix(['"', '\''])
        .and_then(|m| m.strip_suffix(['"', '\'']));
    unquoted.is_some_and(|m| !m.is_empty() && m.chars().all(|c| "rbtUs".contains(c)))
}

fn is_keyword_argument(arg: &str) -> bool {
    arg.split_once('=')
        .is_some_and(|(name, _)| !name.trim().is_empty() && name.trim().chars().all(ident))
}

/// The top-level arguments of a call, up to its closing `)`.
fn call_arguments(text: &str) -> Vec<&str> {
    let mut args = Vec::new();
    let (mut depth, mut quote, mut start) = (0usize, None, 0);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') if depth == 0 => {
                args.push(&text[start..i]);
                return args;
            }
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                args.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(&text[start..]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_programs_pass_and_writing_ones_are_named() {
        for (lang, code) in [
            (Lang::Python, "print(1)"),
            (
                Lang::Python,
                "import json,sys; print(json.load(sys.stdin)[\"x\"])",
            ),
            (Lang::Python, "print(open('f').read())"),
            (Lang::Python, "print(open('f', encoding='utf-8').read())"),
            (Lang::Python, "print(open('f', 'rb').read())"),
            (Lang::Node, "console.log(1)"),
            (
                Lang::Node,
                "console.log(require('fs').readFileSync('f', 'utf8'))",
            ),
            (Lang::Perl, "print if /link/"),
            (Lang::Perl, "open(my $f, '<', 'x'); print <$f>"),
            (Lang::Ruby, "puts File.read('x')"),
            (Lang::Php, "echo fread(fopen('x', 'r'), 10);"),
        ] {
            assert_eq!(writes(lang, code), None, "{code}");
        }
        for (lang, code) in [
            (Lang::Python, "open('f', 'w').write('x')"),
            (Lang::Python, "open('f', mode='a')"),
            (
                Lang::Python,
                "import pathlib; pathlib.Path('f').write_text('x')",
            ),
            (Lang::Python, "import os; os.remove('f')"),
            (Lang::Python, "import subprocess; subprocess.run(['ls'])"),
            (Lang::Perl, "unlink 'f'"),
            (Lang::Perl, "open(F, '>', 'x')"),
            (Lang::Perl, "system('rm x')"),
            (Lang::Node, "require('fs').writeFileSync('f', 'x')"),
            (Lang::Node, "require('child_process').execSync('ls')"),
            (Lang::Ruby, "File.write('f', 'x')"),
            (Lang::Ruby, "system 'rm f'"),
            (Lang::Php, "file_put_contents('f', 'x');"),
            (Lang::Php, "fopen('f', 'w');"),
        ] {
            assert!(writes(lang, code).is_some(), "{code}");
        }
    }
}
