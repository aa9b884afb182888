//! A NIP-47 client built on nostr-sdk primitives: NIP-44 when the wallet offers it, NIP-04
//! otherwise; notifications on 23197 (NIP-44) or 23196 (NIP-04).
//!
//! Requests are ephemeral events, so the client never waits for a relay's `OK` (some relays never
//! send one for ephemeral kinds). It waits for the wallet's response instead and re-sends the
//! same signed request while waiting: a relay may drop it, and the wallet answers a repeated
//! request id once. Each round waits twice as long as the one before (up to 8 s), so many
//! payments waiting on a slow wallet do not flood a relay that limits events per connection.
//!
//! A payment is paid once or not at all, and the caller knows which. Every request carries a
//! NIP-40 `expiration` that has passed, by the wallet's clock, before the client stops waiting, so
//! a wallet that was stopped or slow cannot run a payment the client already gave up on. When a
//! payment goes unanswered, the client looks its payment hash up before it reports: settled is a
//! success (with the preimage); "not paid", answered after the expiration by the wallet's clock, is
//! a definite [`WalletError::NotPaid`]; no answer to the look-up either is
//! [`WalletError::Unknown`], never a failure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Event, EventId, Filter, Keys, PublicKey, RelayPoolNotification, Timestamp};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Wallet, WalletError};
use crate::protocol::kinds;
use crate::protocol::nip47::{
    self, BalanceResult, Encryption, ErrorCode, FaucetParams, GetInfoResult,
    ListTransactionsParams, ListTransactionsResult, LookupInvoiceParams, MakeInvoiceParams,
    Notification, PayInvoiceParams, PayResult, Request, Response, ResponseError, Transaction,
    TransactionState, WalletInfo,
};
use crate::relay::{MarketClient, Reachability};

/// Timing of a connection.
#[derive(Debug, Clone, Copy)]
pub struct NwcOptions {
    /// How long to wait for the relays.
    pub connect_timeout: Duration,
    /// How long a request may take before [`WalletError::Timeout`]. The request's NIP-40
    /// expiration is set inside this wait (at least 3 s is useful: expirations are whole seconds).
    pub request_timeout: Duration,
    /// How long to wait before an unanswered request is sent again the first time; each later
    /// round waits twice as long as the one before, up to 8 s.
    pub resend_every: Duration,
    /// After a payment went unanswered: how long the client keeps asking the wallet whether it
    /// settled before it reports [`WalletError::Unknown`].
    pub outcome_timeout: Duration,
}

impl Default for NwcOptions {
    fn default() -> Self {
        Self {
            connect_timeout: crate::relay::client::ONE_SHOT_TIMEOUT,
            request_timeout: Duration::from_secs(20),
            resend_every: Duration::from_secs(2),
            outcome_timeout: Duration::from_secs(5),
        }
    }
}

/// Seconds before the end of the client's wait at which a request expires. Timestamps are whole
/// seconds and a wallet may read NIP-40 as "expired once now > expiration" (valid through the
/// whole expiration second): two seconds leave one full second, after the last moment any wallet
/// may still start the request, for it to commit and answer.
const EXPIRY_MARGIN_SECS: u64 = 2;
/// How far past the last second of validity the client keeps waiting for a late answer.
const PAST_EXPIRY: Duration = Duration::from_millis(250);
/// The longest pause between two rounds of asking again (see [`NwcWallet::wait`]).
const MAX_RESEND_PAUSE: Duration = Duration::from_secs(8);
/// Expiration of a payment look-up. A look-up changes nothing, so it may outlive its wait: a slow
/// wallet still answering it late is harmless and may resolve a payment's outcome.
const LOOKUP_EXPIRY_SECS: u64 = 30;

/// When a request expires, and when the client stops waiting for it.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// The request's NIP-40 expiration (the wallet refuses it from then on).
    expires: Timestamp,
    /// The end of the client's wait: the expiration second is over, plus [`PAST_EXPIRY`].
    at: Instant,
}

impl Deadline {
    /// A deadline that ends no later than `wait` from now (for waits of 3 s or more).
    fn within(wait: Duration) -> Self {
        let (now, instant) = (SystemTime::now(), Instant::now());
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        // At least valid until the end of the next second.
        let expires = secs + wait.as_secs().max(EXPIRY_MARGIN_SECS + 1) - EXPIRY_MARGIN_SECS;
        let end = UNIX_EPOCH + Duration::from_secs(expires + 1) + PAST_EXPIRY;
        Self {
            expires: Timestamp::from(expires),
            at: instant + end.duration_since(now).unwrap_or_default(),
        }
    }

