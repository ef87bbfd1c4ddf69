//! The store behind the core: a trait with the two operations the core needs — load every
//! record when it starts, commit one command's changes in one transaction — so another backend
//! (etcd) can sit behind it. [`RedbStore`] is the default: one redb file, each commit durable
//! (fsynced) before it returns, opened again after a storage error (a full disk) so that writes
//! go on once the cause is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_api::images::StoredImage;
use flotilla_api::ops::{Event, TaskDefRevision};
use redb::{
    Database, ReadableDatabase, ReadableTable, StorageError, TableDefinition, TransactionError,
};

use super::records::{
    ConfigRecord, NodeRecord, Record, RegistryMark, ScalingRecord, ScheduleRecord, SecretRecord,
    ServiceRecord, TaskRecord, TokenRecord,
};

/// Changes to one table: key → the new record, or `None` to remove it.
pub type Changes<R> = BTreeMap<<R as Record>::Key, Option<R>>;

/// What one command changes, committed as one transaction.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// Join tokens.
    pub tokens: Changes<TokenRecord>,
    /// Nodes.
    pub nodes: Changes<NodeRecord>,
    /// Task definition revisions.
    pub taskdefs: Changes<TaskDefRevision>,
    /// Tasks.
    pub tasks: Changes<TaskRecord>,
    /// Services.
    pub services: Changes<ServiceRecord>,
    /// Schedules.
    pub schedules: Changes<ScheduleRecord>,
    /// Services' auto scaling.
    pub scaling: Changes<ScalingRecord>,
    /// Secrets (their values sealed).
    pub secrets: Changes<SecretRecord>,
    /// Configs.
    pub configs: Changes<ConfigRecord>,
    /// Images of the content store.
    pub images: Changes<StoredImage>,
    /// The discovery registry's version and digest.
    pub registry: Changes<RegistryMark>,
    /// Events appended, in sequence.
    pub events: Vec<Event>,
    /// Events with a sequence number below this are dropped (the log keeps the last
    /// [`super::state::MAX_EVENTS`]).
    pub events_from: Option<u64>,
}

impl Writes {
    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
            && self.nodes.is_empty()
            && self.taskdefs.is_empty()
            && self.tasks.is_empty()
            && self.services.is_empty()
            && self.schedules.is_empty()
            && self.scaling.is_empty()
            && self.secrets.is_empty()
            && self.configs.is_empty()
            && self.images.is_empty()
            && self.registry.is_empty()
            && self.events.is_empty()
            && self.events_from.is_none()
    }
}

/// Every record of a store, as [`Store::load`] reads it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Join tokens.
    pub tokens: Vec<TokenRecord>,
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Task definition revisions.
    pub taskdefs: Vec<TaskDefRevision>,
    /// Tasks.
    pub tasks: Vec<TaskRecord>,
    /// Services.
    pub services: Vec<ServiceRecord>,
    /// Schedules.
    pub schedules: Vec<ScheduleRecord>,
    /// Services' auto scaling.
    pub scaling: Vec<ScalingRecord>,
    /// Secrets (their values sealed).
    pub secrets: Vec<SecretRecord>,
    /// Configs.
    pub configs: Vec<ConfigRecord>,
    /// Images of the content store.
    pub images: Vec<StoredImage>,
    /// The discovery registry's version and digest (none before its first registry).
    pub registry: Vec<RegistryMark>,
    /// The event log, oldest first.
    pub events: Vec<Event>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("store: corrupt record {table}/{key}: {reason}")]
    Corrupt {
        /// Its table.
        table: &'static str,
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Where the core's records live.
pub trait Store: Send + std::fmt::Debug {
    /// Every record (when the core starts).
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies `writes` in one transaction, durable when it returns; on an error nothing of it
    /// is applied.
    fn commit(&mut self, writes: &Writes) -> Result<(), StoreError>;
    /// Whether the store answers a read (what the systemd watchdog vouches for).
    fn healthy(&mut self) -> bool;
}

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

fn table<R: Record>() -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(R::TABLE)
}

/// The default store: one redb file.
///
/// redb refuses every transaction after one I/O error until the database is closed and opened
/// again (`StorageError::PreviousIo`); a transaction refused so makes this store do that, once,
/// and try again — a full disk fails the commits made while it is full, not every one after.
/// The core is the store's only user, so no transaction of the old handle is alive then.
#[derive(Debug)]
pub struct RedbStore {
    path: PathBuf,
    /// `None` after an opening again that failed: the next transaction tries again.
    db: Option<Database>,
}

