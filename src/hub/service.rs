//! The NIP-47 wallet service: turns request events into ledger operations and answers them.
//!
//! Each request is handled at most once: copies arriving through several relays are dropped while
//! the first is in flight, answered from a cache once done, and money-moving requests are also
//! remembered in the ledger so a retry after a restart gets the original answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nostr_sdk::{Event, EventId, Keys, PublicKey, Timestamp};

use super::ledger::{self, FaucetLimits, Ledger, LedgerError, Once, Settlement};
use crate::bolt11::{self as invoice, Purpose};
use crate::protocol::kinds;
use crate::protocol::nip47::{
    self, BalanceResult, Encryption, ErrorBody, ErrorCode, GetInfoResult, ListTransactionsResult,
    Notification, PayResult, Request, Response, PAYMENT_RECEIVED, PAYMENT_SENT,
};
use crate::ratelimit::TokenBuckets;

/// Methods the hub answers (and advertises).
pub const METHODS: [&str; 7] = [
    "get_info",
    "get_balance",
    "make_invoice",
    "pay_invoice",
    "lookup_invoice",
    "list_transactions",
    nip47::METHOD_FAUCET,
];

/// The most answered requests kept for re-sending to retries (a hard bound under any load).
const ANSWER_CACHE: usize = 20_000;
/// How long an answer is kept for a request without a NIP-40 expiration. One with an expiration
/// is kept until then only: past it the hub drops the retry unread, so the answer is dead weight
/// (kept by count alone, 20,000 answers were ~30 MiB that a long run never gave back).
const ANSWER_KEEP_SECS: u64 = 120;

/// The hub's tunables (the `[hub]` config table).
#[derive(Debug, Clone, PartialEq)]
pub struct HubSettings {
    /// Faucet limits per requesting pubkey.
    pub faucet: FaucetLimits,
    /// Invoice expiry when a request gives none, seconds.
    pub default_expiry_secs: u64,
    /// Requests per second per client (sustained).
    pub requests_per_second: u32,
    /// Request burst per client.
    pub request_burst: u32,
    /// If non-empty, only these clients are served.
    pub allow_clients: Vec<PublicKey>,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            faucet: FaucetLimits {
                max_msat_per_request: 100_000_000,
                max_msat_per_day: 1_000_000_000,
                max_requests_per_minute: 30,
            },
            default_expiry_secs: 3600,
            requests_per_second: 500,
            request_burst: 2000,
            allow_clients: Vec::new(),
        }
    }
}

/// What handling one event produced: events to publish (response first, then notifications).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Signed events to publish.
    pub publish: Vec<Event>,
}

/// The request handler, independent of any relay connection (so it can be tested directly).
pub struct Service {
    keys: Keys,
    node_key: bitcoin::secp256k1::SecretKey,
    node_pubkey: String,
    ledger: Arc<Mutex<Ledger>>,
    settings: HubSettings,
    limiter: Mutex<TokenBuckets<PublicKey>>,
    recent: Mutex<Recent>,
    /// The scheme each client last used: notifications go out in it alone (both when unknown).
    schemes: Mutex<HashMap<PublicKey, Encryption>>,
}

/// Requests in flight and answers recently sent.
#[derive(Default)]
struct Recent {
    in_flight: HashSet<EventId>,
    answered: HashMap<EventId, Event>,
    /// Answered ids in the order answered, each with the second after which no retry of it can
    /// be served. Clients set similar expirations, so this is close to sorted; an entry behind a
    /// longer-lived one waits for it, which only delays its eviction.
    order: VecDeque<(u64, EventId)>,
}

impl Recent {
    fn remember(&mut self, request: &Event, answer: Event, now: Timestamp) {
        let until =
            nip47::expiration(request).map_or(now.as_secs() + ANSWER_KEEP_SECS, |t| t.as_secs());
        self.answered.insert(request.id, answer);
        self.order.push_back((until, request.id));
        while let Some(&(until, id)) = self.order.front() {
            if until >= now.as_secs() && self.order.len() <= ANSWER_CACHE {
                break;
            }
            self.order.pop_front();
            self.answered.remove(&id);
        }
    }
}

