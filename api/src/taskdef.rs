//! Task definitions in the shape of Amazon ECS's `RegisterTaskDefinition` input, so an ECS
//! user's file works unchanged; YAML is the same shape. [`parse`] checks everything at once and
//! names every problem by its JSON path (`$.containerDefinitions[1].memory`); fields that only
//! mean something on AWS (roles, awslogs, secrets ARNs, Fargate settings) are accepted with a
//! warning naming each. The result is the typed [`TaskDefinition`], serialized in the same
//! shape.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A validated task definition (without family revision: the control plane assigns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// Family name; revisions are numbered per family.
    pub family: String,
    /// The containers, in the order given.
    pub container_definitions: Vec<ContainerDefinition>,
    /// Network mode of every container of a task.
    pub network_mode: NetworkMode,
    /// Volumes the containers may mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeDefinition>,
    /// `memberOf` expressions over node attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraint>,
    /// Task-level CPU units (1024 per core), a hard limit for the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Task-level memory in MiB, a hard limit for the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// ECS network modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A node bridge, reached through host port mappings.
    #[default]
    Bridge,
    /// The node's namespace.
    Host,
    /// An address of its own on the node's network.
    Awsvpc,
    /// Loopback only.
    None,
}

/// One container of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    /// Unique within the task.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// CPU units (relative weight).
    #[serde(default)]
    pub cpu: u32,
    /// Hard memory limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Soft memory limit (reservation), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// When it exits, the task stops.
    pub essential: bool,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment variables, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValue>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// `user[:group]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Container health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Start order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    /// Read-only root filesystem.
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    /// Resource limits (`nofile` …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// Capabilities added to the default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities_add: Vec<String>,
    /// Capabilities dropped from the default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities_drop: Vec<String>,
    /// Run an init as PID 1 that reaps orphans and passes signals on (ECS
    /// `linuxParameters.initProcessEnabled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_process_enabled: bool,
    /// tmpfs mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<Tmpfs>,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// All capabilities, no seccomp.
    #[serde(default)]
    pub privileged: bool,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Restarts of the container in place, by its node (also while disconnected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Secrets it gets (ECS `secrets`, Flotilla's `flotilla:` references only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ContainerSecret>,
    /// Config files it gets (a Flotilla extension in the shape of Compose's and Swarm's
    /// `configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ContainerConfigFile>,
}

/// A config file a container gets (an entry of the Flotilla extension `configs`, in the shape
/// of Compose's long syntax): config `source`'s value, mounted read-only at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfigFile {
    /// The config's name (`flotilla config create`).
    pub source: String,
    /// Its version; none: the newest when the task is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Absolute path in the container (default `/<source>`, as Swarm mounts configs).
    pub target: String,
    /// The file's mode (default 0444), owner and group (default 0), as for secrets.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "octal_mode")]
    pub mode: Option<u32>,
    /// The file's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The file's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A secret a container gets (an entry of ECS's `secrets`): as the environment variable
/// `name` (unless `environment` is false) and always as the file `/run/secrets/<name>` on a
/// read-only tmpfs, as Docker Swarm gives secrets. The value is never part of the definition:
/// `value_from` names it (see [`crate::secrets::SecretRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSecret {
    /// The variable's and the file's name: 1–255 letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// `flotilla:NAME[:JSON-KEY][:VERSION]`.
    pub value_from: String,
    /// Also an environment variable (a Flotilla extension; default true). False: the file only,
    /// so the value is not in the environment child processes inherit.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub environment: bool,
    /// The file's mode (a Flotilla extension, after Swarm's; default 0444). In a file, a
    /// string of octal digits (`"0400"`) or a number, which is the mode's value (YAML's `0400`
    /// reads as 256). Written as a string of octal digits.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "octal_mode")]
    pub mode: Option<u32>,
    /// The file's owner (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The file's group (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl ContainerSecret {
    /// The file's mode when none is given: Swarm's.
    pub const DEFAULT_MODE: u32 = 0o444;

    /// The reference its `value_from` makes (checked when the definition was parsed).
    pub fn reference(&self) -> Option<crate::secrets::SecretRef> {
        crate::secrets::SecretRef::parse(&self.value_from)?.ok()
    }
}

/// What is wrong with a config file's `target`, if anything: an absolute, normalized path,
/// not `/`, and not in `/proc`, `/sys`, `/dev` or the secrets' directory.
pub fn config_target_problem(target: &str) -> Option<&'static str> {
    if !target.starts_with('/') || target == "/" {
        return Some("must be an absolute path to a file");
    }
    if target.len() > 4096 || target.contains('\0') {
        return Some("must be at most 4096 bytes, without NUL");
    }
    if target.ends_with('/')
        || target[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some("must be a normalized path (no '.', '..', '//' or trailing '/')");
    }
    if target[1..].split('/').any(|c| c.len() > 255) {
        return Some("must have no component longer than 255 bytes");
    }
    let under = |dir: &str| target == dir || target.starts_with(&format!("{dir}/"));
    if ["/proc", "/sys", "/dev"].into_iter().any(under) {
        return Some("must not be in /proc, /sys or /dev");
    }
    if under(crate::secrets::FILES_DIR)
        || crate::secrets::FILES_DIR.starts_with(&format!("{target}/"))
    {
        return Some("must not be at, in or above /run/secrets, where the secrets are");
    }
    None
}

/// A file mode as a string of octal digits (`"0400"`); read from that or from a number (the
/// mode's value), as the checker reads it.
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match mode {
            Some(m) => s.serialize_str(&format!("{m:04o}")),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u32),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<Either>::deserialize(d)? {
            None => Ok(None),
            Some(Either::Number(n)) => Ok(Some(n)),
            Some(Either::Text(t)) => u32::from_str_radix(&t, 8)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("mode '{t}': octal digits"))),
        }
    }
}

/// The largest user or group id a file may be given: `(uid_t)-1` means "unchanged" to
/// chown(2).
const MAX_ID: i64 = u32::MAX as i64 - 1;

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// ECS `restartPolicy`: the node restarts an exited container in place, unless its exit code
/// is ignored. Restarts back off exponentially (1 s doubling to [`RestartPolicy::MAX_BACKOFF_SECS`]);
/// a container that ran at least `restartAttemptPeriod` seconds starts again at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// Restarts are on.
    pub enabled: bool,
    /// Exit codes that end the container for good (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_exit_codes: Vec<i32>,
    /// Seconds a container must run for its next restart to be immediate (60-1800, default
    /// 300).
    pub restart_attempt_period: u32,
}

impl RestartPolicy {
    /// Longest wait between restarts of a container that keeps failing.
    pub const MAX_BACKOFF_SECS: u64 = 300;

    /// Whether a container that exited with `code` is restarted.
    pub fn restarts(&self, code: i32) -> bool {
        self.enabled && !self.ignored_exit_codes.contains(&code)
    }
}

/// `name`/`value` pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port in the container.
    pub container_port: u16,
    /// Port on the node (0 or absent: one is picked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// Name (for service discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// ECS container health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `["CMD", …]` or `["CMD-SHELL", "…"]`.
    pub command: Vec<String>,
    /// Seconds between checks.
    pub interval: u32,
    /// Seconds a check may take.
    pub timeout: u32,
    /// Failures before unhealthy.
    pub retries: u32,
    /// Grace period in seconds.
    pub start_period: u32,
}

impl HealthCheck {
    /// For Flotilla's network checks — `["HTTP", "http://localhost:PORT/PATH"]` (a 2xx or 3xx
    /// answer passes) and `["TCP", "PORT"]` (a connection passes), made from inside the
    /// container's network namespace — the probe as the node runs it (`http:PORT/PATH`,
    /// `tcp:PORT`); `None` for commands.
    pub fn probe(&self) -> Option<Result<String, String>> {
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{p}' is not a port"))
        };
        match self.command.as_slice() {
            [kind, port_text] if kind == "TCP" => Some(port(port_text).map(|p| format!("tcp:{p}"))),
            [kind, url] if kind == "HTTP" => Some((|| {
                let rest = url
                    .strip_prefix("http://")
                    .ok_or_else(|| format!("'{url}': an http:// URL"))?;
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (host, p) = authority.rsplit_once(':').unwrap_or((authority, "80"));
                if !["localhost", "127.0.0.1"].contains(&host) {
                    return Err(format!(
                        "'{url}': the check runs inside the container: use localhost"
                    ));
                }
                Ok(format!("http:{}/{path}", port(p)?))
            })()),
            _ => None,
        }
    }
}

/// A start-order dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// The container depended on.
    pub container_name: String,
    /// What it must have done.
    pub condition: DependencyCondition,
}

/// ECS dependency conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DependencyCondition {
    /// Started.
    Start,
    /// Exited.
    Complete,
    /// Exited with 0.
    Success,
    /// Healthy.
    Healthy,
}

/// A volume mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    /// Volume name.
    pub source_volume: String,
    /// Path in the container.
    pub container_path: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A resource limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ulimit {
    /// `nofile`, `nproc`, …
    pub name: String,
    /// Soft limit ([`UNLIMITED`] for none; a task definition writes it `-1`).
    #[serde(with = "limit_value")]
    pub soft_limit: u64,
    /// Hard limit ([`UNLIMITED`] for none; a task definition writes it `-1`).
    #[serde(with = "limit_value")]
    pub hard_limit: u64,
}

/// A ulimit's value in JSON as ECS and Docker write it: [`UNLIMITED`] is `-1`, so what
/// `taskdef inspect` prints registers again.
mod limit_value {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if *v == super::UNLIMITED {
            s.serialize_i64(-1)
        } else {
            s.serialize_u64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Limit {
            Count(u64),
            Unlimited(i64),
        }
        match Limit::deserialize(d)? {
            Limit::Count(n) => Ok(n),
            Limit::Unlimited(-1) => Ok(super::UNLIMITED),
            Limit::Unlimited(n) => Err(serde::de::Error::custom(format!(
                "a limit is a count or -1 (unlimited), not {n}"
            ))),
        }
    }
}

/// A ulimit without a limit: `RLIM_INFINITY` of setrlimit(2), written `-1` in a task definition
/// as Docker's `--ulimit memlock=-1` takes it.
pub const UNLIMITED: u64 = u64::MAX;

/// A count written as a person or a program writes it, and nothing else: decimal digits, no
/// sign, space, leading zero or other character (`5`, not `+5`, `05`, ` 5` or `5.0`), so a
/// slip (`nofile=+5`, a pasted `nofile=1,024`) is refused with the reason rather than read as
/// something else. Docker reads `--ulimit` values with Go's `strconv.ParseInt`, which takes a
/// leading `+`; Flotilla does not.
pub fn parse_count(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a count (decimal digits only: no sign, space, point or separator)"
        ));
    }
    if text.len() > 1 && text.starts_with('0') {
        let plain = text.trim_start_matches('0');
        return Err(format!(
            "'{text}' has a leading zero (write {})",
            if plain.is_empty() { "0" } else { plain }
        ));
    }
    text.parse::<u64>()
        .map_err(|_| format!("'{text}' is too large (at most {})", u64::MAX))
}

/// Why a ulimit's values would keep its container from running, when they would; the same for
/// `ctr run --ulimit` and a task definition's `ulimits`. A CPU-time limit (`cpu`, seconds) of 0
/// ends the container's processes as they start: the kernel sends SIGXCPU at the soft limit
/// and SIGKILL at the hard one (setrlimit(2)).
pub fn ulimit_problem(name: &str, soft: u64, hard: u64) -> Option<String> {
    if soft > hard {
        return Some(format!(
            "the soft limit ({}) is above the hard limit ({})",
            limit_text(soft),
            limit_text(hard)
        ));
    }
    if name == "cpu" && soft == 0 {
        return Some(
            "a CPU-time limit of 0 seconds kills the container's processes as they start \
             (SIGXCPU at the soft limit, SIGKILL at the hard one); give at least 1 second, or -1 \
             for no limit"
                .into(),
        );
    }
    None
}

/// An integer written as JSON writes one: an optional `-`, then digits without a leading zero.
fn canonical_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

/// A ulimit value as it is written: `-1` for [`UNLIMITED`].
fn limit_text(v: u64) -> String {
    if v == UNLIMITED {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// A tmpfs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tmpfs {
    /// Path in the container.
    pub container_path: String,
    /// Size in MiB.
    pub size: u64,
}

/// A task volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDefinition {
    /// Name mounts refer to.
    pub name: String,
    /// Host path (a bind mount, below the node's allowed roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_source_path: Option<String>,
    /// A named local volume shared across tasks (`dockerVolumeConfiguration.scope: shared`);
    /// otherwise the volume lives as long as the task.
    #[serde(default)]
    pub shared: bool,
}

/// A placement constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConstraint {
    /// The `memberOf` expression.
    pub expression: String,
}

/// The outcome of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The definition.
    pub definition: TaskDefinition,
    /// Ignored fields, each with its path.
    pub warnings: Vec<String>,
}

/// Top-level fields that only mean something on AWS.
const AWS_ONLY_TOP: &[&str] = &[
    "taskRoleArn",
    "executionRoleArn",
    "requiresCompatibilities",
    "runtimePlatform",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "enableFaultInjection",
    "ipcMode",
    "pidMode",
];
const TOP: &[&str] = &[
    "family",
    "containerDefinitions",
    "networkMode",
    "volumes",
    "placementConstraints",
    "cpu",
    "memory",
    "tags",
];
const AWS_ONLY_CONTAINER: &[&str] = &[
    "logConfiguration",
    "repositoryCredentials",
    "firelensConfiguration",
    "resourceRequirements",
    "credentialSpecs",
    "environmentFiles",
    "versionConsistency",
];
/// Container fields of ECS that Flotilla does not act on yet: accepted, with a warning.
const NOT_YET_CONTAINER: &[&str] = &[
    "dockerLabels",
    "dockerSecurityOptions",
    "links",
    "volumesFrom",
    "dnsServers",
    "dnsSearchDomains",
    "extraHosts",
    "disableNetworking",
    "interactive",
    "pseudoTerminal",
    "startTimeout",
    "systemControls",
];
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "cpu",
    "memory",
    "memoryReservation",
    "portMappings",
    "essential",
    "entryPoint",
    "command",
    "environment",
    "workingDirectory",
    "user",
    "healthCheck",
    "dependsOn",
    "mountPoints",
    "readonlyRootFilesystem",
    "ulimits",
    "linuxParameters",
    "stopTimeout",
    "restartPolicy",
    "privileged",
    "hostname",
    "secrets",
    "configs",
];
/// The least memory a container gets, MiB, for its `memory` and its `memoryReservation` alike
/// (what Docker 20.10 and later reserve — its daemon refuses less for either, "Minimum memory
/// reservation allowed is 6MB"; ECS documents the same floor).
const MIN_CONTAINER_MEMORY: u64 = 6;

