//! Secrets: their values sealed at rest (see `flotilla_certs::sealing`), referenced by task
//! definitions (`valueFrom: flotilla:NAME[:JSON-KEY][:VERSION]`), and given to a node only
//! while its desired state holds a task that references them.
//!
//! - A task definition that references a secret, a version or a JSON key that does not exist
//!   is refused at registration, naming the entry.
//! - A task is placed with the version of each secret it references fixed
//!   ([`versions_for`]): the newest then, unless the reference names one. All its containers
//!   and all their runs get the same values; a rotation reaches the tasks placed after it (a
//!   forced deployment rolls a service). Version numbers are never given twice (a removed
//!   secret keeps its record, without values).
//! - A node asks for a value over its own session ([`fetch`]); the answer is the value only
//!   when a task of its desired state (not STOPPED, desired RUNNING) uses that version.
//!   Anything else is refused and logged, and recorded as a `secret.refused` event at most
//!   once a minute per node.
//! - No value is ever in an event, a log line or an answer to an operator.
//!
//! Configs ([`Kind::Config`]: files such as `nginx.conf`, a container definition's `configs`)
//! go the same way — registration checks, versions fixed per task, given only to the nodes
//! that run them — but are stored as they are, not sealed.

use std::collections::BTreeMap;

use flotilla_api::ops::TaskDefStatus;
use flotilla_api::secrets::{self, SecretInfo, SecretPut, SecretValue, SecretVersionInfo};
use flotilla_api::taskdef::TaskDefinition;
use flotilla_api::tasks::DesiredStatus;
use flotilla_api::AgentReply;

use super::command::{ClusterError, Reply};
use super::ctx::Ctx;
use super::live::REFUSAL_EVENT_EVERY_SECS;
use super::records::{ConfigRecord, SecretRecord, SecretVersionRecord};
use super::state::Txn;

/// The sealing key's purpose (its HKDF info).
pub const PURPOSE: &[u8] = b"flotilla secrets v1";

pub use super::command::SecretKind as Kind;

impl Kind {
    /// `secret` or `config`: the noun of messages and event kinds.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Config => "config",
        }
    }

    /// The record of `name`, a removed one's included.
    fn record<'t>(self, txn: &'t Txn<'_>, name: &str) -> Option<&'t SecretRecord> {
        match self {
            Self::Secret => txn.secret(name),
            Self::Config => txn.config(name).map(|c| &c.0),
        }
    }

    /// `name`, unless it was removed.
    fn get<'t>(self, txn: &'t Txn<'_>, name: &str) -> Option<&'t SecretRecord> {
        self.record(txn, name).filter(|r| r.removed_at.is_none())
    }

    fn all<'t>(self, txn: &'t Txn<'_>) -> Vec<&'t SecretRecord> {
        let all = match self {
            Self::Secret => txn.secrets(),
            Self::Config => txn.configs().into_iter().map(|c| &c.0).collect(),
        };
        all.into_iter().filter(|r| r.removed_at.is_none()).collect()
    }

    fn put(self, txn: &mut Txn<'_>, rec: SecretRecord) {
        match self {
            Self::Secret => txn.put_secret(rec),
            Self::Config => txn.put_config(ConfigRecord(rec)),
        }
    }

    /// The versions a task record holds of this kind.
    fn versions_of(self, t: &super::records::TaskRecord) -> &BTreeMap<String, u32> {
        match self {
            Self::Secret => &t.secret_versions,
            Self::Config => &t.config_versions,
        }
    }

    fn versions_of_mut(self, t: &mut super::records::TaskRecord) -> &mut BTreeMap<String, u32> {
        match self {
            Self::Secret => &mut t.secret_versions,
            Self::Config => &mut t.config_versions,
        }
    }

    /// Whether task `t` uses `version` of `name`: placed with it (an unversioned reference),
    /// or its definition names that version.
    fn uses(self, t: &super::records::TaskRecord, name: &str, version: u32) -> bool {
        self.versions_of(t).get(name) == Some(&version)
            || self
                .references(&t.definition)
                .iter()
                .any(|(n, v, ..)| n == name && *v == Some(version))
    }

    /// The names of this kind `def` references, with the version named (if any) and the
    /// JSON path of the reference.
    fn references(
        self,
        def: &TaskDefinition,
    ) -> Vec<(String, Option<u32>, Option<String>, String)> {
        let mut out = Vec::new();
        for (ci, c) in def.container_definitions.iter().enumerate() {
            match self {
                Self::Secret => {
                    for (si, s) in c.secrets.iter().enumerate() {
                        if let Some(r) = s.reference() {
                            out.push((
                                r.secret,
                                r.version,
                                r.json_key,
                                format!("$.containerDefinitions[{ci}].secrets[{si}].valueFrom"),
                            ));
                        }
                    }
                }
                Self::Config => {
                    for (fi, f) in c.configs.iter().enumerate() {
                        out.push((
                            f.source.clone(),
                            f.version,
                            None,
                            format!("$.containerDefinitions[{ci}].configs[{fi}].source"),
                        ));
                    }
                }
            }
        }
        out
    }
}

