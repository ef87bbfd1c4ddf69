//! One Compose service: its task definition and its service, key by key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::keys;
use super::top::{absolute, Globals};
use super::units::{self, describe, kind, scalar_text};
use super::{Condition, Cx, Dependency, ServicePlan, ValueKind};

mod deploy;
mod ports;
mod values;
mod volumes;

/// A task definition needs a memory figure; a service that names none reserves this much (MiB)
/// and has no hard limit, as a Compose service has none.
pub const DEFAULT_MEMORY_RESERVATION: u64 = 128;

/// A tmpfs without `size=` gets this much (MiB): a task definition's tmpfs has a size.
pub const DEFAULT_TMPFS_MIB: u64 = 64;

/// The least memory a container gets (MiB), as the task definition checks it.
const MIN_MEMORY: u64 = 6;

/// Compose's `stop_grace_period` when a service gives none, in seconds (the specification's
/// default; Flotilla's own container default is 30).
pub const COMPOSE_STOP_GRACE_SECONDS: u64 = 10;

/// How many ports a warning lists before it counts the rest.
const MAX_LISTED: usize = 20;

/// A mapped service, with what the checks across services need.
#[derive(Debug)]
pub struct Mapped {
    pub plan: ServicePlan,
    /// `services.NAME`.
    path: String,
    /// It has a health check.
    healthy_check: bool,
    /// Its discovery name, if it registers.
    discovery: Option<String>,
    /// The Flotilla secrets and configs its container uses.
    values: Vec<(ValueKind, String)>,
    /// It says which stopped tasks are replaced (`restart`, `deploy.restart_policy` or a
    /// job's `deploy.mode`).
    says_replace: bool,
}

/// One published or exposed port.
#[derive(Debug, Clone)]
struct Port {
    container: u16,
    host: Option<u16>,
    udp: bool,
    name: Option<String>,
    path: String,
}

/// What one service's keys make, before it is put together.
struct Service<'a> {
    cx: &'a mut Cx,
    g: &'a Globals,
    /// `services.NAME`.
    path: String,
    name: String,
    container: Map<String, Value>,
    linux: Map<String, Value>,
    task_volumes: Vec<Value>,
    mounts: Vec<Value>,
    tmpfs: Vec<(Value, String)>,
    ports: Vec<Port>,
    exposed: Vec<Port>,
    /// JSON path of the task definition → the Compose path it came from.
    origins: Vec<(String, String)>,
    image: Option<String>,
    build: bool,
    network: Option<String>,
    memory: Option<(u64, String)>,
    reservation: Option<(u64, String)>,
    cpu_limit: Option<(f64, String)>,
    cpu_weight: Option<(u32, String)>,
    restart: Option<(Restart, String)>,
    deploy_restart: Option<(Restart, String)>,
    /// `deploy.mode: replicated-job` or `global-job`.
    job: bool,
    replicas: Option<(u32, String)>,
    scale: Option<(u32, String)>,
    global: bool,
    vip: bool,
    depends_on: Vec<Dependency>,
    service: Map<String, Value>,
    update: Option<Value>,
    constraints: Vec<Value>,
    strategy: Vec<Value>,
    values: Vec<(ValueKind, String)>,
    healthy_check: bool,
}

/// A secret or config a container refers to: source, target, mode, uid, gid.
type Reference = (
    String,
    Option<String>,
    Option<u32>,
    Option<u32>,
    Option<u32>,
);

/// A container's restart in place.
#[derive(Debug, Clone, PartialEq)]
struct Restart {
    enabled: bool,
    ignore_success: bool,
    period: Option<u32>,
}

const C: &str = "$.containerDefinitions[0]";

/// The Flotilla form of a Compose service name: `.` is not allowed in names there.
fn flotilla_name(s: &str) -> String {
    s.replace('.', "-")
}

/// A Compose service name as a DNS label: lowercase, `_` and `.` as `-`.
fn label_of(s: &str) -> String {
    s.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Maps service `name`.
pub fn map(
    cx: &mut Cx,
    g: &Globals,
    names: &BTreeSet<&str>,
    name: &str,
    def: &Value,
) -> Option<Mapped> {
    let path = format!("services.{name}");
    let empty = Map::new();
    let m = match def {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            cx.problem(&path, format!("expected a mapping, found {}", kind(other)));
            return None;
        }
    };
    let before = cx.problems.len();
    let mut s = Service {
        cx,
        g,
        path: path.clone(),
        name: name.to_string(),
        container: Map::new(),
        linux: Map::new(),
        task_volumes: Vec::new(),
        mounts: Vec::new(),
        tmpfs: Vec::new(),
        ports: Vec::new(),
        exposed: Vec::new(),
        origins: Vec::new(),
        image: None,
        build: false,
        network: None,
        memory: None,
        reservation: None,
        cpu_limit: None,
        cpu_weight: None,
        restart: None,
        deploy_restart: None,
        job: false,
        replicas: None,
        scale: None,
        global: false,
        vip: true,
        depends_on: Vec::new(),
        service: Map::new(),
        update: None,
        constraints: Vec::new(),
        strategy: Vec::new(),
        values: Vec::new(),
        healthy_check: false,
    };
    // network_mode first: ports depend on it.
    if let Some(v) = m.get("network_mode") {
        s.network_mode(v);
    }
    for (k, v) in m {
        s.key(k, v, names);
    }
    let mapped = s.finish();
    if cx.problems.len() > before {
        return None;
    }
    mapped
}

