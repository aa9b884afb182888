//! `pylon demo`: the hero run, self-contained. A relay, a hub and 30 provider nodes start in this
//! process; a buyer funded from the faucet maps a repository (plus a generated sample, so there
//! are at least 200 paid microjobs) through the market; the run ends with the launch scoreboard,
//! every figure measured in the run from the relay's events and the buyer's store.
//!
//! With churn, a share of the providers is killed mid-run, as a crash would: the map still
//! completes, and the dashboard counts the dead providers' claimed jobs as `provider-offline`.
//!
//! With a [`WanLink`], every role reaches the relay through the bench's WAN proxy (delay,
//! jitter, random cuts) and the relay rate-limits events per connection as public relays do,
//! so the hero run can be watched under launch-day conditions on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nostr_sdk::{EventId, Keys};
use serde::Serialize;

use super::swarm::{Swarm, SwarmOptions};
use super::{err, open_hub_settings, Appliance, ApplianceError};
use crate::bench::wan_proxy::{WanProfile, WanProxy};
use crate::bench::{percentile, round3};
use crate::executors::Registry;
use crate::fanout::{self, aggregate, sample, walk, Options, Progress};
use crate::protocol::kinds;
use crate::provenance::{self, Trace};
use crate::provider::NodeOptions;
use crate::relay::RelaySettings;
use crate::stats::{LiveStats, Snapshot};
use crate::store::{JobState, Role};
use crate::web::{self, RunningWeb, WebState};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Provider nodes.
    pub providers: usize,
    /// The repository to map (`None`: the generated sample alone).
    pub repo: Option<PathBuf>,
    /// Files in the generated sample mapped beside it.
    pub sample_files: usize,
    /// Share of providers killed mid-run (0.0–1.0).
    pub churn: f64,
    /// Where the artifacts go.
    pub out: PathBuf,
    /// Where the dashboard listens (port 0: any).
    pub web: SocketAddr,
    /// Most sats the buyer spends on the map.
    pub budget_sats: u64,
    /// Run every role through a dialled wide-area link (`None`: straight to the relay).
    pub wan: Option<WanLink>,
}

/// The far-away relay of `pylon demo --wan`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WanLink {
    /// Delay, jitter and cuts between each role and the relay.
    pub profile: WanProfile,
    /// The relay's event rate limit per connection (the hub is exempt, as a wallet service's
    /// own relay would treat it).
    pub events_per_sec: u32,
}

impl Default for WanLink {
    /// `pylon bench wan`'s defaults: 100 ms ± 20 ms, one cut per connection per minute, 20
    /// events/s per connection.
    fn default() -> Self {
        Self {
            profile: WanProfile {
                drops_per_min: 1.0,
                ..WanProfile::rtt(Duration::from_millis(100), Duration::from_millis(20))
            },
            events_per_sec: 20,
        }
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            providers: 30,
            repo: Some(PathBuf::from(".")),
            sample_files: 200,
            churn: 0.0,
            out: PathBuf::from("pylon-demo"),
            web: ([127, 0, 0, 1], 0).into(),
            budget_sats: 5_000,
            wan: None,
        }
    }
}

/// The seeds' launch bars, each measured in the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scoreboard {
    /// Distinct providers that completed at least one job (bar: ≥ 20).
    pub providers_with_jobs: usize,
    /// Jobs done: result accepted and paid (bar: ≥ 200).
    pub jobs_completed: usize,
    /// Results ÷ (results + failures), as the dashboard counts them (bar: ≥ 95%).
    pub success_rate: f64,
    /// Claim → result, median, ms (bar: < 5 s).
    pub p50_job_runtime_ms: f64,
    /// Submit → result, median, ms.
    pub p50_end_to_end_ms: f64,
    /// Submit → result, 95th percentile, ms (bar: < 45 s).
    pub p95_end_to_end_ms: f64,
    /// Sats settled, from receipts on the relay.
    pub sats_settled: u64,
    /// Failures by code, as the dashboard shows them.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Each bar, and whether it was met.
    pub bars: Vec<Bar>,
    /// Every bar met.
    pub met: bool,
}

/// One launch bar.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bar {
    /// What is measured.
    pub name: String,
    /// The bar, in words.
    pub target: String,
    /// Met or not.
    pub met: bool,
}

