//! Watching invoices settle and publishing receipts.
//!
//! Wallet notifications are the fast path; a slow poll of `lookup_invoice` catches any that were
//! missed (a lagging channel, a wallet restart), and pending invoices survive a node restart
//! because they are read back from `jobs.db`.
//!
//! An invoice past its expiry gets one last look-up (a payment may have landed just before it
//! expired and its notification been lost); if still unpaid it is marked `expired` in `jobs.db`
//! and dropped: never looked up again, nor read back after a restart. Without that, every
//! unpaid invoice a node ever issued stayed in the poll forever.

use std::sync::Arc;
use std::time::Instant;

use nostr_sdk::{EventId, Timestamp};
use tokio::sync::watch;

use super::{PaidSignal, Shared};
use crate::protocol::nip47::PAYMENT_RECEIVED;
use crate::protocol::receipt::Receipt;
use crate::protocol::settlement::Attestation;
use crate::store::{now_ms, JobRecord, JobState, Role, Set, Stamp, StoreError};

/// Most invoices looked up per poll tick, so a large backlog never floods the wallet.
const LOOKUPS_PER_TICK: usize = 25;

/// An invoice this node waits on.
pub(crate) struct Pending {
    job_id: String,
    waiter: Option<PaidSignal>,
    since: Instant,
    last_poll: Option<Instant>,
    /// Unix seconds, read from `jobs.db` the first time the invoice is polled.
    expires_at: Option<u64>,
}

/// Registers an invoice to watch; `waiter` is woken with the preimage (pay-first jobs).
pub(super) fn expect(s: &Shared, payment_hash: &str, job_id: &str, waiter: Option<PaidSignal>) {
    if let Ok(mut p) = s.pending.lock() {
        p.insert(
            payment_hash.to_string(),
            Pending {
                job_id: job_id.to_string(),
                waiter,
                since: Instant::now(),
                last_poll: None,
                expires_at: None,
            },
        );
    }
}

/// Hands a pay-first invoice over to the settlement watcher, for a job that runs before it is
/// paid after all (its buyer proved good meanwhile): from now on a payment leads to the receipt
/// like any pay-after job's. Call it once the job's result is recorded. Returns the preimage if
/// the invoice was paid already (the caller then publishes the receipt).
pub(super) fn hand_over(
    s: &Shared,
    payment_hash: &str,
    job_id: &str,
    paid: &mut tokio::sync::oneshot::Receiver<Settled>,
) -> Option<Settled> {
    let Ok(mut p) = s.pending.lock() else {
        return paid.try_recv().ok();
    };
    // Settlement takes the entry out under this lock, then sends the preimage. Entry gone and
    // no preimage yet: it is on its way to a receiver about to be dropped, so the invoice is
    // watched again below and the next poll finds it settled.
    if let Ok(preimage) = paid.try_recv() {
        return Some(preimage);
    }
    if let Some(entry) = p.get_mut(payment_hash) {
        entry.waiter = None;
    } else {
        p.insert(
            payment_hash.to_string(),
            Pending {
                job_id: job_id.to_string(),
                waiter: None,
                since: Instant::now(),
                last_poll: None,
                expires_at: None,
            },
        );
    }
    None
}

/// Stops watching an invoice.
pub(super) fn forget(s: &Shared, payment_hash: &str) {
    let _ = take(s, payment_hash);
}

/// Picks up invoices left pending by a previous run, and returns the pay-first jobs among them
/// (not run yet: the caller resumes them, see `job::resume`).
pub(super) fn resume(s: &Shared) -> Result<Vec<JobRecord>, StoreError> {
    let jobs = s.store.jobs().awaiting_payment()?;
    let mut pay_first = Vec::new();
    for rec in jobs {
        let Some(hash) = rec.payment_hash.clone() else {
            continue;
        };
        if rec.state == Some(JobState::PaymentRequired) {
            pay_first.push(rec);
            continue;
        }
        expect(s, &hash, &rec.job_id, None);
    }
    Ok(pay_first)
}

/// The settlement loop.
pub(super) async fn watch(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut notes = s.wallet.notifications();
    let mut tick = tokio::time::interval(s.options.settlement_poll);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            note = notes.recv() => match note {
                Ok(n) if n.notification_type == PAYMENT_RECEIVED => {
                    let proof = n.notification.attestation().cloned();
                    if let Some(preimage) = n.notification.preimage {
                        paid(&s, &n.notification.payment_hash, Settled { preimage, proof }).await;
                    s.payments.notify_waiters();
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("missed {n} wallet notifications; polling will catch up");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    // No notifications from this wallet: rely on polling alone.
                    notes = tokio::sync::broadcast::channel(1).1;
                }
            },
            _ = tick.tick() => poll(&s).await,
        }
    }
}

