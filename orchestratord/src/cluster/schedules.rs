//! Scheduled tasks. The control plane fires unpinned schedules at their minute (placing the
//! task like `task run`, through the plan applier); a schedule pinned to a node travels in that
//! node's desired state and the node fires it itself, then reports the run, which is adopted
//! here.

use flotilla_api::ops::TaskInfo;
use flotilla_api::schedule::{Overlap, ScheduleInfo, ScheduleRun, ScheduleSpec};
use flotilla_api::tasks::{ScheduledRun, StopCode, TaskStatus};

use super::command::ClusterError;
use super::ctx::Ctx;
use super::metrics::PlacementOrigin;
use super::placement::{self, NewTask, Plan};
use super::records::{Origin, ScheduleRecord, TaskRecord};
use super::tasks;

/// Runs kept per schedule.
const KEEP_RUNS: usize = 20;

/// The next firing after `after` (seconds), if the schedule ever fires again.
pub fn next_run(s: &ScheduleSpec, after: u64) -> Option<u64> {
    let cron = flotilla_scheduler::cron::parse(&s.cron, &s.timezone).ok()?;
    cron.next_after_unix(i64::try_from(after).ok()?)
        .and_then(|n| u64::try_from(n).ok())
}

/// The API's view at `now` (seconds): a pinned schedule's next firing is its cron's next
/// minute (its node fires it then by its own clock).
pub fn info(s: &ScheduleRecord, now: u64) -> ScheduleInfo {
    ScheduleInfo {
        spec: s.spec.clone(),
        next_run: match &s.spec.node {
            None => s.next_run,
            Some(_) => next_run(&s.spec, now),
        },
        runs: s.runs.clone(),
        created_at: s.created_at,
    }
}

fn record_run(s: &mut ScheduleRecord, run: ScheduleRun) {
    s.runs.insert(0, run);
    s.runs.truncate(KEEP_RUNS);
}

/// A clock set back by more than this (3 h) was corrected: a schedule's next firing is taken
/// from it anew (cron's rule: "clock changes of more than 3 hours are considered to be
/// corrections to the clock, and the new time is used immediately"; the node's rule for the
/// schedules pinned to it is the same).
const CLOCK_CORRECTION_SECS: u64 = 3 * 3600;

/// Whether unpinned schedule `s`'s next firing was reckoned by a clock that has since been
/// set back more than [`CLOCK_CORRECTION_SECS`]: it is later than the firing its cron gives
/// after that much from `now`, which a clock that only moves forward never makes.
fn reckoned_ahead(s: &ScheduleRecord, now: u64) -> bool {
    match (
        s.next_run,
        next_run(&s.spec, now.saturating_add(CLOCK_CORRECTION_SECS)),
    ) {
        (Some(stored), Some(bound)) => stored > bound,
        _ => false,
    }
}

