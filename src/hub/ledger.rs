//! The hub's double-entry ledger in SQLite: accounts, invoices, transfers, faucet issuance, and
//! the responses to money-moving requests (so a retried request is answered, never re-run).
//!
//! Every balance change happens inside one SQLite transaction together with the record of the
//! request that caused it. A crash at any instant leaves either all of a payment or none of it.
//! WAL mode with `synchronous=NORMAL` keeps committed transactions across a process crash
//! (the failure the tests inject); a power cut may lose the last few commits, never half of one.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::bolt11::{self as invoice, NewInvoice};
use crate::protocol::nip47::{
    ErrorBody, ErrorCode, ListTransactionsParams, Response, Transaction, TransactionMetadata,
    TransactionState, TransactionType,
};
use crate::protocol::settlement::Attestation;

/// Storage failures (not business-rule refusals, which are [`ErrorBody`]s).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("ledger database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored response could not be read back.
    #[error("ledger holds a malformed response: {0}")]
    Stored(String),
}

/// Money movements the service reports once committed (for notifications).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Who paid.
    pub payer: String,
    /// Who was paid.
    pub payee: String,
    /// The settled invoice, as the payee sees it.
    pub incoming: Transaction,
    /// The payment, as the payer sees it.
    pub outgoing: Transaction,
}

/// Result of running a money-moving request exactly once.
#[derive(Debug)]
pub enum Once<T> {
    /// First time: the response, and the value if the operation succeeded.
    Fresh(Response, Option<T>),
    /// Seen before: the response given then.
    Replayed(Response),
}

/// Faucet limits, per requesting pubkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaucetLimits {
    /// Largest single grant, msats.
    pub max_msat_per_request: u64,
    /// Most granted per rolling 24 h, msats.
    pub max_msat_per_day: u64,
    /// Most grants per rolling minute.
    pub max_requests_per_minute: u32,
}

/// The ledger. Not `Sync`: share it behind a mutex and call it from blocking threads.
#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    pubkey       TEXT PRIMARY KEY,
    balance_msat INTEGER NOT NULL DEFAULT 0 CHECK (balance_msat >= 0),
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS invoices (
    payment_hash     TEXT PRIMARY KEY,
    payee            TEXT NOT NULL REFERENCES accounts(pubkey),
    bolt11           TEXT NOT NULL UNIQUE,
    preimage         TEXT NOT NULL,
    amount_msat      INTEGER NOT NULL CHECK (amount_msat > 0),
    description      TEXT,
    description_hash TEXT,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('unpaid', 'settled')),
    settled_at       INTEGER,
    payer            TEXT REFERENCES accounts(pubkey)
);
CREATE INDEX IF NOT EXISTS invoices_by_payee ON invoices(payee, created_at);
CREATE TABLE IF NOT EXISTS transfers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_hash TEXT NOT NULL UNIQUE REFERENCES invoices(payment_hash),
    payer        TEXT NOT NULL REFERENCES accounts(pubkey),
    payee        TEXT NOT NULL REFERENCES accounts(pubkey),
    amount_msat  INTEGER NOT NULL CHECK (amount_msat > 0),
    fees_msat    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_payer ON transfers(payer, created_at);