/// What a sealed value is bound to: its secret and version.
fn context(name: &str, version: u32) -> Vec<u8> {
    format!("secret\0{name}\0{version}").into_bytes()
}

fn internal(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Internal(e.to_string())
}

fn stored_version(
    cx: &Ctx<'_, '_>,
    kind: Kind,
    name: &str,
    version: u32,
    value: &SecretValue,
) -> Result<SecretVersionRecord, ClusterError> {
    use base64::Engine;
    if let Some(why) = secrets::value_problem(&value.0) {
        return Err(ClusterError::invalid(format!(
            "value: {}",
            why.replace("a secret's", &format!("a {}'s", kind.noun()))
        )));
    }
    let stored = match kind {
        Kind::Secret => cx
            .sealing
            .seal(&context(name, version), &value.0)
            .map_err(internal)?,
        Kind::Config => value.0.clone(),
    };
    Ok(SecretVersionRecord {
        version,
        created_at: cx.now.secs(),
        size: value.0.len(),
        value: base64::engine::general_purpose::STANDARD.encode(stored),
    })
}

/// The value of `version` of `rec`, opened.
fn open(cx: &Ctx<'_, '_>, kind: Kind, rec: &SecretRecord, version: u32) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let noun = kind.noun();
    let v = rec
        .version(version)
        .ok_or_else(|| format!("{noun} {} has no version {version}", rec.name))?;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(&v.value)
        .map_err(|_| format!("{noun} {} version {version}: damaged record", rec.name))?;
    match kind {
        Kind::Secret => cx
            .sealing
            .open(&context(&rec.name, version), &stored)
            .map_err(|e| format!("{noun} {} version {version}: {e}", rec.name)),
        Kind::Config => Ok(stored),
    }
}

/// `flotilla secret create` / `flotilla config create`. A name that was removed goes on with
/// the versions after its last one.
pub fn create(cx: &mut Ctx<'_, '_>, kind: Kind, put: SecretPut) -> Result<Reply, ClusterError> {
    let noun = kind.noun();
    if let Some(why) = secrets::name_problem(&put.name) {
        return Err(ClusterError::invalid(format!("name '{}': {why}", put.name)));
    }
    if kind.get(cx.txn, &put.name).is_some() {
        let verb = if kind == Kind::Secret {
            "rotate"
        } else {
            "update"
        };
        return Err(ClusterError::Conflict(format!(
            "{noun} {} exists; `flotilla {noun} {verb} {}` gives it a new version",
            put.name, put.name
        )));
    }
    let before = kind.record(cx.txn, &put.name).map_or(0, |r| r.last_version);
    let version = next_version(kind, &put.name, before)?;
    let first = stored_version(cx, kind, &put.name, version, &put.value)?;
    let rec = SecretRecord {
        name: put.name.clone(),
        created_at: cx.now.secs(),
        versions: vec![first],
        last_version: version,
        removed_at: None,
    };
    tracing::info!(name = %put.name, version, "{noun} created");
    cx.event(
        &format!("{noun}.created"),
        &put.name,
        format!("version {version}"),
    );
    let info = info(cx.txn, kind, &rec);
    kind.put(cx.txn, rec);
    Ok(Reply::SecretCreated(info))
}

