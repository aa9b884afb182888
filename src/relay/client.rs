//! The client layer every role uses to reach the market: a nostr-sdk pool over the configured
//! relays, with three rules the market depends on.
//!
//! - **Fallback.** A long-running role whose relays are all unreachable starts the embedded relay
//!   in-process and uses it, so the market keeps running offline or when a public relay is down.
//!   A one-shot command instead fails fast with a message that says how to start a relay.
//! - **Ephemeral events are fire-and-forget.** Some relays (nostr-rs-relay 0.8) never send `OK`
//!   for kinds 20000–29999; waiting for it would stall every wallet call for 10 s.
//! - **Subscriptions heal.** A relay may drop a subscriber that falls too far behind its live
//!   stream, saying `["CLOSED", id, "error: subscriber too slow; re-subscribe with since"]`.
//!   nostr-sdk 0.44 then forgets the subscription on that relay (it removes every subscription
//!   closed with `error:`, and never re-sends it, not even on reconnect), so a role would go
//!   deaf without a word. Roles therefore subscribe through [`MarketClient::subscribe`], which
//!   records the filters; a watcher task per client re-sends the REQ to that relay with the same
//!   id and `since` = the newest `created_at` it delivered, then pages the missed stored events
//!   backwards with `until` so the roles receive every one of them through
//!   [`MarketClient::notifications`] (once each: nostr-sdk drops ids its database has seen).
//!   `rate-limited:` closes are retried after a back-off; other reasons (`blocked:`, …) are
//!   final. Retries back off and stop after a streak; a catch-up reads at most a bounded number
//!   of pages. Details in `client/resub.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::prelude::Events;
use nostr_sdk::prelude::{MemoryDatabase, MemoryDatabaseOptions, ReqExitPolicy};
use nostr_sdk::{
    Client, ClientMessage, ClientOptions, Event, EventId, Filter, Keys, RelayOptions,
    RelayPoolNotification, RelayPoolOptions, RelayUrl, SubscribeOptions, SubscriptionId,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::server::{EmbeddedRelay, RelayError};
use super::settings::RelaySettings;
use super::transport::NoDelayTransport;

mod resub;
pub use resub::RESUME_MARGIN;

/// How long a publish may wait for room in a full outgoing queue.
const PUBLISH_BACKPRESSURE: Duration = Duration::from_secs(10);
/// How long a publish keeps retrying a relay that answers `rate-limited:`, and its back-off.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);
const RATE_LIMIT_FIRST_PAUSE: Duration = Duration::from_millis(250);
const RATE_LIMIT_MAX_PAUSE: Duration = Duration::from_secs(4);
/// How long a publish waits for a dropped connection to come back, and how often it tries.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// How long the first ephemeral event to a relay listens for an `OK` (to learn whether the
/// relay answers them), and how long later ones wait on a relay known to answer.
const EPHEMERAL_OK_PROBE: Duration = Duration::from_millis(500);
const EPHEMERAL_OK_WAIT: Duration = Duration::from_secs(1);
/// How long the look-up after a missing `OK` may take, how often it is tried, and the pause
/// between tries.
const CONFIRM_LOOKUP: Duration = Duration::from_secs(5);
const CONFIRM_ATTEMPTS: usize = 4;
const CONFIRM_PAUSE: Duration = Duration::from_millis(500);
/// Extra time nostr-sdk's own fetch timeout gets beyond ours (see `fetch_complete`).
const FETCH_SLACK: Duration = Duration::from_secs(5);

/// Why every relay failed a publish, by what the caller should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A relay already has it: that is success.
    Duplicate,
    /// Our outgoing queue was full: wait a moment and send again.
    Backpressure,
    /// The relay wants us slower: back off and send again.
    RateLimited,
    /// No relay is connected right now (a dropped connection being re-established): wait for
    /// the reconnect and send again.
    Disconnected,
    /// No relay said anything in time (or the answer was lost): look it up.
    Unanswered,
    /// Refused for good.
    Final,
}

