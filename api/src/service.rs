//! Services: the shape of Amazon ECS's CreateService / UpdateService input (JSON, or the same
//! in YAML), checked with the JSON path of every problem, and what the API says of a service.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ops::{PlacementConstraintSpec, PlacementStrategySpec};
use crate::taskdef::{kind, unknown_field};

/// REPLICA or DAEMON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchedulingStrategy {
    /// `desiredCount` tasks.
    Replica,
    /// One task on every node that matches the constraints.
    Daemon,
}

impl std::fmt::Display for SchedulingStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Replica => "REPLICA",
            Self::Daemon => "DAEMON",
        })
    }
}

/// `deploymentConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    /// Healthy tasks kept during a deployment, percent of the desired count.
    pub minimum_healthy_percent: u32,
    /// Tasks allowed during a deployment, percent of the desired count.
    pub maximum_percent: u32,
    /// `deploymentCircuitBreaker`.
    pub deployment_circuit_breaker: CircuitBreaker,
}

/// `deploymentCircuitBreaker`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreaker {
    /// Stop a deployment whose tasks keep failing.
    pub enable: bool,
    /// Then deploy the last completed revision again.
    pub rollback: bool,
}

/// A service as created or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Unique name.
    pub service_name: String,
    /// `FAMILY` or `FAMILY:REVISION`.
    pub task_definition: String,
    /// Tasks wanted (REPLICA).
    pub desired_count: u32,
    /// REPLICA or DAEMON.
    pub scheduling_strategy: SchedulingStrategy,
    /// Rolling deployment bounds and circuit breaker.
    pub deployment_configuration: DeploymentConfiguration,
    /// Constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraintSpec>,
    /// Strategies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_strategy: Vec<PlacementStrategySpec>,
    /// What happens to tasks on a node that stops answering (Flotilla's own field).
    #[serde(default)]
    pub disconnect_policy: DisconnectPolicy,
    /// Whether a task that stopped is replaced: a one-shot service's task that completed is
    /// not (Flotilla's own field).
    #[serde(default, skip_serializing_if = "CompletionPolicy::is_default")]
    pub completion_policy: CompletionPolicy,
    /// The name it registers under for DNS, and its VIP (Flotilla's own field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::discovery::Discovery>,
}

/// `disconnectPolicy`: when a node's tasks count as lost, whether they are replaced, and which
/// copy survives when the node comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisconnectPolicy {
    /// Seconds a node is disconnected before its tasks are lost (default 30).
    pub lost_after: u32,
    /// Replace lost tasks elsewhere (default true).
    pub replace: bool,
    /// Which copy survives when the node comes back.
    pub reconcile: ReconcilePolicy,
    /// Seconds after which a node cut off from the control plane stops the task itself (less
    /// than `lostAfter`, so a singleton never runs twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_client_after: Option<u32>,
}

impl Default for DisconnectPolicy {
    fn default() -> Self {
        Self {
            lost_after: 30,
            replace: true,
            reconcile: ReconcilePolicy::KeepReplacement,
            stop_on_client_after: None,
        }
    }
}

/// `completionPolicy`: which stopped tasks of the service's deployment are replaced (Swarm's
/// `restart_policy.condition` for a service's tasks, as opposed to a container's in-place
/// `restartPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionPolicy {
    /// Which stopped tasks are replaced (default `always`).
    pub replace: ReplaceStopped,
}

impl CompletionPolicy {
    /// `replace: always`, today's and ECS's behaviour.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which stopped tasks a service replaces (`completionPolicy.replace`). A task *completed* when
/// it stopped because its essential containers exited, all with code 0; any other stop not
/// made by the service itself is a *failure*.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplaceStopped {
    /// Every task that stopped is replaced: the service keeps its count running.
    #[default]
    Always,
    /// A failed task is replaced; a completed one counts toward the desired count and is not
    /// (a job: each of its tasks runs to success once per deployment).
    OnFailure,
    /// No task that stopped is replaced: each runs once per deployment, completed or failed.
    Never,
}

