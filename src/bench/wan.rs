//! `pylon bench wan`: the market through a relay "far away" — every role (hub, providers, buyer,
//! its wallet) reaches the embedded relay through [`WanProxy`], which delays each direction
//! with jitter and cuts connections at random, while the relay itself rate-limits events per
//! connection as public relays do. Measured: one publish → `OK` round trip through the proxy
//! (the baseline, beside the same straight to the relay), the sequential paid loop p50 as a
//! multiple of that round trip, and a repo map of a generated repository (completion, wall time,
//! failures by code).
//!
//! Targets (issue 14): the repo map complete within 2 minutes; the paid loop p50 ≤ 6 × RTT.
//!
//! The hub's key is exempt from the relay's rate limit: a wallet service on a public relay is
//! normally its operator's own relay (or an allow-listed one), and the hub answers every node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr_sdk::{EventBuilder, Keys, Kind, RelayUrl, Tag};
use serde::Serialize;

use super::market::{bench_job, bench_node_options, job_ids, stages, Stages};
use super::relay::bench_relay_settings;
use super::wallet::BenchError;
use super::wan_proxy::{WanCounters, WanProfile, WanProxy};
use super::{round3, Latency};
use crate::appliance::{open_hub_settings, Appliance};
use crate::buyer::WaitOptions;
use crate::fanout::{sample, walk, Progress};
use crate::relay::{EmbeddedRelay, MarketClient, Reachability};
use crate::store::JobState;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct WanOptions {
    /// Round trip through the proxy (half each way).
    pub rtt: Duration,
    /// ± per chunk.
    pub jitter: Duration,
    /// Random cuts per connection per minute.
    pub reconnects_per_min: f64,
    /// The relay's per-connection event rate (and, with `event_burst`, its bucket).
    pub events_per_sec: u32,
    /// The relay's per-connection burst.
    pub event_burst: u32,
    /// Bandwidth cap per connection and direction (`None`: none).
    pub bytes_per_sec: Option<u64>,
    /// Paid jobs run one at a time.
    pub sequential: usize,
    /// Files in the generated repository.
    pub files: usize,
    /// Provider nodes.
    pub providers: usize,
    /// The repo map is stopped (and reported as it stands) after this long.
    pub map_deadline: Duration,
    /// Also run everything straight to the relay (no proxy, same relay limits) for comparison.
    pub direct_baseline: bool,
    /// A relay outage during the repo map: after how long, and for how long, the proxy's kill
    /// switch cuts every connection and turns new ones away.
    pub outage: Option<(Duration, Duration)>,
    /// The hub reaches the relay straight, not through the proxy: a wallet service run with
    /// the relay (Pylon's appliance, or an operator's own relay) while every node is far away.
    pub hub_beside_relay: bool,
}

/// The network and relay limits the run used.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    /// Round trip set on the proxy, ms.
    pub rtt_ms: f64,
    /// Jitter, ms.
    pub jitter_ms: f64,
    /// Random cuts per connection per minute.
    pub reconnects_per_min: f64,
    /// Relay events/s per connection.
    pub events_per_sec: u32,
    /// Relay burst per connection.
    pub event_burst: u32,
    /// Bandwidth cap, bytes/s per connection and direction.
    pub bytes_per_sec: Option<u64>,
    /// Seconds into the repo map the outage began (null: none).
    pub outage_after_secs: Option<f64>,
    /// Seconds the outage lasted.
    pub outage_secs: Option<f64>,
    /// The hub reached the relay straight (false: through the proxy, like every node).
    pub hub_beside_relay: bool,
}

/// The sequential paid loop.
#[derive(Debug, Clone, Serialize)]
pub struct PaidLoop {
    /// Jobs run.
    pub jobs: usize,
    /// Jobs done, paid and receipted.
    pub done: usize,
    /// Submit → receipt, each job alone.
    pub end_to_end_ms: Latency,
    /// p50 ÷ the RTT set on the proxy (null on the direct path, which has none).
    pub p50_over_rtt: Option<f64>,
    /// p50 ÷ the publish → OK round trip measured through the proxy.
    pub p50_over_measured_rtt: f64,
    /// Stages from the buyer's store.
    pub stages: Stages,
    /// Sequential relay crossings per job, stage by stage: each stage's p50 ÷ the measured
    /// publish → OK round trip. One crossing (an event from one role through the relay to
    /// another) costs about one round trip, so these say how many the protocol puts in a row.
    pub crossings: Crossings,
    /// Jobs not done, by failure code (or error).
    pub failures: BTreeMap<String, usize>,
    /// One full reason for each bucket of `failures`.
    pub failure_examples: BTreeMap<String, String>,
}

