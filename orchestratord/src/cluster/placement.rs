//! Placement: the cluster as the pure scheduler sees it ([`snapshot`]), requests built from
//! task definitions and ECS placement settings ([`request`]), and the one plan applier
//! ([`apply`]) — the only way a task is placed. The applier re-checks every node a plan touches
//! against the state at commit time (Nomad's `evaluateNodePlan`): the node still exists, is not
//! revoked or draining, is connected (unless the operator named it), and has the room, host
//! ports and `distinctInstance` the task needs, counting the tasks placed before it in the same
//! command. A placement that fails the check is refused with its reason.

use std::collections::BTreeMap;

use flotilla_api::ops::{
    PlacementConstraintSpec, PlacementStrategySpec, TaskDefRevision, TaskInfo,
};
use flotilla_api::taskdef::{KeyValue, NetworkMode, Protocol, TaskDefinition};
use flotilla_scheduler::{Constraint, NodeState, NodeView, Request, Resources, Snapshot, Strategy};

use super::command::ClusterError;
use super::ctx::Ctx;
use super::live::Live;
use super::metrics::{PlacementOrigin, RefusalReason};
use super::network;
use super::records::{NodeRecord, Origin, TaskRecord};
use super::state::Txn;

/// ECS's reservation rule: the task's own `memory`/`cpu` when set; otherwise the sum over its
/// containers of `memoryReservation` (or `memory`) and `cpu`.
pub fn requirement(t: &TaskDefinition) -> Resources {
    let containers = &t.container_definitions;
    Resources {
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

/// The live tasks that hold any of `ports` on the nodes `why` was refused on for a host port
/// taken ([`flotilla_scheduler::Unplaceable::port_taken_on`]), as words to follow that
/// refusal: `; task t-… (web:3) on node n-… holds 8080/tcp`, one entry per task, at most
/// [`HOLDERS_NAMED`] named and the other tasks counted. Empty when no node was refused so.
pub fn port_holders(
    txn: &Txn<'_>,
    why: &flotilla_scheduler::Unplaceable,
    ports: &[flotilla_scheduler::HostPort],
) -> String {
    let mut named = Vec::new();
    let mut more = 0usize;
    for node in &why.port_taken_on {
        for t in txn.live_tasks_on(node) {
            let held: Vec<String> = host_ports(&t.definition)
                .into_iter()
                .filter(|p| ports.contains(p))
                .map(|p| p.to_string())
                .collect();
            if held.is_empty() {
                continue;
            }
            if named.len() == HOLDERS_NAMED {
                more += 1;
                continue;
            }
            named.push(format!(
                "task {} ({}) on node {node} holds {}",
                t.info.id,
                t.info.task_definition,
                held.join(", ")
            ));
        }
    }
    if named.is_empty() {
        return String::new();
    }
    let mut out = format!("; {}", named.join("; "));
    if more > 0 {
        out.push_str(&format!(
            "; and {more} more task{}",
            if more == 1 { "" } else { "s" }
        ));
    }
    out
}

/// How many tasks holding a port [`port_holders`] names.
pub const HOLDERS_NAMED: usize = 3;

/// The placement group of a task run by an operator: its family.
pub fn family_group(family: &str) -> String {
    format!("family:{family}")
}

/// Node `n` as the scheduler's static filters see it: its labels, reported capacity and
/// whether it takes tasks, with none of its tasks counted.
fn static_view(live: &Live, n: &NodeRecord) -> NodeView {
    NodeView {
        id: n.id.clone(),
        attributes: n.labels.clone(),
        capacity: n.capacity.map(|c| Resources {
            memory_mib: c.memory_mib,
            cpu_units: u64::from(c.cpus) * 1024,
        }),
        used: Resources::default(),
        ports: Default::default(),
        groups: Default::default(),
        state: if n.draining {
            NodeState::Draining
        } else if live.connected(&n.id) {
            NodeState::Ready
        } else {
            NodeState::Disconnected
        },
    }
}

/// Node `n` as the scheduler sees it in `txn`: its labels, reported capacity, what its live
/// tasks reserve, their host ports and groups, and whether it takes tasks.
pub fn node_view(txn: &Txn<'_>, live: &Live, n: &NodeRecord) -> NodeView {
    let mut v = static_view(live, n);
    for t in txn.live_tasks_on(&n.id) {
        let r = requirement(&t.definition);
        v.used.memory_mib += r.memory_mib;
        v.used.cpu_units += r.cpu_units;
        v.ports.extend(host_ports(&t.definition));
        // A task counts in its family's group and in its service's or schedule's.
        *v.groups
            .entry(family_group(&t.definition.family))
            .or_default() += 1;
        if let Some(by) = &t.info.started_by {
            *v.groups.entry(by.clone()).or_default() += 1;
        }
    }
    v
}

/// The cluster as the scheduler sees it: every node that is not revoked, by id.
pub fn snapshot(txn: &Txn<'_>, live: &Live) -> Snapshot {
    Snapshot {
        nodes: txn
            .nodes()
            .into_iter()
            .filter(|n| !n.revoked)
            .map(|n| node_view(txn, live, n))
            .collect(),
    }
}

/// The cluster as the scheduler's static filters see it (state, labels, capacity; no task
/// counted): enough for `flotilla_scheduler::eligible`, at a fraction of [`snapshot`]'s cost.
pub fn static_snapshot(txn: &Txn<'_>, live: &Live) -> Snapshot {
    Snapshot {
        nodes: txn
            .nodes()
            .into_iter()
            .filter(|n| !n.revoked)
            .map(|n| static_view(live, n))
            .collect(),
    }
}

/// The scheduler's request for `count` tasks of `def` in placement group `group`: the
/// definition's needs and constraints, the caller's constraints and strategies (default: spread
/// over nodes). The message of an error names the field at fault.
pub fn request(
    def: &TaskDefinition,
    group: String,
    count: usize,
    extra_constraints: &[PlacementConstraintSpec],
    strategies: &[PlacementStrategySpec],
    seed: u64,
) -> Result<Request, String> {
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
    Ok(Request {
        group,
        count,
        need: requirement(def),
        ports: host_ports(def),
        constraints,
        strategy,
        seed,
    })
}

/// What each task of a plan is made from.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its revision.
    pub revision: TaskDefRevision,
    /// Extra environment.
    pub env: Vec<KeyValue>,
    /// Its service or schedule.
    pub origin: Option<Origin>,
    /// Its service deployment.
    pub deployment: Option<String>,
}

/// A placement decision: a node for each task, from a snapshot that may be older than the
/// state it is applied to.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The request it was made for (needs, ports, constraints, group).
    pub request: Request,
    /// What each task is made from.
    pub task: NewTask,
    /// The node of each task, in order.
    pub nodes: Vec<String>,
    /// Every task or none (`task run`), or each task that still fits (a service round).
    pub all_or_nothing: bool,
    /// A node the operator named takes the task even while disconnected (it gets it with its
    /// next session).
    pub allow_disconnected: bool,
}

