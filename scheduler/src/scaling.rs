//! Service auto scaling: from a service's recent utilization and its scaling policies, the
//! desired count it should have — pure, like placement. The control plane keeps the metrics and
//! the [`History`], calls [`plan`] every metric period, records each [`Decision`] as an event and
//! an activity record, and applies the new desired count.
//!
//! The shapes and rules are those of Application Auto Scaling for ECS services
//! (<https://docs.aws.amazon.com/autoscaling/application/userguide/>):
//!
//! - **Target tracking** (`TargetTrackingScaling`, predefined metrics
//!   `ECSServiceAverageCPUUtilization` and `ECSServiceAverageMemoryUtilization`): scales out as
//!   soon as the metric stayed above the target for [`SCALE_OUT_POINTS`] periods, to the count
//!   that brings it back to the target (`ceil(measured × metric / target)`, `measured` the
//!   tasks past their warm-up: those still warming up will share the load, and once measured
//!   they count, also within a cooldown); scales in only after
//!   [`SCALE_IN_POINTS`] periods below [`SCALE_IN_BAND`] of the target, and never so far that
//!   the metric would rise above the target again. Out fast, in slowly; the band between the two
//!   alarms keeps a metric hovering near the target from flapping the count.
//! - **Step scaling** (`StepScaling`): an alarm on a threshold over `evaluation_periods`
//!   periods; the step whose interval (relative to the threshold) holds the metric gives the
//!   adjustment — `ChangeInCapacity`, `PercentChangeInCapacity` (rounded as AWS rounds it, at
//!   least `MinAdjustmentMagnitude`) or `ExactCapacity`.
//! - **Several policies**: the largest scale-out wins; the service scales in only when every
//!   target-tracking policy that may scale in asks for it (Application Auto Scaling's rule for
//!   target tracking), and then by the least any policy asks. A step policy has a say only
//!   while its alarm fires: one that only adds tasks must not keep a service at its peak.
//! - **Cooldowns**: after a scale-out, a policy scales out again within its cooldown only to more
//!   than that scale-out reached, counted from the count before it (the capacity it added is
//!   part of the next one); after a scale-in, no scale-in until its cooldown ends, while a
//!   scale-out goes ahead at once.
//! - **Never**: outside the scalable target's min and max; a scale-in while a deployment is in
//!   progress or while any datapoint of the window is missing (a node that cannot report its
//!   tasks' usage must not make the service look idle).
//! - **Scheduled actions** change min and max; the count follows into the new bounds
//!   ([`ScalableTarget::with_bounds`]).
//!
//! Target tracking never removes a service's last task (with none, nothing measures its load);
//! a step policy may, down to a minimum of 0.
//!
//! Time is whole seconds on the caller's clock; utilization is a percentage of what the tasks
//! reserve, as ECS computes it (see [`utilization`]).

use std::fmt;

/// Periods above the target before target tracking scales out (AWS's high alarm: 3 of 3).
pub const SCALE_OUT_POINTS: usize = 3;
/// Periods below the scale-in band before target tracking scales in (AWS's low alarm: 15 of 15).
pub const SCALE_IN_POINTS: usize = 15;
/// Share of the target the metric must stay below to scale in ("usually more than 10 % lower").
pub const SCALE_IN_BAND: f64 = 0.9;
/// Cooldown when a policy gives none, seconds (Application Auto Scaling's default for ECS).
pub const DEFAULT_COOLDOWN: u64 = 300;

/// What a policy watches: the service's average utilization of what its tasks reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `ECSServiceAverageCPUUtilization`: CPU used over CPU units reserved, percent.
    Cpu,
    /// `ECSServiceAverageMemoryUtilization`: memory used over memory reserved, percent.
    Memory,
}

impl Metric {
    /// The predefined metric's name in Application Auto Scaling.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "ECSServiceAverageCPUUtilization",
            Metric::Memory => "ECSServiceAverageMemoryUtilization",
        }
    }
}

/// One period's datapoint of a service: its average utilization, `None` where it is unknown
/// (no task reported, or a task's node did not).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Datapoint {
    /// CPU utilization, percent.
    pub cpu: Option<f64>,
    /// Memory utilization, percent.
    pub memory: Option<f64>,
    /// How many tasks it measured (those past their warm-up); `None`: not said, all of them.
    pub measured: Option<u32>,
}

impl Datapoint {
    fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Cpu => self.cpu,
            Metric::Memory => self.memory,
        }
    }
}

/// A task's usage over one period, for [`utilization`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskUsage {
    /// Seconds since the task became RUNNING.
    pub running_for: u64,
    /// CPU used, in CPU units (1024 per core), averaged over the period; `None`: not reported.
    pub cpu_units: Option<f64>,
    /// CPU units the task reserves.
    pub cpu_reserved: u64,
    /// Memory used, MiB; `None`: not reported.
    pub memory_mib: Option<f64>,
    /// Memory the task reserves, MiB.
    pub memory_reserved: u64,
}

