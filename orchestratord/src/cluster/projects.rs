//! Projects: a group of services applied together in one command (`PUT /v1/projects/{name}`,
//! what `compose up` sends), so one store transaction: every task definition and service of
//! the project changes, or — at any refusal — nothing does.
//!
//! A project is no record of its own: it is the `project` of the services its applies created
//! ([`ServiceRecord::project`]), and it exists while it has one. An apply works only on its
//! own services: a service of the same name made by hand (`service create`) or by another
//! project is refused, never taken over.
//!
//! The changes are the service API's own, through the same functions (`operator.rs`): a task
//! definition is registered as `POST /v1/taskdefs` registers it (`taskdef.registered`) unless
//! its family's newest active revision is equal; a service is created as `POST /v1/services`
//! creates it (`service.created`); an existing one gets a new deployment
//! (`service.deployment.started`) when its revision differs, a new count (`service.scaled`),
//! and its other settings (`service.updated`, naming them); an orphan is deleted as
//! `DELETE /v1/services/{name}` deletes it (`service.deleted`). Then `project.applied`
//! counts them. An apply that changes nothing writes nothing: no event, no commit.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::count;
use flotilla_api::discovery::is_label;
use flotilla_api::ops::{TaskDefRevision, TaskDefStatus};
use flotilla_api::project::{
    Change, ProjectApplied, ProjectApply, ProjectInfo, ProjectSummary, ServiceChange, MAX_SERVICES,
};
use flotilla_api::service::{SchedulingStrategy, ServiceSpec};
use flotilla_api::taskdef::TaskDefinition;
use serde_json::Value;

use super::command::{ClusterError, Effect, Operator, Reply};
use super::ctx::Ctx;
use super::operator::{self, invalid};
use super::records::{Origin, ServiceRecord};
use super::services;

/// One listed service, parsed and checked, before anything is written.
struct Planned {
    /// Its task definition.
    definition: TaskDefinition,
    /// How many fields of its task definition were ignored (for `taskdef.registered`).
    definition_warnings: usize,
    /// Its service, `taskDefinition` the family.
    spec: ServiceSpec,
}

/// `text` (a problem or a warning of a document at `$`) with its path made the path in the
/// project's body (`$.services[i].taskDefinition…`), prefixed with the service's name when
/// known.
fn located(name: Option<&str>, at: &str, text: &str) -> String {
    let text = match text.strip_prefix('$') {
        Some(rest) => format!("{at}{rest}"),
        None => format!("{at}: {text}"),
    };
    match name {
        Some(n) => format!("{n}: {text}"),
        None => text,
    }
}

/// The problems of a refusal that says what is invalid; any other refusal as it is.
fn problems_of(e: ClusterError) -> Result<Vec<String>, ClusterError> {
    match e {
        ClusterError::Invalid { message, problems } if problems.is_empty() => Ok(vec![message]),
        ClusterError::Invalid { problems, .. } => Ok(problems),
        other => Err(other),
    }
}

/// Whether `op` is a project's request (executed by [`execute`], not `operator::execute`).
pub fn handles(op: &Operator) -> bool {
    matches!(
        op,
        Operator::ApplyProject(..)
            | Operator::ListProjects
            | Operator::GetProject(_)
            | Operator::RemoveProject(_)
    )
}

/// Executes a project's request ([`handles`] says which are).
///
/// # Errors
/// As [`apply`], [`remove`] and [`get`] say; [`ClusterError::Internal`] for another request.
pub fn execute(cx: &mut Ctx<'_, '_>, op: Operator) -> Result<Reply, ClusterError> {
    match op {
        Operator::ApplyProject(name, req) => apply(cx, &name, req),
        Operator::ListProjects => Ok(list(cx)),
        Operator::GetProject(name) => get(cx, &name),
        Operator::RemoveProject(name) => remove(cx, &name),
        other => Err(ClusterError::Internal(format!(
            "not a project's request: {other:?}"
        ))),
    }
}

