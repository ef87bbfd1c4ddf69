//! The control plane's durable records: what the store holds, one record per key in six
//! tables, plus the event log. Their JSON encoding is the on-disk format: fields are only ever
//! added (with defaults), so a newer control plane reads an older store.

use std::collections::BTreeMap;

use flotilla_api::ops::{TaskDefRevision, TaskInfo};
use flotilla_api::service::RolloutState;
use flotilla_api::taskdef::TaskDefinition;
use flotilla_api::tasks::{StopCode, TaskState};
use flotilla_api::Labels;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record of one of the store's tables.
pub trait Record: Clone + Serialize + DeserializeOwned {
    /// Its key, ordered as the table orders it.
    type Key: Ord + Clone + std::fmt::Debug;
    /// The table's name in the store.
    const TABLE: &'static str;
    /// The record's key.
    fn key(&self) -> Self::Key;
    /// The key as the store writes it (string keys sort like `Key`).
    fn key_text(key: &Self::Key) -> String;
}

/// A join token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// Expiry (seconds since the epoch).
    pub expires_at: u64,
    /// Joins it allows in total.
    pub uses: u32,
    /// Joins it was used for.
    pub used: u32,
    /// Labels every node joining with it gets.
    pub labels: Labels,
}

impl Record for TokenRecord {
    type Key = String;
    const TABLE: &'static str = "tokens";
    fn key(&self) -> String {
        self.id.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Server-assigned id.
    pub id: String,
    /// The host name the node gave when it joined.
    pub hostname: String,
    /// Attributes: the token's labels and the node's own.
    pub labels: Labels,
    /// Join time (seconds since the epoch).
    pub joined_at: u64,
    /// The token it joined with.
    pub token_id: String,
    /// Expiry of its newest certificate (seconds since the epoch).
    pub cert_not_after: u64,
    /// Revoked nodes are refused for good.
    pub revoked: bool,
    /// Generation of the node's desired state; bumped in the commit that changes it.
    #[serde(default)]
    pub generation: u64,
    /// No new tasks are placed on a draining node.
    #[serde(default)]
    pub draining: bool,
    /// Subnet of its task bridge (assigned when it joins or first connects, unique in the
    /// cluster).
    #[serde(default)]
    pub bridge_subnet: Option<ipnet::Ipv4Net>,
    /// Its address in the cluster (where its host ports are reached), as it last said.
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
    /// What it has for tasks, as it last reported (kept, so placement checks room also right
    /// after a restart of the control plane; written only when it changes).
    #[serde(default)]
    pub capacity: Option<Capacity>,
}

/// A node's room for tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPUs the agent may use.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
}

