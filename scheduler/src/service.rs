//! The service scheduler: from a service, its deployments and its tasks as they are, what to
//! start and stop next — pure, like placement. The control plane runs it every round and applies
//! the actions (starts are placed with [`crate::place`]).
//!
//! - **REPLICA** keeps `desiredCount` tasks of the primary deployment. A rolling deployment
//!   starts new tasks while the service holds at most `maximumPercent` of `desiredCount`, and
//!   stops old ones only while at least `minimumHealthyPercent` stay healthy; unhealthy tasks
//!   are replaced. **DAEMON** keeps one task on every eligible node (ready, matching the
//!   constraints), replacing a node's old task under the same minimum.
//! - A task that stopped is replaced, unless the service's [`Replace`] policy keeps it: then
//!   a task that **completed** (its essential containers exited 0) — and under
//!   [`Replace::Never`] one that failed — counts toward the desired count of its deployment for
//!   good. A new deployment runs such a one-shot service once more: the old deployment's
//!   tasks are not its own.
//! - A deployment is **completed** when all its tasks are healthy (or, kept by the policy,
//!   completed) and no older task remains.
//! - The **circuit breaker** fails a deployment once as many of its tasks failed as ECS's
//!   threshold (half the desired count, at least 3, at most 200); with rollback the control
//!   plane then deploys the last completed revision again.

use std::collections::{BTreeMap, BTreeSet};

/// Why the planner stops a task. The control plane records it as the task's stop code; a task
/// of a deployment that stopped for any reason but these (or was replaced as unhealthy) counts
/// as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// More tasks than the service wants.
    ScaledDown,
    /// An older deployment's task, replaced.
    Replaced,
    /// Its node is no longer eligible (daemon).
    NotEligible,
    /// It failed its health check.
    Unhealthy,
    /// One copy too many after a lost node came back.
    Reconciled,
}

/// Which copy survives when a node that was lost (and whose tasks were replaced) comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reconcile {
    /// The replacements stay; the tasks of the returning node stop.
    #[default]
    KeepReplacement,
    /// The tasks of the returning node stay; their replacements stop.
    KeepOriginal,
    /// The tasks that started first stay.
    LongestRunning,
}

/// Which stopped tasks of the service are replaced (`completionPolicy.replace`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replace {
    /// Every one: the service keeps its count running.
    #[default]
    Always,
    /// Failed ones; a completed one counts toward the desired count.
    OnFailure,
    /// None: completed or failed, each counts toward the desired count.
    Never,
}

impl Replace {
    /// Whether a task of the deployment in `phase` stays counted instead of being replaced.
    fn keeps(self, phase: Phase) -> bool {
        match self {
            Self::Always => false,
            Self::OnFailure => phase == Phase::Completed,
            Self::Never => matches!(phase, Phase::Completed | Phase::Failed),
        }
    }
}

/// How the service schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This many tasks.
    Replica(u32),
    /// One per eligible node.
    Daemon,
}

/// What the planner needs of a service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// REPLICA or DAEMON.
    pub mode: Mode,
    /// `deploymentConfiguration.minimumHealthyPercent`.
    pub min_healthy_percent: u32,
    /// `deploymentConfiguration.maximumPercent`.
    pub max_percent: u32,
    /// `deploymentCircuitBreaker.enable`.
    pub circuit_breaker: bool,
    /// `deploymentCircuitBreaker.rollback`.
    pub rollback: bool,
    /// Which copy survives a lost node's return.
    pub reconcile: Reconcile,
    /// Which stopped tasks are replaced.
    pub replace: Replace,
}

/// Where a deployment's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Tasks being replaced.
    InProgress,
    /// Done.
    Completed,
    /// Stopped by the circuit breaker.
    Failed,
}

/// A deployment of the service.
#[derive(Debug, Clone)]
pub struct DeploymentView {
    /// Its id.
    pub id: String,
    /// The one new tasks come from.
    pub primary: bool,
    /// Its rollout.
    pub rollout: Rollout,
    /// It completed once: the circuit breaker, which judges whether a deployment can reach
    /// its count at all, no longer judges it (a later crash or scale-out reopens its rollout,
    /// not its verdict).
    pub proven: bool,
}

