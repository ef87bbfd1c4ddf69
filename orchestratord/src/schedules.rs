//! Scheduled tasks. The control plane fires unpinned schedules at their minute (placing the task
//! like `task run`); a schedule pinned to a node travels in that node's desired state and the
//! node fires it itself, then reports the run, which is recorded here.

use std::sync::Arc;

use flotilla_api::schedule::{ScheduleInfo, ScheduleRun};
use flotilla_api::tasks::{ScheduledRun, TaskState, TaskStatus};

use crate::agents::Agents;
use crate::store::{ScheduleRecord, StoreError, TaskRecord};

/// Runs kept per schedule.
const KEEP_RUNS: usize = 20;

/// `schedule:NAME`, the `startedBy` of a schedule's tasks.
pub fn started_by(name: &str) -> String {
    format!("schedule:{name}")
}

/// The next firing after `after` (seconds), if the schedule ever fires again.
pub fn next_run(s: &flotilla_api::schedule::ScheduleSpec, after: u64) -> Option<u64> {
    let cron = flotilla_scheduler::cron::parse(&s.cron, &s.timezone).ok()?;
    cron.next_after_unix(i64::try_from(after).ok()?)
        .and_then(|n| u64::try_from(n).ok())
}

/// The API's view.
pub fn info(s: &ScheduleRecord) -> ScheduleInfo {
    ScheduleInfo {
        spec: s.spec.clone(),
        next_run: s.next_run,
        runs: s.runs.clone(),
        created_at: s.created_at,
    }
}

fn record_run(s: &mut ScheduleRecord, run: ScheduleRun) {
    s.runs.insert(0, run);
    s.runs.truncate(KEEP_RUNS);
}

/// Fires the unpinned schedules that are due.
pub fn round(agents: &Arc<Agents>) -> Result<(), StoreError> {
    let store = &agents.store;
    let now = crate::now();
    for mut s in store.schedules()? {
        if s.spec.node.is_some() || s.next_run.is_none_or(|n| now < n) {
            continue;
        }
        let fired_at = s.next_run.unwrap_or(now);
        let name = s.spec.name.clone();
        let by = started_by(&name);
        let tasks = store.tasks()?;
        let live: Vec<TaskRecord> = tasks
            .iter()
            .filter(|t| {
                t.info.started_by.as_deref() == Some(by.as_str())
                    && t.info.state != TaskState::Stopped
            })
            .cloned()
            .collect();
        let mut fire = true;
        match s.spec.overlap {
            flotilla_api::schedule::Overlap::Forbid if !live.is_empty() => {
                fire = false;
                agents.event(
                    "schedule.skipped",
                    &name,
                    "the previous run still runs (overlap: forbid)",
                );
            }
            flotilla_api::schedule::Overlap::Replace => {
                for t in live {
                    let node = t.info.node.clone();
                    if crate::api::request_stop(store, t, "schedule: replaced by the next run")? {
                        if let Some(n) = node {
                            store.bump_generation(&n)?;
                            agents.clone().push_desired(&n);
                        }
                    }
                }
            }
            _ => {}
        }
        if fire {
            let nodes = store.nodes()?;
            let snapshot = crate::placement::snapshot(&nodes, &tasks, agents);
            let placed =
                crate::placement::request(&s.revision.task_definition, by.clone(), 1, &[], &[])
                    .and_then(|r| {
                        flotilla_scheduler::place(&snapshot, &r).map_err(|e| e.to_string())
                    });
            match placed {
                Ok(nodes) => {
                    let created = crate::api::create_tasks(
                        agents,
                        &s.revision,
                        nodes,
                        &s.spec.env,
                        Some(by.clone()),
                        None,
                    )?;
                    for t in created {
                        agents.event("schedule.fired", &name, format!("task {}", t.id));
                        record_run(
                            &mut s,
                            ScheduleRun {
                                task: t.id,
                                fired_at,
                                node: t.node,
                            },
                        );
                    }
                }
                Err(why) => agents.event("schedule.unplaceable", &name, why),
            }
        }
        s.next_run = next_run(&s.spec, now);
        store.put_schedule(&s)?;
    }
    Ok(())
}

/// A node reports a task it started by one of its pinned schedules: recorded as a task of that
/// schedule if the schedule is pinned to this node and the id is the one it derives. Returns the
/// new record, or `None` when the report is not acceptable.
pub fn adopt(
    agents: &Agents,
    node_id: &str,
    status: &TaskStatus,
    run: &ScheduledRun,
) -> Result<Option<TaskRecord>, StoreError> {
    let store = &agents.store;
    let Some(mut s) = store.schedule(&run.schedule)? else {
        return Ok(None);
    };
    let id = flotilla_api::tasks::scheduled_task_id(node_id, &run.schedule, run.fired_at);
    if s.spec.node.as_deref() != Some(node_id) || status.id != id {
        return Ok(None);
    }
    let rec = TaskRecord {
        info: flotilla_api::ops::TaskInfo {
            id: id.clone(),
            task_definition: format!("{}:{}", s.revision.family, s.revision.revision),
            node: Some(node_id.to_string()),
            desired: flotilla_api::tasks::DesiredStatus::Running,
            state: TaskState::Pending,
            stop_reason: None,
            stop_code: None,
            containers: Vec::new(),
            created_at: run.fired_at,
            started_by: Some(started_by(&run.schedule)),
            deployment: None,
            network: None,
        },
        definition: s.revision.task_definition.clone(),
        env: s.spec.env.clone(),
        lost_at: None,
        // Pinned runs start offline; awsvpc addresses are the control plane's to give.
        address: None,
    };
    agents.event(
        "schedule.fired",
        &run.schedule,
        format!("task {id} by node {node_id} at {}", run.fired_at),
    );
    store.put_task(&rec)?;
    record_run(
        &mut s,
        ScheduleRun {
            task: id,
            fired_at: run.fired_at,
            node: Some(node_id.to_string()),
        },
    );
    store.put_schedule(&s)?;
    Ok(Some(rec))
}
