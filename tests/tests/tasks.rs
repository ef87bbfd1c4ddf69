//! Tasks end to end: `flotilla task run` on a real control plane, a real agent converging with
//! real containers, stop reasons and exit codes reported back, and containers untouched by a
//! control plane crash.

use std::time::{Duration, Instant};

use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
    "command": ["sh", "-c", "echo started $GREETING; trap 'exit 3' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

const ONESHOT: &str = r#"{
  "family": "oneshot",
  "networkMode": "none",
  "containerDefinitions": [
    {"name": "side", "image": "test/busybox:latest", "memory": 32, "essential": false, "stopTimeout": 2,
     "command": ["sleep", "60"]},
    {"name": "main", "image": "test/busybox:latest", "memory": 32,
     "dependsOn": [{"containerName": "side", "condition": "START"}],
     "command": ["sh", "-c", "exit 7"]}
  ]
}"#;

/// An agent over `node`, enrolled with `cp` and in session.
fn agent_in_session(cp: &ControlPlane, node: &Node) -> Agent {
    let mut agent = Agent::for_node(node).with_run_args(&["--heartbeat", "5"]);
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    agent
}

fn tasks(cp: &ControlPlane) -> Vec<serde_json::Value> {
    serde_json::from_str(&cp.flotilla_ok(&["task", "ls", "-o", "json"])).expect("json")
}

