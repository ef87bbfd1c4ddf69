//! Churn on a fleet, and what must hold through it (the bad-links scenarios of issue 21:
//! `tests/tests/bad_links.rs` in short, `soak-links` in full): a service `web` of [`SERVE`]
//! scaled and its containers killed, every look checking that no task runs on two nodes, each
//! step waited for until the nodes run exactly what the control plane holds as running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_api::tasks::{DesiredStatus, TaskState};

use crate::cluster::Fleet;

/// A task definition whose container runs until stopped, restarted in place when it dies.
pub const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// How long one step may take to converge, on any kind of link.
pub const STEP: Duration = Duration::from_secs(120);

/// What the control plane holds as running and meant to, and which nodes run a container of
/// each task: task id → node indexes.
pub fn observe(fleet: &Fleet) -> (BTreeSet<String>, BTreeMap<String, Vec<usize>>) {
    let held: BTreeSet<String> = fleet
        .cp
        .tasks()
        .into_iter()
        .filter(|t| {
            t.started_by.as_deref() == Some("service:web")
                && t.state == TaskState::Running
                && t.desired == DesiredStatus::Running
        })
        .map(|t| t.id)
        .collect();
    let mut on_nodes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, node) in fleet.nodes.iter().enumerate() {
        for name in node.running().keys() {
            // A task's container is `<task id>-<index>`.
            let task = name.rsplit_once('-').map_or(name.as_str(), |(t, _)| t);
            on_nodes.entry(task.to_string()).or_default().push(i);
        }
    }
    (held, on_nodes)
}

/// Waits until `want` tasks run, each in one container on one node, and no other container
/// runs; checks at every look that no task runs on two nodes. Answers how long it took since
/// `started`.
pub fn converge(fleet: &Fleet, want: usize, step: &str, started: Instant) -> Duration {
    loop {
        let (held, on_nodes) = observe(fleet);
        for (task, nodes) in &on_nodes {
            assert!(
                nodes.len() == 1,
                "{step}: task {task} runs on nodes {nodes:?}"
            );
        }
        let running: BTreeSet<String> = on_nodes.keys().cloned().collect();
        if held.len() == want && running == held {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < STEP,
            "{step}: not converged in {STEP:?}: the control plane holds {held:?} running, the \
             nodes run {on_nodes:?}, {want} wanted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The steps, on the links as they are: scale to 6, kill two containers (restarted in place),
/// scale to 2. Each step's time to converge.
pub fn churn(fleet: &Fleet, links: &str) -> [Duration; 3] {
    let asked = Instant::now();
    fleet.cp.flotilla_ok(&["service", "scale", "web", "6"]);
    let up = converge(fleet, 6, &format!("{links}: scaled to 6"), asked);
    let before = fleet.nodes.iter().map(|n| n.running()).collect::<Vec<_>>();
    let victims: Vec<(usize, String)> = before
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.keys().map(move |k| (i, k.clone())))
        .take(2)
        .collect();
    let killed = Instant::now();
    for (i, name) in &victims {
        fleet.nodes[*i].ctr_ok(&["kill", "-s", "KILL", name]);
    }
    // Each comes back in place, a new process in the same container.
    loop {
        let back = victims.iter().all(|(i, name)| {
            fleet.nodes[*i]
                .running()
                .get(name)
                .is_some_and(|pid| Some(pid) != before[*i].get(name))
        });
        if back {
            break;
        }
        assert!(
            killed.elapsed() < STEP,
            "{links}: killed containers {victims:?} did not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarted = converge(fleet, 6, &format!("{links}: killed"), killed);
    let asked = Instant::now();
    fleet.cp.flotilla_ok(&["service", "scale", "web", "2"]);
    let down = converge(fleet, 2, &format!("{links}: scaled to 2"), asked);
    [up, restarted, down]
}
