//! The issue graph, computed in memory from one snapshot of the tracker.
//!
//! `ready` follows br 0.7.6's own definition (storage `get_ready_issues` and
//! the blocked-issues cache), so that mala and `br ready` agree on every
//! tracker; a property test against the real br holds us to it.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use mala_core::{DependencyKind, EpicStatus, Issue, IssueId, IssueStatus, IssueType};
use serde::Serialize;

/// Why br considers an issue blocked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Blocker {
    /// A `blocks` (or `conditional-blocks`, `waits-for`) dependency that is not closed.
    Issue(IssueId),
    /// An ancestor in the parent-child tree is blocked.
    Ancestor(IssueId),
    /// An epic waits for its open children.
    OpenChild(IssueId),
}

impl Blocker {
    pub fn id(&self) -> &IssueId {
        match self {
            Self::Issue(id) | Self::Ancestor(id) | Self::OpenChild(id) => id,
        }
    }
}

/// Every issue of one snapshot, indexed for the questions mala asks.
#[derive(Debug, Clone, Default)]
pub struct IssueGraph {
    issues: Vec<Issue>,
    index: HashMap<IssueId, usize>,
    /// Parent id to child ids, from parent-child edges (which live on the child).
    children: HashMap<IssueId, Vec<IssueId>>,
    blocked: HashMap<IssueId, Vec<Blocker>>,
}

/// Dependency kinds br treats as blocking.
fn is_blocking(kind: &DependencyKind) -> bool {
    match kind {
        DependencyKind::Blocks => true,
        DependencyKind::ParentChild => false,
        DependencyKind::Other(other) => other == "conditional-blocks" || other == "waits-for",
    }
}

/// br keeps cross-project references as `external:<project>:<id>` and resolves
/// them elsewhere; mala cannot see those projects and leaves such edges out.
fn is_external(id: &IssueId) -> bool {
    id.as_str().starts_with("external:")
}

impl IssueGraph {
    pub fn new(issues: Vec<Issue>) -> Self {
        let index = issues
            .iter()
            .enumerate()
            .map(|(i, issue)| (issue.id.clone(), i))
            .collect();
        let mut children: HashMap<IssueId, Vec<IssueId>> = HashMap::new();
        for issue in &issues {
            for dep in &issue.dependencies {
                if dep.kind == DependencyKind::ParentChild
                    && !is_external(&dep.depends_on)
                    && !is_external(&issue.id)
                {
                    children
                        .entry(dep.depends_on.clone())
                        .or_default()
                        .push(issue.id.clone());
                }
            }
        }
        let mut graph = Self {
            issues,
            index,
            children,
            blocked: HashMap::new(),
        };
        graph.blocked = graph.compute_blocked();
        graph
    }

    pub fn issues(&self) -> &[Issue] {
        &self.issues
    }

    pub fn into_issues(self) -> Vec<Issue> {
        self.issues
    }

    pub fn get(&self, id: &IssueId) -> Option<&Issue> {
        self.index.get(id).map(|&i| &self.issues[i])
    }

    pub fn contains(&self, id: &IssueId) -> bool {
        self.index.contains_key(id)
    }

    /// What keeps an issue from being ready; empty when nothing does.
    pub fn blockers(&self, id: &IssueId) -> &[Blocker] {
        self.blocked.get(id).map_or(&[], Vec::as_slice)
    }

    fn is_open_like(&self, id: &IssueId) -> Option<bool> {
        self.get(id)
            .map(|issue| !issue.status.is_terminal() && !issue.is_template)
    }

    /// br's blocked map: direct blockers, pushed down to all descendants, then
    /// epics with open children. The order matters: an epic blocked only by its
    /// own children does not in turn block those children.
    fn compute_blocked(&self) -> HashMap<IssueId, Vec<Blocker>> {
        let mut blocked: HashMap<IssueId, Vec<Blocker>> = HashMap::new();
        for issue in &self.issues {
            for dep in &issue.dependencies {
                if !is_blocking(&dep.kind) || is_external(&dep.depends_on) {
                    continue;
                }
                // An edge to an issue the tracker lacks blocks nothing: br
                // drops such orphan edges when it imports the JSONL.
                if self.is_open_like(&dep.depends_on) == Some(true) {
                    blocked
                        .entry(issue.id.clone())
                        .or_default()
                        .push(Blocker::Issue(dep.depends_on.clone()));
                }
            }
        }

        let mut queue: Vec<IssueId> = blocked.keys().cloned().collect();
        let mut seen: HashSet<IssueId> = HashSet::new();
        while let Some(parent) = queue.pop() {
            if !seen.insert(parent.clone()) {
                continue;
            }
            for child in self.children(&parent) {
                let marker = Blocker::Ancestor(parent.clone());
                let entry = blocked.entry(child.clone()).or_default();
                if !entry.contains(&marker) {
                    entry.push(marker);
                    queue.push(child.clone());
                }
            }
        }

        for (parent, kids) in &self.children {
            let Some(parent_issue) = self.get(parent) else {
                continue;
            };
            if parent_issue.issue_type != IssueType::Epic {
                continue;
            }
            for kid in kids {
                if self.is_open_like(kid) == Some(true) {
                    blocked
                        .entry(parent.clone())
                        .or_default()
                        .push(Blocker::OpenChild(kid.clone()));
                }
            }
        }

        for blockers in blocked.values_mut() {
            blockers.sort();
            blockers.dedup();
        }
        blocked.retain(|_, blockers| !blockers.is_empty());
        blocked
    }

