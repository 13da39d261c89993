//! Killing an agent with everything it started. An agent's process group is
//! not enough: a tool may run its command in a group (or session) of its
//! own, and such a command outlives a killed group. Its descendants are found
//! through /proc before anything is killed, since a killed parent's children
//! are reparented and the link to them is lost.

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// SIGKILLs `pid`'s process group, then every descendant of `pid` and
/// their groups (what it left running detached is `AgentProcess`'s to
/// stop). Processes already gone are skipped. `pid` must lead its own group (agents are
/// started so): a pid that does not is not the agent any more, and only its
/// old group is signalled.
pub(crate) fn kill_tree(pid: u32) {
    let family = if leads_its_group(pid) {
        descendants(pid)
    } else {
        Vec::new()
    };
    if let Some(leader) = to_pid(pid) {
        // The group may already be gone; nothing to do then.
        let _ = kill_process_group(leader, Signal::KILL);
    }
    for member in family.into_iter().filter_map(to_pid) {
        let _ = kill_process(member, Signal::KILL);
        let _ = kill_process_group(member, Signal::KILL);
    }
}

/// SIGKILLs every process below `root` (and the groups they lead),
/// leaving `root` itself running.
pub(crate) fn kill_descendants(root: u32) {
    for member in descendants(root).into_iter().filter_map(to_pid) {
        let _ = kill_process(member, Signal::KILL);
        let _ = kill_process_group(member, Signal::KILL);
    }
}

/// The environment variable each agent process is started with, a value no
/// other process has (`new_mark`). Everything it starts inherits it, so a
/// process left running by one of its tool calls is still known as its own
/// after its shell exited and it was reparented away from the agent; and no
/// other agent's process, even one of the same agent id, is taken for it.
pub(crate) const AGENT_MARK: &str = "MALA_PROCESS_MARK";

/// A fresh value of `AGENT_MARK` for a process about to start.
pub(crate) fn new_mark() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An agent's command, marked (`AGENT_MARK`) so that what it starts is
/// known as its own: `AgentProcess::of` it once it runs.
#[derive(Debug)]
pub(crate) struct Marked(String);

impl Marked {
    pub(crate) fn command(command: &mut tokio::process::Command) -> Self {
        let mark = new_mark();
        command.env(AGENT_MARK, &mark);
        Self(mark)
    }

    /// The marked command's process, once it started as `pid`.
    pub(crate) fn process(&self, pid: Option<u32>) -> Option<AgentProcess> {
        AgentProcess::started(pid?, &self.0)
    }
}

/// A process an agent's tool call left running after the call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stray {
    pub(crate) pid: u32,
    /// Its command line, as `/proc` has it.
    pub(crate) command: String,
}

/// An agent's process, as its strays know it: they carry its mark and
/// started after it, and that stays true after it exited and was reaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentProcess {
    pid: u32,
    mark: Vec<u8>,
    born: u64,
}

impl AgentProcess {
    /// The process `pid`, just started with `AGENT_MARK` set to `mark`.
    pub(crate) fn started(pid: u32, mark: &str) -> Option<Self> {
        Some(Self {
            pid,
            mark: format!("{AGENT_MARK}={mark}").into_bytes(),
            born: stat_field(pid, STARTED)?,
        })
    }

    /// The processes carrying its mark, started since it was, that are not
    /// it and not below it. A tool call's running commands are below the
    /// agent; one that outlived its shell (`cmd &`, `nohup`, `setsid`) was
    /// reparented away and is not.
    pub(crate) fn strays(&self) -> Vec<Stray> {
        let table = processes();
        let itself = table
            .iter()
            .any(|p| p.pid == self.pid && p.started == self.born);
        let family = if itself {
            descendants_in(&table, self.pid)
        } else {
            Vec::new()
        };
        table
            .iter()
            .filter(|p| p.pid != self.pid && p.started >= self.born && !family.contains(&p.pid))
            .filter(|p| mark_of(p.pid).as_ref() == Some(&self.mark))
            .map(|p| Stray {
                pid: p.pid,
                command: command_line(p.pid),
            })
            .collect()
    }

    /// Stops its strays: each is frozen (SIGSTOP) before any is killed, so
    /// none forks a new one in between, then SIGKILLed with the group it
    /// leads (never the agent's own), and waited for until it is gone (a
    /// write it was in the middle of lands before the caller looks); again
    /// while any is found. Returns what was stopped.
    pub(crate) fn stop_strays(&self) -> Vec<Stray> {
        let mut stopped: Vec<Stray> = Vec::new();
        for _ in 0..8 {
            let found = self.strays();
            if found.is_empty() {
                break;
            }
            let pids: Vec<Pid> = found.iter().filter_map(|s| to_pid(s.pid)).collect();
            for pid in &pids {
                let _ = kill_process(*pid, Signal::STOP);
            }
            for stray in &found {
                let Some(member) = to_pid(stray.pid) else {
                    continue;
                };
                let _ = kill_process(member, Signal::KILL);
                if stat_field::<u32>(stray.pid, GROUP) == Some(stray.pid) && stray.pid != self.pid {
                    let _ = kill_process_group(member, Signal::KILL);
                }
            }
            for stray in &found {
                wait_gone(stray.pid);
            }
            for stray in found {
                if !stopped.iter().any(|s| s.pid == stray.pid) {
                    stopped.push(stray);
                }
            }
        }
        stopped
    }

