//! `pylon bench swarm`: what an in-process provider costs — resident memory per idle node and per
//! busy node, and the time to start 30 and 300 of them — against the process before the nodes.
//! Target (issue 8): ≤ 2 MiB per idle node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use serde::Serialize;

use super::market::bench_node_options;
use super::relay::bench_relay_settings;
use super::wallet::BenchError;
use super::{round3, Latency};
use crate::appliance::swarm::{Swarm, SwarmOptions};
use crate::appliance::{open_hub_settings, Appliance};
use crate::buyer::WaitOptions;
use crate::executors::Registry;
use crate::memory::resident_bytes;
use crate::protocol::nip90::{JobInput, NewJob};
use crate::store::JobState;

/// One swarm size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    /// Nodes.
    pub providers: usize,
    /// Seconds from nothing to all announced, funded and subscribed.
    pub start_secs: f64,
    /// Resident growth per node once all are idle, MiB.
    pub per_idle_node_mib: f64,
    /// Per node while every node serves jobs: the idle share plus the peak growth, MiB.
    pub per_busy_node_mib: f64,
    /// Jobs served in the busy phase.
    pub busy_jobs: usize,
    /// Their submit → receipt latency.
    pub busy_latency_ms: Latency,
    /// Every busy-phase job done, paid and receipted.
    pub all_done: bool,
    /// Busy-phase jobs that did not finish, by failure code (`error` when the buyer itself failed).
    pub failures: std::collections::BTreeMap<String, usize>,
    /// Buyers sending the burst at once (each with its own connection and wallet).
    pub buyers: usize,
    /// Sats the buyers' wallets lost in the burst, by their balances before and after.
    pub sats_spent: u64,
    /// Payments beyond one per done job, from the balances (must be 0).
    pub paid_twice: u64,
    /// Resident memory of the whole process at the peak of the burst, MiB.
    pub peak_mib: f64,
    /// The same once the process has been idle for [`SETTLE`] after the burst, MiB.
    pub after_burst_mib: f64,
    /// The same once the allocator returned its free memory (what `pylon swarm` does when its
    /// nodes are idle; see `release_free_memory`), MiB.
    pub after_trim_mib: f64,
}

/// Idle time after a burst before its memory is read.
const SETTLE: Duration = Duration::from_secs(5);
/// Buyers of the burst.
const BUYERS: usize = 4;

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmBench {
    /// Resident memory before any node (relay, hub, buyer), MiB.
    pub baseline_mib: f64,
    /// One run per size.
    pub runs: Vec<SizeRun>,
    /// The idle-memory target, MiB per node.
    pub target_idle_mib: f64,
    /// Whether every size met it.
    pub target_met: bool,
    /// Seconds from `docker compose up` to the first paid job (only with `--compose`).
    pub compose_to_first_paid_job_secs: Option<f64>,
}