impl Record for NodeRecord {
    type Key = String;
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.id.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// An image of the content store (table `images`), keyed by its canonical name; its blobs are
/// files of the content store, outside the store's transactions (see `orchestratord`'s
/// `content.rs`).
impl Record for flotilla_api::images::StoredImage {
    type Key = String;
    const TABLE: &'static str = "images";
    fn key(&self) -> String {
        self.name.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

impl Record for TaskDefRevision {
    type Key = (String, u32);
    const TABLE: &'static str = "taskdefs";
    fn key(&self) -> (String, u32) {
        (self.family.clone(), self.revision)
    }
    /// `family\0<revision, 10 digits>`: a family's revisions sort together, in order.
    fn key_text(key: &(String, u32)) -> String {
        format!("{}\0{:010}", key.0, key.1)
    }
}

/// A service as stored: its spec and deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// As created, with later updates.
    pub spec: flotilla_api::service::ServiceSpec,
    /// The primary deployment and those still being replaced.
    pub deployments: Vec<DeploymentRecord>,
    /// The revision of the last deployment that completed (what a rollback returns to).
    #[serde(default)]
    pub last_completed: Option<TaskDefRevision>,
    /// Why its tasks could not all be placed lately.
    #[serde(default)]
    pub placement_problem: Option<String>,
    /// Its virtual address (`discovery.vip`), kept for its life.
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Creation time.
    pub created_at: u64,
    /// The project it belongs to (`PUT /v1/projects/{name}` created it), `None` for a service
    /// created by the service API. Only its project's applies change or remove it as a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl ServiceRecord {
    /// The deployment new tasks come from.
    pub fn primary(&self) -> Option<&DeploymentRecord> {
        self.deployments.iter().find(|d| d.primary)
    }
}

impl Record for ServiceRecord {
    type Key = String;
    const TABLE: &'static str = "services";
    fn key(&self) -> String {
        self.spec.service_name.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// One deployment of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Id.
    pub id: String,
    /// The revision it runs (kept whole: a deregistered revision still runs).
    pub revision: TaskDefRevision,
    /// New tasks come from it.
    pub primary: bool,
    /// Where its rollout is.
    pub rollout: RolloutState,
    /// It completed once (its rollout may be in progress again, after a scale-out or a task
    /// that ended): the circuit breaker no longer judges it.
    #[serde(default)]
    pub completed_once: bool,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Creation time.
    pub created_at: u64,
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The spec, its task definition resolved.
    pub spec: flotilla_api::schedule::ScheduleSpec,
    /// The revision it starts (kept whole).
    pub revision: TaskDefRevision,
    /// Next firing by the control plane (unpinned schedules).
    pub next_run: Option<u64>,
    /// Latest runs, newest first.
    pub runs: Vec<flotilla_api::schedule::ScheduleRun>,
    /// Creation time.
    pub created_at: u64,
}

impl Record for ScheduleRecord {
    type Key = String;
    const TABLE: &'static str = "schedules";
    fn key(&self) -> String {
        self.spec.name.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// A service's auto scaling as stored: its scalable target, policies, scheduled actions, the
/// planner's memory of its last scale-out and scale-in, and its latest decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingRecord {
    /// The service.
    pub service: String,
    /// Its bounds.
    pub target: flotilla_api::scaling::ScalableTarget,
    /// Its policies, in the order they were put.
    #[serde(default)]
    pub policies: Vec<flotilla_api::scaling::ScalingPolicy>,
    /// Its scheduled actions, each with its next minute.
    #[serde(default)]
    pub scheduled: Vec<ScheduledActionRecord>,
    /// The last scale-out: when its cooldown ends, the count before it, the count it reached.
    #[serde(default)]
    pub scale_out: Option<(u64, u32, u32)>,
    /// When the last scale-in's cooldown ends.
    #[serde(default)]
    pub scale_in_until: Option<u64>,
    /// Latest decisions, newest first.
    #[serde(default)]
    pub activities: Vec<flotilla_api::scaling::ScalingActivity>,
    /// Creation time.
    pub created_at: u64,
}

/// A scheduled action with its next firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledActionRecord {
    /// As put.
    pub action: flotilla_api::scaling::ScheduledAction,
    /// Its next minute (seconds since the epoch), if it fires again.
    pub next_run: Option<u64>,
}

impl Record for ScalingRecord {
    type Key = String;
    const TABLE: &'static str = "scaling";
    fn key(&self) -> String {
        self.service.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// A secret as stored: every version's value sealed with the control plane's sealing key
/// (`ClusterCa::sealing_key`), bound to the secret's name and version. A config is stored in
/// the same shape ([`ConfigRecord`]), its values as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Its name.
    pub name: String,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// Its versions kept, oldest first (the newest [`SecretRecord::KEPT_VERSIONS`], and any
    /// older one a task or a definition still uses).
    pub versions: Vec<SecretVersionRecord>,
    /// The highest version it ever had: numbers are never given twice, also after a removal
    /// and a new secret of the same name, so a version names one value forever.
    #[serde(default)]
    pub last_version: u32,
    /// When it was removed: the record stays, without its values, to keep `last_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
}

/// One version of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionRecord {
    /// 1, 2 …
    pub version: u32,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// The value's size, bytes.
    pub size: usize,
    /// The value, base64: sealed for a secret, as it is for a config.
    pub value: String,
}

/// A config as stored (table `configs`): a [`SecretRecord`] whose values are not sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigRecord(pub SecretRecord);

impl Record for ConfigRecord {
    type Key = String;
    const TABLE: &'static str = "configs";
    fn key(&self) -> String {
        self.0.name.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// The discovery registry's version and a digest of the services it held, kept so that a
/// control plane started again numbers the same registry as before — nodes that say they
/// hold it are sent nothing — and a new one above every version it ever sent: a node keeps a
/// newer registry over an older whole one, so a version numbered lower after a restart (a
/// clock set back) would leave nodes on a stale registry. One record, under `current`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMark {
    /// The version last numbered.
    pub version: u64,
    /// Hex SHA-256 of the registry's services as JSON.
    pub digest: String,
}

impl RegistryMark {
    /// The one record's key.
    pub const KEY: &'static str = "current";
}

impl Record for RegistryMark {
    type Key = String;
    const TABLE: &'static str = "registry";
    fn key(&self) -> String {
        Self::KEY.to_string()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

impl SecretRecord {
    /// How many of the newest versions are kept whether used or not.
    pub const KEPT_VERSIONS: usize = 10;

    /// Version `version`.
    pub fn version(&self, version: u32) -> Option<&SecretVersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&SecretVersionRecord> {
        self.versions.last()
    }
}

impl Record for SecretRecord {
    type Key = String;
    const TABLE: &'static str = "secrets";
    fn key(&self) -> String {
        self.name.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// A task as stored: what is listed, plus what the node needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The listed part.
    pub info: TaskInfo,
    /// The definition of its revision.
    pub definition: TaskDefinition,
    /// Extra environment.
    pub env: Vec<flotilla_api::taskdef::KeyValue>,
    /// When its node was found lost (a service then replaced it).
    #[serde(default)]
    pub lost_at: Option<u64>,
    /// Its LAN address (awsvpc), held until it has stopped.
    #[serde(default)]
    pub address: Option<flotilla_api::tasks::TaskAddress>,
    /// When it was first recorded `STOPPED` (seconds since the epoch): its record is removed
    /// [`super::tasks::STOPPED_RETENTION_SECS`] later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u64>,
    /// The version of each secret its containers reference (by secret name), fixed when it
    /// was placed: all its containers, and all their runs, get the same values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u32>,
    /// The version of each config its containers mount (by config name), fixed likewise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_versions: BTreeMap<String, u32>,
}

impl TaskRecord {
    /// A task just placed: `id`, of revision `task_definition` (`family:revision`) whose
    /// definition is `definition`, on `node`, created at `created_at` (seconds since the
    /// epoch); `PENDING` and desired `RUNNING`, nothing reported yet, no origin, deployment,
    /// extra environment, address or pinned secret and config versions (set those after).
    pub fn placed(
        id: String,
        task_definition: String,
        definition: TaskDefinition,
        node: &str,
        created_at: u64,
    ) -> Self {
        Self {
            info: TaskInfo {
                id,
                task_definition,
                node: Some(node.to_string()),
                desired: flotilla_api::tasks::DesiredStatus::Running,
                state: TaskState::Pending,
                stop_reason: None,
                stop_code: None,
                containers: Vec::new(),
                created_at,
                started_by: None,
                deployment: None,
                network: None,
                usage: None,
                cpu_millicores: None,
            },
            definition,
            env: Vec::new(),
            lost_at: None,
            address: None,
            stopped_at: None,
            secret_versions: BTreeMap::new(),
            config_versions: BTreeMap::new(),
        }
    }

    /// Not `STOPPED`: it holds room on its node.
    pub fn is_live(&self) -> bool {
        self.info.state != TaskState::Stopped
    }

    /// Its node.
    pub fn node(&self) -> Option<&str> {
        self.info.node.as_deref()
    }

    /// Stops recorded before stop codes existed get the code their reason names.
    pub fn upgrade(&mut self) {
        if self.info.stop_code.is_none() {
            self.info.stop_code = self.info.stop_reason.as_deref().and_then(code_of_reason);
        }
    }
}

impl Record for TaskRecord {
    type Key = String;
    const TABLE: &'static str = "tasks";
    fn key(&self) -> String {
        self.info.id.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
}

/// What started a task (its `startedBy`): a service, a schedule, or an operator (none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// `service:NAME`.
    Service(String),
    /// `schedule:NAME`.
    Schedule(String),
}

impl Origin {
    /// The `startedBy` text.
    pub fn started_by(&self) -> String {
        match self {
            Self::Service(n) => format!("service:{n}"),
            Self::Schedule(n) => format!("schedule:{n}"),
        }
    }

    /// The service a `startedBy` text names, if it names one.
    pub fn service_name(started_by: &str) -> Option<&str> {
        started_by.strip_prefix("service:")
    }

    /// What a `startedBy` text names.
    pub fn parse(started_by: &str) -> Option<Self> {
        match started_by.split_once(':') {
            Some(("service", n)) => Some(Self::Service(n.to_string())),
            Some(("schedule", n)) => Some(Self::Schedule(n.to_string())),
            _ => None,
        }
    }
}

/// The code of a stop reason written by an earlier release (which stored only the text).
fn code_of_reason(reason: &str) -> Option<StopCode> {
    use StopCode::*;
    let codes = [
        UserInitiated,
        ServiceScaledDown,
        ServiceDeploymentReplaced,
        ServiceDeleted,
        ServiceNodeIneligible,
        ServiceTaskUnhealthy,
        ServiceReconciled,
        NodeDrained,
        NodeRemoved,
        ScheduleReplaced,
        NotAssigned,
    ];
    if let Some(c) = codes.into_iter().find(|c| c.reason() == reason) {
        return Some(c);
    }
    if reason.starts_with("service: stopped by its node after") {
        Some(StopOnClientAfter)
    } else if reason.starts_with("essential container") || reason.contains("cannot start: ") {
        Some(EssentialContainerExited)
    } else if reason.contains("could not start") {
        Some(TaskFailedToStart)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_of_an_earlier_release_get_their_codes() {
        for (reason, code) in [
            ("service: scaled down", Some(StopCode::ServiceScaledDown)),
            ("service: unhealthy", Some(StopCode::ServiceTaskUnhealthy)),
            ("node drained", Some(StopCode::NodeDrained)),
            (
                "service: stopped by its node after 20 s without the control plane (stopOnClientAfter)",
                Some(StopCode::StopOnClientAfter),
            ),
            (
                "essential container main exited",
                Some(StopCode::EssentialContainerExited),
            ),
            (
                "container main could not start: pulling x: not found",
                Some(StopCode::TaskFailedToStart),
            ),
            ("something else", None),
        ] {
            assert_eq!(code_of_reason(reason), code, "{reason}");
        }
    }
}
