//! The embedded relay under hostile and heavy clients: it answers what it refuses (NOTICE, CLOSED,
//! OK false with NIP-01 prefixes) and keeps the connection, tells a slow subscriber instead of
//! dropping its events, refuses oversized frames from their header, bounds a REQ's work, refuses
//! upgrades beyond its cap with 503, and speaks NIP-42 when configured.

use std::time::Duration;

use nostr_sdk::{Event, EventBuilder, Keys, Kind, RelayUrl, Tag, Timestamp};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::RawClient;
use crate::relay_protocol::start;

fn note(keys: &Keys, content: &str, tags: Vec<Tag>) -> Event {
    EventBuilder::new(Kind::from(1), content)
        .tags(tags)
        .sign_with_keys(keys)
        .expect("sign")
}

/// The reason of an `OK`, `CLOSED` or `NOTICE`.
pub(crate) fn reason(msg: &Value) -> &str {
    msg.as_array()
        .and_then(|a| a.last())
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The connection still works: a REQ gets its EOSE.
async fn still_serves(c: &mut RawClient) {
    assert!(c.query("alive", json!({"limit": 1})).await.len() <= 1);
}

#[tokio::test]
async fn garbage_gets_an_answer_and_the_connection_stays_open() {
    let (relay, _dir) = start("").await;
    let mut c = RawClient::connect(relay.url().as_str()).await;
    for garbage in [
        "this is not json",
        "{\"REQ\": 1}",
        "[]",
        "[\"HELLO\", 1]",
        "[\"REQ\", 7, {}]",
        "[\"EVENT\", {\"content\": \"no id\"}]",
    ] {
        c.send_text(garbage.into()).await;
        let msg = c.recv().await;
        assert_eq!(msg[0], "NOTICE", "{garbage} → {msg}");
        assert!(reason(&msg).starts_with("invalid: "), "{garbage} → {msg}");
    }
    // A bad filter names its subscription: CLOSED with the prefix.
    c.send_text("[\"REQ\", \"bad\", {\"kinds\": \"one\"}]".into())
        .await;
    let msg = c.recv().await;
    assert_eq!(msg, json!(["CLOSED", "bad", reason(&msg)]));
    assert!(reason(&msg).starts_with("invalid: filter 1"), "{msg}");
    // A malformed event with an id: OK false for that id.
    let id = "ab".repeat(32);
    c.send(json!(["EVENT", {"id": id, "kind": "one"}])).await;
    let msg = c.recv().await;
    assert_eq!(
        (&msg[0], &msg[1], &msg[2]),
        (&json!("OK"), &json!(id), &json!(false))
    );
    assert!(
        reason(&msg).starts_with("invalid: malformed event"),
        "{msg}"
    );
    // Binary frames are explained, not processed.
    c.send_raw(Message::Binary(b"[\"REQ\",\"b\",{}]".to_vec().into()))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "NOTICE");
    assert!(reason(&msg).contains("binary"), "{msg}");
    // Too many filters, too long an id.
    let filters: Vec<Value> = (0..11).map(|_| json!({"kinds": [1]})).collect();
    let mut req = vec![json!("REQ"), json!("many")];
    req.extend(filters);
    c.send(Value::Array(req)).await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "CLOSED");
    assert!(
        reason(&msg).starts_with("invalid: too many filters: 11 (max 10)"),
        "{msg}"
    );
    let long = "s".repeat(65);
    c.send(json!(["REQ", long, {}])).await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "CLOSED");
    assert!(reason(&msg).contains("longer than 64"), "{msg}");
    // After all that, the same connection still publishes and queries.
    let keys = Keys::generate();
    let ok = c.publish(&note(&keys, "still here", vec![])).await;
    assert_eq!(ok[2], true, "{ok}");
    still_serves(&mut c).await;
}

#[tokio::test]
async fn invalid_utf8_and_oversized_frames_are_told_then_closed() {
    let (relay, _dir) = start("").await;
    // RFC 6455 requires closing on invalid UTF-8 in a text frame: with a NOTICE and code 1007.
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let frame = Frame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "NOTICE");
    assert!(reason(&msg).contains("UTF-8"), "{msg}");
    assert_eq!(c.close_code().await, Some(CloseCode::Invalid));

    // A frame header announcing 40 MiB: refused on the header, before a byte of payload is sent.
    let mut tcp = raw_upgrade(relay.local_addr()).await;
    let len: u64 = 40 * 1024 * 1024;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]); // mask key
    tcp.write_all(&header).await.expect("write header");
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the relay closed without waiting for 40 MiB");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("message too large"), "{text}");
    assert!(text.contains("41943040 bytes (max 1048576)"), "{text}");
    // The close frame (opcode 8) carries code 1009.
    let close = reply
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2..4] == 1009u16.to_be_bytes());
    assert!(close, "close frame with 1009 in {reply:?}");
}

