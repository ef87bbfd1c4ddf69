//! Operators' requests (the HTTPS API's actions), executed in one transaction each.

use std::time::Duration;

use flotilla_api::ops::{
    AdminCredential, NodeLabels, TaskDefRegistered, TaskDefRevision, TaskDefStatus, TaskRun,
    TokenCreate, TokenCreated, TokenInfo,
};
use flotilla_api::scaling::ScalingPut;
use flotilla_api::schedule::ScheduleSpec;
use flotilla_api::service::{SchedulingStrategy, ServiceCreated, ServiceUpdate};
use flotilla_api::tasks::{ContainerStatus, DesiredStatus, StopCode, TaskState};
use flotilla_api::{count, plural};
use flotilla_certs::token::JoinToken;

use super::command::{CloseCode, ClusterError, Effect, Operator, Reply};
use super::ctx::Ctx;
use super::images;
use super::metrics::PlacementOrigin;
use super::placement::{self, NewTask, Plan};
use super::records::{NodeRecord, Origin, ScheduleRecord, ServiceRecord, TokenRecord};
use super::secrets::{self, Kind};
use super::{discovery, listing, scaling, schedules, services, tasks};
pub use listing::{node_info, node_state};

/// "invalid WHAT (N problems)".
pub(super) fn invalid(what: &str, problems: usize) -> String {
    format!("invalid {what} ({})", count(problems, "problem"))
}

/// Default token lifetime.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Most tasks one `task run` starts.
const MAX_RUN_COUNT: u32 = 1000;
/// Most tasks a REPLICA service keeps.
const MAX_DESIRED_COUNT: u32 = 10_000;

fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        uses: t.uses,
        used: t.used,
        labels: t.labels.clone(),
    }
}

fn no_node(id: &str) -> ClusterError {
    ClusterError::NotFound(format!("no node {id}"))
}

fn node(cx: &Ctx<'_, '_>, id: &str) -> Result<NodeRecord, ClusterError> {
    cx.txn.node(id).cloned().ok_or_else(|| no_node(id))
}

/// The active revision `FAMILY[:REVISION]` names.
pub fn active_revision(cx: &Ctx<'_, '_>, spec: &str) -> Result<TaskDefRevision, ClusterError> {
    let (family, revision) = match spec.split_once(':') {
        None => (spec, None),
        Some((f, r)) => match r.parse::<u32>() {
            Ok(n) if n > 0 => (f, Some(n)),
            _ => {
                return Err(ClusterError::invalid(format!(
                    "'{spec}': expected FAMILY or FAMILY:REVISION"
                )))
            }
        },
    };
    match cx.txn.taskdef(family, revision) {
        Some(d) if d.status == TaskDefStatus::Active => Ok(d.clone()),
        Some(d) => Err(ClusterError::invalid(format!(
            "{}:{} is deregistered",
            d.family, d.revision
        ))),
        None => Err(ClusterError::NotFound(format!("no task definition {spec}"))),
    }
}

