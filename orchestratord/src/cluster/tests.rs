//! The core's behaviour, driven through the harness: no network, no root, simulated time.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::ops::{PlacementConstraintSpec, TaskInfo, TaskRun};
use flotilla_api::service::{RolloutState, ServiceUpdate};
use flotilla_api::tasks::{DesiredStatus, StopCode, TaskState, TaskStatus};

use super::command::{Agent, ClusterError, Command, Effect, Operator, Reply, Tick};
use super::harness::Harness;

/// A task definition of family `family` with one container of `memory` MiB running `image`.
fn def(family: &str, image: &str, memory: u64) -> String {
    format!(
        r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"{image}","memory":{memory}}}]}}"#
    )
}

fn run(family: &str, count: u32) -> Operator {
    Operator::RunTask(TaskRun {
        task_definition: family.into(),
        node: None,
        count,
        env: Vec::new(),
        placement_constraints: Vec::new(),
        placement_strategy: Vec::new(),
    })
}

fn service(name: &str, taskdef: &str, count: u32, min: u32, max: u32, extra: &str) -> String {
    format!(
        r#"{{"serviceName":"{name}","taskDefinition":"{taskdef}","desiredCount":{count},
            "deploymentConfiguration":{{"minimumHealthyPercent":{min},"maximumPercent":{max},
              "deploymentCircuitBreaker":{{"enable":true,"rollback":true}}}}{extra}}}"#
    )
}

fn live(tasks: &[TaskInfo]) -> Vec<&TaskInfo> {
    tasks
        .iter()
        .filter(|t| t.state != TaskState::Stopped)
        .collect()
}

fn healthy(t: &TaskInfo) -> bool {
    t.state == TaskState::Running
        && t.desired == DesiredStatus::Running
        && t.containers.iter().all(|c| {
            c.health
                .is_none_or(|h| h == flotilla_api::tasks::HealthStatus::Healthy)
        })
}

fn of_service<'a>(tasks: &'a [TaskInfo], name: &str) -> Vec<&'a TaskInfo> {
    let by = format!("service:{name}");
    tasks
        .iter()
        .filter(|t| t.started_by.as_deref() == Some(by.as_str()))
        .collect()
}

/// Runs one simulated second, checking `check` after every command.
fn step_checked(h: &mut Harness, check: &mut dyn FnMut(&mut Harness)) {
    h.advance(1);
    for t in [Tick::NodeLossCheck, Tick::ServiceRound, Tick::ScheduleRound] {
        h.exec(Command::Tick(t)).expect("round");
        check(h);
    }
    for n in h.connected.clone() {
        h.converge(&n);
        check(h);
    }
}

fn settle(h: &mut Harness, name: &str, steps: usize) {
    for _ in 0..steps {
        h.step();
        let s = h.service(name);
        let done = s
            .deployments
            .iter()
            .all(|d| d.rollout_state == RolloutState::Completed);
        if done && s.deployments.len() == 1 {
            return;
        }
    }
    panic!("service {name} did not settle: {:#?}", h.service(name));
}

#[test]
fn a_rolling_deployment_stays_within_minimum_healthy_and_maximum_percent_at_every_step() {
    for (min, max) in [(50, 150), (100, 200), (0, 100), (50, 100)] {
        let mut h = Harness::new();
        for _ in 0..4 {
            h.join(&[], 2048, 4);
        }
        h.register(&def("web", "web:1", 100));
        h.register(&def("web", "web:2", 100));
        h.create_service(&service("web", "web:1", 6, min, max, ""));
        settle(&mut h, "web", 20);
        h.op(Operator::UpdateService(
            "web".into(),
            ServiceUpdate {
                task_definition: Some("web:2".into()),
                ..ServiceUpdate::default()
            },
        ))
        .expect("update");
        let min_healthy = (6 * min).div_ceil(100) as usize;
        let max_total = (6 * max / 100).max(6) as usize;
        let mut check = |h: &mut Harness| {
            let tasks = h.tasks();
            let mine = of_service(&tasks, "web");
            let up = mine.iter().filter(|t| healthy(t)).count();
            let total = mine
                .iter()
                .filter(|t| t.state != TaskState::Stopped)
                .count();
            assert!(
                up >= min_healthy,
                "min {min}% max {max}%: {up} healthy, fewer than {min_healthy}"
            );
            assert!(
                total <= max_total,
                "min {min}% max {max}%: {total} tasks, more than {max_total}"
            );
        };
        for _ in 0..30 {
            step_checked(&mut h, &mut check);
        }
        let s = h.service("web");
        assert_eq!(s.deployments.len(), 1, "{s:#?}");
        assert_eq!(s.deployments[0].task_definition, "web:2");
        assert_eq!(s.deployments[0].rollout_state, RolloutState::Completed);
        assert_eq!(s.running_count, 6);
    }
}

#[test]
fn the_circuit_breaker_stops_a_failing_deployment_and_rolls_back() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.join(&[], 2048, 4);
    }
    h.register(&def("web", "web:1", 100));
    h.register(&def("web", "web:2", 100));
    h.create_service(&service("web", "web:1", 4, 50, 200, ""));
    settle(&mut h, "web", 20);
    h.failing.insert("web:2".into());
    h.op(Operator::UpdateService(
        "web".into(),
        ServiceUpdate {
            task_definition: Some("web:2".into()),
            ..ServiceUpdate::default()
        },
    ))
    .expect("update");
    settle(&mut h, "web", 40);
    let s = h.service("web");
    assert_eq!(s.deployments[0].task_definition, "web:1", "{s:#?}");
    assert_eq!(s.running_count, 4);
    let failed = h.events("service.deployment.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failures: u32 = failed[0]
        .message
        .split("circuit breaker: ")
        .nth(1)
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(failures >= 3, "{}", failed[0].message);
    assert_eq!(h.events("service.deployment.rollback").len(), 1);
    // The failed tasks are counted by their stop code, not by their reason's words.
    let tasks = h.tasks();
    let failed: Vec<_> = of_service(&tasks, "web")
        .into_iter()
        .filter(|t| t.task_definition == "web:2")
        .collect();
    assert!(failed.len() >= 3);
    assert!(failed
        .iter()
        .all(|t| t.stop_code == Some(StopCode::EssentialContainerExited)
            || t.stop_code == Some(StopCode::ServiceDeploymentReplaced)));
}

/// Creation times of service `name`'s tasks, oldest first.
fn launches(h: &mut Harness, name: &str) -> Vec<u64> {
    let tasks = h.tasks();
    let mut at: Vec<u64> = of_service(&tasks, name)
        .iter()
        .map(|t| t.created_at)
        .collect();
    at.sort();
    at
}

#[test]
fn tasks_that_fail_to_start_again_and_again_are_launched_ever_more_slowly() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("web", "web:1", 100));
    h.register(&def("web", "web:2", 100));
    h.unstartable.insert("web:1".into());
    // (no circuit breaker: it would end the deployment after 3)
    h.create_service(r#"{"serviceName":"web","taskDefinition":"web:1","desiredCount":1}"#);
    let start = launches(&mut h, "web").first().copied().unwrap_or_default();
    for _ in 0..200 {
        h.step();
    }
    // Without the throttle, one a second; with it: at once, then 10 s, 20, 40, 80 after the
    // one before (each counted from its creation, the next launch comes a round later).
    let at = launches(&mut h, "web");
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(at.len(), 6, "launched at {at:?} (from {start})");
    for (gap, wait) in gaps.iter().skip(1).zip([10, 20, 40, 80]) {
        assert!((wait..=wait + 2).contains(gap), "gaps {gaps:?}");
    }
    let s = h.service("web");
    let problem = s.placement_problem.clone().unwrap_or_default();
    assert!(
        problem.contains("(service web) is unable to consistently start tasks successfully")
            && problem.contains("6 in a row failed to start")
            && problem.contains("CannotPullContainerError"),
        "{problem}"
    );
    // One event per task that failed from the second on, not one per round.
    assert_eq!(h.events("service.task_start_impaired").len(), 5);
    // Scaled to 0, nothing is impaired; scaled out again, its rollout is in progress (and
    // still throttled: the same failures count).
    let scale = |h: &mut Harness, n: u32| {
        h.op(Operator::UpdateService(
            "web".into(),
            ServiceUpdate {
                desired_count: Some(n),
                ..ServiceUpdate::default()
            },
        ))
        .expect("scale");
        h.step();
    };
    scale(&mut h, 0);
    assert_eq!(h.service("web").placement_problem, None);
    scale(&mut h, 2);
    let s = h.service("web");
    assert_eq!(
        s.deployments[0].rollout_state,
        RolloutState::InProgress,
        "{s:#?}"
    );
    assert!(s
        .placement_problem
        .is_some_and(|p| p.contains("unable to consistently start tasks")));
    // The operator fixes the task definition: the new deployment starts at once.
    h.op(Operator::UpdateService(
        "web".into(),
        ServiceUpdate {
            task_definition: Some("web:2".into()),
            ..ServiceUpdate::default()
        },
    ))
    .expect("update");
    h.step();
    h.step();
    let s = h.service("web");
    assert_eq!(s.running_count, 2, "{s:#?}");
    assert_eq!(s.placement_problem, None);
}

#[test]
fn stopped_tasks_are_kept_for_their_retention_then_removed_for_good() {
    use super::tasks::STOPPED_RETENTION_SECS;

    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("batch", "batch", 100));
    h.register(&def("web", "web", 100));
    h.create_service(r#"{"serviceName":"web","taskDefinition":"web","desiredCount":1}"#);
    h.op(run("batch", 2)).expect("run");
    h.step();
    let ids: Vec<String> = h
        .tasks()
        .iter()
        .filter(|t| t.task_definition.starts_with("batch"))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(ids.len(), 2);
    h.op(Operator::StopTask(ids[0].clone())).expect("stop");
    h.step();
    let prune = |h: &mut Harness| {
        h.exec(Command::Tick(Tick::PruneStopped)).expect("prune");
    };
    // Just short of its retention: still there, for `task inspect` and `logs`.
    h.advance(STOPPED_RETENTION_SECS - 1);
    prune(&mut h);
    let stopped = |h: &mut Harness| {
        h.tasks()
            .into_iter()
            .filter(|t| t.state == TaskState::Stopped)
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(stopped(&mut h), [ids[0].clone()]);
    h.advance(1);
    prune(&mut h);
    assert_eq!(stopped(&mut h), Vec::<String>::new());
    // What runs is untouched, and gone is gone after a restart of the control plane.
    let live: Vec<String> = h.tasks().into_iter().map(|t| t.id).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.contains(&ids[1]));
    h.restart(1000);
    let after: Vec<String> = h.tasks().into_iter().map(|t| t.id).collect();
    assert_eq!(after, live);
    assert_eq!(h.service("web").running_count, 1);
}

#[test]
fn a_daemon_that_cannot_run_on_a_node_names_the_node_and_why() {
    let mut h = Harness::new();
    let small = h.join(&[], 64, 4);
    h.register(&def("agent", "agent", 100));
    h.create_service(
        r#"{"serviceName":"agent","taskDefinition":"agent","schedulingStrategy":"DAEMON"}"#,
    );
    h.step();
    let problem = h.service("agent").placement_problem.unwrap_or_default();
    assert_eq!(
        problem,
        format!("node {small} cannot take the task: it lacked memory")
    );
}

