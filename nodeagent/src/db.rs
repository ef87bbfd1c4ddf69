//! `agent.redb`, opened again after a storage error.
//!
//! redb refuses every transaction after one I/O error — a full disk, a failing card — until the
//! database is closed and opened again (`StorageError::PreviousIo`: "Previous I/O error
//! occurred. Please close and re-open the database."). An agent that kept its first handle
//! would refuse every desired state from then on, also once space returned. [`AgentDb`] is the
//! one handle everything in the agent shares: a transaction it cannot begin for that reason
//! makes it close the database and open it again (redb checks and repairs it on opening), and
//! begin the transaction on the new handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, StorageError, TransactionError,
    WriteTransaction,
};

/// The agent's database, reopened after a storage error.
#[derive(Debug)]
pub struct AgentDb {
    path: PathBuf,
    /// The open database; `None` after a reopening that failed (the next transaction tries
    /// again).
    db: RwLock<Option<Arc<Database>>>,
}

impl AgentDb {
    /// Opens (or creates) the database at `path`.
    ///
    /// Errors: redb's, among them `DatabaseAlreadyOpen` while another process has it.
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(Database::create(path)?))),
        })
    }

    /// Begins a write transaction (waiting for one in progress), on a database opened again
    /// when the current one refuses after a storage error.
    pub fn begin_write(&self) -> Result<WriteTransaction, TransactionError> {
        let db = self.current()?;
        match db.begin_write() {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                self.reopen(db)?.begin_write()
            }
            other => other,
        }
    }

    /// Begins a read transaction, like [`AgentDb::begin_write`].
    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        let db = self.current()?;
        match db.begin_read() {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                self.reopen(db)?.begin_read()
            }
            other => other,
        }
    }

    fn current(&self) -> Result<Arc<Database>, TransactionError> {
        let open = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        match open {
            Some(db) => Ok(db),
            None => self.open_again(),
        }
    }

    /// Closes `failed` and opens the database again, unless another caller already did.
    fn reopen(&self, failed: Arc<Database>) -> Result<Arc<Database>, TransactionError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(current) if !Arc::ptr_eq(current, &failed) => return Ok(current.clone()),
            _ => {}
        }
        drop(failed);
        if let Some(old) = slot.take() {
            if Arc::strong_count(&old) > 1 {
                // Still in someone's hands for a moment: the next transaction tries again.
                *slot = Some(old);
                return Err(TransactionError::Storage(StorageError::PreviousIo));
            }
        }
        drop(slot);
        self.open_again()
    }

    /// Opens the database into the empty slot.
    fn open_again(&self) -> Result<Arc<Database>, TransactionError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        match Database::create(&self.path) {
            Ok(db) => {
                tracing::info!(
                    "{} opened again after a storage error (a full disk or a failing one): \
                     writes go on",
                    self.path.display()
                );
                let db = Arc::new(db);
                *slot = Some(db.clone());
                Ok(db)
            }
            Err(e) => {
                // Transactions of the old handle still alive keep the file open.
                tracing::debug!("opening {} again: {e}", self.path.display());
                Err(TransactionError::Storage(StorageError::PreviousIo))
            }
        }
    }
}
