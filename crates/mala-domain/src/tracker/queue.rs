//! The run's queue: which issues a run takes, in which order, and why the
//! others are left out. Pure; `mala run` and `mala run --dry-run` share it.
//!
//! The rules are documented in docs/queue.md; keep the two together.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use mala_core::{Issue, IssueId, IssueStatus, IssueType, Priority};
use serde::Serialize;

use super::graph::{Blocker, IssueGraph, Readiness};
use crate::{Order, Scope};

/// What a run asks of the queue.
#[derive(Debug, Clone)]
pub struct QueueRequest<'a> {
    pub scope: &'a Scope,
    pub order: Order,
    /// Issue types a run works on (mala.yaml `issue_types`).
    pub issue_types: &'a [String],
    /// Issues this run already took or gave up on.
    pub skip: &'a HashSet<IssueId>,
    /// In-progress issues this run may take over: claims of runs that died,
    /// and with `--resume` work in progress nobody else holds.
    pub takeover: &'a HashSet<IssueId>,
    /// At most this many issues.
    pub limit: Option<usize>,
    pub now: DateTime<Utc>,
}

/// One issue the run will take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEntry {
    pub id: IssueId,
    pub title: String,
    pub priority: Priority,
    pub issue_type: IssueType,
    /// The nearest epic above the issue; `None` for orphans.
    pub epic: Option<IssueId>,
    /// In progress, taken over from a run that died or resumed on request.
    pub takeover: bool,
}

/// Why an issue in scope is not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    /// Epics are verified when their children close, not worked on.
    Epic,
    /// Its type is not in `issue_types`.
    Type {
        issue_type: IssueType,
    },
    /// In progress under another holder (another mala, or a person).
    Claimed {
        by: Option<String>,
    },
    /// Not open (closed issues are not reported).
    Status {
        status: IssueStatus,
    },
    /// Pinned, a template, or a wisp.
    Held,
    Deferred,
    Blocked {
        by: Vec<Blocker>,
    },
    /// Its epic is deferred.
    EpicDeferred {
        epic: IssueId,
    },
    /// Already taken or failed in this run.
    Skipped,
    /// Behind the first epic group under `--order focus`.
    OutOfFocus,
    /// Beyond `--max-issues`.
    Limit,
}

/// An issue in scope that the run will not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub id: IssueId,
    pub title: String,
    #[serde(flatten)]
    pub why: Exclusion,
}

/// The queue as a run would take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueuePlan {
    pub entries: Vec<QueueEntry>,
    pub excluded: Vec<Excluded>,
}

/// An id named in `--scope ids:` or `--scope epic:` that the tracker does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown issue id{}: {}", if .0.len() == 1 { "" } else { "s" }, join(.0))]
pub struct UnknownIds(pub Vec<IssueId>);