fn next_version(kind: Kind, name: &str, last: u32) -> Result<u32, ClusterError> {
    last.checked_add(1).ok_or_else(|| {
        ClusterError::Conflict(format!("{} {name} has no version number left", kind.noun()))
    })
}

/// `flotilla secret rotate` / `flotilla config update`: a new version; tasks placed from now
/// on get it. Versions beyond the newest [`SecretRecord::KEPT_VERSIONS`] that no task or
/// definition uses are dropped.
pub fn rotate(
    cx: &mut Ctx<'_, '_>,
    kind: Kind,
    name: &str,
    value: SecretValue,
) -> Result<Reply, ClusterError> {
    let noun = kind.noun();
    let mut rec = object(cx.txn, kind, name)?.clone();
    let last = rec.last_version.max(rec.latest().map_or(0, |v| v.version));
    let version = next_version(kind, name, last)?;
    // Definitions in use that pick a JSON key of the newest version must find it in this one.
    let mut misfits: Vec<String> = Vec::new();
    for def in definitions_in_use(cx.txn) {
        for (n, named, json_key, path) in kind.references(&def.task_definition) {
            let (true, None, Some(key)) = (n == name, named, json_key) else {
                continue;
            };
            if let Err(why) = secrets::pick(&value.0, Some(&key)) {
                misfits.push(format!("{}:{} {path}: {why}", def.family, def.revision));
            }
        }
    }
    misfits.sort();
    misfits.dedup();
    if !misfits.is_empty() {
        return Err(ClusterError::Invalid {
            message: format!(
                "the new value of {noun} {name} lacks what task definitions in use pick from it"
            ),
            problems: misfits,
        });
    }
    let next = stored_version(cx, kind, name, version, &value)?;
    rec.versions.push(next);
    rec.last_version = version;
    let used = used_versions(cx.txn, kind, name);
    let keep_from = rec
        .versions
        .len()
        .saturating_sub(SecretRecord::KEPT_VERSIONS);
    let mut i = 0;
    rec.versions.retain(|v| {
        i += 1;
        i > keep_from || used.contains(&v.version)
    });
    tracing::info!(name = %name, version, "{noun}: a new version");
    let verb = if kind == Kind::Secret {
        "rotated"
    } else {
        "updated"
    };
    cx.event(
        &format!("{noun}.{verb}"),
        name,
        format!("version {version}: tasks placed from now on get it"),
    );
    let info = info(cx.txn, kind, &rec);
    kind.put(cx.txn, rec);
    Ok(Reply::Secret(info))
}

/// The versions of `name` that tasks not stopped use, and that definitions still in use
/// name.
fn used_versions(txn: &Txn<'_>, kind: Kind, name: &str) -> std::collections::BTreeSet<u32> {
    let mut out: std::collections::BTreeSet<u32> = txn
        .tasks()
        .into_iter()
        .filter(|t| t.is_live())
        .flat_map(|t| {
            let mut v: Vec<u32> = kind.versions_of(t).get(name).copied().into_iter().collect();
            v.extend(
                kind.references(&t.definition)
                    .into_iter()
                    .filter(|(n, ..)| n == name)
                    .filter_map(|(_, v, ..)| v),
            );
            v
        })
        .collect();
    for def in definitions_in_use(txn) {
        out.extend(
            kind.references(&def.task_definition)
                .into_iter()
                .filter(|(n, ..)| n == name)
                .filter_map(|(_, v, ..)| v),
        );
    }
    out
}

