//! The operator API's adapter: HTTPS (HTTP/1.1 over TLS 1.3) with JSON bodies, for admin
//! client certificates only. A request is parsed into an [`Operator`] command (and nothing
//! else happens here), the core executes it, and its reply or refusal becomes the response.
//! Only task logs are more: they stream from the task's node over its session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::exec::{self as exec_wire, ExecFrame, ExecRequest};
use flotilla_api::ops::{ApiError, TokenCreate};
use flotilla_api::{read_frame, write_frame, LogFrame, LogRequest, ServerPush};
use flotilla_certs::{identity_of, Role};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::{http1, HEADER_TIMEOUT};
use crate::plane::Plane;

mod images;
mod prefetch;
use flotilla_api::page::{percent_decoded, NodeQuery, TaskQuery};
use flotilla_api::page::{
    NodeCursor, TaskCursor, MAX_RESULTS, MAX_RESULTS_PARAM, NEXT_TOKEN_PARAM,
};
use orchestratord::cluster::{ClusterError, Command, Operator, Reply as CoreReply};

/// Largest request body accepted: room for a secret's largest value
/// ([`flotilla_api::secrets::MAX_VALUE`]) in base64, in JSON.
const MAX_BODY: usize = 128 * 1024;

/// Largest body of `PUT /v1/projects/{name}`: a project carries every service's task
/// definition and service in one body (up to [`flotilla_api::project::MAX_SERVICES`]); a
/// real definition with its environment is a few KiB, so 20 services can pass
/// [`MAX_BODY`]. `compose up` checks the same bound before it applies anything.
const MAX_PROJECT_BODY: usize = flotilla_api::project::MAX_APPLY_BYTES;

/// The body limit of a request: [`MAX_PROJECT_BODY`] for a project's apply, [`MAX_BODY`]
/// for everything else.
fn body_limit(method: &Method, path: &str) -> usize {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::PUT, ["v1", "projects", _]) => MAX_PROJECT_BODY,
        _ => MAX_BODY,
    }
}

/// The `key=value` pairs of a query ([`flotilla_api::page::query_pairs`]); a pair without `=`
/// or with a broken escape is refused, naming `usage`.
fn query_pairs(
    query: Option<&str>,
    usage: &str,
) -> Result<Vec<(String, String)>, (StatusCode, String)> {
    flotilla_api::page::query_pairs(query.unwrap_or_default())
        .map_err(|(k, v)| bad_query(&k, &v, usage))
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
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, plane: Plane) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin and flood the log.
                tracing::warn!("operator API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let plane = plane.clone();
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
                let plane = plane.clone();
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &plane, admin).await) }
            });
            if let Err(e) = http1(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, "operator connection: {e}");
            }
        });
    }
}

/// One request, its latency observed by route template and status code.
async fn handle(req: Request<Incoming>, plane: &Plane, admin: Option<String>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = answer(req, plane, admin).await;
    plane
        .metrics
        .api_request(&method, &path, response.status(), started.elapsed());
    response
}

async fn answer(
    mut req: Request<Incoming>,
    plane: &Plane,
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
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let upgrade_to = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if method == Method::POST && path.trim_matches('/') == "v1/images" {
        // An archive of up to gigabytes: streamed to disk, never collected in memory.
        tracing::info!(%admin, %method, %path, "operator request");
        return images::push(req.into_body(), query.as_deref(), plane)
            .await
            .map(BodyExt::boxed);
    }
    // Taken before the body is read; only an exec uses it.
    let upgrade = hyper::upgrade::on(&mut req);
    let limit = body_limit(&method, &path);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))
                .map(BodyExt::boxed)
        }
    };
    let request = match parse(&method, &path, query.as_deref(), &body) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg).map(BodyExt::boxed),
    };
    tracing::info!(%admin, %method, %path, "operator request");
    match request {
        Request_::Logs(req) => task_logs(req, plane).await,
        Request_::Prefetch(req) => prefetch::prefetch(req, plane).await,
        Request_::PullImage(req) => images::pull(req, plane).await.map(BodyExt::boxed),
        Request_::PushImage => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an image push is read as it streams",
        )
        .map(BodyExt::boxed),
        Request_::RemoveImage(name) => images::remove(name, plane).await.map(BodyExt::boxed),
        Request_::Exec(mut req) => {
            req.admin = admin;
            exec(req, upgrade_to.as_deref(), upgrade, plane)
                .await
                .map(BodyExt::boxed)
        }
        Request_::Metrics => match crate::scrape::scrape(plane, accept.as_deref()).await {
            Ok(answer) => flotilla_metrics::response(Ok(answer)),
            Err((status, why)) => error(status, why),
        }
        .map(BodyExt::boxed),
        Request_::Core(op) => match plane.run(Command::Operator(op)).await {
            Ok(reply) => respond_to(reply, &path, query.as_deref()),
            Err(e) => refusal(&e),
        }
        .map(BodyExt::boxed),
    }
}

