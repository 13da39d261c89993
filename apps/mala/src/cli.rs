//! The command line as typed: clap structs only. `resolve` turns them into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mala_domain::{
    AmpMode, Coder, CodexApprovalPolicy, CodexSandbox, Effort, Isolation, Order, PresetName, Scope,
    SettingsSource,
};

#[derive(Debug, Parser)]
#[command(
    name = "mala",
    version,
    about = "Run many coding agents in parallel on one repository, and trust none of them",
    long_about = "mala takes ready issues from the beads tracker (br), gives each to a fresh \
                  agent session, and closes an issue only when a quality gate has seen a fresh \
                  commit, proof that the validation commands passed, and a clean review.",
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Work through the ready issues of a repository
    Run(RunArgs),
    /// Verify one epic against its acceptance criteria (and close it)
    EpicVerify(EpicVerifyArgs),
    /// Write a mala.yaml for this directory
    Init(InitArgs),
    /// Show running instances, locks and recent runs
    Status(StatusArgs),
    /// Remove lock files left by runs that are gone
    Clean(CleanArgs),
    /// Browse run logs and sessions
    Logs(LogsArgs),
    /// Show a run in the browser: one still going (in another process) or finished
    Dashboard(DashboardArgs),
    /// Show or check the resolved configuration
    Config(ConfigArgs),
    /// Ask the tool guard about a command, or answer an agent's PreToolUse hook
    Guard(GuardArgs),
    /// Print a shell completion script
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
}

/// Flags that choose and tune the agent backend (run and epic-verify).
#[derive(Debug, Clone, Args)]
pub(crate) struct CoderArgs {
    /// Agent backend: claude or codex (amp is not built)
    #[arg(long, value_parser = parse_word::<Coder>)]
    pub(crate) coder: Option<Coder>,
    /// Amp mode (not built yet: refused)
    #[arg(long, value_parser = parse_word::<AmpMode>)]
    pub(crate) amp_mode: Option<AmpMode>,
    /// Reasoning effort: low, medium, high, xhigh, max
    #[arg(long, value_parser = parse_word::<Effort>)]
    pub(crate) effort: Option<Effort>,
    /// Model name passed to the backend
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Claude settings files to load: a comma-separated subset of local,project,user
    #[arg(long, value_parser = parse_sources)]
    pub(crate) claude_settings_sources: Option<SettingsSources>,
    /// Codex approval policy (refused: mala's guard answers every approval)
    #[arg(long, value_parser = parse_word::<CodexApprovalPolicy>)]
    pub(crate) codex_approval_policy: Option<CodexApprovalPolicy>,
    /// Codex sandbox (not built yet: refused)
    #[arg(long, value_parser = parse_word::<CodexSandbox>)]
    pub(crate) codex_sandbox: Option<CodexSandbox>,
}

