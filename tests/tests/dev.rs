//! `flotilla dev` (README command 1) as a user runs it: a cluster comes up with the demo task
//! RUNNING, `flotilla task ls` and `flotilla logs` show it, Ctrl-C — sent to the whole
//! foreground process group, as a terminal does — or a closed terminal leaves no process,
//! container, mount or cgroup behind, also with a service running, and a second run reuses the
//! same cluster and brings the service back. In it, a bridge task reaches services by their DNS
//! names — also one of another namespace as `NAME.NAMESPACE` — and by their VIP.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::ops::{NodeInfo, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::free_port;
use flotilla_tests::node::Node;

/// One dev cluster at a time: each makes the bridge `flotilla0` and the nft table `ip flotilla`,
/// and the tests compare the host's links and tables before and after.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(node: &Node, home: &std::path::Path, port: u16) -> Self {
        // The host's daemon configuration (here named through the environment, as
        // /etc/flotilla/*.toml would be found) never reaches the dev cluster's daemons: this
        // one would stop them.
        let host_config = home.join("host-daemon.toml");
        std::fs::write(&host_config, "not_a_key = 1\n").expect("host config");
        let mut child = Command::new(flotilla_tests::bin("flotilla"))
            .env("HOME", home)
            .env_remove("FLOTILLA_CONFIG")
            .env("ORCHESTRATORD_CONFIG", &host_config)
            .env("NODEAGENT_CONFIG", &host_config)
            .arg("dev")
            .arg("--data-dir")
            .arg(node.scratch())
            .args([
                "--port",
                &port.to_string(),
                "--cgroup-parent",
                &node.cgroup_parent,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A job of its own, as a shell starts it in a terminal.
            .process_group(0)
            .spawn()
            .expect("flotilla dev");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `what`; returns it.
    fn expect(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "flotilla dev never said '{what}'; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it; waits
    /// for a clean exit.
    fn interrupt(&mut self) {
        self.signal_group(rustix::process::Signal::INT);
    }

    /// The terminal closed: SIGHUP to the process group; waits for a clean exit.
    fn hang_up(&mut self) {
        self.signal_group(rustix::process::Signal::HUP);
    }

    fn signal_group(&mut self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process_group(pid, signal).expect("signal");
        self.expect(
            "stopped: nothing of the dev cluster is left running",
            Duration::from_secs(60),
        );
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "flotilla dev exited {status}");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            }
            let _ = self.child.wait();
        }
    }
}

fn flotilla(home: &std::path::Path, args: &[&str]) -> String {
    let mut c = Command::new(flotilla_tests::bin("flotilla"));
    c.args(args);
    as_operator(c, home, &format!("flotilla {args:?}"))
}

