//! A wide-area network you can dial: a TCP proxy between clients and a relay that delays each
//! direction (with jitter, order kept), cuts connections at random so clients must reconnect,
//! can cap bandwidth, and has a kill switch. This kernel has no `netem`, so the proxy is ours.
//!
//! It forwards bytes and never parses WebSocket. A public relay's per-connection *event* rate
//! limit is therefore not done here but by the relay itself (`events_per_second` of the embedded
//! relay): the relay already answers `OK false "rate-limited: …"` exactly as public relays do,
//! while a byte proxy could only stall or cut, which is not what a rate-limited client sees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read at once from either side.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction: enough for a window of 100 ms at loopback rates, and the
/// bound that pushes back on a sender when the far side does not read.
const IN_FLIGHT_CHUNKS: usize = 1024;

/// The network the proxy imitates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WanProfile {
    /// Delay client → relay.
    pub up: Duration,
    /// Delay relay → client.
    pub down: Duration,
    /// Each chunk's delay is its direction's ± up to this (never below zero, order kept).
    pub jitter: Duration,
    /// Random cuts per connection per minute (0: none). Lifetimes are exponential, so cuts are
    /// a Poisson process: a connection is as likely to be cut in its first second as later.
    pub drops_per_min: f64,
    /// Bytes per second per direction per connection (`None`: unlimited).
    pub bytes_per_sec: Option<u64>,
}

