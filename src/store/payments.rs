//! The buyer's payment journal (a table in `jobs.db`): every payment is written down *before* the
//! wallet is asked to pay, and its outcome after. So a buyer killed between request and answer
//! finds the payment on restart and looks it up instead of paying again, a job is never paid
//! twice, and caps are counted from what was actually sent.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::StoreError;

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Asked of the wallet; no answer yet (or the process died waiting).
    Sending,
    /// The wallet returned a matching preimage.
    Paid,
    /// The wallet said it did not pay.
    Failed,
    /// The wallet did not say; money may have moved. Resolved by a look-up, never by retrying.
    Unknown,
}

impl PaymentState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "paid" => Self::Paid,
            "failed" => Self::Failed,
            "unknown" => Self::Unknown,
            _ => Self::Sending,
        }
    }

    /// Whether money may have moved (counts against caps, blocks a second payment).
    pub fn may_have_paid(self) -> bool {
        !matches!(self, Self::Failed)
    }
}

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRecord {
    /// The invoice's payment hash.
    pub payment_hash: String,
    /// The job paid for.
    pub job_id: String,
    /// Msats.
    pub amount_msat: u64,
    /// The invoice.
    pub bolt11: String,
    /// State.
    pub state: PaymentState,
    /// Proof of payment, once paid.
    pub preimage: Option<String>,
    /// Unix ms: written before asking the wallet.
    pub started_at: u64,
    /// Unix ms: outcome known.
    pub finished_at: Option<u64>,
}

/// What [`Payments::begin`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Recorded as sending: go ahead and ask the wallet.
    Go,
    /// This job already has a payment that may have gone through: do not pay again.
    Exists(PaymentRecord),
}

/// The payments table.
#[derive(Debug)]
pub struct Payments {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_hash TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    amount_msat INTEGER NOT NULL CHECK (amount_msat > 0),
    bolt11 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'paid', 'failed', 'unknown')),
    preimage TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS payments_by_job ON payments(job_id);
CREATE INDEX IF NOT EXISTS payments_by_time ON payments(started_at);
";

const COLUMNS: &str =
    "payment_hash, job_id, amount_msat, bolt11, state, preimage, started_at, finished_at";

impl Payments {
    /// Opens (creating) the table in the database at `path` (`jobs.db`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = super::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Records a payment as sending, unless `job_id` already has one that may have gone through
    /// (sending, paid or unknown). `guard` runs inside the same transaction with the msats that
    /// may have been spent since `since_ms` (0 when `None`: no cap asks), so a cap check and the
    /// write cannot be overtaken; its error aborts the payment.
    pub fn begin<E>(
        &mut self,
        rec: &PaymentRecord,
        since_ms: Option<u64>,
        guard: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<Result<Begin, E>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM payments WHERE job_id = ?1 AND state != 'failed'
                 ORDER BY started_at LIMIT 1"
            ))?
            .query_row([&rec.job_id], row_to_record)
            .optional()?;
        if let Some(existing) = existing {
            return Ok(Ok(Begin::Exists(existing)));
        }
        // Summed only for a cap that needs it: this runs on every payment.
        let spent = match since_ms {
            Some(since) => spent_since(&tx, since)?,
            None => 0,
        };
        if let Err(e) = guard(spent) {
            return Ok(Err(e));
        }
        tx.prepare_cached(
            "INSERT INTO payments (payment_hash, job_id, amount_msat, bolt11, state, started_at)
             VALUES (?1, ?2, ?3, ?4, 'sending', ?5)
             ON CONFLICT (payment_hash) DO UPDATE SET state = 'sending', job_id = ?2,
                 started_at = ?5, finished_at = NULL",
        )?
        .execute(params![
            rec.payment_hash.to_lowercase(),
            rec.job_id,
            rec.amount_msat as i64,
            rec.bolt11,
            rec.started_at as i64
        ])?;
        tx.commit()?;
        Ok(Ok(Begin::Go))
    }

    /// Records an outcome.
    pub fn finish(
        &self,
        payment_hash: &str,
        state: PaymentState,
        preimage: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE payments SET state = ?2, preimage = COALESCE(?3, preimage), finished_at = ?4
                 WHERE payment_hash = ?1",
            )?
            .execute(params![
                payment_hash.to_lowercase(),
                state.as_str(),
                preimage,
                now_ms as i64
            ])?;
        Ok(())
    }

    /// The payment of `job_id` that may have gone through, if any.
    pub fn for_job(&self, job_id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM payments WHERE job_id = ?1 AND state != 'failed'
                 ORDER BY started_at LIMIT 1"
            ))?
            .query_row([job_id], row_to_record)
            .optional()?)
    }

    /// Payments whose outcome is not known (sending or unknown), oldest first.
    pub fn in_doubt(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM payments WHERE state IN ('sending', 'unknown') ORDER BY started_at"
        ))?;
        let rows = stmt
            .query_map([], row_to_record)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Msats that may have been spent since `since_ms` (paid, sending or unknown).
    pub fn spent_since(&self, since_ms: u64) -> Result<u64, StoreError> {
        Ok(spent_since(&self.conn, since_ms)?)
    }
}

