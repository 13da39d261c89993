//! Deadlock detection over the agents' wait-for graph. Pure: the caller
//! feeds it the lock table's events and acts on what it reports.
//!
//! An agent that waits, waits for *any* of its keys (`lock_acquire` returns
//! as soon as one blocked path frees). So an agent is stuck only when every
//! key it waits for is held by an agent that is itself stuck: a set of agents
//! none of which can move. The check runs on every new wait; it reports a
//! deadlock when the waiting agent is stuck and lies on a cycle (a stuck
//! agent on a tail behind someone else's cycle was reported with that cycle,
//! when its closing edge arrived).

use std::collections::{BTreeSet, HashMap, HashSet};

use mala_core::AgentId;
use serde::Serialize;

/// A deadlock found at a new wait, and whom to sacrifice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deadlock {
    /// The agents on the cycle, oldest first.
    pub cycle: Vec<AgentId>,
    /// The youngest agent on the cycle.
    pub victim: AgentId,
    /// A key the victim waits for, held by `holder` (also on the cycle).
    pub blocked_on: String,
    pub holder: AgentId,
}

/// Who holds what, who waits for what, and when each agent started.
#[derive(Debug, Clone, Default)]
pub struct WaitForGraph {
    holder: HashMap<String, AgentId>,
    waits: HashMap<AgentId, BTreeSet<String>>,
    born: HashMap<AgentId, u64>,
    clock: u64,
}

