//! Service auto scaling in Application Auto Scaling's shapes
//! (<https://docs.aws.amazon.com/autoscaling/application/APIReference/>): a service's scalable
//! target (`RegisterScalableTarget`: `MinCapacity`, `MaxCapacity`), its scaling policies
//! (`PutScalingPolicy`: `TargetTrackingScaling` on the predefined ECS metrics, `StepScaling`
//! with the CloudWatch alarm that drives it), its scheduled actions (`PutScheduledAction`) and
//! its activity (`DescribeScalingActivities`). Policy and scheduled-action documents keep AWS's
//! PascalCase field names, so files written for `aws application-autoscaling` are read as they
//! are; the fields that only identify the target on AWS are checked or warned about.
//!
//! The control plane decides with the pure planner of the scheduler crate
//! ([`flotilla_scheduler::scaling`]); [`ScalingPolicy::planner`] turns a document into its
//! policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use flotilla_scheduler::scaling as planner;

use crate::taskdef::{kind, unknown_field};

/// `PredefinedMetricType` of the service's average CPU utilization.
pub const PREDEFINED_CPU: &str = "ECSServiceAverageCPUUtilization";
/// `PredefinedMetricType` of the service's average memory utilization.
pub const PREDEFINED_MEMORY: &str = "ECSServiceAverageMemoryUtilization";
/// The only `ScalableDimension` of an ECS service.
pub const SCALABLE_DIMENSION: &str = "ecs:service:DesiredCount";
/// Most policies per service (Application Auto Scaling's quota is 50 per scalable target).
pub const MAX_POLICIES: usize = 50;
/// Most scheduled actions per service (Application Auto Scaling's quota is 200).
pub const MAX_SCHEDULED_ACTIONS: usize = 200;
/// Highest `MaxCapacity` (the highest desired count of a service).
pub const MAX_CAPACITY: u32 = 10_000;

/// A service's scalable target: the bounds its desired count is kept within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScalableTarget {
    /// Fewest tasks.
    pub min_capacity: u32,
    /// Most tasks (at least `MinCapacity`).
    pub max_capacity: u32,
}

impl ScalableTarget {
    /// Checks the bounds: `MinCapacity` ≤ `MaxCapacity` ≤ [`MAX_CAPACITY`].
    pub fn check(&self) -> Result<(), String> {
        if self.max_capacity > MAX_CAPACITY {
            return Err(format!("MaxCapacity: at most {MAX_CAPACITY}"));
        }
        if self.min_capacity > self.max_capacity {
            return Err(format!(
                "MinCapacity {} is above MaxCapacity {}",
                self.min_capacity, self.max_capacity
            ));
        }
        Ok(())
    }

    /// As the planner takes it.
    pub fn planner(&self) -> planner::ScalableTarget {
        planner::ScalableTarget {
            min: self.min_capacity,
            max: self.max_capacity,
        }
    }
}

/// `PutScalingPolicy`'s document: one policy of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScalingPolicy {
    /// `PolicyName`: unique within the service.
    pub policy_name: String,
    /// `TargetTrackingScaling` or `StepScaling`.
    pub policy_type: PolicyType,
    /// With `TargetTrackingScaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tracking_scaling_policy_configuration: Option<TargetTrackingConfiguration>,
    /// With `StepScaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_scaling_policy_configuration: Option<StepScalingConfiguration>,
    /// With `StepScaling`: the alarm that drives it (on AWS a CloudWatch alarm created apart,
    /// with `PutMetricAlarm`'s field names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Alarm>,
}

/// `PolicyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    /// Keep a metric near a target.
    TargetTrackingScaling,
    /// Adjust in steps when an alarm fires.
    StepScaling,
}

/// `TargetTrackingScalingPolicyConfiguration` with a predefined metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetTrackingConfiguration {
    /// `TargetValue`: the utilization to keep, percent of what the tasks reserve.
    pub target_value: f64,
    /// `PredefinedMetricSpecification`.
    pub predefined_metric_specification: PredefinedMetric,
    /// `ScaleOutCooldown`, seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_out_cooldown: Option<u64>,
    /// `ScaleInCooldown`, seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_cooldown: Option<u64>,
    /// `DisableScaleIn`: only ever scale out.
    #[serde(default)]
    pub disable_scale_in: bool,
}

/// `PredefinedMetricSpecification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PredefinedMetric {
    /// [`PREDEFINED_CPU`] or [`PREDEFINED_MEMORY`].
    pub predefined_metric_type: String,
}

/// `StepScalingPolicyConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepScalingConfiguration {
    /// `ChangeInCapacity`, `PercentChangeInCapacity` or `ExactCapacity`.
    pub adjustment_type: String,
    /// `StepAdjustments`: bounds relative to the alarm's threshold.
    pub step_adjustments: Vec<StepAdjustment>,
    /// `MinAdjustmentMagnitude` (with `PercentChangeInCapacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_adjustment_magnitude: Option<u32>,
    /// `Cooldown`, seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<u64>,
}

/// `StepAdjustment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepAdjustment {
    /// `MetricIntervalLowerBound`: of `metric − threshold` (none: −∞).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_interval_lower_bound: Option<f64>,
    /// `MetricIntervalUpperBound`: of `metric − threshold` (none: +∞).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_interval_upper_bound: Option<f64>,
    /// `ScalingAdjustment`.
    pub scaling_adjustment: i64,
}

/// The alarm of a step policy, in `PutMetricAlarm`'s terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Alarm {
    /// `CPUUtilization` or `MemoryUtilization` (the `AWS/ECS` namespace's service metrics).
    pub metric_name: String,
    /// `Threshold`, percent.
    pub threshold: f64,
    /// `GreaterThanOrEqualToThreshold`, `GreaterThanThreshold`, `LessThanThreshold` or
    /// `LessThanOrEqualToThreshold`.
    pub comparison_operator: String,
    /// `EvaluationPeriods`: the periods in a row the metric must breach (default 1).
    #[serde(default = "one")]
    pub evaluation_periods: u32,
}

fn one() -> u32 {
    1
}

/// `PutScheduledAction`'s document: new bounds at a cron minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledAction {
    /// `ScheduledActionName`: unique within the service.
    pub scheduled_action_name: String,
    /// `Schedule`: a five-field cron expression (the schedules' cron, `man 5 crontab`) or AWS's
    /// `cron(Minutes Hours Day-of-month Month Day-of-week Year)`.
    pub schedule: String,
    /// `Timezone` of the expression (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// `ScalableTargetAction`: the new bounds, either kept when left out.
    pub scalable_target_action: TargetAction,
}

