//! Services: every round (a [`super::command::Tick::ServiceRound`]) each service's tasks are
//! read, the pure planner (`flotilla_scheduler::service`) says what to start and stop, and this
//! applies it in the round's transaction — starts placed by the scheduler and created by the
//! plan applier, stops with the planner's cause as their stop code, deployments' progress and
//! events recorded. The node-loss check records tasks whose node was silent longer than their
//! service allows.

use std::collections::{BTreeSet, HashMap};

use flotilla_api::ops::TaskDefRevision;
use flotilla_api::service::{
    DeploymentInfo, DeploymentStatus, ReconcilePolicy, ReplaceStopped, RolloutState,
    SchedulingStrategy, ServiceInfo, ServiceStatus,
};
use flotilla_api::tasks::{DesiredStatus, HealthStatus, StopCode, TaskState};
use flotilla_scheduler::service::{self, Action, Mode, Phase, Rollout, StopCause};
use flotilla_scheduler::Snapshot;

use super::command::ClusterError;
use super::ctx::Ctx;
use super::live::Live;
use super::metrics::{Counters, PlacementOrigin};
use super::placement::{self, NewTask, Plan};
use super::records::{DeploymentRecord, Origin, ServiceRecord, TaskRecord};
use super::state::Txn;
use super::tasks;

/// A new deployment of `revision`, the primary one.
pub fn new_deployment(cx: &mut Ctx<'_, '_>, revision: TaskDefRevision) -> DeploymentRecord {
    DeploymentRecord {
        id: cx.ids.deployment(),
        revision,
        primary: true,
        rollout: RolloutState::InProgress,
        completed_once: false,
        reason: None,
        created_at: cx.now.secs(),
    }
}

/// Puts completed deployment `d` of service `name` back in progress: `running` of its tasks
/// run, fewer than the `desired` (the planner's [`Action::Reopen`]; `service update` does it at
/// once when it scales out, so its answer does not say COMPLETED).
pub fn reopen(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    d: &mut DeploymentRecord,
    running: usize,
    desired: u32,
) {
    d.rollout = RolloutState::InProgress;
    // It was completed (also when stored before `completed_once` was).
    d.completed_once = true;
    let reason = format!("{running} of {desired} tasks running");
    cx.event(
        "service.deployment.in_progress",
        name,
        format!("deployment {}: {reason}", d.id),
    );
    d.reason = Some(reason);
}

/// After a scale-out to `n` (an operator's or auto scaling's): a completed primary deployment
/// that now runs fewer tasks is in progress again from this command on (the service round
/// would say so a moment later).
pub fn reopen_if_short(cx: &mut Ctx<'_, '_>, s: &mut ServiceRecord, n: u32) {
    let running = info(cx.txn, s)
        .deployments
        .iter()
        .find(|d| d.status == DeploymentStatus::Primary)
        // (A one-shot service's completed tasks count: they are not run again.)
        .map(|d| (d.running_count + d.completed_count) as usize);
    let name = s.spec.service_name.clone();
    if let (Some(running), Some(d)) = (running, s.deployments.iter_mut().find(|d| d.primary)) {
        if d.rollout == RolloutState::Completed && running < n as usize {
            reopen(cx, &name, d, running, n);
        }
    }
}

/// Where a service's task is, for the planner: by its state, its containers' health, and for
/// a stopped task its stop code — and, when an essential container ended it, whether every
/// essential container exited with code 0 (it *completed*, as `depends_on:
/// service_completed_successfully` means; the others are stopped with it).
pub fn phase(t: &TaskRecord) -> Phase {
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
            if t.info.stop_code.is_some_and(StopCode::is_retirement) {
                Phase::Retired
            } else if completed(t) {
                Phase::Completed
            } else {
                Phase::Failed
            }
        }
    }
}

/// Whether stopped task `t` ended because its essential containers exited, all with code 0.
fn completed(t: &TaskRecord) -> bool {
    let exit_code = |name: &str| {
        t.info
            .containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.exit_code)
    };
    let mut essential = t
        .definition
        .container_definitions
        .iter()
        .filter(|c| c.essential)
        .peekable();
    t.info.stop_code == Some(StopCode::EssentialContainerExited)
        && essential.peek().is_some()
        && essential.all(|c| exit_code(&c.name) == Some(0))
}