fn spent_since(conn: &Connection, since_ms: u64) -> rusqlite::Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_msat), 0) FROM payments
             WHERE state != 'failed' AND started_at >= ?1",
        )?
        .query_row([since_ms as i64], |r| r.get(0))?;
    Ok(n as u64)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<PaymentRecord> {
    Ok(PaymentRecord {
        payment_hash: r.get(0)?,
        job_id: r.get(1)?,
        amount_msat: r.get::<_, i64>(2)? as u64,
        bolt11: r.get(3)?,
        state: PaymentState::parse(&r.get::<_, String>(4)?),
        preimage: r.get(5)?,
        started_at: r.get::<_, i64>(6)? as u64,
        finished_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(job: &str, hash: &str, msat: u64) -> PaymentRecord {
        PaymentRecord {
            payment_hash: hash.into(),
            job_id: job.into(),
            amount_msat: msat,
            bolt11: format!("lnbcrt{hash}"),
            state: PaymentState::Sending,
            preimage: None,
            started_at: 1_000,
            finished_at: None,
        }
    }

    #[test]
    fn one_payment_per_job_and_caps_see_what_may_have_moved() {
        let dir = tempfile::tempdir().expect("dir");
        let mut p = Payments::open(&dir.path().join("jobs.db")).expect("open");
        let ok = |_: u64| Ok::<(), String>(());
        assert_eq!(
            p.begin(&rec("j1", "aa", 5), Some(0), ok).expect("db"),
            Ok(Begin::Go)
        );
        // A second invoice for the same job is refused while the first may have gone through.
        match p.begin(&rec("j1", "bb", 5), Some(0), ok).expect("db") {
            Ok(Begin::Exists(r)) => assert_eq!(r.payment_hash, "aa"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.spent_since(0).expect("db"), 5, "sending counts");
        p.finish("aa", PaymentState::Unknown, None, 2_000)
            .expect("db");
        assert_eq!(p.spent_since(0).expect("db"), 5, "unknown counts");
        assert_eq!(p.in_doubt().expect("db").len(), 1);
        // Known not to have happened: the job may be paid again, and it no longer counts.
        p.finish("aa", PaymentState::Failed, None, 3_000)
            .expect("db");
        assert_eq!(p.spent_since(0).expect("db"), 0);
        assert_eq!(
            p.begin(&rec("j1", "bb", 5), Some(0), ok).expect("db"),
            Ok(Begin::Go)
        );
        p.finish("bb", PaymentState::Paid, Some("pre"), 4_000)
            .expect("db");
        let paid = p.for_job("j1").expect("db").expect("paid");
        assert_eq!(paid.preimage.as_deref(), Some("pre"));
        // The guard sees the spend and can refuse; nothing is written then.
        let refused = p
            .begin(&rec("j2", "cc", 7), Some(0), |spent| {
                if spent + 7 > 10 {
                    Err(format!("{spent} spent"))
                } else {
                    Ok(())
                }
            })
            .expect("db");
        assert_eq!(refused, Err("5 spent".to_string()));
        assert!(p.for_job("j2").expect("db").is_none());
    }
}
