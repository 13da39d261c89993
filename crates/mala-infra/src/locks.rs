//! The file lock table, in the original mala's format so that a Python mala,
//! its shell helpers and this one never hand out the same file twice:
//!
//! - key: `<repository root>:<canonical absolute path>` (`__name__` keys stay literal);
//! - file: `<lock dir>/<first 16 hex of sha256(key)>.lock`, body `<agent id>\n`,
//!   created atomically by hard-linking a temporary file (the link fails if
//!   the lock exists);
//! - companion `<hash>.meta` with the canonical path, for `mala status`.
//!
//! Waiters in this process are woken by releases in this process; a lock
//! released by another process is noticed by a re-check once a second.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mala_core::{
    AcquireReport, AgentId, LockError, LockEvent, LockInfo, LockTable, PathLock, WaitReport,
    WaitTarget,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

/// How often a waiter re-checks locks another process may have released.
const EXTERNAL_RECHECK: Duration = Duration::from_secs(1);

/// One lock, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// As the agent wrote it.
    requested: String,
    canonical: PathBuf,
    key: String,
}

/// The lock table over a lock directory, for one repository.
#[derive(Debug)]
pub struct FileLockTable {
    dir: PathBuf,
    namespace: String,
    /// Bumped on every release, so waiters wake at once.
    releases: watch::Sender<u64>,
    events: Option<mpsc::UnboundedSender<LockEvent>>,
    /// Keys each agent of this process holds (the files stay the truth).
    held: Mutex<HashMap<AgentId, BTreeMap<String, PathBuf>>>,
}

fn io(error: &std::io::Error, path: &Path) -> LockError {
    LockError::Io(format!("{}: {error}", path.display()))
}

/// The canonical form of a path: absolute, `.`/`..` resolved, symlinks
/// resolved for the part that exists. A path an agent wrote with a shell
/// escape (`a\$b.rs`) means the file `a$b.rs` when that file exists, as
/// the original reads it, so both name the same lock.
pub fn canonical_path(base: &Path, path: &str) -> PathBuf {
    if path.contains("\\$") {
        let unescaped = path.replace("\\$", "$");
        let candidate = base.join(&unescaped);
        if candidate.exists() {
            return canonical_path(base, &unescaped);
        }
    }
    let joined = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        base.join(path)
    };
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    if let Ok(real) = normal.canonicalize() {
        return real;
    }
    // The first existing ancestor, resolved, plus the rest as written.
    let mut rest = Vec::new();
    let mut cursor = normal.as_path();
    while let Some(parent) = cursor.parent() {
        if let Some(name) = cursor.file_name() {
            rest.push(name.to_owned());
        }
        if let Ok(real) = parent.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        cursor = parent;
    }
    normal
}

