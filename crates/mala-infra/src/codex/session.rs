//! One Codex conversation (an app-server thread) as an [`AgentSession`].
//!
//! The thread asks before every command and file change (`approvalPolicy:
//! untrusted`), and mala's guard answers each request: the same pure rules
//! the Claude backend's hooks apply. A refusal is declined, and its reason
//! reaches the model as a message steered into the turn (a decline itself
//! carries none). What ran is recorded from the protocol's items: commands
//! with their exit codes, files with the changes' paths.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mala_core::{
    AgentError, AgentErrorKind, AgentEvent, AgentId, AgentObserver, AgentSession, CommandRun,
    FileEdit, LockTable, SessionId, SessionRequest, TokenUsage, ToolGuard, TurnOutcome, TurnStatus,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::rpc::Inbound;
use super::server::{AppServer, AppServerCommand};
use crate::GitRepo;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long mala waits for codex to answer a request of its own mid-turn.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session's agent is given besides the model: mala's guard on
/// every command and file change, and mala's tools.
#[derive(Default, Clone)]
pub(crate) struct Surroundings {
    pub(crate) guard: Option<Arc<dyn ToolGuard>>,
    pub(crate) locks: Option<Arc<dyn LockTable>>,
    pub(crate) git: Option<Arc<GitRepo>>,
    /// Becomes true when mala stops every session (a Ctrl-C's drain or abort).
    pub(crate) stop: Option<watch::Receiver<bool>>,
    /// The app-servers alive, by process id, for a kill of them all.
    pub(crate) live: Option<Arc<Mutex<HashSet<u32>>>>,
    /// The working tree, watched around every command and file change.
    pub(crate) watch: Option<Arc<crate::TreeWatch>>,
    pub(crate) timeouts: Timeouts,
}

/// What mala sets on every thread and turn; `None` leaves it to the user's
/// codex configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadSettings {
    pub(crate) model: Option<String>,
    pub(crate) effort: Option<String>,
    pub(crate) service_tier: Option<String>,
    /// What each model's tokens cost; a session held to dollars needs its model's.
    pub(crate) prices: std::collections::BTreeMap<String, mala_domain::TokenPrice>,
}

/// Items that act: they hold the idle timer while they run.
const ACTING_ITEMS: [&str; 3] = ["commandExecution", "fileChange", "dynamicToolCall"];

/// Items mala lets pass: the ones its guard decides (commands, file
/// changes), its own tools, and the ones that change nothing. Any other
/// (another MCP server's tool, a sub-agent, an image written to disk, a
/// kind this version does not know) stops the turn.
const KNOWN_ITEMS: [&str; 15] = [
    "commandExecution",
    "fileChange",
    "dynamicToolCall",
    "userMessage",
    "hookPrompt",
    "agentMessage",
    "functionCallOutput",
    "plan",
    "reasoning",
    "webSearch",
    "imageView",
    "sleep",
    "contextCompaction",
    "enteredReviewMode",
    "exitedReviewMode",
];

/// The preflight's instructions: the probe is asked to do one thing.
const PROBE_INSTRUCTIONS: &str =
    "You check a coding agent's setup. Do exactly what the user asks, then stop.";

/// How long a turn may run, and stay silent with nothing running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) idle: Option<Duration>,
    pub(crate) turn: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: None,
            turn: Duration::from_secs(30 * 60),
        }
    }
}

/// mala's tools as the thread's dynamic tools: the model calls them as
/// plain functions, and each call comes to mala as `item/tool/call`.
fn dynamic_tools(git: bool) -> Value {
    let tools = crate::agent_tools::tool_list(true, git);
    let tools = tools.as_array().into_iter().flatten().map(|tool| {
        json!({
            "type": "function",
            "name": tool["name"],
            "description": tool["description"],
            "inputSchema": tool["inputSchema"],
        })
    });
    Value::Array(tools.collect())
}

/// A running Codex thread.
pub(crate) struct CodexSession {
    server: Option<AppServer>,
    thread: String,
    agent: AgentId,
    observer: Arc<dyn AgentObserver>,
    guard: Option<Arc<dyn ToolGuard>>,
    /// What mala's own tools act on (the lock table, the repository).
    locks: Option<Arc<dyn LockTable>>,
    git: Option<Arc<GitRepo>>,
    /// The thread's token totals when the running turn began.
    thread_usage: TokenUsage,
    /// A resumed thread's totals before its first turn here are not known
    /// until codex reports them.
    resumed_usage_unknown: bool,
    turns: u32,
    /// The last turn started, which `interrupt` names.
    last_turn: Option<String>,
    stop: watch::Receiver<bool>,
    /// A sender of the session's own: once nobody else can stop it, the
    /// stop watch is this one's, which never fires.
    unstoppable: watch::Sender<bool>,
    live: Option<(Arc<Mutex<HashSet<u32>>>, u32)>,
    tree: Option<Arc<crate::TreeWatch>>,
    timeouts: Timeouts,
    /// The working-tree windows of approved items still running, by item id.
    windows: HashMap<String, crate::WindowId>,
    /// Every turn's reasoning effort, when mala sets it.
    effort: Option<String>,
    /// The session's working directory (the thread's cwd).
    cwd: std::path::PathBuf,
    /// What the thread's model's tokens cost, when the settings say.
    price: Option<mala_domain::TokenPrice>,
    /// Dollars the session may spend; its turn is cut when they are spent.
    max_cost_usd: Option<f64>,
    /// Dollars the session's finished turns cost.
    cost_so_far: f64,
}

