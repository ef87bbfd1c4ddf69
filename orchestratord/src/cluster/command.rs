//! What the core is asked ([`Command`]) and what it answers ([`Outcome`]: a [`Reply`] and the
//! [`Effect`]s the adapters carry out), or why it refused ([`ClusterError`]).

use std::sync::Arc;

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::ops::{
    AdminCredential, AdminIssue, Event, NodeInfo, NodeLabels, TaskDefRegistered, TaskDefRevision,
    TaskInfo, TaskRun, TokenCreate, TokenCreated, TokenInfo,
};
use flotilla_api::project::{ProjectApplied, ProjectApply, ProjectInfo, ProjectSummary};
use flotilla_api::scaling::{ScalingPut, ServiceScaling};
use flotilla_api::schedule::{ScheduleInfo, ScheduleSpec};
use flotilla_api::service::{ServiceCreated, ServiceInfo, ServiceUpdate};
use flotilla_api::tasks::{DesiredState, TaskStatus, TaskUsage};
use flotilla_api::{AgentReply, Hello, HelloReply, JoinReply, JoinRequest, NodeResources};

use super::store::StoreError;

/// The time a command runs at: wall-clock milliseconds since the epoch, read by the thread
/// that runs the core (tests pass their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// Milliseconds since the epoch.
    pub unix_ms: u64,
}

impl Now {
    /// Seconds since the epoch.
    pub fn secs(self) -> u64 {
        self.unix_ms / 1000
    }
}

/// A live agent session, as the transport numbers it (a reconnect is a new session).
pub type SessionId = u64;

/// Everything the core is asked: operators' requests, what agents say, and timer ticks.
#[derive(Debug, Clone)]
pub enum Command {
    /// An operator's request (the HTTPS API).
    Operator(Operator),
    /// What an agent says (QUIC); the node id comes from its verified certificate.
    Agent(Agent),
    /// A timer.
    Tick(Tick),
    /// Whether the store answers (the systemd watchdog).
    Health,
    /// The cluster's state in numbers and the core's counters, for a metrics scrape: read from
    /// memory, nothing written (`gauges::snapshot` says what it costs).
    Metrics,
}

/// Secrets or configs: what `secrets.rs`'s handlers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Sealed values, given as environment variables and files in /run/secrets.
    Secret,
    /// Values as they are, mounted as files.
    Config,
}