/// `PUT /v1/projects/{name}`: see the module's documentation.
///
/// # Errors
/// [`ClusterError::Invalid`] for a name that is not a DNS label, more than [`MAX_SERVICES`]
/// services, or invalid inputs (every problem, by its path in the body), or a changed
/// `schedulingStrategy`; [`ClusterError::Conflict`] for a service that exists outside the
/// project, or a discovery name taken. Nothing is written then.
pub fn apply(
    cx: &mut Ctx<'_, '_>,
    project: &str,
    req: ProjectApply,
) -> Result<Reply, ClusterError> {
    if !is_label(project) {
        return Err(ClusterError::invalid(format!(
            "project name '{project}': 1 to 63 lowercase letters, digits and hyphens, not \
             starting or ending with a hyphen (a DNS label: the project is its services' \
             discovery namespace)"
        )));
    }
    if req.services.len() > MAX_SERVICES {
        return Err(ClusterError::invalid(format!(
            "project {project}: {} listed, at most {MAX_SERVICES}",
            count(req.services.len(), "service")
        )));
    }
    let (planned, mut warnings) = plan(cx, project, &req)?;

    let mut changes = Vec::new();
    for p in planned {
        let change = apply_one(cx, project, p, &mut warnings)?;
        changes.push(change);
    }
    if req.remove_orphans {
        let listed: BTreeSet<&str> = changes.iter().map(|c| c.service.as_str()).collect();
        let orphans: Vec<(String, String)> = members(cx, project)
            .into_iter()
            .filter(|s| !listed.contains(s.spec.service_name.as_str()))
            .map(|s| (s.spec.service_name.clone(), s.spec.task_definition.clone()))
            .collect();
        for (name, task_definition) in orphans {
            operator::remove_service(cx, &name)?;
            changes.push(ServiceChange {
                service: name,
                task_definition,
                change: Change::Removed,
            });
        }
    }
    let n = |c: Change| changes.iter().filter(|x| x.change == c).count();
    let (created, updated, removed) = (n(Change::Created), n(Change::Updated), n(Change::Removed));
    if created + updated + removed > 0 {
        tracing::info!(project, created, updated, removed, "project applied");
        cx.event(
            "project.applied",
            project,
            format!("{created} created, {updated} updated, {removed} removed"),
        );
    }
    Ok(Reply::ProjectApplied(Box::new(ProjectApplied {
        project: project.to_string(),
        services: changes,
        warnings,
        deregistered: Vec::new(),
    })))
}

