//! The service loop: every second (or when woken by an operator's change), each service's tasks
//! are read back from the store, the pure planner (`flotilla_scheduler::service`) says what to
//! start and stop, and this applies it — placing through the scheduler, creating and stopping
//! tasks like an operator would, recording deployments' progress and events.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::ops::TaskDefRevision;
use flotilla_api::service::{
    DeploymentInfo, DeploymentStatus, ReconcilePolicy, RolloutState, SchedulingStrategy,
    ServiceInfo, ServiceStatus,
};
use flotilla_api::tasks::{DesiredStatus, HealthStatus, TaskState};
use flotilla_scheduler::service::{self, Action, Mode, Phase, Rollout};

use crate::agents::Agents;
use crate::store::{DeploymentRecord, ServiceRecord, StoreError, TaskRecord};

/// Rollout states as stored and shown.
pub const IN_PROGRESS: &str = "IN_PROGRESS";
/// Completed.
pub const COMPLETED: &str = "COMPLETED";
/// Failed.
pub const FAILED: &str = "FAILED";

/// Runs the loop forever.
pub async fn run(agents: Arc<Agents>) {
    loop {
        tokio::select! {
            _ = agents.services_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = round(&agents) {
            tracing::warn!("service loop: {e}");
        }
        if let Err(e) = crate::schedules::round(&agents) {
            tracing::warn!("schedules: {e}");
        }
        if let Err(e) = crate::discovery::round(&agents) {
            tracing::warn!("discovery: {e}");
        }
    }
}

/// `service:NAME`, the `startedBy` of a service's tasks.
pub fn started_by(name: &str) -> String {
    format!("service:{name}")
}

/// A new deployment of `revision`, the primary one.
pub fn new_deployment(revision: TaskDefRevision) -> DeploymentRecord {
    let id = flotilla_certs::new_node_id()
        .map(|n| format!("d-{}", &n[2..]))
        .unwrap_or_else(|_| format!("d-{}", crate::now()));
    DeploymentRecord {
        id,
        revision,
        primary: true,
        rollout: IN_PROGRESS.into(),
        reason: None,
        created_at: crate::now(),
    }
}

/// Where a service's task is, for the planner.
fn phase(t: &TaskRecord) -> Phase {
    match t.info.state {
        TaskState::Provisioning | TaskState::Pending => Phase::Pending,
        TaskState::Running => {
            let health = |h: HealthStatus| t.info.containers.iter().any(|c| c.health == Some(h));
            if health(HealthStatus::Unhealthy) {
                Phase::Unhealthy
            } else if health(HealthStatus::Starting) {
                Phase::Starting
            } else {
                Phase::Ready
            }
        }
        TaskState::Stopping => Phase::Stopping,
        TaskState::Stopped => {
            let reason = t.info.stop_reason.as_deref().unwrap_or_default();
            let retired = (reason.starts_with("service: ") && reason != service::REASON_UNHEALTHY)
                || reason == "node drained"
                || reason == "node removed";
            if retired {
                Phase::Retired
            } else {
                Phase::Failed
            }
        }
    }
}

fn tasks_of<'a>(all: &'a [TaskRecord], name: &str) -> Vec<&'a TaskRecord> {
    let by = started_by(name);
    all.iter()
        .filter(|t| t.info.started_by.as_deref() == Some(by.as_str()))
        .collect()
}

/// The API's view of a service.
pub fn info(s: &ServiceRecord, all: &[TaskRecord]) -> ServiceInfo {
    let mine = tasks_of(all, &s.spec.service_name);
    let count = |dep: Option<&str>, p: &dyn Fn(Phase) -> bool| {
        mine.iter()
            .filter(|t| dep.is_none_or(|d| t.info.deployment.as_deref() == Some(d)))
            .filter(|t| p(phase(t)))
            .count() as u32
    };
    let running = |p: Phase| matches!(p, Phase::Starting | Phase::Ready | Phase::Unhealthy);
    let pending = |p: Phase| p == Phase::Pending;
    let mut deployments: Vec<DeploymentInfo> = s
        .deployments
        .iter()
        .map(|d| DeploymentInfo {
            id: d.id.clone(),
            status: if d.primary {
                DeploymentStatus::Primary
            } else {
                DeploymentStatus::Active
            },
            task_definition: format!("{}:{}", d.revision.family, d.revision.revision),
            rollout_state: match d.rollout.as_str() {
                COMPLETED => RolloutState::Completed,
                FAILED => RolloutState::Failed,
                _ => RolloutState::InProgress,
            },
            rollout_state_reason: d.reason.clone(),
            running_count: count(Some(&d.id), &running),
            pending_count: count(Some(&d.id), &pending),
            failed_tasks: count(Some(&d.id), &|p| p == Phase::Failed),
            created_at: d.created_at,
        })
        .collect();
    deployments.sort_by_key(|d| std::cmp::Reverse(d.created_at));
    ServiceInfo {
        spec: s.spec.clone(),
        status: ServiceStatus::Active,
        running_count: count(None, &running),
        pending_count: count(None, &pending),
        deployments,
        placement_problem: s.placement_problem.clone(),
        vip: s.vip,
        created_at: s.created_at,
    }
}

