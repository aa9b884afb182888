//! `pylon bench soak`: thousands of paid jobs through one provider and one buyer, sampling this
//! process's resident memory and open file descriptors every `sample_every` jobs, to show that
//! nothing grows per job (DESIGN.md: "10,000-job soak with flat memory and file descriptors").
//!
//! Everything runs in this one process, as `bench loop` does (its helpers are reused): the
//! embedded relay, the hub, one provider node and one buyer. One process is deliberate: a leak in
//! any role — a subscription never closed, a socket per payment, a map of finished jobs — shows
//! in the one RSS and fd count, and no child process has to be managed or reaped. The cost is
//! that a leak is not attributed to a role; the per-store `jobs.db` sizes narrow it down.
//!
//! The work is a fixed number of jobs, never a time window: a slow machine makes the run longer,
//! not its figures emptier. Samples are taken at chunk boundaries, when no job is in flight, so
//! each one measures what is retained, not what is busy.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use serde::Serialize;

use super::market::{bench_job, bench_node_options};
use super::relay::bench_relay_settings;
use super::wallet::BenchError;
use super::{round3, Latency};
use crate::appliance::{open_hub_settings, Appliance};
use crate::buyer::WaitOptions;
use crate::hub::AuditReport;
use crate::store::JobState;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct SoakOptions {
    /// Paid jobs in all.
    pub jobs: usize,
    /// Jobs between two samples.
    pub sample_every: usize,
    /// Jobs in flight at once within a chunk.
    pub window: usize,
}

/// One reading of this process.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    /// Jobs finished when it was taken.
    pub jobs: usize,
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
    /// Its anonymous part (RssAnon: heap and stacks), KiB. VmRSS also counts pages of the
    /// relay's memory-mapped LMDB store and SQLite files, which grow with the data stored —
    /// RssAnon is what a leak in the code grows. Read after handing the allocator's free pages
    /// back (`memory::release_free_memory`, as long-running commands do every minute), so it
    /// is memory the code retains.
    pub rss_anon_kib: u64,
    /// RssAnon just before that trim: retained plus what glibc kept free in its arenas.
    pub rss_anon_untrimmed_kib: u64,
    /// Open file descriptors (entries of /proc/self/fd).
    pub fds: u64,
    /// Seconds since the first job was submitted.
    pub elapsed_secs: f64,
}

/// The report printed by `pylon bench soak --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakBench {
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs between samples.
    pub sample_every: usize,
    /// Jobs in flight at once.
    pub window: usize,
    /// Before the first job (relay, hub, provider and buyer started, buyer funded).
    pub baseline: Sample,
    /// One per `sample_every` jobs (and one after the last job); the first is the warm-up.
    pub samples: Vec<Sample>,
    /// Least-squares slope of RSS over the samples after the first, KiB per 1,000 jobs; null
    /// with fewer than two such samples.
    pub rss_slope_kib_per_1000_jobs: Option<f64>,
    /// The same slope as bytes per job.
    pub rss_bytes_per_job: Option<f64>,
    /// Least-squares slope of RssAnon after the first sample, KiB per 1,000 jobs.
    pub rss_anon_slope_kib_per_1000_jobs: Option<f64>,
    /// The same as bytes per job.
    pub rss_anon_bytes_per_job: Option<f64>,
    /// RssAnon's slope over the second half of the samples only. Bounded caches fill first
    /// (each relay client's seen-id memory, 16,384 ids; the hub's answers, ≤ 20,000 for ≤ 120 s;
    /// a node's handled-request memory, 100,000 ids), so a long run shows this falling toward
    /// zero where a leak would keep it level.
    pub rss_anon_slope_second_half_kib_per_1000_jobs: Option<f64>,
    /// The RssAnon slope (after the first sample) read before each trim: what a process that
    /// never gave free memory back would show, fragmentation included.
    pub rss_anon_untrimmed_slope_kib_per_1000_jobs: Option<f64>,
    /// Least-squares slope of open fds over the samples after the first, per 1,000 jobs.
    pub fd_slope_per_1000_jobs: Option<f64>,
    /// Fds open at the last sample minus at the first (warm-up) sample.
    pub fd_growth_after_warmup: i64,
    /// Goal (reported, not asserted): RSS slope < 1 MiB per 1,000 jobs.
    pub rss_goal_met: Option<bool>,
    /// The same goal on RssAnon alone (the relay's LMDB pages are file-backed and reclaimable).
    pub rss_anon_goal_met: Option<bool>,
    /// Goal: no fd more at the end than after warm-up.
    pub fd_goal_met: bool,
    /// Seconds for all jobs.
    pub wall_secs: f64,
    /// Paid jobs per second over the run.
    pub jobs_per_sec: f64,
    /// Submit → receipt per job.
    pub end_to_end_ms: Latency,
    /// Jobs the buyer paid.
    pub paid: usize,
    /// Jobs done: paid and receipted.
    pub done: usize,
    /// Jobs that did not end done, by failure code (`error` when the buyer call itself failed).
    pub failures: BTreeMap<String, usize>,
    /// Every job done, paid and receipted.
    pub all_paid: bool,
    /// Size of the provider's `jobs.db` (with its WAL) at the end, bytes.
    pub provider_jobs_db_bytes: u64,
    /// The buyer's.
    pub buyer_jobs_db_bytes: u64,
    /// provider_jobs_db_bytes ÷ jobs.
    pub provider_jobs_db_bytes_per_job: f64,
    /// buyer_jobs_db_bytes ÷ jobs.
    pub buyer_jobs_db_bytes_per_job: f64,
    /// The hub's audit after the run (total balances == total issued, …).
    pub audit: AuditReport,
    /// audit.ok.
    pub audit_ok: bool,
}

