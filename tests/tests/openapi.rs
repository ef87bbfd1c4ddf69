//! `api/openapi.yaml` against the real server: every documented operation is called on a real
//! cluster (with a real node running a real task), and every answer's status and body must be
//! what the document says — and decode into the `flotilla-api` type the client reads it as.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::images::{ImageRemoved, PrefetchState, PrefetchUpdate, StoredImage};
use flotilla_api::ops::{
    AdminCredential, ApiError, Event, NodeInfo, NodeState, TaskDefRegistered, TaskDefRevision,
    TaskInfo, TokenCreated, TokenInfo,
};
use flotilla_api::project::{Change, ProjectApplied, ProjectInfo, ProjectSummary};
use flotilla_api::scaling::{ScalingPut, ServiceScaling};
use flotilla_api::schedule::ScheduleInfo;
use flotilla_api::secrets::SecretInfo;
use flotilla_api::service::{ServiceCreated, ServiceInfo};
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_api::LogLine;
use flotilla_certs::credential::Credential;
use flotilla_certs::SERVER_NAME;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::host_arch;
use flotilla_tests::image::{busybox_image, tar_dir, write_layout};
use flotilla_tests::node::Node;
use flotilla_tests::openapi::Doc;
use serde::de::DeserializeOwned;
use serde_json::json;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "echo up; trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// Calls the API and checks each answer against the document.
struct Caller {
    doc: Doc,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    called: BTreeSet<(String, String)>,
}