impl Drop for CodexSession {
    fn drop(&mut self) {
        // Its process goes with it (kill on drop): it is not alive to kill.
        if let Some((live, pid)) = &self.live {
            live.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(pid);
        }
    }
}

impl std::fmt::Debug for CodexSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodexSession")
            .field("thread", &self.thread)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// What one turn saw, as it went.
#[derive(Default)]
struct TurnLog {
    turn: Option<String>,
    /// Paths of file changes by item id: the approval request names none.
    changes: HashMap<String, Vec<PatchPath>>,
    final_text: String,
    usage: TokenUsage,
    /// The last error the server gave up on.
    error: Option<Value>,
    /// Why mala stopped the turn, when it did.
    violation: Option<String>,
    /// What the model was told of each item mala declined, by item id.
    told: HashMap<String, String>,
    /// Items running now (commands, file changes, tool calls), by id.
    running: HashSet<String>,
    /// The commands started this turn, as the agent wrote them, by item id.
    commands: HashMap<String, String>,
    /// When the turn runs out of time.
    deadline: Option<tokio::time::Instant>,
    /// Items mala has judged (asked for, or seen starting unasked).
    judged: HashSet<String>,
    /// The session's dollars ran out during the turn; `cut` once it is interrupted.
    over_budget: bool,
    cut: bool,
    denials: Vec<String>,
}

impl CodexSession {
    /// Starts the app-server and its thread in `request.cwd` (or picks up
    /// `request.resume`'s thread in a new process).
    pub(crate) async fn start(
        command: &AppServerCommand,
        request: &SessionRequest,
        settings: &ThreadSettings,
        observer: Arc<dyn AgentObserver>,
        around: Surroundings,
    ) -> Result<Self, AgentError> {
        let server = AppServer::start_for(command, &request.cwd, Some(&request.agent_id))?;
        Self::open(server, request, settings, observer, around).await
    }

    /// Starts the thread on a running `server`: the handshake, the checks of
    /// the user's configuration, then `thread/start` or `thread/resume`.
    pub(crate) async fn open(
        server: AppServer,
        request: &SessionRequest,
        settings: &ThreadSettings,
        observer: Arc<dyn AgentObserver>,
        around: Surroundings,
    ) -> Result<Self, AgentError> {
        let live = around.live.clone().zip(server.pid());
        if let Some((registry, pid)) = &live {
            registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(*pid);
        }
        let info = server.initialize(START_TIMEOUT).await?;
        AppServer::refuse_allow_rules(std::path::Path::new(&info.codex_home), &request.cwd)?;
        server.refuse_mcp_servers(&request.cwd).await?;
        let mut params = json!({
            "cwd": request.cwd,
            // Every command and file change comes to mala first, and to
            // mala alone (not to codex's own reviewer).
            "approvalPolicy": "untrusted",
            "approvalsReviewer": "user",
            "sandbox": "danger-full-access",
        });
        if around.locks.is_some() {
            params["dynamicTools"] = dynamic_tools(around.git.is_some());
        }
        if let Some(model) = &settings.model {
            params["model"] = json!(model);
        }
        if let Some(tier) = &settings.service_tier {
            params["serviceTier"] = json!(tier);
        }
        let instructions = if request.probe {
            Some(PROBE_INSTRUCTIONS)
        } else {
            request.system_prompt_append.as_deref()
        };
        if let Some(instructions) = instructions {
            params["developerInstructions"] = json!(instructions);
        }
        let method = match &request.resume {
            Some(thread) => {
                params["threadId"] = json!(thread.as_str());
                "thread/resume"
            }
            None => "thread/start",
        };
        let started =
            server.rpc.request(method, params).await.map_err(|error| {
                AgentError::new(AgentErrorKind::CouldNotStart, error.to_string())
            })?;
        let Some(thread) = started.pointer("/thread/id").and_then(Value::as_str) else {
            return Err(AgentError::new(
                AgentErrorKind::Protocol,
                format!("`{method}` answered without a thread id: {started}"),
            ));
        };
        let thread = thread.to_owned();
        refuse_unguarded(&started)?;
        let price = priced(&started, settings, request.max_cost_usd)?;
        let unstoppable = watch::Sender::new(false);
        observer.on_event(&AgentEvent::SessionStarted {
            session_id: SessionId::new(thread.clone()),
        });
        Ok(Self {
            server: Some(server),
            thread,
            agent: request.agent_id.clone(),
            observer,
            guard: around.guard,
            locks: around.locks,
            git: around.git,
            thread_usage: TokenUsage::default(),
            resumed_usage_unknown: request.resume.is_some(),
            price,
            max_cost_usd: request.max_cost_usd,
            cost_so_far: 0.0,
            turns: 0,
            last_turn: None,
            stop: around.stop.unwrap_or_else(|| unstoppable.subscribe()),
            unstoppable,
            live,
            tree: around.watch,
            timeouts: around.timeouts,
            windows: HashMap::new(),
            effort: settings.effort.clone(),
            cwd: request.cwd.clone(),
        })
    }

