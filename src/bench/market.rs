//! `pylon bench loop`: the paid job loop (request → claim → result → payment → receipt) through
//! the embedded relay, a real hub and in-process provider nodes, beside the raw relay measured in
//! the same run. DESIGN.md's targets: paid jobs/s ≥ raw events/s ÷ 8, and p50 ≤ 10× one raw
//! relay round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::{Keys, PublicKey, RelayUrl};
use serde::Serialize;

use super::relay::{bench_relay_settings, measure, RelayBaseline};
use super::wallet::{tempfile_dir, BenchError};
use super::{round3, Latency};
use crate::buyer::{Buyer, Outcome, WaitOptions};
use crate::executors::Registry;
use crate::hub::{self, FaucetLimits, HubSettings, Ledger, Service};
use crate::protocol::nip47::MakeInvoiceParams;
use crate::protocol::nip90::{JobInput, NewJob};
use crate::provider::{Node, NodeOptions};
use crate::relay::{EmbeddedRelay, MarketClient, Reachability};
use crate::store::{JobState, Role, Store};
use crate::wallet::{NwcWallet, Wallet};

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
    let dir = tempfile_dir()?;
    let relay = EmbeddedRelay::start(&bench_relay_settings(), &dir.join("relay"))
        .await
        .map_err(|e| err(&e))?;
    let url = relay.url();
    progress("measuring the raw relay (round trip, event rate)");
    let baseline = measure(&url, 200, 5000).await.map_err(|e| err(&e))?;

    progress("starting the hub");
    let hub_keys = Keys::generate();
    let settings = HubSettings {
        faucet: FaucetLimits {
            max_msat_per_request: u64::MAX / 4,
            max_msat_per_day: u64::MAX / 4,
            max_requests_per_minute: u32::MAX,
        },
        requests_per_second: 1_000_000,
        request_burst: 1_000_000,
        ..HubSettings::default()
    };
    let service = Service::new(
        hub_keys.clone(),
        bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng()),
        Ledger::open(&dir.join("ledger.db")).map_err(|e| err(&e))?,
        settings,
    );
    let hub_relay = connect(&hub_keys, &url).await?;
    let running_hub = hub::start(service, Arc::new(hub_relay))
        .await
        .map_err(|e| err(&e))?;

    progress(&format!("starting {} provider nodes", options.providers));
    let mut nodes = Vec::new();
    let mut providers: Vec<PublicKey> = Vec::new();
    for i in 0..options.providers.max(1) {
        let keys = Keys::generate();
        let wallet = wallet_for(&hub_keys.public_key(), &url).await?;
        let store = Arc::new(Store::open(&dir.join(format!("node{i}"))).map_err(|e| err(&e))?);
        let node = Node::start(
            keys.clone(),
            Arc::new(connect(&keys, &url).await?),
            Arc::new(wallet),
            store,
            Registry::builtin(),
            NodeOptions {
                prices: [(crate::protocol::kinds::CODE_ANALYSIS, 1_000)].into(),
                max_concurrent: 8,
                buyer_jobs_per_minute: 1_000_000,
                buyer_max_concurrent: 1_000_000,
                settlement_poll: Duration::from_secs(1),
                ..NodeOptions::default()
            },
        )
        .await
        .map_err(|e| err(&e))?;
        providers.push(keys.public_key());
        nodes.push(node);
    }

    progress("funding the buyer");
    let buyer_keys = Keys::generate();
    let buyer_wallet = wallet_for(&hub_keys.public_key(), &url).await?;
    let grant = buyer_wallet
        .make_invoice(MakeInvoiceParams {
            amount: 1_000_000_000,
            description: Some("bench".into()),
            description_hash: None,
            expiry: None,
        })
        .await
        .map_err(|e| err(&e))?;
    buyer_wallet
        .faucet(grant.invoice.unwrap_or_default())
        .await
        .map_err(|e| err(&e))?;
    let buyer_store = Arc::new(Store::open(&dir.join("buyer")).map_err(|e| err(&e))?);
    let buyer = Arc::new(
        Buyer::start(
            buyer_keys.clone(),
            Arc::new(connect(&buyer_keys, &url).await?),
            Some(Arc::new(buyer_wallet)),
            buyer_store.clone(),
        )
        .await
        .map_err(|e| err(&e))?,
    );
    let wait = WaitOptions {
        timeout: Duration::from_secs(60),
        auto_pay: true,
        max_msats: None,
    };

    progress(&format!("{} jobs one at a time", options.sequential));
    let mut sequential = Vec::new();
    let mut all_done = true;
    for i in 0..options.sequential {
        let job = job(i, providers[i % providers.len()]);
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
            job(options.sequential + i, providers[i % providers.len()]),
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

    let audit_ok = {
        let ledger = running_hub.service().ledger();
        let guard = ledger
            .lock()
            .map_err(|_| BenchError("ledger lock".into()))?;
        guard.audit().map_err(|e| err(&e))?.ok
    };
    progress("stopping");
    for n in nodes {
        n.stop().await;
    }
    drop(buyer);
    running_hub.stop().await;
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

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

fn job(i: usize, provider: PublicKey) -> NewJob {
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

fn job_ids(store: &Store, n: usize) -> Vec<String> {
    store
        .jobs()
        .list(Some(Role::Buyer), n as u64)
        .map(|v| v.into_iter().map(|r| r.job_id).collect())
        .unwrap_or_default()
}

fn stages(store: &Store, ids: &[String]) -> Stages {
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

async fn connect(keys: &Keys, url: &RelayUrl) -> Result<MarketClient, BenchError> {
    MarketClient::connect(
        keys.clone(),
        std::slice::from_ref(url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .map_err(|e| BenchError(e.to_string()))
}

async fn wallet_for(hub: &PublicKey, url: &RelayUrl) -> Result<NwcWallet, BenchError> {
    let uri = NostrWalletConnectURI::new(
        *hub,
        vec![url.clone()],
        Keys::generate().secret_key().clone(),
        None,
    );
    NwcWallet::connect(&uri, Default::default())
        .await
        .map_err(|e| BenchError(e.to_string()))
}