/// An operator's request.
#[derive(Debug, Clone)]
pub enum Operator {
    /// `POST /v1/tokens`.
    CreateToken(TokenCreate),
    /// `GET /v1/tokens`.
    ListTokens,
    /// `DELETE /v1/tokens/{id}`.
    RemoveToken(String),
    /// `GET /v1/nodes[?status=…&label=…&maxResults=N&nextToken=T]`: the nodes a filter
    /// matches, whole or a page (answered [`Reply::Nodes`]; see `listing.rs`).
    ListNodes(flotilla_api::page::NodeQuery),
    /// `GET /v1/nodes/{id}`.
    GetNode(String),
    /// `POST /v1/nodes/{id}/revoke`.
    RevokeNode(String),
    /// `PUT /v1/nodes/{id}/labels`.
    LabelNode(String, NodeLabels),
    /// `POST /v1/nodes/{id}/drain` (true) or `/activate` (false).
    DrainNode(String, bool),
    /// `DELETE /v1/nodes/{id}[?force=true]`.
    RemoveNode(String, bool),
    /// `POST /v1/admins`.
    IssueAdmin(AdminIssue),
    /// `POST /v1/taskdefs` (the JSON or YAML text).
    RegisterTaskDef(String),
    /// `GET /v1/taskdefs`.
    ListTaskDefs,
    /// `GET /v1/taskdefs/{family[:revision]}`.
    GetTaskDef(String, Option<u32>),
    /// `POST /v1/taskdefs/{family:revision}/deregister`.
    DeregisterTaskDef(String, u32),
    /// `POST /v1/tasks`.
    RunTask(TaskRun),
    /// `GET /v1/tasks[?node=…&service=…&family=…&startedBy=…&state=…&desiredStatus=…
    /// &maxResults=N&nextToken=T]`: the tasks a filter matches, whole or a page (answered
    /// [`Reply::Tasks`]; see `listing.rs`).
    ListTasks(flotilla_api::page::TaskQuery),
    /// `GET /v1/tasks/{id}`.
    GetTask(String),
    /// `POST /v1/tasks/{id}/stop`.
    StopTask(String),
    /// The node a task's logs are read from (`GET /v1/tasks/{id}/logs`).
    LogSource(String),
    /// The node `POST /v1/tasks/{id}/exec` runs a command on; the exec is recorded as a
    /// `task.exec` event naming the admin, the container and the command.
    Exec {
        /// The task.
        task: String,
        /// The container asked for (the task's first when `None`); one the task definition
        /// lacks is refused (not found).
        container: Option<String>,
        /// The command, as events show it.
        command: String,
        /// The admin asking, by the name in their client certificate.
        admin: String,
    },
    /// `POST /v1/secrets`.
    CreateSecret(flotilla_api::secrets::SecretPut),
    /// `POST /v1/secrets/{name}/versions`.
    RotateSecret(String, flotilla_api::secrets::SecretValue),
    /// `GET /v1/secrets`.
    ListSecrets,
    /// `GET /v1/secrets/{name}`.
    GetSecret(String),
    /// `DELETE /v1/secrets/{name}[?force=true]`.
    RemoveSecret(String, bool),
    /// `POST /v1/configs`.
    CreateConfig(flotilla_api::secrets::SecretPut),
    /// `POST /v1/configs/{name}/versions`.
    UpdateConfig(String, flotilla_api::secrets::SecretValue),
    /// `GET /v1/configs`.
    ListConfigs,
    /// `GET /v1/configs/{name}`.
    GetConfig(String),
    /// `DELETE /v1/configs/{name}[?force=true]`.
    RemoveConfig(String, bool),
    /// `POST /v1/images`: the images of an archive whose blobs the adapter has stored.
    PutImages(Vec<flotilla_api::images::StoredImage>),
    /// `GET /v1/images`.
    ListImages,
    /// `GET /v1/images/{reference}`: a reference as given, looked up under
    /// `flotilla_oci::ImageRef::lookup_names` (a short name also finds its `localhost/` image).
    GetImage(String),
    /// `DELETE /v1/images/{reference}`, looked up as [`Operator::GetImage`] is.
    RemoveImage(String),
    /// The digests of every blob an image references (the content store's start-up sweep).
    ReferencedBlobs,
    /// `GET /v1/events`.
    ListEvents {
        /// After this sequence number.
        since: u64,
        /// At most this many.
        limit: usize,
        /// Only these.
        filter: flotilla_api::ops::EventFilter,
    },
    /// `POST /v1/services` (the JSON or YAML text).
    CreateService(String),
    /// `GET /v1/services`.
    ListServices,
    /// `GET /v1/services/{name}`.
    GetService(String),
    /// `GET /v1/services/{name}/endpoints`.
    ServiceEndpoints(String),
    /// `PUT /v1/services/{name}`.
    UpdateService(String, ServiceUpdate),
    /// `DELETE /v1/services/{name}`.
    RemoveService(String),
    /// `GET /v1/services/{name}/scaling`.
    GetScaling(String),
    /// `PUT /v1/services/{name}/scaling` (the body's text).
    Autoscale(String, String),
    /// `DELETE /v1/services/{name}/scaling`.
    DeregisterScaling(String),
    /// `POST /v1/services/{name}/scaling/policies` (the document's text).
    PutScalingPolicy(String, String),
    /// `DELETE /v1/services/{name}/scaling/policies/{policy}`.
    RemoveScalingPolicy(String, String),
    /// `POST /v1/services/{name}/scaling/scheduled-actions` (the document's text).
    PutScheduledAction(String, String),
    /// `DELETE /v1/services/{name}/scaling/scheduled-actions/{action}`.
    RemoveScheduledAction(String, String),
    /// `POST /v1/schedules`.
    CreateSchedule(ScheduleSpec),
    /// `GET /v1/schedules`.
    ListSchedules,
    /// `GET /v1/schedules/{name}`.
    GetSchedule(String),
    /// `DELETE /v1/schedules/{name}`.
    RemoveSchedule(String),
    /// `PUT /v1/projects/{name}`: the project's services applied in this one command
    /// (answered [`Reply::ProjectApplied`]; see `projects.rs`).
    ApplyProject(String, ProjectApply),
    /// `GET /v1/projects` (answered [`Reply::Projects`]).
    ListProjects,
    /// `GET /v1/projects/{name}` (answered [`Reply::Project`]).
    GetProject(String),
    /// `DELETE /v1/projects/{name}`: its services deleted, their families' unused active
    /// revisions deregistered (answered [`Reply::ProjectApplied`]).
    RemoveProject(String),
}