    fn server(&mut self) -> Result<&mut AppServer, AgentError> {
        self.server.as_mut().ok_or_else(|| {
            AgentError::new(
                AgentErrorKind::Crashed,
                "the codex app-server has been closed",
            )
        })
    }

    /// The guard's answer to a request to run `command`: `None` allows it.
    fn refusal(&self, tool: &str, input: &Value) -> Option<String> {
        let guard = self.guard.as_ref()?;
        guard.check(&self.agent, tool, input).err().map(|r| r.0)
    }

    /// A command as the agent wrote it, from codex's report of it (`item`
    /// or an approval request): without the shell codex wraps every command
    /// in, and run in its working directory when that is not the session's.
    fn agent_command(&self, reported: &Value) -> String {
        let command = reported["command"].as_str().unwrap_or_default();
        let script = mala_domain::launched_script(command).unwrap_or_else(|| command.to_owned());
        match reported["cwd"].as_str().map(std::path::Path::new) {
            Some(cwd) if !same_dir(cwd, &self.cwd) => {
                let quoted = format!("'{}'", cwd.display().to_string().replace('\'', r"'\''"));
                format!("cd {quoted} && {script}")
            }
            _ => script,
        }
    }

    /// Answers one approval request by the guard; a refusal is steered into
    /// the turn first, so the model reads why.
    async fn answer(&mut self, id: Value, method: &str, params: &Value, log: &mut TurnLog) {
        let (tool, input) = if method == "item/commandExecution/requestApproval" {
            ("Bash", json!({"command": self.agent_command(params)}))
        } else {
            let item = params["itemId"].as_str().unwrap_or_default();
            let patch = patch_naming(log.changes.get(item).map_or(&[][..], Vec::as_slice));
            ("apply_patch", json!({"input": patch}))
        };
        let item = params["itemId"].as_str().unwrap_or_default().to_owned();
        log.judged.insert(item.clone());
        self.observer.on_event(&AgentEvent::ToolUse {
            id: item.clone(),
            name: tool.to_owned(),
            input: input.clone(),
        });
        // Input for a program already running is not a command the guard can read.
        let typed = !matches!(params["kind"].as_str(), None | Some("command"));
        let unnamed = tool == "Bash" && params["command"].as_str().is_none_or(str::is_empty);
        let refusal = if typed {
            Some(
                "mala cannot check what is typed into a running program; run a new command instead"
                    .to_owned(),
            )
        } else if unnamed {
            Some("codex asked to run a command it did not name".to_owned())
        } else {
            self.refusal(tool, &input)
        };
        let Some(reason) = refusal else {
            if let Ok(server) = self.server() {
                server.rpc.respond(id, json!({"decision": "accept"}));
            }
            self.watch_open(params, &input, log);
            return;
        };
        let said = format!("mala refused that call: {reason}");
        // The reason is worth a try; the decline stands whatever the answer.
        let steered = self.steer(&said).await;
        if let Ok(server) = self.server() {
            server.rpc.respond(id, json!({"decision": "decline"}));
        }
        // What the model reads of it: the reason when the steer took, else
        // only codex's own words for a decline.
        let told = if steered {
            said
        } else {
            "rejected by user".to_owned()
        };
        log.told.insert(item, told);
        log.denials.push(tool.to_owned());
        self.observer.on_event(&AgentEvent::ToolDenied {
            tool: tool.to_owned(),
            reason,
        });
    }