/// A parsed `--claude-settings-sources` list (a newtype so clap keeps it whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SettingsSources(pub(crate) Vec<SettingsSource>);

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one bool per on/off flag: that is what clap parses
pub(crate) struct RunArgs {
    /// Repository to work on
    #[arg(default_value = ".")]
    pub(crate) repo_path: PathBuf,
    /// Configuration file (default: <REPO_PATH>/mala.yaml); relative to the current directory
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Most agents running at once (default: unlimited)
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_agents: Option<u32>,
    /// Hard limit of one agent turn, in minutes (0: the default, 30)
    #[arg(short = 't', long, value_name = "MINUTES")]
    pub(crate) timeout: Option<u64>,
    /// Stop after this many issues
    #[arg(short = 'i', long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_issues: Option<u32>,
    /// Which issues: all, orphans, epic:<id>, ids:<id>,<id>,...
    #[arg(short = 's', long, default_value = "all", value_parser = parse_scope)]
    pub(crate) scope: Scope,
    /// epic-priority, issue-priority, focus, or input (needs --scope ids:)
    #[arg(long, default_value = "epic-priority", value_parser = parse_order)]
    pub(crate) order: Order,
    /// Include issues in progress and resume their last session
    #[arg(short = 'r', long, overrides_with = "no_resume")]
    pub(crate) resume: bool,
    #[arg(long, hide = true)]
    pub(crate) no_resume: bool,
    /// Review existing work in progress before any new turn (implies resuming it)
    #[arg(long)]
    pub(crate) review_wip: bool,
    /// With --resume: fail an issue that has no prior session
    #[arg(long, requires = "resume")]
    pub(crate) strict: bool,
    /// With --resume: start new sessions but keep prior review feedback
    #[arg(long, requires = "resume", conflicts_with = "strict")]
    pub(crate) fresh: bool,
    /// Keep polling for new ready issues instead of exiting when idle
    #[arg(long)]
    pub(crate) watch: bool,
    /// Longest a usage or rate limit may pause the run, in minutes; past it the run stops (default 360)
    #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_pause: Option<u64>,
    /// Dollars the whole run may spend (budget.run.max_cost_usd); then it drains
    #[arg(long, value_name = "DOLLARS")]
    pub(crate) max_cost: Option<f64>,
    /// Tokens the whole run may spend (budget.run.max_tokens); then it drains
    #[arg(long, value_name = "TOKENS")]
    pub(crate) max_tokens: Option<u64>,
    /// Print the queue a run would take, and claim nothing
    #[arg(short = 'd', long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: print the queue as JSON
    #[arg(long, requires = "dry_run")]
    pub(crate) json: bool,
    /// Full tool arguments, no truncation, and why issues are excluded
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
    /// Write every event as one JSON line to this file
    #[arg(long, value_name = "PATH")]
    pub(crate) events_jsonl: Option<PathBuf>,
    /// Codex's fast service tier (codex only)
    #[arg(long)]
    pub(crate) fast: bool,
    /// Where agents work: shared (one checkout, file locks) or worktree (each
    /// issue in a git worktree of its own, landed through a merge queue)
    #[arg(long, value_parser = parse_word::<Isolation>)]
    pub(crate) isolation: Option<Isolation>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    pub(crate) coder: CoderArgs,
}

/// Where the run's view in the browser listens.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Serve the run's live view in the browser on ADDR (default: 127.0.0.1:0,
    /// loopback on a free port); the address with its token is printed
    #[arg(long, value_name = "ADDR", num_args = 0..=1, value_parser = parse_serve_addr)]
    #[allow(clippy::option_option)] // clap's shape for a flag whose value may be left out
    pub(crate) serve: Option<Option<std::net::SocketAddr>>,
    /// Let --serve listen beyond loopback (the token is still needed for everything)
    #[arg(long, requires = "serve")]
    pub(crate) serve_public: bool,
}

fn parse_serve_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "`{text}` is not an address like 127.0.0.1:8080 (put the repository before --serve, or use --serve=ADDR)"
        )
    })
}

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The run (a prefix of its id; default: the newest run of this repository)
    pub(crate) run_id: Option<String>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one bool per on/off flag
