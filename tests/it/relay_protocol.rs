//! The NIP-01 behaviour the market depends on, checked against the embedded relay in-process with
//! a raw WebSocket client (so we see exactly what the relay sends).

use nostr_sdk::{Event, EventBuilder, Keys, Kind, Tag, Timestamp};
use pylon::relay::{EmbeddedRelay, RelaySettings};
use serde_json::{json, Value};

use crate::common::RawClient;

/// The embedded relay in-process on an ephemeral port, with `extra` `[relay]` settings.
pub(crate) async fn start(extra: &str) -> (EmbeddedRelay, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut table: toml::Table = extra.parse().expect("toml");
    table.insert("bind".into(), "127.0.0.1:0".into());
    let settings = RelaySettings::with_overrides(table).expect("settings");
    let relay = EmbeddedRelay::start(&settings, &dir.path().join("relay"))
        .await
        .expect("relay starts");
    (relay, dir)
}

fn event(keys: &Keys, kind: u16, content: &str, tags: Vec<Tag>, at: u64) -> Event {
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .expect("sign")
}

fn now() -> u64 {
    Timestamp::now().as_secs()
}

fn assert_ok(msg: &Value) {
    assert_eq!(msg[0], "OK");
    assert_eq!(msg[2], true, "relay refused: {msg}");
}

#[tokio::test]
async fn ok_for_every_event_including_ephemeral() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    for kind in [1, 5960, 7000, 20001, 23194, 23195, 31990] {
        let ev = event(&keys, kind, "x", vec![Tag::identifier("d")], now());
        assert_ok(&c.publish(&ev).await);
    }
}

#[tokio::test]
async fn limit_zero_gets_eose_and_nothing_else() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    for i in 0..3 {
        assert_ok(
            &c.publish(&event(&keys, 1, &format!("n{i}"), vec![], now()))
                .await,
        );
    }
    c.send(json!(["REQ", "z", {"limit": 0}])).await;
    let first = c.recv().await;
    assert_eq!(first, json!(["EOSE", "z"]));
    // And the subscription stays open for live events.
    assert_ok(&c.publish(&event(&keys, 1, "live", vec![], now())).await);
}

#[tokio::test]
async fn replaceable_and_addressable_events_are_replaced() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let t = now();
    let old_beat = event(&keys, 11998, "old", vec![], t - 10);
    let new_beat = event(&keys, 11998, "new", vec![], t);
    assert_ok(&c.publish(&old_beat).await);
    assert_ok(&c.publish(&new_beat).await);
    // An older version arriving late does not win.
    let stale = event(&keys, 11998, "stale", vec![], t - 20);
    c.publish(&stale).await;
    let got = c
        .query(
            "hb",
            json!({"kinds": [11998], "authors": [keys.public_key().to_hex()]}),
        )
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["content"], "new");

    let a1 = event(&keys, 31990, "v1", vec![Tag::identifier("svc")], t - 5);
    let a2 = event(&keys, 31990, "v2", vec![Tag::identifier("svc")], t);
    let other = event(&keys, 31990, "other", vec![Tag::identifier("svc2")], t);
    for e in [&a1, &a2, &other] {
        assert_ok(&c.publish(e).await);
    }
    let got = c
        .query(
            "ann",
            json!({"kinds": [31990], "authors": [keys.public_key().to_hex()]}),
        )
        .await;
    let mut contents: Vec<&str> = got.iter().filter_map(|e| e["content"].as_str()).collect();
    contents.sort_unstable();
    assert_eq!(contents, vec!["other", "v2"]);
}

#[tokio::test]
async fn deletion_by_e_and_a_tags_only_by_the_author() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let stranger = Keys::generate();
    let t = now();
    let note = event(&keys, 1, "delete me", vec![], t - 5);
    let ann = event(
        &keys,
        31990,
        "announce",
        vec![Tag::identifier("svc")],
        t - 5,
    );
    assert_ok(&c.publish(&note).await);
    assert_ok(&c.publish(&ann).await);
    let coordinate = format!("31990:{}:svc", keys.public_key().to_hex());

    // A stranger's deletion request changes nothing.
    let forged = event(
        &stranger,
        5,
        "",
        vec![
            Tag::event(note.id),
            Tag::parse(["a", coordinate.as_str()]).expect("tag"),
        ],
        t - 1,
    );
    c.publish(&forged).await;
    assert_eq!(
        c.query("q0", json!({"ids": [note.id.to_hex()]}))
            .await
            .len(),
        1
    );
    assert_eq!(
        c.query(
            "q1",
            json!({"kinds": [31990], "authors": [keys.public_key().to_hex()]})
        )
        .await
        .len(),
        1
    );

    let by_e = event(&keys, 5, "", vec![Tag::event(note.id)], t);
    assert_ok(&c.publish(&by_e).await);
    assert!(c
        .query("q2", json!({"ids": [note.id.to_hex()]}))
        .await
        .is_empty());

    let by_a = event(
        &keys,
        5,
        "",
        vec![Tag::parse(["a", coordinate.as_str()]).expect("tag")],
        t,
    );
    assert_ok(&c.publish(&by_a).await);
    assert!(c
        .query(
            "q3",
            json!({"kinds": [31990], "authors": [keys.public_key().to_hex()]})
        )
        .await
        .is_empty());
    // The deleted event cannot be re-published.
    let again = c.publish(&note).await;
    assert_eq!(again[2], false, "{again}");
}

