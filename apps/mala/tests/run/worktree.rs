//! `mala run --isolation worktree` with the real br and claude: each issue
//! in a worktree of its own, landed through the merge queue.

use std::path::{Path, PathBuf};
use std::process::Command;

use mala_testkit::{
    Block, Br, ClaudeHarness, Conversation, MockAnthropic, NewIssue, Reply, Script, TempRepo, Tool,
    require_tool,
};
use serde_json::json;

use super::{OneIssue, bin_dir, issue_of, reply};

/// What the merge follow-up says (`prompts/merge_followup.md`).
const LAND_AGAIN: &str = "could not land on";

/// The worktree the implementer prompt names.
fn worktree_of(text: &str) -> PathBuf {
    let after = text.split("working on issue ").nth(1).unwrap_or_default();
    let tree = after
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(", a git worktree").next())
        .unwrap_or("/nowhere");
    PathBuf::from(tree)
}

/// An honest agent in its own worktree: write FILE with its issue's line,
/// run the check, commit with git. Sent back by the merge queue, it rebases
/// onto the commit it is given and keeps both sides' lines.
fn worktree_script() -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let tree = worktree_of(&text);
        let file = text
            .split("FILE=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("src/x.txt")
            .to_owned();
        let commit = format!("git add {file} && git commit -q -m 'bd-{issue}: write {file}'");
        if let Some(done) = conversation.tool_uses_since(LAND_AGAIN) {
            let onto = conversation
                .last_user_text()
                .split("git rebase ")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .unwrap_or("main")
                .to_owned();
            let merged = format!("{}\n{issue}\n", landed_lines(&tree, &file));
            let plan = [
                (
                    "Bash",
                    json!({"command": format!("git rebase {onto} || true")}),
                ),
                (
                    "Write",
                    json!({"file_path": tree.join(&file), "content": merged}),
                ),
                (
                    "Bash",
                    json!({"command": format!("git add {file} && GIT_EDITOR=true git rebase --continue")}),
                ),
                ("Bash", json!({"command": "ls src"})),
            ];
            return reply(plan.get(done), "Rebased, kept both lines; `ls src` passed.");
        }
        let mut plan = vec![
            (
                "Write",
                json!({"file_path": tree.join(&file), "content": format!("{issue}\n")}),
            ),
            ("Bash", json!({"command": "ls src"})),
            ("Bash", json!({"command": commit})),
        ];
        if text.contains("MEET=3") {
            // The first three agents meet before any of them commits, so
            // the two that write the same file both start from the same head.
            let meet = "until [ \"$(ls .. | wc -l)\" -ge 3 ]; do sleep 0.05; done";
            plan.insert(0, ("Bash", json!({"command": meet})));
        }
        reply(
            plan.get(conversation.tool_uses_so_far()),
            &format!("Wrote {file}; `ls src` passed; committed on my branch."),
        )
    })
}

/// The lines the target's head already has in `file`, read from the
/// worktree's view of git (what the agent would see after the rebase).
fn landed_lines(tree: &Path, file: &str) -> String {
    Command::new("git")
        .args(["show", &format!("main:{file}")])
        .current_dir(tree)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
        .unwrap_or_default()
}

/// A repository with `src/keep.txt` and a mala.yaml of `extra` and the
/// required check `ls src`.
fn repo_checking_src(extra: &str) -> TempRepo {
    let repo = TempRepo::new();
    repo.write("src/keep.txt", "kept\n");
    repo.write(
        "mala.yaml",
        &format!("{extra}commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\n"),
    );
    repo
}

