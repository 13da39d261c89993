//! One Claude Code process: the transport (reader, writer, pending control
//! requests), the answers to the CLI's requests (hooks, permissions, the MCP
//! server), and the turn loop with its timeouts.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mala_core::{
    AgentError, AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession, CommandRun,
    FileEdit, LockTable, Refusal, SessionId, SessionRequest, ToolGuard, TurnOutcome,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ClaudeConfig;
use super::protocol::{self, Inbound};
use crate::agent_tools as mcp;
use crate::session_record::{SessionRecord, record_path};

/// The longest stdout line accepted (tool results can carry whole files).
const MAX_LINE: usize = 64 * 1024 * 1024;
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
const INTERRUPT_ANSWER: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a plain update; a panic elsewhere leaves the data usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The compact account of a session, written next to its record at close.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    agent: String,
    session_id: Option<String>,
    turns: u32,
    input_tokens: u64,
    output_tokens: u64,
    total_cost_usd: f64,
    tool_uses: std::collections::BTreeMap<String, u32>,
    denials: u32,
    evidence: mala_core::Evidence,
}

/// What the reader hands to the turn loop.
#[derive(Debug)]
enum TurnSignal {
    Result(Value),
    /// stdout closed: the process ended or is ending.
    Closed,
    /// A line we cannot read; the protocol is broken.
    Broken(String),
}

/// State shared by the reader, the request handlers and the session.
struct Shared {
    agent: AgentId,
    observer: Arc<dyn AgentObserver>,
    guard: Option<Arc<dyn ToolGuard>>,
    locks: Option<Arc<dyn LockTable>>,
    git: Option<Arc<crate::GitRepo>>,
    watch: Option<Arc<crate::TreeWatch>>,
    /// The `claude` process: what its tool calls leave running is stopped.
    process: Option<crate::process_tree::AgentProcess>,
    /// The working-tree windows of tool calls in flight, by tool use id.
    windows: Mutex<HashMap<String, crate::WindowId>>,
    outbox: mpsc::UnboundedSender<Value>,
    record: Arc<SessionRecord>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<Value, String>>>>,
    handlers: Mutex<HashMap<String, JoinHandle<()>>>,
    session_id: Mutex<Option<SessionId>>,
    /// Tool calls and CLI requests in flight: the idle timer waits while any are.
    busy: AtomicUsize,
    /// Milliseconds since `epoch` of the last line either way.
    last_activity: AtomicU64,
    epoch: Instant,
    tool_started: Mutex<HashMap<String, DateTime<Utc>>>,
    stderr_tail: Mutex<String>,
    /// When a usage limit the CLI reported refused calls resets.
    limit_resets: Mutex<Option<DateTime<Utc>>>,
    /// The running turn's usage so far.
    turn_usage: Mutex<protocol::TurnTally>,
    /// Tool calls the PreToolUse hook saw and whose result has not come
    /// yet, by tool use id: allowed or denied.
    guarded: Mutex<HashMap<String, bool>>,
    /// Tool calls of this turn that ran, though the hook never saw them.
    unguarded: Mutex<Vec<String>>,
    next_request: AtomicU64,
    summary: Mutex<Summary>,
}