/// The service's datapoint as ECS computes `CPUUtilization` and `MemoryUtilization`: the sum of
/// what its tasks use over the sum of what they reserve, percent. Tasks RUNNING for less than
/// `warmup` seconds are left out (their start-up is not load); any other task without a report
/// makes the metric unknown.
pub fn utilization(tasks: &[TaskUsage], warmup: u64) -> Datapoint {
    let settled: Vec<&TaskUsage> = tasks.iter().filter(|t| t.running_for >= warmup).collect();
    let ratio = |used: &dyn Fn(&TaskUsage) -> Option<f64>, reserved: &dyn Fn(&TaskUsage) -> u64| {
        let mut total = (0.0, 0u64);
        for t in &settled {
            total.0 += used(t)?;
            total.1 += reserved(t);
        }
        (total.1 > 0).then(|| total.0 / total.1 as f64 * 100.0)
    };
    Datapoint {
        cpu: ratio(&|t| t.cpu_units, &|t| t.cpu_reserved),
        memory: ratio(&|t| t.memory_mib, &|t| t.memory_reserved),
        measured: u32::try_from(settled.len()).ok(),
    }
}

/// `TargetTrackingScalingPolicyConfiguration` with a predefined metric.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTracking {
    /// The metric.
    pub metric: Metric,
    /// `TargetValue`, percent (greater than 0).
    pub target: f64,
    /// `ScaleOutCooldown`, seconds.
    pub scale_out_cooldown: u64,
    /// `ScaleInCooldown`, seconds.
    pub scale_in_cooldown: u64,
    /// `DisableScaleIn`.
    pub disable_scale_in: bool,
}

/// A step's `ComparisonOperator` of its alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `GreaterThanOrEqualToThreshold`.
    GreaterOrEqual,
    /// `GreaterThanThreshold`.
    Greater,
    /// `LessThanThreshold`.
    Less,
    /// `LessThanOrEqualToThreshold`.
    LessOrEqual,
}

impl Comparison {
    fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterOrEqual => value >= threshold,
            Comparison::Greater => value > threshold,
            Comparison::Less => value < threshold,
            Comparison::LessOrEqual => value <= threshold,
        }
    }

    fn above(self) -> bool {
        matches!(self, Comparison::GreaterOrEqual | Comparison::Greater)
    }
}

/// `AdjustmentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// `ChangeInCapacity`: add (or remove) that many tasks.
    Change,
    /// `PercentChangeInCapacity`: add (or remove) that percentage of the count.
    Percent,
    /// `ExactCapacity`: set the count.
    Exact,
}

/// A `StepAdjustment`: bounds on `metric − threshold` (`None`: unbounded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// `MetricIntervalLowerBound`.
    pub lower: Option<f64>,
    /// `MetricIntervalUpperBound`.
    pub upper: Option<f64>,
    /// `ScalingAdjustment`.
    pub adjustment: i64,
}

/// `StepScalingPolicyConfiguration` with its alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct StepScaling {
    /// The alarm's metric.
    pub metric: Metric,
    /// The alarm's threshold, percent.
    pub threshold: f64,
    /// The alarm's comparison.
    pub comparison: Comparison,
    /// Periods in a row the alarm must breach (at least 1).
    pub evaluation_periods: usize,
    /// `AdjustmentType`.
    pub adjustment: Adjustment,
    /// `StepAdjustments`.
    pub steps: Vec<Step>,
    /// `MinAdjustmentMagnitude` (with [`Adjustment::Percent`]).
    pub min_adjustment_magnitude: Option<u32>,
    /// `Cooldown`, seconds.
    pub cooldown: u64,
}

impl StepScaling {
    /// The step holding `value`, with AWS's bounds: above the threshold the lower bound is
    /// inclusive and the upper exclusive, below it the other way round.
    fn step(&self, value: f64) -> Option<&Step> {
        let d = value - self.threshold;
        let above = self.comparison.above();
        self.steps.iter().find(|s| {
            let lower_ok = s.lower.is_none_or(|l| if above { d >= l } else { d > l });
            let upper_ok = s.upper.is_none_or(|u| if above { d < u } else { d <= u });
            lower_ok && upper_ok
        })
    }

    fn target(&self, count: u32, adjustment: i64) -> i64 {
        let count = i64::from(count);
        match self.adjustment {
            Adjustment::Change => count + adjustment,
            Adjustment::Exact => adjustment,
            Adjustment::Percent => {
                // AWS: above 1 rounds down, between 0 and 1 to 1, between −1 and 0 to −1,
                // below −1 up (towards zero).
                let raw = count as f64 * adjustment as f64 / 100.0;
                let mut change = if raw > 0.0 && raw < 1.0 {
                    1
                } else if raw < 0.0 && raw > -1.0 {
                    -1
                } else {
                    raw.trunc() as i64
                };
                if let Some(min) = self.min_adjustment_magnitude {
                    let min = i64::from(min);
                    if change != 0 && change.abs() < min {
                        change = min * change.signum();
                    }
                }
                count + change
            }
        }
    }
}

/// A scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Target tracking.
    TargetTracking(TargetTracking),
    /// Step scaling.
    Step(StepScaling),
}

