//! The discovery registry: from the store (services with `discovery`, their running healthy
//! tasks, the networks their nodes reported, the nodes' addresses) to what every node answers
//! DNS from and programs VIPs with. Recomputed every service round; pushed to every live session
//! when it changed, and to each node when its session starts.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use flotilla_api::discovery::{DiscoveredService, Discovery, Endpoint, Registry};
use flotilla_api::taskdef::{NetworkMode, Protocol, TaskDefinition};
use flotilla_api::tasks::TaskState;
use flotilla_api::{PushReply, ServerPush};
use ipnet::Ipv4Net;

use crate::agents::Agents;
use crate::store::{ServiceRecord, StoreError, TaskRecord};

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
        && t.info.containers.iter().all(|c| {
            c.health
                .is_none_or(|h| h == flotilla_api::tasks::HealthStatus::Healthy)
        })
}

/// Where task `t` (of a service with discovery `d`) is reached, if it is.
fn endpoint(d: &Discovery, t: &TaskRecord, node_address: Option<Ipv4Addr>) -> Option<Endpoint> {
    let net = t.info.network.as_ref()?;
    let node = t.info.node.clone()?;
    let port = service_port(d, &t.definition);
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
    })
}

/// The registry as the store has it now (version 0: the caller numbers it).
pub fn compute(agents: &Agents) -> Result<Registry, StoreError> {
    let services = agents.store.services()?;
    if services.iter().all(|s| s.spec.discovery.is_none()) {
        return Ok(Registry::default());
    }
    let nodes: HashMap<String, Option<Ipv4Addr>> = agents
        .store
        .nodes()?
        .into_iter()
        .map(|n| (n.id, n.address))
        .collect();
    let tasks = agents.store.tasks()?;
    let mut out = Vec::new();
    for s in &services {
        let Some(d) = &s.spec.discovery else { continue };
        let by = crate::services::started_by(&s.spec.service_name);
        let mine: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| t.info.started_by.as_deref() == Some(by.as_str()) && healthy(t))
            .collect();
        let (port, protocol) = mine
            .iter()
            .find_map(|t| service_port(d, &t.definition))
            .map_or((d.container_port, Protocol::Tcp), |(_, p, proto)| {
                (Some(p), proto)
            });
        let mut endpoints: Vec<Endpoint> = mine
            .iter()
            .filter_map(|t| {
                let node = t.info.node.as_ref()?;
                endpoint(d, t, nodes.get(node).copied().flatten())
            })
            .collect();
        endpoints.sort_by(|a, b| a.task.cmp(&b.task));
        // What the service's current definition fixes.
        let fixed_port = s
            .deployments
            .iter()
            .find(|dep| dep.primary)
            .and_then(|dep| fixed_port(d, &dep.revision.task_definition));
        out.push(DiscoveredService {
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            service: s.spec.service_name.clone(),
            vip: if d.vip { s.vip } else { None },
            port,
            fixed_port,
            protocol,
            endpoints,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(Registry {
        version: 0,
        services: out,
    })
}

/// Gives every service that asks for a VIP one from `pool` (none is ever shared); true when one
/// was assigned.
fn assign_vips(agents: &Agents, pool: Ipv4Net) -> Result<bool, StoreError> {
    let services = agents.store.services()?;
    let mut used: BTreeSet<Ipv4Addr> = services.iter().filter_map(|s| s.vip).collect();
    let mut changed = false;
    for mut s in services {
        let wants = s.spec.discovery.as_ref().is_some_and(|d| d.vip);
        if !wants || s.vip.is_some() {
            continue;
        }
        let Some(vip) = pool.hosts().find(|a| !used.contains(a)) else {
            tracing::warn!(service = %s.spec.service_name, %pool, "the VIP pool is exhausted");
            continue;
        };
        used.insert(vip);
        s.vip = Some(vip);
        agents.store.put_service(&s)?;
        agents.event(
            "service.vip",
            &s.spec.service_name,
            format!("virtual address {vip}"),
        );
        changed = true;
    }
    Ok(changed)
}

/// One round: VIPs assigned, the registry recomputed and, when it changed, pushed everywhere.
pub fn round(agents: &Arc<Agents>) -> Result<(), StoreError> {
    {
        let _held = agents
            .services_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        assign_vips(agents, agents.network.settings.vip_pool)?;
    }
    let mut next = compute(agents)?;
    let changed = {
        let mut current = agents.registry.lock().unwrap_or_else(|p| p.into_inner());
        if current.services == next.services && current.version != 0 {
            false
        } else {
            next.version = (current.version + 1).max(crate::now_millis());
            *current = Arc::new(next);
            true
        }
    };
    if changed {
        let sessions = agents.live_nodes();
        for node in sessions {
            agents.clone().push_registry(&node);
        }
    }
    Ok(())
}

impl Agents {
    /// Sends node `node_id` the current registry over its live session, if it has one.
    pub fn push_registry(self: Arc<Self>, node_id: &str) {
        let node_id = node_id.to_string();
        tokio::spawn(async move {
            let Some(conn) = self.live_session(&node_id) else {
                return;
            };
            let registry = self
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if registry.version == 0 {
                return;
            }
            match crate::agents::push(&conn, &ServerPush::Registry((*registry).clone())).await {
                Ok(PushReply::Persisted { .. }) => {
                    tracing::debug!(node = %node_id, version = registry.version, "registry delivered")
                }
                Ok(PushReply::Refused { reason }) => {
                    tracing::warn!(node = %node_id, "registry refused: {reason}")
                }
                Err(e) => tracing::debug!(node = %node_id, "registry not delivered: {e}"),
            }
        });
    }
}

/// The registry entry of service `s`, as DNS answers for it (for `service endpoints`).
pub fn of_service(
    agents: &Agents,
    s: &ServiceRecord,
) -> Result<Option<DiscoveredService>, StoreError> {
    let Some(d) = &s.spec.discovery else {
        return Ok(None);
    };
    let registry = compute(agents)?;
    Ok(registry.service(&d.namespace, &d.name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> TaskDefinition {
        flotilla_api::taskdef::parse(json)
            .expect("valid")
            .definition
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
