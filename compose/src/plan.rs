//! Mapping a loaded project onto Flotilla's task definitions and services.
//!
//! Each Compose service becomes one task definition with one container named after the
//! service, and one service, both named `PROJECT-SERVICE` (the family is the service's name).
//! The project is the services' discovery namespace. Every key of the document is acted on,
//! warned about with its path, or refused with its path: nothing is dropped silently.
//!
//! Sources: the Compose specification (<https://github.com/compose-spec/compose-spec>,
//! `spec.md`, `deploy.md`, `schema/compose-spec.json`), and the inputs of Amazon ECS's
//! `RegisterTaskDefinition` and `CreateService`
//! (<https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html>,
//! `API_ContainerDefinition.html`, `API_CreateService.html`) as Flotilla reads them
//! (`flotilla_api::taskdef`, `flotilla_api::service`, README: task definitions, services,
//! *Secrets*, *Service discovery and VIPs*).
//!
//! | Compose | Flotilla |
//! |---|---|
//! | service `NAME` | family and service `PROJECT-NAME` (`.` → `-`), container `NAME` |
//! | any `ports`/`expose` | `discovery: {namespace: PROJECT, name: NAME, containerPort: FIRST, vip: true}`: other services reach `NAME:FIRST` as on a laptop; a VIP carries one port, so a service with several ports gets a warning naming the one reachable by name |
//! | no port | `discovery: {namespace: PROJECT, name: NAME}` (DNS answers with the tasks' addresses), warned in bridge mode: other services cannot reach it by name (nothing listens at the node's address); `network_mode: none`: none |
//! | a name with `_`, `.` or capitals | discovery name lowercased, `_` and `.` → `-`, with a warning; one that is still no DNS label is refused |
//! | `image` | `image` (required: `build` alone is refused, `build` beside `image` warned) |
//! | `command`, `entrypoint` | `command`, `entryPoint` (a string split as a shell splits words) |
//! | `environment` | `environment` (numbers and booleans as strings) |
//! | `labels` | `dockerLabels` |
//! | `user`, `working_dir`, `hostname`, `privileged` | `user`, `workingDirectory`, `hostname`, `privileged` |
//! | `read_only` | `readonlyRootFilesystem` |
//! | `dns`, `dns_search`, `extra_hosts`, `sysctls` | `dnsServers`, `dnsSearchDomains`, `extraHosts`, `systemControls` |
//! | `tty`, `stdin_open` | `pseudoTerminal`, `interactive` |
//! | `init`, `cap_add`, `cap_drop`, `shm_size`, `tmpfs` | `linuxParameters`: `initProcessEnabled`, `capabilities`, `sharedMemorySize` (MiB), `tmpfs` (`size=` in MiB, 64 MiB when none; other options as `mountOptions`) |
//! | `ulimits` | `ulimits` (`nproc: N` is soft and hard) |
//! | `network_mode` `bridge`/`host`/`none` | `networkMode` (default `bridge`); `service:X`, `container:X` warned |
//! | `stop_grace_period` | `stopTimeout` (seconds, 2–120); none given: 10, Compose's default (Flotilla's own is 30) |
//! | `healthcheck` | `healthCheck` (a string test is `CMD-SHELL`; Compose's defaults 30 s, 30 s, 3, 0 s when left out; `disable`/`NONE`: none) |
//! | `ports` | `portMappings` (`containerPort`, `hostPort`, `protocol`; ranges one mapping per port) |
//! | `expose` | `portMappings` with `containerPort` only (a host port from the node's dynamic range), warned: it is published on every address of the node, the LAN included (there is no internal-only network yet) |
//! | `volumes`: named | task volume `PROJECT_NAME` (external or `name:`: that name) with `dockerVolumeConfiguration {scope: shared, autoprovision: true}`, and a mount point |
//! | `volumes`: anonymous | a task volume that lives as long as the task |
//! | `volumes`: bind | a task volume with `host.sourcePath` (below the node's `bind_roots`); a source in the project directory or written with `~` ([`Loaded::home_paths`]) is warned as a path of this machine |
//! | `volumes`: tmpfs | `linuxParameters.tmpfs` |
//! | `mem_limit`, `deploy.resources.limits.memory` | container `memory` (MiB) |
//! | `mem_reservation`, `deploy.resources.reservations.memory` | container `memoryReservation` (MiB); with neither, a reservation of 128 MiB (a task definition needs one) |
//! | `cpus`, `deploy.resources.limits.cpus` | task `cpu` (cpus × 1024 units, a hard limit as Compose's) |
//! | `deploy.resources.reservations.cpus`, else `cpu_shares` | container `cpu` (units: the task's weight and reservation) |
//! | `deploy.replicas`, `scale` | `desiredCount` (default 1) |
//! | `deploy.mode: global` | `schedulingStrategy: DAEMON` |
//! | `deploy.endpoint_mode: dnsrr` | discovery without a VIP |
//! | `deploy.placement.constraints` `node.labels.K == V` / `!=` | service `placementConstraints` `memberOf` `attribute:K == V` (node labels are the attributes) |
//! | `deploy.placement.preferences` `spread: node.labels.K` | `placementStrategy` `spread` `attribute:K` |
//! | `deploy.placement.max_replicas_per_node: 1` | `distinctInstance` |
//! | `deploy.update_config` `order`, `parallelism` | `deploymentConfiguration`: `start-first` → minimum 100 %, maximum 100 % + parallelism; `stop-first` (Swarm's default) → maximum 100 %, minimum 100 % − parallelism |
//! | `deploy.update_config.failure_action` | `rollback` → circuit breaker with rollback; `pause` → circuit breaker |
//! | `restart`, `deploy.restart_policy` | the container's `restartPolicy`: `always`/`unless-stopped`/`any` → enabled; `on-failure` → enabled but exit code 0 ignored; `no`/`none` → none (the node does not restart it in place); `window` → `restartAttemptPeriod` (60–1800 s). And the service's `completionPolicy.replace`: `no`/`none` → `never` (a task that stopped is not run again), `on-failure` → `onFailure` (one that completed, exit code 0, is not) |
//! | `deploy.mode: replicated-job` / `global-job` | as `replicated` / `global`, with `completionPolicy.replace: onFailure` (unless `restart_policy` says `none`) |
//! | the target of a `service_completed_successfully` with no `restart` nor `restart_policy` | `completionPolicy.replace: onFailure` |
//! | service `secrets` | container `secrets` `{name: TARGET or SOURCE, valueFrom: "flotilla:SECRET", environment: false, mode, uid, gid}`: the file `/run/secrets/NAME`, never a variable |
//! | top-level `secrets` | `external`: that Flotilla secret as it is named; `file`/`environment`: secret `PROJECT-NAME` (or its `name:`) and a [`ValueSource`] |
//! | service `configs` | container `configs` `{source: CONFIG, target (default /NAME), mode, uid, gid}` |
//! | top-level `configs` | as secrets, also `content` |
//! | `depends_on` | [`Dependency`] list; [`stages`] orders the start |
//! | `container_name` | warned: Flotilla names tasks; the service is reached by its name |
//! | `x-*`, top-level `name`, `version`, `profiles` | ignored (the loader read them) |
//!
//! Every other key is a warning naming its path and why (`services.web.networks`: every service
//! of a project reaches every other, networks are not separated). A key the Compose
//! specification does not have where it is written is a refusal (`config` shows it, `up`
//! refuses), with the key of that place it likely misspells, found as `flotilla taskdef
//! register` finds one (`flotilla_api::config::nearest`): `services.web.comand: not a Compose
//! key (did you mean 'command'?)`; a misspelled key would otherwise deploy a broken service. A value of the wrong type is a problem naming
//! its path. Each task definition and service is then checked by `flotilla_api`'s own parsers;
//! what they refuse is a problem of the Compose service, and what they warn about (a field
//! Flotilla accepts but does not act on yet, such as `dockerLabels`) is a warning at the
//! Compose key it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::Loaded;

