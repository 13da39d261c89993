//! Run markers: `<lock dir>/run-<run id>.marker`, one per live `mala run`,
//! in the original's format (`run_id`, `repo_path`, `started_at`, `pid`,
//! `max_agents`). A marker whose process is gone belongs to a dead run: its
//! locks and its claims may be taken over.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    pub run_id: String,
    pub repo_path: PathBuf,
    pub started_at: DateTime<Utc>,
    pub pid: u32,
    pub max_agents: Option<u32>,
}

impl RunMarker {
    pub fn path(lock_dir: &Path, run_id: &str) -> PathBuf {
        lock_dir.join(format!("run-{run_id}.marker"))
    }

    /// Writes the marker atomically (temporary file, then rename).
    pub fn write(&self, lock_dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(lock_dir)?;
        let path = Self::path(lock_dir, &self.run_id);
        let temp = lock_dir.join(format!(".run-{}.marker.tmp", self.run_id));
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&temp, body)?;
        std::fs::rename(&temp, &path)?;
        Ok(path)
    }

    pub fn read(lock_dir: &Path, run_id: &str) -> Option<Self> {
        let text = std::fs::read(Self::path(lock_dir, run_id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every readable marker in the lock directory.
    pub fn all(lock_dir: &Path) -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(lock_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("run-") && name.ends_with(".marker")
            })
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Whether the marker's process is still running.
    pub fn is_alive(&self) -> bool {
        process_alive(self.pid)
    }
}

/// Whether a run is alive: its marker exists and its process runs.
pub fn is_run_alive(lock_dir: &Path, run_id: &str) -> bool {
    RunMarker::read(lock_dir, run_id).is_some_and(|m| m.is_alive())
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without /proc, ask `kill -0`; if even that cannot run, assume the run is
/// alive, which only means its work is not taken over.
#[cfg(not(target_os = "linux"))]
fn process_alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .map_or(true, |s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_tell_live_runs_from_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = RunMarker {
            run_id: "live".into(),
            repo_path: "/repo".into(),
            started_at: Utc::now(),
            pid: std::process::id(),
            max_agents: Some(3),
        };
        live.write(dir.path()).unwrap();
        // A pid far above any the kernel hands out.
        let dead = RunMarker {
            run_id: "dead".into(),
            pid: 4_000_000_000,
            ..live.clone()
        };
        dead.write(dir.path()).unwrap();
        assert_eq!(RunMarker::read(dir.path(), "live"), Some(live));
        assert!(is_run_alive(dir.path(), "live"));
        assert!(!is_run_alive(dir.path(), "dead"));
        assert!(!is_run_alive(dir.path(), "never-existed"));
        assert_eq!(RunMarker::all(dir.path()).len(), 2);
    }
}

/// What [`remove_stale`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub locks_removed: usize,
    pub locks_kept: usize,
    pub markers_removed: usize,
}

/// Removes the locks and markers of runs that are gone: a lock whose holder
/// is named after a dead run, and (only when no run is alive at all) a lock
/// whose holder names no run. Every run does this at start; `mala clean` too.
pub fn remove_stale(lock_dir: &Path) -> Cleanup {
    let markers = RunMarker::all(lock_dir);
    let any_alive = markers.iter().any(RunMarker::is_alive);
    let mut cleanup = Cleanup::default();
    for lock in crate::list_locks(lock_dir) {
        let stale = match mala_domain::parse_agent_name(&lock.holder) {
            Some((_, run)) => !markers.iter().any(|m| m.run_id == run && m.is_alive()),
            None => !any_alive,
        };
        if stale && crate::remove_lock(lock_dir, &lock.key) {
            cleanup.locks_removed += 1;
        } else {
            cleanup.locks_kept += 1;
        }
    }
    for marker in markers.iter().filter(|m| !m.is_alive()) {
        if std::fs::remove_file(RunMarker::path(lock_dir, &marker.run_id)).is_ok() {
            cleanup.markers_removed += 1;
        }
    }
    cleanup
}
