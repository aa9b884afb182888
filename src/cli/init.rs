//! `pylon init`: create (or import) the node identity and write the default config.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::{output, prompt, Context};
use crate::config::Config;
use crate::identity::sealed::{self, KdfCost, Previous, SealError};
use crate::identity::Identity;

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Restore from an existing mnemonic (read from stdin when piped, else typed)
    #[arg(long)]
    import: bool,
    /// Replace an existing identity; the old file is kept as identity.enc.bak-<time>
    #[arg(long)]
    force: bool,
    /// Print the result (including the mnemonic) as JSON, for scripts
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct InitReport<'a> {
    home: String,
    npub: &'a str,
    pubkey: &'a str,
    node_pubkey: &'a str,
    mnemonic: &'a str,
    imported: bool,
    config_written: bool,
    replaced_backup: Option<String>,
    /// Permission changes that made an existing home private ("tightened permissions of …").
    tightened: Vec<String>,
}

pub(crate) async fn run(ctx: &Context, args: InitArgs) -> anyhow::Result<ExitCode> {
    let path = ctx.home.identity_file();
    // Refuse before asking for anything, so a mistaken run costs nothing.
    if path.exists() && !args.force {
        return Err(SealError::Exists(path).into());
    }
    let identity = if args.import {
        let words = prompt::mnemonic()?;
        Identity::from_mnemonic(&words)?
    } else {
        Identity::generate()?
    };
    let passphrase = prompt::new_passphrase()?;
    // Creates the home, or makes an existing one private (0700/0600) and says what it changed.
    let tightened: Vec<String> = ctx
        .home
        .create()
        .with_context(|| format!("cannot create {}", ctx.home.root().display()))?
        .iter()
        .map(ToString::to_string)
        .collect();
    let previous = sealed::store(
        &path,
        &identity,
        &passphrase,
        KdfCost::default(),
        args.force,
    )?;
    let config_written = Config::write_default(&ctx.home, Some(identity.hub_keys().public_key()))?;
    let public = identity.public();
    let backup = match previous {
        Previous::BackedUp(p) => Some(p.display().to_string()),
        Previous::None => None,
    };

    if args.json {
        output::print_json(&InitReport {
            home: ctx.home.root().display().to_string(),
            npub: &public.npub,
            pubkey: &public.pubkey,
            node_pubkey: &public.node_pubkey,
            mnemonic: identity.mnemonic(),
            imported: args.import,
            config_written,
            replaced_backup: backup,
            tightened,
        })?;
        return Ok(ExitCode::SUCCESS);
    }

    for t in &tightened {
        println!("{t}");
    }
    let verb = if args.import { "Imported" } else { "Created" };
    println!("{verb} a Pylon identity in {}", ctx.home.root().display());
    println!("  npub:        {}", public.npub);
    println!("  node pubkey: {}", public.node_pubkey);
    if let Some(b) = backup {
        println!("  the previous identity was kept as {b}");
    }
    if !args.import {
        println!();
        println!("Recovery phrase: write these 24 words down and keep them offline.");
        println!("Anyone who has them controls this node and its money. They are shown only now.");
        println!();
        for (i, chunk) in identity
            .mnemonic()
            .split(' ')
            .collect::<Vec<_>>()
            .chunks(6)
            .enumerate()
        {
            let line: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(j, w)| format!("{:>2}. {w:<9}", i * 6 + j + 1))
                .collect();
            println!("  {}", line.join(" "));
        }
        println!();
    }
    if config_written {
        println!(
            "Wrote {} with the defaults.",
            ctx.home.config_file().display()
        );
    }
    println!("Next: `pylon relay` runs a local relay; `pylon doctor` checks everything.");
    Ok(ExitCode::SUCCESS)
}
