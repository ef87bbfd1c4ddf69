//! The agent's reconciler: from the desired state and what the node observes, the actions to
//! take and the status to report. Pure — no I/O, no clock — so tests drive it with made-up
//! observations; the node's state machine (`node.rs`) calls it every round and turns its
//! actions into commands on runtime names.
//!
//! ECS semantics: containers start in `dependsOn` order (START, COMPLETE, SUCCESS, HEALTHY); an
//! essential container that exits ends its task (the others are stopped); a dependency that can
//! no longer be met fails the task; a task asked to stop, or no longer assigned to this node,
//! is stopped — its containers in reverse `dependsOn` order, each within its `stopTimeout` —
//! and its containers removed. A container with an enabled `restartPolicy` that
//! exits with a code it does not ignore is restarted in place after its backoff, and does not
//! end its task.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::taskdef::{ContainerDefinition, DependencyCondition, RestartPolicy};
use flotilla_api::tasks::{
    ContainerState, ContainerStatus, DesiredState, DesiredStatus, HealthStatus, StopCode,
    TaskState, TaskStatus,
};

/// Seconds between SIGTERM and SIGKILL when the definition says nothing (ECS's default).
pub const DEFAULT_STOP_TIMEOUT: u32 = 30;

/// A container as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Created, not (yet) running.
    Created,
    /// Running; `healthy` once a health check has an opinion.
    Running {
        /// Health check outcome.
        healthy: Option<bool>,
    },
    /// Exited.
    Exited {
        /// Exit code.
        code: i32,
        /// Killed by the OOM killer.
        oom: bool,
        /// How long it ran.
        ran: Duration,
        /// How long ago it exited.
        ago: Duration,
    },
}

/// The containers of each task present on the node, by task id then container name.
pub type World = BTreeMap<String, BTreeMap<String, Observed>>;

/// Restart attempts in a row of each (task, container): what its backoff counts from (the
/// status reports them for containers the caller has no count of its own for).
pub type Restarts = BTreeMap<(String, String), u32>;

/// The wait before restart number `attempt` (1-based): none for the first, then 1 s doubling
/// up to the policy's maximum.
pub fn backoff(attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let secs = 1u64
        .checked_shl(attempt - 2)
        .unwrap_or(u64::MAX)
        .min(RestartPolicy::MAX_BACKOFF_SECS);
    Duration::from_secs(secs)
}

/// A restart `c`'s policy will make.
struct Due {
    /// Its attempt number.
    attempt: u32,
    /// Whether it is due now.
    now: bool,
}

/// Whether `c`, seen as `o`, is to be restarted by its policy (now or after its backoff).
fn restart_due(c: &ContainerDefinition, o: Option<&Observed>, done: u32) -> Option<Due> {
    let policy = c.restart_policy.as_ref()?;
    let Some(Observed::Exited { code, ran, ago, .. }) = o else {
        return None;
    };
    if !policy.restarts(*code) {
        return None;
    }
    // A container that ran its attempt period counts as healthy again: backoff starts over.
    let attempt = if ran.as_secs() >= u64::from(policy.restart_attempt_period) {
        1
    } else {
        done + 1
    };
    Some(Due {
        attempt,
        now: *ago >= backoff(attempt),
    })
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a container.
    Start {
        /// Task id.
        task: String,
        /// Container name.
        container: String,
    },
    /// Stop a container (SIGTERM, SIGKILL after `grace_secs`).
    Stop {
        /// Task id.
        task: String,
        /// Container name.
        container: String,
        /// Seconds of grace.
        grace_secs: u32,
    },
    /// Remove every container of a task (all have exited).
    Remove {
        /// Task id.
        task: String,
    },
    /// Start an exited container again, in place (its restart policy says so).
    Restart {
        /// Task id.
        task: String,
        /// Container name.
        container: String,
        /// Restart attempts in a row of this container once this one is done.
        attempt: u32,
    },
}

/// The reconciler's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// Status of every task the node knows.
    pub status: Vec<TaskStatus>,
    /// Of each container reported `restarting` (by task id and container name), how long
    /// after its exit its restart policy starts it again: the caller, who has the clock,
    /// turns that into the status's `restartAt`.
    pub restart_backoff: BTreeMap<(String, String), Duration>,
}

