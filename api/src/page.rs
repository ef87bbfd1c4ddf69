//! Pages and filters of the operator API's long listings (`GET /v1/tasks`, `GET /v1/nodes`),
//! in ECS's terms (`ListTasks`, `ListContainerInstances`): `maxResults` and `nextToken` in the
//! query, the filters beside them, and the next page's address in a `Link: <…>; rel="next"`
//! header (RFC 8288, as GitHub's API pages) so the body stays the array it always was.
//!
//! A page token names where the last page ended in the listing's order — tasks by
//! `(createdAt, id)`, nodes by id —, not an offset: an item created or removed between two
//! pages moves no other item across a page boundary (a task created meanwhile is listed if it
//! sorts after the token). Tokens are base64url, opaque to clients but not signed: a token
//! names only a place in the order, nothing a client could not ask for anyway.

use base64::Engine;

use crate::ops::{NodeState, TaskInfo};
use crate::tasks::{DesiredStatus, TaskState};
use crate::Labels;

/// The largest `maxResults` (ECS's bound for `ListTasks`' is 100; a page here is cheaper).
pub const MAX_RESULTS: u32 = 1000;

/// The query parameter of a page's size.
pub const MAX_RESULTS_PARAM: &str = "maxResults";

/// The query parameter of a page token.
pub const NEXT_TOKEN_PARAM: &str = "nextToken";

/// Which tasks `GET /v1/tasks` lists: those every given field matches (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// On this node (`node=`; ECS's `containerInstance`), whatever their state.
    pub node: Option<String>,
    /// Of this service (`service=`; ECS's `serviceName`): started by `service:NAME`.
    pub service: Option<String>,
    /// Of this task definition family, any revision (`family=`).
    pub family: Option<String>,
    /// Started by exactly this (`startedBy=`: `service:NAME`, `schedule:NAME` …).
    pub started_by: Option<String>,
    /// In this state (`state=`).
    pub state: Option<TaskState>,
    /// With this desired status (`desiredStatus=`).
    pub desired_status: Option<DesiredStatus>,
}

impl TaskFilter {
    /// Whether task `t` is one of those asked for.
    pub fn matches(&self, t: &TaskInfo) -> bool {
        let family = t
            .task_definition
            .rsplit_once(':')
            .map_or(t.task_definition.as_str(), |(f, _)| f);
        self.node
            .as_deref()
            .is_none_or(|n| t.node.as_deref() == Some(n))
            && self
                .service
                .as_deref()
                .is_none_or(|s| t.service() == Some(s))
            && self.family.as_deref().is_none_or(|f| family == f)
            && self
                .started_by
                .as_deref()
                .is_none_or(|s| t.started_by.as_deref() == Some(s))
            && self.state.is_none_or(|s| t.state == s)
            && self.desired_status.is_none_or(|d| t.desired == d)
    }

    /// The query pairs that ask for it, in a fixed order.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.node.clone().map(|v| ("node", v)));
        q.extend(self.service.clone().map(|v| ("service", v)));
        q.extend(self.family.clone().map(|v| ("family", v)));
        q.extend(self.started_by.clone().map(|v| ("startedBy", v)));
        q.extend(
            self.state
                .map(|v| ("state", task_state_name(v).to_string())),
        );
        q.extend(
            self.desired_status
                .map(|v| ("desiredStatus", desired_status_name(v).to_string())),
        );
        q
    }
}

/// Which nodes `GET /v1/nodes` lists: those every given field matches (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFilter {
    /// In this state (`status=`, as ECS's `ListContainerInstances` names it).
    pub status: Option<NodeState>,
    /// With each of these labels (`label=KEY` — any value — or `label=KEY=VALUE`, repeated).
    pub labels: Vec<(String, Option<String>)>,
}

impl NodeFilter {
    /// Whether a node in state `state` with `labels` is one of those asked for.
    pub fn matches(&self, state: NodeState, labels: &Labels) -> bool {
        self.status.is_none_or(|s| s == state)
            && self.labels.iter().all(|(k, v)| match v {
                Some(v) => labels.get(k) == Some(v),
                None => labels.contains_key(k),
            })
    }

    /// The query pairs that ask for it.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.status.map(|s| ("status", s.as_str().to_string())));
        for (k, v) in &self.labels {
            q.push((
                "label",
                match v {
                    Some(v) => format!("{k}={v}"),
                    None => k.clone(),
                },
            ));
        }
        q
    }
}

/// What a listing asks for: a filter, where the last page ended, and a page's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<F, C> {
    /// Only the items this matches.
    pub filter: F,
    /// Only the items after this one in the listing's order (the page token's place).
    pub after: Option<C>,
    /// At most this many (`None`: every item left, in one answer).
    pub max: Option<usize>,
}

