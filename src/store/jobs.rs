//! `jobs.db`: every job this node touched, as buyer or provider, with the telemetry DESIGN.md asks
//! for. Timestamps are unix milliseconds so stage durations mean something on a fast loopback.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::StoreError;
use crate::protocol::failure::FailureCode;

/// Which side of the job this node was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Posted the job.
    Buyer,
    /// Ran the job.
    Provider,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Provider => "provider",
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Posted (buyer) or seen (provider).
    Submitted,
    /// A provider claimed it.
    Processing,
    /// Waiting for payment before running.
    PaymentRequired,
    /// Result published/received, not paid yet.
    Result,
    /// Paid, receipt not yet published/seen.
    Paid,
    /// Paid and receipted (or done without payment).
    Done,
    /// Failed; see the error code.
    Failed,
    /// Result published, its invoice expired unpaid (provider side). Never looked up again.
    Expired,
}

impl JobState {
    /// The name stored in `jobs.db` and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Processing => "processing",
            Self::PaymentRequired => "payment-required",
            Self::Result => "result",
            Self::Paid => "paid",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "processing" => Self::Processing,
            "payment-required" => Self::PaymentRequired,
            "result" => Self::Result,
            "paid" => Self::Paid,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            _ => Self::Submitted,
        }
    }
}

/// One job row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct JobRecord {
    /// The request event id.
    pub job_id: String,
    /// Buyer or provider.
    pub role: Option<Role>,
    /// Request kind.
    pub kind: u16,
    /// Buyer pubkey (hex).
    pub buyer: String,
    /// Provider pubkey (hex), once known.
    pub provider: Option<String>,
    /// State.
    pub state: Option<JobState>,
    /// Bid, msats.
    pub bid_msat: Option<u64>,
    /// Invoiced amount, msats.
    pub amount_msat: Option<u64>,
    /// The invoice.
    pub bolt11: Option<String>,
    /// Its payment hash.
    pub payment_hash: Option<String>,
    /// Its expiry (unix seconds).
    pub invoice_expires_at: Option<u64>,
    /// Proof of payment.
    pub preimage: Option<String>,
    /// The result event id.
    pub result_id: Option<String>,
    /// sha256 of the result content.
    pub result_hash: Option<String>,
    /// The receipt event id.
    pub receipt_id: Option<String>,
    /// Failure code.
    pub error_code: Option<FailureCode>,
    /// Failure detail.
    pub error_message: Option<String>,
    /// Input bytes.
    pub bytes_in: Option<u64>,
    /// Output bytes.
    pub bytes_out: Option<u64>,
    /// Unix ms: posted.
    pub submitted_at: Option<u64>,
    /// Unix ms: claimed.
    pub picked_up_at: Option<u64>,
    /// Unix ms: execution started.
    pub started_at: Option<u64>,
    /// Unix ms: execution finished.
    pub finished_at: Option<u64>,
    /// Unix ms: result published (provider) / received (buyer).
    pub published_at: Option<u64>,
    /// Unix ms: paid.
    pub paid_at: Option<u64>,
    /// Unix ms: receipt published/seen.
    pub receipt_at: Option<u64>,
}

impl JobRecord {
    /// Stage durations in ms, where both ends are known.
    pub fn durations(&self) -> Durations {
        let d = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Durations {
            queue_wait_ms: d(self.picked_up_at.or(self.submitted_at), self.started_at),
            exec_ms: d(self.started_at, self.finished_at),
            publish_ms: d(self.finished_at, self.published_at),
            payment_ms: d(self.published_at, self.paid_at),
            end_to_end_ms: d(
                self.submitted_at,
                self.receipt_at.or(self.paid_at).or(self.published_at),
            ),
        }
    }
}

/// Stage durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Durations {
    /// Claimed → started.
    pub queue_wait_ms: Option<u64>,
    /// Started → finished.
    pub exec_ms: Option<u64>,
    /// Finished → result published.
    pub publish_ms: Option<u64>,
    /// Result → paid.
    pub payment_ms: Option<u64>,
    /// Submitted → receipt (or the last step reached).
    pub end_to_end_ms: Option<u64>,
}

/// A field update.
#[derive(Debug, Clone)]
pub enum Set {
    /// State.
    State(JobState),
    /// Provider.
    Provider(String),
    /// Invoice: amount, bolt11, payment hash, expiry.
    Invoice(u64, String, String, u64),
    /// Preimage.
    Preimage(String),
    /// Result id and hash, bytes out.
    Result(String, String, u64),
    /// Receipt id.
    Receipt(String),
    /// The signed result event, as JSON (buyer side: `job results` reads it back).
    ResultEvent(String),
    /// Failure.
    Error(FailureCode, String),
    /// A timestamp column, set to `ms`.
    Time(Stamp, u64),
}