    /// Whether br would list this issue in `br ready`, and if not, why.
    pub fn readiness(&self, issue: &Issue, now: DateTime<Utc>) -> Readiness {
        if issue.status != IssueStatus::Open {
            return Readiness::Status(issue.status.clone());
        }
        if issue.pinned || issue.is_template || issue.id.as_str().contains("-wisp-") {
            return Readiness::Held;
        }
        if issue.defer_until.is_some_and(|until| until > now) {
            return Readiness::Deferred;
        }
        let blockers = self.blockers(&issue.id);
        if !blockers.is_empty() {
            return Readiness::Blocked(blockers.to_vec());
        }
        Readiness::Ready
    }

    /// br's ready set, in snapshot order.
    pub fn ready(&self, now: DateTime<Utc>) -> Vec<&Issue> {
        self.issues
            .iter()
            .filter(|issue| self.readiness(issue, now) == Readiness::Ready)
            .collect()
    }

    /// Direct children of an issue (through parent-child edges).
    pub fn children(&self, parent: &IssueId) -> &[IssueId] {
        self.children.get(parent).map_or(&[], Vec::as_slice)
    }

    /// Children, grandchildren and so on, breadth first; safe against cycles.
    pub fn descendants(&self, root: &IssueId) -> Vec<&Issue> {
        let mut out = Vec::new();
        let mut seen: HashSet<&IssueId> = HashSet::from([root]);
        let mut queue: VecDeque<&IssueId> = VecDeque::from([root]);
        while let Some(current) = queue.pop_front() {
            for child in self.children(current) {
                if seen.insert(child) {
                    if let Some(issue) = self.get(child) {
                        out.push(issue);
                    }
                    queue.push_back(child);
                }
            }
        }
        out
    }

    /// The issue's parent through its parent-child edge, if any.
    pub fn parent(&self, id: &IssueId) -> Option<&IssueId> {
        self.get(id)?.parent.as_ref()
    }

    /// The nearest ancestor of type epic, walking through non-epic parents.
    pub fn parent_epic(&self, id: &IssueId) -> Option<&Issue> {
        let mut seen: HashSet<&IssueId> = HashSet::from([id]);
        let mut current = self.parent(id)?;
        loop {
            if !seen.insert(current) {
                return None;
            }
            let issue = self.get(current)?;
            if issue.issue_type == IssueType::Epic {
                return Some(issue);
            }
            current = issue.parent.as_ref()?;
        }
    }

    /// All ancestors, nearest first.
    pub fn ancestors(&self, id: &IssueId) -> Vec<&Issue> {
        let mut out = Vec::new();
        let mut seen: HashSet<&IssueId> = HashSet::from([id]);
        let mut current = self.parent(id);
        while let Some(parent) = current {
            if !seen.insert(parent) {
                break;
            }
            let Some(issue) = self.get(parent) else { break };
            out.push(issue);
            current = issue.parent.as_ref();
        }
        out
    }

    /// Progress of every epic that is not closed, as `br epic status` reports it.
    pub fn epic_status(&self) -> Vec<EpicStatus> {
        self.issues
            .iter()
            .filter(|issue| issue.issue_type == IssueType::Epic && !issue.status.is_terminal())
            .map(|epic| {
                let kids: Vec<&Issue> = self
                    .children(&epic.id)
                    .iter()
                    .filter_map(|id| self.get(id))
                    .collect();
                let closed = kids
                    .iter()
                    .filter(|kid| kid.status == IssueStatus::Closed)
                    .count();
                EpicStatus {
                    epic: epic.id.clone(),
                    total_children: kids.len(),
                    closed_children: closed,
                    eligible_for_close: !kids.is_empty() && closed == kids.len(),
                }
            })
            .collect()
    }
}

