//! `mala init`: writes a mala.yaml from a preset and a few answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use mala_domain::{
    BUILTIN_COMMANDS, ConfigSources, FailureMode, FindingThreshold, FlagOverrides, PresetName,
    RawCodeReview, RawCommand, RawCommandRef, RawConfig, RawEvidenceCheck, RawRunEndTrigger,
    RawTriggers, ReviewerType, load_preset, parse_config, resolve,
};

use crate::cli::InitArgs;
use crate::failure::Failure;
use crate::output;

const FILE_NAME: &str = "mala.yaml";
const BACKUP_NAME: &str = "mala.yaml.bak";
const HEADER: &str = "# mala.yaml, written by `mala init`.\n\
                      # Every key is described in docs/config.md; check with `mala config check`.\n";

/// What the user chose, before it becomes YAML.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choices {
    pub(crate) preset: Option<PresetName>,
    /// Commands typed in by hand (no preset).
    pub(crate) commands: BTreeMap<String, String>,
    pub(crate) evidence: Vec<String>,
    pub(crate) review: Option<(ReviewerType, u32, FindingThreshold)>,
    pub(crate) run_end: Vec<String>,
}

pub(crate) fn run(args: &InitArgs, dir: &Path) -> Result<(), Failure> {
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let no_questions =
        args.preset.is_some() && (args.yes || (args.skip_evidence && args.skip_triggers));
    let choices = if no_questions {
        defaults(args)?
    } else if interactive {
        let mut input = stdin.lock();
        let mut prompt = io::stderr();
        ask(args, &mut input, &mut prompt)?
    } else {
        return Err(Failure::usage(
            "mala init asks questions, but standard input is not a terminal",
            Some("pass --preset NAME --yes (or --preset NAME --skip-evidence --skip-triggers)"),
        ));
    };
    let text = render(&choices)?;
    if args.dry_run {
        output::stdout(&text);
        return Ok(());
    }
    write(dir, &text)?;
    output::stdout(&text);
    Ok(())
}

/// The preset's commands, in mala's order.
fn preset_commands(preset: PresetName) -> Result<Vec<String>, Failure> {
    let file = load_preset(preset)?;
    Ok(BUILTIN_COMMANDS
        .iter()
        .filter(|name| file.raw.commands.contains_key(**name))
        .map(|name| (*name).to_owned())
        .collect())
}

/// Evidence defaults to test and lint; the run_end trigger to everything but setup and e2e.
fn default_evidence(commands: &[String]) -> Vec<String> {
    commands
        .iter()
        .filter(|c| *c == "test" || *c == "lint")
        .cloned()
        .collect()
}

fn default_run_end(commands: &[String]) -> Vec<String> {
    commands
        .iter()
        .filter(|c| *c != "setup" && *c != "e2e")
        .cloned()
        .collect()
}

fn defaults(args: &InitArgs) -> Result<Choices, Failure> {
    let preset = args.preset;
    let commands = match preset {
        Some(p) => preset_commands(p)?,
        None => Vec::new(),
    };
    Ok(Choices {
        preset,
        commands: BTreeMap::new(),
        evidence: if args.skip_evidence {
            Vec::new()
        } else {
            default_evidence(&commands)
        },
        review: None,
        run_end: if args.skip_triggers {
            Vec::new()
        } else {
            default_run_end(&commands)
        },
    })
}

/// Asks the questions on `output` and reads answers from `input`.
pub(crate) fn ask(
    args: &InitArgs,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<Choices, Failure> {
    let mut p = Prompter { input, output };
    let preset = match args.preset {
        Some(preset) => Some(preset),
        None => p.preset()?,
    };
    let mut custom = BTreeMap::new();
    let commands = if let Some(preset) = preset {
        preset_commands(preset)?
    } else {
        for name in BUILTIN_COMMANDS {
            let answer = p.line(&format!("Command for `{name}` (empty to skip): "))?;
            if !answer.is_empty() {
                custom.insert((*name).to_owned(), answer);
            }
        }
        if custom.is_empty() {
            return Err(Failure::usage(
                "a configuration needs at least one command",
                Some("run `mala init` again and give a command, or pick a preset"),
            ));
        }
        custom.keys().cloned().collect()
    };
    let evidence = if args.skip_evidence {
        Vec::new()
    } else {
        p.subset(
            "Require proof that these commands passed before an issue closes?",
            &commands,
            &default_evidence(&commands),
        )?
    };
    let review = if p.yes_no("Review each issue's commits with a code reviewer?", false)? {
        let reviewer = p.word(
            "Reviewer (agent_sdk runs a Claude session; cerberus needs the cerberus CLI)",
            ReviewerType::AgentSdk,
        )?;
        let retries = p.number("Follow-up rounds after blocking findings", 3)?;
        let threshold = p.word(
            "Lowest finding priority that fails a review (none, P3, P2, P1, P0)",
            FindingThreshold::None,
        )?;
        Some((reviewer, retries, threshold))
    } else {
        None
    };
    let run_end = if args.skip_triggers {
        Vec::new()
    } else {
        p.subset(
            "Run these commands once at the end of every run?",
            &commands,
            &default_run_end(&commands),
        )?
    };
    Ok(Choices {
        preset,
        commands: custom,
        evidence,
        review,
        run_end,
    })
}

struct Prompter<'a> {
    input: &'a mut dyn BufRead,
    output: &'a mut dyn Write,
}