/// A parsed request: a command for the core, or a log stream.
#[derive(Debug)]
enum Request_ {
    Core(Operator),
    Logs(LogRequest),
    /// `POST /v1/images`: an archive streamed into the content store (answered before the
    /// body is read, see [`answer`]).
    PushImage,
    /// `DELETE /v1/images/{name}`: the reference, then the blobs no image has.
    RemoveImage(String),
    /// `POST /v1/images/prefetch`: a stream of the nodes' pulls.
    Prefetch(flotilla_api::images::PrefetchRequest),
    /// `POST /v1/images/pull`: the control plane pulls an image into its content store.
    PullImage(flotilla_api::images::ImagePullRequest),
    /// `POST /v1/tasks/{id}/exec`: an upgrade to a command's streams.
    Exec(ExecRequest),
    /// `GET /v1/metrics`: the metrics listener's scrape, over TLS.
    Metrics,
}

/// The HTTP status of a refusal.
fn status_of(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::NotFound(_) => StatusCode::NOT_FOUND,
        ClusterError::Conflict(_) => StatusCode::CONFLICT,
        ClusterError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ClusterError::Store(_) | ClusterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn refusal(e: &ClusterError) -> Reply {
    let status = status_of(e);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("operator API: {e}");
    }
    let problems = match e {
        ClusterError::Invalid { problems, .. } => problems.clone(),
        _ => Vec::new(),
    };
    json(
        status,
        &ApiError {
            error: e.to_string(),
            problems,
        },
    )
}

/// The response of a reply to a request of `path` and `query`: a listing's page that has
/// more after it gets a `Link: <…>; rel="next"` header (RFC 8288) to the next page.
fn respond_to(reply: CoreReply, path: &str, query: Option<&str>) -> Reply {
    let token = match &reply {
        CoreReply::Tasks(p) => p.next.as_ref().map(TaskCursor::token),
        CoreReply::Nodes(p) => p.next.as_ref().map(NodeCursor::token),
        _ => None,
    };
    let mut r = respond(reply);
    if let Some(token) = token {
        match hyper::header::HeaderValue::from_str(&next_link(path, query, &token)) {
            Ok(v) => {
                r.headers_mut().insert(hyper::header::LINK, v);
            }
            Err(e) => tracing::error!(%path, "the next page's link: {e}"),
        }
    }
    r
}

/// `<PATH?QUERY&nextToken=TOKEN>; rel="next"`: the request's own query (its filter and
/// `maxResults`, in its order, percent-encoded anew) with the next page's token in place of
/// its own. The target is relative to the request's (RFC 8288 §3.1, RFC 3986 §4.2).
fn next_link(path: &str, query: Option<&str>, token: &str) -> String {
    let mut target = path.to_string();
    let pairs = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter_map(|(k, v)| Some((percent_decoded(k)?, percent_decoded(v)?)))
        .filter(|(k, _)| k != NEXT_TOKEN_PARAM)
        .chain(std::iter::once((
            NEXT_TOKEN_PARAM.to_string(),
            token.to_string(),
        )));
    for (i, (k, v)) in pairs.enumerate() {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(&percent_encoded(&k));
        target.push('=');
        target.push_str(&percent_encoded(&v));
    }
    format!("<{target}>; rel=\"next\"")
}

/// `text` with every byte but RFC 3986's unreserved ones percent-encoded.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A listing's `maxResults` (1 to [`MAX_RESULTS`]) or `nextToken`, when `key` is one: `Ok(true)`
/// once taken.
fn page_param(
    key: &str,
    value: &str,
    max: &mut Option<usize>,
    token: &mut Option<String>,
) -> Result<bool, (StatusCode, String)> {
    match key {
        MAX_RESULTS_PARAM => {
            let n = value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_RESULTS).contains(n))
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!(
                            "query '{key}={value}': {MAX_RESULTS_PARAM} takes a number of \
                             items from 1 to {MAX_RESULTS}"
                        ),
                    )
                })?;
            *max = usize::try_from(n).ok();
            Ok(true)
        }
        NEXT_TOKEN_PARAM => {
            *token = Some(value.to_string());
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The `key=value` pairs of a listing's query, each key at most once but those in `repeatable`.
fn listing_pairs(
    query: Option<&str>,
    usage: &str,
    repeatable: &[&str],
) -> Result<Vec<(String, String)>, (StatusCode, String)> {
    let pairs = query_pairs(query, usage)?;
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in &pairs {
        if !seen.insert(k.as_str()) && !repeatable.contains(&k.as_str()) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("query: {k} is given more than once"),
            ));
        }
    }
    Ok(pairs)
}

