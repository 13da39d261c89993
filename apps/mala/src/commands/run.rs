//! `mala run` and `mala epic-verify`.

use std::fmt::Write as _;
use std::sync::Arc;

use mala_core::EventSink;
use mala_dashboard::Hub;
use mala_domain::{Coder, Order, Scope, Settings};
use mala_orchestration::{ResumePolicy, RunPlan, RunRequest, RunSummary, SessionPolicy, Stage};
use tokio::sync::{mpsc, watch};

use crate::console::{Console, JsonLines, Style};
use crate::failure::exit;
use crate::settings::find_program;

use crate::cli::{EpicVerifyArgs, RunArgs};
use crate::commands::{dashboard, dry_run, logs};
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
    let mut flags = flag_overrides(Some(&args.coder), args.timeout);
    flags.max_cost_usd = args.max_cost;
    flags.max_tokens = args.max_tokens;
    flags.isolation = args.isolation;
    let (settings, file) = load_settings(&config, &flags)?;
    for warning in settings.warnings() {
        output::note(&format!("warning: {warning}"));
    }
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
    if settings.coder == Coder::Amp {
        return Err(Failure::NotBuilt {
            command: "run with --coder amp",
            needs: "the Amp backend (Claude Code and Codex are built)",
        });
    }
    execute(args, settings)
}

/// The coder's binary named in the settings (`coder_options.<coder>.binary`):
/// a path, or a name looked up on PATH.
fn coder_binary(settings: &Settings) -> Result<std::path::PathBuf, Failure> {
    let (product, named, hint) = match settings.coder {
        Coder::Codex => (
            "the Codex CLI",
            &settings.coder_options.codex.binary,
            mala_infra::CODEX_INSTALL_HINT,
        ),
        Coder::Claude | Coder::Amp => (
            "Claude Code",
            &settings.coder_options.claude.binary,
            mala_infra::CLAUDE_INSTALL_HINT,
        ),
    };
    let found = if named.contains('/') {
        Some(std::path::PathBuf::from(named)).filter(|p| p.is_file())
    } else {
        find_program(named)
    };
    found.ok_or_else(|| Failure::Other {
        message: format!("{product} (`{named}`) was not found"),
        hint: Some(hint.to_owned()),
    })
}

/// Whether stdout takes colors, and a live status line: a terminal that is
/// not `dumb`, and for colors no `NO_COLOR`.
fn terminal() -> (bool, bool) {
    use std::io::IsTerminal;
    let live = std::io::stdout().is_terminal()
        && std::env::var_os("TERM").is_some_and(|term| term != "dumb");
    let color = live && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    (color, live)
}

fn execute(args: &RunArgs, settings: Settings) -> Result<(), Failure> {
    // The flags first: a usage error is said before anything is looked for.
    let serve = args
        .serve
        .serve
        .is_some()
        .then(|| dashboard::serve_addr(&args.serve))
        .transpose()?;
    let coder = coder_binary(&settings)?;
    let runtime = crate::runtime::runtime(true)?;
    let (color, live) = terminal();
    let console = Arc::new(Console::new(args.verbose, Style::new(color), live));
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![console.clone()];
    if let Some(path) = &args.events_jsonl {
        let sink = JsonLines::create(path).map_err(|error| Failure::Io {
            path: path.clone(),
            action: "open the event log",
            error,
        })?;
        sinks.push(Arc::new(sink));
    }
    let budget = settings.budget;
    let plan = run_plan(args);
    let stage = Arc::new(watch::channel(Stage::Running).0);
    let (stops, issue_stops) = mpsc::unbounded_channel();
    let mut shown = None;
    if let Some(addr) = serve {
        let hub = Hub::live(&plan.run_id, logs::run_budget(&budget));
        shown = Some(Arc::clone(&hub));
        sinks.push(hub.clone());
        let controls = Arc::new(dashboard::RunControls {
            stage: Arc::clone(&stage),
            stops,
        });
        let server = runtime.block_on(dashboard::bind(addr, args.serve.serve_public))?;
        let _guard = runtime.enter();
        server.serve(hub, Some(controls));
    }
    let events: Arc<dyn EventSink> = Arc::new(mala_core::Fanout(sinks));
    let request = RunRequest {
        repo_root: args.repo_path.clone(),
        settings,
        plan,
        coder,
        fast: args.fast,
        br: find_program("br"),
        cerberus: find_program("cerberus"),
        cerberus_root: std::env::var_os("CERBERUS_ROOT").map(std::path::PathBuf::from),
        setpriv: find_program("setpriv"),
        issue_stops: serve.map(|_| issue_stops),
    };
    let summary = runtime.block_on(async move {
        // Listening before the run starts: a Ctrl-C as soon as the run's
        // marker exists is seen, never lost to the default handler.
        let interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| Failure::Other {
                message: format!("could not listen for Ctrl-C: {e}"),
                hint: None,
            })?;
        let stages = stage.subscribe();
        tokio::spawn(follow_interrupts(interrupts, stage));
        let summary = mala_orchestration::run(request, events, stages).await;
        if let Some(hub) = shown {
            hub.settle(PAGE_SETTLES).await;
        }
        Ok::<_, Failure>(summary)
    })?;
    report(&summary.map_err(run_failure)?, &console.summary(), &budget)
}

