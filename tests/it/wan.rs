//! The WAN proxy of `pylon bench wan` (delay, order, cuts, kill switch) and the benchmark itself,
//! over real sockets. Timings are asserted only as lower bounds the proxy guarantees (a delay is
//! never shorter than set); everything else waits generously, for a loaded machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nostr_sdk::{EventBuilder, Filter, Keys, Kind, RelayPoolNotification, RelayUrl};
use pylon::bench::wan_proxy::{WanProfile, WanProxy};
use pylon::relay::{MarketClient, Reachability};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{pylon, stderr, stdout};
use crate::relay_protocol::start;

/// An echo server on an ephemeral port.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn delay(ms: u64) -> WanProfile {
    WanProfile::rtt(Duration::from_millis(2 * ms), Duration::ZERO)
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
        .await
        .expect("echo within 30 s")
        .expect("read");
    back
}

/// True once the peer closed `s` (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn an_echo_through_a_50_ms_proxy_takes_at_least_50_ms_each_way_in_order() {
    let echo = echo_server().await;
    let proxy = WanProxy::start(echo, delay(50)).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "round trip {took:?}");
    }
    // With jitter larger than the gap between writes, bytes still come back in order.
    let jittery = WanProfile {
        jitter: Duration::from_millis(20),
        ..delay(25)
    };
    let proxy = WanProxy::start(echo, jittery).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let piece = format!("<{i}>");
        s.write_all(piece.as_bytes()).await.expect("write");
        sent.extend_from_slice(piece.as_bytes());
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let mut back = vec![0u8; sent.len()];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
        .await
        .expect("echo within 30 s")
        .expect("read");
    assert_eq!(back, sent);
    // Bytes are counted just after they are written: wait for the count to catch up.
    let n = sent.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (proxy.counters().bytes_up, proxy.counters().bytes_down) != (n, n)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = proxy.counters();
    assert_eq!(
        (c.accepted, c.active, c.bytes_up, c.bytes_down),
        (1, 1, n, n)
    );
}

#[tokio::test]
async fn the_kill_switch_cuts_live_connections_and_revive_lets_new_ones_work() {
    let echo = echo_server().await;
    let proxy = WanProxy::start(echo, delay(1)).await.expect("proxy");
    let mut live = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    assert_eq!(round_trip(&mut live, b"hello").await, b"hello");
    proxy.kill();
    assert!(
        closed_within(&mut live, Duration::from_secs(30)).await,
        "the live connection was cut"
    );
    // While killed, a new connection is turned away at once.
    let mut refused = TcpStream::connect(proxy.local_addr())
        .await
        .expect("the port still accepts");
    assert!(closed_within(&mut refused, Duration::from_secs(30)).await);
    proxy.revive();
    let mut again = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    assert_eq!(round_trip(&mut again, b"back").await, b"back");
    let c = proxy.counters();
    assert_eq!((c.accepted, c.cut, c.refused, c.active), (2, 1, 1, 1));
}

#[tokio::test]
async fn connections_are_cut_at_random_at_the_set_rate() {
    let echo = echo_server().await;
    let profile = WanProfile {
        // About every 10 ms on average: the test sees a cut at once.
        drops_per_min: 6000.0,
        ..delay(0)
    };
    let proxy = WanProxy::start(echo, profile).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    assert!(closed_within(&mut s, Duration::from_secs(30)).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.counters().random_drops == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.counters().random_drops, 1);
}

#[tokio::test]
async fn a_nostr_client_behind_the_proxy_reconnects_resubscribes_and_publishes_after_a_cut() {
    let (relay, _dir) = start("").await;
    let proxy = WanProxy::start(relay.local_addr(), delay(10))
        .await
        .expect("proxy");
    let url = RelayUrl::parse(&proxy.url()).expect("url");
    let keys = Keys::generate();
    let client = MarketClient::connect(
        keys.clone(),
        std::slice::from_ref(&url),
        Duration::from_secs(10),
        Reachability::OneShot,
    )
    .await
    .expect("connect through the proxy");
    let mut notes = client.notifications();
    client
        .subscribe(Filter::new().kind(Kind::TextNote).author(keys.public_key()))
        .await
        .expect("subscribe");
    let note = |text: &str| {
        EventBuilder::text_note(text)
            .sign_with_keys(&keys)
            .expect("sign")
    };
    let first = note("before the cut");
    client.publish(&first).await.expect("publish before");

    proxy.cut_all();
    // The client notices, reconnects (nostr-sdk backs off a few seconds) and publishes again.
    let second = note("after the cut");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.publish(&second).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("not yet reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no publish within 120 s of the cut: {e}"),
        }
    }
    let c = proxy.counters();
    assert!(c.cut >= 1 && c.accepted >= 2, "{c:?}");
    // The subscription came back with the connection: an event of the same author published
    // elsewhere after the cut arrives (events the client sent itself never come back as
    // notifications: nostr-sdk has seen them).
    let third = note("published elsewhere");
    let mut publisher = crate::common::RawClient::connect(relay.url().as_str()).await;
    assert_eq!(publisher.publish(&third).await[2], true);
    let got = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match notes.recv().await {
                Ok(RelayPoolNotification::Event { event, .. }) if event.id == third.id => break,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("notifications ended: {e}"),
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "the subscription did not deliver after the reconnect"
    );
    // Both are stored on the relay.
    let mut direct = crate::common::RawClient::connect(relay.url().as_str()).await;
    let stored = direct
        .query(
            "all",
            serde_json::json!({"authors": [keys.public_key().to_hex()]}),
        )
        .await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    client.shutdown().await;
}

