//! The repo-map coordinator: one repository → one code-analysis microjob per file, dispatched to
//! providers chosen by load, retried and re-dispatched when slow or wrong, every valid result
//! paid within a budget, folded into a repo map.
//!
//! - [`walk`] — which files; [`select`] — which providers;
//! - [`aggregate`] — the artifacts; [`sample`] — a generated repository;
//! - this file — dispatch (retries, stragglers, budget, verification) and the local baseline.

pub mod aggregate;
pub mod quality;
pub mod sample;
pub mod select;
pub mod walk;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use futures_util::stream::{FuturesUnordered, StreamExt};
use nostr_sdk::{EventId, Filter, PublicKey};
use serde::Serialize;

use self::aggregate::{FileProvenance, MappedFile};
use self::select::{Candidate, Ended, Pool};
use self::walk::{Skipped, SourceFile};
use crate::bench::Latency;
use crate::buyer::{Buyer, BuyerError, Payment, WaitOptions};
use crate::protocol::code_analysis::Analysis;
use crate::protocol::failure::FailureCode;
use crate::protocol::kinds;
use crate::protocol::nip90::{JobInput, NewJob};
use crate::protocol::receipt::Receipt;
use crate::relay::MarketClient;
use crate::store::JobState;

/// How to run a map.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most spent overall, msats (`None`: no cap besides `max_price` per file).
    pub budget_msats: Option<u64>,
    /// Most paid for one file, msats (also the bid).
    pub max_price_msats: u64,
    /// Files in flight at once.
    pub parallel: usize,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Attempts per file before it is given up.
    pub attempts: usize,
    /// An attempt slower than this gets a duplicate at another provider (first valid wins).
    pub straggler_after: Duration,
    /// Only these providers (empty: any online provider).
    pub providers: Vec<PublicKey>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            budget_msats: None,
            max_price_msats: 2_000,
            parallel: 32,
            timeout: Duration::from_secs(30),
            attempts: 4,
            straggler_after: Duration::from_secs(5),
            providers: Vec::new(),
        }
    }
}

/// Live counts, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Files to map.
    pub total: usize,
    /// Mapped.
    pub done: usize,
    /// Given up.
    pub failed: usize,
    /// In flight.
    pub running: usize,
    /// Jobs waiting for one of the buyer's in-flight slots (not sent yet).
    pub queued: usize,
    /// Sats paid so far.
    pub sats_spent: u64,
    /// Estimated seconds left.
    pub eta_secs: Option<u64>,
}

/// A file that could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failed {
    /// Path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Files found to map.
    pub files: usize,
    /// Files mapped.
    pub mapped: usize,
    /// Files given up, with reasons.
    pub failed: Vec<Failed>,
    /// Files left out, with reasons.
    pub skipped: Vec<Skipped>,
    /// Msats paid.
    pub spent_msats: u64,
    /// Seconds.
    pub wall_secs: f64,
    /// Per-file latency (first dispatch → valid result).
    pub per_file_ms: Latency,
    /// Providers that delivered at least one valid result.
    pub providers_used: usize,
    /// Duplicates sent for stragglers.
    pub straggler_duplicates: usize,
    /// Results refused (wrong hash or schema).
    pub rejected_results: usize,
    /// True when the budget stopped dispatching.
    pub budget_exhausted: bool,
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// No provider to send to.
    #[error("no online provider sells code analysis for at most {0} msats: start some with `pylon node up`")]
    NoProviders(u64),
    /// Relay trouble.
    #[error(transparent)]
    Relay(#[from] crate::relay::client::ClientError),
}

struct Shared {
    pool: Mutex<Pool>,
    progress: Mutex<Progress>,
    stragglers: Mutex<usize>,
    rejected: Mutex<usize>,
}

/// How long a file whose payment is in doubt keeps asking the wallet before it is given up
/// (unpaid, never re-dispatched: a second provider must not be paid for a file that may be paid).
const RESOLVE_FOR: Duration = Duration::from_secs(150);

