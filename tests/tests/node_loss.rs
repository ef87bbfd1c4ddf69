//! A service's node is cut off for longer than its `lostAfter`: its task is replaced on another
//! host soon after the threshold, and when the host comes back exactly one copy of each replica
//! survives (here the replacement: `keepReplacement`).

use std::time::{Duration, Instant};

use flotilla_api::ops::{NodeState, TaskInfo};
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::{ControlPlane, Fleet};
use flotilla_tests::wait;
use serde_json::Value;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// The service's tasks that run and are meant to.
fn running(cp: &ControlPlane) -> Vec<TaskInfo> {
    cp.tasks()
        .into_iter()
        .filter(|t| {
            t.started_by.as_deref() == Some("service:pos")
                && t.state == TaskState::Running
                && t.desired == DesiredStatus::Running
        })
        .collect()
}

/// Whether task `id` is known and `STOPPED`.
fn stopped(cp: &ControlPlane, id: &str) -> bool {
    cp.tasks()
        .iter()
        .any(|t| t.id == id && t.state == TaskState::Stopped)
}

/// Where task `t` runs, as an index of the fleet.
fn host_of(fleet: &Fleet, t: &TaskInfo) -> usize {
    t.node
        .as_deref()
        .and_then(|n| fleet.index_of(n))
        .expect("its host")
}

/// Creates the service `pos` from `spec`.
fn create(fleet: &Fleet, spec: &Value) {
    let f = fleet.cp.scratch().join("pos.json");
    std::fs::write(&f, spec.to_string()).expect("write");
    fleet
        .cp
        .flotilla_ok(&["service", "create", f.to_str().expect("utf8")]);
}

#[test]
fn a_lost_node_is_replaced_and_one_copy_survives_its_return() {
    let fleet = Fleet::start(&[&[], &[], &[]]);
    let (cp, ids, hosts) = (&fleet.cp, &fleet.ids, &fleet.hosts);
    fleet.register(SERVE);
    create(
        &fleet,
        &serde_json::json!({
            "serviceName": "pos", "taskDefinition": "serve", "desiredCount": 2,
            "disconnectPolicy": {"lostAfter": 5, "reconcile": "keepReplacement"}
        }),
    );
    wait("2 running tasks", Duration::from_secs(30), || {
        running(cp).len() == 2
    });

    // Cut the host of one of them.
    let original = running(cp)[0].clone();
    let victim = host_of(&fleet, &original);
    hosts[victim].cut();
    wait(
        "the node seen DISCONNECTED",
        Duration::from_secs(40),
        || fleet.node_state(victim) == Some(NodeState::Disconnected),
    );
    let seen = Instant::now();
    wait(
        "a replacement running elsewhere",
        Duration::from_secs(30),
        || {
            let r = running(cp);
            r.len() >= 2
                && r.iter()
                    .filter(|t| t.node.as_ref() != Some(&ids[victim]))
                    .count()
                    == 2
        },
    );
    let took = seen.elapsed();
    assert!(
        took < Duration::from_secs(5 + 10),
        "replaced {took:?} after the node was seen gone (lostAfter 5 s)"
    );
    let events = cp.flotilla_ok(&["events"]);
    assert!(events.contains("task.lost"), "{events}");

    // Back: the original copy is stopped, the replacement stays; two copies in all.
    hosts[victim].restore();
    wait("the node READY again", Duration::from_secs(90), || {
        fleet.node_state(victim) == Some(NodeState::Ready)
    });
    let id = original.id.clone();
    wait("the original copy stopped", Duration::from_secs(30), || {
        stopped(cp, &id)
    });
    let t = cp.task(&id);
    assert_eq!(
        t.stop_code,
        Some(flotilla_api::tasks::StopCode::ServiceReconciled),
        "{t:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = running(cp);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|t| t.id != id));

    cp.flotilla_ok(&["service", "rm", "pos"]);
    fleet.finish();
}

#[test]
fn a_singleton_is_stopped_by_its_cut_off_node_before_it_is_replaced() {
    let fleet = Fleet::start(&[&[], &[]]);
    let (cp, ids, hosts, nodes) = (&fleet.cp, &fleet.ids, &fleet.hosts, &fleet.nodes);
    fleet.register(SERVE);
    let bad = serde_json::json!({"serviceName": "x", "taskDefinition": "serve",
        "disconnectPolicy": {"lostAfter": 5, "stopOnClientAfter": 5}});
    let f = cp.scratch().join("bad.json");
    std::fs::write(&f, bad.to_string()).expect("write");
    let o = cp.flotilla(&["service", "create", f.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be less than lostAfter"));
    create(
        &fleet,
        &serde_json::json!({
            "serviceName": "pos", "taskDefinition": "serve", "desiredCount": 1,
            "disconnectPolicy": {"lostAfter": 8, "stopOnClientAfter": 2}
        }),
    );
    wait("the singleton running", Duration::from_secs(30), || {
        running(cp).len() == 1
    });
    let original = running(cp).remove(0);
    let victim = host_of(&fleet, &original);
    let container = format!("{}-0", original.id);
    hosts[victim].cut();
    // The cut-off node stops it on its own.
    nodes[victim].wait_for(
        "the node to stop its singleton",
        Duration::from_secs(60),
        || {
            nodes[victim].ps().iter().all(|c| {
                c.record.config.name.as_ref() != Some(&container) || c.status == Status::Exited
            })
        },
    );
    let stopped_at = now_secs();
    wait("the replacement elsewhere", Duration::from_secs(60), || {
        running(cp)
            .iter()
            .any(|t| t.node.as_ref() != Some(&ids[victim]))
    });
    let replacement = running(cp)
        .into_iter()
        .find(|t| t.node.as_ref() != Some(&ids[victim]))
        .expect("replacement");
    assert!(
        replacement.created_at + 1 >= stopped_at,
        "the replacement started before the original stopped: no singleton"
    );
    hosts[victim].restore();
    let id = original.id.clone();
    wait(
        "the original reported stopped",
        Duration::from_secs(120),
        || stopped(cp, &id),
    );
    let t = cp.task(&id);
    assert!(
        t.stop_reason
            .as_deref()
            .unwrap_or_default()
            .contains("stopOnClientAfter"),
        "{t:?}"
    );
    wait("one copy", Duration::from_secs(20), || {
        running(cp).len() == 1
    });
    cp.flotilla_ok(&["service", "rm", "pos"]);
    fleet.finish();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
