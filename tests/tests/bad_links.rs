//! Bad links, in short: three hosts whose links drop 30 % of the packets each way (nftables
//! `numgen random` in each host's namespace), then three hosts a second's round trip away from
//! the control plane (a relay that holds each datagram 500 ms each way), while a service is
//! scaled up and down and containers are killed. Every node converges, no task ever runs twice
//! (a task's container on two nodes, or a container the control plane does not hold as
//! running), none is lost; the time each step takes to converge is printed against the same
//! steps on whole links, run first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_tests::cluster::Fleet;
use flotilla_tests::relay::DelayRelay;

const SERVE: &str = r#"{
  "family": "serve",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// How long one step may take to converge, on either kind of link.
const STEP: Duration = Duration::from_secs(120);

/// What the control plane holds as running and meant to, and which nodes run a container of
/// each task: task id → node indexes.
fn observe(fleet: &Fleet) -> (BTreeSet<String>, BTreeMap<String, Vec<usize>>) {
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
fn converge(fleet: &Fleet, want: usize, step: &str, started: Instant) -> Duration {
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
fn churn(fleet: &Fleet, links: &str) -> [Duration; 3] {
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

#[test]
fn a_fleet_on_links_losing_30_percent_converges_without_running_a_task_twice() {
    let fleet = Fleet::start(&[&[], &[], &[]]);
    fleet.register(SERVE);
    fleet
        .cp
        .create_service(r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 2}"#);
    converge(&fleet, 2, "created", Instant::now());
    let whole = churn(&fleet, "whole links");
    for h in &fleet.hosts {
        h.lose(30);
    }
    let lossy = churn(&fleet, "30 % loss");
    for h in &fleet.hosts {
        h.lose(0);
    }
    let ms = |d: [Duration; 3]| d.map(|d| d.as_millis());
    eprintln!(
        "converged (scale to 6, two kills, scale to 2), ms: whole links {:?}, 30 % loss {:?}",
        ms(whole),
        ms(lossy)
    );
    for (i, a) in fleet.agents.iter().enumerate() {
        let log = a.log();
        assert!(!log.contains("panicked"), "agent {i}: {log}");
    }
    assert!(!fleet.cp.log().contains("panicked"), "{}", fleet.cp.log());
}

#[test]
fn a_fleet_a_second_away_from_its_control_plane_converges_without_running_a_task_twice() {
    let fleet = Fleet::start(&[]);
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], fleet.cp.addr.port()));
    let relay = DelayRelay::start(
        std::net::SocketAddr::new(fleet.lan.gateway.into(), 0),
        upstream,
        Duration::from_millis(500),
    )
    .expect("relay");
    // The fleet goes before the relay: its teardown needs the control plane.
    let (mut fleet, relay) = (fleet, relay);
    fleet.server = relay.addr.to_string();
    let joined = Instant::now();
    for _ in 0..3 {
        fleet.add(&[]);
    }
    let joined = joined.elapsed();
    fleet.register(SERVE);
    let asked = Instant::now();
    fleet
        .cp
        .create_service(r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 2}"#);
    converge(&fleet, 2, "created", asked);
    let slow = churn(&fleet, "1 s round trips");
    eprintln!(
        "three hosts joined and in session in {} ms; converged (scale to 6, two kills, scale \
         to 2), ms: 1 s round trips {:?}",
        joined.as_millis(),
        slow.map(|d| d.as_millis())
    );
    for (i, a) in fleet.agents.iter().enumerate() {
        let log = a.log();
        assert!(!log.contains("panicked"), "agent {i}: {log}");
    }
    drop((fleet, relay));
}
