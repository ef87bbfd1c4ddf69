//! A fleet simulator: fake agents, not nodes. Each simulated agent has its own node identity
//! (enrolled through the real enrollment with a join token), keeps its own mutually
//! authenticated QUIC session with the control plane and speaks the real protocol through
//! `flotilla_api`'s types and framing — hello, desired-state acknowledgements, task reports,
//! heartbeats with usage, pings, certificate renewal — with the timings of `nodeagent`
//! (`nodeagent/src/agent.rs`: pings every 10 s answered within 5 s, redial with doubling backoff
//! and jitter, `Busy` slots honoured). Its containers are simulated: a task it is given is
//! reported `PENDING`, then `RUNNING` after [`Settings::start_delay`]; a task it is told to
//! stop (or no longer given) is reported `STOPPED` after [`Settings::stop_delay`]. Nothing
//! runs, nothing is written to disk: the node's state lives in memory, across its sessions.
//!
//! Used by `bench-fleet` (thousands of agents in one process; several processes may run
//! against one control plane) and by the `fleet` system test (a few hundred, for correctness).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use flotilla_api::discovery::{DiscoveredService, HeldRegistry, Registry, RegistryDelta};
use flotilla_api::taskdef::NetworkMode;
use flotilla_api::tasks::{
    ContainerState, ContainerStatus, ContainerUsage, DesiredState, DesiredStatus, DesiredTask,
    NetworkBinding, StopCode, TaskNetwork, TaskState, TaskStatus, TaskUsage,
};
use flotilla_api::{
    read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, JoinReply, JoinRequest,
    LogFrame, NodeResources, PushReply, ServerPush, PROTOCOLS,
};
use flotilla_certs::tls::ALPN_AGENT;
use flotilla_certs::token::JoinToken;
use flotilla_certs::{key_and_csr, CertifiedKey, SERVER_NAME};
use quinn::{Connection, Endpoint};

use flotilla_api::quic::{hello_reply, HelloLost};
use flotilla_api::session::MAX_BACKOFF;
use flotilla_api::session::PING_EVERY;
use flotilla_api::session::{ping_lost, ping_timeout};
/// Close code the control plane uses for a revoked node.
const CLOSE_REVOKED: u32 = 2;
/// Memory every simulated container says it uses, bytes.
const CONTAINER_MEMORY: u64 = 4 << 20;

/// One simulated node's identity: its id and its certificate with the key made for it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The node id the control plane assigned.
    pub node_id: String,
    /// Node certificate and private key (PEM).
    pub key: CertifiedKey,
}

/// Identities enrolled with one control plane.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Where the agents dial.
    pub server: SocketAddr,
    /// The cluster CA (PEM), from the enrollment answers.
    pub ca_pem: String,
    /// The identities, in enrollment order.
    pub agents: Vec<Identity>,
}

/// Where the `index`-th socket of the simulator is bound to reach `server`. A control plane
/// on loopback is reached from an address of the socket's own in 127.1.0.0/16 (all of
/// 127.0.0.0/8 is the host's): the control plane admits a bounded share of connections from
/// one address at a time (`orchestratord`'s `ADMISSIONS_PER_ADDRESS`), and a real fleet dials
/// from as many addresses as it has nodes. Elsewhere, the host's own address: the share
/// bounds such a simulator as it bounds a site behind one NAT address.
fn bind_address(server: SocketAddr, index: usize) -> SocketAddr {
    match server.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let i = index % (1 << 16);
            SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 0))
        }
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A client endpoint on a socket of its own (the `index`-th, bound by [`bind_address`]),
/// with the control plane's buffer sizes: several dozen agents share one, and their
/// handshakes come in bursts too.
fn client_endpoint(server: SocketAddr, index: usize) -> Result<Endpoint> {
    let (socket, _) = orchestratord::udp::bind(
        bind_address(server, index),
        orchestratord::udp::BUFFER_BYTES,
    )
    .context("opening a UDP socket")?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("opening a QUIC endpoint")
}

/// Joins at a time per socket of [`enroll`].
const JOINS_PER_SOCKET: usize = 16;

/// Enrolls `n` simulated nodes at `server` with `token` (which must allow `n` more joins), at
/// most `concurrency` joins at a time, each through the real enrollment (`flotilla-join/1`,
/// the token's CA pinned, a fresh key and CSR per node). Host names are `HOST_PREFIX-<i>`.
pub async fn enroll(
    server: SocketAddr,
    token: &str,
    n: usize,
    concurrency: usize,
    host_prefix: &str,
) -> Result<Enrolled> {
    let token: JoinToken = token.parse().context("join token")?;
    // One socket (and address) for every 16 joins at a time.
    let endpoints = (0..concurrency.div_ceil(JOINS_PER_SOCKET).max(1))
        .map(|k| client_endpoint(server, k))
        .collect::<Result<Vec<_>>>()?;
    let cfg = flotilla_api::quic::client_config(
        flotilla_certs::tls::enrollment_client(*token.ca_digest())?,
        None,
    )
    .context("QUIC TLS configuration")?;
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..n {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (cfg, gate) = (cfg.clone(), gate.clone());
        let (token_id, secret) = (token.id().to_string(), token.secret().to_string());
        let hostname = format!("{host_prefix}-{i}");
        joins.spawn(async move {
            let _permit = gate.acquire().await?;
            let key = key_and_csr(&hostname)?;
            let conn = endpoint
                .connect_with(cfg, server, SERVER_NAME)?
                .await
                .with_context(|| format!("{hostname}: connecting to enroll"))?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let req = JoinRequest {
                protocols: PROTOCOLS.to_vec(),
                token_id,
                secret,
                csr_pem: key.cert_pem.clone(),
                hostname: hostname.clone(),
                labels: [("fleet-sim".to_string(), "true".to_string())].into(),
                previous: None,
            };
            write_frame(&mut send, &req).await?;
            let _ = send.finish();
            let reply: JoinReply = read_frame(&mut recv).await?;
            conn.close(quinn::VarInt::from_u32(0), b"joined");
            match reply {
                JoinReply::Joined {
                    node_id,
                    cert_pem,
                    ca_pem,
                    ..
                } => Ok((
                    i,
                    ca_pem,
                    Identity {
                        node_id,
                        key: CertifiedKey {
                            cert_pem,
                            key_pem: key.key_pem,
                        },
                    },
                )),
                JoinReply::Refused { reason } => bail!("{hostname}: enrollment refused: {reason}"),
            }
        });
    }
    let mut got = Vec::with_capacity(n);
    let mut ca = None;
    while let Some(joined) = joins.join_next().await {
        let (i, ca_pem, id) = joined.context("an enrollment task failed")??;
        ca.get_or_insert(ca_pem);
        got.push((i, id));
    }
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    got.sort_by_key(|(i, _)| *i);
    Ok(Enrolled {
        server,
        ca_pem: ca.unwrap_or_default(),
        agents: got.into_iter().map(|(_, id)| id).collect(),
    })
}