#[test]
fn tasks_run_report_and_survive_a_control_plane_crash() {
    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    for (name, def) in [("serve.json", SERVE), ("oneshot.json", ONESHOT)] {
        let f = cp.scratch().join(name);
        std::fs::write(&f, def).expect("write");
        cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    }

    cp.flotilla_ok(&[
        "task",
        "run",
        "serve",
        "--count",
        "2",
        "--env",
        "GREETING=hello",
    ]);
    wait("2 running tasks", Duration::from_secs(30), || {
        tasks(&cp)
            .iter()
            .filter(|t| t["state"] == "RUNNING")
            .count()
            == 2
    });
    let running = node.ps();
    assert_eq!(
        running.iter().filter(|c| c["status"] == "running").count(),
        2
    );
    let pids: Vec<i64> = running
        .iter()
        .map(|c| c["pid"].as_i64().expect("pid"))
        .collect();
    let first = tasks(&cp)[0]["id"].as_str().expect("id").to_string();
    // Usage comes with the heartbeats (every 5 s here), from the container's cgroup.
    wait(
        "usage of the running container",
        Duration::from_secs(15),
        || {
            let t: serde_json::Value =
                serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &first])).expect("json");
            let u = &t["containers"][0]["usage"];
            u["memoryBytes"]
                .as_u64()
                .is_some_and(|m| m > 0 && m <= 32 << 20)
                && u["pids"].as_u64().is_some_and(|p| p >= 1)
        },
    );
    let name = format!("{first}-0");
    node.wait_for("output", Duration::from_secs(5), || {
        node.ctr_ok(&["logs", &name]).contains("started hello")
    });

    // The control plane crashes and comes back: nothing is restarted.
    cp.stop();
    std::thread::sleep(Duration::from_secs(2));
    cp.restart();
    agent.wait_log("session established", 2, Duration::from_secs(45));
    let after: Vec<i64> = node
        .ps()
        .iter()
        .map(|c| c["pid"].as_i64().expect("pid"))
        .collect();
    assert_eq!(after, pids, "containers were restarted");
    assert_eq!(
        tasks(&cp)
            .iter()
            .filter(|t| t["state"] == "RUNNING")
            .count(),
        2
    );

    // An operator stops one: exit code and reason come back, its container goes away.
    cp.flotilla_ok(&["task", "stop", &first]);
    wait("the task to stop", Duration::from_secs(20), || {
        let t: serde_json::Value =
            serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &first])).expect("json");
        t["state"] == "STOPPED"
    });
    let t: serde_json::Value =
        serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &first])).expect("json");
    assert_eq!(t["stopReason"], "stopped by an operator");
    assert_eq!(t["containers"][0]["exitCode"], 3, "{t}");
    node.wait_for(
        "the stopped task's container to be removed",
        Duration::from_secs(10),
        || node.ps().len() == 1,
    );

    // An essential container that exits ends its task; the others are stopped.
    let out = cp.flotilla_ok(&["task", "run", "oneshot", "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait("the oneshot task to stop", Duration::from_secs(30), || {
        let t: serde_json::Value =
            serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
        t["state"] == "STOPPED"
    });
    let t: serde_json::Value =
        serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
    assert_eq!(t["stopReason"], "essential container main exited", "{t}");
    let main = t["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "main")
        .expect("main")
        .clone();
    assert_eq!(main["exitCode"], 7);
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn after_a_reboot_without_control_plane_the_node_runs_its_tasks() {
    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    cp.flotilla_ok(&["task", "run", "serve"]);
    wait("a running task", Duration::from_secs(30), || {
        tasks(&cp).iter().any(|t| t["state"] == "RUNNING")
    });
    // Power cut: agent and containers gone, and the control plane unreachable at boot.
    cp.stop();
    agent.kill();
    node.remove_all();
    assert!(node.ps().is_empty());
    agent.run();
    node.wait_for(
        "the task to come back from the persisted desired state",
        Duration::from_secs(20),
        || node.ps().iter().any(|c| c["status"] == "running"),
    );
    assert_eq!(
        agent.log().matches("session established").count(),
        1,
        "only the session before the power cut: the node needed no control plane"
    );
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_node_can_only_report_on_its_own_tasks() {
    use flotilla_api::tasks::{TaskState, TaskStatus};
    use flotilla_api::{AgentReply, AgentRequest};
    use flotilla_certs::credential::Credential;
    use flotilla_tests::cluster::raw;

    let cp = ControlPlane::start(&[]);
    let a = Agent::new(&cp.scratch().join("a"));
    let b = Agent::new(&cp.scratch().join("b"));
    assert!(a.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    assert!(b.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let cred_a = Credential::load(&a.identity()).expect("a");
    let cred_b = Credential::load(&b.identity()).expect("b");
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    cp.flotilla_ok(&[
        "schedule",
        "create",
        "b-only",
        "--taskdef",
        "serve",
        "--cron",
        "@daily",
        "--node",
        &cred_b.name,
    ]);
    let out = cp.flotilla_ok(&["task", "run", "serve", "--node", &cred_b.name, "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    raw::runtime().block_on(async {
        let conn = raw::connect(cp.addr, raw::client_of(&cred_a))
            .await
            .expect("connect");
        raw::hello(&conn).await.expect("hello");
        let forged = AgentRequest::Report {
            tasks: vec![TaskStatus {
                id: id.clone(),
                state: TaskState::Stopped,
                stop_reason: Some("forged by another node".into()),
                stop_code: None,
                containers: Vec::new(),
                scheduled: None,
                network: None,
            }],
        };
        assert_eq!(raw::request(&conn, &forged).await, AgentReply::Recorded);
        // Nor can it claim runs of a schedule pinned to another node, whatever id it uses.
        for owner in [&cred_a.name, &cred_b.name] {
            let run = flotilla_api::tasks::ScheduledRun {
                schedule: "b-only".into(),
                fired_at: 1_800_000_000,
            };
            let claim = AgentRequest::Report {
                tasks: vec![TaskStatus {
                    id: flotilla_api::tasks::scheduled_task_id(owner, "b-only", run.fired_at),
                    state: TaskState::Running,
                    stop_reason: None,
                    stop_code: None,
                    containers: Vec::new(),
                    scheduled: Some(run),
                    network: None,
                }],
            };
            assert_eq!(raw::request(&conn, &claim).await, AgentReply::Recorded);
        }
    });
    let t: serde_json::Value =
        serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
    assert_eq!(t["state"], "PENDING", "node a changed node b's task: {t}");
    assert!(cp
        .log()
        .contains("report about a task of another node ignored"));
    assert!(cp
        .log()
        .contains("report of a run of a schedule not pinned to this node ignored"));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&cp.flotilla_ok(&["task", "ls", "-o", "json"])).expect("json");
    assert_eq!(all.len(), 1, "a forged run became a task: {all:?}");
}

const CHATTY: &str = r#"{
  "family": "chatty",
  "networkMode": "none",
  "containerDefinitions": [
    {"name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
     "command": ["sh", "-c", "echo hello from main; i=0; trap 'exit 0' TERM; while true; do i=$((i+1)); echo tick $i; sleep 0.2 & wait; done"]},
    {"name": "side", "image": "test/busybox:latest", "memory": 32, "essential": false, "stopTimeout": 2,
     "command": ["sh", "-c", "echo side says hi >&2; exec sleep 600"]}
  ]
}"#;

#[test]
fn logs_stream_from_the_node_over_its_session() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let f = cp.scratch().join("chatty.json");
    std::fs::write(&f, CHATTY).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let out = cp.flotilla_ok(&["task", "run", "chatty", "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait("the task to run and tick", Duration::from_secs(30), || {
        let o = cp.flotilla(&["logs", &id]);
        String::from_utf8_lossy(&o.stdout).contains("main | tick 2")
    });

    // Both containers, each line on the stream it was written to, named.
    let o = cp.flotilla(&["logs", &id]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stdout.starts_with("main | hello from main\n"), "{stdout}");
    assert!(stderr.contains("side | side says hi"), "{stderr}");
    assert!(!stdout.contains("side says hi"));

    // One container, its last line only.
    let last = cp.flotilla_ok(&["logs", &id, "--container", "main", "--tail", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.starts_with("tick "), "{last}");

    // A container the task does not have is named in the error with those it has.
    let bad = cp.flotilla(&["logs", &id, "--container", "nope"]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("no container 'nope' (it has main, side)"),
        "{msg}"
    );

    // Following: new lines arrive as written, and the stream ends when the task stops.
    let mut follow = Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["logs", &id, "-c", "main", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first: u32 = lines
        .next()
        .expect("a line")
        .expect("utf8")
        .trim_start_matches("tick ")
        .parse()
        .expect("tick N");
    for n in 1..=5 {
        let l = lines.next().expect("a followed line").expect("utf8");
        assert_eq!(l, format!("tick {}", first + n));
    }
    cp.flotilla_ok(&["task", "stop", &id]);
    let t = Instant::now();
    loop {
        if follow.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "logs -f did not end with the task"
        );
        // keep the pipe drained
        let _ = lines.next();
    }
    assert!(follow.wait().expect("wait").success());

    // A node that is not connected cannot be read.
    agent.kill();
    wait("the node to be seen gone", Duration::from_secs(30), || {
        cp.nodes()[0]["state"] == "DISCONNECTED"
    });
    let o = cp.flotilla(&["logs", &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not connected"));
    node.remove_all();
    node.assert_clean();
}

#[test]
fn task_volumes_bind_shared_and_task_scoped() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let host_dir = node.bind_roots[0].join("site");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    std::fs::write(host_dir.join("greeting"), "hello from the host\n").expect("greeting");
    let def = serde_json::json!({
        "family": "vols",
        "networkMode": "none",
        "volumes": [
            {"name": "cache", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true}},
            {"name": "scratch"},
            {"name": "site", "host": {"sourcePath": host_dir}}
        ],
        "containerDefinitions": [{
            "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
            "mountPoints": [
                {"sourceVolume": "cache", "containerPath": "/cache"},
                {"sourceVolume": "scratch", "containerPath": "/scratch"},
                {"sourceVolume": "site", "containerPath": "/site", "readOnly": true}
            ],
            "command": ["sh", "-c", "cat /site/greeting; echo kept > /cache/out; echo gone > /scratch/out; touch /site/x 2>/dev/null || echo site is read-only; echo done; exec sleep 600"]
        }]
    });
    let f = cp.scratch().join("vols.json");
    std::fs::write(&f, def.to_string()).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let out = cp.flotilla_ok(&["task", "run", "vols", "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait("the task's output", Duration::from_secs(30), || {
        cp.flotilla(&["logs", &id]).stdout.ends_with(b"done\n")
    });
    assert_eq!(
        cp.flotilla_ok(&["logs", &id]),
        "hello from the host\nsite is read-only\ndone\n"
    );
    let volumes: Vec<serde_json::Value> =
        serde_json::from_str(&node.ctr_ok(&["volume", "ls", "-o", "json"])).expect("json");
    let path_of = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["mountpoint"].as_str())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| panic!("no volume {name}: {volumes:?}"))
    };
    let cache = path_of("cache");
    let scratch = path_of(&format!("{id}-scratch"));
    assert_eq!(
        std::fs::read_to_string(cache.join("out")).expect("cache"),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("out")).expect("scratch"),
        "gone\n"
    );
    assert!(!host_dir.join("x").exists());

    // Stopped: the task's own volume goes, the shared one stays.
    cp.flotilla_ok(&["task", "stop", &id]);
    node.wait_for(
        "the task's volume to be removed",
        Duration::from_secs(20),
        || !scratch.exists(),
    );
    assert!(cache.join("out").exists());
    agent.kill();
    node.ctr_ok(&["volume", "rm", "cache"]);
    node.remove_all();
    node.assert_clean();
}

