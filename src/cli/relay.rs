//! `pylon relay`: the embedded relay in the foreground until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{shutdown_signal, Context};
use crate::relay::EmbeddedRelay;

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Listen address; port 0 picks a free port [default: relay.bind in config, 127.0.0.1:7777]
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Event store directory [default: $PYLON_HOME/relay]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

pub(crate) async fn run(ctx: &Context, args: RelayArgs) -> anyhow::Result<ExitCode> {
    let mut settings = ctx.config()?.relay;
    if let Some(bind) = args.bind {
        settings.bind = bind;
    }
    let data = args.data.unwrap_or_else(|| ctx.home.relay_dir());
    let relay = EmbeddedRelay::start(&settings, &data)
        .await
        .context("cannot start the relay")?;
    let addr = relay.local_addr();
    println!("pylon relay listening on {}", relay.url());
    println!("  NIP-11:  curl -H 'Accept: application/nostr+json' http://{addr}");
    println!("  store:   {}", data.display());
    println!("  clients: pylon --relay {} doctor", relay.url());
    println!("Ctrl-C stops it; stored events survive restarts.");
    shutdown_signal().await?;
    relay.shutdown().await;
    super::output::say("relay stopped");
    Ok(ExitCode::SUCCESS)
}