impl Refused {
    fn classify(failed: &HashMap<RelayUrl, String>) -> Self {
        let any = |f: &dyn Fn(&str) -> bool| failed.values().any(|w| f(w));
        let all = |f: &dyn Fn(&str) -> bool| !failed.is_empty() && failed.values().all(|w| f(w));
        if any(&|w| w.starts_with("duplicate:")) {
            Self::Duplicate
        } else if any(&|w| w.contains("channel")) {
            Self::Backpressure
        } else if all(&|w| w.starts_with("rate-limited:")) {
            Self::RateLimited
        } else if all(&|w| w.contains("not connected")) {
            Self::Disconnected
        } else if all(&|w| w == "timeout" || w == "premature exit") {
            // "premature exit": nostr-sdk's wait for OK ended early; see the patched copy.
            Self::Unanswered
        } else {
            Self::Final
        }
    }
}
/// Room for relay messages a client has not read yet. Every slot is allocated up front (a few
/// hundred bytes each), and a lagging reader loses the oldest messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// The pool's channel, which our roles read.
    pub pool: usize,
    /// Each relay's own channel, which nostr-sdk reads for `OK`s and fetches (`None`: its default).
    pub relay: Option<usize>,
}

/// A hub, coordinator or dashboard: bursts of events, where room matters more than megabytes.
pub const NOTIFICATION_BUFFER: Buffers = Buffers {
    pool: 16_384,
    relay: None,
};
/// A provider node: it looks back for requests it missed, and a swarm runs hundreds of nodes in
/// one process (nostr-sdk's default relay channel alone costs about 1 MiB per client).
pub const NODE_NOTIFICATION_BUFFER: Buffers = Buffers {
    pool: 512,
    relay: Some(256),
};
/// A wallet client: it hears only its own responses and notifications (two per payment, and a
/// coordinator pays dozens at once).
pub const WALLET_NOTIFICATION_BUFFER: Buffers = Buffers {
    pool: 256,
    relay: Some(128),
};

/// nostr-sdk's room per relay channel when [`Buffers::relay`] is `None`.
const SDK_RELAY_CHANNEL: usize = 2048;

impl Buffers {
    /// Events per catch-up page after a too-slow close. A page arrives in one burst through both
    /// channels: larger than half of either, it could overrun a role reading the pool channel,
    /// and nostr-sdk ends a fetch early (as if complete) when its relay channel lags. So a hub
    /// pages 1,024 at a time, a node 128, a wallet 64.
    fn catch_up_page(self) -> usize {
        let room = self.pool.min(self.relay.unwrap_or(SDK_RELAY_CHANNEL));
        (room / 2).clamp(50, 2_000)
    }
}

/// The first pause before reconnecting a dropped relay. nostr-sdk waits 10 s (± 3 s jitter),
/// and a role hears nothing meanwhile: wallet answers are ephemeral and lost for good, and
/// through a link cut once a minute (`bench wan`, `demo --wan`) that put payments in doubt
/// and showed live nodes offline. The pause still grows with failed attempts (nostr-sdk's
/// adaptive interval, at most 60 s), so a relay that is gone is not hammered.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Event ids a client remembers as already seen. nostr-sdk keeps 35,000 per client (~3 MiB
/// once full), and a long run grew while filling them. The tracker also spares channel room: an
/// event fetched again that it remembers takes one message on the relay channel instead of two,
/// so it must cover what look-ups fetch again — a provider's 45 s look-back at a few hundred
/// events/s (4,096 made look-ups after a 6,000-event flood lag for good,
/// `tests/it/lagging_client.rs`). 16,384: ~1.5 MiB per client, 150 MiB less at the peak of a
/// 300-node burst (`bench swarm`) at the same speed. The pool's signature-verification cache
/// (128,000 ids) stays as upstream: at 16,384 the same burst re-checked signatures and took
/// 25% longer (p50 34 → 42 s).
const SEEN_IDS: usize = 16_384;

/// nostr-sdk's in-memory "database": ids only, no events, [`SEEN_IDS`] at most.
fn seen_tracker() -> MemoryDatabase {
    MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: false,
        max_events: Some(SEEN_IDS),
    })
}