/// Every listed service parsed and checked, nothing written yet: the problems of all of them
/// at once, or the plan and the inputs' warnings.
fn plan(
    cx: &Ctx<'_, '_>,
    project: &str,
    req: &ProjectApply,
) -> Result<(Vec<Planned>, Vec<String>), ClusterError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut planned = Vec::new();
    // Service name → its index; family → (index, definition).
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut families: BTreeMap<String, (usize, TaskDefinition)> = BTreeMap::new();
    for (i, ps) in req.services.iter().enumerate() {
        let at_def = format!("$.services[{i}].taskDefinition");
        let at_svc = format!("$.services[{i}].service");
        let shown = ps.service.get("serviceName").and_then(Value::as_str);
        let definition = match operator::parse_taskdef(cx, &ps.task_definition.to_string()) {
            Ok(d) => {
                warnings.extend(d.warnings.iter().map(|w| located(shown, &at_def, w)));
                Some(d)
            }
            Err(e) => {
                problems.extend(problems_of(e)?.iter().map(|p| located(shown, &at_def, p)));
                None
            }
        };
        let family = definition
            .as_ref()
            .map(|d| d.definition.family.clone())
            .or_else(|| {
                ps.task_definition
                    .get("family")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "-".to_string());
        let Some(mut service) = ps.service.as_object().cloned() else {
            problems.push(located(shown, &at_svc, "$: expected an object"));
            continue;
        };
        match service.get("taskDefinition") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if *t == family => {}
            Some(other) => problems.push(located(
                shown,
                &at_svc,
                &format!(
                    "$.taskDefinition: {other} is not the family of its task definition \
                     ({family}): leave it out (the apply finds or registers the revision)"
                ),
            )),
        }
        service.insert("taskDefinition".into(), Value::String(family.clone()));
        if let Some(Value::Object(d)) = service.get_mut("discovery") {
            match d.get("namespace") {
                None | Some(Value::Null) => {
                    d.insert("namespace".into(), Value::String(project.to_string()));
                }
                Some(Value::String(ns)) if ns == project => {}
                Some(other) => problems.push(located(
                    shown,
                    &at_svc,
                    &format!(
                        "$.discovery.namespace: {other} is not the project ({project}): a \
                         project's services register in its namespace (leave it out)"
                    ),
                )),
            }
        }
        let parsed = match flotilla_api::service::parse(&Value::Object(service).to_string()) {
            Ok(p) => p,
            Err(ps) => {
                problems.extend(ps.iter().map(|p| located(shown, &at_svc, p)));
                continue;
            }
        };
        warnings.extend(parsed.warnings.iter().map(|w| located(shown, &at_svc, w)));
        let name = parsed.spec.service_name.clone();
        if let Some(j) = names.insert(name.clone(), i) {
            problems.push(located(
                shown,
                &at_svc,
                &format!("$.serviceName: service {name} is listed twice (also services[{j}])"),
            ));
        }
        let Some(d) = definition else { continue };
        match families.get(&family) {
            Some((j, other)) if *other != d.definition => problems.push(located(
                shown,
                &at_def,
                &format!(
                    "$.family: family {family} is given another definition by services[{j}]: \
                     one family has one definition in an apply"
                ),
            )),
            Some(_) => {}
            None => {
                families.insert(family.clone(), (i, d.definition.clone()));
            }
        }
        planned.push(Planned {
            definition: d.definition,
            definition_warnings: d.warnings.len(),
            spec: parsed.spec,
        });
    }
    if !problems.is_empty() {
        return Err(ClusterError::Invalid {
            message: invalid(&format!("project {project}"), problems.len()),
            problems,
        });
    }
    Ok((planned, warnings))
}

/// The revision of `definition`: its family's newest active one when equal, else a new one.
fn revision_of(
    cx: &mut Ctx<'_, '_>,
    definition: TaskDefinition,
    warnings: usize,
) -> Result<TaskDefRevision, ClusterError> {
    match cx.txn.taskdef(&definition.family, None) {
        Some(r) if r.task_definition == definition => Ok(r.clone()),
        _ => operator::register_revision(cx, definition, warnings),
    }
}