/// What the run produced.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The map's own report.
    pub repomap: fanout::Report,
    /// The artifacts written.
    pub artifacts: Vec<PathBuf>,
    /// The dashboard's view at the end.
    pub stats: Snapshot,
    /// One job's chain, rebuilt from the relay alone.
    pub trace: Option<Trace>,
    /// Providers killed mid-run.
    pub killed: usize,
    /// The launch scoreboard.
    pub scoreboard: Scoreboard,
    /// Seconds, start to scoreboard.
    pub wall_secs: f64,
    /// The link the roles used: `null` straight to the relay.
    pub wan: Option<WanConditions>,
}

/// What `--wan` dialled (as `pylon bench wan` reports it), and what the proxy did.
#[derive(Debug, Clone, Serialize)]
pub struct WanConditions {
    /// The link and relay limits.
    #[serde(flatten)]
    pub conditions: crate::bench::wan::Conditions,
    /// The proxy's counters at the end of the run.
    pub proxy: crate::bench::wan_proxy::WanCounters,
}

/// A demo whose dashboard is still up (`--keep`), or about to be stopped.
pub struct Demo {
    /// The report.
    pub report: DemoReport,
    /// The dashboard's URL.
    pub dashboard: String,
    web: RunningWeb,
    market: Appliance,
    swarm: Swarm,
    /// Held, not read: the roles reach the relay through it until the demo is dropped.
    _proxy: Option<WanProxy>,
}

impl Demo {
    /// The market's relay.
    pub fn relay_url(&self) -> &nostr_sdk::RelayUrl {
        &self.market.url
    }

    /// Stops the dashboard, the nodes, the hub and the relay.
    pub async fn stop(self) {
        self.web.stop().await;
        self.swarm.stop().await;
        self.market.stop().await;
    }
}