/// Maps `files` through the market. `progress` is called as counts change.
pub async fn map_market(
    files: &[SourceFile],
    buyer: Arc<Buyer>,
    relay: &MarketClient,
    options: &Options,
    progress: impl Fn(&Progress) + Send + Sync,
) -> Result<(Report, Vec<MappedFile>, Vec<FileProvenance>), FanoutError> {
    let candidates: Vec<Candidate> =
        select::discover(relay, options.max_price_msats, &options.providers).await?;
    if candidates.is_empty() {
        return Err(FanoutError::NoProviders(options.max_price_msats));
    }
    let started = Instant::now();
    // The buyer owns spending: the budget is its hard cap, counted from what the wallet was asked
    // to pay; the coordinator only reserves from it to pace dispatch.
    buyer.spending().set_budget(options.budget_msats);
    let committed_before = buyer.spending().budget().committed;
    let shared = Arc::new(Shared {
        pool: Mutex::new(Pool::new(candidates)),
        progress: Mutex::new(Progress {
            total: files.len(),
            ..Progress::default()
        }),
        stragglers: Mutex::new(0),
        rejected: Mutex::new(0),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1)));
    let mut tasks = FuturesUnordered::new();
    for file in files.iter().cloned() {
        let (shared, buyer, options, slots) = (
            shared.clone(),
            buyer.clone(),
            options.clone(),
            slots.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            map_one(file, &buyer, &shared, &options).await
        }));
    }
    let mut mapped = Vec::new();
    let mut failed = Vec::new();
    let mut latencies = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            next = tasks.next() => match next {
                None => break,
                Some(Ok(Ok((m, took)))) => {
                    mapped.push(m);
                    latencies.push(took);
                }
                Some(Ok(Err(f))) => failed.push(f),
                Some(Err(e)) => tracing::error!("file task failed: {e}"),
            },
            _ = ticker.tick() => {
                let mut p = *lock(&shared.progress);
                p.queued = buyer.queued();
                let finished = p.done + p.failed;
                if finished > 0 {
                    let per = started.elapsed().as_secs_f64() / finished as f64;
                    p.eta_secs = Some(((p.total - finished) as f64 * per).ceil() as u64);
                }
                progress(&p);
            }
        }
    }
    progress(&lock(&shared.progress));
    let provenance = provenance(relay, &buyer, &mapped).await;
    let budget = buyer.spending().budget();
    let report = Report {
        files: files.len(),
        mapped: mapped.len(),
        failed,
        skipped: Vec::new(),
        spent_msats: budget.committed.saturating_sub(committed_before),
        wall_secs: crate::bench::round3(started.elapsed().as_secs_f64()),
        per_file_ms: Latency::of(&latencies),
        providers_used: lock(&shared.pool).used(),
        straggler_duplicates: *lock(&shared.stragglers),
        rejected_results: *lock(&shared.rejected),
        budget_exhausted: budget.exhausted,
    };
    Ok((report, mapped, provenance))
}

/// One file: attempts until a valid result is paid for, or the attempts run out.
async fn map_one(
    file: SourceFile,
    buyer: &Buyer,
    shared: &Shared,
    options: &Options,
) -> Result<(MappedFile, Duration), Failed> {
    let sha = sha256::Hash::hash(file.content.as_bytes()).to_string();
    let started = Instant::now();
    let mut tried: HashSet<PublicKey> = HashSet::new();
    lock(&shared.progress).running += 1;
    let outcome = attempts(&file, &sha, buyer, shared, options, &mut tried).await;
    let mut p = lock(&shared.progress);
    p.running -= 1;
    match outcome {
        Ok(m) => {
            p.done += 1;
            Ok((m, started.elapsed()))
        }
        Err(reason) => {
            p.failed += 1;
            Err(Failed {
                path: file.path,
                reason,
            })
        }
    }
}

