//! The Codex CLI over `codex app-server` (JSON-RPC on stdio), the second
//! agent backend. Being built (issue 15): its parts are tested here, with
//! the pinned binary where it matters, and reach `--coder codex` once the
//! guard decides every command and file change through it; until then the
//! binary refuses `--coder codex` as not built yet.

// Not wired to the binary yet; see the module's comment.
#![allow(dead_code)]

mod rpc;
mod server;
mod session;

#[cfg(test)]
mod offline_tests;
