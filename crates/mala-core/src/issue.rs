//! Issues as mala sees them, independent of the tracker that stores them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A tracker issue id such as `mala-3f2` or `mala-3f2.1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IssueId(String);

impl IssueId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix every commit for this issue must start with: `bd-<id>:`.
    pub fn commit_prefix(&self) -> String {
        format!("bd-{}:", self.0)
    }
}

impl fmt::Display for IssueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for IssueId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Issue priority, P0 (most urgent) to P4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    pub const P0: Self = Self(0);
    pub const P1: Self = Self(1);
    pub const P2: Self = Self(2);
    pub const P3: Self = Self(3);
    pub const P4: Self = Self(4);

    /// Builds a priority from its number; `None` above 4.
    pub fn new(level: u8) -> Option<Self> {
        (level <= 4).then_some(Self(level))
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

/// A priority that is neither `0`..`4` nor `P0`..`P4`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid priority `{0}`: expected 0-4 or P0-P4")]
pub struct ParsePriorityError(pub String);

impl TryFrom<u8> for Priority {
    type Error = ParsePriorityError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value).ok_or_else(|| ParsePriorityError(value.to_string()))
    }
}

impl From<Priority> for u8 {
    fn from(value: Priority) -> Self {
        value.0
    }
}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(['P', 'p']).unwrap_or(s);
        digits
            .parse::<u8>()
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| ParsePriorityError(s.to_owned()))
    }
}

/// Workflow status. Unknown statuses are kept verbatim, as br accepts custom ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum IssueStatus {
    Open,
    InProgress,
    Blocked,
    Deferred,
    Closed,
    Tombstone,
    Other(String),
}

impl IssueStatus {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Open => "open",
            Self::InProgress => "in_progress",
            Self::Blocked => "blocked",
            Self::Deferred => "deferred",
            Self::Closed => "closed",
            Self::Tombstone => "tombstone",
            Self::Other(s) => s,
        }
    }

    /// Closed and tombstoned issues no longer block anything.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Closed | Self::Tombstone)
    }
}

impl From<String> for IssueStatus {
    fn from(value: String) -> Self {
        match value.as_str() {
            "open" => Self::Open,
            "in_progress" => Self::InProgress,
            "blocked" => Self::Blocked,
            "deferred" => Self::Deferred,
            "closed" => Self::Closed,
            "tombstone" => Self::Tombstone,
            _ => Self::Other(value),
        }
    }
}

impl From<IssueStatus> for String {
    fn from(value: IssueStatus) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for IssueStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Issue type. Unknown types are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum IssueType {
    Task,
    Bug,
    Feature,
    Epic,
    Chore,
    Other(String),
}

impl IssueType {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Task => "task",
            Self::Bug => "bug",
            Self::Feature => "feature",
            Self::Epic => "epic",
            Self::Chore => "chore",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for IssueType {
    fn from(value: String) -> Self {
        match value.as_str() {
            "task" => Self::Task,
            "bug" => Self::Bug,
            "feature" => Self::Feature,
            "epic" => Self::Epic,
            "chore" => Self::Chore,
            _ => Self::Other(value),
        }
    }
}

impl From<IssueType> for String {
    fn from(value: IssueType) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for IssueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one issue depends on another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum DependencyKind {
    /// The dependent cannot start until the other closes.
    Blocks,
    /// The dependent is a child of the other (usually an epic).
    ParentChild,
    Other(String),
}

impl DependencyKind {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Blocks => "blocks",
            Self::ParentChild => "parent-child",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for DependencyKind {
    fn from(value: String) -> Self {
        match value.as_str() {
            "blocks" => Self::Blocks,
            "parent-child" => Self::ParentChild,
            _ => Self::Other(value),
        }
    }
}

impl From<DependencyKind> for String {
    fn from(value: DependencyKind) -> Self {
        value.as_str().to_owned()
    }
}

/// An edge from the issue that carries it to `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub depends_on: IssueId,
    pub kind: DependencyKind,
}

/// One issue with the fields the pipeline uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    pub id: IssueId,
    pub title: String,
    pub description: String,
    pub acceptance_criteria: String,
    pub status: IssueStatus,
    pub priority: Priority,
    pub issue_type: IssueType,
    pub labels: Vec<String>,
    /// The parent (via a parent-child dependency), if any.
    pub parent: Option<IssueId>,
    pub dependencies: Vec<Dependency>,
    pub assignee: Option<String>,
    pub notes: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Not ready before this time (br's `defer_until`).
    pub defer_until: Option<DateTime<Utc>>,
    /// Pinned issues and templates are never ready in br.
    pub pinned: bool,
    pub is_template: bool,
}

impl Issue {
    /// The issues this one waits for (`blocks` edges only).
    pub fn blockers(&self) -> impl Iterator<Item = &IssueId> {
        self.dependencies
            .iter()
            .filter(|d| d.kind == DependencyKind::Blocks)
            .map(|d| &d.depends_on)
    }

    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }

    /// A bare issue with br's defaults, for building others with struct update syntax.
    pub fn new(id: impl Into<String>, title: impl Into<String>, created_at: DateTime<Utc>) -> Self {
        Self {
            id: IssueId::new(id),
            title: title.into(),
            description: String::new(),
            acceptance_criteria: String::new(),
            status: IssueStatus::Open,
            priority: Priority::P2,
            issue_type: IssueType::Task,
            labels: Vec::new(),
            parent: None,
            dependencies: Vec::new(),
            assignee: None,
            notes: String::new(),
            created_at,
            updated_at: created_at,
            closed_at: None,
            defer_until: None,
            pinned: false,
            is_template: false,
        }
    }
}

/// What mala asks a tracker to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewIssue {
    pub title: String,
    pub description: String,
    pub acceptance_criteria: String,
    pub issue_type: Option<IssueType>,
    pub priority: Option<Priority>,
    pub labels: Vec<String>,
    pub parent: Option<IssueId>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IssueUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Priority>,
    pub status: Option<IssueStatus>,
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
    pub notes: Option<String>,
}

/// The result of trying to claim an issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Another actor holds it; not a failure of this issue.
    AlreadyClaimed {
        by: Option<String>,
    },
    /// Open blockers remain; the issue stays eligible for later.
    Blocked {
        by: Vec<IssueId>,
    },
}

/// Progress of one epic towards closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpicStatus {
    pub epic: IssueId,
    pub total_children: usize,
    pub closed_children: usize,
    pub eligible_for_close: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_with_or_without_prefix() {
        assert_eq!("P1".parse::<Priority>(), Ok(Priority::P1));
        assert_eq!("3".parse::<Priority>(), Ok(Priority::P3));
        assert!("P5".parse::<Priority>().is_err());
        assert!("high".parse::<Priority>().is_err());
        assert_eq!(Priority::P2.to_string(), "P2");
    }

    #[test]
    fn unknown_statuses_and_types_survive_a_round_trip() {
        let status: IssueStatus = serde_json::from_str("\"review\"").unwrap();
        assert_eq!(status, IssueStatus::Other("review".into()));
        assert_eq!(serde_json::to_string(&status).unwrap(), "\"review\"");
        let ty: IssueType = serde_json::from_str("\"docs\"").unwrap();
        assert_eq!(ty.as_str(), "docs");
        let kind: DependencyKind = serde_json::from_str("\"parent-child\"").unwrap();
        assert_eq!(kind, DependencyKind::ParentChild);
    }

    #[test]
    fn commit_prefix_follows_the_bd_rule() {
        assert_eq!(IssueId::from("mala-3f2").commit_prefix(), "bd-mala-3f2:");
    }
}