/// The planner's form of a service's `completionPolicy.replace`.
fn replace_of(s: &ServiceRecord) -> service::Replace {
    match s.spec.completion_policy.replace {
        ReplaceStopped::Always => service::Replace::Always,
        ReplaceStopped::OnFailure => service::Replace::OnFailure,
        ReplaceStopped::Never => service::Replace::Never,
    }
}

/// Stopped task `t` of service `s` counts toward its deployment's desired count for good:
/// the service's `completionPolicy` does not replace it. (Its record outlives the stopped-task
/// retention while its deployment is the primary one, or the service would run it again.)
pub fn kept_stopped(s: &ServiceRecord, t: &TaskRecord) -> bool {
    let replace = replace_of(s);
    replace != service::Replace::Always
        && t.info.state == TaskState::Stopped
        && s.primary()
            .is_some_and(|d| t.info.deployment.as_deref() == Some(d.id.as_str()))
        && match phase(t) {
            Phase::Completed => true,
            Phase::Failed => replace == service::Replace::Never,
            _ => false,
        }
}

/// The stop code of a planner's cause.
pub fn stop_code(cause: StopCause) -> StopCode {
    match cause {
        StopCause::ScaledDown => StopCode::ServiceScaledDown,
        StopCause::Replaced => StopCode::ServiceDeploymentReplaced,
        StopCause::NotEligible => StopCode::ServiceNodeIneligible,
        StopCause::Unhealthy => StopCode::ServiceTaskUnhealthy,
        StopCause::Reconciled => StopCode::ServiceReconciled,
    }
}

fn group(name: &str) -> String {
    Origin::Service(name.to_string()).started_by()
}

/// How many tasks a DAEMON service wants: one per node its placement constraints allow, as
/// the scheduler's static filters see the nodes in `view` (ECS's desiredCount of a DAEMON
/// service is its number of instances).
pub fn daemon_desired(s: &ServiceRecord, view: &Snapshot) -> u64 {
    s.primary().map_or(0, |d| {
        let request = placement::request(
            &d.revision.task_definition,
            Origin::Service(s.spec.service_name.clone()).started_by(),
            1,
            &s.spec.placement_constraints,
            &s.spec.placement_strategy,
            0,
        );
        match request {
            Ok(r) => flotilla_scheduler::eligible(view, &r).len() as u64,
            // It cannot place anything: nowhere to run.
            Err(_) => 0,
        }
    })
}

/// The API's view of a service, with its live nodes for a DAEMON service's desired count.
pub fn info_live(txn: &Txn<'_>, live: &Live, s: &ServiceRecord) -> ServiceInfo {
    let mut i = info(txn, s);
    if s.spec.scheduling_strategy == SchedulingStrategy::Daemon {
        let view = placement::static_snapshot(txn, live);
        i.spec.desired_count = u32::try_from(daemon_desired(s, &view)).unwrap_or(u32::MAX);
    }
    i
}

