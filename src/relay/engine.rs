//! What every connection of the embedded relay shares: the store, the live fan-out, the write
//! policy, and the gate that stored-event queries pass through.
//!
//! Queries run on the blocking pool, at most `query_threads` at once: the LMDB store answers
//! synchronously inside its async API, so a large REQ run on the async workers stalled every
//! connection (measured: 23.7 s for a new client during a storm of large REQs). Each REQ's total
//! `limit` is clamped, so the cost of one REQ is bounded too.

use std::collections::HashSet;
use std::sync::Arc;

use nostr_sdk::prelude::{DatabaseEventStatus, NostrDatabase, RejectedReason, SaveEventStatus};
use nostr_sdk::{Event, EventId, Filter, JsonUtil, PublicKey, Timestamp};
use tokio::sync::{broadcast, Semaphore};

use super::policy::{MarketPolicy, Prefix, Refusal};
use super::settings::{AuthMode, RelaySettings};
use super::wire;

/// A live event, serialized once for every subscriber it goes to.
#[derive(Debug)]
pub struct Live {
    /// The event, for matching against filters.
    pub event: Event,
    /// Its JSON.
    pub json: String,
}

/// The limits a session enforces, copied out of the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open subscriptions per connection.
    pub max_subscriptions: usize,
    /// Filters per REQ or COUNT.
    pub max_filters: usize,
    /// Longest subscription id.
    pub max_subid_length: usize,
    /// Events per second per connection (token refill).
    pub events_per_second: u32,
    /// Token bucket size per connection.
    pub event_burst: u32,
    /// How long a connection may send nothing before it is closed (`None`: forever).
    pub idle_timeout: Option<std::time::Duration>,
}

/// The shared core of the relay.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn NostrDatabase>,
    live: broadcast::Sender<Arc<Live>>,
    policy: MarketPolicy,
    query_gate: Arc<Semaphore>,
    max_filter_limit: usize,
    default_filter_limit: usize,
    /// Per-session limits.
    pub limits: Limits,
    /// NIP-42 mode.
    pub auth: AuthMode,
}

impl Engine {
    /// The core for `store` under `settings`.
    pub fn new(store: Arc<dyn NostrDatabase>, settings: &RelaySettings) -> Self {
        let (live, _) = broadcast::channel(settings.live_buffer_events);
        Self {
            store,
            live,
            policy: MarketPolicy::new(settings),
            query_gate: Arc::new(Semaphore::new(settings.query_threads())),
            max_filter_limit: settings.max_filter_limit,
            default_filter_limit: settings.default_filter_limit,
            limits: Limits {
                max_subscriptions: settings.max_subscriptions,
                max_filters: settings.max_filters,
                max_subid_length: settings.max_subid_length,
                events_per_second: settings.events_per_second,
                event_burst: settings.event_burst,
                idle_timeout: (settings.idle_timeout_secs > 0)
                    .then(|| std::time::Duration::from_secs(settings.idle_timeout_secs)),
            },
            auth: settings.auth,
        }
    }

    /// The write policy (for the rate-limit exemption the session applies).
    pub fn policy(&self) -> &MarketPolicy {
        &self.policy
    }

    /// A receiver of live events. Take it *before* querying stored events, so nothing published
    /// in between is missed (it may arrive twice, which NIP-01 clients expect).
    pub fn live(&self) -> broadcast::Receiver<Arc<Live>> {
        self.live.subscribe()
    }

    /// Stores (unless ephemeral) and fans out an event whose signature the session has checked.
    /// `Ok` holds the `OK true` message (empty, or a `duplicate:` note).
    pub async fn publish(&self, event: Event, authed: &[PublicKey]) -> Result<String, Refusal> {
        self.policy.check(&event, authed, Timestamp::now())?;
        if event.kind.is_ephemeral() {
            self.fan_out(event);
            return Ok(String::new());
        }
        let store_failed = |e: nostr_sdk::prelude::DatabaseError| {
            tracing::error!("relay store failed: {e}");
            Refusal::new(Prefix::Error, "the relay could not store the event; retry")
        };
        match self.store.check_id(&event.id).await.map_err(store_failed)? {
            DatabaseEventStatus::Saved => return Ok(duplicate()),
            DatabaseEventStatus::Deleted => return Err(deleted()),
            DatabaseEventStatus::NotExistent => {}
        }
        match self.store.save_event(&event).await.map_err(store_failed)? {
            SaveEventStatus::Success => {
                self.fan_out(event);
                Ok(String::new())
            }
            SaveEventStatus::Rejected(reason) => match reason {
                RejectedReason::Duplicate => Ok(duplicate()),
                RejectedReason::Ephemeral => {
                    self.fan_out(event);
                    Ok(String::new())
                }
                RejectedReason::Deleted => Err(deleted()),
                RejectedReason::Expired => Err(Refusal::new(
                    Prefix::Invalid,
                    "the event has expired (NIP-40)",
                )),
                RejectedReason::Replaced => Err(Refusal::new(
                    Prefix::Blocked,
                    "a newer version of this replaceable event is stored",
                )),
                RejectedReason::InvalidDelete => Err(Refusal::new(
                    Prefix::Invalid,
                    "a deletion may only delete its author's own events",
                )),
                RejectedReason::Other => Err(Refusal::new(Prefix::Error, "event not stored")),
            },
        }
    }