#[tokio::test]
async fn ephemeral_events_are_relayed_live_but_never_stored() {
    let (relay, _dir) = start("").await;
    let mut listener = RawClient::connect(relay.url().as_str()).await;
    let mut sender = RawClient::connect(relay.url().as_str()).await;
    listener
        .send(json!(["REQ", "live", {"kinds": [23194]}]))
        .await;
    assert_eq!(listener.recv().await, json!(["EOSE", "live"]));
    let keys = Keys::generate();
    let ev = event(&keys, 23194, "wallet request", vec![], now());
    assert_ok(&sender.publish(&ev).await);
    let got = listener.recv().await;
    assert_eq!(got[0], "EVENT");
    assert_eq!(got[2]["id"], ev.id.to_hex());
    assert!(sender
        .query("later", json!({"kinds": [23194]}))
        .await
        .is_empty());
}

#[tokio::test]
async fn nip11_document_with_cors() {
    let (relay, _dir) = start("min_pow_job_requests = 4").await;
    let http = format!("http://{}", relay.local_addr());
    let client = reqwest::Client::new();
    let resp = client
        .get(&http)
        .header("Accept", "application/nostr+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers().contains_key("access-control-allow-headers"));
    assert!(resp.headers().contains_key("access-control-allow-methods"));
    assert_eq!(resp.headers()["content-type"], "application/nostr+json");
    let doc: Value = resp.json().await.expect("json");
    assert_eq!(doc["name"], "pylon");
    let nips: Vec<u64> = doc["supported_nips"]
        .as_array()
        .expect("nips")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    for nip in [1, 9, 11, 13] {
        assert!(nips.contains(&nip), "NIP-{nip} in {nips:?}");
    }
    assert!(
        doc["limitation"]["max_content_length"]
            .as_u64()
            .expect("limit")
            >= 128 * 1024
    );
    assert_eq!(doc["limitation"]["restricted_writes"], true);

    let preflight = client
        .request(reqwest::Method::OPTIONS, &http)
        .header("Origin", "https://example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .expect("OPTIONS");
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    // A browser without the Accept header gets a short explanation, not a protocol error.
    let page = client
        .get(&http)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(page.contains("Pylon"), "{page}");
}

#[tokio::test]
async fn large_events_fit_and_oversized_ones_are_refused() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let file_job = event(&keys, 5960, &"x".repeat(200 * 1024), vec![], now());
    assert_ok(&c.publish(&file_job).await);
    let huge = event(&keys, 5960, &"x".repeat(600 * 1024), vec![], now());
    let refused = c.publish(&huge).await;
    assert_eq!(refused[2], false);
    assert!(
        refused[3].as_str().expect("reason").contains("too large"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_flood_is_rate_limited_per_connection() {
    let (relay, _dir) = start("events_per_second = 1\nevent_burst = 5").await;
    let mut flooder = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..10 {
        let msg = flooder
            .publish(&event(&keys, 1, &format!("{i}"), vec![], now()))
            .await;
        if msg[2] == true {
            accepted += 1;
        } else {
            assert!(
                msg[3].as_str().expect("reason").contains("rate-limited"),
                "{msg}"
            );
            limited += 1;
        }
    }
    // At 1 token/s a quick loop gets the burst plus at most the few tokens refilled meanwhile.
    assert!((5..=7).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + limited, 10);
    // A polite client on its own connection is unaffected.
    let mut polite = RawClient::connect(relay.url().as_str()).await;
    assert_ok(
        &polite
            .publish(&event(&keys, 1, "hello", vec![], now()))
            .await,
    );
}

#[tokio::test]
async fn job_requests_need_proof_of_work_when_configured() {
    let (relay, _dir) = start("min_pow_job_requests = 8").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let keys = Keys::generate();
    let unmined = (0..)
        .map(|i| event(&keys, 5960, &format!("job {i}"), vec![], now()))
        .find(|e| !e.id.check_pow(8))
        .expect("an event without work");
    let refused = c.publish(&unmined).await;
    assert_eq!(refused[2], false);
    assert!(
        refused[3].as_str().expect("reason").contains("pow"),
        "{refused}"
    );
    let mined = EventBuilder::new(Kind::from(5960), "job")
        .pow(8)
        .sign_with_keys(&keys)
        .expect("sign");
    assert_ok(&c.publish(&mined).await);
    assert_ok(
        &c.publish(&event(&keys, 1, "chat needs no work", vec![], now()))
            .await,
    );
}

#[tokio::test]
async fn malformed_input_is_refused_and_the_relay_keeps_serving() {
    let (relay, _dir) = start("").await;
    let keys = Keys::generate();

    // A forged signature: refused with a reason.
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let good = event(&keys, 1, "original", vec![], now());
    let mut forged = serde_json::to_value(&good).expect("json");
    forged["content"] = json!("tampered");
    c.send(json!(["EVENT", forged])).await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "OK");
    assert_eq!(msg[2], false, "{msg}");

    // Garbage JSON: answered with a NOTICE, and the connection keeps serving.
    let mut rude = RawClient::connect(relay.url().as_str()).await;
    rude.send_text("this is not json".into()).await;
    assert_eq!(rude.recv().await[0], "NOTICE");
    rude.send_text("[\"EVENT\", {\"id\": 42}]".into()).await;
    assert_eq!(rude.recv().await[0], "NOTICE");
    assert_ok(
        &rude
            .publish(&event(&keys, 1, "after garbage", vec![], now()))
            .await,
    );

    let mut after = RawClient::connect(relay.url().as_str()).await;
    assert_ok(&after.publish(&good).await);
    assert_eq!(
        after
            .query("x", json!({"ids": [good.id.to_hex()]}))
            .await
            .len(),
        1
    );
}
