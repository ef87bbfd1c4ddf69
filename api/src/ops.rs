//! The operator API (HTTPS + JSON, admin client certificates): request and response bodies.

use serde::{Deserialize, Serialize};

use crate::Labels;

/// `POST /v1/tokens`. Unknown fields are refused (a client of an older release sending
/// `ttl_secs` is told so rather than given the default lifetime).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCreate {
    /// Lifetime in seconds (default one hour).
    pub ttl_secs: Option<u64>,
    /// Joins it allows (default one).
    pub uses: Option<u32>,
    /// Labels every node joining with it gets.
    pub labels: Labels,
}

/// A created token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    /// The full token to give `nodeagent join`.
    pub token: String,
    /// The token as listed.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// A token as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// Expiry (seconds since the epoch).
    pub expires_at: u64,
    /// Joins allowed.
    pub uses: u32,
    /// Joins done.
    pub used: u32,
    /// Labels.
    pub labels: Labels,
}

/// A node as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Host name it gave.
    pub hostname: String,
    /// Attributes.
    pub labels: Labels,
    /// Join time (seconds since the epoch).
    pub joined_at: u64,
    /// Token it joined with.
    pub token_id: String,
    /// Expiry of its newest certificate (seconds since the epoch).
    pub cert_not_after: u64,
    /// Revoked.
    pub revoked: bool,
    /// Has a live session now.
    pub connected: bool,
    /// Draining: no new tasks are placed on it.
    #[serde(default)]
    pub draining: bool,
    /// Where it is.
    pub state: NodeState,
    /// The agent's version, from its last session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Last message from the node (seconds since the epoch), since the control plane started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Capacity and load, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::NodeResources>,
    /// CPU the node used between its last two heartbeats, all its processes, thousandths of a
    /// core (filled in by the control plane when it answers; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
}

/// Where a node is, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeState {
    /// In session, taking tasks.
    Ready,
    /// In session, draining: nothing new is placed on it and its tasks are stopped.
    Draining,
    /// No live session (its tasks keep running as it last knew them).
    Disconnected,
    /// Refused for good.
    Revoked,
}

impl NodeState {
    /// As shown: `READY`, `DRAINING`, `DISCONNECTED`, `REVOKED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Draining => "DRAINING",
            Self::Disconnected => "DISCONNECTED",
            Self::Revoked => "REVOKED",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Something that happened in the cluster, as `GET /v1/events` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Sequence number, increasing.
    pub seq: u64,
    /// When (seconds since the epoch).
    pub time: u64,
    /// What kind: `node.joined`, `task.placed`, `task.stopped` …
    pub kind: String,
    /// What it is about (a node, task, token or task definition id).
    pub subject: String,
    /// For a person to read.
    pub message: String,
}

/// Which events `GET /v1/events` lists (`kind=` and `subject=` in its query): all of them
/// when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// A kind (`task.stopped`), or the leading part of kinds up to a dot (`task` matches
    /// `task.placed` and `task.stopped`; `service.deployment` every deployment event).
    pub kind: Option<String>,
    /// What they are about, exactly: a node, task, service, schedule, token or task
    /// definition (`family:revision`) id.
    pub subject: Option<String>,
}

