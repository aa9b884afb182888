//! `pylon wallet …`: who this node is (and, from the hub issue on, its money).

use std::process::ExitCode;

use clap::Subcommand;

use super::output::{self, JsonFlag};
use super::Context;

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Show this node's public keys: Nostr (npub and hex) and Lightning node key
    Whoami(JsonFlag),
}

pub(crate) async fn run(ctx: &Context, cmd: WalletCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WalletCommand::Whoami(flags) => {
            let public = ctx.identity()?.public();
            if flags.json {
                output::print_json(&public)?;
            } else {
                println!("npub:        {}", public.npub);
                println!("pubkey:      {}", public.pubkey);
                println!("node_pubkey: {}", public.node_pubkey);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