    /// [`AgentProcess::stop_strays`], off the async threads (it reads /proc
    /// and waits for the strays to go).
    pub(crate) async fn stop_strays_blocking(&self) -> Vec<Stray> {
        let process = self.clone();
        tokio::task::spawn_blocking(move || process.stop_strays())
            .await
            .unwrap_or_default()
    }
}

/// Waits (at most a second) until `pid` is gone or a zombie.
fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while is_running(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Whether `pid` is a process that still runs (not gone, not a zombie).
fn is_running(pid: u32) -> bool {
    stat_field::<char>(pid, STATE).is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// The `AGENT_MARK=…` entry of a process's environment.
fn mark_of(pid: u32) -> Option<Vec<u8>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{AGENT_MARK}=");
    environ
        .split(|&b| b == 0)
        .find(|entry| entry.starts_with(prefix.as_bytes()))
        .map(<[u8]>::to_vec)
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            let words: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.join(" ")
        })
        .unwrap_or_default()
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// One process as `/proc/<pid>/stat` has it.
#[derive(Debug, Clone, Copy)]
struct Process {
    pid: u32,
    parent: u32,
    /// Clock ticks since boot.
    started: u64,
}

/// Every process, from one read of each `/proc/<pid>/stat` (empty where
/// there is no /proc).
fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some(Process {
                pid,
                parent: field_of(&stat, PARENT)?,
                started: field_of(&stat, STARTED)?,
            })
        })
        .collect()
}

/// Whether `/proc/<pid>/stat` says the process leads its own group.
fn leads_its_group(pid: u32) -> bool {
    stat_field::<u32>(pid, GROUP) == Some(pid)
}

/// Fields of a `stat` line after the command name (0 is the state).
const STATE: usize = 0;
const PARENT: usize = 1;
const GROUP: usize = 2;
const STARTED: usize = 19;

/// Field `index` of `/proc/<pid>/stat` (see `field_of`).
fn stat_field<T: std::str::FromStr>(pid: u32, index: usize) -> Option<T> {
    field_of(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        index,
    )
}

/// The `index`th field after the command name of a `stat` line,
/// `pid (comm) state ppid pgrp ...` (0 is the state), where the name may
/// itself hold spaces and parentheses.
fn field_of<T: std::str::FromStr>(stat: &str, index: usize) -> Option<T> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(index)?.parse().ok()
}

/// Every process below `root`, nearest first.
fn descendants(root: u32) -> Vec<u32> {
    descendants_in(&processes(), root)
}

/// Every process of `table` below `root`, nearest first.
fn descendants_in(table: &[Process], root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            table
                .iter()
                .filter(|p| p.parent == parent && !found.contains(&p.pid))
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
        );
        next += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_name_with_spaces_and_parentheses() {
        assert_eq!(field_of::<u32>("42 (a (b) c) S 7 42 42 0", PARENT), Some(7));
        assert_eq!(field_of::<u32>("garbage", PARENT), None);
    }

    /// Waits (bounded) for `file` to hold a pid.
    fn pid_in(file: &std::path::Path) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return pid;
            }
            assert!(std::time::Instant::now() < deadline, "no pid in {file:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn what_a_finished_call_left_running_is_a_stray_and_is_stopped() {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mark = new_mark();
        let (left, running) = (dir.path().join("left"), dir.path().join("running"));
        // The agent: a shell that stays, as the agent's process does.
        let mut agent = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "bash -c 'sleep 41 & echo $! > {}'; sleep 43 & echo $! > {}; wait",
                left.display(),
                running.display()
            ))
            .env(AGENT_MARK, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        let (left, running) = (pid_in(&left), pid_in(&running));
        // The inner shell exited: its `sleep 41` was reparented away.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while descendants(agent.id()).contains(&left) {
            assert!(std::time::Instant::now() < deadline, "never reparented");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let process = AgentProcess::started(agent.id(), &mark).unwrap();
        let found = process.strays();
        assert_eq!(found.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![left]);
        assert_eq!(found[0].command, "sleep 41");
        let stopped = process.stop_strays();
        assert_eq!(stopped, found);
        assert!(process.strays().is_empty());
        // What still runs below the agent is not a stray, and lives on.
        assert!(descendants(agent.id()).contains(&running));
        kill_tree(agent.id());
        let _ = agent.wait();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_agent_that_exited_is_still_known_to_its_strays() {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mark = new_mark();
        let left = dir.path().join("left");
        let mut agent = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("sleep 47 & echo $! > {}", left.display()))
            .env(AGENT_MARK, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        let process = AgentProcess::started(agent.id(), &mark).unwrap();
        let left = pid_in(&left);
        agent.wait().unwrap();
        let found = process.strays();
        assert_eq!(found.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![left]);
        assert_eq!(process.stop_strays(), found);
        assert!(process.strays().is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_command_in_a_session_of_its_own_dies_with_its_parent() {
        use std::os::unix::process::CommandExt as _;
        // The parent starts a child in a new session (setsid), as a tool may,
        // then waits; killing the parent's group alone would leave the child.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let mut parent = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "setsid sleep 37 & echo $! > {}; wait",
                pidfile.display()
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let child: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "no child started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(descendants(parent.id()).contains(&child));
        kill_tree(parent.id());
        let _ = parent.wait();
        while is_running(child) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child in its own session survived"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