impl ReplaceStopped {
    /// As written: `always`, `onFailure`, `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "onFailure",
            Self::Never => "never",
        }
    }
}

impl std::fmt::Display for ReplaceStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which copy of a task survives when a node that was lost (and whose tasks were replaced)
/// comes back (`disconnectPolicy.reconcile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReconcilePolicy {
    /// The replacements stay; the returning node's copies stop.
    #[default]
    KeepReplacement,
    /// The returning node's copies stay; their replacements stop.
    KeepOriginal,
    /// The copies that started first stay.
    LongestRunning,
}

/// Where a deployment's rollout is (ECS `rolloutState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    /// Its tasks are being started and older ones replaced.
    #[default]
    InProgress,
    /// Every task is healthy and no older one is left.
    Completed,
    /// Stopped by the circuit breaker.
    Failed,
}

impl RolloutState {
    /// As shown: `IN_PROGRESS`, `COMPLETED`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A deployment's role (ECS `deployments[].status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeploymentStatus {
    /// New tasks come from it.
    Primary,
    /// Its tasks are being replaced.
    Active,
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Primary => "PRIMARY",
            Self::Active => "ACTIVE",
        })
    }
}

/// A service's status (ECS `status`; a deleted service is gone at once, its tasks stopping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceStatus {
    /// It keeps its tasks running.
    #[default]
    Active,
}

/// `PUT /v1/services/{name}`: what changes (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceUpdate {
    /// A new revision to deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    /// A new count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_count: Option<u32>,
    /// Deploy again even with the same revision.
    #[serde(default)]
    pub force_new_deployment: bool,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentInfo {
    /// Id.
    pub id: String,
    /// `PRIMARY` (new tasks come from it) or `ACTIVE` (being replaced).
    pub status: DeploymentStatus,
    /// `family:revision`.
    pub task_definition: String,
    /// Its rollout.
    pub rollout_state: RolloutState,
    /// Why it is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_state_reason: Option<String>,
    /// Its tasks running.
    pub running_count: u32,
    /// Its tasks placed, not running yet.
    pub pending_count: u32,
    /// Its tasks that failed.
    pub failed_tasks: u32,
    /// Its tasks that completed (stopped with exit code 0) and, by the service's
    /// `completionPolicy`, are not replaced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completed_count: u32,
    /// Creation time.
    pub created_at: u64,
}

/// A service as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// The spec.
    #[serde(flatten)]
    pub spec: ServiceSpec,
    /// `ACTIVE`.
    pub status: ServiceStatus,
    /// Tasks running.
    pub running_count: u32,
    /// Tasks placed, not running yet.
    pub pending_count: u32,
    /// Tasks of the primary deployment that completed and, by `completionPolicy`, are not
    /// replaced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completed_count: u32,
    /// Newest first.
    pub deployments: Vec<DeploymentInfo>,
    /// Why tasks could not be placed lately, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_problem: Option<String>,
    /// Its virtual address (`discovery.vip`), once assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Creation time.
    pub created_at: u64,
    /// The project whose apply (`PUT /v1/projects/{name}`) created it: absent for a service
    /// created with `POST /v1/services`. A project's apply changes and removes only its own
    /// services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `POST /v1/services`: the service, and the fields that were ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCreated {
    /// The service.
    #[serde(flatten)]
    pub service: ServiceInfo,
    /// Ignored fields, each with its path.
    pub warnings: Vec<String>,
}

/// CreateService fields that only mean something on AWS: accepted with a warning.
const AWS_ONLY: &[&str] = &[
    "cluster",
    "launchType",
    "capacityProviderStrategy",
    "platformVersion",
    "role",
    "loadBalancers",
    "serviceRegistries",
    "networkConfiguration",
    "healthCheckGracePeriodSeconds",
    "enableECSManagedTags",
    "propagateTags",
    "enableExecuteCommand",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "deploymentController",
    "clientToken",
    "availabilityZoneRebalancing",
    "tags",
];

