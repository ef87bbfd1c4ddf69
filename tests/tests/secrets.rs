//! Secrets end to end, on a real control plane with two real nodes: a task gets its secret as
//! an environment variable and as a file on a read-only tmpfs; the value is in no file of any
//! data directory, no log, event, API answer or CLI output; the node that runs no such task
//! has no trace of it and cannot get it by asking; the node that runs it starts it again with
//! its secret while cut off from the control plane; a rotation reaches the tasks of a forced
//! deployment; a reference to a missing secret is refused at registration.

use std::path::Path;
use std::time::Duration;

use flotilla_api::tasks::TaskState;
use flotilla_api::{AgentReply, AgentRequest};
use flotilla_certs::credential::Credential;
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::{raw, Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

/// The container says what it sees at each start — never the value itself: whether the
/// variable matches the file, and the mount and mode of the files.
const APP: &str = r#"{
  "family": "app",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "restartPolicy": {"enabled": true},
    "secrets": [
      {"name": "DB_PASSWORD", "valueFrom": "flotilla:db:password"},
      {"name": "db.json", "valueFrom": "flotilla:db", "environment": false, "mode": "0400", "uid": 1000}
    ],
    "configs": [{"source": "motd", "target": "/etc/app/motd", "mode": "0440", "uid": 1000}],
    "command": ["sh", "-c", "[ -n \"$DB_PASSWORD\" ] && [ \"$DB_PASSWORD\" = \"$(cat /run/secrets/DB_PASSWORD)\" ] && echo variable matches file; cat /proc/mounts; ls -ln /run/secrets; while true; do sleep 1; done"]
  }]
}"#;

