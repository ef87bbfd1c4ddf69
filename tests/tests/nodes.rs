//! Node administration on a real cluster: labels, drain (its tasks stop with a reason and
//! nothing new lands on it), activate, and removal (refused while tasks live, then the node's
//! certificate is refused).

use std::time::Duration;

use flotilla_api::ops::{NodeState, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_certs::credential::Credential;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
    "command": ["sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

#[test]
fn label_drain_activate_and_remove_a_node() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    assert!(agent
        .join(&cp.server(), &cp.token(&["--label", "site=a"]), &[])
        .status
        .success());
    let id = Credential::load(&agent.identity()).expect("identity").name;
    agent.run();
    agent.wait_in_service(&cp);
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);

    // Labels: set, replace, remove; bad ones refused with the label named.
    cp.flotilla_ok(&["node", "label", &id, "zone=eu-1", "site=b"]);
    cp.flotilla_ok(&["node", "label", &id, "--rm", "zone"]);
    let n = cp.api().node(&id).expect("node");
    assert_eq!(
        n.labels,
        [("site".to_string(), "b".to_string())].into(),
        "{n:?}"
    );
    let bad = cp.flotilla(&["node", "label", &id, "bad key=x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad key=x"));

    // Drain: the task stops with a reason, the node shows DRAINING and takes nothing new.
    let task = cp.run_one("serve");
    wait("the task to run", Duration::from_secs(30), || {
        cp.task(&task).state == TaskState::Running
    });
    cp.flotilla_ok(&["node", "drain", &id]);
    assert_eq!(cp.node_state(&id), Some(NodeState::Draining));
    wait("the drained task to stop", Duration::from_secs(20), || {
        cp.task(&task).state == TaskState::Stopped
    });
    let t = cp.task(&task);
    assert_eq!(t.stop_reason.as_deref(), Some("node drained"), "{t:?}");
    assert_eq!(
        t.containers.first().and_then(|c| c.exit_code),
        Some(3),
        "{t:?}"
    );
    let refused = cp.flotilla(&["task", "run", "serve"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("draining"));
    let refused = cp.flotilla(&["task", "run", "serve", "--node", &id]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&format!("node {id} is draining")));

    // Activate: it takes tasks again.
    cp.flotilla_ok(&["node", "activate", &id]);
    assert_eq!(cp.node_state(&id), Some(NodeState::Ready));
    let placed: Vec<TaskInfo> = cp.flotilla_json(&["task", "run", "serve"]);
    let second = placed[0].id.clone();
    wait("the second task to run", Duration::from_secs(30), || {
        cp.task(&second).state == TaskState::Running
    });

    // Placement needs room: a task that needs 40 % of the node's memory fits twice, not three
    // times, and nothing is created when not all fit.
    let memory_mib = cp
        .api()
        .node(&id)
        .expect("node")
        .resources
        .expect("resources reported")
        .memory_bytes
        >> 20;
    let big = serde_json::json!({
        "family": "big", "networkMode": "none",
        "containerDefinitions": [{"name": "main", "image": "test/busybox:latest",
                                  "memoryReservation": memory_mib * 2 / 5, "command": ["true"]}]
    });
    let f = cp.scratch().join("big.json");
    std::fs::write(&f, big.to_string()).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let before = cp.tasks();
    let o = cp.flotilla(&["task", "run", "big", "--count", "3"]);
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("big:1: room for 2 of 3 tasks: 1 node lacked memory"),
        "{msg}"
    );
    assert_eq!(cp.tasks(), before);

    // Remove: refused while a task lives, then forced; the node is gone and refused.
    let refused = cp.flotilla(&["node", "rm", &id]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("drain it first"));
    cp.flotilla_ok(&["node", "rm", &id, "--force"]);
    assert!(cp.nodes().iter().all(|n| n.id != id));
    let t = cp.task(&second);
    assert_eq!(
        (t.state, t.stop_reason.as_deref()),
        (TaskState::Stopped, Some("node removed"))
    );
    // The story is in the events, in order.
    let events = cp.flotilla_ok(&["events"]);
    let order: Vec<usize> = [
        "node.joined",
        "node.labelled",
        "node.draining",
        "task.stopped",
        "node.active",
        "node.removed",
    ]
    .iter()
    .map(|k| {
        events
            .find(k)
            .unwrap_or_else(|| panic!("no {k} in:\n{events}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{events}");
    assert!(events.contains("STOPPED on"), "{events}");
    agent.wait_log(
        "this node was removed from the cluster",
        1,
        Duration::from_secs(10),
    );
    agent.wait_log("unknown node", 1, Duration::from_secs(30));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// A second `nodeagent run` on a data directory an agent runs on (a unit started twice, a
/// person trying it by hand) ends at once, saying why, and the first goes on.
#[test]
fn a_second_agent_on_the_same_data_directory_is_refused_with_the_reason() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    let second = agent.command();
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(second.get_program())
        .args(second.get_args())
        .arg("run")
        .output()
        .expect("nodeagent run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("is held by another nodeagent: one agent per data directory")
            && last.contains(&node.data.join("agent.redb").display().to_string()),
        "{err}"
    );
    assert!(agent.running(), "the first agent ended:\n{}", agent.log());
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