/// Fields read as whole numbers, wherever they are.
const NUMBER_FIELDS: &[&str] = &[
    "desiredCount",
    "minimumHealthyPercent",
    "maximumPercent",
    "lostAfter",
    "stopOnClientAfter",
    "containerPort",
];
/// Fields read as booleans, wherever they are.
const BOOLEAN_FIELDS: &[&str] = &["enable", "rollback", "replace", "vip"];

/// Reads numbers and booleans that ECS tooling wrote as strings (`"desiredCount": "2"`,
/// `"enable": "true"`) as what they are, noting each path, so that each kind is warned about
/// once.
fn read_scalars(v: &mut Value, at: &str, numbers: &mut Vec<String>, booleans: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let path = format!("{at}.{k}");
                if let Value::String(s) = x {
                    if NUMBER_FIELDS.contains(&k.as_str()) {
                        if let Ok(n) = s.trim().parse::<u64>() {
                            *x = Value::from(n);
                            numbers.push(path);
                        }
                    } else if BOOLEAN_FIELDS.contains(&k.as_str()) && (s == "true" || s == "false")
                    {
                        *x = Value::Bool(s == "true");
                        booleans.push(path);
                    }
                    continue;
                }
                read_scalars(x, &path, numbers, booleans);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                read_scalars(x, &format!("{at}[{i}]"), numbers, booleans);
            }
        }
        _ => {}
    }
}

/// Fields of `aws ecs describe-services` output (and of tools that dump it, like ecspresso) that
/// ECS sets itself: ignored with one warning. See
/// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Service.html>.
const READ_ONLY: &[&str] = &[
    "serviceArn",
    "clusterArn",
    "status",
    "runningCount",
    "pendingCount",
    "deployments",
    "taskSets",
    "events",
    "createdAt",
    "createdBy",
    "roleArn",
    "platformFamily",
];

/// A parsed CreateService input with its warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The service.
    pub spec: ServiceSpec,
    /// Ignored fields, each with its path.
    pub warnings: Vec<String>,
}