/// Every file at or under `path` (links not followed) whose bytes hold `needle`.
fn files_holding(path: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

fn running_task(cp: &ControlPlane, id: &str) {
    wait(
        &format!("task {id} RUNNING"),
        Duration::from_secs(30),
        || cp.task(id).state == TaskState::Running,
    );
}

#[test]
fn a_secret_reaches_only_its_tasks_never_rests_in_clear_and_survives_a_cut_off_restart() {
    let (node_a, node_b) = (Node::new(), Node::new());
    let mut cp = ControlPlane::start(&[]);
    let mut agent_a = Agent::in_session(&cp, &node_a);
    let mut agent_b = Agent::in_session(&cp, &node_b);
    let id_of = |agent: &Agent| Credential::load(&agent.identity()).expect("identity").name;
    let (a, b) = (id_of(&agent_a), id_of(&agent_b));

    let password = format!("pw-{:016x}", rand_u64());
    let file = cp.scratch().join("db.json");
    std::fs::write(
        &file,
        format!(r#"{{"user": "app", "password": "{password}"}}"#),
    )
    .expect("write");
    let created = cp.flotilla_ok(&["secret", "create", "db", file.to_str().expect("utf8")]);
    assert!(created.contains("db: version 1"), "{created}");
    std::fs::remove_file(&file).expect("rm");
    let motd = cp.scratch().join("motd");
    std::fs::write(&motd, "welcome to the fleet\n").expect("write");
    cp.flotilla_ok(&["config", "create", "motd", motd.to_str().expect("utf8")]);

    // A reference to what does not exist is refused at registration, naming it.
    let bad = cp.scratch().join("bad.json");
    std::fs::write(&bad, APP.replace("flotilla:db:password", "flotilla:nope")).expect("write");
    let refused = cp.flotilla(&["taskdef", "register", bad.to_str().expect("utf8")]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains("$.containerDefinitions[0].secrets[0].valueFrom: no secret nope"),
        "{said}"
    );
    let def = cp.scratch().join("app.json");
    std::fs::write(&def, APP).expect("write");
    cp.flotilla_ok(&["taskdef", "register", def.to_str().expect("utf8")]);
    let task = cp
        .flotilla_ok(&["task", "run", "app", "--node", &a])
        .split_whitespace()
        .next()
        .expect("task id")
        .to_string();
    running_task(&cp, &task);

    // In the process's environment and in the file, on a read-only tmpfs, with its mode.
    let environ = cp.flotilla_ok(&["exec", &task, "--", "cat", "/proc/1/environ"]);
    assert!(
        environ.contains(&format!("DB_PASSWORD={password}")),
        "the variable is in the workload's environment"
    );
    let in_file = cp.flotilla_ok(&["exec", &task, "--", "cat", "/run/secrets/DB_PASSWORD"]);
    assert_eq!(in_file, password);
    // The config, where the definition says, read-only, with its mode and owner.
    let config = cp.flotilla_ok(&["exec", &task, "--", "cat", "/etc/app/motd"]);
    assert_eq!(config, "welcome to the fleet\n");
    let listed = cp.flotilla_ok(&["exec", &task, "--", "ls", "-ln", "/etc/app/motd"]);
    assert!(
        listed.starts_with("-r--r-----") && listed.contains(" 1000 "),
        "{listed}"
    );
    let write = cp.flotilla(&["exec", &task, "--", "sh", "-c", "echo x > /etc/app/motd"]);
    assert!(!write.status.success(), "a config is read-only");
    let logs = || cp.flotilla_ok(&["logs", &task]);
    wait("the container's report", Duration::from_secs(10), || {
        logs().contains("db.json")
    });
    let seen = logs();
    assert!(seen.contains("variable matches file"), "{seen}");
    assert!(
        seen.lines()
            .any(|l| l.contains(" /run/secrets tmpfs ro,") || l.contains(" /run/secrets tmpfs ro ")),
        "{seen}"
    );
    assert!(
        seen.lines()
            .any(|l| l.starts_with("-r--------") && l.contains(" 1000 ") && l.ends_with("db.json")),
        "{seen}"
    );

    // Names are shown, never the value: CLI, API answers, events.
    let shown = [
        cp.flotilla_ok(&["taskdef", "inspect", "app"]),
        cp.flotilla_ok(&["task", "inspect", &task]),
        cp.flotilla_ok(&["secret", "inspect", "db"]),
        cp.flotilla_ok(&["secret", "ls"]),
        cp.flotilla_ok(&["events"]),
        node_a.ctr_ok(&["inspect", &format!("{task}-0")]),
    ];
    for out in &shown {
        assert!(!out.contains(&password), "a value shown: {out}");
    }
    assert!(shown[0].contains("flotilla:db:password"), "{}", shown[0]);
    assert!(
        shown[5].contains("DB_PASSWORD"),
        "ctr inspect names it: {}",
        shown[5]
    );

    // The node that runs no such task has nothing of it, and cannot get it by asking.
    assert!(
        !agent_b.log().contains("secret received"),
        "{}",
        agent_b.log()
    );
    agent_b.kill();
    let cred_b = Credential::load(&agent_b.identity()).expect("identity");
    let rt = raw::runtime();
    let answer = rt.block_on(async {
        let conn = raw::in_session(cp.addr, &cred_b).await;
        raw::request(
            &conn,
            &AgentRequest::Secret {
                name: "db".into(),
                version: 1,
            },
        )
        .await
    });
    assert!(matches!(&answer, AgentReply::Refused { .. }), "{answer:?}");
    wait("the refusal recorded", Duration::from_secs(5), || {
        cp.flotilla_ok(&["events", "--kind", "secret.refused"])
            .contains(&format!("node {b} asked for version 1"))
    });
    cp.wait_log("secret refused", Duration::from_secs(5));

    // Cut off: the control plane down, the agent restarted, the container killed — the node
    // starts it again with its secret, kept sealed on the node.
    cp.stop();
    agent_a.kill();
    let pid = node_a.running()[&format!("{task}-0")];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    node_a.wait_for("the container ended", Duration::from_secs(10), || {
        node_a.inspect(&format!("{task}-0")).status == Status::Exited
    });
    agent_a.run();
    node_a.wait_for(
        "the container started again offline",
        Duration::from_secs(30),
        || {
            let c = node_a.inspect(&format!("{task}-0"));
            c.status == Status::Running && c.restart_count >= 1
        },
    );
    // (Running comes before the command's first line: its output is waited for.)
    let log = || node_a.ctr_ok(&["logs", &format!("{task}-0")]);
    node_a.wait_for("the second run's line", Duration::from_secs(30), || {
        log().matches("variable matches file").count() >= 2
    });
    let log = log();
    assert_eq!(
        log.matches("variable matches file").count(),
        2,
        "both runs had it: {log}"
    );

    // Nothing rests in clear: no file of any data directory, no log. (The walk finds what
    // is there: the names, and node A's sealed record of version 1.)
    for dir in [&cp.data, &node_a.data, &node_b.data] {
        let found = files_holding(dir, password.as_bytes());
        assert!(found.is_empty(), "the value in clear in {found:?}");
    }
    assert!(!files_holding(&node_a.data, b"DB_PASSWORD").is_empty());
    let sealed_record = |data: &Path| !files_holding(&data.join("agent.redb"), b"db:1").is_empty();
    assert!(sealed_record(&node_a.data), "node A keeps it, sealed");
    assert!(!sealed_record(&node_b.data), "node B has no record of it");
    for log in [cp.log(), agent_a.log(), agent_b.log()] {
        assert!(!log.contains(&password), "a value logged");
    }

    // Rotation: a forced deployment's tasks get the new version.
    cp.restart();
    agent_a.wait_log("session established", 2, Duration::from_secs(20));
    let rotated = format!("rotated-{:016x}", rand_u64());
    let file = cp.scratch().join("db2.json");
    std::fs::write(&file, format!(r#"{{"password": "{rotated}"}}"#)).expect("write");
    let out = cp.flotilla_ok(&["secret", "rotate", "db", file.to_str().expect("utf8")]);
    assert!(out.contains("db: version 2"), "{out}");
    cp.flotilla_ok(&["task", "stop", &task]);
    let service = cp.scratch().join("svc.json");
    std::fs::write(
        &service,
        r#"{"serviceName": "app", "taskDefinition": "app", "desiredCount": 1}"#,
    )
    .expect("write");
    cp.flotilla_ok(&["service", "create", service.to_str().expect("utf8")]);
    let running = |cp: &ControlPlane| -> Vec<String> {
        cp.tasks()
            .into_iter()
            .filter(|t| {
                t.started_by.as_deref() == Some("service:app") && t.state == TaskState::Running
            })
            .map(|t| t.id)
            .collect()
    };
    wait("the service's task", Duration::from_secs(30), || {
        running(&cp).len() == 1
    });
    let old = running(&cp)[0].clone();
    cp.flotilla_ok(&["service", "update", "app", "--force-new-deployment"]);
    wait("a new task", Duration::from_secs(60), || {
        let r = running(&cp);
        r.len() == 1 && r[0] != old
    });
    let new = running(&cp)[0].clone();
    let seen = cp.flotilla_ok(&["exec", &new, "--", "cat", "/run/secrets/DB_PASSWORD"]);
    assert_eq!(seen, rotated);
    cp.flotilla_ok(&["service", "rm", "app"]);
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("random");
    u64::from_le_bytes(b)
}