impl<F: Default, C> Default for Query<F, C> {
    /// Everything, in one answer.
    fn default() -> Self {
        Self {
            filter: F::default(),
            after: None,
            max: None,
        }
    }
}

/// `GET /v1/tasks`' query.
pub type TaskQuery = Query<TaskFilter, TaskCursor>;

/// `GET /v1/nodes`' query.
pub type NodeQuery = Query<NodeFilter, NodeCursor>;

/// A page of a listing: its items in order, and where the next page starts when more remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    /// The items.
    pub items: Vec<T>,
    /// The last item's place when more items follow (`None`: this was the last page).
    pub next: Option<C>,
}

/// `PROVISIONING`, `PENDING`, `RUNNING`, `STOPPING`, `STOPPED`.
pub fn task_state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Provisioning => "PROVISIONING",
        TaskState::Pending => "PENDING",
        TaskState::Running => "RUNNING",
        TaskState::Stopping => "STOPPING",
        TaskState::Stopped => "STOPPED",
    }
}

/// A task state by its name, in any case (`running` is `RUNNING`).
pub fn task_state(name: &str) -> Option<TaskState> {
    [
        TaskState::Provisioning,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Stopping,
        TaskState::Stopped,
    ]
    .into_iter()
    .find(|s| task_state_name(*s).eq_ignore_ascii_case(name))
}

/// `RUNNING` or `STOPPED`.
pub fn desired_status_name(s: DesiredStatus) -> &'static str {
    match s {
        DesiredStatus::Running => "RUNNING",
        DesiredStatus::Stopped => "STOPPED",
    }
}

/// A desired status by its name, in any case.
pub fn desired_status(name: &str) -> Option<DesiredStatus> {
    [DesiredStatus::Running, DesiredStatus::Stopped]
        .into_iter()
        .find(|s| desired_status_name(*s).eq_ignore_ascii_case(name))
}

/// A node state by its name, in any case (`ready` is `READY`).
pub fn node_state(name: &str) -> Option<NodeState> {
    [
        NodeState::Ready,
        NodeState::Draining,
        NodeState::Disconnected,
        NodeState::Revoked,
    ]
    .into_iter()
    .find(|s| s.as_str().eq_ignore_ascii_case(name))
}

/// Where a page of tasks ended: the last task listed, in the order of `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskCursor {
    /// Its creation time (seconds since the epoch).
    pub created_at: u64,
    /// Its id.
    pub id: String,
}

/// Where a page of nodes ended: the last node listed, by id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeCursor {
    /// Its id.
    pub id: String,
}

/// Why a `nextToken` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "nextToken '{token}' is not a token this listing gave (tokens come from a page's Link header)"
)]
pub struct BadToken {
    /// The token, as given.
    pub token: String,
}

const TASKS_TAG: &str = "t1";
const NODES_TAG: &str = "n1";

fn encode(parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

fn decode<'a>(token: &str, tag: &str, text: &'a mut String) -> Result<Vec<&'a str>, BadToken> {
    let bad = || BadToken {
        token: token.to_string(),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    *text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts: Vec<&str> = text.split('\n').collect();
    if parts.first() != Some(&tag) {
        return Err(bad());
    }
    parts.remove(0);
    Ok(parts)
}

impl TaskCursor {
    /// As a `nextToken`.
    pub fn token(&self) -> String {
        encode(&[TASKS_TAG, &self.created_at.to_string(), &self.id])
    }

    /// A `nextToken` of `GET /v1/tasks` read back.
    pub fn parse(token: &str) -> Result<Self, BadToken> {
        let mut text = String::new();
        let parts = decode(token, TASKS_TAG, &mut text)?;
        match parts.as_slice() {
            [at, id] if !id.is_empty() => Ok(Self {
                created_at: at.parse().map_err(|_| BadToken {
                    token: token.to_string(),
                })?,
                id: id.to_string(),
            }),
            _ => Err(BadToken {
                token: token.to_string(),
            }),
        }
    }
}

impl NodeCursor {
    /// As a `nextToken`.
    pub fn token(&self) -> String {
        encode(&[NODES_TAG, &self.id])
    }

    /// A `nextToken` of `GET /v1/nodes` read back.
    pub fn parse(token: &str) -> Result<Self, BadToken> {
        let mut text = String::new();
        let parts = decode(token, NODES_TAG, &mut text)?;
        match parts.as_slice() {
            [id] if !id.is_empty() => Ok(Self { id: id.to_string() }),
            _ => Err(BadToken {
                token: token.to_string(),
            }),
        }
    }
}

