//! A service's node is cut off for longer than its `lostAfter`: its task is replaced on another
//! host soon after the threshold, and when the host comes back exactly one copy of each replica
//! survives (here the replacement: `keepReplacement`).

use std::time::{Duration, Instant};

use flotilla_certs::credential::Credential;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::netns::Lan;
use flotilla_tests::node::Node;
use serde_json::Value;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tasks(cp: &ControlPlane) -> Vec<Value> {
    serde_json::from_str(&cp.flotilla_ok(&["task", "ls", "-o", "json"])).expect("json")
}

/// The service's tasks that run and are meant to.
fn running(cp: &ControlPlane) -> Vec<Value> {
    tasks(cp)
        .into_iter()
        .filter(|t| {
            t["startedBy"] == "service:pos" && t["state"] == "RUNNING" && t["desired"] == "RUNNING"
        })
        .collect()
}

fn node_state(cp: &ControlPlane, id: &str) -> String {
    cp.nodes()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn a_lost_node_is_replaced_and_one_copy_survives_its_return() {
    let lan = Lan::new();
    let hosts = [lan.host(), lan.host(), lan.host()];
    let nodes = [Node::new(), Node::new(), Node::new()];
    let cp = ControlPlane::start_listening(std::net::Ipv4Addr::UNSPECIFIED, &[]);
    let server = format!("{}:{}", lan.gateway, cp.addr.port());
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for (n, h) in nodes.iter().zip(&hosts) {
        let mut a = Agent::for_node(n).on_host(h);
        assert!(a.join(&server, &cp.token(&[]), &[]).status.success());
        ids.push(Credential::load(&a.identity()).expect("identity").name);
        a.run();
        agents.push(a);
    }
    for a in &agents {
        a.wait_log("session established", 1, Duration::from_secs(15));
    }
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let svc = serde_json::json!({
        "serviceName": "pos", "taskDefinition": "serve", "desiredCount": 2,
        "disconnectPolicy": {"lostAfter": 5, "reconcile": "keepReplacement"}
    });
    let f = cp.scratch().join("pos.json");
    std::fs::write(&f, svc.to_string()).expect("write");
    cp.flotilla_ok(&["service", "create", f.to_str().expect("utf8")]);
    wait("2 running tasks", Duration::from_secs(30), || {
        running(&cp).len() == 2
    });

    // Cut the host of one of them.
    let original = running(&cp)[0].clone();
    let victim = ids
        .iter()
        .position(|i| original["node"] == i.as_str())
        .expect("its host");
    hosts[victim].cut();
    wait(
        "the node seen DISCONNECTED",
        Duration::from_secs(40),
        || node_state(&cp, &ids[victim]) == "DISCONNECTED",
    );
    let seen = Instant::now();
    wait(
        "a replacement running elsewhere",
        Duration::from_secs(30),
        || {
            let r = running(&cp);
            r.len() >= 2
                && r.iter()
                    .filter(|t| t["node"] != ids[victim].as_str())
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
        node_state(&cp, &ids[victim]) == "READY"
    });
    let id = original["id"].as_str().expect("id").to_string();
    wait("the original copy stopped", Duration::from_secs(30), || {
        tasks(&cp)
            .iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "STOPPED")
    });
    let t: Value = serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
    assert_eq!(
        t["stopReason"],
        flotilla_scheduler::service::REASON_RECONCILED,
        "{t}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = running(&cp);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|t| t["id"] != id.as_str()));

    cp.flotilla_ok(&["service", "rm", "pos"]);
    for n in &nodes {
        n.wait_for("containers removed", Duration::from_secs(30), || {
            n.ps().is_empty()
        });
    }
    for mut a in agents {
        a.kill();
    }
    for n in &nodes {
        n.assert_clean();
    }
}

#[test]
fn a_singleton_is_stopped_by_its_cut_off_node_before_it_is_replaced() {
    let lan = Lan::new();
    let hosts = [lan.host(), lan.host()];
    let nodes = [Node::new(), Node::new()];
    let cp = ControlPlane::start_listening(std::net::Ipv4Addr::UNSPECIFIED, &[]);
    let server = format!("{}:{}", lan.gateway, cp.addr.port());
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for (n, h) in nodes.iter().zip(&hosts) {
        let mut a = Agent::for_node(n).on_host(h);
        assert!(a.join(&server, &cp.token(&[]), &[]).status.success());
        ids.push(Credential::load(&a.identity()).expect("identity").name);
        a.run();
        agents.push(a);
    }
    for a in &agents {
        a.wait_log("session established", 1, Duration::from_secs(15));
    }
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
    let bad = serde_json::json!({"serviceName": "x", "taskDefinition": "serve",
        "disconnectPolicy": {"lostAfter": 5, "stopOnClientAfter": 5}});
    let f = cp.scratch().join("bad.json");
    std::fs::write(&f, bad.to_string()).expect("write");
    let o = cp.flotilla(&["service", "create", f.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be less than lostAfter"));
    let svc = serde_json::json!({
        "serviceName": "pos", "taskDefinition": "serve", "desiredCount": 1,
        "disconnectPolicy": {"lostAfter": 8, "stopOnClientAfter": 2}
    });
    let f = cp.scratch().join("pos.json");
    std::fs::write(&f, svc.to_string()).expect("write");
    cp.flotilla_ok(&["service", "create", f.to_str().expect("utf8")]);
    wait("the singleton running", Duration::from_secs(30), || {
        running(&cp).len() == 1
    });
    let original = running(&cp).remove(0);
    let victim = ids
        .iter()
        .position(|i| original["node"] == i.as_str())
        .expect("its host");
    let container = format!("{}-0", original["id"].as_str().expect("id"));
    hosts[victim].cut();
    // The cut-off node stops it on its own.
    nodes[victim].wait_for(
        "the node to stop its singleton",
        Duration::from_secs(60),
        || {
            nodes[victim]
                .ps()
                .iter()
                .all(|c| c["config"]["name"] != container.as_str() || c["status"] == "exited")
        },
    );
    let stopped_at = now_secs();
    wait("the replacement elsewhere", Duration::from_secs(60), || {
        running(&cp)
            .iter()
            .any(|t| t["node"] != ids[victim].as_str())
    });
    let replacement = running(&cp)
        .into_iter()
        .find(|t| t["node"] != ids[victim].as_str())
        .expect("replacement");
    assert!(
        replacement["createdAt"].as_u64().expect("createdAt") + 1 >= stopped_at,
        "the replacement started before the original stopped: no singleton"
    );
    hosts[victim].restore();
    let id = original["id"].as_str().expect("id").to_string();
    wait(
        "the original reported stopped",
        Duration::from_secs(120),
        || {
            tasks(&cp)
                .iter()
                .any(|t| t["id"] == id.as_str() && t["state"] == "STOPPED")
        },
    );
    let t: Value = serde_json::from_str(&cp.flotilla_ok(&["task", "inspect", &id])).expect("json");
    assert!(
        t["stopReason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopOnClientAfter"),
        "{t}"
    );
    wait("one copy", Duration::from_secs(20), || {
        running(&cp).len() == 1
    });
    cp.flotilla_ok(&["service", "rm", "pos"]);
    for n in &nodes {
        n.wait_for("containers removed", Duration::from_secs(30), || {
            n.ps().is_empty()
        });
    }
    for mut a in agents {
        a.kill();
    }
    for n in &nodes {
        n.assert_clean();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