CREATE TABLE IF NOT EXISTS issuance (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account      TEXT NOT NULL REFERENCES accounts(pubkey),
    amount_msat  INTEGER NOT NULL CHECK (amount_msat > 0),
    requested_by TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS issuance_by_requester ON issuance(requested_by, created_at);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    client     TEXT NOT NULL,
    method     TEXT NOT NULL,
    response   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#;

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory ledger, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, LedgerError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Runs `op` once per `request_id`, atomically with recording its response. A request seen
    /// before gets its recorded response back and `op` does not run. When `op` fails, its writes
    /// are rolled back but the refusal is still recorded (a retry of the same request gets the
    /// same answer).
    pub fn once<T>(
        &mut self,
        request_id: &str,
        client: &str,
        method: &str,
        now: u64,
        op: impl FnOnce(&Connection) -> Result<T, ErrorBody>,
        respond: impl FnOnce(&T) -> Response,
    ) -> Result<Once<T>, LedgerError> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .prepare_cached("SELECT response FROM requests WHERE request_id = ?1")?
            .query_row([request_id], |r| r.get(0))
            .optional()?;
        if let Some(json) = stored {
            let response =
                Response::parse(&json).map_err(|e| LedgerError::Stored(e.to_string()))?;
            return Ok(Once::Replayed(response));
        }
        let (response, value) = {
            let sp = tx.savepoint()?;
            match op(&sp) {
                Ok(value) => {
                    let response = respond(&value);
                    sp.commit()?;
                    (response, Some(value))
                }
                Err(error) => {
                    // Dropping the savepoint rolls back whatever `op` wrote before refusing.
                    drop(sp);
                    (Response::err(method, error), None)
                }
            }
        };
        let json =
            serde_json::to_string(&response).map_err(|e| LedgerError::Stored(e.to_string()))?;
        exec(
            &tx,
            "INSERT INTO requests (request_id, client, method, response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![request_id, client, method, json, now as i64],
        )?;
        tx.commit()?;
        Ok(Once::Fresh(response, value))
    }

    /// The balance of `account` in msats (0 for an unknown account).
    pub fn balance(&self, account: &str) -> Result<u64, LedgerError> {
        balance(&self.conn, account).map_err(LedgerError::from)
    }

    /// `account`'s view of the invoice with `payment_hash`: incoming if it is the payee, outgoing
    /// if it paid it. Anyone else gets `None`: other accounts' invoices do not exist for them.
    pub fn lookup(
        &self,
        account: &str,
        payment_hash: &str,
    ) -> Result<Option<Transaction>, LedgerError> {
        let Some(row) = invoice_row(&self.conn, payment_hash)? else {
            return Ok(None);
        };
        if row.payee == account {
            Ok(Some(row.as_incoming()))
        } else if row.payer.as_deref() == Some(account) {
            Ok(Some(row.as_outgoing()))
        } else {
            Ok(None)
        }
    }

    /// `account`'s transactions, newest first, filtered and paged as NIP-47 `list_transactions` says.
    pub fn list(
        &self,
        account: &str,
        query: &ListTransactionsParams,
        now: u64,
    ) -> Result<Vec<Transaction>, LedgerError> {
        let from = query.from.unwrap_or(0) as i64;
        let until = query.until.unwrap_or(u64::MAX / 2) as i64;
        let limit = query.limit.unwrap_or(50).min(1000) as i64;
        let offset = query.offset.unwrap_or(0).min(1_000_000) as i64;
        let unpaid = query.unpaid.unwrap_or(false);
        let want_in = query.kind != Some(TransactionType::Outgoing);
        let want_out = query.kind != Some(TransactionType::Incoming);
        // Both directions, merged in SQL so paging is exact. Timestamps are seconds; within a
        // second, the transfer id (one per settled invoice, in payment order) breaks the tie.
        let sql = format!(
            "SELECT dir, payment_hash FROM (
                SELECT 'in' AS dir, i.payment_hash, i.created_at, t.id AS seq FROM invoices i
                  LEFT JOIN transfers t ON t.payment_hash = i.payment_hash
                 WHERE ?1 AND i.payee = ?3 AND i.created_at BETWEEN ?4 AND ?5
                   AND (i.state = 'settled' OR ?6)
                UNION ALL
                SELECT 'out' AS dir, payment_hash, created_at, id AS seq FROM transfers
                 WHERE ?2 AND payer = ?3 AND created_at BETWEEN ?4 AND ?5
             ) ORDER BY created_at DESC, seq DESC, payment_hash LIMIT {limit} OFFSET {offset}"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let keys: Vec<(String, String)> = stmt
            .query_map(
                params![want_in, want_out, account, from, until, unpaid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(keys.len());
        for (dir, hash) in keys {
            if let Some(row) = invoice_row(&self.conn, &hash)? {
                let mut tx = if dir == "in" {
                    row.as_incoming()
                } else {
                    row.as_outgoing()
                };
                if tx.state == Some(TransactionState::Pending) && row.expires_at <= now {
                    tx.state = Some(TransactionState::Expired);
                }
                out.push(tx);
            }
        }
        Ok(out)
    }

    /// Checks every invariant of the books. See [`AuditReport`].
    pub fn audit(&self) -> Result<AuditReport, LedgerError> {
        audit(&self.conn)
    }
}

/// Runs one write through the connection's statement cache: the ledger's statements are few and
/// run on every payment, so parsing them once matters.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Inserts a new invoice for `payee` (creating the account).
pub fn insert_invoice(conn: &Connection, payee: &str, inv: &NewInvoice) -> Result<(), ErrorBody> {
    ensure_account(conn, payee, inv.created_at).map_err(internal)?;
    exec(
        conn,
        "INSERT INTO invoices (payment_hash, payee, bolt11, preimage, amount_msat, description,
                               description_hash, created_at, expires_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'unpaid')",
        params![
            inv.payment_hash,
            payee,
            inv.bolt11,
            inv.preimage,
            inv.amount_msat as i64,
            inv.description,
            inv.description_hash,
            inv.created_at as i64,
            inv.expires_at as i64
        ],
    )
    .map_err(internal)?;
    Ok(())
}

