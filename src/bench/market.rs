//! `pylon bench loop`: the paid job loop (request → claim → result → payment → receipt) through
//! the embedded relay, a real hub and in-process provider nodes, beside the raw relay measured in
//! the same run. DESIGN.md's targets: paid jobs/s ≥ raw events/s ÷ 8, and p50 ≤ 10× one raw
//! relay round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::{Keys, PublicKey};
use serde::Serialize;

use super::relay::{bench_relay_settings, measure, RelayBaseline};
use super::wallet::BenchError;
use super::{round3, Latency};
use crate::appliance::{open_hub_settings, Appliance};
use crate::buyer::{Outcome, WaitOptions};
use crate::protocol::nip90::{JobInput, NewJob};
use crate::provider::NodeOptions;
use crate::store::{JobState, Role, Store};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    /// Paid jobs in the throughput run.
    pub jobs: usize,
    /// Provider nodes.
    pub providers: usize,
    /// Jobs run one at a time for the latency figures.
    pub sequential: usize,
    /// Jobs in flight at once in the throughput run (a coordinator's window).
    pub window: usize,
}

/// Per-stage latencies (ms) from the buyer's store.
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    /// Submitted → a provider claimed it.
    pub pickup_ms: Latency,
    /// Claimed → result received.
    pub result_ms: Latency,
    /// Result → paid.
    pub payment_ms: Latency,
    /// Paid → receipt seen.
    pub receipt_ms: Latency,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct LoopBench {
    /// Baseline.
    pub relay: RelayBaseline,
    /// Providers.
    pub providers: usize,
    /// One job at a time: submit → receipt.
    pub sequential_end_to_end_ms: Latency,
    /// Stages of the sequential jobs.
    pub sequential_stages: Stages,
    /// Jobs in the throughput run.
    pub jobs: usize,
    /// Jobs in flight at once.
    pub window: usize,
    /// Seconds the throughput run took.
    pub wall_secs: f64,
    /// Paid, receipted jobs per second.
    pub paid_jobs_per_sec: f64,
    /// End to end under load.
    pub loaded_end_to_end_ms: Latency,
    /// Raw relay events/s ÷ 8: the throughput target.
    pub target_jobs_per_sec: f64,
    /// 10 × raw relay round trip p50: the latency target.
    pub target_p50_ms: f64,
    /// paid_jobs_per_sec ≥ target_jobs_per_sec.
    pub throughput_target_met: bool,
    /// sequential p50 ≤ target_p50_ms.
    pub latency_target_met: bool,
    /// Every job done, paid and receipted.
    pub all_done: bool,
    /// The hub's audit afterwards.
    pub audit_ok: bool,
}

