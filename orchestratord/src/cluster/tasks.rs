//! Operations on tasks shared by every path that stops one, and the API's view of a task.

use flotilla_api::ops::TaskInfo;
use flotilla_api::tasks::{ContainerState, DesiredStatus, StopCode, TaskState};

use super::ctx::Ctx;
use super::live::{Live, TaskCpu};
use super::records::TaskRecord;

/// How long a `STOPPED` task stays on record after it stopped: as long as its node keeps its
/// containers' logs (`nodeagent`'s kept logs: 3 h, the ECS agent's default
/// `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`), so that `task inspect` and `logs` answer while
/// the logs exist. ECS shows a stopped task for at least an hour ("Stopped tasks", Amazon ECS
/// Developer Guide). Without it the store grows by every task ever run: a schedule every
/// minute is half a million records a year.
pub const STOPPED_RETENTION_SECS: u64 = 3 * 3600;

/// Removes the records of tasks `STOPPED` longer than [`STOPPED_RETENTION_SECS`]; a stopped
/// task with no time of stopping (recorded before it was kept) counts from now, and one that
/// `kept` says still counts (for its service's `completionPolicy`: a one-shot task of the
/// primary deployment — the caller's to judge, as this module knows no services) stays while
/// that holds. How many were removed.
pub fn prune_stopped(
    cx: &mut Ctx<'_, '_>,
    kept: impl Fn(&super::state::Txn<'_>, &TaskRecord) -> bool,
) -> usize {
    let now = cx.now.secs();
    let mut due = Vec::new();
    let mut unstamped = Vec::new();
    for t in cx.txn.tasks() {
        if t.info.state != TaskState::Stopped {
            continue;
        }
        match t.stopped_at {
            Some(at) if now >= at.saturating_add(STOPPED_RETENTION_SECS) => {
                if !kept(cx.txn, t) {
                    due.push(t.info.id.clone())
                }
            }
            Some(_) => {}
            None => unstamped.push(t.clone()),
        }
    }
    for t in unstamped {
        cx.txn.put_task(t);
    }
    for id in &due {
        cx.txn.remove_task(id);
    }
    due.len()
}

/// Asks for task `id` to be stopped for `code` (`reason`: its text for people, default the
/// code's): desired `STOPPED`, `STOPPING` until its node reports it stopped, a `task.stopping`
/// event. False when it was already stopping or stopped (or there is no such task).
pub fn stop(cx: &mut Ctx<'_, '_>, id: &str, code: StopCode, reason: Option<String>) -> bool {
    let Some(t) = cx.txn.task(id) else {
        return false;
    };
    if t.info.desired != DesiredStatus::Running || t.info.state == TaskState::Stopped {
        return false;
    }
    let mut t = t.clone();
    let reason = reason.unwrap_or_else(|| code.reason().to_string());
    t.info.desired = DesiredStatus::Stopped;
    t.info.stop_code = Some(code);
    t.info.stop_reason = Some(reason.clone());
    if t.info.state < TaskState::Stopping {
        t.info.state = TaskState::Stopping;
    }
    cx.txn.put_task(t);
    cx.event("task.stopping", id, reason);
    true
}

/// A task as the API shows it: with its own and its running containers' usage from its
/// node's last heartbeat.
pub fn info(t: &TaskRecord, live: &Live) -> TaskInfo {
    let mut info = t.info.clone();
    if info.state == TaskState::Stopped {
        return info;
    }
    let Some(node) = &info.node else { return info };
    let l = live.get(node);
    info.usage = l.task_usage.get(&info.id).cloned();
    // A rate only while it runs and its node is heard: a lost node's last one is not now.
    if info.state == TaskState::Running && l.session.is_some() {
        info.cpu_millicores = l.task_cpu.get(&info.id).and_then(TaskCpu::millicores);
    }
    if let Some(usage) = l.usage.get(&info.id) {
        for c in &mut info.containers {
            if c.state == ContainerState::Running {
                c.usage = usage.get(&c.name).cloned();
            }
        }
    }
    info
}