impl Shared {
    /// Sends a control request and waits for its answer, or for the process to end.
    async fn control(&self, request: Value, timeout: Duration) -> Result<Value, AgentError> {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("req_{n}_mala");
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        self.send(protocol::control_request(&id, &request));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(AgentError::new(
                AgentErrorKind::Protocol,
                format!("claude refused: {error}"),
            )),
            Ok(Err(_)) => Err(AgentError::new(
                AgentErrorKind::Crashed,
                "claude exited before answering",
            )),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(AgentError::new(
                    AgentErrorKind::TimedOut,
                    "claude did not answer a control request in time",
                ))
            }
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(elapsed, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn send(&self, line: Value) {
        self.record.write("out", &line);
        let _ = self.outbox.send(line);
    }

    fn emit(&self, event: &AgentEvent) {
        {
            let mut summary = lock(&self.summary);
            match event {
                AgentEvent::ToolUse { name, .. } => {
                    *summary.tool_uses.entry(name.clone()).or_default() += 1;
                }
                AgentEvent::CommandRan { run } => summary.evidence.commands.push(run.clone()),
                AgentEvent::FileEdited { edit } => summary.evidence.edits.push(edit.clone()),
                AgentEvent::UnlockedWrite { edit } => summary.evidence.unlocked.push(edit.clone()),
                AgentEvent::RepositoryDamaged { what, .. } => {
                    summary
                        .evidence
                        .repository_damage
                        .extend(what.iter().cloned());
                }
                AgentEvent::ToolDenied { .. } => summary.denials += 1,
                _ => {}
            }
        }
        // The protocol lines are recorded already; record only what mala adds.
        if matches!(
            event,
            AgentEvent::CommandRan { .. }
                | AgentEvent::FileEdited { .. }
                | AgentEvent::UnlockedWrite { .. }
                | AgentEvent::RepositoryDamaged { .. }
                | AgentEvent::ToolDenied { .. }
        ) {
            self.record
                .write("event", &serde_json::to_value(event).unwrap_or(Value::Null));
        }
        self.observer.on_event(event);
    }

    /// An assistant message: the turn's usage so far, its text and tool calls.
    fn follow_assistant(&self, message: &Value) {
        if let Some((id, usage)) = protocol::response_usage(message) {
            let usage = lock(&self.turn_usage).add(id, usage);
            self.emit(&AgentEvent::TurnUsage { usage });
        }
        for block in message
            .pointer("/message/content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => self.emit(&AgentEvent::Text {
                    text: block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                }),
                Some("tool_use") => {
                    self.busy.fetch_add(1, Ordering::Relaxed);
                    self.emit(&AgentEvent::ToolUse {
                        id: block
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: block
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        input: block.get("input").cloned().unwrap_or(Value::Null),
                    });
                }
                _ => {}
            }
        }
    }

    /// Follows conversation messages: session id, text, tool calls and results.
    fn follow(&self, message: &Value) {
        if let Some(until) = protocol::rejected_until(message) {
            *lock(&self.limit_resets) = Some(until);
        }
        match message.get("type").and_then(Value::as_str) {
            Some("system") if message.get("subtype").and_then(Value::as_str) == Some("init") => {
                if let Some(id) = message.get("session_id").and_then(Value::as_str) {
                    let id = SessionId::new(id);
                    *lock(&self.session_id) = Some(id.clone());
                    self.emit(&AgentEvent::SessionStarted { session_id: id });
                }
            }
            Some("assistant") => self.follow_assistant(message),
            Some("user") => {
                for block in message
                    .pointer("/message/content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                        let _ = self
                            .busy
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            });
                        let content = match block.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        };
                        let id = block
                            .get("tool_use_id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let is_error = block
                            .get("is_error")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        // The hook is answered before the tool runs, so a
                        // tool that ran is one the hook saw and allowed, if
                        // hooks work.
                        let seen = lock(&self.guarded).remove(&id);
                        let unguarded = match seen {
                            _ if is_error => None,
                            Some(true) => None,
                            Some(false) => Some("denied but run"),
                            None => Some("never seen"),
                        };
                        if let Some(how) = unguarded {
                            lock(&self.unguarded).push(format!("{id}, {how}"));
                        }
                        self.emit(&AgentEvent::ToolResult {
                            id,
                            is_error,
                            content,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Answers one request from the CLI.
    async fn answer(&self, request: &Value) -> Result<Value, String> {
        match request.get("subtype").and_then(Value::as_str) {
            Some("hook_callback") => {
                let input = request.get("input").cloned().unwrap_or(Value::Null);
                let callback = request
                    .get("callback_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let observed = match callback {
                    "post_tool" | "post_tool_failure" => self.observe(&input).await,
                    _ => None,
                };
                Ok(self.hook(callback, &input, observed))
            }
            Some("can_use_tool") => {
                let tool = request
                    .get("tool_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let input = request.get("input").cloned().unwrap_or(Value::Null);
                Ok(match self.check(tool, &input) {
                    Ok(()) => json!({"behavior": "allow", "updatedInput": input}),
                    Err(reason) => {
                        json!({"behavior": "deny", "message": reason.0, "interrupt": false})
                    }
                })
            }
            Some("mcp_message") => {
                let server = request
                    .get("server_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if server != mcp::SERVER {
                    return Err(format!("no in-process MCP server named {server}"));
                }
                let message = request.get("message").cloned().unwrap_or(Value::Null);
                let tools = mcp::Tools {
                    agent: &self.agent,
                    locks: self.locks.as_ref(),
                    git: self.git.as_ref(),
                };
                Ok(json!({"mcp_response": mcp::handle(&message, &tools).await}))
            }
            other => Err(format!("mala does not handle {other:?} requests")),
        }
    }

    fn check(&self, tool: &str, input: &Value) -> Result<(), Refusal> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let verdict = guard.check(&self.agent, tool, input);
        if let Err(reason) = &verdict {
            self.emit(&AgentEvent::ToolDenied {
                tool: tool.to_owned(),
                reason: reason.0.clone(),
            });
        }
        verdict
    }

    /// Opens the working-tree window of a tool call that needs watching.
    fn watch_open(&self, tool: &str, tool_use_id: &str, input: &Value) {
        let Some(watch) = &self.watch else {
            return;
        };
        if !needs_watching(tool) {
            return;
        }
        let text = |key: &str| input.get(key).and_then(Value::as_str);
        let call = match tool {
            "Bash" => crate::Call::Shell(text("command").unwrap_or_default().to_owned()),
            "Write" | "Edit" | "MultiEdit" | "NotebookEdit" => {
                match text("file_path").or_else(|| text("notebook_path")) {
                    Some(path) => crate::Call::Edit(path.into()),
                    None => crate::Call::Other,
                }
            }
            _ => crate::Call::Other,
        };
        let window = watch.open(&self.agent, &call);
        lock(&self.windows).insert(tool_use_id.to_owned(), window);
    }

    /// Closes a tool call's window (a scan of the tree, off the async
    /// threads). What the agent's commands left running is stopped first,
    /// so nothing it does later escapes the window.
    async fn observe(&self, input: &Value) -> Option<crate::Observed> {
        let watch = Arc::clone(self.watch.as_ref()?);
        let tool_use_id = input.get("tool_use_id").and_then(Value::as_str)?;
        let (window, last) = {
            let mut windows = lock(&self.windows);
            (windows.remove(tool_use_id)?, windows.is_empty())
        };
        // A call still running (a subagent's, say) may own what runs
        // detached now: the last call to end stops it.
        let agent = self.process.clone().filter(|_| last);
        tokio::task::spawn_blocking(move || {
            crate::tree_watch::close_after_strays(&watch, window, agent.as_ref())
        })
        .await
        .ok()
    }

    /// Records what a tool call was seen to change; returns what the agent
    /// must be told about files it changed without their locks.
    fn seen(&self, tool: &str, tool_use_id: &str, observed: &crate::Observed) -> Option<String> {
        let root = self.watch.as_ref().map(|w| w.root().to_path_buf());
        crate::tree_watch::report(observed, tool, tool_use_id, root.as_deref(), &|event| {
            self.emit(event);
        })
    }

    fn hook(&self, callback: &str, input: &Value, observed: Option<crate::Observed>) -> Value {
        let tool = input
            .get("tool_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let tool_input = input.get("tool_input").cloned().unwrap_or(Value::Null);
        let tool_use_id = input
            .get("tool_use_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match callback {
            "pre_tool" => {
                lock(&self.tool_started).insert(tool_use_id.clone(), Utc::now());
                let verdict = self.check(tool, &tool_input);
                lock(&self.guarded).insert(tool_use_id.clone(), verdict.is_ok());
                match verdict {
                    Ok(()) => {
                        self.watch_open(tool, &tool_use_id, &tool_input);
                        json!({})
                    }
                    Err(reason) => json!({"hookSpecificOutput": {
                        "hookEventName": "PreToolUse",
                        "permissionDecision": "deny",
                        "permissionDecisionReason": reason.0,
                    }}),
                }
            }
            "post_tool" | "post_tool_failure" => {
                let failed = callback == "post_tool_failure";
                self.evidence(tool, &tool_input, &tool_use_id, failed, input);
                if let Some(damage) = observed.as_ref().filter(|o| !o.git_losses.is_empty()) {
                    self.emit(&AgentEvent::RepositoryDamaged {
                        tool_use_id: tool_use_id.clone(),
                        what: damage.git_losses.clone(),
                    });
                    // The agent does not act on after this: its turn ends here.
                    return json!({
                        "continue": false,
                        "stopReason": format!(
                            "mala stopped this session: while this {tool} call ran, {}",
                            damage.git_losses.join("; ")
                        ),
                    });
                }
                match observed.and_then(|seen| self.seen(tool, &tool_use_id, &seen)) {
                    Some(context) => json!({"hookSpecificOutput": {
                        "hookEventName": if failed { "PostToolUseFailure" } else { "PostToolUse" },
                        "additionalContext": context,
                    }}),
                    None => json!({}),
                }
            }
            "stop" => match self.observer.stop_feedback() {
                Some(reason) => json!({"decision": "block", "reason": reason}),
                None => json!({}),
            },
            _ => json!({}),
        }
    }

    /// Records a finished tool call as evidence: shell commands with their
    /// status, and structured edits with their path.
    fn evidence(
        &self,
        tool: &str,
        tool_input: &Value,
        tool_use_id: &str,
        failed: bool,
        input: &Value,
    ) {
        let now = Utc::now();
        let started = lock(&self.tool_started).remove(tool_use_id);
        match tool {
            "Bash" => {
                let error = input
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| failed.then(|| "the command failed".to_owned()));
                let interrupted = input
                    .pointer("/tool_response/interrupted")
                    .and_then(Value::as_bool)
                    == Some(true);
                let exit_code = if failed || interrupted {
                    error.as_deref().and_then(exit_code_from)
                } else {
                    Some(0)
                };
                self.emit(&AgentEvent::CommandRan {
                    run: CommandRun {
                        tool_use_id: tool_use_id.to_owned(),
                        command: tool_input
                            .get("command")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        exit_code,
                        failed: failed || interrupted,
                        error,
                        started_at: started,
                        ended_at: now,
                    },
                });
            }
            "Write" | "Edit" | "MultiEdit" | "NotebookEdit" if !failed => {
                let path = tool_input
                    .get("file_path")
                    .or_else(|| tool_input.get("notebook_path"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.emit(&AgentEvent::FileEdited {
                    edit: FileEdit {
                        tool_use_id: tool_use_id.to_owned(),
                        tool: tool.to_owned(),
                        path,
                        at: now,
                    },
                });
            }
            _ => {}
        }
    }
}

/// Whether a tool call's effect on the tree must be watched. Not Claude
/// Code's tools that only read, nor mala's own tools (lock tools write no
/// file; the commit tool commits locked paths). Structured edits are, as
/// writers of their one file: with their windows open, an agent's own edit
/// is never taken for another agent's program's work.
fn needs_watching(tool: &str) -> bool {
    !mala_domain::is_read_only_tool(tool)
}

/// "Exit code 3" (Claude Code's wording for a failed command) → 3.
fn exit_code_from(error: &str) -> Option<i32> {
    let rest = error.split("Exit code ").nth(1)?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Interrupts a session's running turn from outside the turn loop.
#[derive(Clone)]
pub struct Interrupter {
    shared: Arc<Shared>,
    pid: Option<u32>,
}

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupter")
            .field("agent", &self.shared.agent)
            .field("pid", &self.pid)
            .finish()
    }
}

impl Interrupter {
    /// Asks the agent to stop; its turn then ends with an `Interrupted` outcome.
    pub async fn interrupt(&self) -> Result<(), AgentError> {
        self.shared
            .control(json!({"subtype": "interrupt"}), INTERRUPT_ANSWER)
            .await
            .map(drop)
    }

    /// SIGKILLs the session's whole process group and everything it
    /// started: the last resort, with no chance for the agent to finish
    /// anything.
    pub fn kill(&self) {
        if let Some(pid) = self.pid {
            crate::process_tree::kill_tree(pid);
        }
        if let Some(process) = &self.shared.process {
            process.stop_strays();
        }
    }
}

/// The `claude` command line and environment for one session.
fn claude_command(config: &ClaudeConfig, request: &SessionRequest) -> tokio::process::Command {
    let mut command = match &config.parent_death_wrapper {
        // setpriv sets PR_SET_PDEATHSIG, then execs claude in its place.
        Some(setpriv) => {
            let mut command = tokio::process::Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(&config.binary);
            command
        }
        None => tokio::process::Command::new(&config.binary),
    };
    command
        .args(config.arguments(request))
        .current_dir(&request.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal is mala's to
        // handle, and signals for the agent reach its Bash children too.
        .process_group(0)
        .kill_on_drop(true);
    if config.clear_env {
        command.env_clear();
    }
    command
        .env_remove("CLAUDECODE")
        .env("CLAUDE_CODE_ENTRYPOINT", "sdk-mala")
        .env("MALA_AGENT_ID", request.agent_id.as_str())
        // Every Bash call starts in the repository, as the guard assumes when
        // it resolves a command's relative paths; a `cd` lasts one call.
        .env("CLAUDE_BASH_MAINTAIN_PROJECT_WORKING_DIR", "1")
        // A few quick retries of the CLI's own (about 4 s in all); past
        // them mala resumes, then pauses the whole run, which a limit needs.
        .env("CLAUDE_CODE_MAX_RETRIES", "3")
        .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// The hooks every session registers; the ids come back in `hook_callback`.
fn hook_registrations() -> Value {
    json!({
        "PreToolUse": [{"matcher": null, "hookCallbackIds": ["pre_tool"]}],
        "PostToolUse": [{"matcher": null, "hookCallbackIds": ["post_tool"]}],
        "PostToolUseFailure": [{"matcher": null, "hookCallbackIds": ["post_tool_failure"]}],
        "Stop": [{"matcher": null, "hookCallbackIds": ["stop"]}],
    })
}

/// A live Claude Code session.
pub struct ClaudeSession {
    shared: Arc<Shared>,
    child: Option<Child>,
    pid: Option<u32>,
    turns: mpsc::UnboundedReceiver<TurnSignal>,
    writer: Option<JoinHandle<()>>,
    idle_timeout: Option<Duration>,
    turn_timeout: Duration,
    grace: Duration,
    state_dir: std::path::PathBuf,
    exited: bool,
    stop: Arc<super::StopSwitch>,
    stop_id: u64,
}

impl std::fmt::Debug for ClaudeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaudeSession")
            .field("agent", &self.shared.agent)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn could_not_start(message: String) -> AgentError {
    AgentError::new(AgentErrorKind::CouldNotStart, message)
}

impl ClaudeSession {
    pub(crate) async fn start(
        config: &ClaudeConfig,
        request: SessionRequest,
        observer: Arc<dyn AgentObserver>,
        services: super::Services,
    ) -> Result<Self, AgentError> {
        let super::Services {
            guard,
            locks,
            git,
            watch,
            stop,
        } = services;
        let mut command = claude_command(config, &request);
        let marked = crate::process_tree::Marked::command(&mut command);
        let mut child = command.spawn().map_err(|e| {
            could_not_start(format!(
                "could not start {}: {e}. {}",
                config.binary.display(),
                super::INSTALL_HINT
            ))
        })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(could_not_start(
                "claude started without its pipes".to_owned(),
            ));
        };
        let record = Arc::new(SessionRecord::open(&config.state_dir, &request.agent_id));
        record.write(
            "cmd",
            &json!({"argv": config.arguments(&request), "cwd": request.cwd}),
        );
        let (outbox, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            agent: request.agent_id.clone(),
            observer,
            guard,
            locks,
            git,
            watch: watch.for_session(&request.cwd),
            process: marked.process(pid),
            windows: Mutex::new(HashMap::new()),
            outbox,
            record,
            pending: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
            session_id: Mutex::new(request.resume.clone()),
            busy: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            epoch: Instant::now(),
            tool_started: Mutex::new(HashMap::new()),
            stderr_tail: Mutex::new(String::new()),
            limit_resets: Mutex::new(None),
            turn_usage: Mutex::default(),
            guarded: Mutex::default(),
            unguarded: Mutex::default(),
            next_request: AtomicU64::new(0),
            summary: Mutex::new(Summary {
                agent: request.agent_id.to_string(),
                ..Summary::default()
            }),
        });
        let (turn_tx, turns) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(stdin, inbox));
        tokio::spawn(read_loop(Arc::clone(&shared), stdout, turn_tx));
        tokio::spawn(drain_stderr(Arc::clone(&shared), stderr));
        let mut session = Self {
            shared,
            child: Some(child),
            pid,
            turns,
            writer: Some(writer),
            idle_timeout: config.idle_timeout,
            turn_timeout: config.turn_timeout,
            grace: config.shutdown_grace,
            state_dir: config.state_dir.clone(),
            exited: false,
            stop,
            stop_id: 0,
        };
        session.stop_id = session.stop.register(session.interrupter());
        match session
            .control(
                json!({"subtype": "initialize", "hooks": hook_registrations()}),
                INITIALIZE_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(session),
            Err(error) => {
                let status = session.shutdown().await;
                let stderr = lock(&session.shared.stderr_tail).clone();
                Err(classify_exit(&error.message, status, &stderr, true))
            }
        }
    }

    async fn control(&self, request: Value, timeout: Duration) -> Result<Value, AgentError> {
        self.shared.control(request, timeout).await
    }

    /// What the agent's calls left running when no call ended to stop it
    /// (an interrupted call reports no end): it goes with the turn, before
    /// the gate looks at the tree.
    async fn stop_strays_at_turn_end(&self) {
        let Some(process) = &self.shared.process else {
            return;
        };
        for stray in process.stop_strays_blocking().await {
            tracing::info!(agent = %self.shared.agent, pid = stray.pid, command = %stray.command,
                "stopped what the agent left running when its turn ended");
        }
    }

    /// A handle that can interrupt the running turn from another task.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            shared: Arc::clone(&self.shared),
            pid: self.pid,
        }
    }

    /// Waits for the process to end, escalating: stdin closed, then SIGTERM
    /// to its group, then SIGKILL. Returns the exit status, if any.
    async fn shutdown(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(writer) = self.writer.take() {
            // Dropping the sender side ends the writer, which closes stdin.
            writer.abort();
        }
        let mut child = self.child.take()?;
        let mut status = tokio::time::timeout(self.grace, child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        if status.is_none() {
            self.signal(rustix::process::Signal::TERM);
            status = tokio::time::timeout(self.grace, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        // Whatever is left (the leader, or a background command it started)
        // goes now. A reaped leader's pid may belong to someone else by now:
        // then only its old group is signalled, never that pid's children.
        if status.is_none() {
            self.signal(rustix::process::Signal::KILL);
            status = child.wait().await.ok();
        } else {
            self.signal_group(rustix::process::Signal::KILL);
        }
        // What its tool calls left running outlives it unless stopped.
        if let Some(process) = &self.shared.process {
            process.stop_strays_blocking().await;
        }
        self.exited = true;
        status
    }

    /// Signals the live (unreaped) agent: SIGKILL takes its descendants
    /// too, since a command a tool started outside the group must die with it.
    fn signal(&self, signal: rustix::process::Signal) {
        match self.pid {
            Some(pid) if signal == rustix::process::Signal::KILL => {
                crate::process_tree::kill_tree(pid);
            }
            _ => self.signal_group(signal),
        }
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        let Some(pid) = self
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            return;
        };
        // The group may already be gone; nothing to do then.
        let _ = rustix::process::kill_process_group(pid, signal);
    }

    fn write_summary(&self) {
        let path = record_path(&self.state_dir, &self.shared.agent).with_extension("summary.json");
        let summary = lock(&self.shared.summary);
        if let Ok(text) = serde_json::to_string_pretty(&*summary) {
            let _ = std::fs::write(path, text);
        }
    }

    /// A turn in which tools ran that mala's PreToolUse hook never saw is
    /// refused whatever it achieved: the guard was not in the loop.
    fn guarded_throughout(&self, outcome: TurnOutcome) -> Result<TurnOutcome, AgentError> {
        let unguarded = lock(&self.shared.unguarded).clone();
        if unguarded.is_empty() {
            return Ok(outcome);
        }
        Err(AgentError::new(
            AgentErrorKind::Unguarded,
            format!(
                "{} tool call(s) ran without mala's PreToolUse hook seeing them ({})",
                unguarded.len(),
                unguarded.join(", ")
            ),
        ))
    }

    /// The turn in the light of a limit the CLI said refuses calls until a
    /// reset: a 429 gets its reset time, and a failed turn is that limit,
    /// whatever the result's own words.
    fn limited(&self, outcome: Result<TurnOutcome, AgentError>) -> Result<TurnOutcome, AgentError> {
        let Some(until) = *lock(&self.shared.limit_resets) else {
            return outcome;
        };
        match outcome {
            Err(mut error) => {
                if let AgentErrorKind::RateLimited { resets_at } = &mut error.kind {
                    resets_at.get_or_insert(until);
                }
                Err(error)
            }
            Ok(TurnOutcome {
                status: mala_core::TurnStatus::Failed { reason },
                ..
            }) => Err(AgentError::new(
                AgentErrorKind::RateLimited {
                    resets_at: Some(until),
                },
                format!("usage limit until {until}: {reason}"),
            )),
            Ok(outcome) => Ok(outcome),
        }
    }

    fn stderr_tail(&self) -> String {
        lock(&self.shared.stderr_tail).clone()
    }
}

/// Why a process that ended (or would not start) failed.
fn classify_exit(
    context: &str,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    starting: bool,
) -> AgentError {
    let tail: String = stderr
        .trim()
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let lower = stderr.to_lowercase();
    let kind = if lower.contains("api key")
        || lower.contains("authentication")
        || lower.contains("/login")
    {
        AgentErrorKind::Authentication
    } else if lower.contains("no conversation found with session id") {
        // The session to resume was never saved (the run that began it died
        // first). Not the environment's fault: a new session can do the work.
        AgentErrorKind::Crashed
    } else if starting {
        AgentErrorKind::CouldNotStart
    } else {
        AgentErrorKind::Crashed
    };
    let status = status.map_or_else(|| "no exit status".to_owned(), |s| s.to_string());
    AgentError::new(
        kind,
        format!(
            "{context} ({status}); stderr: {}",
            if tail.is_empty() { "(empty)" } else { &tail }
        ),
    )
}

async fn write_loop(mut stdin: ChildStdin, mut inbox: mpsc::UnboundedReceiver<Value>) {
    while let Some(line) = inbox.recv().await {
        let mut text = line.to_string();
        text.push('\n');
        if stdin.write_all(text.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

async fn drain_stderr(shared: Arc<Shared>, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        shared.record.write("stderr", &Value::String(line.clone()));
        let mut tail = lock(&shared.stderr_tail);
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > 8192 {
            let cut = tail.len() - 8192;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(cut);
            tail.drain(..cut);
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    stdout: tokio::process::ChildStdout,
    turns: mpsc::UnboundedSender<TurnSignal>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded_line(&mut reader, &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                let _ = turns.send(TurnSignal::Broken(error));
                break;
            }
        }
        shared.touch();
        shared.record.write_raw("in", &line);
        let parsed = match protocol::parse_line(&line) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(error) => {
                let _ = turns.send(TurnSignal::Broken(error));
                break;
            }
        };
        match parsed {
            Inbound::ControlRequest {
                request_id,
                request,
            } => {
                shared.busy.fetch_add(1, Ordering::Relaxed);
                let handler_shared = Arc::clone(&shared);
                let id = request_id.clone();
                let handle = tokio::spawn(async move {
                    let answer = handler_shared.answer(&request).await;
                    lock(&handler_shared.handlers).remove(&id);
                    let _ = handler_shared.busy.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    );
                    handler_shared.touch();
                    handler_shared.send(match answer {
                        Ok(response) => protocol::control_success(&id, &response),
                        Err(error) => protocol::control_error(&id, &error),
                    });
                });
                lock(&shared.handlers).insert(request_id, handle);
            }
            Inbound::ControlCancel { request_id } => {
                if let Some(handle) = lock(&shared.handlers).remove(&request_id) {
                    handle.abort();
                    let _ = shared
                        .busy
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
            }
            Inbound::ControlResponse {
                request_id,
                outcome,
            } => {
                if let Some(waiter) = lock(&shared.pending).remove(&request_id) {
                    let _ = waiter.send(outcome);
                }
            }
            Inbound::Result(result) => {
                // Whatever was in flight is over with the turn.
                shared.busy.store(0, Ordering::Relaxed);
                let _ = turns.send(TurnSignal::Result(result));
            }
            Inbound::Message(message) => {
                shared.follow(&message);
            }
        }
    }
    // Waiters for answers that will never come.
    lock(&shared.pending).clear();
    let _ = turns.send(TurnSignal::Closed);
}

/// Reads up to and including `\n`, refusing lines longer than [`MAX_LINE`].
async fn read_bounded_line(
    reader: &mut BufReader<tokio::process::ChildStdout>,
    line: &mut Vec<u8>,
) -> Result<usize, String> {
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|e| format!("reading claude's output: {e}"))?;
        if available.is_empty() {
            return Ok(line.len());
        }
        if let Some(end) = available.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&available[..=end]);
            reader.consume(end + 1);
            return Ok(line.len());
        }
        let n = available.len();
        line.extend_from_slice(available);
        reader.consume(n);
        if line.len() > MAX_LINE {
            return Err(format!(
                "claude printed a line longer than {} MB",
                MAX_LINE / 1024 / 1024
            ));
        }
    }
}