async fn add_relay(client: &Client, url: &RelayUrl, buffers: Buffers) -> Result<(), ClientError> {
    let mut options = RelayOptions::new().retry_interval(RECONNECT_AFTER);
    if let Some(n) = buffers.relay {
        options = options.notification_channel_size(n.max(16));
    }
    client.pool().add_relay(url, options).await?;
    Ok(())
}

/// How long a one-shot command waits for any relay before giving up.
pub const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors talking to relays.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured relay answered in time.
    #[error("no relay reachable ({0}). Start one with `pylon relay` (or `pylon up`), or point at another with --relay URL")]
    Unreachable(String),
    /// Every relay refused the event.
    #[error("no relay accepted event {id}: {reasons}")]
    Rejected {
        /// The refused event.
        id: EventId,
        /// Each relay's reason.
        reasons: String,
    },
    /// No relay answered `OK` in time and none refused: a busy relay may still store the event.
    #[error("no relay confirmed event {id} in time ({reasons}); it may still arrive")]
    Unconfirmed {
        /// The unconfirmed event.
        id: EventId,
        /// Each relay's reason.
        reasons: String,
    },
    /// No relay gave a complete answer to a look-up.
    #[error("no relay answered the look-up completely ({0})")]
    Incomplete(String),
    /// The fallback relay could not start.
    #[error("relays unreachable ({0}) and the embedded relay could not start: {1}")]
    Fallback(String, RelayError),
    /// An error inside nostr-sdk.
    #[error("relay client: {0}")]
    Sdk(#[from] nostr_sdk::client::Error),
    /// An error inside nostr-sdk's relay pool.
    #[error("relay pool: {0}")]
    Pool(#[from] nostr_sdk::pool::pool::Error),
}

/// What happens when no relay answers.
#[derive(Debug, Clone)]
pub enum Reachability {
    /// Fail within the timeout: for commands a user waits on.
    OneShot,
    /// Start the embedded relay with these settings and store, and use it.
    FallBack {
        /// Settings for the embedded relay (its `bind` is where it listens).
        settings: Box<RelaySettings>,
        /// Its LMDB directory.
        data_dir: PathBuf,
    },
}

/// Set when a long-running role is running on the embedded relay instead of its configured ones.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FallbackInfo {
    /// The relay in use now.
    pub url: String,
    /// Why the configured relays were abandoned.
    pub reason: String,
    /// True if this process started it; false if another process already served that address.
    pub started_here: bool,
}

/// A connected client. Cheap to share by reference; [`MarketClient::shutdown`] disconnects.
#[derive(Debug)]
pub struct MarketClient {
    client: Client,
    fallback: Option<FallbackInfo>,
    embedded: Option<EmbeddedRelay>,
    /// Subscriptions to keep alive (see the module documentation).
    subscriptions: Arc<resub::Registry>,
    /// The watcher that keeps them alive; aborted on shutdown and drop.
    healer: JoinHandle<()>,
    /// Whether the relays answer `OK` to ephemeral events, learned from the first one sent
    /// (see [`MarketClient::send_ephemeral`]).
    ephemeral_ok: std::sync::Mutex<HashMap<RelayUrl, bool>>,
}

impl Drop for MarketClient {
    fn drop(&mut self) {
        self.healer.abort();
    }
}

impl MarketClient {
    /// Connects `keys` to `relays`, waiting at most `timeout` for the first to answer.
    pub async fn connect(
        keys: Keys,
        relays: &[RelayUrl],
        timeout: Duration,
        when_unreachable: Reachability,
    ) -> Result<Self, ClientError> {
        Self::connect_buffered(keys, relays, timeout, when_unreachable, NOTIFICATION_BUFFER).await
    }

