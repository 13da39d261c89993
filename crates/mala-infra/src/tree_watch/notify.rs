//! Which directories changed since the last look, from the kernel
//! (inotify), so the scan after a tool call lists and stats only those
//! instead of every file of the tree.
//!
//! Every directory a full scan walked is watched. A change to a file is an
//! event on its directory; a directory that appears, goes or moves is walked
//! again whole. Whenever the kernel may have lost an event (its queue
//! overflowed), an ignore file changed, or a watch cannot be added (the
//! user's watch limit), the next scan is a full one, and a refused watch
//! turns the notifier off for good: the full scan is always right, the
//! notifier only makes it cheaper.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What changed since the last drain.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    /// Directories whose own entries changed: listed again.
    pub(super) dirs: BTreeSet<PathBuf>,
    /// Directories that appeared, went or moved: walked again whole.
    pub(super) trees: BTreeSet<PathBuf>,
    /// Events may be lost, or what is ignored changed: scan everything.
    pub(super) everything: bool,
}

/// Whether a change to `path` may change what is ignored: an ignore file,
/// or a nested repository's `info/exclude`.
fn is_ignore_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == ".gitignore" || name == ".ignore" || name == "exclude")
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{Dirty, HashMap, Path, PathBuf, is_ignore_file};
    use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
    use std::collections::HashSet;

    /// The kernel's watches on the tree's directories and files. A file's
    /// own watch sees a write through any of its names (a hard link made
    /// outside the tree), which its directory's watch does not.
    #[derive(Debug)]
    pub(in crate::tree_watch) struct Notifier {
        fd: rustix::fd::OwnedFd,
        /// Each watched directory, relative to the root, by watch.
        dirs: HashMap<i32, PathBuf>,
        watched: HashSet<PathBuf>,
        /// Each watched file's names, by watch, and each name's watch and
        /// the inode it is on (a file replaced by a rename is a new inode).
        files: HashMap<i32, Vec<PathBuf>>,
        file_watches: HashMap<PathBuf, (i32, u64)>,
    }

    impl Notifier {
        pub(in crate::tree_watch) fn new() -> Option<Self> {
            let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                .ok()?;
            Some(Self {
                fd,
                dirs: HashMap::new(),
                watched: HashSet::new(),
                files: HashMap::new(),
                file_watches: HashMap::new(),
            })
        }

        /// Watches the file `path` (relative to `root`), whose inode is
        /// `inode`; false when the kernel refuses.
        pub(in crate::tree_watch) fn watch_file(
            &mut self,
            root: &Path,
            path: &Path,
            inode: u64,
        ) -> bool {
            if self
                .file_watches
                .get(path)
                .is_some_and(|(_, on)| *on == inode)
            {
                return true;
            }
            let flags = WatchFlags::MODIFY
                | WatchFlags::ATTRIB
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF
                | WatchFlags::DONT_FOLLOW;
            match inotify::add_watch(&self.fd, root.join(path), flags) {
                Ok(wd) => {
                    let names = self.files.entry(wd).or_default();
                    if !names.iter().any(|name| name == path) {
                        names.push(path.to_path_buf());
                    }
                    self.file_watches.insert(path.to_path_buf(), (wd, inode));
                    true
                }
                Err(error) => nothing_to_watch(error),
            }
        }

        pub(in crate::tree_watch) fn is_file_watched(&self, path: &Path, inode: u64) -> bool {
            self.file_watches
                .get(path)
                .is_some_and(|(_, on)| *on == inode)
        }

        /// Watches `dir` (relative to `root`); false when the kernel refuses.
        pub(in crate::tree_watch) fn watch(&mut self, root: &Path, dir: &Path) -> bool {
            if self.watched.contains(dir) {
                return true;
            }
            let flags = WatchFlags::MODIFY
                | WatchFlags::ATTRIB
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF
                | WatchFlags::ONLYDIR
                | WatchFlags::DONT_FOLLOW
                | WatchFlags::EXCL_UNLINK;
            match inotify::add_watch(&self.fd, root.join(dir), flags) {
                Ok(wd) => {
                    // A directory moved here keeps its watch: the same wd.
                    if let Some(old) = self.dirs.insert(wd, dir.to_path_buf()) {
                        self.watched.remove(&old);
                    }
                    self.watched.insert(dir.to_path_buf());
                    true
                }
                Err(error) => nothing_to_watch(error),
            }
        }

        pub(in crate::tree_watch) fn is_watched(&self, dir: &Path) -> bool {
            self.watched.contains(dir)
        }

        /// Forgets the directories under `tree` (it is walked again, and
        /// what is still there watched again).
        pub(in crate::tree_watch) fn forget_under(&mut self, tree: &Path) {
            self.dirs.retain(|_, dir| !dir.starts_with(tree));
            self.watched.retain(|dir| !dir.starts_with(tree));
            self.file_watches.retain(|path, _| !path.starts_with(tree));
            for names in self.files.values_mut() {
                names.retain(|path| !path.starts_with(tree));
            }
        }

        /// Everything the kernel queued since the last drain.
        pub(in crate::tree_watch) fn drain(&mut self) -> Dirty {
            let mut dirty = Dirty::default();
            let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 16 << 10];
            let mut reader = inotify::Reader::new(&self.fd, &mut buffer);
            loop {
                let event = match reader.next() {
                    Ok(event) => event,
                    Err(rustix::io::Errno::WOULDBLOCK) => break,
                    Err(_) => {
                        dirty.everything = true;
                        break;
                    }
                };
                let flags = event.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    dirty.everything = true;
                    continue;
                }
                if let Some(names) = self.files.get(&event.wd()) {
                    // A file's own watch: its directory is listed again.
                    for name in names {
                        if is_ignore_file(name) {
                            dirty.everything = true;
                        }
                        dirty
                            .dirs
                            .insert(name.parent().map(Path::to_path_buf).unwrap_or_default());
                    }
                    if flags.contains(ReadFlags::IGNORED) {
                        let wd = event.wd();
                        for name in self.files.remove(&wd).unwrap_or_default() {
                            // Only if the name is not on a newer inode's watch.
                            if self
                                .file_watches
                                .get(&name)
                                .is_some_and(|(on, _)| *on == wd)
                            {
                                self.file_watches.remove(&name);
                            }
                        }
                    }
                    continue;
                }
                if flags.contains(ReadFlags::IGNORED) {
                    // The directory is gone (its parent said so too): a new
                    // one at its path gets a watch of its own.
                    if let Some(dir) = self.dirs.remove(&event.wd()) {
                        self.watched.remove(&dir);
                    }
                    continue;
                }
                let Some(dir) = self.dirs.get(&event.wd()) else {
                    continue;
                };
                let name = event
                    .file_name()
                    .map(|n| std::ffi::OsStr::from_bytes_of(n.to_bytes()).to_owned());
                match name {
                    Some(name) if is_ignore_file(Path::new(&name)) => {
                        dirty.everything = true;
                    }
                    Some(name) if flags.contains(ReadFlags::ISDIR) => {
                        dirty.trees.insert(dir.join(name));
                    }
                    None if flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) => {
                        dirty.trees.insert(dir.clone());
                    }
                    Some(_) | None => {
                        dirty.dirs.insert(dir.clone());
                    }
                }
            }
            dirty
        }
    }

    /// Whether a watch the kernel did not add leaves nothing unwatched: the
    /// path is gone already, or not ours to read (a later chmod is an event
    /// on its directory). Anything else (the watch limit) is a refusal.
    fn nothing_to_watch(error: rustix::io::Errno) -> bool {
        use rustix::io::Errno;
        matches!(error, Errno::NOENT | Errno::NOTDIR | Errno::ACCESS)
    }

    trait FromBytes {
        fn from_bytes_of(bytes: &[u8]) -> &Self;
    }

    impl FromBytes for std::ffi::OsStr {
        fn from_bytes_of(bytes: &[u8]) -> &Self {
            use std::os::unix::ffi::OsStrExt as _;
            Self::from_bytes(bytes)
        }
    }
}

