//! A node's desired state: its tasks that are not `STOPPED` (with their service's discovery
//! namespace and `stopOnClientAfter`), the schedules pinned to it, and its network settings —
//! numbered by the node's generation, which the commit that changes any of it bumps.

use std::collections::BTreeSet;

use flotilla_api::tasks::{DesiredState, DesiredStatus, DesiredTask, NodeNetwork, NodeSchedule};

use super::records::{Origin, TaskRecord};
use super::state::Txn;

/// What a node's desired state is made of, by reference: equal exactly when the desired
/// states built from them are (compared without building them; a record the transaction did
/// not write is the same reference on both sides).
#[derive(Debug)]
struct Parts<'a> {
    tasks: Vec<(&'a TaskRecord, Option<u32>, Option<&'a str>)>,
    schedules: Vec<&'a super::records::ScheduleRecord>,
    network: Option<ipnet::Ipv4Net>,
}

impl PartialEq for Parts<'_> {
    fn eq(&self, other: &Self) -> bool {
        let same_task =
            |(a, sa, na): &(&TaskRecord, Option<u32>, Option<&str>),
             (b, sb, nb): &(&TaskRecord, Option<u32>, Option<&str>)| {
                sa == sb
                    && na == nb
                    && (std::ptr::eq(*a, *b)
                        || (a.info.id == b.info.id
                            && a.info.task_definition == b.info.task_definition
                            && a.info.desired == b.info.desired
                            && a.info.stop_reason == b.info.stop_reason
                            && a.info.stop_code == b.info.stop_code
                            && a.env == b.env
                            && a.address == b.address
                            && a.secret_versions == b.secret_versions
                            && a.config_versions == b.config_versions
                            && a.definition == b.definition))
            };
        self.network == other.network
            && self.tasks.len() == other.tasks.len()
            && self
                .tasks
                .iter()
                .zip(&other.tasks)
                .all(|(a, b)| same_task(a, b))
            && self.schedules.len() == other.schedules.len()
            && self
                .schedules
                .iter()
                .zip(&other.schedules)
                .all(|(a, b)| std::ptr::eq(*a, *b) || a == b)
    }
}

fn parts<'a>(txn: &'a Txn<'_>, node: &str) -> Option<Parts<'a>> {
    let n = txn.node(node)?;
    let tasks = txn
        .live_tasks_on(node)
        .into_iter()
        .map(|t| {
            let service = t
                .info
                .started_by
                .as_deref()
                .and_then(Origin::service_name)
                .and_then(|name| txn.service(name));
            (
                t,
                service.and_then(|s| s.spec.disconnect_policy.stop_on_client_after),
                service
                    .and_then(|s| s.spec.discovery.as_ref())
                    .map(|d| d.namespace.as_str()),
            )
        })
        .collect();
    let schedules = txn
        .schedules()
        .into_iter()
        .filter(|s| s.spec.node.as_deref() == Some(node))
        .collect();
    Some(Parts {
        tasks,
        schedules,
        network: n.bridge_subnet,
    })
}

/// Node `node`'s desired state in `txn`; `None` when there is no such node.
pub fn state(txn: &Txn<'_>, node: &str) -> Option<DesiredState> {
    let generation = txn.node(node)?.generation;
    let p = parts(txn, node)?;
    Some(DesiredState {
        generation,
        tasks: p
            .tasks
            .into_iter()
            .map(|(t, stop_on_client_after, namespace)| {
                let stopping = t.info.desired == DesiredStatus::Stopped;
                DesiredTask {
                    id: t.info.id.clone(),
                    task_definition: t.info.task_definition.clone(),
                    definition: t.definition.clone(),
                    env: t.env.clone(),
                    desired: t.info.desired,
                    stop_reason: stopping.then(|| t.info.stop_reason.clone()).flatten(),
                    stop_code: stopping.then_some(t.info.stop_code).flatten(),
                    stop_on_client_after,
                    address: t.address,
                    namespace: namespace.map(str::to_string),
                    service: t
                        .info
                        .started_by
                        .as_deref()
                        .and_then(Origin::service_name)
                        .map(str::to_string),
                    secret_versions: t.secret_versions.clone(),
                    config_versions: t.config_versions.clone(),
                }
            })
            .collect(),
        schedules: p
            .schedules
            .into_iter()
            .map(|s| NodeSchedule {
                name: s.spec.name.clone(),
                cron: s.spec.cron.clone(),
                timezone: s.spec.timezone.clone(),
                overlap: s.spec.overlap,
                task_definition: format!("{}:{}", s.revision.family, s.revision.revision),
                definition: s.revision.task_definition.clone(),
                env: s.spec.env.clone(),
            })
            .collect(),
        network: NodeNetwork {
            bridge_subnet: p.network,
        },
    })
}

/// Bumps the generation of every node whose desired state `txn` changed; returns them.
pub fn bump_changed(txn: &mut Txn<'_>) -> BTreeSet<String> {
    let before = Txn::new(txn.base());
    let mut bumped = BTreeSet::new();
    for node in txn.touched_nodes() {
        let changed = match parts(txn, &node) {
            None => false,
            Some(after) => parts(&before, &node) != Some(after),
        };
        if !changed {
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
