//! Service auto scaling in the core: every scaling period, each service with a scalable target
//! gets one datapoint of its utilization (from its nodes' last two heartbeats, kept in memory),
//! its due scheduled actions change its bounds, and the pure planner
//! ([`flotilla_scheduler::scaling::plan`]) decides its desired count. A change goes through the
//! same path as an operator's `service update --desired-count`; every change, and every new
//! reason for not changing, is an event and an activity record. Nothing is written while a
//! service is steady.

use std::collections::{BTreeMap, HashMap, VecDeque};

use flotilla_api::scaling::{
    Parsed, ScalableTarget, ScalingActivity, ScalingPolicy, ScheduledAction, ServiceScaling,
    MAX_POLICIES, MAX_SCHEDULED_ACTIONS,
};
use flotilla_api::service::SchedulingStrategy;
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_scheduler::scaling::{self as planner, Cause, Datapoint, History, Inputs, Metric};

use super::command::{ClusterError, Effect};
use super::ctx::Ctx;
use super::placement;
use super::records::{Origin, ScalingRecord, ScheduledActionRecord, ServiceRecord};
use super::services;

/// Decisions kept per service.
pub const KEEP_ACTIVITIES: usize = 100;
/// Datapoints kept per service: more than any policy's window.
const KEEP_DATAPOINTS: usize = 64;

/// The datapoints of each service, one per scaling period, oldest first: in memory only (after
/// a restart of the control plane the windows fill again, and nothing scales in meanwhile).
#[derive(Debug, Default)]
pub struct Windows {
    points: HashMap<String, VecDeque<Datapoint>>,
}

/// The `PutMetricAlarm` name of a metric.
fn alarm_name(m: Metric) -> &'static str {
    match m {
        Metric::Cpu => "CPUUtilization",
        Metric::Memory => "MemoryUtilization",
    }
}

/// The service's datapoint now: its RUNNING tasks' usage against what they reserve. A task
/// measured for less than `warmup` seconds (or not yet twice) is still starting and left out;
/// a task on a node without a session, or left out of its node's last heartbeat while
/// RUNNING, makes the metric unknown.
fn datapoint(cx: &Ctx<'_, '_>, service: &str, warmup: u64) -> Datapoint {
    let now = cx.now.secs();
    let mut usage = Vec::new();
    for t in cx
        .txn
        .tasks_of(&Origin::Service(service.to_string()).started_by())
    {
        if t.info.state != TaskState::Running || t.info.desired != DesiredStatus::Running {
            continue;
        }
        let need = placement::requirement(&t.definition);
        let live = t.node().and_then(|n| cx.live.peek(n));
        let connected = live.is_some_and(|l| l.session.is_some());
        let cpu = live.and_then(|l| l.task_cpu.get(&t.info.id));
        let memory = live.and_then(|l| l.task_usage.get(&t.info.id));
        let unmeasured = live.is_some_and(|l| l.unmeasured.contains(&t.info.id));
        let running_for = match cpu {
            // Unknown, not starting: the metric is unknown.
            _ if !connected || unmeasured => u64::MAX,
            Some(c) if c.units.is_some() => now.saturating_sub(c.since),
            _ => 0,
        };
        usage.push(planner::TaskUsage {
            running_for,
            cpu_units: cpu.filter(|_| connected).and_then(|c| c.units),
            cpu_reserved: need.cpu_units,
            memory_mib: memory
                .filter(|_| connected)
                .map(|m| m.memory_bytes as f64 / 1_048_576.0),
            memory_reserved: need.memory_mib,
        });
    }
    planner::utilization(&usage, warmup)
}

fn history(r: &ScalingRecord) -> History {
    History {
        scale_out: r
            .scale_out
            .map(|(until, from, to)| planner::ScaleOut { until, from, to }),
        scale_in_until: r.scale_in_until,
    }
}

fn activity(r: &mut ScalingRecord, a: ScalingActivity) {
    r.activities.insert(0, a);
    r.activities.truncate(KEEP_ACTIVITIES);
}

