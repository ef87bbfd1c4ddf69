//! The control plane's Prometheus metrics on a real cluster: a control plane with
//! `--metrics-listen`, a real agent running a real task; the scrape passes Debian's
//! `promtool check metrics` and says what happened, and Debian's real `prometheus` server
//! scrapes it — in plain HTTP at `/metrics` and over TLS at `/v1/metrics` with the admin
//! credential, as the README's scrape configuration does — and answers PromQL queries with it.
//! The same for a node agent's metrics (`nodeagent run --metrics-listen`): its containers'
//! memory as the cgroup has it, and OOM kills as they happen. On both, every query of the
//! fleet's Grafana dashboard (`grafana/flotilla-fleet.json`) runs on what Prometheus scraped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::tasks::TaskState;
use flotilla_metrics::dashboard::{queries, Source, FLEET_DASHBOARD};
use flotilla_tests::cluster::{free_port, Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// `GET path` in HTTP/1.0 (no chunked answer, the connection closed at its end): the status
/// code, the head and the body.
fn try_get(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

fn http_get(addr: SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
    try_get(addr, path, accept).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// The value of the sample `series` (name and labels exactly as written) in a text scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `prometheus` on loopback, killed (and its storage removed with the test's directory) when
/// dropped, also when the test fails.
struct Prometheus {
    child: Child,
    web: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Self {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("config");
        let check = Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&file)
            .output()
            .expect("promtool (Debian package prometheus: scripts/install-deps.sh)");
        assert!(
            check.status.success(),
            "promtool check config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("prometheus (Debian package prometheus: scripts/install-deps.sh)");
        Self { child, web, log }
    }

    /// The value of the instant query `q` (its first sample), if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (status, _, body) = try_get(self.web, &path, "application/json").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }

    /// How many series the instant query `q` answers, or Prometheus' refusal.
    fn series(&self, q: &str) -> Result<usize, String> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (status, _, body) =
            try_get(self.web, &path, "application/json").map_err(|e| format!("GET {path}: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every query of the fleet dashboard that `source`'s exporter answers runs on this
    /// Prometheus, Grafana's variables given values (every node and service chosen, a 1-minute
    /// rate interval); the panels and variables named in `with_data` answer series (within
    /// 20 s: a rate needs two scrapes).
    fn runs_the_dashboard(&self, source: Source, with_data: &[&str]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(FLEET_DASHBOARD);
        let text = std::fs::read_to_string(&path).expect("the fleet dashboard");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard json");
        let all = queries(&doc).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        let ours: Vec<_> = all.iter().filter(|q| q.source == Some(source)).collect();
        assert!(ours.len() >= 10, "{} queries of {source:?}", ours.len());
        for want in with_data {
            assert!(
                ours.iter().any(|q| q.place.contains(want)),
                "no panel or variable {want}"
            );
        }
        let until = Instant::now() + Duration::from_secs(20);
        for q in ours {
            let expr = q
                .expr
                .replace("$__rate_interval", "1m")
                .replace("$node", ".*")
                .replace("$service", ".*");
            loop {
                let n = self
                    .series(&expr)
                    .unwrap_or_else(|e| panic!("{}: {expr}: {e}", q.place));
                if n > 0 || !with_data.iter().any(|w| q.place.contains(w)) {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "{}: {expr} answers no series",
                    q.place
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// `q` percent-encoded for a URL's query string.
fn encode(q: &str) -> String {
    let mut encoded = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_control_plane_in_plain_http_and_over_tls() {
    let started = Instant::now();
    let node = Node::new();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start(&["--metrics-listen", &metrics.to_string()]);
    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_in_service(&cp);
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    cp.flotilla_ok(&["task", "run", "serve"]);
    wait("a running task", Duration::from_secs(30), || {
        cp.tasks().iter().any(|t| t.state == TaskState::Running)
    });

    // (a) The scrape: the Prometheus text format by default, valid for promtool, and what
    // happened in it.
    let (status, head, text) = http_get(metrics, "/metrics", "*/*");
    assert_eq!(status, 200, "{head}\n{text}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    promtool_check(&text);
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    assert_eq!(value(r#"flotilla_nodes{state="READY"}"#), 1.0);
    assert_eq!(value(r#"flotilla_nodes{state="DISCONNECTED"}"#), 0.0);
    assert_eq!(value("flotilla_agent_sessions"), 1.0);
    assert_eq!(value(r#"flotilla_tasks{service="",state="RUNNING"}"#), 1.0);
    assert!(value(r#"flotilla_placements_total{origin="task_run"}"#) >= 1.0);
    assert!(value(r#"flotilla_agent_session_attempts_total{result="admitted"}"#) >= 1.0);
    assert!(value("flotilla_store_commit_duration_seconds_count") >= 1.0);
    // The task run went through the API: its route's histogram, by template.
    assert_eq!(
        value(
            r#"flotilla_api_request_duration_seconds_count{method="POST",route="/v1/tasks",code="201"}"#
        ),
        1.0
    );
    assert!(
        value(
            r#"flotilla_api_request_duration_seconds_bucket{method="POST",route="/v1/tasks",code="201",le="+Inf"}"#
        ) >= 1.0
    );
    // OpenMetrics when asked for, as Prometheus asks.
    let (status, head, om) = http_get(
        metrics,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    // Nothing else on the metrics listener.
    assert_eq!(http_get(metrics, "/", "*/*").0, 404);
    assert_eq!(http_get(metrics, "/v1/nodes", "*/*").0, 404);
    // Over TLS on the operator API, with an admin credential.
    let tls = cp.api().metrics().expect("GET /v1/metrics");
    assert_eq!(sample(&tls, r#"flotilla_nodes{state="READY"}"#), Some(1.0));

    // (b) Debian's prometheus scrapes both, every second, with the README's configuration.
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = cp.admin.display();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: flotilla
    static_configs:
      - targets: ["{metrics}"]
  - job_name: flotilla-tls
    scheme: https
    metrics_path: /v1/metrics
    tls_config:
      ca_file: {admin}/ca.pem
      cert_file: {admin}/cert.pem
      key_file: {admin}/key.pem
      server_name: orchestratord.flotilla.internal
    static_configs:
      - targets: ["{}"]
"#,
        cp.addr
    );
    let prometheus = Prometheus::start(dir.path(), &config);
    for job in ["flotilla", "flotilla-tls"] {
        let q = format!(r#"flotilla_nodes{{state="READY",job="{job}"}}"#);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if prometheus.query(&q) == Some(1.0) {
                break;
            }
            assert!(
                Instant::now() < until,
                "prometheus never answered {q} = 1 (up: {:?}):\n{}",
                prometheus.query(&format!(r#"up{{job="{job}"}}"#)),
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let running = prometheus.query(r#"sum(flotilla_tasks{state="RUNNING",job="flotilla"})"#);
    assert_eq!(running, Some(1.0));
    let placed = prometheus.query(r#"flotilla_placements_total{origin="task_run",job="flotilla"}"#);
    assert!(placed.is_some_and(|p| p >= 1.0), "{placed:?}");
    // The fleet dashboard's control-plane panels run on what it scraped.
    prometheus.runs_the_dashboard(
        Source::ControlPlane,
        &[
            "\"Nodes by state\"",
            "\"Tasks by state\"",
            "\"Placements by origin\"",
            "\"API requests by route and code\"",
            "\"Store commits and failures\"",
        ],
    );
    drop(prometheus);

    agent.kill();
    node.remove_all();
    node.assert_clean();
    eprintln!("metrics system test: {:?}", started.elapsed());
}

/// A task that holds about 24 MB of anonymous memory in its shell, on the bridge.
const HOLD: &str = r#"{
  "family": "hold",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 128, "stopTimeout": 2,
    "command": ["sh", "-c", "x=$(head -c 24000000 /dev/zero | tr '\\0' a); trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// A task whose container stays up while a child of it is OOM-killed every second.
const OOM: &str = r#"{
  "family": "oom",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; sleep 1 & wait; done"]
  }]
}"#;

/// The value of the first sample of `name` whose labels include `label`.
fn sample_with(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .find(|rest| rest.split('}').next().is_some_and(|ls| ls.contains(label)))
        .and_then(|rest| rest.rsplit_once(' '))
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Memory in use by the cgroup at `path` (relative to the hierarchy), as the kernel says:
/// `memory.current` on v2, `memory.usage_in_bytes` on v1.
fn cgroup_memory(path: &str) -> u64 {
    let path = path.trim_start_matches('/');
    [
        format!("/sys/fs/cgroup/{path}/memory.current"),
        format!("/sys/fs/cgroup/memory/{path}/memory.usage_in_bytes"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
    .unwrap_or_else(|| panic!("no memory counter for cgroup {path}"))
}

fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus: scripts/install-deps.sh)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn prometheus_scrapes_a_node_agent_with_cadvisor_names() {
    let node = Node::new();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session_with(&cp, &node, &["--metrics-listen", &metrics.to_string()]);
    for (name, def) in [("hold", HOLD), ("oom", OOM)] {
        let f = cp.scratch().join(format!("{name}.json"));
        std::fs::write(&f, def).expect("write");
        cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
        cp.flotilla_ok(&["task", "run", name]);
    }
    wait("two running tasks", Duration::from_secs(30), || {
        cp.tasks()
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count()
            == 2
    });
    let id = |family: &str| {
        cp.tasks()
            .into_iter()
            .find(|t| t.task_definition.starts_with(&format!("{family}:")))
            .map(|t| t.id)
            .expect("task")
    };
    let (hold, oom) = (id("hold"), id("oom"));

    // (a) The scrape passes promtool, carries cAdvisor's names with the task's labels.
    let scrape = || {
        let (status, head, text) = http_get(metrics, "/metrics", "*/*");
        assert_eq!(status, 200, "{head}\n{text}");
        text
    };
    // The shell fills its memory and the first OOM kill comes within moments of the start.
    let mut text = scrape();
    wait(
        "the memory held and an OOM kill",
        Duration::from_secs(30),
        || {
            text = scrape();
            let held = sample_with(
                &text,
                "container_memory_working_set_bytes",
                &format!("task=\"{hold}\""),
            );
            let killed = sample_with(
                &text,
                "container_oom_events_total",
                &format!("task=\"{oom}\""),
            );
            held.is_some_and(|h| h > 20e6) && killed.is_some_and(|k| k >= 1.0)
        },
    );
    promtool_check(&text);
    let labels = format!(
        r#"task="{hold}",container="main",family="hold",revision="1",service="",namespace="""#
    );
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_usage_bytes",
        "container_start_time_seconds",
        "container_processes",
    ] {
        let v = sample(&text, &format!("{name}{{{labels}}}"));
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{name}{{{labels}}}: {v:?}\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            &format!("container_spec_memory_limit_bytes{{{labels}}}")
        ),
        Some(128.0 * 1024.0 * 1024.0)
    );
    // The bridge task's own interface, in its network namespace; the `none` task has only lo.
    assert!(
        sample_with(
            &text,
            "container_network_receive_bytes_total",
            &format!("task=\"{hold}\",family=\"hold\",revision=\"1\",service=\"\",namespace=\"\",interface=\"eth0\"")
        )
        .is_some(),
        "{text}"
    );
    assert!(!text.contains(&format!(
        "container_network_receive_bytes_total{{task=\"{oom}\""
    )));
    assert_eq!(sample(&text, "flotilla_agent_session_connected"), Some(1.0));
    assert_eq!(
        sample(&text, r#"flotilla_agent_desired_tasks{desired="RUNNING"}"#),
        Some(2.0)
    );
    assert!(sample(&text, "machine_cpu_cores").is_some_and(|c| c >= 1.0));
    assert!(
        sample(&text, "flotilla_agent_reconcile_duration_seconds_count").is_some_and(|c| c >= 1.0)
    );
    assert_eq!(http_get(metrics, "/", "*/*").0, 404);

    // (b) Debian's prometheus scrapes the agent; PromQL answers the task's working set within
    // 2x of what its cgroup says, and the OOM kills.
    let list = node.ctr_ok(&["ps", "-a", "-o", "json"]);
    let containers: Vec<serde_json::Value> = serde_json::from_str(&list).expect("ps json");
    let cgroup = containers
        .iter()
        .find(|c| c["config"]["name"].as_str() == Some(&format!("{hold}-0")))
        .and_then(|c| c["cgroup_path"].as_str())
        .unwrap_or_else(|| panic!("the hold container in {list}"))
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: flotilla-nodes
    static_configs:
      - targets: ["{metrics}"]
"#
    );
    let prometheus = Prometheus::start(dir.path(), &config);
    let q = format!(r#"container_memory_working_set_bytes{{task="{hold}"}}"#);
    let until = Instant::now() + Duration::from_secs(30);
    let working_set = loop {
        if let Some(v) = prometheus.query(&q) {
            break v;
        }
        assert!(
            Instant::now() < until,
            "prometheus never answered {q}:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let kernel = cgroup_memory(&cgroup) as f64;
    assert!(
        working_set <= kernel * 2.0 && working_set >= kernel / 2.0,
        "working set {working_set} against the cgroup's {kernel}"
    );
    let killed = prometheus.query(&format!(r#"container_oom_events_total{{task="{oom}"}}"#));
    assert!(killed.is_some_and(|k| k >= 1.0), "{killed:?}");
    // The fleet dashboard's node panels run on what it scraped, and show the tasks.
    prometheus.runs_the_dashboard(
        Source::Node,
        &[
            "variable node",
            "\"Node CPU use\"",
            "\"Node memory in use\"",
            "\"CPU per container\"",
            "\"Memory working set per container\"",
            "\"Working set of the memory limit\"",
            "\"OOM kills\"",
            "\"Network received",
            "\"Desired tasks per node\"",
        ],
    );
    drop(prometheus);

    agent.kill();
    node.remove_all();
    node.assert_clean();
}
