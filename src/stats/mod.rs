//! Market statistics: a collector fed from relays (history, then live), and snapshots of it.
//!
//! - [`collector`] — the pure state and the window math;
//! - [`model`] — the snapshot schema (`pylon stats --json`, `/api/stats`);
//! - this file — feeding a collector from a relay connection.

pub mod collector;
pub mod model;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use nostr_sdk::{EventId, Filter, Kind, RelayPoolNotification, Timestamp};
use tokio::task::JoinHandle;

pub use collector::Collector;
pub use model::{ProviderRow, Snapshot};

use crate::protocol::kinds;
use crate::relay::client::ClientError;
use crate::relay::MarketClient;
use crate::store::now_ms;

/// The default history kept: a day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);
/// Events fetched per history page.
const PAGE: usize = 5_000;
/// Most history pages loaded at start (a bound, not an expected size).
const MAX_PAGES: usize = 200;

/// Every kind the collector reads: announcements, heartbeats, all NIP-90 requests and results,
/// feedback and receipts.
pub fn market_filter() -> Filter {
    let mut all: Vec<Kind> = vec![
        kinds::ANNOUNCE,
        kinds::HEARTBEAT,
        kinds::JOB_FEEDBACK,
        kinds::RECEIPT,
    ];
    all.extend(kinds::JOB_REQUESTS.map(Kind::from));
    all.extend(kinds::JOB_RESULTS.map(Kind::from));
    Filter::new().kinds(all)
}

/// A collector kept current from a relay connection.
pub struct LiveStats {
    collector: Arc<RwLock<Collector>>,
    relays: Vec<String>,
    task: JoinHandle<()>,
}

impl Drop for LiveStats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LiveStats {
    /// Subscribes to live events, then loads `window` of history, then keeps folding events in.
    pub async fn start(client: Arc<MarketClient>, window: Duration) -> Result<Self, ClientError> {
        let collector = Arc::new(RwLock::new(Collector::new(window)));
        let notes = client.notifications();
        let now = Timestamp::now();
        client.subscribe(market_filter().since(now)).await?;
        let task = tokio::spawn(follow(notes, collector.clone()));
        let since = Timestamp::from(now.as_secs().saturating_sub(window.as_secs()));
        let mut until = now;
        for _ in 0..MAX_PAGES {
            let page = client
                .fetch(
                    market_filter().since(since).until(until).limit(PAGE),
                    Duration::from_secs(10),
                )
                .await?;
            let n = page.len();
            let oldest = page.iter().map(|e| e.created_at).min();
            {
                let mut c = collector.write().unwrap_or_else(|p| p.into_inner());
                // Oldest first, so jobs are known before their results.
                let mut events: Vec<_> = page.into_iter().collect();
                events.sort_by_key(|e| e.created_at);
                for e in &events {
                    c.ingest(e, None);
                }
            }
            match oldest {
                Some(o) if n >= PAGE && o < until => until = o,
                Some(o) if n >= PAGE => until = Timestamp::from(o.as_secs().saturating_sub(1)),
                _ => break,
            }
        }
        let relays = client
            .relay_urls()
            .await
            .iter()
            .map(|u| u.to_string())
            .collect();
        Ok(Self {
            collector,
            relays,
            task,
        })
    }

    /// The numbers now.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.collector.read().unwrap_or_else(|p| p.into_inner());
        let mut s = c.snapshot(now_ms());
        s.relays = self.relays.clone();
        s
    }

    /// Every provider.
    pub fn providers(&self) -> Vec<ProviderRow> {
        let c = self.collector.read().unwrap_or_else(|p| p.into_inner());
        c.providers(now_ms())
    }

    /// One job, if known.
    pub fn job(&self, id: &EventId) -> Option<model::JobRow> {
        let c = self.collector.read().unwrap_or_else(|p| p.into_inner());
        c.job_row(id, now_ms())
    }
}