/// Sequential relay crossings of one paid job, measured (see [`PaidLoop::crossings`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Crossings {
    /// Submitted → claimed.
    pub pickup: f64,
    /// Claimed → result.
    pub result: f64,
    /// Result → paid.
    pub payment: f64,
    /// Paid → receipt.
    pub receipt: f64,
    /// Submit → receipt (the end-to-end p50 ÷ the round trip).
    pub total: f64,
}

impl Crossings {
    fn measure(stages: &Stages, end_to_end_p50_ms: f64, round_trip_ms: f64) -> Self {
        let per = |ms: f64| (ms / round_trip_ms.max(1e-9) * 10.0).round() / 10.0;
        Self {
            pickup: per(stages.pickup_ms.p50),
            result: per(stages.result_ms.p50),
            payment: per(stages.payment_ms.p50),
            receipt: per(stages.receipt_ms.p50),
            total: per(end_to_end_p50_ms),
        }
    }
}

/// The repo map.
#[derive(Debug, Clone, Serialize)]
pub struct WanRepomap {
    /// Files to map.
    pub files: usize,
    /// Providers started.
    pub providers: usize,
    /// Files mapped (and paid).
    pub completed: usize,
    /// Files given up.
    pub failed: usize,
    /// completed ÷ files, in percent.
    pub completion_pct: f64,
    /// Seconds the map took (or the deadline, if it was hit).
    pub wall_secs: f64,
    /// True if the map was stopped at the deadline.
    pub deadline_hit: bool,
    /// Files given up (or still open at the deadline), by reason.
    pub failures: BTreeMap<String, usize>,
    /// One full reason for each bucket of `failures`.
    pub failure_examples: BTreeMap<String, String>,
    /// Providers that delivered.
    pub providers_used: usize,
    /// Duplicates sent to other providers for slow files.
    pub straggler_duplicates: usize,
}

