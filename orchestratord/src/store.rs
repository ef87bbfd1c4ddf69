//! The control plane's durable state in one redb file: join tokens (secrets hashed), nodes, task
//! definitions, tasks and the last [`MAX_EVENTS`] events.
//! Every write is committed (fsynced) before it is acknowledged.

use std::path::Path;

use flotilla_api::ops::{Event, TaskDefRevision, TaskDefStatus, TaskInfo};
use flotilla_api::taskdef::TaskDefinition;
use flotilla_api::Labels;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// Events keyed by sequence number.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Events kept; older ones are dropped as new ones come.
pub const MAX_EVENTS: u64 = 10_000;
/// Task definitions keyed `family\0<revision, 10 digits>`, so a family's revisions sort.
const TASKDEFS: TableDefinition<&str, &[u8]> = TableDefinition::new("taskdefs");

/// A join token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Creation time (seconds since the epoch).
    pub created_at: u64,
    /// Expiry (seconds since the epoch).
    pub expires_at: u64,
    /// Joins it allows in total.
    pub uses: u32,
    /// Joins it was used for.
    pub used: u32,
    /// Labels every node joining with it gets.
    pub labels: Labels,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Server-assigned id.
    pub id: String,
    /// The host name the node gave when it joined.
    pub hostname: String,
    /// Attributes: the token's labels and the node's own.
    pub labels: Labels,
    /// Join time (seconds since the epoch).
    pub joined_at: u64,
    /// The token it joined with.
    pub token_id: String,
    /// Expiry of its newest certificate (seconds since the epoch).
    pub cert_not_after: u64,
    /// Revoked nodes are refused for good.
    pub revoked: bool,
    /// Generation of the node's desired state; bumped on every change.
    #[serde(default)]
    pub generation: u64,
    /// No new tasks are placed on a draining node.
    #[serde(default)]
    pub draining: bool,
    /// Subnet of its task bridge (assigned when first needed, unique in the cluster).
    #[serde(default)]
    pub bridge_subnet: Option<ipnet::Ipv4Net>,
    /// Its address in the cluster (where its host ports are reached), as it last said.
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
}

/// A service as stored: its spec and deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// As created, with later updates.
    pub spec: flotilla_api::service::ServiceSpec,
    /// The primary deployment and those still being replaced.
    pub deployments: Vec<DeploymentRecord>,
    /// The revision of the last deployment that completed (what a rollback returns to).
    #[serde(default)]
    pub last_completed: Option<TaskDefRevision>,
    /// Why its tasks could not all be placed lately.
    #[serde(default)]
    pub placement_problem: Option<String>,
    /// Its virtual address (`discovery.vip`), kept for its life.
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Creation time.
    pub created_at: u64,
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The spec, its task definition resolved.
    pub spec: flotilla_api::schedule::ScheduleSpec,
    /// The revision it starts (kept whole).
    pub revision: TaskDefRevision,
    /// Next firing by the control plane (unpinned schedules).
    pub next_run: Option<u64>,
    /// Latest runs, newest first.
    pub runs: Vec<flotilla_api::schedule::ScheduleRun>,
    /// Creation time.
    pub created_at: u64,
}

