//! What agents say: enrollment with a join token, session start and end, pings, heartbeats,
//! reports of their tasks, certificate renewals, and acknowledgements of desired states. A
//! node's identity comes from its verified certificate (the transport's), never from a
//! message; a node's reports change only its own tasks.

use std::collections::HashMap;

use flotilla_api::tasks::{DesiredStatus, StopCode, TaskState, TaskStatus, TaskUsage};
use flotilla_api::{
    negotiate, AgentReply, Hello, HelloReply, JoinReply, JoinRequest, NodeResources, PROTOCOLS,
};

use super::command::{Agent, CloseCode, ClusterError, Effect, Reply, SessionId};
use super::ctx::Ctx;
use super::live::TaskCpu;
use super::network;
use super::records::{Capacity, NodeRecord, Origin, TaskRecord, TokenRecord};
use super::schedules;

/// Longest agent version kept (characters).
const MAX_AGENT_VERSION: usize = 64;

/// Seconds after a push without an acknowledgement before a heartbeat sends it again.
const REPUSH_AFTER_SECS: u64 = 10;

/// Why a token did not admit a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token (never created, or removed).
    #[error("unknown or revoked join token {0}")]
    Unknown(String),
    /// The secret does not match.
    #[error("join token {0}: wrong secret")]
    WrongSecret(String),
    /// Past its expiry.
    #[error("join token {id} expired {ago} s ago")]
    Expired {
        /// Token id.
        id: String,
        /// Seconds since expiry.
        ago: u64,
    },
    /// All uses spent.
    #[error("join token {0} was already used")]
    Used(String),
}

/// Spends one use of a token if the secret matches and it is still valid at `now`.
pub fn redeem(
    token: Option<&TokenRecord>,
    id: &str,
    secret: &str,
    now: u64,
) -> Result<TokenRecord, TokenRefusal> {
    match token {
        None => Err(TokenRefusal::Unknown(id.to_string())),
        Some(r) if !flotilla_certs::token::secret_matches(secret, &r.secret_hash) => {
            Err(TokenRefusal::WrongSecret(id.to_string()))
        }
        Some(r) if now >= r.expires_at => Err(TokenRefusal::Expired {
            id: id.to_string(),
            ago: now - r.expires_at,
        }),
        Some(r) if r.used >= r.uses => Err(TokenRefusal::Used(id.to_string())),
        Some(r) => {
            let mut r = r.clone();
            r.used += 1;
            Ok(r)
        }
    }
}

/// Why a node's session may no longer speak for it: removed from the cluster, or revoked.
/// What such a session still sends (it was in flight when the node was removed or revoked)
/// changes nothing, and the session is closed.
fn outsider(cx: &Ctx<'_, '_>, node: &str) -> Option<(CloseCode, String)> {
    match cx.txn.node(node) {
        Some(n) if !n.revoked => None,
        Some(_) => Some((CloseCode::Revoked, format!("node {node} was revoked"))),
        None => Some((
            CloseCode::Refused,
            format!("node {node} is not in the cluster (removed)"),
        )),
    }
}

