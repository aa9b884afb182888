//! `pylon node up | status | down`: run a provider, look at it, stop it gracefully.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::output::{self, JsonFlag};
use super::{shutdown_signal, Context};
use crate::executors::Registry;
use crate::protocol::kinds::kind_alias;
use crate::provider::{Node, NodeOptions, NodeStatus, PaymentMode};
use crate::relay::{MarketClient, Reachability};
use crate::store::Store;
use crate::wallet::{resolve, Wallet};

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Run a provider in the foreground: announce, take jobs, get paid (Ctrl-C stops it gracefully)
    Up(UpArgs),
    /// Show the running node: relays, uptime, queue, jobs served and failed, earnings (exit
    /// status 1 when none runs, so it serves as a health check)
    Status(JsonFlag),
    /// Stop the running node gracefully: it finishes or releases its jobs, then exits
    Down(DownArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Job kinds to serve, comma-separated (numbers or code-analysis, text-generation)
    /// [default: every kind priced in config]
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    kinds: Vec<String>,
    /// Price of every served kind, in msats [default: config [prices]]
    #[arg(long, value_name = "MSATS")]
    price_msats: Option<u64>,
    /// Jobs run at once
    #[arg(long, default_value_t = 4)]
    max_concurrent: usize,
    /// When buyers pay: after the result (with its invoice) or before the job runs
    #[arg(long, value_enum, default_value_t = PaymentMode::After)]
    payment: PaymentMode,
    /// Seconds between heartbeats
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// Longest a job may run, in seconds
    #[arg(long, default_value_t = 60)]
    job_timeout: u64,
    /// Seconds an invoice stays payable
    #[arg(long, default_value_t = 600)]
    invoice_expiry: u64,
    /// Jobs one buyer may send per minute
    #[arg(long, default_value_t = 600)]
    buyer_jobs_per_minute: u32,
    /// Jobs of one buyer queued or running at once
    #[arg(long, default_value_t = 64)]
    buyer_max_concurrent: u32,
    /// Keep serving buyers who let invoices of this node expire unpaid
    #[arg(long)]
    allow_unpaid: bool,
    /// LLM backend for text generation: auto (Ollama or llama-server on their default ports, or
    /// llm.endpoint), openai (an OpenAI-compatible server at --endpoint), none
    #[arg(long, value_enum, default_value_t = LlmBackend::Auto)]
    backend: LlmBackend,
    /// OpenAI-compatible server URL, e.g. http://127.0.0.1:8080 [default: llm.endpoint]
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Model to serve by default [default: llm.model, else the server's first]
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

/// Where text generation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LlmBackend {
    /// Detect a local server.
    Auto,
    /// The server at --endpoint.
    Openai,
    /// No text generation.
    None,
}

/// Finds the text-generation backend the flags and config ask for.
async fn text_generation(
    args: &UpArgs,
    config: &crate::config::Config,
) -> anyhow::Result<Option<crate::executors::textgen::TextGeneration>> {
    use crate::executors::textgen::{backend, Backend, TextGeneration};
    let timeout = Duration::from_secs(config.llm.timeout_secs);
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| config.llm.endpoint.clone());
    let found = match (args.backend, endpoint) {
        (LlmBackend::None, _) => return Ok(None),
        (LlmBackend::Openai, None) => {
            bail!("--backend openai needs --endpoint URL (or llm.endpoint in config)")
        }
        (_, Some(ep)) => {
            let b = Backend::new("openai", &ep, timeout);
            let models = b
                .models()
                .await
                .with_context(|| format!("no OpenAI-compatible server answers at {ep}"))?;
            Some((b, models))
        }
        (LlmBackend::Auto, None) => backend::detect(timeout).await,
    };
    let Some((b, mut models)) = found else {
        return Ok(None);
    };
    if let Some(wanted) = args.model.clone().or_else(|| config.llm.model.clone()) {
        let Some(at) = models.iter().position(|m| *m == wanted) else {
            bail!(
                "model `{wanted}` is not served at {} (served: {})",
                b.endpoint(),
                models.join(", ")
            );
        };
        models.swap(0, at);
    }
    if models.is_empty() {
        bail!("the server at {} serves no model", b.endpoint());
    }
    Ok(Some(TextGeneration::new(b, models)))
}

