//! When a job is paid: after its result (the default), or first.
//!
//! A node in `payment = before` mode asks every buyer to pay first. Otherwise a buyer who never
//! paid this node gets work on credit only up to [`super::NodeOptions::max_unpaid_jobs_unproven`]
//! jobs at once (running, or with an invoice outstanding); further jobs are pay-first. Fresh keys
//! are free, so without this one unfunded key can set any number of providers to work for
//! nothing. A pay-first job of an unproven buyer who pays for another job while it waits is
//! waived through: it runs, and its invoice (the same one) is paid after, like any other.

use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::PublicKey;

use super::job::{Job, PayFirst};
use super::policy::Terms;
use super::{settle, PaymentMode, Shared};
use crate::protocol::failure::FailureCode;
use crate::protocol::nip90::{Amount, JobRequest, JobStatus};
use crate::store::{now_ms, JobState, Set, Stamp};

/// How a job that reaches its slot stands with payment.
pub(super) enum Payment {
    /// Not invoiced yet: the invoice comes with the result.
    Later,
    /// Paid first.
    Prepaid {
        /// What was paid.
        amount: Amount,
        /// Proof of it: the preimage and the hub's settlement attestation.
        preimage: super::settle::Settled,
    },
    /// Asked to pay first, then waived through unpaid: the result carries the same invoice.
    Invoiced {
        /// The invoice.
        amount: Amount,
        /// Its payment hash.
        hash: String,
        /// Wakes with the preimage if the invoice is paid before it is handed over.
        paid: tokio::sync::oneshot::Receiver<super::settle::Settled>,
    },
}

/// A credit slot held for one job of an unproven buyer; released when dropped.
pub(super) struct CreditHold {
    s: Arc<Shared>,
    buyer: PublicKey,
    released: bool,
}

impl CreditHold {
    /// Records the job's invoice as outstanding (`record`) and releases the slot under one lock,
    /// so a job decided meanwhile never sees this job counted both running and invoiced.
    pub(super) fn hand_over_to_invoice(mut self, record: impl FnOnce()) {
        match self.s.credit.lock() {
            Ok(mut c) => {
                record();
                c.release(&self.buyer);
                self.released = true;
            }
            Err(_) => record(),
        }
    }
}

impl Drop for CreditHold {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(mut c) = self.s.credit.lock() {
            c.release(&self.buyer);
        }
    }
}

/// The payment terms of an admitted job, and the credit slot it holds (if any) until it ends.
pub(super) fn decide(s: &Arc<Shared>, request: &JobRequest) -> (PayFirst, Option<CreditHold>) {
    if s.options.payment == PaymentMode::Before {
        return (PayFirst::Always, None);
    }
    let buyer = request.buyer.to_hex();
    let terms = match s.credit.lock() {
        Ok(mut c) => c.terms(
            request.buyer,
            || s.store.jobs().buyer_has_paid(&buyer).unwrap_or(false),
            // A store that cannot tell means no credit.
            || {
                s.store
                    .jobs()
                    .outstanding_invoices(&buyer)
                    .unwrap_or(u64::MAX)
            },
        ),
        Err(_) => Terms::PayFirst,
    };
    match terms {
        Terms::Trusted => (PayFirst::No, None),
        Terms::Credit => (
            PayFirst::No,
            Some(CreditHold {
                s: s.clone(),
                buyer: request.buyer,
                released: false,
            }),
        ),
        Terms::PayFirst => (PayFirst::Unproven, None),
    }
}

fn buyer_proven(s: &Shared, buyer: PublicKey) -> bool {
    let hex = buyer.to_hex();
    s.credit
        .lock()
        .map(|mut c| {
            c.is_proven(buyer, || {
                s.store.jobs().buyer_has_paid(&hex).unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

enum Waited {
    Paid(super::settle::Settled),
    Expired,
    Proven,
}

impl Job<'_> {
    /// Claims the job, publishes `payment-required` with an invoice and waits for it to be paid
    /// (outside the job slots: an unpaid invoice holds none). `waivable`: stop waiting, unpaid,
    /// once the buyer has paid for something else. `None` when the job was failed.
    pub(super) async fn pay_first(&self, price: u64, waivable: bool) -> Option<Payment> {
        let s = self.s;
        self.feedback(JobStatus::Processing, "claimed", None).await;
        self.update(&[
            Set::State(JobState::Processing),
            Set::Time(Stamp::PickedUp, now_ms()),
        ]);
        let amount = match self.invoice(price).await {
            Ok(a) => a,
            Err(e) => {
                self.fail(FailureCode::PaymentFailed, &e).await;
                return None;
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hash = self.payment_hash();
        settle::expect(s, &hash, &self.id(), Some(tx));
        self.update(&[Set::State(JobState::PaymentRequired)]);
        let why = if waivable {
            format!(
                "a key that has not paid this provider yet may have {} unpaid jobs here at once: \
                 pay this invoice to start the job",
                s.options.max_unpaid_jobs_unproven
            )
        } else {
            "pay this invoice to start the job".to_string()
        };
        self.feedback(JobStatus::PaymentRequired, &why, Some(amount.clone()))
            .await;
        let expiry = Duration::from_secs(s.options.invoice_expiry_secs);
        self.await_payment(amount, hash, rx, waivable, expiry).await
    }

    /// Waits up to `expiry` for the invoice of a pay-first job (`rx` wakes when it settles):
    /// paid, waived (a `waivable` job whose buyer paid here meanwhile), or failed as unpaid.
    /// Also how a job resumes after a restart (see `job::resume`).
    pub(super) async fn await_payment(
        &self,
        amount: Amount,
        hash: String,
        mut rx: tokio::sync::oneshot::Receiver<super::settle::Settled>,
        waivable: bool,
        expiry: Duration,
    ) -> Option<Payment> {
        let s = self.s;
        let deadline = tokio::time::sleep(expiry);
        tokio::pin!(deadline);
        let waited = loop {
            // Registered before the check, so a payment recorded in between still wakes us.
            let payment = s.payments.notified();
            tokio::pin!(payment);
            payment.as_mut().enable();
            if waivable && buyer_proven(s, self.request.buyer) {
                break Waited::Proven;
            }
            tokio::select! {
                paid = &mut rx => break match paid {
                    Ok(preimage) => Waited::Paid(preimage),
                    // The settlement watcher dropped the invoice: it expired.
                    Err(_) => Waited::Expired,
                },
                _ = &mut deadline => break Waited::Expired,
                _ = &mut payment => {}
            }
        };
        match waited {
            Waited::Paid(preimage) => Some(Payment::Prepaid { amount, preimage }),
            Waited::Proven => {
                tracing::debug!(job = %self.id(), "the buyer has paid here meanwhile: running unpaid");
                Some(Payment::Invoiced {
                    amount,
                    hash,
                    paid: rx,
                })
            }
            Waited::Expired => {
                settle::forget(s, &hash);
                self.fail(
                    FailureCode::PaymentFailed,
                    "the invoice was not paid in time",
                )
                .await;
                None
            }
        }
    }
}