/// `GET /v1/tasks`' query: its filter (`node`, `service`, `family`, `startedBy`, `state`,
/// `desiredStatus`) and page (`maxResults`, `nextToken`).
fn task_query(query: Option<&str>) -> Result<TaskQuery, (StatusCode, String)> {
    let usage = "node=ID, service=NAME, family=FAMILY, startedBy=TEXT, \
                 state=PROVISIONING|PENDING|RUNNING|STOPPING|STOPPED, \
                 desiredStatus=RUNNING|STOPPED, maxResults=1..1000 or nextToken=TOKEN";
    let mut q = TaskQuery::default();
    let mut token = None;
    for (k, v) in listing_pairs(query, usage, &[])? {
        if page_param(&k, &v, &mut q.max, &mut token)? {
            continue;
        }
        let bad = |why: &str| (StatusCode::BAD_REQUEST, format!("query '{k}={v}': {why}"));
        let f = &mut q.filter;
        match k.as_str() {
            "node" | "service" | "family" | "startedBy" | "state" | "desiredStatus"
                if v.is_empty() =>
            {
                return Err(bad(&format!(
                    "{k} names what to list; leave it out for all"
                )))
            }
            "node" => f.node = Some(v),
            "service" => f.service = Some(v),
            "family" if v.contains(':') => {
                return Err(bad("family takes a family name, without a revision"))
            }
            "family" => f.family = Some(v),
            "startedBy" => f.started_by = Some(v),
            "state" => {
                f.state = Some(flotilla_api::page::task_state(&v).ok_or_else(|| {
                    bad("state is PROVISIONING, PENDING, RUNNING, STOPPING or STOPPED")
                })?)
            }
            "desiredStatus" => {
                f.desired_status = Some(
                    flotilla_api::page::desired_status(&v)
                        .ok_or_else(|| bad("desiredStatus is RUNNING or STOPPED"))?,
                )
            }
            _ => return Err(bad_query(&k, &v, usage)),
        }
    }
    q.after = token
        .map(|t| TaskCursor::parse(&t))
        .transpose()
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(q)
}

/// `GET /v1/nodes`' query: its filter (`status`, `label`, repeatable) and page (`maxResults`,
/// `nextToken`).
fn node_query(query: Option<&str>) -> Result<NodeQuery, (StatusCode, String)> {
    let usage = "status=READY|DRAINING|DISCONNECTED|REVOKED, label=KEY or label=KEY=VALUE \
                 (repeatable), maxResults=1..1000 or nextToken=TOKEN";
    let mut q = NodeQuery::default();
    let mut token = None;
    for (k, v) in listing_pairs(query, usage, &["label"])? {
        if page_param(&k, &v, &mut q.max, &mut token)? {
            continue;
        }
        let bad = |why: &str| (StatusCode::BAD_REQUEST, format!("query '{k}={v}': {why}"));
        match k.as_str() {
            "status" => {
                q.filter.status = Some(
                    flotilla_api::page::node_state(&v)
                        .ok_or_else(|| bad("status is READY, DRAINING, DISCONNECTED or REVOKED"))?,
                )
            }
            "label" => {
                let (key, value) = match v.split_once('=') {
                    Some((key, value)) => (key, Some(value.to_string())),
                    None => (v.as_str(), None),
                };
                if key.is_empty() {
                    return Err(bad("label is KEY or KEY=VALUE"));
                }
                q.filter.labels.push((key.to_string(), value));
            }
            _ => return Err(bad_query(&k, &v, usage)),
        }
    }
    q.after = token
        .map(|t| NodeCursor::parse(&t))
        .transpose()
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(q)
}

