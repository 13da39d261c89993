//! `mala status` (runs and locks) and `mala clean` (locks of runs that are gone).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mala_core::LockInfo;
use mala_domain::{Settings, parse_agent_name};
use mala_infra::{Cleanup, RunMarker, list_locks, remove_stale};

use crate::failure::Failure;
use crate::output;
use crate::settings::{ConfigPath, flag_overrides, load_settings};

fn repo_and_settings() -> Result<(PathBuf, Settings), Failure> {
    let cwd = std::env::current_dir().map_err(|error| Failure::Io {
        path: ".".into(),
        action: "read the current directory",
        error,
    })?;
    let repo = cwd.canonicalize().unwrap_or(cwd);
    let settings = load_settings(&ConfigPath::new(&repo, None), &flag_overrides(None, None))?.0;
    Ok((repo, settings))
}

fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - since).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Whether the lock's holder belongs to a run that is alive. `None`: the
/// holder is not named after a mala run (another tool, or the original).
fn holder_run_alive(lock: &LockInfo, markers: &[RunMarker]) -> Option<bool> {
    let (_, run) = parse_agent_name(&lock.holder)?;
    Some(markers.iter().any(|m| m.run_id == run && m.is_alive()))
}

fn in_repo(lock: &LockInfo, repo: &Path) -> bool {
    lock.path.as_ref().is_some_and(|p| p.starts_with(repo))
}