/// Executes an operator's request.
pub fn execute(cx: &mut Ctx<'_, '_>, op: Operator) -> Result<Reply, ClusterError> {
    match op {
        Operator::CreateToken(req) => create_token(cx, req),
        Operator::ListTokens => Ok(Reply::Tokens(
            cx.txn.tokens().into_iter().map(token_info).collect(),
        )),
        Operator::RemoveToken(id) => {
            if cx.txn.token(&id).is_none() {
                return Err(ClusterError::NotFound(format!("no token {id}")));
            }
            cx.txn.remove_token(&id);
            tracing::info!(token = %id, "join token removed");
            cx.event("token.removed", &id, "revoked by an operator");
            Ok(Reply::Done)
        }
        Operator::ListNodes(q) => Ok(Reply::Nodes(listing::nodes(cx, &q))),
        Operator::GetNode(id) => Ok(Reply::Node(node_info(&node(cx, &id)?, cx.live))),
        Operator::RevokeNode(id) => {
            let mut n = node(cx, &id)?;
            n.revoked = true;
            cx.txn.put_node(n.clone());
            cx.effects.push(Effect::CloseSession {
                node: id.clone(),
                code: CloseCode::Revoked,
                reason: "this node was revoked".into(),
            });
            tracing::info!(node = %id, "node revoked");
            cx.event("node.revoked", &id, "revoked; its session was ended");
            Ok(Reply::Node(node_info(&n, cx.live)))
        }
        Operator::LabelNode(id, change) => label_node(cx, &id, change),
        Operator::DrainNode(id, drain) => drain_node(cx, &id, drain),
        Operator::RemoveNode(id, force) => remove_node(cx, &id, force),
        Operator::IssueAdmin(req) => {
            let cert_pem = cx
                .ca
                .issue_admin_from_csr(&req.csr_pem, &req.name, flotilla_certs::ADMIN_CERT_LIFETIME)
                .map_err(|e| ClusterError::invalid(e.to_string()))?;
            tracing::info!(name = %req.name, "admin certificate issued");
            Ok(Reply::AdminCredential(AdminCredential {
                cert_pem,
                ca_pem: cx.ca.cert_pem().to_string(),
            }))
        }
        Operator::RegisterTaskDef(text) => register_taskdef(cx, &text),
        Operator::CreateSecret(put) => secrets::create(cx, Kind::Secret, put),
        Operator::RotateSecret(name, value) => secrets::rotate(cx, Kind::Secret, &name, value),
        Operator::ListSecrets => Ok(secrets::list(cx, Kind::Secret)),
        Operator::GetSecret(name) => secrets::get(cx, Kind::Secret, &name),
        Operator::RemoveSecret(name, force) => secrets::remove(cx, Kind::Secret, &name, force),
        Operator::CreateConfig(put) => secrets::create(cx, Kind::Config, put),
        Operator::UpdateConfig(name, value) => secrets::rotate(cx, Kind::Config, &name, value),
        Operator::ListConfigs => Ok(secrets::list(cx, Kind::Config)),
        Operator::GetConfig(name) => secrets::get(cx, Kind::Config, &name),
        Operator::RemoveConfig(name, force) => secrets::remove(cx, Kind::Config, &name, force),
        Operator::PutImages(images) => images::put(cx, images),
        Operator::ListImages => Ok(images::list(cx)),
        Operator::GetImage(name) => images::get(cx, &name),
        Operator::RemoveImage(name) => images::remove(cx, &name),
        Operator::ReferencedBlobs => Ok(images::referenced(cx)),
        Operator::ListTaskDefs => Ok(Reply::TaskDefs(
            cx.txn.taskdefs().into_iter().cloned().collect(),
        )),
        Operator::GetTaskDef(family, revision) => match cx.txn.taskdef(&family, revision) {
            Some(t) => Ok(Reply::TaskDef(t.clone())),
            None => Err(ClusterError::NotFound(match revision {
                Some(r) => format!("no task definition {family}:{r}"),
                None => format!("no active task definition in family {family}"),
            })),
        },
        Operator::DeregisterTaskDef(family, revision) => {
            deregister_taskdef(cx, &family, revision).map(Reply::TaskDef)
        }
        Operator::RunTask(req) => run_task(cx, req),
        Operator::ListTasks(q) => Ok(Reply::Tasks(listing::tasks(cx, &q))),
        Operator::GetTask(id) => match cx.txn.task(&id) {
            Some(t) => Ok(Reply::Task(tasks::info(t, cx.live))),
            None => Err(ClusterError::NotFound(format!("no task {id}"))),
        },
        Operator::StopTask(id) => {
            if cx.txn.task(&id).is_none() {
                return Err(ClusterError::NotFound(format!("no task {id}")));
            }
            if tasks::stop(cx, &id, StopCode::UserInitiated, None) {
                tracing::info!(task = %id, "task stop requested");
            }
            match cx.txn.task(&id) {
                Some(t) => Ok(Reply::Task(tasks::info(t, cx.live))),
                None => Err(ClusterError::NotFound(format!("no task {id}"))),
            }
        }
        Operator::LogSource(id) => {
            let Some(t) = cx.txn.task(&id) else {
                return Err(ClusterError::NotFound(format!("no task {id}")));
            };
            let Some(node) = t.info.node.clone() else {
                return Err(ClusterError::Conflict(format!(
                    "task {id} was never placed on a node"
                )));
            };
            // A task that stopped before any of its containers ran has no output to keep: it
            // never had logs, rather than had them removed.
            if t.info.state == TaskState::Stopped
                && t.info.containers.iter().all(ContainerStatus::never_ran)
            {
                let why = t
                    .info
                    .stop_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                return Err(ClusterError::Conflict(format!(
                    "task {id} has no logs: its containers never started{why}"
                )));
            }
            // A stopped task's logs are read from its node too: it keeps them a while after
            // removing the containers (nodeagent/src/logs.rs says how long).
            if !cx.live.connected(&node) {
                return Err(ClusterError::Unavailable(format!(
                    "node {node} is not connected; logs are read from the node"
                )));
            }
            Ok(Reply::LogSource { task: id, node })
        }
        Operator::Exec {
            task,
            container,
            command,
            admin,
        } => {
            let Some(t) = cx.txn.task(&task) else {
                return Err(ClusterError::NotFound(format!("no task {task}")));
            };
            if t.info.state == TaskState::Stopped {
                return Err(ClusterError::Conflict(format!(
                    "task {task} has stopped: exec needs a running container"
                )));
            }
            let Some(node) = t.info.node.clone() else {
                return Err(ClusterError::Conflict(format!(
                    "task {task} is not placed on a node yet"
                )));
            };
            if !cx.live.connected(&node) {
                return Err(ClusterError::Unavailable(format!(
                    "node {node} is not connected; exec runs through its session"
                )));
            }
            let names: Vec<&str> = t
                .definition
                .container_definitions
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let container = match container {
                Some(c) if !names.contains(&c.as_str()) => {
                    return Err(ClusterError::NotFound(format!(
                        "task {task} has no container '{c}' (it has {})",
                        names.join(", ")
                    )))
                }
                Some(c) => c,
                None => names.first().map(|c| c.to_string()).unwrap_or_default(),
            };
            cx.event(
                "task.exec",
                &task,
                format!("admin {admin} runs {command} in container {container} on node {node}"),
            );
            Ok(Reply::ExecTarget { node, container })
        }
        Operator::ListEvents {
            since,
            limit,
            filter,
        } => Ok(Reply::Events(cx.txn.events(since, limit, &filter))),
        Operator::CreateService(text) => create_service(cx, &text),
        Operator::ListServices => Ok(Reply::Services(
            cx.txn
                .services()
                .into_iter()
                .map(|s| services::info_live(cx.txn, cx.live, s))
                .collect(),
        )),
        Operator::GetService(name) => match cx.txn.service(&name) {
            Some(s) => Ok(Reply::Service(Box::new(services::info_live(
                cx.txn, cx.live, s,
            )))),
            None => Err(ClusterError::NotFound(format!("no service {name}"))),
        },
        Operator::ServiceEndpoints(name) => {
            let Some(s) = cx.txn.service(&name) else {
                return Err(ClusterError::NotFound(format!("no service {name}")));
            };
            if s.spec.discovery.is_none() {
                return Err(ClusterError::NotFound(format!(
                    "service {name} does not register for discovery (no discovery.namespace)"
                )));
            }
            match discovery::of_service(cx.txn, s) {
                Some(d) => Ok(Reply::Endpoints(d)),
                None => Err(ClusterError::NotFound(format!(
                    "service {name} has no entry"
                ))),
            }
        }
        Operator::UpdateService(name, update) => update_service(cx, &name, update),
        Operator::RemoveService(name) => remove_service(cx, &name),
        Operator::GetScaling(name) => Ok(Reply::Scaling(Box::new(scaling::get(cx, &name)?))),
        Operator::Autoscale(name, text) => {
            let (scaling, warnings) = scaling::autoscale(cx, &name, &text)?;
            Ok(Reply::ScalingPut(Box::new(ScalingPut {
                scaling,
                warnings,
            })))
        }
        Operator::DeregisterScaling(name) => {
            scaling::deregister(cx, &name)?;
            Ok(Reply::Done)
        }
        Operator::PutScalingPolicy(name, text) => {
            let (scaling, warnings) = scaling::put_policy(cx, &name, &text)?;
            Ok(Reply::ScalingPut(Box::new(ScalingPut {
                scaling,
                warnings,
            })))
        }
        Operator::RemoveScalingPolicy(name, policy) => {
            scaling::remove_policy(cx, &name, &policy)?;
            Ok(Reply::Done)
        }
        Operator::PutScheduledAction(name, text) => {
            let (scaling, warnings) = scaling::put_scheduled_action(cx, &name, &text)?;
            Ok(Reply::ScalingPut(Box::new(ScalingPut {
                scaling,
                warnings,
            })))
        }
        Operator::RemoveScheduledAction(name, action) => {
            scaling::remove_scheduled_action(cx, &name, &action)?;
            Ok(Reply::Done)
        }
        Operator::CreateSchedule(spec) => create_schedule(cx, spec),
        // `Cluster::run` gives these to `projects.rs` (which calls the handlers here).
        Operator::ApplyProject(..)
        | Operator::ListProjects
        | Operator::GetProject(_)
        | Operator::RemoveProject(_) => Err(ClusterError::Internal(
            "a project's request reached the operator's handlers".into(),
        )),
        Operator::ListSchedules => Ok(Reply::Schedules(
            cx.txn
                .schedules()
                .into_iter()
                .map(|s| schedules::info(s, cx.now.secs()))
                .collect(),
        )),
        Operator::GetSchedule(name) => match cx.txn.schedule(&name) {
            Some(s) => Ok(Reply::Schedule(schedules::info(s, cx.now.secs()))),
            None => Err(ClusterError::NotFound(format!("no schedule {name}"))),
        },
        Operator::RemoveSchedule(name) => {
            if cx.txn.schedule(&name).is_none() {
                return Err(ClusterError::NotFound(format!("no schedule {name}")));
            }
            cx.txn.remove_schedule(&name);
            cx.event(
                "schedule.deleted",
                &name,
                "runs already started keep running",
            );
            Ok(Reply::Done)
        }
    }
}