/// Applies one listed service: created, updated, or left as it is.
fn apply_one(
    cx: &mut Ctx<'_, '_>,
    project: &str,
    p: Planned,
    warnings: &mut Vec<String>,
) -> Result<ServiceChange, ClusterError> {
    let name = p.spec.service_name.clone();
    // The owner is checked before anything is registered for it (a refusal commits nothing
    // anyway; this says the first thing wrong).
    let existing = cx.txn.service(&name).cloned();
    if let Some(s) = &existing {
        if s.project.as_deref() != Some(project) {
            let owner = match &s.project {
                Some(other) => format!("belongs to project {other}"),
                None => "was created with the service API (`flotilla service create`)".into(),
            };
            return Err(ClusterError::Conflict(format!(
                "service {name} exists and {owner}: project {project} does not take it over \
                 (remove it, or rename the project's service)"
            )));
        }
        if s.spec.scheduling_strategy != p.spec.scheduling_strategy {
            return Err(ClusterError::invalid(format!(
                "service {name}: schedulingStrategy cannot change ({} to {}); remove the \
                 service first (compose down)",
                s.spec.scheduling_strategy, p.spec.scheduling_strategy
            )));
        }
    }
    let revision = revision_of(cx, p.definition, p.definition_warnings)?;
    let task_definition = format!("{}:{}", revision.family, revision.revision);
    let Some(mut s) = existing else {
        let mut spec = p.spec;
        spec.task_definition = task_definition.clone();
        operator::create_parsed(cx, spec, Some(project.to_string()))?;
        return Ok(ServiceChange {
            service: name,
            task_definition,
            change: Change::Created,
        });
    };
    let before = s.clone();
    let want = p.spec;
    let redeploy = s.spec.task_definition != task_definition;
    if want.scheduling_strategy == SchedulingStrategy::Replica
        && want.desired_count != s.spec.desired_count
    {
        match cx.txn.scaling(&name).map(|r| r.target) {
            // Auto scaling owns the count (as Terraform's `ignore_changes = [desired_count]`
            // is used beside Application Auto Scaling).
            Some(t) => warnings.push(format!(
                "{name}: desiredCount {} left to auto scaling (between {} and {}; now {})",
                want.desired_count, t.min_capacity, t.max_capacity, s.spec.desired_count
            )),
            None => {
                operator::set_desired_count(cx, &mut s, want.desired_count)?;
                if !redeploy {
                    services::reopen_if_short(cx, &mut s, want.desired_count);
                }
            }
        }
    }
    let mut changed = Vec::new();
    if s.spec.deployment_configuration != want.deployment_configuration {
        s.spec.deployment_configuration = want.deployment_configuration;
        changed.push("deploymentConfiguration");
    }
    if s.spec.placement_constraints != want.placement_constraints {
        s.spec.placement_constraints = want.placement_constraints;
        changed.push("placementConstraints");
    }
    if s.spec.placement_strategy != want.placement_strategy {
        s.spec.placement_strategy = want.placement_strategy;
        changed.push("placementStrategy");
    }
    if s.spec.disconnect_policy != want.disconnect_policy {
        s.spec.disconnect_policy = want.disconnect_policy;
        changed.push("disconnectPolicy");
    }
    if s.spec.completion_policy != want.completion_policy {
        s.spec.completion_policy = want.completion_policy;
        changed.push("completionPolicy");
    }
    let rediscover = s.spec.discovery != want.discovery;
    if rediscover {
        s.spec.discovery = want.discovery;
        changed.push("discovery");
    }
    if rediscover || redeploy {
        if let Some(d) = &s.spec.discovery {
            if let Some(why) =
                operator::discovery_problem(cx, d, &revision.task_definition, Some(&name))
            {
                return Err(ClusterError::Conflict(format!("service {name}: {why}")));
            }
        }
    }
    if !changed.is_empty() {
        cx.event(
            "service.updated",
            &name,
            format!("{} changed (project {project})", changed.join(", ")),
        );
    }
    if redeploy {
        operator::deploy(cx, &mut s, revision);
    }
    if s == before {
        return Ok(ServiceChange {
            service: name,
            task_definition,
            change: Change::Unchanged,
        });
    }
    cx.txn.put_service(s);
    cx.effects.push(Effect::WakeServices);
    Ok(ServiceChange {
        service: name,
        task_definition,
        change: Change::Updated,
    })
}

/// The services of `project`, by name.
fn members<'t>(cx: &'t Ctx<'_, '_>, project: &str) -> Vec<&'t ServiceRecord> {
    cx.txn
        .services()
        .into_iter()
        .filter(|s| s.project.as_deref() == Some(project))
        .collect()
}

