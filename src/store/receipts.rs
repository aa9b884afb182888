//! `receipts.db`: every payment receipt this node published (provider) or saw (buyer), with the
//! signed event itself so it can be shown to anyone later.

use std::path::Path;

use nostr_sdk::{Event, JsonUtil};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::StoreError;
use crate::protocol::receipt::Receipt;

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredReceipt {
    /// Receipt event id.
    pub receipt_id: String,
    /// The job.
    pub request_id: String,
    /// The paid result.
    pub result_id: String,
    /// Signer.
    pub provider: String,
    /// Payer.
    pub buyer: String,
    /// Msats.
    pub amount_msat: u64,
    /// Payment hash.
    pub payment_hash: String,
    /// Preimage.
    pub preimage: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The signed event, verifiable by anyone.
    pub event: serde_json::Value,
}

/// The receipts table.
#[derive(Debug)]
pub struct Receipts {
    conn: Connection,
}

impl Receipts {
    /// Opens (creating) `receipts.db`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = super::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS receipts (
                receipt_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                result_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                buyer TEXT NOT NULL,
                amount_msat INTEGER NOT NULL,
                bolt11 TEXT NOT NULL,
                payment_hash TEXT NOT NULL,
                preimage TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                event_json TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS receipts_by_provider ON receipts(provider, created_at);
            CREATE INDEX IF NOT EXISTS receipts_by_request ON receipts(request_id);",
        )?;
        Ok(Self { conn })
    }

    /// Stores a receipt event (idempotent).
    pub fn insert(&self, event: &Event) -> Result<(), StoreError> {
        let r = Receipt::from_event(event).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO receipts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                event.id.to_hex(),
                r.request_id.to_hex(),
                r.result_id.to_hex(),
                event.pubkey.to_hex(),
                r.buyer.to_hex(),
                r.amount_msats as i64,
                r.bolt11,
                r.payment_hash,
                r.preimage,
                event.created_at.as_secs() as i64,
                event.as_json()
            ],
        )?;
        Ok(())
    }

    /// Newest first, optionally for one provider (hex).
    pub fn list(
        &self,
        provider: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT receipt_id, request_id, result_id, provider, buyer, amount_msat, payment_hash, preimage,
                    created_at, event_json
             FROM receipts WHERE (?1 IS NULL OR provider = ?1) ORDER BY created_at DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![provider, limit as i64], |r| {
                let json: String = r.get(9)?;
                Ok(StoredReceipt {
                    receipt_id: r.get(0)?,
                    request_id: r.get(1)?,
                    result_id: r.get(2)?,
                    provider: r.get(3)?,
                    buyer: r.get(4)?,
                    amount_msat: r.get::<_, i64>(5)? as u64,
                    payment_hash: r.get(6)?,
                    preimage: r.get(7)?,
                    created_at: r.get::<_, i64>(8)? as u64,
                    event: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
