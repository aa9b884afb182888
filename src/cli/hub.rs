//! `pylon hub`: run the regtest Lightning hub; `pylon hub audit`: prove its books balance.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::output::{self, JsonFlag};
use super::{shutdown_signal, Context};
use crate::hub::{self, Ledger, Service};
use crate::relay::{MarketClient, Reachability};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct HubArgs {
    #[command(subcommand)]
    command: Option<HubCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum HubCommand {
    /// Check the ledger: total balances = total issued, every payment matched; non-zero exit if not
    Audit(JsonFlag),
}

pub(crate) async fn run(ctx: &Context, args: HubArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(HubCommand::Audit(flags)) => audit(ctx, flags),
        None => serve(ctx).await,
    }
}

fn audit(ctx: &Context, flags: JsonFlag) -> anyhow::Result<ExitCode> {
    let path = ctx.home.hub_ledger();
    if !path.exists() {
        bail!(
            "no hub ledger at {}: this home has never run `pylon hub`",
            path.display()
        );
    }
    let report = Ledger::open(&path)?.audit()?;
    if flags.json {
        output::print_json(&report)?;
    } else {
        println!("accounts:        {}", report.accounts);
        println!("total balances:  {} msats", report.total_balance_msat);
        println!("total issued:    {} msats", report.total_issued_msat);
        println!(
            "invoices:        {} ({} settled)",
            report.invoices, report.settled_invoices
        );
        println!(
            "payments:        {} ({} msats)",
            report.transfers, report.total_transferred_msat
        );
        if report.ok {
            println!("audit OK: every sat is accounted for");
        }
        for p in &report.problems {
            println!("PROBLEM: {p}");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(ctx: &Context) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    if !config.network.is_regtest() {
        bail!(
            "the hub serves regtest money only; this home is configured for {:?}",
            config.network
        );
    }
    let identity = ctx.identity()?;
    let dir = ctx.home.hub_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ledger = Ledger::open(&ctx.home.hub_ledger())?;
    let keys = identity.hub_keys();
    let service = Service::new(
        keys.clone(),
        *identity.node_key().secret(),
        ledger,
        config.hub.clone(),
    );
    let client = MarketClient::connect(
        keys.clone(),
        &config.relays,
        config.fallback_timeout,
        Reachability::FallBack {
            settings: Box::new(config.relay.clone()),
            data_dir: ctx.home.relay_dir(),
        },
    )
    .await?;
    if let Some(fb) = client.fallback() {
        eprintln!(
            "warning: relays unreachable ({}); serving on the embedded relay at {}",
            fb.reason, fb.url
        );
    }
    let relays: Vec<String> = client
        .relay_urls()
        .await
        .iter()
        .map(|u| u.to_string())
        .collect();
    let client = Arc::new(client);
    let running = hub::start(service, client.clone()).await?;
    let npub = nostr_sdk::ToBech32::to_bech32(&keys.public_key()).unwrap_or_default();
    println!(
        "pylon hub {} answering on {}",
        keys.public_key().to_hex(),
        relays.join(", ")
    );
    println!("  npub:    {npub}");
    println!("  ledger:  {}", ctx.home.hub_ledger().display());
    println!(
        "  faucet:  up to {} sats a request, {} sats per key per day",
        config.hub.faucet.max_msat_per_request / 1000,
        config.hub.faucet.max_msat_per_day / 1000
    );
    println!("  nodes on these relays find it by themselves; or pin it: [wallet] hub = \"{npub}\"");
    shutdown_signal().await?;
    running.stop().await;
    if let Ok(client) = Arc::try_unwrap(client) {
        client.shutdown().await;
    }
    super::output::say("hub stopped");
    Ok(ExitCode::SUCCESS)
}
