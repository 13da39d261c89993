//! The second line behind the tool guard: which files in the working tree
//! really changed while an agent's tool call ran, whatever the command line
//! looked like.
//!
//! A scan is one walk of the working tree (tracked and untracked files, not
//! ignored ones, not `.git` and not mala's own `.beads/`) that keeps each
//! file's stat stamp. Two scans differ where a file appeared, disappeared or
//! has a new stamp; the inode change time is in the stamp, and no program
//! can set it back, so a write that restores the modification time is seen
//! too.
//!
//! Every tool call that can write opens a window before it runs and closes
//! it after. Each scan hands what changed since the previous scan to the
//! windows open in between, narrowed to those open when the file's change
//! time says it changed, so with several agents at work a change goes to the
//! agents that could have made it. Closing a window sorts its changes by
//! their locks: a file another agent holds is that agent's (never blamed on
//! this one), a file this agent holds is its edit, and any other file is an
//! unlocked write. docs/coordination.md explains the attribution.

mod git_store;
mod notify;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use mala_core::{AgentId, LockTable};

use git_store::{GitDirs, Store};

/// What a file's stat said at a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified_ns: i128,
    changed_ns: i128,
    size: u64,
    inode: u64,
    mode: u32,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Self {
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
            size: meta.size(),
            inode: meta.ino(),
            mode: meta.mode(),
        }
    }
}

/// The working tree's files at one moment, by path relative to the root,
/// and the repository's recovery data (`git_store`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    files: HashMap<PathBuf, Stamp>,
    store: Store,
    tracked: Arc<Tracked>,
    /// The stamps of what decides what is ignored besides the tree's own
    /// ignore files (`exclude_stamp`).
    exclude: Vec<Option<Stamp>>,
    /// The tracked files in directories no kernel watch covers (ignored
    /// ones), stat'ed at every scan from events.
    unwatched: Arc<Vec<PathBuf>>,
}

/// The files git tracks, as its index listed them when it had `index` as
/// its stamp: listed again only when the index changed.
#[derive(Debug, Default)]
struct Tracked {
    index: Option<Stamp>,
    paths: Vec<PathBuf>,
}

impl Tracked {
    /// What `git` tracks now, reusing `earlier` while the index is the same.
    fn now(root: &Path, git: &GitDirs, earlier: Option<&Arc<Self>>) -> Arc<Self> {
        let index = std::fs::metadata(git.own.join("index"))
            .ok()
            .map(|meta| Stamp::of(&meta));
        if let Some(earlier) = earlier.filter(|t| t.index == index) {
            return Arc::clone(earlier);
        }
        let paths = index.and_then(|_| ls_files(root)).unwrap_or_default();
        Arc::new(Self { index, paths })
    }
}

fn ls_files(root: &Path) -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt as _;
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        out.stdout
            .split(|&b| b == 0)
            .filter(|path| !path.is_empty())
            .map(|path| PathBuf::from(std::ffi::OsStr::from_bytes(path)))
            .collect()
    })
}

impl Snapshot {
    /// Walks the working tree under `root`, on two threads (the walk is
    /// mostly waiting on the file system, one directory at a time).
    pub fn scan(root: &Path) -> Self {
        Self::scan_after(root, &GitDirs::of(root), None).0
    }

    /// [`Snapshot::scan`], reusing what `earlier` knew of the index.
    /// Ignore rules hide untracked files only: a tracked file they match
    /// (one added with `git add -f`, or one a pattern added to
    /// `.git/info/exclude` or a `.gitignore` would hide) is still watched.
    /// Also returns the directories the walk went into.
    fn scan_after(root: &Path, git: &GitDirs, earlier: Option<&Self>) -> (Self, Vec<PathBuf>) {
        let walker = notify::scan_rules(root)
            .threads(2)
            .filter_entry(|entry| !notify::is_git_or_mala(entry))
            .build_parallel();
        let found = Mutex::new(Found::default());
        walker.visit(&mut Collectors {
            root,
            found: &found,
        });
        // `visit` returns after every visitor is dropped, which flushed it.
        let Found { mut files, dirs } = found.into_inner().unwrap_or_else(PoisonError::into_inner);
        let tracked = Tracked::now(root, git, earlier.map(|e| &e.tracked));
        let _ = add_tracked(root, &mut files, &tracked, |_| true);
        let snapshot = Self {
            files,
            store: Store::read(git, earlier.map(|e| &e.store)),
            tracked,
            exclude: exclude_stamp(git),
            unwatched: Arc::default(),
        };
        (snapshot, dirs)
    }