    /// [`connect`](Self::connect) with `buffers` of room for relay messages not yet read.
    pub async fn connect_buffered(
        keys: Keys,
        relays: &[RelayUrl],
        timeout: Duration,
        when_unreachable: Reachability,
        buffers: Buffers,
    ) -> Result<Self, ClientError> {
        let client = Client::builder()
            .signer(keys)
            .database(seen_tracker())
            .websocket_transport(NoDelayTransport)
            .opts(
                ClientOptions::new()
                    .pool(RelayPoolOptions::new().notification_channel_size(buffers.pool.max(16))),
            )
            .build();
        for url in relays {
            add_relay(&client, url, buffers).await?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut output = client.try_connect(timeout).await;
        // A connection cut during its handshake (a flaky link) is worth another try within the
        // timeout; a refused one (no relay there) is not: one-shot commands must fail fast.
        while output.success.is_empty()
            && !output.failed.is_empty()
            && output.failed.values().all(|why| !why.contains("refused"))
            && tokio::time::Instant::now() + Duration::from_millis(100) < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            output = client.try_connect(left).await;
        }
        if !output.success.is_empty() {
            // Keep retrying the ones that failed, in the background.
            client.connect().await;
            return Ok(Self::assemble(client, None, None, buffers));
        }
        let reason = describe_failures(relays, &output.failed);
        match when_unreachable {
            Reachability::OneShot => {
                client.shutdown().await;
                Err(ClientError::Unreachable(reason))
            }
            Reachability::FallBack { settings, data_dir } => {
                client.force_remove_all_relays().await;
                Self::fall_back(client, reason, &settings, data_dir, timeout, buffers).await
            }
        }
    }