    /// Whether an answer the wallet signed at `wallet_time` proves, by the wallet's clock, that
    /// the request can no longer run: a full second after the last second a wallet may accept it.
    fn passed_at(&self, wallet_time: Timestamp) -> bool {
        wallet_time.as_secs() > self.expires.as_secs() + 1
    }
}

/// The answers one call waits for: to its request (and re-sends), and to look-ups of its
/// payment. Every event id sent stays routed here until the call ends, so a late answer — to the
/// request or to an earlier look-up — still counts.
struct Call {
    answers_tx: mpsc::UnboundedSender<Event>,
    answers: mpsc::UnboundedReceiver<Event>,
    lookups_tx: mpsc::UnboundedSender<Event>,
    lookups: mpsc::UnboundedReceiver<Event>,
    sent: Vec<EventId>,
}

impl Call {
    fn new() -> Self {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let (lookups_tx, lookups) = mpsc::unbounded_channel();
        Self {
            answers_tx,
            answers,
            lookups_tx,
            lookups,
            sent: Vec::new(),
        }
    }
}

/// What a look-up of a payment's hash said.
#[derive(Debug)]
enum Lookup {
    /// The answer to the payment request itself came meanwhile.
    Answered(Event),
    /// Settled: the answer the payment would have had.
    Settled(PayResult),
    /// Not paid (pending, expired, failed or unknown to the wallet), as of the wallet's clock.
    NotPaid { at: Timestamp },
    /// No usable answer.
    NoAnswer,
}

/// A connection to one NWC wallet.
pub struct NwcWallet {
    inner: Arc<Inner>,
    listener: JoinHandle<()>,
}

struct Inner {
    relay: Arc<MarketClient>,
    keys: Keys,
    wallet: PublicKey,
    encryption: Encryption,
    info: Option<WalletInfo>,
    pending: Mutex<HashMap<EventId, mpsc::UnboundedSender<Event>>>,
    notify: broadcast::Sender<Notification>,
    options: NwcOptions,
}

impl NwcWallet {
    /// Connects to the wallet named by `uri`, reads its info event to choose the encryption, and
    /// subscribes to its responses and notifications.
    pub async fn connect(
        uri: &NostrWalletConnectURI,
        options: NwcOptions,
    ) -> Result<Self, WalletError> {
        let keys = Keys::new(uri.secret.clone());
        let relay = MarketClient::connect_buffered(
            keys.clone(),
            &uri.relays,
            options.connect_timeout,
            Reachability::OneShot,
            crate::relay::client::WALLET_NOTIFICATION_BUFFER,
        )
        .await?;
        Self::connect_on(Arc::new(relay), uri, options).await
    }

    /// Like [`connect`](Self::connect), over an existing connection that reaches the wallet
    /// service (its relay list in `uri` is not used): a provider node and its wallet share one
    /// socket, which matters when one process runs hundreds of nodes.
    pub async fn connect_on(
        relay: Arc<MarketClient>,
        uri: &NostrWalletConnectURI,
        options: NwcOptions,
    ) -> Result<Self, WalletError> {
        let keys = Keys::new(uri.secret.clone());
        let info = relay
            .fetch(
                Filter::new()
                    .kind(kinds::NWC_INFO)
                    .author(uri.public_key)
                    .limit(1),
                options.connect_timeout.max(Duration::from_secs(2)),
            )
            .await?
            .into_iter()
            .filter_map(|ev| WalletInfo::from_event(&ev))
            .max_by_key(|i| i.created_at);
        // Without an info event the spec's default is NIP-04.
        let encryption = info
            .as_ref()
            .map(WalletInfo::preferred_encryption)
            .unwrap_or(Encryption::Nip04);
        let notification_kind = match encryption {
            Encryption::Nip44V2 => kinds::NWC_NOTIFICATION_NIP44,
            Encryption::Nip04 => kinds::NWC_NOTIFICATION_NIP04,
        };
        let filter = Filter::new()
            .kinds([kinds::NWC_RESPONSE, notification_kind])
            .author(uri.public_key)
            .pubkey(keys.public_key());
        relay.subscribe(filter).await?;
        // Readers poll as well, so a short buffer is enough (each slot is allocated up front).
        let (notify, _) = broadcast::channel(128);
        let inner = Arc::new(Inner {
            relay,
            keys,
            wallet: uri.public_key,
            encryption,
            info,
            pending: Mutex::new(HashMap::new()),
            notify,
            options,
        });
        let listener = tokio::spawn(listen(inner.clone(), notification_kind));
        Ok(Self { inner, listener })
    }