/// Pays `bolt11` from `payer`'s balance. All checks happen before the first write.
pub fn pay(
    conn: &Connection,
    payer: &str,
    bolt11: &str,
    amount_param: Option<u64>,
    now: u64,
) -> Result<Settlement, ErrorBody> {
    let decoded = invoice::decode(bolt11)
        .map_err(|e| ErrorBody::new(ErrorCode::Other, format!("cannot pay: {e}")))?;
    let failed = |m: &str| ErrorBody::new(ErrorCode::PaymentFailed, m);
    let row = invoice_row(conn, &decoded.payment_hash)
        .map_err(internal)?
        .ok_or_else(|| failed("no route: the invoice was not issued by this hub"))?;
    if !row
        .bolt11
        .eq_ignore_ascii_case(bolt11.trim().trim_start_matches("lightning:"))
    {
        return Err(failed(
            "invoice does not match the hub's record of that payment hash",
        ));
    }
    if row.state == "settled" {
        return Err(failed("invoice is already paid"));
    }
    if row.expires_at <= now {
        return Err(failed("invoice has expired"));
    }
    if let Some(amount) = amount_param {
        if amount != row.amount_msat {
            return Err(ErrorBody::new(
                ErrorCode::Other,
                format!(
                    "amount {amount} msat does not match the invoice's {} msat",
                    row.amount_msat
                ),
            ));
        }
    }
    if row.payee == payer {
        return Err(failed("cannot pay your own invoice"));
    }
    let amount = row.amount_msat;
    let available = balance(conn, payer).map_err(internal)?;
    if available < amount {
        return Err(ErrorBody::new(
            ErrorCode::InsufficientBalance,
            format!("balance {available} msat is less than {amount} msat"),
        ));
    }
    // The writes. Each is guarded so a concurrent change can only make it fail, never overdraw.
    let debited = exec(
        conn,
        "UPDATE accounts SET balance_msat = balance_msat - ?2
             WHERE pubkey = ?1 AND balance_msat >= ?2",
        params![payer, amount as i64],
    )
    .map_err(internal)?;
    if debited != 1 {
        return Err(ErrorBody::new(
            ErrorCode::InsufficientBalance,
            "balance changed; retry",
        ));
    }
    exec(
        conn,
        "UPDATE accounts SET balance_msat = balance_msat + ?2 WHERE pubkey = ?1",
        params![row.payee, amount as i64],
    )
    .map_err(internal)?;
    let settled = exec(
        conn,
        "UPDATE invoices SET state = 'settled', settled_at = ?2, payer = ?3
             WHERE payment_hash = ?1 AND state = 'unpaid'",
        params![row.payment_hash, now as i64, payer],
    )
    .map_err(internal)?;
    if settled != 1 {
        return Err(failed("invoice is already paid"));
    }
    exec(
        conn,
        "INSERT INTO transfers (payment_hash, payer, payee, amount_msat, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            row.payment_hash,
            payer,
            row.payee,
            amount as i64,
            now as i64
        ],
    )
    .map_err(internal)?;
    let row = InvoiceRow {
        state: "settled".into(),
        settled_at: Some(now),
        payer: Some(payer.to_string()),
        ..row
    };
    Ok(Settlement {
        payer: payer.to_string(),
        payee: row.payee.clone(),
        incoming: row.as_incoming(),
        outgoing: row.as_outgoing(),
    })
}

