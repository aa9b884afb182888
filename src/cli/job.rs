//! `pylon job …`, `pylon pay`, `pylon receipts`: the buyer's and the auditor's commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use nostr_sdk::{Event, EventId, JsonUtil, Keys, PublicKey};
use serde_json::json;

use super::output;
use super::Context;
use crate::buyer::{Buyer, Outcome, WaitOptions};
use crate::protocol::kinds::kind_alias;
use crate::protocol::nip47::Encryption;
use crate::protocol::nip90::{JobInput, JobResult, NewJob};
use crate::provenance;
use crate::relay::client::ONE_SHOT_TIMEOUT;
use crate::relay::{MarketClient, Reachability};
use crate::store::{JobState, Role, Store};
use crate::wallet::{resolve, Wallet};

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Post a job (and with --wait, follow it to its result, payment and receipt)
    Submit(SubmitArgs),
    /// Show a job from the local store, with its stage timings
    Status(IdArgs),
    /// Print (or save) a job's result
    Results(ResultsArgs),
    /// List jobs from the local store, newest first
    List(ListArgs),
    /// Rebuild a job's history from relay events alone and verify every link, including a
    /// trusted hub's attestation that the payment settled. Exits 0 for a verified paid chain or
    /// a free job (a checked result that asked for no payment), 1 otherwise
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The job id (request event id; a unique prefix works for local jobs)
    id: String,
    /// Trust this hub's settlement attestations (npub, hex service key or 66-hex node key;
    /// repeatable), besides [trust] hubs and the hub your wallet is pinned to
    #[arg(long = "trust-hub", value_name = "KEY")]
    trust_hubs: Vec<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Job kind: code-analysis (5960), text-generation (5050), or a number 5000-5999
    kind: String,
    /// A file (sent with its path) or literal text
    #[arg(long)]
    input: String,
    /// Extra parameters, key=value (repeatable)
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Most you pay, in sats (providers asking more refuse)
    #[arg(long)]
    bid: Option<u64>,
    /// Send to this provider only (npub or hex)
    #[arg(long)]
    provider: Option<String>,
    /// Encrypt the input to the provider (NIP-44; needs --provider)
    #[arg(long, requires = "provider")]
    encrypt: bool,
    /// Follow the job until it finishes
    #[arg(long)]
    wait: bool,
    /// Pay the result's invoice: checked against the bid and --max-sats; with neither, at most
    /// [buyer] max_job_sats (config.toml, default 10 sats). Every payment counts against
    /// [buyer] max_daily_sats
    #[arg(long, requires = "wait")]
    auto_pay: bool,
    /// Never pay more than this, in sats
    #[arg(long)]
    max_sats: Option<u64>,
    /// Seconds --wait waits
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print JSON: job_id, status, result, payment
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The job id (request event id; a unique prefix works for local jobs)
    id: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ResultsArgs {
    /// The job id (or a unique prefix)
    id: String,
    /// Write the result here instead of stdout
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// How many
    #[arg(long, default_value_t = 20)]
    limit: u64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// The job whose result to pay
    #[arg(long = "job-id")]
    job_id: String,
    /// Never pay more than this, in sats
    #[arg(long)]
    max_sats: Option<u64>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReceiptsArgs {
    /// Only this provider's receipts (npub or hex)
    #[arg(long)]
    provider: Option<String>,
    /// How many
    #[arg(long, default_value_t = 50)]
    limit: u64,
    /// Print JSON (including the signed events)
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(ctx: &Context, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Submit(args) => submit(ctx, args).await,
        JobCommand::Status(args) => status(ctx, args),
        JobCommand::Results(args) => results(ctx, args).await,
        JobCommand::List(args) => list(ctx, args),
        JobCommand::Trace(args) => trace(ctx, args).await,
    }
}

async fn buyer(ctx: &Context, with_wallet: bool) -> anyhow::Result<Buyer> {
    let config = ctx.config()?;
    let identity = ctx.identity()?;
    let relay = MarketClient::connect(
        identity.nostr_keys().clone(),
        &config.relays,
        ONE_SHOT_TIMEOUT,
        Reachability::OneShot,
    )
    .await?;
    let wallet: Option<Arc<dyn Wallet>> = if with_wallet {
        let (w, _) = resolve::connect(&identity, &config, &config.relays).await?;
        Some(Arc::new(w))
    } else {
        None
    };
    let store = Arc::new(Store::open(ctx.home.root())?);
    Ok(Buyer::start(
        identity.nostr_keys().clone(),
        Arc::new(relay),
        wallet,
        store,
        config.buyer.limits(),
    )
    .await?)
}

async fn submit(ctx: &Context, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_alias(&args.kind).with_context(|| {
        format!(
            "`{}` is not a job kind: use code-analysis, text-generation or 5000-5999",
            args.kind
        )
    })?;
    let mut params = Vec::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p}: expected key=value"))?;
        params.push((k.to_string(), v.to_string()));
    }
    let path = PathBuf::from(&args.input);
    let input = if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a readable text file", path.display()))?;
        if !params.iter().any(|(k, _)| k == "path") {
            params.push(("path".into(), args.input.clone()));
        }
        text
    } else {
        args.input.clone()
    };
    let providers =
        match &args.provider {
            Some(p) => vec![PublicKey::parse(p)
                .with_context(|| format!("--provider {p} is not a public key"))?],
            None => Vec::new(),
        };
    let job = NewJob {
        kind,
        inputs: vec![JobInput::text(input)],
        params,
        output: None,
        bid_msats: args.bid.map(|s| s.saturating_mul(1000)),
        providers,
        relays: Vec::new(),
        encrypt: args.encrypt.then_some(Encryption::Nip44V2),
        expiration: None,
    };
    if args.auto_pay && args.bid.is_none() && args.max_sats.is_none() {
        // Refuse before anyone works on a job that could never be paid.
        if ctx.config()?.buyer.limits().max_job_msats.is_none() {
            bail!(
                "--auto-pay needs a spending limit: give --bid or --max-sats, or set                  [buyer] max_job_sats in config.toml"
            );
        }
    }
    let buyer = buyer(ctx, args.auto_pay).await?;
    if !args.wait {
        let event = buyer.submit(&job).await?;
        if args.json {
            output::print_json(&json!({ "job_id": event.id.to_hex(), "status": "submitted" }))?;
        } else {
            println!("{}", event.id.to_hex());
            eprintln!(
                "submitted; follow it with `pylon job status {}`",
                &event.id.to_hex()[..12]
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = buyer
        .run(
            &job,
            WaitOptions {
                timeout: Duration::from_secs(args.timeout),
                auto_pay: args.auto_pay,
                max_msats: args.max_sats.map(|s| s.saturating_mul(1000)),
            },
        )
        .await?;
    print_outcome(&outcome, args.json)?;
    Ok(match outcome.status {
        JobState::Done | JobState::Result => ExitCode::SUCCESS,
        _ if outcome.failure == Some(crate::protocol::failure::FailureCode::PaymentUnknown) => {
            ExitCode::from(super::EXIT_OUTCOME_UNKNOWN)
        }
        _ => ExitCode::FAILURE,
    })
}

fn print_outcome(o: &Outcome, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        let mut v = serde_json::to_value(o)?;
        // A JSON result is shown as JSON, not as a string of it.
        if let Some(parsed) = o
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        {
            v["result"] = parsed;
        }
        return output::print_json(&v);
    }
    println!("job {}: {:?}", o.job_id, o.status);
    if let Some(p) = &o.provider {
        println!("  provider: {p}");
    }
    if let Some(p) = &o.payment {
        println!(
            "  paid:     {} sats, preimage {}",
            p.amount_msat as f64 / 1000.0,
            p.preimage
        );
    }
    if let Some(r) = &o.receipt_id {
        println!("  receipt:  {r}");
    }
    if let Some(f) = &o.failure {
        println!("  failed:   {f}: {}", o.message.as_deref().unwrap_or(""));
    } else if let Some(m) = &o.message {
        println!("  note:     {m}");
    }
    if let Some(r) = &o.result {
        println!("{r}");
    }
    Ok(())
}

fn status(ctx: &Context, args: IdArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx.home.root())?;
    let rec = store
        .jobs()
        .find(&args.id)?
        .with_context(|| format!("no job {} in {}", args.id, ctx.home.root().display()))?;
    let durations = rec.durations();
    if args.json {
        output::print_json(&json!({ "job": rec, "durations_ms": durations }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {} ({:?}, kind {})",
        rec.job_id,
        rec.role.unwrap_or(Role::Buyer),
        rec.kind
    );
    println!("  state:    {:?}", rec.state.unwrap_or(JobState::Submitted));
    if let Some(p) = &rec.provider {
        println!("  provider: {p}");
    }
    if let Some(a) = rec.amount_msat {
        println!(
            "  amount:   {a} msats{}",
            if rec.preimage.is_some() {
                " (paid)"
            } else {
                ""
            }
        );
    }
    if let Some(code) = &rec.error_code {
        println!(
            "  error:    {code}: {}",
            rec.error_message.as_deref().unwrap_or("")
        );
    }
    println!("  timings:  {}", serde_json::to_string(&durations)?);
    Ok(ExitCode::SUCCESS)
}

async fn results(ctx: &Context, args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx.home.root())?;
    let rec = store
        .jobs()
        .find(&args.id)?
        .with_context(|| format!("no job {} in {}", args.id, ctx.home.root().display()))?;
    let stored = store.jobs().result_json(&rec.job_id, Role::Buyer)?;
    let Some(json) = stored else {
        bail!(
            "no result for job {} yet (state {:?})",
            rec.job_id,
            rec.state.unwrap_or(JobState::Submitted)
        );
    };
    let event = Event::from_json(&json).context("stored result is corrupt")?;
    let identity = ctx.identity()?;
    let result = JobResult::from_event(&event, Some(identity.nostr_keys()))?;
    match args.out {
        Some(path) => {
            std::fs::write(&path, &result.content)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} bytes to {}", result.content.len(), path.display());
        }
        None => println!("{}", result.content),
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx.home.root())?;
    let jobs = store.jobs().list(None, args.limit)?;
    if args.json {
        output::print_json(&jobs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("no jobs");
    }
    for j in jobs {
        println!(
            "{}  {:<8} kind {}  {:<16} {}",
            &j.job_id[..16.min(j.job_id.len())],
            format!("{:?}", j.role.unwrap_or(Role::Buyer)).to_lowercase(),
            j.kind,
            format!("{:?}", j.state.unwrap_or(JobState::Submitted)),
            j.error_code.map(|c| c.to_string()).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn trace(ctx: &Context, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let id = match EventId::from_hex(&args.id) {
        Ok(id) => id,
        Err(_) => {
            // A prefix only resolves through the local store.
            let store = Store::open(ctx.home.root())?;
            let rec = store
                .jobs()
                .find(&args.id)?
                .with_context(|| format!("`{}` is not a job id (64 hex characters)", args.id))?;
            EventId::from_hex(&rec.job_id)?
        }
    };
    let config = ctx.config()?;
    let mut trust = config.trusted_hubs();
    for key in &args.trust_hubs {
        trust
            .add(key)
            .with_context(|| format!("--trust-hub {key}"))?;
    }
    // Auditing needs no identity: anyone can trace any job.
    let client = MarketClient::connect(
        Keys::generate(),
        &config.relays,
        ONE_SHOT_TIMEOUT,
        Reachability::OneShot,
    )
    .await?;
    let t = provenance::trace(&client, id, Duration::from_secs(5), &trust).await;
    client.shutdown().await;
    let t = t?;
    if args.json {
        output::print_json(&t)?;
    } else {
        print_trace(&t);
    }
    Ok(if t.verified || t.free {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A job's chain as a timeline, and whether it verifies.
pub(crate) fn print_trace(t: &provenance::Trace) {
    println!("job {}", t.job_id);
    for s in &t.timeline {
        println!(
            "  +{:>4}s  {:<24} {}  by {}  {}",
            s.after_request_secs,
            s.what,
            &s.event_id[..12],
            &s.author[..12],
            s.detail
        );
    }
    for w in &t.warnings {
        println!("  warning: {w}");
    }
    if t.verified {
        println!(
            "VERIFIED: paid {} msats; sha256(preimage) = payment hash {}; settlement attested by hub {}",
            t.amount_msat.unwrap_or(0),
            t.payment_hash.as_deref().unwrap_or(""),
            t.hub.as_deref().unwrap_or("")
        );
    } else if t.free {
        println!(
            "verified: free (no payment asked): the result of provider {} answers the request; there is no payment to prove",
            t.provider.as_deref().unwrap_or("")
        );
    } else {
        println!("NOT VERIFIED: {}", t.reason.as_deref().unwrap_or("unknown"));
    }
}

pub(crate) async fn pay(ctx: &Context, args: PayArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx.home.root())?;
    let rec = store.jobs().find(&args.job_id)?.with_context(|| {
        format!(
            "no job {} submitted from {}",
            args.job_id,
            ctx.home.root().display()
        )
    })?;
    drop(store);
    let buyer = buyer(ctx, true).await?;
    let payment = match buyer
        .pay_job(
            &EventId::from_hex(&rec.job_id)?,
            args.max_sats.map(|s| s.saturating_mul(1000)),
        )
        .await
    {
        Ok(p) => p,
        Err(e @ crate::buyer::BuyerError::PaymentUnknown { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_OUTCOME_UNKNOWN));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        output::print_json(&payment)?;
    } else if payment.already_paid {
        println!(
            "already paid: {} msats for job {}; preimage {}",
            payment.amount_msat, rec.job_id, payment.preimage
        );
    } else {
        println!(
            "paid {} msats for job {}; preimage {}",
            payment.amount_msat, rec.job_id, payment.preimage
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn receipts(ctx: &Context, args: ReceiptsArgs) -> anyhow::Result<ExitCode> {
    let provider = args
        .provider
        .as_deref()
        .map(|p| PublicKey::parse(p).map(|k| k.to_hex()))
        .transpose()
        .context("--provider is not a public key")?;
    let store = Store::open(ctx.home.root())?;
    let list = store.receipts().list(provider.as_deref(), args.limit)?;
    if args.json {
        output::print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no receipts");
    }
    for r in list {
        println!(
            "{}  job {}  {} msats  provider {}  buyer {}",
            nostr_sdk::Timestamp::from(r.created_at).to_human_datetime(),
            &r.request_id[..12],
            r.amount_msat,
            &r.provider[..12],
            &r.buyer[..12]
        );
    }
    Ok(ExitCode::SUCCESS)
}
