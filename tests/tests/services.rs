//! Services on a real cluster of labelled nodes: REPLICA spread by site, DAEMON on every node
//! including one that joins later, `memberOf` never leaving its set, and a rolling update to a
//! revision that fails its health check — stopped by the circuit breaker and rolled back, never
//! below the minimum healthy tasks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::service::RolloutState;
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_certs::credential::Credential;
use flotilla_tests::cluster::{Agent, ControlPlane, Fleet};
use flotilla_tests::node::Node;
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

fn join(cp: &ControlPlane, node: &Node, site: &str) -> (Agent, String) {
    let mut agent = Agent::for_node(node);
    let label = format!("site={site}");
    let out = agent.join(&cp.server(), &cp.token(&[]), &["--label", &label]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = Credential::load(&agent.identity()).expect("identity").name;
    agent.run();
    agent.wait_in_service(cp);
    (agent, id)
}

fn register(cp: &ControlPlane, name: &str, def: &str) {
    let f = cp.scratch().join(name);
    std::fs::write(&f, def).expect("write");
    cp.flotilla_ok(&["taskdef", "register", f.to_str().expect("utf8")]);
}

fn create(cp: &ControlPlane, name: &str, spec: &Value) {
    let f = cp.scratch().join(format!("{name}.json"));
    std::fs::write(&f, spec.to_string()).expect("write");
    cp.flotilla_ok(&["service", "create", f.to_str().expect("utf8")]);
}

/// Running tasks of a service, per node.
fn running(cp: &ControlPlane, service: &str) -> BTreeMap<String, usize> {
    let by = format!("service:{service}");
    let mut out = BTreeMap::new();
    for t in cp.tasks().into_iter().filter(|t| {
        t.started_by.as_ref() == Some(&by)
            && t.state == TaskState::Running
            && t.desired == DesiredStatus::Running
    }) {
        *out.entry(t.node.expect("node")).or_default() += 1;
    }
    out
}

fn remove_all(cp: &ControlPlane, names: &[&str], nodes: &[&Node]) {
    let mut args = vec!["service", "rm"];
    args.extend_from_slice(names);
    cp.flotilla_ok(&args);
    for n in nodes {
        n.wait_removed(Duration::from_secs(30));
    }
}

#[test]
fn replica_daemon_and_member_of_place_as_told() {
    // Three hosts, each a network namespace on a test LAN, labelled with their site.
    let mut fleet = Fleet::start(&[&["site=a"], &["site=b"], &["site=c"]]);
    let cp = &fleet.cp;
    let ids = fleet.ids.clone();
    register(cp, "serve.json", SERVE);
    create(
        cp,
        "pos",
        &serde_json::json!({"serviceName": "pos", "taskDefinition": "serve", "desiredCount": 3,
            "placementStrategy": [{"type": "spread", "field": "attribute:site"}]}),
    );
    create(
        cp,
        "logs",
        &serde_json::json!({"serviceName": "logs", "taskDefinition": "serve",
            "schedulingStrategy": "DAEMON"}),
    );
    create(
        cp,
        "lab",
        &serde_json::json!({"serviceName": "lab", "taskDefinition": "serve", "desiredCount": 4,
            "placementConstraints": [{"type": "memberOf", "expression": "attribute:site in [a, b]"}]}),
    );
    wait("the three services to run", Duration::from_secs(60), || {
        running(cp, "pos").values().sum::<usize>() == 3
            && running(cp, "logs").values().sum::<usize>() == 3
            && running(cp, "lab").values().sum::<usize>() == 4
    });
    // one pos task per site, one logs task per node, lab only on sites a and b
    assert!(
        running(cp, "pos").values().all(|n| *n == 1),
        "{:?}",
        running(cp, "pos")
    );
    assert_eq!(running(cp, "logs").len(), 3);
    let lab = running(cp, "lab");
    assert!(!lab.contains_key(&ids[2]), "lab ran on site c: {lab:?}");

    // A fourth node joins: the daemon service lands there; the others do not move.
    let added = fleet.add(&["site=d"]);
    let fourth = fleet.ids[added].clone();
    let cp = &fleet.cp;
    wait(
        "the daemon on the new node",
        Duration::from_secs(30),
        || running(cp, "logs").get(&fourth) == Some(&1),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!running(cp, "lab").contains_key(&fourth));
    assert_eq!(running(cp, "pos").values().sum::<usize>(), 3);
    let listed = cp.flotilla_ok(&["service", "ls"]);
    assert!(
        listed.contains("logs") && listed.contains("DAEMON"),
        "{listed}"
    );

    // Scale down: exactly the asked count remains.
    cp.flotilla_ok(&["service", "scale", "lab", "2"]);
    wait("lab scaled to 2", Duration::from_secs(30), || {
        running(cp, "lab").values().sum::<usize>() == 2
    });

    cp.flotilla_ok(&["service", "rm", "pos", "logs", "lab"]);
    fleet.finish();
}

#[test]
fn a_failing_deployment_is_stopped_and_rolled_back_without_dropping_below_the_minimum() {
    let nodes = [Node::new(), Node::new()];
    let cp = ControlPlane::start(&[]);
    let mut agents = Vec::new();
    for (n, site) in nodes.iter().zip(["a", "b"]) {
        agents.push(join(&cp, n, site).0);
    }
    register(&cp, "serve.json", SERVE);
    // Revision 2 never passes its health check.
    let broken = SERVE.replace(
        r#""stopTimeout": 2,"#,
        r#""stopTimeout": 2, "healthCheck": {"command": ["CMD-SHELL", "exit 1"], "interval": 5, "timeout": 2, "retries": 1},"#,
    );
    assert_ne!(broken, SERVE);
    register(&cp, "broken.json", &broken);
    create(
        &cp,
        "web",
        &serde_json::json!({"serviceName": "web", "taskDefinition": "serve:1", "desiredCount": 2,
            "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200,
              "deploymentCircuitBreaker": {"enable": true, "rollback": true}}}),
    );
    wait("web to run", Duration::from_secs(30), || {
        cp.service("web")
            .deployments
            .first()
            .is_some_and(|d| d.rollout_state == RolloutState::Completed)
    });

    cp.flotilla_ok(&["service", "update", "web", "--taskdef", "serve:2"]);
    // Until it is rolled back and complete again, never fewer than 2 healthy tasks of serve:1.
    let start = Instant::now();
    let mut lowest = usize::MAX;
    loop {
        let healthy = cp
            .tasks()
            .iter()
            .filter(|t| {
                t.started_by.as_deref() == Some("service:web")
                    && t.state == TaskState::Running
                    && t.task_definition == "serve:1"
            })
            .count();
        lowest = lowest.min(healthy);
        let s = cp.service("web");
        let d = &s.deployments;
        let failed = d.iter().any(|d| d.rollout_state == RolloutState::Failed);
        let done = d.len() == 1
            && d[0].rollout_state == RolloutState::Completed
            && d[0].task_definition == "serve:1";
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no rollback: {s:?} (failed seen: {failed})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lowest >= 2, "only {lowest} healthy tasks at one point");
    let events = cp.flotilla_ok(&["events"]);
    for e in [
        "service.deployment.failed",
        "service.deployment.rollback",
        "service.deployment.completed",
    ] {
        assert!(events.contains(e), "no {e} in:\n{events}");
    }
    assert!(events.contains("circuit breaker: "), "{events}");

    remove_all(&cp, &["web"], &nodes.iter().collect::<Vec<_>>());
    for mut a in agents {
        a.kill();
    }
    for n in &nodes {
        n.assert_clean();
    }
}