/// Every revision new tasks may still be placed from: active ones, and those services'
/// deployments and schedules hold (also once deregistered).
fn definitions_in_use<'t>(txn: &'t Txn<'_>) -> Vec<&'t flotilla_api::ops::TaskDefRevision> {
    let mut out: Vec<&flotilla_api::ops::TaskDefRevision> = txn
        .taskdefs()
        .into_iter()
        .filter(|r| r.status == TaskDefStatus::Active)
        .collect();
    for s in txn.services() {
        out.extend(s.deployments.iter().map(|d| &d.revision));
    }
    for s in txn.schedules() {
        out.push(&s.revision);
    }
    out
}

fn object<'t>(txn: &'t Txn<'_>, kind: Kind, name: &str) -> Result<&'t SecretRecord, ClusterError> {
    kind.get(txn, name)
        .ok_or_else(|| ClusterError::NotFound(format!("no {} {name}", kind.noun())))
}

/// Metadata of `rec`, with the revisions in use that reference it.
fn info(txn: &Txn<'_>, kind: Kind, rec: &SecretRecord) -> SecretInfo {
    let mut used_by: Vec<String> = definitions_in_use(txn)
        .into_iter()
        .filter(|r| {
            kind.references(&r.task_definition)
                .iter()
                .any(|(n, ..)| *n == rec.name)
        })
        .map(|r| format!("{}:{}", r.family, r.revision))
        .collect();
    used_by.sort();
    used_by.dedup();
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
            })
            .collect(),
        used_by,
    }
}

/// `flotilla secret ls` / `flotilla config ls`.
pub fn list(cx: &mut Ctx<'_, '_>, kind: Kind) -> Reply {
    Reply::Secrets(
        kind.all(cx.txn)
            .into_iter()
            .map(|s| info(cx.txn, kind, s))
            .collect(),
    )
}

/// `flotilla secret inspect` / `flotilla config inspect`.
pub fn get(cx: &mut Ctx<'_, '_>, kind: Kind, name: &str) -> Result<Reply, ClusterError> {
    let rec = object(cx.txn, kind, name)?;
    Ok(Reply::Secret(info(cx.txn, kind, rec)))
}

/// `flotilla secret rm [--force]` / `flotilla config rm`: refused while a revision in use (an
/// active one, or one a service's deployment or a schedule holds) or a task that has not
/// stopped references it, unless forced. Forced, its values are taken from the tasks that
/// have them (their desired state changes, and their nodes delete them): their containers
/// cannot start anew. The record stays, without values, so its version numbers are never
/// given again.
pub fn remove(
    cx: &mut Ctx<'_, '_>,
    kind: Kind,
    name: &str,
    force: bool,
) -> Result<Reply, ClusterError> {
    let noun = kind.noun();
    let rec = object(cx.txn, kind, name)?.clone();
    let users = info(cx.txn, kind, &rec).used_by;
    let tasks: Vec<String> = cx
        .txn
        .tasks()
        .into_iter()
        .filter(|t| {
            t.is_live()
                && (kind.versions_of(t).contains_key(name)
                    || kind
                        .references(&t.definition)
                        .iter()
                        .any(|(n, ..)| n == name))
        })
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
            "{noun} {name} is in use by {}: deregister or stop them first, or --force",
            what.join(" and ")
        )));
    }
    for id in &tasks {
        if let Some(t) = cx.txn.task(id) {
            let mut t = t.clone();
            if kind.versions_of_mut(&mut t).remove(name).is_some() {
                cx.txn.put_task(t);
            }
        }
    }
    let last_version = rec.last_version.max(rec.latest().map_or(0, |v| v.version));
    kind.put(
        cx.txn,
        SecretRecord {
            versions: Vec::new(),
            last_version,
            removed_at: Some(cx.now.secs()),
            ..rec
        },
    );
    tracing::info!(name = %name, force, "{noun} removed");
    cx.event(
        &format!("{noun}.removed"),
        name,
        if in_use {
            format!(
                "forced, while in use: taken from {}",
                count(tasks.len(), "task")
            )
        } else {
            "all versions".to_string()
        },
    );
    Ok(Reply::Done)
}

fn count(n: usize, what: &str) -> String {
    flotilla_api::count(n, what)
}