/// The faucet: issues new regtest money to the `faucet` account and pays `requester`'s invoice
/// with it, within `limits`. Issuance and payment commit together.
pub fn faucet(
    conn: &Connection,
    faucet_account: &str,
    requester: &str,
    bolt11: &str,
    limits: FaucetLimits,
    now: u64,
) -> Result<Settlement, ErrorBody> {
    let decoded = invoice::decode(bolt11)
        .map_err(|e| ErrorBody::new(ErrorCode::Other, format!("faucet: {e}")))?;
    let row = invoice_row(conn, &decoded.payment_hash)
        .map_err(internal)?
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::PaymentFailed,
                "faucet: the invoice was not issued by this hub",
            )
        })?;
    if row.payee != requester {
        return Err(ErrorBody::new(
            ErrorCode::Restricted,
            "the faucet only pays invoices of the requesting account",
        ));
    }
    let amount = row.amount_msat;
    if amount > limits.max_msat_per_request {
        return Err(ErrorBody::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the faucet gives at most {} sats per request",
                limits.max_msat_per_request / 1000
            ),
        ));
    }
    let (count_minute, sum_day): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(created_at > ?2), 0), COALESCE(SUM(amount_msat), 0)
             FROM issuance WHERE requested_by = ?1 AND created_at > ?3",
        )
        .and_then(|mut s| {
            s.query_row(
                params![requester, now as i64 - 60, now as i64 - 86_400],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .map_err(internal)?;
    if count_minute >= i64::from(limits.max_requests_per_minute) {
        return Err(ErrorBody::new(
            ErrorCode::RateLimited,
            format!(
                "at most {} faucet requests per minute; retry shortly",
                limits.max_requests_per_minute
            ),
        ));
    }
    if (sum_day as u64).saturating_add(amount) > limits.max_msat_per_day {
        return Err(ErrorBody::new(
            ErrorCode::QuotaExceeded,
            format!(
                "daily faucet cap of {} sats reached ({} sats granted in the last 24 h)",
                limits.max_msat_per_day / 1000,
                sum_day / 1000
            ),
        ));
    }
    ensure_account(conn, faucet_account, now).map_err(internal)?;
    exec(conn,
        "INSERT INTO issuance (account, amount_msat, requested_by, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![faucet_account, amount as i64, requester, now as i64],
    )
    .map_err(internal)?;
    exec(
        conn,
        "UPDATE accounts SET balance_msat = balance_msat + ?2 WHERE pubkey = ?1",
        params![faucet_account, amount as i64],
    )
    .map_err(internal)?;
    pay(conn, faucet_account, &row.bolt11, None, now)
}

/// What `pylon hub audit` proves about the books.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// True when every invariant holds.
    pub ok: bool,
    /// Number of accounts.
    pub accounts: u64,
    /// Σ balances, msats.
    pub total_balance_msat: u64,
    /// Σ faucet issuance, msats.
    pub total_issued_msat: u64,
    /// Invoices created.
    pub invoices: u64,
    /// Invoices paid.
    pub settled_invoices: u64,
    /// Payments recorded.
    pub transfers: u64,
    /// Σ payments, msats.
    pub total_transferred_msat: u64,
    /// Every broken invariant, described.
    pub problems: Vec<String>,
}

fn audit(conn: &Connection) -> Result<AuditReport, LedgerError> {
    let one = |sql: &str| -> Result<i64, rusqlite::Error> { conn.query_row(sql, [], |r| r.get(0)) };
    let mut problems = Vec::new();
    let total_balance = one("SELECT COALESCE(SUM(balance_msat), 0) FROM accounts")?;
    let total_issued = one("SELECT COALESCE(SUM(amount_msat), 0) FROM issuance")?;
    if total_balance != total_issued {
        problems.push(format!(
            "total balances {total_balance} msat != total issued {total_issued} msat"
        ));
    }
    // Each account: balance = issued to it + received - sent.
    let mut stmt = conn.prepare(
        "SELECT a.pubkey, a.balance_msat,
            (SELECT COALESCE(SUM(amount_msat), 0) FROM issuance i WHERE i.account = a.pubkey),
            (SELECT COALESCE(SUM(amount_msat), 0) FROM transfers t WHERE t.payee = a.pubkey),
            (SELECT COALESCE(SUM(amount_msat + fees_msat), 0) FROM transfers t WHERE t.payer = a.pubkey)
         FROM accounts a",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (pubkey, balance, issued, received, sent) = row?;
        if balance != issued + received - sent {
            problems.push(format!(
                "account {pubkey}: balance {balance} != issued {issued} + received {received} - sent {sent}"
            ));
        }
    }
    // Settled invoices and transfers pair one to one, with equal amounts and parties.
    let unmatched = one(
        "SELECT COUNT(*) FROM invoices i LEFT JOIN transfers t ON t.payment_hash = i.payment_hash
         WHERE (i.state = 'settled') != (t.id IS NOT NULL)
            OR (t.id IS NOT NULL AND (t.amount_msat != i.amount_msat OR t.payee != i.payee
                                      OR t.payer IS NOT i.payer OR i.settled_at IS NULL))",
    )?;
    if unmatched != 0 {
        problems.push(format!(
            "{unmatched} invoices disagree with their transfer record"
        ));
    }
    // Every preimage hashes to its payment hash.
    let mut stmt = conn.prepare("SELECT payment_hash, preimage FROM invoices")?;
    let pairs = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut bad_preimages = 0u64;
    for pair in pairs {
        let (hash, preimage) = pair?;
        if !invoice::preimage_matches(&preimage, &hash) {
            bad_preimages += 1;
        }
    }
    if bad_preimages != 0 {
        problems.push(format!(
            "{bad_preimages} invoices whose preimage does not hash to their payment hash"
        ));
    }
    let report = AuditReport {
        ok: problems.is_empty(),
        accounts: one("SELECT COUNT(*) FROM accounts")? as u64,
        total_balance_msat: total_balance as u64,
        total_issued_msat: total_issued as u64,
        invoices: one("SELECT COUNT(*) FROM invoices")? as u64,
        settled_invoices: one("SELECT COUNT(*) FROM invoices WHERE state = 'settled'")? as u64,
        transfers: one("SELECT COUNT(*) FROM transfers")? as u64,
        total_transferred_msat: one("SELECT COALESCE(SUM(amount_msat), 0) FROM transfers")? as u64,
        problems,
    };
    Ok(report)
}

/// An invoice as stored.
#[derive(Debug, Clone)]
struct InvoiceRow {
    payment_hash: String,
    payee: String,
    bolt11: String,
    preimage: String,
    amount_msat: u64,
    description: Option<String>,
    description_hash: Option<String>,
    created_at: u64,
    expires_at: u64,
    state: String,
    settled_at: Option<u64>,
    payer: Option<String>,
}

impl InvoiceRow {
    fn as_incoming(&self) -> Transaction {
        let settled = self.state == "settled";
        // The statement the service seals with its node key: the settling party's word that
        // money moved, which no payee can make up.
        let metadata = match (&self.payer, self.settled_at) {
            (Some(payer), Some(at)) if settled => Some(TransactionMetadata {
                pylon_settlement: Some(Attestation::statement(
                    &self.payment_hash,
                    self.amount_msat,
                    at,
                    payer,
                    &self.payee,
                )),
                other: Default::default(),
            }),
            _ => None,
        };
        Transaction {
            kind: TransactionType::Incoming,
            state: Some(if settled {
                TransactionState::Settled
            } else {
                TransactionState::Pending
            }),
            invoice: Some(self.bolt11.clone()),
            description: self.description.clone(),
            description_hash: self.description_hash.clone(),
            // Revealed to anyone only once paid, the payee included: a payee that held the
            // preimage of an unpaid invoice could "prove" a payment that never happened.
            preimage: settled.then(|| self.preimage.clone()),
            payment_hash: self.payment_hash.clone(),
            amount: self.amount_msat,
            fees_paid: 0,
            created_at: self.created_at,
            expires_at: Some(self.expires_at),
            settled_at: self.settled_at,
            metadata,
        }
    }

    fn as_outgoing(&self) -> Transaction {
        Transaction {
            kind: TransactionType::Outgoing,
            ..self.as_incoming()
        }
    }
}

fn invoice_row(
    conn: &Connection,
    payment_hash: &str,
) -> Result<Option<InvoiceRow>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT payment_hash, payee, bolt11, preimage, amount_msat, description, description_hash,
                created_at, expires_at, state, settled_at, payer
         FROM invoices WHERE payment_hash = ?1",
    )?
    .query_row([payment_hash.to_lowercase()], |r| {
        Ok(InvoiceRow {
            payment_hash: r.get(0)?,
            payee: r.get(1)?,
            bolt11: r.get(2)?,
            preimage: r.get(3)?,
            amount_msat: r.get::<_, i64>(4)? as u64,
            description: r.get(5)?,
            description_hash: r.get(6)?,
            created_at: r.get::<_, i64>(7)? as u64,
            expires_at: r.get::<_, i64>(8)? as u64,
            state: r.get(9)?,
            settled_at: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            payer: r.get(11)?,
        })
    })
    .optional()
}

