//! Secrets: their values sealed at rest (see `flotilla_certs::sealing`), referenced by task
//! definitions (`valueFrom: flotilla:NAME[:JSON-KEY][:VERSION]`), and given to a node only
//! while its desired state holds a task that references them.
//!
//! - A task definition that references a secret, a version or a JSON key that does not exist
//!   is refused at registration, naming the entry.
//! - A task is placed with the version of each secret it references fixed
//!   ([`versions_for`]): the newest then, unless the reference names one. All its containers
//!   and all their runs get the same values; a rotation reaches the tasks placed after it (a
//!   forced deployment rolls a service).
//! - A node asks for a value over its own session ([`fetch`]); the answer is the value only
//!   when a task of its desired state (not STOPPED, desired RUNNING) is placed with that
//!   version. Anything else is refused, logged and recorded as a `secret.refused` event.
//! - No value is ever in an event, a log line or an answer to an operator.

use std::collections::BTreeMap;

use flotilla_api::ops::TaskDefStatus;
use flotilla_api::secrets::{self, SecretInfo, SecretPut, SecretValue, SecretVersionInfo};
use flotilla_api::taskdef::TaskDefinition;
use flotilla_api::tasks::DesiredStatus;
use flotilla_api::AgentReply;

use super::command::{ClusterError, Reply};
use super::ctx::Ctx;
use super::records::{SecretRecord, SecretVersionRecord};
use super::state::Txn;

/// The sealing key's purpose (its HKDF info).
pub const PURPOSE: &[u8] = b"flotilla secrets v1";

/// What a sealed value is bound to: its secret and version.
fn context(name: &str, version: u32) -> Vec<u8> {
    format!("secret\0{name}\0{version}").into_bytes()
}

fn internal(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Internal(e.to_string())
}

fn sealed_version(
    cx: &Ctx<'_, '_>,
    name: &str,
    version: u32,
    value: &SecretValue,
) -> Result<SecretVersionRecord, ClusterError> {
    use base64::Engine;
    if let Some(why) = secrets::value_problem(&value.0) {
        return Err(ClusterError::invalid(format!("value: {why}")));
    }
    let sealed = cx
        .sealing
        .seal(&context(name, version), &value.0)
        .map_err(internal)?;
    Ok(SecretVersionRecord {
        version,
        created_at: cx.now.secs(),
        size: value.0.len(),
        json_keys: secrets::json_keys(&value.0),
        sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
    })
}

/// The value of `version` of `secret`, opened.
fn open(cx: &Ctx<'_, '_>, secret: &SecretRecord, version: u32) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let v = secret
        .version(version)
        .ok_or_else(|| format!("secret {} has no version {version}", secret.name))?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&v.sealed)
        .map_err(|_| format!("secret {} version {version}: damaged record", secret.name))?;
    cx.sealing
        .open(&context(&secret.name, version), &sealed)
        .map_err(|e| format!("secret {} version {version}: {e}", secret.name))
}

/// `flotilla secret create`.
pub fn create(cx: &mut Ctx<'_, '_>, put: SecretPut) -> Result<Reply, ClusterError> {
    if let Some(why) = secrets::name_problem(&put.name) {
        return Err(ClusterError::invalid(format!("name '{}': {why}", put.name)));
    }
    if cx.txn.secret(&put.name).is_some() {
        return Err(ClusterError::Conflict(format!(
            "secret {} exists; `flotilla secret rotate {}` gives it a new version",
            put.name, put.name
        )));
    }
    let first = sealed_version(cx, &put.name, 1, &put.value)?;
    let rec = SecretRecord {
        name: put.name.clone(),
        created_at: cx.now.secs(),
        versions: vec![first],
    };
    tracing::info!(secret = %put.name, "secret created");
    cx.event("secret.created", &put.name, "version 1");
    let info = info(cx.txn, &rec);
    cx.txn.put_secret(rec);
    Ok(Reply::SecretCreated(info))
}

/// `flotilla secret rotate`: a new version; tasks placed from now on get it.
pub fn rotate(cx: &mut Ctx<'_, '_>, name: &str, value: SecretValue) -> Result<Reply, ClusterError> {
    let mut rec = secret(cx.txn, name)?.clone();
    let version = rec.latest().map_or(1, |v| v.version.saturating_add(1));
    let next = sealed_version(cx, name, version, &value)?;
    rec.versions.push(next);
    tracing::info!(secret = %name, version, "secret rotated");
    cx.event(
        "secret.rotated",
        name,
        format!("version {version}: tasks placed from now on get it"),
    );
    let info = info(cx.txn, &rec);
    cx.txn.put_secret(rec);
    Ok(Reply::Secret(info))
}

fn secret<'t>(txn: &'t Txn<'_>, name: &str) -> Result<&'t SecretRecord, ClusterError> {
    txn.secret(name)
        .ok_or_else(|| ClusterError::NotFound(format!("no secret {name}")))
}

/// A secret's metadata, with the active revisions that reference it.
fn info(txn: &Txn<'_>, rec: &SecretRecord) -> SecretInfo {
    SecretInfo {
        name: rec.name.clone(),
        created_at: rec.created_at,
        versions: rec
            .versions
            .iter()
            .map(|v| SecretVersionInfo {
                version: v.version,
                created_at: v.created_at,
                size: v.size,
                json_keys: v.json_keys.clone(),
            })
            .collect(),
        used_by: txn
            .taskdefs()
            .into_iter()
            .filter(|r| {
                r.status == TaskDefStatus::Active && references(&r.task_definition, &rec.name)
            })
            .map(|r| format!("{}:{}", r.family, r.revision))
            .collect(),
    }
}