    async fn fall_back(
        client: Client,
        reason: String,
        settings: &RelaySettings,
        data_dir: PathBuf,
        timeout: Duration,
        buffers: Buffers,
    ) -> Result<Self, ClientError> {
        let (url, embedded) = match EmbeddedRelay::start(settings, &data_dir).await {
            Ok(relay) => (relay.url(), Some(relay)),
            // Someone (another pylon) already serves the fallback address: share it.
            Err(RelayError::Bind(addr, e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let url = RelayUrl::parse(&format!("ws://{addr}"))
                    .map_err(|e| ClientError::Unreachable(e.to_string()))?;
                (url, None)
            }
            Err(e) => return Err(ClientError::Fallback(reason, e)),
        };
        add_relay(&client, &url, buffers).await?;
        let output = client.try_connect(timeout).await;
        if output.success.is_empty() {
            return Err(ClientError::Unreachable(format!(
                "{reason}; fallback {}",
                describe_failures(std::slice::from_ref(&url), &output.failed)
            )));
        }
        let info = FallbackInfo {
            url: url.to_string(),
            reason,
            started_here: embedded.is_some(),
        };
        tracing::warn!(
            "configured relays unreachable ({}); using the embedded relay at {}",
            info.reason,
            info.url
        );
        Ok(Self::assemble(client, Some(info), embedded, buffers))
    }

    /// Wraps a connected `client` and starts its subscription watcher (before any REQ, so it
    /// sees every `CLOSED`).
    fn assemble(
        client: Client,
        fallback: Option<FallbackInfo>,
        embedded: Option<EmbeddedRelay>,
        buffers: Buffers,
    ) -> Self {
        let subscriptions = Arc::new(resub::Registry::default());
        let healer = resub::spawn(
            client.clone(),
            subscriptions.clone(),
            client.notifications(),
            buffers.catch_up_page(),
        );
        Self {
            client,
            fallback,
            embedded,
            subscriptions,
            healer,
            ephemeral_ok: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The underlying nostr-sdk client. Subscribe through [`subscribe`](Self::subscribe)
    /// instead of its `subscribe`, or a relay's too-slow close silently ends the subscription.
    pub fn sdk(&self) -> &Client {
        &self.client
    }

    /// Subscribes every relay in the pool to `filter` and keeps the subscription alive across
    /// too-slow and rate-limited closes (see the module documentation). Its events arrive
    /// through [`notifications`](Self::notifications).
    pub async fn subscribe(&self, filter: Filter) -> Result<SubscriptionId, ClientError> {
        let id = SubscriptionId::generate();
        self.subscribe_with_id(id.clone(), vec![filter]).await?;
        Ok(id)
    }

    /// [`subscribe`](Self::subscribe) with a chosen id and several filters (one REQ, filters
    /// OR-ed). Subscribing again with the same id replaces the filters.
    pub async fn subscribe_with_id(
        &self,
        id: SubscriptionId,
        filters: Vec<Filter>,
    ) -> Result<(), ClientError> {
        // Recorded before the REQ leaves, so a CLOSED that answers it finds the record.
        self.subscriptions.record(id.clone(), filters.clone());
        let sent = self
            .client
            .pool()
            .subscribe_with_id(id.clone(), filters, SubscribeOptions::default())
            .await;
        if let Err(e) = sent {
            self.subscriptions.forget(&id);
            return Err(e.into());
        }
        Ok(())
    }

    /// Ends subscription `id` on every relay and stops keeping it alive.
    pub async fn unsubscribe(&self, id: &SubscriptionId) {
        // Forgotten first, so the CLOSED a relay may send in reply is not taken for a close.
        self.subscriptions.forget(id);
        self.client.unsubscribe(id).await;
    }

    /// Set when running on the embedded relay because the configured ones were unreachable.
    pub fn fallback(&self) -> Option<&FallbackInfo> {
        self.fallback.as_ref()
    }

    /// The relays in the pool now.
    pub async fn relay_urls(&self) -> Vec<RelayUrl> {
        self.client.relays().await.into_keys().collect()
    }

    /// Publishes `event`. Regular events wait for at least one relay's `OK: true`; ephemeral events
    /// return once handed to a connected relay (see the module documentation).
    ///
    /// Under load this holds on rather than giving up: a full outgoing queue is waited out, a
    /// `rate-limited:` refusal is retried after a back-off (public relays limit events per
    /// connection), and a missing `OK` is not a failure until a look-up shows the relay does not
    /// have the event (then it is sent once more: relays and roles ignore copies of an id).
    pub async fn publish(&self, event: &Event) -> Result<EventId, ClientError> {
        match self.send_until_answered(event).await {
            Err(ClientError::Unconfirmed { .. }) if !event.kind.is_ephemeral() => {}
            other => return other,
        }
        let mut resent = false;
        for _ in 0..CONFIRM_ATTEMPTS {
            match self.is_stored(event.id).await {
                Some(true) => return Ok(event.id),
                Some(false) if !resent => {
                    resent = true;
                    tracing::debug!(event = %event.id, "no OK and not on the relay; sending it again");
                    match self.send_until_answered(event).await {
                        Err(ClientError::Unconfirmed { .. }) => {}
                        other => return other,
                    }
                }
                // Absent after a second send, or no complete answer (a client still behind in
                // a burst): ask again in a moment.
                _ => tokio::time::sleep(CONFIRM_PAUSE).await,
            }
        }
        Err(ClientError::Unconfirmed {
            id: event.id,
            reasons: "no OK, and a look-up could not show the relay has it".into(),
        })
    }

    /// One publish: sends `event` and waits for an answer, riding out back-pressure and rate
    /// limits. A missing answer is [`ClientError::Unconfirmed`].
    async fn send_until_answered(&self, event: &Event) -> Result<EventId, ClientError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut limited_pause = RATE_LIMIT_FIRST_PAUSE;
        loop {
            let failed = if event.kind.is_ephemeral() {
                match self.send_ephemeral(event).await? {
                    None => return Ok(event.id),
                    Some(failed) => failed,
                }
            } else {
                let output = self.client.send_event(event).await?;
                if !output.success.is_empty() {
                    return Ok(event.id);
                }
                output.failed
            };
            match Refused::classify(&failed) {
                Refused::Duplicate => return Ok(event.id),
                Refused::Backpressure if started.elapsed() < PUBLISH_BACKPRESSURE => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Refused::RateLimited if started.elapsed() < RATE_LIMIT_PATIENCE => {
                    tracing::debug!(event = %event.id, "rate-limited; retrying in {limited_pause:?}");
                    tokio::time::sleep(limited_pause).await;
                    limited_pause = (limited_pause * 2).min(RATE_LIMIT_MAX_PAUSE);
                }
                Refused::Disconnected if started.elapsed() < RECONNECT_PATIENCE => {
                    tracing::debug!(event = %event.id, "no relay connected; retrying after a reconnect");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Refused::Unanswered => {
                    return Err(ClientError::Unconfirmed {
                        id: event.id,
                        reasons: join_reasons(&failed),
                    })
                }
                _ => {
                    return Err(ClientError::Rejected {
                        id: event.id,
                        reasons: join_reasons(&failed),
                    })
                }
            }
        }
    }

    /// Sends an ephemeral event: `None` when sent (and not refused), else each relay's reason.
    ///
    /// Some relays never answer `OK` to ephemeral events (nostr-rs-relay 0.8), so waiting for one
    /// would stall every wallet call; others (Pylon's, public relays with rate limits) answer,
    /// and a `rate-limited:` refusal must not pass for a sent wallet request. So the first
    /// ephemeral event to each relay listens briefly for its `OK`, and the relay is remembered as
    /// answering or silent: answering relays' `OK`s are then awaited, silent ones are not.
    async fn send_ephemeral(
        &self,
        event: &Event,
    ) -> Result<Option<HashMap<RelayUrl, String>>, ClientError> {
        let mut notes = self.client.notifications();
        let urls = self.relay_urls().await;
        let output = self
            .client
            .send_msg_to(urls.clone(), ClientMessage::event(event.clone()))
            .await?;
        if output.success.is_empty() {
            return Ok(Some(output.failed));
        }
        let known: HashMap<RelayUrl, bool> = self
            .ephemeral_ok
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut waiting: Vec<RelayUrl> = output
            .success
            .iter()
            .filter(|u| known.get(*u) != Some(&false))
            .cloned()
            .collect();
        if waiting.is_empty() {
            return Ok(None);
        }
        let learning = waiting.iter().any(|u| !known.contains_key(u));
        let patience = if learning {
            EPHEMERAL_OK_PROBE
        } else {
            EPHEMERAL_OK_WAIT
        };
        let deadline = tokio::time::Instant::now() + patience;
        let mut refused: HashMap<RelayUrl, String> = HashMap::new();
        let mut accepted = false;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let note = match tokio::time::timeout(left, notes.recv()).await {
                Err(_) => break,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                Ok(Ok(note)) => note,
            };
            let RelayPoolNotification::Message {
                relay_url,
                message:
                    nostr_sdk::RelayMessage::Ok {
                        event_id,
                        status,
                        message,
                    },
            } = note
            else {
                continue;
            };
            if event_id != event.id || !waiting.contains(&relay_url) {
                continue;
            }
            waiting.retain(|u| *u != relay_url);
            if let Ok(mut m) = self.ephemeral_ok.lock() {
                m.insert(relay_url.clone(), true);
            }
            if status {
                accepted = true;
            } else {
                refused.insert(relay_url, message.into_owned());
            }
        }
        if learning {
            if let Ok(mut m) = self.ephemeral_ok.lock() {
                for u in &waiting {
                    // Silent within the probe: a relay that does not answer ephemeral events.
                    m.entry(u.clone()).or_insert(false);
                }
            }
        }
        // Sent to some relay that took it (or never answers): sent. Refused everywhere it was
        // answered, and nowhere else: the refusals decide.
        let silent_somewhere = output.success.iter().any(|u| !refused.contains_key(u));
        if accepted || silent_somewhere {
            return Ok(None);
        }
        Ok(Some(refused))
    }

    /// Whether a relay holds event `id`: `Some(true)` if one returned it, `Some(false)` if one
    /// answered completely without it, `None` if none could answer.
    async fn is_stored(&self, id: EventId) -> Option<bool> {
        let filter = Filter::new().id(id).limit(1);
        // Seeing the event settles it, even in an answer cut short by a lag elsewhere.
        if let Ok(found) = self.fetch(filter.clone(), CONFIRM_LOOKUP).await {
            if found.into_iter().any(|e| e.id == id) {
                return Some(true);
            }
        }
        match self.fetch_complete(filter, CONFIRM_LOOKUP).await {
            Ok(found) => Some(found.into_iter().any(|e| e.id == id)),
            Err(e) => {
                tracing::debug!(event = %id, "look-up failed: {e}");
                None
            }
        }
    }

    /// Hands `event` to the connected relays without waiting for their `OK`: for events whose
    /// acceptance nothing waits on (claims, heartbeats), so they cost no round trip.
    pub async fn publish_nowait(&self, event: &Event) -> Result<EventId, ClientError> {
        let urls = self.relay_urls().await;
        let output = self
            .client
            .send_msg_to(urls, ClientMessage::event(event.clone()))
            .await?;
        if output.success.is_empty() {
            return Err(ClientError::Rejected {
                id: event.id,
                reasons: join_reasons(&output.failed),
            });
        }
        Ok(event.id)
    }

    /// Stored events matching `filter`, gathered until every relay sent EOSE or `timeout` passed.
    /// Best effort: on a timeout (or a client that fell behind) it returns what arrived. Use
    /// [`fetch_complete`](Self::fetch_complete) where a missing event matters.
    pub async fn fetch(&self, filter: Filter, timeout: Duration) -> Result<Events, ClientError> {
        Ok(self.client.fetch_events(filter, timeout).await?)
    }

    /// Every stored event matching `filter` on the relays that answered completely (sent EOSE
    /// within `timeout`, with nothing lost on the way), merged; an error if none did. A caller
    /// that moves a window forward on the answer must use this, never [`fetch`](Self::fetch):
    /// a partial answer taken for a whole one loses events for good.
    pub async fn fetch_complete(
        &self,
        filter: Filter,
        timeout: Duration,
    ) -> Result<Events, ClientError> {
        let relays = self.client.relays().await;
        let asks = relays.iter().map(|(url, relay)| {
            let filter = filter.clone();
            async move {
                // The relay-level timeout is longer than ours, so ours decides: a stream cut by
                // our timeout is incomplete, whereas nostr-sdk's own timeout ends it "normally".
                let answer = tokio::time::timeout(
                    timeout,
                    relay.fetch_events(filter, timeout + FETCH_SLACK, ReqExitPolicy::ExitOnEOSE),
                )
                .await;
                match answer {
                    Ok(Ok(events)) => Ok(events),
                    Ok(Err(e)) => Err(format!("{url}: {e}")),
                    Err(_) => Err(format!("{url}: no EOSE within {timeout:?}")),
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut merged: Option<Events> = None;
        let mut reasons = Vec::new();
        for answer in answers {
            match answer {
                Ok(events) => match merged.as_mut() {
                    Some(all) => {
                        for e in events {
                            all.force_insert(e);
                        }
                    }
                    None => merged = Some(events),
                },
                Err(why) => reasons.push(why),
            }
        }
        merged.ok_or_else(|| {
            ClientError::Incomplete(if reasons.is_empty() {
                "no relay connected".into()
            } else {
                reasons.join("; ")
            })
        })
    }

    /// A receiver of every event and message from the pool.
    pub fn notifications(&self) -> broadcast::Receiver<RelayPoolNotification> {
        self.client.notifications()
    }

    /// Disconnects, and stops the embedded relay if this client started it.
    pub async fn shutdown(mut self) {
        self.subscriptions.clear();
        self.healer.abort();
        close(&self.client).await;
        if let Some(relay) = self.embedded.take() {
            relay.shutdown().await;
        }
    }
}

/// Shuts a nostr-sdk client down politely. nostr-sdk marks relays terminated at once and sends the
/// WebSocket Close frame from its connection tasks afterwards; waiting a moment means a process
/// that exits next does not leave relays logging "connection reset".
pub async fn close(client: &Client) {
    client.shutdown().await;
    tokio::time::sleep(Duration::from_millis(25)).await;
}

fn describe_failures(relays: &[RelayUrl], failed: &HashMap<RelayUrl, String>) -> String {
    relays
        .iter()
        .map(|url| match failed.get(url) {
            Some(why) => format!("{url}: {why}"),
            None => format!("{url}: no answer"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn join_reasons(failed: &HashMap<RelayUrl, String>) -> String {
    if failed.is_empty() {
        return "no relay connected".into();
    }
    failed
        .iter()
        .map(|(url, why)| format!("{url}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}
