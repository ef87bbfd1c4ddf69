//! The agent's reconciler: from the desired state and what the node observes, the actions to
//! take and the status to report. Pure — no I/O, no clock — so tests drive it with made-up
//! observations; the agent loop applies the actions through the container runtime.
//!
//! ECS semantics: containers start in `dependsOn` order (START, COMPLETE, SUCCESS, HEALTHY); an
//! essential container that exits ends its task (the others are stopped); a dependency that can
//! no longer be met fails the task; a task asked to stop, or no longer assigned to this node,
//! is stopped and its containers removed.

use std::collections::BTreeMap;

use flotilla_api::taskdef::{ContainerDefinition, DependencyCondition};
use flotilla_api::tasks::{ContainerStatus, DesiredState, DesiredStatus, TaskState, TaskStatus};

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
    },
}

/// The containers of each task present on the node, by task id then container name.
pub type World = BTreeMap<String, BTreeMap<String, Observed>>;

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
}

/// The reconciler's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// Status of every task the node knows.
    pub status: Vec<TaskStatus>,
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

fn container_status(name: &str, o: Option<&Observed>) -> ContainerStatus {
    let (state, exit_code, reason) = match o {
        None => ("pending", None, None),
        Some(Observed::Created) => ("created", None, None),
        Some(Observed::Running { .. }) => ("running", None, None),
        Some(Observed::Exited { code, oom }) => {
            ("exited", Some(*code), oom.then(|| "OOM killed".to_string()))
        }
    };
    ContainerStatus {
        name: name.to_string(),
        state: state.to_string(),
        exit_code,
        reason,
    }
}

/// Plans one round of reconciliation.
pub fn plan(desired: &DesiredState, world: &World) -> Plan {
    let mut out = Plan::default();
    let empty = BTreeMap::new();
    for task in &desired.tasks {
        let seen = world.get(&task.id).unwrap_or(&empty);
        let defs = &task.definition.container_definitions;
        // Why the task must end, if it must.
        let mut ending: Option<String> = match task.desired {
            DesiredStatus::Stopped => Some("stopped by an operator".into()),
            DesiredStatus::Running => None,
        };
        if ending.is_none() {
            if let Some(c) = defs
                .iter()
                .find(|c| c.essential && exited(seen.get(&c.name)).is_some())
            {
                ending = Some(format!("essential container {} exited", c.name));
            }
        }
        let mut starts = Vec::new();
        if ending.is_none() {
            for c in defs.iter().filter(|c| !seen.contains_key(&c.name)) {
                match ready(c, seen) {
                    Ok(true) => starts.push(c.name.clone()),
                    Ok(false) => {}
                    Err(reason) => {
                        ending = Some(reason);
                        break;
                    }
                }
            }
        }
        let containers: Vec<ContainerStatus> = defs
            .iter()
            .map(|c| container_status(&c.name, seen.get(&c.name)))
            .collect();
        let state = match &ending {
            Some(_) => {
                let mut live = false;
                for c in defs {
                    if let Some(Observed::Running { .. }) = seen.get(&c.name) {
                        live = true;
                        out.actions.push(Action::Stop {
                            task: task.id.clone(),
                            container: c.name.clone(),
                            grace_secs: c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
                        });
                    }
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
            id: task.id.clone(),
            state,
            stop_reason: ending,
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
            id: id.clone(),
            state: if live {
                TaskState::Stopping
            } else {
                TaskState::Stopped
            },
            stop_reason: Some("no longer assigned to this node".into()),
            containers: seen
                .iter()
                .map(|(n, o)| container_status(n, Some(o)))
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
        let p = plan(&d, &World::new());
        assert_eq!(starts(&p), ["db"]);
        assert_eq!(p.status[0].state, TaskState::Pending);

        let running = Observed::Running { healthy: None };
        let p = plan(&d, &world(&[("t1", &[("db", running)])]));
        assert!(starts(&p).is_empty(), "migrate waits for db to be healthy");

        let healthy = Observed::Running {
            healthy: Some(true),
        };
        let p = plan(&d, &world(&[("t1", &[("db", healthy)])]));
        assert_eq!(starts(&p), ["migrate"]);

        let ok = Observed::Exited {
            code: 0,
            oom: false,
        };
        let p = plan(&d, &world(&[("t1", &[("db", healthy), ("migrate", ok)])]));
        assert_eq!(starts(&p), ["app"]);

        let p = plan(
            &d,
            &world(&[("t1", &[("db", healthy), ("migrate", ok), ("app", running)])]),
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.status[0].state, TaskState::Running);
        // the same observation gives the same plan: applying it twice changes nothing
        assert_eq!(
            p,
            plan(
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
        let bad = Observed::Exited {
            code: 3,
            oom: false,
        };
        let p = plan(&d, &world(&[("t1", &[("db", healthy), ("migrate", bad)])]));
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
        let ok = Observed::Exited {
            code: 0,
            oom: false,
        };
        let oom = Observed::Exited {
            code: 137,
            oom: true,
        };
        let p = plan(
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
        let p = plan(
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
        let p = plan(
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
        let done = Observed::Exited {
            code: 143,
            oom: false,
        };
        let p = plan(
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
        let p = plan(&d, &World::new());
        assert!(p.actions.is_empty());
    }
}