    /// The wallet service's public key.
    pub fn wallet_pubkey(&self) -> PublicKey {
        self.inner.wallet
    }

    /// This client's public key (its account on a hub).
    pub fn client_pubkey(&self) -> PublicKey {
        self.inner.keys.public_key()
    }

    /// The encryption in use.
    pub fn encryption(&self) -> Encryption {
        self.inner.encryption
    }

    /// The wallet's info event, if it published one.
    pub fn info(&self) -> Option<&WalletInfo> {
        self.inner.info.as_ref()
    }

    /// Asks a Pylon hub's faucet to pay `invoice` (one of this client's own). Regtest only.
    pub async fn faucet(&self, invoice: String) -> Result<PayResult, WalletError> {
        self.inner
            .call(Request::Faucet(FaucetParams { invoice }))
            .await
    }

    /// Gets `msats` from a Pylon hub's faucet into this wallet: an invoice of its own, paid by
    /// the faucet. Regtest only.
    pub async fn top_up(&self, msats: u64, memo: &str) -> Result<PayResult, WalletError> {
        let grant = self
            .make_invoice(MakeInvoiceParams {
                amount: msats,
                description: Some(memo.to_string()),
                description_hash: None,
                expiry: None,
            })
            .await?;
        self.faucet(grant.invoice.unwrap_or_default()).await
    }

    /// Disconnects.
    pub async fn shutdown(self) {
        self.listener.abort();
        // Wait for the listener to let go of its handle, so the relay connection closes cleanly.
        let _ = self.listener.await;
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            // A shared connection stays up for its other users.
            if let Ok(relay) = Arc::try_unwrap(inner.relay) {
                relay.shutdown().await;
            }
        }
    }
}

impl Inner {
    async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, WalletError> {
        let response = self.round_trip(&request).await?;
        if response.result_type != request.method() && response.error.is_none() {
            return Err(WalletError::Protocol(format!(
                "asked {} but the wallet answered {}",
                request.method(),
                response.result_type
            )));
        }
        response.into_result().map_err(|e| match e {
            ResponseError::Wallet(body) => WalletError::Refused(body),
            ResponseError::Malformed(m) => WalletError::Protocol(m),
        })
    }

    /// Sends `request` and waits for its answer, recovering from lost events: relays drop events
    /// under load, and a wallet's relay client ignores an event id it has seen, so an identical
    /// resend cannot recover a lost *response*. So: a payment that went unanswered is looked up
    /// (if it settled, its preimage is the answer; if not, the same request is sent again, which
    /// the wallet runs at most once); any other request is re-sent as a fresh event.
    ///
    /// The wait ends after the request's expiration; a payment still unanswered then is
    /// [resolved](Self::resolve) by its payment hash rather than reported as failed.
    async fn round_trip(&self, request: &Request) -> Result<Response, WalletError> {
        let deadline = Deadline::within(self.options.request_timeout);
        let hash = payment_hash_of(request);
        let mut call = Call::new();
        let result = self
            .wait(request, hash.as_deref(), &deadline, &mut call)
            .await;
        let result = match (result, hash) {
            (Some(done), _) => done,
            (None, Some(hash)) => self.resolve(request, hash, &deadline, &mut call).await,
            (None, None) => Err(WalletError::Timeout(self.options.request_timeout)),
        };
        let mut pending = self.lock_pending();
        for id in call.sent {
            pending.remove(&id);
        }
        result
    }

