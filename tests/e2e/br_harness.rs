//! The br helpers work against the real br.

use mala_testkit::{Br, NewIssue, TempRepo, Tool, require_tool};

#[test]
fn real_br_tracks_dependencies_and_epics() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "t");

    let epic = br.create(&NewIssue {
        title: "Epic",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let first = br.create(&NewIssue {
        title: "First",
        priority: 1,
        parent: Some(&epic),
        acceptance: "it works",
        ..NewIssue::default()
    });
    let second = br.create(&NewIssue {
        title: "Second",
        priority: 2,
        ..NewIssue::default()
    });
    br.block(&second, &first);

    let ready = br.ready_ids();
    assert!(ready.contains(&first), "{ready:?}");
    assert!(
        !ready.contains(&second),
        "a blocked issue is not ready: {ready:?}"
    );

    let shown = br.json(&["show", &first]);
    assert_eq!(shown[0]["acceptance_criteria"], "it works");

    br.close(&first);
    assert!(
        br.ready_ids().contains(&second),
        "closing the blocker frees the dependent"
    );
    assert!(repo.join(".beads/issues.jsonl").is_file());
}