    /// Takes one notification into the turn's log; `Some` once the turn is over.
    fn note(&mut self, method: &str, params: &Value, log: &mut TurnLog) -> Option<TurnStatus> {
        match method {
            "item/started" => {
                // What runs holds the idle timer; a message or reasoning does not.
                if ACTING_ITEMS.contains(&params["item"]["type"].as_str().unwrap_or_default()) {
                    log.running
                        .insert(params["item"]["id"].as_str().unwrap_or_default().to_owned());
                }
                note_started(&params["item"], log);
                if params["item"]["type"] == "commandExecution" {
                    let id = params["item"]["id"].as_str().unwrap_or_default().to_owned();
                    log.commands.insert(id, self.agent_command(&params["item"]));
                }
            }
            "item/completed" => {
                log.running
                    .remove(params["item"]["id"].as_str().unwrap_or_default());
                self.note_completed(params, log);
            }
            "thread/tokenUsage/updated" => {
                let total = usage_of(&params["tokenUsage"]["total"]);
                if self.resumed_usage_unknown {
                    // A resumed thread's totals start from its history: what
                    // came before this response is not this turn's.
                    let last = usage_of(&params["tokenUsage"]["last"]);
                    self.thread_usage = total.minus(last);
                    self.resumed_usage_unknown = false;
                }
                log.usage = total.minus(self.thread_usage);
                self.observer
                    .on_event(&AgentEvent::TurnUsage { usage: log.usage });
                if let (Some(max), Some(price)) = (self.max_cost_usd, self.price) {
                    log.over_budget |= self.cost_so_far + price.cost(&log.usage) >= max;
                }
            }
            "error" if params["willRetry"] != json!(true) => {
                log.error = Some(params["error"].clone());
            }
            "turn/started" => {
                log.turn = params["turn"]["id"].as_str().map(str::to_owned);
            }
            "turn/completed" => return Some(turn_status(&params["turn"])),
            _ => {}
        }
        None
    }

    /// A command's or file change's end as the model saw it: a declined
    /// one carries what it was told.
    fn tool_result(&self, item: &Value, id: &str, log: &TurnLog) {
        if !matches!(
            item["type"].as_str(),
            Some("commandExecution" | "fileChange")
        ) {
            return;
        }
        let (is_error, content) = if let Some(told) = log.told.get(id) {
            (true, told.clone())
        } else {
            let failed = item["status"] != "completed"
                || item["exitCode"].as_i64().is_some_and(|code| code != 0);
            let output = item["aggregatedOutput"].as_str().unwrap_or_default();
            (failed, output.to_owned())
        };
        self.observer.on_event(&AgentEvent::ToolResult {
            id: id.to_owned(),
            is_error,
            content,
        });
    }

    fn note_completed(&self, params: &Value, log: &mut TurnLog) {
        let item = &params["item"];
        let at = millis(&params["completedAtMs"]).unwrap_or_else(Utc::now);
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        self.tool_result(item, &id, log);
        match item["type"].as_str() {
            Some("commandExecution") if item["status"] != "declined" => {
                let exit_code = item["exitCode"]
                    .as_i64()
                    .and_then(|c| i32::try_from(c).ok());
                let failed = item["status"] == "failed" || exit_code.is_some_and(|c| c != 0);
                let duration = item["durationMs"]
                    .as_i64()
                    .map(chrono::Duration::milliseconds);
                self.observer.on_event(&AgentEvent::CommandRan {
                    run: CommandRun {
                        tool_use_id: id,
                        command: self.agent_command(item),
                        exit_code,
                        failed,
                        error: failed.then(|| format!("Exit code {}", exit_code.unwrap_or(-1))),
                        started_at: duration.map(|d| at - d),
                        ended_at: at,
                    },
                });
            }
            Some("fileChange") if item["status"] == "completed" => {
                let paths = patch_paths(item)
                    .into_iter()
                    .flat_map(|change| std::iter::once(change.path).chain(change.moved_to));
                for path in paths {
                    self.observer.on_event(&AgentEvent::FileEdited {
                        edit: FileEdit {
                            tool_use_id: id.clone(),
                            tool: "apply_patch".to_owned(),
                            path,
                            at,
                        },
                    });
                }
            }
            Some("agentMessage") => {
                let text = item["text"].as_str().unwrap_or_default().to_owned();
                self.observer
                    .on_event(&AgentEvent::Text { text: text.clone() });
                log.final_text = text;
            }
            _ => {}
        }
    }
}

impl CodexSession {
    /// Opens the working-tree window of an approved item.
    fn watch_open(&mut self, params: &Value, input: &Value, log: &TurnLog) {
        let Some(tree) = &self.tree else {
            return;
        };
        let item = params["itemId"].as_str().unwrap_or_default().to_owned();
        let call = match input["command"].as_str() {
            Some(command) => crate::Call::Shell(command.to_owned()),
            None => match log.changes.get(&item).map(Vec::as_slice) {
                Some(
                    [
                        PatchPath {
                            path,
                            moved_to: None,
                            ..
                        },
                    ],
                ) => crate::Call::Edit(path.into()),
                _ => crate::Call::Other,
            },
        };
        let window = tree.open(&self.agent, &call);
        self.windows.insert(item, window);
    }

