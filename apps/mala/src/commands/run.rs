//! `mala run` and `mala epic-verify`: flags and configuration are checked in
//! full; the work itself arrives with the tracker, backend and pipeline.

use mala_domain::{Coder, Order, Scope};

use crate::cli::{EpicVerifyArgs, RunArgs};
use crate::commands::dry_run;
use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, flag_overrides, load_settings};

pub(crate) fn run(args: &RunArgs) -> Result<(), Failure> {
    if args.order == Order::Input && !matches!(args.scope, Scope::Ids(_)) {
        return Err(Failure::usage(
            "--order input needs --scope ids:<id>,<id>,...",
            Some("input order is the order of the ids you list"),
        ));
    }
    if !args.repo_path.is_dir() {
        return Err(Failure::usage(
            format!("{} is not a directory", args.repo_path.display()),
            Some("pass the repository to work on, or run mala inside it"),
        ));
    }
    let config = ConfigPath::new(&args.repo_path, args.config.as_deref());
    let flags = flag_overrides(Some(&args.coder), args.timeout);
    let (settings, file) = load_settings(&config, &flags)?;
    if args.dry_run {
        // A dry run only reads the tracker; mala.yaml is optional for it.
        return dry_run::run(args, &settings);
    }
    if file.is_none() {
        return Err(Failure::Other {
            message: format!("no {} found", config.path.display()),
            hint: Some("run `mala init` in the repository to write one".to_owned()),
        });
    }
    if args.fast && settings.coder != Coder::Codex {
        output::note("note: --fast only applies to --coder codex; ignored");
    }
    Err(Failure::NotBuilt {
        command: "run",
        needs: "the br tracker adapter, the Claude Code backend and the pipeline",
    })
}

pub(crate) fn epic_verify(args: &EpicVerifyArgs) -> Result<(), Failure> {
    let config = ConfigPath::new(&args.repo_path, args.config.as_deref());
    load_settings(&config, &flag_overrides(Some(&args.coder), None))?;
    Err(Failure::NotBuilt {
        command: "epic-verify",
        needs: "the br tracker adapter and the epic verifier",
    })
}