    /// `self` brought up to date where the kernel says the tree changed,
    /// the rest taken as it was; `None` when only a full scan can tell
    /// (events lost, ignore rules changed, too much changed, a path the
    /// kernel will not watch).
    fn refreshed(
        &self,
        root: &Path,
        git: &GitDirs,
        notifier: &mut notify::Notifier,
    ) -> Option<Self> {
        use notify::Part;
        let dirty = notifier.drain();
        let exclude = exclude_stamp(git);
        if dirty.everything || exclude != self.exclude {
            return None;
        }
        let tracked = Tracked::now(root, git, Some(&self.tracked));
        let tracked_changed = !Arc::ptr_eq(&tracked, &self.tracked);
        let mut entries = dirty.dirs;
        if tracked_changed {
            // Files that became tracked or untracked may be ignored ones.
            for path in notify::differing(&self.tracked.paths, &tracked.paths) {
                entries.insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
            }
        }
        let mut trees: Vec<PathBuf> = Vec::new();
        for tree in dirty.trees {
            // Sorted: a tree under one already taken is walked with it.
            if !trees.iter().any(|top| tree.starts_with(top)) {
                trees.push(tree);
            }
        }
        entries.retain(|dir| !trees.iter().any(|tree| dir.starts_with(tree)));
        if trees.len() + entries.len() > MOST_PARTS {
            return None;
        }
        let watches_changed = !trees.is_empty() || tracked_changed;
        let parts = trees
            .into_iter()
            .map(Part::Tree)
            .chain(entries.into_iter().map(Part::Entries));
        let mut files = self.files.clone();
        for part in parts {
            files.retain(|path, _| !part.holds(path));
            let found = match &part {
                Part::Tree(tree) => {
                    notifier.forget_under(tree);
                    watched_walk(root, &part, notifier)?
                }
                Part::Entries(_) => notify::walk(root, &part).0,
            };
            for (path, meta) in found {
                keep_watched(&mut files, notifier, root, path, Stamp::of(&meta))?;
            }
            let hidden = add_tracked(root, &mut files, &tracked, |path| part.holds(path));
            if !hidden
                .iter()
                .all(|(path, inode)| notifier.watch_file(root, path, *inode))
            {
                return None;
            }
        }
        // Tracked files in directories no watch covers (ignored ones): a
        // file of theirs removed and made again raises no event.
        let unwatched = if watches_changed {
            Arc::new(unwatched_tracked(&tracked, notifier))
        } else {
            Arc::clone(&self.unwatched)
        };
        for path in unwatched.iter() {
            match root.join(path).symlink_metadata() {
                Ok(meta) if !meta.is_dir() => {
                    keep_watched(&mut files, notifier, root, path.clone(), Stamp::of(&meta))?;
                }
                _ => {
                    files.remove(path);
                }
            }
        }
        Some(Self {
            files,
            store: Store::read(git, Some(&self.store)),
            tracked,
            exclude,
            unwatched,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files that differ from `earlier`.
    pub fn changes_since(&self, earlier: &Self) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .files
            .iter()
            .filter(|(path, stamp)| earlier.files.get(*path) != Some(stamp))
            .map(|(path, stamp)| Change {
                path: path.clone(),
                changed_ns: Some(stamp.changed_ns),
                created: !earlier.files.contains_key(path),
            })
            .collect();
        out.extend(
            earlier
                .files
                .keys()
                .filter(|path| !self.files.contains_key(*path))
                .map(|path| Change {
                    path: path.clone(),
                    changed_ns: None,
                    created: false,
                }),
        );
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// One file that differs between two scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Relative to the root.
    pub path: PathBuf,
    /// Its inode change time now; `None` when it is gone.
    pub changed_ns: Option<i128>,
    /// It did not exist at the earlier scan.
    pub created: bool,
}

/// Ignore rules hide untracked files only: the tracked files (of those
/// `which` takes) the walk did not see are stat'ed too (not mala's `.beads`).
/// Returns the paths it added, with their inodes.
fn add_tracked(
    root: &Path,
    files: &mut HashMap<PathBuf, Stamp>,
    tracked: &Tracked,
    which: impl Fn(&Path) -> bool,
) -> Vec<(PathBuf, u64)> {
    let mut added = Vec::new();
    for path in &tracked.paths {
        if files.contains_key(path) || path.starts_with(".beads") || !which(path) {
            continue;
        }
        if let Ok(meta) = root.join(path).symlink_metadata()
            && !meta.is_dir()
        {
            let stamp = Stamp::of(&meta);
            added.push((path.clone(), stamp.inode));
            files.insert(path.clone(), stamp);
        }
    }
    added
}

/// `path` in the scan with `stamp`, and under its own kernel watch; `None`
/// when the kernel refuses the watch.
fn keep_watched(
    files: &mut HashMap<PathBuf, Stamp>,
    notifier: &mut notify::Notifier,
    root: &Path,
    path: PathBuf,
    stamp: Stamp,
) -> Option<()> {
    notifier
        .watch_file(root, &path, stamp.inode)
        .then_some(())?;
    files.insert(path, stamp);
    Some(())
}

/// The tracked files whose directory no kernel watch covers.
fn unwatched_tracked(tracked: &Tracked, notifier: &notify::Notifier) -> Vec<PathBuf> {
    tracked
        .paths
        .iter()
        .filter(|path| !path.starts_with(".beads"))
        .filter(|path| !notifier.is_watched(path.parent().unwrap_or(Path::new(""))))
        .cloned()
        .collect()
}

/// More directories than this changed at once (a checkout, a build into an
/// unignored directory): one full scan costs less than listing each.
const MOST_PARTS: usize = 256;

/// The files of a tree a walk finds, once every directory in it is watched:
/// walked again while a walk finds a directory not watched yet, so nothing
/// made between a directory's walk and its watch is missed. `None` when the
/// kernel refuses a watch, or the tree keeps growing new directories.
fn watched_walk(
    root: &Path,
    part: &notify::Part,
    notifier: &mut notify::Notifier,
) -> Option<Vec<(PathBuf, std::fs::Metadata)>> {
    for _ in 0..4 {
        let (found, dirs) = notify::walk(root, part);
        let mut new = false;
        for dir in &dirs {
            new |= !notifier.is_watched(dir);
            if !notifier.watch(root, dir) {
                return None;
            }
        }
        if !new {
            return Some(found);
        }
    }
    None
}

/// The stamps of what decides what is ignored beyond the tree's own ignore
/// files: the repository's `info/exclude` and config, and the user's git
/// config and global excludes.
fn exclude_stamp(git: &GitDirs) -> Vec<Option<Stamp>> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    let mut paths = vec![git.common.join("info/exclude"), git.common.join("config")];
    paths.extend(home.map(|h| h.join(".gitconfig")));
    paths.extend(
        config
            .iter()
            .flat_map(|c| [c.join("git/config"), c.join("git/ignore")]),
    );
    paths
        .iter()
        .map(|path| std::fs::metadata(path).ok().map(|meta| Stamp::of(&meta)))
        .collect()
}

/// What the walking threads found: files with their stamps, directories.
#[derive(Default)]
struct Found {
    files: HashMap<PathBuf, Stamp>,
    dirs: Vec<PathBuf>,
}

/// One walking thread's findings, added to the scan when it is done.
struct Collector<'s> {
    root: &'s Path,
    local: Vec<(PathBuf, Stamp)>,
    dirs: Vec<PathBuf>,
    found: &'s Mutex<Found>,
}

struct Collectors<'s> {
    root: &'s Path,
    found: &'s Mutex<Found>,
}

impl<'s> ignore::ParallelVisitorBuilder<'s> for Collectors<'s> {
    fn build(&mut self) -> Box<dyn ignore::ParallelVisitor + 's> {
        Box::new(Collector {
            root: self.root,
            local: Vec::new(),
            dirs: Vec::new(),
            found: self.found,
        })
    }
}

impl ignore::ParallelVisitor for Collector<'_> {
    fn visit(&mut self, entry: Result<ignore::DirEntry, ignore::Error>) -> ignore::WalkState {
        let Ok(entry) = entry else {
            return ignore::WalkState::Continue;
        };
        if entry.file_type().is_some_and(|t| t.is_dir()) {
            if let Ok(relative) = entry.path().strip_prefix(self.root) {
                self.dirs.push(relative.to_path_buf());
            }
            return ignore::WalkState::Continue;
        }
        if let (Ok(meta), Ok(relative)) = (
            entry.path().symlink_metadata(),
            entry.path().strip_prefix(self.root),
        ) {
            self.local.push((relative.to_path_buf(), Stamp::of(&meta)));
        }
        ignore::WalkState::Continue
    }
}