/// Where a task of the service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Placed, not running yet.
    Pending,
    /// Running, health checks not decided yet.
    Starting,
    /// Running and healthy (or without health checks).
    Ready,
    /// A health check failed.
    Unhealthy,
    /// Being stopped.
    Stopping,
    /// Stopped by the service (scaled down, replaced, deleted, not eligible).
    Retired,
    /// Stopped because its essential containers exited, all with code 0.
    Completed,
    /// Stopped for any other reason.
    Failed,
    /// On a node lost for longer than the service waits: replaced, not counted, not stopped
    /// (its node cannot be reached).
    Lost,
}

/// A task of the service.
#[derive(Debug, Clone)]
pub struct ServiceTask {
    /// Task id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    /// Its node.
    pub node: String,
    /// Where it is.
    pub phase: Phase,
    /// Creation order (larger is newer).
    pub created: u64,
    /// Its node was lost once (and it may have been replaced meanwhile).
    pub was_lost: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place and start this many tasks of the deployment.
    Start {
        /// Deployment.
        deployment: String,
        /// How many.
        count: usize,
    },
    /// Start one task of the deployment on this node (daemon).
    StartOn {
        /// Deployment.
        deployment: String,
        /// Node.
        node: String,
    },
    /// Stop a task.
    Stop {
        /// Task id.
        task: String,
        /// Why.
        cause: StopCause,
    },
    /// The deployment's rollout is complete: as many of its tasks run as are desired, and
    /// none of an older deployment is left.
    Complete {
        /// Deployment.
        deployment: String,
    },
    /// The completed deployment runs fewer tasks than desired (scaled out, a task ended, a
    /// node joined): its rollout is in progress again, until they run.
    Reopen {
        /// Deployment.
        deployment: String,
        /// Its tasks running.
        running: usize,
        /// Tasks desired.
        desired: u32,
    },
    /// Every task of the deployment ran once under [`Replace::Never`] (none is left to
    /// start or replace) and some failed: its rollout failed, with no rollback.
    EndFailed {
        /// Deployment.
        deployment: String,
        /// Its tasks that failed.
        failed: usize,
    },
    /// The circuit breaker tripped.
    Fail {
        /// Deployment.
        deployment: String,
        /// Roll back to the last completed deployment.
        rollback: bool,
        /// Failed tasks counted.
        failures: usize,
    },
}

/// ECS's circuit breaker threshold for `desired` tasks.
pub fn failure_threshold(desired: u32) -> usize {
    (desired.div_ceil(2) as usize).clamp(3, 200)
}

fn live(p: Phase) -> bool {
    matches!(
        p,
        Phase::Pending | Phase::Starting | Phase::Ready | Phase::Unhealthy
    )
}