/// The API's view of a service.
pub fn info(txn: &Txn<'_>, s: &ServiceRecord) -> ServiceInfo {
    let mine = txn.tasks_of(&group(&s.spec.service_name));
    let count = |dep: Option<&str>, p: &dyn Fn(Phase) -> bool| {
        mine.iter()
            .filter(|t| dep.is_none_or(|d| t.info.deployment.as_deref() == Some(d)))
            .filter(|t| p(phase(t)))
            .count() as u32
    };
    let running = |p: Phase| matches!(p, Phase::Starting | Phase::Ready | Phase::Unhealthy);
    let pending = |p: Phase| p == Phase::Pending;
    // Under `replace: always` a task that completed is one more stopped task to replace, and
    // counted as failed as it always was.
    let keeps_completed = s.spec.completion_policy.replace != ReplaceStopped::Always;
    let failed = |p: Phase| p == Phase::Failed || (p == Phase::Completed && !keeps_completed);
    let completed = |p: Phase| p == Phase::Completed && keeps_completed;
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
            rollout_state: d.rollout,
            rollout_state_reason: d.reason.clone(),
            running_count: count(Some(&d.id), &running),
            pending_count: count(Some(&d.id), &pending),
            failed_tasks: count(Some(&d.id), &failed),
            completed_count: count(Some(&d.id), &completed),
            created_at: d.created_at,
        })
        .collect();
    deployments.sort_by_key(|d| std::cmp::Reverse(d.created_at));
    ServiceInfo {
        spec: s.spec.clone(),
        status: ServiceStatus::Active,
        running_count: count(None, &running),
        pending_count: count(None, &pending),
        completed_count: s.primary().map_or(0, |d| count(Some(&d.id), &completed)),
        deployments,
        placement_problem: s.placement_problem.clone(),
        vip: s.vip,
        created_at: s.created_at,
        project: s.project.clone(),
    }
}

/// Whether task `t` of service `s` counts as lost at the time of `cx`: its service replaces
/// lost tasks and its node has been without a session for `lostAfter` seconds or more.
fn lost(cx: &Ctx<'_, '_>, s: &ServiceRecord, t: &TaskRecord) -> bool {
    let policy = &s.spec.disconnect_policy;
    policy.replace
        && t.is_live()
        && t.node()
            .and_then(|n| cx.live.disconnected_for(n, cx.now))
            .is_some_and(|secs| secs >= u64::from(policy.lost_after))
}

/// The node-loss check: every live task of a service whose node has been silent longer than
/// the service's `lostAfter` is recorded lost (once), with an event; the service round then
/// replaces it.
pub fn node_loss_check(cx: &mut Ctx<'_, '_>) {
    let mut found = Vec::new();
    for s in cx.txn.services() {
        for t in cx.txn.tasks_of(&group(&s.spec.service_name)) {
            if t.lost_at.is_none() && lost(cx, s, t) {
                found.push((t.info.id.clone(), s.spec.disconnect_policy.lost_after));
            }
        }
    }
    for (id, after) in found {
        let Some(t) = cx.txn.task(&id) else { continue };
        let mut t = t.clone();
        t.lost_at = Some(cx.now.secs());
        let node = t.info.node.clone().unwrap_or_default();
        cx.txn.put_task(t);
        cx.event(
            "task.lost",
            &id,
            format!("node {node} silent for {after} s or more; replaced elsewhere"),
        );
    }
}

/// The first wait of the service throttle: after the second task in a row that failed to
/// start (the first is tried again at once: it may have been passing).
const THROTTLE_FIRST_SECS: u64 = 10;
/// The longest wait of the service throttle (ECS's: 27 minutes).
const THROTTLE_MAX_SECS: u64 = 27 * 60;

/// ECS's service throttle logic ("Amazon ECS service throttle logic", Amazon ECS Developer
/// Guide): when a service's tasks go from PENDING to STOPPED without running
/// ([`StopCode::TaskFailedToStart`]: an image that cannot be pulled, a bind source that is
/// missing …) several in a row, each next launch waits longer — [`THROTTLE_FIRST_SECS`]
/// after the second, doubling, at most [`THROTTLE_MAX_SECS`], counted from the creation of
/// the last one that failed — and the service says so (its problem, an event). It never stops
/// trying; a task that runs, or a new deployment (a new task definition, `--force-new-deployment`),
/// starts the count over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Throttle {
    /// Tasks in a row that failed to start, newest first.
    failed: usize,
    /// The newest one's stop reason.
    reason: String,
    /// No launch before this (seconds since the epoch).
    until: u64,
}

