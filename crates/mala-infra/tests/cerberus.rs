//! The cerberus reviewer against the testkit's fake `cerberus`, which logs
//! how it was called and plays a scripted review, writing its gate and
//! reviewer output the way cerberus v2 lays them out.
#![allow(clippy::unwrap_used, clippy::expect_used)] // the harness panics to fail the test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mala_core::{IssueId, ReviewError, ReviewRequest, ReviewSubject, Reviewer, SessionId};
use mala_infra::{CerberusConfig, CerberusReviewer, CerberusSetupError, check_cerberus};
use mala_testkit::FakeCerberus;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        FakeCerberus::install(dir.path());
        Self { dir }
    }

    fn binary(&self) -> PathBuf {
        self.dir.path().join("cerberus-home/bin/cerberus")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    fn reviewer(&self, mode: &str, verdict: &str) -> CerberusReviewer {
        CerberusReviewer::new(self.config(mode, verdict))
    }

    fn config(&self, mode: &str, verdict: &str) -> CerberusConfig {
        let binary = self.binary();
        let env = BTreeMap::from([
            ("FAKE_LOG".to_owned(), self.log().display().to_string()),
            ("FAKE_MODE".to_owned(), mode.to_owned()),
            ("FAKE_VERDICT".to_owned(), verdict.to_owned()),
        ]);
        CerberusConfig {
            root: CerberusConfig::default_root(&binary, None),
            binary,
            state_root: self.dir.path().join("state/cerberus"),
            repo_root: self.dir.path().to_path_buf(),
            timeout: 5,
            spawn_args: vec!["--mode".into(), "fast".into()],
            wait_args: vec![],
            env,
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

fn request(commits: &[&str]) -> ReviewRequest {
    ReviewRequest {
        subject: ReviewSubject::Issue(IssueId::new("m-7")),
        description: "Fix the parser\n\nAcceptance criteria:\n- no crash".into(),
        commits: commits.iter().map(|c| (*c).to_owned()).collect(),
        context: "The author's final message:\nfixed it".into(),
        session_id: Some(SessionId::new("sess-42")),
    }
}

#[tokio::test]
async fn a_review_reads_the_last_round_of_the_last_iteration_with_the_right_environment() {
    let fake = Fake::new();
    let verdict = fake
        .reviewer("ok", "needs_work")
        .review(request(&["abc123", "def456"]))
        .await
        .unwrap();
    let titles: Vec<(u8, &str)> = verdict
        .findings
        .iter()
        .map(|f| (f.priority, f.title.as_str()))
        .collect();
    assert_eq!(
        titles,
        vec![(2, "Name is unclear"), (3, "No priority given")],
        "older rounds and iterations are not read; a missing priority is advisory"
    );
    assert_eq!(verdict.findings[0].file.as_deref(), Some("src/a.rs"));
    assert_eq!(verdict.findings[0].line_start, Some(3));

    let calls = fake.calls();
    let lines: Vec<&str> = calls.lines().filter(|l| l.starts_with("call:")).collect();
    assert_eq!(lines.len(), 3, "{calls}");
    assert!(lines[0].starts_with("call: [author-context] [--] [The author's final message:"));
    assert!(
        lines[1].starts_with("call: [spawn-code-review] [--exclude] [.beads/] [--context-file] [")
            && lines[1].ends_with("[--mode] [fast] [--commit] [abc123] [def456]"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(
            "call: [wait] [--json] [--finalize] [--session-key] [mala-sess-42] [--timeout] [5]"
        ),
        "{}",
        lines[2]
    );
    let env = calls.lines().find(|l| l.starts_with("env:")).unwrap();
    assert!(env.contains("host=generic"), "{env}");
    assert!(env.contains("run=mala-sess-42 session=sess-42"), "{env}");
    let project = env
        .split("project=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(
        project.len(),
        16,
        "sha256 of the repository path, 16 hex: {env}"
    );
    assert!(env.contains(&format!(
        "root={}",
        fake.dir.path().join("cerberus-home").display()
    )));
    let context =
        std::fs::read_to_string(fake.dir.path().join("state/cerberus/m-7.context.md")).unwrap();
    assert!(context.contains("no crash"));
}

#[tokio::test]
async fn verdicts_without_consensus_or_with_an_unexplained_fail_block() {
    let fake = Fake::new();
    for verdict in ["requires_decision", "fail"] {
        let answer = fake
            .reviewer("ok", verdict)
            .review(request(&["abc123"]))
            .await
            .unwrap();
        assert!(
            answer.findings.iter().any(|f| f.priority == 1),
            "{verdict}: {answer:?}"
        );
    }
    let unknown = fake
        .reviewer("ok", "maybe")
        .review(request(&["abc123"]))
        .await;
    assert!(
        matches!(unknown, Err(ReviewError::InvalidAnswer(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn nothing_to_review_passes_and_a_running_review_is_waited_for() {
    let fake = Fake::new();
    let none = fake
        .reviewer("nochange", "pass")
        .review(request(&["abc123"]))
        .await
        .unwrap();
    assert!(none.findings.is_empty());
    assert!(
        !fake.calls().contains("[wait]"),
        "no wait when nothing was spawned"
    );
    let busy = fake
        .reviewer("busy", "pass")
        .review(request(&["abc123"]))
        .await
        .unwrap();
    assert_eq!(busy.findings.len(), 2, "it waited for the running review");
    let empty = fake
        .reviewer("ok", "pass")
        .review(request(&[]))
        .await
        .unwrap();
    assert!(empty.findings.is_empty(), "no commits, no review");
}

#[tokio::test]
async fn failures_say_what_went_wrong_and_which_are_retryable() {
    let fake = Fake::new();
    let broken = fake
        .reviewer("broken", "pass")
        .review(request(&["a"]))
        .await;
    let Err(ReviewError::Failed(why)) = broken else {
        panic!("{broken:?}")
    };
    assert!(why.contains("reviewer crashed"), "{why}");
    let timeout = fake
        .reviewer("timeout", "pass")
        .review(request(&["a"]))
        .await;
    let Err(ReviewError::Failed(why)) = timeout else {
        panic!("{timeout:?}")
    };
    assert!(why.contains("did not finish in 5 s"), "{why}");
    let garbage = fake
        .reviewer("garbage", "pass")
        .review(request(&["a"]))
        .await;
    assert!(
        matches!(garbage, Err(ReviewError::InvalidAnswer(_))),
        "{garbage:?}"
    );
}

#[test]
fn the_installation_is_checked_before_a_run_depends_on_it() {
    let fake = Fake::new();
    assert_eq!(check_cerberus(&fake.config("ok", "pass")), Ok(()));
    let mut missing = fake.config("ok", "pass");
    missing.binary = fake.dir.path().join("nowhere/cerberus");
    let why = check_cerberus(&missing).unwrap_err();
    assert_eq!(
        why,
        CerberusSetupError::NotInstalled(missing.binary.clone())
    );
    assert!(
        why.to_string().contains("reviewer_type: agent_sdk"),
        "{why}"
    );
    let mut no_prompts = fake.config("ok", "pass");
    no_prompts.root = Path::new("/").to_path_buf();
    let why = check_cerberus(&no_prompts).unwrap_err();
    assert_eq!(why, CerberusSetupError::NoPrompts("/".into()));
    assert!(why.to_string().contains("prompts/reviewers"), "{why}");
}