fn join(ids: &[IssueId]) -> String {
    ids.iter()
        .map(IssueId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans the queue for one snapshot.
pub fn plan_queue(graph: &IssueGraph, request: &QueueRequest<'_>) -> Result<QueuePlan, UnknownIds> {
    let in_scope = scope_members(graph, request.scope)?;
    let mut entries = Vec::new();
    let mut excluded = Vec::new();
    for issue in in_scope {
        match admit(graph, issue, request) {
            Ok(entry) => entries.push(entry),
            Err(Some(why)) => excluded.push(Excluded {
                id: issue.id.clone(),
                title: issue.title.clone(),
                why,
            }),
            Err(None) => {}
        }
    }

    let created: HashMap<&IssueId, DateTime<Utc>> = graph
        .issues()
        .iter()
        .map(|issue| (&issue.id, issue.created_at))
        .collect();
    match request.order {
        Order::Input => {
            // Entries already follow the ids' order (scope_members keeps it).
        }
        Order::IssuePriority => sort_by_issue(&mut entries, &created),
        Order::EpicPriority | Order::Focus => {
            entries = group_by_epic(graph, entries, &created);
            if request.order == Order::Focus
                && let Some(first) = entries.first().map(|e| e.epic.clone())
            {
                let (focus, rest): (Vec<_>, Vec<_>) =
                    entries.into_iter().partition(|e| e.epic == first);
                entries = focus;
                excluded.extend(rest.into_iter().map(|e| Excluded {
                    id: e.id,
                    title: e.title,
                    why: Exclusion::OutOfFocus,
                }));
            }
        }
    }

    if let Some(limit) = request.limit
        && entries.len() > limit
    {
        excluded.extend(entries.split_off(limit).into_iter().map(|e| Excluded {
            id: e.id,
            title: e.title,
            why: Exclusion::Limit,
        }));
    }
    Ok(QueuePlan { entries, excluded })
}

/// Issues by priority, then age, then id. Each entry's key is looked up
/// once, not once per comparison.
fn sort_by_issue(entries: &mut [QueueEntry], created: &HashMap<&IssueId, DateTime<Utc>>) {
    entries.sort_by_cached_key(|e| (e.priority, created.get(&e.id).copied(), e.id.clone()));
}

/// Groups entries by epic: groups by the epic's priority (orphans by their best
/// issue priority), then by the group's oldest issue, then by epic id; orphans
/// after epics on a tie. Inside a group, issues by priority, age and id.
fn group_by_epic(
    graph: &IssueGraph,
    mut entries: Vec<QueueEntry>,
    created: &HashMap<&IssueId, DateTime<Utc>>,
) -> Vec<QueueEntry> {
    sort_by_issue(&mut entries, created);
    let mut groups: Vec<(Option<IssueId>, Vec<QueueEntry>)> = Vec::new();
    let mut group_of: HashMap<Option<IssueId>, usize> = HashMap::new();
    for entry in entries {
        if let Some(&at) = group_of.get(&entry.epic) {
            groups[at].1.push(entry);
        } else {
            group_of.insert(entry.epic.clone(), groups.len());
            groups.push((entry.epic.clone(), vec![entry]));
        }
    }
    let key = |(epic, members): &(Option<IssueId>, Vec<QueueEntry>)| {
        let priority = epic.as_ref().and_then(|id| graph.get(id)).map_or_else(
            || members.iter().map(|m| m.priority).min(),
            |e| Some(e.priority),
        );
        let oldest = members
            .iter()
            .filter_map(|m| created.get(&m.id))
            .min()
            .copied();
        (priority, oldest, epic.is_none(), epic.clone())
    };
    groups.sort_by_cached_key(key);
    groups
        .into_iter()
        .flat_map(|(_, members)| members)
        .collect()
}

/// The issues a scope covers, in snapshot order (or the ids' order for `ids:`).
fn scope_members<'g>(graph: &'g IssueGraph, scope: &Scope) -> Result<Vec<&'g Issue>, UnknownIds> {
    match scope {
        Scope::All => Ok(graph.issues().iter().collect()),
        Scope::Orphans => Ok(graph
            .issues()
            .iter()
            .filter(|issue| graph.parent_epic(&issue.id).is_none())
            .collect()),
        Scope::Epic(epic) => {
            if !graph.contains(epic) {
                return Err(UnknownIds(vec![epic.clone()]));
            }
            Ok(graph.descendants(epic))
        }
        Scope::Ids(ids) => {
            let unknown: Vec<IssueId> = ids
                .iter()
                .filter(|id| !graph.contains(id))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(UnknownIds(unknown));
            }
            Ok(ids.iter().filter_map(|id| graph.get(id)).collect())
        }
    }
}

