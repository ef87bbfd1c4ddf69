//! A harness for the core without a network (Nomad's scheduler `Harness`): a temporary redb
//! store that counts its commits, a manual clock, ids from a counter, the effects of every
//! command recorded, and a fake agent per node that reports what its desired state asks —
//! running (healthy), or failed for the families told to fail.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_api::ops::{TaskInfo, TokenCreate};
use flotilla_api::service::ServiceInfo;
use flotilla_api::tasks::{
    ContainerState, ContainerStatus, DesiredStatus, HealthStatus, StopCode, TaskState, TaskStatus,
};
use flotilla_api::{Hello, JoinReply, JoinRequest, NodeResources, PROTOCOLS};
use flotilla_certs::ClusterCa;

use super::command::{Agent, ClusterError, Command, Effect, Now, Operator, Outcome, Reply, Tick};
use super::ctx::{Config, Ids};
use super::desired;
use super::state::Txn;
use super::store::{Loaded, RedbStore, Store, StoreError, Writes};
use super::Cluster;

/// The redb store, counting its commits.
#[derive(Debug)]
pub struct Counting {
    inner: RedbStore,
    commits: Arc<AtomicU64>,
    /// While set, every commit fails (a full disk, say).
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for Counting {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }
    fn commit(&mut self, writes: &Writes) -> Result<(), StoreError> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(StoreError::Db("a commit refused by the test".into()));
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(writes)
    }
    fn healthy(&mut self) -> bool {
        self.inner.healthy()
    }
}

/// Ids from a counter: `t-000001`, `d-000002` …
#[derive(Debug, Default)]
pub struct Counter(u64);

impl Counter {
    fn next(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}-{:06}", self.0)
    }
}

impl Ids for Counter {
    fn task(&mut self) -> String {
        self.next("t")
    }
    fn deployment(&mut self) -> String {
        self.next("d")
    }
    fn node(&mut self) -> String {
        self.next("n")
    }
}

/// The cluster under test, its clock and its fake agents.
#[derive(Debug)]
pub struct Harness {
    cluster: Option<Cluster>,
    dir: tempfile::TempDir,
    config: Config,
    /// The clock.
    pub now: Now,
    /// Commits so far.
    pub commits: Arc<AtomicU64>,
    /// While set, every commit fails.
    pub refusing_commits: Arc<std::sync::atomic::AtomicBool>,
    /// Effects of every command so far.
    pub effects: Vec<Effect>,
    /// The fake agents do not answer registry pushes (see [`Harness::exec`]).
    pub withhold_registry_answers: bool,
    sessions: u64,
    /// Nodes joined, in order.
    pub nodes: Vec<String>,
    /// Nodes whose fake agent is in session.
    pub connected: BTreeSet<String>,
    /// Task definitions (`family` or `family:revision`) whose tasks fail as their node starts
    /// them (an essential container exits 1).
    pub failing: BTreeSet<String>,
    /// Task definitions whose tasks run to completion as their node starts them (their
    /// essential container exits 0).
    pub completing: BTreeSet<String>,
    /// Task definitions (`family` or `family:revision`) whose tasks stay unhealthy once running.
    pub unhealthy: BTreeSet<String>,
    /// Families or `family:revision`s whose tasks fail to start (their image cannot be
    /// pulled): STOPPED from PENDING with `TaskFailedToStart`.
    pub unstartable: BTreeSet<String>,
}

/// 2030-01-15 00:00:00 UTC.
const START_MS: u64 = 1_894_665_600_000;

impl Harness {
    /// A new cluster with nothing in it.
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A new cluster with `config`.
    pub fn with_config(config: Config) -> Self {
        // On tmpfs where there is one: commits are fsynced, and fsync there costs nothing.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        ClusterCa::generate("test")
            .expect("CA")
            .write_to(dir.path())
            .expect("write CA");
        let mut h = Self {
            cluster: None,
            dir,
            config,
            now: Now { unix_ms: START_MS },
            commits: Arc::default(),
            refusing_commits: Arc::default(),
            effects: Vec::new(),
            withhold_registry_answers: false,
            sessions: 0,
            nodes: Vec::new(),
            connected: BTreeSet::new(),
            failing: BTreeSet::new(),
            completing: BTreeSet::new(),
            unhealthy: BTreeSet::new(),
            unstartable: BTreeSet::new(),
        };
        h.open(Counter::default());
        h
    }

    fn open(&mut self, ids: Counter) {
        let store = Counting {
            inner: RedbStore::open(&self.dir.path().join("cp.redb")).expect("store"),
            commits: self.commits.clone(),
            refusing: self.refusing_commits.clone(),
        };
        let ca = ClusterCa::load(self.dir.path()).expect("CA");
        self.cluster = Some(
            Cluster::open(
                Box::new(store),
                ca,
                self.config.clone(),
                Box::new(ids),
                self.now,
            )
            .expect("open"),
        );
    }