fn balance(conn: &Connection, account: &str) -> Result<u64, rusqlite::Error> {
    let b: Option<i64> = conn
        .prepare_cached("SELECT balance_msat FROM accounts WHERE pubkey = ?1")?
        .query_row([account], |r| r.get(0))
        .optional()?;
    Ok(b.unwrap_or(0) as u64)
}

fn ensure_account(conn: &Connection, pubkey: &str, now: u64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("INSERT OR IGNORE INTO accounts (pubkey, created_at) VALUES (?1, ?2)")?
        .execute(params![pubkey, now as i64])?;
    Ok(())
}

fn internal(e: rusqlite::Error) -> ErrorBody {
    tracing::error!("ledger: {e}");
    ErrorBody::new(ErrorCode::Internal, "the hub's ledger failed; retry later")
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::SecretKey;

    use super::*;
    use crate::bolt11::{create, Purpose};
    use crate::protocol::nip47::PayResult;

    const LIMITS: FaucetLimits = FaucetLimits {
        max_msat_per_request: 100_000_000,
        max_msat_per_day: 1_000_000_000,
        max_requests_per_minute: 10,
    };

    fn node() -> SecretKey {
        SecretKey::from_slice(&[3u8; 32]).expect("key")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn invoice_for(ledger: &mut Ledger, payee: &str, msat: u64) -> NewInvoice {
        let inv = create(&node(), msat, &Purpose::Description("t".into()), 600).expect("create");
        let id = format!("make-{}", inv.payment_hash);
        let copy = inv.clone();
        ledger
            .once(
                &id,
                payee,
                "make_invoice",
                now(),
                |c| insert_invoice(c, payee, &copy),
                |_| Response::ok("make_invoice", serde_json::json!({})),
            )
            .expect("insert");
        inv
    }

    fn fund(ledger: &mut Ledger, who: &str, msat: u64) {
        let inv = invoice_for(ledger, who, msat);
        let id = format!("faucet-{}", inv.payment_hash);
        match ledger
            .once(
                &id,
                who,
                "faucet",
                now(),
                |c| faucet(c, "faucet", who, &inv.bolt11, LIMITS, now()),
                |s| {
                    Response::ok(
                        "faucet",
                        PayResult {
                            preimage: s.outgoing.preimage.clone().unwrap_or_default(),
                            fees_paid: Some(0),
                        },
                    )
                },
            )
            .expect("faucet")
        {
            Once::Fresh(r, Some(_)) => assert!(r.error.is_none()),
            other => panic!("faucet failed: {other:?}"),
        }
    }

    fn try_pay(ledger: &mut Ledger, id: &str, payer: &str, bolt11: &str) -> Once<Settlement> {
        ledger
            .once(
                id,
                payer,
                "pay_invoice",
                now(),
                |c| pay(c, payer, bolt11, None, now()),
                |s| {
                    Response::ok(
                        "pay_invoice",
                        PayResult {
                            preimage: s.outgoing.preimage.clone().unwrap_or_default(),
                            fees_paid: Some(0),
                        },
                    )
                },
            )
            .expect("ledger")
    }

    fn code(once: &Once<Settlement>) -> Option<ErrorCode> {
        match once {
            Once::Fresh(r, _) | Once::Replayed(r) => r.error.as_ref().map(|e| e.code.clone()),
        }
    }

    #[test]
    fn payment_moves_exact_amounts_once() {
        let mut l = Ledger::in_memory().expect("ledger");
        fund(&mut l, "alice", 50_000);
        let inv = invoice_for(&mut l, "bob", 21_000);
        let first = try_pay(&mut l, "req-1", "alice", &inv.bolt11);
        assert_eq!(code(&first), None);
        assert_eq!(l.balance("alice").expect("bal"), 29_000);
        assert_eq!(l.balance("bob").expect("bal"), 21_000);
        // The same request again: the same answer, no second debit.
        let again = try_pay(&mut l, "req-1", "alice", &inv.bolt11);
        assert!(matches!(again, Once::Replayed(ref r) if r.error.is_none()));
        // A new request for the paid invoice: refused, no debit.
        let twice = try_pay(&mut l, "req-2", "alice", &inv.bolt11);
        assert_eq!(code(&twice), Some(ErrorCode::PaymentFailed));
        assert_eq!(l.balance("alice").expect("bal"), 29_000);
        let audit = l.audit().expect("audit");
        assert!(audit.ok, "{audit:?}");
        assert_eq!(audit.total_issued_msat, 50_000);
    }

    #[test]
    fn refusals() {
        let mut l = Ledger::in_memory().expect("ledger");
        fund(&mut l, "alice", 1_000);
        let big = invoice_for(&mut l, "bob", 5_000);
        assert_eq!(
            code(&try_pay(&mut l, "r1", "alice", &big.bolt11)),
            Some(ErrorCode::InsufficientBalance)
        );
        let own = invoice_for(&mut l, "alice", 10);
        assert_eq!(
            code(&try_pay(&mut l, "r2", "alice", &own.bolt11)),
            Some(ErrorCode::PaymentFailed)
        );
        let foreign =
            create(&node(), 10, &Purpose::Description("elsewhere".into()), 60).expect("create");
        assert_eq!(
            code(&try_pay(&mut l, "r3", "alice", &foreign.bolt11)),
            Some(ErrorCode::PaymentFailed)
        );
        assert_eq!(
            code(&try_pay(&mut l, "r4", "alice", "lnbcrt-garbage")),
            Some(ErrorCode::Other)
        );
        assert_eq!(l.balance("alice").expect("bal"), 1_000);
        assert!(l.audit().expect("audit").ok);
    }

    #[test]
    fn expired_invoices_cannot_be_paid() {
        let mut l = Ledger::in_memory().expect("ledger");
        fund(&mut l, "alice", 1_000);
        let inv = invoice_for(&mut l, "bob", 10);
        let later = inv.expires_at + 1;
        let result = l
            .once(
                "late",
                "alice",
                "pay_invoice",
                later,
                |c| pay(c, "alice", &inv.bolt11, None, later),
                |_| Response::ok("pay_invoice", serde_json::json!({})),
            )
            .expect("ledger");
        assert_eq!(code(&result), Some(ErrorCode::PaymentFailed));
        let listed = l
            .list(
                "bob",
                &ListTransactionsParams {
                    unpaid: Some(true),
                    ..Default::default()
                },
                later,
            )
            .expect("list");
        assert_eq!(listed[0].state, Some(TransactionState::Expired));
    }

    #[test]
    fn faucet_limits() {
        let mut l = Ledger::in_memory().expect("ledger");
        let tight = FaucetLimits {
            max_msat_per_request: 10_000,
            max_msat_per_day: 15_000,
            max_requests_per_minute: 5,
        };
        let grant = |l: &mut Ledger, who: &str, msat: u64| {
            let inv = invoice_for(l, who, msat);
            let id = format!("f-{}", inv.payment_hash);
            let res = l
                .once(
                    &id,
                    who,
                    "faucet",
                    now(),
                    |c| faucet(c, "faucet", who, &inv.bolt11, tight, now()),
                    |_| Response::ok("faucet", serde_json::json!({})),
                )
                .expect("ledger");
            code(&res)
        };
        assert_eq!(grant(&mut l, "a", 20_000), Some(ErrorCode::QuotaExceeded));
        assert_eq!(grant(&mut l, "a", 10_000), None);
        assert_eq!(
            grant(&mut l, "a", 10_000),
            Some(ErrorCode::QuotaExceeded),
            "daily cap"
        );
        assert_eq!(grant(&mut l, "b", 1_000), None, "caps are per pubkey");
        // Someone else's invoice is not the faucet's business.
        let inv = invoice_for(&mut l, "b", 1_000);
        let res = l
            .once(
                "steal",
                "a",
                "faucet",
                now(),
                |c| faucet(c, "faucet", "a", &inv.bolt11, tight, now()),
                |_| Response::ok("faucet", serde_json::json!({})),
            )
            .expect("ledger");
        assert_eq!(code(&res), Some(ErrorCode::Restricted));
        let audit = l.audit().expect("audit");
        assert!(audit.ok, "{audit:?}");
        assert_eq!(audit.total_issued_msat, 11_000);
        assert_eq!(l.balance("faucet").expect("bal"), 0);
    }

    #[test]
    fn lookup_and_list_respect_ownership_and_order() {
        let mut l = Ledger::in_memory().expect("ledger");
        fund(&mut l, "alice", 100_000);
        let mut invoices = Vec::new();
        for i in 0..5 {
            let inv = invoice_for(&mut l, "bob", 1_000 + i);
            assert_eq!(
                code(&try_pay(&mut l, &format!("p{i}"), "alice", &inv.bolt11)),
                None
            );
            invoices.push(inv);
        }
        let hash = &invoices[0].payment_hash;
        assert_eq!(
            l.lookup("bob", hash).expect("ok").expect("bob's").kind,
            TransactionType::Incoming
        );
        assert_eq!(
            l.lookup("alice", hash).expect("ok").expect("alice's").kind,
            TransactionType::Outgoing
        );
        assert!(
            l.lookup("carol", hash).expect("ok").is_none(),
            "not carol's business"
        );

        let all = l
            .list("alice", &ListTransactionsParams::default(), now())
            .expect("list");
        assert_eq!(all.len(), 6, "5 payments + the faucet grant");
        // Newest first, exactly, even within one second: the five payments (last one first), then
        // the faucet grant that funded them.
        let order: Vec<(TransactionType, u64)> = all.iter().map(|t| (t.kind, t.amount)).collect();
        let mut expected: Vec<(TransactionType, u64)> = (0..5)
            .rev()
            .map(|i| (TransactionType::Outgoing, 1_000 + i))
            .collect();
        expected.push((TransactionType::Incoming, 100_000));
        assert_eq!(order, expected);
        let page = l
            .list(
                "alice",
                &ListTransactionsParams {
                    limit: Some(2),
                    offset: Some(1),
                    kind: Some(TransactionType::Outgoing),
                    ..Default::default()
                },
                now(),
            )
            .expect("page");
        assert_eq!(page.len(), 2);
        assert!(page.iter().all(|t| t.kind == TransactionType::Outgoing));
    }

    #[test]
    fn audit_catches_tampering() {
        let mut l = Ledger::in_memory().expect("ledger");
        fund(&mut l, "alice", 10_000);
        l.conn
            .execute(
                "UPDATE accounts SET balance_msat = balance_msat + 1 WHERE pubkey = 'alice'",
                [],
            )
            .expect("tamper");
        let audit = l.audit().expect("audit");
        assert!(!audit.ok);
        assert!(audit.problems.iter().any(|p| p.contains("total balances")));
        assert!(audit.problems.iter().any(|p| p.contains("account alice")));
    }
}
