//! Test support for mala. Dev-only: no production crate depends on it.
//!
//! - [`TempRepo`]: a throwaway git repository.
//! - [`Br`]: the real `br` run in such a repository.
//! - [`MockAnthropic`]: a local stand-in for the Anthropic Messages API whose
//!   "model" is scripted per test; it records every request it receives.
//! - [`MockResponses`]: the same for the OpenAI Responses API, for the real
//!   `codex` binary.
//! - [`ClaudeHarness`]: the real `claude` binary, pointed at the mock, with a
//!   private config directory and no way to reach the internet.
//! - [`CodexHarness`]: a private `CODEX_HOME` whose config.toml makes the
//!   Responses mock the real `codex` binary's model provider.
//! - [`synthetic_tracker`]: a large, deterministic br tracker for benchmarks.
//! - [`MemoryTracker`], [`ScriptedBackend`], [`MemoryRepository`]: in-memory
//!   ports for embedding the orchestrator in tests, examples and benchmarks.
//! - [`FakeCerberus`]: a stand-in for the cerberus CLI.
//! - [`require_tool!`]: finds `br`, `claude` or `codex`, skipping the test loudly when
//!   absent on a developer machine and failing it in CI.
//!
//! Panics here are test failures with a message, so `expect` is used freely.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stderr,
    clippy::missing_panics_doc
)]

mod br;
mod cerberus;
mod claude;
mod codex;
mod fakes;
mod git;
mod http;
mod mock_anthropic;
mod mock_openai;
mod synthetic;
mod tools;

pub use br::{Br, NewIssue};
pub use cerberus::FakeCerberus;
pub use claude::{CLAUDE_VERSION, ClaudeHarness, ClaudeRun};
pub use codex::CodexHarness;
pub use fakes::{HeldCloses, MemoryRepository, MemoryTracker, ScriptedBackend};
pub use git::TempRepo;
pub use http::RecordedRequest;
pub use mock_anthropic::{Block, Conversation, MockAnthropic, Reply, Script, Step};
pub use mock_openai::{MockResponses, ResponsesConversation, ResponsesReply, ResponsesScript};
pub use synthetic::{synthetic_ids, synthetic_tracker};
pub use tools::{Tool, find_tool, tool_or_skip};
