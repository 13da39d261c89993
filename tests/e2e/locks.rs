//! Separate processes contend for one file through the lock directory:
//! exactly one holds it.

use std::process::Command;
use std::time::Duration;

const CONTENDERS: usize = 12;

#[test]
fn processes_contending_for_one_file_get_exactly_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    let children: Vec<_> = (0..CONTENDERS)
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_lock-contender"))
                .arg(dir.path())
                .arg(&repo)
                .arg(format!("agent-{n}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Start them together, once every one has said it is ready.
    let ready = |n: usize| dir.path().join(format!("ready-agent-{n}")).exists();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..CONTENDERS).all(ready) {
        assert!(
            std::time::Instant::now() < deadline,
            "the contenders never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.path().join("go"), "").unwrap();
    let mut acquired = 0;
    let mut held = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("RESULT acquired") {
            acquired += 1;
        } else if text.contains("RESULT held") {
            held += 1;
        } else {
            panic!("a contender printed no result: {text}");
        }
    }
    assert_eq!((acquired, held), (1, CONTENDERS - 1));
    let locks = mala_infra::list_locks(&dir.path().join("locks"));
    assert_eq!(locks.len(), 1);
    assert!(locks[0].holder.as_str().starts_with("agent-"));
}