/// What is wrong with the secrets and configs `def` references, each named by its JSON path:
/// a missing secret or config, version, or JSON key (checked in the value of the version a
/// task placed now would get).
pub fn problems(cx: &Ctx<'_, '_>, def: &TaskDefinition) -> Vec<String> {
    let mut out = Vec::new();
    for kind in [Kind::Secret, Kind::Config] {
        let noun = kind.noun();
        for (name, named, json_key, path) in kind.references(def) {
            let Some(rec) = kind.get(cx.txn, &name) else {
                out.push(format!(
                    "{path}: no {noun} {name} (create it with `flotilla {noun} create {name}`)"
                ));
                continue;
            };
            let newest = rec.latest().map_or(0, |l| l.version);
            let version = match named {
                Some(v) if rec.version(v).is_none() => {
                    out.push(format!(
                        "{path}: {noun} {name} has no version {v} (its newest is {newest})"
                    ));
                    continue;
                }
                Some(v) => v,
                None => newest,
            };
            if let Some(key) = &json_key {
                let picked =
                    open(cx, kind, rec, version).and_then(|value| secrets::pick(&value, Some(key)));
                if let Err(why) = picked {
                    out.push(format!("{path}: version {version} of {noun} {name}: {why}"));
                }
            }
        }
    }
    out
}

/// The version of each secret (or config) `def` references without naming one that a task
/// placed now gets: the newest. One that is gone (removed) is left out: the node cannot start
/// the containers that need it and says which is missing. A reference that names its version
/// gets that one, or — when it is gone — nothing (see [`Kind::uses`]).
pub fn versions_for(txn: &Txn<'_>, kind: Kind, def: &TaskDefinition) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for (name, named, ..) in kind.references(def) {
        if named.is_some() {
            continue;
        }
        if let Some(v) = kind.get(txn, &name).and_then(|r| r.latest()) {
            out.insert(name, v.version);
        }
    }
    out
}

/// A node asks for `version` of secret (or config) `name`: the value when a task of its
/// desired state uses it; otherwise refused and logged (and recorded as an event, at most once
/// a minute per node).
pub fn fetch(cx: &mut Ctx<'_, '_>, kind: Kind, node: &str, name: &str, version: u32) -> Reply {
    let noun = kind.noun();
    if secrets::name_problem(name).is_some() {
        let shown: String = name.chars().take(64).collect();
        tracing::warn!(node = %node, name = ?shown, "{noun} refused: not a {noun} name");
        return Reply::Agent(AgentReply::Refused {
            reason: format!("not a {noun} name"),
        });
    }
    let needed = cx
        .txn
        .live_tasks_on(node)
        .into_iter()
        .any(|t| t.info.desired == DesiredStatus::Running && kind.uses(t, name, version));
    let refuse = |cx: &mut Ctx<'_, '_>, why: String| {
        tracing::warn!(node = %node, name = %name, version, "{noun} refused: {why}");
        if cx
            .live
            .refusal_event_due(node, cx.now, |l| &mut l.refused_at)
        {
            cx.event(
                &format!("{noun}.refused"),
                name,
                format!(
                    "node {node} asked for version {version}: {why} (further refusals of this \
                     node within {REFUSAL_EVENT_EVERY_SECS} s are only logged)"
                ),
            );
        }
        Reply::Agent(AgentReply::Refused { reason: why })
    };
    if !needed {
        return refuse(
            cx,
            "no task of its desired state is placed with it".to_string(),
        );
    }
    let Some(rec) = kind.get(cx.txn, name) else {
        return refuse(cx, format!("the {noun} was removed"));
    };
    match open(cx, kind, rec, version) {
        Ok(value) => {
            tracing::info!(node = %node, name = %name, version, "{noun} given to its node");
            let value = SecretValue(value);
            Reply::Agent(match kind {
                Kind::Secret => AgentReply::Secret { value },
                Kind::Config => AgentReply::Config { value },
            })
        }
        Err(why) => {
            tracing::warn!(node = %node, "{why}");
            Reply::Agent(AgentReply::Refused { reason: why })
        }
    }
}