/// How the simulated agents behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between heartbeats (`nodeagent`'s default: 30 s).
    pub heartbeat: Duration,
    /// From a task's arrival to its `RUNNING` report.
    pub start_delay: Duration,
    /// From a stop to its `STOPPED` report.
    pub stop_delay: Duration,
    /// Agents sharing one UDP socket (each still has its own QUIC connection and TLS session).
    pub agents_per_socket: usize,
    /// Each agent's first dial waits a random fraction of this (zero: all at once).
    pub dial_spread: Duration,
    /// The first simulated node address is `100.64.0.0` plus this, one more per agent (what
    /// each says in its hello: where its host ports would be reached).
    pub address_offset: u32,
    /// Every this many agents, one speaks only protocol 1 (it is sent whole registries only),
    /// the one before it protocols 1 and 2 (deltas, each changed service whole) and the one
    /// before that 1 to 3 (deltas by endpoint, one at a time), as agents of earlier releases;
    /// zero: none.
    pub protocol_1_every: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            start_delay: Duration::from_millis(200),
            stop_delay: Duration::from_millis(100),
            agents_per_socket: 32,
            dial_spread: Duration::ZERO,
            address_offset: 1,
            protocol_1_every: 0,
        }
    }
}

/// A simulated task on a node.
#[derive(Debug, Clone)]
pub struct SimTask {
    /// What the control plane gave.
    pub desired: DesiredTask,
    /// Its state on the node.
    pub state: TaskState,
    /// The state the control plane last recorded from this node (`None`: never reported).
    pub reported: Option<TaskState>,
    /// When the state moves on (to `RUNNING` or `STOPPED`).
    due: Option<Instant>,
    /// Why it stopped.
    stop_code: Option<StopCode>,
    /// When it started running.
    running_since: Option<Instant>,
}

/// A task or node id as a number, the same for every simulated agent: the agents' registries
/// hold 10,000 × 10,000 endpoints at 10,000 agents, too many to keep as strings.
fn name_id(name: &str) -> u32 {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<HashMap<String, u32>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&id) = names.get(name) {
        return id;
    }
    let id = u32::try_from(names.len()).unwrap_or(u32::MAX);
    names.insert(name.to_string(), id);
    id
}

/// A service's endpoints as a simulated agent keeps them: task → node, by [`name_id`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(HashMap<u32, u32>);

impl Endpoints {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether task `task` is one.
    pub fn has_task(&self, task: &str) -> bool {
        self.0.contains_key(&name_id(task))
    }

    /// Whether one is on node `node`.
    pub fn has_node(&self, node: &str) -> bool {
        let node = name_id(node);
        self.0.values().any(|n| *n == node)
    }

    fn insert(&mut self, task: &str, node: &str) {
        self.0.insert(name_id(task), name_id(node));
    }

    fn remove(&mut self, task: &str) {
        self.0.remove(&name_id(task));
    }
}

/// What a simulated agent's discovery registry held last, reduced to what the checks read
/// (each agent holding a whole `Registry` would be 10,000 copies of a 1.2 MB registry at
/// 10,000 agents); [`RegistrySeen::apply`] follows `Registry::apply`'s rules on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySeen {
    /// Its version.
    pub version: u64,
    /// `namespace/name` → its endpoints (shared by the agents that took the same whole
    /// registry until one changes them).
    pub services: BTreeMap<String, Arc<Endpoints>>,
    /// The registry's digest (`Registry::digest`), said in a hello as `nodeagent` says it;
    /// `None` when the simulator no longer holds the registry a delta applied to whole
    /// ([`FULL_KEPT`]): the hello then says nothing and the node is sent the whole.
    pub digest: Option<Arc<str>>,
}

impl RegistrySeen {
    /// What an agent keeps of `registry` (also kept whole: [`keep_full`]).
    fn of(registry: Registry) -> Self {
        let seen = Self {
            version: registry.version,
            services: registry.services.iter().cloned().map(Self::entry).collect(),
            digest: None,
        };
        Self {
            digest: Some(keep_full(Arc::new(registry))),
            ..seen
        }
    }

    /// What a hello says of it.
    fn held(&self) -> Option<HeldRegistry> {
        Some(HeldRegistry {
            version: self.version,
            digest: self.digest.as_deref()?.to_string(),
        })
        .filter(|h| h.version != 0)
    }

    fn entry(s: DiscoveredService) -> (String, Arc<Endpoints>) {
        let mut endpoints = Endpoints::default();
        for e in &s.endpoints {
            endpoints.insert(&e.task, &e.node);
        }
        (format!("{}/{}", s.namespace, s.name), Arc::new(endpoints))
    }

    /// Applies what changed since the version held (as `nodeagent` does to its persisted
    /// registry); `false`, and nothing changed, when the delta does not follow it.
    fn apply(&mut self, delta: &RegistryDelta) -> bool {
        if delta.from != self.version {
            return false;
        }
        for k in &delta.removed {
            self.services.remove(&format!("{}/{}", k.namespace, k.name));
        }
        // A service whose endpoints change must be held (as `Registry::apply` checks).
        if delta.endpoints.iter().any(|e| {
            !delta
                .upserted
                .iter()
                .any(|s| s.namespace == e.namespace && s.name == e.name)
                && !self
                    .services
                    .contains_key(&format!("{}/{}", e.namespace, e.name))
        }) {
            return false;
        }
        self.services
            .extend(delta.upserted.iter().cloned().map(Self::entry));
        for e in &delta.endpoints {
            if let Some(held) = self
                .services
                .get_mut(&format!("{}/{}", e.namespace, e.name))
            {
                let held = Arc::make_mut(held);
                for t in &e.removed {
                    held.remove(t);
                }
                for u in &e.upserted {
                    held.insert(&u.task, &u.node);
                }
            }
        }
        self.version = delta.to;
        true
    }
}

/// A simulated agent's state: its session and its node (kept across sessions).
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// In session now (the hello was answered `Welcome`).
    pub in_session: bool,
    /// Sessions established so far.
    pub sessions: u32,
    /// When the last session was established.
    pub established_at: Option<Instant>,
    /// `Busy` answers received so far.
    pub busy: u32,
    /// Why the last session ended or failed.
    pub last_error: Option<String>,
    /// Why each session ended or each dial failed, as [`why_kind`] words it, and how often.
    pub ended: BTreeMap<String, u32>,
    /// The desired-state generation held.
    pub generation: u64,
    /// The node's tasks by id.
    pub tasks: BTreeMap<String, SimTask>,
    /// The ids in the held desired state.
    desired_ids: BTreeSet<String>,
    /// The registry held.
    pub registry: Option<RegistrySeen>,
    /// Whole registries received.
    pub registry_wholes: u32,
    /// Registry deltas received and applied.
    pub registry_deltas: u32,
    /// Registry deltas received that did not follow the version held (answered with it).
    pub registry_out_of_sequence: u32,
    /// Registry pushes that carried more than one delta applied (protocol 4).
    pub registry_pushes_in_a_row: u32,
    /// Services whose endpoints came changed one by one in the deltas received (protocol 3).
    pub registry_endpoint_changes: u32,
    /// Everything is reported at the start of a session.
    report_all: bool,
}

