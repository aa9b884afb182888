//! Answering on the relays a request names (NIP-90 `["relays", …]`) as well as the node's own.
//!
//! A buyer that reads other relays than the provider (nostr-dvm's clients, a buyer behind its
//! own relay) would otherwise never see its feedback and result. The list comes from a stranger,
//! so it is bounded: at most [`MAX_PER_REQUEST`] relays, `ws://`/`wss://` only, and — unless the
//! operator allows it — none whose host is or resolves to a loopback, private or other special
//! address (a request must not make the node connect into its own network). Copies go out in
//! the background, after the node's own relays, over at most [`MAX_CONNECTED`] extra
//! connections: they are a courtesy, never on a job's critical path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr_sdk::{Client, Event, RelayUrl};
use tokio::sync::mpsc;

use crate::executors::fetch::address;
use crate::relay::transport::NoDelayTransport;

/// Relays of one request that are answered on; the rest of its list is ignored.
pub use crate::protocol::nip90::MAX_RELAYS as MAX_PER_REQUEST;

/// Extra relay connections kept at once; the least recently used is dropped for a new one.
pub const MAX_CONNECTED: usize = 16;

/// Copies waiting to be sent; beyond this (a burst of requests naming slow relays) a copy is
/// dropped with a log line: the node's own relays have the event already.
const QUEUE: usize = 1024;

/// How long one copy may take (connect and `OK`).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a relay of a request's list is not answered on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL, or not `ws://` / `wss://`.
    #[error("not a ws:// or wss:// relay URL")]
    NotARelay,
    /// Loopback, private, link-local or another special address (or `localhost`).
    #[error("{0}")]
    Private(String),
    /// The host did not resolve.
    #[error("does not resolve")]
    Unresolved,
}

/// The relays of `requested` worth a copy, before any name is resolved: valid `ws`/`wss` URLs,
/// not one of `own`, each once, at most [`MAX_PER_REQUEST`]; an address literal or `localhost`
/// is refused unless `allow_private`. Refused entries come back with the reason.
pub fn screen(
    requested: &[String],
    own: &[RelayUrl],
    allow_private: bool,
) -> (Vec<RelayUrl>, Vec<(String, Refused)>) {
    let mut kept: Vec<RelayUrl> = Vec::new();
    let mut refused = Vec::new();
    for raw in requested {
        if kept.len() == MAX_PER_REQUEST {
            break;
        }
        // RelayUrl accepts ws:// and wss:// only.
        let Ok(url) = RelayUrl::parse(raw.trim()) else {
            refused.push((raw.clone(), Refused::NotARelay));
            continue;
        };
        if own.contains(&url) || kept.contains(&url) {
            continue;
        }
        if !allow_private {
            if let Some(why) = literal_refusal(&url) {
                refused.push((raw.clone(), why));
                continue;
            }
        }
        kept.push(url);
    }
    (kept, refused)
}

/// The URL's host and port, the host without IPv6 brackets.
fn host_port(url: &RelayUrl) -> Option<(String, u16)> {
    let parsed = nostr_sdk::Url::parse(url.as_str()).ok()?;
    let host = parsed.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Some((bare.to_string(), parsed.port_or_known_default()?))
}

/// A host that is an address literal in a refused range (the URL parser has already
/// normalised odd IPv4 spellings such as `0x7f.1`), or `localhost`.
fn literal_refusal(url: &RelayUrl) -> Option<Refused> {
    let Some((host, _)) = host_port(url) else {
        return Some(Refused::NotARelay);
    };
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some(Refused::Private("loopback address".into()));
    }
    let ip = host.parse().ok()?;
    address::classify(ip).map(|why| Refused::Private(why.to_string()))
}

/// A name whose addresses include a refused one is refused as a whole (a relay reached by
/// name could be any of them). The check is made when the copy is sent; a name that changes
/// its answer before the connection is made is not caught (DNS rebinding), which is why the
/// operator's own relays never go through here.
async fn resolves_public(url: &RelayUrl) -> Result<(), Refused> {
    let Some((host, port)) = host_port(url) else {
        return Err(Refused::NotARelay);
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(()); // literals were screened already
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| Refused::Unresolved)?
        .collect();
    if addrs.is_empty() {
        return Err(Refused::Unresolved);
    }
    match addrs.iter().find_map(|a| address::classify(a.ip())) {
        Some(why) => Err(Refused::Private(why.to_string())),
        None => Ok(()),
    }
}

/// The node's sender of copies to request-named relays.
pub struct ReplyRelays {
    own: Vec<RelayUrl>,
    allow_private: bool,
    queue: mpsc::Sender<(Vec<RelayUrl>, Event)>,
}