fn utc() -> String {
    "UTC".into()
}

/// `ScalableTargetAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetAction {
    /// New `MinCapacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_capacity: Option<u32>,
    /// New `MaxCapacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<u32>,
}

impl ScheduledAction {
    /// The five-field cron expression of `Schedule` (AWS's six-field `cron(…)` translated: `?`
    /// is `*`, the year must be `*`, day-of-week numbers 1–7 from Sunday become 0–6).
    pub fn cron(&self) -> Result<String, String> {
        cron_of(&self.schedule)
    }
}

/// What one scaling round decided for a service, as `flotilla scaling activity` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingActivity {
    /// When (seconds since the epoch).
    pub time: u64,
    /// The desired count before.
    pub from: u32,
    /// The desired count after (the same when nothing changed).
    pub to: u32,
    /// Why, in words ("scaled out", "at MaxCapacity", "scheduled action night" …).
    pub cause: String,
    /// The policy or scheduled action that decided, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The metrics the policies watch, by `PutMetricAlarm` name (`CPUUtilization`,
    /// `MemoryUtilization`), percent; `null` where unknown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Option<f64>>,
}

/// A service's scaling, as `GET /v1/services/{name}/scaling` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScaling {
    /// The service.
    pub service: String,
    /// Its bounds.
    pub target: ScalableTarget,
    /// Its policies, by name.
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
    /// Its scheduled actions, by name.
    #[serde(default)]
    pub scheduled_actions: Vec<ScheduledAction>,
    /// Its latest decisions, newest first.
    #[serde(default)]
    pub activities: Vec<ScalingActivity>,
}

/// A parsed document with the fields it ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// The document.
    pub value: T,
    /// Ignored fields, each with its path.
    pub warnings: Vec<String>,
}

/// Fields of the request that only say which AWS resource is meant.
const TARGET_FIELDS: &[&str] = &["ServiceNamespace", "ResourceId", "ScalableDimension"];

/// Checks the fields that name the target on AWS against `service`: `ServiceNamespace` must be
/// `ecs`, `ScalableDimension` `ecs:service:DesiredCount`, and `ResourceId`
/// (`service/CLUSTER/NAME`) must name the service.
fn check_target(m: &Map<String, Value>, service: &str, problems: &mut Vec<String>) {
    match m.get("ServiceNamespace") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "ecs" => {}
        Some(o) => problems.push(format!(
            "$.ServiceNamespace: {o} is not \"ecs\" (Flotilla scales services)"
        )),
    }
    match m.get("ScalableDimension") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == SCALABLE_DIMENSION => {}
        Some(o) => problems.push(format!(
            "$.ScalableDimension: {o} is not \"{SCALABLE_DIMENSION}\""
        )),
    }
    match m.get("ResourceId") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let parts: Vec<&str> = s.split('/').collect();
            match parts.as_slice() {
                ["service", _, name] if *name == service => {}
                ["service", _, name] => problems.push(format!(
                    "$.ResourceId: names service '{name}', not '{service}'"
                )),
                _ => problems.push(format!(
                    "$.ResourceId: \"{s}\" is not service/CLUSTER/SERVICE"
                )),
            }
        }
        Some(o) => problems.push(format!(
            "$.ResourceId: expected a string, found {}",
            kind(o)
        )),
    }
}

/// An object's fields, read with their JSON paths into `problems`.
struct Fields<'a> {
    m: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, at: &str, problems: &mut Vec<String>) -> Option<Self> {
        match v {
            Value::Object(m) => Some(Self {
                m,
                at: at.to_string(),
            }),
            o => {
                problems.push(format!("{at}: expected an object, found {}", kind(o)));
                None
            }
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    /// Refuses unknown fields (with the likely misspelled one); warns about `ignored` ones.
    fn known(
        &self,
        fields: &[&str],
        ignored: &[(&str, &str)],
        problems: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) {
        for k in self.m.keys() {
            if let Some((_, why)) = ignored.iter().find(|(f, _)| f == k) {
                warnings.push(format!("{}: ignored ({why})", self.path(k)));
            } else if !fields.contains(&k.as_str()) {
                let all: Vec<&str> = fields
                    .iter()
                    .copied()
                    .chain(ignored.iter().map(|(f, _)| *f))
                    .collect();
                problems.push(format!("{}: {}", self.path(k), unknown_field(k, &all)));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.m.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str, problems: &mut Vec<String>) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            problems.push(format!("{}: required", self.path(key)));
        }
        v
    }

    fn string(&self, key: &str, required: bool, problems: &mut Vec<String>) -> Option<String> {
        let v = if required {
            self.required(key, problems)?
        } else {
            self.get(key)?
        };
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                problems.push(format!("{}: empty", self.path(key)));
                None
            }
            o => {
                problems.push(format!(
                    "{}: expected a string, found {}",
                    self.path(key),
                    kind(o)
                ));
                None
            }
        }
    }

    /// A number (one written as a string is read, as the AWS CLI's shorthand gives them).
    fn number(&self, key: &str, required: bool, problems: &mut Vec<String>) -> Option<f64> {
        let v = if required {
            self.required(key, problems)?
        } else {
            self.get(key)?
        };
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n.filter(|n| n.is_finite()) {
            Some(n) => Some(n),
            None => {
                problems.push(format!(
                    "{}: expected a number, found {}",
                    self.path(key),
                    kind(v)
                ));
                None
            }
        }
    }

    /// A whole number within `range`.
    fn whole(
        &self,
        key: &str,
        required: bool,
        range: std::ops::RangeInclusive<i64>,
        problems: &mut Vec<String>,
    ) -> Option<i64> {
        let n = self.number(key, required, problems)?;
        if n.fract() != 0.0 || n < *range.start() as f64 || n > *range.end() as f64 {
            problems.push(format!(
                "{}: {n} is not a whole number from {} to {}",
                self.path(key),
                range.start(),
                range.end()
            ));
            return None;
        }
        Some(n as i64)
    }

    fn boolean(&self, key: &str, problems: &mut Vec<String>) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(o) => {
                problems.push(format!(
                    "{}: expected true or false, found {}",
                    self.path(key),
                    kind(o)
                ));
                false
            }
        }
    }
}

