//! Killing an agent with everything it started. An agent's process group is
//! not enough: a tool may run its command in a group (or session) of its
//! own, and such a command outlives a killed group. Its descendants are found
//! through /proc before anything is killed, since a killed parent's children
//! are reparented and the link to them is lost.

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// SIGKILLs `pid`'s process group, then every descendant of `pid` and
/// their groups. Processes already gone are skipped. `pid` must lead its
/// own group (agents are started so): a pid that does not is not the agent
/// any more, and only its old group is signalled.
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

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// The parent of each process, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn parents() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parent_in_stat(&stat)?))
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn parents() -> Vec<(u32, u32)> {
    Vec::new()
}

/// Whether `/proc/<pid>/stat` says the process leads its own group.
#[cfg(target_os = "linux")]
fn leads_its_group(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_number(&stat, 2))
        == Some(pid)
}

#[cfg(not(target_os = "linux"))]
fn leads_its_group(_: u32) -> bool {
    false
}

/// The parent pid in a `stat` line.
fn parent_in_stat(stat: &str) -> Option<u32> {
    stat_number(stat, 1)
}

/// The `index`th field after the command name of a `stat` line,
/// `pid (comm) state ppid pgrp ...` (0 is the state), where the name may
/// itself hold spaces and parentheses.
fn stat_number(stat: &str, index: usize) -> Option<u32> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(index)?.parse().ok()
}

/// Every process below `root`, nearest first.
fn descendants(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(pid, ppid)| *ppid == parent && !found.contains(pid))
                .map(|(pid, _)| *pid)
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
        assert_eq!(parent_in_stat("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_in_stat("garbage"), None);
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
        let gone = || {
            std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        };
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "the child in its own session survived"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
