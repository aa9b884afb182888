//! One client connection of the embedded relay: its subscriptions, its rate limit, its NIP-42
//! state, and the loop that reads its messages and writes live events to it.
//!
//! Three rules shape it:
//! - **Answer, don't drop.** A message that cannot be understood gets `NOTICE` (or `CLOSED` /
//!   `OK false` when it names a subscription or event) and the connection stays open. Only what
//!   RFC 6455 or our size limit forbids ends it, and then with a `NOTICE` and a close code.
//! - **Tell a slow subscriber.** Live events come through a bounded broadcast; a connection that
//!   falls more than `live_buffer_events` behind gets `CLOSED "error: subscriber too slow…"` for
//!   each subscription, so its client re-subscribes with `since` instead of missing events unaware.
//! - **Idle is cheap.** A connection without subscriptions holds no live receiver and is not
//!   woken by other people's events. With `idle_timeout_secs`, one that sends no frame at all
//!   (not even a ping) for that long is told with a NOTICE and closed, as public relays do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use nostr_sdk::filter::MatchEventOptions;
use nostr_sdk::{Event, Filter, PublicKey, SubscriptionId, Timestamp};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::auth;
use super::engine::{Engine, Live};
use super::policy::{Prefix, Refusal};
use super::wire::{self, Inbound};
use crate::ratelimit::TokenBucket;

/// Live events written per wake-up before flushing: batching cuts syscalls under load, the bound
/// keeps one busy connection from starving the rest.
const LIVE_BATCH: usize = 256;
/// Messages already waiting that are read and answered together.
const READ_BATCH: usize = 128;
/// A REQ answered slower than this is logged (with its filters) for the operator.
const SLOW_QUERY: Duration = Duration::from_millis(250);
/// How long the goodbye (NOTICE and close frame) may take to a client that does not read.
const GOODBYE: Duration = Duration::from_secs(1);

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its socket address, for logs.
    pub addr: SocketAddr,
    /// The `Host` header of its upgrade request (NIP-42 checks the AUTH event against it).
    pub host: Option<String>,
}

struct Subscription {
    id_json: String,
    filters: Vec<Filter>,
}

struct Session {
    engine: Arc<Engine>,
    peer: Peer,
    subs: HashMap<SubscriptionId, Subscription>,
    live: Option<broadcast::Receiver<Arc<Live>>>,
    bucket: TokenBucket,
    challenge: String,
    challenged: bool,
    authed: Vec<PublicKey>,
}

/// Serves one upgraded connection until the client leaves, breaks the protocol, or `stop` fires.
/// `_permit` is its place under the connection cap, given back when the session ends.
pub async fn run<S>(
    engine: Arc<Engine>,
    mut ws: WebSocketStream<S>,
    peer: Peer,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = engine.limits;
    // Moved by every frame the client sends (pings included), never by what the relay sends.
    let mut last_heard = tokio::time::Instant::now();
    let mut s = Session {
        engine,
        peer,
        subs: HashMap::new(),
        live: None,
        bucket: TokenBucket::new(
            f64::from(limits.events_per_second),
            f64::from(limits.event_burst),
            Instant::now(),
        ),
        challenge: auth::challenge(),
        challenged: false,
        authed: Vec::new(),
    };
    if s.engine.auth.for_writes() {
        s.challenged = true;
        if ws.send(text(wire::auth(&s.challenge))).await.is_err() {
            return;
        }
    }
    loop {
        let out: Vec<String> = tokio::select! {
            msg = ws.next() => match heard(&mut last_heard, msg) {
                None => break,
                Some(Ok(Message::Text(t))) => {
                    // Take every message already waiting (up to a batch) and answer them together.
                    let mut texts = vec![t];
                    let mut extra = Vec::new();
                    let mut end = None;
                    while texts.len() < READ_BATCH {
                        match ws.next().now_or_never() {
                            None => break,
                            Some(Some(Ok(Message::Text(t)))) => texts.push(t),
                            Some(Some(Ok(Message::Binary(_)))) => extra.push(binary_notice()),
                            Some(Some(Ok(_))) => {}
                            Some(Some(Err(e))) => {
                                end = Some(Some(e));
                                break;
                            }
                            Some(None) => {
                                end = Some(None);
                                break;
                            }
                        }
                    }
                    let mut out = s.on_texts(texts).await;
                    out.extend(extra);
                    if let Some(end) = end {
                        let _ = s.drain_live(&mut ws, out).await;
                        if let Some(e) = end {
                            goodbye(&mut ws, &s.peer, e).await;
                        }
                        break;
                    }
                    out
                }
                Some(Ok(Message::Binary(_))) => vec![binary_notice()],
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    goodbye(&mut ws, &s.peer, e).await;
                    break;
                }
            },
            ev = next_live(&mut s.live) => match ev {
                Ok(ev) => s.on_live(&ev),
                Err(RecvError::Lagged(missed)) => s.too_slow(missed),
                Err(RecvError::Closed) => break,
            },
            _ = stop.changed() => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "relay shutting down".into() };
                let _ = tokio::time::timeout(GOODBYE, ws.close(Some(frame))).await;
                break;
            }
            _ = idle_deadline(limits.idle_timeout, last_heard) => {
                let secs = limits.idle_timeout.map_or(0, |d| d.as_secs());
                tracing::debug!(peer = %s.peer.addr, secs, "closing an idle relay session");
                let bye = async {
                    let notice = format!("idle: nothing received for {secs} s; connection closed");
                    ws.send(text(wire::notice(&notice))).await?;
                    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "idle".into() })).await
                };
                let _ = tokio::time::timeout(GOODBYE, bye).await;
                break;
            }
        };
        if let Err(e) = s.drain_live(&mut ws, out).await {
            tracing::debug!(peer = %s.peer.addr, "relay session write failed: {e}");
            break;
        }
    }
    tracing::debug!(peer = %s.peer.addr, "relay session ended");
}