fn create_token(cx: &mut Ctx<'_, '_>, req: TokenCreate) -> Result<Reply, ClusterError> {
    for (k, v) in &req.labels {
        flotilla_api::parse_label(&format!("{k}={v}")).map_err(ClusterError::invalid)?;
    }
    let ttl = req
        .ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL);
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 86_400) {
        return Err(ClusterError::invalid("ttl: between 1 s and 365 days"));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 {
        return Err(ClusterError::invalid("uses: at least 1"));
    }
    let token =
        JoinToken::generate(cx.ca.cert_der()).map_err(|e| ClusterError::Internal(e.to_string()))?;
    let record = TokenRecord {
        id: token.id().to_string(),
        secret_hash: token.secret_hash(),
        created_at: cx.now.secs(),
        expires_at: cx.now.secs() + ttl.as_secs(),
        uses,
        used: 0,
        labels: req.labels,
    };
    cx.txn.put_token(record.clone());
    tracing::info!(token = %record.id, uses, ttl_secs = ttl.as_secs(), "join token created");
    cx.event(
        "token.created",
        &record.id,
        format!(
            "{}, expires in {} s",
            count(uses as usize, "use"),
            ttl.as_secs()
        ),
    );
    Ok(Reply::TokenCreated(TokenCreated {
        token: token.to_string(),
        info: token_info(&record),
    }))
}

