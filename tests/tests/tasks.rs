//! Tasks end to end: `flotilla task run` on a real control plane, a real agent converging with
//! real containers, stop reasons and exit codes reported back, and containers untouched by a
//! control plane crash.

use std::time::{Duration, Instant};

use flotilla_api::ops::{NodeState, TaskInfo};
use flotilla_api::tasks::{ContainerState, HealthStatus, TaskState};
use flotilla_runtime::container::Status;
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

// One of the longest here: its name (libtest starts tests in name order) starts it first.
#[test]
fn a_task_runs_reports_and_survives_a_control_plane_crash() {
    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
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
        cp.tasks()
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count()
            == 2
    });
    let running = node.ps();
    assert_eq!(
        running
            .iter()
            .filter(|c| c.status == Status::Running)
            .count(),
        2
    );
    let pids: Vec<Option<i32>> = running.iter().map(|c| c.pid()).collect();
    assert!(pids.iter().all(Option::is_some), "{running:?}");
    let first = cp.tasks()[0].id.clone();
    // Usage comes with the heartbeats (every 5 s here), from the container's cgroup.
    wait(
        "usage of the running container",
        Duration::from_secs(15),
        || {
            cp.task(&first)
                .containers
                .first()
                .and_then(|c| c.usage.as_ref())
                .is_some_and(|u| u.memory_bytes > 0 && u.memory_bytes <= 32 << 20 && u.pids >= 1)
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
    let after: Vec<Option<i32>> = node.ps().iter().map(|c| c.pid()).collect();
    assert_eq!(after, pids, "containers were restarted");
    assert_eq!(
        cp.tasks()
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count(),
        2
    );

    // An operator stops one: exit code and reason come back, its container goes away.
    cp.flotilla_ok(&["task", "stop", &first]);
    wait("the task to stop", Duration::from_secs(20), || {
        cp.task(&first).state == TaskState::Stopped
    });
    let t = cp.task(&first);
    assert_eq!(t.stop_reason.as_deref(), Some("stopped by an operator"));
    assert_eq!(
        t.containers.first().and_then(|c| c.exit_code),
        Some(3),
        "{t:?}"
    );
    node.wait_for(
        "the stopped task's container to be removed",
        Duration::from_secs(10),
        || node.ps().len() == 1,
    );

    // An essential container that exits ends its task; the others are stopped.
    let id = cp.run_one("oneshot");
    wait("the oneshot task to stop", Duration::from_secs(30), || {
        cp.task(&id).state == TaskState::Stopped
    });
    let t = cp.task(&id);
    assert_eq!(
        t.stop_reason.as_deref(),
        Some("essential container main exited"),
        "{t:?}"
    );
    let main = t
        .containers
        .iter()
        .find(|c| c.name == "main")
        .expect("main");
    assert_eq!(main.exit_code, Some(7));
    // Its containers gone to the last directory before the agent is killed: only the running
    // task's are left.
    let kept: Vec<String> = node
        .ps()
        .into_iter()
        .filter(|c| c.status == Status::Running)
        .map(|c| c.record.id)
        .collect();
    node.wait_for(
        "the oneshot task's containers to go",
        Duration::from_secs(10),
        || {
            node.leftover_state()
                .iter()
                .all(|s| kept.iter().any(|id| s.ends_with(id.as_str())))
        },
    );
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn after_a_reboot_without_control_plane_the_node_runs_its_tasks() {
    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    cp.flotilla_ok(&["task", "run", "serve"]);
    wait("a running task", Duration::from_secs(30), || {
        cp.tasks().iter().any(|t| t.state == TaskState::Running)
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
        || node.ps().iter().any(|c| c.status == Status::Running),
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
    // B reports its resources once (a node that never did takes no task: its room is unknown).
    raw::runtime().block_on(async {
        let conn = raw::in_session(cp.addr, &cred_b).await;
        conn.close(0u32.into(), b"done");
    });
    let placed: Vec<TaskInfo> = cp.flotilla_json(&["task", "run", "serve", "--node", &cred_b.name]);
    let id = placed[0].id.clone();
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
    let t = cp.task(&id);
    assert_eq!(
        t.state,
        TaskState::Pending,
        "node a changed node b's task: {t:?}"
    );
    assert!(cp
        .log()
        .contains("report about a task of another node ignored"));
    assert!(cp
        .log()
        .contains("report of a run of a schedule not pinned to this node ignored"));
    let all = cp.tasks();
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
    let mut agent = Agent::in_session(&cp, &node);
    let f = cp.scratch().join("chatty.json");
    std::fs::write(&f, CHATTY).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let id = cp.run_one("chatty");
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
        cp.nodes()[0].state == NodeState::Disconnected
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
    let mut agent = Agent::in_session(&cp, &node);
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
    let id = cp.run_one("vols");
    wait("the task's output", Duration::from_secs(30), || {
        cp.flotilla(&["logs", &id]).stdout.ends_with(b"done\n")
    });
    assert_eq!(
        cp.flotilla_ok(&["logs", &id]),
        "hello from the host\nsite is read-only\ndone\n"
    );
    let volumes: Vec<flotilla_runtime::container::Volume> =
        serde_json::from_str(&node.ctr_ok(&["volume", "ls", "-o", "json"])).expect("json");
    let path_of = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.mountpoint.clone())
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
    let mut agent = Agent::in_session(&cp, &node);
    let f = cp.scratch().join("healthy.json");
    std::fs::write(&f, HEALTHY).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let id = cp.run_one("healthy");
    // app waits while db is only starting; it starts once db is healthy, never before.
    let mut saw_waiting = false;
    wait("app to run", Duration::from_secs(30), || {
        let t = cp.task(&id);
        // Nothing reported yet: no containers.
        let (Some(db), Some(app)) = (t.containers.first(), t.containers.get(1)) else {
            return false;
        };
        if db.health == Some(HealthStatus::Starting) && app.state == ContainerState::Pending {
            saw_waiting = true;
        }
        if app.state == ContainerState::Running {
            assert_eq!(
                db.health,
                Some(HealthStatus::Healthy),
                "app started before db was healthy: {t:?}"
            );
            return true;
        }
        false
    });
    assert!(saw_waiting, "app was never seen waiting for db");
    assert_eq!(cp.task(&id).state, TaskState::Running);

    // db stops passing its check: after 2 failures it is reported unhealthy.
    node.ctr_ok(&["exec", &format!("{id}-0"), "sh", "-c", "rm /tmp/ready"]);
    wait("db to turn unhealthy", Duration::from_secs(30), || {
        cp.task(&id).containers.first().and_then(|c| c.health) == Some(HealthStatus::Unhealthy)
    });
    cp.flotilla_ok(&["task", "stop", &id]);
    wait("the task to stop", Duration::from_secs(20), || {
        cp.task(&id).state == TaskState::Stopped
    });
    // Gone to the last directory and cgroup before the agent is killed.
    node.wait_removed(Duration::from_secs(10));
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
    let mut agent = Agent::in_session(&cp, &node);
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
    let id = cp.run_one("probed");
    wait(
        "web healthy and closed unhealthy",
        Duration::from_secs(30),
        || {
            let t = cp.task(&id);
            let health: Vec<_> = t.containers.iter().map(|c| c.health).collect();
            health == [Some(HealthStatus::Healthy), Some(HealthStatus::Unhealthy)]
        },
    );
    cp.flotilla_ok(&["task", "stop", &id]);
    // Gone to the last directory and cgroup before the agent is killed.
    node.wait_removed(Duration::from_secs(30));
    agent.kill();
    node.assert_clean();
}

/// `flotilla … -o json` and `-o yaml` of the same command, each decoded.
fn both<T: serde::de::DeserializeOwned>(cp: &ControlPlane, args: &[&str]) -> (T, T) {
    let run = |format: &str| {
        let mut a = args.to_vec();
        a.extend(["-o", format]);
        cp.flotilla_ok(&a)
    };
    let (json, yaml) = (run("json"), run("yaml"));
    (
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{args:?} -o json: {e}\n{json}")),
        yaml_serde::from_str(&yaml).unwrap_or_else(|e| panic!("{args:?} -o yaml: {e}\n{yaml}")),
    )
}

/// A stream printed with `-o yaml`: one document per record, each after `---`.
fn yaml_records<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    assert!(text.is_empty() || text.starts_with("---\n"), "{text}");
    yaml_serde::Deserializer::from_str(text)
        .map(|d| T::deserialize(d).unwrap_or_else(|e| panic!("{e}:\n{text}")))
        .collect()
}

/// A stream printed with `-o json`: one object per line.
fn json_records<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_command_prints_its_answer_as_json_and_yaml() {
    use flotilla_api::discovery::DiscoveredService;
    use flotilla_api::ops::{
        AdminCredential, Event, NodeInfo, TaskDefRegistered, TaskDefRevision, TokenCreated,
        TokenInfo,
    };
    use flotilla_api::schedule::ScheduleInfo;
    use flotilla_api::service::{ServiceCreated, ServiceInfo};
    use flotilla_api::tasks::DesiredStatus;
    use flotilla_api::LogLine;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_in_service(&cp);
    let id = cp.nodes()[0].id.clone();
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    let r: TaskDefRegistered =
        cp.flotilla_json(&["taskdef", "register", f.to_str().expect("utf8")]);
    assert_eq!((r.family.as_str(), r.revision), ("serve", 1));

    // Tokens: created (the secret once), listed, removed.
    let (a, b): (TokenCreated, TokenCreated) = both(&cp, &["token", "create", "--ttl", "10m"]);
    assert!(a.token.starts_with("FLT1-") && b.token.starts_with("FLT1-"));
    let (json, yaml): (Vec<TokenInfo>, Vec<TokenInfo>) = both(&cp, &["token", "ls"]);
    assert_eq!(json, yaml);
    assert_eq!(json, cp.api().tokens().expect("tokens"));
    let removed: Vec<String> = cp.flotilla_json(&["token", "rm", &a.info.id]);
    assert_eq!(removed, [a.info.id.as_str()]);

    // Nodes: the list, one node (JSON unless YAML is asked for), a change.
    let (json, yaml): (Vec<NodeInfo>, Vec<NodeInfo>) = both(&cp, &["node", "ls"]);
    assert_eq!(
        (json[0].id.as_str(), yaml[0].id.as_str()),
        (id.as_str(), id.as_str())
    );
    let plain: NodeInfo =
        serde_json::from_str(&cp.flotilla_ok(&["node", "inspect", &id])).expect("JSON");
    let (json, yaml): (NodeInfo, NodeInfo) = both(&cp, &["node", "inspect", &id]);
    assert_eq!(
        (plain.state, json.state, yaml.state),
        (NodeState::Ready, NodeState::Ready, NodeState::Ready)
    );
    let labelled: NodeInfo =
        yaml_serde::from_str(&cp.flotilla_ok(&["node", "label", &id, "site=a", "-o", "yaml"]))
            .expect("YAML");
    assert_eq!(labelled.labels.get("site").map(String::as_str), Some("a"));

    // Task definitions.
    let (json, yaml): (Vec<TaskDefRevision>, Vec<TaskDefRevision>) = both(&cp, &["taskdef", "ls"]);
    assert_eq!(json, yaml);
    let plain: TaskDefRevision =
        serde_json::from_str(&cp.flotilla_ok(&["taskdef", "inspect", "serve"])).expect("JSON");
    let (json, yaml): (TaskDefRevision, TaskDefRevision) =
        both(&cp, &["taskdef", "inspect", "serve"]);
    assert_eq!((&plain, &json), (&yaml, &yaml));
    assert_eq!(plain, cp.api().taskdef("serve").expect("serve"));

    // Tasks: run, list, inspect, logs, stop.
    let (json, yaml): (Vec<TaskInfo>, Vec<TaskInfo>) = both(&cp, &["task", "run", "serve"]);
    let task = json[0].id.clone();
    cp.flotilla_ok(&["task", "stop", &yaml[0].id]);
    wait("the task to run", Duration::from_secs(30), || {
        cp.task(&task).state == TaskState::Running
    });
    let (json, yaml): (Vec<TaskInfo>, Vec<TaskInfo>) = both(&cp, &["task", "ls"]);
    assert_eq!(json.len(), 2);
    assert!(yaml
        .iter()
        .any(|t| t.id == task && t.state == TaskState::Running));
    let plain: TaskInfo =
        serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &task])).expect("JSON");
    let (json, yaml): (TaskInfo, TaskInfo) = both(&cp, &["task", "inspect", &task]);
    assert_eq!(
        (plain.id, json.id, yaml.state),
        (task.clone(), task.clone(), TaskState::Running)
    );
    let mut lines = Vec::new();
    wait("the task's first line", Duration::from_secs(10), || {
        lines = json_records::<LogLine>(&cp.flotilla_ok(&["logs", &task, "-o", "json"]));
        !lines.is_empty()
    });
    assert_eq!(
        (
            lines[0].container.as_str(),
            lines[0].stream.as_str(),
            lines[0].text.as_str()
        ),
        ("main", "stdout", "started")
    );
    let yaml: Vec<LogLine> = yaml_records(&cp.flotilla_ok(&["logs", &task, "-o", "yaml"]));
    assert_eq!(yaml[0], lines[0]);

    // Services and schedules.
    let svc = cp.scratch().join("web.json");
    std::fs::write(
        &svc,
        r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 0,
            "discovery": {"namespace": "test"}}"#,
    )
    .expect("write");
    let created: ServiceCreated = yaml_serde::from_str(&cp.flotilla_ok(&[
        "service",
        "create",
        svc.to_str().expect("utf8"),
        "-o",
        "yaml",
    ]))
    .expect("YAML");
    assert_eq!(created.service.spec.service_name, "web");
    wait(
        "the service's deployment to complete",
        Duration::from_secs(30),
        || {
            cp.service("web")
                .deployments
                .first()
                .is_some_and(|d| d.rollout_state == flotilla_api::service::RolloutState::Completed)
        },
    );
    let (json, yaml): (Vec<ServiceInfo>, Vec<ServiceInfo>) = both(&cp, &["service", "ls"]);
    assert_eq!(json, yaml);
    let (json, yaml): (ServiceInfo, ServiceInfo) = both(&cp, &["service", "inspect", "web"]);
    assert_eq!(json, yaml);
    let (json, yaml): (DiscoveredService, DiscoveredService) =
        both(&cp, &["service", "endpoints", "web"]);
    assert_eq!(
        (json.fqdn(), yaml.endpoints.len()),
        ("web.test.flotilla.internal".into(), 0)
    );
    let s: ScheduleInfo = yaml_serde::from_str(&cp.flotilla_ok(&[
        "schedule",
        "create",
        "nightly",
        "--taskdef",
        "serve",
        "--cron",
        "0 2 * * *",
        "-o",
        "yaml",
    ]))
    .expect("YAML");
    assert_eq!(s.spec.task_definition, "serve:1");
    let (json, yaml): (Vec<ScheduleInfo>, Vec<ScheduleInfo>) = both(&cp, &["schedule", "ls"]);
    assert_eq!(json, yaml);
    let (json, yaml): (ScheduleInfo, ScheduleInfo) = both(&cp, &["schedule", "inspect", "nightly"]);
    assert_eq!((&json, &yaml), (&s, &s));
    let removed: Vec<String> =
        yaml_serde::from_str(&cp.flotilla_ok(&["schedule", "rm", "nightly", "-o", "yaml"]))
            .expect("YAML");
    assert_eq!(removed, ["nightly"]);
    let removed: Vec<String> = cp.flotilla_json(&["service", "rm", "web"]);
    assert_eq!(removed, ["web"]);

    // An operator: the answer (certificate and CA), the credential written.
    let bob = cp.scratch().join("bob");
    let c: AdminCredential = cp.flotilla_json(&[
        "admin",
        "issue",
        "bob",
        "--out",
        bob.to_str().expect("utf8"),
    ]);
    assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(bob.join("key.pem").exists());

    // Events, a page and followed: one JSON object per line, or one YAML document each.
    let json: Vec<Event> = json_records(&cp.flotilla_ok(&["events", "--limit", "5", "-o", "json"]));
    let yaml: Vec<Event> = yaml_records(&cp.flotilla_ok(&["events", "--limit", "5", "-o", "yaml"]));
    assert_eq!(json.len(), 5);
    assert_eq!(json, yaml);
    assert_eq!(json, cp.api().events(0, 5).expect("events"));
    let mut follow = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["events", "-f", "--since", "3", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flotilla events -f");
    let mut out = std::io::BufReader::new(follow.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("a line");
    let _ = follow.kill();
    let _ = follow.wait();
    let e: Event = serde_json::from_str(&first).expect("one event per line");
    assert_eq!(e.seq, 4);
    // `-o wide`: more columns for tasks and nodes, the plain ones first.
    let wide = cp.flotilla_ok(&["task", "ls", "-o", "wide"]);
    let head = wide.lines().next().unwrap_or_default();
    for column in [
        "ID",
        "NODE",
        "SERVICE",
        "ADDRESS",
        "PORTS",
        "CONTAINERS",
        "RESTARTS",
    ] {
        assert!(head.contains(column), "{wide}");
    }
    let row = wide
        .lines()
        .find(|l| l.starts_with(task.as_str()))
        .unwrap_or_else(|| panic!("{task} in {wide}"));
    assert!(row.contains(":running"), "{wide}");
    let nodes = cp.flotilla_ok(&["node", "ls", "-o", "wide"]);
    for column in [
        "HOSTNAME",
        "LOAD",
        "DISK FREE/TOTAL",
        "JOINED",
        "CERTIFICATE",
        "LABELS",
    ] {
        assert!(
            nodes.lines().next().unwrap_or_default().contains(column),
            "{nodes}"
        );
    }
    assert!(nodes.contains(" in "), "the certificate's expiry: {nodes}");
    // Filtered by kind (whole or its leading part) and by subject, on the control plane.
    let all: Vec<Event> =
        json_records(&cp.flotilla_ok(&["events", "--limit", "1000", "-o", "json"]));
    let of_tasks: Vec<Event> = json_records(
        &cp.flotilla_ok(&["events", "--kind", "task", "--limit", "1000", "-o", "json"]),
    );
    assert!(!of_tasks.is_empty());
    assert_eq!(
        of_tasks,
        all.iter()
            .filter(|e| e.kind.starts_with("task."))
            .cloned()
            .collect::<Vec<_>>()
    );
    let of_task: Vec<Event> =
        json_records(&cp.flotilla_ok(&["events", "--subject", &task, "-o", "json"]));
    assert!(
        !of_task.is_empty() && of_task.iter().all(|e| e.subject == task),
        "{of_task:?}"
    );
    let placed: Vec<Event> = json_records(&cp.flotilla_ok(&[
        "events",
        "--kind",
        "task.placed",
        "--subject",
        &task,
        "-o",
        "json",
    ]));
    assert_eq!(placed.len(), 1, "{placed:?}");
    // A task definition's subject has a colon: sent escaped, read back as it is.
    let registered: Vec<Event> =
        json_records(&cp.flotilla_ok(&["events", "--subject", "serve:1", "-o", "json"]));
    assert_eq!(
        registered
            .iter()
            .map(|e| e.kind.as_str())
            .collect::<Vec<_>>(),
        ["taskdef.registered"]
    );
    // `tas` is no kind's leading part up to a dot.
    assert!(cp
        .flotilla_ok(&["events", "--kind", "tas", "-o", "json"])
        .trim()
        .is_empty());

    // Watching: the list, then each task again as it changes (one JSON object per line).
    let mut watch = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["task", "ls", "-w", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flotilla task ls -w");
    let watched = watch.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(watched)).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next_of = |task: &str| -> TaskInfo {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a line from task ls -w");
            let t: TaskInfo = serde_json::from_str(&line).expect("one task per line");
            if t.id == task {
                return t;
            }
        }
    };
    assert_eq!(next_of(&task).desired, DesiredStatus::Running);

    // Stopped: the tasks as the control plane answered.
    let stopped: Vec<TaskInfo> =
        yaml_serde::from_str(&cp.flotilla_ok(&["task", "stop", &task, "-o", "yaml"]))
            .expect("YAML");
    // The watcher prints the task again once it changes.
    assert_eq!(next_of(&task).desired, DesiredStatus::Stopped);
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        (stopped[0].id.as_str(), stopped[0].desired),
        (task.as_str(), DesiredStatus::Stopped)
    );
    // Tables stay the default.
    assert!(cp.flotilla_ok(&["task", "ls"]).starts_with("ID "));
    // Gone to the last directory and cgroup before the agent is killed.
    node.wait_removed(Duration::from_secs(30));
    agent.kill();
    node.assert_clean();
}

