//! Url inputs: private addresses refused end to end; slow URLs hold no job slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use pylon::protocol::failure::FailureCode;
use pylon::protocol::nip90::JobInput;
use pylon::provider::NodeOptions;
use pylon::store::JobState;

use super::{buyer, code_job, node, wait};
use crate::common::Market;

/// A server with a secret on it, counting requests.
async fn secret_server(bind: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/secret.env",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "API_KEY=hunter2\n" }
        }),
    );
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn url_inputs_on_private_addresses_are_refused() {
    let m = Market::start().await;
    let (v4, v4_hits) = secret_server("127.0.0.1:0").await;
    let (v6, v6_hits) = secret_server("[::1]:0").await;
    let (strict, _d1) = node(&m, NodeOptions::default()).await;
    let (b, _bd) = buyer(&m, None).await;
    for url in [
        format!("http://127.0.0.1:{}/secret.env", v4.port()),
        format!("http://localhost:{}/secret.env", v4.port()),
        format!("http://[::1]:{}/secret.env", v6.port()),
    ] {
        let o = b
            .run(
                &code_job(JobInput::url(url.clone()), "x", strict.public_key()),
                wait(false),
            )
            .await
            .expect("run");
        assert_eq!(o.status, JobState::Failed, "{url}: {o:?}");
        assert_eq!(o.failure, Some(FailureCode::InvalidInput), "{url}: {o:?}");
        let why = o.message.clone().unwrap_or_default();
        assert!(
            why.contains("refusing to fetch http://") && why.contains("loopback address"),
            "{url}: {why}"
        );
        assert!(o.result.is_none(), "{url}: no result, so no secret in one");
    }
    assert_eq!(v4_hits.load(Ordering::SeqCst), 0, "127.0.0.1 never asked");
    assert_eq!(v6_hits.load(Ordering::SeqCst), 0, "[::1] never asked");

    // An operator who opts in (`[provider] allow_private_urls = true`) gets the old behaviour.
    let (open, _d2) = node(
        &m,
        NodeOptions {
            allow_private_urls: true,
            ..NodeOptions::default()
        },
    )
    .await;
    let o = b
        .run(
            &code_job(
                JobInput::url(format!("http://[::1]:{}/secret.env", v6.port())),
                "x",
                open.public_key(),
            ),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Result, "{o:?}");
    let analysis: serde_json::Value =
        serde_json::from_str(o.result.as_deref().expect("result")).expect("json");
    assert_eq!(
        analysis["path"], "secret.env",
        "the path comes from the url"
    );
    assert_eq!(v6_hits.load(Ordering::SeqCst), 1);
    strict.stop().await;
    open.stop().await;
}

/// Counts bodies being streamed; decrements when one is dropped (the client went away).
struct Streaming(Arc<AtomicUsize>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server whose every response trickles forever: one byte every 100 ms.
async fn trickle_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let active = Arc::new(AtomicUsize::new(0));
    let counter = active.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let guard = Streaming(counter);
                let body = futures_util::stream::unfold(guard, |g| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"#")),
                        g,
                    ))
                });
                axum::body::Body::from_stream(body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, active)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_urls_from_fresh_keys_do_not_hold_the_job_slots() {
    let m = Market::start().await;
    let (slow, active) = trickle_server().await;
    // Two job slots; four slow URLs used to fill them and queue behind them.
    let (node, _dir) = node(
        &m,
        NodeOptions {
            max_concurrent: 2,
            allow_private_urls: true,
            fetch_timeout: Duration::from_secs(120),
            ..NodeOptions::default()
        },
    )
    .await;
    let provider = node.public_key();
    let mut griefers = Vec::new();
    for i in 0..4 {
        let (b, dir) = buyer(&m, None).await;
        b.submit(&code_job(
            JobInput::url(format!("http://{slow}/f{i}.py")),
            "x",
            provider,
        ))
        .await
        .expect("submit");
        griefers.push((b, dir));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while active.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "the four fetches never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (b, _bd) = buyer(&m, None).await;
    let o = b
        .run(
            &code_job(JobInput::text("fn quick() {}\n"), "quick.rs", provider),
            wait(false),
        )
        .await
        .expect("run");
    assert_eq!(o.status, JobState::Result, "{o:?}");
    // The ordering that matters: the normal job's result came while every slow fetch was still
    // streaming (none had finished, failed or timed out).
    assert_eq!(
        active.load(Ordering::SeqCst),
        4,
        "the slow fetches are still in progress"
    );
    let status = node.status().await;
    assert_eq!(
        status.queue_depth, 4,
        "fetching jobs count as queued: {status:?}"
    );
    node.kill().await;
}
