//! `GET /v1/tasks` and `GET /v1/nodes`: the filter and the page, in the core, in one read of
//! the state (see `flotilla_api::page` for the tokens and the order).
//!
//! What a page costs: tasks are read once — all of them, or, for `service=` and `startedBy=`,
//! only that group's from the state's `startedBy` index —, each compared with the filter and
//! the token (no copy), then the page's `maxResults` are chosen by a linear selection and only
//! they sorted and copied into the answer: O(n + k log k) for n tasks read and a page of k,
//! against O(n log n) and n copies for the whole list. Nodes are held in id order: a page
//! reads them once in that order, each compared with the filter and the token (O(n)), and
//! copies only its k.

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
    // A group the state indexes is read alone; the filter still checks every field.
    let read = match (&f.service, &f.started_by) {
        (Some(s), _) => cx.txn.tasks_of(&format!("service:{s}")),
        (None, Some(g)) => cx.txn.tasks_of(g),
        (None, None) => cx.txn.tasks(),
    };
    let after = q.after.as_ref().map(|c| (c.created_at, c.id.as_str()));
    let mut hits: Vec<&TaskRecord> = read
        .into_iter()
        .filter(|t| after.is_none_or(|a| task_key(t) > a) && f.matches(&t.info))
        .collect();
    let more = q.max.is_some_and(|m| hits.len() > m);
    if let (Some(m), true) = (q.max, more) {
        // The m first in the order, unordered, in front: then only they are sorted.
        hits.select_nth_unstable_by(m, |a, b| task_key(a).cmp(&task_key(b)));
        hits.truncate(m);
    }
    hits.sort_unstable_by(|a, b| task_key(a).cmp(&task_key(b)));
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
