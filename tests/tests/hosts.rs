//! Three hosts, each a network namespace with its own agent, data directory and cgroup parent,
//! against one control plane: tasks spread, survive a control plane crash without a restart,
//! and a host cut off from the network keeps its tasks running and restarts crashed ones on its
//! own; after the link is restored nothing runs twice.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::ops::{NodeState, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_certs::credential::Credential;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::netns::Lan;
use flotilla_tests::node::Node;
use flotilla_tests::wait;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// Tasks in `state`.
fn count(cp: &ControlPlane, state: TaskState) -> usize {
    cp.tasks().iter().filter(|t| t.state == state).count()
}

/// Running containers of a node: name → pid.
fn running(node: &Node) -> BTreeMap<String, i32> {
    node.running()
}

#[test]
fn three_hosts_spread_tasks_and_ride_out_a_crash_and_a_cut_link() {
    let lan = Lan::new();
    let hosts = [lan.host(), lan.host(), lan.host()];
    let nodes = [Node::new(), Node::new(), Node::new()];
    let mut cp = ControlPlane::start_listening(std::net::Ipv4Addr::UNSPECIFIED, &[]);
    let server = format!("{}:{}", lan.gateway, cp.addr.port());
    let mut agents: Vec<Agent> = nodes
        .iter()
        .zip(&hosts)
        .map(|(n, h)| Agent::for_node(n).on_host(h))
        .collect();
    let mut ids = Vec::new();
    for (a, site) in agents.iter_mut().zip(["a", "b", "c"]) {
        let label = format!("site={site}");
        let out = a.join(&server, &cp.token(&[]), &["--label", &label]);
        assert!(
            out.status.success(),
            "join: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(Credential::load(&a.identity()).expect("identity").name);
        a.run();
    }
    for a in &agents {
        a.wait_in_service(&cp);
    }
    let f = cp.scratch().join("serve.json");
    std::fs::write(&f, SERVE).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);

    // Six tasks spread two per host.
    let placed: Vec<TaskInfo> = cp.flotilla_json(&["task", "run", "serve", "--count", "6"]);
    for id in &ids {
        assert_eq!(
            placed
                .iter()
                .filter(|t| t.node.as_ref() == Some(id))
                .count(),
            2,
            "placement: {placed:?}"
        );
    }
    wait("6 running tasks", Duration::from_secs(60), || {
        count(&cp, TaskState::Running) == 6
    });
    let before: Vec<_> = nodes.iter().map(running).collect();
    assert!(before.iter().all(|r| r.len() == 2), "{before:?}");

    // kill -9 of the control plane: nothing restarts, state intact.
    cp.stop();
    std::thread::sleep(Duration::from_secs(1));
    cp.restart();
    for a in &agents {
        a.wait_log("session established", 2, Duration::from_secs(70));
    }
    assert_eq!(nodes.iter().map(running).collect::<Vec<_>>(), before);
    assert_eq!(count(&cp, TaskState::Running), 6);

    // Host 0 loses its link until both ends have seen the session go; one of its containers
    // crashes meanwhile.
    let redials = agents[0].log().matches("reconnecting in").count();
    hosts[0].cut();
    wait("host 0 seen DISCONNECTED", Duration::from_secs(40), || {
        cp.node_state(&ids[0]) == Some(NodeState::Disconnected)
    });
    let (victim, victim_pid) = before[0].iter().next().expect("a container");
    let victim_pid = *victim_pid;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim_pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    nodes[0].wait_for(
        "the crashed container to be restarted on the cut-off host",
        Duration::from_secs(20),
        || {
            running(&nodes[0])
                .get(victim)
                .is_some_and(|p| *p != victim_pid)
        },
    );
    let restarted = running(&nodes[0]);
    assert_eq!(restarted.len(), 2);
    for (name, pid) in &before[0] {
        if name != victim {
            assert_eq!(restarted.get(name), Some(pid), "{name} was restarted");
        }
    }
    // The agent notices an unanswered ping (within 15 s of the cut) and goes on offline.
    agents[0].wait_log("reconnecting in", redials + 1, Duration::from_secs(30));
    assert_eq!(cp.node_state(&ids[0]), Some(NodeState::Disconnected));
    hosts[0].restore();
    wait("host 0 READY again", Duration::from_secs(90), || {
        cp.node_state(&ids[0]) == Some(NodeState::Ready)
    });

    // Nothing runs twice: the same six tasks, two containers per host, only the crashed one new.
    let task_of_victim = victim.rsplit_once('-').expect("task-index").0.to_string();
    wait("the restart reported", Duration::from_secs(20), || {
        let t = cp.task(&task_of_victim);
        t.state == TaskState::Running && t.containers.first().is_some_and(|c| c.restarts == 1)
    });
    let all = cp.tasks();
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|t| t.state == TaskState::Running), "{all:?}");
    assert_eq!(running(&nodes[0]), restarted);
    assert_eq!(running(&nodes[1]), before[1]);
    assert_eq!(running(&nodes[2]), before[2]);

    // Stopping them all reports exit codes and reasons, and leaves every host empty.
    for t in &all {
        cp.flotilla_ok(&["task", "stop", &t.id]);
    }
    wait("6 stopped tasks", Duration::from_secs(60), || {
        count(&cp, TaskState::Stopped) == 6
    });
    for t in cp.tasks() {
        assert_eq!(
            t.stop_reason.as_deref(),
            Some("stopped by an operator"),
            "{t:?}"
        );
        assert_eq!(
            t.containers.first().and_then(|c| c.exit_code),
            Some(3),
            "{t:?}"
        );
    }
    for n in &nodes {
        n.wait_for("containers removed", Duration::from_secs(20), || {
            n.ps().is_empty()
        });
    }

    // Placement by site: only sites a and b, spread over them.
    let placed: Vec<TaskInfo> = cp.flotilla_json(&[
        "task",
        "run",
        "serve",
        "--count",
        "4",
        "--constraint",
        "attribute:site in [a, b]",
        "--strategy",
        "spread:attribute:site",
    ]);
    let on = |i: usize| {
        placed
            .iter()
            .filter(|t| t.node.as_ref() == Some(&ids[i]))
            .count()
    };
    assert_eq!((on(0), on(1), on(2)), (2, 2, 0), "{placed:?}");
    let refused = cp.flotilla(&[
        "task",
        "run",
        "serve",
        "--constraint",
        "attribute:site == z",
    ]);
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("no node can take a task: 3 nodes failed memberOf(attribute:site == z)"),
        "{msg}"
    );
    for t in &placed {
        cp.flotilla_ok(&["task", "stop", &t.id]);
    }
    for n in &nodes {
        n.wait_removed(Duration::from_secs(30));
    }
    for mut a in agents {
        a.kill();
    }
    for n in &nodes {
        n.assert_clean();
    }
}
