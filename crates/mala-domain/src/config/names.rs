//! Closed sets of words that mala.yaml, `MALA_*` variables and flags accept.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A word that is not one of an enum's accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    pub got: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown value `{}`, expected one of ", self.got)?;
        f.write_str(&self.expected.join(", "))
    }
}

impl std::error::Error for UnknownWord {}

/// Defines an enum spelled as fixed words in YAML, env and flags.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(UnknownWord { got: s.to_owned(), expected: Self::WORDS }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct WordVisitor;
                impl Visitor<'_> for WordVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "one of {}", $name::WORDS.join(", "))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(|_| E::unknown_variant(v, $name::WORDS))
                    }
                }
                deserializer.deserialize_str(WordVisitor)
            }
        }
    };
}

word_enum!(
    /// A preset shipped with mala.
    PresetName {
        PythonUv = "python-uv",
        NodeNpm = "node-npm",
        Go = "go",
        Rust = "rust",
        Gleam = "gleam",
    }
);

word_enum!(
    /// Which agent CLI implements issues.
    Coder { Claude = "claude", Amp = "amp", Codex = "codex" }
);

word_enum!(
    /// Where agents work: all in the shared checkout, or each in a git
    /// worktree of its own.
    Isolation { Shared = "shared", Worktree = "worktree" }
);

word_enum!(
    /// How the merge queue puts an issue's branch on the target's head.
    MergeStrategy { Rebase = "rebase", Merge = "merge" }
);

word_enum!(
    /// Amp's operating mode.
    AmpMode { Smart = "smart", Rush = "rush", Deep = "deep" }
);

word_enum!(
    /// How hard the model thinks.
    Effort { Low = "low", Medium = "medium", High = "high", Xhigh = "xhigh", Max = "max" }
);

word_enum!(
    /// Which Claude Code settings files a session loads.
    SettingsSource { Local = "local", Project = "project", User = "user" }
);

word_enum!(
    /// Codex's approval policy.
    CodexApprovalPolicy {
        Never = "never",
        OnRequest = "on-request",
        OnFailure = "on-failure",
        Untrusted = "untrusted",
    }
);

word_enum!(
    /// Codex's sandbox.
    CodexSandbox {
        ReadOnly = "read-only",
        WorkspaceWrite = "workspace-write",
        DangerFullAccess = "danger-full-access",
    }
);

word_enum!(
    /// Which reviewer runs a code review.
    ReviewerType { Cerberus = "cerberus", AgentSdk = "agent_sdk" }
);

word_enum!(
    /// What a failed validation does to the run.
    FailureMode { Abort = "abort", Continue = "continue", Remediate = "remediate" }
);

word_enum!(
    /// The lowest finding priority that fails a review (`none`: never fail).
    FindingThreshold { None = "none", P3 = "P3", P2 = "P2", P1 = "P1", P0 = "P0" }
);

impl FindingThreshold {
    /// Whether a finding of `priority` fails a trigger's review: at the
    /// threshold or more urgent; `none` fails nothing.
    pub fn fails(self, priority: u8) -> bool {
        match self {
            Self::None => false,
            Self::P3 => priority <= 3,
            Self::P2 => priority <= 2,
            Self::P1 => priority <= 1,
            Self::P0 => priority == 0,
        }
    }

    /// The highest priority number that blocks a per-issue review: findings
    /// at this priority or more urgent go back to the agent. `none` keeps the
    /// original's fixed rule, P0 and P1 block; any other threshold moves the
    /// line (the original ignored it for per-issue review).
    pub fn per_issue_blocking_priority(self) -> u8 {
        match self {
            Self::P0 => 0,
            Self::None | Self::P1 => 1,
            Self::P2 => 2,
            Self::P3 => 3,
        }
    }
}

word_enum!(
    /// Where a cumulative review starts.
    ReviewBaseline { SinceRunStart = "since_run_start", SinceLastReview = "since_last_review" }
);

word_enum!(
    /// Which epics fire the epic_completion trigger.
    EpicDepth { TopLevel = "top_level", All = "all" }
);

word_enum!(
    /// Which outcomes fire a trigger.
    FireOn { Success = "success", Failure = "failure", Both = "both" }
);

word_enum!(
    /// Model of the agent reviewer.
    AgentSdkModel { Sonnet = "sonnet", Opus = "opus", Haiku = "haiku" }
);

word_enum!(
    /// Where issues are read and written: br when installed, else the embedded JSONL store.
    TrackerKind { Auto = "auto", Br = "br", Jsonl = "jsonl" }
);

word_enum!(
    /// What a run does when the required checks already fail before any
    /// agent works (`baseline:`).
    BaselinePolicy { Warn = "warn", Stop = "stop", FileIssue = "file_issue", Off = "off" }
);

/// Built-in command names, in the order mala runs and shows them.
pub const BUILTIN_COMMANDS: &[&str] = &[
    "setup",
    "build",
    "test",
    "lint",
    "format",
    "typecheck",
    "e2e",
];

/// Whether `name` is a valid custom command name: `[A-Za-z_][A-Za-z0-9_-]*`.
pub fn is_valid_command_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_reject_strangers() {
        for coder in Coder::ALL {
            assert_eq!(coder.as_str().parse::<Coder>(), Ok(*coder));
        }
        let err = "claud".parse::<Coder>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown value `claud`, expected one of claude, amp, codex"
        );
    }

    #[test]
    fn the_finding_threshold_moves_the_per_issue_blocking_line() {
        let line: Vec<u8> = FindingThreshold::ALL
            .iter()
            .map(|t| t.per_issue_blocking_priority())
            .collect();
        // none, P3, P2, P1, P0: unset keeps P0/P1 blocking.
        assert_eq!(line, vec![1, 3, 2, 1, 0]);
        assert!(!FindingThreshold::None.fails(0));
        assert!(FindingThreshold::P1.fails(1) && !FindingThreshold::P1.fails(2));
        assert!(FindingThreshold::P0.fails(0) && !FindingThreshold::P0.fails(1));
        assert!(FindingThreshold::P3.fails(3));
    }

    #[test]
    fn command_names_follow_the_identifier_rule() {
        assert!(is_valid_command_name("test"));
        assert!(is_valid_command_name("_my-check2"));
        assert!(!is_valid_command_name("2fast"));
        assert!(!is_valid_command_name("has space"));
        assert!(!is_valid_command_name(""));
    }
}