pub(crate) fn status(all: bool) -> Result<(), Failure> {
    let (repo, settings) = repo_and_settings()?;
    let dir = &settings.paths.lock_dir;
    let now = Utc::now();
    let markers: Vec<RunMarker> = RunMarker::all(dir)
        .into_iter()
        .filter(|m| {
            all || m
                .repo_path
                .canonicalize()
                .unwrap_or_else(|_| m.repo_path.clone())
                == repo
        })
        .collect();
    let locks: Vec<LockInfo> = list_locks(dir)
        .into_iter()
        .filter(|l| all || in_repo(l, &repo))
        .collect();
    let mut out = String::new();
    let scope = if all {
        "all repositories".to_owned()
    } else {
        repo.display().to_string()
    };
    let _ = writeln!(out, "mala in {scope} (lock directory {})", dir.display());
    if markers.is_empty() {
        let _ = writeln!(out, "  no mala run");
    }
    for marker in &markers {
        let _ = writeln!(
            out,
            "  run {}  pid {}  {}  started {} ago{}",
            marker.run_id,
            marker.pid,
            if marker.is_alive() {
                "running"
            } else {
                "gone (stale)"
            },
            age(marker.started_at, now),
            if all {
                format!("  {}", marker.repo_path.display())
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(
        out,
        "{} lock{}",
        locks.len(),
        if locks.len() == 1 { "" } else { "s" }
    );
    let all_markers = RunMarker::all(dir);
    for lock in &locks {
        let path = lock.path.as_ref().map_or_else(
            || format!("(lock {})", lock.key),
            |p| p.strip_prefix(&repo).unwrap_or(p).display().to_string(),
        );
        let issue = parse_agent_name(&lock.holder)
            .map_or_else(String::new, |(issue, _)| format!("  issue {issue}"));
        let state = if holder_run_alive(lock, &all_markers) == Some(false) {
            "  (its run is gone: `mala clean` removes it)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {path}  held by {}{issue}{}{state}",
            lock.holder,
            lock.since
                .map_or_else(String::new, |s| format!("  for {}", age(s, now))),
        );
    }
    let runs = mala_infra::list_runs(&settings.paths.runs_dir, (!all).then_some(repo.as_path()));
    worktree_lines(&mut out, &repo, &settings, &runs, &markers);
    if !runs.is_empty() {
        let _ = writeln!(out, "recent runs:");
    }
    for run in runs.iter().take(RECENT_RUNS) {
        let _ = writeln!(out, "  {}", super::logs::run_line(run, all));
    }
    output::stdout(&out);
    Ok(())
}

/// Worktree isolation's trees of this repository, and the issues of live
/// runs whose branches wait in the merge queue.
fn worktree_lines(
    out: &mut String,
    repo: &Path,
    settings: &Settings,
    runs: &[mala_core::RunLog],
    markers: &[RunMarker],
) {
    let dir = mala_orchestration::worktrees_dir(settings, repo);
    if !dir.is_dir() {
        return;
    }
    let live = block_on(async {
        let trees = mala_infra::GitWorktrees::on_branch(repo, &dir, "")?;
        trees.live().await
    })
    .and_then(|listed| listed.map_err(|e| e.to_string()));
    let trees = match live {
        Ok(trees) => trees,
        Err(error) => {
            let _ = writeln!(out, "worktrees: could not list them: {error}");
            return;
        }
    };
    let _ = writeln!(
        out,
        "{} worktree{} in {}",
        trees.len(),
        if trees.len() == 1 { "" } else { "s" },
        dir.display()
    );
    for tree in &trees {
        let _ = writeln!(
            out,
            "  {}  {}{}",
            tree.path.display(),
            tree.branch.as_deref().unwrap_or("(detached)"),
            if tree.dirty {
                "  (uncommitted changes)"
            } else {
                ""
            }
        );
    }
    let alive = |run: &mala_core::RunLog| {
        markers
            .iter()
            .any(|m| m.run_id == run.run_id && m.is_alive())
    };
    let queued: Vec<&str> = runs
        .iter()
        .filter(|run| alive(run))
        .flat_map(|run| &run.issues)
        .filter(|i| i.status == "running" && i.merge.as_deref() == Some("queued"))
        .map(|i| i.issue.as_str())
        .collect();
    if !queued.is_empty() {
        let _ = writeln!(out, "merge queue: {}", queued.join(", "));
    }
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("could not start a runtime: {e}"))?;
    Ok(runtime.block_on(work))
}

/// Removes the worktrees of runs that are gone that hold nothing
/// uncommitted (their branches stay); keeps and names the others.
fn clean_worktrees(repo: &Path, settings: &Settings) -> Result<(), Failure> {
    let dir = mala_orchestration::worktrees_dir(settings, repo);
    if !dir.is_dir() {
        return Ok(());
    }
    let cleaned = block_on(async {
        let trees = mala_infra::GitWorktrees::on_branch(repo, &dir, "")?;
        trees.clean().await
    })
    .and_then(|cleaned| cleaned.map_err(|e| e.to_string()));
    let (removed, kept) = cleaned.map_err(|error| Failure::Other {
        message: format!(
            "could not clean the worktrees in {}: {error}",
            dir.display()
        ),
        hint: None,
    })?;
    let mut out = format!(
        "removed {} worktree{} of runs that are gone (their branches stay)\n",
        removed.len(),
        if removed.len() == 1 { "" } else { "s" }
    );
    for tree in kept {
        let _ = writeln!(out, "kept {}: it has uncommitted changes", tree.display());
    }
    output::stdout(&out);
    Ok(())
}

/// How many finished runs `mala status` lists (`mala logs list` has them all).
const RECENT_RUNS: usize = 5;

pub(crate) fn clean(force: bool) -> Result<(), Failure> {
    let (repo, settings) = repo_and_settings()?;
    let dir = &settings.paths.lock_dir;
    let markers = RunMarker::all(dir);
    let live: Vec<&RunMarker> = markers.iter().filter(|m| m.is_alive()).collect();
    if !live.is_empty() && !force {
        let runs: Vec<String> = live
            .iter()
            .map(|m| format!("{} (pid {}, {})", m.run_id, m.pid, m.repo_path.display()))
            .collect();
        return Err(Failure::Other {
            message: format!("a mala run is alive: {}", runs.join(", ")),
            hint: Some(
                "its locks are in use. `mala clean --force` removes only the locks of runs that are gone"
                    .to_owned(),
            ),
        });
    }
    let Cleanup {
        locks_removed: removed,
        locks_kept: kept,
        markers_removed,
    } = remove_stale(dir);
    output::stdout(&format!(
        "removed {removed} stale lock{} and {markers_removed} marker{} of runs that are gone; kept {kept} lock{} of live runs\n",
        if removed == 1 { "" } else { "s" },
        if markers_removed == 1 { "" } else { "s" },
        if kept == 1 { "" } else { "s" },
    ));
    if live.is_empty() {
        clean_worktrees(&repo, &settings)?;
    } else {
        output::stdout("worktrees left alone: a run is alive and may be using them\n");
    }
    Ok(())
}