#[tokio::test]
async fn refusals_carry_the_standard_prefixes() {
    let (relay, _dir) =
        start("events_per_second = 1\nevent_burst = 2\nmax_content_chars = 1000").await;
    let keys = Keys::generate();
    let mut c = RawClient::connect(relay.url().as_str()).await;
    let mut reasons = Vec::new();
    for i in 0..4 {
        let ok = c.publish(&note(&keys, &format!("flood {i}"), vec![])).await;
        if ok[2] == false {
            reasons.push(reason(&ok).to_string());
        }
    }
    assert!(!reasons.is_empty());
    for r in &reasons {
        assert!(r.starts_with("rate-limited: "), "{r}");
        assert!(!r.contains("blocked"), "{r}");
    }

    let mut c = RawClient::connect(relay.url().as_str()).await;
    let future = EventBuilder::new(Kind::from(1), "from the future")
        .custom_created_at(Timestamp::from(u64::MAX / 2))
        .sign_with_keys(&keys)
        .expect("sign");
    let ok = c.publish(&future).await;
    assert_eq!(ok[2], false);
    assert!(reason(&ok).starts_with("invalid: created_at is"), "{ok}");
    let long = note(&keys, &"x".repeat(1001), vec![]);
    let ok = c.publish(&long).await;
    assert_eq!(ok[2], false);
    assert!(reason(&ok).starts_with("invalid: content too long"), "{ok}");
    // The far-future event is not stored, so it cannot sort first in anyone's query.
    let stored = c
        .query("all", json!({"authors": [keys.public_key().to_hex()]}))
        .await;
    assert!(stored.iter().all(|e| e["content"] != "from the future"));
}

#[tokio::test]
async fn one_req_returns_at_most_max_limit_events_in_all() {
    let (relay, _dir) = start("max_filter_limit = 100\ndefault_filter_limit = 50").await;
    let keys = Keys::generate();
    let mut c = RawClient::connect(relay.url().as_str()).await;
    for kind in [1u16, 2, 3] {
        for i in 0..60 {
            let ev = EventBuilder::new(Kind::from(kind), format!("{kind}/{i}"))
                .sign_with_keys(&keys)
                .expect("sign");
            c.send(json!(["EVENT", ev])).await;
        }
    }
    // Wait for all 180 OKs.
    let mut oks = 0;
    while oks < 180 {
        if c.recv().await[0] == "OK" {
            oks += 1;
        }
    }
    c.send(json!(["REQ", "three", {"kinds": [1], "limit": 100}, {"kinds": [2], "limit": 100}, {"kinds": [3], "limit": 100}]))
        .await;
    let mut events = 0;
    loop {
        let msg = c.recv().await;
        if msg[0] == "EOSE" {
            break;
        }
        assert_eq!(msg[0], "EVENT", "{msg}");
        events += 1;
    }
    assert_eq!(events, 100, "three filters share one REQ's budget");
    // Without a limit, the default applies.
    assert_eq!(c.query("dflt", json!({"kinds": [1, 2, 3]})).await.len(), 50);
}

#[tokio::test]
async fn count_is_the_union_of_its_filters() {
    let (relay, _dir) = start("").await;
    let keys = Keys::generate();
    let mut c = RawClient::connect(relay.url().as_str()).await;
    for i in 0..5 {
        let tags = if i < 3 {
            vec![Tag::hashtag("x")]
        } else {
            vec![]
        };
        assert_eq!(
            c.publish(&note(&keys, &format!("{i}"), tags)).await[2],
            true
        );
    }
    let author = keys.public_key().to_hex();
    c.send(json!(["COUNT", "c1", {"authors": [author]}])).await;
    assert_eq!(c.recv().await, json!(["COUNT", "c1", {"count": 5}]));
    // Overlapping filters: 3 tagged ∪ 5 by the author = 5, not 8.
    c.send(json!(["COUNT", "c2", {"#t": ["x"]}, {"authors": [author]}]))
        .await;
    assert_eq!(c.recv().await, json!(["COUNT", "c2", {"count": 5}]));
}