impl Service<'_> {
    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn problem(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.cx.problem(path, msg);
    }

    fn warn(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.cx.warn(path, msg);
    }

    fn not_compose(&mut self, path: &str, key: &str, known: &[&str]) {
        self.cx.not_compose(path, key, known);
    }

    fn origin(&mut self, json: impl Into<String>, compose: impl Into<String>) {
        self.origins.push((json.into(), compose.into()));
    }

    /// A string value, or a problem.
    fn text(&mut self, path: &str, v: &Value) -> Option<String> {
        match scalar_text(v) {
            Some(s) => Some(s),
            None => {
                self.problem(path, format!("expected a string, found {}", kind(v)));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match units::boolean(v) {
            Ok(b) => Some(b),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    /// Sets a container field from a boolean key.
    fn flag(&mut self, key: &str, v: &Value, field: &str) {
        let p = self.at(key);
        if let Some(b) = self.boolean(&p, v) {
            self.container.insert(field.into(), Value::Bool(b));
            self.origin(format!("{C}.{field}"), p);
        }
    }

    fn key(&mut self, k: &str, v: &Value, names: &BTreeSet<&str>) {
        let p = self.at(k);
        match k {
            k if k.starts_with("x-") => {}
            // The loader applied them, or inlined them into environment.
            "profiles" | "env_file" => {}
            "network_mode" => {}
            "image" => {
                if let Some(i) = self.text(&p, v) {
                    if i.trim().is_empty() {
                        self.problem(&p, "an empty image reference");
                    } else {
                        self.image = Some(i);
                    }
                }
            }
            "build" => self.build = !v.is_null(),
            "command" | "entrypoint" => {
                let field = if k == "command" {
                    "command"
                } else {
                    "entryPoint"
                };
                match v {
                    Value::Null => {}
                    Value::String(s) => match shlex::split(s) {
                        Some(words) => {
                            self.container.insert(field.into(), json!(words));
                            self.origin(format!("{C}.{field}"), p);
                        }
                        None => self.problem(
                            &p,
                            "its quotes are unbalanced (a string is split into words as a shell \
                             splits them)",
                        ),
                    },
                    Value::Array(_) => match units::string_or_list(v) {
                        Ok(words) => {
                            self.container.insert(field.into(), json!(words));
                            self.origin(format!("{C}.{field}"), p);
                        }
                        Err(e) => self.problem(&p, e),
                    },
                    other => self.problem(
                        &p,
                        format!(
                            "expected a string or a list of strings, found {}",
                            kind(other)
                        ),
                    ),
                }
            }
            "environment" => match units::list_or_dict(v) {
                Ok(pairs) => {
                    let mut env = Vec::new();
                    for (name, value) in pairs {
                        match value {
                            Some(value) => env.push(json!({"name": name, "value": value})),
                            None => self.warn(
                                &format!("{p}.{name}"),
                                "not set: it has no value (a variable of the environment the \
                                 file was loaded in, which had none)",
                            ),
                        }
                    }
                    if !env.is_empty() {
                        self.container
                            .insert("environment".into(), Value::Array(env));
                        self.origin(format!("{C}.environment"), p);
                    }
                }
                Err(e) => self.problem(&p, e),
            },
            "labels" => match units::list_or_dict(v) {
                Ok(pairs) if !pairs.is_empty() => {
                    let labels: Map<String, Value> = pairs
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v.unwrap_or_default())))
                        .collect();
                    self.container
                        .insert("dockerLabels".into(), Value::Object(labels));
                    self.origin(format!("{C}.dockerLabels"), p);
                }
                Ok(_) => {}
                Err(e) => self.problem(&p, e),
            },
            "user" | "working_dir" | "hostname" => {
                let field = match k {
                    "user" => "user",
                    "working_dir" => "workingDirectory",
                    _ => "hostname",
                };
                if !v.is_null() {
                    if let Some(t) = self.text(&p, v) {
                        self.container.insert(field.into(), Value::String(t));
                        self.origin(format!("{C}.{field}"), p);
                    }
                }
            }
            "read_only" => self.flag(k, v, "readonlyRootFilesystem"),
            "privileged" => self.flag(k, v, "privileged"),
            "tty" => self.flag(k, v, "pseudoTerminal"),
            "stdin_open" => self.flag(k, v, "interactive"),
            "init" => {
                if let Some(b) = self.boolean(&p, v) {
                    self.linux
                        .insert("initProcessEnabled".into(), Value::Bool(b));
                    self.origin(format!("{C}.linuxParameters.initProcessEnabled"), p);
                }
            }
            "dns" | "dns_search" => {
                let field = if k == "dns" {
                    "dnsServers"
                } else {
                    "dnsSearchDomains"
                };
                match units::string_or_list(v) {
                    Ok(list) if !list.is_empty() => {
                        self.container.insert(field.into(), json!(list));
                        self.origin(format!("{C}.{field}"), p);
                    }
                    Ok(_) => {}
                    Err(e) => self.problem(&p, e),
                }
            }
            "extra_hosts" => self.extra_hosts(&p, v),
            "sysctls" => match units::list_or_dict(v) {
                Ok(pairs) if !pairs.is_empty() => {
                    let list: Vec<Value> = pairs
                        .into_iter()
                        .map(|(k, v)| json!({"namespace": k, "value": v.unwrap_or_default()}))
                        .collect();
                    self.container
                        .insert("systemControls".into(), Value::Array(list));
                    self.origin(format!("{C}.systemControls"), p);
                }
                Ok(_) => {}
                Err(e) => self.problem(&p, e),
            },
            "cap_add" | "cap_drop" => match units::string_or_list(v) {
                Ok(caps) => {
                    let which = if k == "cap_add" { "add" } else { "drop" };
                    let mut c = self
                        .linux
                        .remove("capabilities")
                        .and_then(|c| c.as_object().cloned())
                        .unwrap_or_default();
                    c.insert(which.into(), json!(caps));
                    self.linux.insert("capabilities".into(), Value::Object(c));
                    self.origin(format!("{C}.linuxParameters.capabilities.{which}"), p);
                }
                Err(e) => self.problem(&p, e),
            },
            "shm_size" => match units::bytes(v) {
                Ok(b) => {
                    self.linux
                        .insert("sharedMemorySize".into(), json!(units::mib(b).max(1)));
                    self.origin(format!("{C}.linuxParameters.sharedMemorySize"), p);
                }
                Err(e) => self.problem(&p, e),
            },
            "tmpfs" => match units::string_or_list(v) {
                Ok(list) => {
                    for (i, t) in list.iter().enumerate() {
                        let tp = if v.is_array() {
                            format!("{p}[{i}]")
                        } else {
                            p.clone()
                        };
                        self.tmpfs_short(&tp, t);
                    }
                }
                Err(e) => self.problem(&p, e),
            },
            "ulimits" => self.ulimits(&p, v),
            "stop_grace_period" => match units::duration(v) {
                Ok(secs) => {
                    let want = units::whole_seconds(secs);
                    let t = want.clamp(2, 120);
                    if t != want {
                        self.warn(
                            &p,
                            format!(
                                "{}: Flotilla waits {t} s (a stop timeout is 2 to 120 s)",
                                describe(v)
                            ),
                        );
                    }
                    self.container.insert("stopTimeout".into(), json!(t));
                    self.origin(format!("{C}.stopTimeout"), p);
                }
                Err(e) => self.problem(&p, e),
            },
            "healthcheck" => self.healthcheck(&p, v),
            "ports" => self.ports(&p, v),
            "expose" => self.expose(&p, v),
            "volumes" => self.volumes(&p, v),
            "mem_limit" => self.memory_key(&p, v, false),
            "mem_reservation" => self.memory_key(&p, v, true),
            "cpus" => match units::number(v) {
                Ok(n) if n > 0.0 => {
                    if self.cpu_limit.is_none() {
                        self.cpu_limit = Some((n, p));
                    }
                }
                Ok(_) => {}
                Err(e) => self.problem(&p, e),
            },
            "cpu_shares" => match units::integer(v, 2, 262_144) {
                Ok(n) => {
                    if self.cpu_weight.is_none() {
                        self.cpu_weight = Some((n as u32, p));
                    }
                }
                Err(e) => self.problem(&p, e),
            },
            "restart" => self.restart_key(&p, v),
            "scale" => match units::integer(v, 0, 10_000) {
                Ok(n) => self.scale = Some((n as u32, p)),
                Err(e) => self.problem(&p, e),
            },
            "deploy" => self.deploy(&p, v),
            "secrets" => self.secrets(&p, v),
            "configs" => self.configs(&p, v),
            "depends_on" => self.depends_on(&p, v, names),
            _ => match keys::unmapped_service_key(k) {
                Some(why) => self.warn(&p, why),
                None => self.not_compose(&p, k, keys::SERVICE),
            },
        }
    }

    fn network_mode(&mut self, v: &Value) {
        let p = self.at("network_mode");
        let Some(mode) = self.text(&p, v) else {
            return;
        };
        match mode.as_str() {
            "bridge" | "host" | "none" => self.network = Some(mode),
            "default" => {}
            m if m.starts_with("service:") || m.starts_with("container:") => self.warn(
                &p,
                format!(
                    "'{m}': not mapped: each service is its own task with its own network; \
                     it reaches the other by its name"
                ),
            ),
            m => self.warn(
                &p,
                format!("'{m}': not mapped: tasks run in bridge, host or none networks"),
            ),
        }
    }

    fn extra_hosts(&mut self, p: &str, v: &Value) {
        let mut out = Vec::new();
        match v {
            Value::Null => {}
            Value::Object(m) => {
                for (host, ips) in m {
                    match units::string_or_list(ips) {
                        Ok(ips) => {
                            for ip in ips {
                                out.push(json!({"hostname": host, "ipAddress": ip}));
                            }
                        }
                        Err(e) => self.problem(&format!("{p}.{host}"), e),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Some(t) = item.as_str() else {
                        self.problem(&format!("{p}[{i}]"), "expected HOST:IP or HOST=IP");
                        continue;
                    };
                    // HOST=IP, or HOST:IP split at the first ':' (an IPv6 address keeps its own).
                    match t.split_once('=').or_else(|| t.split_once(':')) {
                        Some((h, ip)) if !h.is_empty() && !ip.is_empty() => {
                            let ip = ip.trim_start_matches('[').trim_end_matches(']');
                            out.push(json!({"hostname": h, "ipAddress": ip}));
                        }
                        _ => self.problem(&format!("{p}[{i}]"), format!("'{t}' is not HOST:IP")),
                    }
                }
            }
            other => self.problem(
                p,
                format!(
                    "expected a mapping or a list of HOST:IP, found {}",
                    kind(other)
                ),
            ),
        }
        if !out.is_empty() {
            self.container
                .insert("extraHosts".into(), Value::Array(out));
            self.origin(format!("{C}.extraHosts"), p);
        }
    }

    fn ulimits(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        let mut out = Vec::new();
        for (name, lim) in m {
            let lp = format!("{p}.{name}");
            let (soft, hard) = match lim {
                Value::Object(sh) => (sh.get("soft"), sh.get("hard")),
                other => (Some(other), Some(other)),
            };
            let (Some(soft), Some(hard)) = (soft, hard) else {
                self.problem(&lp, "needs soft and hard");
                continue;
            };
            match (
                units::integer(soft, -1, i64::MAX),
                units::integer(hard, -1, i64::MAX),
            ) {
                (Ok(s), Ok(h)) => {
                    self.origin(format!("{C}.ulimits[{}]", out.len()), lp);
                    out.push(json!({"name": name, "softLimit": s, "hardLimit": h}));
                }
                (Err(e), _) | (_, Err(e)) => self.problem(&lp, e),
            }
        }
        if !out.is_empty() {
            self.container.insert("ulimits".into(), Value::Array(out));
        }
    }

    fn memory_key(&mut self, p: &str, v: &Value, reservation: bool) {
        match units::bytes(v) {
            Ok(0) => {}
            Ok(b) => {
                let m = units::mib(b);
                if m < MIN_MEMORY {
                    self.problem(
                        p,
                        format!(
                            "{}: less than the {MIN_MEMORY} MiB a container needs",
                            describe(v)
                        ),
                    );
                    return;
                }
                let slot = if reservation {
                    &mut self.reservation
                } else {
                    &mut self.memory
                };
                // deploy.resources wins over mem_limit and mem_reservation.
                if slot.as_ref().is_none_or(|(_, at)| !at.contains(".deploy.")) {
                    *slot = Some((m, p.to_string()));
                }
            }
            Err(e) => self.problem(p, e),
        }
    }

    fn restart_key(&mut self, p: &str, v: &Value) {
        let Some(t) = self.text(p, v) else {
            return;
        };
        let (word, count) = t.split_once(':').unwrap_or((t.as_str(), ""));
        let r = match word {
            "no" => Restart {
                enabled: false,
                ignore_success: false,
                period: None,
            },
            "always" | "unless-stopped" => Restart {
                enabled: true,
                ignore_success: false,
                period: None,
            },
            "on-failure" => {
                if !count.is_empty() {
                    self.warn(
                        p,
                        format!(
                            "on-failure:{count}: the count is not mapped: the node restarts the \
                             container after every failure, waiting 1 s doubling to 5 minutes"
                        ),
                    );
                }
                Restart {
                    enabled: true,
                    ignore_success: true,
                    period: None,
                }
            }
            _ => {
                self.problem(
                    p,
                    format!("'{t}' is not no, always, unless-stopped or on-failure[:N]"),
                );
                return;
            }
        };
        self.restart = Some((r, p.to_string()));
    }

    fn healthcheck(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        let disabled = match m.get("disable") {
            Some(d) => self.boolean(&format!("{p}.disable"), d).unwrap_or(false),
            None => false,
        };
        if disabled {
            return;
        }
        let mut command: Option<Vec<String>> = None;
        // Compose's defaults, where ECS's would differ.
        let mut interval = 30u64;
        let mut timeout = 30u64;
        let mut retries = 3u64;
        let mut start = 0u64;
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                "disable" => {}
                k if k.starts_with("x-") => {}
                "test" => match val {
                    Value::String(s) => command = Some(vec!["CMD-SHELL".into(), s.clone()]),
                    Value::Array(_) => match units::string_or_list(val) {
                        Ok(words) => match words.first().map(String::as_str) {
                            Some("NONE") => return,
                            Some("CMD") | Some("CMD-SHELL") => command = Some(words),
                            _ => self.problem(&kp, "a list starts with CMD, CMD-SHELL or NONE"),
                        },
                        Err(e) => self.problem(&kp, e),
                    },
                    other => self.problem(
                        &kp,
                        format!("expected a string or a list, found {}", kind(other)),
                    ),
                },
                "interval" | "timeout" | "start_period" => {
                    let (lo, hi, slot) = match k.as_str() {
                        "interval" => (5, 300, &mut interval),
                        "timeout" => (2, 60, &mut timeout),
                        _ => (0, 300, &mut start),
                    };
                    match units::duration(val) {
                        Ok(secs) => {
                            let want = units::whole_seconds(secs);
                            *slot = want.clamp(lo, hi);
                            if *slot != want {
                                let got = *slot;
                                self.warn(
                                    &kp,
                                    format!(
                                        "{}: {got} s on Flotilla (from {lo} to {hi} s)",
                                        describe(val)
                                    ),
                                );
                            }
                        }
                        Err(e) => self.problem(&kp, e),
                    }
                }
                "retries" => match units::integer(val, 0, i64::MAX) {
                    Ok(n) => {
                        let want = n as u64;
                        retries = want.clamp(1, 10);
                        if retries != want {
                            self.warn(&kp, format!("{want}: {retries} on Flotilla (from 1 to 10)"));
                        }
                    }
                    Err(e) => self.problem(&kp, e),
                },
                "start_interval" => self.warn(
                    &kp,
                    "not mapped: the first check runs 1 s after the start, then every interval",
                ),
                _ => self.not_compose(&kp, k, keys::HEALTHCHECK),
            }
        }
        let Some(command) = command else {
            self.warn(
                p,
                "no test: not mapped: Flotilla runs no image's HEALTHCHECK; the container has no \
                 health check",
            );
            return;
        };
        self.container.insert(
            "healthCheck".into(),
            json!({"command": command, "interval": interval, "timeout": timeout,
                   "retries": retries, "startPeriod": start}),
        );
        self.origin(format!("{C}.healthCheck"), p);
        self.healthy_check = true;
    }

    fn depends_on(&mut self, p: &str, v: &Value, names: &BTreeSet<&str>) {
        // (service, path, its long form)
        type Entry<'v> = (String, String, Option<&'v Map<String, Value>>);
        let mut deps: Vec<Entry<'_>> = Vec::new();
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => deps.push((s.to_string(), format!("{p}[{i}]"), None)),
                        None => self.problem(&format!("{p}[{i}]"), "expected a service name"),
                    }
                }
            }
            Value::Object(m) => {
                for (name, d) in m {
                    let dp = format!("{p}.{name}");
                    match d {
                        Value::Null => deps.push((name.clone(), dp, None)),
                        Value::Object(dm) => deps.push((name.clone(), dp, Some(dm))),
                        other => {
                            self.problem(&dp, format!("expected a mapping, found {}", kind(other)))
                        }
                    }
                }
            }
            other => self.problem(
                p,
                format!("expected a list or a mapping, found {}", kind(other)),
            ),
        }
        for (service, dp, d) in deps {
            let mut condition = Condition::Started;
            let mut required = true;
            for (k, val) in d.into_iter().flatten() {
                let kp = format!("{dp}.{k}");
                match k.as_str() {
                    x if x.starts_with("x-") => {}
                    "condition" => match val.as_str() {
                        Some("service_started") => condition = Condition::Started,
                        Some("service_healthy") => condition = Condition::Healthy,
                        Some("service_completed_successfully") => {
                            condition = Condition::CompletedSuccessfully
                        }
                        _ => self.problem(
                            &kp,
                            "expected service_started, service_healthy or \
                             service_completed_successfully",
                        ),
                    },
                    "required" => required = self.boolean(&kp, val).unwrap_or(true),
                    "restart" => {
                        if units::boolean(val).unwrap_or(false) {
                            self.warn(
                                &kp,
                                "not mapped: a service is not restarted when one it depends \
                                 on is",
                            );
                        }
                    }
                    _ => self.not_compose(&kp, k, keys::DEPENDS_ON),
                }
            }
            if service == self.name {
                self.problem(&dp, "a service cannot depend on itself");
            } else if !names.contains(service.as_str()) {
                if required {
                    self.problem(&dp, format!("no service '{service}' in the project"));
                } else {
                    self.warn(
                        &dp,
                        format!("no service '{service}' in the project: not waited for"),
                    );
                }
            } else {
                self.depends_on.push(Dependency {
                    service,
                    condition,
                    required,
                });
            }
        }
    }

    /// Puts the task definition and the service together and checks them.
    fn finish(mut self) -> Option<Mapped> {
        let path = self.path.clone();
        let image = match (self.image.take(), self.build) {
            (Some(i), build) => {
                if build {
                    self.warn(
                        &self.at("build"),
                        "not mapped: Flotilla runs images: build and push the image yourself; \
                         nodes pull image:",
                    );
                }
                i
            }
            (None, true) => {
                let path = self.at("build");
                self.cx.refusals.push(format!(
                    "{path}: Flotilla runs images; give image: (build and push it yourself)"
                ));
                format!("{}-{}", self.cx.project, flotilla_name(&self.name))
            }
            (None, false) => {
                self.problem(&self.at("image"), "required (the service has no image)");
                return None;
            }
        };
        let flotilla = format!("{}-{}", self.cx.project, flotilla_name(&self.name));
        let container_name = flotilla_name(&self.name);
        if container_name != self.name {
            self.warn(
                &path,
                format!("named {flotilla} on Flotilla ('.' is not allowed in its names)"),
            );
        }
        self.container.insert("name".into(), json!(container_name));
        self.container.insert("image".into(), json!(image));
        self.container.insert("essential".into(), json!(true));
        if !self.container.contains_key("stopTimeout") {
            // Compose's stop_grace_period when none is given (Flotilla's own is 30 s).
            self.container
                .insert("stopTimeout".into(), json!(COMPOSE_STOP_GRACE_SECONDS));
        }

        // Memory: a task definition needs one figure.
        match (self.memory.clone(), self.reservation.clone()) {
            (None, None) => {
                self.container.insert(
                    "memoryReservation".into(),
                    json!(DEFAULT_MEMORY_RESERVATION),
                );
            }
            (m, r) => {
                if let Some((m, at)) = m {
                    self.container.insert("memory".into(), json!(m));
                    self.origin(format!("{C}.memory"), at);
                }
                if let Some((r, at)) = r {
                    self.container.insert("memoryReservation".into(), json!(r));
                    self.origin(format!("{C}.memoryReservation"), at);
                }
            }
        }
        let mut task_cpu = None;
        if let Some((n, at)) = self.cpu_limit.clone() {
            let want = (n * 1024.0).round() as u64;
            let got = want.clamp(128, 196_608);
            if got != want {
                self.warn(
                    &at,
                    format!(
                        "{n}: {} CPUs on Flotilla (a task's cpu is 128 to 196608 units, 0.125 to \
                         192 CPUs)",
                        got as f64 / 1024.0
                    ),
                );
            }
            task_cpu = Some(got);
            self.origin("$.cpu", at);
        }
        if let Some((w, at)) = self.cpu_weight.clone() {
            self.container.insert("cpu".into(), json!(w));
            self.origin(format!("{C}.cpu"), at);
        }

        // Restart in place.
        if let (Some((_, at)), Some(_)) = (&self.restart, &self.deploy_restart) {
            let at = at.clone();
            self.warn(&at, "overridden by deploy.restart_policy");
        }
        if let Some((r, at)) = self.deploy_restart.clone().or(self.restart.clone()) {
            if r.enabled {
                let mut rp = json!({"enabled": true});
                if r.ignore_success {
                    rp["ignoredExitCodes"] = json!([0]);
                }
                if let Some(period) = r.period {
                    rp["restartAttemptPeriod"] = json!(period);
                }
                self.container.insert("restartPolicy".into(), rp);
                self.origin(format!("{C}.restartPolicy"), at);
            }
        }
        // Which stopped tasks the service replaces, as Swarm's restart condition says of a
        // service's tasks: `none` (`restart: "no"`) none, `on-failure` (and a job) the failed
        // ones only; `any`/`always` every one (the default).
        let given = self.deploy_restart.clone().or(self.restart.clone());
        let replace = match &given {
            Some((r, _)) if !r.enabled => Some("never"),
            Some((r, _)) if r.ignore_success => Some("onFailure"),
            _ if self.job => Some("onFailure"),
            _ => None,
        };
        let says_replace = given.is_some() || self.job;

        // Ports: each container port once; those of expose only when not also published.
        let mode = self.network.clone().unwrap_or_else(|| "bridge".into());
        let mut all: Vec<Port> = Vec::new();
        let given: Vec<Port> = self.ports.drain(..).chain(self.exposed.drain(..)).collect();
        if mode == "none" && !given.is_empty() {
            self.warn(
                &self.at("network_mode"),
                "none: the service publishes no port (ports and expose are not mapped)",
            );
        } else {
            // Where each container port was first given: a range of 60,000 ports is 60,000
            // mappings, so no search through the list for each.
            let mut seen: std::collections::HashMap<(u16, bool), String> =
                std::collections::HashMap::new();
            for port in given {
                match seen.get(&(port.container, port.udp)) {
                    Some(first) if port.path.contains(".ports[") => {
                        let first = first.clone();
                        self.warn(
                            &port.path,
                            format!(
                                "container port {}/{} is already published by {first}: Flotilla \
                                 maps each container port once",
                                port.container,
                                if port.udp { "udp" } else { "tcp" }
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((port.container, port.udp), port.path.clone());
                        all.push(port);
                    }
                }
            }
        }
        if mode == "bridge" {
            if all.iter().any(|p| p.path.contains(".expose[")) {
                // Nothing keeps a port to the project: a node has no network of its own for it.
                self.warn(
                    &self.at("expose"),
                    "published on a dynamic port of every address of the node, the LAN included \
                     (Flotilla has no internal-only network yet): other services reach it by \
                     name through its VIP",
                );
            } else if all.is_empty() {
                // Its name answers with the node's address, where nothing of it listens.
                self.warn(
                    &path,
                    "other services cannot reach it by name: Flotilla reaches a service through \
                     a port it declares; give it expose: PORT",
                );
            }
        }
        let mappings: Vec<Value> = all
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut m = json!({"containerPort": p.container,
                                   "protocol": if p.udp { "udp" } else { "tcp" }});
                if let Some(h) = p.host {
                    m["hostPort"] = json!(h);
                }
                if let Some(n) = &p.name {
                    m["name"] = json!(n);
                }
                self.origins
                    .push((format!("{C}.portMappings[{i}]"), p.path.clone()));
                m
            })
            .collect();
        if !mappings.is_empty() {
            self.container
                .insert("portMappings".into(), Value::Array(mappings));
        }

        if !self.mounts.is_empty() {
            let mounts = std::mem::take(&mut self.mounts);
            self.container
                .insert("mountPoints".into(), Value::Array(mounts));
        }
        if !self.tmpfs.is_empty() {
            let mut list = Vec::new();
            for (i, (t, at)) in std::mem::take(&mut self.tmpfs).into_iter().enumerate() {
                self.origin(format!("{C}.linuxParameters.tmpfs[{i}]"), at);
                list.push(t);
            }
            self.linux.insert("tmpfs".into(), Value::Array(list));
        }
        if !self.linux.is_empty() {
            let linux = std::mem::take(&mut self.linux);
            self.container
                .insert("linuxParameters".into(), Value::Object(linux));
        }

        let mut task = Map::new();
        task.insert("family".into(), json!(flotilla));
        task.insert("networkMode".into(), json!(mode));
        task.insert(
            "containerDefinitions".into(),
            json!([Value::Object(std::mem::take(&mut self.container))]),
        );
        if !self.task_volumes.is_empty() {
            task.insert(
                "volumes".into(),
                Value::Array(std::mem::take(&mut self.task_volumes)),
            );
        }
        if let Some(c) = task_cpu {
            task.insert("cpu".into(), json!(c));
        }
        let task = Value::Object(task);

        // The service.
        let count = match (self.replicas.clone(), self.scale.clone()) {
            (Some((r, at)), Some((s, sat))) => {
                if r != s {
                    self.problem(&sat, format!("{s} differs from {at} ({r})"));
                }
                r
            }
            (Some((r, _)), None) | (None, Some((r, _))) => r,
            (None, None) => 1,
        };
        let mut svc = std::mem::take(&mut self.service);
        svc.insert("serviceName".into(), json!(flotilla));
        svc.insert("taskDefinition".into(), json!(flotilla));
        if self.global {
            svc.insert("schedulingStrategy".into(), json!("DAEMON"));
            if let Some((_, at)) = self.replicas.clone().or(self.scale.clone()) {
                self.warn(
                    &at,
                    "not mapped: a global service runs one task on every node",
                );
            }
        } else {
            svc.insert("schedulingStrategy".into(), json!("REPLICA"));
            svc.insert("desiredCount".into(), json!(count));
        }
        // Without `update_config`, Swarm's defaults (parallelism 1, stop-first): a task is
        // stopped before its replacement starts, so a published host port is free for it.
        let update = self
            .update
            .take()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(d) = self.update_config(&update, count) {
            svc.insert("deploymentConfiguration".into(), d);
        }
        if !self.constraints.is_empty() {
            svc.insert(
                "placementConstraints".into(),
                Value::Array(std::mem::take(&mut self.constraints)),
            );
        }
        if let Some(r) = replace {
            svc.insert("completionPolicy".into(), json!({ "replace": r }));
        }
        if !self.strategy.is_empty() {
            svc.insert(
                "placementStrategy".into(),
                Value::Array(std::mem::take(&mut self.strategy)),
            );
        }
        let mut discovery_name = None;
        if mode != "none" {
            let label = label_of(&self.name);
            if !flotilla_api::discovery::is_label(&label) {
                self.problem(
                    &path,
                    format!(
                        "'{}' cannot become a DNS name (1 to 63 of a-z, 0-9 and '-', not at \
                         either end): other services could not reach it",
                        self.name
                    ),
                );
                return None;
            }
            if label != self.name {
                self.warn(
                    &path,
                    format!(
                        "reached by the project's other services as {label} (a DNS name has no \
                         capitals, '_' or '.')"
                    ),
                );
            }
            let mut d = json!({"namespace": self.cx.project, "name": label});
            if let Some(first) = all.first() {
                d["containerPort"] = json!(first.container);
                d["vip"] = json!(self.vip);
                let mut others: Vec<String> = all
                    .iter()
                    .skip(1)
                    .take(MAX_LISTED)
                    .map(|p| format!("{}/{}", p.container, if p.udp { "udp" } else { "tcp" }))
                    .collect();
                if all.len() > MAX_LISTED + 1 {
                    others.push(format!("and {} more", all.len() - MAX_LISTED - 1));
                }
                if self.vip && !others.is_empty() {
                    let at = if all.iter().any(|p| p.path.contains(".ports[")) {
                        self.at("ports")
                    } else {
                        self.at("expose")
                    };
                    self.warn(
                        &at,
                        format!(
                            "only {label}:{} is reached by name from the project's other \
                             services (a service's VIP carries its first port); {} only on the \
                             node's host ports",
                            first.container,
                            others.join(", ")
                        ),
                    );
                }
            }
            svc.insert("discovery".into(), d);
            discovery_name = Some(label);
        }
        let service = Value::Object(svc);

        self.check(&task, &service);
        Some(Mapped {
            plan: ServicePlan {
                name: self.name.clone(),
                service_name: flotilla,
                spec: flotilla_api::project::ProjectService {
                    task_definition: task,
                    service,
                },
                depends_on: std::mem::take(&mut self.depends_on),
                image,
            },
            path,
            healthy_check: self.healthy_check,
            discovery: discovery_name,
            values: std::mem::take(&mut self.values),
            says_replace,
        })
    }

    /// Runs Flotilla's own checks: their problems are this service's, their warnings are put
    /// at the Compose key the field came from.
    fn check(&mut self, task: &Value, service: &Value) {
        match flotilla_api::taskdef::parse(&task.to_string()) {
            Ok(parsed) => {
                for w in parsed.warnings {
                    let line = self.translate(&w);
                    self.cx.warnings.push(line);
                }
            }
            Err(problems) => {
                for p in problems {
                    let line = format!("{}: {}", self.path, p.trim_start_matches("$."));
                    self.cx.problems.push(line);
                }
            }
        }
        match flotilla_api::service::parse(&service.to_string()) {
            Ok(parsed) => {
                for w in parsed.warnings {
                    let line = format!("{}: {}", self.path, w.trim_start_matches("$."));
                    self.cx.warnings.push(line);
                }
            }
            Err(problems) => {
                for p in problems {
                    let line = format!("{}: {}", self.path, p.trim_start_matches("$."));
                    self.cx.problems.push(line);
                }
            }
        }
    }

    /// A task definition's warning at the Compose key its field came from.
    fn translate(&self, w: &str) -> String {
        let (json_path, msg) = w.split_once(": ").unwrap_or(("", w));
        let origin = self
            .origins
            .iter()
            .filter(|(j, _)| {
                json_path == j
                    || json_path.starts_with(&format!("{j}."))
                    || json_path.starts_with(&format!("{j}["))
            })
            .max_by_key(|(j, _)| j.len());
        match origin {
            Some((_, compose)) => format!(
                "{compose}: as {}: {msg}",
                json_path
                    .trim_start_matches("$.")
                    .trim_start_matches("containerDefinitions[0].")
            ),
            None => format!("{}: {}", self.path, w.trim_start_matches("$.")),
        }
    }
}