/// The response of a reply.
fn respond(reply: CoreReply) -> Reply {
    use StatusCode as S;
    match reply {
        CoreReply::Done => Response::builder()
            .status(S::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default(),
        CoreReply::TokenCreated(t) => json(S::CREATED, &t),
        CoreReply::Tokens(t) => json(S::OK, &t),
        CoreReply::Nodes(n) => json(S::OK, &n.items),
        CoreReply::Node(n) => json(S::OK, &n),
        CoreReply::AdminCredential(c) => json(S::CREATED, &c),
        CoreReply::TaskDefRegistered(t) => json(S::CREATED, &t),
        CoreReply::TaskDefs(t) => json(S::OK, &t),
        CoreReply::TaskDef(t) => json(S::OK, &t),
        CoreReply::TasksCreated(t) => json(S::CREATED, &t),
        CoreReply::Tasks(t) => json(S::OK, &t.items),
        CoreReply::Task(t) => json(S::OK, &t),
        CoreReply::Events(e) => json(S::OK, &e),
        CoreReply::ImagesPushed(i) => json(S::CREATED, &i),
        CoreReply::Images(i) => json(S::OK, &i),
        CoreReply::Image(i) => json(S::OK, &i),
        CoreReply::ServiceCreated(s) => json(S::CREATED, &s),
        CoreReply::Services(s) => json(S::OK, &s),
        CoreReply::Service(s) => json(S::OK, &s),
        CoreReply::Endpoints(d) => json(S::OK, &d),
        CoreReply::ScheduleCreated(s) => json(S::CREATED, &s),
        CoreReply::Schedules(s) => json(S::OK, &s),
        CoreReply::Schedule(s) => json(S::OK, &s),
        CoreReply::Scaling(s) => json(S::OK, &s),
        CoreReply::ScalingPut(s) => json(S::OK, &s),
        CoreReply::SecretCreated(s) => json(S::CREATED, &s),
        CoreReply::Secret(s) => json(S::OK, &s),
        CoreReply::Secrets(s) => json(S::OK, &s),
        CoreReply::ProjectApplied(p) => json(S::OK, &p),
        CoreReply::Projects(p) => json(S::OK, &p),
        CoreReply::Project(p) => json(S::OK, &p),
        other => error(
            S::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
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
async fn task_logs(req: LogRequest, plane: &Plane) -> Response<Body> {
    let boxed = |r: Reply| r.map(BodyExt::boxed);
    let source = plane
        .run(Command::Operator(Operator::LogSource(req.task.clone())))
        .await;
    let node = match source {
        Ok(CoreReply::LogSource { node, .. }) => node,
        Ok(other) => return boxed(respond(other)),
        Err(e) => return boxed(refusal(&e)),
    };
    let Some(conn) = plane.sessions.get(&node) else {
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

/// `POST /v1/tasks/{id}/exec`: asks the task's node over its session to run the command and,
/// once it has started, switches the connection to its [`ExecFrame`]s (see
/// [`flotilla_api::exec`]), passed through both ways unchanged until either side ends.
async fn exec(
    req: ExecRequest,
    upgrade_to: Option<&str>,
    upgrade: hyper::upgrade::OnUpgrade,
    plane: &Plane,
) -> Reply {
    if !upgrade_to.is_some_and(|u| u.eq_ignore_ascii_case(exec_wire::UPGRADE)) {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "exec switches the connection to its streams: send `Connection: upgrade` and \
                 `Upgrade: {}` (`flotilla exec` does)",
                exec_wire::UPGRADE
            ),
        );
        r.headers_mut().insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static(exec_wire::UPGRADE),
        );
        return r;
    }
    let problems = req.problems();
    if !problems.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &ApiError {
                error: format!("exec in task {}: invalid request", req.task),
                problems,
            },
        );
    }
    let target = plane
        .run(Command::Operator(Operator::Exec {
            task: req.task.clone(),
            container: req.container.clone(),
            command: req.shown(),
            admin: req.admin.clone(),
        }))
        .await;
    let mut req = req;
    let node = match target {
        Ok(CoreReply::ExecTarget { node, container }) => {
            // The node runs it in the container the event names.
            req.container = Some(container);
            node
        }
        Ok(other) => return respond(other),
        Err(e) => return refusal(&e),
    };
    let Some(conn) = plane.sessions.get(&node) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} is not connected; exec runs through its session"),
        );
    };
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &ServerPush::Exec(req))
            .await
            .map_err(|e| e.to_string())?;
        let first = tokio::time::timeout(Duration::from_secs(10), exec_wire::read(&mut recv))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, first))
    };
    let (send, recv, first) = match opened.await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("node {node}: {e}")),
    };
    let started = match first {
        Some(f @ ExecFrame::Started(_)) => f,
        Some(ExecFrame::Error(why)) => {
            return error(StatusCode::CONFLICT, format!("node {node}: {why}"))
        }
        other => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("node {node}: unexpected answer {other:?}"),
            )
        }
    };
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(%node, "exec upgrade: {e}"),
        };
        let mut operator = hyper_util::rt::TokioIo::new(upgraded);
        // The node's first frame, then everything as it comes, both ways.
        if let Err(e) = exec_wire::write(&mut operator, &started).await {
            return tracing::debug!(%node, "exec: {e}");
        }
        let mut node_side = tokio::io::join(recv, send);
        if let Err(e) = tokio::io::copy_bidirectional(&mut operator, &mut node_side).await {
            tracing::debug!(%node, "exec stream: {e}");
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    r.headers_mut().insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(exec_wire::UPGRADE),
    );
    r
}

