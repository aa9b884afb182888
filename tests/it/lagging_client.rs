//! A client that falls behind its relay channel in a burst (nostr-sdk's per-relay broadcast
//! channel lags) neither fails publishes the relay stored ("premature exit") nor takes part of
//! a look-up's answer for all of it. Both were nostr-relay-pool 0.44.3 behaviour; see
//! relay/vendor/nostr-relay-pool/PYLON-PATCH.md.

use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::{EventBuilder, Filter, Keys, Kind, Timestamp};
use pylon::relay::client::Buffers;
use pylon::relay::{MarketClient, Reachability};

/// The smallest relay channel nostr-sdk takes, so a burst overruns it.
const TINY: Buffers = Buffers {
    pool: 64,
    relay: Some(16),
};

async fn lagging_client(url: &nostr_sdk::RelayUrl, keys: &Keys) -> MarketClient {
    MarketClient::connect_buffered(
        keys.clone(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
        TINY,
    )
    .await
    .expect("connect")
}

fn note(keys: &Keys, i: usize, at: u64) -> nostr_sdk::Event {
    EventBuilder::new(Kind::from(1), format!("burst {i}"))
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_succeed_while_a_burst_overruns_the_clients_channel() {
    let (relay, _dir) =
        crate::relay_protocol::start("events_per_second = 100000\nevent_burst = 100000").await;
    let url = relay.url();
    let me = Keys::generate();
    let client = Arc::new(lagging_client(&url, &me).await);
    // Everything kind 1, live: the flood below goes through this client's relay channel.
    client
        .subscribe(Filter::new().kind(Kind::from(1)).since(Timestamp::now()))
        .await
        .expect("subscribe");
    let flooder = Keys::generate();
    let flood = tokio::spawn({
        let url = url.to_string();
        async move {
            let mut raw = crate::common::RawClient::connect(&url).await;
            let now = Timestamp::now().as_secs();
            for i in 0..6_000 {
                raw.send(serde_json::json!(["EVENT", note(&flooder, i, now)]))
                    .await;
            }
            raw
        }
    });
    let now = Timestamp::now().as_secs();
    let mut mine = Vec::new();
    for i in 0..40 {
        let ev = note(&me, i, now);
        let sent = client.publish(&ev).await;
        assert!(sent.is_ok(), "publish {i} failed under a burst: {sent:?}");
        mine.push(ev.id);
    }
    let _raw = flood.await.expect("flood");
    // And every one of them is on the relay, by a complete look-up once the flood has drained
    // (while it still arrives, the client's channel lags and look-ups say they are incomplete).
    let mut stored = None;
    for _ in 0..60 {
        match client
            .fetch_complete(Filter::new().ids(mine.clone()), Duration::from_secs(10))
            .await
        {
            Ok(found) => {
                stored = Some(found);
                break;
            }
            Err(e) => {
                eprintln!("look-up not complete yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    assert_eq!(stored.expect("a complete look-up").len(), mine.len());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_look_up_is_all_of_the_answer_or_an_error() {
    let (relay, _dir) = crate::relay_protocol::start(
        "events_per_second = 100000\nevent_burst = 100000\nmax_filter_limit = 10000",
    )
    .await;
    let url = relay.url();
    let author = Keys::generate();
    let mut raw = crate::common::RawClient::connect(url.as_str()).await;
    let now = Timestamp::now().as_secs();
    const N: usize = 3_000;
    for i in 0..N {
        let ok = raw.publish(&note(&author, i, now - (i as u64 % 50))).await;
        assert_eq!(ok[2], true, "{ok}");
    }
    let client = lagging_client(&url, &Keys::generate()).await;
    let filter = Filter::new().author(author.public_key()).limit(N);
    let (mut whole, mut refused) = (0, 0);
    for _ in 0..5 {
        match client
            .fetch_complete(filter.clone(), Duration::from_secs(30))
            .await
        {
            Ok(events) => {
                assert_eq!(
                    events.len(),
                    N,
                    "an answer taken as complete has every event"
                );
                whole += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("look-up"), "{e}");
                refused += 1;
            }
        }
    }
    eprintln!("complete answers {whole}, refused as incomplete {refused}");
    // The best-effort fetch still returns whatever arrived, never more than there is.
    let some = client
        .fetch(filter, Duration::from_secs(30))
        .await
        .expect("fetch");
    assert!(some.len() <= N);
    relay.shutdown().await;
}