/// Runs the soak; `progress` gets one line per phase and one per sample.
pub async fn run(options: SoakOptions, progress: impl Fn(&str)) -> Result<SoakBench, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let jobs = options.jobs.max(1);
    let every = options.sample_every.clamp(1, jobs);
    let window = options.window.max(1);

    let mut market = Appliance::start(&bench_relay_settings(), None, None, open_hub_settings())
        .await
        .map_err(|e| err(&e))?;
    progress("starting one provider node and funding the buyer");
    let provider = *market
        .add_providers(1, &bench_node_options())
        .await
        .map_err(|e| err(&e))?
        .first()
        .ok_or_else(|| BenchError("no provider started".into()))?;
    // Price 1,000 msats a job (bench_node_options): enough for every job, ten times over.
    let budget = (jobs as u64).saturating_mul(10_000).max(1_000_000);
    let (buyer, _buyer_store) = market
        .funded_buyer(&Keys::generate(), budget)
        .await
        .map_err(|e| err(&e))?;
    let wait = WaitOptions {
        // Generous: a loaded machine slows jobs down; only a lost job should hit this.
        timeout: Duration::from_secs(120),
        auto_pay: true,
        max_msats: None,
    };

    let started = Instant::now();
    let baseline = sample(0, started)?;
    progress(&format!(
        "{jobs} jobs, {window} in flight, a sample every {every}; baseline RSS {} KiB, {} fds",
        baseline.rss_kib, baseline.fds
    ));
    let window_slots = Arc::new(tokio::sync::Semaphore::new(window));
    let (mut samples, mut latencies) = (Vec::new(), Vec::with_capacity(jobs));
    let (mut paid, mut done, mut failures) = (0usize, 0usize, BTreeMap::new());
    let mut next = 0usize;
    while next < jobs {
        let chunk_end = (next + every).min(jobs);
        let mut tasks = Vec::with_capacity(chunk_end - next);
        for i in next..chunk_end {
            let (buyer, job, slots) = (buyer.clone(), bench_job(i, provider), window_slots.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let t = Instant::now();
                (buyer.run(&job, wait).await, t.elapsed())
            }));
        }
        for t in tasks {
            let (outcome, took) = t.await.map_err(|e| err(&e))?;
            latencies.push(took);
            match outcome {
                Ok(o) => {
                    paid += usize::from(o.payment.is_some());
                    if o.status == JobState::Done && o.receipt_id.is_some() {
                        done += 1;
                    } else {
                        let code = o.failure.map_or_else(
                            || format!("ended-{}", state_name(o.status)),
                            |f| f.as_str().to_string(),
                        );
                        *failures.entry(code).or_insert(0) += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "soak job failed in the buyer");
                    *failures.entry("error".to_string()).or_insert(0) += 1;
                }
            }
        }
        next = chunk_end;
        let s = sample(next, started)?;
        progress(&format!(
            "{next}/{jobs} jobs: RSS {} KiB (anon {} KiB), {} fds, {:.1} jobs/s",
            s.rss_kib,
            s.rss_anon_kib,
            s.fds,
            next as f64 / s.elapsed_secs.max(1e-9)
        ));
        samples.push(s);
    }
    let wall = started.elapsed().as_secs_f64();

    let audit = market.audit().map_err(|e| err(&e))?;
    let provider_db = jobs_db_bytes(&market.dir().join("nodes"));
    let buyer_db = jobs_db_bytes(&market.dir().join("buyers"));
    progress("stopping");
    drop(buyer);
    market.stop().await;

    let after_warmup = samples.get(1..).unwrap_or(&[]);
    let rss_slope = slope_per_1000(after_warmup, |s| s.rss_kib as f64);
    let anon_slope = slope_per_1000(after_warmup, |s| s.rss_anon_kib as f64);
    let second_half = &samples[samples.len() / 2..];
    let anon_tail_slope = slope_per_1000(second_half, |s| s.rss_anon_kib as f64);
    let fd_slope = slope_per_1000(after_warmup, |s| s.fds as f64);
    let fd_growth = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.fds as i64 - a.fds as i64,
        _ => 0,
    };
    Ok(SoakBench {
        jobs,
        sample_every: every,
        window,
        baseline,
        rss_slope_kib_per_1000_jobs: rss_slope.map(round3),
        rss_bytes_per_job: rss_slope.map(|kib| round3(kib * 1024.0 / 1000.0)),
        rss_anon_slope_kib_per_1000_jobs: anon_slope.map(round3),
        rss_anon_bytes_per_job: anon_slope.map(|kib| round3(kib * 1024.0 / 1000.0)),
        rss_anon_slope_second_half_kib_per_1000_jobs: anon_tail_slope.map(round3),
        rss_anon_untrimmed_slope_kib_per_1000_jobs: slope_per_1000(after_warmup, |s| {
            s.rss_anon_untrimmed_kib as f64
        })
        .map(round3),
        fd_slope_per_1000_jobs: fd_slope.map(round3),
        fd_growth_after_warmup: fd_growth,
        rss_goal_met: rss_slope.map(|kib| kib < 1024.0),
        rss_anon_goal_met: anon_slope.map(|kib| kib < 1024.0),
        fd_goal_met: fd_growth <= 0,
        samples,
        wall_secs: round3(wall),
        jobs_per_sec: round3(jobs as f64 / wall.max(1e-9)),
        end_to_end_ms: Latency::of(&latencies),
        paid,
        done,
        all_paid: done == jobs && paid == jobs,
        failures,
        provider_jobs_db_bytes: provider_db,
        buyer_jobs_db_bytes: buyer_db,
        provider_jobs_db_bytes_per_job: round3(provider_db as f64 / jobs as f64),
        buyer_jobs_db_bytes_per_job: round3(buyer_db as f64 / jobs as f64),
        audit_ok: audit.ok,
        audit,
    })
}