/// A JSON or YAML document as a value.
fn document(text: &str) -> Result<Value, Vec<String>> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| vec![format!("$: not valid JSON: {e}")])
    } else {
        yaml_serde::from_str(text).map_err(|e| vec![format!("$: not valid YAML: {e}")])
    }
}

/// Checks a policy or scheduled action name: 1–256 letters, digits, `-`, `_` or `.`, the first
/// a letter or digit (so that no name is a dot segment of a URL: `..`).
pub fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: '{name}' is not 1-256 letters, digits, '-', '_' or '.', starting with a \
             letter or digit"
        ))
    }
}

/// Cooldown bounds, seconds (Application Auto Scaling: 0 to 1 day).
const COOLDOWN: std::ops::RangeInclusive<i64> = 0..=86_400;

/// Parses a `PutScalingPolicy` document (JSON or YAML) for `service`; every problem is named
/// with its JSON path. The target fields (`ServiceNamespace`, `ResourceId`,
/// `ScalableDimension`) are checked against the service.
pub fn parse_policy(text: &str, service: &str) -> Result<Parsed<ScalingPolicy>, Vec<String>> {
    let v = document(text)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let Some(f) = Fields::of(&v, "$", &mut problems) else {
        return Err(problems);
    };
    const FIELDS: &[&str] = &[
        "PolicyName",
        "PolicyType",
        "TargetTrackingScalingPolicyConfiguration",
        "StepScalingPolicyConfiguration",
        "Alarm",
        "ServiceNamespace",
        "ResourceId",
        "ScalableDimension",
    ];
    f.known(
        FIELDS,
        &[
            (
                "PredictiveScalingPolicyConfiguration",
                "predictive scaling is AWS only",
            ),
            ("Tags", "AWS only"),
        ],
        &mut problems,
        &mut warnings,
    );
    check_target(f.m, service, &mut problems);
    let name = f.string("PolicyName", true, &mut problems);
    if let Some(n) = &name {
        if let Err(e) = check_name("$.PolicyName", n) {
            problems.push(e);
        }
    }
    let policy_type = match f.string("PolicyType", false, &mut problems).as_deref() {
        None if f.get("StepScalingPolicyConfiguration").is_some() => Some(PolicyType::StepScaling),
        None | Some("TargetTrackingScaling") => Some(PolicyType::TargetTrackingScaling),
        Some("StepScaling") => Some(PolicyType::StepScaling),
        Some("PredictiveScaling") => {
            problems.push("$.PolicyType: PredictiveScaling is AWS only".into());
            None
        }
        Some(o) => {
            problems.push(format!(
                "$.PolicyType: '{o}' is not TargetTrackingScaling or StepScaling"
            ));
            None
        }
    };
    let mut policy = ScalingPolicy {
        policy_name: name.unwrap_or_default(),
        policy_type: policy_type.unwrap_or(PolicyType::TargetTrackingScaling),
        target_tracking_scaling_policy_configuration: None,
        step_scaling_policy_configuration: None,
        alarm: None,
    };
    match policy_type {
        Some(PolicyType::TargetTrackingScaling) => {
            for other in ["StepScalingPolicyConfiguration", "Alarm"] {
                if f.get(other).is_some() {
                    problems.push(format!(
                        "$.{other}: belongs to a StepScaling policy, this one is \
                         TargetTrackingScaling"
                    ));
                }
            }
            if let Some(c) = f.required("TargetTrackingScalingPolicyConfiguration", &mut problems) {
                policy.target_tracking_scaling_policy_configuration = target_tracking(
                    c,
                    "$.TargetTrackingScalingPolicyConfiguration",
                    &mut problems,
                    &mut warnings,
                );
            }
        }
        Some(PolicyType::StepScaling) => {
            if f.get("TargetTrackingScalingPolicyConfiguration").is_some() {
                problems.push(
                    "$.TargetTrackingScalingPolicyConfiguration: belongs to a \
                     TargetTrackingScaling policy, this one is StepScaling"
                        .into(),
                );
            }
            if let Some(c) = f.required("StepScalingPolicyConfiguration", &mut problems) {
                policy.step_scaling_policy_configuration = step_scaling(
                    c,
                    "$.StepScalingPolicyConfiguration",
                    &mut problems,
                    &mut warnings,
                );
            }
            match f.get("Alarm") {
                Some(a) => policy.alarm = alarm(a, "$.Alarm", &mut problems, &mut warnings),
                None => problems.push(
                    "$.Alarm: required for a StepScaling policy (the alarm that drives it: \
                     MetricName, Threshold, ComparisonOperator, EvaluationPeriods, as \
                     `aws cloudwatch put-metric-alarm` takes them)"
                        .into(),
                ),
            }
            if let (Some(s), Some(a)) = (&policy.step_scaling_policy_configuration, &policy.alarm) {
                check_steps(s, a, &mut problems);
            }
        }
        None => {}
    }
    if problems.is_empty() {
        Ok(Parsed {
            value: policy,
            warnings,
        })
    } else {
        Err(problems)
    }
}