const HEALTHY: &str = r#"{
  "family": "healthy",
  "networkMode": "none",
  "containerDefinitions": [
    {"name": "db", "image": "test/busybox:latest", "memory": 32, "essential": false, "stopTimeout": 2,
     "healthCheck": {"command": ["CMD-SHELL", "test -f /tmp/ready"], "interval": 5, "timeout": 2, "retries": 2},
     "command": ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 600"]},
    {"name": "app", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
     "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}],
     "command": ["sh", "-c", "echo app started; exec sleep 600"]}
  ]
}"#;

#[test]
fn health_checks_gate_healthy_dependencies_and_are_reported() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let f = cp.scratch().join("healthy.json");
    std::fs::write(&f, HEALTHY).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let out = cp.flotilla_ok(&["task", "run", "healthy", "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let inspect = || -> serde_json::Value {
        serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json")
    };
    // app waits while db is only starting; it starts once db is healthy, never before.
    let mut saw_waiting = false;
    wait("app to run", Duration::from_secs(30), || {
        let t = inspect();
        let (db, app) = (&t["containers"][0], &t["containers"][1]);
        if db["health"] == "starting" && app["state"] == "pending" {
            saw_waiting = true;
        }
        if app["state"] == "running" {
            assert_eq!(
                db["health"], "healthy",
                "app started before db was healthy: {t}"
            );
            return true;
        }
        false
    });
    assert!(saw_waiting, "app was never seen waiting for db");
    assert_eq!(inspect()["state"], "RUNNING");

    // db stops passing its check: after 2 failures it is reported unhealthy.
    node.ctr_ok(&["exec", &format!("{id}-0"), "sh", "-c", "rm /tmp/ready"]);
    wait("db to turn unhealthy", Duration::from_secs(30), || {
        inspect()["containers"][0]["health"] == "unhealthy"
    });
    cp.flotilla_ok(&["task", "stop", &id]);
    wait("the task to stop", Duration::from_secs(20), || {
        inspect()["state"] == "STOPPED"
    });
    node.wait_for("containers removed", Duration::from_secs(10), || {
        node.ps().is_empty()
    });
    agent.kill();
    node.assert_clean();
}

