//! The embedded relay configured like a public relay (issue 14): refused kinds, ephemeral events
//! never stored, idle connections closed, subscription caps. Real relay, raw WebSocket, so the
//! test sees exactly what a client of a public relay would.

use std::time::Duration;

use futures_util::SinkExt;
use nostr_sdk::{Event, EventBuilder, Keys, Kind};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::common::RawClient;
use crate::relay_hardening::reason;
use crate::relay_protocol::start;

fn event(keys: &Keys, kind: u16, content: &str) -> Event {
    EventBuilder::new(Kind::from(kind), content)
        .sign_with_keys(keys)
        .expect("sign")
}

#[tokio::test]
async fn denied_kinds_are_blocked_and_the_deny_list_wins_over_the_allow_list() {
    let (relay, _dir) = start("allow_kinds = [1, 7]\ndeny_kinds = [7, 5960]").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let ok = c.publish(&event(&keys, 1, "allowed")).await;
    assert_eq!(ok[2], true, "{ok}");
    for kind in [7, 5960] {
        let ok = c.publish(&event(&keys, kind, "denied")).await;
        assert_eq!(ok[2], false, "{ok}");
        assert!(
            reason(&ok).starts_with(&format!("blocked: kind {kind} refused")),
            "{ok}"
        );
    }
    // Not on the allow list: blocked too, with the allow list's reason.
    let ok = c.publish(&event(&keys, 5, "unlisted")).await;
    assert!(
        reason(&ok).starts_with("blocked: kind 5 not accepted"),
        "{ok}"
    );
    // Nothing refused was stored; the connection still serves.
    let stored = c
        .query("mine", json!({"authors": [keys.public_key().to_hex()]}))
        .await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    // Deny alone (no allow list): everything else passes.
    let (relay, _dir) = start("deny_kinds = [5050]").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    assert_eq!(c.publish(&event(&keys, 5960, "job")).await[2], true);
    assert_eq!(c.publish(&event(&keys, 5050, "job")).await[2], false);
}

#[tokio::test]
async fn ephemeral_kinds_at_both_ends_of_the_range_are_never_stored() {
    let (relay, _dir) = start("").await;
    let mut listener = RawClient::connect(relay.url().as_str()).await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    listener
        .send(json!(["REQ", "live", {"kinds": [19999, 20000, 29999, 30000]}]))
        .await;
    assert_eq!(listener.recv().await, json!(["EOSE", "live"]));
    let keys = Keys::generate();
    let mut published = Vec::new();
    for kind in [20000, 29999, 19999, 30000] {
        let ev = event(&keys, kind, "x");
        let ok = c.publish(&ev).await;
        assert_eq!(ok[2], true, "kind {kind}: {ok}");
        published.push(ev.id.to_hex());
    }
    // Every one reached the live subscriber...
    let mut live = Vec::new();
    while live.len() < 4 {
        let msg = listener.recv().await;
        if msg[0] == "EVENT" {
            live.push(msg[2]["id"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(live, published);
    // ...but only the replaceable (19999) and addressable (30000) ones are stored.
    let stored = c
        .query("after", json!({"authors": [keys.public_key().to_hex()]}))
        .await;
    let mut kinds: Vec<u64> = stored.iter().filter_map(|e| e["kind"].as_u64()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, vec![19999, 30000]);
}

#[tokio::test]
async fn an_idle_connection_is_told_and_closed_and_pings_keep_one_open() {
    let (relay, _dir) = start("idle_timeout_secs = 2").await;
    let mut silent = RawClient::connect(relay.url().as_str()).await;
    let (mut pinger, _) = tokio_tungstenite::connect_async(relay.url().as_str())
        .await
        .expect("connect");
    // The pinger pings every 200 ms (well inside 2 s) while the silent client waits.
    let pinging = tokio::spawn(async move {
        for _ in 0..20 {
            pinger
                .send(Message::Ping(b"hi".to_vec().into()))
                .await
                .expect("ping");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pinger
    });
    // The silent client hears why, then gets a close frame (the wait is generous: a loaded machine).
    let notice = silent
        .recv_within(Duration::from_secs(60))
        .await
        .expect("a NOTICE before the close");
    assert_eq!(notice[0], "NOTICE", "{notice}");
    assert!(reason(&notice).starts_with("idle: "), "{notice}");
    assert_eq!(silent.close_code().await, Some(CloseCode::Away));
    // The pinger is still served.
    let pinger = pinging.await.expect("pinger");
    let mut pinger = RawClient::from_stream(pinger);
    assert!(pinger.query("alive", json!({"limit": 1})).await.len() <= 1);

    // A new connection that only publishes is also active, and is answered.
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let ok = c.publish(&event(&Keys::generate(), 1, "hello")).await;
    assert_eq!(ok[2], true, "{ok}");
}

#[tokio::test]
async fn subscriptions_beyond_the_cap_are_closed_with_a_prefix() {
    let (relay, _dir) = start("max_subscriptions = 2").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    for id in ["a", "b"] {
        c.send(json!(["REQ", id, {"kinds": [1]}])).await;
        assert_eq!(c.recv().await, json!(["EOSE", id]));
    }
    // Re-using an open id replaces that subscription: not a third one.
    c.send(json!(["REQ", "b", {"kinds": [7]}])).await;
    assert_eq!(c.recv().await, json!(["EOSE", "b"]));
    c.send(json!(["REQ", "c", {"kinds": [1]}])).await;
    let msg = c.recv().await;
    assert_eq!((&msg[0], &msg[1]), (&json!("CLOSED"), &json!("c")), "{msg}");
    assert!(
        reason(&msg).starts_with("rate-limited: too many open subscriptions (max 2)"),
        "{msg}"
    );
    // Closing one makes room.
    c.send(json!(["CLOSE", "a"])).await;
    c.send(json!(["REQ", "c", {"kinds": [1]}])).await;
    assert_eq!(c.recv().await, json!(["EOSE", "c"]));
}
