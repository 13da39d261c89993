//! Patches in the format of Codex's `apply_patch`: the paths they add,
//! update, delete or move to, each a structured edit to check.

pub(crate) const BEGIN: &str = "*** Begin Patch";

const FILE_LINES: &[&str] = &[
    "*** Add File:",
    "*** Update File:",
    "*** Delete File:",
    "*** Move to:",
];

/// Every path the patch changes, in order.
pub(crate) fn paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            FILE_LINES
                .iter()
                .find_map(|prefix| line.strip_prefix(prefix))
                .map(|path| path.trim().to_owned())
        })
        .filter(|path| !path.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_added_updated_deleted_and_moved_path_is_found() {
        let patch = "*** Begin Patch\n*** Update File: src/a.rs\n*** Move to: src/b.rs\n@@\n-x\n+y\n*** Add File: c.txt\n+hi\n*** Delete File: d.txt\n*** End Patch";
        assert_eq!(paths(patch), vec!["src/a.rs", "src/b.rs", "c.txt", "d.txt"]);
        assert!(paths("no patch here").is_empty());
    }
}