impl RedbStore {
    /// Opens (creating) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Self::open_file(path)?;
        let w = database.begin_write().map_err(db)?;
        w.open_table(table::<TokenRecord>()).map_err(db)?;
        w.open_table(table::<NodeRecord>()).map_err(db)?;
        w.open_table(table::<TaskDefRevision>()).map_err(db)?;
        w.open_table(table::<TaskRecord>()).map_err(db)?;
        w.open_table(table::<ServiceRecord>()).map_err(db)?;
        w.open_table(table::<ScheduleRecord>()).map_err(db)?;
        w.open_table(table::<ScalingRecord>()).map_err(db)?;
        w.open_table(table::<SecretRecord>()).map_err(db)?;
        w.open_table(table::<ConfigRecord>()).map_err(db)?;
        w.open_table(table::<StoredImage>()).map_err(db)?;
        w.open_table(table::<RegistryMark>()).map_err(db)?;
        w.open_table(EVENTS).map_err(db)?;
        w.commit().map_err(db)?;
        Ok(Self {
            path: path.to_path_buf(),
            db: Some(database),
        })
    }

    fn open_file(path: &Path) -> Result<Database, StoreError> {
        Database::create(path)
            .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))
    }

    /// The open database, opened again first when an earlier attempt failed.
    fn database(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            self.db = Some(Self::open_file(&self.path)?);
            tracing::info!(
                "{} opened again after a storage error (a full disk or a failing one): writes go \
                 on",
                self.path.display()
            );
        }
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Db("the database is closed".into()))
    }

    /// Begins a transaction with `begin`; when redb refuses it after an earlier I/O error,
    /// closes the database, opens it again and begins it there.
    fn begin<T>(
        &mut self,
        begin: impl Fn(&Database) -> Result<T, TransactionError>,
    ) -> Result<T, StoreError> {
        match begin(self.database()?) {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                // Closed here: the core is the only user, no transaction of it is alive.
                self.db = None;
                begin(self.database()?).map_err(db)
            }
            other => other.map_err(db),
        }
    }

    fn load_table<R: Record>(r: &redb::ReadTransaction) -> Result<Vec<R>, StoreError> {
        let t = r.open_table(table::<R>()).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: R::TABLE,
                    key: k.value().replace('\0', ":"),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    fn write_table<R: Record>(
        w: &redb::WriteTransaction,
        changes: &Changes<R>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut t = w.open_table(table::<R>()).map_err(db)?;
        for (key, value) in changes {
            let key = R::key_text(key);
            match value {
                Some(r) => {
                    let bytes = serde_json::to_vec(r).map_err(db)?;
                    t.insert(key.as_str(), bytes.as_slice()).map_err(db)?;
                }
                None => {
                    t.remove(key.as_str()).map_err(db)?;
                }
            }
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let r = self
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Db("the database is closed".into()))?
            .begin_read()
            .map_err(db)?;
        let mut events = Vec::new();
        let t = r.open_table(EVENTS).map_err(db)?;
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            events.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: "events",
                    key: k.value().to_string(),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(Loaded {
            tokens: Self::load_table(&r)?,
            nodes: Self::load_table(&r)?,
            taskdefs: Self::load_table(&r)?,
            tasks: Self::load_table(&r)?,
            services: Self::load_table(&r)?,
            schedules: Self::load_table(&r)?,
            scaling: Self::load_table(&r)?,
            secrets: Self::load_table(&r)?,
            configs: Self::load_table(&r)?,
            images: Self::load_table(&r)?,
            registry: Self::load_table(&r)?,
            events,
        })
    }

    fn commit(&mut self, writes: &Writes) -> Result<(), StoreError> {
        let w = self.begin(Database::begin_write)?;
        Self::write_table(&w, &writes.tokens)?;
        Self::write_table(&w, &writes.nodes)?;
        Self::write_table(&w, &writes.taskdefs)?;
        Self::write_table(&w, &writes.tasks)?;
        Self::write_table(&w, &writes.services)?;
        Self::write_table(&w, &writes.schedules)?;
        Self::write_table(&w, &writes.scaling)?;
        Self::write_table(&w, &writes.secrets)?;
        Self::write_table(&w, &writes.configs)?;
        Self::write_table(&w, &writes.images)?;
        Self::write_table(&w, &writes.registry)?;
        if !writes.events.is_empty() || writes.events_from.is_some() {
            let mut t = w.open_table(EVENTS).map_err(db)?;
            for e in &writes.events {
                let bytes = serde_json::to_vec(e).map_err(db)?;
                t.insert(e.seq, bytes.as_slice()).map_err(db)?;
            }
            if let Some(from) = writes.events_from {
                t.retain_in(..from, |_, _| false).map_err(db)?;
            }
        }
        w.commit().map_err(db)
    }

    fn healthy(&mut self) -> bool {
        self.begin(|d| d.begin_read())
            .ok()
            .and_then(|r| r.open_table(EVENTS).ok())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: "h".into(),
            created_at: 1,
            expires_at: 2,
            uses: 1,
            used: 0,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_commit_applies_puts_removals_and_the_event_window_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let mut s = RedbStore::open(&path).expect("open");
        let mut w = Writes::default();
        w.tokens.insert("a".into(), Some(token("a")));
        w.tokens.insert("b".into(), Some(token("b")));
        for seq in 1..=5 {
            w.events.push(Event {
                seq,
                time: seq,
                kind: "k".into(),
                subject: "s".into(),
                message: format!("m{seq}"),
            });
        }
        s.commit(&w).expect("commit");
        let mut w = Writes::default();
        w.tokens.insert("a".into(), None);
        w.events_from = Some(4);
        s.commit(&w).expect("commit");
        drop(s);
        let mut s = RedbStore::open(&path).expect("reopen");
        let l = s.load().expect("load");
        assert_eq!(
            l.tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(l.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(s.healthy());
    }

    #[test]
    fn a_corrupt_record_is_named_by_table_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let mut s = RedbStore::open(&path).expect("open");
        let w = s.begin(Database::begin_write).expect("w");
        w.open_table(table::<NodeRecord>())
            .expect("t")
            .insert("n-1", b"{not json".as_slice())
            .expect("insert");
        w.commit().expect("commit");
        let e = s.load().expect_err("corrupt");
        assert!(e.to_string().contains("nodes/n-1"), "{e}");
    }
}