/// Whether `def` references secret `name`.
fn references(def: &TaskDefinition, name: &str) -> bool {
    def.container_definitions
        .iter()
        .flat_map(|c| &c.secrets)
        .filter_map(|s| s.reference())
        .any(|r| r.secret == name)
}

/// `flotilla secret ls`.
pub fn list(cx: &mut Ctx<'_, '_>) -> Reply {
    Reply::Secrets(
        cx.txn
            .secrets()
            .into_iter()
            .map(|s| info(cx.txn, s))
            .collect(),
    )
}

/// `flotilla secret inspect`.
pub fn get(cx: &mut Ctx<'_, '_>, name: &str) -> Result<Reply, ClusterError> {
    let rec = secret(cx.txn, name)?;
    Ok(Reply::Secret(info(cx.txn, rec)))
}

/// `flotilla secret rm [--force]`: refused while an active task definition revision or a task
/// that has not stopped references it, unless forced (such tasks then fail to start their
/// containers anew, naming the secret).
pub fn remove(cx: &mut Ctx<'_, '_>, name: &str, force: bool) -> Result<Reply, ClusterError> {
    let rec = secret(cx.txn, name)?;
    let users = info(cx.txn, rec).used_by;
    let tasks: Vec<String> = cx
        .txn
        .tasks()
        .into_iter()
        .filter(|t| t.is_live() && t.secret_versions.contains_key(name))
        .map(|t| t.info.id.clone())
        .collect();
    let in_use = !(users.is_empty() && tasks.is_empty());
    if in_use && !force {
        let mut what = Vec::new();
        if !users.is_empty() {
            what.push(format!("task definition revisions {}", users.join(", ")));
        }
        if !tasks.is_empty() {
            what.push(format!("tasks {}", tasks.join(", ")));
        }
        return Err(ClusterError::Conflict(format!(
            "secret {name} is in use by {}: deregister or stop them first, or --force",
            what.join(" and ")
        )));
    }
    cx.txn.remove_secret(name);
    tracing::info!(secret = %name, force, "secret removed");
    cx.event(
        "secret.removed",
        name,
        if in_use {
            "forced, while in use".to_string()
        } else {
            "all versions".to_string()
        },
    );
    Ok(Reply::Done)
}

/// What is wrong with the secrets `def` references, each named by its JSON path: a missing
/// secret, version or JSON key (checked against the version a task placed now would get).
pub fn problems(cx: &Ctx<'_, '_>, def: &TaskDefinition) -> Vec<String> {
    let mut out = Vec::new();
    for (ci, c) in def.container_definitions.iter().enumerate() {
        for (si, s) in c.secrets.iter().enumerate() {
            let path = format!("$.containerDefinitions[{ci}].secrets[{si}].valueFrom");
            let Some(r) = s.reference() else {
                continue;
            };
            let Some(rec) = cx.txn.secret(&r.secret) else {
                out.push(format!(
                    "{path}: no secret {} (create it with `flotilla secret create {}`)",
                    r.secret, r.secret
                ));
                continue;
            };
            let version = match r.version {
                Some(v) if rec.version(v).is_none() => {
                    out.push(format!(
                        "{path}: secret {} has no version {v} (its newest is {})",
                        r.secret,
                        rec.latest().map_or(0, |l| l.version)
                    ));
                    continue;
                }
                Some(v) => v,
                None => rec.latest().map_or(0, |l| l.version),
            };
            if let (Some(key), Some(v)) = (&r.json_key, rec.version(version)) {
                if !v.json_keys.contains(key) {
                    out.push(format!(
                        "{path}: version {version} of secret {} has no JSON key '{key}'",
                        r.secret
                    ));
                }
            }
        }
    }
    out
}

/// The version of each secret `def` references that a task placed now gets: the one named,
/// else the newest. A secret that is gone (removed with `--force`) is left out: the node
/// cannot start the containers that need it and says which secret is missing.
pub fn versions_for(txn: &Txn<'_>, def: &TaskDefinition) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for r in def
        .container_definitions
        .iter()
        .flat_map(|c| &c.secrets)
        .filter_map(|s| s.reference())
    {
        let Some(rec) = txn.secret(&r.secret) else {
            continue;
        };
        let version = r
            .version
            .filter(|v| rec.version(*v).is_some())
            .or_else(|| rec.latest().map(|l| l.version));
        if let Some(v) = version {
            out.insert(r.secret.clone(), v);
        }
    }
    out
}

/// A node asks for `version` of secret `name`: the value when a task of its desired state is
/// placed with it; otherwise refused, logged and recorded.
pub fn fetch(cx: &mut Ctx<'_, '_>, node: &str, name: &str, version: u32) -> Reply {
    let needed = cx.txn.live_tasks_on(node).into_iter().any(|t| {
        t.info.desired == DesiredStatus::Running && t.secret_versions.get(name) == Some(&version)
    });
    let refuse = |cx: &mut Ctx<'_, '_>, why: String| {
        tracing::warn!(node = %node, secret = %name, version, "secret refused: {why}");
        cx.event(
            "secret.refused",
            name,
            format!("node {node} asked for version {version}: {why}"),
        );
        Reply::Agent(AgentReply::Refused { reason: why })
    };
    if !needed {
        return refuse(
            cx,
            "no task of its desired state is placed with it".to_string(),
        );
    }
    let Some(rec) = cx.txn.secret(name) else {
        return refuse(cx, "the secret was removed".to_string());
    };
    match open(cx, rec, version) {
        Ok(value) => {
            tracing::info!(node = %node, secret = %name, version, "secret given to its node");
            Reply::Agent(AgentReply::Secret {
                value: SecretValue(value),
            })
        }
        Err(why) => {
            tracing::error!(node = %node, "{why}");
            Reply::Agent(AgentReply::Refused { reason: why })
        }
    }
}