/// How long a finished run waits for connected pages to read its end.
const PAGE_SETTLES: std::time::Duration = std::time::Duration::from_secs(3);

/// Each Ctrl-C takes the run one stage further: drain, stop the agents,
/// kill them, quit. (The dashboard's drain is the first stage too.) Each
/// press is said on stderr as it is taken.
async fn follow_interrupts(
    mut interrupts: tokio::signal::unix::Signal,
    stage: Arc<watch::Sender<Stage>>,
) {
    while interrupts.recv().await.is_some() {
        let now = *stage.borrow();
        match now {
            Stage::Running => {
                output::note(
                    "draining: no new issues; running agents finish (Ctrl-C again to stop them)",
                );
                let _ = stage.send(Stage::Drain);
            }
            Stage::Drain => {
                output::note(
                    "stopping the agents; their issues stay claimed for the next run (Ctrl-C again to quit now)",
                );
                let _ = stage.send(Stage::Abort);
            }
            Stage::Abort => {
                output::note("killing the agents now (Ctrl-C again to quit without cleaning up)");
                let _ = stage.send(Stage::Kill);
                // Cleaning up takes a moment; it must not take longer.
                std::thread::spawn(|| {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    std::process::exit(i32::from(exit::INTERRUPTED));
                });
            }
            Stage::Kill => std::process::exit(i32::from(exit::INTERRUPTED)),
        }
    }
}

/// The run's plan from its flags, under a new run id.
fn run_plan(args: &RunArgs) -> RunPlan {
    let run_id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(12)
        .collect();
    let sessions = if args.fresh {
        SessionPolicy::Fresh
    } else if args.strict {
        SessionPolicy::Strict
    } else {
        SessionPolicy::Continue
    };
    RunPlan {
        scope: args.scope.clone(),
        order: args.order,
        max_agents: args.max_agents.map_or(1, |n| n as usize),
        max_issues: args.max_issues.map(|n| n as usize),
        resume: ResumePolicy {
            // Reviewing work in progress means taking it up.
            take_up: args.resume || args.review_wip,
            sessions,
            review_wip: args.review_wip,
        },
        watch: args.watch.then_some(std::time::Duration::from_secs(60)),
        run_id,
        pauses: pause_policy(args.max_pause),
    }
}

fn pause_policy(max_pause_minutes: Option<u64>) -> mala_orchestration::PausePolicy {
    let mut policy = mala_orchestration::PausePolicy::default();
    if let Some(minutes) = max_pause_minutes {
        policy.max_pause = std::time::Duration::from_secs(minutes.saturating_mul(60));
    }
    policy
}

fn run_failure(error: mala_orchestration::RunError) -> Failure {
    match error {
        mala_orchestration::RunError::Tracker(error) => Failure::Tracker(error),
        mala_orchestration::RunError::Agent(error) => Failure::from(error),
        mala_orchestration::RunError::Preflight(error) => preflight_failure(error),
        mala_orchestration::RunError::RedBaseline { message } => Failure::Environment(format!(
            "{message}\n  hint: fix it first, or set `baseline: file_issue` to have an agent fix it first, or `baseline: warn` to run anyway"
        )),
        mala_orchestration::RunError::Epic(mala_orchestration::EpicError::Tracker(error)) => {
            Failure::Tracker(error)
        }
        mala_orchestration::RunError::Store(error) => Failure::Other {
            message: error.to_string(),
            hint: Some("mala keeps its runs under paths.runs_dir and paths.lock_dir; check that both are writable".into()),
        },
        // Each of the others says what to do in its message already.
        other => Failure::Other {
            message: other.to_string(),
            hint: None,
        },
    }
}

/// A preflight that failed: exit 1, with what to fix.
fn preflight_failure(error: mala_orchestration::PreflightError) -> Failure {
    use mala_orchestration::PreflightError;
    match error {
        PreflightError::Agent(mut error) => {
            error.message = format!("preflight: {}", error.message);
            Failure::from(error)
        }
        PreflightError::Unproven(failure) => {
            let hint = match failure {
                mala_domain::PreflightFailure::NoCanary => {
                    "run again; if it keeps happening, check the model (`model:` in mala.yaml)"
                }
                _ => {
                    "check the agent's own settings: for Claude Code, `disableAllHooks` or hook \
                     restrictions in its settings and managed policies; for Codex, rules in its \
                     configuration that allow commands without asking. mala lets no agent work unguarded"
                }
            };
            Failure::Other {
                message: format!("preflight: {failure}"),
                hint: Some(hint.to_owned()),
            }
        }
        error @ PreflightError::Environment(_) => Failure::Other {
            message: error.to_string(),
            hint: None,
        },
    }
}

