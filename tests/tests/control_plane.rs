//! The control plane's core against the real binaries: concurrent operators never reserve more
//! than a node has, and a rolling deployment survives `kill -9` of the control plane.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_api::ops::TaskInfo;
use flotilla_api::service::RolloutState;
use flotilla_api::tasks::TaskState;
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

/// An agent over `node`, enrolled with `cp`, in session and heard from (its resources known).
fn agent_in_session(cp: &ControlPlane, node: &Node) -> Agent {
    let agent = Agent::in_session(cp, node);
    wait("the node's resources", Duration::from_secs(10), || {
        cp.nodes().first().is_some_and(|n| n.resources.is_some())
    });
    agent
}

/// The task ids of the node's running containers (each container named `<task>-<index>`).
fn running_tasks(node: &Node) -> Vec<String> {
    node.ps()
        .into_iter()
        .filter(|c| c.status == Status::Running)
        .filter_map(|c| c.record.config.name)
        .filter_map(|n| n.rsplit_once('-').map(|(t, _)| t.to_string()))
        .collect()
}

/// Stops every task and waits for the node to have no container left.
fn stop_everything(cp: &ControlPlane, node: &Node) {
    for t in cp.tasks().iter().filter(|t| t.state != TaskState::Stopped) {
        cp.flotilla(&["task", "stop", &t.id]);
    }
    node.wait_removed(Duration::from_secs(30));
}

#[test]
fn concurrent_task_runs_and_a_service_never_reserve_more_than_the_node_has() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let memory_mib = cp.nodes()[0]
        .resources
        .as_ref()
        .map(|r| r.memory_bytes >> 20)
        .expect("resources");
    // Each task reserves just over a fifth of the node's memory: at most four fit.
    let reserve = memory_mib / 5 + 1;
    cp.register(&format!(
        r#"{{"family":"big","networkMode":"none","containerDefinitions":[{{
                "name":"main","image":"test/busybox:latest","memoryReservation":{reserve},
                "stopTimeout":2,"command":["sleep","3600"]}}]}}"#
    ));
    let svc = cp.scratch().join("svc.json");
    std::fs::write(
        &svc,
        r#"{"serviceName":"big-svc","taskDefinition":"big","desiredCount":10}"#,
    )
    .expect("write");
    // Twenty operators run a task each while a twenty-first creates a service of ten.
    let (runs, created) = std::thread::scope(|s| {
        let runs: Vec<_> = (0..20)
            .map(|_| s.spawn(|| cp.flotilla(&["task", "run", "big", "-o", "json"])))
            .collect();
        let created = s.spawn(|| cp.flotilla(&["service", "create", svc.to_str().expect("utf8")]));
        (
            runs.into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>(),
            created.join().expect("thread"),
        )
    });
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let placed = runs.iter().filter(|o| o.status.success()).count();
    assert!(placed <= 4, "{placed} task runs placed");
    for o in runs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("lacked memory"),
            "a refusal names the resource: {err}"
        );
    }
    // The service fills what is left, and never more, round after round.
    for _ in 0..10 {
        let live: Vec<TaskInfo> = cp
            .tasks()
            .into_iter()
            .filter(|t| t.state != TaskState::Stopped)
            .collect();
        assert!(live.len() <= 4, "{} tasks reserved: {live:#?}", live.len());
        assert!(running_tasks(&node).len() <= 4);
        std::thread::sleep(Duration::from_millis(500));
    }
    wait("all the room taken", Duration::from_secs(20), || {
        cp.tasks()
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count()
            == 4
    });
    let s = cp.service("big-svc");
    let problem = s
        .placement_problem
        .expect("the service says why it is short");
    assert!(problem.contains("lacked memory"), "{problem}");
    assert_eq!(s.running_count as usize + placed, 4);
    // The listing a person scans says it too, on the service's row.
    let listing = cp.flotilla_ok(&["service", "ls"]);
    let row = listing
        .lines()
        .find(|l| l.starts_with("big-svc"))
        .unwrap_or_else(|| panic!("no big-svc row: {listing}"));
    assert!(row.contains("lacked memory"), "{listing}");

    cp.flotilla_ok(&["service", "rm", "big-svc"]);
    stop_everything(&cp, &node);
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_rolling_deployment_completes_after_kill_9_of_the_control_plane() {
    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let mut agent = agent_in_session(&cp, &node);
    let def = |command: &str, health: &str| {
        format!(
            r#"{{"family":"roll","networkMode":"none","containerDefinitions":[{{
                "name":"main","image":"test/busybox:latest","memory":32,"stopTimeout":2,
                "command":["sh","-c","{command}"]{health}}}]}}"#
        )
    };
    // Both end at SIGTERM: a stop takes no stopTimeout.
    cp.register(&def("trap 'exit 0' TERM; sleep 3600 & wait", ""));
    // The new revision turns healthy a second or two after it starts: one at a time, the
    // rollout takes several rounds.
    cp.register(&def(
        "trap 'exit 0' TERM; touch /tmp/ready; sleep 3600 & wait",
        r#","healthCheck":{"command":["CMD-SHELL","test -f /tmp/ready"],"interval":5}"#,
    ));
    let svc = cp.scratch().join("roll.json");
    std::fs::write(
        &svc,
        r#"{"serviceName":"roll","taskDefinition":"roll:1","desiredCount":3,
            "deploymentConfiguration":{"minimumHealthyPercent":100,"maximumPercent":134}}"#,
    )
    .expect("write");
    cp.flotilla_ok(&["service", "create", svc.to_str().expect("utf8")]);
    wait("three tasks of revision 1", Duration::from_secs(30), || {
        cp.service("roll").running_count == 3
    });
    cp.flotilla_ok(&["service", "update", "roll", "--taskdef", "roll:2"]);
    wait("the rollout under way", Duration::from_secs(30), || {
        cp.tasks().iter().any(|t| t.task_definition == "roll:2")
    });
    let before = cp.tasks();
    assert!(
        before
            .iter()
            .any(|t| t.task_definition == "roll:1" && t.state != TaskState::Stopped),
        "killed in the middle: old tasks still run"
    );
    // kill -9, and back.
    cp.stop();
    std::thread::sleep(Duration::from_secs(1));
    cp.restart();
    agent.wait_log("session established", 2, Duration::from_secs(60));
    wait("the deployment completed", Duration::from_secs(90), || {
        let s = cp.service("roll");
        s.deployments.len() == 1
            && s.deployments[0].task_definition == "roll:2"
            && s.deployments[0].rollout_state == RolloutState::Completed
            && s.running_count == 3
    });
    let all = cp.tasks();
    let new: BTreeSet<&str> = all
        .iter()
        .filter(|t| t.task_definition == "roll:2")
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(
        new.len(),
        3,
        "no task of the new revision was lost or replaced: {all:#?}"
    );
    assert!(all
        .iter()
        .filter(|t| t.task_definition == "roll:1")
        .all(|t| t.state == TaskState::Stopped));
    // On the node: exactly the three new tasks run, each once.
    node.wait_for("the old containers gone", Duration::from_secs(20), || {
        running_tasks(&node).len() == 3
    });
    let mut running = running_tasks(&node);
    running.sort();
    let expected: Vec<String> = new.iter().map(|s| s.to_string()).collect();
    assert_eq!(running, expected, "no task runs twice, none is missing");

    cp.flotilla_ok(&["service", "rm", "roll"]);
    stop_everything(&cp, &node);
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