fn target_tracking(
    v: &Value,
    at: &str,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<TargetTrackingConfiguration> {
    let f = Fields::of(v, at, problems)?;
    f.known(
        &[
            "TargetValue",
            "PredefinedMetricSpecification",
            "ScaleOutCooldown",
            "ScaleInCooldown",
            "DisableScaleIn",
            "CustomizedMetricSpecification",
        ],
        &[],
        problems,
        warnings,
    );
    if f.get("CustomizedMetricSpecification").is_some() {
        problems.push(format!(
            "{}: not supported: use PredefinedMetricSpecification with {PREDEFINED_CPU} or \
             {PREDEFINED_MEMORY}",
            f.path("CustomizedMetricSpecification")
        ));
    }
    let target = f.number("TargetValue", true, problems);
    if let Some(t) = target {
        if !(t > 0.0 && t <= 100.0) {
            problems.push(format!(
                "{}: {t} is not a percentage above 0 and at most 100",
                f.path("TargetValue")
            ));
        }
    }
    let metric = f
        .required("PredefinedMetricSpecification", problems)
        .and_then(|m| {
            let at = f.path("PredefinedMetricSpecification");
            let p = Fields::of(m, &at, problems)?;
            p.known(
                &["PredefinedMetricType"],
                &[(
                    "ResourceLabel",
                    "AWS only: it names a load balancer's target group",
                )],
                problems,
                warnings,
            );
            let t = p.string("PredefinedMetricType", true, problems)?;
            if t != PREDEFINED_CPU && t != PREDEFINED_MEMORY {
                problems.push(format!(
                    "{}: '{t}' is not {PREDEFINED_CPU} or {PREDEFINED_MEMORY}",
                    p.path("PredefinedMetricType")
                ));
                return None;
            }
            Some(PredefinedMetric {
                predefined_metric_type: t,
            })
        });
    let out = f.whole("ScaleOutCooldown", false, COOLDOWN, problems);
    let r#in = f.whole("ScaleInCooldown", false, COOLDOWN, problems);
    let disable = f.boolean("DisableScaleIn", problems);
    Some(TargetTrackingConfiguration {
        target_value: target?,
        predefined_metric_specification: metric?,
        scale_out_cooldown: out.map(|n| n as u64),
        scale_in_cooldown: r#in.map(|n| n as u64),
        disable_scale_in: disable,
    })
}

const ADJUSTMENTS: &[&str] = &[
    "ChangeInCapacity",
    "PercentChangeInCapacity",
    "ExactCapacity",
];

fn step_scaling(
    v: &Value,
    at: &str,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<StepScalingConfiguration> {
    let f = Fields::of(v, at, problems)?;
    f.known(
        &[
            "AdjustmentType",
            "StepAdjustments",
            "MinAdjustmentMagnitude",
            "Cooldown",
            "MetricAggregationType",
        ],
        &[],
        problems,
        warnings,
    );
    match f
        .string("MetricAggregationType", false, problems)
        .as_deref()
    {
        None | Some("Average") => {}
        Some(o) => problems.push(format!(
            "{}: '{o}' is not supported: the service's metrics are averages (Average)",
            f.path("MetricAggregationType")
        )),
    }
    let adjustment = f.string("AdjustmentType", true, problems);
    if let Some(a) = &adjustment {
        if !ADJUSTMENTS.contains(&a.as_str()) {
            problems.push(format!(
                "{}: '{a}' is not ChangeInCapacity, PercentChangeInCapacity or ExactCapacity",
                f.path("AdjustmentType")
            ));
        }
    }
    let magnitude = f.whole("MinAdjustmentMagnitude", false, 1..=10_000, problems);
    if magnitude.is_some() && adjustment.as_deref() != Some("PercentChangeInCapacity") {
        problems.push(format!(
            "{}: only with AdjustmentType PercentChangeInCapacity",
            f.path("MinAdjustmentMagnitude")
        ));
    }
    let cooldown = f.whole("Cooldown", false, COOLDOWN, problems);
    let mut steps = Vec::new();
    match f.required("StepAdjustments", problems) {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{}[{i}]", f.path("StepAdjustments"));
                let Some(s) = Fields::of(item, &at, problems) else {
                    continue;
                };
                s.known(
                    &[
                        "MetricIntervalLowerBound",
                        "MetricIntervalUpperBound",
                        "ScalingAdjustment",
                    ],
                    &[],
                    problems,
                    warnings,
                );
                let lower = s.number("MetricIntervalLowerBound", false, problems);
                let upper = s.number("MetricIntervalUpperBound", false, problems);
                let adj = s.whole("ScalingAdjustment", true, -10_000..=10_000, problems);
                if let (Some(l), Some(u)) = (lower, upper) {
                    if l >= u {
                        problems.push(format!(
                            "{at}: MetricIntervalLowerBound {l} is not below \
                             MetricIntervalUpperBound {u}"
                        ));
                    }
                }
                if let Some(adj) = adj {
                    steps.push(StepAdjustment {
                        metric_interval_lower_bound: lower,
                        metric_interval_upper_bound: upper,
                        scaling_adjustment: adj,
                    });
                }
            }
        }
        Some(Value::Array(_)) => {
            problems.push(format!("{}: at least one step", f.path("StepAdjustments")))
        }
        Some(o) => problems.push(format!(
            "{}: expected an array, found {}",
            f.path("StepAdjustments"),
            kind(o)
        )),
        None => {}
    }
    Some(StepScalingConfiguration {
        adjustment_type: adjustment?,
        step_adjustments: steps,
        min_adjustment_magnitude: magnitude.map(|n| n as u32),
        cooldown: cooldown.map(|n| n as u64),
    })
}

const COMPARISONS: &[&str] = &[
    "GreaterThanOrEqualToThreshold",
    "GreaterThanThreshold",
    "LessThanThreshold",
    "LessThanOrEqualToThreshold",
];