impl ReplyRelays {
    /// A sender for a node whose own relays are `own`. Starts its worker task.
    pub fn start(own: Vec<RelayUrl>, allow_private: bool) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker(rx, allow_private));
        Arc::new(Self {
            own,
            allow_private,
            queue,
        })
    }

    /// Queues a copy of `event` for the relays of the request's `relays` tag that pass the
    /// screen. Never waits.
    pub fn send(&self, requested: &[String], event: &Event) {
        if requested.is_empty() {
            return;
        }
        let (urls, refused) = screen(requested, &self.own, self.allow_private);
        for (url, why) in refused {
            tracing::debug!(relay = %url, "request relay not answered on: {why}");
        }
        if urls.is_empty() {
            return;
        }
        if self.queue.try_send((urls, event.clone())).is_err() {
            tracing::debug!(event = %event.id, "copy to request relays dropped: queue full");
        }
    }
}

async fn worker(mut rx: mpsc::Receiver<(Vec<RelayUrl>, Event)>, allow_private: bool) {
    // Made with the first copy: most nodes never need one, and an idle node stays small.
    let mut client: Option<Client> = None;
    let connected: Arc<Mutex<VecDeque<RelayUrl>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTED));
    while let Some((urls, event)) = rx.recv().await {
        for url in urls {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let client = client
                .get_or_insert_with(|| {
                    Client::builder()
                        .websocket_transport(NoDelayTransport)
                        .build()
                })
                .clone();
            let (connected, event) = (connected.clone(), event.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if !allow_private {
                    if let Err(why) = resolves_public(&url).await {
                        tracing::debug!(relay = %url, "request relay not answered on: {why}");
                        return;
                    }
                }
                let sent =
                    tokio::time::timeout(SEND_TIMEOUT, copy_to(&client, &connected, &url, &event))
                        .await;
                match sent {
                    Ok(Ok(())) => tracing::debug!(relay = %url, event = %event.id, "copy sent"),
                    Ok(Err(e)) => tracing::debug!(relay = %url, "copy not sent: {e}"),
                    Err(_) => tracing::debug!(relay = %url, "copy not sent: timed out"),
                }
            });
        }
    }
    if let Some(client) = client {
        client.shutdown().await;
    }
}

async fn copy_to(
    client: &Client,
    connected: &Mutex<VecDeque<RelayUrl>>,
    url: &RelayUrl,
    event: &Event,
) -> Result<(), nostr_sdk::client::Error> {
    let evict = {
        let mut order = connected.lock().unwrap_or_else(|p| p.into_inner());
        order.retain(|u| u != url);
        order.push_back(url.clone());
        if order.len() > MAX_CONNECTED {
            order.pop_front()
        } else {
            None
        }
    };
    if let Some(old) = evict {
        let _ = client.force_remove_relay(&old).await;
    }
    client.add_write_relay(url).await?;
    client.try_connect_relay(url, SEND_TIMEOUT).await?;
    client.send_event_to([url], event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_request_list_is_bounded_deduplicated_and_kept_off_private_addresses() {
        let own = vec![RelayUrl::parse("wss://own.example").expect("url")];
        let (kept, refused) = screen(
            &urls(&[
                "wss://own.example",
                "wss://a.example",
                "wss://a.example",
                "https://b.example",
                "not a url",
                "ws://127.0.0.1:7777",
                "ws://10.1.2.3",
                "wss://[::1]:443",
                "ws://localhost:8080",
                "ws://0x7f.1",
                "wss://b.example",
                "wss://c.example",
                "wss://d.example",
                "wss://e.example",
                "wss://f.example",
            ]),
            &own,
            false,
        );
        let kept: Vec<String> = kept.iter().map(|u| u.to_string()).collect();
        assert_eq!(kept.len(), MAX_PER_REQUEST, "{kept:?}");
        assert!(kept[0].starts_with("wss://a.example"), "{kept:?}");
        assert!(!kept.iter().any(|u| u.contains("own.example")));
        assert!(
            !kept.iter().any(|u| u.contains("f.example")),
            "sixth dropped"
        );
        let reasons: Vec<(&str, &Refused)> = refused.iter().map(|(u, r)| (u.as_str(), r)).collect();
        assert!(reasons.contains(&("https://b.example", &Refused::NotARelay)));
        assert!(reasons.contains(&("not a url", &Refused::NotARelay)));
        for private in [
            "ws://127.0.0.1:7777",
            "ws://10.1.2.3",
            "wss://[::1]:443",
            "ws://localhost:8080",
            "ws://0x7f.1",
        ] {
            assert!(
                reasons
                    .iter()
                    .any(|(u, r)| *u == private && matches!(r, Refused::Private(_))),
                "{private} not refused: {reasons:?}"
            );
        }
    }

    #[test]
    fn the_operator_may_allow_private_relays() {
        let (kept, refused) = screen(&urls(&["ws://127.0.0.1:7777"]), &[], true);
        assert_eq!(kept.len(), 1);
        assert!(refused.is_empty());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let url = RelayUrl::parse("ws://localhost.:7777").expect("url");
        // `localhost.` (trailing dot) passes the literal screen; its addresses do not.
        assert!(matches!(
            resolves_public(&url).await,
            Err(Refused::Private(_)) | Err(Refused::Unresolved)
        ));
    }
}