mod keys;
mod service;
mod top;
mod units;

#[cfg(test)]
mod tests;

/// What a project becomes on the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The project (the discovery namespace of its services).
    pub project: String,
    /// Its services, by Compose name.
    pub services: Vec<ServicePlan>,
    /// The secrets and configs the services use that `compose up` makes when missing, by kind
    /// and name.
    pub values: Vec<ValueSource>,
    /// Keys that do not map, one line per key path (`PATH: why`), in the order of their paths.
    pub warnings: Vec<String>,
    /// What `compose up` refuses although the project maps (`config` shows it as a warning):
    /// a service with only `build:`, a key that is not a Compose key (`PATH: why`), in the
    /// order of their paths. Its service is planned with the image name
    /// Compose would give the build, `PROJECT-SERVICE`, so the rest of it is checked too.
    pub refusals: Vec<String>,
}

/// One Compose service on the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    /// The Compose name.
    pub name: String,
    /// The Flotilla service and task definition family: `PROJECT-NAME`.
    pub service_name: String,
    /// The task definition and the service, as `PUT /v1/projects/{name}` takes them.
    pub spec: flotilla_api::project::ProjectService,
    /// The services it waits for.
    pub depends_on: Vec<Dependency>,
    /// Its image.
    pub image: String,
}