impl Drop for Collector<'_> {
    fn drop(&mut self) {
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        found.files.extend(self.local.drain(..));
        found.dirs.append(&mut self.dirs);
    }
}

/// What a watched tool call does, as far as mala can tell beforehand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A shell command line.
    Shell(String),
    /// A structured edit of one file (absolute path): it writes that file only.
    Edit(PathBuf),
    /// A tool mala does not know: it could write anything.
    Other,
}

/// One open window: a tool call of one agent that is running.
#[derive(Debug)]
struct Window {
    agent: AgentId,
    opened_ns: i128,
    /// The files the call can write, worked out once when it opens (every
    /// scan asks, for every change).
    reach: Reach,
    /// It runs git with nothing but programs whose writes its words name.
    runs_git: bool,
    /// A run of a validation command: what it leaves is not the agent's edit.
    validation: bool,
    seen: Vec<Seen>,
    /// What `.git` lost while this call, which ran a program, was running.
    git_losses: Vec<String>,
}

/// What a call can write: any file (a program, a tool mala does not know),
/// or only the files named (a structured edit, a command whose programs
/// write only what their words name).
#[derive(Debug)]
enum Reach {
    Anything,
    Only(Vec<PathBuf>),
}

impl Reach {
    fn of(call: &Call, root: &Path) -> Self {
        match call {
            Call::Edit(file) => {
                Self::Only(vec![crate::canonical_path(root, &file.to_string_lossy())])
            }
            Call::Shell(command) if mala_domain::effects_are_known(command) => {
                Self::Only(mala_domain::shell_writes(command, root))
            }
            Call::Other | Call::Shell(_) => Self::Anything,
        }
    }
}

/// A change handed to a window.
#[derive(Debug)]
struct Seen {
    change: Change,
    /// Who held the file's lock when the change was seen.
    holder: Option<AgentId>,
}

/// What one closed window saw, sorted by locks. Paths are absolute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Files this agent holds (or every file, when edits need no locks).
    pub edits: Vec<PathBuf>,
    /// Files nobody holds: written without a lock.
    pub unlocked: Vec<PathBuf>,
    /// Files another agent holds, with who: written behind its back.
    pub held_by_others: Vec<(PathBuf, AgentId)>,
    /// Files this agent holds that other agents' calls changed since its
    /// last call ended, with who: it should look before it commits them.
    pub changed_by_others: Vec<(PathBuf, AgentId)>,
    /// What `.git` lost that git's own commands (vetted by the guard) did
    /// not take: refs deleted, objects removed, while this call ran a program.
    pub git_losses: Vec<String>,
    /// What the call left running after it returned, which mala stopped:
    /// each command line and pid.
    pub left_running: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Snapshot>,
    /// The kernel's word on which directories changed (see `notify`);
    /// `None` before the first scan, and for good once it failed.
    notifier: Option<notify::Notifier>,
    notifier_failed: bool,
    /// How many scans walked the whole tree.
    full_scans: u64,
    /// For each lock holder, its files other agents' calls changed.
    notices: HashMap<AgentId, Vec<(PathBuf, AgentId)>>,
    open: HashMap<u64, Window>,
    next: u64,
}

/// Opens a window per tool call; see the module documentation.
pub struct TreeWatch {
    root: PathBuf,
    git: GitDirs,
    locks: Option<Arc<dyn LockTable>>,
    /// The validation commands: what they leave behind is not an edit.
    validation: Vec<String>,
    state: Mutex<State>,
}

impl std::fmt::Debug for TreeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatch")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// How a backend's sessions are watched in their working trees.
#[derive(Debug, Clone, Default)]
pub enum Watching {
    #[default]
    Off,
    /// Every session works in this one tree, the user's checkout.
    Shared(Arc<TreeWatch>),
    /// Each session works alone in a tree of its own (worktree isolation):
    /// each gets a watch of that tree, where every change is its edit.
    /// Runs of these validation commands are not edits.
    EachTree { validation: Vec<String> },
}

impl Watching {
    /// The watch of a session working in `cwd`.
    pub(crate) fn for_session(&self, cwd: &Path) -> Option<Arc<TreeWatch>> {
        match self {
            Self::Off => None,
            Self::Shared(watch) => Some(Arc::clone(watch)),
            Self::EachTree { validation } => Some(Arc::new(
                TreeWatch::new(cwd, None).with_validation(validation.clone()),
            )),
        }
    }
}

/// A window's handle, from `open` to `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowId(u64);

/// Directories tools fill with caches of their own, whatever the project.
const CACHE_DIRS: &[&str] = &[
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    ".nox",
    "node_modules",
    ".eslintcache",
];