/// What an agent says.
#[derive(Debug, Clone)]
pub enum Agent {
    /// Enrollment with a join token (no certificate yet).
    Join {
        /// The request.
        request: JoinRequest,
        /// Where it came from (for the event).
        peer: String,
    },
    /// The first message of a session.
    Hello {
        /// The node, from its certificate.
        node: String,
        /// The session.
        session: SessionId,
        /// What it says.
        hello: Hello,
        /// The address its session comes from (when it gives none).
        remote: Option<std::net::Ipv4Addr>,
    },
    /// A session ended.
    SessionClosed {
        /// The node.
        node: String,
        /// The session that ended.
        session: SessionId,
    },
    /// A ping (the node is there).
    Ping {
        /// The node.
        node: String,
    },
    /// Resources and usage, every heartbeat.
    Heartbeat {
        /// The node.
        node: String,
        /// Its capacity and load.
        resources: NodeResources,
        /// Its containers' usage.
        usage: Vec<TaskUsage>,
    },
    /// The state of its tasks.
    Report {
        /// The node.
        node: String,
        /// Its tasks.
        tasks: Vec<TaskStatus>,
    },
    /// A certificate renewal.
    Renew {
        /// The node.
        node: String,
        /// The CSR (PEM).
        csr_pem: String,
    },
    /// It persisted a desired state.
    DesiredAcked {
        /// The node.
        node: String,
        /// The generation it holds.
        generation: u64,
    },
    /// A registry push to it was answered, or given up on: the next one may go.
    RegistryAnswered {
        /// The node.
        node: String,
        /// The session it was pushed on (an answer on an older session is not this one's).
        session: SessionId,
        /// The version pushed.
        pushed: u64,
        /// What the push applied to (`None`: the whole registry).
        from: Option<u64>,
        /// What it answered.
        answer: RegistryAnswer,
    },
    /// It asks for a version of a secret or a config (see `secrets::fetch`).
    FetchSecret {
        /// Secret or config.
        kind: SecretKind,
        /// The node.
        node: String,
        /// The secret.
        name: String,
        /// The version.
        version: u32,
    },
    /// It asks for an image of the content store (see `images::for_node`): answered only
    /// when a task placed on it and not `STOPPED` uses the image, or a prefetch asked it for
    /// the image.
    Image {
        /// The node.
        node: String,
        /// The image's reference as the node asked for it, looked up under
        /// `flotilla_oci::ImageRef::lookup_names`.
        image: String,
        /// The references of the images a prefetch in progress asked this node for, as the
        /// operator gave them (the adapter's record: a prefetch is not in the core).
        prefetching: Vec<String>,
    },
    /// It asks for a blob of the content store (see `images::blob_for_node`): `Reply::Done`
    /// when the digest is the manifest, config or a layer of an image it may get (as
    /// [`Agent::Image`]), before the adapter sends it; otherwise refused.
    Blob {
        /// The node.
        node: String,
        /// The digest it asks for, as it sent it (not yet parsed).
        digest: String,
        /// As [`Agent::Image`]'s.
        prefetching: Vec<String>,
    },
    /// It refused a desired state (it never should).
    DesiredRefused {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// How a node answered a registry push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryAnswer {
    /// It holds this version (another than the one pushed: a delta that did not follow what
    /// it held, or a whole registry older than its own).
    Holds(u64),
    /// It refused the push (a frame it could not read or apply, a row over its budget, a
    /// registry it could not persist): sent again as it was, it would likely be refused again
    /// (`discovery::answered`).
    Refused,
    /// No answer came (the session ended, or the push's time ran out): the node may or may
    /// not hold it.
    Unanswered,
}

/// A timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Tasks on nodes silent longer than their service allows are recorded lost.
    NodeLossCheck,
    /// Every service is planned and its plan applied; VIPs assigned; the discovery registry
    /// recomputed.
    ServiceRound,
    /// Unpinned schedules that are due fire.
    ScheduleRound,
    /// The records of tasks stopped longer than their retention are removed.
    PruneStopped,
    /// Every scaling period: services with a scalable target get a datapoint, their due
    /// scheduled actions and the scaling planner's decision.
    ScalingRound,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done; nothing to say (`204`).
    Done,
    /// A token was created.
    TokenCreated(TokenCreated),
    /// Tokens.
    Tokens(Vec<TokenInfo>),
    /// Nodes (a page of them, with where the next starts).
    Nodes(flotilla_api::page::Page<NodeInfo, flotilla_api::page::NodeCursor>),
    /// A node.
    Node(NodeInfo),
    /// An admin credential.
    AdminCredential(AdminCredential),
    /// A task definition was registered.
    TaskDefRegistered(TaskDefRegistered),
    /// Task definition revisions.
    TaskDefs(Vec<TaskDefRevision>),
    /// A task definition revision.
    TaskDef(TaskDefRevision),
    /// Tasks were created.
    TasksCreated(Vec<TaskInfo>),
    /// Tasks (a page of them, with where the next starts).
    Tasks(flotilla_api::page::Page<TaskInfo, flotilla_api::page::TaskCursor>),
    /// A task.
    Task(TaskInfo),
    /// The node a task's logs are read from.
    LogSource {
        /// The task.
        task: String,
        /// Its node.
        node: String,
    },
    /// The node an exec runs on, and the container (the one asked for, or the task's first).
    ExecTarget {
        /// Its node.
        node: String,
        /// The container's name in the task definition.
        container: String,
    },
    /// Events.
    Events(Vec<Event>),
    /// The images a push recorded.
    ImagesPushed(Vec<flotilla_api::images::StoredImage>),
    /// Images of the content store.
    Images(Vec<flotilla_api::images::StoredImage>),
    /// An image of the content store.
    Image(flotilla_api::images::StoredImage),
    /// An image removed, and the blobs to delete.
    ImageRemoved(flotilla_api::images::ImageRemoved),
    /// Digests of blobs (`sha256:…`).
    Blobs(std::collections::BTreeSet<String>),
    /// A secret (or config) was created: its metadata.
    SecretCreated(flotilla_api::secrets::SecretInfo),
    /// A secret's (or config's) metadata.
    Secret(flotilla_api::secrets::SecretInfo),
    /// Secrets' metadata.
    Secrets(Vec<flotilla_api::secrets::SecretInfo>),
    /// A service was created.
    ServiceCreated(Box<ServiceCreated>),
    /// Services.
    Services(Vec<ServiceInfo>),
    /// A service.
    Service(Box<ServiceInfo>),
    /// What DNS answers for a service.
    Endpoints(DiscoveredService),
    /// A schedule was created.
    ScheduleCreated(ScheduleInfo),
    /// Schedules.
    Schedules(Vec<ScheduleInfo>),
    /// A schedule.
    Schedule(ScheduleInfo),
    /// A service's auto scaling.
    Scaling(Box<ServiceScaling>),
    /// A service's auto scaling after a document was put, with the document's ignored fields.
    ScalingPut(Box<ScalingPut>),
    /// The answer to a join.
    Join(Box<JoinReply>),
    /// The answer to a hello.
    Hello(HelloReply),
    /// The session is refused without an answer: close it with this code.
    CloseSession {
        /// Why, as a close code.
        code: CloseCode,
        /// Why, for the node's log.
        reason: String,
    },
    /// The answer to an agent's request.
    Agent(AgentReply),
    /// The store's health.
    Health(bool),
    /// The metrics' snapshot.
    Metrics(Box<super::metrics::Snapshot>),
    /// What a project's apply or removal did to each of its services.
    ProjectApplied(Box<ProjectApplied>),
    /// Projects.
    Projects(Vec<ProjectSummary>),
    /// A project.
    Project(Box<ProjectInfo>),
}

