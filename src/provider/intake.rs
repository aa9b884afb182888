//! How requests reach a node: the live subscription, and look-ups that find what it missed.
//!
//! A node must never depend on hearing a live event: relays drop subscribers that fall behind,
//! nostr-sdk's channels lag in a burst, connections break. So besides the live stream the node
//! looks back on a timer (and at once after it lagged):
//!
//! - **Requests addressed to it** (`#p` = its key) are looked up from a watermark: everything
//!   with `created_at` before it has been received. The watermark moves only on a *complete*
//!   answer ([`MarketClient::fetch_complete`](crate::relay::MarketClient::fetch_complete)); a
//!   full page is paged backwards with `until` before it counts as complete.
//! - **Open requests** (no `p` tag; every node of the kind hears them) cannot be filtered by
//!   recipient, so looking them up costs every node every request. They are looked up only over
//!   the recent past, less often, best effort: a missed open request is taken by another node,
//!   and its buyer sends it again when nobody answers.
//!
//! Whatever the source, each request is handled once per node: a bounded memory of ids seen
//! (this process), and the job store (across restarts), make a second sighting a no-op.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::{Event, EventId, Filter, Kind, RelayPoolNotification, Timestamp};
use tokio::sync::watch;

use super::{job, Shared};

/// How often a node looks back for requests addressed to it.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How often it looks back for open requests, and over how long a past.
const OPEN_CATCH_UP_EVERY: u32 = 6;
const OPEN_WINDOW_SECS: u64 = 45;
/// A request dated up to this long before the watermark is still looked for: buyers' clocks
/// differ, and a relay may store an event a while after its `created_at`.
const SKEW_SECS: u64 = 30;
/// Events per look-up page, pages per look-up, and how long one page may take.
const PAGE: usize = 250;
const MAX_PAGES: usize = 40;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Request ids remembered as handled (about 100 bytes each).
const SEEN_CAPACITY: usize = 100_000;