/// A named policy (`PolicyName`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedPolicy {
    /// Its name.
    pub name: String,
    /// The policy.
    pub policy: Policy,
}

/// A service's scalable target: `MinCapacity` and `MaxCapacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableTarget {
    /// Fewest tasks.
    pub min: u32,
    /// Most tasks (at least `min`).
    pub max: u32,
}

impl ScalableTarget {
    /// A scheduled action's new bounds (either kept when `None`) and the count that follows
    /// from them: raised to a higher minimum, lowered to a lower maximum, else unchanged — as
    /// Application Auto Scaling applies `PutScheduledAction`. A minimum above the maximum is
    /// refused by naming both.
    pub fn with_bounds(
        self,
        min: Option<u32>,
        max: Option<u32>,
        count: u32,
    ) -> Result<(ScalableTarget, u32), String> {
        let next = ScalableTarget {
            min: min.unwrap_or(self.min),
            max: max.unwrap_or(self.max),
        };
        if next.min > next.max {
            return Err(format!(
                "MinCapacity {} is above MaxCapacity {}",
                next.min, next.max
            ));
        }
        Ok((next, count.clamp(next.min, next.max)))
    }
}

/// What the planner remembers between rounds: the last scale-out (for its cooldown and for what
/// it added) and the last scale-in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The last scale-out: when, the count before it, the count it reached, the cooldown of the
    /// policy that made it.
    pub scale_out: Option<ScaleOut>,
    /// When the last scale-in ends its cooldown, seconds.
    pub scale_in_until: Option<u64>,
}

/// A scale-out that may still be cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleOut {
    /// When its cooldown ends, seconds.
    pub until: u64,
    /// The count before it.
    pub from: u32,
    /// The count it reached.
    pub to: u32,
}

/// What the planner sees of a service this round.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Now, seconds.
    pub now: u64,
    /// The service's desired count.
    pub count: u32,
    /// Its bounds.
    pub target: ScalableTarget,
    /// Whether a deployment is in progress (no scale-in then).
    pub deploying: bool,
    /// The service's datapoints, one per period, oldest first.
    pub datapoints: &'a [Datapoint],
    /// Its policies.
    pub policies: &'a [NamedPolicy],
}

/// The outcome of a round: the new count (the same when nothing changes) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The desired count from now on.
    pub count: u32,
    /// Why.
    pub cause: Cause,
    /// The policy that decided, when one did.
    pub policy: Option<String>,
    /// The latest value of each metric the policies watch (for the activity record).
    pub metrics: Vec<(Metric, Option<f64>)>,
}

/// Why a round changed the count, or did not.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// A policy's alarm asked for more tasks.
    ScaleOut,
    /// Every policy asked for fewer tasks.
    ScaleIn,
    /// The count was outside the bounds and was brought inside.
    Bounds,
    /// Nothing to do: no alarm, or the change would not change the count.
    Steady,
    /// More was asked for than the maximum allows.
    AtMax,
    /// Fewer was asked for than the minimum allows.
    AtMin,
    /// A scale-out within a cooldown that would not go past the previous one.
    ScaleOutCooldown,
    /// A scale-in within the cooldown of the last scale-in.
    ScaleInCooldown,
    /// A scale-in held back while a deployment is in progress.
    Deploying,
    /// A scale-in held back because a datapoint of the window is missing.
    MissingMetrics,
    /// A scale-in held back until the window holds its periods (after the policies were put,
    /// or after the control plane started).
    WindowFilling,
    /// A scale-in held back because another policy does not agree.
    NotAllAgree,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::ScaleOut => "scaled out",
            Cause::ScaleIn => "scaled in",
            Cause::Bounds => "brought within MinCapacity and MaxCapacity",
            Cause::Steady => "no change needed",
            Cause::AtMax => "at MaxCapacity",
            Cause::AtMin => "at MinCapacity",
            Cause::ScaleOutCooldown => "in the scale-out cooldown",
            Cause::ScaleInCooldown => "in the scale-in cooldown",
            Cause::Deploying => "no scale-in during a deployment",
            Cause::MissingMetrics => "no scale-in while metrics are missing",
            Cause::WindowFilling => "no scale-in until the scale-in window is measured whole",
            Cause::NotAllAgree => "no scale-in until every policy asks for it",
        })
    }
}

/// One policy's wish this round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wish {
    /// A scale-out to this count, with the policy's cooldown.
    Out(i64, u64),
    /// A scale-in to this count, with the policy's cooldown.
    In(i64, u64),
    /// Neither (no alarm, or it would change nothing).
    Hold,
}

/// The last `n` datapoints of `metric`, if there are that many and none is missing.
fn window(points: &[Datapoint], metric: Metric, n: usize) -> Option<Vec<f64>> {
    let n = n.max(1);
    if points.len() < n {
        return None;
    }
    points[points.len() - n..]
        .iter()
        .map(|p| p.get(metric))
        .collect()
}

