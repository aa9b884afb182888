//! One job on the provider side: admit, fetch its inputs, claim a slot, (get paid,) run,
//! invoice, publish.
//!
//! Url fetches ([`super::inputs`]) happen before the slot, so a slow URL holds none.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bitcoin::hashes::{sha256, Hash};
use nostr_sdk::{Event, JsonUtil, Timestamp};

use super::{settle, PaymentMode, Shared};
use crate::protocol::failure::FailureCode;
use crate::protocol::nip47::MakeInvoiceParams;
use crate::protocol::nip90::{Amount, JobRequest, JobResult, JobStatus, NewFeedback};
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
    job.run(price).await;
    if let Ok(mut b) = s.buyers.lock() {
        b.release(&request.buyer);
    }
}

pub(super) struct Job<'a> {
    pub(super) s: &'a Arc<Shared>,
    pub(super) event: &'a Event,
    pub(super) request: &'a JobRequest,
}

impl Job<'_> {
    pub(super) fn id(&self) -> String {
        self.request.id.to_hex()
    }

    fn update(&self, sets: &[Set]) {
        if let Err(e) = self.s.store.jobs().update(&self.id(), Role::Provider, sets) {
            tracing::error!(job = %self.id(), "cannot update job: {e}");
        }
    }

    async fn fail(&self, code: FailureCode, why: &str) {
        feedback_error(self.s, self.event, code.clone(), why).await;
        self.update(&[
            Set::Error(code, why.to_string()),
            Set::State(JobState::Failed),
        ]);
        self.s.failed.fetch_add(1, Ordering::SeqCst);
    }

    async fn feedback(&self, status: JobStatus, info: &str, amount: Option<Amount>) {
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
            }
            Err(e) => tracing::error!("cannot build feedback: {e}"),
        }
    }

    async fn invoice(&self, price: u64) -> Result<Amount, String> {
        let tx = self
            .s
            .wallet
            .make_invoice(MakeInvoiceParams {
                amount: price,
                // The description names the job, so payment ↔ job ↔ provider is deterministic.
                description: Some(format!("pylon job {}", self.id())),
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

    async fn run(&self, price: u64) {
        let s = self.s;
        let request = match self.inputs().await {
            Ok(r) => r,
            Err(e) => return self.fail(e.code, &e.message).await,
        };
        s.queued.fetch_add(1, Ordering::SeqCst);
        let permit = s.slots.acquire().await;
        s.queued.fetch_sub(1, Ordering::SeqCst);
        let Ok(_permit) = permit else { return };
        if s.draining.load(Ordering::SeqCst) {
            // Claimed nothing yet: release it so the buyer can resubmit elsewhere.
            return self
                .fail(
                    FailureCode::ShuttingDown,
                    "this node is shutting down; send the job elsewhere",
                )
                .await;
        }
        s.running.fetch_add(1, Ordering::SeqCst);
        self.execute(price, &request).await;
        s.running.fetch_sub(1, Ordering::SeqCst);
    }

    async fn execute(&self, price: u64, request: &JobRequest) {
        let s = self.s;
        self.feedback(JobStatus::Processing, "claimed", None).await;
        self.update(&[
            Set::State(JobState::Processing),
            Set::Time(Stamp::PickedUp, now_ms()),
        ]);

        let mut prepaid: Option<(Amount, String)> = None;
        if s.options.payment == PaymentMode::Before {
            let amount = match self.invoice(price).await {
                Ok(a) => a,
                Err(e) => return self.fail(FailureCode::PaymentFailed, &e).await,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let hash = self.payment_hash();
            settle::expect(s, &hash, &self.id(), Some(tx));
            self.update(&[Set::State(JobState::PaymentRequired)]);
            self.feedback(
                JobStatus::PaymentRequired,
                "pay this invoice to start the job",
                Some(amount.clone()),
            )
            .await;
            let wait = std::time::Duration::from_secs(s.options.invoice_expiry_secs);
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(preimage)) => prepaid = Some((amount, preimage)),
                _ => {
                    settle::forget(s, &hash);
                    return self
                        .fail(
                            FailureCode::PaymentFailed,
                            "the invoice was not paid in time",
                        )
                        .await;
                }
            }
        }

        self.update(&[Set::Time(Stamp::Started, now_ms())]);
        let Some(executor) = s.executors.get(self.request.kind).cloned() else {
            return self
                .fail(FailureCode::UnsupportedKind, "kind not served")
                .await;
        };
        let run = async {
            let out = tokio::time::timeout(s.options.job_timeout, executor.execute(request)).await;
            self.update(&[Set::Time(Stamp::Finished, now_ms())]);
            out
        };
        // The invoice is made while the job runs: it costs a wallet round trip.
        let invoice = async {
            match &prepaid {
                Some((amount, _)) => Ok(amount.clone()),
                None => self.invoice(price).await,
            }
        };
        let (output, amount) = tokio::join!(run, invoice);
        let output = match output {
            Err(_) => {
                return self
                    .fail(
                        FailureCode::Timeout,
                        &format!("the job ran longer than {:?}", s.options.job_timeout),
                    )
                    .await
            }
            Ok(Err(e)) => return self.fail(e.code, &e.message).await,
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
            Err(e) => return self.fail(FailureCode::ExecError, &e.to_string()).await,
        };
        let hash = self.payment_hash();
        // Recorded before publishing: a fast buyer pays the moment the result lands, and the
        // settlement watcher needs the result's id for the receipt (and must not be overtaken).
        let digest = sha256::Hash::hash(output.content.as_bytes()).to_string();
        self.update(&[
            Set::Result(result.id.to_hex(), digest, output.content.len() as u64),
            Set::Time(Stamp::Published, now_ms()),
            Set::State(if prepaid.is_some() {
                JobState::Paid
            } else {
                JobState::Result
            }),
        ]);
        if prepaid.is_none() {
            settle::expect(s, &hash, &self.id(), None);
        }
        if let Err(e) = s.relay.publish(&result).await {
            settle::forget(s, &hash);
            return self
                .fail(
                    FailureCode::ExecError,
                    &format!("result not published: {e}"),
                )
                .await;
        }
        s.served.fetch_add(1, Ordering::SeqCst);
        if let Some((_, preimage)) = prepaid {
            settle::receipt(s, &self.id(), &preimage).await;
        }
    }

    fn payment_hash(&self) -> String {
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
        }
        Err(e) => tracing::error!("cannot build feedback: {e}"),
    }
}