#[async_trait]
impl AgentSession for ClaudeSession {
    fn session_id(&self) -> Option<SessionId> {
        lock(&self.shared.session_id).clone()
    }

    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError> {
        // A limit counts for the turn it refused.
        *lock(&self.shared.limit_resets) = None;
        *lock(&self.shared.turn_usage) = protocol::TurnTally::default();
        lock(&self.shared.unguarded).clear();
        if self.stop.stopping() {
            return Err(AgentError::new(
                AgentErrorKind::Cancelled,
                "mala is stopping",
            ));
        }
        if self.exited || self.child.is_none() {
            return Err(AgentError::new(
                AgentErrorKind::Crashed,
                "the claude process has already ended",
            ));
        }
        self.shared.touch();
        self.shared.send(protocol::user_message(prompt));
        let deadline = tokio::time::Instant::now() + self.turn_timeout;
        let result = loop {
            // Wake at the idle limit (measured from the last line), or the hard limit.
            let idle_wake = self.idle_timeout.map(|idle| {
                tokio::time::Instant::now() + idle.saturating_sub(self.shared.idle_for())
            });
            let wake = idle_wake.map_or(deadline, |w| w.min(deadline));
            tokio::select! {
                signal = self.turns.recv() => match signal {
                    Some(TurnSignal::Result(result)) => break Ok(result),
                    Some(TurnSignal::Broken(error)) => break Err(AgentError::new(AgentErrorKind::Protocol, error)),
                    Some(TurnSignal::Closed) | None => {
                        let status = self.shutdown().await;
                        break Err(classify_exit("claude exited in the middle of a turn", status, &self.stderr_tail(), false));
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        let _ = self.interrupt().await;
                        break Err(AgentError::new(AgentErrorKind::TimedOut, format!("the turn ran past its limit of {} s", self.turn_timeout.as_secs())));
                    }
                    if let Some(idle) = self.idle_timeout
                        && self.shared.busy.load(Ordering::Relaxed) == 0
                        && self.shared.idle_for() >= idle
                    {
                        let _ = self.interrupt().await;
                        break Err(AgentError::new(AgentErrorKind::TimedOut, format!("no output for {} s (idle timeout)", idle.as_secs())));
                    }
                }
            }
        };
        self.shared.record.flush();
        self.stop_strays_at_turn_end().await;
        let outcome = self
            .limited(result.and_then(|result| protocol::turn_outcome(&result)))
            .and_then(|outcome| self.guarded_throughout(outcome));
        if let Ok(TurnOutcome {
            session_id: Some(id),
            ..
        }) = &outcome
        {
            *lock(&self.shared.session_id) = Some(id.clone());
        }
        // A stop interrupts the turn; whatever it ended as, the cause is the stop.
        if self.stop.stopping() {
            return Err(AgentError::new(
                AgentErrorKind::Cancelled,
                "mala is stopping",
            ));
        }
        let outcome = outcome?;
        {
            let mut summary = lock(&self.shared.summary);
            summary.turns += 1;
            summary.input_tokens += outcome.usage.input_tokens;
            summary.output_tokens += outcome.usage.output_tokens;
            summary.total_cost_usd = outcome.total_cost_usd;
            summary.session_id = outcome.session_id.as_ref().map(ToString::to_string);
        }
        Ok(outcome)
    }