/// The standard output of `c` run as the operator whose home is `home` (the dev cluster's
/// credential in the default place), failing the test when it fails.
fn as_operator(mut c: Command, home: &std::path::Path, what: &str) -> String {
    let o = c
        .env("HOME", home)
        .env_remove("FLOTILLA_CONFIG")
        .output()
        .expect(what);
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The task id in "… demo task t-… RUNNING …".
fn demo_task(banner: &str) -> String {
    banner
        .split_whitespace()
        .skip_while(|w| *w != "task")
        .nth(1)
        .expect("task id")
        .to_string()
}

fn links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect()
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_nothing_left(node: &Node) {
    assert_eq!(
        node.leftover_processes(),
        Vec::<String>::new(),
        "processes left"
    );
    assert!(node.ps().is_empty(), "containers left: {:?}", node.ps());
    node.assert_clean();
}

/// The README's *Your first task*, as a newcomer follows it in the dev cluster: the task
/// definition registers, runs, serves its host name on the published port and stops quickly.
/// Its host port is swapped for a free one so that the test never takes a port the machine uses.
fn readme_first_task(node: &Node, home: &std::path::Path) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let section = readme
        .split("## Your first task")
        .nth(1)
        .expect("the README has a section 'Your first task'");
    let json = section
        .split("```json\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a JSON block");
    let port = free_port();
    assert!(json.contains("\"hostPort\": 8080"), "{json}");
    // The daemons' own configuration files, with a word on what they are.
    for daemon in ["orchestratord", "nodeagent"] {
        let path = node.scratch().join(format!("{daemon}.toml"));
        let text = std::fs::read_to_string(&path).expect("a dev daemon's config");
        assert!(text.contains("is not read for this cluster"), "{text}");
    }
    let file = node.scratch().join("web.json");
    std::fs::write(
        &file,
        json.replace("\"hostPort\": 8080", &format!("\"hostPort\": {port}")),
    )
    .expect("write");
    assert_eq!(
        flotilla(home, &["taskdef", "register", file.to_str().expect("utf8")]).trim(),
        "web:1"
    );
    let out = flotilla(home, &["task", "run", "web"]);
    let task = out.split_whitespace().next().expect("task id").to_string();
    let mut body = String::new();
    flotilla_tests::wait("the web task to answer", Duration::from_secs(30), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        body.clear();
        s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.starts_with("HTTP/1.")
            && body.lines().next().is_some_and(|l| l.contains(" 200 "))
    });
    // The container's host name: its short id, as Docker names a container's host.
    let name = body.lines().last().unwrap_or_default();
    assert!(
        name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{body}"
    );
    let asked = std::time::Instant::now();
    flotilla(home, &["task", "stop", &task]);
    flotilla_tests::wait("the web task to stop", Duration::from_secs(20), || {
        let ls: Vec<TaskInfo> =
            serde_json::from_str(&flotilla(home, &["task", "ls", "-o", "json"])).expect("json");
        ls.iter()
            .any(|t| t.id == task && t.state == TaskState::Stopped)
    });
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the README's task took {:?} to stop",
        asked.elapsed()
    );

    // Its service: the README's lines as a shell runs them, `flotilla` being the one built.
    let block = section
        .split("```sh\n")
        .nth(2)
        .and_then(|s| s.split("```").next())
        .expect("a second shell block: the service");
    let lines: Vec<&str> = block
        .lines()
        .map(|l| l.split("  #").next().unwrap_or(l).trim())
        .collect();
    assert_eq!(
        lines,
        [
            r#"echo '{"serviceName": "web", "taskDefinition": "web", "desiredCount": 1}' | flotilla service create -"#,
            "flotilla service ls",
            "flotilla service rm web",
        ]
    );
    let sh = |line: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(line.replace(
            "flotilla ",
            &format!("{} ", flotilla_tests::bin("flotilla").display()),
        ));
        as_operator(c, home, line)
    };
    sh(lines[0]);
    // NAME MODE TASK DEFINITION DESIRED RUNNING …, as the README's comment reads.
    let running = |shown: &str| {
        let row: Vec<&str> = shown
            .lines()
            .find(|l| l.starts_with("web "))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        row.get(..5) == Some(&["web", "REPLICA", "web:1", "1", "1"][..])
    };
    let started = std::time::Instant::now();
    let mut shown = sh(lines[1]);
    while !running(&shown) {
        assert!(
            started.elapsed() < flotilla_tests::patient(Duration::from_secs(30)),
            "the service's task never RUNNING:\n{shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
        shown = sh(lines[1]);
    }
    sh(lines[2]);
    flotilla_tests::wait(
        "the service's task to stop",
        Duration::from_secs(20),
        || {
            let ls: Vec<TaskInfo> =
                serde_json::from_str(&flotilla(home, &["task", "ls", "-o", "json"])).expect("json");
            ls.iter().any(|t| t.service() == Some("web"))
                && ls
                    .iter()
                    .filter(|t| t.service() == Some("web"))
                    .all(|t| t.state == TaskState::Stopped)
        },
    );
}