impl Service {
    /// Builds the service around an open ledger.
    pub fn new(
        keys: Keys,
        node_key: bitcoin::secp256k1::SecretKey,
        ledger: Ledger,
        settings: HubSettings,
    ) -> Self {
        let secp = bitcoin::secp256k1::Secp256k1::signing_only();
        let node_pubkey = node_key.public_key(&secp).to_string();
        let limiter = TokenBuckets::new(
            f64::from(settings.requests_per_second),
            f64::from(settings.request_burst),
        );
        Self {
            keys,
            node_key,
            node_pubkey,
            ledger: Arc::new(Mutex::new(ledger)),
            settings,
            limiter: Mutex::new(limiter),
            recent: Mutex::new(Recent::default()),
            schemes: Mutex::new(HashMap::new()),
        }
    }

    /// The service's Nostr public key (the NWC wallet pubkey).
    pub fn public_key(&self) -> PublicKey {
        self.keys.public_key()
    }

    /// The faucet's account: the service key itself, so it can never be a client's.
    pub fn faucet_account(&self) -> String {
        self.keys.public_key().to_hex()
    }

    /// The 13194 info event.
    pub fn info_event(&self) -> Result<Event, nip47::Nip47Error> {
        let mut capabilities = METHODS.to_vec();
        capabilities.push("notifications");
        nip47::info_event(
            &self.keys,
            &capabilities,
            &[PAYMENT_RECEIVED, PAYMENT_SENT],
            Some(("regtest", &self.node_pubkey)),
        )
    }

    /// Shared access to the ledger, for audits while running.
    pub fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    /// Handles one incoming event. Blocking (SQLite): call from a blocking thread.
    pub fn handle(&self, event: &Event) -> Outcome {
        if event.kind != kinds::NWC_REQUEST
            || !event
                .tags
                .public_keys()
                .any(|p| *p == self.keys.public_key())
        {
            return Outcome::default();
        }
        if expired(event) {
            tracing::info!(id = %event.id, "dropping expired request");
            return Outcome::default();
        }
        {
            let mut recent = self.lock_recent();
            if let Some(answer) = recent.answered.get(&event.id) {
                return Outcome {
                    publish: vec![answer.clone()],
                };
            }
            if !recent.in_flight.insert(event.id) {
                return Outcome::default();
            }
        }
        let outcome = self.answer(event);
        let mut recent = self.lock_recent();
        recent.in_flight.remove(&event.id);
        if let Some(response) = outcome.publish.first() {
            recent.remember(event, response.clone(), Timestamp::now());
        }
        outcome
    }