fn label_node(cx: &mut Ctx<'_, '_>, id: &str, change: NodeLabels) -> Result<Reply, ClusterError> {
    for (k, v) in &change.set {
        flotilla_api::parse_label(&format!("{k}={v}"))
            .map_err(|e| ClusterError::invalid(format!("set: {e}")))?;
    }
    let mut n = node(cx, id)?;
    n.labels.extend(change.set);
    for k in &change.remove {
        n.labels.remove(k);
    }
    cx.txn.put_node(n.clone());
    tracing::info!(node = %id, labels = ?n.labels, "node labels changed");
    cx.event("node.labelled", id, format!("labels now {:?}", n.labels));
    Ok(Reply::Node(node_info(&n, cx.live)))
}

fn drain_node(cx: &mut Ctx<'_, '_>, id: &str, drain: bool) -> Result<Reply, ClusterError> {
    let mut n = node(cx, id)?;
    n.draining = drain;
    cx.txn.put_node(n.clone());
    if drain {
        // Tasks not run by a service have nowhere to go: they are stopped; services replace
        // theirs elsewhere.
        let live: Vec<String> = cx
            .txn
            .live_tasks_on(id)
            .iter()
            .map(|t| t.info.id.clone())
            .collect();
        let mut stopped = 0;
        for t in live {
            if tasks::stop(cx, &t, StopCode::NodeDrained, None) {
                stopped += 1;
            }
        }
        tracing::info!(node = %id, stopped, "node draining");
        cx.event(
            "node.draining",
            id,
            format!("draining; {} being stopped", count(stopped, "task")),
        );
    } else {
        tracing::info!(node = %id, "node active");
        cx.event("node.active", id, "takes tasks again");
    }
    Ok(Reply::Node(node_info(&n, cx.live)))
}