async fn attempts(
    file: &SourceFile,
    sha: &str,
    buyer: &Buyer,
    shared: &Shared,
    options: &Options,
    tried: &mut HashSet<PublicKey>,
) -> Result<MappedFile, String> {
    let mut last = "no attempt made".to_string();
    for attempt in 0..options.attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * (1 << attempt.min(5)))).await;
        }
        let mut racing = FuturesUnordered::new();
        // Providers (and reserved prices) of attempts still running.
        let mut running: Vec<(PublicKey, u64)> = Vec::new();
        let Some((who, first)) = launch(file, buyer, shared, options, tried) else {
            return Err(if buyer.spending().budget().exhausted {
                "budget exhausted".into()
            } else {
                last
            });
        };
        running.push(who);
        racing.push(first);
        let straggler = tokio::time::sleep(options.straggler_after);
        tokio::pin!(straggler);
        let mut duplicated = false;
        loop {
            tokio::select! {
                _ = &mut straggler, if !duplicated => {
                    duplicated = true;
                    if let Some((who, dup)) = launch(file, buyer, shared, options, tried) {
                        *lock(&shared.stragglers) += 1;
                        running.push(who);
                        racing.push(dup);
                    }
                }
                done = racing.next() => {
                    let Some((provider, price, result)) = done else { break };
                    running.retain(|(p, _)| *p != provider);
                    buyer.spending().release(price);
                    match check(file, sha, result) {
                        Ok((analysis, job_id, amount)) => {
                            let paid = match buyer
                                .pay_amount(&job_id, &provider, &amount, Some(options.max_price_msats))
                                .await
                            {
                                // Sent, no word back: find out before anything else happens to
                                // this file. Re-dispatching now could pay for it twice.
                                Err(BuyerError::PaymentUnknown { .. }) => {
                                    settle_in_doubt(buyer, &job_id).await
                                }
                                other => other.map(Some),
                            };
                            match paid {
                                Ok(Some(_)) => {
                                    lock(&shared.progress).sats_spent =
                                        buyer.spending().budget().committed / 1000;
                                    let mut pool = lock(&shared.pool);
                                    pool.settle(&provider, Ended::Success);
                                    // The first valid result wins; duplicates still running are
                                    // dropped unpaid, and their reservations released.
                                    for (p, reserved) in running.drain(..) {
                                        pool.settle(&p, Ended::Abandoned);
                                        buyer.spending().release(reserved);
                                    }
                                    return Ok(MappedFile {
                                        analysis,
                                        provider: provider.to_hex(),
                                        job_id: job_id.to_hex(),
                                    });
                                }
                                Ok(None) => {
                                    last = "payment did not go through".into();
                                    lock(&shared.pool).settle(&provider, Ended::Failure);
                                }
                                Err(e @ BuyerError::PaymentUnknown { .. }) => {
                                    // Still unknown: give the file up rather than risk a second
                                    // payment. Attempts still racing are dropped unpaid.
                                    for (p, reserved) in running.drain(..) {
                                        lock(&shared.pool).settle(&p, Ended::Abandoned);
                                        buyer.spending().release(reserved);
                                    }
                                    return Err(e.to_string());
                                }
                                Err(e) => {
                                    last = format!("payment failed: {e}");
                                    lock(&shared.pool).settle(&provider, Ended::Failure);
                                }
                            }
                        }
                        Err((ended, why)) => {
                            if ended == Ended::Cheated {
                                *lock(&shared.rejected) += 1;
                            }
                            last = why;
                            lock(&shared.pool).settle(&provider, ended);
                        }
                    }
                }
            }
        }
    }
    Err(last)
}

type Attempt<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (PublicKey, u64, AttemptResult)> + Send + 'a>,
>;
type AttemptResult = Result<crate::buyer::Outcome, String>;

/// Reserves budget, picks a provider and starts an attempt there.
fn launch<'a>(
    file: &SourceFile,
    buyer: &'a Buyer,
    shared: &Shared,
    options: &Options,
    tried: &mut HashSet<PublicKey>,
) -> Option<((PublicKey, u64), Attempt<'a>)> {
    let candidate = lock(&shared.pool).take(tried)?;
    let price = candidate.price_msats;
    if !buyer.spending().reserve(price) {
        lock(&shared.pool).settle(&candidate.pubkey, Ended::Abandoned);
        return None;
    }
    tried.insert(candidate.pubkey);
    let job = NewJob {
        kind: kinds::CODE_ANALYSIS,
        inputs: vec![JobInput::text(file.content.clone())],
        params: vec![("path".into(), file.path.clone())],
        bid_msats: Some(options.max_price_msats),
        providers: vec![candidate.pubkey],
        ..Default::default()
    };
    let wait = WaitOptions {
        timeout: options.timeout,
        auto_pay: false,
        max_msats: Some(options.max_price_msats),
    };
    let provider = candidate.pubkey;
    Some((
        (provider, price),
        Box::pin(async move {
            let r = buyer.run(&job, wait).await.map_err(|e| e.to_string());
            (provider, price, r)
        }),
    ))
}

