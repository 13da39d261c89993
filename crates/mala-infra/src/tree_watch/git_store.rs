//! The part of `.git` a scan watches: what only a rewrite of history or of
//! the object store loses. Refs (loose and packed), pack files, and loose
//! objects; for a linked worktree, the store it shares with the main one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Stamp;

/// Where a working tree's git data is: its own (index, `HEAD`) and the
/// store it may share with other worktrees (refs, objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GitDirs {
    pub(super) own: PathBuf,
    pub(super) common: PathBuf,
}

impl GitDirs {
    /// `root/.git`, or, when that is a file (a linked worktree), the
    /// directory it names and the common directory that names.
    pub(super) fn of(root: &Path) -> Self {
        let dot = root.join(".git");
        let own = std::fs::read_to_string(&dot)
            .ok()
            .and_then(|text| {
                let target = text.strip_prefix("gitdir:")?.trim();
                Some(root.join(target))
            })
            .unwrap_or(dot);
        let common = std::fs::read_to_string(own.join("commondir"))
            .map_or_else(|_| own.clone(), |text| own.join(text.trim()));
        Self { own, common }
    }

    /// A linked worktree: its store is shared.
    pub(super) fn is_linked(&self) -> bool {
        self.own != self.common
    }

    /// The branch the tree has checked out, from its own `HEAD`.
    fn checked_out(&self) -> Option<String> {
        let head = std::fs::read_to_string(self.own.join("HEAD")).ok()?;
        Some(head.strip_prefix("ref:")?.trim().to_owned())
    }
}

/// Where mala's merge queue keeps each issue's branch in worktree mode; it
/// deletes a branch once it has landed.
const ISSUE_BRANCHES: &str = "refs/heads/mala/";

/// The recovery data at one scan.
#[derive(Debug, Clone, Default)]
pub(super) struct Store {
    refs: BTreeSet<String>,
    packs: BTreeSet<String>,
    loose: BTreeMap<String, LooseDir>,
}

/// One fan-out directory of loose objects (`objects/ab/`), read again only
/// when its own stamp changed.
#[derive(Debug, Clone)]
struct LooseDir {
    stamp: Stamp,
    objects: Arc<BTreeSet<String>>,
}

impl Store {
    /// Reads the store, reusing `earlier`'s object lists where a directory
    /// is unchanged.
    pub(super) fn read(dirs: &GitDirs, earlier: Option<&Self>) -> Self {
        let mut refs = read_refs(&dirs.common);
        if dirs.is_linked() {
            // Other issues' branches come and go with the merge queue.
            let own = dirs.checked_out();
            refs.retain(|r| !r.starts_with(ISSUE_BRANCHES) || Some(r) == own.as_ref());
        }
        Self {
            refs,
            packs: read_packs(&dirs.common),
            loose: read_loose(&dirs.common, earlier.map(|e| &e.loose)),
        }
    }

    /// What was lost since `earlier`: refs that are gone, packs removed
    /// without a new one in their place (as `git gc` makes), and loose
    /// objects the store no longer has in any form while its history needs
    /// them (`git gc` packs loose objects and then removes them, and prunes
    /// unreachable ones: neither is a loss).
    pub(super) fn losses_since(&self, earlier: &Self, dirs: &GitDirs) -> Vec<String> {
        let mut lost: Vec<String> = earlier
            .refs
            .difference(&self.refs)
            .map(|r| format!("the ref {r} was deleted"))
            .collect();
        let removed: Vec<&String> = earlier.packs.difference(&self.packs).collect();
        if !removed.is_empty() && self.packs.is_subset(&earlier.packs) {
            lost.push(format!(
                "{} pack file(s) of the object store were removed",
                removed.len()
            ));
        }
        let gone = self.loose_removed_since(earlier);
        if !gone.is_empty() {
            let missing = missing_objects(&dirs.common, &gone);
            if missing > 0 {
                lost.push(format!(
                    "{missing} object(s) of the object store were removed, and git fsck finds objects the history needs missing"
                ));
            }
        }
        lost
    }

    fn loose_removed_since(&self, earlier: &Self) -> Vec<String> {
        let mut gone = Vec::new();
        for (fan, dir) in &earlier.loose {
            let now = self.loose.get(fan);
            if now.is_some_and(|now| Arc::ptr_eq(&now.objects, &dir.objects)) {
                continue;
            }
            for object in dir.objects.iter() {
                if now.is_none_or(|now| !now.objects.contains(object)) {
                    gone.push(format!("{fan}{object}"));
                }
            }
        }
        gone
    }
}

