//! The beads tracker: br's files and, later, the br adapter and the embedded store.

mod jsonl;

pub use jsonl::{parse_issues_jsonl, read_issues_jsonl};