#[cfg(target_os = "linux")]
pub(super) use linux::Notifier;

/// Without inotify there is no notifier: every scan is a full one.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(super) struct Notifier;

#[cfg(not(target_os = "linux"))]
impl Notifier {
    pub(super) fn new() -> Option<Self> {
        None
    }
    pub(super) fn watch(&mut self, _: &Path, _: &Path) -> bool {
        false
    }
    pub(super) fn forget_under(&mut self, _: &Path) {}
    pub(super) fn is_watched(&self, _: &Path) -> bool {
        false
    }
    pub(super) fn watch_file(&mut self, _: &Path, _: &Path, _: u64) -> bool {
        false
    }
    pub(super) fn is_file_watched(&self, _: &Path, _: u64) -> bool {
        false
    }
    pub(super) fn drain(&mut self) -> Dirty {
        Dirty {
            everything: true,
            ..Dirty::default()
        }
    }
}

/// What part of the tree a partial walk covers.
#[derive(Debug, Clone)]
pub(super) enum Part {
    /// The entries of one directory (not those of its subdirectories).
    Entries(PathBuf),
    /// A directory and everything under it.
    Tree(PathBuf),
}

impl Part {
    /// Whether the walk goes into (or yields) `relative`: the way down to
    /// the part, and the part. The walk starts at the root, as the full
    /// scan's does, so the same ignore files apply and no others.
    fn covers(&self, relative: &Path) -> bool {
        match self {
            Self::Entries(dir) => {
                dir.starts_with(relative) || relative.parent() == Some(dir.as_path())
            }
            Self::Tree(top) => top.starts_with(relative) || relative.starts_with(top),
        }
    }