#[test]
fn a_daemons_tasks_are_throttled_per_node() {
    let mut h = Harness::new();
    let bad = h.join(&[("site", "bad")], 2048, 4);
    let good = h.join(&[("site", "good")], 2048, 4);
    h.register(&def("agent", "agent", 100));
    h.create_service(
        r#"{"serviceName":"agent","taskDefinition":"agent","schedulingStrategy":"DAEMON"}"#,
    );
    h.step();
    // As ECS says of a DAEMON service: it wants one task per node it may run on.
    assert_eq!(h.service("agent").spec.desired_count, 2);
    // Only the bad node's tasks fail from now on (as its registry is unreachable).
    let tasks = h.tasks();
    let on_good: Vec<String> = of_service(&tasks, "agent")
        .iter()
        .filter(|t| t.node.as_deref() == Some(good.as_str()))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on_good.len(), 1);
    h.unstartable.insert("agent".into());
    // The good node's task keeps running: its reports are its own.
    for _ in 0..60 {
        h.advance(1);
        h.rounds();
        h.converge(&bad);
    }
    let tasks = h.tasks();
    let on_bad = of_service(&tasks, "agent")
        .iter()
        .filter(|t| t.node.as_deref() == Some(bad.as_str()))
        .count();
    assert!(
        (4..=5).contains(&on_bad),
        "{on_bad} launches on the bad node in 60 s"
    );
    let good_now: Vec<_> = of_service(&tasks, "agent")
        .into_iter()
        .filter(|t| t.node.as_deref() == Some(good.as_str()))
        .collect();
    assert_eq!(good_now.len(), 1, "{good_now:?}");
    assert_eq!(good_now[0].state, TaskState::Running);
}

#[test]
fn a_scaled_out_deployment_is_completed_only_once_its_count_runs() {
    let mut h = Harness::new();
    // Room for one task only.
    h.join(&[], 150, 4);
    h.register(&def("web", "web:1", 100));
    h.create_service(&service("web", "web:1", 1, 50, 200, ""));
    settle(&mut h, "web", 10);
    let scale = |h: &mut Harness, n| {
        h.op(Operator::UpdateService(
            "web".into(),
            ServiceUpdate {
                desired_count: Some(n),
                ..ServiceUpdate::default()
            },
        ))
        .expect("update")
    };
    // The answer to the update already says so.
    let Reply::Service(s) = scale(&mut h, 2) else {
        panic!("not a service")
    };
    let d = &s.deployments[0];
    assert_eq!(d.rollout_state, RolloutState::InProgress, "{s:#?}");
    assert_eq!(
        d.rollout_state_reason.as_deref(),
        Some("1 of 2 tasks running")
    );
    for _ in 0..5 {
        h.step();
    }
    let s = h.service("web");
    assert_eq!(s.running_count, 1);
    assert_eq!(s.deployments.len(), 1);
    assert_eq!(
        s.deployments[0].rollout_state,
        RolloutState::InProgress,
        "{s:#?}"
    );
    // Room for the second: it runs, and only then is the deployment completed.
    h.join(&[], 150, 4);
    settle(&mut h, "web", 10);
    assert_eq!(h.service("web").running_count, 2);
    assert_eq!(h.events("service.deployment.completed").len(), 2);
    // Scaling in leaves it completed.
    scale(&mut h, 1);
    settle(&mut h, "web", 10);
    assert_eq!(h.events("service.deployment.in_progress").len(), 1);
}

#[test]
fn drain_stops_the_nodes_tasks_with_the_drain_code_and_services_move_theirs() {
    let mut h = Harness::new();
    let a = h.join(&[("zone", "a")], 2048, 4);
    let b = h.join(&[("zone", "b")], 2048, 4);
    h.register(&def("web", "web", 100));
    h.register(&def("batch", "batch", 100));
    h.create_service(&service("web", "web", 2, 50, 200, ""));
    settle(&mut h, "web", 10);
    h.op(Operator::RunTask(TaskRun {
        node: Some(a.clone()),
        ..match run("batch", 1) {
            Operator::RunTask(r) => r,
            _ => unreachable!(),
        }
    }))
    .expect("run");
    h.converge_all();
    let on_a: Vec<String> = live(&h.tasks())
        .into_iter()
        .filter(|t| t.node.as_deref() == Some(&a))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on_a.len(), 2, "a service task and the batch task");
    let Reply::Node(n) = h.op(Operator::DrainNode(a.clone(), true)).expect("drain") else {
        panic!()
    };
    assert_eq!(n.state, flotilla_api::ops::NodeState::Draining);
    for id in &on_a {
        let Reply::Task(t) = h.op(Operator::GetTask(id.clone())).expect("task") else {
            panic!()
        };
        assert_eq!(t.stop_code, Some(StopCode::NodeDrained));
        assert_eq!(t.state, TaskState::Stopping);
    }
    settle(&mut h, "web", 10);
    let tasks = h.tasks();
    for id in &on_a {
        let t = tasks.iter().find(|t| &t.id == id).expect("task");
        assert_eq!(t.state, TaskState::Stopped);
        assert_eq!(t.stop_code, Some(StopCode::NodeDrained), "{t:?}");
    }
    let web = live(&tasks)
        .into_iter()
        .filter(|t| t.started_by.as_deref() == Some("service:web"))
        .collect::<Vec<_>>();
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|t| t.node.as_deref() == Some(&b)));
    // A drained task is retired, not failed: the deployment counts no failure.
    assert_eq!(h.service("web").deployments[0].failed_tasks, 0);
    assert!(h.desired(&a).tasks.is_empty());
}

#[test]
fn node_loss_follows_the_disconnect_policy() {
    for reconcile in ["keepReplacement", "keepOriginal", "none"] {
        let mut h = Harness::new();
        let a = h.join(&[], 2048, 4);
        let b = h.join(&[], 2048, 4);
        h.register(&def("web", "web", 100));
        let policy = match reconcile {
            "none" => r#","disconnectPolicy":{"lostAfter":10,"replace":false}"#.to_string(),
            r => format!(r#","disconnectPolicy":{{"lostAfter":10,"reconcile":"{r}"}}"#),
        };
        h.create_service(&service("web", "web", 1, 100, 200, &policy));
        settle(&mut h, "web", 10);
        let original = live(&h.tasks())[0].clone();
        let home = original.node.clone().expect("node");
        let other = if home == a { b.clone() } else { a.clone() };
        h.disconnect(&home);
        for _ in 0..8 {
            h.step();
        }
        assert_eq!(live(&h.tasks()).len(), 1, "not lost before lostAfter");
        assert!(h.events("task.lost").is_empty());
        for _ in 0..5 {
            h.step();
        }
        let tasks = h.tasks();
        if reconcile == "none" {
            assert_eq!(live(&tasks).len(), 1, "replace: false never replaces");
            continue;
        }
        assert_eq!(h.events("task.lost").len(), 1);
        let replacement = live(&tasks)
            .into_iter()
            .find(|t| t.id != original.id)
            .expect("replaced")
            .clone();
        assert_eq!(replacement.node.as_deref(), Some(other.as_str()));
        // The original cannot be told to stop while its node is away: it is left alone.
        let o = tasks
            .iter()
            .find(|t| t.id == original.id)
            .expect("original");
        assert_eq!(o.desired, DesiredStatus::Running);
        // The node comes back with its copy still running: one of the two goes.
        h.connect(&home, 2048, 4);
        for _ in 0..4 {
            h.step();
        }
        let tasks = h.tasks();
        let survivors: Vec<&str> = live(&tasks).iter().map(|t| t.id.as_str()).collect();
        let (kept, gone) = match reconcile {
            "keepReplacement" => (&replacement.id, &original.id),
            _ => (&original.id, &replacement.id),
        };
        assert_eq!(survivors, [kept.as_str()], "{reconcile}");
        let g = tasks.iter().find(|t| &t.id == gone).expect("gone");
        assert_eq!(g.stop_code, Some(StopCode::ServiceReconciled));
    }
}

#[test]
fn a_report_about_another_nodes_task_changes_nothing() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    let b = h.join(&[], 2048, 4);
    h.register(&def("batch", "batch", 100));
    h.op(Operator::RunTask(TaskRun {
        node: Some(a.clone()),
        ..match run("batch", 1) {
            Operator::RunTask(r) => r,
            _ => unreachable!(),
        }
    }))
    .expect("run");
    h.converge_all();
    let before = h.tasks();
    let commits = h.commit_count();
    let forged = TaskStatus {
        id: before[0].id.clone(),
        state: TaskState::Stopped,
        stop_reason: Some("forged".into()),
        stop_code: Some(StopCode::UserInitiated),
        containers: Vec::new(),
        scheduled: None,
        network: None,
    };
    let reply = h
        .exec(Command::Agent(Agent::Report {
            node: b.clone(),
            tasks: vec![forged],
        }))
        .expect("report");
    assert_eq!(
        reply,
        Reply::Agent(flotilla_api::AgentReply::Recorded),
        "answered like any report"
    );
    assert_eq!(h.tasks(), before);
    assert_eq!(h.commit_count(), commits, "nothing was written");
    assert!(h.desired(&b).tasks.is_empty());
}

#[test]
fn a_restarted_core_resumes_in_flight_deployments_and_schedules() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.join(&[], 2048, 4);
    }
    h.register(&def("web", "web:1", 100));
    h.register(&def("web", "web:2", 100));
    h.register(&def("job", "job", 50));
    h.create_service(&service("web", "web:1", 4, 50, 100, ""));
    settle(&mut h, "web", 10);
    h.op(Operator::CreateSchedule(
        serde_json::from_str(r#"{"name":"nightly","taskDefinition":"job","cron":"*/5 * * * *"}"#)
            .expect("spec"),
    ))
    .expect("schedule");
    h.op(Operator::UpdateService(
        "web".into(),
        ServiceUpdate {
            task_definition: Some("web:2".into()),
            ..ServiceUpdate::default()
        },
    ))
    .expect("update");
    // Part of the way: some old tasks stopped, some new ones placed.
    let mid = loop {
        h.step();
        let t = h.tasks();
        if of_service(&t, "web")
            .iter()
            .any(|t| t.task_definition == "web:2")
        {
            break t;
        }
    };
    assert!(of_service(&mid, "web")
        .iter()
        .any(|t| t.task_definition == "web:2"));
    assert!(of_service(&mid, "web")
        .iter()
        .any(|t| t.task_definition == "web:1" && t.state != TaskState::Stopped));
    // kill -9: nothing in memory survives; the agents come back one by one.
    h.restart(1000);
    h.step();
    let ids = |t: &[TaskInfo]| t.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&h.tasks()),
        ids(&mid),
        "nothing is placed while no node is in session"
    );
    for n in h.nodes.clone() {
        h.connect(&n, 2048, 4);
    }
    settle(&mut h, "web", 20);
    let tasks = h.tasks();
    let web = of_service(&tasks, "web");
    let running: Vec<_> = web
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t.task_definition == "web:2"));
    // None was placed twice: four tasks of the new revision in all, each id once.
    let new: BTreeSet<&str> = web
        .iter()
        .filter(|t| t.task_definition == "web:2")
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(new.len(), 4, "{web:#?}");
    // The schedule fires at its next minute after the restart, once.
    let Reply::Schedule(s) = h.op(Operator::GetSchedule("nightly".into())).expect("get") else {
        panic!()
    };
    let next = s.next_run.expect("next run");
    while h.now.secs() < next {
        h.advance(1);
    }
    h.rounds();
    h.advance(1);
    h.rounds();
    let Reply::Schedule(s) = h.op(Operator::GetSchedule("nightly".into())).expect("get") else {
        panic!()
    };
    assert_eq!(s.runs.len(), 1, "{s:?}");
    assert_eq!(s.runs[0].fired_at, next);
    assert_eq!(s.next_run, Some(next + 300));
}