/// Parses and checks a CreateService input given as JSON or YAML; every problem is reported
/// with its JSON path.
pub fn parse(text: &str) -> Result<Parsed, Vec<String>> {
    let mut v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| vec![format!("$: not valid JSON: {e}")])?
    } else {
        yaml_serde::from_str(text).map_err(|e| vec![format!("$: not valid YAML: {e}")])?
    };
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let (mut numbers, mut booleans) = (Vec::new(), Vec::new());
    read_scalars(&mut v, "$", &mut numbers, &mut booleans);
    if !numbers.is_empty() {
        warnings.push(format!(
            "{}: numbers written as strings, read as numbers (ECS's API wants JSON numbers)",
            numbers.join(", ")
        ));
    }
    if !booleans.is_empty() {
        warnings.push(format!(
            "{}: booleans written as strings, read as true or false (ECS's API wants JSON \
             booleans)",
            booleans.join(", ")
        ));
    }
    let Some(m) = v.as_object() else {
        return Err(vec![format!("$: expected an object, found {}", kind(&v))]);
    };
    const KNOWN: &[&str] = &[
        "serviceName",
        "taskDefinition",
        "desiredCount",
        "schedulingStrategy",
        "deploymentConfiguration",
        "placementConstraints",
        "placementStrategy",
        "namespace",
        "disconnectPolicy",
        "completionPolicy",
        "discovery",
    ];
    let read_only: Vec<String> = READ_ONLY
        .iter()
        .filter(|k| m.contains_key(**k))
        .map(|k| format!("$.{k}"))
        .collect();
    if !read_only.is_empty() {
        warnings.push(format!(
            "{}: ignored (read-only fields of describe-services output: ECS sets them)",
            read_only.join(", ")
        ));
    }
    for k in m.keys() {
        if READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        if AWS_ONLY.contains(&k.as_str()) {
            warnings.push(format!("$.{k}: ignored (AWS only)"));
        } else if k == "namespace" {
            warnings.push(format!(
                "$.{k}: ignored (Flotilla's services register with discovery.namespace)"
            ));
        } else if !KNOWN.contains(&k.as_str()) {
            let fields = [KNOWN, AWS_ONLY, READ_ONLY, &["namespace"]].concat();
            problems.push(format!("$.{k}: {}", unknown_field(k, &fields)));
        }
    }
    let string = |key: &str, problems: &mut Vec<String>| -> Option<String> {
        match m.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                // Tools that save a service (the create-service tutorials, ecspresso) leave out
                // what their command line gives.
                let flag = if key == "serviceName" {
                    "--service-name"
                } else {
                    "--task-definition"
                };
                problems.push(format!(
                    "$.{key}: required (what `aws ecs create-service {flag}` gives: write it \
                     in the file)"
                ));
                None
            }
            Some(o) => {
                problems.push(format!("$.{key}: expected a string, found {}", kind(o)));
                None
            }
        }
    };
    let name = string("serviceName", &mut problems);
    if let Some(n) = &name {
        let ok = n.len() <= 255
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            problems.push("$.serviceName: use 1-255 letters, digits, '_' or '-'".into());
        }
    }
    let task_definition = string("taskDefinition", &mut problems);
    let scheduling = match m.get("schedulingStrategy") {
        None | Some(Value::Null) => SchedulingStrategy::Replica,
        Some(Value::String(s)) if s == "REPLICA" => SchedulingStrategy::Replica,
        Some(Value::String(s)) if s == "DAEMON" => SchedulingStrategy::Daemon,
        Some(o) => {
            problems.push(format!(
                "$.schedulingStrategy: {o} is not REPLICA or DAEMON"
            ));
            SchedulingStrategy::Replica
        }
    };
    let int = |key: &str, v: Option<&Value>, min: u64, max: u64, problems: &mut Vec<String>| match v
    {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().filter(|n| (min..=max).contains(n)) {
            Some(n) => Some(n as u32),
            None => {
                problems.push(format!(
                    "{key}: {n} is not a whole number from {min} to {max}"
                ));
                None
            }
        },
        Some(o) => {
            problems.push(format!("{key}: expected an integer, found {}", kind(o)));
            None
        }
    };
    let desired_count = int(
        "$.desiredCount",
        m.get("desiredCount"),
        0,
        10_000,
        &mut problems,
    );
    if scheduling == SchedulingStrategy::Daemon && desired_count.is_some() {
        problems
            .push("$.desiredCount: a DAEMON service runs one task per node; leave it out".into());
    }
    let (default_min, default_max) = match scheduling {
        SchedulingStrategy::Replica => (100, 200),
        SchedulingStrategy::Daemon => (0, 100),
    };
    let mut config = DeploymentConfiguration {
        minimum_healthy_percent: default_min,
        maximum_percent: default_max,
        deployment_circuit_breaker: CircuitBreaker::default(),
    };
    match m.get("deploymentConfiguration") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            const FIELDS: &[&str] = &[
                "minimumHealthyPercent",
                "maximumPercent",
                "deploymentCircuitBreaker",
                "alarms",
            ];
            for k in d.keys() {
                if !FIELDS.contains(&k.as_str()) {
                    problems.push(format!(
                        "$.deploymentConfiguration.{k}: {}",
                        unknown_field(k, FIELDS)
                    ));
                } else if k == "alarms" {
                    warnings.push("$.deploymentConfiguration.alarms: ignored (AWS only)".into());
                }
            }
            if let Some(n) = int(
                "$.deploymentConfiguration.minimumHealthyPercent",
                d.get("minimumHealthyPercent"),
                0,
                100,
                &mut problems,
            ) {
                config.minimum_healthy_percent = n;
            }
            if let Some(n) = int(
                "$.deploymentConfiguration.maximumPercent",
                d.get("maximumPercent"),
                100,
                400,
                &mut problems,
            ) {
                config.maximum_percent = n;
            }
            match d.get("deploymentCircuitBreaker") {
                None | Some(Value::Null) => {}
                Some(Value::Object(cb)) => {
                    for (k, v) in cb {
                        let p = format!("$.deploymentConfiguration.deploymentCircuitBreaker.{k}");
                        match (k.as_str(), v) {
                            ("enable", Value::Bool(b)) => config.deployment_circuit_breaker.enable = *b,
                            ("rollback", Value::Bool(b)) => {
                                config.deployment_circuit_breaker.rollback = *b
                            }
                            ("enable" | "rollback", o) => {
                                problems.push(format!("{p}: expected a boolean, found {}", kind(o)))
                            }
                            _ => problems.push(format!(
                                "{p}: {}",
                                unknown_field(k, &["enable", "rollback"])
                            )),
                        }
                    }
                }
                Some(o) => problems.push(format!(
                    "$.deploymentConfiguration.deploymentCircuitBreaker: expected an object, found {}",
                    kind(o)
                )),
            }
        }
        Some(o) => problems.push(format!(
            "$.deploymentConfiguration: expected an object, found {}",
            kind(o)
        )),
    }
    let constraints: Vec<PlacementConstraintSpec> = match m.get("placementConstraints") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("$.placementConstraints: {e}"));
                Vec::new()
            }
        },
    };
    for (i, c) in constraints.iter().enumerate() {
        let p = format!("$.placementConstraints[{i}]");
        match (c.kind.as_str(), &c.expression) {
            ("distinctInstance", None) => {}
            ("memberOf", Some(e)) => {
                if let Err(err) = flotilla_scheduler::expr::parse(e) {
                    problems.push(format!("{p}.expression: '{e}': {err}"));
                }
            }
            (k, _) => problems.push(format!(
                "{p}: '{k}' (memberOf with an expression, or distinctInstance without)"
            )),
        }
    }
    let strategy: Vec<PlacementStrategySpec> = match m.get("placementStrategy") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("$.placementStrategy: {e}"));
                Vec::new()
            }
        },
    };
    for (i, s) in strategy.iter().enumerate() {
        if let Err(e) = flotilla_scheduler::Strategy::parse(&s.kind, s.field.as_deref()) {
            problems.push(format!("$.placementStrategy[{i}]: {e}"));
        }
    }
    let mut disconnect = DisconnectPolicy::default();
    match m.get("disconnectPolicy") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            for (k, v) in d {
                let p = format!("$.disconnectPolicy.{k}");
                match (k.as_str(), v) {
                    ("lostAfter", _) => {
                        if let Some(n) = int(&p, Some(v), 5, 86_400, &mut problems) {
                            disconnect.lost_after = n;
                        }
                    }
                    ("replace", Value::Bool(b)) => disconnect.replace = *b,
                    ("stopOnClientAfter", _) => {
                        disconnect.stop_on_client_after =
                            int(&p, Some(v), 1, 86_400, &mut problems);
                    }
                    ("reconcile", o) => {
                        match serde_json::from_value::<ReconcilePolicy>(o.clone()) {
                            Ok(r) => disconnect.reconcile = r,
                            Err(_) => problems.push(format!(
                                "{p}: {o} is not keepReplacement, keepOriginal or longestRunning"
                            )),
                        }
                    }
                    ("replace", o) => {
                        problems.push(format!("{p}: expected a boolean, found {}", kind(o)))
                    }
                    _ => problems.push(format!(
                        "{p}: {}",
                        unknown_field(
                            k,
                            &["lostAfter", "replace", "stopOnClientAfter", "reconcile"]
                        )
                    )),
                }
            }
        }
        Some(o) => problems.push(format!(
            "$.disconnectPolicy: expected an object, found {}",
            kind(o)
        )),
    }
    let mut completion = CompletionPolicy::default();
    match m.get("completionPolicy") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => {
            for (k, v) in c {
                let p = format!("$.completionPolicy.{k}");
                match (k.as_str(), v) {
                    ("replace", o) => match serde_json::from_value::<ReplaceStopped>(o.clone()) {
                        Ok(r) => completion.replace = r,
                        Err(_) => {
                            problems.push(format!("{p}: {o} is not always, onFailure or never"))
                        }
                    },
                    _ => problems.push(format!("{p}: {}", unknown_field(k, &["replace"]))),
                }
            }
        }
        Some(o) => problems.push(format!(
            "$.completionPolicy: expected an object, found {}",
            kind(o)
        )),
    }
    let discovery = match m.get("discovery") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => discovery_of(d, name.as_deref(), &mut problems),
        Some(o) => {
            problems.push(format!(
                "$.discovery: expected an object, found {}",
                kind(o)
            ));
            None
        }
    };
    if let Some(s) = disconnect.stop_on_client_after {
        if s >= disconnect.lost_after {
            problems.push(format!(
                "$.disconnectPolicy.stopOnClientAfter: {s} s must be less than lostAfter ({} s)",
                disconnect.lost_after
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(service_name), Some(task_definition)) = (name, task_definition) else {
        return Err(vec!["$: serviceName and taskDefinition are required".into()]);
    };
    Ok(Parsed {
        spec: ServiceSpec {
            service_name,
            task_definition,
            desired_count: desired_count.unwrap_or(match scheduling {
                SchedulingStrategy::Replica => 1,
                SchedulingStrategy::Daemon => 0,
            }),
            scheduling_strategy: scheduling,
            deployment_configuration: config,
            placement_constraints: constraints,
            placement_strategy: strategy,
            disconnect_policy: disconnect,
            completion_policy: completion,
            discovery,
        },
        warnings,
    })
}

/// `discovery`: namespace (required), name (default: the service name), containerName,
/// containerPort, vip.
fn discovery_of(
    d: &serde_json::Map<String, Value>,
    service: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<crate::discovery::Discovery> {
    use crate::discovery::is_label;
    let before = problems.len();
    let label = |key: &str, problems: &mut Vec<String>| match d.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_label(s) => Some(s.clone()),
        Some(o) => {
            problems.push(format!(
                "$.discovery.{key}: {o} is not a DNS label (1 to 63 of a-z, 0-9 and '-', not at either end)"
            ));
            None
        }
    };
    let namespace = label("namespace", problems);
    if namespace.is_none() && !d.contains_key("namespace") {
        problems.push("$.discovery.namespace: required".into());
    }
    let name = match (label("name", problems), d.contains_key("name"), service) {
        (Some(n), _, _) => Some(n),
        (None, false, Some(s)) if is_label(s) => Some(s.to_string()),
        (None, false, Some(s)) => {
            problems.push(format!(
                "$.discovery.name: required: the service name '{s}' is not a DNS label"
            ));
            None
        }
        _ => None,
    };
    let container_name = match d.get("containerName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(o) => {
            problems.push(format!(
                "$.discovery.containerName: expected a name, found {o}"
            ));
            None
        }
    };
    let container_port = match d.get("containerPort") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|p| (1..=65535).contains(p)) {
            Some(p) => u16::try_from(p).ok(),
            None => {
                problems.push(format!(
                    "$.discovery.containerPort: {v} is not a port (1 to 65535)"
                ));
                None
            }
        },
    };
    let vip = match d.get("vip") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(o) => {
            problems.push(format!(
                "$.discovery.vip: expected a boolean, found {}",
                kind(o)
            ));
            false
        }
    };
    const FIELDS: &[&str] = &["namespace", "name", "containerName", "containerPort", "vip"];
    for k in d.keys() {
        if !FIELDS.contains(&k.as_str()) {
            problems.push(format!("$.discovery.{k}: {}", unknown_field(k, FIELDS)));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(crate::discovery::Discovery {
        namespace: namespace?,
        name: name?,
        container_name,
        container_port,
        vip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecs_create_service_input_parses_with_defaults_and_warnings() {
        let p = parse(
            r#"{"serviceName": "pos", "taskDefinition": "pos:3", "desiredCount": 3,
                "launchType": "EC2", "cluster": "edge",
                "deploymentConfiguration": {"minimumHealthyPercent": 50,
                  "deploymentCircuitBreaker": {"enable": true, "rollback": true}},
                "placementStrategy": [{"type": "spread", "field": "attribute:site"}],
                "placementConstraints": [{"type": "memberOf", "expression": "attribute:site in [a, b]"}]}"#,
        )
        .expect("valid");
        assert_eq!(p.spec.desired_count, 3);
        assert_eq!(p.spec.deployment_configuration.minimum_healthy_percent, 50);
        assert_eq!(p.spec.deployment_configuration.maximum_percent, 200);
        assert!(
            p.spec
                .deployment_configuration
                .deployment_circuit_breaker
                .rollback
        );
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(p.spec.discovery, None);
        let d = parse("serviceName: logs\ntaskDefinition: shipper\nschedulingStrategy: DAEMON\n")
            .expect("yaml daemon");
        assert_eq!(d.spec.scheduling_strategy, SchedulingStrategy::Daemon);
        assert_eq!(d.spec.deployment_configuration.minimum_healthy_percent, 0);
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let problems = parse(
            r#"{"serviceName": "bad name", "desiredCount": -1, "schedulingStrategy": "ALL",
                "deploymentConfiguration": {"maximumPercent": 50, "x": 1},
                "placementConstraints": [{"type": "memberOf", "expression": "site = a"}],
                "placementStrategy": [{"type": "pack"}], "bogus": true}"#,
        )
        .expect_err("invalid");
        for want in [
            "$.serviceName:",
            "$.taskDefinition: required",
            "$.desiredCount:",
            "$.schedulingStrategy:",
            "$.deploymentConfiguration.maximumPercent:",
            "$.deploymentConfiguration.x: unknown field",
            "$.placementConstraints[0].expression:",
            "$.placementStrategy[0]:",
            "$.bogus: unknown field",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_misspelled_field_names_the_one_it_likely_is_at_every_level() {
        let problems = parse(
            r#"{"serviceName": "api", "taskDefinition": "api", "desiredcount": 2,
                "deploymentConfiguration": {"maximumPercnt": 200,
                    "deploymentCircuitBreaker": {"enabled": true}},
                "disconnectPolicy": {"lostAfer": 60},
                "discovery": {"namespace": "shop", "containerport": 80}}"#,
        )
        .expect_err("misspelled");
        assert_eq!(
            problems,
            [
                "$.desiredcount: unknown field (did you mean 'desiredCount'?)",
                "$.deploymentConfiguration.maximumPercnt: unknown field (did you mean \
                 'maximumPercent'?)",
                "$.deploymentConfiguration.deploymentCircuitBreaker.enabled: unknown field (did \
                 you mean 'enable'?)",
                "$.disconnectPolicy.lostAfer: unknown field (did you mean 'lostAfter'?)",
                "$.discovery.containerport: unknown field (did you mean 'containerPort'?)",
            ]
        );
    }

    #[test]
    fn discovery_names_a_namespace_and_defaults_its_name() {
        let p = parse(
            r#"{"serviceName": "api", "taskDefinition": "api",
                "discovery": {"namespace": "shop", "vip": true, "containerPort": 80}}"#,
        )
        .expect("valid");
        let d = p.spec.discovery.expect("discovery");
        assert_eq!((d.namespace.as_str(), d.name.as_str()), ("shop", "api"));
        assert!(d.vip);
        assert_eq!(d.container_port, Some(80));
        let bad = parse(
            r#"{"serviceName": "Api_1", "taskDefinition": "api",
                "discovery": {"namespace": "Shop", "containerPort": 0, "vip": "yes", "x": 1}}"#,
        )
        .expect_err("invalid");
        for p in [
            "$.discovery.namespace:",
            "$.discovery.name: required: the service name 'Api_1'",
            "$.discovery.containerPort:",
            "$.discovery.vip:",
            "$.discovery.x: unknown field",
        ] {
            assert!(bad.iter().any(|b| b.starts_with(p)), "{p} not in {bad:?}");
        }
        let missing = parse(r#"{"serviceName": "a", "taskDefinition": "a", "discovery": {}}"#)
            .expect_err("no namespace");
        assert_eq!(missing, vec!["$.discovery.namespace: required".to_string()]);
    }

    #[test]
    fn numbers_and_booleans_written_as_strings_are_read_with_one_warning_each() {
        let p = parse(
            r#"{"serviceName": "pos", "taskDefinition": "pos:3", "desiredCount": "3",
                "deploymentConfiguration": {"minimumHealthyPercent": "50",
                  "deploymentCircuitBreaker": {"enable": "true", "rollback": "false"}}}"#,
        )
        .expect("read leniently");
        assert_eq!(p.spec.desired_count, 3);
        assert_eq!(p.spec.deployment_configuration.minimum_healthy_percent, 50);
        assert!(
            p.spec
                .deployment_configuration
                .deployment_circuit_breaker
                .enable
        );
        assert_eq!(
            p.warnings,
            [
                "$.deploymentConfiguration.minimumHealthyPercent, $.desiredCount: numbers \
                 written as strings, read as numbers (ECS's API wants JSON numbers)",
                "$.deploymentConfiguration.deploymentCircuitBreaker.enable, \
                 $.deploymentConfiguration.deploymentCircuitBreaker.rollback: booleans written \
                 as strings, read as true or false (ECS's API wants JSON booleans)",
            ]
        );
        // A name that looks like a number stays a name; a count that is not one is refused.
        let p = parse(r#"{"serviceName": "2024", "taskDefinition": "pos", "desiredCount": 1}"#)
            .expect("a numeric name");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let e = parse(r#"{"serviceName": "a", "taskDefinition": "pos", "desiredCount": "two"}"#)
            .expect_err("not a number");
        assert!(
            e[0].starts_with("$.desiredCount: expected an integer, found a string"),
            "{e:?}"
        );
    }

    #[test]
    fn completion_policy_says_which_stopped_tasks_are_replaced() {
        let p = parse(r#"{"serviceName": "web", "taskDefinition": "web"}"#).expect("valid");
        assert_eq!(p.spec.completion_policy.replace, ReplaceStopped::Always);
        // The default is not written back: a service as before reads as before.
        let json = serde_json::to_value(&p.spec).expect("json");
        assert!(json.get("completionPolicy").is_none(), "{json}");
        for (text, want) in [
            ("always", ReplaceStopped::Always),
            ("onFailure", ReplaceStopped::OnFailure),
            ("never", ReplaceStopped::Never),
        ] {
            let p = parse(&format!(
                r#"{{"serviceName": "seed", "taskDefinition": "seed",
                    "completionPolicy": {{"replace": "{text}"}}}}"#
            ))
            .expect("valid");
            assert_eq!(p.spec.completion_policy.replace, want);
            assert_eq!(want.to_string(), text);
            let back: ServiceSpec =
                serde_json::from_value(serde_json::to_value(&p.spec).expect("json"))
                    .expect("round trip");
            assert_eq!(back, p.spec);
        }
        let yaml =
            parse("serviceName: seed\ntaskDefinition: seed\ncompletionPolicy:\n  replace: never\n")
                .expect("yaml");
        assert_eq!(yaml.spec.completion_policy.replace, ReplaceStopped::Never);
        let bad = parse(
            r#"{"serviceName": "seed", "taskDefinition": "seed",
                "completionPolicy": {"replace": "on-failure", "replce": "never"}}"#,
        )
        .expect_err("invalid");
        assert_eq!(
            bad,
            [
                "$.completionPolicy.replace: \"on-failure\" is not always, onFailure or never",
                "$.completionPolicy.replce: unknown field (did you mean 'replace'?)",
            ]
        );
        for (v, want) in [
            (
                r#""never""#,
                "$.completionPolicy: expected an object, found a string",
            ),
            (
                r#"{"replace": true}"#,
                "$.completionPolicy.replace: true is not always, onFailure or never",
            ),
        ] {
            let e = parse(&format!(
                r#"{{"serviceName": "a", "taskDefinition": "a", "completionPolicy": {v}}}"#
            ))
            .expect_err("invalid");
            assert_eq!(e, [want]);
        }
    }
}
