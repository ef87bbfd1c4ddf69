//! The operator API: HTTPS (HTTP/1.1 over TLS 1.3) with JSON bodies, for admin client
//! certificates only. Routes parse into an [`Action`]; [`execute`] does it and answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::ops::{
    AdminCredential, AdminIssue, ApiError, NodeInfo, NodeLabels, TaskDefRegistered, TaskDefStatus,
    TaskInfo, TaskRun, TokenCreate, TokenCreated, TokenInfo,
};
use flotilla_api::service::ServiceUpdate;
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_api::{read_frame, write_frame, LogFrame, LogRequest, ServerPush};
use flotilla_certs::token::JoinToken;
use flotilla_certs::{identity_of, Role, ADMIN_CERT_LIFETIME};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::agents::Agents;
use crate::store::{NodeRecord, TaskRecord, TokenRecord};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Default token lifetime.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// What an operator asked for.
#[derive(Debug)]
enum Action {
    CreateToken(TokenCreate),
    ListTokens,
    RemoveToken(String),
    ListNodes,
    GetNode(String),
    RevokeNode(String),
    LabelNode(String, NodeLabels),
    DrainNode(String, bool),
    RemoveNode(String, bool),
    IssueAdmin(AdminIssue),
    RegisterTaskDef(String),
    ListTaskDefs,
    GetTaskDef(String, Option<u32>),
    DeregisterTaskDef(String, u32),
    RunTask(TaskRun),
    ListTasks,
    GetTask(String),
    TaskLogs(LogRequest),
    ListEvents { since: u64, limit: usize },
    CreateService(String),
    ListServices,
    GetService(String),
    ServiceEndpoints(String),
    UpdateService(String, ServiceUpdate),
    RemoveService(String),
    CreateSchedule(flotilla_api::schedule::ScheduleSpec),
    ListSchedules,
    GetSchedule(String),
    RemoveSchedule(String),
    StopTask(String),
}

/// The `key=value` pairs of a query; a pair without `=` is refused, naming `usage`.
fn query_pairs<'q>(
    query: Option<&'q str>,
    usage: &str,
) -> Result<Vec<(&'q str, &'q str)>, (StatusCode, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').ok_or_else(|| bad_query(p, "", usage)))
        .collect()
}

fn bad_query(key: &str, value: &str, usage: &str) -> (StatusCode, String) {
    let pair = if value.is_empty() {
        key.to_string()
    } else {
        format!("{key}={value}")
    };
    (StatusCode::BAD_REQUEST, format!("query '{pair}': {usage}"))
}

/// `FAMILY` or `FAMILY:REVISION`.
fn family_revision(spec: &str) -> Result<(String, Option<u32>), (StatusCode, String)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((f, r)) => match r.parse::<u32>() {
            Ok(n) if n > 0 => Ok((f.to_string(), Some(n))),
            _ => Err((
                StatusCode::BAD_REQUEST,
                format!("'{spec}': expected FAMILY or FAMILY:REVISION"),
            )),
        },
    }
}

type Reply = Response<Full<Bytes>>;
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    json(
        status,
        &ApiError {
            error: msg.into(),
            problems: Vec::new(),
        },
    )
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, agents: Arc<Agents>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("operator API accept: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let agents = agents.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, "operator TLS handshake: {e}"),
                    Err(_) => return tracing::debug!(%peer, "operator TLS handshake timed out"),
                };
            let admin = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity_of(c).ok())
                .filter(|(id, _)| id.role == Role::Admin)
                .map(|(id, _)| id.name);
            let service = hyper::service::service_fn(move |req| {
                let agents = agents.clone();
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &agents, admin).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, "operator connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    agents: &Arc<Agents>,
    admin: Option<String>,
) -> Response<Body> {
    let Some(admin) = admin else {
        return error(
            StatusCode::UNAUTHORIZED,
            "an admin client certificate of this cluster is required",
        )
        .map(BodyExt::boxed);
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))
                .map(BodyExt::boxed)
        }
    };
    let action = match parse(&method, &path, query.as_deref(), &body) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg).map(BodyExt::boxed),
    };
    tracing::info!(%admin, %method, %path, "operator request");
    match action {
        Action::TaskLogs(req) => task_logs(req, agents).await,
        other => execute(other, agents).map(BodyExt::boxed),
    }
}