fn exited(o: Option<&Observed>) -> Option<i32> {
    match o {
        Some(Observed::Exited { code, .. }) => Some(*code),
        _ => None,
    }
}

/// Whether `c`'s dependencies allow it to start: `Ok(true)` yes, `Ok(false)` not yet,
/// `Err(reason)` never.
fn ready(c: &ContainerDefinition, seen: &BTreeMap<String, Observed>) -> Result<bool, String> {
    let mut all = true;
    for d in &c.depends_on {
        let o = seen.get(&d.container_name);
        let met = match (d.condition, o) {
            (
                DependencyCondition::Start,
                Some(Observed::Running { .. } | Observed::Exited { .. }),
            ) => true,
            (DependencyCondition::Complete, Some(Observed::Exited { .. })) => true,
            (DependencyCondition::Success, Some(Observed::Exited { code: 0, .. })) => true,
            (DependencyCondition::Success, Some(Observed::Exited { code, .. })) => {
                return Err(format!(
                    "container {} cannot start: {} exited with {code}, not 0",
                    c.name, d.container_name
                ))
            }
            (
                DependencyCondition::Healthy,
                Some(Observed::Running {
                    healthy: Some(true),
                }),
            ) => true,
            (DependencyCondition::Healthy, Some(Observed::Exited { code, .. })) => {
                return Err(format!(
                    "container {} cannot start: {} exited ({code}) before it was healthy",
                    c.name, d.container_name
                ))
            }
            _ => false,
        };
        all &= met;
    }
    Ok(all)
}

fn container_status(
    name: &str,
    o: Option<&Observed>,
    restarts: u32,
    checked: bool,
) -> ContainerStatus {
    let health = match o {
        Some(Observed::Running { healthy }) if checked => Some(match healthy {
            None => HealthStatus::Starting,
            Some(true) => HealthStatus::Healthy,
            Some(false) => HealthStatus::Unhealthy,
        }),
        _ => None,
    };
    let (state, exit_code, reason) = match o {
        None => (ContainerState::Pending, None, None),
        Some(Observed::Created) => (ContainerState::Created, None, None),
        Some(Observed::Running { .. }) => (ContainerState::Running, None, None),
        Some(Observed::Exited { code, oom, .. }) => (
            ContainerState::Exited,
            Some(*code),
            oom.then(|| "OOM killed".to_string()),
        ),
    };
    ContainerStatus {
        name: name.to_string(),
        state,
        exit_code,
        reason,
        restarts,
        restart_at: None,
        health,
        usage: None,
    }
}

/// The running containers of a task that is ending which are to be stopped now: those no
/// running container of the task depends on. ECS reverses `dependsOn` for shutdown ("When a
/// dependency is defined for container startup, for container shutdown it is reversed",
/// ECS API reference, `ContainerDependency`): a dependent is stopped — within its own
/// `stopTimeout` — before what it depends on, which then gets its own. Empty when none runs.
fn stop_order<'a>(
    defs: &'a [ContainerDefinition],
    seen: &BTreeMap<String, Observed>,
) -> Vec<&'a ContainerDefinition> {
    let running = |name: &str| matches!(seen.get(name), Some(Observed::Running { .. }));
    let live: Vec<&ContainerDefinition> = defs.iter().filter(|c| running(&c.name)).collect();
    let first: Vec<&ContainerDefinition> = live
        .iter()
        .copied()
        .filter(|c| {
            !live.iter().any(|d| {
                d.name != c.name && d.depends_on.iter().any(|x| x.container_name == c.name)
            })
        })
        .collect();
    // Registration refuses dependency cycles; should one get here, everything stops at once
    // rather than nothing ever.
    if first.is_empty() {
        live
    } else {
        first
    }
}