fn remove_node(cx: &mut Ctx<'_, '_>, id: &str, force: bool) -> Result<Reply, ClusterError> {
    node(cx, id)?;
    let live: Vec<String> = cx
        .txn
        .live_tasks_on(id)
        .iter()
        .map(|t| t.info.id.clone())
        .collect();
    if !live.is_empty() && !force {
        return Err(ClusterError::Conflict(format!(
            "node {id} has {} not stopped; drain it first, or remove it with force \
             (its tasks are then recorded STOPPED, whatever the node does)",
            count(live.len(), "task")
        )));
    }
    // Schedules pinned to it would never fire again.
    let pinned: Vec<String> = cx
        .txn
        .schedules()
        .into_iter()
        .filter(|s| s.spec.node.as_deref() == Some(id))
        .map(|s| s.spec.name.clone())
        .collect();
    if !pinned.is_empty() && !force {
        return Err(ClusterError::Conflict(format!(
            "node {id} fires {} {}: delete {} first, or remove the node with force \
             ({} then deleted too)",
            plural(pinned.len(), "schedule"),
            pinned.join(", "),
            if pinned.len() == 1 { "it" } else { "them" },
            if pinned.len() == 1 {
                "it is"
            } else {
                "they are"
            }
        )));
    }
    for name in pinned {
        cx.txn.remove_schedule(&name);
        cx.event(
            "schedule.deleted",
            &name,
            format!("its node {id} was removed"),
        );
    }
    for t in live {
        if let Some(t) = cx.txn.task(&t) {
            let mut t = t.clone();
            t.info.desired = DesiredStatus::Stopped;
            t.info.state = TaskState::Stopped;
            t.info.stop_code = Some(StopCode::NodeRemoved);
            t.info.stop_reason = Some(StopCode::NodeRemoved.reason().into());
            cx.txn.put_task(t);
        }
    }
    cx.txn.remove_node(id);
    cx.live.forget(id);
    cx.effects.push(Effect::CloseSession {
        node: id.to_string(),
        code: CloseCode::Refused,
        reason: "this node was removed from the cluster".into(),
    });
    tracing::info!(node = %id, "node removed");
    cx.event("node.removed", id, "removed from the cluster");
    Ok(Reply::Done)
}

fn register_taskdef(cx: &mut Ctx<'_, '_>, text: &str) -> Result<Reply, ClusterError> {
    let parsed = parse_taskdef(cx, text)?;
    let rec = register_revision(cx, parsed.definition, parsed.warnings.len())?;
    Ok(Reply::TaskDefRegistered(TaskDefRegistered {
        family: rec.family,
        revision: rec.revision,
        warnings: parsed.warnings,
    }))
}

/// A task definition's text (JSON or YAML) parsed and checked, the secrets and configs it
/// references included (each must exist, with the version and JSON key it names).
///
/// # Errors
/// [`ClusterError::Invalid`] with every problem by its JSON path.
pub(super) fn parse_taskdef(
    cx: &Ctx<'_, '_>,
    text: &str,
) -> Result<flotilla_api::taskdef::Parsed, ClusterError> {
    let parsed = flotilla_api::taskdef::parse(text).map_err(|problems| ClusterError::Invalid {
        message: invalid("task definition", problems.len()),
        problems,
    })?;
    let missing = secrets::problems(cx, &parsed.definition);
    if !missing.is_empty() {
        return Err(ClusterError::Invalid {
            message: invalid("task definition", missing.len()),
            problems: missing,
        });
    }
    Ok(parsed)
}

/// Registers `definition` (checked by [`parse_taskdef`]) as the next revision of its family,
/// ACTIVE, with a `taskdef.registered` event counting its `warnings`.
///
/// # Errors
/// [`ClusterError::Conflict`] when the family has used every revision number.
pub(super) fn register_revision(
    cx: &mut Ctx<'_, '_>,
    definition: flotilla_api::taskdef::TaskDefinition,
    warnings: usize,
) -> Result<TaskDefRevision, ClusterError> {
    let family = definition.family.clone();
    let revision = cx
        .txn
        .revisions(&family)
        .last()
        .map_or(0, |r| r.revision)
        .checked_add(1)
        .ok_or_else(|| ClusterError::Conflict(format!("family {family} has no revision left")))?;
    let rec = TaskDefRevision {
        family: family.clone(),
        revision,
        status: TaskDefStatus::Active,
        registered_at: cx.now.secs(),
        task_definition: definition,
    };
    cx.txn.put_taskdef(rec.clone());
    tracing::info!(%family, revision, "task definition registered");
    cx.event(
        "taskdef.registered",
        &format!("{family}:{revision}"),
        count(warnings, "warning"),
    );
    Ok(rec)
}