/// Runs the benchmark for each of `sizes`, with `jobs_per_node` jobs per node in the busy phase.
pub async fn run(
    sizes: &[usize],
    jobs_per_node: usize,
    progress: impl Fn(&str),
) -> Result<SwarmBench, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let market = Appliance::start(&bench_relay_settings(), None, None, open_hub_settings())
        .await
        .map_err(|e| err(&e))?;
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        let (buyer, _) = market
            .funded_buyer(&Keys::generate(), 1_000_000_000)
            .await
            .map_err(|e| err(&e))?;
        buyers.push(buyer);
    }
    let price = bench_node_options()
        .prices
        .get(&crate::protocol::kinds::CODE_ANALYSIS)
        .copied()
        .unwrap_or(1_000);
    let hub = market.hub_keys.public_key();
    let baseline = resident()?;
    let mut runs = Vec::new();
    for &n in sizes {
        progress(&format!("starting {n} providers"));
        let before = resident()?;
        let options = SwarmOptions {
            providers: n,
            node: bench_node_options(),
            registry: Registry::builtin(),
            fund_sats: 10,
        };
        let swarm = Swarm::start(
            std::slice::from_ref(&market.url),
            hub,
            None,
            &options,
            |_| {},
        )
        .await
        .map_err(|e| err(&e))?;
        // Let the start-up's transient buffers settle before reading the idle figure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = resident()?;

        progress(&format!(
            "{} jobs across the {n} providers",
            n * jobs_per_node
        ));
        let peak = Arc::new(AtomicU64::new(idle));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = tokio::spawn({
            let (peak, sampling) = (peak.clone(), sampling.clone());
            async move {
                while sampling.load(Ordering::SeqCst) {
                    peak.fetch_max(resident_bytes().unwrap_or(0), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let mut balances = 0u64;
        for b in &buyers {
            balances += b.balance_msat().await.map_err(|e| err(&e))?;
        }
        let wait = WaitOptions {
            timeout: Duration::from_secs(120),
            auto_pay: true,
            max_msats: None,
        };
        let tasks: Vec<_> = (0..n * jobs_per_node)
            .map(|i| {
                let buyer = buyers[i % BUYERS].clone();
                let job = NewJob {
                    kind: crate::protocol::kinds::CODE_ANALYSIS,
                    inputs: vec![JobInput::text(format!("pub fn swarm_{n}_{i}() {{}}\n"))],
                    params: vec![("path".into(), format!("swarm/{n}/{i}.rs"))],
                    bid_msats: Some(10_000),
                    providers: vec![swarm.keys[i % n]],
                    ..Default::default()
                };
                tokio::spawn(async move {
                    let t = Instant::now();
                    let failure = match buyer.run(&job, wait).await {
                        Ok(o) if o.status == JobState::Done => None,
                        Ok(o) => Some(
                            o.failure
                                .map(|f| f.as_str().to_string())
                                .unwrap_or_else(|| o.status.as_str().to_string()),
                        ),
                        Err(e) => {
                            tracing::warn!("swarm bench job failed: {e}");
                            Some("error".to_string())
                        }
                    };
                    (t.elapsed(), failure)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut failures = std::collections::BTreeMap::new();
        for t in tasks {
            let (took, failure) = t.await.map_err(|e| err(&e))?;
            latencies.push(took);
            if let Some(code) = failure {
                *failures.entry(code).or_insert(0) += 1;
            }
        }
        sampling.store(false, Ordering::SeqCst);
        let _ = sampler.await;
        // Settlements and receipts trail the last outcome by a moment.
        tokio::time::sleep(SETTLE).await;
        let after_burst = resident_bytes().unwrap_or(0);
        crate::memory::release_free_memory();
        let after_trim = resident_bytes().unwrap_or(0);
        let mut balances_after = 0u64;
        for b in &buyers {
            balances_after += b.balance_msat().await.map_err(|e| err(&e))?;
        }
        let spent = balances.saturating_sub(balances_after);
        let done = latencies.len() as u64 - failures.values().sum::<usize>() as u64;
        let mib = |b: f64| round3(b / (1024.0 * 1024.0));
        let per_idle = idle.saturating_sub(before) as f64 / n.max(1) as f64;
        let growth = peak.load(Ordering::SeqCst).saturating_sub(idle) as f64 / n.max(1) as f64;
        runs.push(SizeRun {
            providers: n,
            start_secs: round3(swarm.start_secs),
            per_idle_node_mib: mib(per_idle),
            per_busy_node_mib: mib(per_idle + growth),
            busy_jobs: latencies.len(),
            busy_latency_ms: Latency::of(&latencies),
            all_done: failures.is_empty(),
            failures,
            buyers: BUYERS,
            sats_spent: spent / 1000,
            paid_twice: (spent / price.max(1)).saturating_sub(done),
            peak_mib: mib(peak.load(Ordering::SeqCst) as f64),
            after_burst_mib: mib(after_burst as f64),
            after_trim_mib: mib(after_trim as f64),
        });
        progress(&format!("stopping {n} providers"));
        swarm.stop().await;
    }
    drop(buyers);
    market.stop().await;
    let target_idle_mib = 2.0;
    Ok(SwarmBench {
        baseline_mib: round3(baseline as f64 / (1024.0 * 1024.0)),
        target_met: runs.iter().all(|r| r.per_idle_node_mib <= target_idle_mib),
        runs,
        target_idle_mib,
        compose_to_first_paid_job_secs: None,
    })
}

/// Runs `docker compose up` on `file` (images must exist: set `PYLON_IMAGE`, or build first) and
/// measures the seconds until the dashboard shows the first settled sat; then takes it down.
pub async fn compose_to_first_paid_job(
    file: &std::path::Path,
    progress: impl Fn(&str),
) -> Result<f64, BenchError> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError(e.to_string()))?
        .port();
    let project = format!("pylon-bench-{}", std::process::id());
    let compose = |args: &[&str]| {
        let mut cmd = std::process::Command::new("docker-compose");
        cmd.args(["-p", &project, "-f"]).arg(file).args(args);
        cmd.env("PYLON_WEB_PORT", port.to_string());
        cmd.stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::null());
        cmd
    };
    progress(&format!("docker-compose up ({})", file.display()));
    let started = Instant::now();
    let up = compose(&["up", "-d", "--no-build"])
        .status()
        .map_err(|e| BenchError(format!("cannot run docker-compose: {e}")))?;
    let result = async {
        if !up.success() {
            return Err(BenchError(format!(
                "docker-compose up failed ({up}); build the images first (scripts/docker-local.sh \
                 and PYLON_IMAGE=pylon:local, or `docker compose build`)"
            )));
        }
        let url = format!("http://127.0.0.1:{port}/api/stats");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["windows"]["last_day"]["sats_settled"]
                        .as_u64()
                        .unwrap_or(0)
                        > 0
                    {
                        return Ok(round3(started.elapsed().as_secs_f64()));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError(
                    "no paid job within 10 minutes of compose up".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    .await;
    progress("docker-compose down");
    let _ = compose(&["down", "-v", "--remove-orphans"]).status();
    result
}

/// This process's resident bytes; unreadable is an error, since a 0 would read as "free".
fn resident() -> Result<u64, BenchError> {
    resident_bytes().ok_or_else(|| BenchError("cannot read /proc/self/statm".into()))
}