#[tokio::test]
async fn upgrades_beyond_the_connection_cap_get_503() {
    let (relay, _dir) = start("max_connections = 3").await;
    let url = relay.url();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(RawClient::connect(url.as_str()).await);
    }
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("a fourth connection was accepted over a cap of 3"),
    }
    // Leaving frees a place.
    held.pop();
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "a place freed by a client that left is reused"
    );
}

/// Publishes `n` events of about `size` bytes tagged `tag` from one connection, as fast as the
/// relay acknowledges them (a window of 64 in flight).
async fn flood(url: &str, keys: &Keys, tag: &str, n: usize, size: usize) -> Vec<Event> {
    flood_from(url, keys, tag, 0, n, size).await
}

/// [`flood`] numbering its events from `first`: floods that follow each other within one second
/// must not sign the same content twice, or they send the same event id again.
async fn flood_from(
    url: &str,
    keys: &Keys,
    tag: &str,
    first: usize,
    n: usize,
    size: usize,
) -> Vec<Event> {
    let mut c = RawClient::connect(url).await;
    let mut sent = Vec::with_capacity(n);
    let body = "x".repeat(size);
    let mut in_flight = 0;
    let mut acked = 0;
    for i in first..first + n {
        let ev = note(keys, &format!("{i} {body}"), vec![Tag::hashtag(tag)]);
        c.send(json!(["EVENT", ev])).await;
        sent.push(ev);
        in_flight += 1;
        while in_flight >= 64 {
            let msg = c.recv().await;
            if msg[0] == "OK" {
                assert_eq!(msg[2], true, "{msg}");
                in_flight -= 1;
                acked += 1;
            }
        }
    }
    while acked < n {
        if c.recv().await[0] == "OK" {
            acked += 1;
        }
    }
    sent
}

#[tokio::test]
async fn a_stalled_raw_subscriber_is_told_it_fell_behind() {
    let (relay, _dir) = start("events_per_second = 1000000\nevent_burst = 1000000").await;
    let url = relay.url().to_string();
    let tag = format!("slow-{}", rand::random::<u32>());
    let mut reader = RawClient::connect(&url).await;
    reader.send(json!(["REQ", "live", {"#t": [tag]}])).await;
    assert_eq!(reader.recv().await, json!(["EOSE", "live"]));

    // The reader stalls (reads nothing) while 20,000 events of ~1 KiB flow: far more than the
    // socket buffers and the relay's live buffer hold.
    let keys = Keys::generate();
    let sent = flood(&url, &keys, &tag, 20_000, 1024).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut delivered = 0usize;
    let mut closed = None;
    while let Some(msg) = reader.recv_within(Duration::from_secs(3)).await {
        match msg[0].as_str() {
            Some("EVENT") => delivered += 1,
            Some("CLOSED") => {
                closed = Some(msg);
                break;
            }
            _ => {}
        }
    }
    let closed = closed.expect("a CLOSED for the stalled subscription");
    assert_eq!(closed[1], "live");
    assert!(
        reason(&closed).starts_with("error: subscriber too slow"),
        "{closed}"
    );
    assert!(delivered < sent.len(), "it did fall behind: {delivered}");
    // The connection is still usable: it re-subscribes from the last event it saw.
    still_serves(&mut reader).await;
}

#[tokio::test]
async fn an_expensive_req_storm_does_not_stall_other_clients() {
    let (relay, _dir) =
        start("events_per_second = 1000000\nevent_burst = 1000000\nquery_threads = 1").await;
    let url = relay.url().to_string();
    let keys = Keys::generate();
    flood(&url, &keys, "storm", 10_000, 100).await;

    // One client asks 30 times for 10,000 events each: 300,000 events to send.
    let mut hog = RawClient::connect(&url).await;
    for i in 0..30 {
        hog.send(json!(["CLOSE", format!("w{}", i.max(1) - 1)]))
            .await;
        hog.send(json!(["REQ", format!("w{i}"), {"kinds": [1], "limit": 10000}]))
            .await;
    }
    let storm = tokio::spawn(async move {
        let mut eose = 0;
        while eose < 30 {
            match hog.recv_within(Duration::from_secs(60)).await {
                Some(m) if m[0] == "EOSE" => eose += 1,
                Some(_) => {}
                None => break,
            }
        }
        eose
    });
    // Meanwhile a new client connects, publishes and queries — and is answered while the storm
    // is still being served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = RawClient::connect(&url).await;
    let ok = other.publish(&note(&keys, "meanwhile", vec![])).await;
    assert_eq!(ok[2], true, "{ok}");
    assert_eq!(
        other
            .query("mine", json!({"ids": [ok[1].as_str().expect("id")]}))
            .await
            .len(),
        1
    );
    assert!(
        !storm.is_finished(),
        "the other client was answered before the storm ended"
    );
    storm.abort();
}