fn alarm(
    v: &Value,
    at: &str,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<Alarm> {
    let f = Fields::of(v, at, problems)?;
    f.known(
        &[
            "MetricName",
            "Threshold",
            "ComparisonOperator",
            "EvaluationPeriods",
            "Namespace",
            "Statistic",
        ],
        &[
            ("AlarmName", "the policy's name names it"),
            ("AlarmDescription", "AWS only"),
            ("AlarmActions", "the alarm drives this policy"),
            ("Dimensions", "the alarm watches this service"),
            (
                "Period",
                "the control plane's scaling period (orchestratord --scaling-period) is the period",
            ),
            ("DatapointsToAlarm", "AWS only: EvaluationPeriods in a row"),
            ("TreatMissingData", "missing data never scales"),
            ("Unit", "AWS only"),
        ],
        problems,
        warnings,
    );
    match f.string("Namespace", false, problems).as_deref() {
        None | Some("AWS/ECS") => {}
        Some(o) => problems.push(format!(
            "{}: '{o}' is not AWS/ECS (the service's own metrics)",
            f.path("Namespace")
        )),
    }
    match f.string("Statistic", false, problems).as_deref() {
        None | Some("Average") => {}
        Some(o) => problems.push(format!(
            "{}: '{o}' is not supported: the service's metrics are averages (Average)",
            f.path("Statistic")
        )),
    }
    let metric = f.string("MetricName", true, problems);
    if let Some(m) = &metric {
        if m != "CPUUtilization" && m != "MemoryUtilization" {
            problems.push(format!(
                "{}: '{m}' is not CPUUtilization or MemoryUtilization",
                f.path("MetricName")
            ));
        }
    }
    let threshold = f.number("Threshold", true, problems);
    let comparison = f.string("ComparisonOperator", true, problems);
    if let Some(c) = &comparison {
        if !COMPARISONS.contains(&c.as_str()) {
            problems.push(format!(
                "{}: '{c}' is not one of {}",
                f.path("ComparisonOperator"),
                COMPARISONS.join(", ")
            ));
        }
    }
    let periods = f.whole("EvaluationPeriods", false, 1..=60, problems);
    Some(Alarm {
        metric_name: metric?,
        threshold: threshold?,
        comparison_operator: comparison?,
        evaluation_periods: periods.map_or(1, |n| n as u32),
    })
}

/// Steps must not overlap, and only a step on the alarm's side of the threshold can ever apply:
/// Application Auto Scaling refuses the rest too.
fn check_steps(s: &StepScalingConfiguration, a: &Alarm, problems: &mut Vec<String>) {
    let mut spans: Vec<(f64, f64, usize)> = s
        .step_adjustments
        .iter()
        .enumerate()
        .map(|(i, st)| {
            (
                st.metric_interval_lower_bound.unwrap_or(f64::NEG_INFINITY),
                st.metric_interval_upper_bound.unwrap_or(f64::INFINITY),
                i,
            )
        })
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            problems.push(format!(
                "$.StepScalingPolicyConfiguration.StepAdjustments[{}] and [{}]: their intervals \
                 overlap",
                w[0].2, w[1].2
            ));
        } else if w[1].0 > w[0].1 {
            // A metric in the gap would do nothing, silently: AWS refuses gaps too.
            problems.push(format!(
                "$.StepScalingPolicyConfiguration.StepAdjustments[{}] and [{}]: a gap between \
                 {} and {} (each interval starts where the one below it ends)",
                w[0].2, w[1].2, w[0].1, w[1].0
            ));
        }
    }
    if s.adjustment_type == "ExactCapacity" {
        for (i, st) in s.step_adjustments.iter().enumerate() {
            if st.scaling_adjustment < 0 {
                problems.push(format!(
                    "$.StepScalingPolicyConfiguration.StepAdjustments[{i}].ScalingAdjustment: \
                     {} is not a count of tasks (ExactCapacity sets the count)",
                    st.scaling_adjustment
                ));
            }
        }
    }
    let above = a.comparison_operator.starts_with("Greater");
    for (lo, hi, i) in &spans {
        if (above && *hi <= 0.0) || (!above && *lo >= 0.0) {
            problems.push(format!(
                "$.StepScalingPolicyConfiguration.StepAdjustments[{i}]: can never apply: the \
                 alarm fires when the metric is {} the threshold, so the interval must reach \
                 {} 0",
                if above { "above" } else { "below" },
                if above { "above" } else { "below" },
            ));
        }
    }
}

