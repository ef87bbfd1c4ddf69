//! Auto scaling in the core, driven through the harness: simulated time, heartbeats carrying
//! the CPU a service's tasks use, the scaling round.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::scaling::{target_tracking_policy, Autoscale, ScalableTarget, ServiceScaling};
use flotilla_api::service::ServiceUpdate;
use flotilla_api::tasks::{TaskCgroupUsage, TaskState, TaskUsage};

use super::command::{Agent, ClusterError, Command, Operator, Reply, Tick};
use super::ctx::Config;
use super::harness::Harness;

/// The scaling period of these tests, seconds.
const PERIOD: u64 = 10;

const WEB: &str = r#"{"family":"web","cpu":"256","memory":"128",
  "containerDefinitions":[{"name":"main","image":"web:1"}]}"#;

struct Fleet {
    h: Harness,
    node: String,
    /// Each task's CPU counter, µs.
    counters: BTreeMap<String, u64>,
}

impl Fleet {
    fn new() -> Self {
        let mut h = Harness::with_config(Config {
            scaling_period: Duration::from_secs(PERIOD),
            ..Config::default()
        });
        let node = h.join(&[], 8192, 8);
        h.register(WEB);
        h.create_service(r#"{"serviceName":"web","taskDefinition":"web","desiredCount":1}"#);
        for _ in 0..3 {
            h.step();
        }
        Self {
            h,
            node,
            counters: BTreeMap::new(),
        }
    }

    fn autoscale(&mut self, min: u32, max: u32, target: f64) -> ServiceScaling {
        let a = Autoscale {
            target: ScalableTarget {
                min_capacity: min,
                max_capacity: max,
            },
            policies: vec![target_tracking_policy(
                flotilla_api::scaling::PREDEFINED_CPU,
                target,
                Some(0),
                Some(30),
            )],
        };
        let text = serde_json::to_string(&a).expect("json");
        match self
            .h
            .op(Operator::Autoscale("web".into(), text))
            .expect("autoscale")
        {
            Reply::ScalingPut(s) => s.scaling,
            other => panic!("{other:?}"),
        }
    }

    fn running(&mut self) -> Vec<String> {
        self.h
            .tasks()
            .into_iter()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| t.id)
            .collect()
    }

    fn desired(&mut self) -> u32 {
        self.h.service("web").spec.desired_count
    }

    /// One scaling period passes with each running task using `units` CPU units: a heartbeat,
    /// the scaling round, the service rounds and convergence.
    fn period(&mut self, units: u64) {
        self.period_of(units, usize::MAX);
    }

    /// A period whose heartbeat measures only the first `measured` running tasks.
    fn period_of(&mut self, units: u64, measured: usize) {
        self.h.advance(PERIOD);
        let usage: Vec<TaskUsage> = self
            .running()
            .into_iter()
            .take(measured)
            .map(|id| {
                let c = self.counters.entry(id.clone()).or_default();
                *c += units * PERIOD * 1_000_000 / 1024;
                TaskUsage {
                    id,
                    containers: BTreeMap::new(),
                    task: Some(TaskCgroupUsage {
                        cpu_usec: *c,
                        memory_bytes: 64 << 20,
                        memory_limit_bytes: None,
                        pids: 1,
                        memory_working_set_bytes: None,
                    }),
                }
            })
            .collect();
        self.h
            .exec(Command::Agent(Agent::Heartbeat {
                node: self.node.clone(),
                resources: flotilla_api::NodeResources {
                    cpus: 8,
                    memory_bytes: 8192 << 20,
                    ..Default::default()
                },
                usage,
            }))
            .expect("heartbeat");
        self.h
            .exec(Command::Tick(Tick::ScalingRound))
            .expect("scaling round");
        self.h.rounds();
        self.h.converge_all();
    }