    /// The cluster.
    pub fn cluster(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("open")
    }

    /// Restarts the core from its store (as after `kill -9`): nothing in memory survives, no
    /// node is in session until its agent says hello again. Ids continue from `ids_from`.
    pub fn restart(&mut self, ids_from: u64) {
        self.cluster = None;
        self.connected.clear();
        self.open(Counter(ids_from));
    }

    /// Moves the clock on.
    pub fn advance(&mut self, secs: u64) {
        self.now.unix_ms += secs * 1000;
    }

    /// Runs a command now; its effects are recorded. Unless `withhold_registry_answers`, each
    /// node's fake agent answers a registry push at once, holding the version pushed (what
    /// that brings about is recorded too).
    pub fn exec(&mut self, command: Command) -> Result<Reply, ClusterError> {
        let now = self.now;
        let Outcome { reply, effects } = self.cluster().execute(command, now)?;
        let mut answers = Vec::new();
        let answering = !self.withhold_registry_answers;
        for e in effects.iter().filter(|_| answering) {
            let Effect::PushRegistry { nodes, push } = e else {
                continue;
            };
            for node in nodes {
                let Some(session) = self.cluster().live.peek(node).and_then(|l| l.session) else {
                    continue;
                };
                answers.push(Command::Agent(Agent::RegistryAnswered {
                    node: node.clone(),
                    session,
                    pushed: push.version,
                    from: push.from,
                    answer: super::command::RegistryAnswer::Holds(push.version),
                }));
            }
        }
        self.effects.extend(effects);
        for answer in answers {
            self.exec(answer)?;
        }
        Ok(reply)
    }

    /// Runs an operator's request.
    pub fn op(&mut self, op: Operator) -> Result<Reply, ClusterError> {
        self.exec(Command::Operator(op))
    }

    /// Registers a task definition (JSON).
    pub fn register(&mut self, json: &str) {
        self.op(Operator::RegisterTaskDef(json.into()))
            .expect("register");
    }