/// Deregisters `family:revision`: no new task starts from it (tasks, services' deployments
/// and schedules that hold it keep it). Nothing refuses it but a revision that does not exist.
///
/// # Errors
/// [`ClusterError::NotFound`] for an unknown revision.
pub(super) fn deregister_taskdef(
    cx: &mut Ctx<'_, '_>,
    family: &str,
    revision: u32,
) -> Result<TaskDefRevision, ClusterError> {
    let Some(t) = cx.txn.taskdef(family, Some(revision)) else {
        return Err(ClusterError::NotFound(format!(
            "no task definition {family}:{revision}"
        )));
    };
    let mut t = t.clone();
    t.status = TaskDefStatus::Inactive;
    cx.txn.put_taskdef(t.clone());
    tracing::info!(%family, revision, "task definition deregistered");
    cx.event(
        "taskdef.deregistered",
        &format!("{family}:{revision}"),
        "no new tasks start from it",
    );
    Ok(t)
}

/// `task run`: placed as ECS does, all tasks or none, through the plan applier.
fn run_task(cx: &mut Ctx<'_, '_>, req: TaskRun) -> Result<Reply, ClusterError> {
    if req.count == 0 || req.count > MAX_RUN_COUNT {
        return Err(ClusterError::invalid(format!(
            "count: from 1 to {MAX_RUN_COUNT}"
        )));
    }
    let def = active_revision(cx, &req.task_definition)?;
    if let Some(id) = &req.node {
        let n = node(cx, id)?;
        if n.revoked {
            return Err(ClusterError::invalid(format!("node {id} is revoked")));
        }
        if n.draining {
            return Err(ClusterError::Conflict(format!("node {id} is draining")));
        }
    }
    let request = placement::request(
        &def.task_definition,
        placement::family_group(&def.family),
        req.count as usize,
        &req.placement_constraints,
        &req.placement_strategy,
        cx.now.secs(),
    )
    .map_err(ClusterError::invalid)?;
    let mut snapshot = placement::snapshot(cx.txn, cx.live);
    if let Some(id) = &req.node {
        // A node named by the operator takes the task even while disconnected: it gets it
        // with its next session.
        snapshot.nodes.retain(|n| &n.id == id);
        for n in &mut snapshot.nodes {
            if n.state == flotilla_scheduler::NodeState::Disconnected {
                n.state = flotilla_scheduler::NodeState::Ready;
            }
        }
    }
    let nodes = flotilla_scheduler::place(&snapshot, &request).map_err(|why| {
        cx.metrics.unplaceable(PlacementOrigin::TaskRun, &why, true);
        let holders = placement::port_holders(cx.txn, &why, &request.ports);
        let why = match &req.node {
            Some(id) => why.on_node(id),
            None => why.to_string(),
        };
        ClusterError::Conflict(format!("{}:{}: {why}{holders}", def.family, def.revision))
    })?;
    let applied = placement::apply(
        cx,
        Plan {
            request,
            task: NewTask {
                revision: def,
                env: req.env,
                origin: None,
                deployment: None,
            },
            nodes,
            all_or_nothing: true,
            allow_disconnected: req.node.is_some(),
        },
    )?;
    Ok(Reply::TasksCreated(applied.created))
}

/// Why a service cannot register as `d` with task definition `def`: its name is taken in the
/// namespace (by a service other than `except`), or the container it names is not in the
/// definition.
pub(super) fn discovery_problem(
    cx: &Ctx<'_, '_>,
    d: &flotilla_api::discovery::Discovery,
    def: &flotilla_api::taskdef::TaskDefinition,
    except: Option<&str>,
) -> Option<String> {
    let taken = cx.txn.services().into_iter().find(|s| {
        Some(s.spec.service_name.as_str()) != except
            && s.spec
                .discovery
                .as_ref()
                .is_some_and(|o| o.namespace == d.namespace && o.name == d.name)
    });
    if let Some(s) = taken {
        return Some(format!(
            "discovery: {}.{} is already service {}",
            d.name, d.namespace, s.spec.service_name
        ));
    }
    if let Some(c) = &d.container_name {
        if !def.container_definitions.iter().any(|x| &x.name == c) {
            return Some(format!(
                "discovery.containerName: the task definition has no container {c}"
            ));
        }
    }
    None
}

