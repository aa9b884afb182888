//! `pylon bench wallet`: the pay-invoice round trip and payment throughput through the embedded
//! relay and a real hub (SQLite ledger on disk), beside the raw relay measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::nips::nip47::NostrWalletConnectURI;
use nostr_sdk::Keys;
use serde::Serialize;

use super::relay::{bench_relay_settings, measure, RelayBaseline};
use super::{round3, Latency};
use crate::hub::{self, FaucetLimits, HubSettings, Ledger, Service};
use crate::protocol::nip47::MakeInvoiceParams;
use crate::relay::{EmbeddedRelay, MarketClient, Reachability};
use crate::wallet::{NwcWallet, Wallet};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct WalletBenchOptions {
    /// Payments made one after another, for the round trip.
    pub sequential: usize,
    /// Payments made concurrently, for the throughput.
    pub concurrent: usize,
    /// Concurrent paying clients.
    pub clients: usize,
}

impl Default for WalletBenchOptions {
    fn default() -> Self {
        Self {
            sequential: 200,
            concurrent: 1000,
            clients: 8,
        }
    }
}

/// The report printed by `pylon bench wallet --json`.
#[derive(Debug, Clone, Serialize)]
pub struct WalletBench {
    /// The baseline.
    pub relay: RelayBaseline,
    /// `pay_invoice` request → response, one at a time.
    pub pay_round_trip_ms: Latency,
    /// Payments settled per second with `clients` paying at once.
    pub payments_per_sec: f64,
    /// Concurrent payments made.
    pub concurrent_payments: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Pay round trip p50 ÷ raw relay round trip p50 (a payment crosses the relay twice).
    pub pay_p50_over_relay_p50: f64,
    /// Raw relay events/s ÷ payments/s (a payment moves 6 events: request, response, 4 notifications).
    pub relay_rate_over_payment_rate: f64,
    /// The hub's audit after the run.
    pub audit_ok: bool,
}

/// Errors running the benchmark.
#[derive(Debug, thiserror::Error)]
#[error("wallet benchmark: {0}")]
pub struct BenchError(pub String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Runs the benchmark; `progress` receives one line per phase.
pub async fn run(
    options: WalletBenchOptions,
    progress: impl Fn(&str),
) -> Result<WalletBench, BenchError> {
    let dir = tempfile_dir()?;
    let relay = EmbeddedRelay::start(&bench_relay_settings(), &dir.join("relay"))
        .await
        .map_err(err)?;
    let url = relay.url();
    progress("measuring the raw relay (round trip, event rate)");
    let baseline = measure(&url, 200, 5000).await.map_err(err)?;

    progress("starting the hub");
    let hub_keys = Keys::generate();
    let node_key = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
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
    let ledger = Ledger::open(&dir.join("ledger.db")).map_err(err)?;
    let service = Service::new(hub_keys.clone(), node_key, ledger, settings);
    let hub_client = MarketClient::connect(
        hub_keys.clone(),
        std::slice::from_ref(&url),
        Duration::from_secs(5),
        Reachability::OneShot,
    )
    .await
    .map_err(err)?;
    let running = hub::start(service, Arc::new(hub_client))
        .await
        .map_err(err)?;

    progress(&format!(
        "funding {} clients from the faucet",
        options.clients + 1
    ));
    let mut payers = Vec::new();
    for _ in 0..options.clients.max(1) {
        let uri = NostrWalletConnectURI::new(
            hub_keys.public_key(),
            vec![url.clone()],
            Keys::generate().secret_key().clone(),
            None,
        );
        let w = NwcWallet::connect(&uri, Default::default())
            .await
            .map_err(err)?;
        let inv = invoice(&w, 1_000_000_000).await?;
        w.faucet(inv).await.map_err(err)?;
        payers.push(Arc::new(w));
    }
    let payee_uri = NostrWalletConnectURI::new(
        hub_keys.public_key(),
        vec![url.clone()],
        Keys::generate().secret_key().clone(),
        None,
    );
    let payee = NwcWallet::connect(&payee_uri, Default::default())
        .await
        .map_err(err)?;

    progress(&format!("{} sequential payments", options.sequential));
    let mut samples = Vec::with_capacity(options.sequential);
    for _ in 0..options.sequential {
        let bolt11 = invoice(&payee, 1_000).await?;
        let started = Instant::now();
        payers[0].pay_invoice(bolt11, None).await.map_err(err)?;
        samples.push(started.elapsed());
    }

    progress(&format!(
        "{} concurrent payments from {} clients",
        options.concurrent,
        payers.len()
    ));
    let mut invoices = Vec::with_capacity(options.concurrent);
    for _ in 0..options.concurrent {
        invoices.push(invoice(&payee, 1_000).await?);
    }
    let per_client = invoices.len().div_ceil(payers.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (chunk, payer) in invoices.chunks(per_client.max(1)).zip(payers.iter()) {
        let (chunk, payer) = (chunk.to_vec(), payer.clone());
        tasks.push(tokio::spawn(async move {
            for bolt11 in chunk {
                payer.pay_invoice(bolt11, None).await?;
            }
            Ok::<_, crate::wallet::WalletError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)?.map_err(err)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let payments_per_sec = round3(options.concurrent as f64 / elapsed.max(1e-9));

    let ledger = running.service().ledger();
    let audit_ok = ledger
        .lock()
        .map_err(|_| err("ledger lock"))?
        .audit()
        .map_err(err)?
        .ok;
    running.stop().await;
    for p in payers {
        if let Ok(w) = Arc::try_unwrap(p) {
            w.shutdown().await;
        }
    }
    payee.shutdown().await;
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let pay = Latency::of(&samples);
    Ok(WalletBench {
        pay_p50_over_relay_p50: round3(pay.p50 / baseline.round_trip_ms.p50.max(1e-9)),
        relay_rate_over_payment_rate: round3(baseline.events_per_sec / payments_per_sec.max(1e-9)),
        relay: baseline,
        pay_round_trip_ms: pay,
        payments_per_sec,
        concurrent_payments: options.concurrent,
        clients: options.clients.max(1),
        audit_ok,
    })
}

async fn invoice(w: &NwcWallet, msat: u64) -> Result<String, BenchError> {
    w.make_invoice(MakeInvoiceParams {
        amount: msat,
        description: Some("bench".into()),
        description_hash: None,
        expiry: None,
    })
    .await
    .map_err(err)?
    .invoice
    .ok_or_else(|| err("the hub returned no invoice"))
}

/// A fresh scratch directory under the system temp dir.
pub(crate) fn tempfile_dir() -> Result<std::path::PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "pylon-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(err)?;
    Ok(dir)
}