/// Timestamp columns.
#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    /// Claimed.
    PickedUp,
    /// Started.
    Started,
    /// Finished.
    Finished,
    /// Published/received.
    Published,
    /// Paid.
    Paid,
    /// Receipt.
    Receipt,
}

/// The jobs table.
#[derive(Debug)]
pub struct Jobs {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('buyer', 'provider')),
    kind INTEGER NOT NULL,
    buyer TEXT NOT NULL,
    provider TEXT,
    state TEXT NOT NULL,
    bid_msat INTEGER,
    amount_msat INTEGER,
    bolt11 TEXT,
    payment_hash TEXT,
    invoice_expires_at INTEGER,
    preimage TEXT,
    result_id TEXT,
    result_hash TEXT,
    receipt_id TEXT,
    error_code TEXT,
    error_message TEXT,
    bytes_in INTEGER,
    bytes_out INTEGER,
    submitted_at INTEGER,
    picked_up_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    published_at INTEGER,
    paid_at INTEGER,
    receipt_at INTEGER,
    request_json TEXT,
    result_json TEXT,
    PRIMARY KEY (job_id, role)
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(role, submitted_at);
CREATE INDEX IF NOT EXISTS jobs_by_hash ON jobs(payment_hash);
CREATE INDEX IF NOT EXISTS jobs_by_buyer ON jobs(role, buyer, state);
";

const COLUMNS: &str = "job_id, role, kind, buyer, provider, state, bid_msat, amount_msat, bolt11, payment_hash,
    invoice_expires_at, preimage, result_id, result_hash, receipt_id, error_code, error_message, bytes_in,
    bytes_out, submitted_at, picked_up_at, started_at, finished_at, published_at, paid_at, receipt_at";