/// The throttle of each (deployment, node) of a service's `tasks` that has one: what
/// [`Throttle::of`] says of each node's tasks, in one pass.
fn throttles_by_node(tasks: &[&TaskRecord]) -> HashMap<(String, String), Throttle> {
    let mut groups: HashMap<(&str, &str), Vec<&TaskRecord>> = HashMap::new();
    for t in tasks {
        if let (Some(d), Some(n)) = (t.info.deployment.as_deref(), t.node()) {
            groups.entry((d, n)).or_default().push(t);
        }
    }
    groups
        .into_iter()
        .filter_map(|((d, n), mine)| {
            Throttle::of(&mine, d, Some(n)).map(|t| ((d.to_string(), n.to_string()), t))
        })
        .collect()
}

impl Throttle {
    /// Of deployment `deployment`'s tasks in `tasks` (only those on `node`, when given), when
    /// two or more in a row, the newest first, failed to start. Tasks still pending are the
    /// tries under way and skipped; one that ran ends the row.
    fn of(tasks: &[&TaskRecord], deployment: &str, node: Option<&str>) -> Option<Self> {
        let mut mine: Vec<&TaskRecord> = tasks
            .iter()
            .copied()
            .filter(|t| t.info.deployment.as_deref() == Some(deployment))
            .filter(|t| node.is_none_or(|n| t.node() == Some(n)))
            .collect();
        mine.sort_by(|a, b| (b.info.created_at, &b.info.id).cmp(&(a.info.created_at, &a.info.id)));
        let mut failed = 0usize;
        let mut newest: Option<&TaskRecord> = None;
        for t in mine {
            match t.info.state {
                TaskState::Provisioning | TaskState::Pending => continue,
                TaskState::Stopped if t.info.stop_code == Some(StopCode::TaskFailedToStart) => {
                    failed += 1;
                    newest.get_or_insert(t);
                }
                _ => break,
            }
        }
        let newest = newest.filter(|_| failed >= 2)?;
        let wait = (THROTTLE_FIRST_SECS << (failed - 2).min(16)).min(THROTTLE_MAX_SECS);
        Some(Self {
            failed,
            reason: newest.info.stop_reason.clone().unwrap_or_default(),
            until: newest.info.created_at.saturating_add(wait),
        })
    }

    /// Whether a launch must wait at `now` (seconds since the epoch).
    fn holds(&self, now: u64) -> bool {
        now < self.until
    }

    /// The service's problem while throttled, with ECS's service event message.
    fn describe(&self, service: &str) -> String {
        let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.until);
        format!(
            "(service {service}) is unable to consistently start tasks successfully: {} in a row failed to start (last: {}); the next is started at {} at the earliest",
            self.failed,
            self.reason,
            humantime::format_rfc3339_seconds(until)
        )
    }
}

/// One round over every service.
pub fn round(cx: &mut Ctx<'_, '_>) -> Result<(), ClusterError> {
    let names: Vec<String> = cx
        .txn
        .services()
        .iter()
        .map(|s| s.spec.service_name.clone())
        .collect();
    // Built when a service first needs it, then kept up to date with the tasks this round
    // places (a stale view only places fewer: the applier checks the state itself).
    let mut snapshot: Option<RoundView> = None;
    for name in names {
        one(cx, &name, &mut snapshot)?;
    }
    Ok(())
}

fn planner_spec(s: &ServiceRecord) -> service::ServiceSpec {
    let config = &s.spec.deployment_configuration;
    service::ServiceSpec {
        mode: match s.spec.scheduling_strategy {
            SchedulingStrategy::Replica => Mode::Replica(s.spec.desired_count),
            SchedulingStrategy::Daemon => Mode::Daemon,
        },
        min_healthy_percent: config.minimum_healthy_percent,
        max_percent: config.maximum_percent,
        circuit_breaker: config.deployment_circuit_breaker.enable,
        rollback: config.deployment_circuit_breaker.rollback,
        reconcile: match s.spec.disconnect_policy.reconcile {
            ReconcilePolicy::KeepOriginal => service::Reconcile::KeepOriginal,
            ReconcilePolicy::LongestRunning => service::Reconcile::LongestRunning,
            ReconcilePolicy::KeepReplacement => service::Reconcile::KeepReplacement,
        },
        replace: replace_of(s),
    }
}

