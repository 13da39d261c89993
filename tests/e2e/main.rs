//! One test binary for every end-to-end area. Each module needs real binaries
//! (`br`, `claude`); missing ones skip loudly locally and fail in CI.

mod architecture;
mod beads_jsonl;
mod br_harness;
mod br_tracker;
mod claude_backend;
mod claude_harness;
mod commits;
mod deadlock_props;
mod forgotten_files;
mod locks;
mod pipeline;
mod ready_parity;
mod tree_watch;
mod weakened_checks;