/// The sum of a `{code: count}` object.
fn total(counts: &Value) -> u64 {
    counts
        .as_object()
        .expect("an object of counts")
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

#[test]
fn bench_wan_prints_its_figures_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pylon(dir.path())
        .args([
            "bench",
            "wan",
            "--files",
            "20",
            "--providers",
            "3",
            "--rtt-ms",
            "20",
            "--jitter-ms",
            "5",
            "--sequential",
            "3",
            "--map-deadline-secs",
            "300",
            "--json",
        ])
        .output()
        .expect("spawn");
    let text = stdout(&out);
    let r: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("JSON on stdout ({e}): {text}\nstderr: {}", stderr(&out)));
    assert_eq!(r["conditions"]["rtt_ms"], 20.0, "{r}");
    assert_eq!(r["conditions"]["events_per_sec"], 20, "{r}");
    assert_eq!(
        r["conditions"]["hub_beside_relay"], true,
        "by default the hub is where `pylon up` runs it: {r}"
    );
    // Baselines are real measurements, never 0.
    assert!(r["direct_round_trip_ms"]["p50"].as_f64().expect("direct") > 0.0);
    let wan = &r["wan"];
    let rtt = wan["round_trip_ms"]["p50"].as_f64().expect("rtt");
    assert!(rtt >= 20.0, "a round trip through a 20 ms proxy: {rtt}");
    let paid = &wan["paid_loop"];
    assert_eq!(paid["jobs"], 3, "{paid}");
    let done = paid["done"].as_u64().expect("done");
    let failed_jobs = total(&paid["failures"]);
    assert_eq!(
        done + failed_jobs,
        3,
        "every job done or its failure listed: {paid}"
    );
    assert!(paid["p50_over_rtt"].is_number(), "{paid}");
    if done > 0 {
        // Request, result, payment and receipt each cross the relay in turn: a paid job cannot
        // take fewer than about four round trips, and the stages add up to the whole.
        let x = &paid["crossings"];
        let total = x["total"].as_f64().expect("crossings");
        assert!(total >= 3.0, "crossings per job: {x}");
        let stages: f64 = ["pickup", "result", "payment", "receipt"]
            .iter()
            .map(|k| x[k].as_f64().expect("stage"))
            .sum();
        assert!(stages > 0.0 && stages <= total * 1.5 + 1.0, "{x}");
    }
    let map = &wan["repomap"];
    assert_eq!(map["files"], 20, "{map}");
    let completed = map["completed"].as_u64().expect("completed");
    let listed = total(&map["failures"]);
    assert!(
        completed == 20 || listed > 0,
        "all mapped, or the failures are listed: {map}"
    );
    assert!(map["wall_secs"].as_f64().expect("wall") > 0.0);
    assert!(
        wan["proxy"]["accepted"].as_u64().expect("accepted") >= 5,
        "{wan}"
    );
    assert!(stderr(&out).contains("bench:"), "progress on stderr");
}

/// `bench wan` (without `--hub-far`): the hub reaches the relay straight while its clients come
/// through the proxy, and it still serves them. The proxy sees the wallet's connection, never
/// the hub's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_beside_the_relay_serves_clients_behind_the_proxy() {
    use pylon::appliance::{open_hub_settings, Appliance};
    use pylon::protocol::nip47::MakeInvoiceParams;
    use pylon::wallet::Wallet;

    let (relay, dir) = start("").await;
    let direct = relay.url();
    let proxy = WanProxy::start(relay.local_addr(), delay(10))
        .await
        .expect("proxy");
    let far = RelayUrl::parse(&proxy.url()).expect("url");
    let market = Appliance::on_relay(
        far,
        Some(direct),
        Some(relay),
        dir.path(),
        None,
        open_hub_settings(),
    )
    .await
    .expect("appliance");
    assert_eq!(
        proxy.counters().accepted,
        0,
        "the hub connected through the proxy"
    );
    let wallet = market.wallet(&Keys::generate()).await.expect("wallet");
    let invoice = wallet
        .make_invoice(MakeInvoiceParams {
            amount: 21_000,
            description: Some("beside".into()),
            description_hash: None,
            expiry: None,
        })
        .await
        .expect("the hub answers a wallet behind the proxy");
    assert!(invoice.invoice.is_some_and(|b| b.starts_with("lnbcrt")));
    assert_eq!(
        proxy.counters().accepted,
        1,
        "only the wallet came through the proxy"
    );
}