/// The cluster as a service round places on: the scheduler's snapshot, with where each node
/// is in it. A daemon's launch places on one node and updates that node's view: by the index,
/// so that a rollout on N nodes costs N lookups, not N scans of N nodes.
struct RoundView {
    snap: Snapshot,
    /// Node id → its place in `snap.nodes`.
    at: HashMap<String, usize>,
}

impl RoundView {
    fn of(snap: Snapshot) -> Self {
        let at = snap
            .nodes
            .iter()
            .enumerate()
            .map(|(i, v)| (v.id.clone(), i))
            .collect();
        Self { snap, at }
    }

    /// The snapshot of node `id` alone (empty when it is not in the view).
    fn only(&self, id: &str) -> Snapshot {
        Snapshot {
            nodes: self
                .at
                .get(id)
                .map(|&i| self.snap.nodes[i].clone())
                .into_iter()
                .collect(),
        }
    }
}

fn snapshot<'a>(cx: &Ctx<'_, '_>, cached: &'a mut Option<RoundView>) -> &'a mut RoundView {
    cached.get_or_insert_with(|| RoundView::of(placement::snapshot(cx.txn, cx.live)))
}

fn one(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    cached: &mut Option<RoundView>,
) -> Result<(), ClusterError> {
    let Some(s) = cx.txn.service(name) else {
        return Ok(());
    };
    let mut s = s.clone();
    let before = s.clone();
    let Some(primary) = s.primary().cloned() else {
        return Ok(());
    };
    let by = group(name);
    let current: BTreeSet<&str> = s.deployments.iter().map(|d| d.id.as_str()).collect();
    // Stopped tasks of deployments that are gone no longer matter to the planner.
    let tasks: Vec<service::ServiceTask> = cx
        .txn
        .tasks_of(&by)
        .into_iter()
        .filter(|t| {
            t.is_live() || current.contains(t.info.deployment.as_deref().unwrap_or_default())
        })
        .map(|t| {
            let is_lost = lost(cx, &s, t);
            service::ServiceTask {
                id: t.info.id.clone(),
                deployment: t.info.deployment.clone().unwrap_or_default(),
                node: t.info.node.clone().unwrap_or_default(),
                phase: if is_lost { Phase::Lost } else { phase(t) },
                created: t.info.created_at,
                was_lost: t.lost_at.is_some() || is_lost,
            }
        })
        .collect();
    let request = |def: &TaskDefRevision, count: usize, seed: u64| {
        placement::request(
            &def.task_definition,
            by.clone(),
            count,
            &s.spec.placement_constraints,
            &s.spec.placement_strategy,
            seed,
        )
    };
    let seed = cx.now.secs();
    let mut problem = None;
    let throttle = |cx: &Ctx<'_, '_>, deployment: &str| {
        Throttle::of(&cx.txn.tasks_of(&by), deployment, None).filter(|t| t.holds(cx.now.secs()))
    };
    // (nothing is impaired while nothing is wanted)
    let wanted = match s.spec.scheduling_strategy {
        SchedulingStrategy::Replica => s.spec.desired_count > 0,
        SchedulingStrategy::Daemon => true,
    };
    let impaired = Throttle::of(&cx.txn.tasks_of(&by), &primary.id, None).filter(|_| wanted);
    let (eligible, away) = match s.spec.scheduling_strategy {
        SchedulingStrategy::Daemon => match request(&primary.revision, 1, seed) {
            Ok(r) => {
                let snap = &snapshot(cx, cached).snap;
                (
                    flotilla_scheduler::eligible(snap, &r),
                    flotilla_scheduler::disconnected_but_eligible(snap, &r),
                )
            }
            Err(e) => {
                problem = Some(e);
                (Vec::new(), Vec::new())
            }
        },
        SchedulingStrategy::Replica => (Vec::new(), Vec::new()),
    };
    // A daemon's task on a node that is only away is the node-loss check's to judge (after
    // the service's lostAfter), not the planner's to replace at the first missed round.
    let tasks: Vec<_> = tasks
        .into_iter()
        .filter(|t| !away.contains(&t.node))
        .collect();
    let views: Vec<service::DeploymentView> = s
        .deployments
        .iter()
        .map(|d| service::DeploymentView {
            id: d.id.clone(),
            primary: d.primary,
            rollout: match d.rollout {
                RolloutState::Completed => Rollout::Completed,
                RolloutState::Failed => Rollout::Failed,
                RolloutState::InProgress => Rollout::InProgress,
            },
            proven: d.completed_once,
        })
        .collect();
    let actions = service::plan(&planner_spec(&s), &views, &tasks, &eligible);
    // A daemon's launches are held back per node: each node's throttle, from one pass over
    // the service's tasks, not one per node (a rollout on 10,000 nodes would read the
    // service's 10,000 tasks 10,000 times). Tasks started in this round are pending, which a
    // throttle skips, so one read before the launches holds for all of them.
    let node_throttles = if actions.iter().any(|a| matches!(a, Action::StartOn { .. })) {
        throttles_by_node(&cx.txn.tasks_of(&by))
    } else {
        HashMap::new()
    };
    for action in actions {
        match action {
            Action::Start { deployment, count } => {
                let Some(d) = s.deployments.iter().find(|d| d.id == deployment) else {
                    continue;
                };
                if throttle(cx, &deployment).is_some() {
                    continue;
                }
                let r = match request(&d.revision, count, seed) {
                    Ok(r) => r,
                    Err(e) => {
                        problem = Some(e);
                        continue;
                    }
                };
                let snap = &snapshot(cx, cached).snap;
                let nodes = place_what_fits(snap, &r, None, &mut problem, cx.metrics);
                start(cx, cached, &s, d, r, nodes, &mut problem)?;
            }
            Action::StartOn { deployment, node } => {
                let Some(d) = s.deployments.iter().find(|d| d.id == deployment) else {
                    continue;
                };
                // A daemon's tasks are counted per node: one node's missing image holds up
                // only that node.
                if node_throttles
                    .get(&(deployment.clone(), node.clone()))
                    .is_some_and(|t| t.holds(cx.now.secs()))
                {
                    continue;
                }
                let r = match request(&d.revision, 1, seed) {
                    Ok(r) => r,
                    Err(e) => {
                        problem = Some(e);
                        continue;
                    }
                };
                let one = snapshot(cx, cached).only(&node);
                let nodes = place_what_fits(&one, &r, Some(&node), &mut problem, cx.metrics);
                start(cx, cached, &s, d, r, nodes, &mut problem)?;
            }
            Action::Stop { task, cause } => {
                let running = cx
                    .txn
                    .task(&task)
                    .is_some_and(|t| t.info.desired == DesiredStatus::Running);
                if running {
                    tasks::stop(cx, &task, stop_code(cause), None);
                }
            }
            Action::Complete { deployment } => {
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    d.rollout = RolloutState::Completed;
                    d.completed_once = true;
                    d.reason = Some(
                        if s.spec.completion_policy.replace == ReplaceStopped::Always {
                            "every task is healthy and no older one is left"
                        } else {
                            "every task is healthy or completed and no older one is left"
                        }
                        .into(),
                    );
                    s.last_completed = Some(d.revision.clone());
                    let message = format!(
                        "deployment {deployment} ({}:{})",
                        d.revision.family, d.revision.revision
                    );
                    cx.event("service.deployment.completed", name, message);
                }
            }
            Action::Reopen {
                deployment,
                running,
                desired,
            } => {
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    reopen(cx, name, d, running, desired);
                }
            }
            Action::EndFailed { deployment, failed } => {
                let reason = format!(
                    "every task ran once and {failed} failed (completionPolicy.replace: never)"
                );
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    d.rollout = RolloutState::Failed;
                    d.reason = Some(reason.clone());
                }
                cx.event(
                    "service.deployment.failed",
                    name,
                    format!("deployment {deployment}: {reason}"),
                );
            }
            Action::Fail {
                deployment,
                rollback,
                failures,
            } => {
                let reason = format!("circuit breaker: {failures} tasks failed");
                if let Some(d) = s.deployments.iter_mut().find(|d| d.id == deployment) {
                    d.rollout = RolloutState::Failed;
                    d.reason = Some(reason.clone());
                }
                cx.event(
                    "service.deployment.failed",
                    name,
                    format!("deployment {deployment}: {reason}"),
                );
                if let (true, Some(back)) = (rollback, s.last_completed.clone()) {
                    for d in &mut s.deployments {
                        d.primary = false;
                    }
                    let d = new_deployment(cx, back);
                    cx.event(
                        "service.deployment.rollback",
                        name,
                        format!(
                            "deployment {} rolls back to {}:{}",
                            d.id, d.revision.family, d.revision.revision
                        ),
                    );
                    s.spec.task_definition =
                        format!("{}:{}", d.revision.family, d.revision.revision);
                    s.deployments.push(d);
                }
            }
        }
    }
    // Deployments that are neither primary nor have live tasks are done with.
    let live: BTreeSet<String> = cx
        .txn
        .tasks_of(&by)
        .into_iter()
        .filter(|t| !matches!(phase(t), Phase::Retired | Phase::Completed | Phase::Failed))
        .filter_map(|t| t.info.deployment.clone())
        .collect();
    s.deployments.retain(|d| d.primary || live.contains(&d.id));
    // Where nothing keeps its tasks from being placed, what keeps them from starting.
    let (problem, kind) = match (problem, impaired) {
        (Some(p), _) => (Some(p), "service.unplaceable"),
        (None, Some(t)) => (Some(t.describe(name)), "service.task_start_impaired"),
        (None, None) => (None, ""),
    };
    if problem != s.placement_problem {
        if let Some(p) = &problem {
            cx.event(kind, name, p.clone());
        }
        s.placement_problem = problem;
    }
    if s != before {
        cx.txn.put_service(s);
    }
    Ok(())
}