/// Executes what an agent says.
pub fn execute(cx: &mut Ctx<'_, '_>, a: Agent) -> Result<Reply, ClusterError> {
    let speaker = match &a {
        Agent::Ping { node }
        | Agent::Heartbeat { node, .. }
        | Agent::Report { node, .. }
        | Agent::Renew { node, .. }
        | Agent::DesiredAcked { node, .. }
        | Agent::RegistryAnswered { node, .. }
        | Agent::FetchSecret { node, .. }
        | Agent::Image { node, .. }
        | Agent::Blob { node, .. }
        | Agent::DesiredRefused { node, .. } => Some(node.clone()),
        Agent::Join { .. } | Agent::Hello { .. } | Agent::SessionClosed { .. } => None,
    };
    if let Some((node, (code, reason))) = speaker.and_then(|n| outsider(cx, &n).map(|why| (n, why)))
    {
        tracing::warn!(node = %node, "message of a session that no longer counts ignored: {reason}");
        cx.effects.push(Effect::CloseSession {
            node,
            code,
            reason: reason.clone(),
        });
        return Ok(match a {
            Agent::DesiredAcked { .. }
            | Agent::DesiredRefused { .. }
            | Agent::RegistryAnswered { .. } => Reply::Done,
            _ => Reply::Agent(AgentReply::Refused { reason }),
        });
    }
    match a {
        Agent::Join { request, peer } => Ok(Reply::Join(Box::new(join(cx, request, &peer)))),
        Agent::Hello {
            node,
            session,
            hello,
            remote,
        } => {
            let reply = hello_(cx, &node, session, hello, remote);
            match &reply {
                Reply::Hello(HelloReply::Welcome { .. }) => cx.metrics.sessions_admitted += 1,
                Reply::Hello(HelloReply::Busy { .. }) => cx.metrics.sessions_rate_limited += 1,
                _ => cx.metrics.sessions_refused += 1,
            }
            Ok(reply)
        }
        Agent::SessionClosed { node, session } => {
            if cx.live.close(&node, session, cx.now) {
                tracing::info!(node = %node, "session ended");
            }
            Ok(Reply::Done)
        }
        Agent::Ping { node } => {
            cx.live.touch(&node, cx.now, |_| {});
            Ok(Reply::Agent(AgentReply::Pong {
                server_time: cx.now.secs(),
            }))
        }
        Agent::Heartbeat {
            node,
            resources,
            usage,
        } => Ok(Reply::Agent(heartbeat(cx, &node, resources, usage))),
        Agent::Report { node, tasks } => Ok(Reply::Agent(report(cx, &node, tasks))),
        Agent::Renew { node, csr_pem } => Ok(Reply::Agent(renew(cx, &node, &csr_pem))),
        Agent::FetchSecret {
            kind,
            node,
            name,
            version,
        } => Ok(super::secrets::fetch(cx, kind, &node, &name, version)),
        Agent::Image {
            node,
            image,
            prefetching,
        } => super::images::for_node(cx, &node, &image, &prefetching),
        Agent::Blob {
            node,
            digest,
            prefetching,
        } => Ok(super::images::blob_for_node(
            cx,
            &node,
            &digest,
            &prefetching,
        )),
        Agent::DesiredAcked { node, generation } => {
            cx.live.touch(&node, cx.now, |l| {
                l.acked_generation = Some(l.acked_generation.unwrap_or(0).max(generation));
            });
            tracing::info!(node = %node, generation, "desired state delivered");
            Ok(Reply::Done)
        }
        Agent::RegistryAnswered {
            node,
            session,
            pushed,
            from,
            answer,
        } => {
            super::discovery::answered(cx, &node, session, pushed, from, answer);
            Ok(Reply::Done)
        }
        Agent::DesiredRefused { node, reason } => {
            tracing::warn!(node = %node, "desired state refused: {reason}");
            Ok(Reply::Done)
        }
    }
}

fn join(cx: &mut Ctx<'_, '_>, req: JoinRequest, peer: &str) -> JoinReply {
    let refused = |reason: String| {
        tracing::info!(%peer, "join refused: {reason}");
        JoinReply::Refused { reason }
    };
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
        Some(p) => match cx
            .ca
            .verify_rejoin(&p.cert_pem, &p.proof, &req.token_id, &req.csr_pem)
        {
            Ok(id) => match cx.txn.node(&id) {
                Some(n) if !n.revoked => Some(n.clone()),
                Some(_) => return refused(format!("node {id} was revoked")),
                None => return refused(format!("node {id} is unknown to this control plane")),
            },
            Err(e) => return refused(e.to_string()),
        },
    };
    let token = match redeem(
        cx.txn.token(&req.token_id),
        &req.token_id,
        &req.secret,
        cx.now.secs(),
    ) {
        Ok(t) => t,
        Err(r) => return refused(r.to_string()),
    };
    let node_id = match &returning {
        Some(n) => n.id.clone(),
        None => cx.ids.node(),
    };
    let lifetime = cx.config.node_cert_lifetime;
    let cert_pem = match cx.ca.issue_node(&req.csr_pem, &node_id, lifetime) {
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
        joined_at: returning.as_ref().map_or(cx.now.secs(), |n| n.joined_at),
        token_id: token.id.clone(),
        cert_not_after: cx.now.secs() + lifetime.as_secs(),
        revoked: false,
        generation: returning.as_ref().map_or(0, |n| n.generation),
        draining: returning.as_ref().is_some_and(|n| n.draining),
        bridge_subnet: returning.as_ref().and_then(|n| n.bridge_subnet),
        address: returning.as_ref().and_then(|n| n.address),
        capacity: returning.as_ref().and_then(|n| n.capacity),
    };
    let hostname = node.hostname.clone();
    cx.txn.put_token(token.clone());
    cx.txn.put_node(node);
    network::ensure_bridge_subnet(cx.txn, &cx.config.network, &node_id);
    if returning.is_some() {
        tracing::info!(node = %node_id, %peer, token = %token.id, "node rejoined with its identity");
        cx.event(
            "node.rejoined",
            &node_id,
            format!(
                "rejoined with its identity from {peer} (token {})",
                token.id
            ),
        );
    } else {
        tracing::info!(node = %node_id, %peer, token = %token.id, "node joined");
        cx.event(
            "node.joined",
            &node_id,
            format!("{hostname} joined from {peer} (token {})", token.id),
        );
    }
    JoinReply::Joined {
        node_id,
        cert_pem,
        ca_pem: cx.ca.cert_pem().to_string(),
        protocol,
    }
}