/// One run of the whole scenario on one path to the relay.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// `"proxy"` or `"direct"`.
    pub path: String,
    /// One publish → `OK` round trip on the roles' path.
    pub round_trip_ms: Latency,
    /// The paid loop.
    pub paid_loop: PaidLoop,
    /// The repo map.
    pub repomap: WanRepomap,
    /// The proxy's counters at the end (none for the direct path).
    pub proxy: Option<WanCounters>,
    /// The hub's audit held.
    pub audit_ok: bool,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct WanBench {
    /// What was dialled.
    pub conditions: Conditions,
    /// One publish → `OK` round trip straight to the relay (no proxy), measured in the same run.
    pub direct_round_trip_ms: Latency,
    /// Everything through the proxy.
    pub wan: Scenario,
    /// The same without the proxy (with `--direct-baseline`).
    pub direct: Option<Scenario>,
    /// Issue 14: the paid loop p50 ≤ this × RTT.
    pub target_p50_over_rtt: f64,
    /// Issue 14: the repo map done within this many seconds.
    pub target_map_secs: f64,
    /// Both targets met through the proxy.
    pub targets_met: bool,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Runs the benchmark; `progress` gets one line per phase.
pub async fn run(options: WanOptions, progress: impl Fn(&str)) -> Result<WanBench, BenchError> {
    let repo = tempfile::tempdir().map_err(err)?;
    sample::generate(repo.path(), options.files.max(1)).map_err(err)?;
    let (sources, _) = walk::collect(repo.path(), &[], &[]).map_err(err)?;
    let profile = WanProfile {
        drops_per_min: options.reconnects_per_min,
        bytes_per_sec: options.bytes_per_sec,
        ..WanProfile::rtt(options.rtt, options.jitter)
    };
    progress(&format!(
        "through the proxy: RTT {} ms ± {} ms, {} cuts/connection/min, relay {} events/s per connection",
        options.rtt.as_millis(),
        options.jitter.as_millis(),
        options.reconnects_per_min,
        options.events_per_sec
    ));
    let (wan, direct_round_trip_ms) =
        scenario(&options, Some(profile), &sources, &progress).await?;
    let direct = if options.direct_baseline {
        progress("the same straight to the relay");
        Some(scenario(&options, None, &sources, &progress).await?.0)
    } else {
        None
    };
    let target_p50_over_rtt = 6.0;
    let target_map_secs = 120.0;
    let targets_met = wan.paid_loop.done == wan.paid_loop.jobs
        && wan
            .paid_loop
            .p50_over_rtt
            .is_some_and(|x| x <= target_p50_over_rtt)
        && wan.repomap.completed == wan.repomap.files
        && wan.repomap.wall_secs <= target_map_secs;
    Ok(WanBench {
        conditions: Conditions {
            rtt_ms: round3(options.rtt.as_secs_f64() * 1000.0),
            jitter_ms: round3(options.jitter.as_secs_f64() * 1000.0),
            reconnects_per_min: options.reconnects_per_min,
            events_per_sec: options.events_per_sec,
            event_burst: options.event_burst,
            bytes_per_sec: options.bytes_per_sec,
            outage_after_secs: options.outage.map(|(after, _)| after.as_secs_f64()),
            outage_secs: options.outage.map(|(_, length)| length.as_secs_f64()),
            hub_beside_relay: options.hub_beside_relay,
        },
        direct_round_trip_ms,
        wan,
        direct,
        target_p50_over_rtt,
        target_map_secs,
        targets_met,
    })
}

/// One market (relay, hub, providers, buyer) with every role on the proxy when `profile` is
/// set. Also returns the round trip straight to the relay, measured beside it.
async fn scenario(
    options: &WanOptions,
    profile: Option<WanProfile>,
    sources: &[walk::SourceFile],
    progress: &impl Fn(&str),
) -> Result<(Scenario, Latency), BenchError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let hub_keys = Keys::generate();
    let hub_node_key = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    let settings = crate::relay::RelaySettings {
        events_per_second: options.events_per_sec.max(1),
        event_burst: options.event_burst.max(1),
        rate_limit_exempt: vec![hub_keys.public_key()],
        ..bench_relay_settings()
    };
    let relay = EmbeddedRelay::start(&settings, &dir.path().join("relay"))
        .await
        .map_err(err)?;
    let direct_url = relay.url();
    let proxy = match profile {
        Some(p) => Some(Arc::new(
            WanProxy::start(relay.local_addr(), p).await.map_err(err)?,
        )),
        None => None,
    };
    let url = match &proxy {
        Some(p) => RelayUrl::parse(&p.url()).map_err(err)?,
        None => direct_url.clone(),
    };
    let hub_url = options.hub_beside_relay.then(|| direct_url.clone());
    let mut market = Appliance::on_relay(
        url.clone(),
        hub_url,
        Some(relay),
        dir.path(),
        Some((hub_keys, hub_node_key)),
        open_hub_settings(),
    )
    .await
    .map_err(err)?;

    progress("publish → OK round trips");
    let round_trip_ms = publish_round_trips(&url, 10).await?;
    let direct_round_trip_ms = publish_round_trips(&direct_url, 10).await?;

    progress(&format!("starting {} providers", options.providers));
    let providers = market
        .add_providers(options.providers.max(1), &bench_node_options())
        .await
        .map_err(err)?;

    progress(&format!("{} paid jobs one at a time", options.sequential));
    let nominal_rtt = profile.map(|p| p.up + p.down);
    let paid_loop = paid_loop(&market, &providers, options, nominal_rtt, round_trip_ms.p50).await?;

    progress(&format!(
        "repo map: {} files through {} providers",
        sources.len(),
        providers.len()
    ));
    let outage = match (&proxy, options.outage) {
        (Some(proxy), Some((after, length))) => {
            let proxy = proxy.clone();
            Some(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tracing::info!("bench wan: relay outage for {length:?}");
                proxy.kill();
                tokio::time::sleep(length).await;
                proxy.revive();
            }))
        }
        _ => None,
    };
    let repomap = repomap(&market, sources, providers.len(), options.map_deadline).await;
    if let Some(task) = outage {
        // A map that ended during the outage must not leave the relay unreachable for the rest.
        task.abort();
        if let Some(p) = &proxy {
            p.revive();
        }
    }
    let repomap = repomap?;

    let proxy_counters = proxy.as_deref().map(WanProxy::counters);
    let audit_ok = market.audit().map(|a| a.ok).unwrap_or(false);
    progress("stopping");
    // Nodes finish their jobs before stopping; through a lossy link that can take long, and the
    // figures are already taken.
    if tokio::time::timeout(Duration::from_secs(30), market.stop())
        .await
        .is_err()
    {
        tracing::warn!("bench wan: the market did not stop within 30 s; leaving it");
    }
    drop(proxy);
    Ok((
        Scenario {
            path: if profile.is_some() { "proxy" } else { "direct" }.into(),
            round_trip_ms,
            paid_loop,
            repomap,
            proxy: proxy_counters,
            audit_ok,
        },
        direct_round_trip_ms,
    ))
}

