//! `mala logs list|sessions|show`: what earlier runs did, from their run.json.

use std::fmt::Write as _;
use std::path::Path;

use mala_core::RunLog;

use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, flag_overrides, load_settings};

/// The repository in the current directory, where its runs are kept, and
/// where live runs leave their marks.
pub(crate) fn runs_dir()
-> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf), Failure> {
    let cwd = std::env::current_dir().map_err(|error| Failure::Io {
        path: ".".into(),
        action: "read the current directory",
        error,
    })?;
    let repo = cwd.canonicalize().unwrap_or(cwd);
    let (settings, _) = load_settings(&ConfigPath::new(&repo, None), &flag_overrides(None, None))?;
    Ok((repo, settings.paths.runs_dir, settings.paths.lock_dir))
}

fn runs(all: bool) -> Result<Vec<RunLog>, Failure> {
    let (repo, runs_dir, _) = runs_dir()?;
    Ok(mala_infra::list_runs(
        &runs_dir,
        (!all).then_some(repo.as_path()),
    ))
}

fn json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Other {
        message: format!("could not print JSON: {e}"),
        hint: None,
    })?;
    output::stdout(&format!("{text}\n"));
    Ok(())
}

fn count(run: &RunLog, status: &str) -> usize {
    run.issues.iter().filter(|i| i.status == status).count()
}

pub(crate) fn list(as_json: bool, all: bool, limit: u32) -> Result<(), Failure> {
    let mut runs = runs(all)?;
    runs.truncate(limit as usize);
    if as_json {
        return json(&runs);
    }
    if runs.is_empty() {
        output::stdout("no runs recorded for this repository (--all for every repository)\n");
        return Ok(());
    }
    let mut text = String::new();
    for run in &runs {
        let _ = writeln!(text, "{}", run_line(run, all));
    }
    output::stdout(&text);
    Ok(())
}

/// One run on one line: id, start, outcome, counts (and the repository
/// when listing every repository's).
pub(crate) fn run_line(run: &RunLog, with_repo: bool) -> String {
    format!(
        "{}  {}  {:<11} {} closed, {} failed, {} skipped, {}{}",
        run.run_id,
        run.started_at.format("%Y-%m-%d %H:%M"),
        run.outcome,
        count(run, "closed"),
        count(run, "failed"),
        count(run, "skipped"),
        spend(run),
        if with_repo {
            format!("  {}", run.repo_path.display())
        } else {
            String::new()
        }
    )
}

/// What the run spent, against the run's budget when it had one (as its
/// record says).
fn spend(run: &RunLog) -> String {
    let cost: f64 = run.issues.iter().map(|i| i.cost_usd).sum();
    let tokens: u64 = run.issues.iter().map(|i| i.tokens).sum();
    // A record from before budgets has none: no limit.
    let mut line = format!("${cost:.2}, {tokens} tokens");
    if let Some(budget) = budget_of(run) {
        let _ = write!(line, " of a {budget} budget");
    }
    line
}

/// The run's budget as its record says it (`None`: no limit).
pub(crate) fn budget_of(run: &RunLog) -> Option<String> {
    let budget: mala_domain::Budget =
        serde_json::from_value(run.settings["budget"].clone()).unwrap_or_default();
    run_budget(&budget)
}

/// A budget's run limits in words (`None`: no limit).
pub(crate) fn run_budget(budget: &mala_domain::Budget) -> Option<String> {
    let limits = budget.run.limits();
    (!limits.is_empty()).then(|| limits.join(" / "))
}

pub(crate) fn sessions(issue: &str, as_json: bool, all: bool) -> Result<(), Failure> {
    let rows: Vec<(String, mala_core::IssueRecord)> = runs(all)?
        .into_iter()
        .flat_map(|run| {
            let id = run.run_id.clone();
            run.issues
                .into_iter()
                .filter(|i| i.issue == issue)
                .map(move |i| (id.clone(), i))
        })
        .collect();
    if as_json {
        let value: Vec<serde_json::Value> = rows
            .iter()
            .map(|(run, record)| serde_json::json!({"run_id": run, "issue": record.issue, "agent": record.agent, "status": record.status, "reason": record.reason, "log_path": record.log_path}))
            .collect();
        return json(&value);
    }
    if rows.is_empty() {
        output::stdout(&format!("no sessions recorded for {issue}\n"));
        return Ok(());
    }
    let mut text = String::new();
    for (run, record) in &rows {
        let _ = writeln!(
            text,
            "{run}  {}  {}  {}",
            record.status,
            record.agent,
            record.log_path.display()
        );
        if let Some(reason) = &record.reason {
            let _ = writeln!(text, "    {}", reason.lines().next().unwrap_or_default());
        }
    }
    output::stdout(&text);
    Ok(())
}

/// The one recorded run whose id starts with `run_id`, of any repository.
pub(crate) fn find_run(run_id: &str) -> Result<RunLog, Failure> {
    let mut matches: Vec<RunLog> = runs(true)?
        .into_iter()
        .filter(|r| r.run_id.starts_with(run_id))
        .collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(Failure::Other {
            message: format!("no run {run_id}"),
            hint: Some("`mala logs list` shows the recorded runs".to_owned()),
        }),
        _ => Err(Failure::Other {
            message: format!("{run_id} matches {} runs", matches.len()),
            hint: Some("give more of the run id".to_owned()),
        }),
    }
}

/// The newest run of the repository in the current directory.
pub(crate) fn newest_run() -> Result<RunLog, Failure> {
    runs(false)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Other {
            message: "no runs recorded for this repository".to_owned(),
            hint: Some("`mala logs list --all` shows the runs of every repository".to_owned()),
        })
}

pub(crate) fn show(run_id: &str, as_json: bool) -> Result<(), Failure> {
    let run = &find_run(run_id)?;
    if as_json {
        return json(run);
    }
    let mut text = format!(
        "run {} in {}\nstarted {}, {}{}\n",
        run.run_id,
        run.repo_path.display(),
        run.started_at.format("%Y-%m-%d %H:%M:%S"),
        run.outcome,
        run.finished_at
            .map_or_else(String::new, |f| format!(" at {}", f.format("%H:%M:%S")))
    );
    for issue in &run.issues {
        let _ = writeln!(
            text,
            "  {:<9} {}  {}",
            issue.status,
            issue.issue,
            Path::new(&issue.log_path).display()
        );
        if let Some(reason) = &issue.reason {
            let _ = writeln!(
                text,
                "            {}",
                reason.lines().next().unwrap_or_default()
            );
        }
    }
    output::stdout(&text);
    Ok(())
}