/// The lock file name for a key: the first 16 hex digits of its sha256.
pub fn lock_file_stem(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest
        .iter()
        .take(8)
        .fold(String::with_capacity(16), |mut hex, b| {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

impl FileLockTable {
    /// A table in `dir` for the repository at `repo_root`.
    pub fn new(dir: impl Into<PathBuf>, repo_root: &Path) -> Result<Self, LockError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io(&e, &dir))?;
        let root = repo_root.canonicalize().map_err(|e| io(&e, repo_root))?;
        Ok(Self {
            dir,
            namespace: root.to_string_lossy().into_owned(),
            releases: watch::channel(0).0,
            events: None,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Sends every acquire, wait and release to `events`.
    #[must_use]
    pub fn with_events(mut self, events: mpsc::UnboundedSender<LockEvent>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn emit(&self, event: LockEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn target(&self, requested: &str) -> Target {
        let canonical =
            if requested.starts_with("__") && requested.ends_with("__") && requested.len() > 4 {
                PathBuf::from(requested)
            } else {
                canonical_path(Path::new(&self.namespace), requested)
            };
        let key = format!("{}:{}", self.namespace, canonical.display());
        Target {
            requested: requested.to_owned(),
            canonical,
            key,
        }
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.lock", lock_file_stem(key)))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.meta", lock_file_stem(key)))
    }

    /// The agent holding `key`, if any.
    fn holder_of(&self, key: &str) -> Option<AgentId> {
        let text = std::fs::read_to_string(self.lock_path(key)).ok()?;
        let holder = text.trim();
        (!holder.is_empty()).then(|| AgentId::new(holder))
    }

    /// One attempt: `Ok(None)` acquired (or already ours), `Ok(Some(holder))` taken.
    fn try_lock(&self, agent: &AgentId, target: &Target) -> Result<Option<AgentId>, LockError> {
        let lock = self.lock_path(&target.key);
        let temp = self.dir.join(format!(
            ".locktmp.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut file = std::fs::File::create(&temp).map_err(|e| io(&e, &temp))?;
        file.write_all(format!("{agent}\n").as_bytes())
            .map_err(|e| io(&e, &temp))?;
        drop(file);
        let linked = std::fs::hard_link(&temp, &lock);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                // Diagnostic only; a lost meta file costs nothing but a path in `mala status`.
                let _ = std::fs::write(
                    self.meta_path(&target.key),
                    target.canonical.to_string_lossy().as_bytes(),
                );
                self.remember(agent, target);
                self.emit(LockEvent::Acquired {
                    agent: agent.clone(),
                    key: target.key.clone(),
                    path: target.canonical.clone(),
                });
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match self.holder_of(&target.key) {
                Some(holder) if holder == *agent => {
                    self.remember(agent, target);
                    Ok(None)
                }
                Some(holder) => Ok(Some(holder)),
                // Released between our link and our read: try again later.
                None => Ok(Some(AgentId::new("unknown"))),
            },
            Err(e) => Err(io(&e, &lock)),
        }
    }

    fn remember(&self, agent: &AgentId, target: &Target) {
        self.lock_held()
            .entry(agent.clone())
            .or_default()
            .insert(target.key.clone(), target.canonical.clone());
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, BTreeMap<String, PathBuf>>> {
        // Every update is a single insert or remove, so a poisoned map is still consistent.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the lock of `key` if `agent` holds it.
    fn unlock(&self, agent: &AgentId, key: &str, canonical: &Path) -> bool {
        if self.holder_of(key).as_ref() != Some(agent) {
            return false;
        }
        let removed = std::fs::remove_file(self.lock_path(key)).is_ok();
        let _ = std::fs::remove_file(self.meta_path(key));
        if let Some(keys) = self.lock_held().get_mut(agent) {
            keys.remove(key);
        }
        if removed {
            self.releases.send_modify(|n| *n += 1);
            self.emit(LockEvent::Released {
                agent: agent.clone(),
                key: key.to_owned(),
                path: canonical.to_path_buf(),
            });
        }
        removed
    }

    fn resolve(&self, paths: &[String]) -> Result<Vec<Target>, LockError> {
        if paths.is_empty() {
            return Err(LockError::Invalid("give at least one file path".to_owned()));
        }
        let mut targets: Vec<Target> = paths.iter().map(|p| self.target(p)).collect();
        targets.sort_by(|a, b| a.key.cmp(&b.key));
        targets.dedup_by(|a, b| a.key == b.key);
        Ok(targets)
    }

    fn report(&self, agent: &AgentId, targets: &[Target]) -> AcquireReport {
        let results: Vec<PathLock> = targets
            .iter()
            .map(|t| {
                let holder = self.holder_of(&t.key);
                PathLock {
                    filepath: t.requested.clone(),
                    acquired: holder.as_ref() == Some(agent),
                    holder,
                }
            })
            .collect();
        let all_acquired = results.iter().all(|r| r.acquired);
        AcquireReport {
            results,
            all_acquired,
        }
    }

    /// Every lock in the directory, for `mala status` and `mala clean`.
    pub fn list(&self) -> Vec<LockInfo> {
        list_locks(&self.dir)
    }
}

/// Every `.lock` file in a lock directory.
pub fn list_locks(dir: &Path) -> Vec<LockInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<LockInfo> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".lock")?.to_owned();
            let holder = std::fs::read_to_string(entry.path())
                .ok()?
                .trim()
                .to_owned();
            // The original ends its `.meta` with a newline; mala does not.
            let path = std::fs::read_to_string(dir.join(format!("{stem}.meta")))
                .ok()
                .map(|text| PathBuf::from(text.trim_end_matches(['\n', '\r'])));
            let since = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .map(DateTime::<Utc>::from);
            Some(LockInfo {
                key: stem,
                path,
                holder: AgentId::new(holder),
                since,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Removes one lock file (and its companion) by its file stem, whoever holds it.
pub fn remove_lock(dir: &Path, stem: &str) -> bool {
    let removed = std::fs::remove_file(dir.join(format!("{stem}.lock"))).is_ok();
    let _ = std::fs::remove_file(dir.join(format!("{stem}.meta")));
    removed
}

/// Tells subscribers an agent stopped waiting, however the wait ends
/// (including the caller dropping the future).
struct WaitingGuard<'t> {
    table: &'t FileLockTable,
    agent: AgentId,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.table.emit(LockEvent::StoppedWaiting {
            agent: self.agent.clone(),
        });
    }
}

#[async_trait]
impl LockTable for FileLockTable {
    async fn acquire(
        &self,
        agent: &AgentId,
        paths: &[String],
        timeout: Duration,
    ) -> Result<AcquireReport, LockError> {
        let targets = self.resolve(paths)?;
        let mut blocked: Vec<(Target, AgentId)> = Vec::new();
        for target in &targets {
            if let Some(holder) = self.try_lock(agent, target)? {
                blocked.push((target.clone(), holder));
            }
        }
        if blocked.is_empty() || timeout.is_zero() {
            return Ok(self.report(agent, &targets));
        }
        self.emit(LockEvent::Waiting {
            agent: agent.clone(),
            on: blocked
                .iter()
                .map(|(target, holder)| WaitTarget {
                    key: target.key.clone(),
                    path: target.canonical.clone(),
                    holder: holder.clone(),
                })
                .collect(),
        });
        let _waiting = WaitingGuard {
            table: self,
            agent: agent.clone(),
        };
        let deadline = Instant::now() + timeout;
        let mut releases = self.releases.subscribe();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(self.report(agent, &targets));
            }
            let nap = (deadline - now).min(EXTERNAL_RECHECK);
            // Either a release here, or time to look for one elsewhere.
            let _ = tokio::time::timeout(nap, releases.changed()).await;
            let mut any = false;
            for (target, _) in &blocked {
                if self.try_lock(agent, target)?.is_none() {
                    any = true;
                }
            }
            if any {
                return Ok(self.report(agent, &targets));
            }
        }
    }

    async fn release(&self, agent: &AgentId, paths: &[String]) -> Result<Vec<String>, LockError> {
        let targets = self.resolve(paths)?;
        Ok(targets
            .into_iter()
            .filter(|t| self.unlock(agent, &t.key, &t.canonical))
            .map(|t| t.requested)
            .collect())
    }

    async fn release_all(&self, agent: &AgentId) -> Result<Vec<String>, LockError> {
        let mut released = Vec::new();
        let known = self.lock_held().remove(agent).unwrap_or_default();
        for (key, canonical) in &known {
            if self.unlock(agent, key, canonical) {
                released.push(key.clone());
            }
        }
        // Locks this process no longer remembers (taken before a restart).
        for lock in list_locks(&self.dir) {
            if lock.holder == *agent && remove_lock(&self.dir, &lock.key) {
                self.releases.send_modify(|n| *n += 1);
                released.push(lock.key);
            }
        }
        Ok(released)
    }

    async fn wait(&self, agent: &AgentId, paths: &[String]) -> Result<WaitReport, LockError> {
        let targets = self.resolve(paths)?;
        let mut wait_paths = Vec::new();
        let mut on = Vec::new();
        for target in &targets {
            if let Some(holder) = self.holder_of(&target.key)
                && holder != *agent
            {
                on.push(WaitTarget {
                    key: target.key.clone(),
                    path: target.canonical.clone(),
                    holder,
                });
                wait_paths.push(target.requested.clone());
            }
        }
        if !on.is_empty() {
            self.emit(LockEvent::Waiting {
                agent: agent.clone(),
                on,
            });
        }
        Ok(WaitReport {
            parked: !wait_paths.is_empty(),
            wait_paths,
        })
    }

    fn holder(&self, path: &Path) -> Option<AgentId> {
        self.holder_of(&self.target(&path.to_string_lossy()).key)
    }

    fn held_by(&self, agent: &AgentId) -> Vec<PathBuf> {
        self.lock_held()
            .get(agent)
            .map(|keys| keys.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The canonical paths an agent holds according to the lock files (for
/// `mala guard`, which runs in a process of its own).
pub fn paths_held_in(dir: &Path, agent: &AgentId) -> Vec<PathBuf> {
    list_locks(dir)
        .into_iter()
        .filter(|l| l.holder == *agent)
        .filter_map(|l| l.path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table(dir: &Path, repo: &Path) -> FileLockTable {
        FileLockTable::new(dir.join("locks"), repo).unwrap()
    }

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn keys_and_file_names_follow_the_original_format() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().canonicalize().unwrap();
        std::fs::create_dir(repo.join("src")).unwrap();
        std::fs::write(repo.join("src/a.rs"), "").unwrap();
        let table = table(dir.path(), &repo);
        let target = table.target("src/./b/../a.rs");
        assert_eq!(
            target.key,
            format!("{}:{}/src/a.rs", repo.display(), repo.display())
        );
        // A file that does not exist yet resolves through its existing ancestor.
        let new = table.target("src/new/deep.rs");
        assert_eq!(new.canonical, repo.join("src/new/deep.rs"));
        assert_eq!(
            table.target("__test_mutex__").key,
            format!("{}:__test_mutex__", repo.display())
        );
        // A shell-escaped `$` names the file with a `$` when it exists.
        std::fs::write(repo.join("src/a$b.rs"), "").unwrap();
        assert_eq!(
            table.target("src/a\\$b.rs").key,
            table.target("src/a$b.rs").key
        );
        assert_eq!(
            table.target("src/c\\$d.rs").canonical,
            repo.join("src/c\\$d.rs"),
            "kept as written when no such file exists"
        );
        // sha256("abc") starts with ba7816bf8f01cfea.
        assert_eq!(lock_file_stem("abc"), "ba7816bf8f01cfea");
    }

    #[tokio::test]
    async fn acquire_is_idempotent_release_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), dir.path());
        let (a, b) = (AgentId::new("a"), AgentId::new("b"));
        let report = table
            .acquire(&a, &paths(&["x.rs", "./x.rs", "y.rs"]), Duration::ZERO)
            .await
            .unwrap();
        assert!(report.all_acquired);
        assert_eq!(report.results.len(), 2, "duplicates collapse");
        assert!(
            table
                .acquire(&a, &paths(&["x.rs"]), Duration::ZERO)
                .await
                .unwrap()
                .all_acquired
        );
        let report = table
            .acquire(&b, &paths(&["x.rs"]), Duration::ZERO)
            .await
            .unwrap();
        assert!(!report.all_acquired);
        assert_eq!(report.results[0].holder, Some(a.clone()));
        assert!(
            table
                .release(&b, &paths(&["x.rs"]))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(table.held_by(&a).len(), 2);
        assert_eq!(
            table.release(&a, &paths(&["x.rs"])).await.unwrap(),
            vec!["x.rs"]
        );
        assert!(
            table
                .acquire(&b, &paths(&["x.rs"]), Duration::ZERO)
                .await
                .unwrap()
                .all_acquired
        );
        assert_eq!(table.release_all(&a).await.unwrap().len(), 1);
        assert!(table.held_by(&a).is_empty());
        let body = std::fs::read_to_string(table.lock_path(&table.target("x.rs").key)).unwrap();
        assert_eq!(body, "b\n");
    }

    #[tokio::test]
    async fn a_waiter_returns_as_soon_as_any_blocked_path_frees() {
        let dir = tempfile::tempdir().unwrap();
        let (events, mut seen) = mpsc::unbounded_channel();
        let table = Arc::new(table(dir.path(), dir.path()).with_events(events));
        let (a, b) = (AgentId::new("a"), AgentId::new("b"));
        table
            .acquire(&a, &paths(&["1", "2"]), Duration::ZERO)
            .await
            .unwrap();
        let waiter = {
            let table = Arc::clone(&table);
            let b = b.clone();
            tokio::spawn(async move {
                table
                    .acquire(&b, &paths(&["1", "2"]), Duration::from_secs(30))
                    .await
            })
        };
        // Wait until b is registered as waiting on both.
        loop {
            if let Some(LockEvent::Waiting { on, .. }) = seen.recv().await {
                assert_eq!(on.len(), 2);
                break;
            }
        }
        let started = Instant::now();
        table.release(&a, &paths(&["2"])).await.unwrap();
        let report = waiter.await.unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "woken by the release, not a poll"
        );
        let got: Vec<bool> = report.results.iter().map(|r| r.acquired).collect();
        assert_eq!(got, vec![false, true]);
        assert!(!report.all_acquired);
    }

    #[tokio::test]
    async fn wait_parks_only_on_paths_held_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), dir.path());
        let (a, b) = (AgentId::new("a"), AgentId::new("b"));
        table
            .acquire(&a, &paths(&["1"]), Duration::ZERO)
            .await
            .unwrap();
        let report = table.wait(&b, &paths(&["1", "2"])).await.unwrap();
        assert_eq!(
            report,
            WaitReport {
                parked: true,
                wait_paths: vec!["1".into()]
            }
        );
        assert!(!table.wait(&a, &paths(&["1"])).await.unwrap().parked);
        assert!(table.acquire(&a, &[], Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn a_lock_written_by_the_original_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), dir.path());
        // What Python mala's try_lock writes for the same file.
        let key = format!(
            "{}:{}",
            table.namespace,
            dir.path()
                .canonicalize()
                .unwrap()
                .join("shared.rs")
                .display()
        );
        std::fs::write(
            dir.path()
                .join("locks")
                .join(format!("{}.lock", lock_file_stem(&key))),
            "py-agent-1\n",
        )
        .unwrap();
        let report = table
            .acquire(
                &AgentId::new("rust"),
                &paths(&["shared.rs"]),
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert!(!report.all_acquired);
        assert_eq!(report.results[0].holder, Some(AgentId::new("py-agent-1")));
        // Its companion `.meta` ends with a newline; the path read back must not.
        let canonical = dir.path().canonicalize().unwrap().join("shared.rs");
        std::fs::write(
            dir.path()
                .join("locks")
                .join(format!("{}.meta", lock_file_stem(&key))),
            format!("{}\n", canonical.display()),
        )
        .unwrap();
        assert_eq!(
            paths_held_in(&dir.path().join("locks"), &AgentId::new("py-agent-1")),
            vec![canonical]
        );
    }
}