/// A service whose image cannot be pulled (its registry refuses connections) is not launched
/// once a second for ever: after the second failure in a row each launch waits longer (ECS's
/// service throttle), and `service ls` says why, with the pull's error.
#[test]
fn a_service_whose_tasks_cannot_start_is_launched_ever_more_slowly_and_says_why() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let (mut agent, _) = join(&cp, &node, "a");
    register(
        &cp,
        "unpullable.json",
        &SERVE.replace("test/busybox:latest", "127.0.0.1:1/nosuch:latest"),
    );
    let asked = Instant::now();
    create(
        &cp,
        "unpullable",
        &serde_json::json!({"serviceName": "unpullable", "taskDefinition": "serve", "desiredCount": 1}),
    );
    let launched = || {
        cp.tasks()
            .into_iter()
            .filter(|t| t.started_by.as_deref() == Some("service:unpullable"))
            .count()
    };
    wait("the throttle to say so", Duration::from_secs(30), || {
        cp.service("unpullable")
            .placement_problem
            .is_some_and(|p| p.contains("is unable to consistently start tasks successfully"))
    });
    let problem = cp
        .service("unpullable")
        .placement_problem
        .unwrap_or_default();
    assert!(
        problem.contains("2 in a row failed to start") && problem.contains("127.0.0.1:1/nosuch"),
        "{problem}"
    );
    let ls = cp.flotilla_ok(&["service", "ls"]);
    assert!(ls.contains("unable to consistently start tasks"), "{ls}");
    // Without the throttle: one a second. With it: two, then the third 10 s after the second.
    std::thread::sleep(Duration::from_secs(6));
    let n = launched();
    assert!(
        n <= 3,
        "{n} tasks launched in {:?}: {:#?}",
        asked.elapsed(),
        cp.tasks()
    );
    remove_all(&cp, &["unpullable"], &[&node]);
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_service_follows_its_cpu_load_out_and_back_and_a_scheduled_action_raises_a_minimum() {
    let node = Node::new();
    // A decision every second (the shortest period), each on the agent's last heartbeats (every
    // 5 s): scaling in takes its 15 periods below the band.
    let cp = ControlPlane::start(&["--scaling-period", "1"]);
    let mut agent = Agent::in_session(&cp, &node);
    // The load's switch: while `on` exists, every task burns all the CPU it may use (its
    // task-level `cpu`, 128 units, is a hard limit of an eighth of a core).
    let switch = node.bind_roots[0].join("load");
    std::fs::create_dir_all(&switch).expect("switch dir");
    let def = serde_json::json!({
        "family": "burn",
        "networkMode": "none",
        "cpu": "128",
        "memory": "64",
        "volumes": [{"name": "switch", "host": {"sourcePath": switch}}],
        "containerDefinitions": [{
            "name": "main", "image": "test/busybox:latest", "stopTimeout": 2,
            "mountPoints": [{"sourceVolume": "switch", "containerPath": "/switch", "readOnly": true}],
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do if [ -e /switch/on ]; then i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; else sleep 0.5 & wait; fi; done"]
        }]
    });
    register(&cp, "burn.json", &def.to_string());
    create(
        &cp,
        "burn",
        &serde_json::json!({"serviceName": "burn", "taskDefinition": "burn", "desiredCount": 1}),
    );
    let desired = || cp.service("burn").spec.desired_count;
    wait("its task to run", Duration::from_secs(30), || {
        running(&cp, "burn").values().sum::<usize>() == 1
    });
    cp.flotilla_ok(&[
        "service",
        "autoscale",
        "burn",
        "--min",
        "1",
        "--max",
        "3",
        "--target-cpu",
        "50",
        "--scale-out-cooldown",
        "0",
        "--scale-in-cooldown",
        "5",
    ]);

    // Meanwhile, another service's scheduled action raises its minimum at the next minute.
    register(&cp, "serve.json", SERVE);
    create(
        &cp,
        "steady",
        &serde_json::json!({"serviceName": "steady", "taskDefinition": "serve", "desiredCount": 1}),
    );
    cp.flotilla_ok(&["service", "autoscale", "steady", "--min", "1", "--max", "2"]);
    let rush = cp.scratch().join("rush.json");
    std::fs::write(
        &rush,
        r#"{"ScheduledActionName": "rush", "Schedule": "cron(* * ? * * *)",
            "ScalableTargetAction": {"MinCapacity": 2}}"#,
    )
    .expect("write");
    cp.flotilla_ok(&[
        "scaling",
        "schedule",
        "put",
        "steady",
        rush.to_str().expect("utf8"),
    ]);
    let put = Instant::now();

    // Load: out to the maximum within a minute.
    std::fs::write(switch.join("on"), "").expect("switch on");
    let loaded = Instant::now();
    wait("a scale-out to 3", Duration::from_secs(60), || {
        desired() == 3
    });
    let out_in = loaded.elapsed();
    wait("three tasks running", Duration::from_secs(30), || {
        running(&cp, "burn").values().sum::<usize>() == 3
    });
    let activity: Vec<flotilla_api::scaling::ScalingActivity> =
        cp.flotilla_json(&["scaling", "activity", "burn"]);
    let out = activity
        .iter()
        .rev()
        .find(|a| a.cause == "scaled out")
        .unwrap_or_else(|| panic!("no scale-out in {activity:#?}"));
    let cpu = out
        .metrics
        .get("CPUUtilization")
        .copied()
        .flatten()
        .unwrap_or_default();
    assert!(cpu > 50.0, "scaled out at {cpu} %: {activity:#?}");
    let table = cp.flotilla_ok(&["scaling", "activity", "burn"]);
    assert!(
        table.contains("scaled out") && table.contains("CPUUtilization="),
        "{table}"
    );

    // No load: back in to the minimum.
    std::fs::remove_file(switch.join("on")).expect("switch off");
    let idle = Instant::now();
    wait("a scale-in to 1", Duration::from_secs(120), || {
        desired() == 1
    });
    let in_in = idle.elapsed();
    let activity: Vec<flotilla_api::scaling::ScalingActivity> =
        cp.flotilla_json(&["scaling", "activity", "burn"]);
    assert!(
        activity.iter().any(|a| a.cause == "scaled in" && a.to == 1),
        "{activity:#?}"
    );

    // The other service's minute came (at most 60 s after the action was put).
    wait(
        "the minute's minimum",
        Duration::from_secs(75).saturating_sub(put.elapsed()),
        || cp.service("steady").spec.desired_count == 2,
    );
    let activity: Vec<flotilla_api::scaling::ScalingActivity> =
        cp.flotilla_json(&["scaling", "activity", "steady"]);
    assert!(
        activity
            .iter()
            .any(|a| a.policy.as_deref() == Some("rush") && (a.from, a.to) == (1, 2)),
        "{activity:#?}"
    );
    eprintln!("scaled out in {out_in:?}, back in in {in_in:?}");
    remove_all(&cp, &["burn", "steady"], &[&node]);
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
