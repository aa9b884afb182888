//! `pylon swarm`: many provider nodes in one process, for demos and load tests.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::{output, shutdown_signal, Context};
use crate::appliance::swarm::{MemoryReport, Swarm, SwarmOptions};
use crate::executors::Registry;
use crate::memory::resident_bytes;
use crate::provider::NodeOptions;
use crate::wallet::resolve;

#[derive(Debug, Args)]
pub(crate) struct SwarmArgs {
    /// Provider nodes to run, each with its own keys, connections, store and wallet account
    #[arg(long, default_value_t = 10)]
    providers: usize,
    /// Sats each node's wallet gets from the hub's faucet
    #[arg(long, default_value_t = 100)]
    fund: u64,
    /// Price per job, msats
    #[arg(long, default_value_t = 1_000)]
    price_msats: u64,
    /// Seconds between memory reports
    #[arg(long, default_value_t = 10)]
    report_secs: u64,
    /// Print reports as JSON lines
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(ctx: &Context, args: SwarmArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    let hub = match config.wallet.hub {
        Some(hub) => hub,
        None => {
            resolve::find_hub(&config.relays, Duration::from_secs(5))
                .await?
                .context(
                    "no Pylon hub announces itself on the relays: start one with `pylon up` \
                     (or `pylon hub`), or pin one with wallet.hub",
                )?
                .service
        }
    };
    let registry = Registry::builtin();
    let prices = registry
        .kinds()
        .into_iter()
        .filter(|k| config.prices.contains_key(k))
        .map(|k| (k, args.price_msats))
        .collect();
    let options = SwarmOptions {
        providers: args.providers.max(1),
        node: config.provider.apply(NodeOptions {
            prices,
            ..NodeOptions::default()
        }),
        registry,
        fund_sats: args.fund,
    };
    let before = resident_bytes().unwrap_or(0);
    let total = options.providers;
    let swarm = Swarm::start(&config.relays, hub, None, &options, |n| {
        if n % 10 == 0 || n == total {
            eprintln!("swarm: {n}/{total} nodes up");
        }
    })
    .await?;
    let idle = resident_bytes().unwrap_or(0);
    println!(
        "pylon swarm: {} nodes on {} in {:.1} s, paid through hub {}",
        swarm.nodes.len(),
        config
            .relays
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        swarm.start_secs,
        hub.to_hex()
    );
    let report = |busy| MemoryReport::now(swarm.nodes.len(), busy, before, idle);
    let show = |r: &MemoryReport| -> anyhow::Result<()> {
        if args.json {
            output::print_json_line(r)?;
        } else {
            println!(
                "{} nodes ({} busy): resident {:.1} MiB; {:.2} MiB per idle node{}",
                r.nodes,
                r.busy,
                r.resident_mib,
                r.per_idle_node_mib,
                r.per_busy_node_mib
                    .map(|b| format!(", {b:.2} MiB per busy node"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    };
    show(&report(0))?;
    let mut tick = tokio::time::interval(Duration::from_secs(args.report_secs.max(1)));
    tick.tick().await;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => { r?; break; }
            _ = tick.tick() => {
                let busy = swarm.busy().await;
                if busy == 0 {
                    // Idle after a burst: give the allocator's free memory back.
                    crate::memory::release_free_memory();
                }
                show(&report(busy))?
            }
        }
    }
    eprintln!(
        "stopping {} nodes (finishing their jobs, 10 s at most; Ctrl-C again exits at once)…",
        swarm.nodes.len()
    );
    super::stop_or_second_signal(swarm.stop()).await;
    output::say("swarm stopped");
    Ok(ExitCode::SUCCESS)
}