/// `samples` publishes of a regular event, one at a time, each timed to its `OK`. A publish
/// that fails (a cut connection) is retried after the client reconnects, not timed.
async fn publish_round_trips(url: &RelayUrl, samples: usize) -> Result<Latency, BenchError> {
    let keys = Keys::generate();
    let client = MarketClient::connect(
        keys.clone(),
        std::slice::from_ref(url),
        Duration::from_secs(10),
        Reachability::OneShot,
    )
    .await
    .map_err(err)?;
    let mut took = Vec::with_capacity(samples);
    let mut failures = 0;
    let tag = Tag::hashtag(format!("wan-probe-{}", rand::random::<u64>()));
    while took.len() < samples && failures < samples * 3 {
        let event = EventBuilder::new(Kind::TextNote, format!("probe {}", took.len()))
            .tag(tag.clone())
            .sign_with_keys(&keys)
            .map_err(err)?;
        let started = Instant::now();
        match client.publish(&event).await {
            Ok(_) => took.push(started.elapsed()),
            Err(e) => {
                failures += 1;
                tracing::debug!("bench wan: probe publish failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    client.shutdown().await;
    if took.is_empty() {
        // A baseline that could not be measured must not read as 0 ms.
        return Err(BenchError(format!(
            "no publish through {url} was confirmed in {failures} tries"
        )));
    }
    Ok(Latency::of(&took))
}

async fn paid_loop(
    market: &Appliance,
    providers: &[nostr_sdk::PublicKey],
    options: &WanOptions,
    nominal_rtt: Option<Duration>,
    measured_rtt_ms: f64,
) -> Result<PaidLoop, BenchError> {
    let (buyer, store) = market
        .funded_buyer(&Keys::generate(), 1_000_000_000)
        .await
        .map_err(err)?;
    let wait = WaitOptions {
        timeout: Duration::from_secs(60),
        auto_pay: true,
        max_msats: None,
    };
    let mut took = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let jobs = options.sequential.max(1);
    for i in 0..jobs {
        let started = Instant::now();
        match buyer
            .run(&bench_job(i, providers[i % providers.len()]), wait)
            .await
        {
            Ok(o) if o.status == JobState::Done => took.push(started.elapsed()),
            Ok(o) => reasons.push(match (o.failure, o.message) {
                (Some(code), Some(m)) => format!("{}: {m}", code.as_str()),
                (Some(code), None) => code.as_str().to_string(),
                (None, _) => format!("{:?}", o.status).to_lowercase(),
            }),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    let (failures, failure_examples) = bucket(reasons.iter().map(String::as_str));
    let ids = job_ids(&store, jobs);
    let stages = stages(&store, &ids);
    drop(buyer);
    let end_to_end_ms = Latency::of(&took);
    let crossings = Crossings::measure(&stages, end_to_end_ms.p50, measured_rtt_ms);
    Ok(PaidLoop {
        crossings,
        jobs,
        done: took.len(),
        p50_over_rtt: nominal_rtt
            .map(|rtt| round3(end_to_end_ms.p50 / (rtt.as_secs_f64() * 1000.0).max(1e-9))),
        p50_over_measured_rtt: round3(end_to_end_ms.p50 / measured_rtt_ms.max(1e-9)),
        end_to_end_ms,
        stages,
        failures,
        failure_examples,
    })
}

async fn repomap(
    market: &Appliance,
    sources: &[walk::SourceFile],
    providers: usize,
    deadline: Duration,
) -> Result<WanRepomap, BenchError> {
    let last = Arc::new(Mutex::new(Progress {
        total: sources.len(),
        ..Progress::default()
    }));
    let seen = last.clone();
    let started = Instant::now();
    let run = super::repomap::map_through(market, sources, move |p| {
        if let Ok(mut l) = seen.lock() {
            *l = *p;
        }
    });
    let files = sources.len();
    let pct = |done: usize| round3(100.0 * done as f64 / files.max(1) as f64);
    match tokio::time::timeout(deadline, run).await {
        Ok(report) => {
            let report = report?;
            let (failures, failure_examples) =
                bucket(report.failed.iter().map(|f| f.reason.as_str()));
            Ok(WanRepomap {
                files,
                providers,
                completed: report.mapped,
                failed: report.failed.len(),
                completion_pct: pct(report.mapped),
                wall_secs: report.wall_secs,
                deadline_hit: false,
                failures,
                failure_examples,
                providers_used: report.providers_used,
                straggler_duplicates: report.straggler_duplicates,
            })
        }
        Err(_) => {
            let p = last.lock().map(|p| *p).unwrap_or_default();
            let open = files.saturating_sub(p.done + p.failed);
            let mut failures = BTreeMap::new();
            if p.failed > 0 {
                failures.insert("given-up".to_string(), p.failed);
            }
            if open > 0 {
                failures.insert("open-at-deadline".to_string(), open);
            }
            Ok(WanRepomap {
                files,
                providers,
                completed: p.done,
                failed: p.failed,
                completion_pct: pct(p.done),
                wall_secs: round3(started.elapsed().as_secs_f64()),
                deadline_hit: true,
                failures,
                failure_examples: BTreeMap::new(),
                providers_used: 0,
                straggler_duplicates: 0,
            })
        }
    }
}

/// NIP-01 prefixes a relay's refusal may carry, and client-side causes worth their own bucket.
const CAUSES: [&str; 10] = [
    "rate-limited:",
    "blocked:",
    "invalid:",
    "restricted:",
    "auth-required:",
    "pow:",
    "error:",
    "relay not connected",
    "timeout",
    "premature exit",
];

/// A failure reason reduced to a bucket: its first clause without ids (hex runs) or relay
/// URLs, plus the relay's refusal prefix or the client-side cause when the reason names one
/// (`no relay accepted event <id>: ws://…: rate-limited: …` → `no relay accepted event
/// (rate-limited)`).
fn reason_code(reason: &str) -> String {
    let head: Vec<&str> = reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .split_whitespace()
        .filter(|w| !(w.len() >= 16 && w.chars().all(|c| c.is_ascii_hexdigit())))
        .collect();
    let head: String = head.join(" ").chars().take(48).collect();
    let head = if head.is_empty() {
        "unknown".to_string()
    } else {
        head
    };
    let rest = reason.split_once(':').map_or("", |(_, r)| r);
    match CAUSES.iter().find(|c| rest.contains(*c)) {
        Some(c) => format!("{head} ({})", c.trim_end_matches(':')),
        None => head,
    }
}

/// Counts `reasons` by bucket, keeping the first full reason of each as an example.
fn bucket<'a>(
    reasons: impl IntoIterator<Item = &'a str>,
) -> (BTreeMap<String, usize>, BTreeMap<String, String>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for r in reasons {
        let code = reason_code(r);
        *counts.entry(code.clone()).or_default() += 1;
        examples
            .entry(code)
            .or_insert_with(|| r.chars().take(300).collect());
    }
    (counts, examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_group_by_their_code() {
        assert_eq!(reason_code("timeout: no result in 60 s"), "timeout");
        assert_eq!(reason_code("payment failed: boom: x"), "payment failed");
        assert_eq!(reason_code("Failed"), "Failed");
        assert_eq!(reason_code(""), "unknown");
        let id = "ab".repeat(32);
        assert_eq!(
            reason_code(&format!(
                "no relay accepted event {id}: ws://127.0.0.1:1: rate-limited: slow down"
            )),
            "no relay accepted event (rate-limited)"
        );
        let (counts, examples) = bucket(["a: x", "a: y", "b"]);
        assert_eq!(counts["a"], 2);
        assert_eq!(examples["a"], "a: x");
    }
}
