//! The gauges of a metrics scrape: the cluster's state in numbers, counted from the core's
//! memory when a scrape asks ([`super::Command::Metrics`]); nothing read from the store,
//! nothing written.

use std::collections::BTreeMap;

use flotilla_api::service::SchedulingStrategy;

use super::live::Live;
use super::metrics::{
    rollout_state, task_state, Counters, ServiceTasks, Snapshot, NODE_STATES, ROLLOUT_STATES,
    TASK_STATES,
};
use super::operator::node_info;
use super::placement;
use super::records::Origin;
use super::services;
use super::state::Txn;

/// The cluster's state in numbers, from memory, with `counters`.
///
/// Cost: one pass over the nodes and one over the tasks, then each service's tasks through its
/// `startedBy` index (O(records) in all, no store read, no write) — plus, when a DAEMON service
/// exists, the scheduler's snapshot of the cluster once (what a service round builds). It runs on
/// the core's thread, between commands: at 10,000 nodes and their tasks that is a few
/// milliseconds per scrape (BENCHMARKS.md).
pub fn snapshot(txn: &Txn<'_>, live: &Live, counters: &Counters) -> Snapshot {
    let mut nodes: Vec<(&'static str, u64)> = NODE_STATES.iter().map(|s| (s.as_str(), 0)).collect();
    let mut sessions = 0;
    for n in txn.nodes() {
        let state = node_info(n, live).state;
        if let Some((_, c)) = nodes.iter_mut().find(|(s, _)| *s == state.as_str()) {
            *c += 1;
        }
        if live.connected(&n.id) {
            sessions += 1;
        }
    }
    let services = txn.services();
    let mut tasks: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let names = services
        .iter()
        .map(|s| s.spec.service_name.clone())
        .chain([String::new()]);
    for name in names {
        for s in TASK_STATES {
            tasks.insert((name.clone(), task_state(s)), 0);
        }
    }
    for t in txn.tasks() {
        let service = t
            .info
            .started_by
            .as_deref()
            .and_then(Origin::service_name)
            .unwrap_or_default();
        *tasks
            .entry((service.to_string(), task_state(t.info.state)))
            .or_default() += 1;
    }
    let mut scheduler_view = None;
    let mut per_service = Vec::with_capacity(services.len());
    let mut deployments = BTreeMap::new();
    for s in services {
        let info = services::info(txn, s);
        let name = s.spec.service_name.clone();
        let desired = match s.spec.scheduling_strategy {
            SchedulingStrategy::Replica => u64::from(s.spec.desired_count),
            SchedulingStrategy::Daemon => s.primary().map_or(0, |d| {
                let request = placement::request(
                    &d.revision.task_definition,
                    Origin::Service(name.clone()).started_by(),
                    1,
                    &s.spec.placement_constraints,
                    &s.spec.placement_strategy,
                    0,
                );
                match request {
                    Ok(r) => {
                        let view =
                            scheduler_view.get_or_insert_with(|| placement::snapshot(txn, live));
                        flotilla_scheduler::eligible(view, &r).len() as u64
                    }
                    // It cannot place anything: nowhere to run.
                    Err(_) => 0,
                }
            }),
        };
        for r in ROLLOUT_STATES {
            deployments.insert((name.clone(), rollout_state(r)), 0);
        }
        for d in &info.deployments {
            *deployments
                .entry((name.clone(), rollout_state(d.rollout_state)))
                .or_default() += 1;
        }
        per_service.push(ServiceTasks {
            service: name,
            desired,
            running: u64::from(info.running_count),
            pending: u64::from(info.pending_count),
        });
    }
    Snapshot {
        nodes,
        tasks,
        services: per_service,
        deployments,
        sessions,
        counters: counters.clone(),
    }
}