/// Takes an issue into the queue, or says why not. `Err(None)` leaves it out
/// silently: closed issues would only be noise.
fn admit(
    graph: &IssueGraph,
    issue: &Issue,
    request: &QueueRequest<'_>,
) -> Result<QueueEntry, Option<Exclusion>> {
    if issue.status.is_terminal() {
        return Err(None);
    }
    if issue.issue_type == IssueType::Epic {
        return Err(Some(Exclusion::Epic));
    }
    if !request
        .issue_types
        .iter()
        .any(|t| t == issue.issue_type.as_str())
    {
        return Err(Some(Exclusion::Type {
            issue_type: issue.issue_type.clone(),
        }));
    }
    if request.skip.contains(&issue.id) {
        return Err(Some(Exclusion::Skipped));
    }
    let takeover = issue.status == IssueStatus::InProgress && request.takeover.contains(&issue.id);
    // A taken-over issue is judged as if it were open again.
    let readiness = if takeover {
        graph.readiness(
            &Issue {
                status: IssueStatus::Open,
                ..issue.clone()
            },
            request.now,
        )
    } else {
        graph.readiness(issue, request.now)
    };
    match readiness {
        Readiness::Ready => {}
        Readiness::Status(IssueStatus::InProgress) => {
            return Err(Some(Exclusion::Claimed {
                by: issue.assignee.clone(),
            }));
        }
        Readiness::Status(status) => return Err(Some(Exclusion::Status { status })),
        Readiness::Held => return Err(Some(Exclusion::Held)),
        Readiness::Deferred => return Err(Some(Exclusion::Deferred)),
        Readiness::Blocked(by) => return Err(Some(Exclusion::Blocked { by })),
    }
    let epic = graph.parent_epic(&issue.id);
    if let Some(epic) = epic
        && epic.status == IssueStatus::Deferred
    {
        return Err(Some(Exclusion::EpicDeferred {
            epic: epic.id.clone(),
        }));
    }
    Ok(QueueEntry {
        id: issue.id.clone(),
        title: issue.title.clone(),
        priority: issue.priority,
        issue_type: issue.issue_type.clone(),
        epic: epic.map(|e| e.id.clone()),
        takeover,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::{Dependency, DependencyKind};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    struct Tracker(Vec<Issue>);

    impl Tracker {
        fn add(mut self, id: &str, priority: u8, age: i64, parent: Option<&str>) -> Self {
            let mut issue = Issue::new(id, format!("title {id}"), at(age));
            issue.priority = Priority::new(priority).unwrap();
            if let Some(parent) = parent {
                issue.parent = Some(parent.into());
                issue.dependencies.push(Dependency {
                    depends_on: parent.into(),
                    kind: DependencyKind::ParentChild,
                });
            }
            self.0.push(issue);
            self
        }

        fn epic(mut self, id: &str, priority: u8) -> Self {
            self = self.add(id, priority, 0, None);
            self.0.last_mut().unwrap().issue_type = IssueType::Epic;
            self
        }

        fn edit(mut self, id: &str, change: impl FnOnce(&mut Issue)) -> Self {
            change(self.0.iter_mut().find(|i| i.id.as_str() == id).unwrap());
            self
        }

        fn graph(self) -> IssueGraph {
            IssueGraph::new(self.0)
        }
    }

    fn types() -> Vec<String> {
        ["task", "bug", "feature", "chore"]
            .map(String::from)
            .to_vec()
    }

    fn plan(graph: &IssueGraph, scope: &Scope, order: Order) -> QueuePlan {
        let types = types();
        plan_queue(
            graph,
            &QueueRequest {
                scope,
                order,
                issue_types: &types,
                skip: &HashSet::new(),
                takeover: &HashSet::new(),
                limit: None,
                now: at(1000),
            },
        )
        .unwrap()
    }

    fn ids(plan: &QueuePlan) -> Vec<&str> {
        plan.entries.iter().map(|e| e.id.as_str()).collect()
    }

    fn why<'p>(plan: &'p QueuePlan, id: &str) -> &'p Exclusion {
        &plan
            .excluded
            .iter()
            .find(|e| e.id.as_str() == id)
            .unwrap_or_else(|| panic!("{id} not excluded"))
            .why
    }

    /// The tracker of research/beads.md §8.3, plus a bug the original never ran.
    fn demo() -> IssueGraph {
        Tracker(vec![])
            .epic("m-qvr", 1)
            .epic("m-ox5", 3)
            .add("m-qvr.1", 2, 10, Some("m-qvr"))
            .add("m-qvr.2", 0, 11, Some("m-qvr"))
            .edit("m-qvr.2", |i| {
                i.dependencies.push(Dependency {
                    depends_on: "m-qvr.1".into(),
                    kind: DependencyKind::Blocks,
                });
            })
            .add("m-ox5.1", 1, 12, Some("m-ox5"))
            .add("m-hyg", 2, 13, None)
            .add("m-0mo", 0, 14, None)
            .edit("m-0mo", |i| i.issue_type = IssueType::Bug)
            .add("m-uk8", 1, 15, None)
            .edit("m-uk8", |i| {
                i.status = IssueStatus::InProgress;
                i.assignee = Some("mala:dead-run".into());
            })
            .graph()
    }

    #[test]
    fn epic_priority_groups_by_epic_and_runs_bugs_too() {
        let graph = demo();
        let plan = plan(&graph, &Scope::All, Order::EpicPriority);
        // Orphans (best priority P0, the bug) come first; then epic m-qvr (P1), then m-ox5 (P3).
        assert_eq!(ids(&plan), vec!["m-0mo", "m-hyg", "m-qvr.1", "m-ox5.1"]);
        assert_eq!(plan.entries[2].epic, Some("m-qvr".into()));
        assert_eq!(why(&plan, "m-qvr"), &Exclusion::Epic);
        assert!(
            matches!(why(&plan, "m-qvr.2"), Exclusion::Blocked { by } if by == &[Blocker::Issue("m-qvr.1".into())])
        );
        assert_eq!(
            why(&plan, "m-uk8"),
            &Exclusion::Claimed {
                by: Some("mala:dead-run".into())
            }
        );
    }

    #[test]
    fn issue_priority_is_flat_with_age_breaking_ties() {
        let plan = plan(&demo(), &Scope::All, Order::IssuePriority);
        assert_eq!(ids(&plan), vec!["m-0mo", "m-ox5.1", "m-qvr.1", "m-hyg"]);
    }

    #[test]
    fn focus_keeps_only_the_first_group() {
        let plan = plan(&demo(), &Scope::Epic("m-qvr".into()), Order::Focus);
        assert_eq!(ids(&plan), vec!["m-qvr.1"]);
        let plan = super::tests::plan(&demo(), &Scope::All, Order::Focus);
        assert_eq!(ids(&plan), vec!["m-0mo", "m-hyg"]);
        assert_eq!(why(&plan, "m-qvr.1"), &Exclusion::OutOfFocus);
    }

    #[test]
    fn scopes_select_their_issues() {
        let graph = demo();
        assert_eq!(
            ids(&plan(&graph, &Scope::Orphans, Order::EpicPriority)),
            vec!["m-0mo", "m-hyg"]
        );
        let scope = Scope::Ids(vec!["m-hyg".into(), "m-ox5.1".into(), "m-0mo".into()]);
        assert_eq!(
            ids(&plan(&graph, &scope, Order::Input)),
            vec!["m-hyg", "m-ox5.1", "m-0mo"]
        );
        let err = plan_queue(
            &graph,
            &QueueRequest {
                scope: &Scope::Ids(vec!["m-hyg".into(), "nope".into(), "nah".into()]),
                order: Order::Input,
                issue_types: &types(),
                skip: &HashSet::new(),
                takeover: &HashSet::new(),
                limit: None,
                now: at(0),
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "unknown issue ids: nope, nah");
    }

    #[test]
    fn types_skips_takeovers_and_limits_apply() {
        let graph = demo();
        let only_tasks = vec!["task".to_owned()];
        let plan = plan_queue(
            &graph,
            &QueueRequest {
                scope: &Scope::All,
                order: Order::IssuePriority,
                issue_types: &only_tasks,
                skip: &HashSet::from(["m-hyg".into()]),
                takeover: &HashSet::from(["m-uk8".into()]),
                limit: Some(2),
                now: at(1000),
            },
        )
        .unwrap();
        assert_eq!(ids(&plan), vec!["m-ox5.1", "m-uk8"]);
        assert!(plan.entries[1].takeover);
        assert!(matches!(why(&plan, "m-0mo"), Exclusion::Type { .. }));
        assert_eq!(why(&plan, "m-hyg"), &Exclusion::Skipped);
        assert_eq!(why(&plan, "m-qvr.1"), &Exclusion::Limit);
    }

    #[test]
    fn children_of_a_deferred_epic_wait() {
        let graph = Tracker(vec![])
            .epic("e", 1)
            .edit("e", |i| i.status = IssueStatus::Deferred)
            .add("e.1", 1, 1, Some("e"))
            .graph();
        let plan = plan(&graph, &Scope::All, Order::EpicPriority);
        assert!(plan.entries.is_empty());
        assert_eq!(
            why(&plan, "e.1"),
            &Exclusion::EpicDeferred { epic: "e".into() }
        );
    }
}
