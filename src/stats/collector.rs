//! The collector: folds market events into per-job and per-provider state, and computes
//! snapshots over sliding windows. Pure: events in, numbers out — so the math is testable on
//! hand-made streams, and everything can be rebuilt from a relay.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use nostr_sdk::{Event, EventId, PublicKey, Timestamp, ToBech32};

use super::model::{Bucket, JobRow, Percentiles, ProviderRow, Snapshot, Windows, SCHEMA};
use crate::bench::percentile;
use crate::protocol::failure::FailureCode;
use crate::protocol::heartbeat::Heartbeat;
use crate::protocol::kinds;
use crate::protocol::nip89::Announcement;
use crate::protocol::nip90::{Amount, Feedback, JobStatus};
use crate::protocol::receipt::Receipt;
use crate::protocol::tags;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// Histogram bucket bounds, ms.
const BUCKETS: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

#[derive(Debug, Default, Clone)]
struct Job {
    kind: Option<u16>,
    buyer: Option<PublicKey>,
    /// When first known (request time if the request was seen).
    first_ms: u64,
    submitted_ms: Option<u64>,
    submitted_at: Option<u64>,
    claimed_ms: Option<u64>,
    result_ms: Option<u64>,
    receipt_ms: Option<u64>,
    failed: Option<(FailureCode, u64)>,
    provider: Option<PublicKey>,
    /// The one provider the request was addressed to, if it named exactly one.
    target: Option<PublicKey>,
    requested_msat: Option<u64>,
    settled_msat: Option<u64>,
}

impl Job {
    fn status(&self, failed: bool) -> &'static str {
        if self.receipt_ms.is_some() {
            "paid"
        } else if self.result_ms.is_some() {
            "done"
        } else if failed {
            "failed"
        } else if self.claimed_ms.is_some() {
            "processing"
        } else {
            "submitted"
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Provider {
    announce: Option<Announcement>,
    heartbeat: Option<Heartbeat>,
    last_ms: u64,
}

/// The collector state. See the module documentation.
#[derive(Debug)]
pub struct Collector {
    window_ms: u64,
    seen: HashSet<EventId>,
    jobs: HashMap<EventId, Job>,
    order: VecDeque<(u64, EventId)>,
    providers: HashMap<PublicKey, Provider>,
    ingested: u64,
}

impl Collector {
    /// A collector keeping `window` of history (24 h in production).
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window_ms: window.as_millis() as u64,
            seen: HashSet::new(),
            jobs: HashMap::new(),
            order: VecDeque::new(),
            providers: HashMap::new(),
            ingested: 0,
        }
    }

    /// Events folded in so far (duplicates excluded).
    pub fn ingested(&self) -> u64 {
        self.ingested
    }