#[test]
fn the_dev_cluster_runs_the_demo_and_leaves_nothing_behind() {
    let _one = serial();
    let node = Node::bare();
    let home = node.scratch().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = free_port();
    let (links_before, nft_before) = (links(), nft_tables());

    let mut dev = Dev::start(&node, &home, port);
    let banner = dev.expect("RUNNING", Duration::from_secs(60));
    let task = demo_task(&banner);
    dev.expect(
        "Ctrl-C (or closing this terminal) stops",
        Duration::from_secs(5),
    );
    // The commands it prints work as printed (its credential went to the default place).
    let exe = flotilla_tests::bin("flotilla")
        .canonicalize()
        .expect("path");
    assert!(
        dev.seen
            .iter()
            .any(|l| l.contains("admin credential in ~/.config/flotilla")),
        "{:?}",
        dev.seen
    );
    let ls_line = format!("{} task ls", exe.display());
    assert!(
        dev.seen.iter().any(|l| l.trim() == ls_line),
        "{:?}",
        dev.seen
    );
    let ls: Vec<TaskInfo> =
        serde_json::from_str(&flotilla(&home, &["task", "ls", "-o", "json"])).expect("json");
    assert!(
        ls.iter()
            .any(|t| t.id == task && t.state == TaskState::Running),
        "{ls:?}"
    );
    let logs = flotilla(&home, &["logs", &task, "--tail", "1"]);
    assert!(
        logs.starts_with("hello from Flotilla task container"),
        "{logs}"
    );
    let before: Vec<NodeInfo> =
        serde_json::from_str(&flotilla(&home, &["node", "ls", "-o", "json"])).expect("json");
    readme_first_task(&node, &home);

    // A second `flotilla dev` on the same data directory is refused before it touches anything:
    // the first cluster's node stays in service.
    let second = Command::new(flotilla_tests::bin("flotilla"))
        .env("HOME", &home)
        .env_remove("FLOTILLA_CONFIG")
        .arg("dev")
        .arg("--data-dir")
        .arg(node.scratch())
        .args(["--port", &free_port().to_string()])
        .args(["--cgroup-parent", &node.cgroup_parent])
        .stdin(Stdio::null())
        .output()
        .expect("a second flotilla dev");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(
        said.contains("already running") && said.contains(&format!("pid {}", dev.child.id())),
        "{said}"
    );
    // So is one on another data directory and port: the two nodes would share the host's
    // bridge, nftables table and bridge subnets. It makes nothing in its data directory.
    let elsewhere = node.scratch().join("elsewhere");
    let second = Command::new(flotilla_tests::bin("flotilla"))
        .env("HOME", &home)
        .env_remove("FLOTILLA_CONFIG")
        .arg("dev")
        .arg("--data-dir")
        .arg(&elsewhere)
        .args(["--port", &free_port().to_string()])
        .args(["--cgroup-parent", &node.cgroup_parent])
        .stdin(Stdio::null())
        .output()
        .expect("a flotilla dev elsewhere");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(
        said.contains("already running on this host")
            && said.contains(&format!(
                "pid {}, data dir {}",
                dev.child.id(),
                node.scratch().display()
            )),
        "{said}"
    );
    assert!(
        !elsewhere.exists(),
        "the refused one made its data directory"
    );
    let nodes: Vec<NodeInfo> =
        serde_json::from_str(&flotilla(&home, &["node", "ls", "-o", "json"])).expect("json");
    assert_eq!(nodes[0].state.to_string(), "READY", "{nodes:?}");

    dev.interrupt();
    assert_nothing_left(&node);
    assert_eq!(links(), links_before, "network links left");
    assert_eq!(nft_tables(), nft_before, "nft tables left");

    // Again: the same cluster and node, a fresh demo task. A service of two is created; Ctrl-C
    // stops its tasks too (none is replaced while the cluster stops).
    let mut dev = Dev::start(&node, &home, port);
    let again = dev.expect("RUNNING", Duration::from_secs(60));
    assert_ne!(demo_task(&again), task);
    let nodes: Vec<NodeInfo> =
        serde_json::from_str(&flotilla(&home, &["node", "ls", "-o", "json"])).expect("json");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, before[0].id, "the node joined again");
    let spec = node.scratch().join("hello.json");
    std::fs::write(
        &spec,
        r#"{"serviceName":"hello","taskDefinition":"demo","desiredCount":2}"#,
    )
    .expect("write");
    flotilla(&home, &["service", "create", spec.to_str().expect("utf8")]);
    let running = |home: &std::path::Path| {
        let ls: Vec<TaskInfo> =
            serde_json::from_str(&flotilla(home, &["task", "ls", "-o", "json"])).expect("json");
        ls.iter()
            .filter(|t| t.started_by.as_deref() == Some("service:hello"))
            .filter(|t| t.state == TaskState::Running)
            .count()
    };
    flotilla_tests::wait("the service's two tasks", Duration::from_secs(30), || {
        running(&home) == 2
    });
    dev.interrupt();
    assert_nothing_left(&node);

    // And again: the service's tasks come back; then the terminal closes.
    let mut dev = Dev::start(&node, &home, port);
    dev.expect("RUNNING", Duration::from_secs(60));
    flotilla_tests::wait("the service's tasks back", Duration::from_secs(30), || {
        running(&home) == 2
    });
    dev.hang_up();
    assert_nothing_left(&node);

    // Ctrl-C while it is still starting stops what had started, nothing more.
    for delay in [50, 300] {
        let mut dev = Dev::start(&node, &home, port);
        std::thread::sleep(Duration::from_millis(delay));
        dev.interrupt();
        assert_nothing_left(&node);
    }
}

/// Writes `json` to `name` in `dir` and registers it as a task definition.
fn register(home: &std::path::Path, dir: &std::path::Path, name: &str, json: &str) {
    let path = dir.join(name);
    std::fs::write(&path, json).expect("write");
    flotilla(home, &["taskdef", "register", path.to_str().expect("utf8")]);
}

/// busybox httpd on port 80 answering `body`, in a bridge task of the demo image; published on
/// `host_port` (0: a dynamic one).
fn httpd_def(family: &str, body: &str, host_port: u16) -> String {
    format!(
        r#"{{"family": "{family}", "networkMode": "bridge", "containerDefinitions": [{{
  "name": "web", "image": "demo/busybox:latest", "memory": 16, "stopTimeout": 2,
  "portMappings": [{{"containerPort": 80, "hostPort": {host_port}}}],
  "command": ["sh", "-c", "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www"]
}}]}}"#
    )
}