impl EventFilter {
    /// Whether event `e` is one of those asked for.
    pub fn matches(&self, e: &Event) -> bool {
        let kind = self.kind.as_deref().is_none_or(|k| {
            e.kind == k
                || e.kind
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        kind && self.subject.as_deref().is_none_or(|s| e.subject == s)
    }
}

/// `PUT /v1/nodes/{id}/labels`: labels set (added or replaced), then labels removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLabels {
    /// Labels to add or replace.
    #[serde(default)]
    pub set: Labels,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /v1/admins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminIssue {
    /// The operator's name.
    pub name: String,
    /// CSR (PEM) of a key the operator made; the key is never sent.
    pub csr_pem: String,
}

/// An admin certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminCredential {
    /// Client certificate (PEM).
    pub cert_pem: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

/// Error body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    /// Each problem of an invalid document, by JSON path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Whether a task definition revision can start new tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskDefStatus {
    /// Usable.
    Active,
    /// Deregistered: running tasks keep running, no new ones start.
    Inactive,
}

/// A registered revision of a task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefRevision {
    /// Family.
    pub family: String,
    /// Revision, from 1 per family.
    pub revision: u32,
    /// Status.
    pub status: TaskDefStatus,
    /// Registration time (seconds since the epoch).
    pub registered_at: u64,
    /// The definition.
    pub task_definition: crate::taskdef::TaskDefinition,
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefRegistered {
    /// Family.
    pub family: String,
    /// The new revision.
    pub revision: u32,
    /// Fields that were accepted but ignored, by JSON path.
    pub warnings: Vec<String>,
}

/// `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    /// `FAMILY` (newest active revision) or `FAMILY:REVISION`.
    pub task_definition: String,
    /// Run on this node; otherwise the control plane picks.
    #[serde(default)]
    pub node: Option<String>,
    /// How many tasks.
    #[serde(default = "one")]
    pub count: u32,
    /// Environment added to every container.
    #[serde(default)]
    pub env: Vec<crate::taskdef::KeyValue>,
    /// Constraints added to the task definition's (ECS `placementConstraints`: `memberOf` with
    /// an expression, or `distinctInstance`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraintSpec>,
    /// Strategies, in order (ECS `placementStrategy`); default: spread over `instanceId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_strategy: Vec<PlacementStrategySpec>,
}

impl TaskRun {
    /// One task of `task_definition` (`FAMILY` or `FAMILY:REVISION`), placed by the control
    /// plane, with nothing added.
    pub fn new(task_definition: impl Into<String>) -> Self {
        Self {
            task_definition: task_definition.into(),
            node: None,
            count: 1,
            env: Vec::new(),
            placement_constraints: Vec::new(),
            placement_strategy: Vec::new(),
        }
    }
}

/// ECS `placementConstraints[]` of RunTask / CreateService.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConstraintSpec {
    /// `memberOf` or `distinctInstance`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The `memberOf` expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// ECS `placementStrategy[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementStrategySpec {
    /// `spread`, `binpack` or `random`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `instanceId` or `attribute:NAME` (spread), `cpu` or `memory` (binpack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn one() -> u32 {
    1
}

/// A task as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// `family:revision`.
    pub task_definition: String,
    /// The node it runs on.
    pub node: Option<String>,
    /// What the operator wants.
    pub desired: crate::tasks::DesiredStatus,
    /// Last known state.
    pub state: crate::tasks::TaskState,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Why it stopped, as a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<crate::tasks::StopCode>,
    /// Its containers, as last reported.
    #[serde(default)]
    pub containers: Vec<crate::tasks::ContainerStatus>,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// `service:NAME` for a service's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The service deployment it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Its network, as its node last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::tasks::TaskNetwork>,
    /// What the whole task uses and the memory it may use, as of its node's last heartbeat
    /// (filled in by the control plane when it answers, while the task has not stopped;
    /// never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::tasks::TaskCgroupUsage>,
    /// CPU the task used between its node's last two heartbeats, thousandths of a core (filled
    /// in by the control plane when it answers, while the task runs; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
}

impl TaskInfo {
    /// The service it belongs to: the name in its `startedBy` (`service:NAME`).
    pub fn service(&self) -> Option<&str> {
        self.started_by.as_deref()?.strip_prefix("service:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_filter_takes_a_kind_whole_or_up_to_a_dot_and_a_subject_exactly() {
        let e = |kind: &str, subject: &str| Event {
            seq: 1,
            time: 0,
            kind: kind.into(),
            subject: subject.into(),
            message: String::new(),
        };
        let f = |kind: Option<&str>, subject: Option<&str>| EventFilter {
            kind: kind.map(str::to_string),
            subject: subject.map(str::to_string),
        };
        let placed = e("service.deployment.completed", "web");
        assert!(f(None, None).matches(&placed));
        assert!(f(Some("service"), None).matches(&placed));
        assert!(f(Some("service.deployment"), None).matches(&placed));
        assert!(f(Some("service.deployment.completed"), Some("web")).matches(&placed));
        assert!(!f(Some("serv"), None).matches(&placed));
        assert!(!f(Some("service.deployment.completed.x"), None).matches(&placed));
        assert!(!f(None, Some("we")).matches(&placed));
        assert!(!f(Some("task"), Some("web")).matches(&placed));
    }
}