/// The real claude playing `script` against the mock, and `mala` run with it.
struct Mocked {
    mock: MockAnthropic,
    _harness: ClaudeHarness,
    scratch: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Mocked {
    fn new(claude: &Path, br_binary: &Path, script: Script) -> Self {
        let mock = MockAnthropic::start(script);
        let harness = ClaudeHarness::new(claude, &mock);
        let scratch = tempfile::tempdir().unwrap();
        let bin = bin_dir(scratch.path(), br_binary, claude);
        let env = harness.mala_env(&bin, scratch.path());
        Self {
            mock,
            _harness: harness,
            scratch,
            env,
        }
    }

    /// `mala ARGS` in `repo`, to its end.
    fn mala(&self, repo: &TempRepo, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mala"))
            .args(args)
            .current_dir(repo.path())
            .env_clear()
            .envs(self.env.clone())
            .output()
            .unwrap()
    }
}

#[allow(clippy::too_many_lines)]
#[test]
fn six_issues_close_in_their_own_worktrees_and_a_conflict_is_resolved_on_its_follow_up() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = repo_checking_src("");
    let br = Br::init(&br_binary, repo.path(), "wt");
    // Two of the first three claimed write the same file.
    let files = ["shared", "shared", "c", "d", "e", "f"];
    let issues: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            br.create(&NewIssue {
                title: &format!("Write {file} ({i})"),
                priority: if i < 3 { 1 } else { 2 },
                description: &format!(
                    "Write your issue id into FILE=src/{file}.txt and commit it.{}",
                    if i < 3 { " MEET=3" } else { "" }
                ),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let mocked = Mocked::new(&claude, &br_binary, worktree_script());
    let events = mocked.scratch.path().join("events.jsonl");
    let events_arg = events.display().to_string();
    let args = [
        "run",
        "--isolation",
        "worktree",
        "--max-agents",
        "3",
        "--events-jsonl",
        &events_arg,
    ];
    let output = mocked.mala(&repo, &args);
    let mock = &mocked.mock;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6 closed, 0 failed, 0 skipped"), "{stdout}");
    for issue in &issues {
        assert_eq!(
            br.json(&["show", issue])[0]["status"],
            "closed",
            "{issue}: {stdout}"
        );
        let commits = repo.git(&[
            "log",
            "main",
            "--format=%s",
            "--grep",
            &format!("^bd-{issue}:"),
        ]);
        assert_eq!(commits.lines().count(), 1, "{issue} landed once: {commits}");
    }
    // Both writers' lines are in the shared file, in the user's checkout.
    let shared = std::fs::read_to_string(repo.path().join("src/shared.txt")).unwrap();
    for issue in &issues[..2] {
        assert!(shared.lines().any(|l| l == issue), "{issue} in {shared:?}");
    }
    for (issue, file) in issues.iter().zip(files).skip(2) {
        let text = std::fs::read_to_string(repo.path().join(format!("src/{file}.txt"))).unwrap();
        assert_eq!(text, format!("{issue}\n"));
    }
    // The history on main is straight: every issue's commit rebased on the last.
    let merges = repo.git(&["rev-list", "--merges", "main"]);
    assert_eq!(merges.trim(), "", "no merge commits");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent_back: Vec<&str> = events
        .iter()
        .filter(|e| {
            e["kind"] == "retrying" && e["why"].as_str().is_some_and(|w| w.contains("merge queue"))
        })
        .filter_map(|e| e["issue"].as_str())
        .collect();
    assert_eq!(
        sent_back.len(),
        1,
        "one of the two writers was sent back once: {sent_back:?}"
    );
    assert!(issues[..2].iter().any(|i| i == sent_back[0]));
    let landed = events.iter().filter(|e| e["kind"] == "landed").count();
    assert_eq!(landed, 6);
    // Each agent worked in its own tree, none in the user's checkout, and
    // every closed issue's tree and branch are gone.
    let opened: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "worktree_opened")
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(opened.len(), 6);
    let user_checkout = repo.path().canonicalize().unwrap();
    assert!(
        opened
            .iter()
            .all(|p| !Path::new(p).starts_with(&user_checkout))
    );
    assert!(opened.iter().all(|p| !Path::new(p).exists()), "{opened:?}");
    assert_eq!(repo.git(&["branch", "--list", "mala/*"]).trim(), "");
    assert_eq!(repo.git(&["worktree", "list"]).lines().count(), 1);
    // No agent was offered locks or mala's commit tool.
    for request in mock.requests() {
        let tools = request.body["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            tools
                .iter()
                .all(|t| !t["name"].as_str().unwrap_or("").starts_with("mcp__mala__")),
            "no mala tools in worktree mode"
        );
    }
    let status = mocked.mala(&repo, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("0 worktrees in"), "{status}");
}

/// `isolation: worktree` refuses a checkout on a detached HEAD before any
/// claim, with the reason.
#[test]
fn a_detached_checkout_stops_a_worktree_run_before_any_claim() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = TempRepo::new();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "isolation: worktree\ncommands:\n  check: \"true\"\nevidence_check:\n  required: [check]\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "wd");
    let issue = br.create(&NewIssue {
        title: "Anything",
        ..NewIssue::default()
    });
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    repo.git(&["checkout", "-q", "--detach"]);
    let silent = Script::from_fn(|_| Reply::Message(vec![Block::Text("no".into())]));
    let output = Mocked::new(&claude, &br_binary, silent).mala(&repo, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr.contains("detached HEAD"), "{stderr}");
    assert_eq!(br.json(&["show", &issue])[0]["status"], "open");
}