/// In a real `flotilla dev` (its node's address is 127.0.0.1), a bridge task reaches a service
/// by its DNS name (`web.shop.flotilla.internal`, and as Kubernetes' `web.shop`) and by its VIP,
/// and a service without a VIP, of another namespace, by its name (`api.other`, answered with
/// the node as the task reaches it) and host port; then Ctrl-C leaves nothing behind.
#[test]
fn a_bridge_task_in_the_dev_cluster_reaches_services_by_name_and_by_vip() {
    let _one = serial();
    let node = Node::bare();
    let home = node.scratch().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = free_port();
    let (links_before, nft_before) = (links(), nft_tables());
    let mut dev = Dev::start(&node, &home, port);
    dev.expect("RUNNING", Duration::from_secs(60));
    let defs = node.scratch();

    let api_port = free_port();
    register(&home, defs, "web.json", &httpd_def("web", "WEB-BODY", 0));
    register(
        &home,
        defs,
        "api.json",
        &httpd_def("api", "API-BODY", api_port),
    );
    let services = [
        (
            "web",
            r#"{"serviceName": "web", "taskDefinition": "web", "desiredCount": 1,
                "discovery": {"namespace": "shop", "vip": true}}"#,
        ),
        (
            "api",
            r#"{"serviceName": "api", "taskDefinition": "api", "desiredCount": 1,
                "discovery": {"namespace": "other"}}"#,
        ),
    ];
    for (name, spec) in services {
        let path = defs.join(format!("{name}-service.json"));
        std::fs::write(&path, spec).expect("write");
        flotilla(&home, &["service", "create", path.to_str().expect("utf8")]);
    }
    let endpoints = |name: &str| -> DiscoveredService {
        serde_json::from_str(&flotilla(
            &home,
            &["service", "endpoints", name, "-o", "json"],
        ))
        .expect("json")
    };
    let mut web = endpoints("web");
    flotilla_tests::wait("both services registered", Duration::from_secs(60), || {
        web = endpoints("web");
        web.vip.is_some() && web.endpoints.len() == 1 && endpoints("api").endpoints.len() == 1
    });
    let vip = web.vip.expect("vip");

    // A bridge task of no namespace fetches each URL until all answer (the nodes' rules and
    // names follow the registry within a push), then prints what each gave.
    let urls = [
        ("BY-NAME", "http://web.shop.flotilla.internal/".to_string()),
        ("BY-SVC-NS", "http://web.shop/".to_string()),
        ("BY-VIP", format!("http://{vip}/")),
        ("OTHER-NS", format!("http://api.other:{api_port}/")),
        (
            "OTHER-FQDN",
            format!("http://api.other.flotilla.internal:{api_port}/"),
        ),
    ];
    let fetch_all = urls
        .iter()
        .map(|(_, u)| format!("wget -q -O /dev/null {u}"))
        .collect::<Vec<_>>()
        .join(" && ");
    let print_all = urls
        .iter()
        .map(|(k, u)| format!("echo {k}=$(wget -q -O - {u})"))
        .collect::<Vec<_>>()
        .join("; ");
    let script = format!(
        "for i in $(seq 60); do if {fetch_all}; then {print_all}; echo DONE; break; fi; sleep 1; done; trap 'exit 0' TERM; sleep 3600 & wait"
    );
    register(
        &home,
        defs,
        "client.json",
        &format!(
            r#"{{"family": "client", "networkMode": "bridge", "containerDefinitions": [{{
  "name": "main", "image": "demo/busybox:latest", "memory": 16, "stopTimeout": 2,
  "command": {}
}}]}}"#,
            serde_json::json!(["sh", "-c", script])
        ),
    );
    let placed: Vec<TaskInfo> =
        serde_json::from_str(&flotilla(&home, &["task", "run", "client", "-o", "json"]))
            .expect("json");
    let client = placed[0].id.clone();
    let mut logs = String::new();
    flotilla_tests::wait(
        "the client reached every URL",
        Duration::from_secs(90),
        || {
            logs = flotilla(&home, &["logs", &client]);
            logs.contains("DONE")
        },
    );
    for (key, body) in [
        ("BY-NAME", "WEB-BODY"),
        ("BY-SVC-NS", "WEB-BODY"),
        ("BY-VIP", "WEB-BODY"),
        ("OTHER-NS", "API-BODY"),
        ("OTHER-FQDN", "API-BODY"),
    ] {
        assert!(
            logs.lines().any(|l| l.trim() == format!("{key}={body}")),
            "{key}: {logs}"
        );
    }

    dev.interrupt();
    assert_nothing_left(&node);
    assert_eq!(links(), links_before, "network links left");
    assert_eq!(nft_tables(), nft_before, "nft tables left");
}