/// Runs the benchmark; `progress` gets one line per phase.
pub async fn run(options: LoopOptions, progress: impl Fn(&str)) -> Result<LoopBench, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let mut market = Appliance::start(&bench_relay_settings(), None, None, open_hub_settings())
        .await
        .map_err(|e| err(&e))?;
    let url = market.url.clone();
    progress("measuring the raw relay (round trip, event rate)");
    let baseline = measure(&url, 200, 5000).await.map_err(|e| err(&e))?;

    progress(&format!("starting {} provider nodes", options.providers));
    let providers = market
        .add_providers(options.providers.max(1), &bench_node_options())
        .await
        .map_err(|e| err(&e))?;
    progress("funding the buyer");
    let (buyer, buyer_store) = market
        .funded_buyer(&Keys::generate(), 1_000_000_000)
        .await
        .map_err(|e| err(&e))?;
    let wait = WaitOptions {
        timeout: Duration::from_secs(60),
        auto_pay: true,
        max_msats: None,
    };

    progress(&format!("{} jobs one at a time", options.sequential));
    let mut sequential = Vec::new();
    let mut all_done = true;
    for i in 0..options.sequential {
        let job = bench_job(i, providers[i % providers.len()]);
        let started = Instant::now();
        let outcome = buyer.run(&job, wait).await.map_err(|e| err(&e))?;
        sequential.push(started.elapsed());
        all_done &= outcome.status == JobState::Done;
    }
    let sequential_ids = job_ids(&buyer_store, options.sequential);
    let stages = stages(&buyer_store, &sequential_ids);

    progress(&format!(
        "{} jobs, {} in flight at a time, across {} providers",
        options.jobs,
        options.window.max(1),
        providers.len()
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let window = Arc::new(tokio::sync::Semaphore::new(options.window.max(1)));
    for i in 0..options.jobs {
        let (buyer, job) = (
            buyer.clone(),
            bench_job(options.sequential + i, providers[i % providers.len()]),
        );
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = window.acquire_owned().await;
            let t = Instant::now();
            let o: Result<Outcome, _> = buyer.run(&job, wait).await;
            (
                t.elapsed(),
                o.map(|o| o.status == JobState::Done).unwrap_or(false),
            )
        }));
    }
    let mut loaded = Vec::new();
    for t in tasks {
        let (elapsed, done) = t.await.map_err(|e| err(&e))?;
        loaded.push(elapsed);
        all_done &= done;
    }
    let wall = started.elapsed().as_secs_f64();

    let audit_ok = market.audit().map(|a| a.ok).unwrap_or(false);
    progress("stopping");
    drop(buyer);
    market.stop().await;

    let sequential_ms = Latency::of(&sequential);
    let paid_jobs_per_sec = round3(options.jobs as f64 / wall.max(1e-9));
    let target_jobs_per_sec = round3(baseline.events_per_sec / 8.0);
    let target_p50_ms = round3(baseline.round_trip_ms.p50 * 10.0);
    Ok(LoopBench {
        providers: providers.len(),
        throughput_target_met: paid_jobs_per_sec >= target_jobs_per_sec,
        latency_target_met: sequential_ms.p50 <= target_p50_ms,
        relay: baseline,
        sequential_end_to_end_ms: sequential_ms,
        sequential_stages: stages,
        jobs: options.jobs,
        window: options.window.max(1),
        wall_secs: round3(wall),
        paid_jobs_per_sec,
        loaded_end_to_end_ms: Latency::of(&loaded),
        target_jobs_per_sec,
        target_p50_ms,
        all_done,
        audit_ok,
    })
}

/// The `i`th benchmark job: a tiny Rust file for `provider` (distinct per `i`, so no two jobs are
/// one event).
pub(crate) fn bench_job(i: usize, provider: PublicKey) -> NewJob {
    NewJob {
        kind: crate::protocol::kinds::CODE_ANALYSIS,
        inputs: vec![JobInput::text(format!(
            "//! Bench file {i}.\npub fn f{i}(x: u32) -> u32 {{ x + {i} }}\n"
        ))],
        params: vec![("path".into(), format!("bench/f{i}.rs"))],
        bid_msats: Some(10_000),
        providers: vec![provider],
        ..Default::default()
    }
}

pub(crate) fn job_ids(store: &Store, n: usize) -> Vec<String> {
    store
        .jobs()
        .list(Some(Role::Buyer), n as u64)
        .map(|v| v.into_iter().map(|r| r.job_id).collect())
        .unwrap_or_default()
}

pub(crate) fn stages(store: &Store, ids: &[String]) -> Stages {
    let mut pickup = Vec::new();
    let mut result = Vec::new();
    let mut payment = Vec::new();
    let mut receipt = Vec::new();
    let span = |a: Option<u64>, b: Option<u64>| Some(Duration::from_millis(b?.checked_sub(a?)?));
    for id in ids {
        let Ok(Some(r)) = store.jobs().get(id, Role::Buyer) else {
            continue;
        };
        pickup.extend(span(r.submitted_at, r.picked_up_at));
        result.extend(span(r.picked_up_at, r.published_at));
        payment.extend(span(r.published_at, r.paid_at));
        receipt.extend(span(r.paid_at, r.receipt_at));
    }
    Stages {
        pickup_ms: Latency::of(&pickup),
        result_ms: Latency::of(&result),
        payment_ms: Latency::of(&payment),
        receipt_ms: Latency::of(&receipt),
    }
}

/// Node options for benchmarks: the per-buyer limits out of the way (one buyer is the load, and
/// a fresh key: no credit limit either).
pub(crate) fn bench_node_options() -> NodeOptions {
    NodeOptions {
        prices: [(crate::protocol::kinds::CODE_ANALYSIS, 1_000)].into(),
        max_concurrent: 8,
        buyer_jobs_per_minute: 1_000_000,
        buyer_max_concurrent: 1_000_000,
        max_unpaid_jobs_unproven: u32::MAX,
        settlement_poll: Duration::from_secs(1),
        ..NodeOptions::default()
    }
}
