//! The stats snapshot: the documented JSON schema of `pylon stats --json` and `/api/stats`.
//!
//! ```text
//! schema             "pylon/stats@1"
//! generated_at       unix seconds
//! online_nodes       providers with an unexpired heartbeat
//! known_providers    providers seen (announce, heartbeat or work) in the window
//! jobs_per_min       requests in the last 60 s
//! completed_per_min  results in the last 60 s
//! success_rate       results ÷ (results + failures) for jobs of the last hour; null if none ended
//! latency_ms         request → result, jobs of the last hour: {p50, p95, samples}
//! pickup_ms          request → claim (`processing`), same jobs
//! payment_ms         result → receipt, same jobs
//! windows            {last_minute, last_hour, last_day}: {submitted, completed, failed,
//!                    sats_requested, sats_settled}
//! failures           failure code → count, last day
//! top_providers      up to 10, by completed jobs in the last day (see ProviderRow)
//! jobs_per_min_series  requests per minute, the last 60 minutes, oldest first
//! latency_histogram  [{le_ms, count}] of request → result, last hour
//! recent_jobs        up to 20, newest first (see JobRow)
//! personal           this home's own earnings and spend (from its stores), when known
//! ```
//! Latencies use arrival times (ms) for events seen live, and event timestamps (1 s
//! resolution) for events loaded from history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Schema tag.
pub const SCHEMA: &str = "pylon/stats@1";

/// One snapshot of the market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SCHEMA`].
    pub schema: String,
    /// Unix seconds.
    pub generated_at: u64,
    /// Relays the numbers come from.
    pub relays: Vec<String>,
    /// Providers with an unexpired heartbeat.
    pub online_nodes: u64,
    /// Providers seen in the window.
    pub known_providers: u64,
    /// Requests in the last minute.
    pub jobs_per_min: f64,
    /// Results in the last minute.
    pub completed_per_min: f64,
    /// Results ÷ (results + failures), jobs of the last hour.
    pub success_rate: Option<f64>,
    /// Request → result.
    pub latency_ms: Percentiles,
    /// Request → claim.
    pub pickup_ms: Percentiles,
    /// Result → receipt.
    pub payment_ms: Percentiles,
    /// Counts per window.
    pub windows: Windows,
    /// Failures by code, last day.
    pub failures: BTreeMap<String, u64>,
    /// Busiest providers, last day.
    pub top_providers: Vec<ProviderRow>,
    /// Requests per minute, last 60 minutes, oldest first.
    pub jobs_per_min_series: Vec<u64>,
    /// Request → result histogram, last hour.
    pub latency_histogram: Vec<Bucket>,
    /// Newest jobs.
    pub recent_jobs: Vec<JobRow>,
    /// This home's own money, when known.
    pub personal: Option<Personal>,
    /// What the operator should know about how this market runs (e.g. the public relay was
    /// unreachable and the embedded one took over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// Percentiles in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// Samples.
    pub samples: u64,
}

/// Counts for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WindowStats {
    /// Requests.
    pub submitted: u64,
    /// Results.
    pub completed: u64,
    /// Failed (error, no result).
    pub failed: u64,
    /// Sats asked for in results.
    pub sats_requested: u64,
    /// Sats proven paid by receipts.
    pub sats_settled: u64,
}

/// The three windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Windows {
    /// 60 s.
    pub last_minute: WindowStats,
    /// 1 h.
    pub last_hour: WindowStats,
    /// 24 h.
    pub last_day: WindowStats,
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRow {
    /// Hex.
    pub pubkey: String,
    /// NIP-19.
    pub npub: String,
    /// Announced name.
    pub name: String,
    /// Unexpired heartbeat.
    pub online: bool,
    /// Publishes Pylon's marker.
    pub pylon: bool,
    /// From its heartbeat.
    pub uptime_secs: Option<u64>,
    /// Results, last day.
    pub completed: u64,
    /// Failures by code, last day.
    pub failed: BTreeMap<String, u64>,
    /// Claim → result median, ms.
    pub median_runtime_ms: Option<f64>,
    /// Receipted sats, last day.
    pub earnings_sats: u64,
    /// Announced prices (msats by kind).
    pub prices: BTreeMap<String, u64>,
    /// Kinds announced.
    pub kinds: Vec<u16>,
    /// From its heartbeat.
    pub queue_depth: Option<u32>,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    /// Request id.
    pub job_id: String,
    /// Request kind, if the request was seen.
    pub kind: Option<u16>,
    /// Hex.
    pub buyer: Option<String>,
    /// Hex.
    pub provider: Option<String>,
    /// `submitted`, `processing`, `done`, `paid`, `failed`.
    pub status: String,
    /// Failure code.
    pub failure: Option<String>,
    /// Unix seconds.
    pub submitted_at: Option<u64>,
    /// Request → result.
    pub latency_ms: Option<u64>,
    /// Asked.
    pub amount_msat: Option<u64>,
}

/// A histogram bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound, ms (inclusive); the last bucket is unbounded (`u64::MAX`).
    pub le_ms: u64,
    /// Samples.
    pub count: u64,
}

/// This home's own money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Personal {
    /// Earned as a provider, msats (receipted).
    pub earned_msat: u64,
    /// Spent as a buyer, msats (paid).
    pub spent_msat: u64,
    /// Jobs sold.
    pub jobs_sold: u64,
    /// Jobs bought.
    pub jobs_bought: u64,
}
