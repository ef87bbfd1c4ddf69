//! The discovery registry: from the records (services with `discovery`, their running healthy
//! tasks, the networks their nodes reported, the nodes' addresses) to what every node answers
//! DNS from and programs VIPs with. Recomputed every service round; when it changed, every
//! live session is sent what changed since the version it was last sent (a delta, one encoded
//! frame shared by all the sessions at that version), or the whole registry when that version
//! is unknown (a new session whose agent did not say which it holds) or older than the kept
//! changes, or when its agent takes no deltas (protocol 1).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use flotilla_api::discovery::{DiscoveredService, Discovery, Endpoint, Registry};
use flotilla_api::taskdef::{NetworkMode, Protocol, TaskDefinition};
use flotilla_api::tasks::{HealthStatus, TaskState};

use super::command::{Effect, RegistryAnswer, RegistryPush};
use super::ctx::Ctx;
use super::feed::RegistryForm;
use super::records::{Origin, RegistryMark, ServiceRecord, TaskRecord};
use super::state::Txn;

/// The container and port a service's discovery points at in `def`: the named container (or
/// the first with a port mapping) and the named port (or its first mapping's).
pub fn service_port(d: &Discovery, def: &TaskDefinition) -> Option<(String, u16, Protocol)> {
    let c = match &d.container_name {
        Some(n) => def.container_definitions.iter().find(|c| &c.name == n)?,
        None => def
            .container_definitions
            .iter()
            .find(|c| !c.port_mappings.is_empty())?,
    };
    let m = match d.container_port {
        Some(p) => c.port_mappings.iter().find(|m| m.container_port == p),
        None => c.port_mappings.first(),
    };
    match (m, d.container_port) {
        (Some(m), _) => Some((c.name.clone(), m.container_port, m.protocol)),
        // A port the task does not publish: still reachable on awsvpc and host tasks.
        (None, Some(p)) => Some((c.name.clone(), p, Protocol::Tcp)),
        (None, None) => None,
    }
}

/// The port every task of `def` is reached on, when the definition fixes it.
fn fixed_port(d: &Discovery, def: &TaskDefinition) -> Option<u16> {
    let (c, port, proto) = service_port(d, def)?;
    match def.network_mode {
        NetworkMode::Host | NetworkMode::Awsvpc => Some(port),
        NetworkMode::Bridge => {
            def.container_definitions
                .iter()
                .find(|x| x.name == c)?
                .port_mappings
                .iter()
                .find(|m| m.container_port == port && m.protocol == proto)?
                .host_port
        }
        NetworkMode::None => None,
    }
}

/// True when every container of a running task that has a health check passes it.
fn healthy(t: &TaskRecord) -> bool {
    t.info.state == TaskState::Running
        && t.info
            .containers
            .iter()
            .all(|c| c.health.is_none_or(|h| h == HealthStatus::Healthy))
}

/// Where task `t` (of a service with discovery `d`) is reached, if it is.
fn endpoint(d: &Discovery, t: &TaskRecord, node_address: Option<Ipv4Addr>) -> Option<Endpoint> {
    let net = t.info.network.as_ref()?;
    let node = t.info.node.clone()?;
    let port = service_port(d, &t.definition);
    let task_port = port.as_ref().map(|(_, p, _)| *p);
    let (address, reachable) = match net.mode {
        NetworkMode::Awsvpc => (net.address?, port.map(|(_, p, _)| p)),
        NetworkMode::Host => (node_address?, port.map(|(_, p, _)| p)),
        NetworkMode::Bridge => {
            let host_port = port.and_then(|(c, p, proto)| {
                net.bindings
                    .iter()
                    .find(|b| b.container == c && b.container_port == p && b.protocol == proto)
                    .map(|b| b.host_port)
            });
            (node_address?, host_port)
        }
        NetworkMode::None => return None,
    };
    Some(Endpoint {
        task: t.info.id.clone(),
        node,
        address,
        port: reachable,
        task_address: net.address,
        task_port,
    })
}

