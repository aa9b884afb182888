//! One job on the provider side: admit, (get paid,) fetch its inputs, claim a slot, run,
//! invoice, publish.
//!
//! Only the executor runs in a slot: pay-first waits ([`super::terms`]) and url fetches
//! ([`super::inputs`]) happen before, so neither an unpaid invoice nor a slow URL holds one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bitcoin::hashes::{sha256, Hash};
use nostr_sdk::{Event, JsonUtil, Timestamp};

use super::terms::Payment;
use super::{settle, Shared};
use crate::protocol::failure::FailureCode;
use crate::protocol::nip47::MakeInvoiceParams;
use crate::protocol::nip90::{Amount, JobRequest, JobResult, JobStatus, NewFeedback};
use crate::protocol::payment_link;
use crate::store::{now_ms, JobRecord, JobState, Role, Set, Stamp};

/// Handles one request event end to end. Never panics on what the network sent.
pub(super) async fn handle(s: Arc<Shared>, event: Event) {
    let me = s.keys.public_key();
    let request = match JobRequest::from_event(&event, Some(&s.keys)) {
        Ok(r) => r,
        Err(e) => {
            // Tell the buyer only when the job was addressed to us; strangers' junk is ignored.
            if event.tags.public_keys().any(|p| *p == me) {
                feedback_error(&s, &event, FailureCode::InvalidInput, &e.to_string()).await;
            }
            return;
        }
    };
    if !request.is_for(&me) || request.is_expired(Timestamp::now()) {
        return;
    }
    let Some(price) = s.options.prices.get(&request.kind).copied() else {
        return;
    };
    let record = JobRecord {
        job_id: request.id.to_hex(),
        kind: request.kind,
        buyer: request.buyer.to_hex(),
        provider: Some(me.to_hex()),
        bid_msat: request.bid_msats,
        bytes_in: Some(
            event.content.len() as u64
                + request
                    .inputs
                    .iter()
                    .map(|i| i.data.len() as u64)
                    .sum::<u64>(),
        ),
        submitted_at: Some(request.created_at.as_secs() * 1000),
        picked_up_at: Some(now_ms()),
        ..Default::default()
    };
    // The same request arriving through several relays, or again after a restart, runs once.
    let fresh = match s
        .store
        .jobs()
        .insert(&record, Role::Provider, &event.as_json())
    {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::error!("cannot record job: {e}");
            return;
        }
    };
    if !fresh {
        return;
    }
    let job = Job {
        s: &s,
        event: &event,
        request: &request,
        credit: std::sync::Mutex::new(None),
    };
    if s.draining.load(Ordering::SeqCst) {
        return job
            .fail(
                FailureCode::ShuttingDown,
                "this node is shutting down; send the job elsewhere",
            )
            .await;
    }
    if let Some(bid) = request.bid_msats {
        if bid < price {
            return job
                .fail(
                    FailureCode::BidTooLow,
                    &format!("bid {bid} msats is below the price of {price} msats"),
                )
                .await;
        }
    }
    if s.options.refuse_unpaid {
        let unpaid = s
            .store
            .jobs()
            .expired_unpaid(&request.buyer.to_hex(), Timestamp::now().as_secs())
            .unwrap_or(0);
        if unpaid > 0 {
            return job
                .fail(
                    FailureCode::UnpaidInvoices,
                    &format!("you have {unpaid} unpaid expired invoices from this provider; pay them first"),
                )
                .await;
        }
    }
    let admitted = match s.buyers.lock() {
        Ok(mut b) => b.admit(request.buyer, Instant::now()),
        Err(_) => Err((FailureCode::ExecError, "internal error".to_string())),
    };
    if let Err((code, why)) = admitted {
        return job.fail(code, &why).await;
    }
    let (pay_first, credit) = super::terms::decide(&s, &request);
    // A job paid later joins the backlog now, or is shed. A pay-first job joins once paid: an
    // unpaid one holds nothing, and a paid one is never shed.
    let backlog = match pay_first {
        PayFirst::No => Backlog::reserve(&s).map(Some),
        _ => Ok(None),
    };
    match backlog {
        Ok(backlog) => {
            if let Ok(mut slot) = job.credit.lock() {
                *slot = credit;
            }
            job.run(price, pay_first, backlog).await;
        }
        Err(why) => {
            drop(credit);
            s.shed.fetch_add(1, Ordering::SeqCst);
            job.fail(FailureCode::Overloaded, &why).await;
        }
    }
    drop(job);
    if let Ok(mut b) = s.buyers.lock() {
        b.release(&request.buyer);
    }
}

