//! `pylon bench repomap`: a generated 200-file repository mapped through 1, 10 and 30 in-process
//! providers, against the same analyzer in this process (`--local`), measured in the same run.
//! Target (DESIGN.md): 30 providers ≤ 2× local.

use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use serde::Serialize;

use super::market::bench_node_options;
use super::relay::bench_relay_settings;
use super::wallet::BenchError;
use super::{round3, Latency};
use crate::appliance::{open_hub_settings, Appliance};
use crate::fanout::walk::SourceFile;
use crate::fanout::{self, quality, sample, walk, Options};

/// One market run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Providers.
    pub providers: usize,
    /// Seconds for the whole map.
    pub wall_secs: f64,
    /// wall ÷ local wall.
    pub overhead_ratio: f64,
    /// Per file, dispatch → valid result.
    pub per_file_ms: Latency,
    /// Sats paid.
    pub sats_spent: u64,
    /// Files mapped.
    pub mapped: usize,
    /// Files given up.
    pub failed: usize,
    /// Providers that delivered.
    pub providers_used: usize,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct RepomapBench {
    /// Files in the generated repository.
    pub files: usize,
    /// The baseline: seconds for `--local`.
    pub local_wall_secs: f64,
    /// Per-file analysis time locally.
    pub local_per_file_ms: Latency,
    /// Market runs.
    pub runs: Vec<Run>,
    /// DESIGN.md's bound on the overhead ratio with 30 providers.
    pub target_overhead: f64,
    /// Whether the 30-provider run met it.
    pub target_met: Option<bool>,
    /// Definitions vs universal-ctags on the same repository (null when ctags is missing).
    pub quality: Option<quality::Quality>,
}

/// Maps `sources` through the providers of `market` as a fresh buyer funded from its faucet,
/// with the coordinator settings every repo-map benchmark uses. `progress` sees the live counts.
pub(crate) async fn map_through(
    market: &Appliance,
    sources: &[SourceFile],
    progress: impl Fn(&fanout::Progress) + Send + Sync,
) -> Result<fanout::Report, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let keys = Keys::generate();
    let (buyer, _) = market
        .funded_buyer(&keys, 1_000_000_000)
        .await
        .map_err(|e| err(&e))?;
    let relay = crate::appliance::connect(&keys, &market.url)
        .await
        .map_err(|e| err(&e))?;
    let options = Options {
        parallel: 64,
        timeout: Duration::from_secs(60),
        straggler_after: Duration::from_secs(10),
        ..Options::default()
    };
    let mapped = fanout::map_market(sources, buyer.clone(), &relay, &options, progress).await;
    relay.shutdown().await;
    drop(buyer);
    let (report, _, _) = mapped.map_err(|e| err(&e))?;
    Ok(report)
}

/// Runs the benchmark over `provider_counts`.
pub async fn run(
    files: usize,
    provider_counts: &[usize],
    progress: impl Fn(&str),
) -> Result<RepomapBench, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let repo = tempfile::tempdir().map_err(|e| err(&e))?;
    sample::generate(repo.path(), files).map_err(|e| err(&e))?;
    let (sources, _) = walk::collect(repo.path(), &[], &[]).map_err(|e| err(&e))?;

    progress("local baseline");
    let started = Instant::now();
    let (_, took) = fanout::map_local(&sources);
    let local = started.elapsed().as_secs_f64();

    let mut runs = Vec::new();
    for &n in provider_counts {
        progress(&format!("{n} providers"));
        let mut market = Appliance::start(&bench_relay_settings(), None, None, open_hub_settings())
            .await
            .map_err(|e| err(&e))?;
        market
            .add_providers(n, &bench_node_options())
            .await
            .map_err(|e| err(&e))?;
        let report = map_through(&market, &sources, |_| {}).await?;
        runs.push(Run {
            providers: n,
            overhead_ratio: round3(report.wall_secs / local.max(1e-9)),
            wall_secs: report.wall_secs,
            per_file_ms: report.per_file_ms,
            sats_spent: report.spent_msats / 1000,
            mapped: report.mapped,
            failed: report.failed.len(),
            providers_used: report.providers_used,
        });
        market.stop().await;
    }
    let target = 2.0;
    Ok(RepomapBench {
        files: sources.len(),
        local_wall_secs: round3(local),
        local_per_file_ms: Latency::of(&took),
        target_met: runs
            .iter()
            .find(|r| r.providers == 30)
            .map(|r| r.overhead_ratio <= target),
        runs,
        target_overhead: target,
        quality: quality::compare(repo.path()).ok(),
    })
}