/// What the run spent, against its budget when it has one.
fn spend_line(spent: &mala_domain::Spent, budget: &mala_domain::Budget) -> String {
    let mut line = format!("spent: ${:.2}, {} tokens", spent.cost_usd, spent.tokens);
    let run = budget.run.limits();
    if !run.is_empty() {
        let _ = write!(line, " (run budget: {})", run.join(", "));
    }
    for limit in budget.issue.limits() {
        let _ = write!(line, "; per issue at most {limit}");
    }
    line
}

fn report(summary: &RunSummary, table: &str, budget: &mala_domain::Budget) -> Result<(), Failure> {
    output::stdout(table);
    let mut text = format!(
        "{} closed, {} failed, {} skipped{}{}\nsession records: {}\n",
        summary.closed.len(),
        summary.failed.len(),
        summary.skipped.len(),
        if summary.released.is_empty() {
            String::new()
        } else {
            format!(", {} given back untouched", summary.released.len())
        },
        if summary.deferred.is_empty() {
            String::new()
        } else {
            format!(", {} deferred (deadlock)", summary.deferred.len())
        },
        summary.state_dir.display()
    );
    let _ = writeln!(text, "{}", spend_line(&summary.spent, budget));
    for (issue, reason) in &summary.failed {
        let _ = writeln!(text, "  ✗ {issue}: {reason}");
    }
    for (issue, reason) in &summary.released {
        let _ = writeln!(text, "  ○ {issue}: {reason}");
    }
    output::stdout(&text);
    if summary.interrupted {
        return Err(Failure::Interrupted);
    }
    if let Some(reason) = &summary.stopped {
        return Err(Failure::Environment(reason.clone()));
    }
    if let Some(command) = &summary.aborted {
        return Err(Failure::Aborted(command.clone()));
    }
    if !summary.failed.is_empty() {
        return Err(Failure::IssuesFailed(summary.failed.len()));
    }
    Ok(())
}

pub(crate) fn epic_verify(args: &EpicVerifyArgs) -> Result<(), Failure> {
    let config = ConfigPath::new(&args.repo_path, args.config.as_deref());
    let (settings, _) = load_settings(&config, &flag_overrides(Some(&args.coder), None))?;
    let repo = args
        .repo_path
        .canonicalize()
        .unwrap_or_else(|_| args.repo_path.clone());
    let epic = mala_core::IssueId::new(args.epic_id.clone());
    let runtime = crate::runtime::runtime(true)?;
    let coder = if args.human_override {
        // A person's word needs no verifier.
        std::path::PathBuf::new()
    } else {
        coder_binary(&settings)?
    };
    let request = mala_orchestration::EpicVerifyRequest {
        repo_root: repo,
        settings,
        coder,
        br: find_program("br"),
        setpriv: find_program("setpriv"),
        epic: epic.clone(),
        close: !args.no_close,
        force: args.force,
        human_override: args.human_override,
    };
    runtime.block_on(async {
        let check = mala_orchestration::verify_one_epic(&request)
            .await
            .map_err(run_failure)?;
        match check {
            mala_orchestration::EpicCheck::Overridden => {
                output::stdout(&format!("✓ {epic}  closed by override\n"));
                Ok(())
            }
            mala_orchestration::EpicCheck::Passed { closed, advisories } => {
                output::stdout(&format!(
                    "✓ {epic}  meets its acceptance criteria{}{}\n",
                    if closed { "; closed" } else { " (not closed: --no-close)" },
                    if advisories > 0 { format!("; {advisories} advisory finding(s) filed") } else { String::new() }
                ));
                Ok(())
            }
            mala_orchestration::EpicCheck::NotEligible { open_children } => Err(Failure::Other {
                message: format!("{epic} still has {open_children} open issue(s)"),
                hint: Some("close them first, or verify anyway with --force".to_owned()),
            }),
            mala_orchestration::EpicCheck::Failed { findings, filed } => {
                let mut text = format!("✗ {epic}  does not meet its acceptance criteria:\n");
                for finding in &findings {
                    let _ = writeln!(text, "  {}\n      {}", mala_domain::finding_line(finding), finding.body.lines().next().unwrap_or_default());
                }
                if !filed.is_empty() {
                    let ids: Vec<&str> = filed.iter().map(mala_core::IssueId::as_str).collect();
                    let _ = writeln!(text, "filed: {}", ids.join(", "));
                }
                output::stdout(&text);
                Err(Failure::Other {
                    message: format!("{epic} failed verification"),
                    hint: Some(if filed.is_empty() {
                        "run again without --no-close to file the remediation issues".to_owned()
                    } else {
                        "the remediation issues run in the next `mala run`; the epic is verified again when they close".to_owned()
                    }),
                })
            }
        }
    })
}
