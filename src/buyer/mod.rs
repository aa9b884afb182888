//! The buyer: submit jobs, follow them, verify results, pay within limits, collect receipts.
//!
//! One subscription serves every job of a buyer (feedback, results and receipts all `p`-tag the
//! buyer), routed by their `e` tag: a coordinator with thousands of jobs in flight holds one
//! subscription, not thousands.

pub mod spend;
pub mod verify;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, JsonUtil, Keys, RelayPoolNotification, Timestamp};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip90::{Feedback, JobRequest, JobResult, JobStatus, NewJob};
use crate::protocol::receipt::Receipt;
use crate::relay::MarketClient;
use crate::store::{
    now_ms, Begin, JobRecord, JobState, PaymentRecord, PaymentState, Role, Set, Stamp, Store,
};
use crate::wallet::{Wallet, WalletError};

pub use spend::{SpendLimits, SpendRefused, Spending};

/// Buyer-side failures (a job's own failure is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum BuyerError {
    /// Building the request failed.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::nip90::ProtocolError),
    /// Relay trouble.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Paying failed.
    #[error(transparent)]
    Wallet(#[from] crate::wallet::WalletError),
    /// Refused to pay or trust something.
    #[error(transparent)]
    Rejected(#[from] verify::Rejected),
    /// A spending cap said no.
    #[error(transparent)]
    Spending(#[from] SpendRefused),
    /// The wallet holds less than the payment.
    #[error("balance {} sats < {} sats asked — fund it with `pylon wallet faucet 1000`", .balance_msat / 1000, .asked_msat.div_ceil(1000))]
    InsufficientFunds {
        /// What the wallet holds.
        balance_msat: u64,
        /// What the payment needs.
        asked_msat: u64,
    },
    /// A payment was sent and nobody can yet say whether it went through. It is never sent
    /// again blindly; a look-up settles it.
    #[error("the payment for job {job_id} was sent but its outcome is unknown; it will not be sent again: check `pylon wallet history` (payment hash {payment_hash})")]
    PaymentUnknown {
        /// The job.
        job_id: String,
        /// The payment in doubt.
        payment_hash: String,
    },
    /// Anything else the user must fix.
    #[error("{0}")]
    Other(String),
}

/// How to follow a job.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Pay the provider's invoice when it checks out.
    pub auto_pay: bool,
    /// Never pay more than this (msats), on top of the bid.
    pub max_msats: Option<u64>,
}

/// A payment made for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    /// Msats.
    pub amount_msat: u64,
    /// The invoice.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: String,
    /// Proof of payment.
    pub preimage: String,
    /// True when this call paid nothing because the job had been paid before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_paid: bool,
}

/// How a followed job ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The job.
    pub job_id: String,
    /// `done`, `result` (not paid), `paid` (no receipt seen), or `failed`.
    pub status: JobState,
    /// The provider that answered.
    pub provider: Option<String>,
    /// The result event id.
    pub result_id: Option<String>,
    /// The output.
    pub result: Option<String>,
    /// What the result asked for (present even when not paid).
    pub amount: Option<crate::protocol::nip90::Amount>,
    /// What was paid.
    pub payment: Option<Payment>,
    /// The receipt event id.
    pub receipt_id: Option<String>,
    /// Why it failed.
    pub failure: Option<FailureCode>,
    /// Detail.
    pub message: Option<String>,
}

/// Silence after which a follower fetches its job's stored events instead of waiting on.
const CATCH_UP: Duration = Duration::from_secs(3);

type Routes = Arc<Mutex<HashMap<EventId, mpsc::UnboundedSender<Event>>>>;

/// Removes a job's route when its follower ends, including when the follower is dropped.
struct RouteGuard {
    routes: Routes,
    id: EventId,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(&self.id);
        }
    }
}

/// A buyer bound to one identity, relay connection, wallet and store.
pub struct Buyer {
    keys: Keys,
    relay: Arc<MarketClient>,
    wallet: Option<Arc<dyn Wallet>>,
    store: Arc<Store>,
    spending: Spending,
    routes: Routes,
    router: JoinHandle<()>,
    /// Jobs followed at once by [`Buyer::run`]; more wait their turn (see [`Buyer::queued`]).
    in_flight: Semaphore,
    max_in_flight: usize,
    /// Jobs waiting for an in-flight slot.
    waiting: AtomicUsize,
    /// Look-ups of stored job events at once: each is a subscription on the relay, which
    /// limits them per connection, and a burst of quiet jobs must not open hundreds.
    lookups: Semaphore,
}