/// Fires the unpinned schedules that are due: at most one run each however far the clock
/// jumped ahead (the next firing is then reckoned from the clock's time); a schedule whose
/// next firing a clock set back would hold for long is reckoned anew from it.
pub fn round(cx: &mut Ctx<'_, '_>) -> Result<(), ClusterError> {
    let now = cx.now.secs();
    let behind: Vec<ScheduleRecord> = cx
        .txn
        .schedules()
        .into_iter()
        .filter(|s| s.spec.node.is_none() && reckoned_ahead(s, now))
        .cloned()
        .collect();
    for mut s in behind {
        tracing::warn!(
            schedule = %s.spec.name,
            "the clock was set back past this schedule's next firing: reckoned anew from it"
        );
        s.next_run = next_run(&s.spec, now);
        cx.txn.put_schedule(s);
    }
    let due: Vec<ScheduleRecord> = cx
        .txn
        .schedules()
        .into_iter()
        .filter(|s| s.spec.node.is_none() && s.next_run.is_some_and(|n| now >= n))
        .cloned()
        .collect();
    for mut s in due {
        let fired_at = s.next_run.unwrap_or(now);
        let name = s.spec.name.clone();
        let by = Origin::Schedule(name.clone()).started_by();
        let live: Vec<String> = cx
            .txn
            .tasks_of(&by)
            .into_iter()
            .filter(|t| t.is_live())
            .map(|t| t.info.id.clone())
            .collect();
        let fire = match s.spec.overlap {
            Overlap::Forbid if !live.is_empty() => {
                cx.event(
                    "schedule.skipped",
                    &name,
                    "the previous run still runs (overlap: forbid)",
                );
                false
            }
            Overlap::Replace => {
                for t in &live {
                    tasks::stop(cx, t, StopCode::ScheduleReplaced, None);
                }
                true
            }
            Overlap::Forbid | Overlap::Allow => true,
        };
        if fire {
            match fire_one(cx, &s, &by) {
                Ok(created) => {
                    for t in created {
                        cx.event("schedule.fired", &name, format!("task {}", t.id));
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
                Err(ClusterError::Conflict(why) | ClusterError::Invalid { message: why, .. }) => {
                    cx.event("schedule.unplaceable", &name, why)
                }
                Err(e) => return Err(e),
            }
        }
        s.next_run = next_run(&s.spec, now);
        cx.txn.put_schedule(s);
    }
    Ok(())
}

fn fire_one(
    cx: &mut Ctx<'_, '_>,
    s: &ScheduleRecord,
    by: &str,
) -> Result<Vec<TaskInfo>, ClusterError> {
    let request = placement::request(
        &s.revision.task_definition,
        by.to_string(),
        1,
        &[],
        &[],
        cx.now.secs(),
    )
    .map_err(ClusterError::invalid)?;
    let snapshot = placement::snapshot(cx.txn, cx.live);
    let nodes = flotilla_scheduler::place(&snapshot, &request).map_err(|e| {
        cx.metrics.unplaceable(PlacementOrigin::Schedule, &e, true);
        let holders = placement::port_holders(cx.txn, &e, &request.ports);
        ClusterError::Conflict(format!("{e}{holders}"))
    })?;
    let applied = placement::apply(
        cx,
        Plan {
            request,
            task: NewTask {
                revision: s.revision.clone(),
                env: s.spec.env.clone(),
                origin: Some(Origin::Schedule(s.spec.name.clone())),
                deployment: None,
            },
            nodes,
            all_or_nothing: true,
            allow_disconnected: false,
        },
    )?;
    Ok(applied.created)
}

/// A node reports a task it started by one of its pinned schedules: recorded as a task of that
/// schedule if the schedule is pinned to this node, the run is at a time its cron expression
/// fires and the id is the one it derives. Returns the new record, or why the report is not
/// acceptable (what ends "a run of a schedule …").
pub fn adopt(
    cx: &mut Ctx<'_, '_>,
    node: &str,
    status: &TaskStatus,
    run: &ScheduledRun,
) -> Result<TaskRecord, String> {
    let name = &run.schedule;
    let Some(s) = cx.txn.schedule(name) else {
        return Err("that does not exist".into());
    };
    let mut s = s.clone();
    if s.spec.node.as_deref() != Some(node) {
        return Err("not pinned to this node".into());
    }
    // Only a time the schedule fires: a node cannot make up runs (and tasks) at will.
    let fires = run
        .fired_at
        .checked_sub(1)
        .and_then(|before| next_run(&s.spec, before));
    if fires != Some(run.fired_at) {
        return Err(format!(
            "that does not fire at {} ('{}' in {})",
            run.fired_at, s.spec.cron, s.spec.timezone
        ));
    }
    let id = flotilla_api::tasks::scheduled_task_id(node, name, run.fired_at);
    if status.id != id {
        return Err(format!("under another task id than {id}"));
    }
    // Pinned runs start offline, so with no address (awsvpc addresses are the control
    // plane's to give); pinned schedules of definitions with secrets are refused.
    let mut rec = TaskRecord::placed(
        id.clone(),
        format!("{}:{}", s.revision.family, s.revision.revision),
        s.revision.task_definition.clone(),
        node,
        run.fired_at,
    );
    rec.info.started_by = Some(Origin::Schedule(run.schedule.clone()).started_by());
    rec.env = s.spec.env.clone();
    cx.event(
        "schedule.fired",
        &run.schedule,
        format!("task {id} by node {node} at {}", run.fired_at),
    );
    record_run(
        &mut s,
        ScheduleRun {
            task: id,
            fired_at: run.fired_at,
            node: Some(node.to_string()),
        },
    );
    cx.txn.put_schedule(s);
    Ok(rec)
}