#[test]
fn a_clock_a_year_ahead_and_back_fires_a_schedule_once_then_every_minute_again() {
    const YEAR_MS: u64 = 365 * 86_400_000;
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("job", "job", 50));
    h.op(Operator::CreateSchedule(
        serde_json::from_str(
            r#"{"name":"tick","taskDefinition":"job","cron":"* * * * *","overlap":"allow"}"#,
        )
        .expect("spec"),
    ))
    .expect("schedule");
    let runs = |h: &mut Harness| {
        let Reply::Schedule(s) = h.op(Operator::GetSchedule("tick".into())).expect("get") else {
            panic!("not a schedule")
        };
        s
    };
    for _ in 0..61 {
        h.advance(1);
        h.rounds();
    }
    assert_eq!(runs(&mut h).runs.len(), 1);
    // A year ahead: one run (the minute that was due), not a year of them.
    h.now.unix_ms += YEAR_MS;
    for _ in 0..10 {
        h.advance(1);
        h.rounds();
    }
    let s = runs(&mut h);
    assert_eq!(s.runs.len(), 2, "{s:?}");
    assert!(s.next_run.expect("next") > h.now.secs());
    // Back a year: reckoned anew, it fires at the clock's next minute, not a year on.
    h.now.unix_ms -= YEAR_MS;
    for _ in 0..61 {
        h.advance(1);
        h.rounds();
    }
    let s = runs(&mut h);
    assert_eq!(s.runs.len(), 3, "{s:?}");
    assert!(s.runs[0].fired_at <= h.now.secs(), "{s:?}");
}

#[test]
fn every_command_is_one_commit() {
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 8);
    h.register(&def("batch", "batch", 100));
    let one = |h: &mut Harness, what: &str, op: Command| {
        let before = h.commit_count();
        h.exec(op).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(h.commit_count() - before, 1, "{what}");
    };
    one(
        &mut h,
        "task run --count 6",
        Command::Operator(run("batch", 6)),
    );
    let tasks = h.tasks();
    let statuses: Vec<TaskStatus> = tasks
        .iter()
        .map(|t| TaskStatus {
            id: t.id.clone(),
            state: TaskState::Running,
            stop_reason: None,
            stop_code: None,
            containers: Vec::new(),
            scheduled: None,
            network: None,
        })
        .collect();
    one(
        &mut h,
        "a report of six tasks",
        Command::Agent(Agent::Report {
            node: a.clone(),
            tasks: statuses,
        }),
    );
    h.create_service(&service("web", "batch", 5, 100, 200, ""));
    one(
        &mut h,
        "a service round starting five",
        Command::Tick(Tick::ServiceRound),
    );
    assert_eq!(of_service(&h.tasks(), "web").len(), 5);
    one(
        &mut h,
        "removing a service stopping five",
        Command::Operator(Operator::RemoveService("web".into())),
    );
    one(
        &mut h,
        "drain",
        Command::Operator(Operator::DrainNode(a.clone(), true)),
    );
    // Reads, refusals and what stays in memory write nothing.
    let before = h.commit_count();
    h.op(Operator::ListTasks(Default::default())).expect("ls");
    h.op(Operator::GetNode(a.clone())).expect("node");
    assert!(h.op(run("batch", 1)).is_err(), "the only node is draining");
    assert!(h.op(Operator::GetTask("t-nope".into())).is_err());
    h.exec(Command::Agent(Agent::Ping { node: a.clone() }))
        .expect("ping");
    h.exec(Command::Agent(Agent::Heartbeat {
        node: a.clone(),
        resources: flotilla_api::NodeResources {
            cpus: 8,
            memory_bytes: 4096 << 20,
            memory_available_bytes: 1234,
            ..Default::default()
        },
        usage: Vec::new(),
    }))
    .expect("heartbeat");
    assert_eq!(h.commit_count(), before);
    // A node whose room changed keeps it: one commit.
    one(
        &mut h,
        "a heartbeat with more memory",
        Command::Agent(Agent::Heartbeat {
            node: a.clone(),
            resources: flotilla_api::NodeResources {
                cpus: 8,
                memory_bytes: 8192 << 20,
                ..Default::default()
            },
            usage: Vec::new(),
        }),
    );
}

#[test]
fn task_runs_and_a_service_never_reserve_more_than_the_node_has() {
    // One node with room for four tasks (each reserves just over a fifth of its memory).
    let mut h = Harness::new();
    let n = h.join(&[], 1000, 4);
    h.register(&def("big", "big", 201));
    let mut refused = Vec::new();
    for _ in 0..20 {
        match h.op(run("big", 1)) {
            Ok(_) => {}
            Err(e @ ClusterError::Conflict(_)) => refused.push(e.to_string()),
            Err(e) => panic!("{e}"),
        }
    }
    h.create_service(&service("big", "big", 10, 100, 200, ""));
    for _ in 0..3 {
        h.step();
    }
    let tasks = h.tasks();
    assert_eq!(live(&tasks).len(), 4);
    assert_eq!(refused.len(), 16);
    assert!(
        refused.iter().all(|r| r.contains("lacked memory")),
        "{refused:?}"
    );
    let problem = h.service("big").placement_problem.expect("a problem");
    assert!(problem.contains("lacked memory"), "{problem}");
    assert!(h.desired(&n).tasks.len() == 4);
}

/// A deterministic generator (splitmix64) for the property test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn property_no_interleaving_places_more_than_a_node_has_room_for() {
    // Nodes with room for K tasks; task runs, services created and scaled, rounds, nodes
    // converging, stopping and going away, in random orders: at no point does any node hold
    // more than K tasks that are not stopped.
    for seed in 0..60u64 {
        let mut rng = Rng(seed);
        let k = 1 + rng.below(4);
        let nodes = 1 + rng.below(3) as usize;
        let mut h = Harness::new();
        for _ in 0..nodes {
            h.join(&[], 1000, 8);
        }
        let reserve = 1000 / (k + 1) + 1;
        h.register(&def("a", "a", reserve));
        h.register(&def("b", "b", reserve));
        let mut services = Vec::new();
        for _ in 0..40 {
            match rng.below(8) {
                0 => {
                    let _ = h.op(run(
                        if rng.below(2) == 0 { "a" } else { "b" },
                        1 + rng.below(3) as u32,
                    ));
                }
                1 if services.len() < 3 => {
                    let name = format!("s{}", services.len());
                    let count = rng.below(7) as u32;
                    h.create_service(&service(&name, "a", count, 50, 200, ""));
                    services.push(name);
                }
                2 if !services.is_empty() => {
                    let name = services[rng.below(services.len() as u64) as usize].clone();
                    let _ = h.op(Operator::UpdateService(
                        name,
                        ServiceUpdate {
                            desired_count: Some(rng.below(8) as u32),
                            ..ServiceUpdate::default()
                        },
                    ));
                }
                3 => {
                    h.advance(1);
                    h.exec(Command::Tick(Tick::ServiceRound)).expect("round");
                }
                4 => h.converge_all(),
                5 => {
                    let tasks = live(&h.tasks())
                        .iter()
                        .map(|t| t.id.clone())
                        .collect::<Vec<_>>();
                    if !tasks.is_empty() {
                        let id = tasks[rng.below(tasks.len() as u64) as usize].clone();
                        h.op(Operator::StopTask(id)).expect("stop");
                    }
                }
                6 => {
                    let n = h.nodes[rng.below(nodes as u64) as usize].clone();
                    if h.connected.contains(&n) {
                        h.disconnect(&n);
                    } else {
                        h.connect(&n, 1000, 8);
                    }
                }
                _ => {
                    h.advance(1 + rng.below(40));
                    h.rounds();
                }
            }
            let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
            for t in live(&h.tasks()) {
                *per_node
                    .entry(t.node.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            for (node, count) in per_node {
                assert!(
                    count <= k,
                    "seed {seed}: node {node} holds {count} tasks, room for {k}"
                );
            }
        }
    }
}

#[test]
fn a_stale_plan_is_refused_by_the_applier() {
    use super::ctx::Ctx;
    use super::placement::{self, NewTask, Plan};
    use super::state::Txn;

    let mut h = Harness::new();
    let n = h.join(&[], 1000, 4);
    h.register(&def("big", "big", 600));
    let Reply::TaskDef(rev) = h
        .op(Operator::GetTaskDef("big".into(), Some(1)))
        .expect("def")
    else {
        panic!()
    };
    // A plan made while the node was empty …
    let now = h.now;
    let c = h.cluster();
    let request = {
        let txn = Txn::new(&c.state);
        let snapshot = placement::snapshot(&txn, &c.live);
        let r = placement::request(&rev.task_definition, "family:big".into(), 1, &[], &[], 1)
            .expect("request");
        let placed = flotilla_scheduler::place(&snapshot, &r).expect("fits");
        assert_eq!(placed, std::slice::from_ref(&n));
        r
    };
    // … is applied after another task took the room.
    h.op(run("big", 1)).expect("run");
    let c = h.cluster();
    let mut txn = Txn::new(&c.state);
    let mut cx = Ctx {
        txn: &mut txn,
        live: &mut c.live,
        config: &c.config,
        ca: &c.ca,
        sealing: &c.sealing,
        ids: c.ids.as_mut(),
        awsvpc_cursor: &mut c.awsvpc_cursor,
        feed: &mut c.registry,
        now,
        effects: Vec::new(),
        views: Default::default(),
        push: Default::default(),
        metrics: &mut c.metrics,
    };
    let plan = Plan {
        request,
        task: NewTask {
            revision: rev,
            env: Vec::new(),
            origin: None,
            deployment: None,
        },
        nodes: vec![n.clone()],
        all_or_nothing: true,
        allow_disconnected: false,
    };
    let e = placement::apply(&mut cx, plan.clone()).expect_err("stale");
    assert!(
        e.to_string().contains(&format!("node {n} lacked memory")),
        "{e}"
    );
    let applied = placement::apply(
        &mut cx,
        Plan {
            all_or_nothing: false,
            ..plan
        },
    )
    .expect("best effort");
    assert!(applied.created.is_empty());
    assert_eq!(applied.refused, [(n, "lacked memory".to_string())]);
}

#[test]
fn a_nodes_generation_moves_only_when_its_desired_state_changes() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("batch", "batch", 100));
    let g0 = h.desired(&a).generation;
    h.op(run("batch", 2)).expect("run");
    let g1 = h.desired(&a).generation;
    assert_eq!(g1, g0 + 1, "placing two tasks is one change");
    let pushed: Vec<u64> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::PushDesired { node, state, .. } if node == &a => Some(state.generation),
            _ => None,
        })
        .collect();
    assert_eq!(
        pushed.last(),
        Some(&g1),
        "the change is pushed with its generation"
    );
    h.converge(&a);
    assert_eq!(
        h.desired(&a).generation,
        g1,
        "a report of RUNNING changes nothing"
    );
    let id = h.tasks()[0].id.clone();
    h.op(Operator::StopTask(id.clone())).expect("stop");
    let g2 = h.desired(&a).generation;
    assert_eq!(g2, g1 + 1);
    let t = h
        .desired(&a)
        .tasks
        .into_iter()
        .find(|t| t.id == id)
        .expect("still there until stopped");
    assert_eq!(t.stop_code, Some(StopCode::UserInitiated));
    h.converge(&a);
    assert_eq!(h.desired(&a).generation, g2 + 1, "a stopped task leaves");
    assert_eq!(h.desired(&a).tasks.len(), 1);
}

