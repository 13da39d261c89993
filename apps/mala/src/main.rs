//! The `mala` command: parse, resolve to settings, run, map the outcome to an exit code.

mod cli;
mod commands;
mod console;
mod failure;
mod output;
mod runtime;
mod settings;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, ConfigCommand, GuardCommand, LogsCommand};
use crate::failure::Failure;

fn main() -> ExitCode {
    // clap prints --help/--version (exit 0) and usage errors (exit 2) itself.
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The decision is already on stdout; nothing to add.
        Err(Failure::Denied) => Failure::Denied.exit_code(),
        Err(failure) => {
            output::note(&format!("error: {failure}"));
            failure.exit_code()
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::EpicVerify(args) => commands::run::epic_verify(&args),
        Command::Init(args) => {
            let cwd = std::env::current_dir().map_err(|error| Failure::Io {
                path: ".".into(),
                action: "read the current directory",
                error,
            })?;
            commands::init::run(&args, &cwd)
        }
        Command::Config(args) => match args.command {
            ConfigCommand::Show {
                repo_path,
                config,
                json,
            } => commands::config::show(&repo_path, config.as_deref(), json),
            ConfigCommand::Check { repo_path, config } => {
                commands::config::check(&repo_path, config.as_deref())
            }
        },
        Command::Guard(args) => match args.command {
            GuardCommand::Check {
                agent,
                locked,
                json,
                command,
            } => commands::guard::check(agent.as_deref(), &locked, json, &command),
            GuardCommand::Hook { agent, repo } => commands::guard::hook(
                agent.as_deref(),
                repo.as_deref(),
                &settings::hook_environment(),
            ),
        },
        Command::Status(args) => commands::locks::status(args.all),
        Command::Clean(args) => commands::locks::clean(args.force),
        Command::Dashboard(args) => commands::dashboard::run(&args),
        Command::Logs(args) => match args.command {
            LogsCommand::List { json, all, limit } => commands::logs::list(json, all, limit),
            LogsCommand::Sessions { issue, json, all } => {
                commands::logs::sessions(&issue, json, all)
            }
            LogsCommand::Show { run_id, json } => commands::logs::show(&run_id, json),
        },
        Command::Completions { shell } => {
            let mut buffer = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mala", &mut buffer);
            output::stdout(&String::from_utf8_lossy(&buffer));
            Ok(())
        }
    }
}