/// `DELETE /v1/projects/{name}` (`compose down`): every service of the project is deleted as
/// `DELETE /v1/services/{name}` deletes it, then the active revisions of their families that
/// nothing uses any more — no other service's deployment or last completed revision, no
/// schedule, no task that has not stopped (but the removed services' own, which are being
/// stopped) — are deregistered as `POST /v1/taskdefs/{taskdef}/deregister` does; a
/// `project.removed` event.
///
/// # Errors
/// [`ClusterError::NotFound`] for a project without services.
pub fn remove(cx: &mut Ctx<'_, '_>, project: &str) -> Result<Reply, ClusterError> {
    let gone: Vec<(String, String)> = members(cx, project)
        .into_iter()
        .map(|s| (s.spec.service_name.clone(), s.spec.task_definition.clone()))
        .collect();
    if gone.is_empty() {
        return Err(ClusterError::NotFound(format!("no project {project}")));
    }
    let mut families: BTreeSet<String> = BTreeSet::new();
    for s in members(cx, project) {
        families.extend(s.deployments.iter().map(|d| d.revision.family.clone()));
        families.extend(s.last_completed.as_ref().map(|r| r.family.clone()));
    }
    let mut changes = Vec::new();
    for (name, task_definition) in &gone {
        operator::remove_service(cx, name)?;
        changes.push(ServiceChange {
            service: name.clone(),
            task_definition: task_definition.clone(),
            change: Change::Removed,
        });
    }
    let stopping: BTreeSet<String> = gone
        .iter()
        .map(|(n, _)| Origin::Service(n.clone()).started_by())
        .collect();
    let mut deregistered = Vec::new();
    for family in &families {
        let active: Vec<u32> = cx
            .txn
            .revisions(family)
            .into_iter()
            .filter(|r| r.status == TaskDefStatus::Active)
            .map(|r| r.revision)
            .collect();
        for revision in active {
            if !in_use(cx, family, revision, &stopping) {
                operator::deregister_taskdef(cx, family, revision)?;
                deregistered.push(format!("{family}:{revision}"));
            }
        }
    }
    tracing::info!(project, services = gone.len(), "project removed");
    cx.event(
        "project.removed",
        project,
        format!(
            "{} deleted, {} deregistered",
            count(gone.len(), "service"),
            count(deregistered.len(), "revision")
        ),
    );
    Ok(Reply::ProjectApplied(Box::new(ProjectApplied {
        project: project.to_string(),
        services: changes,
        warnings: Vec::new(),
        deregistered,
    })))
}

/// Whether `family:revision` is still used: by a service's deployment or last completed
/// revision, a schedule, or a task not stopped that none of `stopping` started.
fn in_use(cx: &Ctx<'_, '_>, family: &str, revision: u32, stopping: &BTreeSet<String>) -> bool {
    let is = |r: &TaskDefRevision| r.family == family && r.revision == revision;
    let spec = format!("{family}:{revision}");
    cx.txn.services().into_iter().any(|s| {
        s.deployments.iter().any(|d| is(&d.revision)) || s.last_completed.as_ref().is_some_and(is)
    }) || cx.txn.schedules().into_iter().any(|s| is(&s.revision))
        || cx.txn.tasks().into_iter().any(|t| {
            t.is_live()
                && t.info.task_definition == spec
                && !t
                    .info
                    .started_by
                    .as_ref()
                    .is_some_and(|b| stopping.contains(b))
        })
}

/// `GET /v1/projects`: every project, by name, with its services' counts.
pub fn list(cx: &Ctx<'_, '_>) -> Reply {
    let mut out: BTreeMap<String, ProjectSummary> = BTreeMap::new();
    for s in cx.txn.services() {
        let Some(p) = &s.project else { continue };
        let info = services::info_live(cx.txn, cx.live, s);
        let e = out.entry(p.clone()).or_insert_with(|| ProjectSummary {
            name: p.clone(),
            services: 0,
            running_count: 0,
            desired_count: 0,
        });
        e.services += 1;
        e.running_count = e.running_count.saturating_add(info.running_count);
        e.desired_count = e.desired_count.saturating_add(info.spec.desired_count);
    }
    Reply::Projects(out.into_values().collect())
}

/// `GET /v1/projects/{name}`: the project's services, by name.
///
/// # Errors
/// [`ClusterError::NotFound`] for a project without services.
pub fn get(cx: &Ctx<'_, '_>, project: &str) -> Result<Reply, ClusterError> {
    let services: Vec<_> = members(cx, project)
        .into_iter()
        .map(|s| services::info_live(cx.txn, cx.live, s))
        .collect();
    if services.is_empty() {
        return Err(ClusterError::NotFound(format!("no project {project}")));
    }
    Ok(Reply::Project(Box::new(ProjectInfo {
        name: project.to_string(),
        services,
    })))
}