/// Plans one round of reconciliation.
pub fn plan(desired: &DesiredState, world: &World, restarts: &Restarts) -> Plan {
    let mut out = Plan::default();
    let empty = BTreeMap::new();
    for task in &desired.tasks {
        let seen = world.get(&task.id).unwrap_or(&empty);
        let defs = &task.definition.container_definitions;
        let done = |c: &str| {
            restarts
                .get(&(task.id.clone(), c.to_string()))
                .copied()
                .unwrap_or(0)
        };
        // Why the task must end, if it must.
        let mut ending: Option<(StopCode, String)> = match task.desired {
            DesiredStatus::Stopped => {
                let code = task.stop_code.unwrap_or(StopCode::UserInitiated);
                Some((
                    code,
                    task.stop_reason
                        .clone()
                        .unwrap_or_else(|| code.reason().to_string()),
                ))
            }
            DesiredStatus::Running => None,
        };
        // Exited containers their policy restarts, and which of them are due now.
        let mut restarting = BTreeMap::new();
        let mut due = Vec::new();
        for c in defs {
            if let Some(d) = restart_due(c, seen.get(&c.name), done(&c.name)) {
                restarting.insert(c.name.as_str(), backoff(d.attempt));
                if d.now {
                    due.push((c.name.clone(), d.attempt));
                }
            }
        }
        if ending.is_none() {
            if let Some(c) = defs.iter().find(|c| {
                c.essential
                    && exited(seen.get(&c.name)).is_some()
                    && !restarting.contains_key(c.name.as_str())
            }) {
                ending = Some((
                    StopCode::EssentialContainerExited,
                    format!("essential container {} exited", c.name),
                ));
            }
        }
        let mut starts = Vec::new();
        if ending.is_none() {
            for c in defs.iter().filter(|c| !seen.contains_key(&c.name)) {
                match ready(c, seen) {
                    Ok(true) => starts.push(c.name.clone()),
                    Ok(false) => {}
                    Err(reason) => {
                        ending = Some((StopCode::EssentialContainerExited, reason));
                        break;
                    }
                }
            }
        }
        let containers: Vec<ContainerStatus> = defs
            .iter()
            .map(|c| {
                let mut status = container_status(
                    &c.name,
                    seen.get(&c.name),
                    done(&c.name),
                    c.health_check.is_some(),
                );
                // An exit its policy restarts, in a task that goes on, is a pending restart.
                if let (Some(wait), None) = (restarting.get(c.name.as_str()), &ending) {
                    status.state = ContainerState::Restarting;
                    out.restart_backoff
                        .insert((task.id.clone(), c.name.clone()), *wait);
                }
                status
            })
            .collect();
        let state = match &ending {
            Some(_) => {
                let stopping = stop_order(defs, seen);
                let live = !stopping.is_empty();
                for c in stopping {
                    out.actions.push(Action::Stop {
                        task: task.id.clone(),
                        container: c.name.clone(),
                        grace_secs: c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
                    });
                }
                if live {
                    TaskState::Stopping
                } else {
                    if task.desired == DesiredStatus::Stopped && !seen.is_empty() {
                        out.actions.push(Action::Remove {
                            task: task.id.clone(),
                        });
                    }
                    TaskState::Stopped
                }
            }
            None => {
                for name in &starts {
                    out.actions.push(Action::Start {
                        task: task.id.clone(),
                        container: name.clone(),
                    });
                }
                for (name, attempt) in due {
                    out.actions.push(Action::Restart {
                        task: task.id.clone(),
                        container: name,
                        attempt,
                    });
                }
                let started = defs.iter().all(|c| {
                    matches!(
                        seen.get(&c.name),
                        Some(Observed::Running { .. } | Observed::Exited { .. })
                    )
                });
                if started {
                    TaskState::Running
                } else {
                    TaskState::Pending
                }
            }
        };
        out.status.push(TaskStatus {
            scheduled: None,
            network: None,
            id: task.id.clone(),
            state,
            stop_code: ending.as_ref().map(|(c, _)| *c),
            stop_reason: ending.map(|(_, r)| r),
            containers,
        });
    }
    // Tasks on the node that are no longer assigned to it.
    for (id, seen) in world {
        if desired.tasks.iter().any(|t| &t.id == id) {
            continue;
        }
        let mut live = false;
        for (name, o) in seen {
            if matches!(o, Observed::Running { .. }) {
                live = true;
                out.actions.push(Action::Stop {
                    task: id.clone(),
                    container: name.clone(),
                    grace_secs: DEFAULT_STOP_TIMEOUT,
                });
            }
        }
        if !live {
            out.actions.push(Action::Remove { task: id.clone() });
        }
        out.status.push(TaskStatus {
            scheduled: None,
            network: None,
            id: id.clone(),
            state: if live {
                TaskState::Stopping
            } else {
                TaskState::Stopped
            },
            stop_code: Some(StopCode::NotAssigned),
            stop_reason: Some(StopCode::NotAssigned.reason().into()),
            containers: seen
                .iter()
                .map(|(n, o)| container_status(n, Some(o), 0, false))
                .collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::tasks::DesiredTask;

    fn task(id: &str, json: &str, desired: DesiredStatus) -> DesiredTask {
        DesiredTask {
            id: id.into(),
            task_definition: "f:1".into(),
            definition: flotilla_api::taskdef::parse(json)
                .expect("valid")
                .definition,
            env: Vec::new(),
            desired,
            stop_reason: None,
            stop_code: None,
            stop_on_client_after: None,
            address: None,
            namespace: None,
            service: None,
            secret_versions: Default::default(),
            config_versions: Default::default(),
        }
    }

    const APP_DB: &str = r#"{"family":"f","containerDefinitions":[
        {"name":"db","image":"x","memory":64,"essential":true,
         "healthCheck":{"command":["CMD-SHELL","true"]}},
        {"name":"migrate","image":"x","memory":64,"essential":false,
         "dependsOn":[{"containerName":"db","condition":"HEALTHY"}]},
        {"name":"app","image":"x","memory":64,"stopTimeout":5,
         "dependsOn":[{"containerName":"migrate","condition":"SUCCESS"}]}]}"#;

    fn state(tasks: Vec<DesiredTask>) -> DesiredState {
        DesiredState {
            generation: 1,
            tasks,
            schedules: Vec::new(),
            network: Default::default(),
        }
    }

    fn world(entries: &[(&str, &[(&str, Observed)])]) -> World {
        entries
            .iter()
            .map(|(t, cs)| {
                (
                    t.to_string(),
                    cs.iter().map(|(n, o)| (n.to_string(), *o)).collect(),
                )
            })
            .collect()
    }

    fn exit(code: i32, oom: bool) -> Observed {
        Observed::Exited {
            code,
            oom,
            ran: Duration::from_secs(1),
            ago: Duration::from_secs(1),
        }
    }

    fn plan_(d: &DesiredState, w: &World) -> Plan {
        plan(d, w, &Restarts::new())
    }

    fn starts(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { container, .. } => Some(container.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn containers_start_in_dependency_order() {
        let d = state(vec![task("t1", APP_DB, DesiredStatus::Running)]);
        let p = plan_(&d, &World::new());
        assert_eq!(starts(&p), ["db"]);
        assert_eq!(p.status[0].state, TaskState::Pending);

        let running = Observed::Running { healthy: None };
        let p = plan_(&d, &world(&[("t1", &[("db", running)])]));
        assert!(starts(&p).is_empty(), "migrate waits for db to be healthy");

        let healthy = Observed::Running {
            healthy: Some(true),
        };
        let p = plan_(&d, &world(&[("t1", &[("db", healthy)])]));
        assert_eq!(starts(&p), ["migrate"]);

        let ok = exit(0, false);
        let p = plan_(&d, &world(&[("t1", &[("db", healthy), ("migrate", ok)])]));
        assert_eq!(starts(&p), ["app"]);

        let p = plan_(
            &d,
            &world(&[("t1", &[("db", healthy), ("migrate", ok), ("app", running)])]),
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.status[0].state, TaskState::Running);
        // the same observation gives the same plan: applying it twice changes nothing
        assert_eq!(
            p,
            plan_(
                &d,
                &world(&[("t1", &[("db", healthy), ("migrate", ok), ("app", running)])])
            )
        );
    }

    #[test]
    fn a_failed_dependency_fails_the_task() {
        let d = state(vec![task("t1", APP_DB, DesiredStatus::Running)]);
        let healthy = Observed::Running {
            healthy: Some(true),
        };
        let bad = exit(3, false);
        let p = plan_(&d, &world(&[("t1", &[("db", healthy), ("migrate", bad)])]));
        assert!(starts(&p).is_empty());
        assert_eq!(p.status[0].state, TaskState::Stopping);
        assert!(p.status[0]
            .stop_reason
            .as_deref()
            .unwrap_or("")
            .contains("migrate exited with 3"));
        assert!(p.actions.contains(&Action::Stop {
            task: "t1".into(),
            container: "db".into(),
            grace_secs: DEFAULT_STOP_TIMEOUT
        }));
    }

    #[test]
    fn an_essential_exit_stops_the_others_and_reports_codes() {
        let d = state(vec![task("t1", APP_DB, DesiredStatus::Running)]);
        let ok = exit(0, false);
        let oom = exit(137, true);
        let p = plan_(
            &d,
            &world(&[(
                "t1",
                &[
                    ("db", oom),
                    ("migrate", ok),
                    ("app", Observed::Running { healthy: None }),
                ],
            )]),
        );
        assert_eq!(
            p.actions,
            [Action::Stop {
                task: "t1".into(),
                container: "app".into(),
                grace_secs: 5
            }]
        );
        assert_eq!(
            p.status[0].stop_reason.as_deref(),
            Some("essential container db exited")
        );
        let db = &p.status[0].containers[0];
        assert_eq!(
            (db.exit_code, db.reason.as_deref()),
            (Some(137), Some("OOM killed"))
        );
        // once everything exited the task is STOPPED and stays (no restart here)
        let p = plan_(
            &d,
            &world(&[("t1", &[("db", oom), ("migrate", ok), ("app", ok)])]),
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.status[0].state, TaskState::Stopped);
    }

    #[test]
    fn stopping_and_unassigned_tasks_are_stopped_then_removed() {
        let d = state(vec![task("t1", APP_DB, DesiredStatus::Stopped)]);
        let run = Observed::Running {
            healthy: Some(true),
        };
        let p = plan_(
            &d,
            &world(&[("t1", &[("db", run)]), ("old", &[("x", run)])]),
        );
        assert!(p.actions.contains(&Action::Stop {
            task: "t1".into(),
            container: "db".into(),
            grace_secs: 30
        }));
        assert!(p.actions.contains(&Action::Stop {
            task: "old".into(),
            container: "x".into(),
            grace_secs: 30
        }));
        assert_eq!(
            p.status[0].stop_reason.as_deref(),
            Some("stopped by an operator")
        );
        let done = exit(143, false);
        let p = plan_(
            &d,
            &world(&[("t1", &[("db", done)]), ("old", &[("x", done)])]),
        );
        assert_eq!(
            p.actions,
            [
                Action::Remove { task: "t1".into() },
                Action::Remove { task: "old".into() }
            ]
        );
        assert!(p.status.iter().all(|s| s.state == TaskState::Stopped));
        // nothing started for a task that is to be stopped
        let p = plan_(&d, &World::new());
        assert!(p.actions.is_empty());
    }

    const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
        {"name":"web","image":"x","memory":64,
         "restartPolicy":{"enabled":true,"ignoredExitCodes":[0],"restartAttemptPeriod":60}},
        {"name":"side","image":"x","memory":64,"essential":false}]}"#;

    #[test]
    fn restart_policy_restarts_with_backoff_and_keeps_the_task() {
        let d = state(vec![task("t1", CRASHY, DesiredStatus::Running)]);
        let run = Observed::Running { healthy: None };
        let crashed = |ran: u64, ago: u64| Observed::Exited {
            code: 2,
            oom: false,
            ran: Duration::from_secs(ran),
            ago: Duration::from_secs(ago),
        };
        let key = ("t1".to_string(), "web".to_string());
        let restart = |attempt| Action::Restart {
            task: "t1".into(),
            container: "web".into(),
            attempt,
        };
        // the first restart is immediate, and the essential exit does not end the task
        let p = plan_(
            &d,
            &world(&[("t1", &[("web", crashed(5, 0)), ("side", run)])]),
        );
        assert_eq!(p.actions, [restart(1)]);
        assert_eq!(p.status[0].state, TaskState::Running);
        assert_eq!(p.status[0].stop_reason, None);
        // the fourth waits 4 s after the exit
        let three = Restarts::from([(key.clone(), 3)]);
        let w = world(&[("t1", &[("web", crashed(5, 3)), ("side", run)])]);
        let p = plan(&d, &w, &three);
        assert!(p.actions.is_empty());
        // meanwhile it is a pending restart, 4 s after its exit, in a running task
        let web = &p.status[0].containers[0];
        assert_eq!(p.status[0].state, TaskState::Running);
        assert_eq!(
            (web.state, web.exit_code),
            (ContainerState::Restarting, Some(2))
        );
        assert_eq!(p.restart_backoff.get(&key), Some(&Duration::from_secs(4)));
        let w = world(&[("t1", &[("web", crashed(5, 4)), ("side", run)])]);
        assert_eq!(plan(&d, &w, &three).actions, [restart(4)]);
        assert_eq!(plan(&d, &w, &three).status[0].containers[0].restarts, 3);
        // one that ran its attempt period starts over at once
        let w = world(&[("t1", &[("web", crashed(60, 0)), ("side", run)])]);
        assert_eq!(plan(&d, &w, &three).actions, [restart(1)]);
        // an ignored exit code ends it like any essential exit
        let w = world(&[("t1", &[("web", exit(0, false)), ("side", run)])]);
        let p = plan(&d, &w, &three);
        assert_eq!(
            p.status[0].stop_reason.as_deref(),
            Some("essential container web exited")
        );
        assert_eq!(p.status[0].containers[0].state, ContainerState::Exited);
        assert!(p.restart_backoff.is_empty());
        assert!(!p
            .actions
            .iter()
            .any(|a| matches!(a, Action::Restart { .. })));
        // a task being stopped restarts nothing
        let d = state(vec![task("t1", CRASHY, DesiredStatus::Stopped)]);
        let w = world(&[("t1", &[("web", crashed(5, 100))])]);
        let p = plan_(&d, &w);
        assert_eq!(p.actions, [Action::Remove { task: "t1".into() }]);
        assert_eq!(p.status[0].containers[0].state, ContainerState::Exited);
        // backoff doubles from 1 s and is capped
        assert_eq!(
            [1, 2, 3, 4, 10, 40].map(|a| backoff(a).as_secs()),
            [0, 1, 2, 4, 256, 300]
        );
    }

    const APP_ON_DB: &str = r#"{"family":"f","containerDefinitions":[
        {"name":"db","image":"x","memory":64,"stopTimeout":10},
        {"name":"cache","image":"x","memory":64,"stopTimeout":3},
        {"name":"app","image":"x","memory":64,"stopTimeout":5,
         "dependsOn":[{"containerName":"db","condition":"START"},
                      {"containerName":"cache","condition":"START"}]},
        {"name":"metrics","image":"x","memory":64,"stopTimeout":2,"essential":false,
         "dependsOn":[{"containerName":"db","condition":"START"}]}]}"#;

    fn stops(p: &Plan) -> Vec<(String, u32)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop {
                    container,
                    grace_secs,
                    ..
                } => Some((container.clone(), *grace_secs)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on_each_within_its_own_stop_timeout() {
        let d = state(vec![task("t1", APP_ON_DB, DesiredStatus::Stopped)]);
        let run = Observed::Running { healthy: None };
        let all = [("db", run), ("cache", run), ("app", run), ("metrics", run)];
        // app and metrics first (nothing depends on them), each with its own timeout
        let p = plan_(&d, &world(&[("t1", &all)]));
        assert_eq!(stops(&p), [("app".into(), 5), ("metrics".into(), 2)]);
        assert_eq!(p.status[0].state, TaskState::Stopping);
        // app is down: cache goes (nothing running depends on it); db waits for metrics
        let gone = exit(143, false);
        let p = plan_(
            &d,
            &world(&[(
                "t1",
                &[("db", run), ("cache", run), ("app", gone), ("metrics", run)],
            )]),
        );
        assert_eq!(stops(&p), [("cache".into(), 3), ("metrics".into(), 2)]);
        // both dependents down: db, with its own 10 s
        let p = plan_(
            &d,
            &world(&[(
                "t1",
                &[
                    ("db", run),
                    ("cache", gone),
                    ("app", gone),
                    ("metrics", gone),
                ],
            )]),
        );
        assert_eq!(stops(&p), [("db".into(), 10)]);
        // an essential exit ends the task the same way: the dependent first
        let d = state(vec![task("t1", APP_ON_DB, DesiredStatus::Running)]);
        let p = plan_(
            &d,
            &world(&[(
                "t1",
                &[
                    ("db", run),
                    ("cache", gone),
                    ("app", run),
                    ("metrics", gone),
                ],
            )]),
        );
        assert_eq!(
            p.status[0].stop_reason.as_deref(),
            Some("essential container cache exited")
        );
        assert_eq!(stops(&p), [("app".into(), 5)]);
    }
}
