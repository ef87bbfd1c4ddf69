//! A fleet of simulated agents against a real control plane: a few hundred fake agents
//! (`flotilla_tests::fleet` — each with its own node identity from the real enrollment and its
//! own mTLS QUIC session speaking the real protocol; no containers) are all admitted and shown
//! READY, a DAEMON service with discovery gets a task RUNNING on every one of them, the
//! discovery registry with every endpoint reaches every agent — whole once, at the start of its
//! session, and every change after that as a delta —, agents whose session drops end holding
//! every endpoint again (sent the whole registry when they lost theirs, as an agent restarted
//! on a new disk; nothing when their hello says they hold the current one), and deleting the service stops every task and takes it out of every agent's registry,
//! as a delta. One agent in ten speaks only protocol 1, as an agent of the previous release,
//! and is sent the whole registry every time. Correctness, not timing: the timings are in `bench-fleet` (BENCHMARKS.md,
//! "Fleet").

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_api::ops::{NodeInfo, NodeState, TokenCreate};
use flotilla_api::tasks::{StopCode, TaskState};
use flotilla_tests::cluster::ControlPlane;
use flotilla_tests::fleet::{self, Settings, Shared, Simulator};

/// Agents in the fleet: past the 256 nodes the default bridge pool holds.
const AGENTS: usize = 300;

/// Every this many agents, one speaks only protocol 1 and one protocols 1 and 2 (agents of
/// earlier releases: `fleet::speaks`).
const OLD_EVERY: usize = 10;

/// Whether agent `i` speaks only protocol 1.
fn old(i: usize) -> bool {
    fleet::speaks(i, OLD_EVERY) == [1]
}

/// Whether agent `i` speaks protocol 2 at most (deltas, each changed service whole).
fn services_whole(i: usize) -> bool {
    fleet::speaks(i, OLD_EVERY) == [1, 2]
}

const DEF: &str = r#"{
  "family": "edge",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "web", "image": "test/busybox:latest", "memory": 32,
    "portMappings": [{"containerPort": 80}],
    "command": ["httpd", "-f", "-p", "80"]
  }]
}"#;

const SERVICE: &str = r#"{"serviceName": "edge", "taskDefinition": "edge",
    "schedulingStrategy": "DAEMON", "discovery": {"namespace": "fleet"}}"#;