/// One issue in worktree mode (`OneIssue`, with its mala.yaml and `br`
/// changed), set up so a run can be killed at a chosen point: the agent
/// pauses before its work; the check (`./check.sh`) sleeps when mala runs it
/// in the merge queue (every run after the agent's first); `br close` waits,
/// and closes nothing once mala is gone, so the kill lands after the branch
/// landed and before the issue closed.
struct KillFixture(OneIssue);

impl std::ops::Deref for KillFixture {
    type Target = OneIssue;

    fn deref(&self) -> &OneIssue {
        &self.0
    }
}

/// The prompt a later run's resumed session gets (`prompts/run_resume.md`).
const RESUMED: &str = "picking your session up";

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl KillFixture {
    fn new(claude: &Path, br_binary: &Path) -> Self {
        let fix = OneIssue::new(claude, br_binary, "wk", |_, _| resumable_worktree_script());
        let (repo, marks) = (fix.repo.path(), fix.scratch.path().display());
        executable(
            &repo.join("check.sh"),
            &format!(
                "#!/bin/sh\nn=$(cat {marks}/checks 2>/dev/null | wc -l)\necho run >> {marks}/checks\n\
                 if [ \"$n\" -ge 1 ]; then touch {marks}/validating; sleep 4; fi\nls src\n"
            ),
        );
        std::fs::write(
            repo.join("mala.yaml"),
            "isolation: worktree\ncommands:\n  check: \"./check.sh\"\nevidence_check:\n  required: [check]\n",
        )
        .unwrap();
        fix.repo.commit_all("worktree mode, a slow check");
        let br = fix.scratch.path().join("bin/br");
        let real = std::fs::read_link(&br).unwrap();
        std::fs::remove_file(&br).unwrap();
        executable(
            &br,
            &format!(
                "#!/bin/sh\ncase \" $* \" in *\" close \"*) touch {marks}/closing; sleep 4; kill -0 $PPID 2>/dev/null || exit 1;; esac\nexec {} \"$@\"\n",
                real.display()
            ),
        );
        Self(fix)
    }

    fn marked(&self, mark: &str) -> bool {
        self.0.scratch.path().join(mark).exists()
    }

    fn commits_on_main(&self) -> usize {
        let grep = format!("^bd-{}:", self.0.issue);
        self.0
            .repo
            .git(&["log", "main", "--format=%s", "--grep", &grep])
            .lines()
            .count()
    }
}