#[tokio::test]
async fn nip42_writes_mode_asks_for_auth_and_keys_the_allow_list_on_it() {
    let alice = Keys::generate();
    let bob = Keys::generate();
    let (relay, _dir) = start(&format!(
        "auth = \"writes\"\nallow_pubkeys = [\"{}\"]",
        alice.public_key().to_hex()
    ))
    .await;
    let url = relay.url();
    let mut c = RawClient::connect(url.as_str()).await;
    let challenge = c.recv().await;
    assert_eq!(challenge[0], "AUTH", "a challenge on connect: {challenge}");
    let challenge = challenge[1].as_str().expect("challenge").to_string();
    // Not authenticated: publishing is refused with auth-required; reading is open.
    let ok = c.publish(&note(&alice, "hi", vec![])).await;
    assert_eq!(ok[2], false);
    assert!(reason(&ok).starts_with("auth-required: "), "{ok}");
    still_serves(&mut c).await;
    // A wrong answer (another challenge) is refused.
    let wrong = EventBuilder::auth("not-the-challenge", url.clone())
        .sign_with_keys(&alice)
        .expect("sign");
    c.send(json!(["AUTH", wrong])).await;
    let ok = c.recv().await;
    assert_eq!((&ok[0], &ok[2]), (&json!("OK"), &json!(false)), "{ok}");
    // Authenticated as alice (on the list), even bob's events are admitted on this connection.
    let right = EventBuilder::auth(challenge.clone(), url.clone())
        .sign_with_keys(&alice)
        .expect("sign");
    c.send(json!(["AUTH", right])).await;
    assert_eq!(c.recv().await[2], true);
    assert_eq!(
        c.publish(&note(&bob, "relayed by alice", vec![])).await[2],
        true
    );

    // Bob authenticates as himself: not on the list → restricted.
    let mut b = RawClient::connect(url.as_str()).await;
    let ch = b.recv().await[1].as_str().expect("challenge").to_string();
    let answer = EventBuilder::auth(ch, url.clone())
        .sign_with_keys(&bob)
        .expect("sign");
    b.send(json!(["AUTH", answer])).await;
    assert_eq!(b.recv().await[2], true);
    let ok = b.publish(&note(&bob, "me", vec![])).await;
    assert_eq!(ok[2], false);
    assert!(reason(&ok).starts_with("restricted: "), "{ok}");
}

#[tokio::test]
async fn nip42_required_mode_closes_unauthenticated_reads_and_pylon_clients_authenticate() {
    let (relay, _dir) = start("auth = \"required\"").await;
    let url = relay.url();
    let mut c = RawClient::connect(url.as_str()).await;
    assert_eq!(c.recv().await[0], "AUTH");
    c.send(json!(["REQ", "r", {"kinds": [1]}])).await;
    let msg = c.recv().await;
    assert_eq!(msg[0], "CLOSED");
    assert!(reason(&msg).starts_with("auth-required: "), "{msg}");

    // Pylon's client layer answers the challenge itself: publish and fetch work.
    let keys = Keys::generate();
    let client = pylon::relay::MarketClient::connect(
        keys.clone(),
        &[RelayUrl::parse(url.as_str()).expect("url")],
        Duration::from_secs(5),
        pylon::relay::Reachability::OneShot,
    )
    .await
    .expect("connect");
    let ev = note(&keys, "authenticated", vec![]);
    let mut published = false;
    for _ in 0..20 {
        if client.publish(&ev).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        published,
        "a Pylon client publishes on an auth-required relay"
    );
    let got = client
        .fetch(nostr_sdk::Filter::new().id(ev.id), Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1, "and reads");
    client.shutdown().await;
}