    /// Closes a finished item's window and reports what it changed: the
    /// agent is told in the turn of files it changed without their locks,
    /// and damage to `.git` stops the turn.
    async fn observe(&mut self, item: &Value, log: &mut TurnLog) {
        let id = item["id"].as_str().unwrap_or_default();
        let (Some(tree), Some(window)) = (self.tree.clone(), self.windows.remove(id)) else {
            return;
        };
        // A command still running may own what runs detached now: the last
        // item to end stops it.
        let last = self.windows.is_empty();
        let agent = self
            .server
            .as_ref()
            .and_then(AppServer::process)
            .cloned()
            .filter(|_| last);
        let observed = tokio::task::spawn_blocking({
            let tree = Arc::clone(&tree);
            move || crate::tree_watch::close_after_strays(&tree, window, agent.as_ref())
        })
        .await
        .unwrap_or_default();
        let tool = if item["type"] == "fileChange" {
            "apply_patch"
        } else {
            "exec_command"
        };
        let events = Arc::clone(&self.observer);
        let told = crate::tree_watch::report(&observed, tool, id, Some(tree.root()), &|event| {
            events.on_event(event);
        });
        if !observed.git_losses.is_empty() {
            self.observer.on_event(&AgentEvent::RepositoryDamaged {
                tool_use_id: id.to_owned(),
                what: observed.git_losses.clone(),
            });
            log.violation = Some(format!(
                "this call damaged the repository ({}); mala stopped the agent",
                observed.git_losses.join("; ")
            ));
            let _ = self.interrupt_turn().await;
            return;
        }
        if let Some(told) = told {
            self.steer(&told).await;
        }
    }

