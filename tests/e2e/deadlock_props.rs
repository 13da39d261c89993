//! Property: random schedules of acquire, wait and release for up to 64
//! agents, on the real file lock table with the deadlock detector fed by its
//! events. Checked after every step:
//! - never two holders of one lock;
//! - a wait that closes a cycle of stuck agents is reported at that wait;
//! - no deadlock is reported where no agent is stuck on a cycle;
//! - after the victim is removed, no agent is stuck: everyone can move.
#![allow(clippy::unwrap_used, clippy::too_many_lines)] // the harness panics to fail; `step` is one match over the ops

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mala_core::{AgentId, LockEvent, LockTable};
use mala_domain::{Deadlock, WaitForGraph};
use mala_infra::FileLockTable;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
enum Op {
    Acquire { agent: usize, key: usize },
    Wait { agent: usize, keys: Vec<usize> },
    Release { agent: usize, key: usize },
    GiveUp { agent: usize },
}

fn op(agents: usize, keys: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..agents, 0..keys).prop_map(|(agent, key)| Op::Acquire { agent, key }),
        4 => (0..agents, prop::collection::vec(0..keys, 1..=3)).prop_map(|(agent, keys)| Op::Wait { agent, keys }),
        1 => (0..agents, 0..keys).prop_map(|(agent, key)| Op::Release { agent, key }),
        1 => (0..agents).prop_map(|agent| Op::GiveUp { agent }),
    ]
}

fn schedule() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (2usize..=64, 2usize..=10).prop_flat_map(|(agents, keys)| {
        (
            Just(agents),
            prop::collection::vec(op(agents, keys), 1..300),
        )
    })
}

/// The test's own view of the world, independent of the detector.
#[derive(Default)]
struct Model {
    holder: HashMap<String, AgentId>,
    parked: HashMap<AgentId, BTreeSet<String>>,
    born: Vec<AgentId>,
}

impl Model {
    fn note(&mut self, agent: &AgentId) {
        if !self.born.contains(agent) {
            self.born.push(agent.clone());
        }
    }

    /// Agents that can never move: parked, and every awaited key held by a stuck agent.
    fn stuck(&self) -> HashSet<AgentId> {
        let mut stuck: HashSet<AgentId> = self.parked.keys().cloned().collect();
        loop {
            let before = stuck.len();
            let snapshot = stuck.clone();
            stuck.retain(|agent| {
                self.parked[agent].iter().all(|key| {
                    self.holder
                        .get(key)
                        .is_some_and(|h| h != agent && snapshot.contains(h))
                })
            });
            if stuck.len() == before {
                return stuck;
            }
        }
    }

    /// Whether `agent` can reach itself through stuck agents.
    fn on_stuck_cycle(&self, agent: &AgentId, stuck: &HashSet<AgentId>) -> bool {
        let mut seen = HashSet::new();
        let mut pending: Vec<&AgentId> = self.next(agent);
        while let Some(current) = pending.pop() {
            if current == agent {
                return true;
            }
            if stuck.contains(current) && seen.insert(current) {
                pending.extend(self.next(current));
            }
        }
        false
    }

    fn next(&self, agent: &AgentId) -> Vec<&AgentId> {
        self.parked
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|key| self.holder.get(key))
            .collect()
    }

    /// A release wakes every agent parked on that key.
    fn wake(&mut self, key: &str, graph: &mut WaitForGraph) {
        let woken: Vec<AgentId> = self
            .parked
            .iter()
            .filter(|(_, keys)| keys.contains(key))
            .map(|(a, _)| a.clone())
            .collect();
        for agent in woken {
            self.parked.remove(&agent);
            graph.stopped_waiting(&agent);
        }
    }
}

struct World {
    table: FileLockTable,
    events: mpsc::UnboundedReceiver<LockEvent>,
    graph: WaitForGraph,
    model: Model,
    key_of: HashMap<usize, String>,
}

impl World {
    /// Feeds the table's events to the detector; returns what a wait closed.
    fn drain(&mut self) -> Vec<Deadlock> {
        let mut found = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            match event {
                LockEvent::Acquired { agent, key, .. } => self.graph.acquired(&agent, &key),
                LockEvent::Released { agent, key, .. } => self.graph.released(&agent, &key),
                LockEvent::StoppedWaiting { agent } => self.graph.stopped_waiting(&agent),
                LockEvent::Waiting { agent, on } => {
                    let edges: Vec<(String, AgentId)> =
                        on.into_iter().map(|t| (t.key, t.holder)).collect();
                    found.extend(self.graph.waiting(&agent, &edges));
                }
            }
        }
        found
    }
}

/// Deadlocks found over all cases: the property is only worth something if some occur.
static FOUND: AtomicUsize = AtomicUsize::new(0);

fn agent(n: usize) -> AgentId {
    AgentId::new(format!("agent-{n:02}"))
}