fn create_service(cx: &mut Ctx<'_, '_>, text: &str) -> Result<Reply, ClusterError> {
    let parsed = flotilla_api::service::parse(text).map_err(|problems| ClusterError::Invalid {
        message: invalid("service", problems.len()),
        problems,
    })?;
    let record = create_parsed(cx, parsed.spec, None)?;
    Ok(Reply::ServiceCreated(Box::new(ServiceCreated {
        service: services::info_live(cx.txn, cx.live, &record),
        warnings: parsed.warnings,
    })))
}

/// Creates the service `spec` describes (checked by `flotilla_api::service::parse`), in
/// `project` when given: its task definition resolved to an active revision, its first
/// deployment started, a `service.created` event, and a service round woken.
///
/// # Errors
/// [`ClusterError::Conflict`] when the name is taken or its discovery name is;
/// [`ClusterError::NotFound`] / [`ClusterError::Invalid`] when its task definition does not
/// resolve to an active revision.
pub(super) fn create_parsed(
    cx: &mut Ctx<'_, '_>,
    mut spec: flotilla_api::service::ServiceSpec,
    project: Option<String>,
) -> Result<ServiceRecord, ClusterError> {
    let name = spec.service_name.clone();
    if cx.txn.service(&name).is_some() {
        return Err(ClusterError::Conflict(format!("service {name} exists")));
    }
    let revision = active_revision(cx, &spec.task_definition)?;
    if let Some(d) = &spec.discovery {
        if let Some(p) = discovery_problem(cx, d, &revision.task_definition, None) {
            return Err(ClusterError::Conflict(p));
        }
    }
    spec.task_definition = format!("{}:{}", revision.family, revision.revision);
    let deployment = services::new_deployment(cx, revision);
    let record = ServiceRecord {
        spec,
        deployments: vec![deployment],
        last_completed: None,
        placement_problem: None,
        vip: None,
        created_at: cx.now.secs(),
        project,
    };
    cx.event(
        "service.created",
        &name,
        format!(
            "{} ({}){}",
            record.spec.task_definition,
            record.spec.scheduling_strategy,
            record
                .project
                .as_deref()
                .map(|p| format!(", project {p}"))
                .unwrap_or_default()
        ),
    );
    tracing::info!(service = %name, taskdef = %record.spec.task_definition, "service created");
    cx.txn.put_service(record.clone());
    cx.effects.push(Effect::WakeServices);
    Ok(record)
}

fn update_service(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    update: ServiceUpdate,
) -> Result<Reply, ClusterError> {
    let Some(s) = cx.txn.service(name) else {
        return Err(ClusterError::NotFound(format!("no service {name}")));
    };
    let mut s = s.clone();
    if let Some(n) = update.desired_count {
        set_desired_count(cx, &mut s, n)?;
    }
    let revision = match &update.task_definition {
        Some(t) => Some(active_revision(cx, t)?),
        None if update.force_new_deployment => s.primary().map(|d| d.revision.clone()),
        None => None,
    };
    if let (Some(n), None) = (update.desired_count, &revision) {
        services::reopen_if_short(cx, &mut s, n);
    }
    if let Some(r) = revision {
        deploy(cx, &mut s, r);
    }
    cx.txn.put_service(s.clone());
    cx.effects.push(Effect::WakeServices);
    Ok(Reply::Service(Box::new(services::info_live(
        cx.txn, cx.live, &s,
    ))))
}

/// Sets service `s`'s desired count to `n`, with a `service.scaled` event (the caller stores
/// `s`, and puts a completed deployment back in progress when it deploys nothing:
/// [`services::reopen_if_short`]).
///
/// # Errors
/// [`ClusterError::Invalid`] for a DAEMON service, a count above [`MAX_DESIRED_COUNT`], or a
/// count outside the service's auto scaling bounds.
pub(super) fn set_desired_count(
    cx: &mut Ctx<'_, '_>,
    s: &mut ServiceRecord,
    n: u32,
) -> Result<(), ClusterError> {
    let name = s.spec.service_name.clone();
    if s.spec.scheduling_strategy == SchedulingStrategy::Daemon {
        return Err(ClusterError::invalid(
            "desiredCount: a DAEMON service runs one task per eligible node",
        ));
    }
    if n > MAX_DESIRED_COUNT {
        return Err(ClusterError::invalid(format!(
            "desiredCount: at most {MAX_DESIRED_COUNT}"
        )));
    }
    if let Some(t) = cx.txn.scaling(&name).map(|r| r.target) {
        if n < t.min_capacity || n > t.max_capacity {
            return Err(ClusterError::invalid(format!(
                "desiredCount: service {name} is auto scaled between {} and {} tasks: \
                 change the bounds (`flotilla service autoscale {name} --min N --max N`) \
                 or turn auto scaling off (`--off`)",
                t.min_capacity, t.max_capacity
            )));
        }
    }
    s.spec.desired_count = n;
    cx.event("service.scaled", &name, format!("desired count {n}"));
    Ok(())
}

