//! The WebSocket transport our clients use: rust-nostr's default, except that plain `ws://`
//! connections set TCP_NODELAY.
//!
//! Without it, a client that writes two small frames in a row waits ~40 ms for the peer's delayed
//! ACK; on loopback that was most of a job's round trip. `wss://` and proxied connections go
//! through the default transport unchanged (TLS framing already coalesces writes).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_wsocket::{Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt, TryStreamExt};
use nostr_sdk::nostr::util::BoxedFuture;
use nostr_sdk::pool::transport::error::TransportError;
use nostr_sdk::pool::transport::websocket::{
    DefaultWebsocketTransport, WebSocketSink, WebSocketStream, WebSocketTransport,
};
use nostr_sdk::pool::ConnectionMode;
use nostr_sdk::Url;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelayTransport;

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connection timed out")]
    Timeout,
    #[error("relay URL has no host")]
    NoHost,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

impl WebSocketTransport for NoDelayTransport {
    fn support_ping(&self) -> bool {
        true
    }

    fn connect<'a>(
        &'a self,
        url: &'a Url,
        mode: &'a ConnectionMode,
        timeout: Duration,
    ) -> BoxedFuture<'a, Result<(WebSocketSink, WebSocketStream), TransportError>> {
        Box::pin(async move {
            if url.scheme() != "ws" || !matches!(mode, ConnectionMode::Direct) {
                return DefaultWebsocketTransport.connect(url, mode, timeout).await;
            }
            let connect = async {
                let host = url.host_str().ok_or(ConnectError::NoHost)?;
                let port = url.port_or_known_default().unwrap_or(80);
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                let (ws, _) =
                    tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp))
                        .await?;
                Ok::<_, ConnectError>(WebSocket::Tokio(ws))
            };
            let ws = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| TransportError::backend(ConnectError::Timeout))?
                .map_err(TransportError::backend)?;
            let (tx, rx) = ws.split();
            let sink: WebSocketSink = Box::new(MapErrSink(tx));
            let stream: WebSocketStream = Box::pin(rx.map_err(TransportError::backend));
            Ok((sink, stream))
        })
    }
}

/// Maps the sink's errors by hand: rust-nostr reports that `SinkExt::sink_map_err` can panic here
/// (rust-nostr/nostr#984).
struct MapErrSink(SplitSink<WebSocket, Message>);

impl Sink<Message> for MapErrSink {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready_unpin(cx).map_err(TransportError::backend)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.0
            .start_send_unpin(item)
            .map_err(TransportError::backend)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_flush_unpin(cx).map_err(TransportError::backend)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_close_unpin(cx).map_err(TransportError::backend)
    }
}