async fn step(world: &mut World, op: &Op) -> Result<(), TestCaseError> {
    let path = |key: usize| format!("src/file-{key}.rs");
    match op {
        Op::Acquire { agent: n, key } | Op::Release { agent: n, key }
            if world.model.parked.contains_key(&agent(*n)) =>
        {
            let _ = key; // A parked agent is blocked; it does nothing.
        }
        Op::Acquire { agent: n, key } => {
            let who = agent(*n);
            world.model.note(&who);
            world.graph.register(&who);
            let report = world
                .table
                .acquire(&who, &[path(*key)], Duration::ZERO)
                .await
                .unwrap();
            world.drain();
            let canonical_key = world.key_of[key].clone();
            if report.all_acquired {
                if let Some(previous) = world.model.holder.get(&canonical_key) {
                    prop_assert_eq!(previous, &who, "two holders of {}", canonical_key);
                }
                world.model.holder.insert(canonical_key, who);
            } else {
                prop_assert!(
                    world
                        .model
                        .holder
                        .get(&canonical_key)
                        .is_some_and(|h| *h != who)
                );
            }
        }
        Op::Release { agent: n, key } => {
            let who = agent(*n);
            let released = world.table.release(&who, &[path(*key)]).await.unwrap();
            world.drain();
            let canonical_key = world.key_of[key].clone();
            let held = world.model.holder.get(&canonical_key) == Some(&who);
            prop_assert_eq!(!released.is_empty(), held, "only the holder releases");
            if held {
                world.model.holder.remove(&canonical_key);
                world.model.wake(&canonical_key, &mut world.graph);
            }
        }
        Op::GiveUp { agent: n } => {
            let who = agent(*n);
            world.model.parked.remove(&who);
            world.graph.stopped_waiting(&who);
        }
        Op::Wait { agent: n, keys } => {
            let who = agent(*n);
            if world.model.parked.contains_key(&who) {
                return Ok(());
            }
            world.model.note(&who);
            world.graph.register(&who);
            let paths: Vec<String> = keys.iter().map(|k| path(*k)).collect();
            let report = world.table.wait(&who, &paths).await.unwrap();
            let found = world.drain();
            if !report.parked {
                prop_assert!(found.is_empty());
                return Ok(());
            }
            let awaited: BTreeSet<String> = keys
                .iter()
                .map(|k| world.key_of[k].clone())
                .filter(|k| world.model.holder.get(k).is_some_and(|h| *h != who))
                .collect();
            world.model.parked.insert(who.clone(), awaited);
            let stuck = world.model.stuck();
            let expected = stuck.contains(&who) && world.model.on_stuck_cycle(&who, &stuck);
            prop_assert_eq!(
                found.len(),
                usize::from(expected),
                "wait by {} found {:?}; stuck {:?}",
                who,
                found,
                stuck
            );
            if let Some(deadlock) = found.first() {
                FOUND.fetch_add(1, Ordering::Relaxed);
                prop_assert!(deadlock.cycle.contains(&who));
                prop_assert!(deadlock.cycle.iter().all(|a| stuck.contains(a)));
                let youngest = deadlock
                    .cycle
                    .iter()
                    .max_by_key(|a| world.model.born.iter().position(|b| b == *a))
                    .unwrap();
                prop_assert_eq!(&deadlock.victim, youngest);
                // Resolution: the victim gives up its locks and its wait.
                let victim = deadlock.victim.clone();
                world.table.release_all(&victim).await.unwrap();
                world.drain();
                world.graph.remove_agent(&victim);
                world.model.parked.remove(&victim);
                // A victim's issue is retried later by a new agent: it is born again.
                world.model.born.retain(|a| *a != victim);
                let freed: Vec<String> = world
                    .model
                    .holder
                    .iter()
                    .filter(|(_, h)| **h == victim)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in freed {
                    world.model.holder.remove(&key);
                    world.model.wake(&key, &mut world.graph);
                }
            }
        }
    }
    let stuck = world.model.stuck();
    prop_assert!(stuck.is_empty(), "agents stuck after the step: {:?}", stuck);
    prop_assert!(world.graph.stuck_agents().is_empty());
    Ok(())
}

#[test]
fn random_lock_schedules_never_double_hold_and_every_deadlock_is_caught_and_broken() {
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&schedule(), |(_agents, ops)| {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, events) = mpsc::unbounded_channel();
            let table = FileLockTable::new(dir.path().join("locks"), dir.path())
                .unwrap()
                .with_events(tx);
            let root = dir.path().canonicalize().unwrap();
            let key_of = (0..12)
                .map(|k| {
                    (
                        k,
                        format!("{}:{}/src/file-{k}.rs", root.display(), root.display()),
                    )
                })
                .collect();
            let mut world = World {
                table,
                events,
                graph: WaitForGraph::new(),
                model: Model::default(),
                key_of,
            };
            for op in &ops {
                step(&mut world, op).await?;
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let found = FOUND.load(Ordering::Relaxed);
    assert!(
        found >= 50,
        "only {found} deadlocks arose; the schedules are too tame to test anything"
    );
    eprintln!("deadlocks found and broken: {found}");
}
