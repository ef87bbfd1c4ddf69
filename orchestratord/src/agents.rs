//! The agents' side of the control plane: one QUIC endpoint, two ALPNs.
//!
//! - `flotilla-join/1`: enrollment. No client certificate; the token in the first (and only)
//!   request is the credential. The server assigns the node id and signs the CSR's public key.
//! - `flotilla/1`: agent sessions. The node's identity comes from its verified certificate and
//!   nothing else; a session counts once the `Hello` round trip is done. Revocation closes the
//!   live connection at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::tasks::{
    ContainerUsage, DesiredState, DesiredStatus, DesiredTask, TaskState, TaskStatus,
};
use flotilla_api::{
    negotiate, read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, JoinReply,
    JoinRequest, PushReply, ServerPush, PROTOCOLS,
};
use flotilla_certs::tls::{ALPN_AGENT, ALPN_JOIN};
use flotilla_certs::{identity_of, ClusterCa, Role};
use quinn::{Connection, VarInt};

use crate::store::{NodeRecord, Store};

/// Close code for refused connections; the reason travels with it.
pub const CLOSE_REFUSED: u32 = 1;
/// Close code when a node is revoked.
pub const CLOSE_REVOKED: u32 = 2;

/// What the agent endpoint shares.
#[derive(Debug)]
pub struct Agents {
    /// Durable state.
    pub store: Arc<Store>,
    /// The cluster CA (signs node certificates).
    pub ca: ClusterCa,
    /// Lifetime of node certificates.
    pub node_cert_lifetime: Duration,
    sessions: Mutex<HashMap<String, Connection>>,
    /// When this control plane started (nodes not heard from since count as disconnected
    /// from then).
    pub started_at: u64,
    /// Wakes the service loop (an operator changed a service).
    pub services_changed: tokio::sync::Notify,
    /// Held while a service is planned and applied, and while an operator changes one: the
    /// loop never acts on a service that changed or went meanwhile.
    pub services_lock: Mutex<()>,
    /// How fast sessions are admitted.
    admission: Admission,
    /// What nodes last said of themselves: kept in memory only (no disk write per heartbeat).
    live: Mutex<HashMap<String, LiveInfo>>,
    /// Bridge subnets and awsvpc addresses.
    pub network: crate::network::Assigner,
    /// The discovery registry last computed (version 0: none yet).
    pub registry: Mutex<Arc<flotilla_api::discovery::Registry>>,
}

/// Session admission: a token bucket of `rate` sessions per second (bursts up to `rate`). An
/// agent turned away gets the next free slot — one every `1/rate` seconds, at least a second
/// ahead — so a storm of reconnects drains at the rate instead of retrying in waves.
#[derive(Debug)]
pub struct Admission {
    rate: f64,
    state: Mutex<AdmissionState>,
}

#[derive(Debug)]
struct AdmissionState {
    tokens: f64,
    last: Instant,
    next_slot: Instant,
}

impl Admission {
    /// Admits up to `rate` sessions per second (at least 1).
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            state: Mutex::new(AdmissionState {
                tokens: rate,
                last: now,
                next_slot: now,
            }),
        }
    }

    /// Admits a session at `now`, or says how long its agent should wait.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.rate);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        let slot = s.next_slot.max(now + Duration::from_secs(1));
        s.next_slot = slot + Duration::from_secs_f64(1.0 / self.rate);
        Err(slot - now)
    }
}

/// A node's last words, in memory.
#[derive(Debug, Clone, Default)]
pub struct LiveInfo {
    /// Agent version from its last hello.
    pub agent_version: Option<String>,
    /// Last message (seconds since the epoch).
    pub last_seen: Option<u64>,
    /// Last reported resources.
    pub resources: Option<flotilla_api::NodeResources>,
    /// Usage of its tasks' running containers at the last heartbeat: task → container → usage.
    pub usage: HashMap<String, BTreeMap<String, ContainerUsage>>,
    /// When its last session ended.
    pub disconnected_at: Option<u64>,
}