/// The nodes the scheduler gives `r` on `on` (the snapshot of `node` alone when one is
/// named): all of them, or as many as fit, with the reason of the rest in `problem` and
/// counted in `metrics`.
fn place_what_fits(
    on: &Snapshot,
    r: &flotilla_scheduler::Request,
    node: Option<&str>,
    problem: &mut Option<String>,
    metrics: &mut Counters,
) -> Vec<String> {
    flotilla_scheduler::place(on, r).unwrap_or_else(|why| {
        metrics.unplaceable(PlacementOrigin::Service, &why, false);
        *problem = Some(match node {
            Some(n) => why.on_node(n),
            None => why.to_string(),
        });
        let mut fewer = r.clone();
        fewer.count = why.placed;
        flotilla_scheduler::place(on, &fewer).unwrap_or_default()
    })
}

/// Creates the placed tasks of deployment `d` through the plan applier (as many as still fit)
/// and brings the round's snapshot up to date with them.
fn start(
    cx: &mut Ctx<'_, '_>,
    cached: &mut Option<RoundView>,
    s: &ServiceRecord,
    d: &DeploymentRecord,
    request: flotilla_scheduler::Request,
    nodes: Vec<String>,
    problem: &mut Option<String>,
) -> Result<(), ClusterError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let applied = placement::apply(
        cx,
        Plan {
            request: request.clone(),
            task: NewTask {
                revision: d.revision.clone(),
                env: Vec::new(),
                origin: Some(Origin::Service(s.spec.service_name.clone())),
                deployment: Some(d.id.clone()),
            },
            nodes,
            all_or_nothing: false,
            allow_disconnected: false,
        },
    )?;
    if let Some((node, why)) = applied.refused.first() {
        *problem = Some(format!("{node}: {why}"));
    }
    if let Some(view) = cached.as_mut() {
        let touched: BTreeSet<&str> = applied
            .created
            .iter()
            .filter_map(|t| t.node.as_deref())
            .collect();
        for id in touched {
            if let (Some(&i), Some(n)) = (view.at.get(id), cx.txn.node(id)) {
                view.snap.nodes[i] = placement::node_view(cx.txn, cx.live, n);
            }
        }
    }
    Ok(())
}