/// `POST /v1/tasks/{id}/exec`'s query: `command` (repeated, in order), `container`, `tty`,
/// `stdin`, `rows` and `cols`.
fn exec_request(task: &str, query: Option<&str>) -> Result<ExecRequest, (StatusCode, String)> {
    let mut req = ExecRequest {
        task: task.to_string(),
        container: None,
        command: Vec::new(),
        tty: false,
        stdin: false,
        size: None,
        admin: String::new(),
    };
    let usage = "command=ARG (repeated), container=NAME, tty=true|false, stdin=true|false, \
                 rows=N and cols=N";
    let (mut rows, mut cols) = (None, None);
    for (k, v) in query_pairs(query, usage)? {
        let (k, v) = (k.as_str(), v.as_str());
        let bad = || bad_query(k, v, usage);
        match k {
            "command" => req.command.push(v.to_string()),
            "container" => req.container = Some(v.to_string()),
            "tty" => req.tty = v.parse().map_err(|_| bad())?,
            "stdin" => req.stdin = v.parse().map_err(|_| bad())?,
            "rows" => rows = Some(v.parse::<u16>().map_err(|_| bad())?),
            "cols" => cols = Some(v.parse::<u16>().map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    req.size = match (rows, cols) {
        (Some(rows), Some(cols)) => Some(exec_wire::WindowSize { rows, cols }),
        (None, None) => None,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                "rows and cols go together".to_string(),
            ))
        }
    };
    Ok(req)
}

fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Request_, (StatusCode, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "tasks", id, "logs"]) => {
            let mut req = LogRequest {
                task: id.to_string(),
                container: None,
                follow: false,
                tail: None,
            };
            let usage = "container=NAME, follow=true|false or tail=N";
            for (k, v) in query_pairs(query, usage)? {
                let (k, v) = (k.as_str(), v.as_str());
                let bad = || bad_query(k, v, usage);
                match k {
                    "container" => req.container = Some(v.to_string()),
                    "follow" => req.follow = v.parse().map_err(|_| bad())?,
                    "tail" => req.tail = Some(v.parse().map_err(|_| bad())?),
                    _ => return Err(bad()),
                }
            }
            Ok(Request_::Logs(req))
        }
        (&Method::POST, ["v1", "tasks", id, "exec"]) => exec_request(id, query).map(Request_::Exec),
        (&Method::GET, ["v1", "metrics"]) => Ok(Request_::Metrics),
        (&Method::POST, ["v1", "images"]) => Ok(Request_::PushImage),
        (&Method::DELETE, ["v1", "images", name]) if !matches!(*name, "prefetch" | "pull") => {
            image_reference(name).map(Request_::RemoveImage)
        }
        (&Method::POST, ["v1", "images", "prefetch"]) => serde_json::from_slice(body)
            .map(Request_::Prefetch)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("prefetch request: {e}"))),
        (&Method::POST, ["v1", "images", "pull"]) => serde_json::from_slice(body)
            .map(Request_::PullImage)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("pull request: {e}"))),
        _ => parse_operator(method, path, query, body).map(Request_::Core),
    }
}

/// The image reference in a path segment (percent-encoded, as its `/` and `:` must be), as
/// given: the core looks it up under `ImageRef::lookup_names` (`busybox` is
/// `docker.io/library/busybox:latest`, else `localhost/busybox:latest`).
fn image_reference(segment: &str) -> Result<String, (StatusCode, String)> {
    let reference = percent_decoded(segment).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("image '{segment}': a broken percent-encoding"),
        )
    })?;
    flotilla_oci::ImageRef::parse(&reference)
        .map(|_| reference)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

/// A body that is a document's text (JSON or YAML).
fn text(body: &[u8], what: &str) -> Result<String, (StatusCode, String)> {
    String::from_utf8(body.to_vec())
        .map_err(|_| (StatusCode::BAD_REQUEST, format!("{what}: not UTF-8")))
}

/// `?force=true` (or `false`, or nothing) of a removal.
fn force(query: Option<&str>) -> Result<bool, (StatusCode, String)> {
    match query {
        None | Some("") | Some("force=false") => Ok(false),
        Some("force=true") => Ok(true),
        Some(q) => Err((
            StatusCode::BAD_REQUEST,
            format!("unknown query '{q}' (force=true or force=false)"),
        )),
    }
}

