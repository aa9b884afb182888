//! `pylon up`: relay, hub with faucet, dashboard and provider nodes in one process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use nostr_sdk::{RelayUrl, ToBech32};

use super::{shutdown_signal, Context};
use crate::appliance::up::{Up, UpOptions};
use crate::executors::Registry;
use crate::provider::NodeOptions;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Where the embedded relay listens [default: relay.bind in config.toml, 127.0.0.1:7777]
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Where the dashboard listens
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7780")]
    web: SocketAddr,
    /// Run the market on this public relay; if it does not answer, the embedded relay takes over
    /// (the dashboard says so)
    #[arg(long, value_name = "URL")]
    public_relay: Option<String>,
    /// Provider nodes to run: this identity's own, then ones derived from its mnemonic
    #[arg(long, default_value_t = 1)]
    providers: usize,
    /// Seconds between provider heartbeats
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// Also print the operator's nostr+walletconnect:// URI, secret included (by default only
    /// the path of the 0600 file it is written to is printed, so it stays out of logs)
    #[arg(long)]
    show_secrets: bool,
}

pub(crate) async fn run(ctx: &Context, args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    if !config.network.is_regtest() {
        bail!(
            "`pylon up` runs a regtest hub; this home is configured for {:?}",
            config.network
        );
    }
    let public_relay = args
        .public_relay
        .as_deref()
        .map(|u| {
            RelayUrl::parse(u).with_context(|| format!("--public-relay: `{u}` is not a relay URL"))
        })
        .transpose()?;
    let identity = ctx.identity()?;
    let registry = Registry::builtin();
    let mut prices = config.prices.clone();
    prices.retain(|k, _| registry.get(*k).is_some());
    let mut relay = config.relay.clone();
    if let Some(bind) = args.bind {
        relay.bind = bind;
    }
    let options = UpOptions {
        relay,
        public_relay,
        reach_timeout: config.fallback_timeout,
        web: args.web,
        providers: args.providers,
        node: config.provider.apply(NodeOptions {
            prices,
            heartbeat_interval: Duration::from_secs(args.heartbeat_secs.max(1)),
            ..NodeOptions::default()
        }),
        registry,
        hub: config.hub.clone(),
    };
    let up = Up::start(&identity, &ctx.home, options).await?;
    let hub = up
        .appliance
        .hub_keys
        .public_key()
        .to_bech32()
        .unwrap_or_default();
    println!("pylon up: the market is running");
    println!(
        "  relay:      {}{}",
        up.relay_url(),
        if up.appliance.relay.is_some() {
            " (embedded)"
        } else {
            ""
        }
    );
    println!("  dashboard:  {}", up.dashboard);
    println!("  hub:        {hub} (regtest; faucet: `pylon wallet faucet 1000`)");
    println!("  providers:  {}", up.providers.len());
    if args.show_secrets {
        println!("  nwc:        {}", up.nwc_uri);
    } else {
        // The URI holds the wallet account's secret: under compose, stdout is a container log.
        println!(
            "  nwc:        {} (mode 0600: your wallet's secret; --show-secrets prints it)",
            up.nwc_uri_file.display()
        );
    }
    for n in &up.notices {
        println!("  notice:     {n}");
    }
    println!("Ctrl-C stops everything.");

    let status_file = ctx.home.node_status_file();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => { r?; break; }
            _ = tick.tick() => {
                if let Some(node) = up.appliance.nodes.first() {
                    super::node::write_status(&status_file, &node.status().await);
                }
            }
        }
    }
    eprintln!("stopping: dashboard, nodes (finishing their jobs, 10 s at most), hub, relay; Ctrl-C again exits at once…");
    super::stop_or_second_signal(up.stop()).await;
    let _ = std::fs::remove_file(&status_file);
    super::output::say("market stopped");
    Ok(ExitCode::SUCCESS)
}