/// Task-level `cpu`, in CPU units, as ECS bounds it for tasks on EC2 and external instances
/// (Flotilla's nodes): "If you're using the EC2 launch type or external launch type, this field
/// is optional. Supported values are between 128 CPU units (0.125 vCPUs) and 196608 CPU units
/// (192 vCPUs)." (`cpu` in
/// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>).
pub const TASK_CPU: std::ops::RangeInclusive<u32> = 128..=196_608;

/// Task-level `memory`, in MiB. ECS bounds it only on Fargate ("If using the EC2 launch type,
/// this field is optional"; `memory` in
/// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>):
/// for EC2 and external instances the floor is what one container needs (the
/// [`MIN_CONTAINER_MEMORY`] Docker reserves), the ceiling Flotilla's own (about 3.8 TiB, more
/// than any node has).
pub const TASK_MEMORY: std::ops::RangeInclusive<u32> = MIN_CONTAINER_MEMORY as u32..=4_000_000;
/// How a node mounts every tmpfs: these `mountOptions` say what happens anyway.
const TMPFS_OPTIONS: &[&str] = &["rw", "nosuid", "nodev"];
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Fields of `aws ecs describe-task-definition` (and `register-task-definition`) output that ECS
/// sets itself: ignored, with one warning, so a saved description registers again. See
/// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_TaskDefinition.html>.
const READ_ONLY_TOP: &[&str] = &[
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// The forms ECS tooling produces that are not quite the `RegisterTaskDefinition` input, each
/// accepted with one warning naming every place it was used (never silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Leniency {
    /// `{"taskDefinition": {…}}`, as `describe-task-definition` and `register-task-definition`
    /// print it.
    Wrapped,
    /// Read-only fields of that output ([`READ_ONLY_TOP`]).
    ReadOnly,
    /// A number written as a string (`"cpu": "256"`).
    NumberAsString,
    /// A boolean written as a string (`"autoprovision": "false"`).
    BoolAsString,
}

impl Leniency {
    fn warning(self, paths: &[String]) -> String {
        let what = match self {
            Leniency::Wrapped => {
                "read as the task definition it wraps (the output of aws ecs \
                 describe-task-definition or register-task-definition)"
            }
            Leniency::ReadOnly => {
                "ignored (read-only fields of describe-task-definition output: ECS sets them)"
            }
            Leniency::NumberAsString => {
                "numbers written as strings, read as numbers (ECS's API wants JSON numbers)"
            }
            Leniency::BoolAsString => {
                "booleans written as strings, read as true or false (ECS's API wants JSON \
                 booleans)"
            }
        };
        format!("{}: {what}", paths.join(", "))
    }
}

/// Parses and checks a task definition given as JSON or YAML: the `RegisterTaskDefinition`
/// input (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>),
/// or what ECS tooling makes of it — `describe-task-definition` output, wrapped in
/// `{"taskDefinition": …}` or not, and numbers or booleans written as strings — each such
/// form with one warning. A bare `containerDefinitions` array (Terraform's
/// `container_definitions`) needs a family: see [`with_fields`].
pub fn parse(text: &str) -> Result<Parsed, Vec<String>> {
    let value = read(text).map_err(|e| vec![e])?;
    let mut c = Checker::default();
    let (inner, wrapper) = match &value {
        Value::Array(_) => {
            return Err(vec![format!(
                "$: a bare containerDefinitions array (as Terraform's container_definitions) \
                 has no family: register it with `flotilla taskdef register --family NAME \
                 [--memory MIB] FILE` (as `aws ecs register-task-definition --family NAME \
                 --container-definitions file://FILE`), or write {{\"family\": NAME, \
                 \"containerDefinitions\": [...]}}"
            )])
        }
        Value::Object(m) if is_wrapped(m) => (unwrap(m), Some(m)),
        v => (v.clone(), None),
    };
    let def = c.task(&inner);
    // Paths name the place in the file the user has.
    let at = |line: &str| match (wrapper, line.strip_prefix('$')) {
        (Some(_), Some(rest)) => format!("$.taskDefinition{rest}"),
        _ => line.to_string(),
    };
    let mut errors: Vec<String> = c.errors.iter().map(|e| at(e)).collect();
    let mut warnings: Vec<String> = c.warnings.iter().map(|w| at(w)).collect();
    for (kind, paths) in &c.lenient {
        let paths: Vec<String> = paths.iter().map(|p| at(p)).collect();
        warnings.push(kind.warning(&paths));
    }
    if let Some(m) = wrapper {
        for k in m
            .keys()
            .filter(|k| !["taskDefinition", "tags"].contains(&k.as_str()))
        {
            errors.push(format!(
                "$.{k}: {}",
                unknown_field(k, &["taskDefinition", "tags"])
            ));
        }
        warnings.insert(0, Leniency::Wrapped.warning(&["$.taskDefinition".into()]));
    }
    match def {
        Some(definition) if errors.is_empty() => Ok(Parsed {
            definition,
            warnings,
        }),
        _ => Err(errors),
    }
}

/// What is said of an unknown field `key` of an object whose fields are `fields`: with the
/// one it likely misspells (`portMapping` → `portMappings`), if one is close.
pub fn unknown_field(key: &str, fields: &[&str]) -> String {
    match crate::config::nearest(key, fields) {
        Some(f) => format!("unknown field (did you mean '{f}'?)"),
        None => "unknown field".to_string(),
    }
}

/// Whether `m` is `describe-task-definition` output: `{"taskDefinition": {…}}`.
fn is_wrapped(m: &Map<String, Value>) -> bool {
    m.get("taskDefinition").is_some_and(Value::is_object) && !m.contains_key("family")
}

/// The definition a wrapper holds, with the wrapper's `tags` (`--include TAGS`) when it has
/// none of its own.
fn unwrap(m: &Map<String, Value>) -> Value {
    let mut inner = m["taskDefinition"].clone();
    if let (Some(tags), Some(im)) = (m.get("tags"), inner.as_object_mut()) {
        im.entry("tags").or_insert_with(|| tags.clone());
    }
    inner
}

/// Reads JSON (text starting with `{` or `[`) or YAML into a value.
fn read(text: &str) -> Result<Value, String> {
    let t = text.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("$: not valid JSON: {e}"))
    } else {
        yaml_serde::from_str(text).map_err(|e| format!("$: not valid JSON or YAML: {e}"))
    }
}

/// The task definition `text` with top-level fields set, as JSON: what `aws ecs
/// register-task-definition --family NAME --container-definitions file://FILE [--cpu C]
/// [--memory M]` registers. A bare `containerDefinitions` array (Terraform's
/// `container_definitions`) becomes a task definition with those fields; an object (wrapped
/// or not) gets them in place of its own. `fields` are `(name, value)`: `family`, `cpu`,
/// `memory`, strings as ECS takes them.
pub fn with_fields(text: &str, fields: &[(&str, &str)]) -> Result<String, String> {
    let mut value = read(text)?;
    if let Value::Array(defs) = value {
        value = serde_json::json!({ "containerDefinitions": defs });
    }
    let target = match &mut value {
        Value::Object(m) if is_wrapped(m) => {
            m.get_mut("taskDefinition").and_then(Value::as_object_mut)
        }
        Value::Object(m) => Some(m),
        other => {
            return Err(format!(
                "$: expected an object or a containerDefinitions array, found {}",
                kind(other)
            ))
        }
    };
    let Some(target) = target else {
        return Err("$.taskDefinition: expected an object".into());
    };
    for (name, v) in fields {
        target.insert((*name).into(), Value::String((*v).into()));
    }
    Ok(value.to_string())
}