/// Jobs one buyer follows at once unless told otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
/// Look-ups one buyer runs at once.
const MAX_LOOKUPS: usize = 8;

impl Drop for Buyer {
    fn drop(&mut self) {
        self.router.abort();
    }
}

impl Buyer {
    /// Subscribes to everything addressed to `keys` from now on and starts routing it. Pays
    /// within `limits` (see [`spend`]).
    pub async fn start(
        keys: Keys,
        relay: Arc<MarketClient>,
        wallet: Option<Arc<dyn Wallet>>,
        store: Arc<Store>,
        limits: SpendLimits,
    ) -> Result<Self, BuyerError> {
        let routes: Routes = Arc::default();
        let notes = relay.notifications();
        let router = tokio::spawn(route(notes, routes.clone()));
        // Everything addressed to this buyer; the router keeps feedback, results and receipts.
        relay
            .subscribe(
                Filter::new()
                    .pubkey(keys.public_key())
                    .since(Timestamp::now() - 5),
            )
            .await?;
        Ok(Self {
            keys,
            relay,
            wallet,
            store,
            spending: Spending::new(limits),
            routes,
            router,
            in_flight: Semaphore::new(DEFAULT_MAX_IN_FLIGHT),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            waiting: AtomicUsize::new(0),
            lookups: Semaphore::new(MAX_LOOKUPS),
        })
    }