pub(crate) struct EpicVerifyArgs {
    /// The epic to verify
    pub(crate) epic_id: String,
    /// Repository of the epic
    #[arg(default_value = ".")]
    pub(crate) repo_path: PathBuf,
    /// Configuration file (default: <REPO_PATH>/mala.yaml)
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Verify even when children are open or the epic is closed
    #[arg(long)]
    pub(crate) force: bool,
    /// Close the epic when verified (default)
    #[arg(long, overrides_with = "no_close")]
    pub(crate) close: bool,
    /// Verify only; leave the epic open
    #[arg(long)]
    pub(crate) no_close: bool,
    /// Close without verifying
    #[arg(long, conflicts_with = "no_close")]
    pub(crate) human_override: bool,
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
    #[command(flatten)]
    pub(crate) coder: CoderArgs,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one bool per on/off flag
pub(crate) struct InitArgs {
    /// Print the file instead of writing it
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Accept the preset's defaults without asking (needs --preset)
    #[arg(short = 'y', long, requires = "preset")]
    pub(crate) yes: bool,
    /// Start from this preset: python-uv, node-npm, go, rust, gleam
    #[arg(short = 'p', long, value_parser = parse_word::<PresetName>)]
    pub(crate) preset: Option<PresetName>,
    /// Do not require validation evidence
    #[arg(long)]
    pub(crate) skip_evidence: bool,
    /// Do not add a run_end trigger
    #[arg(long)]
    pub(crate) skip_triggers: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Every repository, not only the current one
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GuardArgs {
    #[command(subcommand)]
    pub(crate) command: GuardCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GuardCommand {
    /// Print `allow` or `deny: <reason>` for a shell command run in the current directory
    Check {
        /// Also count the locks this agent holds in the lock directory
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// A path the agent holds the lock of (relative to the current directory); repeatable
        #[arg(long = "locked", value_name = "PATH")]
        locked: Vec<String>,
        /// Print the decision as JSON
        #[arg(long)]
        json: bool,
        /// The command, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Read a PreToolUse hook payload (Claude Code's JSON) on stdin and write the hook's answer
    Hook {
        /// The agent whose locks count (default: $MALA_AGENT_ID)
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// The repository root (default: $MALA_REPO_ROOT, else the payload's cwd)
        #[arg(long, value_name = "PATH")]
        repo: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CleanArgs {
    /// Clean even while a run is alive
    #[arg(short = 'f', long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    #[command(subcommand)]
    pub(crate) command: LogsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogsCommand {
    /// Recent runs
    List {
        #[arg(long)]
        json: bool,
        /// Runs of every repository
        #[arg(long)]
        all: bool,
        #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Sessions of one issue across runs
    Sessions {
        #[arg(long, required = true)]
        issue: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
    },
    /// One run's metadata (full id or prefix)
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    pub(crate) command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the resolved settings and where each value came from
    Show {
        /// Repository whose mala.yaml to read
        #[arg(default_value = ".")]
        repo_path: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration; exit 0 when it is valid, 1 otherwise
    Check {
        #[arg(default_value = ".")]
        repo_path: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_word<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

fn parse_sources(s: &str) -> Result<SettingsSources, String> {
    s.split(',')
        .map(|part| parse_word::<SettingsSource>(part.trim()))
        .collect::<Result<_, _>>()
        .map(SettingsSources)
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
        .map_err(|e: mala_domain::ParseScopeError| e.to_string())
}

fn parse_order(s: &str) -> Result<Order, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mala").chain(args.iter().copied()))
    }

    #[test]
    fn strict_and_fresh_need_resume_and_exclude_each_other() {
        assert!(parse(&["run", "--strict"]).is_err());
        assert!(parse(&["run", "--fresh"]).is_err());
        assert!(parse(&["run", "--resume", "--strict", "--fresh"]).is_err());
        assert!(parse(&["run", "--resume", "--strict"]).is_ok());
    }

    #[test]
    fn init_yes_needs_a_preset() {
        assert!(parse(&["init", "--yes"]).is_err());
        assert!(parse(&["init", "--yes", "--preset", "rust"]).is_ok());
        assert!(parse(&["init", "--preset", "cobol"]).is_err());
    }

    #[test]
    fn max_issues_and_agents_must_be_positive() {
        assert!(parse(&["run", "--max-issues", "0"]).is_err());
        assert!(parse(&["run", "-n", "0"]).is_err());
        assert!(parse(&["run", "-n", "4", "-i", "2"]).is_ok());
    }

    #[test]
    fn coder_flags_are_checked_words() {
        assert!(parse(&["run", "--effort", "extreme"]).is_err());
        assert!(parse(&["run", "--claude-settings-sources", "local,galaxy"]).is_err());
        let cli = parse(&["run", "--claude-settings-sources", "local,user"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(
            run.coder.claude_settings_sources,
            Some(SettingsSources(vec![
                SettingsSource::Local,
                SettingsSource::User
            ]))
        );
    }
}