/// Ends a connection whose last frame broke a limit or the protocol, saying why when it can.
async fn goodbye<S>(ws: &mut WebSocketStream<S>, peer: &Peer, e: WsError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (notice, code) = match &e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => (
            format!("invalid: message too large: {size} bytes (max {max_size}); connection closed"),
            CloseCode::Size,
        ),
        WsError::Utf8 => (
            "invalid: text frame is not valid UTF-8 (RFC 6455 closes the connection)".to_string(),
            CloseCode::Invalid,
        ),
        WsError::Protocol(p) => (
            format!("invalid: WebSocket protocol error: {p}"),
            CloseCode::Protocol,
        ),
        _ => {
            tracing::debug!(peer = %peer.addr, "relay session read failed: {e}");
            return;
        }
    };
    tracing::debug!(peer = %peer.addr, "closing relay session: {notice}");
    let bye = async {
        ws.send(text(wire::notice(&notice))).await?;
        ws.close(Some(CloseFrame {
            code,
            reason: "".into(),
        }))
        .await
    };
    let _ = tokio::time::timeout(GOODBYE, bye).await;
}

/// Notes that the client sent something (or hung up), and passes it on.
fn heard<T>(at: &mut tokio::time::Instant, msg: T) -> T {
    *at = tokio::time::Instant::now();
    msg
}

/// Fires once the client has been silent for `timeout` since `last_heard`; never without one.
async fn idle_deadline(timeout: Option<Duration>, last_heard: tokio::time::Instant) {
    match timeout {
        Some(t) => tokio::time::sleep_until(last_heard + t).await,
        None => std::future::pending().await,
    }
}

