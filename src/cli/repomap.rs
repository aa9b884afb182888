//! `pylon repomap <dir|git-url>`: map a repository through the market (or `--local`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use nostr_sdk::PublicKey;
use serde_json::json;

use super::{output, Context};
use crate::buyer::Buyer;
use crate::fanout::{self, aggregate, walk, Options, Progress, Report};
use crate::relay::client::ONE_SHOT_TIMEOUT;
use crate::relay::{MarketClient, Reachability};
use crate::store::Store;
use crate::wallet::{resolve, Wallet};

#[derive(Debug, Args)]
pub(crate) struct RepomapArgs {
    /// A directory, or a git URL (cloned shallowly into a temporary directory)
    source: String,
    /// Where the artifacts go
    #[arg(long, default_value = "repomap")]
    out: PathBuf,
    /// Most sats spent on the whole map
    #[arg(long, default_value_t = 10_000)]
    budget: u64,
    /// Most paid for one file, in msats (also the bid)
    #[arg(long, default_value_t = 2_000)]
    max_price_msats: u64,
    /// Files in flight at once
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Seconds one attempt may take
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds after which a slow attempt gets a duplicate elsewhere (first valid result wins)
    #[arg(long, default_value_t = 5)]
    straggler_after: u64,
    /// Only these providers (comma-separated npubs or hex)
    #[arg(long, value_delimiter = ',')]
    providers: Vec<String>,
    /// Only files matching (repeatable glob, e.g. 'src/**/*.rs')
    #[arg(long)]
    include: Vec<String>,
    /// Never files matching (repeatable glob)
    #[arg(long)]
    exclude: Vec<String>,
    /// Run the analyzer in this process instead of the market (the baseline)
    #[arg(long)]
    local: bool,
    /// Wait (up to --wait-secs) until this many providers are online before starting
    #[arg(long, default_value_t = 1)]
    min_providers: usize,
    /// Longest wait for --min-providers, in seconds
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(ctx: &Context, args: RepomapArgs) -> anyhow::Result<ExitCode> {
    let (root, label, _clone) = source(&args.source)?;
    let (files, skipped) = walk::collect(&root, &args.include, &args.exclude)?;
    if files.is_empty() {
        bail!(
            "nothing to map in {} ({} files skipped)",
            args.source,
            skipped.len()
        );
    }
    let (mut report, mapped, provenance) = if args.local {
        let started = Instant::now();
        let (mapped, took) = fanout::map_local(&files);
        let report = Report {
            files: files.len(),
            mapped: mapped.len(),
            failed: Vec::new(),
            skipped: Vec::new(),
            spent_msats: 0,
            wall_secs: crate::bench::round3(started.elapsed().as_secs_f64()),
            per_file_ms: crate::bench::Latency::of(&took),
            providers_used: 0,
            straggler_duplicates: 0,
            rejected_results: 0,
            budget_exhausted: false,
        };
        (report, mapped, Vec::new())
    } else {
        market(ctx, &args, &files).await?
    };
    report.skipped = skipped;
    let map = aggregate::repo_map(&label, &mapped);
    let paths = aggregate::write(&args.out, &map, &provenance)
        .with_context(|| format!("cannot write the artifacts to {}", args.out.display()))?;
    let artifacts = json!({
        "repo_map": paths[0].display().to_string(),
        "overview": paths[1].display().to_string(),
        "provenance": paths[2].display().to_string(),
    });
    if args.json {
        output::print_json(&json!({ "report": report, "artifacts": artifacts }))?;
    } else {
        println!(
            "mapped {} of {} files in {:.1} s ({} skipped, {} failed); paid {} sats to {} providers",
            report.mapped,
            report.files,
            report.wall_secs,
            report.skipped.len(),
            report.failed.len(),
            report.spent_msats / 1000,
            report.providers_used
        );
        for f in &report.failed {
            println!("  failed {}: {}", f.path, f.reason);
        }
        if report.budget_exhausted {
            println!(
                "  the budget of {} sats ran out: raise --budget to map the rest",
                args.budget
            );
        }
        for p in &paths {
            println!("  wrote {}", p.display());
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn market(
    ctx: &Context,
    args: &RepomapArgs,
    files: &[walk::SourceFile],
) -> anyhow::Result<(
    Report,
    Vec<aggregate::MappedFile>,
    Vec<aggregate::FileProvenance>,
)> {
    let config = ctx.config()?;
    let identity = ctx.identity()?;
    let keys = identity.nostr_keys().clone();
    let relay = Arc::new(
        MarketClient::connect(
            keys.clone(),
            &config.relays,
            ONE_SHOT_TIMEOUT,
            Reachability::OneShot,
        )
        .await?,
    );
    let (wallet, _) = resolve::connect(&identity, &config, &config.relays).await?;
    let wallet: Arc<dyn Wallet> = Arc::new(wallet);
    let store = Arc::new(Store::open(ctx.home.root())?);
    let limits = config.buyer.limits();
    let buyer =
        Arc::new(Buyer::start(keys, relay.clone(), Some(wallet), store.clone(), limits).await?);
    // Check the money before asking anyone to work: a map that cannot pay leaves providers with
    // unpaid invoices.
    let needed = args
        .budget
        .saturating_mul(1000)
        .min((files.len() as u64).saturating_mul(args.max_price_msats));
    let balance = buyer.balance_msat().await?;
    if balance < needed {
        bail!(
            "balance {} sats < budget {} sats — fund it with `pylon wallet faucet {}`",
            balance / 1000,
            needed.div_ceil(1000),
            needed.div_ceil(1000).max(1000)
        );
    }
    if let Some(daily) = limits.max_daily_msats {
        let spent = store
            .payments()
            .spent_since(crate::store::now_ms().saturating_sub(24 * 3600 * 1000))?;
        let left = daily.saturating_sub(spent);
        if needed > left {
            bail!(
                "this map may cost {} sats but only {} sats are left today under [buyer] max_daily_sats \
                 ({} sats): lower --budget or raise the cap in config.toml",
                needed.div_ceil(1000),
                left / 1000,
                daily / 1000
            );
        }
    }
    let providers = args
        .providers
        .iter()
        .map(|p| {
            PublicKey::parse(p).with_context(|| format!("--providers: `{p}` is not a public key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = Options {
        budget_msats: Some(args.budget.saturating_mul(1000)),
        max_price_msats: args.max_price_msats,
        parallel: args.parallel.max(1),
        timeout: Duration::from_secs(args.timeout.max(1)),
        straggler_after: Duration::from_secs(args.straggler_after.max(1)),
        providers,
        ..Options::default()
    };
    wait_for_providers(&relay, args, &options.providers).await?;
    let bar = Bar::new();
    let result = fanout::map_market(files, buyer, &relay, &options, |p| bar.show(p)).await;
    bar.finish();
    Ok(result?)
}

/// Waits until `--min-providers` sell code analysis within the price (a swarm may still be
/// starting when the map is asked for).
async fn wait_for_providers(
    relay: &MarketClient,
    args: &RepomapArgs,
    only: &[PublicKey],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let mut said = None;
    let mut explained = false;
    loop {
        let found = fanout::select::discover_all(relay, args.max_price_msats, only).await?;
        let online = found.candidates.len();
        // Providers the user named and cannot have are worth saying at once, with the reason.
        if !only.is_empty() && !explained && !found.passed_over.is_empty() {
            for line in found.explain() {
                eprintln!("cannot use provider {line}");
            }
            explained = true;
        }
        if online >= args.min_providers {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut why = String::new();
            for line in found.explain() {
                why.push_str(&format!("\n  {line}"));
            }
            if !why.is_empty() {
                why = format!("; passed over:{why}");
            }
            bail!(
                "only {online} of the {} providers asked for (--min-providers) came online within {} s{why}",
                args.min_providers,
                args.wait_secs
            );
        }
        if said != Some(online) {
            eprintln!(
                "waiting for providers: {online}/{} online",
                args.min_providers
            );
            said = Some(online);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A git URL is cloned (shallow) into a temporary directory that lives as long as the run.
fn source(arg: &str) -> anyhow::Result<(PathBuf, String, Option<tempfile::TempDir>)> {
    let is_url = ["http://", "https://", "git@", "ssh://", "file://", "git://"]
        .iter()
        .any(|p| arg.starts_with(p))
        || arg.ends_with(".git");
    if !is_url || Path::new(arg).is_dir() {
        let root = PathBuf::from(arg);
        let label = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| arg.to_string());
        return Ok((root, label, None));
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let status = std::process::Command::new("git")
        .args(["clone", "--depth", "1", "--quiet", arg])
        .arg(dir.path())
        .status()
        .context("cannot run git: install git to map a repository by URL")?;
    if !status.success() {
        bail!("git clone {arg} failed ({status})");
    }
    Ok((dir.path().to_path_buf(), arg.to_string(), Some(dir)))
}

/// A one-line progress bar on a terminal, periodic lines otherwise.
struct Bar {
    tty: bool,
    last: Mutex<Instant>,
}

impl Bar {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, p: &Progress) {
        let finished = p.done + p.failed;
        let width = 30;
        let filled = (finished * width).checked_div(p.total).unwrap_or(width);
        let eta = p
            .eta_secs
            .map(|s| format!("{s} s"))
            .unwrap_or_else(|| "?".into());
        let queued = if p.queued > 0 {
            format!(" ({} queued)", p.queued)
        } else {
            String::new()
        };
        let line = format!(
            "[{}{}] {finished}/{}: {} done, {} failed, {} running{queued}, {} sats, ETA {eta}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            p.total,
            p.done,
            p.failed,
            p.running,
            p.sats_spent
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        } else {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(2) || finished == p.total {
                *last = Instant::now();
                let _ = writeln!(err, "{line}");
            }
        }
    }

    fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