/// A service another one waits for (`depends_on`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// The Compose name of the service waited for.
    pub service: String,
    /// What it must have done.
    pub condition: Condition,
    /// False: start anyway when it is missing or fails.
    pub required: bool,
}

/// `depends_on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Condition {
    /// `service_started`.
    Started,
    /// `service_healthy`.
    Healthy,
    /// `service_completed_successfully`.
    CompletedSuccessfully,
}

/// A secret or config the project uses, and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ValueSource {
    /// Secret or config.
    pub kind: ValueKind,
    /// The Flotilla secret's or config's name.
    pub name: String,
    /// Where `compose up` reads its value when it is missing.
    pub origin: ValueOrigin,
}

/// Which store a value goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ValueKind {
    /// `flotilla secret`.
    Secret,
    /// `flotilla config`.
    Config,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ValueOrigin {
    /// A file's bytes (an absolute path).
    File(PathBuf),
    /// The document's own text (a config's `content`).
    Content(String),
    /// The variable of that name in the environment `compose up` runs in (read by the CLI).
    Environment(String),
}

/// Maps a loaded project.
///
/// # Errors
/// Every problem found, each naming its key path.
pub fn plan(loaded: &Loaded) -> Result<Plan, Vec<String>> {
    let document = units::to_json(&loaded.document);
    let mut cx = Cx {
        project: loaded.name.clone(),
        project_dir: loaded.project_dir.clone(),
        home_paths: loaded.home_paths.clone(),
        problems: Vec::new(),
        warnings: Vec::new(),
        refusals: Vec::new(),
    };
    if !flotilla_api::discovery::is_label(&cx.project) {
        cx.problem(
            "name",
            format!(
                "project name '{}' is not a DNS label (1 to 63 of a-z, 0-9 and '-', not at \
                 either end): it is the services' discovery namespace",
                cx.project
            ),
        );
    }
    let Some(doc) = document.as_object() else {
        return Err(vec![format!(
            "the document is {}, not a mapping",
            units::kind(&document)
        )]);
    };
    let globals = top::read(&mut cx, doc);
    let mut services = Vec::new();
    if let Some(list) = doc.get("services") {
        match list {
            serde_json::Value::Object(m) => {
                let names: BTreeSet<&str> = m.keys().map(String::as_str).collect();
                for (name, def) in m {
                    if let Some(s) = service::map(&mut cx, &globals, &names, name, def) {
                        services.push(s);
                    }
                }
            }
            serde_json::Value::Null => {}
            other => cx.problem(
                "services",
                format!("expected a mapping, found {}", units::kind(other)),
            ),
        }
    }
    if services.is_empty() && cx.problems.is_empty() {
        cx.problem("services", "the project has no service");
    }
    service::check_across(&mut cx, &mut services);
    let used = service::used_values(&services);
    let values: Vec<ValueSource> = globals
        .values
        .iter()
        .filter(|v| used.contains(&(v.kind, v.name.clone())))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !cx.problems.is_empty() {
        cx.problems.sort_by_cached_key(|p| path_order(p));
        cx.problems.dedup();
        return Err(cx.problems);
    }
    cx.warnings.sort_by_cached_key(|w| path_order(w));
    cx.warnings.dedup();
    cx.refusals.sort_by_cached_key(|r| path_order(r));
    cx.refusals.dedup();
    services.sort_by(|a, b| a.plan.name.cmp(&b.plan.name));
    let max = flotilla_api::project::MAX_SERVICES;
    if services.len() > max {
        // Refused before anything is applied: `up` applies stage by stage, and the control
        // plane would refuse only the stage that went past the bound.
        cx.refusals.push(format!(
            "services: {} services; a project has at most {max}",
            services.len()
        ));
    }
    // The last stage's apply carries every service: when it fits, every earlier one does.
    let all = flotilla_api::project::ProjectApply {
        services: services.iter().map(|s| s.plan.spec.clone()).collect(),
        remove_orphans: false,
    };
    let bytes = serde_json::to_vec(&all).map_or(usize::MAX, |b| b.len());
    let most = flotilla_api::project::MAX_APPLY_BYTES;
    if bytes > most {
        cx.refusals.push(format!(
            "services: the project is {bytes} bytes as the control plane receives it; it takes \
             at most {most} (large environments? env_file inlines every variable)"
        ));
    }
    let plan = Plan {
        project: cx.project,
        services: services.into_iter().map(|s| s.plan).collect(),
        values,
        warnings: one_per_path(cx.warnings),
        refusals: cx.refusals,
    };
    // A cycle is an error here, as in `docker compose config`, not once `up` has started.
    stages(&plan).map_err(|e| vec![format!("services: {e}")])?;
    Ok(plan)
}