impl WanProfile {
    /// A symmetric link of round trip `rtt` (half each way), with `jitter`.
    pub fn rtt(rtt: Duration, jitter: Duration) -> Self {
        Self {
            up: rtt / 2,
            down: rtt / 2,
            jitter,
            drops_per_min: 0.0,
            bytes_per_sec: None,
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct WanCounters {
    /// Connections accepted and forwarded.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections turned away while killed.
    pub refused: u64,
    /// Connections whose relay side could not be reached.
    pub upstream_failures: u64,
    /// Connections cut at random (the drop rate).
    pub random_drops: u64,
    /// Connections cut by [`WanProxy::cut_all`] or [`WanProxy::kill`].
    pub cut: u64,
    /// Bytes client → relay.
    pub bytes_up: u64,
    /// Bytes relay → client.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
    random_drops: AtomicU64,
    cut: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    profile: WanProfile,
    counters: Counters,
    killed: AtomicBool,
    /// Bumped to cut every open connection.
    epoch: watch::Sender<u64>,
}

/// A running proxy; stops (cutting every connection) when dropped.
pub struct WanProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.shared.epoch.send_modify(|e| *e += 1);
    }
}

impl WanProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream` through `profile`.
    pub async fn start(upstream: SocketAddr, profile: WanProfile) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            profile,
            counters: Counters::default(),
            killed: AtomicBool::new(false),
            epoch: watch::channel(0).0,
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            acceptor,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a relay URL (`ws://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Cuts every open connection (clients see the socket close and must reconnect); new
    /// connections are still accepted.
    pub fn cut_all(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// The kill switch: cuts every connection and turns new ones away (accepted, then closed at
    /// once, as a dead route behind a NAT looks to a client) until [`revive`](Self::revive).
    pub fn kill(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        self.cut_all();
    }

    /// Accepts connections again after [`kill`](Self::kill).
    pub fn revive(&self) {
        self.shared.killed.store(false, Ordering::SeqCst);
    }

    /// The counters now.
    pub fn counters(&self) -> WanCounters {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WanCounters {
            accepted: get(&c.accepted),
            active: get(&c.active),
            refused: get(&c.refused),
            upstream_failures: get(&c.upstream_failures),
            random_drops: get(&c.random_drops),
            cut: get(&c.cut),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("wan proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.killed.load(Ordering::SeqCst) {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        tokio::spawn(serve(client, shared.clone()));
    }
}

/// How one connection ended.
enum End {
    Finished,
    Dropped,
    Cut,
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("wan proxy: relay unreachable: {e}");
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // The delay is ours to set: Nagle's algorithm would add its own on top.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let c = &shared.counters;
    c.accepted.fetch_add(1, Ordering::Relaxed);
    c.active.fetch_add(1, Ordering::Relaxed);
    let p = shared.profile;
    let (client_read, client_write) = client.into_split();
    let (relay_read, relay_write) = upstream.into_split();
    let up = pipe(client_read, relay_write, p.up, p, &c.bytes_up);
    let down = pipe(relay_read, client_write, p.down, p, &c.bytes_down);
    let end = tokio::select! {
        _ = async { tokio::join!(up, down) } => End::Finished,
        _ = tokio::time::sleep(lifetime(p.drops_per_min)) => End::Dropped,
        _ = epoch.changed() => End::Cut,
    };
    // Leaving the select drops both sockets: the client sees its connection close.
    match end {
        End::Finished => {}
        End::Dropped => {
            c.random_drops.fetch_add(1, Ordering::Relaxed);
        }
        End::Cut => {
            c.cut.fetch_add(1, Ordering::Relaxed);
        }
    }
    c.active.fetch_sub(1, Ordering::Relaxed);
}

/// How long a connection lives before a random cut: exponential with `per_min` cuts a minute.
fn lifetime(per_min: f64) -> Duration {
    if per_min <= 0.0 || !per_min.is_finite() {
        // Far enough to never fire, near enough not to overflow a deadline.
        return Duration::from_secs(365 * 24 * 3600);
    }
    let u: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() * 60.0 / per_min)
}

/// Forwards `from` to `to`, each chunk held until `delay` ± jitter after it was read (never
/// before an earlier chunk), and paced to the bandwidth cap. Ends after passing on EOF.
async fn pipe<R, W>(mut from: R, mut to: W, delay: Duration, p: WanProfile, bytes: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let read = async move {
        let mut last_due = Instant::now();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            // Jitter may not reorder a byte stream: a chunk is due no earlier than the last one.
            let due = (Instant::now() + jittered(delay, p.jitter)).max(last_due);
            last_due = due;
            if tx.send((due, buf)).await.is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer that the stream ended.
    };
    let write = async move {
        let mut free_at = Instant::now();
        while let Some((due, data)) = rx.recv().await {
            let start = due.max(free_at);
            tokio::time::sleep_until(start).await;
            if let Some(bps) = p.bytes_per_sec.filter(|b| *b > 0) {
                // The link is busy sending this chunk until `free_at`.
                free_at = start + Duration::from_secs_f64(data.len() as f64 / bps as f64);
                tokio::time::sleep_until(free_at).await;
            }
            if to.write_all(&data).await.is_err() {
                break;
            }
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// `delay` ± a uniform draw of up to `jitter`, at least zero.
fn jittered(delay: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let j = jitter.as_secs_f64();
    let d = delay.as_secs_f64() + rand::thread_rng().gen_range(-j..=j);
    Duration::from_secs_f64(d.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_band_and_never_goes_negative() {
        let d = Duration::from_millis(50);
        let j = Duration::from_millis(20);
        for _ in 0..1000 {
            let x = jittered(d, j);
            assert!(x >= Duration::from_millis(30) && x <= Duration::from_millis(70));
        }
        assert_eq!(jittered(d, Duration::ZERO), d);
        for _ in 0..100 {
            assert!(jittered(Duration::from_millis(1), j) <= Duration::from_millis(21));
        }
    }

    #[test]
    fn lifetimes_average_the_rate() {
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| lifetime(6.0).as_secs_f64()).sum::<f64>() / n as f64;
        // 6 a minute: 10 s on average.
        assert!((8.0..12.0).contains(&mean), "mean lifetime {mean}");
        assert!(lifetime(0.0) > Duration::from_secs(3600 * 24));
    }
}
