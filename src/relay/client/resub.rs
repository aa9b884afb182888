//! Self-healing subscriptions: the watcher behind [`MarketClient::subscribe`](super::MarketClient::subscribe).
//!
//! nostr-sdk 0.44 forgets a subscription on a relay as soon as that relay sends `CLOSED` with an
//! `error:` prefix (it only keeps, and re-sends on reconnect, `rate-limited:` and `auth-required:`
//! ones), and the role that opened it hears nothing more. A relay that drops a subscriber for
//! being too slow says so with `["CLOSED", id, "error: … too slow …"]` and expects the client to
//! come back with `since`. This watcher does that for every subscription the client recorded:
//!
//! 1. it remembers, per subscription and relay, the newest `created_at` delivered;
//! 2. on a too-slow `CLOSED` it sends the same REQ (same id, same filters) to that relay with
//!    `since` = that newest `created_at` less [`RESUME_MARGIN`], so live delivery resumes at
//!    once. The margin is there because a relay need not deliver in `created_at` order: ours
//!    stores a burst's events concurrently, and any relay passes on an event that arrived late
//!    (a slow link, a retried publish) after newer ones. So the events a close cut off can be
//!    older than the newest one delivered; the margin brings them back, and the events it
//!    brings twice are dropped as seen (below);
//! 3. it pages the missed stored events backwards with `until` (the relay answers a limited
//!    query with the newest N), on separate fetch subscriptions. nostr-sdk's relay turns every
//!    `EVENT` of any subscription, fetches included, into a pool
//!    [`RelayPoolNotification::Event`] unless the client's database has already seen its id (the
//!    default in-memory database remembers the last 35,000), so the roles receive each missed
//!    event once, through the channel they already read.
//!
//! `rate-limited:` closes are retried the same way after a back-off; `auth-required:` is left to
//! nostr-sdk, which authenticates and re-sends; any other reason is final. If the watcher itself
//! lags behind the pool channel it may miss a `CLOSED`, so it then asks every connected relay
//! which recorded subscriptions it no longer holds and repairs those.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nostr_sdk::prelude::{Events, ReqExitPolicy};
use nostr_sdk::{
    Client, EventId, Filter, Relay, RelayMessage, RelayPoolNotification, RelayUrl,
    SubscribeOptions, SubscriptionId, Timestamp,
};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::{JoinHandle, JoinSet};

/// How far before the newest delivered `created_at` a re-subscription starts (see the module
/// docs): wide enough for a concurrent store's reordering and for events a few seconds late,
/// narrow enough that the repeated stretch stays a few catch-up pages in a burst.
pub const RESUME_MARGIN: u64 = 10;
/// The most pages one catch-up reads per filter before it gives up (with a warning): a bound on
/// the work a single close can cause.
const MAX_PAGES: usize = 100;
/// How long one catch-up page may take to reach EOSE.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per catch-up page (a relay may rate-limit the catch-up itself).
const PAGE_ATTEMPTS: u32 = 3;
/// Closes of one subscription on one relay closer together than this count as a streak, which
/// backs off further each time; a quiet spell this long starts over.
const STREAK_WINDOW: Duration = Duration::from_secs(300);
/// A streak this long means the relay keeps refusing us: stop retrying there (with a warning).
const MAX_STRIKES: u32 = 8;
/// The longest back-off between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a relay stopped serving a recorded subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// `error:` and "too slow": the relay wants us back with `since`.
    TooSlow,
    /// `rate-limited:`: come back later.
    RateLimited,
    /// The relay no longer holds it and we did not see why (our notification reader lagged
    /// past the `CLOSED`): treat it like a too-slow close; a final reason will come again.
    Vanished,
    /// `auth-required:`: nostr-sdk authenticates and re-sends the REQ itself.
    Auth,
    /// Anything else (`blocked:`, `restricted:`, `invalid:`, another `error:`, no prefix): final.
    Final,
}

