//! How a review finding reads, wherever it is shown: to the agent sent back
//! to fix it, in a tracking or remediation issue, or to a person.

use mala_core::Finding;

/// Where it is: `file:start-end`, `file:line`, `file`, or `(general)`.
pub fn finding_place(finding: &Finding) -> String {
    match (&finding.file, finding.line_start, finding.line_end) {
        (Some(file), Some(start), Some(end)) if end != start => format!("{file}:{start}-{end}"),
        (Some(file), Some(start), _) => format!("{file}:{start}"),
        (Some(file), None, _) => file.clone(),
        (None, ..) => "(general)".to_owned(),
    }
}

/// Its body, with where it is when it has a place: the text of an issue
/// filed for it.
pub fn finding_detail(finding: &Finding) -> String {
    if finding.file.is_none() {
        return finding.body.clone();
    }
    format!("{}\n\nWhere: {}", finding.body, finding_place(finding))
}

/// One line: `[P1] src/a.rs:3: Off by one`.
pub fn finding_line(finding: &Finding) -> String {
    format!(
        "[P{}] {}: {}",
        finding.priority,
        finding_place(finding),
        finding.title
    )
}

/// A list for an agent to work through: ordered by file and line, each
/// finding's line followed by its body, indented.
pub fn findings_list<'f>(findings: impl IntoIterator<Item = &'f Finding>) -> String {
    let mut sorted: Vec<&Finding> = findings.into_iter().collect();
    sorted.sort_by(|a, b| a.file.cmp(&b.file).then(a.line_start.cmp(&b.line_start)));
    sorted
        .iter()
        .map(|f| format!("- {}\n  {}", finding_line(f), f.body.replace('\n', "\n  ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(file: Option<&str>, lines: (Option<u32>, Option<u32>), title: &str) -> Finding {
        Finding {
            priority: 1,
            title: title.into(),
            body: "why\nand how".into(),
            file: file.map(str::to_owned),
            line_start: lines.0,
            line_end: lines.1,
        }
    }

    #[test]
    fn places_say_as_much_as_is_known() {
        assert_eq!(
            finding_place(&finding(Some("a.rs"), (Some(3), Some(5)), "t")),
            "a.rs:3-5"
        );
        assert_eq!(
            finding_place(&finding(Some("a.rs"), (Some(3), Some(3)), "t")),
            "a.rs:3"
        );
        assert_eq!(
            finding_place(&finding(Some("a.rs"), (None, None), "t")),
            "a.rs"
        );
        assert_eq!(
            finding_place(&finding(None, (Some(3), None), "t")),
            "(general)"
        );
    }

    #[test]
    fn a_list_is_ordered_by_place_with_bodies_indented() {
        let b = finding(Some("b.rs"), (Some(1), None), "second");
        let a = finding(Some("a.rs"), (Some(9), None), "first");
        assert_eq!(
            findings_list([&b, &a]),
            "- [P1] a.rs:9: first\n  why\n  and how\n- [P1] b.rs:1: second\n  why\n  and how"
        );
    }
}