fn wish(policy: &Policy, count: u32, points: &[Datapoint]) -> Wish {
    match policy {
        Policy::TargetTracking(t) => {
            let target = t.target.max(f64::MIN_POSITIVE);
            let wanted = |v: f64| (f64::from(count) * v / target).ceil() as i64;
            if let Some(w) = window(points, t.metric, SCALE_OUT_POINTS) {
                if w.iter().all(|v| *v > t.target) {
                    // The load is what the measured tasks carry; tasks still warming up will
                    // share it, so it alone says how many are needed.
                    let measured = points
                        .last()
                        .and_then(|d| d.measured)
                        .filter(|m| *m > 0 && *m < count);
                    let last = w[w.len() - 1];
                    return match measured {
                        None => {
                            Wish::Out(wanted(last).max(i64::from(count) + 1), t.scale_out_cooldown)
                        }
                        Some(m) => {
                            let need = (f64::from(m) * last / target).ceil() as i64;
                            if need > i64::from(count) {
                                Wish::Out(need, t.scale_out_cooldown)
                            } else {
                                Wish::Hold
                            }
                        }
                    };
                }
            }
            if t.disable_scale_in {
                return Wish::Hold;
            }
            match window(points, t.metric, SCALE_IN_POINTS) {
                Some(w) if w.iter().all(|v| *v < t.target * SCALE_IN_BAND) => {
                    // Never so far that the metric would rise above the target again.
                    let to = wanted(w[w.len() - 1]).max(1);
                    if to < i64::from(count) {
                        Wish::In(to, t.scale_in_cooldown)
                    } else {
                        Wish::Hold
                    }
                }
                _ => Wish::Hold,
            }
        }
        Policy::Step(s) => {
            let Some(w) = window(points, s.metric, s.evaluation_periods) else {
                return Wish::Hold;
            };
            if !w.iter().all(|v| s.comparison.breached(*v, s.threshold)) {
                return Wish::Hold;
            }
            let Some(step) = s.step(w[w.len() - 1]) else {
                return Wish::Hold;
            };
            let to = s.target(count, step.adjustment);
            match to.cmp(&i64::from(count)) {
                std::cmp::Ordering::Greater => Wish::Out(to, s.cooldown),
                std::cmp::Ordering::Less => Wish::In(to.max(0), s.cooldown),
                std::cmp::Ordering::Equal => Wish::Hold,
            }
        }
    }
}

fn policy_metric(p: &Policy) -> Metric {
    match p {
        Policy::TargetTracking(t) => t.metric,
        Policy::Step(s) => s.metric,
    }
}