    /// Asks codex to end the running turn, which then completes
    /// `interrupted`.
    async fn interrupt_turn(&mut self) -> Result<(), AgentError> {
        let params = json!({"threadId": self.thread, "turnId": self.last_turn});
        let asked = self.server()?.rpc.request("turn/interrupt", params);
        match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
            Ok(answer) => answer
                .map(drop)
                .map_err(|e| AgentError::new(AgentErrorKind::Protocol, e.to_string())),
            Err(_) => Err(AgentError::new(
                AgentErrorKind::Protocol,
                format!("codex did not answer `turn/interrupt` within {ANSWER_TIMEOUT:?}"),
            )),
        }
    }

    /// Puts `text` into the running turn as a message the model reads next;
    /// whether it took.
    async fn steer(&mut self, text: &str) -> bool {
        let params = json!({
            "threadId": self.thread, "expectedTurnId": self.last_turn,
            "input": [{"type": "text", "text": text}],
        });
        match self.server() {
            Ok(server) => {
                let asked = server.rpc.request("turn/steer", params);
                matches!(tokio::time::timeout(ANSWER_TIMEOUT, asked).await, Ok(Ok(_)))
            }
            Err(_) => false,
        }
    }

    /// The server's next message, or `Cancelled` once mala stops every
    /// session: the turn is interrupted then, and what it did stays recorded.
    async fn next_message(&mut self, log: &TurnLog) -> Result<Option<Inbound>, AgentError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(None);
        };
        // Silence counts only while nothing runs: a long build says nothing.
        let idle = self.timeouts.idle.filter(|_| log.running.is_empty());
        let idle = async move {
            match idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        let deadline = log.deadline;
        let over = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            message = server.inbox.recv() => return Ok(message),
            // `None`: nobody can stop the sessions any more.
            stopping = self.stop.wait_for(|stopping| *stopping) => stopping
                .is_ok()
                .then(|| AgentError::new(AgentErrorKind::Cancelled, "mala is stopping")),
            () = idle => Some(AgentError::new(
                AgentErrorKind::TimedOut,
                format!("codex said nothing for {:?} with nothing running", self.timeouts.idle.unwrap_or_default()),
            )),
            () = over => Some(AgentError::new(
                AgentErrorKind::TimedOut,
                format!("the turn ran past its limit of {:?}", self.timeouts.turn),
            )),
        };
        let Some(ended) = ended else {
            // The backend is gone: from now on nothing but the session stops it.
            self.stop = self.unstoppable.subscribe();
            return Box::pin(self.next_message(log)).await;
        };
        let _ = self.interrupt_turn().await;
        Err(ended)
    }

    /// Runs one of mala's tools for the agent on a task of its own (a
    /// `lock_acquire` may wait minutes), which answers the server: the turn
    /// goes on meanwhile, its limits and a stop with it.
    fn serve_tool(&self, id: Value, params: &Value) -> Result<(), AgentError> {
        let responder = self
            .server
            .as_ref()
            .map(|s| s.rpc.responder())
            .ok_or_else(|| {
                AgentError::new(
                    AgentErrorKind::Crashed,
                    "the codex app-server has been closed",
                )
            })?;
        let (agent, locks, git) = (self.agent.clone(), self.locks.clone(), self.git.clone());
        let observer = Arc::clone(&self.observer);
        let name = params["tool"].as_str().unwrap_or_default().to_owned();
        let call_id = params["callId"].as_str().unwrap_or_default().to_owned();
        let arguments = params["arguments"].clone();
        observer.on_event(&AgentEvent::ToolUse {
            id: call_id.clone(),
            name: name.clone(),
            input: arguments.clone(),
        });
        tokio::spawn(async move {
            let tools = crate::agent_tools::Tools {
                agent: &agent,
                locks: locks.as_ref(),
                git: git.as_ref(),
            };
            let (text, is_error) = crate::agent_tools::call(&name, &arguments, &tools).await;
            observer.on_event(&AgentEvent::ToolResult {
                id: call_id,
                is_error,
                content: text.clone(),
            });
            let answer = json!({"success": !is_error, "contentItems": [{"type": "inputText", "text": text}]});
            responder.respond(id, answer);
        });
        Ok(())
    }

    /// Takes one notification in: what mala must act on at once (an item
    /// it cannot judge, a command that ran unasked, what the working tree
    /// saw, a budget spent), then the turn's log; `Some` once the turn is over.
    async fn take(
        &mut self,
        method: &str,
        params: &Value,
        log: &mut TurnLog,
    ) -> Option<TurnStatus> {
        match method {
            "item/started" => self.refuse_unknown(&params["item"], log).await,
            "item/completed" => {
                self.judge_unasked(&params["item"], log).await;
                self.observe(&params["item"], log).await;
            }
            _ => {}
        }
        let status = self.note(method, params, log);
        if status.is_none() && log.over_budget && !log.cut {
            log.cut = true;
            let _ = self.interrupt_turn().await;
        }
        status
    }

    /// A command still running when its turn ended (codex lets one go on
    /// after its call returns) is stopped with everything else the server
    /// started, and the turn fails saying so: what it did next would come
    /// after mala's checks, its locks and its commit.
    async fn stop_lingering(&mut self, log: &mut TurnLog) {
        // What its commands left running detached goes with the turn too,
        // before the gate looks at the tree.
        if let Some(process) = self.server.as_ref().and_then(AppServer::process) {
            process.stop_strays_blocking().await;
        }
        let mut lingering: Vec<&str> = log
            .running
            .iter()
            .filter_map(|id| log.commands.get(id))
            .map(String::as_str)
            .collect();
        if lingering.is_empty() {
            return;
        }
        lingering.sort_unstable();
        if let Some(pid) = self.server.as_ref().and_then(AppServer::pid) {
            let _ = tokio::task::spawn_blocking(move || crate::process_tree::kill_descendants(pid))
                .await;
        }
        let violation = format!(
            "the agent's command `{}` was still running when its turn ended; mala stopped it \
             (commands must finish within the turn: run them in the foreground and wait)",
            lingering.join("`, `")
        );
        self.observer.on_event(&AgentEvent::ToolDenied {
            tool: "Bash".to_owned(),
            reason: violation.clone(),
        });
        log.violation.get_or_insert(violation);
    }

    /// An item of a kind mala's guard cannot judge (another MCP server's
    /// tool, a sub-agent, an image written to disk, a kind this version does
    /// not know) stops the turn, which ends failed, saying so.
    async fn refuse_unknown(&mut self, item: &Value, log: &mut TurnLog) {
        let kind = item["type"].as_str().unwrap_or_default();
        if KNOWN_ITEMS.contains(&kind) || log.violation.is_some() {
            return;
        }
        let violation = format!(
            "codex started a `{kind}` item, which mala's guard cannot judge; mala stopped the turn"
        );
        self.observer.on_event(&AgentEvent::ToolDenied {
            tool: kind.to_owned(),
            reason: violation.clone(),
        });
        log.denials.push(kind.to_owned());
        log.violation = Some(violation);
        let _ = self.interrupt_turn().await;
    }

    /// A command codex ran without asking mala (a rule in the user's codex
    /// configuration allows it) is judged once it is over, the first moment
    /// it is known to have run unasked (its item starts before the approval
    /// request would come): one the guard refuses stops the turn, which ends
    /// failed, saying so.
    async fn judge_unasked(&mut self, item: &Value, log: &mut TurnLog) {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        if item["type"] != "commandExecution" || !log.judged.insert(id.clone()) {
            return;
        }
        let command = self.agent_command(item);
        let input = json!({"command": command});
        self.observer.on_event(&AgentEvent::ToolUse {
            id: id.clone(),
            name: "Bash".to_owned(),
            input: input.clone(),
        });
        let Some(reason) = self.refusal("Bash", &input) else {
            return;
        };
        let violation = format!(
            "codex ran `{command}` without asking mala, and mala's guard refuses it ({reason}); \
             mala stopped the turn"
        );
        self.observer.on_event(&AgentEvent::ToolDenied {
            tool: "Bash".to_owned(),
            reason: violation.clone(),
        });
        log.denials.push("Bash".to_owned());
        log.violation.get_or_insert(violation);
        let _ = self.interrupt_turn().await;
    }

    /// The agent wrote to a program still running from an approved
    /// command (`write_stdin`), which asks no approval: what it typed there
    /// no guard saw. The turn is stopped at once and ends failed, saying so.
    async fn stop_for_input(&mut self, log: &mut TurnLog) {
        log.violation = Some(
            "the agent typed input into a program still running from an earlier command \
             (write_stdin), which mala's guard cannot check; mala stopped the turn"
                .to_owned(),
        );
        self.observer.on_event(&AgentEvent::ToolDenied {
            tool: "write_stdin".to_owned(),
            reason: log.violation.clone().unwrap_or_default(),
        });
        let _ = self.interrupt_turn().await;
    }
}