#[test]
fn a_node_behind_on_its_desired_state_gets_it_again() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("batch", "batch", 100));
    h.op(run("batch", 1)).expect("run");
    let pushes = |h: &Harness| {
        h.effects
            .iter()
            .filter(|e| matches!(e, Effect::PushDesired { node, .. } if node == &a))
            .count()
    };
    let heartbeat = |h: &mut Harness| {
        h.exec(Command::Agent(Agent::Heartbeat {
            node: a.clone(),
            resources: flotilla_api::NodeResources {
                cpus: 4,
                memory_bytes: 2048 << 20,
                ..Default::default()
            },
            usage: Vec::new(),
        }))
        .expect("heartbeat");
    };
    let n = pushes(&h);
    heartbeat(&mut h);
    assert_eq!(pushes(&h), n, "the push may still be on its way");
    h.advance(11);
    heartbeat(&mut h);
    assert_eq!(pushes(&h), n + 1, "not acknowledged after 10 s: sent again");
    let generation = h.desired(&a).generation;
    h.exec(Command::Agent(Agent::DesiredAcked {
        node: a.clone(),
        generation,
    }))
    .expect("ack");
    h.advance(11);
    heartbeat(&mut h);
    assert_eq!(pushes(&h), n + 1, "acknowledged: nothing more");
}

#[test]
fn revoking_a_node_ends_its_session_and_refuses_it() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.op(Operator::RevokeNode(a.clone())).expect("revoke");
    assert!(h.effects.iter().any(|e| matches!(
        e,
        Effect::CloseSession { node, code: super::command::CloseCode::Revoked, .. } if node == &a
    )));
    let reply = h
        .exec(Command::Agent(Agent::Hello {
            node: a.clone(),
            session: 99,
            hello: flotilla_api::Hello {
                protocols: flotilla_api::PROTOCOLS.to_vec(),
                agent_version: "test".into(),
                address: None,
                registry: None,
            },
            remote: None,
        }))
        .expect("hello");
    assert!(matches!(
        reply,
        Reply::CloseSession {
            code: super::command::CloseCode::Revoked,
            ..
        }
    ));
}

#[test]
fn distinct_instance_holds_across_the_tasks_of_one_command() {
    let mut h = Harness::new();
    for _ in 0..2 {
        h.join(&[], 4096, 8);
    }
    h.register(&def("one", "one", 10));
    let Operator::RunTask(mut r) = run("one", 3) else {
        unreachable!()
    };
    r.placement_constraints = vec![PlacementConstraintSpec {
        kind: "distinctInstance".into(),
        expression: None,
    }];
    let e = h
        .op(Operator::RunTask(r.clone()))
        .expect_err("only two nodes");
    assert!(e.to_string().contains("distinctInstance"), "{e}");
    assert!(h.tasks().is_empty(), "all or none");
    r.count = 2;
    let Reply::TasksCreated(t) = h.op(Operator::RunTask(r)).expect("two") else {
        panic!()
    };
    let nodes: BTreeSet<_> = t.iter().map(|t| t.node.clone()).collect();
    assert_eq!(nodes.len(), 2);
}

#[test]
fn taskdef_revisions_count_per_family() {
    let mut h = Harness::new();
    let revision = |h: &mut Harness, family: &str| match h
        .op(Operator::RegisterTaskDef(def(family, "x", 64)))
        .expect("register")
    {
        Reply::TaskDefRegistered(r) => r.revision,
        other => panic!("{other:?}"),
    };
    assert_eq!(revision(&mut h, "web"), 1);
    assert_eq!(revision(&mut h, "web"), 2);
    assert_eq!(revision(&mut h, "we"), 1);
    assert_eq!(revision(&mut h, "web-x"), 1);
    let newest = |h: &mut Harness| match h.op(Operator::GetTaskDef("web".into(), None)) {
        Ok(Reply::TaskDef(t)) => t.revision,
        other => panic!("{other:?}"),
    };
    assert_eq!(newest(&mut h), 2);
    h.op(Operator::DeregisterTaskDef("web".into(), 2))
        .expect("deregister");
    assert_eq!(newest(&mut h), 1, "the newest active one");
    assert_eq!(revision(&mut h, "web"), 3, "revisions are never reused");
    let e = h.op(run("web:2", 1)).expect_err("deregistered");
    assert!(e.to_string().contains("web:2 is deregistered"), "{e}");
}

#[test]
fn join_tokens_are_spent_once_expire_and_are_stored_hashed() {
    use super::agents::{redeem, TokenRefusal};
    use super::records::TokenRecord;

    let token = |id: &str, secret: &str, expires_at: u64, uses: u32| TokenRecord {
        id: id.into(),
        secret_hash: flotilla_certs::token::hash_secret(secret),
        created_at: 0,
        expires_at,
        uses,
        used: 0,
        labels: Default::default(),
    };
    let a = token("a", "s3cret", 100, 1);
    assert_eq!(
        redeem(Some(&a), "a", "wrong", 10),
        Err(TokenRefusal::WrongSecret("a".into()))
    );
    let spent = redeem(Some(&a), "a", "s3cret", 10).expect("redeemed");
    assert_eq!(spent.used, 1);
    assert_eq!(
        redeem(Some(&spent), "a", "s3cret", 10),
        Err(TokenRefusal::Used("a".into()))
    );
    let b = token("b", "x", 100, 5);
    assert!(matches!(
        redeem(Some(&b), "b", "x", 150),
        Err(TokenRefusal::Expired { ago: 50, .. })
    ));
    assert_eq!(
        redeem(None, "c", "x", 10),
        Err(TokenRefusal::Unknown("c".into()))
    );
    // Through the core: a join spends the token in the same commit as the node, and the store
    // holds only the secret's hash.
    let mut h = Harness::new();
    let Reply::TokenCreated(t) = h
        .op(Operator::CreateToken(Default::default()))
        .expect("token")
    else {
        panic!()
    };
    let secret = t
        .token
        .parse::<flotilla_certs::token::JoinToken>()
        .expect("token")
        .secret()
        .to_string();
    h.join(&[], 1024, 1);
    let raw = std::fs::read(h.store_path()).expect("read");
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[test]
fn a_nodes_room_is_checked_also_right_after_a_restart() {
    let mut h = Harness::new();
    let a = h.join(&[], 1000, 2);
    h.register(&def("big", "big", 400));
    h.op(run("big", 2)).expect("two fit");
    h.restart(1000);
    // Back in session, before its first heartbeat: its room is known from the store.
    h.hello(&a);
    let e = h.op(run("big", 1)).expect_err("full");
    assert!(e.to_string().contains("lacked memory"), "{e}");
}

/// A pinned run of schedule `name` on `node` fired at `fired_at`, as the node reports it.
fn pinned_run(node: &str, name: &str, fired_at: u64) -> TaskStatus {
    TaskStatus {
        id: flotilla_api::tasks::scheduled_task_id(node, name, fired_at),
        state: TaskState::Running,
        stop_reason: None,
        stop_code: None,
        containers: Vec::new(),
        scheduled: Some(flotilla_api::tasks::ScheduledRun {
            schedule: name.into(),
            fired_at,
        }),
        network: None,
    }
}

fn pinned_schedule(name: &str, family: &str, cron: &str, node: &str) -> Operator {
    Operator::CreateSchedule(flotilla_api::schedule::ScheduleSpec {
        name: name.into(),
        task_definition: family.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        node: Some(node.into()),
        overlap: flotilla_api::schedule::Overlap::Allow,
        env: Vec::new(),
    })
}

#[test]
fn what_a_removed_or_revoked_nodes_session_still_sends_changes_nothing() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    let b = h.join(&[], 2048, 4);
    h.register(&def("cron", "cron", 10));
    h.op(pinned_schedule("nightly", "cron", "* * * * *", &a))
        .expect("schedule");
    h.op(Operator::RemoveNode(a.clone(), true)).expect("remove");
    h.op(Operator::RevokeNode(b.clone())).expect("revoke");
    let commits = h.commit_count();
    let before = h.tasks();
    let fired_at = h.now.secs() / 60 * 60;
    // Messages its session had in flight when the node was removed or revoked.
    for (node, code) in [
        (&a, super::command::CloseCode::Refused),
        (&b, super::command::CloseCode::Revoked),
    ] {
        h.effects.clear();
        let said = [
            Agent::Report {
                node: node.clone(),
                tasks: vec![pinned_run(node, "nightly", fired_at)],
            },
            Agent::Heartbeat {
                node: node.clone(),
                resources: flotilla_api::NodeResources {
                    cpus: 64,
                    memory_bytes: 1 << 40,
                    ..Default::default()
                },
                usage: Vec::new(),
            },
            Agent::Ping { node: node.clone() },
        ];
        for a in said {
            let reply = h.exec(Command::Agent(a)).expect("answered");
            assert!(
                matches!(&reply, Reply::Agent(flotilla_api::AgentReply::Refused { reason }) if reason.contains(node.as_str())),
                "{reply:?}"
            );
        }
        assert!(h.effects.iter().all(|e| matches!(
            e,
            Effect::CloseSession { node: n, code: c, .. } if n == node && *c == code
        )));
    }
    assert_eq!(h.tasks(), before, "no task adopted on a removed node");
    assert_eq!(h.commit_count(), commits, "nothing was written");
    let Reply::Node(n) = h.op(Operator::GetNode(b.clone())).expect("b") else {
        panic!()
    };
    assert_eq!(
        n.resources.map(|r| r.cpus),
        Some(4),
        "the revoked node's heartbeat is not kept"
    );
}

#[test]
fn a_node_reports_only_runs_its_pinned_schedule_really_fires() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("cron", "cron", 10));
    // 02:00 every day.
    h.op(pinned_schedule("nightly", "cron", "0 2 * * *", &a))
        .expect("schedule");
    let midnight = h.now.secs() / 86_400 * 86_400;
    let made_up: Vec<TaskStatus> = [
        midnight + 2 * 3600 + 1,  // not a whole minute
        midnight + 2 * 3600 + 60, // 02:01
        midnight + 3 * 3600,      // 03:00
        0,
        u64::MAX,
    ]
    .into_iter()
    .chain((0..500).map(|i| midnight + 7 + i * 13))
    .map(|at| pinned_run(&a, "nightly", at))
    .collect();
    let commits = h.commit_count();
    h.exec(Command::Agent(Agent::Report {
        node: a.clone(),
        tasks: made_up,
    }))
    .expect("report");
    assert!(h.tasks().is_empty(), "{:?}", h.tasks());
    assert_eq!(h.commit_count(), commits, "nothing was written");
    // A real firing is adopted.
    let real = midnight + 86_400 + 2 * 3600;
    h.exec(Command::Agent(Agent::Report {
        node: a.clone(),
        tasks: vec![pinned_run(&a, "nightly", real)],
    }))
    .expect("report");
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].started_by.as_deref(), Some("schedule:nightly"));
}

