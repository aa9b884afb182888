//! `pylon bench textgen`: a 64-token completion bought through the market (request → result →
//! payment → receipt, one provider node on a real model) against calling the same server directly
//! in the same run. The difference is what the market costs on top of generation.

use std::time::{Duration, Instant};

use nostr_sdk::Keys;
use serde::Serialize;

use super::market::bench_node_options;
use super::relay::bench_relay_settings;
use super::wallet::BenchError;
use super::{round3, Latency};
use crate::appliance::{open_hub_settings, Appliance};
use crate::buyer::WaitOptions;
use crate::executors::textgen::backend::Sampling;
use crate::executors::textgen::server::{Installation, LocalServer, DEFAULT_ALIAS};
use crate::executors::textgen::{Backend, TextGeneration};
use crate::executors::Registry;
use crate::protocol::kinds;
use crate::protocol::nip90::{JobInput, NewJob};
use crate::provider::NodeOptions;
use crate::store::{JobState, Role};

/// The prompt: open-ended, so the model uses its whole token budget.
const PROMPT: &str = "Tell a long story about a lighthouse keeper and a storm.";

/// Where the model comes from.
#[derive(Debug, Clone, Default)]
pub struct TextgenOptions {
    /// Completions measured each way.
    pub runs: usize,
    /// Tokens per completion.
    pub max_tokens: u32,
    /// A running OpenAI-compatible server; `None` launches the packaged llama.cpp server.
    pub endpoint: Option<String>,
    /// The model to ask for (default: the server's first).
    pub model: Option<String>,
    /// CPU threads for a launched server.
    pub threads: usize,
}

/// One way of getting the completion.
#[derive(Debug, Clone, Serialize)]
pub struct Path {
    /// Request → generated text in hand.
    pub latency_ms: Latency,
    /// Completion tokens ÷ median latency.
    pub tokens_per_sec: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct TextgenBench {
    /// The server's endpoint.
    pub endpoint: String,
    /// The model.
    pub model: String,
    /// Whether the bench launched the server itself.
    pub launched: bool,
    /// Tokens asked for.
    pub max_tokens: u32,
    /// Tokens the model generated (median of the direct runs, from `usage`).
    pub completion_tokens: u64,
    /// The baseline: the server called directly.
    pub direct: Path,
    /// Through the market: submit → result event received.
    pub market: Path,
    /// Through the market including payment and receipt.
    pub market_paid_ms: Latency,
    /// market p50 ÷ direct p50.
    pub overhead_ratio: f64,
    /// market p50 − direct p50, in ms.
    pub overhead_ms: f64,
    /// Market runs whose text equals the direct text (temperature 0).
    pub identical_outputs: usize,
    /// Completions per way.
    pub runs: usize,
    /// Every market job done, paid and receipted.
    pub all_done: bool,
    /// What went wrong with market jobs that were not.
    pub problems: Vec<String>,
    /// The hub's audit afterwards.
    pub audit_ok: bool,
}

/// Runs the benchmark; `progress` gets one line per phase.
pub async fn run(
    options: TextgenOptions,
    progress: impl Fn(&str),
) -> Result<TextgenBench, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    let runs = options.runs.max(1);
    let timeout = Duration::from_secs(300);
    let (server, backend) = match &options.endpoint {
        Some(url) => (None, Backend::new("openai", url, timeout)),
        None => {
            progress("starting the packaged llama.cpp server (Gemma 3 270M)");
            let install = Installation::locate().map_err(|e| err(&e))?;
            let s = LocalServer::start(&install, DEFAULT_ALIAS, options.threads)
                .await
                .map_err(|e| err(&e))?;
            let b = Backend::new("llama.cpp", s.url(), timeout);
            (Some(s), b)
        }
    };
    let served = backend.models().await.map_err(|e| err(&e))?;
    let model = match options.model.clone() {
        Some(m) if served.contains(&m) => m,
        Some(m) => {
            return Err(BenchError(format!(
                "model `{m}` is not served (served: {})",
                served.join(", ")
            )))
        }
        None => served
            .first()
            .cloned()
            .ok_or_else(|| BenchError("the server serves no model".into()))?,
    };
    let sampling = Sampling {
        max_tokens: options.max_tokens,
        temperature: Some(0.0),
        ..Default::default()
    };

    progress("warming the model up");
    backend
        .complete(&model, PROMPT, &sampling)
        .await
        .map_err(|e| err(&e))?;