/// The `key=value` pairs of a URL query (`&`-separated, empty pairs skipped), each side
/// [`percent_decoded`]. A pair without `=`, or with a broken escape, is refused as
/// `Err((key, value))` as written (for a pair without `=`, the pair and an empty value).
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, (String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| (p.to_string(), String::new()))?;
            match (percent_decoded(k), percent_decoded(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err((k.to_string(), v.to_string())),
            }
        })
        .collect()
}

/// `text` with its `%XX` escapes (RFC 3986, 2.1) and `+` (a space, in a query) decoded;
/// `None` for a broken escape or a result that is not UTF-8.
pub fn percent_decoded(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// The target of a `Link` header's `rel="next"` link (RFC 8288 §3: `<target>; rel="next"`,
/// links separated by commas), as written — `None` when it has none.
pub fn next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    loop {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let target = &rest[start + 1..end];
        let params = &rest[end + 1..];
        let params = params.split_once('<').map_or(params, |(p, _)| p);
        let is_next = params.split(';').any(|p| {
            p.trim().split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target);
        }
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_are_refused_across_listings_or_broken() {
        let t = TaskCursor {
            created_at: 1_700_000_000,
            id: "t-0a1b".into(),
        };
        assert_eq!(TaskCursor::parse(&t.token()), Ok(t.clone()));
        let n = NodeCursor { id: "n-42".into() };
        assert_eq!(NodeCursor::parse(&n.token()), Ok(n.clone()));
        assert!(NodeCursor::parse(&t.token()).is_err());
        assert!(TaskCursor::parse(&n.token()).is_err());
        for broken in ["", "!!", "dDEKeA", "%zz", "dDEKMTIKYQpi"] {
            assert!(TaskCursor::parse(broken).is_err(), "{broken}");
            assert!(NodeCursor::parse(broken).is_err(), "{broken}");
        }
        // Safe in a query as it is.
        assert!(t
            .token()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn the_next_link_is_found_among_others() {
        assert_eq!(
            next_link(r#"</v1/tasks?maxResults=2&nextToken=abc>; rel="next""#),
            Some("/v1/tasks?maxResults=2&nextToken=abc")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel="last next""#),
            Some("https://x/b")
        );
        assert_eq!(next_link(r#"<https://x/a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
        assert_eq!(next_link("<unclosed; rel=next"), None);
    }

    #[test]
    fn a_task_filter_matches_every_field_it_has() {
        let t: TaskInfo = serde_json::from_value(serde_json::json!({
            "id": "t-1", "taskDefinition": "web:3", "node": "n-1", "desired": "RUNNING",
            "state": "RUNNING", "createdAt": 1, "startedBy": "service:web"
        }))
        .expect("a task");
        let all = TaskFilter {
            node: Some("n-1".into()),
            service: Some("web".into()),
            family: Some("web".into()),
            started_by: Some("service:web".into()),
            state: Some(TaskState::Running),
            desired_status: Some(DesiredStatus::Running),
        };
        assert!(all.matches(&t));
        assert!(TaskFilter::default().matches(&t));
        for f in [
            TaskFilter {
                node: Some("n-2".into()),
                ..all.clone()
            },
            TaskFilter {
                service: Some("we".into()),
                ..all.clone()
            },
            TaskFilter {
                family: Some("web:3".into()),
                ..all.clone()
            },
            TaskFilter {
                started_by: Some("web".into()),
                ..all.clone()
            },
            TaskFilter {
                state: Some(TaskState::Pending),
                ..all.clone()
            },
            TaskFilter {
                desired_status: Some(DesiredStatus::Stopped),
                ..all.clone()
            },
        ] {
            assert!(!f.matches(&t), "{f:?}");
        }
        assert_eq!(task_state("running"), Some(TaskState::Running));
        assert_eq!(desired_status("Stopped"), Some(DesiredStatus::Stopped));
        assert_eq!(node_state("draining"), Some(NodeState::Draining));
        assert_eq!(task_state("RUN"), None);
    }

    #[test]
    fn a_node_filter_takes_a_state_and_labels_by_key_or_value() {
        let labels: Labels = [("site".to_string(), "a".to_string())].into();
        let f = |status, labels: &[(&str, Option<&str>)]| NodeFilter {
            status,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        };
        assert!(f(None, &[]).matches(NodeState::Ready, &labels));
        assert!(f(Some(NodeState::Ready), &[("site", None)]).matches(NodeState::Ready, &labels));
        assert!(f(None, &[("site", Some("a"))]).matches(NodeState::Draining, &labels));
        assert!(!f(None, &[("site", Some("b"))]).matches(NodeState::Ready, &labels));
        assert!(!f(None, &[("zone", None)]).matches(NodeState::Ready, &labels));
        assert!(!f(Some(NodeState::Ready), &[]).matches(NodeState::Disconnected, &labels));
    }
}
