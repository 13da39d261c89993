//! A stand-in for the cerberus CLI (v2): it logs every call and plays a
//! scripted review, writing its gate and reviewer output where cerberus does.
//!
//! Its environment steers it: `FAKE_MODE` (`ok`, `nochange`, `busy`,
//! `broken`, `timeout`, `garbage`), `FAKE_VERDICT` (the gate's verdict,
//! `pass` by default) and `FAKE_LOG` (default `$CERBERUS_STATE_ROOT/calls.log`).
//! The review it writes has one P2 finding and one without a priority in
//! the last round, and P0 findings in older rounds that must not be read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SCRIPT: &str = r#"#!/bin/bash
{ printf 'call:'; printf ' [%s]' "$@"; printf '\n'
  echo "env: host=$CERBERUS_HOST project=$CERBERUS_PROJECT_KEY run=$CERBERUS_RUN_KEY session=$CLAUDE_SESSION_ID root=$CERBERUS_ROOT state=$CERBERUS_STATE_ROOT"
} >> "${FAKE_LOG:-$CERBERUS_STATE_ROOT/calls.log}"
case "$1" in
  author-context) exit 0 ;;
  spawn-code-review)
    case "${FAKE_MODE:-ok}" in
      nochange) echo "no changes found (diff mode)"; exit 0 ;;
      busy) echo "a review is already active for this session" >&2; exit 1 ;;
      broken) echo "internal_error: reviewer crashed" >&2; exit 2 ;;
    esac
    exit 0 ;;
  wait)
    case "${FAKE_MODE:-ok}" in
      timeout) exit 3 ;;
      garbage) echo "not json at all"; exit 0 ;;
    esac
    run="$CERBERUS_STATE_ROOT/$CERBERUS_PROJECT_KEY/$CERBERUS_RUN_KEY/iterations"
    mkdir -p "$run/1/round-1/reviewers/old" "$run/2/round-1/reviewers/stale" "$run/2/round-2/reviewers/alpha" "$run/2/round-2/reviewers/beta"
    echo '{"findings":[{"priority":0,"title":"old iteration"}]}' > "$run/1/round-1/reviewers/old/output.json"
    echo '{"findings":[{"priority":0,"title":"old round"}]}' > "$run/2/round-1/reviewers/stale/output.json"
    echo '{"findings":[{"file_path":"src/a.rs","line_start":3,"line_end":4,"priority":2,"title":"Name is unclear","body":"call it parse"}]}' > "$run/2/round-2/reviewers/alpha/output.json"
    echo '{"findings":[{"title":"No priority given","body":"advisory"}]}' > "$run/2/round-2/reviewers/beta/output.json"
    printf '{"status":"resolved","verdict":"%s","run_key":"%s","project_key":"%s","current_iteration":2}\n' "${FAKE_VERDICT:-pass}" "$CERBERUS_RUN_KEY" "$CERBERUS_PROJECT_KEY"
    exit 0 ;;
esac
exit 9
"#;

/// An installed fake: `<dir>/cerberus-home/bin/cerberus`, with the
/// `prompts/reviewers/` directory cerberus checks for.
#[derive(Debug)]
pub struct FakeCerberus {
    pub home: PathBuf,
    pub binary: PathBuf,
}

impl FakeCerberus {
    /// Installs the fake under `dir`.
    ///
    /// # Panics
    /// When `dir` cannot be written (a test setup failure).
    #[allow(clippy::expect_used)] // test setup: failing here fails the test
    pub fn install(dir: &Path) -> Self {
        let home = dir.join("cerberus-home");
        let bin = home.join("bin");
        std::fs::create_dir_all(&bin).expect("create the fake cerberus home");
        std::fs::create_dir_all(home.join("prompts/reviewers")).expect("create its prompts");
        let binary = bin.join("cerberus");
        std::fs::write(&binary, SCRIPT).expect("write the fake cerberus");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        Self { home, binary }
    }
}