/// An honest agent in its worktree that pauses first; resumed by a later
/// run, it checks again when its commit is there, else does the work again.
fn resumable_worktree_script() -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let tree = worktree_of(&text);
        let work = [
            (
                "Write",
                json!({"file_path": tree.join("src/a.txt"), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": "./check.sh"})),
            (
                "Bash",
                json!({"command": format!("git add src/a.txt && git commit -q -m 'bd-{issue}: fix a'")}),
            ),
        ];
        let committed = Command::new("git")
            .args(["log", "--format=%s", "--grep", &format!("^bd-{issue}:")])
            .current_dir(&tree)
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        let next = match conversation.tool_uses_since(RESUMED) {
            Some(0) if committed => Some(("Bash", json!({"command": "./check.sh"}))),
            Some(_) if committed => None,
            Some(done) => work.get(done).cloned(),
            None => {
                let mut plan = vec![("Bash", json!({"command": "sleep 2"}))];
                plan.extend(work.iter().cloned());
                plan.get(conversation.tool_uses_so_far()).cloned()
            }
        };
        reply(
            next.as_ref(),
            "Fixed src/a.txt; ./check.sh passes; committed on my branch.",
        )
    })
}

/// Kills `mala run` with SIGKILL once `ready`, runs `mala run --resume`,
/// and checks the issue closed with its commit landed exactly once and no
/// worktree, branch or lock left.
fn kill_in_worktree_mode(point: &str, clean: bool, ready: &dyn Fn(&KillFixture) -> bool) {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let fix = KillFixture::new(&claude, &br_binary);
    let mut first = fix
        .mala(&["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready(&fix) {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: never got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !super::agents_of(&fix.issue).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{point}: an agent outlived mala"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // What the dead run left is on show, and nothing of it is lost.
    let status = fix.mala(&["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("1 worktree in") && status.contains(&format!("mala/{}", fix.issue)),
        "{point}: {status}"
    );
    if clean {
        // With no run alive, `mala clean` takes the idle tree away; its
        // branch stays, and the next run makes the tree again from it.
        let cleaned = fix.mala(&["clean"]).output().unwrap();
        let cleaned = String::from_utf8_lossy(&cleaned.stdout);
        assert!(cleaned.contains("removed 1 worktree"), "{point}: {cleaned}");
        assert_eq!(
            fix.repo.git(&["worktree", "list"]).lines().count(),
            1,
            "{point}"
        );
    }
    let output = fix.mala(&["run", "--resume"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{point}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fix.br.json(&["show", &fix.issue])[0]["status"],
        "closed",
        "{point}: {stdout}"
    );
    assert_eq!(fix.commits_on_main(), 1, "{point}: landed exactly once");
    assert_eq!(
        std::fs::read_to_string(fix.repo.path().join("src/a.txt")).unwrap(),
        "fixed\n",
        "{point}: the user's checkout has the work"
    );
    assert_eq!(
        fix.repo.git(&["worktree", "list"]).lines().count(),
        1,
        "{point}: no worktree left: {stdout}"
    );
    assert_eq!(
        fix.repo.git(&["branch", "--list", "mala/*"]).trim(),
        "",
        "{point}: no branch left"
    );
    let _ = &fix.mock;
}

#[test]
fn a_worktree_run_killed_mid_turn_is_cleaned_up_then_resumed_and_lands_once() {
    // Killed once the agent's turn has begun and before its long command
    // is over: the request after `sleep 2` would come back with the edit,
    // which a kill could then land after (and `mala clean` keeps a tree
    // with changes in it).
    kill_in_worktree_mode("mid-turn", true, &|fix| {
        fix.mock
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("working on issue"))
    });
}

#[test]
fn a_worktree_run_killed_while_the_queue_validates_is_resumed_and_lands_once() {
    kill_in_worktree_mode("in the queue", false, &|fix| fix.marked("validating"));
}

#[test]
fn a_worktree_run_killed_after_landing_and_before_the_close_does_not_land_twice() {
    kill_in_worktree_mode("between landing and close", false, &|fix| {
        fix.marked("closing") && fix.commits_on_main() == 1
    });
}

/// Agents that lie, each as its issue's description says (`LIE=<how>`):
/// they commit without the check, fake it, or try to reach past their tree.
fn lying_worktree_script(user_checkout: PathBuf) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let tree = worktree_of(&text);
        let write = (
            "Write",
            json!({"file_path": tree.join("src/a.txt"), "content": "lie\n"}),
        );
        let commit = (
            "Bash",
            json!({"command": format!("git add src/a.txt && git commit -q -m 'bd-{issue}: fix a'")}),
        );
        let bash = |command: String| ("Bash", json!({"command": command}));
        let plan = if text.contains("LIE=unchecked") {
            vec![write, commit]
        } else if text.contains("LIE=faked") {
            vec![write, bash("echo 'ls src: ok'".into()), commit]
        } else {
            let user_file = user_checkout.join("src/keep.txt");
            vec![
                bash(format!("echo hacked > {}", user_file.display())),
                bash("git push . HEAD:main".into()),
                bash("git update-ref refs/heads/main HEAD".into()),
                bash("git checkout main".into()),
                write,
                bash("ls src".into()),
                commit,
                bash("git reset --hard HEAD~1".into()),
            ]
        };
        let done = conversation
            .tool_uses_since("not done yet")
            .unwrap_or(conversation.tool_uses_so_far());
        reply(
            plan.get(done),
            "Done: ls src passes and the fix is committed.",
        )
    })
}