fn state_name(s: JobState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// Reads this process's RSS and fd count. A reading that cannot be taken fails the bench: a
/// soak that reported 0 KiB would read as "flat".
fn sample(jobs: usize, started: Instant) -> Result<Sample, BenchError> {
    let field = |name: &str| {
        super::relay_child::proc_status_kib(std::process::id(), name)
            .ok_or_else(|| BenchError(format!("cannot read {name} from /proc/self/status")))
    };
    let rss_anon_untrimmed_kib = field("RssAnon:")?;
    crate::memory::release_free_memory();
    let (rss_kib, rss_anon_kib) = (field("VmRSS:")?, field("RssAnon:")?);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| BenchError(format!("cannot list /proc/self/fd: {e}")))?
        .count() as u64;
    Ok(Sample {
        jobs,
        rss_kib,
        rss_anon_kib,
        rss_anon_untrimmed_kib,
        fds,
        elapsed_secs: round3(started.elapsed().as_secs_f64()),
    })
}

/// Least-squares slope of `y` against jobs, per 1,000 jobs; `None` below two distinct points.
pub fn slope_per_1000(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let xs: Vec<f64> = samples.iter().map(|s| s.jobs as f64 / 1000.0).collect();
    let ys: Vec<f64> = samples.iter().map(y).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Bytes of every `jobs.db` (and its `-wal`/`-shm`) in the store directories under `dir`.
fn jobs_db_bytes(dir: &Path) -> u64 {
    let Ok(stores) = std::fs::read_dir(dir) else {
        return 0;
    };
    stores
        .flatten()
        .filter_map(|store| std::fs::read_dir(store.path()).ok())
        .flatten()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("jobs.db"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(jobs: usize, rss_kib: u64) -> Sample {
        Sample {
            jobs,
            rss_kib,
            rss_anon_kib: rss_kib,
            rss_anon_untrimmed_kib: rss_kib,
            fds: 10,
            elapsed_secs: 0.0,
        }
    }

    #[test]
    fn slope_is_least_squares_per_thousand_jobs() {
        let s = [at(1000, 100), at(2000, 300), at(3000, 500)];
        assert_eq!(slope_per_1000(&s, |s| s.rss_kib as f64), Some(200.0));
        let flat = [at(100, 7), at(200, 7)];
        assert_eq!(slope_per_1000(&flat, |s| s.fds as f64), Some(0.0));
        assert_eq!(slope_per_1000(&s[..1], |s| s.rss_kib as f64), None);
        // Two samples at the same job count have no slope, not a division by zero.
        assert_eq!(
            slope_per_1000(&[at(5, 1), at(5, 2)], |s| s.rss_kib as f64),
            None
        );
    }
}