async fn follow(
    mut notes: tokio::sync::broadcast::Receiver<RelayPoolNotification>,
    collector: Arc<RwLock<Collector>>,
) {
    loop {
        match notes.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => {
                let mut c = collector.write().unwrap_or_else(|p| p.into_inner());
                c.ingest(&event, Some(now_ms()));
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("stats fell behind and missed {n} relay messages");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use nostr_sdk::{Event, EventBuilder, Keys, Tag};

    use super::*;
    use crate::bolt11::{create, Purpose};
    use crate::protocol::failure::FailureCode;
    use crate::protocol::heartbeat::{Heartbeat, HeartbeatInfo};
    use crate::protocol::nip90::{
        Amount, JobInput, JobRequest, JobResult, JobStatus, NewFeedback, NewJob,
    };
    use crate::protocol::receipt::Receipt;

    const T0: u64 = 1_800_000_000_000; // ms

    struct World {
        buyer: Keys,
        provider: Keys,
        c: Collector,
    }

    impl World {
        fn new() -> Self {
            Self {
                buyer: Keys::generate(),
                provider: Keys::generate(),
                c: Collector::new(DAY),
            }
        }

        fn request(&mut self, n: usize, at: u64) -> Event {
            let ev = NewJob {
                kind: 5960,
                inputs: vec![JobInput::text(format!("job {n}"))],
                ..Default::default()
            }
            .to_event(&self.buyer)
            .expect("request");
            self.c.ingest(&ev, Some(at));
            ev
        }

        fn claim(&mut self, req: &Event, at: u64) {
            let ev = NewFeedback {
                status: JobStatus::Processing,
                info: String::new(),
                failure: None,
                amount: None,
            }
            .to_event(&self.provider, req.id, req.pubkey)
            .expect("fb");
            self.c.ingest(&ev, Some(at));
        }

        fn fail(&mut self, req: &Event, code: FailureCode, at: u64) {
            let ev = NewFeedback {
                status: JobStatus::Error,
                info: String::new(),
                failure: Some(code),
                amount: None,
            }
            .to_event(&self.provider, req.id, req.pubkey)
            .expect("fb");
            self.c.ingest(&ev, Some(at));
        }

        fn result(
            &mut self,
            req: &Event,
            msats: u64,
            at: u64,
        ) -> (Event, crate::bolt11::NewInvoice) {
            let node = bitcoin::secp256k1::SecretKey::from_slice(&[4u8; 32]).expect("key");
            let inv = create(
                &node,
                msats,
                &Purpose::Description(format!("pylon job {}", req.id)),
                600,
            )
            .expect("inv");
            let parsed = JobRequest::from_event(req, None).expect("parse");
            let amount = Amount {
                msats,
                bolt11: Some(inv.bolt11.clone()),
            };
            let ev = JobResult::to_event(&self.provider, req, &parsed, "{}", Some(&amount))
                .expect("result");
            self.c.ingest(&ev, Some(at));
            (ev, inv)
        }

        fn receipt(
            &mut self,
            req: &Event,
            result: &Event,
            inv: &crate::bolt11::NewInvoice,
            preimage: &str,
            at: u64,
        ) {
            let ev = Receipt {
                id: None,
                provider: None,
                request_id: req.id,
                result_id: result.id,
                buyer: req.pubkey,
                amount_msats: inv.amount_msat,
                bolt11: inv.bolt11.clone(),
                payment_hash: inv.payment_hash.clone(),
                preimage: preimage.to_string(),
                settlement: None,
                created_at: None,
            }
            .to_event(&self.provider)
            .expect("receipt");
            self.c.ingest(&ev, Some(at));
        }
    }

    #[test]
    fn latency_percentiles_and_success_rate() {
        let mut w = World::new();
        for i in 0..10u64 {
            let req = w.request(i as usize, T0 + i * 1000);
            w.claim(&req, T0 + i * 1000 + 5);
            w.result(&req, 1000, T0 + i * 1000 + 100 * (i + 1));
        }
        let failed = w.request(99, T0 + 20_000);
        w.fail(&failed, FailureCode::BidTooLow, T0 + 20_010);
        let pending = w.request(100, T0 + 21_000);
        let s = w.c.snapshot(T0 + 30_000);
        assert_eq!(s.latency_ms.p50, Some(500.0));
        assert_eq!(s.latency_ms.p95, Some(1000.0));
        assert_eq!(s.latency_ms.samples, 10);
        assert_eq!(s.pickup_ms.p50, Some(5.0));
        // 10 results, 1 failure; the pending job does not count yet.
        assert_eq!(s.success_rate, Some(10.0 / 11.0));
        assert_eq!(s.failures.get("bid-too-low"), Some(&1));
        assert_eq!(s.windows.last_minute.submitted, 12);
        assert_eq!(s.windows.last_minute.completed, 10);
        assert_eq!(s.windows.last_minute.failed, 1);
        assert_eq!(s.windows.last_minute.sats_requested, 10);
        assert_eq!(s.top_providers[0].completed, 10);
        assert_eq!(s.top_providers[0].median_runtime_ms, Some(495.0));
        assert_eq!(s.recent_jobs[0].job_id, pending.id.to_hex());
        assert_eq!(s.recent_jobs[0].status, "submitted");
        let in_buckets: u64 = s.latency_histogram.iter().map(|b| b.count).sum();
        assert_eq!(in_buckets, 10);
    }

    #[test]
    fn windows_slide() {
        let mut w = World::new();
        let old = w.request(1, T0);
        w.result(&old, 2000, T0 + 10);
        w.request(2, T0 + 50 * 60_000);
        let s = w.c.snapshot(T0 + 55 * 60_000);
        assert_eq!(s.windows.last_minute.submitted, 0);
        assert_eq!(s.windows.last_hour.submitted, 2);
        assert_eq!(s.jobs_per_min_series.iter().sum::<u64>(), 2);
        assert_eq!(s.jobs_per_min_series[59 - 5], 1, "the job 5 minutes ago");
        let s = w.c.snapshot(T0 + 2 * 3_600_000);
        assert_eq!(s.windows.last_hour.submitted, 0);
        assert_eq!(s.windows.last_day.submitted, 2);
        assert_eq!(s.windows.last_day.completed, 1);
        // Past the day, eviction forgets them.
        w.c.evict(T0 + 25 * 3_600_000);
        let s = w.c.snapshot(T0 + 25 * 3_600_000);
        assert_eq!(s.windows.last_day.submitted, 0);
    }

    #[test]
    fn duplicates_count_once() {
        let mut w = World::new();
        let req = w.request(1, T0);
        w.c.ingest(&req, Some(T0 + 1));
        let (res, _) = w.result(&req, 1000, T0 + 10);
        w.c.ingest(&res, Some(T0 + 20));
        let s = w.c.snapshot(T0 + 1000);
        assert_eq!(s.windows.last_minute.submitted, 1);
        assert_eq!(s.windows.last_minute.completed, 1);
        assert_eq!(s.latency_ms.p50, Some(10.0));
    }

    #[test]
    fn settled_sats_need_a_valid_receipt() {
        let mut w = World::new();
        let req = w.request(1, T0);
        let (res, inv) = w.result(&req, 3000, T0 + 10);
        w.receipt(&req, &res, &inv, &"00".repeat(32), T0 + 20);
        assert_eq!(
            w.c.snapshot(T0 + 100).windows.last_minute.sats_settled,
            0,
            "a lying receipt"
        );
        w.receipt(&req, &res, &inv, &inv.preimage, T0 + 30);
        let s = w.c.snapshot(T0 + 100);
        assert_eq!(s.windows.last_minute.sats_settled, 3);
        assert_eq!(s.windows.last_minute.sats_requested, 3);
        assert_eq!(s.top_providers[0].earnings_sats, 3);
        assert_eq!(s.payment_ms.p50, Some(20.0));
    }

    #[test]
    fn online_means_an_unexpired_heartbeat() {
        let mut w = World::new();
        let now = Timestamp::now();
        let fresh = Heartbeat::to_event(
            &w.provider,
            &HeartbeatInfo {
                interval_secs: Some(10),
                ..Default::default()
            },
            &[5960],
        )
        .expect("hb");
        w.c.ingest(&fresh, None);
        let stale_keys = Keys::generate();
        let stale = EventBuilder::new(kinds::HEARTBEAT, "{}")
            .tag(Tag::expiration(Timestamp::from(now.as_secs() - 5)))
            .sign_with_keys(&stale_keys)
            .expect("hb");
        w.c.ingest(&stale, None);
        let s = w.c.snapshot(now.as_secs() * 1000);
        assert_eq!(s.online_nodes, 1);
        assert_eq!(s.known_providers, 2);
    }

    #[test]
    fn a_claimed_job_whose_provider_went_silent_is_a_provider_offline_failure() {
        let mut w = World::new();
        let now = Timestamp::now().as_secs() * 1000;
        let beat = Heartbeat::to_event(
            &w.provider,
            &HeartbeatInfo {
                interval_secs: Some(1),
                ..Default::default()
            },
            &[5960],
        )
        .expect("hb");
        w.c.ingest(&beat, Some(now));
        let req = w.request(1, now);
        w.claim(&req, now + 5);
        let done = w.request(2, now);
        w.claim(&done, now + 5);
        w.result(&done, 1000, now + 50);
        // While the heartbeat is fresh, the job is merely in progress.
        let s = w.c.snapshot(now + 100);
        assert_eq!(s.failures.get("provider-offline"), None);
        assert_eq!(
            w.c.job_row(&req.id, now + 100).expect("row").status,
            "processing"
        );
        // The heartbeat (3 s expiry) runs out with no result: the silence is the failure.
        let later = now + 5_000;
        let s = w.c.snapshot(later);
        assert_eq!(s.failures.get("provider-offline"), Some(&1));
        assert_eq!(s.windows.last_minute.failed, 1);
        assert_eq!(s.success_rate, Some(0.5));
        let row = w.c.job_row(&req.id, later).expect("row");
        assert_eq!(
            (row.status.as_str(), row.failure.as_deref()),
            ("failed", Some("provider-offline"))
        );
        let p = &w.c.providers(later)[0];
        assert_eq!(
            (p.completed, p.failed.get("provider-offline")),
            (1, Some(&1))
        );
        assert!(!p.online);

        // A request addressed to the dead provider, never claimed, fails the same way; one
        // addressed to nobody in particular is only waiting.
        let addressed = NewJob {
            kind: 5960,
            inputs: vec![JobInput::text("to the dead")],
            providers: vec![w.provider.public_key()],
            ..Default::default()
        }
        .to_event(&w.buyer)
        .expect("request");
        w.c.ingest(&addressed, Some(later));
        w.request(3, later);
        let s = w.c.snapshot(later + 100);
        assert_eq!(s.failures.get("provider-offline"), Some(&2));
        assert_eq!(
            w.c.job_row(&addressed.id, later + 100).expect("row").status,
            "failed"
        );
    }

    #[test]
    fn other_dvms_count_too_and_junk_is_ignored() {
        let mut w = World::new();
        let req = w.request(1, T0);
        // A foreign result with a messy amount still counts as a completion.
        let foreign = EventBuilder::new(Kind::from(6960), "done")
            .tags([
                Tag::event(req.id),
                crate::protocol::tags::custom("amount", ["100_000", "name@domain"]),
            ])
            .sign_with_keys(&Keys::generate())
            .expect("sign");
        w.c.ingest(&foreign, Some(T0 + 50));
        let junk = EventBuilder::new(kinds::JOB_FEEDBACK, "no tags")
            .sign_with_keys(&Keys::generate())
            .expect("sign");
        w.c.ingest(&junk, Some(T0 + 60));
        let s = w.c.snapshot(T0 + 1000);
        assert_eq!(s.windows.last_minute.completed, 1);
        assert_eq!(s.latency_ms.p50, Some(50.0));
    }
}