/// One round over every service.
pub fn round(agents: &Arc<Agents>) -> Result<(), StoreError> {
    let names: Vec<String> = agents
        .store
        .services()?
        .into_iter()
        .map(|s| s.spec.service_name)
        .collect();
    for name in names {
        let _held = agents
            .services_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Read again under the lock: an operator may have changed or deleted it.
        let Some(s) = agents.store.service(&name)? else {
            continue;
        };
        if let Err(e) = one(agents, s) {
            tracing::warn!(service = %name, "{e}");
        }
    }
    Ok(())
}

fn one(agents: &Arc<Agents>, mut s: ServiceRecord) -> Result<(), StoreError> {
    let store = &agents.store;
    let before = s.clone();
    let nodes = store.nodes()?;
    let all = store.tasks()?;
    let snapshot = crate::placement::snapshot(&nodes, &all, agents);
    let name = s.spec.service_name.clone();
    let Some(primary) = s.deployments.iter().find(|d| d.primary).cloned() else {
        return Ok(());
    };
    let group = started_by(&name);
    let request = |def: &TaskDefRevision, count: usize| {
        crate::placement::request(
            &def.task_definition,
            group.clone(),
            count,
            &s.spec.placement_constraints,
            &s.spec.placement_strategy,
        )
    };
    let mine = tasks_of(&all, &name);
    // Tasks on a node gone longer than the service waits are lost: replaced, not counted
    // (their node cannot be told to stop them). The first time, that is recorded.
    let policy = &s.spec.disconnect_policy;
    let lost = |t: &TaskRecord| {
        policy.replace
            && t.info.state != TaskState::Stopped
            && t.info
                .node
                .as_deref()
                .and_then(|n| agents.disconnected_for(n))
                .is_some_and(|secs| secs >= u64::from(policy.lost_after))
    };
    for t in mine.iter().filter(|t| t.lost_at.is_none() && lost(t)) {
        let mut marked = (*t).clone();
        marked.lost_at = Some(crate::now());
        agents.event(
            "task.lost",
            &t.info.id,
            format!(
                "node {} silent for {} s or more; replaced elsewhere",
                t.info.node.as_deref().unwrap_or("-"),
                policy.lost_after
            ),
        );
        store.put_task(&marked)?;
    }
    let tasks: Vec<service::ServiceTask> = mine
        .iter()
        .map(|t| service::ServiceTask {
            id: t.info.id.clone(),
            deployment: t.info.deployment.clone().unwrap_or_default(),
            node: t.info.node.clone().unwrap_or_default(),
            phase: if lost(t) { Phase::Lost } else { phase(t) },
            created: t.info.created_at,
            was_lost: t.lost_at.is_some() || lost(t),
        })
        .collect();
    let eligible = match s.spec.scheduling_strategy {
        SchedulingStrategy::Daemon => match request(&primary.revision, 1) {
            Ok(r) => flotilla_scheduler::eligible(&snapshot, &r),
            Err(e) => {
                s.placement_problem = Some(e);
                Vec::new()
            }
        },
        SchedulingStrategy::Replica => Vec::new(),
    };
    let spec = service::ServiceSpec {
        mode: match s.spec.scheduling_strategy {
            SchedulingStrategy::Replica => Mode::Replica(s.spec.desired_count),
            SchedulingStrategy::Daemon => Mode::Daemon,
        },
        min_healthy_percent: s.spec.deployment_configuration.minimum_healthy_percent,
        max_percent: s.spec.deployment_configuration.maximum_percent,
        circuit_breaker: s
            .spec
            .deployment_configuration
            .deployment_circuit_breaker
            .enable,
        rollback: s
            .spec
            .deployment_configuration
            .deployment_circuit_breaker
            .rollback,
        reconcile: match policy.reconcile {
            ReconcilePolicy::KeepOriginal => service::Reconcile::KeepOriginal,
            ReconcilePolicy::LongestRunning => service::Reconcile::LongestRunning,
            ReconcilePolicy::KeepReplacement => service::Reconcile::KeepReplacement,
        },
    };
    let views: Vec<service::DeploymentView> = s
        .deployments
        .iter()
        .map(|d| service::DeploymentView {
            id: d.id.clone(),
            primary: d.primary,
            rollout: match d.rollout.as_str() {
                COMPLETED => Rollout::Completed,
                FAILED => Rollout::Failed,
                _ => Rollout::InProgress,
            },
        })
        .collect();
    let actions = service::plan(&spec, &views, &tasks, &eligible);
    let mut touched = BTreeSet::new();
    let problem = std::cell::RefCell::new(None);
    // Places `count` tasks of a deployment on `on` (as many as fit; the rest waits for room)
    // and creates them.
    let start = |d: &DeploymentRecord,
                 on: &flotilla_scheduler::Snapshot,
                 count: usize,
                 node: Option<&str>|
     -> Result<(), StoreError> {
        let placed = match request(&d.revision, count) {
            Err(e) => {
                *problem.borrow_mut() = Some(e);
                Vec::new()
            }
            Ok(r) => flotilla_scheduler::place(on, &r).unwrap_or_else(|why| {
                let prefix = node.map(|n| format!("{n}: ")).unwrap_or_default();
                *problem.borrow_mut() = Some(format!("{prefix}{why}"));
                let mut fewer = r.clone();
                fewer.count = why.placed;
                flotilla_scheduler::place(on, &fewer).unwrap_or_default()
            }),
        };
        if !placed.is_empty() {
            crate::api::create_tasks(
                agents,
                &d.revision,
                placed,
                &[],
                Some(group.clone()),
                Some(d.id.clone()),
            )?;
        }
        Ok(())
    };
    for action in actions {
        match action {
            Action::Start { deployment, count } => {
                if let Some(d) = s.deployments.iter().find(|d| d.id == deployment) {
                    start(d, &snapshot, count, None)?;
                }
            }
            Action::StartOn { deployment, node } => {
                if let Some(d) = s.deployments.iter().find(|d| d.id == deployment) {
                    let mut one_node = snapshot.clone();
                    one_node.nodes.retain(|n| n.id == node);
                    start(d, &one_node, 1, Some(&node))?;
                }
            }
            Action::Stop { task, reason } => {
                let Some(t) = mine.iter().find(|t| t.info.id == task) else {
                    continue;
                };
                if t.info.desired == DesiredStatus::Running {
                    agents.event("task.stopping", &task, reason.clone());
                    if crate::api::request_stop(store, (*t).clone(), &reason)? {
                        if let Some(n) = &t.info.node {
                            touched.insert(n.clone());
                        }
                    }
                }
            }
            Action::Complete { deployment } => {
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    d.rollout = COMPLETED.into();
                    d.reason = Some("every task is healthy and no older one is left".into());
                    s.last_completed = Some(d.revision.clone());
                    agents.event(
                        "service.deployment.completed",
                        &name,
                        format!(
                            "deployment {deployment} ({}:{})",
                            d.revision.family, d.revision.revision
                        ),
                    );
                }
            }
            Action::Fail {
                deployment,
                rollback,
                failures,
            } => {
                let reason = format!("circuit breaker: {failures} tasks failed");
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    d.rollout = FAILED.into();
                    d.reason = Some(reason.clone());
                }
                agents.event(
                    "service.deployment.failed",
                    &name,
                    format!("deployment {deployment}: {reason}"),
                );
                if let (true, Some(back)) = (rollback, s.last_completed.clone()) {
                    for d in &mut s.deployments {
                        d.primary = false;
                    }
                    let d = new_deployment(back);
                    agents.event(
                        "service.deployment.rollback",
                        &name,
                        format!(
                            "deployment {} rolls back to {}:{}",
                            d.id, d.revision.family, d.revision.revision
                        ),
                    );
                    s.deployments.push(d);
                }
            }
        }
    }
    // Deployments that are neither primary nor have live tasks are done with.
    let live: BTreeSet<String> = tasks
        .iter()
        .filter(|t| !matches!(t.phase, Phase::Retired | Phase::Failed))
        .map(|t| t.deployment.clone())
        .collect();
    s.deployments.retain(|d| d.primary || live.contains(&d.id));
    let problem = problem.into_inner();
    if problem != s.placement_problem {
        if let Some(p) = &problem {
            agents.event("service.unplaceable", &name, p.clone());
        }
        s.placement_problem = problem;
    }
    if s != before {
        store.put_service(&s)?;
    }
    for n in touched {
        store.bump_generation(&n)?;
        agents.clone().push_desired(&n);
    }
    Ok(())
}
