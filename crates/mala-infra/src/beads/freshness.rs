//! When `issues.jsonl` can be read without asking br first. br exports the
//! JSONL after every write, but a write made with `--no-auto-flush` leaves
//! the database ahead of it; then only br can say so (`br sync --status`),
//! which costs 0.1–0.25 s on a 10,000-issue tracker.
//!
//! The proof that needs no br: the stamps (modification time and length) of
//! the JSONL, the database and its WAL at the moment br last said they agree,
//! or at the moment br's own write left them. Kept in the repository's git
//! directory (never in `.beads/`, which is committed), it lets the next mala
//! process skip the question while none of the three files has changed. Any
//! change to any of them, a missing or unreadable proof, or no git directory
//! means asking br again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: SystemTime,
    len: u64,
}

pub(super) fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok()?,
        len: meta.len(),
    })
}

/// The state of the JSONL and of br's database files (`beads.db`, its WAL).
/// A change to the database that mala did not make means someone may have
/// written without flushing, and the JSONL must be checked before it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamps {
    pub(super) jsonl: Option<FileStamp>,
    pub(super) db: Option<FileStamp>,
    pub(super) wal: Option<FileStamp>,
}

fn stamp_json(stamp: Option<FileStamp>) -> Value {
    stamp.map_or(Value::Null, |s| {
        let since = s
            .modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        json!([since.as_secs(), since.subsec_nanos(), s.len])
    })
}

/// A kept proof that does not read as one.
struct Unreadable;

/// A file's stamp as kept, where `null` stands for a file that did not exist.
fn stamp_from(value: &Value) -> Result<Option<FileStamp>, Unreadable> {
    if value.is_null() {
        return Ok(None);
    }
    let read = || {
        let [secs, nanos, len] = value.as_array()?.as_slice() else {
            return None;
        };
        let since = Duration::new(secs.as_u64()?, u32::try_from(nanos.as_u64()?).ok()?);
        Some(FileStamp {
            modified: SystemTime::UNIX_EPOCH.checked_add(since)?,
            len: len.as_u64()?,
        })
    };
    read().map(Some).ok_or(Unreadable)
}

/// Where the proof of one repository's tracker is kept.
#[derive(Debug)]
pub(super) struct Proof {
    path: Option<PathBuf>,
}

impl Proof {
    pub(super) fn for_repo(repo: &Path) -> Self {
        Self {
            path: git_dir(repo).map(|dir| dir.join("mala-beads-fresh.json")),
        }
    }

    /// The stamps br last vouched for, if any were kept.
    pub(super) fn load(&self) -> Option<Stamps> {
        let text = std::fs::read(self.path.as_ref()?).ok()?;
        let value: Value = serde_json::from_slice(&text).ok()?;
        Some(Stamps {
            jsonl: stamp_from(value.get("jsonl")?).ok()?,
            db: stamp_from(value.get("db")?).ok()?,
            wal: stamp_from(value.get("wal")?).ok()?,
        })
    }

    /// Keeps `stamps` as vouched for; a proof that cannot be kept only
    /// means the next process asks br.
    pub(super) fn save(&self, stamps: &Stamps) {
        let Some(path) = &self.path else {
            return;
        };
        let body = json!({
            "jsonl": stamp_json(stamps.jsonl),
            "db": stamp_json(stamps.db),
            "wal": stamp_json(stamps.wal),
        });
        let temp = path.with_extension("json.tmp");
        let written =
            std::fs::write(&temp, body.to_string()).and_then(|()| std::fs::rename(&temp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }
}

/// The repository's git directory: `.git`, or where a worktree's `.git`
/// file points.
fn git_dir(repo: &Path) -> Option<PathBuf> {
    let dot_git = repo.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let pointed = Path::new(text.strip_prefix("gitdir:")?.trim());
    let dir = if pointed.is_absolute() {
        pointed.to_path_buf()
    } else {
        repo.join(pointed)
    };
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_round_trips_and_is_kept_out_of_beads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        let jsonl = dir.path().join(".beads/issues.jsonl");
        std::fs::write(&jsonl, "{}\n").unwrap();
        let stamps = Stamps {
            jsonl: stamp(&jsonl),
            db: None,
            wal: stamp(&jsonl),
        };
        let proof = Proof::for_repo(dir.path());
        assert_eq!(proof.load(), None, "nothing kept yet");
        proof.save(&stamps);
        assert_eq!(proof.load(), Some(stamps));
        assert!(dir.path().join(".git/mala-beads-fresh.json").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join(".beads"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn without_a_git_directory_nothing_is_kept_and_nothing_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let proof = Proof::for_repo(dir.path());
        proof.save(&Stamps {
            jsonl: None,
            db: None,
            wal: None,
        });
        assert_eq!(proof.load(), None);
    }

    #[test]
    fn a_worktree_keeps_its_proof_where_its_git_file_points() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("main/.git/worktrees/wt");
        std::fs::create_dir_all(&real).unwrap();
        let wt = dir.path().join("wt");
        std::fs::create_dir(&wt).unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", real.display())).unwrap();
        assert_eq!(git_dir(&wt), Some(real));
    }
}