impl AgentState {
    /// The node's tasks in `state` that the control plane recorded in that state.
    pub fn recorded(&self, state: TaskState) -> usize {
        self.tasks
            .values()
            .filter(|t| t.state == state && t.reported == Some(state))
            .count()
    }

    /// Moves every task whose time came; true when something changed.
    fn advance(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for t in self.tasks.values_mut() {
            if t.due.is_some_and(|d| d <= now) {
                t.due = None;
                t.state = match t.state {
                    TaskState::Pending | TaskState::Provisioning => {
                        t.running_since = Some(now);
                        TaskState::Running
                    }
                    _ => TaskState::Stopped,
                };
                changed = true;
            }
        }
        changed
    }

    fn next_due(&self) -> Option<Instant> {
        self.tasks.values().filter_map(|t| t.due).min()
    }

    /// Stops task `id` (if it is not stopping already) with `code`.
    fn stop(&mut self, id: &str, code: StopCode, now: Instant, delay: Duration) {
        if let Some(t) = self.tasks.get_mut(id) {
            if t.state < TaskState::Stopping {
                t.state = TaskState::Stopping;
                t.stop_code = Some(code);
                t.due = Some(now + delay);
            }
        }
    }

    /// Takes a desired state as the runner does: only a newer generation changes anything.
    fn set_desired(&mut self, state: DesiredState, now: Instant, s: &Settings) -> u64 {
        if state.generation <= self.generation {
            return self.generation;
        }
        self.generation = state.generation;
        self.desired_ids = state.tasks.iter().map(|t| t.id.clone()).collect();
        for d in state.tasks {
            let id = d.id.clone();
            match (d.desired, self.tasks.contains_key(&id)) {
                (DesiredStatus::Running, false) => {
                    self.tasks.insert(
                        id,
                        SimTask {
                            desired: d,
                            state: TaskState::Pending,
                            reported: None,
                            due: Some(now + s.start_delay),
                            stop_code: None,
                            running_since: None,
                        },
                    );
                }
                (DesiredStatus::Stopped, false) => {
                    let code = d.stop_code.unwrap_or(StopCode::UserInitiated);
                    self.tasks.insert(
                        id,
                        SimTask {
                            desired: d,
                            state: TaskState::Stopped,
                            reported: None,
                            due: None,
                            stop_code: Some(code),
                            running_since: None,
                        },
                    );
                }
                (DesiredStatus::Stopped, true) => {
                    let code = d.stop_code.unwrap_or(StopCode::UserInitiated);
                    self.stop(&id, code, now, s.stop_delay);
                }
                (DesiredStatus::Running, true) => {}
            }
        }
        // Gone from the desired state: stopped if it still runs, forgotten once reported.
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|id| !self.desired_ids.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.stop(&id, StopCode::NotAssigned, now, s.stop_delay);
        }
        self.forget_reported();
        self.generation
    }

    /// Drops stopped tasks the control plane recorded and no longer gives.
    fn forget_reported(&mut self) {
        let desired = &self.desired_ids;
        self.tasks.retain(|id, t| {
            desired.contains(id)
                || !(t.state == TaskState::Stopped && t.reported == Some(TaskState::Stopped))
        });
    }

    /// Statuses to report: every task at the start of a session, then those that changed.
    fn to_report(&self) -> Vec<TaskStatus> {
        self.tasks
            .values()
            .filter(|t| self.report_all || t.reported != Some(t.state))
            .map(status_of)
            .collect()
    }

    fn reported(&mut self, sent: &[TaskStatus]) {
        for s in sent {
            if let Some(t) = self.tasks.get_mut(&s.id) {
                t.reported = Some(s.state);
            }
        }
        self.report_all = false;
        self.forget_reported();
    }

    fn usage(&self, now: Instant) -> Vec<TaskUsage> {
        self.tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| {
                let ran = t.running_since.map_or(0, |s| (now - s).as_micros() as u64);
                TaskUsage {
                    id: t.desired.id.clone(),
                    containers: t
                        .desired
                        .definition
                        .container_definitions
                        .iter()
                        .map(|c| {
                            (
                                c.name.clone(),
                                ContainerUsage {
                                    // 1 % of a CPU.
                                    cpu_usec: ran / 100,
                                    memory_bytes: CONTAINER_MEMORY,
                                    pids: 1,
                                },
                            )
                        })
                        .collect(),
                    // Simulated containers have no task cgroup to read.
                    task: None,
                }
            })
            .collect()
    }
}

/// A task's status as a node reports it, its containers all in the task's state and its
/// network as its definition asks (bridge bindings on ephemeral host ports unless fixed).
fn status_of(t: &SimTask) -> TaskStatus {
    let def = &t.desired.definition;
    let container_state = match t.state {
        TaskState::Provisioning | TaskState::Pending => ContainerState::Pending,
        TaskState::Running | TaskState::Stopping => ContainerState::Running,
        TaskState::Stopped => ContainerState::Exited,
    };
    let ran = t.running_since.is_some();
    let containers = def
        .container_definitions
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            state: if container_state == ContainerState::Exited && !ran {
                ContainerState::Pending
            } else {
                container_state
            },
            exit_code: (container_state == ContainerState::Exited && ran).then_some(143),
            reason: None,
            restarts: 0,
            restart_at: None,
            health: None,
            usage: None,
        })
        .collect();
    let network = (t.state == TaskState::Running).then(|| {
        let mut next_port = 32768u16;
        let bindings = def
            .container_definitions
            .iter()
            .flat_map(|c| c.port_mappings.iter().map(move |m| (c, m)))
            .map(|(c, m)| {
                let host_port = match def.network_mode {
                    NetworkMode::Bridge => m.host_port.filter(|p| *p != 0).unwrap_or_else(|| {
                        next_port += 1;
                        next_port
                    }),
                    _ => m.container_port,
                };
                NetworkBinding {
                    container: c.name.clone(),
                    container_port: m.container_port,
                    host_port,
                    protocol: m.protocol,
                }
            })
            .collect();
        TaskNetwork {
            mode: def.network_mode,
            address: match def.network_mode {
                NetworkMode::Awsvpc => t.desired.address.map(|a| a.address.addr()),
                _ => None,
            },
            bindings: match def.network_mode {
                NetworkMode::None => Vec::new(),
                _ => bindings,
            },
        }
    });
    let stopped = t.state >= TaskState::Stopping;
    TaskStatus {
        id: t.desired.id.clone(),
        state: t.state,
        stop_reason: if stopped {
            t.desired
                .stop_reason
                .clone()
                .or_else(|| t.stop_code.map(|c| c.reason().to_string()))
        } else {
            None
        },
        stop_code: if stopped { t.stop_code } else { None },
        containers,
        scheduled: None,
        network,
    }
}