    /// Folds one event in. `arrival_ms` is when it was seen live (None when loaded from
    /// history: the event's own timestamp is used). Unknown kinds and malformed events are
    /// ignored; a duplicate (same id, e.g. from two relays) is counted once.
    pub fn ingest(&mut self, event: &Event, arrival_ms: Option<u64>) {
        if !self.seen.insert(event.id) {
            return;
        }
        self.ingested += 1;
        let at = arrival_ms.unwrap_or(event.created_at.as_secs() * 1000);
        let kind = event.kind.as_u16();
        if kinds::JOB_REQUESTS.contains(&kind) {
            let job = self.job(event.id, at);
            job.kind = Some(kind);
            job.buyer = Some(event.pubkey);
            job.submitted_ms = Some(at);
            job.submitted_at = Some(event.created_at.as_secs());
            job.first_ms = at;
            let mut named = tags::all(event, "p");
            job.target = match (named.next(), named.next()) {
                (Some(p), None) => p.first().and_then(|h| PublicKey::from_hex(h).ok()),
                _ => None,
            };
        } else if kinds::JOB_RESULTS.contains(&kind) {
            let Some(job_id) = first_event_tag(event) else {
                return;
            };
            let amount = Amount::from_event(event).ok().flatten();
            let provider = event.pubkey;
            let job = self.job(job_id, at);
            if job.result_ms.is_none() {
                job.result_ms = Some(at);
                job.provider = Some(provider);
                job.requested_msat = amount.map(|a| a.msats);
            }
            self.touch(provider, at);
        } else if event.kind == kinds::JOB_FEEDBACK {
            let Ok(fb) = Feedback::from_event(event) else {
                return;
            };
            let job = self.job(fb.request_id, at);
            match fb.status {
                JobStatus::Processing if job.claimed_ms.is_none() => {
                    job.claimed_ms = Some(at);
                    job.provider.get_or_insert(fb.provider);
                }
                JobStatus::Error if job.failed.is_none() => {
                    job.failed = Some((fb.failure.unwrap_or(FailureCode::ExecError), at));
                    job.provider.get_or_insert(fb.provider);
                }
                _ => {}
            }
            self.touch(fb.provider, at);
        } else if event.kind == kinds::RECEIPT {
            let Ok(r) = Receipt::from_event(event) else {
                return;
            };
            // Only proven payments count as settled sats.
            if r.verify().is_err() {
                return;
            }
            let job = self.job(r.request_id, at);
            if job.receipt_ms.is_none() {
                job.receipt_ms = Some(at);
                job.settled_msat = Some(r.amount_msats);
                job.provider.get_or_insert(event.pubkey);
            }
            self.touch(event.pubkey, at);
        } else if event.kind == kinds::ANNOUNCE {
            if let Ok(a) = Announcement::from_event(event) {
                let p = self.providers.entry(event.pubkey).or_default();
                if p.announce
                    .as_ref()
                    .is_none_or(|old| old.created_at <= a.created_at)
                {
                    p.announce = Some(a);
                }
                p.last_ms = p.last_ms.max(at);
            }
        } else if event.kind == kinds::HEARTBEAT {
            if let Ok(h) = Heartbeat::from_event(event) {
                let p = self.providers.entry(event.pubkey).or_default();
                if p.heartbeat
                    .as_ref()
                    .is_none_or(|old| old.created_at <= h.created_at)
                {
                    p.heartbeat = Some(h);
                }
                p.last_ms = p.last_ms.max(at);
            }
        }
        if self.ingested % 4096 == 0 {
            self.evict(at);
        }
    }

    fn job(&mut self, id: EventId, at: u64) -> &mut Job {
        if !self.jobs.contains_key(&id) {
            self.order.push_back((at, id));
        }
        self.jobs.entry(id).or_insert_with(|| Job {
            first_ms: at,
            ..Job::default()
        })
    }

    fn touch(&mut self, provider: PublicKey, at: u64) {
        let p = self.providers.entry(provider).or_default();
        p.last_ms = p.last_ms.max(at);
    }