impl WaitForGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an agent's start; later agents are younger. Agents first seen
    /// in an event are registered then.
    pub fn register(&mut self, agent: &AgentId) {
        if !self.born.contains_key(agent) {
            self.clock += 1;
            self.born.insert(agent.clone(), self.clock);
        }
    }

    pub fn acquired(&mut self, agent: &AgentId, key: &str) {
        self.register(agent);
        self.holder.insert(key.to_owned(), agent.clone());
        if let Some(keys) = self.waits.get_mut(agent) {
            keys.remove(key);
        }
    }

    pub fn released(&mut self, agent: &AgentId, key: &str) {
        if self.holder.get(key) == Some(agent) {
            self.holder.remove(key);
        }
    }

    pub fn stopped_waiting(&mut self, agent: &AgentId) {
        self.waits.remove(agent);
    }

    /// The agent is gone: its locks are released and it waits for nothing.
    pub fn remove_agent(&mut self, agent: &AgentId) {
        self.waits.remove(agent);
        self.holder.retain(|_, holder| holder != agent);
        self.born.remove(agent);
    }

    pub fn holder_of(&self, key: &str) -> Option<&AgentId> {
        self.holder.get(key)
    }

    pub fn is_waiting(&self, agent: &AgentId) -> bool {
        self.waits.get(agent).is_some_and(|k| !k.is_empty())
    }

    /// `agent` now waits for any of `keys`, held as given (a holder the
    /// graph did not know, such as another process's agent, is recorded).
    /// Returns the deadlock this wait closes, if any.
    pub fn waiting(&mut self, agent: &AgentId, keys: &[(String, AgentId)]) -> Option<Deadlock> {
        self.register(agent);
        let entry = self.waits.entry(agent.clone()).or_default();
        for (key, holder) in keys {
            entry.insert(key.clone());
            if holder != agent {
                self.holder
                    .entry(key.clone())
                    .or_insert_with(|| holder.clone());
            }
        }
        self.check(agent)
    }

    /// The agents `agent` waits on: the holders of its keys; `None` when one of
    /// its keys is free (it can move).
    fn successors(&self, agent: &AgentId) -> Option<Vec<&AgentId>> {
        let keys = self.waits.get(agent)?;
        if keys.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.holder.get(key) {
                Some(holder) if holder != agent => out.push(holder),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Whether `agent` is stuck, and the cycle it lies on.
    fn check(&self, agent: &AgentId) -> Option<Deadlock> {
        // Every agent reachable from `agent` must be waiting with all its keys held.
        let mut seen: HashSet<&AgentId> = HashSet::new();
        let mut stack = vec![agent];
        let mut edges: HashMap<&AgentId, Vec<&AgentId>> = HashMap::new();
        while let Some(current) = stack.pop() {
            if !seen.insert(current) {
                continue;
            }
            let next = self.successors(current)?;
            stack.extend(next.iter().copied());
            edges.insert(current, next);
        }
        // The cycle through `agent`: the stuck agents that can reach it back.
        let mut reverse: HashMap<&AgentId, Vec<&AgentId>> = HashMap::new();
        for (from, tos) in &edges {
            for to in tos {
                reverse.entry(*to).or_default().push(*from);
            }
        }
        let mut on_cycle: HashSet<&AgentId> = HashSet::new();
        let mut stack: Vec<&AgentId> = reverse.get(agent).cloned().unwrap_or_default();
        while let Some(current) = stack.pop() {
            if on_cycle.insert(current) {
                stack.extend(reverse.get(current).into_iter().flatten().copied());
            }
        }
        if !on_cycle.contains(agent) {
            return None;
        }
        let age = |a: &AgentId| self.born.get(a).copied().unwrap_or(0);
        let mut cycle: Vec<AgentId> = on_cycle.into_iter().cloned().collect();
        cycle.sort_by_key(|a| (age(a), a.clone()));
        let victim = cycle.last()?.clone();
        let (blocked_on, holder) = self
            .waits
            .get(&victim)?
            .iter()
            .filter_map(|key| Some((key.clone(), self.holder.get(key)?.clone())))
            .find(|(_, holder)| cycle.contains(holder))?;
        Some(Deadlock {
            cycle,
            victim,
            blocked_on,
            holder,
        })
    }

    /// Agents that can never move as things stand (for tests and `mala status`).
    pub fn stuck_agents(&self) -> Vec<AgentId> {
        let mut can_move: HashSet<&AgentId> =
            self.born.keys().filter(|a| !self.is_waiting(a)).collect();
        loop {
            let before = can_move.len();
            for (agent, keys) in &self.waits {
                if keys.is_empty() || can_move.contains(agent) {
                    continue;
                }
                let moves = keys.iter().any(|key| match self.holder.get(key) {
                    None => true,
                    Some(holder) => {
                        holder == agent
                            || can_move.contains(holder)
                            || !self.born.contains_key(holder)
                    }
                });
                if moves {
                    can_move.insert(agent);
                }
            }
            if can_move.len() == before {
                break;
            }
        }
        let mut stuck: Vec<AgentId> = self
            .waits
            .iter()
            .filter(|(a, keys)| !keys.is_empty() && !can_move.contains(a))
            .map(|(a, _)| a.clone())
            .collect();
        stuck.sort();
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> AgentId {
        AgentId::new(name)
    }

    fn wait(graph: &mut WaitForGraph, agent: &str, keys: &[&str]) -> Option<Deadlock> {
        let edges: Vec<(String, AgentId)> = keys
            .iter()
            .map(|k| {
                (
                    (*k).to_owned(),
                    graph.holder_of(k).cloned().unwrap_or_else(|| id("?")),
                )
            })
            .collect();
        graph.waiting(&id(agent), &edges)
    }

    #[test]
    fn a_two_agent_cycle_is_found_at_the_closing_edge_and_the_youngest_pays() {
        let mut graph = WaitForGraph::new();
        graph.acquired(&id("old"), "a");
        graph.acquired(&id("young"), "b");
        assert_eq!(wait(&mut graph, "old", &["b"]), None);
        let deadlock = wait(&mut graph, "young", &["a"]).unwrap();
        assert_eq!(deadlock.cycle, vec![id("old"), id("young")]);
        assert_eq!(deadlock.victim, id("young"));
        assert_eq!(
            (deadlock.blocked_on.as_str(), deadlock.holder),
            ("a", id("old"))
        );
        graph.remove_agent(&deadlock.victim);
        assert!(graph.stuck_agents().is_empty());
        assert_eq!(graph.holder_of("b"), None);
    }

    #[test]
    fn waiting_for_any_of_several_keys_is_not_stuck_while_one_can_free() {
        let mut graph = WaitForGraph::new();
        graph.acquired(&id("a"), "x");
        graph.acquired(&id("b"), "y");
        graph.acquired(&id("c"), "z");
        assert_eq!(wait(&mut graph, "a", &["y"]), None);
        // b waits for x (held by a, stuck on b) or z (held by c, who is working): not stuck.
        assert_eq!(wait(&mut graph, "b", &["x", "z"]), None);
        assert!(graph.stuck_agents().is_empty());
        // Once c waits on a as well, everybody is stuck.
        let deadlock = wait(&mut graph, "c", &["x"]).unwrap();
        assert_eq!(deadlock.victim, id("c"));
        assert_eq!(graph.stuck_agents(), vec![id("a"), id("b"), id("c")]);
    }

    #[test]
    fn a_tail_behind_a_cycle_is_not_reported_again() {
        let mut graph = WaitForGraph::new();
        graph.acquired(&id("a"), "x");
        graph.acquired(&id("b"), "y");
        graph.acquired(&id("t"), "z");
        wait(&mut graph, "a", &["y"]);
        assert!(wait(&mut graph, "b", &["x"]).is_some());
        assert_eq!(
            wait(&mut graph, "t", &["x"]),
            None,
            "t is stuck behind the cycle, not on it"
        );
    }

    #[test]
    fn released_and_stopped_waits_clear_edges() {
        let mut graph = WaitForGraph::new();
        graph.acquired(&id("a"), "x");
        graph.acquired(&id("b"), "y");
        wait(&mut graph, "a", &["y"]);
        graph.stopped_waiting(&id("a"));
        assert_eq!(wait(&mut graph, "b", &["x"]), None);
        graph.released(&id("a"), "x");
        assert_eq!(graph.holder_of("x"), None);
        assert!(graph.stuck_agents().is_empty());
    }
}