fn hello_(
    cx: &mut Ctx<'_, '_>,
    node_id: &str,
    session: SessionId,
    hello: Hello,
    remote: Option<std::net::Ipv4Addr>,
) -> Reply {
    let node = match cx.txn.node(node_id) {
        Some(n) if !n.revoked => n.clone(),
        Some(_) => {
            return Reply::CloseSession {
                code: CloseCode::Revoked,
                reason: "this node was revoked".into(),
            }
        }
        None => {
            return Reply::CloseSession {
                code: CloseCode::Refused,
                reason: "unknown node".into(),
            }
        }
    };
    let Some(protocol) = negotiate(PROTOCOLS, &hello.protocols) else {
        return Reply::Hello(HelloReply::Refused {
            reason: format!(
                "no common protocol version (server speaks {PROTOCOLS:?}, agent {:?})",
                hello.protocols
            ),
        });
    };
    if let Err(wait_ms) = cx.live.admit(cx.now) {
        tracing::debug!(node = %node_id, wait_ms, "session deferred: admitting at the session rate");
        return Reply::Hello(HelloReply::Busy {
            retry_after_ms: wait_ms,
        });
    }
    // Shown to operators as given: printable and short.
    let version: String = hello
        .agent_version
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_AGENT_VERSION)
        .collect();
    let shown = version.clone();
    let registry_held = hello.registry.as_ref().and_then(|h| cx.feed.held(h));
    // Before the first registry after a start, what it says is checked then; a version not
    // known here at or above the registry's own (a store put back from a backup numbered
    // lower) is one the next registry is numbered above, or the node would keep its own over
    // it.
    let first = cx.feed.registry().version == 0;
    let registry_claim = hello.registry.clone().filter(|_| first);
    if let Some(h) = hello.registry.as_ref() {
        if !first && registry_held.is_none() {
            cx.feed.above(h.version, cx.now, node_id);
        }
    }
    cx.live.touch(node_id, cx.now, |l| {
        l.session = Some(session);
        l.agent_version = Some(shown);
        l.disconnected_at = None;
        l.acked_generation = None;
        l.registry_form = super::feed::RegistryForm::of(protocol);
        // What it says it holds, when that is known here by version and digest: nothing is
        // sent when it is the registry now (after a restart, the same registry keeps its
        // version: `discovery::round`), what changed since when it is a kept version; else,
        // or when it does not say, the whole.
        l.registry_sent = registry_held;
        l.registry_claim = registry_claim;
        l.registry_in_flight = false;
    });
    tracing::info!(node = %node_id, agent = %version, protocol, "session established");
    // Where its host ports are reached: what it says, else where its session comes from.
    let address = hello.address.or(remote);
    if address.is_some() && node.address != address {
        let mut n = node.clone();
        n.address = address;
        cx.txn.put_node(n);
    }
    network::ensure_bridge_subnet(cx.txn, &cx.config.network, node_id);
    // A (re)connected node gets its current desired state and registry.
    cx.push.insert(node_id.to_string());
    super::discovery::send(cx, [node_id.to_string()]);
    Reply::Hello(HelloReply::Welcome {
        protocol,
        node_id: node_id.to_string(),
        server_time: cx.now.secs(),
    })
}