    /// Follows at most `n` jobs at once (at least one); further [`run`](Self::run)s wait.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.in_flight = Semaphore::new(n);
        self.max_in_flight = n;
        self
    }

    /// Jobs waiting for an in-flight slot now (not yet sent).
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Jobs sent and being followed now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// The caps and run budget every payment of this buyer passes.
    pub fn spending(&self) -> &Spending {
        &self.spending
    }

    /// The wallet's spendable balance.
    pub async fn balance_msat(&self) -> Result<u64, BuyerError> {
        Ok(self.wallet()?.balance_msat().await?)
    }

    /// The buyer's public key.
    pub fn public_key(&self) -> nostr_sdk::PublicKey {
        self.keys.public_key()
    }

    /// Signs, records and publishes a job; returns the request event.
    pub async fn submit(&self, job: &NewJob) -> Result<Event, BuyerError> {
        let event = self.sign(job).await?;
        self.record(&event)?;
        self.relay.publish(&event).await?;
        Ok(event)
    }

    /// Signs `job`, naming this buyer's relays in a `relays` tag when it names none (NIP-90:
    /// where the provider should answer; a provider on other relays then still reaches us).
    async fn sign(&self, job: &NewJob) -> Result<Event, BuyerError> {
        if !job.relays.is_empty() {
            return Ok(job.to_event(&self.keys)?);
        }
        let relays: Vec<String> = self
            .relay
            .relay_urls()
            .await
            .iter()
            .take(crate::protocol::nip90::MAX_RELAYS)
            .map(|u| u.to_string())
            .collect();
        let job = NewJob {
            relays,
            ..job.clone()
        };
        Ok(job.to_event(&self.keys)?)
    }

    /// Submits a job and follows it to its end. At most the in-flight limit of jobs are
    /// followed at once ([`with_max_in_flight`](Self::with_max_in_flight)); a job over it waits
    /// unsent, and its timeout starts when it is sent.
    pub async fn run(&self, job: &NewJob, options: WaitOptions) -> Result<Outcome, BuyerError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self.in_flight.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.map_err(|_| BuyerError::Other("the buyer is shutting down".into()))?;
        let event = self.sign(job).await?;
        self.record(&event)?;
        // Route before publishing: a fast provider answers within milliseconds. The guard
        // unroutes the job however this future ends (a coordinator drops losing duplicates).
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_routes().insert(event.id, tx);
        let _route = RouteGuard {
            routes: self.routes.clone(),
            id: event.id,
        };
        let landed = match self.relay.publish(&event).await {
            Ok(_) => true,
            // A relay under load can take longer than the publish timeout to store the request;
            // following the job costs nothing, and a quiet job gets its request sent again.
            Err(e @ crate::relay::client::ClientError::Unconfirmed { .. }) => {
                tracing::debug!(job = %event.id, "{e}; following the job anyway");
                false
            }
            Err(e) => return Err(e.into()),
        };
        self.follow(&event, rx, options, landed).await
    }

    /// Pays the amount `provider`'s result of job `job_id` asked for, after checking the invoice
    /// against the stored request (its bid) and `max_msats`.
    pub async fn pay_amount(
        &self,
        job_id: &EventId,
        provider: &nostr_sdk::PublicKey,
        amount: &crate::protocol::nip90::Amount,
        max_msats: Option<u64>,
    ) -> Result<Payment, BuyerError> {
        let json = self
            .store
            .jobs()
            .request_json(&job_id.to_hex(), Role::Buyer)?
            .ok_or_else(|| BuyerError::Other(format!("no job {job_id} from this buyer")))?;
        let event = Event::from_json(&json).map_err(|e| BuyerError::Other(e.to_string()))?;
        let request = JobRequest::from_event(&event, Some(&self.keys))?;
        self.pay(&request, provider, amount, max_msats).await
    }

    fn record(&self, event: &Event) -> Result<(), BuyerError> {
        let request = JobRequest::from_event(event, Some(&self.keys))?;
        let rec = JobRecord {
            job_id: event.id.to_hex(),
            kind: request.kind,
            buyer: event.pubkey.to_hex(),
            provider: request.providers.first().map(|p| p.to_hex()),
            bid_msat: request.bid_msats,
            bytes_in: Some(
                event.content.len() as u64
                    + request
                        .inputs
                        .iter()
                        .map(|i| i.data.len() as u64)
                        .sum::<u64>(),
            ),
            submitted_at: Some(now_ms()),
            ..Default::default()
        };
        self.store
            .jobs()
            .insert(&rec, Role::Buyer, &event.as_json())?;
        Ok(())
    }

    fn update(&self, job: &EventId, sets: &[Set]) {
        if let Err(e) = self.store.jobs().update(&job.to_hex(), Role::Buyer, sets) {
            tracing::error!("cannot update job {job}: {e}");
        }
    }

    fn lock_routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<EventId, mpsc::UnboundedSender<Event>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn follow(
        &self,
        request_event: &Event,
        mut events: mpsc::UnboundedReceiver<Event>,
        options: WaitOptions,
        landed: bool,
    ) -> Result<Outcome, BuyerError> {
        let request = JobRequest::from_event(request_event, Some(&self.keys))?;
        let id = request.id;
        let deadline = tokio::time::Instant::now() + options.timeout;
        let mut out = Outcome {
            job_id: id.to_hex(),
            status: JobState::Submitted,
            provider: None,
            result_id: None,
            result: None,
            amount: None,
            payment: None,
            receipt_id: None,
            failure: None,
            message: None,
        };
        // Keys that claimed the job: on an open job only a claimer's result is paid (when anyone
        // claimed), so a stranger cannot jump in with a result of its own.
        let mut claimers: HashSet<nostr_sdk::PublicKey> = HashSet::new();
        let mut result: Option<JobResult> = None;
        // Results held back because their signer has not claimed the job (yet).
        let mut held: Vec<(Event, JobResult)> = Vec::new();
        let mut errors: Vec<(FailureCode, String)> = Vec::new();
        let mut backlog: VecDeque<Event> = VecDeque::new();
        let mut seen: HashSet<EventId> = HashSet::new();
        let stored = Filter::new().event(id).kinds([
            kinds::JOB_FEEDBACK,
            kinds::result_kind(request.kind),
            kinds::RECEIPT,
        ]);
        let mut resend_after = CATCH_UP;
        let mut resend_at = tokio::time::Instant::now();
        loop {
            let event = match backlog.pop_front() {
                Some(ev) => ev,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(CATCH_UP.min(left), events.recv()).await {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break,
                        Err(_) if left <= CATCH_UP => break,
                        Err(_) => {
                            if !landed
                                && claimers.is_empty()
                                && result.is_none()
                                && tokio::time::Instant::now() >= resend_at
                            {
                                // Perhaps the request itself never landed (a relay too busy to
                                // confirm it): send it again; relays and providers ignore copies.
                                // Not when a relay said it stored it (a copy would only spend
                                // the connection's event budget), and less often each time.
                                let _ = self.relay.publish_nowait(request_event).await;
                                resend_after *= 2;
                                resend_at = tokio::time::Instant::now() + resend_after;
                            }
                            // Quiet for a while: relays drop live events under load, but results,
                            // feedback and receipts are stored, so ask for them (a few jobs at
                            // a time: each look-up is a subscription on the relay).
                            let Ok(_turn) = self.lookups.acquire().await else {
                                break;
                            };
                            if let Ok(found) = self
                                .relay
                                .fetch(stored.clone(), Duration::from_secs(5))
                                .await
                            {
                                let mut found: Vec<Event> = found.into_iter().collect();
                                found.sort_by_key(|e| (e.created_at, e.kind.as_u16()));
                                backlog.extend(found);
                            }
                            continue;
                        }
                    }
                }
            };
            if !seen.insert(event.id) {
                continue;
            }
            let kind = event.kind;
            if kind == kinds::JOB_FEEDBACK {
                let Ok(fb) = Feedback::from_event(&event) else {
                    continue;
                };
                // (Signatures of relayed events are verified by the relay client on arrival.)
                if !request.providers.is_empty() && !request.providers.contains(&fb.provider) {
                    continue;
                }
                match fb.status {
                    JobStatus::Processing => {
                        let first = claimers.is_empty();
                        if !claimers.insert(fb.provider) {
                            continue;
                        }
                        if first && result.is_none() {
                            out.status = JobState::Processing;
                            out.provider = Some(fb.provider.to_hex());
                            self.update(
                                &id,
                                &[
                                    Set::State(JobState::Processing),
                                    Set::Provider(fb.provider.to_hex()),
                                    Set::Time(Stamp::PickedUp, now_ms()),
                                ],
                            );
                        }
                        // A result that came before its signer's claim can be taken now.
                        if result.is_none() {
                            if let Some(i) =
                                held.iter().position(|(_, r)| r.provider == fb.provider)
                            {
                                let (ev, _) = held.remove(i);
                                seen.remove(&ev.id);
                                backlog.push_front(ev);
                            }
                        }
                    }
                    JobStatus::Error => {
                        let code = fb.failure.unwrap_or(FailureCode::ExecError);
                        let prefix = format!("{code}: ");
                        let info = fb
                            .info
                            .strip_prefix(&prefix)
                            .unwrap_or(&fb.info)
                            .to_string();
                        errors.push((code.clone(), info.clone()));
                        // A targeted job has one provider: its error is final. An open job may
                        // still be taken by someone else.
                        if !request.providers.is_empty() {
                            return Ok(self.failed(out, code, info));
                        }
                    }
                    JobStatus::PaymentRequired if options.auto_pay && out.payment.is_none() => {
                        let Some(amount) = fb.amount else { continue };
                        if !claimers.is_empty() && !claimers.contains(&fb.provider) {
                            errors.push((
                                FailureCode::InvalidResult,
                                "a payment request from a key that never claimed the job".into(),
                            ));
                            continue;
                        }
                        out.status = JobState::PaymentRequired;
                        match self
                            .pay(&request, &fb.provider, &amount, options.max_msats)
                            .await
                        {
                            Ok(p) => {
                                out.provider = Some(fb.provider.to_hex());
                                out.payment = Some(p);
                            }
                            // A dishonest invoice from one key must not end the job: others
                            // may still answer.
                            Err(BuyerError::Rejected(e)) if request.providers.is_empty() => {
                                tracing::warn!(job = %id, "ignoring payment request from {}: {e}", fb.provider);
                                errors.push((FailureCode::InvalidResult, e.to_string()));
                            }
                            Err(e) => return Ok(self.payment_failed(out, e)),
                        }
                    }
                    _ => {}
                }
            } else if kinds::JOB_RESULTS.contains(&kind.as_u16()) && result.is_none() {
                let parsed = match JobResult::from_event(&event, Some(&self.keys)) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(job = %id, "ignoring malformed result {}: {e}", event.id);
                        continue;
                    }
                };
                if let Err(e) = verify::result(&request, &event, &parsed) {
                    tracing::warn!(job = %id, "ignoring result {}: {e}", event.id);
                    errors.push((FailureCode::InvalidResult, e.to_string()));
                    // The one provider asked answered with something that is not a result of
                    // this kind: that is its answer, and it is not paid. (A forgery or another
                    // key's answer is only ignored: anyone can publish one.)
                    if matches!(e, verify::Rejected::Content { .. })
                        && !request.providers.is_empty()
                    {
                        return Ok(self.failed(
                            out,
                            FailureCode::InvalidResult,
                            format!("the provider's result was refused: {e}"),
                        ));
                    }
                    continue;
                }
                // A result whose invoice cannot be paid (over the bid, wrong job, another
                // provider's invoice) is recorded and ignored: an honest answer may still come.
                let mut invoice = None;
                if out.payment.is_none() {
                    if let Some(amount) = &parsed.amount {
                        let explicit = request.bid_msats.is_some() || options.max_msats.is_some();
                        let checked =
                            verify::invoice(&request, amount, &parsed.provider, options.max_msats)
                                .map_err(BuyerError::from)
                                .and_then(|decoded| {
                                    if options.auto_pay {
                                        self.spending.check_job_cap(amount.msats, explicit)?;
                                    }
                                    Ok(decoded)
                                });
                        match checked {
                            Ok(decoded) => invoice = Some(decoded),
                            Err(e) => {
                                tracing::warn!(job = %id, "ignoring result {} from {}: {e}", event.id, parsed.provider);
                                let code = match e {
                                    BuyerError::Spending(_) => FailureCode::PaymentFailed,
                                    _ => FailureCode::InvalidResult,
                                };
                                errors.push((code.clone(), e.to_string()));
                                if !request.providers.is_empty() {
                                    return Ok(self.failed(
                                        out,
                                        code,
                                        format!("the provider's result was refused: {e}"),
                                    ));
                                }
                                continue;
                            }
                        }
                    }
                }
                let paid_to_other = out
                    .provider
                    .as_ref()
                    .is_some_and(|p| out.payment.is_some() && *p != parsed.provider.to_hex());
                if paid_to_other {
                    // Paid up front to another key: only its result counts.
                    continue;
                }
                if !claimers.is_empty() && !claimers.contains(&parsed.provider) {
                    tracing::debug!(job = %id, "holding result {} until its signer claims the job", event.id);
                    held.push((event.clone(), parsed));
                    continue;
                }
                out.provider = Some(parsed.provider.to_hex());
                out.result_id = Some(parsed.id.to_hex());
                out.result = Some(parsed.content.clone());
                out.amount = parsed.amount.clone();
                out.status = JobState::Result;
                let digest =
                    bitcoin::hashes::sha256::Hash::hash(parsed.content.as_bytes()).to_string();
                self.update(
                    &id,
                    &[
                        Set::Provider(parsed.provider.to_hex()),
                        Set::Result(parsed.id.to_hex(), digest, parsed.content.len() as u64),
                        Set::ResultEvent(event.as_json()),
                        Set::Time(Stamp::Published, now_ms()),
                        Set::State(JobState::Result),
                    ],
                );
                if out.payment.is_none() {
                    if let Some(amount) = &parsed.amount {
                        if let Some(decoded) = invoice {
                            self.update(
                                &id,
                                &[Set::Invoice(
                                    amount.msats,
                                    amount.bolt11.clone().unwrap_or_default(),
                                    decoded.payment_hash,
                                    decoded.expires_at,
                                )],
                            );
                        }
                        if options.auto_pay {
                            match self
                                .pay(&request, &parsed.provider, amount, options.max_msats)
                                .await
                            {
                                Ok(p) => out.payment = Some(p),
                                Err(e) => return Ok(self.payment_failed(out, e)),
                            }
                        }
                    }
                }
                result = Some(parsed);
                if out.payment.is_none() {
                    // A result that asks for nothing is done, paying or not: there is no
                    // invoice to settle and no receipt to wait for.
                    if result.as_ref().is_some_and(|r| r.amount.is_none()) {
                        out.status = JobState::Done;
                        self.update(&id, &[Set::State(JobState::Done)]);
                        return Ok(out);
                    }
                    if !options.auto_pay {
                        return Ok(out);
                    }
                } else {
                    out.status = JobState::Paid;
                }
            } else if kind == kinds::RECEIPT {
                let (Some(res), Some(paid)) = (&result, &out.payment) else {
                    continue;
                };
                let Ok(parsed) = Receipt::from_event(&event) else {
                    continue;
                };
                match verify::receipt(&event, &parsed, res, Some(&paid.bolt11)) {
                    Ok(()) => {
                        out.receipt_id = Some(event.id.to_hex());
                        out.status = JobState::Done;
                        let _ = self.store.receipts().insert(&event);
                        self.update(
                            &id,
                            &[
                                Set::Receipt(event.id.to_hex()),
                                Set::Time(Stamp::Receipt, now_ms()),
                                Set::State(JobState::Done),
                            ],
                        );
                        return Ok(out);
                    }
                    Err(e) => tracing::warn!(job = %id, "ignoring receipt {}: {e}", event.id),
                }
            }
        }
        // Out of time.
        if out.payment.is_some() && result.is_some() {
            out.message = Some("paid, but no receipt was seen in time".into());
            return Ok(out);
        }
        let (code, message) = if let Some((code, info)) = errors.pop() {
            (code, info)
        } else if !held.is_empty() {
            (
                FailureCode::InvalidResult,
                "results came only from keys that did not claim the job; none was paid".into(),
            )
        } else if !claimers.is_empty() {
            (
                FailureCode::ProviderOffline,
                "a provider claimed the job and sent no result in time".to_string(),
            )
        } else {
            (
                FailureCode::Timeout,
                "no provider answered in time".to_string(),
            )
        };
        Ok(self.failed(out, code, message))
    }

    fn failed(&self, mut out: Outcome, code: FailureCode, message: String) -> Outcome {
        if let Ok(id) = EventId::from_hex(&out.job_id) {
            self.update(
                &id,
                &[
                    Set::Error(code.clone(), message.clone()),
                    Set::State(JobState::Failed),
                ],
            );
        }
        out.status = JobState::Failed;
        out.failure = Some(code);
        out.message = Some(message);
        out
    }

    /// A job that ends because its payment did not (certainly) happen.
    fn payment_failed(&self, out: Outcome, e: BuyerError) -> Outcome {
        let code = match e {
            BuyerError::PaymentUnknown { .. } => FailureCode::PaymentUnknown,
            _ => FailureCode::PaymentFailed,
        };
        self.failed(out, code, e.to_string())
    }

    fn wallet(&self) -> Result<&Arc<dyn Wallet>, BuyerError> {
        self.wallet
            .as_ref()
            .ok_or_else(|| BuyerError::Other("no wallet to pay with".into()))
    }

    /// Pays `provider`'s invoice for `request` after checking it (see [`verify::invoice`]), within
    /// the caps of [`Self::spending`], at most once per job: the payment is journaled before the
    /// wallet is asked, a job that was (or may have been) paid is not paid again, and an
    /// unanswered payment is reported as unknown rather than failed.
    pub async fn pay(
        &self,
        request: &JobRequest,
        provider: &nostr_sdk::PublicKey,
        amount: &crate::protocol::nip90::Amount,
        max_msats: Option<u64>,
    ) -> Result<Payment, BuyerError> {
        let wallet = self.wallet()?.clone();
        let decoded = verify::invoice(request, amount, provider, max_msats)?;
        let bolt11 = amount.bolt11.clone().unwrap_or_default();
        let job_id = request.id.to_hex();
        let explicit = request.bid_msats.is_some() || max_msats.is_some();
        let record = PaymentRecord {
            payment_hash: decoded.payment_hash.clone(),
            job_id: job_id.clone(),
            amount_msat: amount.msats,
            bolt11: bolt11.clone(),
            state: PaymentState::Sending,
            preimage: None,
            started_at: now_ms(),
            finished_at: None,
        };
        let mut journaled = false;
        for _ in 0..2 {
            let since = self
                .spending
                .limits()
                .max_daily_msats
                .map(|_| now_ms().saturating_sub(24 * 3600 * 1000));
            let begun = self.store.payments().begin(&record, since, |spent| {
                self.spending.authorize(amount.msats, spent, explicit)
            })?;
            match begun? {
                Begin::Go => {
                    journaled = true;
                    break;
                }
                Begin::Exists(prior) => match self.resolve(&prior).await? {
                    Some(payment) => return Ok(payment),
                    // Known not to have happened: try once more with this invoice.
                    None => continue,
                },
            }
        }
        if !journaled {
            // Never pay what the journal has not recorded.
            return Err(BuyerError::Other(format!(
                "job {job_id} has a payment in the journal that would not settle; see `pylon wallet history`"
            )));
        }
        self.update(
            &request.id,
            &[Set::Invoice(
                amount.msats,
                bolt11.clone(),
                decoded.payment_hash.clone(),
                decoded.expires_at,
            )],
        );
        let outcome = wallet.pay_invoice(bolt11.clone(), None).await;
        let hash = decoded.payment_hash.clone();
        let verdict = match outcome {
            Ok(paid) if crate::bolt11::preimage_matches(&paid.preimage, &hash) => Ok(paid.preimage),
            Ok(_) => Err((
                PaymentState::Unknown,
                BuyerError::PaymentUnknown {
                    job_id: job_id.clone(),
                    payment_hash: hash.clone(),
                },
            )),
            Err(e) => Err(classify(e, &job_id, &hash)),
        };
        match verdict {
            Ok(preimage) => {
                let _ = self.store.payments().finish(
                    &hash,
                    PaymentState::Paid,
                    Some(&preimage),
                    now_ms(),
                );
                Ok(self.mark_paid(request.id, amount.msats, bolt11, hash, preimage, false))
            }
            Err((state, error)) => {
                let _ = self.store.payments().finish(&hash, state, None, now_ms());
                if state == PaymentState::Failed {
                    self.spending.refund(amount.msats);
                }
                Err(match error {
                    BuyerError::Wallet(WalletError::Refused(body))
                        if body.code == crate::protocol::nip47::ErrorCode::InsufficientBalance =>
                    {
                        match wallet.balance_msat().await {
                            Ok(balance_msat) => BuyerError::InsufficientFunds {
                                balance_msat,
                                asked_msat: amount.msats,
                            },
                            Err(_) => BuyerError::Wallet(WalletError::Refused(body)),
                        }
                    }
                    other => other,
                })
            }
        }
    }

    fn mark_paid(
        &self,
        job: EventId,
        amount_msat: u64,
        bolt11: String,
        payment_hash: String,
        preimage: String,
        already_paid: bool,
    ) -> Payment {
        self.update(
            &job,
            &[
                Set::Preimage(preimage.clone()),
                Set::Time(Stamp::Paid, now_ms()),
                Set::State(JobState::Paid),
            ],
        );
        Payment {
            amount_msat,
            bolt11,
            payment_hash,
            preimage,
            already_paid,
        }
    }

    /// The journaled payment of `job`, if one may have gone through.
    pub fn payment_of(&self, job: &EventId) -> Result<Option<PaymentRecord>, BuyerError> {
        Ok(self.store.payments().for_job(&job.to_hex())?)
    }

    /// Settles what a journaled payment became: paid (its preimage), known not to have happened
    /// (`None`: the job may be paid), or still unknown (an error: nothing may be sent).
    pub async fn resolve(&self, prior: &PaymentRecord) -> Result<Option<Payment>, BuyerError> {
        let job = EventId::from_hex(&prior.job_id).map_err(|e| BuyerError::Other(e.to_string()))?;
        let paid = |preimage: String| {
            self.mark_paid(
                job,
                prior.amount_msat,
                prior.bolt11.clone(),
                prior.payment_hash.clone(),
                preimage,
                true,
            )
        };
        if prior.state == PaymentState::Paid {
            return Ok(Some(paid(prior.preimage.clone().unwrap_or_default())));
        }
        let unknown = || BuyerError::PaymentUnknown {
            job_id: prior.job_id.clone(),
            payment_hash: prior.payment_hash.clone(),
        };
        let wallet = self.wallet()?;
        let settled = match wallet.lookup_invoice(prior.payment_hash.clone()).await {
            Ok(tx) => tx
                .is_settled()
                .then_some(tx.preimage)
                .flatten()
                .filter(|p| crate::bolt11::preimage_matches(p, &prior.payment_hash)),
            // The wallet knows no payment of ours with that hash.
            Err(WalletError::Refused(body))
                if body.code == crate::protocol::nip47::ErrorCode::NotFound =>
            {
                None
            }
            Err(_) => return Err(unknown()),
        };
        if let Some(preimage) = settled {
            let _ = self.store.payments().finish(
                &prior.payment_hash,
                PaymentState::Paid,
                Some(&preimage),
                now_ms(),
            );
            return Ok(Some(paid(preimage)));
        }
        let age = Duration::from_millis(now_ms().saturating_sub(prior.started_at));
        if age < wallet.max_request_age() + Duration::from_secs(2) {
            // The wallet may still be holding the request: not yet safe to call it unpaid.
            let _ = self.store.payments().finish(
                &prior.payment_hash,
                PaymentState::Unknown,
                None,
                now_ms(),
            );
            return Err(unknown());
        }
        let _ =
            self.store
                .payments()
                .finish(&prior.payment_hash, PaymentState::Failed, None, now_ms());
        Ok(None)
    }

    /// Pays the stored result of a job this buyer submitted (`pylon pay --job-id`). A job paid
    /// before is reported as such (with its preimage), never paid again.
    pub async fn pay_job(
        &self,
        job_id: &EventId,
        max_msats: Option<u64>,
    ) -> Result<Payment, BuyerError> {
        let jobs = self
            .store
            .jobs()
            .request_json(&job_id.to_hex(), Role::Buyer)?;
        let request_json = jobs.ok_or_else(|| {
            BuyerError::Other(format!("no job {job_id} submitted from this home"))
        })?;
        let prior = self.store.payments().for_job(&job_id.to_hex())?;
        if let Some(prior) = prior {
            if let Some(payment) = self.resolve(&prior).await? {
                return Ok(payment);
            }
        }
        let request_event =
            Event::from_json(&request_json).map_err(|e| BuyerError::Other(e.to_string()))?;
        let request = JobRequest::from_event(&request_event, Some(&self.keys))?;
        let results = self
            .relay
            .fetch(
                Filter::new()
                    .kind(kinds::result_kind(request.kind))
                    .event(*job_id),
                Duration::from_secs(5),
            )
            .await?;
        let mut last_problem = "no result for this job on the relays yet".to_string();
        let mut results: Vec<Event> = results.into_iter().collect();
        results.sort_by_key(|e| (e.created_at, e.id));
        for event in results {
            let parsed = match JobResult::from_event(&event, Some(&self.keys)) {
                Ok(p) => p,
                Err(e) => {
                    last_problem = e.to_string();
                    continue;
                }
            };
            if let Err(e) = verify::result(&request, &event, &parsed) {
                last_problem = e.to_string();
                continue;
            }
            let Some(amount) = parsed.amount.clone() else {
                last_problem = "the result asks for no payment".into();
                continue;
            };
            if let Err(e) = verify::invoice(&request, &amount, &parsed.provider, max_msats) {
                last_problem = e.to_string();
                continue;
            }
            return self
                .pay(&request, &parsed.provider, &amount, max_msats)
                .await;
        }
        Err(BuyerError::Other(last_problem))
    }
}