/// Parses a `PutScheduledAction` document (JSON or YAML) for `service`.
pub fn parse_scheduled_action(
    text: &str,
    service: &str,
) -> Result<Parsed<ScheduledAction>, Vec<String>> {
    let v = document(text)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let Some(f) = Fields::of(&v, "$", &mut problems) else {
        return Err(problems);
    };
    let fields: Vec<&str> = [
        "ScheduledActionName",
        "Schedule",
        "Timezone",
        "ScalableTargetAction",
    ]
    .iter()
    .chain(TARGET_FIELDS)
    .copied()
    .collect();
    f.known(
        &fields,
        &[
            (
                "StartTime",
                "not supported yet: the action applies from now on",
            ),
            (
                "EndTime",
                "not supported yet: the action applies from now on",
            ),
        ],
        &mut problems,
        &mut warnings,
    );
    check_target(f.m, service, &mut problems);
    let name = f.string("ScheduledActionName", true, &mut problems);
    if let Some(n) = &name {
        if let Err(e) = check_name("$.ScheduledActionName", n) {
            problems.push(e);
        }
    }
    let schedule = f.string("Schedule", true, &mut problems);
    let timezone = f
        .string("Timezone", false, &mut problems)
        .unwrap_or_else(utc);
    let zone_ok = match flotilla_scheduler::cron::parse("* * * * *", &timezone) {
        Ok(_) => true,
        Err(e) => {
            problems.push(format!("$.Timezone: {e}"));
            false
        }
    };
    if let Some(s) = &schedule {
        match cron_of(s) {
            Ok(expr) => {
                if let Err(e) = flotilla_scheduler::cron::parse(&expr, &timezone) {
                    if zone_ok {
                        problems.push(format!("$.Schedule: {e}"));
                    }
                }
            }
            Err(e) => problems.push(format!("$.Schedule: {e}")),
        }
    }
    let mut action = TargetAction {
        min_capacity: None,
        max_capacity: None,
    };
    if let Some(a) = f
        .required("ScalableTargetAction", &mut problems)
        .and_then(|a| Fields::of(a, "$.ScalableTargetAction", &mut problems))
    {
        a.known(
            &["MinCapacity", "MaxCapacity"],
            &[],
            &mut problems,
            &mut warnings,
        );
        let cap = 0..=i64::from(MAX_CAPACITY);
        action.min_capacity = a
            .whole("MinCapacity", false, cap.clone(), &mut problems)
            .map(|n| n as u32);
        action.max_capacity = a
            .whole("MaxCapacity", false, cap, &mut problems)
            .map(|n| n as u32);
        if action.min_capacity.is_none() && action.max_capacity.is_none() && problems.is_empty() {
            problems.push("$.ScalableTargetAction: give MinCapacity, MaxCapacity or both".into());
        }
        if let (Some(lo), Some(hi)) = (action.min_capacity, action.max_capacity) {
            if lo > hi {
                problems.push(format!(
                    "$.ScalableTargetAction: MinCapacity {lo} is above MaxCapacity {hi}"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Parsed {
        value: ScheduledAction {
            scheduled_action_name: name.unwrap_or_default(),
            schedule: schedule.unwrap_or_default(),
            timezone,
            scalable_target_action: action,
        },
        warnings,
    })
}

/// The five-field cron expression of a `Schedule`.
fn cron_of(schedule: &str) -> Result<String, String> {
    let s = schedule.trim();
    if s.starts_with("at(") || s.starts_with("rate(") {
        return Err(format!(
            "'{s}': at(…) and rate(…) are not supported; use cron(…) or a five-field cron \
             expression"
        ));
    }
    let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) else {
        return Ok(s.to_string());
    };
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let [minute, hour, dom, month, dow, year] = fields.as_slice() else {
        return Err(format!(
            "'{s}': cron(…) has six fields (Minutes Hours Day-of-month Month Day-of-week \
             Year), found {}",
            fields.len()
        ));
    };
    if *year != "*" {
        return Err(format!("'{s}': a Year other than * is not supported"));
    }
    // AWS: one of the two day fields is `?`.
    if (*dom == "?") == (*dow == "?") {
        return Err(format!(
            "'{s}': one of Day-of-month and Day-of-week must be ? (AWS's rule), the other \
             the days it fires"
        ));
    }
    let fields = [(minute, 59), (hour, 23), (dom, 31), (month, 12), (dow, 7)];
    let mut out = Vec::new();
    for (i, (f, max)) in fields.into_iter().enumerate() {
        if *f == "?" {
            out.push("*".to_string());
            continue;
        }
        let mut tokens = Vec::new();
        for token in f.split(',') {
            let t = token.to_ascii_uppercase();
            let special = t.contains('#')
                || t == "L"
                || t == "LW"
                || t.starts_with("L-")
                || ((t.ends_with('L') || t.ends_with('W'))
                    && t[..t.len() - 1].ends_with(|c: char| c.is_ascii_digit()));
            if special {
                return Err(format!("'{s}': L, W and # are not supported (field '{f}')"));
            }
            let (range, step) = match token.split_once('/') {
                Some((r, n)) => (r, Some(n)),
                None => (token, None),
            };
            // AWS's `0/15` is "from 0, every 15": cron writes it `0-59/15`.
            let range = match step {
                Some(_) if !range.contains('-') && range != "*" => format!("{range}-{max}"),
                _ => range.to_string(),
            };
            let range = if i == 4 {
                // AWS numbers the days of the week 1 (Sunday) to 7; cron 0 to 6.
                let mut days = Vec::new();
                for d in range.split('-') {
                    match d.parse::<u32>() {
                        Ok(n) if (1..=7).contains(&n) => days.push((n - 1).to_string()),
                        Ok(n) => {
                            return Err(format!(
                                "'{s}': Day-of-week {n} is not 1-7 (1 is Sunday in cron(…))"
                            ))
                        }
                        Err(_) => days.push(d.to_ascii_lowercase()),
                    }
                }
                days.join("-")
            } else {
                range.to_ascii_lowercase()
            };
            tokens.push(match step {
                Some(n) => format!("{range}/{n}"),
                None => range,
            });
        }
        out.push(tokens.join(","));
    }
    Ok(out.join(" "))
}

impl ScalingPolicy {
    /// The policy the planner runs. Metric and type names were checked when it was parsed; an
    /// unknown one (a record written by a later release) is `None`.
    pub fn planner(&self) -> Option<planner::NamedPolicy> {
        let metric_of = |name: &str| match name {
            PREDEFINED_CPU | "CPUUtilization" => Some(planner::Metric::Cpu),
            PREDEFINED_MEMORY | "MemoryUtilization" => Some(planner::Metric::Memory),
            _ => None,
        };
        let policy = match self.policy_type {
            PolicyType::TargetTrackingScaling => {
                let c = self.target_tracking_scaling_policy_configuration.as_ref()?;
                planner::Policy::TargetTracking(planner::TargetTracking {
                    metric: metric_of(&c.predefined_metric_specification.predefined_metric_type)?,
                    target: c.target_value,
                    scale_out_cooldown: c.scale_out_cooldown.unwrap_or(planner::DEFAULT_COOLDOWN),
                    scale_in_cooldown: c.scale_in_cooldown.unwrap_or(planner::DEFAULT_COOLDOWN),
                    disable_scale_in: c.disable_scale_in,
                })
            }
            PolicyType::StepScaling => {
                let c = self.step_scaling_policy_configuration.as_ref()?;
                let a = self.alarm.as_ref()?;
                planner::Policy::Step(planner::StepScaling {
                    metric: metric_of(&a.metric_name)?,
                    threshold: a.threshold,
                    comparison: match a.comparison_operator.as_str() {
                        "GreaterThanOrEqualToThreshold" => planner::Comparison::GreaterOrEqual,
                        "GreaterThanThreshold" => planner::Comparison::Greater,
                        "LessThanThreshold" => planner::Comparison::Less,
                        "LessThanOrEqualToThreshold" => planner::Comparison::LessOrEqual,
                        _ => return None,
                    },
                    evaluation_periods: a.evaluation_periods as usize,
                    adjustment: match c.adjustment_type.as_str() {
                        "ChangeInCapacity" => planner::Adjustment::Change,
                        "PercentChangeInCapacity" => planner::Adjustment::Percent,
                        "ExactCapacity" => planner::Adjustment::Exact,
                        _ => return None,
                    },
                    steps: c
                        .step_adjustments
                        .iter()
                        .map(|s| planner::Step {
                            lower: s.metric_interval_lower_bound,
                            upper: s.metric_interval_upper_bound,
                            adjustment: s.scaling_adjustment,
                        })
                        .collect(),
                    min_adjustment_magnitude: c.min_adjustment_magnitude,
                    cooldown: c.cooldown.unwrap_or(planner::DEFAULT_COOLDOWN),
                })
            }
        };
        Some(planner::NamedPolicy {
            name: self.policy_name.clone(),
            policy,
        })
    }

    /// The `PutMetricAlarm` name of the metric it watches (`CPUUtilization`,
    /// `MemoryUtilization`).
    pub fn metric_name(&self) -> &str {
        if let Some(c) = &self.target_tracking_scaling_policy_configuration {
            if c.predefined_metric_specification.predefined_metric_type == PREDEFINED_MEMORY {
                return "MemoryUtilization";
            }
            return "CPUUtilization";
        }
        self.alarm
            .as_ref()
            .map_or("CPUUtilization", |a| &a.metric_name)
    }
}

/// The target-tracking policy `flotilla service autoscale --target-cpu/--target-memory` puts:
/// named `cpu-target-tracking` or `memory-target-tracking`.
pub fn target_tracking_policy(
    metric: &str,
    target: f64,
    scale_out_cooldown: Option<u64>,
    scale_in_cooldown: Option<u64>,
) -> ScalingPolicy {
    let (name, predefined) = if metric == PREDEFINED_MEMORY {
        ("memory-target-tracking", PREDEFINED_MEMORY)
    } else {
        ("cpu-target-tracking", PREDEFINED_CPU)
    };
    ScalingPolicy {
        policy_name: name.into(),
        policy_type: PolicyType::TargetTrackingScaling,
        target_tracking_scaling_policy_configuration: Some(TargetTrackingConfiguration {
            target_value: target,
            predefined_metric_specification: PredefinedMetric {
                predefined_metric_type: predefined.into(),
            },
            scale_out_cooldown,
            scale_in_cooldown,
            disable_scale_in: false,
        }),
        step_scaling_policy_configuration: None,
        alarm: None,
    }
}

/// `PUT /v1/services/{name}/scaling`: registers (or changes) the scalable target and, when
/// given, puts target-tracking policies in the same step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscale {
    /// The bounds.
    pub target: ScalableTarget,
    /// Policies put with it (replacing those of the same names).
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

/// The answer to a put of a policy or scheduled action: the service's scaling as it now is,
/// and the fields the document had that were ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPut {
    /// The service's scaling now.
    pub scaling: ServiceScaling,
    /// Ignored fields, each with its path.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Parses `PUT /v1/services/{name}/scaling`'s body (JSON): the target's fields checked, each
/// policy checked as [`parse_policy`] checks a document, its problems and warnings prefixed
/// with `$.policies[i]`.
pub fn parse_autoscale(text: &str, service: &str) -> Result<Parsed<Autoscale>, Vec<String>> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| vec![format!("$: not valid JSON: {e}")])?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let Some(f) = Fields::of(&v, "$", &mut problems) else {
        return Err(problems);
    };
    f.known(&["target", "policies"], &[], &mut problems, &mut warnings);
    let mut target = None;
    if let Some(t) = f
        .required("target", &mut problems)
        .and_then(|t| Fields::of(t, "$.target", &mut problems))
    {
        t.known(
            &["MinCapacity", "MaxCapacity"],
            &[],
            &mut problems,
            &mut warnings,
        );
        let cap = 0..=i64::from(MAX_CAPACITY);
        let min = t.whole("MinCapacity", true, cap.clone(), &mut problems);
        let max = t.whole("MaxCapacity", true, cap, &mut problems);
        if let (Some(min), Some(max)) = (min, max) {
            let st = ScalableTarget {
                min_capacity: min as u32,
                max_capacity: max as u32,
            };
            match st.check() {
                Ok(()) => target = Some(st),
                Err(e) => problems.push(format!("$.target: {e}")),
            }
        }
    }
    let mut policies = Vec::new();
    match f.get("policies") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = |m: String| format!("$.policies[{i}]{}", m.trim_start_matches('$'));
                match parse_policy(&item.to_string(), service) {
                    Ok(p) => {
                        warnings.extend(p.warnings.into_iter().map(at));
                        policies.push(p.value);
                    }
                    Err(e) => problems.extend(e.into_iter().map(at)),
                }
            }
        }
        Some(o) => problems.push(format!("$.policies: expected an array, found {}", kind(o))),
    }
    match target {
        Some(target) if problems.is_empty() => Ok(Parsed {
            value: Autoscale { target, policies },
            warnings,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aws_target_tracking_policy_file_is_read_as_it_is() {
        // The shape of `aws application-autoscaling put-scaling-policy --cli-input-json`.
        let text = r#"{
          "ServiceNamespace": "ecs",
          "ResourceId": "service/default/web",
          "ScalableDimension": "ecs:service:DesiredCount",
          "PolicyName": "cpu75",
          "PolicyType": "TargetTrackingScaling",
          "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 75.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"},
            "ScaleOutCooldown": 60,
            "ScaleInCooldown": 120
          }
        }"#;
        let p = parse_policy(text, "web").expect("ok");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let n = p.value.planner().expect("ok");
        assert_eq!(n.name, "cpu75");
        let planner::Policy::TargetTracking(t) = n.policy else {
            panic!("{n:?}")
        };
        assert_eq!(
            (
                t.metric,
                t.target,
                t.scale_out_cooldown,
                t.scale_in_cooldown
            ),
            (planner::Metric::Cpu, 75.0, 60, 120)
        );
        let e = parse_policy(text, "api").expect_err("refused");
        assert_eq!(e, ["$.ResourceId: names service 'web', not 'api'"]);
    }

    #[test]
    fn a_step_policy_needs_its_alarm_and_steps_that_can_apply() {
        let text = r#"
PolicyName: out
PolicyType: StepScaling
StepScalingPolicyConfiguration:
  AdjustmentType: ChangeInCapacity
  Cooldown: 30
  StepAdjustments:
    - {MetricIntervalLowerBound: 0, MetricIntervalUpperBound: 20, ScalingAdjustment: 1}
    - {MetricIntervalLowerBound: 20, ScalingAdjustment: 3}
Alarm:
  MetricName: CPUUtilization
  Threshold: 70
  ComparisonOperator: GreaterThanOrEqualToThreshold
  EvaluationPeriods: 2
  Period: 60
"#;
        let p = parse_policy(text, "web").expect("ok");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].starts_with("$.Alarm.Period: ignored"));
        let planner::Policy::Step(s) = p.value.planner().expect("ok").policy else {
            panic!()
        };
        assert_eq!(
            (s.threshold, s.evaluation_periods, s.cooldown),
            (70.0, 2, 30)
        );
        assert_eq!(s.steps.len(), 2);

        let no_alarm = text.split("Alarm:").next().expect("ok");
        let e = parse_policy(no_alarm, "web").expect_err("refused");
        assert!(e[0].starts_with("$.Alarm: required"), "{e:?}");

        let below = text.replace(
            "MetricIntervalLowerBound: 0, MetricIntervalUpperBound: 20",
            "MetricIntervalLowerBound: -20, MetricIntervalUpperBound: 0",
        );
        let e = parse_policy(&below, "web").expect_err("refused");
        assert!(
            e.iter()
                .any(|e| e.contains("StepAdjustments[0]: can never apply")),
            "{e:?}"
        );
        let overlapping = text.replace("LowerBound: 20,", "LowerBound: 10,");
        let e = parse_policy(&overlapping, "web").expect_err("refused");
        assert!(e.iter().any(|e| e.contains("overlap")), "{e:?}");
        let gap = text.replace("LowerBound: 20,", "LowerBound: 30,");
        let e = parse_policy(&gap, "web").expect_err("refused");
        assert!(
            e.iter().any(|e| e.contains("a gap between 20 and 30")),
            "{e:?}"
        );
        let exact = text
            .replace("ChangeInCapacity", "ExactCapacity")
            .replace("ScalingAdjustment: 3", "ScalingAdjustment: -5");
        let e = parse_policy(&exact, "web").expect_err("refused");
        assert!(
            e.iter().any(|e| e.contains("-5 is not a count of tasks")),
            "{e:?}"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let text = r#"{
          "PolicyName": "bad name",
          "TargetTrackingScalingPolicyConfiguration": {
            "TargetValu": 50,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ALBRequestCountPerTarget"},
            "ScaleInCooldown": -1
          }
        }"#;
        let e = parse_policy(text, "web").expect_err("refused");
        let want = [
            "$.PolicyName: 'bad name' is not 1-256 letters, digits, '-', '_' or '.', starting \
             with a letter or digit",
            "$.TargetTrackingScalingPolicyConfiguration.TargetValu: unknown field (did you mean \
             'TargetValue'?)",
            "$.TargetTrackingScalingPolicyConfiguration.TargetValue: required",
            "$.TargetTrackingScalingPolicyConfiguration.PredefinedMetricSpecification.\
             PredefinedMetricType: 'ALBRequestCountPerTarget' is not \
             ECSServiceAverageCPUUtilization or ECSServiceAverageMemoryUtilization",
            "$.TargetTrackingScalingPolicyConfiguration.ScaleInCooldown: -1 is not a whole \
             number from 0 to 86400",
        ];
        assert_eq!(e, want);
        let dots = parse_policy(&text.replace("bad name", ".."), "web").expect_err("..");
        assert!(dots[0].starts_with("$.PolicyName: '..' is not"), "{dots:?}");
        assert!(parse_policy("[1]", "web").expect_err("refused")[0].contains("expected an object"));
        assert!(parse_policy("{", "web").expect_err("refused")[0].starts_with("$: not valid JSON"));
    }

    #[test]
    fn a_scheduled_action_takes_cron_as_aws_writes_it() {
        let text = r#"{
          "ScheduledActionName": "weekday-mornings",
          "Schedule": "cron(0 8 ? * 2-6 *)",
          "Timezone": "Europe/Paris",
          "ScalableTargetAction": {"MinCapacity": 3}
        }"#;
        let p = parse_scheduled_action(text, "web").expect("ok");
        assert_eq!(p.value.cron().expect("ok"), "0 8 * * 1-5");
        assert_eq!(p.value.scalable_target_action.min_capacity, Some(3));
        assert_eq!(cron_of("cron(30 * ? * 1,7 *)").expect("ok"), "30 * * * 0,6");
        assert_eq!(
            cron_of("cron(0/15 * * * ? *)").expect("ok"),
            "0-59/15 * * * *"
        );
        assert_eq!(
            cron_of("cron(0 8 ? JUL MON *)").expect("ok"),
            "0 8 * jul mon"
        );
        assert_eq!(cron_of("cron(0 8 ? * 2/2 *)").expect("ok"), "0 8 * * 1-6/2");
        assert!(cron_of("cron(0 8 ? * 10 *)")
            .expect_err("10")
            .contains("Day-of-week 10"));
        assert!(cron_of("cron(0 8 1 * 2 *)")
            .expect_err("both")
            .contains("must be ?"));
        assert!(cron_of("cron(0 8 L * ? *)")
            .expect_err("L")
            .contains("not supported"));
        assert!(cron_of("cron(0 8 ? * 6#3 *)")
            .expect_err("#")
            .contains("not supported"));
        let zone = parse_scheduled_action(
            r#"{"ScheduledActionName": "z", "Schedule": "0 8 * * *", "Timezone": "Mars/Olympus",
                "ScalableTargetAction": {"MinCapacity": 1}}"#,
            "web",
        )
        .expect_err("zone");
        assert_eq!(zone.len(), 1, "{zone:?}");
        assert!(zone[0].starts_with("$.Timezone: "), "{zone:?}");
        assert_eq!(cron_of("cron(*/15 * * * ? *)").expect("ok"), "*/15 * * * *");
        assert_eq!(cron_of("*/5 * * * *").expect("ok"), "*/5 * * * *");
        assert!(cron_of("cron(0 8 ? * 2-6 2027)")
            .expect_err("refused")
            .contains("Year"));
        assert!(cron_of("rate(5 minutes)")
            .expect_err("refused")
            .contains("not supported"));
        assert!(cron_of("cron(0 8 ? * 0 *)")
            .expect_err("refused")
            .contains("1 is Sunday"));
        let e = parse_scheduled_action(
            r#"{"ScheduledActionName": "x", "Schedule": "61 * * * *",
                "ScalableTargetAction": {"MinCapacity": 4, "MaxCapacity": 2}}"#,
            "web",
        )
        .expect_err("refused");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("$.Schedule: "), "{e:?}");
        assert_eq!(
            e[1],
            "$.ScalableTargetAction: MinCapacity 4 is above MaxCapacity 2"
        );
    }

    #[test]
    fn a_put_target_is_checked_field_by_field_with_its_policies() {
        let e = parse_autoscale(
            r#"{"target": {"MinCapacity": 1, "MaxCapacity": 3, "Bogus": 1},
                "policies": [{"PolicyName": "p", "ResourceId": "service/c/other",
                  "TargetTrackingScalingPolicyConfiguration": {"TargetValue": "50", "Typo": 1,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}}]}"#,
            "web",
        )
        .expect_err("refused");
        assert_eq!(
            e,
            [
                "$.target.Bogus: unknown field",
                "$.policies[0].ResourceId: names service 'other', not 'web'",
                "$.policies[0].TargetTrackingScalingPolicyConfiguration.Typo: unknown field",
            ]
        );
        let ok = parse_autoscale(r#"{"target": {"MinCapacity": 0, "MaxCapacity": 2}}"#, "web")
            .expect("ok");
        assert_eq!(ok.value.target.max_capacity, 2);
        let e = parse_autoscale(r#"{"target": {"MinCapacity": 3, "MaxCapacity": 2}}"#, "web")
            .expect_err("inverted");
        assert_eq!(e, ["$.target: MinCapacity 3 is above MaxCapacity 2"]);
    }

    #[test]
    fn the_bounds_are_checked() {
        let t = ScalableTarget {
            min_capacity: 3,
            max_capacity: 2,
        };
        assert_eq!(
            t.check().expect_err("refused"),
            "MinCapacity 3 is above MaxCapacity 2"
        );
        let t = ScalableTarget {
            min_capacity: 0,
            max_capacity: MAX_CAPACITY + 1,
        };
        assert!(t
            .check()
            .expect_err("refused")
            .starts_with("MaxCapacity: at most"));
    }
}