/// Most jobs a node holds past admission (waiting for a slot or running), whatever their
/// expected run time: each holds its request in memory.
const MAX_BACKLOG: u64 = 1_024;

/// One job in the node's backlog (admitted and not finished), released on drop.
pub(super) struct Backlog<'a>(&'a Shared);

impl<'a> Backlog<'a> {
    /// Joins the backlog unless the jobs ahead could not be served within the job timeout (by
    /// the node's measured run time per job) or the backlog is full; the `Err` says why.
    /// Check and join are one atomic step, so a burst cannot slip past the limit.
    pub(super) fn reserve(s: &'a Shared) -> Result<Self, String> {
        let slots = s.options.max_concurrent.max(1) as u64;
        let per_job = s.exec_ms.load(Ordering::SeqCst);
        let limit_ms = s.options.job_timeout.as_millis() as u64;
        let mut why = String::new();
        let joined = s
            .backlog
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ahead| {
                let wait_ms = wait_before_start_ms(ahead, slots, per_job);
                if ahead >= MAX_BACKLOG {
                    why = format!("{ahead} jobs are already waiting or running here; send the job elsewhere");
                    None
                } else if wait_ms > limit_ms {
                    why = format!(
                        "{ahead} jobs are ahead of this one here (about {} s before it would start, longer than the {} s job timeout); send the job elsewhere",
                        wait_ms / 1000,
                        limit_ms / 1000
                    );
                    None
                } else {
                    Some(ahead + 1)
                }
            });
        joined.map(|_| Self(s)).map_err(|_| why)
    }

    /// Joins the backlog unconditionally (a job already paid for).
    pub(super) fn join(s: &'a Shared) -> Self {
        s.backlog.fetch_add(1, Ordering::SeqCst);
        Self(s)
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.0.backlog.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a job with `ahead` jobs before it (running or waiting) waits for one of `slots`,
/// if each takes `per_job_ms`: whole rounds of the slots, since jobs take about as long.
fn wait_before_start_ms(ahead: u64, slots: u64, per_job_ms: u64) -> u64 {
    if ahead < slots {
        0
    } else {
        ((ahead - slots) / slots + 1) * per_job_ms
    }
}

/// Folds one job's run time into the node's moving average (weight 1/8).
fn record_run_time(s: &Shared, took_ms: u64) {
    let _ = s
        .exec_ms
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            Some(if old == 0 {
                took_ms.max(1)
            } else {
                (old * 7 + took_ms).div_ceil(8)
            })
        });
}

/// Takes up again a pay-first job whose invoice was outstanding when the node last stopped: the
/// same invoice is watched until it expires, and the job runs once it is paid. (Closing it as
/// failed instead would keep a buyer's payment, made while the node was down, for nothing.)
pub(super) async fn resume(s: Arc<Shared>, rec: JobRecord) {
    let id = rec.job_id.clone();
    let fail = |why: &str| {
        let _ = s.store.jobs().update(
            &id,
            Role::Provider,
            &[
                Set::Error(FailureCode::ProviderOffline, why.to_string()),
                Set::State(JobState::Failed),
            ],
        );
    };
    let event = s
        .store
        .jobs()
        .request_json(&id, Role::Provider)
        .ok()
        .flatten()
        .and_then(|json| Event::from_json(&json).ok());
    let (Some(event), Some(msats), Some(bolt11), Some(hash), Some(expires_at)) = (
        event,
        rec.amount_msat,
        rec.bolt11.clone(),
        rec.payment_hash.clone(),
        rec.invoice_expires_at,
    ) else {
        return fail("the node restarted and could not read the job back");
    };
    let Ok(request) = JobRequest::from_event(&event, Some(&s.keys)) else {
        return fail("the node restarted and could not parse the request again");
    };
    let left = expires_at.saturating_sub(Timestamp::now().as_secs());
    if left == 0 {
        return fail("the invoice expired while the node was down");
    }
    s.seen.lock().map(|mut seen| seen.insert(event.id)).ok();
    tracing::info!(job = %id, "resuming a pay-first job: its invoice is watched for {left} s more");
    let (tx, rx) = tokio::sync::oneshot::channel();
    settle::expect(&s, &hash, &id, Some(tx));
    let job = Job {
        s: &s,
        event: &event,
        request: &request,
        credit: std::sync::Mutex::new(None),
    };
    let amount = Amount {
        msats,
        bolt11: Some(bolt11),
    };
    let waited = job
        .await_payment(
            amount,
            hash,
            rx,
            false,
            std::time::Duration::from_secs(left),
        )
        .await;
    if let Some(payment) = waited {
        job.run_paid(msats, payment, None).await;
    }
}

