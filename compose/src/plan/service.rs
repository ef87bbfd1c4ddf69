//! One Compose service: its task definition and its service, key by key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::top::{absolute, Globals};
use super::units::{self, describe, kind, scalar_text};
use super::{Condition, Cx, Dependency, ServicePlan, ValueKind};

/// A task definition needs a memory figure; a service that names none reserves this much (MiB)
/// and has no hard limit, as a Compose service has none.
pub const DEFAULT_MEMORY_RESERVATION: u64 = 128;

/// A tmpfs without `size=` gets this much (MiB): a task definition's tmpfs has a size.
pub const DEFAULT_TMPFS_MIB: u64 = 64;

/// The least memory a container gets (MiB), as the task definition checks it.
const MIN_MEMORY: u64 = 6;

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
            _ => match super::keys::unmapped_service_key(k) {
                Some(why) => self.warn(&p, why),
                None => self.warn(&p, super::keys::NOT_COMPOSE),
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

    /// `/path[:size=64m,mode=1777,…]`.
    fn tmpfs_short(&mut self, p: &str, t: &str) {
        let (target, opts) = t.split_once(':').unwrap_or((t, ""));
        let mut size = None;
        let mut options = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", s)) => match units::bytes(&Value::String(s.into())) {
                    Ok(b) => size = Some(units::mib(b).max(1)),
                    Err(e) => self.problem(p, e),
                },
                _ => options.push(o.to_string()),
            }
        }
        self.add_tmpfs(p, target, size, options);
    }

    fn add_tmpfs(&mut self, p: &str, target: &str, size: Option<u64>, options: Vec<String>) {
        if !target.starts_with('/') {
            self.problem(p, format!("'{target}' is not an absolute path"));
            return;
        }
        let size = size.unwrap_or_else(|| {
            self.warn(
                p,
                format!(
                    "{target}: no size given; a tmpfs on Flotilla has one: {DEFAULT_TMPFS_MIB} MiB \
                     (write {target}:size=…)"
                ),
            );
            DEFAULT_TMPFS_MIB
        });
        let mut t = json!({"containerPath": target, "size": size});
        if !options.is_empty() {
            t["mountOptions"] = json!(options);
        }
        self.tmpfs.push((t, p.to_string()));
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
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
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

    /// Adds the container ports `target` (published on `published`, if given).
    #[allow(clippy::too_many_arguments)]
    fn add_ports(
        &mut self,
        p: &str,
        target: &str,
        published: Option<&str>,
        host_ip: Option<&str>,
        protocol: Option<&str>,
        name: Option<String>,
        exposed: bool,
    ) {
        let udp = match protocol.map(str::to_ascii_lowercase).as_deref() {
            None | Some("tcp") => false,
            Some("udp") => true,
            Some(o) => {
                self.warn(
                    p,
                    format!("'{o}': not mapped: Flotilla publishes tcp and udp ports"),
                );
                return;
            }
        };
        let (t0, t1) = match units::port_range(target) {
            Ok(r) => r,
            Err(e) => {
                self.problem(p, e);
                return;
            }
        };
        let hosts: Option<(u16, u16)> = match published {
            None => None,
            Some(h) => match units::port_range(h) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(p, e);
                    return;
                }
            },
        };
        if let Some(ip) = host_ip {
            if !["0.0.0.0", "::", ""].contains(&ip) {
                self.warn(
                    p,
                    format!(
                        "host address {ip}: published on every address of the node (Flotilla \
                         binds no single address)"
                    ),
                );
            }
        }
        let count = t1 - t0;
        let host_for = |i: u16| -> Option<u16> {
            let (h0, h1) = hosts?;
            if h1 - h0 == count {
                Some(h0 + i)
            } else {
                None
            }
        };
        if let Some((h0, h1)) = hosts {
            if h1 - h0 != count {
                if count == 0 {
                    self.warn(
                        p,
                        format!(
                            "host ports {h0}-{h1}: the node picks the host port from its \
                             dynamic range (a range of host ports is not mapped)"
                        ),
                    );
                } else {
                    self.problem(
                        p,
                        format!("{t0}-{t1} and {h0}-{h1}: ranges of different lengths"),
                    );
                    return;
                }
            }
        }
        if self.network.as_deref() == Some("host") {
            if let Some((h0, _)) = hosts.filter(|(h0, _)| *h0 != t0) {
                self.warn(
                    p,
                    format!(
                        "network_mode host: the container's port {t0} is the node's port (host \
                         port {h0} is not mapped)"
                    ),
                );
            }
        }
        for i in 0..=count {
            let host = if self.network.as_deref() == Some("host") {
                None
            } else {
                host_for(i)
            };
            let port = Port {
                container: t0 + i,
                host,
                udp,
                name: if count == 0 { name.clone() } else { None },
                path: p.to_string(),
            };
            if exposed {
                self.exposed.push(port);
            } else {
                self.ports.push(port);
            }
        }
    }

    fn ports(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match item {
                Value::Number(_) => {
                    let t = scalar_text(item).unwrap_or_default();
                    self.add_ports(&ip, &t, None, None, None, None, false);
                }
                Value::String(s) => match units::short_port(s) {
                    Ok(sp) => self.add_ports(
                        &ip,
                        &sp.target,
                        sp.published.as_deref(),
                        sp.host_ip.as_deref(),
                        sp.protocol.as_deref(),
                        None,
                        false,
                    ),
                    Err(e) => self.problem(&ip, e),
                },
                Value::Object(m) => {
                    let mut target = None;
                    let mut published = None;
                    let mut host_ip = None;
                    let mut protocol = None;
                    let mut name = None;
                    for (k, val) in m {
                        let kp = format!("{ip}.{k}");
                        match k.as_str() {
                            "target" => target = scalar_text(val),
                            "published" => published = scalar_text(val),
                            "host_ip" => host_ip = scalar_text(val),
                            "protocol" => protocol = scalar_text(val),
                            "name" => name = scalar_text(val),
                            "mode" => match val.as_str() {
                                Some("host") => {}
                                Some("ingress") => self.warn(
                                    &kp,
                                    "ingress: published on the nodes that run the service's \
                                     tasks, not on every node (there is no routing mesh)",
                                ),
                                _ => self.problem(&kp, "expected host or ingress"),
                            },
                            "app_protocol" => self
                                .warn(&kp, "not mapped: a port mapping names its transport only"),
                            k if k.starts_with("x-") => {}
                            _ => self.warn(&kp, super::keys::NOT_COMPOSE),
                        }
                    }
                    match target {
                        Some(t) => self.add_ports(
                            &ip,
                            &t,
                            published.as_deref().filter(|p| !p.is_empty()),
                            host_ip.as_deref(),
                            protocol.as_deref(),
                            name,
                            false,
                        ),
                        None => self.problem(&format!("{ip}.target"), "required"),
                    }
                }
                other => self.problem(
                    &ip,
                    format!(
                        "expected a port, a string or a mapping, found {}",
                        kind(other)
                    ),
                ),
            }
        }
    }

    fn expose(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match scalar_text(item) {
                Some(t) => {
                    let (port, proto) = match t.split_once('/') {
                        Some((a, b)) => (a.to_string(), Some(b.to_string())),
                        None => (t.clone(), None),
                    };
                    self.add_ports(&ip, &port, None, None, proto.as_deref(), None, true);
                }
                None => self.problem(&ip, format!("expected a port, found {}", kind(item))),
            }
        }
    }

    /// A task volume, once per name.
    fn task_volume(&mut self, v: Value) {
        let name = v.get("name").cloned();
        if !self
            .task_volumes
            .iter()
            .any(|t| t.get("name") == name.as_ref())
        {
            self.task_volumes.push(v);
        }
    }

    fn mount(&mut self, source: &str, target: &str, read_only: bool) {
        self.mounts
            .push(json!({"sourceVolume": source, "containerPath": target, "readOnly": read_only}));
    }

    /// The task volume of a bind mount of `source` (a host path) for volume entry `i`.
    fn bind(&mut self, p: &str, i: usize, source: &str) -> Option<String> {
        if source.starts_with('~') {
            self.problem(
                p,
                format!("'{source}': a path in a home directory, which the loader expands"),
            );
            return None;
        }
        let abs = absolute(self.cx, source);
        if abs.starts_with(&self.cx.project_dir) {
            self.warn(
                p,
                format!(
                    "{source}: a path on this machine: each node mounts its own {} (below its \
                     bind_roots); a file is better given as a config",
                    abs.display()
                ),
            );
        }
        let name = format!("bind-{i}");
        self.task_volume(json!({"name": name, "host": {"sourcePath": abs.to_string_lossy()}}));
        Some(name)
    }

    /// The task volume of named volume `source`.
    fn named(&mut self, p: &str, source: &str) -> Option<String> {
        match self.g.volumes.get(source) {
            Some(n) => {
                let n = n.clone();
                self.task_volume(json!({"name": n, "dockerVolumeConfiguration":
                    {"scope": "shared", "autoprovision": true}}));
                Some(n)
            }
            None => {
                self.problem(
                    p,
                    format!("volume '{source}' is not declared under the top-level volumes"),
                );
                None
            }
        }
    }

    fn anonymous(&mut self, i: usize) -> String {
        let name = format!("anonymous-{i}");
        self.task_volume(json!({"name": name}));
        name
    }

    fn volumes(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match item {
                Value::String(s) => self.volume_short(&ip, i, s),
                Value::Object(m) => self.volume_long(&ip, i, m),
                other => self.problem(
                    &ip,
                    format!("expected a string or a mapping, found {}", kind(other)),
                ),
            }
        }
    }

    fn volume_short(&mut self, p: &str, i: usize, s: &str) {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, ""),
            [s, t] => (Some(*s), *t, ""),
            [s, t, m] => (Some(*s), *t, *m),
            _ => {
                self.problem(p, format!("'{s}' is not [SOURCE:]TARGET[:MODE]"));
                return;
            }
        };
        if !target.starts_with('/') {
            self.problem(p, format!("'{target}': the target is not an absolute path"));
            return;
        }
        let mut read_only = false;
        let mut other = Vec::new();
        for o in mode.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => read_only = true,
                "rw" => {}
                o => other.push(o),
            }
        }
        if !other.is_empty() {
            self.warn(
                p,
                format!(
                    "{}: not applied (Flotilla does no SELinux relabeling and has no propagation, \
                     consistency or nocopy options)",
                    other.join(", ")
                ),
            );
        }
        let volume = match source {
            Some("") => {
                self.problem(p, format!("'{s}': the source is empty"));
                None
            }
            None => Some(self.anonymous(i)),
            Some(src) if src.starts_with(['/', '.', '~']) => self.bind(p, i, src),
            Some(src) => self.named(p, src),
        };
        if let Some(v) = volume {
            self.mount(&v, target, read_only);
        }
    }

    fn volume_long(&mut self, p: &str, i: usize, m: &Map<String, Value>) {
        let kind_of = m.get("type").and_then(Value::as_str).unwrap_or("");
        let source = m
            .get("source")
            .and_then(scalar_text)
            .filter(|s| !s.is_empty());
        let Some(target) = m.get("target").and_then(scalar_text) else {
            self.problem(&format!("{p}.target"), "required");
            return;
        };
        if !target.starts_with('/') {
            self.problem(
                &format!("{p}.target"),
                format!("'{target}' is not an absolute path"),
            );
            return;
        }
        let mut read_only = false;
        let mut tmpfs_size = None;
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                "type" | "source" | "target" => {}
                k if k.starts_with("x-") => {}
                "read_only" => read_only = self.boolean(&kp, val).unwrap_or(false),
                "consistency" => self.warn(&kp, "not mapped: mounts have no consistency options"),
                "bind" | "volume" | "tmpfs" | "image" => {
                    let Some(sub) = val.as_object() else {
                        if !val.is_null() {
                            self.problem(&kp, format!("expected a mapping, found {}", kind(val)));
                        }
                        continue;
                    };
                    for (sk, sv) in sub {
                        let sp = format!("{kp}.{sk}");
                        match (k.as_str(), sk.as_str()) {
                            (_, x) if x.starts_with("x-") => {}
                            ("tmpfs", "size") => match units::bytes(sv) {
                                Ok(b) => tmpfs_size = Some(units::mib(b).max(1)),
                                Err(e) => self.problem(&sp, e),
                            },
                            ("bind", "create_host_path") => {
                                if units::boolean(sv).unwrap_or(true) {
                                    self.warn(
                                        &sp,
                                        "not mapped: a node does not create a missing bind \
                                         source; the task fails to start",
                                    );
                                }
                            }
                            ("bind", "selinux") => {
                                self.warn(&sp, "not mapped: Flotilla does no SELinux relabeling")
                            }
                            ("volume", "nocopy") => {
                                self.warn(&sp, "not mapped: Flotilla has no nocopy option")
                            }
                            ("tmpfs", "mode")
                            | ("bind", "propagation" | "recursive")
                            | ("volume", "subpath" | "labels")
                            | ("image", "subpath") => self.warn(&sp, "not mapped"),
                            _ => self.warn(&sp, super::keys::NOT_COMPOSE),
                        }
                    }
                }
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
            }
        }
        let volume = match (kind_of, source.as_deref()) {
            ("volume", None) => Some(self.anonymous(i)),
            ("volume", Some(s)) => self.named(p, s),
            ("bind", Some(s)) => self.bind(p, i, s),
            ("bind", None) => {
                self.problem(&format!("{p}.source"), "required for a bind mount");
                None
            }
            ("tmpfs", _) => {
                self.add_tmpfs(p, &target, tmpfs_size, Vec::new());
                None
            }
            ("npipe" | "cluster" | "image", _) => {
                self.warn(
                    &format!("{p}.type"),
                    format!("{kind_of}: not mapped: mounts are binds, volumes and tmpfs"),
                );
                None
            }
            (t, _) => {
                self.problem(
                    &format!("{p}.type"),
                    format!("'{t}' is not volume, bind or tmpfs"),
                );
                None
            }
        };
        if let Some(v) = volume {
            self.mount(&v, &target, read_only);
        }
    }

    fn deploy(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                k if k.starts_with("x-") => {}
                "mode" => match val.as_str() {
                    Some("replicated") => {}
                    Some("global") => self.global = true,
                    Some(j @ ("replicated-job" | "global-job")) => {
                        self.global = j == "global-job";
                        self.warn(
                            &kp,
                            format!(
                                "{j}: run as a service: Flotilla replaces its tasks when they \
                                 exit (run a one-off with `flotilla task run`)"
                            ),
                        );
                    }
                    _ => self.problem(&kp, "expected replicated or global"),
                },
                "replicas" => match units::integer(val, 0, 10_000) {
                    Ok(n) => self.replicas = Some((n as u32, kp)),
                    Err(e) => self.problem(&kp, e),
                },
                "endpoint_mode" => match val.as_str() {
                    Some("vip") => {}
                    Some("dnsrr") => {
                        self.vip = false;
                        self.warn(
                            &kp,
                            "dnsrr: the name answers with the tasks' node addresses; each task \
                             is reached on its host port (its SRV record), not on the container \
                             port",
                        );
                    }
                    _ => self.problem(&kp, "expected vip or dnsrr"),
                },
                "labels" => self.warn(
                    &kp,
                    "not mapped: Flotilla services have no labels (container labels are labels)",
                ),
                "resources" => self.resources(&kp, val),
                "restart_policy" => self.restart_policy(&kp, val),
                "placement" => self.placement(&kp, val),
                "update_config" => self.update = Some(val.clone()),
                "rollback_config" => self.warn(
                    &kp,
                    "not mapped: a rollback deploys the last completed revision as any \
                     deployment is rolled out",
                ),
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
            }
        }
    }

    fn resources(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            let limits = match k.as_str() {
                k if k.starts_with("x-") => continue,
                "limits" => true,
                "reservations" => false,
                _ => {
                    self.warn(&kp, super::keys::NOT_COMPOSE);
                    continue;
                }
            };
            let Some(r) = val.as_object() else {
                if !val.is_null() {
                    self.problem(&kp, format!("expected a mapping, found {}", kind(val)));
                }
                continue;
            };
            for (rk, rv) in r {
                let rp = format!("{kp}.{rk}");
                match rk.as_str() {
                    x if x.starts_with("x-") => {}
                    "memory" => match units::bytes(rv) {
                        Ok(0) => {}
                        Ok(b) if units::mib(b) < MIN_MEMORY => self.problem(
                            &rp,
                            format!(
                                "{}: less than the {MIN_MEMORY} MiB a container needs",
                                describe(rv)
                            ),
                        ),
                        Ok(b) => {
                            let slot = Some((units::mib(b), rp));
                            if limits {
                                self.memory = slot;
                            } else {
                                self.reservation = slot;
                            }
                        }
                        Err(e) => self.problem(&rp, e),
                    },
                    "cpus" => match units::number(rv) {
                        Ok(n) if n <= 0.0 => {}
                        Ok(n) if limits => self.cpu_limit = Some((n, rp)),
                        Ok(n) => {
                            let units = (n * 1024.0).round().max(1.0) as u32;
                            if let Some((_, at)) = &self.cpu_weight {
                                let at = at.clone();
                                self.warn(&at, format!("overridden by {rp}"));
                            }
                            self.cpu_weight = Some((units, rp));
                        }
                        Err(e) => self.problem(&rp, e),
                    },
                    "pids" if limits => self.warn(&rp, "not mapped: Flotilla sets no pids limit"),
                    "generic_resources" | "devices" if !limits => self.warn(
                        &rp,
                        "not mapped: placement counts memory and CPU only; no device is passed \
                         to containers",
                    ),
                    _ => self.warn(&rp, super::keys::NOT_COMPOSE),
                }
            }
        }
    }

    fn restart_policy(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        // Swarm's default condition is any.
        let mut r = Restart {
            enabled: true,
            ignore_success: false,
            period: None,
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "condition" => match val.as_str() {
                    Some("any") => {}
                    Some("on-failure") => r.ignore_success = true,
                    Some("none") => r.enabled = false,
                    _ => self.problem(&kp, "expected none, on-failure or any"),
                },
                "delay" => self.warn(
                    &kp,
                    "not mapped: the node waits 1 s, doubling to 5 minutes, between restarts",
                ),
                "max_attempts" => self.warn(
                    &kp,
                    "not mapped: the node keeps restarting a failing container, ever more slowly",
                ),
                "window" => match units::duration(val) {
                    Ok(secs) => {
                        let want = units::whole_seconds(secs);
                        let got = want.clamp(60, 1800);
                        if got != want {
                            self.warn(
                                &kp,
                                format!(
                                    "{}: {got} s on Flotilla (restartAttemptPeriod: a run of at \
                                     least 60 to 1800 s counts as a success)",
                                    describe(val)
                                ),
                            );
                        }
                        r.period = Some(got as u32);
                    }
                    Err(e) => self.problem(&kp, e),
                },
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
            }
        }
        self.deploy_restart = Some((r, p.to_string()));
    }

    fn placement(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "constraints" => match units::string_or_list(val) {
                    Ok(list) => {
                        for (i, c) in list.iter().enumerate() {
                            self.constraint(&format!("{kp}[{i}]"), c);
                        }
                    }
                    Err(e) => self.problem(&kp, e),
                },
                "preferences" => {
                    let Some(items) = val.as_array() else {
                        self.problem(&kp, format!("expected a list, found {}", kind(val)));
                        continue;
                    };
                    for (i, pref) in items.iter().enumerate() {
                        let pp = format!("{kp}[{i}]");
                        match pref.get("spread").and_then(Value::as_str) {
                            Some(s) => match s.strip_prefix("node.labels.") {
                                Some(label) if is_attribute(label) => self.strategy.push(
                                    json!({"type": "spread", "field": format!("attribute:{label}")}),
                                ),
                                _ => self.warn(
                                    &pp,
                                    format!(
                                        "spread over '{s}': not mapped: tasks spread over node \
                                         labels (node.labels.NAME)"
                                    ),
                                ),
                            },
                            None => self.problem(&pp, "expected {spread: node.labels.NAME}"),
                        }
                    }
                }
                "max_replicas_per_node" => match units::integer(val, 0, i64::MAX) {
                    Ok(1) => self.constraints.push(json!({"type": "distinctInstance"})),
                    Ok(0) => {}
                    Ok(n) => self.warn(
                        &kp,
                        format!(
                            "{n}: not mapped: Flotilla bounds tasks per node to one \
                             (distinctInstance) or none"
                        ),
                    ),
                    Err(e) => self.problem(&kp, e),
                },
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
            }
        }
    }

    /// `node.labels.K == V` or `!=`: a `memberOf` on the node's label.
    fn constraint(&mut self, p: &str, c: &str) {
        let parsed = ["==", "!="]
            .into_iter()
            .find_map(|op| c.split_once(op).map(|(l, r)| (l.trim(), op, r.trim())));
        let Some((lhs, op, value)) = parsed else {
            self.problem(
                p,
                format!("'{c}' is not ATTRIBUTE == VALUE or ATTRIBUTE != VALUE"),
            );
            return;
        };
        let Some(label) = lhs.strip_prefix("node.labels.") else {
            self.warn(
                p,
                format!(
                    "'{c}': not mapped: a node's only attributes are its labels (`flotilla node \
                     label`): write node.labels.NAME {op} VALUE"
                ),
            );
            return;
        };
        let quoted = if value
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-/:*".contains(ch))
            && !value.is_empty()
        {
            value.to_string()
        } else if !value.contains('"') {
            format!("\"{value}\"")
        } else if !value.contains('\'') {
            format!("'{value}'")
        } else {
            self.warn(
                p,
                format!("'{c}': not mapped: the value has both kinds of quote"),
            );
            return;
        };
        if !is_attribute(label) {
            self.warn(
                p,
                format!(
                    "'{c}': not mapped: '{label}' cannot be an attribute name (letters, digits \
                     and ._-/:*)"
                ),
            );
            return;
        }
        self.constraints.push(
            json!({"type": "memberOf", "expression": format!("attribute:{label} {op} {quoted}")}),
        );
    }

    fn secrets(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let Some((source, target, mode, uid, gid)) = self.reference(&ip, item) else {
                continue;
            };
            let Some(flotilla) = self.g.secrets.get(&source).cloned() else {
                self.problem(
                    &ip,
                    format!("secret '{source}' is not declared under the top-level secrets"),
                );
                continue;
            };
            // Compose's target: a file name under /run/secrets, or an absolute path.
            let name = match target.as_deref() {
                None => source.clone(),
                Some(t) => match t.strip_prefix("/run/secrets/") {
                    Some(n) if !n.contains('/') => n.to_string(),
                    _ if !t.starts_with('/') => t.to_string(),
                    _ => {
                        let file = t.rsplit('/').next().unwrap_or(t).to_string();
                        self.warn(
                            &format!("{ip}.target"),
                            format!(
                                "'{t}': a secret is the file /run/secrets/NAME on Flotilla: it \
                                 is /run/secrets/{file}"
                            ),
                        );
                        file
                    }
                },
            };
            let mut s = json!({"name": name, "valueFrom": format!("flotilla:{flotilla}"),
                               "environment": false});
            if let Some(m) = mode {
                s["mode"] = json!(format!("{m:04o}"));
            }
            if let Some(u) = uid {
                s["uid"] = json!(u);
            }
            if let Some(g) = gid {
                s["gid"] = json!(g);
            }
            self.origin(format!("{C}.secrets[{}]", out.len()), ip);
            out.push(s);
            self.values.push((ValueKind::Secret, flotilla));
        }
        if !out.is_empty() {
            self.container.insert("secrets".into(), Value::Array(out));
        }
    }

    fn configs(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let Some((source, target, mode, uid, gid)) = self.reference(&ip, item) else {
                continue;
            };
            let Some(flotilla) = self.g.configs.get(&source).cloned() else {
                self.problem(
                    &ip,
                    format!("config '{source}' is not declared under the top-level configs"),
                );
                continue;
            };
            let target = match target {
                None => format!("/{source}"),
                Some(t) if t.starts_with('/') => t,
                Some(t) => format!("/{t}"),
            };
            let mut c = json!({"source": flotilla, "target": target});
            if let Some(m) = mode {
                c["mode"] = json!(format!("{m:04o}"));
            }
            if let Some(u) = uid {
                c["uid"] = json!(u);
            }
            if let Some(g) = gid {
                c["gid"] = json!(g);
            }
            self.origin(format!("{C}.configs[{}]", out.len()), ip);
            out.push(c);
            self.values.push((ValueKind::Config, flotilla));
        }
        if !out.is_empty() {
            self.container.insert("configs".into(), Value::Array(out));
        }
    }

    /// A secret or config reference: `- NAME` or `{source, target, uid, gid, mode}`.
    fn reference(&mut self, p: &str, item: &Value) -> Option<Reference> {
        match item {
            Value::String(s) => Some((s.clone(), None, None, None, None)),
            Value::Object(m) => {
                let mut out = (None, None, None, None, None);
                for (k, v) in m {
                    let kp = format!("{p}.{k}");
                    match k.as_str() {
                        x if x.starts_with("x-") => {}
                        "source" => out.0 = self.text(&kp, v),
                        "target" => out.1 = self.text(&kp, v),
                        "mode" => match units::mode(v) {
                            Ok(m) => out.2 = Some(m),
                            Err(e) => self.problem(&kp, e),
                        },
                        "uid" | "gid" => match units::id(v) {
                            Ok(n) if k == "uid" => out.3 = Some(n),
                            Ok(n) => out.4 = Some(n),
                            Err(e) => self.problem(&kp, e),
                        },
                        _ => self.warn(&kp, super::keys::NOT_COMPOSE),
                    }
                }
                match out.0 {
                    Some(s) => Some((s, out.1, out.2, out.3, out.4)),
                    None => {
                        self.problem(&format!("{p}.source"), "required");
                        None
                    }
                }
            }
            other => {
                self.problem(
                    p,
                    format!("expected a name or a mapping, found {}", kind(other)),
                );
                None
            }
        }
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
                    _ => self.warn(&kp, super::keys::NOT_COMPOSE),
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

    /// The deployment configuration `update_config` asks for, for `count` tasks.
    fn update_config(&mut self, v: &Value, count: u32) -> Option<Value> {
        let p = self.at("deploy.update_config");
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(&p, format!("expected a mapping, found {}", kind(v)));
            }
            return None;
        };
        let mut parallelism: u64 = 1;
        let mut start_first = false;
        let mut breaker: Option<Value> = None;
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "parallelism" => match units::integer(val, 0, i64::MAX) {
                    Ok(n) => parallelism = n as u64,
                    Err(e) => self.problem(&kp, e),
                },
                "order" => match val.as_str() {
                    Some("start-first") => start_first = true,
                    Some("stop-first") => {}
                    _ => self.problem(&kp, "expected start-first or stop-first"),
                },
                "failure_action" => match val.as_str() {
                    Some("rollback") => breaker = Some(json!({"enable": true, "rollback": true})),
                    Some("pause") => breaker = Some(json!({"enable": true, "rollback": false})),
                    Some("continue") => {}
                    _ => self.problem(&kp, "expected continue, pause or rollback"),
                },
                "delay" => self.warn(
                    &kp,
                    "not mapped: a deployment starts new tasks as soon as the bounds allow",
                ),
                "monitor" | "max_failure_ratio" => self.warn(
                    &kp,
                    "not mapped: the circuit breaker (failure_action) stops a deployment whose \
                     tasks keep failing: half the desired count, at least 3",
                ),
                _ => self.warn(&kp, super::keys::NOT_COMPOSE),
            }
        }
        let mut d = Map::new();
        if self.global {
            if start_first {
                self.warn(
                    &format!("{p}.order"),
                    "start-first: not mapped for a global service: a node's task is stopped \
                     before its replacement starts",
                );
            }
        } else if count > 0 {
            let n = u64::from(count);
            // Tasks replaced at once: parallelism, all of them for 0.
            let step = if parallelism == 0 {
                n
            } else {
                parallelism.min(n)
            };
            if start_first {
                d.insert("minimumHealthyPercent".into(), json!(100));
                d.insert(
                    "maximumPercent".into(),
                    json!(100 + (step * 100).div_ceil(n)),
                );
            } else {
                d.insert("minimumHealthyPercent".into(), json!((n - step) * 100 / n));
                d.insert("maximumPercent".into(), json!(100));
            }
        }
        if let Some(b) = breaker {
            d.insert("deploymentCircuitBreaker".into(), b);
        }
        (!d.is_empty()).then_some(Value::Object(d))
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
                self.problem(
                    &self.at("build"),
                    "Flotilla runs images; give image: (build and push it yourself)",
                );
                return None;
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
            } else {
                self.warn(
                    &at,
                    "the container is not restarted in place, but a Flotilla service starts a \
                     new task when its task stops (run a one-off with `flotilla task run`)",
                );
            }
        }

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
            for port in given {
                match all
                    .iter()
                    .find(|a| a.container == port.container && a.udp == port.udp)
                {
                    Some(first) if port.path.contains(".ports[") => {
                        let first = first.path.clone();
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
                    None => all.push(port),
                }
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
        if let Some(u) = self.update.take() {
            if let Some(d) = self.update_config(&u, count) {
                svc.insert("deploymentConfiguration".into(), d);
            }
        }
        if !self.constraints.is_empty() {
            svc.insert(
                "placementConstraints".into(),
                Value::Array(std::mem::take(&mut self.constraints)),
            );
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
                let others: Vec<String> = all
                    .iter()
                    .skip(1)
                    .map(|p| format!("{}/{}", p.container, if p.udp { "udp" } else { "tcp" }))
                    .collect();
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
/// service without a health check.
pub fn check_across(cx: &mut Cx, services: &[Mapped]) {
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