    /// Drops jobs older than the window (and the ids that deduplicated them).
    pub fn evict(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while let Some(&(at, id)) = self.order.front() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            self.jobs.remove(&id);
            self.seen.remove(&id);
        }
        self.providers.retain(|_, p| {
            p.last_ms >= cutoff
                || p.heartbeat
                    .as_ref()
                    .is_some_and(|h| h.is_online(Timestamp::from(now_ms / 1000)))
        });
        // Ids of non-request events are forgotten with the window too, approximately: bound them.
        if self.seen.len() > 4 * (self.jobs.len() + self.providers.len()) + 100_000 {
            self.seen.clear();
            self.seen.extend(self.jobs.keys().copied());
        }
    }

    /// The numbers at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let now = Timestamp::from(now_ms / 1000);
        let in_window = |t: u64, span: u64| t + span > now_ms && t <= now_ms + 1_000;
        let mut windows = Windows::default();
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let mut latency = Vec::new();
        let mut pickup = Vec::new();
        let mut payment = Vec::new();
        let (mut ended, mut succeeded) = (0u64, 0u64);
        let mut series = vec![0u64; 60];
        for job in self.jobs.values() {
            let failed = self.failure(job, now);
            let start = job.submitted_ms.unwrap_or(job.first_ms);
            for (span, w) in [
                (MINUTE, &mut windows.last_minute),
                (HOUR, &mut windows.last_hour),
                (24 * HOUR, &mut windows.last_day),
            ] {
                if job.submitted_ms.is_some_and(|t| in_window(t, span)) {
                    w.submitted += 1;
                }
                if job.result_ms.is_some_and(|t| in_window(t, span)) {
                    w.completed += 1;
                    w.sats_requested += job.requested_msat.unwrap_or(0) / 1000;
                }
                if job.result_ms.is_none()
                    && failed.as_ref().is_some_and(|(_, t)| in_window(*t, span))
                {
                    w.failed += 1;
                }
                if job.receipt_ms.is_some_and(|t| in_window(t, span)) {
                    w.sats_settled += job.settled_msat.unwrap_or(0) / 1000;
                }
            }
            if let Some(t) = job.submitted_ms {
                if t <= now_ms && now_ms - t < HOUR {
                    series[59 - ((now_ms - t) / MINUTE) as usize] += 1;
                }
            }
            if job.result_ms.is_none() {
                if let Some((code, t)) = &failed {
                    if in_window(*t, 24 * HOUR) {
                        *failures.entry(code.to_string()).or_default() += 1;
                    }
                }
            }
            // Latencies and success: jobs of the last hour.
            if start + HOUR > now_ms {
                if job.result_ms.is_some() {
                    ended += 1;
                    succeeded += 1;
                } else if failed.is_some() {
                    ended += 1;
                }
                if let Some(s) = job.submitted_ms {
                    if let Some(r) = job.result_ms {
                        latency.push(r.saturating_sub(s) as f64);
                    }
                    if let Some(c) = job.claimed_ms {
                        pickup.push(c.saturating_sub(s) as f64);
                    }
                }
                if let (Some(r), Some(p)) = (job.result_ms, job.receipt_ms) {
                    payment.push(p.saturating_sub(r) as f64);
                }
            }
        }
        let online = self
            .providers
            .values()
            .filter(|p| p.heartbeat.as_ref().is_some_and(|h| h.is_online(now)))
            .count() as u64;
        let mut rows = self.providers(now_ms);
        let known = rows.len() as u64;
        rows.truncate(10);
        let mut histogram: Vec<Bucket> = BUCKETS
            .iter()
            .map(|&le| Bucket {
                le_ms: le,
                count: 0,
            })
            .chain(std::iter::once(Bucket {
                le_ms: u64::MAX,
                count: 0,
            }))
            .collect();
        for l in &latency {
            if let Some(b) = histogram.iter_mut().find(|b| *l <= b.le_ms as f64) {
                b.count += 1;
            }
        }
        let mut recent: Vec<(&EventId, &Job)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.submitted_ms.is_some())
            .collect();
        recent.sort_by(|a, b| b.1.submitted_ms.cmp(&a.1.submitted_ms).then(a.0.cmp(b.0)));
        let recent_jobs = recent
            .into_iter()
            .take(20)
            .map(|(id, j)| job_row(id, j, self.failure(j, now)))
            .collect();
        Snapshot {
            schema: SCHEMA.to_string(),
            generated_at: now.as_secs(),
            relays: Vec::new(),
            online_nodes: online,
            known_providers: known,
            jobs_per_min: windows.last_minute.submitted as f64,
            completed_per_min: windows.last_minute.completed as f64,
            success_rate: (ended > 0).then(|| succeeded as f64 / ended as f64),
            latency_ms: percentiles(latency),
            pickup_ms: percentiles(pickup),
            payment_ms: percentiles(payment),
            windows,
            failures,
            top_providers: rows,
            jobs_per_min_series: series,
            latency_histogram: histogram,
            recent_jobs,
            personal: None,
            notices: Vec::new(),
        }
    }

    /// Every provider seen in the window (not only the top ten), busiest first. Providers that
    /// worked but never announced or heartbeated are included.
    pub fn providers(&self, now_ms: u64) -> Vec<ProviderRow> {
        let now = Timestamp::from(now_ms / 1000);
        let mut tallies: HashMap<PublicKey, ProviderTally> = HashMap::new();
        for job in self.jobs.values() {
            let Some(p) = job.provider else { continue };
            let t = tallies.entry(p).or_default();
            if let Some(r) = job.result_ms {
                t.completed += 1;
                if let Some(c) = job.claimed_ms {
                    t.runtimes.push(r.saturating_sub(c) as f64);
                }
                t.earned_msat += job.settled_msat.unwrap_or(0);
            } else if let Some((code, _)) = self.failure(job, now) {
                *t.failed.entry(code.to_string()).or_default() += 1;
            }
        }
        let mut rows: Vec<ProviderRow> = self
            .providers
            .iter()
            .map(|(pk, p)| provider_row(pk, p, tallies.remove(pk).unwrap_or_default(), now))
            .collect();
        rows.extend(
            tallies
                .into_iter()
                .map(|(pk, t)| provider_row(&pk, &Provider::default(), t, now)),
        );
        rows.sort_by(|a, b| b.completed.cmp(&a.completed).then(a.pubkey.cmp(&b.pubkey)));
        rows
    }

    /// One job's row, if known.
    pub fn job_row(&self, id: &EventId, now_ms: u64) -> Option<JobRow> {
        let now = Timestamp::from(now_ms / 1000);
        self.jobs
            .get(id)
            .map(|j| job_row(id, j, self.failure(j, now)))
    }

    /// Why a job failed: the provider's `error` feedback, or `provider-offline` for a job
    /// claimed by (or addressed to) a provider whose heartbeat has since expired with no result:
    /// a killed node says nothing, so its silence is the evidence.
    fn failure(&self, job: &Job, now: Timestamp) -> Option<(FailureCode, u64)> {
        if job.failed.is_some() || job.result_ms.is_some() {
            return job.failed.clone();
        }
        let provider = job.provider.or(job.target)?;
        let since = job.claimed_ms.or(job.submitted_ms)?;
        let p = self.providers.get(&provider)?;
        let offline_since = match &p.heartbeat {
            Some(beat) if beat.is_online(now) => return None,
            Some(beat) => beat.expires_at?.as_secs() * 1000,
            // A Pylon node beats before it takes jobs; relays drop expired beats, so a viewer
            // that arrives later sees none at all.
            None if p.announce.as_ref().is_some_and(|a| a.pylon) => since,
            None => return None,
        };
        Some((FailureCode::ProviderOffline, offline_since.max(since)))
    }
}