/// How a job is to be paid, decided at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PayFirst {
    /// Run now, invoice with the result.
    No,
    /// The node's policy: every job is paid first.
    Always,
    /// The buyer has no paid history here and is at the credit limit. Waived if the buyer pays
    /// for another job while this one waits.
    Unproven,
}

pub(super) struct Job<'a> {
    pub(super) s: &'a Arc<Shared>,
    pub(super) event: &'a Event,
    pub(super) request: &'a JobRequest,
    /// The credit slot of an unproven buyer's job, until its invoice is outstanding (then the
    /// invoice counts against the buyer instead; both at once would count the job twice).
    pub(super) credit: std::sync::Mutex<Option<super::terms::CreditHold>>,
}

impl Job<'_> {
    pub(super) fn id(&self) -> String {
        self.request.id.to_hex()
    }

    pub(super) fn update(&self, sets: &[Set]) {
        if let Err(e) = self.s.store.jobs().update(&self.id(), Role::Provider, sets) {
            tracing::error!(job = %self.id(), "cannot update job: {e}");
        }
    }

    pub(super) async fn fail(&self, code: FailureCode, why: &str) {
        feedback_error(self.s, self.event, code.clone(), why).await;
        self.update(&[
            Set::Error(code, why.to_string()),
            Set::State(JobState::Failed),
        ]);
        self.s.failed.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) async fn feedback(&self, status: JobStatus, info: &str, amount: Option<Amount>) {
        // A claim is informational: nothing waits for the relay to confirm it. A payment request
        // must arrive, so it waits.
        let confirm = amount.is_some();
        let fb = NewFeedback {
            status,
            info: info.to_string(),
            failure: None,
            amount,
        };
        match fb.to_event(&self.s.keys, self.request.id, self.request.buyer) {
            Ok(ev) => {
                let sent = if confirm {
                    self.s.relay.publish(&ev).await
                } else {
                    self.s.relay.publish_nowait(&ev).await
                };
                if let Err(e) = sent {
                    tracing::warn!(job = %self.id(), "feedback not published: {e}");
                }
                self.s.reply.send(&self.request.relays, &ev);
            }
            Err(e) => tracing::error!("cannot build feedback: {e}"),
        }
    }

    pub(super) async fn invoice(&self, price: u64) -> Result<Amount, String> {
        let tx = self
            .s
            .wallet
            .make_invoice(MakeInvoiceParams {
                amount: price,
                // Names job and provider, so payment ↔ job ↔ provider is deterministic.
                description: Some(payment_link::description(
                    &self.request.id,
                    &self.s.keys.public_key(),
                )),
                description_hash: None,
                expiry: Some(self.s.options.invoice_expiry_secs),
            })
            .await
            .map_err(|e| format!("cannot make an invoice: {e}"))?;
        let bolt11 = tx.invoice.ok_or("the wallet returned no invoice")?;
        self.update(&[Set::Invoice(
            price,
            bolt11.clone(),
            tx.payment_hash.clone(),
            tx.expires_at
                .unwrap_or(tx.created_at + self.s.options.invoice_expiry_secs),
        )]);
        Ok(Amount {
            msats: price,
            bolt11: Some(bolt11),
        })
    }

    async fn run(&self, price: u64, pay_first: PayFirst, backlog: Option<Backlog<'_>>) {
        let payment = match pay_first {
            PayFirst::No => Payment::Later,
            PayFirst::Always => match self.pay_first(price, false).await {
                Some(p) => p,
                None => return,
            },
            PayFirst::Unproven => match self.pay_first(price, true).await {
                Some(p) => p,
                None => return,
            },
        };
        self.run_paid(price, payment, backlog).await;
    }

    /// The rest of a job once its payment terms are settled: inputs, slot, execution.
    async fn run_paid(&self, price: u64, payment: Payment, backlog: Option<Backlog<'_>>) {
        let s = self.s;
        let _backlog = backlog.unwrap_or_else(|| Backlog::join(s));
        let request = match self.inputs().await {
            Ok(r) => r,
            Err(e) => return self.abandon(&payment, e.code, &e.message).await,
        };
        s.queued.fetch_add(1, Ordering::SeqCst);
        let permit = s.slots.acquire().await;
        s.queued.fetch_sub(1, Ordering::SeqCst);
        let Ok(_permit) = permit else { return };
        // A job already invoiced is one the node committed to: it runs even while draining.
        if s.draining.load(Ordering::SeqCst) && matches!(payment, Payment::Later) {
            // Claimed nothing yet: release it so the buyer can resubmit elsewhere.
            return self
                .fail(
                    FailureCode::ShuttingDown,
                    "this node is shutting down; send the job elsewhere",
                )
                .await;
        }
        s.running.fetch_add(1, Ordering::SeqCst);
        self.execute(price, &request, payment).await;
        s.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Fails a job that will not run; an invoice it still has is no longer watched.
    async fn abandon(&self, payment: &Payment, code: FailureCode, why: &str) {
        if let Payment::Invoiced { hash, .. } = payment {
            settle::forget(self.s, hash);
        }
        self.fail(code, why).await;
    }

    async fn execute(&self, price: u64, request: &JobRequest, payment: Payment) {
        let s = self.s;
        if matches!(payment, Payment::Later) {
            // Pay-first jobs were claimed when they asked for payment.
            self.feedback(JobStatus::Processing, "claimed", None).await;
            self.update(&[
                Set::State(JobState::Processing),
                Set::Time(Stamp::PickedUp, now_ms()),
            ]);
        }
        self.update(&[Set::Time(Stamp::Started, now_ms())]);
        let Some(executor) = s.executors.get(self.request.kind).cloned() else {
            return self
                .abandon(&payment, FailureCode::UnsupportedKind, "kind not served")
                .await;
        };
        let run = async {
            let began = Instant::now();
            let out = tokio::time::timeout(s.options.job_timeout, executor.execute(request)).await;
            record_run_time(s, began.elapsed().as_millis() as u64);
            self.update(&[Set::Time(Stamp::Finished, now_ms())]);
            out
        };
        // The invoice is made while the job runs: it costs a wallet round trip.
        let invoice = async {
            match &payment {
                Payment::Later => self.invoice(price).await,
                Payment::Prepaid { amount, .. } | Payment::Invoiced { amount, .. } => {
                    Ok(amount.clone())
                }
            }
        };
        let (output, amount) = tokio::join!(run, invoice);
        let output = match output {
            Err(_) => {
                let why = format!("the job ran longer than {:?}", s.options.job_timeout);
                return self.abandon(&payment, FailureCode::Timeout, &why).await;
            }
            Ok(Err(e)) => return self.abandon(&payment, e.code, &e.message).await,
            Ok(Ok(output)) => output,
        };
        let amount = match amount {
            Ok(a) => a,
            Err(e) => return self.fail(FailureCode::PaymentFailed, &e).await,
        };
        // The result embeds and echoes the request as the buyer sent it, not the inlined copy.
        let result = match JobResult::to_event(
            &s.keys,
            self.event,
            self.request,
            &output.content,
            Some(&amount),
        ) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .abandon(&payment, FailureCode::ExecError, &e.to_string())
                    .await
            }
        };
        let hash = self.payment_hash();
        // Recorded before publishing: a fast buyer pays the moment the result lands, and the
        // settlement watcher needs the result's id for the receipt (and must not be overtaken).
        let digest = sha256::Hash::hash(output.content.as_bytes()).to_string();
        let prepaid = matches!(payment, Payment::Prepaid { .. });
        let record = || {
            self.update(&[
                Set::Result(result.id.to_hex(), digest, output.content.len() as u64),
                Set::Time(Stamp::Published, now_ms()),
                Set::State(if prepaid {
                    JobState::Paid
                } else {
                    JobState::Result
                }),
            ])
        };
        match self.credit.lock().ok().and_then(|mut c| c.take()) {
            Some(hold) => hold.hand_over_to_invoice(record),
            None => record(),
        }
        let preimage = match payment {
            Payment::Later => {
                settle::expect(s, &hash, &self.id(), None);
                None
            }
            Payment::Prepaid { preimage, .. } => {
                // The buyer has paid here now: wake any of their jobs waiting on that.
                s.payments.notify_waiters();
                Some(preimage)
            }
            Payment::Invoiced { mut paid, .. } => {
                settle::hand_over(s, &hash, &self.id(), &mut paid)
            }
        };
        let published = s.relay.publish(&result).await;
        // A copy goes to the request's own relays once ours have (or may have) it.
        if matches!(
            published,
            Ok(_) | Err(crate::relay::client::ClientError::Unconfirmed { .. })
        ) {
            s.reply.send(&self.request.relays, &result);
        }
        match published {
            Ok(_) => {}
            // No relay confirmed it and none could show it absent: it may well be stored (a
            // busy relay). Failing the job now would contradict a result the buyer may hold;
            // the invoice stays watched, and the buyer looks the result up.
            Err(e @ crate::relay::client::ClientError::Unconfirmed { .. }) => {
                tracing::warn!(job = %self.id(), "result sent but unconfirmed: {e}");
            }
            Err(e) => {
                settle::forget(s, &hash);
                return self
                    .fail(
                        FailureCode::ExecError,
                        &format!("result not published: {e}"),
                    )
                    .await;
            }
        }
        s.served.fetch_add(1, Ordering::SeqCst);
        if let Some(preimage) = preimage {
            settle::receipt(s, &self.id(), &preimage).await;
            s.payments.notify_waiters();
        }
    }

    pub(super) fn payment_hash(&self) -> String {
        self.s
            .store
            .jobs()
            .get(&self.id(), Role::Provider)
            .ok()
            .flatten()
            .and_then(|r| r.payment_hash)
            .unwrap_or_default()
    }
}

