//! One contender of `locks::processes_contending_for_one_file_get_exactly_one_holder`:
//! `lock-contender DIR REPO AGENT` says it is ready, waits for the start
//! signal, tries the shared lock once, and prints `RESULT acquired` or
//! `RESULT held`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use mala_core::{AgentId, LockTable};
use mala_infra::FileLockTable;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(repo), Some(agent)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: lock-contender DIR REPO AGENT".into());
    };
    let (dir, repo) = (PathBuf::from(dir), PathBuf::from(repo));
    std::fs::write(dir.join(format!("ready-{agent}")), "")?;
    // All contenders start together: the parent writes `go` once every one is ready.
    while !dir.join("go").exists() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let table = FileLockTable::new(dir.join("locks"), &repo)?;
    let report = table
        .acquire(
            &AgentId::new(agent),
            &["src/shared.rs".to_owned()],
            Duration::ZERO,
        )
        .await?;
    let result = if report.all_acquired {
        "acquired"
    } else {
        "held"
    };
    writeln!(std::io::stdout(), "RESULT {result}")?;
    Ok(())
}