#[derive(Debug, Default)]
struct ProviderTally {
    completed: u64,
    failed: BTreeMap<String, u64>,
    runtimes: Vec<f64>,
    earned_msat: u64,
}

fn provider_row(pk: &PublicKey, p: &Provider, t: ProviderTally, now: Timestamp) -> ProviderRow {
    let mut runtimes = t.runtimes;
    runtimes.sort_by(f64::total_cmp);
    let info = p.announce.as_ref().map(|a| &a.info);
    ProviderRow {
        pubkey: pk.to_hex(),
        npub: pk.to_bech32().unwrap_or_default(),
        name: info
            .map(|i| i.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_default(),
        online: p.heartbeat.as_ref().is_some_and(|h| h.is_online(now)),
        pylon: p.announce.as_ref().is_some_and(|a| a.pylon)
            || p.heartbeat.as_ref().is_some_and(|h| h.pylon),
        uptime_secs: p.heartbeat.as_ref().and_then(|h| h.info.uptime_secs),
        completed: t.completed,
        failed: t.failed,
        median_runtime_ms: (!runtimes.is_empty()).then(|| percentile(&runtimes, 50.0)),
        earnings_sats: t.earned_msat / 1000,
        prices: info.map(|i| i.prices.clone()).unwrap_or_default(),
        kinds: p
            .announce
            .as_ref()
            .map(|a| a.kinds.clone())
            .unwrap_or_default(),
        queue_depth: p.heartbeat.as_ref().and_then(|h| h.info.queue_depth),
    }
}

fn job_row(id: &EventId, j: &Job, failed: Option<(FailureCode, u64)>) -> JobRow {
    JobRow {
        job_id: id.to_hex(),
        kind: j.kind,
        buyer: j.buyer.map(|b| b.to_hex()),
        provider: j.provider.map(|p| p.to_hex()),
        status: j.status(failed.is_some()).to_string(),
        failure: failed
            .filter(|_| j.result_ms.is_none())
            .map(|(c, _)| c.to_string()),
        submitted_at: j.submitted_at,
        latency_ms: match (j.submitted_ms, j.result_ms) {
            (Some(s), Some(r)) => Some(r.saturating_sub(s)),
            _ => None,
        },
        amount_msat: j.requested_msat,
    }
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    Percentiles {
        p50: (!v.is_empty()).then(|| percentile(&v, 50.0)),
        p95: (!v.is_empty()).then(|| percentile(&v, 95.0)),
        samples: v.len() as u64,
    }
}

fn first_event_tag(event: &Event) -> Option<EventId> {
    tags::first(event, "e").and_then(|h| EventId::from_hex(h).ok())
}
