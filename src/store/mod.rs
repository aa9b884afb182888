//! The node's local records: `jobs.db` (every job, with telemetry) and `receipts.db`.
//! Nothing here is authoritative for money (the wallet is); it is what `job status`, `node status`
//! and `receipts` read, and what lets a restarted node finish what it started.

pub mod jobs;
pub mod payments;
pub mod receipts;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use jobs::{JobRecord, JobState, Jobs, ProviderTotals, Role, Set, Stamp};
pub use payments::{Begin, PaymentRecord, PaymentState, Payments};
pub use receipts::{Receipts, StoredReceipt};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("local store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A prefix matched several jobs.
    #[error("`{0}` matches several jobs: give more of the id")]
    Ambiguous(String),
    /// Data that should have been valid was not.
    #[error("local store: {0}")]
    Invalid(String),
}

/// Both databases, shareable between tasks.
#[derive(Debug)]
pub struct Store {
    jobs: Mutex<Jobs>,
    payments: Mutex<Payments>,
    receipts: Mutex<Receipts>,
}

impl Store {
    /// Opens `jobs.db` and `receipts.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            jobs: Mutex::new(Jobs::open(&dir.join("jobs.db"))?),
            payments: Mutex::new(Payments::open(&dir.join("jobs.db"))?),
            receipts: Mutex::new(Receipts::open(&dir.join("receipts.db"))?),
        })
    }

    /// The jobs table. Hold the guard briefly: calls are quick, local SQLite writes.
    pub fn jobs(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The buyer's payment journal (see [`payments`]).
    pub fn payments(&self) -> MutexGuard<'_, Payments> {
        self.payments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The receipts table.
    pub fn receipts(&self) -> MutexGuard<'_, Receipts> {
        self.receipts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
