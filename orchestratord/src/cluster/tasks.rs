//! Operations on tasks shared by every path that stops one, and the API's view of a task.

use flotilla_api::ops::TaskInfo;
use flotilla_api::tasks::{ContainerState, DesiredStatus, StopCode, TaskState};

use super::ctx::Ctx;
use super::live::Live;
use super::records::TaskRecord;

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
    if let Some(usage) = l.usage.get(&info.id) {
        for c in &mut info.containers {
            if c.state == ContainerState::Running {
                c.usage = usage.get(&c.name).cloned();
            }
        }
    }
    info
}
