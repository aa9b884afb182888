//! The client layer's fallback: a long-running role with no reachable relay starts the embedded
//! one and keeps working; a one-shot caller gets a clear error.

use std::time::{Duration, Instant};

use nostr_sdk::{EventBuilder, Filter, Keys, Kind, RelayUrl};
use pylon::relay::client::ClientError;
use pylon::relay::{MarketClient, Reachability, RelaySettings};

use crate::common::closed_port;

fn settings_on_free_port() -> RelaySettings {
    RelaySettings {
        bind: format!("127.0.0.1:{}", closed_port())
            .parse()
            .expect("addr"),
        ..RelaySettings::default()
    }
}

#[tokio::test]
async fn long_running_role_falls_back_to_the_embedded_relay_and_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = RelayUrl::parse(&format!("ws://127.0.0.1:{}", closed_port())).expect("url");
    let settings = settings_on_free_port();
    let keys = Keys::generate();
    let client = MarketClient::connect(
        keys.clone(),
        std::slice::from_ref(&dead),
        Duration::from_secs(2),
        Reachability::FallBack {
            settings: Box::new(settings.clone()),
            data_dir: dir.path().join("relay"),
        },
    )
    .await
    .expect("falls back instead of failing");

    let info = client.fallback().expect("fallback is reported").clone();
    assert!(info.started_here);
    assert_eq!(
        info.url.trim_end_matches('/'),
        format!("ws://{}", settings.bind)
    );
    assert!(
        info.reason.contains(dead.as_str().trim_end_matches('/')),
        "{}",
        info.reason
    );

    let note = EventBuilder::new(Kind::from(5960), "works offline")
        .sign_with_keys(&keys)
        .expect("sign");
    client
        .publish(&note)
        .await
        .expect("publish through the fallback");
    // Ephemeral events go out without waiting for OK, and still arrive.
    let wallet_msg = EventBuilder::new(Kind::from(23194), "ping")
        .sign_with_keys(&keys)
        .expect("sign");
    client
        .publish(&wallet_msg)
        .await
        .expect("ephemeral publish");

    let events = client
        .fetch(Filter::new().id(note.id), Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(events.len(), 1);

    // A second role on the same machine finds the address taken and shares that relay.
    let second = MarketClient::connect(
        Keys::generate(),
        &[dead],
        Duration::from_secs(2),
        Reachability::FallBack {
            settings: Box::new(settings.clone()),
            data_dir: dir.path().join("other"),
        },
    )
    .await
    .expect("second role connects");
    let shared = second.fallback().expect("fallback").clone();
    assert!(!shared.started_here);
    let seen = second
        .fetch(Filter::new().id(note.id), Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(seen.len(), 1, "both roles use one relay");
    second.shutdown().await;
    client.shutdown().await;
}

#[tokio::test]
async fn one_shot_caller_gets_a_clear_error_within_its_timeout() {
    // A listener that accepts TCP but never answers the WebSocket handshake: the slow kind of dead.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url =
        RelayUrl::parse(&format!("ws://{}", silent.local_addr().expect("addr"))).expect("url");
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let started = Instant::now();
    let err = MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(&url),
        Duration::from_secs(2),
        Reachability::OneShot,
    )
    .await
    .expect_err("nothing answers");
    let took = started.elapsed();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("pylon relay") && text.contains("--relay"),
        "{text}"
    );
    // Bounded by its own timeout, not by the client's 10 s default (generous slack for load).
    assert!(took < Duration::from_secs(8), "took {took:?}");
}