/// Refuses a thread that did not take mala's approval policy (a managed
/// requirement of the user's setup may forbid it): its commands would run
/// without asking mala.
fn refuse_unguarded(started: &Value) -> Result<(), AgentError> {
    let (policy, reviewer) = (&started["approvalPolicy"], &started["approvalsReviewer"]);
    if policy == "untrusted" && (reviewer.is_null() || reviewer == "user") {
        return Ok(());
    }
    Err(AgentError::new(
        AgentErrorKind::CouldNotStart,
        format!(
            "codex runs this thread with approval policy {policy} and approvals reviewer {reviewer}, \
             not `untrusted` answered by mala, so its commands would not all come to mala's guard \
             first; check the codex configuration (`approvals_reviewer`) and its requirements"
        ),
    ))
}

/// The price of the thread's model; a session held to a dollar limit
/// cannot start without one (its dollars could not be counted).
fn priced(
    started: &Value,
    settings: &ThreadSettings,
    max_cost_usd: Option<f64>,
) -> Result<Option<mala_domain::TokenPrice>, AgentError> {
    let model = started["model"].as_str().unwrap_or_default();
    let price = settings.prices.get(model).copied();
    if price.is_none() && max_cost_usd.is_some() {
        return Err(AgentError::new(
            AgentErrorKind::CouldNotStart,
            format!(
                "the thread's model `{model}` has no price in coder_options.codex.prices, and a \
                 dollar budget needs one (codex reports tokens, not dollars)"
            ),
        ));
    }
    Ok(price)
}

/// Whether two paths name one directory (symlinks resolved where they can be).
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolve = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    a == b || resolve(a) == resolve(b)
}

/// One path of a file change: added, deleted or updated, and where an
/// update moves the file to.
#[derive(Debug, Clone)]
struct PatchPath {
    kind: String,
    path: String,
    moved_to: Option<String>,
}

/// The paths of a file change item, its moves' destinations included.
fn patch_paths(item: &Value) -> Vec<PatchPath> {
    item["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|change| PatchPath {
            kind: change["kind"]["type"]
                .as_str()
                .unwrap_or("update")
                .to_owned(),
            path: change["path"].as_str().unwrap_or_default().to_owned(),
            moved_to: change["kind"]["move_path"].as_str().map(str::to_owned),
        })
        .collect()
}

/// Keeps a file change's paths for its approval request, which names none.
fn note_started(item: &Value, log: &mut TurnLog) {
    if item["type"] != "fileChange" {
        return;
    }
    let id = item["id"].as_str().unwrap_or_default().to_owned();
    log.changes.insert(id, patch_paths(item));
}

/// An `apply_patch` text naming `changes`, for the guard, which reads a
/// patch's file lines (it decides on paths, a move's destination among
/// them, not on the diff).
fn patch_naming(changes: &[PatchPath]) -> String {
    let mut patch = String::from("*** Begin Patch\n");
    for change in changes {
        let verb = match change.kind.as_str() {
            "add" => "Add",
            "delete" => "Delete",
            _ => "Update",
        };
        let _ = writeln!(patch, "*** {verb} File: {}", change.path);
        if let Some(to) = &change.moved_to {
            let _ = writeln!(patch, "*** Move to: {to}");
        }
    }
    patch.push_str("*** End Patch\n");
    patch
}

fn millis(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(value.as_i64()?)
}

fn usage_of(total: &Value) -> TokenUsage {
    let n = |key: &str| total[key].as_u64().unwrap_or(0);
    TokenUsage {
        // Codex's input count includes the cached reads and writes.
        input_tokens: n("inputTokens")
            .saturating_sub(n("cachedInputTokens"))
            .saturating_sub(n("cacheWriteInputTokens")),
        output_tokens: n("outputTokens"),
        cache_read_input_tokens: n("cachedInputTokens"),
        cache_creation_input_tokens: n("cacheWriteInputTokens"),
    }
}

fn turn_status(turn: &Value) -> TurnStatus {
    match turn["status"].as_str() {
        Some("completed") => TurnStatus::Completed,
        Some("interrupted") => TurnStatus::Interrupted,
        _ => TurnStatus::Failed {
            reason: turn["error"]["message"]
                .as_str()
                .unwrap_or("the turn failed")
                .to_owned(),
        },
    }
}