/// The registry entry of service `s` with discovery `d`.
fn entry(txn: &Txn<'_>, s: &ServiceRecord, d: &Discovery) -> DiscoveredService {
    let by = Origin::Service(s.spec.service_name.clone()).started_by();
    let mine: Vec<&TaskRecord> = txn
        .tasks_of(&by)
        .into_iter()
        .filter(|t| healthy(t))
        .collect();
    // The service's port and what its definition fixes follow from its current definition
    // alone, never from which tasks happen to be running and healthy: a task's environment
    // is computed from this entry when it starts, also before any of the service's tasks run.
    let def = s.primary().map(|dep| &dep.revision.task_definition);
    let (port, protocol) = def
        .and_then(|def| service_port(d, def))
        .map_or((d.container_port, Protocol::Tcp), |(_, p, proto)| {
            (Some(p), proto)
        });
    let fixed_port = def.and_then(|def| fixed_port(d, def));
    let mut endpoints: Vec<Endpoint> = mine
        .iter()
        .filter_map(|t| {
            let node = t.info.node.as_ref()?;
            endpoint(d, t, txn.node(node).and_then(|n| n.address))
        })
        .collect();
    endpoints.sort_by(|a, b| a.task.cmp(&b.task));
    DiscoveredService {
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        service: s.spec.service_name.clone(),
        vip: if d.vip { s.vip } else { None },
        port,
        fixed_port,
        protocol,
        endpoints,
    }
}

/// The registry as the records have it in `txn` (version 0: the caller numbers it).
pub fn compute(txn: &Txn<'_>) -> Registry {
    let mut services: Vec<DiscoveredService> = txn
        .services()
        .into_iter()
        .filter_map(|s| Some(entry(txn, s, s.spec.discovery.as_ref()?)))
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Registry {
        version: 0,
        services,
    }
}

/// The registry entry of service `s`, as DNS answers for it (for `service endpoints`).
pub fn of_service(txn: &Txn<'_>, s: &ServiceRecord) -> Option<DiscoveredService> {
    Some(entry(txn, s, s.spec.discovery.as_ref()?))
}

/// Gives every service that asks for a VIP one from the pool (none is ever shared).
fn assign_vips(cx: &mut Ctx<'_, '_>) {
    let pool = cx.config.network.vip_pool;
    let mut used: BTreeSet<Ipv4Addr> = cx.txn.services().iter().filter_map(|s| s.vip).collect();
    let wanting: Vec<ServiceRecord> = cx
        .txn
        .services()
        .into_iter()
        .filter(|s| s.vip.is_none() && s.spec.discovery.as_ref().is_some_and(|d| d.vip))
        .cloned()
        .collect();
    for mut s in wanting {
        let Some(vip) = pool.hosts().find(|a| !used.contains(a)) else {
            tracing::warn!(service = %s.spec.service_name, %pool, "the VIP pool is exhausted");
            continue;
        };
        used.insert(vip);
        s.vip = Some(vip);
        let name = s.spec.service_name.clone();
        cx.txn.put_service(s);
        cx.event("service.vip", &name, format!("virtual address {vip}"));
    }
}

/// Sends each of `nodes` that has a session what brings it to the current registry; nodes
/// sent the same thing share one frame.
pub fn send(cx: &mut Ctx<'_, '_>, nodes: impl IntoIterator<Item = String>) {
    // By what they are sent: where the delta starts, and its form (whole services or
    // endpoints; the whole registry is one frame for every form).
    let mut groups: BTreeMap<(Option<u64>, RegistryForm), (RegistryPush, Vec<String>)> =
        BTreeMap::new();
    for node in nodes {
        // One push at a time per node: one under way is followed by what changed since it
        // once it is answered (`answered`).
        let Some(l) = cx
            .live
            .peek(&node)
            .filter(|l| l.session.is_some() && !l.registry_in_flight)
        else {
            continue;
        };
        let Some(push) = cx.feed.push_for(l.registry_sent, l.registry_form) else {
            continue;
        };
        let version = push.version;
        // The whole registry is one frame for every form but protocol 5's, which is packed: an
        // older agent sent that one would refuse it.
        let form = match (push.from, l.registry_form) {
            (Some(_), form) => form,
            (None, RegistryForm::Packed) => RegistryForm::Packed,
            (None, _) => RegistryForm::Whole,
        };
        cx.feed.note_sent(&node, l.registry_sent);
        cx.live.update(&node, |l| {
            l.registry_sent = Some(version);
            l.registry_in_flight = true;
        });
        groups
            .entry((push.from, form))
            .or_insert_with(|| (push, Vec::new()))
            .1
            .push(node);
    }
    for (_, (push, nodes)) in groups {
        cx.effects.push(Effect::PushRegistry { nodes, push });
    }
}