/// What the applier did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The tasks created, in plan order.
    pub created: Vec<TaskInfo>,
    /// Placements refused: node and why.
    pub refused: Vec<(String, String)>,
}

/// Applies a plan in the command's transaction: every placement re-checked against the state
/// now, then the task created (`PENDING` on its node, with an awsvpc address when its network
/// needs one, a `task.placed` event). An all-or-nothing plan with a refused placement fails
/// with [`ClusterError::Conflict`] naming the node and the reason, and the command commits
/// nothing. Placements and refusals are counted ([`super::metrics::Counters`]).
pub fn apply(cx: &mut Ctx<'_, '_>, plan: Plan) -> Result<Applied, ClusterError> {
    // First every placement is checked, each counting those before it; then the accepted
    // ones are created (so a refused all-or-nothing plan writes nothing).
    let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut out = Applied::default();
    for node in &plan.nodes {
        if !views.contains_key(node) {
            let Some(n) = cx.txn.node(node).filter(|n| !n.revoked) else {
                out.refused
                    .push((node.clone(), "is not in the cluster".into()));
                continue;
            };
            // The state now: this command's earlier view of the node while nothing else wrote
            // it since, else computed anew.
            let writes = cx.txn.node_writes(node);
            let mut v = match cx.views.get(node) {
                Some((w, v)) if *w == writes => v.clone(),
                _ => {
                    let v = node_view(cx.txn, cx.live, n);
                    cx.views.insert(node.clone(), (writes, v.clone()));
                    v
                }
            };
            if plan.allow_disconnected && v.state == NodeState::Disconnected {
                v.state = NodeState::Ready;
            }
            views.insert(node.clone(), v);
        }
        let Some(view) = views.get_mut(node) else {
            continue;
        };
        match flotilla_scheduler::refusal(view, &plan.request) {
            Some(why) => out.refused.push((node.clone(), why)),
            None => {
                book_request(view, &plan.request, &plan.task.revision.family);
                accepted.push(node.clone());
            }
        }
    }
    let origin = PlacementOrigin::of(plan.task.origin.as_ref());
    if plan.all_or_nothing && !out.refused.is_empty() {
        // Every task of the plan goes unplaced, under the first refusal's reason.
        if let Some((_, first)) = out.refused.first() {
            cx.metrics
                .refused(origin, RefusalReason::of(first), plan.nodes.len());
        }
        let why: Vec<String> = out
            .refused
            .iter()
            .map(|(n, why)| format!("node {n} {why}"))
            .collect();
        return Err(ClusterError::Conflict(format!(
            "{}:{}: the plan no longer fits: {}",
            plan.task.revision.family,
            plan.task.revision.revision,
            why.join("; ")
        )));
    }
    for (_, why) in &out.refused {
        cx.metrics.refused(origin, RefusalReason::of(why), 1);
    }
    cx.metrics.placed(origin, accepted.len());
    let awsvpc = plan.task.revision.task_definition.network_mode == NetworkMode::Awsvpc;
    for node in accepted {
        let address = if awsvpc {
            match network::awsvpc_address(cx.txn, &cx.config.network, cx.awsvpc_cursor) {
                Ok(a) => Some(a),
                Err(why) => {
                    // Its node reports it failed to start, with this reason.
                    tracing::warn!(taskdef = %plan.task.revision.family, "{why}");
                    None
                }
            }
        } else {
            None
        };
        let rec = new_task(cx, &plan.task, &node, address);
        out.created.push(rec.info.clone());
        let writes_before = cx.txn.node_writes(&node);
        cx.txn.put_task(rec);
        // The cached view counts what was just placed: still good.
        if let Some((w, v)) = cx.views.get_mut(&node) {
            if *w == writes_before {
                book_request(v, &plan.request, &plan.task.revision.family);
                *w = cx.txn.node_writes(&node);
            }
        }
    }
    Ok(out)
}

