//! Projects: a group of services applied together, as a Compose file's services are
//! (`PUT /v1/projects/{name}`). A project is also its services' discovery namespace.
//!
//! A project exists while it has services: it is the `project` of the services its applies
//! created ([`crate::service::ServiceInfo::project`]). An apply changes and removes only the
//! project's own services: a service of the same name created by hand, or by another
//! project, is never taken over (the apply is refused).

use serde::{Deserialize, Serialize};

use crate::service::ServiceInfo;

/// `PUT /v1/projects/{name}`: the services the project should have, applied in one
/// transaction: a task definition is registered only when it differs from its family's newest
/// active revision, a service is created, updated (a new deployment when its revision
/// changed) or left as it is; nothing changes when nothing differs. Any refusal (an invalid
/// input, a service owned by someone else, a `schedulingStrategy` that changed) changes
/// nothing at all.
///
/// The project's name is a DNS label (`flotilla_api::discovery::is_label`); at most
/// [`MAX_SERVICES`] services.
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
    /// The task definition: Amazon ECS's `RegisterTaskDefinition` input (checked as
    /// `POST /v1/taskdefs` checks it, its secrets and configs included).
    pub task_definition: serde_json::Value,
    /// The service: Amazon ECS's `CreateService` input. Its `taskDefinition` is absent or the
    /// family above (the revision is the one this apply registers or finds). Its
    /// `discovery.namespace` is absent — it is then the project — or the project; a service
    /// without `discovery` does not register for DNS.
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
    /// Ignored fields of the inputs, each with its service and JSON path
    /// (`web: $.services[0].service.launchType: ignored (AWS only)`), and counts left to auto
    /// scaling.
    pub warnings: Vec<String>,
    /// The task definition revisions (`family:revision`) a removal deregistered: the active
    /// revisions of the removed services' families that nothing uses any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deregistered: Vec<String>,
}

/// Most services one project has: an apply is one command of the control plane's core, which
/// runs one command at a time, and one store transaction; a Compose file is a handful of
/// services, so 100 leaves room and keeps an apply (and its body) small.
pub const MAX_SERVICES: usize = 100;

/// Largest body of `PUT /v1/projects/{name}` ([`ProjectApply`] as JSON): a project carries
/// every service's task definition and service in one body; a real definition with its
/// environment is a few KiB, so 1 MiB is 10 KiB for each of [`MAX_SERVICES`].
pub const MAX_APPLY_BYTES: usize = 1024 * 1024;

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
