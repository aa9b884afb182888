//! The buyer: submit jobs, follow them, verify results, pay within limits, collect receipts.
//!
//! One subscription serves every job of a buyer (feedback, results and receipts all `p`-tag the
//! buyer), routed by their `e` tag: a coordinator with thousands of jobs in flight holds one
//! subscription, not thousands.

pub mod verify;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, JsonUtil, Keys, RelayPoolNotification, Timestamp};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip90::{Feedback, JobRequest, JobResult, JobStatus, NewJob};
use crate::protocol::receipt::Receipt;
use crate::relay::MarketClient;
use crate::store::{now_ms, JobRecord, JobState, Role, Set, Stamp, Store};
use crate::wallet::Wallet;

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
    routes: Routes,
    router: JoinHandle<()>,
}

impl Drop for Buyer {
    fn drop(&mut self) {
        self.router.abort();
    }
}

impl Buyer {
    /// Subscribes to everything addressed to `keys` from now on and starts routing it.
    pub async fn start(
        keys: Keys,
        relay: Arc<MarketClient>,
        wallet: Option<Arc<dyn Wallet>>,
        store: Arc<Store>,
    ) -> Result<Self, BuyerError> {
        let routes: Routes = Arc::default();
        let notes = relay.notifications();
        let router = tokio::spawn(route(notes, routes.clone()));
        // Everything addressed to this buyer; the router keeps feedback, results and receipts.
        relay
            .sdk()
            .subscribe(
                Filter::new()
                    .pubkey(keys.public_key())
                    .since(Timestamp::now() - 5),
                None,
            )
            .await
            .map_err(crate::relay::client::ClientError::from)?;
        Ok(Self {
            keys,
            relay,
            wallet,
            store,
            routes,
            router,
        })
    }

    /// The buyer's public key.
    pub fn public_key(&self) -> nostr_sdk::PublicKey {
        self.keys.public_key()
    }

    /// Signs, records and publishes a job; returns the request event.
    pub async fn submit(&self, job: &NewJob) -> Result<Event, BuyerError> {
        let event = job.to_event(&self.keys)?;
        self.record(&event)?;
        self.relay.publish(&event).await?;
        Ok(event)
    }

    /// Submits a job and follows it to its end.
    pub async fn run(&self, job: &NewJob, options: WaitOptions) -> Result<Outcome, BuyerError> {
        let event = job.to_event(&self.keys)?;
        self.record(&event)?;
        // Route before publishing: a fast provider answers within milliseconds. The guard
        // unroutes the job however this future ends (a coordinator drops losing duplicates).
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_routes().insert(event.id, tx);
        let _route = RouteGuard {
            routes: self.routes.clone(),
            id: event.id,
        };
        match self.relay.publish(&event).await {
            Ok(_) => {}
            // A relay under load can take longer than the publish timeout to store the request;
            // following the job costs nothing, and a quiet job gets its request sent again.
            Err(e @ crate::relay::client::ClientError::Unconfirmed { .. }) => {
                tracing::debug!(job = %event.id, "{e}; following the job anyway");
            }
            Err(e) => return Err(e.into()),
        }
        self.follow(&event, rx, options).await
    }

    /// Pays the amount a result of job `job_id` asked for, after checking the invoice against the
    /// stored request (its bid) and `max_msats`.
    pub async fn pay_amount(
        &self,
        job_id: &EventId,
        amount: &crate::protocol::nip90::Amount,
        max_msats: Option<u64>,
    ) -> Result<Payment, BuyerError> {
        let json = self
            .store
            .jobs()
            .request_json(&job_id.to_hex(), Role::Buyer)?
            .ok_or_else(|| BuyerError::Other(format!("no job {job_id} from this buyer")))?;
        let event = Event::from_json(&json).map_err(|e| BuyerError::Other(e.to_string()))?;
        let request = JobRequest::from_event(&event, None)?;
        self.pay(&request, amount, max_msats).await
    }

