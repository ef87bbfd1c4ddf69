//! Tasks on the wire: the desired state the control plane gives a node (with a generation),
//! and the status a node reports back.

use serde::{Deserialize, Serialize};

use crate::taskdef::{KeyValue, TaskDefinition};

/// What a node should run. A node persists it before acknowledging; the same generation sent
/// again changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Increases with every change for this node.
    pub generation: u64,
    /// The tasks.
    pub tasks: Vec<DesiredTask>,
    /// Schedules pinned to this node: the node fires them itself, connected or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<NodeSchedule>,
    /// The node's network settings.
    #[serde(default)]
    pub network: NodeNetwork,
}

/// Network settings the control plane gives a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// The subnet of the node's task bridge (no other node has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_subnet: Option<ipnet::Ipv4Net>,
}

/// The address an `awsvpc` task has on its node's LAN, from the cluster's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAddress {
    /// Address and prefix length of the LAN.
    pub address: ipnet::Ipv4Net,
    /// The LAN's default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// A task's network as its node set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskNetwork {
    /// `bridge`, `awsvpc`, `host` or `none`.
    pub mode: crate::taskdef::NetworkMode,
    /// The task's own address (bridge and awsvpc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<NetworkBinding>,
}

/// A published port of a task: where it is reached on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    /// Container name.
    pub container: String,
    /// Port in the container.
    pub container_port: u16,
    /// Port on the node (the container port for `host` and `awsvpc`).
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: crate::taskdef::Protocol,
}

/// A schedule a node fires on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSchedule {
    /// Schedule name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// What happens when the previous run still runs.
    pub overlap: crate::schedule::Overlap,
    /// `family:revision`.
    pub task_definition: String,
    /// The definition itself.
    pub definition: TaskDefinition,
    /// Environment added to every container.
    #[serde(default)]
    pub env: Vec<KeyValue>,
}

/// A task a node started by one of its schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRun {
    /// Schedule name.
    pub schedule: String,
    /// When it fired (seconds since the epoch, a whole minute).
    pub fired_at: u64,
}

/// The id of the task schedule `name` of node `node` starts at `fired_at`: derived, so the
/// control plane can check a node reports only runs of its own schedules.
pub fn scheduled_task_id(node: &str, name: &str, fired_at: u64) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{node}\0{name}\0{fired_at}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t-{hex}")
}

/// One task a node should run (or stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredTask {
    /// Task id.
    pub id: String,
    /// `family:revision`.
    pub task_definition: String,
    /// The definition itself, so a node needs nothing else to run it offline.
    pub definition: TaskDefinition,
    /// Environment added to every container (`task run --env`).
    #[serde(default)]
    pub env: Vec<KeyValue>,
    /// Run it, or stop it.
    pub desired: DesiredStatus,
    /// Why it is to stop, when the control plane says (otherwise "stopped by an operator").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Why it is to stop, as a code (the reason above is its text for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    /// The node stops it itself after this many seconds without the control plane (its
    /// service's `stopOnClientAfter`), before the control plane replaces it elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_client_after: Option<u32>,
    /// Its LAN address (`awsvpc` tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<TaskAddress>,
    /// The discovery namespace of its service: its DNS search domain and the services whose
    /// environment variables it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service it belongs to, if any (what its node labels its metrics with; absent from
    /// control planes of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The version of each secret its containers reference, by secret name, fixed when it
    /// was placed: what the node asks for (`AgentRequest::Secret`) and keeps sealed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_versions: std::collections::BTreeMap<String, u32>,
    /// The version of each config its containers mount, by config name, fixed when it was
    /// placed (`AgentRequest::Config`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config_versions: std::collections::BTreeMap<String, u32>,
}

/// What should happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DesiredStatus {
    /// Keep it running.
    Running,
    /// Stop it (an operator asked).
    Stopped,
}

/// ECS task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Accepted, not on a node yet.
    Provisioning,
    /// On its node, containers starting.
    Pending,
    /// Every container started.
    Running,
    /// Containers being stopped.
    Stopping,
    /// Done; see the stop reason and exit codes.
    Stopped,
}

/// Where a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Not created yet (its dependencies are not met, or its task is being set up).
    Pending,
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// It exited; see the exit code.
    Exited,
    /// It exited (see the exit code) and its restart policy starts it again, at `restartAt`:
    /// its task goes on running meanwhile.
    Restarting,
}