/// The refs a repository has (loose under `refs/`, and packed).
fn read_refs(git: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, name: &str, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let child = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), &child, out);
            } else if entry.path().extension().is_none_or(|e| e != "lock") {
                out.insert(child);
            }
        }
    }
    let mut refs = BTreeSet::new();
    walk(&git.join("refs"), "refs", &mut refs);
    if let Ok(packed) = std::fs::read_to_string(git.join("packed-refs")) {
        refs.extend(
            packed
                .lines()
                .filter(|l| !l.starts_with(['#', '^']))
                .filter_map(|l| l.split_whitespace().nth(1))
                .map(str::to_owned),
        );
    }
    refs
}

fn read_packs(git: &Path) -> BTreeSet<String> {
    std::fs::read_dir(git.join("objects/pack"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn is_hex(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The loose objects, by fan-out directory. A directory's stamp changes
/// whenever an entry is added or removed, so an unchanged one keeps its list.
fn read_loose(
    git: &Path,
    earlier: Option<&BTreeMap<String, LooseDir>>,
) -> BTreeMap<String, LooseDir> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(git.join("objects")) else {
        return out;
    };
    for entry in entries.flatten() {
        let fan = entry.file_name().to_string_lossy().into_owned();
        if fan.len() != 2 || !is_hex(&fan) {
            continue;
        }
        let Ok(meta) = entry.path().metadata() else {
            continue;
        };
        let stamp = Stamp::of(&meta);
        let objects = match earlier.and_then(|e| e.get(&fan)) {
            Some(known) if known.stamp == stamp => Arc::clone(&known.objects),
            _ => Arc::new(
                std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // Not git's temporary files, whose names are not an id's rest.
                    .filter(|name| matches!(name.len(), 38 | 62) && is_hex(name))
                    .collect(),
            ),
        };
        out.insert(fan, LooseDir { stamp, objects });
    }
    out
}

/// How many of `objects` the store at `git` has in no form, when that cost
/// the repository part of its history; 0 when it did not. git's own
/// `gc` prunes unreachable objects (a dropped stash, an amended commit,
/// after two weeks), so a loose object gone is a loss only when `git fsck`
/// then finds an object that refs, reflogs or the index reach missing.
/// When git cannot be asked, every one counts: a store that loses objects
/// is not to be trusted with a guess. This runs only when loose objects
/// disappeared, which git's own packing and pruning do now and then.
fn missing_objects(git: &Path, objects: &[String]) -> usize {
    let Some(missing) = objects_not_in(git, objects) else {
        return objects.len();
    };
    if missing == 0 {
        return 0;
    }
    let fsck = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git)
        .args([
            "fsck",
            "--connectivity-only",
            "--no-dangling",
            "--no-progress",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match fsck {
        Ok(status) if status.success() => 0,
        _ => missing,
    }
}

/// How many of `objects` `git cat-file --batch-check` says are missing.
/// The ids go in from a thread of their own: git answers as it reads, and
/// with thousands of ids both pipes would fill while each side waits.
fn objects_not_in(git: &Path, objects: &[String]) -> Option<usize> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git)
        .args(["cat-file", "--batch-check"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = format!("{}\n", objects.join("\n"));
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.ends_with(" missing"))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_testkit::TempRepo;

    #[test]
    fn thousands_of_ids_are_asked_about_without_both_pipes_filling() {
        let repo = TempRepo::new();
        let ids: Vec<String> = (0..20_000).map(|n| format!("{n:040x}")).collect();
        let git = repo.path().join(".git");
        assert_eq!(objects_not_in(&git, &ids), Some(ids.len()));
    }

    #[test]
    fn a_linked_worktree_reads_the_store_it_shares() {
        let repo = TempRepo::new();
        let elsewhere = tempfile::tempdir().unwrap();
        let tree = elsewhere.path().join("tree");
        let status = std::process::Command::new("git")
            .current_dir(repo.path())
            .args(["worktree", "add", "-q", "-b", "mala/bd-1"])
            .arg(&tree)
            .status()
            .unwrap();
        assert!(status.success());
        let dirs = GitDirs::of(&tree);
        assert!(dirs.is_linked());
        assert_eq!(
            dirs.common.canonicalize().unwrap(),
            repo.path().join(".git").canonicalize().unwrap()
        );
        assert_eq!(dirs.checked_out().as_deref(), Some("refs/heads/mala/bd-1"));
        let store = Store::read(&dirs, None);
        assert!(
            store.refs.contains("refs/heads/mala/bd-1"),
            "{:?}",
            store.refs
        );
    }
}