    fn record(&self, event: &Event) -> Result<(), BuyerError> {
        let request = JobRequest::from_event(event, None)?;
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
    ) -> Result<Outcome, BuyerError> {
        let request = JobRequest::from_event(request_event, None)?;
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
        let mut claimed = false;
        let mut result: Option<JobResult> = None;
        let mut errors: Vec<(FailureCode, String)> = Vec::new();
        let mut backlog: VecDeque<Event> = VecDeque::new();
        let mut seen: HashSet<EventId> = HashSet::new();
        let stored = Filter::new().event(id).kinds([
            kinds::JOB_FEEDBACK,
            kinds::result_kind(request.kind),
            kinds::RECEIPT,
        ]);
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
                            if !claimed && result.is_none() {
                                // Perhaps the request itself never landed (a relay too busy to
                                // confirm it): send it again; relays and providers ignore copies.
                                let _ = self.relay.publish_nowait(request_event).await;
                            }
                            // Quiet for a while: relays drop live events under load, but results,
                            // feedback and receipts are stored, so ask for them.
                            if let Ok(found) = self
                                .relay
                                .fetch(stored.clone(), Duration::from_secs(2))
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
                    JobStatus::Processing if !claimed => {
                        claimed = true;
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
                        out.status = JobState::PaymentRequired;
                        match self.pay(&request, &amount, options.max_msats).await {
                            Ok(p) => {
                                out.provider = Some(fb.provider.to_hex());
                                out.payment = Some(p);
                            }
                            Err(e) => {
                                return Ok(self.failed(
                                    out,
                                    FailureCode::PaymentFailed,
                                    e.to_string(),
                                ))
                            }
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
                        if let Ok(decoded) = verify::invoice(&request, amount, options.max_msats) {
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
                            match self.pay(&request, amount, options.max_msats).await {
                                Ok(p) => out.payment = Some(p),
                                Err(e) => {
                                    return Ok(self.failed(
                                        out,
                                        FailureCode::PaymentFailed,
                                        e.to_string(),
                                    ))
                                }
                            }
                        }
                    }
                }
                result = Some(parsed);
                if out.payment.is_none() {
                    if !options.auto_pay {
                        return Ok(out);
                    }
                    // Free results (no amount) are done.
                    if result.as_ref().is_some_and(|r| r.amount.is_none()) {
                        out.status = JobState::Done;
                        self.update(&id, &[Set::State(JobState::Done)]);
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
        } else if claimed {
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

    /// Pays an amount for `request` after checking the invoice.
    pub async fn pay(
        &self,
        request: &JobRequest,
        amount: &crate::protocol::nip90::Amount,
        max_msats: Option<u64>,
    ) -> Result<Payment, BuyerError> {
        let wallet = self
            .wallet
            .as_ref()
            .ok_or_else(|| BuyerError::Other("no wallet to pay with".into()))?;
        let decoded = verify::invoice(request, amount, max_msats)?;
        let bolt11 = amount.bolt11.clone().unwrap_or_default();
        let paid = wallet.pay_invoice(bolt11.clone(), None).await?;
        if !crate::bolt11::preimage_matches(&paid.preimage, &decoded.payment_hash) {
            return Err(BuyerError::Other(
                "the wallet returned a preimage that does not match".into(),
            ));
        }
        self.update(
            &request.id,
            &[
                Set::Invoice(
                    amount.msats,
                    bolt11.clone(),
                    decoded.payment_hash.clone(),
                    decoded.expires_at,
                ),
                Set::Preimage(paid.preimage.clone()),
                Set::Time(Stamp::Paid, now_ms()),
                Set::State(JobState::Paid),
            ],
        );
        Ok(Payment {
            amount_msat: amount.msats,
            bolt11,
            payment_hash: decoded.payment_hash,
            preimage: paid.preimage,
        })
    }

    /// Pays the stored result of a job this buyer submitted (`pylon pay --job-id`).
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
        let request_event =
            Event::from_json(&request_json).map_err(|e| BuyerError::Other(e.to_string()))?;
        let request = JobRequest::from_event(&request_event, None)?;
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
            let payment = self.pay(&request, &amount, max_msats).await?;
            return Ok(payment);
        }
        Err(BuyerError::Other(last_problem))
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