/// Runs the demo. `say` hears progress lines; `started` is told the dashboard's URL once it is
/// up, so a user can watch the map build.
pub async fn run(
    options: &DemoOptions,
    say: impl Fn(&str) + Send + Sync,
    started: impl FnOnce(&str),
) -> Result<Demo, ApplianceError> {
    let t0 = Instant::now();
    let files = collect(options)?;
    say(&format!(
        "{} files to map ({} from the repository, {} generated)",
        files.len(),
        files
            .iter()
            .filter(|f| !f.path.starts_with("sample/"))
            .count(),
        files
            .iter()
            .filter(|f| f.path.starts_with("sample/"))
            .count()
    ));

    let (market, proxy) = start_market(options.wan).await?;
    match (&proxy, options.wan) {
        (Some(p), Some(w)) => say(&format!(
            "relay and hub up; every role reaches the relay through {} (RTT {} ms ± {} ms, {} cuts/connection/min, {} events/s per connection)",
            p.url(),
            (w.profile.up + w.profile.down).as_millis(),
            w.profile.jitter.as_millis(),
            w.profile.drops_per_min,
            w.events_per_sec
        )),
        _ => say(&format!("relay {} and hub up", market.url)),
    }
    let node = NodeOptions {
        prices: [(kinds::CODE_ANALYSIS, 1_000)].into(),
        heartbeat_interval: Duration::from_secs(2),
        buyer_jobs_per_minute: 100_000,
        buyer_max_concurrent: 10_000,
        // The demo's few buyers are the load, with fresh keys: no credit limit.
        max_unpaid_jobs_unproven: u32::MAX,
        ..NodeOptions::default()
    };
    let swarm_options = SwarmOptions {
        providers: options.providers.max(1),
        node,
        registry: Registry::builtin(),
        fund_sats: 0,
    };
    let mut swarm = Swarm::start(
        std::slice::from_ref(&market.url),
        market.hub_keys.public_key(),
        Some(&market.dir().join("swarm")),
        &swarm_options,
        |_| {},
    )
    .await?;
    say(&format!(
        "{} providers up in {:.1} s",
        swarm.nodes.len(),
        swarm.start_secs
    ));

    let viewer = Arc::new(super::connect(&Keys::generate(), &market.url).await?);
    let stats = Arc::new(
        LiveStats::start(viewer.clone(), Duration::from_secs(3600))
            .await
            .map_err(err)?,
    );
    let (buyer, store) = market
        .funded_buyer(&Keys::generate(), options.budget_sats * 1000 * 2)
        .await?;
    let state = Arc::new(WebState {
        stats: stats.clone(),
        client: viewer.clone(),
        store: Some(store.clone()),
        notices: Vec::new(),
        trust: market.trusted_hubs(),
    });
    let web = match web::serve(options.web, state.clone()).await {
        Ok(w) => w,
        // The default port is taken (another dashboard): any free one will do.
        Err(_) if options.web.port() != 0 => {
            web::serve(SocketAddr::new(options.web.ip(), 0), state)
                .await
                .map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    let dashboard = format!("http://{}", web.local_addr());
    started(&dashboard);

    // Churn: once about a third of the files are done, kill the share asked for.
    let done = Arc::new(AtomicUsize::new(0));
    let to_kill = ((swarm.nodes.len() as f64) * options.churn.clamp(0.0, 1.0)).round() as usize;
    let victims: Vec<_> = swarm
        .nodes
        .drain(..to_kill.min(swarm.nodes.len()))
        .collect();
    let total = files.len();
    let churn = tokio::spawn({
        let done = done.clone();
        async move {
            if victims.is_empty() {
                return 0;
            }
            while done.load(Ordering::SeqCst) < total / 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let n = victims.len();
            for v in victims {
                v.kill().await;
            }
            n
        }
    });
    if to_kill > 0 {
        say(&format!(
            "churn: {to_kill} of {} providers will be killed a third of the way in",
            swarm_options.providers
        ));
    }

    let map_options = Options {
        budget_msats: Some(options.budget_sats * 1000),
        max_price_msats: 2_000,
        parallel: 32,
        timeout: Duration::from_secs(20),
        attempts: 5,
        straggler_after: Duration::from_secs(4),
        providers: Vec::new(),
    };
    let last_say = std::sync::Mutex::new(Instant::now());
    let (report, mapped, provenance) = fanout::map_market(
        &files,
        buyer.clone(),
        &viewer,
        &map_options,
        |p: &Progress| {
            done.store(p.done + p.failed, Ordering::SeqCst);
            let mut last = last_say.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(1) || p.done + p.failed == p.total {
                *last = Instant::now();
                say(&format!(
                    "mapped {}/{} ({} running, {} failed, {} sats)",
                    p.done, p.total, p.running, p.failed, p.sats_spent
                ));
            }
        },
    )
    .await
    .map_err(err)?;
    done.store(total, Ordering::SeqCst);
    let killed = churn.await.unwrap_or(0);

    let label = options
        .repo
        .as_ref()
        .and_then(|r| r.canonicalize().ok())
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "sample".into());
    let map = aggregate::repo_map(&label, &mapped);
    let artifacts = aggregate::write(&options.out, &map, &provenance)
        .map_err(|e| err(format!("cannot write to {}: {e}", options.out.display())))?
        .to_vec();

    // The dashboard counts from relay events: give the last receipts a moment to arrive.
    let spent_sats: u64 = report.spent_msats / 1000;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.snapshot().windows.last_day.sats_settled < spent_sats && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed providers show up as failures once their heartbeats expire.
    if killed > 0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.snapshot().online_nodes as usize > swarm.nodes.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let snapshot = stats.snapshot();

    let records = store
        .jobs()
        .list(Some(Role::Buyer), 1_000_000)
        .map_err(err)?;
    let trace = match records.iter().find(|r| paid(r)) {
        Some(r) => match EventId::from_hex(&r.job_id) {
            Ok(id) => {
                provenance::trace(&viewer, id, Duration::from_secs(5), &market.trusted_hubs())
                    .await
                    .ok()
            }
            Err(_) => None,
        },
        None => None,
    };
    let scoreboard = scoreboard(&records, &snapshot, &stats);
    Ok(Demo {
        report: DemoReport {
            repomap: report,
            artifacts,
            stats: snapshot,
            trace,
            killed,
            scoreboard,
            wall_secs: round3(t0.elapsed().as_secs_f64()),
            wan: options.wan.zip(proxy.as_ref()).map(|(w, p)| WanConditions {
                conditions: crate::bench::wan::Conditions {
                    rtt_ms: round3((w.profile.up + w.profile.down).as_secs_f64() * 1000.0),
                    jitter_ms: round3(w.profile.jitter.as_secs_f64() * 1000.0),
                    reconnects_per_min: w.profile.drops_per_min,
                    events_per_sec: w.events_per_sec,
                    event_burst: w.events_per_sec,
                    bytes_per_sec: w.profile.bytes_per_sec,
                    outage_after_secs: None,
                    outage_secs: None,
                    hub_beside_relay: false,
                },
                proxy: p.counters(),
            }),
        },
        dashboard,
        web,
        market,
        swarm,
        _proxy: proxy,
    })
}

/// The relay and hub, straight or (with `wan`) behind the WAN proxy with public-relay limits.
async fn start_market(
    wan: Option<WanLink>,
) -> Result<(Appliance, Option<WanProxy>), ApplianceError> {
    let mut relay = RelaySettings {
        bind: ([127, 0, 0, 1], 0).into(),
        events_per_second: 100_000,
        event_burst: 100_000,
        ..RelaySettings::default()
    };
    let Some(link) = wan else {
        let market = Appliance::start(&relay, None, None, open_hub_settings()).await?;
        return Ok((market, None));
    };
    let hub_keys = Keys::generate();
    let hub_node_key = bitcoin::secp256k1::SecretKey::new(&mut rand::thread_rng());
    relay.events_per_second = link.events_per_sec.max(1);
    relay.event_burst = link.events_per_sec.max(1);
    relay.rate_limit_exempt = vec![hub_keys.public_key()];
    let (market, proxy) = Appliance::start_behind_proxy(
        &relay,
        Some((hub_keys, hub_node_key)),
        open_hub_settings(),
        link.profile,
    )
    .await?;
    Ok((market, Some(proxy)))
}

/// The repository's files plus the generated sample (under `sample/`).
fn collect(options: &DemoOptions) -> Result<Vec<walk::SourceFile>, ApplianceError> {
    let mut files = Vec::new();
    if let Some(repo) = &options.repo {
        // The demo's own output is not part of the repository.
        let exclude = vec![format!("{}/**", options.out.display())];
        let (found, _) = walk::collect(repo, &[], &exclude).map_err(err)?;
        files.extend(found);
    }
    if options.sample_files > 0 {
        let dir = tempfile::tempdir().map_err(err)?;
        sample::generate(dir.path(), options.sample_files).map_err(err)?;
        let (found, _) = walk::collect(dir.path(), &[], &[]).map_err(err)?;
        files.extend(found.into_iter().map(|mut f| {
            f.path = format!("sample/{}", f.path);
            f
        }));
    }
    if files.is_empty() {
        return Err(err(
            "nothing to map: give a repository or a sample size above 0",
        ));
    }
    Ok(files)
}

fn scoreboard(
    records: &[crate::store::JobRecord],
    snapshot: &Snapshot,
    stats: &LiveStats,
) -> Scoreboard {
    let done: Vec<&crate::store::JobRecord> = records.iter().filter(|r| paid(r)).collect();
    let span = |a: Option<u64>, b: Option<u64>| Some(b?.checked_sub(a?)? as f64);
    let mut runtime: Vec<f64> = done
        .iter()
        .filter_map(|r| span(r.picked_up_at, r.published_at))
        .collect();
    let mut e2e: Vec<f64> = done
        .iter()
        .filter_map(|r| span(r.submitted_at, r.published_at))
        .collect();
    runtime.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let providers_with_jobs = stats.providers().iter().filter(|p| p.completed > 0).count();
    let success_rate = snapshot.success_rate.unwrap_or(0.0);
    let p50_job_runtime_ms = percentile(&runtime, 50.0);
    let p95_end_to_end_ms = percentile(&e2e, 95.0);
    let bars = vec![
        bar("providers with ≥ 1 job", "≥ 20", providers_with_jobs >= 20),
        bar("jobs completed", "≥ 200", done.len() >= 200),
        bar("success rate", "≥ 95%", success_rate >= 0.95),
        bar("p50 job runtime", "< 5 s", p50_job_runtime_ms < 5_000.0),
        bar("p95 end-to-end", "< 45 s", p95_end_to_end_ms < 45_000.0),
    ];
    Scoreboard {
        providers_with_jobs,
        jobs_completed: done.len(),
        success_rate: round3(success_rate),
        p50_job_runtime_ms,
        p50_end_to_end_ms: percentile(&e2e, 50.0),
        p95_end_to_end_ms,
        sats_settled: snapshot.windows.last_day.sats_settled,
        failures: snapshot.failures.clone(),
        met: bars.iter().all(|b| b.met),
        bars,
    }
}

/// A job whose result was accepted and paid (the receipt may still be on its way).
fn paid(r: &crate::store::JobRecord) -> bool {
    matches!(r.state, Some(JobState::Paid | JobState::Done))
}

fn bar(name: &str, target: &str, met: bool) -> Bar {
    Bar {
        name: name.into(),
        target: target.into(),
        met,
    }
}
