//! Agents, their sessions, and what they report while they work.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::IssueId;

/// One running agent, e.g. `mala-3f2-1a2b3c4d` (issue id plus a random suffix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name of the agent's session record in a run's `sessions/`.
    pub fn record_file_name(&self) -> String {
        format!("{}.jsonl", self.0.replace(['/', '\\'], "_"))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The backend's conversation id, used to resume a session in a new process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an agent reports while a turn runs. Backend-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The backend assigned (or confirmed) the session id.
    SessionStarted { session_id: SessionId },
    /// Assistant prose.
    Text { text: String },
    /// The agent asked to run a tool.
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// A tool finished.
    ToolResult {
        id: String,
        is_error: bool,
        content: String,
    },
    /// A shell command ran (recorded by a hook, with its status).
    CommandRan { run: crate::CommandRun },
    /// A file was changed by a structured edit (recorded by a hook), or
    /// seen changed in the working tree after a tool call.
    FileEdited { edit: crate::FileEdit },
    /// A file nobody holds the lock of was seen changed in the working tree
    /// after one of the agent's tool calls (also sent as a `FileEdited`).
    UnlockedWrite { edit: crate::FileEdit },
    /// `.git` lost refs or objects while one of the agent's tool calls ran a
    /// program (not through git's own vetted commands); the agent is stopped.
    RepositoryDamaged {
        tool_use_id: String,
        what: Vec<String>,
    },
    /// A tool call was refused, with the reason the agent was given.
    ToolDenied { tool: String, reason: String },
    /// What the running turn has used so far, as the backend learns it
    /// from each model response; the turn's outcome has the final figure.
    /// A budget in tokens cuts a turn on it.
    TurnUsage { usage: TokenUsage },
}

/// Tokens spent, as reported by the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl TokenUsage {
    /// Every token the turn moved: input, output, cache reads and writes.
    /// The one count the console, the run's record and budgets use.
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_input_tokens)
            .saturating_add(self.cache_creation_input_tokens)
    }

    /// Each count the larger of the two: one model response reported twice,
    /// the second time further on.
    #[must_use]
    pub fn max_each(self, other: Self) -> Self {
        self.each(other, u64::max)
    }

    /// Both together.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        self.each(other, u64::saturating_add)
    }

    /// What `self` has beyond `before` (a running total less an earlier one).
    #[must_use]
    pub fn minus(self, before: Self) -> Self {
        self.each(before, u64::saturating_sub)
    }

    fn each(self, other: Self, op: fn(u64, u64) -> u64) -> Self {
        Self {
            input_tokens: op(self.input_tokens, other.input_tokens),
            output_tokens: op(self.output_tokens, other.output_tokens),
            cache_read_input_tokens: op(
                self.cache_read_input_tokens,
                other.cache_read_input_tokens,
            ),
            cache_creation_input_tokens: op(
                self.cache_creation_input_tokens,
                other.cache_creation_input_tokens,
            ),
        }
    }
}

/// How a turn ended, judged by the backend's own error flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Completed,
    Failed {
        reason: String,
    },
    Interrupted,
    MaxTurns,
    /// The backend stopped the turn at the dollar limit it was given.
    BudgetReached,
}

/// The end of one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnOutcome {
    pub status: TurnStatus,
    pub session_id: Option<SessionId>,
    /// The agent's final text for the turn.
    pub final_text: String,
    pub usage: TokenUsage,
    /// Cumulative cost of the session so far, in US dollars.
    pub total_cost_usd: f64,
    pub num_turns: u32,
    /// Tool calls the backend refused during the turn (tool names).
    pub permission_denials: Vec<String>,
}

impl TurnOutcome {
    /// A turn that completed with `final_text`, as the first of its
    /// session, having spent nothing: the start of what a test double or
    /// a backend reports.
    pub fn completed(final_text: impl Into<String>) -> Self {
        Self {
            status: TurnStatus::Completed,
            session_id: None,
            final_text: final_text.into(),
            usage: TokenUsage::default(),
            total_cost_usd: 0.0,
            num_turns: 1,
            permission_denials: Vec::new(),
        }
    }
}

/// Everything a backend needs to start one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRequest {
    pub agent_id: AgentId,
    pub issue_id: Option<IssueId>,
    /// Working directory of the agent (the repository root).
    pub cwd: PathBuf,
    /// Resume this conversation instead of starting a new one.
    pub resume: Option<SessionId>,
    /// Extra instructions appended to the backend's system prompt.
    pub system_prompt_append: Option<String>,
    /// Dollars the session may spend before the backend stops it mid-turn.
    pub max_cost_usd: Option<f64>,
    /// A check, not work (the run's preflight): the backend offers its
    /// shell tool alone and a short system prompt of its own, so the check
    /// costs as few tokens as it can. Hooks and mala's tools are as ever.
    pub probe: bool,
}

impl SessionRequest {
    /// A new session for `agent_id` in `cwd`.
    pub fn new(agent_id: AgentId, cwd: impl Into<PathBuf>) -> Self {
        Self {
            agent_id,
            issue_id: None,
            cwd: cwd.into(),
            resume: None,
            system_prompt_append: None,
            max_cost_usd: None,
            probe: false,
        }
    }
}