#[test]
fn a_node_cannot_pass_a_failure_off_as_a_stop_the_control_plane_decides() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.join(&[], 2048, 4);
    }
    h.register(&def("web", "web:1", 100));
    h.create_service(&service("web", "web", 4, 50, 200, ""));
    // Every task the nodes start exits at once, and they report it as scaled down.
    for _ in 0..30 {
        h.advance(1);
        h.rounds();
        for n in h.connected.clone() {
            let tasks: Vec<TaskStatus> = h
                .desired(&n)
                .tasks
                .iter()
                .filter(|t| t.desired == DesiredStatus::Running)
                .map(|t| TaskStatus {
                    id: t.id.clone(),
                    state: TaskState::Stopped,
                    stop_reason: Some("scaled down".into()),
                    stop_code: Some(StopCode::ServiceScaledDown),
                    containers: Vec::new(),
                    scheduled: None,
                    network: None,
                })
                .collect();
            h.exec(Command::Agent(Agent::Report { node: n, tasks }))
                .expect("report");
        }
    }
    assert_eq!(
        h.events("service.deployment.failed").len(),
        1,
        "the circuit breaker counts the failures"
    );
    let tasks = h.tasks();
    let stopped: Vec<_> = of_service(&tasks, "web")
        .into_iter()
        .filter(|t| t.state == TaskState::Stopped)
        .collect();
    assert!(stopped.len() >= 3, "{tasks:?}");
    for t in stopped {
        assert_eq!(t.stop_code, None, "{t:?}");
        assert_eq!(t.stop_reason.as_deref(), Some("scaled down"), "{t:?}");
    }
    // What a node does decide is kept.
    let n = h.nodes[0].clone();
    h.register(&def("batch", "batch", 10));
    h.op(Operator::RunTask(TaskRun {
        node: Some(n.clone()),
        ..TaskRun::new("batch")
    }))
    .expect("run");
    let id = h.desired(&n).tasks.last().expect("batch").id.clone();
    h.exec(Command::Agent(Agent::Report {
        node: n,
        tasks: vec![TaskStatus {
            id: id.clone(),
            state: TaskState::Stopped,
            stop_reason: None,
            stop_code: Some(StopCode::EssentialContainerExited),
            containers: Vec::new(),
            scheduled: None,
            network: None,
        }],
    }))
    .expect("report");
    let Reply::Task(t) = h.op(Operator::GetTask(id)).expect("task") else {
        panic!()
    };
    assert_eq!(t.stop_code, Some(StopCode::EssentialContainerExited));
}

#[test]
fn a_task_being_stopped_does_not_count_as_running_again_on_a_late_report() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("web", "web:1", 100));
    h.create_service(&service("web", "web", 2, 50, 200, ""));
    settle(&mut h, "web", 10);
    let running: Vec<String> = of_service(&h.tasks(), "web")
        .iter()
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(running.len(), 2);
    h.op(Operator::UpdateService(
        "web".into(),
        ServiceUpdate {
            desired_count: Some(1),
            ..ServiceUpdate::default()
        },
    ))
    .expect("scale down");
    h.advance(1);
    h.rounds();
    // The node's report of a moment ago: both running (it had not had the stop yet).
    let node = h.nodes[0].clone();
    let stale: Vec<TaskStatus> = running
        .iter()
        .map(|id| TaskStatus {
            id: id.clone(),
            state: TaskState::Running,
            stop_reason: None,
            stop_code: None,
            containers: Vec::new(),
            scheduled: None,
            network: None,
        })
        .collect();
    h.exec(Command::Agent(Agent::Report { node, tasks: stale }))
        .expect("report");
    let tasks = h.tasks();
    let states: BTreeMap<TaskState, usize> =
        of_service(&tasks, "web")
            .iter()
            .fold(BTreeMap::new(), |mut m, t| {
                *m.entry(t.state).or_default() += 1;
                m
            });
    assert_eq!(
        states,
        BTreeMap::from([(TaskState::Running, 1), (TaskState::Stopping, 1)]),
        "{tasks:?}"
    );
    assert_eq!(h.service("web").running_count, 1);
    // Once the node has it, the stop completes as usual.
    h.converge_all();
    let tasks = h.tasks();
    assert_eq!(
        live(
            &of_service(&tasks, "web")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        )
        .len(),
        1
    );
}

#[test]
fn a_deeply_nested_member_of_expression_is_refused_not_a_crash() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("web", "web", 10));
    // What fits in a request body: tens of thousands of levels.
    let deep = format!("{}attribute:a exists", "not (".repeat(12_000));
    let e = h
        .op(Operator::RunTask(TaskRun {
            placement_constraints: vec![PlacementConstraintSpec {
                kind: "memberOf".into(),
                expression: Some(deep.clone()),
            }],
            ..TaskRun::new("web")
        }))
        .expect_err("too deep");
    assert!(
        matches!(&e, ClusterError::Invalid { .. })
            && e.to_string().contains("placementConstraints[0].expression")
            && e.to_string().contains("nested deeper than"),
        "{e}"
    );
    let svc = format!(
        r#"{{"serviceName":"web","taskDefinition":"web","placementConstraints":[{{"type":"memberOf","expression":"{deep}"}}]}}"#
    );
    let ClusterError::Invalid { problems, .. } =
        h.op(Operator::CreateService(svc)).expect_err("too deep")
    else {
        panic!("not refused as invalid")
    };
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("$.placementConstraints[0].expression")),
        "{problems:?}"
    );
    let taskdef = format!(
        r#"{{"family":"deep","placementConstraints":[{{"type":"memberOf","expression":"{deep}"}}],
            "containerDefinitions":[{{"name":"main","image":"x","memory":8}}]}}"#
    );
    assert!(h.op(Operator::RegisterTaskDef(taskdef)).is_err());
    assert!(h.tasks().is_empty());
}

#[test]
fn a_task_that_stopped_on_its_own_is_desired_stopped_and_its_logs_are_read_from_its_node() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("job", "job", 64));
    h.failing.insert("job".into());
    let Reply::TasksCreated(t) = h.op(run("job", 1)).expect("run") else {
        panic!()
    };
    h.converge(&a);
    let Reply::Task(t) = h.op(Operator::GetTask(t[0].id.clone())).expect("task") else {
        panic!()
    };
    assert_eq!(t.state, TaskState::Stopped);
    assert_eq!(t.desired, DesiredStatus::Stopped, "as ECS's desiredStatus");
    // Its node keeps the logs of a stopped task a while: they are read from there.
    let Reply::LogSource { node, .. } = h.op(Operator::LogSource(t.id.clone())).expect("logs")
    else {
        panic!()
    };
    assert_eq!(Some(node), t.node);
}

#[test]
fn a_task_whose_containers_never_started_has_no_logs_and_says_why_not_that_they_expired() {
    use flotilla_api::tasks::{ContainerState, ContainerStatus};

    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("job", "nosuch.invalid/x:1", 64));
    let Reply::TasksCreated(t) = h.op(run("job", 2)).expect("run") else {
        panic!()
    };
    let why = "container main could not start: pulling image 'nosuch.invalid/x:1': registry \
               nosuch.invalid: dns error";
    let container = |exit_code, restarts| ContainerStatus {
        name: "main".into(),
        state: ContainerState::Exited,
        exit_code,
        reason: exit_code.is_none().then(|| why.to_string()),
        restarts,
        restart_at: None,
        health: None,
        usage: None,
    };
    let stopped = |id: &str, c: ContainerStatus| TaskStatus {
        id: id.to_string(),
        state: TaskState::Stopped,
        stop_reason: Some(why.into()),
        stop_code: Some(StopCode::TaskFailedToStart),
        containers: vec![c],
        scheduled: None,
        network: None,
    };
    h.exec(Command::Agent(Agent::Report {
        node: a.clone(),
        tasks: vec![
            // Its image could not be pulled: it never ran.
            stopped(&t[0].id, container(None, 0)),
            // It ran, exited, and its restart could not start: it has output.
            stopped(&t[1].id, container(None, 1)),
        ],
    }))
    .expect("report");
    let e = h
        .op(Operator::LogSource(t[0].id.clone()))
        .expect_err("no logs");
    assert!(matches!(e, ClusterError::Conflict(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "task {} has no logs: its containers never started: {why}",
            t[0].id
        )
    );
    assert!(matches!(
        h.op(Operator::LogSource(t[1].id.clone())),
        Ok(Reply::LogSource { .. })
    ));
    // Stopped by an operator before its node started anything: the same, with that reason.
    let Reply::TasksCreated(p) = h.op(run("job", 1)).expect("run") else {
        panic!()
    };
    h.op(Operator::StopTask(p[0].id.clone())).expect("stop");
    let pending = ContainerStatus {
        state: ContainerState::Pending,
        ..container(Some(0), 0)
    };
    h.exec(Command::Agent(Agent::Report {
        node: a.clone(),
        tasks: vec![TaskStatus {
            stop_reason: Some(StopCode::UserInitiated.reason().into()),
            stop_code: Some(StopCode::UserInitiated),
            ..stopped(
                &p[0].id,
                ContainerStatus {
                    exit_code: None,
                    ..pending
                },
            )
        }],
    }))
    .expect("report");
    let e = h
        .op(Operator::LogSource(p[0].id.clone()))
        .expect_err("no logs");
    assert!(
        e.to_string()
            .ends_with("its containers never started: stopped by an operator"),
        "{e}"
    );
}

#[test]
fn a_schedule_that_never_fires_is_refused_and_a_removed_node_takes_its_schedules_along() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("job", "job", 64));
    let spec = |cron: &str, node: Option<&str>| {
        let node = node
            .map(|n| format!(r#","node":"{n}""#))
            .unwrap_or_default();
        serde_json::from_str(&format!(
            r#"{{"name":"s{}","taskDefinition":"job","cron":"{cron}"{node}}}"#,
            cron.len()
        ))
        .expect("spec")
    };
    let e = h
        .op(Operator::CreateSchedule(spec("0 0 30 2 *", None)))
        .expect_err("30 February");
    let ClusterError::Invalid { problems, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(problems[0].contains("never fires"), "{problems:?}");
    let Reply::ScheduleCreated(s) = h
        .op(Operator::CreateSchedule(spec("*/5 * * * *", Some(&a))))
        .expect("pinned")
    else {
        panic!()
    };
    assert!(
        s.next_run.is_some(),
        "a pinned schedule shows its next firing too"
    );
    h.disconnect(&a);
    let e = h
        .op(Operator::RemoveNode(a.clone(), false))
        .expect_err("it fires a schedule");
    assert!(e.to_string().contains(&s.spec.name), "{e}");
    h.op(Operator::RemoveNode(a.clone(), true)).expect("force");
    assert!(h.op(Operator::GetSchedule(s.spec.name.clone())).is_err());
}

#[test]
fn an_agent_version_is_kept_printable_and_short() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.disconnect(&a);
    h.exec(Command::Agent(Agent::Hello {
        node: a.clone(),
        session: 77,
        hello: flotilla_api::Hello {
            protocols: flotilla_api::PROTOCOLS.to_vec(),
            agent_version: format!("1.0\u{1b}[31m{}", "x".repeat(10_000)),
            address: None,
            registry: None,
        },
        remote: None,
    }))
    .expect("hello");
    let Reply::Node(n) = h.op(Operator::GetNode(a)).expect("node") else {
        panic!()
    };
    let v = n.agent_version.expect("version");
    assert!(
        v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic() || c == ' '),
        "{v}"
    );
}

#[test]
fn a_task_whose_essential_container_exited_is_desired_stopped_while_it_stops() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("job", "job", 64));
    let Reply::TasksCreated(t) = h.op(run("job", 1)).expect("run") else {
        panic!()
    };
    h.converge(&a);
    let id = t[0].id.clone();
    let report = |state, code: Option<StopCode>| {
        Command::Agent(Agent::Report {
            node: a.clone(),
            tasks: vec![TaskStatus {
                id: id.clone(),
                state,
                stop_reason: code.map(|c| c.reason().to_string()),
                stop_code: code,
                containers: Vec::new(),
                scheduled: None,
                network: None,
            }],
        })
    };
    // ECS: desiredStatus is STOPPED from the moment the task stops, not once it has stopped.
    h.exec(report(
        TaskState::Stopping,
        Some(StopCode::EssentialContainerExited),
    ))
    .expect("report");
    let Reply::Task(info) = h.op(Operator::GetTask(id.clone())).expect("task") else {
        panic!()
    };
    assert_eq!(
        (info.state, info.desired),
        (TaskState::Stopping, DesiredStatus::Stopped)
    );
    // A late report of it running does not make it wanted again.
    h.exec(report(TaskState::Running, None)).expect("report");
    let Reply::Task(info) = h.op(Operator::GetTask(id)).expect("task") else {
        panic!()
    };
    assert_eq!(
        (info.state, info.desired),
        (TaskState::Stopping, DesiredStatus::Stopped)
    );
}