#[test]
fn agents_that_lie_in_their_worktrees_are_caught_and_cannot_reach_past_them() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let repo = repo_checking_src("isolation: worktree\nmax_gate_retries: 2\n");
    let br = Br::init(&br_binary, repo.path(), "lie");
    let lies = ["unchecked", "faked", "escape"];
    let issues: Vec<String> = lies
        .iter()
        .map(|lie| {
            br.create(&NewIssue {
                title: &format!("Fix a ({lie})"),
                description: &format!("Fix src/a.txt. LIE={lie}"),
                ..NewIssue::default()
            })
        })
        .collect();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    let before = repo.git(&["rev-parse", "main"]);
    let user_checkout = repo.path().canonicalize().unwrap();
    let mocked = Mocked::new(&claude, &br_binary, lying_worktree_script(user_checkout));
    let output = mocked.mala(&repo, &["run", "--max-agents", "3"]);
    let mock = &mocked.mock;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The two that lied about the check stay open; the one that tried to
    // reach past its tree was refused each time, then did honest work.
    assert!(stdout.contains("1 closed, 2 failed"), "{stdout}");
    for issue in &issues[..2] {
        assert_ne!(
            br.json(&["show", issue])[0]["status"],
            "closed",
            "{issue}: {stdout}"
        );
    }
    assert_eq!(
        br.json(&["show", &issues[2]])[0]["status"],
        "closed",
        "{stdout}"
    );
    // Only the honest work landed, and the user's own file is as it was.
    let after = repo.git(&["rev-parse", "main"]);
    let changed = repo.git(&["diff", "--name-only", before.trim(), after.trim()]);
    assert!(
        changed
            .lines()
            .all(|f| f.starts_with(".beads/") || f == "src/a.txt"),
        "{changed}"
    );
    let landed = repo.git(&["log", "main", "--format=%s", "--grep", "^bd-"]);
    assert_eq!(
        landed.trim(),
        format!("bd-{}: fix a", issues[2]),
        "{landed}"
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/keep.txt")).unwrap(),
        "kept\n"
    );
    // The reasons say what happened; the refusals reached the agent.
    assert!(stdout.contains("was never run"), "{stdout}");
    let answers: String = mock.requests().iter().map(|r| r.body.to_string()).collect();
    for refusal in [
        "in another working tree",
        "moves or deletes a ref directly",
        "mala lands your branch",
        "stays on your branch",
        "moves your branch",
    ] {
        assert!(answers.contains(refusal), "the agent heard: {refusal}");
    }
}