/// Starts a new primary deployment of `revision` for service `s` (the older ones are
/// replaced as the deployment configuration allows), with a `service.deployment.started`
/// event; the caller stores `s`.
pub(super) fn deploy(cx: &mut Ctx<'_, '_>, s: &mut ServiceRecord, revision: TaskDefRevision) {
    for d in &mut s.deployments {
        d.primary = false;
    }
    let d = services::new_deployment(cx, revision);
    s.spec.task_definition = format!("{}:{}", d.revision.family, d.revision.revision);
    cx.event(
        "service.deployment.started",
        &s.spec.service_name,
        format!("deployment {} of {}", d.id, s.spec.task_definition),
    );
    s.deployments.push(d);
}

/// Deletes service `name`: its auto scaling goes with it and its tasks are stopped, with a
/// `service.deleted` event.
///
/// # Errors
/// [`ClusterError::NotFound`] for an unknown service.
pub(super) fn remove_service(cx: &mut Ctx<'_, '_>, name: &str) -> Result<Reply, ClusterError> {
    if cx.txn.service(name).is_none() {
        return Err(ClusterError::NotFound(format!("no service {name}")));
    }
    cx.txn.remove_service(name);
    if cx.txn.scaling(name).is_some() {
        // Its scalable target, policies and scheduled actions go with it.
        cx.txn.remove_scaling(name);
    }
    let by = Origin::Service(name.to_string()).started_by();
    let ids: Vec<String> = cx
        .txn
        .tasks_of(&by)
        .iter()
        .map(|t| t.info.id.clone())
        .collect();
    for id in ids {
        tasks::stop(cx, &id, StopCode::ServiceDeleted, None);
    }
    cx.event("service.deleted", name, "its tasks are being stopped");
    Ok(Reply::Done)
}

fn create_schedule(cx: &mut Ctx<'_, '_>, mut spec: ScheduleSpec) -> Result<Reply, ClusterError> {
    flotilla_api::schedule::check(&spec).map_err(|problems| ClusterError::Invalid {
        message: invalid("schedule", problems.len()),
        problems,
    })?;
    if cx.txn.schedule(&spec.name).is_some() {
        return Err(ClusterError::Conflict(format!(
            "schedule {} exists",
            spec.name
        )));
    }
    if let Some(n) = &spec.node {
        match cx.txn.node(n) {
            Some(n) if !n.revoked => {}
            _ => return Err(no_node(n)),
        }
    }
    let revision = active_revision(cx, &spec.task_definition)?;
    spec.task_definition = format!("{}:{}", revision.family, revision.revision);
    if spec.node.is_some()
        && revision
            .task_definition
            .container_definitions
            .iter()
            .any(|c| !c.secrets.is_empty() || !c.configs.is_empty())
    {
        return Err(ClusterError::invalid(format!(
            "node: {} references secrets or configs, and a schedule pinned to a node starts its tasks \
             itself, offline too, which secrets do not support yet: leave the schedule \
             unpinned (the control plane places its tasks)",
            spec.task_definition
        )));
    }
    let Some(next) = schedules::next_run(&spec, cx.now.secs()) else {
        return Err(ClusterError::Invalid {
            message: invalid("schedule", 1),
            problems: vec![format!(
                "cron: '{}' never fires in {}",
                spec.cron, spec.timezone
            )],
        });
    };
    // A pinned schedule is fired by its node, which keeps its own next firing.
    let next_run = spec.node.is_none().then_some(next);
    let record = ScheduleRecord {
        spec,
        revision,
        next_run,
        runs: Vec::new(),
        created_at: cx.now.secs(),
    };
    let name = record.spec.name.clone();
    cx.event(
        "schedule.created",
        &name,
        format!(
            "{} at '{}' ({}){}",
            record.spec.task_definition,
            record.spec.cron,
            record.spec.timezone,
            record
                .spec
                .node
                .as_deref()
                .map(|n| format!(", fired by node {n}"))
                .unwrap_or_default()
        ),
    );
    cx.txn.put_schedule(record.clone());
    Ok(Reply::ScheduleCreated(schedules::info(
        &record,
        cx.now.secs(),
    )))
}