fn refuse(conn: &Connection, code: u32, reason: &str) {
    tracing::info!(peer = %conn.remote_address(), "refused: {reason}");
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

impl Agents {
    /// Agent handling over `store` and `ca`.
    pub fn new(
        store: Arc<Store>,
        ca: ClusterCa,
        node_cert_lifetime: Duration,
        session_rate: u32,
        network: crate::network::Settings,
    ) -> Self {
        Self {
            store,
            ca,
            node_cert_lifetime,
            admission: Admission::new(session_rate, Instant::now()),
            sessions: Mutex::new(HashMap::new()),
            started_at: crate::now(),
            services_changed: tokio::sync::Notify::new(),
            services_lock: Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            network: crate::network::Assigner::new(network),
            registry: Mutex::new(Arc::default()),
        }
    }

    /// Nodes with a live session.
    pub fn live_nodes(&self) -> Vec<String> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Records an event; failing to record one is logged and never fails what happened.
    pub fn event(&self, kind: &str, subject: &str, message: impl Into<String>) {
        if let Err(e) = self
            .store
            .record_event(kind, subject, message.into(), crate::now())
        {
            tracing::warn!(kind, subject, "recording an event: {e}");
        }
    }

    /// Seconds the node has been without a session (`None` while it has one).
    pub fn disconnected_for(&self, node_id: &str) -> Option<u64> {
        if self.live_session(node_id).is_some() {
            return None;
        }
        let since = self
            .live(node_id)
            .disconnected_at
            .unwrap_or(self.started_at);
        Some(crate::now().saturating_sub(since))
    }

    /// Ids of nodes with a live session.
    pub fn connected(&self) -> Vec<String> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// What a node last said of itself.
    pub fn live(&self, node_id: &str) -> LiveInfo {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .cloned()
            .unwrap_or_default()
    }

    fn touch(&self, node_id: &str, f: impl FnOnce(&mut LiveInfo)) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = live.entry(node_id.to_string()).or_default();
        entry.last_seen = Some(crate::now());
        f(entry);
    }

    /// Marks a node revoked and ends its live session at once.
    pub fn revoke(&self, node_id: &str) -> Result<Option<NodeRecord>, crate::store::StoreError> {
        let Some(mut node) = self.store.node(node_id)? else {
            return Ok(None);
        };
        node.revoked = true;
        self.store.put_node(&node)?;
        let live = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
        if let Some(conn) = live {
            conn.close(VarInt::from_u32(CLOSE_REVOKED), b"this node was revoked");
        }
        tracing::info!(node = node_id, "node revoked");
        self.event("node.revoked", node_id, "revoked; its session was ended");
        Ok(Some(node))
    }

    /// Forgets a node and ends its live session: its certificate is refused from then on
    /// (an unknown node), and it needs a new token to come back.
    pub fn remove(&self, node_id: &str) -> Result<bool, crate::store::StoreError> {
        if !self.store.remove_node(node_id)? {
            return Ok(false);
        }
        let live = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
        if let Some(conn) = live {
            conn.close(
                VarInt::from_u32(CLOSE_REFUSED),
                b"this node was removed from the cluster",
            );
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
        tracing::info!(node = node_id, "node removed");
        self.event("node.removed", node_id, "removed from the cluster");
        Ok(true)
    }

    /// Accepts connections until the endpoint closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => me.connection(conn).await,
                    Err(e) => tracing::debug!("handshake failed: {e}"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: Connection) {
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        match alpn.as_deref() {
            Some(p) if p == ALPN_JOIN => self.join(conn).await,
            Some(p) if p == ALPN_AGENT => self.clone().session(conn).await,
            _ => refuse(&conn, CLOSE_REFUSED, "unknown protocol"),
        }
    }

    async fn join(&self, conn: Connection) {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let reply = match read_frame::<_, JoinRequest>(&mut recv).await {
            Ok(req) => self.enroll(req, &conn),
            Err(e) => JoinReply::Refused {
                reason: format!("bad join request: {e}"),
            },
        };
        if let JoinReply::Refused { reason } = &reply {
            tracing::info!(peer = %conn.remote_address(), "join refused: {reason}");
        }
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        // Let the reply reach the node before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }

    fn enroll(&self, req: JoinRequest, conn: &Connection) -> JoinReply {
        let refused = |reason: String| JoinReply::Refused { reason };
        let Some(protocol) = negotiate(PROTOCOLS, &req.protocols) else {
            return refused(format!(
                "no common protocol version (server speaks {PROTOCOLS:?}, agent {:?})",
                req.protocols
            ));
        };
        for (k, v) in &req.labels {
            if let Err(e) = flotilla_api::parse_label(&format!("{k}={v}")) {
                return refused(e);
            }
        }
        // A returning node proves its earlier identity before the token is spent.
        let returning = match &req.previous {
            None => None,
            Some(p) => {
                match self
                    .ca
                    .verify_rejoin(&p.cert_pem, &p.proof, &req.token_id, &req.csr_pem)
                {
                    Ok(id) => match self.store.node(&id) {
                        Ok(Some(n)) if !n.revoked => Some(n),
                        Ok(Some(_)) => return refused(format!("node {id} was revoked")),
                        Ok(None) => {
                            return refused(format!("node {id} is unknown to this control plane"))
                        }
                        Err(e) => return refused(e.to_string()),
                    },
                    Err(e) => return refused(e.to_string()),
                }
            }
        };
        let token = match self.store.redeem(&req.token_id, &req.secret, crate::now()) {
            Ok(Ok(t)) => t,
            Ok(Err(r)) => return refused(r.to_string()),
            Err(e) => {
                tracing::error!("join: {e}");
                return refused("the control plane could not read its store".into());
            }
        };
        let node_id = match &returning {
            Some(n) => n.id.clone(),
            None => match flotilla_certs::new_node_id() {
                Ok(id) => id,
                Err(e) => return refused(e.to_string()),
            },
        };
        let cert_pem = match self
            .ca
            .issue_node(&req.csr_pem, &node_id, self.node_cert_lifetime)
        {
            Ok(c) => c,
            Err(e) => return refused(e.to_string()),
        };
        let mut labels = returning
            .as_ref()
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.extend(token.labels.clone());
        labels.extend(req.labels.clone());
        let hostname: String = req
            .hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(253)
            .collect();
        let node = NodeRecord {
            id: node_id.clone(),
            hostname,
            labels,
            joined_at: returning.as_ref().map_or(crate::now(), |n| n.joined_at),
            token_id: token.id.clone(),
            cert_not_after: crate::now() + self.node_cert_lifetime.as_secs(),
            revoked: false,
            generation: returning.as_ref().map_or(0, |n| n.generation),
            draining: returning.as_ref().is_some_and(|n| n.draining),
            bridge_subnet: returning.as_ref().and_then(|n| n.bridge_subnet),
            address: returning.as_ref().and_then(|n| n.address),
        };
        if let Err(e) = self.store.put_node(&node) {
            tracing::error!("join: {e}");
            return refused("the control plane could not record the node".into());
        }
        let peer = conn.remote_address();
        if returning.is_some() {
            tracing::info!(node = %node_id, %peer, token = %token.id, "node rejoined with its identity");
            self.event(
                "node.rejoined",
                &node_id,
                format!(
                    "rejoined with its identity from {peer} (token {})",
                    token.id
                ),
            );
        } else {
            tracing::info!(node = %node_id, %peer, token = %token.id, "node joined");
            self.event(
                "node.joined",
                &node_id,
                format!("{} joined from {peer} (token {})", node.hostname, token.id),
            );
        }
        JoinReply::Joined {
            node_id,
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            protocol,
        }
    }

    async fn session(self: Arc<Self>, conn: Connection) {
        // Who it is comes from the verified certificate, never from a message.
        let chain = conn.peer_identity().and_then(|p| {
            p.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let Some(leaf) = chain.as_ref().and_then(|c| c.first()) else {
            return refuse(
                &conn,
                CLOSE_REFUSED,
                "a node certificate is required (run `nodeagent join` first)",
            );
        };
        let identity = match identity_of(leaf) {
            Ok((id, _)) if id.role == Role::Node => id,
            Ok((id, _)) => {
                return refuse(
                    &conn,
                    CLOSE_REFUSED,
                    &format!("not a node certificate ({:?} {})", id.role, id.name),
                )
            }
            Err(e) => return refuse(&conn, CLOSE_REFUSED, &e.to_string()),
        };
        let node_id = identity.name;
        match self.store.node(&node_id) {
            Ok(Some(n)) if !n.revoked => {}
            Ok(Some(_)) => return refuse(&conn, CLOSE_REVOKED, "this node was revoked"),
            Ok(None) => return refuse(&conn, CLOSE_REFUSED, "unknown node"),
            Err(e) => {
                tracing::error!("session: {e}");
                return refuse(
                    &conn,
                    CLOSE_REFUSED,
                    "the control plane could not read its store",
                );
            }
        }
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let hello = match read_frame::<_, Hello>(&mut recv).await {
            Ok(h) => h,
            Err(e) => return refuse(&conn, CLOSE_REFUSED, &format!("bad hello: {e}")),
        };
        let Some(protocol) = negotiate(PROTOCOLS, &hello.protocols) else {
            let reason = format!(
                "no common protocol version (server speaks {PROTOCOLS:?}, agent {:?})",
                hello.protocols
            );
            let _ = write_frame(
                &mut send,
                &HelloReply::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
            let _ = send.finish();
            return refuse(&conn, CLOSE_REFUSED, &reason);
        };
        if let Err(wait) = self.admission.admit(Instant::now()) {
            tracing::debug!(node = %node_id, wait_ms = wait.as_millis() as u64, "session deferred: admitting at the session rate");
            let busy = HelloReply::Busy {
                retry_after_ms: wait.as_millis() as u64,
            };
            let _ = write_frame(&mut send, &busy).await;
            let _ = send.finish();
            // Closed once the agent has read the answer (or gives up), not before.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            return;
        }
        let welcome = HelloReply::Welcome {
            protocol,
            node_id: node_id.clone(),
            server_time: crate::now(),
        };
        if write_frame(&mut send, &welcome).await.is_err() {
            return;
        }
        let _ = send.finish();
        // One live session per node: a reconnect replaces the old one.
        let previous = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.clone(), conn.clone());
        if let Some(old) = previous {
            old.close(
                VarInt::from_u32(CLOSE_REFUSED),
                b"replaced by a newer session",
            );
        }
        tracing::info!(node = %node_id, peer = %conn.remote_address(), agent = %hello.agent_version, protocol, "session established");
        let version = hello.agent_version.clone();
        self.touch(&node_id, |l| {
            l.agent_version = Some(version);
            l.disconnected_at = None;
        });
        // Where its host ports are reached: what it says, else where its session comes from.
        let address = hello.address.or(match conn.remote_address().ip() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(a) => a.to_ipv4_mapped(),
        });
        if let Err(e) = self.note_address(&node_id, address) {
            tracing::warn!(node = %node_id, "recording the node's address: {e}");
        }
        // A (re)connected node gets its current desired state and registry.
        self.clone().push_desired(&node_id);
        self.clone().push_registry(&node_id);
        loop {
            let (mut send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(node = %node_id, "session ended: {e}");
                    break;
                }
            };
            self.touch(&node_id, |_| {});
            let reply = match read_frame::<_, AgentRequest>(&mut recv).await {
                Ok(AgentRequest::Ping) => AgentReply::Pong {
                    server_time: crate::now(),
                },
                Ok(AgentRequest::Heartbeat { resources, usage }) => {
                    // Only this node's own tasks are kept.
                    let mine: HashMap<String, _> =
                        usage
                            .into_iter()
                            .filter(|u| {
                                self.store.task(&u.id).ok().flatten().is_some_and(|t| {
                                    t.info.node.as_deref() == Some(node_id.as_str())
                                })
                            })
                            .map(|u| (u.id, u.containers))
                            .collect();
                    self.touch(&node_id, |l| {
                        l.resources = Some(resources);
                        l.usage = mine;
                    });
                    AgentReply::Recorded
                }
                Ok(AgentRequest::Renew { csr_pem }) => self.renew(&node_id, &csr_pem),
                Ok(AgentRequest::Report { tasks }) => self.clone().report(&node_id, tasks),
                Err(e) => AgentReply::Refused {
                    reason: format!("bad request: {e}"),
                },
            };
            let _ = write_frame(&mut send, &reply).await;
            let _ = send.finish();
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(&node_id)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            sessions.remove(&node_id);
            drop(sessions);
            self.touch(&node_id, |l| l.disconnected_at = Some(crate::now()));
        }
    }

    /// Records node `id`'s address when it changed.
    fn note_address(
        &self,
        id: &str,
        address: Option<std::net::Ipv4Addr>,
    ) -> Result<(), crate::store::StoreError> {
        let Some(mut n) = self.store.node(id)? else {
            return Ok(());
        };
        if address.is_some() && n.address != address {
            n.address = address;
            self.store.put_node(&n)?;
        }
        Ok(())
    }

    /// The desired state of a node: its tasks that have not stopped.
    pub fn desired_state(&self, node_id: &str) -> Result<DesiredState, crate::store::StoreError> {
        let generation = self.store.node(node_id)?.map_or(0, |n| n.generation);
        let services = self.store.services()?;
        let namespaces: HashMap<String, String> = services
            .iter()
            .filter_map(|s| {
                let d = s.spec.discovery.as_ref()?;
                Some((
                    crate::services::started_by(&s.spec.service_name),
                    d.namespace.clone(),
                ))
            })
            .collect();
        let stop_after: HashMap<String, u32> = services
            .into_iter()
            .filter_map(|s| {
                s.spec
                    .disconnect_policy
                    .stop_on_client_after
                    .map(|secs| (crate::services::started_by(&s.spec.service_name), secs))
            })
            .collect();
        let tasks = self
            .store
            .tasks()?
            .into_iter()
            .filter(|t| {
                t.info.node.as_deref() == Some(node_id) && t.info.state != TaskState::Stopped
            })
            .map(|t| DesiredTask {
                stop_on_client_after: t
                    .info
                    .started_by
                    .as_ref()
                    .and_then(|b| stop_after.get(b).copied()),
                id: t.info.id,
                task_definition: t.info.task_definition,
                definition: t.definition,
                env: t.env,
                stop_reason: match t.info.desired {
                    DesiredStatus::Stopped => t.info.stop_reason,
                    DesiredStatus::Running => None,
                },
                stop_code: match t.info.desired {
                    DesiredStatus::Stopped => t.info.stop_code,
                    DesiredStatus::Running => None,
                },
                address: t.address,
                namespace: t
                    .info
                    .started_by
                    .as_ref()
                    .and_then(|b| namespaces.get(b).cloned()),
                desired: t.info.desired,
            })
            .collect();
        let schedules = self
            .store
            .schedules()?
            .into_iter()
            .filter(|s| s.spec.node.as_deref() == Some(node_id))
            .map(|s| flotilla_api::tasks::NodeSchedule {
                name: s.spec.name,
                cron: s.spec.cron,
                timezone: s.spec.timezone,
                overlap: s.spec.overlap,
                task_definition: format!("{}:{}", s.revision.family, s.revision.revision),
                definition: s.revision.task_definition,
                env: s.spec.env,
            })
            .collect();
        Ok(DesiredState {
            generation,
            tasks,
            schedules,
            network: self.network.node(&self.store, node_id)?,
        })
    }

    /// The node's live session, if it has one.
    pub fn live_session(&self, node_id: &str) -> Option<Connection> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .cloned()
    }

    /// Sends a node its desired state if it has a live session (in the background).
    pub fn push_desired(self: Arc<Self>, node_id: &str) {
        let node_id = node_id.to_string();
        tokio::spawn(async move {
            let Some(conn) = self.live_session(&node_id) else {
                return;
            };
            let state = match self.desired_state(&node_id) {
                Ok(s) => s,
                Err(e) => return tracing::error!(node = %node_id, "desired state: {e}"),
            };
            let generation = state.generation;
            match push(&conn, &ServerPush::Desired(state)).await {
                Ok(PushReply::Persisted { generation: g }) => {
                    tracing::info!(node = %node_id, generation = g, "desired state delivered")
                }
                Ok(PushReply::Refused { reason }) => {
                    tracing::warn!(node = %node_id, generation, "desired state refused: {reason}")
                }
                // The next session sends it again.
                Err(e) => {
                    tracing::info!(node = %node_id, generation, "desired state not delivered: {e}")
                }
            }
        });
    }

    /// Records what a node reports about its own tasks (and only those).
    fn report(self: Arc<Self>, node_id: &str, tasks: Vec<TaskStatus>) -> AgentReply {
        let mut stopped_now = false;
        for status in tasks {
            let mut rec = match self.store.task(&status.id) {
                Ok(Some(r)) if r.info.node.as_deref() == Some(node_id) => r,
                // A run of one of the node's own schedules, reported for the first time.
                Ok(None) if status.scheduled.is_some() => {
                    let adopted = match &status.scheduled {
                        Some(run) => crate::schedules::adopt(&self, node_id, &status, run),
                        None => Ok(None),
                    };
                    match adopted {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            tracing::warn!(node = node_id, task = %status.id, "report of a run of a schedule not pinned to this node ignored");
                            continue;
                        }
                        Err(e) => {
                            return AgentReply::Refused {
                                reason: e.to_string(),
                            }
                        }
                    }
                }
                Ok(_) => {
                    tracing::warn!(node = node_id, task = %status.id, "report about a task of another node ignored");
                    continue;
                }
                Err(e) => {
                    return AgentReply::Refused {
                        reason: e.to_string(),
                    }
                }
            };
            if rec.info.state == TaskState::Stopped {
                continue;
            }
            if status.state == TaskState::Stopped {
                stopped_now = true;
            }
            // A stopped task no longer has its network; the last one reported is kept.
            let network = status.network.or(rec.info.network.clone());
            let unchanged = rec.info.state == status.state
                && rec.info.stop_reason == status.stop_reason
                && rec.info.containers == status.containers
                && rec.info.network == network;
            if unchanged {
                continue;
            }
            if rec.info.state != status.state {
                tracing::info!(node = node_id, task = %status.id, state = ?status.state, reason = ?status.stop_reason, "task state");
                let codes: Vec<String> = status
                    .containers
                    .iter()
                    .filter_map(|c| c.exit_code.map(|x| format!("{} exited {x}", c.name)))
                    .collect();
                let state = format!("{:?}", status.state).to_uppercase();
                let mut message = format!("{state} on {node_id}");
                if let Some(r) = &status.stop_reason {
                    message.push_str(&format!(": {r}"));
                }
                if !codes.is_empty() && status.state == TaskState::Stopped {
                    message.push_str(&format!(" ({})", codes.join(", ")));
                }
                let kind = format!("task.{:?}", status.state).to_lowercase();
                self.event(&kind, &status.id, message);
            }
            rec.info.state = status.state;
            rec.info.stop_reason = status.stop_reason;
            rec.info.containers = status.containers;
            rec.info.network = network;
            if let Err(e) = self.store.put_task(&rec) {
                return AgentReply::Refused {
                    reason: e.to_string(),
                };
            }
        }
        if stopped_now {
            // Stopped tasks leave the node's desired state (it then removes their containers).
            if let Err(e) = self.store.bump_generation(node_id) {
                return AgentReply::Refused {
                    reason: e.to_string(),
                };
            }
            self.push_desired(node_id);
        }
        AgentReply::Recorded
    }

    fn renew(&self, node_id: &str, csr_pem: &str) -> AgentReply {
        let refused = |reason: String| AgentReply::Refused { reason };
        let mut node = match self.store.node(node_id) {
            Ok(Some(n)) if !n.revoked => n,
            Ok(_) => return refused("this node was revoked".into()),
            Err(e) => return refused(e.to_string()),
        };
        // The identity is the session's, whatever the CSR says.
        match self
            .ca
            .issue_node(csr_pem, node_id, self.node_cert_lifetime)
        {
            Ok(cert_pem) => {
                node.cert_not_after = crate::now() + self.node_cert_lifetime.as_secs();
                if let Err(e) = self.store.put_node(&node) {
                    return refused(e.to_string());
                }
                tracing::info!(node = node_id, "certificate renewed");
                AgentReply::Renewed { cert_pem }
            }
            Err(e) => refused(e.to_string()),
        }
    }
}

/// Sends `what` on a new stream of a node's session and reads its answer.
pub async fn push(conn: &Connection, what: &ServerPush) -> Result<PushReply, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, what)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    read_frame::<_, PushReply>(&mut recv)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_spreads_a_storm_over_slots_at_the_rate() {
        let t0 = Instant::now();
        let a = Admission::new(4, t0);
        // a burst of the rate is admitted at once
        for _ in 0..4 {
            assert_eq!(a.admit(t0), Ok(()));
        }
        // then each refused agent gets its own slot, a quarter second apart, from 1 s on
        let waits: Vec<u128> = (0..4)
            .map(|_| a.admit(t0).expect_err("busy").as_millis())
            .collect();
        assert_eq!(waits, [1000, 1250, 1500, 1750]);
        // tokens come back at the rate
        let later = t0 + Duration::from_millis(500);
        assert_eq!(a.admit(later), Ok(()));
        assert_eq!(a.admit(later), Ok(()));
        assert!(a.admit(later).is_err());
        // a later refusal queues behind the slots already given
        assert_eq!(a.admit(later).expect_err("busy").as_millis(), 1750);
    }
}
