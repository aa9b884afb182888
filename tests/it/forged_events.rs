//! A hostile relay re-uses the id of an event the process has already verified: other content,
//! another author or a bad signature under that id must never reach a role. (nostr-relay-pool
//! skipped every check for an id in its verification cache; see PYLON-PATCH.md, patch 4.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nostr_sdk::{Event, EventBuilder, Filter, JsonUtil, Keys, Kind, RelayUrl};
use pylon::relay::{MarketClient, Reachability};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A relay that answers a REQ for kind 1 with `events[limit - 1]`, then EOSE: the filter's
/// `limit` picks the answer (it does not change which events match, so the client has no
/// reason to ban the relay for sending them). Counts the REQs it answered.
async fn hostile_relay(events: Vec<Event>) -> (RelayUrl, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url =
        RelayUrl::parse(&format!("ws://{}", listener.local_addr().expect("addr"))).expect("url");
    let answered = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(events);
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (events, count) = (events.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text.as_str())
                    else {
                        continue;
                    };
                    if frame.first().and_then(Value::as_str) != Some("REQ") {
                        continue;
                    }
                    let id = frame[1].clone();
                    let pick = frame
                        .get(2)
                        .and_then(|f| Filter::from_json(f.to_string()).ok())
                        .and_then(|f| f.limit)
                        .and_then(|limit| events.get(limit.checked_sub(1)?));
                    let mut out = Vec::new();
                    if let Some(event) = pick {
                        out.push(json!(["EVENT", id, event]));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    out.push(json!(["EOSE", id]));
                    for msg in out {
                        if ws.send(Message::text(msg.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, answered)
}

async fn connect(url: &RelayUrl) -> MarketClient {
    MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .expect("connect to the hostile relay")
}

/// What `client` gets back when the relay answers with `events[pick - 1]`.
async fn fetch_pick(client: &MarketClient, pick: usize) -> Vec<Event> {
    client
        .fetch(
            Filter::new().kind(Kind::TextNote).limit(pick),
            Duration::from_secs(3),
        )
        .await
        .expect("the relay answers with EOSE")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_forged_under_a_verified_id_never_reach_the_client() {
    let author = Keys::generate();
    let genuine = EventBuilder::text_note("genuine: pay 1 sat")
        .sign_with_keys(&author)
        .expect("sign");
    let mut other_content = genuine.clone();
    other_content.content = "forged: pay 1,000,000 sats".into();
    let mut other_author = genuine.clone();
    other_author.pubkey = Keys::generate().public_key();
    // The author's real signature, but of another event: the content is the genuine one,
    // the bytes are not a valid event.
    let mut other_sig = genuine.clone();
    other_sig.sig = EventBuilder::text_note("something else")
        .sign_with_keys(&author)
        .expect("sign")
        .sig;
    for forged in [&other_content, &other_author, &other_sig] {
        assert_eq!(forged.id, genuine.id);
        assert!(forged.verify().is_err(), "the fixture is a forgery");
    }
    let (url, answered) = hostile_relay(vec![
        genuine.clone(),
        other_content,
        other_author,
        other_sig,
    ])
    .await;

    // The client verifies the genuine event (and caches that it did).
    let first = connect(&url).await;
    assert_eq!(fetch_pick(&first, 1).await, vec![genuine.clone()]);
    // Another client of the same process shares the cache: neither may be fooled.
    let second = connect(&url).await;
    for client in [&first, &second] {
        for pick in 2..=4 {
            let got = fetch_pick(client, pick).await;
            assert!(
                got.is_empty(),
                "forgery {pick} under a verified id was delivered: {got:?}"
            );
        }
        // The genuine event still comes through (from the cache or checked again).
        assert_eq!(fetch_pick(client, 1).await, vec![genuine.clone()]);
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1 + 2 * 4,
        "the relay really sent every forgery"
    );
    first.shutdown().await;
    second.shutdown().await;
}