impl Closing {
    /// Reads a `CLOSED` message by its NIP-01 machine-readable prefix.
    pub(super) fn of(message: &str) -> Self {
        let message = message.trim_start();
        if message.starts_with("rate-limited:") {
            Self::RateLimited
        } else if message.starts_with("auth-required:") {
            Self::Auth
        } else if message.starts_with("error:") && message.to_ascii_lowercase().contains("too slow")
        {
            Self::TooSlow
        } else {
            Self::Final
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::TooSlow => "too slow",
            Self::RateLimited => "rate-limited",
            Self::Vanished => "closed unseen",
            Self::Auth | Self::Final => "closed",
        }
    }
}

/// How long to wait before the `strikes`-th retry in a streak. A first too-slow close is
/// answered at once (every second of delay is more to catch up); a rate limit always waits.
pub(super) fn backoff(closing: Closing, strikes: u32) -> Duration {
    let step = match closing {
        Closing::RateLimited => strikes,
        _ => strikes.saturating_sub(1),
    };
    if step == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << step.min(6)).min(MAX_BACKOFF)
}

/// One subscription's state on one relay.
#[derive(Debug, Default)]
struct Track {
    /// The newest `created_at` this relay delivered on the subscription.
    newest: Option<Timestamp>,
    /// Closes (and failed repairs) in the current streak.
    strikes: u32,
    last_close: Option<Instant>,
    /// A repair task owns this relay's recovery now.
    repairing: bool,
    /// Another close came while repairing: run again once the current repair ends.
    again: Option<Closing>,
    /// Closed for a final reason, or retried too often: no more retries here.
    given_up: bool,
}

impl Track {
    fn strike(&mut self) -> u32 {
        let now = Instant::now();
        let in_streak = self
            .last_close
            .is_some_and(|at| now.duration_since(at) < STREAK_WINDOW);
        self.strikes = if in_streak { self.strikes + 1 } else { 1 };
        self.last_close = Some(now);
        self.strikes
    }
}

#[derive(Debug)]
struct Record {
    filters: Vec<Filter>,
    relays: HashMap<RelayUrl, Track>,
}

/// The subscriptions a [`MarketClient`](super::MarketClient) keeps alive, shared with its watcher.
#[derive(Debug, Default)]
pub(super) struct Registry {
    subs: Mutex<HashMap<SubscriptionId, Record>>,
}