async fn poll(s: &Arc<Shared>) {
    let every = s.options.invoice_poll_after;
    let due: Vec<(String, String, Option<u64>)> = {
        let Ok(mut pending) = s.pending.lock() else {
            return;
        };
        let now = Instant::now();
        let mut due: Vec<(&String, &mut Pending)> = pending
            .iter_mut()
            .filter(|(_, p)| {
                now.duration_since(p.since) >= every
                    && p.last_poll.is_none_or(|t| now.duration_since(t) >= every)
            })
            .collect();
        due.sort_by_key(|(_, p)| p.last_poll);
        due.into_iter()
            .take(LOOKUPS_PER_TICK)
            .map(|(hash, p)| {
                p.last_poll = Some(now);
                (hash.clone(), p.job_id.clone(), p.expires_at)
            })
            .collect()
    };
    for (hash, job_id, expires_at) in due {
        let expires_at = match expires_at {
            Some(at) => Some(at),
            None => expiry(s, &hash, &job_id),
        };
        let expired = expires_at.is_some_and(|at| Timestamp::now().as_secs() >= at);
        match s.wallet.lookup_invoice(hash.clone()).await {
            Ok(tx) if tx.is_settled() => {
                let proof = tx.attestation().cloned();
                if let Some(preimage) = tx.preimage {
                    paid(s, &hash, Settled { preimage, proof }).await;
                    s.payments.notify_waiters();
                }
            }
            Ok(_) if expired => expire(s, &hash, &job_id),
            Ok(_) => {}
            // A failed look-up proves nothing: try again next time, expired or not.
            Err(e) => tracing::debug!("lookup of {hash} failed: {e}"),
        }
    }
}

/// The expiry of a pending invoice, from `jobs.db`, remembered in its entry.
fn expiry(s: &Shared, payment_hash: &str, job_id: &str) -> Option<u64> {
    let at = s
        .store
        .jobs()
        .get(job_id, Role::Provider)
        .ok()
        .flatten()
        .and_then(|r| r.invoice_expires_at)?;
    if let Ok(mut p) = s.pending.lock() {
        if let Some(entry) = p.get_mut(payment_hash) {
            entry.expires_at = Some(at);
        }
    }
    Some(at)
}

/// An invoice expired unpaid: stop watching it, for good. A job still waiting for it to be paid
/// first is woken (its waiter dropped) and fails; a published result is marked `expired`.
fn expire(s: &Shared, payment_hash: &str, job_id: &str) {
    let Some(entry) = take(s, payment_hash) else {
        return;
    };
    if entry.waiter.is_some() {
        return;
    }
    let jobs = s.store.jobs();
    let state = jobs
        .get(job_id, Role::Provider)
        .ok()
        .flatten()
        .and_then(|r| r.state);
    if state == Some(JobState::Result) {
        tracing::info!(job = job_id, "invoice expired unpaid; no longer watched");
        if let Err(e) = jobs.update(job_id, Role::Provider, &[Set::State(JobState::Expired)]) {
            tracing::error!(job = job_id, "cannot mark the invoice expired: {e}");
        }
    }
}

/// What the wallet tells a payee once its invoice has settled: the preimage (only now revealed)
/// and, from a Pylon hub, its signed settlement attestation.
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    /// Proof of payment for the payer; the payee learns it at settlement.
    pub preimage: String,
    /// The settling hub's signed statement, embedded in the receipt.
    pub proof: Option<Attestation>,
}

/// Takes an invoice out of the watch list: whoever takes it (settlement or expiry) handles it.
fn take(s: &Shared, payment_hash: &str) -> Option<Pending> {
    s.pending.lock().ok()?.remove(payment_hash)
}

async fn paid(s: &Arc<Shared>, payment_hash: &str, settled: Settled) {
    let Some(entry) = take(s, payment_hash) else {
        return;
    };
    match entry.waiter {
        Some(waiter) => {
            // A pay-first job: it runs now and publishes its receipt after the result.
            let _ = waiter.send(settled);
        }
        None => receipt(s, &entry.job_id, &settled).await,
    }
}

/// Publishes the receipt of a paid job and records it.
pub(super) async fn receipt(s: &Arc<Shared>, job_id: &str, settled: &Settled) {
    let preimage = settled.preimage.as_str();
    let rec = match s.store.jobs().get(job_id, Role::Provider) {
        Ok(Some(r)) => r,
        _ => return,
    };
    let ids = (
        EventId::from_hex(&rec.job_id),
        rec.result_id.as_deref().map(EventId::from_hex),
        nostr_sdk::PublicKey::from_hex(&rec.buyer),
    );
    let (Ok(request_id), Some(Ok(result_id)), Ok(buyer)) = ids else {
        tracing::error!(job = job_id, "cannot receipt a job without its ids");
        return;
    };
    let (Some(amount), Some(bolt11), Some(hash)) = (
        rec.amount_msat,
        rec.bolt11.clone(),
        rec.payment_hash.clone(),
    ) else {
        return;
    };
    let receipt = Receipt {
        id: None,
        provider: None,
        request_id,
        result_id,
        buyer,
        amount_msats: amount,
        bolt11,
        payment_hash: hash,
        preimage: preimage.to_string(),
        settlement: settled.proof.clone(),
        created_at: None,
    };
    if let Err(e) = receipt.verify() {
        tracing::error!(job = job_id, "refusing to sign an invalid receipt: {e}");
        return;
    }
    let paid_at = now_ms();
    let _ = s.store.jobs().update(
        job_id,
        Role::Provider,
        &[
            Set::Preimage(preimage.to_string()),
            Set::Time(Stamp::Paid, paid_at),
            Set::State(JobState::Paid),
        ],
    );
    let event = match receipt.to_event(&s.keys) {
        Ok(e) => e,
        Err(e) => return tracing::error!("cannot build receipt: {e}"),
    };
    if let Err(e) = s.relay.publish(&event).await {
        tracing::warn!(job = job_id, "receipt not published yet: {e}");
        // Stay pending so a later poll retries.
        expect(s, &receipt.payment_hash, job_id, None);
        return;
    }
    let _ = s.store.receipts().insert(&event);
    let _ = s.store.jobs().update(
        job_id,
        Role::Provider,
        &[
            Set::Receipt(event.id.to_hex()),
            Set::Time(Stamp::Receipt, now_ms()),
            Set::State(JobState::Done),
        ],
    );
}