async fn feedback_error(s: &Shared, event: &Event, code: FailureCode, why: &str) {
    let fb = NewFeedback {
        status: JobStatus::Error,
        info: format!("{code}: {why}"),
        failure: Some(code),
        amount: None,
    };
    match fb.to_event(&s.keys, event.id, event.pubkey) {
        Ok(ev) => {
            if let Err(e) = s.relay.publish(&ev).await {
                tracing::warn!("error feedback not published: {e}");
            }
            s.reply.send(
                crate::protocol::tags::values(event, "relays").unwrap_or(&[]),
                &ev,
            );
        }
        Err(e) => tracing::error!("cannot build feedback: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::wait_before_start_ms;

    #[test]
    fn a_job_waits_whole_rounds_of_the_slots() {
        assert_eq!(wait_before_start_ms(0, 1, 1_500), 0, "a free slot: no wait");
        assert_eq!(wait_before_start_ms(3, 4, 100), 0);
        assert_eq!(
            wait_before_start_ms(1, 1, 1_500),
            1_500,
            "behind the running one"
        );
        assert_eq!(wait_before_start_ms(2, 1, 1_500), 3_000);
        assert_eq!(wait_before_start_ms(4, 4, 100), 100);
        assert_eq!(wait_before_start_ms(11, 4, 100), 200);
        assert_eq!(wait_before_start_ms(12, 4, 100), 300);
        assert_eq!(
            wait_before_start_ms(500, 4, 0),
            0,
            "no run time measured yet"
        );
    }
}