fn heartbeat(
    cx: &mut Ctx<'_, '_>,
    node: &str,
    resources: NodeResources,
    usage: Vec<TaskUsage>,
) -> AgentReply {
    // Only this node's own tasks are kept.
    let mine: Vec<TaskUsage> = usage
        .into_iter()
        .filter(|u| cx.txn.task(&u.id).is_some_and(|t| t.node() == Some(node)))
        .collect();
    let tasks: HashMap<String, _> = mine
        .iter()
        .filter_map(|u| Some((u.id.clone(), u.task.clone()?)))
        .collect();
    let mine: HashMap<String, _> = mine.into_iter().map(|u| (u.id, u.containers)).collect();
    // Its room is kept with the node: placement needs it also right after a restart.
    let capacity = Capacity {
        cpus: resources.cpus,
        memory_mib: resources.memory_bytes >> 20,
    };
    if let Some(n) = cx.txn.node(node).filter(|n| n.capacity != Some(capacity)) {
        let mut n = n.clone();
        n.capacity = Some(capacity);
        cx.txn.put_node(n);
    }
    let now = cx.now;
    let unmeasured: std::collections::HashSet<String> = cx
        .txn
        .live_tasks_on(node)
        .into_iter()
        .filter(|t| t.info.state == TaskState::Running && !tasks.contains_key(&t.info.id))
        .map(|t| t.info.id.clone())
        .collect();
    cx.live.touch(node, now, |l| {
        l.unmeasured = unmeasured;
        let elapsed = l.heartbeat_ms.map(|at| now.unix_ms.saturating_sub(at));
        l.task_cpu = tasks
            .iter()
            .map(|(id, u)| {
                let prev = l.task_usage.get(id).map(|p| p.cpu_usec);
                let cpu = TaskCpu::next(
                    l.task_cpu.get(id).copied(),
                    u.cpu_usec,
                    prev,
                    elapsed,
                    now.secs(),
                );
                (id.clone(), cpu)
            })
            .collect();
        let prev_busy = l.resources.as_ref().and_then(|r| r.cpu_busy_usec);
        l.node_cpu = resources
            .cpu_busy_usec
            .map(|busy| TaskCpu::next(l.node_cpu, busy, prev_busy, elapsed, now.secs()));
        l.heartbeat_ms = Some(now.unix_ms);
        l.resources = Some(resources);
        l.usage = mine;
        l.task_usage = tasks;
    });
    // A node behind on its desired state (a push lost on the way) gets it again, once the
    // last push had time to arrive.
    let generation = cx.txn.node(node).map_or(0, |n| n.generation);
    let l = cx.live.get(node);
    let behind = l.acked_generation.unwrap_or(0) < generation;
    let settled = l
        .pushed_at
        .is_none_or(|at| cx.now.secs().saturating_sub(at) >= REPUSH_AFTER_SECS);
    if l.session.is_some() && behind && settled {
        cx.push.insert(node.to_string());
    }
    AgentReply::Recorded
}

/// Records what a node reports about its own tasks (and only those).
fn report(cx: &mut Ctx<'_, '_>, node: &str, tasks: Vec<TaskStatus>) -> AgentReply {
    cx.live.touch(node, cx.now, |_| {});
    for status in tasks {
        let rec = match cx.txn.task(&status.id) {
            Some(r) if r.node() == Some(node) => r.clone(),
            // A run of one of the node's own schedules, reported for the first time.
            None => match &status.scheduled {
                Some(run) => match schedules::adopt(cx, node, &status, run) {
                    Ok(r) => r,
                    Err(why) => {
                        tracing::warn!(node, task = %status.id, schedule = %run.schedule, "report of a run of a schedule {why} ignored");
                        continue;
                    }
                },
                None => {
                    tracing::warn!(node, task = %status.id, "report about an unknown task ignored");
                    continue;
                }
            },
            Some(_) => {
                tracing::warn!(node, task = %status.id, "report about a task of another node ignored");
                continue;
            }
        };
        update(cx, node, rec, status);
    }
    AgentReply::Recorded
}