#[test]
fn a_daemon_task_waits_out_its_nodes_lost_after_like_any_other() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    let _b = h.join(&[], 2048, 4);
    h.register(&def("agent", "agent", 100));
    h.create_service(
        r#"{"serviceName":"per-node","taskDefinition":"agent","schedulingStrategy":"DAEMON",
            "disconnectPolicy":{"lostAfter":10}}"#,
    );
    settle(&mut h, "per-node", 10);
    let ids = |h: &mut Harness| -> Vec<String> {
        let mut v: Vec<String> = live(&h.tasks()).iter().map(|t| t.id.clone()).collect();
        v.sort();
        v
    };
    let before = ids(&mut h);
    assert_eq!(before.len(), 2);
    // A node away for less than lostAfter keeps its task, as a REPLICA's would: neither
    // stopped as ineligible at the first missed round nor started again when it is back.
    h.disconnect(&a);
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(ids(&mut h), before, "{:#?}", h.tasks());
    h.connect(&a, 2048, 4);
    for _ in 0..4 {
        h.step();
    }
    assert_eq!(ids(&mut h), before, "{:#?}", h.tasks());
    assert!(
        h.tasks().iter().all(|t| t.stop_code.is_none()),
        "{:#?}",
        h.tasks()
    );
}

/// A bridge task definition of family `family` whose one container publishes `mapping`.
fn published(family: &str, mapping: &str) -> String {
    format!(
        r#"{{"family":"{family}","networkMode":"bridge","containerDefinitions":[
            {{"name":"main","image":"{family}","memory":32,"portMappings":[{mapping}]}}]}}"#
    )
}