/// Something the adapters do for the core after it committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a node its desired state over its live session (nothing if it has none: it gets it
    /// when its next session starts).
    PushDesired {
        /// The node.
        node: String,
        /// Its desired state.
        state: Box<DesiredState>,
        /// The registry version the node is to hold first, when a registry push to it is
        /// under way: a task it starts gets its namespace's services in its environment from
        /// the registry, which then follows from the same records as its desired state.
        registry: Option<u64>,
    },
    /// Send nodes the discovery registry, or what changed in it since the version they hold:
    /// encoded once for all of them.
    PushRegistry {
        /// The nodes.
        nodes: Vec<String>,
        /// What they are sent.
        push: RegistryPush,
    },
    /// End a node's live session.
    CloseSession {
        /// The node.
        node: String,
        /// Why, as a close code.
        code: CloseCode,
        /// Why, for the node's log.
        reason: String,
    },
    /// Run a service round soon (an operator changed a service).
    WakeServices,
}

/// A registry push, encoded once for every node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPush {
    /// The version it brings a node to.
    pub version: u64,
    /// The version it applies to: `None` for the whole registry, else a delta.
    pub from: Option<u64>,
    /// The frames, written one after the other on one stream: a `ServerPush::Registry`, one
    /// `ServerPush::RegistryDelta`, or (protocol 4) the deltas of each change since `from`,
    /// oldest first, each encoded once for every node behind it.
    pub frames: Vec<Arc<[u8]>>,
}

/// Why a session is closed (QUIC application close codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Refused: unknown or removed node, bad hello, replaced.
    Refused = 1,
    /// The node was revoked.
    Revoked = 2,
}

/// What a command did: its reply and what the adapters must do.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The reply.
    pub reply: Reply,
    /// Effects, in order.
    pub effects: Vec<Effect>,
}

/// Why a command was refused or failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the cluster's state (exists already, no room, draining …).
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid; `problems` names each by field or JSON path.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Each problem.
        problems: Vec<String>,
    },
    /// What it needs is not reachable now (a node without a session).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; the command did nothing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something the control plane itself cannot do (no randomness, a signing failure).
    #[error("{0}")]
    Internal(String),
}

impl ClusterError {
    /// An invalid request with one problem.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            problems: Vec::new(),
        }
    }
}