impl Jobs {
    /// Opens (creating) `jobs.db`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = super::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Records a new job; false if this node already has it in this role (a duplicate delivery).
    pub fn insert(
        &self,
        rec: &JobRecord,
        role: Role,
        request_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO jobs (job_id, role, kind, buyer, provider, state, bid_msat, bytes_in,
                                         submitted_at, picked_up_at, request_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?.execute(
            params![
                rec.job_id,
                role.as_str(),
                rec.kind,
                rec.buyer,
                rec.provider,
                rec.state.unwrap_or(JobState::Submitted).as_str(),
                rec.bid_msat.map(|v| v as i64),
                rec.bytes_in.map(|v| v as i64),
                rec.submitted_at.map(|v| v as i64),
                rec.picked_up_at.map(|v| v as i64),
                request_json
            ],
        )?;
        Ok(n == 1)
    }

    /// Applies updates to one job in one statement, so they land together or not at all.
    pub fn update(&self, job_id: &str, role: Role, sets: &[Set]) -> Result<(), StoreError> {
        if sets.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<&str> = Vec::new();
        let mut values: Vec<rusqlite::types::Value> =
            vec![job_id.to_string().into(), role.as_str().to_string().into()];
        for set in sets {
            let pairs: Vec<(&str, rusqlite::types::Value)> = match set {
                Set::State(s) => vec![("state", s.as_str().to_string().into())],
                Set::Provider(p) => vec![("provider", p.clone().into())],
                Set::Invoice(amount, bolt11, hash, expires) => vec![
                    ("amount_msat", (*amount as i64).into()),
                    ("bolt11", bolt11.clone().into()),
                    ("payment_hash", hash.clone().into()),
                    ("invoice_expires_at", (*expires as i64).into()),
                ],
                Set::Preimage(p) => vec![("preimage", p.clone().into())],
                Set::Result(id, hash, bytes) => vec![
                    ("result_id", id.clone().into()),
                    ("result_hash", hash.clone().into()),
                    ("bytes_out", (*bytes as i64).into()),
                ],
                Set::Receipt(id) => vec![("receipt_id", id.clone().into())],
                Set::ResultEvent(json) => vec![("result_json", json.clone().into())],
                Set::Error(code, msg) => vec![
                    ("error_code", code.as_str().to_string().into()),
                    ("error_message", msg.clone().into()),
                ],
                Set::Time(stamp, ms) => vec![(
                    match stamp {
                        Stamp::PickedUp => "picked_up_at",
                        Stamp::Started => "started_at",
                        Stamp::Finished => "finished_at",
                        Stamp::Published => "published_at",
                        Stamp::Paid => "paid_at",
                        Stamp::Receipt => "receipt_at",
                    },
                    (*ms as i64).into(),
                )],
            };
            for (column, value) in pairs {
                columns.push(column);
                values.push(value);
            }
        }
        let assignments: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 3))
            .collect();
        self.conn
            .prepare_cached(&format!(
                "UPDATE jobs SET {} WHERE job_id = ?1 AND role = ?2",
                assignments.join(", ")
            ))?
            .execute(rusqlite::params_from_iter(values))?;
        Ok(())
    }

    /// One job.
    pub fn get(&self, job_id: &str, role: Role) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE job_id = ?1 AND role = ?2"
            ))?
            .query_row(params![job_id, role.as_str()], row_to_record)
            .optional()?)
    }

    /// One job in whichever role this node had (buyer first), matching a full id or a unique prefix.
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<JobRecord>, StoreError> {
        let pattern = format!("{}%", id_or_prefix.to_lowercase());
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE job_id LIKE ?1 ORDER BY role = 'provider' LIMIT 2"
        ))?;
        let rows: Vec<JobRecord> = stmt
            .query_map([pattern], row_to_record)?
            .collect::<Result<_, _>>()?;
        let distinct: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.job_id.as_str()).collect();
        if distinct.len() > 1 {
            return Err(StoreError::Ambiguous(id_or_prefix.to_string()));
        }
        Ok(rows.into_iter().next())
    }

    /// The request event JSON stored with a job.
    pub fn request_json(&self, job_id: &str, role: Role) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT request_json FROM jobs WHERE job_id = ?1 AND role = ?2",
                params![job_id, role.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// The result event JSON stored with a job.
    pub fn result_json(&self, job_id: &str, role: Role) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT result_json FROM jobs WHERE job_id = ?1 AND role = ?2",
                params![job_id, role.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Newest jobs first.
    pub fn list(&self, role: Option<Role>, limit: u64) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR role = ?1) ORDER BY submitted_at DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![role.map(Role::as_str), limit as i64], row_to_record)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Provider jobs waiting for payment of an invoice.
    pub fn awaiting_payment(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE role = 'provider' AND state IN ('result', 'payment-required', 'paid')
               AND payment_hash IS NOT NULL"
        ))?;
        let rows = stmt
            .query_map([], row_to_record)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many of `buyer`'s invoices to this provider expired unpaid: marked so, or past their
    /// expiry and not yet marked.
    pub fn expired_unpaid(&self, buyer: &str, now_secs: u64) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE role = 'provider' AND buyer = ?1
                   AND (state = 'expired' OR (state = 'result'
                        AND invoice_expires_at IS NOT NULL AND invoice_expires_at < ?2))",
            )?
            .query_row(params![buyer, now_secs as i64], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Whether `buyer` ever paid this provider (a job of theirs is paid or done).
    pub fn buyer_has_paid(&self, buyer: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE role = 'provider' AND buyer = ?1
                   AND state IN ('paid', 'done'))",
            )?
            .query_row(params![buyer], |r| r.get(0))?)
    }

    /// How many of `buyer`'s results at this provider wait for payment (invoice not yet paid,
    /// not marked expired).
    pub fn outstanding_invoices(&self, buyer: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE role = 'provider' AND buyer = ?1 AND state = 'result'",
            )?
            .query_row(params![buyer], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Provider jobs whose invoice expired unpaid, over the node's whole history.
    pub fn expired_invoices(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE role = 'provider' AND state = 'expired'",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Provider totals: served, failed by code, earnings (msats).
    pub fn provider_totals(&self) -> Result<ProviderTotals, StoreError> {
        let (served, earned): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE state IN ('result', 'paid', 'done', 'expired')),
                    COALESCE(SUM(amount_msat) FILTER (WHERE state = 'done' AND preimage IS NOT NULL), 0)
             FROM jobs WHERE role = 'provider'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT error_code, COUNT(*) FROM jobs WHERE role = 'provider' AND state = 'failed' GROUP BY error_code",
        )?;
        let failed = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    r.get::<_, i64>(1)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(ProviderTotals {
            served: served as u64,
            earned_msat: earned as u64,
            failed,
        })
    }
}

/// This home's own money, for the stats dashboard.
impl Jobs {
    /// Msats earned (receipted, as provider) and spent (paid, as buyer), and job counts.
    pub fn personal(&self) -> Result<crate::stats::model::Personal, StoreError> {
        Ok(self.conn.query_row(
            "SELECT
                COALESCE(SUM(amount_msat) FILTER (WHERE role = 'provider' AND state = 'done' AND preimage IS NOT NULL), 0),
                COALESCE(SUM(amount_msat) FILTER (WHERE role = 'buyer' AND preimage IS NOT NULL), 0),
                COUNT(*) FILTER (WHERE role = 'provider' AND result_id IS NOT NULL),
                COUNT(*) FILTER (WHERE role = 'buyer')
             FROM jobs",
            [],
            |r| {
                Ok(crate::stats::model::Personal {
                    earned_msat: r.get::<_, i64>(0)? as u64,
                    spent_msat: r.get::<_, i64>(1)? as u64,
                    jobs_sold: r.get::<_, i64>(2)? as u64,
                    jobs_bought: r.get::<_, i64>(3)? as u64,
                })
            },
        )?)
    }
}