/// A registry push to `node` on `session` was answered, refused or given up on. The node may
/// be sent the next: what changed since, when the registry moved on meanwhile — every change
/// since composed into one delta; after a refused delta, the whole registry; after a refused
/// whole registry, the whole again with the next change or [`super::feed::RETRY_REFUSED_SECS`]
/// later, whichever comes first.
pub fn answered(
    cx: &mut Ctx<'_, '_>,
    node: &str,
    session: u64,
    pushed: u64,
    from: Option<u64>,
    answer: RegistryAnswer,
) {
    if cx
        .live
        .peek(node)
        .is_none_or(|l| l.session != Some(session))
    {
        return;
    }
    cx.live.update(node, |l| l.registry_in_flight = false);
    match answer {
        RegistryAnswer::Holds(h) if h != pushed => held(cx, node, pushed, from, h),
        RegistryAnswer::Holds(h) => {
            cx.live.update(node, |l| l.registry_sent = Some(h));
            send(cx, [node.to_string()]);
        }
        // Not known to be delivered: it is sent again, from what it held before (a node
        // that did take it answers that it holds `pushed`, and is sent what came since).
        RegistryAnswer::Unanswered => {
            cx.live.update(node, |l| l.registry_sent = from);
            send(cx, [node.to_string()]);
        }
        // What it holds is not known; the same push would likely be refused again: after a
        // delta, the whole; after the whole, the whole again a while later (a full disk
        // freed, say) unless a change sends it first.
        RegistryAnswer::Refused => {
            cx.live.update(node, |l| l.registry_sent = None);
            if from.is_some() {
                send(cx, [node.to_string()]);
            } else {
                cx.feed.refused(node, cx.now);
            }
        }
    }
}

/// A node answered a registry push with a version other than the one pushed: it did not hold
/// what the delta applied to (a push lost on the way, an agent restarted). It is sent what
/// changed since the version it holds, or the whole registry; a node that kept its own
/// version over a whole registry (a newer one) is not sent it again.
fn held(cx: &mut Ctx<'_, '_>, node: &str, pushed: u64, from: Option<u64>, held: u64) {
    if held == cx.feed.registry().version {
        cx.live.update(node, |l| l.registry_sent = Some(held));
        return;
    }
    if from.is_none() {
        // It holds a version at or above the one pushed that this control plane does not
        // know (a store put back from a backup numbered again from below): the next registry
        // is numbered above it, and sent whole.
        tracing::warn!(node = %node, pushed, held, "the node kept its registry over the whole one pushed: numbering the next above it");
        cx.feed.above(held, cx.now, node);
        cx.live.update(node, |l| l.registry_sent = None);
        return;
    }
    tracing::info!(node = %node, pushed, ?from, held, "registry delta out of sequence: sending what changed since the version the node holds");
    cx.live.update(node, |l| l.registry_sent = Some(held));
    send(cx, [node.to_string()]);
}

