//! A node's desired state: its tasks that are not `STOPPED` (with their service's discovery
//! namespace and `stopOnClientAfter`), the schedules pinned to it, and its network settings —
//! numbered by the node's generation, which the commit that changes any of it bumps.

use std::collections::BTreeSet;

use flotilla_api::tasks::{DesiredState, DesiredStatus, DesiredTask, NodeNetwork, NodeSchedule};

use super::records::{Origin, TaskRecord};
use super::state::Txn;

/// What a node is to run, without its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    tasks: Vec<DesiredTask>,
    schedules: Vec<NodeSchedule>,
    network: NodeNetwork,
}

fn desired_task(txn: &Txn<'_>, t: &TaskRecord) -> DesiredTask {
    let service = t
        .info
        .started_by
        .as_deref()
        .and_then(Origin::parse)
        .and_then(|o| match o {
            Origin::Service(name) => txn.service(&name),
            Origin::Schedule(_) => None,
        });
    let stopping = t.info.desired == DesiredStatus::Stopped;
    DesiredTask {
        id: t.info.id.clone(),
        task_definition: t.info.task_definition.clone(),
        definition: t.definition.clone(),
        env: t.env.clone(),
        desired: t.info.desired,
        stop_reason: stopping.then(|| t.info.stop_reason.clone()).flatten(),
        stop_code: stopping.then_some(t.info.stop_code).flatten(),
        stop_on_client_after: service.and_then(|s| s.spec.disconnect_policy.stop_on_client_after),
        address: t.address,
        namespace: service
            .and_then(|s| s.spec.discovery.as_ref())
            .map(|d| d.namespace.clone()),
    }
}

/// What node `node` is to run in `txn`; `None` when there is no such node.
pub fn content(txn: &Txn<'_>, node: &str) -> Option<Content> {
    let n = txn.node(node)?;
    let tasks = txn
        .live_tasks_on(node)
        .into_iter()
        .map(|t| desired_task(txn, t))
        .collect();
    let schedules = txn
        .schedules()
        .into_iter()
        .filter(|s| s.spec.node.as_deref() == Some(node))
        .map(|s| NodeSchedule {
            name: s.spec.name.clone(),
            cron: s.spec.cron.clone(),
            timezone: s.spec.timezone.clone(),
            overlap: s.spec.overlap,
            task_definition: format!("{}:{}", s.revision.family, s.revision.revision),
            definition: s.revision.task_definition.clone(),
            env: s.spec.env.clone(),
        })
        .collect();
    Some(Content {
        tasks,
        schedules,
        network: NodeNetwork {
            bridge_subnet: n.bridge_subnet,
        },
    })
}

/// Node `node`'s desired state in `txn`.
pub fn state(txn: &Txn<'_>, node: &str) -> Option<DesiredState> {
    let generation = txn.node(node)?.generation;
    let c = content(txn, node)?;
    Some(DesiredState {
        generation,
        tasks: c.tasks,
        schedules: c.schedules,
        network: c.network,
    })
}

/// Bumps the generation of every node whose desired state `txn` changed; returns them.
pub fn bump_changed(txn: &mut Txn<'_>) -> BTreeSet<String> {
    let before = Txn::new(txn.base());
    let mut bumped = BTreeSet::new();
    for node in txn.touched_nodes() {
        let after = content(txn, &node);
        if after.is_none() || content(&before, &node) == after {
            continue;
        }
        if let Some(n) = txn.node(&node) {
            let mut n = n.clone();
            n.generation += 1;
            txn.put_node(n);
            bumped.insert(node);
        }
    }
    bumped
}