const MAX_TRIES: usize = 3;

impl Prompter<'_> {
    fn line(&mut self, question: &str) -> Result<String, Failure> {
        let io_failure = |error| Failure::Io {
            path: "<terminal>".into(),
            action: "use",
            error,
        };
        write!(self.output, "{question}")
            .and_then(|()| self.output.flush())
            .map_err(io_failure)?;
        let mut answer = String::new();
        if self.input.read_line(&mut answer).map_err(io_failure)? == 0 {
            return Err(Failure::usage(
                "no answer (end of input); nothing was written",
                None,
            ));
        }
        Ok(answer.trim().to_owned())
    }

    /// Re-asks until `parse` accepts the answer, at most three times.
    fn until<T>(
        &mut self,
        question: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, Failure> {
        for _ in 0..MAX_TRIES {
            let answer = self.line(question)?;
            match parse(&answer) {
                Ok(value) => return Ok(value),
                Err(problem) => {
                    let _ = writeln!(self.output, "  {problem}");
                }
            }
        }
        Err(Failure::usage(
            "no valid answer after three tries; nothing was written",
            None,
        ))
    }

    fn preset(&mut self) -> Result<Option<PresetName>, Failure> {
        let mut menu = String::from("Presets:\n");
        for (i, name) in PresetName::ALL.iter().enumerate() {
            let _ = writeln!(menu, "  {}. {name}", i + 1);
        }
        let _ = writeln!(
            menu,
            "  {}. custom (type each command)",
            PresetName::ALL.len() + 1
        );
        let _ = write!(self.output, "{menu}");
        let count = PresetName::ALL.len() + 1;
        self.until(&format!("Choose 1-{count}: "), |answer| {
            if let Ok(name) = answer.parse::<PresetName>() {
                return Ok(Some(name));
            }
            if answer == "custom" {
                return Ok(None);
            }
            match answer.parse::<usize>() {
                Ok(n) if (1..count).contains(&n) => Ok(Some(PresetName::ALL[n - 1])),
                Ok(n) if n == count => Ok(None),
                _ => Err(format!(
                    "answer a number from 1 to {count}, or a preset name"
                )),
            }
        })
    }

    fn yes_no(&mut self, question: &str, default: bool) -> Result<bool, Failure> {
        let choices = if default { "[Y/n]" } else { "[y/N]" };
        self.until(&format!("{question} {choices} "), |answer| {
            match answer.to_ascii_lowercase().as_str() {
                "" => Ok(default),
                "y" | "yes" => Ok(true),
                "n" | "no" => Ok(false),
                _ => Err("answer y or n".to_owned()),
            }
        })
    }

    /// Yes takes `default`, no takes nothing, or a comma-separated list of `options`.
    fn subset(
        &mut self,
        question: &str,
        options: &[String],
        default: &[String],
    ) -> Result<Vec<String>, Failure> {
        let question = format!(
            "{question}\n  [{}] (y = these, n = none, or a list from: {}) ",
            default.join(", "),
            options.join(", ")
        );
        self.until(&question, |answer| {
            match answer.to_ascii_lowercase().as_str() {
                "" | "y" | "yes" => Ok(default.to_vec()),
                "n" | "no" | "none" => Ok(Vec::new()),
                _ => {
                    let mut picked = Vec::new();
                    for name in answer.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        if !options.iter().any(|o| o == name) {
                            return Err(format!("`{name}` is not one of: {}", options.join(", ")));
                        }
                        if !picked.iter().any(|p| p == name) {
                            picked.push(name.to_owned());
                        }
                    }
                    Ok(picked)
                }
            }
        })
    }

    fn word<T: std::str::FromStr + std::fmt::Display + Copy>(
        &mut self,
        question: &str,
        default: T,
    ) -> Result<T, Failure>
    where
        T::Err: std::fmt::Display,
    {
        self.until(&format!("{question} [{default}] "), |answer| {
            if answer.is_empty() {
                Ok(default)
            } else {
                answer.parse().map_err(|e: T::Err| e.to_string())
            }
        })
    }

    fn number(&mut self, question: &str, default: u32) -> Result<u32, Failure> {
        self.until(&format!("{question} [{default}] "), |answer| {
            if answer.is_empty() {
                Ok(default)
            } else {
                answer
                    .parse()
                    .map_err(|_| "answer a whole number".to_owned())
            }
        })
    }
}

