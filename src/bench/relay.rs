//! The baseline every benchmark compares against: the raw relay, driven through the same client
//! stack the roles use. Round trip = publish an event and receive it on a subscription; rate =
//! events a publisher can push through to a subscriber per second.

use std::time::{Duration, Instant};

use nostr_sdk::{Event, EventBuilder, Filter, Keys, Kind, RelayPoolNotification, RelayUrl, Tag};
use serde::Serialize;

use super::{round3, Latency};
use crate::relay::client::ClientError;
use crate::relay::settings::RelaySettings;
use crate::relay::{MarketClient, Reachability};

/// An ephemeral kind nothing else uses, so baseline traffic never mixes with market traffic.
const PROBE_KIND: u16 = 20_987;

/// Events the burst publisher may be ahead of its subscriber (well under the relay's 1,024).
const BURST_WINDOW: usize = 256;
/// Silence that fails the baseline: generous, so only a stuck relay trips it, not a busy machine.
const BURST_STALL: Duration = Duration::from_secs(30);

/// The raw relay figures.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBaseline {
    /// Publish → delivery on a second connection, one event at a time.
    pub round_trip_ms: Latency,
    /// Events per second one publisher pushes through to one subscriber.
    pub events_per_sec: f64,
}

/// Settings for a benchmark's embedded relay: the market defaults with the per-connection rate
/// limit lifted, since a benchmark is a deliberate flood.
pub fn bench_relay_settings() -> RelaySettings {
    RelaySettings {
        bind: ([127, 0, 0, 1], 0).into(),
        events_per_second: 1_000_000,
        event_burst: 1_000_000,
        ..RelaySettings::default()
    }
}

/// Measures the relay at `url`: `samples` sequential round trips, then `burst` events for the rate.
pub async fn measure(
    url: &RelayUrl,
    samples: usize,
    burst: usize,
) -> Result<RelayBaseline, ClientError> {
    if samples == 0 || burst == 0 {
        return Err(ClientError::Unreachable(
            "relay baseline: needs at least one round trip and one burst event".into(),
        ));
    }
    let timeout = Duration::from_secs(5);
    let publisher = MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(url),
        timeout,
        Reachability::OneShot,
    )
    .await?;
    let subscriber = MarketClient::connect(
        Keys::generate(),
        std::slice::from_ref(url),
        timeout,
        Reachability::OneShot,
    )
    .await?;
    let keys = Keys::generate();
    let run_tag = Tag::hashtag(format!("bench-{}", rand::random::<u64>()));
    subscriber
        .subscribe(
            Filter::new()
                .kind(Kind::from(PROBE_KIND))
                .author(keys.public_key()),
        )
        .await?;
    let mut notes = subscriber.notifications();
    let sign = |i: usize| -> Result<Event, ClientError> {
        EventBuilder::new(Kind::from(PROBE_KIND), i.to_string())
            .tag(run_tag.clone())
            .sign_with_keys(&keys)
            .map_err(|e| ClientError::Unreachable(e.to_string()))
    };
    // The REQ travels on another connection than the probes, and ephemeral probes that reach
    // the relay before it are gone: probe until one comes back, then the subscription is live.
    let mut next = 0usize;
    // Generous: a loaded machine may take seconds to start serving the subscription.
    let warm_until = Instant::now() + BURST_STALL;
    loop {
        let ev = sign(next)?;
        next += 1;
        publisher.publish(&ev).await?;
        let wait = Duration::from_millis(250);
        if wait_for(&mut notes, |e| e.pubkey == keys.public_key(), wait)
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > warm_until {
            return Err(ClientError::Unreachable(
                "a probe event never came back from the relay".into(),
            ));
        }
    }
    let mut round_trips = Vec::with_capacity(samples);
    for i in 0..samples {
        let ev = sign(next + i)?;
        let started = Instant::now();
        publisher.publish(&ev).await?;
        wait_for(&mut notes, |e| e.id == ev.id, BURST_STALL).await?;
        round_trips.push(started.elapsed());
    }
    let next = next + samples;
    let events: Vec<Event> = (0..burst)
        .map(|i| sign(next + i))
        .collect::<Result<_, _>>()?;
    // A fixed amount of work, never a time window: the rate is `burst` events over the time
    // they took to arrive, however long that is on a loaded machine. The publisher stays at
    // most `BURST_WINDOW` events ahead of the subscriber, because the relay drops live events
    // for a subscriber more than 1,024 behind (a known trap) — a drop would leave the count
    // short forever. A line silent for `BURST_STALL` is a failure with a reason, not a 0.
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let started = Instant::now();
    let receive = async {
        let mut got = 0usize;
        while got < burst {
            match tokio::time::timeout(BURST_STALL, notes.recv()).await {
                Ok(Ok(RelayPoolNotification::Event { event, .. }))
                    if event.pubkey == keys.public_key() =>
                {
                    got += 1;
                }
                Ok(Ok(_)) => {}
                // Lagged: our own process fell behind reading, the events did arrive.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => got += n as usize,
                Ok(Err(_)) => {
                    return Err(ClientError::Unreachable(format!(
                        "relay baseline: the subscriber's connection closed after {got} of {burst} events"
                    )))
                }
                Err(_) => {
                    return Err(ClientError::Unreachable(format!(
                        "relay baseline: no event for {} s after {got} of {burst} events",
                        BURST_STALL.as_secs()
                    )))
                }
            }
            seen_tx.send_replace(got);
        }
        Ok(started.elapsed())
    };
    let send = async {
        for (i, ev) in events.iter().enumerate() {
            let ahead_ok = |seen: &usize| i.saturating_sub(*seen) < BURST_WINDOW;
            match tokio::time::timeout(BURST_STALL, seen_rx.wait_for(ahead_ok)).await {
                Ok(Ok(_)) => {}
                // The receiver finished or failed: its result says why.
                Ok(Err(_)) | Err(_) => break,
            }
            publisher.publish(ev).await?;
        }
        Ok::<_, ClientError>(())
    };
    let (sent, received) = tokio::join!(send, receive);
    sent?;
    let elapsed = received?.as_secs_f64();
    publisher.shutdown().await;
    subscriber.shutdown().await;
    Ok(RelayBaseline {
        round_trip_ms: Latency::of(&round_trips),
        events_per_sec: round3(burst as f64 / elapsed.max(1e-9)),
    })
}

async fn wait_for(
    notes: &mut tokio::sync::broadcast::Receiver<RelayPoolNotification>,
    matches: impl Fn(&Event) -> bool,
    timeout: Duration,
) -> Result<(), ClientError> {
    let found = tokio::time::timeout(timeout, async {
        loop {
            match notes.recv().await {
                Ok(RelayPoolNotification::Event { event, .. }) if matches(&event) => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    match found {
        Ok(true) => Ok(()),
        _ => Err(ClientError::Unreachable(
            "a probe event never came back from the relay".into(),
        )),
    }
}