/// One deployment of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Id.
    pub id: String,
    /// The revision it runs (kept whole: a deregistered revision still runs).
    pub revision: TaskDefRevision,
    /// New tasks come from it.
    pub primary: bool,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`.
    pub rollout: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Creation time.
    pub created_at: u64,
}

/// A task as stored: what is listed, plus what the node needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The listed part.
    pub info: TaskInfo,
    /// The definition of its revision.
    pub definition: TaskDefinition,
    /// Extra environment.
    pub env: Vec<flotilla_api::taskdef::KeyValue>,
    /// When its node was found lost (a service then replaced it).
    #[serde(default)]
    pub lost_at: Option<u64>,
    /// Its LAN address (awsvpc), held until it has stopped.
    #[serde(default)]
    pub address: Option<flotilla_api::tasks::TaskAddress>,
}

fn taskdef_key(family: &str, revision: u32) -> String {
    format!("{family}\0{revision:010}")
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("store: corrupt record {key}: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Why a token did not admit a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token (never created, or removed).
    #[error("unknown or revoked join token {0}")]
    Unknown(String),
    /// The secret does not match.
    #[error("join token {0}: wrong secret")]
    WrongSecret(String),
    /// Past its expiry.
    #[error("join token {id} expired {ago} s ago")]
    Expired {
        /// Token id.
        id: String,
        /// Seconds since expiry.
        ago: u64,
    },
    /// All uses spent.
    #[error("join token {0} was already used")]
    Used(String),
}

/// The durable store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// Events kept ([`MAX_EVENTS`]).
    max_events: u64,
}

impl Store {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path).map_err(db)?;
        let w = database.begin_write().map_err(db)?;
        w.open_table(TOKENS).map_err(db)?;
        w.open_table(NODES).map_err(db)?;
        w.open_table(TASKDEFS).map_err(db)?;
        w.open_table(TASKS).map_err(db)?;
        w.open_table(EVENTS).map_err(db)?;
        w.open_table(SERVICES).map_err(db)?;
        w.open_table(SCHEDULES).map_err(db)?;
        w.commit().map_err(db)?;
        Ok(Self {
            db: database,
            max_events: MAX_EVENTS,
        })
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let w = self.db.begin_write().map_err(db)?;
        let existed = w
            .open_table(table)
            .map_err(db)?
            .remove(key)
            .map_err(db)?
            .is_some();
        w.commit().map_err(db)?;
        Ok(existed)
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(db)?;
        let w = self.db.begin_write().map_err(db)?;
        w.open_table(table)
            .map_err(db)?
            .insert(key, bytes.as_slice())
            .map_err(db)?;
        w.commit().map_err(db)
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(table).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: k.value().to_string(),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(table).map_err(db)?;
        let Some(v) = t.get(key).map_err(db)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Stores a new token.
    pub fn put_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.put(TOKENS, &t.id, t)
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all(TOKENS)
    }

    /// Removes a token; false if there was none.
    pub fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        self.remove(TOKENS, id)
    }

    /// Spends one use of a token, in one transaction, if the secret matches and it is still
    /// valid at `now`.
    pub fn redeem(
        &self,
        id: &str,
        secret: &str,
        now: u64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        let w = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut t = w.open_table(TOKENS).map_err(db)?;
            let rec: Option<TokenRecord> =
                match t.get(id).map_err(db)? {
                    None => None,
                    Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| {
                        StoreError::Corrupt {
                            key: id.to_string(),
                            reason: e.to_string(),
                        }
                    })?),
                };
            match rec {
                None => Err(TokenRefusal::Unknown(id.to_string())),
                Some(r) if !flotilla_certs::token::secret_matches(secret, &r.secret_hash) => {
                    Err(TokenRefusal::WrongSecret(id.to_string()))
                }
                Some(r) if now >= r.expires_at => Err(TokenRefusal::Expired {
                    id: id.to_string(),
                    ago: now - r.expires_at,
                }),
                Some(r) if r.used >= r.uses => Err(TokenRefusal::Used(id.to_string())),
                Some(mut r) => {
                    r.used += 1;
                    let bytes = serde_json::to_vec(&r).map_err(db)?;
                    t.insert(id, bytes.as_slice()).map_err(db)?;
                    Ok(r)
                }
            }
        };
        w.commit().map_err(db)?;
        Ok(outcome)
    }

    /// Registers a definition as the next revision of its family.
    pub fn register_taskdef(
        &self,
        def: TaskDefinition,
        now: u64,
    ) -> Result<TaskDefRevision, StoreError> {
        let w = self.db.begin_write().map_err(db)?;
        let rec = {
            let mut t = w.open_table(TASKDEFS).map_err(db)?;
            let lo = format!("{}\0", def.family);
            let hi = format!("{}\u{1}", def.family);
            let last = t
                .range(lo.as_str()..hi.as_str())
                .map_err(db)?
                .next_back()
                .transpose()
                .map_err(db)?
                .map(|(k, _)| k.value().to_string());
            let revision = last
                .and_then(|k| k.rsplit('\0').next().and_then(|r| r.parse::<u32>().ok()))
                .unwrap_or(0)
                + 1;
            let rec = TaskDefRevision {
                family: def.family.clone(),
                revision,
                status: TaskDefStatus::Active,
                registered_at: now,
                task_definition: def,
            };
            let bytes = serde_json::to_vec(&rec).map_err(db)?;
            t.insert(
                taskdef_key(&rec.family, revision).as_str(),
                bytes.as_slice(),
            )
            .map_err(db)?;
            rec
        };
        w.commit().map_err(db)?;
        Ok(rec)
    }

    /// Every revision of every family, in order.
    pub fn taskdefs(&self) -> Result<Vec<TaskDefRevision>, StoreError> {
        self.all(TASKDEFS)
    }

    /// One revision, or the newest active one of a family when `revision` is `None`.
    pub fn taskdef(
        &self,
        family: &str,
        revision: Option<u32>,
    ) -> Result<Option<TaskDefRevision>, StoreError> {
        match revision {
            Some(r) => self.get(TASKDEFS, &taskdef_key(family, r)),
            None => Ok(self
                .taskdefs()?
                .into_iter()
                .rfind(|t| t.family == family && t.status == TaskDefStatus::Active)),
        }
    }

    /// Marks a revision inactive; `None` if there is no such revision.
    pub fn deregister_taskdef(
        &self,
        family: &str,
        revision: u32,
    ) -> Result<Option<TaskDefRevision>, StoreError> {
        let Some(mut rec) = self.taskdef(family, Some(revision))? else {
            return Ok(None);
        };
        rec.status = TaskDefStatus::Inactive;
        self.put(TASKDEFS, &taskdef_key(family, revision), &rec)?;
        Ok(Some(rec))
    }

    /// Stores or replaces a schedule.
    pub fn put_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        self.put(SCHEDULES, &s.spec.name, s)
    }

    /// A schedule by name.
    pub fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.get(SCHEDULES, name)
    }

    /// Every schedule.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.all(SCHEDULES)
    }

    /// Forgets a schedule; true when it existed.
    pub fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.remove(SCHEDULES, name)
    }

    /// Stores or replaces a service.
    pub fn put_service(&self, s: &ServiceRecord) -> Result<(), StoreError> {
        self.put(SERVICES, &s.spec.service_name, s)
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        self.get(SERVICES, name)
    }

    /// Every service.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.all(SERVICES)
    }

    /// Forgets a service; true when it existed.
    pub fn remove_service(&self, name: &str) -> Result<bool, StoreError> {
        self.remove(SERVICES, name)
    }

    /// Appends an event (dropping the oldest beyond [`MAX_EVENTS`]); returns it. The commit is
    /// not flushed on its own: the event becomes durable with the next state change (callers
    /// record an event just before the change it describes), so events cost no extra fsync.
    pub fn record_event(
        &self,
        kind: &str,
        subject: &str,
        message: String,
        time: u64,
    ) -> Result<Event, StoreError> {
        let mut w = self.db.begin_write().map_err(db)?;
        w.set_durability(redb::Durability::None).map_err(db)?;
        let event = {
            let mut t = w.open_table(EVENTS).map_err(db)?;
            let last = t.last().map_err(db)?.map_or(0, |(k, _)| k.value());
            let event = Event {
                seq: last + 1,
                time,
                kind: kind.to_string(),
                subject: subject.to_string(),
                message,
            };
            let bytes = serde_json::to_vec(&event).map_err(db)?;
            t.insert(event.seq, bytes.as_slice()).map_err(db)?;
            if event.seq > self.max_events {
                t.retain_in(..=event.seq - self.max_events, |_, _| false)
                    .map_err(db)?;
            }
            event
        };
        w.commit().map_err(db)?;
        Ok(event)
    }

    /// Events after `since`, oldest first, at most `limit`.
    pub fn events(&self, since: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(EVENTS).map_err(db)?;
        let mut out = Vec::new();
        for item in t.range(since.saturating_add(1)..).map_err(db)?.take(limit) {
            let (k, v) = item.map_err(db)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: k.value().to_string(),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Stores or replaces a task.
    pub fn put_task(&self, t: &TaskRecord) -> Result<(), StoreError> {
        self.put(TASKS, &t.info.id, t)
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.get(TASKS, id)
    }

    /// Every task.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.all(TASKS)
    }

    /// Bumps a node's desired-state generation; returns the new one.
    pub fn bump_generation(&self, node_id: &str) -> Result<u64, StoreError> {
        let Some(mut n) = self.node(node_id)? else {
            return Ok(0);
        };
        n.generation += 1;
        self.put_node(&n)?;
        Ok(n.generation)
    }

    /// Stores or replaces a node.
    pub fn put_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        self.put(NODES, &n.id, n)
    }

    /// Whether the store answers a read (what the systemd watchdog vouches for).
    pub fn healthy(&self) -> bool {
        self.db
            .begin_read()
            .ok()
            .and_then(|r| r.open_table(NODES).ok())
            .is_some()
    }

    /// Forgets a node; true when it existed.
    pub fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        self.remove(NODES, id)
    }

    /// A node by id.
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.get(NODES, id)
    }

    /// Every node.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all(NODES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_paged_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("s.redb")).expect("open");
        store.max_events = 5;
        for i in 0..8 {
            let e = store
                .record_event("k", "s", format!("m{i}"), 100 + i)
                .expect("event");
            assert_eq!(e.seq, i + 1);
        }
        let all = store.events(0, 100).expect("events");
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8],
            "only the last 5 are kept"
        );
        let page = store.events(5, 2).expect("events");
        assert_eq!(
            page.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["m5", "m6"]
        );
        drop(store);
        // numbering goes on after a restart
        let store = Store::open(&dir.path().join("s.redb")).expect("reopen");
        assert_eq!(
            store.record_event("k", "s", "m".into(), 1).expect("e").seq,
            9
        );
    }

    fn token(id: &str, secret: &str, expires_at: u64, uses: u32) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: flotilla_certs::token::hash_secret(secret),
            created_at: 0,
            expires_at,
            uses,
            used: 0,
            labels: Labels::new(),
        }
    }

    #[test]
    fn taskdef_revisions_count_per_family() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db.redb")).expect("open");
        let def = |family: &str| {
            flotilla_api::taskdef::parse(&format!(
                r#"{{"family":"{family}","containerDefinitions":[{{"name":"a","image":"x","memory":64}}]}}"#
            ))
            .expect("valid")
            .definition
        };
        assert_eq!(s.register_taskdef(def("web"), 1).expect("reg").revision, 1);
        assert_eq!(s.register_taskdef(def("web"), 2).expect("reg").revision, 2);
        assert_eq!(s.register_taskdef(def("we"), 3).expect("reg").revision, 1);
        assert_eq!(
            s.register_taskdef(def("web-x"), 3).expect("reg").revision,
            1
        );
        assert_eq!(
            s.taskdef("web", None).expect("get").map(|t| t.revision),
            Some(2)
        );
        s.deregister_taskdef("web", 2).expect("dereg");
        assert_eq!(
            s.taskdef("web", None).expect("get").map(|t| t.revision),
            Some(1)
        );
        assert_eq!(
            s.taskdef("web", Some(2)).expect("get").map(|t| t.status),
            Some(TaskDefStatus::Inactive)
        );
        assert_eq!(s.register_taskdef(def("web"), 4).expect("reg").revision, 3);
    }

    #[test]
    fn tokens_are_spent_once_and_expire() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db.redb")).expect("open");
        s.put_token(&token("a", "s3cret", 100, 1)).expect("put");
        assert_eq!(
            s.redeem("a", "wrong", 10).expect("db"),
            Err(TokenRefusal::WrongSecret("a".into()))
        );
        assert!(s.redeem("a", "s3cret", 10).expect("db").is_ok());
        assert_eq!(
            s.redeem("a", "s3cret", 10).expect("db"),
            Err(TokenRefusal::Used("a".into()))
        );
        s.put_token(&token("b", "x", 100, 5)).expect("put");
        assert!(matches!(
            s.redeem("b", "x", 150).expect("db"),
            Err(TokenRefusal::Expired { ago: 50, .. })
        ));
        assert!(s.remove_token("b").expect("rm"));
        assert_eq!(
            s.redeem("b", "x", 10).expect("db"),
            Err(TokenRefusal::Unknown("b".into()))
        );
        // stored hashed
        let raw = std::fs::read(dir.path().join("db.redb")).expect("read");
        assert!(!raw.windows(6).any(|w| w == b"s3cret"));
    }
}