impl ContainerState {
    /// As shown and sent: `pending`, `created`, `running`, `exited`, `restarting`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Restarting => "restarting",
        }
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A container's health, by its `healthCheck` (ECS's `HEALTHY`/`UNHEALTHY`/`UNKNOWN`; here
/// `starting` until the check has an opinion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No verdict yet (the first check has not passed, or failures are within `startPeriod`).
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl HealthStatus {
    /// As shown and sent: `starting`, `healthy`, `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a task stopped, as a code: what logic decides by (the stop reason next to it is its
/// text for people). ECS's `stopCode` values where they exist (`TaskFailedToStart`,
/// `EssentialContainerExited`, `UserInitiated`); ECS's `ServiceSchedulerInitiated` is split by
/// cause, because a service treats a task it retired differently from one that failed. See
/// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Task.html> (`stopCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopCode {
    /// A container could not be created or started (image, mount, network …).
    TaskFailedToStart,
    /// An essential container exited, or a dependency can no longer be met.
    EssentialContainerExited,
    /// An operator stopped it (`task stop`).
    UserInitiated,
    /// Its service has more tasks than it wants.
    ServiceScaledDown,
    /// Its service's newer deployment replaced it.
    ServiceDeploymentReplaced,
    /// Its service was deleted.
    ServiceDeleted,
    /// Its node no longer matches its DAEMON service.
    ServiceNodeIneligible,
    /// It failed its health check; its service replaces it.
    ServiceTaskUnhealthy,
    /// One copy too many after its lost node came back (the service's `reconcile` policy).
    ServiceReconciled,
    /// Its node stopped it itself after `stopOnClientAfter` seconds without the control plane.
    StopOnClientAfter,
    /// Its node is draining.
    NodeDrained,
    /// Its node was removed from the cluster.
    NodeRemoved,
    /// Its schedule's next run replaced it (`overlap: replace`).
    ScheduleReplaced,
    /// Its node no longer has it in its desired state.
    NotAssigned,
}

impl StopCode {
    /// The stop reason shown when nothing more specific is known.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TaskFailedToStart => "a container could not start",
            Self::EssentialContainerExited => "an essential container exited",
            Self::UserInitiated => "stopped by an operator",
            Self::ServiceScaledDown => "service: scaled down",
            Self::ServiceDeploymentReplaced => "service: replaced by a newer deployment",
            Self::ServiceDeleted => "service: deleted",
            Self::ServiceNodeIneligible => "service: node no longer eligible",
            Self::ServiceTaskUnhealthy => "service: unhealthy",
            Self::ServiceReconciled => "service: one copy too many after its node came back",
            Self::StopOnClientAfter => {
                "service: stopped by its node without the control plane (stopOnClientAfter)"
            }
            Self::NodeDrained => "node drained",
            Self::NodeRemoved => "node removed",
            Self::ScheduleReplaced => "schedule: replaced by the next run",
            Self::NotAssigned => "no longer assigned to this node",
        }
    }

    /// The task was stopped on purpose by its service, its node's operator or its schedule —
    /// not because it failed: a service does not count it against a deployment.
    pub fn is_retirement(self) -> bool {
        matches!(
            self,
            Self::UserInitiated
                | Self::ServiceScaledDown
                | Self::ServiceDeploymentReplaced
                | Self::ServiceDeleted
                | Self::ServiceNodeIneligible
                | Self::ServiceReconciled
                | Self::StopOnClientAfter
                | Self::NodeDrained
                | Self::NodeRemoved
                | Self::ScheduleReplaced
        )
    }
}

impl std::fmt::Display for StopCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&format!("{self:?}"))
    }
}

impl ContainerStatus {
    /// It never ran: not started yet, or ended without an exit code (it could not start) and
    /// without a run before (restarted, it ran, and wrote its output then).
    pub fn never_ran(&self) -> bool {
        match self.state {
            ContainerState::Pending | ContainerState::Created => true,
            ContainerState::Exited => self.exit_code.is_none() && self.restarts == 0,
            _ => false,
        }
    }
}

/// A container as a node reports it (and as `TaskInfo` shows it). camelCase on the wire; the
/// snake_case names of the previous release are still read, so its agents report correctly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// Name in the task definition.
    pub name: String,
    /// Where it is.
    pub state: ContainerState,
    /// Exit code once exited; none for one that exited without ever running (it could not
    /// start: its reason says why), as ECS reports a container that could not start.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "exit_code")]
    pub exit_code: Option<i32>,
    /// Why it stopped (e.g. `OOM killed`, or why it could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Times the node restarted it by its restart policy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// When `restarting`: when its restart policy starts it again (seconds since the epoch;
    /// past when the start is under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<u64>,
    /// Its health check's verdict while it runs, when it has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// What it uses, as of its node's last heartbeat (filled in by the control plane when it
    /// answers; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ContainerUsage>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a running container uses, as its node last measured it (sent in heartbeats, shown in
/// `TaskInfo`). camelCase on the wire; the previous release's snake_case names are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// CPU time used since it started, microseconds.
    #[serde(alias = "cpu_usec")]
    pub cpu_usec: u64,
    /// Memory in use, bytes.
    #[serde(alias = "memory_bytes")]
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// What a whole task uses, its containers together, and the memory it may use: its cgroup on
/// its node, as its node last measured it (sent in heartbeats, shown in `TaskInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCgroupUsage {
    /// CPU time its containers used, microseconds (of those still in its cgroup).
    pub cpu_usec: u64,
    /// Memory in use by its containers together, bytes.
    pub memory_bytes: u64,
    /// Its memory limit, bytes: the task-level `memory` (none without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads of its containers.
    pub pids: u64,
    /// Its working set, bytes: memory in use less the inactive file cache (what `flotilla top`
    /// shows, as `kubectl top` does). Absent from agents of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_working_set_bytes: Option<u64>,
}

/// Usage of a task's running containers, by container name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// Task id.
    pub id: String,
    /// Container name → usage.
    pub containers: std::collections::BTreeMap<String, ContainerUsage>,
    /// The whole task's cgroup (absent from agents of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskCgroupUsage>,
}

/// A task as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// State.
    pub state: TaskState,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Why it stopped, as a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
    /// Set when the node started it by one of its schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<ScheduledRun>,
    /// Its network, once set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<TaskNetwork>,
}
