//! Projects: a group of services applied together, as a Compose file's services are
//! (`PUT /v1/projects/{name}`). A project is also its services' discovery namespace.

use serde::{Deserialize, Serialize};

use crate::service::ServiceInfo;

/// `PUT /v1/projects/{name}`: the services the project should have, applied in one
/// transaction: a task definition is registered only when it differs from its family's newest
/// active revision, a service is created, updated (a new deployment when its revision
/// changed) or left as it is; nothing changes when nothing differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectApply {
    /// The services, each a task definition and a service.
    pub services: Vec<ProjectService>,
    /// Remove the project's services that are not listed (`compose up --remove-orphans`,
    /// and the last step of every `compose up`).
    #[serde(default)]
    pub remove_orphans: bool,
}

/// One service of a [`ProjectApply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectService {
    /// The task definition: Amazon ECS's `RegisterTaskDefinition` input.
    pub task_definition: serde_json::Value,
    /// The service: Amazon ECS's `CreateService` input; its `taskDefinition` is the family
    /// above (the revision is the one this apply registers or finds).
    pub service: serde_json::Value,
}

/// What an apply or a removal changed for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// New service.
    Created,
    /// New revision, count or settings.
    Updated,
    /// As it was.
    Unchanged,
    /// Removed (an orphan, or `compose down`).
    Removed,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Removed => "removed",
        })
    }
}

/// One service in a [`ProjectApplied`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChange {
    /// The Flotilla service.
    pub service: String,
    /// Its `family:revision`.
    pub task_definition: String,
    /// What happened to it.
    pub change: Change,
}

/// The answer to `PUT` and `DELETE /v1/projects/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectApplied {
    /// The project.
    pub project: String,
    /// Every service it concerned, in the order given (removed ones last).
    pub services: Vec<ServiceChange>,
    /// Ignored fields of the inputs, each with its service and JSON path.
    pub warnings: Vec<String>,
}

/// `GET /v1/projects`: one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSummary {
    /// Name.
    pub name: String,
    /// Its services.
    pub services: u32,
    /// Their tasks running.
    pub running_count: u32,
    /// Their tasks wanted.
    pub desired_count: u32,
}

/// `GET /v1/projects/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectInfo {
    /// Name.
    pub name: String,
    /// Its services, by name.
    pub services: Vec<ServiceInfo>,
}