/// The next live event, or never when the connection has no subscription.
async fn next_live(
    live: &mut Option<broadcast::Receiver<Arc<Live>>>,
) -> Result<Arc<Live>, RecvError> {
    match live.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn binary_notice() -> String {
    wire::notice("invalid: binary messages are not processed; send JSON as text frames")
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

impl Session {
    /// Writes `out`, then whatever live events are already waiting (up to a batch), in one flush.
    async fn drain_live<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        mut out: Vec<String>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for _ in 0..LIVE_BATCH {
            let Some(rx) = self.live.as_mut() else { break };
            match rx.try_recv() {
                Ok(ev) => out.extend(self.on_live(&ev)),
                Err(TryRecvError::Lagged(missed)) => out.extend(self.too_slow(missed)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        for msg in out {
            ws.feed(text(msg)).await?;
        }
        ws.flush().await
    }

    fn on_live(&self, ev: &Live) -> Vec<String> {
        self.subs
            .values()
            .filter(|sub| {
                sub.filters
                    .iter()
                    .any(|f| f.match_event(&ev.event, MatchEventOptions::new()))
            })
            .map(|sub| wire::event(&sub.id_json, &ev.json))
            .collect()
    }

    /// The connection fell behind the live stream: close every subscription so the client knows.
    fn too_slow(&mut self, missed: u64) -> Vec<String> {
        tracing::info!(
            peer = %self.peer.addr,
            missed,
            subscriptions = self.subs.len(),
            "closing a too-slow subscriber's subscriptions"
        );
        let msg = format!(
            "error: subscriber too slow: {missed} live events not delivered; re-subscribe with since"
        );
        let out = self
            .subs
            .keys()
            .map(|id| wire::closed(id.as_str(), &msg))
            .collect();
        self.subs.clear();
        self.live = None;
        out
    }

    /// Answers a batch of messages in order. Consecutive EVENTs are stored concurrently, so the
    /// store commits them together: one fsync for a burst instead of one per event (a single
    /// connection publishing one event at a time otherwise waits a commit per event). A REQ
    /// after an EVENT still sees it, since each run of EVENTs completes before the next message.
    async fn on_texts(&mut self, texts: Vec<Utf8Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        let mut run: Vec<Result<Event, Vec<String>>> = Vec::new();
        for text in texts {
            match wire::parse(text.as_str()) {
                Ok(Inbound::Event(ev)) => {
                    run.push(self.admit_event(*ev));
                    continue;
                }
                other => {
                    out.extend(self.publish_run(std::mem::take(&mut run)).await);
                    out.extend(self.on_message(other).await);
                }
            }
        }
        out.extend(self.publish_run(run).await);
        out
    }

    async fn on_message(&mut self, msg: Result<Inbound, wire::Malformed>) -> Vec<String> {
        match msg {
            Err(m) => vec![m.answer()],
            Ok(Inbound::Event(ev)) => {
                let one = vec![self.admit_event(*ev)];
                self.publish_run(one).await
            }
            Ok(Inbound::Req { id, filters }) => self.on_req(id, filters).await,
            Ok(Inbound::Count { id, filters }) => self.on_count(id, filters).await,
            Ok(Inbound::Close(id)) => {
                self.subs.remove(&id);
                if self.subs.is_empty() {
                    self.live = None;
                }
                Vec::new()
            }
            Ok(Inbound::Auth(ev)) => self.on_auth(&ev),
        }
    }

    /// Publishes the admitted events of a run concurrently; answers in the order they came.
    async fn publish_run(&self, run: Vec<Result<Event, Vec<String>>>) -> Vec<String> {
        if run.is_empty() {
            return Vec::new();
        }
        let engine = &self.engine;
        let authed = &self.authed;
        let answers = futures_util::future::join_all(run.into_iter().map(|item| async move {
            match item {
                Err(refused) => refused,
                Ok(event) => {
                    let (id, kind, pubkey) = (event.id, event.kind.as_u16(), event.pubkey);
                    match engine.publish(event, authed).await {
                        Ok(note) => {
                            tracing::trace!(peer = %self.peer.addr, kind, %pubkey, "event accepted");
                            vec![wire::ok(&id, true, &note)]
                        }
                        Err(r) => vec![wire::ok(&id, false, &r.to_string())],
                    }
                }
            }
        }))
        .await;
        answers.into_iter().flatten().collect()
    }

    /// The challenge (once per connection) followed by `refusal`.
    fn ask_auth(&mut self, refusal: String) -> Vec<String> {
        let mut out = Vec::with_capacity(2);
        if !self.challenged {
            self.challenged = true;
            out.push(wire::auth(&self.challenge));
        }
        out.push(refusal);
        out
    }

    /// The per-connection checks before an event reaches the store: rate, AUTH, signature.
    /// `Err` holds the answer for a refused event.
    fn admit_event(&mut self, event: Event) -> Result<Event, Vec<String>> {
        let refuse = |r: Refusal| Err(vec![wire::ok(&event.id, false, &r.to_string())]);
        // Cheapest checks first: a flood is refused before any signature is verified.
        if !self.engine.policy().is_exempt(&event.pubkey) && !self.bucket.take(Instant::now()) {
            tracing::debug!(
                peer = %self.peer.addr,
                kind = event.kind.as_u16(),
                pubkey = %event.pubkey,
                "event refused: rate limit"
            );
            return refuse(Refusal::new(
                Prefix::RateLimited,
                format!(
                    "slow down: {} events/s per connection",
                    self.engine.limits.events_per_second
                ),
            ));
        }
        if self.engine.auth.for_writes() && self.authed.is_empty() {
            let r = Refusal::new(
                Prefix::AuthRequired,
                "authenticate (NIP-42) to publish here",
            );
            return Err(self.ask_auth(wire::ok(&event.id, false, &r.to_string())));
        }
        if event.verify().is_err() {
            return refuse(Refusal::new(Prefix::Invalid, "bad event id or signature"));
        }
        if event.is_protected() && !self.authed.contains(&event.pubkey) {
            let r = Refusal::new(
                Prefix::AuthRequired,
                "a protected event (NIP-70) may only be published by its authenticated author",
            );
            return Err(self.ask_auth(wire::ok(&event.id, false, &r.to_string())));
        }
        Ok(event)
    }

    /// Checks shared by REQ and COUNT; `Some` is the refusal to send.
    fn admit_query(&mut self, id: &SubscriptionId, filters: &[Filter]) -> Option<Vec<String>> {
        let limits = self.engine.limits;
        let closed = |r: Refusal| Some(vec![wire::closed(id.as_str(), &r.to_string())]);
        if self.engine.auth.for_reads() && self.authed.is_empty() {
            let r = Refusal::new(Prefix::AuthRequired, "authenticate (NIP-42) to read here");
            return Some(self.ask_auth(wire::closed(id.as_str(), &r.to_string())));
        }
        if id.as_str().chars().count() > limits.max_subid_length {
            return closed(Refusal::new(
                Prefix::Invalid,
                format!(
                    "subscription id longer than {} characters",
                    limits.max_subid_length
                ),
            ));
        }
        if filters.len() > limits.max_filters {
            return closed(Refusal::new(
                Prefix::Invalid,
                format!(
                    "too many filters: {} (max {})",
                    filters.len(),
                    limits.max_filters
                ),
            ));
        }
        None
    }

    async fn on_req(&mut self, id: SubscriptionId, mut filters: Vec<Filter>) -> Vec<String> {
        if let Some(refusal) = self.admit_query(&id, &filters) {
            tracing::debug!(peer = %self.peer.addr, sub = %id, ?refusal, "REQ refused");
            return refusal;
        }
        let max = self.engine.limits.max_subscriptions;
        if self.subs.len() >= max && !self.subs.contains_key(&id) {
            return vec![wire::closed(
                id.as_str(),
                &Refusal::new(
                    Prefix::RateLimited,
                    format!("too many open subscriptions (max {max}); CLOSE one first"),
                )
                .to_string(),
            )];
        }
        // Live first, then stored: an event published during the query is not missed.
        if self.live.is_none() {
            self.live = Some(self.engine.live());
        }
        let id_json = wire::id_json(&id);
        self.engine.clamp(&mut filters);
        let live_filters = filters.clone();
        let started = Instant::now();
        let answer = self.engine.query(id_json.clone(), filters).await;
        let took = started.elapsed();
        if took > SLOW_QUERY {
            tracing::info!(
                peer = %self.peer.addr,
                sub = %id,
                ms = took.as_millis() as u64,
                events = answer.as_ref().map_or(0, Vec::len),
                filters = ?live_filters,
                "slow REQ"
            );
        }
        match answer {
            Ok(mut out) => {
                out.push(wire::eose(id.as_str()));
                self.subs.insert(
                    id,
                    Subscription {
                        id_json,
                        filters: live_filters,
                    },
                );
                out
            }
            Err(r) => {
                self.subs.remove(&id);
                if self.subs.is_empty() {
                    self.live = None;
                }
                vec![wire::closed(id.as_str(), &r.to_string())]
            }
        }
    }

    async fn on_count(&mut self, id: SubscriptionId, filters: Vec<Filter>) -> Vec<String> {
        if let Some(refusal) = self.admit_query(&id, &filters) {
            return refusal;
        }
        match self.engine.count(filters).await {
            Ok(n) => vec![wire::count(id.as_str(), n)],
            Err(r) => vec![wire::closed(id.as_str(), &r.to_string())],
        }
    }

    fn on_auth(&mut self, event: &Event) -> Vec<String> {
        match auth::verify(
            event,
            &self.challenge,
            self.peer.host.as_deref(),
            Timestamp::now(),
        ) {
            Ok(pubkey) => {
                if !self.authed.contains(&pubkey) {
                    self.authed.push(pubkey);
                }
                tracing::debug!(peer = %self.peer.addr, %pubkey, "client authenticated");
                vec![wire::ok(&event.id, true, "")]
            }
            Err(why) => vec![wire::ok(
                &event.id,
                false,
                &Refusal::new(Prefix::Invalid, why).to_string(),
            )],
        }
    }
}