/// Waits until `cond` holds, polling every 200 ms; after `timeout` fails the test with the
/// fleet's state (how many agents are in session, a few of their last errors) and the tail of
/// the control plane's log.
fn wait_for(
    what: &str,
    timeout: Duration,
    cp: &ControlPlane,
    sim: &Shared,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            let in_session = sim.count(|a| a.in_session);
            let errors: Vec<String> = sim
                .agents
                .iter()
                .filter_map(|a| {
                    let st = a.state();
                    st.last_error.clone().map(|e| format!("{}: {e}", a.node_id))
                })
                .take(5)
                .collect();
            let log = cp.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}: {in_session}/{AGENTS} agents in \
                 session; last errors: {errors:#?}\ncontrol plane log (last lines, newest \
                 first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_fleet_of_simulated_agents_is_admitted_runs_a_daemon_service_and_gets_the_registry() {
    // Dropped in reverse: the simulator, its runtime, then the control plane — also when an
    // assertion fails, so no process is left behind.
    let cp = ControlPlane::start(&["--bridge-prefix", "28"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let token = cp
        .api()
        .create_token(&TokenCreate {
            ttl_secs: Some(600),
            uses: Some(AGENTS as u32),
            labels: Default::default(),
        })
        .expect("token")
        .token;
    let enrolled = rt
        .block_on(fleet::enroll(cp.addr, &token, AGENTS, 16, "sim"))
        .expect("every simulated node enrolls");
    assert_eq!(enrolled.agents.len(), AGENTS);
    let ids: BTreeSet<String> = enrolled.agents.iter().map(|a| a.node_id.clone()).collect();
    assert_eq!(ids.len(), AGENTS, "node ids are unique");

    let settings = Settings {
        heartbeat: Duration::from_secs(5),
        protocol_1_every: OLD_EVERY,
        ..Settings::default()
    };
    let sim = {
        let _in_runtime = rt.enter();
        Simulator::start(&enrolled, settings).expect("simulator")
    };
    let shared = sim.shared().clone();

    // Every agent admitted, and shown READY in `flotilla node ls`.
    wait_for(
        "every agent in session",
        Duration::from_secs(30),
        &cp,
        &shared,
        || shared.count(|a| a.in_session) == AGENTS,
    );
    let mut shown = Vec::new();
    // A session is admitted before its first heartbeat is recorded: both are waited for.
    wait_for(
        "every node READY in `flotilla node ls`, its heartbeat recorded",
        Duration::from_secs(10),
        &cp,
        &shared,
        || {
            shown = cp.flotilla_json::<Vec<NodeInfo>>(&["node", "ls"]);
            shown.len() == AGENTS
                && shown.iter().all(|n| {
                    n.state == NodeState::Ready
                        && n.connected
                        && n.resources.as_ref().is_some_and(|r| r.cpus == 2)
                })
        },
    );
    let listed: BTreeSet<String> = shown.iter().map(|n| n.id.clone()).collect();
    assert_eq!(listed, ids);

    // A DAEMON service: one task on every node, each reported RUNNING and recorded so.
    cp.register(DEF);
    cp.create_service(SERVICE);
    wait_for(
        "a task RUNNING on every node",
        Duration::from_secs(40),
        &cp,
        &shared,
        || shared.count(|a| a.recorded(TaskState::Running) == 1) == AGENTS,
    );
    let tasks: Vec<_> = cp
        .tasks()
        .into_iter()
        .filter(|t| t.started_by.as_deref() == Some("service:edge"))
        .collect();
    assert_eq!(tasks.len(), AGENTS, "one task per node");
    assert!(tasks.iter().all(|t| t.state == TaskState::Running));
    let placed: BTreeSet<String> = tasks.iter().filter_map(|t| t.node.clone()).collect();
    assert_eq!(placed, ids, "every node has the service's task");

    // The registry with every endpoint reaches every agent.
    let complete = |a: &fleet::AgentState| {
        a.registry.as_ref().is_some_and(|r| {
            r.services
                .get("fleet/edge")
                .is_some_and(|nodes| nodes.len() == AGENTS)
        })
    };
    wait_for(
        "the registry with all endpoints on every agent",
        Duration::from_secs(20),
        &cp,
        &shared,
        || shared.count(complete) == AGENTS,
    );
    let endpoints = cp.api().service_endpoints("edge").expect("endpoints");
    let registered: BTreeSet<String> = endpoints.endpoints.iter().map(|e| e.node.clone()).collect();
    assert_eq!(registered, ids);
    for a in &shared.agents {
        let st = a.state();
        let held = &st.registry.as_ref().expect("registry").services["fleet/edge"];
        assert!(
            held.has_node(&a.node_id),
            "{} is in its own registry",
            a.node_id
        );
    }

    // The registry was sent whole once per session, every change after that as a delta; to
    // agents of protocol 1, whole every time.
    for (i, a) in shared.agents.iter().enumerate() {
        let st = a.state();
        if old(i) {
            assert_eq!(st.registry_deltas, 0, "{}: no delta", a.node_id);
            assert!(st.registry_wholes >= 2, "{}: every change whole", a.node_id);
            continue;
        }
        assert_eq!(
            (st.registry_wholes, st.registry_out_of_sequence),
            (1, 0),
            "{}: one whole registry, no delta out of sequence",
            a.node_id
        );
        assert!(st.registry_deltas >= 1, "{}: deltas", a.node_id);
    }

    // One task stopped: the service replaces it, and the registry loses one endpoint and
    // gains another. Agents of protocol 3 are sent the two endpoints, those of protocol 2 the
    // service whole, those of protocol 1 the whole registry; every agent ends holding it.
    let changes_before: Vec<u32> = shared
        .agents
        .iter()
        .map(|a| a.state().registry_endpoint_changes)
        .collect();
    let gone = tasks[0].id.clone();
    cp.api().stop_task(&gone).expect("task stopped");
    let replaced = |a: &fleet::AgentState| {
        complete(a)
            && a.registry
                .as_ref()
                .is_some_and(|r| !r.services["fleet/edge"].has_task(&gone))
    };
    wait_for(
        "the stopped task replaced in every agent's registry",
        Duration::from_secs(30),
        &cp,
        &shared,
        || shared.count(replaced) == AGENTS,
    );
    for (i, a) in shared.agents.iter().enumerate() {
        let got = a.state().registry_endpoint_changes - changes_before[i];
        if old(i) || services_whole(i) {
            assert_eq!(a.state().registry_endpoint_changes, 0, "{}", a.node_id);
        } else {
            assert!(got >= 1, "{}: the endpoints changed one by one", a.node_id);
        }
    }

    // Agents whose session drops, half of them also losing the registry they held: those
    // are sent the whole registry in their new session; the others say in their hello that
    // they hold the current version and are sent nothing. Each holds every endpoint again.
    const RECONNECTING: usize = 20;
    let wholes_at_drop: Vec<u32> = shared
        .agents
        .iter()
        .take(RECONNECTING)
        .map(|a| a.state().registry_wholes)
        .collect();
    for (i, a) in shared.agents.iter().take(RECONNECTING).enumerate() {
        a.reconnect(i % 2 == 0);
    }
    wait_for(
        "the agents that reconnected in session again, with the whole registry",
        Duration::from_secs(30),
        &cp,
        &shared,
        || {
            shared.agents.iter().take(RECONNECTING).all(|a| {
                let st = a.state();
                st.in_session && st.sessions == 2 && complete(&st)
            })
        },
    );
    for (i, a) in shared.agents.iter().enumerate().take(RECONNECTING) {
        let lost = i % 2 == 0;
        let earlier = fleet::speaks(i, OLD_EVERY).last() != flotilla_api::PROTOCOLS.last();
        assert_eq!(
            a.state().registry_wholes,
            wholes_at_drop[i] + u32::from(lost || earlier),
            "{}: {}",
            a.node_id,
            if lost {
                "lost its registry: sent the whole"
            } else if earlier {
                "an agent of an earlier release does not say what it holds: sent the whole"
            } else {
                "said it holds the current registry: sent nothing"
            }
        );
    }
    let deltas_before: Vec<u32> = shared
        .agents
        .iter()
        .map(|a| a.state().registry_deltas)
        .collect();
    let wholes_before: Vec<u32> = shared
        .agents
        .iter()
        .map(|a| a.state().registry_wholes)
        .collect();

    // A change: the service deleted stops every task, and leaves every agent's registry.
    cp.api().remove_service("edge").expect("service removed");
    wait_for(
        "every task stopped and gone, and the service out of every registry",
        Duration::from_secs(30),
        &cp,
        &shared,
        || {
            shared.count(|a| {
                a.tasks.is_empty()
                    && a.registry
                        .as_ref()
                        .is_some_and(|r| !r.services.contains_key("fleet/edge"))
            }) == AGENTS
        },
    );
    let stopped = cp
        .tasks()
        .into_iter()
        .filter(|t| t.started_by.as_deref() == Some("service:edge"))
        .filter(|t| t.state == TaskState::Stopped && t.stop_code == Some(StopCode::ServiceDeleted))
        .count();
    assert_eq!(stopped, AGENTS, "every task STOPPED by the deletion");
    // The removal reached every agent as a delta (whole to those of protocol 1).
    for (i, a) in shared.agents.iter().enumerate() {
        let st = a.state();
        if old(i) {
            assert!(st.registry_wholes > wholes_before[i], "{}", a.node_id);
            continue;
        }
        assert!(
            st.registry_deltas > deltas_before[i] && st.registry_wholes == wholes_before[i],
            "{}: the removal came as a delta ({} deltas before, {} after; {} whole before, {} \
             after)",
            a.node_id,
            deltas_before[i],
            st.registry_deltas,
            wholes_before[i],
            st.registry_wholes
        );
    }

    // Nobody lost a session on the way but those told to.
    let churned: Vec<String> = shared
        .agents
        .iter()
        .enumerate()
        .filter(|(i, a)| a.state().sessions != if *i < RECONNECTING { 2 } else { 1 })
        .map(|(_, a)| a.node_id.clone())
        .collect();
    assert!(
        churned.is_empty(),
        "agents that lost a session: {churned:?}"
    );
    rt.block_on(sim.stop());
}