const PROBED: &str = r#"{
  "family": "probed",
  "networkMode": "none",
  "containerDefinitions": [
    {"name": "web", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
     "healthCheck": {"command": ["HTTP", "http://localhost:8080/index.html"], "interval": 5, "retries": 1},
     "command": ["sh", "-c", "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]},
    {"name": "closed", "image": "test/busybox:latest", "memory": 16, "essential": false, "stopTimeout": 2,
     "healthCheck": {"command": ["TCP", "9999"], "interval": 5, "retries": 1},
     "command": ["sleep", "600"]}
  ]
}"#;

#[test]
fn http_and_tcp_checks_probe_from_inside_the_container() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let f = cp.scratch().join("probed.json");
    std::fs::write(&f, PROBED).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    // a check that would not run inside the container is refused where it is written
    let bad = PROBED.replace("http://localhost:8080", "http://example.org:8080");
    std::fs::write(&f, bad).expect("write");
    let o = cp.flotilla(&["taskdef", "register", f.to_str().expect("utf8")]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("$.containerDefinitions[0].healthCheck.command[1]")
            && msg.contains("use localhost"),
        "{msg}"
    );
    let out = cp.flotilla_ok(&["task", "run", "probed", "-o", "json"]);
    let id = serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait(
        "web healthy and closed unhealthy",
        Duration::from_secs(30),
        || {
            let t: serde_json::Value =
                serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
            t["containers"][0]["health"] == "healthy" && t["containers"][1]["health"] == "unhealthy"
        },
    );
    cp.flotilla_ok(&["task", "stop", &id]);
    node.wait_for("containers removed", Duration::from_secs(30), || {
        node.ps().is_empty()
    });
    agent.kill();
    node.assert_clean();
}