/// VIPs assigned, the registry recomputed and, when it changed, numbered anew and sent to
/// every live session.
///
/// Numbered: the milliseconds of the clock, or one more than the last version numbered when
/// that is later (a clock set back), that version kept in the store with a digest of the
/// services ([`RegistryMark`]). The first registry after a start has the version of the last
/// one numbered when it holds the same services: the nodes that say they hold it
/// (`Hello::registry`) are sent nothing.
pub fn round(cx: &mut Ctx<'_, '_>) {
    assign_vips(cx);
    let mut next = compute(cx.txn);
    let current = cx.feed.registry().clone();
    let floor = cx.feed.floor();
    if current.services == next.services && current.version != 0 && floor < current.version {
        let due = cx.feed.refused_due(cx.now);
        if !due.is_empty() {
            send(cx, due);
        }
        return;
    }
    let digest = next.digest();
    let mark = cx.txn.registry_mark().cloned();
    match mark {
        Some(m) if current.version == 0 && m.digest == digest && m.version > floor => {
            next.version = m.version
        }
        _ => {
            let last = mark
                .map_or(current.version, |m| m.version.max(current.version))
                .max(floor);
            next.version = last.saturating_add(1).max(cx.now.unix_ms);
            cx.txn.put_registry_mark(RegistryMark {
                version: next.version,
                digest: digest.clone(),
            });
        }
    }
    tracing::debug!(
        version = next.version,
        previous = current.version,
        floor,
        "registry numbered"
    );
    cx.feed.change(next, digest);
    let nodes = cx.live.in_session();
    if current.version == 0 {
        // Sessions that began before this first registry after a start: what their hello
        // said they hold.
        for node in &nodes {
            let claim = cx.live.peek(node).and_then(|l| l.registry_claim.clone());
            let Some(claim) = claim else {
                continue;
            };
            let held = cx.feed.held(&claim);
            if held.is_none() {
                cx.feed.above(claim.version, cx.now, node);
            }
            cx.live.update(node, |l| {
                l.registry_claim = None;
                l.registry_sent = held;
            });
        }
    }
    send(cx, nodes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> TaskDefinition {
        flotilla_api::taskdef::parse(json)
            .expect("valid")
            .definition
    }

    /// A running bridge task of definition `json`, at 10.42.0.5 on node n-1, publishing its
    /// first container port on host port 49200.
    fn bridge_task(json: &str) -> TaskRecord {
        let definition = def(json);
        let c = &definition.container_definitions[0];
        let m = &c.port_mappings[0];
        let binding = flotilla_api::tasks::NetworkBinding {
            container: c.name.clone(),
            container_port: m.container_port,
            host_port: 49200,
            protocol: m.protocol,
        };
        let mut t = TaskRecord::placed("t-1".into(), "web:2".into(), definition, "n-1", 0);
        t.info.state = TaskState::Running;
        t.info.network = Some(flotilla_api::tasks::TaskNetwork {
            mode: NetworkMode::Bridge,
            address: Some(Ipv4Addr::new(10, 42, 0, 5)),
            bindings: vec![binding],
        });
        t
    }

    #[test]
    fn each_endpoint_has_its_own_tasks_container_port() {
        // A deployment from a revision listening on 80 to one on 8080: while both serve, the
        // node's shortcut to its own task (its address, not the host port) must use the
        // task's own port.
        let d = Discovery {
            namespace: "shop".into(),
            name: "web".into(),
            container_name: None,
            container_port: None,
            vip: true,
        };
        for port in [80u16, 8080] {
            let t = bridge_task(&format!(
                r#"{{"family":"web","networkMode":"bridge","containerDefinitions":[
                    {{"name":"main","image":"x","memory":8,
                      "portMappings":[{{"containerPort":{port}}}]}}]}}"#
            ));
            let e = endpoint(&d, &t, Some(Ipv4Addr::new(192, 168, 1, 10))).expect("endpoint");
            assert_eq!(
                (e.address, e.port, e.task_address, e.task_port),
                (
                    Ipv4Addr::new(192, 168, 1, 10),
                    Some(49200),
                    Some(Ipv4Addr::new(10, 42, 0, 5)),
                    Some(port)
                )
            );
        }
    }

    #[test]
    fn the_service_port_is_the_named_or_the_first_mapping() {
        let d = def(r#"{"family":"f","containerDefinitions":[
                {"name":"side","image":"x","memory":8},
                {"name":"web","image":"x","memory":8,"portMappings":[
                    {"containerPort":80},{"containerPort":53,"protocol":"udp"}]}]}"#);
        let disc = |c: Option<&str>, p: Option<u16>| Discovery {
            namespace: "ns".into(),
            name: "n".into(),
            container_name: c.map(str::to_string),
            container_port: p,
            vip: false,
        };
        assert_eq!(
            service_port(&disc(None, None), &d),
            Some(("web".into(), 80, Protocol::Tcp))
        );
        assert_eq!(
            service_port(&disc(Some("web"), Some(53)), &d),
            Some(("web".into(), 53, Protocol::Udp))
        );
        assert_eq!(
            service_port(&disc(Some("side"), Some(9000)), &d),
            Some(("side".into(), 9000, Protocol::Tcp))
        );
        assert_eq!(service_port(&disc(Some("side"), None), &d), None);
        assert_eq!(service_port(&disc(Some("nope"), None), &d), None);
    }
}