    /// Enrolls a node with `labels` and `memory_mib`/`cpus` of room, and puts it in session.
    pub fn join(&mut self, labels: &[(&str, &str)], memory_mib: u64, cpus: u32) -> String {
        let Reply::TokenCreated(t) = self
            .op(Operator::CreateToken(TokenCreate::default()))
            .expect("token")
        else {
            panic!("no token")
        };
        let token: flotilla_certs::token::JoinToken = t.token.parse().expect("token");
        let key = flotilla_certs::key_and_csr("node").expect("csr");
        let request = JoinRequest {
            protocols: PROTOCOLS.to_vec(),
            token_id: token.id().to_string(),
            secret: token.secret().to_string(),
            csr_pem: key.cert_pem,
            hostname: format!("host{}", self.nodes.len()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            previous: None,
        };
        let reply = self
            .exec(Command::Agent(Agent::Join {
                request,
                peer: "192.0.2.1:4000".into(),
            }))
            .expect("join");
        let Reply::Join(j) = reply else {
            panic!("{reply:?}")
        };
        let JoinReply::Joined { node_id, .. } = *j else {
            panic!("refused: {j:?}")
        };
        self.nodes.push(node_id.clone());
        self.connect(&node_id, memory_mib, cpus);
        node_id
    }

    /// The node's fake agent says hello and sends its resources.
    pub fn connect(&mut self, node: &str, memory_mib: u64, cpus: u32) {
        self.hello(node);
        self.exec(Command::Agent(Agent::Heartbeat {
            node: node.into(),
            resources: NodeResources {
                cpus,
                memory_bytes: memory_mib << 20,
                ..NodeResources::default()
            },
            usage: Vec::new(),
        }))
        .expect("heartbeat");
    }

    /// The node's fake agent says hello (and nothing more yet).
    pub fn hello(&mut self, node: &str) {
        self.hello_speaking(node, PROTOCOLS);
    }

    /// The node's fake agent, speaking `protocols`, says hello.
    pub fn hello_speaking(&mut self, node: &str, protocols: &[u32]) {
        self.hello_holding(node, protocols, None);
    }

    /// The node's fake agent, speaking `protocols` and saying it holds `registry`, says
    /// hello.
    pub fn hello_holding(
        &mut self,
        node: &str,
        protocols: &[u32],
        registry: Option<flotilla_api::discovery::HeldRegistry>,
    ) {
        self.sessions += 1;
        let hello = Hello {
            protocols: protocols.to_vec(),
            agent_version: "test".into(),
            address: Some(std::net::Ipv4Addr::new(192, 0, 2, 10)),
            registry,
        };
        let reply = self
            .exec(Command::Agent(Agent::Hello {
                node: node.into(),
                session: self.sessions,
                hello,
                remote: None,
            }))
            .expect("hello");
        assert!(
            matches!(
                reply,
                Reply::Hello(flotilla_api::HelloReply::Welcome { .. })
            ),
            "{reply:?}"
        );
        self.connected.insert(node.to_string());
    }

    /// The node's session ends.
    pub fn disconnect(&mut self, node: &str) {
        let session = self.cluster().live.get(node).session.expect("in session");
        self.exec(Command::Agent(Agent::SessionClosed {
            node: node.into(),
            session,
        }))
        .expect("closed");
        self.connected.remove(node);
    }

    /// The node's desired state as the core has it.
    pub fn desired(&mut self, node: &str) -> flotilla_api::tasks::DesiredState {
        let c = self.cluster();
        desired::state(&Txn::new(&c.state), node).expect("node")
    }

    /// The node's fake agent reports its desired tasks as converged: running (healthy, or
    /// unhealthy for the families told so) or failed, and those to stop stopped.
    pub fn converge(&mut self, node: &str) {
        let desired = self.desired(node);
        let tasks: Vec<TaskStatus> = desired
            .tasks
            .iter()
            .map(|t| {
                let is = |set: &BTreeSet<String>| {
                    set.contains(&t.definition.family) || set.contains(&t.task_definition)
                };
                let checked = t
                    .definition
                    .container_definitions
                    .iter()
                    .any(|c| c.health_check.is_some());
                let container = |state, exit_code, health| ContainerStatus {
                    name: "main".into(),
                    state,
                    exit_code,
                    reason: None,
                    restarts: 0,
                    restart_at: None,
                    health,
                    usage: None,
                };
                let (state, code, reason, c) = match t.desired {
                    DesiredStatus::Stopped => (
                        TaskState::Stopped,
                        t.stop_code,
                        t.stop_reason.clone(),
                        container(ContainerState::Exited, Some(0), None),
                    ),
                    DesiredStatus::Running if is(&self.unstartable) => (
                        TaskState::Stopped,
                        Some(StopCode::TaskFailedToStart),
                        Some("CannotPullContainerError: main: image not found".into()),
                        container(ContainerState::Pending, None, None),
                    ),
                    DesiredStatus::Running if is(&self.completing) => (
                        TaskState::Stopped,
                        Some(StopCode::EssentialContainerExited),
                        Some("essential container main exited".into()),
                        container(ContainerState::Exited, Some(0), None),
                    ),
                    DesiredStatus::Running if is(&self.failing) => (
                        TaskState::Stopped,
                        Some(StopCode::EssentialContainerExited),
                        Some("essential container main exited".into()),
                        container(ContainerState::Exited, Some(1), None),
                    ),
                    DesiredStatus::Running => {
                        let health = checked.then(|| {
                            if is(&self.unhealthy) {
                                HealthStatus::Unhealthy
                            } else {
                                HealthStatus::Healthy
                            }
                        });
                        (
                            TaskState::Running,
                            None,
                            None,
                            container(ContainerState::Running, None, health),
                        )
                    }
                };
                TaskStatus {
                    id: t.id.clone(),
                    state,
                    stop_reason: reason,
                    stop_code: code,
                    containers: vec![c],
                    scheduled: None,
                    network: None,
                }
            })
            .collect();
        if !tasks.is_empty() {
            self.exec(Command::Agent(Agent::Report {
                node: node.into(),
                tasks,
            }))
            .expect("report");
        }
    }

    /// Every node in session converges.
    pub fn converge_all(&mut self) {
        for n in self.connected.clone() {
            self.converge(&n);
        }
    }

    /// The timers' rounds, once.
    pub fn rounds(&mut self) {
        for t in [Tick::NodeLossCheck, Tick::ServiceRound, Tick::ScheduleRound] {
            self.exec(Command::Tick(t)).expect("round");
        }
    }

    /// A second passes: the rounds run, then every node in session converges.
    pub fn step(&mut self) {
        self.advance(1);
        self.rounds();
        self.converge_all();
    }

    /// Every task.
    pub fn tasks(&mut self) -> Vec<TaskInfo> {
        match self
            .op(Operator::ListTasks(Default::default()))
            .expect("tasks")
        {
            Reply::Tasks(t) => t.items,
            other => panic!("{other:?}"),
        }
    }

    /// A service as the API shows it.
    pub fn service(&mut self, name: &str) -> ServiceInfo {
        match self.op(Operator::GetService(name.into())).expect("service") {
            Reply::Service(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    /// Creates a service (JSON).
    pub fn create_service(&mut self, json: &str) {
        self.op(Operator::CreateService(json.into()))
            .expect("create service");
    }

    /// Events of kind `kind` so far.
    pub fn events(&mut self, kind: &str) -> Vec<flotilla_api::ops::Event> {
        match self
            .op(Operator::ListEvents {
                since: 0,
                limit: 100_000,
                filter: flotilla_api::ops::EventFilter {
                    kind: Some(kind.into()),
                    subject: None,
                },
            })
            .expect("events")
        {
            Reply::Events(e) => e.into_iter().filter(|e| e.kind == kind).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// The store's file.
    pub fn store_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cp.redb")
    }

    /// Commits so far.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }
}
