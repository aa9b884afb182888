//! Self-healing subscriptions against a scripted third-party relay: a relay that drops a slow
//! subscriber with `CLOSED "error: … too slow …"` gets the same REQ back with `since`, and the
//! subscriber still receives every event it missed, even many pages of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nostr_sdk::prelude::MatchEventOptions;
use nostr_sdk::{
    Event, EventBuilder, EventId, Filter, JsonUtil, Keys, Kind, RelayPoolNotification, RelayUrl,
    SubscriptionId, Timestamp,
};
use pylon::relay::{MarketClient, Reachability};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOO_SLOW: &str = "error: subscriber too slow; re-subscribe with since";
/// The most events the scripted relay returns for one filter, like a public relay's cap.
const PAGE_LIMIT: usize = 500;

/// A REQ the scripted relay received.
#[derive(Debug, Clone)]
struct Req {
    id: String,
    filters: Vec<Filter>,
    /// Its place among all REQs on the relay, from 0.
    seq: usize,
    /// How many REQs with this id came so far, this one included.
    nth: usize,
    at: Instant,
}

/// What the scripted relay does with a REQ.
enum Reply {
    /// EOSE, then `events` as live traffic, then `CLOSED` with the message.
    LiveThenClose(Vec<Event>, String),
    /// `CLOSED` with the message at once.
    Close(String),
    /// The stored events matching the filters (newest first, at most [`PAGE_LIMIT`] per
    /// filter), then EOSE.
    Stored,
}

type Script = dyn Fn(&Req) -> Reply + Send + Sync;

