//! What a person sees during a run: one line per thing that matters, and
//! the agents' tool calls with `--verbose`. Also the JSONL event log.

use std::io::Write;
use std::sync::Mutex;

use mala_core::{AgentEvent, Event, EventSink, RunOutcome};

/// Prints events as short lines on stdout.
pub(crate) struct Console {
    verbose: bool,
}

impl Console {
    pub(crate) fn new(verbose: bool) -> Self {
        Self { verbose }
    }

    fn line(event: &Event, verbose: bool) -> Option<String> {
        Some(match event {
            Event::RunStarted {
                run_id,
                repo,
                max_agents,
            } => format!(
                "mala run {run_id} in {repo} (up to {} agent{})",
                max_agents.unwrap_or(1),
                if max_agents.unwrap_or(1) == 1 {
                    ""
                } else {
                    "s"
                }
            ),
            Event::IssueClaimed { issue, agent } => format!("▶ {issue}  claimed by {agent}"),
            Event::IssueSkipped { issue, reason } => format!("· {issue}  skipped: {reason}"),
            Event::GateChecked {
                issue,
                attempt,
                passed: true,
                ..
            } => format!("  {issue}  gate passed (attempt {attempt})"),
            Event::GateChecked {
                issue,
                attempt,
                passed: false,
                reasons,
            } => {
                format!(
                    "  {issue}  gate failed (attempt {attempt}): {}",
                    reasons.join("; ")
                )
            }
            Event::Reviewed {
                issue,
                blocking,
                advisory,
                ..
            } => {
                format!("  {issue}  review: {blocking} blocking, {advisory} advisory finding(s)")
            }
            Event::Retrying { issue, why } => format!("↻ {issue}  {why}"),
            Event::IssueClosed { issue } => format!("✓ {issue}  closed"),
            Event::IssueFailed { issue, reason } => format!("✗ {issue}  {reason}"),
            Event::Warning { message } => format!("! {message}"),
            // The counts follow in the run's report; say only how it ended.
            Event::RunFinished { outcome, .. } => match outcome {
                RunOutcome::Finished => return None,
                RunOutcome::Drained => {
                    "■ drained: the running issues ended, no new ones were started".to_owned()
                }
                RunOutcome::Aborted { reason } => format!("■ stopped: {reason}"),
            },
            Event::Agent { agent, event } if verbose => match event {
                AgentEvent::ToolUse { name, input, .. } => {
                    let detail = input
                        .get("command")
                        .or_else(|| input.get("file_path"))
                        .and_then(|v| v.as_str())
                        .map_or_else(String::new, |s| {
                            format!(" {}", s.lines().next().unwrap_or_default())
                        });
                    format!("    {agent}  {name}{detail}")
                }
                AgentEvent::ToolDenied { tool, reason } => {
                    format!("    {agent}  {tool} refused: {reason}")
                }
                _ => return None,
            },
            Event::Agent {
                agent,
                event: AgentEvent::ToolDenied { tool, reason },
            } => {
                format!(
                    "    {agent}  {tool} refused: {}",
                    reason.lines().next().unwrap_or_default()
                )
            }
            Event::Agent { .. } => return None,
        })
    }
}

impl EventSink for Console {
    fn emit(&self, event: &Event) {
        if let Some(line) = Self::line(event, self.verbose) {
            crate::output::stdout(&format!("{line}\n"));
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
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(text) = serde_json::to_string(event) {
            let _ = writeln!(file, "{text}");
        }
    }
}

/// Sends each event to every sink.
pub(crate) struct Fanout(pub(crate) Vec<Box<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}