/// A failed turn's error as mala's kinds: what waiting can do about it.
fn turn_error(error: &Value, reason: &str) -> AgentError {
    let info = &error["codexErrorInfo"];
    let status = [
        "responseTooManyFailedAttempts",
        "httpConnectionFailed",
        "responseStreamDisconnected",
    ]
    .iter()
    .find_map(|key| info[*key]["httpStatusCode"].as_u64());
    let kind = match (status, info.as_str()) {
        (Some(401 | 403), _) | (_, Some("unauthorized")) => AgentErrorKind::Authentication,
        (Some(429), _) | (_, Some("usageLimitExceeded")) => {
            AgentErrorKind::RateLimited { resets_at: None }
        }
        (Some(500..=599), _) | (_, Some("internalServerError" | "serverOverloaded")) => {
            AgentErrorKind::Overloaded { retry_after: None }
        }
        (None, Some("httpConnectionFailed")) => AgentErrorKind::Network,
        _ => AgentErrorKind::Crashed,
    };
    AgentError::new(kind, format!("codex: {reason}"))
}

#[async_trait]
impl AgentSession for CodexSession {
    fn session_id(&self) -> Option<SessionId> {
        Some(SessionId::new(self.thread.clone()))
    }

    async fn turn(&mut self, prompt: &str) -> Result<TurnOutcome, AgentError> {
        if *self.stop.borrow() {
            return Err(AgentError::new(
                AgentErrorKind::Cancelled,
                "mala is stopping",
            ));
        }
        let thread = self.thread.clone();
        let mut params = json!({"threadId": thread, "input": [{"type": "text", "text": prompt}]});
        if let Some(effort) = &self.effort {
            params["effort"] = json!(effort);
        }
        let started = self.server()?.rpc.request("turn/start", params).await;
        let started =
            started.map_err(|e| AgentError::new(AgentErrorKind::Crashed, e.to_string()))?;
        let mut log = TurnLog {
            deadline: Some(tokio::time::Instant::now() + self.timeouts.turn),
            turn: started
                .pointer("/turn/id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..TurnLog::default()
        };
        self.last_turn.clone_from(&log.turn);
        let status = loop {
            let Some(message) = self.next_message(&log).await? else {
                return Err(AgentError::new(
                    AgentErrorKind::Crashed,
                    "the codex app-server ended during the turn",
                ));
            };
            match message {
                Inbound::Request { id, method, params }
                    if method == "item/commandExecution/requestApproval"
                        || method == "item/fileChange/requestApproval" =>
                {
                    self.answer(id, &method, &params, &mut log).await;
                }
                Inbound::Request { id, method, params } if method == "item/tool/call" => {
                    self.serve_tool(id, &params)?;
                }
                // Nothing else is served.
                Inbound::Request { id, method, .. } => {
                    let refusal = format!("mala does not serve `{method}`");
                    self.server()?.rpc.respond_error(id, -32601, &refusal);
                }
                // An empty write only waits on the running program.
                Inbound::Notification { method, params }
                    if method == "item/commandExecution/terminalInteraction"
                        && params["stdin"]
                            .as_str()
                            .is_some_and(|typed| !typed.is_empty())
                        && log.violation.is_none() =>
                {
                    self.stop_for_input(&mut log).await;
                }
                Inbound::Notification { method, params } => {
                    if let Some(status) = self.take(&method, &params, &mut log).await {
                        break status;
                    }
                }
                Inbound::Unknown(_) | Inbound::Unreadable(_) => {}
            }
        };
        self.stop_lingering(&mut log).await;
        if let Some(server) = &self.server {
            server.flush_record();
        }
        self.thread_usage = self.thread_usage.plus(log.usage);
        self.turns += 1;
        let cost = self.price.map_or(0.0, |price| price.cost(&log.usage));
        self.cost_so_far += cost;
        let status = match log.violation.take() {
            Some(reason) => TurnStatus::Failed { reason },
            None if log.over_budget => TurnStatus::BudgetReached,
            None => status,
        };
        if let (TurnStatus::Failed { reason }, Some(error)) = (&status, &log.error) {
            return Err(turn_error(error, reason));
        }
        Ok(TurnOutcome {
            status,
            session_id: self.session_id(),
            final_text: log.final_text,
            usage: log.usage,
            // Codex reports tokens; dollars are the price table's, for the session so far.
            total_cost_usd: self.cost_so_far,
            num_turns: self.turns,
            permission_denials: log.denials,
        })
    }

    async fn interrupt(&mut self) -> Result<(), AgentError> {
        self.interrupt_turn().await
    }

    async fn close(&mut self) -> Result<(), AgentError> {
        if let Some((live, pid)) = self.live.take() {
            live.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
        }
        if let Some(server) = self.server.take() {
            server.close(CLOSE_GRACE).await;
        }
        Ok(())
    }
}
