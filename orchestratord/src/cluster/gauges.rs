//! The gauges of a metrics scrape: the cluster's state in numbers, counted from the core's
//! memory when a scrape asks ([`super::Command::Metrics`]); nothing read from the store,
//! nothing written.

use std::collections::{BTreeMap, HashMap};

use flotilla_api::service::SchedulingStrategy;
use flotilla_scheduler::service::Phase;

use super::live::Live;
use super::metrics::{
    rollout_state, task_state, Counters, ServiceTasks, Snapshot, NODE_STATES, ROLLOUT_STATES,
    TASK_STATES,
};
use super::operator::node_state;
use super::placement;
use super::records::Origin;
use super::services;
use super::state::Txn;

/// The cluster's state in numbers, from memory, with `counters`.
///
/// Cost: one pass over the nodes and one over the tasks (O(records), no store read, no write,
/// an allocation per service rather than per record), plus, when a DAEMON service exists, the
/// nodes as the scheduler's static filters see them, once. It runs on the core's thread between
/// commands: BENCHMARKS.md has its time on 1,000 nodes and 11,000 tasks.
pub fn snapshot(txn: &Txn<'_>, live: &Live, counters: &Counters) -> Snapshot {
    let mut nodes: Vec<(&'static str, u64)> = NODE_STATES.iter().map(|s| (s.as_str(), 0)).collect();
    let mut sessions = 0;
    for n in txn.nodes() {
        let state = node_state(n, live);
        if let Some((_, c)) = nodes.iter_mut().find(|(s, _)| *s == state.as_str()) {
            *c += 1;
        }
        if live.connected(&n.id) {
            sessions += 1;
        }
    }
    let services = txn.services();
    // By service name as the records hold it: owned strings only per service at the end.
    let mut by_state: HashMap<(&str, &'static str), u64> = HashMap::new();
    // Running and pending tasks per service, as `services::info` counts them.
    let mut counts: HashMap<&str, (u64, u64)> = HashMap::new();
    for s in &services {
        for st in TASK_STATES {
            by_state.insert((s.spec.service_name.as_str(), task_state(st)), 0);
        }
    }
    for st in TASK_STATES {
        by_state.insert(("", task_state(st)), 0);
    }
    for t in txn.tasks() {
        let service = t
            .info
            .started_by
            .as_deref()
            .and_then(Origin::service_name)
            .unwrap_or_default();
        *by_state
            .entry((service, task_state(t.info.state)))
            .or_default() += 1;
        if !service.is_empty() {
            let c = counts.entry(service).or_default();
            match services::phase(t) {
                Phase::Starting | Phase::Ready | Phase::Unhealthy => c.0 += 1,
                Phase::Pending => c.1 += 1,
                _ => {}
            }
        }
    }
    let mut eligibility = None;
    let mut per_service = Vec::with_capacity(services.len());
    let mut deployments = BTreeMap::new();
    for s in &services {
        let name = s.spec.service_name.as_str();
        let desired = match s.spec.scheduling_strategy {
            SchedulingStrategy::Replica => u64::from(s.spec.desired_count),
            SchedulingStrategy::Daemon => {
                let view = eligibility.get_or_insert_with(|| placement::static_snapshot(txn, live));
                services::daemon_desired(s, view)
            }
        };
        for r in ROLLOUT_STATES {
            deployments.insert((name.to_string(), rollout_state(r)), 0);
        }
        for d in &s.deployments {
            *deployments
                .entry((name.to_string(), rollout_state(d.rollout)))
                .or_default() += 1;
        }
        let (running, pending) = counts.get(name).copied().unwrap_or_default();
        per_service.push(ServiceTasks {
            service: name.to_string(),
            desired,
            running,
            pending,
        });
    }
    Snapshot {
        nodes,
        tasks: by_state
            .into_iter()
            .map(|((service, state), n)| ((service.to_string(), state), n))
            .collect(),
        services: per_service,
        deployments,
        sessions,
        counters: counters.clone(),
    }
}