    fn answer(&self, event: &Event) -> Outcome {
        let client = event.pubkey;
        let encryption = match Encryption::of_request(event) {
            Ok(enc) => enc,
            Err(e) => {
                // Answer in NIP-04, the scheme every client reads, naming what we support.
                let error = ErrorBody::new(
                    ErrorCode::UnsupportedEncryption,
                    format!("{e}; this wallet speaks nip44_v2 and nip04"),
                );
                return self.respond(event, Encryption::Nip04, Response::err("", error), None);
            }
        };
        let plaintext = match encryption.decrypt(&self.keys, &client, &event.content) {
            Ok(p) => {
                if let Ok(mut schemes) = self.schemes.lock() {
                    schemes.insert(client, encryption);
                }
                p
            }
            Err(e) => {
                // Not for us, or garbage: answering would only amplify it.
                tracing::debug!(id = %event.id, "dropping undecryptable request: {e}");
                return Outcome::default();
            }
        };
        let request = match Request::parse(&plaintext) {
            Ok(r) => r,
            Err(rejection) => {
                return self.respond(
                    event,
                    encryption,
                    Response::err(&rejection.method, rejection.error),
                    None,
                )
            }
        };
        let method = request.method();
        if !self.settings.allow_clients.is_empty() && !self.settings.allow_clients.contains(&client)
        {
            let error = ErrorBody::new(ErrorCode::Unauthorized, "this hub does not serve this key");
            return self.respond(event, encryption, Response::err(method, error), None);
        }
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(client, Instant::now());
        if !allowed {
            let error = ErrorBody::new(
                ErrorCode::RateLimited,
                "too many requests; retry in a moment",
            );
            return self.respond(event, encryption, Response::err(method, error), None);
        }
        // Again right before executing: the request may have waited in the worker queue, or
        // behind other requests here, past its expiration, and its client has given up on it.
        if expired(event) {
            tracing::info!(id = %event.id, method, "dropping request that expired while queued");
            return Outcome::default();
        }
        let expires = nip47::expiration(event);
        let (response, settlement) = match self.execute(event.id, &client, request, expires) {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::info!(id = %event.id, method, "dropping request that expired waiting for the ledger");
                return Outcome::default();
            }
            Err(e) => {
                tracing::error!("{e}");
                (
                    Response::err(
                        method,
                        ErrorBody::new(ErrorCode::Internal, "the hub failed; retry later"),
                    ),
                    None,
                )
            }
        };
        self.respond(event, encryption, response, settlement)
    }

    fn execute(
        &self,
        request_id: EventId,
        client: &PublicKey,
        request: Request,
        expires: Option<Timestamp>,
    ) -> Result<Option<(Response, Option<Settlement>)>, LedgerError> {
        let me = client.to_hex();
        let method = request.method();
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        // Checked again under the ledger lock: a request may wait here past its expiration, and
        // a client that waited that long has already been told the payment did not happen.
        if expires.is_some_and(|at| at <= Timestamp::now()) {
            return Ok(None);
        }
        let now = Timestamp::now().as_secs();
        let once =
            |ledger: &mut Ledger,
             op: &dyn Fn(&rusqlite::Connection) -> Result<Settlement, ErrorBody>| {
                ledger.once(&request_id.to_hex(), &me, method, now, op, |s| {
                    Response::ok(
                        method,
                        PayResult {
                            preimage: s.outgoing.preimage.clone().unwrap_or_default(),
                            fees_paid: Some(0),
                        },
                    )
                })
            };
        Ok(Some(match request {
            Request::GetInfo => (
                Response::ok(
                    method,
                    GetInfoResult {
                        alias: "pylon-hub".into(),
                        color: "#f7931a".into(),
                        pubkey: self.node_pubkey.clone(),
                        network: "regtest".into(),
                        block_height: 0,
                        block_hash: String::new(),
                        methods: METHODS.iter().map(|m| m.to_string()).collect(),
                        notifications: vec![PAYMENT_RECEIVED.into(), PAYMENT_SENT.into()],
                    },
                ),
                None,
            ),
            Request::GetBalance => (
                Response::ok(
                    method,
                    BalanceResult {
                        balance: ledger.balance(&me)?,
                    },
                ),
                None,
            ),
            Request::LookupInvoice(params) => {
                let hash = match (&params.payment_hash, &params.invoice) {
                    (Some(h), _) => Ok(h.to_lowercase()),
                    (None, Some(inv)) => invoice::decode(inv)
                        .map(|d| d.payment_hash)
                        .map_err(|e| ErrorBody::new(ErrorCode::Other, e.to_string())),
                    (None, None) => Err(ErrorBody::new(
                        ErrorCode::Other,
                        "lookup_invoice needs payment_hash or invoice",
                    )),
                };
                let response = match hash {
                    Ok(hash) => match ledger.lookup(&me, &hash)? {
                        Some(tx) => Response::ok(method, self.sealed(tx)),
                        None => Response::err(
                            method,
                            ErrorBody::new(ErrorCode::NotFound, "no such invoice"),
                        ),
                    },
                    Err(e) => Response::err(method, e),
                };
                (response, None)
            }
            Request::ListTransactions(params) => {
                let transactions: Vec<nip47::Transaction> = ledger
                    .list(&me, &params, now)?
                    .into_iter()
                    .map(|tx| self.sealed(tx))
                    .collect();
                (fitted_list(method, transactions), None)
            }
            Request::MakeInvoice(params) => {
                let purpose = match (params.description_hash, params.description) {
                    (Some(hash), _) => Purpose::DescriptionHash(hash),
                    (None, d) => Purpose::Description(d.unwrap_or_default()),
                };
                let expiry = params.expiry.unwrap_or(self.settings.default_expiry_secs);
                match invoice::create(&self.node_key, params.amount, &purpose, expiry) {
                    Err(e) => (
                        Response::err(method, ErrorBody::new(ErrorCode::Other, e.to_string())),
                        None,
                    ),
                    Ok(new) => {
                        let result = ledger.once(
                            &request_id.to_hex(),
                            &me,
                            method,
                            now,
                            |c| ledger::insert_invoice(c, &me, &new),
                            |_| Response::ok(method, pending_transaction(&new)),
                        )?;
                        (once_response(result), None)
                    }
                }
            }
            Request::PayInvoice(params) => {
                let op = |c: &rusqlite::Connection| {
                    ledger::pay(c, &me, &params.invoice, params.amount, now)
                };
                split(once(&mut ledger, &op)?)
            }
            Request::Faucet(params) => {
                let faucet = self.faucet_account();
                let limits = self.settings.faucet;
                let op = |c: &rusqlite::Connection| {
                    ledger::faucet(c, &faucet, &me, &params.invoice, limits, now)
                };
                split(once(&mut ledger, &op)?)
            }
        }))
    }

    fn respond(
        &self,
        request: &Event,
        encryption: Encryption,
        response: Response,
        settlement: Option<Settlement>,
    ) -> Outcome {
        let mut publish = Vec::new();
        match nip47::response_event(
            &self.keys,
            &request.pubkey,
            request.id,
            encryption,
            &response,
        ) {
            Ok(ev) => publish.push(ev),
            Err(e) => tracing::error!("cannot build response: {e}"),
        }
        if let Some(s) = settlement {
            publish.extend(self.notifications(&s));
        }
        Outcome { publish }
    }

    fn notifications(&self, s: &Settlement) -> Vec<Event> {
        let mut out = Vec::new();
        let faucet = self.faucet_account();
        let pairs = [
            (&s.payee, PAYMENT_RECEIVED, &s.incoming),
            (&s.payer, PAYMENT_SENT, &s.outgoing),
        ];
        for (who, kind, tx) in pairs {
            if *who == faucet {
                continue;
            }
            let Ok(pk) = PublicKey::from_hex(who) else {
                continue;
            };
            let note = Notification {
                notification_type: kind.to_string(),
                notification: self.sealed(tx.clone()),
            };
            let known = self.schemes.lock().ok().and_then(|s| s.get(&pk).copied());
            let schemes = match known {
                Some(enc) => vec![enc],
                None => vec![Encryption::Nip44V2, Encryption::Nip04],
            };
            match nip47::notification_events(&self.keys, &pk, &note, &schemes) {
                Ok(evs) => out.extend(evs),
                Err(e) => tracing::error!("cannot build notification: {e}"),
            }
        }
        out
    }

    /// Signs the settlement statement the ledger attached to a settled transaction with the
    /// node key that signed the invoice, so a verifier can hold the hub to its word.
    fn sealed(&self, mut tx: nip47::Transaction) -> nip47::Transaction {
        if let Some(a) = tx
            .metadata
            .as_mut()
            .and_then(|m| m.pylon_settlement.as_mut())
        {
            a.seal(&self.node_key);
        }
        tx
    }

    /// The node key's public half (hex): what invoices and attestations are signed with.
    pub fn node_pubkey(&self) -> &str {
        &self.node_pubkey
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Most plaintext one response may carry: NIP-44 v2 encrypts at most 65,535 bytes, and a page of
/// settled transactions (each with its invoice and attestation) passes that near 60 entries.
const MAX_RESPONSE_BYTES: usize = 60_000;

/// A `list_transactions` answer that fits one encrypted event: the newest transactions that fit,
/// fewer than asked when need be (NIP-47 lets a wallet return fewer; clients page with `offset`).
fn fitted_list(method: &str, mut transactions: Vec<nip47::Transaction>) -> Response {
    loop {
        let response = Response::ok(
            method,
            ListTransactionsResult {
                transactions: transactions.clone(),
            },
        );
        let size = serde_json::to_string(&response).map_or(0, |j| j.len());
        if size <= MAX_RESPONSE_BYTES || transactions.len() <= 1 {
            return response;
        }
        // Shrink in proportion, at least by one.
        let keep = (transactions.len() * MAX_RESPONSE_BYTES / size).min(transactions.len() - 1);
        transactions.truncate(keep.max(1));
    }
}

/// Whether `event`'s NIP-40 expiration has come, by this hub's clock. Stricter than "after the
/// expiration second" on purpose: a request is refused from its expiration second on, so a
/// client that waits until that second is over knows it can no longer run (see
/// `wallet::nwc`), even allowing for whole-second timestamps.
fn expired(event: &Event) -> bool {
    nip47::expiration(event).is_some_and(|at| at <= Timestamp::now())
}

fn pending_transaction(new: &invoice::NewInvoice) -> nip47::Transaction {
    nip47::Transaction {
        kind: nip47::TransactionType::Incoming,
        state: Some(nip47::TransactionState::Pending),
        invoice: Some(new.bolt11.clone()),
        description: new.description.clone(),
        description_hash: new.description_hash.clone(),
        // Not even the payee learns the preimage before the invoice settles (see ledger.rs).
        preimage: None,
        payment_hash: new.payment_hash.clone(),
        amount: new.amount_msat,
        fees_paid: 0,
        created_at: new.created_at,
        expires_at: Some(new.expires_at),
        settled_at: None,
        metadata: None,
    }
}

fn once_response<T>(once: Once<T>) -> Response {
    match once {
        Once::Fresh(r, _) | Once::Replayed(r) => r,
    }
}

fn split(once: Once<Settlement>) -> (Response, Option<Settlement>) {
    match once {
        Once::Fresh(r, s) => (r, s),
        Once::Replayed(r) => (r, None),
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::SecretKey;

    use super::*;
    use crate::protocol::nip47::{
        FaucetParams, MakeInvoiceParams, PayInvoiceParams, Transaction, TransactionState,
    };

    fn service() -> Service {
        let node = SecretKey::from_slice(&[7u8; 32]).expect("node key");
        let ledger = Ledger::in_memory().expect("ledger");
        Service::new(Keys::generate(), node, ledger, HubSettings::default())
    }

    fn request(svc: &Service, client: &Keys, req: &Request, expires: Option<Timestamp>) -> Event {
        nip47::request_event(client, &svc.public_key(), Encryption::Nip44V2, req, expires)
            .expect("request event")
    }

    /// The decrypted response to `event`, if the hub answered at all.
    fn answer(svc: &Service, client: &Keys, event: &Event) -> Option<Response> {
        let out = svc.handle(event);
        let first = out.publish.first()?;
        let json = Encryption::Nip44V2
            .decrypt(client, &svc.public_key(), &first.content)
            .expect("decrypt");
        Some(Response::parse(&json).expect("response"))
    }

    fn invoice(svc: &Service, payee: &Keys, msat: u64) -> Transaction {
        let req = Request::MakeInvoice(MakeInvoiceParams {
            amount: msat,
            description: Some("t".into()),
            description_hash: None,
            expiry: None,
        });
        answer(svc, payee, &request(svc, payee, &req, None))
            .expect("answered")
            .into_result()
            .expect("invoice")
    }

    #[test]
    fn answers_are_kept_until_their_request_expires_and_no_longer() {
        let svc = service();
        let client = Keys::generate();
        let balance = Request::GetBalance;
        let now = Timestamp::from(1_000_000);
        let at = |secs: u64| request(&svc, &client, &balance, Some(Timestamp::from(secs)));
        let mut recent = Recent::default();
        let (short, long, open) = (
            at(1_000_010),
            at(1_000_100),
            request(&svc, &client, &balance, None),
        );
        for ev in [&short, &long, &open] {
            recent.remember(ev, ev.clone(), now);
        }
        assert_eq!(recent.answered.len(), 3);
        // Past the first expiration, the next answer evicts it; the others stay.
        let later = at(1_000_200);
        recent.remember(&later, later.clone(), Timestamp::from(1_000_050));
        assert!(!recent.answered.contains_key(&short.id));
        assert!(recent.answered.contains_key(&long.id) && recent.answered.contains_key(&open.id));
        // Past every expiration (and the keep time of the one without): only the newest stays.
        let last = at(1_000_900);
        recent.remember(&last, last.clone(), Timestamp::from(1_000_500));
        assert_eq!(recent.answered.len(), 1, "{:?}", recent.order);
        assert!(recent.answered.contains_key(&last.id));
        assert_eq!(recent.order.len(), 1);
    }

    fn pay(bolt11: &str) -> Request {
        Request::PayInvoice(PayInvoiceParams {
            invoice: bolt11.to_string(),
            amount: None,
        })
    }

    fn state_of(svc: &Service, payee: &Keys, hash: &str) -> Option<TransactionState> {
        let ledger = svc.ledger();
        let guard = ledger.lock().expect("ledger");
        guard
            .lookup(&payee.public_key().to_hex(), hash)
            .expect("lookup")
            .and_then(|tx| tx.state)
    }

    fn balance(svc: &Service, who: &Keys) -> u64 {
        let ledger = svc.ledger();
        let guard = ledger.lock().expect("ledger");
        guard.balance(&who.public_key().to_hex()).expect("balance")
    }

    /// A payment request is refused from its expiration second on — also one that was still
    /// valid when it reached the hub but waited (in the worker queue, or behind other requests)
    /// until it expired. Its client has given up on it, so running it would move money the
    /// client reported as not paid.
    #[test]
    fn expired_payments_are_never_executed() {
        let svc = service();
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let grant = invoice(&svc, &alice, 100_000);
        let faucet = Request::Faucet(FaucetParams {
            invoice: grant.invoice.expect("bolt11"),
        });
        let funded = answer(&svc, &alice, &request(&svc, &alice, &faucet, None)).expect("answer");
        assert!(funded.error.is_none(), "{funded:?}");

        // Expiring this very second: refused, unanswered.
        let first = invoice(&svc, &bob, 1_000);
        let now = request(
            &svc,
            &alice,
            &pay(first.invoice.as_deref().expect("bolt11")),
            Some(Timestamp::now()),
        );
        assert!(svc.handle(&now).publish.is_empty());

        // Valid when it arrived, handled once the hub's clock reached its expiration.
        let second = invoice(&svc, &bob, 2_000);
        let late = request(
            &svc,
            &alice,
            &pay(second.invoice.as_deref().expect("bolt11")),
            Some(Timestamp::now() + 1),
        );
        let expires = nip47::expiration(&late).expect("expiration");
        while Timestamp::now() < expires {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(svc.handle(&late).publish.is_empty());

        for inv in [&first, &second] {
            assert_eq!(
                state_of(&svc, &bob, &inv.payment_hash),
                Some(TransactionState::Pending),
                "an expired request moved no money"
            );
        }
        assert_eq!(balance(&svc, &alice), 100_000);
        assert_eq!(balance(&svc, &bob), 0);

        // The same invoice paid by an unexpired request: executed.
        let valid = request(
            &svc,
            &alice,
            &pay(second.invoice.as_deref().expect("bolt11")),
            Some(Timestamp::now() + 60),
        );
        let paid = answer(&svc, &alice, &valid).expect("answered");
        assert!(paid.error.is_none(), "{paid:?}");
        assert_eq!(
            state_of(&svc, &bob, &second.payment_hash),
            Some(TransactionState::Settled)
        );
        assert_eq!(balance(&svc, &alice), 98_000);
        assert_eq!(balance(&svc, &bob), 2_000);
        let audit = svc.ledger().lock().expect("ledger").audit().expect("audit");
        assert!(audit.ok, "{audit:?}");
    }
}