/// Plans one round for a service. `eligible` are the nodes a daemon service runs on (ready,
/// matching its constraints); ignored for REPLICA.
pub fn plan(
    spec: &ServiceSpec,
    deployments: &[DeploymentView],
    tasks: &[ServiceTask],
    eligible: &[String],
) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(primary) = deployments.iter().find(|d| d.primary) else {
        return out;
    };
    let desired = match spec.mode {
        Mode::Replica(n) => n,
        Mode::Daemon => eligible.len() as u32,
    };
    let min_ready = (u64::from(desired) * u64::from(spec.min_healthy_percent)).div_ceil(100);
    let max_total =
        (u64::from(desired) * u64::from(spec.max_percent) / 100).max(u64::from(desired));
    // Under `always` a task that completed is one more that stopped, as it always was (the
    // circuit breaker counts it too).
    let tasks: Vec<ServiceTask> = tasks
        .iter()
        .cloned()
        .map(|mut t| {
            if spec.replace == Replace::Always && t.phase == Phase::Completed {
                t.phase = Phase::Failed;
            }
            t
        })
        .collect();
    let tasks = tasks.as_slice();
    // The primary deployment's stopped tasks that the policy keeps: they count toward its
    // desired count and are never started again.
    let kept: Vec<&ServiceTask> = tasks
        .iter()
        .filter(|t| t.deployment == primary.id && spec.replace.keeps(t.phase))
        .collect();
    let kept_failed = kept.iter().filter(|t| t.phase == Phase::Failed).count();
    let finish = |out: &mut Vec<Action>| {
        out.push(if kept_failed > 0 {
            Action::EndFailed {
                deployment: primary.id.clone(),
                failed: kept_failed,
            }
        } else {
            Action::Complete {
                deployment: primary.id.clone(),
            }
        })
    };

    // The circuit breaker first: a failing deployment starts nothing more.
    let failures = tasks
        .iter()
        .filter(|t| t.deployment == primary.id && t.phase == Phase::Failed)
        .count();
    // A deployment in progress completes (or ends failed); one that completed ends failed
    // when a task kept by `never` failed since.
    let settles = primary.rollout == Rollout::InProgress
        || (primary.rollout == Rollout::Completed && kept_failed > 0);
    // (Under `never` a failed task is not replaced: there is no churn to stop, and a rollback
    // would run the older revision's one-shot tasks again.)
    if spec.circuit_breaker
        && spec.replace != Replace::Never
        && primary.rollout == Rollout::InProgress
        && !primary.proven
        && failures >= failure_threshold(desired)
    {
        out.push(Action::Fail {
            deployment: primary.id.clone(),
            rollback: spec.rollback,
            failures,
        });
        return out;
    }
    let starting_allowed = primary.rollout != Rollout::Failed;

    let mut alive: Vec<&ServiceTask> = tasks.iter().filter(|t| live(t.phase)).collect();
    // Oldest first.
    alive.sort_by_key(|t| (t.created, t.id.clone()));
    // Unhealthy tasks are replaced; they do not count as healthy anyway.
    for t in alive.iter().filter(|t| t.phase == Phase::Unhealthy) {
        out.push(Action::Stop {
            task: t.id.clone(),
            cause: StopCause::Unhealthy,
        });
    }
    alive.retain(|t| t.phase != Phase::Unhealthy);
    let stopping = tasks.iter().filter(|t| t.phase == Phase::Stopping).count() as u64;
    let mut ready = alive.iter().filter(|t| t.phase == Phase::Ready).count() as u64;
    let is_primary = |t: &&ServiceTask| t.deployment == primary.id;

    match spec.mode {
        Mode::Replica(_) => {
            let mine: Vec<&ServiceTask> = alive.iter().copied().filter(is_primary).collect();
            let old: Vec<&ServiceTask> = alive.iter().copied().filter(|t| !is_primary(t)).collect();
            let total = alive.len() as u64 + stopping;
            // What kept tasks leave for live ones of the primary deployment.
            let desired_live = u64::from(desired).saturating_sub(kept.len() as u64);
            // Surplus (scaled down, or a lost node came back with tasks that were replaced):
            // copies a returning node brought go by the reconcile policy, then not-ready and
            // newest first.
            if mine.len() as u64 > desired_live {
                let mut surplus = mine.clone();
                let keep = |t: &ServiceTask| match spec.reconcile {
                    Reconcile::KeepReplacement => !t.was_lost,
                    Reconcile::KeepOriginal => t.was_lost,
                    Reconcile::LongestRunning => false,
                };
                surplus.sort_by_key(|t| {
                    (
                        keep(t),
                        t.phase == Phase::Ready,
                        std::cmp::Reverse(t.created),
                    )
                });
                let returned = mine.iter().any(|t| t.was_lost);
                for t in surplus.iter().take(mine.len() - desired_live as usize) {
                    out.push(Action::Stop {
                        task: t.id.clone(),
                        cause: if returned {
                            StopCause::Reconciled
                        } else {
                            StopCause::ScaledDown
                        },
                    });
                }
            }
            // Start new ones within maximumPercent.
            if starting_allowed {
                let missing = desired_live.saturating_sub(mine.len() as u64);
                let room = max_total.saturating_sub(total);
                let n = missing.min(room);
                if n > 0 {
                    out.push(Action::Start {
                        deployment: primary.id.clone(),
                        count: n as usize,
                    });
                }
            }
            // Retire old ones while enough stay healthy: not-ready ones freely.
            for t in &old {
                if t.phase == Phase::Ready {
                    if ready <= min_ready {
                        continue;
                    }
                    ready -= 1;
                }
                out.push(Action::Stop {
                    task: t.id.clone(),
                    cause: StopCause::Replaced,
                });
            }
            let mine_ready =
                mine.iter().filter(|t| t.phase == Phase::Ready).count() as u64 + kept.len() as u64;
            let mine_running =
                mine.iter().filter(|t| t.phase != Phase::Pending).count() + kept.len();
            if primary.rollout == Rollout::Completed && (mine_running as u64) < u64::from(desired) {
                out.push(Action::Reopen {
                    deployment: primary.id.clone(),
                    running: mine_running,
                    desired,
                });
            }
            if settles && mine_ready >= u64::from(desired) && old.is_empty() {
                finish(&mut out);
            }
        }
        Mode::Daemon => {
            let mut by_node: BTreeMap<&str, Vec<&ServiceTask>> = BTreeMap::new();
            for t in &alive {
                by_node.entry(t.node.as_str()).or_default().push(t);
            }
            let kept_on: BTreeSet<&str> = kept.iter().map(|t| t.node.as_str()).collect();
            let mut done = true;
            let mut running = 0;
            for n in eligible {
                let here = by_node.remove(n.as_str()).unwrap_or_default();
                let (mine, old): (Vec<&ServiceTask>, Vec<&ServiceTask>) =
                    here.into_iter().partition(is_primary);
                // The node ran its task of this deployment to its end, kept by the policy.
                let kept_here = kept_on.contains(n.as_str());
                for t in mine.iter().skip(usize::from(!kept_here)) {
                    out.push(Action::Stop {
                        task: t.id.clone(),
                        cause: StopCause::ScaledDown,
                    });
                }
                if (!kept_here && mine.first().is_none_or(|t| t.phase != Phase::Ready))
                    || !old.is_empty()
                {
                    done = false;
                }
                if kept_here || mine.first().is_some_and(|t| t.phase != Phase::Pending) {
                    running += 1;
                }
                for t in &old {
                    if t.phase == Phase::Ready {
                        if ready <= min_ready {
                            continue;
                        }
                        ready -= 1;
                    }
                    out.push(Action::Stop {
                        task: t.id.clone(),
                        cause: StopCause::Replaced,
                    });
                }
                // A node's old task goes before its new one starts (one per node).
                if mine.is_empty() && old.is_empty() && !kept_here && starting_allowed {
                    out.push(Action::StartOn {
                        deployment: primary.id.clone(),
                        node: n.clone(),
                    });
                }
            }
            // Nodes no longer eligible lose their task.
            for tasks in by_node.values() {
                for t in tasks {
                    out.push(Action::Stop {
                        task: t.id.clone(),
                        cause: StopCause::NotEligible,
                    });
                }
            }
            if primary.rollout == Rollout::Completed && running < eligible.len() {
                out.push(Action::Reopen {
                    deployment: primary.id.clone(),
                    running,
                    desired,
                });
            }
            if settles && done && stopping == 0 {
                finish(&mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: Mode) -> ServiceSpec {
        ServiceSpec {
            mode,
            min_healthy_percent: 100,
            max_percent: 200,
            circuit_breaker: true,
            rollback: true,
            reconcile: Reconcile::KeepReplacement,
            replace: Replace::Always,
        }
    }

    fn dep(id: &str, primary: bool, rollout: Rollout) -> DeploymentView {
        DeploymentView {
            id: id.into(),
            primary,
            rollout,
            proven: rollout == Rollout::Completed,
        }
    }

    fn task(id: &str, deployment: &str, node: &str, phase: Phase, created: u64) -> ServiceTask {
        ServiceTask {
            id: id.into(),
            deployment: deployment.into(),
            node: node.into(),
            phase,
            created,
            was_lost: false,
        }
    }

    fn stops(a: &[Action]) -> Vec<String> {
        a.iter()
            .filter_map(|x| match x {
                Action::Stop { task, .. } => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    fn starts(a: &[Action]) -> usize {
        a.iter()
            .map(|x| match x {
                Action::Start { count, .. } => *count,
                Action::StartOn { .. } => 1,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn replica_starts_to_count_scales_and_replaces_the_unhealthy() {
        let s = spec(Mode::Replica(3));
        let d = [dep("d1", true, Rollout::InProgress)];
        assert_eq!(
            plan(&s, &d, &[], &[]),
            [Action::Start {
                deployment: "d1".into(),
                count: 3
            }]
        );
        let ready = |id: &str, c| task(id, "d1", "n", Phase::Ready, c);
        let three = [ready("t1", 1), ready("t2", 2), ready("t3", 3)];
        assert_eq!(
            plan(&s, &d, &three, &[]),
            [Action::Complete {
                deployment: "d1".into()
            }]
        );
        // a stopped task is replaced; an unhealthy one is stopped and replaced
        let mut some = three.to_vec();
        some[0].phase = Phase::Failed;
        some[1].phase = Phase::Unhealthy;
        let a = plan(&s, &[dep("d1", true, Rollout::Completed)], &some, &[]);
        assert_eq!(stops(&a), ["t2"]);
        assert_eq!(starts(&a), 2);
        // scale down to 1: the newest go first
        let a = plan(&spec(Mode::Replica(1)), &d, &three, &[]);
        assert_eq!(stops(&a), ["t3", "t2"]);
    }

    #[test]
    fn rolling_updates_keep_within_min_healthy_and_max_percent() {
        // 4 tasks, min 50 %, max 150 %: at most 6 at once, at least 2 healthy
        let mut s = spec(Mode::Replica(4));
        s.min_healthy_percent = 50;
        s.max_percent = 150;
        let d = [
            dep("d1", false, Rollout::Completed),
            dep("d2", true, Rollout::InProgress),
        ];
        let old: Vec<ServiceTask> = (0..4)
            .map(|i| task(&format!("o{i}"), "d1", "n", Phase::Ready, i))
            .collect();
        let a = plan(&s, &d, &old, &[]);
        assert_eq!(starts(&a), 2, "{a:?}");
        assert_eq!(stops(&a), ["o0", "o1"], "two old ones may go, two stay");
        // with the new ones still starting, the last two old ones stay
        let mut now: Vec<ServiceTask> = old[2..].to_vec();
        now.push(task("n1", "d2", "n", Phase::Starting, 10));
        now.push(task("n2", "d2", "n", Phase::Starting, 11));
        let a = plan(&s, &d, &now, &[]);
        assert!(stops(&a).is_empty(), "{a:?}");
        assert_eq!(starts(&a), 2);
        // once two new ones are healthy, the old ones can go
        now[2].phase = Phase::Ready;
        now[3].phase = Phase::Ready;
        let a = plan(&s, &d, &now, &[]);
        assert_eq!(stops(&a), ["o2", "o3"]);
        // never below the minimum, whatever the order
        let a = plan(&spec(Mode::Replica(2)), &d, &old[..2], &[]);
        assert!(stops(&a).is_empty(), "min 100 %: nothing old goes first");
        assert_eq!(starts(&a), 2);
    }

    #[test]
    fn the_circuit_breaker_trips_at_the_threshold() {
        let s = spec(Mode::Replica(4));
        let d = [
            dep("d1", false, Rollout::Completed),
            dep("d2", true, Rollout::InProgress),
        ];
        let mut tasks: Vec<ServiceTask> = (0..4)
            .map(|i| task(&format!("o{i}"), "d1", "n", Phase::Ready, i))
            .collect();
        for i in 0..2 {
            tasks.push(task(&format!("f{i}"), "d2", "n", Phase::Failed, 10 + i));
        }
        assert!(!plan(&s, &d, &tasks, &[])
            .iter()
            .any(|a| matches!(a, Action::Fail { .. })));
        tasks.push(task("f2", "d2", "n", Phase::Failed, 12));
        assert_eq!(
            plan(&s, &d, &tasks, &[]),
            [Action::Fail {
                deployment: "d2".into(),
                rollback: true,
                failures: 3
            }]
        );
        // a failed deployment starts nothing
        let d = [dep("d2", true, Rollout::Failed)];
        assert_eq!(starts(&plan(&s, &d, &[], &[])), 0);
        assert_eq!([1, 4, 10, 1000].map(failure_threshold), [3, 3, 5, 200]);
    }

    #[test]
    fn a_completed_deployment_is_in_progress_again_until_its_count_runs() {
        let ready = |id: &str, c| task(id, "d1", "n", Phase::Ready, c);
        // Scaled from 1 to 2: one runs, the rollout is reopened and the second started.
        let s = spec(Mode::Replica(2));
        let done = [dep("d1", true, Rollout::Completed)];
        assert_eq!(
            plan(&s, &done, &[ready("t1", 1)], &[]),
            [
                Action::Start {
                    deployment: "d1".into(),
                    count: 1
                },
                Action::Reopen {
                    deployment: "d1".into(),
                    running: 1,
                    desired: 2
                }
            ]
        );
        // Reopened, it completes only once both run (a pending one does not count).
        let mut reopened = dep("d1", true, Rollout::InProgress);
        reopened.proven = true;
        let reopened = [reopened];
        let pending = task("t2", "d1", "n", Phase::Pending, 2);
        assert_eq!(plan(&s, &reopened, &[ready("t1", 1), pending], &[]), []);
        assert_eq!(
            plan(&s, &reopened, &[ready("t1", 1), ready("t2", 2)], &[]),
            [Action::Complete {
                deployment: "d1".into()
            }]
        );
        // What failed before and since is no circuit breaker's verdict on a deployment that
        // completed: it is replaced.
        let failed: Vec<ServiceTask> = (0..5)
            .map(|i| task(&format!("f{i}"), "d1", "n", Phase::Failed, 10 + i))
            .collect();
        assert_eq!(starts(&plan(&s, &reopened, &failed, &[])), 2);
        // A daemon service whose node joined: one node runs it, the other not yet.
        let nodes = ["a".to_string(), "b".to_string()];
        let d = spec(Mode::Daemon);
        let on_a = [task("t1", "d1", "a", Phase::Ready, 1)];
        assert!(plan(&d, &done, &on_a, &nodes).contains(&Action::Reopen {
            deployment: "d1".into(),
            running: 1,
            desired: 2
        }));
        let on_both = [on_a[0].clone(), task("t2", "d1", "b", Phase::Ready, 2)];
        assert_eq!(plan(&d, &done, &on_both, &nodes), []);
    }

    #[test]
    fn daemon_runs_one_per_eligible_node() {
        let mut s = spec(Mode::Daemon);
        s.min_healthy_percent = 0;
        let d = [dep("d1", true, Rollout::InProgress)];
        let nodes = ["a".to_string(), "b".to_string()];
        let a = plan(&s, &d, &[], &nodes);
        assert_eq!(
            a,
            [
                Action::StartOn {
                    deployment: "d1".into(),
                    node: "a".into()
                },
                Action::StartOn {
                    deployment: "d1".into(),
                    node: "b".into()
                }
            ]
        );
        // a node that left the set loses its task; a new node gets one
        let tasks = [
            task("ta", "d1", "a", Phase::Ready, 1),
            task("tx", "d1", "x", Phase::Ready, 2),
        ];
        let a = plan(&s, &d, &tasks, &nodes);
        assert_eq!(stops(&a), ["tx"]);
        assert!(a.contains(&Action::StartOn {
            deployment: "d1".into(),
            node: "b".into()
        }));
        // an update replaces per node: old stopped first, new started once it is gone
        let d = [
            dep("d1", false, Rollout::Completed),
            dep("d2", true, Rollout::InProgress),
        ];
        let tasks = [
            task("ta", "d1", "a", Phase::Ready, 1),
            task("tb", "d1", "b", Phase::Ready, 2),
        ];
        let a = plan(&s, &d, &tasks, &nodes);
        assert_eq!(stops(&a), ["ta", "tb"]);
        assert_eq!(starts(&a), 0);
        let a = plan(&s, &d, &[], &nodes);
        assert_eq!(starts(&a), 2);
    }

    #[test]
    fn lost_tasks_are_replaced_and_one_copy_survives_their_return() {
        let d = [dep("d1", true, Rollout::Completed)];
        let mut tasks = vec![
            task("t1", "d1", "a", Phase::Ready, 1),
            task("t2", "d1", "b", Phase::Lost, 2),
        ];
        tasks[1].was_lost = true;
        // lost: not counted, not stopped, replaced
        let a = plan(&spec(Mode::Replica(2)), &d, &tasks, &[]);
        assert_eq!(starts(&a), 1);
        assert!(stops(&a).is_empty());
        // back, with its replacement running: the policy picks the survivor
        tasks[1].phase = Phase::Ready;
        tasks.push(task("t3", "d1", "c", Phase::Ready, 3));
        let survivor = |policy| {
            let mut s = spec(Mode::Replica(2));
            s.reconcile = policy;
            let a = plan(&s, &d, &tasks, &[]);
            assert_eq!(starts(&a), 0);
            assert!(a.iter().all(
                |x| !matches!(x, Action::Stop { cause, .. } if *cause != StopCause::Reconciled)
            ));
            stops(&a)
        };
        assert_eq!(survivor(Reconcile::KeepReplacement), ["t2"]);
        assert_eq!(survivor(Reconcile::KeepOriginal), ["t3"]);
        assert_eq!(survivor(Reconcile::LongestRunning), ["t3"]);
    }

    fn one_shot(n: u32, replace: Replace) -> ServiceSpec {
        let mut s = spec(Mode::Replica(n));
        s.replace = replace;
        s
    }

    #[test]
    fn a_completed_task_counts_and_is_not_replaced_unless_always() {
        let d = [dep("d1", true, Rollout::InProgress)];
        let tasks = [
            task("t1", "d1", "n", Phase::Completed, 1),
            task("t2", "d1", "n", Phase::Ready, 2),
        ];
        // onFailure and never: the completed one counts; the deployment is complete.
        for r in [Replace::OnFailure, Replace::Never] {
            assert_eq!(
                plan(&one_shot(2, r), &d, &tasks, &[]),
                [Action::Complete {
                    deployment: "d1".into()
                }],
                "{r:?}"
            );
        }
        // always (the default): it is replaced, as any task that stopped.
        let a = plan(&one_shot(2, Replace::Always), &d, &tasks, &[]);
        assert_eq!(starts(&a), 1, "{a:?}");
        assert!(!a.contains(&Action::Complete {
            deployment: "d1".into()
        }));
        // A deployment whose every task completed is complete, and stays so: nothing starts
        // again, round after round.
        let all_done = [
            task("t1", "d1", "n", Phase::Completed, 1),
            task("t2", "d1", "n", Phase::Completed, 2),
        ];
        let s = one_shot(2, Replace::OnFailure);
        assert_eq!(
            plan(&s, &d, &all_done, &[]),
            [Action::Complete {
                deployment: "d1".into()
            }]
        );
        let done = [dep("d1", true, Rollout::Completed)];
        assert_eq!(plan(&s, &done, &all_done, &[]), []);
    }

    #[test]
    fn a_failed_task_is_replaced_under_on_failure_not_under_never() {
        let d = [dep("d1", true, Rollout::InProgress)];
        let tasks = [task("t1", "d1", "n", Phase::Failed, 1)];
        assert_eq!(
            plan(&one_shot(1, Replace::OnFailure), &d, &tasks, &[]),
            [Action::Start {
                deployment: "d1".into(),
                count: 1
            }]
        );
        // Under never it ran once: the rollout failed (no rollback), nothing starts.
        assert_eq!(
            plan(&one_shot(1, Replace::Never), &d, &tasks, &[]),
            [Action::EndFailed {
                deployment: "d1".into(),
                failed: 1
            }]
        );
        let ended = [dep("d1", true, Rollout::Failed)];
        assert_eq!(plan(&one_shot(1, Replace::Never), &ended, &tasks, &[]), []);
        // One that completed ends failed when a task fails after it completed.
        let done = [dep("d1", true, Rollout::Completed)];
        let later = [
            task("t1", "d1", "n", Phase::Completed, 1),
            task("t2", "d1", "n", Phase::Failed, 2),
        ];
        assert_eq!(
            plan(&one_shot(2, Replace::Never), &done, &later, &[]),
            [Action::EndFailed {
                deployment: "d1".into(),
                failed: 1
            }]
        );
        // Under never the circuit breaker has no churn to stop (nor a rollback to run the
        // older revision's job again).
        let failed: Vec<ServiceTask> = (0..4)
            .map(|i| task(&format!("f{i}"), "d1", "n", Phase::Failed, i))
            .collect();
        assert_eq!(
            plan(&one_shot(4, Replace::Never), &d, &failed, &[]),
            [Action::EndFailed {
                deployment: "d1".into(),
                failed: 4
            }]
        );
        assert!(matches!(
            plan(&one_shot(4, Replace::OnFailure), &d, &failed, &[])[..],
            [Action::Fail { .. }]
        ));
        // A task that stopped by the service's own hand (scaled down) is not kept.
        let retired = [task("t1", "d1", "n", Phase::Retired, 1)];
        assert_eq!(
            starts(&plan(&one_shot(1, Replace::Never), &d, &retired, &[])),
            1
        );
    }

    #[test]
    fn a_new_deployment_runs_a_one_shot_service_once_more() {
        let s = one_shot(1, Replace::OnFailure);
        let d = [
            dep("d1", false, Rollout::Completed),
            dep("d2", true, Rollout::InProgress),
        ];
        // d1's completed task is not d2's: d2 starts one.
        let old = task("t1", "d1", "n", Phase::Completed, 1);
        assert_eq!(
            plan(&s, &d, std::slice::from_ref(&old), &[]),
            [Action::Start {
                deployment: "d2".into(),
                count: 1
            }]
        );
        // Once it completed, nothing more starts.
        let new = task("t2", "d2", "n", Phase::Completed, 2);
        assert_eq!(
            plan(&s, &d, &[old.clone(), new.clone()], &[]),
            [Action::Complete {
                deployment: "d2".into()
            }]
        );
        let d = [
            dep("d1", false, Rollout::Completed),
            dep("d2", true, Rollout::Completed),
        ];
        assert_eq!(plan(&s, &d, &[old, new], &[]), []);
    }

    #[test]
    fn a_one_shot_daemon_runs_once_on_each_node() {
        let mut s = spec(Mode::Daemon);
        s.replace = Replace::OnFailure;
        let d = [dep("d1", true, Rollout::InProgress)];
        let nodes = ["a".to_string(), "b".to_string()];
        let tasks = [
            task("ta", "d1", "a", Phase::Completed, 1),
            task("tb", "d1", "b", Phase::Failed, 2),
        ];
        // a completed, b failed: b runs it again, a does not.
        assert_eq!(
            plan(&s, &d, &tasks, &nodes),
            [Action::StartOn {
                deployment: "d1".into(),
                node: "b".into()
            }]
        );
        let tasks = [
            tasks[0].clone(),
            task("tb2", "d1", "b", Phase::Completed, 3),
        ];
        assert_eq!(
            plan(&s, &d, &tasks, &nodes),
            [Action::Complete {
                deployment: "d1".into()
            }]
        );
    }
}