/// `CPUUtilization=73.2%, MemoryUtilization=?` for events.
fn metrics_text(m: &BTreeMap<String, Option<f64>>) -> String {
    m.iter()
        .map(|(name, v)| match v {
            Some(v) => format!("{name}={v:.1}%"),
            None => format!("{name}=?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The service's desired count becomes `to` (within its bounds: the caller checked), with an
/// event and an activity record.
fn scale(
    cx: &mut Ctx<'_, '_>,
    s: &ServiceRecord,
    r: &mut ScalingRecord,
    to: u32,
    cause: String,
    policy: Option<String>,
    metrics: BTreeMap<String, Option<f64>>,
) {
    let from = s.spec.desired_count;
    let name = s.spec.service_name.clone();
    let mut s = s.clone();
    s.spec.desired_count = to;
    let by = policy
        .as_deref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let values = if metrics.is_empty() {
        String::new()
    } else {
        format!(": {}", metrics_text(&metrics))
    };
    cx.event(
        "service.autoscaled",
        &name,
        format!("desired count {from} → {to}: {cause}{by}{values}"),
    );
    services::reopen_if_short(cx, &mut s, to);
    cx.txn.put_service(s);
    cx.effects.push(Effect::WakeServices);
    activity(
        r,
        ScalingActivity {
            time: cx.now.secs(),
            from,
            to,
            cause,
            policy,
            metrics,
        },
    );
}

/// One scaling round: every service with a scalable target gets its datapoint, its due
/// scheduled actions and the planner's decision.
pub fn round(cx: &mut Ctx<'_, '_>, windows: &mut Windows) -> Result<(), ClusterError> {
    let now = cx.now.secs();
    let warmup = cx.config.scaling_period.as_secs();
    let records: Vec<ScalingRecord> = cx.txn.scalings().into_iter().cloned().collect();
    windows
        .points
        .retain(|name, _| records.iter().any(|r| &r.service == name));
    for mut r in records {
        let before = r.clone();
        let Some(mut s) = cx.txn.service(&r.service).cloned() else {
            continue;
        };
        if s.spec.scheduling_strategy != SchedulingStrategy::Replica {
            continue;
        }
        // Scheduled actions first: their bounds hold for the policies' decision.
        for i in 0..r.scheduled.len() {
            let due = r.scheduled[i].next_run.is_some_and(|n| now >= n);
            if !due {
                continue;
            }
            let a = r.scheduled[i].action.clone();
            r.scheduled[i].next_run = next_run(&a, now);
            let t = a.scalable_target_action;
            let count = s.spec.desired_count;
            match r
                .target
                .planner()
                .with_bounds(t.min_capacity, t.max_capacity, count)
            {
                Ok((bounds, to)) => {
                    r.target = ScalableTarget {
                        min_capacity: bounds.min,
                        max_capacity: bounds.max,
                    };
                    let cause = format!(
                        "scheduled action: MinCapacity {}, MaxCapacity {}",
                        bounds.min, bounds.max
                    );
                    let name = Some(a.scheduled_action_name.clone());
                    let deploying = s.deployments.len() > 1;
                    if to < count && deploying {
                        // The count follows once the deployment ends (the planner's bounds).
                        let cause = format!("{cause}; the count follows once the deployment ends");
                        cx.event("service.scaling.bounds", &r.service, cause.clone());
                        activity(
                            &mut r,
                            ScalingActivity {
                                time: now,
                                from: count,
                                to: count,
                                cause,
                                policy: name,
                                metrics: BTreeMap::new(),
                            },
                        );
                    } else if to != count {
                        scale(cx, &s, &mut r, to, cause, name, BTreeMap::new());
                        s = cx.txn.service(&r.service).cloned().unwrap_or(s);
                    } else if r.target == before.target {
                        // Nothing changed: nothing to record (an action every minute).
                    } else {
                        cx.event("service.scaling.bounds", &r.service, cause.clone());
                        activity(
                            &mut r,
                            ScalingActivity {
                                time: now,
                                from: count,
                                to,
                                cause,
                                policy: name,
                                metrics: BTreeMap::new(),
                            },
                        );
                    }
                }
                Err(why) => {
                    let cause = format!("scheduled action not applied: {why}");
                    cx.event("service.scaling.refused", &r.service, cause.clone());
                    activity(
                        &mut r,
                        ScalingActivity {
                            time: now,
                            from: count,
                            to: count,
                            cause,
                            policy: Some(a.scheduled_action_name.clone()),
                            metrics: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        let point = datapoint(cx, &r.service, warmup);
        let window = windows.points.entry(r.service.clone()).or_default();
        window.push_back(point);
        while window.len() > KEEP_DATAPOINTS {
            window.pop_front();
        }
        let points: Vec<Datapoint> = window.iter().copied().collect();
        let policies: Vec<planner::NamedPolicy> = r
            .policies
            .iter()
            .filter_map(ScalingPolicy::planner)
            .collect();
        let count = s.spec.desired_count;
        let mut h = history(&r);
        let decision = planner::plan(
            &Inputs {
                now,
                count,
                target: r.target.planner(),
                // A deployment replacing another: its old tasks count, no scale-in.
                deploying: s.deployments.len() > 1,
                datapoints: &points,
                policies: &policies,
            },
            &mut h,
        );
        let metrics: BTreeMap<String, Option<f64>> = decision
            .metrics
            .iter()
            .map(|(m, v)| {
                (
                    alarm_name(*m).to_string(),
                    v.map(|v| (v * 10.0).round() / 10.0),
                )
            })
            .collect();
        let no_room = decision.count > count
            && s.placement_problem.is_some()
            && running(cx, &r.service) < count as usize;
        if no_room {
            // More tasks would not be placed either: hold, and say why.
            let cause = format!(
                "no scale-out: {}",
                s.placement_problem.clone().unwrap_or_default()
            );
            note(cx, &mut r, count, cause, decision.policy.clone(), metrics);
        } else if decision.count != count {
            r.scale_out = h.scale_out.map(|o| (o.until, o.from, o.to));
            r.scale_in_until = h.scale_in_until;
            scale(
                cx,
                &s,
                &mut r,
                decision.count,
                decision.cause.to_string(),
                decision.policy.clone(),
                metrics,
            );
        } else {
            r.scale_out = h.scale_out.map(|o| (o.until, o.from, o.to));
            r.scale_in_until = h.scale_in_until;
            let tracking = r
                .policies
                .iter()
                .any(|p| p.policy_type == flotilla_api::scaling::PolicyType::TargetTrackingScaling);
            if count == 0 && tracking && decision.cause == Cause::Steady {
                note(
                    cx,
                    &mut r,
                    count,
                    "no task to measure: target tracking cannot scale out from 0 (a MinCapacity \
                     of 1, or a scheduled action, can)"
                        .into(),
                    None,
                    metrics,
                );
            } else if decision.cause != Cause::Steady {
                note(
                    cx,
                    &mut r,
                    count,
                    decision.cause.to_string(),
                    decision.policy.clone(),
                    metrics,
                );
            }
        }
        if r != before {
            cx.txn.put_scaling(r);
        }
    }
    Ok(())
}

/// A reason for not changing the count: recorded when it is not the reason last recorded.
fn note(
    cx: &mut Ctx<'_, '_>,
    r: &mut ScalingRecord,
    count: u32,
    cause: String,
    policy: Option<String>,
    metrics: BTreeMap<String, Option<f64>>,
) {
    // The last decision of the policies (a scheduled action's record in between does not
    // make the same reason new again).
    let last = r
        .activities
        .iter()
        .find(|a| !a.cause.starts_with("scheduled action"));
    if last
        .is_some_and(|a| a.from == a.to && a.to == count && a.cause == cause && a.policy == policy)
    {
        return;
    }
    let by = policy
        .as_deref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    cx.event(
        "service.scaling.held",
        &r.service,
        format!(
            "desired count stays {count}: {cause}{by}: {}",
            metrics_text(&metrics)
        ),
    );
    activity(
        r,
        ScalingActivity {
            time: cx.now.secs(),
            from: count,
            to: count,
            cause,
            policy,
            metrics,
        },
    );
}

fn running(cx: &Ctx<'_, '_>, service: &str) -> usize {
    cx.txn
        .tasks_of(&Origin::Service(service.to_string()).started_by())
        .into_iter()
        .filter(|t| t.info.state == TaskState::Running)
        .count()
}

/// A scheduled action's next minute after `after`.
fn next_run(a: &ScheduledAction, after: u64) -> Option<u64> {
    let cron = flotilla_scheduler::cron::parse(&a.cron().ok()?, &a.timezone).ok()?;
    cron.next_after_unix(i64::try_from(after).ok()?)
        .and_then(|n| u64::try_from(n).ok())
}

/// The API's view of a service's scaling.
pub fn info(r: &ScalingRecord) -> ServiceScaling {
    ServiceScaling {
        service: r.service.clone(),
        target: r.target,
        policies: r.policies.clone(),
        scheduled_actions: r.scheduled.iter().map(|a| a.action.clone()).collect(),
        activities: r.activities.clone(),
    }
}

fn scalable_service<'t>(
    cx: &'t Ctx<'_, '_>,
    name: &str,
) -> Result<&'t ServiceRecord, ClusterError> {
    let s = cx
        .txn
        .service(name)
        .ok_or_else(|| ClusterError::NotFound(format!("no service {name}")))?;
    if s.spec.scheduling_strategy != SchedulingStrategy::Replica {
        return Err(ClusterError::invalid(format!(
            "service {name} is a DAEMON service: it runs one task per node and has no desired \
             count to scale"
        )));
    }
    Ok(s)
}

fn registered(cx: &Ctx<'_, '_>, name: &str) -> Result<ScalingRecord, ClusterError> {
    scalable_service(cx, name)?;
    cx.txn.scaling(name).cloned().ok_or_else(|| {
        ClusterError::NotFound(format!(
            "service {name} has no scalable target: `flotilla service autoscale {name} --min N \
             --max N` registers one"
        ))
    })
}

/// A policy's metric must be one the service's tasks reserve, or it can never be computed.
fn check_reserved(s: &ServiceRecord, p: &ScalingPolicy) -> Result<(), ClusterError> {
    let Some(d) = s.primary() else {
        return Ok(());
    };
    let need = placement::requirement(&d.revision.task_definition);
    let (field, zero) = match p.metric_name() {
        "MemoryUtilization" => ("memory", need.memory_mib == 0),
        _ => ("cpu", need.cpu_units == 0),
    };
    if zero {
        return Err(ClusterError::invalid(format!(
            "policy {}: {} is measured against what the tasks reserve, and {}:{} reserves no \
             {field}: set the task definition's `{field}` (or its containers')",
            p.policy_name,
            p.metric_name(),
            d.revision.family,
            d.revision.revision
        )));
    }
    Ok(())
}

fn put_policy_into(
    s: &ServiceRecord,
    r: &mut ScalingRecord,
    p: ScalingPolicy,
) -> Result<(), ClusterError> {
    check_reserved(s, &p)?;
    let full = r.policies.len() >= MAX_POLICIES;
    match r
        .policies
        .iter_mut()
        .find(|x| x.policy_name == p.policy_name)
    {
        Some(x) => *x = p,
        None if full => {
            return Err(ClusterError::invalid(format!(
                "service {} has {MAX_POLICIES} policies, the most it may have",
                r.service
            )))
        }
        None => r.policies.push(p),
    }
    Ok(())
}

/// `PUT /v1/services/{name}/scaling` (the body's text): registers or changes the scalable
/// target and puts the given policies, each checked as a put document is. A count outside the
/// new bounds is brought inside at once.
pub fn autoscale(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    text: &str,
) -> Result<(ServiceScaling, Vec<String>), ClusterError> {
    let s = scalable_service(cx, name)?.clone();
    let Parsed { value: a, warnings } = flotilla_api::scaling::parse_autoscale(text, name)
        .map_err(|problems| ClusterError::Invalid {
            message: format!(
                "invalid scalable target ({})",
                flotilla_api::count(problems.len(), "problem")
            ),
            problems,
        })?;
    let mut r = cx.txn.scaling(name).cloned().unwrap_or(ScalingRecord {
        service: name.to_string(),
        target: a.target,
        policies: Vec::new(),
        scheduled: Vec::new(),
        scale_out: None,
        scale_in_until: None,
        activities: Vec::new(),
        created_at: cx.now.secs(),
    });
    r.target = a.target;
    for p in a.policies {
        put_policy_into(&s, &mut r, p)?;
    }
    cx.event(
        "service.scaling.registered",
        name,
        format!(
            "MinCapacity {}, MaxCapacity {}",
            a.target.min_capacity, a.target.max_capacity
        ),
    );
    let count = s.spec.desired_count;
    let to = count.clamp(a.target.min_capacity, a.target.max_capacity);
    if to != count {
        scale(
            cx,
            &s,
            &mut r,
            to,
            Cause::Bounds.to_string(),
            None,
            BTreeMap::new(),
        );
    }
    let out = info(&r);
    cx.txn.put_scaling(r);
    Ok((out, warnings))
}

/// `DELETE /v1/services/{name}/scaling`: the target, its policies and scheduled actions go;
/// the desired count stays as it is.
pub fn deregister(cx: &mut Ctx<'_, '_>, name: &str) -> Result<(), ClusterError> {
    registered(cx, name)?;
    cx.txn.remove_scaling(name);
    cx.event(
        "service.scaling.deregistered",
        name,
        "auto scaling off: the desired count stays as it is",
    );
    Ok(())
}

/// `POST /v1/services/{name}/scaling/policies` (the document's text).
pub fn put_policy(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    text: &str,
) -> Result<(ServiceScaling, Vec<String>), ClusterError> {
    let mut r = registered(cx, name)?;
    let s = scalable_service(cx, name)?.clone();
    let what = "scaling policy";
    let parsed = flotilla_api::scaling::parse_policy(text, name).map_err(|problems| {
        ClusterError::Invalid {
            message: format!(
                "invalid {what} ({})",
                flotilla_api::count(problems.len(), "problem")
            ),
            problems,
        }
    })?;
    let policy_name = parsed.value.policy_name.clone();
    put_policy_into(&s, &mut r, parsed.value)?;
    cx.event(
        "service.scaling.policy",
        name,
        format!("policy {policy_name} put"),
    );
    let out = info(&r);
    cx.txn.put_scaling(r);
    Ok((out, parsed.warnings))
}

/// `DELETE /v1/services/{name}/scaling/policies/{policy}`.
pub fn remove_policy(cx: &mut Ctx<'_, '_>, name: &str, policy: &str) -> Result<(), ClusterError> {
    let mut r = registered(cx, name)?;
    let before = r.policies.len();
    r.policies.retain(|p| p.policy_name != policy);
    if r.policies.len() == before {
        return Err(ClusterError::NotFound(format!(
            "service {name} has no scaling policy {policy}"
        )));
    }
    cx.event(
        "service.scaling.policy",
        name,
        format!("policy {policy} removed"),
    );
    cx.txn.put_scaling(r);
    Ok(())
}

/// `POST /v1/services/{name}/scaling/scheduled-actions` (the document's text).
pub fn put_scheduled_action(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    text: &str,
) -> Result<(ServiceScaling, Vec<String>), ClusterError> {
    let mut r = registered(cx, name)?;
    let what = "scheduled action";
    let parsed = flotilla_api::scaling::parse_scheduled_action(text, name).map_err(|problems| {
        ClusterError::Invalid {
            message: format!(
                "invalid {what} ({})",
                flotilla_api::count(problems.len(), "problem")
            ),
            problems,
        }
    })?;
    let a = parsed.value;
    let next = next_run(&a, cx.now.secs());
    let action_name = a.scheduled_action_name.clone();
    let record = ScheduledActionRecord {
        action: a,
        next_run: next,
    };
    let full = r.scheduled.len() >= MAX_SCHEDULED_ACTIONS;
    match r
        .scheduled
        .iter_mut()
        .find(|x| x.action.scheduled_action_name == action_name)
    {
        Some(x) => *x = record,
        None if full => {
            return Err(ClusterError::invalid(format!(
                "service {name} has {MAX_SCHEDULED_ACTIONS} scheduled actions, the most it may \
                 have"
            )))
        }
        None => r.scheduled.push(record),
    }
    cx.event(
        "service.scaling.scheduled_action",
        name,
        format!("scheduled action {action_name} put"),
    );
    let out = info(&r);
    cx.txn.put_scaling(r);
    Ok((out, parsed.warnings))
}

/// `DELETE /v1/services/{name}/scaling/scheduled-actions/{action}`.
pub fn remove_scheduled_action(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    action: &str,
) -> Result<(), ClusterError> {
    let mut r = registered(cx, name)?;
    let before = r.scheduled.len();
    r.scheduled
        .retain(|a| a.action.scheduled_action_name != action);
    if r.scheduled.len() == before {
        return Err(ClusterError::NotFound(format!(
            "service {name} has no scheduled action {action}"
        )));
    }
    cx.event(
        "service.scaling.scheduled_action",
        name,
        format!("scheduled action {action} removed"),
    );
    cx.txn.put_scaling(r);
    Ok(())
}

/// `GET /v1/services/{name}/scaling`.
pub fn get(cx: &Ctx<'_, '_>, name: &str) -> Result<ServiceScaling, ClusterError> {
    Ok(info(&registered(cx, name)?))
}