/// Counts one more task of `req` (of task definition family `family`) on `v`.
pub fn book_request(v: &mut NodeView, req: &Request, family: &str) {
    v.used.memory_mib += req.need.memory_mib;
    v.used.cpu_units += req.need.cpu_units;
    v.ports.extend(req.ports.iter().copied());
    *v.groups.entry(req.group.clone()).or_default() += 1;
    let family = family_group(family);
    if family != req.group {
        *v.groups.entry(family).or_default() += 1;
    }
}

/// A new task record on `node`, with its event.
fn new_task(
    cx: &mut Ctx<'_, '_>,
    t: &NewTask,
    node: &str,
    address: Option<flotilla_api::tasks::TaskAddress>,
) -> TaskRecord {
    let started_by = t.origin.as_ref().map(Origin::started_by);
    let mut rec = TaskRecord::placed(
        cx.ids.task(),
        format!("{}:{}", t.revision.family, t.revision.revision),
        t.revision.task_definition.clone(),
        node,
        cx.now.secs(),
    );
    rec.info.started_by = started_by.clone();
    rec.info.deployment = t.deployment.clone();
    rec.env = t.env.clone();
    rec.address = address;
    rec.secret_versions = super::secrets::versions_for(
        cx.txn,
        super::secrets::Kind::Secret,
        &t.revision.task_definition,
    );
    rec.config_versions = super::secrets::versions_for(
        cx.txn,
        super::secrets::Kind::Config,
        &t.revision.task_definition,
    );
    cx.event(
        "task.placed",
        &rec.info.id,
        format!(
            "{} on {node}{}",
            rec.info.task_definition,
            started_by
                .as_deref()
                .map(|s| format!(" for {s}"))
                .unwrap_or_default()
        ),
    );
    tracing::info!(task = %rec.info.id, node = %node, taskdef = %rec.info.task_definition, "task placed");
    rec
}
