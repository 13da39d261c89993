//! mala reads what the real br writes.

use mala_testkit::{Br, NewIssue, TempRepo, Tool, require_tool};

#[test]
fn issues_written_by_br_are_read_in_process() {
    let binary = require_tool!(Tool::Br);
    let repo = TempRepo::new();
    let br = Br::init(&binary, repo.path(), "j");
    let epic = br.create(&NewIssue {
        title: "Epic",
        issue_type: "epic",
        priority: 1,
        ..NewIssue::default()
    });
    let child = br.create(&NewIssue {
        title: "Child",
        priority: 0,
        parent: Some(&epic),
        acceptance: "criteria survive",
        labels: &["backend"],
        ..NewIssue::default()
    });
    let later = br.create(&NewIssue {
        title: "Later",
        issue_type: "feature",
        priority: 3,
        ..NewIssue::default()
    });
    br.block(&later, &child);

    let issues = mala_infra::read_issues_jsonl(&repo.join(".beads/issues.jsonl")).unwrap();
    assert_eq!(issues.len(), 3);
    let find = |id: &str| issues.iter().find(|i| i.id.as_str() == id).unwrap();
    assert_eq!(
        find(&child).parent.as_ref().map(ToString::to_string),
        Some(epic.clone())
    );
    assert_eq!(find(&child).acceptance_criteria, "criteria survive");
    assert_eq!(find(&child).labels, vec!["backend"]);
    assert_eq!(
        find(&later)
            .blockers()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![child.clone()]
    );
    assert_eq!(find(&epic).issue_type.as_str(), "epic");
}
