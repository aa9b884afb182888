//! `pylon bench stats`: how fast the collector folds events in and how much memory a busy day
//! costs, beside the floor of merely parsing the same events (measured in the same run).

use std::time::{Duration, Instant};

use nostr_sdk::{Event, JsonUtil, Keys};
use serde::Serialize;

use super::round3;
use crate::bolt11::{create, Purpose};
use crate::protocol::heartbeat::{Heartbeat, HeartbeatInfo};
use crate::protocol::nip89::{Announcement, ProviderInfo};
use crate::protocol::nip90::{
    Amount, JobInput, JobRequest, JobResult, JobStatus, NewFeedback, NewJob,
};
use crate::protocol::receipt::Receipt;
use crate::stats::{Collector, DAY};

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct StatsBench {
    /// Providers simulated.
    pub providers: usize,
    /// Jobs in the window.
    pub jobs: usize,
    /// Events folded in.
    pub events: u64,
    /// Baseline: events/s parsed from JSON (what receiving them costs at least).
    pub parse_events_per_sec: f64,
    /// Events/s folded into the collector (parsed events in, excluding parsing).
    pub ingest_events_per_sec: f64,
    /// parse rate ÷ ingest rate: how many times costlier folding is than parsing.
    pub ingest_cost_over_parse: f64,
    /// One snapshot over the full window, ms.
    pub snapshot_ms: f64,
    /// Resident memory growth while the window filled, MiB.
    pub collector_mib: f64,
    /// Seconds spent generating and signing the synthetic events (not part of the figures).
    pub generate_secs: f64,
}

/// Runs the benchmark with `providers` providers and `jobs` jobs (a tenth of them receipted).
pub fn run(
    providers: usize,
    jobs: usize,
    progress: impl Fn(&str),
) -> Result<StatsBench, super::wallet::BenchError> {
    let providers = providers.max(1);
    let mut collector = Collector::new(DAY);
    let now_ms = crate::store::now_ms();
    let rss_before = rss_mib()?;
    let provider_keys: Vec<Keys> = (0..providers).map(|_| Keys::generate()).collect();
    let buyer = Keys::generate();
    let node = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let (mut generate, mut parse, mut ingest) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut events = 0u64;
    let mut fold = |batch: Vec<String>,
                    collector: &mut Collector,
                    parse: &mut Duration,
                    ingest: &mut Duration| {
        let t = Instant::now();
        let parsed: Vec<Event> = batch
            .iter()
            .filter_map(|j| Event::from_json(j).ok())
            .collect();
        *parse += t.elapsed();
        let t = Instant::now();
        for (i, e) in parsed.iter().enumerate() {
            collector.ingest(e, Some(now_ms - 60_000 + (i as u64 % 60_000)));
        }
        *ingest += t.elapsed();
        events += parsed.len() as u64;
    };

    let t = Instant::now();
    let mut batch = Vec::new();
    for k in &provider_keys {
        let info = ProviderInfo {
            name: "bench".into(),
            prices: [("5960".to_string(), 1000)].into(),
            ..Default::default()
        };
        if let Ok(e) = Announcement::to_event(k, "pylon", &[5960], &info) {
            batch.push(e.as_json());
        }
        if let Ok(e) = Heartbeat::to_event(
            k,
            &HeartbeatInfo {
                interval_secs: Some(60),
                ..Default::default()
            },
            &[5960],
        ) {
            batch.push(e.as_json());
        }
    }
    generate += t.elapsed();
    fold(
        std::mem::take(&mut batch),
        &mut collector,
        &mut parse,
        &mut ingest,
    );

    let chunk = 5_000;
    for start in (0..jobs).step_by(chunk) {
        progress(&format!("jobs {start}..{}", (start + chunk).min(jobs)));
        let t = Instant::now();
        for i in start..(start + chunk).min(jobs) {
            let provider = &provider_keys[i % providers];
            let Ok(req) = (NewJob {
                kind: 5960,
                inputs: vec![JobInput::text(format!("fn f{i}() {{}}"))],
                providers: vec![provider.public_key()],
                ..Default::default()
            })
            .to_event(&buyer) else {
                continue;
            };
            let Ok(parsed) = JobRequest::from_event(&req, None) else {
                continue;
            };
            let claim = NewFeedback {
                status: JobStatus::Processing,
                info: String::new(),
                failure: None,
                amount: None,
            }
            .to_event(provider, req.id, buyer.public_key());
            let receipted = i % 10 == 0;
            let invoice = if receipted {
                create(
                    &node,
                    1000,
                    &Purpose::Description(format!("pylon job {}", req.id)),
                    3600,
                )
                .ok()
            } else {
                None
            };
            let amount = Amount {
                msats: 1000,
                bolt11: Some(
                    invoice
                        .as_ref()
                        .map(|v| v.bolt11.clone())
                        .unwrap_or_else(|| "lnbcrt10n1bench".into()),
                ),
            };
            let result = JobResult::to_event(provider, &req, &parsed, "{}", Some(&amount));
            batch.push(req.as_json());
            if let Ok(c) = claim {
                batch.push(c.as_json());
            }
            if let Ok(r) = &result {
                batch.push(r.as_json());
            }
            if let (Some(inv), Ok(r)) = (invoice, result) {
                let receipt = Receipt {
                    id: None,
                    provider: None,
                    request_id: req.id,
                    result_id: r.id,
                    buyer: buyer.public_key(),
                    amount_msats: 1000,
                    bolt11: inv.bolt11,
                    payment_hash: inv.payment_hash,
                    preimage: inv.preimage,
                    settlement: None,
                    created_at: None,
                };
                if let Ok(e) = receipt.to_event(provider) {
                    batch.push(e.as_json());
                }
            }
        }
        generate += t.elapsed();
        fold(
            std::mem::take(&mut batch),
            &mut collector,
            &mut parse,
            &mut ingest,
        );
    }
    let t = Instant::now();
    let snap = collector.snapshot(now_ms);
    let snapshot_ms = t.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(
        completed = snap.windows.last_day.completed,
        "bench snapshot"
    );
    let rss_after = rss_mib()?;
    let parse_rate = events as f64 / parse.as_secs_f64().max(1e-9);
    let ingest_rate = events as f64 / ingest.as_secs_f64().max(1e-9);
    Ok(StatsBench {
        providers,
        jobs,
        events,
        parse_events_per_sec: round3(parse_rate),
        ingest_events_per_sec: round3(ingest_rate),
        ingest_cost_over_parse: round3(parse_rate / ingest_rate.max(1e-9)),
        snapshot_ms: round3(snapshot_ms),
        collector_mib: round3((rss_after - rss_before).max(0.0)),
        generate_secs: round3(generate.as_secs_f64()),
    })
}

/// Resident set size of this process, MiB (Linux). Unreadable is an error, not 0: a 0 would
/// read as "the collector costs no memory".
fn rss_mib() -> Result<f64, super::wallet::BenchError> {
    crate::memory::resident_bytes()
        .map(|b| b as f64 / (1024.0 * 1024.0))
        .ok_or_else(|| super::wallet::BenchError("cannot read /proc/self/statm".into()))
}