    fn fan_out(&self, event: Event) {
        let json = event.as_json();
        // No receiver means no subscriber: nothing to deliver.
        let _ = self.live.send(Arc::new(Live { event, json }));
    }

    /// Gives each filter a `limit` of at most `max_filter_limit` (a filter without one gets the
    /// default, or its number of ids). [`Engine::query`] also caps the REQ's total.
    pub fn clamp(&self, filters: &mut [Filter]) {
        for f in filters.iter_mut() {
            let fallback = match &f.ids {
                Some(ids) => ids.len(),
                None => self.default_filter_limit,
            };
            let wanted = f.limit.unwrap_or(fallback);
            f.limit = Some(wanted.min(self.max_filter_limit));
        }
    }

    /// The stored events matching `filters` (already clamped), newest first, as `EVENT` messages
    /// for the subscription whose id is `id_json`.
    pub async fn query(
        &self,
        id_json: String,
        filters: Vec<Filter>,
    ) -> Result<Vec<String>, Refusal> {
        let filters: Vec<Filter> = filters.into_iter().filter(|f| f.limit != Some(0)).collect();
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let mut budget = self.max_filter_limit;
        self.blocking(move |store, rt| {
            let mut seen = HashSet::new();
            let mut events = Vec::new();
            // One REQ returns at most `max_filter_limit` events in all, however many filters.
            for mut f in filters {
                let limit = f.limit.unwrap_or(budget).min(budget);
                if limit == 0 {
                    break;
                }
                f.limit = Some(limit);
                for e in rt.block_on(store.query(f))? {
                    if budget == 0 {
                        break;
                    }
                    if seen.insert(e.id) {
                        budget -= 1;
                        events.push(e);
                    }
                }
            }
            events.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            Ok(events
                .iter()
                .map(|e| wire::event(&id_json, &e.as_json()))
                .collect())
        })
        .await
    }

    /// NIP-45: how many stored events match any of `filters`.
    pub async fn count(&self, filters: Vec<Filter>) -> Result<usize, Refusal> {
        self.blocking(move |store, rt| {
            if let [one] = filters.as_slice() {
                return rt.block_on(store.count(one.clone()));
            }
            // Several filters: count the union, not the sum.
            let mut ids: HashSet<EventId> = HashSet::new();
            for f in filters {
                ids.extend(
                    rt.block_on(store.negentropy_items(f))?
                        .into_iter()
                        .map(|(id, _)| id),
                );
            }
            Ok(ids.len())
        })
        .await
    }

    /// Runs store work on the blocking pool, at most `query_threads` at once.
    async fn blocking<T, F>(&self, work: F) -> Result<T, Refusal>
    where
        T: Send + 'static,
        F: FnOnce(
                &dyn NostrDatabase,
                &tokio::runtime::Handle,
            ) -> Result<T, nostr_sdk::prelude::DatabaseError>
            + Send
            + 'static,
    {
        let failed = || Refusal::new(Prefix::Error, "query failed; retry");
        let permit = self
            .query_gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| failed())?;
        let store = self.store.clone();
        let rt = tokio::runtime::Handle::current();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lower_priority();
            work(store.as_ref(), &rt)
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::error!("relay query failed: {e}");
                Err(failed())
            }
            Err(e) => {
                tracing::error!("relay query task failed: {e}");
                Err(failed())
            }
        }
    }
}

/// How much the threads that run queries yield to the rest of the relay (Linux `nice`).
const QUERY_NICE: libc::c_int = 10;

std::thread_local! {
    static NICED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lowers the calling (blocking-pool) thread's scheduling priority, once per thread: a query
/// storm then uses idle CPU only, and publishes keep their latency (measured: probe OK p99 of
/// 701 ms during a storm at normal priority on 2 cores).
fn lower_priority() {
    NICED.with(|niced| {
        if niced.get() {
            return;
        }
        niced.set(true);
        // On Linux, PRIO_PROCESS with id 0 is the calling thread. Failure only means the query
        // keeps normal priority.
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, QUERY_NICE) };
    });
}

fn duplicate() -> String {
    "duplicate: already have this event".into()
}

fn deleted() -> Refusal {
    Refusal::new(Prefix::Blocked, "this event was deleted by its author")
}
