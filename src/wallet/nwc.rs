//! A NIP-47 client built on nostr-sdk primitives: NIP-44 when the wallet offers it, NIP-04
//! otherwise; notifications on 23197 (NIP-44) or 23196 (NIP-04).
//!
//! Requests are ephemeral events, so the client never waits for a relay's `OK` (some relays never
//! send one for ephemeral kinds). It waits for the wallet's response instead and re-sends the
//! same signed request while waiting: a relay may drop it, and the wallet answers a repeated
//! request id once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Event, EventId, Filter, Keys, PublicKey, RelayPoolNotification, Timestamp};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::{Wallet, WalletError};
use crate::protocol::kinds;
use crate::protocol::nip47::{
    self, BalanceResult, Encryption, FaucetParams, GetInfoResult, ListTransactionsParams,
    ListTransactionsResult, LookupInvoiceParams, MakeInvoiceParams, Notification, PayInvoiceParams,
    PayResult, Request, Response, ResponseError, Transaction, TransactionState, WalletInfo,
};
use crate::relay::{MarketClient, Reachability};

/// Timing of a connection.
#[derive(Debug, Clone, Copy)]
pub struct NwcOptions {
    /// How long to wait for the relays.
    pub connect_timeout: Duration,
    /// How long a request may take before [`WalletError::Timeout`].
    pub request_timeout: Duration,
    /// How often an unanswered request is sent again.
    pub resend_every: Duration,
}

impl Default for NwcOptions {
    fn default() -> Self {
        Self {
            connect_timeout: crate::relay::client::ONE_SHOT_TIMEOUT,
            request_timeout: Duration::from_secs(20),
            resend_every: Duration::from_secs(2),
        }
    }
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
        relay
            .sdk()
            .subscribe(filter, None)
            .await
            .map_err(crate::relay::client::ClientError::from)?;
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
    async fn round_trip(&self, request: &Request) -> Result<Response, WalletError> {
        let timeout = self.options.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sent: Vec<EventId> = Vec::new();
        let event = self.sign(request, timeout)?;
        self.send(&event, &tx, &mut sent).await;
        let result = loop {
            let wait = self
                .options
                .resend_every
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(answer)) => break self.decode(&answer),
                Ok(None) => break Err(WalletError::Protocol("listener stopped".into())),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    break Err(WalletError::Timeout(timeout))
                }
                Err(_) => {}
            }
            match payment_hash_of(request) {
                Some(hash) => {
                    if let Some(done) = self.settled(&hash, request.method()).await {
                        break Ok(done);
                    }
                    tracing::debug!(id = %event.id, "payment unanswered and unsettled; sending again");
                    self.send(&event, &tx, &mut sent).await;
                }
                None => {
                    tracing::debug!(
                        method = request.method(),
                        "no wallet answer yet; asking again"
                    );
                    let fresh = self.sign(request, timeout)?;
                    self.send(&fresh, &tx, &mut sent).await;
                }
            }
        };
        let mut pending = self.lock_pending();
        for id in sent {
            pending.remove(&id);
        }
        result
    }

    fn sign(&self, request: &Request, timeout: Duration) -> Result<Event, WalletError> {
        let expires = Timestamp::now() + timeout.as_secs().max(1) + 5;
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

    /// If the payment with `hash` settled, the answer a lost `pay_invoice` response would have
    /// carried. One lookup attempt, bounded by the resend interval.
    async fn settled(&self, hash: &str, method: &str) -> Option<Response> {
        let lookup = Request::LookupInvoice(LookupInvoiceParams {
            payment_hash: Some(hash.to_string()),
            invoice: None,
        });
        let event = self.sign(&lookup, self.options.resend_every).ok()?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sent = Vec::new();
        self.send(&event, &tx, &mut sent).await;
        let answer = tokio::time::timeout(self.options.resend_every, rx.recv()).await;
        self.lock_pending().remove(&event.id);
        let tx: Transaction = self.decode(&answer.ok()??).ok()?.into_result().ok()?;
        let settled = tx.state == Some(TransactionState::Settled) || tx.settled_at.is_some();
        let preimage = tx.preimage.filter(|_| settled)?;
        Some(Response::ok(
            method,
            PayResult {
                preimage,
                fees_paid: Some(tx.fees_paid),
            },
        ))
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
