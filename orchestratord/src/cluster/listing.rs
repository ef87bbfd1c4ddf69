//! `GET /v1/tasks` and `GET /v1/nodes`: the filter and the page, in the core, in one read of
//! the state (see `flotilla_api::page` for the tokens and the order).
//!
//! What a page costs: tasks are read in the order of the state's `(createdAt, id)` index from
//! the token's place, each compared with the filter, until the page is full — O(log n + k)
//! for a page of k when every task read matches, up to O(n) for a filter few tasks match
//! (`state=`, `family=`, `desiredStatus=` alone); for `service=`, `startedBy=` and `node=` only
//! that group's tasks are read, from the state's `startedBy` and node indexes, and the page
//! chosen among them by a linear selection: O(g + k log k) for a group of g.
//! Only the page's tasks are copied into the answer. The whole list is O(n) and n copies.
//! Nodes are held in id order: a page reads them once in that order, each compared with the
//! filter and the token (O(n)), and copies only its k.

use flotilla_api::ops::{NodeInfo, NodeState, TaskInfo};
use flotilla_api::page::{NodeCursor, NodeQuery, Page, TaskCursor, TaskQuery};

use super::ctx::Ctx;
use super::live::{Live, TaskCpu};
use super::records::{NodeRecord, TaskRecord};
use super::tasks;

fn task_key(t: &TaskRecord) -> (u64, &str) {
    (t.info.created_at, t.info.id.as_str())
}

/// The tasks `q` asks for, oldest first (by `createdAt`, then id).
pub fn tasks(cx: &Ctx<'_, '_>, q: &TaskQuery) -> Page<TaskInfo, TaskCursor> {
    let f = &q.filter;
    let after = q.after.as_ref().map(|c| (c.created_at, c.id.as_str()));
    // One more than a page: whether another follows.
    let limit = q.max.map_or(usize::MAX, |m| m.saturating_add(1));
    let indexed = match (&f.service, &f.started_by, &f.node) {
        (Some(s), _, _) => Some(cx.txn.tasks_of(&format!("service:{s}"))),
        (None, Some(g), _) => Some(cx.txn.tasks_of(g)),
        (None, None, Some(n)) => Some(cx.txn.tasks_placed_on(n)),
        (None, None, None) => None,
    };
    let mut hits: Vec<&TaskRecord> = match indexed {
        // A group the state indexes is read alone (the filter still checks every field),
        // the page chosen from it by a linear selection, then only the page sorted.
        Some(group) => {
            let mut hits: Vec<&TaskRecord> = group
                .into_iter()
                .filter(|t| after.is_none_or(|a| task_key(t) > a) && f.matches(&t.info))
                .collect();
            if hits.len() > limit {
                hits.select_nth_unstable_by(limit, |a, b| task_key(a).cmp(&task_key(b)));
                hits.truncate(limit);
            }
            hits.sort_unstable_by(|a, b| task_key(a).cmp(&task_key(b)));
            hits
        }
        // Otherwise in order from the token's place, until the page is full.
        None => cx
            .txn
            .tasks_by_created(after)
            .filter(|t| f.matches(&t.info))
            .take(limit)
            .collect(),
    };
    let more = q.max.is_some_and(|m| hits.len() > m);
    if let (Some(m), true) = (q.max, more) {
        hits.truncate(m);
    }
    let next = hits.last().filter(|_| more).map(|t| TaskCursor {
        created_at: t.info.created_at,
        id: t.info.id.clone(),
    });
    Page {
        items: hits.into_iter().map(|t| tasks::info(t, cx.live)).collect(),
        next,
    }
}

/// The nodes `q` asks for, by id.
pub fn nodes(cx: &Ctx<'_, '_>, q: &NodeQuery) -> Page<NodeInfo, NodeCursor> {
    let after = q.after.as_ref().map(|c| c.id.as_str());
    let mut hits = cx.txn.nodes().into_iter().filter(|n| {
        after.is_none_or(|a| n.id.as_str() > a)
            && q.filter.matches(node_state(n, cx.live), &n.labels)
    });
    let items: Vec<NodeInfo> = hits
        .by_ref()
        .take(q.max.unwrap_or(usize::MAX))
        .map(|n| node_info(n, cx.live))
        .collect();
    let more = hits.next().is_some();
    let next = items
        .last()
        .filter(|_| more)
        .map(|n| NodeCursor { id: n.id.clone() });
    Page { items, next }
}

/// Where a node is, as the API shows it.
pub fn node_state(n: &NodeRecord, live: &Live) -> NodeState {
    if n.revoked {
        NodeState::Revoked
    } else if !live.connected(&n.id) {
        NodeState::Disconnected
    } else if n.draining {
        NodeState::Draining
    } else {
        NodeState::Ready
    }
}

/// A node as the API shows it.
pub fn node_info(n: &NodeRecord, live: &Live) -> NodeInfo {
    let l = live.get(&n.id);
    let connected = l.session.is_some();
    NodeInfo {
        state: node_state(n, live),
        agent_version: l.agent_version,
        last_seen: l.last_seen,
        // Only while its session is up: a lost node's last rate is not its use now.
        cpu_millicores: l
            .node_cpu
            .as_ref()
            .filter(|_| connected)
            .and_then(TaskCpu::millicores),
        resources: l.resources,
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        labels: n.labels.clone(),
        joined_at: n.joined_at,
        token_id: n.token_id.clone(),
        cert_not_after: n.cert_not_after,
        revoked: n.revoked,
        draining: n.draining,
        connected,
    }
}