/// A task refused for a host port taken names the task that holds it, on which node: what an
/// operator looks for next.
#[test]
fn a_task_refused_for_a_port_taken_names_the_task_that_holds_it() {
    let mut h = Harness::new();
    let node = h.join(&[], 2048, 4);
    h.register(&published("web", r#"{"containerPort":80,"hostPort":8080}"#));
    h.register(&published(
        "other",
        r#"{"containerPort":81,"hostPort":8080}"#,
    ));
    let Reply::TasksCreated(held) = h.op(run("web", 1)).expect("web runs") else {
        panic!("no task")
    };
    let e = h.op(run("other", 1)).expect_err("its port is taken");
    assert_eq!(
        e.to_string(),
        format!(
            "other:1: no node can take a task: 1 node had port 8080/tcp taken; task {} (web:1) \
             on node {node} holds 8080/tcp",
            held[0].id
        )
    );
    // Named for the one node asked for too.
    let mut on = run("other", 1);
    if let Operator::RunTask(r) = &mut on {
        r.node = Some(node.clone());
    }
    let e = h.op(on).expect_err("its port is taken");
    let named = format!(
        "; task {} (web:1) on node {node} holds 8080/tcp",
        held[0].id
    );
    assert!(e.to_string().ends_with(&named), "{e}");
    // A node refused for anything else is not looked at: here it lacks memory first.
    h.register(&published("big", r#"{"containerPort":80,"hostPort":8080}"#).replace("32", "4096"));
    let e = h.op(run("big", 1)).expect_err("too big");
    assert!(
        e.to_string().contains("lacked memory") && !e.to_string().contains("holds"),
        "{e}"
    );
}

/// The `*_SERVICE_*` variables a task of namespace `ns` would get from the registry the core
/// pushes now, sorted.
fn service_env(h: &mut Harness, ns: &str) -> Vec<(String, String)> {
    let mut env = flotilla_api::discovery::environment(h.cluster().registry.registry(), ns);
    env.sort();
    env
}

#[test]
fn a_services_variables_follow_from_its_definition_before_any_of_its_tasks_runs() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&published("hp", r#"{"containerPort":80}"#));
    h.register(&published(
        "db",
        r#"{"containerPort":5432,"hostPort":15432}"#,
    ));
    h.create_service(
        r#"{"serviceName":"hp","taskDefinition":"hp","desiredCount":2,
            "discovery":{"namespace":"shop","vip":true}}"#,
    );
    h.create_service(
        r#"{"serviceName":"db","taskDefinition":"db","desiredCount":1,
            "discovery":{"namespace":"shop"}}"#,
    );
    // One round: the tasks are placed and the registry pushed with them; none runs yet.
    h.advance(1);
    h.rounds();
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    assert!(
        tasks.iter().all(|t| t.state != TaskState::Running),
        "{tasks:#?}"
    );
    let vip = h
        .cluster()
        .registry
        .registry()
        .service("shop", "hp")
        .and_then(|s| s.vip);
    let vip = vip.expect("hp has its VIP").to_string();
    let expected: Vec<(String, String)> = [
        ("DB_SERVICE_HOST", "db.shop.flotilla.internal"),
        ("DB_SERVICE_PORT", "15432"),
        ("HP_SERVICE_HOST", vip.as_str()),
        ("HP_SERVICE_PORT", "80"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(service_env(&mut h, "shop"), expected);
    // `service endpoints` shows the VIP's port the variables give.
    let Reply::Endpoints(e) = h
        .op(Operator::ServiceEndpoints("hp".into()))
        .expect("endpoints")
    else {
        panic!("no endpoints")
    };
    assert_eq!((e.port, e.endpoints.len()), (Some(80), 0), "{e:#?}");
    // The same once the tasks run and are healthy, and after a restart of the core, before
    // any node is back in session.
    for _ in 0..3 {
        h.step();
    }
    assert_eq!(live(&h.tasks()).len(), 3);
    assert_eq!(service_env(&mut h, "shop"), expected);
    h.restart(1000);
    h.advance(1);
    h.rounds();
    assert_eq!(service_env(&mut h, "shop"), expected);
    // And with every task of hp stopped, still the same.
    h.op(Operator::UpdateService(
        "hp".into(),
        ServiceUpdate {
            desired_count: Some(0),
            ..ServiceUpdate::default()
        },
    ))
    .expect("scale to 0");
    let node = h.nodes[0].clone();
    h.connect(&node, 2048, 4);
    for _ in 0..5 {
        h.step();
    }
    let tasks = h.tasks();
    assert!(
        of_service(&tasks, "hp")
            .iter()
            .all(|t| t.state == TaskState::Stopped),
        "{tasks:#?}"
    );
    assert_eq!(service_env(&mut h, "shop"), expected);
}

fn metrics(h: &mut Harness) -> super::metrics::Snapshot {
    match h.exec(Command::Metrics).expect("metrics") {
        Reply::Metrics(s) => *s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_count_nodes_tasks_services_and_placements_from_memory() {
    use super::metrics::{PlacementOrigin as O, RefusalReason as R};
    // One node with room for four tasks of "big" (each reserves just over a fifth of its
    // memory), one node that went away.
    let mut h = Harness::new();
    let _n = h.join(&[], 1000, 4);
    let gone = h.join(&[], 1000, 4);
    h.disconnect(&gone);
    h.register(&def("big", "big", 201));
    h.register(&def("tiny", "tiny", 6));
    h.op(run("big", 1)).expect("run");
    // Room for three more: five asked for all or nothing are refused, every one of them.
    assert!(matches!(
        h.op(run("big", 5)),
        Err(ClusterError::Conflict(_))
    ));
    h.create_service(&service("big", "big", 10, 100, 200, ""));
    h.create_service(
        r#"{"serviceName":"everywhere","taskDefinition":"tiny","schedulingStrategy":"DAEMON"}"#,
    );
    for _ in 0..3 {
        h.step();
    }
    let before = h.commit_count();
    let m = metrics(&mut h);
    assert_eq!(h.commit_count(), before, "a scrape writes nothing");

    assert_eq!(
        m.nodes,
        [
            ("READY", 1),
            ("DRAINING", 0),
            ("DISCONNECTED", 1),
            ("REVOKED", 0)
        ]
    );
    assert_eq!(m.sessions, 1);
    assert_eq!(m.counters.sessions_admitted, 2);
    // Tasks by service and state: as the API lists them.
    let tasks = h.tasks();
    let mut want: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for t in &tasks {
        let service = t
            .started_by
            .as_deref()
            .and_then(|s| s.strip_prefix("service:"))
            .unwrap_or_default();
        *want
            .entry((service.to_string(), super::metrics::task_state(t.state)))
            .or_default() += 1;
    }
    let got: BTreeMap<(String, &str), u64> = m
        .tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(got, want);
    assert_eq!(m.tasks.get(&(String::new(), "RUNNING")), Some(&1));
    assert_eq!(m.tasks.get(&("big".to_string(), "STOPPED")), Some(&0));
    // Desired and running per service; the daemon runs on the one ready node.
    let big = m.services.iter().find(|s| s.service == "big").expect("big");
    assert_eq!((big.desired, big.running, big.pending), (10, 3, 0));
    // As the API counts them.
    for s in &m.services {
        let info = h.service(&s.service);
        assert_eq!(
            (s.running, s.pending),
            (u64::from(info.running_count), u64::from(info.pending_count)),
            "{}",
            s.service
        );
    }
    let every = m
        .services
        .iter()
        .find(|s| s.service == "everywhere")
        .expect("daemon");
    assert_eq!((every.desired, every.running), (1, 1));
    assert_eq!(
        m.deployments.get(&("big".to_string(), "IN_PROGRESS")),
        Some(&1)
    );
    assert_eq!(
        m.deployments.get(&("everywhere".to_string(), "COMPLETED")),
        Some(&1)
    );
    // Placements by origin; refusals by origin and reason.
    let c = &m.counters;
    assert_eq!(c.placements.get(&O::TaskRun), Some(&1));
    assert_eq!(c.placements.get(&O::Service), Some(&4));
    assert_eq!(c.refusals.get(&(O::TaskRun, R::Memory)), Some(&5));
    // The big service asks for the seven that do not fit every round.
    assert!(
        c.refusals
            .get(&(O::Service, R::Memory))
            .is_some_and(|n| *n >= 7 * 3),
        "{:?}",
        c.refusals
    );
    assert!(
        c.refusals.keys().all(|(_, r)| *r == R::Memory),
        "{:?}",
        c.refusals
    );
    // Every commit was timed.
    assert_eq!(c.commits.count, h.commit_count());
    assert_eq!(c.commit_failures, 0);
}

#[test]
fn metrics_count_sessions_admitted_rate_limited_and_refused() {
    let mut h = Harness::with_config(super::Config {
        session_rate: 1,
        ..Default::default()
    });
    let n = h.join(&[], 1000, 4);
    h.disconnect(&n);
    let hello = |node: &str, session| {
        Command::Agent(Agent::Hello {
            node: node.into(),
            session,
            hello: flotilla_api::Hello {
                protocols: flotilla_api::PROTOCOLS.to_vec(),
                agent_version: "test".into(),
                address: None,
                registry: None,
            },
            remote: None,
        })
    };
    // The one session of this second is taken: told to come back.
    let busy = h.exec(hello(&n, 100)).expect("hello");
    assert!(
        matches!(busy, Reply::Hello(flotilla_api::HelloReply::Busy { .. })),
        "{busy:?}"
    );
    let unknown = h.exec(hello("n-unknown", 101)).expect("hello");
    assert!(matches!(unknown, Reply::CloseSession { .. }), "{unknown:?}");
    let c = metrics(&mut h).counters;
    assert_eq!(
        (
            c.sessions_admitted,
            c.sessions_rate_limited,
            c.sessions_refused
        ),
        (1, 1, 1)
    );
}

/// The cost of a metrics scrape on the core's thread with 1,000 simulated nodes' worth of
/// records (the harness's fake agents: commands, no process; `SCRAPE_NODES` for another size),
/// 100 REPLICA services of a tenth as many tasks each and one DAEMON service, against a
/// steady-state service round on the same records. Ignored by default; BENCHMARKS.md has its
/// numbers: `CARGO_PROFILE_RELEASE_LTO=false cargo test --release -p orchestratord --lib --
/// --ignored --nocapture scrape_cost`.
#[test]
#[ignore]
fn scrape_cost_with_1000_nodes() {
    use std::time::{Duration, Instant};
    let nodes: u32 = std::env::var("SCRAPE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    // Every session admitted at once (the harness's clock stands still while they join).
    let mut h = Harness::with_config(super::Config {
        session_rate: nodes + 1,
        ..Default::default()
    });
    for i in 0..nodes {
        h.join(&[("site", &format!("s{}", i % 10))], 256 << 10, 64);
    }
    h.register(&def("web", "web", 64));
    h.register(&def("agent", "agent", 16));
    for s in 0..100 {
        h.create_service(&service(&format!("web{s}"), "web", nodes / 10, 50, 200, ""));
    }
    h.create_service(
        r#"{"serviceName":"everywhere","taskDefinition":"agent","schedulingStrategy":"DAEMON"}"#,
    );
    for _ in 0..3 {
        h.step();
    }
    let timed = |h: &mut Harness, c: Command| {
        let t = Instant::now();
        h.exec(c).expect("command");
        t.elapsed()
    };
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let scrapes: Vec<Duration> = (0..21).map(|_| timed(&mut h, Command::Metrics)).collect();
    let rounds: Vec<Duration> = (0..21)
        .map(|_| timed(&mut h, Command::Tick(Tick::ServiceRound)))
        .collect();
    let m = metrics(&mut h);
    let tasks: u64 = m.tasks.values().sum();
    let running: u64 = m.services.iter().map(|s| s.running).sum();
    assert_eq!(m.nodes[0], ("READY", u64::from(nodes)));
    assert_eq!(
        running,
        u64::from(nodes) * 11,
        "every task placed and running"
    );
    let (scrape, round) = (p50(scrapes), p50(rounds));
    println!(
        "scrape of {nodes} nodes, {tasks} tasks, 101 services: p50 {:.2} ms; steady service round p50 {:.2} ms ({:.2}×)",
        scrape.as_secs_f64() * 1e3,
        round.as_secs_f64() * 1e3,
        scrape.as_secs_f64() / round.as_secs_f64()
    );
}

#[test]
fn a_nodes_cpu_is_its_busy_time_over_two_heartbeats_and_only_while_it_is_heard() {
    let mut h = Harness::new();
    let n = h.join(&[], 1000, 4);
    let beat = |h: &mut Harness, busy: u64| {
        h.exec(Command::Agent(Agent::Heartbeat {
            node: n.clone(),
            resources: flotilla_api::NodeResources {
                cpus: 4,
                memory_bytes: 1000 << 20,
                cpu_busy_usec: Some(busy),
                ..Default::default()
            },
            usage: Vec::new(),
        }))
        .expect("heartbeat");
    };
    let cpu = |h: &mut Harness| match h.op(Operator::GetNode(n.clone())).expect("node") {
        Reply::Node(info) => info.cpu_millicores,
        other => panic!("{other:?}"),
    };
    beat(&mut h, 50_000_000);
    assert_eq!(cpu(&mut h), None, "one heartbeat gives no rate");
    // 15 s of CPU over 10 s: one and a half cores.
    h.advance(10);
    beat(&mut h, 65_000_000);
    assert_eq!(cpu(&mut h), Some(1500));
    // Its session gone, its last rate is not its use now.
    h.disconnect(&n);
    assert_eq!(cpu(&mut h), None);
}

#[test]
fn an_exec_goes_to_a_running_tasks_connected_node_and_is_an_event_naming_the_admin() {
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    h.register(&def("web", "web", 64));
    let Reply::TasksCreated(t) = h.op(run("web", 1)).expect("run") else {
        panic!()
    };
    let id = t[0].id.clone();
    h.converge(&a);
    let exec = |task: &str| Operator::Exec {
        task: task.to_string(),
        container: Some("main".into()),
        command: "sh -c \"echo hi\"".into(),
        admin: "alice".into(),
    };
    let Reply::ExecTarget { node, container } = h.op(exec(&id)).expect("exec") else {
        panic!()
    };
    assert_eq!((node.as_str(), container.as_str()), (a.as_str(), "main"));
    let events = h.events("task.exec");
    assert_eq!(events.len(), 1, "{events:?}");
    let ok_events = 2;
    assert_eq!(events[0].subject, id);
    assert_eq!(
        events[0].message,
        format!("admin alice runs sh -c \"echo hi\" in container main on node {a}")
    );
    assert!(matches!(
        h.op(exec("t-nope")),
        Err(ClusterError::NotFound(m)) if m.contains("t-nope")
    ));
    let mut nope = exec(&id);
    if let Operator::Exec { container, .. } = &mut nope {
        *container = Some("nope".into());
    }
    let refused = h.op(nope);
    assert!(
        matches!(&refused, Err(ClusterError::NotFound(m)) if m.contains("has no container 'nope' (it has main)")),
        "{refused:?}"
    );
    let mut first = exec(&id);
    if let Operator::Exec { container, .. } = &mut first {
        *container = None;
    }
    let Reply::ExecTarget { container, .. } = h.op(first).expect("exec") else {
        panic!()
    };
    assert_eq!(container, "main", "the task's first");
    h.op(Operator::StopTask(id.clone())).expect("stop");
    h.converge(&a);
    let stopped = h.op(exec(&id));
    assert!(
        matches!(&stopped, Err(ClusterError::Conflict(m)) if m.contains("has stopped")),
        "{stopped:?}"
    );
    let Reply::TasksCreated(t) = h.op(run("web", 1)).expect("run") else {
        panic!()
    };
    h.converge(&a);
    h.disconnect(&a);
    assert!(matches!(
        h.op(exec(&t[0].id)),
        Err(ClusterError::Unavailable(m)) if m.contains("not connected")
    ));
    assert_eq!(
        h.events("task.exec").len(),
        ok_events,
        "a refused exec is no event"
    );
}

#[test]
fn a_secret_is_sealed_at_rest_pinned_per_task_and_given_only_to_the_node_that_runs_it() {
    use flotilla_api::secrets::{SecretPut, SecretValue};
    use flotilla_api::AgentReply;
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    let b = h.join(&[], 2048, 4);
    let value = br#"{"user": "app", "password": "hunter2-3f9a"}"#;
    let create = |name: &str, v: &[u8]| {
        Operator::CreateSecret(SecretPut {
            name: name.into(),
            value: SecretValue(v.to_vec()),
        })
    };
    h.op(create("db", value)).expect("create");
    assert!(matches!(
        h.op(create("db", b"x")),
        Err(ClusterError::Conflict(_))
    ));
    assert!(matches!(
        h.op(create("-x", b"x")),
        Err(ClusterError::Invalid { .. })
    ));
    assert!(matches!(
        h.op(create("e", b"")),
        Err(ClusterError::Invalid { .. })
    ));
    let uses = |family: &str, from: &str| {
        format!(
            r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"x","memory":64,
                "secrets":[{{"name":"DB","valueFrom":"{from}"}}]}}]}}"#
        )
    };
    // References to what does not exist are refused at registration, by path.
    for (from, want) in [
        ("flotilla:nope", "no secret nope"),
        ("flotilla:db::2", "secret db has no version 2"),
        (
            "flotilla:db:port",
            "JSON key 'port': the value has no such key",
        ),
    ] {
        let refused = h.op(Operator::RegisterTaskDef(uses("bad", from)));
        assert!(
            matches!(&refused, Err(ClusterError::Invalid { problems, .. })
                if problems.iter().any(|p| p.starts_with("$.containerDefinitions[0].secrets[0].valueFrom: ") && p.contains(want))),
            "{from}: {refused:?}"
        );
    }
    h.register(&uses("app", "flotilla:db:password"));
    let Reply::TasksCreated(t) = h.op(run("app", 1)).expect("run") else {
        panic!()
    };
    let first = t[0].id.clone();
    let runner = t[0].node.clone().expect("placed");
    let other = if runner == a { b.clone() } else { a.clone() };
    assert_eq!(
        h.desired(&runner).tasks[0].secret_versions,
        BTreeMap::from([("db".to_string(), 1)])
    );
    let fetch = |node: &str, version: u32| {
        Command::Agent(Agent::FetchSecret {
            kind: super::secrets::Kind::Secret,
            node: node.to_string(),
            name: "db".into(),
            version,
        })
    };
    let Ok(Reply::Agent(AgentReply::Secret { value: got })) = h.exec(fetch(&runner, 1)) else {
        panic!("the node that runs it gets it")
    };
    assert_eq!(got.0, value.to_vec());
    // Another node, another version: refused, logged as an event (without the value).
    for (node, version) in [(other.as_str(), 1), (runner.as_str(), 2)] {
        let r = h.exec(fetch(node, version));
        assert!(
            matches!(r, Ok(Reply::Agent(AgentReply::Refused { .. }))),
            "{node} v{version}: {r:?}"
        );
    }
    let refused = h.events("secret.refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].message.contains(&other), "{refused:?}");
    // A new value without the key a definition in use picks is refused.
    let misfit = h.op(Operator::RotateSecret(
        "db".into(),
        SecretValue(br#"{"user": "x"}"#.to_vec()),
    ));
    assert!(
        matches!(&misfit, Err(ClusterError::Invalid { problems, .. })
            if problems[0].starts_with("app:1 $.containerDefinitions[0].secrets[0].valueFrom: JSON key 'password'")),
        "{misfit:?}"
    );
    // Rotation: the running task keeps version 1; a new task gets version 2.
    h.op(Operator::RotateSecret(
        "db".into(),
        SecretValue(br#"{"password": "rotated-77c1"}"#.to_vec()),
    ))
    .expect("rotate");
    let Reply::TasksCreated(t) = h.op(run("app", 1)).expect("run") else {
        panic!()
    };
    let second = t[0].id.clone();
    let on = t[0].node.clone().expect("placed");
    let versions: BTreeMap<String, BTreeMap<String, u32>> = h
        .desired(&on)
        .tasks
        .into_iter()
        .map(|t| (t.id, t.secret_versions))
        .collect();
    assert_eq!(versions[&second]["db"], 2);
    if on == runner {
        assert_eq!(versions[&first]["db"], 1);
    }
    // In use: not removed unless forced.
    assert!(matches!(
        h.op(Operator::RemoveSecret("db".into(), false)),
        Err(ClusterError::Conflict(m)) if m.contains("app:1")
    ));
    // A stopped task's node gets nothing more.
    h.converge_all();
    h.op(Operator::StopTask(first.clone())).expect("stop");
    let r = h.exec(fetch(&runner, 1));
    assert!(
        matches!(r, Ok(Reply::Agent(AgentReply::Refused { .. }))),
        "{r:?}"
    );
    // No value in the store file, the events or any answer to an operator.
    let Reply::Secrets(all) = h.op(Operator::ListSecrets).expect("ls") else {
        panic!()
    };
    assert_eq!(all[0].versions.len(), 2);
    let shown = format!("{all:?} {:?}", h.events(""));
    let store = std::fs::read(h.store_path()).expect("store");
    for needle in [&b"hunter2-3f9a"[..], b"rotated-77c1", b"aHVudGVy"] {
        assert!(
            !store.windows(needle.len()).any(|w| w == needle),
            "{needle:?} in the store"
        );
        assert!(!shown.as_bytes().windows(needle.len()).any(|w| w == needle));
    }
    h.op(Operator::RemoveSecret("db".into(), true))
        .expect("forced");
    // Forced: taken from the tasks that had it (their nodes delete it); a node asking again is
    // refused.
    assert!(h
        .desired(&on)
        .tasks
        .iter()
        .all(|t| t.secret_versions.is_empty()));
    let r = h.exec(fetch(&on, 2));
    assert!(
        matches!(r, Ok(Reply::Agent(AgentReply::Refused { .. }))),
        "{r:?}"
    );
    // A secret made again under the name goes on with the next version: a version names one
    // value forever. After a restart the sealed values open with the key derived from the CA.
    let Reply::SecretCreated(again) = h.op(create("db", b"again")).expect("create") else {
        panic!()
    };
    assert_eq!(again.latest(), 3);
    h.restart(100);
    h.connect(&a, 2048, 4);
    h.connect(&b, 2048, 4);
    h.register(&uses("plain", "flotilla:db"));
    let Reply::TasksCreated(t) = h.op(run("plain", 1)).expect("run") else {
        panic!()
    };
    let node = t[0].node.clone().expect("placed");
    let Ok(Reply::Agent(AgentReply::Secret { value: got })) = h.exec(fetch(&node, 3)) else {
        panic!("opens after a restart")
    };
    assert_eq!(got.0, b"again");
    // References that name their versions get those: two of one secret in one definition.
    h.op(Operator::RotateSecret(
        "db".into(),
        SecretValue(br#"{"password": "four"}"#.to_vec()),
    ))
    .expect("rotate");
    h.register(
        r#"{"family":"both","containerDefinitions":[{"name":"main","image":"x","memory":64,
            "secrets":[{"name":"OLD","valueFrom":"flotilla:db::3"},
                       {"name":"NEW","valueFrom":"flotilla:db"}]}]}"#,
    );
    let Reply::TasksCreated(t) = h.op(run("both", 1)).expect("run") else {
        panic!()
    };
    let node = t[0].node.clone().expect("placed");
    for (version, want) in [(3, &b"again"[..]), (4, br#"{"password": "four"}"#)] {
        let Ok(Reply::Agent(AgentReply::Secret { value })) = h.exec(fetch(&node, version)) else {
            panic!("version {version}")
        };
        assert_eq!(value.0, want);
    }
    // A node that keeps asking for what it may not have makes one event a minute, and a name
    // that is no secret's none.
    let before = h.events("secret.refused").len();
    for _ in 0..20 {
        let _ = h.exec(fetch(&node, 99));
    }
    let _ = h.exec(Command::Agent(Agent::FetchSecret {
        kind: super::secrets::Kind::Secret,
        node: node.clone(),
        name: "x\nforged log line".repeat(1000),
        version: 1,
    }));
    assert!(h.events("secret.refused").len() <= before + 1);
}

#[test]
fn a_config_is_kept_as_it_is_versioned_per_task_and_given_only_to_the_node_that_runs_it() {
    use super::secrets::Kind;
    use flotilla_api::secrets::{SecretPut, SecretValue};
    use flotilla_api::AgentReply;
    let mut h = Harness::new();
    let a = h.join(&[], 2048, 4);
    let b = h.join(&[], 2048, 4);
    h.op(Operator::CreateConfig(SecretPut {
        name: "nginx".into(),
        value: SecretValue(b"worker_processes 1;".to_vec()),
    }))
    .expect("create");
    let uses = |family: &str, source: &str| {
        format!(
            r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"x","memory":64,
                "configs":[{{"source":"{source}","target":"/etc/nginx/nginx.conf"}}]}}]}}"#
        )
    };
    let refused = h.op(Operator::RegisterTaskDef(uses("bad", "nope")));
    assert!(
        matches!(&refused, Err(ClusterError::Invalid { problems, .. })
            if problems.iter().any(|p| p.starts_with("$.containerDefinitions[0].configs[0].source: no config nope"))),
        "{refused:?}"
    );
    h.register(&uses("web", "nginx"));
    h.op(Operator::UpdateConfig(
        "nginx".into(),
        SecretValue(b"worker_processes 2;".to_vec()),
    ))
    .expect("update");
    let Reply::TasksCreated(t) = h.op(run("web", 1)).expect("run") else {
        panic!()
    };
    let node = t[0].node.clone().expect("placed");
    let other = if node == a { b.clone() } else { a.clone() };
    assert_eq!(
        h.desired(&node).tasks[0].config_versions,
        BTreeMap::from([("nginx".to_string(), 2)])
    );
    let fetch = |node: &str, kind| {
        Command::Agent(Agent::FetchSecret {
            kind,
            node: node.to_string(),
            name: "nginx".into(),
            version: 2,
        })
    };
    let Ok(Reply::Agent(AgentReply::Config { value })) = h.exec(fetch(&node, Kind::Config)) else {
        panic!("the node that runs it gets it")
    };
    assert_eq!(value.0, b"worker_processes 2;");
    for (n, kind) in [
        (other.as_str(), Kind::Config),
        (node.as_str(), Kind::Secret),
    ] {
        let r = h.exec(fetch(n, kind));
        assert!(
            matches!(r, Ok(Reply::Agent(AgentReply::Refused { .. }))),
            "{n}: {r:?}"
        );
    }
    assert_eq!(h.events("config.refused").len(), 1);
    assert!(matches!(
        h.op(Operator::RemoveConfig("nginx".into(), false)),
        Err(ClusterError::Conflict(m)) if m.contains("web:1")
    ));
    let Reply::Secrets(all) = h.op(Operator::ListConfigs).expect("ls") else {
        panic!()
    };
    assert_eq!((all.len(), all[0].versions.len()), (1, 2));
    let Reply::Secrets(none) = h.op(Operator::ListSecrets).expect("ls") else {
        panic!()
    };
    assert!(none.is_empty(), "configs are not secrets");
}