#[tokio::test]
async fn nip11_states_the_limits_it_enforces() {
    let (relay, _dir) = start("max_content_chars = 4000\nauth = \"required\"").await;
    let http = format!("http://{}", relay.local_addr());
    let doc: Value = reqwest::Client::new()
        .get(&http)
        .header("Accept", "application/nostr+json")
        .send()
        .await
        .expect("nip11")
        .json()
        .await
        .expect("json");
    let lim = &doc["limitation"];
    assert_eq!(lim["max_content_length"], 4000);
    assert_eq!(lim["max_message_length"], 1_048_576);
    assert_eq!(lim["max_filters"], 10);
    assert_eq!(lim["max_subid_length"], 64);
    assert_eq!(lim["auth_required"], true);
    assert_eq!(lim["created_at_upper_limit"], 900);
    let nips: Vec<u64> = doc["supported_nips"]
        .as_array()
        .expect("nips")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        nips.contains(&42) && nips.contains(&45) && !nips.contains(&77),
        "{nips:?}"
    );
}

/// A WebSocket handshake by hand, leaving the raw socket to write frames byte by byte.
async fn raw_upgrade(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.expect("read");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// The relay process's peak resident memory, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn sixteen_clients_sending_60_mib_each_cannot_inflate_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = crate::common::RelayProcess::start(dir.path(), &dir.path().join("store"));
    let pid = relay.process.child.id();
    let addr: std::net::SocketAddr = relay
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");
    let before = peak_rss_kib(pid);
    // Each client sends one 60 MiB text message as 120 fragments of 512 KiB (each frame under
    // the 1 MiB limit, so only the message total can stop it).
    let clients = (0..16).map(|_| {
        tokio::spawn(async move {
            let mut tcp = raw_upgrade(addr).await;
            let chunk = vec![b'x'; 512 * 1024];
            let mut sent = 0usize;
            for i in 0..120 {
                let opcode: u8 = if i == 0 { 0x1 } else { 0x0 };
                let fin: u8 = if i == 119 { 0x80 } else { 0 };
                let mut frame = vec![fin | opcode, 0x80 | 127];
                frame.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
                frame.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as is
                frame.extend_from_slice(&chunk);
                if tcp.write_all(&frame).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        })
    });
    let mut sent = Vec::new();
    for c in clients {
        sent.push(
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .expect("in time")
                .expect("client"),
        );
    }
    let after = peak_rss_kib(pid);
    assert!(
        sent.iter().all(|&s| s < 60 * 1024 * 1024),
        "the relay stopped reading every one of them: {sent:?}"
    );
    // 16 × 60 MiB would be 960 MiB; the limit keeps each to about one 1 MiB message.
    assert!(
        after < before + 128 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // And it still serves.
    let mut c = RawClient::connect(&relay.url).await;
    still_serves(&mut c).await;
}

/// A TCP proxy whose relay→client direction can be paused: a client that stops reading, as a
/// slow reader does, while its own client code keeps running.
struct StallProxy {
    addr: std::net::SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
}

impl StallProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (paused, gate) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(relay) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut rr, mut rw) = relay.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut rw).await });
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        while *gate.borrow() {
                            if gate.changed().await.is_err() {
                                return;
                            }
                        }
                        match rr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, paused }
    }

    fn url(&self) -> RelayUrl {
        RelayUrl::parse(&format!("ws://{}", self.addr)).expect("url")
    }

    fn pause(&self, on: bool) {
        let _ = self.paused.send(on);
    }
}