/// What `node status` reports from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub struct ProviderTotals {
    /// Jobs with a published result.
    pub served: u64,
    /// Msats received for receipted jobs.
    pub earned_msat: u64,
    /// Failures by code.
    pub failed: std::collections::BTreeMap<String, u64>,
}

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
    };
    Ok(JobRecord {
        job_id: r.get(0)?,
        role: Some(if r.get::<_, String>(1)? == "buyer" {
            Role::Buyer
        } else {
            Role::Provider
        }),
        kind: r.get::<_, i64>(2)? as u16,
        buyer: r.get(3)?,
        provider: r.get(4)?,
        state: Some(JobState::parse(&r.get::<_, String>(5)?)),
        bid_msat: u(6)?,
        amount_msat: u(7)?,
        bolt11: r.get(8)?,
        payment_hash: r.get(9)?,
        invoice_expires_at: u(10)?,
        preimage: r.get(11)?,
        result_id: r.get(12)?,
        result_hash: r.get(13)?,
        receipt_id: r.get(14)?,
        error_code: r
            .get::<_, Option<String>>(15)?
            .map(|c| FailureCode::parse(&c)),
        error_message: r.get(16)?,
        bytes_in: u(17)?,
        bytes_out: u(18)?,
        submitted_at: u(19)?,
        picked_up_at: u(20)?,
        started_at: u(21)?,
        finished_at: u(22)?,
        published_at: u(23)?,
        paid_at: u(24)?,
        receipt_at: u(25)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_once_update_and_query() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs = Jobs::open(&dir.path().join("jobs.db")).expect("open");
        let rec = JobRecord {
            job_id: "ab".repeat(32),
            kind: 5960,
            buyer: "b".into(),
            submitted_at: Some(1_000),
            ..Default::default()
        };
        assert!(jobs.insert(&rec, Role::Provider, "{}").expect("insert"));
        assert!(
            !jobs.insert(&rec, Role::Provider, "{}").expect("dup"),
            "a duplicate is refused"
        );
        assert!(jobs.insert(&rec, Role::Buyer, "{}").expect("other role"));
        jobs.update(
            &rec.job_id,
            Role::Provider,
            &[
                Set::Time(Stamp::PickedUp, 1_010),
                Set::Time(Stamp::Started, 1_020),
                Set::Time(Stamp::Finished, 1_050),
                Set::Time(Stamp::Published, 1_060),
                Set::Invoice(1_000, "lnbcrt".into(), "hash".into(), 5),
                Set::State(JobState::Result),
            ],
        )
        .expect("update");
        let got = jobs
            .get(&rec.job_id, Role::Provider)
            .expect("get")
            .expect("exists");
        assert_eq!(got.state, Some(JobState::Result));
        let d = got.durations();
        assert_eq!(
            (d.queue_wait_ms, d.exec_ms, d.publish_ms),
            (Some(10), Some(30), Some(10))
        );
        assert_eq!(jobs.expired_unpaid("b", 10).expect("count"), 1);
        assert_eq!(jobs.awaiting_payment().expect("pending").len(), 1);
        assert_eq!(jobs.outstanding_invoices("b").expect("count"), 1);
        assert!(!jobs.buyer_has_paid("b").expect("paid?"));
        // Marked expired: no longer awaited, still counted against the buyer and in totals.
        jobs.update(
            &rec.job_id,
            Role::Provider,
            &[Set::State(JobState::Expired)],
        )
        .expect("expire");
        assert!(jobs.awaiting_payment().expect("pending").is_empty());
        assert_eq!(jobs.expired_unpaid("b", 0).expect("count"), 1);
        assert_eq!(jobs.expired_invoices().expect("count"), 1);
        assert_eq!(jobs.outstanding_invoices("b").expect("count"), 0);
        assert_eq!(jobs.provider_totals().expect("totals").served, 1);
        assert_eq!(
            jobs.get(&rec.job_id, Role::Provider)
                .expect("get")
                .expect("row")
                .state,
            Some(JobState::Expired),
            "the state survives a read back"
        );
        jobs.update(&rec.job_id, Role::Provider, &[Set::State(JobState::Done)])
            .expect("done");
        assert!(jobs.buyer_has_paid("b").expect("paid?"));
        assert_eq!(
            jobs.find("abab").expect("find").expect("found").role,
            Some(Role::Buyer)
        );
        jobs.update(
            &rec.job_id,
            Role::Provider,
            &[
                Set::Error(FailureCode::Timeout, "late".into()),
                Set::State(JobState::Failed),
            ],
        )
        .expect("fail");
        let totals = jobs.provider_totals().expect("totals");
        assert_eq!(totals.failed.get("timeout"), Some(&1));
    }
}