    fn scaling(&mut self) -> ServiceScaling {
        match self.h.op(Operator::GetScaling("web".into())).expect("get") {
            Reply::Scaling(s) => *s,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn target_tracking_scales_out_under_load_and_back_in_when_it_stops() {
    let mut f = Fleet::new();
    f.autoscale(1, 4, 50.0);
    // Twice the reservation: 200 % against a target of 50 %.
    let mut out_after = None;
    for i in 1..=10 {
        f.period(512);
        if f.desired() > 1 {
            out_after = Some(i);
            break;
        }
    }
    // Two heartbeats make the first rate, then three periods above the target.
    assert_eq!(out_after, Some(4), "desired {}", f.desired());
    assert_eq!(f.desired(), 4, "ceil(1 × 200 / 50), within MaxCapacity");
    let a = &f.scaling().activities[0];
    assert_eq!((a.from, a.to, a.cause.as_str()), (1, 4, "scaled out"));
    assert_eq!(a.policy.as_deref(), Some("cpu-target-tracking"));
    assert_eq!(a.metrics.get("CPUUtilization"), Some(&Some(200.0)));
    let e = f.h.events("service.autoscaled");
    assert!(
        e[0].message.contains(
            "desired count 1 → 4: scaled out (cpu-target-tracking): CPUUtilization=200.0%"
        ),
        "{e:?}"
    );
    for _ in 0..3 {
        f.period(512);
    }
    assert_eq!(f.running().len(), 4);
    assert_eq!(f.desired(), 4);
    // At MaxCapacity it says so, once.
    let at_max: Vec<_> = f
        .scaling()
        .activities
        .into_iter()
        .filter(|a| a.cause == "at MaxCapacity")
        .collect();
    assert_eq!(at_max.len(), 1, "{at_max:?}");

    // The load stops: in slowly (15 periods below the band), to the minimum.
    let mut in_after = None;
    for i in 1..=30 {
        f.period(0);
        if f.desired() < 4 {
            in_after = Some(i);
            break;
        }
    }
    let in_after = in_after.expect("never scaled in");
    assert!(
        (15..=17).contains(&in_after),
        "scaled in after {in_after} periods"
    );
    assert_eq!(f.desired(), 1);
    let a = &f.scaling().activities[0];
    assert_eq!((a.from, a.to, a.cause.as_str()), (4, 1, "scaled in"));
}

#[test]
fn no_scale_in_while_a_node_cannot_report_and_nothing_written_while_steady() {
    let mut f = Fleet::new();
    f.autoscale(1, 3, 50.0);
    for _ in 0..6 {
        f.period(1024);
    }
    assert_eq!(f.desired(), 3);
    for _ in 0..4 {
        f.period(1024);
    }
    // Steady at the maximum: rounds write nothing.
    let before = f.h.commit_count();
    for _ in 0..3 {
        f.h.advance(PERIOD);
        f.h.exec(Command::Tick(Tick::ScalingRound)).expect("round");
    }
    assert_eq!(f.h.commit_count(), before, "steady rounds wrote");
    // The load stops, then its node is gone before the service would scale in: its last
    // measurement said idle, but the tasks' load is unknown now, and the service stays.
    for _ in 0..5 {
        f.period(0);
    }
    let node = f.node.clone();
    f.h.disconnect(&node);
    for _ in 0..30 {
        f.h.advance(PERIOD);
        f.h.exec(Command::Tick(Tick::ScalingRound)).expect("round");
    }
    assert_eq!(f.desired(), 3, "scaled in on what it cannot measure");
    let a = &f.scaling().activities[0];
    assert_eq!(
        (a.to, a.cause.as_str()),
        (3, "no scale-in while metrics are missing")
    );
}

#[test]
fn a_scheduled_action_sets_the_bounds_at_its_minute() {
    let mut f = Fleet::new();
    f.autoscale(1, 5, 50.0);
    let text = r#"{"ScheduledActionName": "rush", "Schedule": "cron(*/5 * ? * * *)",
                   "ScalableTargetAction": {"MinCapacity": 3}}"#;
    let Reply::ScalingPut(p) =
        f.h.op(Operator::PutScheduledAction("web".into(), text.into()))
            .expect("put")
    else {
        panic!()
    };
    assert!(p.warnings.is_empty());
    // The harness starts on the hour: the next five-minute mark is 300 s on.
    for _ in 0..29 {
        f.period(0);
        assert_eq!(f.desired(), 1);
    }
    f.period(0);
    f.period(0);
    assert_eq!(f.desired(), 3);
    let s = f.scaling();
    assert_eq!(s.target.min_capacity, 3);
    let a = s
        .activities
        .iter()
        .find(|a| a.policy.as_deref() == Some("rush"))
        .expect("activity");
    assert_eq!(
        (a.from, a.to, a.cause.as_str()),
        (1, 3, "scheduled action: MinCapacity 3, MaxCapacity 5")
    );
}

#[test]
fn what_cannot_scale_is_refused_by_name() {
    let mut f = Fleet::new();
    let put = |f: &mut Fleet, text: &str| {
        f.h.op(Operator::PutScalingPolicy("web".into(), text.into()))
    };
    let policy = r#"{"PolicyName": "p", "TargetTrackingScalingPolicyConfiguration": {
        "TargetValue": 60, "PredefinedMetricSpecification":
        {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}}"#;
    let e = put(&mut f, policy).expect_err("no target");
    assert!(
        e.to_string()
            .contains("service web has no scalable target: `flotilla service autoscale web"),
        "{e}"
    );
    f.autoscale(1, 2, 50.0);
    put(&mut f, policy).expect("put");
    let Err(ClusterError::Invalid { problems, .. }) = put(&mut f, "PolicyName: [1]") else {
        panic!("not refused")
    };
    assert_eq!(
        problems[0],
        "$.PolicyName: expected a string, found an array"
    );
    // A task definition that reserves no CPU cannot be measured against its reservation.
    f.h.register(
        r#"{"family":"bare","containerDefinitions":[{"name":"main","image":"b","memory":32}]}"#,
    );
    f.h.create_service(r#"{"serviceName":"bare","taskDefinition":"bare","desiredCount":1}"#);
    let a = Autoscale {
        target: ScalableTarget {
            min_capacity: 1,
            max_capacity: 2,
        },
        policies: vec![target_tracking_policy(
            flotilla_api::scaling::PREDEFINED_CPU,
            50.0,
            None,
            None,
        )],
    };
    let e =
        f.h.op(Operator::Autoscale(
            "bare".into(),
            serde_json::to_string(&a).expect("json"),
        ))
        .expect_err("no cpu");
    assert!(
        e.to_string()
            .contains("bare:1 reserves no cpu: set the task definition's `cpu`"),
        "{e}"
    );
    let bad = Autoscale {
        target: ScalableTarget {
            min_capacity: 3,
            max_capacity: 2,
        },
        policies: Vec::new(),
    };
    let bad = serde_json::to_string(&bad).expect("json");
    let Err(ClusterError::Invalid { problems, .. }) =
        f.h.op(Operator::Autoscale("web".into(), bad))
    else {
        panic!("inverted bounds taken")
    };
    assert_eq!(problems, ["$.target: MinCapacity 3 is above MaxCapacity 2"]);
    // An operator's count outside the bounds is refused, naming them and what to do.
    let e =
        f.h.op(Operator::UpdateService(
            "web".into(),
            ServiceUpdate {
                desired_count: Some(7),
                ..ServiceUpdate::default()
            },
        ))
        .expect_err("outside the bounds");
    assert!(
        e.to_string()
            .starts_with("desiredCount: service web is auto scaled between 1 and 2 tasks"),
        "{e}"
    );
    assert_eq!(f.desired(), 1);
    // Deleting the service deletes its scaling.
    f.h.op(Operator::RemoveService("web".into())).expect("rm");
    assert!(matches!(
        f.h.op(Operator::GetScaling("web".into())),
        Err(ClusterError::NotFound(_))
    ));
}

#[test]
fn a_policy_given_with_the_target_is_checked_as_a_put_document_is() {
    let mut f = Fleet::new();
    let mut p = target_tracking_policy(flotilla_api::scaling::PREDEFINED_CPU, 0.0, None, None);
    p.policy_name = "zero".into();
    let a = Autoscale {
        target: ScalableTarget {
            min_capacity: 1,
            max_capacity: 2,
        },
        policies: vec![p],
    };
    let Err(ClusterError::Invalid { message, problems }) = f.h.op(Operator::Autoscale(
        "web".into(),
        serde_json::to_string(&a).expect("json"),
    )) else {
        panic!("a target of 0 % taken")
    };
    assert_eq!(message, "invalid scalable target (1 problem)");
    assert_eq!(
        problems,
        ["$.policies[0].TargetTrackingScalingPolicyConfiguration.TargetValue: 0 is not a percentage above 0 and at most 100"]
    );
    assert!(matches!(
        f.h.op(Operator::GetScaling("web".into())),
        Err(ClusterError::NotFound(_))
    ));
}

#[test]
fn a_task_left_out_of_its_nodes_heartbeat_makes_the_metric_unknown() {
    let mut f = Fleet::new();
    f.autoscale(1, 3, 50.0);
    for _ in 0..8 {
        f.period(1024);
    }
    assert_eq!(f.desired(), 3);
    assert_eq!(f.running().len(), 3);
    // Only one of the three is measured, idle: the others' load is unknown, not nothing.
    for _ in 0..30 {
        f.period_of(0, 1);
    }
    assert_eq!(f.desired(), 3, "scaled in on one task's usage of three");
    assert_eq!(
        f.scaling().activities[0].cause,
        "no scale-in while metrics are missing"
    );
}

#[test]
fn scheduled_actions_wait_for_a_deployment_and_an_idle_one_records_nothing() {
    let mut f = Fleet::new();
    f.autoscale(1, 4, 50.0);
    for _ in 0..6 {
        f.period(1024);
    }
    assert_eq!(f.desired(), 4);
    let put = |f: &mut Fleet, text: &str| {
        f.h.op(Operator::PutScheduledAction("web".into(), text.into()))
            .expect("put");
    };
    // Every minute, bounds it already has: nothing written.
    put(
        &mut f,
        r#"{"ScheduledActionName": "same", "Schedule": "* * * * *",
            "ScalableTargetAction": {"MinCapacity": 1, "MaxCapacity": 4}}"#,
    );
    let kept = f.scaling().activities.len();
    for _ in 0..30 {
        f.period(1024);
    }
    assert_eq!(f.scaling().activities.len(), kept, "{:#?}", f.scaling());
    // A deployment whose tasks cannot start is in progress: a lowered maximum waits for it.
    f.h.register(&WEB.replace("web:1", "web:2"));
    f.h.unstartable.insert("web:2".into());
    f.h.op(Operator::UpdateService(
        "web".into(),
        ServiceUpdate {
            task_definition: Some("web:2".into()),
            ..ServiceUpdate::default()
        },
    ))
    .expect("deploy");
    put(
        &mut f,
        r#"{"ScheduledActionName": "night", "Schedule": "* * * * *",
            "ScalableTargetAction": {"MaxCapacity": 1}}"#,
    );
    for _ in 0..12 {
        f.period(1024);
    }
    assert_eq!(f.scaling().target.max_capacity, 1);
    assert_eq!(f.desired(), 4, "scaled in during a deployment");
    let a = f
        .scaling()
        .activities
        .into_iter()
        .find(|a| a.policy.as_deref() == Some("night"))
        .expect("recorded");
    assert!(
        a.cause
            .ends_with("the count follows once the deployment ends"),
        "{a:?}"
    );
}