    async fn interrupt(&mut self) -> Result<(), AgentError> {
        if self.exited {
            return Ok(());
        }
        self.control(json!({"subtype": "interrupt"}), INTERRUPT_ANSWER)
            .await
            .map(drop)
    }

    async fn close(&mut self) -> Result<(), AgentError> {
        self.stop.forget(self.stop_id);
        let _ = self.shutdown().await;
        self.shared.record.flush();
        self.write_summary();
        Ok(())
    }
}

impl Drop for ClaudeSession {
    fn drop(&mut self) {
        self.stop.forget(self.stop_id);
        if !self.exited && self.child.is_some() {
            // A session dropped without close: take its whole group down.
            self.signal(rustix::process::Signal::KILL);
        }
        // Requests still being answered (a lock wait above all) answer no
        // one now; left running, a wait could take a lock for a dead agent.
        for (_, handler) in lock(&self.shared.handlers).drain() {
            handler.abort();
        }
        // Tool calls that never reported their end (an interrupt, a kill)
        // close no window; left open, they would gather every later change.
        if let Some(watch) = &self.shared.watch {
            for (_, window) in lock(&self.shared.windows).drain() {
                watch.forget(window);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_claudes_failure_text() {
        assert_eq!(exit_code_from("Exit code 3\nerror: boom"), Some(3));
        assert_eq!(exit_code_from("Command failed"), None);
    }

    #[test]
    fn a_session_claude_never_saved_is_not_the_environments_fault() {
        let gone = classify_exit(
            "claude exited before answering",
            None,
            "No conversation found with session ID: 7b4ca786",
            true,
        );
        // Not `CouldNotStart`: the runner starts a new session for the issue
        // instead of giving it back as if claude were broken.
        assert_eq!(gone.kind, AgentErrorKind::Crashed);
        assert!(gone.message.contains("No conversation found"));
        let broken = classify_exit("claude exited before answering", None, "segfault", true);
        assert_eq!(broken.kind, AgentErrorKind::CouldNotStart);
    }
}
