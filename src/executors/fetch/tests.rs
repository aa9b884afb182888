//! The fetcher against real HTTP servers on loopback: refusals (and that the refused server saw
//! no request), redirects checked hop by hop, and the size and time limits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use super::*;

/// A local server with a few routes; counts every request it gets.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Routes {
    hits: Arc<AtomicUsize>,
    /// Where `/away` redirects to.
    away: Option<String>,
}

async fn serve(bind: &str, away: Option<String>) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = Routes {
        hits: hits.clone(),
        away,
    };
    let app =
        axum::Router::new()
            .route("/secret.env", get(|| async { "API_KEY=hunter2\n" }))
            .route("/big", get(|| async { "x".repeat(2_000) }))
            .route(
                "/away",
                get(|State(r): State<Routes>| async move {
                    match r.away {
                        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .route(
                "/relative",
                get(|| async {
                    (
                        StatusCode::MOVED_PERMANENTLY,
                        [(header::LOCATION, "secret.env")],
                    )
                }),
            )
            .route(
                "/loop",
                get(|| async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, "/loop")],
                    )
                }),
            )
            .route("/trickle", get(trickle))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                |State(r): State<Routes>,
                 req: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    r.hits.fetch_add(1, Ordering::SeqCst);
                    next.run(req).await
                },
            ))
            .with_state(state);
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, hits }
}

/// A body that never ends: one byte every 50 ms.
async fn trickle() -> impl IntoResponse {
    let stream = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x")),
            (),
        ))
    });
    axum::body::Body::from_stream(stream)
}

fn strict() -> FetchPolicy {
    FetchPolicy::default()
}

fn open() -> FetchPolicy {
    FetchPolicy {
        allow_private: true,
        ..FetchPolicy::default()
    }
}

#[tokio::test]
async fn loopback_servers_are_refused_before_any_request() {
    let v4 = serve("127.0.0.1:0", None).await;
    let v6 = serve("[::1]:0", None).await;
    for url in [
        format!("http://{}/secret.env", v4.addr),
        format!("http://localhost:{}/secret.env", v4.addr.port()),
        format!("http://0x7f.1:{}/secret.env", v4.addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/secret.env", v4.addr.port()),
        format!("http://[::1]:{}/secret.env", v6.addr.port()),
    ] {
        let err = fetch(&url, &strict()).await.expect_err(&url);
        assert!(
            matches!(
                err,
                FetchError::Refused {
                    why: Blocked::Loopback,
                    ..
                }
            ),
            "{url}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("refusing to fetch http://") && text.contains("loopback address"),
            "{text}"
        );
    }
    assert_eq!(
        v4.hits.load(Ordering::SeqCst),
        0,
        "nothing reached 127.0.0.1"
    );
    assert_eq!(v6.hits.load(Ordering::SeqCst), 0, "nothing reached [::1]");
    // The same servers, allowed: the check, not the servers, made the difference.
    let got = fetch(
        &format!("http://localhost:{}/secret.env", v4.addr.port()),
        &open(),
    )
    .await
    .expect("allowed by name");
    assert_eq!(got.body, b"API_KEY=hunter2\n");
    let got = fetch(
        &format!("http://[::1]:{}/secret.env", v6.addr.port()),
        &open(),
    )
    .await
    .expect("allowed by address");
    assert_eq!(got.body, b"API_KEY=hunter2\n");
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_refused() {
    let secret = serve("127.0.0.1:0", None).await;
    let to = format!("http://127.0.0.1:{}/secret.env", secret.addr.port());
    let outside = serve("127.0.0.1:0", Some(to)).await;
    // The "outside" server stands in for a public one; the hop it redirects to is checked.
    let err = fetch_checked(
        &format!("http://{}/away", outside.addr),
        &strict(),
        &[outside.addr],
    )
    .await
    .expect_err("redirect to loopback");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "refusing to fetch http://127.0.0.1:{}/secret.env",
            secret.addr.port()
        )) && text.contains("loopback address"),
        "{text}"
    );
    assert_eq!(
        outside.hits.load(Ordering::SeqCst),
        1,
        "the first hop was fetched"
    );
    assert_eq!(
        secret.hits.load(Ordering::SeqCst),
        0,
        "the private hop never was"
    );

    // Redirects to non-http schemes are refused as well.
    let to_file = serve("127.0.0.1:0", Some("file:///etc/passwd".into())).await;
    let err = fetch_checked(
        &format!("http://{}/away", to_file.addr),
        &strict(),
        &[to_file.addr],
    )
    .await
    .expect_err("file");
    assert!(matches!(err, FetchError::Scheme(_)), "{err}");
}

#[tokio::test]
async fn redirects_are_followed_and_bounded() {
    let s = serve("127.0.0.1:0", None).await;
    let got = fetch(&format!("http://{}/relative", s.addr), &open())
        .await
        .expect("relative redirect");
    assert_eq!(got.body, b"API_KEY=hunter2\n");
    assert_eq!(got.final_url.path(), "/secret.env");
    let before = s.hits.load(Ordering::SeqCst);
    let err = fetch(&format!("http://{}/loop", s.addr), &open())
        .await
        .expect_err("loop");
    assert!(matches!(err, FetchError::TooManyRedirects(_)), "{err}");
    assert_eq!(
        s.hits.load(Ordering::SeqCst) - before,
        MAX_REDIRECTS + 1,
        "the first request and {MAX_REDIRECTS} redirects, no more"
    );
}

#[tokio::test]
async fn size_and_time_limits() {
    let s = serve("127.0.0.1:0", None).await;
    let small = FetchPolicy {
        max_bytes: 1_000,
        ..open()
    };
    let err = fetch(&format!("http://{}/big", s.addr), &small)
        .await
        .expect_err("too big");
    assert!(matches!(err, FetchError::TooLarge(_, 1_000)), "{err}");
    let quick = FetchPolicy {
        timeout: Duration::from_millis(300),
        ..open()
    };
    let err = fetch(&format!("http://{}/trickle", s.addr), &quick)
        .await
        .expect_err("never ends");
    assert!(matches!(err, FetchError::Timeout(..)), "{err}");
    for (url, what) in [
        ("file:///etc/passwd", "only http"),
        ("gopher://example.com/", "only http"),
        ("not a url", "bad url"),
    ] {
        let err = fetch(url, &open()).await.expect_err(url);
        assert!(err.to_string().contains(what), "{url}: {err}");
    }
}
