//! The embedded relay: our NIP-01 sessions over an LMDB store, behind an axum listener so one
//! port serves both the NIP-11 document (with CORS) and the WebSocket protocol.
//!
//! The listener sets TCP_NODELAY on every connection (without it, two small frames in a row wait
//! for a delayed ACK, ~40 ms on loopback), refuses upgrades beyond the connection cap with HTTP
//! 503 before any handshake, and gives each WebSocket the advertised message limit, which
//! tungstenite checks on a frame's header — a 40 MiB frame is refused before it is read.
//!
//! The sessions are ours ([`super::session`]) rather than nostr-relay-builder's `LocalRelay`,
//! which dropped connections on malformed JSON without a word, lost live events for a lagging
//! subscriber silently, read whole oversized messages, and ran queries on the async workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use hyper_util::rt::TokioIo;
use nostr_lmdb::NostrLMDB;
use nostr_sdk::prelude::NostrDatabase;
use nostr_sdk::{Filter, RelayUrl, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::engine::Engine;
use super::nip11;
use super::session::{self, Peer};
use super::settings::RelaySettings;

/// Bytes read from a socket at a time. tungstenite's default (128 KiB) was most of an idle
/// connection's memory; large messages still arrive whole, in more reads.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes buffered before a write reaches the socket (we flush after every batch anyway).
const WRITE_BUFFER: usize = 32 * 1024;

/// Errors starting the embedded relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The LMDB store could not be opened.
    #[error("cannot open the relay store at {0}: {1}")]
    Store(PathBuf, String),
}

/// A running embedded relay. Dropping it without [`EmbeddedRelay::shutdown`] also stops it.
#[derive(Debug)]
pub struct EmbeddedRelay {
    addr: SocketAddr,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    sessions_stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
}

#[derive(Clone)]
struct FrontState {
    engine: Arc<Engine>,
    nip11: Arc<String>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    ws_config: WebSocketConfig,
    stop: watch::Receiver<bool>,
}

impl EmbeddedRelay {
    /// Opens the store in `data_dir` and starts listening on `settings.bind` (port 0 picks one).
    pub async fn start(settings: &RelaySettings, data_dir: &Path) -> Result<Self, RelayError> {
        let listener = TcpListener::bind(settings.bind)
            .await
            .map_err(|e| RelayError::Bind(settings.bind, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RelayError::Bind(settings.bind, e))?;

        let dir = data_dir.to_path_buf();
        let store = tokio::task::spawn_blocking(move || NostrLMDB::open(&dir))
            .await
            .map_err(|e| RelayError::Store(data_dir.to_path_buf(), e.to_string()))?
            .map_err(|e| RelayError::Store(data_dir.to_path_buf(), e.to_string()))?;

        let store: Arc<dyn NostrDatabase> = Arc::new(store);
        let sweeper = tokio::spawn(sweep_expired(store.clone()));
        let (sessions_stop, stop_rx) = watch::channel(false);
        let state = FrontState {
            engine: Arc::new(Engine::new(store, settings)),
            nip11: Arc::new(nip11::document(settings).to_string()),
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
            ws_config: WebSocketConfig::default()
                .max_message_size(Some(settings.max_message_bytes))
                .max_frame_size(Some(settings.max_message_bytes))
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(WRITE_BUFFER),
            stop: stop_rx,
        };
        let app = Router::new().fallback(front).with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        let server = tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("relay listener failed: {e}");
            }
        });
        tracing::info!(%addr, store = %data_dir.display(), "embedded relay listening");
        Ok(Self {
            addr,
            data_dir: data_dir.to_path_buf(),
            stop: Some(stop),
            sessions_stop,
            server: Some(server),
            sweeper,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its WebSocket URL, e.g. `ws://127.0.0.1:7777`.
    pub fn url(&self) -> RelayUrl {
        let text = format!("ws://{}", self.addr);
        // A socket address always forms a valid ws:// URL.
        RelayUrl::parse(&text).expect("socket address is a valid relay URL")
    }

    /// Where its events are stored.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops accepting, closes every session, and waits for the listener to finish.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.sweeper.abort();
        let _ = self.sessions_stop.send(true);
    }
}

impl Drop for EmbeddedRelay {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// How often expired heartbeats are removed from the store.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// NIP-40 for the events that carry an expiration here: the LMDB store keeps everything, so
/// heartbeats of nodes that went away are deleted once expired, and "online" stays truthful.
async fn sweep_expired(store: Arc<dyn NostrDatabase>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let Ok(beats) = store
            .query(Filter::new().kind(crate::protocol::kinds::HEARTBEAT))
            .await
        else {
            continue;
        };
        let expired: Vec<_> = beats
            .iter()
            .filter(|e| crate::protocol::nip47::expiration(e).is_some_and(|at| at <= now))
            .map(|e| e.id)
            .collect();
        if !expired.is_empty() {
            if let Err(e) = store.delete(Filter::new().ids(expired)).await {
                tracing::warn!("cannot sweep expired heartbeats: {e}");
            }
        }
    }
}

/// One handler for every path: WebSocket upgrade, NIP-11, CORS preflight, or a short text page.
async fn front(
    State(state): State<FrontState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    if *req.method() == Method::OPTIONS {
        return with_cors(StatusCode::NO_CONTENT.into_response());
    }
    if wants_websocket(headers) {
        return upgrade(state, peer, &mut req);
    }
    if accepts_nostr_json(headers) {
        let mut resp = (StatusCode::OK, state.nip11.as_str().to_owned()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/nostr+json"),
        );
        return with_cors(resp);
    }
    let body = "This is a Pylon Nostr relay. Connect a Nostr client over WebSocket, or fetch the \
                NIP-11 document with `Accept: application/nostr+json`.\n";
    with_cors((StatusCode::OK, body).into_response())
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade")
}

fn accepts_nostr_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/nostr+json"))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn upgrade(state: FrontState, peer: SocketAddr, req: &mut Request) -> Response {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 required\n",
        )
            .into_response();
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    // Refused before the handshake, so the client sees why instead of a dropped socket.
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(%peer, max = state.max_connections, "relay full: upgrade refused");
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "relay full: {} connections; retry later\n",
                state.max_connections
            ),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let accept = derive_accept_key(key.as_bytes());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(state.ws_config),
                )
                .await;
                let peer = Peer { addr: peer, host };
                session::run(state.engine, ws, peer, state.stop, permit).await;
            }
            Err(e) => tracing::debug!(%peer, "websocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

fn with_cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    resp
}