#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    /// Seconds to wait for the node to finish its jobs and exit
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub(crate) async fn run(ctx: &Context, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Up(args) => up(ctx, args).await,
        NodeCommand::Status(flags) => status(ctx, flags),
        NodeCommand::Down(args) => down(ctx, args).await,
    }
}

async fn up(ctx: &Context, args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    if let Some(running) = read_status(&ctx.home.node_status_file()).filter(|s| alive(s.pid)) {
        bail!(
            "a node is already running from this home (pid {}); stop it with `pylon node down`",
            running.pid
        );
    }
    let mut prices = config.prices.clone();
    if !args.kinds.is_empty() {
        let wanted: Vec<u16> = args
            .kinds
            .iter()
            .map(|k| {
                kind_alias(k.trim())
                    .with_context(|| format!("`{k}` is not a job kind (5000-5999 or an alias)"))
            })
            .collect::<anyhow::Result<_>>()?;
        prices.retain(|k, _| wanted.contains(k));
        for k in wanted {
            prices.entry(k).or_insert(args.price_msats.unwrap_or(1_000));
        }
    }
    if let Some(p) = args.price_msats {
        prices.values_mut().for_each(|v| *v = p);
    }
    // Serve only kinds this node can run; say which configured ones are skipped.
    let mut registry = Registry::builtin();
    let wants_text =
        args.kinds.is_empty() || prices.contains_key(&crate::protocol::kinds::TEXT_GENERATION);
    if wants_text && args.backend != LlmBackend::None {
        match text_generation(&args, &config).await {
            Ok(Some(tg)) => {
                eprintln!(
                    "text generation: {} at {} ({})",
                    tg.backend().name(),
                    tg.backend().endpoint(),
                    tg.models().join(", ")
                );
                registry.add(std::sync::Arc::new(tg));
            }
            Ok(None) => {}
            Err(e) if args.kinds.is_empty() => eprintln!("text generation off: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    if prices.contains_key(&crate::protocol::kinds::TEXT_GENERATION)
        && registry
            .get(crate::protocol::kinds::TEXT_GENERATION)
            .is_none()
        && !args.kinds.is_empty()
    {
        bail!(
            "no LLM backend for text generation: start Ollama or llama-server, or pass \
             --backend openai --endpoint URL"
        );
    }
    let skipped: Vec<u16> = prices
        .keys()
        .copied()
        .filter(|k| registry.get(*k).is_none())
        .collect();
    if !args.kinds.is_empty() && !skipped.is_empty() {
        bail!(
            "no executor for kind {} in this build (available: {:?})",
            skipped[0],
            registry.kinds()
        );
    }
    prices.retain(|k, _| registry.get(*k).is_some());
    if prices.is_empty() {
        bail!(
            "nothing to serve: no configured kind has an executor (available: {:?})",
            registry.kinds()
        );
    }

    let identity = ctx.identity()?;
    let keys = identity.nostr_keys().clone();
    let relay = MarketClient::connect_buffered(
        keys.clone(),
        &config.relays,
        config.fallback_timeout,
        Reachability::FallBack {
            settings: Box::new(config.relay.clone()),
            data_dir: ctx.home.relay_dir(),
        },
        crate::relay::client::NODE_NOTIFICATION_BUFFER,
    )
    .await?;
    if let Some(fb) = relay.fallback() {
        eprintln!(
            "warning: relays unreachable ({}); running on the embedded relay at {}",
            fb.reason, fb.url
        );
    }
    let relays = relay.relay_urls().await;
    let (wallet, source) = resolve::connect(&identity, &config, &relays).await?;
    let wallet: Arc<dyn Wallet> = Arc::new(wallet);
    let store = Arc::new(Store::open(ctx.home.root())?);
    let options = config.provider.apply(NodeOptions {
        name: format!("pylon-{}", &keys.public_key().to_hex()[..8]),
        prices,
        max_concurrent: args.max_concurrent.max(1),
        payment: args.payment,
        heartbeat_interval: Duration::from_secs(args.heartbeat_secs.max(1)),
        job_timeout: Duration::from_secs(args.job_timeout.max(1)),
        invoice_expiry_secs: args.invoice_expiry.max(10),
        buyer_jobs_per_minute: args.buyer_jobs_per_minute.max(1),
        buyer_max_concurrent: args.buyer_max_concurrent.max(1),
        refuse_unpaid: !args.allow_unpaid,
        ..NodeOptions::default()
    });
    let node = Node::start(
        keys.clone(),
        Arc::new(relay),
        wallet,
        store,
        registry,
        options,
    )
    .await?;
    let first = node.status().await;
    println!(
        "pylon node {} up: kinds {:?}, relays {}",
        first.pubkey,
        first.kinds,
        first.relays.join(", ")
    );
    println!("  npub:    {}", first.npub);
    println!(
        "  prices:  {:?} msats; payment {:?}",
        first.prices, first.payment
    );
    println!(
        "  wallet:  {}",
        serde_json::to_string(&source).unwrap_or_default()
    );
    println!("`pylon node status` shows it; `pylon node down` or Ctrl-C stops it gracefully.");

    let status_file = ctx.home.node_status_file();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => { r?; break; }
            _ = tick.tick() => write_status(&status_file, &node.status().await),
        }
    }
    eprintln!("stopping: finishing running jobs (10 s at most; Ctrl-C again exits at once)…");
    super::stop_or_second_signal(node.stop()).await;
    let _ = std::fs::remove_file(&status_file);
    super::output::say("node stopped");
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Context, flags: JsonFlag) -> anyhow::Result<ExitCode> {
    let path = ctx.home.node_status_file();
    let status = read_status(&path);
    let running = status.as_ref().is_some_and(|s| alive(s.pid));
    let code = if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if flags.json {
        output::print_json(&serde_json::json!({ "running": running, "node": status }))?;
        return Ok(code);
    }
    match status {
        Some(s) if running => {
            println!(
                "node {} running (pid {}), up {} s, {:?}",
                s.npub, s.pid, s.uptime_secs, s.state
            );
            println!("  relays:   {}", s.relays.join(", "));
            if let Some(fb) = &s.fallback {
                println!(
                    "  FALLBACK: on the embedded relay {} ({})",
                    fb.url, fb.reason
                );
            }
            println!(
                "  kinds:    {:?}  prices {:?} msats  payment {:?}",
                s.kinds, s.prices, s.payment
            );
            println!(
                "  queue:    {} waiting, {} running",
                s.queue_depth, s.running
            );
            println!(
                "  session:  {} served, {} failed ({} shed as overloaded), {} look-ups for missed requests",
                s.served, s.failed, s.shed, s.lookups
            );
            println!(
                "  all time: {} served, earned {} sats, failed {:?}",
                s.totals.served,
                s.totals.earned_msat / 1000,
                s.totals.failed
            );
            println!(
                "  invoices: {} awaiting payment, {} expired unpaid",
                s.awaiting_payment, s.expired_unpaid
            );
        }
        _ => println!("no node running from {}", ctx.home.root().display()),
    }
    Ok(code)
}

async fn down(ctx: &Context, args: DownArgs) -> anyhow::Result<ExitCode> {
    let Some(s) = read_status(&ctx.home.node_status_file()).filter(|s| alive(s.pid)) else {
        println!("no node running from {}", ctx.home.root().display());
        return Ok(ExitCode::SUCCESS);
    };
    let pid = i32::try_from(s.pid).context("bad pid in the status file")?;
    // SAFETY: kill(2) with a pid read from our own status file and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    eprintln!(
        "asked node {} (pid {pid}) to stop; waiting for its jobs…",
        s.npub
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while alive(s.pid) {
        if Instant::now() > deadline {
            bail!(
                "the node (pid {pid}) is still running after {} s",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    super::output::say("node stopped");
    Ok(ExitCode::SUCCESS)
}

fn read_status(path: &Path) -> Option<NodeStatus> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn write_status(path: &Path, status: &NodeStatus) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// Whether `pid` is a live pylon process (a recycled pid running something else is not).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains("pylon"))
        .unwrap_or(false)
}