struct ScriptedRelay {
    url: RelayUrl,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl ScriptedRelay {
    /// Serves `stored` and answers each REQ as `script` says. `on_close`: the `CLOSED` message
    /// it answers a client's `CLOSE` with, if any (some relays do).
    async fn start(
        stored: Vec<Event>,
        script: impl Fn(&Req) -> Reply + Send + Sync + 'static,
        on_close: Option<&'static str>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = RelayUrl::parse(&format!("ws://{}", listener.local_addr().expect("addr")))
            .expect("url");
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let stored = Arc::new(stored);
        let script: Arc<Script> = Arc::new(script);
        let log = reqs.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(
                    tcp,
                    stored.clone(),
                    script.clone(),
                    log.clone(),
                    on_close,
                ));
            }
        });
        Self { url, reqs }
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().expect("reqs").clone()
    }

    fn reqs_for(&self, id: &SubscriptionId) -> Vec<Req> {
        self.reqs()
            .into_iter()
            .filter(|r| r.id == id.as_str())
            .collect()
    }

    /// Waits until `pred` holds for the REQs received, or panics after `wait`.
    async fn wait_for(&self, wait: Duration, what: &str, pred: impl Fn(&[Req]) -> bool) {
        let deadline = Instant::now() + wait;
        while !pred(&self.reqs()) {
            assert!(Instant::now() < deadline, "{what}; REQs: {:?}", self.reqs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    stored: Arc<Vec<Event>>,
    script: Arc<Script>,
    log: Arc<Mutex<Vec<Req>>>,
    on_close: Option<&'static str>,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let Some(id) = frame.get(1).and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let mut out: Vec<Value> = Vec::new();
        match frame.first().and_then(Value::as_str) {
            Some("REQ") => {
                let filters: Vec<Filter> = frame[2..]
                    .iter()
                    .filter_map(|f| Filter::from_json(f.to_string()).ok())
                    .collect();
                let req = {
                    let mut log = log.lock().expect("log");
                    let req = Req {
                        nth: log.iter().filter(|r| r.id == id).count() + 1,
                        seq: log.len(),
                        id: id.clone(),
                        filters,
                        at: Instant::now(),
                    };
                    log.push(req.clone());
                    req
                };
                match script(&req) {
                    Reply::LiveThenClose(events, why) => {
                        out.push(json!(["EOSE", id]));
                        out.extend(events.iter().map(|e| json!(["EVENT", id, e])));
                        out.push(json!(["CLOSED", id, why]));
                    }
                    Reply::Close(why) => out.push(json!(["CLOSED", id, why])),
                    Reply::Stored => {
                        out.extend(
                            query(&stored, &req.filters)
                                .into_iter()
                                .map(|e| json!(["EVENT", id, e])),
                        );
                        out.push(json!(["EOSE", id]));
                    }
                }
            }
            Some("CLOSE") => {
                if let Some(why) = on_close {
                    out.push(json!(["CLOSED", id, why]));
                }
            }
            _ => {}
        }
        for msg in out {
            if ws.feed(Message::text(msg.to_string())).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// What a relay answers `filters` with: per filter the newest [`PAGE_LIMIT`] (or its own
/// smaller limit) matches, by `created_at` descending then id ascending, merged.
fn query<'a>(stored: &'a [Event], filters: &[Filter]) -> Vec<&'a Event> {
    let mut picked: HashMap<EventId, &Event> = HashMap::new();
    for filter in filters {
        let mut matches: Vec<&Event> = stored
            .iter()
            .filter(|e| filter.match_event(e, MatchEventOptions::new()))
            .collect();
        matches.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        let limit = filter.limit.unwrap_or(PAGE_LIMIT).min(PAGE_LIMIT);
        picked.extend(matches.into_iter().take(limit).map(|e| (e.id, e)));
    }
    let mut out: Vec<&Event> = picked.into_values().collect();
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    out
}

async fn connect(url: &RelayUrl) -> MarketClient {
    MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("connect to the scripted relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_slow_close_resubscribes_with_since_and_catches_up_every_missed_event() {
    const TOTAL: usize = 3_000;
    const LIVE: usize = 100;
    let author = Keys::generate();
    let base = Timestamp::now().as_secs() - 10_000;
    // Three events per second, so page boundaries fall inside seconds.
    let events: Vec<Event> = (0..TOTAL)
        .map(|i| {
            EventBuilder::text_note(format!("note {i}"))
                .custom_created_at(Timestamp::from(base + i as u64 / 3))
                .sign_with_keys(&author)
                .expect("sign")
        })
        .collect();
    let live: Vec<Event> = events[..LIVE].to_vec();
    let last_live = live[LIVE - 1].created_at;
    // Re-subscriptions start a margin before the newest event delivered (relays need not
    // deliver in created_at order).
    let resume = Timestamp::from(last_live.as_secs() - pylon::relay::client::RESUME_MARGIN);
    let relay = ScriptedRelay::start(
        events.clone(),
        move |req: &Req| {
            if req.seq == 0 {
                // The subscriber's own REQ: 100 live events, then it falls "too far behind"
                // while the other 2,900 are stored.
                Reply::LiveThenClose(live.clone(), TOO_SLOW.into())
            } else {
                Reply::Stored
            }
        },
        None,
    )
    .await;

    let client = connect(&relay.url).await;
    let mut notes = client.notifications();
    let id = client
        .subscribe(
            Filter::new()
                .kind(Kind::TextNote)
                .author(author.public_key())
                .since(Timestamp::from(base)),
        )
        .await
        .expect("subscribe");

    let want: HashSet<EventId> = events.iter().map(|e| e.id).collect();
    let mut got: HashSet<EventId> = HashSet::new();
    let mut deliveries = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < TOTAL {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notes.recv()).await {
            Ok(Ok(RelayPoolNotification::Event { event, .. })) => {
                if event.pubkey == author.public_key() {
                    deliveries += 1;
                    got.insert(event.id);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("notification channel: {e}"),
            Err(_) => panic!(
                "only {} of {TOTAL} events arrived in 60 s; REQs: {:?}",
                got.len(),
                relay.reqs().len()
            ),
        }
    }
    assert_eq!(got, want, "every event, the missed ones included");

    let again = relay.reqs_for(&id);
    assert!(
        again.len() >= 2,
        "re-subscribed with the same id: {again:?}"
    );
    let resub = &again[1];
    assert_eq!(resub.filters.len(), 1);
    assert_eq!(
        resub.filters[0].since,
        Some(resume),
        "since = the newest created_at delivered before the close, less the margin"
    );
    assert_eq!(
        resub.filters[0].until, None,
        "the re-subscription stays live"
    );
    assert_eq!(resub.filters[0].kinds, Some([Kind::TextNote].into()));
    // The 2,900 missed events need several capped pages, walked backwards with `until`.
    let pages: Vec<Req> = relay
        .reqs()
        .into_iter()
        .filter(|r| r.id != id.as_str())
        .collect();
    let paged = pages
        .iter()
        .filter(|r| r.filters.iter().any(|f| f.until.is_some()))
        .count();
    assert!(
        paged >= (TOTAL - LIVE) / PAGE_LIMIT,
        "paged with until: {paged} of {} fetches",
        pages.len()
    );
    assert!(
        pages
            .iter()
            .all(|r| r.filters.iter().all(|f| f.since == Some(resume))),
        "the catch-up stays above what was already delivered, but for the margin"
    );

    // nostr-sdk drops ids it has seen: each missed event reached the role once, though the
    // re-subscription and the pages overlap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(note) = notes.try_recv() {
        if let RelayPoolNotification::Event { event, .. } = note {
            if event.pubkey == author.public_key() {
                deliveries += 1;
            }
        }
    }
    assert_eq!(deliveries, TOTAL, "no event delivered twice");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_for_another_reason_is_not_retried() {
    let blocked_kind = Kind::from(1);
    let slow_kind = Kind::from(7);
    let relay = ScriptedRelay::start(
        Vec::new(),
        move |req: &Req| {
            let kind_is = |k: Kind| {
                req.filters
                    .iter()
                    .any(|f| f.kinds.as_ref().is_some_and(|ks| ks.contains(&k)))
            };
            match req.nth {
                1 if kind_is(blocked_kind) => Reply::Close("blocked: not on the list".into()),
                1 if kind_is(slow_kind) => Reply::LiveThenClose(Vec::new(), TOO_SLOW.into()),
                _ => Reply::Stored,
            }
        },
        None,
    )
    .await;
    let client = connect(&relay.url).await;
    let now = Timestamp::now();
    let blocked = client
        .subscribe(Filter::new().kind(blocked_kind).since(now))
        .await
        .expect("subscribe");
    let slow = client
        .subscribe(Filter::new().kind(slow_kind).since(now))
        .await
        .expect("subscribe");
    // The slow one coming back proves the watcher read both closes (the blocked one first).
    relay
        .wait_for(
            Duration::from_secs(10),
            "the too-slow subscription came back",
            |reqs| reqs.iter().filter(|r| r.id == slow.as_str()).count() >= 2,
        )
        .await;
    let resub = &relay.reqs_for(&slow)[1];
    assert_eq!(
        resub.filters[0].since,
        Some(now),
        "nothing delivered yet: the original since"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        relay.reqs_for(&blocked).len(),
        1,
        "a blocked: close is final"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_close_is_retried_after_a_back_off() {
    let relay = ScriptedRelay::start(
        Vec::new(),
        |req: &Req| match req.seq {
            0 => Reply::Close("rate-limited: slow down".into()),
            _ => Reply::Stored,
        },
        None,
    )
    .await;
    let client = connect(&relay.url).await;
    let id = client
        .subscribe(Filter::new().kind(Kind::from(1)).since(Timestamp::now()))
        .await
        .expect("subscribe");
    relay
        .wait_for(
            Duration::from_secs(15),
            "the rate-limited subscription came back",
            |reqs| reqs.iter().filter(|r| r.id == id.as_str()).count() >= 2,
        )
        .await;
    let reqs = relay.reqs_for(&id);
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        waited >= Duration::from_millis(1_500),
        "retried after a back-off, not at once: {waited:?}"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribed_subscription_is_not_revived() {
    // This relay answers a client's CLOSE with a too-slow CLOSED, the worst case for a record
    // forgotten too late.
    let relay = ScriptedRelay::start(Vec::new(), |_: &Req| Reply::Stored, Some(TOO_SLOW)).await;
    let client = connect(&relay.url).await;
    let id = client
        .subscribe(Filter::new().kind(Kind::from(1)).since(Timestamp::now()))
        .await
        .expect("subscribe");
    relay
        .wait_for(Duration::from_secs(30), "the REQ arrived", |reqs| {
            !reqs.is_empty()
        })
        .await;
    client.unsubscribe(&id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(relay.reqs_for(&id).len(), 1, "not re-subscribed");
    client.shutdown().await;
}