/// One round of the planner: the decision, and `history` updated when the count changes.
pub fn plan(inputs: &Inputs<'_>, history: &mut History) -> Decision {
    let Inputs {
        now,
        count,
        target,
        deploying,
        datapoints,
        policies,
    } = *inputs;
    let mut metrics: Vec<(Metric, Option<f64>)> = Vec::new();
    for p in policies {
        let m = policy_metric(&p.policy);
        if !metrics.iter().any(|(seen, _)| *seen == m) {
            metrics.push((m, datapoints.last().and_then(|d| d.get(m))));
        }
    }
    let decision = |count, cause, policy: Option<&NamedPolicy>| Decision {
        count,
        cause,
        policy: policy.map(|p| p.name.clone()),
        metrics: metrics.clone(),
    };
    let (min, max) = (target.min, target.max.max(target.min));
    if count > max && deploying {
        // Lowered bounds wait for the deployment, as a scale-in does.
        return decision(count, Cause::Deploying, None);
    }
    if count < min || count > max {
        return decision(count.clamp(min, max), Cause::Bounds, None);
    }
    if history.scale_out.is_some_and(|o| now >= o.until) {
        history.scale_out = None;
    }
    if history.scale_in_until.is_some_and(|t| now >= t) {
        history.scale_in_until = None;
    }

    // Within a scale-out's cooldown a policy scales out from the count before it (the capacity
    // it added is part of the next one), and only past what it reached.
    let base = history.scale_out.map_or(count, |o| o.from.min(count));
    let out = policies
        .iter()
        .filter_map(|p| {
            // Target tracking measures the tasks there are; a step adjusts from the count
            // before the scale-out cooling down.
            let from = match p.policy {
                Policy::TargetTracking(_) => count,
                Policy::Step(_) => base,
            };
            match wish(&p.policy, from, datapoints) {
                Wish::Out(to, cooldown) => Some((to, cooldown, p)),
                _ => None,
            }
        })
        .max_by_key(|(to, _, _)| *to);
    if let Some((to, cooldown, p)) = out {
        if history.scale_out.is_some_and(|o| to <= i64::from(o.to)) {
            return decision(count, Cause::ScaleOutCooldown, Some(p));
        }
        let to = to.min(i64::from(max)) as u32;
        if to <= count {
            return decision(count, Cause::AtMax, Some(p));
        }
        history.scale_out = Some(ScaleOut {
            until: now + cooldown,
            from: base,
            to,
        });
        // A scale-out ends a scale-in's cooldown.
        history.scale_in_until = None;
        return decision(to, Cause::ScaleOut, Some(p));
    }

    // Scale in only with every datapoint of the longest window there, when every target
    // tracking policy that may scale in asks for it (Application Auto Scaling's rule; a step
    // policy has a say only while its alarm fires), by the least any of them asks.
    let longest = policies
        .iter()
        .map(|p| match &p.policy {
            Policy::TargetTracking(_) => SCALE_IN_POINTS,
            Policy::Step(s) => s.evaluation_periods.max(1),
        })
        .max()
        .unwrap_or(0);
    let filling = datapoints.len() < longest;
    let missing = filling
        || datapoints[datapoints.len() - longest..]
            .iter()
            .any(|d| metrics.iter().any(|(m, _)| d.get(*m).is_none()));
    let unknown = if filling {
        Cause::WindowFilling
    } else {
        Cause::MissingMetrics
    };
    let wishes: Vec<(Wish, &NamedPolicy)> = policies
        .iter()
        .map(|p| (wish(&p.policy, count, datapoints), p))
        .collect();
    let ins: Vec<(i64, u64, &NamedPolicy)> = wishes
        .iter()
        .filter_map(|(w, p)| match w {
            Wish::In(to, cooldown) => Some((*to, *cooldown, *p)),
            _ => None,
        })
        .collect();
    let Some(&(to, cooldown, p)) = ins.iter().max_by_key(|(to, _, _)| *to) else {
        let cause = if missing && count > min && !policies.is_empty() {
            unknown
        } else {
            Cause::Steady
        };
        return decision(count, cause, None);
    };
    // The target-tracking policy that holds the scale-in back, if one does.
    let holding = wishes.iter().find(|(w, p)| {
        !matches!(w, Wish::In(..))
            && matches!(&p.policy, Policy::TargetTracking(t) if !t.disable_scale_in)
    });
    if let Some((_, holding)) = holding {
        return decision(count, Cause::NotAllAgree, Some(holding));
    }
    if missing {
        return decision(count, unknown, Some(p));
    }
    if deploying {
        return decision(count, Cause::Deploying, Some(p));
    }
    if history.scale_in_until.is_some() {
        return decision(count, Cause::ScaleInCooldown, Some(p));
    }
    let to = to.max(i64::from(min)) as u32;
    if to >= count {
        return decision(count, Cause::AtMin, Some(p));
    }
    history.scale_in_until = Some(now + cooldown);
    history.scale_out = None;
    decision(to, Cause::ScaleIn, Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: u64 = 15;

    fn cpu(points: &[f64]) -> Vec<Datapoint> {
        points
            .iter()
            .map(|v| Datapoint {
                cpu: Some(*v),
                memory: Some(10.0),
                measured: None,
            })
            .collect()
    }

    fn tt(metric: Metric, target: f64) -> NamedPolicy {
        NamedPolicy {
            name: format!("tt-{}", metric.name()),
            policy: Policy::TargetTracking(TargetTracking {
                metric,
                target,
                scale_out_cooldown: 60,
                scale_in_cooldown: 300,
                disable_scale_in: false,
            }),
        }
    }

    fn steps(
        comparison: Comparison,
        threshold: f64,
        adjustment: Adjustment,
        s: &[Step],
    ) -> NamedPolicy {
        NamedPolicy {
            name: "step".into(),
            policy: Policy::Step(StepScaling {
                metric: Metric::Cpu,
                threshold,
                comparison,
                evaluation_periods: 1,
                adjustment,
                steps: s.to_vec(),
                min_adjustment_magnitude: None,
                cooldown: 120,
            }),
        }
    }

    fn step(lower: Option<f64>, upper: Option<f64>, adjustment: i64) -> Step {
        Step {
            lower,
            upper,
            adjustment,
        }
    }

    fn round(
        now: u64,
        count: u32,
        points: &[Datapoint],
        policies: &[NamedPolicy],
        history: &mut History,
    ) -> Decision {
        plan(
            &Inputs {
                now,
                count,
                target: ScalableTarget { min: 1, max: 20 },
                deploying: false,
                datapoints: points,
                policies,
            },
            history,
        )
    }

    /// A service under `demand` CPU units shared by its running tasks (each may use up to one
    /// core), 256 units reserved per task; a new task runs from the period after the decision.
    /// Returns the count after every period.
    fn simulate(policies: &[NamedPolicy], demand: &dyn Fn(u64) -> f64, periods: u64) -> Vec<u32> {
        let mut started: Vec<u64> = vec![0];
        let mut count = 1u32;
        let mut history = History::default();
        let mut points = Vec::new();
        let mut counts = Vec::new();
        for i in 1..=periods {
            let now = i * PERIOD;
            let running: Vec<u64> = started.iter().copied().filter(|s| *s < now).collect();
            let each = demand(now) / running.len().max(1) as f64;
            let usage: Vec<TaskUsage> = running
                .iter()
                .map(|s| TaskUsage {
                    running_for: now - s,
                    cpu_units: Some(each.min(1024.0)),
                    cpu_reserved: 256,
                    memory_mib: Some(10.0),
                    memory_reserved: 100,
                })
                .collect();
            points.push(utilization(&usage, PERIOD));
            let d = round(now, count, &points, policies, &mut history);
            if d.count > count {
                started.extend(std::iter::repeat_n(now, (d.count - count) as usize));
            } else {
                started.truncate(d.count as usize);
            }
            count = d.count;
            counts.push(count);
        }
        counts
    }

    #[test]
    fn target_tracking_converges_without_oscillating_and_scales_in_slowly() {
        let policies = [tt(Metric::Cpu, 50.0)];
        // 1000 units at 50 % of 256 each: 8 tasks (7.8). Then the load drops to 100: 1 task.
        let counts = simulate(&policies, &|t| if t < 3000 { 1000.0 } else { 100.0 }, 400);
        let busy = &counts[..(3000 / PERIOD) as usize - 1];
        let settled = busy.iter().position(|c| *c == 8).expect("reaches 8");
        assert!(
            settled * PERIOD as usize <= 300,
            "took {} s: {busy:?}",
            settled * 15
        );
        assert!(
            busy[settled..].iter().all(|c| *c == 8),
            "oscillates: {busy:?}"
        );
        assert!(busy.iter().all(|c| *c <= 8), "overshoots: {busy:?}");
        // Scale-in: never up again, in steps no faster than the cooldown, down to 1.
        let idle = &counts[busy.len()..];
        assert!(idle.windows(2).all(|w| w[1] <= w[0]), "{idle:?}");
        assert_eq!(*counts.last().expect("counts"), 1, "{idle:?}");
        let first_in = idle.iter().position(|c| *c < 8).expect("scales in");
        assert!(
            first_in as u64 * PERIOD >= SCALE_IN_POINTS as u64 * PERIOD - PERIOD,
            "scaled in after {} s",
            first_in as u64 * PERIOD
        );
    }

    #[test]
    fn target_tracking_follows_a_rising_load_without_going_back() {
        let policies = [tt(Metric::Cpu, 50.0)];
        // +40 units a period up to 2000: 16 tasks at 50 % of 256 (15.6).
        let counts = simulate(
            &policies,
            &|t| (40.0 * (t / PERIOD) as f64).min(2000.0),
            200,
        );
        assert!(counts.windows(2).all(|w| w[1] >= w[0]), "{counts:?}");
        assert_eq!(*counts.last().expect("counts"), 16, "{counts:?}");
        assert!(counts.iter().all(|c| *c <= 17), "overshoots: {counts:?}");
    }

    #[test]
    fn a_metric_hovering_around_the_target_changes_nothing() {
        let policies = [tt(Metric::Cpu, 50.0)];
        let mut history = History::default();
        let mut points = Vec::new();
        for i in 0..200u64 {
            points.push(cpu(&[if i % 2 == 0 { 52.0 } else { 47.0 }])[0]);
            let d = round(i * PERIOD, 4, &points, &policies, &mut history);
            assert_eq!(d.count, 4, "round {i}: {d:?}");
        }
        // Three periods above the target scale out at once, proportionally.
        points.extend(cpu(&[80.0, 80.0, 100.0]));
        let d = round(3000, 4, &points, &policies, &mut history);
        assert_eq!((d.count, d.cause.clone()), (8, Cause::ScaleOut));
        assert_eq!(
            d.policy.as_deref(),
            Some("tt-ECSServiceAverageCPUUtilization")
        );
        assert_eq!(d.metrics, [(Metric::Cpu, Some(100.0))]);
    }

    #[test]
    fn steps_pick_their_interval_and_adjust_as_aws_rounds() {
        let up = steps(
            Comparison::GreaterOrEqual,
            70.0,
            Adjustment::Change,
            &[
                step(Some(0.0), Some(10.0), 1),
                step(Some(10.0), Some(20.0), 2),
                step(Some(20.0), None, 3),
            ],
        );
        for (metric, want) in [(69.9, 5), (70.0, 6), (79.9, 6), (80.0, 7), (95.0, 8)] {
            let d = round(
                0,
                5,
                &cpu(&[metric]),
                std::slice::from_ref(&up),
                &mut History::default(),
            );
            assert_eq!(d.count, want, "metric {metric}");
        }
        // Below the threshold the bounds turn: lower exclusive, upper inclusive.
        let down = steps(
            Comparison::LessOrEqual,
            30.0,
            Adjustment::Change,
            &[
                step(Some(-10.0), Some(0.0), -1),
                step(None, Some(-10.0), -2),
            ],
        );
        let mut full = vec![20.0; SCALE_IN_POINTS];
        for (metric, want) in [(30.0, 4), (25.0, 4), (20.0, 3), (5.0, 3), (31.0, 5)] {
            *full.last_mut().expect("points") = metric;
            let d = round(
                0,
                5,
                &cpu(&full),
                std::slice::from_ref(&down),
                &mut History::default(),
            );
            assert_eq!(d.count, want, "metric {metric}: {d:?}");
        }
        // Percent changes: above 1 rounded down, between 0 and 1 up to 1, below −1 towards
        // zero; at least MinAdjustmentMagnitude.
        let pct = |adj: i64, min: Option<u32>| StepScaling {
            metric: Metric::Cpu,
            threshold: 0.0,
            comparison: Comparison::GreaterOrEqual,
            evaluation_periods: 1,
            adjustment: Adjustment::Percent,
            steps: vec![step(Some(0.0), None, adj)],
            min_adjustment_magnitude: min,
            cooldown: 0,
        };
        assert_eq!(pct(25, None).target(10, 25), 12);
        assert_eq!(pct(25, None).target(2, 25), 3);
        assert_eq!(pct(25, Some(3)).target(2, 25), 5);
        assert_eq!(pct(-25, None).target(10, -25), 8);
        assert_eq!(pct(-25, None).target(2, -25), 1);
        let exact = StepScaling {
            adjustment: Adjustment::Exact,
            ..pct(7, None)
        };
        assert_eq!(exact.target(3, 7), 7);
    }

    #[test]
    fn cooldowns_count_what_a_scale_out_added_and_hold_scale_ins() {
        let up = steps(
            Comparison::GreaterOrEqual,
            70.0,
            Adjustment::Change,
            &[step(Some(0.0), Some(20.0), 2), step(Some(20.0), None, 3)],
        );
        let mut h = History::default();
        let policies = std::slice::from_ref(&up);
        let d = round(0, 4, &cpu(&[75.0]), policies, &mut h);
        assert_eq!(d.count, 6);
        // The same alarm within the cooldown: nothing more.
        let d = round(30, 6, &cpu(&[75.0]), policies, &mut h);
        assert_eq!((d.count, d.cause), (6, Cause::ScaleOutCooldown));
        // A larger step within it: counted from 4, so one more, not three.
        let d = round(60, 6, &cpu(&[95.0]), policies, &mut h);
        assert_eq!((d.count, d.cause), (7, Cause::ScaleOut));
        // After the cooldown (120 s from the last scale-out) the alarm adds again.
        let d = round(200, 7, &cpu(&[75.0]), policies, &mut h);
        assert_eq!(d.count, 9);

        // A scale-in starts its cooldown; a second one waits; a scale-out does not.
        let policies = [tt(Metric::Cpu, 50.0)];
        let mut h = History::default();
        let low = cpu(&[10.0; SCALE_IN_POINTS]);
        let d = round(0, 10, &low, &policies, &mut h);
        assert_eq!((d.count, d.cause), (2, Cause::ScaleIn));
        let d = round(100, 2, &cpu(&[20.0; SCALE_IN_POINTS]), &policies, &mut h);
        assert_eq!((d.count, d.cause), (2, Cause::ScaleInCooldown));
        let d = round(120, 2, &cpu(&[90.0; SCALE_IN_POINTS]), &policies, &mut h);
        assert_eq!((d.count, d.cause), (4, Cause::ScaleOut));
    }

    #[test]
    fn bounds_hold_and_scheduled_actions_move_the_count_into_them() {
        let policies = [tt(Metric::Cpu, 50.0)];
        let d = round(0, 18, &cpu(&[100.0; 3]), &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (20, Cause::ScaleOut));
        let d = round(0, 20, &cpu(&[100.0; 3]), &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (20, Cause::AtMax));
        let d = round(0, 25, &cpu(&[50.0; 3]), &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (20, Cause::Bounds));
        let d = plan(
            &Inputs {
                now: 0,
                count: 3,
                target: ScalableTarget { min: 3, max: 20 },
                deploying: false,
                datapoints: &cpu(&[1.0; SCALE_IN_POINTS]),
                policies: &policies,
            },
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (3, Cause::AtMin));
        // Target tracking never removes the last task: with none, nothing would measure load.
        let d = round(
            0,
            1,
            &cpu(&[1.0; SCALE_IN_POINTS]),
            &policies,
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (1, Cause::Steady));

        let t = ScalableTarget { min: 1, max: 10 };
        assert_eq!(
            t.with_bounds(Some(4), None, 2),
            Ok((ScalableTarget { min: 4, max: 10 }, 4))
        );
        assert_eq!(
            t.with_bounds(None, Some(3), 5),
            Ok((ScalableTarget { min: 1, max: 3 }, 3))
        );
        assert_eq!(t.with_bounds(None, None, 5), Ok((t, 5)));
        let e = t.with_bounds(Some(12), None, 5).expect_err("min above max");
        assert!(
            e.contains("MinCapacity 12") && e.contains("MaxCapacity 10"),
            "{e}"
        );
    }

    #[test]
    fn scale_in_waits_for_every_policy_deployments_and_complete_metrics() {
        let low = |cpu: f64, memory: Option<f64>| {
            vec![
                Datapoint {
                    cpu: Some(cpu),
                    memory,
                    measured: None,
                };
                SCALE_IN_POINTS
            ]
        };
        let both = [tt(Metric::Cpu, 50.0), tt(Metric::Memory, 50.0)];
        let d = round(
            0,
            10,
            &low(10.0, Some(48.0)),
            &both,
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (10, Cause::NotAllAgree));
        assert_eq!(
            d.policy.as_deref(),
            Some("tt-ECSServiceAverageMemoryUtilization"),
            "the policy that holds it back is named"
        );
        // A step policy that only scales out has no say in a scale-in while its alarm is
        // quiet (the README's two policies together scaled in never).
        let out_only = steps(
            Comparison::GreaterOrEqual,
            75.0,
            Adjustment::Change,
            &[Step {
                lower: Some(0.0),
                upper: None,
                adjustment: 1,
            }],
        );
        let d = round(
            0,
            10,
            &low(10.0, Some(20.0)),
            &[tt(Metric::Cpu, 50.0), out_only],
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (2, Cause::ScaleIn));
        let d = round(
            0,
            10,
            &low(10.0, Some(20.0)),
            &both,
            &mut History::default(),
        );
        assert_eq!(
            (d.count, d.cause),
            (4, Cause::ScaleIn),
            "the least reduction wins"
        );
        // Either one scales out alone.
        let d = round(
            0,
            10,
            &low(60.0, Some(20.0)),
            &both,
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (12, Cause::ScaleOut));

        let policies = [tt(Metric::Cpu, 50.0)];
        let deploying = plan(
            &Inputs {
                now: 0,
                count: 10,
                target: ScalableTarget { min: 1, max: 20 },
                deploying: true,
                datapoints: &cpu(&[10.0; SCALE_IN_POINTS]),
                policies: &policies,
            },
            &mut History::default(),
        );
        assert_eq!((deploying.count, deploying.cause), (10, Cause::Deploying));
        // Nor does a lowered maximum bring the count down then; a raised minimum does.
        let mut inputs = Inputs {
            now: 0,
            count: 10,
            target: ScalableTarget { min: 1, max: 4 },
            deploying: true,
            datapoints: &[],
            policies: &policies,
        };
        let d = plan(&inputs, &mut History::default());
        assert_eq!((d.count, d.cause), (10, Cause::Deploying));
        inputs.target = ScalableTarget { min: 12, max: 20 };
        let d = plan(&inputs, &mut History::default());
        assert_eq!((d.count, d.cause), (12, Cause::Bounds));
        // One period unknown (a node did not report) in the window: no scale-in...
        let mut points = cpu(&[10.0; SCALE_IN_POINTS]);
        points[4].cpu = None;
        let d = round(0, 10, &points, &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (10, Cause::MissingMetrics));
        // ...nor with too short a history; a scale-out needs only its own three periods.
        let d = round(0, 10, &cpu(&[10.0; 5]), &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (10, Cause::WindowFilling));
        points.extend(cpu(&[90.0; 3]));
        let d = round(0, 10, &points, &policies, &mut History::default());
        assert_eq!((d.count, d.cause), (18, Cause::ScaleOut));
        // Scale-in disabled: target tracking only ever adds.
        let mut keep = tt(Metric::Cpu, 50.0);
        if let Policy::TargetTracking(t) = &mut keep.policy {
            t.disable_scale_in = true;
        }
        let d = round(
            0,
            10,
            &cpu(&[10.0; SCALE_IN_POINTS]),
            &[keep],
            &mut History::default(),
        );
        assert_eq!((d.count, d.cause), (10, Cause::Steady));
    }

    #[test]
    fn utilization_is_use_over_reservation_without_warming_tasks() {
        let t = |running_for, cpu: Option<f64>, reserved| TaskUsage {
            running_for,
            cpu_units: cpu,
            cpu_reserved: reserved,
            memory_mib: Some(64.0),
            memory_reserved: 128,
        };
        // (512 + 0) / (256 + 768): 50 %, not the mean of 200 % and 0 %.
        let d = utilization(&[t(60, Some(512.0), 256), t(60, Some(0.0), 768)], 30);
        assert_eq!(d.cpu, Some(50.0));
        assert_eq!(d.memory, Some(50.0));
        // A task still warming up is left out; an unreported one makes the metric unknown.
        let d = utilization(&[t(60, Some(128.0), 256), t(10, None, 256)], 30);
        assert_eq!((d.cpu, d.measured), (Some(50.0), Some(1)));
        assert_eq!(utilization(&[t(60, None, 256)], 30).cpu, None);
        assert_eq!(utilization(&[], 30).cpu, None);
    }

    #[test]
    fn target_tracking_goes_on_scaling_out_within_its_cooldown_once_new_tasks_are_measured() {
        let policies = [tt(Metric::Cpu, 50.0)];
        let mut h = History::default();
        let at = |cpu: f64, measured: u32| Datapoint {
            cpu: Some(cpu),
            memory: Some(10.0),
            measured: Some(measured),
        };
        // One task at 200 %: four.
        let d = round(0, 1, &[at(200.0, 1); 3], &policies, &mut h);
        assert_eq!((d.count, d.cause), (4, Cause::ScaleOut));
        // The three new ones warming up: the one measured still says four, no more.
        let d = round(15, 4, &[at(200.0, 1); 3], &policies, &mut h);
        assert_eq!(d.count, 4, "{d:?}");
        // All four measured at 200 %: the load is four times what one carried. Sixteen,
        // within the cooldown (more than the scale-out reached).
        let d = round(30, 4, &[at(200.0, 4); 3], &policies, &mut h);
        assert_eq!((d.count, d.cause), (16, Cause::ScaleOut));
    }
}
