//! Throwaway git repositories.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A git repository in a temporary directory, with one initial commit.
#[derive(Debug)]
pub struct TempRepo {
    dir: TempDir,
}

impl TempRepo {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mala-test-repo-")
            .tempdir()
            .expect("create a temporary directory");
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "mala test"]);
        repo.git(&["config", "user.email", "test@mala.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo.write("README.md", "test repository\n");
        repo.commit_all("initial commit");
        repo
    }

    /// A repository with an empty `src/` and a `mala.yaml` whose one
    /// required check is `check` (not committed).
    pub fn with_check(check: &str) -> Self {
        let repo = Self::new();
        std::fs::create_dir(repo.join("src")).expect("create src/");
        repo.write(
            "mala.yaml",
            &format!("commands:\n  check: {check:?}\nevidence_check:\n  required: [check]\n"),
        );
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file (creating parent directories).
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::fs::write(&path, contents).expect("write file");
    }

    pub fn commit_all(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// Runs git in the repository and returns its stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Default for TempRepo {
    fn default() -> Self {
        Self::new()
    }
}