/// Request ids this node has handled, oldest forgotten first.
#[derive(Debug, Default)]
pub(super) struct Seen {
    ids: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Seen {
    /// Records `id`; false if it was already there.
    pub(super) fn insert(&mut self, id: EventId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

/// What one look-up found: the requests, whether the targeted part was complete, and when it
/// began (the next watermark if it was).
struct Found {
    events: Vec<Event>,
    complete: bool,
    began: Timestamp,
}

/// The node's intake loop: live requests, look-ups, and the jobs they start.
///
/// Look-ups run beside the loop, one at a time, so the live stream keeps being read while a
/// busy relay takes seconds to answer (reading nothing meanwhile would lag the channel and
/// cause more look-ups).
pub(super) async fn run(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut notes = s.relay.notifications();
    let kinds: Vec<Kind> = s.executors.kinds().into_iter().map(Kind::from).collect();
    let mut tick = tokio::time::interval(CATCH_UP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut ticks: u32 = 0;
    let mut watermark = s.started_at;
    let mut open_since = s.started_at;
    // Jobs live in this set: if the node is killed (this task aborted), they die with it, as in
    // a crash; a graceful stop lets them finish.
    let mut jobs = tokio::task::JoinSet::new();
    let mut lookup: Option<tokio::task::JoinHandle<Found>> = None;
    let mut lagged_logged = false;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
            found = async {
                match lookup.as_mut() {
                    Some(running) => running.await,
                    None => std::future::pending().await,
                }
            }, if lookup.is_some() => {
                lookup = None;
                s.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(found) = found {
                    if found.complete {
                        watermark = found.began;
                    }
                    take(&s, &mut jobs, found.events);
                }
            }
            _ = tick.tick(), if lookup.is_none() => {
                ticks = ticks.wrapping_add(1);
                let began = Timestamp::now();
                // Open requests cost every node every request: looked up on their own slow
                // cadence only, never because of a lag (a burst lags every node at once).
                let open = (ticks % OPEN_CATCH_UP_EVERY == 0).then(|| {
                    let since = open_since
                        .as_secs()
                        .max(began.as_secs().saturating_sub(OPEN_WINDOW_SECS));
                    open_since = began;
                    Timestamp::from(since.saturating_sub(SKEW_SECS))
                });
                let (s2, kinds2) = (s.clone(), kinds.clone());
                lookup = Some(tokio::spawn(async move {
                    let (mut events, complete) = match targeted(&s2, &kinds2, watermark).await {
                        Ok(found) => (found, true),
                        Err(found) => (found, false),
                    };
                    if let Some(since) = open {
                        let filter = Filter::new()
                            .kinds(kinds2.iter().copied())
                            .since(since)
                            .limit(PAGE);
                        if let Ok(found) = s2.relay.fetch(filter, LOOKUP_TIMEOUT).await {
                            events.extend(found);
                        }
                    }
                    Found { events, complete, began }
                }));
            }
            note = notes.recv() => match note {
                Ok(RelayPoolNotification::Event { event, .. }) if kinds.contains(&event.kind) => {
                    lagged_logged = false;
                    take(&s, &mut jobs, vec![*event]);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // Once per stretch of lagging, not once per lag: a burst lags all the time.
                    if !lagged_logged {
                        tracing::warn!("node fell behind and missed {n} relay messages; looking them up");
                        lagged_logged = true;
                    }
                    if lookup.is_none() {
                        tick.reset_immediately();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    if let Some(l) = lookup {
        l.abort();
    }
    jobs.detach_all();
}

/// Starts a job for each request not seen before.
fn take(s: &Arc<Shared>, jobs: &mut tokio::task::JoinSet<()>, events: Vec<Event>) {
    for event in events {
        let fresh = s
            .seen
            .lock()
            .map(|mut seen| seen.insert(event.id))
            .unwrap_or(true);
        if fresh {
            jobs.spawn(job::handle(s.clone(), event));
        }
    }
}

/// Requests addressed to this node since `watermark` (less the skew): `Ok` with all of them if
/// every page came back complete, `Err` with what did arrive otherwise.
async fn targeted(
    s: &Shared,
    kinds: &[Kind],
    watermark: Timestamp,
) -> Result<Vec<Event>, Vec<Event>> {
    let since = Timestamp::from(watermark.as_secs().saturating_sub(SKEW_SECS));
    let base = Filter::new()
        .kinds(kinds.iter().copied())
        .pubkey(s.keys.public_key())
        .since(since)
        .limit(PAGE);
    let mut found: Vec<Event> = Vec::new();
    let mut until: Option<Timestamp> = None;
    for _ in 0..MAX_PAGES {
        let filter = match until {
            Some(u) => base.clone().until(u),
            None => base.clone(),
        };
        let page = match s.relay.fetch_complete(filter, LOOKUP_TIMEOUT).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!("request look-up incomplete: {e}");
                return Err(found);
            }
        };
        let n = page.len();
        let oldest = page.iter().map(|e| e.created_at).min();
        found.extend(page);
        match oldest {
            // A full page may have cut events at its oldest second: the next page starts at that
            // second again (`until` is inclusive; ids already seen are skipped by the caller).
            Some(oldest) if n >= PAGE => {
                if until == Some(oldest) {
                    // One second holds more than a page: NIP-01 cannot page inside it.
                    tracing::warn!("more than {PAGE} requests in one second; some may be missed until the buyer resends");
                    return Err(found);
                }
                until = Some(oldest);
            }
            _ => return Ok(found),
        }
    }
    Err(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_is_bounded_and_forgets_the_oldest_first() {
        let mut seen = Seen::default();
        let id = |n: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_be_bytes());
            EventId::from_byte_array(b)
        };
        assert!(seen.insert(id(0)));
        assert!(!seen.insert(id(0)), "a second sighting is not fresh");
        for n in 1..=SEEN_CAPACITY as u32 {
            assert!(seen.insert(id(n)));
        }
        assert_eq!(seen.ids.len(), SEEN_CAPACITY);
        assert!(seen.insert(id(0)), "the oldest was forgotten");
        assert!(!seen.insert(id(SEEN_CAPACITY as u32)));
    }
}