/// A response body fed through a channel (streamed logs).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// `GET /v1/tasks/{id}/logs`: asks the task's node over its session and streams the lines
/// back as newline-delimited JSON ([`LogLine`]s; a last `{"error": …}` when the node fails
/// mid-way).
async fn task_logs(req: LogRequest, agents: &Arc<Agents>) -> Response<Body> {
    let boxed = |r: Reply| r.map(BodyExt::boxed);
    let task = match agents.store.task(&req.task) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return boxed(error(
                StatusCode::NOT_FOUND,
                format!("no task {}", req.task),
            ))
        }
        Err(e) => return boxed(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let Some(node) = task.info.node else {
        return boxed(error(
            StatusCode::CONFLICT,
            format!("task {} was never placed on a node", req.task),
        ));
    };
    let Some(conn) = agents.live_session(&node) else {
        return boxed(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} is not connected; logs are read from the node"),
        ));
    };
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &ServerPush::Logs(req))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let first = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<_, LogFrame>(&mut recv),
        )
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((recv, first))
    };
    let (mut recv, first) = match opened.await {
        Ok(x) => x,
        Err(e) => return boxed(error(StatusCode::BAD_GATEWAY, format!("node {node}: {e}"))),
    };
    if let LogFrame::Error { reason } = first {
        return boxed(error(
            StatusCode::NOT_FOUND,
            format!("node {node}: {reason}"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut frame = first;
        loop {
            let mut out = Vec::new();
            let done = match frame {
                LogFrame::Lines { lines } => {
                    for l in &lines {
                        let _ = serde_json::to_writer(&mut out, l);
                        out.push(b'\n');
                    }
                    false
                }
                LogFrame::End => true,
                LogFrame::Error { reason } => {
                    let _ =
                        serde_json::to_writer(&mut out, &serde_json::json!({ "error": reason }));
                    out.push(b'\n');
                    true
                }
            };
            // A reader that went away drops the body: the node's stream is stopped with it.
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if done {
                return;
            }
            frame = match read_frame::<_, LogFrame>(&mut recv).await {
                Ok(f) => f,
                Err(e) => LogFrame::Error {
                    reason: format!("node {node}: {e}"),
                },
            };
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(ChannelBody(rx).boxed())
        .unwrap_or_else(|_| boxed(error(StatusCode::INTERNAL_SERVER_ERROR, "response")))
}

fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Action, (StatusCode, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let decode = |what: &str| {
        let what = what.to_string();
        move |e: serde_json::Error| (StatusCode::BAD_REQUEST, format!("{what}: {e}"))
    };
    match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "tokens"]) => {
            let t: TokenCreate = if body.is_empty() {
                TokenCreate::default()
            } else {
                serde_json::from_slice(body).map_err(decode("token request"))?
            };
            Ok(Action::CreateToken(t))
        }
        (&Method::GET, ["v1", "tokens"]) => Ok(Action::ListTokens),
        (&Method::DELETE, ["v1", "tokens", id]) => Ok(Action::RemoveToken(id.to_string())),
        (&Method::GET, ["v1", "nodes"]) => Ok(Action::ListNodes),
        (&Method::GET, ["v1", "nodes", id]) => Ok(Action::GetNode(id.to_string())),
        (&Method::POST, ["v1", "nodes", id, "revoke"]) => Ok(Action::RevokeNode(id.to_string())),
        (&Method::PUT, ["v1", "nodes", id, "labels"]) => Ok(Action::LabelNode(
            id.to_string(),
            serde_json::from_slice(body).map_err(decode("labels"))?,
        )),
        (&Method::POST, ["v1", "nodes", id, "drain"]) => {
            Ok(Action::DrainNode(id.to_string(), true))
        }
        (&Method::POST, ["v1", "nodes", id, "activate"]) => {
            Ok(Action::DrainNode(id.to_string(), false))
        }
        (&Method::DELETE, ["v1", "nodes", id]) => {
            let force = match query {
                None | Some("") | Some("force=false") => false,
                Some("force=true") => true,
                Some(q) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("unknown query '{q}' (force=true or force=false)"),
                    ))
                }
            };
            Ok(Action::RemoveNode(id.to_string(), force))
        }
        (&Method::POST, ["v1", "admins"]) => Ok(Action::IssueAdmin(
            serde_json::from_slice(body).map_err(decode("admin request"))?,
        )),
        (&Method::POST, ["v1", "taskdefs"]) => String::from_utf8(body.to_vec())
            .map(Action::RegisterTaskDef)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "task definition: not UTF-8".to_string(),
                )
            }),
        (&Method::GET, ["v1", "taskdefs"]) => Ok(Action::ListTaskDefs),
        (&Method::GET, ["v1", "taskdefs", spec]) => {
            let (f, r) = family_revision(spec)?;
            Ok(Action::GetTaskDef(f, r))
        }
        (&Method::POST, ["v1", "taskdefs", spec, "deregister"]) => match family_revision(spec)? {
            (f, Some(r)) => Ok(Action::DeregisterTaskDef(f, r)),
            (_, None) => Err((
                StatusCode::BAD_REQUEST,
                "deregister names one revision: FAMILY:REVISION".to_string(),
            )),
        },
        (&Method::POST, ["v1", "tasks"]) => Ok(Action::RunTask(
            serde_json::from_slice(body).map_err(decode("task request"))?,
        )),
        (&Method::GET, ["v1", "tasks"]) => Ok(Action::ListTasks),
        (&Method::GET, ["v1", "tasks", id]) => Ok(Action::GetTask(id.to_string())),
        (&Method::POST, ["v1", "services"]) => String::from_utf8(body.to_vec())
            .map(Action::CreateService)
            .map_err(|_| (StatusCode::BAD_REQUEST, "service: not UTF-8".to_string())),
        (&Method::GET, ["v1", "services"]) => Ok(Action::ListServices),
        (&Method::GET, ["v1", "services", name]) => Ok(Action::GetService(name.to_string())),
        (&Method::GET, ["v1", "services", name, "endpoints"]) => {
            Ok(Action::ServiceEndpoints(name.to_string()))
        }
        (&Method::PUT, ["v1", "services", name]) => Ok(Action::UpdateService(
            name.to_string(),
            serde_json::from_slice(body).map_err(decode("service update"))?,
        )),
        (&Method::DELETE, ["v1", "services", name]) => Ok(Action::RemoveService(name.to_string())),
        (&Method::POST, ["v1", "schedules"]) => Ok(Action::CreateSchedule(
            serde_json::from_slice(body).map_err(decode("schedule"))?,
        )),
        (&Method::GET, ["v1", "schedules"]) => Ok(Action::ListSchedules),
        (&Method::GET, ["v1", "schedules", name]) => Ok(Action::GetSchedule(name.to_string())),
        (&Method::DELETE, ["v1", "schedules", name]) => {
            Ok(Action::RemoveSchedule(name.to_string()))
        }
        (&Method::GET, ["v1", "events"]) => {
            let usage = "since=SEQ or limit=1..1000";
            let (mut since, mut limit) = (0, 100);
            for (k, v) in query_pairs(query, usage)? {
                let bad = || bad_query(k, v, usage);
                match k {
                    "since" => since = v.parse().map_err(|_| bad())?,
                    "limit" => {
                        limit = v
                            .parse()
                            .ok()
                            .filter(|l| (1..=1000).contains(l))
                            .ok_or_else(bad)?
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(Action::ListEvents { since, limit })
        }
        (&Method::GET, ["v1", "tasks", id, "logs"]) => {
            let mut req = LogRequest {
                task: id.to_string(),
                container: None,
                follow: false,
                tail: None,
            };
            let usage = "container=NAME, follow=true|false or tail=N";
            for (k, v) in query_pairs(query, usage)? {
                let bad = || bad_query(k, v, usage);
                match k {
                    "container" => req.container = Some(v.to_string()),
                    "follow" => req.follow = v.parse().map_err(|_| bad())?,
                    "tail" => req.tail = Some(v.parse().map_err(|_| bad())?),
                    _ => return Err(bad()),
                }
            }
            Ok(Action::TaskLogs(req))
        }
        (&Method::POST, ["v1", "tasks", id, "stop"]) => Ok(Action::StopTask(id.to_string())),
        _ => Err((StatusCode::NOT_FOUND, format!("no route {method} {path}"))),
    }
}

fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        uses: t.uses,
        used: t.used,
        labels: t.labels.clone(),
    }
}

