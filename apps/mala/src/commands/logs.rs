//! `mala logs list|sessions|show`: what earlier runs did, from their run.json.

use std::fmt::Write as _;
use std::path::Path;

use mala_core::RunLog;

use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, flag_overrides, load_settings};

fn runs(all: bool) -> Result<Vec<RunLog>, Failure> {
    let cwd = std::env::current_dir().map_err(|error| Failure::Io {
        path: ".".into(),
        action: "read the current directory",
        error,
    })?;
    let repo = cwd.canonicalize().unwrap_or(cwd);
    let (settings, _) = load_settings(&ConfigPath::new(&repo, None), &flag_overrides(None, None))?;
    Ok(mala_infra::list_runs(
        &settings.paths.runs_dir,
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
    let budget: mala_domain::Budget =
        serde_json::from_value(run.settings["budget"].clone()).unwrap_or_default();
    let limits = budget.run.limits();
    let mut line = format!("${cost:.2}, {tokens} tokens");
    if !limits.is_empty() {
        let _ = write!(line, " of a {} budget", limits.join(" / "));
    }
    line
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

pub(crate) fn show(run_id: &str, as_json: bool) -> Result<(), Failure> {
    let matches: Vec<RunLog> = runs(true)?
        .into_iter()
        .filter(|r| r.run_id.starts_with(run_id))
        .collect();
    let run = match matches.as_slice() {
        [one] => one,
        [] => {
            return Err(Failure::Other {
                message: format!("no run {run_id}"),
                hint: Some("`mala logs list` shows the recorded runs".to_owned()),
            });
        }
        _ => {
            return Err(Failure::Other {
                message: format!("{run_id} matches {} runs", matches.len()),
                hint: Some("give more of the run id".to_owned()),
            });
        }
    };
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
