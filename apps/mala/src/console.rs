//! What a person sees during a run: one line per thing that matters (a
//! compact tool summary per turn; every tool call with `--verbose`), each
//! issue in its own color, a live status line at the bottom of a terminal,
//! and a summary table at the end. Also the JSONL event log.
//!
//! The words are made by pure functions ([`Console::lines`], [`Tally`],
//! [`summary_table`]) so tests can pin them; only [`Console::emit`] writes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mala_core::{AgentEvent, AgentId, Event, EventSink, IssueId, RunOutcome};

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Colors, or none (not a terminal, or `NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Style {
    color: bool,
}

/// Foreground colors the issues take turns with (no black, no white).
const ISSUE_COLORS: [u8; 6] = [36, 33, 35, 32, 34, 31];

impl Style {
    pub(crate) fn new(color: bool) -> Self {
        Self { color }
    }

    fn paint(self, code: u8, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// An issue id in its own color, the same every time it appears.
    fn issue(self, issue: &IssueId) -> String {
        let hash = issue.as_str().bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        self.paint(ISSUE_COLORS[hash % ISSUE_COLORS.len()], issue.as_str())
    }

    fn good(self, text: &str) -> String {
        self.paint(32, text)
    }

    fn bad(self, text: &str) -> String {
        self.paint(31, text)
    }

    fn dim(self, text: &str) -> String {
        self.paint(2, text)
    }
}

/// One issue's line in the summary.
#[derive(Debug, Clone)]
struct Row {
    issue: IssueId,
    outcome: &'static str,
    reason: Option<String>,
    attempts: u32,
    started: Instant,
    ended: Option<Instant>,
    tokens: u64,
    cost: f64,
}

/// What the run has done so far, folded from its events.
#[derive(Debug)]
pub(crate) struct Tally {
    started: Instant,
    rows: Vec<Row>,
    by_issue: HashMap<IssueId, usize>,
    agents: HashMap<AgentId, IssueId>,
    /// Tool calls per issue since its last turn ended, by tool name.
    tools: HashMap<IssueId, BTreeMap<String, u32>>,
    waiting: usize,
    /// When the run's pause ends, while it is paused.
    paused_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Tally {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            rows: Vec::new(),
            by_issue: HashMap::new(),
            agents: HashMap::new(),
            tools: HashMap::new(),
            waiting: 0,
            paused_until: None,
        }
    }

    fn row(&mut self, issue: &IssueId) -> Option<&mut Row> {
        self.by_issue.get(issue).map(|&i| &mut self.rows[i])
    }

    fn end(
        &mut self,
        issue: &IssueId,
        outcome: &'static str,
        reason: Option<String>,
        now: Instant,
    ) {
        if let Some(row) = self.row(issue) {
            row.outcome = outcome;
            row.reason = reason;
            row.ended = Some(now);
        }
    }

    /// Takes one event in, at `now`.
    pub(crate) fn observe(&mut self, event: &Event, now: Instant) {
        match event {
            Event::IssueClaimed { issue, agent, .. } => {
                self.agents.insert(agent.clone(), issue.clone());
                // A session that was cut off never reported its last turn.
                self.tools.remove(issue);
                if let Some(&i) = self.by_issue.get(issue) {
                    // Claimed again in the same run (after a deadlock): one row.
                    self.rows[i].outcome = "running";
                    self.rows[i].ended = None;
                } else {
                    self.by_issue.insert(issue.clone(), self.rows.len());
                    self.rows.push(Row {
                        issue: issue.clone(),
                        outcome: "running",
                        reason: None,
                        attempts: 0,
                        started: now,
                        ended: None,
                        tokens: 0,
                        cost: 0.0,
                    });
                }
            }
            Event::GateChecked { issue, attempt, .. } => {
                if let Some(row) = self.row(issue) {
                    row.attempts = row.attempts.max(*attempt);
                }
            }
            Event::TurnFinished {
                issue,
                usage,
                cost_usd,
                ..
            } => {
                if let Some(row) = self.row(issue) {
                    row.tokens += usage.total();
                    row.cost += cost_usd;
                }
            }
            Event::Agent {
                agent,
                event: AgentEvent::ToolUse { name, .. },
            } => {
                if let Some(issue) = self.agents.get(agent).cloned() {
                    *self
                        .tools
                        .entry(issue)
                        .or_default()
                        .entry(short_tool_name(name))
                        .or_default() += 1;
                }
            }
            Event::QueuePlanned { waiting, .. } => self.waiting = *waiting,
            Event::RunPaused { until, .. } => self.paused_until = Some(*until),
            Event::RunResumed | Event::RunFinished { .. } => self.paused_until = None,
            Event::IssueClosed { issue } => self.end(issue, "closed", None, now),
            Event::IssueFailed { issue, reason } => {
                self.end(issue, "failed", Some(reason.clone()), now);
            }
            Event::IssueSkipped { issue, reason } => {
                self.end(issue, "skipped", Some(reason.clone()), now);
            }
            Event::IssueReleased { issue, reason } => {
                self.end(issue, "given back", Some(reason.clone()), now);
            }
            _ => {}
        }
    }

    /// The tool calls of `issue`'s last turn, most used first, then cleared.
    fn take_tools(&mut self, issue: &IssueId) -> String {
        let Some(tools) = self.tools.remove(issue) else {
            return "no tools".to_owned();
        };
        let mut tools: Vec<(String, u32)> = tools.into_iter().collect();
        tools.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        tools
            .iter()
            .map(|(name, n)| format!("{n} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn running(&self) -> usize {
        self.rows.iter().filter(|r| r.outcome == "running").count()
    }

    fn count(&self, outcome: &str) -> usize {
        self.rows.iter().filter(|r| r.outcome == outcome).count()
    }

    fn tokens(&self) -> u64 {
        self.rows.iter().map(|r| r.tokens).sum()
    }

    fn cost(&self) -> f64 {
        // Summing from 0.0: an empty f64 `sum` is -0.0, printed "$-0.00".
        self.rows.iter().fold(0.0, |total, r| total + r.cost)
    }

    /// The live status line.
    pub(crate) fn status(&self, now: Instant) -> String {
        let state = match self.paused_until {
            Some(until) => format!("⏸ paused until {} ·", until.format("%H:%M:%S UTC")),
            None => "⏵".to_owned(),
        };
        format!(
            "{state} {} running · {} waiting · {} closed · {} failed · {} · {} tokens · ${:.2}",
            self.running(),
            self.waiting,
            self.count("closed"),
            self.count("failed"),
            clock(now.saturating_duration_since(self.started)),
            tokens(self.tokens()),
            self.cost()
        )
    }
}

/// `mcp__mala__lock_acquire` reads better as `lock_acquire`.
fn short_tool_name(name: &str) -> String {
    name.rsplit("__").next().unwrap_or(name).to_owned()
}

/// `m:ss`, or `h:mm:ss` past an hour.
fn clock(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

/// 950, 12.3k, 4.1M.
fn tokens(n: u64) -> String {
    // Display only: the precision lost above 2^52 tokens does not show.
    #[allow(clippy::cast_precision_loss)]
    let x = n as f64;
    if n >= 1_000_000 {
        format!("{:.1}M", x / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", x / 1e3)
    } else {
        n.to_string()
    }
}

/// The table printed when the run ends: one row per issue it took.
pub(crate) fn summary_table(tally: &Tally, now: Instant) -> String {
    if tally.rows.is_empty() {
        return String::new();
    }
    let header = ["issue", "outcome", "attempts", "duration", "tokens", "cost"];
    let mut cells: Vec<[String; 6]> = tally
        .rows
        .iter()
        .map(|row| {
            [
                row.issue.to_string(),
                row.outcome.to_owned(),
                row.attempts.max(1).to_string(),
                clock(
                    row.ended
                        .unwrap_or(now)
                        .saturating_duration_since(row.started),
                ),
                tokens(row.tokens),
                format!("${:.2}", row.cost),
            ]
        })
        .collect();
    cells.push([
        "total".to_owned(),
        match tally.count("failed") {
            0 => format!("{} closed", tally.count("closed")),
            failed => format!("{} closed, {failed} failed", tally.count("closed")),
        },
        String::new(),
        clock(now.saturating_duration_since(tally.started)),
        tokens(tally.tokens()),
        format!("${:.2}", tally.cost()),
    ]);
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let text: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(c, s)| {
                // Numbers line up on the right, words on the left.
                if c >= 2 {
                    format!("{s:>w$}", w = widths[c])
                } else {
                    format!("{s:<w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header);
    for row in &cells {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// Prints events as short lines on stdout, with a status line on a terminal.
pub(crate) struct Console {
    verbose: bool,
    style: Style,
    /// Draw and redraw a status line below the scrolling lines.
    live: bool,
    state: Arc<Mutex<ConsoleState>>,
}

struct ConsoleState {
    tally: Tally,
    status_shown: bool,
    finished: bool,
}

impl Console {
    pub(crate) fn new(verbose: bool, style: Style, live: bool) -> Self {
        let console = Self {
            verbose,
            style,
            live,
            state: Arc::new(Mutex::new(ConsoleState {
                tally: Tally::new(Instant::now()),
                status_shown: false,
                finished: false,
            })),
        };
        if live {
            // The elapsed time moves even when nothing happens.
            let state = Arc::downgrade(&console.state);
            std::thread::spawn(move || {
                while let Some(state) = state.upgrade() {
                    {
                        let mut state = guard(&state);
                        if state.finished {
                            break;
                        }
                        Self::redraw(&mut state);
                    }
                    drop(state);
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
        console
    }

    fn redraw(state: &mut ConsoleState) {
        let status = state.tally.status(Instant::now());
        crate::output::stdout(&format!("\r\x1b[2K{status}"));
        state.status_shown = true;
    }

    /// The summary table, as the run left it.
    pub(crate) fn summary(&self) -> String {
        summary_table(&guard(&self.state).tally, Instant::now())
    }

    /// A refused tool call always; every tool call with `--verbose`.
    fn agent_line(
        agent: &AgentId,
        event: &AgentEvent,
        verbose: bool,
        style: Style,
    ) -> Option<String> {
        match event {
            AgentEvent::ToolDenied { tool, reason } => Some(format!(
                "    {}  {tool} refused: {}",
                style.dim(agent.as_str()),
                reason.lines().next().unwrap_or_default()
            )),
            AgentEvent::ToolUse { name, input, .. } if verbose => {
                let detail = input
                    .get("command")
                    .or_else(|| input.get("file_path"))
                    .and_then(|v| v.as_str())
                    .map_or_else(String::new, |s| {
                        format!(" {}", s.lines().next().unwrap_or_default())
                    });
                Some(format!("    {}  {name}{detail}", style.dim(agent.as_str())))
            }
            _ => None,
        }
    }

    /// How the run ended, when that is not plainly finished (the counts
    /// follow in the summary).
    fn finished_line(outcome: &RunOutcome) -> Option<String> {
        Some(match outcome {
            RunOutcome::Finished => return None,
            RunOutcome::Drained => {
                "■ drained: the running issues ended, no new ones were started".to_owned()
            }
            RunOutcome::Aborted { reason } | RunOutcome::Stopped { reason } => {
                format!("■ stopped: {reason}")
            }
            RunOutcome::Interrupted => "■ stopped: interrupted".to_owned(),
            RunOutcome::BudgetReached { spent } => format!(
                "■ budget reached: {spent}; nothing new was started, the issues left are open for the next run"
            ),
        })
    }

    /// What the environment did to the run: faults, issues given back, pauses.
    fn environment_line(event: &Event, style: Style) -> Vec<String> {
        let line = match event {
            Event::EnvironmentFault { issue, fault, .. } => {
                format!("! {}  {}", style.issue(issue), fault.summary())
            }
            Event::IssueReleased { issue, reason } => {
                format!("○ {}  given back untouched: {reason}", style.issue(issue))
            }
            Event::RunPaused { reason, until } => format!(
                "⏸ paused until {}: {reason}",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Event::RunResumed => "▶ resumed".to_owned(),
            Event::BudgetReached {
                scope,
                issue,
                spent,
            } => match issue {
                Some(issue) => format!(
                    "$ {}  the {scope}'s budget was reached: {spent}",
                    style.issue(issue)
                ),
                None => format!("$ the {scope}'s budget was reached: {spent}"),
            },
            Event::DeadlockBroken { victim, holder, .. } => {
                format!("⚠ deadlock broken: {victim} gives way to {holder}")
            }
            _ => return Vec::new(),
        };
        vec![line]
    }

    /// A line of worktree isolation: where an issue works, its branch queued, landed.
    fn worktree_line(event: &Event, style: Style) -> String {
        match event {
            Event::WorktreeOpened { issue, branch, .. } => {
                format!("  {}  works on {}", style.issue(issue), style.dim(branch))
            }
            Event::Landed {
                issue,
                target,
                commit,
                note,
            } => format!(
                "  {}  {} on {target} at {}{}",
                style.issue(issue),
                style.good("landed"),
                &commit[..commit.len().min(12)],
                note.as_ref()
                    .map_or_else(String::new, |n| format!(" ({n})"))
            ),
            Event::MergeQueued { issue, .. } => {
                format!("  {}  in the merge queue", style.issue(issue))
            }
            _ => String::new(),
        }
    }

    /// The lines an event adds, given what the run has done so far.
    pub(crate) fn lines(
        tally: &mut Tally,
        event: &Event,
        verbose: bool,
        style: Style,
    ) -> Vec<String> {
        let issue = |id: &IssueId| style.issue(id);
        let line = match event {
            Event::RunStarted {
                run_id,
                repo,
                max_agents,
                ..
            } => {
                let agents = max_agents.unwrap_or(1);
                let plural = if agents == 1 { "" } else { "s" };
                format!("mala run {run_id} in {repo} (up to {agents} agent{plural})")
            }
            Event::IssueClaimed {
                issue: id, agent, ..
            } => {
                format!("▶ {}  claimed by {}", issue(id), style.dim(agent.as_str()))
            }
            Event::IssueSkipped { issue: id, reason } => {
                format!("· {}  skipped: {reason}", issue(id))
            }
            Event::TurnFinished {
                issue: id,
                usage,
                cost_usd,
                ..
            } => format!(
                "  {}  turn: {} · {} tokens · ${cost_usd:.2}",
                issue(id),
                tally.take_tools(id),
                tokens(usage.total())
            ),
            Event::GateChecked {
                issue: id,
                attempt,
                passed: true,
                ..
            } => format!(
                "  {}  {} (attempt {attempt})",
                issue(id),
                style.good("gate passed")
            ),
            Event::GateChecked {
                issue: id,
                attempt,
                passed: false,
                reasons,
            } => format!(
                "  {}  {} (attempt {attempt}): {}",
                issue(id),
                style.bad("gate failed"),
                reasons.join("; ")
            ),
            Event::Reviewed {
                issue: id,
                blocking,
                advisory,
                ..
            } => format!(
                "  {}  review: {blocking} blocking, {advisory} advisory finding(s)",
                issue(id)
            ),
            Event::Retrying { issue: id, why } => format!("↻ {}  {why}", issue(id)),
            Event::WorktreeOpened { .. } | Event::MergeQueued { .. } | Event::Landed { .. } => {
                Self::worktree_line(event, style)
            }
            Event::IssueClosed { issue: id } => {
                format!("{} {}  closed", style.good("✓"), issue(id))
            }
            Event::IssueFailed { issue: id, reason } => {
                format!("{} {}  {reason}", style.bad("✗"), issue(id))
            }
            Event::Warning { message } => format!("! {message}"),
            Event::EnvironmentFault { .. }
            | Event::IssueReleased { .. }
            | Event::RunPaused { .. }
            | Event::RunResumed
            | Event::BudgetReached { .. }
            | Event::DeadlockBroken { .. } => return Self::environment_line(event, style),
            Event::RunFinished { outcome, .. } => {
                return Self::finished_line(outcome).into_iter().collect();
            }
            Event::Agent { agent, event } => {
                return Self::agent_line(agent, event, verbose, style)
                    .into_iter()
                    .collect();
            }
            Event::QueuePlanned { .. }
            | Event::IssueStarted { .. }
            | Event::StepStarted { .. }
            | Event::RunSpend { .. }
            | Event::Lock { .. } => return Vec::new(),
        };
        vec![line]
    }
}

impl EventSink for Console {
    fn emit(&self, event: &Event) {
        let mut state = guard(&self.state);
        // Words first, then the tally: a turn's line takes its tools out.
        let lines = Self::lines(&mut state.tally, event, self.verbose, self.style);
        state.tally.observe(event, Instant::now());
        if lines.is_empty() && !self.live {
            return;
        }
        let mut text = String::new();
        if state.status_shown {
            // Clear the status line; the scrolling lines go above it.
            text.push_str("\r\x1b[2K");
            state.status_shown = false;
        }
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        crate::output::stdout(&text);
        if matches!(event, Event::RunFinished { .. }) {
            state.finished = true;
        } else if self.live && !state.finished {
            Self::redraw(&mut state);
        }
    }
}

/// Appends every event as one JSON line (`--events-jsonl`).
pub(crate) struct JsonLines {
    file: Mutex<std::fs::File>,
}

impl JsonLines {
    pub(crate) fn create(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        let mut file = guard(&self.file);
        if let Ok(text) = serde_json::to_string(event) {
            let _ = writeln!(file, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::TokenUsage;
    use serde_json::json;

    /// Feeds `events` (each at a second past the start) through the console's
    /// words and tally, as a plain terminal would show them, then the summary.
    fn screen(events: &[(u64, Event)], end: u64) -> String {
        let start = Instant::now();
        let mut tally = Tally::new(start);
        let mut out = String::new();
        for (at, event) in events {
            for line in Console::lines(&mut tally, event, false, Style::new(false)) {
                out.push_str(&line);
                out.push('\n');
            }
            tally.observe(event, start + Duration::from_secs(*at));
        }
        out.push_str("--- status\n");
        out.push_str(&tally.status(start + Duration::from_secs(end)));
        out.push_str("\n--- summary\n");
        out.push_str(&summary_table(&tally, start + Duration::from_secs(end)));
        out
    }

    fn id(s: &str) -> IssueId {
        IssueId::new(s)
    }

    fn claimed(issue: &str) -> Event {
        Event::IssueClaimed {
            issue: id(issue),
            agent: AgentId::new(format!("{issue}@3f9c2a1b7d40")),
            title: String::new(),
        }
    }

    fn tool(issue: &str, name: &str, command: &str) -> Event {
        Event::Agent {
            agent: AgentId::new(format!("{issue}@3f9c2a1b7d40")),
            event: AgentEvent::ToolUse {
                id: "t".into(),
                name: name.into(),
                input: json!({ "command": command }),
            },
        }
    }

    fn turn(issue: &str, input: u64, output: u64, cost: f64) -> Event {
        Event::TurnFinished {
            issue: id(issue),
            session_id: None,
            usage: TokenUsage {
                input_tokens: input,
                output_tokens: output,
                ..TokenUsage::default()
            },
            cost_usd: cost,
        }
    }

    fn gate(issue: &str, attempt: u32, reasons: &[&str]) -> Event {
        Event::GateChecked {
            issue: id(issue),
            attempt,
            passed: reasons.is_empty(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn started() -> Event {
        Event::RunStarted {
            run_id: "3f9c2a1b7d40".into(),
            repo: "/work/example".into(),
            max_agents: Some(2),
            sessions: None,
        }
    }

    fn finished(outcome: RunOutcome) -> Event {
        Event::RunFinished {
            run_id: "3f9c2a1b7d40".into(),
            outcome,
            succeeded: 2,
            failed: 0,
        }
    }

    #[test]
    fn a_full_run() {
        let events = [
            (0, started()),
            (
                0,
                Event::QueuePlanned {
                    waiting: 1,
                    queue: Vec::new(),
                },
            ),
            (0, claimed("ex-a1")),
            (0, claimed("ex-b2")),
            (3, tool("ex-a1", "mcp__mala__lock_acquire", "")),
            (9, tool("ex-a1", "Bash", "cargo test")),
            (9, tool("ex-a1", "Edit", "")),
            (12, tool("ex-a1", "Bash", "cargo test")),
            (40, turn("ex-a1", 12_400, 2_100, 0.31)),
            (40, gate("ex-a1", 1, &[])),
            (
                55,
                Event::Reviewed {
                    issue: id("ex-a1"),
                    attempt: 1,
                    blocking: 0,
                    advisory: 1,
                    findings: vec![],
                },
            ),
            (55, Event::IssueClosed { issue: id("ex-a1") }),
            (70, tool("ex-b2", "Write", "")),
            (84, turn("ex-b2", 30_050, 4_400, 0.82)),
            (84, gate("ex-b2", 1, &[])),
            (84, Event::IssueClosed { issue: id("ex-b2") }),
            (85, finished(RunOutcome::Finished)),
        ];
        insta::assert_snapshot!(screen(&events, 85));
    }

    #[test]
    fn a_failed_gate() {
        let events = [
            (0, claimed("ex-c3")),
            (20, turn("ex-c3", 8_000, 900, 0.12)),
            (
                20,
                gate(
                    "ex-c3",
                    1,
                    &["`test` (`cargo test`) was never run after the last edit"],
                ),
            ),
            (
                20,
                Event::Retrying {
                    issue: id("ex-c3"),
                    why: "quality gate: `test` (`cargo test`) was never run after the last edit"
                        .into(),
                },
            ),
            (31, turn("ex-c3", 2_000, 100, 0.03)),
            (
                31,
                gate(
                    "ex-c3",
                    2,
                    &["`test` (`cargo test`) was never run after the last edit"],
                ),
            ),
            (
                31,
                Event::IssueFailed {
                    issue: id("ex-c3"),
                    reason: "Quality gate failed and the last follow-up changed nothing".into(),
                },
            ),
        ];
        insta::assert_snapshot!(screen(&events, 32));
    }

    #[test]
    fn a_ctrl_c_drain() {
        let events = [
            (0, started()),
            (
                0,
                Event::QueuePlanned {
                    waiting: 4,
                    queue: Vec::new(),
                },
            ),
            (0, claimed("ex-d4")),
            (
                5,
                Event::Warning {
                    message: "draining: no new issues".into(),
                },
            ),
            (30, turn("ex-d4", 1_500, 200, 0.02)),
            (30, gate("ex-d4", 1, &[])),
            (30, Event::IssueClosed { issue: id("ex-d4") }),
            (30, finished(RunOutcome::Drained)),
        ];
        insta::assert_snapshot!(screen(&events, 31));
    }

    #[test]
    fn the_status_line_says_a_pause_and_its_end_until_the_run_resumes() {
        let mut tally = Tally::new(Instant::now());
        let until = chrono::DateTime::parse_from_rfc3339("2026-12-02T23:05:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        tally.observe(
            &Event::RunPaused {
                reason: "a usage or rate limit was reached: 429".into(),
                until,
            },
            Instant::now(),
        );
        assert!(
            tally
                .status(Instant::now())
                .starts_with("⏸ paused until 23:05:00 UTC · 0 running"),
            "{}",
            tally.status(Instant::now())
        );
        tally.observe(&Event::RunResumed, Instant::now());
        assert!(tally.status(Instant::now()).starts_with("⏵ 0 running"));
    }

    #[test]
    fn an_empty_run_costs_nothing_not_minus_nothing() {
        let tally = Tally::new(Instant::now());
        assert!(tally.status(Instant::now()).ends_with("0 tokens · $0.00"));
    }

    #[test]
    fn colors_mark_issues_and_verdicts_and_stay_put_per_issue() {
        let style = Style::new(true);
        let first = style.issue(&id("ex-a1"));
        assert!(
            first.starts_with("\x1b[") && first.ends_with("\x1b[0m"),
            "{first:?}"
        );
        assert_eq!(first, style.issue(&id("ex-a1")));
        assert_eq!(Style::new(false).issue(&id("ex-a1")), "ex-a1");
        assert!(style.good("✓").contains("\x1b[32m"));
    }
}