fn node_info(n: &NodeRecord, connected: &[String], live: crate::agents::LiveInfo) -> NodeInfo {
    let is_connected = connected.contains(&n.id);
    NodeInfo {
        state: if n.revoked {
            flotilla_api::ops::NodeState::Revoked
        } else if !is_connected {
            flotilla_api::ops::NodeState::Disconnected
        } else if n.draining {
            flotilla_api::ops::NodeState::Draining
        } else {
            flotilla_api::ops::NodeState::Ready
        },
        agent_version: live.agent_version,
        last_seen: live.last_seen,
        resources: live.resources,
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        labels: n.labels.clone(),
        joined_at: n.joined_at,
        token_id: n.token_id.clone(),
        cert_not_after: n.cert_not_after,
        revoked: n.revoked,
        draining: n.draining,
        connected: is_connected,
    }
}

fn execute(action: Action, agents: &Arc<Agents>) -> Reply {
    let store = &agents.store;
    let internal = |e: crate::store::StoreError| {
        tracing::error!("operator API: {e}");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    match action {
        Action::CreateToken(req) => {
            for (k, v) in &req.labels {
                if let Err(e) = flotilla_api::parse_label(&format!("{k}={v}")) {
                    return error(StatusCode::BAD_REQUEST, e);
                }
            }
            let ttl = req
                .ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TOKEN_TTL);
            if ttl.is_zero() || ttl > Duration::from_secs(365 * 86_400) {
                return error(StatusCode::BAD_REQUEST, "ttl: between 1 s and 365 days");
            }
            let uses = req.uses.unwrap_or(1);
            if uses == 0 {
                return error(StatusCode::BAD_REQUEST, "uses: at least 1");
            }
            let token = match JoinToken::generate(agents.ca.cert_der()) {
                Ok(t) => t,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let record = TokenRecord {
                id: token.id().to_string(),
                secret_hash: token.secret_hash(),
                created_at: crate::now(),
                expires_at: crate::now() + ttl.as_secs(),
                uses,
                used: 0,
                labels: req.labels,
            };
            if let Err(e) = store.put_token(&record) {
                return internal(e);
            }
            tracing::info!(token = %record.id, uses, ttl_secs = ttl.as_secs(), "join token created");
            agents.event(
                "token.created",
                &record.id,
                format!("{uses} use(s), expires in {} s", ttl.as_secs()),
            );
            json(
                StatusCode::CREATED,
                &TokenCreated {
                    token: token.to_string(),
                    info: token_info(&record),
                },
            )
        }
        Action::ListTokens => match store.tokens() {
            Ok(t) => json(
                StatusCode::OK,
                &t.iter().map(token_info).collect::<Vec<_>>(),
            ),
            Err(e) => internal(e),
        },
        Action::RemoveToken(id) => match store.remove_token(&id) {
            Ok(true) => {
                tracing::info!(token = %id, "join token removed");
                agents.event("token.removed", &id, "revoked by an operator");
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default()
            }
            Ok(false) => error(StatusCode::NOT_FOUND, format!("no token {id}")),
            Err(e) => internal(e),
        },
        Action::ListNodes => match store.nodes() {
            Ok(n) => {
                let c = agents.connected();
                json(
                    StatusCode::OK,
                    &n.iter()
                        .map(|n| node_info(n, &c, agents.live(&n.id)))
                        .collect::<Vec<_>>(),
                )
            }
            Err(e) => internal(e),
        },
        Action::GetNode(id) => match store.node(&id) {
            Ok(Some(n)) => json(
                StatusCode::OK,
                &node_info(&n, &agents.connected(), agents.live(&n.id)),
            ),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no node {id}")),
            Err(e) => internal(e),
        },
        Action::RevokeNode(id) => match agents.revoke(&id) {
            Ok(Some(n)) => json(
                StatusCode::OK,
                &node_info(&n, &agents.connected(), agents.live(&n.id)),
            ),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no node {id}")),
            Err(e) => internal(e),
        },
        Action::LabelNode(id, change) => {
            for (k, v) in &change.set {
                if let Err(e) = flotilla_api::parse_label(&format!("{k}={v}")) {
                    return error(StatusCode::BAD_REQUEST, format!("set: {e}"));
                }
            }
            match store.node(&id) {
                Ok(Some(mut n)) => {
                    n.labels.extend(change.set);
                    for k in &change.remove {
                        n.labels.remove(k);
                    }
                    if let Err(e) = store.put_node(&n) {
                        return internal(e);
                    }
                    tracing::info!(node = %id, labels = ?n.labels, "node labels changed");
                    agents.event("node.labelled", &id, format!("labels now {:?}", n.labels));
                    json(
                        StatusCode::OK,
                        &node_info(&n, &agents.connected(), agents.live(&n.id)),
                    )
                }
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no node {id}")),
                Err(e) => internal(e),
            }
        }
        Action::DrainNode(id, drain) => {
            let mut n = match store.node(&id) {
                Ok(Some(n)) => n,
                Ok(None) => return error(StatusCode::NOT_FOUND, format!("no node {id}")),
                Err(e) => return internal(e),
            };
            n.draining = drain;
            if let Err(e) = store.put_node(&n) {
                return internal(e);
            }
            if drain {
                // Tasks not run by a service have nowhere to go: they are stopped.
                let tasks = match store.tasks() {
                    Ok(t) => t,
                    Err(e) => return internal(e),
                };
                let mut stopped = 0;
                for t in tasks
                    .into_iter()
                    .filter(|t| t.info.node.as_deref() == Some(id.as_str()))
                {
                    match request_stop(store, t, "node drained") {
                        Ok(true) => stopped += 1,
                        Ok(false) => {}
                        Err(e) => return internal(e),
                    }
                }
                if stopped > 0 {
                    if let Err(e) = store.bump_generation(&id) {
                        return internal(e);
                    }
                    agents.clone().push_desired(&id);
                }
                tracing::info!(node = %id, stopped, "node draining");
                agents.event(
                    "node.draining",
                    &id,
                    format!("draining; {stopped} task(s) being stopped"),
                );
            } else {
                tracing::info!(node = %id, "node active");
                agents.event("node.active", &id, "takes tasks again");
            }
            json(
                StatusCode::OK,
                &node_info(&n, &agents.connected(), agents.live(&n.id)),
            )
        }
        Action::RemoveNode(id, force) => {
            let live: Vec<TaskRecord> = match store.tasks() {
                Ok(t) => t
                    .into_iter()
                    .filter(|t| {
                        t.info.node.as_deref() == Some(id.as_str())
                            && t.info.state != TaskState::Stopped
                    })
                    .collect(),
                Err(e) => return internal(e),
            };
            if !live.is_empty() && !force {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "node {id} has {} task(s) not stopped; drain it first, or remove it \
                         with force (its tasks are then recorded STOPPED, whatever the node does)",
                        live.len()
                    ),
                );
            }
            match agents.remove(&id) {
                Ok(true) => {}
                Ok(false) => return error(StatusCode::NOT_FOUND, format!("no node {id}")),
                Err(e) => return internal(e),
            }
            for mut t in live {
                t.info.desired = DesiredStatus::Stopped;
                t.info.state = TaskState::Stopped;
                t.info.stop_reason = Some("node removed".into());
                if let Err(e) = store.put_task(&t) {
                    return internal(e);
                }
            }
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default()
        }
        Action::RegisterTaskDef(text) => match flotilla_api::taskdef::parse(&text) {
            Err(problems) => json(
                StatusCode::BAD_REQUEST,
                &ApiError {
                    error: format!("invalid task definition ({} problems)", problems.len()),
                    problems,
                },
            ),
            Ok(parsed) => match store.register_taskdef(parsed.definition, crate::now()) {
                Ok(rec) => {
                    tracing::info!(family = %rec.family, revision = rec.revision, "task definition registered");
                    agents.event(
                        "taskdef.registered",
                        &format!("{}:{}", rec.family, rec.revision),
                        format!("{} warning(s)", parsed.warnings.len()),
                    );
                    json(
                        StatusCode::CREATED,
                        &TaskDefRegistered {
                            family: rec.family,
                            revision: rec.revision,
                            warnings: parsed.warnings,
                        },
                    )
                }
                Err(e) => internal(e),
            },
        },
        Action::ListTaskDefs => match store.taskdefs() {
            Ok(t) => json(StatusCode::OK, &t),
            Err(e) => internal(e),
        },
        Action::GetTaskDef(family, revision) => match store.taskdef(&family, revision) {
            Ok(Some(t)) => json(StatusCode::OK, &t),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                match revision {
                    Some(r) => format!("no task definition {family}:{r}"),
                    None => format!("no active task definition in family {family}"),
                },
            ),
            Err(e) => internal(e),
        },
        Action::DeregisterTaskDef(family, revision) => {
            match store.deregister_taskdef(&family, revision) {
                Ok(Some(t)) => {
                    tracing::info!(%family, revision, "task definition deregistered");
                    agents.event(
                        "taskdef.deregistered",
                        &format!("{family}:{revision}"),
                        "no new tasks start from it",
                    );
                    json(StatusCode::OK, &t)
                }
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    format!("no task definition {family}:{revision}"),
                ),
                Err(e) => internal(e),
            }
        }
        Action::RunTask(req) => run_tasks(req, agents),
        Action::CreateService(text) => create_service(&text, agents),
        Action::ListServices => match (store.services(), store.tasks()) {
            (Ok(s), Ok(t)) => json(
                StatusCode::OK,
                &s.iter()
                    .map(|s| crate::services::info(s, &t))
                    .collect::<Vec<_>>(),
            ),
            (Err(e), _) | (_, Err(e)) => internal(e),
        },
        Action::GetService(name) => match (store.service(&name), store.tasks()) {
            (Ok(Some(s)), Ok(t)) => json(StatusCode::OK, &crate::services::info(&s, &t)),
            (Ok(None), _) => error(StatusCode::NOT_FOUND, format!("no service {name}")),
            (Err(e), _) | (_, Err(e)) => internal(e),
        },
        Action::ServiceEndpoints(name) => match store.service(&name) {
            Ok(Some(s)) if s.spec.discovery.is_none() => error(
                StatusCode::NOT_FOUND,
                format!("service {name} does not register for discovery (no discovery.namespace)"),
            ),
            Ok(Some(s)) => match crate::discovery::of_service(agents, &s) {
                Ok(Some(d)) => json(StatusCode::OK, &d),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    format!("service {name} has no entry"),
                ),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no service {name}")),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Action::UpdateService(name, update) => update_service(&name, update, agents),
        Action::RemoveService(name) => remove_service(&name, agents),
        Action::CreateSchedule(spec) => create_schedule(spec, agents),
        Action::ListSchedules => match store.schedules() {
            Ok(s) => json(
                StatusCode::OK,
                &s.iter().map(crate::schedules::info).collect::<Vec<_>>(),
            ),
            Err(e) => internal(e),
        },
        Action::GetSchedule(name) => match store.schedule(&name) {
            Ok(Some(s)) => json(StatusCode::OK, &crate::schedules::info(&s)),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no schedule {name}")),
            Err(e) => internal(e),
        },
        Action::RemoveSchedule(name) => match store.schedule(&name) {
            Ok(Some(s)) => {
                if let Err(e) = store.remove_schedule(&name) {
                    return internal(e);
                }
                if let Some(node) = &s.spec.node {
                    if let Err(e) = store.bump_generation(node) {
                        return internal(e);
                    }
                    agents.clone().push_desired(node);
                }
                agents.event(
                    "schedule.deleted",
                    &name,
                    "runs already started keep running",
                );
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default()
            }
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no schedule {name}")),
            Err(e) => internal(e),
        },
        Action::ListEvents { since, limit } => match store.events(since, limit) {
            Ok(e) => json(StatusCode::OK, &e),
            Err(e) => internal(e),
        },
        // Streamed: answered by `task_logs` before `execute`.
        Action::TaskLogs(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "misrouted logs request"),
        Action::ListTasks => match store.tasks() {
            Ok(t) => json(
                StatusCode::OK,
                &t.into_iter()
                    .map(|t| with_usage(t.info, agents))
                    .collect::<Vec<_>>(),
            ),
            Err(e) => internal(e),
        },
        Action::GetTask(id) => match store.task(&id) {
            Ok(Some(t)) => json(StatusCode::OK, &with_usage(t.info, agents)),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no task {id}")),
            Err(e) => internal(e),
        },
        Action::StopTask(id) => match store.task(&id) {
            Ok(Some(t)) => {
                let node = t.info.node.clone();
                match request_stop(store, t, "stopped by an operator") {
                    Ok(true) => {
                        if let Some(node) = &node {
                            if let Err(e) = store.bump_generation(node) {
                                return internal(e);
                            }
                            agents.clone().push_desired(node);
                        }
                        tracing::info!(task = %id, "task stop requested");
                        agents.event("task.stopping", &id, "stop requested by an operator");
                    }
                    Ok(false) => {}
                    Err(e) => return internal(e),
                }
                match store.task(&id) {
                    Ok(Some(t)) => json(StatusCode::OK, &t.info),
                    Ok(None) => error(StatusCode::NOT_FOUND, format!("no task {id}")),
                    Err(e) => internal(e),
                }
            }
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no task {id}")),
            Err(e) => internal(e),
        },
        Action::IssueAdmin(req) => {
            match agents
                .ca
                .issue_admin_from_csr(&req.csr_pem, &req.name, ADMIN_CERT_LIFETIME)
            {
                Ok(cert_pem) => {
                    tracing::info!(name = %req.name, "admin certificate issued");
                    json(
                        StatusCode::CREATED,
                        &AdminCredential {
                            cert_pem,
                            ca_pem: agents.ca.cert_pem().to_string(),
                        },
                    )
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    }
}

/// A task with its running containers' usage from its node's last heartbeat.
fn with_usage(mut t: TaskInfo, agents: &Agents) -> TaskInfo {
    if t.state == TaskState::Stopped {
        return t;
    }
    let Some(node) = &t.node else { return t };
    let live = agents.live(node);
    if let Some(usage) = live.usage.get(&t.id) {
        for c in &mut t.containers {
            if c.state == flotilla_api::tasks::ContainerState::Running {
                c.usage = usage.get(&c.name).cloned();
            }
        }
    }
    t
}

/// Marks a running task to be stopped for `reason` (committed); false when it was already
/// stopping or stopped. The caller bumps its node's generation and pushes.
pub fn request_stop(
    store: &crate::store::Store,
    mut t: TaskRecord,
    reason: &str,
) -> Result<bool, crate::store::StoreError> {
    if t.info.desired != DesiredStatus::Running || t.info.state == TaskState::Stopped {
        return Ok(false);
    }
    t.info.desired = DesiredStatus::Stopped;
    t.info.stop_reason = Some(reason.to_string());
    if t.info.state < TaskState::Stopping {
        t.info.state = TaskState::Stopping;
    }
    store.put_task(&t)?;
    Ok(true)
}

/// Creates tasks and places each on a node: the one asked for, or the connected node with the
/// fewest live tasks (a simple fit; placement proper is the services work).
fn run_tasks(req: TaskRun, agents: &Arc<Agents>) -> Reply {
    let store = &agents.store;
    let fail =
        |e: crate::store::StoreError| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    if req.count == 0 || req.count > 1000 {
        return error(StatusCode::BAD_REQUEST, "count: from 1 to 1000");
    }
    let def = match active_revision(store, &req.task_definition) {
        Ok(d) => d,
        Err((s, m)) => return error(s, m),
    };
    let nodes = match store.nodes() {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if let Some(id) = &req.node {
        match nodes.iter().find(|n| &n.id == id) {
            Some(n) if n.revoked => {
                return error(StatusCode::BAD_REQUEST, format!("node {id} is revoked"))
            }
            Some(n) if n.draining => {
                return error(StatusCode::CONFLICT, format!("node {id} is draining"))
            }
            Some(_) => {}
            None => return error(StatusCode::NOT_FOUND, format!("no node {id}")),
        }
    }
    let tasks = match store.tasks() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let placement = match crate::placement::request(
        &def.task_definition,
        format!("family:{}", def.family),
        req.count as usize,
        &req.placement_constraints,
        &req.placement_strategy,
    ) {
        Ok(p) => p,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let mut snapshot = crate::placement::snapshot(&nodes, &tasks, agents);
    if let Some(id) = &req.node {
        // A node named by the operator takes the task even while disconnected: it gets it
        // with its next session.
        snapshot.nodes.retain(|n| &n.id == id);
        for n in &mut snapshot.nodes {
            if n.state == flotilla_scheduler::NodeState::Disconnected {
                n.state = flotilla_scheduler::NodeState::Ready;
            }
        }
    }
    let placements = match flotilla_scheduler::place(&snapshot, &placement) {
        Ok(p) => p,
        Err(why) => {
            return error(
                StatusCode::CONFLICT,
                format!("{}:{}: {why}", def.family, def.revision),
            )
        }
    };
    match create_tasks(agents, &def, placements, &req.env, None, None) {
        Ok(created) => json(StatusCode::CREATED, &created),
        Err(e) => fail(e),
    }
}

/// The active revision `FAMILY[:REVISION]` names, or the status and message to answer.
fn active_revision(
    store: &crate::store::Store,
    spec: &str,
) -> Result<flotilla_api::ops::TaskDefRevision, (StatusCode, String)> {
    let (family, revision) = family_revision(spec)?;
    match store.taskdef(&family, revision) {
        Ok(Some(d)) if d.status == TaskDefStatus::Active => Ok(d),
        Ok(Some(d)) => Err((
            StatusCode::BAD_REQUEST,
            format!("{}:{} is deregistered", d.family, d.revision),
        )),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no task definition {spec}"))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn create_schedule(mut spec: flotilla_api::schedule::ScheduleSpec, agents: &Arc<Agents>) -> Reply {
    let store = &agents.store;
    if let Err(problems) = flotilla_api::schedule::check(&spec) {
        return json(
            StatusCode::BAD_REQUEST,
            &ApiError {
                error: format!("invalid schedule ({} problems)", problems.len()),
                problems,
            },
        );
    }
    match store.schedule(&spec.name) {
        Ok(Some(_)) => {
            return error(
                StatusCode::CONFLICT,
                format!("schedule {} exists", spec.name),
            )
        }
        Ok(None) => {}
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    if let Some(node) = &spec.node {
        match store.node(node) {
            Ok(Some(n)) if !n.revoked => {}
            Ok(_) => return error(StatusCode::NOT_FOUND, format!("no node {node}")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let revision = match active_revision(store, &spec.task_definition) {
        Ok(r) => r,
        Err((s, m)) => return error(s, m),
    };
    spec.task_definition = format!("{}:{}", revision.family, revision.revision);
    let next_run = if spec.node.is_some() {
        None
    } else {
        crate::schedules::next_run(&spec, crate::now())
    };
    let record = crate::store::ScheduleRecord {
        spec,
        revision,
        next_run,
        runs: Vec::new(),
        created_at: crate::now(),
    };
    let name = record.spec.name.clone();
    agents.event(
        "schedule.created",
        &name,
        format!(
            "{} at '{}' ({}){}",
            record.spec.task_definition,
            record.spec.cron,
            record.spec.timezone,
            record
                .spec
                .node
                .as_deref()
                .map(|n| format!(", fired by node {n}"))
                .unwrap_or_default()
        ),
    );
    if let Err(e) = store.put_schedule(&record) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    if let Some(node) = &record.spec.node {
        if let Err(e) = store.bump_generation(node) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        agents.clone().push_desired(node);
    }
    json(StatusCode::CREATED, &crate::schedules::info(&record))
}

/// Why a service cannot register as `d` with task definition `def`: its name is taken in the
/// namespace, or the container or port it names is not in the definition.
fn discovery_problem(
    store: &crate::store::Store,
    d: &flotilla_api::discovery::Discovery,
    def: &flotilla_api::taskdef::TaskDefinition,
) -> Option<String> {
    let taken = store.services().ok()?.into_iter().find(|s| {
        s.spec
            .discovery
            .as_ref()
            .is_some_and(|o| o.namespace == d.namespace && o.name == d.name)
    });
    if let Some(s) = taken {
        return Some(format!(
            "discovery: {}.{} is already service {}",
            d.name, d.namespace, s.spec.service_name
        ));
    }
    if let Some(c) = &d.container_name {
        if !def.container_definitions.iter().any(|x| &x.name == c) {
            return Some(format!(
                "discovery.containerName: the task definition has no container {c}"
            ));
        }
    }
    None
}

fn create_service(text: &str, agents: &Arc<Agents>) -> Reply {
    let _held = agents
        .services_lock
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let store = &agents.store;
    let parsed = match flotilla_api::service::parse(text) {
        Ok(p) => p,
        Err(problems) => {
            return json(
                StatusCode::BAD_REQUEST,
                &ApiError {
                    error: format!("invalid service ({} problems)", problems.len()),
                    problems,
                },
            )
        }
    };
    let name = parsed.spec.service_name.clone();
    match store.service(&name) {
        Ok(Some(_)) => return error(StatusCode::CONFLICT, format!("service {name} exists")),
        Ok(None) => {}
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let revision = match active_revision(store, &parsed.spec.task_definition) {
        Ok(r) => r,
        Err((s, m)) => return error(s, m),
    };
    if let Some(d) = &parsed.spec.discovery {
        if let Some(p) = discovery_problem(store, d, &revision.task_definition) {
            return error(StatusCode::CONFLICT, p);
        }
    }
    let mut spec = parsed.spec;
    spec.task_definition = format!("{}:{}", revision.family, revision.revision);
    let record = crate::store::ServiceRecord {
        spec,
        deployments: vec![crate::services::new_deployment(revision)],
        last_completed: None,
        placement_problem: None,
        vip: None,
        created_at: crate::now(),
    };
    agents.event(
        "service.created",
        &name,
        format!(
            "{} ({:?})",
            record.spec.task_definition, record.spec.scheduling_strategy
        ),
    );
    if let Err(e) = store.put_service(&record) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    tracing::info!(service = %name, taskdef = %record.spec.task_definition, "service created");
    agents.services_changed.notify_one();
    json(
        StatusCode::CREATED,
        &flotilla_api::service::ServiceCreated {
            service: crate::services::info(&record, &[]),
            warnings: parsed.warnings,
        },
    )
}

fn update_service(name: &str, update: ServiceUpdate, agents: &Arc<Agents>) -> Reply {
    let _held = agents
        .services_lock
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let store = &agents.store;
    let mut s = match store.service(name) {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no service {name}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Some(n) = update.desired_count {
        if s.spec.scheduling_strategy == flotilla_api::service::SchedulingStrategy::Daemon {
            return error(
                StatusCode::BAD_REQUEST,
                "desiredCount: a DAEMON service runs one task per eligible node",
            );
        }
        if n > 10_000 {
            return error(StatusCode::BAD_REQUEST, "desiredCount: at most 10000");
        }
        s.spec.desired_count = n;
        agents.event("service.scaled", name, format!("desired count {n}"));
    }
    let revision = match &update.task_definition {
        Some(t) => match active_revision(store, t) {
            Ok(r) => Some(r),
            Err((s, m)) => return error(s, m),
        },
        None if update.force_new_deployment => s
            .deployments
            .iter()
            .find(|d| d.primary)
            .map(|d| d.revision.clone()),
        None => None,
    };
    if let Some(r) = revision {
        for d in &mut s.deployments {
            d.primary = false;
        }
        let d = crate::services::new_deployment(r);
        s.spec.task_definition = format!("{}:{}", d.revision.family, d.revision.revision);
        agents.event(
            "service.deployment.started",
            name,
            format!("deployment {} of {}", d.id, s.spec.task_definition),
        );
        s.deployments.push(d);
    }
    if let Err(e) = store.put_service(&s) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    agents.services_changed.notify_one();
    match store.tasks() {
        Ok(t) => json(StatusCode::OK, &crate::services::info(&s, &t)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn remove_service(name: &str, agents: &Arc<Agents>) -> Reply {
    let _held = agents
        .services_lock
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let store = &agents.store;
    let tasks = match store.tasks() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match store.remove_service(name) {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, format!("no service {name}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let by = crate::services::started_by(name);
    let mut touched = std::collections::BTreeSet::new();
    for t in tasks
        .into_iter()
        .filter(|t| t.info.started_by.as_deref() == Some(by.as_str()))
    {
        let node = t.info.node.clone();
        match request_stop(store, t, flotilla_scheduler::service::REASON_DELETED) {
            Ok(true) => {
                if let Some(n) = node {
                    touched.insert(n);
                }
            }
            Ok(false) => {}
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    for n in touched {
        if let Err(e) = store.bump_generation(&n) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        agents.clone().push_desired(&n);
    }
    agents.event("service.deleted", name, "its tasks are being stopped");
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// Creates a task of `def` on each of `nodes` (committed, with an event each), then bumps and
/// pushes the desired state of every node touched.
pub fn create_tasks(
    agents: &Arc<Agents>,
    def: &flotilla_api::ops::TaskDefRevision,
    nodes: Vec<String>,
    env: &[flotilla_api::taskdef::KeyValue],
    started_by: Option<String>,
    deployment: Option<String>,
) -> Result<Vec<TaskInfo>, crate::store::StoreError> {
    let store = &agents.store;
    let mut created = Vec::new();
    let mut touched = std::collections::BTreeSet::new();
    let awsvpc = def.task_definition.network_mode == flotilla_api::taskdef::NetworkMode::Awsvpc;
    // Held until the tasks holding the addresses are stored.
    let mut last_address = agents.network.begin();
    for node in nodes {
        let address = if awsvpc {
            match agents.network.awsvpc_address(store, &mut last_address)? {
                Ok(a) => Some(a),
                Err(why) => {
                    // Its node reports it as failed to start, with this reason.
                    tracing::warn!(taskdef = %def.family, "{why}");
                    None
                }
            }
        } else {
            None
        };
        let id = format!(
            "t-{}",
            &flotilla_certs::new_node_id()
                .map_err(|e| crate::store::StoreError::Db(e.to_string()))?[2..]
        );
        let rec = TaskRecord {
            info: TaskInfo {
                id,
                task_definition: format!("{}:{}", def.family, def.revision),
                node: Some(node.clone()),
                desired: DesiredStatus::Running,
                state: TaskState::Pending,
                stop_reason: None,
                stop_code: None,
                containers: Vec::new(),
                created_at: crate::now(),
                started_by: started_by.clone(),
                deployment: deployment.clone(),
                network: None,
            },
            definition: def.task_definition.clone(),
            env: env.to_vec(),
            lost_at: None,
            address,
        };
        agents.event(
            "task.placed",
            &rec.info.id,
            format!(
                "{} on {node}{}",
                rec.info.task_definition,
                started_by
                    .as_deref()
                    .map(|s| format!(" for {s}"))
                    .unwrap_or_default()
            ),
        );
        store.put_task(&rec)?;
        tracing::info!(task = %rec.info.id, node = %node, taskdef = %rec.info.task_definition, "task placed");
        touched.insert(node);
        created.push(rec.info);
    }
    drop(last_address);
    for node in touched {
        store.bump_generation(&node)?;
        agents.clone().push_desired(&node);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (METHOD, path template) of every operation in `api/openapi.yaml`.
    fn documented() -> Vec<(Method, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("api/openapi.yaml");
        let doc: serde_json::Value = yaml_serde::from_str(&text).expect("yaml");
        let mut out = Vec::new();
        for (p, item) in doc["paths"].as_object().expect("paths") {
            for m in item.as_object().expect("item").keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&m.as_str()) {
                    let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
                    out.push((method, p.clone()));
                }
            }
        }
        out
    }

    fn routes(method: &Method, template: &str) -> bool {
        let path = template
            .replace("{id}", "x-1")
            .replace("{taskdef}", "fam:1")
            .replace("{name}", "svc");
        !matches!(parse(method, &path, None, b"{}"), Err((StatusCode::NOT_FOUND, m)) if m.starts_with("no route"))
    }

    #[test]
    fn the_router_serves_exactly_the_documented_operations() {
        let ops = documented();
        assert!(ops.len() >= 20, "{ops:?}");
        for (m, p) in &ops {
            assert!(routes(m, p), "{m} {p} is documented but not routed");
        }
        // On every documented path, no other method is served.
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ];
        for (_, p) in &ops {
            for m in &methods {
                if !ops.iter().any(|(om, op)| om == m && op == p) {
                    assert!(!routes(m, p), "{m} {p} is routed but not documented");
                }
            }
        }
    }
}