    /// Whether `relative`, a file the walk yielded, is in the part.
    pub(super) fn holds(&self, relative: &Path) -> bool {
        match self {
            Self::Entries(dir) => relative.parent() == Some(dir.as_path()),
            Self::Tree(top) => relative.starts_with(top),
        }
    }
}

/// The files and directories of `part` a full scan would see, relative to
/// `root`: the full scan's rules (hidden files seen, ignore rules from the
/// root down, `.git` and `.beads` at the root left out), its walk pruned to
/// the part.
pub(super) fn walk(root: &Path, part: &Part) -> (Vec<(PathBuf, std::fs::Metadata)>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let base = root.to_path_buf();
    let pruned = part.clone();
    let walker = scan_rules(root)
        .filter_entry(move |entry| {
            let relative = entry.path().strip_prefix(&base).unwrap_or(entry.path());
            !is_git_or_mala(entry) && pruned.covers(relative)
        })
        .build();
    for entry in walker.flatten() {
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        if entry.file_type().is_some_and(|t| t.is_dir()) {
            if let Part::Tree(top) = part
                && relative.starts_with(top)
            {
                dirs.push(relative.to_path_buf());
            }
        } else if part.holds(relative)
            && let Ok(meta) = entry.path().symlink_metadata()
        {
            files.push((relative.to_path_buf(), meta));
        }
    }
    (files, dirs)
}

/// A walk of the tree at `root` with the rules every scan shares: hidden
/// files seen, the ignore rules from the root down (git's own, `.ignore`,
/// the global excludes; not those of directories above the root).
pub(super) fn scan_rules(root: &Path) -> ignore::WalkBuilder {
    let mut builder = ignore::WalkBuilder::new(root);
    builder
        .hidden(false)
        .parents(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(true)
        .require_git(false);
    builder
}

/// `.git` and mala's `.beads` at the root, which no scan walks.
pub(super) fn is_git_or_mala(entry: &ignore::DirEntry) -> bool {
    entry.depth() == 1 && matches!(entry.file_name().to_str(), Some(".git" | ".beads"))
}

/// Paths in `a` or `b` but not both.
pub(super) fn differing<'p>(a: &'p [PathBuf], b: &'p [PathBuf]) -> Vec<&'p PathBuf> {
    let (left, right): (std::collections::HashSet<_>, std::collections::HashSet<_>) =
        (a.iter().collect(), b.iter().collect());
    left.symmetric_difference(&right).copied().collect()
}