#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    warnings: Vec<String>,
    /// Paths where each leniency was used.
    lenient: BTreeMap<Leniency, Vec<String>>,
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Checker {
    fn err(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    fn lenient(&mut self, kind: Leniency, path: &str) {
        self.lenient.entry(kind).or_default().push(path.to_string());
    }

    /// Checks the keys of an object: `known` are read, `aws_only` and `not_yet` are accepted
    /// with a warning, anything else is an error.
    fn keys(
        &mut self,
        path: &str,
        m: &Map<String, Value>,
        known: &[&str],
        aws_only: &[&str],
        not_yet: &[&str],
    ) {
        for (k, v) in m {
            // An unset field (null, as the ECS console exports it, or empty) asks for nothing.
            let unset = match v {
                Value::Null => true,
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if unset && (not_yet.contains(&k.as_str()) || aws_only.contains(&k.as_str())) {
                continue;
            }
            if not_yet.contains(&k.as_str()) {
                self.warnings.push(format!(
                    "{path}.{k}: ignored (not supported by Flotilla yet)"
                ));
            } else if aws_only.contains(&k.as_str()) {
                self.warnings.push(format!(
                    "{path}.{k}: ignored (it only means something on AWS)"
                ));
            } else if !known.contains(&k.as_str()) {
                let fields: Vec<&str> = [known, aws_only, not_yet].concat();
                self.err(&format!("{path}.{k}"), unknown_field(k, &fields));
            }
        }
    }

    fn object<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.err(path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    fn array<'v>(&mut self, path: &str, v: Option<&'v Value>) -> &'v [Value] {
        match v {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(other) => {
                self.err(path, format!("expected an array, found {}", kind(other)));
                &[]
            }
        }
    }

    fn string(&mut self, path: &str, v: Option<&Value>, required: bool) -> Option<String> {
        match v {
            None | Some(Value::Null) => {
                if required {
                    self.err(path, "required");
                }
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn strings(&mut self, path: &str, v: Option<&Value>) -> Option<Vec<String>> {
        let v = v.filter(|v| !v.is_null())?;
        let items = self.array(path, Some(v));
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(&format!("{path}[{i}]"), Some(item), true) {
                out.push(s);
            }
        }
        Some(out)
    }

    fn int(&mut self, path: &str, v: Option<&Value>, min: i64, max: i64) -> Option<i64> {
        let n = match v {
            None | Some(Value::Null) => return None,
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) if canonical_int(s.trim()).is_some() => {
                self.lenient(Leniency::NumberAsString, path);
                canonical_int(s.trim())
            }
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                // `"+5"`, `"05"`: a number, but not as JSON (or anyone) writes one.
                self.err(
                    path,
                    format!(
                        "expected an integer, found the string '{s}' (write it {}, no sign or \
                         leading zero)",
                        s.trim().parse::<i64>().unwrap_or_default()
                    ),
                );
                return None;
            }
            Some(Value::String(s)) => {
                self.err(path, format!("expected an integer, found the string '{s}'"));
                return None;
            }
            Some(other) => {
                self.err(path, format!("expected an integer, found {}", kind(other)));
                return None;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.err(path, format!("expected an integer from {min} to {max}"));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: Option<&Value>) -> Option<bool> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => {
                self.lenient(Leniency::BoolAsString, path);
                Some(s == "true")
            }
            Some(other) => {
                self.err(
                    path,
                    format!("expected true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn task(&mut self, v: &Value) -> Option<TaskDefinition> {
        let m = self.object("$", v)?;
        let known: Vec<&str> = TOP.iter().chain(READ_ONLY_TOP).copied().collect();
        self.keys("$", m, &known, AWS_ONLY_TOP, &[]);
        for k in READ_ONLY_TOP.iter().filter(|k| m.contains_key(**k)) {
            self.lenient(Leniency::ReadOnly, &format!("$.{k}"));
        }
        let family = self.string("$.family", m.get("family"), true);
        if let Some(f) = &family {
            if !is_name(f, 255) {
                self.err("$.family", "use 1-255 letters, digits, '_' or '-'");
            }
        }
        let network_mode = match self
            .string("$.networkMode", m.get("networkMode"), false)
            .as_deref()
        {
            None | Some("bridge") => NetworkMode::Bridge,
            Some("host") => NetworkMode::Host,
            Some("awsvpc") => NetworkMode::Awsvpc,
            Some("none") => NetworkMode::None,
            Some(other) => {
                self.err(
                    "$.networkMode",
                    format!("unknown network mode '{other}' (bridge, host, awsvpc or none)"),
                );
                NetworkMode::Bridge
            }
        };
        let cpu = self.units("$.cpu", m.get("cpu"), "vCPU", 1024, TASK_CPU);
        let memory = self
            .units("$.memory", m.get("memory"), "GB", 1024, TASK_MEMORY)
            .map(u64::from);
        let volumes = self.volumes(m.get("volumes"));
        let volume_names: HashSet<String> = volumes.iter().map(|v| v.name.clone()).collect();
        let mut containers = Vec::new();
        let defs = m.get("containerDefinitions");
        let items = self.array("$.containerDefinitions", defs);
        if items.is_empty() {
            self.err(
                "$.containerDefinitions",
                "at least one container is required",
            );
        }
        for (i, c) in items.iter().enumerate() {
            if let Some(def) = self.container(
                &format!("$.containerDefinitions[{i}]"),
                c,
                network_mode,
                &volume_names,
                // Given but invalid is one problem, already said.
                m.get("memory").is_some_and(|v| !v.is_null()),
            ) {
                containers.push((i, def));
            }
        }
        // Duplicates among every named container, valid or not.
        let mut seen = HashSet::new();
        for (i, c) in items.iter().enumerate() {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                if !seen.insert(name) {
                    self.err(
                        &format!("$.containerDefinitions[{i}].name"),
                        format!("duplicate container name '{name}'"),
                    );
                }
            }
        }
        if !containers.is_empty() && !containers.iter().any(|(_, c)| c.essential) {
            self.err(
                "$.containerDefinitions",
                "at least one container must be essential",
            );
        }
        self.dependencies(&containers);
        self.port_conflicts(&containers, network_mode);
        if containers.len() == items.len() {
            self.task_limits(cpu, memory, &containers);
        }
        let mut constraints = Vec::new();
        for (i, pc) in self
            .array("$.placementConstraints", m.get("placementConstraints"))
            .iter()
            .enumerate()
        {
            let p = format!("$.placementConstraints[{i}]");
            let Some(pm) = self.object(&p, pc) else {
                continue;
            };
            self.keys(&p, pm, &["type", "expression"], &[], &[]);
            match self
                .string(&format!("{p}.type"), pm.get("type"), true)
                .as_deref()
            {
                Some("memberOf") | None => {}
                Some(other) => self.err(
                    &format!("{p}.type"),
                    format!("'{other}' is not a task placement constraint (memberOf)"),
                ),
            }
            if let Some(e) = self.string(&format!("{p}.expression"), pm.get("expression"), true) {
                if let Err(err) = flotilla_scheduler::expr::parse(&e) {
                    self.err(&format!("{p}.expression"), format!("'{e}': {err}"));
                }
                constraints.push(PlacementConstraint { expression: e });
            }
        }
        let mut tags = BTreeMap::new();
        for (i, t) in self.array("$.tags", m.get("tags")).iter().enumerate() {
            let p = format!("$.tags[{i}]");
            let Some(tm) = self.object(&p, t) else {
                continue;
            };
            self.keys(&p, tm, &["key", "value"], &[], &[]);
            let k = self.string(&format!("{p}.key"), tm.get("key"), true);
            let v = self
                .string(&format!("{p}.value"), tm.get("value"), false)
                .unwrap_or_default();
            if let Some(k) = k {
                if tags.insert(k.clone(), v).is_some() {
                    self.err(&format!("{p}.key"), format!("duplicate tag '{k}'"));
                }
            }
        }
        Some(TaskDefinition {
            family: family?,
            container_definitions: containers.into_iter().map(|(_, c)| c).collect(),
            network_mode,
            volumes,
            placement_constraints: constraints,
            cpu,
            memory,
            tags,
        })
    }

    /// Task-level CPU units or MiB in every form `RegisterTaskDefinition` takes: a number, a
    /// numeric string, or a string in `unit` (vCPU or GB: `"1 vCPU"`, `".25 vcpu"`, `"0.5 GB"`,
    /// `"2GB"`), converted at registration as ECS converts it, and then within `range` (in
    /// CPU units or MiB: [`TASK_CPU`], [`TASK_MEMORY`]). See `cpu` and `memory` in
    /// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>.
    fn units(
        &mut self,
        path: &str,
        v: Option<&Value>,
        unit: &str,
        per_unit: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let text = match v {
            None | Some(Value::Null) => return None,
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                self.err(
                    path,
                    format!("expected a number or a string, found {}", kind(other)),
                );
                return None;
            }
        };
        let t = text.trim().to_ascii_lowercase();
        let (num, mult) = match t.strip_suffix(&unit.to_ascii_lowercase()) {
            Some(n) => (n.trim().to_string(), f64::from(per_unit)),
            None => (t.clone(), 1.0),
        };
        let plain = if per_unit == 1024 && unit == "GB" {
            "MiB"
        } else {
            "CPU units"
        };
        let (lo, hi) = (*range.start(), *range.end());
        // In whole units of the wire: '0.0001 GB' is not 0 MiB.
        let within = |n: f64| {
            let n = (n * mult).round();
            (f64::from(lo)..=f64::from(hi))
                .contains(&n)
                .then_some(n as u32)
        };
        match num.parse::<f64>() {
            Ok(n) if n.is_finite() && within(n).is_some() => return within(n),
            Ok(n) if n.is_finite() && (n * mult).round() >= 1.0 && unit == "vCPU" => self.err(
                path,
                format!(
                    "'{text}' is outside the task cpu ECS takes for EC2 and external instances: \
                     {lo} to {hi} CPU units ({} to {} vCPU)",
                    f64::from(lo) / 1024.0,
                    f64::from(hi) / 1024.0
                ),
            ),
            Ok(n) if n.is_finite() && (n * mult).round() >= 1.0 => self.err(
                path,
                format!("'{text}' is outside the task memory Flotilla takes: {lo} to {hi} {plain}"),
            ),
            Ok(_) => self.err(
                path,
                format!("'{text}' is not a positive amount ({lo} to {hi} {plain})"),
            ),
            Err(_) => self.err(
                path,
                format!(
                    "'{text}' is not a positive amount as ECS writes it: {plain} (512, \"512\") \
                     or {unit} (\"1 {unit}\", \"0.5{unit}\")"
                ),
            ),
        }
        None
    }

    fn volumes(&mut self, v: Option<&Value>) -> Vec<VolumeDefinition> {
        let mut out: Vec<VolumeDefinition> = Vec::new();
        for (i, item) in self.array("$.volumes", v).iter().enumerate() {
            let p = format!("$.volumes[{i}]");
            let Some(m) = self.object(&p, item) else {
                continue;
            };
            self.keys(
                &p,
                m,
                &["name", "host", "dockerVolumeConfiguration"],
                &[
                    "efsVolumeConfiguration",
                    "fsxWindowsFileServerVolumeConfiguration",
                    "configuredAtLaunch",
                ],
                &[],
            );
            let Some(name) = self.string(&format!("{p}.name"), m.get("name"), true) else {
                continue;
            };
            if !is_name(&name, 255) {
                self.err(
                    &format!("{p}.name"),
                    "use 1-255 letters, digits, '_' or '-'",
                );
            }
            if out.iter().any(|o| o.name == name) {
                self.err(
                    &format!("{p}.name"),
                    format!("duplicate volume name '{name}'"),
                );
            }
            let mut host_source_path = None;
            if let Some(h) = m.get("host").filter(|h| !h.is_null()) {
                if let Some(hm) = self.object(&format!("{p}.host"), h) {
                    self.keys(&format!("{p}.host"), hm, &["sourcePath"], &[], &[]);
                    host_source_path =
                        self.string(&format!("{p}.host.sourcePath"), hm.get("sourcePath"), false);
                    if let Some(sp) = &host_source_path {
                        if !sp.starts_with('/') {
                            self.err(&format!("{p}.host.sourcePath"), "must be an absolute path");
                        }
                    }
                }
            }
            let mut shared = false;
            if let Some(d) = m.get("dockerVolumeConfiguration").filter(|d| !d.is_null()) {
                let dp = format!("{p}.dockerVolumeConfiguration");
                if let Some(dm) = self.object(&dp, d) {
                    self.keys(
                        &dp,
                        dm,
                        &["scope", "autoprovision", "driver", "driverOpts", "labels"],
                        &[],
                        &[],
                    );
                    match self
                        .string(&format!("{dp}.scope"), dm.get("scope"), false)
                        .as_deref()
                    {
                        None | Some("task") => {}
                        Some("shared") => shared = true,
                        Some(o) => {
                            self.err(&format!("{dp}.scope"), format!("'{o}': task or shared"))
                        }
                    }
                    let autoprovision =
                        self.boolean(&format!("{dp}.autoprovision"), dm.get("autoprovision"));
                    if autoprovision == Some(false) {
                        self.warnings.push(format!(
                            "{dp}.autoprovision: ignored: a node creates a shared volume that is \
                             missing, as with autoprovision: true"
                        ));
                    }
                    for key in ["driverOpts", "labels"] {
                        match dm.get(key) {
                            None | Some(Value::Null) => {}
                            Some(Value::Object(o)) if o.is_empty() => {}
                            Some(Value::Object(o)) => {
                                for (k, v) in o {
                                    if !v.is_string() {
                                        self.err(
                                            &format!("{dp}.{key}.{k}"),
                                            format!("expected a string, found {}", kind(v)),
                                        );
                                    }
                                }
                                self.warnings.push(format!(
                                    "{dp}.{key}: ignored (not supported by Flotilla yet): the \
                                     local driver makes a plain directory on the node"
                                ));
                            }
                            Some(other) => self.err(
                                &format!("{dp}.{key}"),
                                format!("expected an object, found {}", kind(other)),
                            ),
                        }
                    }
                    match self
                        .string(&format!("{dp}.driver"), dm.get("driver"), false)
                        .as_deref()
                    {
                        None | Some("local") => {}
                        Some(o) => self.err(
                            &format!("{dp}.driver"),
                            format!("'{o}': only the local driver exists on a node"),
                        ),
                    }
                }
            }
            if host_source_path.is_some() && shared {
                self.err(
                    &p,
                    "a volume is either a host path or a docker volume, not both",
                );
            }
            out.push(VolumeDefinition {
                name,
                host_source_path,
                shared,
            });
        }
        out
    }

    fn container(
        &mut self,
        p: &str,
        v: &Value,
        mode: NetworkMode,
        volumes: &HashSet<String>,
        task_memory: bool,
    ) -> Option<ContainerDefinition> {
        let m = self.object(p, v)?;
        self.keys(p, m, CONTAINER, AWS_ONLY_CONTAINER, NOT_YET_CONTAINER);
        let name = self.string(&format!("{p}.name"), m.get("name"), true);
        if let Some(n) = &name {
            if !is_name(n, 255) {
                self.err(
                    &format!("{p}.name"),
                    "use 1-255 letters, digits, '_' or '-'",
                );
            }
        }
        let image = self.string(&format!("{p}.image"), m.get("image"), true);
        if image
            .as_deref()
            .is_some_and(|i| i.trim().is_empty() || i.len() > 1024)
        {
            self.err(&format!("{p}.image"), "must be an image reference");
        }
        let cpu = self
            .int(&format!("{p}.cpu"), m.get("cpu"), 0, 1 << 20)
            .unwrap_or(0) as u32;
        let memory = self
            .int(
                &format!("{p}.memory"),
                m.get("memory"),
                MIN_CONTAINER_MEMORY as i64,
                1 << 30,
            )
            .map(|n| n as u64);
        let reservation = self
            .int(
                &format!("{p}.memoryReservation"),
                m.get("memoryReservation"),
                MIN_CONTAINER_MEMORY as i64,
                1 << 30,
            )
            .map(|n| n as u64);
        if let (Some(mem), Some(res)) = (memory, reservation) {
            if res > mem {
                self.err(
                    &format!("{p}.memoryReservation"),
                    format!("{res} MiB exceeds memory ({mem} MiB)"),
                );
            }
        }
        if memory.is_none()
            && reservation.is_none()
            && !task_memory
            && !m.contains_key("memory")
            && !m.contains_key("memoryReservation")
        {
            self.err(
                p,
                "memory or memoryReservation is required (or a task-level memory)",
            );
        }
        let mut ports = Vec::new();
        for (i, pm) in self
            .array(&format!("{p}.portMappings"), m.get("portMappings"))
            .iter()
            .enumerate()
        {
            let pp = format!("{p}.portMappings[{i}]");
            let Some(pmm) = self.object(&pp, pm) else {
                continue;
            };
            self.keys(
                &pp,
                pmm,
                &[
                    "containerPort",
                    "hostPort",
                    "protocol",
                    "name",
                    "containerPortRange",
                ],
                &["appProtocol"],
                &[],
            );
            if pmm.get("containerPortRange").is_some_and(|r| !r.is_null()) {
                // One message, not a warning and then "containerPort: required".
                self.err(
                    &format!("{pp}.containerPortRange"),
                    "port ranges are not supported yet: map each port with its own \
                     containerPort",
                );
                continue;
            }
            let cport = self.int(
                &format!("{pp}.containerPort"),
                pmm.get("containerPort"),
                1,
                65535,
            );
            if pmm.get("containerPort").is_none_or(Value::is_null) {
                self.err(&format!("{pp}.containerPort"), "required");
            }
            let hport = self
                .int(&format!("{pp}.hostPort"), pmm.get("hostPort"), 0, 65535)
                .map(|n| n as u16);
            let protocol = match self
                .string(&format!("{pp}.protocol"), pmm.get("protocol"), false)
                .as_deref()
            {
                None | Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some(o) => {
                    self.err(
                        &format!("{pp}.protocol"),
                        format!(
                            "'{o}': tcp or udp (the transport; ECS names an application \
                             protocol such as http in appProtocol)"
                        ),
                    );
                    Protocol::Tcp
                }
            };
            let pname = self.string(&format!("{pp}.name"), pmm.get("name"), false);
            if let Some(c) = cport {
                let c = c as u16;
                if matches!(mode, NetworkMode::Host | NetworkMode::Awsvpc)
                    && hport.is_some_and(|h| h != 0 && h != c)
                {
                    self.err(
                        &format!("{pp}.hostPort"),
                        format!(
                            "must equal containerPort ({c}) in host and awsvpc network modes, \
                             or be left out"
                        ),
                    );
                }
                ports.push(PortMapping {
                    container_port: c,
                    host_port: hport.filter(|h| *h != 0),
                    protocol,
                    name: pname,
                });
            }
        }
        if mode == NetworkMode::None && !ports.is_empty() {
            self.err(
                &format!("{p}.portMappings"),
                "a task with network mode none publishes no ports",
            );
        }
        let essential = self
            .boolean(&format!("{p}.essential"), m.get("essential"))
            .unwrap_or(true);
        let entry_point = self.strings(&format!("{p}.entryPoint"), m.get("entryPoint"));
        let command = self.strings(&format!("{p}.command"), m.get("command"));
        let mut environment: Vec<KeyValue> = Vec::new();
        for (i, e) in self
            .array(&format!("{p}.environment"), m.get("environment"))
            .iter()
            .enumerate()
        {
            let ep = format!("{p}.environment[{i}]");
            let Some(em) = self.object(&ep, e) else {
                continue;
            };
            self.keys(&ep, em, &["name", "value"], &[], &[]);
            let n = self.string(&format!("{ep}.name"), em.get("name"), true);
            let v = self
                .string(&format!("{ep}.value"), em.get("value"), false)
                .unwrap_or_default();
            if let Some(n) = n {
                if n.is_empty() || n.contains('=') || n.contains('\0') {
                    self.err(
                        &format!("{ep}.name"),
                        "must be a non-empty name without '='",
                    );
                } else if environment.iter().any(|x| x.name == n) {
                    self.err(&format!("{ep}.name"), format!("'{n}' is set twice"));
                } else {
                    environment.push(KeyValue { name: n, value: v });
                }
            }
        }
        let working_directory = self.string(
            &format!("{p}.workingDirectory"),
            m.get("workingDirectory"),
            false,
        );
        if working_directory
            .as_deref()
            .is_some_and(|w| !w.starts_with('/'))
        {
            self.err(&format!("{p}.workingDirectory"), "must be an absolute path");
        }
        let user = self.string(&format!("{p}.user"), m.get("user"), false);
        let health_check = m
            .get("healthCheck")
            .filter(|h| !h.is_null())
            .and_then(|h| self.health(&format!("{p}.healthCheck"), h));
        let mut depends_on = Vec::new();
        for (i, d) in self
            .array(&format!("{p}.dependsOn"), m.get("dependsOn"))
            .iter()
            .enumerate()
        {
            let dp = format!("{p}.dependsOn[{i}]");
            let Some(dm) = self.object(&dp, d) else {
                continue;
            };
            self.keys(&dp, dm, &["containerName", "condition"], &[], &[]);
            let target = self.string(
                &format!("{dp}.containerName"),
                dm.get("containerName"),
                true,
            );
            let condition = match self
                .string(&format!("{dp}.condition"), dm.get("condition"), true)
                .as_deref()
            {
                Some("START") => Some(DependencyCondition::Start),
                Some("COMPLETE") => Some(DependencyCondition::Complete),
                Some("SUCCESS") => Some(DependencyCondition::Success),
                Some("HEALTHY") => Some(DependencyCondition::Healthy),
                Some(o) => {
                    self.err(
                        &format!("{dp}.condition"),
                        format!("'{o}': START, COMPLETE, SUCCESS or HEALTHY"),
                    );
                    None
                }
                None => None,
            };
            if let (Some(container_name), Some(condition)) = (target, condition) {
                depends_on.push(Dependency {
                    container_name,
                    condition,
                });
            }
        }
        let mut mount_points = Vec::new();
        for (i, mp) in self
            .array(&format!("{p}.mountPoints"), m.get("mountPoints"))
            .iter()
            .enumerate()
        {
            let mpp = format!("{p}.mountPoints[{i}]");
            let Some(mm) = self.object(&mpp, mp) else {
                continue;
            };
            self.keys(
                &mpp,
                mm,
                &["sourceVolume", "containerPath", "readOnly"],
                &[],
                &[],
            );
            let sv = self.string(&format!("{mpp}.sourceVolume"), mm.get("sourceVolume"), true);
            let cp = self.string(
                &format!("{mpp}.containerPath"),
                mm.get("containerPath"),
                true,
            );
            let ro = self
                .boolean(&format!("{mpp}.readOnly"), mm.get("readOnly"))
                .unwrap_or(false);
            if let Some(s) = &sv {
                if !volumes.contains(s) {
                    self.err(
                        &format!("{mpp}.sourceVolume"),
                        format!("no volume '{s}' in $.volumes"),
                    );
                }
            }
            if cp
                .as_deref()
                .is_some_and(|c| !c.starts_with('/') || c.split('/').any(|x| x == ".."))
            {
                self.err(
                    &format!("{mpp}.containerPath"),
                    "must be an absolute path without '..'",
                );
            }
            if let (Some(source_volume), Some(container_path)) = (sv, cp) {
                mount_points.push(MountPoint {
                    source_volume,
                    container_path,
                    read_only: ro,
                });
            }
        }
        let readonly_root_filesystem = self
            .boolean(
                &format!("{p}.readonlyRootFilesystem"),
                m.get("readonlyRootFilesystem"),
            )
            .unwrap_or(false);
        let mut ulimits = Vec::new();
        for (i, u) in self
            .array(&format!("{p}.ulimits"), m.get("ulimits"))
            .iter()
            .enumerate()
        {
            let up = format!("{p}.ulimits[{i}]");
            let Some(um) = self.object(&up, u) else {
                continue;
            };
            self.keys(&up, um, &["name", "softLimit", "hardLimit"], &[], &[]);
            let n = self.string(&format!("{up}.name"), um.get("name"), true);
            if n.as_deref().is_some_and(|n| !ULIMITS.contains(&n)) {
                self.err(
                    &format!("{up}.name"),
                    format!("unknown ulimit (one of {})", ULIMITS.join(", ")),
                );
            }
            // -1 is "unlimited" (RLIM_INFINITY), as Docker — which ECS hands ulimits to —
            // takes it: `"memlock": -1` is what Elasticsearch's guides tell ECS users to write.
            let limit = |v: i64| u64::try_from(v).unwrap_or(UNLIMITED);
            let soft = self.int(
                &format!("{up}.softLimit"),
                um.get("softLimit"),
                -1,
                i64::MAX,
            );
            let hard = self.int(
                &format!("{up}.hardLimit"),
                um.get("hardLimit"),
                -1,
                i64::MAX,
            );
            match (n, soft.map(limit), hard.map(limit)) {
                (Some(name), Some(s), Some(h)) if s <= h => {
                    if let Some(why) = ulimit_problem(&name, s, h) {
                        self.err(&format!("{up}.softLimit"), format!("{name}={s}: {why}"));
                    }
                    ulimits.push(Ulimit {
                        name,
                        soft_limit: s,
                        hard_limit: h,
                    })
                }
                (_, Some(_), Some(_)) => self.err(&format!("{up}.softLimit"), "exceeds hardLimit"),
                _ => {
                    if um.get("softLimit").is_none() || um.get("hardLimit").is_none() {
                        self.err(&up, "softLimit and hardLimit are required");
                    }
                }
            }
        }
        let (mut capabilities_add, mut capabilities_drop, mut tmpfs) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut init_process_enabled = false;
        if let Some(lp) = m.get("linuxParameters").filter(|l| !l.is_null()) {
            let lpp = format!("{p}.linuxParameters");
            if let Some(lm) = self.object(&lpp, lp) {
                self.keys(
                    &lpp,
                    lm,
                    &["capabilities", "initProcessEnabled", "tmpfs"],
                    &[],
                    &["devices", "sharedMemorySize", "maxSwap", "swappiness"],
                );
                if let Some(c) = lm.get("capabilities").filter(|c| !c.is_null()) {
                    let cp = format!("{lpp}.capabilities");
                    if let Some(cm) = self.object(&cp, c) {
                        self.keys(&cp, cm, &["add", "drop"], &[], &[]);
                        capabilities_add = self
                            .strings(&format!("{cp}.add"), cm.get("add"))
                            .unwrap_or_default();
                        capabilities_drop = self
                            .strings(&format!("{cp}.drop"), cm.get("drop"))
                            .unwrap_or_default();
                    }
                }
                init_process_enabled = self
                    .boolean(
                        &format!("{lpp}.initProcessEnabled"),
                        lm.get("initProcessEnabled"),
                    )
                    .unwrap_or(false);
                for (i, t) in self
                    .array(&format!("{lpp}.tmpfs"), lm.get("tmpfs"))
                    .iter()
                    .enumerate()
                {
                    let tp = format!("{lpp}.tmpfs[{i}]");
                    let Some(tm) = self.object(&tp, t) else {
                        continue;
                    };
                    self.keys(
                        &tp,
                        tm,
                        &["containerPath", "size", "mountOptions"],
                        &[],
                        &[],
                    );
                    let path = self.string(
                        &format!("{tp}.containerPath"),
                        tm.get("containerPath"),
                        true,
                    );
                    let size = self.int(&format!("{tp}.size"), tm.get("size"), 1, 1 << 20);
                    if tm.get("size").is_none() {
                        self.err(&format!("{tp}.size"), "required");
                    }
                    let options_path = format!("{tp}.mountOptions");
                    let options = self
                        .strings(&options_path, tm.get("mountOptions"))
                        .unwrap_or_default();
                    let ignored: Vec<&String> = options
                        .iter()
                        .filter(|o| !TMPFS_OPTIONS.contains(&o.as_str()))
                        .collect();
                    if !ignored.is_empty() {
                        self.warnings.push(format!(
                            "{options_path}: {} ignored (not supported by Flotilla yet): a tmpfs \
                             is mounted {}",
                            ignored
                                .iter()
                                .map(|o| format!("'{o}'"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            TMPFS_OPTIONS.join(",")
                        ));
                    }
                    if let (Some(container_path), Some(size)) = (path, size) {
                        tmpfs.push(Tmpfs {
                            container_path,
                            size: size as u64,
                        });
                    }
                }
            }
        }
        let stop_timeout = self
            .int(&format!("{p}.stopTimeout"), m.get("stopTimeout"), 2, 120)
            .map(|n| n as u32);
        let privileged = self
            .boolean(&format!("{p}.privileged"), m.get("privileged"))
            .unwrap_or(false);
        let hostname = self.string(&format!("{p}.hostname"), m.get("hostname"), false);
        let restart_policy = m
            .get("restartPolicy")
            .filter(|r| !r.is_null())
            .and_then(|r| self.restart_policy(&format!("{p}.restartPolicy"), r));
        let secrets = self.secrets(p, m.get("secrets"), &environment);
        let configs = self.configs(p, m.get("configs"));
        Some(ContainerDefinition {
            name: name?,
            image: image?,
            cpu,
            memory,
            memory_reservation: reservation,
            port_mappings: ports,
            essential,
            entry_point,
            command,
            environment,
            working_directory,
            user,
            health_check,
            depends_on,
            mount_points,
            readonly_root_filesystem,
            ulimits,
            capabilities_add,
            init_process_enabled,
            capabilities_drop,
            tmpfs,
            stop_timeout,
            privileged,
            hostname,
            restart_policy,
            secrets,
            configs,
        })
    }

    /// A file mode: a string of octal digits, or a number that is the mode's value.
    fn mode(&mut self, path: &str, v: Option<&Value>) -> Option<u32> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => match u32::from_str_radix(t.trim(), 8) {
                Ok(m) if m <= 0o777 && t.trim().bytes().all(|b| b.is_ascii_digit()) => Some(m),
                _ => {
                    self.err(
                        path,
                        format!("'{t}': an octal mode from \"0000\" to \"0777\""),
                    );
                    None
                }
            },
            other => self.int(path, other, 0, 0o777).map(|m| m as u32),
        }
    }

    /// A container's `configs` (a Flotilla extension): each names a config and where it goes.
    fn configs(&mut self, p: &str, v: Option<&Value>) -> Vec<ContainerConfigFile> {
        let mut out: Vec<ContainerConfigFile> = Vec::new();
        for (i, e) in self.array(&format!("{p}.configs"), v).iter().enumerate() {
            let cp = format!("{p}.configs[{i}]");
            let Some(cm) = self.object(&cp, e) else {
                continue;
            };
            self.keys(
                &cp,
                cm,
                &["source", "version", "target", "mode", "uid", "gid"],
                &[],
                &[],
            );
            let source = self.string(&format!("{cp}.source"), cm.get("source"), true);
            if let Some(why) = source.as_deref().and_then(crate::secrets::name_problem) {
                self.err(&format!("{cp}.source"), why);
            }
            let version = self
                .int(
                    &format!("{cp}.version"),
                    cm.get("version"),
                    1,
                    u32::MAX.into(),
                )
                .map(|n| n as u32);
            let target = self
                .string(&format!("{cp}.target"), cm.get("target"), false)
                .or_else(|| source.as_ref().map(|s| format!("/{s}")));
            if let Some(t) = &target {
                if let Some(why) = config_target_problem(t) {
                    self.err(&format!("{cp}.target"), format!("'{t}': {why}"));
                } else if out.iter().any(|c| &c.target == t) {
                    self.err(&format!("{cp}.target"), format!("'{t}' is set twice"));
                } else if let Some(o) = out.iter().find(|c| {
                    c.target.starts_with(&format!("{t}/"))
                        || t.starts_with(&format!("{}/", c.target))
                }) {
                    self.err(
                        &format!("{cp}.target"),
                        format!(
                            "'{t}' and '{}': one config cannot be inside another",
                            o.target
                        ),
                    );
                }
            }
            let mode = self.mode(&format!("{cp}.mode"), cm.get("mode"));
            let uid = self
                .int(&format!("{cp}.uid"), cm.get("uid"), 0, MAX_ID)
                .map(|n| n as u32);
            let gid = self
                .int(&format!("{cp}.gid"), cm.get("gid"), 0, MAX_ID)
                .map(|n| n as u32);
            if let (Some(source), Some(target)) = (source, target) {
                out.push(ContainerConfigFile {
                    source,
                    version,
                    target,
                    mode,
                    uid,
                    gid,
                });
            }
        }
        out
    }

    /// A container's `secrets`: Flotilla's references checked, AWS ones (ARNs) warned about
    /// and left out.
    fn secrets(
        &mut self,
        p: &str,
        v: Option<&Value>,
        environment: &[KeyValue],
    ) -> Vec<ContainerSecret> {
        let mut out: Vec<ContainerSecret> = Vec::new();
        let mut aws = Vec::new();
        for (i, e) in self.array(&format!("{p}.secrets"), v).iter().enumerate() {
            let sp = format!("{p}.secrets[{i}]");
            let Some(sm) = self.object(&sp, e) else {
                continue;
            };
            self.keys(
                &sp,
                sm,
                &["name", "valueFrom", "environment", "mode", "uid", "gid"],
                &[],
                &[],
            );
            let name = self.string(&format!("{sp}.name"), sm.get("name"), true);
            if let Some(n) = &name {
                let file_name = !n.is_empty()
                    && n.len() <= 255
                    && n != "."
                    && n != ".."
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !file_name {
                    self.err(
                        &format!("{sp}.name"),
                        "use 1-255 letters, digits, '_', '-' or '.' (it names the variable and \
                         the file /run/secrets/NAME)",
                    );
                } else if out.iter().any(|x| &x.name == n) {
                    self.err(&format!("{sp}.name"), format!("'{n}' is set twice"));
                } else if environment.iter().any(|x| &x.name == n) {
                    self.err(
                        &format!("{sp}.name"),
                        format!("'{n}' is also set in environment"),
                    );
                }
            }
            let value_from = self.string(&format!("{sp}.valueFrom"), sm.get("valueFrom"), true);
            let reference = value_from
                .as_deref()
                .map(|v| (v, crate::secrets::SecretRef::parse(v)));
            match reference {
                Some((_, Some(Err(why)))) => self.err(&format!("{sp}.valueFrom"), why),
                Some((v, None)) if !v.starts_with("arn:") => {
                    self.warnings.push(format!(
                        "{sp}.valueFrom: ignored: '{v}' is no Flotilla reference (an SSM \
                         parameter name only means something on AWS); did you mean \
                         `flotilla:{v}`?"
                    ));
                    continue;
                }
                Some((_, None)) => {
                    aws.push(format!("[{i}]"));
                    continue;
                }
                _ => {}
            }
            let environment = self
                .boolean(&format!("{sp}.environment"), sm.get("environment"))
                .unwrap_or(true);
            let mode = self.mode(&format!("{sp}.mode"), sm.get("mode"));
            let uid = self
                .int(&format!("{sp}.uid"), sm.get("uid"), 0, MAX_ID)
                .map(|n| n as u32);
            let gid = self
                .int(&format!("{sp}.gid"), sm.get("gid"), 0, MAX_ID)
                .map(|n| n as u32);
            if let (Some(name), Some(value_from)) = (name, value_from) {
                out.push(ContainerSecret {
                    name,
                    value_from,
                    environment,
                    mode,
                    uid,
                    gid,
                });
            }
        }
        if !aws.is_empty() {
            self.warnings.push(format!(
                "{p}.secrets{}: ignored (an AWS Secrets Manager or SSM reference only means \
                 something on AWS; a Flotilla secret is `flotilla:NAME`, made with `flotilla \
                 secret create`)",
                aws.join(", ")
            ));
        }
        out
    }

    fn restart_policy(&mut self, p: &str, v: &Value) -> Option<RestartPolicy> {
        let m = self.object(p, v)?;
        self.keys(
            p,
            m,
            &["enabled", "ignoredExitCodes", "restartAttemptPeriod"],
            &[],
            &[],
        );
        let enabled = self.boolean(&format!("{p}.enabled"), m.get("enabled"));
        if enabled.is_none() {
            self.err(&format!("{p}.enabled"), "required");
        }
        let mut ignored_exit_codes = Vec::new();
        let codes = self.array(&format!("{p}.ignoredExitCodes"), m.get("ignoredExitCodes"));
        if codes.len() > 50 {
            self.err(&format!("{p}.ignoredExitCodes"), "at most 50 exit codes");
        }
        for (i, c) in codes.iter().enumerate() {
            let cp = format!("{p}.ignoredExitCodes[{i}]");
            if let Some(n) = self.int(&cp, Some(c), 0, 255) {
                ignored_exit_codes.push(n as i32);
            }
        }
        let restart_attempt_period = self
            .int(
                &format!("{p}.restartAttemptPeriod"),
                m.get("restartAttemptPeriod"),
                60,
                1800,
            )
            .unwrap_or(300) as u32;
        Some(RestartPolicy {
            enabled: enabled?,
            ignored_exit_codes,
            restart_attempt_period,
        })
    }

    fn health(&mut self, p: &str, v: &Value) -> Option<HealthCheck> {
        let m = self.object(p, v)?;
        self.keys(
            p,
            m,
            &["command", "interval", "timeout", "retries", "startPeriod"],
            &[],
            &[],
        );
        let command = self.strings(&format!("{p}.command"), m.get("command"));
        match command.as_deref() {
            None => self.err(&format!("{p}.command"), "required"),
            Some([first, _, ..]) if first == "CMD" || first == "CMD-SHELL" => {}
            Some([first, target]) if first == "HTTP" || first == "TCP" => {
                let probe = HealthCheck {
                    command: vec![first.clone(), target.clone()],
                    interval: 0,
                    timeout: 0,
                    retries: 0,
                    start_period: 0,
                };
                if let Err(e) = probe.probe().unwrap_or(Ok(String::new())) {
                    self.err(&format!("{p}.command[1]"), e);
                }
            }
            Some(_) => self.err(
                &format!("{p}.command"),
                "starts with \"CMD\" or \"CMD-SHELL\" followed by the command, or is \
                 [\"HTTP\", \"http://localhost:PORT/PATH\"] or [\"TCP\", \"PORT\"]",
            ),
        }
        let interval = self
            .int(&format!("{p}.interval"), m.get("interval"), 5, 300)
            .unwrap_or(30) as u32;
        let timeout = self
            .int(&format!("{p}.timeout"), m.get("timeout"), 2, 60)
            .unwrap_or(5) as u32;
        let retries = self
            .int(&format!("{p}.retries"), m.get("retries"), 1, 10)
            .unwrap_or(3) as u32;
        let start_period = self
            .int(&format!("{p}.startPeriod"), m.get("startPeriod"), 0, 300)
            .unwrap_or(0) as u32;
        Some(HealthCheck {
            command: command?,
            interval,
            timeout,
            retries,
            start_period,
        })
    }

    /// Task-level `cpu` and `memory` bound the task's containers as ECS has it (see `cpu` and
    /// `memory` of
    /// <https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html>):
    /// the task has at least the memory one container needs, no container's hard limit is above
    /// the task's, and what the containers reserve (`memoryReservation`, else `memory`; `cpu`)
    /// adds up to no more than the task's.
    fn task_limits(
        &mut self,
        cpu: Option<u32>,
        memory: Option<u64>,
        containers: &[(usize, ContainerDefinition)],
    ) {
        let sum = |parts: &[u64]| {
            let total: u64 = parts.iter().sum();
            if parts.len() > 1 {
                let each: Vec<String> = parts.iter().map(u64::to_string).collect();
                format!("{} = {total}", each.join(" + "))
            } else {
                total.to_string()
            }
        };
        if let Some(task) = memory {
            if task < MIN_CONTAINER_MEMORY {
                self.err(
                    "$.memory",
                    format!(
                        "{task} MiB is less than the {MIN_CONTAINER_MEMORY} MiB one container \
                         needs at least"
                    ),
                );
                return;
            }
            let mut over = false;
            for (i, c) in containers {
                if let Some(hard) = c.memory.filter(|m| *m > task) {
                    self.err(
                        &format!("$.containerDefinitions[{i}].memory"),
                        format!("{hard} MiB is more than the task's memory ({task} MiB)"),
                    );
                    over = true;
                }
            }
            let reserved: Vec<u64> = containers
                .iter()
                .filter_map(|(_, c)| c.memory_reservation.or(c.memory))
                .collect();
            // One problem each: a container above the task is above it whatever the sum.
            if !over && reserved.iter().sum::<u64>() > task {
                self.err(
                    "$.memory",
                    format!(
                        "{task} MiB is less than its containers reserve ({} MiB, each its \
                         memoryReservation, else its memory)",
                        sum(&reserved)
                    ),
                );
            }
        }
        if let Some(task) = cpu {
            let units: Vec<u64> = containers
                .iter()
                .map(|(_, c)| u64::from(c.cpu))
                .filter(|u| *u > 0)
                .collect();
            if units.iter().sum::<u64>() > u64::from(task) {
                self.err(
                    "$.cpu",
                    format!(
                        "{task} CPU units is less than its containers' cpu ({})",
                        sum(&units)
                    ),
                );
            }
        }
    }

    /// Dependencies name other containers of the task, `HEALTHY` needs a health check there,
    /// and there is no cycle.
    /// Every container of a task shares its network namespace, and a bridge task's static host
    /// ports are the node's: a port (with its protocol) taken twice in one task cannot be bound
    /// twice. Checked once each mapping is valid (so the paths are the file's).
    fn port_conflicts(&mut self, containers: &[(usize, ContainerDefinition)], mode: NetworkMode) {
        if !self.errors.is_empty() {
            return;
        }
        let mut container_ports: HashMap<(u16, Protocol), String> = HashMap::new();
        let mut host_ports: HashMap<(u16, Protocol), String> = HashMap::new();
        for (i, c) in containers {
            for (j, m) in c.port_mappings.iter().enumerate() {
                let p = format!("$.containerDefinitions[{i}].portMappings[{j}]");
                let proto = if m.protocol == Protocol::Udp {
                    "udp"
                } else {
                    "tcp"
                };
                let key = (m.container_port, m.protocol);
                match container_ports.get(&key) {
                    Some(first) => self.err(
                        &format!("{p}.containerPort"),
                        format!(
                            "{}/{proto} is already {first}.containerPort (the task's containers share one network)",
                            m.container_port
                        ),
                    ),
                    None => {
                        container_ports.insert(key, p.clone());
                    }
                }
                let Some(h) = m.host_port.filter(|_| mode == NetworkMode::Bridge) else {
                    continue;
                };
                match host_ports.get(&(h, m.protocol)) {
                    Some(first) => self.err(
                        &format!("{p}.hostPort"),
                        format!("{h}/{proto} is already {first}.hostPort"),
                    ),
                    None => {
                        host_ports.insert((h, m.protocol), p);
                    }
                }
            }
        }
    }

    fn dependencies(&mut self, containers: &[(usize, ContainerDefinition)]) {
        let by_name: BTreeMap<&str, &ContainerDefinition> = containers
            .iter()
            .map(|(_, c)| (c.name.as_str(), c))
            .collect();
        for (i, c) in containers {
            for (j, d) in c.depends_on.iter().enumerate() {
                let path = format!("$.containerDefinitions[{i}].dependsOn[{j}].containerName");
                match by_name.get(d.container_name.as_str()) {
                    None => self.err(
                        &path,
                        format!("no container '{}' in this task", d.container_name),
                    ),
                    Some(_) if d.container_name == c.name => {
                        self.err(&path, "a container cannot depend on itself")
                    }
                    Some(t)
                        if d.condition == DependencyCondition::Healthy
                            && t.health_check.is_none() =>
                    {
                        self.err(
                            &path,
                            format!("HEALTHY needs a healthCheck on '{}'", t.name),
                        )
                    }
                    // ECS refuses it too: the exit waited for would stop the task.
                    Some(t)
                        if t.essential
                            && matches!(
                                d.condition,
                                DependencyCondition::Complete | DependencyCondition::Success
                            ) =>
                    {
                        let condition = if d.condition == DependencyCondition::Success {
                            "SUCCESS"
                        } else {
                            "COMPLETE"
                        };
                        self.err(
                            &format!("$.containerDefinitions[{i}].dependsOn[{j}].condition"),
                            format!(
                                "{condition} waits for '{}' to exit, but it is essential (the \
                                 default), so its exit stops the task: give '{}' \
                                 \"essential\": false",
                                t.name, t.name
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        // Cycle check by depth-first search over names.
        fn visit<'a>(
            n: &'a str,
            by_name: &BTreeMap<&'a str, &'a ContainerDefinition>,
            state: &mut BTreeMap<&'a str, u8>,
        ) -> bool {
            match state.get(n) {
                Some(1) => return true,
                Some(2) => return false,
                _ => {}
            }
            state.insert(n, 1);
            if let Some(c) = by_name.get(n) {
                for d in &c.depends_on {
                    if d.container_name != c.name && visit(&d.container_name, by_name, state) {
                        return true;
                    }
                }
            }
            state.insert(n, 2);
            false
        }
        let mut state = BTreeMap::new();
        for name in by_name.keys() {
            if visit(name, &by_name, &mut state) {
                self.err("$.containerDefinitions", "dependsOn forms a cycle");
                break;
            }
        }
    }
}

/// What a JSON value is, for error messages ("a string", "an array" …).
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"{
      "family": "web",
      "taskRoleArn": "arn:aws:iam::1:role/x",
      "networkMode": "bridge",
      "cpu": "0.5 vCPU",
      "memory": "1 GB",
      "volumes": [{"name": "data", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true}}],
      "containerDefinitions": [
        {
          "name": "app", "image": "registry.local/app:1", "cpu": 256, "memory": 128,
          "memoryReservation": 64, "essential": true,
          "portMappings": [{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
          "environment": [{"name": "MODE", "value": "prod"}],
          "mountPoints": [{"sourceVolume": "data", "containerPath": "/data"}],
          "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}],
          "logConfiguration": {"logDriver": "awslogs"},
          "restartPolicy": {"enabled": true},
          "linuxParameters": {"capabilities": {"add": ["NET_ADMIN"]}},
          "stopTimeout": 30
        },
        {
          "name": "db", "image": "postgres", "memoryReservation": 256, "essential": false,
          "healthCheck": {"command": ["CMD-SHELL", "pg_isready"], "interval": 10}
        }
      ],
      "tags": [{"key": "team", "value": "pos"}]
    }"#;

    #[test]
    fn an_ecs_file_parses_with_warnings_for_aws_only_fields() {
        let p = parse(WEB).expect("valid");
        let d = &p.definition;
        assert_eq!((d.cpu, d.memory), (Some(512), Some(1024)));
        assert_eq!(d.container_definitions.len(), 2);
        assert!(d.volumes[0].shared);
        let app = &d.container_definitions[0];
        assert_eq!(app.port_mappings[0].host_port, None);
        assert_eq!(app.capabilities_add, ["NET_ADMIN"]);
        assert!(!d.container_definitions[1].essential);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(
            app.restart_policy,
            Some(RestartPolicy {
                enabled: true,
                ignored_exit_codes: Vec::new(),
                restart_attempt_period: 300
            })
        );
        assert!(p.warnings.iter().any(|w| w.starts_with("$.taskRoleArn")));
        assert!(p
            .warnings
            .iter()
            .any(|w| w.starts_with("$.containerDefinitions[0].logConfiguration")));
        // round trip through its own serialization
        let again = serde_json::to_string(d).expect("json");
        let back: TaskDefinition = serde_json::from_str(&again).expect("back");
        assert_eq!(&back, d);
    }

    #[test]
    fn yaml_is_the_same_shape() {
        let y = "family: web\ncontainerDefinitions:\n  - name: app\n    image: busybox\n    memory: 64\n    command: [sh, -c, 'echo hi']\n";
        let p = parse(y).expect("yaml");
        assert_eq!(
            p.definition.container_definitions[0].command.as_deref(),
            Some(&["sh".to_string(), "-c".into(), "echo hi".into()][..])
        );
    }

    #[test]
    fn every_problem_is_named_by_its_path_at_once() {
        let bad = r#"{
          "family": "bad family",
          "networkMode": "overlay",
          "containerDefinitions": [
            {"name": "a", "image": "x", "memory": -5, "cpu": "lots", "essential": "yes"},
            {"name": "a", "memory": 64, "portMappings": [{"containerPort": 70000}], "bogus": 1},
            {"name": "c", "image": "x", "memory": 64, "dependsOn": [{"containerName": "zz", "condition": "START"}],
             "mountPoints": [{"sourceVolume": "nope", "containerPath": "rel"}]}
          ]
        }"#;
        let errs = parse(bad).expect_err("invalid");
        let all = errs.join("\n");
        for path in [
            "$.family:",
            "$.networkMode:",
            "$.containerDefinitions[0].memory:",
            "$.containerDefinitions[0].cpu:",
            "$.containerDefinitions[0].essential:",
            "$.containerDefinitions[1].image: required",
            "$.containerDefinitions[1].portMappings[0].containerPort:",
            "$.containerDefinitions[1].bogus: unknown field",
            "$.containerDefinitions[1].name: duplicate container name",
            "$.containerDefinitions[2].dependsOn[0].containerName:",
            "$.containerDefinitions[2].mountPoints[0].sourceVolume:",
            "$.containerDefinitions[2].mountPoints[0].containerPath:",
        ] {
            assert!(all.contains(path), "missing {path} in:\n{all}");
        }
    }

    #[test]
    fn minus_one_is_an_unlimited_ulimit_and_prints_back_as_minus_one() {
        let text = r#"{"family":"es","containerDefinitions":[{"name":"es","image":"x","memory":64,
            "ulimits":[{"name":"memlock","softLimit":-1,"hardLimit":-1},
                       {"name":"nofile","softLimit":65535,"hardLimit":"-1"}]}]}"#;
        let d = parse(text).expect("valid").definition;
        let u = &d.container_definitions[0].ulimits;
        assert_eq!((u[0].soft_limit, u[0].hard_limit), (UNLIMITED, UNLIMITED));
        assert_eq!((u[1].soft_limit, u[1].hard_limit), (65535, UNLIMITED));
        // What inspect prints registers again, the same.
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(
            json["containerDefinitions"][0]["ulimits"][0]["softLimit"],
            -1
        );
        let again: TaskDefinition = serde_json::from_value(json).expect("back");
        assert_eq!(again, d);
        // Only -1 means unlimited; soft above hard is still refused.
        for bad in [
            r#"{"name":"core","softLimit":-2,"hardLimit":0}"#,
            r#"{"name":"core","softLimit":-1,"hardLimit":10}"#,
        ] {
            let t = format!(
                r#"{{"family":"f","containerDefinitions":[{{"name":"a","image":"x","memory":64,"ulimits":[{bad}]}}]}}"#
            );
            assert!(parse(&t).is_err(), "{bad}");
        }
    }

    #[test]
    fn ulimit_values_that_kill_or_are_not_numbers_are_refused_by_name() {
        let with = |u: &str| {
            format!(
                r#"{{"family":"f","containerDefinitions":[{{"name":"a","image":"x","memory":64,"ulimits":[{u}]}}]}}"#
            )
        };
        for (u, want) in [
            (
                r#"{"name":"cpu","softLimit":0,"hardLimit":0}"#,
                "$.containerDefinitions[0].ulimits[0].softLimit: cpu=0: a CPU-time limit of 0 \
                 seconds kills",
            ),
            (
                r#"{"name":"nofile","softLimit":"+5","hardLimit":10}"#,
                "$.containerDefinitions[0].ulimits[0].softLimit: expected an integer, found the \
                 string '+5' (write it 5",
            ),
            (
                r#"{"name":"nofile","softLimit":"05","hardLimit":10}"#,
                "$.containerDefinitions[0].ulimits[0].softLimit: expected an integer, found the \
                 string '05' (write it 5",
            ),
        ] {
            let problems = parse(&with(u)).expect_err(u);
            assert_eq!(problems.len(), 1, "{u}: {problems:?}");
            assert!(problems[0].starts_with(want), "{u}: {problems:?}");
        }
        // A CPU limit of a second or more, and numbers as strings written plainly, register.
        parse(&with(r#"{"name":"cpu","softLimit":1,"hardLimit":"2"}"#)).expect("cpu=1:2");
    }

    #[test]
    fn counts_are_read_only_as_written_plainly() {
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("1024"), Ok(1024));
        for bad in [
            "", "+5", "-5", " 5", "5 ", "05", "00", "5.0", "1,024", "1_024", "0x10", "五",
        ] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_count("+5").expect_err("sign"),
            "'+5' is not a count (decimal digits only: no sign, space, point or separator)"
        );
        assert_eq!(
            parse_count("007").expect_err("zero"),
            "'007' has a leading zero (write 7)"
        );
        assert!(parse_count("18446744073709551616")
            .expect_err("big")
            .contains("too large"));
        assert!(ulimit_problem("cpu", 0, 5).is_some_and(|w| w.contains("0 seconds")));
        assert!(ulimit_problem("cpu", 1, 1).is_none());
        assert!(ulimit_problem("core", 0, 0).is_none());
        assert_eq!(
            ulimit_problem("nofile", 10, 5).as_deref(),
            Some("the soft limit (10) is above the hard limit (5)")
        );
    }

    #[test]
    fn structural_rules() {
        let one = |c: &str| format!(r#"{{"family":"f","containerDefinitions":[{c}]}}"#);
        assert!(
            parse(&one(r#"{"name":"a","image":"x"}"#)).is_err(),
            "memory is required somewhere"
        );
        assert!(parse(&one(
            r#"{"name":"a","image":"x","memory":64,"essential":false}"#
        ))
        .is_err());
        assert!(parse(&one(
            r#"{"name":"a","image":"x","memory":64,"memoryReservation":128}"#
        ))
        .is_err());
        let cyc = r#"{"family":"f","containerDefinitions":[
            {"name":"a","image":"x","memory":64,"dependsOn":[{"containerName":"b","condition":"START"}]},
            {"name":"b","image":"x","memory":64,"dependsOn":[{"containerName":"a","condition":"START"}]}]}"#;
        assert!(parse(cyc).expect_err("cycle").join("").contains("cycle"));
        let host = r#"{"family":"f","networkMode":"host","containerDefinitions":[
            {"name":"a","image":"x","memory":64,"portMappings":[{"containerPort":80,"hostPort":8080}]}]}"#;
        assert!(parse(host).is_err());
        assert!(parse("[]").is_err());
        assert!(parse("").is_err());
        assert!(parse("family: [").is_err());
    }

    #[test]
    fn ports_taken_twice_in_one_task_are_refused() {
        let task = |mode: &str, containers: &str| {
            format!(
                r#"{{"family":"f","networkMode":"{mode}","containerDefinitions":[{containers}]}}"#
            )
        };
        let c = |name: &str, essential: bool, ports: &str| {
            format!(
                r#"{{"name":"{name}","image":"x","memory":8,"essential":{essential},"portMappings":[{ports}]}}"#
            )
        };
        for (text, want) in [
            (
                task("bridge", &c("a", true, r#"{"containerPort":80,"hostPort":8080},{"containerPort":81,"hostPort":8080}"#)),
                "$.containerDefinitions[0].portMappings[1].hostPort: 8080/tcp is already $.containerDefinitions[0].portMappings[0].hostPort",
            ),
            (
                task("host", &format!("{},{}", c("a", true, r#"{"containerPort":80}"#), c("b", false, r#"{"containerPort":80}"#))),
                "$.containerDefinitions[1].portMappings[0].containerPort: 80/tcp is already $.containerDefinitions[0].portMappings[0].containerPort",
            ),
            (
                task("awsvpc", &c("a", true, r#"{"containerPort":53,"protocol":"udp"},{"containerPort":53,"protocol":"udp"}"#)),
                "$.containerDefinitions[0].portMappings[1].containerPort: 53/udp is already",
            ),
        ] {
            let problems = parse(&text).expect_err(&text);
            assert!(problems.iter().any(|p| p.starts_with(want)), "{want}: {problems:?}");
        }
        // The same port over TCP and UDP is fine.
        parse(&task("bridge", &c("a", true, r#"{"containerPort":53,"hostPort":53},{"containerPort":53,"hostPort":53,"protocol":"udp"}"#)))
            .expect("tcp and udp");
    }

    #[test]
    fn task_amounts_that_round_to_nothing_are_refused() {
        let problems = parse(
            r#"{"family":"f","cpu":"0.0001 vCPU","memory":"0.0004","containerDefinitions":[{"name":"a","image":"x"}]}"#,
        )
        .expect_err("no cpu, no memory");
        for want in [
            "$.cpu: '0.0001 vCPU' is not a positive amount",
            "$.memory: '0.0004' is not a positive amount",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want}: {problems:?}"
            );
        }
        let d = parse(
            r#"{"family":"f","cpu":"0.125 vCPU","memory":"0.006 GB","containerDefinitions":[{"name":"a","image":"x"}]}"#,
        )
        .expect("rounds to whole units");
        assert_eq!(
            (d.definition.cpu, d.definition.memory),
            (Some(128), Some(6))
        );
    }

    #[test]
    fn task_cpu_is_bounded_as_ecs_bounds_it_for_ec2_and_external_instances() {
        let task = |cpu: &str| {
            format!(
                r#"{{"family":"f","cpu":{cpu},"containerDefinitions":[{{"name":"a","image":"x","memory":64}}]}}"#
            )
        };
        for cpu in [
            r#""1""#,
            "1",
            "127",
            r#""0.1 vCPU""#,
            "196609",
            r#""193 vCPU""#,
        ] {
            let problems = parse(&task(cpu)).expect_err(cpu);
            assert_eq!(problems.len(), 1, "{cpu}: {problems:?}");
            assert!(
                problems[0].starts_with("$.cpu: '")
                    && problems[0].ends_with(
                        "' is outside the task cpu ECS takes for EC2 and external instances: \
                         128 to 196608 CPU units (0.125 to 192 vCPU)"
                    ),
                "{cpu}: {problems:?}"
            );
        }
        for (cpu, want) in [
            ("128", 128),
            (r#""0.125 vCPU""#, 128),
            (r#""192 vCPU""#, 196_608),
        ] {
            let p = parse(&task(cpu)).expect(cpu);
            assert_eq!(p.definition.cpu, Some(want), "{cpu}");
        }
        // Memory has its own bounds, named with it.
        let problems = parse(
            r#"{"family":"f","memory":"4000 GB","containerDefinitions":[{"name":"a","image":"x"}]}"#,
        )
        .expect_err("too much");
        assert_eq!(
            problems,
            ["$.memory: '4000 GB' is outside the task memory Flotilla takes: 6 to 4000000 MiB"]
        );
    }

    #[test]
    fn no_input_makes_it_panic() {
        // Mutations of a valid file: every value replaced by every kind of value.
        let base: Value = serde_json::from_str(WEB).expect("json");
        let replacements = [
            Value::Null,
            Value::Bool(true),
            serde_json::json!(-1),
            serde_json::json!(1e300),
            serde_json::json!(u64::MAX),
            serde_json::json!(""),
            serde_json::json!("x".repeat(5000)),
            serde_json::json!([]),
            serde_json::json!([null, 1, "a", {}]),
            serde_json::json!({}),
        ];
        fn paths(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(at.clone());
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        let mut p = at.clone();
                        p.push(k.clone());
                        paths(x, p, out);
                    }
                }
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        let mut p = at.clone();
                        p.push(i.to_string());
                        paths(x, p, out);
                    }
                }
                _ => {}
            }
        }
        let mut all = Vec::new();
        paths(&base, Vec::new(), &mut all);
        let mut tried = 0;
        for path in all {
            for r in &replacements {
                let mut v = base.clone();
                let mut cur = &mut v;
                for seg in &path {
                    cur = match cur {
                        Value::Object(m) => m.get_mut(seg).expect("key"),
                        Value::Array(a) => &mut a[seg.parse::<usize>().expect("index")],
                        _ => unreachable!(),
                    };
                }
                *cur = r.clone();
                let _ = parse(&v.to_string());
                tried += 1;
            }
        }
        assert!(tried > 500, "{tried}");
        for junk in [
            "{",
            "}",
            "\u{0}",
            "- - -",
            "{\"family\": 1e999}",
            "a: b: c",
            "&a [*a, *a]",
        ] {
            let _ = parse(junk);
        }
    }

    #[test]
    fn placement_expressions_are_checked_where_they_are_written() {
        let text = r#"{"family":"f","containerDefinitions":[{"name":"a","image":"x","memory":64}],
            "placementConstraints":[
              {"type":"memberOf","expression":"attribute:site == store-12"},
              {"type":"memberOf","expression":"attribute:site === x"}]}"#;
        let problems = parse(text).expect_err("bad expression");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("$.placementConstraints[1].expression: 'attribute:site === x': at 17"),
            "{problems:?}"
        );
    }

    #[test]
    fn what_ecs_tooling_writes_is_read_with_one_warning_per_kind() {
        let text = r#"{"family":"f","containerDefinitions":[
            {"name":"a","image":"x","cpu":"10","memory":"64","essential":"true",
             "portMappings":[{"containerPort":"80","hostPort":"8080"}]},
            {"name":"b","image":"x","memory":" 32 ","essential":"false","readonlyRootFilesystem":"true"}]}"#;
        let p = parse(text).expect("read leniently");
        let [a, b] = &p.definition.container_definitions[..] else {
            panic!("two containers")
        };
        assert_eq!((a.cpu, a.memory, a.essential), (10, Some(64), true));
        assert_eq!(
            (
                a.port_mappings[0].container_port,
                a.port_mappings[0].host_port
            ),
            (80, Some(8080))
        );
        assert_eq!(
            (b.memory, b.essential, b.readonly_root_filesystem),
            (Some(32), false, true)
        );
        assert_eq!(
            p.warnings,
            [
                "$.containerDefinitions[0].cpu, $.containerDefinitions[0].memory, \
                 $.containerDefinitions[0].portMappings[0].containerPort, \
                 $.containerDefinitions[0].portMappings[0].hostPort, \
                 $.containerDefinitions[1].memory: numbers written as strings, read as numbers \
                 (ECS's API wants JSON numbers)",
                "$.containerDefinitions[0].essential, $.containerDefinitions[1].essential, \
                 $.containerDefinitions[1].readonlyRootFilesystem: booleans written as strings, \
                 read as true or false (ECS's API wants JSON booleans)",
            ]
        );
        // Strings that are not numbers or booleans are still refused, by path.
        let problems = parse(
            r#"{"family":"f","containerDefinitions":[{"name":"a","image":"x","memory":"lots","essential":"yes"}]}"#,
        )
        .expect_err("not numbers");
        assert_eq!(
            problems,
            [
                "$.containerDefinitions[0].memory: expected an integer, found the string 'lots'",
                "$.containerDefinitions[0].essential: expected true or false, found a string",
            ]
        );
    }

    #[test]
    fn a_misspelled_field_names_the_one_it_likely_is_at_every_level() {
        let problems = parse(
            r#"{"family":"web","containerDefintions":[],"containerDefinitions":[{"name":"a",
            "image":"x","memoryReservaton":64,"portMapping":[],"bogus":1,
            "portMappings":[{"containerPrt":80}],"logConfiguraton":{},
            "healthCheck":{"command":["true"],"intervall":5}}]}"#,
        )
        .expect_err("misspelled");
        // The fields it then lacks are said too; here only the unknown ones count.
        let unknown: Vec<&String> = problems
            .iter()
            .filter(|p| p.contains("unknown field"))
            .collect();
        assert_eq!(
            unknown,
            [
                "$.containerDefintions: unknown field (did you mean 'containerDefinitions'?)",
                "$.containerDefinitions[0].bogus: unknown field",
                "$.containerDefinitions[0].logConfiguraton: unknown field (did you mean \
                 'logConfiguration'?)",
                "$.containerDefinitions[0].memoryReservaton: unknown field (did you mean \
                 'memoryReservation'?)",
                "$.containerDefinitions[0].portMapping: unknown field (did you mean \
                 'portMappings'?)",
                "$.containerDefinitions[0].portMappings[0].containerPrt: unknown field (did you \
                 mean 'containerPort'?)",
                "$.containerDefinitions[0].healthCheck.intervall: unknown field (did you mean \
                 'interval'?)",
            ]
        );
        let wrapped = r#"{"taskDefinition":{"family":"web","containerDefinitions":[{"name":"a",
            "image":"x","memory":64}]},"tag":[]}"#;
        assert_eq!(
            parse(wrapped).expect_err("tag"),
            ["$.tag: unknown field (did you mean 'tags'?)"]
        );
    }

    #[test]
    fn describe_output_registers_wrapped_or_not_with_its_tags() {
        let inner = r#"{"taskDefinitionArn":"arn:aws:ecs:x:1:task-definition/web:3","revision":3,
            "status":"ACTIVE","family":"web","registeredAt":"2024-01-01T00:00:00.000Z",
            "containerDefinitions":[{"name":"a","image":"x","memory":64,"bogus":1}]}"#;
        let problems = parse(inner).expect_err("bogus");
        assert_eq!(problems, ["$.containerDefinitions[0].bogus: unknown field"]);
        let wrapped = format!(
            r#"{{"taskDefinition":{inner},"tags":[{{"key":"team","value":"pos"}}],"x":1}}"#
        );
        let problems = parse(&wrapped).expect_err("bogus");
        assert_eq!(
            problems,
            [
                "$.taskDefinition.containerDefinitions[0].bogus: unknown field",
                "$.x: unknown field"
            ]
        );
        let fixed = wrapped
            .replace(r#","bogus":1"#, "")
            .replace(r#","x":1"#, "");
        let p = parse(&fixed).expect("registers");
        assert_eq!(
            p.definition.tags.get("team").map(String::as_str),
            Some("pos")
        );
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[1].starts_with(
            "$.taskDefinition.taskDefinitionArn, $.taskDefinition.revision, \
             $.taskDefinition.status, $.taskDefinition.registeredAt: ignored (read-only"
        ));
    }

    #[test]
    fn task_cpu_and_memory_in_every_form_ecs_takes() {
        let task = |cpu: &str, memory: &str| {
            format!(
                r#"{{"family":"f","cpu":{cpu},"memory":{memory},"containerDefinitions":[{{"name":"a","image":"x"}}]}}"#
            )
        };
        for (cpu, memory, want) in [
            ("256", "512", (256u32, 512u32)),
            (r#""256""#, r#""512""#, (256, 512)),
            (r#""1 vCPU""#, r#""1 GB""#, (1024, 1024)),
            (r#""1vcpu""#, r#""2GB""#, (1024, 2048)),
            (r#"".25 vCPU""#, r#""0.5 GB""#, (256, 512)),
            (r#""2 VCPU""#, r#""1.5gb""#, (2048, 1536)),
            (r#"" 512 ""#, r#""8 GB""#, (512, 8192)),
        ] {
            let p = parse(&task(cpu, memory)).expect(memory);
            assert_eq!(
                (p.definition.cpu, p.definition.memory),
                (Some(want.0), Some(u64::from(want.1))),
                "{cpu} {memory}"
            );
            assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        }
        let problems = parse(&task(r#""2 cores""#, r#""1024 MiB""#)).expect_err("not ECS's");
        assert_eq!(
            problems,
            [
                "$.cpu: '2 cores' is not a positive amount as ECS writes it: CPU units (512, \
                 \"512\") or vCPU (\"1 vCPU\", \"0.5vCPU\")",
                "$.memory: '1024 MiB' is not a positive amount as ECS writes it: MiB (512, \
                 \"512\") or GB (\"1 GB\", \"0.5GB\")",
            ]
        );
    }

    #[test]
    fn task_memory_and_cpu_bound_their_containers_as_ecs_has_it() {
        let task = |top: &str, containers: &str| {
            format!(r#"{{"family":"f"{top},"containerDefinitions":[{containers}]}}"#)
        };
        for (top, containers, want) in [
            // The container floor holds for the task too.
            (
                r#","memory":"4""#,
                r#"{"name":"a","image":"x"}"#,
                "$.memory: '4' is outside the task memory Flotilla takes: 6 to 4000000 MiB",
            ),
            (
                "",
                r#"{"name":"a","image":"x","memory":4}"#,
                "$.containerDefinitions[0].memory: expected an integer from 6 to",
            ),
            // And for a container's soft limit, as Docker refuses less for either.
            (
                "",
                r#"{"name":"a","image":"x","memoryReservation":4}"#,
                "$.containerDefinitions[0].memoryReservation: expected an integer from 6 to",
            ),
            (
                r#","memory":"64""#,
                r#"{"name":"a","image":"x","memory":128}"#,
                "$.containerDefinitions[0].memory: 128 MiB is more than the task's memory (64 MiB)",
            ),
            (
                r#","memory":"0.5 GB""#,
                r#"{"name":"a","image":"x","memoryReservation":256},{"name":"b","image":"x","memory":384,"essential":false}"#,
                "$.memory: 512 MiB is less than its containers reserve (256 + 384 = 640 MiB",
            ),
            (
                r#","cpu":"0.25 vCPU""#,
                r#"{"name":"a","image":"x","memory":64,"cpu":128},{"name":"b","image":"x","memory":64,"cpu":256,"essential":false}"#,
                "$.cpu: 256 CPU units is less than its containers' cpu (128 + 256 = 384)",
            ),
        ] {
            let problems = parse(&task(top, containers)).expect_err(want);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with(want), "{want}: {problems:?}");
        }
        // What fits registers; a container without memory of its own has the task's.
        let p = parse(&task(
            r#","cpu":"512","memory":"512""#,
            r#"{"name":"a","image":"x","memoryReservation":128,"memory":512,"cpu":256},{"name":"b","image":"x","essential":false}"#,
        ))
        .expect("fits");
        assert_eq!(
            (p.definition.cpu, p.definition.memory),
            (Some(512), Some(512))
        );
    }

    /// What Flotilla does with a field of the ECS `RegisterTaskDefinition` shape.
    #[derive(Debug, Clone, Copy)]
    enum Treatment {
        /// Registers with no warning about it, and the definition says it.
        Acted,
        /// Registers with a warning that names it.
        Warned,
        /// Refused; the problem named by its path starts with this.
        Refused(&'static str),
    }
    use Treatment::{Acted, Refused, Warned};

    /// Every field of the ECS RegisterTaskDefinition shape, with a value that asks for
    /// something, and what Flotilla does with it
    /// (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>,
    /// `ContainerDefinition`, `Volume`, `LinuxParameters`, `PortMapping` …). Paths are
    /// dot-separated; a number indexes an array of [`FIELDS_BASE`].
    const FIELDS: &[(&str, &str, Treatment)] = &[
        ("family", r#""g""#, Acted),
        (
            "containerDefinitions",
            "[]",
            Refused("at least one container is required"),
        ),
        ("cpu", r#""0.5 vCPU""#, Acted),
        ("memory", r#""1 GB""#, Acted),
        ("networkMode", r#""host""#, Acted),
        ("taskRoleArn", r#""arn:aws:iam::1:role/r""#, Warned),
        ("executionRoleArn", r#""arn:aws:iam::1:role/r""#, Warned),
        ("requiresCompatibilities", r#"["FARGATE"]"#, Warned),
        ("runtimePlatform", r#"{"cpuArchitecture": "ARM64"}"#, Warned),
        (
            "proxyConfiguration",
            r#"{"type": "APPMESH", "containerName": "app"}"#,
            Warned,
        ),
        (
            "inferenceAccelerators",
            r#"[{"deviceName": "d", "deviceType": "t"}]"#,
            Warned,
        ),
        ("ephemeralStorage", r#"{"sizeInGiB": 30}"#, Warned),
        ("enableFaultInjection", "true", Warned),
        ("ipcMode", r#""host""#, Warned),
        ("pidMode", r#""task""#, Warned),
        // describe-task-definition output
        (
            "taskDefinitionArn",
            r#""arn:aws:ecs:x:1:task-definition/f:1""#,
            Warned,
        ),
        ("revision", "4", Warned),
        ("status", r#""ACTIVE""#, Warned),
        (
            "requiresAttributes",
            r#"[{"name": "ecs.capability.x"}]"#,
            Warned,
        ),
        ("compatibilities", r#"["EC2"]"#, Warned),
        ("registeredAt", r#""2024-01-01T00:00:00Z""#, Warned),
        ("registeredBy", r#""arn:aws:iam::1:user/u""#, Warned),
        ("deregisteredAt", r#""2024-01-02T00:00:00Z""#, Warned),
        ("containerDefinitions.0.name", r#""web""#, Acted),
        ("containerDefinitions.0.image", r#""y""#, Acted),
        ("containerDefinitions.0.cpu", "128", Acted),
        ("containerDefinitions.0.memory", "128", Acted),
        ("containerDefinitions.0.memoryReservation", "32", Acted),
        (
            "containerDefinitions.0.portMappings.0.containerPort",
            "81",
            Acted,
        ),
        (
            "containerDefinitions.0.portMappings.0.hostPort",
            "8080",
            Acted,
        ),
        (
            "containerDefinitions.0.portMappings.0.protocol",
            r#""udp""#,
            Acted,
        ),
        (
            "containerDefinitions.0.portMappings.0.name",
            r#""http""#,
            Acted,
        ),
        (
            "containerDefinitions.0.portMappings.0.appProtocol",
            r#""http""#,
            Warned,
        ),
        (
            "containerDefinitions.0.portMappings.0.containerPortRange",
            r#""8000-8010""#,
            Refused("port ranges are not supported yet"),
        ),
        ("containerDefinitions.1.essential", "true", Acted),
        ("containerDefinitions.0.entryPoint", r#"["sh"]"#, Acted),
        ("containerDefinitions.0.command", r#"["x"]"#, Acted),
        ("containerDefinitions.0.environment.0.name", r#""B""#, Acted),
        (
            "containerDefinitions.0.environment.0.value",
            r#""2""#,
            Acted,
        ),
        ("containerDefinitions.0.workingDirectory", r#""/w""#, Acted),
        ("containerDefinitions.0.user", r#""1000""#, Acted),
        (
            "containerDefinitions.0.healthCheck.command",
            r#"["CMD", "false"]"#,
            Acted,
        ),
        ("containerDefinitions.0.healthCheck.interval", "10", Acted),
        ("containerDefinitions.0.healthCheck.timeout", "3", Acted),
        ("containerDefinitions.0.healthCheck.retries", "5", Acted),
        (
            "containerDefinitions.0.healthCheck.startPeriod",
            "20",
            Acted,
        ),
        (
            "containerDefinitions.0.dependsOn.0.containerName",
            r#""app""#,
            Refused("a container cannot depend on itself"),
        ),
        (
            "containerDefinitions.0.dependsOn.0.condition",
            r#""COMPLETE""#,
            Acted,
        ),
        (
            "containerDefinitions.0.mountPoints.0.sourceVolume",
            r#""d""#,
            Acted,
        ),
        (
            "containerDefinitions.0.mountPoints.0.containerPath",
            r#""/w""#,
            Acted,
        ),
        (
            "containerDefinitions.0.mountPoints.0.readOnly",
            "true",
            Acted,
        ),
        (
            "containerDefinitions.0.readonlyRootFilesystem",
            "true",
            Acted,
        ),
        ("containerDefinitions.0.ulimits.0.name", r#""nproc""#, Acted),
        ("containerDefinitions.0.ulimits.0.softLimit", "5", Acted),
        ("containerDefinitions.0.ulimits.0.hardLimit", "30", Acted),
        (
            "containerDefinitions.0.linuxParameters.capabilities.add",
            r#"["NET_ADMIN"]"#,
            Acted,
        ),
        (
            "containerDefinitions.0.linuxParameters.capabilities.drop",
            r#"["MKNOD"]"#,
            Acted,
        ),
        (
            "containerDefinitions.0.linuxParameters.devices",
            r#"[{"hostPath": "/dev/fuse"}]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.linuxParameters.initProcessEnabled",
            "true",
            Acted,
        ),
        (
            "containerDefinitions.0.linuxParameters.sharedMemorySize",
            "64",
            Warned,
        ),
        (
            "containerDefinitions.0.linuxParameters.maxSwap",
            "0",
            Warned,
        ),
        (
            "containerDefinitions.0.linuxParameters.swappiness",
            "60",
            Warned,
        ),
        (
            "containerDefinitions.0.linuxParameters.tmpfs.0.containerPath",
            r#""/u""#,
            Acted,
        ),
        (
            "containerDefinitions.0.linuxParameters.tmpfs.0.size",
            "16",
            Acted,
        ),
        (
            "containerDefinitions.0.linuxParameters.tmpfs.0.mountOptions",
            r#"["noexec"]"#,
            Warned,
        ),
        ("containerDefinitions.0.stopTimeout", "30", Acted),
        (
            "containerDefinitions.0.restartPolicy.enabled",
            "true",
            Acted,
        ),
        (
            "containerDefinitions.0.restartPolicy.ignoredExitCodes",
            "[1]",
            Acted,
        ),
        (
            "containerDefinitions.0.restartPolicy.restartAttemptPeriod",
            "100",
            Acted,
        ),
        ("containerDefinitions.0.privileged", "true", Acted),
        ("containerDefinitions.0.hostname", r#""h""#, Acted),
        (
            "containerDefinitions.0.logConfiguration",
            r#"{"logDriver": "awslogs"}"#,
            Warned,
        ),
        (
            "containerDefinitions.0.secrets",
            r#"[{"name": "S", "valueFrom": "arn"}]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.secrets",
            r#"[{"name": "S", "valueFrom": "flotilla:db:password:2", "environment": false, "mode": "0400", "uid": 1000, "gid": 1000}]"#,
            Acted,
        ),
        (
            "containerDefinitions.0.configs",
            r#"[{"source": "nginx", "version": 2, "target": "/etc/nginx/nginx.conf", "mode": "0440", "uid": 101, "gid": 101}]"#,
            Acted,
        ),
        (
            "containerDefinitions.0.repositoryCredentials",
            r#"{"credentialsParameter": "arn"}"#,
            Warned,
        ),
        (
            "containerDefinitions.0.firelensConfiguration",
            r#"{"type": "fluentbit"}"#,
            Warned,
        ),
        (
            "containerDefinitions.0.resourceRequirements",
            r#"[{"type": "GPU", "value": "1"}]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.credentialSpecs",
            r#"["credentialspec:arn"]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.environmentFiles",
            r#"[{"type": "s3", "value": "arn"}]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.versionConsistency",
            r#""disabled""#,
            Warned,
        ),
        (
            "containerDefinitions.0.dockerLabels",
            r#"{"a": "b"}"#,
            Warned,
        ),
        (
            "containerDefinitions.0.dockerSecurityOptions",
            r#"["no-new-privileges"]"#,
            Warned,
        ),
        ("containerDefinitions.0.links", r#"["side"]"#, Warned),
        (
            "containerDefinitions.0.volumesFrom",
            r#"[{"sourceContainer": "side"}]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.dnsServers",
            r#"["1.1.1.1"]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.dnsSearchDomains",
            r#"["example.org"]"#,
            Warned,
        ),
        (
            "containerDefinitions.0.extraHosts",
            r#"[{"hostname": "a", "ipAddress": "10.0.0.1"}]"#,
            Warned,
        ),
        ("containerDefinitions.0.disableNetworking", "true", Warned),
        ("containerDefinitions.0.interactive", "true", Warned),
        ("containerDefinitions.0.pseudoTerminal", "true", Warned),
        ("containerDefinitions.0.startTimeout", "30", Warned),
        (
            "containerDefinitions.0.systemControls",
            r#"[{"namespace": "net.core.somaxconn", "value": "1"}]"#,
            Warned,
        ),
        ("volumes.1.name", r#""e""#, Acted),
        ("volumes.0.host.sourcePath", r#""/srv""#, Acted),
        (
            "volumes.1.dockerVolumeConfiguration.scope",
            r#""shared""#,
            Acted,
        ),
        (
            "volumes.1.dockerVolumeConfiguration.autoprovision",
            "false",
            Warned,
        ),
        (
            "volumes.1.dockerVolumeConfiguration.driver",
            r#""rexray/ebs""#,
            Refused("'rexray/ebs': only the local driver"),
        ),
        (
            "volumes.1.dockerVolumeConfiguration.driverOpts",
            r#"{"type": "tmpfs"}"#,
            Warned,
        ),
        (
            "volumes.1.dockerVolumeConfiguration.labels",
            r#"{"a": "b"}"#,
            Warned,
        ),
        (
            "volumes.1.efsVolumeConfiguration",
            r#"{"fileSystemId": "fs-1"}"#,
            Warned,
        ),
        (
            "volumes.1.fsxWindowsFileServerVolumeConfiguration",
            r#"{"fileSystemId": "fs-1"}"#,
            Warned,
        ),
        ("volumes.1.configuredAtLaunch", "true", Warned),
        (
            "placementConstraints.0.type",
            r#""distinctInstance""#,
            Refused("'distinctInstance' is not a task placement constraint"),
        ),
        (
            "placementConstraints.0.expression",
            r#""attribute:a == c""#,
            Acted,
        ),
        ("tags.0.key", r#""k2""#, Acted),
        ("tags.0.value", r#""w""#, Acted),
        ("bogus", "1", Refused("unknown field")),
        (
            "containerDefinitions.0.bogus",
            "1",
            Refused("unknown field"),
        ),
    ];

    /// The definition every row of [`FIELDS`] changes one field of.
    const FIELDS_BASE: &str = r#"{
      "family": "f",
      "containerDefinitions": [
        {"name": "app", "image": "x", "memory": 64,
         "portMappings": [{"containerPort": 80}],
         "healthCheck": {"command": ["CMD", "true"]},
         "dependsOn": [{"containerName": "side", "condition": "START"}],
         "mountPoints": [{"sourceVolume": "v", "containerPath": "/v"}],
         "ulimits": [{"name": "nofile", "softLimit": 10, "hardLimit": 20}],
         "environment": [{"name": "A", "value": "1"}],
         "linuxParameters": {"tmpfs": [{"containerPath": "/t", "size": 8}]},
         "restartPolicy": {"enabled": false}},
        {"name": "side", "image": "x", "memory": 64, "essential": false}
      ],
      "volumes": [{"name": "v"}, {"name": "d"}],
      "placementConstraints": [{"type": "memberOf", "expression": "attribute:a == b"}],
      "tags": [{"key": "k", "value": "v"}]
    }"#;

    /// `a.0.b` as a JSON path: `$.a[0].b`.
    fn json_path(dotted: &str) -> String {
        let mut out = String::from("$");
        for seg in dotted.split('.') {
            if seg.parse::<usize>().is_ok() {
                out.push_str(&format!("[{seg}]"));
            } else {
                out.push_str(&format!(".{seg}"));
            }
        }
        out
    }

    fn set(v: &mut Value, dotted: &str, new: Value) {
        let mut cur = v;
        for seg in dotted.split('.') {
            cur = match cur {
                Value::Array(a) => &mut a[seg.parse::<usize>().expect("index")],
                Value::Object(m) => m.entry(seg).or_insert_with(|| Value::Object(Map::new())),
                other => panic!("{dotted}: {other}"),
            };
        }
        *cur = new;
    }

    #[test]
    fn init_process_enabled_asks_for_an_init_in_every_form_ecs_tooling_writes() {
        for (value, init) in [("true", true), ("\"true\"", true), ("false", false)] {
            let mut doc: Value = serde_json::from_str(FIELDS_BASE).expect("json");
            doc["containerDefinitions"][0]["linuxParameters"] = serde_json::json!({ "initProcessEnabled": serde_json::from_str::<Value>(value).expect("value") });
            let parsed = parse(&doc.to_string()).expect("registers");
            assert_eq!(
                parsed.definition.container_definitions[0].init_process_enabled, init,
                "{value}"
            );
        }
    }

    #[test]
    fn every_field_of_the_ecs_shape_is_acted_on_warned_about_or_refused() {
        let base = parse(FIELDS_BASE).expect("the base registers");
        assert!(base.warnings.is_empty(), "{:?}", base.warnings);
        let mut wrong = Vec::new();
        for (dotted, value, treatment) in FIELDS {
            let mut doc: Value = serde_json::from_str(FIELDS_BASE).expect("json");
            set(&mut doc, dotted, serde_json::from_str(value).expect(value));
            let path = json_path(dotted);
            let got = parse(&doc.to_string());
            let ok = match (treatment, &got) {
                (Acted, Ok(p)) => {
                    p.definition != base.definition && !p.warnings.iter().any(|w| w.contains(&path))
                }
                (Warned, Ok(p)) => {
                    p.definition == base.definition
                        && p.warnings.iter().filter(|w| w.contains(&path)).count() == 1
                }
                (Refused(want), Err(problems)) => problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{path}: {want}"))),
                _ => false,
            };
            if !ok {
                wrong.push(format!("{path} = {value}: want {treatment:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // Every field the parser knows of is in the table.
        let listed = |prefix: &str, name: &str| {
            FIELDS.iter().any(|(d, _, _)| {
                d.strip_prefix(prefix)
                    .is_some_and(|r| r.split('.').next() == Some(name))
            })
        };
        for name in TOP.iter().chain(AWS_ONLY_TOP).chain(READ_ONLY_TOP) {
            assert!(listed("", name), "{name} is not in FIELDS");
        }
        for name in CONTAINER
            .iter()
            .chain(AWS_ONLY_CONTAINER)
            .chain(NOT_YET_CONTAINER)
        {
            let essential = *name == "essential" && listed("containerDefinitions.1.", name);
            assert!(
                essential || listed("containerDefinitions.0.", name),
                "{name} is not in FIELDS"
            );
        }
    }

    #[test]
    fn a_dependency_waiting_for_an_essential_container_to_exit_is_refused() {
        let task = |essential: &str, condition: &str| {
            format!(
                r#"{{"family":"f","containerDefinitions":[
                {{"name":"app","image":"x","memory":64,
                  "dependsOn":[{{"containerName":"init","condition":"{condition}"}}]}},
                {{"name":"init","image":"x","memory":64{essential}}}]}}"#
            )
        };
        for condition in ["SUCCESS", "COMPLETE"] {
            // essential by default, or said so
            for essential in ["", r#","essential":true"#] {
                let problems = parse(&task(essential, condition)).expect_err(condition);
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert!(
                    problems[0].starts_with(&format!(
                        "$.containerDefinitions[0].dependsOn[0].condition: {condition} waits for \
                         'init' to exit, but it is essential"
                    )),
                    "{problems:?}"
                );
            }
            parse(&task(r#","essential":false"#, condition)).expect("a non-essential init");
        }
        // Waiting for an essential container to start or be healthy is what sidecars do.
        parse(&task("", "START")).expect("START");
    }

    #[test]
    fn a_port_range_is_refused_in_one_message() {
        let problems = parse(
            r#"{"family":"f","containerDefinitions":[{"name":"a","image":"x","memory":64,
                "portMappings":[{"containerPortRange":"8000-8010"}]}]}"#,
        )
        .expect_err("a range");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with(
            "$.containerDefinitions[0].portMappings[0].containerPortRange: port ranges are not \
             supported yet"
        ));
    }

    #[test]
    fn secrets_name_what_is_wrong_with_each_entry_and_arns_are_left_out_with_a_warning() {
        let with = |entries: &str| {
            parse(&format!(
                r#"{{"family":"f","containerDefinitions":[{{"name":"a","image":"x","memory":64,
                "environment":[{{"name":"A","value":"1"}}],"secrets":{entries}}}]}}"#
            ))
        };
        for (entries, want) in [
            (
                r#"[{"name":"S","valueFrom":"flotilla:-db"}]"#,
                "[0].valueFrom: secret name '-db'",
            ),
            (
                r#"[{"name":"A","valueFrom":"flotilla:db"}]"#,
                "[0].name: 'A' is also set in environment",
            ),
            (
                r#"[{"name":"../x","valueFrom":"flotilla:db"}]"#,
                "[0].name: use 1-255",
            ),
            (
                r#"[{"name":"S","valueFrom":"flotilla:db","mode":"0999"}]"#,
                "[0].mode: '0999'",
            ),
            (
                r#"[{"name":"S","valueFrom":"flotilla:db","mode":512}]"#,
                "[0].mode",
            ),
            (
                r#"[{"name":"S","valueFrom":"flotilla:db"},{"name":"S","valueFrom":"flotilla:x"}]"#,
                "[1].name: 'S' is set twice",
            ),
            (r#"[{"name":"S"}]"#, "[0].valueFrom: required"),
            (
                r#"[{"name":"S","valueFrom":"flotilla:db","file":true}]"#,
                "[0].file: unknown field",
            ),
        ] {
            let problems = with(entries).expect_err(entries);
            let want = format!("$.containerDefinitions[0].secrets{want}");
            assert!(
                problems.iter().any(|p| p.starts_with(&want)),
                "{entries}: {problems:?}"
            );
        }
        let configs = |entries: &str| {
            parse(&format!(
                r#"{{"family":"f","containerDefinitions":[{{"name":"a","image":"x","memory":64,
                "configs":{entries}}}]}}"#
            ))
        };
        for (entries, want) in [
            (r#"[{"source":"-x"}]"#, "[0].source"),
            (
                r#"[{"source":"x","target":"etc/x"}]"#,
                "[0].target: 'etc/x'",
            ),
            (
                r#"[{"source":"x","target":"/etc/../x"}]"#,
                "[0].target: '/etc/../x'",
            ),
            (
                r#"[{"source":"x","target":"/proc/x"}]"#,
                "[0].target: '/proc/x'",
            ),
            (
                r#"[{"source":"x","target":"/run/secrets/x"}]"#,
                "[0].target: '/run/secrets/x'",
            ),
            (
                r#"[{"source":"x","target":"/a"},{"source":"y","target":"/a"}]"#,
                "[1].target: '/a' is set twice",
            ),
            (r#"[{"source":"x","version":0}]"#, "[0].version"),
            (r#"[{"source":"x","target":"/run"}]"#, "[0].target: '/run'"),
            (
                r#"[{"source":"x","target":"/a"},{"source":"y","target":"/a/b"}]"#,
                "[1].target: '/a/b' and '/a'",
            ),
        ] {
            let problems = configs(entries).expect_err(entries);
            let want = format!("$.containerDefinitions[0].configs{want}");
            assert!(
                problems.iter().any(|p| p.starts_with(&want)),
                "{entries}: {problems:?}"
            );
        }
        let c = configs(r#"[{"source":"nginx.conf"}]"#).expect("registers");
        assert_eq!(
            c.definition.container_definitions[0].configs[0].target, "/nginx.conf",
            "Swarm's default"
        );
        let parsed = with(
            r#"[{"name":"S","valueFrom":"flotilla:db::2","mode":256},
                {"name":"T","valueFrom":"arn:aws:secretsmanager:eu-central-1:1:secret:t"}]"#,
        )
        .expect("registers");
        let secrets = &parsed.definition.container_definitions[0].secrets;
        assert_eq!(secrets.len(), 1, "the ARN is left out: {secrets:?}");
        assert_eq!(secrets[0].mode, Some(0o400));
        let shown = serde_json::to_value(&secrets[0]).expect("json");
        assert_eq!(shown["mode"], "0400", "modes are shown in octal");
        let back: ContainerSecret = serde_json::from_value(shown).expect("read back");
        assert_eq!(back, secrets[0]);
        assert_eq!(secrets[0].reference().and_then(|r| r.version), Some(2));
        assert!(
            parsed
                .warnings
                .iter()
                .any(|w| w.starts_with("$.containerDefinitions[0].secrets[1]: ignored")),
            "{:?}",
            parsed.warnings
        );
    }
}
