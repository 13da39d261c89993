//! The real `br` in a test repository.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An issue to create.
#[derive(Debug, Clone, Default)]
pub struct NewIssue<'a> {
    pub title: &'a str,
    pub issue_type: &'a str,
    pub priority: u8,
    pub description: &'a str,
    pub acceptance: &'a str,
    pub parent: Option<&'a str>,
    pub labels: &'a [&'a str],
}

/// `br` bound to one repository.
#[derive(Debug, Clone)]
pub struct Br {
    binary: PathBuf,
    repo: PathBuf,
}

impl Br {
    /// Runs `br init --prefix <prefix>` in `repo`.
    pub fn init(binary: &Path, repo: &Path, prefix: &str) -> Self {
        let br = Self {
            binary: binary.to_path_buf(),
            repo: repo.to_path_buf(),
        };
        br.run(&["init", "--prefix", prefix]);
        br
    }

    /// Runs br with `args` and returns stdout; panics on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary)
            .args(args)
            .current_dir(&self.repo)
            .env("NO_COLOR", "1")
            .output()
            .expect("run br");
        assert!(
            output.status.success(),
            "br {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs br with `--json` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.run(&all);
        serde_json::from_str(&text).expect("br printed JSON")
    }

    /// Creates an issue and returns its id.
    pub fn create(&self, issue: &NewIssue<'_>) -> String {
        let priority = issue.priority.to_string();
        let labels = issue.labels.join(",");
        let mut args = vec![
            "create",
            issue.title,
            "-t",
            if issue.issue_type.is_empty() {
                "task"
            } else {
                issue.issue_type
            },
            "-p",
            &priority,
            "--silent",
        ];
        if !issue.description.is_empty() {
            args.extend(["-d", issue.description]);
        }
        if !issue.acceptance.is_empty() {
            args.extend(["--acceptance-criteria", issue.acceptance]);
        }
        if let Some(parent) = issue.parent {
            args.extend(["--parent", parent]);
        }
        if !labels.is_empty() {
            args.extend(["--labels", &labels]);
        }
        self.run(&args).trim().to_owned()
    }

    /// `issue` cannot start before `blocker` closes.
    pub fn block(&self, issue: &str, blocker: &str) {
        self.run(&["dep", "add", issue, blocker]);
    }

    pub fn close(&self, issue: &str) {
        self.run(&["close", issue]);
    }

    /// Ids of `br ready`, sorted.
    pub fn ready_ids(&self) -> Vec<String> {
        let value = self.json(&["ready", "--limit", "0"]);
        let mut ids: Vec<String> = value
            .as_array()
            .expect("br ready --json prints an array")
            .iter()
            .filter_map(|row| row["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }
}