/// What a repair task should do next.
#[derive(Debug, Clone, Copy)]
struct Step {
    closing: Closing,
    delay: Duration,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<SubscriptionId, Record>> {
        // The map stays consistent across a panic elsewhere (each update is one statement).
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn record(&self, id: SubscriptionId, filters: Vec<Filter>) {
        self.lock().insert(
            id,
            Record {
                filters,
                relays: HashMap::new(),
            },
        );
    }

    pub(super) fn forget(&self, id: &SubscriptionId) {
        self.lock().remove(id);
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn ids(&self) -> Vec<SubscriptionId> {
        self.lock().keys().cloned().collect()
    }

    fn saw(&self, id: &SubscriptionId, url: &RelayUrl, created_at: Timestamp) {
        let mut subs = self.lock();
        let Some(record) = subs.get_mut(id) else {
            return;
        };
        let track = record.relays.entry(url.clone()).or_default();
        if track.newest.is_none_or(|t| t < created_at) {
            track.newest = Some(created_at);
        }
    }

    /// Notes that `url` stopped serving `id`; returns the first step of a repair to start, if
    /// one should start now (not when one already runs: it is told to go again instead).
    fn closed(&self, id: &SubscriptionId, url: &RelayUrl, closing: Closing) -> Option<Step> {
        let mut subs = self.lock();
        let track = subs.get_mut(id)?.relays.entry(url.clone()).or_default();
        if track.given_up || closing == Closing::Auth {
            return None;
        }
        if closing == Closing::Final {
            track.given_up = true;
            return None;
        }
        if track.repairing {
            track.again = Some(closing);
            return None;
        }
        let strikes = track.strike();
        if strikes > MAX_STRIKES {
            track.given_up = true;
            tracing::warn!(relay = %url, subscription = %id, strikes,
                "relay keeps closing the subscription; no more re-subscriptions there");
            return None;
        }
        track.repairing = true;
        Some(Step {
            closing,
            delay: backoff(closing, strikes),
        })
    }

    /// True if a close of `id` on `url` went unseen: the relay should hold it and does not.
    fn may_have_vanished(&self, id: &SubscriptionId, url: &RelayUrl) -> bool {
        self.lock().get(id).is_some_and(|r| {
            r.relays
                .get(url)
                .is_none_or(|t| !t.repairing && !t.given_up)
        })
    }

    /// The filters to send again and the newest `created_at` seen, or `None` once the role has
    /// unsubscribed.
    fn plan(
        &self,
        id: &SubscriptionId,
        url: &RelayUrl,
    ) -> Option<(Vec<Filter>, Option<Timestamp>)> {
        let subs = self.lock();
        let record = subs.get(id)?;
        let newest = record.relays.get(url).and_then(|t| t.newest);
        Some((record.filters.clone(), newest))
    }

    /// Ends a repair pass; returns the next step if another close came meanwhile or this pass
    /// failed (then with a longer back-off), else releases the relay.
    fn finish(&self, id: &SubscriptionId, url: &RelayUrl, failed: bool) -> Option<Step> {
        let mut subs = self.lock();
        let track = subs.get_mut(id)?.relays.get_mut(url)?;
        let next = match (track.again.take(), failed) {
            (Some(closing), _) => Some(closing),
            (None, true) => Some(Closing::TooSlow),
            (None, false) => None,
        };
        let Some(closing) = next else {
            track.repairing = false;
            return None;
        };
        let strikes = track.strike();
        if strikes > MAX_STRIKES {
            track.repairing = false;
            track.given_up = true;
            tracing::warn!(relay = %url, subscription = %id, strikes,
                "could not re-establish the subscription; no more re-subscriptions there");
            return None;
        }
        Some(Step {
            closing,
            delay: backoff(closing, strikes).max(if failed {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            }),
        })
    }
}

/// Starts the watcher. `notes` must be subscribed before the first REQ goes out, so no `CLOSED`
/// can slip past. `page` is the catch-up page size.
pub(super) fn spawn(
    client: Client,
    registry: Arc<Registry>,
    notes: broadcast::Receiver<RelayPoolNotification>,
    page: usize,
) -> JoinHandle<()> {
    tokio::spawn(watch(client, registry, notes, page))
}

async fn watch(
    client: Client,
    registry: Arc<Registry>,
    mut notes: broadcast::Receiver<RelayPoolNotification>,
    page: usize,
) {
    // Repairs run beside the watcher so it keeps reading (and tracking) while they page; the
    // set is dropped with this task, which aborts them.
    let mut repairs = JoinSet::new();
    loop {
        let note = tokio::select! {
            note = notes.recv() => note,
            Some(_) = repairs.join_next(), if !repairs.is_empty() => continue,
        };
        match note {
            Ok(RelayPoolNotification::Message { relay_url, message }) => match message {
                RelayMessage::Event {
                    subscription_id,
                    event,
                } => registry.saw(&subscription_id, &relay_url, event.created_at),
                RelayMessage::Closed {
                    subscription_id,
                    message,
                } => {
                    let closing = Closing::of(&message);
                    let id = subscription_id.into_owned();
                    if closing == Closing::Final && registry.plan(&id, &relay_url).is_some() {
                        tracing::warn!(relay = %relay_url, subscription = %id, reason = %message,
                            "relay closed the subscription; not retrying");
                    }
                    if let Some(step) = registry.closed(&id, &relay_url, closing) {
                        let repair = Repair {
                            client: client.clone(),
                            registry: registry.clone(),
                            id,
                            url: relay_url,
                            reason: message.into_owned(),
                            page,
                        };
                        repairs.spawn(repair.run(step));
                    }
                }
                _ => {}
            },
            Ok(RelayPoolNotification::Shutdown) | Err(RecvError::Closed) => break,
            Ok(RelayPoolNotification::Event { .. }) => {}
            Err(RecvError::Lagged(n)) => {
                // A CLOSED may be among the lost messages: ask each relay what it still holds.
                tracing::warn!(
                    lost = n,
                    "subscription watcher lagged; checking subscriptions on every relay"
                );
                for (id, url) in vanished(&client, &registry).await {
                    if let Some(step) = registry.closed(&id, &url, Closing::Vanished) {
                        let repair = Repair {
                            client: client.clone(),
                            registry: registry.clone(),
                            id,
                            url,
                            reason: "not held by the relay after missed messages".into(),
                            page,
                        };
                        repairs.spawn(repair.run(step));
                    }
                }
            }
        }
    }
}

/// Recorded subscriptions a connected relay no longer holds (nostr-sdk removed them on a
/// `CLOSED` we did not read).
async fn vanished(client: &Client, registry: &Registry) -> Vec<(SubscriptionId, RelayUrl)> {
    let ids = registry.ids();
    let mut found = Vec::new();
    for (url, relay) in client.relays().await {
        if !relay.is_connected() {
            // nostr-sdk re-sends what it holds when it reconnects.
            continue;
        }
        for id in &ids {
            if relay.subscription(id).await.is_none() && registry.may_have_vanished(id, &url) {
                found.push((id.clone(), url.clone()));
            }
        }
    }
    found
}

/// Re-establishes one subscription on one relay.
struct Repair {
    client: Client,
    registry: Arc<Registry>,
    id: SubscriptionId,
    url: RelayUrl,
    reason: String,
    page: usize,
}

impl Repair {
    async fn run(self, mut step: Step) {
        loop {
            if !step.delay.is_zero() {
                tokio::time::sleep(step.delay).await;
            }
            // The role may have unsubscribed while we waited.
            let Some((filters, newest)) = self.registry.plan(&self.id, &self.url) else {
                return;
            };
            let filters = resume_filters(&filters, newest);
            let failed = match self.reestablish(&filters).await {
                Ok(caught_up) => {
                    // A filter without `since` is read from the beginning (`None` sorts first).
                    let from = filters.iter().map(|f| f.since).min().flatten();
                    tracing::info!(
                        "relay {} closed subscription {} ({}: {}); re-subscribed from {}, caught up {} events",
                        self.url,
                        self.id,
                        step.closing.describe(),
                        self.reason,
                        from.map_or_else(|| "the beginning".to_string(), |t| t.to_string()),
                        caught_up,
                    );
                    false
                }
                Err(why) => {
                    tracing::warn!(relay = %self.url, subscription = %self.id, error = %why,
                        "could not re-establish the subscription; will retry");
                    true
                }
            };
            match self.registry.finish(&self.id, &self.url, failed) {
                Some(next) => step = next,
                None => return,
            }
        }
    }

    /// Sends the REQ again, then pages what was missed; returns how many distinct stored events
    /// the catch-up fetched.
    async fn reestablish(&self, filters: &[Filter]) -> Result<usize, String> {
        let relay = self
            .client
            .relay(&self.url)
            .await
            .map_err(|e| e.to_string())?;
        // Live delivery first, so nothing falls between the catch-up's newest page and the REQ.
        relay
            .subscribe_with_id(
                self.id.clone(),
                filters.to_vec(),
                SubscribeOptions::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut fetched = HashSet::new();
        for filter in filters {
            catch_up(&relay, filter, self.page, &mut fetched).await?;
        }
        Ok(fetched.len())
    }
}

/// The filters with `since` moved up to [`RESUME_MARGIN`] before the newest `created_at`
/// already delivered (never down: a filter's own `since` stays when it is later).
pub(super) fn resume_filters(filters: &[Filter], newest: Option<Timestamp>) -> Vec<Filter> {
    let from = newest.map(|t| Timestamp::from(t.as_secs().saturating_sub(RESUME_MARGIN)));
    filters
        .iter()
        .map(|f| match from {
            Some(t) if f.since.is_none_or(|s| s < t) => f.clone().since(t),
            _ => f.clone(),
        })
        .collect()
}

/// Fetches every stored event matching `filter` from `relay`, newest page first, stepping
/// `until` down to the oldest `created_at` of each page. `until` is inclusive, so a page repeats
/// the events at its boundary second: that is what lets a second holding events on both sides of
/// a page boundary come through whole. A page with nothing new ends the walk; page length is no
/// signal, since relays cap `limit` below what we ask and nostr-sdk ends a fetch early when its
/// channel lags.
async fn catch_up(
    relay: &Relay,
    filter: &Filter,
    page: usize,
    fetched: &mut HashSet<EventId>,
) -> Result<(), String> {
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut until = filter.until;
    // The largest page this relay returned: its effective limit.
    let mut full = 0usize;
    for _ in 0..MAX_PAGES {
        let mut query = filter.clone().limit(page);
        if let Some(t) = until {
            query = query.until(t);
        }
        let events = fetch_page(relay, query).await?;
        full = full.max(events.len());
        let mut fresh = 0usize;
        let mut oldest: Option<Timestamp> = None;
        let mut all_at_until = true;
        for event in events.iter() {
            if seen.insert(event.id) {
                fresh += 1;
                fetched.insert(event.id);
            }
            oldest = Some(oldest.map_or(event.created_at, |o| o.min(event.created_at)));
            all_at_until &= Some(event.created_at) == until;
        }
        let Some(oldest) = oldest else {
            return Ok(());
        };
        if fresh > 0 {
            until = Some(oldest);
            continue;
        }
        // Nothing new. Done, unless a full page sat entirely in the boundary second: more
        // events share that second than one page holds, and `until` cannot split a second.
        if !(all_at_until && events.len() >= full) {
            return Ok(());
        }
        let floor = filter.since.unwrap_or(Timestamp::from(0));
        if oldest <= floor {
            return Ok(());
        }
        tracing::warn!(relay = %relay.url(), second = %oldest, page = full,
            "more events in one second than one page holds; some of them may stay missed");
        until = Some(oldest - 1);
    }
    tracing::warn!(relay = %relay.url(), pages = MAX_PAGES, page,
        "catch-up stopped at its page cap; older missed events were not fetched");
    Ok(())
}

/// One catch-up page, retried with a back-off when the relay closes it (a rate limit) or it
/// times out.
async fn fetch_page(relay: &Relay, query: Filter) -> Result<Events, String> {
    let mut why = String::new();
    for attempt in 0..PAGE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2u64 << attempt)).await;
        }
        let started = Instant::now();
        match relay
            .fetch_events(query.clone(), PAGE_TIMEOUT, ReqExitPolicy::ExitOnEOSE)
            .await
        {
            // nostr-sdk returns what it had when the timeout hit, as if complete.
            Ok(_) if started.elapsed() >= PAGE_TIMEOUT => why = "page timed out".into(),
            Ok(events) => return Ok(events),
            Err(e) => why = e.to_string(),
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::Kind;

    #[test]
    fn closes_are_read_by_their_prefix() {
        assert_eq!(
            Closing::of("error: subscriber too slow; re-subscribe with since"),
            Closing::TooSlow
        );
        assert_eq!(Closing::of("error: Too Slow"), Closing::TooSlow);
        assert_eq!(Closing::of("rate-limited: slow down"), Closing::RateLimited);
        assert_eq!(Closing::of("auth-required: who are you"), Closing::Auth);
        assert_eq!(Closing::of("error: shutting down"), Closing::Final);
        assert_eq!(Closing::of("blocked: too slow"), Closing::Final);
        assert_eq!(Closing::of("too slow"), Closing::Final);
        assert_eq!(Closing::of(""), Closing::Final);
    }

    #[test]
    fn backoff_answers_a_first_slow_close_at_once_and_grows() {
        assert_eq!(backoff(Closing::TooSlow, 1), Duration::ZERO);
        assert_eq!(backoff(Closing::TooSlow, 2), Duration::from_secs(2));
        assert_eq!(backoff(Closing::RateLimited, 1), Duration::from_secs(2));
        assert_eq!(backoff(Closing::RateLimited, 2), Duration::from_secs(4));
        assert_eq!(backoff(Closing::RateLimited, 40), MAX_BACKOFF);
    }

    #[test]
    fn catch_up_pages_fit_the_notification_channels() {
        use super::super::{
            NODE_NOTIFICATION_BUFFER, NOTIFICATION_BUFFER, WALLET_NOTIFICATION_BUFFER,
        };
        assert_eq!(NOTIFICATION_BUFFER.catch_up_page(), 1_024);
        assert_eq!(NODE_NOTIFICATION_BUFFER.catch_up_page(), 128);
        assert_eq!(WALLET_NOTIFICATION_BUFFER.catch_up_page(), 64);
    }

    #[test]
    fn resume_moves_since_up_never_down() {
        let late = Filter::new()
            .kind(Kind::from(1))
            .since(Timestamp::from(500));
        let early = Filter::new().kind(Kind::from(2)).since(Timestamp::from(10));
        let open = Filter::new().kind(Kind::from(3));
        let got = resume_filters(
            &[late.clone(), early, open.clone()],
            Some(Timestamp::from(100 + RESUME_MARGIN)),
        );
        assert_eq!(got[0].since, Some(Timestamp::from(500)));
        assert_eq!(got[1].since, Some(Timestamp::from(100)));
        assert_eq!(got[2].since, Some(Timestamp::from(100)));
        // Near the epoch the margin stops at zero.
        let got = resume_filters(std::slice::from_ref(&open), Some(Timestamp::from(3)));
        assert_eq!(got[0].since, Some(Timestamp::from(0)));
        let untouched = resume_filters(&[late.clone(), open.clone()], None);
        assert_eq!(untouched, vec![late, open]);
    }

    #[test]
    fn registry_runs_one_repair_per_relay_and_gives_up_on_final_reasons() {
        let registry = Registry::default();
        let id = SubscriptionId::new("s");
        let url = RelayUrl::parse("ws://127.0.0.1:1").expect("url");
        // Unrecorded subscriptions are none of our business.
        assert!(registry.closed(&id, &url, Closing::TooSlow).is_none());
        registry.record(id.clone(), vec![Filter::new().kind(Kind::from(1))]);
        registry.saw(&id, &url, Timestamp::from(7));
        registry.saw(&id, &url, Timestamp::from(5));
        let step = registry
            .closed(&id, &url, Closing::TooSlow)
            .expect("repair");
        assert_eq!(step.delay, Duration::ZERO);
        // A second close while repairing queues a second pass instead of a second task.
        assert!(registry.closed(&id, &url, Closing::TooSlow).is_none());
        let (_, newest) = registry.plan(&id, &url).expect("recorded");
        assert_eq!(newest, Some(Timestamp::from(7)));
        let again = registry.finish(&id, &url, false).expect("another pass");
        assert!(again.delay > Duration::ZERO, "a streak backs off");
        assert!(registry.finish(&id, &url, false).is_none());
        // A final reason stops retries for good on that relay.
        assert!(registry.closed(&id, &url, Closing::Final).is_none());
        assert!(registry.closed(&id, &url, Closing::TooSlow).is_none());
        assert!(!registry.may_have_vanished(&id, &url));
        registry.forget(&id);
        assert!(registry.plan(&id, &url).is_none());
        assert_eq!(registry.len(), 0);
    }
}