// Several threads: the test's own reader must keep up with the catch-up it is checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pylon_client_is_closed_resubscribes_and_ends_with_every_event() {
    let (relay, _dir) = start("events_per_second = 1000000\nevent_burst = 1000000").await;
    let proxy = StallProxy::start(relay.local_addr()).await;
    // Room in the pool channel for the whole catch-up, so the count below sees everything the
    // client received; and catch-up pages (half the smaller channel) larger than the events the
    // flood puts in one second: NIP-01 paging by `until` cannot split a second, so a second with
    // more events than a page is the one thing a catch-up cannot recover.
    let client = pylon::relay::MarketClient::connect_buffered(
        Keys::generate(),
        &[proxy.url()],
        Duration::from_secs(5),
        pylon::relay::Reachability::OneShot,
        pylon::relay::client::Buffers {
            pool: 65_536,
            relay: Some(16_384),
        },
    )
    .await
    .expect("connect");
    let tag = format!("stall-{}", rand::random::<u32>());
    let mut notes = client.notifications();
    client
        .subscribe(nostr_sdk::Filter::new().hashtag(tag.clone()))
        .await
        .expect("subscribe");
    let keys = Keys::generate();
    let url = relay.url().to_string();
    // The subscription is live once a probe comes through it.
    let probe = note(&keys, "probe", vec![Tag::hashtag(tag.clone())]);
    RawClient::connect(&url).await.publish(&probe).await;
    let wanted = 20_000 + 1;
    let counter = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut closed = 0;
        let mut lagged = 0;
        while seen.len() < wanted {
            match tokio::time::timeout(Duration::from_secs(60), notes.recv()).await {
                Ok(Ok(nostr_sdk::RelayPoolNotification::Event { event, .. })) => {
                    seen.insert(event.id);
                }
                Ok(Ok(nostr_sdk::RelayPoolNotification::Message {
                    message: nostr_sdk::RelayMessage::Closed { message, .. },
                    ..
                })) => {
                    assert!(
                        message.starts_with("error: subscriber too slow"),
                        "{message}"
                    );
                    closed += 1;
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => lagged += n,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        (seen, closed, lagged)
    });

    // The client stops reading for at least 5 s while 20,000 events of ~1 KiB flow, at most
    // 900 of them started per second: a second never holds more than a catch-up page (2,000),
    // however fast this machine floods (a quiet one put more than 2,000 in one second).
    proxy.pause(true);
    let stalled = std::time::Instant::now();
    let mut sent = Vec::new();
    while sent.len() < 20_000 {
        let second = nostr_sdk::Timestamp::now();
        let n = 900.min(20_000 - sent.len());
        sent.extend(flood_from(&url, &keys, &tag, sent.len(), n, 1024).await);
        while nostr_sdk::Timestamp::now() == second {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Some(rest) = Duration::from_secs(5).checked_sub(stalled.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    proxy.pause(false);
    let (got, closed, lagged) = counter.await.expect("counter");
    assert_eq!(lagged, 0, "the test's reader fell behind the pool channel");
    assert!(
        closed >= 1,
        "the relay told the stalled client (CLOSED too slow)"
    );
    // Which seconds the missing events were made in tells a reordering at the resume point
    // from a catch-up that stopped early.
    let missing: std::collections::BTreeMap<u64, usize> = sent
        .iter()
        .filter(|e| !got.contains(&e.id))
        .fold(Default::default(), |mut m, e| {
            *m.entry(e.created_at.as_secs()).or_default() += 1;
            m
        });
    assert!(
        missing.is_empty(),
        "{} of {} events never reached the Pylon client; missing per created_at second: {missing:?}",
        missing.values().sum::<usize>(),
        sent.len()
    );
    let distinct: std::collections::HashSet<_> = sent.iter().map(|e| e.id).collect();
    assert_eq!(
        distinct.len(),
        20_000,
        "the flood sent 20,000 distinct events"
    );
    assert_eq!(got.len(), sent.len() + 1, "and the probe too");
    client.shutdown().await;
}

/// A trace through a link that stalls is an error, never a verdict: a best-effort look-up cut
/// short comes back empty, and "NOT VERIFIED: the request is not on these relays" would be a lie
/// about a job that is there.
#[tokio::test]
async fn a_trace_through_a_stalled_link_is_an_error_not_a_verdict() {
    let (relay, _dir) = start("").await;
    let proxy = StallProxy::start(relay.local_addr()).await;
    let client = pylon::relay::MarketClient::connect(
        Keys::generate(),
        &[proxy.url()],
        Duration::from_secs(5),
        pylon::relay::Reachability::OneShot,
    )
    .await
    .expect("connect");
    let keys = Keys::generate();
    let request = note(&keys, "a job", vec![]);
    RawClient::connect(relay.url().as_str())
        .await
        .publish(&request)
        .await;
    let trust = pylon::provenance::TrustedHubs::none();
    // Straight through, the request is found (and this one verifies as nothing more).
    let seen = pylon::provenance::trace(&client, request.id, Duration::from_secs(5), &trust)
        .await
        .expect("a complete answer");
    assert_ne!(
        seen.reason.as_deref(),
        Some("the request is not on these relays"),
        "{seen:?}"
    );
    proxy.pause(true);
    let stalled =
        pylon::provenance::trace(&client, request.id, Duration::from_millis(800), &trust).await;
    assert!(stalled.is_err(), "a verdict from no answer: {stalled:?}");
    proxy.pause(false);
    client.shutdown().await;
}