/// Applies one reported status to its task (in `cx`'s transaction), with an event when its
/// state changed. A stopped task stays stopped.
fn update(cx: &mut Ctx<'_, '_>, node: &str, mut rec: TaskRecord, status: TaskStatus) {
    let fresh = cx.txn.task(&rec.info.id).is_none();
    if rec.info.state == TaskState::Stopped {
        return;
    }
    // A task the control plane is stopping stays STOPPING until its node says it stopped: a
    // report sent before the node had the stop does not make it count as running again.
    let state = if rec.info.desired == DesiredStatus::Stopped {
        status.state.max(TaskState::Stopping)
    } else {
        status.state
    };
    // A stopped task no longer has its network; the last one reported is kept.
    let network = status.network.or(rec.info.network.clone());
    // The control plane's code wins when it asked for the stop; else the node's, if it is one
    // a node decides.
    let reported = match (rec.info.stop_code, status.stop_code) {
        (None, Some(c)) if !node_may_set(cx, &rec, c) => {
            tracing::warn!(node, task = %rec.info.id, code = %c, "stop code the node does not decide ignored");
            None
        }
        (_, c) => c,
    };
    let code = rec.info.stop_code.or(reported);
    let reason = status.stop_reason.or(rec.info.stop_reason.clone());
    let unchanged = rec.info.state == state
        && rec.info.stop_reason == reason
        && rec.info.stop_code == code
        && rec.info.containers == status.containers
        && rec.info.network == network;
    if unchanged && !fresh {
        return;
    }
    if rec.info.state != state {
        tracing::info!(node, task = %rec.info.id, ?state, reason = ?reason, "task state");
        let codes: Vec<String> = status
            .containers
            .iter()
            .filter_map(|c| c.exit_code.map(|x| format!("{} exited {x}", c.name)))
            .collect();
        let shown = format!("{state:?}").to_uppercase();
        let mut message = format!("{shown} on {node}");
        if let Some(r) = &reason {
            message.push_str(&format!(": {r}"));
        }
        if !codes.is_empty() && state == TaskState::Stopped {
            message.push_str(&format!(" ({})", codes.join(", ")));
        }
        let kind = format!("task.{state:?}").to_lowercase();
        cx.event(&kind, &rec.info.id, message);
    }
    rec.info.state = state;
    // ECS: a task that is stopping (its essential container exited, its start failed …) is
    // desired stopped, whoever stopped it.
    if state >= TaskState::Stopping {
        rec.info.desired = DesiredStatus::Stopped;
    }
    if status.state >= TaskState::Stopping || rec.info.stop_code.is_some() {
        rec.info.stop_code = code;
    }
    rec.info.stop_reason = reason;
    rec.info.containers = status.containers;
    rec.info.network = network;
    cx.txn.put_task(rec);
}

/// Whether a node may give task `rec` stop code `code` when the control plane did not ask for
/// the stop: the codes of what a node decides itself — a start that failed, an essential
/// container's exit, a task no longer assigned to it, `stopOnClientAfter` of a service that
/// sets it, `overlap: replace` of a schedule's run. The others (an operator's stop, a service's
/// scale-down, a drain …) are the control plane's: a node giving one would have a failure
/// counted as a retirement.
fn node_may_set(cx: &Ctx<'_, '_>, rec: &TaskRecord, code: StopCode) -> bool {
    let origin = rec.info.started_by.as_deref().and_then(Origin::parse);
    match code {
        StopCode::TaskFailedToStart
        | StopCode::EssentialContainerExited
        | StopCode::NotAssigned => true,
        StopCode::StopOnClientAfter => match origin {
            Some(Origin::Service(s)) => cx
                .txn
                .service(&s)
                .is_some_and(|s| s.spec.disconnect_policy.stop_on_client_after.is_some()),
            _ => false,
        },
        StopCode::ScheduleReplaced => matches!(origin, Some(Origin::Schedule(_))),
        _ => false,
    }
}

fn renew(cx: &mut Ctx<'_, '_>, node_id: &str, csr_pem: &str) -> AgentReply {
    let refused = |reason: String| AgentReply::Refused { reason };
    let mut node = match cx.txn.node(node_id) {
        Some(n) if !n.revoked => n.clone(),
        _ => return refused("this node was revoked".into()),
    };
    // The identity is the session's, whatever the CSR says.
    let lifetime = cx.config.node_cert_lifetime;
    match cx.ca.issue_node(csr_pem, node_id, lifetime) {
        Ok(cert_pem) => {
            node.cert_not_after = cx.now.secs() + lifetime.as_secs();
            cx.txn.put_node(node);
            tracing::info!(node = node_id, "certificate renewed");
            AgentReply::Renewed { cert_pem }
        }
        Err(e) => refused(e.to_string()),
    }
}