    /// Sends `request` and waits until `deadline` for an answer; `None` if none came in time.
    async fn wait(
        &self,
        request: &Request,
        hash: Option<&str>,
        deadline: &Deadline,
        call: &mut Call,
    ) -> Option<Result<Response, WalletError>> {
        let event = match self.sign(request, deadline.expires) {
            Ok(ev) => ev,
            Err(e) => return Some(Err(e)),
        };
        self.send(&event, &call.answers_tx, &mut call.sent).await;
        let mut pause = self.options.resend_every;
        loop {
            let left = deadline.at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let answer = call.answers.recv();
            let waited = pause.min(left);
            // Each round asks again, so a wallet or relay that is merely slow would get ever
            // more requests from every waiting payment (on a relay limiting events per
            // connection, a retry storm that starves the requests themselves): wait twice as
            // long each round.
            pause = (pause * 2).min(MAX_RESEND_PAUSE.max(self.options.resend_every));
            match tokio::time::timeout(waited, answer).await {
                Ok(Some(answer)) => match self.decode(&answer) {
                    Ok(response) => return Some(Ok(response)),
                    // An unreadable answer says nothing about whether a payment ran.
                    Err(e) if hash.is_some() => {
                        tracing::warn!(id = %answer.id, "unreadable answer to a payment: {e}");
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                },
                Ok(None) => return None,
                Err(_) => {}
            }
            let left = deadline.at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match hash {
                Some(hash) => {
                    let wait = waited.min(left);
                    match self.lookup_payment(hash, call, wait).await {
                        Lookup::Answered(answer) => {
                            if let Ok(response) = self.decode(&answer) {
                                return Some(Ok(response));
                            }
                        }
                        Lookup::Settled(paid) => {
                            return Some(Ok(Response::ok(request.method(), paid)))
                        }
                        // A wallet whose clock runs ahead already refuses the request.
                        Lookup::NotPaid { at } if deadline.passed_at(at) => {
                            return Some(Err(self.not_paid(hash)))
                        }
                        Lookup::NotPaid { .. } | Lookup::NoAnswer => {}
                    }
                    tracing::debug!(id = %event.id, "payment unanswered and unsettled; sending again");
                    self.send(&event, &call.answers_tx, &mut call.sent).await;
                }
                None => {
                    tracing::debug!(
                        method = request.method(),
                        "no wallet answer yet; asking again"
                    );
                    match self.sign(request, deadline.expires) {
                        Ok(fresh) => self.send(&fresh, &call.answers_tx, &mut call.sent).await,
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }

    /// The outcome of a payment whose request went unanswered until it expired: asks the wallet
    /// about its payment hash for up to [`NwcOptions::outcome_timeout`]. Settled → the payment's
    /// answer; not paid, said after the expiration by the wallet's clock → [`WalletError::NotPaid`]
    /// (the wallet refuses the expired request, so it never runs); no such answer →
    /// [`WalletError::Unknown`].
    async fn resolve(
        &self,
        request: &Request,
        hash: String,
        deadline: &Deadline,
        call: &mut Call,
    ) -> Result<Response, WalletError> {
        let until = Instant::now() + self.options.outcome_timeout;
        // A look-up sent while the wallet is down is lost (requests are ephemeral), and every
        // look-up's answer counts whenever it comes: ask often, so a wallet back late in the
        // window is still heard.
        let cadence = (self.options.resend_every / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(payment_hash = %hash, "payment outcome unknown: the wallet did not answer");
                return Err(WalletError::Unknown { payment_hash: hash });
            }
            match self.lookup_payment(&hash, call, cadence.min(left)).await {
                Lookup::Answered(answer) => match self.decode(&answer) {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        tracing::warn!(id = %answer.id, "unreadable answer to a payment: {e}")
                    }
                },
                Lookup::Settled(paid) => return Ok(Response::ok(request.method(), paid)),
                Lookup::NotPaid { at } if deadline.passed_at(at) => {
                    tracing::info!(payment_hash = %hash, "payment expired unexecuted");
                    return Err(self.not_paid(&hash));
                }
                Lookup::NotPaid { .. } => {
                    // Not paid yet by a clock that has not yet passed the expiration: ask again
                    // once it has.
                    let pause = Duration::from_millis(250).min(left);
                    tokio::time::sleep(pause).await;
                }
                Lookup::NoAnswer => {}
            }
        }
    }

    fn not_paid(&self, hash: &str) -> WalletError {
        WalletError::NotPaid {
            payment_hash: hash.to_string(),
            waited: self.options.request_timeout,
        }
    }

    fn sign(&self, request: &Request, expires: Timestamp) -> Result<Event, WalletError> {
        nip47::request_event(
            &self.keys,
            &self.wallet,
            self.encryption,
            request,
            Some(expires),
        )
        .map_err(|e| WalletError::Protocol(e.to_string()))
    }

    async fn send(
        &self,
        event: &Event,
        answers: &mpsc::UnboundedSender<Event>,
        sent: &mut Vec<EventId>,
    ) {
        if !sent.contains(&event.id) {
            self.lock_pending().insert(event.id, answers.clone());
            sent.push(event.id);
        }
        if let Err(e) = self.relay.publish(event).await {
            tracing::debug!("wallet request not sent: {e}");
        }
    }

    fn decode(&self, answer: &Event) -> Result<Response, WalletError> {
        let json = self
            .encryption
            .decrypt(&self.keys, &self.wallet, &answer.content)
            .map_err(|e| WalletError::Protocol(e.to_string()))?;
        Response::parse(&json).map_err(|e| WalletError::Protocol(e.to_string()))
    }

    /// One look-up of the payment with `hash`, waiting up to `wait` for an answer to it or to an
    /// earlier look-up of this call, or for the answer to the payment itself, whichever comes
    /// first. A wallet that is catching up after a restart answers slower than `wait`: those
    /// late answers still count.
    async fn lookup_payment(&self, hash: &str, call: &mut Call, wait: Duration) -> Lookup {
        // Answers that came in meanwhile first: the newest clock reading of "not paid" is the one
        // that matters, a settlement ends it.
        let mut latest: Option<Timestamp> = None;
        while let Ok(answer) = call.lookups.try_recv() {
            match self.classify(hash, &answer) {
                settled @ Lookup::Settled(_) => return settled,
                Lookup::NotPaid { at } => latest = latest.max(Some(at)),
                _ => {}
            }
        }
        if let Some(at) = latest {
            return Lookup::NotPaid { at };
        }
        let lookup = Request::LookupInvoice(LookupInvoiceParams {
            payment_hash: Some(hash.to_string()),
            invoice: None,
        });
        let Ok(event) = self.sign(&lookup, Timestamp::now() + LOOKUP_EXPIRY_SECS) else {
            return Lookup::NoAnswer;
        };
        self.send(&event, &call.lookups_tx, &mut call.sent).await;
        tokio::select! {
            Some(answer) = call.lookups.recv() => self.classify(hash, &answer),
            Some(answer) = call.answers.recv() => Lookup::Answered(answer),
            _ = tokio::time::sleep(wait) => Lookup::NoAnswer,
        }
    }

    /// Reads a look-up answer for the payment with `hash`.
    fn classify(&self, hash: &str, answer: &Event) -> Lookup {
        let Ok(response) = self.decode(answer) else {
            return Lookup::NoAnswer;
        };
        let not_paid = Lookup::NotPaid {
            at: answer.created_at,
        };
        match response.into_result::<Transaction>() {
            Ok(tx) => {
                let settled =
                    tx.state == Some(TransactionState::Settled) || tx.settled_at.is_some();
                if !settled {
                    return not_paid;
                }
                match tx.preimage {
                    Some(preimage) if crate::bolt11::preimage_matches(&preimage, hash) => {
                        Lookup::Settled(PayResult {
                            preimage,
                            fees_paid: Some(tx.fees_paid),
                        })
                    }
                    // Settled, but without proof: not something to report as either outcome.
                    _ => {
                        tracing::warn!(payment_hash = %hash, "the wallet says settled but gives no matching preimage");
                        Lookup::NoAnswer
                    }
                }
            }
            Err(ResponseError::Wallet(body)) if body.code == ErrorCode::NotFound => not_paid,
            Err(_) => Lookup::NoAnswer,
        }
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<EventId, mpsc::UnboundedSender<Event>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Routes responses to their waiting callers and decrypts notifications.
async fn listen(inner: Arc<Inner>, notification_kind: nostr_sdk::Kind) {
    let mut events = inner.relay.notifications();
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut order: VecDeque<EventId> = VecDeque::new();
    loop {
        let event = match events.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => event,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("wallet client missed {n} relay messages");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if event.pubkey != inner.wallet {
            continue;
        }
        if event.kind == kinds::NWC_RESPONSE {
            if let Some(request) = nip47::responded_request(&event) {
                let waiter = inner.lock_pending().get(&request).cloned();
                if let Some(waiter) = waiter {
                    let _ = waiter.send(*event);
                }
            }
        } else if event.kind == notification_kind {
            // The same notification arrives once per relay.
            if !seen.insert(event.id) {
                continue;
            }
            order.push_back(event.id);
            if order.len() > 4096 {
                if let Some(old) = order.pop_front() {
                    seen.remove(&old);
                }
            }
            let parsed = inner
                .encryption
                .decrypt(&inner.keys, &inner.wallet, &event.content)
                .ok()
                .and_then(|json| serde_json::from_str::<Notification>(&json).ok());
            match parsed {
                Some(n) => {
                    let _ = inner.notify.send(n);
                }
                None => tracing::debug!(id = %event.id, "ignoring unreadable wallet notification"),
            }
        }
    }
}

impl Wallet for NwcWallet {
    fn get_info(&self) -> BoxFuture<'_, Result<GetInfoResult, WalletError>> {
        Box::pin(self.inner.call(Request::GetInfo))
    }

    fn balance_msat(&self) -> BoxFuture<'_, Result<u64, WalletError>> {
        Box::pin(async move {
            let b: BalanceResult = self.inner.call(Request::GetBalance).await?;
            Ok(b.balance)
        })
    }

    fn make_invoice(
        &self,
        params: MakeInvoiceParams,
    ) -> BoxFuture<'_, Result<Transaction, WalletError>> {
        Box::pin(self.inner.call(Request::MakeInvoice(params)))
    }

    fn pay_invoice(
        &self,
        bolt11: String,
        amount_msat: Option<u64>,
    ) -> BoxFuture<'_, Result<PayResult, WalletError>> {
        Box::pin(self.inner.call(Request::PayInvoice(PayInvoiceParams {
            invoice: bolt11,
            amount: amount_msat,
        })))
    }

    fn lookup_invoice(
        &self,
        payment_hash: String,
    ) -> BoxFuture<'_, Result<Transaction, WalletError>> {
        Box::pin(self.inner.call(Request::LookupInvoice(LookupInvoiceParams {
            payment_hash: Some(payment_hash),
            invoice: None,
        })))
    }

