//! The programs of `sed` and `awk`, read for what writes files or runs
//! commands: sed's `w`/`W` commands and `s///w` flag (their files are
//! written), `e` and `s///e` (they run commands); awk's `print > "file"`
//! (written), `system()` and pipes (they run commands).

use super::Refusal;

/// The index after the closing `delimiter` (escapes skipped).
fn skip_delimited(chars: &[char], mut i: usize, delimiter: char) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == delimiter => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn rest_of_line(chars: &[char], from: usize) -> (String, usize) {
    let end = chars[from..]
        .iter()
        .position(|c| *c == '\n')
        .map_or(chars.len(), |p| from + p);
    (
        chars[from..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_owned(),
        end,
    )
}

const SED_E: &str = "refused: this sed script runs a command (the `e` command or the `s///e` flag), which mala cannot check. \
                     Run the command itself";

/// The files a sed script writes with `w`, `W` and `s///w`; a script that
/// runs commands is refused.
pub(super) fn sed_writes(script: &str) -> Result<Vec<String>, Refusal> {
    let chars: Vec<char> = script.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            c if c.is_whitespace() || ";{}!,~+$".contains(c) || c.is_ascii_digit() => i += 1,
            '/' => i = skip_delimited(&chars, i + 1, '/'),
            '\\' => {
                i = chars
                    .get(i + 1)
                    .map_or(i + 1, |d| skip_delimited(&chars, i + 2, *d));
            }
            's' | 'y' => {
                let Some(&d) = chars.get(i + 1) else { break };
                i = skip_delimited(&chars, skip_delimited(&chars, i + 2, d), d);
                while let Some(&flag) = chars.get(i).filter(|f| f.is_ascii_alphanumeric()) {
                    if c == 's' && flag == 'e' {
                        return Err(SED_E.to_owned());
                    }
                    if c == 's' && flag == 'w' {
                        let (file, end) = rest_of_line(&chars, i + 1);
                        out.push(file);
                        i = end;
                        break;
                    }
                    i += 1;
                }
            }
            'w' | 'W' => {
                let (file, end) = rest_of_line(&chars, i + 1);
                out.push(file);
                i = end;
            }
            'e' => return Err(SED_E.to_owned()),
            'a' | 'i' | 'c' | 'r' | 'R' => i = rest_of_line(&chars, i + 1).1,
            'b' | 't' | 'T' | ':' => {
                i += 1;
                while chars.get(i).is_some_and(|c| *c != ';' && *c != '\n') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// A token of an awk program: a string literal, a regex literal, or a character.
#[derive(Debug, PartialEq)]
enum Tok {
    Str(String),
    Re,
    Char(char),
}

fn awk_tokens(program: &str) -> Vec<Tok> {
    let chars: Vec<char> = program.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let regex_may_start = out
            .iter()
            .rev()
            .find(|t| !matches!(t, Tok::Char(c) if c.is_whitespace()))
            .is_none_or(|t| matches!(t, Tok::Char(p) if "(,~!&|{};\n".contains(*p)));
        if c == '"' {
            let end = skip_delimited(&chars, i + 1, '"');
            let text: String = chars[i + 1..end.saturating_sub(1).max(i + 1)]
                .iter()
                .collect();
            out.push(Tok::Str(text));
            i = end;
        } else if c == '/' && regex_may_start {
            i = skip_delimited(&chars, i + 1, '/');
            out.push(Tok::Re);
        } else {
            out.push(Tok::Char(c));
            i += 1;
        }
    }
    out
}

const AWK_RUNS: &str = "refused: this awk program runs a command (system(), or a pipe to or from a command), which mala cannot check. \
                        Run the command itself, and let awk only read and print";

/// The files an awk program writes with `print > "file"`; a program that
/// runs commands, or prints to a file only known at run time, is refused.
pub(super) fn awk_writes(program: &str) -> Result<Vec<String>, Refusal> {
    let squeezed: String = program.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed.contains("system(") {
        return Err(AWK_RUNS.to_owned());
    }
    let tokens = awk_tokens(program);
    let mut out = Vec::new();
    let (mut statement, mut depth) = (String::new(), 0usize);
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        i += 1;
        let Tok::Char(c) = token else { continue };
        match c {
            '|' if tokens.get(i) == Some(&Tok::Char('|')) => i += 1,
            '|' => return Err(AWK_RUNS.to_owned()),
            '{' | '}' | ';' | '\n' => {
                statement.clear();
                depth = 0;
            }
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '>' if depth == 0 && matches!(statement.trim_start(), s if s.starts_with("print")) => {
                if tokens.get(i) == Some(&Tok::Char('>')) {
                    i += 1;
                }
                while matches!(tokens.get(i), Some(Tok::Char(c)) if c.is_whitespace()) {
                    i += 1;
                }
                match tokens.get(i) {
                    Some(Tok::Str(file)) => out.push(file.clone()),
                    _ => {
                        return Err(
                            "refused: this awk program prints to a file named only when it runs, so mala cannot check that you hold its lock. \
                             Print to stdout and redirect it to a literal path"
                                .to_owned(),
                        );
                    }
                }
            }
            c => statement.push(*c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sed_scripts_name_their_writes_and_commands() {
        assert_eq!(sed_writes("s/a/b/g").unwrap(), Vec::<String>::new());
        assert_eq!(sed_writes("/x/w out.txt").unwrap(), vec!["out.txt"]);
        assert_eq!(sed_writes("s/a/b/gw f").unwrap(), vec!["f"]);
        assert_eq!(sed_writes("1d;$W last").unwrap(), vec!["last"]);
        assert!(sed_writes("s/a/b/e").is_err());
        assert!(sed_writes("1e rm f").is_err());
        assert!(sed_writes("s/e/w/").unwrap().is_empty());
        assert!(sed_writes("/begin/,/end/p").unwrap().is_empty());
    }

    #[test]
    fn awk_programs_name_their_writes_and_commands() {
        assert!(awk_writes("{print $1}").unwrap().is_empty());
        assert!(awk_writes("$1 > 3 {print}").unwrap().is_empty());
        assert!(awk_writes("/a|b/ {print}").unwrap().is_empty());
        assert!(awk_writes("NR>1 || x {print}").unwrap().is_empty());
        assert_eq!(awk_writes("{print > \"f.txt\"}").unwrap(), vec!["f.txt"]);
        assert_eq!(
            awk_writes("{printf \"%s\", $1 >> \"g\"}").unwrap(),
            vec!["g"]
        );
        assert!(awk_writes("{print > $2}").is_err());
        assert!(awk_writes("{system(\"rm f\")}").is_err());
        assert!(awk_writes("{print | \"sh\"}").is_err());
        assert!(awk_writes("BEGIN {\"date\" | getline d}").is_err());
    }
}