fn is_cache_file(path: &Path) -> bool {
    path.components()
        .any(|c| CACHE_DIRS.iter().any(|dir| c.as_os_str() == *dir))
        || path.extension().is_some_and(|e| e == "pyc")
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Change times and our clock come from the same kernel, but file systems
/// round their times; a change this close before a window opened may be its.
const SLACK_NS: i128 = 20_000_000;

/// Watches every directory and file of `snapshot`; whether any watch is
/// new (then the tree is scanned again: a change between a walk and its
/// watch raised no event), or the path the kernel refused.
fn watch_all(
    notifier: &mut notify::Notifier,
    root: &Path,
    snapshot: &Snapshot,
    dirs: &[PathBuf],
) -> Result<bool, PathBuf> {
    let mut new = false;
    for dir in dirs {
        new |= !notifier.is_watched(dir);
        if !notifier.watch(root, dir) {
            return Err(dir.clone());
        }
    }
    for (path, stamp) in &snapshot.files {
        new |= !notifier.is_file_watched(path, stamp.inode);
        if !notifier.watch_file(root, path, stamp.inode) {
            return Err(path.clone());
        }
    }
    Ok(new)
}

/// Whether what `.git` lost now would go to anyone: some open call runs a
/// program, and none runs git itself (whose work the guard vetted).
fn git_losses_matter(state: &State) -> bool {
    let open = state.open.values();
    !open.clone().any(|w| w.runs_git)
        && open.into_iter().any(|w| matches!(w.reach, Reach::Anything))
}

impl TreeWatch {
    /// Watches the working tree at `root`. With a lock table, unlocked writes
    /// are told apart from edits; without one, every change is an edit.
    pub fn new(root: &Path, locks: Option<Arc<dyn LockTable>>) -> Self {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        Self {
            git: GitDirs::of(&root),
            root,
            locks,
            validation: Vec::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// What a run of one of these commands changes (test caches, reports)
    /// is the project's own doing, not the agent's: the gate does not count
    /// those runs' outputs as edits either.
    #[must_use]
    pub fn with_validation(mut self, commands: Vec<String>) -> Self {
        self.validation = commands;
        self
    }

    /// The working tree's root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scans, and hands each change since the last scan to the calls that
    /// made it, as far as mala can tell: of the windows open when it changed
    /// (its change time says when; a removed file has none, so every open
    /// window), those whose call could have written it. When the agent that
    /// holds the file's lock is among them, the change is its own and no one
    /// else's. A change no open call could have made (a structured edit
    /// between calls, a process left in the background) goes to no one.
    /// The lock is held across the scan so two scans never interleave.
    fn rescan(&self, state: &mut State) {
        let now = self.snapshot(state);
        if let Some(last) = state.last.take() {
            if git_losses_matter(state) {
                let losses = now.store.losses_since(&last.store, &self.git);
                Self::hand_git_losses(state, &losses);
            }
            for change in now.changes_since(&last) {
                let holder = self
                    .locks
                    .as_ref()
                    .and_then(|locks| locks.holder(&self.root.join(&change.path)));
                let could: Vec<(u64, AgentId)> = state
                    .open
                    .iter()
                    .filter(|(_, w)| {
                        change
                            .changed_ns
                            .is_none_or(|t| t + SLACK_NS >= w.opened_ns)
                    })
                    .filter(|(_, w)| self.could_write(w, &change.path))
                    .map(|(id, w)| (*id, w.agent.clone()))
                    .collect();
                let holder_did = could.iter().any(|(_, a)| Some(a) == holder.as_ref());
                if let Some(holder) = holder.as_ref().filter(|_| !holder_did) {
                    let notices = state.notices.entry(holder.clone()).or_default();
                    for (_, agent) in &could {
                        notices.push((self.root.join(&change.path), agent.clone()));
                    }
                }
                for (id, agent) in could {
                    if holder_did && Some(&agent) != holder.as_ref() {
                        continue;
                    }
                    if let Some(window) = state.open.get_mut(&id) {
                        window.seen.push(Seen {
                            change: change.clone(),
                            holder: holder.clone(),
                        });
                    }
                }
            }
        }
        state.last = Some(now);
    }

    /// The tree now: the last scan refreshed where the kernel says the tree
    /// changed, or a full scan. After a full scan every directory it walked
    /// is watched; when any watch is new, the tree is scanned once more, so
    /// no change falls between a directory's walk and its watch.
    fn snapshot(&self, state: &mut State) -> Snapshot {
        if let (Some(last), Some(notifier)) = (state.last.as_ref(), state.notifier.as_mut())
            && let Some(now) = last.refreshed(&self.root, &self.git, notifier)
        {
            return now;
        }
        // A full scan, with a notifier of its own: what the last one knew
        // may be stale (a directory replaced while its events were lost).
        state.full_scans += 1;
        state.notifier = if state.notifier_failed {
            None
        } else {
            notify::Notifier::new()
        };
        state.notifier_failed = state.notifier.is_none();
        let mut now = Snapshot::scan_after(&self.root, &self.git, state.last.as_ref());
        let Some(notifier) = state.notifier.as_mut() else {
            return now.0;
        };
        for _ in 0..4 {
            match watch_all(notifier, &self.root, &now.0, &now.1) {
                Err(path) => {
                    tracing::info!(path = %path.display(), "the tree watch scans the whole tree after each call: \
                        the kernel refused to watch a path (the user's inotify watch limit)");
                    state.notifier = None;
                    state.notifier_failed = true;
                    return now.0;
                }
                Ok(false) => {
                    now.0.unwatched = Arc::new(unwatched_tracked(&now.0.tracked, notifier));
                    return now.0;
                }
                Ok(true) => now = Snapshot::scan_after(&self.root, &self.git, Some(&now.0)),
            }
        }
        // The tree keeps changing under the scan: the next one is full too.
        state.notifier = None;
        now.0
    }

    /// `.git` lost refs, packs or objects: it goes to the calls that ran a
    /// program (see `git_losses_matter`).
    fn hand_git_losses(state: &mut State, losses: &[String]) {
        for window in state.open.values_mut() {
            let program = matches!(window.reach, Reach::Anything);
            if program {
                window.git_losses.extend(losses.iter().cloned());
            }
        }
    }

    /// Whether a window's call could have written `path` (see `Reach`).
    fn could_write(&self, window: &Window, path: &Path) -> bool {
        match &window.reach {
            Reach::Anything => true,
            Reach::Only(files) => files.contains(&self.root.join(path)),
        }
    }

    /// Before a tool call runs. Only the first window scans: later ones
    /// compare with the last scan, and change times tell which changes came
    /// after they opened, so one observation costs one scan.
    pub fn open(&self, agent: &AgentId, call: &Call) -> WindowId {
        let reach = Reach::of(call, &self.root);
        let runs_git = matches!(call, Call::Shell(command)
            if matches!(reach, Reach::Only(_)) && command.split_whitespace().any(|word| word == "git"));
        let validation = match call {
            Call::Shell(command) => self
                .validation
                .iter()
                .any(|v| mala_domain::is_validation_run(command, v, &self.root)),
            Call::Edit(_) | Call::Other => false,
        };
        let mut state = self.state();
        if state.last.is_none() {
            self.rescan(&mut state);
        }
        state.next += 1;
        let id = state.next;
        state.open.insert(
            id,
            Window {
                agent: agent.clone(),
                opened_ns: now_ns(),
                reach,
                runs_git,
                validation,
                seen: Vec::new(),
                git_losses: Vec::new(),
            },
        );
        WindowId(id)
    }

    /// After the tool call ended: what it changed, sorted by locks. What a
    /// validation run creates (caches, reports) and changes in files the
    /// agent may edit is not an edit; its changes to files the agent does
    /// not hold still are what they are.
    pub fn close(&self, id: WindowId) -> Observed {
        // One lock: the window and the notices for its agent leave together.
        let (window, notices) = {
            let mut state = self.state();
            self.rescan(&mut state);
            let Some(window) = state.open.remove(&id.0) else {
                return Observed::default();
            };
            let notices = state.notices.remove(&window.agent).unwrap_or_default();
            (window, notices)
        };
        let mut seen = window.seen;
        seen.sort_by(|a, b| a.change.path.cmp(&b.change.path));
        seen.dedup_by(|a, b| a.change.path == b.change.path);
        let mut observed = Observed {
            git_losses: window.git_losses,
            changed_by_others: notices,
            ..Observed::default()
        };
        for Seen { change, holder } in seen {
            if change.created && is_cache_file(&change.path) {
                // An interpreter's or tool's cache in a repository that does
                // not ignore it: nobody's edit, and nothing to lock.
                continue;
            }
            let path = self.root.join(&change.path);
            match holder {
                Some(holder) if holder == window.agent => {
                    if !window.validation {
                        observed.edits.push(path);
                    }
                }
                Some(other) => observed.held_by_others.push((path, other)),
                None if self.locks.is_none() => {
                    if !window.validation {
                        observed.edits.push(path);
                    }
                }
                None if window.validation && change.created => {}
                None => observed.unlocked.push(path),
            }
        }
        observed
    }

    /// Drops a window whose call never reported its end, without a scan.
    pub fn forget(&self, id: WindowId) {
        self.state().open.remove(&id.0);
    }
}

/// Closes `window` once what the agent's calls left running is stopped
/// (`agent`, given when no other call of it is running): a process left
/// running could write after the window closed, where no window sees it.
pub(crate) fn close_after_strays(
    watch: &TreeWatch,
    window: WindowId,
    agent: Option<&crate::process_tree::AgentProcess>,
) -> Observed {
    let stopped = agent
        .map(crate::process_tree::AgentProcess::stop_strays)
        .unwrap_or_default();
    let mut observed = watch.close(window);
    observed.left_running = stopped
        .into_iter()
        .map(|stray| format!("`{}` (pid {})", stray.command, stray.pid))
        .collect();
    observed
}

/// What a tool call was seen to change, as the agent's events: every
/// change a `FileEdited` for the gate, a file it does not hold also an
/// `UnlockedWrite`. Returns what the agent must be told (files changed
/// without their locks, or changed by others under its own), if anything.
pub(crate) fn report(
    observed: &Observed,
    tool: &str,
    tool_use_id: &str,
    root: Option<&Path>,
    emit: &dyn Fn(&mala_core::AgentEvent),
) -> Option<String> {
    use mala_core::{AgentEvent, FileEdit};
    let now = chrono::Utc::now();
    let record = |path: &Path| FileEdit {
        tool_use_id: tool_use_id.to_owned(),
        tool: format!("{tool} (seen in the working tree)"),
        path: path.to_string_lossy().into_owned(),
        at: now,
    };
    let foreign = observed.held_by_others.iter().map(|(path, _)| path);
    for path in observed
        .edits
        .iter()
        .chain(&observed.unlocked)
        .chain(foreign)
    {
        emit(&AgentEvent::FileEdited { edit: record(path) });
    }
    let shown = |path: &Path| {
        root.and_then(|r| path.strip_prefix(r).ok())
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut told = Vec::new();
    if !observed.unlocked.is_empty() {
        let names: Vec<String> = observed.unlocked.iter().map(|p| shown(p)).collect();
        told.push(format!(
            "mala saw this {tool} call change {}, which you do not hold the lock of; another agent may be \
             editing it. Call lock_acquire with that path, then restore it or keep the change and commit it \
             as yours: until then your work does not pass the gate.",
            names.join(", ")
        ));
    }
    for (path, holder) in &observed.held_by_others {
        told.push(format!(
            "mala saw this {tool} call change {}, which {holder} holds and is editing. Leave it alone: \
             until it is as {holder} left it, your work does not pass the gate.",
            shown(path)
        ));
    }
    if !observed.left_running.is_empty() {
        told.push(format!(
            "mala stopped what your commands left running after they returned: {}. A process left \
             running could change files after mala has looked, so commands run in the foreground: \
             start and stop a server or a watcher within one command.",
            observed.left_running.join(", ")
        ));
    }
    for (path, by) in &observed.changed_by_others {
        told.push(format!(
            "mala saw {} change {}, which you hold. Look at it before you commit it: the change is not yours",
            by,
            shown(path)
        ));
    }
    let behind_backs = observed.held_by_others.iter().map(|(p, _)| p);
    for path in observed.unlocked.iter().chain(behind_backs) {
        emit(&AgentEvent::UnlockedWrite { edit: record(path) });
    }
    (!told.is_empty()).then(|| told.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileLockTable;
    use std::time::Duration;

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git/refs")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "a").unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "b").unwrap();
        std::fs::write(dir.path().join(".gitignore"), "target/\n").unwrap();
        dir
    }

    fn relative(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        let root = root.canonicalize().unwrap();
        paths
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_scan_sees_changed_new_and_removed_files_but_not_ignored_ones() {
        let dir = repo();
        let before = Snapshot::scan(dir.path());
        assert_eq!(before.len(), 3, "src/a.rs, src/b.rs, .gitignore");
        std::fs::write(dir.path().join("src/a.rs"), "changed").unwrap();
        std::fs::write(dir.path().join("src/new.rs"), "new").unwrap();
        std::fs::remove_file(dir.path().join("src/b.rs")).unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/out"), "ignored").unwrap();
        std::fs::write(dir.path().join(".git/refs/x"), "not the tree").unwrap();
        let changed: Vec<String> = Snapshot::scan(dir.path())
            .changes_since(&before)
            .into_iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(changed, vec!["src/a.rs", "src/b.rs", "src/new.rs"]);
    }

    #[test]
    fn a_tracked_file_is_watched_whatever_the_ignore_rules_say() {
        let repo = mala_testkit::TempRepo::new();
        let root = repo.path();
        repo.write("src/a.rs", "a");
        repo.write("fixtures/keep.log", "kept");
        repo.write(".gitignore", "*.log\n");
        repo.git(&["add", "-A"]);
        repo.git(&["add", "-f", "fixtures/keep.log"]);
        // Hidden by a rule added now, and one the repository always had.
        repo.write(".git/info/exclude", "src/\n");
        let before = Snapshot::scan(root);
        repo.write("src/a.rs", "changed");
        repo.write("fixtures/keep.log", "changed");
        repo.write("fixtures/new.log", "untracked, ignored");
        let changed: Vec<String> = Snapshot::scan_after(root, &GitDirs::of(root), Some(&before))
            .0
            .changes_since(&before)
            .into_iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(changed, ["fixtures/keep.log", "src/a.rs"]);
    }

    #[test]
    fn a_rewrite_that_puts_the_modification_time_back_is_still_seen() {
        let dir = repo();
        let file = dir.path().join("src/a.rs");
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        let before = Snapshot::scan(dir.path());
        std::fs::write(&file, "b").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(Snapshot::scan(dir.path()).changes_since(&before).len(), 1);
    }

    #[tokio::test]
    async fn a_window_sorts_its_changes_by_who_holds_them() {
        let dir = repo();
        let locks: Arc<dyn LockTable> =
            Arc::new(FileLockTable::new(dir.path().join(".git/locks"), dir.path()).unwrap());
        let (me, other) = (AgentId::new("a@r"), AgentId::new("b@r"));
        locks
            .acquire(&me, &["src/a.rs".into()], Duration::ZERO)
            .await
            .unwrap();
        locks
            .acquire(&other, &["src/b.rs".into()], Duration::ZERO)
            .await
            .unwrap();
        let watch = TreeWatch::new(dir.path(), Some(locks));
        let window = watch.open(&me, &Call::Other);
        for file in ["src/a.rs", "src/b.rs", "src/c.rs"] {
            std::fs::write(dir.path().join(file), "x").unwrap();
        }
        let seen = watch.close(window);
        assert_eq!(relative(dir.path(), &seen.edits), vec!["src/a.rs"]);
        assert_eq!(relative(dir.path(), &seen.unlocked), vec!["src/c.rs"]);
        // b had no call running that could have written its own file.
        let foreign: Vec<PathBuf> = seen.held_by_others.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(relative(dir.path(), &foreign), vec!["src/b.rs"]);
        assert_eq!(seen.held_by_others[0].1, other);
        // And b hears of it at its next call.
        let next = watch.open(&other, &Call::Other);
        let told = watch.close(next).changed_by_others;
        assert_eq!(
            told,
            vec![(
                dir.path().canonicalize().unwrap().join("src/b.rs"),
                me.clone()
            )]
        );
        // Nothing changed since: the next window sees nothing.
        let window = watch.open(&me, &Call::Other);
        assert_eq!(watch.close(window), Observed::default());
        // A forgotten window gathers nothing and closes empty.
        let window = watch.open(&me, &Call::Other);
        watch.forget(window);
        std::fs::write(dir.path().join("src/c.rs"), "again").unwrap();
        assert_eq!(watch.close(window), Observed::default());
    }

    #[test]
    fn a_change_goes_to_the_windows_open_when_it_happened() {
        let dir = repo();
        let watch = TreeWatch::new(dir.path(), None);
        let (a, b) = (AgentId::new("a@r"), AgentId::new("b@r"));
        let first = watch.open(&a, &Call::Other);
        std::fs::write(dir.path().join("src/a.rs"), "by a").unwrap();
        // b's window must open after a's change, beyond the slack change times get.
        let changed = Stamp::of(&std::fs::metadata(dir.path().join("src/a.rs")).unwrap());
        while now_ns() <= changed.changed_ns + SLACK_NS {
            std::thread::yield_now();
        }
        let second = watch.open(&b, &Call::Other);
        std::fs::write(dir.path().join("src/b.rs"), "by a or b").unwrap();
        let of_a = watch.close(first);
        let of_b = watch.close(second);
        assert_eq!(
            relative(dir.path(), &of_a.edits),
            vec!["src/a.rs", "src/b.rs"]
        );
        assert_eq!(relative(dir.path(), &of_b.edits), vec!["src/b.rs"]);
    }

    #[test]
    fn a_write_is_seen_whatever_wrote_it() {
        let dir = repo();
        std::fs::write(dir.path().join("fix.sh"), "printf x > src/by-script.rs\n").unwrap();
        let watch = TreeWatch::new(dir.path(), None);
        let agent = AgentId::new("a@r");
        for (command, file) in [
            ("echo x > src/a.rs", "src/a.rs"),
            ("sed -i -e s/b/c/ src/b.rs", "src/b.rs"),
            (
                "python3 -c \"open('src/py.rs', 'w').write('x')\"",
                "src/py.rs",
            ),
            ("bash fix.sh", "src/by-script.rs"),
        ] {
            let window = watch.open(&agent, &Call::Shell(command.into()));
            let status = std::process::Command::new("bash")
                .args(["-c", command])
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "{command}");
            let seen = watch.close(window);
            assert_eq!(relative(dir.path(), &seen.edits), vec![file], "{command}");
        }
    }

    #[test]
    fn refs_or_objects_lost_while_a_program_ran_are_reported_but_gits_own_work_is_not() {
        let dir = repo();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(status.status.success(), "git {args:?}");
        };
        std::fs::remove_dir_all(dir.path().join(".git")).unwrap();
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-qm", "one"]);
        git(&["branch", "keep"]);
        git(&["branch", "topic"]);
        let watch = TreeWatch::new(dir.path(), None);
        let agent = AgentId::new("a@r");
        // git's own command, which the guard vetted: not a loss to report.
        let window = watch.open(&agent, &Call::Shell("git branch -d topic".into()));
        git(&["branch", "-d", "topic"]);
        assert!(watch.close(window).git_losses.is_empty());
        // `git gc` packs refs and objects: nothing is lost.
        let window = watch.open(&agent, &Call::Shell("git gc -q".into()));
        git(&["gc", "-q"]);
        assert!(watch.close(window).git_losses.is_empty());
        // A program deleting a ref behind git's back.
        let window = watch.open(&agent, &Call::Shell("python3 /tmp/evil.py".into()));
        git(&["update-ref", "-d", "refs/heads/keep"]);
        let losses = watch.close(window).git_losses;
        assert_eq!(losses, vec!["the ref refs/heads/keep was deleted"]);
        // A program whose git packs the loose objects and removes them (as
        // an automatic `git gc` does): every object is still there.
        std::fs::write(dir.path().join("src/a.rs"), "two").unwrap();
        git(&["commit", "-qam", "two"]);
        let window = watch.open(&agent, &Call::Shell("./test.sh".into()));
        git(&["repack", "-q", "-d"]);
        git(&["prune-packed"]);
        assert!(watch.close(window).git_losses.is_empty());
        // A program pruning an object nothing reaches, as `git gc` does.
        let blob = std::process::Command::new("git")
            .args(["hash-object", "-w", "--stdin"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let blob = String::from_utf8(blob.stdout).unwrap();
        let window = watch.open(&agent, &Call::Shell("git hash-object -w --stdin".into()));
        watch.close(window);
        let (fan, rest) = blob.trim().split_at(2);
        let window = watch.open(&agent, &Call::Shell("./prune.sh".into()));
        std::fs::remove_file(dir.path().join(".git/objects").join(fan).join(rest)).unwrap();
        assert!(
            watch.close(window).git_losses.is_empty(),
            "nothing needed it"
        );
        // A program removing a loose object the history needs.
        std::fs::write(dir.path().join("src/a.rs"), "three").unwrap();
        let window = watch.open(&agent, &Call::Shell("git commit -qam three".into()));
        git(&["commit", "-qam", "three"]);
        watch.close(window);
        let head = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let head = String::from_utf8(head.stdout).unwrap();
        let (fan, rest) = head.trim().split_at(2);
        let window = watch.open(&agent, &Call::Shell("python3 /tmp/evil.py".into()));
        std::fs::remove_file(dir.path().join(".git/objects").join(fan).join(rest)).unwrap();
        let losses = watch.close(window).git_losses;
        assert_eq!(
            losses,
            vec![
                "1 object(s) of the object store were removed, and git fsck finds objects the history needs missing"
            ]
        );
    }

    type TreeChange<'t> = (&'static str, Box<dyn Fn() + 't>);

    /// One change of each kind a tree sees, in order, each with its name.
    fn tree_changes<'t>(
        repo: &'t mala_testkit::TempRepo,
        root: &'t Path,
        outside: &'t Path,
    ) -> Vec<TreeChange<'t>> {
        vec![
            ("write", Box::new(|| repo.write("src/a.rs", "changed"))),
            (
                "new dir with files",
                Box::new(|| repo.write("src/new/inner/c.rs", "c")),
            ),
            (
                "remove a tree",
                Box::new(|| std::fs::remove_dir_all(root.join("src/deep")).unwrap()),
            ),
            (
                "move a tree",
                Box::new(|| std::fs::rename(root.join("src/new"), root.join("moved")).unwrap()),
            ),
            (
                "write in the moved tree",
                Box::new(|| repo.write("moved/inner/c.rs", "again")),
            ),
            (
                "an ignored file",
                Box::new(|| repo.write("src/x.log", "ignored")),
            ),
            (
                "build output",
                Box::new(|| repo.write("target/o", "ignored")),
            ),
            (
                "force-add an ignored file",
                Box::new(|| {
                    repo.write("src/kept.log", "tracked");
                    repo.git(&["add", "-f", "src/kept.log"]);
                }),
            ),
            (
                "change it",
                Box::new(|| repo.write("src/kept.log", "tracked, changed")),
            ),
            (
                "a tracked file in an ignored directory",
                Box::new(|| {
                    repo.write("target/kept", "tracked");
                    repo.git(&["add", "-f", "target/kept"]);
                }),
            ),
            (
                "change it",
                Box::new(|| repo.write("target/kept", "tracked, changed")),
            ),
            (
                "a write through a hard link from outside",
                Box::new(|| {
                    std::fs::hard_link(root.join("src/a.rs"), outside.join("link")).unwrap();
                    std::fs::write(outside.join("link"), "through the link").unwrap();
                }),
            ),
            (
                "an editor's write and rename over",
                Box::new(|| {
                    repo.write("src/a.rs.tmp", "saved");
                    std::fs::rename(root.join("src/a.rs.tmp"), root.join("src/a.rs")).unwrap();
                }),
            ),
            (
                "a write to the replaced file",
                Box::new(|| repo.write("src/a.rs", "saved again")),
            ),
        ]
    }

    /// More of `tree_changes`: directories that come and go, tracked files
    /// no watch covers, links, ignore rules.
    fn more_tree_changes<'t>(
        repo: &'t mala_testkit::TempRepo,
        root: &'t Path,
    ) -> Vec<TreeChange<'t>> {
        vec![
            (
                "an empty new directory",
                Box::new(|| std::fs::create_dir_all(root.join("src/later")).unwrap()),
            ),
            (
                "a file in it, a call later",
                Box::new(|| repo.write("src/later/x.rs", "x")),
            ),
            (
                "the directory replaced",
                Box::new(|| {
                    std::fs::remove_dir_all(root.join("src/later")).unwrap();
                    std::fs::create_dir(root.join("src/later")).unwrap();
                }),
            ),
            (
                "a file in the new one",
                Box::new(|| repo.write("src/later/y.rs", "y")),
            ),
            (
                "a tracked file in an ignored directory removed",
                Box::new(|| std::fs::remove_file(root.join("target/kept")).unwrap()),
            ),
            (
                "and made again",
                Box::new(|| repo.write("target/kept", "back")),
            ),
            (
                "a hard link inside the tree",
                Box::new(|| {
                    std::fs::hard_link(root.join("src/a.rs"), root.join("src/twin.rs")).unwrap();
                }),
            ),
            (
                "a file replaced by a directory",
                Box::new(|| {
                    std::fs::remove_file(root.join("src/twin.rs")).unwrap();
                    repo.write("src/twin.rs/inside.rs", "now a directory");
                }),
            ),
            (
                "a new ignore rule",
                Box::new(|| repo.write(".gitignore", "target/\n*.log\n*.rs\n")),
            ),
            (
                "remove the root's file",
                Box::new(|| std::fs::remove_file(root.join("README.md")).unwrap()),
            ),
            (
                "a mode change",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt as _;
                    let path = root.join("moved/inner/c.rs");
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
                }),
            ),
        ]
    }

    #[test]
    fn a_scan_from_the_kernels_events_sees_what_a_full_scan_sees() {
        let repo = mala_testkit::TempRepo::new();
        let root = repo.path().canonicalize().unwrap();
        repo.write(".gitignore", "target/\n*.log\n");
        repo.write("src/a.rs", "a");
        repo.write("src/deep/b.rs", "b");
        repo.commit_all("tree");
        let outside = tempfile::tempdir().unwrap();
        let watch = TreeWatch::new(&root, None);
        let agent = AgentId::new("a@r");
        let _ = watch.close(watch.open(&agent, &Call::Other));
        assert!(
            watch.state().notifier.is_some(),
            "inotify is there on Linux"
        );
        let changes = tree_changes(&repo, &root, outside.path());
        for (what, step) in changes.into_iter().chain(more_tree_changes(&repo, &root)) {
            let full_before = watch.state().full_scans;
            let window = watch.open(&agent, &Call::Other);
            step();
            let _ = watch.close(window);
            let full = Snapshot::scan(&root);
            let state = watch.state();
            let seen = &state.last.as_ref().unwrap().files;
            assert_eq!(seen, &full.files, "after {what}");
            // Only a change to what is ignored needs the whole tree walked.
            let walked = state.full_scans > full_before;
            assert_eq!(
                walked,
                what.contains("ignore rule"),
                "after {what}: walked whole: {walked}"
            );
        }
    }

    #[test]
    fn in_its_own_worktree_a_session_is_watched_with_the_store_it_shares() {
        let repo = mala_testkit::TempRepo::new();
        let trees = tempfile::tempdir().unwrap();
        let (mine, other) = (trees.path().join("bd-1"), trees.path().join("bd-2"));
        for (tree, branch) in [(&mine, "mala/bd-1"), (&other, "mala/bd-2")] {
            let tree = tree.to_string_lossy();
            repo.git(&["worktree", "add", "-q", "-b", branch, &tree]);
        }
        repo.git(&["branch", "keep"]);
        let watching = Watching::EachTree {
            validation: Vec::new(),
        };
        let watch = watching.for_session(&mine).unwrap();
        let agent = AgentId::new("bd-1@r");
        let program = Call::Shell("python3 edit.py".into());
        // Its write is its edit (it is alone: no locks), whatever wrote it.
        let window = watch.open(&agent, &program);
        std::fs::write(mine.join("README.md"), "changed").unwrap();
        let observed = watch.close(window);
        assert_eq!(relative(&mine, &observed.edits), vec!["README.md"]);
        // The merge queue deletes another issue's landed branch: not a loss.
        let window = watch.open(&agent, &program);
        repo.git(&["worktree", "remove", "--force", &other.to_string_lossy()]);
        repo.git(&["branch", "-D", "mala/bd-2"]);
        assert!(watch.close(window).git_losses.is_empty());
        // A program deleting the user's branch in the shared store is.
        let window = watch.open(&agent, &program);
        repo.git(&["update-ref", "-d", "refs/heads/keep"]);
        let losses = watch.close(window).git_losses;
        assert_eq!(losses, vec!["the ref refs/heads/keep was deleted"]);
    }

    #[tokio::test]
    async fn a_file_its_holder_was_editing_is_never_blamed_on_another_agent() {
        let dir = repo();
        let locks: Arc<dyn LockTable> =
            Arc::new(FileLockTable::new(dir.path().join(".git/locks"), dir.path()).unwrap());
        let (holder, other) = (AgentId::new("h@r"), AgentId::new("o@r"));
        locks
            .acquire(&holder, &["src/a.rs".into()], Duration::ZERO)
            .await
            .unwrap();
        let watch = TreeWatch::new(dir.path(), Some(locks));
        let program = watch.open(&other, &Call::Shell("cargo build".into()));
        let edit = watch.open(&holder, &Call::Edit(dir.path().join("src/a.rs")));
        std::fs::write(dir.path().join("src/a.rs"), "the holder's edit").unwrap();
        let of_holder = watch.close(edit);
        assert_eq!(relative(dir.path(), &of_holder.edits), vec!["src/a.rs"]);
        assert_eq!(watch.close(program), Observed::default());
    }

    #[tokio::test]
    async fn a_validation_run_that_changes_a_file_nobody_holds_is_still_told() {
        let dir = repo();
        let locks: Arc<dyn LockTable> =
            Arc::new(FileLockTable::new(dir.path().join(".git/locks"), dir.path()).unwrap());
        let watch =
            TreeWatch::new(dir.path(), Some(locks)).with_validation(vec!["pytest -q".into()]);
        let agent = AgentId::new("a@r");
        let window = watch.open(&agent, &Call::Shell("pytest -q".into()));
        std::fs::write(dir.path().join("src/cache.txt"), "a new cache file").unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "rewritten by the run").unwrap();
        let seen = watch.close(window);
        assert!(seen.edits.is_empty(), "{seen:?}");
        assert_eq!(relative(dir.path(), &seen.unlocked), vec!["src/b.rs"]);
    }

    #[test]
    fn a_new_cache_file_is_nobodys_edit() {
        let dir = repo();
        let watch = TreeWatch::new(dir.path(), None);
        let agent = AgentId::new("a@r");
        let window = watch.open(
            &agent,
            &Call::Shell("python3 -m pytest tests/test_x.py".into()),
        );
        std::fs::create_dir_all(dir.path().join("src/__pycache__")).unwrap();
        std::fs::write(dir.path().join("src/__pycache__/a.cpython-311.pyc"), "x").unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "changed").unwrap();
        let seen = watch.close(window);
        assert_eq!(relative(dir.path(), &seen.edits), vec!["src/b.rs"]);
    }

    #[test]
    fn what_a_validation_run_leaves_is_not_an_edit() {
        let dir = repo();
        let watch = TreeWatch::new(dir.path(), None).with_validation(vec!["pytest -q".into()]);
        let agent = AgentId::new("a@r");
        let window = watch.open(&agent, &Call::Shell("pytest -q".into()));
        std::fs::write(dir.path().join("src/cache.txt"), "x").unwrap();
        assert_eq!(watch.close(window), Observed::default());
        let window = watch.open(
            &agent,
            &Call::Shell("pytest -q; echo y > src/cache.txt".into()),
        );
        std::fs::write(dir.path().join("src/cache.txt"), "y").unwrap();
        let seen = watch.close(window);
        assert_eq!(relative(dir.path(), &seen.edits), vec!["src/cache.txt"]);
    }

    #[test]
    fn of_two_agents_at_work_at_once_the_one_whose_command_could_write_it_is_told() {
        let dir = repo();
        let watch = TreeWatch::new(dir.path(), None);
        let (honest, liar) = (AgentId::new("h@r"), AgentId::new("l@r"));
        let checking = watch.open(&honest, &Call::Shell("grep -q fixed src/a.rs".into()));
        let running = watch.open(&liar, &Call::Shell("python3 /tmp/w.py".into()));
        std::fs::write(dir.path().join("src/b.rs"), "by the program").unwrap();
        assert_eq!(watch.close(checking), Observed::default());
        assert_eq!(
            relative(dir.path(), &watch.close(running).edits),
            vec!["src/b.rs"]
        );
        // Two programs at once: neither can be cleared, both are told.
        let one = watch.open(&honest, &Call::Shell("make".into()));
        let two = watch.open(&liar, &Call::Shell("python3 /tmp/w.py".into()));
        std::fs::write(dir.path().join("src/b.rs"), "again").unwrap();
        assert_eq!(
            relative(dir.path(), &watch.close(one).edits),
            vec!["src/b.rs"]
        );
        assert_eq!(
            relative(dir.path(), &watch.close(two).edits),
            vec!["src/b.rs"]
        );
    }
}