    fn list_transactions(
        &self,
        params: ListTransactionsParams,
    ) -> BoxFuture<'_, Result<Vec<Transaction>, WalletError>> {
        Box::pin(async move {
            let r: ListTransactionsResult =
                self.inner.call(Request::ListTransactions(params)).await?;
            Ok(r.transactions)
        })
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.inner.notify.subscribe()
    }

    fn max_request_age(&self) -> Duration {
        // A request expires inside the client's wait (see `round_trip`); a margin for clocks.
        self.inner.options.request_timeout + Duration::from_secs(2)
    }
}

/// The payment hash a money-moving request is about, when it pays an invoice.
fn payment_hash_of(request: &Request) -> Option<String> {
    let invoice = match request {
        Request::PayInvoice(p) => &p.invoice,
        Request::Faucet(p) => &p.invoice,
        _ => return None,
    };
    crate::bolt11::decode(invoice).ok().map(|d| d.payment_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_now() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock")
    }

    /// The wait ends only once the expiration second is over, yet within the configured timeout.
    #[test]
    fn a_request_expires_inside_the_clients_wait() {
        for secs in [3u64, 5, 20, 60] {
            let timeout = Duration::from_secs(secs);
            let before = unix_now();
            let d = Deadline::within(timeout);
            let wait = d.at.saturating_duration_since(Instant::now());
            let end = unix_now() + wait;
            assert!(
                end >= Duration::from_secs(d.expires.as_secs() + 1),
                "waits past the expiration second ({secs} s)"
            );
            assert!(
                end <= before + timeout + Duration::from_millis(50),
                "never longer than the timeout ({secs} s): ends {end:?}, began {before:?}"
            );
            assert!(d.expires.as_secs() > before.as_secs(), "valid when sent");
        }
        // A wait too short for the margin still sends a request that is valid when sent.
        let short = Deadline::within(Duration::from_millis(500));
        assert!(short.expires.as_secs() > unix_now().as_secs());
    }

    /// Only an answer signed a full second after the last second any wallet may accept the
    /// request proves it can no longer run.
    #[test]
    fn the_wallets_clock_decides_when_a_payment_can_no_longer_run() {
        let d = Deadline::within(Duration::from_secs(10));
        let e = d.expires.as_secs();
        assert!(!d.passed_at(Timestamp::from(e)));
        assert!(!d.passed_at(Timestamp::from(e + 1)));
        assert!(d.passed_at(Timestamp::from(e + 2)));
    }
}