    let mut market = Appliance::start(&bench_relay_settings(), None, None, open_hub_settings())
        .await
        .map_err(|e| err(&e))?;
    let mut registry = Registry::default();
    registry.add(std::sync::Arc::new(TextGeneration::new(
        backend.clone(),
        vec![model.clone()],
    )));
    let node_options = NodeOptions {
        prices: [(kinds::TEXT_GENERATION, 1_000)].into(),
        job_timeout: timeout,
        ..bench_node_options()
    };
    let provider = market
        .add_node(registry, &node_options)
        .await
        .map_err(|e| err(&e))?;
    let (buyer, store) = market
        .funded_buyer(&Keys::generate(), 10_000_000)
        .await
        .map_err(|e| err(&e))?;
    let wait = WaitOptions {
        timeout,
        auto_pay: true,
        max_msats: None,
    };
    let job = NewJob {
        kind: kinds::TEXT_GENERATION,
        inputs: vec![JobInput::text(PROMPT)],
        params: vec![
            ("model".into(), model.clone()),
            ("max_tokens".into(), options.max_tokens.to_string()),
            ("temperature".into(), "0".into()),
        ],
        bid_msats: Some(10_000),
        providers: vec![provider],
        ..Default::default()
    };

    // Alternate the two ways so drift in the machine's load hits both alike.
    let (mut direct, mut to_result, mut paid) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = Vec::new();
    let (mut identical, mut problems) = (0, Vec::new());
    for i in 0..runs {
        progress(&format!(
            "run {}/{runs}: direct, then through the market",
            i + 1
        ));
        let t = Instant::now();
        let c = backend
            .complete(&model, PROMPT, &sampling)
            .await
            .map_err(|e| err(&e))?;
        direct.push(t.elapsed());
        tokens.push(c.completion_tokens.unwrap_or(0));

        let t = Instant::now();
        // Identical requests signed within one second would be one event: number them.
        let mut this = job.clone();
        this.params.push(("run".into(), i.to_string()));
        let o = buyer.run(&this, wait).await.map_err(|e| err(&e))?;
        paid.push(t.elapsed());
        if o.status != JobState::Done {
            problems.push(format!(
                "job {}: {:?} {:?} {}",
                o.job_id,
                o.status,
                o.failure,
                o.message.as_deref().unwrap_or("")
            ));
        }
        identical += usize::from(o.result.as_deref() == Some(c.text.as_str()));
        let rec = store.jobs().get(&o.job_id, Role::Buyer).ok().flatten();
        match rec.and_then(|r| r.published_at?.checked_sub(r.submitted_at?)) {
            Some(ms) => to_result.push(Duration::from_millis(ms)),
            None => problems.push(format!("job {}: no result time recorded", o.job_id)),
        }
    }
    let audit_ok = market.audit().map(|a| a.ok).unwrap_or(false);
    progress("stopping");
    drop(buyer);
    market.stop().await;
    let launched = server.is_some();
    drop(server);

    tokens.sort_unstable();
    let completion_tokens = tokens[tokens.len() / 2];
    let direct = Latency::of(&direct);
    let market_ms = Latency::of(&to_result);
    // The baseline's tokens/s needs the server's token count: without one there is nothing to
    // compare against, which is a failure, not a rate of 0.
    if completion_tokens == 0 {
        return Err(BenchError(format!(
            "the model server at {} reported no completion tokens (`usage`): tokens/s cannot be measured",
            backend.endpoint()
        )));
    }
    // No samples (every market job failed) is no rate; `problems` says why and the run fails.
    let rate = |l: &Latency| {
        if l.samples == 0 {
            0.0
        } else {
            round3(completion_tokens as f64 / (l.p50 / 1000.0).max(1e-9))
        }
    };
    Ok(TextgenBench {
        endpoint: backend.endpoint().to_string(),
        model,
        launched,
        max_tokens: options.max_tokens,
        completion_tokens,
        direct: Path {
            tokens_per_sec: rate(&direct),
            latency_ms: direct,
        },
        market: Path {
            tokens_per_sec: rate(&market_ms),
            latency_ms: market_ms,
        },
        market_paid_ms: Latency::of(&paid),
        overhead_ratio: round3(market_ms.p50 / direct.p50.max(1e-9)),
        overhead_ms: round3(market_ms.p50 - direct.p50),
        identical_outputs: identical,
        runs,
        all_done: problems.is_empty(),
        problems,
        audit_ok,
    })
}