/// Sorted warnings with those at the same key path joined into one line (`PATH: A; B`): one
/// warning per key, however many of its parts do not map (a bind source on this machine and
/// its `:Z`, say).
fn one_per_path(sorted: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(sorted.len());
    for w in sorted {
        let (path, msg) = w.split_once(": ").unwrap_or((w.as_str(), ""));
        // Sorted by their whole text, lines of one path are next to each other.
        if let Some(last) = out.last_mut() {
            if last.split_once(": ").is_some_and(|(p, _)| p == path) {
                last.push_str("; ");
                last.push_str(msg);
                continue;
            }
        }
        out.push(w);
    }
    out
}

/// Start order: groups of Compose service names, each group depending only on earlier groups
/// (each sorted by name); dependencies on services not in the plan are left out.
///
/// # Errors
/// A `depends_on` cycle, naming its services in order.
pub fn stages(plan: &Plan) -> Result<Vec<Vec<String>>, String> {
    let names: BTreeSet<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    let deps: BTreeMap<&str, BTreeSet<&str>> = plan
        .services
        .iter()
        .map(|s| {
            let d = s
                .depends_on
                .iter()
                .map(|d| d.service.as_str())
                .filter(|d| names.contains(d) && *d != s.name)
                .collect();
            (s.name.as_str(), d)
        })
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < deps.len() {
        let ready: Vec<&str> = deps
            .iter()
            .filter(|(n, d)| !done.contains(*n) && d.iter().all(|x| done.contains(x)))
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            return Err(cycle(&deps, &done));
        }
        done.extend(ready.iter().copied());
        out.push(ready.into_iter().map(str::to_string).collect());
    }
    Ok(out)
}

/// The message for a cycle among the services not `done`: one cycle, named in order.
fn cycle(deps: &BTreeMap<&str, BTreeSet<&str>>, done: &BTreeSet<&str>) -> String {
    // Every service left waits for another one left: walking first dependencies from any of
    // them must come back to a service already seen.
    let Some(start) = deps.keys().find(|n| !done.contains(*n)) else {
        return "depends_on forms a cycle".into();
    };
    let mut path: Vec<&str> = vec![start];
    let mut at = *start;
    loop {
        let Some(next) = deps
            .get(at)
            .and_then(|d| d.iter().find(|x| !done.contains(*x)))
        else {
            return "depends_on forms a cycle".into();
        };
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut ring: Vec<&str> = path[i..].to_vec();
            ring.push(next);
            return format!(
                "depends_on forms a cycle: {} (each waits for the next)",
                ring.join(" → ")
            );
        }
        path.push(next);
        at = next;
    }
}

/// A message's sort key: list indices compare as numbers (`volumes[2]` before `volumes[10]`).
fn path_order(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut digits = String::new();
    let mut in_index = false;
    for c in line.chars() {
        if in_index && c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if in_index {
            out.push_str(&format!("{digits:0>10}"));
            digits.clear();
        }
        in_index = c == '[';
        out.push(c);
    }
    if in_index {
        out.push_str(&format!("{digits:0>10}"));
    }
    out
}

/// What the mapping collects as it goes.
pub(crate) struct Cx {
    pub project: String,
    pub project_dir: PathBuf,
    /// Bind sources the loader made from `~`, with what was written.
    pub home_paths: BTreeMap<String, String>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub refusals: Vec<String>,
}

impl Cx {
    pub fn problem(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{path}: {msg}"));
    }

    pub fn warn(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {msg}"));
    }

    /// `key`, at `path`, is not a Compose key where it is: a refusal naming the key of `known`
    /// it likely misspells.
    pub fn not_compose(&mut self, path: &str, key: &str, known: &[&str]) {
        self.refusals
            .push(format!("{path}: {}", keys::not_compose(key, known)));
    }
}