impl Caller {
    fn new(cp: &ControlPlane) -> Self {
        let cred = Credential::load(&cp.admin).expect("admin credential");
        let tls =
            flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, b"http/1.1").expect("tls");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve(SERVER_NAME, cp.addr)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            doc: Doc::load(),
            rt: flotilla_tests::cluster::raw::runtime(),
            http,
            base: format!("https://{SERVER_NAME}:{}", cp.addr.port()),
            called: BTreeSet::new(),
        }
    }

    /// `METHOD path` (an instance of `template`); the answer must match the document. Its
    /// status and body.
    fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Vec<u8>) {
        self.call_with(method, template, path, body.map(str::as_bytes), &[])
    }

    /// [`Caller::call`] with these request headers. A 101 answer's connection is dropped
    /// (its body is empty).
    fn call_with(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.body(b.to_vec());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (status, bytes) = self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            if status == 101 {
                return (status, Vec::new());
            }
            (status, resp.bytes().await.expect("body").to_vec())
        });
        if let Err(e) = self.doc.check(method, template, status, &bytes) {
            panic!("{e}");
        }
        self.called
            .insert((method.to_string(), template.to_string()));
        (status, bytes)
    }

    /// A call that must answer `want` with a body of type `T` (`ApiError` for a refusal).
    fn ok<T: DeserializeOwned>(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> T {
        let (status, bytes) = self.call(method, template, path, body);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, want, "{method} {path}: {text}");
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not a {}: {e}\n{text}",
                std::any::type_name::<T>()
            )
        })
    }

    /// A 200 answer of a listing (`GET template`): its items and its `Link` header's next
    /// page (the header documented for it).
    fn page<T: DeserializeOwned>(
        &mut self,
        template: &str,
        path: &str,
    ) -> (Vec<T>, Option<String>) {
        let req = self.http.get(format!("{}{path}", self.base));
        let (status, link, bytes) = self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            let link = resp
                .headers()
                .get("link")
                .map(|v| v.to_str().expect("a Link header is text").to_string());
            let status = resp.status().as_u16();
            (status, link, resp.bytes().await.expect("body").to_vec())
        });
        if let Err(e) = self.doc.check("GET", template, status, &bytes) {
            panic!("{e}");
        }
        self.called
            .insert(("GET".to_string(), template.to_string()));
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, 200, "GET {path}: {text}");
        let next = link.map(|l| {
            assert!(
                self.doc
                    .response_headers("GET", template, 200)
                    .contains(&"Link".to_string()),
                "GET {template}: a Link header answered but not documented"
            );
            flotilla_api::page::next_link(&l)
                .unwrap_or_else(|| panic!("GET {path}: no rel=\"next\" in Link: {l}"))
                .to_string()
        });
        let items = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("GET {path}: not a list: {e}\n{text}"));
        (items, next)
    }

    /// Every page of a listing from `path`, following each page's `Link`, checking that each
    /// holds at most `max` items and its link keeps the query it was asked with.
    fn pages<T: DeserializeOwned>(&mut self, template: &str, path: &str, max: usize) -> Vec<T> {
        let query = path.split_once('?').map_or("", |(_, q)| q).to_string();
        let mut out = Vec::new();
        let mut path = path.to_string();
        for _ in 0..1000 {
            let (items, next) = self.page::<T>(template, &path);
            assert!(items.len() <= max, "{path}: {} items", items.len());
            let Some(next) = next else {
                out.extend(items);
                return out;
            };
            // Only a last page may be short (it has no link).
            assert_eq!(items.len(), max, "{path}: a short page with a next link");
            out.extend(items);
            assert!(
                next.starts_with(&format!("{template}?{query}&nextToken=")),
                "{path}: next page {next}"
            );
            path = next;
        }
        panic!("{path}: pages never end")
    }

    /// A refusal with status `want`.
    fn refused(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> ApiError {
        self.ok(method, template, path, body, want)
    }

    /// A call that must answer `want` without a body.
    fn empty(&mut self, method: &str, template: &str, path: &str, want: u16) {
        let (status, bytes) = self.call(method, template, path, None);
        assert_eq!(
            (status, bytes.as_slice()),
            (want, &b""[..]),
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }

    /// A call that must answer 200 with newline-delimited records of type `T`.
    fn lines<T: DeserializeOwned>(&mut self, method: &str, template: &str, path: &str) -> Vec<T> {
        self.lines_of(method, template, path, None)
    }

    /// [`Caller::lines`] of a request with a body.
    fn lines_of<T: DeserializeOwned>(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
    ) -> Vec<T> {
        let (status, bytes) = self.call(method, template, path, body);
        assert_eq!(status, 200, "{method} {path}");
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a record"))
            .collect()
    }
}

/// `GET /v1/tasks` and `GET /v1/nodes` filtered and in pages — the whole listing with a
/// `Link` to follow, each filter, refusals naming the parameter — and `task ls` / `node ls`
/// reading them a chunk at a time. Here: node `node`, task `stopped` (asked to stop), another
/// task of `serve`, and the one task of service `web`, running.
fn listings(api: &mut Caller, cp: &ControlPlane, node: &str, stopped: &str) {
    let ids = |t: &[TaskInfo]| t.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    let (all, link) = api.page::<TaskInfo>("/v1/tasks", "/v1/tasks");
    assert_eq!(link, None, "a whole listing has no next page");
    assert!(all.len() >= 3, "{all:?}");
    let keys: Vec<(u64, &str)> = all.iter().map(|t| (t.created_at, t.id.as_str())).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {keys:?}"
    );
    // A page of 1 names the next; followed to the end, the pages are the whole listing.
    let (first, next) = api.page::<TaskInfo>("/v1/tasks", "/v1/tasks?maxResults=1");
    assert_eq!(ids(&first), ids(&all[..1]));
    assert!(next.is_some(), "a page of 1 of {} has a next", all.len());
    let paged: Vec<TaskInfo> = api.pages("/v1/tasks", "/v1/tasks?maxResults=1", 1);
    assert_eq!(ids(&paged), ids(&all));
    let paged: Vec<TaskInfo> = api.pages("/v1/tasks", "/v1/tasks?maxResults=2", 2);
    assert_eq!(ids(&paged), ids(&all));
    // Each filter, alone and with pages.
    let matching = |f: &dyn Fn(&TaskInfo) -> bool| -> Vec<String> {
        all.iter().filter(|t| f(t)).map(|t| t.id.clone()).collect()
    };
    let web = matching(&|t| t.service() == Some("web"));
    assert_eq!(web.len(), 1, "{all:?}");
    assert!(matching(&|t| t.desired == DesiredStatus::Stopped).contains(&stopped.to_string()));
    for (query, want) in [
        (
            format!("node={node}"),
            matching(&|t| t.node.as_deref() == Some(node)),
        ),
        ("node=n-nope".to_string(), Vec::new()),
        ("service=web".to_string(), web.clone()),
        ("startedBy=service%3Aweb".to_string(), web.clone()),
        (
            "family=serve".to_string(),
            matching(&|t| t.task_definition.starts_with("serve:")),
        ),
        ("family=nope".to_string(), Vec::new()),
        (
            "desiredStatus=STOPPED".to_string(),
            matching(&|t| t.desired == DesiredStatus::Stopped),
        ),
        (
            "desiredStatus=running&family=serve".to_string(),
            matching(&|t| {
                t.desired == DesiredStatus::Running && t.task_definition.starts_with("serve:")
            }),
        ),
    ] {
        let path = format!("/v1/tasks?{query}");
        let (got, next) = api.page::<TaskInfo>("/v1/tasks", &path);
        assert_eq!((ids(&got), next), (want.clone(), None), "{path}");
        let paged: Vec<TaskInfo> = api.pages("/v1/tasks", &format!("{path}&maxResults=1"), 1);
        assert_eq!(ids(&paged), want, "{path} in pages of 1");
    }
    // A state changes as tasks run and stop: what is listed is in it, and the service's
    // running task is among it.
    let (running, _) = api.page::<TaskInfo>("/v1/tasks", "/v1/tasks?state=RUNNING");
    assert!(
        running.iter().all(|t| t.state == TaskState::Running),
        "{running:?}"
    );
    assert!(ids(&running).contains(&web[0]), "{running:?}");
    // Bad values are refused, naming the parameter.
    let task_token = next.expect("a next page");
    let task_token = task_token.split("nextToken=").nth(1).expect("a token");
    for (query, names) in [
        ("maxResults=0", "maxResults"),
        ("maxResults=1001", "maxResults"),
        ("maxResults=many", "maxResults"),
        ("nextToken=bm9wZQ", "nextToken"),
        ("state=RUN", "state"),
        ("desiredStatus=PENDING", "desiredStatus"),
        ("family=serve:1", "family"),
        ("node=", "node"),
        ("color=red", "color"),
        ("service=a&service=b", "service"),
    ] {
        let e = api.refused("GET", "/v1/tasks", &format!("/v1/tasks?{query}"), None, 400);
        assert!(e.error.contains(names), "{query}: {e:?}");
    }
    // Nodes: one here.
    let (nodes, link) = api.page::<NodeInfo>("/v1/nodes", "/v1/nodes?maxResults=1");
    assert_eq!((nodes.len(), link), (1, None));
    for (query, want) in [
        ("status=READY", vec![node.to_string()]),
        ("status=ready&maxResults=5", vec![node.to_string()]),
        ("status=DISCONNECTED", Vec::new()),
        ("label=nope", Vec::new()),
        ("label=nope%3Dx&status=READY", Vec::new()),
    ] {
        let (got, link) = api.page::<NodeInfo>("/v1/nodes", &format!("/v1/nodes?{query}"));
        let got: Vec<String> = got.into_iter().map(|n| n.id).collect();
        assert_eq!((got, link), (want, None), "{query}");
    }
    for (query, names) in [
        ("status=UP".to_string(), "status"),
        ("maxResults=0".to_string(), "maxResults"),
        (format!("nextToken={task_token}"), "nextToken"),
        ("label=".to_string(), "label"),
        ("node=x".to_string(), "node"),
    ] {
        let e = api.refused("GET", "/v1/nodes", &format!("/v1/nodes?{query}"), None, 400);
        assert!(e.error.contains(names), "{query}: {e:?}");
    }
    // The CLI, a task at a time: one table, one JSON array, one YAML sequence, in order.
    let json: Vec<TaskInfo> = cp.flotilla_json(&["task", "ls", "--chunk-size", "1"]);
    assert_eq!(ids(&json), ids(&all));
    let yaml = cp.flotilla_ok(&["task", "ls", "--chunk-size", "1", "-o", "yaml"]);
    let yaml: Vec<TaskInfo> = yaml_serde::from_str(&yaml).expect("one YAML sequence");
    assert_eq!(ids(&yaml), ids(&all));
    let table = cp.flotilla_ok(&["task", "ls", "--chunk-size", "1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    let rows: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(rows, ids(&all), "{table}");
    let web_ls: Vec<TaskInfo> = cp.flotilla_json(&["task", "ls", "--service", "web"]);
    assert_eq!(ids(&web_ls), web);
    let none: Vec<TaskInfo> = cp.flotilla_json(&["task", "ls", "--family", "nope"]);
    assert!(none.is_empty());
    let out = cp.flotilla(&["task", "ls", "--state", "RUN"]);
    assert!(!out.status.success());
    let ready: Vec<NodeInfo> =
        cp.flotilla_json(&["node", "ls", "--status", "ready", "--chunk-size", "1"]);
    assert_eq!(ready.len(), 1);
    let gone: Vec<NodeInfo> = cp.flotilla_json(&["node", "ls", "--status", "DISCONNECTED"]);
    assert!(gone.is_empty());
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    let id = Credential::load(&agent.identity()).expect("identity").name;
    agent.run();
    agent.wait_in_service(&cp);
    let mut api = Caller::new(&cp);
    let node_path = format!("/v1/nodes/{id}");

    // Tokens.
    let t: TokenCreated = api.ok(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(r#"{"labels":{"site":"a"}}"#),
        201,
    );
    assert_eq!(t.info.labels.get("site").map(String::as_str), Some("a"));
    let token_id = t.info.id;
    api.refused(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(r#"{"ttlSecs":0}"#),
        400,
    );
    // The previous release's field name is refused, not silently ignored.
    let old = api.refused(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(r#"{"ttl_secs":60}"#),
        400,
    );
    assert!(old.error.contains("ttl_secs"), "{old:?}");
    let tokens: Vec<TokenInfo> = api.ok("GET", "/v1/tokens", "/v1/tokens", None, 200);
    assert!(tokens.iter().any(|t| t.id == token_id), "{tokens:?}");
    let p = format!("/v1/tokens/{token_id}");
    api.empty("DELETE", "/v1/tokens/{id}", &p, 204);
    api.refused("DELETE", "/v1/tokens/{id}", &p, None, 404);

    // Nodes.
    let nodes: Vec<NodeInfo> = api.ok("GET", "/v1/nodes", "/v1/nodes", None, 200);
    assert_eq!(nodes.len(), 1);
    let n: NodeInfo = api.ok("GET", "/v1/nodes/{id}", &node_path, None, 200);
    assert!(
        n.resources.as_ref().is_some_and(|r| r.memory_bytes > 0),
        "{n:?}"
    );
    api.refused("GET", "/v1/nodes/{id}", "/v1/nodes/n-nope", None, 404);
    let labels = format!("{node_path}/labels");
    let n: NodeInfo = api.ok(
        "PUT",
        "/v1/nodes/{id}/labels",
        &labels,
        Some(r#"{"set":{"site":"b"}}"#),
        200,
    );
    assert_eq!(n.labels.get("site").map(String::as_str), Some("b"));
    api.refused(
        "PUT",
        "/v1/nodes/{id}/labels",
        &labels,
        Some(r#"{"set":{"bad key":"x"}}"#),
        400,
    );
    api.refused(
        "PUT",
        "/v1/nodes/{id}/labels",
        "/v1/nodes/n-nope/labels",
        Some("{}"),
        404,
    );

    // Task definitions.
    let r: TaskDefRegistered = api.ok("POST", "/v1/taskdefs", "/v1/taskdefs", Some(SERVE), 201);
    assert_eq!(r.revision, 1);
    let bad = api.refused(
        "POST",
        "/v1/taskdefs",
        "/v1/taskdefs",
        Some(r#"{"family": 3}"#),
        400,
    );
    assert!(!bad.problems.is_empty());
    let _: Vec<TaskDefRevision> = api.ok("GET", "/v1/taskdefs", "/v1/taskdefs", None, 200);
    let _: TaskDefRevision = api.ok(
        "GET",
        "/v1/taskdefs/{taskdef}",
        "/v1/taskdefs/serve",
        None,
        200,
    );
    api.refused(
        "GET",
        "/v1/taskdefs/{taskdef}",
        "/v1/taskdefs/serve:x",
        None,
        400,
    );
    api.refused(
        "GET",
        "/v1/taskdefs/{taskdef}",
        "/v1/taskdefs/nope",
        None,
        404,
    );

    // Tasks, with a real container.
    let tasks: Vec<TaskInfo> = api.ok(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        Some(r#"{"taskDefinition":"serve"}"#),
        201,
    );
    let task = tasks[0].id.clone();
    api.refused(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        Some(r#"{"taskDefinition":"nope"}"#),
        404,
    );
    api.refused(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        Some(r#"{"taskDefinition":"serve","count":0}"#),
        400,
    );
    let task_path = format!("/v1/tasks/{task}");
    let start = Instant::now();
    while api
        .ok::<TaskInfo>("GET", "/v1/tasks/{id}", &task_path, None, 200)
        .state
        != TaskState::Running
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the task never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    api.refused("GET", "/v1/tasks/{id}", "/v1/tasks/t-nope", None, 404);
    let _: Vec<TaskInfo> = api.ok("GET", "/v1/tasks", "/v1/tasks", None, 200);
    let logs = format!("{task_path}/logs?tail=5");
    let start = Instant::now();
    loop {
        let lines: Vec<LogLine> = api.lines("GET", "/v1/tasks/{id}/logs", &logs);
        if let Some(l) = lines.first() {
            assert_eq!((l.container.as_str(), l.text.as_str()), ("main", "up"));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no log line");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node has the task's image: a prefetch fetches nothing and says so.
    let pf = "/v1/images/prefetch";
    let updates: Vec<PrefetchUpdate> =
        api.lines_of("POST", pf, pf, Some(r#"{"image":"test/busybox:latest"}"#));
    let last = updates.last().expect("an update");
    assert_eq!(
        (updates.len(), last.node.as_str(), last.state),
        (2, id.as_str(), PrefetchState::Present),
        "{updates:?}"
    );
    assert!(
        last.digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{last:?}"
    );
    let e = api.refused(
        "POST",
        pf,
        pf,
        Some(r#"{"image":"a","constraints":["site == x"]}"#),
        400,
    );
    assert!(e.error.starts_with("constraints[0] (site == x): "), "{e:?}");
    let e = api.refused(
        "POST",
        pf,
        pf,
        Some(r#"{"image":"a","nodes":["n-nope"]}"#),
        404,
    );
    assert_eq!(e.error, "node n-nope is not in the cluster");

    // A pull by the control plane: refused naming the field, and a registry out of reach
    // (nothing listens on port 1) named with what it answered.
    let pull = "/v1/images/pull";
    let e = api.refused("POST", pull, pull, Some(r#"{"image":""}"#), 400);
    assert_eq!(e.error, "image: empty");
    let e = api.refused(
        "POST",
        pull,
        pull,
        Some(r#"{"image":"127.0.0.1:1/nope:1","insecure":true}"#),
        502,
    );
    assert!(
        e.error
            .starts_with("pulling image '127.0.0.1:1/nope:1': registry 127.0.0.1:1: "),
        "{e:?}"
    );

    // The content store: an OCI archive pushed, listed, inspected, removed.
    let work = tempfile::tempdir().expect("work");
    let layout = work.path().join("layout");
    write_layout(&layout, "1.0", &busybox_image(host_arch())).expect("layout");
    let archive = work.path().join("a.tar");
    tar_dir(&layout, &archive).expect("archive");
    let bytes = std::fs::read(&archive).expect("archive");
    let (status, body) = api.call_with(
        "POST",
        "/v1/images",
        "/v1/images?name=shop%2Fapp%3A1",
        Some(&bytes),
        &[],
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let pushed: Vec<StoredImage> = serde_json::from_slice(&body).expect("images");
    assert_eq!(pushed[0].name, "docker.io/shop/app:1");
    let (status, body) = api.call_with("POST", "/v1/images", "/v1/images", Some(b"junk"), &[]);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let listed: Vec<StoredImage> = api.ok("GET", "/v1/images", "/v1/images", None, 200);
    assert_eq!(listed, pushed);
    let one = "/v1/images/shop%2Fapp%3A1";
    let got: StoredImage = api.ok("GET", "/v1/images/{name}", one, None, 200);
    assert_eq!(got, pushed[0]);
    api.refused(
        "GET",
        "/v1/images/{name}",
        "/v1/images/Not%20A%20Name",
        None,
        400,
    );
    let removed: ImageRemoved = api.ok("DELETE", "/v1/images/{name}", one, None, 200);
    assert_eq!(removed.blobs_removed.len(), 2 + pushed[0].layers.len());
    api.refused("DELETE", "/v1/images/{name}", one, None, 404);
    api.refused("GET", "/v1/images/{name}", one, None, 404);

    let nope = format!("{task_path}/logs?container=nope");
    api.refused("GET", "/v1/tasks/{id}/logs", &nope, None, 404);
    let bogus = format!("{task_path}/logs?bogus=1");
    api.refused("GET", "/v1/tasks/{id}/logs", &bogus, None, 400);

    // Exec: an upgrade, refused without one, with a bad query or a container the task lacks.
    let exec = "/v1/tasks/{id}/exec";
    let upgrade = [("connection", "upgrade"), ("upgrade", "flotilla-exec/1")];
    let run_true = format!("{task_path}/exec?command=true");
    let (status, _) = api.call_with("POST", exec, &run_true, None, &upgrade);
    assert_eq!(status, 101);
    let e = api.refused("POST", exec, &run_true, None, 426);
    assert!(e.error.contains("Upgrade: flotilla-exec/1"), "{e:?}");
    for bad in [
        "",
        "?command=a%00b",
        "?command=true&rows=24",
        "?command=true&tty=maybe",
    ] {
        let path = format!("{task_path}/exec{bad}");
        let (status, body) = api.call_with("POST", exec, &path, None, &upgrade);
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let nope = format!("{task_path}/exec?command=true&container=nope");
    let (status, body) = api.call_with("POST", exec, &nope, None, &upgrade);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _) = api.call_with(
        "POST",
        exec,
        "/v1/tasks/t-nope/exec?command=true",
        None,
        &upgrade,
    );
    assert_eq!(status, 404);

    // Draining refuses placement; activating allows it again.
    let n: NodeInfo = api.ok(
        "POST",
        "/v1/nodes/{id}/drain",
        &format!("{node_path}/drain"),
        None,
        200,
    );
    assert_eq!(n.state, NodeState::Draining);
    api.refused(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        Some(r#"{"taskDefinition":"serve"}"#),
        409,
    );
    let n: NodeInfo = api.ok(
        "POST",
        "/v1/nodes/{id}/activate",
        &format!("{node_path}/activate"),
        None,
        200,
    );
    assert_eq!(n.state, NodeState::Ready);
    api.refused(
        "POST",
        "/v1/nodes/{id}/drain",
        "/v1/nodes/n-nope/drain",
        None,
        404,
    );
    api.refused(
        "POST",
        "/v1/nodes/{id}/activate",
        "/v1/nodes/n-nope/activate",
        None,
        404,
    );
    let again: Vec<TaskInfo> = api.ok(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        Some(r#"{"taskDefinition":"serve"}"#),
        201,
    );
    let live = again[0].id.clone();
    let stopped: TaskInfo = api.ok(
        "POST",
        "/v1/tasks/{id}/stop",
        &format!("{task_path}/stop"),
        None,
        200,
    );
    assert_eq!(stopped.desired, DesiredStatus::Stopped);
    api.refused(
        "POST",
        "/v1/tasks/{id}/stop",
        "/v1/tasks/t-nope/stop",
        None,
        404,
    );

    // Services.
    let svc = r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 1, "launchType": "EC2",
                  "discovery": {"namespace": "test", "containerPort": 8080, "vip": true}}"#;
    let created: ServiceCreated = api.ok("POST", "/v1/services", "/v1/services", Some(svc), 201);
    assert_eq!(created.warnings, ["$.launchType: ignored (AWS only)"]);
    api.refused("POST", "/v1/services", "/v1/services", Some(svc), 409);
    api.refused(
        "POST",
        "/v1/services",
        "/v1/services",
        Some(r#"{"serviceName": 1}"#),
        400,
    );
    let missing = r#"{"serviceName": "x", "taskDefinition": "nope"}"#;
    api.refused("POST", "/v1/services", "/v1/services", Some(missing), 404);
    let start = Instant::now();
    while api
        .ok::<ServiceInfo>("GET", "/v1/services/{name}", "/v1/services/web", None, 200)
        .running_count
        != 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the service never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _: Vec<ServiceInfo> = api.ok("GET", "/v1/services", "/v1/services", None, 200);
    listings(&mut api, &cp, &id, &task);
    api.refused("GET", "/v1/services/{name}", "/v1/services/nope", None, 404);
    let start = Instant::now();
    loop {
        let e: DiscoveredService = api.ok(
            "GET",
            "/v1/services/{name}/endpoints",
            "/v1/services/web/endpoints",
            None,
            200,
        );
        assert_eq!(e.name, "web", "{e:?}");
        if e.vip.is_some() {
            // A task with network mode none is reached nowhere: no endpoint.
            assert!(e.endpoints.is_empty(), "{e:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no VIP: {e:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    api.refused(
        "GET",
        "/v1/services/{name}/endpoints",
        "/v1/services/nope/endpoints",
        None,
        404,
    );
    let scaled: ServiceInfo = api.ok(
        "PUT",
        "/v1/services/{name}",
        "/v1/services/web",
        Some(r#"{"desiredCount": 2, "forceNewDeployment": true}"#),
        200,
    );
    assert_eq!(scaled.deployments.len(), 2);
    api.refused(
        "PUT",
        "/v1/services/{name}",
        "/v1/services/web",
        Some(r#"{"desiredCount": 1, "x": 1}"#),
        400,
    );
    api.refused(
        "PUT",
        "/v1/services/{name}",
        "/v1/services/nope",
        Some("{}"),
        404,
    );
    // Auto scaling.
    let sc = "/v1/services/{name}/scaling";
    api.refused("GET", sc, "/v1/services/web/scaling", None, 404);
    let autoscale = r#"{"target": {"MinCapacity": 1, "MaxCapacity": 3}, "policies": [{
        "PolicyName": "mem", "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 70,
          "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageMemoryUtilization"}}}]}"#;
    let s: ScalingPut = api.ok("PUT", sc, "/v1/services/web/scaling", Some(autoscale), 200);
    assert_eq!(s.scaling.policies.len(), 1, "{s:?}");
    let inverted = r#"{"target": {"MinCapacity": 4, "MaxCapacity": 3}}"#;
    api.refused("PUT", sc, "/v1/services/web/scaling", Some(inverted), 400);
    api.refused("PUT", sc, "/v1/services/nope/scaling", Some(autoscale), 404);
    let _: ServiceScaling = api.ok("GET", sc, "/v1/services/web/scaling", None, 200);
    let policies = "/v1/services/{name}/scaling/policies";
    let step = "PolicyName: steps\nPolicyType: StepScaling\nStepScalingPolicyConfiguration:\n  \
                AdjustmentType: ChangeInCapacity\n  StepAdjustments: [{MetricIntervalLowerBound: 0, \
                ScalingAdjustment: 1}]\nAlarm: {MetricName: MemoryUtilization, Threshold: 80, \
                ComparisonOperator: GreaterThanThreshold, Period: 60}\n";
    let put: ScalingPut = api.ok(
        "POST",
        policies,
        "/v1/services/web/scaling/policies",
        Some(step),
        200,
    );
    assert_eq!(put.scaling.policies.len(), 2, "{put:?}");
    assert_eq!(put.warnings.len(), 1, "{put:?}");
    let wrong = "PolicyName: x\nTargetTrackingScalingPolicyConfiguration: {TargetValue: 900}\n";
    api.refused(
        "POST",
        policies,
        "/v1/services/web/scaling/policies",
        Some(wrong),
        400,
    );
    api.refused(
        "POST",
        policies,
        "/v1/services/nope/scaling/policies",
        Some(step),
        404,
    );
    let policy = "/v1/services/{name}/scaling/policies/{policy}";
    api.empty(
        "DELETE",
        policy,
        "/v1/services/web/scaling/policies/steps",
        204,
    );
    api.refused(
        "DELETE",
        policy,
        "/v1/services/web/scaling/policies/steps",
        None,
        404,
    );
    let actions = "/v1/services/{name}/scaling/scheduled-actions";
    let night = r#"{"ScheduledActionName": "night", "Schedule": "cron(0 22 * * ? *)",
        "Timezone": "Europe/Paris", "ScalableTargetAction": {"MaxCapacity": 1}}"#;
    let put: ScalingPut = api.ok(
        "POST",
        actions,
        "/v1/services/web/scaling/scheduled-actions",
        Some(night),
        200,
    );
    assert_eq!(put.scaling.scheduled_actions.len(), 1, "{put:?}");
    let never = r#"{"ScheduledActionName": "n", "Schedule": "0 0 31 2 *", "ScalableTargetAction": {"MinCapacity": 1}}"#;
    api.refused(
        "POST",
        actions,
        "/v1/services/web/scaling/scheduled-actions",
        Some(never),
        400,
    );
    api.refused(
        "POST",
        actions,
        "/v1/services/nope/scaling/scheduled-actions",
        Some(night),
        404,
    );
    let action = "/v1/services/{name}/scaling/scheduled-actions/{action}";
    api.empty(
        "DELETE",
        action,
        "/v1/services/web/scaling/scheduled-actions/night",
        204,
    );
    api.refused(
        "DELETE",
        action,
        "/v1/services/web/scaling/scheduled-actions/night",
        None,
        404,
    );
    api.empty("DELETE", sc, "/v1/services/web/scaling", 204);
    api.refused("DELETE", sc, "/v1/services/web/scaling", None, 404);

    api.empty("DELETE", "/v1/services/{name}", "/v1/services/web", 204);
    api.refused(
        "DELETE",
        "/v1/services/{name}",
        "/v1/services/web",
        None,
        404,
    );

    // Projects: services applied together, in one transaction.
    let front = r#"{"family": "front", "networkMode": "none", "containerDefinitions": [
        {"name": "main", "image": "test/busybox:latest", "memory": 16}]}"#;
    let project = |service: &str| {
        format!(
            r#"{{"services": [{{"taskDefinition": {front}, "service": {service}}}], "removeOrphans": true}}"#
        )
    };
    let front_svc = r#"{"serviceName": "front", "desiredCount": 0, "launchType": "EC2",
                        "discovery": {"vip": false}}"#;
    let pr = "/v1/projects/{name}";
    let a: ProjectApplied = api.ok(
        "PUT",
        pr,
        "/v1/projects/shop",
        Some(&project(front_svc)),
        200,
    );
    assert_eq!(
        (a.services[0].task_definition.as_str(), a.services[0].change),
        ("front:1", Change::Created)
    );
    assert_eq!(
        a.warnings,
        ["front: $.services[0].service.launchType: ignored (AWS only)"]
    );
    // The same again changes nothing; a body past the other routes' 128 KiB is taken here.
    let padded = format!("{}{}", project(front_svc), " ".repeat(200 * 1024));
    let a: ProjectApplied = api.ok("PUT", pr, "/v1/projects/shop", Some(&padded), 200);
    assert_eq!(a.services[0].change, Change::Unchanged);
    let e = api.refused(
        "PUT",
        pr,
        "/v1/projects/Shop",
        Some(&project(front_svc)),
        400,
    );
    assert!(e.error.contains("DNS label"), "{e:?}");
    let bad = api.refused(
        "PUT",
        pr,
        "/v1/projects/shop",
        Some(&project(r#"{"serviceName": "front", "desiredCount": -1}"#)),
        400,
    );
    assert!(
        bad.problems
            .iter()
            .any(|p| p.starts_with("front: $.services[0].service.desiredCount")),
        "{bad:?}"
    );
    api.refused(
        "PUT",
        pr,
        "/v1/projects/shop",
        Some(r#"{"services": 1}"#),
        400,
    );
    let taken = api.refused(
        "PUT",
        pr,
        "/v1/projects/blog",
        Some(&project(front_svc)),
        409,
    );
    assert!(taken.error.contains("belongs to project shop"), "{taken:?}");
    let all: Vec<ProjectSummary> = api.ok("GET", "/v1/projects", "/v1/projects", None, 200);
    assert_eq!(
        all.iter()
            .map(|p| (p.name.as_str(), p.services))
            .collect::<Vec<_>>(),
        [("shop", 1)]
    );
    let p: ProjectInfo = api.ok("GET", pr, "/v1/projects/shop", None, 200);
    assert_eq!(p.services[0].project.as_deref(), Some("shop"));
    assert_eq!(
        p.services[0]
            .spec
            .discovery
            .as_ref()
            .map(|d| d.namespace.as_str()),
        Some("shop")
    );
    let s: ServiceInfo = api.ok(
        "GET",
        "/v1/services/{name}",
        "/v1/services/front",
        None,
        200,
    );
    assert_eq!(s.project.as_deref(), Some("shop"));
    api.refused("GET", pr, "/v1/projects/nope", None, 404);
    let down: ProjectApplied = api.ok("DELETE", pr, "/v1/projects/shop", None, 200);
    assert_eq!(down.services[0].change, Change::Removed);
    assert_eq!(down.deregistered, ["front:1"]);
    api.refused("DELETE", pr, "/v1/projects/shop", None, 404);

    // Secrets: metadata only, never a value, in any answer.
    let s: SecretInfo = api.ok(
        "POST",
        "/v1/secrets",
        "/v1/secrets",
        Some(r#"{"name": "db", "value": "eyJwYXNzd29yZCI6Imh1bnRlcjIifQ=="}"#),
        201,
    );
    assert_eq!((s.latest(), s.versions[0].size), (1, 22));
    api.refused(
        "POST",
        "/v1/secrets",
        "/v1/secrets",
        Some(r#"{"name": "db", "value": "eA=="}"#),
        409,
    );
    let bad = api.refused(
        "POST",
        "/v1/secrets",
        "/v1/secrets",
        Some(r#"{"name": "x", "value": 12345678}"#),
        400,
    );
    assert!(
        !bad.error.contains("12345678"),
        "a body is never echoed: {bad:?}"
    );
    let s: SecretInfo = api.ok(
        "POST",
        "/v1/secrets/{name}/versions",
        "/v1/secrets/db/versions",
        Some(r#"{"value": "eyJwYXNzd29yZCI6Imh1bnRlcjMifQ=="}"#),
        200,
    );
    assert_eq!(s.latest(), 2);
    api.refused(
        "POST",
        "/v1/secrets/{name}/versions",
        "/v1/secrets/nope/versions",
        Some(r#"{"value": "eA=="}"#),
        404,
    );
    let all: Vec<SecretInfo> = api.ok("GET", "/v1/secrets", "/v1/secrets", None, 200);
    assert_eq!(all.len(), 1);
    let uses = r#"{"family": "uses-db", "containerDefinitions": [{"name": "app", "image": "x",
        "memory": 16, "secrets": [{"name": "DB", "valueFrom": "flotilla:db:password"}]}]}"#;
    let _: TaskDefRegistered = api.ok("POST", "/v1/taskdefs", "/v1/taskdefs", Some(uses), 201);
    let s: SecretInfo = api.ok("GET", "/v1/secrets/{name}", "/v1/secrets/db", None, 200);
    assert_eq!(s.used_by, ["uses-db:1"]);
    api.refused("GET", "/v1/secrets/{name}", "/v1/secrets/nope", None, 404);
    api.refused("DELETE", "/v1/secrets/{name}", "/v1/secrets/db", None, 409);
    api.empty(
        "DELETE",
        "/v1/secrets/{name}",
        "/v1/secrets/db?force=true",
        204,
    );
    api.refused("DELETE", "/v1/secrets/{name}", "/v1/secrets/db", None, 404);
    // Configs: the same shapes.
    let c: SecretInfo = api.ok(
        "POST",
        "/v1/configs",
        "/v1/configs",
        Some(r#"{"name": "nginx", "value": "d29ya2VyX3Byb2Nlc3NlcyAxOw=="}"#),
        201,
    );
    assert_eq!(c.latest(), 1);
    api.refused(
        "POST",
        "/v1/configs",
        "/v1/configs",
        Some(r#"{"name": "nginx", "value": "eA=="}"#),
        409,
    );
    api.refused("POST", "/v1/configs", "/v1/configs", Some("{}"), 400);
    let c: SecretInfo = api.ok(
        "POST",
        "/v1/configs/{name}/versions",
        "/v1/configs/nginx/versions",
        Some(r#"{"value": "eA=="}"#),
        200,
    );
    assert_eq!(c.latest(), 2);
    api.refused(
        "POST",
        "/v1/configs/{name}/versions",
        "/v1/configs/nope/versions",
        Some(r#"{"value": "eA=="}"#),
        404,
    );
    let all: Vec<SecretInfo> = api.ok("GET", "/v1/configs", "/v1/configs", None, 200);
    assert_eq!(all.len(), 1);
    let _: SecretInfo = api.ok("GET", "/v1/configs/{name}", "/v1/configs/nginx", None, 200);
    api.refused("GET", "/v1/configs/{name}", "/v1/configs/nope", None, 404);
    api.empty("DELETE", "/v1/configs/{name}", "/v1/configs/nginx", 204);
    api.refused(
        "DELETE",
        "/v1/configs/{name}",
        "/v1/configs/nginx",
        None,
        404,
    );

    // Schedules.
    let sched = r#"{"name": "nightly", "taskDefinition": "serve", "cron": "0 2 * * *", "timezone": "Europe/Paris"}"#;
    let s: ScheduleInfo = api.ok("POST", "/v1/schedules", "/v1/schedules", Some(sched), 201);
    assert!(s.next_run.is_some(), "{s:?}");
    api.refused("POST", "/v1/schedules", "/v1/schedules", Some(sched), 409);
    let bad = r#"{"name": "x", "taskDefinition": "serve", "cron": "* *"}"#;
    api.refused("POST", "/v1/schedules", "/v1/schedules", Some(bad), 400);
    let missing = r#"{"name": "y", "taskDefinition": "nope", "cron": "@daily"}"#;
    api.refused("POST", "/v1/schedules", "/v1/schedules", Some(missing), 404);
    let _: Vec<ScheduleInfo> = api.ok("GET", "/v1/schedules", "/v1/schedules", None, 200);
    let _: ScheduleInfo = api.ok(
        "GET",
        "/v1/schedules/{name}",
        "/v1/schedules/nightly",
        None,
        200,
    );
    api.refused(
        "GET",
        "/v1/schedules/{name}",
        "/v1/schedules/nope",
        None,
        404,
    );
    api.empty(
        "DELETE",
        "/v1/schedules/{name}",
        "/v1/schedules/nightly",
        204,
    );
    api.refused(
        "DELETE",
        "/v1/schedules/{name}",
        "/v1/schedules/nightly",
        None,
        404,
    );

    // Operators.
    let key = flotilla_certs::key_and_csr("ops").expect("csr");
    let issue = json!({"name": "ops", "csrPem": key.cert_pem}).to_string();
    let c: AdminCredential = api.ok("POST", "/v1/admins", "/v1/admins", Some(&issue), 201);
    assert!(c.cert_pem.contains("BEGIN CERTIFICATE") && c.ca_pem.contains("BEGIN CERTIFICATE"));
    let bad = json!({"name": "ops", "csrPem": "not a CSR"}).to_string();
    api.refused("POST", "/v1/admins", "/v1/admins", Some(&bad), 400);

    // Deregistering.
    let _: TaskDefRevision = api.ok(
        "POST",
        "/v1/taskdefs/{taskdef}/deregister",
        "/v1/taskdefs/serve:1/deregister",
        None,
        200,
    );
    api.refused(
        "POST",
        "/v1/taskdefs/{taskdef}/deregister",
        "/v1/taskdefs/serve/deregister",
        None,
        400,
    );
    api.refused(
        "POST",
        "/v1/taskdefs/{taskdef}/deregister",
        "/v1/taskdefs/nope:1/deregister",
        None,
        404,
    );

    // Removing and revoking nodes.
    api.refused(
        "DELETE",
        "/v1/nodes/{id}",
        &format!("{node_path}?force=maybe"),
        None,
        400,
    );
    api.refused("DELETE", "/v1/nodes/{id}", &node_path, None, 409);
    let other = Agent::new(&cp.scratch().join("other"));
    assert!(other
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    let other_id = Credential::load(&other.identity()).expect("identity").name;
    let r: NodeInfo = api.ok(
        "POST",
        "/v1/nodes/{id}/revoke",
        &format!("/v1/nodes/{other_id}/revoke"),
        None,
        200,
    );
    assert_eq!(r.state, NodeState::Revoked);
    api.refused(
        "POST",
        "/v1/nodes/{id}/revoke",
        "/v1/nodes/n-nope/revoke",
        None,
        404,
    );
    api.empty(
        "DELETE",
        "/v1/nodes/{id}",
        &format!("/v1/nodes/{other_id}"),
        204,
    );
    api.refused("DELETE", "/v1/nodes/{id}", "/v1/nodes/n-nope", None, 404);
    let _: TaskInfo = api.ok(
        "POST",
        "/v1/tasks/{id}/stop",
        &format!("/v1/tasks/{live}/stop"),
        None,
        200,
    );

    // Events: what happened, in order.
    let events: Vec<Event> = api.ok("GET", "/v1/events", "/v1/events", None, 200);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "token.created",
        "node.joined",
        "taskdef.registered",
        "task.placed",
        "task.running",
        "node.draining",
        "node.revoked",
        "node.removed",
        "project.applied",
        "project.removed",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
    let page: Vec<Event> = api.ok("GET", "/v1/events", "/v1/events?since=2&limit=3", None, 200);
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    api.refused("GET", "/v1/events", "/v1/events?limit=0", None, 400);

    // The metrics, over TLS: the Prometheus text format, counting what this test did.
    let (status, bytes) = api.call("GET", "/v1/metrics", "/v1/metrics", None);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("flotilla_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/events\",code=\"200\"}")),
        "{text}"
    );

    // What is not documented is not served.
    let (status, body) = api.rt.block_on(async {
        let r = api
            .http
            .get(format!("{}/v1/nope", api.base))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.bytes().await.expect("body"))
    });
    assert_eq!(status, 404);
    let mut errors = Vec::new();
    // The validator walks the document's JSON Schema over the untyped answer.
    let err: serde_json::Value = serde_json::from_slice(&body).expect("json");
    api.doc.validate(
        &json!({"$ref": "#/components/schemas/Error"}),
        &err,
        "$",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");

    let documented: BTreeSet<(String, String)> = api.doc.operations().into_iter().collect();
    let missed: Vec<_> = documented.difference(&api.called).collect();
    assert!(
        missed.is_empty(),
        "documented but never called here: {missed:?}"
    );

    node.wait_removed(Duration::from_secs(20));
    agent.kill();
    node.assert_clean();
}