/// The YAML for `choices`, checked by loading it back.
pub(crate) fn render(choices: &Choices) -> Result<String, Failure> {
    let raw = RawConfig {
        preset: choices.preset,
        commands: choices
            .commands
            .iter()
            .map(|(k, v)| (k.clone(), RawCommand::Shell(v.clone())))
            .collect(),
        evidence_check: (!choices.evidence.is_empty()).then(|| RawEvidenceCheck {
            required: choices.evidence.clone(),
            protected_files: None,
        }),
        per_issue_review: choices
            .review
            .map(|(reviewer, retries, threshold)| RawCodeReview {
                enabled: Some(true),
                reviewer_type: Some(reviewer),
                max_retries: Some(retries),
                finding_threshold: Some(threshold),
                ..RawCodeReview::default()
            }),
        validation_triggers: (!choices.run_end.is_empty()).then(|| RawTriggers {
            run_end: Some(RawRunEndTrigger {
                failure_mode: FailureMode::Continue,
                max_retries: None,
                commands: choices
                    .run_end
                    .iter()
                    .cloned()
                    .map(RawCommandRef::Name)
                    .collect(),
                code_review: None,
                fire_on: None,
            }),
            ..RawTriggers::default()
        }),
        ..RawConfig::default()
    };
    let body = serde_yaml::to_string(&raw).map_err(|e| Failure::Other {
        message: format!("could not write YAML: {e}"),
        hint: None,
    })?;
    let text = format!("{HEADER}{body}");
    // What we write must load back; anything else is a bug in mala, not the user's fault.
    let file = parse_config(Path::new(FILE_NAME), &text)?;
    resolve(ConfigSources {
        file: Some(&file),
        env: &BTreeMap::new(),
        flags: &FlagOverrides::default(),
    })?;
    Ok(text)
}

/// Backs up an existing mala.yaml, then writes the new one atomically.
fn write(dir: &Path, text: &str) -> Result<(), Failure> {
    let target = dir.join(FILE_NAME);
    let io = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |error| Failure::Io {
            path,
            action,
            error,
        }
    };
    if target.exists() {
        let backup = dir.join(BACKUP_NAME);
        std::fs::copy(&target, &backup).map_err(io(&backup, "back up mala.yaml to"))?;
        output::note(&format!(
            "backed up the existing {FILE_NAME} to {BACKUP_NAME}"
        ));
    }
    let temporary = dir.join(".mala.yaml.tmp");
    std::fs::write(&temporary, text).map_err(io(&temporary, "write"))?;
    std::fs::rename(&temporary, &target).map_err(io(&target, "write"))?;
    output::note(&format!("wrote {FILE_NAME}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(preset: Option<PresetName>) -> InitArgs {
        InitArgs {
            dry_run: true,
            yes: false,
            preset,
            skip_evidence: false,
            skip_triggers: false,
        }
    }

    fn answer(args: &InitArgs, script: &str) -> (Result<Choices, Failure>, String) {
        let mut input = script.as_bytes();
        let mut shown = Vec::new();
        let choices = ask(args, &mut input, &mut shown);
        (choices, String::from_utf8(shown).unwrap())
    }

    #[test]
    fn a_preset_with_default_answers_takes_the_defaults() {
        let (choices, shown) = answer(&args(None), "rust\ny\nn\ny\n");
        let choices = choices.unwrap();
        assert!(shown.contains("4. rust"), "{shown}");
        assert_eq!(choices.preset, Some(PresetName::Rust));
        assert_eq!(choices.evidence, vec!["test", "lint"]);
        assert_eq!(choices.run_end, vec!["test", "lint", "format"]);
        assert_eq!(choices.review, None);
        render(&choices).unwrap();
    }

    #[test]
    fn custom_commands_and_a_review_are_asked_for() {
        let script = "6\n\n\nmake test\n\n\n\n\ntest\ny\ncerberus\n2\nP1\nn\n";
        let (choices, _) = answer(&args(None), script);
        let choices = choices.unwrap();
        assert_eq!(choices.preset, None);
        assert_eq!(
            choices.commands.get("test").map(String::as_str),
            Some("make test")
        );
        assert_eq!(choices.evidence, vec!["test"]);
        assert_eq!(
            choices.review,
            Some((ReviewerType::Cerberus, 2, FindingThreshold::P1))
        );
        assert!(choices.run_end.is_empty());
        let text = render(&choices).unwrap();
        assert!(text.contains("make test"), "{text}");
    }

    #[test]
    fn wrong_answers_are_asked_again_then_refused() {
        let (choices, shown) = answer(&args(None), "9\nrust\nlint,nope\nlint\nn\nn\n");
        assert_eq!(choices.unwrap().evidence, vec!["lint"]);
        assert!(shown.contains("answer a number from 1 to 6"), "{shown}");
        assert!(shown.contains("`nope` is not one of"), "{shown}");

        let (choices, _) = answer(&args(None), "x\ny\nz\n");
        assert!(matches!(choices, Err(Failure::Usage { .. })));
    }

    #[test]
    fn end_of_input_writes_nothing() {
        let (choices, _) = answer(&args(Some(PresetName::Go)), "");
        assert!(matches!(choices, Err(Failure::Usage { .. })));
    }
}
