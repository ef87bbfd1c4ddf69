//! What the scheduler is given: the cluster as a snapshot (nodes with their labels, reported
//! capacity and what their live tasks reserve) and requests built from task definitions and
//! ECS placement settings.

use flotilla_api::ops::{PlacementConstraintSpec, PlacementStrategySpec};
use flotilla_api::taskdef::{NetworkMode, Protocol, TaskDefinition};
use flotilla_api::tasks::TaskState;

use crate::agents::Agents;
use crate::store::{NodeRecord, TaskRecord};

/// ECS's reservation rule: the task's own `memory`/`cpu` when set; otherwise the sum over its
/// containers of `memoryReservation` (or `memory`) and `cpu`.
pub fn requirement(t: &TaskDefinition) -> flotilla_scheduler::Resources {
    let containers = &t.container_definitions;
    flotilla_scheduler::Resources {
        memory_mib: t.memory.unwrap_or_else(|| {
            containers
                .iter()
                .map(|c| c.memory_reservation.or(c.memory).unwrap_or(0))
                .sum()
        }),
        cpu_units: t
            .cpu
            .map(u64::from)
            .unwrap_or_else(|| containers.iter().map(|c| u64::from(c.cpu)).sum()),
    }
}

/// The static host ports a task takes on its node (host and bridge networking).
pub fn host_ports(t: &TaskDefinition) -> Vec<flotilla_scheduler::HostPort> {
    if !matches!(t.network_mode, NetworkMode::Host | NetworkMode::Bridge) {
        return Vec::new();
    }
    t.container_definitions
        .iter()
        .flat_map(|c| &c.port_mappings)
        .filter_map(|m| {
            let port = match t.network_mode {
                NetworkMode::Host => Some(m.container_port),
                _ => m.host_port.filter(|p| *p != 0),
            }?;
            Some(flotilla_scheduler::HostPort {
                port,
                udp: m.protocol == Protocol::Udp,
            })
        })
        .collect()
}

/// The cluster as the scheduler sees it: nodes with their labels, reported capacity, and what
/// their live tasks reserve.
pub fn snapshot(
    nodes: &[NodeRecord],
    tasks: &[TaskRecord],
    agents: &Agents,
) -> flotilla_scheduler::Snapshot {
    use flotilla_scheduler::{NodeState, NodeView, Resources};
    let connected = agents.connected();
    let mut views: Vec<NodeView> = nodes
        .iter()
        .filter(|n| !n.revoked)
        .map(|n| NodeView {
            id: n.id.clone(),
            attributes: n.labels.clone(),
            capacity: agents.live(&n.id).resources.map(|r| Resources {
                memory_mib: r.memory_bytes >> 20,
                cpu_units: u64::from(r.cpus) * 1024,
            }),
            used: Resources::default(),
            ports: Default::default(),
            groups: Default::default(),
            state: if n.draining {
                NodeState::Draining
            } else if connected.contains(&n.id) {
                NodeState::Ready
            } else {
                NodeState::Disconnected
            },
        })
        .collect();
    let index: std::collections::HashMap<String, usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.clone(), i))
        .collect();
    for t in tasks.iter().filter(|t| t.info.state != TaskState::Stopped) {
        let Some(v) = t
            .info
            .node
            .as_ref()
            .and_then(|n| index.get(n))
            .map(|i| &mut views[*i])
        else {
            continue;
        };
        let r = requirement(&t.definition);
        v.used.memory_mib += r.memory_mib;
        v.used.cpu_units += r.cpu_units;
        v.ports.extend(host_ports(&t.definition));
        *v.groups
            .entry(format!("family:{}", t.definition.family))
            .or_default() += 1;
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    flotilla_scheduler::Snapshot { nodes: views }
}

/// The scheduler's request for `count` tasks of `def` in placement group `group`: the
/// definition's needs and constraints, the caller's constraints and strategies (default: spread
/// over nodes).
pub fn request(
    def: &TaskDefinition,
    group: String,
    count: usize,
    extra_constraints: &[PlacementConstraintSpec],
    strategies: &[PlacementStrategySpec],
) -> Result<flotilla_scheduler::Request, String> {
    use flotilla_scheduler::{Constraint, Strategy};
    let mut constraints = Vec::new();
    for c in &def.placement_constraints {
        constraints.push(
            Constraint::member_of(&c.expression)
                .map_err(|e| format!("placementConstraints '{}': {e}", c.expression))?,
        );
    }
    for (i, c) in extra_constraints.iter().enumerate() {
        constraints.push(match (c.kind.as_str(), &c.expression) {
            ("distinctInstance", None) => Constraint::DistinctInstance,
            ("memberOf", Some(e)) => Constraint::member_of(e)
                .map_err(|err| format!("placementConstraints[{i}].expression '{e}': {err}"))?,
            (k, _) => {
                return Err(format!(
                    "placementConstraints[{i}]: '{k}' (memberOf with an expression, or distinctInstance)"
                ))
            }
        });
    }
    let mut strategy = Vec::new();
    for (i, s) in strategies.iter().enumerate() {
        strategy.push(
            Strategy::parse(&s.kind, s.field.as_deref())
                .map_err(|e| format!("placementStrategy[{i}]: {e}"))?,
        );
    }
    if strategy.is_empty() {
        strategy.push(Strategy::Spread("instanceId".into()));
    }
    Ok(flotilla_scheduler::Request {
        group,
        count,
        need: requirement(def),
        ports: host_ports(def),
        constraints,
        strategy,
        seed: crate::now(),
    })
}