/// A node label name as the `memberOf` language takes it.
fn is_attribute(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:*".contains(c))
}

/// Checks across services: names that collide on Flotilla, and `service_healthy` on a
/// service without a health check. A service another one waits for with
/// `service_completed_successfully`, and that says nothing of restarts, is a one-shot one: its
/// task that completed is not run again (`completionPolicy` onFailure).
pub fn check_across(cx: &mut Cx, services: &mut [Mapped]) {
    let awaited: BTreeSet<String> = services
        .iter()
        .flat_map(|s| &s.plan.depends_on)
        .filter(|d| d.condition == Condition::CompletedSuccessfully)
        .map(|d| d.service.clone())
        .collect();
    for s in services.iter_mut() {
        if !s.says_replace && awaited.contains(&s.plan.name) {
            if let Value::Object(svc) = &mut s.plan.spec.service {
                svc.insert("completionPolicy".into(), json!({ "replace": "onFailure" }));
            }
        }
    }
    let services = &*services;
    let mut families: BTreeMap<&str, &str> = BTreeMap::new();
    let mut labels: BTreeMap<&str, &str> = BTreeMap::new();
    for s in services {
        if let Some(other) = families.insert(&s.plan.service_name, &s.path) {
            cx.problem(
                &s.path,
                format!("is {} on Flotilla, as {other} is", s.plan.service_name),
            );
        }
        if let Some(d) = &s.discovery {
            if let Some(other) = labels.insert(d, &s.path) {
                cx.problem(&s.path, format!("is reached as {d}, as {other} is"));
            }
        }
    }
    let checked: BTreeMap<&str, bool> = services
        .iter()
        .map(|s| (s.plan.name.as_str(), s.healthy_check))
        .collect();
    for s in services {
        for d in &s.plan.depends_on {
            if d.condition == Condition::Healthy && checked.get(d.service.as_str()) == Some(&false)
            {
                cx.warn(
                    &format!("{}.depends_on.{}", s.path, d.service),
                    format!(
                        "service_healthy, but {} has no healthcheck in the file (Flotilla runs \
                         no image's HEALTHCHECK): it counts as healthy once it runs",
                        d.service
                    ),
                );
            }
        }
    }
}

/// The secrets and configs the services' containers use.
pub fn used_values(services: &[Mapped]) -> BTreeSet<(ValueKind, String)> {
    services
        .iter()
        .flat_map(|s| s.values.iter().cloned())
        .collect()
}