/// A node that takes a push and never answers (hung, or hostile) holds nothing of the control
/// plane: the push gives up after its timeout, and the next heartbeat sends it again.
#[test]
fn a_push_a_node_never_answers_gives_up_and_is_sent_again() {
    use flotilla_api::AgentReply;
    use flotilla_certs::credential::Credential;
    use flotilla_tests::cluster::raw;

    let cp = ControlPlane::start(&[]);
    let a = Agent::new(&cp.scratch().join("a"));
    assert!(a.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let cred = Credential::load(&a.identity()).expect("a");
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    raw::runtime().block_on(async {
        let conn = raw::in_session(cp.addr, &cred).await;
        // A task for it: its desired state is pushed; the node takes the stream and is silent.
        let server = cp.server();
        let admin = cp.admin.clone();
        let placed = tokio::task::spawn_blocking(move || {
            std::process::Command::new(flotilla_tests::bin("flotilla"))
                .arg("--config")
                .arg(admin)
                .args(["task", "run", "serve"])
                .output()
        })
        .await
        .expect("join")
        .expect("flotilla");
        assert!(placed.status.success(), "{server}: {placed:?}");
        let (_send, _recv) = conn.accept_bi().await.expect("the push");
        let start = std::time::Instant::now();
        while !cp
            .log()
            .contains("desired state not delivered: no answer within 10 s")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the push never gave up:\n{}",
                cp.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A heartbeat finds it behind and sends it again, on a new stream.
        assert_eq!(
            raw::request(&conn, &raw::heartbeat()).await,
            AgentReply::Recorded
        );
        let again = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
        assert!(matches!(again, Ok(Ok(_))), "not sent again: {again:?}");
        conn.close(0u32.into(), b"done");
    });
}