/// A one-shot service (`completionPolicy.replace: onFailure`, Compose's `restart: on-failure`
/// or a `replicated-job`): its task that completed is not run again — not in later rounds, not
/// after the stopped-task retention — until a new deployment runs it once more.
#[test]
fn a_one_shot_service_runs_its_task_once_per_deployment() {
    use super::tasks::STOPPED_RETENTION_SECS;

    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("seed", "seed", 100));
    h.completing.insert("seed".into());
    h.create_service(
        r#"{"serviceName":"seed","taskDefinition":"seed","desiredCount":1,
            "completionPolicy":{"replace":"onFailure"}}"#,
    );
    for _ in 0..10 {
        h.step();
    }
    let tasks = h.tasks();
    let ran = of_service(&tasks, "seed");
    assert_eq!(ran.len(), 1, "seeded once: {ran:#?}");
    assert_eq!(ran[0].state, TaskState::Stopped);
    let s = h.service("seed");
    assert_eq!((s.completed_count, s.running_count), (1, 0), "{s:#?}");
    let d = &s.deployments[0];
    assert_eq!(d.rollout_state, RolloutState::Completed, "{s:#?}");
    assert_eq!((d.completed_count, d.failed_tasks), (1, 0));
    // Past the stopped-task retention its record stays: without it the task would run again.
    h.advance(STOPPED_RETENTION_SECS + 1);
    h.exec(Command::Tick(Tick::PruneStopped)).expect("prune");
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(of_service(&h.tasks(), "seed").len(), 1);
    // `--force-new-deployment` (Compose's `restart`) runs it once more.
    h.op(Operator::UpdateService(
        "seed".into(),
        ServiceUpdate {
            force_new_deployment: true,
            ..ServiceUpdate::default()
        },
    ))
    .expect("update");
    for _ in 0..10 {
        h.step();
    }
    assert_eq!(of_service(&h.tasks(), "seed").len(), 2);
    let s = h.service("seed");
    assert_eq!(s.completed_count, 1, "{s:#?}");
    assert_eq!(s.deployments.len(), 1, "{s:#?}");
    assert_eq!(s.deployments[0].rollout_state, RolloutState::Completed);
}

/// The default (`replace: always`) keeps a service's count running: a task that completed is
/// replaced, as ever, and counted among the failed.
#[test]
fn a_service_replaces_a_completed_task_by_default() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.register(&def("seed", "seed", 100));
    h.completing.insert("seed".into());
    h.create_service(r#"{"serviceName":"seed","taskDefinition":"seed","desiredCount":1}"#);
    for _ in 0..5 {
        h.step();
    }
    assert!(of_service(&h.tasks(), "seed").len() > 1);
    let s = h.service("seed");
    assert_eq!(s.completed_count, 0);
    assert!(s.deployments[0].failed_tasks > 0, "{s:#?}");
}

/// A failed task of a one-shot service is run again under `onFailure`; under `never` it is
/// not, and the deployment's rollout failed (no rollback).
#[test]
fn a_failed_one_shot_task_is_replaced_under_on_failure_not_under_never() {
    let runs = |replace: &str| {
        let mut h = Harness::new();
        h.join(&[], 2048, 4);
        h.register(&def("seed", "seed", 100));
        h.failing.insert("seed".into());
        h.create_service(&format!(
            r#"{{"serviceName":"seed","taskDefinition":"seed","desiredCount":1,
                "completionPolicy":{{"replace":"{replace}"}}}}"#
        ));
        for _ in 0..5 {
            h.step();
        }
        let n = of_service(&h.tasks(), "seed").len();
        (n, h.service("seed"))
    };
    let (n, _) = runs("onFailure");
    assert!(n > 1, "{n}");
    let (n, s) = runs("never");
    assert_eq!(n, 1);
    let d = &s.deployments[0];
    assert_eq!(d.rollout_state, RolloutState::Failed, "{s:#?}");
    assert_eq!(d.failed_tasks, 1);
    assert!(
        d.rollout_state_reason
            .as_deref()
            .is_some_and(|r| r.contains("every task ran once")),
        "{d:#?}"
    );
}

/// A one-shot DAEMON service (Compose's `global-job`) runs its task once on every node,
/// and once on a node that joins later.
#[test]
fn a_one_shot_daemon_runs_once_on_every_node() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.join(&[], 2048, 4);
    h.register(&def("prep", "prep", 100));
    h.completing.insert("prep".into());
    h.create_service(
        r#"{"serviceName":"prep","taskDefinition":"prep","schedulingStrategy":"DAEMON",
            "completionPolicy":{"replace":"onFailure"}}"#,
    );
    for _ in 0..8 {
        h.step();
    }
    let nodes = |h: &mut Harness| {
        let mut n: Vec<String> = of_service(&h.tasks(), "prep")
            .iter()
            .filter_map(|t| t.node.clone())
            .collect();
        n.sort();
        n
    };
    let mut want = h.nodes.clone();
    want.sort();
    assert_eq!(nodes(&mut h), want);
    let s = h.service("prep");
    assert_eq!(s.completed_count, 2, "{s:#?}");
    assert_eq!(s.deployments[0].rollout_state, RolloutState::Completed);
    let c = h.join(&[], 2048, 4);
    for _ in 0..8 {
        h.step();
    }
    want.push(c);
    want.sort();
    assert_eq!(
        nodes(&mut h),
        want,
        "once on the new node, not again on the others"
    );
    assert_eq!(h.service("prep").completed_count, 3);
}
