//! The dashboard server: server-rendered pages (askama), a live stream of snapshots (SSE), a JSON
//! API and Prometheus metrics. Read-only, and every asset is compiled into the binary.

mod metrics;
mod pages;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use nostr_sdk::{EventId, PublicKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::relay::MarketClient;
use crate::stats::{LiveStats, Snapshot};
use crate::store::Store;

/// What the handlers share.
pub struct WebState {
    /// The numbers.
    pub stats: Arc<LiveStats>,
    /// For job traces.
    pub client: Arc<MarketClient>,
    /// This home's stores, for the personal figures (none when serving without a home).
    pub store: Option<Arc<Store>>,
    /// Shown on the dashboard and in `/api/stats` (e.g. a relay fallback).
    pub notices: Vec<String>,
    /// Hubs whose settlement attestations job pages accept.
    pub trust: crate::provenance::TrustedHubs,
}

impl WebState {
    fn snapshot(&self) -> Snapshot {
        let mut s = self.stats.snapshot();
        s.personal = self.store.as_ref().and_then(|st| st.jobs().personal().ok());
        s.notices = self.notices.clone();
        s
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address is taken or not ours.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A running dashboard.
pub struct RunningWeb {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningWeb {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it. Live streams never end on their own, so open connections get two seconds.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The routes.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/job/{id}", get(job_page))
        .route("/provider/{npub}", get(provider_page))
        .route("/api/stats", get(api_stats))
        .route("/api/providers", get(api_providers))
        .route("/api/jobs/{id}", get(api_job))
        .route("/api/stream", get(stream))
        .route("/metrics", get(prometheus))
        .route(
            "/assets/app.js",
            get(|| async { asset("application/javascript", include_str!("../../web/app.js")) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css", include_str!("../../web/style.css")) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// Serves the dashboard on `bind` (port 0 picks one).
pub async fn serve(bind: SocketAddr, state: Arc<WebState>) -> Result<RunningWeb, WebError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| WebError::Bind(bind, e))?;
    let addr = listener.local_addr().map_err(|e| WebError::Bind(bind, e))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::error!("dashboard server failed: {e}");
        }
    });
    Ok(RunningWeb {
        addr,
        stop: Some(stop),
        task,
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn html(rendered: Result<String, askama::Error>) -> Response {
    match rendered {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "page failed to render\n").into_response()
        }
    }
}

async fn dashboard(State(st): State<Arc<WebState>>) -> Response {
    html(pages::dashboard(&st.snapshot()))
}

async fn api_stats(State(st): State<Arc<WebState>>) -> Json<Snapshot> {
    Json(st.snapshot())
}

async fn api_providers(State(st): State<Arc<WebState>>) -> Response {
    Json(st.stats.providers()).into_response()
}

async fn api_job(State(st): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    let Ok(job) = EventId::from_hex(&id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "not a job id"})),
        )
            .into_response();
    };
    match crate::provenance::trace(&st.client, job, Duration::from_secs(5), &st.trust).await {
        Ok(t) => Json(serde_json::json!({ "job": st.stats.job(&job), "trace": t })).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn job_page(State(st): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    let Ok(job) = EventId::from_hex(&id) else {
        return (StatusCode::BAD_REQUEST, "not a job id\n").into_response();
    };
    match crate::provenance::trace(&st.client, job, Duration::from_secs(5), &st.trust).await {
        Ok(t) => html(pages::job(&t, &st.stats.snapshot().relays)),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("relays unreachable: {e}\n"),
        )
            .into_response(),
    }
}

async fn provider_page(State(st): State<Arc<WebState>>, Path(npub): Path<String>) -> Response {
    let Ok(key) = PublicKey::parse(&npub) else {
        return (StatusCode::BAD_REQUEST, "not a public key\n").into_response();
    };
    let hex = key.to_hex();
    match st.stats.providers().into_iter().find(|p| p.pubkey == hex) {
        Some(p) => html(pages::provider(&p, &st.stats.snapshot().relays)),
        None => (StatusCode::NOT_FOUND, "no such provider in the last day\n").into_response(),
    }
}

async fn prometheus(State(st): State<Arc<WebState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&st.snapshot(), &st.stats.providers()),
    )
        .into_response()
}

async fn stream(
    State(st): State<Arc<WebState>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let ticks = futures_util::stream::unfold((st, true), |(st, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let json = serde_json::to_string(&st.snapshot()).unwrap_or_default();
        Some((
            Ok(SseEvent::default().event("stats").data(json)),
            (st, false),
        ))
    });
    Sse::new(ticks).keep_alive(KeepAlive::default())
}