/// One simulated agent as observers see it.
#[derive(Debug)]
pub struct AgentView {
    /// Its node id.
    pub node_id: String,
    /// The address it says in its hello.
    pub address: Ipv4Addr,
    state: Mutex<AgentState>,
    /// Ends its session when notified (it dials again as after any loss).
    drop_session: tokio::sync::Notify,
}

impl AgentView {
    /// Its state now.
    pub fn state(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends its session now (it dials again after its backoff); with `restarted` it also
    /// forgets its registry, as an agent whose data directory was lost.
    pub fn reconnect(&self, restarted: bool) {
        if restarted {
            self.state().registry = None;
        }
        self.drop_session.notify_one();
    }
}

/// What all agents of a simulator share: their views and the measurements.
#[derive(Debug)]
pub struct Shared {
    /// Every agent, in enrollment order.
    pub agents: Vec<Arc<AgentView>>,
    heartbeat_rtts: Mutex<Vec<Duration>>,
}

impl Shared {
    /// Agents for which `f` holds now.
    pub fn count(&self, f: impl Fn(&AgentState) -> bool) -> usize {
        self.agents.iter().filter(|a| f(&a.state())).count()
    }

    /// Heartbeat round trips (request sent to `Recorded` read) measured since the last call.
    pub fn take_heartbeat_rtts(&self) -> Vec<Duration> {
        std::mem::take(
            &mut *self
                .heartbeat_rtts
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// A running fleet of simulated agents; dropping it stops them all (their sessions simply
/// vanish, as a power cut would).
#[derive(Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<()>,
    endpoints: Vec<Endpoint>,
}

impl Simulator {
    /// Starts one simulated agent per identity of `enrolled`, each dialling at once (or within
    /// [`Settings::dial_spread`]). Must be called inside a tokio runtime.
    pub fn start(enrolled: &Enrolled, settings: Settings) -> Result<Self> {
        let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + settings.address_offset;
        let agents: Vec<Arc<AgentView>> = enrolled
            .agents
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Arc::new(AgentView {
                    node_id: id.node_id.clone(),
                    address: Ipv4Addr::from(base + i as u32),
                    state: Mutex::new(AgentState::default()),
                    drop_session: tokio::sync::Notify::new(),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            agents,
            heartbeat_rtts: Mutex::new(Vec::new()),
        });
        let mut endpoints = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let settings = Arc::new(settings);
        let per_socket = settings.agents_per_socket.max(1);
        for (i, identity) in enrolled.agents.iter().enumerate() {
            if i % per_socket == 0 {
                endpoints.push(client_endpoint(enrolled.server, endpoints.len())?);
            }
            let endpoint = endpoints[endpoints.len() - 1].clone();
            let agent = SimAgent {
                view: shared.agents[i].clone(),
                shared: shared.clone(),
                settings: settings.clone(),
                server: enrolled.server,
                ca_pem: enrolled.ca_pem.clone(),
                identity: identity.clone(),
                endpoint,
                rng: Rng::seeded(i as u64),
                protocols: speaks(i, settings.protocol_1_every),
                known_rtt: None,
            };
            tasks.spawn(agent.run());
        }
        Ok(Self {
            shared,
            tasks,
            endpoints,
        })
    }

    /// The agents and measurements.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops every agent and closes their sockets.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
        for e in &self.endpoints {
            e.close(quinn::VarInt::from_u32(0), b"fleet simulator stopping");
        }
    }
}

/// A small deterministic generator for jitter (SplitMix64).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded(i: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(t ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A fraction in `[lo, hi)`.
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The protocols simulated agent `i` says it speaks (see [`Settings::protocol_1_every`]).
pub fn speaks(i: usize, protocol_1_every: usize) -> Vec<u32> {
    let every = protocol_1_every;
    if every > 0 && i % every == every - 1 {
        vec![1]
    } else if every > 1 && i % every == every - 2 {
        vec![1, 2]
    } else if every > 2 && i % every == every - 3 {
        vec![1, 2, 3]
    } else {
        PROTOCOLS.to_vec()
    }
}

/// The kind of a session's end, for a tally: `why` with each figure (a number with its
/// decimal points and unit, as `5.2s` or `40ms`; an address, as `10.0.3.7`) as `N`, at most
/// 80 characters.
pub fn why_kind(why: &str) -> String {
    let mut kind = String::new();
    let mut chars = why.chars().peekable();
    while let Some(c) = chars.next() {
        if !c.is_ascii_digit() {
            kind.push(c);
            continue;
        }
        while chars.next_if(|c| c.is_ascii_digit() || *c == '.').is_some() {}
        while chars
            .next_if(|c| c.is_ascii_lowercase() || *c == 'µ')
            .is_some()
        {}
        kind.push('N');
    }
    kind.chars().take(80).collect()
}

/// Whether every session that ends and every dial that fails is printed (`FLEET_TRACE_DIALS`
/// set: see `bench-fleet`).
static TRACE_DIALS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FLEET_TRACE_DIALS").is_some());

/// How a session ended.
enum Ended {
    /// The control plane said when to come back.
    Busy(Duration),
    /// Lost or refused.
    Lost(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Ended {
    fn from(e: E) -> Self {
        Self::Lost(e.into())
    }
}

struct SimAgent {
    view: Arc<AgentView>,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    server: SocketAddr,
    ca_pem: String,
    identity: Identity,
    endpoint: Endpoint,
    rng: Rng,
    /// The protocol versions it says it speaks.
    protocols: Vec<u32>,
    /// The path's round-trip time as its last session knew it (as `nodeagent`).
    known_rtt: Option<Duration>,
}

impl SimAgent {
    /// Keeps a session, forever (as `nodeagent run`'s loop).
    async fn run(mut self) {
        if !self.settings.dial_spread.is_zero() {
            let wait = self
                .settings
                .dial_spread
                .mul_f64(self.rng.between(0.0, 1.0));
            tokio::time::sleep(wait).await;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let ended = self.session().await;
            self.view.state().in_session = false;
            match ended {
                Ended::Busy(after) => {
                    self.view.state().busy += 1;
                    let wait = after.mul_f64(self.rng.between(1.0, 1.1));
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ended::Lost(e) => {
                    let why = format!("{e:#}");
                    if *TRACE_DIALS {
                        let at = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default();
                        let from = self
                            .endpoint
                            .local_addr()
                            .map_or_else(|e| e.to_string(), |a| a.to_string());
                        eprintln!(
                            "TRACE {:.3} from {from} after {:.3} s: {why}",
                            at.as_secs_f64(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    let mut st = self.view.state();
                    *st.ended.entry(why_kind(&why)).or_default() += 1;
                    st.last_error = Some(why);
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            let wait = backoff.mul_f64(self.rng.between(0.5, 1.5));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&mut self) -> Ended {
        match self.session_inner().await {
            Ok(e) | Err(e) => e,
        }
    }

    async fn session_inner(&mut self) -> Result<Ended, Ended> {
        let tls = flotilla_certs::tls::client(&self.ca_pem, &self.identity.key, ALPN_AGENT)?;
        let quic = flotilla_api::quic::client_config(tls, self.known_rtt)
            .context("QUIC TLS configuration")?;
        let conn = self
            .endpoint
            .connect_with(quic, self.server, SERVER_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        // As `nodeagent` of this release: the registry it holds, if any (an agent of an
        // earlier release does not say).
        let registry = self
            .view
            .state()
            .registry
            .as_ref()
            .filter(|_| self.protocols.last() == flotilla_api::PROTOCOLS.last())
            .and_then(RegistrySeen::held);
        write_frame(
            &mut send,
            &Hello {
                protocols: self.protocols.clone(),
                agent_version: format!("{}-fleet-sim", env!("CARGO_PKG_VERSION")),
                address: Some(self.view.address),
                registry,
            },
        )
        .await?;
        let _ = send.finish();
        // As `nodeagent`: a handshake the control plane did not confirm in time is given up
        // on, and dialled again; a hello it dropped is nudged out again.
        let written = tokio::time::Instant::now();
        let reply = match hello_reply(&conn, &mut recv, self.known_rtt, written).await {
            Ok(r) => r,
            Err(HelloLost::Unconfirmed(within)) => {
                return Err(anyhow::anyhow!(
                    "hello: the control plane did not confirm the handshake within {within:?}"
                )
                .into());
            }
            Err(HelloLost::Frame(e)) => {
                let why = conn
                    .close_reason()
                    .map_or_else(|| e.to_string(), |c| c.to_string());
                return Err(anyhow::anyhow!("hello: {why}").into());
            }
        };
        match reply {
            HelloReply::Welcome { node_id, .. } if node_id == self.identity.node_id => {}
            HelloReply::Welcome { node_id, .. } => {
                return Err(anyhow::anyhow!("welcomed as {node_id}").into())
            }
            HelloReply::Refused { reason } => {
                return Err(anyhow::anyhow!("hello refused: {reason}").into())
            }
            HelloReply::Busy { retry_after_ms } => {
                conn.close(quinn::VarInt::from_u32(0), b"busy: coming back later");
                return Ok(Ended::Busy(Duration::from_millis(
                    retry_after_ms.min(600_000),
                )));
            }
        }
        {
            let mut st = self.view.state();
            st.in_session = true;
            st.sessions += 1;
            st.established_at = Some(Instant::now());
            st.report_all = true;
        }
        let mut due = renewal_due(&self.identity.key.cert_pem, &mut self.rng)?;
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut unanswered = 0u32;
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        loop {
            // What changed is reported before anything else (as the runner's status watch).
            let (report, next_due) = {
                let mut st = self.view.state();
                st.advance(Instant::now());
                (st.to_report(), st.next_due())
            };
            if !report.is_empty() {
                match request(
                    &conn,
                    &AgentRequest::Report {
                        tasks: report.clone(),
                    },
                )
                .await?
                {
                    AgentReply::Recorded => self.view.state().reported(&report),
                    other => return Err(anyhow::anyhow!("report: {other:?}").into()),
                }
            }
            let until_due = next_due.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let until_renewal = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                e = conn.closed() => {
                    if let quinn::ConnectionError::ApplicationClosed(c) = &e {
                        if c.error_code == quinn::VarInt::from_u32(CLOSE_REVOKED) {
                            return Err(anyhow::anyhow!("revoked").into());
                        }
                    }
                    return Err(anyhow::anyhow!("{e}").into());
                }
                _ = self.view.drop_session.notified() => {
                    conn.close(quinn::VarInt::from_u32(0), b"session dropped on purpose");
                    return Err(anyhow::anyhow!("session dropped on purpose").into());
                }
                push = conn.accept_bi() => {
                    let (send, recv) = push?;
                    self.answer_push(send, recv).await;
                }
                _ = heartbeat.tick() => {
                    let (resources, usage) = {
                        let st = self.view.state();
                        (resources(), st.usage(Instant::now()))
                    };
                    let sent = Instant::now();
                    match request(&conn, &AgentRequest::Heartbeat { resources, usage }).await? {
                        AgentReply::Recorded => {
                            let rtt = sent.elapsed();
                            self.shared
                                .heartbeat_rtts
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(rtt);
                        }
                        other => return Err(anyhow::anyhow!("heartbeat: {other:?}").into()),
                    }
                }
                _ = ping.tick() => {
                    // As nodeagent: lost when nothing arrives, or after a few unanswered in a row.
                    let heard_before = conn.stats().udp_rx.datagrams;
                    self.known_rtt = Some(conn.rtt());
                    let within = ping_timeout(conn.rtt());
                    match tokio::time::timeout(within, request(&conn, &AgentRequest::Ping)).await {
                        Ok(Ok(AgentReply::Pong { .. })) => unanswered = 0,
                        Ok(Ok(other)) => return Err(anyhow::anyhow!("ping: {other:?}").into()),
                        Ok(Err(e)) => return Err(e.context("ping").into()),
                        Err(_) => {
                            unanswered += 1;
                            if ping_lost(unanswered, conn.stats().udp_rx.datagrams > heard_before) {
                                conn.close(quinn::VarInt::from_u32(0), b"no answer to ping");
                                return Err(anyhow::anyhow!("no answer to a ping within {within:?}").into());
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(until_due) => {}
                _ = tokio::time::sleep(until_renewal) => {
                    let fresh = key_and_csr(&self.identity.node_id)?;
                    match request(&conn, &AgentRequest::Renew { csr_pem: fresh.cert_pem.clone() }).await? {
                        AgentReply::Renewed { cert_pem } => {
                            self.identity.key = CertifiedKey { cert_pem, key_pem: fresh.key_pem };
                            due = renewal_due(&self.identity.key.cert_pem, &mut self.rng)?;
                        }
                        _ => due = SystemTime::now() + Duration::from_secs(30),
                    }
                }
            }
        }
    }

    /// Answers one push of the control plane as the agent does: desired state and registry
    /// taken (newer only) and acknowledged; logs, execs and pulls refused (nothing runs here).
    async fn answer_push(&mut self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let first = match read_raw_push(&mut recv).await {
            Ok(frame) => frame,
            Err(e) => {
                let reason = format!("bad push: {e}");
                let _ = write_frame(&mut send, &PushReply::Refused { reason }).await;
                let _ = send.finish();
                return;
            }
        };
        // A registry push is the same frames for every agent sent it: decoded once, and a row
        // of deltas applied once to the same registry, for all of them.
        match registry_push(&first) {
            Some(Known::Whole(seen)) => {
                let version = self.take_registry(seen);
                let reply = PushReply::Persisted {
                    generation: version,
                };
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                return;
            }
            Some(Known::Delta(delta)) => {
                let reply = match self.take_deltas(delta, &mut recv).await {
                    Ok(generation) => PushReply::Persisted { generation },
                    Err(reason) => PushReply::Refused { reason },
                };
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                return;
            }
            None => {}
        }
        let decoded = first.body().and_then(|body| {
            serde_json::from_slice::<ServerPush>(&body).map_err(flotilla_api::FrameError::from)
        });
        let reply = match decoded {
            Ok(ServerPush::Desired(state)) => {
                let generation =
                    self.view
                        .state()
                        .set_desired(state, Instant::now(), &self.settings);
                PushReply::Persisted { generation }
            }
            Ok(ServerPush::Registry(registry)) => {
                let version = self.take_registry(RegistrySeen::of(registry));
                PushReply::Persisted {
                    generation: version,
                }
            }
            Ok(ServerPush::RegistryDelta(_)) => PushReply::Refused {
                reason: "bad push: a registry delta that does not decode as one".into(),
            },
            Ok(ServerPush::Exec(_)) => {
                let refusal = flotilla_api::exec::ExecFrame::Error(
                    "a simulated node (bench-fleet) runs no containers".into(),
                );
                let _ = flotilla_api::exec::write(&mut send, &refusal).await;
                let _ = send.finish();
                return;
            }
            Ok(ServerPush::Pull(_)) => {
                let _ = write_frame(
                    &mut send,
                    &flotilla_api::images::PullFrame::Failed {
                        reason: "a simulated node (bench-fleet) holds no images".into(),
                    },
                )
                .await;
                let _ = send.finish();
                return;
            }
            Ok(ServerPush::Logs(_)) => {
                let _ = write_frame(
                    &mut send,
                    &LogFrame::Error {
                        reason: "a simulated node (bench-fleet) runs no containers".into(),
                    },
                )
                .await;
                let _ = send.finish();
                return;
            }
            Err(e) => PushReply::Refused {
                reason: format!("bad push: {e}"),
            },
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
    }

    /// Takes the registry deltas of one push, `first` and those after it on the stream
    /// (protocol 4), in order, as `nodeagent` does; the version then held, or why the push is
    /// refused.
    async fn take_deltas(
        &self,
        first: (u64, Arc<RegistryDelta>),
        recv: &mut quinn::RecvStream,
    ) -> Result<u64, String> {
        let mut row = vec![first];
        loop {
            match flotilla_api::read_next_raw(recv, flotilla_api::MAX_PUSH_FRAME, true).await {
                Ok(None) => break,
                Ok(Some((raw, packed))) => match registry_push(&RawPush { raw, packed }) {
                    Some(Known::Delta(d)) => row.push(d),
                    _ => {
                        return Err(format!(
                            "bad push: not a registry delta after {}",
                            row.len()
                        ))
                    }
                },
                Err(e) => return Err(format!("bad push: {e}")),
            }
            if row.len() > flotilla_api::MAX_DELTAS_IN_A_PUSH {
                return Err("bad push: too many registry deltas in a row".into());
            }
        }
        let by_endpoint = row
            .iter()
            .map(|(_, d)| u32::try_from(d.endpoints.len()).unwrap_or(u32::MAX))
            .fold(0u32, u32::saturating_add);
        let mut st = self.view.state();
        let held = st.registry.take().unwrap_or(RegistrySeen {
            version: 0,
            services: BTreeMap::new(),
            digest: None,
        });
        let (now, applied) = apply_row(held, &row);
        let generation = now.version;
        st.registry = Some(now);
        st.registry_endpoint_changes = st.registry_endpoint_changes.saturating_add(by_endpoint);
        st.registry_deltas += applied;
        st.registry_out_of_sequence += u32::from(applied < row.len() as u32);
        st.registry_pushes_in_a_row += u32::from(applied > 1);
        Ok(generation)
    }

    fn take_registry(&self, registry: RegistrySeen) -> u64 {
        let mut st = self.view.state();
        st.registry_wholes += 1;
        let held = st.registry.as_ref().map_or(0, |r| r.version);
        if registry.version <= held {
            return held;
        }
        let version = registry.version;
        st.registry = Some(registry);
        version
    }
}

/// A push frame's body as it came: packed or not ([`flotilla_api::PACKED`]).
struct RawPush {
    raw: Vec<u8>,
    packed: bool,
}

impl RawPush {
    /// The body unpacked.
    fn body(&self) -> Result<std::borrow::Cow<'_, [u8]>, flotilla_api::FrameError> {
        if self.packed {
            Ok(flotilla_api::unpack(&self.raw, flotilla_api::MAX_PUSH_FRAME)?.into())
        } else {
            Ok(self.raw.as_slice().into())
        }
    }
}

/// The next push frame (at most [`flotilla_api::MAX_PUSH_FRAME`]), not unpacked nor decoded.
async fn read_raw_push(recv: &mut quinn::RecvStream) -> Result<RawPush, flotilla_api::FrameError> {
    match flotilla_api::read_next_raw(recv, flotilla_api::MAX_PUSH_FRAME, true).await? {
        Some((raw, packed)) => Ok(RawPush { raw, packed }),
        None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
    }
}

/// How a whole registry's push begins ([`ServerPush`] is tagged by its `push` field, first).
const WHOLE: &[u8] = br#"{"push":"registry","#;

/// How a registry delta's push begins.
const DELTA: &[u8] = br#"{"push":"registry_delta","#;

/// How many decoded registry frames [`registry_push`] keeps, and rows applied [`apply_row`]
/// keeps: the control plane's pushes under way at once may carry the registries and the
/// deltas of as many versions as it keeps changes, and more.
const KNOWN_KEPT: usize = 256;

/// A registry frame decoded: a whole registry as an agent keeps it, or a delta, with the hash
/// of the frame as it came.
#[derive(Clone)]
enum Known {
    Whole(RegistrySeen),
    Delta((u64, Arc<RegistryDelta>)),
}

/// FNV-1a over 8 bytes at a time: a fingerprint of frames from one control plane, not a
/// defence against a hostile one.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut key = 0xcbf2_9ce4_8422_2325u64;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        key = (key ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    key
}

/// Push `frame` as an agent keeps it when it is a whole registry or a registry delta,
/// unpacked and decoded once for all the agents sent the same frame (the last
/// [`KNOWN_KEPT`] are kept, by a hash of the frame as it came): 10,000 agents each decoding
/// the 1.2 MB registry of a DAEMON on 10,000 nodes is 12 GB of JSON, more than the
/// simulator's share of the cores decodes in minutes, while a real node decodes its one copy.
/// `None` when it is neither (or not one that decodes: the caller says why).
fn registry_push(frame: &RawPush) -> Option<Known> {
    static SEEN: std::sync::Mutex<Vec<(u64, usize, Known)>> = std::sync::Mutex::new(Vec::new());
    let body = &frame.raw;
    if !frame.packed && !body.starts_with(WHOLE) && !body.starts_with(DELTA) {
        return None;
    }
    let key = fingerprint(body);
    let cached = |seen: &Vec<(u64, usize, Known)>| {
        seen.iter()
            .find(|(k, len, _)| *k == key && *len == body.len())
            .map(|(_, _, r)| r.clone())
    };
    if let Some(r) = cached(&SEEN.lock().unwrap_or_else(|p| p.into_inner())) {
        return Some(r);
    }
    let unpacked = frame.body().ok()?;
    // The push's own fields follow the tag: read as the registry or the delta (the tag an
    // unknown field), without the copy an internally tagged enum makes of the whole content.
    let known = if unpacked.starts_with(WHOLE) {
        Known::Whole(RegistrySeen::of(serde_json::from_slice(&unpacked).ok()?))
    } else if unpacked.starts_with(DELTA) {
        Known::Delta((key, Arc::new(serde_json::from_slice(&unpacked).ok()?)))
    } else {
        return None;
    };
    let mut all = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if all.len() == KNOWN_KEPT {
        all.remove(0);
    }
    all.push((key, body.len(), known.clone()));
    Some(known)
}

/// What `held` makes of `row` (deltas by the hash of their frames), in order until one does
/// not follow, and how many applied. Agents that held the same registry (the same shared
/// endpoints) and were sent the same row share one result, made once (the last
/// [`KNOWN_KEPT`] are kept, with what they were made from, so that a pointer compared is
/// never one reused).
fn apply_row(held: RegistrySeen, row: &[(u64, Arc<RegistryDelta>)]) -> (RegistrySeen, u32) {
    type Key = (u64, Vec<(String, usize)>, Vec<u64>);
    static MADE: std::sync::Mutex<Vec<(Key, RegistrySeen, RegistrySeen, u32)>> =
        std::sync::Mutex::new(Vec::new());
    let key: Key = (
        held.version,
        held.services
            .iter()
            .map(|(k, v)| (k.clone(), Arc::as_ptr(v) as usize))
            .collect(),
        row.iter().map(|(h, _)| *h).collect(),
    );
    {
        let made = MADE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, now, applied)) = made.iter().find(|(k, ..)| *k == key) {
            return (now.clone(), *applied);
        }
    }
    let mut now = held.clone();
    let mut applied = 0;
    for (_, delta) in row {
        if !now.apply(delta) {
            break;
        }
        applied += 1;
    }
    if applied > 0 {
        // Its digest: the deltas applied to the registry held, whole, when still kept.
        now.digest = held
            .digest
            .as_deref()
            .and_then(|d| full(held.version, d))
            .and_then(|mut whole| {
                for (_, delta) in &row[..applied as usize] {
                    whole = whole.apply(delta).ok()?;
                }
                Some(keep_full(Arc::new(whole)))
            });
    }
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    if made.len() == KNOWN_KEPT {
        made.remove(0);
    }
    made.push((key, held, now.clone(), applied));
    (now, applied)
}

/// How many registries the simulator keeps whole, the last decoded or made: what a row of
/// deltas is applied to, once for every agent sent it, to know the digest of what it makes
/// (a real node holds its one registry whole; a simulated agent holds a reduced copy).
const FULL_KEPT: usize = 32;

/// The registries kept whole, with their digests, oldest first.
static FULL: std::sync::Mutex<Vec<(Arc<str>, Arc<Registry>)>> = std::sync::Mutex::new(Vec::new());

/// Keeps `registry` whole (the last [`FULL_KEPT`]); its digest.
fn keep_full(registry: Arc<Registry>) -> Arc<str> {
    let digest: Arc<str> = Arc::from(registry.digest());
    let mut all = FULL.lock().unwrap_or_else(|p| p.into_inner());
    if !all
        .iter()
        .any(|(d, r)| *d == digest && r.version == registry.version)
    {
        if all.len() == FULL_KEPT {
            all.remove(0);
        }
        all.push((digest.clone(), registry));
    }
    digest
}

/// The registry kept whole of `version` and `digest`, if still kept.
fn full(version: u64, digest: &str) -> Option<Registry> {
    let all = FULL.lock().unwrap_or_else(|p| p.into_inner());
    all.iter()
        .find(|(d, r)| &**d == digest && r.version == version)
        .map(|(_, r)| (**r).clone())
}

/// What a simulated node says it has: 2 CPUs, 4 GiB, 32 GiB of disk.
fn resources() -> NodeResources {
    NodeResources {
        cpus: 2,
        memory_bytes: 4 << 30,
        memory_available_bytes: 3 << 30,
        disk_bytes: 32 << 30,
        disk_available_bytes: 16 << 30,
        load1_milli: 100,
        cpu_busy_usec: None,
    }
}

/// When to renew: at a random 50–80 % of the certificate's lifetime, as `nodeagent`.
fn renewal_due(cert_pem: &str, rng: &mut Rng) -> Result<SystemTime> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("certificate: {e:?}"))?;
    let (not_before, not_after) = flotilla_certs::validity_of(&der)?;
    let issued = not_before + flotilla_certs::BACKDATE;
    let lifetime = not_after
        .duration_since(issued)
        .unwrap_or(Duration::from_secs(60));
    Ok(issued + lifetime.mul_f64(rng.between(0.5, 0.8)))
}

/// One request, one reply, on a new stream.
async fn request(conn: &Connection, req: &AgentRequest) -> Result<AgentReply> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    Ok(read_frame(&mut recv).await?)
}

/// The `p`-th percentile (0–100) of `samples` by nearest rank; zero for none.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ends_that_differ_only_in_figures_are_tallied_as_one_kind() {
        assert_eq!(
            why_kind("no answer to a ping within 5.2s"),
            why_kind("no answer to a ping within 40ms")
        );
        assert_eq!(
            why_kind("connection lost: timed out"),
            "connection lost: timed out"
        );
        assert_eq!(
            why_kind("hello: 10.0.3.7:4433 refused"),
            "hello: N:N refused"
        );
        assert_eq!(why_kind(&"x".repeat(200)).len(), 80);
    }

    #[test]
    fn a_registry_push_plain_or_packed_is_decoded_and_applied_once_for_every_agent() {
        use flotilla_api::discovery::Endpoint;
        let registry = Registry {
            version: 42,
            services: vec![DiscoveredService {
                namespace: "bench".into(),
                name: "whole-test".into(),
                service: "whole-test".into(),
                vip: None,
                port: Some(80),
                fixed_port: None,
                protocol: flotilla_api::taskdef::Protocol::Tcp,
                endpoints: (0..200u32)
                    .map(|i| Endpoint {
                        task: format!("t-whole-{i}"),
                        node: format!("n-whole-{i}"),
                        address: Ipv4Addr::from(0x0a00_0000 + i),
                        port: Some(80),
                        task_address: None,
                        task_port: None,
                    })
                    .collect(),
            }],
        };
        let frame = flotilla_api::encode_push(&ServerPush::Registry(registry)).expect("encode");
        let plain = RawPush {
            raw: frame[4..].to_vec(),
            packed: false,
        };
        let packed = flotilla_api::pack_push(&frame).expect("pack");
        let packed = RawPush {
            raw: packed[4..].to_vec(),
            packed: true,
        };
        let whole = |push: &RawPush| match registry_push(push) {
            Some(Known::Whole(seen)) => seen,
            _ => panic!("not a whole registry"),
        };
        let mut seen = Vec::new();
        for push in [&plain, &packed] {
            let first = whole(push);
            assert_eq!(first.version, 42);
            assert_eq!(first.services["bench/whole-test"].len(), 200);
            // The second agent sent it shares the first one's decoded copy.
            let again = whole(push);
            assert!(Arc::ptr_eq(
                &first.services["bench/whole-test"],
                &again.services["bench/whole-test"]
            ));
            seen.push(first);
        }
        // A delta: one endpoint gone, one added; a row of it applied once for every agent
        // that held the same registry, and applied anew to another.
        let delta = RegistryDelta {
            from: 42,
            to: 43,
            endpoints: vec![flotilla_api::discovery::EndpointsDelta {
                namespace: "bench".into(),
                name: "whole-test".into(),
                upserted: vec![Endpoint {
                    task: "t-whole-new".into(),
                    node: "n-whole-new".into(),
                    address: Ipv4Addr::new(10, 1, 0, 1),
                    port: Some(80),
                    task_address: None,
                    task_port: None,
                }],
                removed: vec!["t-whole-0".into()],
            }],
            ..RegistryDelta::default()
        };
        let frame =
            flotilla_api::encode_push(&ServerPush::RegistryDelta(delta.clone())).expect("encode");
        let raw = RawPush {
            raw: frame[4..].to_vec(),
            packed: false,
        };
        let Some(Known::Delta(d)) = registry_push(&raw) else {
            panic!("not a delta")
        };
        assert_eq!(*d.1, delta);
        let (a, applied) = apply_row(seen[0].clone(), std::slice::from_ref(&d));
        assert_eq!((a.version, applied), (43, 1));
        let endpoints = &a.services["bench/whole-test"];
        assert_eq!(endpoints.len(), 200);
        assert!(endpoints.has_task("t-whole-new") && !endpoints.has_task("t-whole-0"));
        let (b, _) = apply_row(seen[0].clone(), std::slice::from_ref(&d));
        assert!(Arc::ptr_eq(endpoints, &b.services["bench/whole-test"]));
        let (c, _) = apply_row(seen[1].clone(), std::slice::from_ref(&d));
        assert_eq!(c, a);
        assert!(!Arc::ptr_eq(endpoints, &c.services["bench/whole-test"]));
        // Not following: nothing applied.
        let (d2, applied) = apply_row(a.clone(), std::slice::from_ref(&d));
        assert_eq!((d2, applied), (a, 0));
        // Neither: a desired state is decoded by the agent itself.
        let desired =
            flotilla_api::encode_push(&ServerPush::Desired(Default::default())).expect("encode");
        let desired = RawPush {
            raw: desired[4..].to_vec(),
            packed: false,
        };
        assert!(registry_push(&desired).is_none());
    }

    fn task(id: &str, desired: DesiredStatus) -> DesiredTask {
        let definition = flotilla_api::taskdef::parse(
            r#"{"family":"f","containerDefinitions":[{"name":"main","image":"x","memory":8,
                "portMappings":[{"containerPort":80}]}]}"#,
        )
        .expect("valid")
        .definition;
        DesiredTask {
            id: id.into(),
            task_definition: "f:1".into(),
            definition,
            env: Vec::new(),
            desired,
            stop_reason: None,
            stop_code: None,
            stop_on_client_after: None,
            address: None,
            namespace: None,
            service: None,
            secret_versions: Default::default(),
            config_versions: Default::default(),
        }
    }

    #[test]
    fn a_simulated_node_runs_then_stops_what_it_is_given() {
        let s = Settings::default();
        let t0 = Instant::now();
        let mut st = AgentState::default();
        let state = |generation, tasks| DesiredState {
            generation,
            tasks,
            ..Default::default()
        };
        assert_eq!(
            st.set_desired(state(2, vec![task("t-1", DesiredStatus::Running)]), t0, &s),
            2
        );
        // An older generation changes nothing.
        assert_eq!(st.set_desired(state(1, vec![]), t0, &s), 2);
        let first = st.to_report();
        assert_eq!(first[0].state, TaskState::Pending);
        st.reported(&first);
        assert!(st.to_report().is_empty());
        assert!(st.advance(t0 + s.start_delay));
        let running = st.to_report();
        assert_eq!(running[0].state, TaskState::Running);
        let net = running[0].network.as_ref().expect("network");
        assert_eq!(net.bindings[0].container_port, 80);
        st.reported(&running);
        assert_eq!(st.recorded(TaskState::Running), 1);
        assert_eq!(st.usage(t0 + Duration::from_secs(1)).len(), 1);

        // Stopped by the control plane, reported with its code, forgotten once recorded and
        // gone from the desired state.
        let mut stop = task("t-1", DesiredStatus::Stopped);
        stop.stop_code = Some(StopCode::ServiceDeleted);
        st.set_desired(state(3, vec![stop]), t0, &s);
        assert!(st.advance(t0 + Duration::from_secs(5)));
        let stopped = st.to_report();
        assert_eq!(stopped[0].state, TaskState::Stopped);
        assert_eq!(stopped[0].stop_code, Some(StopCode::ServiceDeleted));
        st.reported(&stopped);
        st.set_desired(state(4, vec![]), t0, &s);
        assert!(st.tasks.is_empty());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut [], 99.0), Duration::ZERO);
    }
}