/// A request for the core.
fn parse_operator(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Operator, (StatusCode, String)> {
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
            Ok(Operator::CreateToken(t))
        }
        (&Method::GET, ["v1", "tokens"]) => Ok(Operator::ListTokens),
        (&Method::GET, ["v1", "images"]) => Ok(Operator::ListImages),
        (&Method::GET, ["v1", "images", name]) if !matches!(*name, "prefetch" | "pull") => {
            image_reference(name).map(Operator::GetImage)
        }
        (&Method::DELETE, ["v1", "tokens", id]) => Ok(Operator::RemoveToken(id.to_string())),
        (&Method::GET, ["v1", "nodes"]) => node_query(query).map(Operator::ListNodes),
        (&Method::GET, ["v1", "nodes", id]) => Ok(Operator::GetNode(id.to_string())),
        (&Method::POST, ["v1", "nodes", id, "revoke"]) => Ok(Operator::RevokeNode(id.to_string())),
        (&Method::PUT, ["v1", "nodes", id, "labels"]) => Ok(Operator::LabelNode(
            id.to_string(),
            serde_json::from_slice(body).map_err(decode("labels"))?,
        )),
        (&Method::POST, ["v1", "nodes", id, "drain"]) => {
            Ok(Operator::DrainNode(id.to_string(), true))
        }
        (&Method::POST, ["v1", "nodes", id, "activate"]) => {
            Ok(Operator::DrainNode(id.to_string(), false))
        }
        (&Method::DELETE, ["v1", "nodes", id]) => {
            let force = force(query)?;
            Ok(Operator::RemoveNode(id.to_string(), force))
        }
        (&Method::POST, ["v1", "admins"]) => Ok(Operator::IssueAdmin(
            serde_json::from_slice(body).map_err(decode("admin request"))?,
        )),
        (&Method::POST, ["v1", "taskdefs"]) => String::from_utf8(body.to_vec())
            .map(Operator::RegisterTaskDef)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "task definition: not UTF-8".to_string(),
                )
            }),
        (&Method::GET, ["v1", "taskdefs"]) => Ok(Operator::ListTaskDefs),
        // A secret's body is never echoed in an error (serde's messages quote what they read).
        (&Method::POST, ["v1", "secrets"]) => serde_json::from_slice(body)
            .map(Operator::CreateSecret)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "secret: expected {\"name\": NAME, \"value\": BASE64}".to_string(),
                )
            }),
        (&Method::GET, ["v1", "secrets"]) => Ok(Operator::ListSecrets),
        (&Method::GET, ["v1", "secrets", name]) => Ok(Operator::GetSecret(name.to_string())),
        (&Method::POST, ["v1", "secrets", name, "versions"]) => {
            serde_json::from_slice::<flotilla_api::secrets::SecretPut>(body)
                .map(|put| Operator::RotateSecret(name.to_string(), put.value))
                .map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        "secret version: expected {\"value\": BASE64}".to_string(),
                    )
                })
        }
        (&Method::POST, ["v1", "configs"]) => serde_json::from_slice(body)
            .map(Operator::CreateConfig)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "config: expected {\"name\": NAME, \"value\": BASE64}".to_string(),
                )
            }),
        (&Method::GET, ["v1", "configs"]) => Ok(Operator::ListConfigs),
        (&Method::GET, ["v1", "configs", name]) => Ok(Operator::GetConfig(name.to_string())),
        (&Method::POST, ["v1", "configs", name, "versions"]) => {
            serde_json::from_slice::<flotilla_api::secrets::SecretPut>(body)
                .map(|put| Operator::UpdateConfig(name.to_string(), put.value))
                .map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        "config version: expected {\"value\": BASE64}".to_string(),
                    )
                })
        }
        (&Method::DELETE, ["v1", "configs", name]) => {
            Ok(Operator::RemoveConfig(name.to_string(), force(query)?))
        }
        (&Method::DELETE, ["v1", "secrets", name]) => {
            let force = force(query)?;
            Ok(Operator::RemoveSecret(name.to_string(), force))
        }
        (&Method::GET, ["v1", "taskdefs", spec]) => {
            let (f, r) = family_revision(spec)?;
            Ok(Operator::GetTaskDef(f, r))
        }
        (&Method::POST, ["v1", "taskdefs", spec, "deregister"]) => match family_revision(spec)? {
            (f, Some(r)) => Ok(Operator::DeregisterTaskDef(f, r)),
            (_, None) => Err((
                StatusCode::BAD_REQUEST,
                "deregister names one revision: FAMILY:REVISION".to_string(),
            )),
        },
        (&Method::POST, ["v1", "tasks"]) => Ok(Operator::RunTask(
            serde_json::from_slice(body).map_err(decode("task request"))?,
        )),
        (&Method::GET, ["v1", "tasks"]) => task_query(query).map(Operator::ListTasks),
        (&Method::GET, ["v1", "tasks", id]) => Ok(Operator::GetTask(id.to_string())),
        (&Method::POST, ["v1", "services"]) => String::from_utf8(body.to_vec())
            .map(Operator::CreateService)
            .map_err(|_| (StatusCode::BAD_REQUEST, "service: not UTF-8".to_string())),
        (&Method::GET, ["v1", "services"]) => Ok(Operator::ListServices),
        (&Method::GET, ["v1", "services", name]) => Ok(Operator::GetService(name.to_string())),
        (&Method::GET, ["v1", "services", name, "endpoints"]) => {
            Ok(Operator::ServiceEndpoints(name.to_string()))
        }
        (&Method::PUT, ["v1", "services", name]) => Ok(Operator::UpdateService(
            name.to_string(),
            serde_json::from_slice(body).map_err(decode("service update"))?,
        )),
        (&Method::DELETE, ["v1", "services", name]) => {
            Ok(Operator::RemoveService(name.to_string()))
        }
        (&Method::GET, ["v1", "services", name, "scaling"]) => {
            Ok(Operator::GetScaling(name.to_string()))
        }
        (&Method::PUT, ["v1", "services", name, "scaling"]) => Ok(Operator::Autoscale(
            name.to_string(),
            text(body, "scalable target")?,
        )),
        (&Method::DELETE, ["v1", "services", name, "scaling"]) => {
            Ok(Operator::DeregisterScaling(name.to_string()))
        }
        (&Method::POST, ["v1", "services", name, "scaling", "policies"]) => Ok(
            Operator::PutScalingPolicy(name.to_string(), text(body, "scaling policy")?),
        ),
        (&Method::DELETE, ["v1", "services", name, "scaling", "policies", policy]) => Ok(
            Operator::RemoveScalingPolicy(name.to_string(), policy.to_string()),
        ),
        (&Method::POST, ["v1", "services", name, "scaling", "scheduled-actions"]) => Ok(
            Operator::PutScheduledAction(name.to_string(), text(body, "scheduled action")?),
        ),
        (&Method::DELETE, ["v1", "services", name, "scaling", "scheduled-actions", action]) => Ok(
            Operator::RemoveScheduledAction(name.to_string(), action.to_string()),
        ),
        (&Method::POST, ["v1", "schedules"]) => Ok(Operator::CreateSchedule(
            serde_json::from_slice(body).map_err(decode("schedule"))?,
        )),
        (&Method::GET, ["v1", "schedules"]) => Ok(Operator::ListSchedules),
        (&Method::GET, ["v1", "schedules", name]) => Ok(Operator::GetSchedule(name.to_string())),
        (&Method::DELETE, ["v1", "schedules", name]) => {
            Ok(Operator::RemoveSchedule(name.to_string()))
        }
        (&Method::PUT, ["v1", "projects", name]) => Ok(Operator::ApplyProject(
            name.to_string(),
            serde_json::from_slice(body).map_err(decode("project"))?,
        )),
        (&Method::GET, ["v1", "projects"]) => Ok(Operator::ListProjects),
        (&Method::GET, ["v1", "projects", name]) => Ok(Operator::GetProject(name.to_string())),
        (&Method::DELETE, ["v1", "projects", name]) => {
            Ok(Operator::RemoveProject(name.to_string()))
        }
        (&Method::GET, ["v1", "events"]) => {
            let usage = "since=SEQ, limit=1..1000, kind=KIND or subject=ID";
            let (mut since, mut limit) = (0, 100);
            let mut filter = flotilla_api::ops::EventFilter::default();
            for (k, v) in query_pairs(query, usage)? {
                let (k, v) = (k.as_str(), v.as_str());
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
                    "kind" if !v.is_empty() => filter.kind = Some(v.to_string()),
                    "subject" if !v.is_empty() => filter.subject = Some(v.to_string()),
                    _ => return Err(bad()),
                }
            }
            Ok(Operator::ListEvents {
                since,
                limit,
                filter,
            })
        }
        (&Method::POST, ["v1", "tasks", id, "stop"]) => Ok(Operator::StopTask(id.to_string())),
        _ => Err((StatusCode::NOT_FOUND, format!("no route {method} {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded_and_broken_escapes_refused() {
        assert_eq!(percent_decoded("web%3A3").as_deref(), Some("web:3"));
        assert_eq!(percent_decoded("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(percent_decoded("plain").as_deref(), Some("plain"));
        for broken in ["%", "%4", "%zz", "%+F", "%FF"] {
            assert_eq!(percent_decoded(broken), None, "{broken}");
        }
        let events = parse_operator(
            &Method::GET,
            "/v1/events",
            Some("kind=task&subject=web%3A3&limit=5"),
            b"",
        )
        .expect("parses");
        assert!(
            matches!(
                &events,
                Operator::ListEvents { limit: 5, filter, .. }
                    if filter.kind.as_deref() == Some("task")
                        && filter.subject.as_deref() == Some("web:3")
            ),
            "{events:?}"
        );
        assert!(parse_operator(&Method::GET, "/v1/events", Some("kind=%zz"), b"").is_err());
        assert!(parse_operator(&Method::GET, "/v1/events", Some("color=red"), b"").is_err());
    }

    #[test]
    fn listing_queries_name_the_parameter_they_refuse() {
        let q = task_query(Some(
            "node=n-1&service=web&family=web&startedBy=service%3Aweb&state=running\
             &desiredStatus=RUNNING&maxResults=2",
        ))
        .expect("parses");
        assert_eq!(q.max, Some(2));
        assert_eq!(q.filter.started_by.as_deref(), Some("service:web"));
        assert_eq!(
            q.filter.state,
            Some(flotilla_api::tasks::TaskState::Running)
        );
        assert_eq!(task_query(None).expect("none"), TaskQuery::default());
        for (query, names) in [
            ("maxResults=0", "maxResults"),
            ("maxResults=1001", "maxResults"),
            ("maxResults=x", "maxResults"),
            ("nextToken=nope", "nextToken"),
            ("state=RUN", "state"),
            ("desiredStatus=PENDING", "desiredStatus"),
            ("family=web:3", "family"),
            ("node=", "node"),
            ("color=red", "color"),
            ("node=a&node=b", "node"),
        ] {
            let (status, why) = task_query(Some(query)).expect_err(query);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert!(why.contains(names), "{query}: {why}");
        }
        // A node's token is not a task's.
        let token = NodeCursor { id: "n-1".into() }.token();
        let (_, why) = task_query(Some(&format!("nextToken={token}"))).expect_err("a node token");
        assert!(why.contains("nextToken"), "{why}");

        let q =
            node_query(Some("status=ready&label=site%3Da&label=gpu&maxResults=5")).expect("parses");
        assert_eq!(q.filter.status, Some(flotilla_api::ops::NodeState::Ready));
        assert_eq!(
            q.filter.labels,
            [
                ("site".to_string(), Some("a".to_string())),
                ("gpu".to_string(), None)
            ]
        );
        for (query, names) in [
            ("status=UP", "status"),
            ("label==a", "label"),
            ("status=READY&status=REVOKED", "status"),
            ("maxResults=-1", "maxResults"),
            ("node=n-1", "node"),
        ] {
            let (_, why) = node_query(Some(query)).expect_err(query);
            assert!(why.contains(names), "{query}: {why}");
        }
    }

    #[test]
    fn the_next_link_keeps_the_query_and_replaces_the_token() {
        assert_eq!(
            next_link(
                "/v1/tasks",
                Some("service=a%20b&maxResults=2&nextToken=old"),
                "new"
            ),
            r#"</v1/tasks?service=a%20b&maxResults=2&nextToken=new>; rel="next""#
        );
        assert_eq!(
            next_link("/v1/nodes", None, "T"),
            r#"</v1/nodes?nextToken=T>; rel="next""#
        );
        let link = next_link(
            "/v1/tasks",
            Some("startedBy=service%3Aweb&maxResults=1"),
            "T",
        );
        assert_eq!(
            flotilla_api::page::next_link(&link),
            Some("/v1/tasks?startedBy=service%3Aweb&maxResults=1&nextToken=T")
        );
    }

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
            .replace("{name}", "svc")
            .replace("{policy}", "p")
            .replace("{action}", "a");
        !matches!(parse(method, &path, None, b"{}"), Err((StatusCode::NOT_FOUND, m)) if m.starts_with("no route"))
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_whole_request_head_is_closed() {
        use tokio::io::AsyncWriteExt;
        for sent in [&b""[..], b"GET /v1/nodes HTTP/1.1\r\nhost: cp\r\n"] {
            let (mut client, server) = tokio::io::duplex(4096);
            client.write_all(sent).await.expect("write");
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
            let conn = http1(Duration::from_millis(200))
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
            assert!(ended.is_ok(), "still open after {sent:?}");
            drop(client);
        }
    }

    #[test]
    fn only_a_projects_apply_may_send_a_larger_body() {
        assert_eq!(
            body_limit(&Method::PUT, "/v1/projects/shop"),
            MAX_PROJECT_BODY
        );
        for (m, p) in [
            (Method::PUT, "/v1/services/web"),
            (Method::GET, "/v1/projects/shop"),
            (Method::DELETE, "/v1/projects/shop"),
            (Method::PUT, "/v1/projects/shop/x"),
            (Method::POST, "/v1/secrets"),
        ] {
            assert_eq!(body_limit(&m, p), MAX_BODY, "{m} {p}");
        }
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