/// Whether an issue is in br's ready set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    /// Only `open` issues are ready.
    Status(IssueStatus),
    /// Pinned, a template, or a wisp.
    Held,
    /// `defer_until` lies in the future.
    Deferred,
    Blocked(Vec<Blocker>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use mala_core::Dependency;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn issue(id: &str) -> Issue {
        Issue::new(id, id, at(0))
    }

    fn with_dep(mut issue: Issue, on: &str, kind: DependencyKind) -> Issue {
        if kind == DependencyKind::ParentChild {
            issue.parent = Some(on.into());
        }
        issue.dependencies.push(Dependency {
            depends_on: on.into(),
            kind,
        });
        issue
    }

    fn epic(id: &str) -> Issue {
        Issue {
            issue_type: IssueType::Epic,
            ..issue(id)
        }
    }

    fn closed(issue: Issue) -> Issue {
        Issue {
            status: IssueStatus::Closed,
            ..issue
        }
    }

    fn ready_ids(graph: &IssueGraph) -> Vec<&str> {
        let mut ids: Vec<&str> = graph.ready(at(10)).iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn open_blockers_block_and_closed_or_missing_ones_do_not() {
        let graph = IssueGraph::new(vec![
            with_dep(issue("a"), "b", DependencyKind::Blocks),
            issue("b"),
            with_dep(issue("c"), "d", DependencyKind::Blocks),
            closed(issue("d")),
            with_dep(issue("e"), "missing", DependencyKind::Blocks),
            with_dep(issue("f"), "b", DependencyKind::Other("related".into())),
        ]);
        assert_eq!(ready_ids(&graph), vec!["b", "c", "e", "f"]);
        assert_eq!(graph.blockers(&"a".into()), &[Blocker::Issue("b".into())]);
    }

    #[test]
    fn an_epic_waits_for_its_open_children_but_does_not_block_them() {
        let graph = IssueGraph::new(vec![
            epic("e"),
            with_dep(issue("e.1"), "e", DependencyKind::ParentChild),
            with_dep(closed(issue("e.2")), "e", DependencyKind::ParentChild),
        ]);
        assert_eq!(ready_ids(&graph), vec!["e.1"]);
        assert_eq!(
            graph.blockers(&"e".into()),
            &[Blocker::OpenChild("e.1".into())]
        );
    }

    #[test]
    fn a_blocked_ancestor_blocks_every_descendant() {
        let graph = IssueGraph::new(vec![
            with_dep(epic("e"), "x", DependencyKind::Blocks),
            issue("x"),
            with_dep(issue("e.1"), "e", DependencyKind::ParentChild),
            with_dep(issue("e.1.1"), "e.1", DependencyKind::ParentChild),
        ]);
        assert_eq!(ready_ids(&graph), vec!["x"]);
        assert_eq!(
            graph.blockers(&"e.1.1".into()),
            &[Blocker::Ancestor("e.1".into())]
        );
    }

    #[test]
    fn a_task_parent_with_open_children_stays_ready() {
        let graph = IssueGraph::new(vec![
            issue("p"),
            with_dep(issue("p.1"), "p", DependencyKind::ParentChild),
        ]);
        assert_eq!(ready_ids(&graph), vec!["p", "p.1"]);
    }

    #[test]
    fn only_open_unheld_undeferred_issues_are_ready() {
        let graph = IssueGraph::new(vec![
            Issue {
                status: IssueStatus::InProgress,
                ..issue("wip")
            },
            Issue {
                status: IssueStatus::Other("ready".into()),
                ..issue("custom")
            },
            Issue {
                defer_until: Some(at(100)),
                ..issue("later")
            },
            Issue {
                defer_until: Some(at(5)),
                ..issue("past")
            },
            Issue {
                pinned: true,
                ..issue("pin")
            },
            issue("x-wisp-1"),
            issue("plain"),
        ]);
        assert_eq!(ready_ids(&graph), vec!["past", "plain"]);
    }

    #[test]
    fn parents_descendants_and_epic_status_follow_the_tree() {
        let graph = IssueGraph::new(vec![
            epic("e"),
            with_dep(issue("e.1"), "e", DependencyKind::ParentChild),
            with_dep(issue("e.1.1"), "e.1", DependencyKind::ParentChild),
            with_dep(closed(issue("e.2")), "e", DependencyKind::ParentChild),
            epic("empty"),
            // A cycle in the parent tree must not hang anything.
            with_dep(issue("c1"), "c2", DependencyKind::ParentChild),
            with_dep(issue("c2"), "c1", DependencyKind::ParentChild),
        ]);
        let descendants: Vec<&str> = graph
            .descendants(&"e".into())
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(descendants, vec!["e.1", "e.2", "e.1.1"]);
        assert_eq!(
            graph.parent_epic(&"e.1.1".into()).map(|e| e.id.as_str()),
            Some("e")
        );
        assert_eq!(graph.parent_epic(&"c1".into()), None);
        assert_eq!(graph.descendants(&"c1".into()).len(), 1);
        let status = graph.epic_status();
        assert_eq!(status.len(), 2);
        assert_eq!(
            (status[0].total_children, status[0].closed_children),
            (2, 1)
        );
        assert!(!status[0].eligible_for_close);
        assert!(
            !status[1].eligible_for_close,
            "an epic without children is not eligible"
        );
    }
}