/// Asks the wallet, with back-off, what became of a payment whose answer never came: paid
/// (`Some`), known not to have happened (`None`), or still unknown after [`RESOLVE_FOR`].
async fn settle_in_doubt(buyer: &Buyer, job_id: &EventId) -> Result<Option<Payment>, BuyerError> {
    let deadline = Instant::now() + RESOLVE_FOR;
    let mut wait = Duration::from_secs(1);
    loop {
        let prior = buyer.payment_of(job_id)?;
        let Some(prior) = prior else {
            return Ok(None);
        };
        match buyer.resolve(&prior).await {
            Err(e @ BuyerError::PaymentUnknown { .. }) if Instant::now() + wait >= deadline => {
                return Err(e)
            }
            Err(BuyerError::PaymentUnknown { .. }) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Verifies an attempt's result: a result at all, our schema, the hash of the file we sent.
fn check(
    file: &SourceFile,
    sha: &str,
    result: AttemptResult,
) -> Result<(Analysis, EventId, crate::protocol::nip90::Amount), (Ended, String)> {
    let outcome = result.map_err(|e| (Ended::Failure, e))?;
    // The buyer refused the provider's answer as no result of its kind (checked before any
    // payment, see `buyer::verify`): the provider lied, not failed.
    if outcome.failure == Some(FailureCode::InvalidResult) {
        let why = outcome.message.clone().unwrap_or_default();
        return Err((Ended::Cheated, format!("invalid result: {why}")));
    }
    // (`Done` without payment: a result that asked for none, refused below.)
    if !matches!(outcome.status, JobState::Result | JobState::Done) {
        let why = match (&outcome.failure, &outcome.message) {
            (Some(code), Some(m)) => format!("{code}: {m}"),
            (Some(code), None) => code.to_string(),
            _ => format!("{:?}", outcome.status),
        };
        return Err((Ended::Failure, why));
    }
    let content = outcome.result.as_deref().unwrap_or("");
    let analysis = Analysis::from_json(content)
        .map_err(|e| (Ended::Cheated, format!("invalid result: {e}")))?;
    if analysis.sha256 != sha {
        return Err((
            Ended::Cheated,
            "result is for different content (hash mismatch)".into(),
        ));
    }
    if analysis.path != file.path {
        return Err((Ended::Cheated, "result names another path".into()));
    }
    let amount = outcome
        .amount
        .clone()
        .ok_or((Ended::Cheated, "result asks for no payment".to_string()))?;
    let job_id = EventId::from_hex(&outcome.job_id).map_err(|e| (Ended::Failure, e.to_string()))?;
    Ok((analysis, job_id, amount))
}

/// Request, result and receipt ids per file. Receipts follow payments by a moment: wait briefly.
async fn provenance(
    relay: &MarketClient,
    buyer: &Buyer,
    mapped: &[MappedFile],
) -> Vec<FileProvenance> {
    let ids: Vec<EventId> = mapped
        .iter()
        .filter_map(|m| EventId::from_hex(&m.job_id).ok())
        .collect();
    let mut receipts: std::collections::HashMap<EventId, (String, String)> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while receipts.len() < ids.len() && Instant::now() < deadline {
        for chunk in ids.chunks(200) {
            let missing: Vec<EventId> = chunk
                .iter()
                .copied()
                .filter(|id| !receipts.contains_key(id))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let filter = Filter::new()
                .kind(kinds::RECEIPT)
                .events(missing)
                .pubkey(buyer.public_key());
            if let Ok(found) = relay.fetch(filter, Duration::from_secs(5)).await {
                for e in found.iter() {
                    if let Ok(r) = Receipt::from_event(e) {
                        receipts.insert(r.request_id, (r.result_id.to_hex(), e.id.to_hex()));
                    }
                }
            }
        }
        if receipts.len() < ids.len() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    mapped
        .iter()
        .map(|m| {
            let r = EventId::from_hex(&m.job_id)
                .ok()
                .and_then(|id| receipts.get(&id));
            FileProvenance {
                path: m.analysis.path.clone(),
                request: m.job_id.clone(),
                result: r.map(|(result, _)| result.clone()),
                receipt: r.map(|(_, receipt)| receipt.clone()),
                provider: m.provider.clone(),
            }
        })
        .collect()
}

/// The same analyzer, in this process, on every core: the baseline for the market's overhead.
pub fn map_local(files: &[SourceFile]) -> (Vec<MappedFile>, Vec<Duration>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<(MappedFile, Duration)>> = Mutex::new(Vec::with_capacity(files.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(f) = files.get(i) else { break };
                let t = Instant::now();
                let analysis = crate::executors::code::analyze(&f.path, &f.content);
                let m = MappedFile {
                    analysis,
                    provider: "local".into(),
                    job_id: String::new(),
                };
                lock(&results).push((m, t.elapsed()));
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by(|a, b| a.0.analysis.path.cmp(&b.0.analysis.path));
    all.into_iter().unzip()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