/// What a wallet error says about the money: definitely not moved, or perhaps moved.
fn classify(e: WalletError, job_id: &str, hash: &str) -> (PaymentState, BuyerError) {
    let unknown = || BuyerError::PaymentUnknown {
        job_id: job_id.to_string(),
        payment_hash: hash.to_string(),
    };
    match e {
        // The wallet answered no, or never took the request (it expired unexecuted, or none
        // is configured).
        e @ (WalletError::Refused(_)
        | WalletError::NotPaid { .. }
        | WalletError::NotConfigured(_)) => (PaymentState::Failed, BuyerError::Wallet(e)),
        // Sent, perhaps executed, no word: never retried blindly. (A payment's silence is
        // `Unknown`; the other variants are treated alike, to be safe.)
        WalletError::Unknown { .. }
        | WalletError::Timeout(_)
        | WalletError::Relay(_)
        | WalletError::Protocol(_) => (PaymentState::Unknown, unknown()),
    }
}

use bitcoin::hashes::Hash as _;

async fn route(mut notes: tokio::sync::broadcast::Receiver<RelayPoolNotification>, routes: Routes) {
    loop {
        match notes.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => {
                let kind = event.kind.as_u16();
                let relevant = event.kind == kinds::JOB_FEEDBACK
                    || event.kind == kinds::RECEIPT
                    || kinds::JOB_RESULTS.contains(&kind);
                if !relevant {
                    continue;
                }
                let Some(target) = event.tags.event_ids().next().copied() else {
                    continue;
                };
                let sender = routes.lock().ok().and_then(|r| r.get(&target).cloned());
                if let Some(tx) = sender {
                    let _ = tx.send(*event);
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("buyer fell behind and missed {n} relay messages");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}
